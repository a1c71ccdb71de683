"""Workload, SLO and serving plan: the inputs every part of the core shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_SLO_PERCENTILE = 99.0


@dataclass(frozen=True)
class Workload:
    """Arrivals: a renewal process at ``rate_per_s`` with inter-arrival CV ``arrival_cv``
    (1 = Poisson), or explicit timestamps (then the rate is derived from them)."""

    rate_per_s: float
    arrival_cv: float = 1.0
    arrival_times_s: npt.NDArray[np.float64] | None = None


@dataclass(frozen=True)
class Slo:
    """The ``percentile`` of request latency must be <= ``latency_ms``."""

    latency_ms: float
    percentile: float = DEFAULT_SLO_PERCENTILE


@dataclass(frozen=True)
class Plan:
    """Dynamic batching with ``replicas`` identical replicas on ``instance_type``.

    Real-time serving is ``max_batch_size=1, max_queue_delay_ms=0``.
    """

    instance_type: str
    max_batch_size: int
    max_queue_delay_ms: float
    replicas: int

    def describe(self) -> str:
        return (
            f"{self.instance_type} B={self.max_batch_size} "
            f"T={self.max_queue_delay_ms:g} ms N={self.replicas}"
        )


def cost_per_million_requests(cost_per_hour: float, rate_per_s: float) -> float:
    """Cost of a million requests at a steady rate: cost_per_hour / (rate * 3600) * 1e6."""
    return cost_per_hour / (rate_per_s * 3600.0) * 1e6
