"""The live controller over the real request traces, against the four baselines of
``servewise replay`` (issue 4, Quality: cost within 10 % of hindsight-optimal, SLO-violation
minutes no more than static peak-sized batching, at most 1/5 of the naive switcher's switches).

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/replay.py            # every trace, both models
    PYTHONPATH=service .venv/bin/python bench/replay.py --quick    # K=1 runs of the first model

Traces: every ``*.csv`` with a TIMESTAMP column under ``../shared/data/traces`` (the Azure LLM
inference traces of 2023, conversation and code, one hour each; Patel et al., "Splitwise",
ISCA 2024, CC-BY-4.0). Each is replayed at its recorded rate with 60 s intervals (K=1) and with
its times divided by 4 (K=4: four times the rate, the hour compressed to 15 minutes) with 15 s
intervals, so both runs have ~59 intervals. Time scaling is how the data README says to test
higher loads; it keeps every burst and compresses the trace's time, not the switch costs.

Models (synthetic linear profiles for an LLM-like service, since no measured LLM batch table
is in ../shared/data; the serving model is ARCHITECTURE.md section 2):

* ``llm-small``: s(b) = 200 + 20 b ms, b <= 64, $2/h, cold start 60 s, p99 SLO 2 s (the
  ``servewise replay`` example and its tests). One replica carries the traces at K=1; the
  choice is the batch size (equal cost, different capacity under bursts).
* ``llm-large``: s(b) = 1000 + 150 b ms, b <= 32, $4/h, cold start 120 s, p99 SLO 10 s. The
  replica count follows the traffic (1-9 replicas), so cost depends on the controller.

Writes bench/results/replay.json (per run: every strategy's cost, switch cost, violation
minutes, switches split into scale actions and migrations, cost ratio to hindsight; the three
target checks; diagnostics: every strategy's running cost, mean replicas and violating
intervals, the controller's plan changes, its violation minutes under its initial plan, and the
controller's and static batching's from the first interval a reaction to the first sample can
serve) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if importlib.util.find_spec("servewise") is None:
    sys.path.insert(0, str(REPO / "service"))

from bench.plan_quality import source_info  # noqa: E402
from servewise.core import replay as rp  # noqa: E402
from servewise.core.model import Slo  # noqa: E402
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile  # noqa: E402


def _data_dir() -> Path:
    """$SERVEWISE_DATA_DIR, else ../shared/data beside the repository (or beside the folder
    holding a git worktree)."""
    if "SERVEWISE_DATA_DIR" in os.environ:
        return Path(os.environ["SERVEWISE_DATA_DIR"])
    for base in (REPO.parent, REPO.parent.parent):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    return REPO.parent / "shared" / "data"


DATA_DIR = _data_dir()
DEFAULT_OUT = REPO / "bench" / "results" / "replay.json"
RUNS = ((1.0, 60.0), (4.0, 15.0))  # (time scale K, interval s)
COST_TARGET = 1.10
CONTROLLER = rp.CONTROLLER
STATIC_BATCHING = rp.STATIC_BATCHING
SWITCH_TARGET = 0.2


@dataclass(frozen=True)
class Model:
    name: str
    candidate: Candidate
    slo: Slo


MODELS = (
    Model(
        "llm-small",
        Candidate(InstanceType("gpu", 2.0, cold_start_s=60.0), LatencyProfile.linear(200, 20, 64)),
        Slo(2000.0),
    ),
    Model(
        "llm-large",
        Candidate(
            InstanceType("gpu-large", 4.0, cold_start_s=120.0),
            LatencyProfile.linear(1000, 150, 32),
        ),
        Slo(10_000.0),
    ),
)


def traces() -> dict[str, Path]:
    """Every CSV under the data directory's traces/ whose header has a TIMESTAMP column."""
    found = {}
    for path in sorted((DATA_DIR / "traces").glob("*.csv")):
        with path.open(encoding="utf-8") as f:
            if "TIMESTAMP" in f.readline().upper():
                found[path.stem.removeprefix("AzureLLMInferenceTrace_")] = path
    return found


