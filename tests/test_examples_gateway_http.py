"""examples/gateway.py --listen: the HTTP front's refusals and arguments (no app-server needed).

The turns themselves, with two replicas and the real app-server, are in
tests/e2e/test_gateway_replicas_real.py.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "examples" / "gateway.py"
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GATEWAY), "--pool", str(tmp_path / "p"), "--codex-home",
         str(tmp_path / "b"), "--root", str(tmp_path / "r"), *args],
        check=False, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (tmp_path / "b").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(GATEWAY), "--pool", str(tmp_path / "p"), "--codex-home",
         str(tmp_path / "b"), "--root", str(tmp_path / "r"), "--codex", str(tmp_path / "no-codex"),
         "--listen", "127.0.0.1:0", "--replica", "gw-test", "--leases", str(tmp_path / "leases"),
         "--store", str(tmp_path / "store"),
         "--read-timeout", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    assert "gateway gw-test listening on http://127.0.0.1:" in line, line
    try:
        yield line.rsplit(" ", 1)[1].strip(), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_health_lists_no_workspace_and_names_the_replica(
    gateway: tuple[str, subprocess.Popen[str]],
) -> None:
    url, _ = gateway
    answer = httpx.get(f"{url}/healthz", timeout=30)
    assert answer.status_code == 200
    assert answer.json() == {"replica": "gw-test", "workspaces": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/turn", b"not json", 400, "not JSON"),
        ("POST", "/turn", b"[1]", 400, "JSON object"),
        ("POST", "/turn", b'{"workspace": "", "prompt": "p"}', 400, "workspace"),
        ("POST", "/turn", b'{"workspace": "w", "prompt": 3}', 400, "prompt"),
        ("POST", "/turn", b'{"workspace": "w", "prompt": "p", "thread": 7}', 400, "thread"),
        ("GET", "/turn", b"", 405, "POST"),
        ("POST", "/healthz", b"", 405, "GET"),
        ("GET", "/elsewhere", b"", 404, "POST /turn"),
    ],
)
def test_bad_requests_get_clear_answers_and_spawn_nothing(  # noqa: PLR0917 - parametrized
    gateway: tuple[str, subprocess.Popen[str]],
    method: str,
    path: str,
    body: bytes,
    status: int,
    says: str,
) -> None:
    url, proc = gateway
    answer = httpx.request(method, f"{url}{path}", content=body, timeout=30)
    assert answer.status_code == status
    assert says in answer.text
    assert proc.poll() is None
    assert httpx.get(f"{url}/healthz", timeout=30).json()["workspaces"] == []


def test_a_turn_that_cannot_start_is_a_502_and_the_gateway_lives_on(
    gateway: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = gateway
    answer = httpx.post(f"{url}/turn", json={"workspace": "w", "prompt": "p"}, timeout=60)
    assert answer.status_code in (502, 503), answer.text
    assert answer.json()["message"]
    assert proc.poll() is None


def test_an_oversized_or_broken_request_is_refused(
    gateway: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = gateway
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /turn HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"garbage\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /turn HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(100).startswith(b"HTTP/1.1 400 ")
    # A client that says nothing (or stops halfway) is answered and let go.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        assert conn.recv(100).startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /turn HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        assert conn.recv(100).startswith(b"HTTP/1.1 408 ")
    assert proc.poll() is None


def test_sigterm_stops_it_cleanly(gateway: tuple[str, subprocess.Popen[str]]) -> None:
    _, proc = gateway
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "gateway gw-test stopped" in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "give WORKSPACE=PROMPT arguments, or --listen"),
        (("--listen", "127.0.0.1:0", "w=p"), "--listen serves HTTP"),
        (("--listen", "nowhere"), "expected HOST:PORT"),
        (("--listen", "127.0.0.1:0", "--key-lease-ttl", "0"), "--key-lease-ttl must be positive"),
        (("--listen", "127.0.0.1:0", "--read-timeout", "-1"), "--read-timeout must be positive"),
        (("--listen", "127.0.0.1:0", "--leases", "/tmp/x"), "give them the --store they share"),
    ],
)
def test_wrong_arguments_are_exit_2_with_a_line_saying_why(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    result = _run(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_a_replica_name_the_leases_cannot_take_is_exit_2(tmp_path: Path) -> None:
    result = _run("--listen", "127.0.0.1:0", "--replica", "no spaces", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "replica 'no spaces' must match" in result.stderr
    assert "Traceback" not in result.stderr
