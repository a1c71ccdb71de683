"""Mode selection: each mode's plan, the choice, hybrid pools and break-even rates."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servewise.core import cancel, modes, queueing
from servewise.core.model import Slo
from servewise.core.modes import (
    Mode,
    SelectInputs,
    TrafficClass,
    evaluate_modes,
    pool_requirements,
    pool_workload,
    select_mode,
)
from servewise.core.optimizer import Binding, SearchLimits, optimize
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile

# ResNet-50 v1.5 on T4, AMP (NVIDIA DeepLearningExamples, p99 per batch); g4dn.xlarge price.
T4_AMP = LatencyProfile(
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
    (20.0, 18.73, 19.05, 19.43, 20.62, 28.97, 56.11, 110.41, 222.94),
)
G4DN = Candidate(InstanceType("g4dn.xlarge", 0.526), T4_AMP)


def _by_mode(outcomes: list) -> dict:
    return {o.mode: o for o in outcomes}


def test_one_optimize_answers_realtime_and_dynamic_batching() -> None:
    """REALTIME is optimize()'s real-time baseline and DYNAMIC its recommendation."""
    cls = TrafficClass("web", rate_per_s=400.0, slo=Slo(120.0))
    outcomes = _by_mode(evaluate_modes([cls], SelectInputs([G4DN], seed=3)))
    reference = optimize([G4DN], pool_workload([cls]), Slo(120.0), seed=3)
    assert reference.realtime_baseline is not None
    assert reference.recommended is not None
    rt, dyn = outcomes[Mode.REALTIME], outcomes[Mode.DYNAMIC_BATCHING]
    assert rt.pools[0].assessment.plan == reference.realtime_baseline.plan
    assert dyn.pools[0].assessment.plan == reference.recommended.plan
    assert dyn.cost_per_million_requests < rt.cost_per_million_requests
    assert dyn.cost_per_million_requests == pytest.approx(dyn.cost_per_hour / (400.0 * 3600) * 1e6)
    assert not outcomes[Mode.OFFLINE_BATCH].feasible
    assert outcomes[Mode.OFFLINE_BATCH].binding is Binding.LATENCY_SLO
    assert not outcomes[Mode.HYBRID].feasible


def test_choice_is_the_cheapest_feasible_mode_and_reasons_quote_numbers() -> None:
    """Batching wins at high rate with slack in the SLO; the reason names $/M of both."""
    cls = TrafficClass("web", rate_per_s=400.0, slo=Slo(120.0))
    result = select_mode([cls], SelectInputs([G4DN], seed=3, break_even=False))
    assert result.chosen is Mode.DYNAMIC_BATCHING
    assert "dynamic batching" in result.reasons[0]
    assert "/M" in result.reasons[0]
    assert "real-time $" in result.reasons[0]


def test_service_time_above_the_slo_makes_realtime_infeasible_with_its_binding() -> None:
    """An SLO below a single request's service time: every online mode is infeasible."""
    cls = TrafficClass("web", rate_per_s=10.0, slo=Slo(15.0))
    outcomes = _by_mode(evaluate_modes([cls], SelectInputs([G4DN])))
    assert outcomes[Mode.REALTIME].binding is Binding.SERVICE_TIME
    assert not outcomes[Mode.DYNAMIC_BATCHING].feasible


def test_deferrable_rate_class_goes_offline_when_cheaper() -> None:
    """A class with an hour's deadline runs as periodic jobs far cheaper than a pool."""
    cls = TrafficClass("nightly", rate_per_s=50.0, deadline_s=3600.0)
    result = select_mode([cls], SelectInputs([G4DN], break_even=False))
    offline = _by_mode(result.modes)[Mode.OFFLINE_BATCH]
    assert result.chosen is Mode.OFFLINE_BATCH
    assert offline.jobs[0].plan.latency_ms <= 3600.0 * 1000
    assert offline.cost_per_hour < _by_mode(result.modes)[Mode.DYNAMIC_BATCHING].cost_per_hour


