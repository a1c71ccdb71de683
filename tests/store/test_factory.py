"""open_store: SERVEWISE_STORE and SERVEWISE_SQLITE_PATH pick the backend (deploy/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servewise.store.factory import default_sqlite_path, open_store
from servewise.store.memory import MemoryStore
from servewise.store.sqlite import SqliteStore

from .conftest import REDIS_URL_ENV


def test_unset_or_sqlite_opens_sqlite_at_sqlite_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SERVEWISE_STORE", raising=False)
    monkeypatch.setenv("SERVEWISE_SQLITE_PATH", str(tmp_path / "a" / "state.db"))
    store = open_store()
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "a" / "state.db"
    store.close()
    monkeypatch.setenv("SERVEWISE_STORE", "sqlite")
    store = open_store()
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "a" / "state.db"
    store.close()


def test_without_a_path_sqlite_goes_to_the_users_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SERVEWISE_SQLITE_PATH", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_sqlite_path() == tmp_path / "xdg" / "servewise" / "servewise.db"
    store = open_store("sqlite")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "xdg" / "servewise" / "servewise.db"
    store.close()
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_sqlite_path() == Path.home() / ".local/state/servewise/servewise.db"


def test_a_sqlite_url_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVEWISE_SQLITE_PATH", str(tmp_path / "ignored.db"))
    store = open_store(f"sqlite://{tmp_path}/b/url.db")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "b" / "url.db"
    store.close()
    monkeypatch.setenv("SERVEWISE_STORE", f"sqlite://{tmp_path}/c.db")
    store = open_store()
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "c.db"
    store.close()


def test_memory() -> None:
    assert isinstance(open_store("memory"), MemoryStore)


@pytest.mark.parametrize("url", ["postgres://x/y", "mem", "file:///tmp/x", "memory://x"])
def test_an_unknown_store_is_refused_with_the_accepted_ones(url: str) -> None:
    with pytest.raises(ValueError, match="expected 'sqlite'") as raised:
        open_store(url)
    assert url in str(raised.value)


def test_a_redis_url_opens_redis() -> None:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(f"{REDIS_URL_ENV} is unset: no Redis to test against")
    from servewise.store.redis import RedisStore  # noqa: PLC0415

    store = open_store(url)
    assert isinstance(store, RedisStore)
    store.get("servewise-test/factory-probe")  # it talks to the server
    store.close()
