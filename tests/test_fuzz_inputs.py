"""Hypothesis properties over the local inputs the library reads: files it shares, argv.

The pool state file and its quarantine, lease records, Codex's config.toml
(and the TOML the pool writes), the sessions folder and rollouts being
appended to, and the Codex command line: each must answer
any input with a normal result, a logged skip or an ``errors.*`` exception —
never another exception, never a hang, never memory that grows with the input
beyond a fixed bound. Strategies start from what the library writes and break
it (wrong types at any path, truncation, invalid UTF-8, deep nesting, huge
values), and mix in raw bytes. Examples are derandomized and bounded so the
file runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import tomllib
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codex_supervisor import _toml, errors
from codex_supervisor.accounts import Account, AccountPool
from codex_supervisor.codex_cli import (
    CodexVersion,
    Invocation,
    Mode,
    VersionFeatures,
    features_for,
    launch_argv,
    parse_argv,
    resume_argv,
)
from codex_supervisor.lease import FileLeaseBackend, LeaseMode, LeaseRecord
from codex_supervisor.quota import read_chatgpt_base_url
from codex_supervisor.sessions import (
    RolloutReader,
    SessionBinder,
    SessionMeta,
    parse_line,
    read_session_meta,
)
from codex_supervisor.snapshots import QuotaSnapshot, SnapshotSource, WindowKind
from codex_supervisor.testing import FakeClock

OBSERVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Deterministic in CI through the profile tests/conftest.py loads.
FUZZ = settings(
    max_examples=80,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=60)  # for examples that cost files, locks or an event loop

# -- shared strategies ------------------------------------------------------------------------

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
# Values that hit the converters' edges: datetimes out of range, time stamps
# that overflow, numbers past any limit, strings that are almost right.
edge_values = st.sampled_from(
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "2026-05-01T12:00:00",
        "2026-13-01T00:00:00Z",
        "",
        "\u00e9",
        "\ud800",
        "a\x00b",
        1e308,
        -1e308,
        2**64,
        -(2**63),
        10**30,
        -1,
        True,
        "five_hour",
        "exclusive",
        "shared",
        "x" * 70_000,
    ]
)
leaf_values = json_values | edge_values
DEEP_MARK = "\x00deep\x00"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if new is _DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(value[head], rest, new)
        return copy
    copy_list = list(value)
    if new is _DELETE and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replace(value[head], rest, new)
    return copy_list


_DELETE = object()


@st.composite
def broken_json(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """``template`` with values at a few paths replaced, deleted or nested deeply, then encoded.

    Sometimes truncated or with an invalid UTF-8 byte spliced in.
    """
    document: Any = template
    paths = _paths(template)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths))
        new = draw(
            st.one_of(leaf_values, leaf_values, leaf_values, st.just(_DELETE), st.just(DEEP_MARK))
        )
        if new is _DELETE and not path:
            continue
        document = _replace(document, path, new)
        paths = _paths(document)
    data = json.dumps(document).encode()
    depth = draw(st.sampled_from([10, 5_000, 100_000]))
    data = data.replace(
        json.dumps(DEEP_MARK).encode(),
        b"[" * depth + b"1" + b"]" * draw(st.sampled_from([0, depth])),
    )
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "splice"]))
    where = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:where]
    if how == "splice":
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"\\"]))
        return data[:where] + junk + data[where:]
    return data


raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"\xff\xfe",
            b"[" * 100_000,
            b'{"version": 1, "accounts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            b'{"version": 1, "accounts": {"a": ' + b"x" * (2 << 20) + b"}}",
            b"null",
            b"[]",
            b'{"version": "1"}',
            b'{"version": 99}',
        ]
    ),
)


# -- the pool state file ----------------------------------------------------------------------

STATE = json.loads(
    """{"version": 1, "accounts": {"a": {"name": "a", "identity": {"auth_mode": "chatgpt",
    "account_id": "acct-1", "email": "a@x", "plan_type": null, "user_id": null},
    "added_at": "2026-05-01T12:00:00+00:00", "last_snapshot": {"account": "a", "windows": [
    {"used_percent": 50.0, "window_minutes": 300, "resets_at": "2026-05-01T12:00:00+00:00",
    "kind": "five_hour"}, {"used_percent": 5.0, "window_minutes": 10080, "resets_at": null,
    "kind": "weekly"}], "plan_type": "plus", "credits": {"has_credits": true, "unlimited": false,
    "balance": "1"}, "limit_reached": false, "source": "usage_endpoint",
    "observed_at": "2026-05-01T12:00:00+00:00", "limit_id": "codex"}, "cooldowns": [
    {"window": "five_hour", "blocked_until": "2026-05-01T13:00:00+00:00", "reason": "r",
    "recorded_at": "2026-05-01T12:00:00+00:00"}]}}}"""
)


def _use_pool(pool: AccountPool) -> None:
    """Read the state, then change and re-read it as a supervisor would."""
    accounts = pool.accounts()
    assert all(isinstance(account, Account) for account in accounts)
    for account in accounts:
        blocked = account.blocked_until(OBSERVED)
        assert blocked is None or blocked > OBSERVED
    for account in accounts[:2]:
        snapshot = QuotaSnapshot(
            account=account.name, source=SnapshotSource.USAGE_ENDPOINT, observed_at=OBSERVED
        )
        with contextlib.suppress(errors.ConfigError):
            pool.record_snapshot(snapshot)
        with contextlib.suppress(errors.ConfigError):
            pool.set_cooldown(
                account.name,
                window=WindowKind.WEEKLY,
                blocked_until=OBSERVED + timedelta(hours=1),
                reason="fuzz",
            )
    # What the library wrote back, it reads back.
    assert [a.name for a in pool.accounts()] == [a.name for a in accounts]


@pytest.mark.timeout(90)
@FEW
@given(st.one_of(broken_json(STATE), broken_json(STATE), broken_json(STATE), raw_bytes))
@example(json.dumps(STATE).encode())
@example(
    b'{"version": 1, "accounts": {"../x": ' + json.dumps(STATE["accounts"]["a"]).encode() + b"}}"
)
def test_pool_state_loads_or_raises_state_error(data: bytes) -> None:
    """Any state.json loads into accounts or raises StateError, and is then left untouched."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "base").mkdir()
        pool = AccountPool(
            root=root / "pool", base_codex_home=root / "base", clock=FakeClock(OBSERVED)
        )
        pool.root.mkdir()
        pool.state_path.write_bytes(data)
        try:
            _use_pool(pool)
        except errors.StateError:
            assert pool.state_path.read_bytes() == data


