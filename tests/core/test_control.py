"""core/control: smoothing, hysteresis, stabilisation windows, panic, net saving and dwell."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from servewise.core import control, queueing
from servewise.core.control import (
    Advice,
    AdviceCache,
    ControlSettings,
    Decision,
    DeploymentState,
    Direction,
    Sample,
)
from servewise.core.model import Plan, Slo, Workload
from servewise.core.optimizer import SearchLimits, optimize
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile

PRICE = 1.0
SLO = Slo(latency_ms=100.0, percentile=99.0)


def candidate(cold_start_s: float = 0.0) -> Candidate:
    """s(b) = 5 + 2b ms on an instance at $1/h."""
    sizes = tuple(range(1, 65))
    return Candidate(
        InstanceType("gpu", PRICE, cold_start_s=cold_start_s),
        LatencyProfile(sizes, tuple(5.0 + 2.0 * b for b in sizes)),
    )


def state(
    replicas: int = 10, planned: float = 1000.0, since: float | None = None, cold: float = 0.0
) -> DeploymentState:
    return DeploymentState(
        candidates=(candidate(cold),),
        slo=SLO,
        current_plan=Plan("gpu", 8, 5.0, replicas),
        planned_rate_per_s=planned,
        plan_since_s=since,
    )


def sized_advisor(calls: list[float] | None = None) -> control.Advisor:
    """A fake optimizer: one replica per 100/s (at least one), B=8, T=5 ms; the current plan
    meets the SLO while its replicas cover the rate at 100/s each."""

    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        if calls is not None:
            calls.append(rate)
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 8, 5.0, replicas), True, replicas * PRICE, True)

    return advise


def meets_up_to(capacity: float) -> control.Advisor:
    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 8, 5.0, replicas), True, replicas * PRICE, rate <= capacity)

    return advise


def migrating_advisor() -> control.Advisor:
    """Like :func:`sized_advisor` but its plans batch up to 16: a move to them is a migration
    (a new configuration), not a scale."""

    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 16, 5.0, replicas), True, replicas * PRICE, True)

    return advise


def window(rates: list[float], step_s: float = 10.0, **values: float) -> list[Sample]:
    return [Sample(timestamp_s=i * step_s, rate_per_s=r, **values) for i, r in enumerate(rates)]


def test_ewma_halves_the_gap_every_half_life() -> None:
    """After one half-life the EWMA is halfway from the old level to a new step."""
    smoothed = control.ewma_rates([Sample(0, 100.0), Sample(60, 200.0)], 60.0)
    assert smoothed == pytest.approx([100.0, 150.0])
    assert control.ewma_rates([Sample(0, 1.0), Sample(5, 9.0)], 0.0)[-1] == 9.0


def test_dwell_gives_each_step_the_requests_a_percentile_verdict_needs() -> None:
    """A p99 verdict needs ~3,150 requests (2.33² (1 + √2)² beyond the percentile); each step
    dwells until its share of the rate has sent them, within one sample period and the savings
    window shared by the steps."""
    n99 = control.requests_for_percentile(99.0)
    assert 3100 <= n99 <= 3200
    assert control.requests_for_percentile(99.9) > 15 * n99
    steps = control.transition_steps(200.0, (0.1, 0.5, 1.0), 99.0, 15.0, 75.0)
    assert [s.dwell_s for s in steps] == pytest.approx([75.0, n99 / 100.0, n99 / 200.0])
    assert [s.expected_requests for s in steps] == pytest.approx([1500.0, n99, n99])
    assert control.transition_steps(1e6, (1.0,), 99.0, 15.0, 75.0)[0].dwell_s == 15.0
    every_15s = window([100.0] * 10, step_s=15.0)
    assert control.step_dwell_bounds(every_15s, ControlSettings()) == (15.0, 75.0)


def test_a_sustained_rise_scales_up_on_its_first_sample() -> None:
    """A rise from 1000/s to 1500/s, which the current plan is predicted to fail (it meets up to
    1200/s), switches on the first sample of the rise: no stabilisation window, one step, a
    scale (same configuration, more replicas) that pays only the added replicas' cold start."""
    settings = ControlSettings()
    samples = window([1000.0] * 20 + [1500.0] * 5)
    first_switch = None
    for end in range(1, len(samples) + 1):
        result = control.evaluate(state(cold=60.0), samples[:end], settings, meets_up_to(1200.0))
        if result.decision is Decision.SWITCH:
            first_switch = end - 1
            break
    assert first_switch == 20, "the first sample at 1500/s"
    assert not result.panic
    assert result.target_plan is not None
    assert result.target_plan.replicas >= 12
    assert [s.weight for s in result.steps] == [1.0]
    added = result.target_plan.replicas - 10
    assert result.switch_cost == pytest.approx(added * PRICE * 60.0 / 3600.0)
    assert result.ready_after_s == 60.0
    assert "predicted to break" in result.reason


