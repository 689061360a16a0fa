"""The app-server client and turn waiter against a scripted fake app-server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from codex_supervisor.appserver import (
    AppServerClient,
    Notification,
    SyncAppServerClient,
    ThreadInfo,
    run_turn,
)
from codex_supervisor.errors import RequestFailed, TransportClosed

pytestmark = pytest.mark.anyio

# A tiny app-server: JSONL on stdio, behaviour chosen by `--scenario NAME`.
FAKE_APP_SERVER = r"""
import json, sys, time

scenario = sys.argv[sys.argv.index("--scenario") + 1] if "--scenario" in sys.argv else "complete"
THREAD, TURN = "thr-1", "turn-1"
RATE = {"limitId": "codex", "primary": {"usedPercent": 42, "windowDurationMins": 300,
        "resetsAt": 4102444800}, "secondary": None, "credits": None, "planType": "plus"}
asks = {}

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def note(method, **params):
    send({"method": method, "params": params})

def agent(text, phase):
    item = {"type": "agentMessage", "id": "msg-1", "text": text, "phase": phase}
    note("item/started", threadId=THREAD, turnId=TURN, item=dict(item, text=""))
    note("item/completed", threadId=THREAD, turnId=TURN, item=item)

def turn(status, error=None):
    return {"id": TURN, "status": status, "error": error, "items": []}

def completed(status, error=None):
    note("turn/completed", threadId=THREAD, turn=turn(status, error))

def turn_start(rid):
    if scenario == "start-terminal":
        send({"id": rid, "result": {"turn": turn("failed", {"message": "refused",
              "codexErrorInfo": "usageLimitExceeded"})}})
        return
    send({"id": rid, "result": {"turn": turn("inProgress")}})
    note("turn/started", threadId=THREAD, turn=turn("inProgress"))
    note("item/completed", threadId=THREAD, turnId=TURN,
         item={"type": "userMessage", "id": "u-1", "content": []})
    # Another thread's traffic must be ignored.
    note("turn/completed", threadId="other", turn=dict(turn("completed"), id="x"))
    if scenario == "complete":
        agent("the answer", "final_answer")
        note("account/rateLimits/updated", rateLimits=RATE)
        completed("completed")
    elif scenario == "final-no-completed":
        agent("inferred answer", "final_answer")
    elif scenario == "exit-after-final":
        agent("last words", None)
        note("account/rateLimits/updated", rateLimits=RATE)
        sys.exit(0)
    elif scenario == "exit-mid-turn":
        note("item/started", threadId=THREAD, turnId=TURN,
             item={"type": "commandExecution", "id": "cmd-1"})
        sys.stderr.write("panicked: something broke\n")
        sys.stderr.flush()
        sys.exit(7)
    elif scenario == "usage-limit":
        error = {"message": "You've hit your usage limit.", "codexErrorInfo": "usageLimitExceeded"}
        full = dict(RATE, primary=dict(RATE["primary"], usedPercent=100))
        note("account/rateLimits/updated", rateLimits=full)
        note("error", threadId=THREAD, turnId=TURN, error=error, willRetry=False)
        completed("failed", error)
    elif scenario == "error-no-completed":
        info = {"responseStreamDisconnected": {}}
        note("error", threadId=THREAD, turnId=TURN, willRetry=True,
             error={"message": "reconnecting", "codexErrorInfo": info})
        note("error", threadId=THREAD, turnId=TURN, willRetry=False,
             error={"message": "stream gone", "codexErrorInfo": info})
    elif scenario == "subagent":
        collab = {"type": "collabAgentToolCall", "id": "c-1", "status": "inProgress",
                  "receiverThreadIds": ["child-1"]}
        note("item/started", threadId=THREAD, turnId=TURN, item=collab)
        note("item/completed", threadId=THREAD, turnId=TURN, item=dict(collab, status="completed"))
        note("turn/started", threadId="child-1", turn=dict(turn("inProgress"), id="ct-1"))
        agent("premature", "final_answer")
        time.sleep(0.6)
        note("turn/completed", threadId="child-1", turn=dict(turn("completed"), id="ct-1"))
        agent("after the subagent", "final_answer")
    # "stall": nothing more until turn/interrupt.

