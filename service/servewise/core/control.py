"""The switching controller's decision core: smoothing, headroom, hysteresis, stabilisation,
panic, the switch-or-hold decision and the transition plan (ARCHITECTURE.md section 6).

Pure: no grpc, no I/O, no clock. "Now" is the newest sample's timestamp, so a decision is a
function of the deployment's state, the sample window and the settings alone. The optimizer is
reached through an ``advise(rate, arrival_cv)`` callable, so tests can hand in a fake and the
service caches the real one (:class:`AdviceCache`).

Every number below is derived from the request (SLO percentile and bound), the samples (rates,
their spacing and spread, observed latency), the candidates (cold start, price) and the
deployment's settings; nothing is tuned to a trace.

The decision, in order:

1. **Rate estimate** (:func:`estimate_rate`). The sampled rate is smoothed by an EWMA over
   irregular timestamps (each sample pulls the average by ``1 - 2**(-dt / half_life)``). The plan
   must then hold until a correction can take effect: the *lead* is the current instance type's
   cold start plus one sample period. The *sizing rate* the optimizer is asked about is the
   smoothed level, plus the rise over the lead at the trend's lower confidence bound (a
   forecast; a falling or insignificant trend adds nothing), plus ``z * sigma`` where
   ``sigma`` is the sample-to-sample spread of the rate (successive differences, so a slow
   trend does not count as spread) and ``z`` the normal quantile of the SLO percentile: the
   plan covers the next samples' rate as often as the SLO asks requests to be served in time.
2. **Burstiness** (:func:`estimate_arrival_cv`). Sub-sample bursts are invisible in the rates
   but not in the latency: for each sample served by the current plan the inter-arrival CV at
   which the queueing model predicts the observed p99 is found by bisection; the window's
   root-mean-square CV goes to the optimizer's workload (``Workload.arrival_cv``), so replicas
   and batch size are sized for the burstiness observed instead of Poisson.
3. **Panic.** When the newest breaching samples (observed p99 above the bound, or error rate
   above its limit) number ``panic_samples``, or together carry enough requests to be a
   confident verdict on the percentile (:func:`requests_for_percentile`), the controller moves
   to safety at once: the optimizer's plan at the higher of the sizing rate and the newest raw
   rate, plus the hysteresis band as headroom (at least one more replica than now), in one step.
   Only samples taken after the plan in force took over (``plan_since_s``) count: the breaches
   of the plan it replaced are what the last move answered.
4. **Hysteresis.** Otherwise a switch is considered only when the sizing rate has left
   ``planned_rate * (1 +- band)``; a rate oscillating inside the band never triggers one.
5. **Predicted breach.** Above the band the optimizer is asked at once; when it says the current
   plan no longer meets the SLO at the sizing rate (a prediction at the SLO's own confidence,
   step 1), the controller moves on this sample, without waiting for a window, in one step,
   and keeps no fallback: the old plan is released once the target is up, since rolling back
   to a plan predicted to fail would not help (panic moves alike).
6. **Stabilisation.** Other moves need the sizing rate to have stayed on the same side outside
   the band for a window on the sample timestamps: short toward safety, long toward savings (as
   Kubernetes HPA's scale-down stabilisation and Knative KPA's stable window). A move toward
   savings is then sized for the highest sizing rate of its window, not the newest (as the
   HPA scales down to the highest recommendation of its window): the smaller plan must carry
   what the window has seen. Migrations toward savings also wait for the plan's minimum
   dwell; a scale down of the configuration serving does not (item 8).
7. **Net saving.** The target is the optimizer's best plan at the sizing rate, or a scale of
   the current configuration that meets the SLO (``Advice.scaled_plan``: at the best plan's
   running cost, or else the fewest replicas that meet it), whichever has the larger net
   saving: a scale starts only the added replicas and skips the migration's overlap of old and
   new capacity. Its switch cost is :func:`switch_cost`; over the expected dwell ``H`` the net
   saving per hour is ``saving_per_hour - switch_cost / (H / 3600)``, and a move toward savings
   happens only when it is positive. ``H`` is the ``expected_dwell_s`` setting, or, while an
   established rising trend will carry the rate out of the band sooner, that time
   (:func:`expected_dwell_s`): a migration that would repay its fleet's cold start only over
   an hour is not worth it when the next move is minutes away.
8. **Transition** (:func:`transition_steps`). A change of replica count alone is a *scale*: the
   configuration is the one already serving, so there is nothing to canary; it takes one step at
   full weight whose dwell verifies the SLO, and, like an HPA, a scale down needs only the
   savings stabilisation window (the minimum dwell, which keeps a deployment from migrating back
   and forth, does not apply: removing replicas shifts no traffic). A change of instance type,
   batch size or delay is a *migration* through the weighted steps. Each step dwells until the
   target's share of the rate has sent the requests a verdict on the percentile needs, at least
   one sample period (a step must see a sample) and at most ``savings_window_s / len(steps)``: a
   transition proves its target in no more time than the controller waited before deciding to
   save money, which keeps the overlap of old and new capacity to minutes.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import statistics
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

import numpy as np

from servewise.core import _batchsim, queueing, window  # type: ignore[attr-defined]
from servewise.core.lazyseq import LazyFloats
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import SearchLimits, optimize
from servewise.core.profiles import Candidate, LatencyProfile
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

# A step's dwell when the samples give no period (fewer than two samples): a typical metrics
# scrape, so a step still sees a sample.
MIN_STEP_DWELL_S = 30.0
# Significant digits the sizing rate is rounded to before the optimizer is asked (cache key).
RATE_SIGNIFICANT_DIGITS = 3
# The arrival CV the optimizer is asked about is the nearest point of the geometric grid
# 2**(k / CV_GRID_PER_DOUBLING), shown to 4 significant digits (1, 1.091, 1.189, ... 2, 2.181,
# ...): points ~9 % apart, so a CV read from noisy observed p99s (it moves a little with every
# sample) keeps its cache entry, at most ~4.4 % off. Two significant digits (the grid before)
# put 1.0-9.9 on 90 points and made a window's wobble a fresh optimizer run, 0.5-1 s each.
CV_GRID_PER_DOUBLING = 8
# The bracket searched for the arrival CV that explains an observed p99 (1 = Poisson; the
# upper end is far past the burstiness the queueing model is calibrated for, so a sample
# beyond it is simply "very bursty").
MIN_ARRIVAL_CV = 1.0
MAX_ARRIVAL_CV = 16.0
# cv_for_latency's curve: predicted p99s at CVs this many to a doubling (65 from 1 to 16),
# and how many (profile, plan, rate) curves are kept.
CV_CURVE_POINTS_PER_DOUBLING = 16
CV_CURVE_ENTRIES = 4096
# Above this share of capacity cv_for_latency uses a curve at the exact rate (not shared).
CV_CURVE_MAX_UTILISATION = 0.98
# cv_for_latency's answers on exact inputs, kept per (candidate, plan) object pair: at most
# this many pairs (a deployment's converted state keeps its objects while it is unchanged) and
# this many answers per pair (a window is at most 420 samples at the default settings).
CV_MEMO_PLANS = 4096
CV_MEMO_ANSWERS_PER_PLAN = 1024
# The level of the latency quantile a metrics sample reports (MetricSample.p99_ms).
P99_LEVEL = 0.99


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


# Slotted: a Control stream keeps a window of up to 420 per deployment (no __dict__ each).
@dataclass(frozen=True, slots=True)
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
    """What the controller needs of a stored deployment. ``planned_arrival_cv`` is the CV the
    current plan was sized for: the estimate used until samples served by it say otherwise."""

    candidates: tuple[Candidate, ...]
    slo: Slo
    current_plan: Plan
    planned_rate_per_s: float
    plan_since_s: float | None = None
    planned_arrival_cv: float = 1.0


@dataclass(frozen=True)
class Advice:
    """The optimizer's answer at one rate: its best plan (or the closest one when none meets the
    SLO), and whether the deployment's current plan still meets the SLO at that rate."""

    rate_per_s: float
    plan: Plan | None
    feasible: bool
    cost_per_hour: float
    current_meets_slo: bool
    # A scale of the current configuration (instance type, B, T) that meets the SLO: with as
    # many replicas as the best plan's running cost buys, or else the fewest above that which
    # meet it (:func:`_scaled_alternative`). Moving there is a scale, not a migration: only the
    # added replicas start, so it may be the cheaper move over the expected dwell (item 7).
    scaled_plan: Plan | None = None


