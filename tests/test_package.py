"""The package surface: __all__, __version__, errors, clock and converter."""

from __future__ import annotations

import ast
import asyncio
import importlib
import pickle
import pkgutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import codex_supervisor
from codex_supervisor import errors
from codex_supervisor._convert import structure, unstructure
from codex_supervisor.clock import Clock, SystemClock


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, unique, and every name in it exists."""
    names = codex_supervisor.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(codex_supervisor, name), name


def test_top_level_surface_stays_small() -> None:
    """The top level holds what an embedder needs (25-40 names); the rest lives in its module."""
    assert 25 <= len(codex_supervisor.__all__) <= 40


@pytest.mark.parametrize("package_name", ["codex_supervisor", "codex_supervisor.appserver"])
def test_lazy_exports_agree_with_all_and_the_type_checking_imports(package_name: str) -> None:
    """Each re-exported name is the object its module defines, named alike in all three lists."""
    package = importlib.import_module(package_name)
    exports: dict[str, str] = package._EXPORTS
    assert set(exports) == set(package.__all__)
    tree = ast.parse(Path(str(package.__file__)).read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    typed = {
        alias.name: "." * node.level + (node.module or "")
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == exports
    for name, module in exports.items():
        defined = getattr(importlib.import_module(module, package_name), name)
        assert getattr(package, name) is defined, name


_BROKER = "codex_supervisor.appserver.broker"


def test_the_broker_runs_as_a_module_without_a_runpy_warning() -> None:
    """``python -m codex_supervisor.appserver.broker``: its package does not import it first."""
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", _BROKER, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert done.stdout.startswith(f"usage: python -m {_BROKER}")


def _modules() -> list[ModuleType]:
    return [codex_supervisor] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(codex_supervisor.__path__, "codex_supervisor.")
    ]


def test_every_modules_all_resolves() -> None:
    """Every module's own __all__ is unique and names only things the module has."""
    for module in _modules():
        names = getattr(module, "__all__", None)
        if names is None:
            continue
        assert len(set(names)) == len(names), module.__name__
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_errors_all_is_sorted_and_re_exported_unchanged() -> None:
    """errors.__all__ is sorted and complete; re-exports elsewhere are the same classes."""
    names = errors.__all__
    assert names == sorted(names)
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == set(names)
    for module in _modules():
        for name in getattr(module, "__all__", ()):
            if name in names:
                assert getattr(module, name) is getattr(errors, name), f"{module.__name__}.{name}"


def test_every_library_error_lives_in_errors() -> None:
    """No module defines a public SupervisorError of its own: the tree is in one place."""
    for module in _modules():
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, errors.SupervisorError):
                assert value.__module__ == "codex_supervisor.errors", f"{module.__name__}.{name}"


def test_version_is_a_string() -> None:
    """__version__ is looked up lazily from the installed metadata."""
    assert isinstance(codex_supervisor.__version__, str)
    assert codex_supervisor.__version__
    with pytest.raises(AttributeError):
        _ = codex_supervisor.does_not_exist  # type: ignore[attr-defined]


