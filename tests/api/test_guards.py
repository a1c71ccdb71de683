"""servewise.api.guards: the token bucket metering Control samples and the stream registry."""

from __future__ import annotations

import asyncio

import pytest

from servewise.api.errors import LimitExceededError
from servewise.api.guards import ControlStreams, TokenBucket
from servewise.limits import Limits


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate() -> None:
    """A full bucket of 3 at 2/s: three at once, then one every half second."""
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == pytest.approx(0.5)
    clock.now += 0.25
    assert not bucket.take()
    assert bucket.wait_s() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take()
    clock.now += 100.0  # refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


async def test_registry_refuses_beyond_the_cap_and_frees_on_close() -> None:
    """max_control_streams open slots; the next is LimitExceededError naming the flag; closing
    one makes room; draining refuses new ones and interrupts idle ones."""
    streams = ControlStreams(Limits(max_control_streams=2))
    first, second = streams.open(), streams.open()
    with pytest.raises(LimitExceededError, match="--max-control-streams"):
        streams.open()
    streams.close(first)
    third = streams.open()
    assert len(streams) == 2

    idle_task = asyncio.ensure_future(asyncio.sleep(10))
    second.task, second.idle = idle_task, True
    third.task = None  # busy: only flagged
    streams.drain()
    assert second.interrupted
    assert third.draining
    assert not third.interrupted
    with pytest.raises(asyncio.CancelledError):
        await idle_task
    with pytest.raises(RuntimeError, match="shutting down"):
        streams.open()
