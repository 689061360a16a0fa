"""Keep OpenAI Codex CLI work running across several ChatGPT accounts.

The names an embedder needs are re-exported here: the supervisor, its
config and its run result, the account pool and the account selector, the
rotation policy, its decisions and turn costs, quota snapshots and the quota
service, events, the app-server client, pool, broker and turn runner, and the
root errors. Everything else stays importable from
the module named after its concern:

    errors      the exception tree (drawn in its docstring)
    clock       Clock protocol, SystemClock
    config      config helpers, the environment overlay, child environments
    accounts    AccountPool, Account, account homes, import/login, occupancy
    lease       FileLock, leases and their heartbeat, LeaseBackend
    snapshots   QuotaSnapshot, QuotaWindow, WindowKind and their parsers (pure)
    quota       the usage endpoint source, QuotaService (cache, single flight)
    policy      Pressure, Decision, RotationPolicy (pure, open for subclassing)
    selection   choosing an account: candidates, probing, cooldowns, waits
    sessions    rollout reader, SessionBinder, TurnState, the /proc seam
    hooks       Codex's SessionStart/Stop hooks for a child: flags, trust, inbox
    codex_cli   Codex argv grammar, resume argv, version/feature table
    process     child launch/stop, terminal guard, signal escalation
    events      typed event records, EventSink
    supervisor  Supervisor, the run loop
    appserver   client, turns, broker, pool, home store, quota source
    testing     FakeCodexBackend, the Codex simulator, helpers

The re-exports are imported lazily, on first access: importing one module
(say :mod:`codex_supervisor.policy`) loads only what that module needs, not
the HTTP stack or the process machinery behind the rest of the surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import resolve

if TYPE_CHECKING:
    from .accounts import Account, AccountPool, Cooldown
    from .appserver.broker import AppServerBroker
    from .appserver.client import AppServerClient
    from .appserver.pool import AppServerPool, PoolConfig, SpawnConfig
    from .appserver.turns import TurnResult, run_turn
    from .clock import Clock
    from .errors import ConfigError, QuotaUnavailable, SupervisorError
    from .events import Event, EventSink
    from .policy import (
        Candidate,
        Continue,
        Decision,
        PauseAtBoundary,
        Prewarm,
        RotateAtBoundary,
        RotateNow,
        RotationPolicy,
        Strategy,
        TurnCosts,
        WaitUntil,
    )
    from .process import StopPolicy
    from .quota import QuotaService
    from .selection import AccountSelector
    from .snapshots import QuotaSnapshot, QuotaWindow, WindowKind
    from .supervisor import RunResult, Supervisor, SupervisorConfig

__all__ = [
    "Account",
    "AccountPool",
    "AccountSelector",
    "AppServerBroker",
    "AppServerClient",
    "AppServerPool",
    "Candidate",
    "Clock",
    "ConfigError",
    "Continue",
    "Cooldown",
    "Decision",
    "Event",
    "EventSink",
    "PauseAtBoundary",
    "PoolConfig",
    "Prewarm",
    "QuotaService",
    "QuotaSnapshot",
    "QuotaUnavailable",
    "QuotaWindow",
    "RotateAtBoundary",
    "RotateNow",
    "RotationPolicy",
    "RunResult",
    "SpawnConfig",
    "StopPolicy",
    "Strategy",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorError",
    "TurnCosts",
    "TurnResult",
    "WaitUntil",
    "WindowKind",
    "run_turn",
]

# Where each public name is defined. Keep it in step with __all__ and with the
# TYPE_CHECKING imports above (tests/test_package.py checks all three agree).
_EXPORTS: dict[str, str] = {
    "Account": ".accounts",
    "AccountPool": ".accounts",
    "AccountSelector": ".selection",
    "AppServerBroker": ".appserver.broker",
    "AppServerClient": ".appserver.client",
    "AppServerPool": ".appserver.pool",
    "Candidate": ".policy",
    "Clock": ".clock",
    "ConfigError": ".errors",
    "Continue": ".policy",
    "Cooldown": ".accounts",
    "Decision": ".policy",
    "Event": ".events",
    "EventSink": ".events",
    "PauseAtBoundary": ".policy",
    "PoolConfig": ".appserver.pool",
    "Prewarm": ".policy",
    "QuotaService": ".quota",
    "QuotaSnapshot": ".snapshots",
    "QuotaUnavailable": ".errors",
    "QuotaWindow": ".snapshots",
    "RotateAtBoundary": ".policy",
    "RotateNow": ".policy",
    "RotationPolicy": ".policy",
    "RunResult": ".supervisor",
    "SpawnConfig": ".appserver.pool",
    "StopPolicy": ".process",
    "Strategy": ".policy",
    "Supervisor": ".supervisor",
    "SupervisorConfig": ".supervisor",
    "SupervisorError": ".errors",
    "TurnCosts": ".policy",
    "TurnResult": ".appserver.turns",
    "WaitUntil": ".policy",
    "WindowKind": ".snapshots",
    "run_turn": ".appserver.turns",
}


def __getattr__(name: str) -> Any:
    # __version__ is looked up lazily too, so importing the package never pays
    # for reading distribution metadata.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("codex-supervisor")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    return resolve(__name__, _EXPORTS, globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
