"""The StateStore contract (servewise/store/__init__.py), the same for every backend."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servewise.store import Decision, StaleSequenceError, StaleVersionError, StateStore, Versioned

from .conftest import Backend

WORKER = Path(__file__).with_name("store_worker.py")


# --- compare-and-set ----------------------------------------------------------------------------


def test_get_of_a_key_never_written_is_none(store: StateStore) -> None:
    assert store.get("deployments/nope") is None


def test_create_with_version_0_then_update_with_the_current_version(store: StateStore) -> None:
    assert store.compare_and_set("deployments/a", 0, b"one") == 1
    assert store.get("deployments/a") == Versioned(b"one", 1)
    assert store.compare_and_set("deployments/a", 1, b"two") == 2
    assert store.compare_and_set("deployments/a", 2, b"three") == 3
    assert store.get("deployments/a") == Versioned(b"three", 3)


@pytest.mark.parametrize("stale", [0, 1, 3, 7, -1])
def test_a_stale_write_raises_and_changes_nothing(store: StateStore, stale: int) -> None:
    store.compare_and_set("k", 0, b"v1")
    store.compare_and_set("k", 1, b"v2")
    with pytest.raises(StaleVersionError) as raised:
        store.compare_and_set("k", stale, b"lost")
    assert (raised.value.key, raised.value.expected, raised.value.actual) == ("k", stale, 2)
    assert store.get("k") == Versioned(b"v2", 2)
    assert store.compare_and_set("k", 2, b"v3") == 3  # and the right version still works


def test_a_write_expecting_a_version_of_a_missing_key_creates_nothing(store: StateStore) -> None:
    with pytest.raises(StaleVersionError) as raised:
        store.compare_and_set("ghost", 1, b"boo")
    assert raised.value.actual == 0
    assert store.get("ghost") is None
    assert store.keys() == []


def test_values_are_opaque_bytes_of_any_size(store: StateStore) -> None:
    every_byte = bytes(range(256)) * 3
    big = bytes(i % 256 for i in range(1 << 20))
    store.compare_and_set("bytes", 0, every_byte)
    store.compare_and_set("empty", 0, b"")
    store.compare_and_set("big", 0, big)
    assert store.get("bytes") == Versioned(every_byte, 1)
    assert store.get("empty") == Versioned(b"", 1)
    assert store.get("big") == Versioned(big, 1)


def test_keys_by_prefix_sorted(store: StateStore) -> None:
    for key in ["dep/b", "dep/a", "dep/a/x", "depot", "other/1", "dép/ü", "dep/\u00e9", ""]:
        store.compare_and_set(key, 0, key.encode())
    store.append_decision("dep/only-a-log", b"r")  # a log alone does not make a key
    assert store.keys("dep/") == ["dep/a", "dep/a/x", "dep/b", "dep/\u00e9"]
    assert store.keys("dep") == ["dep/a", "dep/a/x", "dep/b", "dep/\u00e9", "depot"]
    assert store.keys("dé") == ["dép/ü"]
    assert store.keys("zzz") == []
    assert store.keys() == sorted(
        ["", "dep/b", "dep/a", "dep/a/x", "depot", "other/1", "dép/ü", "dep/\u00e9"]
    )
    assert store.keys("") == store.keys()


# --- decision log -------------------------------------------------------------------------------


def test_decision_log_numbers_entries_from_1_per_key(store: StateStore) -> None:
    assert [store.append_decision("a", f"a{i}".encode()) for i in range(1, 4)] == [1, 2, 3]
    assert store.append_decision("b", b"b1") == 1
    assert store.append_decision("a", b"a4") == 4
    assert store.decisions("a") == [Decision(i, f"a{i}".encode()) for i in range(1, 5)]
    assert store.decisions("b") == [Decision(1, b"b1")]
    assert store.decisions("a", after_seq=2) == [Decision(3, b"a3"), Decision(4, b"a4")]
    assert store.decisions("a", after_seq=4) == []
    assert store.decisions("a", after_seq=99) == []
    assert store.decisions("never") == []


def test_decision_records_are_opaque_bytes(store: StateStore) -> None:
    records = [b"", bytes(range(256)), b"\x00" * 1000]
    for record in records:
        store.append_decision("bin", record)
    assert [d.record for d in store.decisions("bin")] == records


# --- state write and decision append as one operation ------------------------------------------


def test_compare_and_set_with_decision_writes_both(store: StateStore) -> None:
    """Success writes the value and appends the record; seqs continue plain appends' count."""
    assert store.last_decision_seq("dep/a") == 0
    assert store.compare_and_set_with_decision("dep/a", 0, b"v1", b"r1") == (1, 1)
    assert store.get("dep/a") == Versioned(b"v1", 1)
    assert store.keys("dep/") == ["dep/a"]  # a creation through it indexes the key
    assert store.decisions("dep/a") == [Decision(1, b"r1")]
    assert store.append_decision("dep/a", b"r2") == 2
    assert store.last_decision_seq("dep/a") == 2
    assert store.compare_and_set_with_decision("dep/a", 1, b"v2", b"r3", expected_seq=3) == (2, 3)
    assert store.get("dep/a") == Versioned(b"v2", 2)
    assert store.decisions("dep/a") == [Decision(1, b"r1"), Decision(2, b"r2"), Decision(3, b"r3")]
    assert store.last_decision_seq("dep/a") == 3
    assert store.last_decision_seq("dep/b") == 0  # logs are per key


