"""FakeCodexBackend and the CODEX_HOME helpers behave like the real backend."""

from __future__ import annotations

import contextlib
import json
import ssl
import stat
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    decode_jwt_claims,
    hermetic_env,
    make_jwt,
    offline_flags,
    write_apikey_auth_json,
    write_config_toml,
)


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _respond(
    backend: FakeCodexBackend, token: str, *, account_id: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "session-id": "sess-1"}
    if account_id:
        headers["chatgpt-account-id"] = account_id
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
    return httpx.post(f"{backend.base_url}/responses", headers=headers, json=body, timeout=10)


def test_responses_stream_carries_quota_headers_and_completes(backend: FakeCodexBackend) -> None:
    """A served request streams a full turn and reports the account's quota after consumption."""
    acct = backend.add_account("acct-a", five_hour_used=10, weekly_used=30, per_request_percent=7)

    resp = _respond(backend, acct.access_token, account_id="acct-a")

    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream"
    assert float(resp.headers["x-codex-primary-used-percent"]) == pytest.approx(17)
    assert resp.headers["x-codex-primary-window-minutes"] == "300"
    assert float(resp.headers["x-codex-secondary-used-percent"]) == pytest.approx(37)
    assert resp.headers["x-codex-secondary-window-minutes"] == "10080"
    assert int(resp.headers["x-codex-primary-reset-at"]) > time.time()
    assert int(resp.headers["x-codex-primary-reset-after-seconds"]) <= 300 * 60
    assert resp.headers["x-codex-credits-has-credits"] == "false"
    kinds = [kind for kind, _ in _sse_events(resp.text)]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    done = dict(_sse_events(resp.text))["response.output_item.done"]
    assert done["item"]["content"][0]["text"] == backend.reply_text
    [record] = backend.responses_requests()
    assert (record.account_id, record.session_id, record.status) == ("acct-a", "sess-1", 200)
    assert record.input_texts == ["hi"]
    assert record.headers["authorization"] == "<redacted>"
    assert acct.access_token not in repr(backend.requests)


def test_weekly_only_account_reports_one_primary_window(backend: FakeCodexBackend) -> None:
    """A weekly-only plan sends a single 10080-minute primary window and no secondary."""
    acct = backend.add_account("acct-w", weekly_only=True, weekly_used=50)

    resp = _respond(backend, acct.access_token)

    assert resp.headers["x-codex-primary-window-minutes"] == "10080"
    assert "x-codex-secondary-used-percent" not in resp.headers
    usage = httpx.get(
        f"{backend.chatgpt_base_url}wham/usage",
        headers={"authorization": f"Bearer {acct.access_token}"},
    ).json()
    assert usage["rate_limit"]["primary_window"]["limit_window_seconds"] == 10080 * 60
    assert "secondary_window" not in usage["rate_limit"]


def test_usage_limit_at_100_percent(backend: FakeCodexBackend) -> None:
    """An account at 100 % gets 429 usage_limit_reached with its reset time."""
    acct = backend.add_account("acct-a", per_request_percent=60)

    assert _respond(backend, acct.access_token).status_code == 200  # 60 %
    assert _respond(backend, acct.access_token).status_code == 200  # 100 %
    limited = _respond(backend, acct.access_token)

    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["type"] == "usage_limit_reached"
    assert error["plan_type"] == "plus"
    assert error["resets_at"] == backend.account("acct-a").windows[0].resets_at
    assert 0 < error["resets_in_seconds"] <= 300 * 60
    assert limited.headers["x-codex-primary-used-percent"] == "100.0"
    assert backend.account("acct-a").responses_served == 2


def test_scripted_behaviours_apply_in_order_and_per_account(backend: FakeCodexBackend) -> None:
    """Per-account scripts win over the global queue; each behaviour is used once."""
    a = backend.add_account("acct-a")
    b = backend.add_account("acct-b")
    backend.script(Behaviour.reply("global"))
    backend.script(Behaviour.server_error(503), Behaviour.usage_limit(), account_id="acct-a")

    assert _respond(backend, a.access_token).status_code == 503
    assert _respond(backend, a.access_token).status_code == 429
    assert "global" in _respond(backend, b.access_token).text
    assert backend.reply_text in _respond(backend, a.access_token).text
    # A scripted 429 or 500 consumes no quota.
    assert backend.account("acct-a").responses_served == 1


