"""PlanResources over real and synthetic traffic: cost of autoscaling vs dedicated, SLO risk,
and the RPC's latency for a 1,440-point profile.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/plan_resources.py           # 100 timed calls
    PYTHONPATH=service .venv/bin/python bench/plan_resources.py --quick   # 20 timed calls

Traffic:

* Real: the Azure LLM inference traces of 2023 (``../shared/data/traces``, conversation and
  code, one hour each): arrivals counted per minute (60 points), each minute's count / 60 as
  the rate, multiplied by k (k = 30, 100, 300, 1000: as if k such services' traffic were
  merged, which keeps the trace's shape and scales its load; the hour is taken as a
  representative day for the per-day figures).
* Synthetic day: 1,440 per-minute points, rate = 1000 * (1 + 0.7 sin(2 pi (m / 1440 - 0.5)))
  requests/s (trough 300/s at 06:00, peak 1,700/s at 18:00).

Model: ResNet-50 on g4dn.xlarge (T4) as a linear fit of the published FP32 table,
s(b) = 5.24 + 2.288 b ms, b <= 64, $0.526/h, cold start 45 s; p99 SLO 300 ms. The plan is
derived by OptimizeBatch at each profile's peak (what PlanResources does when no plan is given).

Latency: the in-process server (servewise.server.start_server on 127.0.0.1:0) answers
PlanResources for the 1,440-point day; client-side = wall time of each call over a real
channel; server-side = wall time of the handler (``servewise.api.plan_resources.plan_resources``:
validation, the core in a worker thread, the response with its exports) called directly.

Writes bench/results/plan_resources.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if importlib.util.find_spec("servewise") is None:
    sys.path.insert(0, str(REPO / "service"))

import grpc  # noqa: E402

from bench.plan_quality import source_info  # noqa: E402
from servewise.api.plan_resources import plan_resources  # noqa: E402
from servewise.server import start_server  # noqa: E402
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2  # noqa: E402

DATA_DIR = Path(os.environ.get("SERVEWISE_DATA_DIR", REPO.parent / "shared" / "data"))
TRACES = {
    "conv": DATA_DIR / "traces" / "AzureLLMInferenceTrace_conv.csv",
    "code": DATA_DIR / "traces" / "AzureLLMInferenceTrace_code.csv",
}
SCALES = (30, 100, 300, 1000)
DEFAULT_OUT = REPO / "bench" / "results" / "plan_resources.json"
STRATEGY = {v: k for k, v in types_pb2.ResourceStrategy.items()}


def candidate() -> types_pb2.Candidate:
    return types_pb2.Candidate(
        instance_type=types_pb2.InstanceType(
            name="g4dn.xlarge", price_per_hour=0.526, max_batch_size=64, cold_start_s=45.0
        ),
        profile=types_pb2.LatencyProfile(
            linear=types_pb2.LinearProfile(base_ms=5.24, per_item_ms=2.288, max_batch_size=64)
        ),
    )


def per_minute_counts(path: Path) -> np.ndarray[Any, np.dtype[np.int64]]:
    with path.open(newline="") as f:
        stamps = [datetime.fromisoformat(row["TIMESTAMP"]) for row in csv.DictReader(f)]
    seconds = np.array([(t - stamps[0]).total_seconds() for t in stamps])
    return np.bincount((seconds // 60).astype(np.int64), minlength=60)


def points(rates: np.ndarray[Any, np.dtype[np.float64]]) -> list[types_pb2.RatePoint]:
    return [types_pb2.RatePoint(time_s=60.0 * i, rate_per_s=float(r)) for i, r in enumerate(rates)]


def deployment(name: str, rates: np.ndarray[Any, np.dtype[np.float64]], memory: int = 0) -> Any:
    return servewise_pb2.DeploymentSpec(
        name=name,
        candidates=[candidate()],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=300.0),
        rate_profile=points(rates),
        memory_bytes=memory,
    )


def diurnal() -> np.ndarray[Any, np.dtype[np.float64]]:
    minutes = np.arange(1440)
    result: np.ndarray[Any, np.dtype[np.float64]] = 1000.0 * (
        1.0 + 0.7 * np.sin(2.0 * np.pi * (minutes / 1440 - 0.5))
    )
    return result


def summarise(response: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "recommended": STRATEGY[response.recommended_strategy],
        "totals": {},
        "deployments": {},
    }
    for t in response.totals:
        key = STRATEGY[t.strategy] + ("/requested" if "requested" in t.reason else "")
        out["totals"][key] = _strategy(t)
    for d in response.deployments:
        a = d.recommended_autoscaler
        out["deployments"][d.name] = {
            "plan": f"{d.plan.instance_type} B={d.plan.max_batch_size} "
            f"T={d.plan.max_queue_delay_ms:g} ms N={d.plan.replicas}",
            "recommended_autoscaler": {
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "target_utilisation": a.target_utilisation,
                "scale_up_window_s": a.scale_up_window_s,
                "scale_down_window_s": a.scale_down_window_s,
                "startup_delay_s": a.startup_delay_s,
            },
            "strategies": [_strategy(s) for s in d.strategies],
        }
    return out


def _strategy(s: Any) -> dict[str, Any]:
    return {
        "strategy": STRATEGY[s.strategy],
        "reason": s.reason,
        "cost_per_day": round(s.cost_per_day, 4),
        "cost_per_month": round(s.cost_per_month, 2),
        "mean_utilisation": round(s.mean_utilisation, 4),
        "cost_per_million_requests": round(s.cost_per_million_requests, 4),
        "slo_risk_minutes": round(s.slo_risk_minutes, 3),
        "peak_replicas": s.peak_replicas,
        "mean_replicas": round(s.mean_replicas, 3),
    }


def real_traffic() -> list[dict[str, Any]]:
    rows = []
    for trace, path in TRACES.items():
        counts = per_minute_counts(path)
        for k in SCALES:
            rates = counts / 60.0 * k
            response = asyncio.run(
                plan_resources(
                    servewise_pb2.PlanResourcesRequest(deployments=[deployment(trace, rates)])
                )
            )
            summary = summarise(response)
            fixed = summary["totals"]["RESOURCE_STRATEGY_DEDICATED"]
            auto = summary["totals"]["RESOURCE_STRATEGY_AUTOSCALED"]
            rows.append(
                {
                    "trace": trace,
                    "scale_k": k,
                    "minutes": len(counts),
                    "mean_rate_per_s": round(float(rates.mean()), 2),
                    "peak_rate_per_s": round(float(rates.max()), 2),
                    "autoscaled_vs_dedicated_cost": round(
                        auto["cost_per_day"] / fixed["cost_per_day"], 4
                    ),
                    "autoscaled_slo_risk_minutes": auto["slo_risk_minutes"],
                    **summary,
                }
            )
    return rows


def shared_pair() -> dict[str, Any]:
    """The conversation and code traces (k = 30) as two deployments packed on 16 GB GPUs."""
    conv = per_minute_counts(TRACES["conv"]) / 60.0 * 30
    code = per_minute_counts(TRACES["code"]) / 60.0 * 30
    request = servewise_pb2.PlanResourcesRequest(
        deployments=[
            deployment("conv", conv, 6_000_000_000),
            deployment("code", code, 6_000_000_000),
        ],
        shared_instance_memory_bytes=16_000_000_000,
    )
    return summarise(asyncio.run(plan_resources(request)))


async def _latency(calls: int) -> dict[str, Any]:
    request = servewise_pb2.PlanResourcesRequest(deployments=[deployment("day", diurnal())])
    server_ms = []
    for _ in range(calls):
        start = time.perf_counter()
        await plan_resources(request)
        server_ms.append((time.perf_counter() - start) * 1000.0)
    running = await start_server("127.0.0.1:0", metrics_address=None)
    client_ms = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
            response = await stub.PlanResources(request, timeout=30)
            for _ in range(calls):
                start = time.perf_counter()
                await stub.PlanResources(request, timeout=30)
                client_ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        await running.stop(None)

    def stats(values: list[float]) -> dict[str, float]:
        array = np.asarray(values)
        return {
            "p50_ms": round(float(np.percentile(array, 50)), 2),
            "p99_ms": round(float(np.percentile(array, 99)), 2),
            "max_ms": round(float(array.max()), 2),
        }

    return {
        "profile_points": 1440,
        "calls": calls,
        "server_side": stats(server_ms),
        "client_side": stats(client_ms),
        "result": summarise(response),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 timed calls instead of 100")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    real = real_traffic()
    shared = shared_pair()
    latency = asyncio.run(_latency(20 if args.quick else 100))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        **source_info(),
        "real_traffic": real,
        "shared_conv_and_code": shared,
        "latency_1440_points": latency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'trace':6} {'k':>5} {'mean/s':>8} {'auto/ded':>9} {'risk min':>9} {'recommended'}")
    for row in real:
        print(
            f"{row['trace']:6} {row['scale_k']:>5} {row['mean_rate_per_s']:>8.1f} "
            f"{row['autoscaled_vs_dedicated_cost']:>9.3f} "
            f"{row['autoscaled_slo_risk_minutes']:>9.2f} {row['recommended']}"
        )
    print("shared conv+code (k=30):", {k: v["cost_per_day"] for k, v in shared["totals"].items()})
    day = latency["result"]["totals"]
    print(
        "1,440-point day:", {k: (v["cost_per_day"], v["slo_risk_minutes"]) for k, v in day.items()}
    )
    print(
        "PlanResources 1,440 points: server",
        latency["server_side"],
        "client",
        latency["client_side"],
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
