"""Fuzzing a running server: hypothesis-generated requests for every RPC, the Control stream
included.

Requests start as valid ones (tests/api/api_builders and the deployment below) and are then
mutated: numbers replaced by edge values (zero, subnormals, huge, negative, NaN, infinities,
integer limits), strings by edge strings (empty, 2,000 characters, unicode, path-like), a
repeated field inflated to thousands of copies of its first element (up to ~3 MB), or the
message replaced by an empty message or by random bytes (one in twenty is sent unchanged).
Whatever arrives:

* the status is never INTERNAL or UNKNOWN (and is one a client can act on: OK,
  INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED);
* a Control stream ends OK (an invalid sample is answered with a SampleRejected event) or, for
  bytes that are not a ControlRequest, INVALID_ARGUMENT;
* nothing persisted changes unless the request was accepted and writes: the store (a SQLite
  file the test reads directly) is snapshotted before and after every request, and must be
  unchanged after a rejected request, after every read-only RPC, and after a Control stream
  that received no decision (SWITCH, ADVANCE, ROLLBACK, COMPLETE);
* the server answers health SERVING afterwards.

SERVEWISE_FUZZ_EXAMPLES sets the size (the test command: 250 examples; bench/fuzz.py runs
10,000). With SERVEWISE_FUZZ_REPORT=PATH the run writes its counts (requests and stream
messages sent, statuses and stream events seen, per RPC) as JSON to PATH.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
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
from limits_support import free_port
from servewise.store.sqlite import SqliteStore
from servewise.v1 import servewise_pb2, types_pb2

EXAMPLES = int(os.environ.get("SERVEWISE_FUZZ_EXAMPLES", "250"))
REPORT = os.environ.get("SERVEWISE_FUZZ_REPORT")
SERVICE = "/servewise.v1.ServewiseService"
DEP = "fuzz-dep"
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
STRINGS = ["", " ", "x" * 2000, "ünïcødé-☃", "../../etc/passwd", "a/b", "\x00", DEP, "fuzz-new"]
# Statuses a client can act on; INTERNAL and UNKNOWN (a bug) never pass.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Inflated repeated fields stay under gRPC's default 4 MB receive limit (bigger ones are the
# transport's business: RESOURCE_EXHAUSTED before any servicer code runs).
MAX_INFLATED_BYTES = 3_000_000
DECISIONS = {"switch_event", "advance_event", "rollback_event", "complete_event"}


def fuzz_deployment(deployment_id: str = DEP) -> servewise_pb2.Deployment:
    """T4 real-time on 20 replicas for 1000/s, in the middle of a shift to batching."""
    realtime = types_pb2.ServingPlan(
        instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
    )
    batching = types_pb2.ServingPlan(
        instance_type="g4dn.xlarge", max_batch_size=16, max_queue_delay_ms=5.0, replicas=4
    )
    return servewise_pb2.Deployment(
        deployment_id=deployment_id,
        candidates=[t4_linear_candidate()],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=100.0),
        current_plan=realtime,
        planned_rate_per_s=1000.0,
        traffic_classes=[
            servewise_pb2.TrafficClass(name="online", share=0.8, slo=types_pb2.Slo(latency_ms=100)),
            servewise_pb2.TrafficClass(name="bulk", share=0.2, deadline_s=30.0),
        ],
        settings=servewise_pb2.DeploymentSettings(transition_weights=[0.1, 0.5, 1.0]),
        transition=servewise_pb2.Transition(
            from_mode=types_pb2.SERVING_MODE_REALTIME,
            from_plan=realtime,
            to_mode=types_pb2.SERVING_MODE_DYNAMIC_BATCHING,
            to_plan=batching,
            steps=[servewise_pb2.TransitionStep(weight=w, dwell_s=60.0) for w in (0.1, 0.5, 1.0)],
            step_index=1,
        ),
    )


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


def _samples(count: int, start_s: float = 1000.0) -> list[servewise_pb2.MetricSample]:
    return [
        servewise_pb2.MetricSample(
            deployment_id=DEP,
            timestamp_s=start_s + 10.0 * i,
            rate_per_s=900.0 + 5.0 * i,
            p50_ms=8.0,
            p99_ms=40.0,
            queue_depth=3,
            utilisation=0.4,
            error_rate=0.001,
        )
        for i in range(count)
    ]


def _evaluate_switch() -> servewise_pb2.EvaluateSwitchRequest:
    return servewise_pb2.EvaluateSwitchRequest(deployment_id=DEP, samples=_samples(12))


def _route() -> servewise_pb2.RouteRequest:
    return servewise_pb2.RouteRequest(
        deployment_id=DEP, request_key="req-1", traffic_class="bulk", deadline_ms=5000.0
    )


def _register() -> servewise_pb2.RegisterDeploymentRequest:
    # A new deployment each time it is accepted unchanged would fill the store: the id is one
    # of a few, so most mutated registrations are creates or stale updates of the same few.
    return servewise_pb2.RegisterDeploymentRequest(deployment=fuzz_deployment("fuzz-new"))


def _control_request() -> servewise_pb2.ControlRequest:
    return servewise_pb2.ControlRequest(sample=_samples(1, time.time())[0], want_hold_events=True)


# name -> (a valid request, response type, whether an accepted request may write)
UNARY: dict[str, tuple[Callable[[], Message], type[Message], bool]] = {
    "OptimizeBatch": (optimize_request, servewise_pb2.OptimizeBatchResponse, False),
    "Simulate": (simulate_request, servewise_pb2.SimulateResponse, False),
    "SelectMode": (_select_mode, servewise_pb2.SelectModeResponse, False),
    "PlanResources": (_plan_resources, servewise_pb2.PlanResourcesResponse, False),
    "EvaluateSwitch": (_evaluate_switch, servewise_pb2.EvaluateSwitchResponse, True),
    "Route": (_route, servewise_pb2.RouteResponse, False),
    "RegisterDeployment": (_register, servewise_pb2.RegisterDeploymentResponse, True),
    "GetDeployment": (
        lambda: servewise_pb2.GetDeploymentRequest(deployment_id=DEP),
        servewise_pb2.GetDeploymentResponse,
        False,
    ),
    "ListDeployments": (
        lambda: servewise_pb2.ListDeploymentsRequest(page_size=10),
        servewise_pb2.ListDeploymentsResponse,
        False,
    ),
}
NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE: DOUBLES,
    FieldDescriptor.TYPE_UINT32: [u for u in UNSIGNED if u < 2**32],
    FieldDescriptor.TYPE_UINT64: UNSIGNED,
    FieldDescriptor.TYPE_INT32: SIGNED,
}


def _fields(
    message: Message,
    scalars: list[tuple[Message, FieldDescriptor]],
    repeated: list[tuple[Message, FieldDescriptor]],
) -> None:
    """Every settable scalar (number, string, enum) and every non-empty repeated field."""
    for fd in message.DESCRIPTOR.fields:
        if fd.is_repeated and len(getattr(message, fd.name)) > 0:
            repeated.append((message, fd))
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            children = (
                getattr(message, fd.name)
                if fd.is_repeated
                else ([getattr(message, fd.name)] if message.HasField(fd.name) else [])
            )
            for child in children:
                _fields(child, scalars, repeated)
        elif not fd.is_repeated and (
            fd.type in NUMERIC
            or fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM)
        ):
            scalars.append((message, fd))


def _value(data: Any, fd: FieldDescriptor) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return data.draw(st.sampled_from(STRINGS) | st.text(max_size=40))
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return data.draw(st.sampled_from([0, 1, 2, 3, 7, 2**31 - 1, -1]))
    return data.draw(st.sampled_from(NUMERIC[fd.type]))


def _inflate(data: Any, owner: Message, fd: FieldDescriptor) -> None:
    """Repeat the field's first element up to thousands of times (bounded in bytes)."""
    field = getattr(owner, fd.name)
    first = field[0]
    size = max(1, first.ByteSize() if fd.type == FieldDescriptor.TYPE_MESSAGE else 9)
    count = min(
        data.draw(st.sampled_from([100, 1001, 10_001, 100_000])), MAX_INFLATED_BYTES // size
    )
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        for _ in range(count - len(field)):
            field.add().CopyFrom(first)
    else:
        field.extend([first] * (count - len(field)))