_STAMPS = ["20260501T120000Z", "00010101T000000+0500", "99991231T235959-0500", "2026", "", "x"]
quarantine_names = st.tuples(
    st.sampled_from(_STAMPS),
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), max_size=20),
).map(lambda parts: f"{parts[0]}-{parts[1]}-auth.json")


@pytest.mark.timeout(60)
@FEW
@given(st.lists(st.tuples(quarantine_names, st.none() | st.binary(max_size=40)), max_size=3))
@example([("00010101T000000+0500-x-auth.json", b"\xff\xfe")])
def test_quarantine_listing_reads_any_names_and_reasons(
    entries: list[tuple[str, bytes | None]],
) -> None:
    """quarantined() lists any file names and reason bytes, each with an aware time."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "base").mkdir()
        pool = AccountPool(root=root / "pool", base_codex_home=root / "base")
        where = pool.quarantine_path / "a"
        where.mkdir(parents=True)
        for name, reason in entries:
            with contextlib.suppress(OSError):  # a name too long for the file system
                (where / name).write_bytes(b"{}")
                if reason is not None:
                    (where / f"{name}.reason").write_bytes(reason)
        for held in pool.quarantined():
            assert held.account == "a"
            assert held.since.utcoffset() is not None
            assert isinstance(held.reason, str)


# -- lease records ----------------------------------------------------------------------------

RECORD = {
    "name": "n",
    "owner": "o1",
    "mode": "exclusive",
    "pid": 1,
    "host": "h",
    "acquired_at": "2026-05-01T11:59:00+00:00",
    "expires_at": "2026-05-01T12:01:00+00:00",
    "purpose": "p",
}
HELD = LeaseRecord(
    name="n",
    owner="o1",
    mode=LeaseMode.EXCLUSIVE,
    pid=1,
    host="h",
    acquired_at=datetime(2026, 5, 1, 11, 59, tzinfo=UTC),
    expires_at=datetime(2026, 5, 1, 12, 1, tzinfo=UTC),
)


async def _use_leases(backend: FileLeaseBackend) -> None:
    async with asyncio.timeout(20):
        for live in await backend.holders("n"):
            assert isinstance(live, LeaseRecord)
        _, record = await backend.renew(HELD, 30.0)
        assert isinstance(record, LeaseRecord)
        for mode in (LeaseMode.SHARED, LeaseMode.EXCLUSIVE):
            got = await backend.try_acquire("n", owner="o2", mode=mode, ttl=30.0)
            assert got is None or isinstance(got, LeaseRecord)
        await backend.release(HELD)
        for live in await backend.holders("n"):
            assert isinstance(live, LeaseRecord)


@pytest.mark.timeout(90)
@FEW
@given(
    st.one_of(broken_json(RECORD), broken_json(RECORD), broken_json(RECORD), raw_bytes),
    st.sampled_from([0.0, 300.0]),
)
@example(json.dumps(RECORD).encode(), 300.0)
@example(b"x" * (64 * 1024 + 1), 300.0)
def test_lease_records_read_or_are_skipped(data: bytes, grace: float) -> None:
    """A record file of any bytes is a claim, an unreadable entry, or LeaseError."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "n").mkdir()
        (root / "n" / "o1.json").write_bytes(data)
        backend = FileLeaseBackend(root, clock=FakeClock(OBSERVED), corrupt_grace=grace)
        with contextlib.suppress(errors.LeaseError):
            asyncio.run(_use_leases(backend))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink-to-fifo", "symlink-to-dev-zero"])
