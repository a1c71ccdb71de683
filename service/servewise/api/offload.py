"""Concurrent unary work in worker processes, so that concurrent calls use every core.

Why: an OptimizeBatch call spends a large part of its CPU in Python (the search's bookkeeping
around the C simulator). In threads of the server process, concurrent calls serialise on its
GIL: with four clients on two cores, the server process ran at 97 % of one core while a worker
beside it idled 40 % of the time and the machine 17 % (bench/README.md). Here a call made while
another is in flight runs in a worker process with an interpreter of its own; the server
process only validates, pickles ~2 kB of arguments and parses the serialized answer. A call
made while nothing else is in flight runs in a thread of the server process as before: a worker
would only add ~1 ms of hand-offs to it.

How: each worker has a duplex pipe of its own. The event loop writes a call's pickled
``(fn, args, slot, deadline)`` into an idle worker's pipe and watches every pipe (and every
worker's exit sentinel) with ``loop.add_reader``; when a worker's answer arrives, the loop hands
it the next queued call at once, then resolves the caller's future. No thread of the server
process takes part: ``ProcessPoolExecutor`` (which this replaced) ran a manager, a feeder and a
result thread per pool and hopped back to the loop per call, each taking the server's GIL from
the calls' validation and parsing. Under 4 concurrent clients on 2 cores (bench/rpc_latency.py,
A/B in one sitting, 2 runs each) the server process's CPU per call fell from 1.95 ms to 1.6 ms
and throughput rose from 142-163 to 165-174 calls/s, p99 no worse.

What a worker call keeps from the in-process path:

- **Cancellation.** The call's :class:`~servewise.core.cancel.CancelToken` cannot cross a
  process boundary, so the worker gets a copy: the same deadline (``time.monotonic`` is the
  system's monotonic clock, the same in every process) and a slot in a shared byte array that the
  server sets when the call is cancelled. A call still queued is dropped from the queue instead.
  A stop the worker hits is re-raised through the server's token, so the cancelled-work counter
  counts it as before.
- **Errors.** Exceptions come back pickled (domain errors keep their fields, see
  :class:`~servewise.core.errors.InvalidInputError` and
  :class:`~servewise.core.cancel.WorkCancelledError`), with the worker's traceback as their
  cause, and are mapped to statuses as before; one that does not pickle comes back as a
  ``RuntimeError`` carrying its repr.
- **Start-up and failures.** The workers start with the first call, not with the server (a
  server that only routes never pays their memory), and calls made while they start run in
  threads; a worker that dies before it said hello (a broken install) turns the pool to threads.
  A worker that dies later fails the call it had with ``BrokenProcessPool`` (UNAVAILABLE, see
  :mod:`servewise.api.errors`), which is not rerun here: a call that crashed its worker would
  crash the server too. A fresh worker replaces it for later calls.

Workers are spawned (not forked: the server process runs gRPC's threads), collect garbage and
keep large buffers as ``servewise serve`` does, and exit when the server process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final, Literal, TypeVar

from prometheus_client import Counter

from servewise.allocator import keep_large_buffers
from servewise.core import cancel

__all__ = ["WorkerPool", "default_worker_processes", "exit_with_server"]

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
# How long close() lets a worker finish before it is terminated (it stops at its next cancel
# check, milliseconds away, so this only bounds a worker stuck in native code).
STOP_GRACE_S: Final = 5.0

# Spawned, not forked: the server process runs gRPC's threads.
_CONTEXT: Final = multiprocessing.get_context("spawn")
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
# Control messages on a pipe; a call or an answer is a pickle, which never starts with a zero
# byte (pickle protocol 2+ starts with PROTO, 0x80).
_HELLO: Final = b"\x00hello"
_STOP: Final = b"\x00stop"


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


class _NotRunError(Exception):
    """A queued call that never reached a worker (the pool closed or fell back to threads): the
    caller runs it in a thread instead."""


class _WorkerTracebackError(Exception):
    """The worker's traceback, attached as the cause of the exception it sent back (so the
    server's log of an INTERNAL error shows where in the worker it was raised)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Call:
    """A call handed to the workers: queued, running in a worker, or done (its slot given
    back and counted out of ``_in_workers``)."""

    __slots__ = ("future", "payload", "slot", "state")

    def __init__(self, payload: bytes, future: asyncio.Future[Any], slot: int) -> None:
        self.payload = payload
        self.future = future
        self.slot = slot
        self.state: Literal["queued", "running", "done"] = "queued"


