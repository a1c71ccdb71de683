"""Route: the load balancer's hot path, answered from an in-memory table of deployments.

:class:`RouteTable` maps deployment id -> (state version, precomputed
:class:`servewise.core.routing.RouteParams`). It is filled from the store on first use, then
kept fresh by a background asyncio task that polls the store every ``poll_interval_s``
(0.25 s by default, so another replica's write is seen within about a second even with a slow
store), plus :meth:`RouteTable.apply` after this process's own writes. A request never touches
the store: it is a dict lookup, a few checks and at most one BLAKE2b of the key.

Per state version (not per request) the table computes the batch pool's predicted p99 with
:func:`servewise.core.queueing.predict`: the batching plan in force (the transition's target
when it is a batching plan, else the one being left, else ``current_plan``) at the
deployment's ``planned_rate_per_s`` (the transition's, when its target is that batching plan)
with Poisson arrivals. The rule itself is in
:mod:`servewise.core.routing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import NoReturn

from servewise.api.deployments import DEPLOYMENT_ID_RE, KEY_PREFIX
from servewise.api.errors import NotFoundError
from servewise.api.validation import Violations
from servewise.core.model import Plan, Workload
from servewise.core.queueing import predict
from servewise.core.routing import Pool, RouteParams, route, route_params
from servewise.store import StateStore
from servewise.v1 import servewise_pb2, types_pb2

logger = logging.getLogger(__name__)

# Longest request_key accepted, in UTF-8 bytes.
MAX_REQUEST_KEY_BYTES = 1024
DEFAULT_POLL_INTERVAL_S = 0.25

_POOLS = {Pool.REALTIME: servewise_pb2.POOL_REALTIME, Pool.BATCH: servewise_pb2.POOL_BATCH}


@dataclass(frozen=True)
class RouteEntry:
    """One deployment as Route sees it: the version, the rule's parameters, the class names,
    and the two possible responses (prebuilt: answering is picking one)."""

    version: int
    params: RouteParams
    classes: frozenset[str]
    responses: dict[Pool, servewise_pb2.RouteResponse]


def _pool_of(mode: int, plan: types_pb2.ServingPlan) -> Pool:
    if mode == types_pb2.SERVING_MODE_REALTIME:
        return Pool.REALTIME
    if mode == types_pb2.SERVING_MODE_DYNAMIC_BATCHING:
        return Pool.BATCH
    # Unspecified (or another mode): decided by the plan, as RegisterDeployment does.
    realtime = plan.max_batch_size <= 1 and plan.max_queue_delay_ms == 0.0
    return Pool.REALTIME if realtime else Pool.BATCH


def _batch_p99_ms(
    pb: servewise_pb2.Deployment, plan_pb: types_pb2.ServingPlan, rate_per_s: float
) -> float:
    """Predicted p99 of ``plan_pb`` at ``rate_per_s``; inf when it cannot be predicted."""
    # Imported here: the candidate conversion pulls in the optimizer's validation.
    from servewise.api.converters import candidates_to_core  # noqa: PLC0415
    from servewise.api.validation import use_p99_basis  # noqa: PLC0415

    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", pb.service_time_basis)
    converted = candidates_to_core(v, pb.candidates, use_p99)
    by_name = {c.candidate.instance.name: c.candidate for c in converted or []}
    candidate = by_name.get(plan_pb.instance_type)
    if candidate is None:
        return math.inf
    plan = Plan(
        instance_type=plan_pb.instance_type,
        max_batch_size=max(1, int(plan_pb.max_batch_size)),
        max_queue_delay_ms=plan_pb.max_queue_delay_ms,
        replicas=max(1, int(plan_pb.replicas)),
    )
    try:
        p99 = predict(candidate.profile, plan, Workload(rate_per_s), None).p99_ms
    except (ValueError, ArithmeticError):
        return math.inf
    return p99 if math.isfinite(p99) else math.inf


def entry_for(pb: servewise_pb2.Deployment, version: int) -> RouteEntry:
    """The Route entry of a stored deployment at ``version``."""
    transition = pb.transition
    shifting = pb.HasField("transition") and len(transition.steps) > 0
    target: Pool | None = None
    weight = 0.0
    rate = pb.planned_rate_per_s
    if shifting:
        from_plan = transition.from_plan if transition.HasField("from_plan") else pb.current_plan
        from_mode = transition.from_mode or pb.current_mode
        current = _pool_of(from_mode, from_plan)
        target = _pool_of(transition.to_mode, transition.to_plan)
        step = transition.steps[min(int(transition.step_index), len(transition.steps) - 1)]
        weight = min(max(step.weight, 0.0), 1.0) if math.isfinite(step.weight) else 0.0
        batch_plan = transition.to_plan if target is Pool.BATCH else from_plan
        if target is Pool.BATCH and transition.planned_rate_per_s > 0:
            rate = transition.planned_rate_per_s  # the rate the target plan was chosen for
    else:
        current = _pool_of(pb.current_mode, pb.current_plan)
        batch_plan = pb.current_plan
    p99 = _batch_p99_ms(pb, batch_plan, rate) if Pool.BATCH in (current, target) else None
    deadlines = {
        c.name: c.deadline_s * 1000.0
        for c in pb.traffic_classes
        if c.name and c.WhichOneof("requirement") == "deadline_s"
    }
    params = route_params(
        current=current, target=target, weight=weight, batch_p99_ms=p99, deadline_classes=deadlines
    )
    responses = {
        pool: servewise_pb2.RouteResponse(pool=_POOLS[pool], state_version=version) for pool in Pool
    }
    return RouteEntry(
        version=version,
        params=params,
        classes=frozenset(c.name for c in pb.traffic_classes if c.name),
        responses=responses,
    )


class RouteTable:
    """Deployment id -> RouteEntry, refreshed from ``store`` in the background.

    Thread-safe for one writer at a time (``_lock``) and any number of lock-free readers: an
    entry is replaced whole, and only by a newer version.
    """

    def __init__(self, store: StateStore, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.entries: dict[str, RouteEntry] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._last_token: object | None = None

    # --- filling -------------------------------------------------------------------------------

    def apply(self, pb: servewise_pb2.Deployment, version: int | None = None) -> None:
        """Take ``pb`` (at ``version``, default ``pb.state_version``) unless a newer version of
        the deployment is already in the table. Used by the poller and after local writes."""
        at = pb.state_version if version is None else version
        current = self.entries.get(pb.deployment_id)
        if current is not None and current.version >= at:
            return
        entry = entry_for(pb, at)
        with self._lock:
            current = self.entries.get(pb.deployment_id)
            if current is None or current.version < at:
                self.entries[pb.deployment_id] = entry

    def refresh(self) -> None:
        """Read every deployment's version from the store; rebuild entries whose version moved
        and drop the ones that are gone. Blocking: run it in a worker thread.

        The store is read only when its change token moved since the last full read:
        re-reading every deployment four times a second was ~2% of a saturated server's CPU
        under Route (bench/ghz.py)."""
        token = self.store.change_token()
        if token == self._last_token:
            return
        self._refresh_all()
        # Taken before the read: a write during it moves the token and is read next time.
        self._last_token = token

    def _refresh_all(self) -> None:
        seen: set[str] = set()
        for key in self.store.keys(KEY_PREFIX):
            deployment_id = key[len(KEY_PREFIX) :]
            found = self.store.get(key)
            if found is None:
                continue
            seen.add(deployment_id)
            current = self.entries.get(deployment_id)
            if current is not None and current.version >= found.version:
                continue
            try:
                pb = servewise_pb2.Deployment.FromString(found.value)
                self.apply(pb, found.version)
            except Exception:  # one unreadable deployment must not stop the others
                logger.exception("route_table_entry_failed", extra={"deployment_id": key})
        with self._lock:
            for gone in set(self.entries) - seen:
                del self.entries[gone]

    async def start(self) -> None:
        """Fill the table once and start the poller (idempotent; needs a running loop)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._task is not None:  # another caller started it while this one waited
                return
            await asyncio.to_thread(self.refresh)
            self._task = asyncio.create_task(self._poll(), name="servewise-route-poller")
            self._started = True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # a store hiccup: keep serving the last known weights
                logger.exception("route_table_refresh_failed")

    async def aclose(self) -> None:
        """Stop the poller."""
        task, self._task = self._task, None
        self._started = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- answering -----------------------------------------------------------------------------

    async def route(self, request: servewise_pb2.RouteRequest) -> servewise_pb2.RouteResponse:
        """The pool for one request, from memory; InvalidInputError naming every bad field, or
        NotFoundError for an unknown deployment."""
        if not self._started:
            await self.start()
        entry = self.entries.get(request.deployment_id)
        key = request.request_key.encode()
        deadline = request.deadline_ms if request.HasField("deadline_ms") else None
        cls = request.traffic_class
        if (
            entry is None
            or not key
            or len(key) > MAX_REQUEST_KEY_BYTES
            or (deadline is not None and not (deadline >= 0.0 and deadline != math.inf))
            or (cls and cls not in entry.classes)
        ):
            _reject(request, key, deadline, entry)
        pool = route(entry.params, key, traffic_class=cls, deadline_ms=deadline)
        return entry.responses[pool]


