"""The discrete-event simulator of the serving model (ARCHITECTURE.md section 2).

Three kinds of evidence: closed forms of classical queues (B = 1, T = 0), hand-computed runs of
the dispatch policy, and properties over random inputs checked against the policy's definition
and between the C kernel and the reference Python loop.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servewise.core import simulator
from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile
from servewise.core.simulator import (
    BatchTrace,
    ServiceDistribution,
    capacity_per_s,
    generate_arrivals_ms,
    relaxation_time_ms,
    run_batches,
    run_batches_python,
    simulate,
)

FloatArray = npt.NDArray[np.float64]
Kernel = Callable[..., BatchTrace]
KERNELS = [
    pytest.param(run_batches, id="c-kernel"),
    pytest.param(run_batches_python, id="python"),
]
CONV_TRACE = (
    Path(os.environ.get("SERVEWISE_DATA_DIR", "/work/shared/data"))
    / "traces"
    / "AzureLLMInferenceTrace_conv.csv"
)
SEED = 20261128


def constant_profile(service_ms: float) -> LatencyProfile:
    """B = 1 only: every request takes ``service_ms``."""
    return LatencyProfile((1,), (service_ms,))


def realtime(replicas: int = 1) -> Plan:
    """B = 1, T = 0: real-time serving, the classical multi-server queue."""
    return Plan("test", max_batch_size=1, max_queue_delay_ms=0.0, replicas=replicas)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lambda / mu (Erlang C)."""
    a, c = offered_load, servers
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    return tail / (head + tail)


def test_c_kernel_is_built() -> None:
    """run_batches uses the compiled kernel, so the agreement tests compare two implementations."""
    assert simulator._batchsim is not None  # type: ignore[attr-defined]


# --- closed forms (B = 1, T = 0) ------------------------------------------------------------------
# The sample sizes are larger than the 400k suggested for these checks: at 400k the relative
# spread of the M/M/c mean wait across seeds is 2%, too close to the 3% bound; at 2M-4M it is
# under 1% (measured over 10-20 seeds), and the C kernel runs 4M requests in about 0.4 s.


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho: float) -> None:
    """M/D/1: mean latency minus s is rho*s / (2(1 - rho)) within 3%."""
    service_ms = 2.0
    rate_per_s = rho / service_ms * 1000.0
    result = simulate(
        constant_profile(service_ms), realtime(), Workload(rate_per_s), 2_000_000, seed=SEED
    )
    expected_wait_ms = rho * service_ms / (2.0 * (1.0 - rho))
    assert result.stable
    assert result.latency.mean_ms - service_ms == pytest.approx(expected_wait_ms, rel=0.03)


@pytest.mark.parametrize(("servers", "rho"), [(2, 0.8), (4, 0.7)])
def test_mmc_mean_wait_matches_erlang_c(servers: int, rho: float) -> None:
    """M/M/c: mean latency minus mean service is C(c, a) / (c*mu - lambda) within 3%."""
    service_ms = 2.0
    mu = 1.0 / service_ms
    lam = rho * servers * mu  # per ms
    result = simulate(
        constant_profile(service_ms),
        realtime(servers),
        Workload(lam * 1000.0),
        4_000_000,
        seed=SEED,
        distribution=ServiceDistribution.EXPONENTIAL,
    )
    expected_wait_ms = erlang_c(servers, lam / mu) / (servers * mu - lam)
    assert result.stable
    assert result.latency.mean_ms - service_ms == pytest.approx(expected_wait_ms, rel=0.03)


def test_mm1_p99_matches_exponential_sojourn() -> None:
    """M/M/1: latency is exponential with rate mu - lambda, so p99 = ln(100)/(mu - lambda) (5%)."""
    service_ms = 2.0
    mu = 1.0 / service_ms
    lam = 0.7 * mu
    result = simulate(
        constant_profile(service_ms),
        realtime(),
        Workload(lam * 1000.0),
        2_000_000,
        seed=SEED,
        distribution=ServiceDistribution.EXPONENTIAL,
        slo=Slo(latency_ms=100.0, percentile=99.0),
    )
    expected_p99_ms = math.log(100.0) / (mu - lam)
    assert result.latency.p99_ms == pytest.approx(expected_p99_ms, rel=0.05)
    assert result.latency.mean_ms == pytest.approx(1.0 / (mu - lam), rel=0.03)
    assert result.latency.slo_percentile_ms == result.latency.p99_ms


# --- hand-computed runs ---------------------------------------------------------------------------
# s(b) = 4 + 2b ms, so s(1) = 6, s(2) = 8, s(3) = 10.
HAND_TABLE = LatencyProfile.linear(4.0, 2.0, 3).table_ms(3)


@dataclass(frozen=True)
class HandCase:
    arrivals_ms: tuple[float, ...]
    max_batch_size: int
    max_queue_delay_ms: float
    replicas: int
    dispatch_ms: tuple[float, ...]
    sizes: tuple[int, ...]
    completion_ms: tuple[float, ...]
    latencies_ms: tuple[float, ...]
    max_queue_length: int


