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

from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile
from servewise.core.simulator import PERCENTILES, LatencySummary

FloatArray = npt.NDArray[np.float64]

_UTILISATION_STEPS = 24
_QUANTILE_STEPS = 30


@dataclass(frozen=True)
class Prediction:
    """Predicted figures for a set of plans (arrays aligned with the inputs)."""

    latency_ms: FloatArray  # at the requested quantile
    mean_ms: FloatArray
    mean_batch_size: FloatArray
    utilisation: FloatArray  # lambda / capacity
    stable: npt.NDArray[np.bool_]


def _interp(table: FloatArray, b: FloatArray) -> FloatArray:
    """s(b) for real-valued b by linear interpolation of the per-size table."""
    lo = np.clip(np.floor(b).astype(np.int64), 1, len(table) - 1)
    hi = np.minimum(lo + 1, len(table) - 1)
    frac = np.clip(b - lo, 0.0, 1.0)
    result: FloatArray = table[lo] + (table[hi] - table[lo]) * frac
    return result


def _balance_batch(
    table_ms: FloatArray, lam: float, n: FloatArray, big_b: FloatArray
) -> FloatArray:
    """Smallest real b in [1, B] with N*b/s(b) >= lambda (the replicas just keep up).

    s is piecewise linear between integer sizes, so the crossing is found on the integer grid
    (with a running maximum of b/s(b), since noisy profiles are not monotone) and then solved
    exactly on its segment. Returns B where even full batches cannot keep up.
    """
    sizes = np.arange(1, len(table_ms), dtype=np.float64)
    throughput = np.maximum.accumulate(sizes / table_ms[1:])  # per replica, requests per ms
    upper = (
        np.searchsorted(throughput, lam / n).astype(np.int64) + 1
    )  # first integer b that keeps up
    upper = np.minimum(upper, len(table_ms) - 1)
    lower = np.maximum(upper - 1, 1)
    s_low = table_ms[lower]
    slope = table_ms[upper] - s_low
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


def predict_many(  # noqa: PLR0915 - one model, read top to bottom
    table_ms: FloatArray,
    rate_per_s: float,
    arrival_cv: float,
    max_batch_size: npt.NDArray[np.int64],
    max_queue_delay_ms: FloatArray,
    replicas: npt.NDArray[np.int64],
    percentile: float,
) -> Prediction:
    """Predict the latency at ``percentile`` for each plan (B[i], T[i], N[i])."""
    lam = rate_per_s / 1000.0
    q = percentile / 100.0
    cv2 = arrival_cv * arrival_cv
    big_b = max_batch_size.astype(np.float64)
    delay = max_queue_delay_ms.astype(np.float64)
    n = replicas.astype(np.float64)
    s_full = table_ms[max_batch_size]
    capacity = n * big_b / s_full
    util = lam / capacity
    stable = util < 1.0

    # Batches started by an idle replica collect for the window after their first request.
    window = np.minimum(delay, (big_b - 1.0) / lam)
    b_idle = np.minimum(big_b, 1.0 + lam * window)
    s_idle = _interp(table_ms, b_idle)
    # Batches taken by a replica freeing while all were busy hold what accumulated meanwhile.
    b_busy = np.minimum(np.maximum(_balance_batch(table_ms, lam, n, big_b), b_idle), big_b)
    s_busy = _interp(table_ms, b_busy)

    # Probability that a request finds every replica busy, consistent with the utilisation
    # it implies (Sakasegawa's closed form for the M/M/N wait probability, u^(sqrt(2(N+1))-1),
    # scaled by the arrival burstiness as in Allen-Cunneen).
    exponent = np.sqrt(2.0 * (n + 1.0)) - 1.0
    work_idle = lam * s_idle / (b_idle * n)
    work_busy = lam * s_busy / (b_busy * n)
    low = np.zeros_like(n)
    high = np.ones_like(n)
    for _ in range(_UTILISATION_STEPS):
        u = 0.5 * (low + high)
        c = np.minimum(1.0, u**exponent * (1.0 + cv2) / 2.0)
        excess = (1.0 - c) * work_idle + c * work_busy - u
        low = np.where(excess > 0, u, low)
        high = np.where(excess > 0, high, u)
    u = 0.5 * (low + high)
    wait_probability = np.minimum(1.0, u**exponent * (1.0 + cv2) / 2.0)

    # Queued requests wait for the next of N busy replicas to free (residuals ~ uniform over
    # the busy batch's service, or over the collection window when the timer dominates) and,
    # near capacity, for the backlog burstiness builds (heavy traffic: exponential, mean
    # sigma^2 / (2 delta) requests, drained at capacity).
    span = np.maximum(s_busy, n * window)
    residual_mean = span / (n + 1.0)
    drift = np.maximum(capacity - lam, 1e-12)
    backlog_mean = lam * cv2 / (2.0 * drift) / capacity

    def tail(t: FloatArray) -> FloatArray:
        x_idle = t - s_idle
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(window > 0, np.clip(x_idle / window, 0.0, 1.0), 1.0)
        idle_tail = np.where(
            x_idle < 0,
            1.0,
            np.where(x_idle >= window, 0.0, 1.0 / b_idle + (1.0 - 1.0 / b_idle) * (1.0 - frac)),
        )
        x_busy = t - s_busy
        residual_tail = np.clip(1.0 - np.maximum(x_busy - backlog_mean, 0.0) / span, 0.0, 1.0) ** n
        with np.errstate(divide="ignore", over="ignore"):
            backlog_tail = np.exp(
                -np.maximum(x_busy - residual_mean, 0.0) / np.maximum(backlog_mean, 1e-12)
            )
        busy_tail = np.where(x_busy < 0, 1.0, np.maximum(residual_tail, backlog_tail))
        result: FloatArray = (1.0 - wait_probability) * idle_tail + wait_probability * busy_tail
        return result

    lo = np.minimum(s_idle, s_busy)
    hi = (
        np.maximum(s_idle + window, s_busy + span)
        + backlog_mean * (np.log(1.0 / (1.0 - q)) + 1.0)
        + 1e-9
    )
    for _ in range(_QUANTILE_STEPS):
        mid = 0.5 * (lo + hi)
        over = tail(mid) > 1.0 - q
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    idle_wait_mean = window / b_idle + (1.0 - 1.0 / b_idle) * window / 2.0
    mean = (1.0 - wait_probability) * (s_idle + idle_wait_mean) + wait_probability * (
        s_busy + residual_mean + backlog_mean
    )
    mean_batch = 1.0 / ((1.0 - wait_probability) / b_idle + wait_probability / b_busy)
    latency = np.where(stable, hi, np.inf)
    return Prediction(latency, np.where(stable, mean, np.inf), mean_batch, util, stable)


def predict(
    profile: LatencyProfile, plan: Plan, workload: Workload, slo: Slo | None
) -> LatencySummary:
    """Predicted latency statistics of one plan."""
    table = profile.table_ms(plan.max_batch_size)
    wanted = list(PERCENTILES) + ([slo.percentile] if slo is not None else [])
    values = []
    mean = math.inf
    for pct in wanted:
        pred = predict_many(
            table,
            workload.rate_per_s,
            workload.arrival_cv,
            np.array([plan.max_batch_size]),
            np.array([plan.max_queue_delay_ms]),
            np.array([plan.replicas]),
            pct,
        )
        values.append(float(pred.latency_ms[0]))
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
