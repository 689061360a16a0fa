"""The ``codex app-server`` layer: a JSON-RPC client, a turn waiter that always
settles, a broker that multiplexes clients onto one upstream, a quota source,
and a pool of app-servers per key for gateways, with a home store."""

from __future__ import annotations

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
from .homestore import (
    PRIVATE_ENTRIES,
    ArchiveStats,
    HomeStore,
    LocalDirHomeStore,
    pack_home,
    unpack_home,
)
from .pool import (
    DEFAULT_LOOPBACK_ENV,
    AppServerHandle,
    AppServerPool,
    ConfigBuilder,
    EntryState,
    IdleReaper,
    Launched,
    Launcher,
    LaunchRequest,
    PoolConfig,
    ServerProcess,
    SpawnConfig,
    SpawnContext,
    launch_app_server,
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
    "launch_app_server",
    "pack_home",
    "relocate_threads",
    "run_turn",
    "unpack_home",
]
