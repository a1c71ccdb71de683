"""``open_store``: the StateStore that ``SERVEWISE_STORE`` names (deploy/README.md, settings).

- unset, empty or ``sqlite``: SqliteStore at ``SERVEWISE_SQLITE_PATH``, or when that is unset
  at :func:`default_sqlite_path`;
- ``sqlite://PATH``: SqliteStore at PATH, everything after ``sqlite://`` (so
  ``sqlite:///var/lib/servewise/servewise.db`` is absolute, ``sqlite://servewise.db`` relative
  to the working directory);
- ``redis://[:PASSWORD@]HOST:PORT/DB`` or ``rediss://...`` (TLS): RedisStore;
- ``memory``: MemoryStore (nothing outlives the process: tests and experiments).
"""

from __future__ import annotations

import os
from pathlib import Path

from servewise.store import StateStore

STORE_ENV = "SERVEWISE_STORE"
SQLITE_PATH_ENV = "SERVEWISE_SQLITE_PATH"


def default_sqlite_path() -> Path:
    """``$XDG_STATE_HOME/servewise/servewise.db`` (``~/.local/state/servewise/servewise.db``
    when XDG_STATE_HOME is unset): per user, outside any checkout, and never a path that needs
    root. The container image sets SERVEWISE_SQLITE_PATH to /var/lib/servewise/servewise.db."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "servewise" / "servewise.db"


def open_store(url: str | None = None) -> StateStore:
    """Open the store ``url`` names; None reads ``SERVEWISE_STORE`` (the table above).

    Raises ValueError for a scheme it does not know, naming the accepted ones.
    """
    spec = (os.environ.get(STORE_ENV, "") if url is None else url).strip()
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else spec.lower()
    if scheme in ("", "sqlite"):
        from servewise.store.sqlite import SqliteStore  # noqa: PLC0415 (open only what is used)

        path = spec[len("sqlite://") :] if "://" in spec else ""
        if not path:
            path = os.environ.get(SQLITE_PATH_ENV, "").strip() or str(default_sqlite_path())
        return SqliteStore(path)
    if scheme in ("redis", "rediss"):
        from servewise.store.redis import RedisStore  # noqa: PLC0415

        return RedisStore(spec)
    if scheme == "memory" and "://" not in spec:
        from servewise.store.memory import MemoryStore  # noqa: PLC0415

        return MemoryStore()
    raise ValueError(
        f"{STORE_ENV}={spec!r}: expected 'sqlite' (default), 'sqlite://PATH', "
        "'redis://HOST:PORT/DB', 'rediss://...' or 'memory'"
    )
