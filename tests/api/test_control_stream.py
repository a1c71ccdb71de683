"""The Control stream end to end through a real server, on the memory and SQLite stores.

The deployment is ResNet-50 on T4, served real-time on 20 replicas for 1000/s with the default
settings (savings window 300 s, steps 10/25/50/100%). Samples are 10 s apart on the samples'
clock; with ``want_hold_events`` every sample gets exactly one event, so a test writes a sample
and reads its event in lockstep.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from api_builders import realtime_deployment

from servewise.api.deployments import deployment_key
from servewise.api.servicer import ServewiseServicer
from servewise.store import StateStore
from servewise.store.memory import MemoryStore
from servewise.store.sqlite import SqliteStore
from servewise.v1 import servewise_pb2, servewise_pb2_grpc

DEP = "resnet-t4"
STEP_S = 10.0
START_S = 1_000.0


@dataclass
class Harness:
    stub: servewise_pb2_grpc.ServewiseServiceAsyncStub
    store: StateStore


@asynccontextmanager
async def serving(store: StateStore) -> AsyncIterator[Harness]:
    server = grpc.aio.server()
    servewise_pb2_grpc.add_ServewiseServiceServicer_to_server(
        ServewiseServicer(store),  # type: ignore[abstract]  # the .pyi marks every RPC abstract
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Harness(servewise_pb2_grpc.ServewiseServiceStub(channel), store)  # type: ignore[arg-type]
    finally:
        await server.stop(None)


@pytest.fixture(params=["memory", "sqlite"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    store: StateStore = (
        MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "s.db"))
    )
    try:
        async with serving(store) as harness:
            yield harness
    finally:
        store.close()


def deployment(deployment_id: str = DEP) -> servewise_pb2.Deployment:
    return realtime_deployment(deployment_id)


async def register(stub: Any, deployment_id: str = DEP) -> None:
    await stub.RegisterDeployment(
        servewise_pb2.RegisterDeploymentRequest(deployment=deployment(deployment_id)), timeout=10
    )


def sample_request(
    t: float, rate: float = 100.0, deployment_id: str = DEP, holds: bool = True, **values: Any
) -> servewise_pb2.ControlRequest:
    return servewise_pb2.ControlRequest(
        sample=servewise_pb2.MetricSample(
            deployment_id=deployment_id,
            timestamp_s=t,
            rate_per_s=rate,
            **({"p99_ms": 40.0} | values),
        ),
        want_hold_events=holds,
    )


class Stream:
    """A Control call driven in lockstep: each sample with holds on gets exactly one event."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.Control(timeout=120)

    async def send(self, request: servewise_pb2.ControlRequest) -> servewise_pb2.ControlResponse:
        await self.call.write(request)
        event = await self.call.read()
        assert event is not grpc.aio.EOF
        return event  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.call.done_writing()
        assert await self.call.read() is grpc.aio.EOF
        assert await self.call.code() is grpc.StatusCode.OK


def kind(event: servewise_pb2.ControlResponse) -> str:
    return str(event.WhichOneof("event"))


async def drive(
    stream: Stream, times: Iterator[float], until: str, rate: float = 100.0, limit: int = 400
) -> tuple[servewise_pb2.ControlResponse, float]:
    """Send samples until an event of kind ``until``; every other event must be a hold."""
    for _ in range(limit):
        t = next(times)
        event = await stream.send(sample_request(t, rate))
        if kind(event) == until:
            return event, t
        assert kind(event) == "hold_event", event
    raise AssertionError(f"no {until} within {limit} samples")


def clock(start: float = START_S, step: float = STEP_S) -> Iterator[float]:
    t = start
    while True:
        yield t
        t += step


def stored(store: StateStore, deployment_id: str = DEP) -> servewise_pb2.Deployment:
    found = store.get(deployment_key(deployment_id))
    assert found is not None
    pb = servewise_pb2.Deployment.FromString(found.value)
    pb.state_version = found.version
    return pb


def log_kinds(store: StateStore, deployment_id: str = DEP) -> list[str]:
    out = []
    for d in store.decisions(deployment_key(deployment_id)):
        record = servewise_pb2.DecisionRecord.FromString(d.record)
        out.append(kind(record.control_event))
    return out