def test_backlog_cannot_be_served_online() -> None:
    """A one-off backlog makes real-time and dynamic batching infeasible, with the reason."""
    cls = TrafficClass("backfill", backlog_requests=500_000, deadline_s=7200.0)
    outcomes = _by_mode(evaluate_modes([cls], SelectInputs([G4DN])))
    assert not outcomes[Mode.REALTIME].feasible
    assert "backlog" in outcomes[Mode.REALTIME].reason
    assert outcomes[Mode.OFFLINE_BATCH].feasible


def test_hybrid_puts_urgent_online_and_deferrable_offline_and_adds_costs() -> None:
    """Urgent traffic on a pool, deferrable work as jobs; hybrid cost is the sum."""
    # Batching costs per item here (s(b) = 10 + 2b ms), so a 20 ms SLO allows only small
    # batches; deferrable work does far better in large batches off the urgent pool.
    linear = Candidate(InstanceType("g4dn.xlarge", 0.526), LatencyProfile.linear(10.0, 2.0, 64))
    urgent = TrafficClass("chat", rate_per_s=30.0, slo=Slo(20.0))
    batch = TrafficClass("embed", rate_per_s=2000.0, deadline_s=1800.0)
    result = select_mode([urgent, batch], SelectInputs([linear], break_even=False))
    hybrid = _by_mode(result.modes)[Mode.HYBRID]
    assert hybrid.feasible
    assert [p.classes for p in hybrid.pools] == [("chat",)]
    assert [j.traffic_class for j in hybrid.jobs] == ["embed"]
    total = hybrid.pools[0].assessment.cost_per_hour + hybrid.jobs[0].plan.cost_per_hour
    assert hybrid.cost_per_hour == pytest.approx(total)
    assert result.chosen is Mode.HYBRID


def test_pool_requirement_keeps_the_binding_classes() -> None:
    """Dominated requirements drop out; the lowest bound is optimised for."""
    a = TrafficClass("a", rate_per_s=1.0, slo=Slo(50.0, 99.0))
    b = TrafficClass("b", rate_per_s=1.0, slo=Slo(80.0, 95.0))  # dominated by a
    c = TrafficClass("c", rate_per_s=1.0, deadline_s=2.0)  # p99.9 <= 2000 ms
    primary, others = pool_requirements([a, b, c])
    assert primary == Slo(50.0, 99.0)
    assert others == [Slo(2000.0, 99.9)]
    workload = pool_workload([a, TrafficClass("d", rate_per_s=3.0, slo=a.slo, arrival_cv=3.0)])
    assert workload.rate_per_s == 4.0
    assert workload.arrival_cv == pytest.approx(math.sqrt((1 + 3 * 9) / 4))


def test_latency_price_enters_the_objective() -> None:
    """With a price per ms, the choice minimises cost per million + price * latency."""
    cls = TrafficClass("web", rate_per_s=400.0, slo=Slo(120.0))
    price = 1000.0
    result = select_mode(
        [cls], SelectInputs([G4DN], seed=3, price_per_ms_per_million=price, break_even=False)
    )
    feasible = [o for o in result.modes if o.feasible]
    for o in feasible:
        assert o.objective_per_million_requests == pytest.approx(
            o.cost_per_million_requests + price * o.latency_ms
        )
    best = min(feasible, key=lambda o: o.objective_per_million_requests)
    assert result.chosen is best.mode
    assert any("per ms of latency" in r for r in result.reasons)


def test_break_even_is_where_the_choice_flips() -> None:
    """Below the reported rate the lower mode wins, above it the upper one (full evaluation)."""
    cls = TrafficClass("web", rate_per_s=20.0, slo=Slo(60.0))
    result = select_mode([cls], SelectInputs([G4DN], seed=5))
    assert result.break_evens, result.notes
    point = result.break_evens[0]
    below = select_mode(
        [cls.scaled(point.rate_per_s * 0.7 / 20.0)], SelectInputs([G4DN], seed=5, break_even=False)
    )
    above = select_mode(
        [cls.scaled(point.rate_per_s * 1.4 / 20.0)], SelectInputs([G4DN], seed=5, break_even=False)
    )
    assert below.chosen is point.below
    assert above.chosen is point.above


