"""Fixtures for the Python client: the real server on an ephemeral port, on its own thread.

``ServewiseClient`` is synchronous, so the server cannot share the test's event loop (a blocking
call would starve it, as the ``running_server`` fixture's loop is the test's own). Each server
here runs ``servewise.server.start_server`` — the real servicer, interceptor and health — on a
private event loop in a background thread, listening on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from servewise.api.servicer import ServewiseServicer
from servewise.server import start_server
from servewise.v1 import servewise_pb2_grpc


class LoopThread:
    """An asyncio event loop running on a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[Any], timeout: float = 30.0) -> Any:
        async def wrapper() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


@contextmanager
def threaded_server(servicer: Any = None) -> Iterator[str]:
    """Run the real server (optionally with ``servicer``) on a thread; yield its address."""
    loop = LoopThread()
    try:
        running = loop.run(start_server("127.0.0.1:0", metrics_address=None, servicer=servicer))
        try:
            yield f"127.0.0.1:{running.port}"
        finally:
            loop.run(running.stop(None))
    finally:
        loop.close()


@contextmanager
def threaded_tls_server(key_pem: bytes, cert_pem: bytes, servicer: Any = None) -> Iterator[int]:
    """A plain grpc.aio server with TLS credentials and the real servicer; yields its port.

    ``start_server`` listens without TLS (deployments terminate TLS in front of it), so the TLS
    path of the client is tested against a server set up here.
    """
    loop = LoopThread()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        servewise_pb2_grpc.add_ServewiseServiceServicer_to_server(
            servicer or ServewiseServicer(worker_processes=0), server
        )
        credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    try:
        server, port = loop.run(start())
        try:
            yield port
        finally:
            loop.run(server.stop(None))
    finally:
        loop.close()


@pytest.fixture
def tls_server() -> Callable[..., Any]:
    """``tls_server(key_pem, cert_pem)`` -> context manager yielding the TLS server's port."""
    return threaded_tls_server


@pytest.fixture(scope="module")
def server_address() -> Iterator[str]:
    """The real server, shared by a module's tests (they do not change its state)."""
    with threaded_server() as address:
        yield address


class RecordingServicer(ServewiseServicer):
    """The real servicer that records each call's metadata and can fail the first calls.

    ``failures`` lists status codes to answer the next OptimizeBatch (or EvaluateSwitch) calls
    with, one per call,
    before behaving normally; ``delay_s`` sleeps before answering.
    """

    def __init__(self, failures: list[grpc.StatusCode] | None = None, delay_s: float = 0.0):
        super().__init__()
        self.failures = list(failures or [])
        self.delay_s = delay_s
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    async def OptimizeBatch(self, request: Any, context: Any) -> Any:
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures:
            code = self.failures.pop(0)
            await context.abort(code, f"injected {code.name}")
        return await super().OptimizeBatch(request, context)

    async def EvaluateSwitch(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.failures:
            code = self.failures.pop(0)
            await context.abort(code, f"injected {code.name}")
        return await super().EvaluateSwitch(request, context)


@pytest.fixture
def recording_server() -> Callable[..., Any]:
    """``recording_server(failures=..., delay_s=...)`` -> context manager yielding
    ``(address, servicer)``."""

    @contextmanager
    def start(**kwargs: Any) -> Iterator[tuple[str, RecordingServicer]]:
        servicer = RecordingServicer(**kwargs)
        with threaded_server(servicer) as address:
            yield address, servicer

    return start


@pytest.fixture
def linear_spec() -> dict[str, Any]:
    """The README's OptimizeBatch example as a plain dict: 400 requests/s, p99 <= 100 ms, one
    instance type whose batch of b takes 8 + 1.5 b ms and holds at most 32."""
    return {
        "candidates": [
            {
                "instance_type": {
                    "name": "g5.xlarge",
                    "price_per_hour": 1.006,
                    "max_batch_size": 32,
                },
                "profile": {"linear": {"base_ms": 8, "per_item_ms": 1.5}},
            }
        ],
        "workload": {"rate_per_s": 400},
        "slo": {"percentile": 99, "latency_ms": 100},
    }