def test_drop_resets_the_stream_mid_response(backend: FakeCodexBackend) -> None:
    """A dropped stream ends before response.completed with a transport error or short body."""
    acct = backend.add_account("acct-a")
    backend.script(Behaviour.drop())

    try:
        text = _respond(backend, acct.access_token).text
    except httpx.TransportError:
        return  # the reset surfaced as a connection error: a drop, as intended
    assert "response.created" in text
    assert "response.completed" not in text


def _stream_in_background(
    backend: FakeCodexBackend, token: str
) -> tuple[threading.Thread, threading.Event, dict[str, str]]:
    """POST /responses from a thread: (the thread, set at response.created, its text)."""
    seen_created = threading.Event()
    result: dict[str, str] = {}

    def consume() -> None:
        with httpx.stream(
            "POST",
            f"{backend.base_url}/responses",
            headers={"authorization": f"Bearer {token}"},
            json={},
            timeout=30,
        ) as resp:
            text = ""
            for chunk in resp.iter_text():
                text += chunk
                if "response.created" in text:
                    seen_created.set()
            result["text"] = text

    worker = threading.Thread(target=consume)
    worker.start()
    return worker, seen_created, result


def test_stall_hangs_until_released(backend: FakeCodexBackend) -> None:
    """A stalled stream sends response.created and nothing more until released."""
    acct = backend.add_account("acct-a")
    backend.script(Behaviour.stall())
    worker, seen_created, result = _stream_in_background(backend, acct.access_token)
    assert seen_created.wait(10)
    assert worker.is_alive()  # still stalled after the first event
    backend.release_stalls()
    worker.join(10)
    assert not worker.is_alive()
    assert "response.completed" not in result["text"]


def test_hold_answers_in_full_once_released(backend: FakeCodexBackend) -> None:
    """A held stream waits after response.created, then completes with its text."""
    acct = backend.add_account("acct-a")
    backend.script(Behaviour.hold("at last"))
    worker, seen_created, result = _stream_in_background(backend, acct.access_token)
    assert seen_created.wait(10)
    assert worker.is_alive()  # still held after the first event
    backend.release_stalls()
    worker.join(10)
    assert not worker.is_alive()
    assert "response.completed" in result["text"]
    assert "at last" in result["text"]


def test_delay_holds_the_reply(backend: FakeCodexBackend) -> None:
    """A delayed reply completes, but only after the delay."""
    acct = backend.add_account("acct-a")
    backend.script(Behaviour.delay(0.3, text="late"))
    started = time.monotonic()

    resp = _respond(backend, acct.access_token)

    assert time.monotonic() - started >= 0.3
    assert "late" in resp.text
    assert "response.completed" in resp.text


def test_unknown_token_is_rejected(backend: FakeCodexBackend) -> None:
    """Requests without a known bearer token get 401 and are still logged."""
    assert _respond(backend, "not-a-token").status_code == 401
    assert backend.requests[-1].status == 401


def test_usage_endpoint_checks_the_access_token(backend: FakeCodexBackend) -> None:
    """wham/usage answers from the quota state with integer percents; expired tokens get 401."""
    acct = backend.add_account("acct-a", five_hour_used=12.6, weekly_used=3)
    headers = {"authorization": f"Bearer {acct.access_token}", "chatgpt-account-id": "acct-a"}

    usage = httpx.get(f"{backend.chatgpt_base_url}wham/usage", headers=headers).json()
    alt = httpx.get(f"{backend.url}/api/codex/usage", headers=headers).json()

    # reset_after_seconds counts down with the wall clock: two requests may
    # straddle a second. Everything else must be the same.
    for payload in (usage, alt):
        for window in ("primary_window", "secondary_window"):
            after = payload["rate_limit"][window].pop("reset_after_seconds")
            assert isinstance(after, int)
            assert after >= 0
    assert usage == alt
    primary = usage["rate_limit"]["primary_window"]
    assert primary["used_percent"] == 13
    assert isinstance(primary["used_percent"], int)
    assert primary["limit_window_seconds"] == 18000
    assert usage["rate_limit"]["secondary_window"]["limit_window_seconds"] == 604800
    assert usage["rate_limit"]["limit_reached"] is False
    assert usage["plan_type"] == "plus"

    backend.expire_access_token("acct-a")
    assert httpx.get(f"{backend.chatgpt_base_url}wham/usage", headers=headers).status_code == 401
    unknown = {"authorization": "Bearer nope"}
    assert httpx.get(f"{backend.chatgpt_base_url}wham/usage", headers=unknown).status_code == 401


