"""Offline batch planning: a job of M requests that must finish within a window.

The model (ARCHITECTURE.md section 2, "offline batch work is billed per second of makespan"):

* Batch size. On each instance type the job runs the throughput-optimal batch: the b that
  maximises b / s(b) among the sizes the profile and memory allow and whose one batch fits the
  window after the cold start (ties go to the larger b, the "largest that fits" of the issue).
* Work split. The M requests form F = M // b full batches and one partial batch of M % b.
  Full batches are dealt round robin over N replicas (q = F // N each, r = F % N replicas one
  more); the partial batch goes to a replica with q. Replica i works w_i seconds; a replica
  with no work is not started.
* Makespan = cold start + max w_i. Replicas = the fewest whose makespan fits the window.
* Billing: each replica is billed from its start to its own completion, rounded up to a whole
  second: cost = sum_i ceil(cold + w_i) * price / 3600. This is exact (``on_demand_cost``).

Spot capacity (``SpotOffer``): interruptions of a replica are Poisson at rate r per hour of
running time; the replica checkpoints every c seconds of work (c = 0: never), an interruption
loses the work since the last checkpoint, and a replacement resumes from it after R seconds
(``restart_s``, which includes its cold start; interruptions during the restart are ignored).
For a replica with w seconds of work, k = floor(w / c) whole segments and a last one of
l = w - k c, the expected completion time has the closed form (each segment of length x is
retried until an exponential time-to-interruption exceeds x):

    E[T] = cold + (1/lambda + R) * (k (e^{lambda c} - 1) + (e^{lambda l} - 1)),  lambda = r/3600

so the expected cost sum_i E[T_i] * spot_price / 3600 is closed form too (the per-second
rounding of each replica's bill, under a second each, is left out of the expectation). The
makespan is a maximum over replicas, which has no closed form: its expectation and the
probability of meeting the deadline come from a seeded, vectorised Monte Carlo of the same
model (``simulate_completion_s``). Spot is chosen only when that probability reaches the
required confidence and the expected cost is below the on-demand cost.

Rate-based deferrable traffic (rate lambda, deadline D) runs as periodic jobs: every P = D / 2
seconds a job takes the requests that arrived during the previous period and must finish
within P, so a request waits at most P for its job to start and P for it to finish. A job is
sized for the 99.9th percentile of a period's arrivals (normal approximation of the count,
mean lambda P, variance lambda P cv^2). Between jobs replicas are stopped (each job pays its
cold start) unless keeping them running is cheaper or the cold start does not fit the period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from servewise.core.profiles import Candidate

DEFAULT_DEADLINE_CONFIDENCE = 0.95
# Monte Carlo runs of a job's interruptions (the probability's standard error is at most
# 0.5 / sqrt(runs): about 0.8 percentage points).
DEFAULT_SPOT_RUNS = 4000
# Replica-runs drawn per Monte Carlo (runs * replicas); fewer runs for very wide jobs.
MAX_REPLICA_RUNS = 600_000
MIN_SPOT_RUNS = 1000
# Above this many expected interruptions in one Monte Carlo, the sum of the lost-work draws
# of a replica is drawn from its normal approximation instead of one by one.
MAX_EXPLICIT_INTERRUPTIONS = 2_000_000
# A periodic job runs every deadline * PERIOD_FRACTION seconds and must finish within a period.
PERIOD_FRACTION = 0.5
# Periodic jobs are sized for this quantile of a period's arrival count (z of 99.9%).
PERIOD_COUNT_Z = 3.090232306167813
# Extra replicas tried for spot (beyond the on-demand count) before giving up on spot.
SPOT_MAX_DOUBLINGS = 6
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class SpotOffer:
    """Spot price of an instance type and its interruptions per replica-hour."""

    price_per_hour: float
    interruptions_per_hour: float


@dataclass(frozen=True)
class OfflineOptions:
    """How offline work may run (OfflineOptions of the API)."""

    allow_spot: bool = False
    checkpoint_interval_s: float = 0.0
    restart_s: float = 0.0
    deadline_confidence: float = DEFAULT_DEADLINE_CONFIDENCE


@dataclass(frozen=True)
class OfflineJob:
    """``requests`` to finish within ``window_s`` of the job's start.

    ``period_s`` is set for periodic jobs of rate-based traffic (the job repeats every period
    and its requests may already have waited up to one period); None for a one-off backlog.
    """

    requests: int
    window_s: float
    period_s: float | None = None


@dataclass(frozen=True)
class OfflineJobPlan:
    """The plan of one offline job (mirrors OfflinePlan of the API)."""

    instance_type: str
    batch_size: int
    replicas: int
    spot: bool
    makespan_s: float
    cost: float
    expected_makespan_s: float
    expected_cost: float
    deadline_probability: float
    requests: int
    # Cost per hour: per-period cost * 3600 / period, or for a backlog its cost spread over
    # its window (cost * 3600 / window), so figures of pools and jobs can be added.
    cost_per_hour: float
    # Longest time a request spends from arrival to completion (ms): period + makespan for
    # periodic jobs, the makespan for a backlog.
    latency_ms: float
    kept_warm: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cost_per_million_requests(self) -> float:
        return self.expected_cost / self.requests * 1e6


@dataclass(frozen=True)
class OfflineResult:
    """The cheapest plan for a job, or why none exists."""

    plan: OfflineJobPlan | None
    reason: str
    # True when the service time of one batch (not the replica count) makes it infeasible.
    service_time_bound: bool = False


def periodic_job(rate_per_s: float, deadline_s: float, arrival_cv: float) -> OfflineJob:
    """The periodic job serving rate-based deferrable traffic (see the module docstring)."""
    period = deadline_s * PERIOD_FRACTION
    mean = rate_per_s * period
    count = math.ceil(mean + PERIOD_COUNT_Z * arrival_cv * math.sqrt(mean) - 1e-9)
    return OfflineJob(requests=max(count, 1), window_s=period, period_s=period)


def throughput_optimal_batch(candidate: Candidate, max_service_ms: float) -> int | None:
    """The b maximising b / s(b) with s(b) <= max_service_ms (ties: the larger b)."""
    top = candidate.max_batch_size
    table = candidate.profile.table_ms(top)[1:]
    sizes = np.arange(1, top + 1, dtype=np.float64)
    throughput = np.where(table <= max_service_ms, sizes / table, -1.0)
    best = float(throughput.max())
    if best <= 0:
        return None
    return int(np.flatnonzero(throughput >= best * (1 - 1e-12))[-1]) + 1


def replica_work_s(candidate: Candidate, requests: int, batch: int, replicas: int) -> list[float]:
    """Seconds of work of each started replica (see the module docstring for the split)."""
    full, rem = divmod(requests, batch)
    q, r = divmod(full, replicas)
    s_full = candidate.profile.service_time_ms(batch) / 1000.0
    s_rem = candidate.profile.service_time_ms(rem) / 1000.0 if rem else 0.0
    works = [(q + 1) * s_full] * r + [q * s_full] * (replicas - r)
    if rem:
        works[r] += s_rem  # a replica with q full batches (r < replicas always)
    return [w for w in works if w > 0]


def on_demand_cost(works_s: list[float], cold_start_s: float, price_per_hour: float) -> float:
    """sum_i ceil(cold + w_i) * price / 3600 (per-second billing of each replica)."""
    seconds = sum(math.ceil(cold_start_s + w - 1e-9) for w in works_s)
    return seconds * price_per_hour / SECONDS_PER_HOUR


def fewest_replicas(
    candidate: Candidate, requests: int, batch: int, window_s: float, max_replicas: int
) -> int | None:
    """Fewest replicas whose makespan (cold start included) fits the window."""
    cold = candidate.instance.cold_start_s

    def fits(n: int) -> bool:
        return cold + max(replica_work_s(candidate, requests, batch, n)) <= window_s

    total = sum(replica_work_s(candidate, requests, batch, 1))
    room = window_s - cold
    if room <= 0:
        return None
    low = max(1, math.ceil(total / room - 1e-9))
    high = min(max_replicas, math.ceil(requests / batch))
    low = min(low, high)
    if not fits(high):
        return None
    if fits(low):
        return low
    while high - low > 1:  # low fails, high fits; makespan does not grow with n
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


def expected_completion_s(
    work_s: float, cold_start_s: float, offer: SpotOffer, options: OfflineOptions
) -> float:
    """Closed-form expected completion time of one spot replica (module docstring)."""
    lam = offer.interruptions_per_hour / SECONDS_PER_HOUR
    if lam == 0.0 or work_s == 0.0:
        return cold_start_s + work_s
    c = options.checkpoint_interval_s if options.checkpoint_interval_s > 0 else work_s
    k = math.floor(work_s / c)
    last = work_s - k * c
    scale = 1.0 / lam + options.restart_s
    return cold_start_s + scale * (k * math.expm1(lam * c) + math.expm1(lam * last))


def _truncated_exponential_sum(
    rng: np.random.Generator, counts: npt.NDArray[np.int64], lam: float, limit: float
) -> npt.NDArray[np.float64]:
    """For each entry, the sum of ``counts[i]`` exponential(lam) draws truncated to [0, limit)."""
    total = int(counts.sum())
    out = np.zeros(len(counts))
    if total == 0 or limit <= 0:
        return out
    tail = -math.expm1(-lam * limit)  # P(X < limit)
    if total <= MAX_EXPLICIT_INTERRUPTIONS:
        u = rng.random(total)
        draws = -np.log1p(-u * tail) / lam
        owners = np.repeat(np.arange(len(counts)), counts)
        np.add.at(out, owners, draws)
        return out
    # Normal approximation of the sum: mean and variance of the truncated exponential.
    e = math.exp(-lam * limit)
    mean = 1.0 / lam - limit * e / tail
    second = 2.0 / lam**2 - (limit**2 + 2.0 * limit / lam) * e / tail
    var = max(second - mean * mean, 0.0)
    noise = rng.standard_normal(len(counts)) * np.sqrt(counts * var)
    result: npt.NDArray[np.float64] = np.maximum(counts * mean + noise, 0.0)
    return result


def simulate_completion_s(
    works_s: list[float],
    cold_start_s: float,
    offer: SpotOffer,
    options: OfflineOptions,
    runs: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """Completion time of every replica in every run: array (runs, replicas), seconds.

    Vectorised: in a segment of length x an attempt succeeds with probability e^{-lambda x},
    so a replica's failed attempts over its k whole segments are negative binomial (k,
    e^{-lambda c}) and over its last segment geometric; each failure costs a truncated
    exponential of lost work plus the restart.
    """
    lam = offer.interruptions_per_hour / SECONDS_PER_HOUR
    works = np.asarray(works_s, dtype=np.float64)
    times = np.broadcast_to(cold_start_s + works, (runs, len(works))).copy()
    if lam == 0.0:
        return times
    for j, w in enumerate(works_s):
        c = options.checkpoint_interval_s if 0 < options.checkpoint_interval_s < w else w
        k = math.floor(w / c)
        last = w - k * c
        lost = np.zeros(runs)
        if k > 0:
            failures = rng.negative_binomial(k, math.exp(-lam * c), runs).astype(np.int64)
            lost += _truncated_exponential_sum(rng, failures, lam, c)
            lost += failures * options.restart_s
        if last > 1e-12:
            failures = (rng.geometric(math.exp(-lam * last), runs) - 1).astype(np.int64)
            lost += _truncated_exponential_sum(rng, failures, lam, last)
            lost += failures * options.restart_s
        times[:, j] += lost
    return times


@dataclass(frozen=True)
class SpotOutcome:
    expected_makespan_s: float
    expected_cost: float
    deadline_probability: float
    runs: int


def spot_outcome(
    works_s: list[float],
    cold_start_s: float,
    window_s: float,
    offer: SpotOffer,
    options: OfflineOptions,
    seed: int,
    runs: int = DEFAULT_SPOT_RUNS,
) -> SpotOutcome:
    """Expected makespan (Monte Carlo), expected cost (closed form) and P(makespan <= window)."""
    runs = max(MIN_SPOT_RUNS, min(runs, MAX_REPLICA_RUNS // max(len(works_s), 1)))
    rng = np.random.default_rng(seed)
    times = simulate_completion_s(works_s, cold_start_s, offer, options, runs, rng)
    makespan = times.max(axis=1)
    expected_cost = (
        sum(expected_completion_s(w, cold_start_s, offer, options) for w in works_s)
        * offer.price_per_hour
        / SECONDS_PER_HOUR
    )
    return SpotOutcome(
        expected_makespan_s=float(makespan.mean()),
        expected_cost=expected_cost,
        deadline_probability=float((makespan <= window_s).mean()),
        runs=runs,
    )


def _per_hour(job: OfflineJob, cost: float) -> float:
    span = job.period_s if job.period_s is not None else job.window_s
    return cost * SECONDS_PER_HOUR / span


def _latency_ms(job: OfflineJob, makespan_s: float) -> float:
    return ((job.period_s or 0.0) + makespan_s) * 1000.0


def _on_demand_plan(
    candidate: Candidate, job: OfflineJob, max_replicas: int
) -> tuple[OfflineJobPlan | None, str, bool]:
    """(plan, reason when none, whether one batch's service time is what rules it out)."""
    inst = candidate.instance
    name = inst.name
    room_ms = (job.window_s - inst.cold_start_s) * 1000.0
    batch = throughput_optimal_batch(candidate, room_ms)
    if batch is None:
        return (
            None,
            f"{name}: cold start {inst.cold_start_s:g} s plus one batch "
            f"({candidate.profile.service_time_ms(1):g} ms) exceeds the {job.window_s:g} s window",
            True,
        )
    n = fewest_replicas(candidate, job.requests, batch, job.window_s, max_replicas)
    if n is None:
        rate = max_replicas * batch / candidate.profile.service_time_ms(batch) * 1000.0
        return (
            None,
            f"{name}: {max_replicas} replicas at B={batch} process {rate:.4g} req/s; "
            f"{job.requests} requests need more within {job.window_s:g} s",
            False,
        )
    works = replica_work_s(candidate, job.requests, batch, n)
    makespan = inst.cold_start_s + max(works)
    cost = on_demand_cost(works, inst.cold_start_s, inst.price_per_hour)
    kept_warm = False
    if job.period_s is not None:
        warm_cost = n * job.period_s * inst.price_per_hour / SECONDS_PER_HOUR
        if warm_cost < cost:
            cost, kept_warm, makespan = warm_cost, True, max(works)
    plan = OfflineJobPlan(
        instance_type=name,
        batch_size=batch,
        replicas=len(works),
        spot=False,
        makespan_s=makespan,
        cost=cost,
        expected_makespan_s=makespan,
        expected_cost=cost,
        deadline_probability=1.0,
        requests=job.requests,
        cost_per_hour=_per_hour(job, cost),
        latency_ms=_latency_ms(job, makespan),
        kept_warm=kept_warm,
    )
    return plan, "", False


def _spot_plan(
    candidate: Candidate,
    offer: SpotOffer,
    job: OfflineJob,
    options: OfflineOptions,
    start: OfflineJobPlan,
    max_replicas: int,
    seed: int,
) -> tuple[OfflineJobPlan | None, str]:
    """Fewest replicas (from the on-demand count up) whose spot run meets the deadline with
    the required confidence; None with the reason when none within a few doublings does."""
    inst = candidate.instance
    cold = inst.cold_start_s
    batch = start.batch_size
    most = min(max_replicas, math.ceil(job.requests / batch))

    def outcome(n: int) -> tuple[SpotOutcome, list[float]]:
        works = replica_work_s(candidate, job.requests, batch, n)
        return spot_outcome(works, cold, job.window_s, offer, options, seed), works

    n = start.replicas
    result, works = outcome(n)
    tried = 0
    fail = n - 1
    while result.deadline_probability < options.deadline_confidence:
        if n >= most or tried >= SPOT_MAX_DOUBLINGS:
            return None, (
                f"{inst.name} spot: P(finish within {job.window_s:g} s) = "
                f"{result.deadline_probability:.1%} with {n} replicas, below the required "
                f"{options.deadline_confidence:.1%}"
            )
        fail, n = n, min(most, n * 2)
        tried += 1
        result, works = outcome(n)
    good = (n, result, works)
    while n - fail > 1:
        mid = (n + fail) // 2
        mid_result, mid_works = outcome(mid)
        if mid_result.deadline_probability >= options.deadline_confidence:
            n, good = mid, (mid, mid_result, mid_works)
        else:
            fail = mid
    n, result, works = good
    makespan = cold + max(works)
    plan = OfflineJobPlan(
        instance_type=inst.name,
        batch_size=batch,
        replicas=len(works),
        spot=True,
        makespan_s=makespan,
        cost=on_demand_cost(works, cold, offer.price_per_hour),
        expected_makespan_s=result.expected_makespan_s,
        expected_cost=result.expected_cost,
        deadline_probability=result.deadline_probability,
        requests=job.requests,
        cost_per_hour=_per_hour(job, result.expected_cost),
        latency_ms=_latency_ms(job, result.expected_makespan_s),
        notes=(
            f"{inst.name} spot: {offer.interruptions_per_hour:g} interruptions/h, checkpoint "
            f"every {options.checkpoint_interval_s:g} s, restart {options.restart_s:g} s: "
            f"expected cost ${result.expected_cost:.4g} (closed form), P(within "
            f"{job.window_s:g} s) {result.deadline_probability:.1%} ({result.runs} runs)",
        ),
    )
    return plan, ""


def plan_job(
    candidates: list[Candidate],
    job: OfflineJob,
    spot_offers: dict[str, SpotOffer],
    options: OfflineOptions,
    max_replicas: int,
    seed: int,
) -> OfflineResult:
    """The cheapest way to run ``job``: on demand on any type, or spot where allowed and
    confident enough. Infeasible when no type finishes within the window."""
    best: OfflineJobPlan | None = None
    reasons: list[str] = []
    service_bound = True
    for index, candidate in enumerate(candidates):
        plan, reason, bound = _on_demand_plan(candidate, job, max_replicas)
        if plan is None:
            reasons.append(reason)
            service_bound &= bound
            continue
        service_bound = False
        if best is None or plan.expected_cost < best.expected_cost:
            best = plan
        offer = spot_offers.get(candidate.instance.name)
        if options.allow_spot and offer is not None:
            spot, why = _spot_plan(
                candidate, offer, job, options, plan, max_replicas, seed * 1009 + index
            )
            if spot is None:
                reasons.append(why)
            elif spot.expected_cost < best.expected_cost:
                best = spot
    if best is None:
        return OfflineResult(None, "; ".join(reasons), service_bound)
    return OfflineResult(best, "")
