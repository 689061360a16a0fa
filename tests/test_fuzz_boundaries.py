"""Hypothesis properties over every boundary that parses untrusted JSON.

Each boundary — the rollout reader, the usage endpoint and the snapshot
parsers, the app-server client, auth.json and JWT reading — must answer any
input with a skip (no record) or an ``errors.*`` exception, never another
exception and never a hang. The strategies mix deep nesting, lines of a few
MB, invalid UTF-8 and truncated JSON; examples are bounded so the file runs in
seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codex_supervisor import errors
from codex_supervisor._jwt import decode_jwt_claims
from codex_supervisor.accounts import AccountPool, Identity, identity_from_auth
from codex_supervisor.appserver import AppServerClient
from codex_supervisor.credentials import last_refresh
from codex_supervisor.quota import UsageCredentials, UsageEndpointSource
from codex_supervisor.sessions import (
    RolloutReader,
    SessionMeta,
    TurnStarted,
    parse_line,
    read_session_meta,
)
from codex_supervisor.snapshots import QuotaSnapshot
from codex_supervisor.testing import FakeClock, make_jwt

OBSERVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Deterministic in CI through the profile tests/conftest.py loads.
FUZZ = settings(
    max_examples=80,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=30)  # for examples that cost a file or an event loop

# -- strategies -------------------------------------------------------------------------------

_OPENERS = [(b"[", b"]"), (b'{"a":', b"}"), (b'{"payload":', b"}"), (b'[{"x":[', b"]}]")]

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def deep_bytes(draw: st.DrawFn) -> bytes:
    """JSON nested far past the recursion limit, sometimes unclosed."""
    opener, closer = draw(st.sampled_from(_OPENERS))
    # Plain integers favour small values: name the sizes that matter too.
    depth = draw(st.sampled_from([1_010, 20_000, 150_000]) | st.integers(1, 150_000))
    closed = draw(st.integers(min_value=0, max_value=depth))
    return opener * depth + b"1" + closer * closed


@st.composite
def huge_bytes(draw: st.DrawFn) -> bytes:
    """A wanted rollout event padded to up to 3 MB."""
    size = draw(st.sampled_from([70_000, 1 << 20, 3 << 20]) | st.integers(0, 3 << 20))
    pad = draw(st.sampled_from([b"x", b"\\u00e9", b"\xff"]))
    return (
        b'{"type":"event_msg","payload":{"type":"task_started","pad":"'
        + pad * (size // len(pad))
        + b'"}}'
    )


def _known_lines() -> st.SearchStrategy[bytes]:
    kinds = st.sampled_from(["session_meta", "event_msg", "response_item", "weird", "\u00e9"])
    events = st.sampled_from(["task_started", "task_complete", "turn_aborted", "token_count"])
    payloads = st.fixed_dictionaries(
        {"type": events},
        optional={
            "id": json_values,
            "turn_id": json_values,
            "rate_limits": json_values,
            "error": json_values,
            "timestamp": json_values,
        },
    )
    lines = st.fixed_dictionaries(
        {"type": kinds, "payload": payloads | json_values},
        optional={"timestamp": json_values, "session_meta": json_values},
    )
    return lines.map(lambda line: json.dumps(line, ensure_ascii=False).encode("utf-8", "replace"))


@st.composite
def mangled(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A line truncated, or with invalid UTF-8 spliced in."""
    data = draw(base)
    where = draw(st.integers(min_value=0, max_value=len(data)))
    how = draw(st.sampled_from(["truncate", "splice", "none"]))
    if how == "truncate":
        return data[:where]
    if how == "splice":
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"\\"]))
        return data[:where] + junk + data[where:]
    return data


lines = st.one_of(
    deep_bytes(),
    deep_bytes().map(
        lambda deep: b'{"type":"event_msg","payload":{"type":"task_started","x":' + deep
    ),
    huge_bytes(),
    st.binary(max_size=300),
    mangled(_known_lines()),
    mangled(json_values.map(lambda v: json.dumps(v).encode())),
)


