"""Two replicas of examples/gateway.py on one S3 bucket and one lease backend, real app-server.

Each replica is its own process with its own root (as on two machines); they
share the object store (moto's S3 server on 127.0.0.1) and the key leases (a
folder, or a real redis-server). Concurrent first requests for one workspace
spawn one app-server in all; a replica killed with SIGKILL mid-turn hands the
workspace over once its lease expires, and the earlier thread resumes on the
other replica from the checkpoint in the bucket.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from codex_supervisor import _toml
from codex_supervisor.accounts import AccountPool
from codex_supervisor.testing import (
    Behaviour,
    FakeCodexBackend,
    RedisServer,
    S3Server,
    codex_config,
    hermetic_env,
)

from .test_appserver_pool_real import app_servers_under

pytestmark = pytest.mark.real_codex

GATEWAY = Path(__file__).resolve().parents[2] / "examples" / "gateway.py"
KEY_LEASE_TTL = 3.0


class Replica:
    """One gateway process serving HTTP."""

    def __init__(self, name: str, root: Path, proc: subprocess.Popen[str], url: str) -> None:
        self.name = name
        self.root = root
        self.proc = proc
        self.url = url

    def turn(self, workspace: str, prompt: str, thread: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"workspace": workspace, "prompt": prompt}
        if thread is not None:
            body["thread"] = thread
        return httpx.post(f"{self.url}/turn", json=body, timeout=120)


def until(condition: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
    """Poll ``condition`` until truthy (a bound for a hang, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


@pytest.fixture
def world(
    tmp_path: Path, backend: FakeCodexBackend, codex_bin: Path, s3_server: S3Server
) -> Iterator[Callable[[str, str], Replica]]:
    base = tmp_path / "base"
    backend.write_codex_home(base)
    accounts = AccountPool(root=tmp_path / "accounts", base_codex_home=base)
    backend.add_account("id-alpha", five_hour_used=5.0)
    accounts.import_auth("alpha", backend.write_auth(tmp_path / "login-alpha", "id-alpha"))
    config = tmp_path / "gateway.toml"
    config.write_text(_toml.dumps(codex_config(backend)))
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    bucket = s3_server.bucket(f"gateway-{uuid.uuid4().hex[:12]}")
    env = hermetic_env(base, tmp_path / "home", backend)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.update(
        AWS_ENDPOINT=s3_server.endpoint,
        AWS_ALLOW_HTTP="true",
        AWS_VIRTUAL_HOSTED_STYLE_REQUEST="false",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    started: list[Replica] = []

    def start(name: str, leases: str) -> Replica:
        root = tmp_path / name
        stderr = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [
                sys.executable, str(GATEWAY),
                "--pool", str(tmp_path / "accounts"), "--codex-home", str(base),
                "--root", str(root), "--codex", str(codex_bin),
                "--config-toml", str(config), "--cwd", str(tmp_path / "work"),
                "--listen", "127.0.0.1:0", "--replica", name,
                "--store", f"s3://{bucket}/homes", "--leases", leases,
                "--key-lease-ttl", str(KEY_LEASE_TTL),
            ],
            env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        stderr.close()
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert " listening on http://127.0.0.1:" in line, (
            line + (tmp_path / f"{name}.log").read_text()
        )
        replica = Replica(name, root, proc, line.rsplit(" ", 1)[1].strip())
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        backend.release_stalls()
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.kill()
            replica.proc.wait(timeout=30)
            assert replica.proc.stdout is not None
            replica.proc.stdout.close()


@pytest.fixture(params=["file", "redis"])
def leases(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> str:
    if request.param == "file":
        return str(tmp_path / "leases")
    return redis_server.url


def test_two_replicas_spawn_once_and_one_takes_over_from_a_killed_one(
    world: Callable[[str, str], Replica],
    leases: str,
    backend: FakeCodexBackend,
    tmp_path: Path,
) -> None:
    backend.script(Behaviour.reply("first answer"), Behaviour.hold("never seen"))
    replicas = [world("gw-a", leases), world("gw-b", leases)]

    # 1. Concurrent first requests for one workspace on both replicas.
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def first(replica: Replica) -> None:
        barrier.wait()
        answers[replica.name] = replica.turn("ws-1", "first prompt")

    threads = [threading.Thread(target=first, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [200, 409], {n: a.text for n, a in answers.items()}
    holder = next(r for r in replicas if answers[r.name].status_code == 200)
    other = next(r for r in replicas if r is not holder)
    served = answers[holder.name].json()
    assert served["status"] == "completed"
    assert served["final_message"] == "first answer"
    assert served["replica"] == holder.name
    assert served["checkpoint"] == 1
    refused = answers[other.name].json()
    assert refused["error"] == "held"
    assert refused["replica"] == holder.name
    assert refused["address"] == holder.url
    assert app_servers_under(holder.root) == [served["pid"]]
    assert app_servers_under(other.root) == []
    thread_id = served["thread"]

    # 2. A second turn is in flight on the holder when it is killed with SIGKILL.
    lost: list[BaseException] = []

    def second() -> None:
        try:
            holder.turn("ws-1", "second prompt", thread_id)
        except httpx.HTTPError as exc:
            lost.append(exc)

    in_flight = threading.Thread(target=second)
    in_flight.start()
    until(lambda: backend.received("second prompt"), "the second turn reaches the model")
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=30)
    in_flight.join(timeout=60)
    assert lost, "the request to the killed replica failed"
    # Its app-server does not outlive it (it dies with its parent).
    until(lambda: app_servers_under(holder.root) == [], "the killed replica's server exits")

    # 3. The other replica refuses while the dead one's lease lasts, then takes over.
    refusals: list[dict[str, Any]] = []

    def third() -> httpx.Response | None:
        answer = other.turn("ws-1", "third prompt", thread_id)
        if answer.status_code == 409:
            refusals.append(answer.json())
            return None
        return answer

    answer = until(third, "the other replica takes the workspace over", limit=120)
    assert answer.status_code == 200, answer.text
    taken = answer.json()
    assert taken["status"] == "completed", taken
    assert taken["replica"] == other.name
    assert taken["thread"] == thread_id
    assert all(r["replica"] == holder.name for r in refusals)
    # The thread resumed from the checkpoint: the model saw the first turn again.
    [request] = [r for r in backend.responses_requests() if "third prompt" in r.input_texts]
    history = request.input_texts
    assert "first prompt" in history, history
    # ...as checkpointed after it: the turn cut off by the kill was never archived.
    assert "second prompt" not in history, history
    assert app_servers_under(other.root) == [taken["pid"]]
    # The store's credentials are the gateway's: none reached the app-server.
    environ = Path(f"/proc/{taken['pid']}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"AWS_")]

    # A thread id the server does not know is refused and not remembered.
    bogus = other.turn("ws-1", "fourth prompt", "00000000-0000-0000-0000-000000000000")
    assert bogus.status_code == 502, bogus.text
    again = other.turn("ws-1", "fifth prompt")
    assert again.status_code == 200, again.text
    assert again.json()["thread"] == thread_id

    # 4. A clean stop archives the workspace once more and leaves nothing running.
    other.proc.send_signal(signal.SIGTERM)
    assert other.proc.wait(timeout=60) == 0
    assert app_servers_under(other.root) == []
    assert not any((other.root / "homes").iterdir())
    log = (tmp_path / f"{other.name}.log").read_text()
    assert "Traceback" not in log, log
