"""A plan's SLO-percentile latency over several long, independent runs of one bench scenario.

For judging plans that sit close to their SLO, where one run's p99 is not evidence either way
(plan_quality's referee accepted s2026-002's 7-replica plan on a single 200k-request run that
passed by 0.06%). Prints each seed's figure, their mean, and the predictor's estimate.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/long_run_p99.py \
        2 g4dn.xlarge/resnet50-amp 16 2.985424764274871 7
    PYTHONPATH=service .venv/bin/python bench/long_run_p99.py \
        24 g4dn.xlarge/resnext101-amp 192 0 9 --requests 2000000

Arguments: scenario index (bench/scenarios.py, seed 2026), instance name as the scenario names
it, max batch size, max queue delay (ms), replicas. Seeds are 1000, 1001, ... (never the
optimizer's or plan_quality's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenarios  # noqa: E402
from servewise.core import queueing  # noqa: E402
from servewise.core.model import Plan  # noqa: E402
from servewise.core.simulator import capacity_per_s, simulate  # noqa: E402

FIRST_SEED = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=int)
    parser.add_argument("instance")
    parser.add_argument("max_batch_size", type=int)
    parser.add_argument("max_queue_delay_ms", type=float)
    parser.add_argument("replicas", type=int)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=2026, help="the scenario suite's seed")
    args = parser.parse_args(argv)

    scenario = scenarios.make_scenario(args.seed, args.scenario)
    by_name = {c.instance.name: c for c in scenario.core_candidates()}
    if args.instance not in by_name:
        parser.error(f"instance must be one of {sorted(by_name)}")
    candidate = by_name[args.instance]
    plan = Plan(args.instance, args.max_batch_size, args.max_queue_delay_ms, args.replicas)
    workload, slo = scenario.workload(), scenario.slo()
    load = scenario.rate_per_s / capacity_per_s(
        candidate.profile, plan.max_batch_size, plan.replicas
    )
    predicted = queueing.predict(candidate.profile, plan, workload, slo).slo_percentile_ms
    print(
        f"{scenario.id}: {plan.describe()} at {scenario.rate_per_s:.6g}/s, CV "
        f"{scenario.arrival_cv:.3g}, load {load:.1%}; SLO p{slo.percentile:g} <= "
        f"{slo.latency_ms:.6g} ms; predicted {predicted:.6g} ms"
    )
    values = []
    for k in range(args.seeds):
        result = simulate(
            candidate.profile, plan, workload, args.requests, seed=FIRST_SEED + k, slo=slo
        )
        value = result.latency.slo_percentile_ms
        assert value is not None
        values.append(value)
        verdict = "meets" if result.stable and value <= slo.latency_ms else "misses"
        print(f"  seed {FIRST_SEED + k}: {value:.6g} ms ({verdict}; {result.stability_reason})")
    mean = sum(values) / len(values)
    print(f"mean of {len(values)} runs of {args.requests} requests: {mean:.6g} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
