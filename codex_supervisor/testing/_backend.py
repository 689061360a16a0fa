"""FakeCodexBackend: a real HTTP(S) server on 127.0.0.1 that plays the Codex backend.

It serves what Codex CLI 0.169.0 talks to (see CODEX_FACTS.md §2, §3, §6, §7):

- ``POST /v1/responses`` — the Responses SSE stream, with the ``x-codex-*``
  quota headers of the calling account; ``429 usage_limit_reached`` once a
  window is at 100 %; per-request behaviours scripted by tests;
- ``GET /backend-api/wham/usage`` (and ``/api/codex/usage``) — the usage
  endpoint, from the same quota state, checking the bearer token;
- ``POST /oauth/token`` — refresh with single-use refresh tokens; a replay is
  rejected and recorded, so any test can assert that none happened;
- stubs for ``/backend-api/wham/accounts/check``, ``/wham/settings/user`` and
  ``/v1/models``;
- a request log.

The server runs in a background thread; all state sits behind one lock, so
tests may script it from any thread while Codex talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import secrets
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs

from ._config import write_config_toml
from ._tokens import AUTH_CLAIMS_KEY, make_jwt, new_refresh_token, write_auth_json

__all__ = [
    "FIVE_HOUR_MINUTES",
    "WEEKLY_MINUTES",
    "Behaviour",
    "BehaviourKind",
    "FakeAccount",
    "FakeCodexBackend",
    "FakeWindow",
    "RequestRecord",
]

log = logging.getLogger(__name__)

FIVE_HOUR_MINUTES = 300
WEEKLY_MINUTES = 10080
_MAX_BODY = 8 * 1024 * 1024


class BehaviourKind(enum.Enum):
    """What the backend does with one ``/v1/responses`` request."""

    REPLY = "reply"
    DELAY = "delay"
    STALL = "stall"
    HOLD = "hold"
    DROP = "drop"
    USAGE_LIMIT = "usage_limit"
    SERVER_ERROR = "server_error"


@attrs.frozen(kw_only=True)
class Behaviour:
    """A scripted answer to one ``/v1/responses`` request.

    Build them with the class methods; queue them with
    :meth:`FakeCodexBackend.script`.
    """

    kind: BehaviourKind
    text: str | None = None
    seconds: float | None = None
    status: int = 500

    @classmethod
    def reply(cls, text: str) -> Behaviour:
        """Answer normally with ``text`` as the assistant message."""
        return cls(kind=BehaviourKind.REPLY, text=text)

    @classmethod
    def delay(cls, seconds: float, text: str | None = None) -> Behaviour:
        """Answer normally, but only after ``seconds``; headers come first."""
        return cls(kind=BehaviourKind.DELAY, seconds=seconds, text=text)

    @classmethod
    def stall(cls, seconds: float | None = None) -> Behaviour:
        """Send the headers and ``response.created``, then hang.

        The stream hangs for ``seconds`` (until the backend stops when
        ``None``, or until :meth:`FakeCodexBackend.release_stalls`) and then
        closes without completing the response.
        """
        return cls(kind=BehaviourKind.STALL, seconds=seconds)

    @classmethod
    def hold(cls, text: str | None = None) -> Behaviour:
        """Send the headers and ``response.created``, then wait to answer.

        The answer (``text``, or the backend's reply text) goes out once
        :meth:`FakeCodexBackend.release_stalls` is called: a turn that goes
        on for as long as a test needs, and then completes.
        """
        return cls(kind=BehaviourKind.HOLD, text=text)

    @classmethod
    def drop(cls) -> Behaviour:
        """Send the headers and ``response.created``, then reset the connection."""
        return cls(kind=BehaviourKind.DROP)

    @classmethod
    def usage_limit(cls) -> Behaviour:
        """Answer ``429 usage_limit_reached`` whatever the quota state says."""
        return cls(kind=BehaviourKind.USAGE_LIMIT)

    @classmethod
    def server_error(cls, status: int = 500) -> Behaviour:
        """Answer with an HTTP error status (500 by default)."""
        return cls(kind=BehaviourKind.SERVER_ERROR, status=status)


@attrs.define
class FakeWindow:
    """One quota window of a fake account (mutable; guarded by the backend lock)."""

    window_minutes: int
    used_percent: float = 0.0
    resets_at: int = 0  # epoch seconds

    def roll(self, now: float) -> None:
        """Start a fresh window when the reset time has passed."""
        period = self.window_minutes * 60
        if self.resets_at <= 0:
            self.resets_at = int(now) + period
        elif now >= self.resets_at:
            periods = math.floor((now - self.resets_at) / period) + 1
            self.resets_at += periods * period
            self.used_percent = 0.0


@attrs.define
class FakeAccount:
    """A ChatGPT account the backend knows: identity, tokens and quota.

    The backend hands out snapshots: tokens and quota change when Codex
    refreshes or spends them, so ask ``backend.account(id)`` again for the
    current state.
    """

    account_id: str
    email: str
    plan_type: str
    user_id: str
    windows: list[FakeWindow]
    per_request_percent: float
    access_token: str = attrs.field(repr=False)
    id_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    access_expires_at: int
    api_key: str | None = attrs.field(default=None, repr=False)
    refresh_count: int = 0
    responses_served: int = 0

    @property
    def exhausted_window(self) -> FakeWindow | None:
        """The first window at or over 100 %, if any."""
        return next((w for w in self.windows if w.used_percent >= 100.0), None)


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the backend saw (tokens are never recorded)."""

    method: str
    path: str
    status: int
    account_id: str | None
    session_id: str | None
    headers: dict[str, str] = attrs.field(repr=False)
    body: Any = attrs.field(default=None, repr=False)
    at: float = 0.0

    @property
    def input_texts(self) -> list[str]:
        """User texts of a ``/v1/responses`` request body, in order."""
        texts: list[str] = []
        items = self.body.get("input") if isinstance(self.body, dict) else None
        for item in items or []:
            if not isinstance(item, dict) or item.get("role") != "user":
                continue
            texts.extend(
                part["text"]
                for part in item.get("content") or []
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        return texts


_SECRET_HEADERS = frozenset({"authorization", "cookie", "x-api-key", "openai-api-key"})


@attrs.frozen
class _Replay:
    refresh_token_prefix: str
    account_id: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 resets connections when many clients (Codex
    # fires several requests at start) connect at once.
    request_queue_size = 128
    backend: FakeCodexBackend

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        # Clients that reset or fail the TLS handshake are part of the tests;
        # a traceback on stderr for each would only bury real failures.
        log.debug("fake backend: request from %s failed", client_address, exc_info=True)  # noqa: LOG014 - called from socketserver's except block


class FakeCodexBackend:
    """A fake of the Codex backend on 127.0.0.1, for tests and demos.

    Use it as a context manager (sync or async)::

        with FakeCodexBackend() as backend:
            acct = backend.add_account("acct-a", per_request_percent=10)
            backend.write_codex_home(home, "acct-a")
            ...  # run codex with CODEX_HOME=home

    ``tls=True`` serves HTTPS with a certificate from a throwaway local CA
    (``ca_cert_path``, for Codex's ``CODEX_CA_CERTIFICATE``); the interactive
    TUI with a ChatGPT login needs it. Requires the ``testing`` extra.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        reply_text: str = "Hello from the fake backend.",
        access_token_ttl: float = 3600.0,
    ) -> None:
        self.tls = tls
        self.reply_text = reply_text
        self.access_token_ttl = access_token_ttl
        self._lock = threading.Lock()
        self._accounts: dict[str, FakeAccount] = {}
        self._scripts: dict[str | None, deque[Behaviour]] = {}
        self._request_costs: dict[str, deque[float]] = {}
        self._log: list[RequestRecord] = []
        self._replays: list[_Replay] = []
        self._used_refresh_tokens: dict[str, str] = {}
        self._stopping = threading.Event()
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.backend = self
        if self.tls:
            ctx = self._make_tls_context()
            # The handshake is deferred to the handler thread so that one slow
            # client cannot block accept() for everyone.
            server.socket = ctx.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-codex-backend",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled streams and close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._ca_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _make_tls_context(self) -> ssl.SSLContext:
        try:
            import trustme  # noqa: PLC0415 - optional: the `testing` extra
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "FakeCodexBackend(tls=True) needs trustme: pip install 'codex-supervisor[testing]'"
            ) from exc
        ca = trustme.CA(organization_name="codex_supervisor test CA")
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self._tmpdir = tempfile.TemporaryDirectory(prefix="fake-codex-ca-")
        self._ca_path = Path(self._tmpdir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self._ca_path))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the backend listens on."""
        if self._server is None:
            raise RuntimeError("the backend is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The origin, e.g. ``http://127.0.0.1:PORT``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The model provider base URL (Codex POSTs to ``<base_url>/responses``)."""
        return f"{self.url}/v1"

    @property
    def chatgpt_base_url(self) -> str:
        """The ``chatgpt_base_url`` for config.toml (ends in ``/backend-api/``)."""
        return f"{self.url}/backend-api/"

    @property
    def token_url(self) -> str:
        """The refresh endpoint, for ``CODEX_REFRESH_TOKEN_URL_OVERRIDE``."""
        return f"{self.url}/oauth/token"

    @property
    def ca_cert_path(self) -> Path | None:
        """PEM of the throwaway CA when ``tls=True`` (for ``CODEX_CA_CERTIFICATE``)."""
        return self._ca_path

    def codex_env(self) -> dict[str, str]:
        """Environment variables Codex needs to talk to this backend."""
        env = {"CODEX_REFRESH_TOKEN_URL_OVERRIDE": self.token_url}
        if self._ca_path is not None:
            env["CODEX_CA_CERTIFICATE"] = str(self._ca_path)
            env["SSL_CERT_FILE"] = str(self._ca_path)
        return env

    # -- accounts and quota --------------------------------------------------

    def add_account(
        self,
        account_id: str | None = None,
        *,
        email: str | None = None,
        plan_type: str = "plus",
        five_hour_used: float = 0.0,
        weekly_used: float = 0.0,
        weekly_only: bool = False,
        per_request_percent: float = 1.0,
        access_token_expired: bool = False,
        api_key: str | None = None,
    ) -> FakeAccount:
        """Register an account and mint its tokens; returns a snapshot of its record."""
        account_id = account_id or f"acct-{uuid.uuid4().hex[:12]}"
        now = time.time()
        windows = []
        if not weekly_only:
            windows.append(FakeWindow(FIVE_HOUR_MINUTES, five_hour_used))
        windows.append(FakeWindow(WEEKLY_MINUTES, weekly_used))
        for window in windows:
            window.roll(now)
        acct = FakeAccount(
            account_id=account_id,
            email=email or f"{account_id}@example.test",
            plan_type=plan_type,
            user_id=f"user-{account_id}",
            windows=windows,
            per_request_percent=per_request_percent,
            access_token="",
            id_token="",
            refresh_token=new_refresh_token(),
            access_expires_at=0,
            api_key=api_key,
        )
        self._mint(acct, now, expired=access_token_expired)
        with self._lock:
            if account_id in self._accounts:
                raise ValueError(f"account {account_id!r} already exists")
            self._accounts[account_id] = acct
        return self.account(account_id)

    def _mint(self, acct: FakeAccount, now: float, *, expired: bool = False) -> None:
        exp = int(now - 60) if expired else int(now + self.access_token_ttl)
        auth = {
            "chatgpt_account_id": acct.account_id,
            "chatgpt_plan_type": acct.plan_type,
            "chatgpt_user_id": acct.user_id,
            "user_id": acct.user_id,
        }
        base = {"iat": int(now), "exp": exp, "sub": acct.user_id, AUTH_CLAIMS_KEY: auth}
        acct.id_token = make_jwt({**base, "email": acct.email, "email_verified": True})
        acct.access_token = make_jwt({**base, "jti": uuid.uuid4().hex})
        acct.access_expires_at = exp

    def account(self, account_id: str) -> FakeAccount:
        """A copy of the account's current record."""
        with self._lock:
            return attrs.evolve(
                self._accounts[account_id],
                windows=[attrs.evolve(w) for w in self._accounts[account_id].windows],
            )

    def set_quota(
        self,
        account_id: str,
        *,
        five_hour: float | None = None,
        weekly: float | None = None,
        five_hour_resets_at: int | None = None,
        weekly_resets_at: int | None = None,
        per_request_percent: float | None = None,
    ) -> None:
        """Change an account's used percent, reset times or consumption rule."""
        with self._lock:
            acct = self._accounts[account_id]
            for window in acct.windows:
                if window.window_minutes == FIVE_HOUR_MINUTES:
                    used, resets = five_hour, five_hour_resets_at
                else:
                    used, resets = weekly, weekly_resets_at
                if used is not None:
                    window.used_percent = float(used)
                if resets is not None:
                    window.resets_at = int(resets)
            if per_request_percent is not None:
                acct.per_request_percent = per_request_percent

    def set_request_costs(self, account_id: str, costs: Sequence[float]) -> None:
        """Script what the account's next served ``/v1/responses`` requests cost.

        Each served request (one that is not refused with 429 or answered
        with a scripted server error) takes the next cost off this queue and
        adds it, in percentage points, to every window of the account, as
        ``per_request_percent`` does; once the queue is empty,
        ``per_request_percent`` applies again. Replaces any costs still
        queued; an empty ``costs`` clears them. Costs must be finite and >= 0.
        """
        queued = [float(cost) for cost in costs]
        if any(not math.isfinite(cost) or cost < 0.0 for cost in queued):
            raise ValueError(f"request costs must be finite and >= 0, got {queued!r}")
        with self._lock:
            if account_id not in self._accounts:
                raise KeyError(account_id)
            self._request_costs[account_id] = deque(queued)

    def expire_access_token(self, account_id: str) -> None:
        """Make the account's current access token expired (usage gets 401)."""
        with self._lock:
            self._accounts[account_id].access_expires_at = int(time.time()) - 1

    def write_auth(self, codex_home: Path | str, account_id: str) -> Path:
        """Write the account's current tokens as ``codex_home/auth.json``."""
        acct = self.account(account_id)
        return write_auth_json(
            codex_home,
            id_token=acct.id_token,
            access_token=acct.access_token,
            refresh_token=acct.refresh_token,
            account_id=acct.account_id,
        )

    def write_codex_home(
        self, codex_home: Path | str, account_id: str | None = None, **config: Any
    ) -> Path:
        """Prepare a CODEX_HOME: config.toml pointing here, plus auth.json if asked."""
        home = Path(codex_home)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_config_toml(home, self, **config)
        if account_id is not None:
            self.write_auth(home, account_id)
        return home

    # -- scripting -------------------------------------------------------------

    def script(self, *behaviours: Behaviour, account_id: str | None = None) -> None:
        """Queue behaviours for the next ``/v1/responses`` requests.

        With ``account_id`` they apply to that account's requests only; those
        queues are consulted before the global one.
        """
        with self._lock:
            self._scripts.setdefault(account_id, deque()).extend(behaviours)

    def release_stalls(self) -> None:
        """End every stalled stream now, answer every held one (and any later)."""
        self._release.set()

    def _next_behaviour(self, account_id: str | None) -> Behaviour | None:
        for key in (account_id, None) if account_id is not None else (None,):
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        return None

    # -- observation -------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request seen so far, oldest first."""
        with self._lock:
            return list(self._log)

    def received(self, text: str) -> bool:
        """Whether a model request carried ``text`` as a user input."""
        return any(text in r.input_texts for r in self.responses_requests())

    def responses_requests(self, account_id: str | None = None) -> list[RequestRecord]:
        """The ``POST /v1/responses`` requests, optionally of one account."""
        return [
            r
            for r in self.requests
            if r.path == "/v1/responses"
            and r.method == "POST"
            and (account_id is None or r.account_id == account_id)
        ]

    @property
    def replays(self) -> list[str]:
        """Account ids for which a used refresh token was presented again."""
        with self._lock:
            return [r.account_id for r in self._replays]

    def assert_no_replay(self) -> None:
        """Fail if any refresh token was ever used twice."""
        replays = self.replays
        if replays:
            raise AssertionError(f"refresh tokens were replayed for accounts {replays}")

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    # -- request handling (called from handler threads) ----------------------------

    def _account_for_bearer(self, token: str | None, *, api_ok: bool) -> FakeAccount | None:
        if not token:
            return None
        for acct in self._accounts.values():
            if acct.access_token == token or (api_ok and acct.api_key == token):
                return acct
        return None

    def _quota_headers(self, acct: FakeAccount) -> dict[str, str]:
        headers: dict[str, str] = {}
        now = time.time()
        for name, window in zip(("primary", "secondary"), acct.windows, strict=False):
            headers[f"x-codex-{name}-used-percent"] = _fmt_percent(window.used_percent)
            headers[f"x-codex-{name}-window-minutes"] = str(window.window_minutes)
            headers[f"x-codex-{name}-reset-at"] = str(window.resets_at)
            headers[f"x-codex-{name}-reset-after-seconds"] = str(
                max(0, int(window.resets_at - now))
            )
        headers["x-codex-credits-has-credits"] = "false"
        headers["x-codex-credits-unlimited"] = "false"
        headers["x-codex-credits-balance"] = "0"
        return headers

    def _usage_payload(self, acct: FakeAccount) -> dict[str, Any]:
        now = time.time()
        payload_windows = {}
        for name, window in zip(("primary_window", "secondary_window"), acct.windows, strict=False):
            payload_windows[name] = {
                "used_percent": _json_percent(window.used_percent),
                "limit_window_seconds": window.window_minutes * 60,
                "reset_after_seconds": max(0, int(window.resets_at - now)),
                "reset_at": window.resets_at,
            }
        exhausted = acct.exhausted_window is not None
        return {
            "plan_type": acct.plan_type,
            "rate_limit": {"allowed": not exhausted, "limit_reached": exhausted, **payload_windows},
            "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        }

    def _refresh(self, body: Any) -> tuple[int, dict[str, Any]]:
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return 400, {"error": "invalid_request", "error_description": "missing refresh_token"}
        with self._lock:
            for acct in self._accounts.values():
                if acct.refresh_token == token:
                    now = time.time()
                    self._used_refresh_tokens[token] = acct.account_id
                    acct.refresh_token = new_refresh_token()
                    acct.refresh_count += 1
                    self._mint(acct, now)
                    return 200, {
                        "id_token": acct.id_token,
                        "access_token": acct.access_token,
                        "refresh_token": acct.refresh_token,
                    }
            if token in self._used_refresh_tokens:
                # A single-use token presented twice: the real service may revoke
                # the whole family. Record it so the test fails loudly.
                self._replays.append(_Replay(token[:12], self._used_refresh_tokens[token]))
                return 401, {
                    "error": {
                        "code": "refresh_token_reused",
                        "message": "Your refresh token has already been used.",
                    }
                }
        return 401, {
            "error": {"code": "refresh_token_invalidated", "message": "Unknown refresh token."}
        }


def _fmt_percent(value: float) -> str:
    return f"{value:.1f}"


def _json_percent(value: float) -> int:
    # The real endpoint sends whole numbers and Codex parses them as i32: a
    # fractional value would make Codex reject the whole response.
    return round(value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Keep-alive connections would pin handler threads after the client is
    # done; a short timeout lets them go.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
        return  # the request log is the record; stderr noise helps no test

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self.close_connection = True
                raise

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError, OSError):
            super().handle()

    # -- helpers --

    @property
    def backend(self) -> FakeCodexBackend:
        return self.server.backend

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        if length <= 0 or length > _MAX_BODY:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def _bearer(self) -> str | None:
        value = self.headers.get("authorization") or ""
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _safe_headers(self) -> dict[str, str]:
        return {
            k.lower(): ("<redacted>" if k.lower() in _SECRET_HEADERS else v)
            for k, v in self.headers.items()
        }

    def _log(self, status: int, account_id: str | None, body: Any = None) -> None:
        path = self.path.split("?", 1)[0]
        self.backend._record(
            RequestRecord(
                method=self.command,
                path=path,
                status=status,
                account_id=account_id,
                session_id=self.headers.get("session_id") or self.headers.get("session-id"),
                headers=self._safe_headers(),
                body=body,
                at=time.time(),
            )
        )

    def _send_json(
        self,
        status: int,
        payload: Any,
        account_id: str | None = None,
        extra_headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        # Logged before the body goes out: a client that has its answer must
        # already find its request in the log.
        self._log(status, account_id, body)
        self.wfile.write(data)

    # -- routes --

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        account_header = self.headers.get("chatgpt-account-id")
        if path in ("/backend-api/wham/usage", "/api/codex/usage"):
            self._usage()
        elif path in ("/backend-api/wham/accounts/check", "/wham/accounts/check"):
            acct_id = account_header or "unknown"
            self._send_json(
                200,
                {
                    "accounts": [
                        {
                            "id": acct_id,
                            "workspace_backend_origin": "NO_CONSTRAINT",
                            "account_routing_override": "NO_CONSTRAINT",
                            "structure": "personal",
                        }
                    ],
                    "account_ordering": [acct_id],
                    "default_account_id": acct_id,
                },
                account_header,
            )
        elif path in ("/backend-api/wham/settings/user", "/wham/settings/user"):
            self._send_json(200, {"commit_attribution_enabled": False}, account_header)
        elif path in ("/v1/models", "/models"):
            self._send_json(200, {"models": []}, account_header)
        else:
            self._send_json(404, {"error": "not found", "path": path}, account_header)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path in ("/v1/responses", "/responses"):
            self._responses(body)
        elif path == "/oauth/token":
            status, payload = self.backend._refresh(body)
            self._send_json(status, payload, None, body={"grant_type": _grant(body)})
        else:
            self._send_json(404, {"error": "not found", "path": path}, None)

    def _usage(self) -> None:
        backend = self.backend
        with backend._lock:
            acct = backend._account_for_bearer(self._bearer(), api_ok=False)
            claimed = self.headers.get("chatgpt-account-id")
            if acct is not None and claimed and claimed != acct.account_id:
                acct = None  # a token of one account presented for another
            if acct is None or acct.access_expires_at <= time.time():
                payload: Any = None
                status = 401
            else:
                for window in acct.windows:
                    window.roll(time.time())
                payload = backend._usage_payload(acct)
                status = 200
        if status == 401:
            self._send_json(
                401,
                {
                    "error": {
                        "message": "Access token is expired or invalid.",
                        "code": "token_expired",
                    }
                },
                self.headers.get("chatgpt-account-id"),
            )
        else:
            self._send_json(200, payload, acct.account_id if acct else None)

    def _responses(self, body: Any) -> None:
        backend = self.backend
        now = time.time()
        with backend._lock:
            acct = backend._account_for_bearer(self._bearer(), api_ok=True)
            if (
                acct is not None
                and acct.api_key != self._bearer()
                and acct.access_expires_at <= now
            ):
                acct = None  # an expired ChatGPT access token: 401, as the real service does
            account_id = acct.account_id if acct else None
            if acct is None:
                behaviour: Behaviour | None = None
            else:
                behaviour = backend._next_behaviour(account_id)
                for window in acct.windows:
                    window.roll(now)
            kind = behaviour.kind if behaviour else BehaviourKind.REPLY
            limited = acct is not None and (
                kind is BehaviourKind.USAGE_LIMIT or acct.exhausted_window is not None
            )
            if acct is not None and not limited and kind is not BehaviourKind.SERVER_ERROR:
                acct.responses_served += 1
                queued = backend._request_costs.get(acct.account_id)
                cost = queued.popleft() if queued else acct.per_request_percent
                for window in acct.windows:
                    window.used_percent = min(100.0, window.used_percent + cost)
            headers = backend._quota_headers(acct) if acct is not None else {}
            if limited and acct is not None:
                exhausted = acct.exhausted_window or acct.windows[0]
                headers["x-codex-primary-used-percent"] = "100.0"
                limit_body = {
                    "error": {
                        "type": "usage_limit_reached",
                        "message": "The usage limit has been reached",
                        "plan_type": acct.plan_type,
                        "resets_at": exhausted.resets_at,
                        "resets_in_seconds": max(0, int(exhausted.resets_at - now)),
                    }
                }
        if acct is None:
            self._send_json(
                401,
                {
                    "error": {
                        "message": "Missing or unknown bearer token.",
                        "type": "invalid_request_error",
                    }
                },
                self.headers.get("chatgpt-account-id"),
                body=body,
            )
            return
        if limited:
            self._send_json(429, limit_body, account_id, headers, body=body)
            return
        if behaviour is not None and kind is BehaviourKind.SERVER_ERROR:
            self._send_json(
                behaviour.status,
                {"error": {"message": "fake server error", "type": "server_error"}},
                account_id,
                body=body,
            )
            return
        self._stream(behaviour, headers, account_id, body)

    def _stream(
        self,
        behaviour: Behaviour | None,
        headers: dict[str, str],
        account_id: str | None,
        body: Any,
    ) -> None:
        backend = self.backend
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        # The stream ends when the connection closes: the simplest framing that
        # every HTTP client accepts, and the only one that can model a drop.
        self.send_header("connection", "close")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        self._log(200, account_id, body)
        response_id = f"resp_{uuid.uuid4().hex}"
        kind = behaviour.kind if behaviour else BehaviourKind.REPLY
        self._event(
            "response.created", {"type": "response.created", "response": {"id": response_id}}
        )
        if kind is BehaviourKind.DROP:
            self._reset()
            return
        if kind is BehaviourKind.STALL:
            assert behaviour is not None
            deadline = None if behaviour.seconds is None else time.monotonic() + behaviour.seconds
            while not (backend._stopping.is_set() or backend._release.is_set()):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                backend._stopping.wait(0.05)
            return
        if kind is BehaviourKind.HOLD:
            while not backend._release.is_set():
                if backend._stopping.wait(0.05):
                    return
        delay = behaviour.seconds if behaviour and kind is BehaviourKind.DELAY else None
        if delay and backend._stopping.wait(delay):
            return
        text = (behaviour.text if behaviour and behaviour.text is not None else None) or (
            backend.reply_text
        )
        for event_type, payload in _reply_events(response_id, text):
            self._event(event_type, payload)

    def _event(self, event_type: str, payload: dict[str, Any]) -> None:
        frame = f"event: {event_type}\ndata: {json.dumps(payload)}\n\n".encode()
        self.wfile.write(frame)
        self.wfile.flush()

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a broken stream,
        # not a clean end.
        with contextlib.suppress(OSError):
            sock = self.connection
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()


def _grant(body: Any) -> str | None:
    if isinstance(body, dict):
        grant = body.get("grant_type")
        return grant if isinstance(grant, str) else None
    return None


def _reply_events(response_id: str, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    item_id = f"msg_{secrets.token_hex(8)}"
    message = {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    yield (
        "response.output_item.added",
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
    )
    yield (
        "response.output_text.delta",
        {
            "type": "response.output_text.delta",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        },
    )
    yield (
        "response.output_item.done",
        {"type": "response.output_item.done", "output_index": 0, "item": message},
    )
    input_tokens = 120
    output_tokens = max(1, len(text.split()))
    yield (
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                "id": response_id,
                "usage": {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                },
            },
        },
    )