class _Deep:
    """A deeply nested value, with a short repr: Hypothesis prints examples recursively."""

    def __init__(self, value: Any, depth: int) -> None:
        self.value = value
        self.depth = depth

    def __repr__(self) -> str:
        return f"_Deep(depth={self.depth})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _nest(value: Any, depth: int, key: str) -> _Deep:
    # A chain, not a tree: nothing shared, so nothing blows up if walked.
    for level in range(depth):
        value = {key: value} if level % 2 else [value]
    return _Deep(value, depth)


def _unwrap(value: Any) -> Any:
    if isinstance(value, _Deep):
        return value.value
    if isinstance(value, dict):
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    return value


deep_objects = st.builds(
    _nest,
    json_values,
    st.sampled_from([1_000, 60_000]) | st.integers(0, 60_000),
    st.sampled_from(["primary", "rate_limit", "used_percent", "x"]),
)
objects = json_values | deep_objects

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = b'{"type":"event_msg","payload":{"type":"task_started","pad":"' + b"x" * (3 << 20) + b'"}}'
_EVENT = b'{"type":"event_msg","payload":{"type":"task_started","turn_id":"sentinel"}}\n'

# -- the rollout reader ---------------------------------------------------------------------------


@FEW
@given(st.lists(lines, min_size=1, max_size=3), st.sampled_from([4 << 20, 4 << 20, 1000]))
@example([DEEP, HUGE[:-1000], b"\xff" + DEEP[:500]], 4 << 20)
@example([HUGE, DEEP], 1000)
@example([b'{"type":"\xff","payload":{}}', '{"type":"\u00e9v","payload":{}}'.encode()], 1000)
def test_rollout_reader_skips_what_it_cannot_read(chunks: list[bytes], cap: int) -> None:
    """The reader never raises and never loses the well-formed line after garbage."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rollout.jsonl"
        path.write_bytes(b"\n".join(chunks) + b"\n" + _EVENT)
        reader = RolloutReader(path, max_line_bytes=cap)
        records = reader.read()
        assert isinstance(records[-1], TurnStarted)
        assert records[-1].turn_id == "sentinel"
        assert reader.offset == path.stat().st_size
        meta = read_session_meta(path)
        assert meta is None or isinstance(meta, SessionMeta)


@FUZZ
@given(st.dictionaries(st.sampled_from(["type", "payload", "timestamp", "session_meta"]), objects))
@example(
    {"type": "event_msg", "payload": {"type": "token_count", "rate_limits": _nest(0, 60_000, "x")}}
)
def test_parse_line_returns_a_record_or_none(line: dict[str, Any]) -> None:
    """parse_line of any object is a record or None."""
    parse_line(_unwrap(line), account="a", observed_at=OBSERVED)


# -- quota: the usage endpoint and the snapshot parsers ----------------------------------------


_USAGE_KEYS = ["rate_limit", "plan_type", "credits", "rate_limit_reached_type"]
_WINDOW_KEYS = ["used_percent", "limit_window_seconds", "reset_at", "reset_after_seconds"]


def _shaped(keys: list[str], inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(keys), inner, max_size=len(keys)) | inner


def _usage(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    windows = ["primary_window", "secondary_window", "limit_reached", "allowed"]
    return _shaped(_USAGE_KEYS, _shaped(windows, _shaped(_WINDOW_KEYS, leaves)))


usage_payloads = _usage(objects)
usage_bodies = _usage(json_values).map(lambda v: json.dumps(v).encode())


@FUZZ
@given(usage_payloads, objects)
@example({"rate_limit": _nest([], 60_000, "primary_window")}, _nest([], 60_000, "primary"))
def test_snapshot_parsers_raise_only_quota_parse_error(usage: Any, other: Any) -> None:
    """Every snapshot parser answers a snapshot or QuotaParseError."""
    for parse, payload in (
        (QuotaSnapshot.from_usage_payload, usage),
        (QuotaSnapshot.from_rollout_rate_limits, other),
        (QuotaSnapshot.from_app_server, other),
    ):
        with contextlib.suppress(errors.QuotaParseError):
            parse(_unwrap(payload), account="a", observed_at=OBSERVED)


async def _credentials(account: str) -> UsageCredentials:
    return UsageCredentials(account=account, account_id="acct-1", access_token="t")


async def _fetch(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(
            _credentials, client=client, clock=FakeClock(OBSERVED, autojump=True)
        )
        async with asyncio.timeout(10):
            with contextlib.suppress(errors.QuotaError):
                await source.fetch("a")


@FEW
@given(lines | mangled(usage_bodies))
@example(DEEP)
@example(b'{"rate_limit":' + DEEP + b"}")
def test_usage_endpoint_raises_only_quota_errors(body: bytes) -> None:
    """Whatever a 200 answer holds, fetch returns a snapshot or raises a QuotaError."""
    asyncio.run(_fetch(body))


@pytest.mark.anyio
async def test_usage_endpoint_deeply_nested_answer_is_a_parse_error() -> None:
    """A usage answer nested past the recursion limit raises QuotaParseError."""
    with pytest.raises(errors.QuotaParseError):
        await _fetch_strict(b"[" * 100_000 + b"]" * 100_000)


async def _fetch_strict(body: bytes) -> QuotaSnapshot:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        source = UsageEndpointSource(
            _credentials, client=client, clock=FakeClock(OBSERVED, autojump=True)
        )
        return await source.fetch("a")


# -- the app-server client ----------------------------------------------------------------------


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _survives(data: bytes) -> None:
    reader = asyncio.StreamReader()
    client = AppServerClient(reader, _Sink(), name="fuzz")
    try:
        sub = client.subscribe(["probe"])
        reader.feed_data(data + b"\n")
        reader.feed_data(b'{"method":"probe","params":{}}\n')
        async with asyncio.timeout(10):
            note = await sub.get()
        assert note.method == "probe"
        assert not client.closed
    finally:
        await client.aclose(grace=0.0)


@FEW
@given(lines)
@example(DEEP)
@example(b'{"method":"probe","id":1,"params":' + DEEP + b"}")
@example(HUGE)
def test_client_skips_a_bad_line_and_keeps_the_transport(data: bytes) -> None:
    """One unreadable line is skipped; the next message still arrives."""
    asyncio.run(_survives(data))


# -- auth.json and JWTs -------------------------------------------------------------------------


def _jwt_with_payload(payload: bytes) -> str:
    header, _, signature = make_jwt({}).split(".")
    return f"{header}.{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{signature}"


tokens = st.one_of(
    lines.map(_jwt_with_payload),
    st.text(max_size=60),
    st.builds(".".join, st.lists(st.text(max_size=20), max_size=4)),
)
auth_files = st.one_of(
    lines,
    st.builds(
        lambda token, account, refresh: json.dumps(
            {
                "auth_mode": "chatgpt",
                "tokens": {"id_token": token, "account_id": account, "refresh_token": "rt"},
                "last_refresh": refresh,
            }
        ).encode(),
        tokens,
        st.none() | st.text(max_size=10),
        json_values | st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat),
    ),
)


@FUZZ
@given(auth_files, tokens)
@example(DEEP, _jwt_with_payload(DEEP))
@example(b'{"last_refresh": "2026-01-01T00:00:00"}', "")
@example(b'{"tokens":{"id_token":"' + _jwt_with_payload(DEEP).encode() + b'"}}', "a.b.c")
def test_auth_json_and_jwt_raise_only_auth_errors(data: bytes, token: str) -> None:
    """identity_from_auth answers an Identity or AuthError; JWT and last_refresh never raise."""
    assert isinstance(decode_jwt_claims(token), dict)
    refreshed = last_refresh(data)
    assert refreshed is None or refreshed.tzinfo is not None
    for form in (data, data.decode("utf-8", "surrogateescape")):
        with contextlib.suppress(errors.AuthError):
            assert isinstance(identity_from_auth(form), Identity)


@FEW
@given(auth_files)
@example(DEEP)
def test_import_raises_only_auth_errors(data: bytes) -> None:
    """accounts import of any file answers an account or an AuthError."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "base").mkdir()
        src = root / "auth.json"
        src.write_bytes(data)
        src.chmod(0o600)
        pool = AccountPool(root=root / "pool", base_codex_home=root / "base")
        with contextlib.suppress(errors.AuthError):
            pool.import_auth("a", src)