for raw in sys.stdin:
    try:
        msg = json.loads(raw)
    except ValueError:
        continue
    method, rid = msg.get("method"), msg.get("id")
    if method is None:  # a response to one of our requests
        for ask_id, answers in asks.items():
            answers.append(msg)
            if len(answers) == 2:
                send({"id": ask_id, "result": sorted(answers, key=lambda m: str(m["id"]))})
        continue
    if rid is None:
        continue  # notifications (initialized)
    if method == "initialize":
        if scenario == "die-on-init":
            sys.stderr.write("fatal: cannot start\n")
            sys.exit(5)
        send({"id": rid, "result": {"userAgent": "fake/0.169.0", "codexHome": "/nowhere",
              "platformFamily": "unix", "platformOs": "linux"}})
    elif method == "thread/start":
        send({"id": rid, "result": {"thread": {"id": THREAD, "path": "/tmp/rollout.jsonl",
              "extra": 1}}})
    elif method == "turn/start":
        turn_start(rid)
    elif method == "turn/interrupt":
        with open(sys.argv[0] + ".interrupts", "a") as f:
            f.write(json.dumps(msg["params"]) + "\n")
        send({"id": rid, "result": {}})
        completed("interrupted")
    elif method == "echo":
        send({"id": rid, "result": msg.get("params")})
    elif method == "fail":
        send({"id": rid, "error": {"code": -32000, "message": "nope", "data": {"why": 1}}})
    elif method == "garbage":
        sys.stdout.write("this is not json\n[1, 2]\n{\"neither\": true}\n")
        send({"id": rid, "result": "still alive"})
    elif method == "notify-me":
        for n in range(3):
            note("test/tick", n=n)
        note("test/other")
        send({"id": rid, "result": None})
    elif method == "ask":
        asks[rid] = []
        send({"id": "s-1", "method": "item/commandExecution/requestApproval",
              "params": {"threadId": THREAD, "turnId": TURN, "itemId": "cmd"}})
        send({"id": "s-2", "method": "weird/request", "params": {}})
    elif method == "big":
        send({"id": rid, "result": "x" * 300_000})
    elif method == "die":
        sys.stderr.write("dying on request\n" * 2000)
        sys.stderr.flush()
        sys.exit(3)
    # "hang": never answered.
"""


@pytest.fixture
def fake_codex(tmp_path: Path) -> Path:
    """An executable fake ``codex`` whose ``app-server`` speaks the protocol."""
    path = tmp_path / "codex"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_APP_SERVER))
    path.chmod(0o755)
    return path


@pytest.fixture
def spawn(fake_codex: Path, tmp_path: Path) -> Callable[..., Coroutine[Any, Any, AppServerClient]]:
    """Spawn the fake app-server with a scenario."""

    async def start(scenario: str = "complete", **kwargs: Any) -> AppServerClient:
        return await AppServerClient.spawn(
            fake_codex,
            codex_home=tmp_path,
            environ={"PATH": os.environ.get("PATH", "")},
            args=("--scenario", scenario),
            **kwargs,
        )

    return start


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fails the test if it leaves a task running on the loop."""
    yield
    await asyncio.sleep(0)
    leaked = [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "codex_supervisor" in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    ]
    assert not leaked, leaked


def interrupts(fake_codex: Path) -> list[dict[str, Any]]:
    path = Path(f"{fake_codex}.interrupts")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- client --------------------------------------------------------------------


