"""FakeClock: virtual time, manual and autojump sleeping, sleepers and cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from codex_supervisor.clock import Clock
from codex_supervisor.testing import FakeClock

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_is_a_clock_with_aware_utc_time() -> None:
    """FakeClock satisfies the Clock protocol and its now() is aware UTC."""
    clock = FakeClock()
    assert isinstance(clock, Clock)
    assert clock.now() == FakeClock.DEFAULT_START
    assert clock.now().tzinfo is UTC
    assert clock.monotonic() == 1000.0


def test_start_is_converted_to_utc_and_naive_is_refused() -> None:
    """An aware start in another zone is stored in UTC; a naive one is a ValueError."""
    tokyo = timezone(timedelta(hours=9))
    clock = FakeClock(datetime(2026, 3, 4, 14, 6, 7, tzinfo=tokyo), monotonic_start=0.0)
    assert clock.now() == T0
    assert clock.now().tzinfo is UTC
    assert clock.monotonic() == 0.0
    with pytest.raises(ValueError, match="aware"):
        FakeClock(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive value is the point


def test_advance_moves_both_clocks_and_never_back() -> None:
    """advance(s) adds s to monotonic and to now(); a negative or NaN step is a ValueError."""
    clock = FakeClock(T0)
    clock.advance(90.5)
    assert clock.monotonic() == 1090.5
    assert clock.now() == T0 + timedelta(seconds=90.5)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    assert clock.monotonic() == 1090.5


def test_many_small_steps_do_not_drift_the_wall_clock() -> None:
    """Ten thousand 0.1 s steps leave now() exactly as far from start as monotonic moved."""
    clock = FakeClock(T0, monotonic_start=0.0)
    for _ in range(10_000):
        clock.advance(0.1)
    assert clock.now() == T0 + timedelta(seconds=clock.monotonic())
    assert abs(clock.now() - (T0 + timedelta(seconds=1000))) < timedelta(microseconds=1)


def test_set_now_moves_only_the_wall_clock() -> None:
    """set_now steps wall-clock time either way and leaves monotonic time alone."""
    clock = FakeClock(T0)
    clock.set_now(T0 - timedelta(hours=1))
    assert clock.now() == T0 - timedelta(hours=1)
    assert clock.monotonic() == 1000.0
    clock.advance(5)
    assert clock.now() == T0 - timedelta(hours=1) + timedelta(seconds=5)
    with pytest.raises(ValueError, match="aware"):
        clock.set_now(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive value is the point


@pytest.mark.anyio
async def test_sleep_waits_for_advance_past_its_deadline() -> None:
    """In manual mode a sleeper stays asleep until the clock reaches its deadline."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers()
    assert clock.sleepers == (1010.0,)
    clock.advance(9.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)
    await task
    assert clock.sleepers == ()
    assert clock.sleeps == [10]


@pytest.mark.anyio
async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    """One advance wakes every due sleeper, earliest deadline first, ties in sleep order."""
    clock = FakeClock()
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = {
        name: asyncio.create_task(nap(name, seconds))
        for name, seconds in [("c", 3), ("a", 1), ("late", 9), ("b", 2), ("b2", 2)]
    }
    await clock.wait_for_sleepers(5)
    assert clock.sleepers == (1001.0, 1002.0, 1002.0, 1003.0, 1009.0)
    late = tasks.pop("late")
    clock.advance(5)
    await asyncio.wait(tasks.values())
    assert woke == ["a", "b", "b2", "c"]
    assert clock.sleepers == (1009.0,)
    late.cancel()
    await asyncio.wait({late})


@pytest.mark.anyio
async def test_zero_and_negative_sleeps_only_yield() -> None:
    """A zero or negative sleep returns after one loop turn without becoming a sleeper."""
    clock = FakeClock()
    await clock.sleep(0)
    await clock.sleep(-3)
    assert clock.sleepers == ()
    assert clock.monotonic() == 1000.0
    assert clock.sleeps == [0, -3]