def test_usage_reports_limit_reached(backend: FakeCodexBackend) -> None:
    """wham/usage says limit_reached once a window is at 100 %."""
    acct = backend.add_account("acct-a", weekly_used=100)
    headers = {"authorization": f"Bearer {acct.access_token}"}
    usage = httpx.get(f"{backend.chatgpt_base_url}wham/usage", headers=headers).json()
    assert usage["rate_limit"] | {"primary_window": None, "secondary_window": None} == {
        "allowed": False,
        "limit_reached": True,
        "primary_window": None,
        "secondary_window": None,
    }


def test_refresh_tokens_are_single_use(backend: FakeCodexBackend) -> None:
    """A refresh issues new tokens; replaying the old refresh token is rejected and recorded."""
    acct = backend.add_account("acct-a")
    old = acct.refresh_token
    body = {"client_id": "x", "grant_type": "refresh_token", "refresh_token": old}

    first = httpx.post(backend.token_url, json=body)
    assert first.status_code == 200
    fresh = first.json()
    assert fresh["refresh_token"] != old
    assert fresh["access_token"] == backend.account("acct-a").access_token
    assert decode_jwt_claims(fresh["id_token"])["email"] == "acct-a@example.test"
    backend.assert_no_replay()

    replay = httpx.post(backend.token_url, json=body)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "refresh_token_reused"
    assert backend.replays == ["acct-a"]
    with pytest.raises(AssertionError, match="replayed"):
        backend.assert_no_replay()
    # The log keeps the grant type only, never the token.
    assert old not in repr([r.body for r in backend.requests])


def test_refresh_rejects_unknown_and_missing_tokens(backend: FakeCodexBackend) -> None:
    """Unknown refresh tokens get 401 (not a replay); a missing one gets 400."""
    assert httpx.post(backend.token_url, json={"refresh_token": "nope"}).status_code == 401
    assert httpx.post(backend.token_url, json={}).status_code == 400
    assert httpx.post(backend.token_url, content=b"{garbage").status_code == 400
    assert backend.replays == []


def test_old_access_token_stops_working_after_refresh(backend: FakeCodexBackend) -> None:
    """After a refresh only the new access token is accepted."""
    acct = backend.add_account("acct-a")
    body = {"grant_type": "refresh_token", "refresh_token": acct.refresh_token}
    new_access = httpx.post(backend.token_url, json=body).json()["access_token"]
    assert _respond(backend, acct.access_token).status_code == 401
    assert _respond(backend, new_access).status_code == 200


def test_stubs_codex_calls_at_start(backend: FakeCodexBackend) -> None:
    """accounts/check echoes the caller's account; settings, models answer; others 404."""
    check = httpx.get(
        f"{backend.chatgpt_base_url}wham/accounts/check",
        headers={"chatgpt-account-id": "acct-z"},
    ).json()
    assert check["default_account_id"] == "acct-z"
    assert check["accounts"][0]["workspace_backend_origin"] == "NO_CONSTRAINT"
    assert check["account_ordering"] == ["acct-z"]
    assert httpx.get(f"{backend.chatgpt_base_url}wham/settings/user").status_code == 200
    assert httpx.get(f"{backend.base_url}/models?client_version=0.169.0").json() == {"models": []}
    assert httpx.get(f"{backend.url}/nowhere").status_code == 404
    assert httpx.post(f"{backend.url}/nowhere", json={}).status_code == 404


