"""``servewise`` command line: ``serve``, ``plan``, ``simulate``, ``profile``, ``plot``, ``replay``.

Exit codes: 0 success, 1 failure (an address that cannot be bound, a rejected request, a model
that does not run, an unreadable file), 2 usage error (a bad command line). Errors are one line
on standard error: ``servewise: error: ...``. An infeasible plan is an answer, not an error
(exit 0), unless exports were asked for: there is no plan to export then (exit 1).

``plan``, ``simulate`` and ``plot`` call a server through :mod:`servewise_client`; with ``--local``
they start the real server in-process on a loopback port 0 for the one call, so validation,
error details and responses are exactly a remote server's (same servicer, interceptor and wire
format) without running ``servewise serve``. Heavy or optional modules (grpc, numpy, the core,
onnxruntime, matplotlib) are imported inside the commands, so ``--help`` and ``serve`` stay light.
``replay`` runs the core in-process (it calls no server).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from servewise.obs import LOG_LEVELS

if TYPE_CHECKING:
    from servewise_client import ServewiseClient

    from servewise.v1 import servewise_pb2

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
    serve.add_argument(
        "--store",
        metavar="URL",
        default=_env("SERVEWISE_STORE", ""),
        help="deployment state (env SERVEWISE_STORE): sqlite (default, at SERVEWISE_SQLITE_PATH), "
        "sqlite://PATH, redis://HOST:PORT/DB or memory",
    )
    serve.add_argument(
        "--worker-processes",
        type=_non_negative_int,
        metavar="N",
        default=_env("SERVEWISE_WORKER_PROCESSES", "") or None,
        help="processes that compute concurrent OptimizeBatch calls, started by the first call "
        "(env SERVEWISE_WORKER_PROCESSES; default one per CPU, at most 8; 0: threads only)",
    )
    _add_serve_auth(serve)
    _add_limit_flags(serve)
    serve.set_defaults(handler=_run_serve)


def _add_serve_auth(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "security",
        "TLS from PEM files (mutual TLS with --tls-client-ca) and bearer tokens with read or write "
        "scope (see servewise.auth). Without them the port is plaintext and open.",
    )
    group.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=_env("SERVEWISE_TLS_CERT", ""),
        help="server certificate chain (env SERVEWISE_TLS_CERT); needs --tls-key",
    )
    group.add_argument(
        "--tls-key",
        metavar="PEM",
        default=_env("SERVEWISE_TLS_KEY", ""),
        help="server private key, unencrypted (env SERVEWISE_TLS_KEY)",
    )
    group.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        default=_env("SERVEWISE_TLS_CLIENT_CA", ""),
        help="CA that signs client certificates; clients without one are refused (mutual TLS; "
        "env SERVEWISE_TLS_CLIENT_CA)",
    )
    group.add_argument(
        "--tokens-file",
        metavar="FILE",
        default=_env("SERVEWISE_TOKENS_FILE", ""),
        help="bearer tokens, one '<read|write> <token>' per line (env SERVEWISE_TOKENS_FILE); "
        "env SERVEWISE_TOKENS adds tokens in the same format, comma-separated",
    )


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """One flag per field of servewise.limits.Limits (the table lives there, with defaults)."""
    from servewise.limits import specs  # noqa: PLC0415  # pure and light

    group = serve.add_argument_group("limits (see servewise.limits; flags win over env)")
    for spec in specs():
        parse = (
            _bytes
            if spec.name.endswith("_bytes")
            else (_positive_int if spec.kind is int else _positive_float)
        )
        group.add_argument(
            spec.flag,
            dest=f"limit_{spec.name}",
            type=parse,
            metavar="N",
            default=_env(spec.env_var, str(spec.default)),
            help=f"{spec.meaning} (env {spec.env_var}; {spec.status})",
        )


# --- shared argument types -------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _percentile(text: str) -> float:
    value = _positive_float(text)
    if not value < 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100), got {text!r}")
    return value


_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _bytes(text: str) -> int:
    """``16GiB``, ``8G``, ``512MiB`` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size like 16GiB, 8G or 512MiB: {text!r}")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _instance(text: str) -> dict[str, Any]:
    """``NAME:PRICE_PER_HOUR[:MEMORY]`` -> an InstanceType spec (memory filled from the profile)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected NAME:PRICE_PER_HOUR[:MEMORY], got {text!r}")
    try:
        price = float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"price is not a number in {text!r}") from None
    if not (math.isfinite(price) and price > 0):
        raise argparse.ArgumentTypeError(f"price must be finite and > 0 in {text!r}")
    spec: dict[str, Any] = {"name": parts[0], "price_per_hour": price}
    if len(parts) == 3:
        spec["memory"] = {"device_memory_bytes": _bytes(parts[2])}
    return spec


def _linear(text: str) -> dict[str, Any]:
    """``BASE_MS:PER_ITEM_MS[:MAX_BATCH]`` -> a LinearProfile spec."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected BASE_MS:PER_ITEM_MS[:MAX_BATCH], got {text!r}")
    try:
        spec: dict[str, Any] = {"base_ms": float(parts[0]), "per_item_ms": float(parts[1])}
        if len(parts) == 3:
            spec["max_batch_size"] = int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    return spec


def _current(text: str) -> dict[str, Any]:
    """``NAME:B:T_MS:N`` -> a ServingPlan spec."""
    parts = text.split(":")
    if len(parts) != 4 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected NAME:BATCH:DELAY_MS:REPLICAS, got {text!r}")
    try:
        return {
            "instance_type": parts[0],
            "max_batch_size": int(parts[1]),
            "max_queue_delay_ms": float(parts[2]),
            "replicas": int(parts[3]),
        }
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers in {text!r}") from None


def _batch_sizes(text: str) -> list[int]:
    from servewise.profiling import parse_batch_sizes  # noqa: PLC0415

    try:
        return parse_batch_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.partition("=")
    try:
        values = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        values = []
    if not sep or not name or not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected INPUT=D1,D2,... (positive), got {text!r}")
    return name, values