@pytest.mark.parametrize("stale", [0, 1, 3, -1])
def test_a_stale_version_writes_neither_state_nor_log(store: StateStore, stale: int) -> None:
    """A version conflict raises StaleVersionError and leaves the value, the log and the key
    index exactly as they were, with or without an expected seq."""
    store.compare_and_set("k", 0, b"v1")
    store.compare_and_set("k", 1, b"v2")
    store.append_decision("k", b"r1")
    for expected_seq in (None, 2):
        with pytest.raises(StaleVersionError) as raised:
            store.compare_and_set_with_decision(
                "k", stale, b"lost", b"lost", expected_seq=expected_seq
            )
        assert type(raised.value) is StaleVersionError
        assert (raised.value.key, raised.value.expected, raised.value.actual) == ("k", stale, 2)
        assert store.get("k") == Versioned(b"v2", 2)
        assert store.decisions("k") == [Decision(1, b"r1")]
    with pytest.raises(StaleVersionError):
        store.compare_and_set_with_decision("ghost", 1, b"boo", b"boo")
    assert store.get("ghost") is None
    assert store.decisions("ghost") == []
    assert store.keys() == ["k"]


@pytest.mark.parametrize("expected_seq", [0, 1, 2, 4, 99])
def test_a_stale_seq_writes_neither_state_nor_log(store: StateStore, expected_seq: int) -> None:
    """A record that would not land at expected_seq raises StaleSequenceError (a
    StaleVersionError, so callers re-read and retry) and writes nothing; the right seq works."""
    store.compare_and_set("k", 0, b"v1")
    store.append_decision("k", b"r1")
    store.append_decision("k", b"r2")
    with pytest.raises(StaleSequenceError) as raised:
        store.compare_and_set_with_decision("k", 1, b"lost", b"lost", expected_seq=expected_seq)
    assert isinstance(raised.value, StaleVersionError)
    assert (raised.value.expected_seq, raised.value.actual_seq) == (expected_seq, 3)
    assert (raised.value.key, raised.value.expected, raised.value.actual) == ("k", 1, 1)
    assert store.get("k") == Versioned(b"v1", 1)
    assert [d.record for d in store.decisions("k")] == [b"r1", b"r2"]
    assert store.compare_and_set_with_decision("k", 1, b"v2", b"r3", expected_seq=3) == (2, 3)


def test_combined_writes_carry_any_bytes(store: StateStore) -> None:
    """Values and records through the combined write are opaque bytes, as through the others."""
    value, record = bytes(range(256)) * 40, b"\x00" + bytes(range(255, -1, -1))
    assert store.compare_and_set_with_decision("bin", 0, value, record) == (1, 1)
    assert store.compare_and_set_with_decision("bin", 1, b"", b"") == (2, 2)
    assert store.decisions("bin") == [Decision(1, record), Decision(2, b"")]
    assert store.get("bin") == Versioned(b"", 2)


