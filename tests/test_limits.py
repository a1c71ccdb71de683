"""Every server limit (servewise.limits), hit end to end, and the service still serving others.

One ``servewise serve`` subprocess with small limits set by flags serves the module; the deadline
tests use an in-process server (default limits) so they can read the cancelled-work counter.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from limits_support import (
    deployment,
    free_port,
    heavy_plan_resources,
    light_optimize,
    linear_candidate,
    sample,
    servewise_command,
    start_serve,
)
from servewise.limits import DEFAULT_LIMITS, Limits, env_var, flag, specs
from servewise.server import start_server
from servewise.v1 import servewise_pb2, servewise_pb2_grpc, types_pb2

pytestmark = pytest.mark.slow

SMALL = Limits(
    max_message_bytes=64 * 1024,
    max_streams_per_connection=2,
    max_control_streams=3,
    max_samples_per_s=4.0,
    sample_burst=3,
    max_deployments=3,
    max_candidates=4,
    max_profile_points=16,
    max_arrival_times=1000,
    max_simulated_requests=20_000,
    max_rate_points=50,
)
# Registered at start-up, for the sample-rate test (so the deployment cap test cannot starve it).
RATE_DEPLOYMENT = "rate-limited"

if TYPE_CHECKING:
    Stub = servewise_pb2_grpc.ServewiseServiceAsyncStub
else:
    Stub = servewise_pb2_grpc.ServewiseServiceStub


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    """``servewise serve`` with SMALL limits, each set by its flag but one set by its
    environment variable (both paths exercised); yields its address."""
    by_env = "max_samples_per_s"
    flags = [
        item
        for spec in specs()
        if spec.name != by_env
        for item in (spec.flag, str(getattr(SMALL, spec.name)))
    ]
    port = free_port()
    process = start_serve(port, flags, env={env_var(by_env): str(getattr(SMALL, by_env))})
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            servewise_pb2_grpc.ServewiseServiceStub(channel).RegisterDeployment(
                servewise_pb2.RegisterDeploymentRequest(deployment=deployment(RATE_DEPLOYMENT)),
                timeout=10,
            )
        yield address
    finally:
        process.kill()
        process.communicate(timeout=10)


async def _channel(address: str) -> grpc.aio.Channel:
    # Option: one connection per channel object (no subchannel sharing between channels), so
    # per-connection limits are seen per channel.
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
async def stub(small_server: str) -> AsyncIterator[Stub]:
    channel = await _channel(small_server)
    async with channel:
        yield servewise_pb2_grpc.ServewiseServiceStub(channel)  # type: ignore[misc]


async def _serves(stub: Stub) -> None:
    """The service answers a real request (an OptimizeBatch) promptly."""
    started = time.monotonic()
    response = await stub.OptimizeBatch(light_optimize(), timeout=20)
    assert response.feasible
    assert time.monotonic() - started < 10


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    return status


def _bad_request(error: grpc.aio.AioRpcError) -> dict[str, str]:
    found: dict[str, str] = {}
    for detail in _status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


# --- The flags themselves -----------------------------------------------------------------------


def test_every_limit_has_a_flag_an_env_var_and_a_readme_row() -> None:
    """Each Limits field is a `servewise serve` flag and env var, documented in the README."""
    from pathlib import Path  # noqa: PLC0415

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    result = subprocess.run(
        [*servewise_command(), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for spec in specs():
        assert spec.flag in result.stdout
        assert spec.env_var in result.stdout
        assert f"`{spec.flag}" in readme, spec.name
        assert f"`{spec.env_var}`" in readme, spec.name
    assert flag("max_candidates") == "--max-candidates"
    with pytest.raises(ValueError, match="--max-deployments"):
        Limits(max_deployments=0)


def test_a_bad_limit_flag_is_a_usage_error() -> None:
    """A limit that is not a positive number exits 2 naming the flag."""
    result = subprocess.run(
        [*servewise_command(), "serve", "--max-candidates", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--max-candidates" in result.stderr


# --- Transport --------------------------------------------------------------------------------


async def test_oversize_message_is_resource_exhausted(stub: Stub) -> None:
    """A request above --max-message-bytes gets RESOURCE_EXHAUSTED from gRPC; the same
    connection then serves a normal request."""
    request = light_optimize()
    # 10,000 doubles: 80 kB on the wire, over the 64 KiB limit.
    request.workload.arrival_times_s.extend(i * 0.01 for i in range(10_000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.OptimizeBatch(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await _serves(stub)


async def test_streams_per_connection_queue_without_hurting_other_connections(
    small_server: str,
) -> None:
    """With --max-streams-per-connection 2 and two Control streams open on a connection, a
    third call on it waits (here until its deadline); other connections are served, and the
    waiting connection is served once a stream ends."""
    busy = await _channel(small_server)
    other = await _channel(small_server)
    async with busy, other:
        busy_stub = servewise_pb2_grpc.ServewiseServiceStub(busy)
        streams = [busy_stub.Control() for _ in range(2)]
        for i, call in enumerate(streams):
            await call.write(sample(RATE_DEPLOYMENT, 1.0 + i))
            assert (await call.read()).WhichOneof("event") is not None
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await busy_stub.OptimizeBatch(light_optimize(), timeout=1.0)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await _serves(servewise_pb2_grpc.ServewiseServiceStub(other))  # type: ignore[arg-type]
        await streams[0].done_writing()
        assert await streams[0].code() is grpc.StatusCode.OK
        await _serves(busy_stub)  # type: ignore[arg-type]
        await streams[1].done_writing()
        assert await streams[1].code() is grpc.StatusCode.OK


# --- Control streams ----------------------------------------------------------------------------


async def test_control_streams_beyond_the_total_are_refused(small_server: str) -> None:
    """The fourth Control stream (--max-control-streams 3, each on its own connection) ends
    at once with RESOURCE_EXHAUSTED naming the limit; the three open ones keep working, and a
    new stream is accepted once one closes."""
    channels = [await _channel(small_server) for _ in range(4)]
    try:
        stubs = [servewise_pb2_grpc.ServewiseServiceStub(c) for c in channels]
        open_streams = [s.Control() for s in stubs[:3]]
        for i, call in enumerate(open_streams):
            await call.write(sample(RATE_DEPLOYMENT, 10.0 + i))
            assert (await call.read()).WhichOneof("event") is not None
        refused = stubs[3].Control()
        assert await refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        details = await refused.details()
        assert "--max-control-streams" in (details or "")
        for i, call in enumerate(open_streams):
            await call.write(sample(RATE_DEPLOYMENT, 20.0 + i))
            assert (await call.read()).WhichOneof("event") is not None
        await open_streams[0].done_writing()
        assert await open_streams[0].code() is grpc.StatusCode.OK
        accepted = stubs[3].Control()
        await accepted.write(sample(RATE_DEPLOYMENT, 30.0))
        assert (await accepted.read()).WhichOneof("event") is not None
        await accepted.done_writing()
        assert await accepted.code() is grpc.StatusCode.OK
        for call in open_streams[1:]:
            await call.done_writing()
            assert await call.code() is grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()


async def test_samples_over_the_rate_are_rejected_on_the_stream_which_stays_usable(
    stub: Stub,
) -> None:
    """Beyond the burst (3) at 4 samples/s, samples get SampleRejected with code
    RESOURCE_EXHAUSTED and a retry hint; the stream stays open and a later sample within
    budget is processed."""
    call = stub.Control()
    answers = []
    for i in range(6):  # all at once: 3 from the burst, the rest over budget
        await call.write(sample(RATE_DEPLOYMENT, 100.0 + i))
        answers.append(await call.read())
    rejected = [a for a in answers if a.WhichOneof("event") == "sample_rejected"]
    processed = [a for a in answers if a.WhichOneof("event") != "sample_rejected"]
    assert len(processed) == 3, answers
    assert len(rejected) == 3
    for answer in rejected:
        assert answer.sample_rejected.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert 0 < answer.sample_rejected.retry_after_s <= 1 / SMALL.max_samples_per_s
        assert "--max-samples-per-s" in answer.sample_rejected.violations[0].description
        assert answer.deployment_id == RATE_DEPLOYMENT
    await asyncio.sleep(rejected[-1].sample_rejected.retry_after_s + 0.05)
    await call.write(sample(RATE_DEPLOYMENT, 200.0))
    later = await call.read()
    assert later.WhichOneof("event") == "hold_event", later
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK


async def test_an_invalid_sample_carries_invalid_argument(stub: Stub) -> None:
    """Rejections other than the rate limit carry their code too (INVALID_ARGUMENT, NOT_FOUND)."""
    call = stub.Control()
    bad = sample(RATE_DEPLOYMENT, 300.0)
    bad.sample.utilisation = 2.0
    await call.write(bad)
    assert (await call.read()).sample_rejected.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    await call.write(sample("nobody", 300.0))
    assert (await call.read()).sample_rejected.code == grpc.StatusCode.NOT_FOUND.value[0]
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK


# --- Deployments --------------------------------------------------------------------------------


async def test_new_deployments_beyond_the_cap_are_refused_updates_are_not(stub: Stub) -> None:
    """With --max-deployments 3, registering a fourth new deployment is RESOURCE_EXHAUSTED
    with a QuotaFailure naming the flag; existing deployments can still be updated and read."""
    listed = await stub.ListDeployments(servewise_pb2.ListDeploymentsRequest(), timeout=10)
    count = len(listed.deployments)
    registered = []
    for i in range(SMALL.max_deployments - count):
        response = await stub.RegisterDeployment(
            servewise_pb2.RegisterDeploymentRequest(deployment=deployment(f"cap-{i}")), timeout=10
        )
        registered.append(response.deployment)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterDeployment(
            servewise_pb2.RegisterDeploymentRequest(deployment=deployment("one-too-many")),
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    quota = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota) for d in _status(caught.value).details)
    assert quota.violations[0].subject == "--max-deployments"
    # An update of a deployment that exists is never capped.
    current = await stub.GetDeployment(
        servewise_pb2.GetDeploymentRequest(deployment_id=RATE_DEPLOYMENT), timeout=10
    )
    update = current.deployment
    update.planned_rate_per_s = 1100.0
    updated = await stub.RegisterDeployment(
        servewise_pb2.RegisterDeploymentRequest(deployment=update), timeout=10
    )
    assert updated.deployment.state_version == update.state_version + 1
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetDeployment(
            servewise_pb2.GetDeploymentRequest(deployment_id="one-too-many"), timeout=10
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    await _serves(stub)


# --- Work per request ---------------------------------------------------------------------------


def _too_many_candidates() -> servewise_pb2.OptimizeBatchRequest:
    request = light_optimize()
    del request.candidates[:]
    request.candidates.extend(linear_candidate(f"c{i}") for i in range(SMALL.max_candidates + 1))
    return request


def _too_many_points() -> servewise_pb2.OptimizeBatchRequest:
    request = light_optimize()
    points = [
        types_pb2.ProfilePoint(batch_size=b, latency_ms=5.0 + 2.0 * b)
        for b in range(1, SMALL.max_profile_points + 2)
    ]
    request.candidates[0].profile.points.points.extend(points)
    return request


def _too_long_trace() -> servewise_pb2.OptimizeBatchRequest:
    request = light_optimize()
    request.workload.arrival_times_s.extend(i * 0.01 for i in range(SMALL.max_arrival_times + 1))
    return request


def _too_many_simulated() -> servewise_pb2.SimulateRequest:
    return servewise_pb2.SimulateRequest(
        candidate=linear_candidate(),
        plan=types_pb2.ServingPlan(max_batch_size=4, max_queue_delay_ms=2.0, replicas=2),
        workload=types_pb2.Workload(rate_per_s=100.0),
        num_requests=SMALL.max_simulated_requests + 1,
    )


def _too_many_rate_points() -> servewise_pb2.PlanResourcesRequest:
    return servewise_pb2.PlanResourcesRequest(
        deployments=[
            servewise_pb2.DeploymentSpec(
                name="day",
                candidates=[linear_candidate()],
                slo=types_pb2.Slo(latency_ms=100.0),
                rate_profile=[
                    types_pb2.RatePoint(time_s=60.0 * i, rate_per_s=100.0)
                    for i in range(SMALL.max_rate_points + 1)
                ],
            )
        ]
    )


WORK_CASES: list[tuple[str, str, Callable[[], Any], str, str]] = [
    ("OptimizeBatch", "candidates", _too_many_candidates, "candidates", "max_candidates"),
    (
        "OptimizeBatch",
        "profile points",
        _too_many_points,
        "candidates",
        "max_profile_points",
    ),
    (
        "OptimizeBatch",
        "trace length",
        _too_long_trace,
        "workload.arrival_times_s",
        "max_arrival_times",
    ),
    (
        "Simulate",
        "simulated requests",
        _too_many_simulated,
        "num_requests",
        "max_simulated_requests",
    ),
    ("PlanResources", "rate points", _too_many_rate_points, "deployments", "max_rate_points"),
]


@pytest.mark.parametrize(
    ("method", "build", "field", "limit"),
    [(m, b, f, lim) for m, _, b, f, lim in WORK_CASES],
    ids=[case[1] for case in WORK_CASES],
)
async def test_work_beyond_a_limit_is_invalid_argument_naming_field_and_limit(
    stub: Stub, method: str, build: Callable[[], Any], field: str, limit: str
) -> None:
    """Each work limit: INVALID_ARGUMENT with a BadRequest violation on the field whose
    description names the limit's flag and value; the service then serves a normal request."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(build(), timeout=20)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = _bad_request(caught.value)
    assert field in violations, violations
    assert flag(limit) in violations[field]
    assert (
        f"at most {getattr(SMALL, limit)}" in violations[field]
        or str(getattr(SMALL, limit)) in violations[field]
    )
    await _serves(stub)


