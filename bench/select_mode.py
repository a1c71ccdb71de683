"""SelectMode benchmark: mode choice against an exhaustive referee, spot Monte Carlo agreement,
and server-side latency.

1. Suite (``--scenarios`` 40, seeded). Scenario i takes bench/scenarios.py's scenario i (real
   profiles and prices, rate, p99 SLO, arrival CV) and lays traffic classes over it by a seeded
   draw: one online class; online + a deferrable rate class (deadline 1-120 min); a deferrable
   class alone; online + a one-off backlog; or two online classes with SLOs 1x and 2-4x.
   Instances get a 30-120 s cold start. ``select_mode`` answers (no spot, no latency price).
   The referee, independently, finds each mode's cheapest cost by exhaustive search:
   pools by bench/plan_quality.py's exhaustive grid (every type, B on powers of two, their 1.5x
   midpoints and profile points, T = 0 and geometric points up to the SLO, fewest N by
   bisection, every plan simulated on one shared sample) with every class requirement checked
   on the simulated latencies; jobs by every (type, B on that grid, N from the fewest to +3)
   under the billing model (per-second bills of each replica). The referee's mode is the
   cheapest feasible (ties to the simpler mode, as the service). Match = same mode, or a tie
   in the referee's costs. Gap = referee cost of the service's mode / referee's best - 1.
2. Spot: the service's deadline probability (vectorised, 4,000 runs) against an independent
   10,000-run attempt-by-attempt Monte Carlo, on several jobs.
3. CPU: in this process, ``--cpu-reps`` select_mode calls per suite request (the server's
   request, converted as the servicer does: break-even search on, seed 1) after one warm-up
   call; per scenario the median process CPU time (every thread of the call) and wall time,
   and a digest of the whole answer (repr of the result: every mode's plan and cost, the
   break-even rates, the notes), so a speed-up can be checked to leave answers unchanged.
   CPU time is far less sensitive to other load on the machine than latency.
4. Latency: the real server as a subprocess (bench/rpc_latency.py's Server); ``--calls``
   SelectMode calls cycling through the suite's requests, sequential, after warm-up; server
   time from the per-RPC log line. The load average (1, 5, 15 min) is recorded before and
   after: compare latencies only between runs on an otherwise idle machine.

Run: PYTHONPATH=service .venv/bin/python bench/select_mode.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import plan_quality as pq  # noqa: E402
from bench import rpc_latency as rl  # noqa: E402
from bench import scenarios as scen  # noqa: E402
from servewise.api.select_mode import select_mode_args  # noqa: E402
from servewise.core import simulator  # noqa: E402
from servewise.core.model import Plan, Slo  # noqa: E402
from servewise.core.modes import (  # noqa: E402
    MODE_ORDER,
    Mode,
    SelectInputs,
    TrafficClass,
    offline_job_for,
    pool_requirements,
    pool_workload,
    select_mode,
)
from servewise.core.offline import (  # noqa: E402
    OfflineOptions,
    SpotOffer,
    on_demand_cost,
    replica_work_s,
    spot_outcome,
)
from servewise.core.profiles import Candidate  # noqa: E402
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "select_mode.json"
INF = math.inf


def layout(sc: scen.Scenario) -> tuple[list[TrafficClass], list[Candidate], str]:
    rng = np.random.default_rng([sc.seed, sc.index, 17])
    kind = str(
        rng.choice(
            ["online", "mixed", "deferrable", "backlog", "two-slo"], p=[0.3, 0.25, 0.15, 0.15, 0.15]
        )
    )
    cands = [
        replace(c, instance=replace(c.instance, cold_start_s=float(rng.uniform(30, 120))))
        for c in sc.core_candidates()
    ]
    slo = Slo(sc.slo_ms, 99.0)
    rate, cv = sc.rate_per_s, sc.arrival_cv
    deadline = float(np.exp(rng.uniform(math.log(60), math.log(7200))))
    if kind == "online":
        classes = [TrafficClass("web", rate_per_s=rate, slo=slo, arrival_cv=cv)]
    elif kind == "mixed":
        share = float(rng.uniform(0.2, 0.5))
        classes = [
            TrafficClass("web", rate_per_s=rate * share, slo=slo, arrival_cv=cv),
            TrafficClass("bulk", rate_per_s=rate * (1 - share), deadline_s=deadline),
        ]
    elif kind == "deferrable":
        classes = [TrafficClass("bulk", rate_per_s=rate, deadline_s=deadline, arrival_cv=cv)]
    elif kind == "backlog":
        backlog = int(rate * float(np.exp(rng.uniform(math.log(600), math.log(36000)))))
        classes = [
            TrafficClass("web", rate_per_s=rate, slo=slo, arrival_cv=cv),
            TrafficClass("backfill", backlog_requests=max(backlog, 1), deadline_s=deadline * 4),
        ]
    else:
        share = float(rng.uniform(0.2, 0.5))
        loose = Slo(sc.slo_ms * float(rng.uniform(2, 4)), 99.0)
        classes = [
            TrafficClass("strict", rate_per_s=rate * share, slo=slo, arrival_cv=cv),
            TrafficClass("loose", rate_per_s=rate * (1 - share), slo=loose, arrival_cv=cv),
        ]
    return classes, cands, kind


class PoolReferee(pq.Referee):
    """plan_quality's referee for a pool of classes: every requirement checked."""

    def __init__(
        self,
        classes: list[TrafficClass],
        cands: list[Candidate],
        seed: int,
        requests: int,
        realtime: bool,
    ) -> None:
        workload = pool_workload(classes)
        primary, others = pool_requirements(classes)
        specs = tuple(
            scen.CandidateSpec(
                name=c.instance.name,
                instance_type=c.instance.name,
                price_per_hour=c.instance.price_per_hour,
                hardware="",
                kind="",
                profile_source="",
                batch_sizes=c.profile.batch_sizes,
                latencies_ms=c.profile.latencies_ms,
                memory_cap=c.instance.max_batch_size,
            )
            for c in cands
        )
        if realtime:
            specs = tuple(replace(s, memory_cap=1) for s in specs)
        sc = scen.Scenario(
            0,
            seed,
            "x",
            workload.rate_per_s,
            workload.arrival_cv,
            primary.latency_ms,
            False,
            specs,
            0,
        )
        rng = np.random.default_rng(seed)
        arrivals = simulator.generate_arrivals_ms(workload, requests, rng)
        long = simulator.generate_arrivals_ms(workload, requests * 10, np.random.default_rng(seed))
        super().__init__(sc, arrivals, long)
        self.workload = workload
        self.slo = primary
        self.reqs = [primary, *others]

    def meets(self, name: str, b: int, t: float, n: int) -> bool:
        key = (name, b, t, n)
        if key in self.cache:
            return self.cache[key]
        if n < self.capacity_bound(name, b):
            self.cache[key] = False
            return False
        plan = Plan(name, b, t, n)
        ok = False
        for arrivals in (self.arrivals_ms, self.long_ms):
            res, lat = simulator.simulate_with_latencies(
                self.profiles[name], plan, self.workload, arrivals_ms=arrivals
            )
            self.simulations += 1
            if res.stable:
                values = simulator.order_statistics(lat, [s.percentile for s in self.reqs])
                ok = all(v <= s.latency_ms for v, s in zip(values, self.reqs, strict=True))
                break
        self.cache[key] = ok
        return ok


