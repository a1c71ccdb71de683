"""Simulate and OptimizeBatch answer valid requests through the real server (servewise.server).

These run the core's math, so they are marked ``needs_core``: they fail while
``servewise.core.simulator.simulate`` or ``servewise.core.optimizer.optimize`` is a stub.
The ``stub`` fixture (tests/conftest.py) starts the real server, health and reflection included.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from api_builders import (
    G4DN_XLARGE,
    P3_2XLARGE,
    RESNET50_V100_FP32,
    conv_trace_s,
    measured_points,
    optimize_request,
    simulate_request,
)

from servewise.v1 import servewise_pb2, types_pb2

if TYPE_CHECKING:
    from servewise.v1.servewise_pb2_grpc import ServewiseServiceAsyncStub

pytestmark = pytest.mark.needs_core

DIP_NOTE = "batch 2 measured faster than batch 1"
PRICES = dict([P3_2XLARGE, G4DN_XLARGE])


def _published(batch_size: int, column: str) -> float:
    """A published latency of the ResNet-50 V100 FP32 table."""
    for point in measured_points(RESNET50_V100_FP32):
        if point.batch_size == batch_size:
            return point.latency_ms if column == "avg" else point.p99_latency_ms
    raise KeyError(batch_size)


# --- Simulate -----------------------------------------------------------------------------------


async def test_simulate_answers_with_the_requested_run(stub: ServewiseServiceAsyncStub) -> None:
    """Simulate reports the run it was asked for: count, seed, capacity N*B/s(B), SLO verdict."""
    request = simulate_request()
    response = await stub.Simulate(request)
    result = response.result
    assert result.requests_simulated == request.num_requests
    assert result.seed == request.seed
    # 2 replicas x batch 8 / 11.5 ms (published average of batch 8).
    assert response.capacity_per_s == pytest.approx(2 * 8 / _published(8, "avg") * 1000)
    assert result.HasField("latency")
    assert result.latency.HasField("slo_percentile_ms")
    assert response.HasField("meets_slo")
    assert response.meets_slo == (result.latency.slo_percentile_ms <= request.slo.latency_ms)
    assert 0 < result.latency.p50_ms <= result.latency.p99_ms <= result.latency.p999_ms
    assert 1 <= result.mean_batch_size <= request.plan.max_batch_size
    assert result.stable
    assert result.throughput_per_s == pytest.approx(request.workload.rate_per_s, rel=0.05)


async def test_simulate_notes_the_published_dip(stub: ServewiseServiceAsyncStub) -> None:
    """The real ResNet-50 V100 FP32 table (batch 2 faster than batch 1) is accepted, with a note."""
    response = await stub.Simulate(simulate_request())
    assert any(DIP_NOTE in note for note in response.notes), response.notes


async def test_simulate_without_slo_has_no_verdict(stub: ServewiseServiceAsyncStub) -> None:
    """Without an SLO, meets_slo and slo_percentile_ms stay unset rather than defaulting."""
    request = simulate_request()
    request.ClearField("slo")
    response = await stub.Simulate(request)
    assert not response.HasField("meets_slo")
    assert not response.result.latency.HasField("slo_percentile_ms")


async def test_simulate_p99_basis_uses_p99_latencies(stub: ServewiseServiceAsyncStub) -> None:
    """With SERVICE_TIME_BASIS_P99 the service time of batch 8 is its published p99 (13.12 ms)."""
    request = simulate_request()
    request.service_time_basis = types_pb2.SERVICE_TIME_BASIS_P99
    response = await stub.Simulate(request)
    assert response.capacity_per_s == pytest.approx(2 * 8 / _published(8, "p99") * 1000)


async def test_simulate_replays_a_real_trace(stub: ServewiseServiceAsyncStub) -> None:
    """A trace is simulated request for request: the Azure chat hour has 19,366 arrivals."""
    request = simulate_request()
    request.workload.Clear()
    request.workload.arrival_times_s.extend(conv_trace_s())
    request.plan.max_batch_size = 1
    request.plan.max_queue_delay_ms = 0.0
    request.plan.replicas = 1
    response = await stub.Simulate(request)
    assert response.result.requests_simulated == len(conv_trace_s())
    assert response.result.mean_batch_size == pytest.approx(1.0)
    # Real-time on one V100 at ~5.5 req/s: almost no queueing, latency close to s(1) = 10.37 ms.
    assert response.result.latency.p50_ms == pytest.approx(_published(1, "avg"), rel=0.05)


async def test_simulate_is_reproducible_per_seed(stub: ServewiseServiceAsyncStub) -> None:
    """Same seed, same answer; the exponential service distribution is honoured."""
    request = simulate_request()
    request.service_time_distribution = types_pb2.SERVICE_TIME_DISTRIBUTION_EXPONENTIAL
    first = await stub.Simulate(request)
    second = await stub.Simulate(request)
    assert first == second
    request.seed = 12
    third = await stub.Simulate(request)
    assert third.result.latency.p99_ms != first.result.latency.p99_ms


async def test_simulate_seed_zero_picks_the_fixed_default(stub: ServewiseServiceAsyncStub) -> None:
    """seed 0 means a fixed default, so two such answers agree and name a non-zero seed."""
    request = simulate_request()
    request.seed = 0
    first = await stub.Simulate(request)
    second = await stub.Simulate(request)
    assert first.result.seed != 0
    assert first == second


# --- OptimizeBatch ------------------------------------------------------------------------------


def _check_assessment(assessment: types_pb2.PlanAssessment, rate_per_s: float) -> None:
    plan = assessment.plan
    assert plan.instance_type in PRICES
    assert plan.replicas >= 1
    assert plan.max_batch_size >= 1
    assert assessment.cost_per_hour == pytest.approx(plan.replicas * PRICES[plan.instance_type])
    assert assessment.cost_per_million_requests == pytest.approx(
        assessment.cost_per_hour / (rate_per_s * 3600) * 1e6
    )
    assert assessment.capacity_per_s > rate_per_s or not assessment.meets_slo
    assert assessment.utilisation == pytest.approx(rate_per_s / assessment.capacity_per_s)


async def test_optimize_recommends_a_plan_meeting_the_slo(
    stub: ServewiseServiceAsyncStub,
) -> None:
    """A feasible request gets the cheapest plan meeting the SLO, with its numbers and reasons."""
    request = optimize_request()
    response = await stub.OptimizeBatch(request)
    assert response.feasible
    assert response.HasField("recommended")
    recommended = response.recommended
    assert recommended.meets_slo
    _check_assessment(recommended, request.workload.rate_per_s)
    assert recommended.plan.max_batch_size in request.limits.allowed_batch_sizes
    assert recommended.plan.max_queue_delay_ms <= request.limits.max_queue_delay_ms
    assert recommended.plan.replicas <= request.limits.max_replicas
    assert recommended.predicted_latency.slo_percentile_ms <= request.slo.latency_ms
    assert response.binding_constraint != types_pb2.BINDING_CONSTRAINT_UNSPECIFIED
    assert response.binding_reason
    assert response.plans_considered > 0
    costs = [point.cost_per_hour for point in response.frontier]
    assert costs
    assert costs == sorted(costs)


async def test_optimize_compares_with_realtime_and_current(
    stub: ServewiseServiceAsyncStub,
) -> None:
    """The real-time baseline and the current plan are assessed; savings are set only with both."""
    request = optimize_request()
    response = await stub.OptimizeBatch(request)
    if response.HasField("realtime_baseline"):
        assert response.realtime_baseline.plan.max_batch_size == 1
        assert response.realtime_baseline.plan.max_queue_delay_ms == 0
        assert response.HasField("saving_vs_realtime_per_hour")
        assert response.saving_vs_realtime_per_hour == pytest.approx(
            response.realtime_baseline.cost_per_hour - response.recommended.cost_per_hour
        )
        assert response.HasField("saving_vs_realtime_fraction")
    else:
        assert response.realtime_baseline_note
        assert not response.HasField("saving_vs_realtime_per_hour")
    assert response.HasField("current_plan")
    current = response.current_plan
    assert current.plan.instance_type == request.current_plan.instance_type
    assert current.plan.replicas == request.current_plan.replicas
    _check_assessment(current, request.workload.rate_per_s)
    assert response.HasField("saving_vs_current_per_hour")
    assert response.saving_vs_current_per_hour == pytest.approx(
        current.cost_per_hour - response.recommended.cost_per_hour
    )


async def test_optimize_without_current_plan_reports_no_saving_against_it(
    stub: ServewiseServiceAsyncStub,
) -> None:
    """No current_plan in the request -> no current assessment and no saving against it."""
    request = optimize_request()
    request.ClearField("current_plan")
    response = await stub.OptimizeBatch(request)
    assert not response.HasField("current_plan")
    assert not response.HasField("saving_vs_current_per_hour")
    assert not response.HasField("saving_vs_current_fraction")


async def test_optimize_notes_the_published_dip(stub: ServewiseServiceAsyncStub) -> None:
    """Profile notes (the ResNet-50 V100 FP32 dip) reach OptimizeBatch's notes, once each."""
    request = optimize_request()
    request.service_time_basis = types_pb2.SERVICE_TIME_BASIS_TYPICAL
    response = await stub.OptimizeBatch(request)
    dips = [note for note in response.notes if DIP_NOTE in note]
    assert len(dips) == 1, response.notes
    assert len(set(response.notes)) == len(response.notes)


