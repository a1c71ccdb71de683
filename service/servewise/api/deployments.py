"""Deployments (RegisterDeployment, GetDeployment, ListDeployments) and EvaluateSwitch.

Validation names every invalid field by its path; conversions to and from the core's control
types live here; state goes through a :class:`servewise.store.StateStore`:

- a deployment is a serialised ``Deployment`` under the key ``deployment/<id>``, with its
  settings resolved (defaults filled in) and ``state_version`` left 0 in the stored bytes (the
  store's version is the state version and is filled in on every read);
- each EvaluateSwitch decision is appended to the same key's decision log as a serialised
  ``DecisionRecord`` (the full response: decision, numbers, reason, the state version it was made
  against). EvaluateSwitch never changes the deployment itself: the Control stream carries a
  switch out and moves ``current_plan``. A request rejected as invalid, or for an unknown
  deployment, appends nothing.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from servewise.api.converters import candidates_to_core, plan_to_pb
from servewise.api.errors import LimitExceededError, NotFoundError
from servewise.api.select_mode import MAX_TRAFFIC_CLASSES, class_to_core
from servewise.api.validation import (
    Violations,
    check_non_negative,
    limits_to_core,
    plan_to_core,
    rate_in_range,
    slo_to_core,
    use_p99_basis,
)
from servewise.core import control
from servewise.core.model import Plan
from servewise.core.optimizer import SearchLimits
from servewise.core.profiles import Candidate
from servewise.limits import DEFAULT_LIMITS, described, use
from servewise.limits import current as current_limits
from servewise.store import StateStore
from servewise.v1 import servewise_pb2, types_pb2

KEY_PREFIX = "deployment/"
DEPLOYMENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_SAMPLES = 10_000
MAX_WINDOW_S = 7 * 86_400.0
MAX_DWELL_S = 30 * 86_400.0
MAX_PANIC_SAMPLES = 1000
MAX_TRANSITION_STEPS = 10
# Largest observed latency accepted in a sample: an hour.
MAX_LATENCY_MS = 3_600_000.0


# Creations in this process take turns counting, so concurrent RegisterDeployments cannot both
# take the last free place. Replicas sharing a Redis store count independently: across replicas
# the cap can be passed by at most one creation per replica racing for the last place.
_CREATE_LOCK = threading.Lock()


def deployment_key(deployment_id: str) -> str:
    return KEY_PREFIX + deployment_id


def _check_id(v: Violations, field: str, value: str) -> bool:
    if DEPLOYMENT_ID_RE.fullmatch(value):
        return True
    v.add(field, f"must be 1 to 128 characters of [A-Za-z0-9._-] (got {value!r})")
    return False


# --- Settings ---------------------------------------------------------------------------------


def _bounded(
    v: Violations, field: str, value: float, low: float, high: float, *, open_low: bool = False
) -> bool:
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        v.add(field, f"must be finite and in {bracket}{low:g}, {high:g}] (got {value!r})")
    return ok


# (DeploymentSettings field, ControlSettings attribute, low, high, low excluded)
_FLOAT_SETTINGS: tuple[tuple[str, str, float, float, bool], ...] = (
    ("safety_stabilisation_window_s", "safety_window_s", 0.0, MAX_WINDOW_S, False),
    ("savings_stabilisation_window_s", "savings_window_s", 0.0, MAX_WINDOW_S, False),
    ("min_dwell_s", "min_dwell_s", 0.0, MAX_DWELL_S, False),
    ("expected_dwell_s", "expected_dwell_s", 0.0, MAX_DWELL_S, True),
    ("ewma_half_life_s", "ewma_half_life_s", 0.0, MAX_WINDOW_S, False),
    ("error_rate_limit", "error_rate_limit", 0.0, 1.0, True),
)


def settings_to_core(
    v: Violations, pb: servewise_pb2.DeploymentSettings, path: str, base: control.ControlSettings
) -> control.ControlSettings:
    """``base`` with every field set in ``pb`` replaced (each checked at ``path``.field)."""
    changes: dict[str, object] = {}
    for name, attr, low, high, open_low in _FLOAT_SETTINGS:
        if pb.HasField(name):  # type: ignore[arg-type]  # names from the table above
            value = getattr(pb, name)
            if _bounded(v, f"{path}.{name}", value, low, high, open_low=open_low):
                changes[attr] = value
    if pb.HasField("hysteresis_band_fraction"):
        value = pb.hysteresis_band_fraction
        if math.isfinite(value) and 0.0 <= value < 1.0:
            changes["hysteresis_band"] = value
        else:
            v.add(
                f"{path}.hysteresis_band_fraction", f"must be finite and in [0, 1) (got {value!r})"
            )
    if pb.HasField("panic_consecutive_samples"):
        count = pb.panic_consecutive_samples
        if 1 <= count <= MAX_PANIC_SAMPLES:
            changes["panic_samples"] = int(count)
        else:
            v.add(
                f"{path}.panic_consecutive_samples",
                f"must be in [1, {MAX_PANIC_SAMPLES}] (got {count})",
            )
    if pb.transition_weights:
        weights = _weights(v, list(pb.transition_weights), f"{path}.transition_weights")
        if weights is not None:
            changes["transition_weights"] = weights
    return replace(base, **changes)  # type: ignore[arg-type]


def _weights(v: Violations, weights: list[float], field: str) -> tuple[float, ...] | None:
    if len(weights) > MAX_TRANSITION_STEPS:
        v.add(field, f"at most {MAX_TRANSITION_STEPS} steps (got {len(weights)})")
        return None
    start = len(v)
    for i, w in enumerate(weights):
        if not (math.isfinite(w) and 0.0 < w <= 1.0):
            v.add(f"{field}[{i}]", f"must be in (0, 1] (got {w!r})")
        elif i > 0 and math.isfinite(weights[i - 1]) and w <= weights[i - 1]:
            v.add(f"{field}[{i}]", f"must be greater than the previous weight {weights[i - 1]!r}")
    if len(v) == start and weights[-1] != 1.0:
        v.add(f"{field}[{len(weights) - 1}]", f"the last weight must be 1 (got {weights[-1]!r})")
    return tuple(weights) if len(v) == start else None


def settings_to_pb(s: control.ControlSettings) -> servewise_pb2.DeploymentSettings:
    return servewise_pb2.DeploymentSettings(
        safety_stabilisation_window_s=s.safety_window_s,
        savings_stabilisation_window_s=s.savings_window_s,
        hysteresis_band_fraction=s.hysteresis_band,
        min_dwell_s=s.min_dwell_s,
        expected_dwell_s=s.expected_dwell_s,
        ewma_half_life_s=s.ewma_half_life_s,
        panic_consecutive_samples=s.panic_samples,
        error_rate_limit=s.error_rate_limit,
        transition_weights=list(s.transition_weights),
    )


# --- Deployments ------------------------------------------------------------------------------

_ONLINE_MODES = (types_pb2.SERVING_MODE_REALTIME, types_pb2.SERVING_MODE_DYNAMIC_BATCHING)


def mode_of(plan: Plan) -> types_pb2.ServingMode.ValueType:
    return (
        types_pb2.SERVING_MODE_REALTIME
        if control.is_realtime(plan)
        else types_pb2.SERVING_MODE_DYNAMIC_BATCHING
    )


@dataclass(frozen=True)
class StoredDeployment:
    """A deployment read back from the store, converted for the controller."""

    pb: servewise_pb2.Deployment
    state: control.DeploymentState
    settings: control.ControlSettings
    limits: SearchLimits


def _mode(v: Violations, pb: servewise_pb2.Deployment, plan: Plan | None) -> None:
    mode = pb.current_mode
    field = "deployment.current_mode"
    if mode == types_pb2.SERVING_MODE_UNSPECIFIED:
        return
    if mode not in types_pb2.ServingMode.values():
        v.add(field, f"unknown ServingMode value {mode}")
    elif mode not in _ONLINE_MODES:
        v.add(field, "the controller steers REALTIME or DYNAMIC_BATCHING deployments")
    elif (
        plan is not None
        and mode == types_pb2.SERVING_MODE_REALTIME
        and not control.is_realtime(plan)
    ):
        v.add(field, "REALTIME needs current_plan with max_batch_size 1 and max_queue_delay_ms 0")


def _transition_steps(v: Violations, t: servewise_pb2.Transition, path: str) -> None:
    if not t.steps:
        v.add(f"{path}.steps", "a transition needs its steps (leave transition unset for none)")
        return
    for i, step in enumerate(t.steps):
        field, w = f"{path}.steps[{i}].weight", step.weight
        if not (math.isfinite(w) and 0.0 < w <= 1.0):
            v.add(field, f"must be in (0, 1] (got {w!r})")
        elif i > 0 and w <= t.steps[i - 1].weight:
            v.add(field, f"must be greater than the previous step's {t.steps[i - 1].weight!r}")
        elif i == len(t.steps) - 1 and w != 1.0:
            v.add(field, f"the last step's weight must be 1 (got {w!r})")
        check_non_negative(v, f"{path}.steps[{i}].dwell_s", step.dwell_s)
        check_non_negative(v, f"{path}.steps[{i}].expected_requests", step.expected_requests)
    if t.step_index >= len(t.steps):
        v.add(
            f"{path}.step_index",
            f"must index one of the {len(t.steps)} steps (got {t.step_index})",
        )


def _transition(
    v: Violations, pb: servewise_pb2.Deployment, by_name: dict[str, Candidate] | None
) -> None:
    """A transition the Control stream wrote comes back when a client re-registers what it
    read (read-modify-write), so it is accepted, but only whole: the stream and Route act on
    its steps, index and plans, and a malformed one stored would fail every later sample."""
    if not pb.HasField("transition"):
        return
    t = pb.transition
    path = "deployment.transition"
    _transition_steps(v, t, path)
    check_non_negative(v, f"{path}.step_started_at_s", t.step_started_at_s)
    check_non_negative(v, f"{path}.planned_rate_per_s", t.planned_rate_per_s)
    if t.HasField("to_plan"):
        plan_to_core(v, t.to_plan, f"{path}.to_plan", by_name)
    else:
        v.add(f"{path}.to_plan", "is required: the plan traffic shifts to")
    if t.HasField("from_plan"):
        plan_to_core(v, t.from_plan, f"{path}.from_plan", by_name)
    for field, mode in (("from_mode", t.from_mode), ("to_mode", t.to_mode)):
        if mode != types_pb2.SERVING_MODE_UNSPECIFIED and mode not in _ONLINE_MODES:
            v.add(f"{path}.{field}", "the controller shifts between REALTIME and DYNAMIC_BATCHING")


def _traffic_classes(v: Violations, pb: servewise_pb2.Deployment, total: float | None) -> None:
    count = len(pb.traffic_classes)
    if count > MAX_TRAFFIC_CLASSES:
        v.add(
            "deployment.traffic_classes",
            f"at most {MAX_TRAFFIC_CLASSES} traffic classes (got {count})",
        )
        return
    seen: dict[str, int] = {}
    for i, item in enumerate(pb.traffic_classes):
        path = f"deployment.traffic_classes[{i}]"
        if item.name in seen:
            v.add(f"{path}.name", f"duplicates traffic_classes[{seen[item.name]}].name")
        elif item.name:
            seen[item.name] = i
        class_to_core(v, item, path, total)


def validate_deployment(pb: servewise_pb2.Deployment) -> servewise_pb2.Deployment:
    """The deployment as it is stored (settings and mode resolved, outputs cleared), or
    InvalidInputError naming every invalid field under ``deployment.``."""
    v = Violations()
    _check_id(v, "deployment.deployment_id", pb.deployment_id)
    use_p99 = use_p99_basis(v, "deployment.service_time_basis", pb.service_time_basis)
    converted = candidates_to_core(v, pb.candidates, use_p99, "deployment.candidates")
    by_name = (
        None if converted is None else {c.candidate.instance.name: c.candidate for c in converted}
    )
    if pb.HasField("slo"):
        slo_to_core(v, pb.slo, "deployment.slo")
    else:
        v.add("deployment.slo", "is required")
    limits_to_core(v, pb.limits, "deployment.limits")
    plan = None
    if pb.HasField("current_plan"):
        plan = plan_to_core(v, pb.current_plan, "deployment.current_plan", by_name)
    else:
        v.add("deployment.current_plan", "is required: the plan in force")
    _mode(v, pb, plan)
    rate_ok = rate_in_range(v, "deployment.planned_rate_per_s", pb.planned_rate_per_s)
    if pb.HasField("current_plan_since_s"):
        check_non_negative(v, "deployment.current_plan_since_s", pb.current_plan_since_s)
    _traffic_classes(v, pb, pb.planned_rate_per_s if rate_ok else None)
    _transition(v, pb, by_name)
    settings = settings_to_core(v, pb.settings, "deployment.settings", control.ControlSettings())
    v.raise_if_any()
    assert plan is not None
    stored = servewise_pb2.Deployment()
    stored.CopyFrom(pb)
    stored.state_version = 0
    stored.ClearField("updated_at_s")
    stored.settings.CopyFrom(settings_to_pb(settings))
    if stored.current_mode == types_pb2.SERVING_MODE_UNSPECIFIED:
        stored.current_mode = mode_of(plan)
    return stored


# What stored deployments are re-validated against: they passed the request-size limits when
# they were written, and lowering a limit later must not make them unreadable (an INTERNAL).
_STORED_LIMITS = replace(
    DEFAULT_LIMITS, max_candidates=2**31, max_profile_points=2**31, max_arrival_times=2**31
)


def load(store: StateStore, deployment_id: str) -> StoredDeployment:
    """A stored deployment with its version and controller view; NotFoundError when unknown."""
    found = store.get(deployment_key(deployment_id))
    if found is None:
        raise NotFoundError(f"deployment {deployment_id!r} not found")
    with use(_STORED_LIMITS):
        return _stored(deployment_id, found.value, found.version)


def _stored(deployment_id: str, value: bytes, version: int) -> StoredDeployment:
    pb = servewise_pb2.Deployment.FromString(value)
    pb.state_version = version
    v = Violations()
    use_p99 = use_p99_basis(v, "service_time_basis", pb.service_time_basis)
    converted = candidates_to_core(v, pb.candidates, use_p99)
    candidates: list[Candidate] = [c.candidate for c in converted or []]
    slo = slo_to_core(v, pb.slo, "slo")
    limits = limits_to_core(v, pb.limits, "limits")
    plan = plan_to_core(
        v, pb.current_plan, "current_plan", {c.instance.name: c for c in candidates}
    )
    settings = settings_to_core(v, pb.settings, "settings", control.ControlSettings())
    if len(v) or slo is None or limits is None or plan is None:
        raise RuntimeError(f"stored deployment {deployment_id!r} no longer validates")
    state = control.DeploymentState(
        candidates=tuple(candidates),
        slo=slo,
        current_plan=plan,
        planned_rate_per_s=pb.planned_rate_per_s,
        plan_since_s=pb.current_plan_since_s if pb.HasField("current_plan_since_s") else None,
    )
    return StoredDeployment(pb, state, settings, limits)


def register(
    store: StateStore,
    request: servewise_pb2.RegisterDeploymentRequest,
    clock: Callable[[], float] = time.time,
) -> servewise_pb2.RegisterDeploymentResponse:
    """Create (state_version 0) or update (the current state_version) one deployment; a stale
    version raises StaleVersionError (FAILED_PRECONDITION)."""
    if not request.HasField("deployment"):
        v = Violations()
        v.add("deployment", "is required")
        v.raise_if_any()
    stored = validate_deployment(request.deployment)
    stored.updated_at_s = clock()
    key = deployment_key(stored.deployment_id)
    expected = request.deployment.state_version
    value = stored.SerializeToString(deterministic=True)
    if expected != 0 or store.get(key) is not None:
        # An update (or a stale create, which compare_and_set refuses): never capped.
        version = store.compare_and_set(key, expected, value)
    else:
        with _CREATE_LOCK:
            _check_room(store)
            version = store.compare_and_set(key, expected, value)
    stored.state_version = version
    return servewise_pb2.RegisterDeploymentResponse(deployment=stored)


def _check_room(store: StateStore) -> None:
    """LimitExceededError when the store already holds max_deployments.

    RESOURCE_EXHAUSTED rather than FAILED_PRECONDITION: it is a quota (AIP-193: "a resource
    quota ... has been exhausted"), retrying after deployments are freed or the limit raised
    succeeds unchanged, and FAILED_PRECONDITION already means a stale state_version here,
    which clients answer by re-reading and retrying at once."""
    cap = current_limits().max_deployments
    count = len(store.keys(KEY_PREFIX))
    if count >= cap:
        raise LimitExceededError(
            "max_deployments",
            f"{count} deployments are registered, the {described('max_deployments')} "
            f"({cap}); update an existing deployment or raise the limit",
        )


def get(
    store: StateStore, request: servewise_pb2.GetDeploymentRequest
) -> servewise_pb2.GetDeploymentResponse:
    v = Violations()
    _check_id(v, "deployment_id", request.deployment_id)
    v.raise_if_any()
    return servewise_pb2.GetDeploymentResponse(deployment=load(store, request.deployment_id).pb)


def _page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def list_deployments(
    store: StateStore, request: servewise_pb2.ListDeploymentsRequest
) -> servewise_pb2.ListDeploymentsResponse:
    """Deployments ordered by id, ``page_size`` at a time; the token is the last id returned."""
    v = Violations()
    size = request.page_size or DEFAULT_PAGE_SIZE
    if size > MAX_PAGE_SIZE:
        v.add("page_size", f"must be at most {MAX_PAGE_SIZE} (got {size})")
    after = ""
    if request.page_token:
        try:
            after = base64.urlsafe_b64decode(request.page_token.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            v.add("page_token", "is not a token this service returned")
        else:
            if not DEPLOYMENT_ID_RE.fullmatch(after):
                v.add("page_token", "is not a token this service returned")
    v.raise_if_any()
    keys = [k for k in store.keys(KEY_PREFIX) if k[len(KEY_PREFIX) :] > after]
    response = servewise_pb2.ListDeploymentsResponse()
    for key in keys[:size]:
        found = store.get(key)
        if found is None:  # deleted between keys() and get()
            continue
        item = response.deployments.add()
        item.ParseFromString(found.value)
        item.state_version = found.version
    if len(keys) > size and response.deployments:
        response.next_page_token = _page_token(response.deployments[-1].deployment_id)
    return response


# --- EvaluateSwitch ---------------------------------------------------------------------------


def samples_to_core(
    v: Violations, deployment_id: str, samples: Sequence[servewise_pb2.MetricSample]
) -> list[control.Sample]:
    """Validated samples: finite, non-negative, fractions in [0, 1], timestamps non-decreasing,
    and each naming the request's deployment (or none)."""
    if not samples:
        v.add("samples", "at least one sample is required")
        return []
    if len(samples) > MAX_SAMPLES:
        v.add("samples", f"at most {MAX_SAMPLES} samples (got {len(samples)})")
        return []
    out: list[control.Sample] = []
    start = len(v)
    previous: float | None = None
    for i, s in enumerate(samples):
        path = f"samples[{i}]"
        if s.deployment_id and s.deployment_id != deployment_id:
            v.add(f"{path}.deployment_id", f"must be empty or {deployment_id!r}")
        if check_non_negative(v, f"{path}.timestamp_s", s.timestamp_s):
            if previous is not None and s.timestamp_s < previous:
                v.add(
                    f"{path}.timestamp_s",
                    f"goes backwards: {s.timestamp_s!r} after {previous!r}",
                )
            previous = s.timestamp_s
        if check_non_negative(v, f"{path}.rate_per_s", s.rate_per_s) and s.rate_per_s > 1e9:
            v.add(f"{path}.rate_per_s", f"must be at most 1e9 (got {s.rate_per_s!r})")
        _bounded(v, f"{path}.p50_ms", s.p50_ms, 0.0, MAX_LATENCY_MS)
        _bounded(v, f"{path}.p99_ms", s.p99_ms, 0.0, MAX_LATENCY_MS)
        _bounded(v, f"{path}.utilisation", s.utilisation, 0.0, 1.0)
        _bounded(v, f"{path}.error_rate", s.error_rate, 0.0, 1.0)
        if len(v) == start:
            out.append(
                control.Sample(
                    timestamp_s=s.timestamp_s,
                    rate_per_s=s.rate_per_s,
                    p50_ms=s.p50_ms,
                    p99_ms=s.p99_ms,
                    queue_depth=int(s.queue_depth),
                    utilisation=s.utilisation,
                    error_rate=s.error_rate,
                )
            )
    return out


_DECISIONS = {
    control.Decision.HOLD: servewise_pb2.SWITCH_DECISION_HOLD,
    control.Decision.SWITCH: servewise_pb2.SWITCH_DECISION_SWITCH,
}


def evaluation_to_pb(
    result: control.Evaluation, settings: control.ControlSettings, state_version: int
) -> servewise_pb2.EvaluateSwitchResponse:
    pb = servewise_pb2.EvaluateSwitchResponse(
        decision=_DECISIONS[result.decision],
        current_cost_per_hour=result.current_cost_per_hour,
        target_cost_per_hour=result.target_cost_per_hour,
        saving_per_hour=result.saving_per_hour,
        switch_cost=result.switch_cost,
        net_saving_per_hour=result.net_saving_per_hour,
        smoothed_rate_per_s=result.smoothed_rate_per_s,
        reason=result.reason,
        steps=[
            servewise_pb2.TransitionStep(
                weight=s.weight, dwell_s=s.dwell_s, expected_requests=s.expected_requests
            )
            for s in result.steps
        ],
        panic=result.panic,
        state_version=state_version,
        evaluated_at_s=result.evaluated_at_s,
        settings=settings_to_pb(settings),
    )
    if result.target_plan is not None:
        pb.target_plan.CopyFrom(plan_to_pb(result.target_plan))
        pb.target_mode = mode_of(result.target_plan)
    return pb


class SwitchEvaluator:
    """EvaluateSwitch over a store, with the optimizer's answers cached across requests."""

    def __init__(self, store: StateStore, cache: control.AdviceCache | None = None) -> None:
        self.store = store
        self.cache = cache if cache is not None else control.AdviceCache()

    def evaluate(
        self,
        request: servewise_pb2.EvaluateSwitchRequest,
        clock: Callable[[], float] = time.time,
    ) -> servewise_pb2.EvaluateSwitchResponse:
        """Validate, decide, append the decision to the log, answer. Nothing is written when
        the request is invalid or the deployment unknown."""
        v = Violations()
        _check_id(v, "deployment_id", request.deployment_id)
        samples = samples_to_core(v, request.deployment_id, request.samples)
        v.raise_if_any()
        stored = load(self.store, request.deployment_id)
        settings = settings_to_core(
            v, request.settings_override, "settings_override", stored.settings
        )
        v.raise_if_any()
        version = stored.pb.state_version
        advise = control.cached_advisor(
            self.cache,
            control.advice_key(
                stored.state.candidates,
                stored.state.slo,
                stored.limits,
                stored.state.current_plan,
            ),
            control.optimizer_advisor(
                stored.state.candidates,
                stored.state.slo,
                stored.limits,
                stored.state.current_plan,
            ),
        )
        result = control.evaluate(stored.state, samples, settings, advise)
        response = evaluation_to_pb(result, settings, version)
        record = servewise_pb2.DecisionRecord(
            deployment_id=request.deployment_id, evaluation=response, recorded_at_s=clock()
        )
        response.decision_seq = self.store.append_decision(
            deployment_key(request.deployment_id), record.SerializeToString(deterministic=True)
        )
        return response
