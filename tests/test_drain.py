"""SIGTERM drains `servewise serve`: health NOT_SERVING, in-flight unary calls finish, open Control
streams end with a status (UNAVAILABLE), new calls are refused, and the process exits 0 without
waiting out the grace period for streams.

tests/test_server.py covers the pieces in-process with a probe servicer (health flips, an
in-flight call finishes); this drives the real command with the real servicer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.api_builders import optimize_request
from limits_support import deployment, free_port, heavy_plan_resources, sample, start_serve
from servewise.v1 import servewise_pb2, servewise_pb2_grpc

pytestmark = pytest.mark.slow

GRACE_S = 30.0


async def test_sigterm_drains_streams_and_unary_calls_then_exits_0() -> None:
    """During a heavy PlanResources and with a Control stream open, SIGTERM: health turns
    NOT_SERVING, the stream ends with UNAVAILABLE at once, the PlanResources still answers OK,
    and the process exits 0 well before the grace period."""
    port = free_port()
    process = start_serve(port, ["--grace-s", str(GRACE_S)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            await stub.RegisterDeployment(
                servewise_pb2.RegisterDeploymentRequest(deployment=deployment("drained")),
                timeout=10,
            )
            stream = stub.Control()
            await stream.write(sample("drained", 1.0))
            assert (await stream.read()).WhichOneof("event") == "hold_event"
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            in_flight = asyncio.ensure_future(
                stub.PlanResources(heavy_plan_resources(deployments=16), timeout=GRACE_S)
            )
            await asyncio.sleep(0.2)  # let it reach its worker thread (it runs for seconds)
            assert not in_flight.done()

            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)

            health = await asyncio.wait_for(watch.read(), 10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a watcher would otherwise hold the server for the grace period
            assert await asyncio.wait_for(stream.code(), 10) is grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (await stream.details() or "")
            stream_closed_s = time.monotonic() - signalled
            response = await in_flight
            assert len(response.deployments) == 16
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Route(
                    servewise_pb2.RouteRequest(deployment_id="drained", request_key="k"),
                    timeout=5,
                )
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        returncode = await asyncio.to_thread(process.wait, GRACE_S + 10)
        exited_s = time.monotonic() - signalled
        print(
            f"stream closed {stream_closed_s:.2f} s, process exited {exited_s:.2f} s after SIGTERM"
        )
        assert returncode == 0, process.stderr.read() if process.stderr else ""
        assert stream_closed_s < 5
        assert exited_s < GRACE_S / 2
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _worker_pids(pid: int) -> set[int]:
    """The server's spawned children (its OptimizeBatch workers; multiprocessing's resource
    tracker too), from /proc."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.update(int(c) for c in children.read_text().split())
    return found


def _optimize_calls_started(metrics_url: str) -> float:
    """OptimizeBatch calls the server's handlers have started (its grpc_server_started)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:  # noqa: S310  # our server
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total{") and 'grpc_method="OptimizeBatch"' in line
    )


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def test_sigterm_lets_calls_in_worker_processes_finish_and_stops_the_workers() -> None:
    """Concurrent OptimizeBatch calls run in worker processes (and queue for them); SIGTERM once
    every one has started: each answers OK, the process exits 0, and no worker outlives it.
    (A call the server has not started when it stops is refused by gRPC itself, CANCELLED or
    UNAVAILABLE: that is not a drain.)"""
    port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    flags = ["--grace-s", str(GRACE_S), "--worker-processes", "2"]
    process = start_serve(port, [*flags, "--metrics-address", f"127.0.0.1:{metrics_port}"])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            request = optimize_request()
            request.workload.rate_per_s = 3000.0
            await stub.OptimizeBatch(request, timeout=30)  # the first call starts the workers
            await _until(lambda: len(_worker_pids(process.pid)) >= 2, 30, "no workers")
            await asyncio.sleep(1.0)  # let them import the core and say hello
            children = _worker_pids(process.pid)
            calls = [
                asyncio.ensure_future(stub.OptimizeBatch(request, timeout=GRACE_S))
                for _ in range(8)
            ]
            await _until(lambda: _optimize_calls_started(metrics_url) >= 9, 30, "calls not started")
            process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*calls)
            assert all(answer.HasField("recommended") for answer in answers)
        returncode = await asyncio.to_thread(process.wait, GRACE_S + 10)
        assert returncode == 0, process.stderr.read() if process.stderr else ""
        await _until(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children),
            10,
            "a worker outlived the server",
        )
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