async def test_initialize_and_request_roundtrip(spawn: Any, no_leaks: None) -> None:
    """The handshake is done on spawn and requests return their result."""
    async with await spawn() as client:
        assert client.initialize_result is not None
        assert client.initialize_result.user_agent == "fake/0.169.0"
        assert client.pid is not None
        assert await client.request("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        thread = await client.thread_start({"cwd": "/"})
        assert thread == ThreadInfo(id="thr-1", path="/tmp/rollout.jsonl")
    assert client.closed
    assert client.returncode is not None


async def test_error_response_raises_request_failed(spawn: Any, no_leaks: None) -> None:
    """A JSON-RPC error answer becomes RequestFailed with code, message and data."""
    async with await spawn() as client:
        with pytest.raises(RequestFailed) as info:
            await client.request("fail")
        assert (info.value.method, info.value.code, info.value.message) == ("fail", -32000, "nope")
        assert info.value.data == {"why": 1}
        assert await client.request("echo", 1) == 1


async def test_exit_fails_pending_requests_and_subscriptions(spawn: Any, no_leaks: None) -> None:
    """When the process exits, pending requests and subscriptions get one TransportClosed."""
    async with await spawn() as client:
        sub = client.subscribe()
        hanging = asyncio.ensure_future(client.request("hang"))
        with pytest.raises(TransportClosed) as info:
            await client.request("die")
        assert info.value.returncode == 3
        assert "dying on request" in info.value.stderr_tail
        assert len(info.value.stderr_tail) <= 8 * 1024
        with pytest.raises(TransportClosed) as second:
            await hanging
        assert second.value is info.value
        with pytest.raises(TransportClosed):
            await sub.get()
        with pytest.raises(TransportClosed):
            await client.request("echo")
        assert client.returncode == 3


async def test_failed_handshake_reaps_the_process(spawn: Any, no_leaks: None) -> None:
    """A spawn whose initialize fails raises TransportClosed and leaves no process."""
    with pytest.raises(TransportClosed) as info:
        await spawn("die-on-init")
    assert info.value.returncode == 5
    assert "fatal: cannot start" in info.value.stderr_tail


async def test_request_timeout(spawn: Any, no_leaks: None) -> None:
    """A request with a timeout raises TimeoutError and the client stays usable."""
    async with await spawn() as client:
        with pytest.raises(TimeoutError):
            await client.request("hang", timeout=0.1)
        assert await client.request("echo", "ok") == "ok"


async def test_subscription_filters_methods(spawn: Any, no_leaks: None) -> None:
    """A subscription receives only its methods, in order, and stops after close()."""
    async with await spawn() as client:
        ticks = client.subscribe({"test/tick"})
        everything = client.subscribe()
        await client.request("notify-me")
        got = [await ticks.get() for _ in range(3)]
        assert got == [Notification("test/tick", {"n": n}) for n in range(3)]
        assert ticks.pending() == 0
        assert everything.pending() >= 4
        ticks.close()
        assert [n async for n in ticks] == []
        everything.close()


async def test_server_requests_are_answered(spawn: Any, no_leaks: None) -> None:
    """Approvals are declined by default and unknown server requests get -32601."""
    async with await spawn() as client:
        answers = await client.request("ask")
    assert answers == [
        {"id": "s-1", "result": {"decision": "decline"}},
        {
            "id": "s-2",
            "error": {"code": -32601, "message": "unsupported server request 'weird/request'"},
        },
    ]


async def test_custom_handler(spawn: Any, no_leaks: None) -> None:
    """A custom handler's result is sent back; its exceptions become -32603."""

    async def handler(method: str, params: Any) -> Any:
        if method == "weird/request":
            raise RuntimeError("broken")
        return {"decision": "accept", "seen": params["itemId"]}

    async with await spawn(handler=handler) as client:
        answers = await client.request("ask")
    assert answers[0]["result"] == {"decision": "accept", "seen": "cmd"}
    assert answers[1]["error"]["code"] == -32603


async def test_malformed_lines_are_skipped(spawn: Any, no_leaks: None) -> None:
    """Non-JSON and non-message lines are logged and skipped, not fatal."""
    async with await spawn() as client:
        assert await client.request("garbage") == "still alive"
        assert not client.closed


async def test_large_message(spawn: Any, no_leaks: None) -> None:
    """A line larger than asyncio's default 64 KiB stream limit is read whole."""
    async with await spawn() as client:
        assert await client.request("big") == "x" * 300_000


async def test_connect_unix(tmp_path: Path, no_leaks: None) -> None:
    """connect_unix speaks JSONL over a unix socket and notices the peer closing."""
    path = tmp_path / "s.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "id" in msg and msg["method"] == "initialize":
                result: Any = {"userAgent": "sock", "codexHome": "/h"}
            elif "id" in msg and msg["method"] == "bye":
                break
            elif "id" in msg:
                result = msg.get("params")
            else:
                continue
            writer.write(json.dumps({"id": msg["id"], "result": result}).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        client = await AppServerClient.connect_unix(path)
        try:
            assert client.initialize_result is not None
            assert client.pid is None
            assert await client.request("echo", [1]) == [1]
            with pytest.raises(TransportClosed):
                await client.request("bye")
        finally:
            await client.aclose()


def test_sync_facade(fake_codex: Path, tmp_path: Path) -> None:
    """The sync facade spawns, requests and closes on its own loop thread."""
    with SyncAppServerClient.spawn(
        fake_codex,
        codex_home=tmp_path,
        environ={"PATH": os.environ.get("PATH", "")},
        args=("--scenario", "complete"),
    ) as client:
        assert client.request("echo", {"x": 1}) == {"x": 1}
        with pytest.raises(RequestFailed):
            client.request("fail")
    assert client.client.closed


# -- the WebSocket transport -----------------------------------------------------


async def _ws_app_server(ws: ServerConnection) -> None:
    """A stand-in for `codex app-server --listen ws://`: one JSON message a text frame."""
    async for message in ws:
        msg = json.loads(message)
        method, request_id = msg.get("method"), msg.get("id")
        if method is None or request_id is None:
            continue
        result: Any = msg.get("params")
        if method == "initialize":
            result = {"userAgent": "ws/0.169.0", "codexHome": "/h"}
        elif method == "ask":  # a server request first; answer with the client's reply
            await ws.send(
                json.dumps({"id": 900, "method": "item/fileChange/requestApproval", "params": {}})
            )
            result = json.loads(await ws.recv())
            await ws.send(json.dumps({"method": "note", "params": {"n": 1}}))
        elif method == "binary":  # the reply in a binary frame
            await ws.send(json.dumps({"id": request_id, "result": "bin"}).encode())
            continue
        elif method == "big":
            result = "x" * result
        elif method == "bye":
            await ws.close(1001, "going away")
            return
        await ws.send(json.dumps({"id": request_id, "result": result}))


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    """A local websockets server speaking the app-server's JSON-RPC, as a ws:// URL."""
    async with serve(_ws_app_server, "127.0.0.1", 0, compression=None, max_size=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_connect_ws_roundtrip(ws_url: str, no_leaks: None) -> None:
    """Over a WebSocket: handshake, requests, server requests, notifications, 8 MiB both ways."""
    async with await AppServerClient.connect_ws(ws_url) as client:
        assert client.initialize_result is not None
        assert client.initialize_result.user_agent == "ws/0.169.0"
        assert client.pid is None
        sub = client.subscribe(["note"])
        reply = await client.request("ask")
        assert reply == {"id": 900, "result": {"decision": "decline"}}
        assert await sub.get() == Notification("note", {"n": 1})
        assert await client.request("binary") == "bin"
        size = 8 << 20
        assert await client.request("big", size) == "x" * size
        assert await client.request("echo", "y" * size) == "y" * size
        assert await client.request("echo", "é\n\u2028") == "é\n\u2028"
    assert client.closed


async def test_connect_ws_closes_with_the_handshake(no_leaks: None) -> None:
    """aclose sends close code 1000, the server answers, and pending requests fail."""
    seen: list[tuple[int | None, bool]] = []
    handled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            msg = json.loads(message)
            if msg.get("method") == "initialize":
                result = {"userAgent": "ws", "codexHome": "/h"}
                await ws.send(json.dumps({"id": msg["id"], "result": result}))
        # The loop ended cleanly: the client sent a close frame; record it.
        seen.append((ws.close_code, ws.protocol.close_rcvd_then_sent is True))
        handled.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}")
        pending = asyncio.create_task(client.request("never answered"))
        await asyncio.sleep(0.05)
        await client.aclose()
        # Whichever notices first: the reader (the handshake's outcome) or aclose.
        closed = r"sent 1000 \(OK\); then received 1000|the client closed the connection"
        with pytest.raises(TransportClosed, match=closed):
            await pending
        async with asyncio.timeout(10):  # a guard: the server's handler ends by itself
            await handled.wait()
    assert seen == [(1000, True)]


async def test_connect_ws_server_close_fails_waiters(ws_url: str, no_leaks: None) -> None:
    """The server closing the WebSocket (close frame, then TCP) fails every waiter."""
    client = await AppServerClient.connect_ws(ws_url)
    try:
        sub = client.subscribe()
        with pytest.raises(TransportClosed, match="received 1001"):
            await client.request("bye")
        with pytest.raises(TransportClosed):
            await sub.get()
        with pytest.raises(TransportClosed):
            await client.notify("after")
        assert isinstance(await client.wait_closed(), TransportClosed)
    finally:
        await client.aclose()


async def test_connect_ws_ignores_proxy_settings(
    ws_url: str, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    """HTTP(S)_PROXY and friends never route the loopback app-server through a proxy."""
    from websockets.asyncio.client import connect

    for name in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "socks_proxy"):
        for variant in (name, name.upper()):
            monkeypatch.setenv(variant, "http://127.0.0.1:9")  # discard: nothing listens
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # websockets left to its defaults goes to the (dead) proxy...
    with pytest.raises(ConnectionRefusedError):
        await connect(ws_url, open_timeout=10)
    # ...but the client connects directly.
    async with await AppServerClient.connect_ws(ws_url) as client:
        assert await client.request("echo", 1) == 1


async def test_connect_ws_refused_and_bad_urls(no_leaks: None) -> None:
    """Nobody listening or an upgrade refused: TransportClosed; a URL we cannot use: ConfigError."""
    import socket

    from codex_supervisor.errors import ConfigError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportClosed, match="cannot open"):
        await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}")

    def refuse(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "no\n")

    async with serve(_ws_app_server, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransportClosed, match="403"):
            await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}")

    for url in ("wss://127.0.0.1:1", "http://127.0.0.1:1", "ws://127.0.0.1", "ws://h:x", "ws:///"):
        with pytest.raises(ConfigError):
            await AppServerClient.connect_ws(url)
    # What urlsplit or the resolver refuse with a bare ValueError is a ConfigError too.
    for url in (
        "ws://[::1",  # "Invalid IPv6 URL"
        "ws://[zz]:1/",
        "ws://[::1]:1x",
        "ws://127.0.0.1:99999/",
        "ws://a\x00b:1/",  # "embedded null character", from getaddrinfo
        "ws://a b:1/",
        "ws://127.0.0.1:1/\r\nX: y",
    ):
        with pytest.raises(ConfigError, match="need a ws://HOST:PORT URL"):
            await AppServerClient.connect_ws(url)