HAND_CASES = {
    # B=3, T=10, N=1.
    #   [0, 2, 4]   idle replica waits; the queue reaches B at 4 (before 0 + T): size 3 at 4.
    #   [20, 25]    replica idle since 14; oldest waits T: all queued (2) at 30.
    #   [32, 33, 34] replica busy until 38 and 4 are queued by then (>= B): B oldest at 38.
    #   [35]        replica frees at 48, 35 + T = 45 has passed: dispatched alone at once.
    #   [56]        lone request on an idle replica waits T: 66.
    "fill-delay-busy": HandCase(
        arrivals_ms=(0, 2, 4, 20, 25, 32, 33, 34, 35, 56),
        max_batch_size=3,
        max_queue_delay_ms=10.0,
        replicas=1,
        dispatch_ms=(4, 30, 38, 48, 66),
        sizes=(3, 2, 3, 1, 1),
        completion_ms=(14, 38, 48, 54, 72),
        latencies_ms=(14, 12, 10, 18, 13, 16, 15, 14, 19, 16),
        max_queue_length=4,  # 32..35 waiting when the replica frees at 38
    ),
    # B=3, T=0, N=1: an idle replica takes whatever is queued, at once.
    #   [0] at 0; at 6 three are queued -> B; at 16 two are queued -> both; [30] at 30.
    "no-delay": HandCase(
        arrivals_ms=(0, 1, 2, 3, 10, 11, 30),
        max_batch_size=3,
        max_queue_delay_ms=0.0,
        replicas=1,
        dispatch_ms=(0, 6, 16, 30),
        sizes=(1, 3, 2, 1),
        completion_ms=(6, 16, 24, 36),
        latencies_ms=(6, 15, 14, 13, 14, 13, 6),
        max_queue_length=3,
    ),
    # B=3, T=10, N=2.
    #   [0, 1, 2] fill B at 2 on replica 1 (busy until 12).
    #   [3, 4, 5] fill B at 5 on replica 2 while replica 1 is still busy (until 15).
    #   [6]       replica 1 frees at 12, 6 + T = 16 not yet reached: waits, leaves alone at 16.
    #   [30]      waits T on an idle replica: 40.
    "two-replicas": HandCase(
        arrivals_ms=(0, 1, 2, 3, 4, 5, 6, 30),
        max_batch_size=3,
        max_queue_delay_ms=10.0,
        replicas=2,
        dispatch_ms=(2, 5, 16, 40),
        sizes=(3, 3, 1, 1),
        completion_ms=(12, 15, 22, 46),
        latencies_ms=(12, 11, 10, 12, 11, 10, 16, 16),
        max_queue_length=3,
    ),
}


def test_hand_table_is_the_linear_profile() -> None:
    """The hand-computed cases below rely on s(b) = 4 + 2b being exact at b = 1..3."""
    assert HAND_TABLE.tolist() == [0.0, 6.0, 8.0, 10.0]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_computed_dispatches(kernel: Kernel, case: HandCase) -> None:
    """Both implementations reproduce the hand-computed batches, times and latencies exactly."""
    arrivals = np.array(case.arrivals_ms, dtype=np.float64)
    trace = kernel(
        arrivals, HAND_TABLE, case.max_batch_size, case.max_queue_delay_ms, case.replicas
    )
    assert trace.dispatch_ms.tolist() == list(case.dispatch_ms)
    assert trace.sizes.tolist() == list(case.sizes)
    assert trace.completion_ms.tolist() == list(case.completion_ms)
    assert trace.latencies_ms().tolist() == list(case.latencies_ms)
    assert trace.busy_ms == sum(HAND_TABLE[b] for b in case.sizes)
    assert trace.max_queue_length == case.max_queue_length


@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_computed_cases_through_simulate_with_a_trace(case: HandCase) -> None:
    """simulate on explicit timestamps (seconds, any origin) reports the hand-computed run."""
    times_s = 100.0 + np.array(case.arrivals_ms) / 1000.0
    workload = Workload(rate_per_s=1.0, arrival_times_s=times_s)
    arrivals = generate_arrivals_ms(workload, 0, np.random.default_rng(0))
    np.testing.assert_allclose(arrivals, case.arrivals_ms, rtol=0, atol=1e-9)

    plan = Plan("test", case.max_batch_size, case.max_queue_delay_ms, case.replicas)
    result = simulate(LatencyProfile.linear(4.0, 2.0, 3), plan, workload, seed=1)
    duration_ms = case.completion_ms[-1] - case.arrivals_ms[0]
    busy_ms = sum(HAND_TABLE[b] for b in case.sizes)
    assert result.requests_simulated == len(case.arrivals_ms)
    assert result.latency.mean_ms == pytest.approx(np.mean(case.latencies_ms), abs=1e-6)
    assert result.mean_batch_size == pytest.approx(np.mean(case.sizes))
    assert result.simulated_duration_s == pytest.approx(duration_ms / 1000.0, abs=1e-9)
    assert result.utilisation == pytest.approx(busy_ms / (case.replicas * duration_ms), abs=1e-9)


