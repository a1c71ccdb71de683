"""Replay a request trace against five switching strategies (ARCHITECTURE.md section 6, issue 4
item 6): the live controller, static real-time and static batching sized for the peak, a naive
threshold switcher, and the hindsight-optimal schedule.

The model, kept deliberately simple:

* The trace's timestamps (seconds, shifted to start at 0) are divided by ``time_scale`` (K times
  the rate) and cut into intervals of ``interval_s``; all times below are in that scaled clock.
* Each interval is served by one plan, simulated with :func:`servewise.core.simulator.simulate`
  on that interval's **real** arrivals. Nothing is carried over between intervals (the queue
  starts empty at each boundary), so a backlog built in one interval does not spill into the
  next; an overloaded interval still shows its own tail.
* Cost of an interval: ``replicas * price * interval_s / 3600``. An interval whose simulated
  SLO-percentile latency exceeds the bound counts ``interval_s / 60`` violation minutes.
* Switches are priced by one rule, :func:`servewise.core.control.switch_cost`, on top of the
  intervals' running cost (which bills the plan serving each interval): a scale (the same
  instance type, B and T, another replica count) bills the added replicas over their cold
  start, a scale down nothing; a migration bills the target over its cold start and the
  controller's weighted steps before the last, then the old plan kept as a fallback through
  the last step (billed up to the replay's end). The naive switcher and the hindsight schedule
  switch at once, without weighted steps, so a migration costs them the target's cold start
  only (the hindsight schedule is thereby a lower bound: any other strategy's sequence of
  plans is a path it may take at no more switch cost).
* Every strategy's plan changes are counted alike: ``switches`` = ``scales`` (the replica
  count alone changes: no traffic shift) + ``migrations`` (instance type, B or T change).
* **Controller**: it starts on the optimizer's plan at the first interval's rate (the plan
  deployed when the trace begins). After each interval it gets a sample (the interval's rate,
  and the interval's simulated p99 as the observed latency) and
  :func:`servewise.core.control.evaluate` decides; on SWITCH the switch cost is billed and the
  target plan is in force from the first interval boundary after ``Evaluation.ready_after_s``
  (the cold start, plus the steps before the last for a migration; the old plan serves until
  then; a move with nothing to start, a scale down, serves from the next interval). No
  decisions are taken during a transition, with one exception the live stream makes too: a
  move away from a breach (``Evaluation.away_from_breach``: panic or a predicted breach) whose
  step sees the panic count of breaches completes early
  (:func:`servewise.core.transitions.judge_step`, toward safety) and the controller decides
  again from its target at once, so it can escalate while the target is still starting (the
  target still serves only once started; its state counts breaches from then). Otherwise step
  judging and rollback are not replayed. The sample taken at the boundary where a transition
  completes is judged against the new plan's state.
* **Naive**: after each interval it picks the real-time plan below the break-even rate and the
  batching plan at or above it, each sized (on the rate ladder) for the interval's rate; it
  switches at once, with no hysteresis, stabilisation or dwell (the switch cost is billed).
* **Hindsight**: dynamic programming over intervals and the candidate plans (the optimizer's best
  and real-time plans on a ladder of rates, plus every plan another strategy used), minimising
  cost + switch cost + ``violation_penalty`` per violation minute, knowing the whole trace. It
  starts where the controller starts and pays for leaving that plan like any other switch.

Optimizer answers are cached per rounded rate, and simulations per (interval, plan).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from servewise.core.control import (
    AdviceCache,
    ControlSettings,
    Decision,
    DeploymentState,
    Sample,
    Step,
    cached_advisor,
    evaluate,
    is_realtime,
    is_scale,
    optimizer_advisor,
    plan_cost_per_hour,
    rounded_rate,
    sample_window_s,
    switch_cost,
)
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import SearchLimits, optimize
from servewise.core.profiles import Candidate
from servewise.core.simulator import simulate
from servewise.core.transitions import StepAction, judge_step

FloatArray = npt.NDArray[np.float64]

DEFAULT_INTERVAL_S = 60.0
# A violation minute costs this many times the most expensive plan's hour (hindsight DP).
VIOLATION_PENALTY_HOURS = 100.0
LADDER_RATIO = 1.25
LADDER_HEADROOM = 1.1

CONTROLLER = "controller"
STATIC_REALTIME = "static-realtime-peak"
STATIC_BATCHING = "static-batching-peak"
NAIVE = "naive-threshold"
HINDSIGHT = "hindsight-optimal"
STRATEGIES = (CONTROLLER, STATIC_REALTIME, STATIC_BATCHING, NAIVE, HINDSIGHT)


class TraceError(ValueError):
    """A trace file that cannot be read as timestamps."""


def _parse_time(text: str) -> float:
    """Seconds since the epoch of ``YYYY-MM-DD HH:MM:SS[.fraction]`` (any number of digits), or
    a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    date_part, _, time_part = text.replace("T", " ").partition(" ")
    try:
        day = dt.date.fromisoformat(date_part)
        hh, mm, ss = time_part.split(":")
        seconds = int(hh) * 3600 + int(mm) * 60 + float(ss)
    except ValueError:
        raise TraceError(f"not a timestamp: {text!r}") from None
    return (day - dt.date(1970, 1, 1)).days * 86_400.0 + seconds


