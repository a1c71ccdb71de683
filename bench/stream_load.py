"""Many Control streams at one sample per second each: event latency and server memory.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/stream_load.py                 # 1,000 streams, 60 s
    PYTHONPATH=service .venv/bin/python bench/stream_load.py --quick         # 100 streams, 15 s

Starts the real server (``python -m servewise serve --address 127.0.0.1:0``, a temporary SQLite
store, default ``info`` logging), registers ``--deployments`` deployments (ResNet-50-like on
g4dn.xlarge, real-time on 20 replicas planned for 1,000 req/s) and opens ``--streams`` Control
streams from ``--procs`` client processes (grpc.aio, ``--channels`` channels per process), stream
*i* reporting deployment ``i mod deployments``. Stream starts are spread over the first second
so that samples arrive evenly, one per stream per second.

**What "event latency" is.** The controller answers a sample only when something happens
(SWITCH, ADVANCE, ROLLBACK, COMPLETE, a rejection) — or, when the stream sets
``want_hold_events``, with a HOLD for every sample that changes nothing. The streams here set it,
so every sample gets exactly one event, and the latency is measured per sample: the client's
wall time from just before ``write(sample)`` to the ``read()`` of the event whose
``sample_timestamp_s`` is that sample's. A HOLD is produced by the same work as a decision (the
deployment re-read from the store, validation, the EWMA and the cached optimizer advice, or the
step's judgement during a transition); a decision adds one compare-and-set and one log append.
The samples hover around the planned rate with p99 well under the SLO, so the controller
mostly holds: the steady state of a fleet of healthy deployments. (Not only: the sizing rate
adds the rate's spread, so some deployments sit above the band for the 30 s safety window and
move to a much cheaper batching plan: a few dozen SWITCHes and their ADVANCEs, which write.)
The figure includes the client's own event-loop delay (its processes share the machine's
cores with the server).

The server answers optimizer misses in a worker process (``servewise.api.control_stream``);
its memory is reported beside the server's (``server.advice_workers_rss_max_mb``, the
server's children), not in ``rss_max_mb``.

Measured over ``--seconds`` after a ``--warmup`` (unmeasured; the samples still flow): p50/p90/
p99/max event latency, samples and events counted, events whose kind is not HOLD, the server's
VmRSS every second (max and last), VmHWM, and its CPU busy fraction; and how the samples later
than 20 ms spread over the seconds of the window (``late_samples``: evenly spread means the
server is too slow per sample, bunched into a few seconds means it was stalled or starved).

Writes bench/results/stream_load.json. Targets (issue 4): p99 <= 20 ms, RSS <= 300 MB at 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import (  # noqa: E402
    RESULTS,
    ServerProcess,
    load_average,
    percentiles,
    realtime_deployment,
)
from bench.plan_quality import source_info  # noqa: E402
from servewise.v1 import servewise_pb2, servewise_pb2_grpc  # noqa: E402

DEFAULT_OUT = RESULTS / "stream_load.json"
TARGETS = {"p99_ms_max": 20.0, "rss_mb_max": 300.0}


def deployment_id(i: int) -> str:
    return f"stream-{i:05d}"


def _children_rss_mb(pid: int) -> float:
    """VmRSS of ``pid``'s descendants (the server's optimizer worker processes), in MB."""
    total = 0.0
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for kid in kids:
                pending.append(kid)
                try:
                    with open(f"/proc/{kid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) / 1024.0
                except OSError:
                    pass
    return total


def register(target: str, count: int) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        for i in range(count):
            stub.RegisterDeployment(
                servewise_pb2.RegisterDeploymentRequest(
                    deployment=realtime_deployment(deployment_id(i))
                ),
                timeout=30,
            )


async def _stream(
    stub: servewise_pb2_grpc.ServewiseServiceStub,
    dep: str,
    offset_s: float,
    t_start: float,
    t_measure: float,
    t_end: float,
    out: dict[str, Any],
    seed: int,
) -> None:
    rng = random.Random(seed)
    call = stub.Control()
    await asyncio.sleep(max(0.0, t_start + offset_s - time.time()))
    n = 0
    try:
        while True:
            due = t_start + offset_s + n
            if due >= t_end:
                break
            await asyncio.sleep(max(0.0, due - time.time()))
            n += 1
            ts = time.time()
            sample = servewise_pb2.MetricSample(
                deployment_id=dep,
                timestamp_s=ts,
                rate_per_s=1000.0 * rng.uniform(0.95, 1.05),
                p50_ms=rng.uniform(7.0, 9.0),
                p99_ms=rng.uniform(30.0, 45.0),
                queue_depth=rng.randrange(0, 8),
                utilisation=rng.uniform(0.35, 0.45),
                error_rate=0.0,
            )
            t0 = time.perf_counter()
            await call.write(servewise_pb2.ControlRequest(sample=sample, want_hold_events=True))
            event = await call.read()
            ms = (time.perf_counter() - t0) * 1000.0
            if event is grpc.aio.EOF:
                out["errors"].append(f"{dep}: stream ended")
                return
            if event.sample_timestamp_s != ts:
                out["errors"].append(f"{dep}: event for {event.sample_timestamp_s} != {ts}")
            kind = event.WhichOneof("event")
            out["kinds"][kind] = out["kinds"].get(kind, 0) + 1
            if ts >= t_measure:
                out["latencies"].append(ms)
                out["second"].append(int(ts - t_measure))
        # Close only once every stream has sent its last sample: 1,000 streams ending while
        # others still send would load the server with teardown inside the measured window.
        await asyncio.sleep(max(0.0, t_end + 1.0 - time.time()))
        await call.done_writing()
        await call.read()
    except grpc.aio.AioRpcError as exc:
        out["errors"].append(f"{dep}: {exc.code().name} {exc.details()}")


async def _client(
    target: str,
    streams: list[int],
    total: int,
    deployments: int,
    channels: int,
    t_start: float,
    t_measure: float,
    t_end: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "second": [], "kinds": {}, "errors": []}
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        stubs = [servewise_pb2_grpc.ServewiseServiceStub(c) for c in chans]
        await asyncio.gather(
            *(
                _stream(
                    stubs[k % channels],
                    deployment_id(i % deployments),
                    i / total,
                    t_start,
                    t_measure,
                    t_end,
                    out,
                    i,
                )
                for k, i in enumerate(streams)
            )
        )
    finally:
        for c in chans:
            await c.close()
    return out


def _client_proc(args: tuple[Any, ...]) -> dict[str, Any]:
    return asyncio.run(_client(*args))


def run(args: argparse.Namespace) -> dict[str, Any]:
    with ServerProcess(log_level=args.log_level) as server:
        server.wait_started()
        rss_start = server.rss_mb()
        t0 = time.perf_counter()
        register(server.target, args.deployments)
        register_s = time.perf_counter() - t0
        rss_registered = server.rss_mb()
        t_start = time.time() + 3.0  # the client processes need a moment to start
        t_measure = t_start + args.warmup
        t_end = t_measure + args.seconds
        parts = [list(range(p, args.streams, args.procs)) for p in range(args.procs)]
        rss: list[float] = []
        children_rss: list[float] = []
        cpu: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                now = time.time()
                if now >= t_measure and "start" not in cpu:
                    cpu["start"], cpu["t0"] = server.cpu_seconds(), now
                rss.append(server.rss_mb())
                children_rss.append(_children_rss_mb(server.pid))
                stop.wait(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with mp.get_context("spawn").Pool(args.procs) as pool:
            outs = pool.map(
                _client_proc,
                [
                    (
                        server.target,
                        part,
                        args.streams,
                        args.deployments,
                        args.channels,
                        t_start,
                        t_measure,
                        t_end,
                    )
                    for part in parts
                ],
            )
        cpu["end"], cpu["t1"] = server.cpu_seconds(), time.time()  # the clients stop at t_end
        stop.set()
        watcher.join()
        rss_end, hwm = server.rss_mb(), server.hwm_mb()
        busy = (
            (cpu["end"] - cpu["start"]) / (cpu["t1"] - cpu["t0"])
            if "end" in cpu and "start" in cpu
            else None
        )
    latencies = [x for o in outs for x in o["latencies"]]
    # Late samples per second of the measured window: spread evenly, the server is too slow
    # per sample; bunched into a few seconds, something stalled it (or its CPU) for a while.
    late_by_second = [0] * (int(args.seconds) + 1)
    for o in outs:
        for ms, second in zip(o["latencies"], o["second"], strict=True):
            if ms > TARGETS["p99_ms_max"]:
                late_by_second[min(second, len(late_by_second) - 1)] += 1
    late_total = sum(late_by_second)
    worst = sorted(late_by_second, reverse=True)
    kinds: dict[str, int] = {}
    for o in outs:
        for k, v in o["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    errors = [e for o in outs for e in o["errors"]]
    lat = percentiles(latencies)
    rss_max = max(rss) if rss else rss_end
    return {
        "benchmark": "stream_load",
        "setup": {
            "streams": args.streams,
            "deployments": args.deployments,
            "client_processes": args.procs,
            "channels_per_process": args.channels,
            "sample_interval_s": 1.0,
            "warmup_s": args.warmup,
            "measured_s": args.seconds,
            "log_level": args.log_level,
            "store": "sqlite (temporary file)",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "latency_definition": "client wall time from write(sample) to read() of the event "
        "answering that sample (want_hold_events: one event per sample; HOLD when nothing "
        "changes), samples sent during the measured window",
        "event_latency": lat,
        "samples_measured": len(latencies),
        "samples_per_s": len(latencies) / args.seconds,
        "late_samples": {
            "over_ms": TARGETS["p99_ms_max"],
            "count": late_total,
            "per_second": late_by_second,
            "share_in_worst_10pct_of_seconds": (
                sum(worst[: max(1, len(worst) // 10)]) / late_total if late_total else None
            ),
        },
        "event_kinds": kinds,
        "errors": errors[:20],
        "error_count": len(errors),
        "server": {
            "rss_after_start_mb": rss_start,
            "rss_after_register_mb": rss_registered,
            "rss_max_mb": rss_max,
            "rss_end_mb": rss_end,
            "rss_peak_mb": hwm,
            "advice_workers_rss_max_mb": max(children_rss) if children_rss else 0.0,
            "cpu_busy_fraction": busy,
            "register_seconds": register_s,
        },
        "targets": TARGETS,
        "meets": {
            "p99": lat["p99_ms"] is not None and lat["p99_ms"] <= TARGETS["p99_ms_max"],
            "rss": rss_max <= TARGETS["rss_mb_max"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 streams, 5 + 10 s")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=None, help="default: one per stream")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=5, help="channels per client process")
    parser.add_argument("--log-level", default="info", help="the server's --log-level")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.seconds, args.warmup = 100, 10.0, 5.0
        if args.out == DEFAULT_OUT:
            args.out = RESULTS / "stream_load_quick.json"
    if args.deployments is None:
        args.deployments = args.streams
    load_before = load_average()
    doc = run(args)
    doc["setup"]["load_average_before"] = load_before
    doc["setup"]["load_average_after"] = load_average()
    doc["source"] = source_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    lat, srv = doc["event_latency"], doc["server"]
    print(
        f"{args.streams} streams x 1 sample/s ({doc['samples_per_s']:.0f} samples/s measured): "
        f"event latency p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms max "
        f"{lat['max_ms']:.1f} ms (target p99 <= 20); server RSS max {srv['rss_max_mb']:.0f} MB "
        f"(target <= 300; advice workers {srv['advice_workers_rss_max_mb']:.0f} MB), CPU busy "
        f"{srv['cpu_busy_fraction'] or 0:.0%}; load average {load_before[0]:.2f}"
        f"->{doc['setup']['load_average_after'][0]:.2f}; events "
        f"{doc['event_kinds']}; errors {doc['error_count']}"
    )
    print(f"wrote {args.out}")
    return 0 if not doc["error_count"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
