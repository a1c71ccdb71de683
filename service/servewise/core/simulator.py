"""Discrete-event simulator of the serving model (ARCHITECTURE.md section 2).

N identical replicas share one FIFO queue. An idle replica facing a non-empty queue dispatches
the B oldest requests at once when B are queued; otherwise it waits until B are queued or the
oldest has waited T since its arrival, and then dispatches everything queued (at most B).

Batches leave in FIFO order, so every batch is a consecutive range of arrival indices. The
simulator therefore steps batch by batch: the earliest-free replica (a heap) takes the next
batch, whose dispatch time and size follow from the arrival times by bisection. The loop costs
O(batches * log n) in plain Python; latency statistics are then computed with numpy.
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from servewise.core import cancel
from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile

try:
    from servewise.core import _batchsim  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only without a compiler at install time
    _batchsim = None

DEFAULT_NUM_REQUESTS = 200_000
DEFAULT_SEED = 20261128

# Requests at the start of a run see an empty system, which flatters the tail; they are
# excluded from the statistics.
WARMUP_FRACTION = 0.05

# A run must span this many heavy-traffic relaxation times (sigma^2 / delta^2) for its tail
# to be trusted; shorter runs of near-critical queues report tails that are too good.
MIN_RELAXATION_TIMES = 20.0

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

# Below this inter-arrival CV arrivals are treated as evenly spaced.
MIN_ARRIVAL_CV = 1e-6

SEED_MODULUS = 2**64


class ServiceDistribution(Enum):
    DETERMINISTIC = "deterministic"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class LatencySummary:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    slo_percentile_ms: float | None = None


@dataclass(frozen=True)
class SimulationResult:
    latency: LatencySummary
    throughput_per_s: float
    mean_batch_size: float
    utilisation: float
    max_queue_length: int
    stable: bool
    stability_reason: str
    requests_simulated: int
    simulated_duration_s: float
    seed: int


@dataclass(frozen=True)
class BatchTrace:
    """Raw output of one run: per-batch dispatch/completion times and sizes (ms)."""

    arrivals_ms: npt.NDArray[np.float64]
    dispatch_ms: npt.NDArray[np.float64]
    completion_ms: npt.NDArray[np.float64]
    sizes: npt.NDArray[np.int64]
    busy_ms: float
    # Most requests ever waiting (queued, not in service), just before some dispatch.
    max_queue_length: int

    def latencies_ms(self, skip: int = 0) -> npt.NDArray[np.float64]:
        """Latency of every request from the ``skip``-th on, in arrival order."""
        if _batchsim is None:
            result: npt.NDArray[np.float64] = (
                np.repeat(self.completion_ms, self.sizes) - self.arrivals_ms
            )[skip:]
            return result
        out = np.empty(len(self.arrivals_ms) - skip)
        _batchsim.request_latencies(
            np.ascontiguousarray(self.arrivals_ms, dtype=np.float64),
            np.ascontiguousarray(self.completion_ms, dtype=np.float64),
            np.ascontiguousarray(self.sizes, dtype=np.int64),
            skip,
            out,
        )
        return out


def generate_arrivals_ms(
    workload: Workload, num_requests: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Arrival times in ms: the workload's timestamps (shifted to start at 0), or a renewal
    process with gamma inter-arrival times of mean 1/rate and the workload's CV."""
    if workload.arrival_times_s is not None:
        times = np.asarray(workload.arrival_times_s, dtype=np.float64)
        result: npt.NDArray[np.float64] = (times - times[0]) * 1000.0
        return result
    mean_gap_ms = 1000.0 / workload.rate_per_s
    cv = workload.arrival_cv
    if cv < MIN_ARRIVAL_CV:  # evenly spaced; a gamma of shape 1/cv^2 would overflow
        gaps = np.full(num_requests, mean_gap_ms)
    elif cv == 1.0:
        gaps = rng.exponential(mean_gap_ms, num_requests)
    else:
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, mean_gap_ms / shape, num_requests)
    return np.cumsum(gaps)


