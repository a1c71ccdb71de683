"""Property tests of request validation (no server, no core math).

For every numeric field: a value is accepted iff it satisfies the field's rule, a rejected value is
reported under exactly that field's path, and nothing but InvalidInputError ever escapes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from api_builders import optimize_request, simulate_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servewise.api.converters import optimize_args, simulate_args
from servewise.api.validation import (
    MAX_ARRIVAL_CV,
    MAX_ARRIVAL_TIME_S,
    MAX_QUEUE_DELAY_MS,
    MAX_RATE_PER_S,
    MAX_REPLICAS,
    MIN_RATE_PER_S,
    P99_BELOW_TYPICAL_TOLERANCE,
)
from servewise.core.errors import InvalidInputError
from servewise.core.profiles import MAX_PROFILE_BATCH_SIZE
from servewise.v1 import servewise_pb2, types_pb2

# Any double, boundary values and the awkward ones (nan, +-inf, -0.0, subnormals) included.
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1.0, 20.0, 100.0, 3_600_000.0, math.nan, math.inf]
    ),
)
UINT32 = st.integers(min_value=0, max_value=2**32 - 1)
UINT64 = st.integers(min_value=0, max_value=2**64 - 1)


def violated_fields(request: Any) -> list[str]:
    """Field paths validation rejects; [] when accepted. Any other exception fails the test."""
    convert: Callable[[Any], object] = (
        optimize_args if isinstance(request, servewise_pb2.OptimizeBatchRequest) else simulate_args
    )
    try:
        convert(request)
    except InvalidInputError as exc:
        violations = exc.violations
    else:
        return []
    assert violations, "InvalidInputError without violations"
    return [v.field for v in violations]


def _finite(x: float) -> bool:
    return math.isfinite(x)


@dataclass(frozen=True)
class NumericField:
    """A field of a valid base request, and the rule its values must satisfy."""

    rpc: str
    path: str
    setter: Callable[[Any, Any], None]
    rule: Callable[[Any], bool]
    # Paths named when the rule fails; [path] unless the value breaks a cross-field rule.
    failure_paths: Callable[[Any], list[str]] | None = None

    def expected_failure(self, value: Any) -> list[str]:
        return [self.path] if self.failure_paths is None else self.failure_paths(value)

    def request(self, value: Any) -> Any:
        request = optimize_request() if self.rpc == "OptimizeBatch" else simulate_request()
        self.setter(request, value)
        return request


def _attr(path: str) -> Callable[[Any, Any], None]:
    *parents, leaf = path.split(".")

    def setter(message: Any, value: Any) -> None:
        target = message
        for part in parents:
            if "[" in part:
                name, index = part[:-1].split("[")
                target = getattr(target, name)[int(index)]
            else:
                target = getattr(target, part)
        setattr(target, leaf, value)

    return setter


def _latency_without_p99(message: Any, value: float) -> None:
    point = message.candidates[0].profile.points.points[4]
    point.ClearField("p99_latency_ms")
    point.latency_ms = value


LINEAR_BASE_MS = 5.24  # base of the T4 linear fit in api_builders
POINT3_LATENCY = 11.5  # published average of batch 8 in the ResNet-50 V100 FP32 table

DOUBLE_FIELDS = [
    NumericField(
        "OptimizeBatch",
        "candidates[0].instance_type.price_per_hour",
        _attr("candidates[0].instance_type.price_per_hour"),
        lambda x: _finite(x) and x > 0,
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[0].instance_type.cold_start_s",
        _attr("candidates[0].instance_type.cold_start_s"),
        lambda x: _finite(x) and x >= 0,
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[0].profile.points.points[4].latency_ms",
        _latency_without_p99,
        lambda x: _finite(x) and x > 0,
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[0].profile.points.points[3].p99_latency_ms",
        _attr("candidates[0].profile.points.points[3].p99_latency_ms"),
        lambda x: _finite(x) and x > 0 and x >= POINT3_LATENCY * (1 - P99_BELOW_TYPICAL_TOLERANCE),
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[1].profile.linear.base_ms",
        _attr("candidates[1].profile.linear.base_ms"),
        lambda x: _finite(x) and x >= 0,
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[1].profile.linear.per_item_ms",
        _attr("candidates[1].profile.linear.per_item_ms"),
        # The instance cap (64) is the linear range; s(64) must stay finite.
        lambda x: _finite(x) and x >= 0 and _finite(LINEAR_BASE_MS + x * 64),
        lambda x: (
            ["candidates[1].profile.linear"]
            if _finite(x) and x >= 0
            else ["candidates[1].profile.linear.per_item_ms"]
        ),
    ),
    NumericField(
        "OptimizeBatch",
        "workload.rate_per_s",
        _attr("workload.rate_per_s"),
        lambda x: MIN_RATE_PER_S <= x <= MAX_RATE_PER_S,
    ),
    NumericField(
        "OptimizeBatch",
        "workload.arrival_cv",
        _attr("workload.arrival_cv"),
        lambda x: _finite(x) and 0 <= x <= MAX_ARRIVAL_CV,
    ),
    NumericField(
        "OptimizeBatch",
        "slo.latency_ms",
        _attr("slo.latency_ms"),
        lambda x: _finite(x) and x > 0,
    ),
    NumericField(
        "OptimizeBatch",
        "slo.percentile",
        _attr("slo.percentile"),
        lambda x: _finite(x) and 0 < x < 100,
    ),
    NumericField(
        "OptimizeBatch",
        "limits.max_queue_delay_ms",
        _attr("limits.max_queue_delay_ms"),
        lambda x: _finite(x) and x >= 0,
    ),
    NumericField(
        "OptimizeBatch",
        "current_plan.max_queue_delay_ms",
        _attr("current_plan.max_queue_delay_ms"),
        lambda x: _finite(x) and 0 <= x <= MAX_QUEUE_DELAY_MS,
    ),
    NumericField(
        "Simulate",
        "plan.max_queue_delay_ms",
        _attr("plan.max_queue_delay_ms"),
        lambda x: _finite(x) and 0 <= x <= MAX_QUEUE_DELAY_MS,
    ),
    NumericField(
        "Simulate",
        "candidate.instance_type.price_per_hour",
        _attr("candidate.instance_type.price_per_hour"),
        lambda x: _finite(x) and x > 0,
    ),
    NumericField(
        "Simulate",
        "slo.percentile",
        _attr("slo.percentile"),
        lambda x: _finite(x) and 0 < x < 100,
    ),
]

INT_FIELDS = [
    NumericField(
        "OptimizeBatch",
        "limits.max_replicas",
        _attr("limits.max_replicas"),
        lambda n: n <= MAX_REPLICAS,
    ),
    NumericField(
        "OptimizeBatch",
        "current_plan.replicas",
        _attr("current_plan.replicas"),
        lambda n: 1 <= n <= MAX_REPLICAS,
    ),
    NumericField(
        "OptimizeBatch",
        "current_plan.max_batch_size",
        _attr("current_plan.max_batch_size"),
        lambda n: 1 <= n <= 100,  # the p3.2xlarge memory model fits 100 items
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[1].instance_type.max_batch_size",
        _attr("candidates[1].instance_type.max_batch_size"),
        lambda n: 1 <= n <= MAX_PROFILE_BATCH_SIZE,
    ),
    NumericField(
        "OptimizeBatch",
        "candidates[1].profile.linear.max_batch_size",
        _attr("candidates[1].profile.linear.max_batch_size"),
        lambda n: n <= MAX_PROFILE_BATCH_SIZE,  # 0 falls back to the instance cap (64)
    ),
    NumericField(
        "Simulate",
        "plan.max_batch_size",
        _attr("plan.max_batch_size"),
        lambda n: 1 <= n <= 100,
    ),
    NumericField(
        "Simulate",
        "plan.replicas",
        _attr("plan.replicas"),
        lambda n: 1 <= n <= MAX_REPLICAS,
    ),
]


def _small_and_edge_ints() -> st.SearchStrategy[int]:
    return st.one_of(
        UINT32,
        st.integers(min_value=0, max_value=MAX_PROFILE_BATCH_SIZE + 2),
        st.sampled_from([0, 1, 100, 101, MAX_REPLICAS, MAX_REPLICAS + 1]),
    )


@pytest.mark.parametrize("field", DOUBLE_FIELDS, ids=lambda f: f"{f.rpc}:{f.path}")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=DOUBLES)
def test_double_field_accepted_iff_rule(field: NumericField, value: float) -> None:
    """A double is accepted iff within its rule; otherwise exactly its path is reported."""
    fields = violated_fields(field.request(value))
    if field.rule(value):
        assert fields == []
    else:
        assert fields == field.expected_failure(value)


@pytest.mark.parametrize("field", INT_FIELDS, ids=lambda f: f"{f.rpc}:{f.path}")
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_int_field_accepted_iff_rule(field: NumericField, data: st.DataObject) -> None:
    """An unsigned integer is accepted iff within its rule; otherwise exactly its path."""
    value = data.draw(_small_and_edge_ints())
    fields = violated_fields(field.request(value))
    if field.rule(value):
        assert fields == []
    else:
        assert fields == field.expected_failure(value)


@settings(max_examples=100, deadline=None)
@given(value=UINT64)
def test_num_requests_accepted_iff_zero_or_in_range(value: int) -> None:
    """num_requests is 0 (the default) or within [100, 5,000,000]."""
    request = simulate_request()
    request.num_requests = value
    fields = violated_fields(request)
    assert (fields == []) == (value == 0 or 100 <= value <= 5_000_000)
    assert fields in ([], ["num_requests"])


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=12))
def test_allowed_batch_sizes_accepted_iff_positive_and_unique(sizes: list[int]) -> None:
    """allowed_batch_sizes: every entry >= 1, no duplicates, one feasible; each bad index named."""
    request = optimize_request()
    del request.limits.allowed_batch_sizes[:]
    request.limits.allowed_batch_sizes.extend(sizes)
    fields = violated_fields(request)
    expected = []
    seen: set[int] = set()
    for i, size in enumerate(sizes):
        if size < 1 or size in seen:
            expected.append(f"limits.allowed_batch_sizes[{i}]")
        seen.add(size)
    if not expected and sizes and min(sizes) > 100:  # largest feasible batch: 100 (p3.2xlarge)
        expected = ["limits.allowed_batch_sizes"]
    assert fields == expected


@settings(max_examples=200, deadline=None)
@given(times=st.lists(DOUBLES | st.floats(min_value=0, max_value=2e9), max_size=8))
def test_arrival_times_accepted_iff_a_usable_trace(times: list[float]) -> None:
    """A trace is accepted iff finite, in [0, 1e9] s, non-decreasing, with 2+ distinct times and
    a derived rate <= 1e9/s; any rejection names the trace (or one of its entries)."""
    request = simulate_request()
    request.workload.arrival_times_s.extend(times)
    fields = violated_fields(request)
    usable = (
        len(times) >= 2
        and all(_finite(t) and 0 <= t <= MAX_ARRIVAL_TIME_S for t in times)
        and all(b >= a for a, b in itertools.pairwise(times))
        and times[-1] > times[0]
        and (len(times) - 1) / (times[-1] - times[0]) <= MAX_RATE_PER_S
    )
    if not times:
        assert fields == []  # no trace: the rate is used
    elif usable:
        assert fields == []
    else:
        assert fields
        assert all(f.startswith("workload.arrival_times_s") for f in fields)


@settings(max_examples=150, deadline=None)
@given(
    price=DOUBLES,
    rate=DOUBLES,
    cv=DOUBLES,
    slo_ms=DOUBLES,
    percentile=DOUBLES,
    delay=DOUBLES,
    replicas=UINT32,
)
def test_independent_faults_are_all_reported(
    price: float,
    rate: float,
    cv: float,
    slo_ms: float,
    percentile: float,
    delay: float,
    replicas: int,
) -> None:
    """Random values in seven independent fields: exactly the fields breaking a rule are named."""
    request = optimize_request()
    request.candidates[1].instance_type.price_per_hour = price
    request.workload.rate_per_s = rate
    request.workload.arrival_cv = cv
    request.slo.latency_ms = slo_ms
    request.slo.percentile = percentile
    request.limits.max_queue_delay_ms = delay
    request.current_plan.replicas = replicas
    expected = {
        "candidates[1].instance_type.price_per_hour": _finite(price) and price > 0,
        "workload.rate_per_s": MIN_RATE_PER_S <= rate <= MAX_RATE_PER_S,
        "workload.arrival_cv": _finite(cv) and 0 <= cv <= MAX_ARRIVAL_CV,
        "slo.latency_ms": _finite(slo_ms) and slo_ms > 0,
        "slo.percentile": _finite(percentile) and 0 < percentile < 100,
        "limits.max_queue_delay_ms": _finite(delay) and delay >= 0,
        "current_plan.replicas": 1 <= replicas <= MAX_REPLICAS,
    }
    bad = {path for path, ok in expected.items() if not ok}
    # A bad candidate skips the current plan's cross-checks, never its own field checks.
    assert set(violated_fields(request)) == bad


# --- Structural fuzzing: arbitrary requests never raise anything but InvalidInputError. -----

_points = st.lists(
    st.builds(
        lambda b, lat, p99: types_pb2.ProfilePoint(
            batch_size=b, latency_ms=lat, **({} if p99 is None else {"p99_latency_ms": p99})
        ),
        st.integers(min_value=0, max_value=MAX_PROFILE_BATCH_SIZE + 5),
        DOUBLES,
        st.none() | DOUBLES,
    ),
    max_size=6,
)


@st.composite
def _candidates(draw: st.DrawFn) -> types_pb2.Candidate:
    instance = types_pb2.InstanceType(
        name=draw(st.sampled_from(["", "a", "b", "c"])), price_per_hour=draw(DOUBLES)
    )
    cap = draw(st.sampled_from(["none", "max", "memory"]))
    if cap == "max":
        instance.max_batch_size = draw(UINT32)
    elif cap == "memory":
        instance.memory.model_bytes = draw(UINT64)
        instance.memory.bytes_per_item = draw(UINT64)
        instance.memory.device_memory_bytes = draw(UINT64)
    if draw(st.booleans()):
        instance.cold_start_s = draw(DOUBLES)
    candidate = types_pb2.Candidate(instance_type=instance)
    kind = draw(st.sampled_from(["none", "points", "linear"]))
    if kind == "points":
        candidate.profile.points.points.extend(draw(_points))
    elif kind == "linear":
        candidate.profile.linear.base_ms = draw(DOUBLES)
        candidate.profile.linear.per_item_ms = draw(DOUBLES)
        candidate.profile.linear.max_batch_size = draw(UINT32)
    return candidate


@st.composite
def _workloads(draw: st.DrawFn) -> types_pb2.Workload:
    workload = types_pb2.Workload(rate_per_s=draw(DOUBLES))
    if draw(st.booleans()):
        workload.arrival_cv = draw(DOUBLES)
    workload.arrival_times_s.extend(draw(st.lists(DOUBLES, max_size=5)))
    return workload


@st.composite
def _plans(draw: st.DrawFn) -> types_pb2.ServingPlan:
    return types_pb2.ServingPlan(
        instance_type=draw(st.sampled_from(["", "a", "b", "z"])),
        max_batch_size=draw(UINT32),
        max_queue_delay_ms=draw(DOUBLES),
        replicas=draw(UINT32),
    )


@st.composite
def _slos(draw: st.DrawFn) -> types_pb2.Slo:
    slo = types_pb2.Slo(latency_ms=draw(DOUBLES))
    if draw(st.booleans()):
        slo.percentile = draw(DOUBLES)
    return slo


ENUM_NUMBERS = st.integers(min_value=-3, max_value=6)


@st.composite
def _optimize_requests(draw: st.DrawFn) -> servewise_pb2.OptimizeBatchRequest:
    request = servewise_pb2.OptimizeBatchRequest(
        candidates=draw(st.lists(_candidates(), max_size=3)),
        workload=draw(_workloads()),
        slo=draw(_slos()),
        seed=draw(UINT64),
    )
    request.limits.max_replicas = draw(UINT32)
    request.limits.allowed_batch_sizes.extend(draw(st.lists(UINT32, max_size=4)))
    if draw(st.booleans()):
        request.limits.max_queue_delay_ms = draw(DOUBLES)
    if draw(st.booleans()):
        request.current_plan.CopyFrom(draw(_plans()))
    request.service_time_basis = types_pb2.ServiceTimeBasis.ValueType(draw(ENUM_NUMBERS))
    return request


@st.composite
def _simulate_requests(draw: st.DrawFn) -> servewise_pb2.SimulateRequest:
    request = servewise_pb2.SimulateRequest(
        plan=draw(_plans()), workload=draw(_workloads()), num_requests=draw(UINT64)
    )
    if draw(st.booleans()):
        request.candidate.CopyFrom(draw(_candidates()))
    if draw(st.booleans()):
        request.slo.CopyFrom(draw(_slos()))
    request.service_time_basis = types_pb2.ServiceTimeBasis.ValueType(draw(ENUM_NUMBERS))
    request.service_time_distribution = types_pb2.ServiceTimeDistribution.ValueType(
        draw(ENUM_NUMBERS)
    )
    return request


def _check_fields_are_proto_paths(fields: list[str]) -> None:
    for field in fields:
        assert field
        assert " " not in field


@settings(max_examples=300, deadline=None)
@given(request=_optimize_requests())
def test_arbitrary_optimize_requests_only_raise_invalid_input(
    request: servewise_pb2.OptimizeBatchRequest,
) -> None:
    """Random OptimizeBatch requests are converted or rejected with field violations."""
    _check_fields_are_proto_paths(violated_fields(request))


@settings(max_examples=300, deadline=None)
@given(request=_simulate_requests())
def test_arbitrary_simulate_requests_only_raise_invalid_input(
    request: servewise_pb2.SimulateRequest,
) -> None:
    """Random Simulate requests are converted or rejected with field violations."""
    _check_fields_are_proto_paths(violated_fields(request))