def referee_pool(
    classes: list[TrafficClass],
    cands: list[Candidate],
    seed: int,
    cfg: pq.Config,
    realtime: bool = False,
) -> float:
    ref = PoolReferee(classes, cands, seed, cfg.exhaustive_requests, realtime)
    best = pq.exhaustive(ref, cfg)
    return INF if best is None else best[0]


def referee_job(cls: TrafficClass, cands: list[Candidate]) -> float:
    """Cheapest on-demand cost per hour of the class's job over every (type, B, N) nearby."""
    job = offline_job_for(cls)
    best = INF
    for c in cands:
        cold = c.instance.cold_start_s
        spec_grid = sorted(
            {1 << k for k in range(c.max_batch_size.bit_length())}
            | {3 << k for k in range(c.max_batch_size.bit_length()) if (3 << k) <= c.max_batch_size}
            | {c.max_batch_size}
        )
        for b in spec_grid:
            if cold + c.profile.service_time_ms(b) / 1000 > job.window_s:
                continue
            n = 1
            total = sum(replica_work_s(c, job.requests, b, 1))
            n = max(1, math.ceil(total / (job.window_s - cold)))
            top = min(256, math.ceil(job.requests / b))
            while n <= top and cold + max(replica_work_s(c, job.requests, b, n)) > job.window_s:
                n += 1
            for m in range(n, min(n + 3, top) + 1):
                works = replica_work_s(c, job.requests, b, m)
                if cold + max(works) > job.window_s:
                    continue
                cost = on_demand_cost(works, cold, c.instance.price_per_hour)
                if job.period_s is not None:
                    cost = min(cost, m * job.period_s * c.instance.price_per_hour / 3600)
                span = job.period_s if job.period_s is not None else job.window_s
                best = min(best, cost * 3600 / span)
    return best