# Rate-free renewal samples are drawn in blocks of this many gaps, each block's cumulative sum
# offset by the previous block's end, so a sample is the same however far it was extended.
ARRIVAL_BLOCK = 1 << 16
# Most unit-rate arrivals kept across calls (8 bytes each): about 128 MB. SelectMode's bench
# cycles through 40 scenarios whose samples total 10.5M floats; at 8M, LRU evicted each large
# sample before its reuse and the redraws set SelectMode's p99.
UNIT_SAMPLE_CACHE_FLOATS = 16_000_000


class _UnitSamples:
    """Unit-mean renewal arrival samples, per (CV, seed), shared by every caller.

    A gamma renewal process of rate r is the unit-rate process of the same CV with time scaled
    by 1/r, so one sample serves every rate; drawing the gaps (gamma draws of shape 1/CV^2 are
    slow) dominates short optimisations, which would otherwise draw it afresh on every call.
    """

    def __init__(self, max_floats: int) -> None:
        self.max_floats = max_floats
        self._lock = threading.Lock()  # the table; never held while drawing
        self._samples: OrderedDict[
            tuple[float, int], tuple[np.random.Generator, npt.NDArray[np.float64]]
        ] = OrderedDict()
        # One lock per key while its sample is drawn, so that threads wanting other samples
        # (SelectMode's pools, the break-even search, the optimizer's baseline) do not wait
        # for a long draw (~60 ms for 2M gamma gaps of shape 0.13).
        self._drawing: dict[tuple[float, int], threading.Lock] = {}

    def get(self, arrival_cv: float, seed: int, count: int) -> npt.NDArray[np.float64]:
        key = (arrival_cv, seed)
        with self._lock:
            entry = self._samples.get(key)
            if entry is not None and len(entry[1]) >= count:
                self._samples.move_to_end(key)
                return entry[1][:count]
            drawing = self._drawing.setdefault(key, threading.Lock())
        with drawing:
            with self._lock:
                entry = self._samples.get(key)  # another thread may have drawn it meanwhile
            if entry is None:
                entry = (np.random.default_rng(seed), np.empty(0))
            rng, drawn = entry
            if len(drawn) < count:
                blocks = [drawn]
                end = float(drawn[-1]) if len(drawn) else 0.0
                have = len(drawn)
                while have < count:
                    block = np.cumsum(_unit_gaps(arrival_cv, ARRIVAL_BLOCK, rng)) + end
                    end = float(block[-1])
                    blocks.append(block)
                    have += ARRIVAL_BLOCK
                drawn = np.concatenate(blocks)
                drawn.flags.writeable = False
            with self._lock:
                self._samples[key] = (rng, drawn)
                self._samples.move_to_end(key)
                total = sum(len(d) for _, d in self._samples.values())
                while total > self.max_floats and len(self._samples) > 1:
                    gone, (_, evicted) = self._samples.popitem(last=False)
                    self._drawing.pop(gone, None)
                    total -= len(evicted)
            return drawn[:count]