# --- shared arguments ------------------------------------------------------------------------

_BASIS_CHOICES: Final = ("typical", "p99")


def _add_connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=_env("SERVEWISE_ADDRESS", DEFAULT_ADDRESS),
        help="the Servewise server to call (env SERVEWISE_ADDRESS)",
    )
    group.add_argument(
        "--local",
        action="store_true",
        help="no server needed: run the real server in-process on a loopback port for this call",
    )
    group.add_argument(
        "--timeout-s",
        type=_positive_float,
        metavar="SECONDS",
        default=60.0,
        help="deadline of the call, retries included",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    group.add_argument("--ca-cert", metavar="PEM", help="CA certificate for TLS (implies --tls)")
    group.add_argument("--client-cert", metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--client-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument(
        "--token",
        default=os.environ.get("SERVEWISE_TOKEN"),
        help="bearer token sent as authorization metadata (env SERVEWISE_TOKEN)",
    )


def _add_request_file(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help=f"{what} as YAML or JSON (proto field names); flags given as well override it",
    )


def _add_candidate_flags(parser: argparse.ArgumentParser, *, many: bool) -> None:
    group = parser.add_argument_group("model and instance")
    group.add_argument(
        "--instance",
        type=_instance,
        action="append" if many else "store",
        metavar="NAME:PRICE[:MEMORY]",
        help=(
            "instance type and its price per hour; MEMORY (e.g. 16GiB) caps the batch with the "
            "profile's memory fit"
            + ("; repeat for several types (each gets the same profile)" if many else "")
        ),
    )
    profile = group.add_mutually_exclusive_group()
    profile.add_argument(
        "--profile",
        metavar="FILE",
        help="latency profile: a file from `servewise profile`, or JSON/YAML points",
    )
    profile.add_argument(
        "--linear",
        type=_linear,
        metavar="BASE_MS:PER_ITEM_MS[:MAX_BATCH]",
        help="linear profile s(b) = BASE_MS + PER_ITEM_MS * b",
    )
    group.add_argument(
        "--max-batch",
        type=_positive_int,
        metavar="N",
        help="largest batch the instance holds (instead of MEMORY)",
    )
    group.add_argument(
        "--basis",
        choices=_BASIS_CHOICES,
        help="service time from the profile's typical (default) or p99 latency",
    )


def _add_workload_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload and SLO")
    group.add_argument("--rate", type=_positive_float, metavar="PER_S", help="requests per second")
    group.add_argument(
        "--arrival-cv",
        type=_non_negative_float,
        metavar="CV",
        help="inter-arrival coefficient of variation (1 Poisson, >1 bursty, 0 even)",
    )
    group.add_argument(
        "--slo-ms", type=_positive_float, metavar="MS", help="latency bound of the SLO"
    )
    group.add_argument(
        "--percentile", type=_percentile, metavar="P", help="SLO percentile (server default 99)"
    )
    group.add_argument("--seed", type=_non_negative_int, help="simulation seed (0: fixed default)")


def _add_optimize_flags(parser: argparse.ArgumentParser) -> None:
    _add_request_file(parser, "the OptimizeBatch request")
    _add_candidate_flags(parser, many=True)
    _add_workload_flags(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--max-replicas", type=_positive_int, metavar="N", help="replica limit")
    group.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        metavar="LIST",
        help="batch sizes the search may use: 1,4,16 or 1..64 (powers of two)",
    )
    group.add_argument(
        "--max-delay-ms",
        type=_non_negative_float,
        metavar="MS",
        help="longest batching delay the search may use",
    )
    group.add_argument(
        "--current",
        type=_current,
        metavar="NAME:B:T_MS:N",
        help="today's plan, to compare against",
    )


# --- building requests -----------------------------------------------------------------------


class _UsageError(Exception):
    """A command line that cannot make a request (reported like argparse's errors, exit 2)."""


class _Failure(Exception):  # noqa: N818 - a failure to report, not an error type
    """A failure to report as one line with exit code 1."""


def _spec_from_file(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    if not args.file:
        return {}, None
    from servewise_client.specs import SpecError, load_spec  # noqa: PLC0415

    try:
        return load_spec(args.file), Path(args.file).resolve().parent
    except SpecError as exc:
        raise _Failure(str(exc)) from None


def _profile_spec(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """(LatencyProfile spec, the profile file or None) from --profile / --linear."""
    if args.linear is not None:
        return {"linear": args.linear}, None
    from google.protobuf import json_format  # noqa: PLC0415
    from servewise_client.profile_file import ProfileFileError, read_profile  # noqa: PLC0415

    try:
        measured = read_profile(args.profile)
    except ProfileFileError as exc:
        raise _Failure(str(exc)) from None
    spec = json_format.MessageToDict(measured.latency_profile(), preserving_proto_field_name=True)
    return spec, measured


def _candidates(args: argparse.Namespace, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if args.profile is None and args.linear is None:
        raise _UsageError("--instance needs --profile FILE or --linear BASE_MS:PER_ITEM_MS")
    profile, measured = _profile_spec(args)
    candidates = []
    for raw in instances:
        instance = dict(raw)
        memory = instance.get("memory")
        if memory is not None:
            if args.max_batch is not None:
                raise _UsageError("give MEMORY in --instance or --max-batch, not both")
            if measured is None or measured.memory is None:
                raise _UsageError(
                    "MEMORY in --instance needs --profile with a memory fit (from servewise "
                    "profile)"
                )
            instance["memory"] = json_format_dict(
                measured.memory.memory_model(memory["device_memory_bytes"])
            )
        elif args.max_batch is not None:
            instance["max_batch_size"] = args.max_batch
        candidates.append({"instance_type": instance, "profile": profile})
    return candidates


def json_format_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format  # noqa: PLC0415

    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def _merge_workload(spec: dict[str, Any], args: argparse.Namespace) -> None:
    if args.rate is not None:
        spec.setdefault("workload", {})["rate_per_s"] = args.rate
    if args.arrival_cv is not None:
        spec.setdefault("workload", {})["arrival_cv"] = args.arrival_cv
    if args.slo_ms is not None:
        spec.setdefault("slo", {})["latency_ms"] = args.slo_ms
    if args.percentile is not None:
        spec.setdefault("slo", {})["percentile"] = args.percentile
    if args.seed is not None:
        spec["seed"] = args.seed
    if args.basis is not None:
        spec["service_time_basis"] = args.basis


def _require(spec: dict[str, Any], args: argparse.Namespace, needs: dict[str, bool]) -> None:
    """Without --file, the flags must describe a whole request."""
    if args.file:
        return
    missing = [flag for flag, present in needs.items() if not present]
    if missing:
        raise _UsageError(f"without --file, give {', '.join(missing)}")


def _optimize_request(args: argparse.Namespace) -> servewise_pb2.OptimizeBatchRequest:
    from servewise_client.specs import SpecError, optimize_request  # noqa: PLC0415

    spec, base_dir = _spec_from_file(args)
    if args.instance:
        spec["candidates"] = _candidates(args, args.instance)
    elif args.profile is not None or args.linear is not None or args.max_batch is not None:
        raise _UsageError("--profile, --linear and --max-batch need --instance NAME:PRICE")
    _merge_workload(spec, args)
    if args.max_replicas is not None:
        spec.setdefault("limits", {})["max_replicas"] = args.max_replicas
    if args.batch_sizes is not None:
        spec.setdefault("limits", {})["allowed_batch_sizes"] = args.batch_sizes
    if args.max_delay_ms is not None:
        spec.setdefault("limits", {})["max_queue_delay_ms"] = args.max_delay_ms
    if args.current is not None:
        spec["current_plan"] = args.current
    _require(
        spec,
        args,
        {
            "--instance": bool(args.instance),
            "--rate": args.rate is not None,
            "--slo-ms": args.slo_ms is not None,
        },
    )
    try:
        return optimize_request(spec, base_dir=base_dir)
    except SpecError as exc:
        raise _Failure(f"{args.file or 'request'}: {exc}") from None


def _simulate_request(args: argparse.Namespace) -> servewise_pb2.SimulateRequest:
    from servewise_client.specs import SpecError, simulate_request  # noqa: PLC0415

    spec, base_dir = _spec_from_file(args)
    if args.instance:
        spec.pop("candidates", None)
        spec["candidate"] = _candidates(args, [args.instance])[0]
    elif args.profile is not None or args.linear is not None or args.max_batch is not None:
        raise _UsageError("--profile, --linear and --max-batch need --instance NAME:PRICE")
    _merge_workload(spec, args)
    plan = spec.setdefault("plan", {})
    if args.batch is not None:
        plan["max_batch_size"] = args.batch
    if args.delay_ms is not None:
        plan["max_queue_delay_ms"] = args.delay_ms
    if args.replicas is not None:
        plan["replicas"] = args.replicas
    if args.num_requests is not None:
        spec["num_requests"] = args.num_requests
    if args.distribution is not None:
        spec["service_time_distribution"] = args.distribution
    _require(
        spec,
        args,
        {
            "--instance": bool(args.instance),
            "--rate": args.rate is not None,
            "--batch": args.batch is not None,
            "--replicas": args.replicas is not None,
        },
    )
    try:
        return simulate_request(spec, base_dir=base_dir)
    except SpecError as exc:
        raise _Failure(f"{args.file or 'request'}: {exc}") from None


# --- calling the server ----------------------------------------------------------------------


@contextmanager
def _quiet_server_logs() -> Iterator[None]:
    """While an in-process server runs: its log lines go to stderr, warnings and above only,
    so stdout carries just the command's output. The previous structlog config is restored."""
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


@contextmanager
def local_server() -> Iterator[str]:
    """The real server (servicer, interceptor, health) on 127.0.0.1:0, on its own thread's
    event loop, for as long as the block runs; yields its address."""
    import threading  # noqa: PLC0415

    from servewise.server import start_server  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="servewise-local", daemon=True)
    thread.start()
    try:
        with _quiet_server_logs():
            running = asyncio.run_coroutine_threadsafe(
                start_server("127.0.0.1:0", metrics_address=None, enable_reflection=False), loop
            ).result()
            try:
                yield f"127.0.0.1:{running.port}"
            finally:
                asyncio.run_coroutine_threadsafe(running.stop(None), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[ServewiseClient]:
    from servewise_client import ServewiseClient  # noqa: PLC0415

    def connect(address: str) -> ServewiseClient:
        try:
            return ServewiseClient(
                address,
                tls=args.tls,
                ca_cert=args.ca_cert,
                client_cert=args.client_cert,
                client_key=args.client_key,
                token=args.token,
                timeout_s=args.timeout_s,
            )
        except (OSError, ValueError) as exc:
            raise _Failure(f"cannot set up the connection: {exc}") from None

    if args.local:
        with local_server() as address, connect(address) as client:
            yield client
    else:
        with connect(args.address) as client:
            yield client


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    from servewise_client import ServewiseError  # noqa: PLC0415

    try:
        with _client(args) as client:
            call: Callable[[Any], Any] = getattr(client, method)
            return call(request)
    except ServewiseError as exc:
        where = "in-process server" if args.local else args.address
        message = exc.one_line()
        if exc.code.name == "UNAVAILABLE" and not args.local:
            message += f" (is a server running at {where}? or use --local)"
        raise _Failure(message) from None


# --- output ----------------------------------------------------------------------------------


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value >= 100:
        return f"{value:,.1f} ms"
    if value >= 10:
        return f"{value:.2f} ms"
    return f"{value:.3f} ms"


def _money(value: float) -> str:
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}" if abs(value) >= 0.01 else f"${value:.3g}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"


def _plan_text(plan: Any) -> str:
    return (
        f"{plan.instance_type} B={plan.max_batch_size} T={plan.max_queue_delay_ms:g} ms "
        f"N={plan.replicas}"
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _cost_text(assessment: Any) -> str:
    return (
        f"{_money(assessment.cost_per_hour)}/hour, "
        f"{_money(assessment.cost_per_million_requests)} per million requests"
    )


def _slo_text(request: Any) -> str:
    percentile = request.slo.percentile if request.slo.HasField("percentile") else 99.0
    return f"p{percentile:g} <= {_ms(request.slo.latency_ms)}"


def _rows(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"{indent}{label.ljust(width)}  {value}" for label, value in rows]


def format_plan(
    request: servewise_pb2.OptimizeBatchRequest, response: servewise_pb2.OptimizeBatchResponse
) -> str:
    """The OptimizeBatch answer as a table for people."""
    from servewise.v1 import types_pb2  # noqa: PLC0415

    rec = response.recommended
    has_plan = response.HasField("recommended")
    status = "feasible" if response.feasible else "INFEASIBLE (closest plan shown)"
    lines = [f"Plan: {_plan_text(rec.plan) if has_plan else 'none'}   [{status}]"]
    rate = rec.utilisation * rec.capacity_per_s if has_plan else request.workload.rate_per_s
    rows = [("SLO", f"{_slo_text(request)} at {_rate(rate)} requests/s")]
    if has_plan:
        rows += [
            (
                "capacity",
                f"{_rate(rec.capacity_per_s)} requests/s (utilisation {_percent(rec.utilisation)})",
            ),
            ("mean batch", f"{rec.mean_batch_size:.2f} requests"),
            ("cost", _cost_text(rec)),
        ]
    lines += _rows(rows)
    if has_plan:
        sim = rec.simulated.latency if rec.HasField("simulated") else None
        pred = rec.predicted_latency
        lines.append("")
        lines.append(f"  {'latency':<10}  {'predicted':>12}  {'simulated':>12}")
        stats = [("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")]
        if pred.HasField("slo_percentile_ms"):
            stats.append(("at SLO pct", "slo_percentile_ms"))
        for label, name in stats:
            simulated = _ms(getattr(sim, name)) if sim is not None else "-"
            lines.append(f"  {label:<10}  {_ms(getattr(pred, name)):>12}  {simulated:>12}")
        if rec.HasField("simulated") and not rec.simulated.stable:
            lines.append(f"  simulation: {rec.simulated.stability_reason}")
        lines.append("")
    rows = []
    if response.HasField("realtime_baseline"):
        base = response.realtime_baseline
        rows.append(("real-time baseline", f"{_plan_text(base.plan)}: {_cost_text(base)}"))
    elif response.realtime_baseline_note:
        rows.append(("real-time baseline", f"none: {response.realtime_baseline_note}"))
    if response.HasField("saving_vs_realtime_per_hour"):
        rows.append(
            (
                "saving vs real-time",
                f"{_money(response.saving_vs_realtime_per_hour)}/hour "
                f"({_percent(response.saving_vs_realtime_fraction)})",
            )
        )
    if response.HasField("current_plan"):
        cur = response.current_plan
        verdict = "meets the SLO" if cur.meets_slo else "misses the SLO"
        rows.append(("current plan", f"{_plan_text(cur.plan)}: {_cost_text(cur)}; {verdict}"))
    if response.HasField("saving_vs_current_per_hour"):
        rows.append(
            (
                "saving vs current",
                f"{_money(response.saving_vs_current_per_hour)}/hour "
                f"({_percent(response.saving_vs_current_fraction)})",
            )
        )
    binding = types_pb2.BindingConstraint.Name(response.binding_constraint)
    binding = binding.removeprefix("BINDING_CONSTRAINT_")
    rows.append(("binding constraint", f"{binding}: {response.binding_reason}"))
    rows.append(("plans considered", f"{response.plans_considered:,}"))
    lines += _rows(rows)
    if response.notes:
        lines.append("  notes:")
        lines += [f"    - {note}" for note in response.notes]
    return "\n".join(lines)


def format_simulation(
    request: servewise_pb2.SimulateRequest, response: servewise_pb2.SimulateResponse
) -> str:
    """The Simulate answer as a table for people."""
    result = response.result
    lat = result.latency
    plan = request.plan
    name = plan.instance_type or request.candidate.instance_type.name
    lines = [
        f"Simulation: {name} B={plan.max_batch_size} T={plan.max_queue_delay_ms:g} ms "
        f"N={plan.replicas}"
    ]
    header = ["mean", "p50", "p90", "p95", "p99", "p99.9"]
    values = [lat.mean_ms, lat.p50_ms, lat.p90_ms, lat.p95_ms, lat.p99_ms, lat.p999_ms]
    lines.append("  latency  " + "  ".join(f"{h:>11}" for h in header))
    lines.append("           " + "  ".join(f"{_ms(v):>11}" for v in values))
    rows = []
    if response.HasField("meets_slo"):
        verdict = "met" if response.meets_slo else "MISSED"
        rows.append(("SLO", f"{_slo_text(request)}: {verdict} ({_ms(lat.slo_percentile_ms)})"))
    stable = "yes" if result.stable else "NO"
    rows += [
        ("throughput", f"{_rate(result.throughput_per_s)} requests/s"),
        ("capacity", f"{_rate(response.capacity_per_s)} requests/s"),
        ("utilisation", _percent(result.utilisation)),
        ("mean batch", f"{result.mean_batch_size:.2f} requests"),
        ("max queue", f"{result.max_queue_length:,} requests"),
        ("stable", f"{stable}: {result.stability_reason}" if result.stability_reason else stable),
        (
            "simulated",
            f"{result.requests_simulated:,} requests over {result.simulated_duration_s:,.4g} s "
            f"(seed {result.seed})",
        ),
    ]
    lines += _rows(rows)
    if response.notes:
        lines.append("  notes:")
        lines += [f"    - {note}" for note in response.notes]
    return "\n".join(lines)


def _print_json(message: Any) -> None:
    from google.protobuf import json_format  # noqa: PLC0415

    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


# --- plan ------------------------------------------------------------------------------------


def _add_plan(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="the cheapest plan meeting an SLO (OptimizeBatch), as a table and exports",
        description=(
            "Ask OptimizeBatch for the cheapest (instance type, batch size, batching delay, "
            "replicas) meeting the SLO, and print it with predicted and simulated latency, "
            "cost, the real-time baseline and the binding constraint. The request comes from "
            "--file, flags, or both (flags win). Example: servewise plan --local "
            "--instance cpu:0.10 --profile profile.yaml --rate 500 --slo-ms 20"
        ),
    )
    _add_optimize_flags(plan)
    out = plan.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the response as JSON")
    out.add_argument(
        "--export-dir",
        metavar="DIR",
        help=(
            "write config.pbtxt (Triton), ray_serve.yaml, torchserve.properties and hpa.yaml "
            "for the recommended plan"
        ),
    )
    out.add_argument(
        "--name",
        default="model",
        help="model / deployment name in the exports (a DNS label: a-z, 0-9, -)",
    )
    out.add_argument(
        "--triton-kind",
        choices=("KIND_GPU", "KIND_CPU", "KIND_AUTO"),
        default="KIND_GPU",
        help="Triton instance_group kind",
    )
    out.add_argument(
        "--hpa-metric",
        choices=("requests_per_second", "cpu"),
        default="requests_per_second",
        help="what the HPA scales on: a per-pod request rate (custom metric) or CPU",
    )
    out.add_argument(
        "--hpa-max-replicas",
        type=_positive_int,
        metavar="N",
        help="HPA maxReplicas (default twice the plan's replicas)",
    )
    _add_connection(plan)
    plan.set_defaults(handler=_run_plan)


def _write_exports(args: argparse.Namespace, response: Any) -> list[Path]:
    from servewise.core.exports import ExportSettings, render_exports  # noqa: PLC0415
    from servewise.core.model import Plan  # noqa: PLC0415

    rec = response.recommended
    plan = Plan(
        instance_type=rec.plan.instance_type,
        max_batch_size=rec.plan.max_batch_size,
        max_queue_delay_ms=rec.plan.max_queue_delay_ms,
        replicas=rec.plan.replicas,
    )
    settings = ExportSettings(
        name=args.name,
        triton_instance_kind=args.triton_kind,
        hpa_metric=args.hpa_metric,
        hpa_max_replicas=args.hpa_max_replicas,
    )
    try:
        files = render_exports(
            plan,
            rate_per_s=rec.utilisation * rec.capacity_per_s,
            utilisation=rec.utilisation,
            settings=settings,
        )
    except ValueError as exc:
        raise _Failure(f"cannot export: {exc}") from None
    directory = Path(args.export_dir)
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = directory / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise _Failure(f"cannot write exports to {directory}: {exc.strerror or exc}") from None
    return written


def _run_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    request = _optimize_request(args)
    response = _call(args, "optimize_batch", request)
    if args.json:
        _print_json(response)
    else:
        print(format_plan(request, response))
    if args.export_dir:
        if not response.feasible:
            raise _Failure("no plan meets the SLO, so there is nothing to export")
        written = _write_exports(args, response)
        stream = sys.stderr if args.json else sys.stdout
        print(f"\nexports: {', '.join(str(p) for p in written)}", file=stream)
    return EXIT_OK


# --- resources -------------------------------------------------------------------------------

_STRATEGY_NAMES: Final = {1: "dedicated", 2: "autoscaled", 3: "shared"}


def _add_resources(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    resources = subparsers.add_parser(
        "resources",
        help="replicas over a day: dedicated vs autoscaled vs shared (PlanResources), exports",
        description=(
            "Ask PlanResources to compare dedicated, autoscaled and (with two or more "
            "deployments and shared_instance_memory_bytes) shared strategies over each "
            "deployment's rate profile, with the recommended autoscaler. The request is a "
            "PlanResourcesRequest in YAML or JSON (proto field names). Example: servewise "
            "resources --local -f day.yaml --export-dir out/"
        ),
    )
    resources.add_argument(
        "-f", "--file", metavar="FILE", required=True, help="PlanResourcesRequest as YAML/JSON"
    )
    out = resources.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the response as JSON")
    out.add_argument(
        "--export-dir",
        metavar="DIR",
        help=(
            "write DIR/<deployment>/ config.pbtxt, ray_serve.yaml, torchserve.properties and "
            "hpa.yaml (the peak plan with the recommended autoscaler)"
        ),
    )
    _add_connection(resources)
    resources.set_defaults(handler=_run_resources)


def _resources_request(path: str) -> Any:
    import yaml  # noqa: PLC0415
    from google.protobuf import json_format  # noqa: PLC0415

    from servewise.v1 import servewise_pb2  # noqa: PLC0415

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise _Failure(f"cannot read {path}: {exc}") from None
    try:
        return json_format.ParseDict(data or {}, servewise_pb2.PlanResourcesRequest())
    except json_format.ParseError as exc:
        raise _Failure(f"{path} is not a PlanResourcesRequest: {exc}") from None


def format_resources(response: Any) -> str:
    """The strategies per deployment and in total, the recommendation and its reasons."""

    def row(s: Any) -> str:
        return (
            f"{_STRATEGY_NAMES.get(s.strategy, '?'):<11}{_money(s.cost_per_day):>12}/day "
            f"{_money(s.cost_per_month):>12}/month  util {_percent(s.mean_utilisation):>6}  "
            f"{_money(s.cost_per_million_requests)}/M  risk {s.slo_risk_minutes:.3g} min  "
            f"peak {s.peak_replicas}, mean {s.mean_replicas:.2f}"
        )

    lines: list[str] = []
    for d in response.deployments:
        lines.append(f"{d.name}: {_plan_text(d.plan)} at the peak")
        lines += [f"  {row(s)}" for s in d.strategies]
        a = d.recommended_autoscaler
        lines.append(
            f"  recommended autoscaler: min {a.min_replicas}, max {a.max_replicas}, target "
            f"{_percent(a.target_utilisation)}, windows up {a.scale_up_window_s:g} s / down "
            f"{a.scale_down_window_s:g} s, start-up {a.startup_delay_s:g} s, cooldown "
            f"{a.cooldown_s:g} s"
        )
    lines.append("total:")
    lines += [f"  {row(t)}" for t in response.totals]
    chosen = _STRATEGY_NAMES.get(response.recommended_strategy, "none")
    lines.append(f"recommended: {chosen}")
    lines += [f"  {reason}" for reason in response.reasons]
    if response.notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in response.notes]
    return "\n".join(lines)


def _run_resources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    request = _resources_request(args.file)
    response = _call(args, "plan_resources", request)
    if args.json:
        _print_json(response)
    else:
        print(format_resources(response))
    if args.export_dir:
        from servewise.core.exports import dns_label  # noqa: PLC0415

        written: list[Path] = []
        try:
            for d in response.deployments:
                directory = Path(args.export_dir) / dns_label(d.name)
                directory.mkdir(parents=True, exist_ok=True)
                e = d.exports
                for name, text in (
                    ("config.pbtxt", e.triton_config_pbtxt),
                    ("ray_serve.yaml", e.ray_serve_yaml),
                    ("torchserve.properties", e.torchserve_properties),
                    ("hpa.yaml", e.hpa_yaml),
                ):
                    if text:
                        (directory / name).write_text(text, encoding="utf-8")
                        written.append(directory / name)
        except OSError as exc:
            raise _Failure(f"cannot write exports: {exc.strerror or exc}") from None
        stream = sys.stderr if args.json else sys.stdout
        print(f"\nexports: {', '.join(str(p) for p in written)}", file=stream)
    return EXIT_OK


# --- simulate --------------------------------------------------------------------------------


def _add_simulate(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="simulate one plan (Simulate) and print its latency and utilisation",
        description=(
            "Run the discrete-event simulation of one plan and workload and print the latency "
            "percentiles, throughput, utilisation and whether the queue settled. The request "
            "comes from --file (a Simulate spec, or a plan spec whose candidate is chosen by "
            "the plan's instance type), flags, or both (flags win). Example: servewise simulate "
            "--local --instance cpu:0.10 --linear 2:0.5:64 --rate 500 --batch 16 --delay-ms 2 "
            "--replicas 2 --slo-ms 20"
        ),
    )
    _add_request_file(simulate, "the Simulate request")
    _add_candidate_flags(simulate, many=False)
    _add_workload_flags(simulate)
    group = simulate.add_argument_group("plan")
    group.add_argument("--batch", type=_positive_int, metavar="B", help="max batch size")
    group.add_argument(
        "--delay-ms", type=_non_negative_float, metavar="T", help="max queue delay (default 0)"
    )
    group.add_argument("--replicas", type=_positive_int, metavar="N", help="replicas")
    group.add_argument(
        "--num-requests", type=_positive_int, metavar="N", help="requests to simulate"
    )
    group.add_argument(
        "--distribution",
        choices=("deterministic", "exponential"),
        help="service time distribution around s(b) (default deterministic)",
    )
    simulate.add_argument("--json", action="store_true", help="print the response as JSON")
    _add_connection(simulate)
    simulate.set_defaults(handler=_run_simulate)


def _run_simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    request = _simulate_request(args)
    response = _call(args, "simulate", request)
    if args.json:
        _print_json(response)
    else:
        print(format_simulation(request, response))
    return EXIT_OK


# --- profile ---------------------------------------------------------------------------------


def _add_profile(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    profile = subparsers.add_parser(
        "profile",
        help="measure a model's latency and memory against batch size on this machine",
        description=(
            "Run a model at each batch size (warm-up runs, then timed runs) and record the "
            "median and p99 latency of a batch and the memory it used, in a profile file that "
            "`servewise plan --profile` reads. MODEL is an ONNX file (run by ONNX Runtime on "
            "this CPU; its first input dimension must be dynamic), or give --callable "
            "MODULE:FUNCTION, called as FUNCTION(batch_size) to run one batch. Needs "
            "pip install 'servewise[profile]'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    profile.add_argument("model", nargs="?", metavar="MODEL", help="ONNX model file")
    profile.add_argument(
        "--callable",
        metavar="MODULE:FUNCTION",
        help="profile a Python callable instead of an ONNX model",
    )
    profile.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default="1..64",
        metavar="LIST",
        help="batch sizes: 1,2,4,8 or 1..64 (powers of two)",
    )
    profile.add_argument(
        "--warmup", type=_non_negative_int, default=5, metavar="N", help="untimed runs per size"
    )
    profile.add_argument(
        "--repeats", type=_positive_int, default=30, metavar="N", help="timed runs per size"
    )
    profile.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="ONNX Runtime intra-op threads (0: its default, one per core)",
    )
    profile.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="INPUT=D1,D2,...",
        help="dimensions after the batch one, for inputs whose shape is symbolic",
    )
    profile.add_argument(
        "-o",
        "--output",
        default="profile.yaml",
        metavar="FILE",
        help="profile file to write (.json for JSON, else YAML)",
    )
    profile.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    profile.add_argument(
        "--json", action="store_true", help="print the profile as JSON instead of a table"
    )
    profile.set_defaults(handler=_run_profile)


def format_profile(profile: Any) -> str:
    """A profile file's points as a table."""
    lines = [
        f"Profile of {profile.metadata.get('model', '?')} "
        f"({profile.metadata.get('runtime', '?')}, {profile.metadata.get('cpu', '?')})",
        f"  {'batch':>5}  {'median':>11}  {'p99':>11}  {'items/s':>10}  {'memory':>10}",
    ]
    for point in profile.points:
        memory = "-" if point.memory_bytes is None else f"{point.memory_bytes / 2**20:.2f} MiB"
        per_s = point.batch_size / point.latency_ms * 1000.0
        p99 = "-" if point.p99_latency_ms is None else _ms(point.p99_latency_ms)
        lines.append(
            f"  {point.batch_size:>5}  {_ms(point.latency_ms):>11}  {p99:>11}  "
            f"{per_s:>10,.0f}  {memory:>10}"
        )
    if profile.memory is not None:
        lines.append(
            f"  memory fit: {profile.memory.model_bytes / 2**20:.1f} MiB + "
            f"{profile.memory.bytes_per_item / 2**10:.1f} KiB per item"
        )
    return "\n".join(lines)


def _run_profile(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.model is None) == (args.callable is None):
        raise _UsageError("give an ONNX MODEL file or --callable MODULE:FUNCTION (one of them)")
    if args.callable is not None and (args.shape or args.threads):
        raise _UsageError("--shape and --threads apply to ONNX models only")
    shapes = dict(args.shape or [])
    from servewise_client.profile_file import dump_profile, write_profile  # noqa: PLC0415

    from servewise import profiling  # noqa: PLC0415

    batch_sizes = args.batch_sizes
    if isinstance(batch_sizes, str):  # the default, which argparse passes through type=
        batch_sizes = _batch_sizes(batch_sizes)
    try:
        runner: profiling.BatchRunner
        if args.callable is not None:
            runner = profiling.CallableRunner(args.callable)
        else:
            runner = profiling.OnnxRunner(args.model, threads=args.threads, shapes=shapes)
        measurements = profiling.measure(
            runner,
            batch_sizes,
            warmup=args.warmup,
            repeats=args.repeats,
            progress=args.progress,
        )
    except profiling.ProfilingError as exc:
        raise _Failure(str(exc)) from None
    result = profiling.to_profile_file(
        measurements, runner, warmup=args.warmup, repeats=args.repeats
    )
    try:
        write_profile(args.output, result)
    except OSError as exc:
        raise _Failure(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if args.json:
        print(dump_profile(result, as_json=True), end="")
    else:
        print(format_profile(result))
        print(f"\nwrote {args.output}")
    return EXIT_OK


# --- plot ------------------------------------------------------------------------------------


def _add_plot(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    plot = subparsers.add_parser(
        "plot",
        help="the cost-latency frontier of a plan request as a PNG",
        description=(
            "Ask OptimizeBatch (same request flags as `servewise plan`) and draw its "
            "cost-latency frontier: cost per hour against latency at the SLO percentile, "
            "plans meeting the SLO marked, the recommendation, the real-time baseline and the "
            "current plan highlighted. Needs pip install 'servewise[plot]'."
        ),
    )
    _add_optimize_flags(plot)
    plot.add_argument(
        "-o", "--output", default="frontier.png", metavar="FILE", help="PNG file to write"
    )
    plot.add_argument("--title", help="chart title (default: the SLO and rate)")
    _add_connection(plot)
    plot.set_defaults(handler=_run_plot)


def render_frontier_png(
    request: servewise_pb2.OptimizeBatchRequest,
    response: servewise_pb2.OptimizeBatchResponse,
    path: str | Path,
    title: str | None = None,
) -> None:
    """Draw the frontier of ``response`` into the PNG file ``path`` (matplotlib, Agg)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise _Failure("matplotlib is not installed; pip install 'servewise[plot]'") from None

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = list(response.frontier)
    for meets, colour, label in (
        (True, "tab:green", "meets SLO"),
        (False, "tab:red", "misses SLO"),
    ):
        chosen = [p for p in points if p.meets_slo == meets]
        if chosen:
            axes.plot(
                [p.cost_per_hour for p in chosen],
                [p.latency_ms for p in chosen],
                "o",
                color=colour,
                label=f"frontier ({label})",
            )
    if points:
        ordered = sorted(points, key=lambda p: p.cost_per_hour)
        axes.plot(
            [p.cost_per_hour for p in ordered],
            [p.latency_ms for p in ordered],
            "-",
            color="grey",
            linewidth=0.8,
        )
        for p in points:
            axes.annotate(
                f"B={p.plan.max_batch_size} N={p.plan.replicas}",
                (p.cost_per_hour, p.latency_ms),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    marks: list[tuple[Any, str, str, str]] = []
    if response.HasField("recommended"):
        marks.append((response.recommended, "recommended", "*", "tab:blue"))
    if response.HasField("realtime_baseline"):
        marks.append((response.realtime_baseline, "real-time baseline", "s", "tab:orange"))
    if response.HasField("current_plan"):
        marks.append((response.current_plan, "current plan", "D", "tab:purple"))
    for assessed, label, marker, colour in marks:
        latency = assessed.predicted_latency
        y = latency.slo_percentile_ms if latency.HasField("slo_percentile_ms") else latency.p99_ms
        axes.plot(
            [assessed.cost_per_hour],
            [y],
            marker,
            color=colour,
            markersize=12 if marker == "*" else 8,
            label=f"{label}: {_plan_text(assessed.plan)}",
        )
    axes.axhline(request.slo.latency_ms, color="black", linestyle="--", linewidth=1, label="SLO")
    percentile = request.slo.percentile if request.slo.HasField("percentile") else 99.0
    axes.set_xlabel("cost per hour")
    axes.set_ylabel(f"p{percentile:g} latency (ms)")
    rec = response.recommended
    rate = rec.utilisation * rec.capacity_per_s if response.HasField("recommended") else 0.0
    axes.set_title(
        title or f"Cost-latency frontier: {_slo_text(request)} at {_rate(rate)} requests/s"
    )
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(str(path), format="png")


def _run_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    request = _optimize_request(args)
    response = _call(args, "optimize_batch", request)
    if not response.frontier:
        raise _Failure("the response has no frontier to plot")
    try:
        render_frontier_png(request, response, args.output, args.title)
    except OSError as exc:
        raise _Failure(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output}: {len(response.frontier)} frontier points")
    return EXIT_OK


# --- replay ----------------------------------------------------------------------------------


def _add_replay(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    replay = subparsers.add_parser(
        "replay",
        help="replay a request trace over the controller and four baseline strategies",
        description=(
            "Cut a trace of request timestamps into intervals, simulate each interval's real "
            "arrivals with the plan in force, and report cost, SLO-violation minutes and "
            "switches for: the controller, static real-time and static batching sized for the "
            "peak, a naive threshold switcher, and the hindsight-optimal schedule. Runs locally "
            "(no server). Example: servewise replay AzureLLMInferenceTrace_conv.csv "
            "--instance gpu:2 --linear 200:20:64 --slo-ms 2000 --time-scale 4 --interval-s 15"
        ),
    )
    replay.add_argument(
        "trace",
        metavar="TRACE.csv",
        help="CSV with a TIMESTAMP column (Azure LLM inference traces) or one column of seconds",
    )
    _add_candidate_flags(replay, many=True)
    group = replay.add_argument_group("workload, SLO and replay")
    group.add_argument(
        "--slo-ms", type=_positive_float, required=True, metavar="MS", help="SLO latency bound"
    )
    group.add_argument(
        "--percentile", type=_percentile, metavar="P", help="SLO percentile (default 99)"
    )
    group.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="K",
        help="divide the trace's times by K (K times the recorded rate)",
    )
    group.add_argument(
        "--interval-s",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="interval length in the scaled clock (default 60)",
    )
    group.add_argument(
        "--cold-start-s",
        type=_non_negative_float,
        default=60.0,
        metavar="S",
        help="cold start of a new plan's replicas, on every instance type (default 60)",
    )
    group.add_argument("--max-replicas", type=_positive_int, metavar="N", help="replica limit")
    group.add_argument("--seed", type=_non_negative_int, help="simulation seed (0: fixed default)")
    out = replay.add_argument_group("output")
    out.add_argument("--out-json", metavar="FILE", help="write the per-interval report as JSON")
    out.add_argument("--out-png", metavar="FILE", help="write a timeline chart (PNG)")
    replay.set_defaults(handler=_run_replay)


def _replay_inputs(args: argparse.Namespace) -> Any:
    """The validated OptimizeArgs (core candidates, SLO, limits) from the candidate flags."""
    from servewise_client.specs import SpecError, optimize_request  # noqa: PLC0415

    from servewise.api.converters import optimize_args  # noqa: PLC0415
    from servewise.core.errors import InvalidInputError  # noqa: PLC0415

    if not args.instance:
        raise _UsageError("give --instance NAME:PRICE (and --profile FILE or --linear ...)")
    instances = [{**i, "cold_start_s": args.cold_start_s} for i in args.instance]
    spec: dict[str, Any] = {
        "candidates": _candidates(args, instances),
        "workload": {"rate_per_s": 1.0},
        "slo": {"latency_ms": args.slo_ms},
    }
    if args.percentile is not None:
        spec["slo"]["percentile"] = args.percentile
    if args.basis is not None:
        spec["service_time_basis"] = args.basis
    if args.max_replicas is not None:
        spec["limits"] = {"max_replicas": args.max_replicas}
    try:
        return optimize_args(optimize_request(spec, base_dir=None))
    except (SpecError, InvalidInputError) as exc:
        raise _Failure(f"request: {exc}") from None


def format_replay(result: Any) -> str:
    lines = [f"  {note}" for note in result.notes]
    be = result.break_even_rate_per_s
    lines.insert(0, "replay:")
    lines.append(
        "  break-even rate (batching cheaper than real-time): "
        + ("none on the ladder" if math.isinf(be) else f"{be:.4g}/s")
    )
    lines.append(
        f"  {'strategy':<22}{'cost':>12}{'switch cost':>14}{'violation min':>15}{'switches':>10}"
        f"{'scales':>8}{'migrations':>12}"
    )
    for name, s in result.strategies.items():
        lines.append(
            f"  {name:<22}{_money(s.cost):>12}{_money(s.switch_cost):>14}"
            f"{s.violation_minutes:>15.4g}{s.switches:>10}{s.scales:>8}{s.migrations:>12}"
        )
    lines.append(
        "  switches = scales (the replica count alone changes) + migrations (instance type, "
        "batch size or delay change)"
    )
    return "\n".join(lines)


def _run_replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json  # noqa: PLC0415

    from servewise.core import replay  # noqa: PLC0415

    inputs = _replay_inputs(args)
    try:
        times = replay.read_trace(args.trace)
    except replay.TraceError as exc:
        raise _Failure(str(exc)) from None
    try:
        result = replay.replay(
            times,
            inputs.candidates,
            inputs.slo,
            interval_s=args.interval_s,
            time_scale=args.time_scale,
            limits=inputs.limits,
            seed=args.seed or 1,
        )
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    print(format_replay(result))
    try:
        if args.out_json:
            Path(args.out_json).write_text(
                json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8"
            )
            print(f"wrote {args.out_json}")
        if args.out_png:
            replay.render_png(result, args.out_png, f"{Path(args.trace).name}")
            print(f"wrote {args.out_png}")
    except OSError as exc:
        raise _Failure(f"cannot write: {exc.strerror or exc}") from None
    return EXIT_OK


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
    _add_plan(subparsers)
    _add_resources(subparsers)
    _add_simulate(subparsers)
    _add_profile(subparsers)
    _add_plot(subparsers)
    _add_replay(subparsers)
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

    from servewise.auth import AuthConfig, AuthConfigError  # noqa: PLC0415
    from servewise.limits import Limits, specs  # noqa: PLC0415
    from servewise.obs import configure_logging  # noqa: PLC0415
    from servewise.server import serve  # noqa: PLC0415

    try:
        auth = AuthConfig.from_settings(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            tokens_file=args.tokens_file,
            tokens_env=os.environ.get("SERVEWISE_TOKENS"),
        )
    except AuthConfigError as exc:
        parser.error(str(exc))

    limits = Limits(**{s.name: getattr(args, f"limit_{s.name}") for s in specs()})
    configure_logging(args.log_level)
    try:
        asyncio.run(
            serve(
                args.address,
                metrics_address,
                args.grace_s,
                store_url=args.store,
                auth=auth,
                limits=limits,
                worker_processes=args.worker_processes,
            )
        )
    except AuthConfigError as exc:  # a certificate or key that does not load
        _fail(str(exc))
        return EXIT_FAILURE
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
    except _UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "serve" else EXIT_FAILURE