class _Worker:
    """A worker process, the server's end of its pipe, and the call it runs (None: idle, or
    not ready until it has said hello)."""

    __slots__ = ("call", "conn", "fd", "process", "ready")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        self.ready = False
        self.call: _Call | None = None


class WorkerPool:
    """``processes`` spawned workers running picklable functions for async callers.

    ``processes`` 0 runs every call in a thread of this process (the path before workers).
    Used from one event loop (the server's): the pool's state is only touched there, so it
    needs no lock.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._loop: asyncio.AbstractEventLoop | None = None  # set when the workers start
        self._ready = False  # every worker of the first start has said hello
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._queue: deque[_Call] = deque()
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
        if not self._started_and_ready():
            return await self._in_thread(fn, *args)
        if self._inline == 0 and self._in_workers == 0:
            self._inline += 1
            try:
                return await self._in_thread(fn, *args)
            finally:
                self._inline -= 1
        call = functools.partial(fn, **in_worker) if in_worker else fn
        try:
            return await self._in_worker(call, args)
        except _NotRunError:
            return await self._in_thread(fn, *args)

    async def _in_worker(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        loop = asyncio.get_running_loop()
        token = cancel.current()
        deadline = None if token is None else token.deadline_monotonic_s
        slot = self._free.pop() if self._free else -1
        try:
            payload = pickle.dumps((fn, args, slot, deadline), _PROTOCOL)
        except BaseException:
            self._give_back(slot)
            raise
        call = _Call(payload, loop.create_future(), slot)
        self._in_workers += 1
        self._submit(call)
        try:
            result: T = await call.future
        except asyncio.CancelledError:
            if call.state == "queued":
                self._queue.remove(call)
                self._finished(call)
            elif call.state == "running" and call.slot >= 0:
                self._flags[call.slot] = 1  # it stops at its next check; the slot waits for it
            raise
        except cancel.WorkCancelledError as exc:
            if token is None:
                raise
            token.stop(exc)
        self.calls_in_workers += 1
        CALLS.labels(where="worker").inc()
        return result

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self.calls_in_threads += 1
        CALLS.labels(where="thread").inc()
        return await asyncio.to_thread(fn, *args)

    async def start(self, timeout_s: float = 60.0) -> bool:
        """Start the workers now and wait until every one is ready, a replacement of a dead one
        too (or ``timeout_s``); whether they are. Calls do not need it: the first one starts
        them."""
        deadline = time.monotonic() + timeout_s
        while self.processes > 0:
            if self._started_and_ready() and all(w.ready for w in self._workers):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return False

    def worker_pids(self) -> list[int]:
        """The live workers' process ids (for the benchmarks' memory figures)."""
        return sorted(w.process.pid for w in list(self._workers) if w.process.pid is not None)

    def close(self) -> None:
        """Stop the workers (the server calls it on stop); calls after it run in threads.

        A call a worker is running fails with ``BrokenProcessPool`` (retryable) and is told to
        stop; a queued one runs in a thread. Called on the pool's event loop, or after it
        closed."""
        self.processes = 0
        self._ready = False
        workers, self._workers, self._idle = self._workers, [], []
        queued, self._queue = list(self._queue), deque()
        for worker in workers:
            self._unwatch(worker)
            call, worker.call = worker.call, None
            if call is not None:
                if call.slot >= 0:
                    self._flags[call.slot] = 1
                call.slot = -1  # the pool is done with the flags
                self._finished(call)
                if not call.future.done():
                    call.future.set_exception(BrokenProcessPool("the server is stopping"))
            with contextlib.suppress(OSError):  # already gone
                worker.conn.send_bytes(_STOP)
            worker.conn.close()
        for call in queued:
            self._finished(call)
            if not call.future.done():
                call.future.set_exception(_NotRunError())
        _reap([w.process for w in workers])

    # --- on the event loop -------------------------------------------------------------------

    def _started_and_ready(self) -> bool:
        """Whether calls can go to the workers; starts them on the first call."""
        if self.processes <= 0:
            return False
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._start(loop)
        elif loop is not self._loop:
            return False  # the pool belongs to another loop (never in the server): threads
        return self._ready

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Spawn the workers; ready once each has imported the core and said hello."""
        self._loop = loop
        self._flags = _CONTEXT.RawArray("b", CANCEL_SLOTS)
        self._free = list(range(CANCEL_SLOTS - 1, -1, -1))
        for _ in range(self.processes):
            if not self._spawn():
                self._fall_back()
                return

    def _spawn(self) -> bool:
        """A fresh worker, watched on the loop; whether it could be started."""
        assert self._loop is not None
        conn, child_conn = _CONTEXT.Pipe(duplex=True)
        process = _CONTEXT.Process(
            target=_worker_main,
            args=(child_conn, self._flags, os.getpid(), gc.get_threshold()),
            name="servewise-worker",
            daemon=True,  # terminated by multiprocessing at the server's exit, never joined
        )
        try:
            process.start()
        except OSError:
            _log.exception("could not start a worker process")
            conn.close()
            return False
        finally:
            # The worker has its own copy; with ours closed, its exit reads as EOF on our end.
            child_conn.close()
        worker = _Worker(process, conn)
        self._workers.append(worker)
        self._loop.add_reader(worker.fd, self._on_readable, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        return True

    def _submit(self, call: _Call) -> None:
        self._enqueue(call)
        self._dispatch_queue()

    def _enqueue(self, call: _Call, *, first: bool = False) -> None:
        """Queue ``call`` (``first``: it was next and did not reach its worker), or, when a
        dead worker's loss closed the pool, have its caller run it in a thread."""
        if self.processes <= 0:
            self._finished(call)
            call.future.set_exception(_NotRunError())
        elif first:
            self._queue.appendleft(call)
        else:
            self._queue.append(call)

    def _send(self, worker: _Worker, call: _Call) -> bool:
        """Hand ``call`` to idle ``worker``; False when the worker turned out dead (the call
        did not reach it)."""
        try:
            # A few kB into an empty pipe (the worker is idle): never blocks.
            worker.conn.send_bytes(call.payload)
        except OSError:
            self._lost(worker)
            return False
        worker.call, call.state = call, "running"
        return True

    def _on_readable(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(worker)
            return
        self._on_message(worker, message)

    def _on_exit(self, worker: _Worker) -> None:
        # The process is gone; an answer it sent just before may still be in the pipe.
        try:
            while worker in self._workers and worker.conn.poll():
                self._on_message(worker, worker.conn.recv_bytes())
        except (EOFError, OSError):
            pass
        self._lost(worker)

    def _on_message(self, worker: _Worker, message: bytes) -> None:
        if not worker.ready:  # its hello
            worker.ready = True
            if all(w.ready for w in self._workers):
                self._ready = True
            self._next(worker)
            return
        call, worker.call = worker.call, None
        if call is None:
            _log.error("a worker answered without a call; ignored")
            return
        self._finished(call)
        self._next(worker)  # the worker starts the next call before we parse this answer
        if call.future.done():  # cancelled meanwhile: nobody reads the answer
            return
        try:
            ok, value, remote_traceback = pickle.loads(message)  # noqa: S301  # our own worker's
        except Exception as exc:  # the caller gets it instead of the loop
            call.future.set_exception(RuntimeError(f"a worker's answer did not unpickle: {exc!r}"))
            return
        if ok:
            call.future.set_result(value)
        else:
            if remote_traceback is not None:
                value.__cause__ = _WorkerTracebackError(remote_traceback)
            call.future.set_exception(value)

    def _next(self, worker: _Worker) -> None:
        """Give a free ``worker`` the oldest queued call, or leave it idle."""
        self._idle.append(worker)
        self._dispatch_queue()

    def _dispatch_queue(self) -> None:
        """Hand queued calls, oldest first, to idle workers (the newest idle first)."""
        while self._queue and self._idle:
            call = self._queue.popleft()
            if not self._send(self._idle.pop(), call):
                self._enqueue(call, first=True)

    def _lost(self, worker: _Worker) -> None:
        """``worker`` died (or its pipe broke): fail its call, replace it."""
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self._unwatch(worker)
        worker.conn.close()
        _reap([worker.process])
        exit_code = worker.process.exitcode
        call, worker.call = worker.call, None
        if call is not None:
            self._finished(call)  # the worker is gone: its slot is free again
            if not call.future.done():
                call.future.set_exception(
                    BrokenProcessPool(
                        f"the worker process running the call died (exit code {exit_code})"
                    )
                )
        if not worker.ready:
            # It died while starting: a broken install, which every worker would hit.
            _log.warning("a worker process failed to start (exit code %s)", exit_code)
            if not self._ready or not self._workers:
                self._fall_back()
            return
        _log.warning("a worker process died (exit code %s); starting another", exit_code)
        if not self._spawn() and not self._workers:
            self._fall_back()

    def _fall_back(self) -> None:
        _log.warning("worker processes failed to start; running calls in threads")
        self.close()

    def _unwatch(self, worker: _Worker) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(worker.fd)
            loop.remove_reader(worker.process.sentinel)

    def _finished(self, call: _Call) -> None:
        """Count ``call`` out once its worker has stopped (or it never reached one)."""
        if call.state == "done":
            return
        call.state = "done"
        self._in_workers -= 1
        self._give_back(call.slot)

    def _give_back(self, slot: int) -> None:
        if slot >= 0 and self._open():
            self._flags[slot] = 0
            self._free.append(slot)

    def _open(self) -> bool:
        return self._flags is not None and self.processes > 0


def _reap(processes: list[BaseProcess]) -> None:
    """Collect exited workers now; give the others ``STOP_GRACE_S`` in a thread, then
    terminate them (so neither a zombie nor a stuck worker outlives close())."""
    running = []
    for process in processes:
        process.join(timeout=0)
        if process.exitcode is None:
            running.append(process)
    if not running:
        return

    def wait() -> None:
        end = time.monotonic() + STOP_GRACE_S
        for process in running:
            process.join(max(0.0, end - time.monotonic()))
            if process.exitcode is None:
                process.terminate()
                process.join(1.0)
            if process.exitcode is None:
                process.kill()
                process.join()

    threading.Thread(target=wait, name="worker-reaper", daemon=True).start()


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


def _worker_main(
    conn: Connection, flags: Any, server_pid: int, gc_threshold: tuple[int, int, int]
) -> None:
    """A worker's life: start up, say hello, then answer calls one at a time until the server
    says stop or closes the pipe."""
    # The server owns the worker's lifetime (close(), or the parent watch): a Ctrl-C reaching
    # the whole process group must let the server drain, not kill the calls in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_init(flags, server_pid, gc_threshold)
    _warm_up()
    try:
        conn.send_bytes(_HELLO)
        while (request := conn.recv_bytes()) != _STOP:
            conn.send_bytes(_answer(request))
    except (EOFError, OSError):
        return  # the server closed the pipe: it stopped, before our hello or while we ran


def _answer(request: bytes) -> bytes:
    """The pickled ``(ok, result or exception, worker traceback or None)`` of a call."""
    try:
        fn, args, slot, deadline = pickle.loads(request)  # noqa: S301  # from our own server
        return pickle.dumps((True, _run_in_worker(fn, args, slot, deadline), None), _PROTOCOL)
    except BaseException as exc:  # everything goes back to the caller
        remote_traceback = "".join(traceback.format_exception(exc))
        try:
            # Only an Exception may resolve the caller's future: a KeyboardInterrupt or
            # SystemExit there would stop the server's loop, a StopIteration is refused.
            if not isinstance(exc, Exception) or isinstance(exc, StopIteration):
                raise TypeError(type(exc).__name__)
            answer = pickle.dumps((False, exc, remote_traceback), _PROTOCOL)
            pickle.loads(answer)  # noqa: S301  # one that does not unpickle would fail there
        except Exception:  # any failure to cross: send what can be said
            stand_in = RuntimeError(f"{exc!r} (raised in a worker process, could not be sent)")
            answer = pickle.dumps((False, stand_in, remote_traceback), _PROTOCOL)
        return answer


def _worker_init(flags: Any, server_pid: int, gc_threshold: tuple[int, int, int]) -> None:
    """Keep the cancel flags, collect garbage and keep large buffers as the server does
    (``servewise serve`` raises the collector's threshold and glibc's), and exit once the server
    is gone (a worker busy with a call would otherwise outlive a server killed with
    SIGKILL)."""
    global _flags  # noqa: PLW0603  # the worker process's one copy, set once at its start
    _flags = flags
    gc.set_threshold(*gc_threshold)
    keep_large_buffers()  # as the server does (servewise.allocator)
    exit_with_server(server_pid, "worker-parent-watch")


def exit_with_server(server_pid: int, thread_name: str) -> None:
    """In a worker process: exit once ``server_pid`` is no longer the parent (the server was
    killed, or stopped before it could tell the worker), checked every ``PARENT_POLL_S`` by a
    daemon thread. A worker blocked on its pipe or queue would otherwise wait for good."""

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name=thread_name, daemon=True).start()


def _warm_up() -> None:
    # Import what the calls need before the first one arrives.
    import servewise.api.unary_work  # noqa: F401, PLC0415


def _run_in_worker(
    fn: Callable[..., T], args: tuple[Any, ...], slot: int, deadline_monotonic_s: float | None
) -> T:
    with cancel.scope(_SlotToken(deadline_monotonic_s, slot)):
        return fn(*args)
