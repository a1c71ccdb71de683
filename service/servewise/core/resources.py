"""Replicas over a day: dedicated, autoscaled and shared strategies over a rate profile.

A deployment serves one model with one serving plan ``(instance type, B, T)``; only the replica
count N moves with the rate. Everything here follows from that plan and the rate profile:

1. **The replica curve** (:func:`replica_curve`): the fewest replicas meeting the SLO at a rate,
   N*(lambda). The analytic predictor (queueing.py) scores replica counts at a geometric grid of
   rates between the profile's lowest positive rate and its peak (ratio
   :data:`CURVE_RATE_RATIO`, at most :data:`CURVE_MAX_POINTS` rates); the simulator then checks
   the predictor at :data:`SIMULATION_CHECKS` rates and adds replicas where it was short (never
   removes them). The curve is made non-decreasing and a rate between two grid rates takes the
   need of the upper one, so the interpolation only ever errs toward one replica more.
2. **Dedicated**: N*(peak) replicas for the whole profile.
3. **Autoscaled** (:func:`simulate_autoscaler`): an HPA/KPA-like loop every
   :data:`SYNC_PERIOD_S` (HPA's sync period): desired = ceil(lambda / (c1 * target)) within
   [min, max], where c1 = B / s(B) is one replica's capacity; it scales up to the lowest desired
   count of the last ``scale_up_window_s`` and down to the highest of the last
   ``scale_down_window_s`` (HPA's stabilisation), at most once per ``cooldown_s``. Ordered
   replicas are billed at once and serve ``startup_delay_s`` later; a scale-down cancels
   replicas still starting first. The deployment starts the profile at its desired size, ready.
4. **Shared** (:func:`pack_shared`): with two or more deployments, each step's billed replicas
   of every deployment (from its recommended autoscaler) are packed first-fit decreasing onto
   shared instances by memory and by load (a bin's summed busy fraction stays within the
   strictest target utilisation of its occupants). Interference is counted as SLO risk wherever
   a bin's summed busy fraction exceeds what one replica of its strictest occupant may carry
   and still meet its SLO (:attr:`ReplicaCurve.single_replica_utilisation`).

Accounting is exact over the piecewise-constant timeline (profile steps and scaling events):
cost is billed replica-time times price; mean utilisation is served requests over provisioned
capacity (busy replica-time over billed replica-time); SLO-risk minutes are the minutes in which
serving replicas are fewer than N*(rate) (fractions of minutes count as such).

Conventions: the point i of a profile holds from ``times_s[i]`` to ``times_s[i+1]``; the last
point holds as long as the one before it (a single point: one hour). A profile is taken as a
representative day whatever its span: cost per day = cost over the profile * 86,400 / span, per
month = per day * :data:`DAYS_PER_MONTH` (365.25 / 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from servewise.core import cancel, queueing
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import SearchLimits, optimize
from servewise.core.profiles import Candidate
from servewise.core.simulator import DEFAULT_SEED, capacity_per_s, simulate

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400.0
DAYS_PER_MONTH = 30.44
# A single-point profile holds this long.
SINGLE_POINT_SPAN_S = 3_600.0
# Seconds between two autoscaler evaluations (Kubernetes HPA's --horizontal-pod-autoscaler-
# sync-period); long profiles use span / MAX_TICKS instead so the loop stays bounded.
SYNC_PERIOD_S = 15.0
MAX_TICKS = 20_000
# Replica curve: geometric grid of rates, at most this ratio apart and this many rates.
CURVE_RATE_RATIO = 1.03
CURVE_MAX_POINTS = 256
# Rates at which the simulator checks the predictor's replica counts (the peak included),
# requests per check (times CV^2, bounded) and extra replicas tried per check.
SIMULATION_CHECKS = 4
CHECK_REQUESTS = 20_000
CHECK_MAX_REQUESTS = 80_000
CHECK_MAX_EXTRA = 8
# Recommended autoscaler: targets tried (fractions of the largest target that fits the curve),
# scale-up windows tried, HPA's default scale-down window, a start-up delay when the instance
# type has no cold start, and the headroom of max_replicas above the peak's need.
TARGET_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
SCALE_UP_WINDOWS_S = (0.0, 60.0)
DEFAULT_SCALE_DOWN_WINDOW_S = 300.0
DEFAULT_STARTUP_DELAY_S = 60.0
MAX_REPLICAS_HEADROOM = 0.25
# A strategy is acceptable when its SLO-risk minutes are at most this fraction of the profile.
RISK_BOUND_FRACTION = 0.01
# Shared packing evaluates at most this many steps (coarser steps take each bin's maximum).
SHARED_MAX_STEPS = 2_000


class Strategy(Enum):
    DEDICATED = "dedicated"
    AUTOSCALED = "autoscaled"
    SHARED = "shared"


@dataclass(frozen=True)
class RateProfile:
    """Piecewise-constant rate: ``rates_per_s[i]`` from ``times_s[i]`` until the next point.

    ``times_s`` strictly increasing and >= 0; rates finite, >= 0, some > 0 (validated by the
    API). ``arrival_cv`` is the inter-arrival CV within each interval.
    """

    times_s: FloatArray
    rates_per_s: FloatArray
    arrival_cv: float = 1.0

    @classmethod
    def of(
        cls, times_s: npt.ArrayLike, rates_per_s: npt.ArrayLike, arrival_cv: float = 1.0
    ) -> RateProfile:
        times = np.asarray(times_s, dtype=np.float64)
        rates = np.asarray(rates_per_s, dtype=np.float64)
        if times.ndim != 1 or len(times) == 0 or len(times) != len(rates):
            raise ValueError("times_s and rates_per_s must be non-empty and of equal length")
        if np.any(np.diff(times) <= 0) or times[0] < 0 or not np.all(np.isfinite(times)):
            raise ValueError("times_s must be finite, >= 0 and strictly increasing")
        if not np.all(np.isfinite(rates)) or np.any(rates < 0) or not np.any(rates > 0):
            raise ValueError("rates_per_s must be finite and >= 0, and some > 0")
        return cls(times, rates, arrival_cv)

    @property
    def end_s(self) -> float:
        if len(self.times_s) == 1:
            return float(self.times_s[0]) + SINGLE_POINT_SPAN_S
        return float(self.times_s[-1] + (self.times_s[-1] - self.times_s[-2]))

    @property
    def span_s(self) -> float:
        return self.end_s - float(self.times_s[0])

    @property
    def durations_s(self) -> FloatArray:
        result: FloatArray = np.diff(np.append(self.times_s, self.end_s))
        return result

    @property
    def peak_per_s(self) -> float:
        return float(self.rates_per_s.max())

    @property
    def total_requests(self) -> float:
        return float(np.dot(self.rates_per_s, self.durations_s))

    def rate_at(self, times_s: FloatArray) -> FloatArray:
        index = np.searchsorted(self.times_s, times_s, side="right") - 1
        result: FloatArray = self.rates_per_s[np.clip(index, 0, len(self.rates_per_s) - 1)]
        return result


@dataclass(frozen=True)
class AutoscalerSettings:
    """HPA/KPA-like settings; ``target_utilisation`` is rate / (replicas * c1), in (0, 1]."""

    min_replicas: int
    max_replicas: int
    target_utilisation: float
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = DEFAULT_SCALE_DOWN_WINDOW_S
    startup_delay_s: float = DEFAULT_STARTUP_DELAY_S
    cooldown_s: float = 0.0

    def describe(self) -> str:
        return (
            f"min {self.min_replicas}, max {self.max_replicas}, target "
            f"{self.target_utilisation:.0%}, up window {self.scale_up_window_s:g} s, down window "
            f"{self.scale_down_window_s:g} s, start-up {self.startup_delay_s:g} s, cooldown "
            f"{self.cooldown_s:g} s"
        )


@dataclass(frozen=True)
class ReplicaCurve:
    """Fewest replicas meeting the SLO against the rate, for one plan's (type, B, T).

    ``replicas[i]`` is the need at ``rates_per_s[i]`` (ascending; non-decreasing); a need of
    ``ceiling + 1`` means no replica count up to the ceiling meets the SLO there.
    """

    rates_per_s: FloatArray
    replicas: IntArray
    capacity_per_replica_s: float
    ceiling: int
    single_replica_utilisation: float
    notes: tuple[str, ...] = ()

    def need(self, rates_per_s: FloatArray) -> IntArray:
        """N*(rate): the need of the grid rate at or above each rate (0 for a zero rate)."""
        rates = np.asarray(rates_per_s, dtype=np.float64)
        index = np.searchsorted(self.rates_per_s, rates, side="left")
        top = len(self.rates_per_s) - 1
        need = self.replicas[np.minimum(index, top)].copy()
        above = index > top  # beyond the grid (not for the profile it was built for)
        if np.any(above):
            per_replica = self.rates_per_s[-1] / max(int(self.replicas[-1]), 1)
            need[above] = np.ceil(rates[above] / per_replica).astype(np.int64)
        need[rates <= 0] = 0
        return need


@dataclass(frozen=True)
class Timeline:
    """Billed and serving replicas as step functions: counts after each change time."""

    change_s: FloatArray  # ascending, first = profile start
    billed: IntArray
    serving: IntArray


@dataclass(frozen=True)
class StrategyOutcome:
    """What one strategy costs and risks over the profile."""

    strategy: Strategy
    feasible: bool
    reason: str
    cost: float  # over the profile
    cost_per_day: float
    cost_per_month: float
    mean_utilisation: float
    cost_per_million_requests: float
    slo_risk_minutes: float
    peak_replicas: int
    mean_replicas: float
    requests: float
    busy_replica_s: float
    billed_replica_s: float
    settings: AutoscalerSettings | None = None
    timeline: Timeline | None = None


@dataclass(frozen=True)
class Deployment:
    """A deployment to plan: its candidates, SLO, profile and (optionally) its plan."""

    name: str
    candidates: list[Candidate]
    slo: Slo
    profile: RateProfile
    plan: Plan | None = None
    memory_bytes: int = 0


@dataclass(frozen=True)
class DeploymentPlan:
    name: str
    plan: Plan | None  # at the peak (N = the peak's need); None when no plan exists
    candidate: Candidate | None
    curve: ReplicaCurve | None
    strategies: list[StrategyOutcome]
    recommended_autoscaler: AutoscalerSettings | None
    peak_per_s: float
    mean_latency_at_peak_ms: float
    notes: list[str] = field(default_factory=list)

    def outcome(self, strategy: Strategy) -> StrategyOutcome | None:
        return next((o for o in self.strategies if o.strategy is strategy), None)


@dataclass(frozen=True)
class ResourcePlan:
    deployments: list[DeploymentPlan]
    totals: list[StrategyOutcome]
    recommended: Strategy | None
    reasons: list[str]
    notes: list[str]


# --- The replica curve ------------------------------------------------------------------------


def _fewest_analytic(
    tables: queueing.ServiceTables,
    big_b: int,
    delay_ms: float,
    rate: float,
    cv: float,
    slo: Slo,
    floor: int,
    ceiling: int,
) -> int:
    """Fewest N in [floor, ceiling] the predictor says meet the SLO; ceiling + 1 if none."""
    if floor > ceiling:
        return ceiling + 1
    allowed = 1.0 - slo.percentile / 100.0

    def ok(counts: list[int]) -> npt.NDArray[np.bool_]:
        n = np.asarray(counts, dtype=np.int64)
        tail = queueing.tail_probability(
            tables,
            np.zeros(len(n), dtype=np.int64),
            rate,
            cv,
            np.full(len(n), big_b, dtype=np.int64),
            np.full(len(n), delay_ms),
            n,
            slo.latency_ms,
        )
        result: npt.NDArray[np.bool_] = tail <= allowed
        return result

    ladder = sorted({min(floor + step, ceiling) for step in (0, 1, 2, 4, 8, 16, 32, 64)})
    ladder.append(ceiling)
    ladder = sorted(set(ladder))
    passed = ok(ladder)
    if not passed.any():
        return ceiling + 1
    first = int(np.argmax(passed))
    high = ladder[first]
    low = ladder[first - 1] if first > 0 else floor - 1
    while high - low > 1:
        mid = (high + low) // 2
        if ok([mid])[0]:
            high = mid
        else:
            low = mid
    return high


def _meets_in_simulation(
    candidate: Candidate, plan: Plan, rate: float, cv: float, slo: Slo, seed: int
) -> bool:
    requests = int(min(CHECK_REQUESTS * max(1.0, cv * cv), CHECK_MAX_REQUESTS))
    result = simulate(
        candidate.profile, plan, Workload(rate, cv), num_requests=requests, seed=seed, slo=slo
    )
    observed = result.latency.slo_percentile_ms
    return result.stable and observed is not None and observed <= slo.latency_ms


def _single_replica_utilisation(
    tables: queueing.ServiceTables, big_b: int, delay_ms: float, c1: float, cv: float, slo: Slo
) -> float:
    """Largest rate / c1 at which one replica alone still meets the SLO (predictor)."""
    allowed = 1.0 - slo.percentile / 100.0

    def ok(rate: float) -> bool:
        tail = queueing.tail_probability(
            tables,
            np.zeros(1, dtype=np.int64),
            rate,
            cv,
            np.array([big_b]),
            np.array([delay_ms]),
            np.array([1]),
            slo.latency_ms,
        )
        return bool(tail[0] <= allowed)

    low, high = 0.0, c1
    if not ok(c1 * 1e-6):
        return 0.0
    low = c1 * 1e-6
    for _ in range(40):
        mid = 0.5 * (low + high)
        if ok(mid):
            low = mid
        else:
            high = mid
    return low / c1


def replica_curve(
    candidate: Candidate,
    plan: Plan,
    slo: Slo,
    profile: RateProfile,
    ceiling: int,
    seed: int = DEFAULT_SEED,
    check_by_simulation: bool = True,
) -> ReplicaCurve:
    """Fewest replicas meeting the SLO at every rate the profile visits (see the module doc).

    Parameters
    ----------
    candidate, plan:
        The instance type and the plan's B and T (its replica count is not used).
    ceiling:
        Most replicas a deployment may use (the search limit).
    check_by_simulation:
        Check the predictor at :data:`SIMULATION_CHECKS` rates and add replicas where the
        simulation misses the SLO.
    """
    big_b, delay = plan.max_batch_size, plan.max_queue_delay_ms
    c1 = capacity_per_s(candidate.profile, big_b, 1)
    tables = queueing.ServiceTables.build([candidate.profile], [big_b])
    positive = profile.rates_per_s[profile.rates_per_s > 0]
    low, peak = float(positive.min()), float(positive.max())
    steps = 0 if peak <= low else math.ceil(math.log(peak / low) / math.log(CURVE_RATE_RATIO))
    steps = min(steps, CURVE_MAX_POINTS - 1)
    grid = np.geomspace(low, peak, steps + 1) if steps else np.array([peak])
    grid[-1] = peak
    cv = profile.arrival_cv
    need = np.empty(len(grid), dtype=np.int64)
    previous = 1
    for i, rate in enumerate(grid):
        cancel.check()
        floor = max(math.floor(rate / c1) + 1, previous)
        need[i] = _fewest_analytic(tables, big_b, delay, float(rate), cv, slo, floor, ceiling)
        previous = int(min(need[i], ceiling))
    notes: list[str] = []
    if check_by_simulation:
        checks = sorted(
            {
                int(np.searchsorted(grid, q, side="left"))
                for q in np.quantile(positive, np.linspace(1.0, 0.25, SIMULATION_CHECKS))
            }
        )
        extra = np.zeros(len(grid), dtype=np.int64)
        shortfalls: list[str] = []
        start = 0
        for k, index in enumerate(checks):
            rate = float(grid[index])
            n = int(need[index])
            added = 0
            while n <= ceiling and added <= CHECK_MAX_EXTRA:
                trial = Plan(plan.instance_type, big_b, delay, n)
                if _meets_in_simulation(candidate, trial, rate, cv, slo, seed + k):
                    break
                n += 1
                added += 1
            if n > ceiling or added > CHECK_MAX_EXTRA:
                added = ceiling + 1 - int(need[index])
            if added:
                shortfalls.append(f"{added} at {rate:.4g}/s")
            extra[start : index + 1] = added
            start = index + 1
        extra[start:] = extra[start - 1] if start else 0
        need = need + extra
        notes.append(
            f"replica curve: predictor at {len(grid)} rates from {low:.4g}/s to {peak:.4g}/s, "
            f"checked by simulation at {len(checks)} of them"
            + (f" (replicas added: {', '.join(shortfalls)})" if shortfalls else " (all met)")
        )
    need = np.minimum(np.maximum.accumulate(need), ceiling + 1)
    return ReplicaCurve(
        rates_per_s=grid,
        replicas=need,
        capacity_per_replica_s=c1,
        ceiling=ceiling,
        single_replica_utilisation=_single_replica_utilisation(tables, big_b, delay, c1, cv, slo),
        notes=tuple(notes),
    )


# --- Accounting --------------------------------------------------------------------------------


def _outcome(
    strategy: Strategy,
    profile: RateProfile,
    curve: ReplicaCurve,
    price_per_hour: float,
    timeline: Timeline,
    reason: str,
    feasible: bool,
    settings: AutoscalerSettings | None = None,
) -> StrategyOutcome:
    """Exact accounting over the union of profile steps and replica changes."""
    edges = np.union1d(profile.times_s, timeline.change_s)
    edges = edges[(edges >= profile.times_s[0]) & (edges < profile.end_s)]
    durations = np.diff(np.append(edges, profile.end_s))
    at = np.searchsorted(timeline.change_s, edges, side="right") - 1
    billed = timeline.billed[at]
    serving = timeline.serving[at]
    rates = profile.rate_at(edges)
    need = curve.need(rates)
    c1 = curve.capacity_per_replica_s
    served = np.minimum(rates, serving * c1)
    requests = float(np.dot(rates, durations))
    billed_s = float(np.dot(billed, durations))
    busy_s = float(np.dot(served, durations)) / c1
    cost = billed_s * price_per_hour / 3600.0
    span = profile.span_s
    per_day = cost * DAY_S / span
    risk_minutes = float(durations[serving < need].sum()) / 60.0
    return StrategyOutcome(
        strategy=strategy,
        feasible=feasible,
        reason=reason,
        cost=cost,
        cost_per_day=per_day,
        cost_per_month=per_day * DAYS_PER_MONTH,
        mean_utilisation=busy_s / billed_s if billed_s > 0 else 0.0,
        cost_per_million_requests=cost / requests * 1e6 if requests > 0 else math.inf,
        slo_risk_minutes=risk_minutes,
        peak_replicas=int(billed.max()),
        mean_replicas=billed_s / span,
        requests=requests,
        busy_replica_s=busy_s,
        billed_replica_s=billed_s,
        settings=settings,
        timeline=timeline,
    )


def dedicated(profile: RateProfile, curve: ReplicaCurve, price_per_hour: float) -> StrategyOutcome:
    """The peak's need, billed for the whole profile."""
    peak_need = int(curve.need(np.array([profile.peak_per_s]))[0])
    feasible = peak_need <= curve.ceiling
    replicas = min(peak_need, curve.ceiling)
    start = np.array([profile.times_s[0]])
    timeline = Timeline(start, np.array([replicas]), np.array([replicas]))
    reason = (
        f"{replicas} replicas for the peak of {profile.peak_per_s:.4g}/s all day"
        if feasible
        else f"the peak of {profile.peak_per_s:.4g}/s needs more than the {curve.ceiling} "
        f"replicas allowed"
    )
    return _outcome(Strategy.DEDICATED, profile, curve, price_per_hour, timeline, reason, feasible)


