"""TLS, mutual TLS and bearer tokens on a real server, with certificates made at test time.

In-process servers (servewise.server.start_server with an AuthConfig) cover the decisions:
plaintext against TLS, mutual TLS with no, a foreign or the right client certificate, missing,
malformed, unknown, read and write tokens on unary calls and the Control stream, and health and
reflection staying open. One ``servewise serve`` subprocess checks the flags, the environment
variable and that the JSON log never carries a token.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servewise_client import ServewiseClient, ServewiseError

from servewise.auth import AuthConfig, AuthConfigError, TlsFiles, parse_tokens
from servewise.cli import main
from servewise.server import RunningServer, start_server
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2

READ_TOKEN = "read-" + "R7q2xK9vLm3nP8sT"
WRITE_TOKEN = "write-" + "W4hJ6yB1cZ5dF0gA"
ENV_TOKEN = "env-" + "E2uV8iO3pQ7rS1tY"
SERVICE = "servewise.v1.ServewiseService"

# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost/127.0.0.1, a client certificate the
    CA signed, and a client certificate from another CA the server does not trust."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_cert: Path
    foreign_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: ExtendedKeyUsageOID | None = None,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed CA when ``issuer`` is None."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Any = None) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Fresh certificates for this module's servers and clients."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, foreign_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _issue("servewise test CA", ca_key, None)
    foreign_ca = _issue("someone else's CA", foreign_ca_key, None)
    _write(directory, "ca", ca)
    for stem, issuer, usage in (
        ("server", (ca, ca_key), ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", (ca, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH),
        ("foreign", (foreign_ca, foreign_ca_key), ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(directory, stem, _issue(f"servewise test {stem}", key, issuer, usage=usage), key)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        foreign_cert=directory / "foreign.pem",
        foreign_key=directory / "foreign.key",
    )


# --- servers and channels --------------------------------------------------------------------

TOKENS = parse_tokens(f"read {READ_TOKEN}\nwrite {WRITE_TOKEN}", "test")


@pytest_asyncio.fixture
async def tls_server(pki: Pki) -> AsyncIterator[RunningServer]:
    """TLS without client certificates, no tokens."""
    running = await start_server(
        "127.0.0.1:0", None, auth=AuthConfig(tls=TlsFiles(pki.server_cert, pki.server_key))
    )
    try:
        yield running
    finally:
        await running.stop(None)


@pytest_asyncio.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[RunningServer]:
    """Mutual TLS (client CA = the test CA) and read/write tokens."""
    tls = TlsFiles(pki.server_cert, pki.server_key, pki.ca)
    running = await start_server("127.0.0.1:0", None, auth=AuthConfig(tls=tls, tokens=TOKENS))
    try:
        yield running
    finally:
        await running.stop(None)


@pytest_asyncio.fixture
async def token_channel() -> AsyncIterator[grpc.aio.Channel]:
    """A plaintext channel to a server with read/write tokens (the in-memory store)."""
    running = await start_server("127.0.0.1:0", None, auth=AuthConfig(tokens=TOKENS))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(None)


def _secure(
    pki: Pki, port: int, *, root: Path | None = None, client: str | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca).read_bytes(),
        private_key=(pki.__dict__[f"{client}_key"]).read_bytes() if client else None,
        certificate_chain=(pki.__dict__[f"{client}_cert"]).read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
    )
    return int(response.status)


async def _code(call: Any) -> grpc.StatusCode:
    """The status code of a unary call (OK when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# --- TLS and mutual TLS ----------------------------------------------------------------------


async def test_plaintext_client_is_refused_by_a_tls_server(
    pki: Pki, tls_server: RunningServer
) -> None:
    """A plaintext channel never completes a call on the TLS port; a client trusting the CA
    does, and one trusting another CA does not."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    async with _secure(pki, tls_server.port) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        assert await _code(stub.ListDeployments(servewise_pb2.ListDeploymentsRequest())) == (
            grpc.StatusCode.OK
        )


async def test_a_client_distrusting_the_server_certificate_fails(
    pki: Pki, tls_server: RunningServer
) -> None:
    """Server authentication is real: a client whose roots do not include the server's CA
    cannot connect."""
    async with _secure(pki, tls_server.port, root=pki.foreign_cert) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", [None, "foreign"])
async def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    pki: Pki, mtls_server: RunningServer, client: str | None
) -> None:
    """With a client CA, no client certificate, or one another CA signed, fails the handshake:
    not even health answers."""
    async with _secure(pki, mtls_server.port, client=client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_with_the_right_certificate_and_token(
    pki: Pki, mtls_server: RunningServer
) -> None:
    """The CA's client certificate connects; tokens still apply on top of mutual TLS."""
    async with _secure(pki, mtls_server.port, client="client") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = servewise_pb2_grpc.ServewiseServiceStub(channel)
        request = servewise_pb2.ListDeploymentsRequest()
        assert await _code(stub.ListDeployments(request)) is grpc.StatusCode.UNAUTHENTICATED
        assert await _code(stub.ListDeployments(request, metadata=_bearer(READ_TOKEN))) is (
            grpc.StatusCode.OK
        )


async def test_python_client_options_reach_a_secured_server(
    pki: Pki, mtls_server: RunningServer
) -> None:
    """ServewiseClient's ca_cert, client_cert/client_key and token options talk to a mutual TLS
    server with tokens; the same client without the token gets UNAUTHENTICATED."""

    def calls() -> tuple[int, grpc.StatusCode]:
        options: dict[str, Any] = {
            "ca_cert": pki.ca,
            "client_cert": pki.client_cert,
            "client_key": pki.client_key,
        }
        with ServewiseClient(f"localhost:{mtls_server.port}", token=READ_TOKEN, **options) as c:
            listed = c.list_deployments(servewise_pb2.ListDeploymentsRequest(), timeout_s=5)
        with ServewiseClient(f"localhost:{mtls_server.port}", **options) as anonymous:
            try:
                anonymous.list_deployments(servewise_pb2.ListDeploymentsRequest(), timeout_s=5)
            except ServewiseError as exc:
                return len(listed.deployments), exc.code
        raise AssertionError("a call without a token succeeded")

    assert await asyncio.to_thread(calls) == (0, grpc.StatusCode.UNAUTHENTICATED)


async def test_bad_tls_files_fail_at_start_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    """A key that does not belong to the certificate, or a client CA that is not PEM, stops
    start-up with an error naming the file, before anything listens."""
    with pytest.raises(AuthConfigError, match=r"cannot use TLS certificate .*server\.pem"):
        await start_server(
            "127.0.0.1:0", None, auth=AuthConfig(tls=TlsFiles(pki.server_cert, pki.client_key))
        )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(AuthConfigError, match=r"cannot use client CA .*junk\.pem"):
        await start_server(
            "127.0.0.1:0",
            None,
            auth=AuthConfig(tls=TlsFiles(pki.server_cert, pki.server_key, junk)),
        )


# --- tokens and scopes -----------------------------------------------------------------------

# Every unary method with a request that reaches the servicer once auth lets it through: the
# status it then gets (INVALID_ARGUMENT, NOT_FOUND, OK) is the servicer's, never an auth code.
READ_METHODS = {
    "Route": servewise_pb2.RouteRequest(deployment_id="nope", request_key="r"),
    "GetDeployment": servewise_pb2.GetDeploymentRequest(deployment_id="nope"),
    "ListDeployments": servewise_pb2.ListDeploymentsRequest(),
    "OptimizeBatch": servewise_pb2.OptimizeBatchRequest(),
    "Simulate": servewise_pb2.SimulateRequest(),
    "SelectMode": servewise_pb2.SelectModeRequest(),
    "PlanResources": servewise_pb2.PlanResourcesRequest(),
}
WRITE_METHODS = {
    "RegisterDeployment": servewise_pb2.RegisterDeploymentRequest(),
    "EvaluateSwitch": servewise_pb2.EvaluateSwitchRequest(deployment_id="nope"),
}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _deployment() -> servewise_pb2.Deployment:
    return servewise_pb2.Deployment(
        deployment_id="resnet",
        candidates=[
            types_pb2.Candidate(
                instance_type=types_pb2.InstanceType(
                    name="g4dn.xlarge", price_per_hour=0.526, max_batch_size=64
                ),
                profile=types_pb2.LatencyProfile(
                    linear=types_pb2.LinearProfile(base_ms=5.24, per_item_ms=2.288)
                ),
            )
        ],
        slo=types_pb2.Slo(percentile=99.0, latency_ms=200.0),
        current_plan=types_pb2.ServingPlan(
            instance_type="g4dn.xlarge", max_batch_size=1, max_queue_delay_ms=0.0, replicas=20
        ),
        planned_rate_per_s=1000.0,
    )


async def _control(
    stub: servewise_pb2_grpc.ServewiseServiceStub, metadata: Any
) -> servewise_pb2.ControlResponse:
    """Open Control, send one sample for an unknown deployment, return the first answer."""
    call = stub.Control(metadata=metadata, timeout=10)
    await call.write(
        servewise_pb2.ControlRequest(
            sample=servewise_pb2.MetricSample(
                deployment_id="nope", timestamp_s=1.0e9, rate_per_s=100.0, p99_ms=10.0
            )
        )
    )
    response = await call.read()
    await call.done_writing()
    assert isinstance(response, servewise_pb2.ControlResponse)
    return response


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", f"Bearer {READ_TOKEN}-not"),),
        (("authorization", f"Basic {WRITE_TOKEN}"),),
        (("authorization", "Bearer "),),
    ],
    ids=["none", "unknown", "basic", "empty"],
)
async def test_without_a_valid_token_every_method_is_unauthenticated(
    token_channel: grpc.aio.Channel, metadata: Any
) -> None:
    """Missing, unknown or malformed credentials: UNAUTHENTICATED on every unary method and on
    the Control stream, with a message that repeats no token."""
    stub = servewise_pb2_grpc.ServewiseServiceStub(token_channel)
    for name, request in {**READ_METHODS, **WRITE_METHODS}.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(stub, name)(request, metadata=metadata, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, name
        details = info.value.details() or ""
        assert READ_TOKEN not in details
        assert WRITE_TOKEN not in details
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _control(stub, metadata)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_read_token_may_read_but_not_write(token_channel: grpc.aio.Channel) -> None:
    """A read token passes on Route, the reads and the computations; RegisterDeployment,
    EvaluateSwitch and the Control stream answer PERMISSION_DENIED naming the scope needed."""
    stub = servewise_pb2_grpc.ServewiseServiceStub(token_channel)
    read = _bearer(READ_TOKEN)
    for name, request in READ_METHODS.items():
        code = await _code(getattr(stub, name)(request, metadata=read, timeout=30))
        assert code not in AUTH_CODES, name
    for name, request in WRITE_METHODS.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(stub, name)(request, metadata=read, timeout=5)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
        assert f"{name} needs a token with the write scope" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _control(stub, read)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert READ_TOKEN not in (info.value.details() or "")


async def test_write_token_may_do_everything(token_channel: grpc.aio.Channel) -> None:
    """A write token registers a deployment, streams on Control, and a read token then routes
    against that deployment for real."""
    stub = servewise_pb2_grpc.ServewiseServiceStub(token_channel)
    write = _bearer(WRITE_TOKEN)
    request = servewise_pb2.RegisterDeploymentRequest(deployment=_deployment())
    registered = await stub.RegisterDeployment(request, metadata=write, timeout=10)
    assert registered.deployment.state_version == 1
    answer = await _control(stub, write)
    assert answer.sample_rejected.unknown_deployment
    for name, request in {**READ_METHODS, **WRITE_METHODS}.items():
        code = await _code(getattr(stub, name)(request, metadata=write, timeout=30))
        assert code not in AUTH_CODES, name
    routed = await stub.Route(
        servewise_pb2.RouteRequest(deployment_id="resnet", request_key="r1"),
        metadata=_bearer(READ_TOKEN),
        timeout=5,
    )
    assert routed.pool == servewise_pb2.POOL_REALTIME
    assert routed.state_version == 1


async def test_health_and_reflection_need_no_token(token_channel: grpc.aio.Channel) -> None:
    """Probes and grpcurl work on a server with tokens, without sending one."""
    assert await _health(token_channel) == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(token_channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [
        service.name
        async for response in call
        for service in response.list_services_response.service
    ]
    assert SERVICE in names


# --- the command ---------------------------------------------------------------------------


def _servewise_command() -> list[str]:
    script = Path(sys.executable).with_name("servewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "servewise"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "cert.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "ca.pem"], "adds mutual TLS on top of them"),
        (["--tokens-file", "/nonexistent/tokens"], "cannot read tokens file"),
    ],
)
def test_serve_rejects_incomplete_security_flags(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half a TLS pair or an unreadable tokens file is a usage error (exit 2) before starting."""
    assert main(["serve", "--address", "127.0.0.1:0", "--metrics-address", "off", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_rejects_bad_tokens_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed SERVEWISE_TOKENS stops `serve` with exit 2, naming the line, not the token."""
    monkeypatch.setenv("SERVEWISE_TOKENS", f"{WRITE_TOKEN} write")
    assert main(["serve", "--address", "127.0.0.1:0", "--metrics-address", "off"]) == 2
    err = capsys.readouterr().err
    assert "SERVEWISE_TOKENS line 1: the scope must be read or write" in err
    assert WRITE_TOKEN not in err


def _wait_serving(port: int, pki: Pki, process: subprocess.Popen[str]) -> None:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    deadline = time.monotonic() + 30
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "server exited during start-up"
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                time.sleep(0.1)
                continue
            return
    raise AssertionError("server not serving within 30 s")


@pytest.fixture
def secured_serve(
    pki: Pki, tmp_path: Path, free_port: Callable[[], int]
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`servewise serve` with mutual TLS, a tokens file and SERVEWISE_TOKENS."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# test tokens\nread {READ_TOKEN}\nwrite {WRITE_TOKEN}  # ops\n")
    port = free_port()
    env = {
        **os.environ,
        "SERVEWISE_TOKENS": f"read {ENV_TOKEN}",
        "SERVEWISE_TLS_CLIENT_CA": str(pki.ca),
        "SERVEWISE_METRICS_ADDRESS": "off",
        "SERVEWISE_LOG_LEVEL": "debug",
    }
    process = subprocess.Popen(
        [
            *_servewise_command(),
            "serve",
            "--address",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tokens-file",
            str(tokens_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_serving(port, pki, process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@pytest.mark.slow
def test_secured_serve_logs_refusals_but_never_a_token(
    pki: Pki, secured_serve: tuple[subprocess.Popen[str], int]
) -> None:
    """`servewise serve` with TLS flags, a tokens file and SERVEWISE_TOKENS: each token gets its
    scope; the JSON log shows the mode, the token count and each refusal's code, and no token
    appears anywhere in its output, even at debug level."""
    process, port = secured_serve
    options: dict[str, Any] = {
        "ca_cert": pki.ca,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
        "timeout_s": 10,
    }
    address = f"localhost:{port}"
    request = servewise_pb2.RegisterDeploymentRequest(deployment=_deployment())
    codes: list[str] = []
    for token in (None, f"{WRITE_TOKEN}x", READ_TOKEN, ENV_TOKEN):
        with ServewiseClient(address, token=token, **options) as client:
            try:
                client.register_deployment(request)
            except ServewiseError as exc:
                codes.append(exc.code.name)
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED", "PERMISSION_DENIED", "PERMISSION_DENIED"]
    with ServewiseClient(address, token=WRITE_TOKEN, **options) as client:
        client.register_deployment(request)
    with ServewiseClient(address, token=ENV_TOKEN, **options) as client:
        routed = client.route(servewise_pb2.RouteRequest(deployment_id="resnet", request_key="k"))
    assert routed.state_version == 1

    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    for secret in (READ_TOKEN, WRITE_TOKEN, ENV_TOKEN):
        assert secret not in stdout
        assert secret not in stderr
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    started = next(line for line in lines if line["event"] == "server_started")
    assert (started["tls"], started["tokens"]) == ("mtls", 3)
    rpc_codes = [
        line["code"]
        for line in lines
        if line["event"] == "rpc" and line["method"].startswith(f"/{SERVICE}/")
    ]
    # Sorted: an aborted call's line can follow the next call's (abort sends the status first).
    assert sorted(rpc_codes) == sorted([*codes, "OK", "OK"])
