"""What stands between a call and the work it asks for: limits, deadlines and draining.

- :func:`unary` decorates a unary servicer method: it makes the server's
  :class:`servewise.limits.Limits` current (the validators read the work limits from it), gives
  the call a :class:`servewise.core.cancel.CancelToken` with the call's deadline, cancels it when
  the call is cancelled (the worker thread stops at its next check instead of computing an answer
  nobody reads), and maps exceptions to statuses (:func:`servewise.api.errors.maps_errors`).
- :class:`ControlStreams` counts open Control streams against ``max_control_streams`` and closes
  them cleanly when the server drains.
- :class:`TokenBucket` meters samples on one Control stream (``max_samples_per_s``,
  ``sample_burst``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import grpc
from prometheus_client import Counter

from servewise.api.errors import LimitExceededError, maps_errors
from servewise.core import cancel
from servewise.limits import Limits, described, use

__all__ = [
    "CANCELLED_WORK",
    "LIMIT_EXCEEDED",
    "ControlStreams",
    "HasLimits",
    "StreamSlot",
    "TokenBucket",
    "call_token",
    "unary",
]

CANCELLED_WORK: Final = Counter(
    "servewise_cancelled_work",
    "Computations stopped at a cancellation check because the caller cancelled or its deadline "
    "passed.",
    ["grpc_method"],
)
LIMIT_EXCEEDED: Final = Counter(
    "servewise_limit_exceeded",
    "Requests, streams or samples refused by a server limit (RESOURCE_EXHAUSTED).",
    ["limit"],
)

Context = grpc.aio.ServicerContext[Any, Any]
SelfT = TypeVar("SelfT", bound="HasLimits")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class HasLimits(Protocol):
    limits: Limits


def call_token(context: Context, method: str) -> cancel.CancelToken:
    """A token carrying the call's deadline, counting stopped work under ``method``."""
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + max(remaining, 0.0)
    return cancel.CancelToken(
        deadline, on_stop=lambda _: CANCELLED_WORK.labels(grpc_method=method).inc()
    )


def unary(
    method: Callable[[SelfT, RequestT, Context], Awaitable[ResponseT]],
) -> Callable[[SelfT, RequestT, Context], Coroutine[Any, Any, ResponseT]]:
    """Limits, cancellation and error mapping around a unary servicer method."""
    mapped = maps_errors(method)
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: SelfT, request: RequestT, context: Context) -> ResponseT:
        token = call_token(context, name)
        with use(self.limits), cancel.scope(token):
            try:
                return await mapped(self, request, context)
            except asyncio.CancelledError:
                # grpc cancels the handler when the client cancels or the deadline passes; the
                # worker thread keeps running until its next check sees this.
                token.cancel()
                raise

    return wrapper


@dataclass
class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; starts full."""

    rate_per_s: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self._at = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is available."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)


@dataclass(eq=False)  # identity: slots live in a set
class StreamSlot:
    """One open Control stream: its task, and whether it waits for the client's next message
    (then draining may interrupt it) or is busy (then it stops after the current message)."""

    task: asyncio.Task[Any] | None
    idle: bool = False
    draining: bool = False
    interrupted: bool = False


class ControlStreams:
    """The open Control streams of one servicer (all on the server's event loop)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: set[StreamSlot] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> StreamSlot:
        """A slot for the calling stream; LimitExceededError when max_control_streams are open.

        Raises RuntimeError while draining (the caller answers UNAVAILABLE)."""
        if self.draining:
            raise RuntimeError("the server is shutting down; reconnect to another replica")
        cap = self.limits.max_control_streams
        if len(self._open) >= cap:
            LIMIT_EXCEEDED.labels(limit="max_control_streams").inc()
            raise LimitExceededError(
                "max_control_streams",
                f"{len(self._open)} Control streams are open, the "
                f"{described('max_control_streams')} ({cap}); retry later or use another replica",
            )
        slot = StreamSlot(asyncio.current_task())
        self._open.add(slot)
        return slot

    def close(self, slot: StreamSlot) -> None:
        self._open.discard(slot)

    def drain(self) -> None:
        """Ask every open stream to end with UNAVAILABLE: those waiting for a message at once
        (their task is interrupted), busy ones after the message in hand; refuse new ones."""
        self.draining = True
        for slot in list(self._open):
            slot.draining = True
            if slot.idle and slot.task is not None and not slot.interrupted:
                slot.interrupted = True
                slot.task.cancel()
