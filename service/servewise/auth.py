"""Transport security and bearer-token authorisation for the server.

Two independent layers, each off unless configured (``servewise serve`` flags or environment):

- **TLS** from PEM files (:class:`TlsFiles`): the server's certificate chain and key; with a
  client CA as well, *mutual* TLS, where the handshake itself refuses any client without a
  certificate that CA signed. Everything then rides one encrypted port; nothing is exempt.
- **Bearer tokens** (:class:`TokenTable`, :class:`TokenAuthInterceptor`): every call to
  ``servewise.v1.ServewiseService`` carries ``authorization: Bearer <token>`` metadata, and the
  token's scope must cover the method. Health and reflection stay open, so Kubernetes probes and
  ``grpcurl list`` work without a secret.

Scopes
------
``read``
    Route and the calls that change no stored state: ``Route`` (the load balancer's hot path),
    ``GetDeployment``, ``ListDeployments``, and the pure computations ``OptimizeBatch``,
    ``Simulate``, ``SelectMode`` and ``PlanResources``. A read token can learn what the service
    knows and burn CPU, which is what a dashboard, a planning notebook or a load balancer needs;
    it cannot change what the service will do next.
``write``
    Everything ``read`` may, plus the calls that write state: ``RegisterDeployment`` (creates or
    replaces a deployment), the ``Control`` stream (its samples move deployments between plans and
    persist every transition) and ``EvaluateSwitch``. EvaluateSwitch is computed like a pure
    call, but it appends its decision to the deployment's durable decision log; a read token
    must not be able to grow persisted state without bound or fill the log that operators audit
    switches by, so it is a write.

A method missing from :data:`METHOD_SCOPES` needs ``write`` (fail closed): a new RPC is
unreachable by read tokens until someone decides otherwise here (a test checks every method of
the service is listed).

Secrets
-------
Tokens are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest` against
*every* configured digest, without stopping at a match, so the time taken does not say which
token (or how much of one) matched; hashing first makes every comparison the same length. No
message, log line or exception built here contains a token: parse errors name the source and
line number only.

Token files
-----------
One token per line as ``<scope> <token>`` (scope ``read`` or ``write``); ``#`` starts a comment
(tokens cannot contain ``#``), blank lines are skipped, and entries may also be separated by
commas, which is how ``SERVEWISE_TOKENS`` lists several on one line::

    # dashboards
    read  3q2Pp0Kc1dHn8wYf4Lr6TzVb
    write 9fJx0aQm2Lw7eRt5Yu1IoPs3   # the controller

Tokens are RFC 6750 ``token68`` strings (``A-Z a-z 0-9 - . _ ~ + /``, optional trailing ``=``)
of at least :data:`MIN_TOKEN_CHARS` characters; ``openssl rand -base64 24`` makes a good one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from servewise.obs import ServerInterceptorBase
from servewise.v1 import servewise_pb2

__all__ = [
    "METHOD_SCOPES",
    "MIN_TOKEN_CHARS",
    "OPEN_SERVICES",
    "AuthConfig",
    "AuthConfigError",
    "Scope",
    "TlsFiles",
    "TokenAuthInterceptor",
    "TokenTable",
    "load_tokens",
    "parse_tokens",
]

MIN_TOKEN_CHARS: Final = 16

# RFC 6750 b64token: no whitespace, comma or '#', so separators and comments are unambiguous.
_TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Scope(enum.IntEnum):
    """What a token may do; a larger scope includes the smaller."""

    READ = 1
    WRITE = 2


_SCOPE_NAMES: Final[Mapping[str, Scope]] = {scope.name.lower(): scope for scope in Scope}
_SCOPE_BY_VALUE: Final[Mapping[int, Scope]] = {int(scope): scope for scope in Scope}

_SERVICE: Final[str] = servewise_pb2.DESCRIPTOR.services_by_name["ServewiseService"].full_name

# Services anyone may call: probes and grpcurl must work without a secret.
OPEN_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# The scope each ServewiseService method needs (see the module docstring for why).
METHOD_SCOPES: Final[Mapping[str, Scope]] = {
    f"/{_SERVICE}/{name}": scope
    for name, scope in {
        "Route": Scope.READ,
        "GetDeployment": Scope.READ,
        "ListDeployments": Scope.READ,
        "OptimizeBatch": Scope.READ,
        "Simulate": Scope.READ,
        "SelectMode": Scope.READ,
        "PlanResources": Scope.READ,
        "EvaluateSwitch": Scope.WRITE,
        "RegisterDeployment": Scope.WRITE,
        "Control": Scope.WRITE,
    }.items()
}


class AuthConfigError(ValueError):
    """Unusable TLS or token configuration; the message never contains a token."""


# --- tokens ----------------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


class TokenTable:
    """Configured tokens as (SHA-256 digest, scope) pairs; build with :func:`parse_tokens`."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[bytes, Scope]] = ()) -> None:
        self._entries: tuple[tuple[bytes, Scope], ...] = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the digests: they identify tokens
        return f"TokenTable({len(self)} tokens)"

    def merged(self, other: TokenTable) -> TokenTable:
        """Both tables' tokens; :class:`AuthConfigError` when a token is in both."""
        ours = {digest for digest, _ in self._entries}
        if any(digest in ours for digest, _ in other._entries):
            raise AuthConfigError("the same token is configured twice")
        return TokenTable((*self._entries, *other._entries))

    def scope_of(self, token: str) -> Scope | None:
        """The scope of ``token``, or None when it is not configured.

        Compares against every entry, never stopping early, in time independent of which entry
        (if any) matches.
        """
        presented = _digest(token)
        granted = 0
        for digest, scope in self._entries:
            # int(bool) * scope: no branch on the comparison's outcome.
            granted |= int(hmac.compare_digest(presented, digest)) * int(scope)
        # Duplicates are rejected when parsing, so at most one entry matched.
        return _SCOPE_BY_VALUE.get(granted)