@given(
    rate_per_s=st.floats(0.5, 20_000.0),
    arrival_cv=st.sampled_from([1.0, 2.0, 3.5]),
    slo_ms=st.floats(20.0, 2_000.0),
    realtime=st.booleans(),
    max_replicas=st.sampled_from([4, 64, 256]),
)
@settings(max_examples=60, deadline=None)
def test_screen_ladder_finds_the_fewest_replicas_bisection_would(
    rate_per_s: float, arrival_cv: float, slo_ms: float, realtime: bool, max_replicas: int
) -> None:
    """The break-even screen brackets each plan's replica count with a ladder before
    bisecting; its cheapest pool is the one a plain scan of the predictor picks."""
    cls = TrafficClass("web", rate_per_s=rate_per_s, arrival_cv=arrival_cv, slo=Slo(slo_ms))
    # Two types at different prices and speeds, so that the screen's cost bound prunes.
    v100 = Candidate(
        InstanceType("p3.2xlarge", 3.06),
        LatencyProfile((1, 8, 64, 256), (6.0, 7.5, 22.0, 80.0)),
    )
    inputs = SelectInputs([G4DN, v100], limits=SearchLimits(max_replicas=max_replicas))
    screened = modes._screen_pool([cls], inputs, realtime)
    cands = inputs.candidates
    kinds, sizes, delays = modes._screen_grid(cands, cls.requirement(), inputs.limits, realtime)
    tables = queueing.ServiceTables.build(
        [c.profile for c in cands], [c.max_batch_size for c in cands]
    )
    best: tuple[float, int] | None = None
    for row, (k, b, t) in enumerate(zip(kinds, sizes, delays, strict=True)):
        floor = math.floor(rate_per_s * float(tables.service_ms[k, b]) / (b * 1000.0))
        for n in range(max(floor + 1, 1), max_replicas + 1):
            tail = queueing.tail_probability(
                tables,
                np.array([k]),
                rate_per_s,
                arrival_cv,
                np.array([b]),
                np.array([t]),
                np.array([n]),
                slo_ms,
            )
            if tail[0] <= 0.01:
                cost = n * cands[k].instance.price_per_hour
                if best is None or cost < best[0]:
                    best = (cost, row)
                break
    if best is None:
        assert screened is None
    else:
        assert screened is not None
        assert screened.cost_per_hour == pytest.approx(best[0])


@given(
    factors=st.lists(st.floats(0.1, 10.0), min_size=2, max_size=6, unique=True),
    rate_per_s=st.floats(0.5, 5_000.0),
    arrival_cv=st.sampled_from([1.0, 2.0, 3.5]),
    slo_ms=st.floats(20.0, 2_000.0),
    loose=st.floats(1.0, 4.0),
    max_replicas=st.sampled_from([4, 64, 256]),
    latency_price=st.sampled_from([0.0, 0.01]),
)
@settings(max_examples=40, deadline=None)
def test_screening_pools_and_rates_together_equals_screening_each_alone(
    factors: list[float],
    rate_per_s: float,
    arrival_cv: float,
    slo_ms: float,
    loose: float,
    max_replicas: int,
    latency_price: float,
) -> None:
    """The break-even search screens several pools (real-time and batching grids, other
    requirements), each at every rate of its grid, in one pass, each pruned by its own
    cheapest plan; each answer is exactly the pool a screen of it alone finds (plan,
    workload, requirement and latency)."""
    strict = TrafficClass("web", rate_per_s=rate_per_s, arrival_cv=arrival_cv, slo=Slo(slo_ms))
    relaxed = TrafficClass(
        "bulk", rate_per_s=rate_per_s / 3, arrival_cv=1.0, slo=Slo(slo_ms * loose, 99.9)
    )
    v100 = Candidate(
        InstanceType("p3.2xlarge", 3.06),
        LatencyProfile((1, 8, 64, 256), (6.0, 7.5, 22.0, 80.0)),
    )
    inputs = SelectInputs(
        [G4DN, v100],
        limits=SearchLimits(max_replicas=max_replicas),
        price_per_ms_per_million=latency_price,
    )
    items = []
    alone = []
    for cls, realtime in [(strict, True), (strict, False), (relaxed, False)]:
        grid = modes._PoolGrid.build(cls.requirement(), inputs, realtime)
        assert grid is not None
        for f in factors:
            items.append((grid, pool_workload([cls.scaled(f)])))
            alone.append(modes._screen_pool([cls.scaled(f)], inputs, realtime))
    assert modes._screen_pools(items, inputs) == alone