def read_trace(path: str | Path) -> FloatArray:
    """Arrival times in seconds from 0, sorted: the TIMESTAMP column of an Azure LLM inference
    trace, or the first column of a CSV of seconds (a header row is skipped)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise TraceError(f"{path} has no rows")
    column = 0
    header = [c.strip().upper() for c in rows[0]]
    if "TIMESTAMP" in header:
        column = header.index("TIMESTAMP")
        rows = rows[1:]
    else:
        try:
            _parse_time(rows[0][0])
        except TraceError:
            rows = rows[1:]
    try:
        times = np.array([_parse_time(r[column]) for r in rows], dtype=np.float64)
    except IndexError:
        raise TraceError(f"{path}: a row has no column {column}") from None
    if len(times) < 2:
        raise TraceError(f"{path} has fewer than two timestamps")
    times.sort()
    result: FloatArray = times - times[0]
    return result


@dataclass(frozen=True)
class IntervalResult:
    plan: Plan
    cost: float
    p99_ms: float
    slo_latency_ms: float
    violated: bool


@dataclass
class StrategyResult:
    name: str
    cost: float = 0.0
    switch_cost: float = 0.0
    violation_minutes: float = 0.0
    switches: int = 0
    # switches = scales + migrations (see :func:`servewise.core.control.is_scale`).
    scales: int = 0
    migrations: int = 0
    plans: list[Plan] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ReplayResult:
    interval_s: float
    time_scale: float
    slo: Slo
    rates_per_s: FloatArray
    break_even_rate_per_s: float
    strategies: dict[str, StrategyResult]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        def plan_json(p: Plan) -> dict[str, Any]:
            return {
                "instance_type": p.instance_type,
                "max_batch_size": p.max_batch_size,
                "max_queue_delay_ms": p.max_queue_delay_ms,
                "replicas": p.replicas,
                "mode": "realtime" if is_realtime(p) else "batching",
            }

        return {
            "interval_s": self.interval_s,
            "time_scale": self.time_scale,
            "slo": {"latency_ms": self.slo.latency_ms, "percentile": self.slo.percentile},
            "break_even_rate_per_s": (
                None if math.isinf(self.break_even_rate_per_s) else self.break_even_rate_per_s
            ),
            "rates_per_s": [float(r) for r in self.rates_per_s],
            "notes": self.notes,
            "strategies": {
                name: {
                    "cost": s.cost,
                    "switch_cost": s.switch_cost,
                    "slo_violation_minutes": s.violation_minutes,
                    "switches": s.switches,
                    "scale_actions": s.scales,
                    "migrations": s.migrations,
                    "notes": s.notes,
                    "timeline": [
                        {**plan_json(p), "slo_latency_ms": q}
                        for p, q in zip(s.plans, s.p99_ms, strict=True)
                    ],
                }
                for name, s in self.strategies.items()
            },
        }


@dataclass(frozen=True)
class _Pending:
    """A transition the replayed controller is carrying out."""

    candidates: tuple[Candidate, ...]
    slo: Slo
    target: Plan
    in_force_at_s: float
    planned_rate_per_s: float
    arrival_cv: float
    steps: tuple[Step, ...]
    decided_at_s: float
    away_from_breach: bool

    def state(self, plan_since_s: float) -> DeploymentState:
        """The deployment with the target as its plan, in force from ``plan_since_s``."""
        return DeploymentState(
            self.candidates,
            self.slo,
            self.target,
            self.planned_rate_per_s,
            plan_since_s,
            self.arrival_cv,
        )


class _Replay:
    """The shared machinery: intervals, cached optimizer answers and cached simulations."""

    def __init__(
        self,
        times_s: FloatArray,
        candidates: Sequence[Candidate],
        slo: Slo,
        interval_s: float,
        limits: SearchLimits,
        settings: ControlSettings,
        seed: int,
    ) -> None:
        self.candidates = tuple(candidates)
        self.by_name = {c.instance.name: c for c in candidates}
        self.slo = slo
        self.interval_s = interval_s
        self.limits = limits
        self.settings = settings
        self.seed = seed
        count = max(1, math.ceil((float(times_s[-1]) + 1e-9) / interval_s))
        edges = np.arange(count + 1, dtype=np.float64) * interval_s
        index = np.searchsorted(times_s, edges, side="left")
        self.arrivals = [times_s[index[i] : index[i + 1]] for i in range(count)]
        self.rates: FloatArray = np.array([len(a) / interval_s for a in self.arrivals])
        self._best: dict[float, Plan] = {}
        self._realtime: dict[float, Plan] = {}
        self._sims: dict[tuple[int, Plan], IntervalResult] = {}

    # --- optimizer, cached per rounded rate -------------------------------------------------

    def _optimize(self, rate: float, realtime: bool) -> Plan:
        key = max(rounded_rate(rate), 1e-3)
        cache = self._realtime if realtime else self._best
        found = cache.get(key)
        if found is None:
            limits = self.limits
            if realtime:
                limits = SearchLimits(max_replicas=limits.max_replicas, allowed_batch_sizes=(1,))
            result = optimize(
                list(self.candidates), Workload(rate_per_s=key), self.slo, limits, seed=self.seed
            )
            if result.recommended is None:
                raise ValueError(f"the optimizer found no plan at {key:.4g}/s")
            found = result.recommended.plan
            cache[key] = found
        return found

    def best(self, rate: float) -> Plan:
        return self._optimize(rate, realtime=False)

    def realtime(self, rate: float) -> Plan:
        return self._optimize(rate, realtime=True)

    # --- serving one interval ---------------------------------------------------------------

    def serve(self, i: int, plan: Plan) -> IntervalResult:
        key = (i, plan)
        found = self._sims.get(key)
        if found is not None:
            return found
        cost = plan_cost_per_hour(plan, self.candidates) * self.interval_s / 3600.0
        arrivals = self.arrivals[i]
        if len(arrivals) == 0:
            found = IntervalResult(plan, cost, 0.0, 0.0, False)
        else:
            profile = self.by_name[plan.instance_type].profile
            sim = simulate(
                profile,
                plan,
                Workload(rate_per_s=max(float(self.rates[i]), 1e-9)),
                seed=self.seed + i,
                slo=self.slo,
                arrivals_ms=(arrivals - arrivals[0]) * 1000.0,
            )
            q = sim.latency.slo_percentile_ms
            q = sim.latency.p99_ms if q is None else q
            found = IntervalResult(plan, cost, sim.latency.p99_ms, q, q > self.slo.latency_ms)
        self._sims[key] = found
        return found

    def switch_cost(self, old: Plan, new: Plan) -> float:
        """An immediate switch, priced by the controller's own rule
        (:func:`servewise.core.control.switch_cost` without weighted steps): a scale up pays
        the added replicas' cold start, a scale down nothing, a migration the old plan over the
        target's cold start."""
        return switch_cost(old, new, self.candidates).cost

    def record(self, result: StrategyResult, i: int, plan: Plan) -> None:
        served = self.serve(i, plan)
        result.plans.append(plan)
        result.p99_ms.append(served.slo_latency_ms)
        result.cost += served.cost
        if served.violated:
            result.violation_minutes += self.interval_s / 60.0

    def bill_switch(self, result: StrategyResult, old: Plan, new: Plan, amount: float) -> None:
        """Count a plan change (a scale when only the replica count changes, else a migration)
        and bill its switch cost."""
        result.switches += 1
        if is_scale(old, new):
            result.scales += 1
        else:
            result.migrations += 1
        result.cost += amount
        result.switch_cost += amount

    # --- strategies -------------------------------------------------------------------------

    def static(self, name: str, plan: Plan) -> StrategyResult:
        result = StrategyResult(name, notes=[f"{plan.describe()} throughout"])
        for i in range(len(self.rates)):
            self.record(result, i, plan)
        return result

    def naive(self, break_even: float) -> StrategyResult:
        result = StrategyResult(
            NAIVE,
            notes=[
                f"real-time below {break_even:.4g}/s, batching at or above it, each sized for "
                "the previous interval's rate; switches at once (no hysteresis)"
            ],
        )
        plan = self._naive_plan(float(self.rates[0]), break_even)
        for i in range(len(self.rates)):
            self.record(result, i, plan)
            if i == len(self.rates) - 1:
                break  # a switch after the last interval would serve nothing
            rate = float(self.rates[i])
            target = self._naive_plan(rate, break_even)
            if target != plan:
                self.bill_switch(result, plan, target, self.switch_cost(plan, target))
                plan = target
        return result

    def _naive_plan(self, rate: float, break_even: float) -> Plan:
        return self.realtime(rate) if rate < break_even else self.best(rate)

    def initial_plan(self) -> Plan:
        """The plan deployed when the trace starts: the optimizer's at the first interval's rate
        (where the controller and the hindsight schedule both begin)."""
        return self.best(max(float(self.rates[0]), 1e-3))

    def controller(self) -> StrategyResult:
        result = StrategyResult(CONTROLLER)
        cache = AdviceCache()
        rate0 = max(float(self.rates[0]), 1e-3)
        plan = self.initial_plan()
        state = DeploymentState(self.candidates, self.slo, plan, rate0, 0.0)
        samples: list[Sample] = []
        # The plan carrying the traffic, and the targets starting up, each with the boundary
        # from which it carries the traffic (in the order decided, so in that order of time).
        serving = plan
        starting: list[tuple[Plan, float]] = []
        pending: _Pending | None = None  # the transition the controller is carrying out
        end = len(self.rates) * self.interval_s
        # The live stream's window (the replay used twice the longer stabilisation window, 600 s
        # at the defaults instead of the stream's 420 s, so its spread and burstiness were read
        # over samples the live controller has already dropped).
        window_s = sample_window_s(self.settings)
        for i in range(len(self.rates)):
            start = i * self.interval_s
            while starting and starting[0][1] <= start + 1e-9:
                serving = starting.pop(0)[0]
            served = self.serve(i, serving)
            self.record(result, i, serving)
            now = start + self.interval_s
            samples.append(Sample(now, float(self.rates[i]), p99_ms=served.p99_ms))
            samples = [s for s in samples if s.timestamp_s >= now - window_s]
            if pending is not None and pending.in_force_at_s <= now + 1e-9:
                # The transition completes at this boundary: the sample taken now is judged
                # against the new plan's state (it serves from the next interval on).
                state = pending.state(now)
                pending = None
            if pending is not None and pending.away_from_breach:
                # As the live stream judges the step of a move away from a breach
                # (transitions.judge_step, toward safety): the panic count of breaches during
                # it completes the move early (it never rolls back to the failing plan), and the
                # controller decides again from the target, so it can escalate before the
                # target is up. The target still takes the traffic only once started: until
                # then the breaches are the old plan's, so the target's own count from then.
                verdict = judge_step(
                    pending.steps,
                    0,
                    pending.decided_at_s,
                    samples,
                    self.slo,
                    self.settings,
                    toward_safety=True,
                )
                if (
                    verdict.action is StepAction.COMPLETE
                    and verdict.breach_run >= self.settings.panic_samples
                ):
                    state = pending.state(pending.in_force_at_s)
                    result.notes.append(f"t={now:g}s: {verdict.reason}")
                    pending = None
            if pending is not None:
                continue
            advise = cached_advisor(
                cache,
                state.current_plan,
                optimizer_advisor(
                    self.candidates, self.slo, self.limits, state.current_plan, seed=self.seed
                ),
            )
            ev = evaluate(state, samples, self.settings, advise)
            if ev.decision is not Decision.SWITCH or ev.target_plan is None:
                continue
            overlap_s = ev.overlap_s
            # The overlap is billed up to the replay's end (a transition may outlast it).
            inside = 1.0 if overlap_s <= 0 else min(1.0, (end - now) / overlap_s)
            self.bill_switch(result, state.current_plan, ev.target_plan, ev.switch_cost * inside)
            ready = now + ev.ready_after_s
            boundary = math.ceil(ready / self.interval_s - 1e-9) * self.interval_s
            pending = _Pending(
                self.candidates,
                self.slo,
                ev.target_plan,
                boundary,
                max(ev.sizing_rate_per_s, 1e-3),
                ev.arrival_cv,
                ev.steps,
                now,
                ev.away_from_breach,
            )
            starting.append((ev.target_plan, boundary))
            result.notes.append(f"t={now:g}s: {ev.reason}")
            if boundary <= now + 1e-9:
                # Nothing to start (a scale down): the target serves from the next interval,
                # and the next sample is judged against it.
                state = pending.state(now)
                pending = None
        return result

    def hindsight(
        self, plans: Sequence[Plan], penalty_per_minute: float, initial: Plan
    ) -> StrategyResult:
        n, k = len(self.rates), len(plans)
        score = np.empty((n, k))
        for i in range(n):
            for j, p in enumerate(plans):
                served = self.serve(i, p)
                minutes = self.interval_s / 60.0 if served.violated else 0.0
                score[i, j] = served.cost + penalty_per_minute * minutes
        switch = np.array([[self.switch_cost(a, b) for b in plans] for a in plans])
        # It starts where the controller starts (the plan deployed when the trace begins) and
        # pays for leaving it like any other switch.
        first = np.array([self.switch_cost(initial, p) for p in plans])
        best = score[0] + first
        back = np.zeros((n, k), dtype=np.int64)
        for i in range(1, n):
            total = best[:, None] + switch
            back[i] = total.argmin(axis=0)
            best = total[back[i], np.arange(k)] + score[i]
        choice = [int(best.argmin())]
        for i in range(n - 1, 0, -1):
            choice.append(int(back[i, choice[-1]]))
        choice.reverse()
        result = StrategyResult(
            HINDSIGHT,
            notes=[
                f"dynamic programming over {k} candidate plans, "
                f"{penalty_per_minute:.4g} per violation minute"
            ],
        )
        for i, j in enumerate(choice):
            prev = initial if i == 0 else plans[choice[i - 1]]
            if prev != plans[j]:
                self.bill_switch(result, prev, plans[j], self.switch_cost(prev, plans[j]))
            self.record(result, i, plans[j])
        return result


