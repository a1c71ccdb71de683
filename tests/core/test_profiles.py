"""Latency profiles: interpolation, validation with field paths, memory caps."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servewise.core.errors import InvalidInputError
from servewise.core.profiles import (
    MAX_PROFILE_BATCH_SIZE,
    NOISE_DIP_FRACTION,
    Candidate,
    InstanceType,
    LatencyProfile,
    build_profile,
    memory_batch_cap,
)

PROFILES_JSON = Path(os.environ.get("SERVEWISE_DATA_DIR", "/work/shared/data")) / "profiles.json"
RESNET50_V100_FP32 = "dle-pt-resnet-50-v1-5-v100-16gb-fp32"
GIB = 1 << 30
MIB = 1 << 20


def published_points(profile_id: str, column: str = "latency_ms_avg") -> list[tuple[int, float]]:
    """(batch_size, latency) points of one published profile in /work/shared/data."""
    entries: list[dict[str, Any]] = json.loads(PROFILES_JSON.read_text())
    entry = next(e for e in entries if e["id"] == profile_id)
    return [(int(p["batch_size"]), float(p[column])) for p in entry["points"]]


def violation_fields(exc: pytest.ExceptionInfo[InvalidInputError]) -> list[str]:
    return [v.field for v in exc.value.violations]


# --- interpolation ------------------------------------------------------------------------------

STEP_PROFILE = LatencyProfile((2, 4, 8), (10.0, 16.0, 40.0))


@pytest.mark.parametrize(
    ("batch_size", "expected_ms"),
    [
        (2, 10.0),
        (3, 13.0),  # halfway between (2, 10) and (4, 16)
        (4, 16.0),
        (5, 22.0),  # a quarter of the way from (4, 16) to (8, 40)
        (7, 34.0),
        (8, 40.0),
    ],
)
def test_service_time_interpolates_linearly_between_points(
    batch_size: int, expected_ms: float
) -> None:
    """Between two measured sizes s(b) lies on the straight line joining them."""
    assert STEP_PROFILE.service_time_ms(batch_size) == pytest.approx(expected_ms, rel=1e-12)


def test_service_time_below_smallest_point_is_the_smallest_points_latency() -> None:
    """A batch smaller than the smallest measured one costs the smallest measured latency."""
    assert STEP_PROFILE.service_time_ms(1) == 10.0


@pytest.mark.parametrize("batch_size", [9, 16, MAX_PROFILE_BATCH_SIZE])
def test_service_time_above_largest_point_is_infinite(batch_size: int) -> None:
    """A batch larger than the largest measured one is infeasible: s(b) = inf."""
    assert STEP_PROFILE.service_time_ms(batch_size) == math.inf


def test_max_batch_size_is_the_largest_measured_point() -> None:
    """The profile's feasible range ends at its largest measured batch."""
    assert STEP_PROFILE.max_batch_size == 8


def test_table_ms_lists_s_of_b_with_zero_at_index_0_and_inf_beyond_the_profile() -> None:
    """table_ms(up_to)[b] is s(b) for b = 0..up_to: 0 at 0, clamped below, inf above."""
    table = STEP_PROFILE.table_ms(10)
    expected = [0.0, 10.0, 10.0, 13.0, 16.0, 22.0, 28.0, 34.0, 40.0, math.inf, math.inf]
    assert table.dtype == np.float64
    assert table.tolist() == pytest.approx(expected, rel=1e-12)


def test_table_ms_agrees_with_service_time_ms() -> None:
    """The simulator's table and the scalar s(b) are the same function for b >= 1."""
    profile = LatencyProfile.linear(4.0, 0.37, 64)
    table = profile.table_ms(70)
    for b in range(1, 71):
        assert table[b] == profile.service_time_ms(b)