def test_simulate_reports_the_longest_queue_seen_at_a_dispatch() -> None:
    """max_queue_length counts the requests waiting when a batch leaves (4 at 38 in the case)."""
    case = HAND_CASES["fill-delay-busy"]
    plan = Plan("test", case.max_batch_size, case.max_queue_delay_ms, case.replicas)
    result = simulate(
        LatencyProfile.linear(4.0, 2.0, 3),
        plan,
        Workload(1.0),
        arrivals_ms=np.array(case.arrivals_ms, dtype=np.float64),
    )
    assert result.max_queue_length == 4


# --- properties of the batch loop -----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    arrivals_ms: FloatArray
    table_ms: FloatArray
    max_batch_size: int
    max_queue_delay_ms: float
    replicas: int
    scale: FloatArray | None

    def run(self, kernel: Kernel) -> BatchTrace:
        return kernel(
            self.arrivals_ms,
            self.table_ms,
            self.max_batch_size,
            self.max_queue_delay_ms,
            self.replicas,
            self.scale,
        )


@st.composite
def scenarios(draw: st.DrawFn, max_batch_size: int | None = None) -> Scenario:
    """Random arrivals (with ties), any positive s(b) table, B, T (often 0), N and scales."""
    n = draw(st.integers(1, 60))
    gap = st.one_of(st.just(0.0), st.floats(0.0, 30.0), st.integers(0, 5).map(float))
    start = draw(st.floats(0.0, 1e6))
    arrivals = start + np.cumsum(np.array(draw(st.lists(gap, min_size=n, max_size=n))))
    big_b = max_batch_size if max_batch_size is not None else draw(st.integers(1, 8))
    service = st.one_of(st.floats(1e-3, 100.0), st.integers(1, 20).map(float))
    table = [0.0, *draw(st.lists(service, min_size=big_b, max_size=big_b))]
    delay = draw(st.one_of(st.just(0.0), st.floats(0.0, 60.0), st.integers(1, 20).map(float)))
    replicas = draw(st.integers(1, 4))
    scales = st.lists(st.floats(1e-3, 20.0), min_size=n, max_size=n)
    scale = draw(st.one_of(st.none(), scales))
    return Scenario(
        arrivals_ms=np.asarray(arrivals, dtype=np.float64),
        table_ms=np.array(table, dtype=np.float64),
        max_batch_size=big_b,
        max_queue_delay_ms=delay,
        replicas=replicas,
        scale=None if scale is None else np.array(scale, dtype=np.float64),
    )


@given(scenarios())
@settings(max_examples=200, deadline=None)
def test_c_kernel_and_python_reference_agree_exactly(sc: Scenario) -> None:
    """The C kernel and the Python loop produce bit-identical batches on any input."""
    fast = sc.run(run_batches)
    reference = sc.run(run_batches_python)
    np.testing.assert_array_equal(fast.dispatch_ms, reference.dispatch_ms)
    np.testing.assert_array_equal(fast.completion_ms, reference.completion_ms)
    np.testing.assert_array_equal(fast.sizes, reference.sizes)
    assert fast.max_queue_length == reference.max_queue_length
    # busy_ms is a sum of service times whose order (or n * s for equal services) is the
    # kernel's business: equal to rounding, not bit for bit.
    assert fast.busy_ms == pytest.approx(reference.busy_ms, rel=1e-12)


def assert_follows_policy(sc: Scenario, trace: BatchTrace) -> None:
    """Check one trace against section 2's dispatch rule, batch by batch."""
    a = sc.arrivals_ms
    n = len(a)
    big_b = sc.max_batch_size
    sizes = trace.sizes
    # Every request is served exactly once, in FIFO order, in batches of 1..B.
    assert sizes.sum() == n
    assert sizes.min() >= 1
    assert sizes.max() <= big_b
    firsts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    services: list[float] = []
    free = [0.0] * sc.replicas  # replica free times, rebuilt from the trace's own completions
    for k, (first, size) in enumerate(zip(firsts.tolist(), sizes.tolist(), strict=True)):
        d = float(trace.dispatch_ms[k])
        replica_free = heapq.heappop(free)
        last_arrival = a[first + size - 1]
        # Never before the replica is free nor before the last member has arrived.
        assert d >= replica_free
        assert d >= last_arrival
        # Never later than needed: by the time the replica is free and the oldest has waited T.
        assert d <= max(replica_free, a[first] + sc.max_queue_delay_ms)
        if size == big_b:
            # A full batch leaves as soon as the replica is free and B are queued.
            assert d == max(replica_free, last_arrival)
        else:
            # A partial batch takes everything queued: the next request arrives after it leaves.
            assert d == max(replica_free, a[first] + sc.max_queue_delay_ms)
            nxt = first + size
            assert nxt == n or a[nxt] > d
        service = sc.table_ms[size] * (1.0 if sc.scale is None else sc.scale[k])
        services.append(float(service))
        assert trace.completion_ms[k] == d + service
        heapq.heappush(free, float(trace.completion_ms[k]))
    latencies = trace.latencies_ms()
    per_request_service = np.repeat(trace.completion_ms - trace.dispatch_ms, sizes)
    assert (latencies >= 0).all()
    assert (latencies >= per_request_service).all()
    assert trace.busy_ms == pytest.approx(math.fsum(services), rel=1e-9)
    # The longest queue: requests arrived by a dispatch and not yet in an earlier batch.
    waiting = np.searchsorted(a, trace.dispatch_ms, side="right") - firsts
    assert trace.max_queue_length == int(waiting.max())


