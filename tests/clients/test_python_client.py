"""ServewiseClient against the real server: calls, errors, retries, deadlines, token and TLS."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from servewise_client import (
    FieldViolation,
    RetryPolicy,
    ServewiseClient,
    ServewiseError,
    optimize_request,
)

from servewise.v1 import servewise_pb2, types_pb2

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_optimize_batch_from_a_dict(server_address: str, linear_spec: dict[str, Any]) -> None:
    """A plain dict becomes an OptimizeBatchRequest and the typed response carries the plan."""
    with ServewiseClient(server_address) as client:
        response = client.optimize_batch(linear_spec)
    assert isinstance(response, servewise_pb2.OptimizeBatchResponse)
    assert response.feasible
    plan = response.recommended.plan
    assert plan.instance_type == "g5.xlarge"
    assert 1 <= plan.max_batch_size <= 32
    assert response.recommended.predicted_latency.p99_ms <= 100
    assert response.frontier


def test_optimize_batch_accepts_a_message(server_address: str, linear_spec: dict[str, Any]) -> None:
    """A ready-made request message is sent as is."""
    request = optimize_request(linear_spec)
    with ServewiseClient(server_address) as client:
        assert client.optimize_batch(request).feasible


def test_simulate(server_address: str) -> None:
    """Simulate returns the simulated latency and whether the SLO was met."""
    spec = {
        "candidate": {
            "instance_type": {"name": "cpu", "price_per_hour": 0.1},
            "profile": [
                {"batch_size": 1, "latency_ms": 2.0},
                {"batch_size": 8, "latency_ms": 6.0, "p99_latency_ms": 7.0},
            ],
        },
        "plan": {"max_batch_size": 8, "max_queue_delay_ms": 2, "replicas": 2},
        "workload": {"rate_per_s": 500},
        "slo": {"latency_ms": 50},
        "num_requests": 5000,
    }
    with ServewiseClient(server_address) as client:
        response = client.simulate(spec)
    assert response.result.requests_simulated == 5000
    assert response.meets_slo
    assert 0 < response.result.latency.p50_ms <= response.result.latency.p99_ms


def test_invalid_request_raises_with_field_violations(
    server_address: str, linear_spec: dict[str, Any]
) -> None:
    """INVALID_ARGUMENT arrives as ServewiseError with every BadRequest field violation."""
    linear_spec["workload"]["rate_per_s"] = -1
    linear_spec["slo"]["latency_ms"] = 0
    with ServewiseClient(server_address) as client, pytest.raises(ServewiseError) as caught:
        client.optimize_batch(linear_spec)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.method == "OptimizeBatch"
    assert [v.field for v in error.field_violations] == ["workload.rate_per_s", "slo.latency_ms"]
    assert all(isinstance(v, FieldViolation) and v.description for v in error.field_violations)
    line = error.one_line()
    assert "\n" not in line
    assert line.startswith("OptimizeBatch: INVALID_ARGUMENT: invalid request: workload.rate_per_s")
    assert str(error) == line


def test_passthrough_errors_are_raised_not_retried(
    recording_server: Callable[..., Any],
) -> None:
    """Passthrough methods reach the server; their errors are raised at once (no retry)."""
    with recording_server() as (address, _), ServewiseClient(address, retry=FAST_RETRY) as client:
        # The deployment RPCs are implemented: an unknown deployment is NOT_FOUND, not retried.
        for call, request in [
            (client.route, servewise_pb2.RouteRequest(deployment_id="d", request_key="k")),
            (
                client.evaluate_switch,
                servewise_pb2.EvaluateSwitchRequest(
                    deployment_id="d", samples=[servewise_pb2.MetricSample(rate_per_s=1.0)]
                ),
            ),
            (client.get_deployment, servewise_pb2.GetDeploymentRequest(deployment_id="d")),
        ]:
            with pytest.raises(ServewiseError) as caught:
                call(request)  # type: ignore[operator]
            assert caught.value.code is grpc.StatusCode.NOT_FOUND
        assert not client.list_deployments(servewise_pb2.ListDeploymentsRequest()).deployments
        # Control is implemented: a sample for an unknown deployment is rejected on the stream.
        sample = servewise_pb2.MetricSample(timestamp_s=1.0, rate_per_s=1.0)
        events = list(
            client.control(iter([servewise_pb2.ControlRequest(deployment_id="d", sample=sample)]))
        )
        assert [e.sample_rejected.unknown_deployment for e in events] == [True]
        # PlanResources is implemented: an empty request is an error naming the missing field.
        with pytest.raises(ServewiseError) as caught:
            client.plan_resources(servewise_pb2.PlanResourcesRequest())
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_retries_unavailable_then_succeeds(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any]
) -> None:
    """Two UNAVAILABLE answers are retried; the third attempt's answer is returned."""
    failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with (
        recording_server(failures=failures) as (address, servicer),
        ServewiseClient(address, retry=FAST_RETRY) as client,
    ):
        assert client.optimize_batch(linear_spec).feasible
    assert servicer.calls == 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ],
)
def test_other_codes_are_not_retried(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any], code: grpc.StatusCode
) -> None:
    """Only UNAVAILABLE is retried: any other failure is raised after one attempt."""
    with (
        recording_server(failures=[code]) as (address, servicer),
        ServewiseClient(address, retry=FAST_RETRY) as client,
        pytest.raises(ServewiseError) as caught,
    ):
        client.optimize_batch(linear_spec)
    assert caught.value.code is code
    assert servicer.calls == 1


