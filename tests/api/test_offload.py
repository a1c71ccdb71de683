"""OptimizeBatch's worker processes (servewise.api.offload): where calls run, that answers,
errors and cancellation cross the process boundary intact, and that a dead worker costs one
call a retryable status, not the server."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import grpc
import offload_work
import pytest
import pytest_asyncio
from api_builders import optimize_request
from api_harness import running_api

from servewise.api import offload, unary_work
from servewise.api.converters import optimize_args
from servewise.api.errors import status_for
from servewise.api.offload import WORKER_PROCESSES_ENV, WorkerPool, default_worker_processes
from servewise.core import cancel
from servewise.core.errors import InvalidInputError
from servewise.limits import DEFAULT_LIMITS, use
from servewise.v1 import servewise_pb2


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(2)
    assert await workers.start()
    yield workers
    workers.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    for _ in itertools.count():
        if condition() or time.monotonic() > end:
            return
        await asyncio.sleep(0.002)


def _at_rate(rate_per_s: float) -> servewise_pb2.OptimizeBatchRequest:
    request = optimize_request()
    request.workload.rate_per_s = rate_per_s
    return request


async def _occupy_inline(pool: WorkerPool, marker: Path) -> asyncio.Task[str]:
    """A call that holds the pool's in-process thread (spinning until cancelled), so that the
    next calls go to workers."""

    async def hold() -> str:
        token = cancel.CancelToken()
        with cancel.scope(token):
            try:
                return await pool.run(offload_work.spin, str(marker), 30.0)
            except asyncio.CancelledError:
                token.cancel()  # as the servicer's guard does: the thread stops at its check
                raise

    task = asyncio.create_task(hold())
    await _until(lambda: pool.calls_in_threads > 0)
    return task


async def _stop(task: asyncio.Task[str]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_lone_call_runs_in_process_and_concurrent_ones_in_workers(
    pool: WorkerPool, tmp_path: Path
) -> None:
    assert await pool.run(offload_work.pid) == os.getpid()
    holder = await _occupy_inline(pool, tmp_path / "holder")
    pids = await asyncio.gather(*(pool.run(offload_work.pid) for _ in range(6)))
    await _stop(holder)
    assert os.getpid() not in pids
    assert set(pids) <= set(pool.worker_pids())
    assert pool.calls_in_workers == 6


async def test_worker_answers_equal_in_process_answers(pool: WorkerPool, tmp_path: Path) -> None:
    with use(DEFAULT_LIMITS):
        args = [optimize_args(_at_rate(rate)) for rate in (5.0, 400.0, 1500.0)]
    expected = [unary_work.optimize_batch(a) for a in args]
    holder = await _occupy_inline(pool, tmp_path / "holder")
    answers = await asyncio.gather(*(pool.run(unary_work.optimize_batch, a) for a in args))
    await _stop(holder)
    assert pool.calls_in_workers == len(args)
    assert answers == expected
    assert servewise_pb2.OptimizeBatchResponse.FromString(answers[0]).HasField("recommended")


async def test_a_domain_error_keeps_its_fields_across_the_boundary(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    with pytest.raises(InvalidInputError) as raised:
        await pool.run(offload_work.invalid, "candidates[2].profile")
    await _stop(holder)
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("candidates[2].profile", "is wrong"),
        ("other", "too"),
    ]


async def test_a_cancelled_call_stops_its_worker_and_frees_it(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    marker = tmp_path / "worker"
    call = asyncio.create_task(pool.run(offload_work.spin, str(marker), 30.0))
    await _until(lambda: pool._in_workers > 0)  # it is in a worker
    await asyncio.sleep(0.05)
    await _stop(call)
    await _until(marker.exists)
    assert marker.read_text().startswith("stopped deadline=False")
    assert f"pid={os.getpid()}" not in marker.read_text()
    # Both workers serve again (the slot's flag was cleared, the worker freed).
    pids = await asyncio.gather(*(pool.run(offload_work.pid) for _ in range(4)))
    assert os.getpid() not in pids
    await _stop(holder)


async def test_a_deadline_stops_the_worker_and_counts_once_in_the_callers_token(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    stops: list[cancel.WorkCancelledError] = []
    token = cancel.CancelToken(time.monotonic() + 0.2, on_stop=stops.append)
    marker = tmp_path / "worker"
    with cancel.scope(token), pytest.raises(cancel.WorkCancelledError) as raised:
        await pool.run(offload_work.spin, str(marker), 30.0)
    await _stop(holder)
    assert raised.value.deadline
    assert len(stops) == 1
    assert marker.read_text().startswith("stopped deadline=True")


async def test_a_dead_worker_fails_its_call_as_unavailable_and_the_pool_recovers(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    with pytest.raises(BrokenProcessPool) as raised:
        await pool.run(offload_work.die)
    assert status_for(raised.value).code == grpc.StatusCode.UNAVAILABLE
    assert not holder.done()  # the server's own call runs on
    assert await pool.start()  # a new pool
    assert await pool.run(offload_work.pid) != os.getpid()
    await _stop(holder)


def test_the_worker_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_PROCESSES_ENV, "0")
    assert default_worker_processes() == 0
    monkeypatch.setenv(WORKER_PROCESSES_ENV, "3")
    assert default_worker_processes() == 3
    monkeypatch.delenv(WORKER_PROCESSES_ENV)
    assert default_worker_processes() >= 1
    monkeypatch.setenv(WORKER_PROCESSES_ENV, "many")
    with pytest.raises(ValueError, match=WORKER_PROCESSES_ENV):
        default_worker_processes()


async def test_concurrent_optimize_batch_calls_through_a_server_with_workers() -> None:
    """Four concurrent calls through a real server whose OptimizeBatch has workers: every
    answer equals the one computed in this process."""
    request = optimize_request()
    with use(DEFAULT_LIMITS):
        expected = servewise_pb2.OptimizeBatchResponse.FromString(
            unary_work.optimize_batch(optimize_args(request))
        )
    async with running_api(worker_processes=2) as api:
        assert api.servicer is not None
        assert await api.servicer.workers.start()
        answers = await asyncio.gather(*(api.stub.OptimizeBatch(request) for _ in range(8)))
        assert all(answer == expected for answer in answers)
        assert api.servicer.workers.calls_in_workers >= 1


async def _occupy_workers(pool: WorkerPool, tmp_path: Path) -> list[asyncio.Task[str]]:
    """Calls that keep every worker busy (spinning until cancelled), so the next ones queue."""
    spinners = [
        asyncio.create_task(pool.run(offload_work.spin, str(tmp_path / f"busy{i}"), 30.0))
        for i in range(pool.processes)
    ]
    await _until(lambda: len(pool._idle) == 0 and pool._in_workers == pool.processes)
    assert not pool._queue
    return spinners


async def test_a_call_cancelled_while_queued_never_runs(pool: WorkerPool, tmp_path: Path) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    spinners = await _occupy_workers(pool, tmp_path)
    marker = tmp_path / "queued"
    queued = asyncio.create_task(pool.run(offload_work.touch, str(marker)))
    await _until(lambda: len(pool._queue) == 1)
    await _stop(queued)
    assert not pool._queue
    assert pool._in_workers == pool.processes
    for spinner in spinners:
        await _stop(spinner)
    # The workers are free again and serve later calls; the cancelled one never reached them.
    pids = await asyncio.gather(*(pool.run(offload_work.pid) for _ in range(4)))
    assert os.getpid() not in pids
    await _stop(holder)
    await _until(lambda: pool._in_workers == 0)
    assert not marker.exists()
    assert pool._in_workers == 0


async def test_many_more_concurrent_calls_than_workers_all_answer(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    values = [{"call": i, "payload": "x" * (i * 997)} for i in range(60)]
    answers = await asyncio.gather(*(pool.run(offload_work.echo, v) for v in values))
    await _stop(holder)
    assert answers == values
    assert pool.calls_in_workers == len(values)
    assert pool._in_workers == 0
    assert not pool._queue


async def test_a_dead_worker_is_replaced_and_the_others_calls_run_on(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    before = pool.worker_pids()
    survivor = asyncio.create_task(pool.run(offload_work.spin, str(tmp_path / "survivor"), 0.5))
    await _until(lambda: pool._in_workers == 1)
    with pytest.raises(BrokenProcessPool):
        await pool.run(offload_work.die)
    assert await survivor == "done"  # the other worker's call was not touched
    assert await pool.start()  # the replacement said hello
    after = pool.worker_pids()
    assert len(after) == len(before) == 2
    assert len(set(after) & set(before)) == 1
    pids = await asyncio.gather(*(pool.run(offload_work.pid) for _ in range(8)))
    assert set(pids) <= set(after)
    await _stop(holder)


async def test_an_exception_that_does_not_pickle_arrives_as_a_runtime_error(
    pool: WorkerPool, tmp_path: Path
) -> None:
    holder = await _occupy_inline(pool, tmp_path / "holder")
    with pytest.raises(RuntimeError, match="carries a lambda") as raised:
        await pool.run(offload_work.unpicklable_error)
    assert "unpicklable_error" in str(raised.value.__cause__)  # the worker's traceback
    assert await pool.run(offload_work.pid) != os.getpid()  # the worker serves on
    await _stop(holder)


async def test_close_stops_the_workers_and_unwatches_their_pipes(tmp_path: Path) -> None:
    workers = WorkerPool(2)
    assert await workers.start()
    pids = workers.worker_pids()
    fds = [fd for w in workers._workers for fd in (w.fd, w.process.sentinel)]
    holder = await _occupy_inline(workers, tmp_path / "holder")
    running = asyncio.create_task(workers.run(offload_work.spin, str(tmp_path / "w"), 30.0))
    await _until(lambda: workers._in_workers == 1)
    workers.close()
    with pytest.raises(BrokenProcessPool):
        await running
    loop = asyncio.get_running_loop()
    assert not any(loop.remove_reader(fd) for fd in fds)  # none was still registered

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await _until(lambda: all(gone(pid) for pid in pids))
    assert all(gone(pid) for pid in pids)
    assert (tmp_path / "w").read_text().startswith("stopped deadline=False")  # told to stop
    assert await workers.run(offload_work.pid) == os.getpid()  # threads from now on
    await _stop(holder)


async def test_workers_that_cannot_start_leave_calls_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offload, "_worker_main", offload_work.fail_to_start)
    workers = WorkerPool(2)
    try:
        assert not await workers.start(timeout_s=30.0)
        assert workers.processes == 0
        assert workers.worker_pids() == []
        assert await workers.run(offload_work.pid) == os.getpid()
        assert await workers.run(offload_work.pid) == os.getpid()
    finally:
        workers.close()


async def test_a_replacement_that_cannot_start_leaves_the_pool_on_the_other_worker(
    pool: WorkerPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies; its replacement dies before its hello: calls go on in the surviving
    worker (no respawn loop, no fall back to threads while a worker remains)."""
    holder = await _occupy_inline(pool, tmp_path / "holder")
    monkeypatch.setattr(offload, "_worker_main", offload_work.fail_to_start)
    with pytest.raises(BrokenProcessPool):
        await pool.run(offload_work.die)
    await _until(lambda: len(pool.worker_pids()) == 1)
    survivor = pool.worker_pids()
    assert len(survivor) == 1
    pids = await asyncio.gather(*(pool.run(offload_work.pid) for _ in range(6)))
    assert set(pids) == set(survivor)
    assert pool.processes == 2  # not turned to threads
    await _stop(holder)


async def test_workers_closed_before_their_hello_exit_cleanly() -> None:
    """A server stopped right after its first call: the workers still starting find the pipe
    closed when they say hello, and exit 0 instead of dying with a traceback."""
    workers = WorkerPool(2)
    assert await workers.run(offload_work.pid) == os.getpid()  # starts them, runs inline
    processes = [w.process for w in workers._workers]
    assert len(processes) == 2
    workers.close()
    for process in processes:
        await asyncio.to_thread(process.join, 30)
    assert [p.exitcode for p in processes] == [0, 0]