async def test_connect_ws_never_follows_a_redirect(no_leaks: None) -> None:
    """A redirect answered to the upgrade is a refusal: its target is never contacted.

    websockets follows up to 10 redirects by default (WEBSOCKETS_MAX_REDIRECTS)
    and has no argument to turn that off.
    """
    visits: list[str] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        visits.append("target")
        writer.close()

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        visits.append("redirect")
        location = f"ws://127.0.0.1:{elsewhere.sockets[0].getsockname()[1]}/"
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    elsewhere = await asyncio.start_server(target, "127.0.0.1", 0)
    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    async with server, elsewhere:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransportClosed, match="302"):
            await AppServerClient.connect_ws(f"ws://127.0.0.1:{port}", timeout=10)
    assert visits == ["redirect"]


# -- run_turn ------------------------------------------------------------------


async def test_turn_completes(spawn: Any, no_leaks: None) -> None:
    """turn/completed settles the turn with the final message and rate limits."""
    async with await spawn("complete") as client:
        result = await run_turn(client, "thr-1", "hi")
    assert result.status == "completed"
    assert not result.inferred
    assert result.turn_id == "turn-1"
    assert result.final_message == "the answer"
    assert [i["type"] for i in result.items] == ["userMessage", "agentMessage"]
    assert result.rate_limits is not None
    assert result.rate_limits_raw is not None
    assert result.rate_limits_raw["primary"]["usedPercent"] == 42
    assert result.error is None


