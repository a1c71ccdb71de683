"""SqliteReader: the Control streams' event-loop reads on a connection of their own."""

from __future__ import annotations

import threading
from pathlib import Path

from servewise.store.sqlite import SqliteStore


def test_a_reader_sees_each_commit_and_never_waits_for_the_stores_lock(tmp_path: Path) -> None:
    """A reader returns what was committed, and the next commit once it is made, and answers
    while another thread holds the store's lock (as a write does through its fsync)."""
    store = SqliteStore(tmp_path / "s.db")
    reader = store.reader()
    try:
        assert reader.get("k") is None
        store.compare_and_set("k", 0, b"one")
        found = reader.get("k")
        assert found is not None
        assert (found.value, found.version) == (b"one", 1)
        store.compare_and_set("k", 1, b"two")
        assert reader.get("k") == store.get("k")
        held, done = threading.Event(), threading.Event()

        def hold_lock() -> None:
            with store._lock:
                held.set()
                done.wait(10)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        try:
            assert held.wait(10)
            found = reader.get("k")  # a store.get here would block until done is set
            assert found is not None
            assert found.value == b"two"
        finally:
            done.set()
            holder.join()
    finally:
        reader.close()
        store.close()
