"""The ``servewise`` command line: help, usage errors, environment defaults, exit codes."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from servewise import cli, server


def _commands() -> list[list[str]]:
    parser = cli.build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return [[], *([name] for name in subparsers.choices)]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "servewise")
def test_help_exits_0_on_every_command(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` works on the top level and on every subcommand, exiting 0."""
    assert cli.main([*command, "--help"]) == 0
    assert "usage: servewise" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nosuchcommand"],
        ["serve", "--bogus"],
        ["serve", "--address", "no-port"],
        ["serve", "--metrics-address", "localhost:99999"],
        ["serve", "--grace-s", "-1"],
        ["serve", "--grace-s", "soon"],
        ["serve", "--log-level", "loud"],
        ["serve", "--worker-processes", "-1"],
        ["serve", "--worker-processes", "two"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad command line exits 2 with exactly one line on stderr and nothing on stdout."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("servewise")
    assert "error:" in captured.err


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVEWISE_* variables supply the defaults; flags still win."""
    monkeypatch.setenv("SERVEWISE_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("SERVEWISE_METRICS_ADDRESS", "off")
    monkeypatch.setenv("SERVEWISE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SERVEWISE_GRACE_S", "2.5")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.address, args.metrics_address, args.log_level, args.grace_s) == (
        "0.0.0.0:6000",
        "off",
        "debug",
        2.5,
    )
    args = cli.build_parser().parse_args(["serve", "--address", "127.0.0.1:7000"])
    assert args.address == "127.0.0.1:7000"


def test_worker_processes_from_the_environment_or_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset: None (the servicer picks one per CPU); the variable sets it; the flag wins."""
    monkeypatch.delenv("SERVEWISE_WORKER_PROCESSES", raising=False)
    assert cli.build_parser().parse_args(["serve"]).worker_processes is None
    monkeypatch.setenv("SERVEWISE_WORKER_PROCESSES", "3")
    assert cli.build_parser().parse_args(["serve"]).worker_processes == 3
    argv = ["serve", "--worker-processes", "0"]
    assert cli.build_parser().parse_args(argv).worker_processes == 0


def test_invalid_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed SERVEWISE_GRACE_S is reported like a bad flag (exit 2, one line)."""
    monkeypatch.setenv("SERVEWISE_GRACE_S", "later")
    assert cli.main(["serve"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_defaults_match_the_server() -> None:
    """The CLI's defaults (kept import-light for --help) equal servewise.server's."""
    assert cli.DEFAULT_ADDRESS == server.DEFAULT_ADDRESS
    assert cli.DEFAULT_METRICS_ADDRESS == server.DEFAULT_METRICS_ADDRESS
    assert server.DEFAULT_GRACE_S == cli.DEFAULT_GRACE_S


def _servewise() -> list[str]:
    script = Path(sys.executable).with_name("servewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "servewise"]


def test_console_script_help_and_bad_flag() -> None:
    """The installed command exits 0 on --help and 2 with one stderr line on a bad flag."""
    ok = subprocess.run(
        [*_servewise(), "serve", "--help"], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0
    assert "--metrics-address" in ok.stdout
    bad = subprocess.run(
        [*_servewise(), "serve", "--nope"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "servewise: error: unrecognized arguments: --nope (see --help)"
    ]


def test_port_in_use_exits_1_with_one_line() -> None:
    """An address that cannot be bound exits 1 with one line on stderr."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*_servewise(), "serve", "--address", f"127.0.0.1:{port}", "--metrics-address", "off"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"servewise: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
