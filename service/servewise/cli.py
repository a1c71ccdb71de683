"""``servewise`` command line: ``servewise serve`` (more subcommands land later).

Exit codes: 0 success, 1 failure (for example an address that cannot be bound), 2 usage error.
Errors are one line on standard error: ``servewise: error: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final, NoReturn

from servewise.obs import LOG_LEVELS

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

PROG: Final = "servewise"

# Kept in sync with servewise.server's defaults by tests/test_cli.py; duplicated so that `--help`
# does not import grpc.
DEFAULT_ADDRESS: Final = "localhost:50051"
DEFAULT_METRICS_ADDRESS: Final = "localhost:9464"
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_GRACE_S: Final = 10.0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), without the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


def _grace_default() -> float | str:
    # An invalid environment value is reported by argparse like a bad flag (type= runs on
    # string defaults), so it is passed through as text.
    return _env("SERVEWISE_GRACE_S", str(DEFAULT_GRACE_S))


def _add_serve(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the gRPC server until SIGTERM/SIGINT",
        description=(
            "Run ServewiseService with gRPC health and reflection, one JSON log line per RPC on "
            "stdout and Prometheus metrics over HTTP. SIGTERM or SIGINT drains and exits 0."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=_env("SERVEWISE_ADDRESS", DEFAULT_ADDRESS),
        help="gRPC listen address (env SERVEWISE_ADDRESS); port 0 picks a free port",
    )
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=_env("SERVEWISE_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
        help='Prometheus /metrics address (env SERVEWISE_METRICS_ADDRESS); "" or "off" disables',
    )
    serve.add_argument(
        "--log-level",
        type=_log_level,
        metavar="LEVEL",
        default=_env("SERVEWISE_LOG_LEVEL", DEFAULT_LOG_LEVEL),
        help=f"one of {', '.join(LOG_LEVELS)} (env SERVEWISE_LOG_LEVEL)",
    )
    serve.add_argument(
        "--grace-s",
        type=_non_negative_float,
        metavar="SECONDS",
        default=_grace_default(),
        help="how long in-flight RPCs may finish after SIGTERM (env SERVEWISE_GRACE_S)",
    )
    serve.set_defaults(handler=_run_serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``servewise`` parser with every subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Servewise: the cheapest way to serve a model within its latency SLO.",
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=_Parser
    )
    subparsers.required = True
    _add_serve(subparsers)
    # Later: plan, simulate, profile, replay — each an _add_<name>(subparsers) with a handler.
    return parser


def _validate_address(parser: argparse.ArgumentParser, flag: str, value: str) -> None:
    from servewise.server import parse_host_port  # noqa: PLC0415 - keeps --help light

    try:
        parse_host_port(value, what=flag)
    except ValueError as exc:
        parser.error(str(exc))


def _run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _validate_address(parser, "--address", args.address)
    metrics_address: str | None = args.metrics_address
    if not metrics_address or metrics_address.lower() == "off":
        metrics_address = None
    else:
        _validate_address(parser, "--metrics-address", metrics_address)

    import structlog  # noqa: PLC0415

    from servewise.obs import configure_logging  # noqa: PLC0415
    from servewise.server import serve  # noqa: PLC0415

    configure_logging(args.log_level)
    try:
        asyncio.run(serve(args.address, metrics_address, args.grace_s))
    except OSError as exc:  # an address that cannot be bound
        _fail(str(exc))
        return EXIT_FAILURE
    except Exception as exc:
        structlog.get_logger("servewise.cli").exception("serve_failed")
        _fail(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    return EXIT_OK


def _fail(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when omitted), run the command, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], int] = args.handler
    try:
        return handler(args, parser)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
