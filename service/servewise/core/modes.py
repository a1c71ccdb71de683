"""Mode selection: real-time, dynamic batching, offline batch or hybrid, with a plan for each.

How each mode serves the traffic classes (every figure is derived from the request):

* REALTIME and DYNAMIC_BATCHING run one pool for every class (one FIFO queue, so every class
  sees the same latency distribution). The pool must meet every class's requirement. A
  deferrable class (deadline D) joins with the requirement "p99.9 <= D" (DEADLINE_PERCENTILE):
  the deadline is meant for every request, and p99.9 is the highest percentile a confirming
  simulation resolves reliably. The pool is optimised for the non-dominated requirement with
  the lowest bound; the others are checked on a simulation of the plan at their own
  percentile, and when one fails, the pool is re-optimised for the combined requirement (the
  highest percentile at the lowest bound), which implies all of them. One optimize() call
  answers both modes: its recommendation is the dynamic-batching plan, its real-time baseline
  (B = 1, T = 0) the real-time plan. The pool's arrivals are the superposition of the classes:
  rate sum(lambda_k) and CV^2 = sum(lambda_k cv_k^2) / sum(lambda_k) (the variance rate of the
  superposed counts). A one-off backlog cannot be served by an online pool (it is not a rate).
* OFFLINE_BATCH runs every class as an offline job (servewise.core.offline): a backlog as one
  job, a rate-based class as periodic jobs. Any class with a latency SLO makes it infeasible.
* HYBRID splits the classes: urgent classes (with an SLO) share one online pool (when all
  classes are urgent, each class gets its own pool); each deferrable class goes to whichever
  serves it cheaper, an offline job or a batching pool of its own sized for its deadline. Pools
  and jobs are independent (separate queues), so sizing each for its own classes sizes the
  split jointly; the mode's cost is the sum. It needs at least two classes.

The choice minimises cost per million requests plus CostSensitivity's price per ms times the
mode's latency (request-weighted over classes: a pool's simulated latency at its SLO
percentile, a job's longest wait plus makespan). Ties go to the simpler mode (the order of
Mode). Costs per hour of backlog jobs are their cost spread over their deadline window.

Break-even rates: every rate-based class is scaled by a common factor on a log grid from
BREAK_EVEN_RANGE[0] to BREAK_EVEN_RANGE[1] times today's rates; each mode is scored by a cheap
estimate (the analytic predictor's fewest replicas for pools, the closed form on demand for
jobs), the factors where the cheapest mode changes are bisected on the estimate, and each
flip is then confirmed just below and above it by simulating the two modes' screened pools
(adding replicas until each meets its requirement; jobs are closed form). At most
MAX_CONFIRMED_FLIPS flips, nearest today's rate, are confirmed; unconfirmed flips are
reported in the notes, not as break-evens. The search keeps its screens and job plans for the
request (_Estimates): each pool's grid is built once, and every pool the modes may ask for is
screened at all pending rates (the whole grid, a halving's midpoints) in one pass, each pool
and rate exactly as a screen of it alone would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from servewise.core import cancel, queueing
from servewise.core.model import Plan, Slo, Workload
from servewise.core.offline import (
    OfflineJob,
    OfflineJobPlan,
    OfflineOptions,
    OfflineResult,
    SpotOffer,
    periodic_job,
    plan_job,
)
from servewise.core.optimizer import (
    Binding,
    OptimizeResult,
    PlanAssessment,
    SearchLimits,
    bisect_fewest,
    optimize,
)
from servewise.core.profiles import Candidate
from servewise.core.simulator import (
    DEFAULT_SEED,
    SEED_MODULUS,
    capacity_per_s,
    order_statistics,
    renewal_arrivals_ms,
    simulate,
    simulate_with_latencies,
)

DEADLINE_PERCENTILE = 99.9
# Requests simulated to check a pool's plan against a class requirement it was not optimised for.
CHECK_REQUESTS = 40_000
BREAK_EVEN_RANGE = (0.1, 10.0)
BREAK_EVEN_GRID = 9  # log-spaced factors (plus 1, today's rates)
BREAK_EVEN_BISECTIONS = 5
# A flip is confirmed at the break-even rate times (1 -/+ this).
BREAK_EVEN_CONFIRM = 0.15
# Replicas the confirming simulation may add to a screened plan.
CONFIRM_EXTRA_REPLICAS = 3
# Flips confirmed by simulation (nearest today's rate first); the rest are noted.
MAX_CONFIRMED_FLIPS = 2
# Delays the break-even screen tries, as fractions of the SLO's slack.
SCREEN_DELAY_FRACTIONS = (0.05, 0.2, 0.5)
SECONDS_PER_HOUR = 3600.0


class Mode(Enum):
    REALTIME = "real-time"
    DYNAMIC_BATCHING = "dynamic batching"
    OFFLINE_BATCH = "offline batch"
    HYBRID = "hybrid"


MODE_ORDER = (Mode.REALTIME, Mode.DYNAMIC_BATCHING, Mode.OFFLINE_BATCH, Mode.HYBRID)


@dataclass(frozen=True)
class TrafficClass:
    """One class of traffic: a steady rate or a one-off backlog, and an SLO or a deadline."""

    name: str
    rate_per_s: float | None = None
    backlog_requests: int | None = None
    slo: Slo | None = None
    deadline_s: float | None = None
    arrival_cv: float = 1.0
    priority: int = 0

    @property
    def deferrable(self) -> bool:
        return self.deadline_s is not None

    def requirement(self) -> Slo:
        """The latency requirement an online pool must meet for this class."""
        if self.slo is not None:
            return self.slo
        assert self.deadline_s is not None
        return Slo(self.deadline_s * 1000.0, DEADLINE_PERCENTILE)

    def requests_per_hour(self) -> float:
        if self.rate_per_s is not None:
            return self.rate_per_s * SECONDS_PER_HOUR
        assert self.backlog_requests is not None
        assert self.deadline_s is not None
        return self.backlog_requests * SECONDS_PER_HOUR / self.deadline_s

    def scaled(self, factor: float) -> TrafficClass:
        if self.rate_per_s is None:
            return self
        return replace(self, rate_per_s=self.rate_per_s * factor)


@dataclass(frozen=True)
class Pool:
    """An online pool and the classes it serves."""

    assessment: PlanAssessment
    classes: tuple[str, ...]
    slo: Slo

    @property
    def latency_ms(self) -> float:
        sim = self.assessment.simulated
        value = sim.latency.slo_percentile_ms if sim is not None else None
        return math.inf if value is None else value


@dataclass(frozen=True)
class Job:
    plan: OfflineJobPlan
    traffic_class: str


@dataclass(frozen=True)
class ModeOutcome:
    mode: Mode
    feasible: bool
    binding: Binding | None
    reason: str
    cost_per_hour: float = 0.0
    cost_per_million_requests: float = 0.0
    pools: tuple[Pool, ...] = ()
    jobs: tuple[Job, ...] = ()
    objective_per_million_requests: float = math.inf
    latency_ms: float = math.inf


@dataclass(frozen=True)
class BreakEvenPoint:
    below: Mode
    above: Mode
    rate_per_s: float


@dataclass(frozen=True)
class SelectResult:
    chosen: Mode | None
    modes: list[ModeOutcome]
    reasons: list[str]
    break_evens: list[BreakEvenPoint]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SelectInputs:
    candidates: list[Candidate]
    limits: SearchLimits = field(default_factory=SearchLimits)
    spot_offers: dict[str, SpotOffer] = field(default_factory=dict)
    offline: OfflineOptions = field(default_factory=OfflineOptions)
    price_per_ms_per_million: float = 0.0
    seed: int = 0
    break_even: bool = True


# --- Pools -----------------------------------------------------------------------------------


def _dominates(a: Slo, b: Slo) -> bool:
    return a != b and a.percentile >= b.percentile and a.latency_ms <= b.latency_ms


def pool_requirements(classes: list[TrafficClass]) -> tuple[Slo, list[Slo]]:
    """(requirement to optimise for, other non-dominated requirements to check)."""
    reqs = list(dict.fromkeys(c.requirement() for c in classes))
    kept = [s for s in reqs if not any(_dominates(o, s) for o in reqs)]
    primary = min(kept, key=lambda s: (s.latency_ms, -s.percentile))
    return primary, [s for s in kept if s != primary]


def pool_workload(classes: list[TrafficClass]) -> Workload:
    """Superposition of the classes' renewal processes (rate and variance rate add)."""
    rates = [c.rate_per_s or 0.0 for c in classes]
    total = sum(rates)
    cv2 = sum(r * c.arrival_cv**2 for r, c in zip(rates, classes, strict=True)) / total
    return Workload(total, math.sqrt(cv2))