def test_no_flapping_under_a_stationary_noisy_rate() -> None:
    """Two hours of a rate drawn around 1000/s with 5 % noise, closed loop (each SWITCH is
    applied at once): at most one switch, in the first minutes (to add headroom for the noise),
    and none in the second hour."""
    rng = np.random.default_rng(7)
    rates = list(1000.0 * (1.0 + 0.05 * rng.standard_normal(720)))
    samples = window(rates)
    plan, planned, since = Plan("gpu", 8, 5.0, 10), 1000.0, 0.0
    switches: list[float] = []
    for end in range(1, len(samples) + 1):
        recent = samples[max(0, end - 60) : end]  # the last 10 minutes

        def advise(rate: float, arrival_cv: float = 1.0, current: Plan = plan) -> Advice:
            replicas = max(1, math.ceil(rate / 100.0))
            meets = current.replicas * 100.0 >= rate
            return Advice(rate, Plan("gpu", 8, 5.0, replicas), True, replicas * PRICE, meets)

        current = DeploymentState((candidate(),), SLO, plan, planned, since)
        result = control.evaluate(current, recent, ControlSettings(), advise)
        if result.decision is Decision.SWITCH:
            assert result.target_plan is not None
            plan, planned = result.target_plan, result.sizing_rate_per_s
            since = recent[-1].timestamp_s
            switches.append(since)
    assert len(switches) <= 1
    assert all(t < 600 for t in switches)
    assert plan.replicas * 100.0 >= max(rates[360:]) * 0.95


def test_savings_wait_for_the_long_window_then_scale_down_free() -> None:
    """A fall below the band holds until it has lasted the savings window (300 s); the scale
    down then costs nothing and needs no canary steps."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    held = control.evaluate(state(), window([200.0] * 30), settings, sized_advisor())  # 290 s
    assert held.decision is Decision.HOLD
    assert held.direction is Direction.SAVINGS
    assert "stabilisation window" in held.reason
    switched = control.evaluate(state(), window([200.0] * 31), settings, sized_advisor())
    assert switched.decision is Decision.SWITCH, switched.reason
    assert switched.target_plan == Plan("gpu", 8, 5.0, 2)
    assert switched.switch_cost == 0.0
    assert switched.ready_after_s == 0.0
    assert [s.weight for s in switched.steps] == [1.0]


def test_a_move_toward_savings_is_sized_for_the_highest_sizing_rate_of_its_window() -> None:
    """As an HPA's scale-down stabilisation takes the highest recommendation of its window: a
    fall from 700/s to 400/s, held below the band for longer than the 300 s window, scales down
    to what the window's highest sizing rate (the 700/s still in it) needs, not the newest."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([700.0] * 16 + [400.0] * 30)  # t = 0 .. 450; the fall at t = 160
    series, estimate = control.sizing_series(samples, settings, SLO, 0.0)
    in_window = [r for x, r in zip(samples, series, strict=True) if x.timestamp_s >= 150.0]
    assert max(in_window) == pytest.approx(700.0)
    assert estimate.sizing_per_s < 500.0
    calls: list[float] = []
    result = control.evaluate(state(), samples, settings, sized_advisor(calls))
    assert result.decision is Decision.SWITCH, result.reason
    assert calls == [pytest.approx(700.0)]
    assert result.target_plan == Plan("gpu", 8, 5.0, 7)
    assert result.sizing_rate_per_s == pytest.approx(700.0)