class Advisor(Protocol):
    """The optimizer at a rate and an inter-arrival CV."""

    def __call__(self, rate_per_s: float, arrival_cv: float = 1.0) -> Advice: ...


@dataclass(frozen=True)
class Step:
    weight: float
    dwell_s: float
    expected_requests: float


@dataclass(frozen=True)
class RateEstimate:
    """What the samples say about the rate (see :func:`estimate_rate`)."""

    smoothed_per_s: float
    trend_per_s2: float
    spread_per_s: float
    lead_s: float
    sizing_per_s: float
    sample_period_s: float | None


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
    # The rate and CV the target was sized for (the deployment's new planned rate and CV).
    sizing_rate_per_s: float = 0.0
    arrival_cv: float = 1.0
    # Seconds until the target carries all the traffic, and during which old and new capacity
    # are both paid for (see :func:`switch_cost`).
    ready_after_s: float = 0.0
    overlap_s: float = 0.0
    # Whether the move leaves a plan predicted (or, in panic, observed) to break the SLO: it
    # keeps no fallback, so judging its step must not roll back to that plan
    # (:func:`servewise.core.transitions.judge_step` with ``toward_safety``).
    away_from_breach: bool = False


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


def slo_z(percentile: float) -> float:
    """The standard normal quantile at the SLO percentile (2.33 for p99): the confidence every
    statistical margin of the controller is taken at, so a p99.9 SLO gets wider ones."""
    q = min(max(percentile / 100.0, 0.5), 1.0 - 1e-9)
    return statistics.NormalDist().inv_cdf(q)


def requests_for_percentile(percentile: float) -> int:
    """Requests a verdict on the ``percentile`` (e.g. 99) needs: ``k / (1 - q)``.

    When a plan just meets the SLO, the number of requests over the bound among ``n`` is about
    Poisson with mean ``k = n (1 - q)``; a plan twice as bad shows ``2k``. Telling the two apart
    with both errors at the SLO's own confidence ``z`` (:func:`slo_z`) needs
    ``k >= z * (sqrt(k) + sqrt(2k))``, i.e. ``k = z**2 (1 + sqrt 2)**2`` (31.5 for p99, so
    3,150 requests; at least one request beyond the percentile whatever the confidence).
    """
    tail = 1.0 - percentile / 100.0
    k = max(slo_z(percentile) ** 2 * (1.0 + math.sqrt(2.0)) ** 2, 1.0)
    return math.ceil(k / tail - 1e-6)


def sample_period_s(samples: Sequence[Sample]) -> float | None:
    """The median gap between the samples' timestamps (None with fewer than two)."""
    if isinstance(samples, window.SampleWindow):
        return samples.period_s()  # kept up to date as samples come and go
    gaps = [b.timestamp_s - a.timestamp_s for a, b in itertools.pairwise(samples)]
    gaps = [g for g in gaps if g > 0]
    return statistics.median(gaps) if gaps else None


def transition_steps(
    rate_per_s: float,
    weights: Sequence[float],
    percentile: float,
    min_dwell_s: float = MIN_STEP_DWELL_S,
    max_dwell_s: float = math.inf,
) -> tuple[Step, ...]:
    """A step per weight, each dwelling until the target's share of ``rate_per_s`` has sent the
    requests :func:`requests_for_percentile` asks for, within ``[min_dwell_s, max_dwell_s]``
    (the lower bound wins when they cross: a step must see a sample)."""
    needed = requests_for_percentile(percentile)
    steps = []
    for weight in weights:
        share = rate_per_s * weight
        dwell = math.inf if share <= 0 else needed / share
        dwell = max(min(dwell, max_dwell_s), min_dwell_s)
        steps.append(Step(weight=weight, dwell_s=dwell, expected_requests=share * dwell))
    return tuple(steps)


def sample_window_s(settings: ControlSettings) -> float:
    """How far back the controller's window of samples reaches: the longer stabilisation window
    (a move must see its whole window) plus two EWMA half-lives (the smoothed rate at the
    window's start has forgotten all but a quarter of what came before). The live stream keeps
    exactly this much per deployment and the replay hands the controller the same window, so
    the spread, trend and burstiness the replay's decisions see are the live controller's."""
    longer = max(settings.safety_window_s, settings.savings_window_s)
    return longer + 2.0 * settings.ewma_half_life_s