# --- The happy path ---------------------------------------------------------------------------


async def test_rate_drop_switches_advances_and_completes(h: Harness) -> None:
    """A sustained drop to 100/s: SWITCH after the 300 s savings window, then ADVANCE through
    steps 1..3 as each step dwells 1000/400/200 s at the SLO, then COMPLETE with the target as
    the plan in force; each decision persisted and logged in order."""
    await register(h.stub)
    stream = Stream(h.stub)
    times = clock()
    switch, t_switch = await drive(stream, times, "switch_event")
    transition = switch.switch_event.transition
    assert switch.switch_event.evaluation.decision == servewise_pb2.SWITCH_DECISION_SWITCH
    assert [s.weight for s in transition.steps] == [0.1, 0.25, 0.5, 1.0]
    assert transition.step_started_at_s == t_switch
    assert switch.decision_seq == 1 == transition.decision_seq
    persisted = stored(h.store)
    assert persisted.transition == transition
    assert switch.state_version == persisted.state_version
    assert t_switch - START_S >= 300.0

    previous = t_switch
    for index in (1, 2, 3):
        advance, t = await drive(stream, times, "advance_event")
        assert advance.advance_event.step_index == index
        dwell = transition.steps[index - 1].dwell_s
        assert dwell <= t - previous < dwell + STEP_S
        assert stored(h.store).transition.step_index == index
        assert stored(h.store).transition.step_started_at_s == t
        assert advance.decision_seq == index + 1
        previous = t
    complete, t_done = await drive(stream, times, "complete_event")
    assert complete.complete_event.plan == transition.to_plan
    after = stored(h.store)
    assert not after.HasField("transition")
    assert after.current_plan == transition.to_plan
    assert after.current_mode == transition.to_mode
    assert after.current_plan_since_s == t_done
    assert after.planned_rate_per_s == pytest.approx(100.0)
    assert complete.state_version == after.state_version
    assert log_kinds(h.store) == [
        "switch_event",
        "advance_event",
        "advance_event",
        "advance_event",
        "complete_event",
    ]
    # At the new plan and rate the controller holds.
    hold = await stream.send(sample_request(next(times)))
    assert kind(hold) == "hold_event"
    await stream.close()


async def test_holds_only_when_asked(h: Harness) -> None:
    """Without want_hold_events a sample that changes nothing gets no event."""
    await register(h.stub)
    call = h.stub.Control(
        iter([sample_request(START_S + i, 1000.0, holds=False) for i in range(5)]), timeout=30
    )
    assert [e async for e in call] == []


async def test_latency_breach_during_a_step_rolls_back(h: Harness) -> None:
    """Three consecutive samples above the SLO during step 0: ROLLBACK with the cause; the
    transition is cleared and the plan kept; logged after the SWITCH."""
    await register(h.stub)
    stream = Stream(h.stub)
    times = clock()
    switch, _ = await drive(stream, times, "switch_event")
    before = stored(h.store)
    events = [
        await stream.send(sample_request(next(times), p99_ms=250.0 if i < 3 else 40.0))
        for i in range(3)
    ]
    assert [kind(e) for e in events] == ["hold_event", "hold_event", "rollback_event"]
    rollback = events[-1].rollback_event
    assert "3 consecutive samples" in rollback.cause
    assert "250" in rollback.cause
    assert rollback.kept_plan == before.current_plan
    assert rollback.abandoned_plan == switch.switch_event.transition.to_plan
    assert rollback.consecutive_breaches == 3
    after = stored(h.store)
    assert not after.HasField("transition")
    assert after.current_plan == before.current_plan
    assert log_kinds(h.store) == ["switch_event", "rollback_event"]
    record = servewise_pb2.DecisionRecord.FromString(
        h.store.decisions(deployment_key(DEP))[-1].record
    )
    assert record.control_event.rollback_event.cause == rollback.cause
    await stream.close()


