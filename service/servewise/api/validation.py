"""Validate protobuf inputs and convert them to core objects, collecting every violation.

Each ``*_to_core`` function checks one message family, appends a :class:`FieldViolation` per
problem to a shared :class:`Violations` collector (field paths spelled with proto field names, as
the caller wrote them, e.g. ``candidates[1].profile.points.points[2].batch_size``) and returns the
core object, or ``None`` when that message was invalid. Request-level functions in
:mod:`servewise.api.converters` raise :class:`InvalidInputError` once everything was checked, so a
caller sees all of their mistakes in one answer.

Nothing here needs the core's math: only the profile builder (which validates points) and the
memory-cap formula from :mod:`servewise.core.profiles`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servewise.core.errors import FieldViolation, InvalidInputError
from servewise.core.model import DEFAULT_SLO_PERCENTILE, Plan, Slo, Workload
from servewise.core.optimizer import DEFAULT_MAX_REPLICAS, SearchLimits
from servewise.core.profiles import (
    MAX_PROFILE_BATCH_SIZE,
    NOISE_DIP_FRACTION,
    Candidate,
    InstanceType,
    LatencyProfile,
    build_profile,
    memory_batch_cap,
)
from servewise.core.simulator import DEFAULT_NUM_REQUESTS, ServiceDistribution
from servewise.limits import DEFAULT_LIMITS, described
from servewise.limits import current as current_limits
from servewise.v1 import types_pb2

# --- Limits on request size (guards against messages that would make the service do unbounded
# work or allocate unbounded memory). The configurable ones live in servewise.limits (read per
# request through current_limits()); these names are their defaults. ------------------------------
MAX_CANDIDATES = DEFAULT_LIMITS.max_candidates
MAX_TOTAL_PROFILE_POINTS = DEFAULT_LIMITS.max_profile_points
MAX_ARRIVAL_TIMES = DEFAULT_LIMITS.max_arrival_times
MAX_ALLOWED_BATCH_SIZES = 4096

# --- Limits on values. ------------------------------------------------------------------------
MAX_ARRIVAL_CV = 20.0
# Rates and timestamps the simulator can represent: below MIN_RATE_PER_S (one request in ~32
# years) the mean gap 1000/rate ms overflows for subnormal rates, and timestamps above
# MAX_ARRIVAL_TIME_S overflow when converted to ms; non-finite arrivals crashed the simulator's
# C kernel (memory corruption), taking the whole server down.
MIN_RATE_PER_S = 1e-9
MAX_RATE_PER_S = 1e9
MAX_ARRIVAL_TIME_S = 1e9
MAX_REPLICAS = 4096
MAX_QUEUE_DELAY_MS = 3_600_000.0
MIN_NUM_REQUESTS = 100
MAX_NUM_REQUESTS = DEFAULT_LIMITS.max_simulated_requests
DEFAULT_ARRIVAL_CV = 1.0

# A measured p99 below the typical (average) latency of the same batch is physically odd but
# real: published tables report averages inflated by warm-up (see /work/shared/data/README.md;
# every DeepLearningExamples profile has such points, up to ~5.4% lower). Up to this fraction
# below is accepted with a note; further below is a violation.
P99_BELOW_TYPICAL_TOLERANCE = NOISE_DIP_FRACTION

# Index-level violations reported per rule for long repeated fields (arrival timestamps); the
# rest are counted in the description instead of listed one by one.
MAX_REPORTED_INDEX_VIOLATIONS = 5

_BASIS_VALUES = frozenset(types_pb2.ServiceTimeBasis.values())
_DISTRIBUTION_VALUES = frozenset(types_pb2.ServiceTimeDistribution.values())


class Violations:
    """Collects field violations across a whole request."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def extend(self, items: Sequence[FieldViolation]) -> None:
        self.items.extend(items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidInputError(self.items)


def over_limit(v: Violations, field: str, count: int, limit: str, what: str) -> bool:
    """Add a violation naming the server limit ``limit`` (a Limits field) when ``count`` exceeds
    it; True when it did."""
    cap = getattr(current_limits(), limit)
    if count <= cap:
        return False
    v.add(field, f"at most {cap} {what} (got {count}; {described(limit)})")
    return True


def _finite(value: float) -> bool:
    return math.isfinite(value)


def check_positive(v: Violations, field: str, value: float) -> bool:
    """``value`` finite and > 0."""
    if _finite(value) and value > 0:
        return True
    v.add(field, f"must be finite and > 0 (got {value!r})")
    return False


def rate_in_range(v: Violations, field: str, value: float) -> bool:
    """A rate the simulator can represent: finite, > 0 and in [MIN_RATE_PER_S, MAX_RATE_PER_S]."""
    if not check_positive(v, field, value):
        return False
    if not MIN_RATE_PER_S <= value <= MAX_RATE_PER_S:
        v.add(field, f"must be in [{MIN_RATE_PER_S:g}, {MAX_RATE_PER_S:g}] (got {value!r})")
        return False
    return True


def check_non_negative(v: Violations, field: str, value: float) -> bool:
    """``value`` finite and >= 0."""
    if _finite(value) and value >= 0:
        return True
    v.add(field, f"must be finite and >= 0 (got {value!r})")
    return False


# --- Enums -----------------------------------------------------------------------------------


def use_p99_basis(v: Violations, field: str, value: int) -> bool:
    """Whether ServiceTimeBasis ``value`` asks for p99 latencies; unknown numbers are violations."""
    if value not in _BASIS_VALUES:
        v.add(field, f"unknown ServiceTimeBasis value {value}")
        return False
    return value == types_pb2.SERVICE_TIME_BASIS_P99


_DISTRIBUTIONS: dict[int, ServiceDistribution] = {
    types_pb2.SERVICE_TIME_DISTRIBUTION_UNSPECIFIED: ServiceDistribution.DETERMINISTIC,
    types_pb2.SERVICE_TIME_DISTRIBUTION_DETERMINISTIC: ServiceDistribution.DETERMINISTIC,
    types_pb2.SERVICE_TIME_DISTRIBUTION_EXPONENTIAL: ServiceDistribution.EXPONENTIAL,
}


def distribution_to_core(v: Violations, field: str, value: int) -> ServiceDistribution:
    """ServiceTimeDistribution -> core enum; unknown numbers are violations."""
    if value not in _DISTRIBUTION_VALUES:
        v.add(field, f"unknown ServiceTimeDistribution value {value}")
        return ServiceDistribution.DETERMINISTIC
    return _DISTRIBUTIONS[value]


# --- Candidates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertedCandidate:
    """A valid candidate and the observations made while reading it (e.g. profile dips)."""

    candidate: Candidate
    notes: tuple[str, ...]


def _explicit_cap_to_core(v: Violations, value: int, field: str) -> int | None:
    if value < 1:
        v.add(field, "must be >= 1 when set")
        return None
    if value > MAX_PROFILE_BATCH_SIZE:
        v.add(field, f"must be <= {MAX_PROFILE_BATCH_SIZE}")
        return None
    return int(value)


def _memory_model_cap_to_core(v: Violations, mem: types_pb2.MemoryModel, path: str) -> int | None:
    """floor((device - model) / per_item), or None (with violations) when the model is invalid."""
    start = len(v)
    for name in ("model_bytes", "bytes_per_item", "device_memory_bytes"):
        if getattr(mem, name) <= 0:
            v.add(f"{path}.{name}", "must be > 0")
    if len(v) > start:
        return None
    if mem.device_memory_bytes <= mem.model_bytes:
        v.add(
            f"{path}.device_memory_bytes",
            f"must exceed model_bytes ({mem.model_bytes}): the model does not fit",
        )
        return None
    cap = memory_batch_cap(mem.model_bytes, mem.bytes_per_item, mem.device_memory_bytes)
    if cap < 1:
        v.add(
            f"{path}.bytes_per_item",
            f"not even one item fits beside the model "
            f"({mem.device_memory_bytes - mem.model_bytes} bytes free)",
        )
        return None
    return cap


def _memory_cap_to_core(
    v: Violations, pb: types_pb2.InstanceType, path: str
) -> tuple[bool, int | None]:
    """(valid, cap) for the instance's memory_cap oneof; cap None when unset."""
    kind = pb.WhichOneof("memory_cap")
    if kind == "max_batch_size":
        cap = _explicit_cap_to_core(v, pb.max_batch_size, f"{path}.max_batch_size")
    elif kind == "memory":
        cap = _memory_model_cap_to_core(v, pb.memory, f"{path}.memory")
    else:
        return True, None
    return cap is not None, cap


def _instance_to_core(
    v: Violations, pb: types_pb2.InstanceType, path: str
) -> tuple[InstanceType | None, bool, int | None]:
    """(instance or None, whether the memory cap is valid, the cap or None when unset)."""
    start = len(v)
    if not pb.name:
        v.add(f"{path}.name", "must be non-empty")
    check_positive(v, f"{path}.price_per_hour", pb.price_per_hour)
    cap_ok, cap = _memory_cap_to_core(v, pb, path)
    cold_start = 0.0
    if pb.HasField("cold_start_s") and check_non_negative(
        v, f"{path}.cold_start_s", pb.cold_start_s
    ):
        cold_start = pb.cold_start_s
    if len(v) > start:
        return None, cap_ok, cap
    instance = InstanceType(
        name=pb.name, price_per_hour=pb.price_per_hour, max_batch_size=cap, cold_start_s=cold_start
    )
    return instance, cap_ok, cap


def _points_profile_to_core(
    v: Violations, pb: types_pb2.PointsProfile, path: str, use_p99: bool
) -> tuple[LatencyProfile | None, list[str]]:
    """Measured points; ``path`` names the repeated field (``...profile.points.points``)."""
    start = len(v)
    typical = [(int(p.batch_size), float(p.latency_ms)) for p in pb.points]
    profile: LatencyProfile | None = None
    try:
        profile = build_profile(typical, path)
    except InvalidInputError as exc:
        v.extend(exc.violations)
    below: list[tuple[int, float]] = []
    for i, point in enumerate(pb.points):
        if not point.HasField("p99_latency_ms"):
            continue
        field = f"{path}[{i}].p99_latency_ms"
        p99 = point.p99_latency_ms
        if not check_positive(v, field, p99):
            continue
        latency = point.latency_ms
        if _finite(latency) and latency > 0 and p99 < latency:
            shortfall = (latency - p99) / latency
            if shortfall > P99_BELOW_TYPICAL_TOLERANCE:
                v.add(
                    field,
                    f"must be >= latency_ms ({latency:g}); {p99:g} is {shortfall:.1%} lower, "
                    f"more than the {P99_BELOW_TYPICAL_TOLERANCE:.0%} tolerated as noise",
                )
            else:
                below.append((int(point.batch_size), shortfall))
    if len(v) > start or profile is None:
        return None, []
    notes: list[str] = []
    if below:
        sizes = ", ".join(str(size) for size, _ in below)
        worst = max(shortfall for _, shortfall in below)
        notes.append(
            f"{path}: p99_latency_ms below latency_ms at batch {sizes} (up to {worst:.1%} lower), "
            f"accepted as noise (averages inflated by warm-up are common in published tables)"
        )
    if use_p99:
        chosen = [
            (int(p.batch_size), p.p99_latency_ms if p.HasField("p99_latency_ms") else p.latency_ms)
            for p in pb.points
        ]
        # Inputs were validated above, so this cannot raise; its notes describe the profile used.
        profile = build_profile(chosen, path)
    return profile, [*profile.notes, *notes]


def _linear_profile_to_core(
    v: Violations, pb: types_pb2.LinearProfile, path: str, instance_cap: int | None, cap_known: bool
) -> LatencyProfile | None:
    start = len(v)
    base_ok = check_non_negative(v, f"{path}.base_ms", pb.base_ms)
    per_ok = check_non_negative(v, f"{path}.per_item_ms", pb.per_item_ms)
    if base_ok and per_ok and not pb.base_ms + pb.per_item_ms > 0:
        v.add(path, "base_ms + per_item_ms (the time of a batch of one) must be > 0")
    cap_field = f"{path}.max_batch_size"
    top: int | None = None
    if pb.max_batch_size > 0:
        if pb.max_batch_size > MAX_PROFILE_BATCH_SIZE:
            v.add(cap_field, f"must be <= {MAX_PROFILE_BATCH_SIZE}")
        else:
            top = int(pb.max_batch_size)
    elif cap_known:
        if instance_cap is None:
            v.add(
                cap_field,
                "must be >= 1 when the instance type has no memory cap "
                "(0 means limited only by the instance's memory cap)",
            )
        elif instance_cap > MAX_PROFILE_BATCH_SIZE:
            v.add(
                cap_field,
                f"0 means the instance's memory cap ({instance_cap}), which is above the largest "
                f"supported batch {MAX_PROFILE_BATCH_SIZE}; set max_batch_size",
            )
        else:
            top = instance_cap
    if len(v) > start or top is None:
        return None
    if not _finite(pb.base_ms + pb.per_item_ms * top):
        v.add(path, f"base_ms + per_item_ms * {top} (the largest batch's time) must be finite")
        return None
    return LatencyProfile.linear(pb.base_ms, pb.per_item_ms, top)


def count_profile_points(pb: types_pb2.Candidate) -> int:
    if pb.profile.WhichOneof("kind") == "points":
        return len(pb.profile.points.points)
    return 0


def candidate_to_core(
    v: Violations, pb: types_pb2.Candidate, path: str, use_p99: bool
) -> ConvertedCandidate | None:
    """Instance type + profile; ``path`` is ``candidates[i]`` or ``candidate``."""
    start = len(v)
    instance_path = f"{path}.instance_type"
    # A linear profile with max_batch_size 0 takes the instance's memory cap, when that is valid.
    instance, cap_ok, cap = _instance_to_core(v, pb.instance_type, instance_path)
    profile_path = f"{path}.profile"
    kind = pb.profile.WhichOneof("kind")
    profile: LatencyProfile | None = None
    notes: list[str] = []
    if kind == "points":
        profile, notes = _points_profile_to_core(
            v, pb.profile.points, f"{profile_path}.points.points", use_p99
        )
    elif kind == "linear":
        profile = _linear_profile_to_core(
            v, pb.profile.linear, f"{profile_path}.linear", cap, cap_known=cap_ok
        )
    else:
        v.add(profile_path, "must be set (points or linear)")
    if len(v) > start or instance is None or profile is None:
        return None
    return ConvertedCandidate(Candidate(instance, profile), tuple(notes))


# --- Workload and SLO -------------------------------------------------------------------------


def _index_violations(
    v: Violations, path: str, mask: npt.NDArray[np.bool_], description: str, offset: int = 0
) -> bool:
    """Report the first few indices where ``mask`` holds; True when there were none."""
    (indices,) = np.nonzero(mask)
    if indices.size == 0:
        return True
    for index in indices[:MAX_REPORTED_INDEX_VIOLATIONS]:
        v.add(f"{path}[{int(index) + offset}]", description)
    extra = indices.size - MAX_REPORTED_INDEX_VIOLATIONS
    if extra > 0:
        v.add(path, f"{extra} more timestamps: {description}")
    return False


def workload_to_core(v: Violations, pb: types_pb2.Workload, path: str) -> Workload | None:
    start = len(v)
    cv = DEFAULT_ARRIVAL_CV
    if pb.HasField("arrival_cv"):
        cv_field = f"{path}.arrival_cv"
        if not (_finite(pb.arrival_cv) and 0.0 <= pb.arrival_cv <= MAX_ARRIVAL_CV):
            v.add(
                cv_field,
                f"must be finite and in [0, {MAX_ARRIVAL_CV:g}] (got {pb.arrival_cv!r})",
            )
        else:
            cv = pb.arrival_cv
    times_path = f"{path}.arrival_times_s"
    n = len(pb.arrival_times_s)
    if n == 0:
        rate_in_range(v, f"{path}.rate_per_s", pb.rate_per_s)
        if len(v) > start:
            return None
        return Workload(rate_per_s=pb.rate_per_s, arrival_cv=cv)
    if over_limit(v, times_path, n, "max_arrival_times", "timestamps"):
        return None
    times = np.asarray(pb.arrival_times_s, dtype=np.float64)
    rate = math.nan
    finite = np.isfinite(times)
    ok = _index_violations(v, times_path, ~finite, "must be finite")
    ok &= _index_violations(v, times_path, finite & (times < 0), "must be >= 0")
    ok &= _index_violations(
        v, times_path, finite & (times > MAX_ARRIVAL_TIME_S), f"must be <= {MAX_ARRIVAL_TIME_S:g}"
    )
    if ok:
        ok = _index_violations(
            v, times_path, np.diff(times) < 0, "must not be earlier than the previous timestamp", 1
        )
    if ok:
        span = float(times[-1] - times[0])
        rate = (n - 1) / span if span > 0 else math.inf
        if span <= 0:
            v.add(times_path, "needs at least 2 distinct timestamps")
        elif not rate <= MAX_RATE_PER_S:
            v.add(
                times_path,
                f"{n} timestamps over {span!r} s imply a rate above {MAX_RATE_PER_S:g}/s",
            )
    if len(v) > start:
        return None
    return Workload(rate_per_s=rate, arrival_cv=cv, arrival_times_s=times)


def slo_to_core(v: Violations, pb: types_pb2.Slo, path: str) -> Slo | None:
    start = len(v)
    check_positive(v, f"{path}.latency_ms", pb.latency_ms)
    percentile = DEFAULT_SLO_PERCENTILE
    if pb.HasField("percentile"):
        if _finite(pb.percentile) and 0.0 < pb.percentile < 100.0:
            percentile = pb.percentile
        else:
            v.add(
                f"{path}.percentile",
                f"must be in the open interval (0, 100) (got {pb.percentile!r})",
            )
    if len(v) > start:
        return None
    return Slo(latency_ms=pb.latency_ms, percentile=percentile)


# --- Search limits and plans ----------------------------------------------------------------


def limits_to_core(v: Violations, pb: types_pb2.SearchLimits, path: str) -> SearchLimits | None:
    start = len(v)
    max_replicas = DEFAULT_MAX_REPLICAS
    if pb.max_replicas > MAX_REPLICAS:
        v.add(f"{path}.max_replicas", f"must be <= {MAX_REPLICAS} (0 means {DEFAULT_MAX_REPLICAS})")
    elif pb.max_replicas > 0:
        max_replicas = int(pb.max_replicas)
    sizes_path = f"{path}.allowed_batch_sizes"
    sizes = list(pb.allowed_batch_sizes)
    if len(sizes) > MAX_ALLOWED_BATCH_SIZES:
        v.add(sizes_path, f"at most {MAX_ALLOWED_BATCH_SIZES} entries (got {len(sizes)})")
    else:
        first_index: dict[int, int] = {}
        for i, size in enumerate(sizes):
            if size < 1:
                v.add(f"{sizes_path}[{i}]", "must be >= 1")
            elif size in first_index:
                v.add(f"{sizes_path}[{i}]", f"duplicates {sizes_path}[{first_index[size]}]")
            else:
                first_index[size] = i
    max_delay: float | None = None
    if pb.HasField("max_queue_delay_ms") and check_non_negative(
        v, f"{path}.max_queue_delay_ms", pb.max_queue_delay_ms
    ):
        max_delay = pb.max_queue_delay_ms
    if len(v) > start:
        return None
    return SearchLimits(
        max_replicas=max_replicas,
        allowed_batch_sizes=tuple(sorted(int(s) for s in sizes)),
        max_queue_delay_ms=max_delay,
    )


def check_some_batch_size_fits(
    v: Violations, field: str, limits: SearchLimits, candidates: dict[str, Candidate]
) -> None:
    """When batch sizes are restricted, at least one must be feasible on some candidate;
    otherwise the limits exclude every plan."""
    if not limits.allowed_batch_sizes:
        return
    largest = max(c.max_batch_size for c in candidates.values())
    if min(limits.allowed_batch_sizes) > largest:
        feasible = ", ".join(f"{name}: {c.max_batch_size}" for name, c in candidates.items())
        v.add(
            field,
            f"no allowed batch size fits any candidate (largest feasible batch: {feasible})",
        )


def plan_to_core(
    v: Violations,
    pb: types_pb2.ServingPlan,
    path: str,
    candidates: dict[str, Candidate] | None,
    default_instance: str | None = None,
) -> Plan | None:
    """A serving plan against the valid candidates (by name).

    ``candidates`` None means the candidates were invalid, so cross-checks are skipped.
    ``default_instance`` (Simulate) is used when ``instance_type`` is empty, and is the only name
    accepted otherwise.
    """
    start = len(v)
    name_field = f"{path}.instance_type"
    name = pb.instance_type
    candidate: Candidate | None = None
    if default_instance is not None:
        if name and name != default_instance:
            v.add(
                name_field,
                f"must be empty or the candidate's instance type {default_instance!r} "
                f"(got {name!r})",
            )
        name = default_instance
    if candidates is not None:
        candidate = candidates.get(name)
        if candidate is None and default_instance is None:
            known = ", ".join(repr(n) for n in candidates)
            v.add(name_field, f"must name one of the candidates ({known}); got {name!r}")
    batch_field = f"{path}.max_batch_size"
    if pb.max_batch_size < 1:
        v.add(batch_field, "must be >= 1")
    elif candidate is not None and pb.max_batch_size > candidate.max_batch_size:
        v.add(
            batch_field,
            f"must be <= {candidate.max_batch_size}, the largest feasible batch on {name!r} "
            f"(profile range and memory cap)",
        )
    delay = pb.max_queue_delay_ms
    if not (_finite(delay) and 0.0 <= delay <= MAX_QUEUE_DELAY_MS):
        v.add(
            f"{path}.max_queue_delay_ms",
            f"must be finite and in [0, {MAX_QUEUE_DELAY_MS:g}] (got {delay!r})",
        )
    if not 1 <= pb.replicas <= MAX_REPLICAS:
        v.add(f"{path}.replicas", f"must be in [1, {MAX_REPLICAS}] (got {pb.replicas})")
    if len(v) > start:
        return None
    return Plan(
        instance_type=name,
        max_batch_size=int(pb.max_batch_size),
        max_queue_delay_ms=delay,
        replicas=int(pb.replicas),
    )


def num_requests_to_core(v: Violations, field: str, value: int) -> int:
    most = current_limits().max_simulated_requests
    if value == 0:
        return min(DEFAULT_NUM_REQUESTS, max(most, MIN_NUM_REQUESTS))
    if not MIN_NUM_REQUESTS <= value <= most:
        v.add(
            field,
            f"must be 0 (default {DEFAULT_NUM_REQUESTS}) or in "
            f"[{MIN_NUM_REQUESTS}, {most}] (got {value}; {described('max_simulated_requests')})",
        )
    return int(value)
