"""Token files and SERVEWISE_TOKENS: parsing, scope lookup, errors that never echo a token, and
the scope table covering every RPC."""

from __future__ import annotations

import io
import json
import logging
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from servewise.auth import (
    METHOD_SCOPES,
    MIN_TOKEN_CHARS,
    AuthConfigError,
    Scope,
    TokenAuthInterceptor,
    load_tokens,
    parse_tokens,
)
from servewise.obs import configure_logging
from servewise.v1 import servewise_pb2

READ = "r" * 8 + "EAD-token-0001"
WRITE = "w" * 8 + "RITE-token-0002"
TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/"

tokens = st.text(TOKEN_CHARS, min_size=MIN_TOKEN_CHARS, max_size=40)
scopes = st.sampled_from(["read", "write", "READ", "Write"])
separators = st.sampled_from(["\n", ",", " , ", "\r\n", "\n# a comment, with commas\n", "\n\n"])


def test_file_format_with_comments_blank_lines_and_commas() -> None:
    """Comments (whole-line and trailing), blank lines and commas separate entries; scope names
    are case-insensitive."""
    table = parse_tokens(
        f"# tokens for servewise\n\nread {READ}   # dashboards\n  WRITE {WRITE},\n",
        "tokens.txt",
    )
    assert len(table) == 2
    assert table.scope_of(READ) is Scope.READ
    assert table.scope_of(WRITE) is Scope.WRITE
    assert table.scope_of(READ[:-1]) is None
    assert table.scope_of(READ + "x") is None
    assert table.scope_of("") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{READ}", "line 1: expected '<scope> <token>'"),
        (f"read {READ} extra", "found 3 words"),
        (f"admin {READ}", "line 1: the scope must be read or write"),
        (f"{READ} read", "the scope must be read or write"),
        ("read short-token", f"at least {MIN_TOKEN_CHARS} characters, this one has 11"),
        ("read " + "x" * 20 + "\u00e9", "may hold only letters, digits"),
        (f"read {READ}\n\nwrite {READ}", "line 3: repeats the token of line 1"),
        (f"read {READ}, read {READ}", "line 1: repeats the token of line 1"),
    ],
)
def test_errors_name_source_and_line_but_not_the_token(text: str, expected: str) -> None:
    """Every malformed entry is rejected with the source and line, and no token text."""
    with pytest.raises(AuthConfigError) as info:
        parse_tokens(text, "tokens.txt")
    message = str(info.value)
    assert message.startswith("tokens.txt line ")
    assert expected in message
    assert READ not in message
    assert "short-token" not in message


@given(
    entries=st.lists(st.tuples(scopes, tokens), min_size=1, max_size=8, unique_by=lambda e: e[1]),
    seps=st.lists(separators, min_size=8, max_size=8),
    prefix=st.sampled_from(["", "# header\n", "\n  \n"]),
)
def test_any_well_formed_listing_parses_to_its_scopes(
    entries: list[tuple[str, str]], seps: list[str], prefix: str
) -> None:
    """Whatever separators and comments surround them, each listed token gets its own scope and
    nothing else is accepted."""
    pairs = zip(entries, seps[: len(entries)], strict=True)
    text = prefix + "".join(f"{scope} {token}{sep}" for (scope, token), sep in pairs)
    table = parse_tokens(text, "env")
    assert len(table) == len(entries)
    for scope, token in entries:
        assert table.scope_of(token) is Scope[scope.upper()]
        assert table.scope_of(token + "A") is None


@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(["read", "write", "admin", ""]),
            st.text(TOKEN_CHARS + "!$ ", min_size=10, max_size=30),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_rejected_listing_never_echoes_its_tokens(entries: list[tuple[str, str]]) -> None:
    """A parse error's message contains none of the listing's would-be tokens."""
    text = "\n".join(f"{scope} {token}" for scope, token in entries)
    try:
        parse_tokens(text, "env")
    except AuthConfigError as exc:
        message = str(exc)
        for _, token in entries:
            for word in token.split():
                if len(word) >= 10:
                    assert word not in message


