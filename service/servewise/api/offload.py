"""Concurrent unary work in worker processes, so that concurrent calls use every core.

Why: an OptimizeBatch call spends a large part of its CPU in Python (the search's bookkeeping
around the C simulator). In threads of the server process, concurrent calls serialise on its
GIL: with four clients on two cores, the server process ran at 97 % of one core while a worker
beside it idled 40 % of the time and the machine 17 % (bench/README.md). Here a call made while
another is in flight runs in a worker process with an interpreter of its own; the server
process only validates, pickles ~2 kB of arguments and parses the serialized answer (about a
third of a core at 160 calls/s). A call made while nothing else is in flight runs in a thread
of the server process as before: a worker would only add ~1 ms of hand-offs to it.

What a worker call keeps from the in-process path:

- **Cancellation.** The call's :class:`~servewise.core.cancel.CancelToken` cannot cross a
  process boundary, so the worker gets a copy: the same deadline (``time.monotonic`` is the
  system's monotonic clock, the same in every process) and a slot in a shared byte array that the
  server sets when the call is cancelled. A call still queued is dropped from the queue instead.
  A stop the worker hits is re-raised through the server's token, so the cancelled-work counter
  counts it as before.
- **Errors.** Exceptions come back pickled (domain errors keep their fields, see
  :class:`~servewise.core.errors.InvalidInputError` and
  :class:`~servewise.core.cancel.WorkCancelledError`) and are mapped to statuses as before.
- **Start-up and failures.** The workers start with the first call, not with the server (a
  server that only routes never pays their memory), and calls made while they start run in
  threads. A worker that dies fails the calls it had with ``BrokenProcessPool`` (UNAVAILABLE, see
  :mod:`servewise.api.errors`), which are not rerun here: a call that crashed its worker would
  crash the server too. The next call starts a new pool.

Workers are spawned (not forked: the server process runs gRPC's threads), collect garbage and
keep large buffers as ``servewise serve`` does, and exit when the server process is gone.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, TypeVar

from prometheus_client import Counter

from servewise.allocator import keep_large_buffers
from servewise.core import cancel

__all__ = ["WorkerPool", "default_worker_processes"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

CALLS: Final = Counter(
    "servewise_offload_calls",
    "Calls run by a worker pool (OptimizeBatch): in a worker process (made while another was in "
    "flight; answered) or in a server thread (alone, or while the workers start).",
    ["where"],
)

# Calls in flight that can be cancelled mid-run; a call beyond them still stops at its deadline
# (and, while queued, on cancellation).
CANCEL_SLOTS: Final = 1024
PARENT_POLL_S: Final = 0.5
WORKER_PROCESSES_ENV: Final = "SERVEWISE_WORKER_PROCESSES"


def default_worker_processes() -> int:
    """``SERVEWISE_WORKER_PROCESSES`` if set (0: threads only), else one per CPU, at most 8."""
    text = os.environ.get(WORKER_PROCESSES_ENV, "").strip()
    if text:
        try:
            return max(0, int(text))
        except ValueError as exc:
            raise ValueError(
                f"{WORKER_PROCESSES_ENV} must be a whole number, not {text!r}"
            ) from exc
    return max(1, min(8, os.cpu_count() or 1))


class WorkerPool:
    """``processes`` spawned workers running picklable functions for async callers.

    ``processes`` 0 runs every call in a thread of this process (the path before workers).
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._guard = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._ready = False
        self._flags: Any = None  # multiprocessing RawArray of CANCEL_SLOTS signed bytes
        self._free: list[int] = []
        # On the event loop: calls running in this process's threads by choice (0 or 1), and
        # calls handed to the workers and not yet finished there (running or queued).
        self._inline = 0
        self._in_workers = 0
        self.calls_in_workers = 0
        self.calls_in_threads = 0

    async def run(
        self, fn: Callable[..., T], *args: Any, in_worker: Mapping[str, Any] | None = None
    ) -> T:
        """``fn(*args)`` under the current cancel token: in a thread of this process when no
        other call is in flight (alone, a worker would only add ~1 ms of hand-offs), else in a
        worker, queued first come first served while all are busy (see the module docstring).
        While the workers start, or when there are none, in a thread at once.

        ``in_worker``: keyword arguments added when ``fn`` runs in a worker, that is while other
        calls keep the cores busy."""
        executor = self._executor_if_ready()
        if executor is None:
            return await self._in_thread(fn, *args)
        if self._inline == 0 and self._in_workers == 0:
            self._inline += 1
            try:
                return await self._in_thread(fn, *args)
            finally:
                self._inline -= 1
        call = functools.partial(fn, **in_worker) if in_worker else fn
        return await self._in_worker(executor, call, args)

    async def _in_worker(
        self, executor: ProcessPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        loop = asyncio.get_running_loop()
        token = cancel.current()
        slot = self._take_slot()
        deadline = None if token is None else token.deadline_monotonic_s
        try:
            future = executor.submit(_run_in_worker, fn, args, slot, deadline)
        except (BrokenProcessPool, RuntimeError):  # broken, or shut down by close()
            self._give_back(slot)
            self._drop(executor)
            return await self._in_thread(fn, *args)  # it never reached a worker
        self._in_workers += 1

        def done(_: Future[T]) -> None:
            # Counted out once the worker has stopped, which a cancelled call does not wait
            # for; from the pool's thread, so handed to the loop.
            self._give_back(slot)
            loop.call_soon_threadsafe(self._worker_done)

        future.add_done_callback(done)
        try:
            result: T = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel() and slot >= 0:
                self._flags[slot] = 1  # running: it stops at its next check
            raise
        except cancel.WorkCancelledError as exc:
            if token is None:
                raise
            token.stop(exc)
        except BrokenProcessPool:
            # A worker died (killed, or a crash in native code). Not rerun here: if the call
            # itself killed it, it would take the server down with it. The next call starts a
            # new pool.
            self._drop(executor)
            raise
        self.calls_in_workers += 1
        CALLS.labels(where="worker").inc()
        return result

    def _worker_done(self) -> None:
        self._in_workers -= 1

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self.calls_in_threads += 1
        CALLS.labels(where="thread").inc()
        return await asyncio.to_thread(fn, *args)

    async def start(self, timeout_s: float = 60.0) -> bool:
        """Start the workers now and wait until they are ready (or ``timeout_s``); whether they
        are. Calls do not need it: the first one starts them."""
        deadline = time.monotonic() + timeout_s
        while self._executor_if_ready() is None and self.processes > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return self.processes > 0

    def _executor_if_ready(self) -> ProcessPoolExecutor | None:
        if self.processes <= 0:
            return None
        with self._guard:
            if self._executor is None:
                self._start()
            return self._executor if self._ready else None

    def _start(self) -> None:
        """Spawn the workers and have each import the core; ready once all have (called with
        the guard held)."""
        context = multiprocessing.get_context("spawn")
        self._flags = context.RawArray("b", CANCEL_SLOTS)
        self._free = list(range(CANCEL_SLOTS - 1, -1, -1))
        executor = ProcessPoolExecutor(
            self.processes,
            mp_context=context,
            initializer=_worker_init,
            initargs=(self._flags, os.getpid(), gc.get_threshold()),
        )
        self._executor, self._ready = executor, False
        # A pool spawns a worker per submit while none is idle: one warm-up each starts them all
        # now, not under the first load.
        warm_ups = [executor.submit(_warm_up) for _ in range(self.processes)]
        remaining = [len(warm_ups)]

        def warmed(future: Future[None]) -> None:
            failed = future.cancelled() or future.exception() is not None
            with self._guard:
                remaining[0] -= 1
                if self._executor is not executor:
                    return
                if failed:
                    # Workers that cannot start would fail every call: threads from now on.
                    self._executor, self._ready, self.processes = None, False, 0
                elif remaining[0] == 0:
                    self._ready = True
            if failed:
                executor.shutdown(wait=False, cancel_futures=True)
                _log.warning("worker processes failed to start; running calls in threads")

        for warm_up in warm_ups:
            warm_up.add_done_callback(warmed)

    def _take_slot(self) -> int:
        with self._guard:
            return self._free.pop() if self._free else -1

    def _give_back(self, slot: int) -> None:
        if slot < 0:
            return
        with self._guard:
            self._flags[slot] = 0
            self._free.append(slot)

    def _drop(self, executor: ProcessPoolExecutor) -> None:
        with self._guard:
            if self._executor is not executor:
                return
            self._executor, self._ready = None, False
        executor.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        """The live workers' process ids (for the benchmarks' memory figures)."""
        with self._guard:
            processes = getattr(self._executor, "_processes", None) or {}
            return sorted(int(pid) for pid in processes)

    def close(self) -> None:
        """Stop the workers (the server calls it on stop); calls after it run in threads."""
        with self._guard:
            executor, self._executor, self._ready = self._executor, None, False
            self.processes = 0
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


# --- in the worker ---------------------------------------------------------------------------

_flags: Any = None


class _SlotToken(cancel.CancelToken):
    """The worker's copy of a call's token: the call's deadline, and cancelled once the server
    sets the call's slot."""

    def __init__(self, deadline_monotonic_s: float | None, slot: int) -> None:
        super().__init__(deadline_monotonic_s)
        self._slot = slot

    def _poll(self) -> None:
        if self._slot >= 0 and _flags is not None and _flags[self._slot]:
            self.cancel()

    @property
    def cancelled(self) -> bool:
        self._poll()
        return super().cancelled

    def check(self) -> None:
        self._poll()
        super().check()


def _worker_init(flags: Any, server_pid: int, gc_threshold: tuple[int, int, int]) -> None:
    """Keep the cancel flags, collect garbage and keep large buffers as the server does
    (``servewise serve`` raises the collector's threshold and glibc's), and exit once the server
    is gone (a worker blocked on its call queue would otherwise outlive a server
    killed with SIGKILL)."""
    global _flags  # noqa: PLW0603  # the worker process's one copy, set once at its start
    _flags = flags
    gc.set_threshold(*gc_threshold)
    keep_large_buffers()  # as the server does (servewise.allocator)

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="worker-parent-watch", daemon=True).start()


def _warm_up() -> None:
    # Import what the calls need before the first one arrives.
    import servewise.api.unary_work  # noqa: F401, PLC0415


def _run_in_worker(
    fn: Callable[..., T], args: tuple[Any, ...], slot: int, deadline_monotonic_s: float | None
) -> T:
    with cancel.scope(_SlotToken(deadline_monotonic_s, slot)):
        return fn(*args)