@dataclass(frozen=True)
class PoolEvaluation:
    """optimize() for one set of classes: the dynamic-batching and real-time pools."""

    result: OptimizeResult
    slo: Slo
    dynamic_ok: bool
    realtime_ok: bool
    note: str


def _check_arrivals(workload: Workload, seed: int) -> npt.NDArray[np.float64] | None:
    """The checks' arrival sample: the shared renewal sample of the pool's rate and CV (drawn
    once per CV and seed; gamma draws for bursty pools are slow), or None for a trace."""
    if workload.arrival_times_s is not None:
        return None
    return renewal_arrivals_ms(
        workload.rate_per_s, workload.arrival_cv, CHECK_REQUESTS, seed % SEED_MODULUS
    )


def _meets_all(
    candidates: dict[str, Candidate],
    assessment: PlanAssessment | None,
    workload: Workload,
    others: list[Slo],
    seed: int,
) -> bool:
    if assessment is None or not assessment.meets_slo:
        return False
    if not others:
        return True
    plan = assessment.plan
    _, latencies = simulate_with_latencies(
        candidates[plan.instance_type].profile,
        plan,
        workload,
        CHECK_REQUESTS,
        seed + 7,
        arrivals_ms=_check_arrivals(workload, seed + 7),
    )
    values = order_statistics(latencies, [s.percentile for s in others])
    return all(float(v) <= s.latency_ms for v, s in zip(values, others, strict=True))


def evaluate_pool(
    classes: list[TrafficClass], inputs: SelectInputs, seed: int, realtime: bool = True
) -> PoolEvaluation:
    """Optimise the pool serving ``classes``; ``realtime``: also its real-time baseline (the
    REALTIME mode's pool), which a pool only hybrid uses does not need."""
    by_name = {c.instance.name: c for c in inputs.candidates}
    workload = pool_workload(classes)
    primary, others = pool_requirements(classes)
    result = optimize(
        inputs.candidates, workload, primary, inputs.limits, seed=seed, realtime_baseline=realtime
    )
    dyn_ok = _meets_all(
        by_name, result.recommended if result.feasible else None, workload, others, seed
    )
    rt_ok = _meets_all(by_name, result.realtime_baseline, workload, others, seed)
    note = ""
    if others and (
        (result.feasible and not dyn_ok) or (result.realtime_baseline is not None and not rt_ok)
    ):
        combined = Slo(
            min(s.latency_ms for s in [primary, *others]),
            max(s.percentile for s in [primary, *others]),
        )
        note = (
            f"pool for {', '.join(c.name for c in classes)}: the plan for p{primary.percentile:g} "
            f"<= {primary.latency_ms:g} ms missed another class's requirement; re-optimised for "
            f"p{combined.percentile:g} <= {combined.latency_ms:g} ms"
        )
        result = optimize(
            inputs.candidates,
            workload,
            combined,
            inputs.limits,
            seed=seed,
            realtime_baseline=realtime,
        )
        primary = combined
        dyn_ok = result.feasible
        rt_ok = result.realtime_baseline is not None
    return PoolEvaluation(result, primary, dyn_ok and result.feasible, rt_ok, note)


def _class_names(classes: list[TrafficClass]) -> tuple[str, ...]:
    return tuple(c.name for c in classes)


# --- Mode outcomes ---------------------------------------------------------------------------


def _describe_plan(plan: Plan) -> str:
    if plan.max_batch_size == 1 and plan.max_queue_delay_ms == 0:
        return f"{plan.instance_type} N={plan.replicas}"
    return (
        f"{plan.instance_type} B={plan.max_batch_size} T={plan.max_queue_delay_ms:.3g} ms "
        f"N={plan.replicas}"
    )


def _latency_text(pool: Pool) -> str:
    return f"p{pool.slo.percentile:g} {pool.latency_ms:.3g} ms within {pool.slo.latency_ms:g} ms"


def _job_text(job: Job) -> str:
    p = job.plan
    kind = " spot" if p.spot else ""
    return (
        f"{p.instance_type}{kind} B={p.batch_size} N={p.replicas}, {p.requests} requests "
        f"per job, makespan {p.expected_makespan_s:.4g} s"
    )


