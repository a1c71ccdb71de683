"""Plan quality of ``optimize()``: SLO attainment, cost against an exhaustive search and against
the batching defaults people deploy, and predictor accuracy.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/plan_quality.py            # 40 scenarios
    PYTHONPATH=service .venv/bin/python bench/plan_quality.py --quick    # 8, shorter sims

For each scenario of ``bench/scenarios.py``:

a. ``optimize()`` is called and timed.
b. The recommended plan is simulated independently: ``confirm_requests`` (200k) requests on a
   fresh arrival sample (its own seed, never given to ``optimize``). "SLO met" = the run is
   stable (rate below capacity and long enough for the tail to settle) and its p99 <= SLO.
c. Exhaustive simulation-based search for the cheapest plan over (type, B, T, N): B = every
   power of two, every profile point and the cap, up to the cap; T = 0 and a geometric grid from
   0.02*SLO to SLO; for each (type, B, T) the fewest replicas meeting the SLO (bisection on N,
   which is checked at the answer: N passes and N-1 fails). Every plan is simulated on the same
   ``exhaustive_requests`` (100k) arrival sample (common random numbers; plans too near
   capacity for it to verify are judged on a 1M-request extension). Pruning: (type, B) are
   visited by their capacity-bound cost (fewest replicas with capacity above the rate) and
   dropped once that bound reaches the best cost found; for each (type, B, T) only replica
   counts that would beat the best are simulated. The search never looks at optimize()'s answer.
   The winner is confirmed on the fresh 200k sample.
d. Baselines, each at the fewest replicas meeting the SLO on a ``baseline_requests`` (100k)
   sample and on its cheapest instance type: real-time (B=1, T=0); Triton default (largest
   batch the memory/profile allows, T=0); Ray Serve default (B=min(10, cap), T=10 ms);
   TorchServe-style (largest batch, T=100 ms); Nexus rule (largest B with 2*s(B) <= SLO, else 1;
   T=0). A baseline needing more than 256 replicas on every type is "infeasible".
e. Predictor accuracy: ``queueing.predict()`` and the optimizer's own ``predicted`` latency at
   the SLO percentile against the fresh 200k simulation, as |pred - sim| / sim.

Runs scenarios on 2 worker processes; writes bench/results/plan_quality.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The servewise package on PYTHONPATH wins (for example an exported commit); else this tree's.
if importlib.util.find_spec("servewise") is None:
    sys.path.insert(0, str(REPO / "service"))

import servewise  # noqa: E402
from bench import scenarios as scen  # noqa: E402
from servewise.core import queueing, simulator  # noqa: E402
from servewise.core.model import Plan  # noqa: E402
from servewise.core.optimizer import optimize  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "plan_quality.json"
MAX_REPLICAS = 256  # SearchLimits' default: the optimizer may use up to this many
REL_TOL = 1e-9

TARGETS = {
    "slo_met_fraction": 1.0,
    "cost_ratio_median_max": 1.03,
    "cost_ratio_worst_max": 1.10,
    "costlier_than_baseline_max": 0,
    "predictor_error_median_max": 0.05,
    "predictor_error_worst_max": 0.15,
}


@dataclass(frozen=True)
class Config:
    scenarios: int = 40
    seed: int = 2026
    exhaustive_requests: int = 100_000
    baseline_requests: int = 100_000
    confirm_requests: int = 200_000
    # A near-critical plan whose run is too short to verify its tail ("unverified", not
    # "stable") is re-run on a longer sample of the same seed before it is judged.
    long_requests: int = 1_000_000
    confirm_long_requests: int = 2_000_000
    t_points: int = 16  # geometric points of T besides 0
    t_low_fraction: float = 0.02  # smallest nonzero T as a fraction of the SLO
    workers: int = 2
    quick: bool = False
    use_optimize: bool = True


QUICK = {
    "scenarios": 8,
    "exhaustive_requests": 20_000,
    "baseline_requests": 30_000,
    "confirm_requests": 60_000,
    "long_requests": 200_000,
    "confirm_long_requests": 400_000,
    "t_points": 6,
}


def _seed(sc: scen.Scenario, stream: int) -> int:
    """A per-scenario seed for one purpose (1: CRN sample, 2: fresh confirmation sample),
    never one optimize() uses (it samples with DEFAULT_SEED and DEFAULT_SEED + 1 by default)."""
    seed = int(np.random.SeedSequence([sc.seed, sc.index, stream, 7919]).generate_state(1)[0])
    return seed + 2 if seed in (simulator.DEFAULT_SEED, simulator.DEFAULT_SEED + 1) else seed


def _plan_json(plan: Plan | None) -> dict[str, Any] | None:
    return None if plan is None else asdict(plan)


class Referee:
    """Simulates plans of one scenario on one fixed arrival sample, with a result cache."""

    def __init__(self, sc: scen.Scenario, arrivals_ms: np.ndarray, long_ms: np.ndarray) -> None:
        self.sc = sc
        self.workload = sc.workload()
        self.slo = sc.slo()
        self.specs = {c.name: c for c in sc.candidates}
        self.profiles = {c.name: c.profile() for c in sc.candidates}
        self.arrivals_ms = arrivals_ms
        self.long_ms = long_ms  # same seed, longer: for plans too near capacity to verify
        self.cache: dict[tuple[str, int, float, int], bool] = {}
        # (type, B, T) -> replica count at or below which the plan failed a confirmation run.
        self.veto: dict[tuple[str, int, float], int] = {}
        self.simulations = 0
        self.long_simulations = 0

    def capacity_bound(self, name: str, b: int) -> int:
        """Fewest replicas whose capacity exceeds the rate."""
        per_replica = simulator.capacity_per_s(self.profiles[name], b, 1)
        return math.floor(self.sc.rate_per_s / per_replica) + 1

    def meets(self, name: str, b: int, t: float, n: int) -> bool:
        if n <= self.veto.get((name, b, t), 0):
            return False
        key = (name, b, t, n)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        if n < self.capacity_bound(name, b):
            ok = False
        else:
            self.simulations += 1
            plan = Plan(name, b, t, n)
            prof = self.profiles[name]
            res = simulator.simulate(
                prof, plan, self.workload, slo=self.slo, arrivals_ms=self.arrivals_ms
            )
            if not res.stable and len(self.long_ms) > len(self.arrivals_ms):
                # Below capacity (n >= the capacity bound) but the run is too short to trust
                # the tail: judge it on the longer sample instead.
                self.long_simulations += 1
                res = simulator.simulate(
                    prof, plan, self.workload, slo=self.slo, arrivals_ms=self.long_ms
                )
            lat = res.latency.slo_percentile_ms
            ok = bool(res.stable and lat is not None and lat <= self.slo.latency_ms)
        self.cache[key] = ok
        return ok

    def min_replicas(self, name: str, b: int, t: float, n_max: int) -> int | None:
        """Fewest replicas <= n_max meeting the SLO with (b, t), assuming monotonicity in N
        (bisection; the answer N is checked to pass and N-1 to fail)."""
        n_lb = self.capacity_bound(name, b)
        n_max = min(n_max, MAX_REPLICAS)
        if n_max < n_lb:
            return None
        if self.meets(name, b, t, n_lb):
            return n_lb
        lo = n_lb  # fails
        hi = None
        probe = n_lb
        # Grow geometrically towards n_max, so that an answer near n_lb costs few simulations.
        while hi is None:
            probe = min(n_max, max(probe + 1, probe * 2))
            if self.meets(name, b, t, probe):
                hi = probe
            elif probe >= n_max:
                return None
            else:
                lo = probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.meets(name, b, t, mid):
                hi = mid
            else:
                lo = mid
        return hi

    def min_s_ms(self, name: str) -> float:
        spec = self.specs[name]
        return float(np.min(self.profiles[name].table_ms(spec.max_batch_size)[1:]))


def batch_grid(spec: scen.CandidateSpec) -> list[int]:
    cap = spec.max_batch_size
    # Powers of two and their 1.5x midpoints (3, 6, 12, ...), finer than the brief's powers of two.
    sizes = {1 << k for k in range(cap.bit_length()) if (1 << k) <= cap}
    sizes |= {3 << k for k in range(cap.bit_length()) if (3 << k) <= cap}
    sizes |= {b for b in spec.batch_sizes if b <= cap}
    sizes.add(cap)
    return sorted(sizes)


def delay_grid(slo_ms: float, cfg: Config) -> list[float]:
    geo = np.geomspace(cfg.t_low_fraction * slo_ms, slo_ms, cfg.t_points)
    return [0.0, *(float(x) for x in geo)]


def _n_max_below(best_cost: float | None, price: float) -> int:
    """Most replicas of a type at ``price`` that still beat ``best_cost`` strictly."""
    if best_cost is None:
        return MAX_REPLICAS
    return math.ceil(best_cost / price * (1 - REL_TOL)) - 1


def exhaustive(ref: Referee, cfg: Config) -> tuple[float, Plan] | None:
    """Cheapest plan on the grid meeting the SLO on the referee's sample (see module docs)."""
    items = []
    for spec in ref.sc.candidates:
        if ref.min_s_ms(spec.name) > ref.slo.latency_ms:
            continue  # every request takes at least min s(b)
        for b in batch_grid(spec):
            n_lb = ref.capacity_bound(spec.name, b)
            if n_lb <= MAX_REPLICAS:
                items.append((n_lb * spec.price_per_hour, spec.name, b))
    items.sort()
    delays = delay_grid(ref.slo.latency_ms, cfg)
    best: tuple[float, Plan] | None = None
    for lb_cost, name, b in items:
        if best is not None and lb_cost >= best[0] * (1 - REL_TOL):
            break
        price = ref.specs[name].price_per_hour
        for t in delays:
            n_max = _n_max_below(best[0] if best else None, price)
            n = ref.min_replicas(name, b, t, n_max)
            if n is not None:
                best = (n * price, Plan(name, b, t, n))
    return best