def _unit_gaps(arrival_cv: float, count: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    if arrival_cv < MIN_ARRIVAL_CV:
        return np.ones(count)
    if arrival_cv == 1.0:
        return rng.standard_exponential(count)
    shape = 1.0 / (arrival_cv * arrival_cv)
    gaps: npt.NDArray[np.float64] = rng.standard_gamma(shape, count) / shape
    return gaps


_UNIT_SAMPLES = _UnitSamples(UNIT_SAMPLE_CACHE_FLOATS)


def renewal_arrivals_ms(
    rate_per_s: float, arrival_cv: float, num_requests: int, seed: int
) -> npt.NDArray[np.float64]:
    """The first ``num_requests`` arrivals (ms) of the gamma renewal process of this rate and
    CV drawn with ``seed``; deterministic, and a prefix of any longer sample of the same seed.

    Drawn at unit rate once per (CV, seed) and kept (bounded), so repeated optimisations of
    similar workloads skip the draw.
    """
    unit = _UNIT_SAMPLES.get(float(arrival_cv), int(seed), num_requests)
    result: npt.NDArray[np.float64] = unit * (1000.0 / rate_per_s)
    return result


def run_batches(
    arrivals_ms: npt.NDArray[np.float64],
    service_table_ms: npt.NDArray[np.float64],
    max_batch_size: int,
    max_queue_delay_ms: float,
    replicas: int,
    service_scale: npt.NDArray[np.float64] | None = None,
) -> BatchTrace:
    """Run the dispatch policy over sorted arrivals (C kernel when built, else Python).

    ``service_table_ms[b]`` is s(b); ``service_scale`` (one factor per batch, optional) makes
    service random (for example unit exponentials for M/M/c checks).
    """
    cancel.check()  # every simulation (optimizer, modes, resources) starts here
    if _batchsim is None:
        return run_batches_python(
            arrivals_ms,
            service_table_ms,
            max_batch_size,
            max_queue_delay_ms,
            replicas,
            service_scale,
        )
    arrivals = np.ascontiguousarray(arrivals_ms, dtype=np.float64)
    n = len(arrivals)
    dispatch = np.empty(n, dtype=np.float64)
    completion = np.empty(n, dtype=np.float64)
    sizes = np.empty(n, dtype=np.int64)
    scale = None if service_scale is None else np.ascontiguousarray(service_scale, np.float64)
    count, busy, max_queue = _batchsim.run_batches(
        arrivals,
        np.ascontiguousarray(service_table_ms, dtype=np.float64),
        max_batch_size,
        float(max_queue_delay_ms),
        replicas,
        scale,
        dispatch,
        completion,
        sizes,
    )
    return BatchTrace(
        arrivals, dispatch[:count], completion[:count], sizes[:count], busy, max_queue
    )


@dataclass(frozen=True)
class RunStats:
    """What a run reports besides its latencies (see :func:`run_latencies`)."""

    batches: int
    busy_ms: float
    # Most requests ever waiting (queued, not in service), just before some dispatch.
    max_queue_length: int
    last_completion_ms: float


def run_latencies(
    arrivals_ms: npt.NDArray[np.float64],
    service_table_ms: npt.NDArray[np.float64],
    max_batch_size: int,
    max_queue_delay_ms: float,
    replicas: int,
    skip: int = 0,
    service_scale: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.float64], RunStats]:
    """The latencies of the requests from the ``skip``-th on (arrival order) and the run's
    totals, equal to :func:`run_batches` then :meth:`BatchTrace.latencies_ms`.

    In the C kernel one pass writes each latency directly: the per-batch arrays are never
    built, which is most of the memory traffic of a million-request confirmation.
    """
    if _batchsim is None or service_scale is not None:
        trace = run_batches(
            arrivals_ms,
            service_table_ms,
            max_batch_size,
            max_queue_delay_ms,
            replicas,
            service_scale,
        )
        last = float(trace.completion_ms.max()) if len(trace.completion_ms) else -math.inf
        stats = RunStats(len(trace.sizes), trace.busy_ms, trace.max_queue_length, last)
        return trace.latencies_ms(skip), stats
    cancel.check()  # as in run_batches
    arrivals = np.ascontiguousarray(arrivals_ms, dtype=np.float64)
    out = np.empty(len(arrivals) - skip)
    batches, busy, max_queue, last = _batchsim.run_latencies(
        arrivals,
        np.ascontiguousarray(service_table_ms, dtype=np.float64),
        max_batch_size,
        float(max_queue_delay_ms),
        replicas,
        skip,
        out,
    )
    return out, RunStats(batches, busy, max_queue, last)


