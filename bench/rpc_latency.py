"""RPC latency and footprint of the real server.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/rpc_latency.py            # 1000 + 1000 calls
    PYTHONPATH=service .venv/bin/python bench/rpc_latency.py --quick    # 100 + 100 calls

Starts ``python -m servewise serve --address 127.0.0.1:0 --metrics-address 127.0.0.1:0`` as a
subprocess (the real CLI, logging one JSON line per RPC on stdout), reads its port from the
``server_started`` line, waits for gRPC health SERVING and then measures:

* RSS after start-up: VmRSS from /proc/PID/status once health says SERVING (and VmHWM, the
  peak, at the end).
* OptimizeBatch with 4 instance types x 16 profile points: ``--calls`` calls sequentially from
  one client, then ``--calls`` calls shared by 4 concurrent clients (one channel each).
  Client-side latency is the wall time of each call in the client; server-side latency is the
  ``duration_ms`` of the server's JSON log line for that RPC (the interceptor's measurement).
  Requests cycle through 8 workloads (rates, SLOs, burstiness) so that no single easy case
  dominates; every call in a phase uses the same seed field (0 = server default).
* Simulate of a 200,000-request generated workload (5 calls): client and server time.

Profiles: the four candidates carry measured NVIDIA DeepLearningExamples ResNet-50 v1.5 p99
latency tables (T4 and V100 16GB, FP32 and AMP; via /work/shared/data/profiles.json, see
bench/scenarios.py) resampled at 16 batch sizes (1, 2, 3, 4, 6, ..., 192, 256) by linear
interpolation of the 9 published points (the service interpolates the same way), priced at AWS
on-demand us-east-1 rates (SkyPilot catalog via /work/shared/data/prices.json).

Writes bench/results/rpc_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The servewise package on PYTHONPATH wins (for example an exported commit); else this tree's.
if importlib.util.find_spec("servewise") is None:
    sys.path.insert(0, str(REPO / "service"))

import servewise  # noqa: E402
from bench import scenarios as scen  # noqa: E402
from bench.harness import (  # noqa: E402
    children_cpu_seconds,
    children_rss_mb,
    cpu_seconds,
    percentiles,
)
from bench.plan_quality import source_info  # noqa: E402
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2  # noqa: E402

# The server subprocess runs the same servewise source as this client imports.
SERVICE_ROOT = Path(servewise.__file__).resolve().parents[1]

DEFAULT_OUT = REPO / "bench" / "results" / "rpc_latency.json"
SIXTEEN_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CANDIDATES = (  # (instance type, measured profile id)
    ("g4dn.xlarge", "dle-pt-resnet-50-v1-5-t4-amp"),
    ("g5g.2xlarge", "dle-pt-resnet-50-v1-5-t4-fp32"),
    ("p3.2xlarge", "dle-pt-resnet-50-v1-5-v100-16gb-amp"),
    ("p3.2xlarge-fp32", "dle-pt-resnet-50-v1-5-v100-16gb-fp32"),
)
# (rate req/s, arrival CV, p99 SLO ms): light to heavy load, Poisson and bursty, loose and tight.
WORKLOADS = (
    (5.0, 1.0, 100.0),
    (50.0, 3.0, 200.0),
    (200.0, 1.0, 50.0),
    (800.0, 1.0, 150.0),
    (1500.0, 2.0, 80.0),
    (3000.0, 1.0, 300.0),
    (8000.0, 1.0, 120.0),
    (20000.0, 2.5, 500.0),
)
TARGETS = {
    "optimize_p50_ms_max": 10.0,
    "optimize_p99_ms_max": 50.0,
    "rss_after_start_mb_max": 120.0,
}


def candidate_pb(instance: str, profile_id: str) -> types_pb2.Candidate:
    _hw, _folder, _table, p99 = scen.REAL_PROFILES[profile_id]
    base_instance = instance.split("-", maxsplit=1)[0]
    price = scen.INSTANCES[base_instance][1]
    lat = np.interp(SIXTEEN_SIZES, (1, 2, 4, 8, 16, 32, 64, 128, 256), p99)
    return types_pb2.Candidate(
        instance_type=types_pb2.InstanceType(name=instance, price_per_hour=price),
        profile=types_pb2.LatencyProfile(
            points=types_pb2.PointsProfile(
                points=[
                    types_pb2.ProfilePoint(batch_size=b, latency_ms=float(v))
                    for b, v in zip(SIXTEEN_SIZES, lat, strict=True)
                ]
            )
        ),
    )


def optimize_requests() -> list[servewise_pb2.OptimizeBatchRequest]:
    cands = [candidate_pb(i, p) for i, p in CANDIDATES]
    return [
        servewise_pb2.OptimizeBatchRequest(
            candidates=cands,
            workload=types_pb2.Workload(rate_per_s=rate, arrival_cv=cv),
            slo=types_pb2.Slo(latency_ms=slo, percentile=99.0),
        )
        for rate, cv, slo in WORKLOADS
    ]


def simulate_request() -> servewise_pb2.SimulateRequest:
    return servewise_pb2.SimulateRequest(
        candidate=candidate_pb(*CANDIDATES[0]),
        plan=types_pb2.ServingPlan(max_batch_size=32, max_queue_delay_ms=5.0, replicas=2),
        workload=types_pb2.Workload(rate_per_s=1500.0, arrival_cv=1.0),
        num_requests=200_000,
        slo=types_pb2.Slo(latency_ms=100.0),
    )


class Server:
    """The CLI server as a subprocess; its stdout JSON lines are collected by a thread."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SERVICE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "servewise",
                "serve",
                "--address",
                "127.0.0.1:0",
                "--metrics-address",
                "127.0.0.1:0",
                "--log-level",
                "info",
                "--grace-s",
                "1",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.started: dict[str, Any] | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "server_started":
                self.started = rec
                self._ready.set()
            self.lines.put(rec)
        self._ready.set()

    def wait_started(self, timeout_s: float = 60.0) -> int:
        if not self._ready.wait(timeout_s) or self.started is None:
            err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() else ""
            raise RuntimeError(f"server did not start: {err[-2000:]}")
        return int(self.started["port"])

    def rpc_durations(self, method: str) -> list[float]:
        """duration_ms of every logged RPC of ``method`` since the last call (drains the queue)."""
        out = []
        while True:
            try:
                rec = self.lines.get_nowait()
            except queue.Empty:
                return out
            if rec.get("event") == "rpc" and str(rec.get("method", "")).endswith(method):
                out.append(float(rec["duration_ms"]))

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _wait_serving(target: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server never reported SERVING")
            await asyncio.sleep(0.05)


async def _client(
    target: str,
    reqs: list[Any],
    start: int,
    count: int,
    step: int,
    out: list[float],
    errors: list[str],
    by_request: list[list[float]] | None = None,
) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = servewise_pb2_grpc.ServewiseServiceStub(ch)
        for k in range(count):
            idx = (start + k * step) % len(reqs)
            req = reqs[idx]
            t0 = time.perf_counter()
            try:
                await stub.OptimizeBatch(req, timeout=60)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            out.append(ms)
            if by_request is not None:
                by_request[idx].append(ms)


def _headline(doc: dict[str, Any]) -> dict[str, float]:
    """The figures the targets read, of one run."""
    ob = doc["optimize_batch"]
    seq, four = ob["sequential_1_client"], ob["concurrent_4_clients"]
    return {
        "seq_client_p50_ms": seq["client"]["p50_ms"],
        "seq_client_p99_ms": seq["client"]["p99_ms"],
        "seq_server_p50_ms": seq["server"]["p50_ms"],
        "seq_server_p99_ms": seq["server"]["p99_ms"],
        "four_client_p50_ms": four["client"]["p50_ms"],
        "four_client_p99_ms": four["client"]["p99_ms"],
        "four_server_p50_ms": four["server"]["p50_ms"],
        "four_server_p99_ms": four["server"]["p99_ms"],
        "four_throughput_per_s": four["throughput_per_s"],
        "rss_after_start_mb": doc["server"]["rss_after_start_mb"],
    }


def _cpu_now(server_pid: int) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "server_process": cpu_seconds(server_pid),
        "server_children": children_cpu_seconds(server_pid),
        "bench_client": usage.ru_utime + usage.ru_stime,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = Server()
    try:
        t_launch = time.perf_counter()
        port = server.wait_started()
        target = f"127.0.0.1:{port}"
        await _wait_serving(target)
        startup_s = time.perf_counter() - t_launch
        rss_start_kb = server.status_kb("VmRSS")
        reqs = optimize_requests()
        doc: dict[str, Any] = {
            "server": {
                "command": "python -m servewise serve --address 127.0.0.1:0 "
                "--metrics-address 127.0.0.1:0",
                "startup_s": startup_s,
                "rss_after_start_mb": rss_start_kb / 1024.0,
            }
        }
        # Warm-up (imports inside handlers, thread pool start): not measured.
        warm: list[float] = []
        errs: list[str] = []
        await _client(target, reqs, 0, args.warmup, 1, warm, errs)
        server.rpc_durations("OptimizeBatch")
        if errs:
            raise RuntimeError(f"OptimizeBatch failed during warm-up: {errs[0]}")

        phases = {}
        for label, clients in (("sequential_1_client", 1), ("concurrent_4_clients", 4)):
            lat: list[float] = []
            by_req: list[list[float]] = [[] for _ in reqs]
            errs = []
            per = args.calls // clients
            cpu_before = _cpu_now(server.proc.pid)
            t0 = time.perf_counter()
            await asyncio.gather(
                *(_client(target, reqs, c, per, clients, lat, errs, by_req) for c in range(clients))
            )
            wall = time.perf_counter() - t0
            cpu_after = _cpu_now(server.proc.pid)
            await asyncio.sleep(0.2)  # let the last log lines arrive
            phases[label] = {
                "clients": clients,
                "calls": per * clients,
                "errors": len(errs),
                "first_error": errs[0] if errs else None,
                "wall_s": wall,
                "throughput_per_s": per * clients / wall,
                "client": percentiles(lat),
                "server": percentiles(server.rpc_durations("OptimizeBatch")),
                # CPU time per call: the server process, its child processes (OptimizeBatch
                # workers), and this benchmark's own client process, sharing the same cores.
                "cpu_ms_per_call": {
                    key: (cpu_after[key] - cpu_before[key]) * 1000.0 / (per * clients)
                    for key in cpu_before
                },
                "client_by_workload": [
                    {"rate_per_s": w[0], "arrival_cv": w[1], "slo_p99_ms": w[2], **percentiles(ms)}
                    for w, ms in zip(WORKLOADS, by_req, strict=True)
                ],
            }
            print(f"  {label}: {per * clients} calls in {wall:.1f} s", file=sys.stderr)
        doc["optimize_batch"] = {
            "candidates": len(CANDIDATES),
            "profile_points_each": len(SIXTEEN_SIZES),
            "workloads": [
                dict(zip(("rate_per_s", "arrival_cv", "slo_p99_ms"), w, strict=True))
                for w in WORKLOADS
            ],
            **phases,
        }

        sim_ms: list[float] = []
        sim_result: dict[str, Any] = {}
        async with grpc.aio.insecure_channel(target) as ch:
            stub = servewise_pb2_grpc.ServewiseServiceStub(ch)
            sreq = simulate_request()
            for _ in range(args.simulate_calls):
                t0 = time.perf_counter()
                resp = await stub.Simulate(sreq, timeout=120)
                sim_ms.append((time.perf_counter() - t0) * 1000.0)
            sim_result = {
                "requests_simulated": resp.result.requests_simulated,
                "p99_ms": resp.result.latency.p99_ms,
                "stable": resp.result.stable,
            }
        await asyncio.sleep(0.2)
        doc["simulate_200k"] = {
            "plan": "g4dn.xlarge T4 AMP B=32 T=5ms N=2 at 1500 req/s Poisson",
            **sim_result,
            "client": percentiles(sim_ms),
            "server": percentiles(server.rpc_durations("Simulate")),
        }
        doc["server"]["rss_at_end_mb"] = server.status_kb("VmRSS") / 1024.0
        # The OptimizeBatch workers (started by the first call, not at start-up) and
        # multiprocessing's resource tracker, each its own process.
        doc["server"]["child_processes_rss_mb_at_end"] = children_rss_mb(server.proc.pid)
        doc["server"]["worker_processes_env"] = os.environ.get("SERVEWISE_WORKER_PROCESSES")
        doc["server"]["peak_rss_mb"] = server.status_kb("VmHWM") / 1024.0
        return doc
    finally:
        server.stop()


def _f(x: float | None, spec: str = "8.2f") -> str:
    return "-" if x is None else format(x, spec)


def print_report(doc: dict[str, Any]) -> None:
    ob = doc["optimize_batch"]
    print(
        f"OptimizeBatch, {ob['candidates']} types x {ob['profile_points_each']} points "
        f"(targets p50 <= 10 ms, p99 <= 50 ms):"
    )
    print(
        f"  {'phase':22s} {'calls':>6s} {'err':>4s} {'req/s':>7s} | {'client p50':>10s} "
        f"{'p90':>8s} {'p99':>8s} {'max':>8s} | {'server p50':>10s} {'p99':>8s}"
    )
    for key in ("sequential_1_client", "concurrent_4_clients"):
        ph = ob[key]
        c, s = ph["client"], ph["server"]
        print(
            f"  {key:22s} {ph['calls']:6d} {ph['errors']:4d} {ph['throughput_per_s']:7.1f} | "
            f"{_f(c['p50_ms'], '10.2f')} {_f(c['p90_ms'])} {_f(c['p99_ms'])} {_f(c['max_ms'])} | "
            f"{_f(s['p50_ms'], '10.2f')} {_f(s['p99_ms'])}"
        )
    print("  CPU ms per call (server process + its workers + this client process):")
    for key in ("sequential_1_client", "concurrent_4_clients"):
        cpu = ob[key]["cpu_ms_per_call"]
        print(
            f"    {key:22s} {cpu['server_process']:.2f} + {cpu['server_children']:.2f} + "
            f"{cpu['bench_client']:.2f} = {sum(cpu.values()):.2f}"
        )
    print("  sequential, client latency by workload:")
    for w in ob["sequential_1_client"]["client_by_workload"]:
        print(
            f"    rate {w['rate_per_s']:>7g}/s cv {w['arrival_cv']:3g} "
            f"SLO {w['slo_p99_ms']:>4g} ms:"
            f" p50 {_f(w['p50_ms'], '7.1f')}  p99 {_f(w['p99_ms'], '7.1f')}  ({w['count']} calls)"
        )
    sim = doc["simulate_200k"]
    print(
        f"Simulate 200k requests: client p50 {_f(sim['client']['p50_ms'], '.1f')} ms, "
        f"server p50 {_f(sim['server']['p50_ms'], '.1f')} ms "
        f"({sim['client']['count']} calls)"
    )
    srv = doc["server"]
    print(
        f"Server RSS after start-up {srv['rss_after_start_mb']:.1f} MB (target <= 120 MB); "
        f"at end {srv['rss_at_end_mb']:.1f} MB, peak {srv['peak_rss_mb']:.1f} MB; "
        f"start-up {srv['startup_s']:.2f} s"
    )
    children = ", ".join(f"{mb:.1f}" for mb in srv["child_processes_rss_mb_at_end"])
    print(f"Child processes' RSS at end (OptimizeBatch workers, resource tracker): {children} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per phase (1000)")
    parser.add_argument("--quick", action="store_true", help="100 calls per phase")
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured warm-up calls")
    parser.add_argument("--simulate-calls", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output ({DEFAULT_OUT})")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="whole runs, each on a fresh server; the targets are judged on their medians",
    )
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = 100 if args.quick else 1000
    out_path = args.out or (
        DEFAULT_OUT.with_name("rpc_latency_quick.json") if args.quick else DEFAULT_OUT
    )
    load_before = os.getloadavg()
    # Each repeat is a whole run on a fresh server; the report and JSON are the last run's,
    # plus every run's headline figures and their medians, on which the targets are judged
    # when there are several (a shared two-core machine: quote medians, see bench/README.md).
    summaries = []
    for k in range(args.repeat):
        doc = asyncio.run(run(args))
        summaries.append(_headline(doc))
        if args.repeat > 1:
            print(f"  run {k + 1}/{args.repeat}: {json.dumps(summaries[-1])}", file=sys.stderr)
    doc = {
        "benchmark": "rpc_latency",
        "targets": TARGETS,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Latencies are only comparable between runs on an otherwise idle machine.
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        **source_info(),
        **doc,
    }
    judged = summaries[-1]
    if args.repeat > 1:
        doc["repeats"] = summaries
        judged = doc["medians_of_repeats"] = {
            key: float(np.median([run[key] for run in summaries])) for key in summaries[0]
        }
    doc["targets_judged_on"] = "medians_of_repeats" if args.repeat > 1 else "this run"
    doc["meets_targets"] = {
        "optimize_p50": judged["seq_client_p50_ms"] <= TARGETS["optimize_p50_ms_max"],
        "optimize_p99": judged["seq_client_p99_ms"] <= TARGETS["optimize_p99_ms_max"],
        "rss_after_start": judged["rss_after_start_mb"] <= TARGETS["rss_after_start_mb_max"],
        # Issue 6: the same p99 target under 4 concurrent clients, read at the client (what
        # the callers see) and at the server (the logged RPC duration).
        "optimize_p99_4_clients_client": judged["four_client_p99_ms"]
        <= TARGETS["optimize_p99_ms_max"],
        "optimize_p99_4_clients_server": judged["four_server_p99_ms"]
        <= TARGETS["optimize_p99_ms_max"],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print_report(doc)
    m = doc["machine"]
    if args.repeat > 1:
        med = doc["medians_of_repeats"]
        runs = ", ".join(f"{r['four_client_p99_ms']:.1f}" for r in doc["repeats"])
        print(
            f"medians of {args.repeat} runs: 1 client p50 {med['seq_client_p50_ms']:.2f} ms, "
            f"p99 {med['seq_client_p99_ms']:.2f} ms; 4 clients p99 client "
            f"{med['four_client_p99_ms']:.2f} ms, server {med['four_server_p99_ms']:.2f} ms "
            f"(runs: {runs}); "
            f"meets {doc['meets_targets']}"
        )
    print(
        f"load average before {m['loadavg_1_5_15_before'][0]:.2f}, after "
        f"{m['loadavg_1_5_15_after'][0]:.2f} on {m['cpus']} CPUs; wrote {out_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