def _compose(
    mode: Mode,
    classes: list[TrafficClass],
    pools: list[Pool],
    jobs: list[Job],
    inputs: SelectInputs,
    reason: str,
    binding: Binding | None,
) -> ModeOutcome:
    cost = sum(p.assessment.cost_per_hour for p in pools) + sum(j.plan.cost_per_hour for j in jobs)
    per_hour = {c.name: c.requests_per_hour() for c in classes}
    total = sum(per_hour.values())
    latency_of: dict[str, float] = {}
    for pool in pools:
        for name in pool.classes:
            latency_of[name] = pool.latency_ms
    for job in jobs:
        latency_of[job.traffic_class] = job.plan.latency_ms
    latency = sum(per_hour[n] * latency_of[n] for n in per_hour) / total
    cpm = cost / total * 1e6
    return ModeOutcome(
        mode=mode,
        feasible=True,
        binding=binding,
        reason=reason,
        cost_per_hour=cost,
        cost_per_million_requests=cpm,
        pools=tuple(pools),
        jobs=tuple(jobs),
        objective_per_million_requests=cpm + inputs.price_per_ms_per_million * latency,
        latency_ms=latency,
    )


def _realtime_binding(candidates: list[Candidate], slo: Slo) -> Binding:
    fastest = min(c.profile.service_time_ms(1) for c in candidates)
    return Binding.SERVICE_TIME if fastest > slo.latency_ms else Binding.MAX_REPLICAS


def _online_modes(
    classes: list[TrafficClass], inputs: SelectInputs, evaluation: PoolEvaluation | None
) -> tuple[ModeOutcome, ModeOutcome]:
    """REALTIME and DYNAMIC_BATCHING from one pool evaluation of every class."""
    backlog = [c for c in classes if c.rate_per_s is None]
    if evaluation is None:
        names = ", ".join(c.name for c in backlog)
        text = (
            f"class {names} is a one-off backlog; an online pool serves a steady rate "
            f"(offline batch or hybrid can run it as a job)"
        )
        return (
            ModeOutcome(Mode.REALTIME, False, None, text),
            ModeOutcome(Mode.DYNAMIC_BATCHING, False, None, text),
        )
    result = evaluation.result
    served = _class_names(classes)
    if evaluation.realtime_ok and result.realtime_baseline is not None:
        pool = Pool(result.realtime_baseline, served, evaluation.slo)
        realtime = _compose(
            Mode.REALTIME,
            classes,
            [pool],
            [],
            inputs,
            f"{_describe_plan(pool.assessment.plan)}; {_latency_text(pool)}",
            None,
        )
    else:
        note = result.realtime_baseline_note or "no real-time plan meets every class's requirement"
        realtime = ModeOutcome(
            Mode.REALTIME, False, _realtime_binding(inputs.candidates, evaluation.slo), note
        )
    if evaluation.dynamic_ok and result.recommended is not None:
        pool = Pool(result.recommended, served, evaluation.slo)
        dynamic = _compose(
            Mode.DYNAMIC_BATCHING,
            classes,
            [pool],
            [],
            inputs,
            f"{_describe_plan(pool.assessment.plan)}; {_latency_text(pool)}; "
            f"{result.binding_reason}",
            result.binding,
        )
    else:
        dynamic = ModeOutcome(Mode.DYNAMIC_BATCHING, False, result.binding, result.binding_reason)
    return realtime, dynamic


def offline_job_for(cls: TrafficClass) -> OfflineJob:
    assert cls.deadline_s is not None
    if cls.rate_per_s is not None:
        return periodic_job(cls.rate_per_s, cls.deadline_s, cls.arrival_cv)
    assert cls.backlog_requests is not None
    return OfflineJob(cls.backlog_requests, cls.deadline_s)


def _offline_results(
    classes: list[TrafficClass], inputs: SelectInputs, seed: int
) -> dict[str, OfflineResult]:
    out: dict[str, OfflineResult] = {}
    for i, cls in enumerate(classes):
        if cls.deferrable:
            out[cls.name] = plan_job(
                inputs.candidates,
                offline_job_for(cls),
                inputs.spot_offers,
                inputs.offline,
                inputs.limits.max_replicas,
                seed + 101 * (i + 1),
            )
    return out


def _offline_mode(
    classes: list[TrafficClass], inputs: SelectInputs, offline: dict[str, OfflineResult]
) -> ModeOutcome:
    urgent = [c for c in classes if not c.deferrable]
    if urgent:
        c = urgent[0]
        assert c.slo is not None
        return ModeOutcome(
            Mode.OFFLINE_BATCH,
            False,
            Binding.LATENCY_SLO,
            f"class {c.name} needs p{c.slo.percentile:g} <= {c.slo.latency_ms:g} ms; an offline "
            f"job only promises completion within a deadline",
        )
    jobs: list[Job] = []
    for cls in classes:
        res = offline[cls.name]
        if res.plan is None:
            binding = Binding.SERVICE_TIME if res.service_time_bound else Binding.MAX_REPLICAS
            return ModeOutcome(
                Mode.OFFLINE_BATCH, False, binding, f"class {cls.name}: {res.reason}"
            )
        jobs.append(Job(res.plan, cls.name))
    text = "; ".join(f"{j.traffic_class}: {_job_text(j)}" for j in jobs)
    return _compose(Mode.OFFLINE_BATCH, classes, [], jobs, inputs, text, None)


def _pool_lower_bound_per_hour(cls: TrafficClass, candidates: list[Candidate]) -> float:
    """Cost of the fewest replicas with enough capacity at their best batch (a lower bound)."""
    assert cls.rate_per_s is not None
    best = math.inf
    for c in candidates:
        table = c.profile.table_ms(c.max_batch_size)[1:]
        per_replica = float((np.arange(1, len(table) + 1) / table).max()) * 1000.0
        n = math.floor(cls.rate_per_s / per_replica) + 1
        best = min(best, n * c.instance.price_per_hour)
    return best


def _hybrid_groups(classes: list[TrafficClass]) -> list[list[TrafficClass]]:
    """Hybrid's pools of urgent classes: one for all of them beside deferrable classes, else
    one per class."""
    urgent = [c for c in classes if not c.deferrable]
    groups = [urgent] if len(urgent) < len(classes) else [[c] for c in urgent]
    return [g for g in groups if g]


def _hybrid_deferrable_pools(
    classes: list[TrafficClass], inputs: SelectInputs, offline: dict[str, OfflineResult]
) -> list[TrafficClass]:
    """Deferrable rate classes for which hybrid weighs a pool of their own against the job:
    those whose job (if any) costs more than a pool could."""
    return [
        cls
        for cls in classes
        if cls.deferrable
        and cls.rate_per_s is not None
        and (
            (job := offline[cls.name].plan) is None
            or job.cost_per_hour > _pool_lower_bound_per_hour(cls, inputs.candidates)
        )
    ]


