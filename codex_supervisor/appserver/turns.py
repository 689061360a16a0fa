"""Run one app-server turn to its end, whatever the end looks like.

:func:`run_turn` starts a turn and waits for it; :func:`capture_turn` waits for
a turn someone else started. Both *always* settle, on the first of:

* ``turn/completed`` for the turn (the normal end);
* a ``turn/start`` response that is already terminal;
* an inferred completion ``final_answer_grace`` seconds after an agent
  message with phase ``final_answer``, when no item, subagent call or
  subagent turn is still open (``turn/completed`` normally follows within
  milliseconds; this covers an app-server that never sends it);
* a non-retried ``error`` notification not followed by ``turn/completed``
  within the same grace (the waiter then sends ``turn/interrupt`` first);
* the transport closing (EOF or exit — a dead app-server sends nothing
  else, CODEX_FACTS.md §8): inferred success when the last thing seen was a
  final answer with nothing open, otherwise ``failed`` with an error naming
  the exit code;
* ``stall_timeout`` seconds without a notification about the turn (default
  :data:`DEFAULT_STALL_TIMEOUT`, 15 minutes; ``None`` waits for ever, which
  only a caller with its own deadline should choose): the waiter sends
  ``turn/interrupt`` (bounded by ``interrupt_timeout``), waits for the
  interruption within the same bound, and settles.

Every "give up" path sends ``turn/interrupt`` before returning — also when the
waiting task is cancelled — so the model does not keep spending quota for a
waiter that left (LESSONS.md, the Claude Code companion). The waiter creates
no task, so nothing is left behind.

Codex 0.169.0 sends ``phase: null`` on agent messages from a plain Responses
backend; with phase unknown only the transport-exit path treats the last
agent message as the answer (when it was the last item and nothing was open),
never the timer.

Subagents are followed best effort: ``collabAgentToolCall`` items open while
in progress, and their ``receiverThreadIds`` are followed so that those
threads' ``turn/started``/``turn/completed`` count as pending work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, final

import attrs

from ..errors import QuotaParseError, RequestFailed, TransportClosed
from ..snapshots import QuotaSnapshot
from .client import AppServerClient, Notification, Subscription, Turn

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "TurnError",
    "TurnResult",
    "TurnStatus",
    "capture_turn",
    "run_turn",
]

_log = logging.getLogger(__name__)

#: Seconds without any notification about a turn before its waiter gives up
#: (interrupting the turn first). A working turn streams items and deltas far
#: more often; a silent app-server or a wedged upstream must not hang a waiter.
DEFAULT_STALL_TIMEOUT = 900.0

TurnStatus = Literal["completed", "interrupted", "failed"]

_TERMINAL: Final = frozenset({"completed", "interrupted", "failed"})
_FINAL_ANSWER: Final = "final_answer"
USAGE_LIMIT_EXCEEDED: Final = "usageLimitExceeded"


@final
@attrs.frozen(kw_only=True)
class TurnError:
    """Why a turn failed: the message, Codex's error kind, and whether Codex retries."""

    message: str
    #: The ``codexErrorInfo`` kind, e.g. ``"usageLimitExceeded"``; for the
    #: object variants (``{"httpConnectionFailed": {...}}``) their key.
    codex_error_info: str | None = None
    will_retry: bool = False

    @classmethod
    def from_wire(cls, obj: Any, *, will_retry: bool = False) -> TurnError:
        """Read a ``TurnError`` object (``turn.error`` or ``error`` notification's ``error``)."""
        if not isinstance(obj, Mapping):
            return cls(message=str(obj), will_retry=will_retry)
        info = obj.get("codexErrorInfo")
        kind: str | None
        if isinstance(info, str):
            kind = info
        elif isinstance(info, Mapping) and len(info) == 1:
            kind = str(next(iter(info)))
        else:
            kind = None
        return cls(
            message=str(obj.get("message", "")), codex_error_info=kind, will_retry=will_retry
        )