def test_a_rise_the_plan_still_meets_waits_and_a_predicted_breach_does_not() -> None:
    """Above the band, a plan the optimizer says still meets the SLO waits for the safety
    window (and then holds: more capacity costs money it need not spend); one it says fails
    is left on that very sample."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([1000.0] * 5 + [2000.0])
    waiting = control.evaluate(state(), samples, settings, meets_up_to(5000.0))
    assert waiting.decision is Decision.HOLD
    assert waiting.direction is Direction.SAFETY
    assert "stabilisation window" in waiting.reason
    later = window([1000.0] * 5 + [2000.0] * 5)
    assert control.evaluate(state(), later, settings, meets_up_to(5000.0)).decision is (
        Decision.HOLD
    )
    breach = control.evaluate(state(), samples, settings, meets_up_to(1000.0))
    assert breach.decision is Decision.SWITCH, breach.reason
    assert breach.saving_per_hour < 0  # safety costs money and is taken anyway


def test_window_restarts_when_the_signal_returns_inside_the_band() -> None:
    """A spike back above the band restarts the savings stabilisation clock."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    rates = [200.0] * 25 + [1000.0] + [200.0] * 10
    result = control.evaluate(state(), window(rates), settings, sized_advisor())
    assert result.decision is Decision.HOLD
    assert "for 90 s" in result.reason


def test_min_dwell_blocks_migrations_toward_savings_but_not_scales_or_panic() -> None:
    """A plan in force for 200 s of a 600 s minimum dwell is not migrated away from toward
    savings, but its replicas scale down once the savings window has passed (a scale shifts no
    traffic: an HPA's stabilisation window is its only brake); panic acts."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([200.0] * 40)  # t = 0 .. 390
    held = control.evaluate(state(since=190.0), samples, settings, migrating_advisor())
    assert held.decision is Decision.HOLD
    assert "minimum dwell" in held.reason
    scaled = control.evaluate(state(since=190.0), samples, settings, sized_advisor())
    assert scaled.decision is Decision.SWITCH, scaled.reason
    assert scaled.target_plan == Plan("gpu", 8, 5.0, 2)
    assert scaled.switch_cost == 0.0
    # Before the savings window has passed, the scale down waits too.
    early = control.evaluate(state(since=190.0), samples[:20], settings, sized_advisor())
    assert early.decision is Decision.HOLD
    assert "stabilisation window" in early.reason
    broken = window([1000.0] * 3, p99_ms=150.0)
    panicked = control.evaluate(state(since=15.0), broken, settings, sized_advisor())
    assert panicked.decision is Decision.SWITCH
    assert panicked.panic


def test_panic_needs_consecutive_breaches_or_one_confident_sample() -> None:
    """At 10/s (100 requests a sample) two breaches, or three with a good sample between, do
    not panic and three in a row do; at 1000/s one breaching sample carries 10,000 requests,
    more than a p99 verdict needs, and panics alone. The target has more capacity than the
    current plan even when the optimizer's does not."""
    settings = ControlSettings(panic_samples=3)
    ok = Sample(20, 10.0, p99_ms=50.0)
    bad = [Sample(t, 10.0, p99_ms=150.0) for t in (0, 10, 30, 40)]
    not_yet = control.evaluate(state(), [bad[0], bad[1], ok, bad[2]], settings, sized_advisor())
    assert not not_yet.panic
    assert not control.evaluate(state(), bad[:2], settings, sized_advisor()).panic
    errors = [Sample(t, 10.0, error_rate=0.05) for t in (0, 10, 20)]
    result = control.evaluate(state(), errors, settings, sized_advisor())
    assert result.panic
    assert result.decision is Decision.SWITCH
    assert result.target_plan is not None
    assert result.target_plan.replicas > 10
    assert [s.weight for s in result.steps] == [1.0]
    one = [Sample(0, 1000.0, p99_ms=50.0), Sample(10, 1000.0, p99_ms=150.0)]
    assert control.evaluate(state(), one, settings, sized_advisor()).panic


