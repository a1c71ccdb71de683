"""Durable deployment state behind one small interface (ARCHITECTURE.md section 3).

Backends: ``sqlite`` (embedded default, WAL mode) and ``redis`` (several service replicas
sharing state). Both implement :class:`StateStore` and are tested by one shared suite, so the
servicers never know which one they talk to. Values are opaque bytes (serialised protobuf);
every key carries a version that only ever grows, and each key has an append-only decision log
with gap-free sequence numbers.

A decision that changes state (the Control stream's SWITCH, ADVANCE, COMPLETE, ROLLBACK) is
written with :meth:`StateStore.compare_and_set_with_decision`: the new value and its log entry
in one atomic operation, so a process killed at any moment leaves both or neither. Written as a
compare-and-set followed by an append, a ``kill -9`` between the two left a decision applied to
the state but missing from the log for good (bench/kill9.py's "unlogged").
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol


class StaleVersionError(Exception):
    """A compare-and-set named a version that is no longer current (FAILED_PRECONDITION)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        self.key, self.expected, self.actual = key, expected, actual
        super().__init__(f"{key}: expected version {expected}, current is {actual}")


class StaleSequenceError(StaleVersionError):
    """compare_and_set_with_decision named the sequence number its record must get, and the log
    has moved on since it was read (another decision was appended): nothing was written.

    A StaleVersionError, so callers that re-read and re-decide on a stale version do the same
    here (FAILED_PRECONDITION if it ever reached a client); ``expected``/``actual`` are then the
    key's current version, and the sequence numbers are in ``expected_seq``/``actual_seq``."""

    def __init__(self, key: str, version: int, expected_seq: int, actual_seq: int) -> None:
        self.expected_seq, self.actual_seq = expected_seq, actual_seq
        super().__init__(key, version, version)
        self.args = (
            f"{key}: expected decision seq {expected_seq}, the log's next is {actual_seq}",
        )


@dataclass(frozen=True)
class Versioned:
    """A stored value and its version (1 for the first write)."""

    value: bytes
    version: int


@dataclass(frozen=True)
class Decision:
    """One entry of a key's decision log; ``seq`` runs 1, 2, 3, ... without gaps."""

    seq: int
    record: bytes


class StateStore(Protocol):
    """What the service needs from durable state; every method is atomic."""

    def get(self, key: str) -> Versioned | None:
        """The current value and version, or None when the key was never written."""
        ...

    def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        """Write ``value`` if the key's version is ``expected_version`` (0: the key must not
        exist); returns the new version. Raises StaleVersionError otherwise."""
        ...

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        ...

    def append_decision(self, key: str, record: bytes) -> int:
        """Append to the key's decision log; returns the new entry's sequence number."""
        ...

    def compare_and_set_with_decision(
        self,
        key: str,
        expected_version: int,
        value: bytes,
        record: bytes,
        *,
        expected_seq: int | None = None,
    ) -> tuple[int, int]:
        """compare_and_set and append_decision as ONE atomic operation: both happen or neither.

        Writes ``value`` and appends ``record`` to the key's log if the key's version is
        ``expected_version`` and, when ``expected_seq`` is given, the record would get exactly
        that sequence number (so a value may name the seq of its own log entry, as a stored
        transition names the SWITCH that started it). Returns (new version, new seq).
        Raises StaleVersionError for a stale version, StaleSequenceError (a StaleVersionError)
        for a log that moved on; in both cases nothing is written."""
        ...

    def last_decision_seq(self, key: str) -> int:
        """The sequence number of the key's newest log entry (0 for an empty log)."""
        ...

    def decisions(self, key: str, after_seq: int = 0) -> list[Decision]:
        """The key's log entries with seq > ``after_seq``, in order."""
        ...

    def change_token(self) -> Hashable:
        """A value that moves whenever any client writes any key's value (it may also move on
        other writes): equal tokens mean no value changed in between. One cheap read, so a
        poller (Route's table) can skip re-reading every key when nothing was written."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
