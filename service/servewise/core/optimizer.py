"""Search over (instance type, B, T, N) for the cheapest plan meeting the SLO. STUB: being written."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from servewise.core.model import Plan, Slo, Workload
from servewise.core.profiles import Candidate
from servewise.core.simulator import LatencySummary, SimulationResult


class Binding(Enum):
    LATENCY_SLO = "latency_slo"
    THROUGHPUT = "throughput"
    MINIMUM_REPLICAS = "minimum_replicas"
    MAX_REPLICAS = "max_replicas"
    SERVICE_TIME = "service_time"
    MEMORY = "memory"


DEFAULT_MAX_REPLICAS = 256


@dataclass(frozen=True)
class SearchLimits:
    max_replicas: int = DEFAULT_MAX_REPLICAS
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ms: float | None = None


@dataclass(frozen=True)
class PlanAssessment:
    plan: Plan
    predicted: LatencySummary
    simulated: SimulationResult | None
    meets_slo: bool
    capacity_per_s: float
    utilisation: float
    cost_per_hour: float
    cost_per_million_requests: float
    mean_batch_size: float


@dataclass(frozen=True)
class FrontierPoint:
    plan: Plan
    cost_per_hour: float
    latency_ms: float
    meets_slo: bool


@dataclass(frozen=True)
class OptimizeResult:
    feasible: bool
    recommended: PlanAssessment | None
    binding: Binding
    binding_reason: str
    realtime_baseline: PlanAssessment | None
    realtime_baseline_note: str
    saving_vs_realtime_per_hour: float | None
    saving_vs_realtime_fraction: float | None
    current: PlanAssessment | None
    saving_vs_current_per_hour: float | None
    saving_vs_current_fraction: float | None
    frontier: list[FrontierPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plans_considered: int = 0


def optimize(
    candidates: list[Candidate],
    workload: Workload,
    slo: Slo,
    limits: SearchLimits = SearchLimits(),
    current_plan: Plan | None = None,
    seed: int = 0,
) -> OptimizeResult:
    raise NotImplementedError