def test_api_key_accounts(backend: FakeCodexBackend, tmp_path: Path) -> None:
    """An account can be addressed by API key, and an apikey auth.json is written 0600."""
    backend.add_account("acct-k", api_key="sk-test-key", per_request_percent=2)
    assert _respond(backend, "sk-test-key").status_code == 200
    assert backend.responses_requests("acct-k")
    path = write_apikey_auth_json(tmp_path, "sk-test-key")
    assert json.loads(path.read_text()) == {"auth_mode": "apikey", "OPENAI_API_KEY": "sk-test-key"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_requests_are_counted_exactly(backend: FakeCodexBackend) -> None:
    """Parallel requests from many threads each consume quota exactly once."""
    acct = backend.add_account("acct-a", per_request_percent=0.5)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(
            pool.map(lambda _: _respond(backend, acct.access_token).status_code, range(64))
        )
    assert statuses == [200] * 64
    now = backend.account("acct-a")
    assert now.responses_served == 64
    assert now.windows[0].used_percent == pytest.approx(32.0)
    assert len(backend.responses_requests("acct-a")) == 64


def test_request_costs_are_consumed_one_per_served_request(backend: FakeCodexBackend) -> None:
    """Scripted costs apply in order, only to served requests, then per_request_percent again."""
    acct = backend.add_account("acct-a", five_hour_used=90, weekly_used=10, per_request_percent=1)
    backend.set_request_costs("acct-a", [2, 7.5, 4])
    backend.script(Behaviour.server_error(503), account_id="acct-a")

    assert _respond(backend, acct.access_token).status_code == 503  # consumes no cost
    first = _respond(backend, acct.access_token)
    second = _respond(backend, acct.access_token)  # 99.5 %
    assert float(first.headers["x-codex-primary-used-percent"]) == pytest.approx(92)
    assert float(first.headers["x-codex-secondary-used-percent"]) == pytest.approx(12)
    assert float(second.headers["x-codex-primary-used-percent"]) == pytest.approx(99.5)
    assert _respond(backend, acct.access_token).status_code == 200  # 4 % -> 100 %
    assert _respond(backend, acct.access_token).status_code == 429  # refused: consumes no cost
    backend.set_quota("acct-a", five_hour=0, weekly=0)
    backend.set_request_costs("acct-a", [3])
    assert float(_respond(backend, acct.access_token).headers["x-codex-primary-used-percent"]) == 3
    assert float(_respond(backend, acct.access_token).headers["x-codex-primary-used-percent"]) == 4
    with pytest.raises(ValueError, match="finite"):
        backend.set_request_costs("acct-a", [1, float("nan")])
    with pytest.raises(ValueError, match=">= 0"):
        backend.set_request_costs("acct-a", [-1])
    with pytest.raises(KeyError):
        backend.set_request_costs("acct-missing", [1])


def test_request_costs_are_consumed_exactly_under_concurrency(backend: FakeCodexBackend) -> None:
    """Parallel requests each take exactly one scripted cost: the total is the sum of the queue."""
    acct = backend.add_account("acct-a", per_request_percent=50)
    costs = [0.25 * (i % 4) for i in range(48)]
    backend.set_request_costs("acct-a", costs)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(
            pool.map(lambda _: _respond(backend, acct.access_token).status_code, range(48))
        )
    assert statuses == [200] * 48
    assert backend.account("acct-a").windows[0].used_percent == pytest.approx(sum(costs))


def test_set_quota_and_window_reset(backend: FakeCodexBackend) -> None:
    """set_quota changes state; a window whose reset time passed starts fresh."""
    acct = backend.add_account("acct-a")
    backend.set_quota("acct-a", five_hour=99.5, weekly=10, five_hour_resets_at=int(time.time()) - 1)
    resp = _respond(backend, acct.access_token)
    assert resp.status_code == 200
    assert float(resp.headers["x-codex-primary-used-percent"]) == pytest.approx(1.0)
    assert int(resp.headers["x-codex-primary-reset-at"]) > time.time()
    assert float(resp.headers["x-codex-secondary-used-percent"]) == pytest.approx(11.0)
    with pytest.raises(ValueError, match="already exists"):
        backend.add_account("acct-a")


def test_tls_backend_serves_with_its_own_ca(tls_backend: FakeCodexBackend) -> None:
    """HTTPS works with the throwaway CA and is refused without it."""
    assert tls_backend.url.startswith("https://127.0.0.1:")
    ca = tls_backend.ca_cert_path
    assert ca is not None
    assert ca.is_file()
    assert tls_backend.codex_env()["CODEX_CA_CERTIFICATE"] == str(ca)
    trusting = ssl.create_default_context(cafile=str(ca))
    ok = httpx.get(f"{tls_backend.chatgpt_base_url}wham/settings/user", verify=trusting)
    assert ok.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_backend.chatgpt_base_url}wham/settings/user")


@pytest.mark.anyio
async def test_async_context_manager_starts_and_stops() -> None:
    """The backend works as an async context manager and frees its port after."""
    async with FakeCodexBackend() as backend:
        acct = backend.add_account("acct-a")
        async with httpx.AsyncClient() as client:
            resp = await client.get(
                f"{backend.chatgpt_base_url}wham/usage",
                headers={"authorization": f"Bearer {acct.access_token}"},
            )
        assert resp.status_code == 200
        url = backend.url
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(url)
    with pytest.raises(RuntimeError, match="not running"):
        _ = backend.port


def test_stop_wakes_stalled_streams() -> None:
    """Stopping the backend ends a stalled stream instead of hanging."""
    backend = FakeCodexBackend().start()
    acct = backend.add_account("acct-a")
    backend.script(Behaviour.stall())
    done = threading.Event()

    def consume() -> None:
        with contextlib.suppress(httpx.HTTPError):
            _respond(backend, acct.access_token)
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    deadline = time.monotonic() + 10
    while not backend.responses_requests():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    backend.stop()
    assert done.wait(10)


