"""Redis StateStore: several service replicas sharing deployment state and decision logs.

Layout, under a namespace (default ``servewise``) in braces, so that in a Redis Cluster every
key hashes to one slot and the scripts below may touch several of them:

- ``{ns}:v:KEY``  a hash with ``value`` and ``version``, written together by one HSET;
- ``{ns}:keys``   a sorted set of every KEY (all scores 0), so ``keys(prefix)`` is one
  ZRANGEBYLEX instead of a SCAN of the keyspace;
- ``{ns}:d:KEY``  a list, the decision log: entry ``seq`` is at index ``seq - 1``;
- ``{ns}:changes`` a counter the scripts below increment with every value they write: the
  change token, so a replica's poller reads one integer, not every key, when nothing changed.

compare_and_set is one Lua script (one round trip; Redis runs a script atomically), so the
version check and the write cannot interleave with another replica's. append_decision is one
RPUSH, atomic on its own: the new length it returns is the sequence number, gap-free because
the list is never trimmed. compare_and_set_with_decision is one script doing the version check,
the sequence check, the HSET and the RPUSH: no other client's command runs in between, and a
Servewise process killed while it runs has either sent the whole script or none of it. (Redis
lets a script that has started writing finish even past ``maxmemory``, and persists its effects
to the AOF and replicas as one MULTI/EXEC, so Redis itself never applies half of it either.)

Durability is the server's: an acknowledged write is in the server's memory, and survives a
server restart only as far as its persistence (``appendonly yes``, ``appendfsync``) goes.
"""

from __future__ import annotations

from typing import Any, cast

import redis

from servewise.store import Decision, StaleSequenceError, StaleVersionError, Versioned

DEFAULT_NAMESPACE = "servewise"

# KEYS[1] the value hash, KEYS[2] the key index, KEYS[3] the change counter; ARGV: expected
# version, value, key. Returns {1, new version} or {0, actual version}.
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'version')
local actual = 0
if current then actual = tonumber(current) end
if actual ~= tonumber(ARGV[1]) then return {0, actual} end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', actual + 1)
if actual == 0 then redis.call('ZADD', KEYS[2], 0, ARGV[3]) end
redis.call('INCR', KEYS[3])
return {1, actual + 1}
"""

# KEYS[1] the value hash, KEYS[2] the key index, KEYS[3] the decision log, KEYS[4] the change
# counter; ARGV: expected version, value, key, record, expected seq ('': whatever is next).
# Returns {1, new version, new seq}, {0, actual version, 0} or {-1, version, next seq}.
_COMPARE_AND_SET_WITH_DECISION = """
local current = redis.call('HGET', KEYS[1], 'version')
local actual = 0
if current then actual = tonumber(current) end
if actual ~= tonumber(ARGV[1]) then return {0, actual, 0} end
local next_seq = redis.call('LLEN', KEYS[3]) + 1
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= next_seq then return {-1, actual, next_seq} end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', actual + 1)
if actual == 0 then redis.call('ZADD', KEYS[2], 0, ARGV[3]) end
redis.call('INCR', KEYS[4])
local seq = redis.call('RPUSH', KEYS[3], ARGV[4])
return {1, actual + 1, seq}
"""


class RedisStore:
    """A StateStore on the Redis server at ``url`` (``redis://[:PASSWORD@]HOST:PORT/DB``,
    ``rediss://`` for TLS). Stores with the same url and namespace share their state."""

    def __init__(self, url: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client: redis.Redis = redis.Redis.from_url(url, decode_responses=False)
        self._ns = "{" + namespace + "}"
        self._index = f"{self._ns}:keys"
        self._changes = f"{self._ns}:changes"
        self._cas = self._client.register_script(_COMPARE_AND_SET)
        self._cas_decision = self._client.register_script(_COMPARE_AND_SET_WITH_DECISION)

    def _value_key(self, key: str) -> str:
        return f"{self._ns}:v:{key}"

    def _log_key(self, key: str) -> str:
        return f"{self._ns}:d:{key}"

    def get(self, key: str) -> Versioned | None:
        value, version = cast(
            "list[bytes | None]", self._client.hmget(self._value_key(key), ["value", "version"])
        )
        if value is None or version is None:
            return None
        return Versioned(bytes(value), int(version))

    def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        ok, version = cast(
            "list[int]",
            self._cas(
                keys=[self._value_key(key), self._index, self._changes],
                args=[expected_version, bytes(value), key.encode()],
            ),
        )
        if not ok:
            raise StaleVersionError(key, expected_version, int(version))
        return int(version)

    def compare_and_set_with_decision(
        self,
        key: str,
        expected_version: int,
        value: bytes,
        record: bytes,
        *,
        expected_seq: int | None = None,
    ) -> tuple[int, int]:
        status, version, seq = cast(
            "list[int]",
            self._cas_decision(
                keys=[self._value_key(key), self._index, self._log_key(key), self._changes],
                args=[
                    expected_version,
                    bytes(value),
                    key.encode(),
                    bytes(record),
                    b"" if expected_seq is None else expected_seq,
                ],
            ),
        )
        if status == 0:
            raise StaleVersionError(key, expected_version, int(version))
        if status < 0:
            raise StaleSequenceError(key, int(version), cast(int, expected_seq), int(seq))
        return int(version), int(seq)

    def keys(self, prefix: str = "") -> list[str]:
        # Members compare as bytes; in UTF-8 that is code point order (Python's str order), and
        # no UTF-8 string has a 0xff byte, so "(prefix\xff" ends the prefix's run exactly.
        low = b"[" + prefix.encode()
        high = b"(" + prefix.encode() + b"\xff"
        members = cast("list[bytes]", self._client.zrangebylex(self._index, low, high))
        return [member.decode() for member in members]

    def append_decision(self, key: str, record: bytes) -> int:
        return int(cast(Any, self._client.rpush(self._log_key(key), bytes(record))))

    def last_decision_seq(self, key: str) -> int:
        return int(cast(Any, self._client.llen(self._log_key(key))))

    def decisions(self, key: str, after_seq: int = 0) -> list[Decision]:
        start = max(after_seq, 0)
        records = cast("list[bytes]", self._client.lrange(self._log_key(key), start, -1))
        return [Decision(start + i + 1, bytes(record)) for i, record in enumerate(records)]

    def change_token(self) -> int:
        return int(cast("bytes | None", self._client.get(self._changes)) or 0)

    def close(self) -> None:
        self._client.close()
