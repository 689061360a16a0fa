"""The ``codex app-server`` layer: a JSON-RPC client, a turn waiter that always
settles, a broker that multiplexes clients onto one upstream, a quota source,
and a pool of app-servers per key for gateways, with a home store.

The names are imported lazily, on first access, as in the top-level package:
``python -m codex_supervisor.appserver.broker`` then runs the broker module
once, as ``__main__``, instead of after the package already imported it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import resolve

if TYPE_CHECKING:
    from .archive import PRIVATE_ENTRIES, ArchiveStats, pack_home, unpack_home
    from .broker import BUSY_ERROR_CODE, AppServerBroker, BrokerAlreadyRunning
    from .client import (
        AppServerClient,
        InitializeResult,
        Notification,
        RequestHandler,
        Subscription,
        SyncAppServerClient,
        ThreadInfo,
        Turn,
        decline_approvals,
    )
    from .homestore import HomeStore, LocalDirHomeStore
    from .launcher import Launched, Launcher, LaunchRequest, ServerProcess, launch_app_server
    from .pool import (
        DEFAULT_LOOPBACK_ENV,
        AppServerHandle,
        AppServerPool,
        ConfigBuilder,
        EntryState,
        IdleReaper,
        PoolConfig,
        SpawnConfig,
        SpawnContext,
        default_replica,
        key_lease_name,
        relocate_threads,
    )
    from .quota_source import AppServerRateLimitsSource
    from .turns import TurnError, TurnResult, capture_turn, run_turn

__all__ = [
    "BUSY_ERROR_CODE",
    "DEFAULT_LOOPBACK_ENV",
    "PRIVATE_ENTRIES",
    "AppServerBroker",
    "AppServerClient",
    "AppServerHandle",
    "AppServerPool",
    "AppServerRateLimitsSource",
    "ArchiveStats",
    "BrokerAlreadyRunning",
    "ConfigBuilder",
    "EntryState",
    "HomeStore",
    "IdleReaper",
    "InitializeResult",
    "LaunchRequest",
    "Launched",
    "Launcher",
    "LocalDirHomeStore",
    "Notification",
    "PoolConfig",
    "RequestHandler",
    "ServerProcess",
    "SpawnConfig",
    "SpawnContext",
    "Subscription",
    "SyncAppServerClient",
    "ThreadInfo",
    "Turn",
    "TurnError",
    "TurnResult",
    "capture_turn",
    "decline_approvals",
    "default_replica",
    "key_lease_name",
    "launch_app_server",
    "pack_home",
    "relocate_threads",
    "run_turn",
    "unpack_home",
]

# Where each public name is defined; tests/test_package.py checks that this,
# __all__ and the TYPE_CHECKING imports agree.
_EXPORTS: dict[str, str] = {
    "AppServerBroker": ".broker",
    "AppServerClient": ".client",
    "AppServerHandle": ".pool",
    "AppServerPool": ".pool",
    "AppServerRateLimitsSource": ".quota_source",
    "ArchiveStats": ".archive",
    "BUSY_ERROR_CODE": ".broker",
    "BrokerAlreadyRunning": ".broker",
    "ConfigBuilder": ".pool",
    "DEFAULT_LOOPBACK_ENV": ".pool",
    "EntryState": ".pool",
    "HomeStore": ".homestore",
    "IdleReaper": ".pool",
    "InitializeResult": ".client",
    "LaunchRequest": ".launcher",
    "Launched": ".launcher",
    "Launcher": ".launcher",
    "LocalDirHomeStore": ".homestore",
    "Notification": ".client",
    "PRIVATE_ENTRIES": ".archive",
    "PoolConfig": ".pool",
    "RequestHandler": ".client",
    "ServerProcess": ".launcher",
    "SpawnConfig": ".pool",
    "SpawnContext": ".pool",
    "Subscription": ".client",
    "SyncAppServerClient": ".client",
    "ThreadInfo": ".client",
    "Turn": ".client",
    "TurnError": ".turns",
    "TurnResult": ".turns",
    "capture_turn": ".turns",
    "decline_approvals": ".client",
    "default_replica": ".pool",
    "key_lease_name": ".pool",
    "launch_app_server": ".launcher",
    "pack_home": ".archive",
    "relocate_threads": ".pool",
    "run_turn": ".turns",
    "unpack_home": ".archive",
}


def __getattr__(name: str) -> Any:
    return resolve(__name__, _EXPORTS, globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
