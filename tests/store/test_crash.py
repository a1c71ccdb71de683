"""kill -9 in the middle of writing: a worker process hammers compare-and-set writes and decision
appends, printing each acknowledged write; it is SIGKILLed at a random moment, the store is
reopened and checked. Several trials run on the same storage, so each one also recovers from
the previous crash.

After each crash:
- every acknowledged write is there (a state key is at or past its last acknowledged version; a
  log holds every acknowledged entry, byte for byte);
- nothing is torn: every value and record carries a checksum, and embeds the key and the
  version or sequence number it was written as;
- versions and sequence numbers have no gaps or duplicates (each log is 1..n, entry i written
  as the i-th append);
- a state write and its decision (compare_and_set_with_decision) are both there or neither:
  a key written only that way has exactly as many log entries as its version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from servewise.store import StateStore

from .conftest import Backend
from .store_worker import LOG_KEYS, PAIR_KEYS, STATE_KEYS, check_payload, sha

WORKER = Path(__file__).with_name("store_worker.py")
TRIALS = 6


def _kill_at_random(backend: Backend, seed: int, rng: random.Random) -> list[list[str]]:
    """Starts a hammering worker, SIGKILLs it at a random moment; its acknowledgements."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(backend.worker_spec), "hammer", str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line == "ready\n":
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(timeout=30), "the worker never became ready"
    time.sleep(rng.uniform(0.05, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL, "the worker ended before it was killed"
    # A line cut short by the kill is not an acknowledgement we can read: dropped.
    return [line.split() for line in lines if line.endswith("\n") and line.startswith("ack ")]


def _check_pairs(store: StateStore, trial: int, acked_pairs: dict[tuple[str, int], str]) -> None:
    """Keys written only by compare_and_set_with_decision: version n with exactly n records."""
    for key in PAIR_KEYS:
        current = store.get(key)
        log = store.decisions(key)
        version = 0 if current is None else current.version
        # Both or neither: a version without its record (or the reverse) is a torn pair.
        assert [d.seq for d in log] == list(range(1, version + 1)), (trial, key, version)
        if current is not None:
            assert check_payload(current.value) == (key, version), (trial, key)
        for decision in log:
            assert check_payload(decision.record) == (key, decision.seq), (trial, key)
        for (k, n), digest in acked_pairs.items():
            if k == key:
                assert n <= version, f"trial {trial}: {key} lost acknowledged pair {n}"
                assert sha(log[n - 1].record) == digest, (trial, key, n)


@pytest.mark.slow
def test_kill_9_while_writing_loses_no_acknowledged_write(durable_backend: Backend) -> None:
    rng = random.Random(20240917)
    last_version = dict.fromkeys(STATE_KEYS, 0)
    acked_values: dict[tuple[str, int], str] = {}
    acked_records: dict[tuple[str, int], str] = {}
    acked_pairs: dict[tuple[str, int], str] = {}
    total_acks = 0
    for trial in range(TRIALS):
        acks = _kill_at_random(durable_backend, trial, rng)
        assert acks, f"trial {trial}: killed before any acknowledged write"
        total_acks += len(acks)
        for _, kind, key, number, digest in acks:
            if kind == "cas":
                last_version[key] = max(last_version[key], int(number))
                acked_values[key, int(number)] = digest
            elif kind == "pair":
                acked_pairs[key, int(number)] = digest
            else:
                acked_records[key, int(number)] = digest

        store = durable_backend.open()
        for key in STATE_KEYS:
            current = store.get(key)
            if current is None:
                assert last_version[key] == 0, f"trial {trial}: {key} lost"
                continue
            # At most one write past the last acknowledgement: committed, then killed.
            assert last_version[key] <= current.version <= last_version[key] + 1, (trial, key)
            assert check_payload(current.value) == (key, current.version), (trial, key)
            if (key, current.version) in acked_values:
                assert sha(current.value) == acked_values[key, current.version]
            last_version[key] = current.version
        for key in LOG_KEYS:
            log = store.decisions(key)
            assert [d.seq for d in log] == list(range(1, len(log) + 1)), (trial, key)
            for decision in log:
                assert check_payload(decision.record) == (key, decision.seq), (trial, key)
            acked_here = [seq for (k, seq) in acked_records if k == key]
            assert len(log) >= max(acked_here, default=0), f"trial {trial}: {key} lost entries"
            for seq in acked_here:
                assert sha(log[seq - 1].record) == acked_records[key, seq], (trial, key, seq)
        _check_pairs(store, trial, acked_pairs)
        store.close()
    print(f"{durable_backend.name}: {TRIALS} kill -9 trials, {total_acks} acknowledged writes")
    assert total_acks >= TRIALS
