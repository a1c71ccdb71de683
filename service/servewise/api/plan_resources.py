"""PlanResources: validate the request, run :mod:`servewise.core.resources`, build the response.

Validation reuses the shared validators (candidates, SLO, limits, plans) with paths under
``deployments[i]``, and adds the fields only this RPC has:

- ``deployments``: 1..:data:`MAX_DEPLOYMENTS`; ``deployments[i].name`` non-empty and unique.
- ``deployments[i].rate_profile``: 1..:data:`MAX_RATE_POINTS` points (and the server limit
  ``--max-rate-points`` over all deployments; profile points over all deployments' candidates
  are capped by ``--max-profile-points``, as in one OptimizeBatch); ``time_s`` finite, >= 0, at most
  MAX_ARRIVAL_TIME_S, strictly increasing; ``rate_per_s`` finite, in [0, MAX_RATE_PER_S], some
  > 0.
- ``deployments[i].arrival_cv``: finite, in [0, 20] (1 when unset).
- ``deployments[i].memory_bytes``: required (> 0) when shared packing is requested, that is
  when ``shared_instance_memory_bytes`` > 0 and there are two or more deployments; it must then
  fit ``shared_instance_memory_bytes`` (the violation names that field). Otherwise ignored.
- ``autoscaler`` (optional): ``max_replicas`` in [1, MAX_REPLICAS], ``min_replicas`` <= max;
  ``target_utilisation`` in (0, 1]; windows, start-up delay and cooldown finite, in
  [0, :data:`MAX_AUTOSCALER_SECONDS`]. A ``startup_delay_s`` of 0 means the instance type's
  ``cold_start_s`` when it has one.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from servewise.api.converters import ResponseConversionError, candidates_to_core, plan_to_pb
from servewise.api.validation import (
    DEFAULT_ARRIVAL_CV,
    MAX_ARRIVAL_CV,
    MAX_ARRIVAL_TIME_S,
    MAX_RATE_PER_S,
    MAX_REPLICAS,
    MIN_RATE_PER_S,
    Violations,
    check_some_batch_size_fits,
    count_profile_points,
    limits_to_core,
    over_limit,
    plan_to_core,
    slo_to_core,
    use_p99_basis,
)
from servewise.core.exports import AutoscalerExport, ExportSettings, dns_label, render_exports
from servewise.core.optimizer import SearchLimits
from servewise.core.profiles import Candidate
from servewise.core.resources import (
    AutoscalerSettings,
    Deployment,
    DeploymentPlan,
    RateProfile,
    ResourcePlan,
    Strategy,
    StrategyOutcome,
)
from servewise.core.resources import (
    plan_resources as plan_resources_core,
)
from servewise.limits import DEFAULT_LIMITS
from servewise.v1 import servewise_pb2, types_pb2

MAX_DEPLOYMENTS = 32
MAX_RATE_POINTS = 100_000
MAX_TOTAL_RATE_POINTS = DEFAULT_LIMITS.max_rate_points  # the default of --max-rate-points
# One week: longer windows or delays than this describe no autoscaler worth simulating.
MAX_AUTOSCALER_SECONDS = 604_800.0
# Index-level violations reported per rule for a long rate profile.
MAX_REPORTED = 5

_STRATEGIES: dict[Strategy, types_pb2.ResourceStrategy.ValueType] = {
    Strategy.DEDICATED: types_pb2.RESOURCE_STRATEGY_DEDICATED,
    Strategy.AUTOSCALED: types_pb2.RESOURCE_STRATEGY_AUTOSCALED,
    Strategy.SHARED: types_pb2.RESOURCE_STRATEGY_SHARED,
}


class PlanResourcesArgs:
    """Validated arguments of :func:`servewise.core.resources.plan_resources`."""

    def __init__(
        self,
        deployments: list[Deployment],
        limits: SearchLimits,
        seed: int,
        autoscaler: AutoscalerSettings | None,
        shared_instance_memory_bytes: int,
        notes: list[str],
    ) -> None:
        self.deployments = deployments
        self.limits = limits
        self.seed = seed
        self.autoscaler = autoscaler
        self.shared_instance_memory_bytes = shared_instance_memory_bytes
        self.notes = notes


def _candidates(
    v: Violations, spec: servewise_pb2.DeploymentSpec, path: str, use_p99: bool, notes: list[str]
) -> dict[str, Candidate] | None:
    """The deployment's candidates by name (as OptimizeBatch checks them), or None if invalid."""
    converted = candidates_to_core(v, spec.candidates, use_p99, f"{path}.candidates")
    if converted is None:
        return None
    for item in converted:
        notes.extend(item.notes)
    return {item.candidate.instance.name: item.candidate for item in converted}