def test_panic_counts_only_breaches_of_the_plan_in_force() -> None:
    """Breaches observed before the current plan took over (``plan_since_s``) were the old
    plan's: three of them do not panic the new one; three after it do."""
    settings = ControlSettings(panic_samples=3, ewma_half_life_s=0.0)
    bad = [Sample(t, 10.0, p99_ms=150.0) for t in (0, 10, 20)]
    assert control.evaluate(state(), bad, settings, sized_advisor()).panic
    took_over = control.evaluate(state(since=20.0), bad, settings, sized_advisor())
    assert not took_over.panic
    assert took_over.decision is Decision.HOLD, took_over.reason
    later = [*bad, *(Sample(t, 10.0, p99_ms=150.0) for t in (30, 40, 50))]
    assert control.evaluate(state(since=20.0), later, settings, sized_advisor()).panic


def test_net_saving_sign_follows_the_expected_dwell() -> None:
    """The same drop to a new configuration (a migration) switches when the new plan is
    expected to last an hour and holds when it is expected to last 200 s: the overlap costs
    more than 200 s of saving."""
    samples = window([500.0] * 61)
    base = ControlSettings(ewma_half_life_s=0.0)
    long_stay = control.evaluate(state(cold=120.0), samples, base, migrating_advisor())
    assert long_stay.decision is Decision.SWITCH, long_stay.reason
    assert long_stay.net_saving_per_hour > 0
    assert len(long_stay.steps) == 4
    short = ControlSettings(ewma_half_life_s=0.0, expected_dwell_s=200.0)
    short_stay = control.evaluate(state(cold=120.0), samples, short, migrating_advisor())
    assert short_stay.decision is Decision.HOLD
    assert short_stay.net_saving_per_hour < 0
    # $10/h now, $5/h after. The old plan serves (and is billed as running cost) until the
    # target carries everything, once the steps before the last are done: the extra is the
    # $5/h target over its cold start and those steps, then the $10/h old plan kept as the
    # fallback through the last step.
    dwell = [s.dwell_s for s in short_stay.steps]
    assert short_stay.saving_per_hour == pytest.approx(5.0)
    ready = 120.0 + sum(dwell[:-1])
    assert short_stay.ready_after_s == pytest.approx(ready)
    assert short_stay.switch_cost == pytest.approx((5.0 * ready + 10.0 * dwell[-1]) / 3600.0)
    assert short_stay.net_saving_per_hour == pytest.approx(
        5.0 - short_stay.switch_cost / (200.0 / 3600.0)
    )


def test_switch_cost_of_scales_and_migrations() -> None:
    """Scale up: the added replicas over the cold start; scale down: free; migration: the
    target over its cold start and the steps before the last (the old plan serves, billed as
    running cost, until then), and the old plan kept as a fallback through the last step."""
    cands = (candidate(cold_start_s=60.0),)
    now = Plan("gpu", 8, 5.0, 10)
    up = control.switch_cost(now, Plan("gpu", 8, 5.0, 13), cands)
    assert (up.cost, up.ready_after_s) == (pytest.approx(3 * 60.0 / 3600.0), 60.0)
    assert control.switch_cost(now, Plan("gpu", 8, 5.0, 4), cands).cost == 0.0
    steps = control.transition_steps(1000.0, (0.5, 1.0), 99.0, 10.0, 100.0)
    moved = control.switch_cost(now, Plan("gpu", 16, 5.0, 6), cands, steps)
    assert moved.overlap_s == pytest.approx(60.0 + steps[0].dwell_s + steps[1].dwell_s)
    assert moved.ready_after_s == pytest.approx(60.0 + steps[0].dwell_s)
    assert moved.cost == pytest.approx(
        (6.0 * moved.ready_after_s + 10.0 * steps[1].dwell_s) / 3600.0
    )
    # Without a fallback (leaving a failing plan) the old capacity goes once the target is up.
    urgent = control.switch_cost(now, Plan("gpu", 16, 5.0, 6), cands, steps, keep_fallback=False)
    assert urgent.overlap_s == pytest.approx(moved.ready_after_s)
    assert urgent.cost == pytest.approx(6.0 * moved.ready_after_s / 3600.0)