def max_in_service(trace: BatchTrace) -> int:
    """Largest number of batches in service at once (intervals [dispatch, completion))."""
    events = sorted(
        [(float(t), 1) for t in trace.dispatch_ms] + [(float(t), -1) for t in trace.completion_ms]
    )  # at equal times -1 sorts first: a replica freed at t can start again at t
    busy = peak = 0
    for _, step in events:
        busy += step
        peak = max(peak, busy)
    return peak


@pytest.mark.parametrize("kernel", KERNELS)
@given(sc=scenarios())
@settings(max_examples=120, deadline=None)
def test_batches_follow_the_dispatch_policy(kernel: Kernel, sc: Scenario) -> None:
    """Every request once, no early or late dispatch, latency >= service, at most N busy."""
    trace = sc.run(kernel)
    assert_follows_policy(sc, trace)
    assert max_in_service(trace) <= sc.replicas


@given(sc=scenarios(max_batch_size=1))
@settings(max_examples=120, deadline=None)
def test_another_replica_never_delays_any_request_without_batching(sc: Scenario) -> None:
    """B=1, T=0 (FIFO G/G/c) on the same arrivals and service times: N+1 replicas never make
    any single request later than N do (so neither mean nor any percentile can rise)."""
    base = Scenario(sc.arrivals_ms, sc.table_ms, 1, 0.0, sc.replicas, sc.scale)
    more = Scenario(sc.arrivals_ms, sc.table_ms, 1, 0.0, sc.replicas + 1, sc.scale)
    fewer_latencies = base.run(run_batches).latencies_ms()
    more_latencies = more.run(run_batches).latencies_ms()
    assert (more_latencies <= fewer_latencies).all()


def test_more_replicas_can_raise_latency_when_batching_waits() -> None:
    """With T > 0 the rule is no theorem: an idle extra replica waits T where a busy one would
    have taken the queue at once (s(b) = 9 ms for every b, B=4, T=2, arrivals 6, 14, 17 ms)."""
    arrivals = np.array([6.0, 14.0, 17.0])
    table = np.array([0.0, 9.0, 9.0, 9.0, 9.0])
    one = run_batches(arrivals, table, 4, 2.0, 1).latencies_ms()
    two = run_batches(arrivals, table, 4, 2.0, 2).latencies_ms()
    assert one.tolist() == [11.0, 12.0, 9.0]
    assert two.tolist() == [11.0, 11.0, 11.0]
    assert two.mean() > one.mean()


@pytest.mark.parametrize(
    "distribution", [ServiceDistribution.DETERMINISTIC, ServiceDistribution.EXPONENTIAL]
)
def test_more_replicas_never_raise_mean_or_p99_on_common_arrivals(
    distribution: ServiceDistribution,
) -> None:
    """simulate with B=1, T=0 on one arrival sample: mean and p99 fall as replicas are added."""
    profile = constant_profile(3.0)
    workload = Workload(600.0)  # 1.8 replicas' worth of work
    arrivals = generate_arrivals_ms(workload, 100_000, np.random.default_rng(SEED))
    results = [
        simulate(profile, realtime(n), workload, arrivals_ms=arrivals, distribution=distribution)
        for n in (2, 3, 4, 8)
    ]
    means = [r.latency.mean_ms for r in results]
    p99s = [r.latency.p99_ms for r in results]
    assert means == sorted(means, reverse=True)
    assert p99s == sorted(p99s, reverse=True)
    assert means[0] > means[-1]  # the comparison is not vacuous: 2 replicas do queue


# --- simulate: results and flags ------------------------------------------------------------------
BATCHING = Plan("test", max_batch_size=8, max_queue_delay_ms=5.0, replicas=2)
RESNET_LIKE = LatencyProfile.linear(9.0, 1.2, 32)


