"""Every limit the server enforces, in one place: default, ``servewise serve`` flag, environment
variable and the status a caller sees when it is hit.

Each field of :class:`Limits` is one limit; its flag is ``--`` plus the field name with dashes
(``max_candidates`` -> ``--max-candidates``) and its environment variable ``SERVEWISE_`` plus the
name in capitals (``SERVEWISE_MAX_CANDIDATES``); the CLI builds both from this table, so a new
limit needs no edit there. The work limits (candidates, profile points, trace length, simulated
requests, rate points) are read by the validators through :func:`current`, which the servicer
sets for every RPC (:func:`use`); code outside a server (the CLI's ``--local``, unit tests) sees
:data:`DEFAULT_LIMITS`.

This module is pure (no grpc), so ``servewise serve --help`` stays light.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Final, ParamSpec, TypeVar

__all__ = [
    "DEFAULT_LIMITS",
    "LimitSpec",
    "Limits",
    "current",
    "described",
    "env_var",
    "flag",
    "run_with",
    "specs",
    "use",
]

P = ParamSpec("P")
R = TypeVar("R")

_RESOURCE_EXHAUSTED: Final = "RESOURCE_EXHAUSTED"
_INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"


def _limit(default: float, status: str, meaning: str) -> Any:
    # Any, as dataclasses.field is typed: the declared field type is what mypy checks.
    return field(default=default, metadata={"status": status, "meaning": meaning})


@dataclass(frozen=True)
class Limits:
    """The server's limits; every field > 0 (``__post_init__`` checks)."""

    # Transport.
    max_message_bytes: int = _limit(
        64 * 1024 * 1024,
        _RESOURCE_EXHAUSTED,
        "largest request (and response) message in bytes; gRPC rejects a larger one before "
        "it is decoded",
    )
    # High by default: a load balancer multiplexes many Route calls over one connection.
    max_streams_per_connection: int = _limit(
        1000,
        "queued or UNAVAILABLE",
        "concurrent RPCs on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS); a client "
        "queues further calls until one ends, or, racing the limit, sees UNAVAILABLE "
        "(REFUSED_STREAM, safe to retry); other connections are unaffected",
    )
    # Live control.
    max_control_streams: int = _limit(
        1000,
        _RESOURCE_EXHAUSTED,
        "Control streams open at once across the server; one more is refused at once, open "
        "ones carry on",
    )
    max_samples_per_s: float = _limit(
        1000.0,
        _RESOURCE_EXHAUSTED,
        "samples per second on one Control stream (a token bucket); an excess sample is "
        "answered on the stream by SampleRejected with code RESOURCE_EXHAUSTED and the stream "
        "stays open",
    )
    sample_burst: int = _limit(
        2000,
        _RESOURCE_EXHAUSTED,
        "samples a Control stream may send at once above max-samples-per-s (the bucket's size)",
    )
    max_deployments: int = _limit(
        10_000,
        _RESOURCE_EXHAUSTED,
        "registered deployments; registering a new one beyond it is refused (updates of existing "
        "ones are not)",
    )
    # Work per request.
    max_candidates: int = _limit(
        64, _INVALID_ARGUMENT, "candidates in one request (each deployment's, in PlanResources)"
    )
    max_profile_points: int = _limit(
        4096, _INVALID_ARGUMENT, "measured profile points over all candidates of one request"
    )
    max_arrival_times: int = _limit(
        2_000_000, _INVALID_ARGUMENT, "explicit arrival timestamps (trace length) in a workload"
    )
    max_simulated_requests: int = _limit(5_000_000, _INVALID_ARGUMENT, "Simulate's num_requests")
    max_rate_points: int = _limit(
        200_000, _INVALID_ARGUMENT, "rate-profile points over all deployments of a PlanResources"
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{flag(spec.name)} must be > 0 (got {value!r})")


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class LimitSpec:
    """One row of the limits table: what the CLI and the README show."""

    name: str
    flag: str
    env_var: str
    default: float
    kind: type
    status: str
    meaning: str


def flag(name: str) -> str:
    """``max_candidates`` -> ``--max-candidates``."""
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    """``max_candidates`` -> ``SERVEWISE_MAX_CANDIDATES``."""
    return "SERVEWISE_" + name.upper()


def specs() -> tuple[LimitSpec, ...]:
    """Every limit, in declaration order."""
    return tuple(
        LimitSpec(
            name=f.name,
            flag=flag(f.name),
            env_var=env_var(f.name),
            default=getattr(DEFAULT_LIMITS, f.name),
            kind=type(getattr(DEFAULT_LIMITS, f.name)),
            status=str(f.metadata["status"]),
            meaning=str(f.metadata["meaning"]),
        )
        for f in fields(Limits)
    )


def described(name: str) -> str:
    """How an error message names a limit: ``server limit --max-candidates``."""
    return f"server limit {flag(name)}"


_current: contextvars.ContextVar[Limits] = contextvars.ContextVar(
    "servewise_limits", default=DEFAULT_LIMITS
)


def current() -> Limits:
    """The limits of the RPC being served (``asyncio.to_thread`` carries them into workers)."""
    return _current.get()


def run_with(limits: Limits, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` with ``limits`` current (for ``asyncio.to_thread`` from code,
    such as an async generator, that should not hold a context variable across yields)."""
    with use(limits):
        return fn(*args, **kwargs)


@contextmanager
def use(limits: Limits) -> Iterator[Limits]:
    """Make ``limits`` current for the enclosed code (one RPC)."""
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)