def test_sizing_rate_adds_spread_and_only_an_established_trend() -> None:
    """A flat rate is sized as is; noise adds z·spread; a steady ramp adds its rise over the
    lead; a short or noisy rise adds no trend."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    flat = control.estimate_rate(window([500.0] * 20), settings, SLO, 30.0)
    assert flat.sizing_per_s == pytest.approx(500.0)
    noisy = control.estimate_rate(window([450.0, 550.0] * 10), settings, SLO, 30.0)
    z = control.slo_z(99.0)
    assert noisy.trend_per_s2 == 0.0
    assert noisy.sizing_per_s == pytest.approx(noisy.smoothed_per_s + z * noisy.spread_per_s)
    ramp = control.estimate_rate(window([100.0 + 10.0 * i for i in range(30)]), settings, SLO, 30.0)
    assert 0.0 < ramp.trend_per_s2 < 1.0  # 10/s per 10 s, less its standard error
    assert ramp.lead_s == 40.0  # cold start + one sample period
    assert ramp.sizing_per_s > ramp.smoothed_per_s + z * ramp.spread_per_s
    short = control.estimate_rate(window([100.0, 300.0]), settings, SLO, 30.0)
    assert short.trend_per_s2 == 0.0


def test_arrival_cv_is_read_from_the_observed_latency() -> None:
    """A p99 the queueing model predicts at CV 3 gives back CV 3 at face value, and a little
    less from samples of 30,000 requests each; a p99 at or below Poisson's gives 1; an
    unstable rate gives nothing; samples from before the plan took force are ignored, and the
    plan's own CV stands in when none is left. The CV reaches the advisor."""
    c = candidate()
    plan = Plan("gpu", 8, 5.0, 10)
    at3 = queueing.predict(c.profile, plan, Workload(3000.0, 3.0), None).p99_ms
    assert control.cv_for_latency(c, plan, 3000.0, at3) == pytest.approx(3.0, rel=1e-3)
    assert control.cv_for_latency(c, plan, 3000.0, 1.0) == 1.0
    assert control.cv_for_latency(c, plan, 1e6, 1e6) is None
    samples = window([3000.0] * 5, p99_ms=at3)
    # 30,000 requests a sample: the p99 is read at p99_level_bound's 99.13 %, so a little less
    # than CV 3 is credited (the part a p99 of 30,000 requests could show by chance is not).
    estimated = control.estimate_arrival_cv(state(), samples)
    assert 2.9 < estimated < 3.0
    assert estimated == pytest.approx(
        control.cv_for_latency(c, plan, 3000.0, at3, control.p99_level_bound(30_000, 99.0))
    )
    old = DeploymentState((c,), SLO, plan, 3000.0, plan_since_s=100.0, planned_arrival_cv=2.0)
    assert control.estimate_arrival_cv(old, samples) == 2.0
    seen: list[float] = []

    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        seen.append(arrival_cv)
        return Advice(rate, plan, True, 10 * PRICE, False)

    control.evaluate(state(planned=100.0), samples, ControlSettings(), advise)
    assert seen
    assert seen[0] == pytest.approx(estimated, rel=1e-3)