def expected_dwell_s(settings: ControlSettings, estimate: RateEstimate) -> float:
    """How long a plan chosen now is expected to stay in force, the time over which a switch's
    cost must be repaid (module docstring, item 7): ``settings.expected_dwell_s``, or, when the
    samples establish a rising trend (:func:`rising_trend`), the time that trend takes to carry
    the sizing rate past the top of the hysteresis band around it, ``band * sizing / trend``,
    whichever is shorter; at least one sample period. Over a rise, a migration that pays back
    its whole fleet's cold start only over an hour is followed by another long before then."""
    dwell = settings.expected_dwell_s
    if estimate.trend_per_s2 > 0 and estimate.sizing_per_s > 0:
        to_band = settings.hysteresis_band * estimate.sizing_per_s / estimate.trend_per_s2
        dwell = min(dwell, to_band)
    return max(dwell, estimate.sample_period_s or MIN_STEP_DWELL_S)


def step_dwell_bounds(samples: Sequence[Sample], settings: ControlSettings) -> tuple[float, float]:
    """(min, max) dwell of one step: one sample period (a step must see a sample), and the
    savings window shared by the steps (module docstring, item 8)."""
    period = sample_period_s(samples) or MIN_STEP_DWELL_S
    steps = max(len(settings.transition_weights), 1)
    return period, max(settings.savings_window_s / steps, period)


def is_scale(current: Plan, target: Plan) -> bool:
    """Whether ``target`` differs from ``current`` in the replica count alone."""
    return replace(target, replicas=current.replicas) == current


@dataclass(frozen=True)
class SwitchCost:
    """What a move costs beyond the running cost of the plan serving: ``cost`` in currency;
    ``ready_after_s`` until the target carries all traffic; ``overlap_s`` during which the
    old and the new capacity are both paid for (see :func:`switch_cost`)."""

    cost: float
    ready_after_s: float
    overlap_s: float


def switch_cost(
    current: Plan,
    target: Plan,
    candidates: Sequence[Candidate],
    steps: Sequence[Step] = (),
    keep_fallback: bool = True,
) -> SwitchCost:
    """What moving from ``current`` to ``target`` through ``steps`` costs, beyond the running
    cost of whichever plan carries the traffic (the plan in force until the target is ready,
    the target after).

    Until the target carries all traffic (its cold start, then every step before the last,
    full-weight one) the current plan serves and is paid for as usual: the extra is the
    target's capacity, booting or carrying a share. After that the target serves and the extra
    is the old capacity kept as a fallback through the last step's dwell (the old plan stays
    up until that step has verified the target). So a scale up bills the added replicas over
    their cold start (the replicas already running serve, and are paid for, throughout) and a
    scale down costs nothing (replicas are removed). The replay's naive and hindsight schedules
    pass no steps: they switch at once and pay the target's cold start alone. Without
    ``keep_fallback`` (a move away from a plan predicted or observed to break the SLO, where
    rolling back would not help) the old capacity goes as soon as the target carries all
    traffic. ``overlap_s`` is how long both plans are paid for.
    """
    if current == target:
        return SwitchCost(0.0, 0.0, 0.0)
    cold = _candidate(target, candidates).instance.cold_start_s
    price = _candidate(target, candidates).instance.price_per_hour
    if is_scale(current, target):
        added = target.replicas - current.replicas
        if added <= 0:
            return SwitchCost(0.0, 0.0, 0.0)
        return SwitchCost(price * added * cold / 3600.0, cold, cold)
    ready_s = cold + sum(s.dwell_s for s in steps[:-1])
    fallback_s = steps[-1].dwell_s if keep_fallback and steps else 0.0
    cost = (
        plan_cost_per_hour(target, candidates) * ready_s
        + plan_cost_per_hour(current, candidates) * fallback_s
    ) / 3600.0
    return SwitchCost(cost, ready_s, ready_s + fallback_s)


def breach(sample: Sample, slo: Slo, error_rate_limit: float) -> bool:
    return sample.p99_ms > slo.latency_ms or sample.error_rate > error_rate_limit


def panic_run(
    samples: Sequence[Sample], slo: Slo, error_rate_limit: float, since_s: float | None = None
) -> int:
    """How many of the newest samples in a row broke the SLO (observed p99 above the bound) or
    the error-rate limit, counting only samples taken after ``since_s`` (when the plan in force
    took over: a breach of the plan it replaced says nothing about it)."""
    run = 0
    for s in reversed(samples):
        if since_s is not None and s.timestamp_s <= since_s:
            break
        if breach(s, slo, error_rate_limit):
            run += 1
        else:
            break
    return run


def run_requests(samples: Sequence[Sample], run: int) -> float:
    """Requests the newest ``run`` samples covered (each sample's rate over the gap before it;
    the first sample of the window, with no gap, counts none)."""
    total = 0.0
    # The newest run + 1 samples hold the newest run pairs (read by index, not by listing
    # every pair of a long window; any sequence, a deque too, as before).
    newest = (samples[i] for i in range(max(len(samples) - run - 1, 0), len(samples)))
    pairs = list(itertools.pairwise(newest)) if run > 0 else []
    for prev, cur in pairs:
        total += cur.rate_per_s * (cur.timestamp_s - prev.timestamp_s)
    return total


def held_for_s(
    samples: Sequence[Sample], series: Sequence[float], outside: Callable[[float], bool]
) -> float:
    """Seconds the newest samples' ``series`` value has been ``outside`` without interruption
    (0 when the newest one is not)."""
    start: float | None = None
    for s, rate in zip(reversed(samples), reversed(series), strict=True):
        if not outside(rate):
            break
        start = s.timestamp_s
    return 0.0 if start is None else samples[-1].timestamp_s - start


def rising_trend(
    samples: Sequence[Sample], i: int, span_s: float, spread_per_s: float, z: float
) -> float:
    """The lower confidence bound of the rate's rise: the least-squares slope of the raw rate
    over the ``span_s`` seconds up to sample ``i`` less ``z`` standard errors
    (``spread / sqrt(Sxx)``), or 0 when that is not positive. The forecast follows only the part
    of a trend the samples establish at the SLO's confidence; a noisy or short rise adds
    nothing."""
    t_end = samples[i].timestamp_s
    j = i
    while j > 0 and samples[j - 1].timestamp_s >= t_end - span_s:
        j -= 1
    points = samples[j : i + 1]
    if len(points) < 3:
        return 0.0
    t_mean = sum(p.timestamp_s for p in points) / len(points)
    r_mean = sum(p.rate_per_s for p in points) / len(points)
    sxx = sum((p.timestamp_s - t_mean) ** 2 for p in points)
    if sxx <= 0:
        return 0.0
    slope = sum((p.timestamp_s - t_mean) * (p.rate_per_s - r_mean) for p in points) / sxx
    return max(slope - z * spread_per_s / math.sqrt(sxx), 0.0)


