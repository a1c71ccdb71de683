"""core/control: smoothing, hysteresis, stabilisation windows, panic, net saving and dwell."""

from __future__ import annotations

import math

import pytest

from servewise.core import control
from servewise.core.control import (
    Advice,
    AdviceCache,
    ControlSettings,
    Decision,
    DeploymentState,
    Direction,
    Sample,
)
from servewise.core.model import Plan, Slo
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

    def advise(rate: float) -> Advice:
        if calls is not None:
            calls.append(rate)
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 8, 5.0, replicas), True, replicas * PRICE, True)

    return advise


def meets_up_to(capacity: float) -> control.Advisor:
    def advise(rate: float) -> Advice:
        replicas = max(1, math.ceil(rate / 100.0))
        return Advice(rate, Plan("gpu", 8, 5.0, replicas), True, replicas * PRICE, rate <= capacity)

    return advise


def window(rates: list[float], step_s: float = 10.0, **values: float) -> list[Sample]:
    return [Sample(timestamp_s=i * step_s, rate_per_s=r, **values) for i, r in enumerate(rates)]


def test_ewma_halves_the_gap_every_half_life() -> None:
    """After one half-life the EWMA is halfway from the old level to a new step."""
    smoothed = control.ewma_rates([Sample(0, 100.0), Sample(60, 200.0)], 60.0)
    assert smoothed == pytest.approx([100.0, 150.0])
    assert control.ewma_rates([Sample(0, 1.0), Sample(5, 9.0)], 0.0)[-1] == 9.0


def test_dwell_gives_each_step_the_requests_a_p99_needs() -> None:
    """n = 100 / (1 - 0.99) = 10,000 requests per step at the target's share of the rate, with
    the floor at low volume... and the cap at very low rates."""
    assert control.requests_for_percentile(99.0) == 10_000
    assert control.requests_for_percentile(99.9) == 100_000
    steps = control.transition_steps(200.0, (0.1, 0.5, 1.0), 99.0)
    assert [s.dwell_s for s in steps] == pytest.approx([500.0, 100.0, 50.0])
    assert [s.expected_requests for s in steps] == pytest.approx([10_000.0] * 3)
    fast = control.transition_steps(100_000.0, (1.0,), 99.0)
    assert fast[0].dwell_s == control.MIN_STEP_DWELL_S
    slow = control.transition_steps(0.5, (0.1,), 99.0)
    assert slow[0].dwell_s == control.MAX_STEP_DWELL_S


def test_no_flapping_on_a_rate_oscillating_inside_the_band() -> None:
    """A rate swinging +-9% around the planned rate for an hour never switches nor even asks
    the optimizer, evaluated at every sample."""
    calls: list[float] = []
    rates = [1000.0 * (1.09 if i % 2 else 0.91) for i in range(360)]
    samples = window(rates)
    settings = ControlSettings(ewma_half_life_s=0.0)
    for end in range(1, len(samples) + 1):
        result = control.evaluate(state(), samples[:end], settings, sized_advisor(calls))
        assert result.decision is Decision.HOLD
    assert calls == []


def test_savings_wait_for_the_long_window_and_safety_for_the_short_one() -> None:
    """A fall below the band holds until it has lasted the savings window (300 s); a rise above
    it acts after the safety window (30 s)."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    low = window([200.0] * 30)  # 290 s
    held = control.evaluate(state(), low, settings, sized_advisor())
    assert held.decision is Decision.HOLD
    assert held.direction is Direction.SAVINGS
    assert "stabilisation window" in held.reason
    low = window([200.0] * 31)  # 300 s
    switched = control.evaluate(state(), low, settings, sized_advisor())
    assert switched.decision is Decision.SWITCH, switched.reason
    assert switched.target_plan == Plan("gpu", 8, 5.0, 2)

    high = window([2000.0] * 3)  # 20 s
    rising = control.evaluate(state(), high, settings, meets_up_to(1000.0))
    assert rising.decision is Decision.HOLD
    assert rising.direction is Direction.SAFETY
    high = window([2000.0] * 4)  # 30 s
    rising = control.evaluate(state(), high, settings, meets_up_to(1000.0))
    assert rising.decision is Decision.SWITCH, rising.reason
    assert rising.saving_per_hour < 0  # safety costs money and is taken anyway


def test_window_restarts_when_the_signal_returns_inside_the_band() -> None:
    """A dip back inside the band restarts the stabilisation clock."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    rates = [200.0] * 25 + [1000.0] + [200.0] * 10
    result = control.evaluate(state(), window(rates), settings, sized_advisor())
    assert result.decision is Decision.HOLD
    assert "for 90 s" in result.reason