def _hybrid_mode(
    classes: list[TrafficClass],
    inputs: SelectInputs,
    offline: dict[str, OfflineResult],
    pool_of: dict[tuple[str, ...], PoolEvaluation],
    seed: int,
) -> ModeOutcome:
    if len(classes) < 2:
        return ModeOutcome(
            Mode.HYBRID, False, None, "one traffic class: there is nothing to split between pools"
        )
    deferrable = [c for c in classes if c.deferrable]
    groups = _hybrid_groups(classes)
    deferrable_pools = _hybrid_deferrable_pools(classes, inputs, offline)
    # evaluate_modes has evaluated these already; only a caller that has not pays here.
    _evaluate_pools([*groups, *([c] for c in deferrable_pools)], inputs, pool_of, seed)
    pools: list[Pool] = []
    jobs: list[Job] = []
    for g in groups:
        ev = pool_of[_class_names(g)]
        if not ev.dynamic_ok or ev.result.recommended is None:
            return ModeOutcome(
                Mode.HYBRID,
                False,
                ev.result.binding,
                f"pool for {', '.join(_class_names(g))}: {ev.result.binding_reason}",
            )
        pools.append(Pool(ev.result.recommended, _class_names(g), ev.slo))
    for cls in deferrable:
        job = offline[cls.name].plan
        pool: Pool | None = None
        if cls in deferrable_pools:
            ev = pool_of[(cls.name,)]
            if ev.dynamic_ok and ev.result.recommended is not None:
                pool = Pool(ev.result.recommended, (cls.name,), ev.slo)
        if pool is not None and (job is None or pool.assessment.cost_per_hour < job.cost_per_hour):
            pools.append(pool)
        elif job is not None:
            jobs.append(Job(job, cls.name))
        else:
            return ModeOutcome(
                Mode.HYBRID,
                False,
                Binding.MAX_REPLICAS,
                f"class {cls.name}: neither a job nor a pool meets its deadline "
                f"({offline[cls.name].reason})",
            )
    parts = [
        f"{', '.join(p.classes)} on {_describe_plan(p.assessment.plan)} ({_latency_text(p)})"
        for p in pools
    ]
    parts += [f"{j.traffic_class} as a job on {_job_text(j)}" for j in jobs]
    return _compose(Mode.HYBRID, classes, pools, jobs, inputs, "; ".join(parts), None)


# Pool evaluations of all requests, kept across requests like the break-even pool. A request
# submits its pools as soon as it knows them (its thread meanwhile plans the offline jobs),
# so that two cores stay busy to the end.
_POOL_EVALUATIONS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="servewise-pools")

_PoolRuns = dict[tuple[str, ...], "Future[PoolEvaluation]"]


def _start_pools(
    groups: list[list[TrafficClass]],
    inputs: SelectInputs,
    seed: int,
    realtime_pool: tuple[str, ...],
    runs: _PoolRuns,
) -> None:
    """Submit the evaluation of each pool not yet submitted; only ``realtime_pool`` (the pool
    of every class: REALTIME and DYNAMIC_BATCHING) gets a real-time baseline, hybrid's pools
    of some classes do not report one."""
    for g in groups:
        names = _class_names(g)
        if names not in runs:
            runs[names] = _POOL_EVALUATIONS.submit(
                cancel.propagating(evaluate_pool), g, inputs, seed, names == realtime_pool
            )


def _evaluate_pools(
    groups: list[list[TrafficClass]],
    inputs: SelectInputs,
    pool_of: dict[tuple[str, ...], PoolEvaluation],
    seed: int,
) -> None:
    """Evaluate, in this thread, pools not yet known (without a real-time baseline)."""
    for g in groups:
        names = _class_names(g)
        if names not in pool_of:
            pool_of[names] = evaluate_pool(g, inputs, seed, realtime=False)


def evaluate_modes(
    classes: list[TrafficClass], inputs: SelectInputs, modes: tuple[Mode, ...] = MODE_ORDER
) -> list[ModeOutcome]:
    """A full outcome for each of ``modes`` (feasible or not, with the reason)."""
    seed = inputs.seed
    all_rates = all(c.rate_per_s is not None for c in classes)
    realtime_pool = _class_names(classes) if all_rates else ()
    runs: _PoolRuns = {}
    try:
        if all_rates and ({Mode.REALTIME, Mode.DYNAMIC_BATCHING} & set(modes)):
            _start_pools([classes], inputs, seed, realtime_pool, runs)
        hybrid = Mode.HYBRID in modes and len(classes) >= 2
        if hybrid:
            _start_pools(_hybrid_groups(classes), inputs, seed, realtime_pool, runs)
        # Offline plans are closed forms (or a vectorised spot walk), made while the pools
        # run; they tell which deferrable classes hybrid also weighs a pool of their own for.
        offline = (
            _offline_results(classes, inputs, seed)
            if {Mode.OFFLINE_BATCH, Mode.HYBRID} & set(modes)
            else {}
        )
        if hybrid:
            deferrable = [[c] for c in _hybrid_deferrable_pools(classes, inputs, offline)]
            _start_pools(deferrable, inputs, seed, realtime_pool, runs)
        pool_of = {names: run.result() for names, run in runs.items()}
    except BaseException:
        # No work left running on behalf of a failed call.
        for run in runs.values():
            run.cancel()
        wait(list(runs.values()))
        raise
    outcomes: dict[Mode, ModeOutcome] = {}
    if {Mode.REALTIME, Mode.DYNAMIC_BATCHING} & set(modes):
        realtime, dynamic = _online_modes(
            classes, inputs, pool_of.get(_class_names(classes)) if all_rates else None
        )
        outcomes[Mode.REALTIME] = realtime
        outcomes[Mode.DYNAMIC_BATCHING] = dynamic
    if Mode.OFFLINE_BATCH in modes:
        outcomes[Mode.OFFLINE_BATCH] = _offline_mode(classes, inputs, offline)
    if Mode.HYBRID in modes:
        outcomes[Mode.HYBRID] = _hybrid_mode(classes, inputs, offline, pool_of, seed)
    return [outcomes[m] for m in MODE_ORDER if m in modes]


def cheapest(outcomes: list[ModeOutcome]) -> ModeOutcome | None:
    """Lowest objective among feasible outcomes; ties go to the earlier mode of MODE_ORDER."""
    feasible = [o for o in outcomes if o.feasible]
    if not feasible:
        return None
    return min(
        feasible,
        key=lambda o: (o.objective_per_million_requests * (1 - 1e-12), MODE_ORDER.index(o.mode)),
    )


# --- Reasons ---------------------------------------------------------------------------------