@pytest.mark.anyio
async def test_cancelling_a_sleeper_removes_it() -> None:
    """A cancelled sleeping task stops counting as a sleeper at once and is never woken."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await clock.wait_for_sleepers()
    task.cancel()
    assert clock.sleepers == ()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == ()
    clock.advance(10)  # waking nothing, and not tripping over the cancelled future


@pytest.mark.anyio
async def test_wait_for_sleepers_is_bounded_in_loop_turns() -> None:
    """wait_for_sleepers raises RuntimeError when too few tasks sleep within max_turns."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(1))
    with pytest.raises(RuntimeError, match="1 of 2 expected sleepers after 50"):
        await clock.wait_for_sleepers(2, max_turns=50)
    task.cancel()
    await asyncio.wait({task})


@pytest.mark.anyio
async def test_autojump_runs_a_sleeper_to_its_deadline() -> None:
    """With autojump a lone sleeper returns once the loop is idle, the clock at its deadline."""
    clock = FakeClock(T0, autojump=True)
    await clock.sleep(3600)
    assert clock.monotonic() == 4600.0
    assert clock.now() == T0 + timedelta(hours=1)
    assert clock.sleepers == ()


@pytest.mark.anyio
async def test_autojump_wakes_concurrent_sleepers_in_deadline_order() -> None:
    """Autojump steps through pending deadlines one at a time, earliest first."""
    clock = FakeClock(autojump=True, monotonic_start=0.0)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async def twice() -> None:
        await clock.sleep(1)
        woke.append(("twice-1", clock.monotonic()))
        await clock.sleep(3)
        woke.append(("twice-2", clock.monotonic()))

    await asyncio.gather(nap("five", 5), twice(), nap("two", 2))
    assert woke == [("twice-1", 1.0), ("two", 2.0), ("twice-2", 4.0), ("five", 5.0)]


@pytest.mark.anyio
async def test_autojump_waits_while_other_tasks_make_progress() -> None:
    """Autojump does not move the clock while another task keeps running loop turns."""
    clock = FakeClock(autojump=True, idle_turns=100)
    task = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers()
    for _ in range(90):
        await asyncio.sleep(0)
    assert clock.monotonic() == 1000.0
    assert not task.done()
    await task
    assert clock.monotonic() == 1010.0


@pytest.mark.anyio
async def test_autojump_restarts_its_count_after_clock_activity() -> None:
    """A manual advance counts as activity, so autojump waits idle_turns afresh after it."""
    clock = FakeClock(autojump=True, idle_turns=100)
    task = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers()
    for _ in range(60):
        await asyncio.sleep(0)
    clock.advance(1)
    for _ in range(60):
        await asyncio.sleep(0)
    assert clock.monotonic() == 1001.0
    await task
    assert clock.monotonic() == 1010.0


@pytest.mark.anyio
async def test_autojump_skips_cancelled_sleepers() -> None:
    """A cancelled sleeper's deadline is never jumped to."""
    clock = FakeClock(autojump=True, monotonic_start=0.0)
    early = asyncio.create_task(clock.sleep(1))
    late = asyncio.create_task(clock.sleep(7))
    await clock.wait_for_sleepers(2)
    early.cancel()
    await asyncio.wait({early})
    times: list[float] = []

    async def watch() -> None:
        while not late.done():
            times.append(clock.monotonic())
            await asyncio.sleep(0)

    await asyncio.gather(late, watch())
    assert times[0] == 0.0
    assert set(times) <= {0.0, 7.0}
    assert clock.monotonic() == 7.0


@pytest.mark.anyio
async def test_autojump_never_jumps_to_an_infinite_deadline() -> None:
    """A task sleeping forever lets finite sleepers finish and leaves the clock finite."""
    clock = FakeClock(autojump=True, monotonic_start=0.0)
    forever = asyncio.create_task(clock.sleep(float("inf")))
    await clock.sleep(2)
    for _ in range(300):
        await asyncio.sleep(0)
    assert clock.monotonic() == 2.0
    assert clock.sleepers == (float("inf"),)
    await clock.sleep(1)
    assert clock.monotonic() == 3.0
    forever.cancel()
    await asyncio.wait({forever})


def test_repr_shows_time_and_sleepers() -> None:
    """repr names the virtual times, the sleeper count and the mode."""
    clock = FakeClock(T0, autojump=True)
    assert repr(clock) == (
        "FakeClock(monotonic=1000.0, now='2026-03-04T05:06:07+00:00', sleepers=0, autojump=True)"
    )
    assert clock.autojump
    with pytest.raises(ValueError, match="idle_turns"):
        FakeClock(idle_turns=0)