def test_config_toml_points_only_at_the_backend(backend: FakeCodexBackend, tmp_path: Path) -> None:
    """The written config.toml parses and names only 127.0.0.1 URLs."""
    path = write_config_toml(tmp_path, backend, extra={"model_reasoning_effort": "low"})
    config = tomllib.loads(path.read_text())
    assert config["model_provider"] == "fake"
    assert config["chatgpt_base_url"] == backend.chatgpt_base_url
    provider = config["model_providers"]["fake"]
    assert provider["base_url"] == backend.base_url
    assert provider["requires_openai_auth"] is True
    assert config["cli_auth_credentials_store"] == "file"
    assert config["model_reasoning_effort"] == "low"
    assert all(config["features"][f] is False for f in ("apps", "plugins", "tool_suggest"))
    assert config["analytics"]["enabled"] is False
    apikey = tomllib.loads(write_config_toml(tmp_path, backend, auth="apikey").read_text())
    assert apikey["model_providers"]["fake"]["env_key"] == "FAKE_CODEX_API_KEY"
    with pytest.raises(ValueError, match="auth must be"):
        write_config_toml(tmp_path, backend, auth="oauth")


def test_write_codex_home_writes_auth_0600(backend: FakeCodexBackend, tmp_path: Path) -> None:
    """A prepared CODEX_HOME holds the account's current tokens in a 0600 auth.json."""
    acct = backend.add_account("acct-a")
    home = backend.write_codex_home(tmp_path / "home", "acct-a")
    auth = json.loads((home / "auth.json").read_text())
    assert auth["auth_mode"] == "chatgpt"
    assert auth["tokens"]["account_id"] == "acct-a"
    assert auth["tokens"]["refresh_token"] == acct.refresh_token
    assert auth["last_refresh"].endswith("Z")
    assert stat.S_IMODE((home / "auth.json").stat().st_mode) == 0o600
    claims = decode_jwt_claims(auth["tokens"]["id_token"])
    assert claims["https://api.openai.com/auth"]["chatgpt_account_id"] == "acct-a"
    assert claims["https://api.openai.com/auth"]["chatgpt_plan_type"] == "plus"
    assert "refresh_token" not in repr(acct)
    assert acct.access_token not in repr(acct)


def test_hermetic_env_leaks_nothing(backend: FakeCodexBackend, tmp_path: Path) -> None:
    """hermetic_env is built from scratch: fixed PATH, given homes, backend variables."""
    env = hermetic_env(tmp_path / "ch", tmp_path, backend, extra={"TERM": "xterm"})
    assert set(env) >= {"PATH", "HOME", "CODEX_HOME", "CODEX_REFRESH_TOKEN_URL_OVERRIDE"}
    assert env["TERM"] == "xterm"
    assert env["CODEX_REFRESH_TOKEN_URL_OVERRIDE"] == backend.token_url
    assert not any(k.startswith("CODEX_SUPERVISOR") for k in env)
    assert offline_flags()[:2] == ["--disable", "apps"]


@given(st.dictionaries(st.text(), st.integers() | st.text() | st.booleans()))
def test_jwt_round_trip(claims: dict[str, Any]) -> None:
    """make_jwt then decode_jwt_claims gives back the claims; three non-empty parts."""
    token = make_jwt(claims)
    assert all(token.split("."))
    assert len(token.split(".")) == 3
    assert "=" not in token
    assert decode_jwt_claims(token) == claims


@given(st.text())
def test_decode_jwt_never_raises(token: str) -> None:
    """Decoding arbitrary text returns a dict (empty when malformed), never raises."""
    assert isinstance(decode_jwt_claims(token), dict)


def test_expired_access_token_gets_401_on_responses(backend: FakeCodexBackend) -> None:
    """A ChatGPT access token past its expiry is refused by /v1/responses too."""
    acct = backend.add_account("acct-a")
    backend.expire_access_token("acct-a")
    assert _respond(backend, acct.access_token).status_code == 401
    assert backend.account("acct-a").responses_served == 0


def test_usage_refuses_a_token_presented_for_another_account(backend: FakeCodexBackend) -> None:
    """wham/usage answers 401 when the account header names another account."""
    acct = backend.add_account("acct-a")
    headers = {"authorization": f"Bearer {acct.access_token}", "chatgpt-account-id": "acct-b"}
    assert httpx.get(f"{backend.chatgpt_base_url}wham/usage", headers=headers).status_code == 401
