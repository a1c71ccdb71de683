"""core/window: a SampleWindow's incremental statistics are the reference functions' (the
whole-window formulas of core/control, which plain lists go through) up to rounding, however
samples come and go, and the controller decides the same on a window as on a list."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servewise.core import control
from servewise.core import window as window_module
from servewise.core.control import (
    Advice,
    ControlSettings,
    Decision,
    DeploymentState,
    Sample,
)
from servewise.core.model import Plan, Slo
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile
from servewise.core.window import SampleWindow

SLO = Slo(latency_ms=100.0, percentile=99.0)
SIZES = tuple(range(1, 65))
CANDIDATE = Candidate(
    InstanceType("gpu", 1.0, cold_start_s=20.0),
    LatencyProfile(SIZES, tuple(5.0 + 2.0 * b for b in SIZES)),
)
PLAN = Plan("gpu", 8, 5.0, 4)
RELATIVE = 1e-9


def close(got: float, want: float, scale: float) -> bool:
    """Within RELATIVE of ``want``, or of ``scale`` (the window's rates: a value near 0
    computed from rates near 1,000 carries their rounding)."""
    return abs(got - want) <= RELATIVE * max(abs(want), scale, 1.0)


def state(since: float | None, copy: bool = False) -> DeploymentState:
    """The deployment; ``copy``: equal candidate and plan objects that are not the same ones
    (as after a store re-read)."""
    candidate = dataclasses.replace(CANDIDATE) if copy else CANDIDATE
    plan = dataclasses.replace(PLAN) if copy else PLAN
    return DeploymentState((candidate,), SLO, plan, 300.0, since, 1.5)


def check_statistics(
    window: SampleWindow, config: ControlSettings, deployment: DeploymentState
) -> None:
    """Every series value, the estimate and the arrival CV of ``window`` against the reference
    functions over the same samples as a list."""
    samples = list(window)
    scale = max(s.rate_per_s for s in samples)
    want_series, want = control.sizing_series(samples, config, SLO, 20.0)
    got_series, got = control.sizing_series(window, config, SLO, 20.0)
    assert len(got_series) == len(want_series) == len(samples)
    assert got.sample_period_s == want.sample_period_s == control.sample_period_s(window)
    assert got.lead_s == want.lead_s
    for name in ("smoothed_per_s", "trend_per_s2", "spread_per_s", "sizing_per_s"):
        assert close(getattr(got, name), getattr(want, name), scale), name
    for i in range(len(samples)):
        assert close(got_series[i], want_series[i], scale), i
    assert close(
        control.estimate_arrival_cv(deployment, window),
        control.estimate_arrival_cv(deployment, samples),
        0.0,
    )


# Timestamps on a grid of quarter seconds (sums of them are exact, as the reference's
# means of equal timestamps are: it is the reference that would round otherwise), zero gaps
# included; rates with jumps; p99s around the SLO, some missing (0).
steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 1.25, 2.0, 7.5]),
        st.one_of(
            st.floats(0.0, 400.0),
            st.floats(0.0, 5.0),
            st.floats(1e3, 1e5),
        ),
        st.sampled_from([0.0, 20.0, 45.0, 90.0, 150.0, 400.0]),
        st.integers(0, 20),  # 0: clear (a rollback), 1-3: drop oldest, else trim by horizon
    ),
    min_size=1,
    max_size=160,
)
configs = st.builds(
    ControlSettings,
    safety_window_s=st.sampled_from([2.0, 10.0, 30.0]),
    savings_window_s=st.sampled_from([5.0, 20.0, 60.0]),
    ewma_half_life_s=st.sampled_from([0.0, 0.5, 3.0, 10.0, 60.0]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=steps,
    config=configs,
    start=st.sampled_from([0.0, 1000.0, 1.7e9]),
    slack=st.sampled_from([1, 8, window_module.COMPACT_SLACK_SAMPLES]),
)
def test_incremental_statistics_equal_the_whole_window_formulas(
    steps: list[tuple[float, float, float, int]],
    config: ControlSettings,
    start: float,
    slack: int,
) -> None:
    """After every append, drop and clear (trimmed by a horizon as the Control stream trims,
    dropped one by one, cleared), every value of the sizing series, the rate estimate and the
    arrival CV of a SampleWindow are the reference's over the same samples to 1e-9 relative;
    the median period exactly. The state changes plan start and objects on the way (the CV's
    inputs). Compaction's thresholds are drawn small too, so short runs compact often."""
    defaults = window_module.MIN_COMPACT_SAMPLES, window_module.COMPACT_SLACK_SAMPLES
    window_module.COMPACT_SLACK_SAMPLES = slack
    window_module.MIN_COMPACT_SAMPLES = min(slack, defaults[0])
    try:
        _run_and_check(steps, config, start)
    finally:
        window_module.MIN_COMPACT_SAMPLES, window_module.COMPACT_SLACK_SAMPLES = defaults