def referee_modes(
    classes: list[TrafficClass], cands: list[Candidate], seed: int, cfg: pq.Config
) -> dict[Mode, float]:
    out: dict[Mode, float] = dict.fromkeys(MODE_ORDER, INF)
    if all(c.rate_per_s is not None for c in classes):
        out[Mode.REALTIME] = referee_pool(classes, cands, seed, cfg, realtime=True)
        out[Mode.DYNAMIC_BATCHING] = referee_pool(classes, cands, seed, cfg)
    if all(c.deferrable for c in classes):
        out[Mode.OFFLINE_BATCH] = sum(referee_job(c, cands) for c in classes)
    if len(classes) >= 2:
        urgent = [c for c in classes if not c.deferrable]
        deferrable = [c for c in classes if c.deferrable]
        groups = [urgent] if deferrable else [[c] for c in urgent]
        total = sum(referee_pool(g, cands, seed, cfg) for g in groups if g)
        for c in deferrable:
            options = [referee_job(c, cands)]
            if c.rate_per_s is not None:
                options.append(referee_pool([c], cands, seed, cfg))
            total += min(options)
        out[Mode.HYBRID] = total
    return out


def evaluate(args: tuple[int, int, pq.Config]) -> dict[str, Any]:
    seed, index, cfg = args
    sc = scen.make_scenario(seed, index)
    classes, cands, kind = layout(sc)
    start = time.perf_counter()
    result = select_mode(classes, SelectInputs(cands, break_even=False))
    seconds = time.perf_counter() - start
    service_cost = {o.mode: (o.cost_per_hour if o.feasible else INF) for o in result.modes}
    ref = referee_modes(classes, cands, seed * 1000 + index, cfg)
    feasible = [(c, MODE_ORDER.index(m), m) for m, c in ref.items() if math.isfinite(c)]
    ref_mode = min(feasible)[2] if feasible else None
    chosen = result.chosen
    gap = None
    if ref_mode is not None and chosen is not None:
        gap = ref[chosen] / ref[ref_mode] - 1 if math.isfinite(ref[chosen]) else INF
    match = chosen is ref_mode or (gap is not None and gap <= 1e-9)
    return {
        "id": sc.id,
        "kind": kind,
        "classes": [
            {
                "name": c.name,
                "rate_per_s": c.rate_per_s,
                "backlog": c.backlog_requests,
                "slo": None if c.slo is None else [c.slo.percentile, c.slo.latency_ms],
                "deadline_s": c.deadline_s,
            }
            for c in classes
        ],
        "chosen": None if chosen is None else chosen.name,
        "referee": None if ref_mode is None else ref_mode.name,
        "match": match,
        "gap": gap,
        "select_seconds": seconds,
        "service_cost_per_hour": {m.name: c for m, c in service_cost.items()},
        "referee_cost_per_hour": {m.name: c for m, c in ref.items()},
        "reasons": result.reasons[:1],
    }


