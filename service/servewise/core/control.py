"""The switching controller's decision core: smoothing, hysteresis, stabilisation, panic, the
switch-or-hold decision and the transition plan (ARCHITECTURE.md section 6).

Pure: no grpc, no I/O, no clock. "Now" is the newest sample's timestamp, so a decision is a
function of the deployment's state, the sample window and the settings alone. The optimizer is
reached through an ``advise(rate)`` callable, so tests can hand in a fake and the service caches
the real one (:class:`AdviceCache`).

The decision, in order:

1. **Smoothing.** The sampled rate is smoothed by an EWMA over irregular timestamps: each sample
   pulls the average by ``1 - 2**(-dt / half_life)``.
2. **Panic.** When the newest ``panic_samples`` samples all break the SLO (observed p99 above the
   bound) or the error-rate limit, the controller moves to safety at once: the optimizer's plan at
   the higher of the smoothed and the newest raw rate, plus the hysteresis band as headroom (and
   at least one more replica than now), in a single step. No stabilisation, no minimum dwell, no
   net-saving test.
3. **Hysteresis.** Otherwise a switch is considered only when the smoothed rate has left
   ``planned_rate * (1 +- band)``, the band around the rate the current plan was chosen for; a
   rate oscillating inside the band never triggers one.
4. **Stabilisation.** The smoothed rate must have stayed on the same side outside the band for a
   window measured on the sample timestamps: short for a rise (toward safety), long for a fall
   (toward savings), as Kubernetes HPA's scale-down stabilisation and Knative KPA's stable
   window do. Moves toward savings also wait for the plan's minimum dwell.
5. **Net saving.** The optimizer's best plan at the smoothed rate is the target. The switch costs
   the current plan's capacity kept running while the target's replicas cold-start and traffic
   shifts through the weighted steps (the overlap of old and new capacity):
   ``switch_cost = current_cost_per_hour * (cold_start_s + total_dwell_s) / 3600``; over the
   expected dwell ``H`` the net saving per hour is ``saving_per_hour - switch_cost / (H / 3600)``.
   Toward savings the controller switches only when that is positive; toward safety it switches
   whenever the current plan no longer meets the SLO at the smoothed rate (the optimizer's
   assessment of the current plan), and otherwise by the same net-saving test.
6. **Transition.** Each step sends ``weight`` of the traffic to the target and dwells until the
   target has seen the requests a percentile estimate needs: ``n = 100 / (1 - q)`` (about 100
   requests beyond the percentile; 10,000 for p99), ``dwell = n / (rate * weight)``, clamped to
   ``[MIN_STEP_DWELL_S, MAX_STEP_DWELL_S]``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import SearchLimits, optimize
from servewise.core.profiles import Candidate
from servewise.core.simulator import capacity_per_s

DEFAULT_SAFETY_WINDOW_S = 30.0
DEFAULT_SAVINGS_WINDOW_S = 300.0
DEFAULT_HYSTERESIS_BAND = 0.1
DEFAULT_MIN_DWELL_S = 600.0
DEFAULT_EXPECTED_DWELL_S = 3600.0
DEFAULT_EWMA_HALF_LIFE_S = 60.0
DEFAULT_PANIC_SAMPLES = 3
DEFAULT_ERROR_RATE_LIMIT = 0.01
DEFAULT_TRANSITION_WEIGHTS = (0.1, 0.25, 0.5, 1.0)

# Requests beyond the SLO percentile a step should see: n = TAIL_REQUESTS / (1 - q) in total.
TAIL_REQUESTS = 100
# Bounds on one step's dwell: long enough for a scrape or two of metrics, short enough that a
# very low rate does not stall a transition for days (the estimate is then rougher).
MIN_STEP_DWELL_S = 30.0
MAX_STEP_DWELL_S = 3600.0
# Significant digits the smoothed rate is rounded to before the optimizer is asked (cache key).
RATE_SIGNIFICANT_DIGITS = 3


class Decision(Enum):
    HOLD = "hold"
    SWITCH = "switch"


class Direction(Enum):
    NONE = "none"
    SAFETY = "toward safety"
    SAVINGS = "toward savings"


@dataclass(frozen=True)
class ControlSettings:
    """How the controller treats one deployment (DeploymentSettings, defaults applied)."""

    safety_window_s: float = DEFAULT_SAFETY_WINDOW_S
    savings_window_s: float = DEFAULT_SAVINGS_WINDOW_S
    hysteresis_band: float = DEFAULT_HYSTERESIS_BAND
    min_dwell_s: float = DEFAULT_MIN_DWELL_S
    expected_dwell_s: float = DEFAULT_EXPECTED_DWELL_S
    ewma_half_life_s: float = DEFAULT_EWMA_HALF_LIFE_S
    panic_samples: int = DEFAULT_PANIC_SAMPLES
    error_rate_limit: float = DEFAULT_ERROR_RATE_LIMIT
    transition_weights: tuple[float, ...] = DEFAULT_TRANSITION_WEIGHTS


@dataclass(frozen=True)
class Sample:
    """One metrics sample (validated by the caller: finite, rate >= 0, time non-decreasing)."""

    timestamp_s: float
    rate_per_s: float
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    queue_depth: int = 0
    utilisation: float = 0.0
    error_rate: float = 0.0


@dataclass(frozen=True)
class DeploymentState:
    """What the controller needs of a stored deployment."""

    candidates: tuple[Candidate, ...]
    slo: Slo
    current_plan: Plan
    planned_rate_per_s: float
    plan_since_s: float | None = None


@dataclass(frozen=True)
class Advice:
    """The optimizer's answer at one rate: its best plan (or the closest one when none meets the
    SLO), and whether the deployment's current plan still meets the SLO at that rate."""

    rate_per_s: float
    plan: Plan | None
    feasible: bool
    cost_per_hour: float
    current_meets_slo: bool


