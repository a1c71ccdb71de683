"""The controller's caches and fast paths give the answers of the plain computation (up to the
documented quantisation of the optimizer's inputs)."""

from __future__ import annotations

import math
import random

import pytest

from servewise.core import control, queueing
from servewise.core.model import Plan, Workload
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile


def candidate() -> Candidate:
    """s(b) = 5 + 2b ms, batches up to 64."""
    sizes = tuple(range(1, 65))
    return Candidate(
        InstanceType("gpu", 1.0), LatencyProfile(sizes, tuple(5.0 + 2.0 * b for b in sizes))
    )


def bisected_cv(
    c: Candidate, plan: Plan, rate_per_s: float, observed_p99_ms: float
) -> float | None:
    """The CV found by bisection (24 halvings in log CV) over :func:`queueing.predict`: what
    :func:`control.cv_for_latency` computed per sample before it read a shared curve."""
    if rate_per_s >= control.plan_capacity_per_s(plan, (c,)):
        return None

    def p99(cv: float) -> float:
        return queueing.predict(c.profile, plan, Workload(rate_per_s, cv), None).p99_ms

    if observed_p99_ms <= p99(control.MIN_ARRIVAL_CV):
        return control.MIN_ARRIVAL_CV
    if observed_p99_ms >= p99(control.MAX_ARRIVAL_CV):
        return control.MAX_ARRIVAL_CV
    lo, hi = math.log(control.MIN_ARRIVAL_CV), math.log(control.MAX_ARRIVAL_CV)
    for _ in range(24):
        mid = (lo + hi) / 2
        if p99(math.exp(mid)) < observed_p99_ms:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def test_cv_for_latency_reads_the_bisections_answer_off_the_shared_curve() -> None:
    """Over random plans (real-time, batching with and without a delay), rates up to 98 % of
    capacity and observed p99s, the curves' answer is within 0.5 % of the bisection's; both
    agree on None."""
    rng = random.Random(7)
    c = candidate()
    plans = [Plan("gpu", 1, 0.0, 20), Plan("gpu", 8, 5.0, 10), Plan("gpu", 16, 0.0, 4)]
    checked = 0
    for _ in range(120):
        plan = rng.choice(plans)
        capacity = control.plan_capacity_per_s(plan, (c,))
        rate = capacity * rng.uniform(0.05, 1.05)
        observed = rng.uniform(1.0, 400.0)
        exact = bisected_cv(c, plan, rate, observed)
        fast = control.cv_for_latency(c, plan, rate, observed)
        if exact is None:
            assert fast is None
            continue
        assert fast is not None
        assert fast == pytest.approx(exact, rel=0.005)
        checked += 1.0 < exact < 16.0
    assert checked >= 20  # the curve itself was read, not only the clamps