def _reject(
    request: servewise_pb2.RouteRequest,
    key: bytes,
    deadline: float | None,
    entry: RouteEntry | None,
) -> NoReturn:
    """Raise for an invalid request (every bad field) or an unknown deployment."""
    v = Violations()
    if entry is None and not DEPLOYMENT_ID_RE.fullmatch(request.deployment_id):
        v.add(
            "deployment_id",
            f"must be 1 to 128 characters of [A-Za-z0-9._-] (got {request.deployment_id!r})",
        )
    if not key:
        v.add("request_key", "is required: a stable key of the request (e.g. its id)")
    elif len(key) > MAX_REQUEST_KEY_BYTES:
        v.add("request_key", f"at most {MAX_REQUEST_KEY_BYTES} bytes (got {len(key)})")
    if deadline is not None and not (math.isfinite(deadline) and deadline >= 0.0):
        v.add("deadline_ms", f"must be finite and non-negative (got {deadline!r})")
    if entry is not None and request.traffic_class and request.traffic_class not in entry.classes:
        known = ", ".join(sorted(entry.classes)) or "none"
        v.add(
            "traffic_class",
            f"unknown traffic class {request.traffic_class!r} (the deployment has: {known})",
        )
    v.raise_if_any()
    raise NotFoundError(f"deployment {request.deployment_id!r} not found")
