"""PlanResources' core: the replica curve, dedicated, autoscaled and shared strategies.

Profiles: the Azure LLM conversation trace (one hour, 19,366 requests) counted per minute, and a
documented sine. The model is a linear fit of the published T4 FP32 ResNet-50 table on
g4dn.xlarge (as tests/api/api_builders.py uses).
"""

from __future__ import annotations

import csv
import math
import os
from datetime import datetime
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile
from servewise.core.resources import (
    DAY_S,
    DAYS_PER_MONTH,
    AutoscalerSettings,
    Deployment,
    RateProfile,
    Strategy,
    dedicated,
    fitting_target,
    plan_resources,
    replica_curve,
    simulate_autoscaler,
)
from servewise.core.simulator import capacity_per_s, simulate

DATA_DIR = Path(os.environ.get("SERVEWISE_DATA_DIR", "/work/shared/data"))
CONV_TRACE = DATA_DIR / "traces" / "AzureLLMInferenceTrace_conv.csv"

T4 = Candidate(
    InstanceType("g4dn.xlarge", 0.526, max_batch_size=64, cold_start_s=45.0),
    LatencyProfile.linear(5.24, 2.288, 64),
)
SLO = Slo(300.0)
PLAN = Plan("g4dn.xlarge", 16, 10.0, 1)
# The trace's rates times this (as if this many such chat services' traffic were merged):
# about 1,600 requests/s on average, a few to a dozen T4 replicas.
TRACE_SCALE = 300


@cache
def conv_counts_per_minute() -> tuple[int, ...]:
    """Requests of the Azure conversation trace in each minute of its hour."""
    with CONV_TRACE.open(newline="") as f:
        stamps = [datetime.fromisoformat(row["TIMESTAMP"]) for row in csv.DictReader(f)]
    seconds = np.array([(t - stamps[0]).total_seconds() for t in stamps])
    return tuple(int(c) for c in np.bincount((seconds // 60).astype(np.int64), minlength=60))


def trace_profile(scale: float = TRACE_SCALE) -> RateProfile:
    counts = np.array(conv_counts_per_minute(), dtype=np.float64)
    return RateProfile.of(np.arange(len(counts)) * 60.0, counts / 60.0 * scale)


def sine_profile(points: int = 1440, mean: float = 1000.0, swing: float = 0.7) -> RateProfile:
    """A day per minute: mean * (1 + swing * sin), lowest at 06:00, highest at 18:00."""
    minutes = np.arange(points)
    rates = mean * (1.0 + swing * np.sin(2.0 * np.pi * (minutes / points - 0.5)))
    return RateProfile.of(minutes * 60.0, np.maximum(rates, 0.0))


def test_profile_conventions() -> None:
    """The last point lasts as long as the one before it; one point lasts an hour."""
    profile = RateProfile.of([0.0, 60.0, 180.0], [1.0, 2.0, 3.0])
    assert profile.end_s == 300.0
    assert profile.total_requests == pytest.approx(60 * 1 + 120 * 2 + 120 * 3)
    assert RateProfile.of([10.0], [5.0]).span_s == 3600.0


def test_replica_curve_is_monotone_and_meets_the_slo_in_simulation() -> None:
    """At sampled rates, the curve's replica count meets the SLO in a long independent
    simulation, and the count is non-decreasing in the rate."""
    profile = trace_profile()
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64)
    assert np.all(np.diff(curve.replicas) >= 0)
    for rate in np.quantile(profile.rates_per_s, [0.1, 0.5, 0.9, 1.0]):
        n = int(curve.need(np.array([rate]))[0])
        result = simulate(
            T4.profile,
            Plan(PLAN.instance_type, 16, 10.0, n),
            Workload(float(rate)),
            100_000,
            seed=99,
            slo=SLO,
        )
        assert result.latency.slo_percentile_ms is not None
        assert result.latency.slo_percentile_ms <= SLO.latency_ms, (rate, n)


def test_dedicated_cost_is_peak_replicas_all_day() -> None:
    """Dedicated bills N(peak) for the whole profile: cost per day = N * price * 24 (the hour
    is taken as a representative day), per month = per day * 30.44, utilisation = served over
    provisioned capacity."""
    profile = trace_profile()
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64)
    outcome = dedicated(profile, curve, T4.instance.price_per_hour)
    n = int(curve.need(np.array([profile.peak_per_s]))[0])
    assert outcome.peak_replicas == n
    assert outcome.cost_per_day == pytest.approx(n * 0.526 * 24)
    assert outcome.cost_per_month == pytest.approx(outcome.cost_per_day * DAYS_PER_MONTH)
    c1 = capacity_per_s(T4.profile, 16, 1)
    assert outcome.mean_utilisation == pytest.approx(
        profile.total_requests / (n * c1 * profile.span_s)
    )
    assert outcome.cost_per_million_requests == pytest.approx(
        outcome.cost / profile.total_requests * 1e6
    )
    assert outcome.slo_risk_minutes == 0.0


def test_autoscaler_steady_rate_needs_no_scaling() -> None:
    """A flat profile: the autoscaler holds ceil(rate / (c1 * target)) replicas, ready."""
    profile = RateProfile.of([0.0, 3600.0], [500.0, 500.0])
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64, check_by_simulation=False)
    c1 = curve.capacity_per_replica_s
    settings = AutoscalerSettings(1, 50, 0.5)
    outcome = simulate_autoscaler(profile, curve, settings, 1.0)
    expected = math.ceil(500.0 / (c1 * 0.5))
    assert outcome.peak_replicas == expected
    assert outcome.mean_replicas == pytest.approx(expected)
    assert outcome.cost_per_day == pytest.approx(expected * DAY_S / 3600.0)