@given(
    base_ms=st.floats(0.0, 500.0),
    per_item_ms=st.floats(0.0, 50.0),
    max_batch_size=st.integers(1, 512),
)
@settings(max_examples=200, deadline=None)
def test_linear_profile_is_exact_at_every_batch_size(
    base_ms: float, per_item_ms: float, max_batch_size: int
) -> None:
    """LatencyProfile.linear reproduces base + per_item * b at every b up to B (to rounding)."""
    profile = LatencyProfile.linear(base_ms, per_item_ms, max_batch_size)
    assert profile.max_batch_size == max_batch_size
    sizes = np.arange(1, max_batch_size + 1)
    expected = base_ms + per_item_ms * sizes
    table = profile.table_ms(max_batch_size + 1)
    np.testing.assert_allclose(table[1:-1], expected, rtol=1e-12, atol=1e-12)
    for b in {1, (max_batch_size + 1) // 2, max_batch_size}:
        assert profile.service_time_ms(b) == pytest.approx(
            base_ms + per_item_ms * b, rel=1e-12, abs=1e-12
        )
    assert table[max_batch_size + 1] == math.inf


# --- build_profile validation -------------------------------------------------------------------


def test_build_profile_accepts_valid_points() -> None:
    """Valid points become a profile holding exactly those sizes and latencies, without notes."""
    profile = build_profile([(1, 5.0), (4, 8.0), (16, 20.0)], "x.points")
    assert profile.batch_sizes == (1, 4, 16)
    assert profile.latencies_ms == (5.0, 8.0, 20.0)
    assert profile.notes == ()


@pytest.mark.parametrize(
    ("points", "field"),
    [
        ([(1, 5.0), (1, 6.0)], "x.points[1].batch_size"),  # repeated size
        ([(1, 5.0), (4, 6.0), (2, 7.0)], "x.points[2].batch_size"),  # decreasing size
        ([(0, 5.0)], "x.points[0].batch_size"),
        ([(-3, 5.0)], "x.points[0].batch_size"),
        ([(1, 5.0), (MAX_PROFILE_BATCH_SIZE + 1, 6.0)], "x.points[1].batch_size"),
        ([(1, 5.0), (2, 0.0)], "x.points[1].latency_ms"),
        ([(1, -1.0)], "x.points[0].latency_ms"),
        ([(1, 5.0), (2, math.nan)], "x.points[1].latency_ms"),
        ([(1, math.inf)], "x.points[0].latency_ms"),
        ([(1, -math.inf)], "x.points[0].latency_ms"),
    ],
)
def test_build_profile_rejects_bad_points_naming_the_exact_field(
    points: list[tuple[int, float]], field: str
) -> None:
    """Each invalid point is reported under its own path, e.g. x.points[1].batch_size."""
    with pytest.raises(InvalidInputError) as exc:
        build_profile(points, "x.points")
    assert violation_fields(exc) == [field]
    assert field in str(exc.value)


def test_build_profile_rejects_an_empty_list_under_the_list_path() -> None:
    """No points at all is one violation on the list itself."""
    with pytest.raises(InvalidInputError) as exc:
        build_profile([], "req.profile.points")
    assert violation_fields(exc) == ["req.profile.points"]


def test_build_profile_collects_every_violation_not_only_the_first() -> None:
    """All bad sizes and latencies are reported together, in point order."""
    points = [(0, math.nan), (0, 1.0), (2, -1.0), (2, math.inf), (5, 3.0)]
    with pytest.raises(InvalidInputError) as exc:
        build_profile(points, "p")
    assert violation_fields(exc) == [
        "p[0].batch_size",
        "p[0].latency_ms",
        "p[1].batch_size",
        "p[2].latency_ms",
        "p[3].batch_size",
        "p[3].latency_ms",
    ]
    assert isinstance(exc.value, ValueError)


def test_build_profile_accepts_the_published_resnet50_dip_and_notes_it() -> None:
    """ResNet-50 on V100 FP32 (batch 2 faster than batch 1) is accepted with one noise note."""
    points = published_points(RESNET50_V100_FP32)
    assert points[1][1] < points[0][1]  # the data really has the dip
    profile = build_profile(points, "candidates[0].profile.points")
    assert profile.batch_sizes == tuple(b for b, _ in points)
    assert profile.service_time_ms(2) == 10.24 < profile.service_time_ms(1) == 10.37
    assert len(profile.notes) == 1
    note = profile.notes[0]
    assert "candidates[0].profile.points" in note
    assert "batch 2 measured faster than batch 1" in note
    assert "noise" in note


def test_build_profile_calls_out_a_large_dip_as_a_measurement_problem() -> None:
    """A dip beyond the noise fraction is still accepted, but its note says to check it."""
    drop = 1.0 - 2 * NOISE_DIP_FRACTION
    profile = build_profile([(1, 10.0), (2, 10.0 * drop), (4, 12.0)], "p")
    assert len(profile.notes) == 1
    assert "large dip" in profile.notes[0]
    assert "noise" not in profile.notes[0]


def test_notes_do_not_affect_profile_equality() -> None:
    """Two profiles with the same points are equal whatever their notes say."""
    assert LatencyProfile((1, 2), (2.0, 1.0), ("a dip",)) == LatencyProfile((1, 2), (2.0, 1.0))


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
any_size = st.one_of(st.integers(-5, 40), st.integers(-(2**70), 2**70))


@given(
    points=st.lists(st.tuples(any_size, finite_or_not), max_size=8),
    path=st.text(max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_build_profile_only_ever_raises_invalid_input_error(
    points: list[tuple[int, float]], path: str
) -> None:
    """For any points, build_profile returns a well-formed profile or raises InvalidInputError."""
    error: InvalidInputError | None = None
    try:
        profile = build_profile(points, path)
    except InvalidInputError as exc:
        error = exc
    if error is not None:
        assert error.violations
        assert all(v.field.startswith(path) for v in error.violations)
        return
    sizes = profile.batch_sizes
    assert len(sizes) == len(points) >= 1
    assert sizes[0] >= 1
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert sizes[-1] <= MAX_PROFILE_BATCH_SIZE
    assert all(math.isfinite(v) and v > 0 for v in profile.latencies_ms)
    dips = sum(b < a for a, b in itertools.pairwise(profile.latencies_ms))
    assert len(profile.notes) == dips


# --- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_bytes", "bytes_per_item", "device_bytes", "expected"),
    [
        (4 * GIB, 100 * MIB, 16 * GIB, 122),  # 12 GiB free / 100 MiB = 122.88 -> 122
        (4 * GIB, 1 * GIB, 16 * GIB, 12),  # exact fit
        (0, 3, 10, 3),
        (16 * GIB, 1, 16 * GIB, 0),  # the model fills the device
        (17 * GIB, 1, 16 * GIB, 0),  # the model does not fit
        (1, 0, 16 * GIB, 0),  # nonsensical per-item size
        (1, -5, 16 * GIB, 0),
        (10 * GIB, 7 * GIB, 16 * GIB, 0),  # model fits, not even one item does
    ],
)
def test_memory_batch_cap_is_free_memory_over_bytes_per_item(
    model_bytes: int, bytes_per_item: int, device_bytes: int, expected: int
) -> None:
    """The cap is floor((device - model) / per_item), and 0 when nothing fits."""
    assert memory_batch_cap(model_bytes, bytes_per_item, device_bytes) == expected


@pytest.mark.parametrize(
    ("memory_cap", "expected"), [(None, 256), (64, 64), (256, 256), (1000, 256), (1, 1)]
)
def test_candidate_max_batch_size_is_profile_range_capped_by_memory(
    memory_cap: int | None, expected: int
) -> None:
    """A candidate's largest feasible batch is min(memory cap, largest measured batch)."""
    profile = build_profile(published_points(RESNET50_V100_FP32), "p")
    candidate = Candidate(InstanceType("p3.2xlarge", 3.06, max_batch_size=memory_cap), profile)
    assert candidate.max_batch_size == expected
