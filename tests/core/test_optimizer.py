"""OptimizeBatch's search: the cheapest (type, B, T, N) meeting the SLO, checked by simulation.

The referee everywhere is an independent, long simulation on a seed the optimizer never saw.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from servewise.core import cancel, optimizer, queueing
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import Binding, SearchLimits, optimize
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile
from servewise.core.simulator import capacity_per_s, relaxation_time_ms, simulate

REFEREE_SEED = 4242
REFEREE_REQUESTS = 200_000

# Published ResNet-50 v1.5 p99 batch latencies (NVIDIA DeepLearningExamples, PyTorch, T4 AMP
# and V100 FP32), via /work/shared/data/profiles.json.
T4_AMP = LatencyProfile(
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
    (20.0, 18.73, 19.05, 19.43, 20.62, 28.97, 56.11, 110.41, 222.94),
)
V100_FP32 = LatencyProfile(
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
    (11.73, 12.89, 11.75, 13.12, 15.97, 28.67, 53.71, 104.34, 202.88),
)
# AWS on-demand us-east-1 (SkyPilot catalog, via /work/shared/data/prices.json).
G4DN = Candidate(InstanceType("g4dn.xlarge", 0.526), T4_AMP)
P3 = Candidate(InstanceType("p3.2xlarge", 3.06), V100_FP32)


def referee_percentile(candidate: Candidate, plan: Plan, workload: Workload, slo: Slo) -> float:
    """The SLO percentile of an independent long simulation of ``plan``: REFEREE_REQUESTS,
    or as many as span the relaxation times the optimizer's own confirmation spans when the
    plan runs near capacity (a 200k-request p99 at 97% load with CV 2 strays by 5% or more
    from the long-run value, which 2M-request runs of four seeds put 1-18% under the bound)."""
    rate_per_ms = workload.rate_per_s / 1000.0
    capacity_per_ms = capacity_per_s(candidate.profile, plan.max_batch_size, plan.replicas) / 1000.0
    relax_ms = relaxation_time_ms(
        rate_per_ms, workload.arrival_cv, capacity_per_ms, plan.max_batch_size, 0.0
    )
    spanning = optimizer.VERIFY_RELAXATION_TIMES * relax_ms * rate_per_ms
    requests = int(min(max(REFEREE_REQUESTS, spanning), optimizer.STRETCH_MAX_REQUESTS))
    result = simulate(candidate.profile, plan, workload, requests, seed=REFEREE_SEED, slo=slo)
    assert result.latency.slo_percentile_ms is not None
    return result.latency.slo_percentile_ms


def test_recommended_plan_meets_its_slo_in_an_independent_simulation() -> None:
    """The answer's plan meets the p99 bound on a fresh 200k-request sample."""
    workload, slo = Workload(2_000.0), Slo(60.0)
    result = optimize([G4DN, P3], workload, slo)
    assert result.feasible
    assert result.recommended is not None
    chosen = {"g4dn.xlarge": G4DN, "p3.2xlarge": P3}[result.recommended.plan.instance_type]
    assert referee_percentile(chosen, result.recommended.plan, workload, slo) <= slo.latency_ms


def test_batching_beats_realtime_and_the_saving_is_the_cost_difference() -> None:
    """At a high rate batching is cheaper than real-time, and the reported saving is exactly
    the difference of the two plans' hourly costs."""
    result = optimize([G4DN], Workload(1_500.0), Slo(80.0))
    assert result.recommended is not None
    assert result.realtime_baseline is not None
    assert result.recommended.plan.max_batch_size > 1
    rt = result.realtime_baseline
    assert rt.plan.max_batch_size == 1
    assert rt.plan.max_queue_delay_ms == 0.0
    assert rt.meets_slo
    assert result.saving_vs_realtime_per_hour == pytest.approx(
        rt.cost_per_hour - result.recommended.cost_per_hour
    )
    assert result.saving_vs_realtime_per_hour is not None
    assert result.saving_vs_realtime_per_hour > 0
    assert result.saving_vs_realtime_fraction == pytest.approx(
        result.saving_vs_realtime_per_hour / rt.cost_per_hour
    )


