"""SIGTERM drains `servewise serve`: health NOT_SERVING, in-flight unary calls finish, open Control
streams end with a status (UNAVAILABLE), new calls are refused, and the process exits 0 without
waiting out the grace period for streams.

tests/test_server.py covers the pieces in-process with a probe servicer (health flips, an
in-flight call finishes); this drives the real command with the real servicer.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