def test_holds_when_the_best_plan_is_the_current_one() -> None:
    """Outside the band but with the optimizer choosing the plan in force: HOLD."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([950.0] * 40, step_s=10.0)
    result = control.evaluate(state(planned=700.0), samples, settings, sized_advisor())
    assert result.decision is Decision.HOLD
    assert "is the current plan" in result.reason


def test_advice_cache_reuses_answers_by_version_and_rounded_rate() -> None:
    """Rates equal to 3 significant digits (and CVs to 2) share an answer; a new version asks
    again."""
    cache = AdviceCache(max_entries=2)
    calls: list[float] = []
    v1 = control.cached_advisor(cache, ("d", 1), sized_advisor(calls))
    v1(1234.4)
    v1(1233.6, 1.001)
    assert calls == [1230.0]
    control.cached_advisor(cache, ("d", 2), sized_advisor(calls))(1234.0)
    assert calls == [1230.0, 1230.0]
    v1(10.0)
    assert len(cache) == 2


def test_a_scale_of_the_current_configuration_beats_an_equal_cost_migration() -> None:
    """When the current configuration scaled to the best plan's running cost also meets the
    SLO, the controller scales (free downward) rather than migrate (old capacity kept through
    cold start and four steps); without that alternative it migrates."""
    samples = window([500.0] * 61)
    settings = ControlSettings(ewma_half_life_s=0.0)

    def advise(rate: float, arrival_cv: float = 1.0) -> Advice:
        best = Plan("gpu", 16, 5.0, 5)
        return Advice(rate, best, True, 5 * PRICE, True, scaled_plan=Plan("gpu", 8, 5.0, 5))

    scaled = control.evaluate(state(cold=120.0), samples, settings, advise)
    assert scaled.decision is Decision.SWITCH, scaled.reason
    assert scaled.target_plan == Plan("gpu", 8, 5.0, 5)
    assert scaled.switch_cost == 0.0
    assert "scale" in scaled.reason
    migrated = control.evaluate(state(cold=120.0), samples, settings, migrating_advisor())
    assert migrated.target_plan == Plan("gpu", 16, 5.0, 5)
    assert migrated.switch_cost > 0.0


def test_leaving_a_failing_plan_keeps_no_fallback() -> None:
    """A migration away from a plan predicted to break the SLO goes in one step and releases the
    old capacity once the target is up (cold start only); a migration toward savings keeps the
    old plan through every step for a rollback."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    rising = window([1000.0] * 5 + [2000.0])

    def failing(rate: float, arrival_cv: float = 1.0) -> Advice:
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 16, 5.0, replicas), True, replicas * PRICE, False)

    urgent = control.evaluate(state(cold=120.0), rising, settings, failing)
    assert urgent.decision is Decision.SWITCH, urgent.reason
    assert [s.weight for s in urgent.steps] == [1.0]
    assert urgent.overlap_s == pytest.approx(120.0)
    # The target (28 replicas) over its cold start, while the old plan still serves.
    assert urgent.target_plan is not None
    assert urgent.switch_cost == pytest.approx(urgent.target_plan.replicas * PRICE * 120.0 / 3600.0)
    saving = control.evaluate(
        state(cold=120.0), window([500.0] * 61), settings, migrating_advisor()
    )
    assert saving.overlap_s == pytest.approx(120.0 + sum(s.dwell_s for s in saving.steps))