def mutate(data: Any, request: Message) -> bytes:
    """The request's bytes after a drawn mutation (or instead of it: empty or random bytes)."""
    shape = data.draw(st.integers(0, 19))
    if shape == 0:
        return bytes(data.draw(st.binary(max_size=256)))
    if shape == 1:
        return b""  # the empty message: every field at its default
    if shape == 3:
        return request.SerializeToString()  # valid as built: the OK path runs too
    scalars: list[tuple[Message, FieldDescriptor]] = []
    repeated: list[tuple[Message, FieldDescriptor]] = []
    _fields(request, scalars, repeated)
    if shape == 2 and repeated:
        _inflate(data, *data.draw(st.sampled_from(repeated)))
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            owner, fd = data.draw(st.sampled_from(scalars))
            setattr(owner, fd.name, _value(data, fd))
    return request.SerializeToString()


# --- the server, its store and the counts ---------------------------------------------------


class Fuzzed:
    def __init__(self, channel: grpc.Channel, db: Path) -> None:
        self.channel = channel
        self.store = SqliteStore(str(db))
        self.statuses: Counter[str] = Counter()
        self.by_rpc: dict[str, Counter[str]] = {}
        self.events: Counter[str] = Counter()
        self.requests = 0
        self.stream_messages = 0
        self.state_checks = 0
        self.started = time.monotonic()
        self.holder: Holder | None = None
        self.metrics_url = ""
        self.offload_calls: dict[str, float] = {}

    def read_offload_counts(self) -> None:
        """OptimizeBatch calls the server ran in worker processes and in threads (its metrics)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:  # noqa: S310
                text = reply.read().decode()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("servewise_offload_calls_total{"):
                where = line.split('where="', 1)[1].split('"', 1)[0]
                self.offload_calls[where] = float(line.rsplit(" ", 1)[1])

    def snapshot(self) -> str:
        """A digest of every key's version and value and every decision log's entries."""
        digest = hashlib.sha256()
        for key in self.store.keys(""):
            found = self.store.get(key)
            if found is not None:
                digest.update(f"{key}:{found.version}:".encode() + found.value)
            for decision in self.store.decisions(key):
                digest.update(f"{key}#{decision.seq}:".encode() + decision.record)
        return digest.hexdigest()

    def count(self, rpc: str, code: grpc.StatusCode) -> None:
        self.statuses[code.name] += 1
        self.by_rpc.setdefault(rpc, Counter())[code.name] += 1

    def report(self) -> dict[str, Any]:
        return {
            "examples": EXAMPLES,
            "requests_sent": self.requests,
            "control_stream_messages_sent": self.stream_messages,
            "statuses": dict(self.statuses),
            "statuses_by_rpc": {k: dict(v) for k, v in sorted(self.by_rpc.items())},
            "control_events": dict(self.events),
            "state_checks": self.state_checks,
            "internal_or_unknown": self.statuses["INTERNAL"] + self.statuses["UNKNOWN"],
            "optimize_calls_held_in_flight": 0 if self.holder is None else self.holder.calls,
            "holder_failures": [] if self.holder is None else self.holder.failures,
            "optimize_calls_by_where": self.offload_calls,
            "seconds": round(time.monotonic() - self.started, 1),
        }


class Holder(threading.Thread):
    """Keeps a valid OptimizeBatch in flight on a channel of its own, so that the fuzzed
    OptimizeBatch calls are made while another one is: the server computes those in its worker
    processes (servewise.api.offload), whose errors must come back as the same statuses."""

    def __init__(self, target: str) -> None:
        super().__init__(name="fuzz-optimize-holder", daemon=True)
        self.channel = grpc.insecure_channel(target)
        self.done = threading.Event()
        self.calls = 0
        self.failures: list[str] = []

    def run(self) -> None:
        call = self.channel.unary_unary(
            f"{SERVICE}/OptimizeBatch",
            request_serializer=servewise_pb2.OptimizeBatchRequest.SerializeToString,
            response_deserializer=servewise_pb2.OptimizeBatchResponse.FromString,
        )
        request = optimize_request()
        while not self.done.is_set():
            try:
                call(request, timeout=60)
                self.calls += 1
            except grpc.RpcError as error:
                self.failures.append(error.code().name)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)
        self.channel.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A real `servewise serve` in a subprocess on a SQLite file (module-wide: hypothesis runs
    many examples), with one deployment registered."""
    port, metrics_port = free_port(), free_port()
    db = tmp_path_factory.mktemp("fuzz") / "state.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servewise",
            "serve",
            "--address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            f"127.0.0.1:{metrics_port}",
            "--log-level",
            "warning",
            "--store",
            f"sqlite://{db}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = grpc.insecure_channel(f"127.0.0.1:{port}")
    state = Fuzzed(conn, db)
    state.holder = Holder(f"127.0.0.1:{port}")
    state.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        grpc.channel_ready_future(conn).result(timeout=30)
        conn.unary_unary(
            f"{SERVICE}/RegisterDeployment",
            request_serializer=servewise_pb2.RegisterDeploymentRequest.SerializeToString,
            response_deserializer=servewise_pb2.RegisterDeploymentResponse.FromString,
        )(servewise_pb2.RegisterDeploymentRequest(deployment=fuzz_deployment()), timeout=30)
        state.holder.start()
        yield state
    finally:
        state.holder.stop()
        state.read_offload_counts()
        if REPORT:
            Path(REPORT).write_text(json.dumps(state.report(), indent=2) + "\n")
        state.store.close()
        conn.close()
        process.terminate()
        process.wait(timeout=30)