Advisor = Callable[[float], Advice]


@dataclass(frozen=True)
class Step:
    weight: float
    dwell_s: float
    expected_requests: float


@dataclass(frozen=True)
class Evaluation:
    decision: Decision
    direction: Direction
    reason: str
    smoothed_rate_per_s: float
    evaluated_at_s: float
    current_cost_per_hour: float
    target_plan: Plan | None = None
    target_cost_per_hour: float = 0.0
    saving_per_hour: float = 0.0
    switch_cost: float = 0.0
    net_saving_per_hour: float = 0.0
    steps: tuple[Step, ...] = ()
    panic: bool = False


# --- Building blocks --------------------------------------------------------------------------


def ewma_rates(samples: Sequence[Sample], half_life_s: float) -> list[float]:
    """The EWMA of the rate after each sample; ``half_life_s`` 0 means no smoothing.

    A gap of ``dt`` seconds moves the average ``1 - 2**(-dt / half_life_s)`` of the way to the new
    sample, so irregular sampling weighs time, not sample count.
    """
    if not samples:
        raise ValueError("samples: at least one sample is required")
    smoothed = [samples[0].rate_per_s]
    for prev, cur in itertools.pairwise(samples):
        dt = cur.timestamp_s - prev.timestamp_s
        alpha = 1.0 if half_life_s <= 0 else 1.0 - 2.0 ** (-dt / half_life_s)
        smoothed.append(smoothed[-1] + alpha * (cur.rate_per_s - smoothed[-1]))
    return smoothed


def rounded_rate(rate_per_s: float, digits: int = RATE_SIGNIFICANT_DIGITS) -> float:
    """``rate_per_s`` to ``digits`` significant digits (the optimizer cache's granularity)."""
    if rate_per_s <= 0:
        return 0.0
    return float(f"{rate_per_s:.{digits}g}")


def requests_for_percentile(percentile: float) -> int:
    """Requests a step needs to estimate the ``percentile`` (e.g. 99): ``100 / (1 - q)``."""
    tail = 1.0 - percentile / 100.0
    return math.ceil(TAIL_REQUESTS / tail - 1e-6)