def test_load_tokens_merges_file_and_env_and_refuses_empty_sources(tmp_path: Path) -> None:
    """No source: auth off (None); file and SERVEWISE_TOKENS together: both tables; a source
    with no token, a token in both, or a missing file: an error, never a silently open server."""
    assert load_tokens(None, None) is None
    assert load_tokens("", "  ") is None
    path = tmp_path / "tokens"
    path.write_text(f"read {READ}\n")
    table = load_tokens(path, f"write {WRITE}")
    assert table is not None
    assert table.scope_of(READ) is Scope.READ
    assert table.scope_of(WRITE) is Scope.WRITE
    path.write_text("# nobody yet\n")
    with pytest.raises(AuthConfigError, match="holds no token"):
        load_tokens(path, None)
    with pytest.raises(AuthConfigError, match="SERVEWISE_TOKENS holds no token"):
        load_tokens(None, "# none")
    path.write_text(f"read {READ}\n")
    with pytest.raises(AuthConfigError, match="configured twice"):
        load_tokens(path, f"write {READ}")
    with pytest.raises(AuthConfigError, match="cannot read tokens file"):
        load_tokens(tmp_path / "missing", None)


def test_every_rpc_has_a_scope() -> None:
    """Each ServewiseService method is classified read or write (an unlisted one would need
    write by default), and exactly the state-changing ones need write."""
    service = servewise_pb2.DESCRIPTOR.services_by_name["ServewiseService"]
    assert set(METHOD_SCOPES) == {f"/{service.full_name}/{m.name}" for m in service.methods}
    writes = {method.rpartition("/")[2] for method, s in METHOD_SCOPES.items() if s is Scope.WRITE}
    assert writes == {"RegisterDeployment", "Control", "EvaluateSwitch"}


@pytest.mark.parametrize(
    ("metadata", "code", "message"),
    [
        ((), "UNAUTHENTICATED", "missing credentials"),
        ((("authorization", f"Basic {READ}"),), "UNAUTHENTICATED", "malformed"),
        ((("authorization", "Bearer"),), "UNAUTHENTICATED", "malformed"),
        ((("authorization", f"Bearer {READ} {READ}"),), "UNAUTHENTICATED", "malformed"),
        (
            (("authorization", f"Bearer {READ}"), ("authorization", f"Bearer {WRITE}")),
            "UNAUTHENTICATED",
            "malformed",
        ),
        ((("authorization", f"Bearer {READ}x"),), "UNAUTHENTICATED", "invalid bearer token"),
        (
            (("authorization", f"Bearer {READ}"),),
            "PERMISSION_DENIED",
            "needs a token with the write scope; this token has read",
        ),
        ((("authorization", f"bearer   {WRITE}"),), None, None),
        ((("Authorization", f"Bearer {WRITE}"),), None, None),
    ],
)
def test_check_outcomes_for_a_write_method(
    metadata: tuple[tuple[str, str], ...], code: str | None, message: str | None
) -> None:
    """The interceptor's decision for RegisterDeployment under each kind of credential; no
    refusal message repeats the token."""
    interceptor = TokenAuthInterceptor(parse_tokens(f"read {READ}\nwrite {WRITE}", "test"))
    outcome = interceptor.check("/servewise.v1.ServewiseService/RegisterDeployment", metadata)
    if code is None:
        assert outcome is None
        return
    assert outcome is not None
    assert outcome[0].name == code
    assert message is not None
    assert message in outcome[1]
    assert READ not in outcome[1]
    assert WRITE not in outcome[1]


def test_open_services_and_unlisted_methods() -> None:
    """Health and reflection need no token; an unlisted method needs write (fail closed)."""
    interceptor = TokenAuthInterceptor(parse_tokens(f"read {READ}", "test"))
    assert interceptor.check("/grpc.health.v1.Health/Check", ()) is None
    assert interceptor.check("/grpc.health.v1.Health/Watch", ()) is None
    assert (
        interceptor.check("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", ())
        is None
    )
    outcome = interceptor.check(
        "/servewise.v1.ServewiseService/SomethingNew", (("authorization", f"Bearer {READ}"),)
    )
    assert outcome is not None
    assert outcome[0].name == "PERMISSION_DENIED"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; the previous logging and structlog set-up restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    previous = structlog.get_config()
    buffer = io.StringIO()
    configure_logging("debug", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**previous)


def test_log_lines_redact_credentials(json_log: io.StringIO) -> None:
    """A log call that carried metadata or a Bearer string, from structlog or the standard
    library, or inside an exception, still writes no token."""
    log = structlog.get_logger("test")
    log.info("call", authorization=f"Bearer {READ}", metadata=[("authorization", READ)])
    log.info("oops", error=f"header was 'Bearer {WRITE}'", nested={"token": WRITE})
    logging.getLogger("stdlib").warning("got bearer %s", READ)
    try:
        raise RuntimeError(f"Bearer {WRITE}")
    except RuntimeError:
        log.exception("failed")
    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["call", "oops", "got bearer [redacted]", "failed"]
    assert READ not in text
    assert WRITE not in text
    assert lines[1]["error"] == "header was 'Bearer [redacted]'"