def _independent(
    works: list[float], cold: float, offer: SpotOffer, opts: OfflineOptions, runs: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam = offer.interruptions_per_hour / 3600
    out = np.empty(runs)
    for r in range(runs):
        worst = 0.0
        for w in works:
            t, done = cold, 0.0
            while done < w - 1e-12:
                need = min(opts.checkpoint_interval_s or w, w - done)
                x = rng.exponential(1 / lam)
                if x >= need:
                    t, done = t + need, done + need
                else:
                    t += x + opts.restart_s
            worst = max(worst, t)
        out[r] = worst
    return out


SPOT_CASES = (  # (works s, cold s, interruptions/h, checkpoint s, restart s, window s)
    ([7000.0] * 3 + [6500.0], 40.0, 1.5, 600.0, 180.0, 9000.0),
    ([3600.0] * 8, 60.0, 0.5, 300.0, 120.0, 3900.0),
    ([1800.0] * 2, 30.0, 2.0, 0.0, 90.0, 2500.0),
    ([20000.0], 90.0, 0.2, 900.0, 300.0, 21500.0),
    ([900.0] * 16, 45.0, 4.0, 120.0, 60.0, 1100.0),
)


def spot_agreement() -> list[dict[str, Any]]:
    rows = []
    for i, (works, cold, rate, ckpt, restart, window) in enumerate(SPOT_CASES):
        offer = SpotOffer(0.16, rate)
        opts = OfflineOptions(True, ckpt, restart)
        svc = spot_outcome(works, cold, window, offer, opts, seed=100 + i)
        ref = _independent(works, cold, offer, opts, 10_000, seed=900 + i)
        p_ref = float((ref <= window).mean())
        rows.append(
            {
                "replicas": len(works),
                "interruptions_per_hour": rate,
                "checkpoint_s": ckpt,
                "window_s": window,
                "service_p": svc.deadline_probability,
                "reference_p": p_ref,
                "diff_pp": 100 * abs(svc.deadline_probability - p_ref),
                "service_runs": svc.runs,
                "reference_runs": 10_000,
            }
        )
    return rows


def to_request(classes: list[TrafficClass], cands: list[Candidate]) -> Any:
    pbs = []
    for c in classes:
        tc = servewise_pb2.TrafficClass(name=c.name, arrival_cv=c.arrival_cv)
        if c.rate_per_s is not None:
            tc.rate_per_s = c.rate_per_s
        else:
            tc.backlog_requests = c.backlog_requests or 1
        if c.slo is not None:
            tc.slo.CopyFrom(types_pb2.Slo(latency_ms=c.slo.latency_ms, percentile=c.slo.percentile))
        else:
            tc.deadline_s = c.deadline_s or 1.0
        pbs.append(tc)
    cpbs = []
    for c in cands:
        inst = types_pb2.InstanceType(
            name=c.instance.name,
            price_per_hour=c.instance.price_per_hour,
            cold_start_s=c.instance.cold_start_s,
        )
        if c.instance.max_batch_size is not None:
            inst.max_batch_size = c.instance.max_batch_size
        cpbs.append(
            types_pb2.Candidate(
                instance_type=inst,
                profile=types_pb2.LatencyProfile(
                    points=types_pb2.PointsProfile(
                        points=[
                            types_pb2.ProfilePoint(batch_size=b, latency_ms=v)
                            for b, v in zip(
                                c.profile.batch_sizes, c.profile.latencies_ms, strict=True
                            )
                        ]
                    )
                ),
            )
        )
    return servewise_pb2.SelectModeRequest(traffic_classes=pbs, candidates=cpbs, seed=1)


def cpu_per_scenario(ids: list[str], requests: list[Any], reps: int) -> dict[str, Any]:
    """Median CPU and wall time of in-process select_mode calls per request, and a digest of
    each answer."""
    rows = []
    for sid, request in zip(ids, requests, strict=True):
        args = select_mode_args(request)
        answer = select_mode(args.classes, args.inputs)
        digest = hashlib.sha256(repr(answer).encode()).hexdigest()[:16]
        cpu, wall = [], []
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            select_mode(args.classes, args.inputs)
            cpu.append((time.process_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
        rows.append(
            {
                "id": sid,
                "cpu_ms": statistics.median(cpu),
                "wall_ms": statistics.median(wall),
                "answer_digest": digest,
            }
        )
    by_cpu = sorted(rows, key=lambda r: -r["cpu_ms"])
    return {
        "reps": reps,
        "sum_cpu_ms": sum(r["cpu_ms"] for r in rows),
        "max_cpu_ms": by_cpu[0]["cpu_ms"],
        "heaviest": [(r["id"], round(r["cpu_ms"], 1)) for r in by_cpu[:5]],
        "answers_digest": hashlib.sha256(
            "".join(r["answer_digest"] for r in rows).encode()
        ).hexdigest()[:16],
        "scenarios": rows,
    }


def latency(requests: list[Any], calls: int, warmup: int) -> dict[str, Any]:
    server = rl.Server()
    try:
        port = server.wait_started()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            for i in range(warmup):
                stub.SelectMode(requests[i % len(requests)], timeout=60)
            time.sleep(0.2)
            server.rpc_durations("SelectMode")
            client = []
            for i in range(calls):
                t = time.perf_counter()
                stub.SelectMode(requests[i % len(requests)], timeout=60)
                client.append((time.perf_counter() - t) * 1000)
            time.sleep(0.5)
            srv = server.rpc_durations("SelectMode")
    finally:
        server.stop()

    def stats(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs)
        return {
            "count": len(xs),
            "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()),
        }

    return {"server": stats(srv), "client": stats(client)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--cpu-reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    cfg = pq.Config(exhaustive_requests=40_000, t_points=8)
    if a.quick:
        a.scenarios, a.calls = 8, 50
        cfg = pq.Config(exhaustive_requests=20_000, t_points=5)
    t0 = time.time()
    with ProcessPoolExecutor(a.workers) as ex:
        records = list(ex.map(evaluate, [(a.seed, i, cfg) for i in range(a.scenarios)]))
    gaps = [r["gap"] for r in records if r["gap"] is not None]
    summary = {
        "scenarios": len(records),
        "matches": sum(r["match"] for r in records),
        "match_fraction": sum(r["match"] for r in records) / len(records),
        "worst_gap": max(gaps) if gaps else None,
        "kinds": {k: sum(r["kind"] == k for r in records) for k in {r["kind"] for r in records}},
        "suite_seconds": time.time() - t0,
    }
    spot = spot_agreement()
    summary["spot_worst_diff_pp"] = max(r["diff_pp"] for r in spot)
    requests = []
    for i in range(a.scenarios):
        classes, cands, _ = layout(scen.make_scenario(a.seed, i))
        req = to_request(classes, cands)
        select_mode_args(req)
        requests.append(req)
    cpu = cpu_per_scenario([r["id"] for r in records], requests, a.cpu_reps)
    load_before = [round(x, 2) for x in os.getloadavg()]
    lat = latency(requests, a.calls, 10)
    lat["load_average_before"] = load_before
    lat["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = {
        "summary": summary,
        "cpu": cpu,
        "latency": lat,
        "spot": spot,
        "records": records,
        "source": pq.source_info(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({"summary": summary, "latency": lat}, indent=1))
    print(
        f"in-process CPU per call (median of {cpu['reps']}): sum over scenarios "
        f"{cpu['sum_cpu_ms']:.0f} ms, max {cpu['max_cpu_ms']:.1f} ms, heaviest {cpu['heaviest']}; "
        f"answers digest {cpu['answers_digest']}"
    )
    for r in records:
        if not r["match"]:
            print("MISMATCH", r["id"], r["kind"], r["chosen"], r["referee"], r["gap"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
