"""Every unary RPC under ghz, at saturation and at fixed rates, against the stack's floor.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/ghz.py            # full run, ~6 min
    PYTHONPATH=service .venv/bin/python bench/ghz.py --quick    # 2 s phases, a smoke run

Installs ghz (``go install github.com/bojand/ghz/cmd/ghz@GHZ_VERSION`` into the git-ignored
``tools/go/bin``, skipped when that binary is already there), starts the real server
(``python -m servewise serve --address 127.0.0.1:0`` on a temporary SQLite file, default
``info`` logging: every Servewise RPC writes its JSON line; the port comes from the
``server_started`` line) and drives it with ghz. ghz learns the messages from a protoset written
from the generated Python stubs' descriptors (servewise/v1/*.proto and grpc/health/v1, the same
contract as protos/; ghz 0.120's reflection client answers "Symbol not found" against this
server). Requests are valid, realistic messages built with the generated Python stubs and handed
to ghz as JSON (protojson);
where the RPC keys on something, ghz cycles through an array of messages (10,000 Route keys, 8
OptimizeBatch workloads, ...), so no client-side templating costs CPU.

For each RPC, in one run on one server:

* **Saturation**: ``--concurrency`` calls in flight over ``--connections`` connections for
  ``--seconds``. Before the first RPC and after every RPC the no-op runs the same way: the
  contract has no no-op RPC, so the no-op is ``grpc.health.v1.Health/Check`` on the same server
  (the cheapest unary handler behind the same interceptors and event loop). An RPC's
  ``ratio_to_noop`` is its throughput over the mean of the no-op phases just before and after
  it, which cancels slow drift in what else runs on the machine. Route gets ``--route-rounds``
  extra alternating no-op/Route pairs; its figure is the median ratio.
* **Route pinned**: the same Route/no-op rounds again with every server thread on the first
  CPU and ghz (taskset, ``--cpus``) on the others. Unpinned on a small machine, ghz and the
  server share the cores, and ghz spends about a third more CPU per Route call than per Check
  (larger messages), so the unpinned ratio also measures the load generator; pinned, it is
  the server's. Both are reported; the target is read on the pinned one.
* **Server CPU per request** (utime + stime deltas of the server from /proc/PID/stat over the
  phase, divided by the calls) and **RSS** (VmRSS after the phase; VmHWM at the end).
* **Fixed rates**: open loop at ``--rate-fractions`` (default 25 % and 50 %) of the RPC's own
  saturation throughput: p50/p99 of ghz's client-side latency.
* **OptimizeBatch under 4 concurrent clients**: 4 connections, one call in flight on each,
  ``--optimize-calls`` calls (its target, from the foundation issue, is p99 <= 50 ms).

RegisterDeployment creates a new deployment per call, so it runs last: every deployment it adds
makes Route's store poller (every 0.25 s) and ListDeployments do more work.

Writes bench/results/ghz.json and prints a table. Target: Route >= 90 % of the no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import rpc_latency  # noqa: E402
from bench.harness import (  # noqa: E402
    RESULTS,
    ServerProcess,
    load_average,
    realtime_deployment,
    shifting_deployment,
)
from bench.plan_quality import source_info  # noqa: E402
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2  # noqa: E402

GHZ_VERSION = "v0.120.0"
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
TOOLS_BIN = REPO / "tools" / "go" / "bin"
DEFAULT_OUT = RESULTS / "ghz.json"
SERVICE = "servewise.v1.ServewiseService"
NOOP = "grpc.health.v1.Health.Check"
ROUTE_ID = "bench-route"
EVAL_ID = "bench-eval"
KEYS = 10_000
HEAVY_CONCURRENCY = 8
LISTED = 20  # deployments registered before the run (ListDeployments returns them all)
TARGETS = {"route_ratio_to_noop_min": 0.9, "optimize_p99_ms_4_clients_max": 50.0}


# --- ghz -------------------------------------------------------------------------------------


def ensure_ghz() -> Path:
    """tools/go/bin/ghz at GHZ_VERSION, installed with ``go install`` when missing."""
    ghz = TOOLS_BIN / "ghz"
    stamp = TOOLS_BIN / "ghz.version"
    if ghz.exists() and stamp.exists() and stamp.read_text().strip() == GHZ_VERSION:
        return ghz
    go = shutil.which("go")
    if go is None:
        raise SystemExit("go not found: ghz is installed with `go install` (Go >= 1.21)")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    print(f"installing ghz {GHZ_VERSION} into {TOOLS_BIN} ...", flush=True)
    subprocess.run(  # noqa: S603
        [go, "install", f"{GHZ_MODULE}@{GHZ_VERSION}"],
        check=True,
        env={**os.environ, "GOBIN": str(TOOLS_BIN)},
    )
    stamp.write_text(GHZ_VERSION + "\n")
    return ghz


# --- requests --------------------------------------------------------------------------------


def _json(messages: list[Message]) -> list[dict[str, Any]]:
    return [MessageToDict(m, preserving_proto_field_name=True) for m in messages]


def select_mode_request() -> servewise_pb2.SelectModeRequest:
    """An online class (300/s, p99 <= 80 ms) and a deferrable one (100/s within 60 s) on the
    two T4 ResNet-50 candidates."""
    request = servewise_pb2.SelectModeRequest(
        candidates=[rpc_latency.candidate_pb(*c) for c in rpc_latency.CANDIDATES[:2]]
    )
    online = request.traffic_classes.add(name="online", rate_per_s=300.0)
    online.slo.latency_ms = 80.0
    request.traffic_classes.add(name="batch", rate_per_s=100.0, deadline_s=60.0)
    return request


def plan_resources_request() -> servewise_pb2.PlanResourcesRequest:
    """One deployment over a 24-point diurnal rate profile (50 to 2,000 req/s)."""
    request = servewise_pb2.PlanResourcesRequest()
    spec = request.deployments.add(
        name="resnet50", candidates=[rpc_latency.candidate_pb(*rpc_latency.CANDIDATES[0])]
    )
    spec.slo.latency_ms = 100.0
    for hour in range(24):
        rate = 50.0 + 1950.0 * (0.5 - 0.5 * math.cos(2.0 * math.pi * (hour - 3) / 24.0))
        spec.rate_profile.add(time_s=3600.0 * hour, rate_per_s=rate)
    return request


def evaluate_switch_request() -> servewise_pb2.EvaluateSwitchRequest:
    """Ten minutes of samples (one per 10 s) of a real-time deployment whose rate fell."""
    request = servewise_pb2.EvaluateSwitchRequest(deployment_id=EVAL_ID)
    for i in range(60):
        request.samples.add(
            timestamp_s=1_000.0 + 10.0 * i,
            rate_per_s=1000.0 - 12.0 * i,
            p50_ms=8.0,
            p99_ms=40.0,
            utilisation=0.4,
        )
    return request


def register_requests() -> list[dict[str, Any]]:
    """New deployments (state_version 0 creates), one id per request number (ghz template)."""
    message = servewise_pb2.RegisterDeploymentRequest(deployment=realtime_deployment("x"))
    body = MessageToDict(message, preserving_proto_field_name=True)
    # RUN is replaced per ghz run (RequestNumber restarts at 0 in each run).
    body["deployment"]["deployment_id"] = "bench-reg-RUN-{{.RequestNumber}}"
    return [body]


@dataclass(frozen=True)
class Rpc:
    name: str
    call: str
    data: list[dict[str, Any]]
    templated: bool = False
    # Calls in flight at saturation; None: --concurrency. The CPU-heavy RPCs (their work runs in
    # the server's thread pool under one GIL) reach their throughput with a few calls in flight;
    # 64 would only queue, and a phase would end before the first call answered.
    concurrency: int | None = None


def rpcs() -> list[Rpc]:
    route = [
        servewise_pb2.RouteRequest(
            deployment_id=ROUTE_ID, request_key=f"req-{i}", traffic_class="interactive"
        )
        for i in range(KEYS)
    ]
    return [
        Rpc("Route", f"{SERVICE}.Route", _json(route)),
        Rpc(
            "GetDeployment",
            f"{SERVICE}.GetDeployment",
            _json([servewise_pb2.GetDeploymentRequest(deployment_id=ROUTE_ID)]),
        ),
        Rpc(
            "ListDeployments",
            f"{SERVICE}.ListDeployments",
            _json([servewise_pb2.ListDeploymentsRequest(page_size=100)]),
        ),
        Rpc(
            "EvaluateSwitch",
            f"{SERVICE}.EvaluateSwitch",
            _json([evaluate_switch_request()]),
            concurrency=HEAVY_CONCURRENCY,
        ),
        Rpc(
            "OptimizeBatch",
            f"{SERVICE}.OptimizeBatch",
            _json(list(rpc_latency.optimize_requests())),
            concurrency=HEAVY_CONCURRENCY,
        ),
        Rpc(
            "SelectMode",
            f"{SERVICE}.SelectMode",
            _json([select_mode_request()]),
            concurrency=HEAVY_CONCURRENCY,
        ),
        Rpc(
            "PlanResources",
            f"{SERVICE}.PlanResources",
            _json([plan_resources_request()]),
            concurrency=HEAVY_CONCURRENCY,
        ),
        Rpc(
            "Simulate",
            f"{SERVICE}.Simulate",
            _json([rpc_latency.simulate_request()]),
            concurrency=HEAVY_CONCURRENCY,
        ),
        Rpc("RegisterDeployment", f"{SERVICE}.RegisterDeployment", register_requests(), True),
    ]


NOOP_RPC = Rpc("Health/Check (no-op)", NOOP, [{"service": ""}])


def seed_deployments(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        for deployment in (
            shifting_deployment(ROUTE_ID),
            realtime_deployment(EVAL_ID),
            *(realtime_deployment(f"bench-list-{i:02d}") for i in range(LISTED - 2)),
        ):
            stub.RegisterDeployment(
                servewise_pb2.RegisterDeploymentRequest(deployment=deployment), timeout=30
            )


# --- running ghz -----------------------------------------------------------------------------


def write_protoset(path: Path) -> Path:
    """The contract's descriptors (and health's) as a FileDescriptorSet, dependencies first."""
    from google.protobuf import descriptor_pb2  # noqa: PLC0415
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    fds = descriptor_pb2.FileDescriptorSet()
    for fd in (types_pb2.DESCRIPTOR, servewise_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR):
        fd.CopyToProto(fds.file.add())
    path.write_bytes(fds.SerializeToString())
    return path


class Runner:
    def __init__(self, ghz: Path, server: ServerProcess, workdir: Path) -> None:
        self.ghz = ghz
        self.server = server
        self.workdir = workdir
        self.files: dict[str, Path] = {}
        self.runs = 0
        self.protoset = write_protoset(workdir / "servewise.protoset")
        # CPUs ghz is confined to (taskset and --cpus); None: wherever the scheduler puts it.
        self.client_cpus: list[int] | None = None

    def _data_file(self, rpc: Rpc) -> Path:
        if rpc.templated:
            self.runs += 1
            path = self.workdir / f"templated-{self.runs}.json"
            path.write_text(json.dumps(rpc.data[0]).replace("RUN", str(self.runs)))
            return path
        if rpc.name not in self.files:
            path = self.workdir / f"{len(self.files)}.json"
            data: Any = rpc.data if len(rpc.data) > 1 else rpc.data[0]
            path.write_text(json.dumps(data))
            self.files[rpc.name] = path
        return self.files[rpc.name]

    def run(
        self,
        rpc: Rpc,
        *,
        concurrency: int,
        connections: int,
        seconds: float | None = None,
        calls: int | None = None,
        rps: float | None = None,
    ) -> dict[str, Any]:
        """One ghz run; its summary with the server's CPU and RSS over the run."""
        cmd = [
            str(self.ghz),
            "--insecure",
            "--protoset",
            str(self.protoset),
            "--call",
            rpc.call,
            "-D",
            str(self._data_file(rpc)),
            "-c",
            str(concurrency),
            "--connections",
            str(connections),
            "-O",
            "json",
            "--timeout",
            "60s",
            # Calls still in flight when a -z phase ends are left out of the figures (the
            # default, "close", would count them as errors).
            "--duration-stop",
            "ignore",
        ]
        if not rpc.templated:
            cmd += ["--disable-template-functions", "--disable-template-data"]
        if self.client_cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, self.client_cpus)), *cmd]
            cmd += ["--cpus", str(len(self.client_cpus))]
        if seconds is not None:
            cmd += ["-z", f"{seconds}s"]
        if calls is not None:
            cmd += ["-n", str(calls)]
        if rps is not None:
            cmd += ["--rps", str(max(1, round(rps)))]
        cmd.append(self.server.target)
        cpu0 = self.server.cpu_seconds()
        children0 = self.server.children_cpu_seconds()
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
        wall = time.perf_counter() - t0
        cpu = self.server.cpu_seconds() - cpu0
        children = self.server.children_cpu_seconds() - children0
        report = json.loads(out)
        return summarize(report, cpu + children, wall, self.server.rss_mb(), children)


