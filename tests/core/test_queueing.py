"""The analytic predictor: its invariants, and its agreement with the simulator where the
queueing model is classical."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servewise.core import queueing
from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile
from servewise.core.simulator import simulate


@st.composite
def plans(draw: st.DrawFn) -> tuple[LatencyProfile, Plan, Workload]:
    base = draw(st.floats(0.5, 50.0))
    per_item = base * draw(st.floats(0.0, 1.0))
    top = draw(st.sampled_from([1, 4, 16, 64, 256]))
    profile = LatencyProfile.linear(base, per_item, top)
    big_b = draw(st.integers(1, top))
    delay = draw(st.sampled_from([0.0, 0.5, 2.0, 10.0]))
    replicas = draw(st.integers(1, 40))
    capacity = replicas * big_b / profile.service_time_ms(big_b) * 1000.0
    rate = capacity * draw(st.floats(0.01, 0.98))
    cv = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]))
    return profile, Plan("x", big_b, delay, replicas), Workload(rate, cv)


@given(plans(), st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_more_replicas_never_raise_predicted_latency(
    problem: tuple[LatencyProfile, Plan, Workload], extra: int
) -> None:
    """Without a batching delay, adding replicas never raises the predicted mean or any
    predicted percentile.

    With T > 0 this is not a property of the serving model itself: an idle replica waits up to
    T for its batch where a busy one would have taken the queue at once, so the simulator
    shows more replicas raising latency (tests/core/test_simulator.py pins such a case), and
    the predictor rightly may too.
    """
    profile, plan, workload = problem
    plan = Plan(plan.instance_type, plan.max_batch_size, 0.0, plan.replicas)
    more = Plan(plan.instance_type, plan.max_batch_size, 0.0, plan.replicas + extra)
    slo = Slo(100.0, 99.0)
    before = queueing.predict(profile, plan, workload, slo)
    after = queueing.predict(profile, more, workload, slo)
    tolerance = 1e-6
    assert after.mean_ms <= before.mean_ms * (1 + tolerance)
    for name in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms"):
        assert getattr(after, name) <= getattr(before, name) * (1 + tolerance), name


@given(plans())
@settings(max_examples=300, deadline=None)
def test_percentiles_are_ordered_and_at_least_one_service_time(
    problem: tuple[LatencyProfile, Plan, Workload],
) -> None:
    """p50 <= p90 <= p95 <= p99 <= p99.9, and no request is faster than a batch of one."""
    profile, plan, workload = problem
    p = queueing.predict(profile, plan, workload, None)
    # Quantiles are found by bisection; at an atom of the distribution (the first request of
    # a timer-dispatched batch waits exactly T) neighbouring levels agree only to ~1e-11.
    slack = 1 + 1e-9
    assert p.p50_ms <= p.p90_ms * slack
    assert p.p90_ms <= p.p95_ms * slack
    assert p.p95_ms <= p.p99_ms * slack
    assert p.p99_ms <= p.p999_ms * slack
    assert p.p50_ms >= profile.service_time_ms(1) * (1 - 1e-9)


def test_unstable_plans_predict_infinite_latency() -> None:
    """A rate at or above N*B/s(B) has no stationary latency."""
    profile = LatencyProfile.linear(10.0, 1.0, 8)
    capacity = 2 * 8 / profile.service_time_ms(8) * 1000.0
    p = queueing.predict(profile, Plan("x", 8, 1.0, 2), Workload(capacity * 1.01), None)
    assert p.p99_ms == float("inf")


def test_tail_probability_agrees_with_predicted_quantile() -> None:
    """P(latency > predicted p99) is 1% by the same model (the screen and the report agree)."""
    profile = LatencyProfile.linear(5.0, 0.5, 64)
    tables = queueing.ServiceTables.build([profile], [64])
    args = (
        tables,
        np.zeros(3, dtype=np.int64),
        2_000.0,
        1.0,
        np.array([1, 16, 64]),
        np.array([0.0, 2.0, 5.0]),
        np.array([30, 4, 3]),
    )
    p99 = queueing.predict_many(*args, 99.0).latency_ms
    for i, value in enumerate(p99):
        tail = queueing.tail_probability(*args, float(value) * 1.001)[i]
        assert tail <= 0.01 + 1e-6
        tail_before = queueing.tail_probability(*args, float(value) * 0.99)[i]
        assert tail_before >= 0.01 - 1e-6


@pytest.mark.parametrize(("rho", "replicas"), [(0.5, 1), (0.7, 4), (0.8, 16)])
def test_realtime_p99_within_a_fifth_of_simulation(rho: float, replicas: int) -> None:
    """For real-time serving (M/D/N) the predicted p99 is within 20% of the simulator's.

    This pins the predictor's accuracy where the queueing model is classical; its accuracy on
    batching plans is measured, not asserted, by bench/plan_quality.py.
    """
    profile = LatencyProfile((1,), (10.0,))
    rate = rho * replicas / 10.0 * 1000.0
    plan = Plan("x", 1, 0.0, replicas)
    slo = Slo(1e9)
    predicted = queueing.predict(profile, plan, Workload(rate), slo).p99_ms
    simulated = simulate(profile, plan, Workload(rate), 200_000, seed=5, slo=slo).latency.p99_ms
    assert predicted == pytest.approx(simulated, rel=0.2)


# Profiles of bench scenarios whose p99 the earlier model missed (bench/plan_quality.py):
# s2026-012's synthetic H100 line and s2026-034's T4 ResNet-50 FP32 table (p99 per batch).
H100_LINE = LatencyProfile.linear(10.715, 0.18512, 1024)
T4_RESNET50 = LatencyProfile((1, 2, 4, 8), (16.71, 16.99, 18.03, 22.9))


@pytest.mark.parametrize(
    ("profile", "plan", "workload", "tolerance"),
    [
        # T = 0, large batches on several replicas: the replicas' phases drift apart and batch
        # sizes alternate long and short (the even-stagger model said -36%).
        (H100_LINE, Plan("x", 768, 0.0, 5), Workload(24_364.0), 0.10),
        (H100_LINE, Plan("x", 768, 0.0, 2), Workload(6_000.0), 0.10),
        # ...unless batching is nearly free: then idle replicas stack onto consecutive
        # arrivals and dispatch as one cluster, and a request waits up to a whole cycle.
        (LatencyProfile.linear(29.0, 0.1, 16), Plan("x", 16, 0.0, 3), Workload(940.0), 0.08),
        # Bursty single replica at light load, T = 0: a request behind its clump's first one
        # waits out nearly that whole service, not a uniform share of it (was +18%).
        (T4_RESNET50, Plan("x", 6, 0.0, 1), Workload(0.62, 3.07), 0.08),
        # Bursty arrivals with a delay: an idle replica's batch holds a whole clump, whose size
        # has a long tail (was -69%).
        (LatencyProfile.linear(1.6, 1.6, 64), Plan("x", 64, 1.0, 5), Workload(80.0, 4.0), 0.10),
    ],
)
def test_batching_p99_against_simulation(
    profile: LatencyProfile, plan: Plan, workload: Workload, tolerance: float
) -> None:
    """Where the model's batching regimes were fixed against the simulator, its p99 stays
    within ``tolerance`` of a long seeded simulation (the median of three seeds)."""
    slo = Slo(1e9)
    predicted = queueing.predict(profile, plan, workload, slo).p99_ms
    simulated = float(
        np.median(
            [
                simulate(profile, plan, workload, 400_000, seed=seed, slo=slo).latency.p99_ms
                for seed in (21, 22, 23)
            ]
        )
    )
    assert predicted == pytest.approx(simulated, rel=tolerance)


@given(
    seed=st.integers(0, 2**32 - 1),
    rate_per_s=st.floats(1.0, 3_000.0),
    arrival_cv=st.sampled_from([0.5, 1.0, 2.0, 3.5]),
)
@settings(max_examples=30, deadline=None)
def test_scoring_plans_together_equals_scoring_each_alone(
    seed: int, rate_per_s: float, arrival_cv: float
) -> None:
    """The kernel keeps (B, window)'s renewal sums for later plans; plans scored in one call
    (ladder order: the same B and T at several replica counts) get exactly what each gets
    alone."""
    rng = np.random.default_rng(seed)
    profiles = [
        LatencyProfile((1, 8, 64, 256), (6.0, 7.5, 22.0, 80.0)),
        LatencyProfile.linear(20.0, 4.0, 16),
    ]
    tables = queueing.ServiceTables.build(profiles, [p.max_batch_size for p in profiles])
    kinds = rng.integers(0, 2, 12)
    kind = np.repeat(kinds, 3)
    big_b = np.repeat([int(rng.integers(1, profiles[k].max_batch_size + 1)) for k in kinds], 3)
    delay = np.repeat(rng.choice([0.0, 2.0, 15.0], 12), 3)
    replicas = rng.integers(1, 12, 36)
    together = queueing.tail_probability(
        tables, kind, rate_per_s, arrival_cv, big_b, delay, replicas, 80.0
    )
    alone = [
        queueing.tail_probability(
            tables,
            kind[i : i + 1],
            rate_per_s,
            arrival_cv,
            big_b[i : i + 1],
            delay[i : i + 1],
            replicas[i : i + 1],
            80.0,
        )[0]
        for i in range(36)
    ]
    assert np.array_equal(together, np.array(alone), equal_nan=True)


def test_kernel_memo_gives_what_a_cold_thread_computes() -> None:
    """The kernel keeps renewal sums per thread across calls (a table keyed by rate, CV, B and
    window): after hundreds of other plans have filled and overwritten it, every plan's tail
    is bit-identical to what a new thread, whose table is empty, computes for it alone."""
    rng = np.random.default_rng(11)
    profiles = [
        LatencyProfile((1, 8, 64, 256), (6.0, 7.5, 22.0, 80.0)),
        LatencyProfile.linear(20.0, 4.0, 16),
    ]
    tables = queueing.ServiceTables.build(profiles, [p.max_batch_size for p in profiles])
    count = 600  # more (B, window) keys than the table has slots: collisions overwrite
    kind = rng.integers(0, 2, count)
    big_b = np.array([int(rng.integers(2, profiles[k].max_batch_size + 1)) for k in kind])
    delay = rng.uniform(0.5, 40.0, count)
    replicas = rng.integers(1, 12, count)
    rate_per_s, arrival_cv = 900.0, 2.5

    def tail(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return queueing.tail_probability(
            tables,
            kind[rows],
            rate_per_s,
            arrival_cv,
            big_b[rows],
            delay[rows],
            replicas[rows],
            80.0,
        )

    everything = np.arange(count)
    warm = tail(everything)
    shuffled = rng.permutation(everything)
    again = tail(shuffled)  # mostly hits, some slots overwritten meanwhile
    cold = np.empty(count)

    def alone(i: int) -> None:
        cold[i] = tail(np.array([i]))[0]

    for start in range(0, count, 50):
        threads = [threading.Thread(target=alone, args=(i,)) for i in range(start, start + 50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert np.array_equal(warm, cold, equal_nan=True)
    assert np.array_equal(again, cold[shuffled], equal_nan=True)