async def test_optimize_unreachable_slo_is_an_answer_not_an_error(
    stub: ServewiseServiceAsyncStub,
) -> None:
    """An SLO below every batch-of-one service time is infeasible, bound by service time."""
    request = optimize_request()
    request.slo.latency_ms = 1.0  # batch 1 takes 10.37 ms on the V100, 7.5 ms on the T4 fit
    response = await stub.OptimizeBatch(request)
    assert not response.feasible
    assert response.binding_constraint == types_pb2.BINDING_CONSTRAINT_SERVICE_TIME
    assert response.binding_reason
    assert not response.HasField("saving_vs_realtime_per_hour")


async def test_optimize_replays_a_trace(stub: ServewiseServiceAsyncStub) -> None:
    """A trace workload is optimised at its derived rate (19,365 gaps over its span)."""
    request = optimize_request()
    request.workload.Clear()
    request.workload.arrival_times_s.extend(conv_trace_s())
    request.ClearField("current_plan")
    response = await stub.OptimizeBatch(request)
    trace = conv_trace_s()
    rate = (len(trace) - 1) / (trace[-1] - trace[0])
    assert response.feasible
    assert response.recommended.cost_per_million_requests == pytest.approx(
        response.recommended.cost_per_hour / (rate * 3600) * 1e6
    )
    assert math.isfinite(response.recommended.predicted_latency.p99_ms)


async def test_server_keeps_serving_after_success(stub: ServewiseServiceAsyncStub) -> None:
    """Several answers in a row on one channel: the servicer holds no per-request state."""
    for _ in range(3):
        response = await stub.Simulate(simulate_request())
        assert isinstance(response, servewise_pb2.SimulateResponse)
