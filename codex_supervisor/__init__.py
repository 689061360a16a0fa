"""Keep OpenAI Codex CLI work running across several ChatGPT accounts.

The public surface is re-exported here; modules are named after their concern.
"""

from __future__ import annotations

from typing import Any

from .accounts import (
    Account,
    AccountPool,
    AccountStatus,
    AuthMode,
    Cooldown,
    Identity,
)
from .appserver import (
    AppServerBroker,
    AppServerClient,
    AppServerRateLimitsSource,
    TurnResult,
    run_turn,
)
from .clock import Clock, SystemClock
from .errors import (
    AppServerError,
    AuthError,
    CodexCLIError,
    CodexNotFoundError,
    ConfigError,
    LeaseError,
    LeaseLost,
    LeaseTimeout,
    ProcessError,
    QuotaAuthExpired,
    QuotaError,
    QuotaParseError,
    QuotaUnavailable,
    RequestFailed,
    SessionError,
    StateError,
    SupervisorError,
    TransportClosed,
    UnsupportedCodexVersion,
)
from .events import (
    AccountSelected,
    ChildExited,
    ChildLaunched,
    CollectingSink,
    Event,
    EventSink,
    PrewarmReady,
    PrewarmStarted,
    QuotaUpdated,
    Resumed,
    Rotating,
    SessionBound,
    WaitingForReset,
)
from .lease import (
    FileLeaseBackend,
    FileLock,
    Lease,
    LeaseBackend,
    LeaseMode,
    LeaseRecord,
    RenewOutcome,
    acquire_lease,
)
from .policy import (
    Candidate,
    Continue,
    Decision,
    Pressure,
    Prewarm,
    RotateAtBoundary,
    RotateNow,
    RotationPolicy,
    Strategy,
    WaitUntil,
    WindowPressure,
    urgency,
)
from .process import StopPolicy
from .quota import (
    CachedSnapshot,
    Credits,
    QuotaService,
    QuotaSnapshot,
    QuotaWindow,
    SnapshotProvider,
    SnapshotSource,
    UsageCredentials,
    UsageEndpointSource,
    WindowKind,
    classify_window,
)
from .sessions import (
    Binding,
    RolloutReader,
    SessionBinder,
    SessionMeta,
    TurnPhase,
    TurnState,
    writer_lock,
)
from .supervisor import Supervisor, SupervisorConfig

__all__ = [
    "Account",
    "AccountPool",
    "AccountSelected",
    "AccountStatus",
    "AppServerBroker",
    "AppServerClient",
    "AppServerError",
    "AppServerRateLimitsSource",
    "AuthError",
    "AuthMode",
    "Binding",
    "CachedSnapshot",
    "Candidate",
    "ChildExited",
    "ChildLaunched",
    "Clock",
    "CodexCLIError",
    "CodexNotFoundError",
    "CollectingSink",
    "ConfigError",
    "Continue",
    "Cooldown",
    "Credits",
    "Decision",
    "Event",
    "EventSink",
    "FileLeaseBackend",
    "FileLock",
    "Identity",
    "Lease",
    "LeaseBackend",
    "LeaseError",
    "LeaseLost",
    "LeaseMode",
    "LeaseRecord",
    "LeaseTimeout",
    "Pressure",
    "Prewarm",
    "PrewarmReady",
    "PrewarmStarted",
    "ProcessError",
    "QuotaAuthExpired",
    "QuotaError",
    "QuotaParseError",
    "QuotaService",
    "QuotaSnapshot",
    "QuotaUnavailable",
    "QuotaUpdated",
    "QuotaWindow",
    "RenewOutcome",
    "RequestFailed",
    "Resumed",
    "RolloutReader",
    "RotateAtBoundary",
    "RotateNow",
    "Rotating",
    "RotationPolicy",
    "SessionBinder",
    "SessionBound",
    "SessionError",
    "SessionMeta",
    "SnapshotProvider",
    "SnapshotSource",
    "StateError",
    "StopPolicy",
    "Strategy",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorError",
    "SystemClock",
    "TransportClosed",
    "TurnPhase",
    "TurnResult",
    "TurnState",
    "UnsupportedCodexVersion",
    "UsageCredentials",
    "UsageEndpointSource",
    "WaitUntil",
    "WaitingForReset",
    "WindowKind",
    "WindowPressure",
    "acquire_lease",
    "classify_window",
    "run_turn",
    "urgency",
    "writer_lock",
]


def __getattr__(name: str) -> Any:
    # __version__ is looked up lazily so importing the package never pays for
    # reading distribution metadata.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("codex-supervisor")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