# Operations for the model-based test: (kind, key index, version offset from the current one,
# seq offset from the next one or None for "any"); offset 0 is the right number.
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["cas", "append", "cas_with_decision"]),
        st.integers(min_value=0, max_value=2),
        st.sampled_from([0, 0, 0, -1, 1]),
        st.sampled_from([None, 0, 0, -1, 1]),
    ),
    max_size=14,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_operations_match_a_model_of_versions_and_logs(
    store: StateStore, ops: list[tuple[str, int, int, int | None]]
) -> None:
    """Any sequence of compare-and-sets, appends and combined writes, right or stale, gives the
    results a dict-and-list model gives: versions 1, 2, ... per key, seqs 1..n per log with no
    gaps, a combined write either wholly applied or (on any conflict) not at all."""
    prefix = f"m{uuid.uuid4().hex[:10]}/"  # one store for every example: keys of its own
    keys = [f"{prefix}{i}" for i in range(3)]
    versions = dict.fromkeys(keys, 0)
    values: dict[str, bytes] = {}
    logs: dict[str, list[bytes]] = {key: [] for key in keys}
    for n, (kind, index, version_offset, seq_offset) in enumerate(ops):
        key = keys[index]
        expected = versions[key] + version_offset
        payload = f"{kind}:{n}".encode()
        if kind == "append":
            assert store.append_decision(key, payload) == len(logs[key]) + 1
            logs[key].append(payload)
        elif kind == "cas":
            if version_offset:
                with pytest.raises(StaleVersionError):
                    store.compare_and_set(key, expected, payload)
            else:
                assert store.compare_and_set(key, expected, payload) == versions[key] + 1
                versions[key] += 1
                values[key] = payload
        else:
            next_seq = len(logs[key]) + 1
            expected_seq = None if seq_offset is None else next_seq + seq_offset
            if version_offset or seq_offset:
                error = StaleVersionError if version_offset else StaleSequenceError
                with pytest.raises(error):
                    store.compare_and_set_with_decision(
                        key, expected, payload, payload, expected_seq=expected_seq
                    )
            else:
                got = store.compare_and_set_with_decision(
                    key, expected, payload, payload, expected_seq=expected_seq
                )
                assert got == (versions[key] + 1, next_seq)
                versions[key] += 1
                values[key] = payload
                logs[key].append(payload)
    for key in keys:
        found = store.get(key)
        assert (found is None) == (versions[key] == 0)
        if found is not None:
            assert found == Versioned(values[key], versions[key])
        assert store.decisions(key) == [Decision(i, r) for i, r in enumerate(logs[key], start=1)]
        assert store.last_decision_seq(key) == len(logs[key])
    assert store.keys(prefix) == [key for key in keys if versions[key]]


# --- concurrency --------------------------------------------------------------------------------


def _run_threads(count: int, target: object) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)  # type: ignore[operator]
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_concurrent_appends_from_threads_are_gap_free(backend: Backend) -> None:
    threads, per_thread = 8, 40
    stores = [backend.open() for _ in range(threads)]  # each thread its own connection
    got: dict[int, list[int]] = {}

    def append(index: int) -> None:
        got[index] = [
            stores[index].append_decision("log", f"{index}:{i}".encode()) for i in range(per_thread)
        ]

    _run_threads(threads, append)
    seqs = [seq for seqs in got.values() for seq in seqs]
    assert sorted(seqs) == list(range(1, threads * per_thread + 1))
    log = stores[0].decisions("log")
    assert [d.seq for d in log] == list(range(1, threads * per_thread + 1))
    by_seq = {d.seq: d.record for d in log}
    for index, seqs_of_thread in got.items():
        assert seqs_of_thread == sorted(seqs_of_thread)  # one thread's appends stay in order
        for i, seq in enumerate(seqs_of_thread):
            assert by_seq[seq] == f"{index}:{i}".encode()


def test_concurrent_compare_and_set_from_threads_loses_no_update(backend: Backend) -> None:
    threads, per_thread = 6, 25
    shared = backend.open()
    stores = [shared, *(backend.open() for _ in range(threads - 1))]
    won: list[int] = []
    lock = threading.Lock()

    def increment(index: int) -> None:
        store = stores[index]
        for _ in range(per_thread):
            while True:
                current = store.get("counter")
                version = 0 if current is None else current.version
                count = 0 if current is None else int(current.value)
                try:
                    new = store.compare_and_set("counter", version, str(count + 1).encode())
                except StaleVersionError:
                    continue
                with lock:
                    won.append(new)
                break

    _run_threads(threads, increment)
    total = threads * per_thread
    assert sorted(won) == list(range(1, total + 1))  # every version granted exactly once
    assert shared.get("counter") == Versioned(str(total).encode(), total)


def test_concurrent_combined_writes_from_threads_pair_each_version_with_one_seq(
    backend: Backend,
) -> None:
    """Threads racing combined writes (each value naming the seq of its own record), while
    another thread appends plain records to the same log: every version and every seq granted
    once, the log gap-free, and the record at each seq names the version written with it."""
    threads, per_thread, plain = 5, 20, 30
    stores = [backend.open() for _ in range(threads + 1)]
    won: list[tuple[int, int]] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        store = stores[index]
        if index == threads:  # the plain appender: moves the log under the others' feet
            for i in range(plain):
                store.append_decision("dep", f"plain {i}".encode())
            return
        for _ in range(per_thread):
            while True:
                current = store.get("dep")
                version = 0 if current is None else current.version
                seq = store.last_decision_seq("dep") + 1
                try:
                    got = store.compare_and_set_with_decision(
                        "dep",
                        version,
                        f"{version + 1} {seq}".encode(),
                        f"combined {version + 1} {seq}".encode(),
                        expected_seq=seq,
                    )
                except StaleVersionError:  # StaleSequenceError included
                    continue
                assert got == (version + 1, seq)
                with lock:
                    won.append(got)
                break

    _run_threads(threads + 1, work)
    total = threads * per_thread
    assert sorted(v for v, _ in won) == list(range(1, total + 1))
    log = stores[0].decisions("dep")
    assert [d.seq for d in log] == list(range(1, total + plain + 1))
    combined = [(d.seq, d.record.split()) for d in log if d.record.startswith(b"combined")]
    assert [(int(w[1]), int(w[2])) for _, w in combined] == sorted(won)
    assert all(int(words[2]) == seq for seq, words in combined)
    final = stores[0].get("dep")
    assert final == Versioned(f"{total} {sorted(won)[-1][1]}".encode(), total)