def search_run(
    arrivals_ms: npt.NDArray[np.float64],
    service_table_ms: npt.NDArray[np.float64],
    max_batch_size: int,
    max_queue_delay_ms: float,
    replicas: int,
    skip: int,
    rank: int,
    bound_ms: float,
    chunks: int,
) -> tuple[float, list[int]]:
    """A run reduced to what a search reads: the latency of ``rank`` among the requests from
    the ``skip``-th on, and :func:`slow_counts` of those requests over ``bound_ms``.

    In the C kernel the latencies never leave a scratch buffer (selected in place): per plan
    of a search, the numpy passes over them cost as much as the simulation.
    """
    if _batchsim is None:
        latencies, _ = run_latencies(
            arrivals_ms, service_table_ms, max_batch_size, max_queue_delay_ms, replicas, skip
        )
        return float(select_ranks(latencies, [rank])[0]), slow_counts(latencies, bound_ms, chunks)
    cancel.check()  # as in run_batches
    counts = np.zeros(chunks, dtype=np.int64)
    value = _batchsim.search_run(
        np.ascontiguousarray(arrivals_ms, dtype=np.float64),
        np.ascontiguousarray(service_table_ms, dtype=np.float64),
        max_batch_size,
        float(max_queue_delay_ms),
        replicas,
        skip,
        rank,
        float(bound_ms),
        chunks,
        counts,
    )
    return float(value), counts.tolist()