def test_autoscaler_cold_start_lag_is_risk_and_billing_starts_at_the_order() -> None:
    """A step from 100/s to 2,000/s: replicas ordered at the step are billed at once but serve
    only after the start-up delay, so the SLO is at risk for that delay (up window 0)."""
    profile = RateProfile.of([0.0, 600.0, 1200.0], [100.0, 2000.0, 2000.0])
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64, check_by_simulation=False)
    settings = AutoscalerSettings(1, 50, 0.8, startup_delay_s=90.0, scale_down_window_s=300.0)
    outcome = simulate_autoscaler(profile, curve, settings, 3.6)
    assert outcome.slo_risk_minutes == pytest.approx(90.0 / 60.0)
    timeline = outcome.timeline
    assert timeline is not None
    ordered = int(np.flatnonzero(timeline.change_s == 600.0)[0])
    assert timeline.billed[ordered] > timeline.billed[0]
    assert timeline.serving[ordered] == timeline.serving[0]
    # Cost: billed replica-seconds * 3.6 / 3600 = replica-seconds / 1000 over the profile.
    assert outcome.cost == pytest.approx(outcome.billed_replica_s * 3.6 / 3600.0)


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    """After a drop the replicas stay for scale_down_window_s before going."""
    profile = RateProfile.of([0.0, 600.0, 1200.0, 3000.0], [2000.0, 100.0, 100.0, 100.0])
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64, check_by_simulation=False)
    settings = AutoscalerSettings(1, 50, 0.8, scale_down_window_s=300.0)
    timeline = simulate_autoscaler(profile, curve, settings, 1.0).timeline
    assert timeline is not None
    drop = timeline.change_s[timeline.billed < timeline.billed[0]]
    assert drop[0] == pytest.approx(900.0)


def test_fitting_target_covers_the_curve() -> None:
    """With the fitting target, ceil(rate / (c1 u)) >= N*(rate) at every profile rate."""
    profile = trace_profile()
    curve = replica_curve(T4, PLAN, SLO, profile, ceiling=64)
    u = fitting_target(profile, curve)
    implied = np.ceil(profile.rates_per_s / (curve.capacity_per_replica_s * u))
    assert np.all(implied >= curve.need(profile.rates_per_s))


def test_real_trace_autoscaled_vs_dedicated() -> None:
    """Over the Azure conversation trace (rates x300) the recommended autoscaler stays within
    the SLO-risk bound and costs no more than dedicated; the plan is derived at the peak."""
    result = plan_resources([Deployment("conv", [T4], SLO, trace_profile())], seed=5)
    planned = result.deployments[0]
    fixed = planned.outcome(Strategy.DEDICATED)
    scaled = planned.outcome(Strategy.AUTOSCALED)
    assert fixed is not None
    assert scaled is not None
    assert scaled.slo_risk_minutes <= 0.01 * 60
    assert scaled.cost_per_day <= fixed.cost_per_day
    assert result.recommended in {Strategy.DEDICATED, Strategy.AUTOSCALED}
    assert any("derived by OptimizeBatch" in note for note in result.notes)


def test_diurnal_day_autoscaling_saves_against_dedicated() -> None:
    """A sine day swinging +-70%: autoscaling costs at least 10% below dedicated, within the
    risk bound (a single HPA target over-provisions the busy hours, so not the ideal ~40%)."""
    result = plan_resources([Deployment("day", [T4], SLO, sine_profile(), plan=PLAN)])
    planned = result.deployments[0]
    fixed, scaled = planned.strategies[0], planned.strategies[1]
    assert scaled.slo_risk_minutes <= 14.4
    assert scaled.cost_per_day < 0.9 * fixed.cost_per_day
    assert result.recommended is Strategy.AUTOSCALED


def test_shared_packs_two_small_deployments_onto_fewer_instances() -> None:
    """Two light deployments that each need one replica share one instance when memory and
    load allow; shared is then the cheapest and recommended."""
    light = sine_profile(points=288, mean=40.0, swing=0.5)
    deployments = [
        Deployment(name, [T4], SLO, light, plan=PLAN, memory_bytes=6_000_000_000)
        for name in ("a", "b")
    ]
    result = plan_resources(deployments, shared_instance_memory_bytes=16_000_000_000)
    by = {t.strategy: t for t in result.totals}
    assert by[Strategy.SHARED].cost_per_day == pytest.approx(
        by[Strategy.DEDICATED].cost_per_day / 2
    )
    assert result.recommended is Strategy.SHARED
    # Memory too small for two replicas: no saving.
    tight = plan_resources(deployments, shared_instance_memory_bytes=8_000_000_000)
    by = {t.strategy: t for t in tight.totals}
    assert by[Strategy.SHARED].cost_per_day >= by[Strategy.AUTOSCALED].cost_per_day - 1e-9


def test_requested_autoscaler_is_simulated_too() -> None:
    """Given settings are simulated and reported after the recommended ones."""
    requested = AutoscalerSettings(2, 40, 0.6, 30.0, 600.0, 0.0, 60.0)
    result = plan_resources(
        [Deployment("conv", [T4], SLO, trace_profile(), plan=PLAN)], requested=requested
    )
    strategies = result.deployments[0].strategies
    assert [s.strategy for s in strategies] == [
        Strategy.DEDICATED,
        Strategy.AUTOSCALED,
        Strategy.AUTOSCALED,
    ]
    assert strategies[2].settings is not None
    assert strategies[2].settings.startup_delay_s == 45.0  # 0: the instance's cold start
    assert strategies[2].peak_replicas >= 2
