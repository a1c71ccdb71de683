"""Durable deployment state behind one small interface (ARCHITECTURE.md section 3).

Backends: ``sqlite`` (embedded default, WAL mode) and ``redis`` (several service replicas
sharing state). Both implement :class:`StateStore` and are tested by one shared suite, so the
servicers never know which one they talk to. Values are opaque bytes (serialised protobuf);
every key carries a version that only ever grows, and each key has an append-only decision log
with gap-free sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StaleVersionError(Exception):
    """A compare-and-set named a version that is no longer current (FAILED_PRECONDITION)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        self.key, self.expected, self.actual = key, expected, actual
        super().__init__(f"{key}: expected version {expected}, current is {actual}")


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

    def decisions(self, key: str, after_seq: int = 0) -> list[Decision]:
        """The key's log entries with seq > ``after_seq``, in order."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