def test_simulate_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same result, field for field (exponential service included)."""

    def run() -> simulator.SimulationResult:
        return simulate(
            RESNET_LIKE,
            BATCHING,
            Workload(500.0, 2.0),
            num_requests=20_000,
            seed=7,
            distribution=ServiceDistribution.EXPONENTIAL,
        )

    assert run() == run()


def test_simulate_differs_between_seeds() -> None:
    """Different seeds draw different arrivals, so the latencies differ."""
    first = simulate(RESNET_LIKE, BATCHING, Workload(500.0), num_requests=20_000, seed=1)
    second = simulate(RESNET_LIKE, BATCHING, Workload(500.0), num_requests=20_000, seed=2)
    assert first.latency != second.latency
    assert (first.seed, second.seed) == (1, 2)


@pytest.mark.parametrize("load", [1.0, 1.5, 3.0])
def test_rate_at_or_above_capacity_is_unstable(load: float) -> None:
    """A Poisson rate at or above N*B/s(B) is never reported stable."""
    capacity = capacity_per_s(RESNET_LIKE, BATCHING.max_batch_size, BATCHING.replicas)
    result = simulate(RESNET_LIKE, BATCHING, Workload(capacity * load), num_requests=50_000)
    assert not result.stable
    if load > 1.0:
        assert "capacity" in result.stability_reason


def test_overloaded_run_serves_at_capacity_and_its_queue_grows() -> None:
    """Above capacity throughput pins at N*B/s(B), batches are full and the queue keeps growing."""
    capacity = capacity_per_s(RESNET_LIKE, BATCHING.max_batch_size, BATCHING.replicas)
    result = simulate(RESNET_LIKE, BATCHING, Workload(capacity * 1.5), num_requests=50_000)
    assert result.throughput_per_s == pytest.approx(capacity, rel=0.01)
    assert result.mean_batch_size == pytest.approx(BATCHING.max_batch_size, rel=0.01)
    assert result.utilisation == pytest.approx(1.0, abs=0.01)
    assert result.max_queue_length > 10_000


def test_short_run_of_a_near_critical_queue_is_unverified() -> None:
    """At 99% load a run shorter than 20 relaxation times is not trusted; a long one is.

    D/M/1 (constant gaps, exponential service) keeps the sample rate exact, so the flag depends
    on run length only: relaxation time = mu / (mu - lambda)^2 = 10 s, 20 of them = 198k requests.
    """
    profile = constant_profile(1.0)
    workload = Workload(990.0, arrival_cv=0.0)
    expo = ServiceDistribution.EXPONENTIAL
    short = simulate(profile, realtime(), workload, num_requests=20_000, distribution=expo)
    long = simulate(profile, realtime(), workload, num_requests=400_000, distribution=expo)
    assert not short.stable
    assert "unverified" in short.stability_reason
    assert long.stable


STABLE_PLANS = [
    pytest.param(constant_profile(2.0), realtime(), 300.0, 1.0, id="M/D/1"),
    pytest.param(constant_profile(2.0), realtime(3), 1200.0, 3.0, id="bursty-G/D/3"),
    pytest.param(RESNET_LIKE, BATCHING, 500.0, 1.0, id="batching"),
    pytest.param(RESNET_LIKE, Plan("t", 32, 20.0, 1), 50.0, 0.5, id="light-batching"),
]


@pytest.mark.parametrize(("profile", "plan", "rate", "cv"), STABLE_PLANS)
def test_stable_runs_serve_the_offered_rate(
    profile: LatencyProfile, plan: Plan, rate: float, cv: float
) -> None:
    """A stable run's throughput is the arrival rate; utilisation, batches and queue are sane."""
    result = simulate(profile, plan, Workload(rate, cv), num_requests=100_000)
    assert result.stable, result.stability_reason
    assert result.throughput_per_s == pytest.approx(rate, rel=0.02)
    assert 0.0 <= result.utilisation <= 1.0
    assert 1.0 <= result.mean_batch_size <= plan.max_batch_size
    assert result.max_queue_length >= result.mean_batch_size
    assert result.requests_simulated == 100_000
    assert result.latency.p50_ms <= result.latency.p90_ms <= result.latency.p99_ms
    assert result.latency.p99_ms <= result.latency.p999_ms
    assert result.latency.p50_ms >= profile.service_time_ms(1)


def test_realtime_utilisation_is_the_offered_load() -> None:
    """For B=1 the busy fraction is lambda * s / N."""
    result = simulate(constant_profile(2.0), realtime(3), Workload(1200.0), num_requests=100_000)
    assert result.utilisation == pytest.approx(1200.0 * 0.002 / 3, rel=0.02)


def test_simulate_rejects_a_batch_larger_than_the_profile() -> None:
    """A plan whose B exceeds the profile's largest measured batch is refused, not simulated."""
    with pytest.raises(ValueError, match="max_batch_size"):
        simulate(RESNET_LIKE, Plan("t", 33, 1.0, 1), Workload(10.0), num_requests=100)


def load_conv_trace_s() -> FloatArray:
    """Arrival times (s since the first request) of the Azure LLM conversation trace."""
    stamps = np.loadtxt(CONV_TRACE, delimiter=",", skiprows=1, usecols=0, dtype=str)
    times = stamps.astype("datetime64[ns]")
    seconds: FloatArray = (times - times[0]).astype(np.float64) / 1e9
    return seconds