async def test_breaches_during_a_move_away_from_a_predicted_breach_complete_it(
    h: Harness,
) -> None:
    """At 3,000/s the 20 real-time replicas (capacity ~2,650/s) are predicted to break the SLO:
    the controller moves at once and marks the move away_from_breach. Three breaching samples
    during its step (the old plan still carries the traffic while the target starts) complete
    the move instead of rolling back to the plan predicted to break; the target is in force."""
    await register(h.stub)
    stream = Stream(h.stub)
    times = clock()
    switch = await stream.send(sample_request(next(times), 3000.0))
    assert kind(switch) == "switch_event", switch.hold_event.reason
    transition = switch.switch_event.transition
    assert transition.away_from_breach
    assert not transition.panic
    assert "predicted to break" in transition.reason
    events = [
        await stream.send(sample_request(next(times), 3000.0, p99_ms=250.0)) for _ in range(3)
    ]
    assert [kind(e) for e in events] == ["hold_event", "hold_event", "complete_event"]
    assert "move to safety" in events[-1].complete_event.reason
    after = stored(h.store)
    assert not after.HasField("transition")
    assert after.current_plan == transition.to_plan
    assert log_kinds(h.store) == ["switch_event", "complete_event"]
    await stream.close()


# --- Invalid samples --------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("rate nan", {"rate_per_s": math.nan}, "sample.rate_per_s"),
    ("rate negative", {"rate_per_s": -1.0}, "sample.rate_per_s"),
    ("p99 nan", {"p99_ms": math.nan}, "sample.p99_ms"),
    ("error rate above 1", {"error_rate": 2.0}, "sample.error_rate"),
    ("time backwards", {"timestamp_s": START_S - 1.0}, "sample.timestamp_s"),
    ("time inf", {"timestamp_s": math.inf}, "sample.timestamp_s"),
]


async def test_invalid_samples_are_rejected_and_the_stream_serves_on(h: Harness) -> None:
    """Each invalid sample, and one for an unknown deployment, gets a SampleRejected naming the
    field; nothing is persisted; the other deployment on the stream keeps being served."""
    await register(h.stub, DEP)
    await register(h.stub, "other")
    versions = {d: stored(h.store, d).state_version for d in (DEP, "other")}
    stream = Stream(h.stub)
    first = await stream.send(sample_request(START_S, 1000.0))
    assert kind(first) == "hold_event"
    for name, values, path in INVALID:
        request = sample_request(START_S + 1.0, 1000.0)
        for key, value in values.items():
            setattr(request.sample, key, value)
        rejected = await stream.send(request)
        assert kind(rejected) == "sample_rejected", name
        assert path in [v.field for v in rejected.sample_rejected.violations], name
        # The other deployment on the same stream is served.
        served = await stream.send(sample_request(START_S, 1000.0, deployment_id="other"))
        assert kind(served) == "hold_event", name
    unknown = await stream.send(sample_request(START_S, 1000.0, deployment_id="nope"))
    assert unknown.sample_rejected.unknown_deployment
    assert unknown.sample_rejected.violations[0].field == "sample.deployment_id"
    # The rejected timestamps did not move this deployment's clock: START_S + 1 is accepted.
    assert kind(await stream.send(sample_request(START_S + 1.0, 1000.0))) == "hold_event"
    await stream.close()
    assert {d: stored(h.store, d).state_version for d in (DEP, "other")} == versions
    assert h.store.decisions(deployment_key(DEP)) == []
    assert h.store.get(deployment_key("nope")) is None


# --- Concurrency and reconnects ---------------------------------------------------------------


async def test_two_streams_on_one_deployment_do_not_double_advance(h: Harness) -> None:
    """Two streams send the same samples of one deployment concurrently: every decision happens
    once (one SWITCH, three ADVANCEs, one COMPLETE in the log), each on one stream."""
    await register(h.stub)
    streams = [Stream(h.stub), Stream(h.stub)]
    seen: list[list[str]] = [[], []]
    for t in [START_S + i * STEP_S for i in range(260)]:
        events = await asyncio.gather(*(s.send(sample_request(t)) for s in streams))
        for i, e in enumerate(events):
            seen[i].append(kind(e))
    for s in streams:
        await s.close()
    decisive = [k for both in seen for k in both if k != "hold_event"]
    assert sorted(decisive) == sorted(log_kinds(h.store))
    assert log_kinds(h.store) == [
        "switch_event",
        "advance_event",
        "advance_event",
        "advance_event",
        "complete_event",
    ]
    assert not stored(h.store).HasField("transition")


