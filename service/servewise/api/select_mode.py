"""SelectMode: validate and convert the request, run the core in a thread, convert the answer.

Candidates, limits, SLOs and the service-time basis are checked by the same validators as
OptimizeBatch (:mod:`servewise.api.validation`, :mod:`servewise.api.converters`); this module
adds the rules of the fields only SelectMode has (traffic classes, offline options, cost
sensitivity, spot prices), each violation naming its field path.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from servewise.api.converters import (
    assessment_to_pb,
    binding_to_pb,
    candidates_to_core,
    response_builder,
    unique,
)
from servewise.api.validation import (
    DEFAULT_ARRIVAL_CV,
    MAX_ARRIVAL_CV,
    Violations,
    check_non_negative,
    check_positive,
    check_some_batch_size_fits,
    limits_to_core,
    rate_in_range,
    slo_to_core,
    use_p99_basis,
)
from servewise.core import modes
from servewise.core.offline import (
    DEFAULT_DEADLINE_CONFIDENCE,
    OfflineJobPlan,
    OfflineOptions,
    SpotOffer,
)
from servewise.v1 import servewise_pb2, types_pb2

MAX_TRAFFIC_CLASSES = 16
MAX_BACKLOG_REQUESTS = 10**12
# Longest deadline accepted: a year.
MAX_DEADLINE_S = 366 * 86_400.0
# Shares may sum to 1 plus this (rounding of shares written as decimals).
SHARE_SUM_TOLERANCE = 1e-9

_MODES: dict[modes.Mode, types_pb2.ServingMode.ValueType] = {
    modes.Mode.REALTIME: types_pb2.SERVING_MODE_REALTIME,
    modes.Mode.DYNAMIC_BATCHING: types_pb2.SERVING_MODE_DYNAMIC_BATCHING,
    modes.Mode.OFFLINE_BATCH: types_pb2.SERVING_MODE_OFFLINE_BATCH,
    modes.Mode.HYBRID: types_pb2.SERVING_MODE_HYBRID,
}


@dataclass(frozen=True)
class SelectModeArgs:
    classes: list[modes.TrafficClass]
    inputs: modes.SelectInputs
    notes: tuple[str, ...]


def _volume(
    v: Violations, pb: servewise_pb2.TrafficClass, path: str, total: float | None
) -> tuple[float | None, int | None]:
    """(rate, backlog) of one class; shares are resolved against ``total`` (None: invalid)."""
    kind = pb.WhichOneof("volume")
    if kind == "rate_per_s":
        ok = rate_in_range(v, f"{path}.rate_per_s", pb.rate_per_s)
        return (pb.rate_per_s if ok else None), None
    if kind == "share":
        share = pb.share
        if not (math.isfinite(share) and 0.0 < share <= 1.0):
            v.add(f"{path}.share", f"must be in (0, 1] (got {share!r})")
            return None, None
        return (None if total is None else share * total), None
    if kind == "backlog_requests":
        if not 1 <= pb.backlog_requests <= MAX_BACKLOG_REQUESTS:
            v.add(
                f"{path}.backlog_requests",
                f"must be in [1, {MAX_BACKLOG_REQUESTS}] (got {pb.backlog_requests})",
            )
            return None, None
        return None, int(pb.backlog_requests)
    v.add(f"{path}.volume", "one of rate_per_s, share or backlog_requests is required")
    return None, None


def class_to_core(
    v: Violations, pb: servewise_pb2.TrafficClass, path: str, total: float | None
) -> modes.TrafficClass | None:
    start = len(v)
    if not pb.name:
        v.add(f"{path}.name", "must be non-empty")
    rate, backlog = _volume(v, pb, path, total)
    requirement = pb.WhichOneof("requirement")
    slo = None
    deadline = None
    if requirement == "slo":
        slo = slo_to_core(v, pb.slo, f"{path}.slo")
        if pb.WhichOneof("volume") == "backlog_requests":
            v.add(f"{path}.slo", "a backlog has no arrival rate to hold an SLO: give deadline_s")
    elif requirement == "deadline_s":
        if check_positive(v, f"{path}.deadline_s", pb.deadline_s):
            if pb.deadline_s > MAX_DEADLINE_S:
                v.add(
                    f"{path}.deadline_s", f"must be <= {MAX_DEADLINE_S:g} (got {pb.deadline_s!r})"
                )
            else:
                deadline = pb.deadline_s
    else:
        v.add(f"{path}.requirement", "one of slo or deadline_s is required")
    cv = DEFAULT_ARRIVAL_CV
    if pb.HasField("arrival_cv"):
        if math.isfinite(pb.arrival_cv) and 0.0 <= pb.arrival_cv <= MAX_ARRIVAL_CV:
            cv = pb.arrival_cv
        else:
            v.add(
                f"{path}.arrival_cv",
                f"must be finite and in [0, {MAX_ARRIVAL_CV:g}] (got {pb.arrival_cv!r})",
            )
    if len(v) > start or (rate is None and backlog is None):
        return None
    return modes.TrafficClass(
        name=pb.name,
        rate_per_s=rate,
        backlog_requests=backlog,
        slo=slo,
        deadline_s=deadline,
        arrival_cv=cv,
        priority=int(pb.priority),
    )


def _total_rate(v: Violations, request: servewise_pb2.SelectModeRequest) -> float | None:
    shares = [c.share for c in request.traffic_classes if c.WhichOneof("volume") == "share"]
    if not shares and request.total_rate_per_s == 0:
        return None
    if not shares:
        rate_in_range(v, "total_rate_per_s", request.total_rate_per_s)
        return None
    if request.total_rate_per_s == 0:
        v.add("total_rate_per_s", "is required when a traffic class gives a share")
        return None
    return (
        request.total_rate_per_s
        if rate_in_range(v, "total_rate_per_s", request.total_rate_per_s)
        else None
    )


def _classes_to_core(
    v: Violations, request: servewise_pb2.SelectModeRequest
) -> list[modes.TrafficClass] | None:
    count = len(request.traffic_classes)
    if count == 0:
        v.add("traffic_classes", "at least one traffic class is required")
        return None
    if count > MAX_TRAFFIC_CLASSES:
        v.add("traffic_classes", f"at most {MAX_TRAFFIC_CLASSES} traffic classes (got {count})")
        return None
    start = len(v)
    total = _total_rate(v, request)
    seen: dict[str, int] = {}
    share_sum = 0.0
    classes: list[modes.TrafficClass] = []
    for i, pb in enumerate(request.traffic_classes):
        path = f"traffic_classes[{i}]"
        if pb.name and pb.name in seen:
            v.add(f"{path}.name", f"duplicates traffic_classes[{seen[pb.name]}].name ({pb.name!r})")
        elif pb.name:
            seen[pb.name] = i
        if pb.WhichOneof("volume") == "share" and math.isfinite(pb.share):
            share_sum += pb.share
            if share_sum > 1.0 + SHARE_SUM_TOLERANCE and 0 < pb.share <= 1:
                v.add(f"{path}.share", f"shares sum to {share_sum:g} up to here; at most 1")
        item = class_to_core(v, pb, path, total)
        if item is not None:
            classes.append(item)
    return classes if len(v) == start else None


def _spot_offers(v: Violations, request: servewise_pb2.SelectModeRequest) -> dict[str, SpotOffer]:
    offers: dict[str, SpotOffer] = {}
    for i, cand in enumerate(request.candidates):
        inst = cand.instance_type
        path = f"candidates[{i}].instance_type"
        price_ok = True
        if inst.HasField("spot_price_per_hour"):
            price_ok = check_positive(v, f"{path}.spot_price_per_hour", inst.spot_price_per_hour)
        rate = 0.0
        if inst.HasField("spot_interruptions_per_hour"):
            field = f"{path}.spot_interruptions_per_hour"
            if check_non_negative(v, field, inst.spot_interruptions_per_hour):
                rate = inst.spot_interruptions_per_hour
                if not inst.HasField("spot_price_per_hour"):
                    v.add(field, "requires spot_price_per_hour")
        if inst.HasField("spot_price_per_hour") and price_ok:
            offers[inst.name] = SpotOffer(inst.spot_price_per_hour, rate)
    return offers


def _offline_to_core(v: Violations, pb: servewise_pb2.OfflineOptions) -> OfflineOptions:
    check_non_negative(v, "offline.checkpoint_interval_s", pb.checkpoint_interval_s)
    check_non_negative(v, "offline.restart_s", pb.restart_s)
    confidence = pb.deadline_confidence
    if confidence == 0:
        confidence = DEFAULT_DEADLINE_CONFIDENCE
    elif not (math.isfinite(confidence) and 0.0 < confidence < 1.0):
        v.add(
            "offline.deadline_confidence",
            f"must be 0 (default {DEFAULT_DEADLINE_CONFIDENCE:g}) or in (0, 1) (got "
            f"{confidence!r})",
        )
    return OfflineOptions(
        allow_spot=pb.allow_spot,
        checkpoint_interval_s=pb.checkpoint_interval_s,
        restart_s=pb.restart_s,
        deadline_confidence=confidence,
    )


def select_mode_args(request: servewise_pb2.SelectModeRequest) -> SelectModeArgs:
    """Validate a SelectModeRequest; raises InvalidInputError naming every invalid field."""
    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", request.service_time_basis)
    converted = candidates_to_core(v, request.candidates, use_p99)
    offers = _spot_offers(v, request)
    classes = _classes_to_core(v, request)
    limits = limits_to_core(v, request.limits, "limits")
    if limits is not None and converted is not None:
        by_name = {c.candidate.instance.name: c.candidate for c in converted}
        check_some_batch_size_fits(v, "limits.allowed_batch_sizes", limits, by_name)
    offline = _offline_to_core(v, request.offline)
    price = request.cost_sensitivity.price_per_ms_per_million_requests
    check_non_negative(v, "cost_sensitivity.price_per_ms_per_million_requests", price)
    v.raise_if_any()
    if converted is None or classes is None or limits is None:
        raise RuntimeError("SelectModeRequest rejected without a field violation")
    inputs = modes.SelectInputs(
        candidates=[c.candidate for c in converted],
        limits=limits,
        spot_offers=offers,
        offline=offline,
        price_per_ms_per_million=price,
        seed=request.seed,
    )
    return SelectModeArgs(classes, inputs, tuple(n for c in converted for n in c.notes))


def _job_to_pb(plan: OfflineJobPlan) -> servewise_pb2.OfflinePlan:
    return servewise_pb2.OfflinePlan(
        instance_type=plan.instance_type,
        batch_size=plan.batch_size,
        replicas=plan.replicas,
        spot=plan.spot,
        makespan_s=plan.makespan_s,
        cost=plan.cost,
        expected_makespan_s=plan.expected_makespan_s,
        expected_cost=plan.expected_cost,
        deadline_probability=plan.deadline_probability,
        requests=plan.requests,
    )


def _mode_to_pb(outcome: modes.ModeOutcome) -> servewise_pb2.ModePlan:
    pb = servewise_pb2.ModePlan(
        mode=_MODES[outcome.mode],
        feasible=outcome.feasible,
        binding_constraint=(
            types_pb2.BINDING_CONSTRAINT_UNSPECIFIED
            if outcome.binding is None
            else binding_to_pb(outcome.binding)
        ),
        reason=outcome.reason,
        cost_per_hour=outcome.cost_per_hour,
        cost_per_million_requests=outcome.cost_per_million_requests,
        pools=[
            servewise_pb2.PoolPlan(
                assessment=assessment_to_pb(p.assessment), traffic_classes=list(p.classes)
            )
            for p in outcome.pools
        ],
        offline_jobs=[_job_to_pb(j.plan) for j in outcome.jobs],
    )
    if outcome.feasible:
        pb.objective_per_million_requests = outcome.objective_per_million_requests
    return pb


@response_builder
def select_mode_response_to_pb(
    args: SelectModeArgs, result: modes.SelectResult
) -> servewise_pb2.SelectModeResponse:
    return servewise_pb2.SelectModeResponse(
        chosen_mode=(
            types_pb2.SERVING_MODE_UNSPECIFIED if result.chosen is None else _MODES[result.chosen]
        ),
        modes=[_mode_to_pb(o) for o in result.modes],
        reasons=result.reasons,
        break_evens=[
            servewise_pb2.BreakEven(
                below_mode=_MODES[b.below], above_mode=_MODES[b.above], rate_per_s=b.rate_per_s
            )
            for b in result.break_evens
        ],
        notes=unique([*args.notes, *result.notes]),
    )


async def select_mode(request: servewise_pb2.SelectModeRequest) -> servewise_pb2.SelectModeResponse:
    """Validate, run :func:`servewise.core.modes.select_mode` in a worker thread, convert."""
    args = select_mode_args(request)
    result = await asyncio.to_thread(modes.select_mode, args.classes, args.inputs)
    return select_mode_response_to_pb(args, result)
