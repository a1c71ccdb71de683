"""Every validated field, broken one at a time, comes back as INVALID_ARGUMENT naming that field.

Each case starts from a valid request (tests/api/api_builders.py), breaks one field, and checks the
google.rpc.BadRequest details name exactly the expected field paths; afterwards the server must
still answer a health check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from api_builders import (
    bad_request_fields,
    optimize_request,
    rich_status,
    simulate_request,
    t4_linear_candidate,
    v100_candidate,
)
from api_harness import Api

from servewise.api.converters import optimize_args, simulate_args
from servewise.api.validation import (
    MAX_ALLOWED_BATCH_SIZES,
    MAX_ARRIVAL_TIME_S,
    MAX_ARRIVAL_TIMES,
    MAX_CANDIDATES,
    MAX_NUM_REQUESTS,
    MAX_QUEUE_DELAY_MS,
    MAX_RATE_PER_S,
    MAX_REPLICAS,
    MAX_TOTAL_PROFILE_POINTS,
    MIN_NUM_REQUESTS,
    MIN_RATE_PER_S,
)
from servewise.core.profiles import MAX_PROFILE_BATCH_SIZE
from servewise.v1 import servewise_pb2, types_pb2

NAN = math.nan
INF = math.inf

OptReq = servewise_pb2.OptimizeBatchRequest
SimReq = servewise_pb2.SimulateRequest


@dataclass(frozen=True)
class Case:
    id: str
    rpc: str  # "OptimizeBatch" or "Simulate"
    mutate: Callable[[Any], None]
    fields: tuple[str, ...]


def opt(id_: str, mutate: Callable[[OptReq], None], *fields: str) -> Case:
    return Case(id_, "OptimizeBatch", mutate, fields)


def sim(id_: str, mutate: Callable[[SimReq], None], *fields: str) -> Case:
    return Case(id_, "Simulate", mutate, fields)


def _resolve(message: Any, parts: list[str]) -> Any:
    """Follow attribute names and ``name[i]`` indexing from ``message``."""
    target = message
    for part in parts:
        if "[" in part:
            name, index = part[:-1].split("[")
            target = getattr(target, name)[int(index)]
        else:
            target = getattr(target, part)
    return target


def _set(path: str, value: object) -> Callable[[Any], None]:
    """Mutator assigning ``value`` to a dotted path (``a.b[1].c``)."""
    *parents, leaf = path.split(".")
    return lambda message: setattr(_resolve(message, parents), leaf, value)


def _clear(path: str, field: str) -> Callable[[Any], None]:
    """Mutator clearing ``field`` of the message at ``path`` ("" is the request itself)."""
    parts = path.split(".") if path else []
    return lambda message: _resolve(message, parts).ClearField(field)


def _replace_list(path: str, values: list[Any]) -> Callable[[Any], None]:
    """Mutator replacing the repeated field at ``path`` with ``values``."""
    *parents, leaf = path.split(".")

    def mutate(message: Any) -> None:
        repeated = getattr(_resolve(message, parents), leaf)
        del repeated[:]
        repeated.extend(values)

    return mutate


def _many_candidates(req: OptReq) -> None:
    del req.candidates[:]
    for i in range(MAX_CANDIDATES + 1):
        candidate = t4_linear_candidate()
        candidate.instance_type.name = f"t4-{i}"
        req.candidates.append(candidate)


def _too_many_points(req: OptReq) -> None:
    extra = MAX_TOTAL_PROFILE_POINTS  # on top of the 9 measured points
    points = req.candidates[0].profile.points.points
    top = points[-1]
    for i in range(1, extra + 1):
        points.add(batch_size=top.batch_size + i, latency_ms=top.latency_ms + i)


def _sim_too_many_points(req: SimReq) -> None:
    points = req.candidate.profile.points.points
    top = points[-1]
    for i in range(1, MAX_TOTAL_PROFILE_POINTS + 1):
        points.add(batch_size=top.batch_size + i, latency_ms=top.latency_ms + i)


def _duplicate_name(req: OptReq) -> None:
    req.candidates[1].instance_type.name = req.candidates[0].instance_type.name


def _zero_time_linear(req: OptReq) -> None:
    req.candidates[1].profile.linear.base_ms = 0.0
    req.candidates[1].profile.linear.per_item_ms = 0.0


def _linear_without_cap(req: OptReq) -> None:
    req.candidates[1].instance_type.ClearField("max_batch_size")


def _linear_with_huge_memory_cap(req: OptReq) -> None:
    instance = req.candidates[1].instance_type
    instance.memory.model_bytes = 1_000
    instance.memory.bytes_per_item = 1
    instance.memory.device_memory_bytes = 1_000 + MAX_PROFILE_BATCH_SIZE + 1


def _times(values: list[float]) -> Callable[[Any], None]:
    return _replace_list("workload.arrival_times_s", values)


def _too_many_times(req: Any) -> None:
    req.workload.arrival_times_s.extend([i * 0.001 for i in range(MAX_ARRIVAL_TIMES + 1)])


P0 = "candidates[0]"
P1 = "candidates[1]"
POINTS0 = f"{P0}.profile.points.points"
LINEAR1 = f"{P1}.profile.linear"
MEM0 = f"{P0}.instance_type.memory"

OPTIMIZE_CASES = [
    opt("no candidates", _replace_list("candidates", []), "candidates"),
    opt("too many candidates", _many_candidates, "candidates"),
    opt("too many profile points", _too_many_points, "candidates"),
    opt("empty name", _set(f"{P1}.instance_type.name", ""), f"{P1}.instance_type.name"),
    opt("duplicate name", _duplicate_name, f"{P1}.instance_type.name"),
    opt(
        "no instance type",
        _clear(P1, "instance_type"),
        f"{P1}.instance_type.name",
        f"{P1}.instance_type.price_per_hour",
        f"{LINEAR1}.max_batch_size",
    ),
    opt(
        "price 0",
        _set(f"{P0}.instance_type.price_per_hour", 0.0),
        f"{P0}.instance_type.price_per_hour",
    ),
    opt(
        "price negative",
        _set(f"{P0}.instance_type.price_per_hour", -1.0),
        f"{P0}.instance_type.price_per_hour",
    ),
    opt(
        "price nan",
        _set(f"{P0}.instance_type.price_per_hour", NAN),
        f"{P0}.instance_type.price_per_hour",
    ),
    opt(
        "price inf",
        _set(f"{P0}.instance_type.price_per_hour", INF),
        f"{P0}.instance_type.price_per_hour",
    ),
    opt(
        "instance cap 0",
        _set(f"{P1}.instance_type.max_batch_size", 0),
        f"{P1}.instance_type.max_batch_size",
    ),
    opt(
        "instance cap too big",
        _set(f"{P1}.instance_type.max_batch_size", MAX_PROFILE_BATCH_SIZE + 1),
        f"{P1}.instance_type.max_batch_size",
    ),
    opt("model_bytes 0", _set(f"{MEM0}.model_bytes", 0), f"{MEM0}.model_bytes"),
    opt("bytes_per_item 0", _set(f"{MEM0}.bytes_per_item", 0), f"{MEM0}.bytes_per_item"),
    opt(
        "device_memory_bytes 0",
        _set(f"{MEM0}.device_memory_bytes", 0),
        f"{MEM0}.device_memory_bytes",
    ),
    opt(
        "model does not fit",
        _set(f"{MEM0}.device_memory_bytes", 1_000_000_000),
        f"{MEM0}.device_memory_bytes",
    ),
    opt("no item fits", _set(f"{MEM0}.bytes_per_item", 15_000_000_001), f"{MEM0}.bytes_per_item"),
    opt(
        "cold start negative",
        _set(f"{P0}.instance_type.cold_start_s", -1.0),
        f"{P0}.instance_type.cold_start_s",
    ),
    opt(
        "cold start nan",
        _set(f"{P0}.instance_type.cold_start_s", NAN),
        f"{P0}.instance_type.cold_start_s",
    ),
    opt(
        "cold start inf",
        _set(f"{P0}.instance_type.cold_start_s", INF),
        f"{P0}.instance_type.cold_start_s",
    ),
    opt("no profile", _clear(P0, "profile"), f"{P0}.profile"),
    opt("no points", _replace_list(f"{P0}.profile.points.points", []), POINTS0),
    opt("batch size 0", _set(f"{POINTS0}[0].batch_size", 0), f"{POINTS0}[0].batch_size"),
    opt(
        "batch sizes not increasing",
        _set(f"{POINTS0}[2].batch_size", 2),
        f"{POINTS0}[2].batch_size",
    ),
    opt(
        "batch size too big",
        _set(f"{POINTS0}[8].batch_size", MAX_PROFILE_BATCH_SIZE + 1),
        f"{POINTS0}[8].batch_size",
    ),
    opt("latency 0", _set(f"{POINTS0}[1].latency_ms", 0.0), f"{POINTS0}[1].latency_ms"),
    opt("latency negative", _set(f"{POINTS0}[1].latency_ms", -3.0), f"{POINTS0}[1].latency_ms"),
    opt("latency nan", _set(f"{POINTS0}[1].latency_ms", NAN), f"{POINTS0}[1].latency_ms"),
    opt("latency inf", _set(f"{POINTS0}[1].latency_ms", INF), f"{POINTS0}[1].latency_ms"),
    opt("p99 0", _set(f"{POINTS0}[3].p99_latency_ms", 0.0), f"{POINTS0}[3].p99_latency_ms"),
    opt("p99 nan", _set(f"{POINTS0}[3].p99_latency_ms", NAN), f"{POINTS0}[3].p99_latency_ms"),
    opt("p99 inf", _set(f"{POINTS0}[3].p99_latency_ms", INF), f"{POINTS0}[3].p99_latency_ms"),
    opt(
        "p99 far below latency",
        _set(f"{POINTS0}[3].p99_latency_ms", 5.0),
        f"{POINTS0}[3].p99_latency_ms",
    ),
    opt("linear base negative", _set(f"{LINEAR1}.base_ms", -0.5), f"{LINEAR1}.base_ms"),
    opt("linear base nan", _set(f"{LINEAR1}.base_ms", NAN), f"{LINEAR1}.base_ms"),
    opt("linear per item negative", _set(f"{LINEAR1}.per_item_ms", -0.5), f"{LINEAR1}.per_item_ms"),
    opt("linear per item inf", _set(f"{LINEAR1}.per_item_ms", INF), f"{LINEAR1}.per_item_ms"),
    opt(
        "linear batch of one takes no time",
        _zero_time_linear,
        LINEAR1,
    ),
    opt("linear without any cap", _linear_without_cap, f"{LINEAR1}.max_batch_size"),
    opt("linear largest batch overflows", _set(f"{LINEAR1}.per_item_ms", 1e307), LINEAR1),
    opt(
        "linear cap too big",
        _set(f"{LINEAR1}.max_batch_size", MAX_PROFILE_BATCH_SIZE + 1),
        f"{LINEAR1}.max_batch_size",
    ),
    opt("linear memory cap too big", _linear_with_huge_memory_cap, f"{LINEAR1}.max_batch_size"),
    opt("rate 0", _set("workload.rate_per_s", 0.0), "workload.rate_per_s"),
    opt("rate negative", _set("workload.rate_per_s", -10.0), "workload.rate_per_s"),
    opt("rate nan", _set("workload.rate_per_s", NAN), "workload.rate_per_s"),
    opt("rate inf", _set("workload.rate_per_s", INF), "workload.rate_per_s"),
    opt("rate subnormal", _set("workload.rate_per_s", 5e-324), "workload.rate_per_s"),
    opt(
        "rate below minimum", _set("workload.rate_per_s", MIN_RATE_PER_S / 2), "workload.rate_per_s"
    ),
    opt(
        "rate above maximum", _set("workload.rate_per_s", MAX_RATE_PER_S * 2), "workload.rate_per_s"
    ),
    opt("no workload", _clear("", "workload"), "workload.rate_per_s"),
    opt("arrival cv negative", _set("workload.arrival_cv", -0.1), "workload.arrival_cv"),
    opt("arrival cv above 20", _set("workload.arrival_cv", 20.5), "workload.arrival_cv"),
    opt("arrival cv nan", _set("workload.arrival_cv", NAN), "workload.arrival_cv"),
    opt("timestamp nan", _times([0.0, 0.1, NAN, 0.3]), "workload.arrival_times_s[2]"),
    opt("timestamp inf", _times([0.0, 0.1, 0.2, INF]), "workload.arrival_times_s[3]"),
    opt("timestamp negative", _times([-1.0, 0.1, 0.2]), "workload.arrival_times_s[0]"),
    opt("timestamps decreasing", _times([0.0, 0.5, 1.0, 0.9, 1.2]), "workload.arrival_times_s[3]"),
    opt("one timestamp", _times([3.0]), "workload.arrival_times_s"),
    opt("timestamps all equal", _times([3.0, 3.0, 3.0]), "workload.arrival_times_s"),
    opt("timestamps span too short", _times([0.0, 5e-324]), "workload.arrival_times_s"),
    opt(
        "timestamps imply a rate too high", _times([0.0, 1e-10, 2e-10]), "workload.arrival_times_s"
    ),
    opt(
        "timestamp too late",
        _times([0.0, 1.0, MAX_ARRIVAL_TIME_S * 2]),
        "workload.arrival_times_s[2]",
    ),
    opt("too many timestamps", _too_many_times, "workload.arrival_times_s"),
    opt("slo latency 0", _set("slo.latency_ms", 0.0), "slo.latency_ms"),
    opt("slo latency nan", _set("slo.latency_ms", NAN), "slo.latency_ms"),
    opt("slo latency inf", _set("slo.latency_ms", INF), "slo.latency_ms"),
    opt("no slo", _clear("", "slo"), "slo.latency_ms"),
    opt("percentile 0", _set("slo.percentile", 0.0), "slo.percentile"),
    opt("percentile 100", _set("slo.percentile", 100.0), "slo.percentile"),
    opt("percentile negative", _set("slo.percentile", -5.0), "slo.percentile"),
    opt("percentile nan", _set("slo.percentile", NAN), "slo.percentile"),
    opt(
        "max replicas too big", _set("limits.max_replicas", MAX_REPLICAS + 1), "limits.max_replicas"
    ),
    opt(
        "allowed batch size 0",
        _replace_list("limits.allowed_batch_sizes", [0, 4]),
        "limits.allowed_batch_sizes[0]",
    ),
    opt(
        "allowed batch size duplicate",
        _replace_list("limits.allowed_batch_sizes", [4, 8, 4]),
        "limits.allowed_batch_sizes[2]",
    ),
    opt(
        "no allowed batch size fits any candidate",
        _replace_list("limits.allowed_batch_sizes", [128, 512]),
        "limits.allowed_batch_sizes",
    ),
    opt(
        "too many allowed batch sizes",
        _replace_list("limits.allowed_batch_sizes", list(range(1, MAX_ALLOWED_BATCH_SIZES + 2))),
        "limits.allowed_batch_sizes",
    ),
    opt(
        "limits delay negative",
        _set("limits.max_queue_delay_ms", -1.0),
        "limits.max_queue_delay_ms",
    ),
    opt("limits delay nan", _set("limits.max_queue_delay_ms", NAN), "limits.max_queue_delay_ms"),
    opt("limits delay inf", _set("limits.max_queue_delay_ms", INF), "limits.max_queue_delay_ms"),
    opt(
        "current plan batch 0",
        _set("current_plan.max_batch_size", 0),
        "current_plan.max_batch_size",
    ),
    opt(
        "current plan batch above memory cap",
        _set("current_plan.max_batch_size", 101),
        "current_plan.max_batch_size",
    ),
    opt(
        "current plan delay negative",
        _set("current_plan.max_queue_delay_ms", -1.0),
        "current_plan.max_queue_delay_ms",
    ),
    opt(
        "current plan delay nan",
        _set("current_plan.max_queue_delay_ms", NAN),
        "current_plan.max_queue_delay_ms",
    ),
    opt(
        "current plan delay too long",
        _set("current_plan.max_queue_delay_ms", MAX_QUEUE_DELAY_MS + 1),
        "current_plan.max_queue_delay_ms",
    ),
    opt("current plan replicas 0", _set("current_plan.replicas", 0), "current_plan.replicas"),
    opt(
        "current plan replicas too many",
        _set("current_plan.replicas", MAX_REPLICAS + 1),
        "current_plan.replicas",
    ),
    opt(
        "current plan unknown instance",
        _set("current_plan.instance_type", "p4d.24xlarge"),
        "current_plan.instance_type",
    ),
    opt(
        "current plan empty instance",
        _set("current_plan.instance_type", ""),
        "current_plan.instance_type",
    ),
    opt("unknown basis", _set("service_time_basis", 7), "service_time_basis"),
]

SIMULATE_CASES = [
    sim("no candidate", _clear("", "candidate"), "candidate"),
    sim(
        "candidate price 0",
        _set("candidate.instance_type.price_per_hour", 0.0),
        "candidate.instance_type.price_per_hour",
    ),
    sim(
        "candidate empty name",
        _set("candidate.instance_type.name", ""),
        "candidate.instance_type.name",
    ),
    sim(
        "candidate batch sizes not increasing",
        _set("candidate.profile.points.points[2].batch_size", 1),
        "candidate.profile.points.points[2].batch_size",
    ),
    sim(
        "candidate p99 nan",
        _set("candidate.profile.points.points[0].p99_latency_ms", NAN),
        "candidate.profile.points.points[0].p99_latency_ms",
    ),
    sim("candidate too many points", _sim_too_many_points, "candidate.profile.points.points"),
    sim(
        "candidate memory cap",
        _set("candidate.instance_type.memory.bytes_per_item", 0),
        "candidate.instance_type.memory.bytes_per_item",
    ),
    sim(
        "plan names another instance",
        _set("plan.instance_type", "g4dn.xlarge"),
        "plan.instance_type",
    ),
    sim("plan batch 0", _set("plan.max_batch_size", 0), "plan.max_batch_size"),
    sim("plan batch above memory cap", _set("plan.max_batch_size", 128), "plan.max_batch_size"),
    sim("plan delay negative", _set("plan.max_queue_delay_ms", -1.0), "plan.max_queue_delay_ms"),
    sim("plan delay inf", _set("plan.max_queue_delay_ms", INF), "plan.max_queue_delay_ms"),
    sim(
        "plan delay too long",
        _set("plan.max_queue_delay_ms", MAX_QUEUE_DELAY_MS * 2),
        "plan.max_queue_delay_ms",
    ),
    sim("plan replicas 0", _set("plan.replicas", 0), "plan.replicas"),
    sim("plan replicas too many", _set("plan.replicas", MAX_REPLICAS + 1), "plan.replicas"),
    sim("no plan", _clear("", "plan"), "plan.max_batch_size", "plan.replicas"),
    sim("num requests too few", _set("num_requests", MIN_NUM_REQUESTS - 1), "num_requests"),
    sim("num requests too many", _set("num_requests", MAX_NUM_REQUESTS + 1), "num_requests"),
    sim("unknown basis", _set("service_time_basis", 9), "service_time_basis"),
    sim("unknown distribution", _set("service_time_distribution", 5), "service_time_distribution"),
    sim("rate nan", _set("workload.rate_per_s", NAN), "workload.rate_per_s"),
    sim("arrival cv inf", _set("workload.arrival_cv", INF), "workload.arrival_cv"),
    sim("timestamps decreasing", _times([0.0, 2.0, 1.0]), "workload.arrival_times_s[2]"),
    sim("slo latency negative", _set("slo.latency_ms", -1.0), "slo.latency_ms"),
    sim("slo percentile 100", _set("slo.percentile", 100.0), "slo.percentile"),
]


def _request(case: Case) -> OptReq | SimReq:
    request: OptReq | SimReq = (
        optimize_request() if case.rpc == "OptimizeBatch" else simulate_request()
    )
    case.mutate(request)
    return request


def test_base_requests_are_valid() -> None:
    """The requests every case starts from pass validation, so each case breaks one thing."""
    optimize_args(optimize_request())
    simulate_args(simulate_request())


@pytest.mark.parametrize("case", OPTIMIZE_CASES + SIMULATE_CASES, ids=lambda c: f"{c.rpc}:{c.id}")
async def test_invalid_field_is_named(api: Api, case: Case) -> None:
    """One broken field -> INVALID_ARGUMENT whose BadRequest names exactly that field path."""
    request = _request(case)
    call = getattr(api.stub, case.rpc)(request)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rich_status(call)
    assert sorted(set(bad_request_fields(status))) == sorted(case.fields)
    assert case.fields[0] in (raised.value.details() or "")
    await api.assert_serving()


async def test_every_violation_is_reported(api: Api) -> None:
    """Several broken fields in one request are all reported, in one answer."""
    request = optimize_request()
    request.candidates[0].instance_type.price_per_hour = -1.0
    request.candidates[0].profile.points.points[4].latency_ms = NAN
    request.candidates[1].profile.linear.per_item_ms = -2.0
    request.workload.arrival_cv = 99.0
    request.slo.percentile = 100.0
    request.limits.allowed_batch_sizes.append(0)
    request.current_plan.replicas = 0
    request.service_time_basis = 42  # type: ignore[assignment]
    call = api.stub.OptimizeBatch(request)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rich_status(call)
    assert sorted(bad_request_fields(status)) == sorted(
        [
            "candidates[0].instance_type.price_per_hour",
            "candidates[0].profile.points.points[4].latency_ms",
            "candidates[1].profile.linear.per_item_ms",
            "workload.arrival_cv",
            "slo.percentile",
            "limits.allowed_batch_sizes[6]",
            "current_plan.replicas",
            "service_time_basis",
        ]
    )
    assert "8 field violations" in (raised.value.details() or "")
    await api.assert_serving()


async def test_long_trace_violations_are_capped(api: Api) -> None:
    """A trace full of bad timestamps reports a few indices and a count, not one per entry."""
    request = simulate_request()
    request.workload.arrival_times_s.extend([NAN] * 10_000)
    call = api.stub.Simulate(request)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    fields = bad_request_fields(await rich_status(call))
    assert fields[:2] == ["workload.arrival_times_s[0]", "workload.arrival_times_s[1]"]
    assert len(fields) <= 10
    await api.assert_serving()


async def test_route_without_a_request_key_names_it(api: Api) -> None:
    """Route with no request_key is INVALID_ARGUMENT naming request_key (tests/api/test_route.py
    covers every field), and the server keeps serving."""
    call = api.stub.Route(servewise_pb2.RouteRequest(deployment_id="d"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(await rich_status(call)) == ["request_key"]
    await api.assert_serving()


def test_candidate_builders_are_distinct() -> None:
    """The two base candidates have different names, so duplicate-name cases are meaningful."""
    assert v100_candidate().instance_type.name != t4_linear_candidate().instance_type.name
    assert types_pb2.Candidate().ByteSize() == 0