def slow_counts(latencies_ms: npt.NDArray[np.float64], bound_ms: float, chunks: int) -> list[int]:
    """Latencies over ``bound_ms`` in each of ``chunks`` equal consecutive chunks (any
    remainder past chunks * (n // chunks) uncounted); with fewer latencies than chunks, the
    total in the first and zeros after it."""
    # Positions of the slow requests (a few percent at most near a passing plan): counting
    # them per chunk is far cheaper than averaging a boolean array chunk by chunk.
    slower = np.flatnonzero(latencies_ms > bound_ms)
    per_chunk = len(latencies_ms) // chunks
    if per_chunk == 0:
        return [len(slower)] + [0] * (chunks - 1)
    counts: list[int] = np.bincount(slower // per_chunk, minlength=chunks + 1)[:chunks].tolist()
    return counts


def run_batches_python(
    arrivals_ms: npt.NDArray[np.float64],
    service_table_ms: npt.NDArray[np.float64],
    max_batch_size: int,
    max_queue_delay_ms: float,
    replicas: int,
    service_scale: npt.NDArray[np.float64] | None = None,
) -> BatchTrace:
    """Reference implementation of the kernel in plain Python (same semantics)."""
    a: list[float] = arrivals_ms.tolist()
    n = len(a)
    table: list[float] = service_table_ms.tolist()
    scale: list[float] | None = None if service_scale is None else service_scale.tolist()
    big_b = max_batch_size
    delay = max_queue_delay_ms
    free = [0.0] * replicas
    dispatches: list[float] = []
    completions: list[float] = []
    sizes: list[int] = []
    busy = 0.0
    bisect_right = bisect.bisect_right
    heapreplace = heapq.heapreplace
    i = 0
    k = 0
    while i < n:
        first = a[i]
        start = free[0]
        if first > start:  # noqa: PLR1730 - max() costs a call in the hot loop
            start = first
        last = i + big_b - 1
        if last < n and a[last] <= start:
            # B requests are already queued when the replica is free.
            dispatch = start
            size = big_b
        else:
            deadline = first + delay
            if last < n and a[last] <= deadline:
                # The queue fills to B before the oldest request's delay runs out.
                dispatch = a[last]
                size = big_b
            else:
                dispatch = deadline if deadline > start else start
                size = bisect_right(a, dispatch, i, last if last < n else n) - i
        service = table[size]
        if scale is not None:
            service *= scale[k]
        done = dispatch + service
        heapreplace(free, done)
        busy += service
        dispatches.append(dispatch)
        completions.append(done)
        sizes.append(size)
        i += size
        k += 1
    dispatch_ms = np.asarray(dispatches)
    sizes_array = np.asarray(sizes, dtype=np.int64)
    depth = np.searchsorted(arrivals_ms, dispatch_ms, side="right") - np.concatenate(
        ([0], np.cumsum(sizes_array)[:-1])
    )
    return BatchTrace(
        arrivals_ms,
        dispatch_ms,
        np.asarray(completions),
        sizes_array,
        busy,
        int(depth.max()) if len(depth) else 0,
    )


def capacity_per_s(profile: LatencyProfile, max_batch_size: int, replicas: int) -> float:
    """N * B / s(B): the most requests per second the plan can serve."""
    service = profile.service_time_ms(max_batch_size)
    return replicas * max_batch_size / service * 1000.0


def relaxation_time_ms(
    rate_per_ms: float,
    arrival_cv: float,
    capacity_per_ms: float,
    max_batch_size: int,
    service_cv: float,
) -> float:
    """Heavy-traffic relaxation time sigma^2/delta^2 in ms (inf when rate >= capacity).

    sigma^2 is the variance rate of the arrival count plus that of the service count (batches
    of B complete at capacity/B per ms, each carrying B requests).
    """
    delta = capacity_per_ms - rate_per_ms
    if delta <= 0.0:
        return math.inf
    variance_rate = rate_per_ms * arrival_cv**2 + capacity_per_ms * max_batch_size * service_cv**2
    return variance_rate / (delta * delta)


def order_statistics(
    values: npt.NDArray[np.float64], percentiles: list[float]
) -> npt.NDArray[np.float64]:
    """Empirical percentiles without interpolation: the ceil(n*p/100)-th smallest value.

    Selected in the C extension (one sample-bracketed pass; three-way quickselect on a copy for
    small arrays): numpy's partition slows tenfold on the many equal latencies of a lightly
    loaded deterministic system.
    """
    n = len(values)
    # The epsilon keeps float noise (190000 * 99.9 / 100 = 189810.00000000003) off the ceiling.
    ranks = [min(max(math.ceil(n * p / 100.0 - 1e-9) - 1, 0), n - 1) for p in percentiles]
    return select_ranks(values, ranks)


def select_ranks(values: npt.NDArray[np.float64], ranks: list[int]) -> npt.NDArray[np.float64]:
    """The values of the given (0-based) ranks, in the order asked."""
    order = np.argsort(ranks, kind="stable")
    sorted_ranks = np.asarray(ranks, dtype=np.int64)[order]
    selected = np.empty(len(ranks))
    if _batchsim is None:
        partitioned = np.partition(values, sorted_ranks)
        selected = partitioned[sorted_ranks]
    else:
        _batchsim.select_ranks(
            np.ascontiguousarray(values, dtype=np.float64), sorted_ranks, selected
        )
    result = np.empty(len(ranks))
    result[order] = selected
    return result


def summarise(latencies_ms: npt.NDArray[np.float64], slo: Slo | None) -> LatencySummary:
    wanted = list(PERCENTILES) + ([slo.percentile] if slo is not None else [])
    values = order_statistics(latencies_ms, wanted)
    return LatencySummary(
        mean_ms=float(latencies_ms.mean()),
        p50_ms=float(values[0]),
        p90_ms=float(values[1]),
        p95_ms=float(values[2]),
        p99_ms=float(values[3]),
        p999_ms=float(values[4]),
        slo_percentile_ms=float(values[5]) if slo is not None else None,
    )


def simulate(
    profile: LatencyProfile,
    plan: Plan,
    workload: Workload,
    num_requests: int = DEFAULT_NUM_REQUESTS,
    seed: int = DEFAULT_SEED,
    distribution: ServiceDistribution = ServiceDistribution.DETERMINISTIC,
    slo: Slo | None = None,
    arrivals_ms: npt.NDArray[np.float64] | None = None,
) -> SimulationResult:
    """Simulate ``plan`` serving ``workload``; deterministic for a given seed.

    ``arrivals_ms`` may be passed to reuse one arrival sample across plans (common random
    numbers); otherwise it is drawn from the workload with ``seed``.
    """
    return simulate_with_latencies(
        profile, plan, workload, num_requests, seed, distribution, slo, arrivals_ms
    )[0]


def simulate_with_latencies(
    profile: LatencyProfile,
    plan: Plan,
    workload: Workload,
    num_requests: int = DEFAULT_NUM_REQUESTS,
    seed: int = DEFAULT_SEED,
    distribution: ServiceDistribution = ServiceDistribution.DETERMINISTIC,
    slo: Slo | None = None,
    arrivals_ms: npt.NDArray[np.float64] | None = None,
) -> tuple[SimulationResult, npt.NDArray[np.float64]]:
    """As simulate, also returning the per-request latencies after the warm-up (ms)."""
    if plan.max_batch_size > profile.max_batch_size:
        raise ValueError(
            f"max_batch_size {plan.max_batch_size} exceeds the profile's largest batch "
            f"{profile.max_batch_size}"
        )
    generated = workload.arrival_times_s is None  # a sample of the renewal process
    rng = np.random.default_rng(seed)
    if arrivals_ms is None:
        arrivals_ms = generate_arrivals_ms(workload, num_requests, rng)
    n = len(arrivals_ms)
    table = profile.table_ms(plan.max_batch_size)
    scale = None
    service_cv = 0.0
    if distribution is ServiceDistribution.EXPONENTIAL:
        scale = rng.exponential(1.0, n)
        service_cv = 1.0
    skip = int(n * WARMUP_FRACTION)
    if n - skip < 100:
        skip = 0
    kept, stats = run_latencies(
        arrivals_ms, table, plan.max_batch_size, plan.max_queue_delay_ms, plan.replicas, skip, scale
    )
    duration_ms = stats.last_completion_ms - float(arrivals_ms[0])
    horizon_ms = float(arrivals_ms[-1] - arrivals_ms[0])
    if generated:
        # The generating rate, not the sample's: a sample of evenly spaced arrivals at exactly
        # capacity rounds a hair below it, and the plan must still count as unstable.
        rate_per_ms = workload.rate_per_s / 1000.0
    else:
        rate_per_ms = (n - 1) / horizon_ms if horizon_ms > 0 else math.inf
    if workload.arrival_times_s is not None and n > 2:
        gaps = np.diff(arrivals_ms)
        arrival_cv = float(gaps.std() / gaps.mean()) if gaps.mean() > 0 else 0.0
    else:
        arrival_cv = workload.arrival_cv
    capacity_per_ms = capacity_per_s(profile, plan.max_batch_size, plan.replicas) / 1000.0
    relax_ms = relaxation_time_ms(
        rate_per_ms, arrival_cv, capacity_per_ms, plan.max_batch_size, service_cv
    )
    if rate_per_ms >= capacity_per_ms:
        stable = False
        reason = (
            f"rate {rate_per_ms * 1000:.6g}/s is at or above capacity "
            f"{capacity_per_ms * 1000:.6g}/s: the queue grows without bound"
        )
    elif horizon_ms < MIN_RELAXATION_TIMES * relax_ms:
        stable = False
        reason = (
            f"run of {horizon_ms / 1000:.4g} s spans fewer than {MIN_RELAXATION_TIMES:g} "
            f"heavy-traffic relaxation times ({relax_ms / 1000:.4g} s each): tail unverified"
        )
    else:
        stable = True
        reason = (
            f"load {rate_per_ms / capacity_per_ms:.1%} of capacity; run spans "
            f"{horizon_ms / relax_ms if relax_ms > 0 else math.inf:.3g} relaxation times"
        )
    result = SimulationResult(
        latency=summarise(kept, slo),
        throughput_per_s=n / duration_ms * 1000.0 if duration_ms > 0 else 0.0,
        # sizes sum to n exactly, so this is the batch sizes' mean
        mean_batch_size=n / stats.batches if stats.batches else math.nan,
        # Clamped: busy time and span are summed differently and may differ by an ulp.
        utilisation=min(1.0, stats.busy_ms / (plan.replicas * duration_ms))
        if duration_ms > 0
        else 0.0,
        max_queue_length=stats.max_queue_length,
        stable=stable,
        stability_reason=reason,
        requests_simulated=n,
        simulated_duration_s=duration_ms / 1000.0,
        seed=seed,
    )
    return result, kept
