"""Core results -> response messages, and requests -> core objects, without the core's math."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from api_builders import RESNET50_V100_FP32, measured_points, optimize_request, simulate_request

from servewise.api.converters import (
    ResponseConversionError,
    binding_to_pb,
    optimize_args,
    optimize_response_to_pb,
    simulate_args,
    simulate_response_to_pb,
)
from servewise.core.model import Plan
from servewise.core.optimizer import Binding, FrontierPoint, OptimizeResult, PlanAssessment
from servewise.core.simulator import DEFAULT_NUM_REQUESTS, LatencySummary, SimulationResult
from servewise.v1 import types_pb2

SUMMARY = LatencySummary(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, slo_percentile_ms=5.0)
SIM = SimulationResult(SUMMARY, 99.0, 3.5, 0.5, 7, True, "ok", 1000, 10.0, 3)
PLAN = Plan("p3.2xlarge", 8, 5.0, 2)


def _assessment(plan: Plan = PLAN, simulated: SimulationResult | None = SIM) -> PlanAssessment:
    return PlanAssessment(plan, SUMMARY, simulated, True, 800.0, 0.5, 6.12, 4.25, 3.5)


def _result(**overrides: object) -> OptimizeResult:
    fields: dict[str, object] = {
        "feasible": True,
        "recommended": _assessment(),
        "binding": Binding.THROUGHPUT,
        "binding_reason": "one fewer replica cannot keep up",
        "realtime_baseline": None,
        "realtime_baseline_note": "no real-time plan meets the SLO",
        "saving_vs_realtime_per_hour": None,
        "saving_vs_realtime_fraction": None,
        "current": None,
        "saving_vs_current_per_hour": None,
        "saving_vs_current_fraction": None,
        "frontier": [FrontierPoint(PLAN, 6.12, 5.0, True)],
        "notes": ["optimizer note"],
        "plans_considered": 42,
    }
    fields.update(overrides)
    return OptimizeResult(**fields)  # type: ignore[arg-type]


def test_every_binding_maps_to_a_distinct_specified_enum() -> None:
    """Each core Binding has its own BindingConstraint value, never UNSPECIFIED."""
    values = [binding_to_pb(b) for b in Binding]
    assert len(set(values)) == len(values)
    assert types_pb2.BINDING_CONSTRAINT_UNSPECIFIED not in values
    assert binding_to_pb(Binding.MEMORY) == types_pb2.BINDING_CONSTRAINT_MEMORY


def test_optional_fields_stay_unset_when_the_core_has_none() -> None:
    """None in the core result leaves optional/message fields unset (not zero)."""
    args = optimize_args(optimize_request())
    response = optimize_response_to_pb(args, _result(recommended=None, feasible=False))
    for name in (
        "recommended",
        "realtime_baseline",
        "current_plan",
        "saving_vs_realtime_per_hour",
        "saving_vs_realtime_fraction",
        "saving_vs_current_per_hour",
        "saving_vs_current_fraction",
    ):
        assert not response.HasField(name), name
    assert response.binding_constraint == types_pb2.BINDING_CONSTRAINT_THROUGHPUT
    assert response.realtime_baseline_note == "no real-time plan meets the SLO"
    assert response.plans_considered == 42


def test_present_fields_are_copied() -> None:
    """Assessments, savings (including a zero saving) and the frontier are carried over."""
    args = optimize_args(optimize_request())
    realtime = _assessment(Plan("p3.2xlarge", 1, 0.0, 6), simulated=None)
    response = optimize_response_to_pb(
        args,
        _result(
            realtime_baseline=realtime,
            saving_vs_realtime_per_hour=0.0,
            saving_vs_realtime_fraction=0.0,
            current=_assessment(),
            saving_vs_current_per_hour=12.24,
            saving_vs_current_fraction=0.5,
        ),
    )
    assert response.HasField("saving_vs_realtime_per_hour")
    assert response.saving_vs_realtime_per_hour == 0.0
    assert response.saving_vs_current_per_hour == 12.24
    assert response.realtime_baseline.plan.max_batch_size == 1
    assert not response.realtime_baseline.HasField("simulated")
    recommended = response.recommended
    assert recommended.plan == types_pb2.ServingPlan(
        instance_type="p3.2xlarge", max_batch_size=8, max_queue_delay_ms=5.0, replicas=2
    )
    assert recommended.simulated.max_queue_length == 7
    assert recommended.simulated.latency.slo_percentile_ms == 5.0
    assert recommended.cost_per_million_requests == 4.25
    assert [p.cost_per_hour for p in response.frontier] == [6.12]


def test_notes_are_profile_notes_then_optimizer_notes_without_repeats() -> None:
    """Input notes come first, then the optimizer's; a note the optimizer repeats appears once."""
    args = optimize_args(optimize_request())
    assert args.notes
    response = optimize_response_to_pb(args, _result(notes=[args.notes[0], "optimizer note"]))
    assert list(response.notes) == [*args.notes, "optimizer note"]


