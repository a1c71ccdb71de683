"""Requests whose bytes are not a valid message get INVALID_ARGUMENT, not UNKNOWN.

grpc deserialises a request before any servicer code runs; when the bytes are not the method's
message (random bytes, a truncated frame, another message's wire form), grpc answers UNKNOWN
with the DecodeError's text. This interceptor wraps each handler's deserializer so a decode
failure becomes a marker, and the handler answers the marker with INVALID_ARGUMENT and a
google.rpc.BadRequest naming the request itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError

from servewise.core.errors import FieldViolation, InvalidInputError
from servewise.obs import ServerInterceptorBase

if TYPE_CHECKING:
    from servewise.api.errors import AbortsWithStatus


class _Malformed:
    """Stands in for a request that did not decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as error:
            return _Malformed(error)

    return decode


def _status(marker: _Malformed) -> grpc.Status:
    # Imported here: servewise.api pulls in the servicer and the whole core, which the server
    # module (and `servewise --help`) must not load at import time.
    from servewise.api.errors import bad_request_status  # noqa: PLC0415

    return bad_request_status(
        InvalidInputError(
            [FieldViolation("request", f"is not a valid message of this method: {marker.error}")]
        )
    )


def _guard_unary(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await cast("AbortsWithStatus", context).abort_with_status(_status(request))
        return await behaviour(request, context)

    return handle


def _guard_stream(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def handle(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await cast("AbortsWithStatus", context).abort_with_status(_status(request))
                yield request

        async for response in behaviour(checked(), context):
            yield response

    return handle


class MalformedRequestInterceptor(ServerInterceptorBase):
    """Turns undecodable requests into INVALID_ARGUMENT for every unary and stream method."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # None for an unknown method (gRPC answers UNIMPLEMENTED itself); the stubs say otherwise.
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        deserializer = _safe(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary), deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _guard_stream(handler.stream_stream), deserializer, handler.response_serializer
            )
        return handler