def test_simulate_on_a_real_trace() -> None:
    """An explicit trace (Azure LLM conv, 1 h, about 5.4 req/s) is simulated request for request.

    Source: Azure/AzurePublicDataset, AzureLLMInferenceTrace 2023 (CC-BY-4.0), Patel et al.,
    "Splitwise", ISCA 2024.
    """
    times_s = load_conv_trace_s()
    assert (np.diff(times_s) >= 0).all()
    workload = Workload(rate_per_s=0.0, arrival_times_s=times_s)  # rate is derived from times
    profile = LatencyProfile((1, 2, 4, 8), (10.37, 10.24, 10.46, 11.5))  # ResNet-50 V100 FP32
    plan = Plan("p3.2xlarge", max_batch_size=8, max_queue_delay_ms=5.0, replicas=1)
    result = simulate(profile, plan, workload)
    assert result.requests_simulated == len(times_s)
    assert result.stable, result.stability_reason
    assert result.throughput_per_s == pytest.approx((len(times_s) - 1) / times_s[-1], rel=0.01)
    # The same run by hand: the trace shifted to ms through the kernel.
    trace = run_batches(times_s * 1000.0, profile.table_ms(8), 8, 5.0, 1)
    skip = int(len(times_s) * simulator.WARMUP_FRACTION)
    assert result.latency.mean_ms == pytest.approx(float(trace.latencies_ms()[skip:].mean()))
    assert result.latency.p50_ms >= 10.24


# --- arrivals, capacity, relaxation ---------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.0, 0.5, 1.0, 3.0])
def test_generated_arrivals_have_the_requested_rate_and_cv(cv: float) -> None:
    """Renewal arrivals are sorted, with mean gap 1/rate and gap CV as asked."""
    arrivals = generate_arrivals_ms(Workload(250.0, cv), 200_000, np.random.default_rng(SEED))
    gaps = np.diff(arrivals)
    assert len(arrivals) == 200_000
    assert (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(4.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.03 * max(cv, 1.0))


def test_trace_arrivals_are_shifted_to_start_at_zero() -> None:
    """Explicit timestamps in seconds become ms since the first one; num_requests is ignored."""
    workload = Workload(1.0, arrival_times_s=np.array([5.0, 5.5, 7.25]))
    arrivals = generate_arrivals_ms(workload, 10, np.random.default_rng(0))
    assert arrivals.tolist() == [0.0, 500.0, 2250.0]


def test_capacity_is_n_times_b_over_s_of_b() -> None:
    """Capacity N*B/s(B): 2 replicas, B=8, s(8) = 9 + 1.2*8 = 18.6 ms -> 860.2/s."""
    assert capacity_per_s(RESNET_LIKE, 8, 2) == pytest.approx(2 * 8 / 18.6 * 1000.0)
    assert capacity_per_s(RESNET_LIKE, 33, 1) == 0.0  # beyond the profile: infeasible


def test_relaxation_time_is_variance_rate_over_squared_slack() -> None:
    """sigma^2/delta^2 with sigma^2 = lambda*ca^2 + capacity*B*cs^2; inf at or above capacity."""
    assert relaxation_time_ms(0.9, 1.0, 1.0, 1, 0.0) == pytest.approx(0.9 / 0.01)
    assert relaxation_time_ms(0.9, 2.0, 1.0, 4, 1.0) == pytest.approx((0.9 * 4 + 4) / 0.01)
    assert relaxation_time_ms(1.0, 1.0, 1.0, 1, 1.0) == math.inf
    assert relaxation_time_ms(1.5, 1.0, 1.0, 1, 1.0) == math.inf


# --- regressions of defects this suite found -----------------------------------------------------


def test_rate_exactly_at_capacity_with_constant_gaps_is_unstable() -> None:
    """Section 2: a plan with lambda at capacity is unstable, even with regular traffic."""
    profile = constant_profile(1.1)
    capacity = capacity_per_s(profile, 1, 1)
    result = simulate(profile, realtime(), Workload(capacity, arrival_cv=0.0), num_requests=10_000)
    assert not result.stable, result.stability_reason


def test_utilisation_never_exceeds_one() -> None:
    """Utilisation is a fraction in [0, 1], even when the replica is busy the whole run."""
    result = simulate(constant_profile(0.1), realtime(), Workload(1.0), arrivals_ms=np.array([0.7]))
    assert result.utilisation <= 1.0


def test_rate_at_capacity_is_unstable_on_a_shared_arrival_sample() -> None:
    """A shared sample of the workload's own arrivals gets the same stability verdict as a fresh
    draw: at rate == capacity it is unstable."""
    profile = constant_profile(1.1)
    workload = Workload(capacity_per_s(profile, 1, 1), arrival_cv=0.0)
    shared = generate_arrivals_ms(workload, 10_000, np.random.default_rng(SEED))
    fresh = simulate(profile, realtime(), workload, num_requests=10_000)
    on_shared = simulate(profile, realtime(), workload, arrivals_ms=shared)
    assert not fresh.stable
    assert not on_shared.stable, on_shared.stability_reason


# --- shared renewal samples, latencies and order statistics in the kernel --------------------


@pytest.mark.parametrize("cv", [0.0, 1.0, 2.5])
def test_renewal_sample_is_the_same_however_far_it_was_extended(cv: float) -> None:
    """A sample is a prefix of every longer one of its seed, whether the cache drew it in one
    go or extended a shorter one, and one rate is another's sample with time scaled."""
    cache = simulator._UnitSamples(max_floats=10_000_000)
    short = cache.get(cv, 7, 1_000)
    long = cache.get(cv, 7, 3 * simulator.ARRIVAL_BLOCK + 5)
    fresh = simulator._UnitSamples(max_floats=10_000_000).get(
        cv, 7, 3 * simulator.ARRIVAL_BLOCK + 5
    )
    assert np.array_equal(short, long[:1_000])
    assert np.array_equal(long, fresh)
    assert (np.diff(long) >= 0).all()
    at_250 = simulator.renewal_arrivals_ms(250.0, cv, 50_000, 11)
    at_1000 = simulator.renewal_arrivals_ms(1000.0, cv, 50_000, 11)
    assert np.allclose(at_250, 4.0 * at_1000, rtol=1e-12)
    assert (
        not np.array_equal(at_250, simulator.renewal_arrivals_ms(250.0, cv, 50_000, 12))
        or cv == 0.0
    )


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_renewal_sample_has_the_requested_rate_and_cv(cv: float) -> None:
    gaps = np.diff(simulator.renewal_arrivals_ms(250.0, cv, 200_000, SEED))
    assert gaps.mean() == pytest.approx(4.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.03 * max(cv, 1.0))


def test_renewal_cache_stays_within_its_bound() -> None:
    cache = simulator._UnitSamples(max_floats=3 * simulator.ARRIVAL_BLOCK)
    for seed in range(5):
        cache.get(1.0, seed, simulator.ARRIVAL_BLOCK)
    assert sum(len(d) for _, d in cache._samples.values()) <= 3 * simulator.ARRIVAL_BLOCK
    # An evicted sample comes back identical.
    again = cache.get(1.0, 0, 10)
    assert np.array_equal(again, simulator._UnitSamples(10**7).get(1.0, 0, 10))


@given(
    seed=st.integers(0, 2**32 - 1),
    replicas=st.integers(1, 4),
    big_b=st.integers(1, 16),
    skip=st.integers(0, 50),
)
@settings(max_examples=60, deadline=None)
def test_kernel_latencies_equal_completion_minus_arrival(
    seed: int, replicas: int, big_b: int, skip: int
) -> None:
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0, 400))
    table = 0.5 + 0.3 * np.arange(big_b + 1, dtype=np.float64)
    trace = simulator.run_batches(arrivals, table, big_b, 0.7, replicas)
    expected = (np.repeat(trace.completion_ms, trace.sizes) - trace.arrivals_ms)[skip:]
    assert np.array_equal(trace.latencies_ms(skip), expected)


