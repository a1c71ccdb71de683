"""Judging one step of a transition in progress: wait, advance, complete or roll back.

Pure, like :mod:`servewise.core.control`: "now" is the newest sample's timestamp and the step's
start is the stored ``step_started_at_s`` (the samples' clock), so a verdict is a function of the
stored transition, the samples seen in the step and the settings.

The rules, in order:

1. A sample older than the step's start says nothing about the step (another stream may have
   advanced it already): wait.
2. **Rollback** when the newest ``panic_samples`` samples of the step all broke the SLO (observed
   p99 above the bound) or the error-rate limit — unless the transition is a move to safety
   (``toward_safety``: panic, or any move away from a plan predicted to break the SLO, the
   Transition's ``away_from_breach``): the plan it replaces broke the SLO already or was
   predicted to, so rolling back would not help (and while the target starts, the breaches are
   that plan's own, the very breach the move answers); the step **completes** instead, and the
   controller, seeing the breaches with the target in force, escalates from there.
3. Wait until the step has dwelt ``dwell_s`` (newest timestamp - step start).
4. Wait while the newest sample breaks the limits (a breach run shorter than the panic count: the
   step has not shown it meets the SLO yet, nor that it breaks it).
5. Otherwise the step met the SLO: **advance** to the next step, or **complete** after the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from servewise.core.control import ControlSettings, Sample, Step, panic_run
from servewise.core.model import Slo


class StepAction(Enum):
    WAIT = "wait"
    ADVANCE = "advance"
    COMPLETE = "complete"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class StepVerdict:
    action: StepAction
    reason: str
    # Over the step's samples: the largest observed p99 and error rate, and how many there were.
    observed_p99_ms: float = 0.0
    observed_error_rate: float = 0.0
    observed_samples: int = 0
    elapsed_s: float = 0.0
    breach_run: int = 0


def breaks_limits(sample: Sample, slo: Slo, error_rate_limit: float) -> bool:
    return sample.p99_ms > slo.latency_ms or sample.error_rate > error_rate_limit


def judge_step(
    steps: Sequence[Step],
    step_index: int,
    step_started_at_s: float,
    samples: Sequence[Sample],
    slo: Slo,
    settings: ControlSettings,
    toward_safety: bool = False,
) -> StepVerdict:
    """The verdict on step ``step_index`` given recent samples (oldest first, the newest last);
    only samples at or after ``step_started_at_s`` count (see the module docstring)."""
    if not samples:
        raise ValueError("samples: at least one sample is required")
    if not 0 <= step_index < len(steps):
        raise ValueError(f"step_index {step_index} outside the {len(steps)} steps")
    step = steps[step_index]
    newest = samples[-1]
    if newest.timestamp_s < step_started_at_s:
        return StepVerdict(
            StepAction.WAIT,
            f"sample at {newest.timestamp_s:.6g} s predates step {step_index}, which began at "
            f"{step_started_at_s:.6g} s",
        )
    in_step = [s for s in samples if s.timestamp_s >= step_started_at_s]
    elapsed = newest.timestamp_s - step_started_at_s
    run = panic_run(in_step, slo, settings.error_rate_limit)
    observed = StepVerdict(
        StepAction.WAIT,
        "",
        observed_p99_ms=max(s.p99_ms for s in in_step),
        observed_error_rate=max(s.error_rate for s in in_step),
        observed_samples=len(in_step),
        elapsed_s=elapsed,
        breach_run=run,
    )
    where = f"step {step_index} (weight {step.weight:g})"
    if run >= settings.panic_samples and toward_safety:
        return replace(
            observed,
            action=StepAction.COMPLETE,
            reason=f"{where} broke the limits for {run} consecutive samples (observed p99 "
            f"{newest.p99_ms:.4g} ms vs the p{slo.percentile:g} {slo.latency_ms:g} ms SLO), but "
            "it is a move to safety from a plan that broke them already or was predicted to: "
            "the target is kept and the controller re-evaluates with it in force",
        )
    if run >= settings.panic_samples:
        return replace(
            observed,
            action=StepAction.ROLLBACK,
            reason=f"{where} broke the limits for {run} consecutive samples "
            f"(>= {settings.panic_samples}): observed p99 {newest.p99_ms:.4g} ms vs the "
            f"p{slo.percentile:g} {slo.latency_ms:g} ms SLO, error rate {newest.error_rate:.4g} vs "
            f"{settings.error_rate_limit:g}",
        )
    if elapsed < step.dwell_s:
        return replace(
            observed,
            reason=f"{where} has dwelt {elapsed:.4g} s of {step.dwell_s:.4g} s",
        )
    if run > 0:
        return replace(
            observed,
            reason=f"{where} dwelt {elapsed:.4g} s but the newest {run} sample(s) broke the limits "
            f"(observed p99 {newest.p99_ms:.4g} ms, error rate {newest.error_rate:.4g}); "
            f"rollback after {settings.panic_samples}",
        )
    met = (
        f"{where} met the p{slo.percentile:g} {slo.latency_ms:g} ms SLO and the "
        f"{settings.error_rate_limit:g} error-rate limit for {elapsed:.4g} s (dwell "
        f"{step.dwell_s:.4g} s; largest observed p99 {observed.observed_p99_ms:.4g} ms over "
        f"{len(in_step)} samples)"
    )
    action = StepAction.COMPLETE if step_index == len(steps) - 1 else StepAction.ADVANCE
    return replace(observed, action=action, reason=met)
