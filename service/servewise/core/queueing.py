"""Fast latency prediction for a dynamic-batching plan (analytic approximation).

Vectorised over plans that share one profile and workload, so the optimizer can score
thousands of (B, T, N) combinations in a few milliseconds. The simulator is the referee.

The model (times in ms, lambda in requests per ms, c_a the inter-arrival CV):

* Batch formation. With a replica free, a batch collects for the window w = min(T, time for
  B-1 more arrivals) after its first request, so b_timer = min(B, 1 + lambda*w). When the
  replicas are the bottleneck, every freed replica takes what accumulated while the others
  were busy: the balance size b_bal solves N*b/s(b) = lambda. The mean batch is the larger
  of the two, at most B.
* Waiting. A request waits for its batch to form (uniform over the window, the first request
  the whole window), for a replica (the gap between replica completions, s(b)/N, when the
  replicas bound the batch), and for the backlog the arrival burstiness builds up; the last
  is a heavy-traffic (reflected Brownian motion) term with drift capacity - lambda and
  variance rate lambda*c_a^2 whose stationary law is exponential.
* Service. A batch of b takes s(b); the tail uses b at the upper quantile of the number of
  arrivals in one collection period.
"""

from __future__ import annotations

import math
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

    def at(self, kind: npt.NDArray[np.int64], b: FloatArray) -> FloatArray:
        """s(b) for real-valued b (linear between integer sizes)."""
        lo = np.maximum(b.astype(np.int64), 1)
        frac = b - lo
        low = self.service_ms[kind, lo]
        with np.errstate(invalid="ignore"):  # inf * 0 beyond the profile, discarded
            result: FloatArray = np.where(
                frac > 0, low + (self.service_ms[kind, lo + 1] - low) * frac, low
            )
        return result

    def balance_batch(
        self, kind: npt.NDArray[np.int64], lam: float, n: FloatArray, big_b: FloatArray
    ) -> FloatArray:
        """Smallest real b in [1, B] with N*b/s(b) >= lambda (the replicas just keep up).

        The crossing is found on the integer grid of the running maximum of b/s(b) (noisy
        profiles are not monotone) and solved exactly on its linear segment. Returns B where
        even full batches cannot keep up.
        """
        upper = np.empty(len(kind), dtype=np.int64)
        for k in np.unique(kind):
            rows = kind == k
            upper[rows] = np.searchsorted(self.throughput[k], lam / n[rows]) + 1
        upper = np.minimum(upper, big_b.astype(np.int64))
        lower = np.maximum(upper - 1, 1)
        s_low = self.service_ms[kind, lower]
        slope = self.service_ms[kind, upper] - s_low
        denom = n - lam * slope
        with np.errstate(divide="ignore", invalid="ignore"):
            exact = np.where(denom > 0, lam * (s_low - slope * lower) / denom, upper)
        result: FloatArray = np.clip(np.clip(exact, lower, upper), 1.0, big_b)
        return result


def _normal_quantile(q: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549671084835264e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if q < 0.02425:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / (
            (((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1
        )
    if q > 1 - 0.02425:
        return -_normal_quantile(1 - q)
    r = q - 0.5
    t = r * r
    return (
        (((((a[0] * t + a[1]) * t + a[2]) * t + a[3]) * t + a[4]) * t + a[5])
        * r
        / (((((b[0] * t + b[1]) * t + b[2]) * t + b[3]) * t + b[4]) * t + 1)
    )


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
    plans = len(kind)
    tail = np.empty(plans)
    scratch = np.empty((3, plans))
    _batchsim.tail_at(
        tables.service_ms,
        tables.throughput,
        tables.service_ms.shape[1],
        np.ascontiguousarray(kind, dtype=np.int64),
        np.ascontiguousarray(max_batch_size, dtype=np.int64),
        np.ascontiguousarray(max_queue_delay_ms, dtype=np.float64),
        np.ascontiguousarray(replicas, dtype=np.int64),
        float(rate_per_s),
        float(arrival_cv),
        np.array([threshold_ms], dtype=np.float64),
        tail,
        scratch[0],
        scratch[1],
        scratch[2],
    )
    return tail


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
    """As predict_many, for several percentiles at once (latency_ms has one column each).

    The per-plan arithmetic runs in the C extension (``_batchsim.predict_plans``): it is
    scalar code, and in numpy the per-call overhead of a few hundred small array operations
    dominated a single plan's prediction.
    """
    plans = len(kind)
    latency = np.empty((plans, len(percentiles)))
    mean = np.empty(plans)
    batch = np.empty(plans)
    util = np.empty(plans)
    _batchsim.predict_plans(
        tables.service_ms,
        tables.throughput,
        tables.service_ms.shape[1],
        np.ascontiguousarray(kind, dtype=np.int64),
        np.ascontiguousarray(max_batch_size, dtype=np.int64),
        np.ascontiguousarray(max_queue_delay_ms, dtype=np.float64),
        np.ascontiguousarray(replicas, dtype=np.int64),
        float(rate_per_s),
        float(arrival_cv),
        np.array(percentiles, dtype=np.float64) / 100.0,
        latency,
        mean,
        batch,
        util,
    )
    return Prediction(latency, mean, batch, util, util < 1.0)


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
