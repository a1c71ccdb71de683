"""The Control streams' optimizer worker processes end with the server, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.api_builders import t4_linear_candidate
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "servewise", "serve", "--address", f"127.0.0.1:{port}",
         "--metrics-address", "off", "--store", "memory", "--grace-s", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "server exited during start-up"
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return process
            except grpc.RpcError:
                time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not start")


def _ask_the_optimizer(port: int) -> None:
    """A sample above the band of a fresh deployment: the stream's answer needs an optimizer
    run, which the server computes in a worker process."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        plan = types_pb2.ServingPlan(
            instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
        )
        stub.RegisterDeployment(
            servewise_pb2.RegisterDeploymentRequest(
                deployment=servewise_pb2.Deployment(
                    deployment_id="d",
                    candidates=[t4_linear_candidate()],
                    slo=types_pb2.Slo(percentile=99.0, latency_ms=100.0),
                    current_plan=plan,
                    planned_rate_per_s=1000.0,
                )
            ),
            timeout=10,
        )
        request = servewise_pb2.ControlRequest(
            sample=servewise_pb2.MetricSample(
                deployment_id="d", timestamp_s=1.0, rate_per_s=1500.0
            ),
            want_hold_events=True,
        )
        events = list(stub.Control(iter([request]), timeout=60))
        assert [e.WhichOneof("event") for e in events] == ["hold_event"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_advice_workers_exit_when_the_server_goes(
    free_port: Callable[[], int], signum: signal.Signals
) -> None:
    """After a miss the server has a worker process; once the server is killed (SIGKILL: no
    chance to stop it) or stopped (SIGTERM), the worker is gone within a few seconds."""
    port = free_port()
    process = _start(port)
    try:
        _ask_the_optimizer(port)
        workers = [k for k in _children(process.pid) if _alive(k)]
        assert workers, "no worker process after an optimizer miss"
        process.send_signal(signum)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(k) for k in workers):
            time.sleep(0.1)
        assert not [k for k in workers if _alive(k)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
