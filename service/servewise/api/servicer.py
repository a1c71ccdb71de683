"""ServewiseService servicer: thin async methods over validation, conversion and the core."""

from __future__ import annotations

import grpc

from servewise.v1 import servewise_pb2, servewise_pb2_grpc


class ServewiseServicer(servewise_pb2_grpc.ServewiseServiceServicer):
    """Implements Simulate and OptimizeBatch; every other RPC stays UNIMPLEMENTED (inherited)."""

    async def Simulate(
        self, request: servewise_pb2.SimulateRequest, context: grpc.aio.ServicerContext
    ) -> servewise_pb2.SimulateResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Simulate is being written")
        raise AssertionError("unreachable")

    async def OptimizeBatch(
        self, request: servewise_pb2.OptimizeBatchRequest, context: grpc.aio.ServicerContext
    ) -> servewise_pb2.OptimizeBatchResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "OptimizeBatch is being written")
        raise AssertionError("unreachable")
