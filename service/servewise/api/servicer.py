"""ServewiseService servicer: thin async methods over validation, conversion and the core.

Each method validates and converts the request (:mod:`servewise.api.converters`), runs the
numpy-heavy core in a worker thread so the event loop keeps serving, and converts the result
back. Exceptions become statuses in :mod:`servewise.api.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from servewise.api import deployments
from servewise.api.control_stream import ControlHub
from servewise.api.converters import (
    optimize_args,
    optimize_response_to_pb,
    simulate_args,
    simulate_response_to_pb,
)
from servewise.api.errors import maps_errors
from servewise.api.plan_resources import plan_resources
from servewise.api.routing import RouteTable
from servewise.api.select_mode import select_mode
from servewise.core.optimizer import optimize
from servewise.core.simulator import capacity_per_s, simulate
from servewise.store import StateStore
from servewise.store.memory import MemoryStore
from servewise.v1 import servewise_pb2, servewise_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ServewiseServicer(servewise_pb2_grpc.ServewiseServiceServicer):
    """Implements Simulate, OptimizeBatch, SelectMode, PlanResources, the deployment RPCs and
    EvaluateSwitch, the Control stream and Route.

    ``store`` holds deployments and decision logs; a MemoryStore when omitted (the server passes
    the one ``SERVEWISE_STORE`` names).
    """

    def __init__(self, store: StateStore | None = None) -> None:
        self.store: StateStore = store if store is not None else MemoryStore()
        self.switches = deployments.SwitchEvaluator(self.store)
        # Route's in-memory view of every deployment, polled from the store.
        self.routes = RouteTable(self.store)
        # The Control streams share the optimizer cache with EvaluateSwitch, and tell Route of
        # every transition they write.
        self.control = ControlHub(self.store, self.switches.cache, on_write=self.routes.apply)

    async def aclose(self) -> None:
        """Stop background work (Route's store poller); the server calls it on stop."""
        await self.routes.aclose()

    @maps_errors
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

    @maps_errors
    async def OptimizeBatch(
        self, request: servewise_pb2.OptimizeBatchRequest, context: Context
    ) -> servewise_pb2.OptimizeBatchResponse:
        args = optimize_args(request)
        result = await asyncio.to_thread(
            optimize,
            args.candidates,
            args.workload,
            args.slo,
            args.limits,
            current_plan=args.current_plan,
            seed=args.seed,
        )
        return optimize_response_to_pb(args, result)

    @maps_errors
    async def SelectMode(
        self, request: servewise_pb2.SelectModeRequest, context: Context
    ) -> servewise_pb2.SelectModeResponse:
        return await select_mode(request)

    @maps_errors
    async def PlanResources(
        self, request: servewise_pb2.PlanResourcesRequest, context: Context
    ) -> servewise_pb2.PlanResourcesResponse:
        return await plan_resources(request)

    @maps_errors
    async def RegisterDeployment(
        self, request: servewise_pb2.RegisterDeploymentRequest, context: Context
    ) -> servewise_pb2.RegisterDeploymentResponse:
        response = await asyncio.to_thread(deployments.register, self.store, request)
        # Route sees this process's own write at once, not at the next poll.
        await asyncio.to_thread(self.routes.apply, response.deployment)
        return response

    @maps_errors
    async def GetDeployment(
        self, request: servewise_pb2.GetDeploymentRequest, context: Context
    ) -> servewise_pb2.GetDeploymentResponse:
        return await asyncio.to_thread(deployments.get, self.store, request)

    @maps_errors
    async def ListDeployments(
        self, request: servewise_pb2.ListDeploymentsRequest, context: Context
    ) -> servewise_pb2.ListDeploymentsResponse:
        return await asyncio.to_thread(deployments.list_deployments, self.store, request)

    @maps_errors
    async def EvaluateSwitch(
        self, request: servewise_pb2.EvaluateSwitchRequest, context: Context
    ) -> servewise_pb2.EvaluateSwitchResponse:
        return await asyncio.to_thread(self.switches.evaluate, request)

    async def Control(
        self, request_iterator: AsyncIterator[servewise_pb2.ControlRequest], context: Context
    ) -> AsyncIterator[servewise_pb2.ControlResponse]:
        """Samples in, events out; an invalid sample is answered on the stream, never an abort
        (see :mod:`servewise.api.control_stream`)."""
        session = self.control.session()
        async for request in request_iterator:
            for event in await asyncio.to_thread(session.handle, request):
                yield event

    @maps_errors
    async def Route(
        self, request: servewise_pb2.RouteRequest, context: Context
    ) -> servewise_pb2.RouteResponse:
        return await self.routes.route(request)
