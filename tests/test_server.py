"""The server shell: health, reflection, UNIMPLEMENTED defaults, logging/metrics, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from servewise.server import SERVICE_NAME, RunningServer, parse_host_port, start_server
from servewise.v1 import servewise_pb2, servewise_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Unary RPCs naming a deployment nobody registered: they must answer NOT_FOUND, not crash.
UNKNOWN_DEPLOYMENT_UNARY = [
    ("Route", servewise_pb2.RouteRequest(deployment_id="dep-1", request_key="r1")),
]

# Budget for the server's resident memory right after start-up.
RSS_BUDGET_BYTES = 120 * 1024 * 1024


async def _control_requests(n: int, deployment_id: str) -> AsyncIterator[Any]:
    for _ in range(n):
        yield servewise_pb2.ControlRequest(deployment_id=deployment_id)


class ProbeServicer(servewise_pb2_grpc.ServewiseServiceServicer):
    """A test-only servicer exercising every outcome the interceptor must record."""

    async def Route(
        self, request: servewise_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> servewise_pb2.RouteResponse:
        return servewise_pb2.RouteResponse(pool=servewise_pb2.POOL_BATCH, state_version=7)

    async def SelectMode(
        self, request: servewise_pb2.SelectModeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> servewise_pb2.SelectModeResponse:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such deployment")

    async def PlanResources(
        self,
        request: servewise_pb2.PlanResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> servewise_pb2.PlanResourcesResponse:
        raise ZeroDivisionError("a bug")

    async def EvaluateSwitch(
        self,
        request: servewise_pb2.EvaluateSwitchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> servewise_pb2.EvaluateSwitchResponse:
        await asyncio.sleep(0.3)
        return servewise_pb2.EvaluateSwitchResponse()

    async def Control(
        self,
        request_iterator: AsyncIterator[servewise_pb2.ControlRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[servewise_pb2.ControlResponse]:
        async for _ in request_iterator:
            yield servewise_pb2.ControlResponse()


def _probe() -> servewise_pb2_grpc.ServewiseServiceServicer:
    # mypy-protobuf marks every servicer method abstract; the inherited ones are UNIMPLEMENTED.
    return ProbeServicer()  # type: ignore[abstract]


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(response.status)


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _handled(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str, code: str
) -> float:
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": method, "grpc_code": code}
    return sum(
        value
        for (name, sample_labels), value in samples.items()
        if name == "grpc_server_handled_total" and labels.items() <= dict(sample_labels).items()
    )


async def test_health_reports_serving(grpc_channel: grpc.aio.Channel) -> None:
    """Health answers SERVING for the whole server ("") and for ServewiseService."""
    assert await _health(grpc_channel, "") == SERVING
    assert await _health(grpc_channel, SERVICE_NAME) == SERVING


async def test_health_unknown_service_is_not_found(grpc_channel: grpc.aio.Channel) -> None:
    """A service the server does not have is NOT_FOUND, as the health protocol requires."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(grpc_channel, "no.such.Service")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_turns_not_serving_while_draining() -> None:
    """Stopping flips health to NOT_SERVING before in-flight RPCs finish."""
    running = await start_server("127.0.0.1:0", None, servicer=_probe())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            )
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == SERVING
            stopping = asyncio.create_task(running.stop(0.5))
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == NOT_SERVING
            await stopping
    finally:
        await running.stop(None)


async def test_in_flight_rpc_finishes_within_grace() -> None:
    """An RPC running when stop(grace) begins still completes successfully."""
    running = await start_server("127.0.0.1:0", None, servicer=_probe())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            call = stub.EvaluateSwitch(servewise_pb2.EvaluateSwitchRequest(), timeout=5)
            await asyncio.sleep(0.1)  # let it reach the handler
            await running.stop(5)
            assert isinstance(await call, servewise_pb2.EvaluateSwitchResponse)
    finally:
        await running.stop(None)


async def test_reflection_lists_services(grpc_channel: grpc.aio.Channel) -> None:
    """Reflection lists ServewiseService, health and reflection itself (what grpcurl list shows)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = set()
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names |= {service.name for service in response.list_services_response.service}
    assert names == {
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_describes_the_service(grpc_channel: grpc.aio.Channel) -> None:
    """Reflection serves the proto file defining ServewiseService (what grpcurl describe needs)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    files = responses[0].file_descriptor_response.file_descriptor_proto
    assert files, responses[0]
    assert any(b"ServewiseService" in serialized for serialized in files)


