"""A real grpc.aio server on 127.0.0.1:0 with the API servicer and health, for API tests.

The ``grpc_testing`` module does not support aio, so API tests talk to a real in-process server
over a real channel, as MLServer and KServe do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from servewise.api.servicer import ServewiseServicer
from servewise.v1 import servewise_pb2_grpc

if TYPE_CHECKING:
    from servewise.v1.servewise_pb2_grpc import ServewiseServiceAsyncStub

# Large enough for the biggest trace the API accepts (2,000,000 float64 timestamps = 16 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME = "servewise.v1.ServewiseService"


@dataclass(frozen=True)
class Api:
    """Stubs on one channel to the in-process server."""

    stub: ServewiseServiceAsyncStub
    health: Any  # grpc_health.v1.health_pb2_grpc.HealthStub on an aio channel (untyped)
    servicer: ServewiseServicer | None = None

    async def assert_serving(self) -> None:
        """The server still answers (used after every rejected request)."""
        response = await self.health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


@asynccontextmanager
async def running_api(worker_processes: int = 0) -> AsyncIterator[Api]:
    """Start the servicer on an ephemeral port, yield stubs, stop the server.

    OptimizeBatch runs in threads unless ``worker_processes`` is given: a fresh server per test
    would start workers per test (tests/api/test_offload.py covers them, and the e2e tests
    serve with them)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.aio.server(options=options)
    servicer = ServewiseServicer(worker_processes=worker_processes)  # type: ignore[abstract]
    servewise_pb2_grpc.add_ServewiseServiceServicer_to_server(servicer, server)
    health_servicer = getattr(health, "aio").HealthServicer()  # noqa: B009  # not in the stubs
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield Api(
                servewise_pb2_grpc.ServewiseServiceStub(channel),
                health_pb2_grpc.HealthStub(channel),
                servicer,
            )
    finally:
        await server.stop(None)
        await servicer.aclose()