def transition_steps(
    rate_per_s: float, weights: Sequence[float], percentile: float
) -> tuple[Step, ...]:
    """A step per weight, each dwelling until the target's share of ``rate_per_s`` has sent the
    requests :func:`requests_for_percentile` asks for, within the step dwell bounds."""
    needed = requests_for_percentile(percentile)
    steps = []
    for weight in weights:
        share = rate_per_s * weight
        dwell = MAX_STEP_DWELL_S if share <= 0 else needed / share
        dwell = min(max(dwell, MIN_STEP_DWELL_S), MAX_STEP_DWELL_S)
        steps.append(Step(weight=weight, dwell_s=dwell, expected_requests=share * dwell))
    return tuple(steps)


def panic_run(samples: Sequence[Sample], slo: Slo, error_rate_limit: float) -> int:
    """How many of the newest samples in a row broke the SLO (observed p99 above the bound) or
    the error-rate limit."""
    run = 0
    for s in reversed(samples):
        if s.p99_ms > slo.latency_ms or s.error_rate > error_rate_limit:
            run += 1
        else:
            break
    return run


def held_for_s(
    samples: Sequence[Sample], smoothed: Sequence[float], outside: Callable[[float], bool]
) -> float:
    """Seconds the newest samples' smoothed rate has been ``outside`` without interruption
    (0 when the newest one is not)."""
    start: float | None = None
    for s, rate in zip(reversed(samples), reversed(smoothed), strict=True):
        if not outside(rate):
            break
        start = s.timestamp_s
    return 0.0 if start is None else samples[-1].timestamp_s - start


def plan_cost_per_hour(plan: Plan, candidates: Sequence[Candidate]) -> float:
    return plan.replicas * _candidate(plan, candidates).instance.price_per_hour


def plan_capacity_per_s(plan: Plan, candidates: Sequence[Candidate]) -> float:
    return capacity_per_s(_candidate(plan, candidates).profile, plan.max_batch_size, plan.replicas)


def _candidate(plan: Plan, candidates: Sequence[Candidate]) -> Candidate:
    for c in candidates:
        if c.instance.name == plan.instance_type:
            return c
    raise ValueError(f"plan names instance type {plan.instance_type!r}, not a candidate")


def is_realtime(plan: Plan) -> bool:
    return plan.max_batch_size == 1 and plan.max_queue_delay_ms == 0


# --- The decision ----------------------------------------------------------------------------


def evaluate(
    state: DeploymentState,
    samples: Sequence[Sample],
    settings: ControlSettings,
    advise: Advisor,
) -> Evaluation:
    """Hold or switch, with the numbers (see the module docstring for the rules).

    Parameters
    ----------
    state:
        The deployment: candidates, SLO, the plan in force and the rate it was chosen for.
    samples:
        Recent samples, oldest first, validated (finite, rates >= 0, timestamps non-decreasing).
    settings:
        Windows, band, dwell, smoothing, panic and transition settings.
    advise:
        The optimizer at a rate (``advise(rate)``); called at most once.
    """
    smoothed = ewma_rates(samples, settings.ewma_half_life_s)
    rate = smoothed[-1]
    now = samples[-1].timestamp_s
    current = state.current_plan
    current_cost = plan_cost_per_hour(current, state.candidates)
    base = Evaluation(Decision.HOLD, Direction.NONE, "", rate, now, current_cost)
    run = panic_run(samples, state.slo, settings.error_rate_limit)
    if run >= settings.panic_samples:
        return _panic(state, samples, settings, advise, run, base)

    band = settings.hysteresis_band
    upper = state.planned_rate_per_s * (1.0 + band)
    lower = state.planned_rate_per_s * (1.0 - band)
    if lower <= rate <= upper:
        return replace(
            base,
            reason=f"smoothed rate {rate:.4g}/s is inside the hysteresis band [{lower:.4g}, "
            f"{upper:.4g}]/s around the planned {state.planned_rate_per_s:.4g}/s",
        )
    if rate > upper:
        direction, window = Direction.SAFETY, settings.safety_window_s
        held = held_for_s(samples, smoothed, lambda r: r > upper)
        side = f"above {upper:.4g}/s"
    else:
        direction, window = Direction.SAVINGS, settings.savings_window_s
        held = held_for_s(samples, smoothed, lambda r: r < lower)
        side = f"below {lower:.4g}/s"
    if held < window:
        return replace(
            base,
            direction=direction,
            reason=f"smoothed rate {rate:.4g}/s has been {side} for {held:.4g} s of the "
            f"{window:.4g} s stabilisation window {direction.value}",
        )
    if direction is Direction.SAVINGS and state.plan_since_s is not None:
        in_force = now - state.plan_since_s
        if in_force < settings.min_dwell_s:
            return replace(
                base,
                direction=direction,
                reason=f"current plan in force for {in_force:.4g} s, under the minimum dwell "
                f"of {settings.min_dwell_s:.4g} s",
            )
    advice = advise(rate)
    return _switch_or_hold(state, settings, advice, rate, direction, base)


