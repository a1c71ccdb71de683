"""``ServewiseClient``: a synchronous, typed wrapper over the generated ServewiseService stub.

One ``grpc.Channel`` per client (plaintext, TLS or mutual TLS), an optional bearer token sent as
``authorization`` metadata, a deadline on every call, retries with exponential backoff only when
the status is ``UNAVAILABLE`` (the server could not be reached or is restarting) and only for
RPCs that are safe to repeat (the computations and reads; not EvaluateSwitch, which logs a
decision, nor RegisterDeployment, which writes state), and every other failure raised as
:class:`~servewise_client.errors.ServewiseError` with its code and field violations.

Example
-------
>>> from servewise_client import ServewiseClient
>>> with ServewiseClient("localhost:50051") as client:  # doctest: +SKIP
...     response = client.optimize_batch({
...         "candidates": [{"instance_type": {"name": "g5.xlarge", "price_per_hour": 1.006},
...                         "profile": {"linear": {"base_ms": 8, "per_item_ms": 1.5,
...                                                "max_batch_size": 32}}}],
...         "workload": {"rate_per_s": 400},
...         "slo": {"percentile": 99, "latency_ms": 100},
...     })
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import grpc

from servewise.v1 import servewise_pb2, servewise_pb2_grpc
from servewise_client.errors import ServewiseError, from_rpc_error
from servewise_client.specs import optimize_request, simulate_request

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_TIMEOUT_S", "RetryPolicy", "ServewiseClient"]

# RPCs that change server state: never repeated automatically.
_NOT_RETRIED = frozenset({"EvaluateSwitch", "RegisterDeployment"})

DEFAULT_ADDRESS: Final = "localhost:50051"
DEFAULT_TIMEOUT_S: Final = 60.0
# Replayed traces travel as repeated doubles; the server accepts up to 64 MiB as well.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class RetryPolicy:
    """Retries on ``UNAVAILABLE`` only: ``max_attempts`` tries in all, waiting
    ``initial_backoff_s * multiplier**k`` (capped at ``max_backoff_s``, with jitter) between
    them, never past the call's deadline."""

    def __init__(
        self,
        max_attempts: int = 4,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        multiplier: float = 2.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not (initial_backoff_s >= 0 and max_backoff_s >= 0 and multiplier >= 1):
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.multiplier = multiplier

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), jittered to 50-100%."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