def _reasons(
    chosen: ModeOutcome | None, outcomes: list[ModeOutcome], inputs: SelectInputs
) -> list[str]:
    reasons: list[str] = []
    if chosen is None:
        reasons.append("no mode meets every class's requirement within the limits")
    else:
        others = [o for o in outcomes if o.feasible and o.mode is not chosen.mode]
        versus = ", ".join(f"{o.mode.value} ${o.cost_per_million_requests:.3g}/M" for o in others)
        head = (
            f"{chosen.mode.value} {chosen.reason}: ${chosen.cost_per_million_requests:.3g}/M "
            f"(${chosen.cost_per_hour:.4g}/h)"
        )
        reasons.append(head + (f" vs {versus}" if versus else ""))
        if inputs.price_per_ms_per_million > 0:
            reasons.append(
                f"objective with ${inputs.price_per_ms_per_million:g}/M per ms of latency: "
                + ", ".join(
                    f"{o.mode.value} {o.objective_per_million_requests:.4g} ({o.latency_ms:.4g} ms)"
                    for o in outcomes
                    if o.feasible
                )
            )
    reasons.extend(f"{o.mode.value} infeasible: {o.reason}" for o in outcomes if not o.feasible)
    return reasons


# --- Break-even search -----------------------------------------------------------------------


@dataclass(frozen=True)
class _ScreenedPool:
    candidate: Candidate
    plan: Plan
    workload: Workload
    slo: Slo
    latency_ms: float

    @property
    def cost_per_hour(self) -> float:
        return self.plan.replicas * self.candidate.instance.price_per_hour


def _screen_grid(
    cands: list[Candidate], slo: Slo, limits: SearchLimits, realtime: bool
) -> tuple[list[int], list[int], list[float]]:
    """(candidate index, B, T) of every plan the break-even screen scores."""
    kinds: list[int] = []
    sizes: list[int] = []
    delays: list[float] = []
    for k, c in enumerate(cands):
        top = c.max_batch_size
        if realtime:
            grid = [1] if not limits.allowed_batch_sizes or 1 in limits.allowed_batch_sizes else []
        elif limits.allowed_batch_sizes:
            grid = [b for b in limits.allowed_batch_sizes if b <= top]
        else:
            grid = sorted({1 << i for i in range(top.bit_length())} | {top})
        slack = max(slo.latency_ms - c.profile.service_time_ms(1), 0.0)
        ts = {0.0} | {f * slack for f in SCREEN_DELAY_FRACTIONS}
        if limits.max_queue_delay_ms is not None:
            ts = {t for t in ts if t <= limits.max_queue_delay_ms}
        for b in grid:
            for t in sorted(ts) if b > 1 else [0.0]:
                kinds.append(k)
                sizes.append(b)
                delays.append(t)
    return kinds, sizes, delays


@dataclass(frozen=True)
class _PoolGrid:
    """What a pool's screen scores that does not depend on the rate: its plans (one row each),
    their prices and service tables. Built once per request and pool, not once per rate."""

    slo: Slo
    kinds: list[int]
    sizes: list[int]
    delays: list[float]
    tables: queueing.ServiceTables
    kind: npt.NDArray[np.int64]
    big_b: npt.NDArray[np.int64]
    delay: npt.NDArray[np.float64]
    prices: npt.NDArray[np.float64]
    service_ms: npt.NDArray[np.float64]  # s(B) of each row

    @classmethod
    def build(cls, slo: Slo, inputs: SelectInputs, realtime: bool) -> _PoolGrid | None:
        cands = inputs.candidates
        kinds, sizes, delays = _screen_grid(cands, slo, inputs.limits, realtime)
        if not kinds:
            return None
        tables = queueing.ServiceTables.build(
            [c.profile for c in cands], [c.max_batch_size for c in cands]
        )
        kind = np.array(kinds, dtype=np.int64)
        big_b = np.array(sizes, dtype=np.int64)
        return cls(
            slo,
            kinds,
            sizes,
            delays,
            tables,
            kind,
            big_b,
            np.array(delays, dtype=np.float64),
            np.array([cands[k].instance.price_per_hour for k in kinds]),
            tables.service_ms[kind, big_b],
        )


# Plans per group whose floor the screen scores first (the cheapest floors; then all the rest
# of a group that none of them settled).
FLOOR_CHUNK = 16


