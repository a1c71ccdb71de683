"""Profile files: a model's measured latency (and memory) against batch size.

``servewise profile`` writes them; ``servewise plan --profile`` and request specs
(``profile_file:``) read them. JSON or YAML (by extension; YAML when unsure), either

- a mapping with ``points`` and optional metadata, as ``servewise profile`` writes::

      format: servewise-profile/1
      model: mlp.onnx
      runtime: onnxruntime 1.31.1
      points:
        - {batch_size: 1, latency_ms: 0.21, p99_latency_ms: 0.35, memory_bytes: 131072}
        - {batch_size: 2, latency_ms: 0.24, p99_latency_ms: 0.41, memory_bytes: 262144}
      memory_model: {model_bytes: 52428800, bytes_per_item: 131072}

- or just the list of points (``[{"batch_size": 1, "latency_ms": 0.21}, ...]``).

``latency_ms`` is the typical (median) latency of one batch; ``p99_latency_ms`` and
``memory_bytes`` are optional.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from servewise.v1 import types_pb2

__all__ = [
    "FORMAT",
    "MemoryFit",
    "ProfileFile",
    "ProfileFileError",
    "ProfilePoint",
    "dump_profile",
    "parse_profile",
    "read_profile",
    "write_profile",
]

FORMAT: Final = "servewise-profile/1"
PLANNING_KEYS: Final = frozenset({"batch_size", "latency_ms", "p99_latency_ms", "memory_bytes"})
# Per-point figures besides the planning ones that a profile may carry.
EXTRA_KEYS: Final = frozenset(
    {"mean_ms", "min_ms", "max_ms", "peak_rss_bytes", "throughput_per_s", "runs"}
)


class ProfileFileError(ValueError):
    """A profile file that cannot be read or does not describe a profile."""


@dataclass(frozen=True)
class ProfilePoint:
    """One batch size: typical (median) and p99 latency of a batch, and its memory."""

    batch_size: int
    latency_ms: float
    p99_latency_ms: float | None = None
    memory_bytes: int | None = None
    # Further figures a measurement may record (see EXTRA_KEYS); kept for people, not planning.
    extra: Mapping[str, float] = field(default_factory=dict)

    def to_pb(self) -> types_pb2.ProfilePoint:
        point = types_pb2.ProfilePoint(batch_size=self.batch_size, latency_ms=self.latency_ms)
        if self.p99_latency_ms is not None:
            point.p99_latency_ms = self.p99_latency_ms
        return point


@dataclass(frozen=True)
class MemoryFit:
    """memory(b) ~= model_bytes + bytes_per_item * b, fitted to the measured points."""

    model_bytes: int
    bytes_per_item: int

    def memory_model(self, device_memory_bytes: int) -> types_pb2.MemoryModel:
        """The API's memory model for an instance with ``device_memory_bytes``."""
        return types_pb2.MemoryModel(
            model_bytes=self.model_bytes,
            bytes_per_item=max(self.bytes_per_item, 1),
            device_memory_bytes=device_memory_bytes,
        )


@dataclass(frozen=True)
class ProfileFile:
    """A profile: points sorted by batch size, an optional memory fit, and free-form metadata."""

    points: tuple[ProfilePoint, ...]
    memory: MemoryFit | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def latency_profile(self) -> types_pb2.LatencyProfile:
        """The API's ``LatencyProfile`` (measured points)."""
        return types_pb2.LatencyProfile(
            points=types_pb2.PointsProfile(points=[p.to_pb() for p in self.points])
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, **self.metadata}
        out["points"] = [
            {
                k: v
                for k, v in (
                    ("batch_size", p.batch_size),
                    ("latency_ms", p.latency_ms),
                    ("p99_latency_ms", p.p99_latency_ms),
                    ("memory_bytes", p.memory_bytes),
                    *p.extra.items(),
                )
                if v is not None
            }
            for p in self.points
        ]
        if self.memory is not None:
            out["memory_model"] = {
                "model_bytes": self.memory.model_bytes,
                "bytes_per_item": self.memory.bytes_per_item,
            }
        return out


