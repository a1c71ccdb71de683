"""judge_step: wait, advance, complete or roll back one step of a transition."""

from __future__ import annotations

import pytest

from servewise.core.control import ControlSettings, Sample, Step
from servewise.core.model import Slo
from servewise.core.transitions import StepAction, judge_step

SLO = Slo(percentile=99.0, latency_ms=100.0)
SETTINGS = ControlSettings(panic_samples=3, error_rate_limit=0.01)
STEPS = (Step(0.5, 60.0, 1000.0), Step(1.0, 30.0, 1000.0))


def window(start: float, count: int, step: float = 10.0, **values: float) -> list[Sample]:
    return [Sample(timestamp_s=start + i * step, rate_per_s=100.0, **values) for i in range(count)]


def test_waits_for_the_dwell_then_advances() -> None:
    early = judge_step(STEPS, 0, 100.0, window(100.0, 6, p99_ms=50.0), SLO, SETTINGS)
    assert early.action is StepAction.WAIT
    assert early.elapsed_s == 50.0
    done = judge_step(STEPS, 0, 100.0, window(100.0, 7, p99_ms=50.0), SLO, SETTINGS)
    assert done.action is StepAction.ADVANCE
    assert done.observed_samples == 7
    assert done.observed_p99_ms == 50.0
    assert "met the p99 100 ms SLO" in done.reason


def test_the_last_step_completes() -> None:
    verdict = judge_step(STEPS, 1, 0.0, window(0.0, 4), SLO, SETTINGS)
    assert verdict.action is StepAction.COMPLETE


def test_only_samples_in_the_step_count() -> None:
    """Breaches before the step began do not count toward a rollback."""
    before = window(0.0, 5, p99_ms=500.0)
    during = window(50.0, 1, p99_ms=500.0)
    verdict = judge_step(STEPS, 0, 50.0, before + during, SLO, SETTINGS)
    assert verdict.action is StepAction.WAIT
    assert verdict.breach_run == 1
    assert verdict.observed_samples == 1


@pytest.mark.parametrize("values", [{"p99_ms": 250.0}, {"error_rate": 0.2}])
def test_consecutive_breaches_roll_back(values: dict[str, float]) -> None:
    two = judge_step(STEPS, 0, 0.0, window(0.0, 2, **values), SLO, SETTINGS)
    assert two.action is StepAction.WAIT
    three = judge_step(STEPS, 0, 0.0, window(0.0, 3, **values), SLO, SETTINGS)
    assert three.action is StepAction.ROLLBACK
    assert three.breach_run == 3
    assert "3 consecutive samples" in three.reason


def test_a_move_to_safety_is_kept_not_rolled_back() -> None:
    """Breaches during a panic move complete it instead of rolling back to the plan that broke
    the SLO first; the controller then escalates from the target."""
    three = window(0.0, 3, p99_ms=250.0)
    kept = judge_step(STEPS, 0, 0.0, three, SLO, SETTINGS, toward_safety=True)
    assert kept.action is StepAction.COMPLETE
    assert "move to safety" in kept.reason
    assert judge_step(STEPS, 0, 0.0, three, SLO, SETTINGS).action is StepAction.ROLLBACK


def test_a_breach_after_the_dwell_delays_the_advance() -> None:
    """The dwell has elapsed but the newest sample breaks the SLO: wait (not yet a rollback)."""
    samples = window(0.0, 7, p99_ms=50.0)
    samples[-1] = Sample(timestamp_s=60.0, rate_per_s=100.0, p99_ms=150.0)
    verdict = judge_step(STEPS, 0, 0.0, samples, SLO, SETTINGS)
    assert verdict.action is StepAction.WAIT
    assert "rollback after 3" in verdict.reason
    samples.append(Sample(timestamp_s=70.0, rate_per_s=100.0, p99_ms=50.0))
    assert judge_step(STEPS, 0, 0.0, samples, SLO, SETTINGS).action is StepAction.ADVANCE


def test_a_sample_older_than_the_step_waits() -> None:
    verdict = judge_step(STEPS, 1, 500.0, window(0.0, 3), SLO, SETTINGS)
    assert verdict.action is StepAction.WAIT
    assert "predates step 1" in verdict.reason


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        judge_step(STEPS, 0, 0.0, [], SLO, SETTINGS)
    with pytest.raises(ValueError, match="outside"):
        judge_step(STEPS, 2, 0.0, window(0.0, 1), SLO, SETTINGS)
