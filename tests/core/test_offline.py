"""Offline batch planning: the on-demand closed form, and spot interruptions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servewise.core.offline import (
    OfflineJob,
    OfflineOptions,
    SpotOffer,
    expected_completion_s,
    periodic_job,
    plan_job,
    replica_work_s,
    spot_outcome,
    throughput_optimal_batch,
)
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile

# ResNet-50 v1.5 on T4, AMP: published p99 latency per batch (NVIDIA DeepLearningExamples).
T4_AMP = LatencyProfile(
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
    (20.0, 18.73, 19.05, 19.43, 20.62, 28.97, 56.11, 110.41, 222.94),
)
G4DN = InstanceType("g4dn.xlarge", 0.526, cold_start_s=40.0)


def _independent_makespans(
    works: list[float], cold: float, offer: SpotOffer, opts: OfflineOptions, runs: int, seed: int
) -> np.ndarray:
    """Reference Monte Carlo, attempt by attempt in plain Python (not the vectorised one)."""
    rng = np.random.default_rng(seed)
    lam = offer.interruptions_per_hour / 3600.0
    out = np.empty(runs)
    for r in range(runs):
        worst = 0.0
        for w in works:
            t, done = cold, 0.0
            while done < w - 1e-12:
                need = min(opts.checkpoint_interval_s or w, w - done)
                x = rng.exponential(1.0 / lam)
                if x >= need:
                    t += need
                    done += need
                else:
                    t += x + opts.restart_s
            worst = max(worst, t)
        out[r] = worst
    return out


def test_throughput_optimal_batch_is_the_best_requests_per_ms() -> None:
    """The batch maximises b/s(b) among sizes whose batch fits the allowed service time."""
    cand = Candidate(G4DN, T4_AMP)
    best = throughput_optimal_batch(cand, math.inf)
    rates = [b / T4_AMP.service_time_ms(b) for b in range(1, 257)]
    assert best == int(np.argmax(rates)) + 1
    fits = [
        b / T4_AMP.service_time_ms(b) if T4_AMP.service_time_ms(b) <= 19.0 else 0
        for b in range(1, 257)
    ]
    assert throughput_optimal_batch(cand, 19.0) == int(np.argmax(fits)) + 1
    assert throughput_optimal_batch(cand, 10.0) is None


def test_on_demand_cost_equals_the_closed_form_exactly() -> None:
    """Cost = sum over replicas of ceil(cold + batches * s(b)) seconds at the hourly price."""
    cand = Candidate(G4DN, T4_AMP)
    job = OfflineJob(requests=1_000_003, window_s=400.0)
    result = plan_job([cand], job, {}, OfflineOptions(), 256, seed=1)
    plan = result.plan
    assert plan is not None
    b, n = plan.batch_size, plan.replicas
    full, rem = divmod(job.requests, b)
    q, r = divmod(full, n)
    s_b, s_rem = T4_AMP.service_time_ms(b) / 1000, T4_AMP.service_time_ms(rem) / 1000
    works = [(q + 1) * s_b] * r + [q * s_b] * (n - r)
    works[r] += s_rem
    expected = sum(math.ceil(40.0 + w) for w in works) * 0.526 / 3600
    assert plan.cost == expected
    assert plan.makespan_s == pytest.approx(40.0 + max(works))
    assert plan.makespan_s <= job.window_s
    # The fewest replicas: one fewer misses the window.
    fewer = replica_work_s(cand, job.requests, b, n - 1)
    assert 40.0 + max(fewer) > job.window_s


def test_backlog_beyond_the_replica_limit_is_infeasible_with_a_reason() -> None:
    """A job no allowed fleet can finish in time is answered with the throughput shortfall."""
    cand = Candidate(G4DN, T4_AMP)
    result = plan_job([cand], OfflineJob(10**9, 600.0), {}, OfflineOptions(), 8, seed=1)
    assert result.plan is None
    assert "8 replicas" in result.reason


def test_periodic_job_sized_for_a_high_quantile_of_a_periods_arrivals() -> None:
    """A rate-based class runs every D/2 with the 99.9th-percentile count of a period."""
    job = periodic_job(100.0, 600.0, 1.0)
    assert job.period_s == 300.0
    assert job.window_s == 300.0
    assert 30_000 < job.requests < 30_000 + 4 * math.sqrt(30_000)


def test_expected_completion_matches_its_monte_carlo_mean() -> None:
    """The closed form (1/lambda + R)(k(e^{lambda c}-1) + e^{lambda l}-1) agrees with simulation."""
    offer = SpotOffer(0.16, 2.0)
    opts = OfflineOptions(True, checkpoint_interval_s=300.0, restart_s=120.0)
    works = [5000.0]
    closed = expected_completion_s(5000.0, 30.0, offer, opts)
    sim = spot_outcome(works, 30.0, 1e9, offer, opts, seed=3, runs=20_000)
    assert sim.expected_makespan_s == pytest.approx(closed, rel=0.01)


def test_spot_deadline_probability_within_two_points_of_a_10000_run_monte_carlo() -> None:
    """The service's vectorised estimate and an independent 10,000-run walk agree to 2 pp."""
    offer = SpotOffer(0.1578, 1.5)
    opts = OfflineOptions(True, checkpoint_interval_s=600.0, restart_s=180.0)
    works = [7000.0, 7000.0, 6900.0, 6500.0]
    window = 9000.0
    service = spot_outcome(works, 40.0, window, offer, opts, seed=11)
    reference = _independent_makespans(works, 40.0, offer, opts, 10_000, seed=99)
    p_ref = float((reference <= window).mean())
    assert 0.2 < p_ref < 0.95  # a probability worth estimating
    assert abs(service.deadline_probability - p_ref) <= 0.02
    assert service.expected_makespan_s == pytest.approx(float(reference.mean()), rel=0.01)


def test_spot_is_chosen_only_when_cheaper_and_confident() -> None:
    """Spot wins when its expected cost is lower and P(deadline) reaches the confidence."""
    cand = Candidate(G4DN, T4_AMP)
    job = OfflineJob(2_000_000, 4 * 3600.0)
    offers = {"g4dn.xlarge": SpotOffer(0.1578, 0.5)}
    opts = OfflineOptions(True, checkpoint_interval_s=300.0, restart_s=120.0)
    plan = plan_job([cand], job, offers, opts, 64, seed=5).plan
    assert plan is not None
    assert plan.spot
    assert plan.deadline_probability >= 0.95
    on_demand = plan_job([cand], job, offers, OfflineOptions(), 64, seed=5).plan
    assert on_demand is not None
    assert plan.expected_cost < on_demand.cost
    # Frequent interruptions without checkpoints make spot too risky at 95%: on demand.
    risky = {"g4dn.xlarge": SpotOffer(0.1578, 30.0)}
    no_checkpoints = OfflineOptions(True, 0.0, 120.0)
    kept = plan_job([cand], job, risky, no_checkpoints, 64, seed=5).plan
    assert kept is not None
    assert not kept.spot