def _read_pem(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class ServewiseClient:
    """A connection to a Servewise server.

    Parameters
    ----------
    address:
        ``HOST:PORT`` of the server.
    tls:
        Use TLS (server authenticated with ``ca_cert``, or the system's roots when omitted).
        Implied by ``ca_cert``, ``client_cert`` or ``client_key``.
    ca_cert, client_cert, client_key:
        PEM bytes or paths to PEM files. ``client_cert`` with ``client_key`` is mutual TLS.
    server_name:
        Overrides the name checked against the server's certificate (tests, IP addresses).
    token:
        Sent as ``authorization: Bearer <token>`` on every call. Over plaintext it travels
        unencrypted; use TLS unless a mesh encrypts the hop.
    timeout_s:
        Deadline of each call, covering all of its retries; ``None`` waits forever.
    retry:
        When and how often to retry ``UNAVAILABLE``; ``RetryPolicy(max_attempts=1)`` disables.
    channel:
        An existing channel to use instead of creating one (the client does not close it).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: bool = False,
        ca_cert: str | Path | bytes | None = None,
        client_cert: str | Path | bytes | None = None,
        client_key: str | Path | bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._owns_channel = channel is None
        if channel is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ]
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            if tls or ca_cert is not None or client_cert is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read_pem(ca_cert),
                    private_key=_read_pem(client_key),
                    certificate_chain=_read_pem(client_cert),
                )
                channel = grpc.secure_channel(address, credentials, options=options)
            else:
                channel = grpc.insecure_channel(address, options=options)
        self._channel = channel
        self._stub = servewise_pb2_grpc.ServewiseServiceStub(channel)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (when the client created it). Idempotent."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> ServewiseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel is connected; ``ServewiseError(UNAVAILABLE)`` on timeout."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise ServewiseError(
                grpc.StatusCode.UNAVAILABLE,
                f"no connection to {self.address} within {timeout_s:g} s",
            ) from None

    # --- the RPCs ----------------------------------------------------------------------------

    def optimize_batch(
        self,
        request: servewise_pb2.OptimizeBatchRequest | Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> servewise_pb2.OptimizeBatchResponse:
        """The cheapest plan meeting the SLO. ``request`` may be a plain dict
        (see :func:`servewise_client.specs.optimize_request`)."""
        if not isinstance(request, servewise_pb2.OptimizeBatchRequest):
            request = optimize_request(request)
        return self._unary("OptimizeBatch", self._stub.OptimizeBatch, request, timeout_s)

    def simulate(
        self,
        request: servewise_pb2.SimulateRequest | Mapping[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> servewise_pb2.SimulateResponse:
        """Simulate one plan. ``request`` may be a plain dict
        (see :func:`servewise_client.specs.simulate_request`)."""
        if not isinstance(request, servewise_pb2.SimulateRequest):
            request = simulate_request(request)
        return self._unary("Simulate", self._stub.Simulate, request, timeout_s)

    def select_mode(
        self, request: servewise_pb2.SelectModeRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.SelectModeResponse:
        """Passthrough to ``SelectMode``."""
        return self._unary("SelectMode", self._stub.SelectMode, request, timeout_s)

    def plan_resources(
        self, request: servewise_pb2.PlanResourcesRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.PlanResourcesResponse:
        """Passthrough to ``PlanResources``."""
        return self._unary("PlanResources", self._stub.PlanResources, request, timeout_s)

    def evaluate_switch(
        self, request: servewise_pb2.EvaluateSwitchRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.EvaluateSwitchResponse:
        """Passthrough to ``EvaluateSwitch``."""
        return self._unary("EvaluateSwitch", self._stub.EvaluateSwitch, request, timeout_s)

    def register_deployment(
        self, request: servewise_pb2.RegisterDeploymentRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.RegisterDeploymentResponse:
        """Passthrough to ``RegisterDeployment`` (state_version 0 creates; N updates version N)."""
        return self._unary("RegisterDeployment", self._stub.RegisterDeployment, request, timeout_s)

    def get_deployment(
        self, request: servewise_pb2.GetDeploymentRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.GetDeploymentResponse:
        """Passthrough to ``GetDeployment``."""
        return self._unary("GetDeployment", self._stub.GetDeployment, request, timeout_s)

    def list_deployments(
        self, request: servewise_pb2.ListDeploymentsRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.ListDeploymentsResponse:
        """Passthrough to ``ListDeployments``."""
        return self._unary("ListDeployments", self._stub.ListDeployments, request, timeout_s)

    def route(
        self, request: servewise_pb2.RouteRequest, *, timeout_s: float | None = None
    ) -> servewise_pb2.RouteResponse:
        """Passthrough to ``Route``."""
        return self._unary("Route", self._stub.Route, request, timeout_s)

    def control(
        self,
        requests: Iterable[servewise_pb2.ControlRequest],
        *,
        timeout_s: float | None = None,
    ) -> Iterator[servewise_pb2.ControlResponse]:
        """The ``Control`` stream: responses as they arrive. Never retried (a stream has
        state); ``timeout_s`` defaults to none at all, as a control loop runs indefinitely."""
        try:
            yield from self._stub.Control(
                iter(requests), timeout=timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "Control") from None

    # --- retries -----------------------------------------------------------------------------

    def _unary(
        self,
        method: str,
        call: Callable[..., _Resp],
        request: _Req,
        timeout_s: float | None,
    ) -> _Resp:
        # A write whose response was lost may already have happened: repeating it could log a
        # decision twice, so writes are tried once and the caller decides.
        attempts = 1 if method in _NOT_RETRIED else self.retry.max_attempts
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                return call(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, method)
            if error.code is not grpc.StatusCode.UNAVAILABLE or attempt >= attempts:
                raise error
            pause = self.retry.backoff_s(attempt)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise error
            time.sleep(pause)