def test_a_record_that_is_no_file_never_hangs(tmp_path: Path, kind: str) -> None:
    """A fifo or folder where a record belongs is set aside; reading it never blocks."""
    folder = tmp_path / "n"
    folder.mkdir()
    path = folder / "o1.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "fifo")
        path.symlink_to(tmp_path / "fifo")
    else:
        path.symlink_to("/dev/zero")
    backend = FileLeaseBackend(tmp_path, clock=FakeClock(OBSERVED))
    assert asyncio.run(backend.holders("n")) == []
    got = asyncio.run(backend.try_acquire("n", owner="o2", mode=LeaseMode.EXCLUSIVE, ttl=30.0))
    assert got is not None
    assert os.path.lexists(folder / "o1.json.corrupt")
    assert not os.path.lexists(path)


# -- config.toml ------------------------------------------------------------------------------

toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
toml_documents = st.dictionaries(
    st.sampled_from(["chatgpt_base_url", "model", "profiles", "mcp_servers", "a.b"])
    | st.text(max_size=6),
    toml_values,
    max_size=4,
)


def _dotted(parts: int, *, header: bool = False, lines: int = 1) -> str:
    key = ".".join(["a"] * parts)
    if header:
        return f"[{key}]\n" + "".join(f"k{i}.x = 1\n" for i in range(lines))
    return "".join(f"k{i}.{key} = 1\n" for i in range(lines))


toml_texts = st.one_of(
    toml_documents.map(_toml.dumps),
    st.text(max_size=80),
    st.sampled_from(
        [
            "chatgpt_base_url = " + "[" * 5000 + "]" * 5000,
            "chatgpt_base_url = " + "{a=" * 5000 + "1" + "}" * 5000,
            "x = " + "[" * 300 + "]" * 300,
            _dotted(3000),
            _dotted(3000, header=True),
            _dotted(40, header=True, lines=200),
            'chatgpt_base_url = "' + "x" * (2 << 20) + '"',
            "chatgpt_base_url = 1",
            'chatgpt_base_url = "  "',
            'chatgpt_base_url = ["a"]',
            '[projects."/home/u/a.b.c"]\ntrust_level = "trusted"\n',
        ]
    ),
)


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    data = draw(toml_texts).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["none", "none", "truncate", "splice"]))
    where = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:where]
    if how == "splice":
        return (
            data[:where] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\r"])) + data[where:]
        )
    return data


