"""Shared fixtures: the real server (servewise.server.start_server) in-process on 127.0.0.1:0.

The ``grpc_testing`` module does not support aio, so tests talk to a real server over a real
channel. Metrics are off here (a metrics HTTP server costs ~0.5 s to shut down); tests that need
them start their own server with ``metrics_address="127.0.0.1:0"``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hypothesis import settings

from servewise.server import RunningServer, start_server
from servewise.v1 import servewise_pb2_grpc

# CI (.ci/run) draws the same hypothesis examples on every run, so a submission lands or not
# on its own merits rather than on a lucky draw; developers' runs of scripts/test keep drawing
# fresh ones, which is how the fuzzer found two bugs in one session. Loaded here, before the
# test modules are imported, so their @settings inherit it.
settings.register_profile("ci", derandomize=True)
if os.environ.get("SERVEWISE_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["SERVEWISE_HYPOTHESIS_PROFILE"])


def _shared_data_dir() -> Path:
    """Where ../shared/data (real profiles, prices, traces) is: $SERVEWISE_DATA_DIR, else
    beside the checkout, else the development machine's /work/shared/data."""
    configured = os.environ.get("SERVEWISE_DATA_DIR")
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    for candidate in (Path(configured) if configured else None, beside, Path("/work/shared/data")):
        if candidate is not None and (candidate / "profiles.json").exists():
            return candidate
    return beside


# Test modules read it at import time (after this conftest), so it is set here once.
os.environ["SERVEWISE_DATA_DIR"] = str(_shared_data_dir())
# Servers started by tests keep deployments in memory unless a test asks for a durable store
# (the default, SQLite under the user's state directory, must not collect test deployments).
os.environ.setdefault("SERVEWISE_STORE", "memory")


@pytest_asyncio.fixture
async def running_server() -> AsyncIterator[RunningServer]:
    """The real server with the real servicer, health and reflection on an ephemeral port."""
    running = await start_server("127.0.0.1:0", metrics_address=None)
    try:
        yield running
    finally:
        await running.stop(None)


@pytest_asyncio.fixture
async def grpc_channel(running_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure aio channel to ``running_server``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        yield channel


@pytest.fixture
def stub(grpc_channel: grpc.aio.Channel) -> servewise_pb2_grpc.ServewiseServiceAsyncStub:
    """A ServewiseService stub on ``grpc_channel``."""
    return servewise_pb2_grpc.ServewiseServiceStub(grpc_channel)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function giving a TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port