@given(
    seed=st.integers(0, 2**32 - 1),
    replicas=st.integers(1, 6),
    big_b=st.integers(1, 16),
    delay_ms=st.sampled_from([0.0, 0.3, 0.7, 5.0]),
    skip=st.integers(0, 50),
)
@settings(max_examples=80, deadline=None)
def test_run_latencies_equals_the_batch_trace(
    seed: int, replicas: int, big_b: int, delay_ms: float, skip: int
) -> None:
    """The fused kernel (latencies written as batches complete, no per-batch arrays) gives
    bit for bit the trace's latencies and totals, on the ring path (B=1) and the heap path."""
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0, 400))
    table = 0.5 + 0.3 * np.arange(big_b + 1, dtype=np.float64)
    trace = simulator.run_batches(arrivals, table, big_b, delay_ms, replicas)
    latencies, stats = simulator.run_latencies(arrivals, table, big_b, delay_ms, replicas, skip)
    assert np.array_equal(latencies, trace.latencies_ms(skip))
    assert stats.batches == len(trace.sizes)
    assert stats.busy_ms == trace.busy_ms
    assert stats.max_queue_length == trace.max_queue_length
    assert stats.last_completion_ms == trace.completion_ms.max()


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([30, 500, 9_000, 20_000]),
    replicas=st.integers(1, 6),
    big_b=st.integers(1, 16),
    delay_ms=st.sampled_from([0.0, 0.3, 5.0]),
    load=st.floats(0.3, 1.05),
    chunks=st.integers(1, 40),
    bound_quantile=st.floats(0.5, 1.0),
    rank_quantile=st.floats(0.0, 1.0),
)
@settings(max_examples=80, deadline=None)
def test_search_run_equals_the_latencies_it_reduces(
    seed: int,
    size: int,
    replicas: int,
    big_b: int,
    delay_ms: float,
    load: float,
    chunks: int,
    bound_quantile: float,
    rank_quantile: float,
) -> None:
    """The search's reduced run (selected rank and per-chunk counts of slow requests, with
    latencies kept in the kernel) equals selecting from and counting the full latencies,
    including chunks that do not divide the run and runs shorter than their chunk count."""
    table = 0.5 + 0.3 * np.arange(big_b + 1, dtype=np.float64)
    capacity_per_ms = replicas * big_b / table[big_b]
    gaps = np.random.default_rng(seed).exponential(1.0 / (capacity_per_ms * load), size)
    arrivals = np.cumsum(gaps)
    skip = size // 20
    latencies, _ = simulator.run_latencies(arrivals, table, big_b, delay_ms, replicas, skip)
    rank = min(int(rank_quantile * len(latencies)), len(latencies) - 1)
    bound_ms = float(np.quantile(latencies, bound_quantile))
    value, counts = simulator.search_run(
        arrivals, table, big_b, delay_ms, replicas, skip, rank, bound_ms, chunks
    )
    assert value == np.sort(latencies)[rank]
    per_chunk = len(latencies) // chunks
    if per_chunk == 0:
        expected = [int(np.sum(latencies > bound_ms))] + [0] * (chunks - 1)
    else:
        slow = latencies[: per_chunk * chunks] > bound_ms
        expected = slow.reshape(chunks, per_chunk).sum(axis=1).tolist()
    assert counts == expected
    assert simulator.slow_counts(latencies, bound_ms, chunks) == expected
    with mock.patch.object(simulator, "_batchsim", None):  # the pure-Python route
        again = simulator.search_run(
            arrivals, table, big_b, delay_ms, replicas, skip, rank, bound_ms, chunks
        )
    assert again == (value, expected)


