"""PlanResources over the real server: a valid request answers every strategy with exports
that parse; every new field, broken one at a time, is INVALID_ARGUMENT naming its path."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from api_builders import bad_request_fields, conv_trace_s, rich_status, t4_linear_candidate
from api_harness import Api

from servewise.api.plan_resources import (
    MAX_DEPLOYMENTS,
    MAX_RATE_POINTS,
    plan_resources_args,
)
from servewise.v1 import servewise_pb2, types_pb2

NAN = math.nan
INF = math.inf
Req = servewise_pb2.PlanResourcesRequest


def trace_rate_profile(scale: float = 300.0) -> list[types_pb2.RatePoint]:
    """The Azure conversation trace's arrivals per minute, as rates times ``scale`` (as if
    ``scale`` such services were merged)."""
    seconds = np.asarray(conv_trace_s())
    counts = np.bincount((seconds // 60).astype(np.int64), minlength=60)
    return [
        types_pb2.RatePoint(time_s=60.0 * i, rate_per_s=float(c) / 60.0 * scale)
        for i, c in enumerate(counts)
    ]


def deployment(name: str, **kwargs: Any) -> servewise_pb2.DeploymentSpec:
    return servewise_pb2.DeploymentSpec(
        name=name,
        candidates=[t4_linear_candidate()],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=300.0),
        rate_profile=trace_rate_profile(),
        arrival_cv=1.0,
        memory_bytes=6_000_000_000,
        **kwargs,
    )


def request() -> Req:
    """Two deployments (one with a given plan), a requested autoscaler and shared packing."""
    return Req(
        deployments=[
            deployment("chat"),
            deployment(
                "chat-b",
                plan=types_pb2.ServingPlan(
                    instance_type="g4dn.xlarge",
                    max_batch_size=16,
                    max_queue_delay_ms=10.0,
                    replicas=4,
                ),
            ),
        ],
        autoscaler=types_pb2.AutoscalerSettings(
            min_replicas=1, max_replicas=30, target_utilisation=0.6, scale_down_window_s=300.0
        ),
        limits=types_pb2.SearchLimits(max_replicas=64),
        seed=3,
        shared_instance_memory_bytes=16_000_000_000,
    )


async def test_plan_resources_answers_every_strategy(api: Api) -> None:
    """Dedicated, recommended and requested autoscaled per deployment; totals with shared;
    the recommendation is the cheapest total within the risk bound; exports parse."""
    response = await api.stub.PlanResources(request(), timeout=60)
    assert [d.name for d in response.deployments] == ["chat", "chat-b"]
    for item in response.deployments:
        kinds = [s.strategy for s in item.strategies]
        assert kinds == [
            types_pb2.RESOURCE_STRATEGY_DEDICATED,
            types_pb2.RESOURCE_STRATEGY_AUTOSCALED,
            types_pb2.RESOURCE_STRATEGY_AUTOSCALED,
        ]
        fixed = item.strategies[0]
        assert fixed.cost_per_day == pytest.approx(fixed.peak_replicas * 0.526 * 24)
        assert fixed.cost_per_month == pytest.approx(fixed.cost_per_day * 30.44)
        auto = item.recommended_autoscaler
        assert 1 <= auto.min_replicas <= auto.max_replicas
        assert 0 < auto.target_utilisation <= 1
        assert auto.startup_delay_s == 60.0  # no cold_start_s on the candidate: the default
        hpa = yaml.safe_load(item.exports.hpa_yaml)
        assert hpa["kind"] == "HorizontalPodAutoscaler"
        assert hpa["spec"]["minReplicas"] == max(1, auto.min_replicas)
        assert hpa["spec"]["maxReplicas"] == auto.max_replicas
        ray = yaml.safe_load(item.exports.ray_serve_yaml)
        scaling = ray["applications"][0]["deployments"][0]["autoscaling_config"]
        assert scaling["max_replicas"] == auto.max_replicas
        assert "max_queue_delay_microseconds" in item.exports.triton_config_pbtxt or (
            item.plan.max_batch_size == 1
        )
        assert "batchSize" in item.exports.torchserve_properties
    totals = {t.strategy: t for t in response.totals}
    assert types_pb2.RESOURCE_STRATEGY_SHARED in totals
    chosen = totals[response.recommended_strategy]
    bound = 0.01 * 60
    eligible = [t for t in response.totals if t.feasible and t.slo_risk_minutes <= bound]
    assert chosen.cost_per_day == min(t.cost_per_day for t in eligible)
    assert response.reasons


async def test_plan_resources_1440_points_is_fast(api: Api) -> None:
    """A per-minute day (1,440 points) answers well within a second (the bench measures p99)."""
    minutes = np.arange(1440)
    rates = 1000.0 * (1.0 + 0.7 * np.sin(2 * np.pi * (minutes / 1440 - 0.5)))
    req = Req(
        deployments=[
            servewise_pb2.DeploymentSpec(
                name="day",
                candidates=[t4_linear_candidate()],
                slo=types_pb2.Slo(latency_ms=300.0),
                rate_profile=[
                    types_pb2.RatePoint(time_s=60.0 * m, rate_per_s=float(r))
                    for m, r in zip(minutes, rates, strict=True)
                ],
            )
        ]
    )
    start = time.perf_counter()
    response = await api.stub.PlanResources(req, timeout=60)
    assert time.perf_counter() - start < 2.0
    assert response.recommended_strategy == types_pb2.RESOURCE_STRATEGY_AUTOSCALED


# --- Invalid input --------------------------------------------------------------------------


def _mutated(mutate: Callable[[Req], None]) -> Req:
    req = request()
    mutate(req)
    return req


def _point(i: int, **fields: float) -> Callable[[Req], None]:
    def mutate(req: Req) -> None:
        for name, value in fields.items():
            setattr(req.deployments[0].rate_profile[i], name, value)

    return mutate


def _many_deployments(req: Req) -> None:
    del req.deployments[:]
    for i in range(MAX_DEPLOYMENTS + 1):
        item = deployment(f"d{i}")
        del item.rate_profile[1:]
        req.deployments.append(item)


def _many_points(req: Req) -> None:
    del req.deployments[0].rate_profile[:]
    req.deployments[0].rate_profile.extend(
        types_pb2.RatePoint(time_s=float(i), rate_per_s=1.0) for i in range(MAX_RATE_POINTS + 1)
    )


def _all_zero(req: Req) -> None:
    for point in req.deployments[0].rate_profile:
        point.rate_per_s = 0.0


CASES: list[tuple[str, Callable[[Req], None], tuple[str, ...]]] = [
    ("no-deployments", lambda r: r.ClearField("deployments"), ("deployments",)),
    ("too-many-deployments", _many_deployments, ("deployments",)),
    ("empty-name", lambda r: setattr(r.deployments[0], "name", ""), ("deployments[0].name",)),
    (
        "duplicate-name",
        lambda r: setattr(r.deployments[1], "name", "chat"),
        ("deployments[1].name",),
    ),
    (
        "no-candidates",
        lambda r: r.deployments[0].ClearField("candidates"),
        ("deployments[0].candidates",),
    ),
    (
        "bad-candidate-price",
        lambda r: setattr(r.deployments[0].candidates[0].instance_type, "price_per_hour", -1.0),
        ("deployments[0].candidates[0].instance_type.price_per_hour",),
    ),
    (
        "slo-latency",
        lambda r: setattr(r.deployments[0].slo, "latency_ms", NAN),
        ("deployments[0].slo.latency_ms",),
    ),
    (
        "slo-percentile",
        lambda r: setattr(r.deployments[0].slo, "percentile", 100.0),
        ("deployments[0].slo.percentile",),
    ),
    (
        "plan-instance",
        lambda r: setattr(r.deployments[1].plan, "instance_type", "nope"),
        ("deployments[1].plan.instance_type",),
    ),
    (
        "plan-batch",
        lambda r: setattr(r.deployments[1].plan, "max_batch_size", 0),
        ("deployments[1].plan.max_batch_size",),
    ),
    (
        "plan-delay",
        lambda r: setattr(r.deployments[1].plan, "max_queue_delay_ms", INF),
        ("deployments[1].plan.max_queue_delay_ms",),
    ),
    (
        "plan-replicas",
        lambda r: setattr(r.deployments[1].plan, "replicas", 0),
        ("deployments[1].plan.replicas",),
    ),
    (
        "empty-profile",
        lambda r: r.deployments[0].ClearField("rate_profile"),
        ("deployments[0].rate_profile",),
    ),
    ("too-many-points", _many_points, ("deployments[0].rate_profile",)),
    ("time-nan", _point(3, time_s=NAN), ("deployments[0].rate_profile[3].time_s",)),
    ("time-negative", _point(0, time_s=-1.0), ("deployments[0].rate_profile[0].time_s",)),
    ("time-not-increasing", _point(5, time_s=240.0), ("deployments[0].rate_profile[5].time_s",)),
    ("rate-nan", _point(2, rate_per_s=NAN), ("deployments[0].rate_profile[2].rate_per_s",)),
    ("rate-negative", _point(2, rate_per_s=-1.0), ("deployments[0].rate_profile[2].rate_per_s",)),
    ("rate-inf", _point(2, rate_per_s=INF), ("deployments[0].rate_profile[2].rate_per_s",)),
    (
        "rate-subnormal",
        _point(2, rate_per_s=5e-324),
        ("deployments[0].rate_profile[2].rate_per_s",),
    ),
    ("rates-all-zero", _all_zero, ("deployments[0].rate_profile",)),
    (
        "arrival-cv-high",
        lambda r: setattr(r.deployments[0], "arrival_cv", 21.0),
        ("deployments[0].arrival_cv",),
    ),
    (
        "arrival-cv-nan",
        lambda r: setattr(r.deployments[0], "arrival_cv", NAN),
        ("deployments[0].arrival_cv",),
    ),
    (
        "memory-missing",
        lambda r: setattr(r.deployments[0], "memory_bytes", 0),
        ("deployments[0].memory_bytes",),
    ),
    (
        "memory-too-big",
        lambda r: setattr(r.deployments[1], "memory_bytes", 20_000_000_000),
        ("shared_instance_memory_bytes",),
    ),
    (
        "autoscaler-max-zero",
        lambda r: setattr(r.autoscaler, "max_replicas", 0),
        ("autoscaler.max_replicas",),
    ),
    (
        "autoscaler-min-above-max",
        lambda r: setattr(r.autoscaler, "min_replicas", 31),
        ("autoscaler.min_replicas",),
    ),
    (
        "autoscaler-target-zero",
        lambda r: setattr(r.autoscaler, "target_utilisation", 0.0),
        ("autoscaler.target_utilisation",),
    ),
    (
        "autoscaler-target-high",
        lambda r: setattr(r.autoscaler, "target_utilisation", 1.5),
        ("autoscaler.target_utilisation",),
    ),
    (
        "autoscaler-up-window",
        lambda r: setattr(r.autoscaler, "scale_up_window_s", -1.0),
        ("autoscaler.scale_up_window_s",),
    ),
    (
        "autoscaler-down-window",
        lambda r: setattr(r.autoscaler, "scale_down_window_s", NAN),
        ("autoscaler.scale_down_window_s",),
    ),
    (
        "autoscaler-startup",
        lambda r: setattr(r.autoscaler, "startup_delay_s", INF),
        ("autoscaler.startup_delay_s",),
    ),
    (
        "autoscaler-cooldown",
        lambda r: setattr(r.autoscaler, "cooldown_s", -5.0),
        ("autoscaler.cooldown_s",),
    ),
    (
        "limits-max-replicas",
        lambda r: setattr(r.limits, "max_replicas", 100_000),
        ("limits.max_replicas",),
    ),
    ("service-time-basis", lambda r: setattr(r, "service_time_basis", 42), ("service_time_basis",)),
]


def test_base_request_is_valid() -> None:
    """The request every case breaks passes validation."""
    plan_resources_args(request())


@pytest.mark.parametrize(("mutate", "fields"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_invalid_field_is_named(
    api: Api, mutate: Callable[[Req], None], fields: tuple[str, ...]
) -> None:
    """One broken field -> INVALID_ARGUMENT whose BadRequest names exactly that path."""
    call = api.stub.PlanResources(_mutated(mutate))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(set(bad_request_fields(await rich_status(call)))) == sorted(fields)
    await api.assert_serving()


def test_single_deployment_ignores_shared_memory() -> None:
    """Shared packing needs two deployments: with one, memory_bytes is not required."""
    req = request()
    del req.deployments[1:]
    req.deployments[0].memory_bytes = 0
    args = plan_resources_args(req)
    assert any("ignored" in note for note in args.notes)


async def test_peak_beyond_max_replicas_is_answered_not_internal(api: Api) -> None:
    """A peak that needs more replicas than limits.max_replicas allows gets an answer whose
    strategies say so, without exports (regression: the unstable peak plan's infinite mean
    latency reached the Ray Serve export and the call failed with INTERNAL)."""
    req = Req(deployments=[deployment("chat")], limits=types_pb2.SearchLimits(max_replicas=1))
    response = await api.stub.PlanResources(req, timeout=60)
    item = response.deployments[0]
    assert item.exports.hpa_yaml == ""
    assert any(s.slo_risk_minutes > 0 or not s.feasible for s in item.strategies)
