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
    StateError,
    SupervisorError,
    TransportClosed,
    UnsupportedCodexVersion,
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

__all__ = [
    "Account",
    "AccountPool",
    "AccountStatus",
    "AppServerError",
    "AuthError",
    "AuthMode",
    "CachedSnapshot",
    "Clock",
    "CodexCLIError",
    "CodexNotFoundError",
    "ConfigError",
    "Cooldown",
    "Credits",
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
    "ProcessError",
    "QuotaAuthExpired",
    "QuotaError",
    "QuotaParseError",
    "QuotaService",
    "QuotaSnapshot",
    "QuotaUnavailable",
    "QuotaWindow",
    "RenewOutcome",
    "RequestFailed",
    "SnapshotProvider",
    "SnapshotSource",
    "StateError",
    "SupervisorError",
    "SystemClock",
    "TransportClosed",
    "UnsupportedCodexVersion",
    "UsageCredentials",
    "UsageEndpointSource",
    "WindowKind",
    "acquire_lease",
    "classify_window",
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
