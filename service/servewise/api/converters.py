"""Conversions between servewise.v1 messages and core objects.

``*_args`` turn a whole request into the arguments of a core function, or raise
:class:`InvalidInputError` carrying every violation found (see :mod:`servewise.api.validation`).
``*_to_pb`` turn core results into response messages. This module and
:mod:`servewise.api.validation` are the only API code that knows both protobuf and core types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from servewise.api.validation import (
    ConvertedCandidate,
    Violations,
    candidate_to_core,
    check_some_batch_size_fits,
    count_profile_points,
    distribution_to_core,
    limits_to_core,
    num_requests_to_core,
    over_limit,
    plan_to_core,
    slo_to_core,
    use_p99_basis,
    workload_to_core,
)
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import (
    Binding,
    FrontierPoint,
    OptimizeResult,
    PlanAssessment,
    SearchLimits,
)
from servewise.core.profiles import Candidate
from servewise.core.simulator import (
    DEFAULT_SEED,
    LatencySummary,
    ServiceDistribution,
    SimulationResult,
)
from servewise.v1 import servewise_pb2, types_pb2

# --- Requests -> core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulateArgs:
    """Validated arguments of :func:`servewise.core.simulator.simulate`, plus input notes."""

    candidate: Candidate
    plan: Plan
    workload: Workload
    num_requests: int
    seed: int
    distribution: ServiceDistribution
    slo: Slo | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class OptimizeArgs:
    """Validated arguments of :func:`servewise.core.optimizer.optimize`, plus input notes."""

    candidates: list[Candidate]
    workload: Workload
    slo: Slo
    limits: SearchLimits
    current_plan: Plan | None
    seed: int
    notes: tuple[str, ...]


def _too_many_points(v: Violations, field: str, total: int) -> bool:
    return over_limit(v, field, total, "max_profile_points", "profile points in total")


def simulate_args(request: servewise_pb2.SimulateRequest) -> SimulateArgs:
    """Validate a SimulateRequest; raises InvalidInputError naming every invalid field."""
    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", request.service_time_basis)
    distribution = distribution_to_core(
        v, "service_time_distribution", request.service_time_distribution
    )
    converted: ConvertedCandidate | None = None
    if not request.HasField("candidate"):
        v.add("candidate", "is required")
    elif not _too_many_points(
        v, "candidate.profile.points.points", count_profile_points(request.candidate)
    ):
        converted = candidate_to_core(v, request.candidate, "candidate", use_p99)
    plan: Plan | None = None
    if converted is None:
        plan_to_core(v, request.plan, "plan", None, default_instance=request.plan.instance_type)
    else:
        name = converted.candidate.instance.name
        plan = plan_to_core(
            v, request.plan, "plan", {name: converted.candidate}, default_instance=name
        )
    workload = workload_to_core(v, request.workload, "workload")
    num_requests = num_requests_to_core(v, "num_requests", request.num_requests)
    slo = slo_to_core(v, request.slo, "slo") if request.HasField("slo") else None
    v.raise_if_any()
    if converted is None or plan is None or workload is None:
        raise RuntimeError("SimulateRequest rejected without a field violation")
    return SimulateArgs(
        candidate=converted.candidate,
        plan=plan,
        workload=workload,
        num_requests=num_requests,
        seed=request.seed or DEFAULT_SEED,
        distribution=distribution,
        slo=slo,
        notes=converted.notes,
    )


def candidates_to_core(
    v: Violations,
    candidates: Sequence[types_pb2.Candidate],
    use_p99: bool,
    field: str = "candidates",
) -> list[ConvertedCandidate] | None:
    """Every candidate of a repeated Candidate field (at path ``field``), or None when any is
    invalid (or the list is empty or too large); names must be unique within the list."""
    count = len(candidates)
    if count == 0:
        v.add(field, "at least one candidate is required")
        return None
    if over_limit(v, field, count, "max_candidates", "candidates"):
        return None
    if _too_many_points(v, field, sum(map(count_profile_points, candidates))):
        return None
    start = len(v)
    converted: list[ConvertedCandidate] = []
    first_index: dict[str, int] = {}
    for i, pb in enumerate(candidates):
        path = f"{field}[{i}]"
        name = pb.instance_type.name
        if name and name in first_index:
            v.add(
                f"{path}.instance_type.name",
                f"duplicates {field}[{first_index[name]}].instance_type.name ({name!r})",
            )
        elif name:
            first_index[name] = i
        item = candidate_to_core(v, pb, path, use_p99)
        if item is not None:
            converted.append(item)
    return converted if len(v) == start else None


def optimize_args(request: servewise_pb2.OptimizeBatchRequest) -> OptimizeArgs:
    """Validate an OptimizeBatchRequest; raises InvalidInputError naming every invalid field."""
    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", request.service_time_basis)
    converted = candidates_to_core(v, request.candidates, use_p99)
    by_name = (
        None if converted is None else {c.candidate.instance.name: c.candidate for c in converted}
    )
    workload = workload_to_core(v, request.workload, "workload")
    slo = slo_to_core(v, request.slo, "slo")
    limits = limits_to_core(v, request.limits, "limits")
    if limits is not None and by_name is not None:
        check_some_batch_size_fits(v, "limits.allowed_batch_sizes", limits, by_name)
    current_plan: Plan | None = None
    if request.HasField("current_plan"):
        current_plan = plan_to_core(v, request.current_plan, "current_plan", by_name)
    v.raise_if_any()
    if converted is None or workload is None or slo is None or limits is None:
        raise RuntimeError("OptimizeBatchRequest rejected without a field violation")
    return OptimizeArgs(
        candidates=[c.candidate for c in converted],
        workload=workload,
        slo=slo,
        limits=limits,
        current_plan=current_plan,
        seed=request.seed,
        notes=tuple(note for c in converted for note in c.notes),
    )


# --- Core -> responses --------------------------------------------------------------------------


class ResponseConversionError(RuntimeError):
    """A core result did not fit its response message (e.g. a uint64 out of range).

    Deliberately not a ValueError: the request was valid, so this must surface as INTERNAL,
    never as INVALID_ARGUMENT.
    """


_P = ParamSpec("_P")
_R = TypeVar("_R")


def response_builder(build: Callable[_P, _R]) -> Callable[_P, _R]:
    """Re-raise protobuf's ValueError/TypeError from building a response as an internal error."""

    @functools.wraps(build)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return build(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ResponseConversionError(f"{build.__name__}: {exc}") from exc

    return wrapper


_BINDINGS: dict[Binding, types_pb2.BindingConstraint.ValueType] = {
    Binding.LATENCY_SLO: types_pb2.BINDING_CONSTRAINT_LATENCY_SLO,
    Binding.THROUGHPUT: types_pb2.BINDING_CONSTRAINT_THROUGHPUT,
    Binding.MINIMUM_REPLICAS: types_pb2.BINDING_CONSTRAINT_MINIMUM_REPLICAS,
    Binding.MAX_REPLICAS: types_pb2.BINDING_CONSTRAINT_MAX_REPLICAS,
    Binding.SERVICE_TIME: types_pb2.BINDING_CONSTRAINT_SERVICE_TIME,
    Binding.MEMORY: types_pb2.BINDING_CONSTRAINT_MEMORY,
}


def binding_to_pb(binding: Binding) -> types_pb2.BindingConstraint.ValueType:
    return _BINDINGS[binding]


def plan_to_pb(plan: Plan) -> types_pb2.ServingPlan:
    return types_pb2.ServingPlan(
        instance_type=plan.instance_type,
        max_batch_size=plan.max_batch_size,
        max_queue_delay_ms=plan.max_queue_delay_ms,
        replicas=plan.replicas,
    )


def latency_to_pb(summary: LatencySummary) -> types_pb2.LatencyStats:
    stats = types_pb2.LatencyStats(
        mean_ms=summary.mean_ms,
        p50_ms=summary.p50_ms,
        p90_ms=summary.p90_ms,
        p95_ms=summary.p95_ms,
        p99_ms=summary.p99_ms,
        p999_ms=summary.p999_ms,
    )
    if summary.slo_percentile_ms is not None:
        stats.slo_percentile_ms = summary.slo_percentile_ms
    return stats


def simulation_to_pb(result: SimulationResult) -> types_pb2.SimulationResult:
    return types_pb2.SimulationResult(
        latency=latency_to_pb(result.latency),
        throughput_per_s=result.throughput_per_s,
        mean_batch_size=result.mean_batch_size,
        utilisation=result.utilisation,
        max_queue_length=result.max_queue_length,
        stable=result.stable,
        stability_reason=result.stability_reason,
        requests_simulated=result.requests_simulated,
        simulated_duration_s=result.simulated_duration_s,
        seed=result.seed,
    )


def assessment_to_pb(assessment: PlanAssessment) -> types_pb2.PlanAssessment:
    pb = types_pb2.PlanAssessment(
        plan=plan_to_pb(assessment.plan),
        predicted_latency=latency_to_pb(assessment.predicted),
        meets_slo=assessment.meets_slo,
        capacity_per_s=assessment.capacity_per_s,
        utilisation=assessment.utilisation,
        cost_per_hour=assessment.cost_per_hour,
        cost_per_million_requests=assessment.cost_per_million_requests,
        mean_batch_size=assessment.mean_batch_size,
    )
    if assessment.simulated is not None:
        pb.simulated.CopyFrom(simulation_to_pb(assessment.simulated))
    return pb


def frontier_point_to_pb(point: FrontierPoint) -> types_pb2.FrontierPoint:
    return types_pb2.FrontierPoint(
        plan=plan_to_pb(point.plan),
        cost_per_hour=point.cost_per_hour,
        latency_ms=point.latency_ms,
        meets_slo=point.meets_slo,
    )


def unique(notes: list[str]) -> list[str]:
    """Notes in order, without repeats (the optimizer may restate a profile's notes)."""
    return list(dict.fromkeys(notes))


@response_builder
def simulate_response_to_pb(
    args: SimulateArgs, result: SimulationResult, capacity_per_s: float
) -> servewise_pb2.SimulateResponse:
    response = servewise_pb2.SimulateResponse(
        result=simulation_to_pb(result),
        capacity_per_s=capacity_per_s,
        notes=unique(list(args.notes)),
    )
    slo_latency = result.latency.slo_percentile_ms
    if args.slo is not None and slo_latency is not None:
        response.meets_slo = slo_latency <= args.slo.latency_ms
    return response


@response_builder
def optimize_response_to_pb(
    args: OptimizeArgs, result: OptimizeResult
) -> servewise_pb2.OptimizeBatchResponse:
    response = servewise_pb2.OptimizeBatchResponse(
        feasible=result.feasible,
        binding_constraint=binding_to_pb(result.binding),
        binding_reason=result.binding_reason,
        realtime_baseline_note=result.realtime_baseline_note,
        frontier=[frontier_point_to_pb(p) for p in result.frontier],
        notes=unique([*args.notes, *result.notes]),
        plans_considered=result.plans_considered,
    )
    if result.recommended is not None:
        response.recommended.CopyFrom(assessment_to_pb(result.recommended))
    if result.realtime_baseline is not None:
        response.realtime_baseline.CopyFrom(assessment_to_pb(result.realtime_baseline))
    if result.current is not None:
        response.current_plan.CopyFrom(assessment_to_pb(result.current))
    if result.saving_vs_realtime_per_hour is not None:
        response.saving_vs_realtime_per_hour = result.saving_vs_realtime_per_hour
    if result.saving_vs_realtime_fraction is not None:
        response.saving_vs_realtime_fraction = result.saving_vs_realtime_fraction
    if result.saving_vs_current_per_hour is not None:
        response.saving_vs_current_per_hour = result.saving_vs_current_per_hour
    if result.saving_vs_current_fraction is not None:
        response.saving_vs_current_fraction = result.saving_vs_current_fraction
    return response
