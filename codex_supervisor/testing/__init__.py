"""Test doubles for code that drives the Codex CLI (public and shipped).

- :class:`FakeCodexBackend` — a real HTTP(S) server on 127.0.0.1 that plays the
  Codex backend: the Responses stream with quota headers, the usage endpoint,
  single-use refresh tokens, and a request log.
- :func:`codex_config`, :func:`write_config_toml`, :func:`make_jwt`, :func:`write_auth_json` — a
  CODEX_HOME that talks only to that backend.
- :class:`FakeClock` — virtual time for code that takes a
  :class:`~codex_supervisor.clock.Clock`: advanced by hand, or jumping ahead by
  itself whenever every task sleeps (``autojump=True``); never sleeps for real.
  :class:`OffsetClock` is real time plus an offset, for code that needs real timers.
- :class:`FakeAppServerLauncher` — an ``AppServerPool`` launch step whose servers
  are futures, for exercising pool bookkeeping without processes.
- :class:`RedisServer` — the system's ``redis-server`` on 127.0.0.1 at a free
  port, for the Redis backends.
- :class:`S3Server` — an S3-compatible emulator (moto's server) on 127.0.0.1,
  for the object-store home store.
- :func:`install_simulator` — a ``codex`` executable (a small Python program)
  that follows Codex's argv grammar and writes real-format rollouts, for fast
  tests and demos.

HTTPS (``FakeCodexBackend(tls=True)``) needs the ``testing`` extra.
"""

from __future__ import annotations

from ._backend import (
    FIVE_HOUR_MINUTES,
    WEEKLY_MINUTES,
    Behaviour,
    BehaviourKind,
    FakeAccount,
    FakeCodexBackend,
    FakeWindow,
    RequestRecord,
)
from ._clock import FakeClock
from ._config import (
    OFFLINE_DISABLE_FEATURES,
    codex_config,
    hermetic_env,
    offline_flags,
    write_config_toml,
)
from ._install import install_simulator
from ._pool import FakeAppServerLauncher, FakeServerProcess, OffsetClock
from ._pty import PtyProcess
from ._redis import RedisServer
from ._s3 import S3Server
from ._tokens import decode_jwt_claims, make_jwt, write_apikey_auth_json, write_auth_json

__all__ = [
    "FIVE_HOUR_MINUTES",
    "OFFLINE_DISABLE_FEATURES",
    "WEEKLY_MINUTES",
    "Behaviour",
    "BehaviourKind",
    "FakeAccount",
    "FakeAppServerLauncher",
    "FakeClock",
    "FakeCodexBackend",
    "FakeServerProcess",
    "FakeWindow",
    "OffsetClock",
    "PtyProcess",
    "RedisServer",
    "RequestRecord",
    "S3Server",
    "codex_config",
    "decode_jwt_claims",
    "hermetic_env",
    "install_simulator",
    "make_jwt",
    "offline_flags",
    "write_apikey_auth_json",
    "write_auth_json",
    "write_config_toml",
]