async def test_work_limits_at_their_value_are_accepted(stub: Stub) -> None:
    """Exactly max_candidates candidates is fine (the limit is inclusive)."""
    request = _too_many_candidates()
    del request.candidates[-1]
    assert len(request.candidates) == SMALL.max_candidates
    response = await stub.OptimizeBatch(request, timeout=30)
    assert response.feasible


# --- Deadlines and cancellation (in-process, default limits) -----------------------------------


def _cancelled_work(method: str) -> float:
    value = REGISTRY.get_sample_value("servewise_cancelled_work_total", {"grpc_method": method})
    return value or 0.0


async def _wait_for_counter(method: str, above: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _cancelled_work(method) > above:
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{method}'s worker did not stop within {timeout_s}s")


@pytest.fixture
async def local_stub() -> AsyncIterator[Stub]:
    running = await start_server("127.0.0.1:0", None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield servewise_pb2_grpc.ServewiseServiceStub(channel)  # type: ignore[misc]
    finally:
        await running.stop(None)


async def test_a_passed_deadline_or_a_cancel_stops_the_worker(local_stub: Stub) -> None:
    """Heavy work (a PlanResources of seconds): with a deadline a quarter of the way into it the
    client gets DEADLINE_EXCEEDED, and when the client cancels a quarter of the way in, the call
    ends CANCELLED; either way the worker thread stops at its next check (the cancelled-work
    counter moves) well before the work would have finished, and the next call is served.

    The deadline is a fraction of the full run measured here first, so the test keeps its
    meaning on a loaded machine and as the core gets faster."""
    request = heavy_plan_resources(deployments=16)
    started = time.monotonic()
    await local_stub.PlanResources(request, timeout=120)
    full_s = time.monotonic() - started
    deadline_s = full_s / 4

    before = _cancelled_work("PlanResources")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_stub.PlanResources(request, timeout=deadline_s)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    stopped = await _wait_for_counter("PlanResources", before, timeout_s=full_s + 5)
    print(
        f"full run {full_s:.2f} s; deadline {deadline_s:.2f} s; worker stopped "
        f"{stopped - started:.2f} s after the call began"
    )
    assert stopped - started < deadline_s + full_s / 2
    await _serves(local_stub)

    before = _cancelled_work("PlanResources")
    call = local_stub.PlanResources(request, timeout=120)
    await asyncio.sleep(deadline_s)
    assert call.cancel(), "the call had already finished"
    with pytest.raises(asyncio.CancelledError):
        await call
    await _wait_for_counter("PlanResources", before, timeout_s=full_s + 5)
    await _serves(local_stub)


async def test_a_simulate_past_its_deadline_stops_before_the_kernel(local_stub: Stub) -> None:
    """A 5M-request Simulate with a 50 ms deadline: DEADLINE_EXCEEDED, and the worker stops at
    the check before the simulation kernel (drawing 5M bursty arrivals takes far longer than
    the deadline), so no simulation runs for a caller that has gone."""
    before = _cancelled_work("Simulate")
    request = servewise_pb2.SimulateRequest(
        candidate=linear_candidate(),
        plan=types_pb2.ServingPlan(max_batch_size=16, max_queue_delay_ms=5.0, replicas=4),
        workload=types_pb2.Workload(rate_per_s=2000.0, arrival_cv=2.0),
        num_requests=DEFAULT_LIMITS.max_simulated_requests,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_stub.Simulate(request, timeout=0.05)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await _wait_for_counter("Simulate", before, timeout_s=20)
    await _serves(local_stub)


def test_defaults_are_the_previous_hard_caps() -> None:
    """The configurable work limits default to the caps validation used before they were
    configurable, so a server without flags behaves as before."""
    from servewise.api import validation  # noqa: PLC0415

    assert DEFAULT_LIMITS.max_candidates == validation.MAX_CANDIDATES == 64
    assert DEFAULT_LIMITS.max_profile_points == validation.MAX_TOTAL_PROFILE_POINTS == 4096
    assert DEFAULT_LIMITS.max_arrival_times == validation.MAX_ARRIVAL_TIMES == 2_000_000
    assert DEFAULT_LIMITS.max_simulated_requests == validation.MAX_NUM_REQUESTS == 5_000_000


def test_lowering_a_work_limit_keeps_stored_deployments_readable() -> None:
    """A deployment registered under a larger max_candidates still loads (for Control,
    EvaluateSwitch, GetDeployment) after the limit is lowered; new registrations see the
    lower limit."""
    from servewise.api import deployments  # noqa: PLC0415
    from servewise.core.errors import InvalidInputError  # noqa: PLC0415
    from servewise.limits import use  # noqa: PLC0415
    from servewise.store.memory import MemoryStore  # noqa: PLC0415

    store = MemoryStore()
    pb = deployment("two-candidates")
    pb.candidates.append(linear_candidate("spare", 0.9))
    deployments.register(store, servewise_pb2.RegisterDeploymentRequest(deployment=pb))
    with use(Limits(max_candidates=1)):
        loaded = deployments.load(store, "two-candidates")
        assert len(loaded.state.candidates) == 2
        pb.deployment_id = "another"
        with pytest.raises(InvalidInputError, match="--max-candidates"):
            deployments.register(store, servewise_pb2.RegisterDeploymentRequest(deployment=pb))
