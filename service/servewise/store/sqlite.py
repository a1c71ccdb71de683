"""SQLite StateStore: the embedded default, one file (plus its ``-wal`` and ``-shm``).

Crash safety:

- ``journal_mode=WAL``: readers never block the writer, and a commit is one append to the
  write-ahead log, so a process killed at any moment leaves either the whole transaction or
  none of it.
- ``synchronous=FULL``: every commit fsyncs the WAL before it returns. With WAL, ``NORMAL``
  would already survive ``kill -9`` (the appended frames are in the OS page cache), but a power
  loss or a node crash could roll back the last acknowledged commits; state writes are rare
  (a deployment change, a controller decision), so the fsync is worth an acknowledged write
  being durable, full stop.
- Writes run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken before the current
  version or the last sequence number is read, so concurrent writers (threads of this process,
  or other processes on the same file) serialise, and a compare-and-set or a sequence number
  can never be decided on a stale read. ``busy_timeout`` makes them wait for the lock instead of
  failing.

One connection per store, behind a lock: the service writes little, and a lock keeps the
connection's transaction state simple. Other processes open their own store on the same path.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servewise.store import Decision, StaleSequenceError, StaleVersionError, Versioned

# PRAGMA user_version of the schema below; a file written by another schema is refused.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    key    TEXT NOT NULL,
    seq    INTEGER NOT NULL CHECK (seq >= 1),
    record BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
"""

# How long a writer waits for another writer's lock before giving up (sqlite3 "timeout").
BUSY_TIMEOUT_S = 30.0


class SqliteStore:
    """A StateStore in the SQLite file at ``path`` (its parent directories are created)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = self._journal_mode_wal(busy_timeout_s)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"{self.path}: cannot use WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._write() as conn:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found not in (0, SCHEMA_VERSION):
                    raise sqlite3.DatabaseError(
                        f"{self.path}: schema version {found}, this build reads {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            raise

    def _journal_mode_wal(self, busy_timeout_s: float) -> str:
        """Switch to WAL, retrying while another connection holds the lock: when several
        processes open a new file at once, SQLite can answer this pragma "database is locked"
        at once, without waiting in its busy handler (seen in CI with four processes)."""
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                return str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its first read."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full, I/O error) may leave the transaction open.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def change_token(self) -> tuple[int, int]:
        """Changes whenever any connection commits to the file: SQLite's data_version (other
        connections' commits) with this connection's total_changes (its own). Lets a poller
        skip re-reading every key when nothing was written."""
        with self._lock:
            data_version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            return data_version, self._conn.total_changes

    def get(self, key: str) -> Versioned | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value, version FROM state WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Versioned(bytes(row[0]), int(row[1]))

    def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        with self._lock, self._write() as conn:
            actual = _version(conn, key)
            if actual != expected_version:
                raise StaleVersionError(key, expected_version, actual)
            _put(conn, key, value, actual + 1)
            return actual + 1

    def compare_and_set_with_decision(
        self,
        key: str,
        expected_version: int,
        value: bytes,
        record: bytes,
        *,
        expected_seq: int | None = None,
    ) -> tuple[int, int]:
        # One BEGIN IMMEDIATE transaction: its COMMIT is one append to the WAL, so after a
        # kill -9 either both rows are in the database or neither is.
        with self._lock, self._write() as conn:
            actual = _version(conn, key)
            if actual != expected_version:
                raise StaleVersionError(key, expected_version, actual)
            seq = _last_seq(conn, key) + 1
            if expected_seq is not None and seq != expected_seq:
                raise StaleSequenceError(key, actual, expected_seq, seq)
            _put(conn, key, value, actual + 1)
            _append(conn, key, seq, record)
            return actual + 1, seq

    def keys(self, prefix: str = "") -> list[str]:
        # Keys are compared as UTF-8 bytes, which sorts them by code point like Python's str:
        # every key with the prefix follows ``prefix`` in one contiguous run of the index.
        with self._lock:
            rows = self._conn.execute(
                "SELECT key FROM state WHERE key >= ? ORDER BY key", (prefix,)
            )
            found: list[str] = []
            for (key,) in rows:
                if not key.startswith(prefix):
                    break
                found.append(key)
        return found

    def append_decision(self, key: str, record: bytes) -> int:
        with self._lock, self._write() as conn:
            seq = _last_seq(conn, key) + 1
            _append(conn, key, seq, record)
            return seq

    def last_decision_seq(self, key: str) -> int:
        with self._lock:
            return _last_seq(self._conn, key)

    def decisions(self, key: str, after_seq: int = 0) -> list[Decision]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, record FROM decisions WHERE key = ? AND seq > ? ORDER BY seq",
                (key, after_seq),
            ).fetchall()
        return [Decision(int(seq), bytes(record)) for seq, record in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def reader(self) -> SqliteReader:
        """A reader on its own connection, for one thread (see :class:`SqliteReader`)."""
        return SqliteReader(self.path)


class SqliteReader:
    """``get`` on a connection of its own: with WAL a reader sees the last commit and never
    waits for a writer, whereas the store's ``get`` waits for its lock, which a write holds
    through its fsync. The Control streams read on the event loop with one, so a worker
    committing a decision does not stall every stream. One thread at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA query_only = ON")

    def get(self, key: str) -> Versioned | None:
        row = self._conn.execute(
            "SELECT value, version FROM state WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Versioned(bytes(row[0]), int(row[1]))

    def close(self) -> None:
        self._conn.close()


def _version(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT version FROM state WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _put(conn: sqlite3.Connection, key: str, value: bytes, version: int) -> None:
    conn.execute(
        "INSERT INTO state (key, value, version) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
        (key, bytes(value), version),
    )


def _append(conn: sqlite3.Connection, key: str, seq: int, record: bytes) -> None:
    conn.execute(
        "INSERT INTO decisions (key, seq, record) VALUES (?, ?, ?)", (key, seq, bytes(record))
    )


def _last_seq(conn: sqlite3.Connection, key: str) -> int:
    # MAX over the (key, seq) primary key: one index seek, however long the log.
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM decisions WHERE key = ?", (key,)
    ).fetchone()
    return int(row[0])
