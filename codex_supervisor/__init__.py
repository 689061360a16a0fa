"""Keep OpenAI Codex CLI work running across several ChatGPT accounts.

The public surface is re-exported here; modules are named after their concern.
"""

from __future__ import annotations

from typing import Any

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

__all__ = [
    "AppServerError",
    "AuthError",
    "Clock",
    "CodexCLIError",
    "CodexNotFoundError",
    "ConfigError",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "ProcessError",
    "QuotaAuthExpired",
    "QuotaError",
    "QuotaParseError",
    "QuotaUnavailable",
    "RequestFailed",
    "StateError",
    "SupervisorError",
    "SystemClock",
    "TransportClosed",
    "UnsupportedCodexVersion",
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