def test_simulate_verdict_only_with_an_slo() -> None:
    """meets_slo is SLO-percentile latency <= bound, set only when an SLO is given."""
    args = simulate_args(simulate_request())  # SLO 50 ms at p99
    response = simulate_response_to_pb(args, SIM, 1391.3)
    assert response.HasField("meets_slo")
    assert response.meets_slo  # 5 ms <= 50 ms
    late = replace(SIM, latency=replace(SUMMARY, slo_percentile_ms=50.0001))
    assert not simulate_response_to_pb(args, late, 1.0).meets_slo
    request = simulate_request()
    request.ClearField("slo")
    no_slo = simulate_args(request)
    assert not simulate_response_to_pb(no_slo, SIM, 1.0).HasField("meets_slo")


def test_simulate_defaults() -> None:
    """num_requests 0 and seed 0 become the core's defaults; an unset arrival_cv is Poisson."""
    request = simulate_request()
    request.num_requests = 0
    request.seed = 0
    request.workload.ClearField("arrival_cv")
    args = simulate_args(request)
    assert args.num_requests == DEFAULT_NUM_REQUESTS
    assert args.seed != 0
    assert args.workload.arrival_cv == 1.0
    assert args.plan.instance_type == "p3.2xlarge"  # empty in the request: the candidate's


def test_optimize_defaults_and_conversions() -> None:
    """Unset limits take the core defaults; the memory model caps the candidate's batch size."""
    request = optimize_request()
    request.ClearField("limits")
    request.slo.ClearField("percentile")
    args = optimize_args(request)
    assert args.limits.max_replicas == 256
    assert args.limits.allowed_batch_sizes == ()
    assert args.limits.max_queue_delay_ms is None
    assert args.slo.percentile == 99.0
    v100, t4 = args.candidates
    assert v100.instance.max_batch_size == 100  # floor(15e9 / 150e6)
    assert v100.max_batch_size == 100
    assert v100.instance.cold_start_s == 45.0
    assert t4.profile.max_batch_size == 64  # linear range from the instance cap
    assert t4.profile.service_time_ms(64) == pytest.approx(5.24 + 2.288 * 64)


def test_p99_basis_uses_p99_where_given() -> None:
    """SERVICE_TIME_BASIS_P99 builds the profile from p99_latency_ms, latency_ms elsewhere."""
    request = optimize_request()
    request.candidates[0].profile.points.points[0].ClearField("p99_latency_ms")
    args = optimize_args(request)
    published = measured_points(RESNET50_V100_FP32)
    latencies = args.candidates[0].profile.latencies_ms
    assert latencies[0] == published[0].latency_ms
    assert latencies[1:] == tuple(p.p99_latency_ms for p in published[1:])
    request.service_time_basis = types_pb2.SERVICE_TIME_BASIS_TYPICAL
    typical = optimize_args(request).candidates[0].profile.latencies_ms
    assert typical == tuple(p.latency_ms for p in published)


def test_trace_becomes_a_float64_array_with_its_rate() -> None:
    """arrival_times_s -> numpy float64 array; rate = (n - 1) / (last - first)."""
    request = optimize_request()
    request.workload.arrival_times_s.extend([10.0, 10.5, 10.5, 12.0])
    args = optimize_args(request)
    times = args.workload.arrival_times_s
    assert times is not None
    assert times.dtype == np.float64
    assert list(times) == [10.0, 10.5, 10.5, 12.0]
    assert args.workload.rate_per_s == pytest.approx(3 / 2.0)
    assert math.isfinite(args.workload.rate_per_s)


def test_dip_profile_is_accepted_with_a_note() -> None:
    """The ResNet-50 V100 FP32 table (batch 2 faster than batch 1) converts, with a dip note."""
    request = simulate_request()
    args = simulate_args(request)
    assert any("batch 2 measured faster than batch 1" in n for n in args.notes), args.notes


def test_a_result_that_does_not_fit_is_an_internal_error_not_invalid_input() -> None:
    """A core number outside its proto field's range raises a non-ValueError (-> INTERNAL)."""
    args = simulate_args(simulate_request())
    with pytest.raises(ResponseConversionError) as raised:
        simulate_response_to_pb(args, replace(SIM, seed=2**64), 1.0)
    assert not isinstance(raised.value, ValueError)