def summarize(
    report: dict[str, Any], cpu_s: float, wall_s: float, rss_mb: float, children_s: float = 0.0
) -> dict[str, Any]:
    """ghz's report with the server's CPU: ``cpu_s`` is the server process's and its child
    processes' (OptimizeBatch workers compute its concurrent calls), ``children_s`` the
    children's part of it."""
    latency = {
        f"p{int(d['percentage'])}_ms": d["latency"] / 1e6
        for d in report.get("latencyDistribution") or []
    }
    count = int(report["count"])
    statuses = report.get("statusCodeDistribution") or {}
    ok = int(statuses.get("OK", 0))
    return {
        "calls": count,
        "ok": ok,
        "statuses": statuses,
        "errors": report.get("errorDistribution") or {},
        "throughput_per_s": float(report["rps"]),
        "ok_throughput_per_s": float(report["rps"]) * ok / count if count else 0.0,
        "p50_ms": latency.get("p50_ms"),
        "p90_ms": latency.get("p90_ms"),
        "p99_ms": latency.get("p99_ms"),
        "mean_ms": report["average"] / 1e6,
        "max_ms": report["slowest"] / 1e6,
        "server_cpu_s": cpu_s,
        "server_children_cpu_s": children_s,
        "server_cpu_us_per_call": cpu_s / count * 1e6 if count else None,
        "server_cpu_busy_fraction": cpu_s / wall_s,
        "server_rss_mb_after": rss_mb,
    }