def sizing_series(
    samples: Sequence[Sample], settings: ControlSettings, slo: Slo, cold_start_s: float
) -> tuple[Sequence[float], RateEstimate]:
    """The sizing rate after each sample (computed as read), and the newest
    :class:`RateEstimate`.

    ``sizing = smoothed + trend * lead + z * spread`` (module docstring, item 1). The spread
    is ``sqrt(mean(diff(rate)**2) / 2)`` over the window (successive differences remove a slow
    trend; the halving undoes the difference of two samples' variances); the trend is
    :func:`rising_trend` over the last two half-lives (at least three sample periods).

    A :class:`~servewise.core.window.SampleWindow` answers from statistics it keeps up to date
    (the same values up to rounding); the code below is the reference it is tested against.
    """
    if isinstance(samples, window.SampleWindow):
        return samples.sizing_series(settings, slo, cold_start_s)
    smoothed = ewma_rates(samples, settings.ewma_half_life_s)
    period = sample_period_s(samples)
    lead = cold_start_s + (period or 0.0)
    # The spread as known after each sample (causal: history is judged as it was seen).
    spreads = [0.0]
    squares = 0.0
    for count, (a, b) in enumerate(itertools.pairwise(samples), start=1):
        squares += (b.rate_per_s - a.rate_per_s) ** 2
        spreads.append(math.sqrt(squares / (2 * count)))
    z = slo_z(slo.percentile)
    span = max(2.0 * settings.ewma_half_life_s, 3.0 * (period or 0.0))
    series = _SizingSeries(list(samples), smoothed, spreads, span, lead, z)
    newest = len(samples) - 1
    estimate = RateEstimate(
        smoothed[-1], series.trend(newest), spreads[-1], lead, series[newest], period
    )
    return series, estimate


class _SizingSeries(LazyFloats):
    """:func:`sizing_series`'s values, each computed when first read (the same expression,
    so the same floats). A trend costs a regression over the span before its sample, so the
    whole series costs O(window x span); a decision reads the newest value and, only when the
    rate is outside the band, the run of values before it (:func:`held_for_s`). Every Control
    sample evaluates, and most hold inside the band: computing the whole series each time was
    the largest per-sample cost of a healthy fleet's streams, growing with the window."""

    def __init__(
        self,
        samples: list[Sample],
        smoothed: list[float],
        spreads: list[float],
        span: float,
        lead: float,
        z: float,
    ) -> None:
        self._samples = samples
        self._smoothed = smoothed
        self._spreads = spreads
        self._span = span
        self._lead = lead
        self._z = z
        self._trends: list[float | None] = [None] * len(samples)

    def trend(self, i: int) -> float:
        found = self._trends[i]
        if found is None:
            found = rising_trend(self._samples, i, self._span, self._spreads[i], self._z)
            self._trends[i] = found
        return found

    def __len__(self) -> int:
        return len(self._samples)

    def _at(self, i: int) -> float:
        return self._smoothed[i] + self.trend(i) * self._lead + self._z * self._spreads[i]


def estimate_rate(
    samples: Sequence[Sample], settings: ControlSettings, slo: Slo, cold_start_s: float
) -> RateEstimate:
    """The newest :class:`RateEstimate` (see :func:`sizing_series`)."""
    return sizing_series(samples, settings, slo, cold_start_s)[1]


def p99_level_bound(requests: float, percentile: float) -> float:
    """The highest latency quantile level a sample's p99 over ``requests`` requests may stand
    for, at the confidence of the SLO ``percentile`` (:func:`slo_z`).

    The p99 of n requests is an order statistic: the number of them above the true
    ``level``-quantile is Binomial(n, 1 - level), so the observed p99 lies below the true
    quantile at ``0.99 + z * sqrt(0.99 * 0.01 / n)`` with that confidence, and no sample of n
    speaks of a level above ``n / (n + 1)`` (its largest request). Reading the burstiness at
    this level instead of 0.99 credits only what the sample shows beyond its own noise: where
    the p99 hardly moves with the CV (a batching delay dominates it) a 1 % difference between
    the model and the sample read as CV 2.5. The tail ``1 - level`` is rounded to two
    significant digits (the p99 curves are cached per level). 0.99 when ``requests`` is not
    positive.
    """
    return _p99_level_bound(requests, slo_z(percentile))


@functools.lru_cache(maxsize=CV_MEMO_PLANS * 16)
def _p99_level_bound(requests: float, z: float) -> float:
    """:func:`p99_level_bound` at the normal quantile ``z``; cached, as every evaluation reads
    the level of each sample of its window again (the same floats)."""
    if not requests > 0:
        return P99_LEVEL
    bound = P99_LEVEL + z * math.sqrt(P99_LEVEL * (1.0 - P99_LEVEL) / requests)
    bound = min(bound, requests / (requests + 1.0))
    tail = float(f"{1.0 - max(bound, P99_LEVEL):.2g}")
    return 1.0 - tail


def cv_for_latency(
    candidate: Candidate,
    plan: Plan,
    rate_per_s: float,
    observed_p99_ms: float,
    level: float = 0.99,
) -> float | None:
    """The inter-arrival CV at which the queueing model predicts ``observed_p99_ms`` for
    ``plan`` at ``rate_per_s`` as its ``level`` quantile (0.99: the sample's p99 taken at face
    value; :func:`p99_level_bound` for the least CV the sample shows with confidence), clamped
    to ``[MIN_ARRIVAL_CV, MAX_ARRIVAL_CV]``; None when the plan is unstable at that rate (the
    latency then says nothing about burstiness).

    Read off curves, not bisected: the p99 is predicted once per (profile, plan, rate on a
    grid of :data:`RATE_SIGNIFICANT_DIGITS` significant digits) at the CVs
    ``2**(k / CV_CURVE_POINTS_PER_DOUBLING)`` from 1 to 16 (:func:`_p99_curve`, shared by
    every deployment with that plan and every sample near that rate); ``observed_p99_ms`` is
    interpolated linearly in log CV on the curves at the grid rates either side of
    ``rate_per_s``, and those two CVs linearly in the rate. Every Control sample needs an
    answer, and a bisection of its own (26 predictions, each releasing and re-taking the GIL
    in the C kernel) was the largest part of a sample's cost under load. The answer is the
    bisection's to within the interpolation (``tests/core/test_control_cache.py`` pins 0.5 %).
    Memoised on the exact inputs too: every evaluation re-reads the whole window of samples,
    of which only the newest is new. The memo is found by the identity of ``candidate`` and
    ``plan`` (hashing a candidate hashes its whole latency table, a few microseconds per
    window sample per evaluation) and holds a window for each deployment (a global LRU of
    65,536 answers held a thousand deployments' windows only to ~150 samples, then every
    evaluation recomputed most of its window)."""
    memo_key = (id(candidate), id(plan))
    slot = _CV_MEMO.get(memo_key)
    if slot is None or slot[0] is not candidate or slot[1] is not plan:
        if len(_CV_MEMO) >= CV_MEMO_PLANS:
            _CV_MEMO.clear()
        # The slot holds the objects, so their ids cannot be reused while it exists.
        slot = _CV_MEMO[memo_key] = (candidate, plan, {})
    answers = slot[2]
    key = (rate_per_s, observed_p99_ms, level)
    if key in answers:
        return answers[key]
    found = _cv_for_latency(candidate, plan, rate_per_s, observed_p99_ms, level)
    if len(answers) >= CV_MEMO_ANSWERS_PER_PLAN:
        answers.clear()
    answers[key] = found
    return found