def test_cost_figures_follow_from_replicas_price_and_rate() -> None:
    """Cost per hour is N * price; cost per million is that over rate * 3600, times 1e6."""
    rate = 700.0
    result = optimize([G4DN], Workload(rate), Slo(100.0))
    rec = result.recommended
    assert rec is not None
    assert rec.cost_per_hour == pytest.approx(rec.plan.replicas * 0.526)
    assert rec.cost_per_million_requests == pytest.approx(rec.cost_per_hour / (rate * 3600) * 1e6)
    assert rec.capacity_per_s == pytest.approx(
        capacity_per_s(T4_AMP, rec.plan.max_batch_size, rec.plan.replicas)
    )
    assert rec.utilisation == pytest.approx(rate / rec.capacity_per_s)


def test_slo_below_single_request_service_time_is_infeasible_not_an_error() -> None:
    """An SLO under s(1) everywhere is answered (feasible=False) naming the service time."""
    result = optimize([G4DN, P3], Workload(50.0), Slo(5.0))
    assert not result.feasible
    assert result.binding is Binding.SERVICE_TIME
    assert "11.73" in result.binding_reason
    assert result.saving_vs_realtime_per_hour is None


def test_rate_beyond_max_replicas_names_the_replica_limit_and_a_closest_plan() -> None:
    """When even limits.max_replicas cannot carry the rate, the binding constraint says so."""
    result = optimize([G4DN], Workload(50_000.0), Slo(500.0), SearchLimits(max_replicas=4))
    assert not result.feasible
    assert result.binding is Binding.MAX_REPLICAS
    assert "4 replicas" in result.binding_reason


def test_one_replica_at_low_rate_binds_on_the_minimum() -> None:
    """A light load on the cheap type needs one replica; nothing cheaper exists."""
    result = optimize([G4DN, P3], Workload(5.0), Slo(200.0))
    assert result.recommended is not None
    assert result.recommended.plan == Plan(
        "g4dn.xlarge",
        result.recommended.plan.max_batch_size,
        result.recommended.plan.max_queue_delay_ms,
        1,
    )
    assert result.binding is Binding.MINIMUM_REPLICAS


def test_limits_are_respected() -> None:
    """Allowed batch sizes, the delay cap and the memory cap bound every plan returned."""
    capped = Candidate(InstanceType("g4dn-capped", 0.526, max_batch_size=8), T4_AMP)
    limits = SearchLimits(
        max_replicas=64, allowed_batch_sizes=(1, 4, 8, 64), max_queue_delay_ms=2.0
    )
    result = optimize([capped], Workload(900.0), Slo(60.0), limits)
    assert result.recommended is not None
    plans = [result.recommended.plan] + [p.plan for p in result.frontier]
    for plan in plans:
        assert plan.max_batch_size in (1, 4, 8)
        assert plan.max_queue_delay_ms <= 2.0
        assert plan.replicas <= 64


def test_current_plan_is_assessed_and_compared() -> None:
    """The team's plan gets its own prediction and simulation; the saving is its cost minus
    the recommendation's."""
    current = Plan("p3.2xlarge", 1, 0.0, 10)
    result = optimize([G4DN, P3], Workload(400.0), Slo(80.0), current_plan=current)
    assert result.current is not None
    assert result.recommended is not None
    assert result.current.plan == current
    assert result.current.cost_per_hour == pytest.approx(10 * 3.06)
    assert result.current.simulated is not None
    assert result.saving_vs_current_per_hour == pytest.approx(
        result.current.cost_per_hour - result.recommended.cost_per_hour
    )


def test_same_inputs_same_answer() -> None:
    """The search and its confirmation are seeded: identical requests get identical answers."""
    first = optimize([G4DN, P3], Workload(800.0, arrival_cv=2.0), Slo(90.0), seed=7)
    second = optimize([G4DN, P3], Workload(800.0, arrival_cv=2.0), Slo(90.0), seed=7)
    assert first.recommended is not None
    assert second.recommended is not None
    assert first.recommended.plan == second.recommended.plan
    assert first.recommended.simulated == second.recommended.simulated


