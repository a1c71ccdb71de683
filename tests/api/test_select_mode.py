"""SelectMode through a real server: a full answer, and every new field's validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from api_builders import bad_request_fields, rich_status, t4_linear_candidate, v100_candidate
from api_harness import Api

from servewise.api.select_mode import select_mode_args
from servewise.v1 import servewise_pb2, types_pb2

NAN = math.nan
INF = math.inf
Req = servewise_pb2.SelectModeRequest


def select_request() -> Req:
    """Urgent chat traffic, a share-based deferrable class and a backlog, with spot prices."""
    t4 = t4_linear_candidate()
    # g4dn.xlarge spot price and interruption frequency (AWS Spot Advisor band "<5%" per month,
    # taken as 0.05 interruptions per replica-hour to make spot's risk visible).
    t4.instance_type.spot_price_per_hour = 0.1578
    t4.instance_type.spot_interruptions_per_hour = 0.05
    return Req(
        traffic_classes=[
            servewise_pb2.TrafficClass(
                name="chat", rate_per_s=40.0, slo=types_pb2.Slo(latency_ms=60.0), priority=2
            ),
            servewise_pb2.TrafficClass(name="embed", share=0.5, deadline_s=1800.0, arrival_cv=1.5),
            servewise_pb2.TrafficClass(name="backfill", backlog_requests=200_000, deadline_s=7200),
        ],
        total_rate_per_s=400.0,
        candidates=[v100_candidate(), t4],
        limits=types_pb2.SearchLimits(max_replicas=64),
        service_time_basis=types_pb2.SERVICE_TIME_BASIS_P99,
        cost_sensitivity=servewise_pb2.CostSensitivity(price_per_ms_per_million_requests=0.0),
        offline=servewise_pb2.OfflineOptions(
            allow_spot=True, checkpoint_interval_s=300.0, restart_s=120.0, deadline_confidence=0.95
        ),
        seed=7,
    )


def online_request() -> Req:
    """One online class, the common case."""
    return Req(
        traffic_classes=[
            servewise_pb2.TrafficClass(
                name="web", rate_per_s=300.0, slo=types_pb2.Slo(latency_ms=80)
            )
        ],
        candidates=[v100_candidate(), t4_linear_candidate()],
        seed=3,
    )


async def test_select_mode_answers_every_mode(api: Api) -> None:
    """A plan for each of the four modes; backlog rules out online modes; hybrid is chosen."""
    response = await api.stub.SelectMode(select_request())
    assert [m.mode for m in response.modes] == [
        types_pb2.SERVING_MODE_REALTIME,
        types_pb2.SERVING_MODE_DYNAMIC_BATCHING,
        types_pb2.SERVING_MODE_OFFLINE_BATCH,
        types_pb2.SERVING_MODE_HYBRID,
    ]
    by_mode = {m.mode: m for m in response.modes}
    assert not by_mode[types_pb2.SERVING_MODE_REALTIME].feasible
    assert "backlog" in by_mode[types_pb2.SERVING_MODE_REALTIME].reason
    assert not by_mode[types_pb2.SERVING_MODE_OFFLINE_BATCH].feasible
    assert (
        by_mode[types_pb2.SERVING_MODE_OFFLINE_BATCH].binding_constraint
        == types_pb2.BINDING_CONSTRAINT_LATENCY_SLO
    )
    hybrid = by_mode[types_pb2.SERVING_MODE_HYBRID]
    assert response.chosen_mode == types_pb2.SERVING_MODE_HYBRID
    assert hybrid.feasible
    assert list(hybrid.pools[0].traffic_classes) == ["chat"]
    assert {j.requests for j in hybrid.offline_jobs} >= {200_000}
    parts = sum(p.assessment.cost_per_hour for p in hybrid.pools)
    assert hybrid.cost_per_hour >= parts > 0
    assert hybrid.objective_per_million_requests == pytest.approx(hybrid.cost_per_million_requests)
    assert "hybrid" in response.reasons[0]


async def test_select_mode_online_with_break_even(api: Api) -> None:
    """One online class: real-time and dynamic batching plans, the choice and its reason."""
    response = await api.stub.SelectMode(online_request())
    by_mode = {m.mode: m for m in response.modes}
    chosen = by_mode[response.chosen_mode]
    assert chosen.feasible
    feasible = [m for m in response.modes if m.feasible]
    assert chosen.objective_per_million_requests == min(
        m.objective_per_million_requests for m in feasible
    )
    assert "/M" in response.reasons[0]
    for point in response.break_evens:
        assert point.rate_per_s > 0
        assert point.below_mode != point.above_mode


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[Req], None]
    fields: tuple[str, ...]


def _cls(i: int, **values: object) -> Callable[[Req], None]:
    def mutate(request: Req) -> None:
        target = request.traffic_classes[i]
        for name, value in values.items():
            if name == "slo_latency_ms":
                target.slo.latency_ms = value  # type: ignore[assignment]
            else:
                setattr(target, name, value)

    return mutate


def _clear_volume(request: Req) -> None:
    request.traffic_classes[0].ClearField("rate_per_s")


def _clear_requirement(request: Req) -> None:
    request.traffic_classes[0].ClearField("slo")


def _spot(**values: float) -> Callable[[Req], None]:
    def mutate(request: Req) -> None:
        inst = request.candidates[1].instance_type
        for name, value in values.items():
            setattr(inst, name, value)

    return mutate


def _clear_spot_price(request: Req) -> None:
    request.candidates[1].instance_type.ClearField("spot_price_per_hour")


def _top(name: str, value: object) -> Callable[[Req], None]:
    return lambda request: setattr(request, name, value)


def _set(path: str, value: object) -> Callable[[Req], None]:
    def mutate(request: Req) -> None:
        head, name = path.rsplit(".", 1)
        setattr(getattr(request, head), name, value)

    return mutate


CASES = [
    Case("no classes", lambda r: r.ClearField("traffic_classes"), ("traffic_classes",)),
    Case("empty name", _cls(0, name=""), ("traffic_classes[0].name",)),
    Case("duplicate name", _cls(1, name="chat"), ("traffic_classes[1].name",)),
    Case("rate 0", _cls(0, rate_per_s=0.0), ("traffic_classes[0].rate_per_s",)),
    Case("rate nan", _cls(0, rate_per_s=NAN), ("traffic_classes[0].rate_per_s",)),
    Case("rate inf", _cls(0, rate_per_s=INF), ("traffic_classes[0].rate_per_s",)),
    Case("share 0", _cls(1, share=0.0), ("traffic_classes[1].share",)),
    Case("share above 1", _cls(1, share=1.5), ("traffic_classes[1].share",)),
    Case("share nan", _cls(1, share=NAN), ("traffic_classes[1].share",)),
    Case("shares sum above 1", _cls(0, share=0.6), ("traffic_classes[1].share",)),
    Case("backlog 0", _cls(2, backlog_requests=0), ("traffic_classes[2].backlog_requests",)),
    Case("no volume", _clear_volume, ("traffic_classes[0].volume",)),
    Case("no requirement", _clear_requirement, ("traffic_classes[0].requirement",)),
    Case("slo latency 0", _cls(0, slo_latency_ms=0.0), ("traffic_classes[0].slo.latency_ms",)),
    Case("deadline 0", _cls(1, deadline_s=0.0), ("traffic_classes[1].deadline_s",)),
    Case("deadline -1", _cls(1, deadline_s=-1.0), ("traffic_classes[1].deadline_s",)),
    Case("deadline inf", _cls(1, deadline_s=INF), ("traffic_classes[1].deadline_s",)),
    Case("deadline nan", _cls(1, deadline_s=NAN), ("traffic_classes[1].deadline_s",)),
    Case("cv negative", _cls(1, arrival_cv=-0.5), ("traffic_classes[1].arrival_cv",)),
    Case("cv nan", _cls(1, arrival_cv=NAN), ("traffic_classes[1].arrival_cv",)),
    Case("total missing with shares", _top("total_rate_per_s", 0.0), ("total_rate_per_s",)),
    Case("total nan", _top("total_rate_per_s", NAN), ("total_rate_per_s",)),
    Case(
        "checkpoint negative",
        _set("offline.checkpoint_interval_s", -1.0),
        ("offline.checkpoint_interval_s",),
    ),
    Case(
        "checkpoint nan",
        _set("offline.checkpoint_interval_s", NAN),
        ("offline.checkpoint_interval_s",),
    ),
    Case("restart negative", _set("offline.restart_s", -5.0), ("offline.restart_s",)),
    Case("restart inf", _set("offline.restart_s", INF), ("offline.restart_s",)),
    Case(
        "confidence 1", _set("offline.deadline_confidence", 1.0), ("offline.deadline_confidence",)
    ),
    Case(
        "confidence negative",
        _set("offline.deadline_confidence", -0.1),
        ("offline.deadline_confidence",),
    ),
    Case(
        "confidence nan", _set("offline.deadline_confidence", NAN), ("offline.deadline_confidence",)
    ),
    Case(
        "latency price negative",
        _set("cost_sensitivity.price_per_ms_per_million_requests", -1.0),
        ("cost_sensitivity.price_per_ms_per_million_requests",),
    ),
    Case(
        "latency price inf",
        _set("cost_sensitivity.price_per_ms_per_million_requests", INF),
        ("cost_sensitivity.price_per_ms_per_million_requests",),
    ),
    Case(
        "spot price 0",
        _spot(spot_price_per_hour=0.0),
        ("candidates[1].instance_type.spot_price_per_hour",),
    ),
    Case(
        "spot price inf",
        _spot(spot_price_per_hour=INF),
        ("candidates[1].instance_type.spot_price_per_hour",),
    ),
    Case(
        "interruptions negative",
        _spot(spot_interruptions_per_hour=-1.0),
        ("candidates[1].instance_type.spot_interruptions_per_hour",),
    ),
    Case(
        "interruptions nan",
        _spot(spot_interruptions_per_hour=NAN),
        ("candidates[1].instance_type.spot_interruptions_per_hour",),
    ),
    Case(
        "interruptions without price",
        _clear_spot_price,
        ("candidates[1].instance_type.spot_interruptions_per_hour",),
    ),
    Case(
        "backlog with an slo",
        lambda r: r.traffic_classes[2].slo.CopyFrom(types_pb2.Slo(latency_ms=100.0)),
        ("traffic_classes[2].slo",),
    ),
    # Reused OptimizeBatch validators, same paths.
    Case(
        "candidate price 0",
        lambda r: setattr(r.candidates[0].instance_type, "price_per_hour", 0.0),
        ("candidates[0].instance_type.price_per_hour",),
    ),
    Case("max replicas too many", _set("limits.max_replicas", 10**6), ("limits.max_replicas",)),
]


def test_base_request_is_valid() -> None:
    """Every case breaks exactly one thing of a valid request."""
    select_mode_args(select_request())
    select_mode_args(online_request())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_invalid_field_is_named(api: Api, case: Case) -> None:
    """One broken field -> INVALID_ARGUMENT whose BadRequest names exactly that field path."""
    request = select_request()
    case.mutate(request)
    call = api.stub.SelectMode(request)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rich_status(call)
    assert sorted(set(bad_request_fields(status))) == sorted(case.fields)
    await api.assert_serving()