_CV_MEMO: dict[
    tuple[int, int], tuple[Candidate, Plan, dict[tuple[float, float, float], float | None]]
] = {}


def _cv_for_latency(
    candidate: Candidate, plan: Plan, rate_per_s: float, observed_p99_ms: float, level: float
) -> float | None:
    capacity = capacity_per_s(candidate.profile, plan.max_batch_size, plan.replicas)
    if rate_per_s >= capacity:
        return None
    # The grid points either side of the rate (RATE_SIGNIFICANT_DIGITS apart), interpolated
    # between: the curve at the nearest point alone was up to 6 % off near capacity, where
    # the p99 climbs steeply with the rate.
    step = 10.0 ** (math.floor(math.log10(rate_per_s)) - (RATE_SIGNIFICANT_DIGITS - 1))
    # A subnormal rate (5e-324/s) makes the step underflow to 0: no grid to interpolate on.
    low = math.floor(rate_per_s / step) * step if step > 0.0 else 0.0
    high = low + step
    if low <= 0.0 or high >= CV_CURVE_MAX_UTILISATION * capacity:
        # Near capacity the p99 is too steep in the rate to interpolate: this rate's own curve.
        curve = _p99_curve(candidate.profile, plan, rate_per_s, level)
        return _read_curve(curve, observed_p99_ms)
    at_low = _read_curve(_p99_curve(candidate.profile, plan, low, level), observed_p99_ms)
    at_high = _read_curve(_p99_curve(candidate.profile, plan, high, level), observed_p99_ms)
    return at_low + (at_high - at_low) * (rate_per_s - low) / step


def _read_curve(curve: tuple[list[float], list[float]], observed_p99_ms: float) -> float:
    """The CV at which ``curve`` reaches ``observed_p99_ms``, linear in log CV between its
    points, clamped to the bracket."""
    log_cvs, p99s = curve
    if observed_p99_ms <= p99s[0]:
        return MIN_ARRIVAL_CV
    if observed_p99_ms >= p99s[-1]:
        return MAX_ARRIVAL_CV
    # The first point at or above the observed p99 (the curve rises with the CV, as the
    # bisection it replaces assumed too).
    i = bisect.bisect_left(p99s, observed_p99_ms)
    lo, hi = p99s[i - 1], p99s[i]
    x = log_cvs[i - 1] + (log_cvs[i] - log_cvs[i - 1]) * (observed_p99_ms - lo) / (hi - lo)
    return min(max(math.exp(x), MIN_ARRIVAL_CV), MAX_ARRIVAL_CV)


@functools.lru_cache(maxsize=CV_CURVE_ENTRIES)
def _p99_curve(
    profile: LatencyProfile, plan: Plan, rate_per_s: float, level: float = 0.99
) -> tuple[list[float], list[float]]:
    """(log CV, predicted latency ms at ``level``) at the CV grid of :func:`cv_for_latency`:
    the model of :func:`queueing.predict` (each level is computed on its own), called on the C
    kernel with the tables and arguments built once."""
    steps = round(math.log2(MAX_ARRIVAL_CV / MIN_ARRIVAL_CV) * CV_CURVE_POINTS_PER_DOUBLING)
    log_cvs = [
        math.log(MIN_ARRIVAL_CV) + math.log(2.0) * k / CV_CURVE_POINTS_PER_DOUBLING
        for k in range(steps + 1)
    ]
    tables = queueing.ServiceTables.build([profile], [plan.max_batch_size])
    kind = np.zeros(1, dtype=np.int64)
    b = np.array([plan.max_batch_size], dtype=np.int64)
    t = np.array([plan.max_queue_delay_ms], dtype=np.float64)
    n = np.array([plan.replicas], dtype=np.int64)
    levels = np.array([level], dtype=np.float64)
    out = np.empty((1, 1))
    mean, batch, util = np.empty(1), np.empty(1), np.empty(1)
    p99s = np.empty(len(log_cvs))
    for k, log_cv in enumerate(log_cvs):
        _batchsim.predict_plans(
            tables.service_ms,
            tables.throughput,
            tables.service_ms.shape[1],
            kind,
            b,
            t,
            n,
            float(rate_per_s),
            math.exp(log_cv),
            levels,
            out,
            mean,
            batch,
            util,
        )
        p99s[k] = out[0, 0]
    # Plain floats: reading the curve is a bisect per sample, cheaper on a list than numpy.
    return log_cvs, [float(v) for v in p99s]


