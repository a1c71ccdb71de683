"""Valid requests built from the real published data in /work/shared/data, for API tests.

Tests start from these and break one field at a time, so each invalid-value test names exactly the
field it broke. ResNet-50 v1.5 on V100 16GB FP32 (NVIDIA DeepLearningExamples, PyTorch
ConvNets/resnet50v1.5 README, "Inference performance: NVIDIA DGX-1 (1x V100 16GB)" tables) is used
because it carries both kinds of real-world noise: batch 2 measured faster than batch 1, and the
average above the p99 from batch 16 up.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from servewise.v1 import servewise_pb2, types_pb2

DATA_DIR = Path(os.environ.get("SERVEWISE_DATA_DIR", "/work/shared/data"))
PROFILES_PATH = DATA_DIR / "profiles.json"
# Azure LLM inference trace 2023 (Azure/AzurePublicDataset, CC-BY-4.0; Patel et al., "Splitwise",
# ISCA 2024): one hour of a chat service, 19,366 requests, close to Poisson.
CONV_TRACE_PATH = DATA_DIR / "traces" / "AzureLLMInferenceTrace_conv.csv"
RESNET50_V100_FP32 = "dle-pt-resnet-50-v1-5-v100-16gb-fp32"
RESNET50_T4_FP32 = "dle-pt-resnet-50-v1-5-t4-fp32"

# AWS on-demand us-east-1 (shared/data/prices.json): p3.2xlarge (1x V100 16GB), g4dn.xlarge (T4).
P3_2XLARGE = ("p3.2xlarge", 3.06)
G4DN_XLARGE = ("g4dn.xlarge", 0.526)


@cache
def _profiles() -> dict[str, dict[str, Any]]:
    with PROFILES_PATH.open() as f:
        return {p["id"]: p for p in json.load(f)}


def measured_points(profile_id: str, *, with_p99: bool = True) -> list[types_pb2.ProfilePoint]:
    """The published (batch size, average latency[, p99]) points of one profile."""
    points = []
    for row in _profiles()[profile_id]["points"]:
        point = types_pb2.ProfilePoint(
            batch_size=row["batch_size"], latency_ms=row["latency_ms_avg"]
        )
        if with_p99:
            point.p99_latency_ms = row["latency_ms_p99"]
        points.append(point)
    return points


@cache
def conv_trace_s() -> tuple[float, ...]:
    """Arrival times of the Azure chat trace in seconds since its first request."""
    with CONV_TRACE_PATH.open(newline="") as f:
        stamps = [datetime.fromisoformat(row["TIMESTAMP"]) for row in csv.DictReader(f)]
    return tuple((t - stamps[0]).total_seconds() for t in stamps)


def v100_candidate() -> types_pb2.Candidate:
    """p3.2xlarge with the measured ResNet-50 FP32 profile and a memory model capping B at 100."""
    name, price = P3_2XLARGE
    return types_pb2.Candidate(
        instance_type=types_pb2.InstanceType(
            name=name,
            price_per_hour=price,
            # 16 GB device, 1 GB model, 150 MB per item: floor(15e9 / 150e6) = 100.
            memory=types_pb2.MemoryModel(
                model_bytes=1_000_000_000,
                bytes_per_item=150_000_000,
                device_memory_bytes=16_000_000_000,
            ),
            cold_start_s=45.0,
        ),
        profile=types_pb2.LatencyProfile(
            points=types_pb2.PointsProfile(points=measured_points(RESNET50_V100_FP32))
        ),
    )


def t4_linear_candidate() -> types_pb2.Candidate:
    """g4dn.xlarge with a linear fit of the T4 FP32 table, range set by the instance cap (64)."""
    name, price = G4DN_XLARGE
    return types_pb2.Candidate(
        instance_type=types_pb2.InstanceType(name=name, price_per_hour=price, max_batch_size=64),
        # Least-squares fit of the published T4 FP32 averages for batch 1..64 (10.7 .. 152.73 ms):
        # s(b) = 5.24 + 2.288 b ms.
        profile=types_pb2.LatencyProfile(
            linear=types_pb2.LinearProfile(base_ms=5.24, per_item_ms=2.288, max_batch_size=0)
        ),
    )


def realtime_deployment(deployment_id: str) -> servewise_pb2.Deployment:
    """Real-time on 20 replicas of g4dn.xlarge (the T4 linear fit) planned for 1,000/s, p99
    within 100 ms: a healthy deployment for the Control stream to hold or switch."""
    return servewise_pb2.Deployment(
        deployment_id=deployment_id,
        candidates=[t4_linear_candidate()],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=100.0),
        current_plan=types_pb2.ServingPlan(
            instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
        ),
        planned_rate_per_s=1000.0,
    )


def optimize_request() -> servewise_pb2.OptimizeBatchRequest:
    """A valid OptimizeBatch request exercising every optional field."""
    return servewise_pb2.OptimizeBatchRequest(
        candidates=[v100_candidate(), t4_linear_candidate()],
        workload=types_pb2.Workload(rate_per_s=400.0, arrival_cv=1.5),
        slo=types_pb2.Slo(percentile=99.0, latency_ms=60.0),
        limits=types_pb2.SearchLimits(
            max_replicas=64, allowed_batch_sizes=[1, 2, 4, 8, 16, 32], max_queue_delay_ms=20.0
        ),
        service_time_basis=types_pb2.SERVICE_TIME_BASIS_P99,
        current_plan=types_pb2.ServingPlan(
            instance_type=P3_2XLARGE[0], max_batch_size=1, max_queue_delay_ms=0.0, replicas=6
        ),
        seed=7,
    )


def simulate_request() -> servewise_pb2.SimulateRequest:
    """A valid, small Simulate request exercising every optional field."""
    return servewise_pb2.SimulateRequest(
        candidate=v100_candidate(),
        plan=types_pb2.ServingPlan(max_batch_size=8, max_queue_delay_ms=5.0, replicas=2),
        workload=types_pb2.Workload(rate_per_s=300.0, arrival_cv=1.0),
        num_requests=20_000,
        seed=11,
        service_time_basis=types_pb2.SERVICE_TIME_BASIS_TYPICAL,
        service_time_distribution=types_pb2.SERVICE_TIME_DISTRIBUTION_DETERMINISTIC,
        slo=types_pb2.Slo(percentile=99.0, latency_ms=50.0),
    )


async def rich_status(call: grpc.aio.UnaryUnaryCall[Any, Any]) -> status_pb2.Status:
    """The google.rpc.Status a failed aio call carried in its trailing metadata."""
    # grpc_status's stubs do not declare its aio submodule.
    from_call = getattr(rpc_status, "aio").from_call  # noqa: B009
    status = await from_call(call)
    assert status is not None, "the call carried no grpc-status-details-bin"
    return status


def bad_request_fields(status: status_pb2.Status) -> list[str]:
    """Field paths of every google.rpc.BadRequest violation in a decoded status."""
    fields: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
    return fields
