"""Request specs (dicts, YAML, JSON) and profile files: shorthands, errors, round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from servewise_client import (
    ProfileFile,
    ProfileFileError,
    ProfilePoint,
    ServewiseClient,
    ServewiseError,
    SpecError,
    candidate_pb,
    load_spec,
    optimize_request,
    read_profile,
    simulate_request,
    write_profile,
)
from servewise_client.profile_file import MemoryFit, parse_profile

from servewise.v1 import types_pb2

POINTS = [
    {"batch_size": 1, "latency_ms": 2.0},
    {"batch_size": 4, "latency_ms": 3.0, "p99_latency_ms": 3.5},
    {"batch_size": 16, "latency_ms": 8.0},
]


def _spec(**candidate: Any) -> dict[str, Any]:
    return {
        "candidates": [{"instance_type": {"name": "cpu", "price_per_hour": 0.1}, **candidate}],
        "workload": {"rate_per_s": 200, "arrival_cv": 1.5},
        "slo": {"percentile": 95, "latency_ms": 40},
        "limits": {"max_replicas": 8, "allowed_batch_sizes": [1, 4, 16], "max_queue_delay_ms": 5},
        "current_plan": {
            "instance_type": "cpu",
            "max_batch_size": 1,
            "max_queue_delay_ms": 0,
            "replicas": 4,
        },
        "service_time_basis": "p99",
        "seed": 7,
    }


def test_every_part_of_an_optimize_spec() -> None:
    """Workload, SLO, limits, current plan, basis and seed land in their fields."""
    request = optimize_request(_spec(profile={"linear": {"base_ms": 1, "per_item_ms": 0.5}}))
    assert request.workload.rate_per_s == 200
    assert request.workload.arrival_cv == 1.5
    assert (request.slo.percentile, request.slo.latency_ms) == (95, 40)
    assert request.limits.max_replicas == 8
    assert list(request.limits.allowed_batch_sizes) == [1, 4, 16]
    assert request.limits.max_queue_delay_ms == 5
    assert request.current_plan.replicas == 4
    assert request.service_time_basis == types_pb2.SERVICE_TIME_BASIS_P99
    assert request.seed == 7
    assert request.candidates[0].profile.linear.per_item_ms == 0.5


@pytest.mark.parametrize(
    "profile",
    [POINTS, {"points": POINTS}, {"points": {"points": POINTS}}],
    ids=["list", "points-list", "proto-json"],
)
def test_points_shorthands(profile: Any) -> None:
    """A profile may be a bare list, {points: [...]} or the proto's JSON form."""
    request = optimize_request(_spec(profile=profile))
    points = request.candidates[0].profile.points.points
    assert [p.batch_size for p in points] == [1, 4, 16]
    assert points[1].p99_latency_ms == 3.5
    assert not points[0].HasField("p99_latency_ms")


def test_camel_case_and_enum_names_work() -> None:
    """lowerCamelCase field names and full enum names are accepted as in proto JSON."""
    request = optimize_request(
        {
            "candidates": [
                {
                    "instanceType": {"name": "a", "pricePerHour": 1},
                    "profile": {"linear": {"baseMs": 1, "perItemMs": 1}},
                }
            ],
            "workload": {"ratePerS": 3},
            "slo": {"latencyMs": 9},
            "service_time_basis": "SERVICE_TIME_BASIS_TYPICAL",
        }
    )
    assert request.candidates[0].instance_type.price_per_hour == 1
    assert request.service_time_basis == types_pb2.SERVICE_TIME_BASIS_TYPICAL


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"workload": {"rate": 3}}, "rate"),
        ({"slo": {"latency_ms": "fast"}}, "latency_ms"),
        ({"candidates": {"a": 1}}, "candidates: expected a list"),
        ({"candidates": [3]}, "candidates[0]"),
        ({"service_time_basis": "median"}, "service_time_basis"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_shape_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    """A spec that does not fit the message raises SpecError naming what is wrong, on one line."""
    with pytest.raises(SpecError) as caught:
        optimize_request(spec)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_values_are_left_to_the_server(server_address: str) -> None:
    """Value errors (decreasing batch sizes) pass the spec check and come back from the
    server as field violations, so every client gets the same checks."""
    spec = _spec(profile=[{"batch_size": 4, "latency_ms": 1}, {"batch_size": 2, "latency_ms": 2}])
    request = optimize_request(spec)
    with ServewiseClient(server_address) as client, pytest.raises(ServewiseError) as caught:
        client.optimize_batch(request)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in caught.value.field_violations]
    assert "candidates[0].profile.points.points[1].batch_size" in fields


def test_profile_file_is_resolved_against_the_spec_folder(tmp_path: Path) -> None:
    """profile_file is read relative to base_dir; its memory fit completes memory."""
    profile = ProfileFile(
        points=tuple(ProfilePoint(**p) for p in POINTS),
        memory=MemoryFit(model_bytes=1_000_000, bytes_per_item=10_000),
    )
    write_profile(tmp_path / "p.yaml", profile)
    spec = _spec(profile_file="p.yaml")
    spec["candidates"][0]["instance_type"]["memory"] = {"device_memory_bytes": 2_000_000}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    request = optimize_request(load_spec(tmp_path / "spec.yaml"), base_dir=tmp_path)
    candidate = request.candidates[0]
    assert [p.latency_ms for p in candidate.profile.points.points] == [2.0, 3.0, 8.0]
    memory = candidate.instance_type.memory
    assert (memory.model_bytes, memory.bytes_per_item, memory.device_memory_bytes) == (
        1_000_000,
        10_000,
        2_000_000,
    )