def _ticks(profile: RateProfile) -> FloatArray:
    period = max(SYNC_PERIOD_S, profile.span_s / MAX_TICKS)
    count = max(1, math.ceil(profile.span_s / period))
    result: FloatArray = profile.times_s[0] + period * np.arange(count)
    return result


def _window_extreme(values: IntArray, ticks: int, take_max: bool) -> IntArray:
    """Min (or max) of ``values`` over the last ``ticks`` entries, the current one included."""
    if ticks <= 1:
        return values
    pad = np.full(ticks - 1, values[0], dtype=np.int64)
    windows = sliding_window_view(np.concatenate((pad, values)), ticks)
    result: IntArray = windows.max(axis=1) if take_max else windows.min(axis=1)
    return result


def _scaling_events(
    ticks: FloatArray,
    candidates: IntArray,
    up: IntArray,
    down: IntArray,
    initial: int,
    settings: AutoscalerSettings,
) -> tuple[list[float], list[int], list[int]]:
    """The autoscaler's loop: (time, billed change, serving change) of every scaling event."""
    billed = initial
    times: list[float] = [float(ticks[0])]
    billed_delta: list[int] = [billed]
    serving_delta: list[int] = [billed]
    pending: list[tuple[float, int]] = []  # (ready time, count), ordered by order time
    last_action = -math.inf
    startup = settings.startup_delay_s
    up_list, down_list, tick_list = up.tolist(), down.tolist(), ticks.tolist()
    for k in candidates.tolist():
        t = tick_list[k]
        if t - last_action < settings.cooldown_s:
            continue
        pending = [p for p in pending if p[0] > t]
        if up_list[k] > billed:
            count = up_list[k] - billed
            pending.append((t + startup, count))
            times += [t, t + startup]
            billed_delta += [count, 0]
            serving_delta += [0, count]
            billed = up_list[k]
            last_action = t
        elif down_list[k] < billed:
            remove = billed - down_list[k]
            billed = down_list[k]
            times.append(t)
            billed_delta.append(-remove)
            serving_delta.append(0)
            while remove and pending:  # cancel replicas still starting, newest first
                ready, count = pending.pop()
                cancelled = min(count, remove)
                times.append(ready)
                billed_delta.append(0)
                serving_delta.append(-cancelled)
                remove -= cancelled
                if count > cancelled:
                    pending.append((ready, count - cancelled))
            if remove:
                times.append(t)
                billed_delta.append(0)
                serving_delta.append(-remove)
            last_action = t
    return times, billed_delta, serving_delta


