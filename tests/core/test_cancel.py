"""servewise.core.cancel: the cooperative cancellation token the servicer hands the core."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from servewise.core import cancel
from servewise.core.cancel import CancelToken, WorkCancelledError


def test_check_outside_a_scope_does_nothing() -> None:
    """Direct callers of the core (no servicer) never see WorkCancelledError."""
    assert cancel.current() is None
    cancel.check()


def test_a_cancelled_token_stops_work_in_its_scope_only() -> None:
    """check() raises CANCELLED-flavoured WorkCancelledError inside the scope, not after it."""
    token = CancelToken()
    with cancel.scope(token):
        cancel.check()
        token.cancel("client went away")
        with pytest.raises(WorkCancelledError, match="client went away") as caught:
            cancel.check()
        assert not caught.value.deadline
    cancel.check()


def test_a_passed_deadline_stops_work_by_itself() -> None:
    """No one needs to call cancel(): a deadline in the past makes check() raise."""
    token = CancelToken(deadline_monotonic_s=time.monotonic() - 0.001)
    assert token.cancelled
    with pytest.raises(WorkCancelledError) as caught:
        token.check()
    assert caught.value.deadline


def test_on_stop_is_called_once() -> None:
    """Abandoned work is counted once however many checks raise."""
    stops: list[WorkCancelledError] = []
    token = CancelToken(on_stop=stops.append)
    token.cancel()
    for _ in range(3):
        with pytest.raises(WorkCancelledError):
            token.check()
    assert len(stops) == 1


async def test_to_thread_carries_the_token_and_sees_a_later_cancel() -> None:
    """A worker started with asyncio.to_thread sees the scope's token, and a cancel made after
    it started (from the event loop) stops it at its next check."""
    token = CancelToken()
    started = threading.Event()

    def work() -> None:
        started.set()
        for _ in range(10_000):
            cancel.check()
            time.sleep(0.001)

    with cancel.scope(token):
        task = asyncio.ensure_future(asyncio.to_thread(work))
        await asyncio.to_thread(started.wait, 5)
        token.cancel()
        with pytest.raises(WorkCancelledError):
            await task


def test_propagating_carries_the_token_into_pool_threads() -> None:
    """Threads of an executor do not inherit context; propagating(fn) makes them see it."""
    token = CancelToken()
    token.cancel()
    with cancel.scope(token), ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(cancel.current).result() is None
        assert pool.submit(cancel.propagating(cancel.current)).result() is token
        with pytest.raises(WorkCancelledError):
            pool.submit(cancel.propagating(cancel.check)).result()


@pytest.mark.parametrize("deadline", [True, False])
def test_a_stop_pickles_with_its_kind(deadline: bool) -> None:
    """Raised in a worker process, re-raised in the server: DEADLINE_EXCEEDED vs CANCELLED
    must survive the trip."""
    stop = cancel.WorkCancelledError("why", deadline=deadline)
    again = pickle.loads(pickle.dumps(stop))  # noqa: S301  # our own bytes
    assert isinstance(again, cancel.WorkCancelledError)
    assert (str(again), again.deadline) == ("why", deadline)


def test_a_token_stop_raised_elsewhere_counts_once() -> None:
    stops: list[cancel.WorkCancelledError] = []
    token = cancel.CancelToken(on_stop=stops.append)
    for _ in range(2):
        with pytest.raises(cancel.WorkCancelledError):
            token.stop(cancel.WorkCancelledError("in a worker", deadline=True))
    assert len(stops) == 1
