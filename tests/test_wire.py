"""Requests whose bytes are not a valid message get INVALID_ARGUMENT, and the server keeps
serving (servewise.wire.MalformedRequestInterceptor)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from servewise.server import RunningServer
from servewise.v1 import servewise_pb2

UNARY_METHODS = {
    "OptimizeBatch": servewise_pb2.OptimizeBatchResponse,
    "Simulate": servewise_pb2.SimulateResponse,
    "SelectMode": servewise_pb2.SelectModeResponse,
    "PlanResources": servewise_pb2.PlanResourcesResponse,
}
# Bytes that are not any message: a field with wire type 7 (invalid), and a truncated
# length-delimited field that claims 100 bytes and carries 2.
GARBAGE = [b"\x0f", b"\x0a\x64\x01\x02", bytes(range(256))]


@pytest.mark.parametrize("method", sorted(UNARY_METHODS))
@pytest.mark.parametrize("payload", GARBAGE, ids=["wiretype7", "truncated", "bytes0-255"])
async def test_undecodable_request_is_invalid_argument(
    running_server: RunningServer, method: str, payload: bytes
) -> None:
    """Random bytes as the request: INVALID_ARGUMENT naming `request`, then still healthy."""
    address = f"127.0.0.1:{running_server.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/servewise.v1.ServewiseService/{method}",
            request_serializer=lambda raw: raw,
            response_deserializer=UNARY_METHODS[method].FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(payload, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["request"]
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