@pytest.mark.timeout(60)
@FUZZ
@given(config_files())
@example(b"chatgpt_base_url = " + b"[" * 5_000)
def test_config_toml_reads_or_raises_config_error(data: bytes) -> None:
    """read_chatgpt_base_url of any config.toml is a non-empty string or ConfigError."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.toml").write_bytes(data)
        try:
            url = read_chatgpt_base_url(Path(folder))
        except errors.ConfigError:
            return
        assert isinstance(url, str)
        assert url.strip()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param(_dotted(20_000), id="one-long-dotted-key"),
        pytest.param(_dotted(20_000, header=True, lines=2), id="one-long-table-header"),
        pytest.param(_dotted(2_000, header=True, lines=2_000), id="a-long-header-and-many-keys"),
    ],
)
def test_config_toml_dotted_keys_cost_bounded_memory(tmp_path: Path, text: str) -> None:
    """Dotted keys of many parts are refused before tomllib spends quadratic memory on them.

    tomllib keeps every prefix of a dotted key: 20 000 parts (40 KB of text)
    cost 1.6 GB, 100 000 parts exhaust any machine.
    """
    (tmp_path / "config.toml").write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(errors.ConfigError, match="dotted"):
            read_chatgpt_base_url(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


class _Odd:
    """A document Hypothesis must not print recursively (nested deeply, or containing itself)."""

    def __init__(self, value: dict[str, Any], name: str) -> None:
        self.value = value
        self.name = name

    def __repr__(self) -> str:
        return f"_Odd({self.name})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _nested(depth: int) -> _Odd:
    document: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        document = {"t": document}
    return _Odd(document, f"depth={depth}")


def _cyclic() -> _Odd:
    document: dict[str, Any] = {}
    document["self"] = document
    return _Odd(document, "cyclic")


@FUZZ
@given(
    toml_documents
    | st.dictionaries(
        st.text(max_size=4), st.text(alphabet="a\ud800\udcff", max_size=4), max_size=2
    )
    | st.dictionaries(st.text(alphabet="b\udfff", min_size=1, max_size=3), st.just(1), max_size=2)
    | st.sampled_from([_nested(5_000), {"x": [[[[[[]]]]]]}, _cyclic(), {"x": {"y": [{"z": {}}]}}])
)
@example({"x": "\ud800"})
@example({"\udfff": 1})
@example(_nested(5_000))
@example(_cyclic())
def test_toml_writer_writes_utf8_that_reads_back_or_raises_type_error(
    document: dict[str, Any] | _Odd,
) -> None:
    """_toml.dumps answers UTF-8 TOML that reads back equal, or TypeError (never RecursionError)."""
    if isinstance(document, _Odd):
        document = document.value
    try:
        text = _toml.dumps(document)
    except TypeError:
        return
    text.encode("utf-8")  # the pool writes it as UTF-8
    assert tomllib.loads(text) == document


# -- the sessions folder and rollouts being appended to ---------------------------------------

SESSION_ID = "019a0000-0000-7000-8000-000000000001"
LAUNCHED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)

META: dict[str, Any] = {
    "timestamp": "2026-05-01T12:00:01.000Z",
    "type": "session_meta",
    "payload": {
        "id": SESSION_ID,
        "timestamp": "2026-05-01T12:00:01.000Z",
        "cwd": "WORK",
        "originator": "codex_cli_rs",
        "cli_version": "0.169.0",
        "source": "cli",
        "model_provider": "openai",
    },
}


@st.composite
def first_lines(draw: st.DrawFn) -> bytes:
    line = draw(
        broken_json(META)
        | raw_bytes
        | st.sampled_from(
            [
                json.dumps({**META, "payload": {**META["payload"], "cwd": cwd}}).encode()
                for cwd in ["a\x00b", "\ud800", "/" + "x" * 5000, "", "relative/../x", "\udcff"]
            ]
        )
    )
    return line + draw(st.sampled_from([b"\n", b"", b"\n\xff\xfe garbage\n"]))


@pytest.mark.timeout(90)
@FEW
@given(first_lines(), st.sampled_from(["file", "file", "folder", "fifo", "symlink"]))
@example(
    json.dumps({**META, "payload": {**META["payload"], "cwd": "a\x00b"}}).encode() + b"\n", "file"
)
@example(
    json.dumps({**META, "payload": {**META["payload"], "cwd": "\ud800"}}).encode() + b"\n", "file"
)
@example(json.dumps(META).encode() + b"\n", "file")
def test_sessions_scanner_binds_or_skips(first: bytes, kind: str) -> None:
    """bind_new, resolve_last and find_by_id read any first line without raising."""
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        work = Path(folder) / "work"
        work.mkdir()
        local = (LAUNCHED + timedelta(seconds=1)).astimezone()
        day = home / "sessions" / local.strftime("%Y/%m/%d")
        day.mkdir(parents=True)
        path = day / f"rollout-{local.strftime('%Y-%m-%dT%H-%M-%S')}-{SESSION_ID}.jsonl"
        first = first.replace(b"WORK", str(work).encode())
        if kind == "file":
            path.write_bytes(first)
        elif kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            (Path(folder) / "target").write_bytes(first)
            path.symlink_to(Path(folder) / "target")
        binder = SessionBinder(home, clock=FakeClock(LAUNCHED))
        attempt = binder.bind_new(cwd=work, launched_at=LAUNCHED)
        assert attempt.binding is None or attempt.binding.session_id == SESSION_ID
        if (
            kind == "file"
            and first == json.dumps(META).encode().replace(b"WORK", bytes(work)) + b"\n"
        ):
            assert attempt.binding is not None, attempt.reason  # the unbroken line binds
        last = binder.resolve_last(cwd=work, interactive_only=False)
        assert last is None or last.session_id == SESSION_ID
        found = binder.find_by_id(SESSION_ID)
        assert found is None or found.session_id == SESSION_ID
        if kind != "fifo":
            meta = read_session_meta(path)
            assert meta is None or isinstance(meta, SessionMeta)


_EVENT = b'{"type":"event_msg","payload":{"type":"task_started","turn_id":"t"}}'
rollout_lines = st.one_of(
    st.just(_EVENT),
    st.just(b'{"type":"event_msg","payload":{"type":"task_complete","turn_id":"t"}}'),
    st.just(json.dumps(META).encode()),
    broken_json(json.loads(_EVENT)),
    st.binary(max_size=40),
    st.sampled_from([b"\xff" * 3000, b"x" * 5000, "\u00e9".encode() * 1500]),
)


@pytest.mark.timeout(60)
@FUZZ
@given(st.lists(rollout_lines, max_size=8), st.lists(st.integers(0, 20_000), max_size=6))
def test_rollout_read_in_appends_equals_one_read(lines: list[bytes], cuts: list[int]) -> None:
    """A rollout read as it grows, cut anywhere (mid-line, mid-UTF-8), reads as in one go."""
    data = b"\n".join(lines) + b"\n" if lines else b""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rollout.jsonl"
        path.write_bytes(data)
        whole = RolloutReader(path, max_line_bytes=4000)
        expected = whole.read()
        path.write_bytes(b"")
        growing = RolloutReader(path, max_line_bytes=4000)
        seen = []
        written = 0
        for cut in sorted({min(cut, len(data)) for cut in cuts} | {len(data)}):
            with path.open("ab") as fh:
                fh.write(data[written:cut])
            written = cut
            seen += growing.read()
            assert growing.offset <= written
        assert seen == expected
        assert growing.offset == whole.offset == len(data)
        assert growing.state == whole.state


@pytest.mark.parametrize("event", [[], {}, ["task_started"], {"task_started": 1}])
def test_an_event_type_that_is_no_string_is_skipped(tmp_path: Path, event: object) -> None:
    """An event_msg whose payload type is a list or an object is skipped, not a TypeError."""
    line = {"type": "event_msg", "payload": {"type": event, "turn_id": "t"}}
    assert parse_line(line, account="a") is None
    path = tmp_path / "rollout.jsonl"
    path.write_bytes(json.dumps(line).encode() + b"\n" + _EVENT + b"\n")
    assert [type(r).__name__ for r in RolloutReader(path).read()] == ["TurnStarted"]


@pytest.mark.timeout(60)
def test_an_endless_line_is_never_held_whole(tmp_path: Path) -> None:
    """A 48 MB line is skipped with bounded memory; the event after it is still read."""
    path = tmp_path / "rollout.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"type":"event_msg","payload":{"type":"task_started","pad":"')
        for _ in range(48):
            fh.write(b"x" * (1 << 20))
        fh.write(b'"}}\n' + _EVENT + b"\n")
    reader = RolloutReader(path, max_line_bytes=1 << 20)
    tracemalloc.start()
    try:
        records = reader.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(r).__name__ for r in records] == ["TurnStarted"]
    assert reader.lines_skipped == 1
    assert peak < 8 << 20, peak


# -- the Codex command line -------------------------------------------------------------------

NEW_SID = "019a0000-0000-7000-8000-0000000000ff"
_WORDS = [
    "exec",
    "e",
    "resume",
    "fork",
    "help",
    "login",
    "--",
    "-",
    "",
    "--last",
    "--all",
    "-m",
    "--model=x",
    "-mX",
    "-c",
    "features.x=true",
    "-i",
    "--image",
    "-C",
    "--cd=/tmp",
    "-s",
    "--enable",
    "--disable",
    "-h",
    "--remote",
    "--no-daemon",
    "--json",
    "--color",
    "-o",
    NEW_SID,
]
words = st.one_of(
    st.sampled_from(_WORDS),
    st.text(max_size=12),
    st.text(alphabet="-=\x00\u202e\u0301\ud800\udcff\ufeff a", max_size=6),
    st.sampled_from(["x" * 100_000, "-" * 5_000, "--" + "m" * 5_000 + "=v"]),
)
FEATURES = [features_for(CodexVersion(0, 169, 0)), features_for(CodexVersion(0, 157, 0))]
# Values and positionals Codex would take: anything not option-like, weird or not.
odd_words = st.one_of(
    st.text(max_size=8),
    st.text(alphabet="=:.\x00\u202e\u0301\ud800\udcff\ufeff\u00e9 a/", max_size=6),
    st.sampled_from(["", "-", "resume", "exec", "e", "fork", "login", NEW_SID, "x" * 100_000]),
).filter(lambda word: not word.startswith("-") or word == "-")
_VALUED = ["-m", "--model", "-c", "--enable", "--disable", "-C", "--cd", "-s", "-p", "--add-dir"]
_VALUED += ["-i", "--image", "-o", "--color", "--output-schema", "-a"]
_FLAGS = ["--no-daemon", "--search", "--last", "--all", "--json", "--oss", "--ephemeral"]


@st.composite
def option_groups(draw: st.DrawFn) -> list[str]:
    """A few options in clap's spellings, values drawn from odd_words."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(_FLAGS)))
            continue
        name, value = draw(st.sampled_from(_VALUED)), draw(odd_words)
        if name.startswith("--") and draw(st.booleans()):
            out.append(f"{name}={value}")
        elif not name.startswith("--") and value and draw(st.booleans()):
            out.append(name + value)
        else:
            out += [name, value]
    return out