def rate_ladder(low: float, high: float, ratio: float = LADDER_RATIO) -> list[float]:
    """Geometric rates from ``low`` up to at least ``high``."""
    low = max(low, 1e-3)
    rates = [low]
    while rates[-1] < high:
        rates.append(rates[-1] * ratio)
    return rates


def replay(
    times_s: FloatArray,
    candidates: Sequence[Candidate],
    slo: Slo,
    interval_s: float = DEFAULT_INTERVAL_S,
    time_scale: float = 1.0,
    limits: SearchLimits | None = None,
    settings: ControlSettings | None = None,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Replay ``times_s`` (seconds from 0) divided by ``time_scale`` over the five strategies."""
    if time_scale <= 0 or interval_s <= 0:
        raise ValueError("time_scale and interval_s must be > 0")
    times = np.sort(np.asarray(times_s, dtype=np.float64) / time_scale)
    times = times - times[0]
    r = _Replay(
        times,
        candidates,
        slo,
        interval_s,
        limits or SearchLimits(),
        settings or ControlSettings(),
        seed,
    )
    say = progress or (lambda _: None)
    peak = float(r.rates.max())
    positive = r.rates[r.rates > 0]
    ladder = rate_ladder(float(positive.min()), peak * LADDER_HEADROOM)
    say(f"{len(r.rates)} intervals, peak {peak:.4g}/s; optimizing at {len(ladder)} ladder rates")
    break_even = math.inf
    for rate in ladder:
        if plan_cost_per_hour(r.best(rate), candidates) < plan_cost_per_hour(
            r.realtime(rate), candidates
        ):
            break_even = rate
            break
    static_rt = r.realtime(peak)
    static_batch = r.best(peak)
    strategies: dict[str, StrategyResult] = {}
    say("controller")
    strategies[CONTROLLER] = r.controller()
    strategies[STATIC_REALTIME] = r.static(STATIC_REALTIME, static_rt)
    strategies[STATIC_BATCHING] = r.static(STATIC_BATCHING, static_batch)
    say("naive switcher")
    strategies[NAIVE] = r.naive(break_even)
    pool: list[Plan] = []
    for plan in [*(r.best(x) for x in ladder), *(r.realtime(x) for x in ladder)]:
        if plan not in pool:
            pool.append(plan)
    for s in strategies.values():  # the DP may always do what another strategy did
        for plan in s.plans:
            if plan not in pool:
                pool.append(plan)
    top = max(plan_cost_per_hour(p, candidates) for p in pool)
    say(f"hindsight over {len(pool)} plans")
    strategies[HINDSIGHT] = r.hindsight(pool, top * VIOLATION_PENALTY_HOURS, r.initial_plan())
    notes = [
        f"trace times divided by {time_scale:g} ({time_scale:g}x the recorded rate)"
        if time_scale != 1
        else "trace replayed at its recorded rate",
        f"{len(r.rates)} intervals of {interval_s:g} s, each simulated on its own arrivals with "
        "an empty queue at the start (nothing carried over between intervals)",
        "switch cost: a scale pays the added replicas' cold start (a scale down nothing); a "
        "migration pays the target over its cold start and, for the controller, the weighted "
        "steps before the last, then the old plan kept through the last step (billed up to the "
        "replay's end); the naive and hindsight schedules switch at once",
        "switches = scale actions (replica count alone) + migrations (type, B or T)",
        "the controller and the hindsight schedule start on the optimizer's plan at the first "
        "interval's rate",
    ]
    return ReplayResult(interval_s, time_scale, slo, r.rates, break_even, strategies, notes)


def render_png(result: ReplayResult, path: str | Path, title: str = "") -> None:
    """A timeline: rate; replicas per strategy (filled markers: batching); SLO latency vs bound."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    minutes = np.arange(len(result.rates_per_s)) * result.interval_s / 60.0
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    axes[0].step(minutes, result.rates_per_s, where="post", color="black")
    if not math.isinf(result.break_even_rate_per_s):
        axes[0].axhline(result.break_even_rate_per_s, ls=":", color="grey", label="break-even")
        axes[0].legend(loc="upper right")
    axes[0].set_ylabel("rate (req/s)")
    for name, s in result.strategies.items():
        replicas = [p.replicas for p in s.plans]
        (line,) = axes[1].step(minutes, replicas, where="post", label=name)
        batching = [j for j, p in enumerate(s.plans) if not is_realtime(p)]
        axes[1].scatter(
            minutes[batching], [replicas[j] for j in batching], s=10, color=line.get_color()
        )
        axes[2].step(minutes, s.p99_ms, where="post", label=name, color=line.get_color())
    axes[1].set_ylabel("replicas (dot: batching)")
    axes[1].legend(fontsize=7, loc="upper right")
    axes[2].axhline(result.slo.latency_ms, color="red", ls="--", label="SLO")
    axes[2].set_yscale("log")
    axes[2].set_ylabel(f"p{result.slo.percentile:g} latency (ms)")
    axes[2].set_xlabel("minutes (scaled clock)")
    fig.suptitle(title or f"replay, {result.time_scale:g}x rate")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
