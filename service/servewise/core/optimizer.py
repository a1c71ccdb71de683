"""Search over (instance type, B, T, N) for the cheapest plan meeting the SLO.

Four stages, as ARCHITECTURE.md section 2 suggests:

1. Screen. The analytic predictor (queueing.py) scores every (type, B, T) on a grid (powers of
   two and their 1.5x midpoints, profile points, delays as fractions of the SLO's slack) and
   finds, on a replica ladder then by bisection, the fewest replicas it predicts meet the SLO.
2. Refine. The most promising (type, B, T) — per (type, B) the best delay and T = 0 — are
   simulated on one shared arrival sample (common random numbers), cheapest first, pruning
   any option that cannot beat the best so far; a plan passes when an upper confidence bound
   (batch means) on its fraction of requests over the SLO bound stays within 1 - percentile.
3. Polish. Longer delays for the winner at one replica fewer.
4. Confirm. The winner and the real-time baseline are simulated on a fresh sample spanning
   VERIFY_RELAXATION_TIMES relaxation times (in parallel); a plan failing gains replicas.
   Near-capacity plans no affordable run can verify are never recommended; a plan a replica
   price cheaper than the confirmed one, passed over only because verifying it needs more than
   CONFIRM_MAX_REQUESTS, gets a run of up to STRETCH_MAX_REQUESTS (at most two such plans).

Every figure in the result follows from the inputs: prices times replicas for cost, the
predictor for predicted latency, the simulator for the confirmation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from servewise.core import cancel, queueing
from servewise.core.model import Plan, Slo, Workload, cost_per_million_requests
from servewise.core.profiles import Candidate
from servewise.core.simulator import (
    DEFAULT_SEED,
    SEED_MODULUS,
    WARMUP_FRACTION,
    LatencySummary,
    SimulationResult,
    capacity_per_s,
    relaxation_time_ms,
    renewal_arrivals_ms,
    search_run,
    simulate_with_latencies,
    slow_counts,
)


class Binding(Enum):
    LATENCY_SLO = "latency_slo"
    THROUGHPUT = "throughput"
    MINIMUM_REPLICAS = "minimum_replicas"
    MAX_REPLICAS = "max_replicas"
    SERVICE_TIME = "service_time"
    MEMORY = "memory"


DEFAULT_MAX_REPLICAS = 256

# Delays tried, as fractions of the SLO's slack over a single request's service time.
DELAY_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.4)
# (type, B, T) combinations refined by simulation, cheapest predicted first.
REFINE_CANDIDATES = 12
# Requests in the shared search sample, and bounds on the confirmation run; both grow with
# the square of the arrival CV (bursty traffic needs more requests for the same precision).
SEARCH_REQUESTS = 12_000
SEARCH_MAX_REQUESTS = 24_000
CONFIRM_MIN_REQUESTS = 20_000
CONFIRM_MAX_REQUESTS = 1_000_000
# A near-critical plan cheaper than the confirmed answer, which only a longer run can verify,
# gets one: the user's money outweighs the milliseconds (at most STRETCH_CANDIDATES such runs).
STRETCH_MAX_REQUESTS = 2_000_000
STRETCH_CANDIDATES = 2
# Near capacity the predictor errs low (7-16% at T=0 on s2026-024's plans at 97-98.6% load):
# a plan it puts within this factor of the bound rarely survives the long run, so none is run.
STRETCH_PREDICTED_MARGIN = 1.15
# A plan's tail is trusted only from a run spanning this many heavy-traffic relaxation times.
# The simulator's own threshold (20) is enough for a mean; a p99 near capacity is set by the
# few excursions that reach the tail (about 1% of relaxation periods), so between 200k-request
# runs of one plan it still varied from 130 to 156 ms at 154 relaxation times. Plans no
# confirmation run (CONFIRM_MAX_REQUESTS) can span this way are not recommended.
VERIFY_RELAXATION_TIMES = 200.0
# Plans are judged by an upper confidence bound on the fraction of requests over the SLO
# bound (batch means), so that a plan passing on its sample by luck is not answered. Chunks
# span at least CHUNK_RELAXATION_TIMES relaxation times; MIN_CHUNKS..MAX_CHUNKS of them.
MIN_CHUNKS = 4
MAX_CHUNKS = 16
CHUNK_RELAXATION_TIMES = 8.0
# One-sided 90% quantiles of Student's t with chunks - 1 degrees of freedom (index = df).
T_QUANTILE_90 = (
    math.inf,
    3.078,
    1.886,
    1.638,
    1.533,
    1.476,
    1.440,
    1.415,
    1.397,
    1.383,
    1.372,
    1.363,
    1.356,
    1.350,
    1.345,
    1.341,
)
MAX_CONFIRM_ATTEMPTS = 6
FRONTIER_MAX_POINTS = 24
# An infeasible answer's closest plan is the cheapest within this fraction of the lowest latency.
CLOSEST_TOLERANCE = 0.05
# A long delay tried when polishing the chosen plan, as a fraction of the SLO's slack.
POLISH_SLACK_FRACTION = 0.75
# Replicas added to the recommendation to show what more money buys in latency.
FRONTIER_EXTRA_REPLICAS = 2


@dataclass(frozen=True)
class SearchLimits:
    max_replicas: int = DEFAULT_MAX_REPLICAS
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ms: float | None = None


@dataclass(frozen=True)
class PlanAssessment:
    plan: Plan
    predicted: LatencySummary
    simulated: SimulationResult | None
    meets_slo: bool
    capacity_per_s: float
    utilisation: float
    cost_per_hour: float
    cost_per_million_requests: float
    mean_batch_size: float


@dataclass(frozen=True)
class FrontierPoint:
    plan: Plan
    cost_per_hour: float
    latency_ms: float
    meets_slo: bool


@dataclass(frozen=True)
class OptimizeResult:
    feasible: bool
    recommended: PlanAssessment | None
    binding: Binding
    binding_reason: str
    realtime_baseline: PlanAssessment | None
    realtime_baseline_note: str
    saving_vs_realtime_per_hour: float | None
    saving_vs_realtime_fraction: float | None
    current: PlanAssessment | None
    saving_vs_current_per_hour: float | None
    saving_vs_current_fraction: float | None
    frontier: list[FrontierPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plans_considered: int = 0


class _Option(NamedTuple):
    """A (type, B, T) with the analytic screen's replica count (a tuple: the screen makes
    one per plan it scores, ~1,500 per request)."""

    candidate: Candidate
    max_batch_size: int
    max_queue_delay_ms: float
    predicted_replicas: int
    floor_replicas: int  # fewest replicas with capacity above the rate

    @property
    def price(self) -> float:
        return self.candidate.instance.price_per_hour


@dataclass(frozen=True)
class _Run:
    """One simulation on the shared sample, as the search reads it."""

    simulated: bool  # False: the plan cannot keep up with the rate, or no run can verify it
    passes: bool = False
    quantile: float = math.inf  # latency at the SLO percentile


def _chunk_count(relaxation_times: float) -> int:
    """Chunks of the batch-means bound: each spans CHUNK_RELAXATION_TIMES relaxation times."""
    return int(min(MAX_CHUNKS, max(MIN_CHUNKS, relaxation_times // CHUNK_RELAXATION_TIMES)))


def _meets_with_confidence(
    latencies: npt.NDArray[np.float64], slo: Slo, relaxation_times: float
) -> bool:
    """Whether the fraction of latencies over the SLO bound stays within 1 - percentile at
    an upper confidence bound (see :func:`_slow_counts_within`)."""
    chunks = _chunk_count(relaxation_times)
    counts = slow_counts(latencies, slo.latency_ms, chunks)
    return _slow_counts_within(counts, len(latencies), slo)


def _slow_counts_within(counts: list[int], kept: int, slo: Slo) -> bool:
    """Whether requests slower than the SLO bound, counted per consecutive chunk, stay within
    1 - percentile at an upper confidence bound.

    Latencies of neighbouring requests are strongly correlated (a burst, or a near-critical
    queue's excursion, delays everyone in it), so the bound uses batch means: the fraction
    over the bound in consecutive chunks, each spanning at least CHUNK_RELAXATION_TIMES
    heavy-traffic relaxation times so that chunks are roughly independent, and the mean plus
    a one-sided 90% Student t multiple of the standard error must stay within 1 - percentile.
    With fewer requests than chunks, ``counts[0]`` is the total and is held to the fraction.
    """
    allowed = 1.0 - slo.percentile / 100.0
    chunks = len(counts)
    per_chunk = kept // chunks
    if per_chunk == 0:
        return counts[0] <= allowed * kept
    # A handful of chunks: plain floats beat numpy's per-call overhead.
    fractions = [count / per_chunk for count in counts]
    mean = sum(fractions) / chunks
    variance = sum((f - mean) ** 2 for f in fractions) / (chunks - 1)
    bound = mean + T_QUANTILE_90[chunks - 1] * math.sqrt(variance) / math.sqrt(chunks)
    return bound <= allowed


class _Search:
    """Shared state of one optimisation: the sample, the SLO, and a cache of simulations."""

    def __init__(self, workload: Workload, slo: Slo, limits: SearchLimits, seed: int) -> None:
        self.workload = workload
        self.slo = slo
        self.limits = limits
        self.seed = seed
        self.quantile = slo.percentile / 100.0
        if workload.arrival_times_s is not None:
            times = np.asarray(workload.arrival_times_s, dtype=np.float64)
            self.arrivals_ms: npt.NDArray[np.float64] = (times - times[0]) * 1000.0
            gaps = np.diff(self.arrivals_ms)
            self.rate_per_s = (len(times) - 1) / (self.arrivals_ms[-1] / 1000.0)
            self.arrival_cv = float(gaps.std() / gaps.mean())
        else:
            self.rate_per_s = workload.rate_per_s
            self.arrival_cv = workload.arrival_cv
            self.arrivals_ms = renewal_arrivals_ms(
                workload.rate_per_s,
                workload.arrival_cv,
                _scaled_by_burstiness(SEARCH_REQUESTS, workload.arrival_cv, SEARCH_MAX_REQUESTS),
                seed,
            )
        self.cache: dict[tuple[str, int, float, int], _Run] = {}
        self._confirm_scaled: npt.NDArray[np.float64] = np.empty(0)
        self.warmup = int(len(self.arrivals_ms) * WARMUP_FRACTION)
        self.kept = len(self.arrivals_ms) - self.warmup  # requests a search run reports on
        self.quantile_index = min(max(math.ceil(self.kept * self.quantile) - 1, 0), self.kept - 1)

    def confirm_arrivals(self, count: int) -> npt.NDArray[np.float64]:
        """The first ``count`` arrivals of a fresh sample (seed + 1) shared by every
        confirmation; a prefix of any longer confirmation sample."""
        if self.workload.arrival_times_s is not None:
            return self.arrivals_ms
        # Each confirmation attempt (up to MAX_CONFIRM_ATTEMPTS, two searches) asks again;
        # the longest sample scaled so far serves every shorter request as a prefix.
        scaled = self._confirm_scaled
        if len(scaled) < count:
            scaled = renewal_arrivals_ms(
                self.rate_per_s, self.arrival_cv, count, (self.seed + 1) % SEED_MODULUS
            )
            self._confirm_scaled = scaled
        return scaled[:count]

    def relaxation_times(
        self, candidate: Candidate, big_b: int, n: int, horizon_ms: float
    ) -> float:
        """How many heavy-traffic relaxation times a run of ``horizon_ms`` spans."""
        capacity = capacity_per_s(candidate.profile, big_b, n)
        rate_per_ms = self.rate_per_s / 1000.0
        relax_ms = relaxation_time_ms(rate_per_ms, self.arrival_cv, capacity / 1000.0, big_b, 0.0)
        return horizon_ms / relax_ms if relax_ms > 0 else math.inf

    def verifiable(
        self, candidate: Candidate, big_b: int, n: int, max_requests: int = CONFIRM_MAX_REQUESTS
    ) -> bool:
        """Whether the longest confirmation this search may run spans enough heavy-traffic
        relaxation times to trust the plan's tail; near-critical plans that no affordable run
        can verify are treated as failing rather than confirmed on a flattering sample."""
        capacity = capacity_per_s(candidate.profile, big_b, n)
        if capacity <= self.rate_per_s:
            return False
        rate_per_ms = self.rate_per_s / 1000.0
        relax_ms = relaxation_time_ms(rate_per_ms, self.arrival_cv, capacity / 1000.0, big_b, 0.0)
        if self.workload.arrival_times_s is not None:
            horizon_ms = float(self.arrivals_ms[-1])
        else:
            horizon_ms = max_requests / rate_per_ms
        return horizon_ms >= VERIFY_RELAXATION_TIMES * relax_ms

    def _run(self, candidate: Candidate, big_b: int, delay: float, n: int) -> _Run:
        key = (candidate.instance.name, big_b, delay, n)
        run = self.cache.get(key)
        if run is None:
            run = _Run(False)
            if self.verifiable(candidate, big_b, n):
                chunks = _chunk_count(
                    self.relaxation_times(candidate, big_b, n, float(self.arrivals_ms[-1]))
                )
                quantile, counts = search_run(
                    self.arrivals_ms,
                    candidate.profile.table_ms(big_b),
                    big_b,
                    delay,
                    n,
                    self.warmup,
                    self.quantile_index,
                    self.slo.latency_ms,
                    chunks,
                )
                run = _Run(True, _slow_counts_within(counts, self.kept, self.slo), quantile)
            self.cache[key] = run
        return run

    def passes(self, candidate: Candidate, big_b: int, delay: float, n: int) -> bool:
        """Whether the plan meets the SLO on the shared sample with confidence."""
        return self._run(candidate, big_b, delay, n).passes

    def simulated_quantile(self, candidate: Candidate, big_b: int, delay: float, n: int) -> float:
        """The SLO percentile of latency on the shared sample (inf if unstable)."""
        return self._run(candidate, big_b, delay, n).quantile

    def fewest_replicas(self, option: _Option, ceiling: int) -> int | None:
        """Fewest replicas (<= ceiling) the simulation says meet the SLO; None if none do."""
        cand, big_b, delay = option.candidate, option.max_batch_size, option.max_queue_delay_ms
        low = option.floor_replicas
        if low > ceiling:
            return None
        start = min(max(option.predicted_replicas, low), ceiling)
        if self.passes(cand, big_b, delay, start):
            # Gallop down to a failing count, then bisect.
            high, step = start, 1
            probe = start - step
            while probe >= low and self.passes(cand, big_b, delay, probe):
                high = probe
                step *= 2
                probe = high - step
            fail = max(probe, low - 1)
        else:
            fail, step = start, 1
            probe = min(start + step, ceiling)
            while not self.passes(cand, big_b, delay, probe):
                if probe >= ceiling:
                    return None
                fail = probe
                step *= 2
                probe = min(fail + step, ceiling)
            high = probe
        while high - fail > 1:
            mid = (high + fail) // 2
            if self.passes(cand, big_b, delay, mid):
                high = mid
            else:
                fail = mid
        return high


def _batch_sizes(candidate: Candidate, limits: SearchLimits) -> list[int]:
    top = candidate.max_batch_size
    if limits.allowed_batch_sizes:
        return sorted({b for b in limits.allowed_batch_sizes if b <= top})
    # Powers of two and their 1.5x midpoints (3, 6, 12, ...): a batch size between two
    # powers is often what lets one replica fewer keep up.
    sizes = {1 << k for k in range(top.bit_length()) if (1 << k) <= top}
    sizes.update(3 << k for k in range(top.bit_length()) if (3 << k) <= top)
    sizes.update(b for b in candidate.profile.batch_sizes if b <= top)
    sizes.add(top)
    return sorted(sizes)


def _delays(slo: Slo, fastest_ms: float, limits: SearchLimits) -> list[float]:
    slack = max(slo.latency_ms - fastest_ms, 0.0)
    delays = {0.0} | {round(f * slack, 6) for f in DELAY_FRACTIONS}
    if limits.max_queue_delay_ms is not None:
        delays = {d for d in delays if d <= limits.max_queue_delay_ms}
        delays.add(limits.max_queue_delay_ms)
    return sorted(delays)


def _screen_grid(
    candidates: list[Candidate], search: _Search, limits: SearchLimits
) -> tuple[list[int], list[tuple[int, float]]]:
    """(candidate index, (B, T)) of every plan the screen scores."""
    kinds: list[int] = []
    pairs: list[tuple[int, float]] = []
    fill_per_request_ms = 1000.0 / search.rate_per_s
    for k, candidate in enumerate(candidates):
        delays = _delays(search.slo, candidate.profile.service_time_ms(1), limits)
        for b in _batch_sizes(candidate, limits):
            # Delays longer than B requests usually take to arrive rarely fire: keep the
            # shortest of them and drop the rest, which would score alike.
            fill_ms = (b - 1) * fill_per_request_ms
            kept = [d for d in delays if d < fill_ms]
            kept += [d for d in delays if d >= fill_ms][:1]
            for d in kept if b > 1 else [0.0]:
                kinds.append(k)
                pairs.append((b, d))
    return kinds, pairs


def _screen(
    candidates: list[Candidate], search: _Search, limits: SearchLimits
) -> tuple[list[_Option], int]:
    """Analytic fewest replicas for every (type, B, T), all types in one vectorised pass.

    Every plan is scored at its capacity floor first; the plans that fail there and could
    still be refined are tried on a coarse ladder above it (one call), then bisected inside
    the bracketing rung.
    """
    kinds, pairs = _screen_grid(candidates, search, limits)
    if not pairs:
        return [], 0
    tables = queueing.ServiceTables.build(
        [c.profile for c in candidates], [c.max_batch_size for c in candidates]
    )
    kind = np.array(kinds, dtype=np.int64)
    big_b = np.array([p[0] for p in pairs], dtype=np.int64)
    delay = np.array([p[1] for p in pairs], dtype=np.float64)
    service_full = tables.service_ms[kind, big_b]
    floor = np.floor(search.rate_per_s * service_full / (big_b * 1000.0)).astype(np.int64) + 1
    ceiling = limits.max_replicas
    count = len(pairs)

    def ok(rows: npt.NDArray[np.int64], n: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        tail = queueing.tail_probability(
            tables,
            kind[rows],
            search.rate_per_s,
            search.arrival_cv,
            big_b[rows],
            delay[rows],
            n,
            search.slo.latency_ms,
        )
        result: npt.NDArray[np.bool_] = tail <= 1.0 - search.quantile
        return result

    # Every plan at its capacity floor first: many pass there, which settles them, and the
    # cheapest of those bound what the others must beat to be refined at all.
    prices = np.array([c.instance.price_per_hour for c in candidates])[kind]
    everything = np.arange(count)
    valid = floor <= ceiling
    at_floor = np.zeros(count, dtype=bool)
    at_floor[valid] = ok(everything[valid], floor[valid])
    evaluated = int(valid.sum())
    bound = _refinement_bounds(kind, big_b, delay, floor * prices, at_floor, len(candidates))
    # Real-time plans are always settled: the real-time baseline is chosen among them.
    searched = valid & ~at_floor & ((big_b == 1) | ((floor + 1) * prices <= bound))
    rest = everything[searched]
    # Ladder of replica counts per remaining plan: a little above the floor, ..., the
    # ceiling, in one call; then bisection inside the bracketing rung.
    ladder = np.minimum(
        np.stack(
            [floor[rest] + 1, floor[rest] + 2, floor[rest] * 2 + 6, np.full(len(rest), ceiling)],
            axis=1,
        ),
        ceiling,
    )
    rungs = ladder.shape[1]
    passed = np.zeros((len(rest), rungs), dtype=bool)
    if len(rest):
        passed = ok(np.repeat(rest, rungs), ladder.ravel()).reshape(len(rest), rungs)
    evaluated += len(rest) * rungs
    feasible = at_floor.copy()
    feasible[rest] = passed.any(axis=1)
    first = np.argmax(passed, axis=1)
    inside = np.arange(len(rest))
    high = np.where(at_floor, floor, ceiling)
    low = np.where(at_floor, floor - 1, ceiling)
    high[rest] = np.where(feasible[rest], ladder[inside, first], ceiling)
    below = np.where(first > 0, ladder[inside, np.maximum(first - 1, 0)], floor[rest])
    low[rest] = np.where(feasible[rest], np.minimum(below, high[rest] - 1), high[rest])
    evaluated += bisect_fewest(ok, low, high)
    predicted = np.where(feasible, high, ceiling).tolist()
    sizes, delays, floors = big_b.tolist(), delay.tolist(), floor.tolist()
    kept = (at_floor | searched).tolist()
    options = [
        _Option(candidates[kinds[i]], sizes[i], delays[i], predicted[i], floors[i])
        for i in range(count)
        if kept[i]
    ]
    return options, evaluated


def bisect_fewest(
    ok: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    low: npt.NDArray[np.int64],
    high: npt.NDArray[np.int64],
    active: npt.NDArray[np.bool_] | None = None,
) -> int:
    """Per row, narrow a bracket (``low`` fails, ``high`` passes ``ok(rows, counts)``) to
    adjacent counts, all rows in one call per halving; ``high`` ends as the fewest passing
    count (assuming ``ok`` is monotone). Updates in place; returns the evaluations made."""
    evaluated = 0
    searching = high - low > 1 if active is None else active & (high - low > 1)
    while np.any(searching):
        rows = np.flatnonzero(searching)
        mid = (high[rows] + low[rows]) // 2
        good = ok(rows, mid)
        evaluated += len(rows)
        high[rows] = np.where(good, mid, high[rows])
        low[rows] = np.where(good, low[rows], mid)
        searching = high - low > 1 if active is None else active & (high - low > 1)
    return evaluated


def _refinement_bounds(
    kind: npt.NDArray[np.int64],
    big_b: npt.NDArray[np.int64],
    delay: npt.NDArray[np.float64],
    cost: npt.NDArray[np.float64],
    settled: npt.NDArray[np.bool_],
    types: int,
) -> npt.NDArray[np.float64]:
    """Per plan, a cost above which it cannot be refined, from the plans already settled.

    _choose_refinements keeps each type's best and the best of the (type, B, T > 0) groups up
    to a count; a group's best costs at most its cheapest settled plan, so the count-th
    cheapest settled group (and the type's cheapest settled plan) bound what a plan must
    cost, at most, to be kept. Plans above that are not refined, whatever their exact count.
    """
    rows = np.flatnonzero(settled)
    cutoff = max(REFINE_CANDIDATES, types)
    overall = math.inf
    if len(rows):
        # Each group's cheapest settled plan: sorted by group, then cost, the first of each.
        group = (kind[rows] * (int(big_b.max()) + 1) + big_b[rows]) * 2 + (delay[rows] > 0)
        order = np.lexsort((cost[rows], group))
        grouped = group[order]
        firsts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))
        ranked = np.sort(cost[rows][order][firsts])
        if len(ranked) >= cutoff:
            overall = float(ranked[cutoff - 1])
    per_type = np.full(types, math.inf)
    np.minimum.at(per_type, kind[settled], cost[settled])
    bound: npt.NDArray[np.float64] = np.maximum(overall, per_type[kind])
    return bound


def _choose_refinements(options: list[_Option]) -> list[_Option]:
    """Which screened (type, B, T) to settle by simulation, cheapest predicted first.

    Per (type, B): the best delay the screen found and the best zero delay (the predictor
    ranks delays least reliably, and T = 0 is the policy most often cheapest in simulation).
    At most REFINE_CANDIDATES of those, always including each instance type's best, so that
    no type is dismissed on the screen alone.
    """
    best: dict[tuple[str, int, bool], _Option] = {}
    for opt in options:
        key = (opt.candidate.instance.name, opt.max_batch_size, opt.max_queue_delay_ms > 0)
        current = best.get(key)
        if current is None or (opt.predicted_replicas, -opt.max_queue_delay_ms) < (
            current.predicted_replicas,
            -current.max_queue_delay_ms,
        ):
            best[key] = opt
    ranked = sorted(
        best.values(),
        key=lambda o: (o.predicted_replicas * o.price, o.max_batch_size, o.max_queue_delay_ms),
    )
    chosen: list[_Option] = []
    seen_types: set[str] = set()
    for opt in ranked:
        name = opt.candidate.instance.name
        if name not in seen_types:
            chosen.append(opt)
            seen_types.add(name)
    for opt in ranked:
        if len(chosen) >= max(REFINE_CANDIDATES, len(seen_types)):
            break
        if opt not in chosen:
            chosen.append(opt)
    return sorted(chosen, key=lambda o: o.predicted_replicas * o.price)


def _scaled_by_burstiness(base: int, arrival_cv: float, most: int) -> int:
    return int(min(base * max(1.0, arrival_cv * arrival_cv), most))


def _confirm_requests(
    search: _Search, candidate: Candidate, plan: Plan, max_requests: int = CONFIRM_MAX_REQUESTS
) -> int:
    """Enough requests for the confirmation to span many relaxation times (bounded)."""
    rate_per_ms = search.rate_per_s / 1000.0
    capacity_per_ms = capacity_per_s(candidate.profile, plan.max_batch_size, plan.replicas) / 1000.0
    relax_ms = relaxation_time_ms(
        rate_per_ms, search.arrival_cv, capacity_per_ms, plan.max_batch_size, 0.0
    )
    wanted = (
        VERIFY_RELAXATION_TIMES * relax_ms * rate_per_ms
        if math.isfinite(relax_ms)
        else max_requests
    )
    least = _scaled_by_burstiness(CONFIRM_MIN_REQUESTS, search.arrival_cv, CONFIRM_MAX_REQUESTS)
    return int(min(max(wanted, least), max_requests))


def assess(
    candidate: Candidate,
    plan: Plan,
    workload: Workload,
    slo: Slo,
    seed: int,
    num_requests: int,
    arrivals_ms: npt.NDArray[np.float64] | None = None,
) -> PlanAssessment:
    """Predict and simulate one plan (on ``arrivals_ms`` when given, else a sample drawn
    with ``seed``)."""
    return _assess_with_latencies(candidate, plan, workload, slo, seed, num_requests, arrivals_ms)[
        0
    ]


def _assess_with_latencies(
    candidate: Candidate,
    plan: Plan,
    workload: Workload,
    slo: Slo,
    seed: int,
    num_requests: int,
    arrivals_ms: npt.NDArray[np.float64] | None,
) -> tuple[PlanAssessment, npt.NDArray[np.float64]]:
    rate = _rate_of(workload)
    predicted = queueing.predict(candidate.profile, plan, _analytic_workload(workload), slo)
    simulated, latencies = simulate_with_latencies(
        candidate.profile, plan, workload, num_requests, seed, slo=slo, arrivals_ms=arrivals_ms
    )
    capacity = capacity_per_s(candidate.profile, plan.max_batch_size, plan.replicas)
    cost = plan.replicas * candidate.instance.price_per_hour
    observed = simulated.latency.slo_percentile_ms
    meets = simulated.stable and observed is not None and observed <= slo.latency_ms
    assessment = PlanAssessment(
        plan=plan,
        predicted=predicted,
        simulated=simulated,
        meets_slo=meets,
        capacity_per_s=capacity,
        utilisation=rate / capacity,
        cost_per_hour=cost,
        cost_per_million_requests=cost_per_million_requests(cost, rate),
        mean_batch_size=simulated.mean_batch_size,
    )
    return assessment, latencies


def _assess(
    search: _Search, candidate: Candidate, plan: Plan, max_requests: int = CONFIRM_MAX_REQUESTS
) -> tuple[PlanAssessment, npt.NDArray[np.float64]]:
    """Assess a plan on the search's shared confirmation sample; also its latencies."""
    count = _confirm_requests(search, candidate, plan, max_requests)
    return _assess_with_latencies(
        candidate,
        plan,
        search.workload,
        search.slo,
        (search.seed + 1) % SEED_MODULUS,
        count,
        search.confirm_arrivals(count),
    )


def _rate_of(workload: Workload) -> float:
    if workload.arrival_times_s is None:
        return workload.rate_per_s
    times = workload.arrival_times_s
    return float((len(times) - 1) / (times[-1] - times[0]))


def _analytic_workload(workload: Workload) -> Workload:
    """The (rate, CV) summary of a trace, which is what the analytic predictor reads."""
    if workload.arrival_times_s is None:
        return workload
    gaps = np.diff(np.asarray(workload.arrival_times_s, dtype=np.float64))
    return Workload(_rate_of(workload), float(gaps.std() / gaps.mean()))


def _frontier(
    search: _Search, by_name: dict[str, Candidate], anchor: Plan | None, ceiling: int
) -> list[FrontierPoint]:
    """Cost against simulated latency (shared sample) of every plan the search simulated,
    extended past the recommendation with a few more replicas, reduced to its Pareto set."""
    if anchor is not None:
        candidate = by_name[anchor.instance_type]
        for extra in range(1, FRONTIER_EXTRA_REPLICAS + 1):
            if anchor.replicas + extra <= ceiling:
                search.simulated_quantile(
                    candidate,
                    anchor.max_batch_size,
                    anchor.max_queue_delay_ms,
                    anchor.replicas + extra,
                )
    points = []
    for (name, big_b, delay, n), run in search.cache.items():
        if run.simulated:
            latency = search.simulated_quantile(by_name[name], big_b, delay, n)
            plan = Plan(name, big_b, delay, n)
            cost = n * by_name[name].instance.price_per_hour
            points.append(FrontierPoint(plan, cost, latency, latency <= search.slo.latency_ms))
    # The plan breaks exact ties, so the frontier does not depend on which of the two search
    # threads simulated a plan first.
    points.sort(
        key=lambda p: (
            p.cost_per_hour,
            p.latency_ms,
            p.plan.instance_type,
            p.plan.max_batch_size,
            p.plan.max_queue_delay_ms,
            p.plan.replicas,
        )
    )
    frontier: list[FrontierPoint] = []
    for point in points:
        if not frontier or point.latency_ms < frontier[-1].latency_ms:
            frontier.append(point)
    if len(frontier) > FRONTIER_MAX_POINTS:
        keep = np.linspace(0, len(frontier) - 1, FRONTIER_MAX_POINTS).round().astype(int)
        frontier = [frontier[i] for i in sorted(set(keep.tolist()))]
    return frontier


def _best_plan(
    search: _Search, options: list[_Option], ceiling: int
) -> tuple[Plan, Candidate] | None:
    """Cheapest (by simulation on the shared sample) among the refined options."""
    best: tuple[float, float, Plan, Candidate] | None = None
    for opt in options:
        limit = ceiling
        if best is not None:
            # Only a plan no dearer than the best so far matters: one simulation at the most
            # replicas that would still be no dearer tells whether this option can compete.
            limit = min(ceiling, math.floor(best[0] / opt.price + 1e-9))
            if limit < opt.floor_replicas or not search.passes(
                opt.candidate, opt.max_batch_size, opt.max_queue_delay_ms, limit
            ):
                continue
        n = search.fewest_replicas(opt, limit)
        if n is None:
            continue
        cost = n * opt.price
        latency = search.simulated_quantile(
            opt.candidate, opt.max_batch_size, opt.max_queue_delay_ms, n
        )
        plan = Plan(opt.candidate.instance.name, opt.max_batch_size, opt.max_queue_delay_ms, n)
        if best is None or (cost, latency) < (best[0], best[1]):
            best = (cost, latency, plan, opt.candidate)
    return None if best is None else (best[2], best[3])


_Confirmation = tuple[PlanAssessment, PlanAssessment | None]

# The real-time baseline's searches, kept across calls: starting a thread per request cost
# about a third of a millisecond. Sized for a few concurrent requests; more queue briefly.
_BASELINE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="servewise-baseline")


def _search_both(
    search: _Search,
    options: list[_Option],
    realtime_options: list[_Option],
    limits: SearchLimits,
    overlap: bool = True,
) -> tuple[_Confirmation | None, _Confirmation | None]:
    """Find and confirm the recommendation and the real-time baseline, side by side.

    The two searches share nothing but the cache of simulations on the common sample (equal
    keys give equal runs, whichever thread computes them), and a near-capacity real-time
    baseline can need a confirmation of several hundred thousand requests; the kernel and
    numpy release the GIL, so on two cores the baseline's whole search overlaps the
    recommendation's.
    """
    ceiling = limits.max_replicas

    def recommendation() -> _Confirmation | None:
        chosen = _best_plan(search, _choose_refinements(options), ceiling)
        if chosen is None:
            return None
        plan, candidate = _polish_delay(search, chosen[0], chosen[1], limits)
        confirmed = _confirm(search, candidate, plan, ceiling)
        if not confirmed[0].meets_slo:
            return confirmed
        return _near_critical_cheaper(search, options, confirmed[0].cost_per_hour) or confirmed

    def baseline() -> _Confirmation | None:
        ranked = sorted(realtime_options, key=lambda o: o.predicted_replicas * o.price)
        realtime = _best_plan(search, ranked, ceiling)
        return None if realtime is None else _confirm(search, realtime[1], realtime[0], ceiling)

    if not realtime_options:
        return recommendation(), None
    if not overlap:
        return recommendation(), baseline()
    # The baseline runs under the caller's context, so a cancelled call stops it too.
    pending = _BASELINE_POOL.submit(cancel.propagating(baseline))
    try:
        chosen = recommendation()
    except BaseException:
        # No work left running on behalf of a failed call (it shares the search's cache).
        if not pending.cancel():
            wait([pending])
        raise
    return chosen, pending.result()


def _near_critical_cheaper(
    search: _Search, options: list[_Option], cost_per_hour: float
) -> _Confirmation | None:
    """A plan cheaper than the confirmed one that the search had to pass over because no
    CONFIRM_MAX_REQUESTS run spans enough relaxation times to verify it, verified on a longer
    run (STRETCH_MAX_REQUESTS) — the same standard, an affordable price for a replica saved.

    Near capacity the shared sample says nothing; of the plans the predictor expects to meet
    the SLO, the cheapest are tried first, then those with the most capacity headroom (the
    most robust to the rate growing, and the shortest to verify), then the shortest delay
    (with the queue rarely short of a batch, a delay only holds back the odd partial one).
    Not the lowest predicted latency: near capacity the predictor errs low, by tens of
    percent for some delays, and the minimum of its estimates is where it errs most. At most
    STRETCH_CANDIDATES runs. None when there is no such plan or none is confirmed.
    """
    if search.workload.arrival_times_s is not None:
        return None  # a trace is as long as it is: nothing longer to run
    picks: list[tuple[float, float, float, Plan, Candidate]] = []
    # Whether a (type, B) qualifies does not depend on the delay: decided once per shape.
    qualifies: dict[tuple[str, int], bool] = {}
    for opt in options:
        replicas = math.ceil(cost_per_hour / opt.price - 1e-9) - 1
        big_b = opt.max_batch_size
        if replicas < opt.floor_replicas:
            continue
        shape = (opt.candidate.instance.name, big_b)
        if shape not in qualifies:
            qualifies[shape] = not search.verifiable(
                opt.candidate, big_b, replicas
            ) and search.verifiable(opt.candidate, big_b, replicas, STRETCH_MAX_REQUESTS)
        if not qualifies[shape]:
            continue
        plan = Plan(opt.candidate.instance.name, big_b, opt.max_queue_delay_ms, replicas)
        predicted = queueing.predict(
            opt.candidate.profile, plan, _analytic_workload(search.workload), search.slo
        ).slo_percentile_ms
        if predicted is not None and predicted * STRETCH_PREDICTED_MARGIN <= search.slo.latency_ms:
            load = search.rate_per_s / capacity_per_s(opt.candidate.profile, big_b, replicas)
            cost = replicas * opt.price
            picks.append((cost, load, opt.max_queue_delay_ms, plan, opt.candidate))
    picks.sort(key=lambda p: (p[0], p[1], p[2]))
    # One try per (type, B): its delays differ little this close to capacity.
    tried: set[tuple[str, int]] = set()
    distinct = []
    for pick in picks:
        shape = (pick[3].instance_type, pick[3].max_batch_size)
        if shape not in tried:
            tried.add(shape)
            distinct.append(pick)
    for _, _, _, plan, candidate in distinct[:STRETCH_CANDIDATES]:
        assessment, latencies = _assess(search, candidate, plan, STRETCH_MAX_REQUESTS)
        if _confirmed(search, candidate, assessment, latencies):
            return assessment, None
    return None


def _confirmed(
    search: _Search,
    candidate: Candidate,
    assessment: PlanAssessment,
    latencies: npt.NDArray[np.float64],
) -> bool:
    """The assessment meets the SLO, and not by the luck of its sample: the confirmation run's
    latencies pass the same batch-means bound as the search (near capacity with bursty
    arrivals, the p99 of even a 200k-request run varies by +-10% between seeds)."""
    if not assessment.meets_slo or assessment.simulated is None:
        return False
    plan = assessment.plan
    horizon_ms = assessment.simulated.simulated_duration_s * 1000.0
    return _meets_with_confidence(
        latencies,
        search.slo,
        search.relaxation_times(candidate, plan.max_batch_size, plan.replicas, horizon_ms),
    )


def _polish_delay(
    search: _Search, plan: Plan, candidate: Candidate, limits: SearchLimits
) -> tuple[Plan, Candidate]:
    """Try longer delays for the chosen (type, B) at one replica fewer, while that works.

    The screen's delay grid is coarse and the predictor ranks delays least reliably; a
    longer wait fills batches better and sometimes lets one replica fewer keep the SLO.
    """
    slack = search.slo.latency_ms - candidate.profile.service_time_ms(1)
    cap = limits.max_queue_delay_ms if limits.max_queue_delay_ms is not None else slack
    floor = (
        math.floor(
            search.rate_per_s
            * candidate.profile.service_time_ms(plan.max_batch_size)
            / (plan.max_batch_size * 1000.0)
        )
        + 1
    )
    while plan.max_batch_size > 1 and plan.replicas - 1 >= floor:
        base = plan.max_queue_delay_ms
        trials = sorted(
            {
                round(d, 6)
                for d in (base * 1.5, base * 2.0, slack * POLISH_SLACK_FRACTION)
                if base < d <= min(cap, slack)
            }
        )
        better = next(
            (
                d
                for d in trials
                if search.passes(candidate, plan.max_batch_size, d, plan.replicas - 1)
            ),
            None,
        )
        if better is None:
            break
        plan = Plan(plan.instance_type, plan.max_batch_size, better, plan.replicas - 1)
    return plan, candidate


def _confirm(
    search: _Search, candidate: Candidate, plan: Plan, ceiling: int
) -> tuple[PlanAssessment, PlanAssessment | None]:
    """Simulate on a fresh sample; add replicas until the plan passes (or the ceiling).

    Returns the final assessment and the last one that failed, if any (it explains why the
    plan has the replicas it has).
    """
    assessment, latencies = _assess(search, candidate, plan)
    failed: PlanAssessment | None = None
    attempts = 1
    while (
        not _confirmed(search, candidate, assessment, latencies)
        and plan.replicas < ceiling
        and attempts < MAX_CONFIRM_ATTEMPTS
    ):
        failed = assessment
        plan = Plan(
            plan.instance_type, plan.max_batch_size, plan.max_queue_delay_ms, plan.replicas + 1
        )
        assessment, latencies = _assess(search, candidate, plan)
        attempts += 1
    return assessment, failed


def _better(a: PlanAssessment, b: PlanAssessment | None, slo: Slo) -> bool:
    """Cheaper, or as cheap with a lower simulated latency at the SLO percentile."""
    if b is None:
        return True
    if a.cost_per_hour != b.cost_per_hour:
        return a.cost_per_hour < b.cost_per_hour
    return _observed(a) < _observed(b)


def _observed(assessment: PlanAssessment) -> float:
    sim = assessment.simulated
    value = sim.latency.slo_percentile_ms if sim is not None else None
    return math.inf if value is None else value


def _saving(
    reference: PlanAssessment | None, chosen: PlanAssessment | None
) -> tuple[float | None, float | None]:
    if reference is None or chosen is None:
        return None, None
    saving = reference.cost_per_hour - chosen.cost_per_hour
    return saving, saving / reference.cost_per_hour


def optimize(
    candidates: list[Candidate],
    workload: Workload,
    slo: Slo,
    limits: SearchLimits = SearchLimits(),
    current_plan: Plan | None = None,
    seed: int = 0,
    realtime_baseline: bool = True,
    overlap_baseline: bool = True,
) -> OptimizeResult:
    """Cheapest (instance type, B, T, N) whose SLO percentile meets the bound.

    Parameters
    ----------
    candidates:
        Instance types with the model's profile on each (validated, non-empty).
    workload, slo, limits:
        What to serve, the latency objective, and bounds on the search.
    current_plan:
        The team's plan today; assessed and compared against when given.
    seed:
        Seed of the search sample (the confirmation uses seed + 1); 0 means a fixed default.
    realtime_baseline:
        Whether to find and confirm the real-time baseline (B = 1, T = 0) as well; callers
        that do not report it skip its confirmation, often the longest simulation of all.
    overlap_baseline:
        Search for the real-time baseline in a second thread, beside the recommendation (a
        lone call finishes sooner on two cores), or after it in this thread (the same answer;
        for a caller whose cores are already busy with other calls, where a second thread
        only adds hand-offs).

    Returns
    -------
    OptimizeResult
        The plan, its predicted and simulated latency, cost, the real-time baseline, the
        frontier and the binding constraint. A valid request no plan satisfies is answered
        with ``feasible=False`` and the closest plan, not with an exception.
    """
    seed = seed or DEFAULT_SEED
    search = _Search(workload, slo, limits, seed)
    by_name = {c.instance.name: c for c in candidates}
    ceiling = limits.max_replicas
    notes: list[str] = []
    if workload.arrival_times_s is not None:
        notes.append(
            f"trace of {len(search.arrivals_ms)} arrivals at {search.rate_per_s:.4g}/s "
            f"(CV {search.arrival_cv:.3g}); search and confirmation both replay it"
        )

    options, considered = _screen(candidates, search, limits)
    realtime_options = [o for o in options if o.max_batch_size == 1] if realtime_baseline else []

    recommended: PlanAssessment | None = None
    near_miss: PlanAssessment | None = None
    realtime_assessment: PlanAssessment | None = None
    realtime_near_miss: PlanAssessment | None = None
    confirmations = _search_both(search, options, realtime_options, limits, overlap_baseline)
    if confirmations[0] is not None:
        recommended, near_miss = confirmations[0]
    if confirmations[1] is not None:
        realtime_assessment, realtime_near_miss = confirmations[1]
    realtime_note = _realtime_note(realtime_assessment, candidates, search, ceiling)

    feasible = recommended is not None and recommended.meets_slo
    if (
        realtime_assessment is not None
        and realtime_assessment.meets_slo
        and (not feasible or _better(realtime_assessment, recommended, slo))
    ):
        recommended, near_miss, feasible = realtime_assessment, realtime_near_miss, True

    if feasible and recommended is not None:
        binding, reason = _binding_feasible(
            search, by_name[recommended.plan.instance_type], recommended, near_miss
        )
    else:
        if recommended is None:
            recommended = _closest(search, candidates, ceiling)
        binding, reason = _binding_infeasible(search, candidates, ceiling)

    current: PlanAssessment | None = None
    if current_plan is not None:
        current = _assess(search, by_name[current_plan.instance_type], current_plan)[0]
    baseline = (
        realtime_assessment if realtime_assessment and realtime_assessment.meets_slo else None
    )
    chosen_for_saving = recommended if feasible else None
    saving_rt, saving_rt_fraction = _saving(baseline, chosen_for_saving)
    saving_cur, saving_cur_fraction = _saving(current, chosen_for_saving)
    notes.append(
        f"screened {considered} plans analytically, simulated {len(search.cache)} on a shared "
        f"sample of {len(search.arrivals_ms)} requests"
    )
    return OptimizeResult(
        feasible=feasible,
        recommended=recommended,
        binding=binding,
        binding_reason=reason,
        realtime_baseline=baseline,
        realtime_baseline_note=realtime_note if baseline is None else "",
        saving_vs_realtime_per_hour=saving_rt,
        saving_vs_realtime_fraction=saving_rt_fraction,
        current=current,
        saving_vs_current_per_hour=saving_cur,
        saving_vs_current_fraction=saving_cur_fraction,
        frontier=_frontier(
            search, by_name, recommended.plan if recommended is not None else None, ceiling
        ),
        notes=notes,
        plans_considered=considered,
    )


def _realtime_note(
    baseline: PlanAssessment | None, candidates: list[Candidate], search: _Search, ceiling: int
) -> str:
    """Why the real-time baseline is missing or unreliable; empty when it is fine."""
    if baseline is not None:
        return (
            "" if baseline.meets_slo else "the best real-time plan failed its confirming simulation"
        )
    if all(1 not in _batch_sizes(c, search.limits) for c in candidates):
        return "batch size 1 is excluded by limits.allowed_batch_sizes"
    return _realtime_absent_reason(candidates, search, ceiling)


def _realtime_absent_reason(candidates: list[Candidate], search: _Search, ceiling: int) -> str:
    fastest = min(candidates, key=lambda c: c.profile.service_time_ms(1))
    single = fastest.profile.service_time_ms(1)
    if single > search.slo.latency_ms:
        return (
            f"a single request takes {single:g} ms on {fastest.instance.name}, above the "
            f"{search.slo.latency_ms:g} ms SLO"
        )
    return (
        f"no real-time plan meets the SLO within {ceiling} replicas "
        f"(rate {search.rate_per_s:.4g}/s)"
    )


def _binding_feasible(
    search: _Search,
    candidate: Candidate,
    chosen: PlanAssessment,
    near_miss: PlanAssessment | None,
) -> tuple[Binding, str]:
    plan = chosen.plan
    if plan.replicas == 1:
        return Binding.MINIMUM_REPLICAS, (
            f"one replica of {plan.instance_type} already meets the SLO "
            f"({_latency_text(chosen, search.slo)}); nothing cheaper exists on it"
        )
    fewer = plan.replicas - 1
    top = candidate.max_batch_size
    best_capacity = max(
        capacity_per_s(candidate.profile, b, fewer) for b in _batch_sizes(candidate, search.limits)
    )
    if best_capacity <= search.rate_per_s:
        memory_capped = (
            candidate.instance.max_batch_size is not None and top < candidate.profile.max_batch_size
        )
        kind = Binding.MEMORY if memory_capped else Binding.THROUGHPUT
        cap_text = f" (memory caps the batch at {top})" if memory_capped else ""
        return kind, (
            f"{_replicas_text(fewer)} serve at most {best_capacity:.4g} req/s{cap_text}, "
            f"below the rate of {search.rate_per_s:.4g} req/s"
        )
    if near_miss is not None and near_miss.plan.replicas == fewer:
        return Binding.LATENCY_SLO, (
            f"with {_replicas_text(fewer)} the confirming simulation measured "
            f"{_latency_text(near_miss, search.slo)}; {plan.replicas} give "
            f"{_latency_text(chosen, search.slo)}"
        )
    near = search.simulated_quantile(candidate, plan.max_batch_size, plan.max_queue_delay_ms, fewer)
    near_text = f"{near:.4g} ms" if math.isfinite(near) else "unbounded"
    return Binding.LATENCY_SLO, (
        f"with {_replicas_text(fewer)} the p{search.slo.percentile:g} latency would be {near_text} "
        f"(> {search.slo.latency_ms:g} ms, upper confidence bound on the search sample); "
        f"{plan.replicas} give {_latency_text(chosen, search.slo)}"
    )


def _replicas_text(count: int) -> str:
    return "1 replica" if count == 1 else f"{count} replicas"


def _latency_text(assessment: PlanAssessment, slo: Slo) -> str:
    sim = assessment.simulated
    value = sim.latency.slo_percentile_ms if sim is not None else None
    if value is None:
        value = assessment.predicted.slo_percentile_ms or math.inf
    return f"p{slo.percentile:g} {value:.4g} ms vs {slo.latency_ms:g} ms"


def _closest(search: _Search, candidates: list[Candidate], ceiling: int) -> PlanAssessment | None:
    """The closest a plan gets to the SLO, at the lowest cost that gets that close.

    The lowest latency on the shared sample is found at the replica ceiling (T = 0, every
    batch size); the answer is the cheapest replica count of that (type, B) whose latency is
    within CLOSEST_TOLERANCE of it, so that a hopeless SLO is not answered with the most
    expensive deployment the limits allow.
    """
    best: tuple[float, Candidate, int] | None = None
    for candidate in candidates:
        for big_b in _batch_sizes(candidate, search.limits):
            if capacity_per_s(candidate.profile, big_b, ceiling) <= search.rate_per_s:
                continue
            latency = search.simulated_quantile(candidate, big_b, 0.0, ceiling)
            if best is None or latency < best[0]:
                best = (latency, candidate, big_b)
    if best is None:
        # Nothing within the limits keeps up: the closest is the most capacity per dollar at
        # the ceiling, answered with its (unstable) simulation so the shortfall is visible.
        candidate, big_b = max(
            ((c, b) for c in candidates for b in _batch_sizes(c, search.limits)),
            key=lambda cb: (
                capacity_per_s(cb[0].profile, cb[1], ceiling) / cb[0].instance.price_per_hour
            ),
        )
        return _assess(search, candidate, Plan(candidate.instance.name, big_b, 0.0, ceiling))[0]
    lowest, candidate, big_b = best
    target = lowest * (1.0 + CLOSEST_TOLERANCE)
    fail = math.floor(
        search.rate_per_s * candidate.profile.service_time_ms(big_b) / (big_b * 1000.0)
    )  # at or below capacity: never close
    high = ceiling
    while high - fail > 1:
        mid = (high + fail) // 2
        if search.simulated_quantile(candidate, big_b, 0.0, mid) <= target:
            high = mid
        else:
            fail = mid
    return _assess(search, candidate, Plan(candidate.instance.name, big_b, 0.0, high))[0]


def _binding_infeasible(
    search: _Search, candidates: list[Candidate], ceiling: int
) -> tuple[Binding, str]:
    fastest = min(c.profile.service_time_ms(1) for c in candidates)
    if fastest > search.slo.latency_ms:
        return Binding.SERVICE_TIME, (
            f"the fastest single-request service time is {fastest:g} ms, above the "
            f"{search.slo.latency_ms:g} ms SLO on every instance type"
        )
    most = max(
        capacity_per_s(c.profile, b, ceiling)
        for c in candidates
        for b in _batch_sizes(c, search.limits)
    )
    if most <= search.rate_per_s:
        return Binding.MAX_REPLICAS, (
            f"{_replicas_text(ceiling)} serve at most {most:.4g} req/s, below the rate of "
            f"{search.rate_per_s:.4g} req/s"
        )
    return Binding.MAX_REPLICAS, (
        f"no plan within {ceiling} replicas brings the p{search.slo.percentile:g} latency "
        f"under {search.slo.latency_ms:g} ms"
    )