async def test_reconnect_continues_the_transition(h: Harness) -> None:
    """A stream that ends mid-transition: a new stream continues from the stored step (no new
    SWITCH), advances it when the stored step's dwell has elapsed, and completes it."""
    await register(h.stub)
    first = Stream(h.stub)
    times = clock()
    switch, _ = await drive(first, times, "switch_event")
    await drive(first, times, "advance_event")
    await first.close()
    mid = stored(h.store)
    assert mid.transition.step_index == 1

    second = Stream(h.stub)
    advance, t = await drive(second, times, "advance_event")
    assert advance.advance_event.step_index == 2
    assert t - mid.transition.step_started_at_s >= mid.transition.steps[1].dwell_s
    await drive(second, times, "advance_event")
    await drive(second, times, "complete_event")
    await second.close()
    assert log_kinds(h.store).count("switch_event") == 1
    assert stored(h.store).current_plan == switch.switch_event.transition.to_plan


# --- kill -9 mid-transition -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server_process(db: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, SERVEWISE_STORE=f"sqlite://{db}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servewise",
            "serve",
            "--address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            "off",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def _wait_ready(channel: grpc.aio.Channel) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=1)
            return
        except TimeoutError:
            continue
    raise AssertionError("the server did not come up")


def _snapshot(db: Path) -> tuple[bytes, int, list[bytes]]:
    store = SqliteStore(str(db))
    try:
        found = store.get(deployment_key(DEP))
        assert found is not None
        return found.value, found.version, [d.record for d in store.decisions(deployment_key(DEP))]
    finally:
        store.close()


@pytest.mark.parametrize("trial", range(3))
async def test_kill_9_mid_transition_then_restart_continues(tmp_path: Path, trial: int) -> None:
    """A server process on SQLite is SIGKILLed mid-transition (after 1 + trial ADVANCEs): the
    stored transition and decision log are byte for byte as before the kill, and a stream to a
    restarted server continues the transition to COMPLETE without a new SWITCH."""
    db, port = tmp_path / "state.db", _free_port()
    times = clock()
    with _server_process(db, port) as proc:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _wait_ready(channel)
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            await register(stub)
            stream = Stream(stub)
            await drive(stream, times, "switch_event")
            for _ in range(1 + trial):
                await drive(stream, times, "advance_event")
            # A few more holds mid-step, then kill -9 with the stream open.
            for _ in range(3):
                assert kind(await stream.send(sample_request(next(times)))) == "hold_event"
            before = await asyncio.to_thread(_snapshot, db)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    after = await asyncio.to_thread(_snapshot, db)
    assert after == before
    step = servewise_pb2.Deployment.FromString(after[0]).transition.step_index
    assert step == 1 + trial

    with _server_process(db, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _wait_ready(channel)
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            stream = Stream(stub)
            for _ in range(3 - step):
                await drive(stream, times, "advance_event")
            await drive(stream, times, "complete_event")
            await stream.close()
    kinds = [
        kind(servewise_pb2.DecisionRecord.FromString(r).control_event)
        for r in (await asyncio.to_thread(_snapshot, db))[2]
    ]
    assert kinds == ["switch_event"] + ["advance_event"] * 3 + ["complete_event"]


async def test_route_sees_a_switch_at_once(h: Harness) -> None:
    """Route answers from the state version the SWITCH wrote, right after the event (the
    stream tells Route's table; no wait for its store poll)."""
    await register(h.stub)
    first = await h.stub.Route(servewise_pb2.RouteRequest(deployment_id=DEP, request_key="k"))
    stream = Stream(h.stub)
    switch, _ = await drive(stream, clock(), "switch_event")
    after = await h.stub.Route(servewise_pb2.RouteRequest(deployment_id=DEP, request_key="k"))
    assert after.state_version == switch.state_version > first.state_version
    await stream.close()
