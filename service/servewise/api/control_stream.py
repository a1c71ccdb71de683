"""The Control stream: metric samples in, control events out (ARCHITECTURE.md section 6).

One :class:`ControlSession` per stream; several deployments may share it. For each sample:

1. **Validate** (finite, non-negative, fractions in [0, 1], timestamps not going backwards per
   deployment on this stream, a registered deployment). An invalid sample gets a
   ``SampleRejected`` event naming each bad field; it is never persisted and the stream goes on.
2. **Decide against the stored state**, re-read for every sample: with no transition in force,
   the EvaluateSwitch engine (:func:`servewise.core.control.evaluate`) over this stream's recent
   samples of the deployment; a SWITCH starts a ``Transition``. With one in force, the step is
   judged (:func:`servewise.core.transitions.judge_step`): ADVANCE, COMPLETE (the target becomes
   the plan in force), ROLLBACK (the transition is dropped, the plan kept) or wait.
3. **Persist and log in one store operation**: every SWITCH, ADVANCE, ROLLBACK and COMPLETE is
   written with ``compare_and_set_with_decision`` at the version read, the new state and its
   ``DecisionRecord`` (with ``control_event``) together, so a crash leaves both or neither (as
   two writes, a kill -9 between them left a decision applied but never logged). The record's
   sequence number is read first and required by the write, so a SWITCH's
   ``Transition.decision_seq`` is in the very value that starts the transition. On
   ``StaleVersionError`` (another stream, replica or RegisterDeployment wrote in between, or an
   EvaluateSwitch appended to the log) the state is re-read and the sample re-decided, so a step
   another stream already advanced is not advanced twice.

What lives only in memory, per stream and deployment: the recent samples (for the EWMA, the
stabilisation windows and a step's observations) and the last timestamp seen. None of it is
needed for correctness: the transition, its step and when the step began are in the store, so
a new stream after a reconnect (or a restarted server) continues the same transition. The new
stream rebuilds its window from the samples it receives, so right after a reconnect the
stabilisation windows restart (a switch waits a full window again) and a step's breach run
restarts (a rollback needs ``panic_consecutive_samples`` breaches seen on the new stream). The
window keeps the samples within the longer stabilisation window plus two EWMA half-lives, at
most :data:`MAX_WINDOW_SAMPLES` of them.

**Optimizer misses never hold up other samples.** A decision that needs an optimizer answer
the shared :class:`~servewise.core.control.AdviceCache` does not hold (0.5-1 s of CPU each)
does not compute it in the sample's worker thread: :meth:`ControlSession.start` stops at the
miss (nothing has been written yet) and returns a :class:`PendingAdvice`;
:meth:`ControlHub.handle` awaits the answer, computed once per key in a worker *process*
(the optimizer is mostly Python: in a thread it would hold the GIL that every other stream's
sample needs) while other samples go on, then runs the decision again from a fresh store read
(:meth:`ControlSession.resume`). The decision is the one the blocking path
(:meth:`ControlSession.handle`, computing inline) makes: the same cache key, the same
``compute_advice`` call, and the stream is answered in order because it sends its next request
only after this one's events.

**Holds are answered on the event loop.** With an in-process store (memory, SQLite) a sample
is first decided on the event loop itself, reading the store but not writing it
(:meth:`ControlHub.handle`): a HOLD, most samples of a healthy fleet, is answered there. A
decision that would write (the store's write calls raise :class:`NeedsThreadError` in that
mode, before anything is written), a deployment whose lock a worker holds, or an optimizer miss
stops there and is decided again in a worker thread from a fresh read, as any sample was
before. The per-sample hop to a worker and back (a self-pipe write and two GIL hand-offs under
load) cost more than the decision: a 1,000-stream profile spent 26 % of its samples in it.

A rollback also restarts the plan's dwell (``current_plan_since_s``), so a move toward savings
waits ``min_dwell_s`` before it is tried again, and clears this stream's window so a new switch
needs the signal to hold for a fresh stabilisation window.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, cast

from google.rpc import code_pb2  # type: ignore[import-untyped]  # no stubs for googleapis protos

from servewise.api import deployments
from servewise.api.converters import plan_to_pb
from servewise.api.errors import NotFoundError
from servewise.api.offload import exit_with_server
from servewise.api.validation import Violations
from servewise.core import control
from servewise.core.optimizer import SearchLimits
from servewise.core.transitions import StepAction, StepVerdict, judge_step
from servewise.core.window import SampleWindow
from servewise.limits import Limits, run_with
from servewise.store import StaleVersionError, StateStore, Versioned
from servewise.store.memory import MemoryStore
from servewise.store.sqlite import SqliteReader, SqliteStore
from servewise.v1 import servewise_pb2

MAX_WINDOW_SAMPLES = 1000
# Re-reads after StaleVersionError before the sample is given up on (a HOLD when asked).
MAX_ATTEMPTS = 16
# Worker processes computing optimizer answers for the Control streams: one core's worth
# fewer than the machine has (the server's own threads serve the samples meanwhile), 1 to 4.
DEFAULT_ADVICE_PROCESSES = max(1, min(4, (os.cpu_count() or 2) - 1))
# How much lower the advice workers' scheduling priority is than the server's, and how often
# a worker checks that the server is still its parent.
ADVICE_NICENESS = 10


class NeedsThreadError(Exception):
    """A decision run on the event loop reached what must not run there: a store write, or a
    deployment lock held by a worker. Raised before anything is written."""


class _ReadOnlyStore:
    """The hub's store as an event-loop decision sees it: reads pass, anything else raises
    :class:`NeedsThreadError` (so a decision that would write is redone in a worker). A
    SQLite store is read on a connection of the loop's own
    (:class:`~servewise.store.sqlite.SqliteReader`), so a worker's commit and fsync, which
    hold the store's lock, do not stall the loop."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._reader: SqliteReader | None = None

    def get(self, key: str) -> Versioned | None:
        if isinstance(self._store, SqliteStore):
            if self._reader is None:
                self._reader = self._store.reader()
            return self._reader.get(key)
        return self._store.get(key)

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __getattr__(self, name: str) -> Any:
        raise NeedsThreadError(f"store.{name} is not run on the event loop")


