"""ServewiseService servicer: thin async methods over validation, conversion and the core.

Each method validates and converts the request (:mod:`servewise.api.converters`), runs the
numpy-heavy core in a worker thread so the event loop keeps serving, and converts the result
back; OptimizeBatch calls made while another is in flight run in worker processes instead
(:mod:`servewise.api.offload`). Exceptions become statuses in :mod:`servewise.api.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from google.rpc import code_pb2  # type: ignore[import-untyped]  # no stubs for googleapis protos

from servewise.api import deployments, unary_work
from servewise.api.control_stream import ControlHub
from servewise.api.converters import (
    optimize_args,
    simulate_args,
    simulate_response_to_pb,
)
from servewise.api.errors import LimitExceededError, abort_for, maps_errors
from servewise.api.guards import LIMIT_EXCEEDED, ControlStreams, TokenBucket, unary
from servewise.api.offload import WorkerPool, default_worker_processes
from servewise.api.plan_resources import plan_resources
from servewise.api.routing import RouteTable
from servewise.api.select_mode import select_mode
from servewise.core.simulator import capacity_per_s, simulate
from servewise.limits import DEFAULT_LIMITS, Limits, described
from servewise.store import StateStore
from servewise.store.memory import MemoryStore
from servewise.v1 import servewise_pb2, servewise_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# OptimizeBatch in a worker runs while other calls keep the cores busy: the real-time baseline
# is searched after the recommendation, not beside it in a second thread (bench/README.md).
_BUSY_OPTIMIZE: Final = {"overlap_baseline": False}


class ServewiseServicer(servewise_pb2_grpc.ServewiseServiceServicer):
    """Implements Simulate, OptimizeBatch, SelectMode, PlanResources, the deployment RPCs and
    EvaluateSwitch, the Control stream and Route.

    ``store`` holds deployments and decision logs; a MemoryStore when omitted (the server passes
    the one ``SERVEWISE_STORE`` names). ``limits`` are the server's (:mod:`servewise.limits`).
    ``worker_processes`` run OptimizeBatch (:mod:`servewise.api.offload`; default
    ``SERVEWISE_WORKER_PROCESSES`` or one per CPU; 0 runs it in threads).
    """

    def __init__(
        self,
        store: StateStore | None = None,
        limits: Limits = DEFAULT_LIMITS,
        worker_processes: int | None = None,
    ) -> None:
        self.store: StateStore = store if store is not None else MemoryStore()
        self.limits = limits
        self.workers = WorkerPool(
            default_worker_processes() if worker_processes is None else worker_processes
        )
        self.streams = ControlStreams(limits)
        self.switches = deployments.SwitchEvaluator(self.store)
        # Route's in-memory view of every deployment, polled from the store.
        self.routes = RouteTable(self.store)
        # The Control streams share the optimizer cache with EvaluateSwitch, and tell Route of
        # every transition they write.
        self.control = ControlHub(self.store, self.switches.cache, on_write=self.routes.apply)

    async def drain(self) -> None:
        """Close every Control stream with UNAVAILABLE and refuse new ones (the server calls
        it when it starts draining, so streams end with a status instead of a cut connection)."""
        self.streams.drain()

    async def aclose(self) -> None:
        """Stop background work (Route's store poller, the Control streams' optimizer
        workers); the server calls it on stop."""
        await self.routes.aclose()
        self.control.close()
        self.workers.close()

    @unary
    async def Simulate(
        self, request: servewise_pb2.SimulateRequest, context: Context
    ) -> servewise_pb2.SimulateResponse:
        args = simulate_args(request)
        profile, plan = args.candidate.profile, args.plan
        result = await asyncio.to_thread(
            simulate,
            profile,
            plan,
            args.workload,
            num_requests=args.num_requests,
            seed=args.seed,
            distribution=args.distribution,
            slo=args.slo,
        )
        capacity = capacity_per_s(profile, plan.max_batch_size, plan.replicas)
        return simulate_response_to_pb(args, result, capacity)

    @unary
    async def OptimizeBatch(
        self, request: servewise_pb2.OptimizeBatchRequest, context: Context
    ) -> servewise_pb2.OptimizeBatchResponse:
        args = optimize_args(request)
        # Concurrent calls in worker processes: they would serialise on this process's GIL.
        answer = await self.workers.run(unary_work.optimize_batch, args, in_worker=_BUSY_OPTIMIZE)
        return servewise_pb2.OptimizeBatchResponse.FromString(answer)

    @unary
    async def SelectMode(
        self, request: servewise_pb2.SelectModeRequest, context: Context
    ) -> servewise_pb2.SelectModeResponse:
        return await select_mode(request)

    @unary
    async def PlanResources(
        self, request: servewise_pb2.PlanResourcesRequest, context: Context
    ) -> servewise_pb2.PlanResourcesResponse:
        return await plan_resources(request)

    @unary
    async def RegisterDeployment(
        self, request: servewise_pb2.RegisterDeploymentRequest, context: Context
    ) -> servewise_pb2.RegisterDeploymentResponse:
        response = await asyncio.to_thread(deployments.register, self.store, request)
        # Route sees this process's own write at once, not at the next poll.
        await asyncio.to_thread(self.routes.apply, response.deployment)
        return response

    @unary
    async def GetDeployment(
        self, request: servewise_pb2.GetDeploymentRequest, context: Context
    ) -> servewise_pb2.GetDeploymentResponse:
        return await asyncio.to_thread(deployments.get, self.store, request)

    @unary
    async def ListDeployments(
        self, request: servewise_pb2.ListDeploymentsRequest, context: Context
    ) -> servewise_pb2.ListDeploymentsResponse:
        return await asyncio.to_thread(deployments.list_deployments, self.store, request)

    @unary
    async def EvaluateSwitch(
        self, request: servewise_pb2.EvaluateSwitchRequest, context: Context
    ) -> servewise_pb2.EvaluateSwitchResponse:
        return await asyncio.to_thread(self.switches.evaluate, request)

    async def Control(
        self, request_iterator: AsyncIterator[servewise_pb2.ControlRequest], context: Context
    ) -> AsyncIterator[servewise_pb2.ControlResponse]:
        """Samples in, events out; an invalid or over-budget sample is answered on the stream,
        never an abort (see :mod:`servewise.api.control_stream`). Refused with
        RESOURCE_EXHAUSTED beyond ``max_control_streams``; ends with UNAVAILABLE when the
        server drains."""
        try:
            slot = self.streams.open()
        except LimitExceededError as exc:
            await abort_for(exc, context)
        except RuntimeError as exc:  # draining
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        session = self.control.session()
        bucket = TokenBucket(self.limits.max_samples_per_s, self.limits.sample_burst)
        requests = aiter(request_iterator)
        try:
            while not slot.draining:
                slot.idle = True
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    return
                finally:
                    slot.idle = False
                if request.HasField("sample") and not bucket.take():
                    LIMIT_EXCEEDED.labels(limit="max_samples_per_s").inc()
                    yield self._over_budget(request, bucket.wait_s())
                    continue
                # The sample's work runs in a worker thread; an optimizer miss is awaited
                # here, computed in a worker process, so it holds up no other stream.
                handled = await self.control.handle(session, request, self.limits)
                for event in handled:
                    yield event
        except asyncio.CancelledError:
            if not slot.interrupted:  # the client went away: nothing to answer
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            self.streams.close(slot)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "the server is shutting down; reconnect (transitions in force are kept in the store)",
        )

    def _over_budget(
        self, request: servewise_pb2.ControlRequest, wait_s: float
    ) -> servewise_pb2.ControlResponse:
        """A SampleRejected with RESOURCE_EXHAUSTED: the sample was not looked at."""
        sample = request.sample
        rate, burst = self.limits.max_samples_per_s, self.limits.sample_burst
        description = (
            f"more than {rate:g} samples/s (burst {burst}) on this stream, the "
            f"{described('max_samples_per_s')}; retry in {wait_s:.3g} s"
        )
        return servewise_pb2.ControlResponse(
            deployment_id=sample.deployment_id or request.deployment_id,
            sample_rejected=servewise_pb2.SampleRejected(
                violations=[servewise_pb2.SampleViolation(field="sample", description=description)],
                timestamp_s=sample.timestamp_s,
                code=code_pb2.RESOURCE_EXHAUSTED,
                retry_after_s=wait_s,
            ),
            sample_timestamp_s=sample.timestamp_s,
        )

    # The hot path (every request a load balancer routes): no limits or cancel token to set up,
    # it reads memory and does no long work.
    @maps_errors
    async def Route(
        self, request: servewise_pb2.RouteRequest, context: Context
    ) -> servewise_pb2.RouteResponse:
        return await self.routes.route(request)
