"""A deployment's recent samples with the controller's window statistics kept up to date.

:func:`servewise.core.control.evaluate` reads, on every sample, statistics of the whole sample
window: the EWMA of the rate (started at the window's oldest sample), the spread of successive
differences (accumulated from the oldest sample), the median sample period, the rising trend
over the last two half-lives, and the RMS of the arrival CVs the observed p99s imply. Computed
from the samples each time (the reference functions in :mod:`servewise.core.control`, which
plain sequences still go through), that is a Python pass over up to 420 samples per sample at
the default settings: O(window) per sample, O(window²) over a deployment's life, and ~0.6 ms per
HOLD, which a 1,000-stream fleet cannot afford once its windows are full.

:class:`SampleWindow` is a sequence of samples (oldest first) that keeps, per sample, what
those statistics need, so a new sample costs a constant amount of work:

- the EWMA from an *anchor* sample at or before the window's head (``a``); the EWMA from the head
  is the same recurrence with another start, so the two differ by the start's difference decayed
  over the time since the head: ``a[i] + (rate[head] - a[head]) * 2**(-(t[i] - t[head]) / h)``;
- prefix sums of the squared successive differences, so the spread as known after any sample of
  the window is one subtraction;
- the positive gaps between samples, sorted, so the median period is read, not sorted;
- each sample's regression over the span before it (slope and ``sqrt(Sxx)``), from running sums
  over a sliding span, so the trend is ``slope - z * spread / sqrt(Sxx)`` with the spread of the
  moment;
- each sample's squared arrival CV and their running total, for the state (candidate, plan,
  plan start, planned CV) last asked about.

Every value is the reference formula's up to floating-point rounding (the sums are formed in
another order): ``tests/core/test_window.py`` checks them against the reference functions on
random sample sequences, and the controller's decisions on long runs. The anchor and the sums
are rebuilt from the head whenever half as many samples have left the window as remain in it
(the storage is compacted then too), which bounds how far the rounding can drift and keeps the work
amortised O(1). What depends on settings or state (half-life, span, candidate and plan) is
filled in lazily when read, and rebuilt when they change.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import cast, overload

from servewise.core import control
from servewise.core.lazyseq import LazyFloats
from servewise.core.model import Plan, Slo
from servewise.core.profiles import Candidate

# Compaction (and the rebuild of the anchored sums) waits for at least this many dropped
# samples, and for half as many as remain (so storage is at most 1.5 times the window), plus
# a slack of up to COMPACT_SLACK_SAMPLES taken from the first sample's timestamp: windows
# filled in step (a fleet's streams started together) would otherwise all compact, ~0.3 ms
# each, in the same second, every half window.
MIN_COMPACT_SAMPLES = 32
COMPACT_SLACK_SAMPLES = 128
# A window's spread is recomputed from the samples when the sum before the head is this many
# times the window's own (the subtraction would lose more than ~1e-10 of it to rounding).
SPREAD_CANCELLATION_LIMIT = 1e6


class SampleWindow(Sequence["control.Sample"]):
    """The samples of one deployment, oldest first, at most ``maxlen`` (the oldest drop out).

    Timestamps must not decrease (the Control stream validates that before appending)."""

    def __init__(self, samples: Iterable[control.Sample] = (), maxlen: int | None = None) -> None:
        self.maxlen = maxlen
        self._reset()
        for sample in samples:
            self.append(sample)

    def _reset(self) -> None:
        # None where a sample has left (only indices from the head on are read).
        self._samples: list[control.Sample | None] = []
        # Storage index of the window's oldest sample (everything before it has left).
        self._head = 0
        self._slack = 0
        self._ts = array("d")
        self._rates = array("d")
        # Prefix sums of (rate[i] - rate[i-1])**2 (0 at the first sample stored).
        self._squares = array("d")
        # The positive gaps between consecutive samples of the window, sorted.
        self._gaps = array("d")
        # EWMA from the anchor (a storage index at or before the head), filled for
        # ``_ewma_half_life`` up to ``len(_ewma)``.
        self._anchor = 0
        self._ewma = array("d")
        self._ewma_half_life: float | None = None
        # Per-sample regression over the span before it, for ``_trend_span``: slope, sqrt(Sxx)
        # (NaN when the trend is 0 whatever the spread) and the storage index of its first point.
        self._trend_span: float | None = None
        self._slopes = array("d")
        self._root_sxx = array("d")
        self._trend_from = array("q")
        self._reg = _SlidingRegression()
        # Squared arrival CVs (NaN: sample not counted) for the state ``_cv_key``, their total
        # and count over the window.
        self._cv_key: tuple[object, ...] | None = None
        self._cv2 = array("d")
        self._cv_total = 0.0
        self._cv_count = 0

    # --- The sequence -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._samples) - self._head

    @overload
    def __getitem__(self, index: int) -> control.Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[control.Sample]: ...

    def __getitem__(self, index: int | slice) -> control.Sample | list[control.Sample]:
        if isinstance(index, slice):
            return cast(list[control.Sample], self._samples[self._head :][index])
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(index)
        return cast(control.Sample, self._samples[self._head + i])

    def __iter__(self) -> Iterator[control.Sample]:
        return cast(Iterator[control.Sample], islice(self._samples, self._head, None))

    def __reversed__(self) -> Iterator[control.Sample]:
        return cast(Iterator[control.Sample], islice(reversed(self._samples), len(self)))

    def since(self, timestamp_s: float) -> list[control.Sample]:
        """The samples taken at or after ``timestamp_s``, oldest first."""
        start = bisect.bisect_left(self._ts, timestamp_s, self._head)
        return cast(list[control.Sample], self._samples[start:])

    def append(self, sample: control.Sample) -> None:
        if self._samples:
            gap = sample.timestamp_s - self._ts[-1]
            if gap > 0:
                bisect.insort(self._gaps, gap)
            squares = self._squares[-1] + (sample.rate_per_s - self._rates[-1]) ** 2
        else:
            squares = 0.0
            self._slack = int(sample.timestamp_s * 1000.0) % COMPACT_SLACK_SAMPLES
        self._samples.append(sample)
        self._ts.append(sample.timestamp_s)
        self._rates.append(sample.rate_per_s)
        self._squares.append(squares)
        if self.maxlen is not None and len(self) > self.maxlen:
            self.popleft()

    def popleft(self) -> control.Sample:
        h = self._head
        if h >= len(self._samples):
            raise IndexError("pop from an empty window")
        oldest = cast(control.Sample, self._samples[h])
        # Let it go now (the storage is compacted only once half of it has left).
        self._samples[h] = None
        if h + 1 < len(self._samples):
            gap = self._ts[h + 1] - self._ts[h]
            if gap > 0:
                del self._gaps[bisect.bisect_left(self._gaps, gap)]
        if h < len(self._cv2):
            cv2 = self._cv2[h]
            if not math.isnan(cv2):
                self._cv_total -= cv2
                self._cv_count -= 1
        self._head = h + 1
        if self._head == len(self._samples):
            self._reset()  # emptied: nothing kept applies to what comes next
        elif self._head >= MIN_COMPACT_SAMPLES + self._slack and (
            2 * self._head >= len(self._samples) - self._head + self._slack
        ):
            self._compact()
        return oldest

    def clear(self) -> None:
        self._reset()

    def _compact(self) -> None:
        """Drop the storage of samples that left, and rebuild the anchored sums from the head
        (bounding their rounding): O(window), once per window's worth of dropped samples."""
        h = self._head
        del self._samples[:h]
        del self._ts[:h]
        del self._rates[:h]
        self._head = 0
        self._anchor = 0
        squares = array("d", [0.0])
        for a, b in zip(self._rates, self._rates[1:], strict=False):
            squares.append(squares[-1] + (b - a) ** 2)
        self._squares = squares
        self._ewma = array("d")  # refilled from the new anchor when read
        filled = len(self._slopes) - h
        if filled > 0:
            del self._slopes[:h]
            del self._root_sxx[:h]
            self._trend_from = array("q", (j - h for j in self._trend_from[h:]))
        else:
            self._trend_span = None
        self._reg.shift(h)
        if len(self._cv2) > h:
            del self._cv2[:h]
            values = [v for v in self._cv2 if not math.isnan(v)]
            self._cv_total, self._cv_count = sum(values), len(values)
        else:
            self._cv_key = None

    # --- Statistics ---------------------------------------------------------------------------

    def period_s(self) -> float | None:
        """:func:`control.sample_period_s` of the window: the median positive gap."""
        gaps = self._gaps
        n = len(gaps)
        if n == 0:
            return None
        if n % 2 == 1:
            return gaps[n // 2]
        return (gaps[n // 2 - 1] + gaps[n // 2]) / 2

    def _fill_ewma(self, half_life_s: float) -> None:
        if self._ewma_half_life != half_life_s:
            self._ewma_half_life = half_life_s
            self._ewma = array("d")
        ewma, ts, rates = self._ewma, self._ts, self._rates
        if not ewma:
            self._anchor = self._head
            ewma.extend([0.0] * self._head)  # storage before the anchor is never read
            ewma.append(rates[self._head])
        for p in range(len(ewma), len(rates)):
            dt = ts[p] - ts[p - 1]
            alpha = 1.0 if half_life_s <= 0 else 1.0 - 2.0 ** (-dt / half_life_s)
            ewma.append(ewma[-1] + alpha * (rates[p] - ewma[-1]))

    def smoothed(self, p: int) -> float:
        """The EWMA (of :meth:`_fill_ewma`'s half-life) started at the head, at storage ``p``."""
        h = self._head
        if p == h:
            return self._rates[h]
        ewma = self._ewma
        if h == self._anchor:
            return ewma[p]
        half_life_s = self._ewma_half_life
        assert half_life_s is not None
        if half_life_s <= 0:
            return self._rates[p]
        decay: float = 2.0 ** (-(self._ts[p] - self._ts[h]) / half_life_s)
        return ewma[p] + (self._rates[h] - ewma[h]) * decay

    def spread(self, p: int) -> float:
        """The spread of the successive differences from the head to storage ``p``."""
        h = self._head
        count = p - h
        if count <= 0:
            return 0.0
        squares = self._squares[p] - self._squares[h]
        if self._squares[h] > SPREAD_CANCELLATION_LIMIT * squares:
            rates = self._rates
            squares = math.fsum((rates[q] - rates[q - 1]) ** 2 for q in range(h + 1, p + 1))
        return math.sqrt(squares / (2 * count))

    def _fill_trends(self, span_s: float) -> None:
        if self._trend_span != span_s:
            self._trend_span = span_s
            self._slopes, self._root_sxx, self._trend_from = array("d"), array("d"), array("q")
            self._reg = _SlidingRegression()
        slopes, roots, starts = self._slopes, self._root_sxx, self._trend_from
        if len(slopes) < self._head:
            pad = self._head - len(slopes)
            slopes.extend([math.nan] * pad)
            roots.extend([math.nan] * pad)
            starts.extend([-1] * pad)
        reg, ts, rates = self._reg, self._ts, self._rates
        for p in range(len(slopes), len(ts)):
            slope, root = reg.advance(ts, rates, self._head, p, span_s)
            slopes.append(slope)
            roots.append(root)
            starts.append(reg.start)

    def trend(self, p: int, spread_per_s: float, z: float) -> float:
        """:func:`control.rising_trend` at storage ``p`` (of :meth:`_fill_trends`' span)."""
        if self._trend_from[p] < self._head:
            # Its span reached past today's head when it was computed: the head clips it now.
            span = self._trend_span
            assert span is not None
            return control.rising_trend(self, p - self._head, span, spread_per_s, z)
        root = self._root_sxx[p]
        if math.isnan(root):  # fewer than three points, or no spread of time
            return 0.0
        return max(self._slopes[p] - z * spread_per_s / root, 0.0)

    def sizing_series(
        self, settings: control.ControlSettings, slo: Slo, cold_start_s: float
    ) -> tuple[Sequence[float], control.RateEstimate]:
        """:func:`control.sizing_series` of the window."""
        if not len(self):
            raise ValueError("samples: at least one sample is required")
        period = self.period_s()
        lead = cold_start_s + (period or 0.0)
        z = control.slo_z(slo.percentile)
        span = max(2.0 * settings.ewma_half_life_s, 3.0 * (period or 0.0))
        self._fill_ewma(settings.ewma_half_life_s)
        self._fill_trends(span)
        series = _WindowSeries(self, lead, z)
        newest = len(self._samples) - 1
        spread = self.spread(newest)
        trend = self.trend(newest, spread, z)
        smoothed = self.smoothed(newest)
        sizing = smoothed + trend * lead + z * spread
        estimate = control.RateEstimate(smoothed, trend, spread, lead, sizing, period)
        return series, estimate

    def arrival_cv(self, state: control.DeploymentState) -> float:
        """:func:`control.estimate_arrival_cv` of the window.

        Each sample's squared CV is computed once, at the level its p99 may stand for over
        the requests since the sample stored before it, and kept in the running total. The
        reference reads the window's first sample over the median gap instead (it has no
        sample before it in the window): that one term is swapped in when asked."""
        plan = state.current_plan
        candidate = control._candidate(plan, state.candidates)
        since = -math.inf if state.plan_since_s is None else state.plan_since_s
        z = control.slo_z(state.slo.percentile)
        key = self._cv_key
        if key is None or not (
            key[2] == since
            and key[3] == z
            and (key[0] is candidate or key[0] == candidate)
            and (key[1] is plan or key[1] == plan)
        ):
            self._cv_key = (candidate, plan, since, z)
            self._cv2 = array("d", [math.nan] * self._head)
            self._cv_total, self._cv_count = 0.0, 0
        elif key[0] is not candidate or key[1] is not plan:
            # Equal objects: keep the answers, and compare by identity from now on.
            self._cv_key = (candidate, plan, since, z)
        cv2 = self._cv2
        for p in range(len(cv2), len(self._samples)):
            # The first sample stored has no gap before it: it counts only as the window's
            # first, below.
            value = math.nan
            if p > 0:
                value = self._sample_cv2(
                    candidate, plan, since, z, p, self._ts[p] - self._ts[p - 1]
                )
                if not math.isnan(value):
                    self._cv_total += value
                    self._cv_count += 1
            cv2.append(value)
        total, count = self._cv_total, self._cv_count
        head = self._head
        if head < len(self._samples):
            stored = cv2[head]
            if not math.isnan(stored):
                total -= stored
                count -= 1
            first = self._sample_cv2(candidate, plan, since, z, head, self.period_s() or 0.0)
            if not math.isnan(first):
                total += first
                count += 1
        if not count:
            return state.planned_arrival_cv
        return math.sqrt(max(total, 0.0) / count)

    def _sample_cv2(
        self,
        candidate: Candidate,
        plan: Plan,
        since: float,
        z: float,
        p: int,
        gap_s: float,
    ) -> float:
        """The squared CV of the sample at storage index ``p`` over ``gap_s`` (NaN: not
        counted), as :func:`control.estimate_arrival_cv` computes it."""
        s = cast(control.Sample, self._samples[p])
        if not (s.timestamp_s > since and s.p99_ms > 0 and s.rate_per_s > 0):
            return math.nan
        level = control._p99_level_bound(s.rate_per_s * gap_s, z)
        # The memo of cv_for_latency is for whole windows read again; each sample is read here
        # once (and the window's first once per query).
        cv = control._cv_for_latency(candidate, plan, s.rate_per_s, s.p99_ms, level)
        return math.nan if cv is None else cv * cv


class _WindowSeries(LazyFloats):
    """The sizing rate after each sample of a :class:`SampleWindow`, computed when read."""

    def __init__(self, window: SampleWindow, lead: float, z: float) -> None:
        self._window = window
        self._lead = lead
        self._z = z
        self._len = len(window)

    def __len__(self) -> int:
        return self._len

    def _at(self, i: int) -> float:
        w = self._window
        p = w._head + i
        spread = w.spread(p)
        return w.smoothed(p) + w.trend(p, spread, self._z) * self._lead + self._z * spread


class _SlidingRegression:
    """Sums for the least-squares slope of rate on time over a span that slides forward,
    relative to a reference point (so the sums stay small next to what they subtract) that is
    reset, and the sums recomputed, once the span has turned over."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = 0  # storage index of the first point
        self.end = -1  # storage index of the last point (start > end: empty)
        self._t0 = 0.0
        self._r0 = 0.0
        self._n = 0
        self._st = self._sr = self._stt = self._str = 0.0
        self._added = 0

    def shift(self, by: int) -> None:
        """Storage indices moved down by ``by`` (compaction)."""
        if self.start >= by:
            self.start -= by
            self.end -= by
        else:
            self.reset()

    def _rebuild(self, ts: array[float], rates: array[float]) -> None:
        self._t0, self._r0 = ts[self.start], rates[self.start]
        self._n = 0
        self._st = self._sr = self._stt = self._str = 0.0
        self._added = 0
        for q in range(self.start, self.end + 1):
            self._add(ts[q], rates[q])
        self._added = 0

    def _add(self, t: float, r: float) -> None:
        dt, dr = t - self._t0, r - self._r0
        self._n += 1
        self._st += dt
        self._sr += dr
        self._stt += dt * dt
        self._str += dt * dr
        self._added += 1

    def _remove(self, t: float, r: float) -> None:
        dt, dr = t - self._t0, r - self._r0
        self._n -= 1
        self._st -= dt
        self._sr -= dr
        self._stt -= dt * dt
        self._str -= dt * dr

    def advance(
        self, ts: array[float], rates: array[float], head: int, p: int, span_s: float
    ) -> tuple[float, float]:
        """Slide to the points of :func:`control.rising_trend` at storage ``p`` (those at most
        ``span_s`` before it, from ``head`` on) and return (slope, sqrt(Sxx)), NaN for the
        second when the trend is 0 whatever the spread."""
        if self.end < self.start or self.end != p - 1:
            # Not the sample after the last one: the points from the head on, summed afresh.
            self.start, self.end = head, p
            self._rebuild(ts, rates)
        else:
            self.end = p
            self._add(ts[p], rates[p])
        bound = ts[p] - span_s
        while self.start < p and (self.start < head or ts[self.start] < bound):
            self._remove(ts[self.start], rates[self.start])
            self.start += 1
        if self._added >= max(self._n, 16):
            self._rebuild(ts, rates)
        n = self._n
        if n < 3 or ts[self.start] == ts[p]:
            return math.nan, math.nan
        sxx = self._stt - self._st * self._st / n
        if not sxx > 0:
            sxx, sxy = _centred_sums(ts, rates, self.start, p)
            if not sxx > 0:
                return math.nan, math.nan
        else:
            sxy = self._str - self._st * self._sr / n
        return sxy / sxx, math.sqrt(sxx)


def _centred_sums(ts: array[float], rates: array[float], j: int, p: int) -> tuple[float, float]:
    """(Sxx, Sxy) of the points ``j..p`` as :func:`control.rising_trend` forms them."""
    points = range(j, p + 1)
    n = len(points)
    t_mean = sum(ts[q] for q in points) / n
    r_mean = sum(rates[q] for q in points) / n
    sxx = sum((ts[q] - t_mean) ** 2 for q in points)
    sxy = sum((ts[q] - t_mean) * (rates[q] - r_mean) for q in points)
    return sxx, sxy
