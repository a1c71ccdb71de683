"""Observability: structlog JSON logging, Prometheus metrics and the gRPC interceptor joining them.

Every RPC handled by the server goes through :class:`ObservabilityInterceptor`, which

- writes one JSON log line when the RPC ends (``event="rpc"``, ``method``, ``code``,
  ``duration_ms`` and ``deployment_id`` when the request carries one), and
- records the go-grpc-prometheus style metrics ``grpc_server_started_total``,
  ``grpc_server_handled_total``, ``grpc_server_handling_seconds`` and, for streams,
  ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``.

Health checks and reflection calls are counted like any RPC but logged at debug level, so a
Kubernetes probe every few seconds does not flood the log.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO

import grpc
import structlog
from prometheus_client import Counter, Histogram

__all__ = [
    "HANDLED",
    "HANDLING_SECONDS",
    "LOG_LEVELS",
    "STARTED",
    "ObservabilityInterceptor",
    "configure_logging",
    "redact_secrets",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Services whose calls are logged at debug rather than info level (still counted in metrics).
QUIET_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_LABELS: Final = ("grpc_type", "grpc_service", "grpc_method")

# Registered once per process in prometheus_client's default registry (which also carries the
# process_* and python_* collectors); several in-process servers, as in tests, share them.
STARTED: Final = Counter("grpc_server_started", "RPCs started on the server.", _LABELS)
HANDLED: Final = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
HANDLING_SECONDS: Final = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its completion by the application.",
    _LABELS,
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
    ),
)
MSG_RECEIVED: Final = Counter(
    "grpc_server_msg_received", "Stream messages received by the server.", _LABELS
)
MSG_SENT: Final = Counter("grpc_server_msg_sent", "Stream messages sent by the server.", _LABELS)

_log = structlog.get_logger("servewise.rpc")

# Defence in depth for bearer tokens (servewise.auth): nothing here logs request metadata, and
# this scrubs any field named like a credential, or any "Bearer <token>" text, should a future
# log call or an exception message carry one.
_SECRET_KEYS: Final = frozenset({"authorization", "metadata", "invocation_metadata", "token"})
_BEARER_TEXT: Final = re.compile(r"(?i)(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
REDACTED: Final = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _BEARER_TEXT.sub(rf"\1 {REDACTED}", value)
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in _SECRET_KEYS else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """structlog processor: credential-named fields and ``Bearer`` values become [redacted].

    It runs on every log line, the per-RPC one included, so the top level is scanned in place
    and a string is only rewritten when it contains "bearer" (the same result as substituting
    every string, at a fraction of the cost on the hot path; bench/ghz.py's Route figure).
    """
    for key, value in event_dict.items():
        if str(key).lower() in _SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            if "bearer" in value.lower():
                event_dict[key] = _BEARER_TEXT.sub(rf"\1 {REDACTED}", value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = _scrub(value)
    return event_dict


class _HandlerLogger:
    """structlog's logger for our own events: writes each rendered JSON line straight to the
    stdlib handler's stream, under the handler's lock (so lines from stdlib loggers, which go
    through the handler's formatter, never interleave with them).

    Why not route structlog events through stdlib logging as before: that builds two
    LogRecords per line (ProcessorFormatter copies the record), looks up the caller's frame and
    runs the handler chain, which made the per-RPC log line most of the cost of a cheap RPC such
    as Route (issue 6's Route-vs-no-op benchmark, bench/ghz.py).
    """

    __slots__ = ("_handler", "name")

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self._handler = handler
        self.name = name  # for structlog.stdlib.add_logger_name

    def msg(self, message: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(message + "\n")
            handler.stream.flush()
        finally:
            handler.release()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _HandlerLoggerFactory:
    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _HandlerLogger:
        name = args[0] if args and isinstance(args[0], str) else ""
        return _HandlerLogger(self._handler, name)


class _RpcLine:
    """The per-RPC access line at info, written without structlog's processor chain.

    A load balancer calls Route once per request, so this line is written as often as the
    service's cheapest RPC runs; through the chain (context merge, level and logger names,
    timestamp, traceback and secret processors, the renderer) it cost ~17 us, a tenth of what
    Route itself costs the server. The line is the same JSON, with the same fields in the same
    order. Lines that could need a processor (bound context variables, a value that might
    carry a credential) take the structlog path instead.
    """

    __slots__ = ("_handler",)

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def write(self, method: str, code: str, duration_ms: float, deployment_id: str | None) -> bool:
        """Write the line; False (nothing written) when it needs the structlog path."""
        if structlog.contextvars.get_contextvars():
            return False
        text = f'{{"method": {json.dumps(method)}, "code": "{code}", "duration_ms": {duration_ms!r}'
        if deployment_id is not None:
            if "bearer" in deployment_id.lower():
                return False
            text += f', "deployment_id": {json.dumps(deployment_id)}'
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        text += (
            f', "event": "rpc", "level": "info", "logger": "servewise.rpc", '
            f'"timestamp": "{now.isoformat()}Z"}}\n'
        )
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        finally:
            handler.release()
        return True


# Set by configure_logging when info lines are on; None otherwise.
_rpc_line: _RpcLine | None = None


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record, structlog's and the standard library's, as one JSON line.

    structlog events are rendered by structlog itself and written to the stream directly
    (:class:`_HandlerLogger`); records of standard-library loggers go through a handler on the
    root logger whose formatter applies the same processors. Both produce the same fields
    (``event``, ``level``, ``logger``, ``timestamp`` and the event's own), in the same order.

    Parameters
    ----------
    level:
        One of :data:`LOG_LEVELS` (case-insensitive).
    stream:
        Where the lines go; standard output when omitted.
    """
    name = level.lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks as JSON, without frame locals (they can hold request data).
    render: list[structlog.types.Processor] = [
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        # Last before rendering, so it sees contextvars and rendered tracebacks too.
        redact_secrets,
        structlog.processors.JSONRenderer(),
    ]
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    structlog.configure(
        processors=[*shared, *render],
        logger_factory=_HandlerLoggerFactory(handler),
        # Disabled levels are no-op methods: a quiet service's debug line costs nothing.
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, name.upper())),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(name.upper())
    global _rpc_line  # noqa: PLW0603 - the logging configuration is process-wide
    _rpc_line = _RpcLine(handler) if getattr(logging, name.upper()) <= logging.INFO else None


def _split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


def _deployment_id(message: object) -> str | None:
    value = getattr(message, "deployment_id", None)
    return value if isinstance(value, str) and value else None


def _context_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None


class _Call:
    """Book-keeping of one RPC: metrics on start and end, the log line on end."""

    __slots__ = ("_done", "_labels", "_method", "_quiet", "_start", "deployment_id")

    def __init__(self, method: str, rpc_type: str) -> None:
        service, name = _split_method(method)
        self._method = method
        self._labels = (rpc_type, service, name)
        self._quiet = service in QUIET_SERVICES
        self._start = time.perf_counter()
        self._done = False
        self.deployment_id: str | None = None
        STARTED.labels(*self._labels).inc()

    def received(self, message: object) -> None:
        MSG_RECEIVED.labels(*self._labels).inc()
        if self.deployment_id is None:
            self.deployment_id = _deployment_id(message)

    def sent(self) -> None:
        MSG_SENT.labels(*self._labels).inc()

    def finish(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        elapsed = time.perf_counter() - self._start
        HANDLED.labels(*self._labels, code.name).inc()
        HANDLING_SECONDS.labels(*self._labels).observe(elapsed)
        fields: dict[str, Any] = {
            "method": self._method,
            "code": code.name,
            "duration_ms": round(elapsed * 1000.0, 3),
        }
        if self.deployment_id is not None:
            fields["deployment_id"] = self.deployment_id
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {error}"
            _log.error("rpc", exc_info=error, **fields)
        elif self._quiet:
            _log.debug("rpc", **fields)
        elif _rpc_line is None or not _rpc_line.write(
            self._method, code.name, fields["duration_ms"], self.deployment_id
        ):
            _log.info("rpc", **fields)


async def _settle_failure(
    call: _Call, context: grpc.aio.ServicerContext[Any, Any], exc: Exception
) -> NoReturn:
    """Record a handler's exception and turn it into the status the client will see.

    An ``abort()`` already carries its status. A handler that set a code and then raised (the
    generated base class does this for unimplemented methods) is aborted with that code, which
    gives the client the handler's own details instead of an "Unexpected exception" message.
    Anything else is logged with its traceback and re-raised, which gRPC reports as UNKNOWN.
    """
    code = _context_code(context)
    if isinstance(exc, grpc.aio.AbortError):
        call.finish(code or grpc.StatusCode.UNKNOWN)
        raise exc
    if code is not None and code is not grpc.StatusCode.OK:
        call.finish(code)
        details = context.details()
        await context.abort(code, details if isinstance(details, str) else str(exc))
    call.finish(grpc.StatusCode.UNKNOWN, error=exc)
    raise exc


def _finish_ok(call: _Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    call.finish(_context_code(context) or grpc.StatusCode.OK)


async def _watch(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.received(request)
        yield request


# A handler's behaviour: async or sync, taking a request (or request iterator) and a context.
UnaryBehaviour = Callable[..., Any]


def _wrap_unary_response(
    behaviour: UnaryBehaviour, method: str, rpc_type: str, streaming_request: bool
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """Wrap a unary-unary or stream-unary handler (async or sync)."""

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(method, rpc_type)
        if streaming_request:
            request = _watch(request, call)
        else:
            call.deployment_id = _deployment_id(request)
        try:
            result = behaviour(request, context)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            call.finish(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _settle_failure(call, context, exc)
        _finish_ok(call, context)
        return result

    return handler


def _wrap_stream_response(
    behaviour: UnaryBehaviour, method: str, rpc_type: str, streaming_request: bool
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    """Wrap a unary-stream or stream-stream handler.

    Keeps the handler's shape: an async generator stays an async generator; a coroutine that
    writes with ``context.write()`` stays a coroutine.
    """

    def prepare(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[_Call, Any]:
        call = _Call(method, rpc_type)
        if streaming_request:
            request = _watch(request, call)
        else:
            call.deployment_id = _deployment_id(request)
        return call, request

    if inspect.iscoroutinefunction(behaviour):

        async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            call, request = prepare(request, context)
            try:
                await behaviour(request, context)
            except asyncio.CancelledError:
                call.finish(grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                await _settle_failure(call, context, exc)
            _finish_ok(call, context)

        return writer

    async def generator(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call, request = prepare(request, context)
        try:
            responses = behaviour(request, context)
            if isinstance(responses, AsyncIterator):
                async for response in responses:
                    call.sent()
                    yield response
            elif isinstance(responses, Iterator):
                for response in responses:
                    call.sent()
                    yield response
        except (asyncio.CancelledError, GeneratorExit):
            call.finish(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _settle_failure(call, context, exc)
        _finish_ok(call, context)

    return generator


if TYPE_CHECKING:
    ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    ServerInterceptorBase = grpc.aio.ServerInterceptor


class ObservabilityInterceptor(ServerInterceptorBase):
    """Logs one JSON line and records Prometheus metrics for every RPC, of any of the four kinds."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # None for an unknown method (gRPC then answers UNIMPLEMENTED itself); the stubs say
        # otherwise, hence the Optional.
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        method: str = handler_call_details.method
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method, "unary", False),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method, "client_stream", True),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method, "server_stream", False),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream_response(handler.stream_stream, method, "bidi_stream", True),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        return handler