def _costs(
    state: DeploymentState,
    target: Plan,
    steps: tuple[Step, ...],
    current_cost: float,
    settings: ControlSettings,
) -> tuple[float, float, float, float]:
    """(target cost per hour, saving per hour, switch cost, net saving per hour)."""
    target_cost = plan_cost_per_hour(target, state.candidates)
    saving = current_cost - target_cost
    cold = _candidate(target, state.candidates).instance.cold_start_s
    overlap_s = cold + sum(s.dwell_s for s in steps)
    switch_cost = current_cost * overlap_s / 3600.0
    net = saving - switch_cost / (settings.expected_dwell_s / 3600.0)
    return target_cost, saving, switch_cost, net


def _switch_or_hold(
    state: DeploymentState,
    settings: ControlSettings,
    advice: Advice,
    rate: float,
    direction: Direction,
    base: Evaluation,
) -> Evaluation:
    current = state.current_plan
    current_cost = base.current_cost_per_hour
    target = advice.plan
    base = replace(base, direction=direction)
    if target is None:
        return replace(base, reason=f"the optimizer found no stable plan at {rate:.4g}/s")
    steps = transition_steps(rate, settings.transition_weights, state.slo.percentile)
    target_cost, saving, switch_cost, net = _costs(state, target, steps, current_cost, settings)
    if target == current:
        return replace(
            base,
            reason=f"the best plan at {rate:.4g}/s is the current plan ({current.describe()})",
            target_plan=target,
            target_cost_per_hour=target_cost,
        )
    numbered = replace(
        base,
        target_plan=target,
        target_cost_per_hour=target_cost,
        saving_per_hour=saving,
        switch_cost=switch_cost,
        net_saving_per_hour=net,
        steps=steps,
    )
    overlap_s = switch_cost / current_cost * 3600.0 if current_cost else 0.0
    money = (
        f"${current_cost:.4g}/h now vs ${target_cost:.4g}/h for {target.describe()}: saving "
        f"${saving:.4g}/h, switch cost ${switch_cost:.4g} (current capacity kept {overlap_s:.4g} s "
        f"through cold start and {len(steps)} steps), net ${net:.4g}/h over the expected "
        f"{settings.expected_dwell_s:.4g} s"
    )
    if not advice.feasible:
        return _infeasible(state, advice, rate, numbered, money)
    if direction is Direction.SAFETY and not advice.current_meets_slo:
        return replace(
            numbered,
            decision=Decision.SWITCH,
            reason=f"the current plan {current.describe()} no longer meets the "
            f"p{state.slo.percentile:g} {state.slo.latency_ms:g} ms SLO at the smoothed "
            f"{rate:.4g}/s: {money}",
        )
    if net > 0:
        return replace(
            numbered,
            decision=Decision.SWITCH,
            reason=f"switching pays at the smoothed {rate:.4g}/s: {money}",
        )
    return replace(
        numbered, reason=f"the switch does not pay at the smoothed {rate:.4g}/s: {money}"
    )


