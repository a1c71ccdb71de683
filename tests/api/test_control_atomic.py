"""The Control stream persists each decision and its log entry as ONE store operation.

Driven through :class:`ControlSession` directly (no gRPC) over a MemoryStore that records which
store methods the stream calls, so a return to a state write followed by a separate append
(which a kill -9 between them turned into a decision applied but never logged) fails here
without needing a crash to land in the window. bench/kill9.py and tests/test_kill9.py check
the same end to end with real kills.
"""

from __future__ import annotations

from collections.abc import Iterator

from api_builders import realtime_deployment

from servewise.api import deployments
from servewise.api.control_stream import ControlHub
from servewise.store.memory import MemoryStore
from servewise.v1 import servewise_pb2

DEP = "resnet-t4"
KEY = deployments.deployment_key(DEP)
DECISIONS = ("switch_event", "advance_event", "complete_event", "rollback_event")


class RecordingStore(MemoryStore):
    """A MemoryStore that records its write calls; ``interject`` appends a foreign record
    (what a concurrent EvaluateSwitch does) just before the next combined write."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.interject = 0

    def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        self.calls.append("compare_and_set")
        return super().compare_and_set(key, expected_version, value)

    def append_decision(self, key: str, record: bytes) -> int:
        self.calls.append("append_decision")
        return super().append_decision(key, record)

    def compare_and_set_with_decision(
        self,
        key: str,
        expected_version: int,
        value: bytes,
        record: bytes,
        *,
        expected_seq: int | None = None,
    ) -> tuple[int, int]:
        if self.interject:
            self.interject -= 1
            super().append_decision(key, b"an EvaluateSwitch record")
        self.calls.append("compare_and_set_with_decision")
        return super().compare_and_set_with_decision(
            key, expected_version, value, record, expected_seq=expected_seq
        )


def _registered() -> RecordingStore:
    store = RecordingStore()
    deployments.register(
        store, servewise_pb2.RegisterDeploymentRequest(deployment=realtime_deployment(DEP))
    )
    store.calls.clear()
    return store


def _decisions(
    store: RecordingStore, until: str, limit: int = 400
) -> Iterator[servewise_pb2.ControlResponse]:
    """Decision events of one stream sending 100/s samples 10 s apart, up to ``until``."""
    session = ControlHub(store).session()
    for i in range(limit):
        request = servewise_pb2.ControlRequest(
            sample=servewise_pb2.MetricSample(
                deployment_id=DEP, timestamp_s=1000.0 + 10.0 * i, rate_per_s=100.0, p99_ms=40.0
            )
        )
        for event in session.handle(request):
            assert event.WhichOneof("event") in DECISIONS, event
            yield event
            if event.WhichOneof("event") == until:
                return
    raise AssertionError(f"no {until} within {limit} samples")


def test_each_decision_is_one_combined_write_carrying_its_seq_and_version() -> None:
    """SWITCH, three ADVANCEs and COMPLETE: each one compare_and_set_with_decision and no
    separate state write or append; each bumps the version by one; each logged record names
    its own seq and the version it wrote; the stored transition names its SWITCH's seq."""
    store = _registered()
    start = store.get(KEY)
    assert start is not None
    events = []
    for event in _decisions(store, "complete_event"):
        events.append(event)
        found = store.get(KEY)
        assert found is not None
        assert found.version == start.version + len(events) == event.state_version
        assert store.last_decision_seq(KEY) == len(events) == event.decision_seq
        stored = servewise_pb2.Deployment.FromString(found.value)
        if event.WhichOneof("event") != "complete_event":
            assert stored.transition.decision_seq == 1  # in the very write that started it
    assert [e.WhichOneof("event") for e in events] == [
        "switch_event",
        "advance_event",
        "advance_event",
        "advance_event",
        "complete_event",
    ]
    assert events[0].switch_event.transition.decision_seq == 1
    assert store.calls == ["compare_and_set_with_decision"] * len(events)
    for decision, event in zip(store.decisions(KEY), events, strict=True):
        record = servewise_pb2.DecisionRecord.FromString(decision.record)
        assert record.control_event == event
        assert record.control_event.decision_seq == decision.seq


def test_a_log_moved_under_the_switch_redecides_at_the_next_seq() -> None:
    """An EvaluateSwitch record appended between the stream's seq read and its write: the
    write is refused whole (StaleSequenceError), the sample re-decided, and the SWITCH lands
    once, at seq 2, with its stored transition naming seq 2."""
    store = _registered()
    store.interject = 1
    switch = next(_decisions(store, "switch_event"))
    assert switch.WhichOneof("event") == "switch_event"
    assert switch.decision_seq == 2 == switch.switch_event.transition.decision_seq
    log = store.decisions(KEY)
    assert [d.seq for d in log] == [1, 2]
    assert log[0].record == b"an EvaluateSwitch record"
    # Two attempts, the first refused before writing anything: one version step.
    assert store.calls == ["compare_and_set_with_decision"] * 2
    found = store.get(KEY)
    assert found is not None
    assert found.version == 2 == switch.state_version
    stored = servewise_pb2.Deployment.FromString(found.value)
    assert stored.transition.decision_seq == 2