@pytest.mark.parametrize(("method", "request_message"), UNKNOWN_DEPLOYMENT_UNARY)
async def test_unknown_deployment_unary_rpcs(
    stub: servewise_pb2_grpc.ServewiseServiceAsyncStub, method: str, request_message: Any
) -> None:
    """A unary RPC naming an unknown deployment answers NOT_FOUND naming it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_message, timeout=5)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "dep-1" in (caught.value.details() or "")


async def test_control_stream_rejects_a_sample_for_an_unknown_deployment(
    stub: servewise_pb2_grpc.ServewiseServiceAsyncStub,
) -> None:
    """The Control stream answers a sample for an unknown deployment with a rejection event on
    the stream, not an abort: the stream ends OK."""
    request = servewise_pb2.ControlRequest(
        sample=servewise_pb2.MetricSample(deployment_id="no-such", timestamp_s=1.0, rate_per_s=1.0)
    )
    call = stub.Control(iter([request]), timeout=5)
    events = [event async for event in call]
    assert [e.WhichOneof("event") for e in events] == ["sample_rejected"]
    assert events[0].sample_rejected.unknown_deployment
    assert await call.code() is grpc.StatusCode.OK


async def test_unknown_method_is_unimplemented(grpc_channel: grpc.aio.Channel) -> None:
    """A method the server does not know is UNIMPLEMENTED (the interceptor passes it through)."""
    call = grpc_channel.unary_unary(
        "/servewise.v1.ServewiseService/NoSuchMethod",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_metrics_count_handled_rpcs() -> None:
    """After a call, /metrics serves grpc_server_handled_total, started and latency series."""
    running = await start_server("127.0.0.1:0", "127.0.0.1:0")
    try:
        assert running.metrics_port
        before = await asyncio.to_thread(_scrape, running.metrics_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Route(
                    servewise_pb2.RouteRequest(deployment_id="dep-1", request_key="r1"), timeout=5
                )
        after = await asyncio.to_thread(_scrape, running.metrics_port)
    finally:
        await running.stop(None)
    assert _handled(after, "Route", "NOT_FOUND") == _handled(before, "Route", "NOT_FOUND") + 1
    names = {name for name, _ in after}
    assert {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "grpc_server_handling_seconds_count",
    } <= names


@pytest.mark.parametrize("metrics_address", [None, "", "off", "OFF"])
async def test_metrics_can_be_disabled(metrics_address: str | None) -> None:
    """None, "" and "off" start no metrics HTTP server."""
    running = await start_server("127.0.0.1:0", metrics_address)
    try:
        assert running.metrics_port is None
    finally:
        await running.stop(None)


async def test_interceptor_records_every_outcome() -> None:
    """Each RPC, unary or bidi-stream, gets one log line and metrics with its real status code."""
    running = await start_server("127.0.0.1:0", "127.0.0.1:0", servicer=_probe())
    try:
        assert running.metrics_port
        before = await asyncio.to_thread(_scrape, running.metrics_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            with structlog.testing.capture_logs() as logs:
                await stub.Route(servewise_pb2.RouteRequest(deployment_id="dep-9"), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as not_found:
                    await stub.SelectMode(servewise_pb2.SelectModeRequest(), timeout=5)
                assert not_found.value.code() is grpc.StatusCode.NOT_FOUND
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await stub.PlanResources(servewise_pb2.PlanResourcesRequest(), timeout=5)
                assert unknown.value.code() is grpc.StatusCode.UNKNOWN
                replies = [r async for r in stub.Control(_control_requests(3, "dep-7"), timeout=5)]
                assert len(replies) == 3
        after = await asyncio.to_thread(_scrape, running.metrics_port)
    finally:
        await running.stop(None)

    rpc_logs = {
        entry["method"].rsplit("/", 1)[1]: entry for entry in logs if entry["event"] == "rpc"
    }
    assert {m: e["code"] for m, e in rpc_logs.items()} == {
        "Route": "OK",
        "SelectMode": "NOT_FOUND",
        "PlanResources": "UNKNOWN",
        "Control": "OK",
    }
    assert rpc_logs["Route"]["deployment_id"] == "dep-9"
    assert rpc_logs["Control"]["deployment_id"] == "dep-7"
    assert "deployment_id" not in rpc_logs["SelectMode"]
    assert rpc_logs["PlanResources"]["log_level"] == "error"
    assert all(entry["duration_ms"] >= 0 for entry in rpc_logs.values())
    for method, code in [
        ("Route", "OK"),
        ("SelectMode", "NOT_FOUND"),
        ("PlanResources", "UNKNOWN"),
        ("Control", "OK"),
    ]:
        assert _handled(after, method, code) == _handled(before, method, code) + 1, method
    sent = [
        value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "grpc_server_msg_sent_total" and ("grpc_method", "Control") in labels
    ]
    assert sent == [3.0]


async def test_bind_failure_is_a_clear_oserror(running_server: RunningServer) -> None:
    """A port already in use fails start-up with OSError naming the address."""
    address = f"127.0.0.1:{running_server.port}"
    with pytest.raises(OSError, match=f"cannot listen on {address}"):
        await start_server(address, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("localhost:9464", ("localhost", 9464)), ("[::]:0", ("::", 0)), ("0.0.0.0:1", ("0.0.0.0", 1))],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT, [IPv6]:PORT and port 0 parse."""
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "localhost", ":80", "host:", "host:http", "host:70000"])
def test_parse_host_port_rejects(text: str) -> None:
    """Malformed addresses raise ValueError naming what was expected."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port(text)


# --- the real command in a subprocess -------------------------------------------------------


def _servewise_command() -> list[str]:
    script = Path(sys.executable).with_name("servewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "servewise"]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def _wait_serving(port: int, process: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "server exited during start-up"
            try:
                response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                time.sleep(0.1)
                continue
            if response.status == SERVING:
                return
    raise AssertionError(f"server not SERVING within {timeout_s}s")


@pytest.fixture
def served(free_port: Callable[[], int]) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """``servewise serve`` running in a subprocess; yields (process, grpc port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "SERVEWISE_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"}
    process = subprocess.Popen(
        [*_servewise_command(), "serve", "--address", f"127.0.0.1:{port}", "--grace-s", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_serving(port, process)
        yield process, port, metrics_port
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_logs_each_rpc_and_exits_0_on_signal(
    served: tuple[subprocess.Popen[str], int, int], signum: signal.Signals
) -> None:
    """`servewise serve` logs one JSON line per RPC and exits 0 after SIGTERM or SIGINT."""
    process, port, metrics_port = served
    rss = _rss_bytes(process.pid)
    print(f"server RSS after start-up: {rss / 2**20:.1f} MiB")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        for method, request in UNKNOWN_DEPLOYMENT_UNARY:
            with pytest.raises(grpc.RpcError):
                getattr(stub, method)(request, timeout=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        assert b"grpc_server_handled_total" in response.read()

    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    rpc_lines = [line for line in lines if line["event"] == "rpc"]
    assert [line["method"] for line in rpc_lines] == [
        f"/{SERVICE_NAME}/{method}" for method, _ in UNKNOWN_DEPLOYMENT_UNARY
    ]
    for line in rpc_lines:
        assert line["code"] == "NOT_FOUND"
        assert isinstance(line["duration_ms"], float)
        assert line["level"] == "info"
    assert [line.get("deployment_id") for line in rpc_lines] == [
        getattr(request, "deployment_id", None) or None for _, request in UNKNOWN_DEPLOYMENT_UNARY
    ]
    events = [line["event"] for line in lines]
    assert events[0] == "server_started"
    # A refused call's status can reach the client a moment before its log line is written,
    # so the last RPC line may follow server_draining; the stop line is always last.
    assert events[-1] == "server_stopped"
    assert events.count("server_draining") == 1


@pytest.mark.slow
def test_serve_rss_within_budget(served: tuple[subprocess.Popen[str], int, int]) -> None:
    """The server's resident memory right after start-up stays within 120 MiB."""
    process, _, _ = served
    rss = _rss_bytes(process.pid)
    print(f"server RSS after start-up: {rss / 2**20:.1f} MiB")
    assert rss <= RSS_BUDGET_BYTES, f"{rss / 2**20:.1f} MiB"