async def test_start_response_already_terminal(spawn: Any, no_leaks: None) -> None:
    """A turn/start answer that is already terminal settles at once."""
    async with await spawn("start-terminal") as client:
        result = await run_turn(client, "thr-1", "hi")
    assert result.status == "failed"
    assert result.usage_limit_exceeded


async def test_final_answer_inference(spawn: Any, no_leaks: None) -> None:
    """A final_answer message without turn/completed settles after the grace."""
    async with await spawn("final-no-completed") as client:
        result = await run_turn(client, "thr-1", "hi", final_answer_grace=0.1)
    assert result.status == "completed"
    assert result.inferred
    assert result.final_message == "inferred answer"


async def test_subagent_work_delays_inference(spawn: Any, no_leaks: None) -> None:
    """A final_answer while a followed subagent turn runs does not settle the turn."""
    async with await spawn("subagent") as client:
        result = await run_turn(client, "thr-1", "hi", final_answer_grace=0.2)
    assert result.inferred
    assert result.final_message == "after the subagent"


async def test_transport_exit_after_final_answer(spawn: Any, no_leaks: None) -> None:
    """An app-server exiting after the final answer keeps the turn's success."""
    async with await spawn("exit-after-final") as client:
        result = await run_turn(client, "thr-1", "hi")
    assert result.status == "completed"
    assert result.inferred
    assert result.final_message == "last words"
    assert result.exit_code == 0
    assert result.rate_limits is not None


