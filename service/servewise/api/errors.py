"""The one place that maps domain exceptions to gRPC statuses.

- :class:`InvalidInputError` -> ``INVALID_ARGUMENT`` with ``google.rpc.BadRequest`` details, one
  field violation per problem, so clients can point at every bad field at once.
- any other ``ValueError`` from the core -> ``INVALID_ARGUMENT`` with its message.
- :class:`NotFoundError` (an unknown deployment) -> ``NOT_FOUND``.
- :class:`servewise.store.StaleVersionError` -> ``FAILED_PRECONDITION`` naming both versions.
- :class:`LimitExceededError` (a server limit, :mod:`servewise.limits`) -> ``RESOURCE_EXHAUSTED``
  with a ``google.rpc.QuotaFailure`` naming the limit's flag.
- :class:`servewise.core.cancel.WorkCancelledError` (work stopped because the caller went away) ->
  ``DEADLINE_EXCEEDED`` or ``CANCELLED``; the caller has usually gone, so nobody reads it.
- ``BrokenProcessPool`` (the worker computing the answer died, :mod:`servewise.api.offload`) ->
  ``UNAVAILABLE``: retryable; the call is not rerun in the server, which it might crash too.
- anything else -> ``INTERNAL`` with a generic message; the exception is logged, not leaked.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NoReturn, Protocol, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import (  # type: ignore[import-untyped]  # no stubs for googleapis protos
    code_pb2,
    error_details_pb2,
    status_pb2,
)
from grpc_status import rpc_status

from servewise.core.cancel import WorkCancelledError
from servewise.core.errors import InvalidInputError
from servewise.limits import flag
from servewise.store import StaleVersionError

logger = logging.getLogger(__name__)

# How many field paths the one-line status message names before "and N more".
SUMMARY_FIELDS = 3

INTERNAL_MESSAGE = "internal error; the server logged the details"


class NotFoundError(LookupError):
    """An unknown deployment (NOT_FOUND)."""


class LimitExceededError(Exception):
    """A server limit was reached (RESOURCE_EXHAUSTED); ``limit`` is its Limits field name."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# Exceptions that are the caller's doing: mapped to a status, not logged as server errors.
WORKER_LOST = "the worker process computing the answer stopped (killed or crashed); retry the call"
_EXPECTED = (
    ValueError,
    NotFoundError,
    StaleVersionError,
    LimitExceededError,
    WorkCancelledError,
)


class AbortsWithStatus(Protocol):
    async def abort_with_status(self, status: grpc.Status) -> NoReturn: ...


def summary(error: InvalidInputError) -> str:
    """One line naming the first few invalid fields, e.g.
    ``invalid request: 2 field violations: workload.rate_per_s, slo.latency_ms``."""
    fields = [v.field for v in error.violations]
    named = ", ".join(fields[:SUMMARY_FIELDS])
    more = len(fields) - SUMMARY_FIELDS
    suffix = f" and {more} more" if more > 0 else ""
    noun = "violation" if len(fields) == 1 else "violations"
    return f"invalid request: {len(fields)} field {noun}: {named}{suffix}"


def bad_request_status(error: InvalidInputError) -> grpc.Status:
    """INVALID_ARGUMENT with one BadRequest.FieldViolation per violation."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=summary(error), details=[detail]
    )
    return rpc_status.to_status(status)


def limit_status(error: LimitExceededError) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a QuotaFailure whose subject is the limit's flag."""
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=flag(error.limit), description=str(error)
            )
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(quota)
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=str(error), details=[detail]
    )
    return rpc_status.to_status(status)


def _stop_status(exc: LimitExceededError | WorkCancelledError) -> grpc.Status:
    """RESOURCE_EXHAUSTED for a limit; DEADLINE_EXCEEDED or CANCELLED for stopped work."""
    if isinstance(exc, LimitExceededError):
        return limit_status(exc)
    code = code_pb2.DEADLINE_EXCEEDED if exc.deadline else code_pb2.CANCELLED
    return rpc_status.to_status(status_pb2.Status(code=code, message=str(exc)))


def _plain(code: int, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code, message=message))


def _plain_status(exc: Exception) -> grpc.Status:
    """The status of an exception whose status carries a message alone."""
    if isinstance(exc, NotFoundError):
        return _plain(code_pb2.NOT_FOUND, str(exc))
    if isinstance(exc, StaleVersionError):
        return _plain(
            code_pb2.FAILED_PRECONDITION,
            f"stale state_version: expected {exc.expected}, current is {exc.actual}",
        )
    if isinstance(exc, BrokenProcessPool):
        return _plain(code_pb2.UNAVAILABLE, WORKER_LOST)
    if isinstance(exc, ValueError):
        return _plain(
            code_pb2.INVALID_ARGUMENT, str(exc).splitlines()[0] if str(exc) else "invalid request"
        )
    return _plain(code_pb2.INTERNAL, INTERNAL_MESSAGE)


def status_for(exc: Exception) -> grpc.Status:
    """The status an exception raised while serving a request becomes."""
    if isinstance(exc, InvalidInputError):
        return bad_request_status(exc)
    if isinstance(exc, LimitExceededError | WorkCancelledError):
        return _stop_status(exc)
    return _plain_status(exc)


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """End the RPC with the status for ``exc``; unexpected errors are logged with a traceback."""
    if not isinstance(exc, _EXPECTED):
        logger.error("unexpected error while serving a request", exc_info=exc)
    await cast(AbortsWithStatus, context).abort_with_status(status_for(exc))


SelfT = TypeVar("SelfT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Context = grpc.aio.ServicerContext[Any, Any]


def maps_errors(
    method: Callable[[SelfT, RequestT, Context], Awaitable[ResponseT]],
) -> Callable[[SelfT, RequestT, Context], Coroutine[Any, Any, ResponseT]]:
    """Decorate an async servicer method so domain exceptions become gRPC statuses.

    ``CancelledError`` and grpc's own abort exceptions are BaseExceptions or re-raised untouched.
    """

    @functools.wraps(method)
    async def wrapper(self: SelfT, request: RequestT, context: Context) -> ResponseT:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # mapping every exception is this module's job
            await abort_for(exc, context)

    return wrapper