@given(
    seed=st.integers(0, 2**32 - 1),
    replicas=st.integers(1, 6),
    load=st.floats(0.85, 1.1),
    decimals=st.integers(0, 3),
    skip=st.integers(0, 300),
)
@settings(max_examples=60, deadline=None)
def test_realtime_queue_length_scan_matches_the_reference(
    seed: int, replicas: int, load: float, decimals: int, skip: int
) -> None:
    """The real-time path finds the longest queue by scanning only the blocks of dispatches
    that could hold it: near capacity (queues spanning many blocks, growing or draining) and
    with tied arrival times it reports what the per-request reference loop reports, and the
    same latencies on both routes."""
    service_ms = 2.0
    gaps = np.random.default_rng(seed).exponential(service_ms / (replicas * load), 3_000)
    arrivals = np.round(np.cumsum(gaps), decimals)
    table = np.array([0.0, service_ms])
    reference = run_batches_python(arrivals, table, 1, 0.0, replicas)
    trace = simulator.run_batches(arrivals, table, 1, 0.0, replicas)
    latencies, stats = simulator.run_latencies(arrivals, table, 1, 0.0, replicas, skip)
    assert trace.max_queue_length == reference.max_queue_length
    assert stats.max_queue_length == reference.max_queue_length
    assert np.array_equal(trace.completion_ms, reference.completion_ms)
    assert np.array_equal(latencies, reference.latencies_ms(skip))
    assert stats.busy_ms == reference.busy_ms


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([100, 8_191, 8_192, 20_000, 120_000]),
    kind=st.sampled_from(
        ["continuous", "few_values", "constant", "autocorrelated", "atom_with_tail"]
    ),
    count=st.integers(1, 8),
)
@settings(max_examples=40, deadline=None)
def test_select_ranks_equals_sorting(seed: int, size: int, kind: str, count: int) -> None:
    """The kernel's bracketed selection (large arrays) and quickselect (small, or fallback)
    give exactly the sorted array's values, duplicates and time-ordered data included."""
    rng = np.random.default_rng(seed)
    values = {
        "continuous": lambda: rng.exponential(1.0, size),
        "few_values": lambda: rng.integers(0, 4, size).astype(np.float64),
        "constant": lambda: np.full(size, 2.5),
        "autocorrelated": lambda: np.cumsum(rng.normal(0.0, 1.0, size)),
        # A lightly loaded deterministic system: nearly every latency is s(1) exactly, so
        # bracket bounds land on the atom and its values are counted rather than copied.
        "atom_with_tail": lambda: np.where(
            rng.random(size) < 0.98, 3.0, 3.0 + rng.exponential(1.0, size)
        ),
    }[kind]()
    ranks = [int(r) for r in rng.integers(0, size, count)] + [size - 1, 0]
    given_values = values.copy()
    assert np.array_equal(simulator.select_ranks(given_values, ranks), np.sort(values)[ranks])
    assert np.array_equal(given_values, values)  # the input is left as it was