@final
@attrs.frozen(kw_only=True)
class TurnResult:
    """How a turn ended, and what it produced."""

    status: TurnStatus
    turn_id: str
    thread_id: str
    #: True when the end was inferred (final answer + grace, or transport exit)
    #: rather than reported by ``turn/completed`` or the start response.
    inferred: bool = False
    final_message: str | None = None
    items: tuple[Mapping[str, Any], ...] = ()
    error: TurnError | None = None
    rate_limits: QuotaSnapshot | None = None
    rate_limits_raw: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    #: The app-server's exit code when the transport closed before the turn ended.
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the turn completed."""
        return self.status == "completed"

    @property
    def usage_limit_exceeded(self) -> bool:
        """Whether the turn failed because the account hit its usage limit."""
        return self.error is not None and self.error.codex_error_info == USAGE_LIMIT_EXCEEDED


def _text_input(text_or_input: str | Sequence[Mapping[str, Any]]) -> list[Any]:
    if isinstance(text_or_input, str):
        return [{"type": "text", "text": text_or_input}]
    return [dict(part) for part in text_or_input]


class _Tracker:
    """What is known about one turn, fed notification by notification."""

    def __init__(self, thread_id: str, turn_id: str) -> None:
        self.thread_id = thread_id
        self.turn_id = turn_id
        self.items: list[Mapping[str, Any]] = []
        self.final_message: str | None = None
        self.final_phase: str | None = None
        self.last_item_is_answer = False
        self.open_items: set[str] = set()
        self.open_collab: set[str] = set()
        self.child_threads: set[str] = set()
        self.child_turns: set[tuple[str, str]] = set()
        self.error: TurnError | None = None
        self.completed: Turn | None = None
        self.rate_limits_raw: Mapping[str, Any] | None = None
        self.rate_limits_at: datetime | None = None

    # -- state queries ---------------------------------------------------------

    @property
    def pending_work(self) -> bool:
        return bool(self.open_items or self.open_collab or self.child_turns)

    @property
    def terminal_error(self) -> bool:
        return self.error is not None and not self.error.will_retry

    def answered(self, *, strict: bool) -> bool:
        """Whether the last thing the turn produced is its final answer, nothing open."""
        if self.pending_work or not self.last_item_is_answer:
            return False
        if self.final_phase == _FINAL_ANSWER:
            return True
        return not strict and self.final_phase is None

    # -- feeding ---------------------------------------------------------------

    def handle(self, note: Notification) -> bool:
        """Take one notification; False when it is not about this turn."""
        params = note.params if isinstance(note.params, Mapping) else {}
        if note.method == "account/rateLimits/updated":
            raw = params.get("rateLimits")
            if isinstance(raw, Mapping):
                self.rate_limits_raw = raw
                self.rate_limits_at = datetime.now(UTC)
            return False  # not activity of the turn: other turns' usage updates it too
        thread = params.get("threadId")
        if thread == self.thread_id:
            return self._handle_root(note.method, params)
        if isinstance(thread, str) and thread in self.child_threads:
            self._handle_child(note.method, thread, params)
            return True
        return False

    def _handle_root(self, method: str, params: Mapping[str, Any]) -> bool:
        if method == "turn/completed":
            turn = params.get("turn")
            if isinstance(turn, Mapping) and turn.get("id") == self.turn_id:
                self.completed = Turn.from_wire(dict(turn))
                return True
            return False
        turn_id = params.get("turnId")
        if turn_id is not None and turn_id != self.turn_id:
            return False
        if method == "error":
            self.error = TurnError.from_wire(
                params.get("error"), will_retry=bool(params.get("willRetry"))
            )
        elif method == "item/started":
            item = params.get("item")
            if isinstance(item, Mapping):
                self._item_started(item)
        elif method == "item/completed":
            item = params.get("item")
            if isinstance(item, Mapping):
                self._item_completed(item, root=True)
        return True

    def _handle_child(self, method: str, thread: str, params: Mapping[str, Any]) -> None:
        turn = params.get("turn")
        turn_id = turn.get("id") if isinstance(turn, Mapping) else None
        if method == "turn/started" and isinstance(turn_id, str):
            self.child_turns.add((thread, turn_id))
        elif method == "turn/completed" and isinstance(turn_id, str):
            self.child_turns.discard((thread, turn_id))
        elif method in ("item/started", "item/completed"):
            item = params.get("item")
            # Nested subagents: follow what the child spawns too.
            if isinstance(item, Mapping) and item.get("type") == "collabAgentToolCall":
                self._follow(item)

    def _item_started(self, item: Mapping[str, Any]) -> None:
        item_id = item.get("id")
        if isinstance(item_id, str):
            self.open_items.add(item_id)
        if item.get("type") == "collabAgentToolCall":
            self._follow(item)
            if isinstance(item_id, str):
                self.open_collab.add(item_id)
        self.last_item_is_answer = False

    def _item_completed(self, item: Mapping[str, Any], *, root: bool) -> None:
        item_id = item.get("id")
        if isinstance(item_id, str):
            self.open_items.discard(item_id)
            self.open_collab.discard(item_id)
        if root:
            self.items.append(item)
        kind = item.get("type")
        if kind == "collabAgentToolCall":
            self._follow(item)
        if kind == "agentMessage":
            text = item.get("text")
            self.final_message = text if isinstance(text, str) else self.final_message
            phase = item.get("phase")
            self.final_phase = phase if isinstance(phase, str) else None
            self.last_item_is_answer = self.final_phase in (None, _FINAL_ANSWER)
        elif kind != "userMessage":
            self.last_item_is_answer = False

    def _follow(self, item: Mapping[str, Any]) -> None:
        receivers = item.get("receiverThreadIds")
        if isinstance(receivers, Sequence) and not isinstance(receivers, str):
            self.child_threads.update(r for r in receivers if isinstance(r, str))

    # -- results ---------------------------------------------------------------

    def result(
        self,
        status: TurnStatus,
        *,
        inferred: bool = False,
        error: TurnError | None = None,
        exit_code: int | None = None,
    ) -> TurnResult:
        return TurnResult(
            status=status,
            turn_id=self.turn_id,
            thread_id=self.thread_id,
            inferred=inferred,
            final_message=self.final_message,
            items=tuple(self.items),
            error=error,
            rate_limits=self._snapshot(),
            rate_limits_raw=self.rate_limits_raw,
            exit_code=exit_code,
        )

    def from_turn(self, turn: Turn) -> TurnResult:
        status: TurnStatus = turn.status if turn.status in _TERMINAL else "failed"  # type: ignore[assignment]
        error = TurnError.from_wire(turn.error) if turn.error is not None else None
        if error is None and status != "completed":
            error = self.error
        return self.result(status, error=error)

    def on_transport_closed(self, exc: TransportClosed) -> TurnResult:
        if self.answered(strict=False) and not self.terminal_error:
            _log.info(
                "app-server exited after the final answer of turn %s; treating it as completed",
                self.turn_id,
            )
            return self.result("completed", inferred=True, exit_code=exc.returncode)
        code = "" if exc.returncode is None else f" (exit code {exc.returncode})"
        error = (
            self.error
            if self.terminal_error
            else TurnError(message=f"the app-server exited before the turn completed{code}")
        )
        _log.warning("turn %s failed: %s", self.turn_id, exc)
        return self.result("failed", inferred=True, error=error, exit_code=exc.returncode)

    def _snapshot(self) -> QuotaSnapshot | None:
        if self.rate_limits_raw is None or self.rate_limits_at is None:
            return None
        try:
            return QuotaSnapshot.from_app_server(
                dict(self.rate_limits_raw), account="", observed_at=self.rate_limits_at
            )
        except QuotaParseError as exc:
            _log.warning("cannot read the app-server's rate limits: %s", exc)
            return None


async def run_turn(
    client: AppServerClient,
    thread_id: str,
    text_or_input: str | Sequence[Mapping[str, Any]],
    *,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    final_answer_grace: float = 0.25,
    extra_params: Mapping[str, Any] | None = None,
    interrupt_timeout: float = 5.0,
) -> TurnResult:
    """Start a turn on ``thread_id`` and wait until it settles (see the module docs).

    ``text_or_input`` is the prompt text, or a list of ``UserInput`` objects.
    ``extra_params`` are merged into the ``turn/start`` params. A ``turn/start``
    the app-server refuses raises
    :class:`~codex_supervisor.errors.RequestFailed`; every other outcome is a
    :class:`TurnResult`.
    """
    # Subscribed before turn/start is sent: the notifications that follow the
    # response wait in the queue until the turn id is known.
    sub = client.subscribe()
    try:
        params: dict[str, Any] = {"threadId": thread_id, "input": _text_input(text_or_input)}
        params.update(extra_params or {})
        try:
            response = await client.request("turn/start", params, timeout=stall_timeout)
        except TransportClosed as exc:
            return _Tracker(thread_id, "").on_transport_closed(exc)
        except TimeoutError:
            return _Tracker(thread_id, "").result(
                "failed",
                error=TurnError(message=f"turn/start was not answered within {stall_timeout:g}s"),
            )
        turn = Turn.from_wire(response.get("turn") if isinstance(response, Mapping) else None)
        if turn.terminal:
            tracker = _Tracker(thread_id, turn.id)
            # Take in what already arrived (items, rate limits) without waiting.
            with contextlib.suppress(TransportClosed, StopAsyncIteration):
                while sub.pending():
                    tracker.handle(await sub.get())
            return tracker.from_turn(tracker.completed or turn)
        return await capture_turn(
            client,
            thread_id,
            turn.id,
            sub,
            stall_timeout=stall_timeout,
            final_answer_grace=final_answer_grace,
            interrupt_timeout=interrupt_timeout,
        )
    finally:
        sub.close()


async def capture_turn(  # noqa: PLR0912 - one branch per way a turn can end
    client: AppServerClient,
    thread_id: str,
    turn_id: str,
    subscription: Subscription,
    *,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    final_answer_grace: float = 0.25,
    interrupt_timeout: float = 5.0,
) -> TurnResult:
    """Wait for a turn that is already started, reading ``subscription``.

    The subscription must have been created before the turn was started
    (and must receive every method); it is not closed here.
    """
    tracker = _Tracker(thread_id, turn_id)
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    infer_at: float | None = None
    error_at: float | None = None
    try:
        while True:
            stall_at = None if stall_timeout is None else last_activity + stall_timeout
            wake = min((t for t in (stall_at, infer_at, error_at) if t is not None), default=None)
            try:
                async with asyncio.timeout_at(wake):
                    note = await subscription.get()
            except TimeoutError:
                now = loop.time()
                if error_at is not None and now >= error_at:
                    assert tracker.error is not None
                    _log.warning("turn %s: error not followed by turn/completed", turn_id)
                    return await _give_up(
                        client,
                        tracker,
                        subscription,
                        tracker.error,
                        interrupt_timeout,
                        keep_status=False,
                    )
                if infer_at is not None and now >= infer_at:
                    _log.info("turn %s: final answer without turn/completed; inferring", turn_id)
                    return tracker.result("completed", inferred=True)
                if stall_at is not None and now >= stall_at:
                    assert stall_timeout is not None
                    stalled = TurnError(message=f"no progress for {stall_timeout:g}s; interrupted")
                    _log.warning("turn %s stalled for %gs; interrupting", turn_id, stall_timeout)
                    return await _give_up(
                        client, tracker, subscription, stalled, interrupt_timeout, keep_status=True
                    )
                continue
            except TransportClosed as exc:
                return tracker.on_transport_closed(exc)
            except StopAsyncIteration:
                return tracker.result(
                    "failed", error=TurnError(message="the subscription was closed")
                )
            if not tracker.handle(note):
                continue
            now = loop.time()
            last_activity = now
            if tracker.completed is not None:
                return tracker.from_turn(tracker.completed)
            if tracker.terminal_error:
                error_at = error_at if error_at is not None else now + final_answer_grace
            else:
                error_at = None
            if tracker.answered(strict=True):
                infer_at = infer_at if infer_at is not None else now + final_answer_grace
            else:
                infer_at = None
    except asyncio.CancelledError:
        # The caller gave up: stop the model before leaving (bounded).
        await _interrupt(client, thread_id, turn_id, min(interrupt_timeout, 2.0))
        raise


async def _interrupt(
    client: AppServerClient,
    thread_id: str,
    turn_id: str,
    timeout: float,  # noqa: ASYNC109 - passed to request()
) -> bool:
    """Send ``turn/interrupt``, best effort; whether the app-server acknowledged it."""
    try:
        await client.turn_interrupt(thread_id, turn_id, timeout=timeout)
    except (TransportClosed, RequestFailed, TimeoutError) as exc:
        _log.warning("turn/interrupt of %s failed: %s", turn_id, exc)
        return False
    except asyncio.CancelledError:
        # Cancelled again while interrupting: the caller's cancellation wins.
        return False
    return True


async def _give_up(
    client: AppServerClient,
    tracker: _Tracker,
    subscription: Subscription,
    reason: TurnError,
    timeout: float,  # noqa: ASYNC109 - one deadline for the interrupt and its completion
    *,
    keep_status: bool,
) -> TurnResult:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    acked = await _interrupt(client, tracker.thread_id, tracker.turn_id, timeout)
    exit_code: int | None = None
    # Wait (within the same bound) for the turn/completed the interrupt causes.
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        async with asyncio.timeout_at(deadline):
            while tracker.completed is None:
                try:
                    tracker.handle(await subscription.get())
                except TransportClosed as exc:
                    exit_code = exc.returncode
                    break
    if not keep_status:
        return tracker.result("failed", error=reason, exit_code=exit_code)
    if tracker.completed is not None and tracker.completed.status == "completed":
        return tracker.from_turn(tracker.completed)
    status: TurnStatus = "interrupted" if acked else "failed"
    if tracker.completed is not None and tracker.completed.status == "failed":
        status = "failed"
    return tracker.result(status, error=reason, exit_code=exit_code)
