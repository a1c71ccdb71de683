"""``ServewiseError``: a failed RPC with its status code and ``google.rpc.BadRequest`` details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped]  # no stubs
from grpc_status import rpc_status

__all__ = ["FieldViolation", "ServewiseError", "from_rpc_error"]


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path as the server spells it, and why it is invalid."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class ServewiseError(Exception):
    """An RPC that ended with a non-OK status.

    Attributes
    ----------
    code:
        The gRPC status code (``grpc.StatusCode.INVALID_ARGUMENT`` for a rejected request).
    message:
        The server's one-line status message.
    field_violations:
        One entry per invalid field when the server attached ``google.rpc.BadRequest``
        details (it does for every ``INVALID_ARGUMENT`` about a field), else empty.
    method:
        The RPC's short name, e.g. ``"OptimizeBatch"``.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: tuple[FieldViolation, ...] = (),
        *,
        method: str = "",
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.method = method
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The error on one line: ``Method: CODE: message``, or with field violations
        ``Method: INVALID_ARGUMENT: invalid request: field: why; field: why``."""
        if self.field_violations:
            # The violations say everything the summary message does, and why.
            text = "invalid request: " + "; ".join(str(v) for v in self.field_violations)
        else:
            text = " ".join(self.message.split()) or "(no message)"
        text = f"{self.code.name}: {text}"
        return f"{self.method}: {text}" if self.method else text


def _violations(error: grpc.Call) -> tuple[FieldViolation, ...]:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status message that disagrees with the call's code or message
        return ()
    if status is None:
        return ()
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(
                FieldViolation(str(v.field), str(v.description))
                for v in bad_request.field_violations
            )
    return tuple(found)


def from_rpc_error(error: grpc.RpcError, method: str = "") -> ServewiseError:
    """The :class:`ServewiseError` for an ``RpcError`` raised by a generated stub."""
    # The sync stubs raise an RpcError that is also a grpc.Call (grpc-stubs cannot express it).
    if callable(getattr(error, "code", None)) and callable(getattr(error, "details", None)):
        call = cast(grpc.Call, error)
        return ServewiseError(call.code(), call.details() or "", _violations(call), method=method)
    return ServewiseError(grpc.StatusCode.UNKNOWN, str(error), method=method)