def parse_tokens(text: str, source: str) -> TokenTable:
    """Parse ``<scope> <token>`` entries (see the module docstring for the format).

    Parameters
    ----------
    text:
        The file's or variable's contents.
    source:
        How errors name where the text came from, e.g. the file's path.

    Raises
    ------
    AuthConfigError
        Naming ``source`` and the line, never the token: a missing or unknown scope, a token
        with characters outside token68, shorter than :data:`MIN_TOKEN_CHARS`, or listed twice.

    Examples
    --------
    >>> table = parse_tokens("read aaaaaaaaaaaaaaaa, write bbbbbbbbbbbbbbbb", "env")
    >>> table.scope_of("bbbbbbbbbbbbbbbb")
    <Scope.WRITE: 2>
    >>> table.scope_of("cccccccccccccccc") is None
    True
    """
    entries: list[tuple[bytes, Scope]] = []
    first_line: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source} line {number}"
        for entry in raw.split("#", 1)[0].split(","):
            parts = entry.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise AuthConfigError(
                    f"{where}: expected '<scope> <token>' with scope read or write, "
                    f"found {len(parts)} words"
                )
            scope_name, token = parts
            scope = _SCOPE_NAMES.get(scope_name.lower())
            if scope is None:
                # Not echoed: a line written as '<token> <scope>' would put the token here.
                raise AuthConfigError(f"{where}: the scope must be read or write")
            if not _TOKEN68.fullmatch(token):
                raise AuthConfigError(
                    f"{where}: a token may hold only letters, digits, - . _ ~ + / "
                    "and trailing = signs"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise AuthConfigError(
                    f"{where}: a token needs at least {MIN_TOKEN_CHARS} characters, "
                    f"this one has {len(token)}"
                )
            digest = _digest(token)
            if digest in first_line:
                raise AuthConfigError(f"{where}: repeats the token of line {first_line[digest]}")
            first_line[digest] = number
            entries.append((digest, scope))
    return TokenTable(entries)


def load_tokens(tokens_file: str | Path | None, tokens_env: str | None) -> TokenTable | None:
    """The tokens of ``tokens_file`` and of ``tokens_env`` (``SERVEWISE_TOKENS``'s value).

    Returns None, meaning auth is off, when neither is given (an empty or blank variable counts
    as not given). A file or variable given but holding no token is an error rather than a
    silently open server.
    """
    table: TokenTable | None = None
    if tokens_file:
        try:
            text = Path(tokens_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"cannot read tokens file {tokens_file}: {exc}") from None
        table = parse_tokens(text, str(tokens_file))
        if not table:
            raise AuthConfigError(f"tokens file {tokens_file} holds no token")
    if tokens_env is not None and tokens_env.strip():
        from_env = parse_tokens(tokens_env, "SERVEWISE_TOKENS")
        if not from_env:
            raise AuthConfigError("SERVEWISE_TOKENS holds no token")
        table = from_env if table is None else table.merged(from_env)
    return table


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS; with ``client_ca``, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_paths(
        cls, cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None
    ) -> TlsFiles | None:
        """None when no file is given (plaintext); :class:`AuthConfigError` for half a pair."""
        if not (cert or key or client_ca):
            return None
        if not (cert and key):
            raise AuthConfigError(
                "TLS needs both --tls-cert and --tls-key"
                + (" (--tls-client-ca adds mutual TLS on top of them)" if client_ca else "")
            )
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Read and check the files, then build gRPC's credentials.

        gRPC reports a bad certificate or a key that does not match only at the first handshake,
        as a C-core log line; loading them into an :class:`ssl.SSLContext` first turns that into
        an error at start-up naming the file.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise AuthConfigError(
                f"cannot use TLS certificate {self.cert} with key {self.key}: {exc}"
            ) from None
        client_ca: bytes | None = None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
                client_ca = self.client_ca.read_bytes()
            except (OSError, ssl.SSLError) as exc:
                raise AuthConfigError(f"cannot use client CA {self.client_ca}: {exc}") from None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    @property
    def mode(self) -> str:
        """``"mtls"`` or ``"tls"``, for the start-up log line."""
        return "mtls" if self.client_ca is not None else "tls"


# --- the interceptor -------------------------------------------------------------------------


def _presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The bearer token in ``metadata``; raises ``LookupError`` when absent, ``ValueError``
    when the header is not exactly one well-formed ``Bearer <token68>``."""
    # Plain string operations, not one big regex: this runs on every Route call.
    found: str | bytes | None = None
    for key, value in metadata or ():
        if key.lower() == "authorization":
            if found is not None:  # two headers: ambiguous, refuse rather than pick one
                raise ValueError
            found = value
    if found is None:
        raise LookupError
    if not isinstance(found, str):
        raise ValueError
    scheme, _, token = found.strip().partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not _TOKEN68.fullmatch(token):
        raise ValueError
    return token


def _discard(_data: bytes) -> None:
    """A refused call's request is never decoded: no parsing work for strangers."""


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind that ends the call with ``code`` at once."""

    # One coroutine serves all four kinds: grpc.aio accepts a coroutine as a streaming handler
    # (one that would write with context.write), and this one ends the call before any message.
    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, _discard, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, _discard, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, _discard, serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, _discard, serializer)


class TokenAuthInterceptor(ServerInterceptorBase):
    """Checks ``authorization: Bearer <token>`` and the token's scope on every non-open call.

    No token, a malformed header or an unknown token: ``UNAUTHENTICATED``. A known token whose
    scope does not cover the method: ``PERMISSION_DENIED``. Works for unary and streaming
    methods alike: the refusal happens before the handler runs or reads a message.
    """

    def __init__(self, tokens: TokenTable) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._tokens = tokens

    def check(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may proceed, else the status code and message to refuse it with."""
        service = method.lstrip("/").rpartition("/")[0]
        if service in OPEN_SERVICES:
            return None
        try:
            token = _presented_token(metadata)
        except LookupError:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send the metadata 'authorization: Bearer <token>'",
            )
        except ValueError:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed authorization metadata: expected one 'Bearer <token>'",
            )
        granted = self._tokens.scope_of(token)
        if granted is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
        needed = METHOD_SCOPES.get(method, Scope.WRITE)
        if granted < needed:
            name = method.rpartition("/")[2]
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} needs a token with the {needed.name.lower()} scope; "
                f"this token has {granted.name.lower()}",
            )
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # None for an unknown method (gRPC answers UNIMPLEMENTED); the stubs say otherwise.
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        refusal = self.check(
            handler_call_details.method,
            handler_call_details.invocation_metadata,
        )
        if refusal is None:
            return handler
        return _refusal(handler, *refusal)