def _unary(fuzzed: Fuzzed, data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(UNARY)))
    make, response_type, writes = UNARY[name]
    payload = mutate(data, make())
    call = fuzzed.channel.unary_unary(
        f"{SERVICE}/{name}",
        request_serializer=lambda raw: raw,
        response_deserializer=response_type.FromString,
    )
    before = fuzzed.snapshot()
    code, details = grpc.StatusCode.OK, ""
    try:
        call(payload, timeout=60)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details()  # type: ignore[attr-defined]
    fuzzed.requests += 1
    fuzzed.count(name, code)
    assert code in ALLOWED, (name, code, details)
    if code is not grpc.StatusCode.OK or not writes:
        fuzzed.state_checks += 1
        assert fuzzed.snapshot() == before, f"{name} answered {code.name} but changed the store"


def _control(fuzzed: Fuzzed, data: Any) -> None:
    messages = [mutate(data, _control_request()) for _ in range(data.draw(st.integers(1, 3)))]
    call = fuzzed.channel.stream_stream(
        f"{SERVICE}/Control",
        request_serializer=lambda raw: raw,
        response_deserializer=servewise_pb2.ControlResponse.FromString,
    )
    before = fuzzed.snapshot()
    kinds: list[str] = []
    code, details = grpc.StatusCode.OK, ""
    try:
        kinds.extend(str(e.WhichOneof("event")) for e in call(iter(messages), timeout=60))
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details()  # type: ignore[attr-defined]
    fuzzed.requests += 1
    fuzzed.stream_messages += len(messages)
    fuzzed.count("Control", code)
    fuzzed.events.update(kinds)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    if not DECISIONS.intersection(kinds):
        fuzzed.state_checks += 1
        assert fuzzed.snapshot() == before, f"Control ({kinds}) changed the store"


@given(data=st.data())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_gets_internal_or_unknown(fuzzed: Fuzzed, data: Any) -> None:
    """Property: mutated, empty, inflated or random-byte requests to every RPC (one in ten on a
    Control stream) get an actionable status, and a rejected one persists nothing."""
    if data.draw(st.integers(0, 9)) == 0:
        _control(fuzzed, data)
    else:
        _unary(fuzzed, data)


def test_server_healthy_after_fuzzing(fuzzed: Fuzzed) -> None:
    """After the fuzz run the server still answers its health check SERVING, and every RPC was
    sent at least once."""
    started = time.monotonic()
    reply = health_pb2_grpc.HealthStub(fuzzed.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert time.monotonic() - started < 10
    if EXAMPLES >= 200:
        assert set(fuzzed.by_rpc) == {*UNARY, "Control"}, sorted(fuzzed.by_rpc)
    # The call kept in flight beside the fuzzed ones was answered every time, and OptimizeBatch
    # calls ran in the worker processes.
    assert fuzzed.holder is not None
    assert fuzzed.holder.calls > 0
    assert fuzzed.holder.failures == []
    fuzzed.read_offload_counts()
    assert fuzzed.offload_calls.get("worker", 0) > 0, fuzzed.offload_calls