def _nexus_batch(spec: scen.CandidateSpec, slo_ms: float) -> int:
    prof = spec.profile()
    fits = [b for b in range(1, spec.max_batch_size + 1) if 2 * prof.service_time_ms(b) <= slo_ms]
    return max(fits) if fits else 1


BASELINES: dict[str, tuple[str, Callable[[scen.CandidateSpec, float], tuple[int, float]]]] = {
    "realtime": ("B=1, T=0", lambda s, slo: (1, 0.0)),
    "triton_default": ("largest batch, T=0", lambda s, slo: (s.max_batch_size, 0.0)),
    "ray_serve_default": (
        "B=min(10,cap), T=10ms",
        lambda s, slo: (min(10, s.max_batch_size), 10.0),
    ),
    "torchserve_style": ("largest batch, T=100ms", lambda s, slo: (s.max_batch_size, 100.0)),
    "nexus_rule": ("largest B with 2*s(B)<=SLO, T=0", lambda s, slo: (_nexus_batch(s, slo), 0.0)),
}


def baseline(
    ref: Referee, rule: Callable[[scen.CandidateSpec, float], tuple[int, float]]
) -> tuple[float, Plan] | None:
    """The rule's (B, T) on every type at its fewest replicas; the cheapest type wins."""
    items = []
    for spec in ref.sc.candidates:
        b, t = rule(spec, ref.slo.latency_ms)
        items.append((ref.capacity_bound(spec.name, b) * spec.price_per_hour, spec.name, b, t))
    items.sort()
    best: tuple[float, Plan] | None = None
    for lb_cost, name, b, t in items:
        if best is not None and lb_cost >= best[0] * (1 - REL_TOL):
            break
        price = ref.specs[name].price_per_hour
        n = ref.min_replicas(name, b, t, _n_max_below(best[0] if best else None, price))
        if n is not None:
            best = (n * price, Plan(name, b, t, n))
    return best