@st.composite
def shaped_argv(draw: st.DrawFn) -> list[str]:
    """Options, a subcommand, its options, then positionals (maybe after ``--``)."""
    command = draw(
        st.sampled_from([[], [], ["resume"], ["fork"], ["exec"], ["e"], ["exec", "resume"]])
    )
    positionals = draw(st.lists(odd_words, max_size=2))
    end = ["--"] if draw(st.booleans()) else []
    return [*draw(option_groups()), *command, *draw(option_groups()), *end, *positionals]


def _rebuilt_mode(inv: Invocation) -> Mode:
    return Mode.EXEC_RESUME if inv.is_exec else Mode.RESUME


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=200)
@given(
    shaped_argv()
    | shaped_argv()
    | st.lists(words, max_size=20)
    | st.lists(st.sampled_from(_WORDS), min_size=500, max_size=2_000),
    st.sampled_from(FEATURES),
    st.none() | odd_words | words,
    st.sampled_from([NEW_SID, "name", "-dash", "resume", "exec", "--", "\ud800"]),
)
@example(["exec", "resume", "--last", "--", "-x"], FEATURES[0], "-", NEW_SID)
def test_any_argv_is_classified_and_rebuilt_without_surprises(
    argv: list[str], features: VersionFeatures, prompt: str | None, session: str
) -> None:
    """parse_argv never needs its last-resort guard; a rebuild resumes exactly ``session``."""
    inv = parse_argv(argv)
    assert inv.argv == tuple(argv)
    assert not inv.reason.startswith("unreadable argv"), inv.reason
    launched = launch_argv(inv, features)
    assert launched[len(launched) - len(argv) :] == list(argv)
    if inv.mode is Mode.PASSTHROUGH:
        with pytest.raises(errors.ConfigError):
            resume_argv(inv, session, features, prompt=prompt)
        return
    try:
        rebuilt = resume_argv(inv, session, features, prompt=prompt)
    except errors.ConfigError:
        assert inv.is_exec
        assert prompt is None
        return
    again = parse_argv(rebuilt)
    assert again.mode is _rebuilt_mode(inv), (rebuilt, again.reason)
    assert again.session_ref == session
    assert again.prompt == prompt
    assert not again.last


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=20)
@given(st.lists(st.binary(max_size=8) | st.integers() | st.floats(), max_size=5))
def test_argv_of_non_strings_is_read_as_their_text(argv: list[object]) -> None:
    """Arguments that are not strings (bytes, numbers) are classified by their str()."""
    inv = parse_argv(argv)  # type: ignore[arg-type]
    assert inv.argv == tuple(str(a) for a in argv)