def _first_indices(mask: np.ndarray[tuple[int], np.dtype[np.bool_]]) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:MAX_REPORTED]]


def _rate_profile(
    v: Violations, spec: servewise_pb2.DeploymentSpec, path: str
) -> RateProfile | None:
    start = len(v)
    field = f"{path}.rate_profile"
    count = len(spec.rate_profile)
    if count == 0:
        v.add(field, "at least one rate point is required")
    elif count > MAX_RATE_POINTS:
        v.add(field, f"at most {MAX_RATE_POINTS} points (got {count})")
    cv = DEFAULT_ARRIVAL_CV
    if spec.HasField("arrival_cv"):
        if math.isfinite(spec.arrival_cv) and 0.0 <= spec.arrival_cv <= MAX_ARRIVAL_CV:
            cv = spec.arrival_cv
        else:
            v.add(
                f"{path}.arrival_cv",
                f"must be finite and in [0, {MAX_ARRIVAL_CV:g}] (got {spec.arrival_cv!r})",
            )
    if len(v) > start:
        return None
    times = np.fromiter((p.time_s for p in spec.rate_profile), np.float64, count)
    rates = np.fromiter((p.rate_per_s for p in spec.rate_profile), np.float64, count)
    finite_t = np.isfinite(times)
    for i in _first_indices(~finite_t | (times < 0) | (times > MAX_ARRIVAL_TIME_S)):
        v.add(f"{field}[{i}].time_s", f"must be finite and in [0, {MAX_ARRIVAL_TIME_S:g}]")
    if finite_t.all():
        for i in _first_indices(np.diff(times) <= 0):
            v.add(
                f"{field}[{i + 1}].time_s",
                f"must be later than {field}[{i}].time_s ({times[i]!r}): times strictly increase",
            )
    # 0 is an idle interval; otherwise the rate must be one the simulator can represent (a
    # 5e-324/s interval made the replica-vs-rate grid infinitely long).
    too_small = (rates > 0) & (rates < MIN_RATE_PER_S)
    for i in _first_indices(
        ~np.isfinite(rates) | (rates < 0) | (rates > MAX_RATE_PER_S) | too_small
    ):
        v.add(
            f"{field}[{i}].rate_per_s",
            f"must be 0 or finite in [{MIN_RATE_PER_S:g}, {MAX_RATE_PER_S:g}]",
        )
    if len(v) == start and not np.any(rates > 0):
        v.add(field, "some rate_per_s must be > 0")
    if len(v) > start:
        return None
    return RateProfile(times, rates, cv)


def _deployment(
    v: Violations,
    spec: servewise_pb2.DeploymentSpec,
    i: int,
    use_p99: bool,
    limits: SearchLimits | None,
    shared_memory: int | None,
    notes: list[str],
) -> Deployment | None:
    path = f"deployments[{i}]"
    start = len(v)
    if not spec.name:
        v.add(f"{path}.name", "must be non-empty")
    by_name = _candidates(v, spec, path, use_p99, notes)
    slo = slo_to_core(v, spec.slo, f"{path}.slo")
    plan = None
    if spec.HasField("plan"):
        plan = plan_to_core(v, spec.plan, f"{path}.plan", by_name)
    elif limits is not None and by_name is not None:
        check_some_batch_size_fits(v, "limits.allowed_batch_sizes", limits, by_name)
    profile = _rate_profile(v, spec, path)
    if shared_memory is not None:
        if spec.memory_bytes == 0:
            v.add(f"{path}.memory_bytes", "must be > 0 when shared packing is requested")
        elif spec.memory_bytes > shared_memory:
            v.add(
                "shared_instance_memory_bytes",
                f"must hold one replica of {path} ({spec.memory_bytes} bytes); got {shared_memory}",
            )
    if len(v) > start or by_name is None or slo is None or profile is None:
        return None
    return Deployment(
        name=spec.name,
        candidates=list(by_name.values()),
        slo=slo,
        profile=profile,
        plan=plan,
        memory_bytes=int(spec.memory_bytes),
    )