def _cheapest_at_floor(
    ok: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    low: npt.NDArray[np.int64],
    prices: npt.NDArray[np.float64],
    open_rows: npt.NDArray[np.bool_],
    group: npt.NDArray[np.int64],
    groups: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Which plans pass one replica above their capacity floor, and per group the cheapest
    such cost (inf when none does).

    Plans are scored in order of that cost, each group's FLOOR_CHUNK cheapest first: once a
    plan passes, no plan whose floor costs more can be the group's cheapest, nor tie with it,
    nor be searched further (its replica cap falls to its floor), so those are never scored;
    plans tying with the bound still are. Plans not scored are reported as failing, which
    changes no group's cheapest plan. A new rate's first scoring of a plan is its dearest (the
    kernel's renewal sums are not yet cached), and near the grid's low rates a handful of
    plans at one replica settle most groups."""
    count = len(low)
    at_floor = np.zeros(count, dtype=bool)
    bound_of = np.full(groups, np.inf)
    floor_cost = (low + 1) * prices
    # Open rows, by group, then floor cost, then row (a stable order).
    order = np.lexsort((np.arange(count), floor_cost, group))
    order = order[open_rows[order]]
    sorted_cost = floor_cost[order]
    by_group = group[order]
    position = np.searchsorted(by_group, np.arange(groups), side="left")
    ends = np.searchsorted(by_group, np.arange(groups), side="right")
    size = FLOOR_CHUNK
    while True:
        picks = []
        for g in range(groups):
            start, end = int(position[g]), int(ends[g])
            if start >= end:
                continue
            if math.isfinite(bound_of[g]):
                # Settled: only plans tying with the bound are left to score.
                stop = start + int(
                    np.searchsorted(sorted_cost[start:end], bound_of[g], side="right")
                )
                position[g] = end
            else:
                # A group barely larger than a chunk is scored whole: a second call per
                # group would cost more than the few plans it might skip.
                stop = end if end - start <= 2 * size else start + size
                position[g] = stop
            if stop > start:
                picks.append(order[start:stop])
        if not picks:
            break
        rows = np.concatenate(picks)
        passed = ok(rows, low[rows] + 1)
        at_floor[rows] = passed
        np.minimum.at(bound_of, group[rows[passed]], floor_cost[rows[passed]])
        size = count
    return at_floor, bound_of


def _fewest_replicas(
    ok: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    low: npt.NDArray[np.int64],
    prices: npt.NDArray[np.float64],
    ceiling: int,
    group: npt.NDArray[np.int64] | None = None,
    groups: int = 1,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Per plan: whether some replica count up to the ceiling passes ``ok``, and the fewest
    that does, for every plan that could be the cheapest of its group (others are marked
    unusable). ``low`` is each plan's capacity floor, a count that fails. ``group`` (default:
    one group) gives each row's group out of ``groups``: independent searches (the same pool
    at several rates) done in one pass, each pruned by its own cheapest plan."""
    count = len(low)
    everything = np.arange(count)
    if group is None:
        group = np.zeros(count, dtype=np.int64)
    # Only the cheapest pool of each group is wanted: score one replica above each plan's
    # capacity floor first; the cheapest of those that pass bounds the group's cost, and a
    # plan that cannot come in at or under that bound is not searched further (ties are
    # kept, so the choice is the one a full search makes).
    open_rows = low < ceiling
    at_floor, bound_of = _cheapest_at_floor(ok, low, prices, open_rows, group, groups)
    bound = bound_of[group]
    cap = np.full(count, ceiling, dtype=np.int64)
    bounded = np.isfinite(bound)
    cap[bounded] = np.minimum(
        cap[bounded], np.floor(bound[bounded] / prices[bounded] + 1e-9).astype(np.int64)
    )
    high = np.where(at_floor, low + 1, cap)
    rest = everything[open_rows & ~at_floor & (cap > low + 1)]
    # A ladder of replica counts scored in one call brackets each remaining plan's answer
    # (usually a few replicas above the floor); bisection then finishes inside the bracket
    # instead of halving all the way down from the ceiling.
    ladder = np.minimum(
        np.stack(
            [low[rest] + 2, low[rest] + low[rest] // 4 + 4, 2 * low[rest] + 8, cap[rest]], axis=1
        ),
        cap[rest][:, np.newaxis],
    )
    rungs = ladder.shape[1]
    passed = ok(np.repeat(rest, rungs), ladder.ravel()).reshape(len(rest), rungs)
    usable = at_floor.copy()
    usable[rest] = passed[:, -1]
    first = np.argmax(passed, axis=1)
    inside = np.arange(len(rest))
    high[rest] = np.where(passed[:, -1], ladder[inside, first], cap[rest])
    below = np.where(first > 0, ladder[inside, np.maximum(first - 1, 0)], low[rest] + 1)
    low = low.copy()
    low[rest] = np.minimum(below, high[rest] - 1)
    bisect_fewest(ok, low, high, usable)
    return usable, high


def _screen_pools(
    items: list[tuple[_PoolGrid, Workload]], inputs: SelectInputs
) -> list[_ScreenedPool | None]:
    """The analytic screen's cheapest pool for each (pool grid, workload): fewest replicas
    the predictor says meet the pool's requirement, over its grid of types, batch sizes and
    delays; None where no plan does.

    Every item (the break-even search's pools, each at several rates) is screened in the same
    pass, one predictor call per item and step, so the search's array bookkeeping is paid
    once for all of them; each item's rows are searched and pruned exactly as a screen of it
    alone would (rows do not interact)."""
    groups = len(items)
    if groups == 0:
        return []
    sizes = [len(grid.kinds) for grid, _ in items]
    starts = np.cumsum([0, *sizes])
    cands = inputs.candidates
    kind = np.concatenate([grid.kind for grid, _ in items])
    big_b = np.concatenate([grid.big_b for grid, _ in items])
    delay = np.concatenate([grid.delay for grid, _ in items])
    prices = np.concatenate([grid.prices for grid, _ in items])
    group = np.repeat(np.arange(groups, dtype=np.int64), sizes)
    rate = np.repeat(np.array([w.rate_per_s for _, w in items]), sizes)
    service = np.concatenate([grid.service_ms for grid, _ in items])
    floor = np.floor(rate * service / (big_b * 1000.0))
    low = floor.astype(np.int64)  # at or below capacity: fails
    allowed = [1.0 - grid.slo.percentile / 100.0 for grid, _ in items]

    def ok(rows: npt.NDArray[np.int64], n: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(rows), dtype=bool)
        if len(rows) == 0:
            return out
        of_row = group[rows]
        for g in np.unique(of_row).tolist() if groups > 1 else [0]:
            sel = of_row == g if groups > 1 else slice(None)
            picked = rows[sel]
            grid, workload = items[g]
            tail = queueing.tail_probability(
                grid.tables,
                kind[picked],
                workload.rate_per_s,
                workload.arrival_cv,
                big_b[picked],
                delay[picked],
                n[sel],
                grid.slo.latency_ms,
            )
            out[sel] = tail <= allowed[g]
        return out

    usable, high = _fewest_replicas(ok, low, prices, inputs.limits.max_replicas, group, groups)
    cost = np.where(usable, high * prices, np.inf)
    screened: list[_ScreenedPool | None] = []
    for g, (grid, workload) in enumerate(items):
        start, end = int(starts[g]), int(starts[g + 1])
        if not np.any(usable[start:end]):
            screened.append(None)
            continue
        best = int(np.argmin(cost[start:end]))
        replicas = high[start + best : start + best + 1]
        latency = 0.0
        if inputs.price_per_ms_per_million > 0:
            pred = queueing.predict_many(
                grid.tables,
                grid.kind[best : best + 1],
                workload.rate_per_s,
                workload.arrival_cv,
                grid.big_b[best : best + 1],
                grid.delay[best : best + 1],
                replicas,
                grid.slo.percentile,
            )
            latency = float(pred.latency_ms[0])
        candidate = cands[grid.kinds[best]]
        plan = Plan(candidate.instance.name, grid.sizes[best], grid.delays[best], int(replicas[0]))
        screened.append(_ScreenedPool(candidate, plan, workload, grid.slo, latency))
    return screened


def _screen_pool(
    classes: list[TrafficClass], inputs: SelectInputs, realtime: bool
) -> _ScreenedPool | None:
    """The analytic screen's cheapest pool for the classes (fewest replicas the predictor
    says meet the requirement, over a grid of types, batch sizes and delays), or None."""
    slo, _ = pool_requirements(classes)
    grid = _PoolGrid.build(slo, inputs, realtime)
    return None if grid is None else _screen_pools([(grid, pool_workload(classes))], inputs)[0]


def _confirmed_pool(pool: _ScreenedPool, seed: int) -> tuple[float, float] | None:
    """(cost per hour, simulated latency) of the screened plan, with replicas added until a
    simulation meets the requirement (at most CONFIRM_EXTRA_REPLICAS)."""
    plan = pool.plan
    for _ in range(CONFIRM_EXTRA_REPLICAS + 1):
        if capacity_per_s(pool.candidate.profile, plan.max_batch_size, plan.replicas) > (
            pool.workload.rate_per_s
        ):
            result = simulate(
                pool.candidate.profile,
                plan,
                pool.workload,
                CHECK_REQUESTS,
                seed,
                slo=pool.slo,
                arrivals_ms=_check_arrivals(pool.workload, seed),
            )
            observed = result.latency.slo_percentile_ms
            if result.stable and observed is not None and observed <= pool.slo.latency_ms:
                return plan.replicas * pool.candidate.instance.price_per_hour, observed
        plan = replace(plan, replicas=plan.replicas + 1)
    return None


_Figure = tuple[float, float]  # (cost per hour, latency ms)


class _Estimates:
    """The break-even search's screens and job plans, kept for the whole request.

    The search asks for the same pools (dynamic batching's pool of one class is hybrid's too)
    and jobs at many rates. Each pool's grid is built once and each (pool, rate) screened
    once; on a miss, every pool any mode may ask for is screened at that rate and at every
    rate of ``batch`` (the rate grid before it is walked, a halving's midpoints), all in one
    pass. Jobs are planned once per (class, rate): a backlog's job does not depend on the
    rate at all.
    """

    def __init__(self, classes: list[TrafficClass], inputs: SelectInputs) -> None:
        self.inputs = inputs
        self.by_name = {c.name: c for c in classes}
        self.on_demand = replace(inputs.offline, allow_spot=False)
        self.batch: tuple[float, ...] = ()
        # The pools _parts may ask for: every class's pool (real-time and batching) when all
        # classes have rates; hybrid's urgent pools and its deferrable rate classes' own.
        shapes: list[tuple[tuple[str, ...], bool]] = []
        if all(c.rate_per_s is not None for c in classes):
            shapes += [(_class_names(classes), True), (_class_names(classes), False)]
        if len(classes) >= 2:
            shapes += [(_class_names(g), False) for g in _hybrid_groups(classes)]
            shapes += [
                ((c.name,), False) for c in classes if c.deferrable and c.rate_per_s is not None
            ]
        self.shapes = list(dict.fromkeys(shapes))
        self._grids: dict[tuple[tuple[str, ...], bool], _PoolGrid | None] = {}
        self._pools: dict[tuple[tuple[str, ...], bool, float], _ScreenedPool | None] = {}
        self._jobs: dict[tuple[str, float | None], _Figure | None] = {}

    def _grid(self, shape: tuple[tuple[str, ...], bool]) -> _PoolGrid | None:
        if shape not in self._grids:
            slo, _ = pool_requirements([self.by_name[n] for n in shape[0]])
            self._grids[shape] = _PoolGrid.build(slo, self.inputs, shape[1])
        return self._grids[shape]

    def pool(self, names: tuple[str, ...], realtime: bool, factor: float) -> _ScreenedPool | None:
        key = (names, realtime, factor)
        if key in self._pools:
            return self._pools[key]
        cancel.check()  # a pass screens many pools and rates: a grid point's worth of work
        shapes = self.shapes if (names, realtime) in self.shapes else [(names, realtime)]
        todo = [
            (shape, f)
            for shape in shapes
            for f in dict.fromkeys((factor, *self.batch))
            if (*shape, f) not in self._pools
        ]
        items: list[tuple[_PoolGrid, Workload]] = []
        keys: list[tuple[tuple[str, ...], bool, float]] = []
        for (shape_names, shape_realtime), f in todo:
            grid = self._grid((shape_names, shape_realtime))
            if grid is None:
                self._pools[(shape_names, shape_realtime, f)] = None
                continue
            # Scaled exactly as the classes of a single rate are (rate times factor), so a
            # batched screen sees the very workloads an unbatched one would.
            scaled = [self.by_name[n].scaled(f) for n in shape_names]
            items.append((grid, pool_workload(scaled)))
            keys.append((shape_names, shape_realtime, f))
        for k, screened in zip(keys, _screen_pools(items, self.inputs), strict=True):
            self._pools[k] = screened
        return self._pools[key]

    def job(self, cls: TrafficClass, factor: float) -> _Figure | None:
        key = (cls.name, factor if cls.rate_per_s is not None else None)
        if key not in self._jobs:
            res = plan_job(
                self.inputs.candidates,
                offline_job_for(cls),
                {},
                self.on_demand,
                self.inputs.limits.max_replicas,
                self.inputs.seed,
            )
            self._jobs[key] = (
                None if res.plan is None else (res.plan.cost_per_hour, res.plan.latency_ms)
            )
        return self._jobs[key]


def _estimate(
    mode: Mode,
    classes: list[TrafficClass],
    inputs: SelectInputs,
    factor: float,
    estimates: _Estimates,
    confirm: bool = False,
) -> float:
    """A mode's objective per million requests (inf when infeasible) with the classes at
    ``factor`` times today's rates (``classes`` are the scaled ones): from the analytic
    screen, or with ``confirm`` from simulations of the screened plans (jobs: closed form,
    on demand)."""
    per_hour = {c.name: c.requests_per_hour() for c in classes}
    total = sum(per_hour.values())

    def job(cls: TrafficClass) -> _Figure | None:
        return estimates.job(cls, factor)

    def pool(group: list[TrafficClass], realtime: bool) -> _Figure | None:
        screened = estimates.pool(_class_names(group), realtime, factor)
        if screened is None:
            return None
        if confirm:
            return _confirmed_pool(screened, inputs.seed or DEFAULT_SEED)
        return screened.cost_per_hour, screened.latency_ms

    parts = _parts(mode, classes, per_hour, job, pool)
    if parts is None:
        return math.inf
    cost = sum(p[0] for p in parts)
    latency = sum(p[1] * p[2] for p in parts) / total
    return cost / total * 1e6 + inputs.price_per_ms_per_million * latency


def _parts(
    mode: Mode,
    classes: list[TrafficClass],
    per_hour: dict[str, float],
    job: Callable[[TrafficClass], _Figure | None],
    pool: Callable[[list[TrafficClass], bool], _Figure | None],
) -> list[tuple[float, float, float]] | None:
    """(cost per hour, latency, requests per hour) of each pool or job of the mode; None when
    the mode cannot serve the classes."""
    if mode in (Mode.REALTIME, Mode.DYNAMIC_BATCHING):
        online = (
            None
            if any(c.rate_per_s is None for c in classes)
            else pool(classes, mode is Mode.REALTIME)
        )
        return None if online is None else [(*online, sum(per_hour.values()))]
    if mode is Mode.OFFLINE_BATCH:
        jobs = [job(c) if c.deferrable else None for c in classes]
        if any(j is None for j in jobs):
            return None
        return [(*j, per_hour[c.name]) for j, c in zip(jobs, classes, strict=True) if j]
    return None if len(classes) < 2 else _hybrid_parts(classes, per_hour, job, pool)


def _hybrid_parts(
    classes: list[TrafficClass],
    per_hour: dict[str, float],
    job: Callable[[TrafficClass], _Figure | None],
    pool: Callable[[list[TrafficClass], bool], _Figure | None],
) -> list[tuple[float, float, float]] | None:
    parts: list[tuple[float, float, float]] = []
    urgent = [c for c in classes if not c.deferrable]
    deferrable = [c for c in classes if c.deferrable]
    groups = [urgent] if deferrable else [[c] for c in urgent]
    for g in [g for g in groups if g]:
        online = pool(g, False)
        if online is None:
            return None
        parts.append((*online, sum(per_hour[c.name] for c in g)))
    for cls in deferrable:
        options = [j for j in (job(cls),) if j is not None]
        if cls.rate_per_s is not None:
            options += [p for p in (pool([cls], False),) if p is not None]
        if not options:
            return None
        parts.append((*min(options), per_hour[cls.name]))
    return parts


def _estimated_choice(
    classes: list[TrafficClass],
    inputs: SelectInputs,
    factor: float,
    estimates: _Estimates,
    confirm: tuple[Mode, ...] = (),
) -> Mode | None:
    """Cheapest mode at ``factor`` times today's rates by the screen; the ``confirm`` modes'
    pools are checked by simulation instead."""
    scaled = [c.scaled(factor) for c in classes]
    scores = [
        (_estimate(m, scaled, inputs, factor, estimates, m in confirm), i, m)
        for i, m in enumerate(MODE_ORDER)
    ]
    best = min(scores)
    return None if math.isinf(best[0]) else best[2]


@dataclass
class _Bracket:
    """A flip being bisected: log factors where the screen chose ``below`` and ``above``."""

    lo: float
    hi: float
    below: Mode
    above: Mode
    narrowing: bool = True


# The confirmation's two rates, factor * (1 + side): just below and just above a flip.
_CONFIRM_SIDES = (-BREAK_EVEN_CONFIRM, BREAK_EVEN_CONFIRM)


def break_evens(
    classes: list[TrafficClass], inputs: SelectInputs, notes: list[str]
) -> list[BreakEvenPoint]:
    """Total rates where the cheapest mode flips, each confirmed by simulation just below
    and above it."""
    base_rate = sum(c.rate_per_s or 0.0 for c in classes)
    if base_rate <= 0:
        notes.append("break-even: no rate-based class to scale")
        return []
    estimates = _Estimates(classes, inputs)
    low, high = BREAK_EVEN_RANGE
    factors = sorted(set(np.geomspace(low, high, BREAK_EVEN_GRID).tolist()) | {1.0})
    # The whole grid is known up front: each pool is screened at every grid rate in one pass.
    estimates.batch = tuple(factors)
    choices = [_estimated_choice(classes, inputs, f, estimates) for f in factors]
    estimates.batch = ()
    # Bisect every bracketed flip in lockstep: each halving screens the midpoints of all
    # flips still narrowing in one pass. A flip's walk is the one it would take alone.
    brackets = [
        _Bracket(math.log(factors[i]), math.log(factors[i + 1]), below, above)
        for i, (below, above) in enumerate(pairwise(choices))
        if below is not None and above is not None and below is not above
    ]
    for _ in range(BREAK_EVEN_BISECTIONS):
        narrowing = [b for b in brackets if b.narrowing]
        if not narrowing:
            break
        cancel.check()
        estimates.batch = tuple(math.exp((b.lo + b.hi) / 2) for b in narrowing)
        for b in narrowing:
            mid = (b.lo + b.hi) / 2
            m = _estimated_choice(classes, inputs, math.exp(mid), estimates)
            if m is b.below:
                b.lo = mid
            elif m is b.above:
                b.hi = mid
            else:
                b.narrowing = False
        estimates.batch = ()
    flips = [(math.exp((b.lo + b.hi) / 2), b.below, b.above) for b in brackets]
    # Confirm the flips nearest today's rate first (their rates screened in one pass).
    flips.sort(key=lambda f: abs(math.log(f[0])))
    estimates.batch = tuple(
        f * (1 + side) for f, _, _ in flips[:MAX_CONFIRMED_FLIPS] for side in _CONFIRM_SIDES
    )
    points: list[BreakEvenPoint] = []
    for index, (factor, below, above) in enumerate(flips):
        rate = base_rate * factor
        if index >= MAX_CONFIRMED_FLIPS:
            notes.append(
                f"break-even: a further flip from {below.value} to {above.value} near "
                f"{rate:.4g} req/s (analytic screen, not confirmed)"
            )
            continue
        pair = (below, above)
        under, over = (
            _estimated_choice(classes, inputs, factor * (1 + side), estimates, pair)
            for side in _CONFIRM_SIDES
        )
        if under is below and over is above:
            points.append(BreakEvenPoint(below, above, rate))
        else:
            notes.append(
                f"break-even: the analytic screen puts a flip from {below.value} to "
                f"{above.value} near {rate:.4g} req/s; simulation did not confirm it"
            )
    estimates.batch = ()
    points.sort(key=lambda p: p.rate_per_s)
    return points


# --- Entry point -----------------------------------------------------------------------------

# Kept across requests (a thread per request costs a third of a millisecond); a few concurrent
# SelectMode calls share it, more wait briefly.
_BREAK_EVEN_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="servewise-break-even")


def select_mode(classes: list[TrafficClass], inputs: SelectInputs) -> SelectResult:
    """A plan for every mode, the chosen one, the reasons and the break-even rates.

    Parameters
    ----------
    classes:
        Validated traffic classes (unique names, at least one).
    inputs:
        Candidates, limits, spot offers, offline options, cost sensitivity and seed.

    Returns
    -------
    SelectResult
        ``chosen`` is None when no mode is feasible (every mode then carries its reason).
    """
    # The break-even search reads only the request, not the modes' outcomes: it runs beside
    # their evaluation (the predictor and the simulator release the GIL), under the caller's
    # cancel token.
    break_even_notes: list[str] = []
    pending = (
        _BREAK_EVEN_POOL.submit(cancel.propagating(break_evens), classes, inputs, break_even_notes)
        if inputs.break_even
        else None
    )
    try:
        outcomes = evaluate_modes(classes, inputs)
    except BaseException:
        if pending is not None and not pending.cancel():
            wait([pending])
        raise
    points = pending.result() if pending is not None else []
    chosen = cheapest(outcomes)
    notes: list[str] = []
    for o in outcomes:
        for job in o.jobs:
            notes.extend(job.plan.notes)
    notes.extend(break_even_notes)
    return SelectResult(
        chosen=None if chosen is None else chosen.mode,
        modes=outcomes,
        reasons=_reasons(chosen, outcomes, inputs),
        break_evens=points,
        notes=list(dict.fromkeys(notes)),
    )