def test_min_dwell_blocks_savings_but_not_panic() -> None:
    """A plan in force for 200 s of a 600 s minimum dwell is kept toward savings; panic acts."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([200.0] * 40)  # t = 0 .. 390
    held = control.evaluate(state(since=190.0), samples, settings, sized_advisor())
    assert held.decision is Decision.HOLD
    assert "minimum dwell" in held.reason
    broken = window([1000.0] * 3, p99_ms=150.0)
    panicked = control.evaluate(state(since=15.0), broken, settings, sized_advisor())
    assert panicked.decision is Decision.SWITCH
    assert panicked.panic


def test_panic_needs_consecutive_breaches() -> None:
    """Two breaches, or three with a good sample between, do not panic; three in a row do, and
    the target has more capacity than the current plan even when the optimizer's does not."""
    settings = ControlSettings(panic_samples=3)
    ok = Sample(20, 1000.0, p99_ms=50.0)
    bad = [Sample(t, 1000.0, p99_ms=150.0) for t in (0, 10, 30, 40)]
    not_yet = control.evaluate(state(), [bad[0], bad[1], ok, bad[2]], settings, sized_advisor())
    assert not not_yet.panic
    errors = [Sample(t, 1000.0, error_rate=0.05) for t in (0, 10, 20)]
    result = control.evaluate(state(), errors, settings, sized_advisor())
    assert result.panic
    assert result.decision is Decision.SWITCH
    assert result.target_plan is not None
    assert result.target_plan.replicas > 10
    assert [s.weight for s in result.steps] == [1.0]


def test_net_saving_sign_follows_the_expected_dwell() -> None:
    """The same drop switches when the new plan is expected to last an hour and holds when it
    is expected to last five minutes: the overlap costs more than five minutes of saving."""
    samples = window([500.0] * 61)
    base = ControlSettings(ewma_half_life_s=0.0)
    long_stay = control.evaluate(state(cold=120.0), samples, base, sized_advisor())
    assert long_stay.decision is Decision.SWITCH, long_stay.reason
    assert long_stay.net_saving_per_hour > 0
    short = ControlSettings(ewma_half_life_s=0.0, expected_dwell_s=300.0)
    short_stay = control.evaluate(state(cold=120.0), samples, short, sized_advisor())
    assert short_stay.decision is Decision.HOLD
    assert short_stay.net_saving_per_hour < 0
    # The numbers: $10/h now, $5/h after; old capacity kept through cold start and the steps.
    overlap_s = 120.0 + sum(s.dwell_s for s in short_stay.steps)
    assert short_stay.saving_per_hour == pytest.approx(5.0)
    assert short_stay.switch_cost == pytest.approx(10.0 * overlap_s / 3600.0)
    assert short_stay.net_saving_per_hour == pytest.approx(
        5.0 - short_stay.switch_cost / (300.0 / 3600.0)
    )


def test_holds_when_the_best_plan_is_the_current_one() -> None:
    """Outside the band but with the optimizer choosing the plan in force: HOLD."""
    settings = ControlSettings(ewma_half_life_s=0.0)
    samples = window([950.0] * 40, step_s=10.0)
    result = control.evaluate(state(planned=700.0), samples, settings, sized_advisor())
    assert result.decision is Decision.HOLD
    assert "is the current plan" in result.reason


def test_advice_cache_reuses_answers_by_version_and_rounded_rate() -> None:
    """Rates equal to 3 significant digits share an answer; a new version asks again."""
    cache = AdviceCache(max_entries=2)
    calls: list[float] = []
    v1 = control.cached_advisor(cache, ("d", 1), sized_advisor(calls))
    v1(1234.4)
    v1(1233.6)
    assert calls == [1230.0]
    control.cached_advisor(cache, ("d", 2), sized_advisor(calls))(1234.0)
    assert calls == [1230.0, 1230.0]
    v1(10.0)
    assert len(cache) == 2