async def test_transport_exit_mid_turn(spawn: Any, no_leaks: None) -> None:
    """An app-server dying mid-turn settles the waiter as failed with the exit code."""
    async with await spawn("exit-mid-turn") as client:
        async with asyncio.timeout(5):
            result = await run_turn(client, "thr-1", "hi")
    assert result.status == "failed"
    assert result.exit_code == 7
    assert result.error is not None
    assert "exited before the turn completed (exit code 7)" in result.error.message


async def test_usage_limit(spawn: Any, no_leaks: None) -> None:
    """A usage-limit error followed by turn/completed(failed) reports usageLimitExceeded."""
    async with await spawn("usage-limit") as client:
        result = await run_turn(client, "thr-1", "hi")
    assert result.status == "failed"
    assert result.usage_limit_exceeded
    assert result.error is not None
    assert not result.error.will_retry
    assert result.rate_limits is not None


async def test_terminal_error_without_completion(
    spawn: Any, fake_codex: Path, no_leaks: None
) -> None:
    """A non-retried error not followed by turn/completed settles failed after interrupting."""
    async with await spawn("error-no-completed") as client:
        result = await run_turn(client, "thr-1", "hi", final_answer_grace=0.1)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.message == "stream gone"
    assert result.error.codex_error_info == "responseStreamDisconnected"
    assert interrupts(fake_codex) == [{"threadId": "thr-1", "turnId": "turn-1"}]


async def test_stall_timeout_interrupts(spawn: Any, fake_codex: Path, no_leaks: None) -> None:
    """A stalled turn gets turn/interrupt before the waiter gives up."""
    async with await spawn("stall") as client:
        async with asyncio.timeout(5):
            result = await run_turn(client, "thr-1", "hi", stall_timeout=0.3)
    assert result.status == "interrupted"
    assert result.error is not None
    assert "no progress" in result.error.message
    assert interrupts(fake_codex) == [{"threadId": "thr-1", "turnId": "turn-1"}]


async def test_cancelled_waiter_interrupts(spawn: Any, fake_codex: Path, no_leaks: None) -> None:
    """Cancelling run_turn sends turn/interrupt before the cancellation propagates."""
    async with await spawn("stall") as client:
        waiter = asyncio.ensure_future(run_turn(client, "thr-1", "hi"))
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert interrupts(fake_codex) == [{"threadId": "thr-1", "turnId": "turn-1"}]


async def test_a_deeply_nested_line_is_skipped_not_fatal(
    tmp_path: Path, no_leaks: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A line nested past the recursion limit is logged and skipped; the transport stays up."""
    path = tmp_path / "s.sock"
    deep = b"[" * 100_000 + b"]" * 100_000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "id" not in msg:
                continue
            if msg["method"] == "initialize":
                result: Any = {"userAgent": "sock", "codexHome": "/h"}
            else:
                writer.write(deep + b"\n")
                writer.write(b'{"method":"x","params":' + deep + b"}\n")
                result = "still alive"
            writer.write(json.dumps({"id": msg["id"], "result": result}).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        client = await AppServerClient.connect_unix(path)
        try:
            assert await client.request("deep") == "still alive"
            assert not client.closed
        finally:
            await client.aclose()
    assert "skipping a malformed line" in caplog.text


def test_turn_waiters_have_a_finite_default_stall_bound() -> None:
    """run_turn and capture_turn give up on a silent turn by default: no waiter hangs for ever."""
    import inspect

    from codex_supervisor.appserver import turns

    for function in (turns.run_turn, turns.capture_turn):
        default = inspect.signature(function).parameters["stall_timeout"].default
        assert default == turns.DEFAULT_STALL_TIMEOUT
        assert 0 < default < float("inf")