def test_frontier_is_pareto_ordered() -> None:
    """Frontier points rise in cost and fall strictly in latency."""
    result = optimize([G4DN, P3], Workload(1_200.0), Slo(50.0))
    costs = [p.cost_per_hour for p in result.frontier]
    latencies = [p.latency_ms for p in result.frontier]
    assert len(result.frontier) >= 2
    assert costs == sorted(costs)
    assert all(b < a for a, b in itertools.pairwise(latencies))
    assert any(p.meets_slo for p in result.frontier)


def test_trace_workload_is_replayed() -> None:
    """Explicit timestamps are served as given: the rate is derived from them."""
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(1 / 300.0, 30_000))
    result = optimize([G4DN], Workload(0.0, arrival_times_s=times), Slo(100.0))
    assert result.recommended is not None
    assert result.feasible
    assert any("trace of 30000 arrivals" in note for note in result.notes)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Candidate], Workload, Slo]:
    """Small random but realistic problems: linear profiles, rates up to a few thousand."""
    count = draw(st.integers(1, 2))
    candidates = []
    for k in range(count):
        base = draw(st.floats(1.0, 30.0))
        per_item = base * draw(st.floats(0.01, 1.0))
        top = draw(st.sampled_from([8, 32, 128]))
        price = draw(st.floats(0.2, 5.0))
        candidates.append(
            Candidate(InstanceType(f"type{k}", price), LatencyProfile.linear(base, per_item, top))
        )
    fastest = min(c.profile.service_time_ms(1) for c in candidates)
    slo = Slo(fastest * draw(st.floats(1.5, 20.0)))
    workload = Workload(draw(st.floats(1.0, 3_000.0)), draw(st.sampled_from([1.0, 1.0, 2.0])))
    return candidates, workload, slo