def estimate_arrival_cv(state: DeploymentState, samples: Sequence[Sample]) -> float:
    """The root-mean-square of :func:`cv_for_latency` over the samples served by the current
    plan (after ``plan_since_s``, with a p99 and a rate); the plan's ``planned_arrival_cv`` when
    there are none. CVs enter queueing delay squared, so their squares are averaged.

    Each sample's p99 is read at :func:`p99_level_bound` for the requests it covers (its rate
    over the gap since the sample before it; the median gap for the first): the burstiness the
    sample shows beyond the noise of a p99 over that many requests, at the SLO's confidence.

    A :class:`~servewise.core.window.SampleWindow` keeps the squares' total up to date (each
    sample's CV computed once); the code below is the reference it is tested against."""
    if isinstance(samples, window.SampleWindow):
        return samples.arrival_cv(state)
    candidate = _candidate(state.current_plan, state.candidates)
    since = -math.inf if state.plan_since_s is None else state.plan_since_s
    z = slo_z(state.slo.percentile)
    squares = []
    previous: Sample | None = None
    for s in samples:
        if previous is not None:
            gap = s.timestamp_s - previous.timestamp_s
        else:  # the first sample of the window: no gap before it, the median gap stands in
            gap = sample_period_s(samples) or 0.0
        previous = s
        if s.timestamp_s <= since or s.p99_ms <= 0 or s.rate_per_s <= 0:
            continue
        level = _p99_level_bound(s.rate_per_s * gap, z)
        cv = cv_for_latency(candidate, state.current_plan, s.rate_per_s, s.p99_ms, level)
        if cv is not None:
            squares.append(cv * cv)
    if not squares:
        return state.planned_arrival_cv
    return math.sqrt(sum(squares) / len(squares))


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
        The deployment: candidates, SLO, the plan in force and the rate and CV it was sized for.
    samples:
        Recent samples, oldest first, validated (finite, rates >= 0, timestamps non-decreasing).
    settings:
        Windows, band, dwell, smoothing, panic and transition settings.
    advise:
        The optimizer at a rate and CV (``advise(rate, cv)``); called at most once.
    """
    current = state.current_plan
    cold = _candidate(current, state.candidates).instance.cold_start_s
    series, estimate = sizing_series(samples, settings, state.slo, cold)
    rate = estimate.sizing_per_s
    cv = estimate_arrival_cv(state, samples)
    now = samples[-1].timestamp_s
    current_cost = plan_cost_per_hour(current, state.candidates)
    base = Evaluation(
        Decision.HOLD,
        Direction.NONE,
        "",
        estimate.smoothed_per_s,
        now,
        current_cost,
        sizing_rate_per_s=rate,
        arrival_cv=cv,
    )
    dwell = expected_dwell_s(settings, estimate)
    run = panic_run(samples, state.slo, settings.error_rate_limit, state.plan_since_s)
    needed = requests_for_percentile(state.slo.percentile)
    if run >= settings.panic_samples or (run > 0 and run_requests(samples, run) >= needed):
        return _panic(state, samples, settings, advise, run, base, dwell)

    sizing = (
        f"sizing rate {rate:.4g}/s (smoothed {estimate.smoothed_per_s:.4g}/s, trend "
        f"{estimate.trend_per_s2:+.3g}/s² over a {estimate.lead_s:.4g} s lead, spread "
        f"{estimate.spread_per_s:.3g}/s; arrival CV {cv:.3g})"
    )
    band = settings.hysteresis_band
    upper = state.planned_rate_per_s * (1.0 + band)
    lower = state.planned_rate_per_s * (1.0 - band)
    if lower <= rate <= upper:
        return replace(
            base,
            reason=f"{sizing} is inside the hysteresis band [{lower:.4g}, {upper:.4g}]/s around "
            f"the planned {state.planned_rate_per_s:.4g}/s",
        )
    if rate > upper:
        direction, window = Direction.SAFETY, settings.safety_window_s
        held = held_for_s(samples, series, lambda r: r > upper)
        side = f"above {upper:.4g}/s"
        advice = advise(rate, cv)
        if not advice.current_meets_slo:
            # A predicted breach: no window (module docstring, item 5).
            return _switch_or_hold(state, samples, settings, advice, direction, base, sizing, dwell)
    else:
        direction, window = Direction.SAVINGS, settings.savings_window_s
        held = held_for_s(samples, series, lambda r: r < lower)
        side = f"below {lower:.4g}/s"
        advice = None
    if held < window:
        return replace(
            base,
            direction=direction,
            reason=f"{sizing} has been {side} for {held:.4g} s of the {window:.4g} s "
            f"stabilisation window {direction.value}",
        )
    dwelling = ""
    if direction is Direction.SAVINGS and state.plan_since_s is not None:
        in_force = now - state.plan_since_s
        if in_force < settings.min_dwell_s:
            # The minimum dwell holds back migrations only: a scale down of the configuration
            # already serving shifts no traffic and needs nothing verified, so, like an HPA,
            # it waits for the savings stabilisation window alone (item 8).
            dwelling = (
                f"current plan in force for {in_force:.4g} s, under the minimum dwell of "
                f"{settings.min_dwell_s:.4g} s for a migration"
            )
    if direction is Direction.SAVINGS:
        # Like an HPA's scale-down stabilisation, a move toward savings is sized for the highest
        # sizing rate of its window, not the newest: the window proved the rate stayed below
        # the band, and its peak is what the smaller plan has seen it must carry.
        recent = [r for x, r in zip(samples, series, strict=True) if x.timestamp_s >= now - window]
        peak = max(recent)
        if peak > rate:
            sizing += f"; sized for the window's highest, {peak:.4g}/s"
            rate = peak
            base = replace(base, sizing_rate_per_s=rate)
    if advice is None:
        advice = advise(rate, cv)
    return _switch_or_hold(
        state, samples, settings, advice, direction, base, sizing, dwell, scale_only=dwelling
    )


def _plan_switch(
    state: DeploymentState,
    samples: Sequence[Sample],
    settings: ControlSettings,
    target: Plan,
    rate: float,
    weights: Sequence[float],
    keep_fallback: bool = True,
) -> tuple[tuple[Step, ...], SwitchCost]:
    """The steps and the cost of a move to ``target``: one verifying step for a scale, the
    ``weights`` for a migration."""
    low, high = step_dwell_bounds(samples, settings)
    current = state.current_plan
    if is_scale(current, target):
        steps = transition_steps(rate, (1.0,), state.slo.percentile, low, high)
        return steps, switch_cost(current, target, state.candidates)
    steps = transition_steps(rate, weights, state.slo.percentile, low, high)
    return steps, switch_cost(current, target, state.candidates, steps, keep_fallback)


def _switch_or_hold(
    state: DeploymentState,
    samples: Sequence[Sample],
    settings: ControlSettings,
    advice: Advice,
    direction: Direction,
    base: Evaluation,
    sizing: str,
    dwell_s: float,
    scale_only: str = "",
) -> Evaluation:
    """Switch to the option (the optimizer's best plan, or the current configuration scaled)
    with the larger net saving over ``dwell_s`` (:func:`expected_dwell_s`), or hold.
    ``scale_only``, when not empty, is why migrations are held back: only a scale is
    considered."""
    current = state.current_plan
    current_cost = base.current_cost_per_hour
    rate = base.sizing_rate_per_s
    target = advice.plan
    base = replace(base, direction=direction)
    options = [] if target is None else [target]
    if advice.scaled_plan is not None:
        options.append(advice.scaled_plan)
    if scale_only:
        options = [o for o in options if is_scale(current, o)]
    if target is None or not options:
        why = f"{scale_only}, and no scale of it pays at the {sizing}"
        if target is None:
            why = f"the optimizer found no stable plan at {rate:.4g}/s"
        return replace(base, reason=why)
    # A move away from a plan predicted to break the SLO goes in one step, as panic does: the
    # low-weight canary steps would keep most traffic on the failing plan.
    urgent = direction is Direction.SAFETY and not advice.current_meets_slo
    weights = (1.0,) if urgent else settings.transition_weights
    priced = []
    for option in options:
        option_steps, option_moved = _plan_switch(
            state, samples, settings, option, rate, weights, keep_fallback=not urgent
        )
        option_cost = plan_cost_per_hour(option, state.candidates)
        option_net = current_cost - option_cost - option_moved.cost / (dwell_s / 3600.0)
        priced.append((option_net, option, option_steps, option_moved))
    net, target, steps, moved = max(priced, key=lambda p: p[0])
    target_cost = plan_cost_per_hour(target, state.candidates)
    if target == current:
        return replace(
            base,
            reason=f"the best plan at the {sizing} is the current plan ({current.describe()})",
            target_plan=target,
            target_cost_per_hour=target_cost,
        )
    cost, ready = moved.cost, moved.ready_after_s
    saving = current_cost - target_cost
    numbered = replace(
        base,
        target_plan=target,
        target_cost_per_hour=target_cost,
        saving_per_hour=saving,
        switch_cost=cost,
        net_saving_per_hour=net,
        steps=steps,
        ready_after_s=ready,
        overlap_s=moved.overlap_s,
        away_from_breach=urgent,
    )
    kind = "scale" if is_scale(current, target) else f"migration in {len(steps)} steps"
    money = (
        f"${current_cost:.4g}/h now vs ${target_cost:.4g}/h for {target.describe()}: saving "
        f"${saving:.4g}/h, switch cost ${cost:.4g} ({kind}, target ready after {ready:.4g} s), "
        f"net ${net:.4g}/h over the expected {dwell_s:.4g} s"
    )
    if not advice.feasible:
        return _infeasible(state, advice, rate, numbered, money)
    if urgent:
        return replace(
            numbered,
            decision=Decision.SWITCH,
            reason=f"the current plan {current.describe()} is predicted to break the "
            f"p{state.slo.percentile:g} {state.slo.latency_ms:g} ms SLO at the {sizing}: {money}",
        )
    if net > 0:
        return replace(
            numbered,
            decision=Decision.SWITCH,
            reason=f"switching pays at the {sizing}: {money}",
        )
    return replace(numbered, reason=f"the switch does not pay at the {sizing}: {money}")


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
    dwell_s: float,
) -> Evaluation:
    current = state.current_plan
    newest = samples[-1]
    panic_rate = max(base.sizing_rate_per_s, newest.rate_per_s) * (1.0 + settings.hysteresis_band)
    advice = advise(panic_rate, base.arrival_cv)
    current_capacity = plan_capacity_per_s(current, state.candidates)
    target = advice.plan
    if target is None or plan_capacity_per_s(target, state.candidates) <= current_capacity:
        grown = math.ceil(current.replicas * (1.0 + settings.hysteresis_band))
        target = replace(current, replicas=max(current.replicas + 1, grown))
    # Panic moves in a single step, whatever the kind of switch.
    steps, moved = _plan_switch(
        state, samples, settings, target, panic_rate, (1.0,), keep_fallback=False
    )
    cost = moved.cost
    current_cost = base.current_cost_per_hour
    target_cost = plan_cost_per_hour(target, state.candidates)
    saving = current_cost - target_cost
    net = saving - cost / (dwell_s / 3600.0)
    return replace(
        base,
        decision=Decision.SWITCH,
        direction=Direction.SAFETY,
        reason=f"panic: the newest {run} samples broke the SLO (observed p99 "
        f"{newest.p99_ms:.4g} ms vs {state.slo.latency_ms:g} ms) or the error-rate limit "
        f"({newest.error_rate:.4g} vs {settings.error_rate_limit:g}); moving at once to "
        f"{target.describe()} sized for {panic_rate:.4g}/s at arrival CV "
        f"{base.arrival_cv:.3g} (${target_cost:.4g}/h vs ${current_cost:.4g}/h now)",
        target_plan=target,
        target_cost_per_hour=target_cost,
        saving_per_hour=saving,
        switch_cost=cost,
        net_saving_per_hour=net,
        steps=steps,
        panic=True,
        away_from_breach=True,
        sizing_rate_per_s=panic_rate,
        ready_after_s=moved.ready_after_s,
        overlap_s=moved.overlap_s,
    )


# --- The optimizer, cached --------------------------------------------------------------------


class AdviceCache:
    """A bounded LRU of optimizer answers keyed by (:func:`advice_key`, rate, CV) on the grid
    of :func:`advice_point`.

    The key holds everything the answer depends on, so an entry never goes stale, and
    deployments with the same content share entries. A key being computed is computed once:
    callers asking for it meanwhile wait for that answer (:meth:`get_or_compute`) or get its
    future (:meth:`submit`), so a thousand identical deployments crossing their band in the
    same second start one optimizer run, not a thousand.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Advice] = OrderedDict()
        self._pending: dict[Hashable, Future[Advice]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Advice | None:
        """The cached answer, or None (not counted as a miss: the caller decides what next)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return found

    def get_or_compute(self, key: Hashable, compute: Callable[[], Advice]) -> Advice:
        """The cached answer, else ``compute()`` run here (or the run already under way for
        ``key`` waited for), cached. An exception reaches every waiter and is not cached."""
        future, owner = self._claim(key)
        if owner:
            try:
                advice = compute()
            except BaseException as exc:
                self._settle(key, future, None, exc)
                raise
            self._settle(key, future, advice, None)
        return future.result()

    def submit(self, key: Hashable, start: Callable[[], Future[Advice]]) -> Future[Advice]:
        """A future of the answer: done at once on a hit, the run under way for ``key``, or a
        run ``start()`` begins (e.g. on an executor), cached when it finishes."""
        future, owner = self._claim(key)
        if owner:
            try:
                run = start()
            except BaseException as exc:
                self._settle(key, future, None, exc)
                raise

            def done(finished: Future[Advice]) -> None:
                exc = finished.exception()
                self._settle(key, future, None if exc else finished.result(), exc)

            run.add_done_callback(done)
        return future

    def _claim(self, key: Hashable) -> tuple[Future[Advice], bool]:
        """(the future of ``key``'s answer, whether the caller must produce it)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                hit: Future[Advice] = Future()
                hit.set_result(found)
                return hit, False
            pending = self._pending.get(key)
            if pending is not None:
                return pending, False
            self.misses += 1
            future: Future[Advice] = Future()
            self._pending[key] = future
            return future, True

    def _settle(
        self,
        key: Hashable,
        future: Future[Advice],
        advice: Advice | None,
        exc: BaseException | None,
    ) -> None:
        with self._lock:
            self._pending.pop(key, None)
            if advice is not None:
                self._entries[key] = advice
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        if advice is not None:
            future.set_result(advice)
        else:
            future.set_exception(exc if exc is not None else RuntimeError("no advice"))

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
    """``advise(rate, cv)`` backed by :func:`servewise.core.optimizer.optimize` (renewal
    arrivals at the rate with that inter-arrival CV), assessing the current plan at the same
    workload."""

    def advise(rate_per_s: float, arrival_cv: float = 1.0) -> Advice:
        workload = Workload(rate_per_s=rate_per_s, arrival_cv=arrival_cv)
        result = optimize(
            list(candidates),
            workload,
            slo,
            limits,
            current_plan=current_plan,
            seed=seed,
        )
        best = result.recommended
        current_ok = result.current is not None and result.current.meets_slo
        scaled = None
        if best is not None and result.feasible and not is_scale(current_plan, best.plan):
            scaled = _scaled_alternative(
                candidates,
                slo,
                limits,
                current_plan,
                best.cost_per_hour,
                workload,
                seed,
                current_meets_slo=current_ok,
            )
        return Advice(
            rate_per_s=rate_per_s,
            plan=None if best is None else best.plan,
            feasible=result.feasible,
            cost_per_hour=0.0 if best is None else best.cost_per_hour,
            current_meets_slo=current_ok,
            scaled_plan=scaled,
        )

    return advise


def _scaled_alternative(
    candidates: Sequence[Candidate],
    slo: Slo,
    limits: SearchLimits,
    current_plan: Plan,
    best_cost_per_hour: float,
    workload: Workload,
    seed: int,
    current_meets_slo: bool = True,
) -> Plan | None:
    """A scale of the current configuration that meets the SLO, by the optimizer's own
    assessment (the same confirmation as its recommendation): with as many replicas as
    ``best_cost_per_hour`` buys when that differs from the current count and meets it; else,
    when the current plan fails the SLO (``current_meets_slo`` false), the fewest replicas
    above both counts the queueing model says meet it (confirmed, or one more if not). That
    costs more than the best plan but may still be the cheaper move: it starts only the added
    replicas, where a migration starts a whole fleet (the controller weighs the two over the
    expected dwell, item 7). None when neither is found."""
    candidate = _candidate(current_plan, candidates)
    price = candidate.instance.price_per_hour
    replicas = min(math.floor(best_cost_per_hour / price + 1e-9), limits.max_replicas)

    def meets(count: int) -> bool:
        scaled = replace(current_plan, replicas=count)
        result = optimize(list(candidates), workload, slo, limits, current_plan=scaled, seed=seed)
        return result.current is not None and result.current.meets_slo

    if replicas >= 1 and replicas != current_plan.replicas and meets(replicas):
        return replace(current_plan, replicas=replicas)
    if current_meets_slo:
        return None  # the current plan is the cheapest scale that meets it, at or above
    for count in range(max(replicas, current_plan.replicas) + 1, limits.max_replicas + 1):
        scaled = replace(current_plan, replicas=count)
        capacity = capacity_per_s(candidate.profile, scaled.max_batch_size, count)
        if workload.rate_per_s >= capacity:
            continue
        predicted = queueing.predict(candidate.profile, scaled, workload, slo).slo_percentile_ms
        if predicted is None or predicted > slo.latency_ms:
            continue
        for confirmed in range(count, min(count + 1, limits.max_replicas) + 1):
            if meets(confirmed):
                return replace(current_plan, replicas=confirmed)
        return None
    return None


def advice_key(
    candidates: Sequence[Candidate], slo: Slo, limits: SearchLimits, current_plan: Plan
) -> Hashable:
    """What :func:`optimizer_advisor`'s answers depend on, as a cache key: deployments that
    share a model, SLO, limits and plan (replicas of one service, many tenants of one model)
    share its optimizer answers, and any change to them is a new key."""
    return (tuple(candidates), slo, limits, current_plan)


def grid_cv(arrival_cv: float) -> float:
    """``arrival_cv`` on the optimizer cache's grid (:data:`CV_GRID_PER_DOUBLING`): the nearest
    point in log scale, at least :data:`MIN_ARRIVAL_CV`."""
    if not arrival_cv > MIN_ARRIVAL_CV:
        return MIN_ARRIVAL_CV
    k = round(math.log2(arrival_cv) * CV_GRID_PER_DOUBLING)
    return max(float(f"{2.0 ** (k / CV_GRID_PER_DOUBLING):.4g}"), MIN_ARRIVAL_CV)


def advice_point(rate_per_s: float, arrival_cv: float) -> tuple[float, float]:
    """The (rate, CV) the optimizer is asked about for ``advise(rate_per_s, arrival_cv)``:
    the rate to :data:`RATE_SIGNIFICANT_DIGITS` (:func:`rounded_rate`), the CV on its grid
    (:func:`grid_cv`). The only way caching changes an answer."""
    return max(rounded_rate(rate_per_s), 1e-9), grid_cv(arrival_cv)


def compute_advice(
    candidates: Sequence[Candidate],
    slo: Slo,
    limits: SearchLimits,
    current_plan: Plan,
    rate_per_s: float,
    arrival_cv: float,
) -> Advice:
    """:func:`optimizer_advisor`'s answer as one module-level call (picklable with its
    arguments, so it can run in a worker process)."""
    return optimizer_advisor(candidates, slo, limits, current_plan)(rate_per_s, arrival_cv)


def cached_advisor(cache: AdviceCache, key: Hashable, advise: Advisor) -> Advisor:
    """``advise`` at the rate and CV of :func:`advice_point`, memoised in ``cache`` under
    ``(key, rate, cv)``; ``key`` must change whenever the answer could (:func:`advice_key`)."""

    def cached(rate_per_s: float, arrival_cv: float = 1.0) -> Advice:
        rate, cv = advice_point(rate_per_s, arrival_cv)
        return cache.get_or_compute((key, rate, cv), lambda: advise(rate, cv))

    return cached