def confirm(
    sc: scen.Scenario, plan: Plan, arrivals_ms: np.ndarray, long_ms: np.ndarray, seed: int
) -> dict[str, Any]:
    """Simulate ``plan`` on the fresh sample; a below-capacity plan whose run is too short to
    verify its tail is re-run on the longer fresh sample (same seed).

    A plan meets the SLO when it passes there and also on the whole long fresh sample: a
    single 200k-request run cannot tell a plan whose long-run p99 sits a hair above the
    bound from one a hair below it (s2026-002's 7-replica plan passed its 200k run by 0.06%
    while its p99 over six 1M-request seeds averaged 0.2% over), and the exhaustive search's
    winner, a minimum over many plans, is exactly where such plans collect. The optimizer's
    answer and the search's winner are judged alike.
    """
    spec = {c.name: c for c in sc.candidates}[plan.instance_type]
    t0 = time.perf_counter()
    res = simulator.simulate(
        spec.profile(), plan, sc.workload(), slo=sc.slo(), arrivals_ms=arrivals_ms
    )
    used = len(arrivals_ms)
    capacity = simulator.capacity_per_s(spec.profile(), plan.max_batch_size, plan.replicas)
    if not res.stable and capacity > sc.rate_per_s and len(long_ms) > used:
        res = simulator.simulate(
            spec.profile(), plan, sc.workload(), slo=sc.slo(), arrivals_ms=long_ms
        )
        used = len(long_ms)
    lat = res.latency.slo_percentile_ms
    meets = bool(res.stable and lat is not None and lat <= sc.slo_ms)
    long_check: dict[str, Any] | None = None
    if meets and used < len(long_ms):
        whole = simulator.simulate(
            spec.profile(), plan, sc.workload(), slo=sc.slo(), arrivals_ms=long_ms
        )
        whole_lat = whole.latency.slo_percentile_ms
        long_check = {
            "requests": len(long_ms),
            "slo_percentile_ms": whole_lat,
            "stable": whole.stable,
            "meets_slo": bool(whole.stable and whole_lat is not None and whole_lat <= sc.slo_ms),
        }
        meets = long_check["meets_slo"]
    return {
        "seed": seed,
        "requests": used,
        "slo_percentile_ms": lat,
        "p50_ms": res.latency.p50_ms,
        "p99_ms": res.latency.p99_ms,
        "stable": res.stable,
        "stability_reason": res.stability_reason,
        "utilisation": res.utilisation,
        "mean_batch_size": res.mean_batch_size,
        "long_check": long_check,
        "meets_slo": meets,
        "seconds": time.perf_counter() - t0,
    }