@given(scenarios())
# Found by hypothesis: 11 replicas at 96.8% load, whose 200k-request referee p99 was 3.5% over
# the bound while its long-run p99 is under it (the referee now runs as long as such a plan needs).
@example(
    (
        [Candidate(InstanceType("type0", 1.0), LatencyProfile((1, 32), (20.0625, 227.375)))],
        Workload(1415.0, 2.0),
        Slo(351.09375, 99.0),
    )
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_feasible_answers_meet_the_slo_in_independent_simulation(
    problem: tuple[list[Candidate], Workload, Slo],
) -> None:
    """Property: whatever the problem, a plan answered feasible meets the SLO when simulated
    on a fresh seed (within the sampling noise of a 200k-request p99, 3%)."""
    candidates, workload, slo = problem
    result = optimize(candidates, workload, slo, SearchLimits(max_replicas=64))
    if not result.feasible:
        assert result.binding_reason
        return
    assert result.recommended is not None
    by_name = {c.instance.name: c for c in candidates}
    plan = result.recommended.plan
    observed = referee_percentile(by_name[plan.instance_type], plan, workload, slo)
    assert observed <= slo.latency_ms * 1.03
    assert math.isfinite(result.recommended.cost_per_hour)


def _exact_screen(candidates: list[Candidate], search: optimizer._Search) -> list | None:
    """Every plan of the screen's grid with its fewest passing replica count, by scanning."""
    kinds, pairs = optimizer._screen_grid(candidates, search, search.limits)
    tables = queueing.ServiceTables.build(
        [c.profile for c in candidates], [c.max_batch_size for c in candidates]
    )
    ceiling = search.limits.max_replicas
    options = []
    for k, (b, t) in zip(kinds, pairs, strict=True):
        floor = math.floor(search.rate_per_s * float(tables.service_ms[k, b]) / (b * 1000.0)) + 1
        if floor > ceiling:
            continue
        counts = np.arange(floor, ceiling + 1)
        tail = queueing.tail_probability(
            tables,
            np.full(len(counts), k),
            search.rate_per_s,
            search.arrival_cv,
            np.full(len(counts), b),
            np.full(len(counts), t),
            counts,
            search.slo.latency_ms,
        )
        ok = tail <= 1.0 - search.quantile
        if ok.any() and not ok[int(np.argmax(ok)) :].all():
            # The predictor is not monotone in N here (a pass, then a fail with more
            # replicas): any search that brackets N, pruned or not, may find another count.
            return None
        passing = counts[ok]
        n = int(passing[0]) if len(passing) else ceiling
        options.append(optimizer._Option(candidates[k], b, t, n, floor))
    return options


@given(
    rate_per_s=st.floats(1.0, 30_000.0),
    arrival_cv=st.sampled_from([1.0, 2.5]),
    slo_ms=st.floats(25.0, 1_000.0),
    types=st.integers(1, 4),
)
@settings(max_examples=25, deadline=None)
def test_pruned_screen_refines_what_an_exact_screen_would(
    rate_per_s: float, arrival_cv: float, slo_ms: float, types: int
) -> None:
    """The screen settles only the plans that could be refined; what it hands on (the plans
    to refine, the real-time options) is what scanning every replica count gives, wherever
    the predictor is monotone in the replica count (which bisection assumes)."""
    pool = [
        G4DN,
        P3,
        Candidate(InstanceType("cpu", 0.106), LatencyProfile.linear(20.0, 4.0, 16)),
        Candidate(
            InstanceType("h100", 6.88, max_batch_size=48), LatencyProfile.linear(2.0, 0.05, 512)
        ),
    ][:types]
    slo = Slo(slo_ms)
    limits = SearchLimits(max_replicas=64)
    search = optimizer._Search(Workload(rate_per_s, arrival_cv), slo, limits, 1)
    pruned, _ = optimizer._screen(pool, search, limits)
    exact = _exact_screen(pool, search)
    assume(exact is not None)
    assert exact is not None

    def chosen(options: list) -> list:
        return [
            (o.candidate.instance.name, *tuple(o)[1:])
            for o in optimizer._choose_refinements(options)
        ]

    def realtime(options: list) -> list:
        return sorted(
            (o.candidate.instance.name, *tuple(o)[1:]) for o in options if o.max_batch_size == 1
        )

    assert chosen(pruned) == chosen(exact)
    assert realtime(pruned) == realtime(exact)


def test_the_baseline_search_runs_under_the_callers_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real-time baseline is searched on a pooled thread; it must see the call's cancel
    token (a cancelled RPC stops both searches), and a cancelled call raises."""
    seen: list[tuple[bool, object]] = []
    confirm = optimizer._confirm

    def recording(search, candidate, plan, ceiling):  # type: ignore[no-untyped-def]
        seen.append((plan.max_batch_size == 1, cancel.current()))
        return confirm(search, candidate, plan, ceiling)

    monkeypatch.setattr(optimizer, "_confirm", recording)
    token = cancel.CancelToken()
    with cancel.scope(token):
        result = optimize([G4DN, P3], Workload(2_000.0), Slo(60.0))
    assert result.realtime_baseline is not None
    assert any(realtime for realtime, _ in seen)
    assert all(current is token for _, current in seen)

    token.cancel()
    with cancel.scope(token), pytest.raises(cancel.WorkCancelledError):
        optimize([G4DN, P3], Workload(2_000.0), Slo(60.0))


def test_a_cheaper_near_critical_plan_gets_a_longer_confirmation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 97% load nine replicas meet the SLO, but only a run longer than CONFIRM_MAX_REQUESTS
    spans enough relaxation times to verify it: the optimizer runs that longer confirmation
    rather than answer ten replicas, and the plan holds on an independent long run."""
    workload, slo = Workload(10_141.0, 2.76), Slo(440.0)
    result = optimize([G4DN], workload, slo)
    assert result.feasible
    assert result.recommended is not None
    chosen = result.recommended
    assert chosen.plan.replicas == 9
    assert chosen.simulated is not None
    assert chosen.simulated.requests_simulated > optimizer.CONFIRM_MAX_REQUESTS
    independent = simulate(
        G4DN.profile,
        chosen.plan,
        workload,
        optimizer.STRETCH_MAX_REQUESTS,
        seed=REFEREE_SEED,
        slo=slo,
    )
    assert independent.stable
    assert independent.latency.p99_ms <= slo.latency_ms

    monkeypatch.setattr(optimizer, "STRETCH_CANDIDATES", 0)
    without = optimize([G4DN], workload, slo)
    assert without.recommended is not None
    assert without.recommended.plan.replicas == 10
