"""kill -9 of the real server under load, then restart: a few of bench/kill9.py's trials.

The bench runs >= 20 trials per backend (bench/results/kill9.json); here 2 per backend, with
the same load (RegisterDeployment writers and Control streams driving decisions) and the same
checks against the store and the restarted server.

A decision's state write and its log append are one store operation
(``compare_and_set_with_decision``), so a decision applied to the state but missing from the
log ("unlogged"), or the hole it leaves in the log for later decisions ("gap"), fails the test
like anything lost, duplicated or torn.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench.kill9 import run_trials

TRIALS = 2
REDIS_DB = 7


def _backends(tmp_path: Path) -> list[tuple[str, str]]:
    backends = [("sqlite", f"sqlite://{tmp_path / 'kill9.db'}")]
    redis_url = os.environ.get("SERVEWISE_TEST_REDIS_URL")
    if redis_url:
        # A database of its own on the test command's Redis (kill9's key names are fixed).
        backends.append(("redis", redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"))
    return backends


@pytest.mark.slow
def test_kill_9_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """SIGKILL mid-load, on SQLite and (when the test command runs one) Redis: every
    acknowledged write and decision is in the store, none twice, nothing torn, no decision
    applied without its log entry, and the restarted server answers from the stored
    versions."""
    for name, url in _backends(tmp_path):
        if name == "redis":
            _flush_redis(url)
        result = run_trials(url, TRIALS, max_delay_s=1.5, seed=7, log=lambda _line: None)
        problems = [p for t in result["per_trial"] for p in t["problems"]]
        assert result["trials"] == TRIALS
        assert result["acknowledged_writes"] > 0, name
        assert result["lost"] == 0, (name, problems)
        assert result["duplicated"] == 0, (name, problems)
        assert result["torn"] == 0, (name, problems)
        assert result["unlogged"] == 0, (name, problems)
        assert result["gap"] == 0, (name, problems)
        assert result["restart_problems"] == 0, (name, problems)
        assert problems == [], (name, problems)


def _flush_redis(url: str) -> None:
    """Start from an empty database (a rerun against the same Redis finds the last run's)."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