def test_every_pool_is_evaluated_side_by_side_including_hybrids_deferrable_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hybrid's pool for a deferrable class (when its job may cost more than a pool) is
    known from the offline plans alone, so evaluate_modes submits every pool to the pool
    executor (only the pool of every class with a real-time baseline) and hybrid evaluates
    nothing afterwards in the caller's thread; the outcomes are those of evaluating each pool
    on its own."""
    web = TrafficClass("web", rate_per_s=300.0, slo=Slo(200.0))
    # A deadline too short for a periodic job's cold start: its job is infeasible, so
    # hybrid also weighs a pool of its own for it.
    bulk = TrafficClass("bulk", rate_per_s=500.0, deadline_s=30.0)
    cold = Candidate(InstanceType("g4dn.xlarge", 0.526, cold_start_s=60.0), T4_AMP)
    inputs = SelectInputs([cold], seed=3)
    evaluated: list[tuple[tuple[str, ...], bool, bool]] = []
    caller = threading.get_ident()
    original = modes.evaluate_pool

    def recording(
        classes: list[TrafficClass], inputs: SelectInputs, seed: int, realtime: bool = True
    ) -> modes.PoolEvaluation:
        evaluated.append((modes._class_names(classes), realtime, threading.get_ident() == caller))
        return original(classes, inputs, seed, realtime)

    monkeypatch.setattr(modes, "evaluate_pool", recording)
    outcomes = _by_mode(evaluate_modes([web, bulk], inputs))
    assert sorted(evaluated) == [
        (("bulk",), False, False),
        (("web",), False, False),
        (("web", "bulk"), True, False),
    ]
    hybrid = outcomes[Mode.HYBRID]
    assert hybrid.feasible
    assert {p.classes for p in hybrid.pools} == {("web",), ("bulk",)}
    alone = original([bulk], inputs, inputs.seed, realtime=False)
    assert alone.result.recommended is not None
    bulk_pool = next(p for p in hybrid.pools if p.classes == ("bulk",))
    assert bulk_pool.assessment == alone.result.recommended


def test_a_cancelled_select_mode_stops_and_leaves_no_pool_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling the caller's token stops every pool evaluation (they run on the pool
    executor under the caller's token) and the break-even search; select_mode raises only
    once none of its work is still running."""
    web = TrafficClass("web", rate_per_s=300.0, slo=Slo(200.0))
    bulk = TrafficClass("bulk", rate_per_s=500.0, deadline_s=30.0)
    cold = Candidate(InstanceType("g4dn.xlarge", 0.526, cold_start_s=60.0), T4_AMP)
    running = 0
    lock = threading.Lock()
    original = modes.evaluate_pool

    def counting(
        classes: list[TrafficClass], inputs: SelectInputs, seed: int, realtime: bool = True
    ) -> modes.PoolEvaluation:
        nonlocal running
        with lock:
            running += 1
        try:
            if realtime:  # the pool of every class: cancel while the others run too
                token.cancel("client went away")
            else:
                time.sleep(0.3)  # still busy when the caller gives up
            return original(classes, inputs, seed, realtime)
        finally:
            with lock:
                running -= 1

    token = cancel.CancelToken()
    monkeypatch.setattr(modes, "evaluate_pool", counting)
    with cancel.scope(token), pytest.raises(cancel.WorkCancelledError):
        select_mode([web, bulk], SelectInputs([cold], seed=9))
    assert running == 0