def test_every_error_derives_from_the_root() -> None:
    """All library errors are SupervisorErrors; the builtin bases match their meaning."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.SupervisorError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.LeaseTimeout, TimeoutError)
    assert issubclass(errors.TransportClosed, ConnectionError)
    assert issubclass(errors.CodexNotFoundError, FileNotFoundError)
    assert issubclass(errors.BrokerAlreadyRunning, errors.AppServerError)
    assert issubclass(errors.BrokerAlreadyRunning, FileExistsError)
    assert issubclass(errors.LeaseLost, errors.LeaseError)


@pytest.mark.parametrize(
    "error",
    [
        errors.SupervisorError("plain"),
        errors.ConfigError("bad"),
        errors.UnsupportedCodexVersion("0.100.0", "0.169.0"),
        errors.LeaseTimeout("pool", 2.5, holder="pid 12"),
        errors.LeaseLost("account.a", "host-1-ab12", "record is gone"),
        errors.TransportClosed("app-server exited", returncode=3, stderr_tail="boom"),
        errors.RequestFailed("turn/start", -32600, "invalid", {"x": 1}),
        errors.SpawnError("ws-1", "was not ready within 30s", -9, "tail"),
        errors.BrokerAlreadyRunning("/run/codex/broker.sock"),
        errors.HomeNotFound("ws-1"),
        errors.UnsafeArchive("../x", "escapes the destination"),
        errors.StaleArchive("ws-1", 3, 5),
    ],
)
def test_errors_pickle_round_trip(error: errors.SupervisorError) -> None:
    """Errors survive pickling with their attributes and message."""
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_error_messages_carry_their_details() -> None:
    """Structured errors say what went wrong in their message."""
    assert "pid 12" in str(errors.LeaseTimeout("pool", 1, holder="pid 12"))
    assert "exit code 3" in str(errors.TransportClosed("gone", returncode=3))
    assert "0.100.0" in str(errors.UnsupportedCodexVersion("0.100.0", "0.169.0"))
    assert "exit code -9" in str(errors.SpawnError("k", "not ready", -9))
    assert "version 3" in str(errors.StaleArchive("k", 3, 5))
    assert "record is gone" in str(errors.LeaseLost("acct", "me", "record is gone"))
    assert "/s.sock" in str(errors.BrokerAlreadyRunning("/s.sock"))
    assert issubclass(errors.HomeNotFound, LookupError)
    assert issubclass(errors.UnsafeArchive, ValueError)


def test_system_clock_is_a_clock() -> None:
    """SystemClock satisfies the Clock protocol and returns aware UTC times."""
    clock = SystemClock()
    assert isinstance(clock, Clock)
    assert clock.now().tzinfo is UTC
    first = clock.monotonic()
    assert clock.monotonic() >= first
    asyncio.run(clock.sleep(-1))  # a negative sleep is clamped, not an error
    assert repr(clock) == "SystemClock()"


@attrs.frozen(kw_only=True)
class _Sample:
    name: str
    at: datetime
    count: int = 0
    note: str | None = None


_aware = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by API
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(name=st.text(), at=_aware, count=st.integers(), note=st.none() | st.text())
def test_converter_round_trips_value_objects(
    name: str, at: datetime, count: int, note: str | None
) -> None:
    """unstructure then structure gives back an equal value object."""
    value = _Sample(name=name, at=at, count=count, note=note)
    assert structure(unstructure(value), _Sample) == value


def test_converter_accepts_epoch_and_naive_times_as_utc() -> None:
    """Epoch numbers and naive ISO strings structure to aware UTC datetimes."""
    at = structure({"name": "x", "at": 0}, _Sample).at
    assert at == datetime(1970, 1, 1, tzinfo=UTC)
    naive = structure({"name": "x", "at": "2026-01-01T00:00:00"}, _Sample).at
    assert naive.tzinfo is UTC
    offset = structure({"name": "x", "at": "2026-01-01T01:00:00+01:00"}, _Sample).at
    assert offset == datetime(2026, 1, 1, tzinfo=UTC)
    assert offset.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize(
    "data",
    [
        {"at": "2026-01-01T00:00:00Z"},
        {"name": "x", "at": "not a date"},
        {"name": "x", "at": [1]},
        {"name": "x", "at": True},
        "not a mapping",
    ],
)
def test_converter_translates_bad_input_to_state_error(data: object) -> None:
    """Malformed JSON raises StateError, never a cattrs exception."""
    with pytest.raises(errors.StateError, match="malformed sample"):
        structure(data, _Sample, what="sample")


_SUBMODULE_ACCESS = """
import sys
import codex_supervisor.appserver as appserver
assert "codex_supervisor.appserver.client" not in sys.modules  # still lazy
assert appserver.client is sys.modules["codex_supervisor.appserver.client"]
assert appserver.client.AppServerClient is appserver.AppServerClient
for name in ("broker", "homestore", "pool", "quota_source", "turns"):
    assert getattr(appserver, name).__name__ == f"codex_supervisor.appserver.{name}"
for name in ("no_such_module", "__wrapped__", "_private"):
    try:
        getattr(appserver, name)
    except AttributeError as exc:
        assert repr(name) in str(exc), exc
    else:
        raise AssertionError(name)
assert not hasattr(appserver, "no_such_module")
import codex_supervisor
assert "codex_supervisor.sessions" not in sys.modules  # still lazy
assert codex_supervisor.sessions.SessionBinder.__module__ == "codex_supervisor.sessions"
assert codex_supervisor.appserver is appserver
assert not hasattr(codex_supervisor, "no_such_module")
print("ok")
"""


def test_the_lazy_packages_still_give_their_submodules() -> None:
    """``import codex_supervisor.appserver as a; a.client`` works as it did before it was lazy.

    So does ``codex_supervisor.sessions`` after a bare ``import codex_supervisor``.

    In a fresh interpreter: here other tests have imported every submodule already.
    """
    done = subprocess.run(
        [sys.executable, "-c", _SUBMODULE_ACCESS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