def _f(value: float | None, spec: str) -> str:
    if value is None:
        return format("-", ">" + spec.split(".", maxsplit=1)[0])
    return format(value, spec)


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label:34s} {r['throughput_per_s']:8.0f}/s  p50 {_f(r['p50_ms'], '8.2f')} ms  "
        f"p99 {_f(r['p99_ms'], '8.2f')} ms  {_f(r['server_cpu_us_per_call'], '8.0f')} us "
        f"CPU/call  RSS {r['server_rss_mb_after']:6.1f} MB  ok {r['ok']}/{r['calls']}"
    )


def framed(r: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``r`` (a saturation phase) with its throughput and CPU per call as ratios to the mean of
    the no-op phases ``before`` and ``after`` it, which cancels slow drift in the machine."""
    noop_tp = (before["throughput_per_s"] + after["throughput_per_s"]) / 2
    noop_cpu = (before["server_cpu_us_per_call"] + after["server_cpu_us_per_call"]) / 2
    r["noop_throughput_per_s"] = noop_tp
    r["ratio_to_noop"] = r["ok_throughput_per_s"] / noop_tp
    r["cpu_ratio_to_noop"] = r["server_cpu_us_per_call"] / noop_cpu
    return r


def set_process_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads it starts later inherit their creator's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def pinned_route_rounds(
    runner: Runner, route: Rpc, rounds: int, saturate: Any
) -> list[dict[str, Any]]:
    """Route against the no-op with the server on one CPU and ghz on the others.

    Unpinned, ghz and the server share the machine's cores, and ghz spends about a third more
    CPU per Route call than per Check (a Route request and response are larger messages to
    build and parse): on two cores that client cost alone moves the ratio by several points,
    and the ratio measures the load generator as much as the server. Pinned, each side has
    its own CPUs and the ratio is the server's. Empty on a single-CPU machine.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return []
    pid = runner.server.pid
    set_process_affinity(pid, {cpus[0]})
    runner.client_cpus = cpus[1:]
    try:
        runs = []
        noop_before = saturate(NOOP_RPC, "pinned")
        for _ in range(rounds):
            r = saturate(route, "pinned")
            noop_after = saturate(NOOP_RPC, "pinned")
            runs.append(framed(r, noop_before, noop_after))
            noop_before = noop_after
        return runs
    finally:
        set_process_affinity(pid, set(cpus))
        runner.client_cpus = None


def measure(args: argparse.Namespace, ghz: Path) -> dict[str, Any]:
    all_rpcs = rpcs()
    with ServerProcess(log_level=args.log_level) as server, tempfile.TemporaryDirectory() as tmp:
        server.wait_started()
        rss_start = server.rss_mb()
        seed_deployments(server.target)
        runner = Runner(ghz, server, Path(tmp))
        for rpc in [NOOP_RPC, *all_rpcs[:-1]]:  # warm-up: each RPC's first calls, unmeasured
            runner.run(rpc, concurrency=4, connections=1, calls=40)

        phases: list[dict[str, Any]] = []
        results: dict[str, dict[str, Any]] = {}

        def saturate(rpc: Rpc, label: str = "saturation") -> dict[str, Any]:
            r = runner.run(
                rpc,
                seconds=args.seconds,
                concurrency=rpc.concurrency or args.concurrency,
                connections=args.connections,
            )
            phases.append({"rpc": rpc.name, "mode": label, **r})
            print(_line(f"{rpc.name} ({label})", r), flush=True)
            return r

        noop_before = saturate(NOOP_RPC)
        route_ratios: list[float] = []
        pinned: list[dict[str, Any]] = []
        for rpc in all_rpcs:
            rounds = args.route_rounds if rpc.name == "Route" else 1
            runs = []
            for _ in range(rounds):
                r = saturate(rpc)
                noop_after = saturate(NOOP_RPC)
                runs.append(framed(r, noop_before, noop_after))
                noop_before = noop_after
            if rpc.name == "Route":
                route_ratios = [r["ratio_to_noop"] for r in runs]
                pinned = pinned_route_rounds(runner, rpc, args.route_rounds, saturate)
                noop_before = saturate(NOOP_RPC)  # unpinned again: the next RPC's "before"
            median = sorted(runs, key=lambda r: r["ratio_to_noop"])[len(runs) // 2]
            entry: dict[str, Any] = {"saturation": median}
            if len(runs) > 1:
                entry["saturation_rounds"] = runs
            fixed = []
            for fraction in args.rate_fractions:
                rate = median["ok_throughput_per_s"] * fraction
                if rate < 1:
                    continue
                f = runner.run(
                    rpc,
                    seconds=args.seconds,
                    rps=rate,
                    concurrency=rpc.concurrency or args.concurrency,
                    connections=args.connections,
                )
                f["fraction_of_saturation"] = fraction
                f["offered_rate_per_s"] = rate
                fixed.append(f)
                print(_line(f"{rpc.name} @ {fraction:.0%} ({rate:.0f}/s)", f), flush=True)
            entry["fixed_rates"] = fixed
            results[rpc.name] = entry
            if rpc.name == "OptimizeBatch":
                four = runner.run(rpc, concurrency=4, connections=4, calls=args.optimize_calls)
                results["OptimizeBatch"]["four_clients"] = four
                print(_line("OptimizeBatch (4 clients)", four), flush=True)
        noop_phases = [p for p in phases if p["rpc"] == NOOP_RPC.name and p["mode"] == "saturation"]
        server_info = {
            "rss_after_start_mb": rss_start,
            "rss_end_mb": server.rss_mb(),
            "rss_peak_mb": server.hwm_mb(),
            "log_level": args.log_level,
            "store": "sqlite (temporary file)",
        }
    return {
        "noop": {
            "rpc": "grpc.health.v1.Health/Check (the contract has no no-op RPC)",
            "throughput_per_s_median": float(
                np.median([p["throughput_per_s"] for p in noop_phases])
            ),
            "server_cpu_us_per_call_median": float(
                np.median([p["server_cpu_us_per_call"] for p in noop_phases])
            ),
            "phases": len(noop_phases),
        },
        "rpcs": results,
        "route_ratio_rounds": route_ratios,
        "route_ratio_median": float(np.median(route_ratios)) if route_ratios else None,
        "route_pinned_rounds": [
            {k: r[k] for k in ("ratio_to_noop", "cpu_ratio_to_noop", "ok_throughput_per_s")}
            for r in pinned
        ],
        "route_pinned_ratio_median": (
            float(np.median([r["ratio_to_noop"] for r in pinned])) if pinned else None
        ),
        "server": server_info,
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s phases, 1 Route round")
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (ghz -c)")
    parser.add_argument("--connections", type=int, default=4, help="ghz --connections")
    parser.add_argument("--route-rounds", type=int, default=3, help="Route/no-op pairs")
    parser.add_argument(
        "--rate-fractions", type=float, nargs="*", default=[0.25, 0.5], help="of saturation"
    )
    parser.add_argument("--optimize-calls", type=int, default=1000)
    parser.add_argument("--log-level", default="info", help="the server's --log-level")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.route_rounds, args.optimize_calls = 2.0, 1, 200
        if args.out == DEFAULT_OUT:
            args.out = RESULTS / "ghz_quick.json"
    ghz = ensure_ghz()
    load_before = load_average()
    started = time.time()
    measured = measure(args, ghz)
    doc = {
        "benchmark": "ghz",
        "ghz": GHZ_VERSION,
        "setup": {
            "seconds_per_phase": args.seconds,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "route_rounds": args.route_rounds,
            "rate_fractions": args.rate_fractions,
            "optimize_calls_4_clients": args.optimize_calls,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "seconds": round(time.time() - started, 1),
        },
        "source": source_info(),
        **measured,
        "targets": TARGETS,
    }
    route = doc["route_ratio_median"]
    four = doc["rpcs"]["OptimizeBatch"]["four_clients"]
    pinned = doc["route_pinned_ratio_median"]
    doc["meets"] = {
        "route_ratio": route is not None and route >= TARGETS["route_ratio_to_noop_min"],
        "route_ratio_pinned": pinned is not None and pinned >= TARGETS["route_ratio_to_noop_min"],
        "optimize_p99_4_clients": four["p99_ms"] <= TARGETS["optimize_p99_ms_4_clients_max"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(
        f"{'rpc':20s} {'sat/s':>8s} {'x no-op':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'CPU us/call':>11s} {'p99@25%':>8s} {'p99@50%':>8s}"
    )
    noop = doc["noop"]
    print(
        f"{'Health (no-op)':20s} {noop['throughput_per_s_median']:8.0f} {1.0:8.2f} "
        f"{'':8s} {'':8s} {noop['server_cpu_us_per_call_median']:11.0f}"
    )
    for name, entry in doc["rpcs"].items():
        s = entry["saturation"]
        fixed = {f["fraction_of_saturation"]: f["p99_ms"] for f in entry["fixed_rates"]}
        print(
            f"{name:20s} {s['ok_throughput_per_s']:8.0f} {s['ratio_to_noop']:8.3f} "
            f"{_f(s['p50_ms'], '8.2f')} {_f(s['p99_ms'], '8.2f')} "
            f"{_f(s['server_cpu_us_per_call'], '11.0f')} "
            + " ".join(_f(fixed.get(k), "8.2f") for k in (0.25, 0.5))
        )
    print(
        f"Route / no-op (median of {len(doc['route_ratio_rounds'])}): {route:.1%} "
        f"(target >= 90%); pinned (server on one CPU, ghz on the others): "
        f"{_f(pinned, '.1%')} over {len(doc['route_pinned_rounds'])} rounds; "
        f"OptimizeBatch 4 clients p50 {four['p50_ms']:.1f} ms p99 "
        f"{four['p99_ms']:.1f} ms (target p99 <= 50 ms); server RSS start "
        f"{doc['server']['rss_after_start_mb']:.0f} MB, peak {doc['server']['rss_peak_mb']:.0f} MB"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