class AdviceMissError(Exception):
    """A decision needs an optimizer answer the cache does not hold (raised before anything
    is written, so the decision can be run again once the answer is in)."""

    def __init__(self, key: Hashable, compute: Callable[[], control.Advice]) -> None:
        super().__init__("optimizer answer not cached")
        self.key = key
        # control.compute_advice with its arguments: picklable, for a worker process.
        self.compute = compute


class ControlHub:
    """What every stream of one servicer shares: the store, the optimizer cache and a lock per
    deployment (streams of one process take turns; other replicas are kept out by versions)."""

    def __init__(
        self,
        store: StateStore,
        cache: control.AdviceCache | None = None,
        clock: Callable[[], float] = time.time,
        on_write: Callable[[servewise_pb2.Deployment, int], None] | None = None,
        advice_processes: int = DEFAULT_ADVICE_PROCESSES,
        decide_on_loop: bool | None = None,
    ) -> None:
        """``advice_processes``: worker processes for optimizer misses (0: one thread, for
        tests and embedded use; a thread shares the GIL with the samples it should not delay).
        ``decide_on_loop``: try each sample on the event loop first (module docstring); by
        default when the store is in-process (a read is then microseconds, where a Redis read
        is a network round trip that must not stall the loop).
        """
        self._store = store
        # Used by the event loop's thread only (decide_on_loop).
        self._loop_view = _ReadOnlyStore(store)
        self._read_only = cast(StateStore, self._loop_view)
        self._on_loop = threading.local()
        self.decide_on_loop = (
            isinstance(store, MemoryStore | SqliteStore)
            if decide_on_loop is None
            else decide_on_loop
        )
        self.cache = cache if cache is not None else control.AdviceCache()
        self.clock = clock
        # Told of every deployment this hub writes (Route's table, so a new weight applies to
        # the next request here instead of at the next store poll).
        self.on_write = on_write
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # deployment id -> (version, stored bytes, converted): converting a stored deployment
        # (candidates, profiles, settings) costs more than the store read, and every sample
        # re-reads its deployment; the bytes are compared, so a hit is the same stored value.
        self._loaded: dict[str, tuple[int, bytes, deployments.StoredDeployment]] = {}
        self._advice_processes = advice_processes
        self._executor: Executor | None = None

    def load(self, deployment_id: str) -> deployments.StoredDeployment:
        """:func:`deployments.load`, reusing the conversion while the stored value is unchanged
        (the store is still read every time: another stream or replica may have written)."""
        found = self.store.get(deployments.deployment_key(deployment_id))
        cached = self._loaded.get(deployment_id)
        if found is not None and cached is not None and cached[:2] == (found.version, found.value):
            return cached[2]
        stored = deployments.load(self.store, deployment_id)
        if found is not None and stored.pb.state_version == found.version:
            self._loaded[deployment_id] = (found.version, found.value, stored)
        return stored

    def advisor(
        self, state: control.DeploymentState, limits: SearchLimits, *, wait: bool
    ) -> control.Advisor:
        """The optimizer for ``state`` through the shared cache. With ``wait`` a miss is
        computed here (single-flight); without, it raises :class:`AdviceMissError`."""
        key = control.advice_key(state.candidates, state.slo, limits, state.current_plan)
        if wait:
            return control.cached_advisor(
                self.cache,
                key,
                control.optimizer_advisor(state.candidates, state.slo, limits, state.current_plan),
            )

        def advise(rate_per_s: float, arrival_cv: float = 1.0) -> control.Advice:
            rate, cv = control.advice_point(rate_per_s, arrival_cv)
            found = self.cache.get((key, rate, cv))
            if found is None:
                raise AdviceMissError(
                    (key, rate, cv),
                    functools.partial(
                        control.compute_advice,
                        state.candidates,
                        state.slo,
                        limits,
                        state.current_plan,
                        rate,
                        cv,
                    ),
                )
            return found

        return advise

    def fetch(self, miss: AdviceMissError) -> Future[control.Advice]:
        """The answer ``miss`` needs, computed once (however many samples wait for it) on the
        advice executor and then cached."""
        return self.cache.submit(miss.key, lambda: self._advice_executor().submit(miss.compute))

    def _advice_executor(self) -> Executor:
        with self._guard:
            if self._executor is None:
                if self._advice_processes > 0:
                    # spawn, not fork: the server process runs gRPC's threads. Niced: an
                    # answer a few samples wait for must not take the CPU the server needs
                    # to answer all the others.
                    self._executor = ProcessPoolExecutor(
                        self._advice_processes,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_advice_worker_init,
                        initargs=(os.getpid(),),
                    )
                else:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="advice")
            return self._executor

    async def handle(
        self, session: ControlSession, request: servewise_pb2.ControlRequest, limits: Limits
    ) -> list[servewise_pb2.ControlResponse]:
        """:meth:`ControlSession.handle` for the servicer: the sample's work in a worker
        thread, an optimizer miss awaited without holding a thread (see the module
        docstring). A miss the executor cannot answer (an error, a broken pool) is computed
        inline instead, so it fails, or succeeds, exactly as the blocking path would."""
        if self.decide_on_loop:
            result = run_with(limits, self._start_on_loop, session, request)
        else:
            result = await asyncio.to_thread(run_with, limits, session.start, request)
        while isinstance(result, PendingAdvice):
            wait = False
            if result.miss is not None:
                try:
                    # shield: this stream going away must not cancel a run others share.
                    await asyncio.shield(asyncio.wrap_future(self.fetch(result.miss)))
                except BrokenProcessPool:
                    self._drop_executor()
                    wait = True
                except Exception:  # rerun inline: the error surfaces as on the blocking path
                    wait = True
            result = await asyncio.to_thread(run_with, limits, session.resume, result, wait)
        return result

    def _drop_executor(self) -> None:
        with self._guard:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the advice workers and close the loop's store reader (the server calls it on
        stop)."""
        self._drop_executor()
        self._loop_view.close()

    @property
    def store(self) -> StateStore:
        """The store; read-only (writes raise :class:`NeedsThreadError`) while this thread
        runs a decision on the event loop."""
        return self._read_only if getattr(self._on_loop, "active", False) else self._store

    @property
    def on_loop(self) -> bool:
        """Whether this thread is running a decision on the event loop."""
        return bool(getattr(self._on_loop, "active", False))

    def _start_on_loop(
        self, session: ControlSession, request: servewise_pb2.ControlRequest
    ) -> list[servewise_pb2.ControlResponse] | PendingAdvice:
        self._on_loop.active = True
        try:
            return session.start(request)
        finally:
            self._on_loop.active = False

    def lock(self, deployment_id: str) -> threading.Lock:
        with self._guard:
            found = self._locks.get(deployment_id)
            if found is None:
                found = self._locks[deployment_id] = threading.Lock()
            return found

    def session(self) -> ControlSession:
        return ControlSession(self)


@dataclass
class _Track:
    """One deployment on one stream: its recent samples and the newest timestamp seen."""

    samples: SampleWindow = field(default_factory=lambda: SampleWindow(maxlen=MAX_WINDOW_SAMPLES))
    last_timestamp_s: float | None = None


@dataclass(frozen=True)
class PendingAdvice:
    """A sample whose decision stopped at an optimizer miss (``miss``) or, on the event loop,
    at a write or a busy lock (``miss`` None): validated and in its track, nothing written;
    :meth:`ControlSession.resume` decides it in a worker thread (once the answer is cached)."""

    miss: AdviceMissError | None
    deployment_id: str
    sample: control.Sample
    track: _Track


class ControlSession:
    """One Control stream. :meth:`handle` is blocking (store and optimizer): run it in a worker
    thread, one request at a time."""

    def __init__(self, hub: ControlHub) -> None:
        self.hub = hub
        self.want_hold_events = False
        self._tracks: dict[str, _Track] = {}
        # Whether an optimizer miss is computed inline (handle) or raised (start/resume).
        self._wait_for_advice = True

    # --- Validation ---------------------------------------------------------------------------

    def _validate(
        self, deployment_id: str, pb: servewise_pb2.MetricSample
    ) -> tuple[control.Sample | None, list[servewise_pb2.SampleViolation]]:
        v = Violations()
        if not deployments.DEPLOYMENT_ID_RE.fullmatch(deployment_id):
            v.add(
                "sample.deployment_id",
                f"must be 1 to 128 characters of [A-Za-z0-9._-] (got {deployment_id!r}); set "
                "it on the sample or on the request",
            )
        unnamed = servewise_pb2.MetricSample()
        unnamed.CopyFrom(pb)
        unnamed.deployment_id = ""
        converted = deployments.samples_to_core(v, deployment_id, [unnamed])
        track = self._tracks.get(deployment_id)
        last = None if track is None else track.last_timestamp_s
        if converted and last is not None and converted[0].timestamp_s < last:
            v.add(
                "sample.timestamp_s",
                f"goes backwards: {converted[0].timestamp_s!r} after {last!r} for deployment "
                f"{deployment_id!r}",
            )
        violations = [
            servewise_pb2.SampleViolation(
                field=item.field.replace("samples[0]", "sample", 1), description=item.description
            )
            for item in v.items
        ]
        return (converted[0] if converted and not violations else None), violations

    # --- One request --------------------------------------------------------------------------

    def handle(self, request: servewise_pb2.ControlRequest) -> list[servewise_pb2.ControlResponse]:
        """The events one request causes (none, one, or a rejection); an optimizer miss is
        computed here."""
        result = self.start(request, wait_for_advice=True)
        assert not isinstance(result, PendingAdvice)
        return result

    def start(
        self, request: servewise_pb2.ControlRequest, *, wait_for_advice: bool = False
    ) -> list[servewise_pb2.ControlResponse] | PendingAdvice:
        """:meth:`handle`, but without ``wait_for_advice`` a decision that misses the
        optimizer cache stops there and is returned as :class:`PendingAdvice`."""
        self.want_hold_events = request.want_hold_events
        if request.WhichOneof("kind") != "sample":
            return []
        pb = request.sample
        deployment_id = pb.deployment_id or request.deployment_id
        sample, violations = self._validate(deployment_id, pb)
        if sample is None:
            return [_rejected(deployment_id, pb.timestamp_s, violations)]
        try:
            stored = self.hub.load(deployment_id)
        except NotFoundError as exc:
            return [
                _rejected(
                    deployment_id,
                    pb.timestamp_s,
                    [
                        servewise_pb2.SampleViolation(
                            field="sample.deployment_id", description=str(exc)
                        )
                    ],
                    unknown=True,
                )
            ]
        track = self._tracks.setdefault(deployment_id, _Track())
        track.last_timestamp_s = sample.timestamp_s
        track.samples.append(sample)
        _trim(track, stored.settings)
        return self._run(deployment_id, sample, track, stored, wait_for_advice)

    def resume(
        self, pending: PendingAdvice, wait_for_advice: bool = False
    ) -> list[servewise_pb2.ControlResponse] | PendingAdvice:
        """Decide ``pending``'s sample again, from a fresh store read (another stream may have
        written while the answer was computed)."""
        return self._run(
            pending.deployment_id, pending.sample, pending.track, None, wait_for_advice
        )

    def _run(
        self,
        deployment_id: str,
        sample: control.Sample,
        track: _Track,
        stored: deployments.StoredDeployment | None,
        wait_for_advice: bool,
    ) -> list[servewise_pb2.ControlResponse] | PendingAdvice:
        self._wait_for_advice = wait_for_advice
        lock = self.hub.lock(deployment_id)
        # On the event loop a worker holding the lock (a write, an fsync) must not stall it.
        if not lock.acquire(blocking=not self.hub.on_loop):
            return PendingAdvice(None, deployment_id, sample, track)
        try:
            event = self._decide(deployment_id, sample, track, stored)
        except AdviceMissError as miss:
            return PendingAdvice(miss, deployment_id, sample, track)
        except NeedsThreadError:
            return PendingAdvice(None, deployment_id, sample, track)
        finally:
            lock.release()
        return [] if event is None else [event]

    def _decide(
        self,
        deployment_id: str,
        sample: control.Sample,
        track: _Track,
        stored: deployments.StoredDeployment | None,
    ) -> servewise_pb2.ControlResponse | None:
        """Read, decide, write; again from a fresh read when the write finds a newer version."""
        for _ in range(MAX_ATTEMPTS):
            if stored is None:
                stored = self.hub.load(deployment_id)
            try:
                if stored.pb.HasField("transition"):
                    return self._step(deployment_id, sample, track, stored)
                return self._evaluate(deployment_id, sample, track, stored)
            except StaleVersionError:
                stored = None
        return self._hold(
            deployment_id,
            sample,
            0,
            reason=f"gave up after {MAX_ATTEMPTS} concurrent writes to the deployment",
        )

    # --- No transition: the EvaluateSwitch engine ---------------------------------------------

    def _evaluate(
        self,
        deployment_id: str,
        sample: control.Sample,
        track: _Track,
        stored: deployments.StoredDeployment,
    ) -> servewise_pb2.ControlResponse | None:
        version = stored.pb.state_version
        state = stored.state
        advise = self.hub.advisor(state, stored.limits, wait=self._wait_for_advice)
        window = _window(track, sample)
        result = control.evaluate(state, window, stored.settings, advise)
        evaluation = deployments.evaluation_to_pb(result, stored.settings, version)
        if result.decision is control.Decision.HOLD or result.target_plan is None:
            return self._hold(deployment_id, sample, version, evaluation=evaluation)
        transition = servewise_pb2.Transition(
            from_mode=stored.pb.current_mode,
            from_plan=stored.pb.current_plan,
            to_mode=deployments.mode_of(result.target_plan),
            to_plan=plan_to_pb(result.target_plan),
            steps=evaluation.steps,
            step_index=0,
            step_started_at_s=sample.timestamp_s,
            reason=result.reason,
            panic=result.panic,
            away_from_breach=result.away_from_breach,
            planned_rate_per_s=result.sizing_rate_per_s or result.smoothed_rate_per_s,
        )
        updated = self._copy(stored)
        updated.transition.CopyFrom(transition)
        event = servewise_pb2.ControlResponse(
            deployment_id=deployment_id,
            switch_event=servewise_pb2.SwitchEvent(evaluation=evaluation, transition=transition),
            sample_timestamp_s=sample.timestamp_s,
        )
        self._commit(deployment_id, version, updated, event, evaluation)
        return event

    # --- A transition in force ----------------------------------------------------------------

    def _step(
        self,
        deployment_id: str,
        sample: control.Sample,
        track: _Track,
        stored: deployments.StoredDeployment,
    ) -> servewise_pb2.ControlResponse | None:
        version = stored.pb.state_version
        transition = stored.pb.transition
        steps = [control.Step(s.weight, s.dwell_s, s.expected_requests) for s in transition.steps]
        index = transition.step_index
        window = _window(track, sample)
        if not steps or index >= len(steps):
            raise RuntimeError(
                f"deployment {deployment_id!r} stores a transition at step {index} of {len(steps)}"
            )
        verdict = judge_step(
            steps,
            index,
            transition.step_started_at_s,
            _in_step(window, transition.step_started_at_s),
            stored.state.slo,
            stored.settings,
            # A move away from a plan predicted or observed to break the SLO never rolls back
            # to it (transitions stored before away_from_breach existed carry panic alone).
            toward_safety=transition.panic or transition.away_from_breach,
        )
        if verdict.action is StepAction.WAIT:
            return self._hold(
                deployment_id,
                sample,
                version,
                reason=verdict.reason,
                step_index=index,
                elapsed_s=verdict.elapsed_s,
            )
        updated = self._copy(stored)
        event = servewise_pb2.ControlResponse(
            deployment_id=deployment_id, sample_timestamp_s=sample.timestamp_s
        )
        if verdict.action is StepAction.ADVANCE:
            updated.transition.step_index = index + 1
            updated.transition.step_started_at_s = sample.timestamp_s
            event.advance_event.CopyFrom(_advance(transition, verdict))
        elif verdict.action is StepAction.COMPLETE:
            updated.ClearField("transition")
            updated.current_plan.CopyFrom(transition.to_plan)
            updated.current_mode = transition.to_mode
            if transition.planned_rate_per_s > 0:
                updated.planned_rate_per_s = transition.planned_rate_per_s
            updated.current_plan_since_s = sample.timestamp_s
            event.complete_event.CopyFrom(
                servewise_pb2.CompleteEvent(
                    mode=transition.to_mode,
                    plan=transition.to_plan,
                    planned_rate_per_s=updated.planned_rate_per_s,
                    plan_since_s=sample.timestamp_s,
                    reason=verdict.reason,
                )
            )
        else:
            updated.ClearField("transition")
            updated.current_plan_since_s = sample.timestamp_s
            event.rollback_event.CopyFrom(
                servewise_pb2.RollbackEvent(
                    cause=verdict.reason,
                    step_index=index,
                    abandoned_mode=transition.to_mode,
                    abandoned_plan=transition.to_plan,
                    kept_mode=stored.pb.current_mode,
                    kept_plan=stored.pb.current_plan,
                    observed_p99_ms=verdict.observed_p99_ms,
                    observed_error_rate=verdict.observed_error_rate,
                    consecutive_breaches=verdict.breach_run,
                )
            )
        self._commit(deployment_id, version, updated, event, None)
        if verdict.action is StepAction.ROLLBACK:
            track.samples.clear()
        return event

    # --- Helpers ------------------------------------------------------------------------------

    def _hold(
        self,
        deployment_id: str,
        sample: control.Sample,
        version: int,
        *,
        reason: str = "",
        evaluation: servewise_pb2.EvaluateSwitchResponse | None = None,
        step_index: int | None = None,
        elapsed_s: float = 0.0,
    ) -> servewise_pb2.ControlResponse | None:
        if not self.want_hold_events:
            return None
        hold = servewise_pb2.HoldEvent(
            reason=reason if evaluation is None else evaluation.reason,
            evaluation=evaluation,
            step_index=step_index,
            step_elapsed_s=elapsed_s,
        )
        return servewise_pb2.ControlResponse(
            deployment_id=deployment_id,
            hold_event=hold,
            state_version=version,
            sample_timestamp_s=sample.timestamp_s,
        )

    def _copy(self, stored: deployments.StoredDeployment) -> servewise_pb2.Deployment:
        updated = servewise_pb2.Deployment()
        updated.CopyFrom(stored.pb)
        updated.state_version = 0
        updated.updated_at_s = self.hub.clock()
        return updated

    def _notify(self, written: servewise_pb2.Deployment, version: int) -> None:
        if self.hub.on_write is not None:
            self.hub.on_write(written, version)

    def _commit(
        self,
        deployment_id: str,
        version: int,
        updated: servewise_pb2.Deployment,
        event: servewise_pb2.ControlResponse,
        evaluation: servewise_pb2.EvaluateSwitchResponse | None,
    ) -> None:
        """Write ``updated`` at ``version`` and log ``event`` as one atomic store operation;
        fills in the event's state version and decision seq (and a SWITCH's, in the stored
        transition too). StaleVersionError (nothing written) when the state or the log moved.

        Both numbers are known before the write: a compare-and-set at ``version`` makes
        ``version + 1``, and the seq is required to be the one read here, so the logged record
        carries them exactly as the client sees them."""
        key = deployments.deployment_key(deployment_id)
        seq = self.hub.store.last_decision_seq(key) + 1
        event.state_version = version + 1
        event.decision_seq = seq
        if event.HasField("switch_event"):
            updated.transition.decision_seq = seq
            event.switch_event.transition.decision_seq = seq
            event.switch_event.evaluation.decision_seq = seq
        if evaluation is not None:
            evaluation.decision_seq = seq
        record = servewise_pb2.DecisionRecord(
            deployment_id=deployment_id,
            evaluation=evaluation,
            control_event=event,
            recorded_at_s=self.hub.clock(),
        )
        written, logged = self.hub.store.compare_and_set_with_decision(
            key,
            version,
            updated.SerializeToString(deterministic=True),
            record.SerializeToString(deterministic=True),
            expected_seq=seq,
        )
        if (written, logged) != (version + 1, seq):
            raise RuntimeError(
                f"store wrote {deployment_id!r} as v{written} #{logged}, "
                f"expected v{version + 1} #{seq}"
            )
        self._notify(updated, written)


def _advice_worker_init(server_pid: int) -> None:
    """Advice worker initializer: run below the server's priority, and exit once the server
    is gone. A worker blocks reading its call queue, whose write end it holds itself, so a
    server killed (or stopped before the executor's manager told the workers) would leave it
    waiting for good."""
    os.nice(ADVICE_NICENESS)
    exit_with_server(server_pid, "advice-parent-watch")


def _window(track: _Track, sample: control.Sample) -> Sequence[control.Sample]:
    """The track's samples up to ``sample``. It is normally the newest (just appended; the
    timestamps do not go backwards), so the window is the track itself, whose statistics are
    kept up to date as samples come and go (:class:`~servewise.core.window.SampleWindow`:
    a decision costs the same whatever the window's length)."""
    if len(track.samples) and track.samples[-1] is sample:
        return track.samples
    return [s for s in track.samples if s.timestamp_s <= sample.timestamp_s]


def _in_step(window: Sequence[control.Sample], started_at_s: float) -> Sequence[control.Sample]:
    """What :func:`judge_step` looks at of ``window``: the samples from the step's start on
    (it ignores the others), found by bisection in a track's window; the newest alone when
    it predates the step (judge_step then waits)."""
    if isinstance(window, SampleWindow):
        return window.since(started_at_s) or [window[-1]]
    return window


def _trim(track: _Track, settings: control.ControlSettings) -> None:
    """Drop samples older than :func:`servewise.core.control.sample_window_s` (the longer
    stabilisation window plus two EWMA half-lives)."""
    horizon = control.sample_window_s(settings)
    newest = track.samples[-1].timestamp_s
    while len(track.samples) > 1 and track.samples[0].timestamp_s < newest - horizon:
        track.samples.popleft()


def _advance(
    transition: servewise_pb2.Transition, verdict: StepVerdict
) -> servewise_pb2.AdvanceEvent:
    index = transition.step_index + 1
    return servewise_pb2.AdvanceEvent(
        step_index=index,
        step=transition.steps[index],
        observed_p99_ms=verdict.observed_p99_ms,
        observed_error_rate=verdict.observed_error_rate,
        observed_samples=verdict.observed_samples,
        step_elapsed_s=verdict.elapsed_s,
        reason=verdict.reason,
    )


def _rejected(
    deployment_id: str,
    timestamp_s: float,
    violations: list[servewise_pb2.SampleViolation],
    *,
    unknown: bool = False,
) -> servewise_pb2.ControlResponse:
    return servewise_pb2.ControlResponse(
        deployment_id=deployment_id,
        sample_rejected=servewise_pb2.SampleRejected(
            violations=violations,
            timestamp_s=timestamp_s,
            unknown_deployment=unknown,
            code=code_pb2.NOT_FOUND if unknown else code_pb2.INVALID_ARGUMENT,
        ),
        sample_timestamp_s=timestamp_s,
    )
