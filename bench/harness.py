"""What the load benchmarks share: the real server as a subprocess, /proc figures, percentiles
and a deployment in the middle of a traffic shift.

:class:`ServerProcess` runs ``python -m servewise serve --address 127.0.0.1:0`` (the real CLI)
with its stdout (one JSON line per RPC at ``info``) going to a file rather than a pipe, so a
benchmark driving tens of thousands of calls per second does not spend its own CPU reading the
server's log; the port is read from the ``server_started`` line of that file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
from servewise.v1 import servewise_pb2, types_pb2  # noqa: E402

# The server subprocess runs the same servewise source as the benchmark imports.
SERVICE_ROOT = Path(servewise.__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/PID/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a server's workers, its multiprocessing resource
    tracker), from /proc/PID/task/*/children."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(c) for c in children.read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(set(found))


def children_cpu_seconds(pid: int) -> float:
    """utime + stime of the live children of ``pid``; one that ends meanwhile counts 0."""
    total = 0.0
    for child in child_pids(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            continue
    return total


def children_rss_mb(pid: int) -> list[float]:
    """VmRSS of each live child of ``pid``, in MB."""
    sizes = []
    for child in child_pids(pid):
        try:
            sizes.append(status_kb(child, "VmRSS") / 1024.0)
        except (OSError, KeyError):
            continue
    return sizes


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def percentiles(ms: list[float] | np.ndarray) -> dict[str, float | int | None]:
    a = np.asarray(ms, dtype=float)
    if a.size == 0:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": int(a.size),
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class ServerProcess:
    """``servewise serve`` on an ephemeral port (``--address 127.0.0.1:0``, the port read from
    the log; at a level above info, where that line is not written, a free port picked here),
    its log in a file.

    ``store`` is a ``--store`` URL (``sqlite://PATH``, ``redis://...``, ``memory``); the default
    is a SQLite file in a temporary directory that lives as long as this object.
    """

    def __init__(
        self,
        store: str | None = None,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        log_path: Path | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="servewise-bench-")
        self.store = store or f"sqlite://{Path(self._tmp.name) / 'servewise.db'}"
        self.log_path = log_path or Path(self._tmp.name) / "server.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SERVICE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._log = self.log_path.open("wb")
        # Above info the server_started line is not written: pick the port here instead.
        self.port = 0 if log_level in ("debug", "info") else free_port()
        self.proc = subprocess.Popen(  # noqa: S603  # our own interpreter and CLI
            [sys.executable, "-m", "servewise", "serve", "--address", f"127.0.0.1:{self.port}",
             "--metrics-address", "off", "--log-level", log_level, "--grace-s", "1",
             "--store", self.store, *extra_args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_started(self, timeout_s: float = 60.0) -> int:
        """The port from the ``server_started`` log line, then wait for health SERVING."""
        deadline = time.monotonic() + timeout_s
        while not self.port:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("event") == "server_started":
                    self.port = int(rec["port"])
            if self.port:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server did not start (exit {self.proc.poll()}): {tail}")
            time.sleep(0.05)
        wait_serving(self.target, max(1.0, deadline - time.monotonic()))
        return self.port

    def rss_mb(self) -> float:
        return status_kb(self.pid, "VmRSS") / 1024.0

    def hwm_mb(self) -> float:
        return status_kb(self.pid, "VmHWM") / 1024.0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def children_cpu_seconds(self) -> float:
        """CPU of the server's live child processes (OptimizeBatch workers, Control-stream
        advice workers, multiprocessing's resource tracker): work done for its calls too."""
        return children_cpu_seconds(self.pid)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_serving(target: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} never reported SERVING")
            time.sleep(0.05)


def shifting_deployment(deployment_id: str, **overrides: Any) -> servewise_pb2.Deployment:
    """ResNet-50-like on g4dn.xlarge (linear profile), real-time on 20 replicas, in the middle
    of a shift to batching (step 1 of 10/25/50/100%, weight 0.25): Route's full rule runs."""
    realtime = types_pb2.ServingPlan(
        instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
    )
    batching = types_pb2.ServingPlan(
        instance_type="g4dn.xlarge", max_batch_size=16, max_queue_delay_ms=5.0, replicas=4
    )
    deployment = servewise_pb2.Deployment(
        deployment_id=deployment_id,
        candidates=[
            types_pb2.Candidate(
                instance_type=types_pb2.InstanceType(
                    name="g4dn.xlarge", price_per_hour=0.526, max_batch_size=64
                ),
                profile=types_pb2.LatencyProfile(
                    linear=types_pb2.LinearProfile(base_ms=5.24, per_item_ms=2.288)
                ),
            )
        ],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=200.0),
        current_plan=realtime,
        planned_rate_per_s=1000.0,
        traffic_classes=[
            servewise_pb2.TrafficClass(
                name="interactive", share=1.0, slo=types_pb2.Slo(latency_ms=200.0)
            )
        ],
        transition=servewise_pb2.Transition(
            from_mode=types_pb2.SERVING_MODE_REALTIME,
            from_plan=realtime,
            to_mode=types_pb2.SERVING_MODE_DYNAMIC_BATCHING,
            to_plan=batching,
            steps=[servewise_pb2.TransitionStep(weight=w) for w in (0.1, 0.25, 0.5, 1.0)],
            step_index=1,
        ),
    )
    for name, value in overrides.items():
        setattr(deployment, name, value)
    return deployment


def realtime_deployment(deployment_id: str) -> servewise_pb2.Deployment:
    """The same model served real-time (no transition): what the Control stream starts from."""
    deployment = shifting_deployment(deployment_id)
    deployment.ClearField("transition")
    return deployment
