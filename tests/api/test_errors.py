"""Domain exceptions become the right gRPC status, in one place (servewise.api.errors)."""

from __future__ import annotations

import logging
import pickle
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import grpc
import pytest
from api_builders import bad_request_fields, optimize_request, rich_status, simulate_request
from api_harness import Api

import servewise.api.servicer as servicer_module
from servewise.api import unary_work
from servewise.api.errors import INTERNAL_MESSAGE, status_for, summary
from servewise.core import simulator
from servewise.core.errors import FieldViolation, InvalidInputError


def _violations(n: int) -> InvalidInputError:
    return InvalidInputError([FieldViolation(f"field_{i}", "must be > 0") for i in range(n)])


def test_invalid_input_is_invalid_argument_with_bad_request() -> None:
    """InvalidInputError -> INVALID_ARGUMENT carrying grpc-status-details-bin."""
    status = status_for(_violations(2))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    keys = [key for key, _ in status.trailing_metadata]
    assert keys == ["grpc-status-details-bin"]


def test_summary_names_the_first_fields() -> None:
    """The one-line message names the first three fields and counts the rest."""
    assert summary(_violations(1)) == "invalid request: 1 field violation: field_0"
    assert summary(_violations(5)) == (
        "invalid request: 5 field violations: field_0, field_1, field_2 and 2 more"
    )


def test_core_value_error_is_invalid_argument() -> None:
    """A plain ValueError from the core is the caller's fault: INVALID_ARGUMENT, its message."""
    status = status_for(ValueError("max_batch_size 300 exceeds the profile's largest batch 256"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "max_batch_size 300 exceeds the profile's largest batch 256"


def test_anything_else_is_internal_and_generic() -> None:
    """Unexpected exceptions are INTERNAL with a message that leaks nothing."""
    status = status_for(KeyError("secret"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == INTERNAL_MESSAGE


def _raise(exc: Exception) -> Any:
    def fail(*args: object, **kwargs: object) -> Any:
        raise exc

    return fail


async def test_core_value_error_over_the_wire(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError inside simulate() reaches the client as INVALID_ARGUMENT with its text."""
    monkeypatch.setattr(servicer_module, "simulate", _raise(ValueError("rate too high")))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.stub.Simulate(simulate_request())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "rate too high"
    await api.assert_serving()


async def test_core_invalid_input_over_the_wire(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """InvalidInputError raised by the core itself keeps its field violations."""
    error = InvalidInputError([FieldViolation("candidates[0].profile", "bad")])
    monkeypatch.setattr(unary_work, "optimize", _raise(error))
    call = api.stub.OptimizeBatch(optimize_request())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(await rich_status(call)) == ["candidates[0].profile"]
    await api.assert_serving()


async def test_unrepresentable_result_is_internal(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid request whose result does not fit the response is INTERNAL, not the caller's
    fault (protobuf's out-of-range ValueError must not become INVALID_ARGUMENT)."""
    real = simulator.simulate

    def simulate_with_huge_seed(*args: Any, **kwargs: Any) -> Any:
        return replace(real(*args, **kwargs), seed=2**64)

    monkeypatch.setattr(servicer_module, "simulate", simulate_with_huge_seed)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.stub.Simulate(simulate_request())
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    await api.assert_serving()


@pytest.mark.parametrize("rpc", ["Simulate", "OptimizeBatch"])
async def test_unexpected_error_over_the_wire(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rpc: str
) -> None:
    """A bug in the core is INTERNAL with a generic message, logged with its traceback."""
    monkeypatch.setattr(servicer_module, "simulate", _raise(ZeroDivisionError("secret detail")))
    monkeypatch.setattr(unary_work, "optimize", _raise(ZeroDivisionError("secret detail")))
    request = simulate_request() if rpc == "Simulate" else optimize_request()
    with (
        caplog.at_level(logging.ERROR, logger="servewise.api.errors"),
        pytest.raises(grpc.aio.AioRpcError) as raised,
    ):
        await getattr(api.stub, rpc)(request)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == INTERNAL_MESSAGE
    assert "secret" not in (raised.value.details() or "")
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    await api.assert_serving()


def test_invalid_input_pickles_with_every_violation() -> None:
    """Raised in a worker process, re-raised in the server: the BadRequest keeps each field."""
    again = pickle.loads(pickle.dumps(_violations(3)))  # noqa: S301  # our own bytes
    assert [v.field for v in again.violations] == ["field_0", "field_1", "field_2"]
    assert status_for(again).code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_dead_worker_is_unavailable_not_internal() -> None:
    status = status_for(BrokenProcessPool("a child process terminated abruptly"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert "retry" in status.details
