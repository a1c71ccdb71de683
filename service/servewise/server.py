"""The grpc.aio server: ServewiseService, health, reflection, logging/metrics interceptor.

:func:`start_server` starts everything and returns a :class:`RunningServer` (tests use it
in-process with port 0); :func:`serve` is what ``servewise serve`` runs: start, wait for SIGTERM
or SIGINT, drain, stop.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # not in stubs
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from servewise.allocator import keep_large_buffers
from servewise.auth import AuthConfig
from servewise.limits import DEFAULT_LIMITS, Limits
from servewise.obs import ObservabilityInterceptor
from servewise.store import StateStore
from servewise.store.factory import open_store
from servewise.v1 import servewise_pb2, servewise_pb2_grpc
from servewise.wire import MalformedRequestInterceptor

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_GRACE_S",
    "DEFAULT_METRICS_ADDRESS",
    "SERVICE_NAME",
    "RunningServer",
    "check_bindable",
    "parse_host_port",
    "serve",
    "start_server",
]

DEFAULT_ADDRESS: Final = "localhost:50051"
DEFAULT_METRICS_ADDRESS: Final = "localhost:9464"
DEFAULT_GRACE_S: Final = 10.0
# Replayed traces travel as repeated doubles; gRPC's 4 MiB default is ~500k timestamps.
DEFAULT_MAX_MESSAGE_BYTES: Final = DEFAULT_LIMITS.max_message_bytes

SERVICE_NAME: Final[str] = servewise_pb2.DESCRIPTOR.services_by_name["ServewiseService"].full_name
# Every service in the generated descriptors, so reflection lists new ones without edits here.
API_SERVICE_NAMES: Final[tuple[str, ...]] = tuple(
    service.full_name for service in servewise_pb2.DESCRIPTOR.services_by_name.values()
)
HEALTH_SERVICE_NAME: Final[str] = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_log = structlog.get_logger("servewise.server")


def parse_host_port(address: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises
    ------
    ValueError
        Naming ``what`` when the address has no host, no port, or a port outside 0-65535.

    Examples
    --------
    >>> parse_host_port("localhost:9464")
    ('localhost', 9464)
    >>> parse_host_port("[::]:50051")
    ('::', 50051)
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{what} must be HOST:PORT with a port in 0-65535, got {address!r}")
    return host, int(port_text)


@dataclass
class RunningServer:
    """A started server; ``port`` is the bound gRPC port (the real one when asked for port 0)."""

    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped in grpc-stubs)
    metrics_port: int | None = None
    _metrics_httpd: WSGIServer | None = None
    _metrics_thread: threading.Thread | None = None
    _stopped: bool = field(default=False)
    # The store start_server opened itself (closed on stop); None when the caller passed one.
    _store: StateStore | None = None
    # The servicer, whose ``aclose`` (background work such as Route's store poller) stop awaits.
    _servicer: object | None = None

    async def stop(self, grace_s: float | None = DEFAULT_GRACE_S) -> None:
        """Drain and stop: health NOT_SERVING, refuse new RPCs, let running ones finish.

        In-flight RPCs get ``grace_s`` seconds (``None``: cancelled at once). Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        _log.info("server_draining", port=self.port, grace_s=grace_s)
        await self.health.enter_graceful_shutdown()
        drain = getattr(self._servicer, "drain", None)  # Control streams end with a status
        if drain is not None:
            await drain()
        await self.server.stop(grace_s)
        aclose = getattr(self._servicer, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._metrics_httpd is not None:
            await asyncio.to_thread(self._metrics_httpd.shutdown)
            self._metrics_httpd.server_close()
        if self._metrics_thread is not None:
            await asyncio.to_thread(self._metrics_thread.join, 5.0)
        if self._store is not None:
            self._store.close()
        _log.info("server_stopped", port=self.port)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self.server.wait_for_termination()


def check_bindable(host: str, port: int) -> None:
    """Raise ``OSError`` when no address ``host`` resolves to can be bound on ``port``.

    gRPC reports a failed bind with a C-core log line and a generic message; trying first gives
    the caller the operating system's own reason ("Address already in use") in one line.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    first_error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
        except OSError as exc:
            first_error = first_error or exc
        else:
            return
    if first_error is not None:
        raise first_error


def _default_servicer(
    store: StateStore, limits: Limits = DEFAULT_LIMITS, worker_processes: int | None = None
) -> servewise_pb2_grpc.ServewiseServiceServicer:
    # Imported here so that importing servewise.server (for parse_host_port, constants, the CLI's
    # --help) does not pull in the servicer's whole dependency tree.
    from servewise.api.servicer import ServewiseServicer  # noqa: PLC0415

    # mypy-protobuf marks every generated servicer method abstract, so a servicer that inherits
    # the UNIMPLEMENTED defaults looks abstract to mypy although it is instantiable at run time.
    factory = cast(
        "Callable[[StateStore, Limits, int | None], servewise_pb2_grpc.ServewiseServiceServicer]",
        ServewiseServicer,
    )
    return factory(store, limits, worker_processes)


def _servicer_and_store(
    servicer: servewise_pb2_grpc.ServewiseServiceServicer | None,
    store: StateStore | None,
    limits: Limits = DEFAULT_LIMITS,
    worker_processes: int | None = None,
) -> tuple[servewise_pb2_grpc.ServewiseServiceServicer, StateStore | None]:
    """The servicer to serve, and the store opened here (to close on stop), if any."""
    if servicer is not None:
        return servicer, None
    owned = open_store() if store is None else None
    used = store if store is not None else cast(StateStore, owned)
    return _default_servicer(used, limits, worker_processes), owned


def _start_metrics(metrics_address: str) -> tuple[WSGIServer, threading.Thread, int]:
    host, port = parse_host_port(metrics_address, what="metrics address")
    httpd, thread = start_http_server(port, addr=host)
    return httpd, thread, int(httpd.server_address[1])


async def start_server(
    address: str = DEFAULT_ADDRESS,
    metrics_address: str | None = DEFAULT_METRICS_ADDRESS,
    *,
    servicer: servewise_pb2_grpc.ServewiseServiceServicer | None = None,
    store: StateStore | None = None,
    enable_reflection: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    auth: AuthConfig | None = None,
    worker_processes: int | None = None,
) -> RunningServer:
    """Start ServewiseService with health, reflection, logging and metrics.

    Parameters
    ----------
    address:
        ``HOST:PORT`` to listen on; port 0 picks a free port (see ``RunningServer.port``).
    metrics_address:
        ``HOST:PORT`` for Prometheus text over HTTP (``/metrics``); ``None``, ``""`` or ``"off"``
        disables it. Port 0 picks a free port (see ``RunningServer.metrics_port``).
    servicer:
        The ServewiseService implementation; ``servewise.api.servicer.ServewiseServicer(store)``
        when omitted.
    store:
        Deployment state for the default servicer; when omitted, the store ``SERVEWISE_STORE``
        names (:func:`servewise.store.factory.open_store`), closed by ``RunningServer.stop``.
        Ignored when ``servicer`` is given.
    enable_reflection:
        Serve ``grpc.reflection.v1alpha`` so ``grpcurl list`` / ``describe`` work.
    limits:
        The server's limits (:mod:`servewise.limits`): message size and streams per connection
        here, the rest in the default servicer.
    auth:
        TLS (mutual with a client CA) and bearer tokens (:mod:`servewise.auth`); the default
        is a plaintext port without tokens.
    worker_processes:
        Worker processes of the default servicer's OptimizeBatch (:mod:`servewise.api.offload`);
        None: ``SERVEWISE_WORKER_PROCESSES`` or one per CPU.

    Returns
    -------
    RunningServer
        Health reports SERVING for ``""`` and ``servewise.v1.ServewiseService``.

    Raises
    ------
    ValueError
        A malformed address.
    OSError, RuntimeError
        An address that cannot be bound.
    servewise.auth.AuthConfigError
        Unreadable or mismatched TLS files.
    """
    # Auth: TLS credentials are checked before anything is bound; the token interceptor sits
    # inside observability (refusals are logged and counted) and outside everything else.
    auth = auth or AuthConfig()
    credentials = auth.server_credentials()
    host, requested_port = parse_host_port(address)
    if requested_port != 0:
        try:
            check_bindable(host, requested_port)
        except OSError as exc:
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    server = grpc.aio.server(
        # Observability outermost, so undecodable requests are logged and counted too.
        interceptors=[
            ObservabilityInterceptor(),
            *auth.interceptors(),
            MalformedRequestInterceptor(),
        ],
        options=[
            # Without this, Linux lets a second server share the port and fails nothing.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ],
    )
    servicer, owned_store = _servicer_and_store(servicer, store, limits, worker_processes)
    servewise_pb2_grpc.add_ServewiseServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _NOT_SERVING)
    if enable_reflection:
        reflection.enable_server_reflection(
            (*API_SERVICE_NAMES, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    try:
        port = auth.add_port(server, address, credentials)
    except RuntimeError as exc:
        if owned_store is not None:
            owned_store.close()
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:  # older grpcio versions report a failed bind this way
        if owned_store is not None:
            owned_store.close()
        raise OSError(f"cannot listen on {address}")

    running = RunningServer(server=server, port=port, health=health_servicer)
    running._store = owned_store
    running._servicer = servicer
    if metrics_address and metrics_address.lower() != "off":
        try:
            httpd, thread, metrics_port = _start_metrics(metrics_address)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {metrics_address}: {exc}") from exc
        running.metrics_port = metrics_port
        running._metrics_httpd = httpd
        running._metrics_thread = thread

    try:
        await server.start()
    except BaseException:
        await running.stop(None)
        raise
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _SERVING)
    _log.info(
        "server_started",
        address=address,
        port=port,
        metrics_port=running.metrics_port,
        reflection=enable_reflection,
        **auth.describe(),
    )
    return running


# Allocations between collections of the youngest generation in `servewise serve` (the
# interpreter's default is 700); see serve().
GC_YOUNG_THRESHOLD = 50_000


async def serve(
    address: str = DEFAULT_ADDRESS,
    metrics_address: str | None = DEFAULT_METRICS_ADDRESS,
    grace_s: float = DEFAULT_GRACE_S,
    *,
    store_url: str | None = None,
    auth: AuthConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
    worker_processes: int | None = None,
) -> None:
    """Run the server until SIGTERM or SIGINT, then drain for up to ``grace_s`` seconds.

    ``store_url`` picks the deployment store (:func:`servewise.store.factory.open_store`; None or
    "" reads ``SERVEWISE_STORE``); ``auth`` adds TLS and tokens (:mod:`servewise.auth`)."""
    store = open_store(store_url or None)
    try:
        running = await start_server(
            address,
            metrics_address,
            store=store,
            auth=auth,
            limits=limits,
            worker_processes=worker_processes,
        )
    except BaseException:
        store.close()
        raise
    # Everything allocated so far (modules, descriptors, the servicer) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise took 150-200 ms
    # each under 1,000 Control streams and stalled every stream (bench/stream_load.py). And
    # collect the young generation every 50,000 allocations instead of 700: each pass
    # re-examines everything in flight on 1,000 streams (10-25 ms per older-generation pass),
    # while most per-message garbage is freed by reference counting, not by the collector.
    # Measured on that bench (30 s windows, pairs on one machine): p99 10.2 / 12.4 ms against
    # 39.8 / 19.3 ms with the default thresholds.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    # Simulation buffers stay in the heap between calls (servewise.allocator).
    keep_large_buffers()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        _log.info("signal_received")
        await running.stop(grace_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        store.close()