def _rel_err(pred: float | None, actual: float | None) -> float | None:
    if pred is None or actual is None or not math.isfinite(pred) or actual <= 0:
        return None
    return abs(pred - actual) / actual


def evaluate(args: tuple[scen.Scenario, Config]) -> dict[str, Any]:  # noqa: PLR0915
    sc, cfg = args
    started = time.perf_counter()
    out: dict[str, Any] = {"id": sc.id, "scenario": sc.to_json()}
    wl, slo = sc.workload(), sc.slo()

    # a. optimize
    opt_plan: Plan | None = None
    opt_cost: float | None = None
    t0 = time.perf_counter()
    try:
        if not cfg.use_optimize:
            raise NotImplementedError("--no-optimize")
        result = optimize(sc.core_candidates(), wl, slo)
        seconds = time.perf_counter() - t0
        rec = result.recommended
        out["optimize"] = {
            "available": True,
            "seconds": seconds,
            "feasible": result.feasible,
            "binding": result.binding.value,
            "binding_reason": result.binding_reason,
            "plans_considered": result.plans_considered,
            "plan": _plan_json(rec.plan if rec else None),
            "cost_per_hour": rec.cost_per_hour if rec else None,
            "predicted_ms": rec.predicted.slo_percentile_ms if rec else None,
            "simulated_ms": (
                rec.simulated.latency.slo_percentile_ms if rec and rec.simulated else None
            ),
            "optimizer_meets_slo": rec.meets_slo if rec else None,
        }
        if result.feasible and rec is not None:
            opt_plan, opt_cost = rec.plan, rec.cost_per_hour
    except NotImplementedError:
        out["optimize"] = {"available": False}

    # Arrival samples: one CRN sample for the exhaustive search (its prefix) and the baselines,
    # one fresh sample for every confirmation.
    crn_seed, fresh_seed = _seed(sc, 1), _seed(sc, 2)
    # Shorter samples are prefixes of the long ones.
    n_crn = max(cfg.exhaustive_requests, cfg.baseline_requests, cfg.long_requests)
    crn = simulator.generate_arrivals_ms(wl, n_crn, np.random.default_rng(crn_seed))
    fresh_long = simulator.generate_arrivals_ms(
        wl, max(cfg.confirm_requests, cfg.confirm_long_requests), np.random.default_rng(fresh_seed)
    )
    fresh = fresh_long[: cfg.confirm_requests]

    # b. independent long simulation of the recommendation
    if opt_plan is not None:
        out["optimize"]["confirm"] = confirm(sc, opt_plan, fresh, fresh_long, fresh_seed)

    # c. exhaustive search
    ref = Referee(sc, crn[: cfg.exhaustive_requests], crn[: cfg.long_requests])
    t0 = time.perf_counter()
    raw = best = exhaustive(ref, cfg)
    rejected: list[dict[str, Any]] = []
    best_confirm = None
    # A winner picked as the minimum over many plans on one sample can pass by luck (winner's
    # curse): when it fails the fresh sample, veto it and search again (a few times at most).
    for _ in range(6):
        if best is None:
            break
        best_confirm = confirm(sc, best[1], fresh, fresh_long, fresh_seed)
        if best_confirm["meets_slo"]:
            break
        p = best[1]
        rejected.append(
            {
                "plan": _plan_json(p),
                "cost_per_hour": best[0],
                "fresh_sim_ms": best_confirm["slo_percentile_ms"],
            }
        )
        ref.veto[(p.instance_type, p.max_batch_size, p.max_queue_delay_ms)] = p.replicas
        best = exhaustive(ref, cfg)
    ex: dict[str, Any] = {
        "seed": crn_seed,
        "requests": cfg.exhaustive_requests,
        "seconds": time.perf_counter() - t0,
        "simulations": ref.simulations,
        "long_simulations": ref.long_simulations,
        "plan": _plan_json(best[1] if best else None),
        "cost_per_hour": best[0] if best else None,
        "confirm": best_confirm if best else None,
        "raw_winner_rejected_by_fresh_sim": rejected,
    }
    if best is not None and opt_cost is not None:
        ex["cost_ratio"] = opt_cost / best[0]
        if raw is not None:
            ex["cost_ratio_raw"] = opt_cost / raw[0]
    out["exhaustive"] = ex

    # d. baselines
    ref_b = Referee(sc, crn[: cfg.baseline_requests], crn[: cfg.long_requests])
    t0 = time.perf_counter()
    reference_cost = opt_cost if opt_cost is not None else (best[0] if best else None)
    bl: dict[str, Any] = {}
    for key, (label, rule) in BASELINES.items():
        found = baseline(ref_b, rule)
        entry: dict[str, Any] = {
            "rule": label,
            "feasible": found is not None,
            "plan": _plan_json(found[1] if found else None),
            "cost_per_hour": found[0] if found else None,
        }
        if found is not None and reference_cost is not None:
            entry["ratio_to_servewise"] = found[0] / reference_cost
        bl[key] = entry
    out["baselines"] = bl
    out["baselines_meta"] = {
        "requests": cfg.baseline_requests,
        "seconds": time.perf_counter() - t0,
        "simulations": ref_b.simulations,
        "long_simulations": ref_b.long_simulations,
        "compared_against": "optimize" if opt_cost is not None else "exhaustive (optimize n/a)",
    }

    # e. predictor accuracy at the recommended plan (the exhaustive winner as a stand-in while
    # optimize() is unavailable)
    subject = opt_plan if opt_plan is not None else (best[1] if best else None)
    if subject is not None:
        sim_ms = (out["optimize"]["confirm"] if opt_plan is not None else ex["confirm"])[
            "slo_percentile_ms"
        ]
        prof = {c.name: c for c in sc.candidates}[subject.instance_type].profile()
        analytic = queueing.predict(prof, subject, wl, slo).slo_percentile_ms
        reported = out["optimize"].get("predicted_ms") if opt_plan is not None else None
        out["predictor"] = {
            "plan_source": "optimize" if opt_plan is not None else "exhaustive",
            "sim_ms": sim_ms,
            "analytic_ms": analytic,
            "optimizer_ms": reported,
            "analytic_rel_err": _rel_err(analytic, sim_ms),
            "optimizer_rel_err": _rel_err(reported, sim_ms),
        }
    out["seconds"] = time.perf_counter() - started
    return out


