"""Discrete-event simulator of the serving model (ARCHITECTURE.md section 2). STUB: being written."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import LatencyProfile


class ServiceDistribution(Enum):
    DETERMINISTIC = "deterministic"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class LatencySummary:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    slo_percentile_ms: float | None = None


@dataclass(frozen=True)
class SimulationResult:
    latency: LatencySummary
    throughput_per_s: float
    mean_batch_size: float
    utilisation: float
    max_queue_length: int
    stable: bool
    stability_reason: str
    requests_simulated: int
    simulated_duration_s: float
    seed: int


DEFAULT_NUM_REQUESTS = 200_000
DEFAULT_SEED = 20261128


def simulate(
    profile: LatencyProfile,
    plan: Plan,
    workload: Workload,
    num_requests: int = DEFAULT_NUM_REQUESTS,
    seed: int = DEFAULT_SEED,
    distribution: ServiceDistribution = ServiceDistribution.DETERMINISTIC,
    slo: Slo | None = None,
) -> SimulationResult:
    raise NotImplementedError