def _workers(backend: Backend, jobs: list[list[str]]) -> list[list[str]]:
    """Runs store_worker.py once per job, all at the same time; their stdout lines."""
    spec = json.dumps(backend.worker_spec)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), spec, *job], stdout=subprocess.PIPE, text=True
        )
        for job in jobs
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        outputs.append(out.splitlines())
    return outputs


@pytest.mark.slow
def test_concurrent_appends_from_processes_are_gap_free(durable_backend: Backend) -> None:
    processes, per_process = 4, 60
    outputs = _workers(durable_backend, [["append", "log", str(per_process)]] * processes)
    seqs = Counter(int(line.split()[3]) for lines in outputs for line in lines)
    assert sorted(seqs) == list(range(1, processes * per_process + 1))
    assert max(seqs.values()) == 1
    log = durable_backend.open().decisions("log")
    assert [d.seq for d in log] == list(range(1, processes * per_process + 1))
    acked = {int(w[3]): w[4].encode() for lines in outputs for w in map(str.split, lines)}
    assert {d.seq: d.record for d in log} == acked


@pytest.mark.slow
def test_concurrent_compare_and_set_from_processes_loses_no_update(
    durable_backend: Backend,
) -> None:
    processes, per_process = 4, 40
    outputs = _workers(durable_backend, [["increment", "counter", str(per_process)]] * processes)
    versions = [int(line.split()[3]) for lines in outputs for line in lines]
    total = processes * per_process
    assert sorted(versions) == list(range(1, total + 1))
    final = durable_backend.open().get("counter")
    assert final is not None
    assert final.version == total


# --- durability ---------------------------------------------------------------------------------


def test_state_and_log_survive_closing_and_reopening(durable_backend: Backend) -> None:
    first = durable_backend.open()
    first.compare_and_set("dep/a", 0, b"a1")
    first.compare_and_set("dep/a", 1, b"a2")
    first.compare_and_set("dep/b", 0, b"b1")
    for i in range(1, 6):
        first.append_decision("dep/a", f"d{i}".encode())
    first.close()

    again = durable_backend.open()
    assert again.get("dep/a") == Versioned(b"a2", 2)
    assert again.get("dep/b") == Versioned(b"b1", 1)
    assert again.keys("dep/") == ["dep/a", "dep/b"]
    assert [d.record for d in again.decisions("dep/a")] == [f"d{i}".encode() for i in range(1, 6)]
    assert again.append_decision("dep/a", b"d6") == 6
    assert again.compare_and_set("dep/a", 2, b"a3") == 3
    with pytest.raises(StaleVersionError):
        again.compare_and_set("dep/b", 0, b"again")


def test_two_open_stores_on_the_same_storage_see_each_others_writes(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    one.compare_and_set("k", 0, b"from one")
    assert two.get("k") == Versioned(b"from one", 1)
    with pytest.raises(StaleVersionError):
        two.compare_and_set("k", 0, b"from two")
    assert two.compare_and_set("k", 1, b"from two") == 2
    assert one.get("k") == Versioned(b"from two", 2)
    assert one.append_decision("log", b"1") == 1
    assert two.append_decision("log", b"2") == 2
    assert one.decisions("log") == two.decisions("log")


# --- change token -------------------------------------------------------------------------------


def test_the_change_token_moves_with_every_value_write_from_any_store(backend: Backend) -> None:
    """Equal tokens mean no value changed: reads leave it, every kind of value write moves it,
    whichever open store (a second connection, another replica) made the write."""
    one, two = backend.open(), backend.open()
    seen = [one.change_token()]
    one.get("k")
    one.keys()
    one.decisions("k")
    assert one.change_token() == seen[-1]
    for write in (
        lambda: one.compare_and_set("k", 0, b"v1"),
        lambda: one.compare_and_set_with_decision("k", 1, b"v2", b"d1"),
        lambda: two.compare_and_set("k", 2, b"v3"),
        lambda: two.compare_and_set_with_decision("other", 0, b"o1", b"d1"),
    ):
        write()
        token = one.change_token()
        assert token not in seen
        seen.append(token)
    assert two.change_token() == two.change_token()
    with pytest.raises(StaleVersionError):
        one.compare_and_set("k", 1, b"stale")
    assert one.change_token() == seen[-1]  # a refused write changes nothing