def simulate_autoscaler(
    profile: RateProfile,
    curve: ReplicaCurve,
    settings: AutoscalerSettings,
    price_per_hour: float,
    label: str = "autoscaler",
) -> StrategyOutcome:
    """Run the autoscaler of the module doc over the profile and account for it."""
    ticks = _ticks(profile)
    period = float(ticks[1] - ticks[0]) if len(ticks) > 1 else SYNC_PERIOD_S
    c1 = curve.capacity_per_replica_s
    rates = profile.rate_at(ticks)
    desired = np.ceil(rates / (c1 * settings.target_utilisation) - 1e-9).astype(np.int64)
    desired = np.clip(desired, settings.min_replicas, settings.max_replicas)
    up = _window_extreme(desired, int(settings.scale_up_window_s // period) + 1, take_max=False)
    down = _window_extreme(desired, int(settings.scale_down_window_s // period) + 1, take_max=True)
    if settings.cooldown_s > 0:
        candidates = np.arange(1, len(ticks))
    else:  # nothing can change unless a recommendation changes
        changed = (up[1:] != up[:-1]) | (down[1:] != down[:-1])
        candidates = np.flatnonzero(changed) + 1
    times, billed_delta, serving_delta = _scaling_events(
        ticks, candidates, up, down, int(desired[0]), settings
    )
    order = np.argsort(np.asarray(times), kind="stable")
    change = np.asarray(times)[order]
    billed_steps = np.cumsum(np.asarray(billed_delta, dtype=np.int64)[order])
    serving_steps = np.cumsum(np.asarray(serving_delta, dtype=np.int64)[order])
    # Several changes at one instant: keep the state after the last of them.
    last = np.append(change[1:] != change[:-1], True)
    timeline = Timeline(change[last], billed_steps[last], serving_steps[last])
    reason = f"{label}: {settings.describe()}"
    feasible = settings.max_replicas >= int(curve.need(np.array([profile.peak_per_s]))[0])
    return _outcome(
        Strategy.AUTOSCALED, profile, curve, price_per_hour, timeline, reason, feasible, settings
    )


def risk_bound_minutes(profile: RateProfile) -> float:
    """SLO-risk minutes a strategy may have and still be recommended."""
    return RISK_BOUND_FRACTION * profile.span_s / 60.0


def fitting_target(profile: RateProfile, curve: ReplicaCurve, min_replicas: int = 1) -> float:
    """Largest target u (hundredths) with max(min, ceil(rate / (c1 u))) >= N*(rate) at every
    profile rate.

    ceil(x) >= N holds exactly when x > N - 1, so u < rate / (c1 (N - 1)) wherever N exceeds
    ``min_replicas`` (elsewhere the minimum already covers the need).
    """
    rates = profile.rates_per_s
    need = curve.need(rates)
    many = need > max(1, min_replicas)
    if not np.any(many):
        return 1.0
    bound = float(np.min(rates[many] / (curve.capacity_per_replica_s * (need[many] - 1))))
    return float(min(1.0, max(0.01, math.floor(bound * 100.0 * (1 - 1e-9)) / 100.0)))


def recommend_autoscaler(
    profile: RateProfile,
    curve: ReplicaCurve,
    price_per_hour: float,
    startup_delay_s: float,
) -> tuple[AutoscalerSettings, StrategyOutcome, list[str]]:
    """The cheapest settings among the tried ones whose SLO risk is within the bound.

    min = N*(lowest rate) (at least 1); max = the larger of N*(peak) and what the target asks
    at the peak, plus :data:`MAX_REPLICAS_HEADROOM` (bounded by the ceiling); targets
    :data:`TARGET_FACTORS` times :func:`fitting_target`, scale-up windows
    :data:`SCALE_UP_WINDOWS_S`, scale-down :data:`DEFAULT_SCALE_DOWN_WINDOW_S` (HPA's default),
    cooldown 0 (the windows damp flapping and replicas still starting count toward the size,
    so a scale-up never repeats itself). When none is within the bound, the one with the
    fewest risk minutes (then the cheapest).
    """
    c1 = curve.capacity_per_replica_s
    positive = profile.rates_per_s[profile.rates_per_s > 0]
    lowest = float(profile.rates_per_s.min())
    min_replicas = max(1, int(curve.need(np.array([lowest]))[0]))
    min_replicas = min(min_replicas, curve.ceiling)
    peak_need = min(int(curve.need(np.array([float(positive.max())]))[0]), curve.ceiling)
    bound = risk_bound_minutes(profile)
    best: tuple[AutoscalerSettings, StrategyOutcome] | None = None
    tried = 0
    # Floors tried: the lowest rate's need and the needs at the 25th and 50th percentile rates
    # (a higher floor lets the target fit only the busier part of the day, and rides out
    # spikes shorter than a cold start).
    quantiles = np.quantile(profile.rates_per_s, [0.25, 0.5])
    floors = sorted({min_replicas} | {min(int(n), curve.ceiling) for n in curve.need(quantiles)})
    for floor, window in ((f, w) for f in floors for w in SCALE_UP_WINDOWS_S):
        top = fitting_target(profile, curve, floor)
        for factor in TARGET_FACTORS:
            target = max(0.01, math.floor(top * factor * 100.0) / 100.0)
            at_peak = math.ceil(profile.peak_per_s / (c1 * target) - 1e-9)
            high = max(peak_need, at_peak)
            high = min(curve.ceiling, high + max(1, math.ceil(high * MAX_REPLICAS_HEADROOM)))
            settings = AutoscalerSettings(
                min_replicas=min(floor, high),
                max_replicas=high,
                target_utilisation=target,
                scale_up_window_s=window,
                scale_down_window_s=DEFAULT_SCALE_DOWN_WINDOW_S,
                startup_delay_s=startup_delay_s,
                cooldown_s=0.0,
            )
            outcome = simulate_autoscaler(
                profile, curve, settings, price_per_hour, "recommended autoscaler"
            )
            tried += 1
            if best is None or _better_autoscaled(outcome, best[1], bound):
                best = (settings, outcome)
            if outcome.slo_risk_minutes <= bound:
                break  # lower targets at this window only cost more
    assert best is not None
    notes = [
        f"recommended autoscaler: {tried} settings simulated (min replicas {floors}, targets "
        f"from the largest whose replicas meet the SLO at every rate of the profile down); "
        f"risk bound {bound:.3g} min ({RISK_BOUND_FRACTION:.0%} of the profile)"
    ]
    return best[0], best[1], notes


def _better_autoscaled(a: StrategyOutcome, b: StrategyOutcome, bound: float) -> bool:
    """Within the bound: cheaper. Outside: less risk by more than one sync period (a minute's
    risk counted in ticks), else cheaper."""
    a_ok, b_ok = a.slo_risk_minutes <= bound, b.slo_risk_minutes <= bound
    if a_ok != b_ok:
        return a_ok
    if not a_ok and abs(a.slo_risk_minutes - b.slo_risk_minutes) > SYNC_PERIOD_S / 60.0:
        return a.slo_risk_minutes < b.slo_risk_minutes
    return a.cost < b.cost


# --- Shared packing ------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedMember:
    """One deployment's part in shared packing."""

    profile: RateProfile
    curve: ReplicaCurve
    timeline: Timeline  # of its recommended autoscaler
    memory_bytes: int
    instance_type: str
    price_per_hour: float
    target_utilisation: float


def _first_fit_decreasing(
    items: list[tuple[int, float, float, float]], memory: int
) -> tuple[int, bool]:
    """Bins for items (memory, load, load bound, interference bound), first-fit decreasing by
    memory then load; returns (bins, whether some bin's load exceeds its interference bound)."""
    bins: list[list[float]] = []  # [free memory, load, load bound, interference bound]
    for mem, load, bound, safe in sorted(items, key=lambda x: (-x[0], -x[1])):
        for b in bins:
            if b[0] >= mem and b[1] + load <= min(b[2], bound) + 1e-12:
                b[0] -= mem
                b[1] += load
                b[2] = min(b[2], bound)
                b[3] = min(b[3], safe)
                break
        else:
            bins.append([float(memory - mem), load, bound, safe])
    return len(bins), any(len(bins) and b[1] > b[3] + 1e-12 for b in bins)


_MemberSteps = tuple[IntArray, IntArray, IntArray, FloatArray, FloatArray, float]


def _pack_step(
    members: list[SharedMember],
    per_member: list[_MemberSteps],
    step: int,
    instance_memory_bytes: int,
    cache: dict[tuple[object, ...], tuple[int, bool]],
) -> tuple[dict[str, int], bool, bool]:
    """Bins per instance type at one step, whether some bin interferes, whether some member's
    own serving replicas fall short of its need."""
    bins: dict[str, int] = {}
    interfering = False
    own_risk = False
    for kind in sorted({m.instance_type for m in members}):
        items: list[tuple[int, float, float, float]] = []
        key: list[object] = [kind]
        for m, (billed, serving, need, load, _, _) in zip(members, per_member, strict=True):
            if m.instance_type != kind:
                continue
            count = int(billed[step])
            own_risk |= bool(serving[step] < need[step])
            if count:
                unit = math.ceil(float(load[step]) * 1e4) / 1e4  # cache key: 4 decimals
                safe = m.curve.single_replica_utilisation
                items += [(m.memory_bytes, unit, m.target_utilisation, safe)] * count
                key += [m.memory_bytes, count, unit, m.target_utilisation, safe]
        packed = cache.get(tuple(key))
        if packed is None:
            packed = _first_fit_decreasing(items, instance_memory_bytes)
            cache[tuple(key)] = packed
        bins[kind] = packed[0]
        interfering |= packed[1]
    return bins, interfering, own_risk


def pack_shared(
    members: list[SharedMember], instance_memory_bytes: int
) -> tuple[StrategyOutcome, list[str]]:
    """Pack every step's billed replicas onto shared instances (module doc, point 4).

    Instances are of each member's plan type (members on different types pack separately);
    replicas whose load alone exceeds a bound take an instance of their own. A step's SLO-risk
    is its members' own (serving < need, from their autoscaler) plus the whole step when some
    bin's summed busy fraction exceeds its strictest occupant's single-replica utilisation.
    """
    start = min(float(m.profile.times_s[0]) for m in members)
    end = max(m.profile.end_s for m in members)
    edges = np.unique(
        np.concatenate([np.append(m.profile.times_s, m.timeline.change_s) for m in members])
    )
    edges = edges[(edges >= start) & (edges < end)]
    if len(edges) > SHARED_MAX_STEPS:  # coarser steps, each taking its bin's maximum
        edges = np.linspace(start, end, SHARED_MAX_STEPS, endpoint=False)
    durations = np.diff(np.append(edges, end))
    per_member: list[_MemberSteps] = []
    for m in members:
        at = np.searchsorted(m.timeline.change_s, edges, side="right") - 1
        inside = (edges >= m.profile.times_s[0]) & (edges < m.profile.end_s)
        billed = np.where(inside, m.timeline.billed[np.maximum(at, 0)], 0)
        serving = np.where(inside, m.timeline.serving[np.maximum(at, 0)], 0)
        rates = np.where(inside, m.profile.rate_at(edges), 0.0)
        if len(edges) == SHARED_MAX_STEPS:
            rates = _bin_max(m.profile, edges, end)
        need = m.curve.need(rates)
        c1 = m.curve.capacity_per_replica_s
        load = np.where(billed > 0, np.minimum(1.0, rates / (np.maximum(billed, 1) * c1)), 0.0)
        per_member.append((billed, serving, need, load, rates, c1))
    price = {m.instance_type: m.price_per_hour for m in members}
    instance_s = 0.0
    cost = 0.0
    risk_s = 0.0
    peak = 0
    cache: dict[tuple[object, ...], tuple[int, bool]] = {}
    busy_s = 0.0
    requests = 0.0
    for s, duration in enumerate(durations.tolist()):
        bins_by_type, interfering, own_risk = _pack_step(
            members, per_member, s, instance_memory_bytes, cache
        )
        total_bins = sum(bins_by_type.values())
        cost += sum(n * duration * price[kind] / 3600.0 for kind, n in bins_by_type.items())
        instance_s += total_bins * duration
        peak = max(peak, total_bins)
        if own_risk or interfering:
            risk_s += duration
    for _, serving, _, _, rates, c1 in per_member:
        busy_s += float(np.dot(np.minimum(rates, serving * c1), durations)) / c1
        requests += float(np.dot(rates, durations))
    span = end - start
    per_day = cost * DAY_S / span
    outcome = StrategyOutcome(
        strategy=Strategy.SHARED,
        feasible=True,
        reason=(
            f"replicas of {len(members)} deployments packed first-fit decreasing onto "
            f"instances of {instance_memory_bytes} bytes at each of {len(durations)} steps"
        ),
        cost=cost,
        cost_per_day=per_day,
        cost_per_month=per_day * DAYS_PER_MONTH,
        mean_utilisation=busy_s / instance_s if instance_s > 0 else 0.0,
        cost_per_million_requests=cost / requests * 1e6 if requests > 0 else math.inf,
        slo_risk_minutes=risk_s / 60.0,
        peak_replicas=peak,
        mean_replicas=instance_s / span,
        requests=requests,
        busy_replica_s=busy_s,
        billed_replica_s=instance_s,
    )
    notes = [
        "shared: utilisation is busy replica-time over instance-time (a shared instance "
        "counts once however many replicas it hosts)"
    ]
    return outcome, notes


def _bin_max(profile: RateProfile, edges: FloatArray, end: float) -> FloatArray:
    """The highest rate of the profile within each [edges[i], edges[i+1])."""
    bounds = np.append(edges, end)
    first = np.searchsorted(profile.times_s, bounds[:-1], side="right") - 1
    last = np.searchsorted(profile.times_s, bounds[1:], side="left") - 1
    result = np.zeros(len(edges))
    for i, (a, b) in enumerate(zip(first.tolist(), last.tolist(), strict=True)):
        if b < 0 or a >= len(profile.rates_per_s):
            continue
        result[i] = float(profile.rates_per_s[max(a, 0) : max(b, a, 0) + 1].max())
    return result


# --- Totals and the whole plan ----------------------------------------------------------------


def total(strategy: Strategy, outcomes: list[StrategyOutcome], span_s: float) -> StrategyOutcome:
    """One strategy summed over deployments (risk minutes add up)."""
    cost = sum(o.cost_per_day for o in outcomes) * span_s / DAY_S
    per_day = sum(o.cost_per_day for o in outcomes)
    requests = sum(o.requests * DAY_S / max(span_s, 1e-9) for o in outcomes)
    billed = sum(o.billed_replica_s for o in outcomes)
    busy = sum(o.busy_replica_s for o in outcomes)
    return StrategyOutcome(
        strategy=strategy,
        feasible=all(o.feasible for o in outcomes),
        reason=f"{strategy.value} over {len(outcomes)} deployment(s)",
        cost=cost,
        cost_per_day=per_day,
        cost_per_month=per_day * DAYS_PER_MONTH,
        mean_utilisation=busy / billed if billed > 0 else 0.0,
        cost_per_million_requests=per_day / requests * 1e6 if requests > 0 else math.inf,
        slo_risk_minutes=sum(o.slo_risk_minutes for o in outcomes),
        peak_replicas=sum(o.peak_replicas for o in outcomes),
        mean_replicas=sum(o.mean_replicas for o in outcomes),
        requests=sum(o.requests for o in outcomes),
        busy_replica_s=busy,
        billed_replica_s=billed,
    )


def choose(totals: list[StrategyOutcome], bound_minutes: float) -> StrategyOutcome | None:
    """Cheapest feasible total whose SLO-risk minutes are within the bound (ties: listed first)."""
    eligible = [t for t in totals if t.feasible and t.slo_risk_minutes <= bound_minutes]
    if not eligible:
        return None
    return min(eligible, key=lambda t: t.cost_per_day)


def with_replicas(plan: Plan, replicas: int) -> Plan:
    return replace(plan, replicas=replicas)


def _derive_plan(
    deployment: Deployment, limits: SearchLimits, seed: int
) -> tuple[Plan | None, Candidate | None, list[str]]:
    """The given plan, or OptimizeBatch's at the profile's peak rate."""
    by_name = {c.instance.name: c for c in deployment.candidates}
    if deployment.plan is not None:
        return deployment.plan, by_name[deployment.plan.instance_type], []
    workload = Workload(deployment.profile.peak_per_s, deployment.profile.arrival_cv)
    result = optimize(deployment.candidates, workload, deployment.slo, limits, seed=seed)
    if result.recommended is None:
        return None, None, [f"{deployment.name}: no plan: {result.binding_reason}"]
    plan = result.recommended.plan
    notes = [
        f"{deployment.name}: plan derived by OptimizeBatch at the peak rate "
        f"{deployment.profile.peak_per_s:.4g}/s: {plan.describe()}"
        + ("" if result.feasible else f" (infeasible: {result.binding_reason})")
    ]
    return plan, by_name[plan.instance_type], notes


def plan_deployment(
    deployment: Deployment,
    limits: SearchLimits,
    seed: int,
    requested: AutoscalerSettings | None = None,
) -> DeploymentPlan:
    """Dedicated and autoscaled (recommended, and the requested settings when given)."""
    seed = seed or DEFAULT_SEED
    profile = deployment.profile
    plan, candidate, notes = _derive_plan(deployment, limits, seed)
    if plan is None or candidate is None:
        return DeploymentPlan(
            deployment.name, None, None, None, [], None, profile.peak_per_s, math.nan, notes
        )
    ceiling = limits.max_replicas
    curve = replica_curve(candidate, plan, deployment.slo, profile, ceiling, seed)
    price = candidate.instance.price_per_hour
    if deployment.plan is None:  # the optimizer's count at the peak was confirmed at length
        replicas = curve.replicas.copy()
        replicas[-1] = max(int(replicas[-1]), plan.replicas)
        curve = replace(curve, replicas=np.maximum.accumulate(replicas))
    notes += [f"{deployment.name}: {note}" for note in curve.notes]
    peak_need = int(curve.need(np.array([profile.peak_per_s]))[0])
    if deployment.plan is not None and deployment.plan.replicas != peak_need:
        notes.append(
            f"{deployment.name}: the given plan has {deployment.plan.replicas} replicas; the "
            f"peak of {profile.peak_per_s:.4g}/s needs {peak_need}"
        )
    fixed = dedicated(profile, curve, price)
    startup = candidate.instance.cold_start_s or DEFAULT_STARTUP_DELAY_S
    if not candidate.instance.cold_start_s:
        notes.append(
            f"{deployment.name}: no cold_start_s for {candidate.instance.name}; the recommended "
            f"autoscaler assumes replicas serve {DEFAULT_STARTUP_DELAY_S:g} s after ordering"
        )
    settings, scaled, found = recommend_autoscaler(profile, curve, price, startup)
    notes += [f"{deployment.name}: {note}" for note in found]
    strategies = [fixed, scaled]
    if requested is not None:
        given = requested
        if given.startup_delay_s == 0 and candidate.instance.cold_start_s:
            given = replace(given, startup_delay_s=candidate.instance.cold_start_s)
        strategies.append(simulate_autoscaler(profile, curve, given, price, "requested autoscaler"))
    peak_plan = with_replicas(plan, max(1, min(peak_need, ceiling)))
    mean_latency = queueing.predict(
        candidate.profile, peak_plan, Workload(profile.peak_per_s, profile.arrival_cv), None
    ).mean_ms
    return DeploymentPlan(
        name=deployment.name,
        plan=peak_plan,
        candidate=candidate,
        curve=curve,
        strategies=strategies,
        recommended_autoscaler=settings,
        peak_per_s=profile.peak_per_s,
        mean_latency_at_peak_ms=mean_latency,
        notes=notes,
    )


def plan_resources(
    deployments: list[Deployment],
    limits: SearchLimits | None = None,
    seed: int = 0,
    requested: AutoscalerSettings | None = None,
    shared_instance_memory_bytes: int = 0,
) -> ResourcePlan:
    """Dedicated, autoscaled and (with two or more deployments and an instance memory) shared
    strategies for each deployment and in total, and the recommended strategy.

    The recommended strategy is the cheapest total (per day) that is feasible and whose summed
    SLO-risk minutes are at most :data:`RISK_BOUND_FRACTION` of the longest profile's minutes;
    ties go to the one listed first (dedicated, autoscaled, shared).
    """
    limits = limits or SearchLimits()
    planned = [plan_deployment(d, limits, seed, requested) for d in deployments]
    notes = [note for p in planned for note in p.notes]
    reasons: list[str] = []
    span = max(d.profile.span_s for d in deployments)
    bound = RISK_BOUND_FRACTION * span / 60.0
    totals: list[StrategyOutcome] = []
    complete = all(p.curve is not None for p in planned)
    if complete:
        for strategy in (Strategy.DEDICATED, Strategy.AUTOSCALED):
            outcomes = [o for p in planned if (o := p.outcome(strategy)) is not None]
            totals.append(total(strategy, outcomes, span))
        if requested is not None:
            given = [p.strategies[2] for p in planned]
            requested_total = total(Strategy.AUTOSCALED, given, span)
            totals.append(replace(requested_total, reason="requested autoscaler, all deployments"))
    if complete and len(deployments) >= 2 and shared_instance_memory_bytes > 0:
        members = []
        for d, p in zip(deployments, planned, strict=True):
            scaled = p.outcome(Strategy.AUTOSCALED)
            assert scaled is not None
            assert scaled.timeline is not None
            assert p.curve is not None
            assert p.candidate is not None
            assert p.plan is not None
            assert p.recommended_autoscaler is not None
            members.append(
                SharedMember(
                    profile=d.profile,
                    curve=p.curve,
                    timeline=scaled.timeline,
                    memory_bytes=d.memory_bytes,
                    instance_type=p.plan.instance_type,
                    price_per_hour=p.candidate.instance.price_per_hour,
                    target_utilisation=p.recommended_autoscaler.target_utilisation,
                )
            )
        shared, shared_notes = pack_shared(members, shared_instance_memory_bytes)
        totals.append(shared)
        notes += shared_notes
    elif len(deployments) >= 2:
        notes.append("shared: not evaluated (set shared_instance_memory_bytes to pack deployments)")
    best = choose(totals, bound)
    if best is not None:
        others = [t for t in totals if t is not best and t.strategy is not best.strategy]
        vs = "; ".join(
            f"{t.strategy.value} ${t.cost_per_day:,.2f}/day, {t.slo_risk_minutes:.3g} risk min"
            for t in others
        )
        reasons.append(
            f"{best.strategy.value}: ${best.cost_per_day:,.2f}/day "
            f"(${best.cost_per_million_requests:.4g}/M requests, utilisation "
            f"{best.mean_utilisation:.0%}, {best.slo_risk_minutes:.3g} SLO-risk minutes within "
            f"the bound of {bound:.3g})" + (f" vs {vs}" if vs else "")
        )
    elif totals:
        reasons.append(
            f"no strategy is feasible with at most {bound:.3g} SLO-risk minutes "
            f"({RISK_BOUND_FRACTION:.0%} of the profile)"
        )
    else:
        reasons.append("no deployment has a plan: " + "; ".join(notes))
    notes.append(
        f"cost per day = cost over the profile x 86400 / span ({span:g} s); per month = per "
        f"day x {DAYS_PER_MONTH}; SLO-risk minutes: time with fewer serving replicas than the "
        f"SLO needs at that rate"
    )
    return ResourcePlan(
        deployments=planned,
        totals=totals,
        recommended=None if best is None else best.strategy,
        reasons=reasons,
        notes=notes,
    )
