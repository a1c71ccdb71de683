"""In-process StateStore: the reference semantics, for tests and for code written before a
durable backend is wired in."""

from __future__ import annotations

import threading

from servewise.store import Decision, StaleSequenceError, StaleVersionError, Versioned


class MemoryStore:
    """A dict behind a lock; loses everything when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Versioned] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._value_writes = 0

    def get(self, key: str) -> Versioned | None:
        with self._lock:
            return self._values.get(key)

    def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        with self._lock:
            actual = self._check_version(key, expected_version)
            self._values[key] = Versioned(bytes(value), actual + 1)
            self._value_writes += 1
            return actual + 1

    def _check_version(self, key: str, expected_version: int) -> int:
        current = self._values.get(key)
        actual = 0 if current is None else current.version
        if actual != expected_version:
            raise StaleVersionError(key, expected_version, actual)
        return actual

    def compare_and_set_with_decision(
        self,
        key: str,
        expected_version: int,
        value: bytes,
        record: bytes,
        *,
        expected_seq: int | None = None,
    ) -> tuple[int, int]:
        with self._lock:
            actual = self._check_version(key, expected_version)
            log = self._logs.get(key, [])
            if expected_seq is not None and expected_seq != len(log) + 1:
                raise StaleSequenceError(key, actual, expected_seq, len(log) + 1)
            self._values[key] = Versioned(bytes(value), actual + 1)
            self._value_writes += 1
            self._logs.setdefault(key, log).append(bytes(record))
            return actual + 1, len(log)

    def last_decision_seq(self, key: str) -> int:
        with self._lock:
            return len(self._logs.get(key, []))

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._values if k.startswith(prefix))

    def append_decision(self, key: str, record: bytes) -> int:
        with self._lock:
            log = self._logs.setdefault(key, [])
            log.append(bytes(record))
            return len(log)

    def decisions(self, key: str, after_seq: int = 0) -> list[Decision]:
        with self._lock:
            log = self._logs.get(key, [])
            return [Decision(i + 1, r) for i, r in enumerate(log) if i + 1 > after_seq]

    def change_token(self) -> int:
        with self._lock:
            return self._value_writes

    def close(self) -> None:
        pass