def run_one(trace: str, path: Path, model: Model, k: float, interval_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    result = rp.replay(
        rp.read_trace(path), [model.candidate], model.slo, interval_s=interval_s, time_scale=k
    )
    s = result.strategies
    hindsight = s[rp.HINDSIGHT]
    controller = s[rp.CONTROLLER]
    batching = s[rp.STATIC_BATCHING]
    naive = s[rp.NAIVE]
    strategies = {
        name: {
            "cost": round(r.cost, 4),
            "switch_cost": round(r.switch_cost, 4),
            "slo_violation_minutes": r.violation_minutes,
            "switches": r.switches,
            "scale_actions": r.scales,
            "migrations": r.migrations,
            "cost_ratio_to_hindsight": round(r.cost / hindsight.cost, 3),
            # Diagnostics: where the cost and the violations come from.
            "running_cost": round(r.cost - r.switch_cost, 4),
            "mean_replicas": round(sum(p.replicas for p in r.plans) / len(r.plans), 3),
            "violation_intervals": [i for i, q in enumerate(r.p99_ms) if q > model.slo.latency_ms],
        }
        for name, r in s.items()
    }
    # Diagnostic: the controller's violation minutes while the plan it started with was still in
    # force (before its first switch took effect): the start-up transient no reactive controller
    # avoids, whereas the static plan is sized for the trace's peak from the start.
    initial = controller.plans[0]
    startup = 0.0
    for plan, latency in zip(controller.plans, controller.p99_ms, strict=True):
        if plan != initial:
            break
        if latency > model.slo.latency_ms:
            startup += interval_s / 60.0
    # Diagnostic: violation minutes from the first interval a switch could serve at the
    # earliest (decided on the first sample, at the end of interval 0, then a cold start):
    # before it, any strategy that starts on the initial plan and reacts to samples is still on
    # that plan, whereas the static plans are sized for the trace's peak from the start.
    reachable = math.ceil((interval_s + model.candidate.instance.cold_start_s) / interval_s - 1e-9)

    def minutes_from(result: rp.StrategyResult, first: int) -> float:
        late = result.p99_ms[first:]
        return sum(interval_s / 60.0 for q in late if q > model.slo.latency_ms)

    return {
        "trace": trace,
        "model": model.name,
        "time_scale": k,
        "interval_s": interval_s,
        "intervals": len(result.rates_per_s),
        "mean_rate_per_s": round(float(result.rates_per_s.mean()), 3),
        "peak_interval_rate_per_s": round(float(result.rates_per_s.max()), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "strategies": strategies,
        "controller_violation_minutes_under_initial_plan": startup,
        "controller_plan_changes": [
            {"interval": i, "plan": p.describe()}
            for i, p in enumerate(controller.plans)
            if i == 0 or p != controller.plans[i - 1]
        ],
        "first_reachable_interval": reachable,
        "violation_minutes_from_first_reachable_interval": {
            CONTROLLER: minutes_from(controller, reachable),
            STATIC_BATCHING: minutes_from(batching, reachable),
        },
        "targets": {
            "cost_within_10pct_of_hindsight": controller.cost <= COST_TARGET * hindsight.cost,
            "violations_le_static_batching": controller.violation_minutes
            <= batching.violation_minutes,
            "switches_le_fifth_of_naive": controller.switches <= SWITCH_TARGET * naive.switches,
        },
        "controller_notes": controller.notes,
    }


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        f"{'trace':5} {'model':9} {'K':>2} {'strategy':22} {'cost $':>8} {'/hind':>6} "
        f"{'viol min':>8} {'switches':>8} {'scales':>6} {'migr':>4}"
    )
    for run in runs:
        for name, r in run["strategies"].items():
            print(
                f"{run['trace']:5} {run['model']:9} {run['time_scale']:>2g} {name:22} "
                f"{r['cost']:>8.3f} {r['cost_ratio_to_hindsight']:>6.3f} "
                f"{r['slo_violation_minutes']:>8.2f} {r['switches']:>8} {r['scale_actions']:>6} "
                f"{r['migrations']:>4}"
            )
        t = run["targets"]
        marks = " ".join(f"{key}={'yes' if ok else 'NO'}" for key, ok in t.items())
        print(f"      targets: {marks}")
        late = run["violation_minutes_from_first_reachable_interval"]
        print(
            "      controller violation minutes under its initial plan: "
            f"{run['controller_violation_minutes_under_initial_plan']:g}; from interval "
            f"{run['first_reachable_interval']} (the first a reaction to the first sample can "
            f"serve): controller {late[CONTROLLER]:g}, static batching {late[STATIC_BATCHING]:g}"
        )
    met = {key: sum(run["targets"][key] for run in runs) for key in runs[0]["targets"]}
    print("runs meeting each target: " + ", ".join(f"{k} {v}/{len(runs)}" for k, v in met.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=1 runs of llm-small only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    models = MODELS[:1] if args.quick else MODELS
    runs_spec = RUNS[:1] if args.quick else RUNS
    out = args.out or (DEFAULT_OUT.with_name("replay_quick.json") if args.quick else DEFAULT_OUT)
    load_before = os.getloadavg()
    if not traces():
        print(f"no traces with a TIMESTAMP column under {DATA_DIR / 'traces'}", file=sys.stderr)
        return 1
    runs = []
    for trace, path in traces().items():
        for model in models:
            for k, interval_s in runs_spec:
                print(f"replaying {trace} x{k:g} with {model.name} ...", flush=True)
                runs.append(run_one(trace, path, model, k, interval_s))
    summary = {
        key: f"{sum(run['targets'][key] for run in runs)}/{len(runs)}" for key in runs[0]["targets"]
    }
    data = {
        "bench": "replay",
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        **source_info(),
        "targets": {
            "cost_ratio_to_hindsight_at_most": COST_TARGET,
            "violation_minutes_at_most": "static-batching-peak's",
            "switches_at_most_fraction_of_naive": SWITCH_TARGET,
        },
        "summary": summary,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print_table(runs)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