def _autoscaler(v: Violations, pb: types_pb2.AutoscalerSettings) -> AutoscalerSettings | None:
    start = len(v)
    if not 1 <= pb.max_replicas <= MAX_REPLICAS:
        v.add("autoscaler.max_replicas", f"must be in [1, {MAX_REPLICAS}] (got {pb.max_replicas})")
    elif pb.min_replicas > pb.max_replicas:
        v.add(
            "autoscaler.min_replicas",
            f"must be <= max_replicas ({pb.max_replicas}); got {pb.min_replicas}",
        )
    target = pb.target_utilisation
    if not (math.isfinite(target) and 0.0 < target <= 1.0):
        v.add("autoscaler.target_utilisation", f"must be in (0, 1] (got {target!r})")
    for name in ("scale_up_window_s", "scale_down_window_s", "startup_delay_s", "cooldown_s"):
        value = getattr(pb, name)
        if not (math.isfinite(value) and 0.0 <= value <= MAX_AUTOSCALER_SECONDS):
            v.add(
                f"autoscaler.{name}",
                f"must be finite and in [0, {MAX_AUTOSCALER_SECONDS:g}] (got {value!r})",
            )
    if len(v) > start:
        return None
    return AutoscalerSettings(
        min_replicas=int(pb.min_replicas),
        max_replicas=int(pb.max_replicas),
        target_utilisation=target,
        scale_up_window_s=pb.scale_up_window_s,
        scale_down_window_s=pb.scale_down_window_s,
        startup_delay_s=pb.startup_delay_s,
        cooldown_s=pb.cooldown_s,
    )


def plan_resources_args(request: servewise_pb2.PlanResourcesRequest) -> PlanResourcesArgs:
    """Validate a PlanResourcesRequest; raises InvalidInputError naming every invalid field."""
    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", request.service_time_basis)
    limits = limits_to_core(v, request.limits, "limits")
    count = len(request.deployments)
    notes: list[str] = []
    if count == 0:
        v.add("deployments", "at least one deployment is required")
    elif count > MAX_DEPLOYMENTS:
        v.add("deployments", f"at most {MAX_DEPLOYMENTS} deployments (got {count})")
    else:
        points = sum(len(d.rate_profile) for d in request.deployments)
        over_limit(v, "deployments", points, "max_rate_points", "rate points in total")
        profile_points = sum(
            count_profile_points(c) for d in request.deployments for c in d.candidates
        )
        over_limit(
            v, "deployments", profile_points, "max_profile_points", "profile points in total"
        )
    shared = request.shared_instance_memory_bytes
    shared_memory = shared if shared > 0 and count >= 2 else None
    if shared > 0 and count == 1:
        notes.append("shared_instance_memory_bytes ignored: packing needs two or more deployments")
    deployments: list[Deployment] = []
    if 0 < count <= MAX_DEPLOYMENTS and not any(vi.field == "deployments" for vi in v.items):
        first: dict[str, int] = {}
        for i, spec in enumerate(request.deployments):
            if spec.name and spec.name in first:
                v.add(f"deployments[{i}].name", f"duplicates deployments[{first[spec.name]}].name")
            elif spec.name:
                first[spec.name] = i
            item = _deployment(v, spec, i, use_p99, limits, shared_memory, notes)
            if item is not None:
                deployments.append(item)
    autoscaler = _autoscaler(v, request.autoscaler) if request.HasField("autoscaler") else None
    v.raise_if_any()
    if limits is None or len(deployments) != count:
        raise RuntimeError("PlanResourcesRequest rejected without a field violation")
    return PlanResourcesArgs(deployments, limits, int(request.seed), autoscaler, int(shared), notes)


