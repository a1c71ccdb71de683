"""RegisterDeployment, GetDeployment, ListDeployments and EvaluateSwitch over a real server.

Each test runs the real servicer on a MemoryStore it can inspect, so it can check what was
persisted (and that rejected requests persist nothing).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
from api_builders import bad_request_fields, realtime_deployment, rich_status

from servewise.api.deployments import deployment_key
from servewise.api.servicer import ServewiseServicer
from servewise.core import control
from servewise.store.memory import MemoryStore
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2

NAN = math.nan
INF = math.inf


@dataclass
class Harness:
    stub: servewise_pb2_grpc.ServewiseServiceAsyncStub
    store: MemoryStore


@asynccontextmanager
async def serving() -> AsyncIterator[Harness]:
    store = MemoryStore()
    server = grpc.aio.server()
    servewise_pb2_grpc.add_ServewiseServiceServicer_to_server(
        ServewiseServicer(store),  # type: ignore[abstract]  # the .pyi marks every RPC abstract
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Harness(servewise_pb2_grpc.ServewiseServiceStub(channel), store)  # type: ignore[arg-type]
    finally:
        await server.stop(None)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with serving() as harness:
        yield harness


def deployment(deployment_id: str = "resnet-t4", **values: object) -> servewise_pb2.Deployment:
    """ResNet-50 on T4 (linear fit), p99 <= 100 ms, served real-time on 20 replicas for 1000/s."""
    pb = realtime_deployment(deployment_id)
    pb.traffic_classes.append(
        servewise_pb2.TrafficClass(
            name="interactive", share=1.0, slo=types_pb2.Slo(latency_ms=100.0)
        )
    )
    for name, value in values.items():
        setattr(pb, name, value)
    return pb


async def register(h: Harness, pb: servewise_pb2.Deployment) -> servewise_pb2.Deployment:
    response = await h.stub.RegisterDeployment(
        servewise_pb2.RegisterDeploymentRequest(deployment=pb), timeout=10
    )
    return response.deployment


def samples(
    rates: list[float], step_s: float = 10.0, start_s: float = 1_000.0, **values: float
) -> list[servewise_pb2.MetricSample]:
    return [
        servewise_pb2.MetricSample(timestamp_s=start_s + i * step_s, rate_per_s=r, **values)
        for i, r in enumerate(rates)
    ]


async def evaluate(
    h: Harness, window: list[servewise_pb2.MetricSample], deployment_id: str = "resnet-t4"
) -> servewise_pb2.EvaluateSwitchResponse:
    return await h.stub.EvaluateSwitch(
        servewise_pb2.EvaluateSwitchRequest(deployment_id=deployment_id, samples=window),
        timeout=30,
    )


async def rejected_fields(call: grpc.aio.UnaryUnaryCall) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return bad_request_fields(await rich_status(call))


# --- CRUD ---------------------------------------------------------------------------------------


async def test_register_get_update_with_versions(h: Harness) -> None:
    """Create is version 1 with settings and mode resolved; an update at version 1 makes 2; the
    stale version 1 again, or a second create, is FAILED_PRECONDITION and changes nothing."""
    created = await register(h, deployment())
    assert created.state_version == 1
    assert created.current_mode == types_pb2.SERVING_MODE_REALTIME
    assert created.settings.savings_stabilisation_window_s == 300.0
    assert list(created.settings.transition_weights) == [0.1, 0.25, 0.5, 1.0]
    assert created.updated_at_s > 0

    got = await h.stub.GetDeployment(
        servewise_pb2.GetDeploymentRequest(deployment_id="resnet-t4"), timeout=5
    )
    assert got.deployment == created

    updated = await register(h, deployment(planned_rate_per_s=800.0, state_version=1))
    assert updated.state_version == 2
    for stale in (deployment(planned_rate_per_s=1.0, state_version=1), deployment()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await register(h, stale)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "expected" in (caught.value.details() or "")
    stored = h.store.get(deployment_key("resnet-t4"))
    assert stored is not None
    assert stored.version == 2
    got = await h.stub.GetDeployment(
        servewise_pb2.GetDeploymentRequest(deployment_id="resnet-t4"), timeout=5
    )
    assert got.deployment.planned_rate_per_s == 800.0
    assert got.deployment.state_version == 2


async def test_unknown_deployment_is_not_found(h: Harness) -> None:
    """GetDeployment and EvaluateSwitch of an unknown id are NOT_FOUND; nothing is logged."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.stub.GetDeployment(servewise_pb2.GetDeploymentRequest(deployment_id="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await evaluate(h, samples([10.0]), deployment_id="nope")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert h.store.decisions(deployment_key("nope")) == []