def _run_and_check(
    steps: list[tuple[float, float, float, int]], config: ControlSettings, start: float
) -> None:
    window = SampleWindow(maxlen=100)
    horizon = max(config.safety_window_s, config.savings_window_s) + 2 * config.ewma_half_life_s
    t = start
    for k, (gap, rate, p99, action) in enumerate(steps):
        t += gap
        window.append(Sample(t, rate, p99_ms=p99))
        if action == 0 and k % 7 == 3:
            window.clear()
            window.append(Sample(t, rate, p99_ms=p99))
        elif action <= 3 and len(window) > 1:
            window.popleft()
        else:
            while len(window) > 1 and window[0].timestamp_s < t - horizon:
                window.popleft()
        since = None if k < 40 else start + 0.25 * (k // 40) * 40
        check_statistics(window, config, state(since, copy=k % 5 == 0))


@pytest.mark.parametrize("seed", range(4))
def test_long_runs_through_many_compactions_keep_the_statistics(seed: int) -> None:
    """2,000 samples through windows of 40 to 400 (the default compaction thresholds: a
    compaction every few dozen to few hundred samples), with rate jumps of four orders of
    magnitude and the state changing plan start: the statistics stay the reference's to
    1e-9 (checked every 7th sample, and on every sample after a jump)."""
    rng = random.Random(seed)
    config = ControlSettings(
        safety_window_s=10.0,
        savings_window_s=rng.choice([20.0, 100.0, 300.0]),
        ewma_half_life_s=rng.choice([5.0, 30.0]),
    )
    horizon = max(config.safety_window_s, config.savings_window_s) + 2 * config.ewma_half_life_s
    window = SampleWindow(maxlen=1000)
    t, level, since = 1.7e9 + seed, 300.0, None
    for k in range(2000):
        t += rng.choice([0.0, 0.5, 1.0, 1.0, 1.0, 2.0])
        jump = rng.random() < 0.01
        if jump:
            level = rng.choice([0.5, 30.0, 300.0, 5e3])
        window.append(Sample(t, level * rng.uniform(0.9, 1.1), p99_ms=rng.uniform(0.0, 300.0)))
        while len(window) > 1 and window[0].timestamp_s < t - horizon:
            window.popleft()
        if k % 500 == 499:
            since = t - 5.0
        if jump or k % 7 == 0:
            check_statistics(window, config, state(since, copy=k % 3 == 0))


@pytest.mark.parametrize("run", [0, 1, 3, 5, 50])
def test_run_requests_reads_the_newest_pairs_of_any_sequence(run: int) -> None:
    """run_requests gives the same total on a list, a deque and a SampleWindow of the same
    samples: the rate of each of the newest ``run`` samples over the gap before it."""
    samples = [Sample(10.0 + 1.5 * k, 100.0 + k) for k in range(20)]
    want = (
        sum(
            cur.rate_per_s * (cur.timestamp_s - prev.timestamp_s)
            for prev, cur in list(itertools.pairwise(samples))[-run:]
        )
        if run
        else 0.0
    )
    for sequence in (samples, deque(samples), SampleWindow(samples)):
        assert control.run_requests(sequence, run) == want


def fake_advisor(deployment: DeploymentState) -> control.Advisor:
    """One replica per 100/s times the CV (B=16 below 1,300/s: a migration); the current plan
    meets the SLO while its replicas cover that."""

    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        need = rate * arrival_cv
        replicas = max(1, math.ceil(need / 100.0))
        plan = Plan("gpu", 16 if need < 1300 else 8, 5.0, replicas)
        meets = need <= deployment.current_plan.replicas * 100.0
        return Advice(rate, plan, True, float(replicas), meets)

    return advise


def test_the_controller_decides_alike_on_a_window_and_on_a_list() -> None:
    """Over 1,500 samples (a window of 240 full for most of them; rates rising and falling,
    bursts of SLO breaches), evaluate on a SampleWindow gives every decision of evaluate on
    the same samples as a list: kind, direction, target, steps and reason text, and the
    numbers to 10 significant digits."""
    config = ControlSettings(savings_window_s=120.0, ewma_half_life_s=60.0, min_dwell_s=300.0)
    horizon = max(config.safety_window_s, config.savings_window_s) + 2 * config.ewma_half_life_s
    window = SampleWindow(maxlen=1000)
    deployment = DeploymentState((CANDIDATE,), SLO, Plan("gpu", 8, 5.0, 12), 1000.0, None)
    switches = 0
    for k in range(1500):
        t = 1.7e9 + k + 0.001 * (k * 7919 % 13)
        # Rates on a 10/s grid: few distinct CV curves to compute.
        rate = 10.0 * round(100.0 * (1.0 + 0.6 * math.sin(k / 150.0)) + 3 * ((k * 31) % 7 - 3))
        p99 = 150.0 if k % 500 in (100, 101, 102, 300) else 30.0 + (k * 17) % 25
        window.append(Sample(t, rate, p99_ms=p99))
        while len(window) > 1 and window[0].timestamp_s < t - horizon:
            window.popleft()
        advise = fake_advisor(deployment)
        got = control.evaluate(deployment, window, config, advise)
        want = control.evaluate(deployment, list(window), config, advise)
        assert _rounded(got) == _rounded(want), k
        if got.decision is Decision.SWITCH and got.target_plan is not None:
            switches += 1
            deployment = DeploymentState(
                deployment.candidates,
                SLO,
                got.target_plan,
                got.sizing_rate_per_s,
                t,
                got.arrival_cv,
            )
    assert switches >= 5


def _rounded(value: object) -> object:
    """``value`` with its floats to 10 significant digits (the window's sums are formed in
    another order than the reference's; text and everything else compare exactly)."""
    if isinstance(value, float):
        return float(f"{value:.10g}") if math.isfinite(value) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple(_rounded(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple | list):
        return tuple(_rounded(v) for v in value)
    return value


def test_the_window_is_a_sequence_of_its_samples() -> None:
    """Indexing, slicing, iteration both ways, ``since``, ``maxlen`` and ``clear`` behave as
    on the list of the samples kept, across compactions of the storage."""
    window = SampleWindow(maxlen=50)
    kept: list[Sample] = []
    for k in range(400):
        sample = Sample(float(k // 2), float(k))
        window.append(sample)
        kept = [*kept, sample][-50:]
        if k % 3 == 1:
            assert window.popleft() is kept.pop(0)
        assert list(window) == kept
        assert list(reversed(window)) == kept[::-1]
        assert window[0] is kept[0]
        assert window[-1] is kept[-1]
        assert window[-3:] == kept[-3:]
        assert window.since(kept[-1].timestamp_s - 2.0) == [
            s for s in kept if s.timestamp_s >= kept[-1].timestamp_s - 2.0
        ]
    with pytest.raises(IndexError):
        window[len(kept)]
    window.clear()
    assert len(window) == 0
    assert list(window) == []
    with pytest.raises(IndexError):
        window.popleft()


def _series(samples: Sequence[Sample]) -> list[float]:
    series, _ = control.sizing_series(samples, ControlSettings(), SLO, 20.0)
    return list(series)


def test_a_window_emptied_and_refilled_starts_afresh() -> None:
    """Dropping every sample and appending new ones gives the statistics of the new ones
    alone (nothing of the old samples' sums carries over)."""
    window = SampleWindow([Sample(float(t), 1e4 * (t % 2)) for t in range(100)])
    while len(window):
        window.popleft()
    fresh = [Sample(200.0 + t, 100.0 + t) for t in range(10)]
    for s in fresh:
        window.append(s)
    assert all(
        math.isclose(a, b, rel_tol=1e-12)
        for a, b in zip(_series(window), _series(fresh), strict=True)
    )
