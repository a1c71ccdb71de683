"""A separate process writing to a store, for the multi-process and kill -9 tests.

    python store_worker.py BACKEND_JSON append KEY COUNT    appends COUNT records to KEY
    python store_worker.py BACKEND_JSON increment KEY COUNT  COUNT read-CAS increments of KEY
    python store_worker.py BACKEND_JSON hammer SEED          CAS writes, appends and combined
                                                             writes until killed

BACKEND_JSON is {"kind": "sqlite", "path": ...} or {"kind": "redis", "url": ..., "namespace":
...}. Every acknowledged write is printed (and flushed) as one line *after* the store returned,
so a line on stdout is a promise the store made: ``ack cas KEY VERSION SHA``, ``ack dec KEY SEQ
SHA``, ``ack pair KEY N SHA`` (a compare_and_set_with_decision that made version N and seq N of
a PAIR_KEYS key, which nothing else writes, so its version always equals its log's length; SHA
is the record's). Values and records embed their key, version or sequence number, and a SHA-256 of
themselves (:func:`make_payload` / :func:`check_payload`), so a torn or misplaced value is
detected on reading it back.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any

from servewise.store import StaleVersionError, StateStore

STATE_KEYS = ("hammer/state/a", "hammer/state/b", "hammer/state/c")
LOG_KEYS = ("hammer/log/x", "hammer/log/y")
PAIR_KEYS = ("hammer/pair/p", "hammer/pair/q")


def open_backend(spec: dict[str, Any]) -> StateStore:
    if spec["kind"] == "sqlite":
        from servewise.store.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore(spec["path"])
    if spec["kind"] == "redis":
        from servewise.store.redis import RedisStore  # noqa: PLC0415

        return RedisStore(spec["url"], namespace=spec["namespace"])
    raise ValueError(f"no worker backend {spec['kind']!r}")


def make_payload(key: str, number: int, padding: int) -> bytes:
    """``key|number|filler|sha256(key|number|filler)``; padding makes values of varied size."""
    body = f"{key}|{number}|".encode() + bytes((number + i) % 251 for i in range(padding))
    return body + b"|" + hashlib.sha256(body).hexdigest().encode()


def check_payload(payload: bytes) -> tuple[str, int]:
    """The key and number a payload embeds; AssertionError when it is torn or corrupt."""
    body, _, digest = payload.rpartition(b"|")
    assert hashlib.sha256(body).hexdigest().encode() == digest, f"torn payload {payload[:60]!r}"
    key, number, _ = body.split(b"|", 2)
    return key.decode(), int(number)


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _say(*words: object) -> None:
    print(*words, flush=True)


def _increment(store: StateStore, key: str, padding: int) -> tuple[int, bytes]:
    while True:
        current = store.get(key)
        version = 0 if current is None else current.version
        value = make_payload(key, version + 1, padding)
        try:
            return store.compare_and_set(key, version, value), value
        except StaleVersionError:
            continue


def main(argv: list[str]) -> int:
    spec, mode = json.loads(argv[1]), argv[2]
    store = open_backend(spec)
    if mode == "append":
        key, count = argv[3], int(argv[4])
        for i in range(count):
            record = f"{key}|{i}".encode()
            _say("ack dec", key, store.append_decision(key, record), record.decode())
    elif mode == "increment":
        key, count = argv[3], int(argv[4])
        for _ in range(count):
            version, value = _increment(store, key, 8)
            _say("ack cas", key, version, sha(value))
    elif mode == "hammer":
        rng = random.Random(int(argv[3]))
        # The single writer of the log keys: the n-th record it appends must land at seq n.
        next_seq = {key: len(store.decisions(key)) + 1 for key in LOG_KEYS}
        _say("ready")
        while True:
            if rng.random() < 1 / 3:
                key = rng.choice(PAIR_KEYS)
                current = store.get(key)
                number = (0 if current is None else current.version) + 1
                value = make_payload(key, number, rng.randrange(0, 20_000))
                record = make_payload(key, number, rng.randrange(0, 20_000))
                version, seq = store.compare_and_set_with_decision(
                    key, number - 1, value, record, expected_seq=number
                )
                assert version == seq == number, (version, seq, number)
                _say("ack pair", key, number, sha(record))
            elif rng.random() < 0.5:
                key = rng.choice(STATE_KEYS)
                version, value = _increment(store, key, rng.randrange(0, 20_000))
                _say("ack cas", key, version, sha(value))
            else:
                key = rng.choice(LOG_KEYS)
                record = make_payload(key, next_seq[key], rng.randrange(0, 20_000))
                seq = store.append_decision(key, record)
                _say("ack dec", key, seq, sha(record))
                next_seq[key] = seq + 1
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