# --- the configuration the server takes ------------------------------------------------------


@dataclass(frozen=True)
class AuthConfig:
    """TLS files and tokens for :func:`servewise.server.start_server`; the default is neither."""

    tls: TlsFiles | None = None
    tokens: TokenTable | None = None

    @classmethod
    def from_settings(
        cls,
        *,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_client_ca: str | Path | None = None,
        tokens_file: str | Path | None = None,
        tokens_env: str | None = None,
    ) -> AuthConfig:
        """From ``servewise serve``'s flags; :class:`AuthConfigError` when unusable."""
        return cls(
            tls=TlsFiles.from_paths(tls_cert, tls_key, tls_client_ca),
            tokens=load_tokens(tokens_file, tokens_env),
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """The token check, when tokens are configured."""
        return [TokenAuthInterceptor(self.tokens)] if self.tokens else []

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials, or None for a plaintext port."""
        return self.tls.server_credentials() if self.tls is not None else None

    @staticmethod
    def add_port(
        server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
    ) -> int:
        """Bind ``address``: a TLS port with ``credentials``, else plaintext; the bound port."""
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)

    def describe(self) -> dict[str, Any]:
        """What the start-up log line says: the TLS mode and how many tokens, never which."""
        return {
            "tls": self.tls.mode if self.tls is not None else "off",
            "tokens": len(self.tokens) if self.tokens else 0,
        }
