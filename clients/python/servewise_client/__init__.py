"""Typed Python client for Servewise (``servewise.v1.ServewiseService``).

- :class:`ServewiseClient`: a channel (plaintext, TLS, mutual TLS, bearer token), deadlines,
  retries only on ``UNAVAILABLE``, and typed methods for every RPC.
- :class:`ServewiseError`: a failed RPC with its code and ``BadRequest`` field violations.
- :mod:`servewise_client.specs`: requests from plain dicts, YAML or JSON files.
- :mod:`servewise_client.profile_file`: the profile files ``servewise profile`` writes.
"""

from servewise_client.client import DEFAULT_ADDRESS, RetryPolicy, ServewiseClient
from servewise_client.errors import FieldViolation, ServewiseError
from servewise_client.profile_file import (
    ProfileFile,
    ProfileFileError,
    ProfilePoint,
    read_profile,
    write_profile,
)
from servewise_client.specs import (
    SpecError,
    candidate_pb,
    load_spec,
    optimize_request,
    simulate_request,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "FieldViolation",
    "ProfileFile",
    "ProfileFileError",
    "ProfilePoint",
    "RetryPolicy",
    "ServewiseClient",
    "ServewiseError",
    "SpecError",
    "candidate_pb",
    "load_spec",
    "optimize_request",
    "read_profile",
    "simulate_request",
    "write_profile",
]
