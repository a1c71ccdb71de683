"""One store test suite for every backend: the ``backend`` fixture is parametrised over memory,
sqlite and redis.

Redis tests need a server: ``SERVEWISE_TEST_REDIS_URL`` (scripts/test starts one and sets it,
scripts/steps/30-redis.sh). Unset, they skip; set but unreachable, they fail. Each test gets its
own key namespace on that server and deletes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servewise.store import StateStore
from servewise.store.memory import MemoryStore

REDIS_URL_ENV = "SERVEWISE_TEST_REDIS_URL"


@dataclass
class Backend:
    """How to open (and reopen) one backend's storage, in this process or another."""

    name: str
    opener: Callable[[], StateStore]
    # For tests/store/store_worker.py in another process; None for the in-process memory store.
    worker_spec: dict[str, Any] | None
    opened: list[StateStore] = field(default_factory=list)

    def open(self) -> StateStore:
        """A new store on the same storage (memory: the same store)."""
        store = self.opener()
        self.opened.append(store)
        return store

    @property
    def durable(self) -> bool:
        return self.worker_spec is not None


def _memory(tmp_path: Path) -> tuple[Callable[[], StateStore], None]:
    shared = MemoryStore()
    return (lambda: shared), None


def _sqlite(tmp_path: Path) -> tuple[Callable[[], StateStore], dict[str, Any]]:
    from servewise.store.sqlite import SqliteStore  # noqa: PLC0415

    path = tmp_path / "state" / "servewise.db"  # the parent does not exist yet: created
    return (lambda: SqliteStore(path)), {"kind": "sqlite", "path": str(path)}


def _redis(tmp_path: Path) -> tuple[Callable[[], StateStore], dict[str, Any]]:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(
            f"{REDIS_URL_ENV} is unset: no Redis to test against (scripts/test starts a "
            "redis-server and sets it; or point it at a Redis the tests may write to)"
        )
    from servewise.store.redis import RedisStore  # noqa: PLC0415

    namespace = f"servewise-test-{uuid.uuid4().hex[:12]}"  # this test's keys only
    return (
        lambda: RedisStore(url, namespace=namespace),
        {"kind": "redis", "url": url, "namespace": namespace},
    )


def _drop_redis_namespace(url: str, namespace: str) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{{{namespace}}}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


BACKENDS: dict[str, Callable[[Path], tuple[Callable[[], StateStore], dict[str, Any] | None]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opener, worker_spec = BACKENDS[request.param](tmp_path)
    backend = Backend(request.param, opener, worker_spec)
    try:
        yield backend
    finally:
        for store in backend.opened:
            store.close()
        if worker_spec is not None and worker_spec["kind"] == "redis":
            _drop_redis_namespace(worker_spec["url"], worker_spec["namespace"])


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.open()


@pytest.fixture
def durable_backend(backend: Backend) -> Backend:
    """Only the backends whose state outlives the process (and is shared between processes)."""
    if not backend.durable:
        pytest.skip(f"{backend.name}: state does not outlive the process")
    return backend
