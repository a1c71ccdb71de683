"""Requests from plain dicts, YAML or JSON: what a person writes, turned into messages.

A spec uses the proto field names (``protos/servewise/v1``; lowerCamelCase also works) with a
few shorthands, so a request file reads naturally::

    candidates:
      - instance_type: {name: g5.xlarge, price_per_hour: 1.006, max_batch_size: 32}
        profile: {linear: {base_ms: 8, per_item_ms: 1.5}}
      - instance_type: {name: c7i.2xlarge, price_per_hour: 0.357}
        profile:                         # a list of points (no PointsProfile wrapper needed)
          - {batch_size: 1, latency_ms: 21}
          - {batch_size: 8, latency_ms: 60, p99_latency_ms: 71}
      - instance_type: {name: cpu, price_per_hour: 0.10, memory: {device_memory_bytes: 8e9}}
        profile_file: mlp-profile.yaml   # written by `servewise profile`; relative to the spec;
                                         # its memory fit fills memory.model_bytes/bytes_per_item
    workload: {rate_per_s: 400, arrival_cv: 1.0}
    slo: {percentile: 99, latency_ms: 100}
    limits: {max_replicas: 32, allowed_batch_sizes: [1, 8, 16, 32], max_queue_delay_ms: 20}
    current_plan: {instance_type: g5.xlarge, max_batch_size: 1, max_queue_delay_ms: 0, replicas: 8}
    service_time_basis: p99              # or typical (enum names work too)

Shape errors (unknown fields, wrong types) raise :class:`SpecError` naming the field; value
errors (a negative rate, decreasing batch sizes) are the server's to report, as
``INVALID_ARGUMENT`` with field violations, so every client gets the same checks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from servewise.v1 import servewise_pb2, types_pb2
from servewise_client.profile_file import ProfileFileError, read_profile

__all__ = [
    "SpecError",
    "candidate_pb",
    "load_spec",
    "optimize_request",
    "simulate_request",
]

_M = TypeVar("_M", bound=Message)

_BASIS: Final = {
    "typical": "SERVICE_TIME_BASIS_TYPICAL",
    "p99": "SERVICE_TIME_BASIS_P99",
}
_DISTRIBUTION: Final = {
    "deterministic": "SERVICE_TIME_DISTRIBUTION_DETERMINISTIC",
    "exponential": "SERVICE_TIME_DISTRIBUTION_EXPONENTIAL",
}
# Keys of an OptimizeBatch spec that a Simulate request built from it leaves out.
_OPTIMIZE_ONLY: Final = ("candidates", "limits", "current_plan")


class SpecError(ValueError):
    """A spec whose shape does not match the request message (or a file that cannot be read)."""


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a request spec: JSON when the name ends in ``.json``, YAML otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {first}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return data


def _enum(value: Any, shorthands: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str) and value.lower() in shorthands:
        return shorthands[value.lower()]
    if isinstance(value, str) and value.upper() in shorthands.values():
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise SpecError(f"{where}: expected one of {', '.join(shorthands)}, got {value!r}")


def _candidate(raw: Any, where: str, base_dir: Path | None) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping with instance_type and profile")
    item = dict(raw)
    profile = item.get("profile")
    profile_file = item.pop("profile_file", None)
    if profile_file is not None:
        if profile is not None:
            raise SpecError(f"{where}: give profile or profile_file, not both")
        path = Path(str(profile_file))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            measured = read_profile(path)
        except ProfileFileError as exc:
            raise SpecError(f"{where}.profile_file: {exc}") from None
        item["profile"] = json_format.MessageToDict(
            measured.latency_profile(), preserving_proto_field_name=True
        )
        instance = item.get("instance_type")
        memory = instance.get("memory") if isinstance(instance, Mapping) else None
        if isinstance(memory, Mapping) and measured.memory is not None:
            memory = {
                "model_bytes": measured.memory.model_bytes,
                "bytes_per_item": max(measured.memory.bytes_per_item, 1),
                **memory,
            }
            item["instance_type"] = {**dict(instance or {}), "memory": memory}
    elif isinstance(profile, list):
        item["profile"] = {"points": {"points": profile}}
    elif isinstance(profile, Mapping) and isinstance(profile.get("points"), list):
        item["profile"] = {**profile, "points": {"points": profile["points"]}}
    return item


def _normalise(spec: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    out = copy.deepcopy(dict(spec))
    if "candidates" in out:
        if not isinstance(out["candidates"], list):
            raise SpecError("candidates: expected a list")
        out["candidates"] = [
            _candidate(c, f"candidates[{i}]", base_dir) for i, c in enumerate(out["candidates"])
        ]
    if "candidate" in out:
        out["candidate"] = _candidate(out["candidate"], "candidate", base_dir)
    if "service_time_basis" in out:
        out["service_time_basis"] = _enum(out["service_time_basis"], _BASIS, "service_time_basis")
    if "service_time_distribution" in out:
        out["service_time_distribution"] = _enum(
            out["service_time_distribution"], _DISTRIBUTION, "service_time_distribution"
        )
    return out


def _parse(data: Mapping[str, Any], message: _M) -> _M:
    try:
        json_format.ParseDict(dict(data), message)
    except json_format.ParseError as exc:
        raise SpecError(str(exc).splitlines()[0]) from None
    return message


def optimize_request(
    spec: Mapping[str, Any], *, base_dir: str | Path | None = None
) -> servewise_pb2.OptimizeBatchRequest:
    """An ``OptimizeBatchRequest`` from a spec (see the module docstring).

    ``base_dir`` resolves relative ``profile_file`` paths (the spec file's folder).
    """
    data = _normalise(spec, None if base_dir is None else Path(base_dir))
    return _parse(data, servewise_pb2.OptimizeBatchRequest())


def simulate_request(
    spec: Mapping[str, Any], *, base_dir: str | Path | None = None
) -> servewise_pb2.SimulateRequest:
    """A ``SimulateRequest`` from a spec with ``candidate``, ``plan``, ``workload`` (and
    optionally ``slo``, ``num_requests``, ``seed``, ``service_time_basis``,
    ``service_time_distribution``).

    An OptimizeBatch spec works too: its ``candidates`` supply the ``candidate`` (the one
    named by ``plan.instance_type``, or the only one), and ``limits`` and ``current_plan`` are
    left out, so one request file serves ``servewise plan`` and ``servewise simulate``.
    """
    data = _normalise(spec, None if base_dir is None else Path(base_dir))
    if "candidates" in data:
        if "candidate" in data:
            raise SpecError("give candidate or candidates, not both")
        candidates = data["candidates"]
        plan = data.get("plan")
        wanted = plan.get("instance_type") if isinstance(plan, Mapping) else None
        if wanted:
            named = [c for c in candidates if (c.get("instance_type") or {}).get("name") == wanted]
            if len(named) != 1:
                raise SpecError(f"plan.instance_type {wanted!r} names no single candidate")
            data["candidate"] = named[0]
        elif len(candidates) == 1:
            data["candidate"] = candidates[0]
        else:
            raise SpecError("several candidates: set plan.instance_type to choose one")
        for key in _OPTIMIZE_ONLY:
            data.pop(key, None)
    return _parse(data, servewise_pb2.SimulateRequest())


def candidate_pb(
    name: str,
    price_per_hour: float,
    profile: types_pb2.LatencyProfile,
    *,
    max_batch_size: int | None = None,
    memory: types_pb2.MemoryModel | None = None,
    cold_start_s: float | None = None,
) -> types_pb2.Candidate:
    """A ``Candidate`` from its parts (``max_batch_size`` and ``memory`` are alternatives)."""
    if max_batch_size is not None and memory is not None:
        raise ValueError("give max_batch_size or memory, not both")
    instance = types_pb2.InstanceType(name=name, price_per_hour=price_per_hour)
    if max_batch_size is not None:
        instance.max_batch_size = max_batch_size
    if memory is not None:
        instance.memory.CopyFrom(memory)
    if cold_start_s is not None:
        instance.cold_start_s = cold_start_s
    return types_pb2.Candidate(instance_type=instance, profile=profile)
