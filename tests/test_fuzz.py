"""Fuzzing a running server: hypothesis-generated requests for every implemented unary RPC.

Requests are valid ones (tests/api/api_builders) with numbers replaced by edge values (zero,
subnormals, huge, negative, NaN, infinities, integer limits), plus random bytes as the message.
Whatever arrives, the answer must be OK or INVALID_ARGUMENT — never INTERNAL or UNKNOWN — and
the server must stay healthy. SERVEWISE_FUZZ_EXAMPLES sets the size (CI: a few hundred; the
large run for issue 6's figure is a bench setting).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.api_builders import (
    optimize_request,
    simulate_request,
    t4_linear_candidate,
    v100_candidate,
)
from servewise.v1 import servewise_pb2

EXAMPLES = int(os.environ.get("SERVEWISE_FUZZ_EXAMPLES", "300"))
DOUBLES = [
    0.0,
    -0.0,
    5e-324,
    1e-300,
    1e-9,
    0.5,
    1.0,
    2.0,
    99.99,
    1e6,
    1e12,
    1e300,
    -1.0,
    -1e300,
    math.nan,
    math.inf,
    -math.inf,
]
UNSIGNED = [0, 1, 2, 7, 255, 4096, 65_536, 2**31, 2**32 - 1, 2**63, 2**64 - 1]
SIGNED = [0, 1, -1, 2**31 - 1, -(2**31)]


def _select_mode() -> servewise_pb2.SelectModeRequest:
    request = servewise_pb2.SelectModeRequest(candidates=[v100_candidate(), t4_linear_candidate()])
    online = request.traffic_classes.add(name="online", rate_per_s=300.0)
    online.slo.latency_ms = 80.0
    request.traffic_classes.add(name="batch", rate_per_s=100.0, deadline_s=60.0)
    return request


def _plan_resources() -> servewise_pb2.PlanResourcesRequest:
    request = servewise_pb2.PlanResourcesRequest()
    spec = request.deployments.add(name="d", candidates=[t4_linear_candidate()])
    spec.slo.latency_ms = 100.0
    for hour in range(24):
        spec.rate_profile.add(time_s=3600.0 * hour, rate_per_s=50.0 + 40.0 * math.sin(hour / 3.8))
    return request


METHODS: dict[str, tuple[Callable[[], Message], type[Message]]] = {
    "OptimizeBatch": (optimize_request, servewise_pb2.OptimizeBatchResponse),
    "Simulate": (simulate_request, servewise_pb2.SimulateResponse),
    "SelectMode": (_select_mode, servewise_pb2.SelectModeResponse),
    "PlanResources": (_plan_resources, servewise_pb2.PlanResourcesResponse),
}
NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE: DOUBLES,
    FieldDescriptor.TYPE_UINT32: [u for u in UNSIGNED if u < 2**32],
    FieldDescriptor.TYPE_UINT64: UNSIGNED,
    FieldDescriptor.TYPE_INT32: SIGNED,
}


def _numeric_fields(message: Message, out: list[tuple[Message, FieldDescriptor]]) -> None:
    for fd in message.DESCRIPTOR.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            children = (
                getattr(message, fd.name)
                if fd.is_repeated
                else ([getattr(message, fd.name)] if message.HasField(fd.name) else [])
            )
            for child in children:
                _numeric_fields(child, out)
        elif fd.type in NUMERIC and not fd.is_repeated:
            out.append((message, fd))


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A real `servewise serve` in a subprocess (module-wide: hypothesis runs many examples)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servewise",
            "serve",
            "--address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            "off",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(conn).result(timeout=30)
        yield conn
    finally:
        conn.close()
        process.terminate()
        process.wait(timeout=30)


STATUSES: Counter[str] = Counter()


@given(data=st.data())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_gets_internal_or_unknown(channel: grpc.Channel, data: Any) -> None:
    """Property: mutated or random-byte requests are answered OK or INVALID_ARGUMENT."""
    name = data.draw(st.sampled_from(sorted(METHODS)))
    make, response_type = METHODS[name]
    if data.draw(st.integers(0, 19)) == 0:
        payload: bytes = data.draw(st.binary(max_size=256))
    else:
        request = make()
        fields: list[tuple[Message, FieldDescriptor]] = []
        _numeric_fields(request, fields)
        for _ in range(data.draw(st.integers(1, 3))):
            owner, fd = data.draw(st.sampled_from(fields))
            setattr(owner, fd.name, data.draw(st.sampled_from(NUMERIC[fd.type])))
        payload = request.SerializeToString()
    call = channel.unary_unary(
        f"/servewise.v1.ServewiseService/{name}",
        request_serializer=lambda raw: raw,
        response_deserializer=response_type.FromString,
    )
    code = grpc.StatusCode.OK
    details = ""
    try:
        call(payload, timeout=60)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details()  # type: ignore[attr-defined]
    STATUSES[code.name] += 1
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (name, code, details)


def test_server_healthy_after_fuzzing(channel: grpc.Channel) -> None:
    """After the fuzz run the server still answers its health check SERVING."""
    started = time.monotonic()
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert time.monotonic() - started < 10
