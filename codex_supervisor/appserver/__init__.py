"""The ``codex app-server`` layer: a JSON-RPC client, a turn waiter that always
settles, a broker that multiplexes clients onto one upstream, and a quota source."""

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
from .quota_source import AppServerRateLimitsSource
from .turns import TurnError, TurnResult, capture_turn, run_turn

__all__ = [
    "BUSY_ERROR_CODE",
    "AppServerBroker",
    "AppServerClient",
    "AppServerRateLimitsSource",
    "BrokerAlreadyRunning",
    "InitializeResult",
    "Notification",
    "RequestHandler",
    "Subscription",
    "SyncAppServerClient",
    "ThreadInfo",
    "Turn",
    "TurnError",
    "TurnResult",
    "capture_turn",
    "decline_approvals",
    "run_turn",
]
