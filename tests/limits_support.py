"""Shared by tests/test_limits.py and tests/test_drain.py: a ``servewise serve`` subprocess and
small valid requests (built here, as tests/api's builders are only importable from tests/api)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servewise.v1 import servewise_pb2, types_pb2


def servewise_command() -> list[str]:
    script = Path(sys.executable).with_name("servewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "servewise"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(
    port: int,
    flags: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> subprocess.Popen[str]:
    """``servewise serve`` on 127.0.0.1:``port`` (memory store, metrics off, plus ``env``),
    once it reports SERVING."""
    env = {
        **os.environ,
        "SERVEWISE_STORE": "memory",
        "SERVEWISE_METRICS_ADDRESS": "off",
        **(env or {}),
    }
    process = subprocess.Popen(
        [*servewise_command(), "serve", "--address", f"127.0.0.1:{port}", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _, stderr = process.communicate()
                raise AssertionError(f"server exited during start-up: {stderr}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                time.sleep(0.1)
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return process
    process.kill()
    process.communicate()
    raise AssertionError(f"server not SERVING within {timeout_s}s")


def linear_candidate(name: str = "g4dn.xlarge", price: float = 0.526) -> types_pb2.Candidate:
    """A T4-like instance: s(b) = 5.24 + 2.288 b ms, batches up to 64."""
    return types_pb2.Candidate(
        instance_type=types_pb2.InstanceType(name=name, price_per_hour=price, max_batch_size=64),
        profile=types_pb2.LatencyProfile(
            linear=types_pb2.LinearProfile(base_ms=5.24, per_item_ms=2.288, max_batch_size=0)
        ),
    )


def light_optimize() -> servewise_pb2.OptimizeBatchRequest:
    """A small OptimizeBatch (tens of milliseconds)."""
    return servewise_pb2.OptimizeBatchRequest(
        candidates=[linear_candidate()],
        workload=types_pb2.Workload(rate_per_s=100.0),
        slo=types_pb2.Slo(latency_ms=100.0),
    )


def heavy_plan_resources(deployments: int = 4) -> servewise_pb2.PlanResourcesRequest:
    """A PlanResources of about 0.15 s per deployment on the development machine (at 16, a
    couple of seconds): each deployment has four candidates and a day of bursty traffic by the
    minute."""
    specs = []
    for d in range(deployments):
        candidates = []
        for i in range(4):
            candidate = linear_candidate(f"t{i}", 0.5 + 0.01 * i)
            candidate.profile.linear.per_item_ms = 2.0 + 0.1 * i + 0.01 * d
            candidate.profile.linear.base_ms = 5.0 + i
            candidates.append(candidate)
        points = [
            types_pb2.RatePoint(
                time_s=60.0 * k,
                rate_per_s=3000.0 * (0.55 + 0.45 * math.sin(2 * math.pi * k / 1440 + d)),
            )
            for k in range(1440)
        ]
        specs.append(
            servewise_pb2.DeploymentSpec(
                name=f"day-{d}",
                candidates=candidates,
                slo=types_pb2.Slo(latency_ms=80.0),
                rate_profile=points,
                arrival_cv=2.0,
            )
        )
    return servewise_pb2.PlanResourcesRequest(deployments=specs)


def deployment(deployment_id: str) -> servewise_pb2.Deployment:
    """Real-time on 20 T4 replicas for 1000/s, p99 <= 100 ms."""
    return servewise_pb2.Deployment(
        deployment_id=deployment_id,
        candidates=[linear_candidate()],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=100.0),
        current_plan=types_pb2.ServingPlan(
            instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
        ),
        planned_rate_per_s=1000.0,
    )


def sample(deployment_id: str, timestamp_s: float) -> servewise_pb2.ControlRequest:
    """A healthy metrics sample; the stream wants a HoldEvent when nothing changes."""
    return servewise_pb2.ControlRequest(
        deployment_id=deployment_id,
        want_hold_events=True,
        sample=servewise_pb2.MetricSample(
            timestamp_s=timestamp_s, rate_per_s=1000.0, p50_ms=20.0, p99_ms=40.0, utilisation=0.5
        ),
    )
