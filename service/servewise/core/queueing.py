"""Fast latency prediction for a dynamic-batching plan (analytic approximation).

Vectorised over plans on several profiles at once, so the optimizer can score thousands of
(type, B, T, N) combinations in a few milliseconds; the per-plan arithmetic runs in the C
extension (``_batchsim.predict_plans`` / ``tail_at``), where its model is written out. The
simulator is the referee: bench/plan_quality.py measures this predictor against fresh
200k-request simulations of the plans the optimizer chooses.

The model (times in ms, lambda in requests per ms, c_a the inter-arrival CV, gaps gamma with
shape 1/c_a^2):

* Batches. A batch started by an idle replica collects for the window w = min(T, time for B-1
  more arrivals): b_idle = min(B, 1 + lambda*w). A replica freeing while all were busy takes
  what accumulated meanwhile: the balance size b_bal with N*b/s(b) = lambda. Batch sizes
  spread around these means (counts over-dispersed by c_a^2, size-biased as a request sees
  them), integrated with a 7-point Gauss-Hermite rule.
* Waiting. A request waits when all N replicas are busy: with deterministic service, when the
  last N clumps (a clump being what one batch's window absorbs) came within one service,
  P(sum of N*clump gamma gaps < s). A waiting request waits for the next of N staggered
  replicas, uniform over s/N, plus the backlog, whose tail decays at the Cramer-Lundberg rate
  of a GI/D/1 queue drained at capacity (Kingman in heavy traffic, and the waits inside a
  burst at light load). A request that finds a replica idle waits for its batch's window
  (uniform; the first request the whole window).
* T = 0 with N >= 2 and B >= 2: a freed replica takes everything queued, the arrivals since
  the previous dispatch, so a long gap makes a long service and the replicas' phases drift
  apart instead of settling into an even stagger (batch sizes alternate long and short). The
  dispatch epochs are then modelled at random phases of the cycle s(b_bal): the gap a request
  falls into is a size-biased uniform spacing, Beta(2, N-1) * s, its batch is that gap's
  arrivals and its wait is uniform over it. (The even stagger under-predicted p99 by up to
  65%; bench scenario s2026-012 by 36%.) The drift is driven by rho' = lambda s'(b); idle
  replicas stacking onto consecutive arrivals pull the other way, so with a nearly flat
  profile they dispatch as one cluster: the spacings are taken over 1 + (N-1) min(1, rho')
  points, a whole cycle at rho' = 0.
* Clumps with a delay (c_a > 1, T > 0): an idle replica's batch holds a whole clump,
  K = 1 + N(w) with P(K > k) = P(S_k <= w), mostly 1 and sometimes many; the idle nodes are
  the size-biased quantiles of those exact counts, and later members wait nearly the whole
  window, (1 - x/w)^alpha. A request then waits only when N timer-dispatched batches, each
  at least w after the previous, and itself all came within w + s of the first (a chain of
  excess intervals, summed with a local power law), unless a clump filling B broke the chain.
* Clumps at T = 0 (c_a > 1): the share 1 - (1 - exp(-lambda s)) / P(gap < s) of the waits,
  those in excess of what Poisson arrivals would see, comes from a clump whose first request
  started the batch in service, so it waits out nearly all of that service: the residual has
  tail (1 - x/s)^(N alpha) instead of being uniform, plus one more batch (then two) when B
  more arrivals of the clump came within that service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servewise.core import _batchsim  # type: ignore[attr-defined]
from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile
from servewise.core.simulator import PERCENTILES, LatencySummary

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    """Predicted figures for a set of plans (arrays aligned with the inputs)."""

    latency_ms: FloatArray  # at the requested quantile
    mean_ms: FloatArray
    mean_batch_size: FloatArray
    utilisation: FloatArray  # lambda / capacity
    stable: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ServiceTables:
    """s(b) of several profiles side by side, so plans on different instance types can be
    scored in one vectorised pass.

    ``service_ms[k, b]`` is s(b) of profile k (inf beyond its largest batch; column 0 unused);
    ``throughput[k, b-1]`` is the running maximum of b/s(b), what one replica can sustain
    with batches of at most b.
    """

    service_ms: FloatArray
    throughput: FloatArray

    @classmethod
    def build(cls, profiles: list[LatencyProfile], max_batch_sizes: list[int]) -> ServiceTables:
        width = max(max_batch_sizes) + 2
        service = np.full((len(profiles), width), np.inf)
        for k, (profile, top) in enumerate(zip(profiles, max_batch_sizes, strict=True)):
            service[k, : top + 1] = profile.table_ms(top)
        sizes = np.arange(1, width, dtype=np.float64)
        throughput = np.maximum.accumulate(sizes / service[:, 1:], axis=1)
        return cls(service, throughput)


def predict_many(
    tables: ServiceTables,
    kind: npt.NDArray[np.int64],
    rate_per_s: float,
    arrival_cv: float,
    max_batch_size: npt.NDArray[np.int64],
    max_queue_delay_ms: FloatArray,
    replicas: npt.NDArray[np.int64],
    percentile: float,
) -> Prediction:
    """Predict the latency at ``percentile`` for each plan: profile ``kind[i]`` of ``tables``
    with B[i], T[i], N[i]."""
    prediction = predict_levels(
        tables,
        kind,
        rate_per_s,
        arrival_cv,
        max_batch_size,
        max_queue_delay_ms,
        replicas,
        [percentile],
    )
    return Prediction(
        prediction.latency_ms[:, 0],
        prediction.mean_ms,
        prediction.mean_batch_size,
        prediction.utilisation,
        prediction.stable,
    )


def tail_probability(
    tables: ServiceTables,
    kind: npt.NDArray[np.int64],
    rate_per_s: float,
    arrival_cv: float,
    max_batch_size: npt.NDArray[np.int64],
    max_queue_delay_ms: FloatArray,
    replicas: npt.NDArray[np.int64],
    threshold_ms: float,
) -> FloatArray:
    """Predicted P(latency > threshold_ms) per plan (1 for unstable plans).

    A plan meets an SLO exactly when this is at most 1 - percentile/100, so a yes/no screen
    needs one evaluation of the tail instead of a search for the quantile.
    """
    tail = np.empty((len(kind), 1))
    _call_model(
        _batchsim.tail_at,
        tables,
        kind,
        rate_per_s,
        arrival_cv,
        max_batch_size,
        max_queue_delay_ms,
        replicas,
        np.array([threshold_ms]),
        tail,
    )
    result: FloatArray = tail[:, 0]
    return result


def predict_levels(
    tables: ServiceTables,
    kind: npt.NDArray[np.int64],
    rate_per_s: float,
    arrival_cv: float,
    max_batch_size: npt.NDArray[np.int64],
    max_queue_delay_ms: FloatArray,
    replicas: npt.NDArray[np.int64],
    percentiles: list[float],
) -> Prediction:
    """As predict_many, for several percentiles at once (latency_ms has one column each)."""
    latency = np.empty((len(kind), len(percentiles)))
    mean, batch, util = _call_model(
        _batchsim.predict_plans,
        tables,
        kind,
        rate_per_s,
        arrival_cv,
        max_batch_size,
        max_queue_delay_ms,
        replicas,
        np.array(percentiles, dtype=np.float64) / 100.0,
        latency,
    )
    return Prediction(latency, mean, batch, util, util < 1.0)


def _call_model(
    function: Callable[..., None],
    tables: ServiceTables,
    kind: npt.NDArray[np.int64],
    rate_per_s: float,
    arrival_cv: float,
    max_batch_size: npt.NDArray[np.int64],
    max_queue_delay_ms: FloatArray,
    replicas: npt.NDArray[np.int64],
    levels: FloatArray,
    out: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run one of the C model's entry points; returns (mean, mean batch, utilisation).

    The per-plan arithmetic is scalar code: in numpy, the per-call overhead of a few hundred
    small array operations dominated a single plan's prediction (4 ms instead of microseconds).
    """
    plans = len(kind)
    mean, batch, util = np.empty(plans), np.empty(plans), np.empty(plans)
    function(
        tables.service_ms,
        tables.throughput,
        tables.service_ms.shape[1],
        np.ascontiguousarray(kind, dtype=np.int64),
        np.ascontiguousarray(max_batch_size, dtype=np.int64),
        np.ascontiguousarray(max_queue_delay_ms, dtype=np.float64),
        np.ascontiguousarray(replicas, dtype=np.int64),
        float(rate_per_s),
        float(arrival_cv),
        np.ascontiguousarray(levels, dtype=np.float64),
        out,
        mean,
        batch,
        util,
    )
    return mean, batch, util


def predict(
    profile: LatencyProfile, plan: Plan, workload: Workload, slo: Slo | None
) -> LatencySummary:
    """Predicted latency statistics of one plan."""
    tables = ServiceTables.build([profile], [plan.max_batch_size])
    wanted = list(PERCENTILES) + ([slo.percentile] if slo is not None else [])
    pred = predict_levels(
        tables,
        np.zeros(1, dtype=np.int64),
        workload.rate_per_s,
        workload.arrival_cv,
        np.array([plan.max_batch_size]),
        np.array([plan.max_queue_delay_ms]),
        np.array([plan.replicas]),
        wanted,
    )
    values = [float(v) for v in pred.latency_ms[0]]
    mean = float(pred.mean_ms[0])
    return LatencySummary(
        mean_ms=mean,
        p50_ms=values[0],
        p90_ms=values[1],
        p95_ms=values[2],
        p99_ms=values[3],
        p999_ms=values[4],
        slo_percentile_ms=values[5] if slo is not None else None,
    )
