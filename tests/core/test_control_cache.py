"""The controller's caches and fast paths give the answers of the plain computation (up to the
documented quantisation of the optimizer's inputs)."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from servewise.core import control, queueing
from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile


def candidate() -> Candidate:
    """s(b) = 5 + 2b ms, batches up to 64."""
    sizes = tuple(range(1, 65))
    return Candidate(
        InstanceType("gpu", 1.0), LatencyProfile(sizes, tuple(5.0 + 2.0 * b for b in sizes))
    )


def bisected_cv(
    c: Candidate, plan: Plan, rate_per_s: float, observed_p99_ms: float
) -> float | None:
    """The CV found by bisection (24 halvings in log CV) over :func:`queueing.predict`: what
    :func:`control.cv_for_latency` computed per sample before it read a shared curve."""
    if rate_per_s >= control.plan_capacity_per_s(plan, (c,)):
        return None

    def p99(cv: float) -> float:
        return queueing.predict(c.profile, plan, Workload(rate_per_s, cv), None).p99_ms

    if observed_p99_ms <= p99(control.MIN_ARRIVAL_CV):
        return control.MIN_ARRIVAL_CV
    if observed_p99_ms >= p99(control.MAX_ARRIVAL_CV):
        return control.MAX_ARRIVAL_CV
    lo, hi = math.log(control.MIN_ARRIVAL_CV), math.log(control.MAX_ARRIVAL_CV)
    for _ in range(24):
        mid = (lo + hi) / 2
        if p99(math.exp(mid)) < observed_p99_ms:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def test_cv_for_latency_reads_the_bisections_answer_off_the_shared_curve() -> None:
    """Over random plans (real-time, batching with and without a delay), rates up to 98 % of
    capacity and observed p99s, the curves' answer is within 0.5 % of the bisection's; both
    agree on None."""
    rng = random.Random(7)
    c = candidate()
    plans = [Plan("gpu", 1, 0.0, 20), Plan("gpu", 8, 5.0, 10), Plan("gpu", 16, 0.0, 4)]
    checked = 0
    for _ in range(120):
        plan = rng.choice(plans)
        capacity = control.plan_capacity_per_s(plan, (c,))
        rate = capacity * rng.uniform(0.05, 1.05)
        observed = rng.uniform(1.0, 400.0)
        exact = bisected_cv(c, plan, rate, observed)
        fast = control.cv_for_latency(c, plan, rate, observed)
        if exact is None:
            assert fast is None
            continue
        assert fast is not None
        assert fast == pytest.approx(exact, rel=0.005)
        checked += 1.0 < exact < 16.0
    assert checked >= 20  # the curve itself was read, not only the clamps


def eager_sizing_series(
    samples: list[control.Sample], settings: control.ControlSettings, cold_start_s: float
) -> list[float]:
    """:func:`control.sizing_series`'s values as it computed them, all at once, before they
    were computed as read."""
    smoothed = control.ewma_rates(samples, settings.ewma_half_life_s)
    period = control.sample_period_s(samples)
    lead = cold_start_s + (period or 0.0)
    spreads = [0.0]
    squares = 0.0
    for count, (a, b) in enumerate(itertools.pairwise(samples), start=1):
        squares += (b.rate_per_s - a.rate_per_s) ** 2
        spreads.append(math.sqrt(squares / (2 * count)))
    z = control.slo_z(99.0)
    span = max(2.0 * settings.ewma_half_life_s, 3.0 * (period or 0.0))
    trends = [control.rising_trend(samples, i, span, spreads[i], z) for i in range(len(samples))]
    return [s + tr * lead + z * sp for s, tr, sp in zip(smoothed, trends, spreads, strict=True)]


def test_sizing_series_computed_as_read_gives_the_same_floats() -> None:
    """Over random windows (noisy, trending, irregularly spaced), the series read in any
    order, reversed, sliced or whole, and the estimate equal the all-at-once computation
    exactly."""
    rng = random.Random(3)
    slo = Slo(latency_ms=100.0, percentile=99.0)
    for trial in range(30):
        settings = control.ControlSettings(ewma_half_life_s=rng.choice([0.0, 15.0, 60.0]))
        t, samples = 0.0, []
        for i in range(rng.randrange(1, 150)):
            t += rng.choice([1.0, 1.0, 2.5, 10.0])
            rate = 500.0 + rng.choice([0.0, 3.0]) * i + rng.uniform(-50.0, 50.0)
            samples.append(control.Sample(t, max(rate, 0.0), p99_ms=40.0))
        expected = eager_sizing_series(samples, settings, 30.0)
        series, estimate = control.sizing_series(samples, settings, slo, 30.0)
        assert estimate.sizing_per_s == expected[-1]
        if trial % 2:
            assert list(reversed(series)) == expected[::-1]
        assert series[1:5] == expected[1:5]
        assert list(series) == expected


def test_cv_grid_is_nearest_in_log_scale_and_what_the_optimizer_is_asked() -> None:
    """The CV the optimizer is asked about: the nearest point of 2**(k/8) (4 significant
    digits), Poisson for anything at or below 1 (or NaN); the rate to 3 significant digits.
    The cached advisor asks exactly those, and nearby inputs share one answer."""
    assert [control.grid_cv(x) for x in (0.5, 1.0, 1.04, 1.05, 2.0, 3.0, 6.1, 16.0)] == [
        1.0,
        1.0,
        1.0,
        1.091,
        2.0,
        3.084,
        6.169,
        16.0,
    ]
    assert control.grid_cv(float("nan")) == 1.0
    assert control.advice_point(1234.4, 5.9) == (1230.0, 5.657)
    asked: list[tuple[float, float]] = []

    def advise(rate: float, arrival_cv: float = 1.0) -> control.Advice:
        asked.append((rate, arrival_cv))
        return control.Advice(rate, None, False, 0.0, True)

    cached = control.cached_advisor(control.AdviceCache(), "k", advise)
    first = cached(1234.4, 5.9)
    assert cached(1233.6, 5.7) is first
    assert asked == [(1230.0, 5.657)]


def test_advice_cache_computes_a_key_once_however_many_ask_at_once() -> None:
    """Eight threads asking for one key while it is computed: one computation, one answer
    for all; a failed computation reaches its waiters and is not cached; submit hands out
    the run under way and caches its result."""
    cache = control.AdviceCache()
    gate = threading.Event()
    runs: list[int] = []
    answer = control.Advice(1.0, None, False, 0.0, True)

    def compute() -> control.Advice:
        runs.append(1)
        gate.wait(10)
        return answer

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", compute) for _ in range(8)]
        time.sleep(0.2)
        gate.set()
        assert all(f.result(10) is answer for f in futures)
    assert runs == [1]
    assert cache.misses == 1

    def fail() -> control.Advice:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        cache.get_or_compute("bad", fail)
    assert cache.get("bad") is None
    pending: Future[control.Advice] = Future()
    first = cache.submit("later", lambda: pending)
    assert cache.submit("later", lambda: pytest.fail("started twice")) is first
    pending.set_result(answer)
    assert first.result(1) is answer
    assert cache.get("later") is answer


@pytest.mark.parametrize("rate_per_s", [5e-324, 2.2e-308, 1e-300])
def test_cv_for_latency_takes_a_vanishing_rate(rate_per_s: float) -> None:
    """A subnormal rate made the grid step underflow to 0 and divided by it (the fuzzer's
    EvaluateSwitch got INTERNAL): the rate's own curve answers, as the bisection did."""
    c = candidate()
    plan = Plan("gpu", 8, 5.0, 10)
    fast = control.cv_for_latency(c, plan, rate_per_s, 40.0)
    assert fast is not None
    assert fast == pytest.approx(bisected_cv(c, plan, rate_per_s, 40.0), rel=0.005)