def test_retries_stop_after_max_attempts(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any]
) -> None:
    """A server that stays UNAVAILABLE is tried max_attempts times, then the error is raised."""
    failures = [grpc.StatusCode.UNAVAILABLE] * 10
    with (
        recording_server(failures=failures) as (address, servicer),
        ServewiseClient(address, retry=RetryPolicy(3, 0.01, 0.02)) as client,
        pytest.raises(ServewiseError) as caught,
    ):
        client.optimize_batch(linear_spec)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 3


def test_unreachable_server_is_unavailable_within_the_deadline(
    free_port: Callable[[], int], linear_spec: dict[str, Any]
) -> None:
    """No server at the address: UNAVAILABLE after the retries, never past the deadline."""
    start = time.monotonic()
    with (
        ServewiseClient(f"127.0.0.1:{free_port()}", timeout_s=2.0, retry=FAST_RETRY) as client,
        pytest.raises(ServewiseError) as caught,
    ):
        client.optimize_batch(linear_spec)
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - start < 3.0


def test_deadline_exceeded(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any]
) -> None:
    """A call slower than timeout_s fails with DEADLINE_EXCEEDED (and is not retried)."""
    with (
        recording_server(delay_s=1.0) as (address, servicer),
        ServewiseClient(address, timeout_s=0.2, retry=FAST_RETRY) as client,
        pytest.raises(ServewiseError) as caught,
    ):
        client.optimize_batch(linear_spec)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.calls == 1


def test_bearer_token_is_sent(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any]
) -> None:
    """token= travels as `authorization: Bearer <token>` on every call."""
    with (
        recording_server() as (address, servicer),
        ServewiseClient(address, token="s3cret") as client,  # noqa: S106 - a test token
    ):
        client.optimize_batch(linear_spec)
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_no_token_no_authorization(
    recording_server: Callable[..., Any], linear_spec: dict[str, Any]
) -> None:
    """Without a token no authorization metadata is sent."""
    with recording_server() as (address, servicer), ServewiseClient(address) as client:
        client.optimize_batch(linear_spec)
    assert "authorization" not in servicer.metadata[0]


def test_wait_ready(server_address: str, free_port: Callable[[], int]) -> None:
    """wait_ready returns once connected, and raises UNAVAILABLE when nothing answers."""
    with ServewiseClient(server_address) as client:
        client.wait_ready(5.0)
    with ServewiseClient(f"127.0.0.1:{free_port()}") as client, pytest.raises(ServewiseError) as e:
        client.wait_ready(0.2)
    assert e.value.code is grpc.StatusCode.UNAVAILABLE


def test_bad_options_are_value_errors() -> None:
    """Options that cannot work fail at construction, naming the option."""
    with pytest.raises(ValueError, match="timeout_s"):
        ServewiseClient("localhost:1", timeout_s=0)
    with pytest.raises(ValueError, match="client_key"):
        ServewiseClient("localhost:1", client_cert=b"x")
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_given_channel_is_used_and_left_open(
    server_address: str, linear_spec: dict[str, Any]
) -> None:
    """A caller's channel is used as is and not closed by the client."""
    channel = grpc.insecure_channel(server_address)
    with ServewiseClient(channel=channel) as client:
        assert client.optimize_batch(linear_spec).feasible
    with ServewiseClient(channel=channel) as client:  # still open
        assert client.optimize_batch(linear_spec).feasible
    channel.close()


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=servewise.test",
            "-addext", "subjectAltName=DNS:servewise.test",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key.read_bytes(), cert.read_bytes()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(tmp_path: Path, linear_spec: dict[str, Any], tls_server: Callable[..., Any]) -> None:
    """ca_cert (a path) and server_name reach a TLS server; plaintext to it fails."""
    key, cert = _self_signed(tmp_path)
    with tls_server(key, cert) as port:
        address = f"127.0.0.1:{port}"
        with ServewiseClient(
            address, ca_cert=tmp_path / "cert.pem", server_name="servewise.test"
        ) as client:
            assert client.optimize_batch(linear_spec).feasible
        with (
            ServewiseClient(address, timeout_s=1.0, retry=FAST_RETRY) as plain,
            pytest.raises(ServewiseError) as caught,
        ):
            plain.optimize_batch(linear_spec)
        assert caught.value.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


def test_error_from_a_status_without_details() -> None:
    """A status with no BadRequest details has no field violations and keeps its message."""
    error = ServewiseError(grpc.StatusCode.INTERNAL, "internal error;\n  logged", method="Simulate")
    assert error.field_violations == ()
    assert error.one_line() == "Simulate: INTERNAL: internal error; logged"


def test_profile_point_round_trip_to_pb() -> None:
    """A profile point becomes a ProfilePoint message, p99 only when measured."""
    from servewise_client import ProfilePoint  # noqa: PLC0415

    with_p99 = ProfilePoint(4, 2.5, 3.0).to_pb()
    assert with_p99 == types_pb2.ProfilePoint(batch_size=4, latency_ms=2.5, p99_latency_ms=3.0)
    assert not ProfilePoint(4, 2.5).to_pb().HasField("p99_latency_ms")


def test_writes_are_not_retried_on_unavailable(recording_server: Callable[..., Any]) -> None:
    """EvaluateSwitch logs a decision: an UNAVAILABLE answer may follow a logged decision, so
    the client raises it after one attempt instead of risking a duplicate."""
    with (
        recording_server(failures=[grpc.StatusCode.UNAVAILABLE]) as (address, servicer),
        ServewiseClient(address, retry=FAST_RETRY) as client,
        pytest.raises(ServewiseError) as caught,
    ):
        client.evaluate_switch(servewise_pb2.EvaluateSwitchRequest(deployment_id="d"))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1
