"""Cooperative cancellation of long computations (a client that cancels or whose deadline passes).

A worker thread cannot be interrupted from outside, so long work polls: the servicer makes a
:class:`CancelToken` current for the RPC (:func:`scope`; ``asyncio.to_thread`` copies the context,
so the worker thread sees it), cancels it when the call is cancelled, and gives it the call's
deadline; the core calls :func:`check` at loop boundaries (every simulation run, every grid
point), which raises :class:`WorkCancelledError` once the token is cancelled or past its
deadline. Outside a scope :func:`check` does nothing, so the core behaves exactly as before for
direct callers.

Threads the core starts itself (``ThreadPoolExecutor``) do not inherit context variables; submit
:func:`propagating` (``pool.submit(propagating(fn), ...)``) to carry the token into them.

Pure Python: no grpc, no I/O.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, ParamSpec, TypeVar

__all__ = ["CancelToken", "WorkCancelledError", "check", "current", "propagating", "scope"]

P = ParamSpec("P")
R = TypeVar("R")


class WorkCancelledError(Exception):
    """The work's caller went away (cancelled, or its deadline passed): stop and unwind.

    ``deadline`` is True when the deadline passed (DEADLINE_EXCEEDED), False when the call was
    cancelled (CANCELLED)."""

    def __init__(self, reason: str, *, deadline: bool) -> None:
        super().__init__(reason)
        self.deadline = deadline

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a worker process and re-raised in the server: the keyword-only
        # ``deadline`` would be lost by the default (positional args only) pickling.
        return (_rebuild_cancelled, (str(self), self.deadline))


def _rebuild_cancelled(reason: str, deadline: bool) -> WorkCancelledError:
    return WorkCancelledError(reason, deadline=deadline)


class CancelToken:
    """Cancelled once, from any thread; checked from any thread.

    ``deadline_monotonic_s`` (``time.monotonic()`` seconds, None: none) makes :meth:`check` raise
    by itself once passed. ``on_stop`` is called once, by the first check that raises (the
    servicer counts abandoned work with it).
    """

    def __init__(
        self,
        deadline_monotonic_s: float | None = None,
        on_stop: Callable[[WorkCancelledError], None] | None = None,
    ) -> None:
        self.deadline_monotonic_s = deadline_monotonic_s
        self._on_stop = on_stop
        self._reason: str | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def cancel(self, reason: str = "the call was cancelled") -> None:
        """Ask the work to stop; the first reason is kept."""
        if self._reason is None:
            self._reason = reason

    @property
    def cancelled(self) -> bool:
        """Cancelled, or past the deadline."""
        return self._reason is not None or (
            self.deadline_monotonic_s is not None and time.monotonic() >= self.deadline_monotonic_s
        )

    def check(self) -> None:
        """Raise :class:`WorkCancelledError` when cancelled or past the deadline."""
        if self._reason is not None:
            self._stop(WorkCancelledError(self._reason, deadline=False))
        if self.deadline_monotonic_s is not None and time.monotonic() >= self.deadline_monotonic_s:
            self._stop(WorkCancelledError("the call's deadline passed", deadline=True))

    def stop(self, exc: WorkCancelledError) -> NoReturn:
        """Raise ``exc``, a stop this token's work hit elsewhere (in a worker process that
        checked a copy of it), as if :meth:`check` had raised it here: ``on_stop`` runs once."""
        self._stop(exc)

    def _stop(self, exc: WorkCancelledError) -> NoReturn:
        with self._lock:
            first, self._stopped = not self._stopped, True
        if first and self._on_stop is not None:
            self._on_stop(exc)
        raise exc


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "servewise_cancel_token", default=None
)


def current() -> CancelToken | None:
    """The token of the work running in this context, if any."""
    return _current.get()


def check() -> None:
    """Raise :class:`WorkCancelledError` when the current work should stop; a no-op outside a
    scope.

    Cheap (a context-variable read and two comparisons): call it once per loop iteration of
    work that takes milliseconds, not in per-request inner loops.
    """
    token = _current.get()
    if token is not None:
        token.check()


@contextmanager
def scope(token: CancelToken) -> Iterator[CancelToken]:
    """Make ``token`` current for the enclosed code and the threads it starts with to_thread."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def propagating(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run in a copy of the caller's context (for ``executor.submit``)."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(fn, *args, **kwargs)

    return run