async def test_list_pages_through_every_deployment(h: Harness) -> None:
    """Pages of 2 over 5 deployments come back in id order with no repeats or gaps."""
    ids = [f"dep-{i}" for i in (3, 1, 4, 0, 2)]
    for i in ids:
        await register(h, deployment(i))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await h.stub.ListDeployments(
            servewise_pb2.ListDeploymentsRequest(page_size=2, page_token=token), timeout=5
        )
        pages += 1
        seen.extend(d.deployment_id for d in page.deployments)
        assert all(d.state_version == 1 for d in page.deployments)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids)
    assert pages == 3


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (servewise_pb2.ListDeploymentsRequest(page_size=5000), "page_size"),
        (servewise_pb2.ListDeploymentsRequest(page_token="!!not-base64"), "page_token"),  # noqa: S106
    ],
)
async def test_list_rejects_bad_paging(
    h: Harness, request_: servewise_pb2.ListDeploymentsRequest, field: str
) -> None:
    """An oversized page or a foreign token is INVALID_ARGUMENT naming the field."""
    assert await rejected_fields(h.stub.ListDeployments(request_, timeout=5)) == [field]


# --- Invalid deployments, one field at a time ---------------------------------------------------

Mutation = Callable[[servewise_pb2.Deployment], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(pb: servewise_pb2.Deployment) -> None:
        *heads, name = path.split(".")
        target: object = pb
        for head in heads:
            target = getattr(target, head)
        setattr(target, name, value)

    return mutate


def _clear(name: str) -> Mutation:
    return lambda pb: pb.ClearField(name)  # type: ignore[arg-type]


def _weights(*values: float) -> Mutation:
    def mutate(pb: servewise_pb2.Deployment) -> None:
        pb.settings.ClearField("transition_weights")
        pb.settings.transition_weights.extend(values)

    return mutate


def _duplicate_class(pb: servewise_pb2.Deployment) -> None:
    pb.traffic_classes.add().CopyFrom(pb.traffic_classes[0])
    pb.traffic_classes[0].share = 0.5
    pb.traffic_classes[1].share = 0.5


def _transition(**broken: object) -> Mutation:
    """A well-formed two-step shift to one more replica, then ``broken`` applied to it (a
    dotted name inside the transition, e.g. steps.1.weight)."""

    def mutate(pb: servewise_pb2.Deployment) -> None:
        t = pb.transition
        t.to_plan.CopyFrom(pb.current_plan)
        t.to_plan.replicas += 1
        t.steps.add(weight=0.5, dwell_s=60.0, expected_requests=3150.0)
        t.steps.add(weight=1.0, dwell_s=60.0, expected_requests=6300.0)
        for name, value in broken.items():
            *heads, last = name.split(".")
            target: object = t
            for head in heads:
                target = target[int(head)] if head.isdigit() else getattr(target, head)  # type: ignore[index]
            setattr(target, last, value)

    return mutate


def _transition_without(field: str) -> Mutation:
    def mutate(pb: servewise_pb2.Deployment) -> None:
        _transition()(pb)
        pb.transition.ClearField(field)  # type: ignore[arg-type]

    return mutate


INVALID_DEPLOYMENTS: list[tuple[str, Mutation, str]] = [
    ("id empty", _set("deployment_id", ""), "deployment.deployment_id"),
    ("id with slash", _set("deployment_id", "a/b"), "deployment.deployment_id"),
    ("no candidates", _clear("candidates"), "deployment.candidates"),
    (
        "candidate price 0",
        lambda pb: setattr(pb.candidates[0].instance_type, "price_per_hour", 0.0),
        "deployment.candidates[0].instance_type.price_per_hour",
    ),
    ("basis unknown", _set("service_time_basis", 99), "deployment.service_time_basis"),
    ("no slo", _clear("slo"), "deployment.slo"),
    ("slo latency 0", _set("slo.latency_ms", 0.0), "deployment.slo.latency_ms"),
    ("slo percentile 100", _set("slo.percentile", 100.0), "deployment.slo.percentile"),
    ("limits replicas", _set("limits.max_replicas", 10**6), "deployment.limits.max_replicas"),
    ("no plan", _clear("current_plan"), "deployment.current_plan"),
    (
        "plan unknown type",
        _set("current_plan.instance_type", "p9.huge"),
        "deployment.current_plan.instance_type",
    ),
    ("plan 0 replicas", _set("current_plan.replicas", 0), "deployment.current_plan.replicas"),
    (
        "plan delay nan",
        _set("current_plan.max_queue_delay_ms", NAN),
        "deployment.current_plan.max_queue_delay_ms",
    ),
    (
        "mode offline",
        _set("current_mode", types_pb2.SERVING_MODE_OFFLINE_BATCH),
        "deployment.current_mode",
    ),
    (
        "realtime with batching",
        lambda pb: (
            setattr(pb, "current_mode", types_pb2.SERVING_MODE_REALTIME),
            setattr(pb.current_plan, "max_batch_size", 8),
        ),
        "deployment.current_mode",
    ),
    ("mode unknown", _set("current_mode", 42), "deployment.current_mode"),
    ("planned rate 0", _set("planned_rate_per_s", 0.0), "deployment.planned_rate_per_s"),
    ("planned rate nan", _set("planned_rate_per_s", NAN), "deployment.planned_rate_per_s"),
    ("plan since -1", _set("current_plan_since_s", -1.0), "deployment.current_plan_since_s"),
    (
        "class no name",
        lambda pb: setattr(pb.traffic_classes[0], "name", ""),
        "deployment.traffic_classes[0].name",
    ),
    ("class duplicate", _duplicate_class, "deployment.traffic_classes[1].name"),
    (
        "band 1",
        _set("settings.hysteresis_band_fraction", 1.0),
        "deployment.settings.hysteresis_band_fraction",
    ),
    (
        "band nan",
        _set("settings.hysteresis_band_fraction", NAN),
        "deployment.settings.hysteresis_band_fraction",
    ),
    (
        "safety window negative",
        _set("settings.safety_stabilisation_window_s", -1.0),
        "deployment.settings.safety_stabilisation_window_s",
    ),
    (
        "savings window inf",
        _set("settings.savings_stabilisation_window_s", INF),
        "deployment.settings.savings_stabilisation_window_s",
    ),
    ("min dwell nan", _set("settings.min_dwell_s", NAN), "deployment.settings.min_dwell_s"),
    (
        "expected dwell 0",
        _set("settings.expected_dwell_s", 0.0),
        "deployment.settings.expected_dwell_s",
    ),
    (
        "half-life negative",
        _set("settings.ewma_half_life_s", -5.0),
        "deployment.settings.ewma_half_life_s",
    ),
    (
        "panic samples 0",
        _set("settings.panic_consecutive_samples", 0),
        "deployment.settings.panic_consecutive_samples",
    ),
    (
        "error limit 0",
        _set("settings.error_rate_limit", 0.0),
        "deployment.settings.error_rate_limit",
    ),
    (
        "error limit above 1",
        _set("settings.error_rate_limit", 1.5),
        "deployment.settings.error_rate_limit",
    ),
    ("weights decreasing", _weights(0.5, 0.25, 1.0), "deployment.settings.transition_weights[1]"),
    ("weights not ending at 1", _weights(0.1, 0.5), "deployment.settings.transition_weights[1]"),
    ("weight above 1", _weights(0.5, 2.0), "deployment.settings.transition_weights[1]"),
    ("weight nan", _weights(NAN, 1.0), "deployment.settings.transition_weights[0]"),
    ("transition step past the end", _transition(step_index=7), "deployment.transition.step_index"),
    ("transition no steps", _transition_without("steps"), "deployment.transition.steps"),
    ("transition no target", _transition_without("to_plan"), "deployment.transition.to_plan"),
    (
        "transition target unknown type",
        _transition(**{"to_plan.instance_type": "p9.huge"}),
        "deployment.transition.to_plan.instance_type",
    ),
    (
        "transition weight nan",
        _transition(**{"steps.0.weight": NAN}),
        "deployment.transition.steps[0].weight",
    ),
    (
        "transition last weight not 1",
        _transition(**{"steps.1.weight": 0.75}),
        "deployment.transition.steps[1].weight",
    ),
    (
        "transition dwell negative",
        _transition(**{"steps.0.dwell_s": -1.0}),
        "deployment.transition.steps[0].dwell_s",
    ),
    (
        "transition started nan",
        _transition(step_started_at_s=NAN),
        "deployment.transition.step_started_at_s",
    ),
    (
        "transition to offline",
        _transition(to_mode=types_pb2.SERVING_MODE_OFFLINE_BATCH),
        "deployment.transition.to_mode",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [pytest.param(m, f, id=name) for name, m, f in INVALID_DEPLOYMENTS],
)
async def test_invalid_deployment_names_the_field(h: Harness, mutate: Mutation, field: str) -> None:
    """Each invalid field is INVALID_ARGUMENT naming exactly its path; nothing is stored."""
    pb = deployment()
    mutate(pb)
    call = h.stub.RegisterDeployment(
        servewise_pb2.RegisterDeploymentRequest(deployment=pb), timeout=5
    )
    assert await rejected_fields(call) == [field]
    assert h.store.keys() == []


async def test_missing_deployment_is_invalid(h: Harness) -> None:
    """A request without a deployment names 'deployment'."""
    call = h.stub.RegisterDeployment(servewise_pb2.RegisterDeploymentRequest(), timeout=5)
    assert await rejected_fields(call) == ["deployment"]


# --- EvaluateSwitch ------------------------------------------------------------------------------


async def test_rate_inside_band_holds_and_is_logged(h: Harness) -> None:
    """A rate wobbling +-1% around 1000/s (its sizing rate, level + 2.33 x spread, stays inside
    the +-10% band) holds; the decision is appended to the log with its numbers, and the
    deployment itself is unchanged."""
    await register(h, deployment())
    answer = await evaluate(h, samples([1010.0, 990.0, 1012.0, 988.0] * 30))
    assert answer.decision == servewise_pb2.SWITCH_DECISION_HOLD
    assert "hysteresis band" in answer.reason
    assert answer.current_cost_per_hour == pytest.approx(20 * 0.526)
    assert answer.decision_seq == 1
    assert answer.state_version == 1
    log = h.store.decisions(deployment_key("resnet-t4"))
    assert len(log) == 1
    record = servewise_pb2.DecisionRecord.FromString(log[0].record)
    assert record.evaluation.decision == servewise_pb2.SWITCH_DECISION_HOLD
    assert record.evaluation.reason == answer.reason
    stored = h.store.get(deployment_key("resnet-t4"))
    assert stored is not None
    assert stored.version == 1


async def test_sustained_drop_switches_with_net_saving(h: Harness) -> None:
    """Ten minutes at 100/s on 20 real-time replicas sized for 1000/s: the savings window (300 s)
    has held; one real-time replica serves 100/s as cheaply as the optimizer's best plan, and
    going there is a scale down (the configuration in force, fewer replicas): SWITCH, free, in
    one step that dwells until 100/s has sent the ~3,150 requests a p99 verdict needs."""
    await register(h, deployment())
    answer = await evaluate(h, samples([100.0] * 61))
    assert answer.decision == servewise_pb2.SWITCH_DECISION_SWITCH, answer.reason
    assert answer.smoothed_rate_per_s == pytest.approx(100.0)
    assert answer.target_plan.instance_type == "g4dn.xlarge"
    assert answer.target_plan.max_batch_size == 1
    assert answer.target_plan.replicas == 1
    assert answer.target_cost_per_hour == pytest.approx(0.526)
    assert answer.saving_per_hour == pytest.approx(
        answer.current_cost_per_hour - answer.target_cost_per_hour
    )
    assert answer.switch_cost == 0.0
    assert answer.net_saving_per_hour == pytest.approx(answer.saving_per_hour)
    assert "scale" in answer.reason
    assert [s.weight for s in answer.steps] == [1.0]
    needed = control.requests_for_percentile(99.0)
    assert answer.steps[0].dwell_s == pytest.approx(needed / 100.0)
    assert answer.steps[0].expected_requests == pytest.approx(needed)
    assert answer.target_mode in (
        types_pb2.SERVING_MODE_REALTIME,
        types_pb2.SERVING_MODE_DYNAMIC_BATCHING,
    )
    # EvaluateSwitch does not change the plan in force.
    got = await h.stub.GetDeployment(
        servewise_pb2.GetDeploymentRequest(deployment_id="resnet-t4"), timeout=5
    )
    assert got.deployment.current_plan.replicas == 20
    assert got.deployment.state_version == 1


async def test_short_drop_holds_until_the_window(h: Harness) -> None:
    """A drop seen for 100 s is below the band but inside the 300 s savings window: HOLD; an
    override of the window to 60 s lets the same samples switch."""
    await register(h, deployment())
    window = samples([100.0] * 11)
    answer = await evaluate(h, window)
    assert answer.decision == servewise_pb2.SWITCH_DECISION_HOLD
    assert "stabilisation window" in answer.reason
    overridden = await h.stub.EvaluateSwitch(
        servewise_pb2.EvaluateSwitchRequest(
            deployment_id="resnet-t4",
            samples=window,
            settings_override=servewise_pb2.DeploymentSettings(savings_stabilisation_window_s=60),
        ),
        timeout=30,
    )
    assert overridden.decision == servewise_pb2.SWITCH_DECISION_SWITCH, overridden.reason
    assert overridden.settings.savings_stabilisation_window_s == 60
    assert overridden.decision_seq == 2


async def test_panic_switches_at_once(h: Harness) -> None:
    """Three samples with observed p99 above the SLO switch at once, inside the band."""
    await register(h, deployment())
    answer = await evaluate(h, samples([1000.0] * 3, p99_ms=250.0))
    assert answer.decision == servewise_pb2.SWITCH_DECISION_SWITCH
    assert answer.panic
    assert answer.reason.startswith("panic")
    assert [s.weight for s in answer.steps] == [1.0]


def _sample_field(
    i: int, name: str, value: object
) -> Callable[[list[servewise_pb2.MetricSample]], None]:
    return lambda window: setattr(window[i], name, value)


INVALID_SAMPLES: list[tuple[str, Callable[[list[servewise_pb2.MetricSample]], None], str]] = [
    ("rate nan", _sample_field(1, "rate_per_s", NAN), "samples[1].rate_per_s"),
    ("rate negative", _sample_field(2, "rate_per_s", -1.0), "samples[2].rate_per_s"),
    ("rate inf", _sample_field(0, "rate_per_s", INF), "samples[0].rate_per_s"),
    ("time backwards", _sample_field(2, "timestamp_s", 500.0), "samples[2].timestamp_s"),
    ("time nan", _sample_field(1, "timestamp_s", NAN), "samples[1].timestamp_s"),
    ("p99 negative", _sample_field(1, "p99_ms", -3.0), "samples[1].p99_ms"),
    ("p50 nan", _sample_field(1, "p50_ms", NAN), "samples[1].p50_ms"),
    ("utilisation above 1", _sample_field(0, "utilisation", 1.5), "samples[0].utilisation"),
    ("error rate negative", _sample_field(2, "error_rate", -0.1), "samples[2].error_rate"),
    ("other deployment", _sample_field(0, "deployment_id", "other"), "samples[0].deployment_id"),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [pytest.param(m, f, id=name) for name, m, f in INVALID_SAMPLES]
)
async def test_invalid_samples_are_rejected_and_not_persisted(
    h: Harness, mutate: Callable[[list[servewise_pb2.MetricSample]], None], field: str
) -> None:
    """A bad sample is INVALID_ARGUMENT naming its path; the decision log stays empty."""
    await register(h, deployment())
    window = samples([100.0, 110.0, 120.0])
    mutate(window)
    call = h.stub.EvaluateSwitch(
        servewise_pb2.EvaluateSwitchRequest(deployment_id="resnet-t4", samples=window), timeout=5
    )
    assert await rejected_fields(call) == [field]
    assert h.store.decisions(deployment_key("resnet-t4")) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (servewise_pb2.EvaluateSwitchRequest(deployment_id="resnet-t4"), "samples"),
        (
            servewise_pb2.EvaluateSwitchRequest(
                deployment_id="", samples=[servewise_pb2.MetricSample(rate_per_s=1.0)]
            ),
            "deployment_id",
        ),
        (
            servewise_pb2.EvaluateSwitchRequest(
                deployment_id="resnet-t4",
                samples=[servewise_pb2.MetricSample(rate_per_s=1.0)],
                settings_override=servewise_pb2.DeploymentSettings(hysteresis_band_fraction=2.0),
            ),
            "settings_override.hysteresis_band_fraction",
        ),
    ],
)
async def test_invalid_evaluate_request_fields(
    h: Harness, request_: servewise_pb2.EvaluateSwitchRequest, field: str
) -> None:
    """Missing samples, a bad id and a bad override each name their field; nothing is logged."""
    await register(h, deployment())
    assert await rejected_fields(h.stub.EvaluateSwitch(request_, timeout=5)) == [field]
    assert h.store.decisions(deployment_key("resnet-t4")) == []


async def test_a_well_formed_transition_round_trips(h: Harness) -> None:
    """What the Control stream stores comes back on re-registration (read-modify-write): a
    whole transition is accepted and kept as written."""
    pb = deployment()
    _transition()(pb)
    response = await h.stub.RegisterDeployment(
        servewise_pb2.RegisterDeploymentRequest(deployment=pb), timeout=5
    )
    assert response.deployment.transition == pb.transition