def _strategy_to_pb(outcome: StrategyOutcome) -> servewise_pb2.StrategyResult:
    return servewise_pb2.StrategyResult(
        strategy=_STRATEGIES[outcome.strategy],
        feasible=outcome.feasible,
        reason=outcome.reason,
        cost_per_day=outcome.cost_per_day,
        cost_per_month=outcome.cost_per_month,
        mean_utilisation=outcome.mean_utilisation,
        cost_per_million_requests=outcome.cost_per_million_requests,
        slo_risk_minutes=outcome.slo_risk_minutes,
        peak_replicas=outcome.peak_replicas,
        mean_replicas=outcome.mean_replicas,
    )


def _autoscaler_to_pb(settings: AutoscalerSettings) -> types_pb2.AutoscalerSettings:
    return types_pb2.AutoscalerSettings(
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
        target_utilisation=settings.target_utilisation,
        scale_up_window_s=settings.scale_up_window_s,
        scale_down_window_s=settings.scale_down_window_s,
        startup_delay_s=settings.startup_delay_s,
        cooldown_s=settings.cooldown_s,
    )


def exports_for(planned: DeploymentPlan) -> dict[str, str]:
    """The deployment's exports: its peak plan, autoscaled by its recommended settings."""
    plan, curve, settings = planned.plan, planned.curve, planned.recommended_autoscaler
    if plan is None or curve is None or settings is None:
        return {}
    if not math.isfinite(planned.mean_latency_at_peak_ms):
        # The peak needs more replicas than limits.max_replicas allows: no plan to export
        # (the strategies already say the deployment cannot meet its SLO at the peak).
        return {}
    autoscaler = AutoscalerExport(
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
        target_rate_per_replica_s=curve.capacity_per_replica_s * settings.target_utilisation,
        scale_up_window_s=settings.scale_up_window_s,
        scale_down_window_s=settings.scale_down_window_s,
        mean_latency_ms=planned.mean_latency_at_peak_ms,
    )
    return render_exports(
        plan,
        rate_per_s=planned.peak_per_s,
        utilisation=planned.peak_per_s / (curve.capacity_per_replica_s * plan.replicas),
        settings=ExportSettings(name=dns_label(planned.name), autoscaler=autoscaler),
    )


def plan_resources_response_to_pb(
    args: PlanResourcesArgs, result: ResourcePlan
) -> servewise_pb2.PlanResourcesResponse:
    try:
        response = servewise_pb2.PlanResourcesResponse(
            totals=[_strategy_to_pb(t) for t in result.totals],
            reasons=result.reasons,
            notes=list(dict.fromkeys([*args.notes, *result.notes])),
        )
        if result.recommended is not None:
            response.recommended_strategy = _STRATEGIES[result.recommended]
        for planned in result.deployments:
            item = response.deployments.add(
                name=planned.name, strategies=[_strategy_to_pb(o) for o in planned.strategies]
            )
            if planned.plan is not None:
                item.plan.CopyFrom(plan_to_pb(planned.plan))
            if planned.recommended_autoscaler is not None:
                item.recommended_autoscaler.CopyFrom(
                    _autoscaler_to_pb(planned.recommended_autoscaler)
                )
            files = exports_for(planned)
            if files:
                item.exports.CopyFrom(
                    types_pb2.PlanExports(
                        triton_config_pbtxt=files["config.pbtxt"],
                        ray_serve_yaml=files["ray_serve.yaml"],
                        torchserve_properties=files["torchserve.properties"],
                        hpa_yaml=files["hpa.yaml"],
                    )
                )
    except (ValueError, TypeError) as exc:
        raise ResponseConversionError(f"plan_resources_response_to_pb: {exc}") from exc
    return response


def _run(args: PlanResourcesArgs) -> ResourcePlan:
    return plan_resources_core(
        args.deployments,
        args.limits,
        seed=args.seed,
        requested=args.autoscaler,
        shared_instance_memory_bytes=args.shared_instance_memory_bytes,
    )


async def plan_resources(
    request: servewise_pb2.PlanResourcesRequest,
) -> servewise_pb2.PlanResourcesResponse:
    """Validate, plan in a worker thread (numpy work off the event loop), convert."""
    args = plan_resources_args(request)
    result = await asyncio.to_thread(_run, args)
    return plan_resources_response_to_pb(args, result)
