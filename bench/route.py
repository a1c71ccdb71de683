"""Route throughput against the stack's floor, and its latency at half load.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/route.py            # 2 x 6 x 5 s saturation phases
    PYTHONPATH=service .venv/bin/python bench/route.py --quick    # 2 x 4 x 2 s

Starts ``python -m servewise serve`` as a subprocess on a fresh SQLite file (the default store,
so Route's poller runs as in production; its log lines go to /dev/null), once per
``--log-levels`` entry (warning: no per-call log line for either RPC; info: Route logs one JSON
line per call, Health/Check, a quiet service, does not), registers one deployment in the
middle of a real-time -> batching shift (weight 0.25) and measures, in the same run on the same
server:

* **Saturation throughput**, closed loop: ``--procs`` client processes, each with one channel
  and ``--concurrency`` calls always in flight, for ``--seconds``; phases alternate no-op,
  Route, ... (``--rounds`` each) and each RPC's figure is the median of its phases. The contract
  has no no-op RPC, so the no-op is ``grpc.health.v1.Health/Check`` on the same server: the
  cheapest unary handler the stack serves (same interceptors, same event loop), i.e. the floor.
  Route keys cycle through 10,000 distinct request ids.
* **Server CPU per call** in each phase (utime + stime of the server process / calls), a figure
  that does not depend on whether the clients or the server saturate first (the machine may
  have few cores, shared by clients and server).
* **Latency at 50% load**, open loop: the same client processes send Route at half Route's
  saturation throughput (evenly spaced arrivals), and Check at the same rate, for
  ``--seconds``; p50/p99 of the client-side wall time per call.

Writes bench/results/route.json and prints a summary. The target: Route >= 90% of the no-op's
throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import SERVICE_ROOT, free_port, shifting_deployment  # noqa: E402
from bench.harness import cpu_seconds as _cpu_s  # noqa: E402
from servewise.v1 import servewise_pb2  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "route.json"
ROUTE = "/servewise.v1.ServewiseService/Route"
CHECK = "/grpc.health.v1.Health/Check"
DEPLOYMENT_ID = "bench-route"
KEYS = 10_000


def _requests(method: str) -> list[bytes]:
    if method == CHECK:
        from grpc_health.v1 import health_pb2  # noqa: PLC0415

        return [health_pb2.HealthCheckRequest(service="").SerializeToString()]
    return [
        servewise_pb2.RouteRequest(
            deployment_id=DEPLOYMENT_ID, request_key=f"req-{i}", traffic_class="interactive"
        ).SerializeToString()
        for i in range(KEYS)
    ]


async def _closed(target: str, method: str, concurrency: int, seconds: float) -> int:
    payloads = _requests(method)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        await call(payloads[0], timeout=10)
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop:
                await call(payloads[i % len(payloads)], timeout=10)
                done += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done


async def _open(target: str, method: str, rate: float, seconds: float, phase: float) -> list[float]:
    payloads = _requests(method)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        for _ in range(50):  # warm the channel
            await call(payloads[0], timeout=10)

        async def one(payload: bytes) -> None:
            t0 = time.perf_counter()
            await call(payload, timeout=10)
            latencies.append((time.perf_counter() - t0) * 1000.0)

        tasks = []
        start = time.perf_counter() + phase / rate
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[i % len(payloads)])))
        await asyncio.gather(*tasks)
    return latencies


def _closed_worker(args: tuple[str, str, int, float]) -> int:
    return asyncio.run(_closed(*args))


def _open_worker(args: tuple[str, str, float, float, float]) -> list[float]:
    return asyncio.run(_open(*args))


def _start_server(db: Path, port: int, log_level: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SERVICE_ROOT)}
    return subprocess.Popen(  # noqa: S603  # our own interpreter and CLI
        [sys.executable, "-m", "servewise", "serve", "--address", f"127.0.0.1:{port}",
         "--metrics-address", "off", "--store", f"sqlite://{db}", "--log-level", log_level],
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_and_register(target: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    from servewise.v1 import servewise_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        request = servewise_pb2.RegisterDeploymentRequest(
            deployment=shifting_deployment(DEPLOYMENT_ID)
        )
        response = stub.RegisterDeployment(request, timeout=30)
        return int(response.deployment.state_version)


def _pcts(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "calls": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def measure(args: argparse.Namespace, log_level: str) -> dict[str, Any]:
    """Saturation phases and half-load latency against one server at ``log_level``."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        target = f"127.0.0.1:{port}"
        proc = _start_server(Path(tmp) / "servewise.db", port, log_level)
        try:
            version = _wait_and_register(target)
            with ctx.Pool(args.procs) as pool:
                phases: list[dict[str, Any]] = []
                for method in (CHECK, ROUTE) * args.rounds:
                    cpu0 = _cpu_s(proc.pid)
                    t0 = time.perf_counter()
                    counts = pool.map(
                        _closed_worker,
                        [(target, method, args.concurrency, args.seconds)] * args.procs,
                    )
                    wall = time.perf_counter() - t0
                    cpu = _cpu_s(proc.pid) - cpu0
                    calls = sum(counts)
                    phases.append(
                        {
                            "method": method,
                            "calls": calls,
                            "throughput_per_s": calls / args.seconds,
                            "server_cpu_us_per_call": cpu / calls * 1e6,
                            "server_cpu_busy_fraction": cpu / wall,
                        }
                    )
                    print(
                        f"  [{log_level}] {method:40s} {calls / args.seconds:7.0f}/s  "
                        f"server {cpu / calls * 1e6:6.1f} us CPU/call",
                        flush=True,
                    )

                def median(method: str, key: str) -> float:
                    return float(np.median([p[key] for p in phases if p["method"] == method]))

                route_tp = median(ROUTE, "throughput_per_s")
                noop_tp = median(CHECK, "throughput_per_s")
                half = route_tp / 2.0
                latency: dict[str, Any] = {}
                for method in (ROUTE, CHECK):
                    parts = pool.map(
                        _open_worker,
                        [
                            (target, method, half / args.procs, args.seconds, k / args.procs)
                            for k in range(args.procs)
                        ],
                    )
                    latency[method] = _pcts([x for part in parts for x in part])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    route_cpu = median(ROUTE, "server_cpu_us_per_call")
    noop_cpu = median(CHECK, "server_cpu_us_per_call")
    return {
        "server_log_level": log_level,
        "state_version": version,
        "phases": phases,
        "route_throughput_per_s": route_tp,
        "noop_throughput_per_s": noop_tp,
        "throughput_ratio": route_tp / noop_tp,
        "route_server_cpu_us_per_call": route_cpu,
        "noop_server_cpu_us_per_call": noop_cpu,
        "cpu_ratio_noop_over_route": noop_cpu / route_cpu,
        "half_load_rate_per_s": half,
        "latency_at_half_load": {"route": latency[ROUTE], "noop": latency[CHECK]},
        "meets_target": route_tp / noop_tp >= 0.9,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = {level: measure(args, level) for level in args.log_levels}
    return {
        "benchmark": "route",
        "noop": "grpc.health.v1.Health/Check on the same server (the contract has no no-op RPC)",
        "note": "Figures are medians over the alternating phases. Health is a quiet service in "
        "servewise.obs (its per-call log line is at debug), while Route logs one JSON line per "
        "call at info: at --log-level warning neither logs (same per-call work apart from the "
        "handler), at info Route also pays its log line.",
        "setup": {
            "store": "sqlite (temporary file), Route table polled every 0.25 s",
            "deployment": "real-time -> batching shift at weight 0.25, "
            f"{KEYS:,} distinct request keys",
            "client_processes": args.procs,
            "concurrency_per_process": args.concurrency,
            "seconds_per_phase": args.seconds,
            "phases_per_rpc": args.rounds,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "runs": runs,
        "target": "route throughput >= 0.9 x no-op",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s phases")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per process")
    parser.add_argument("--rounds", type=int, default=3, help="phases per RPC (alternating)")
    parser.add_argument(
        "--log-levels",
        nargs="+",
        default=["warning", "info"],
        help="the server's --log-level, one run each",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2.0, 2
    doc = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for level, r in doc["runs"].items():
        lat = r["latency_at_half_load"]
        print(
            f"[{level}] Route {r['route_throughput_per_s']:.0f}/s vs no-op "
            f"{r['noop_throughput_per_s']:.0f}/s = {r['throughput_ratio']:.1%} (server CPU "
            f"{r['route_server_cpu_us_per_call']:.0f} vs {r['noop_server_cpu_us_per_call']:.0f}"
            f" us/call); at {r['half_load_rate_per_s']:.0f}/s Route p50 "
            f"{lat['route']['p50_ms']:.2f} ms p99 {lat['route']['p99_ms']:.2f} ms (no-op p50 "
            f"{lat['noop']['p50_ms']:.2f}, p99 {lat['noop']['p99_ms']:.2f})"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
