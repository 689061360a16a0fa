"""The follow loop sleeps until its rollout is written: watchdog wakes it, polling is the fallback.

No timing is asserted: each run's safety poll is an hour, so a turn end the
supervisor sees at all was seen because a write woke it (or, when the
watcher failed, because it fell back to its fast poll).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.api import BaseObserver, EventEmitter

from codex_supervisor import _watch
from codex_supervisor._watch import ChangeWatcher
from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import CollectingSink, SessionBound
from codex_supervisor.process import Child, launch
from codex_supervisor.supervisor import Supervisor, SupervisorConfig
from codex_supervisor.testing import FakeCodexBackend, install_simulator, offline_flags

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def _watchdog_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if isinstance(t, BaseObserver | EventEmitter) and t.is_alive()
    ]


class _FailingObserver:
    """An observer that cannot watch: as when the inotify watch limit is reached."""

    def __init__(self) -> None:
        raise OSError(28, "inotify watch limit reached")


# -- ChangeWatcher on its own -------------------------------------------------------------


async def test_a_write_to_a_tracked_file_wakes_and_close_ends_the_threads(tmp_path: Path) -> None:
    target = tmp_path / "rollout.jsonl"
    target.write_text("")
    woken = asyncio.Event()
    loop = asyncio.get_running_loop()
    watcher = ChangeWatcher(lambda: loop.call_soon_threadsafe(woken.set))
    try:
        assert watcher.track([target])
        assert watcher.active
        target.read_text()  # a read is not a write
        with target.open("a") as fh:
            fh.write("x\n")
        await woken.wait()
        # Coalesced: no second wake until re-armed, then the next write wakes again.
        woken.clear()
        watcher.rearm()
        with target.open("a") as fh:
            fh.write("y\n")
        await woken.wait()
        assert watcher.wakeups == 2
        assert _watchdog_threads()
    finally:
        watcher.close()
    assert not watcher.active
    assert _watchdog_threads() == []
    watcher.close()  # twice is fine


def test_a_watcher_that_cannot_start_says_why_and_stays_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "rollout.jsonl"
    target.write_text("")
    watcher = ChangeWatcher(lambda: None, observer_factory=_FailingObserver)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="codex_supervisor._watch"):
        assert not watcher.track([target])
        assert not watcher.track([target])  # no second try, no second warning
    assert watcher.failed is not None
    assert "inotify watch limit reached" in watcher.failed
    assert [r.getMessage() for r in caplog.records if "polling instead" in r.getMessage()] == [
        f"cannot watch the rollout for writes ({watcher.failed}); polling instead"
    ]
    watcher.close()


# -- the Supervisor's follow loop -----------------------------------------------------------


class _TurnEnds(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("turn ended"):
            self.count += 1


def _turn(kind: str) -> bytes:
    line = {
        "timestamp": "2030-01-01T00:00:00.000Z",
        "type": "event_msg",
        "payload": {"type": kind, "turn_id": "t-appended", "last_agent_message": "ok"},
    }
    return (json.dumps(line) + "\n").encode()


async def _append_a_turn_and_see_it(
    tmp_path: Path,
    backend: FakeCodexBackend,
    *,
    until: Callable[[], bool] | None = None,
    **config: Any,
) -> None:
    """An idle interactive session; a turn appended to its rollout must be seen, then stop.

    With ``until``, more turns are appended (each seen) until it holds, ten at most.
    """
    base = backend.write_codex_home(tmp_path / "codex-home")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    backend.add_account("id-alpha", per_request_percent=1)
    pool.import_auth("alpha", backend.write_auth(tmp_path / "login-alpha", "id-alpha"))
    work = tmp_path / "work"
    work.mkdir()
    read_end, write_end = os.pipe()  # the child's stdin, never written: it idles

    async def idle_stdin(argv: Sequence[str], **kw: Any) -> Child:
        return await launch(argv, **{**kw, "stdin": read_end})

    sink = CollectingSink()
    supervisor = Supervisor(
        pool,
        config=SupervisorConfig(
            codex=str(install_simulator(tmp_path / "bin")),
            poll_interval=0.05,
            **{"safety_poll": HOUR, "quota_stale_after": HOUR, **config},
        ),
        sink=sink,
        environ={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **backend.codex_env()},
        launcher=idle_stdin,
    )
    ends = _TurnEnds()
    logger = logging.getLogger("codex_supervisor.supervisor")
    logger.addHandler(ends)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    run = asyncio.create_task(supervisor.run([*offline_flags(), "first prompt"], cwd=work))
    try:
        while ends.count < 1:  # the first turn ended: the session idles now
            assert not run.done(), run.result()
            await asyncio.sleep(0.02)
        [bound] = [e for e in sink.events if isinstance(e, SessionBound)]
        for seen in range(2, 12):
            fd = os.open(bound.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, _turn("task_started") + _turn("task_complete"))
            finally:
                os.close(fd)
            # Seen without the hour-long safety poll: a write woke the loop (or
            # the fallback poll found it). The test's timeout guards the rest.
            while ends.count < seen:
                assert not run.done(), run.result()
                await asyncio.sleep(0.02)
            if until is None or until():
                break
        supervisor.request_stop()
        result = await run
        assert result.exit_code == 143
    finally:
        logger.removeHandler(ends)
        logger.setLevel(old_level)
        if not run.done():
            run.cancel()
        os.close(read_end)
        os.close(write_end)
    # Every exit path closes the watcher: no watchdog thread outlives the run.
    assert _watchdog_threads() == []


@pytest.mark.timeout(60)
async def test_the_follow_wakes_on_a_rollout_write(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ChangeWatcher] = []
    real = ChangeWatcher

    def recording(wake: Any, **kw: Any) -> ChangeWatcher:
        watcher = real(wake, **kw)
        started.append(watcher)
        return watcher

    monkeypatch.setattr("codex_supervisor.supervisor.ChangeWatcher", recording)
    await _append_a_turn_and_see_it(tmp_path, backend)
    [watcher] = started
    assert watcher.failed is None
    assert watcher.wakeups >= 1  # the appended turn (and the first turn's lines) woke it
    assert not watcher.active  # closed


@pytest.mark.timeout(60)
async def test_the_follow_polls_when_the_watcher_cannot_start(
    tmp_path: Path,
    backend: FakeCodexBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_watch, "Observer", _FailingObserver)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor._watch"):
        await _append_a_turn_and_see_it(tmp_path, backend)
    assert any("polling instead" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
async def test_watching_can_be_switched_off(
    tmp_path: Path, backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: Any, **__: Any) -> ChangeWatcher:
        raise AssertionError("no watcher when watch_files is off")

    monkeypatch.setattr("codex_supervisor.supervisor.ChangeWatcher", never)
    await _append_a_turn_and_see_it(tmp_path, backend, watch_files=False)


def test_config_validates_the_safety_poll() -> None:
    from codex_supervisor.errors import ConfigError

    with pytest.raises(ConfigError, match="safety_poll"):
        SupervisorConfig(safety_poll=0)


@pytest.mark.timeout(60)
async def test_a_blind_watch_is_noticed_and_the_run_polls(
    tmp_path: Path,
    backend: FakeCodexBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A watch that announces nothing (a replaced folder, a filesystem without events).

    The safety look finds lines no event announced: one WARNING, then polling.
    Lines read by the look right after a new watch is set up (the hook inbox
    appearing at a turn's end) prove nothing, since a write just before it
    goes unannounced anyway: then it takes the next turn to notice.
    """

    class Blind(ChangeWatcher):
        def _changed(self) -> None:
            pass  # events are lost

    monkeypatch.setattr("codex_supervisor.supervisor.ChangeWatcher", Blind)
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.supervisor"):
        await _append_a_turn_and_see_it(
            tmp_path,
            backend,
            safety_poll=0.2,
            until=lambda: any("without a file event" in r.getMessage() for r in caplog.records),
        )
    blind = [r for r in caplog.records if "without a file event" in r.getMessage()]
    assert len(blind) == 1
