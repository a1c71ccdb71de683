"""Exports parsed back: Triton by protobuf text format, YAML by PyYAML, TorchServe as JSON."""

from __future__ import annotations

import ast
import json
import math
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from servewise.core.exports import (
    EXPORT_FILES,
    AutoscalerExport,
    ExportSettings,
    dns_label,
    hpa_manifest,
    ray_serve_config,
    ray_serve_decorator,
    render_exports,
    torchserve_config,
    triton_config,
)
from servewise.core.model import Plan

PLANS = [
    Plan("g5.xlarge", 16, 4.0, 3),
    Plan("cpu", 64, 0.0125, 1),
    Plan("c7i", 8, 12.5, 40),
    Plan("realtime", 1, 0.0, 5),
]

_F = descriptor_pb2.FieldDescriptorProto


def _triton_model_config() -> type[Message]:
    """The part of Triton's ``inference.ModelConfig`` (model_config.proto) the export uses,
    with Triton's field names and types, so text_format.Parse rejects any other field."""
    file = descriptor_pb2.FileDescriptorProto(
        name="triton_subset.proto", package="inference", syntax="proto3"
    )
    batcher = file.message_type.add(name="ModelDynamicBatching")
    batcher.field.add(
        name="preferred_batch_size", number=1, type=_F.TYPE_INT32, label=_F.LABEL_REPEATED
    )
    batcher.field.add(
        name="max_queue_delay_microseconds", number=2, type=_F.TYPE_UINT64, label=_F.LABEL_OPTIONAL
    )
    group = file.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    group.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    group.field.add(
        name="kind",
        number=4,
        type=_F.TYPE_ENUM,
        type_name=".inference.ModelInstanceGroup.Kind",
        label=_F.LABEL_OPTIONAL,
    )
    group.field.add(name="count", number=2, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    config = file.message_type.add(name="ModelConfig")
    config.field.add(name="name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    config.field.add(name="max_batch_size", number=4, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    config.field.add(
        name="instance_group",
        number=7,
        type=_F.TYPE_MESSAGE,
        type_name=".inference.ModelInstanceGroup",
        label=_F.LABEL_REPEATED,
    )
    config.field.add(
        name="dynamic_batching",
        number=11,
        type=_F.TYPE_MESSAGE,
        type_name=".inference.ModelDynamicBatching",
        label=_F.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _triton_model_config()


def _parse_triton(text: str) -> Any:
    config = ModelConfig()
    text_format.Parse(text, config)
    return config


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_triton_block_parses_as_model_config(plan: Plan) -> None:
    """The Triton block is valid text format for ModelConfig with the plan's B, T and N."""
    config = _parse_triton(triton_config(plan))
    assert config.max_batch_size == plan.max_batch_size
    assert config.instance_group[0].count == plan.replicas
    assert (
        config.instance_group[0].kind
        == ModelConfig.DESCRIPTOR.fields_by_name["instance_group"]
        .message_type.enum_types_by_name["Kind"]
        .values_by_name["KIND_GPU"]
        .number
    )
    if plan.max_batch_size == 1 and plan.max_queue_delay_ms == 0:
        assert not config.HasField("dynamic_batching")
    else:
        assert list(config.dynamic_batching.preferred_batch_size) == [plan.max_batch_size]
        assert config.dynamic_batching.max_queue_delay_microseconds == round(
            plan.max_queue_delay_ms * 1000
        )


def test_triton_kind_and_count_overrides() -> None:
    """instance_kind and instance_count replace the defaults; bad ones are ValueErrors."""
    text = triton_config(PLANS[0], instance_kind="KIND_CPU", instance_count=1)
    config = _parse_triton(text)
    assert config.instance_group[0].count == 1
    assert "kind: KIND_CPU" in text
    with pytest.raises(ValueError, match="instance_kind"):
        triton_config(PLANS[0], instance_kind="GPU")
    with pytest.raises(ValueError, match="instance_count"):
        triton_config(PLANS[0], instance_count=0)


def test_triton_rejects_unknown_fields_in_the_checker() -> None:
    """The test's ModelConfig is strict: a misspelt field would fail the parse."""
    with pytest.raises(text_format.ParseError):
        _parse_triton("max_batch: 4\n")


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_ray_serve_config(plan: Plan) -> None:
    """The Ray Serve config is YAML with num_replicas = N and the batch settings."""
    data = yaml.safe_load(ray_serve_config(plan, app_name="m", import_path="svc:app"))
    app = data["applications"][0]
    assert (app["name"], app["import_path"], app["route_prefix"]) == ("m", "svc:app", "/")
    deployment = app["deployments"][0]
    assert deployment["num_replicas"] == plan.replicas
    assert deployment["max_ongoing_requests"] >= plan.max_batch_size
    user = deployment["user_config"]
    assert user["max_batch_size"] == plan.max_batch_size
    assert math.isclose(user["batch_wait_timeout_s"], plan.max_queue_delay_ms / 1000)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_ray_serve_decorator_is_python(plan: Plan) -> None:
    """The decorator is valid Python with the plan's batch size and wait in seconds."""
    source = f"{ray_serve_decorator(plan)}\nasync def handle(requests): ...\n"
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    call = function.decorator_list[0]
    assert isinstance(call, ast.Call)
    assert ast.unparse(call.func) == "serve.batch"
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert keywords["max_batch_size"] == plan.max_batch_size
    assert math.isclose(keywords["batch_wait_timeout_s"], plan.max_queue_delay_ms / 1000)
    assert ray_serve_decorator(plan) in ray_serve_config(plan)  # shown in the config's header


def _torchserve_models(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    key, _, value = lines[0].partition("=")
    assert key == "models"
    models: dict[str, Any] = json.loads(value)
    return models


@pytest.mark.parametrize(
    ("delay_ms", "expected"),
    [(4.0, 4), (2.5, 3), (0.0125, 1), (0.0, 0), (12.49, 12)],
)
def test_torchserve_config(delay_ms: float, expected: int) -> None:
    """TorchServe gets batchSize = B, workers = N and the delay in whole ms (half up, at least
    1 ms when T > 0), with a note when rounding changed it."""
    plan = Plan("cpu", 8, delay_ms, 3)
    text = torchserve_config(plan, model_name="resnet")
    version = _torchserve_models(text)["resnet"]["1.0"]
    assert version["batchSize"] == 8
    assert version["maxBatchDelay"] == expected
    assert version["minWorkers"] == version["maxWorkers"] == 3
    assert version["marName"] == "resnet.mar"
    assert ("rounded" in text) == (expected != delay_ms)


def test_hpa_requests_per_second() -> None:
    """The HPA is autoscaling/v2 on the Deployment, min N, max 2N, a per-pod rate target."""
    plan = Plan("g5.xlarge", 16, 4.0, 3)
    data = yaml.safe_load(hpa_manifest(plan, name="my-model", rate_per_s=400, namespace="ml"))
    assert data["apiVersion"] == "autoscaling/v2"
    assert data["kind"] == "HorizontalPodAutoscaler"
    assert data["metadata"] == {"name": "my-model", "namespace": "ml"}
    spec = data["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "my-model",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 6)
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    assert target["averageValue"] == "133333m"  # 400/3 requests/s, rounded down to a milli
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_hpa_whole_quantity_and_cpu() -> None:
    """A whole per-pod rate is written plainly; the CPU variant targets the utilisation."""
    plan = Plan("cpu", 4, 1.0, 2)
    rps = yaml.safe_load(hpa_manifest(plan, rate_per_s=300))
    assert rps["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "150"
    cpu = yaml.safe_load(
        hpa_manifest(plan, rate_per_s=300, utilisation=0.629, metric="cpu", max_replicas=9)
    )
    resource = cpu["spec"]["metrics"][0]["resource"]
    assert resource["name"] == "cpu"
    assert resource["target"] == {"type": "Utilization", "averageUtilization": 62}
    assert cpu["spec"]["maxReplicas"] == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "My_Model"}, "DNS-1123"),
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"min_replicas": 5, "max_replicas": 4}, "min_replicas <= max_replicas"),
        ({"metric": "cpu"}, "utilisation"),
        ({"metric": "memory"}, "metric must be one of"),
        ({"scale_down_window_s": -1}, "windows"),
    ],
)
def test_hpa_rejects_bad_fields(kwargs: dict[str, Any], message: str) -> None:
    """Bad HPA settings raise ValueError naming the parameter."""
    arguments: dict[str, Any] = {"rate_per_s": 100.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        hpa_manifest(Plan("cpu", 4, 1.0, 2), **arguments)


@pytest.mark.parametrize(
    "plan",
    [Plan("x", 0, 1.0, 1), Plan("x", 4, -1.0, 1), Plan("x", 4, math.nan, 1), Plan("x", 4, 1.0, 0)],
)
def test_invalid_plans_are_rejected(plan: Plan) -> None:
    """Every renderer refuses a plan that cannot be served, naming the field."""
    for render in (triton_config, ray_serve_decorator, torchserve_config):
        with pytest.raises(ValueError, match=r"plan\."):
            render(plan)


def test_render_exports_gives_every_file() -> None:
    """render_exports returns the four files, each parseable, with the settings applied."""
    plan = Plan("g5.xlarge", 32, 2.0, 4)
    files = render_exports(
        plan,
        rate_per_s=1000,
        utilisation=0.7,
        settings=ExportSettings(
            name="bert-base", triton_instance_kind="KIND_CPU", hpa_metric="cpu"
        ),
    )
    assert tuple(files) == EXPORT_FILES
    assert _parse_triton(files["config.pbtxt"]).max_batch_size == 32
    ray = yaml.safe_load(files["ray_serve.yaml"])
    assert ray["applications"][0]["deployments"][0]["name"] == "BertBase"
    assert "bert-base" in _torchserve_models(files["torchserve.properties"])
    hpa = yaml.safe_load(files["hpa.yaml"])
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert all(text.startswith("# Servewise plan: g5.xlarge B=32") for text in files.values())


# --- Autoscaling (PlanResources' recommended autoscaler) ------------------------------------


AUTOSCALER = AutoscalerExport(
    min_replicas=2,
    max_replicas=12,
    target_rate_per_replica_s=250.0,
    scale_up_window_s=60.0,
    scale_down_window_s=300.0,
    mean_latency_ms=40.0,
)


def test_render_exports_with_an_autoscaler() -> None:
    """With an autoscaler: Ray has autoscaling_config instead of num_replicas (target in-flight
    requests by Little's law, 250/s x 40 ms = 10), the HPA its min/max, per-pod target and
    windows; Triton and TorchServe keep the peak plan and still parse."""
    plan = Plan("g4dn.xlarge", 16, 10.0, 7)
    files = render_exports(
        plan, rate_per_s=1500.0, settings=ExportSettings(name="chat", autoscaler=AUTOSCALER)
    )
    deployment = yaml.safe_load(files["ray_serve.yaml"])["applications"][0]["deployments"][0]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 2,
        "initial_replicas": 7,
        "max_replicas": 12,
        "target_ongoing_requests": 10.0,
        "upscale_delay_s": 60.0,
        "downscale_delay_s": 300.0,
    }
    assert deployment["user_config"]["max_batch_size"] == 16
    spec = yaml.safe_load(files["hpa.yaml"])["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 12)
    assert spec["metrics"][0]["pods"]["target"]["averageValue"] == "250"
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 60
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    triton = _parse_triton(files["config.pbtxt"])
    assert triton.dynamic_batching.max_queue_delay_microseconds == 10_000
    assert triton.instance_group[0].count == 7
    assert _torchserve_models(files["torchserve.properties"])["chat"]["1.0"]["batchSize"] == 16


def test_hpa_cpu_target_from_the_autoscaler() -> None:
    """metric=cpu with an autoscaler targets its utilisation: 250/s of a 500/s replica = 50%."""
    plan = Plan("cpu", 4, 1.0, 2)  # rate 600 at utilisation 0.6: 1000/s for 2, 500/s each
    text = hpa_manifest(
        plan, rate_per_s=600.0, utilisation=0.6, metric="cpu", target_per_pod_per_s=250.0
    )
    target = yaml.safe_load(text)["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 50}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 0, "min_replicas": 0}, "max_replicas"),
        ({"target_rate_per_replica_s": 0.0}, "target_rate_per_replica_s"),
        ({"scale_up_window_s": math.nan}, "scale_up_window_s"),
    ],
)
def test_autoscaler_export_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    """Bad autoscaler settings are ValueErrors naming the setting."""
    arguments: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_rate_per_replica_s": 10.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        AutoscalerExport(**arguments)


@pytest.mark.parametrize(
    ("name", "label"),
    [("Chat Model v2", "chat-model-v2"), ("__", "model"), ("a" * 80, "a" * 63)],
)
def test_dns_label(name: str, label: str) -> None:
    """Deployment names become DNS-1123 labels for the exports."""
    assert dns_label(name) == label
