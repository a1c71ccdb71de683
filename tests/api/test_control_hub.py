"""The Control streams' servicer path (ControlHub.handle: a sample decided on the event loop
first, writes and optimizer misses in workers) decides exactly as the blocking path, and an
optimizer miss holds up no other deployment.

Driven through ControlHub directly (no gRPC): tests/api/test_control_stream.py runs the same
code end to end through a real server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_builders import realtime_deployment

from servewise.api import deployments
from servewise.api.control_stream import ControlHub, NeedsThreadError
from servewise.core import control
from servewise.limits import DEFAULT_LIMITS
from servewise.store import StateStore
from servewise.store.memory import MemoryStore
from servewise.store.sqlite import SqliteStore
from servewise.v1 import servewise_pb2


def register(store: StateStore, *ids: str) -> None:
    """Real-time deployments on 20 replicas of g4dn.xlarge planned for 1,000/s."""
    for deployment_id in ids:
        deployments.register(
            store,
            servewise_pb2.RegisterDeploymentRequest(deployment=realtime_deployment(deployment_id)),
        )


def sample(
    deployment_id: str, timestamp_s: float, rate_per_s: float, p99_ms: float = 40.0
) -> servewise_pb2.ControlRequest:
    return servewise_pb2.ControlRequest(
        sample=servewise_pb2.MetricSample(
            deployment_id=deployment_id,
            timestamp_s=timestamp_s,
            rate_per_s=rate_per_s,
            p99_ms=p99_ms,
        ),
        want_hold_events=True,
    )


def savings_run(deployment_id: str) -> list[servewise_pb2.ControlRequest]:
    """100/s samples 10 s apart: HOLDs through the savings window, then SWITCH, ADVANCEs and
    COMPLETE (tests/api/test_control_atomic.py's run), with p99s that vary sample to sample."""
    return [
        sample(deployment_id, 1000.0 + 10.0 * i, 100.0 + (i % 3), 30.0 + (i * 7) % 11)
        for i in range(75)
    ]


async def test_the_servicer_path_decides_exactly_as_the_blocking_path(tmp_path: Path) -> None:
    """The same samples through ControlSession.handle (one thread, misses computed inline) on
    one store and through ControlHub.handle on a SQLite store (on the loop, writes and misses
    in workers): every event is identical, SWITCH, ADVANCEs and COMPLETE included, and the
    stores end at the same version and log."""
    blocking_store = MemoryStore()
    register(blocking_store, "d")
    blocking = ControlHub(blocking_store, advice_processes=0).session()
    store = SqliteStore(tmp_path / "servewise.db")
    register(store, "d")
    hub = ControlHub(store, advice_processes=0)
    assert hub.decide_on_loop
    session = hub.session()
    kinds = []
    try:
        for request in savings_run("d"):
            expected = blocking.handle(request)
            got = await hub.handle(session, request, DEFAULT_LIMITS)
            assert got == expected
            kinds.append(got[0].WhichOneof("event"))
    finally:
        hub.close()
    assert {"switch_event", "advance_event", "complete_event"} <= set(kinds)
    assert hub.cache.misses > 0  # the PendingAdvice path ran
    key = deployments.deployment_key("d")

    def logged(source: StateStore) -> list[servewise_pb2.ControlResponse]:
        return [
            servewise_pb2.DecisionRecord.FromString(d.record).control_event
            for d in source.decisions(key)
        ]

    assert logged(store) == logged(blocking_store) != []
    found, want = store.get(key), blocking_store.get(key)
    assert found is not None
    assert want is not None
    assert found.version == want.version
    store.close()


async def test_a_miss_computed_in_a_worker_process_gives_the_inline_answer() -> None:
    """A first sample above the band asks the optimizer: through a spawned worker process
    the event equals the one the blocking path computes inline."""
    blocking_store, store = MemoryStore(), MemoryStore()
    register(blocking_store, "d")
    register(store, "d")
    hub = ControlHub(store, advice_processes=1)
    request = sample("d", 1000.0, 1500.0)
    try:
        got = await hub.handle(hub.session(), request, DEFAULT_LIMITS)
    finally:
        hub.close()
    assert hub.cache.misses == 1
    assert got == ControlHub(blocking_store, advice_processes=0).session().handle(request)


def blocking_advice(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event, list[Any]]:
    """control.compute_advice made to wait for ``release`` (``started`` set on entry);
    returns (started, release, calls)."""
    started, release = threading.Event(), threading.Event()
    calls: list[Any] = []
    real: Callable[..., control.Advice] = control.compute_advice

    def slow(*args: Any) -> control.Advice:
        calls.append(args)
        started.set()
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(control, "compute_advice", slow)
    return started, release, calls


async def test_an_optimizer_miss_holds_up_no_other_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While deployment a's sample waits for an optimizer run, b's samples are answered, and
    a second deployment with a's content asking the same question joins the run under way
    instead of starting another; both are answered once it finishes."""
    started, release, calls = blocking_advice(monkeypatch)
    store = MemoryStore()
    register(store, "a", "b", "twin")
    hub = ControlHub(store, advice_processes=0)
    try:
        waiting = asyncio.create_task(
            hub.handle(hub.session(), sample("a", 1000.0, 1500.0), DEFAULT_LIMITS)
        )
        assert await asyncio.to_thread(started.wait, 30)
        twin = asyncio.create_task(
            hub.handle(hub.session(), sample("twin", 1000.0, 1500.0), DEFAULT_LIMITS)
        )
        b = hub.session()
        for i in range(3):
            held = await asyncio.wait_for(
                hub.handle(b, sample("b", 1000.0 + i, 1000.0), DEFAULT_LIMITS), timeout=5
            )
            assert held[0].WhichOneof("event") == "hold_event"
        assert not waiting.done()
        assert not twin.done()
        release.set()
        answered = await asyncio.wait_for(asyncio.gather(waiting, twin), timeout=60)
    finally:
        release.set()
        hub.close()
    assert len(calls) == 1
    assert [events[0].WhichOneof("event") for events in answered] == ["hold_event"] * 2
    assert answered[0][0].hold_event.evaluation == answered[1][0].hold_event.evaluation


async def test_writes_on_the_loop_are_refused_before_anything_is_written() -> None:
    """While a decision runs on the event loop the hub's store reads but refuses every write
    (NeedsThreadError), so a decision that writes goes to a worker; elsewhere it writes."""
    store = MemoryStore()
    register(store, "d")
    hub = ControlHub(store, advice_processes=0)
    key = deployments.deployment_key("d")
    hub._on_loop.active = True
    try:
        assert hub.store.get(key) == store.get(key)
        with pytest.raises(NeedsThreadError):
            hub.store.compare_and_set(key, 1, b"x")
        with pytest.raises(NeedsThreadError):
            hub.store.last_decision_seq(key)
    finally:
        hub._on_loop.active = False
    assert hub.store is store