def test_profile_and_profile_file_together_is_an_error() -> None:
    """A candidate cannot have both a profile and a profile_file."""
    with pytest.raises(SpecError, match="not both"):
        optimize_request(_spec(profile=POINTS, profile_file="x.yaml"))


def test_missing_profile_file(tmp_path: Path) -> None:
    """A profile_file that does not exist is a SpecError naming the candidate."""
    with pytest.raises(SpecError, match=r"candidates\[0\]\.profile_file: cannot read"):
        optimize_request(_spec(profile_file="nope.yaml"), base_dir=tmp_path)


def test_simulate_from_a_plan_spec_picks_the_named_candidate() -> None:
    """An OptimizeBatch spec serves Simulate: plan.instance_type picks the candidate; limits
    and current_plan are left out."""
    spec = _spec(profile=POINTS)
    spec["candidates"].append(
        {
            "instance_type": {"name": "gpu", "price_per_hour": 1.0},
            "profile": {"linear": {"base_ms": 1, "per_item_ms": 0.1}},
        }
    )
    spec["plan"] = {"instance_type": "gpu", "max_batch_size": 8, "replicas": 1}
    request = simulate_request(spec)
    assert request.candidate.instance_type.name == "gpu"
    assert request.plan.max_batch_size == 8
    assert request.slo.latency_ms == 40
    with pytest.raises(SpecError, match="names no single candidate"):
        simulate_request({**spec, "plan": {"instance_type": "tpu"}})
    with pytest.raises(SpecError, match="several candidates"):
        simulate_request({**spec, "plan": {"max_batch_size": 2}})


def test_simulate_enums() -> None:
    """service_time_distribution takes its short names."""
    request = simulate_request(
        {"candidate": {"profile": POINTS}, "service_time_distribution": "exponential"}
    )
    assert request.service_time_distribution == types_pb2.SERVICE_TIME_DISTRIBUTION_EXPONENTIAL


def test_load_spec_json_and_yaml(tmp_path: Path) -> None:
    """load_spec reads JSON by extension and YAML otherwise; bad files are SpecErrors."""
    (tmp_path / "a.json").write_text(json.dumps({"seed": 1}))
    (tmp_path / "a.yml").write_text("seed: 2\n")
    assert load_spec(tmp_path / "a.json") == {"seed": 1}
    assert load_spec(tmp_path / "a.yml") == {"seed": 2}
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "none.yaml")


@pytest.mark.parametrize("name", ["p.json", "p.yaml"])
def test_profile_file_round_trip(tmp_path: Path, name: str) -> None:
    """write_profile then read_profile gives back points, memory fit, extras and metadata."""
    profile = ProfileFile(
        points=(
            ProfilePoint(1, 0.5, 0.7, 1024, extra={"mean_ms": 0.55, "runs": 10}),
            ProfilePoint(2, 0.6),
        ),
        memory=MemoryFit(model_bytes=5000, bytes_per_item=512),
        metadata={"model": "m.onnx", "runtime": "onnxruntime"},
    )
    write_profile(tmp_path / name, profile)
    assert read_profile(tmp_path / name) == profile


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "other/2", "points": POINTS}, "unsupported format"),
        ({"model": "x"}, "no 'points'"),
        ({"points": []}, "non-empty list"),
        ([{"batch_size": 1}], r"points\[0\]\.latency_ms is missing"),
        ([{"batch_size": 1.5, "latency_ms": 1}], "whole number"),
        ([{"batch_size": 1, "latency_ms": "1"}], "must be a number"),
        ([{"batch_size": 1, "latency_ms": 1, "latency": 2}], "unknown keys: latency"),
        ({"points": POINTS, "memory_model": [1]}, "memory_model must be a mapping"),
    ],
)
def test_bad_profile_files(data: Any, message: str) -> None:
    """Malformed profile files raise ProfileFileError saying what is wrong."""
    with pytest.raises(ProfileFileError, match=message):
        parse_profile(data)


def test_candidate_pb() -> None:
    """candidate_pb assembles a Candidate; max_batch_size and memory exclude each other."""
    profile = ProfileFile(points=(ProfilePoint(1, 1.0),)).latency_profile()
    candidate = candidate_pb("cpu", 0.2, profile, max_batch_size=8, cold_start_s=30)
    assert candidate.instance_type.max_batch_size == 8
    assert candidate.instance_type.cold_start_s == 30
    assert candidate.profile.points.points[0].latency_ms == 1.0
    with pytest.raises(ValueError, match="not both"):
        candidate_pb("cpu", 0.2, profile, max_batch_size=8, memory=types_pb2.MemoryModel())