def test_moves_away_from_a_breach_are_marked_so_their_steps_never_roll_back() -> None:
    """A move away from a plan predicted to break the SLO, and a panic move, carry
    away_from_breach (the stream stores it on the Transition and judges the step as a move to
    safety: breaches complete it instead of rolling back to the failing plan); a move toward
    savings, which keeps the old plan as its fallback, does not."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    urgent = control.evaluate(
        state(), window([1000.0] * 5 + [2000.0]), settings, meets_up_to(1000.0)
    )
    assert urgent.decision is Decision.SWITCH
    assert not urgent.panic
    assert urgent.away_from_breach
    panicked = control.evaluate(
        state(since=15.0), window([1000.0] * 3, p99_ms=150.0), settings, sized_advisor()
    )
    assert panicked.panic
    assert panicked.away_from_breach
    saving = control.evaluate(state(), window([500.0] * 61), settings, migrating_advisor())
    assert saving.decision is Decision.SWITCH
    assert saving.direction is Direction.SAVINGS
    assert not saving.away_from_breach


def test_the_burstiness_credited_grows_with_the_requests_behind_a_p99() -> None:
    """A sample's p99 is read at the highest quantile level it may stand for at the SLO's
    confidence (binomial order statistics): 0.99 + z sqrt(0.99 * 0.01 / n), at most n / (n + 1);
    so the same p99 credits less burstiness when it rests on fewer requests, and the face-value
    CV in the limit."""
    assert control.p99_level_bound(0.0, 99.0) == 0.99
    assert control.p99_level_bound(300.0, 99.0) == pytest.approx(0.9967)  # 300 / 301
    assert control.p99_level_bound(30_000.0, 99.0) == pytest.approx(0.9913)
    assert control.p99_level_bound(30_000.0, 99.9) > control.p99_level_bound(30_000.0, 99.0)
    assert control.p99_level_bound(1e9, 99.0) == pytest.approx(0.99, abs=1e-4)
    c = candidate()
    plan = Plan("gpu", 8, 5.0, 10)
    at3 = queueing.predict(c.profile, plan, Workload(3000.0, 3.0), None).p99_ms
    credited = [
        control.cv_for_latency(c, plan, 3000.0, at3, control.p99_level_bound(n, 99.0))
        for n in (300.0, 3_000.0, 30_000.0, 1e9)
    ]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(credited))
    assert credited[-1] == pytest.approx(3.0, rel=2e-3)


def test_over_an_established_rise_a_scale_beats_a_migration_that_pays_only_over_an_hour() -> None:
    """Leaving a failing 10-replica plan, the optimizer's best is a migration to 20 replicas
    ($20/h; its whole fleet starts: $0.67 over a 120 s cold start) and the alternative a scale
    to 22 replicas ($22/h; 12 replicas start: $0.40). After a jump with no established trend
    the plan is expected to stay the configured hour, over which the migration is cheaper; on
    a steady ramp the trend carries the rate out of the band within ~100 s
    (band * sizing / trend), and over that dwell the scale is."""
    settings = ControlSettings(ewma_half_life_s=0.0)

    def failing(rate: float, arrival_cv: float = 1.0) -> Advice:
        return Advice(
            rate,
            Plan("gpu", 16, 5.0, 20),
            True,
            20 * PRICE,
            False,
            scaled_plan=Plan("gpu", 8, 5.0, 22),
        )

    jump = window([1000.0] * 5 + [2000.0])
    flat = control.estimate_rate(jump, settings, SLO, 120.0)
    assert flat.trend_per_s2 == 0.0
    assert control.expected_dwell_s(settings, flat) == settings.expected_dwell_s
    migrated = control.evaluate(state(cold=120.0), jump, settings, failing)
    assert migrated.decision is Decision.SWITCH
    assert migrated.target_plan == Plan("gpu", 16, 5.0, 20)
    assert "over the expected 3600 s" in migrated.reason

    ramp = window([1000.0 + 100.0 * i for i in range(11)])
    rising = control.estimate_rate(ramp, settings, SLO, 120.0)
    assert rising.trend_per_s2 > 0
    dwell = control.expected_dwell_s(settings, rising)
    assert dwell == pytest.approx(
        settings.hysteresis_band * rising.sizing_per_s / rising.trend_per_s2
    )
    assert dwell < 600.0
    scaled = control.evaluate(state(cold=120.0), ramp, settings, failing)
    assert scaled.decision is Decision.SWITCH
    assert scaled.target_plan == Plan("gpu", 8, 5.0, 22)
    assert scaled.switch_cost == pytest.approx(12 * PRICE * 120.0 / 3600.0)
    assert f"over the expected {dwell:.4g} s" in scaled.reason


def test_the_advisor_offers_a_costlier_scale_only_when_the_current_plan_fails() -> None:
    """The real optimizer: a 2-replica B=8 plan at 1,500/s fails the SLO, and beside the best
    plan the advisor offers the fewest replicas of that configuration which meet it (a scale,
    confirmed by the optimizer's own assessment) even when they cost more than the best plan;
    at 150/s, where the plan meets the SLO, it offers no costlier scale."""
    c = candidate()
    limits = SearchLimits(max_replicas=64)
    current = Plan("gpu", 8, 5.0, 2)
    advise = control.optimizer_advisor((c,), SLO, limits, current)
    hot = advise(1500.0)
    assert not hot.current_meets_slo
    assert hot.plan is not None
    assert hot.scaled_plan is not None
    assert control.is_scale(current, hot.scaled_plan)
    assert hot.scaled_plan.replicas > current.replicas
    fewer = replace(hot.scaled_plan, replicas=hot.scaled_plan.replicas - 1)
    assessed = optimize([c], Workload(1500.0), SLO, limits, current_plan=fewer)
    assert fewer.replicas == current.replicas or (
        assessed.current is not None and not assessed.current.meets_slo
    )
    calm = advise(150.0)
    assert calm.current_meets_slo
    if calm.scaled_plan is not None:
        assert calm.scaled_plan.replicas * PRICE <= calm.cost_per_hour + 1e-9