def _infeasible(
    state: DeploymentState, advice: Advice, rate: float, numbered: Evaluation, money: str
) -> Evaluation:
    """No plan meets the SLO at the rate: move to the closest plan only toward safety, when it
    has more capacity and the current plan fails the SLO too."""
    target = numbered.target_plan
    assert target is not None
    more = plan_capacity_per_s(target, state.candidates) > plan_capacity_per_s(
        state.current_plan, state.candidates
    )
    if numbered.direction is Direction.SAFETY and more and not advice.current_meets_slo:
        return replace(
            numbered,
            decision=Decision.SWITCH,
            reason=f"no plan meets the SLO at {rate:.4g}/s; the closest has more capacity "
            f"than the current plan, which fails it too: {money}",
        )
    return replace(
        numbered,
        reason=f"no plan meets the SLO at {rate:.4g}/s (closest {target.describe()}); holding",
    )


def _panic(
    state: DeploymentState,
    samples: Sequence[Sample],
    settings: ControlSettings,
    advise: Advisor,
    run: int,
    base: Evaluation,
) -> Evaluation:
    current = state.current_plan
    newest = samples[-1]
    panic_rate = max(base.smoothed_rate_per_s, newest.rate_per_s) * (1.0 + settings.hysteresis_band)
    advice = advise(panic_rate)
    current_capacity = plan_capacity_per_s(current, state.candidates)
    target = advice.plan
    if target is None or plan_capacity_per_s(target, state.candidates) <= current_capacity:
        grown = math.ceil(current.replicas * (1.0 + settings.hysteresis_band))
        target = replace(current, replicas=max(current.replicas + 1, grown))
    steps = transition_steps(panic_rate, (1.0,), state.slo.percentile)
    current_cost = base.current_cost_per_hour
    target_cost, saving, switch_cost, net = _costs(state, target, steps, current_cost, settings)
    return replace(
        base,
        decision=Decision.SWITCH,
        direction=Direction.SAFETY,
        reason=f"panic: the newest {run} samples broke the SLO (observed p99 "
        f"{newest.p99_ms:.4g} ms vs {state.slo.latency_ms:g} ms) or the error-rate limit "
        f"({newest.error_rate:.4g} vs {settings.error_rate_limit:g}); moving at once to "
        f"{target.describe()} sized for {panic_rate:.4g}/s (${target_cost:.4g}/h vs "
        f"${current_cost:.4g}/h now)",
        target_plan=target,
        target_cost_per_hour=target_cost,
        saving_per_hour=saving,
        switch_cost=switch_cost,
        net_saving_per_hour=net,
        steps=steps,
        panic=True,
    )


# --- The optimizer, cached --------------------------------------------------------------------


class AdviceCache:
    """A bounded LRU of optimizer answers keyed by (deployment, state version, rounded rate).

    A deployment's version changes whenever its candidates, SLO or plan do, so an entry never
    goes stale; the rate is rounded (:func:`rounded_rate`) so nearby rates share an entry.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Advice] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Advice]) -> Advice:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        advice = compute()
        with self._lock:
            self._entries[key] = advice
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return advice

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def optimizer_advisor(
    candidates: Sequence[Candidate],
    slo: Slo,
    limits: SearchLimits,
    current_plan: Plan,
    seed: int = 0,
) -> Advisor:
    """``advise(rate)`` backed by :func:`servewise.core.optimizer.optimize` (Poisson arrivals at
    the rate), assessing the current plan at the same rate."""

    def advise(rate_per_s: float) -> Advice:
        result = optimize(
            list(candidates),
            Workload(rate_per_s=rate_per_s),
            slo,
            limits,
            current_plan=current_plan,
            seed=seed,
        )
        best = result.recommended
        current_ok = result.current is not None and result.current.meets_slo
        return Advice(
            rate_per_s=rate_per_s,
            plan=None if best is None else best.plan,
            feasible=result.feasible,
            cost_per_hour=0.0 if best is None else best.cost_per_hour,
            current_meets_slo=current_ok,
        )

    return advise


def cached_advisor(cache: AdviceCache, key: Hashable, advise: Advisor) -> Advisor:
    """``advise`` at the rate rounded by :func:`rounded_rate`, memoised in ``cache`` under
    ``(key, rounded rate)``; ``key`` must change whenever the deployment does (its version)."""

    def cached(rate_per_s: float) -> Advice:
        rate = max(rounded_rate(rate_per_s), 1e-9)
        return cache.get_or_compute((key, rate), lambda: advise(rate))

    return cached