# ----------------------------------------------------------------------------------------------
# Summary and report


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _plan_str(p: dict[str, Any] | None) -> str:
    if not p:
        return "-"
    t = p["max_queue_delay_ms"]
    return f"{p['instance_type']} B={p['max_batch_size']} T={t:.3g} N={p['replicas']}"


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: PLR0912, PLR0915
    n = len(records)
    opt_available = any(r["optimize"].get("available") for r in records)
    flags: list[dict[str, Any]] = []
    met = 0
    ratios: list[float] = []
    opt_times: list[float] = []
    for r in records:
        o = r["optimize"]
        if not o.get("available"):
            continue
        opt_times.append(o["seconds"])
        if not o["feasible"]:
            flags.append(
                {"id": r["id"], "issue": "optimize says infeasible", "reason": o["binding_reason"]}
            )
            continue
        c = o["confirm"]
        if c["meets_slo"]:
            met += 1
        else:
            flags.append(
                {
                    "id": r["id"],
                    "issue": "SLO missed in the fresh-seed simulation",
                    "requests": c["requests"],
                    "plan": _plan_str(o["plan"]),
                    "sim_ms": c["slo_percentile_ms"],
                    "slo_ms": r["scenario"]["slo_ms"],
                    "stable": c["stable"],
                    "stability_reason": c["stability_reason"],
                }
            )
        if o["plan"]["replicas"] > 200:
            flags.append(
                {"id": r["id"], "issue": "more than 200 replicas", "plan": _plan_str(o["plan"])}
            )
        ratio = r["exhaustive"].get("cost_ratio")
        if ratio is not None:
            ratios.append(ratio)
            if ratio > 1.03:
                flags.append(
                    {
                        "id": r["id"],
                        "issue": f"cost ratio to exhaustive {ratio:.3f}",
                        "plan": _plan_str(o["plan"]),
                        "cost": o["cost_per_hour"],
                        "exhaustive_plan": _plan_str(r["exhaustive"]["plan"]),
                        "exhaustive_cost": r["exhaustive"]["cost_per_hour"],
                    }
                )
    for r in records:
        ex = r["exhaustive"]
        if ex.get("confirm") and not ex["confirm"]["meets_slo"]:
            flags.append(
                {
                    "id": r["id"],
                    "issue": "exhaustive winner fails the fresh-seed sim",
                    "plan": _plan_str(ex["plan"]),
                    "sim_ms": ex["confirm"]["slo_percentile_ms"],
                }
            )

    # Where Servewise waits for batches (T > 0): the best baseline's cost beside its own. A
    # delay pays where it is strictly cheaper than all of them (tight SLOs at high rates).
    with_delay: list[dict[str, Any]] = []
    for r in records:
        plan = r["optimize"].get("plan")
        if (
            not plan
            or plan["max_queue_delay_ms"] <= 0
            or r["optimize"].get("cost_per_hour") is None
        ):
            continue
        feasible = {k: b for k, b in r["baselines"].items() if b["feasible"]}
        best_key = min(feasible, key=lambda k: feasible[k]["cost_per_hour"], default=None)
        best_cost = feasible[best_key]["cost_per_hour"] if best_key else None
        with_delay.append(
            {
                "id": r["id"],
                "servewise_plan": _plan_str(plan),
                "servewise_cost": r["optimize"]["cost_per_hour"],
                "best_baseline": best_key,
                "best_baseline_cost": best_cost,
                "best_baseline_over_servewise": (
                    best_cost / r["optimize"]["cost_per_hour"] if best_cost else None
                ),
            }
        )

    baselines: dict[str, Any] = {}
    for key, (label, _rule) in BASELINES.items():
        cheaper = equal = costlier = infeasible = 0
        bl_ratios = []
        for r in records:
            b = r["baselines"][key]
            if not b["feasible"]:
                infeasible += 1
                cheaper += 1
                continue
            ratio = b.get("ratio_to_servewise")
            if ratio is None:
                continue
            bl_ratios.append(ratio)
            if ratio > 1 + 1e-9:
                cheaper += 1
            elif ratio < 1 - 1e-9:
                costlier += 1
                if opt_available:
                    flags.append(
                        {
                            "id": r["id"],
                            "issue": f"baseline {key} is cheaper",
                            "baseline_plan": _plan_str(b["plan"]),
                            "baseline_cost": b["cost_per_hour"],
                            "servewise_plan": _plan_str(r["optimize"].get("plan")),
                            "servewise_cost": r["optimize"].get("cost_per_hour"),
                        }
                    )
            else:
                equal += 1
        baselines[key] = {
            "rule": label,
            "servewise_cheaper": cheaper,
            "equal": equal,
            "servewise_costlier": costlier,
            "baseline_infeasible": infeasible,
            "median_ratio_baseline_over_servewise": _median(bl_ratios),
            "max_ratio": max(bl_ratios) if bl_ratios else None,
        }

    def errs(key: str) -> list[float]:
        return [
            r["predictor"][key]
            for r in records
            if r.get("predictor") and r["predictor"][key] is not None
        ]

    predictor = {}
    for key in ("analytic_rel_err", "optimizer_rel_err"):
        e = errs(key)
        predictor[key] = {"median": _median(e), "worst": max(e) if e else None, "count": len(e)}
    for r in records:
        p = r.get("predictor")
        if p and p["optimizer_rel_err"] is not None and p["optimizer_rel_err"] > 0.15:
            flags.append(
                {
                    "id": r["id"],
                    "issue": f"optimizer's predicted p99 off by {p['optimizer_rel_err']:.0%}",
                    "predicted_ms": p["optimizer_ms"],
                    "sim_ms": p["sim_ms"],
                }
            )

    return {
        "scenarios": n,
        "optimize_available": opt_available,
        "slo_met": met,
        "slo_met_of": sum(1 for r in records if r["optimize"].get("available")),
        "cost_ratio_to_exhaustive": {
            "median": _median(ratios),
            "worst": max(ratios) if ratios else None,
            "best": min(ratios) if ratios else None,
            "count": len(ratios),
        },
        "baselines": baselines,
        "servewise_with_delay": {
            "scenarios": with_delay,
            "strictly_cheaper_than_every_baseline": sum(
                1
                for w in with_delay
                if w["best_baseline_over_servewise"] is None
                or w["best_baseline_over_servewise"] > 1 + 1e-9
            ),
        },
        "predictor": predictor,
        "optimize_seconds": {
            "median": _median(opt_times),
            "max": max(opt_times) if opt_times else None,
        },
        "exhaustive_simulations_total": sum(r["exhaustive"]["simulations"] for r in records),
        "flags": flags,
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_report(records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(
        f"{'scenario':11s} {'rate/s':>9s} {'cv':>4s} {'SLO ms':>8s}  {'servewise plan':44s} "
        f"{'$/h':>8s} {'sim p99':>8s} {'ok':>2s} {'exh $/h':>8s} {'ratio':>6s} {'opt s':>6s}"
    )
    for r in records:
        s, o, ex = r["scenario"], r["optimize"], r["exhaustive"]
        c = o.get("confirm") or {}
        print(
            f"{r['id'][-11:]:11s} {s['rate_per_s']:9.4g} {s['arrival_cv']:4.1f} "
            f"{s['slo_ms']:8.4g}{'*' if s['tight'] else ' '} {_plan_str(o.get('plan'))[:44]:44s} "
            f"{_fmt(o.get('cost_per_hour'), '8.3f'):>8s} "
            f"{_fmt(c.get('slo_percentile_ms'), '8.4g'):>8s} "
            f"{('y' if c.get('meets_slo') else 'N') if c else '-':>2s} "
            f"{_fmt(ex.get('cost_per_hour'), '8.3f'):>8s} {_fmt(ex.get('cost_ratio'), '6.3f'):>6s} "
            f"{_fmt(o.get('seconds'), '6.3f'):>6s}"
        )
    sm = summary
    cr = sm["cost_ratio_to_exhaustive"]
    print()
    if not sm["optimize_available"]:
        print("optimize() is not available: only the exhaustive search and baselines ran.")
    n_fresh = next(
        (r["optimize"]["confirm"]["requests"] for r in records if r["optimize"].get("confirm")), 0
    )
    print(
        f"SLO met (fresh-seed sim, {n_fresh:,} requests; longer where near capacity): "
        f"{sm['slo_met']}/{sm['slo_met_of']}   (target: all)"
    )
    print(
        f"cost ratio optimize/exhaustive: median {_fmt(cr['median'])}, worst {_fmt(cr['worst'])}"
        f", best {_fmt(cr['best'])}   (targets <= 1.03, <= 1.10)"
    )
    print(
        f"optimize() time: median {_fmt(sm['optimize_seconds']['median'])} s, "
        f"max {_fmt(sm['optimize_seconds']['max'])} s"
    )
    print()
    print(
        f"{'baseline':18s} {'rule':34s} {'SW cheaper':>10s} {'equal':>6s} {'SW costlier':>11s} "
        f"{'infeas.':>7s} {'median base/SW':>14s}"
    )
    for key, b in sm["baselines"].items():
        print(
            f"{key:18s} {b['rule']:34s} {b['servewise_cheaper']:>10d} {b['equal']:>6d} "
            f"{b['servewise_costlier']:>11d} {b['baseline_infeasible']:>7d} "
            f"{_fmt(b['median_ratio_baseline_over_servewise'], '14.3f'):>14s}"
        )
    wd = sm["servewise_with_delay"]
    print(
        f"\nwhere Servewise waits for batches (T > 0): {len(wd['scenarios'])} scenarios, strictly "
        f"cheaper than every baseline in {wd['strictly_cheaper_than_every_baseline']}"
    )
    for w in wd["scenarios"]:
        print(
            f"  {w['id']}  {w['servewise_plan']:42s} {w['servewise_cost']:9.3f}  best baseline "
            f"{w['best_baseline'] or '-':18s} {_fmt(w['best_baseline_cost'], '9.3f')}  "
            f"x{_fmt(w['best_baseline_over_servewise'], '.2f')}"
        )
    print()
    pa, po = sm["predictor"]["analytic_rel_err"], sm["predictor"]["optimizer_rel_err"]
    print(
        f"predictor |rel err| at the SLO percentile vs the fresh sim: analytic queueing.predict "
        f"median {_fmt(pa['median'])}, worst {_fmt(pa['worst'])}; optimizer's reported "
        f"median {_fmt(po['median'])}, worst {_fmt(po['worst'])}   (targets <= 0.05, <= 0.15)"
    )
    if sm["flags"]:
        print(f"\nFLAGS ({len(sm['flags'])}):")
        for f in sm["flags"]:
            print("  " + "; ".join(f"{k}={v}" for k, v in f.items()))


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def source_info() -> dict[str, Any]:
    """Which servewise the run measured: this tree's working copy (commit + uncommitted changes)
    or an export on PYTHONPATH (commit from $SERVEWISE_COMMIT or a ``servewise-<sha>`` folder)."""
    root = Path(servewise.__file__).resolve().parents[1]
    info: dict[str, Any] = {
        "bench_repo_head": _git("rev-parse", "HEAD"),
        "servewise_source": str(root),
    }
    if root == REPO / "service":
        info["servewise_commit"] = info["bench_repo_head"]
        status = _git("status", "--porcelain", "--", "service") or ""
        info["uncommitted_service_changes"] = [
            ln.strip() for ln in status.splitlines() if ln.strip()
        ]
    else:
        match = re.search(r"servewise-([0-9a-f]{7,40})", str(root))
        named = os.environ.get("SERVEWISE_COMMIT") or (match.group(1) if match else None)
        info["servewise_commit"] = _git("rev-parse", named) if named else None
        info["uncommitted_service_changes"] = []
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=None, help="number of scenarios (40)")
    parser.add_argument("--seed", type=int, default=Config.seed, help="scenario generator seed")
    parser.add_argument("--quick", action="store_true", help="8 scenarios, shorter simulations")
    parser.add_argument("--workers", type=int, default=Config.workers)
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip optimize() (debug the exhaustive search and baselines)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output ({DEFAULT_OUT})")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.scenarios is not None:
        overrides["scenarios"] = args.scenarios
    cfg = Config(
        seed=args.seed,
        workers=args.workers,
        quick=args.quick,
        use_optimize=not args.no_optimize,
        **overrides,
    )
    out_path = args.out or (
        DEFAULT_OUT.with_name("plan_quality_quick.json") if args.quick else DEFAULT_OUT
    )

    todo = [(sc, cfg) for sc in scen.generate(cfg.scenarios, cfg.seed)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    with multiprocessing.get_context("fork").Pool(cfg.workers) as pool:
        for rec in pool.imap_unordered(evaluate, todo):
            records.append(rec)
            o = rec["optimize"]
            print(
                f"[{len(records):3d}/{len(todo)}] {rec['id']} {rec['seconds']:.1f}s "
                f"({rec['exhaustive']['simulations']} exhaustive sims) "
                f"plan {_plan_str(o.get('plan'))}",
                file=sys.stderr,
                flush=True,
            )
    records.sort(key=lambda r: r["scenario"]["index"])
    wall = time.perf_counter() - started
    summary = summarise(records)
    summary["wall_seconds"] = wall
    doc = {
        "benchmark": "plan_quality",
        "config": asdict(cfg),
        "targets": TARGETS,
        **source_info(),
        "python": platform.python_version(),
        "machine": {
            "cpus": multiprocessing.cpu_count(),
            "platform": platform.platform(),
            # Other work on the machine inflates optimize() times; plan figures are unaffected.
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        "summary": summary,
        "scenarios": records,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print_report(records, summary)
    print(
        f"\nwall time {wall:.0f} s; load average before {load_before[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f} on {multiprocessing.cpu_count()} CPUs; wrote {out_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
