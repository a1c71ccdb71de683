"""Latency profiles, instance types and their validation.

A profile maps a batch size b to the service time s(b) of one batch. Measured points are
interpolated linearly; below the smallest measured batch the smallest point's latency is used
(a padded batch costs at least as much as the smallest one measured); above the largest measured
batch, or above what fits the instance's memory, a batch is infeasible.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from servewise.core.errors import FieldViolation, InvalidInputError

# Dips of a measured latency as the batch grows are tolerated up to this fraction of the
# previous point (published tables carry a few percent of noise); larger dips are still
# accepted but called out in the notes, because they usually mean a measurement problem.
NOISE_DIP_FRACTION = 0.10

# Largest batch size any profile may describe; bounds memory of the per-size tables.
MAX_PROFILE_BATCH_SIZE = 65_536


@dataclass(frozen=True)
class LatencyProfile:
    """Service time of one batch against its size.

    Parameters
    ----------
    batch_sizes:
        Strictly increasing measured batch sizes (>= 1).
    latencies_ms:
        Service time of a batch of each size, finite and > 0.
    """

    batch_sizes: tuple[int, ...]
    latencies_ms: tuple[float, ...]
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def service_time_ms(self, batch_size: int) -> float:
        """s(b); ``inf`` when b is above the largest measured size."""
        if batch_size > self.batch_sizes[-1]:
            return math.inf
        if isinstance(batch_size, int) and batch_size >= 0:
            return float(self._table[batch_size])
        return float(np.interp(batch_size, self.batch_sizes, self.latencies_ms))

    def table_ms(self, up_to: int) -> npt.NDArray[np.float64]:
        """s(b) for b = 0..up_to as a read-only array (index 0 is 0; sizes beyond the profile
        are inf)."""
        full = self._table
        if up_to < len(full):
            return full[: up_to + 1]
        table = np.full(up_to + 1, math.inf)
        table[: len(full)] = full
        table.flags.writeable = False
        return table

    @cached_property
    def _table(self) -> npt.NDArray[np.float64]:
        # Interpolated once per profile: the optimizer asks for s(b) and tables thousands of
        # times per request, and np.interp's per-call overhead dominated those lookups.
        sizes = np.arange(self.batch_sizes[-1] + 1, dtype=np.float64)
        table = np.interp(sizes, self.batch_sizes, self.latencies_ms)
        table[0] = 0.0
        table.flags.writeable = False
        return table

    @classmethod
    def linear(cls, base_ms: float, per_item_ms: float, max_batch_size: int) -> LatencyProfile:
        """s(b) = base_ms + per_item_ms * b; exact under linear interpolation of two points."""
        if max_batch_size == 1:
            return cls((1,), (base_ms + per_item_ms,))
        return cls(
            (1, max_batch_size), (base_ms + per_item_ms, base_ms + per_item_ms * max_batch_size)
        )


@dataclass(frozen=True)
class InstanceType:
    """Where a model runs: a price and a memory cap on the batch size."""

    name: str
    price_per_hour: float
    max_batch_size: int | None = None
    cold_start_s: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """An instance type and the model's profile measured on it."""

    instance: InstanceType
    profile: LatencyProfile

    @property
    def max_batch_size(self) -> int:
        """Largest feasible batch: the profile's range capped by memory."""
        cap = self.instance.max_batch_size
        top = self.profile.max_batch_size
        return top if cap is None else min(cap, top)


def memory_batch_cap(model_bytes: int, bytes_per_item: int, device_memory_bytes: int) -> int:
    """Largest batch whose activations fit beside the model; 0 when even the model does not fit."""
    free = device_memory_bytes - model_bytes
    if free <= 0 or bytes_per_item <= 0:
        return 0
    return int(free // bytes_per_item)


def build_profile(points: list[tuple[int, float]], field_path: str) -> LatencyProfile:
    """Validate measured (batch_size, latency_ms) points and build a profile.

    Raises InvalidInputError naming ``{field_path}[i].batch_size`` or ``.latency_ms``.
    Slight dips (noise) are accepted; every dip is reported in ``notes``.
    """
    violations: list[FieldViolation] = []
    if not points:
        violations.append(FieldViolation(field_path, "at least one profile point is required"))
        raise InvalidInputError(violations)
    previous_size = 0
    for i, (size, latency) in enumerate(points):
        if size < 1:
            violations.append(FieldViolation(f"{field_path}[{i}].batch_size", "must be >= 1"))
        elif size > MAX_PROFILE_BATCH_SIZE:
            violations.append(
                FieldViolation(
                    f"{field_path}[{i}].batch_size", f"must be <= {MAX_PROFILE_BATCH_SIZE}"
                )
            )
        elif size <= previous_size:
            violations.append(
                FieldViolation(
                    f"{field_path}[{i}].batch_size",
                    f"batch sizes must be strictly increasing ({size} after {previous_size})",
                )
            )
        if not (math.isfinite(latency) and latency > 0):
            violations.append(
                FieldViolation(f"{field_path}[{i}].latency_ms", "must be finite and > 0")
            )
        previous_size = max(previous_size, size)
    if violations:
        raise InvalidInputError(violations)
    notes: list[str] = []
    for (size_a, lat_a), (size_b, lat_b) in itertools.pairwise(points):
        if lat_b < lat_a:
            dip = (lat_a - lat_b) / lat_a
            kind = "noise" if dip <= NOISE_DIP_FRACTION else "a large dip; check the measurement"
            notes.append(
                f"{field_path}: batch {size_b} measured faster than batch {size_a} "
                f"({lat_b:g} ms vs {lat_a:g} ms, {dip:.1%} lower), accepted as {kind}"
            )
    return LatencyProfile(
        tuple(int(s) for s, _ in points), tuple(float(v) for _, v in points), tuple(notes)
    )