def _number(value: Any, where: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileFileError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ProfileFileError(f"{where} must be finite, got {value!r}")
    if integer and value != int(value):
        raise ProfileFileError(f"{where} must be a whole number, got {value!r}")
    return float(value)


def _point(item: Any, where: str) -> ProfilePoint:
    if not isinstance(item, Mapping):
        raise ProfileFileError(f"{where} must be a mapping with batch_size and latency_ms")
    unknown = set(item) - PLANNING_KEYS - EXTRA_KEYS
    if unknown:
        raise ProfileFileError(f"{where} has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    for key in ("batch_size", "latency_ms"):
        if key not in item:
            raise ProfileFileError(f"{where}.{key} is missing")
    p99 = item.get("p99_latency_ms")
    memory = item.get("memory_bytes")
    return ProfilePoint(
        batch_size=int(_number(item["batch_size"], f"{where}.batch_size", integer=True)),
        latency_ms=_number(item["latency_ms"], f"{where}.latency_ms"),
        p99_latency_ms=None if p99 is None else _number(p99, f"{where}.p99_latency_ms"),
        memory_bytes=(
            None if memory is None else int(_number(memory, f"{where}.memory_bytes", integer=True))
        ),
        extra={str(k): _number(v, f"{where}.{k}") for k, v in item.items() if k in EXTRA_KEYS},
    )


def parse_profile(data: Any, source: str = "profile") -> ProfileFile:
    """A :class:`ProfileFile` from parsed JSON/YAML (a mapping with ``points`` or a list).

    Only the shape is checked here (numbers where numbers belong); the server validates the
    values (increasing batch sizes, positive latencies) and names the offending field.
    """
    metadata: dict[str, Any] = {}
    memory: MemoryFit | None = None
    if isinstance(data, Mapping):
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise ProfileFileError(f"{source}: unsupported format {fmt!r} (expected {FORMAT!r})")
        if "points" not in data:
            raise ProfileFileError(f"{source}: no 'points'")
        raw_points = data["points"]
        metadata = {str(k): v for k, v in data.items() if k not in ("format", "points")}
        raw_memory = metadata.pop("memory_model", None)
        if raw_memory is not None:
            if not isinstance(raw_memory, Mapping):
                raise ProfileFileError(f"{source}: memory_model must be a mapping")
            memory = MemoryFit(
                model_bytes=int(
                    _number(raw_memory.get("model_bytes"), "memory_model.model_bytes", integer=True)
                ),
                bytes_per_item=int(
                    _number(
                        raw_memory.get("bytes_per_item"),
                        "memory_model.bytes_per_item",
                        integer=True,
                    )
                ),
            )
    else:
        raw_points = data
    if not isinstance(raw_points, Sequence) or isinstance(raw_points, str) or not raw_points:
        raise ProfileFileError(f"{source}: points must be a non-empty list")
    points = tuple(_point(item, f"{source}: points[{i}]") for i, item in enumerate(raw_points))
    return ProfileFile(points=points, memory=memory, metadata=metadata)


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def read_profile(path: str | Path) -> ProfileFile:
    """Read a profile file (JSON when the name ends in ``.json``, else YAML, which also reads
    JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileFileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if _is_json(path) else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileFileError(
            f"{path}: not valid {'JSON' if _is_json(path) else 'YAML'}: {first}"
        ) from None
    return parse_profile(data, str(path))


def dump_profile(profile: ProfileFile, *, as_json: bool) -> str:
    """The file text for ``profile`` (JSON or YAML)."""
    data = profile.to_dict()
    if as_json:
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def write_profile(path: str | Path, profile: ProfileFile) -> None:
    """Write ``profile`` to ``path``: JSON for ``.json``, YAML otherwise."""
    path = Path(path)
    path.write_text(dump_profile(profile, as_json=_is_json(path)), encoding="utf-8")
