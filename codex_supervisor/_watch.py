"""Wake an asyncio loop when given files are written: watchdog's native file watchers.

The follow loop of a supervised run sleeps until the rollout it follows (or
the pool state) changes, instead of looking several times a second.
:class:`ChangeWatcher` watches the folders of the files it tracks (not
recursively) with watchdog's observer for the platform (inotify on Linux,
FSEvents on macOS, kqueue on the BSDs) and calls ``wake`` from the
observer's thread when one of those files is created, written, moved or
removed. Only writes count: the follower's own reads (opening the file) are
not asked for, so they never wake it.

watchdog rather than watchfiles: watchfiles' consumer loop wakes every
``step`` milliseconds (20 times a second by default) even when nothing
changes, which costs more than the poll it would replace; watchdog's threads
block in the kernel until an event arrives.

When the watcher cannot start (no inotify instance or watch left, a
platform without a native backend) :meth:`ChangeWatcher.track` returns
False with the reason in :attr:`ChangeWatcher.failed`, and the caller polls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

__all__ = ["ChangeWatcher"]

log = logging.getLogger(__name__)


class _QuietStop(logging.Filter):
    """Drops watchdog's ERROR about events queued while its thread stops.

    Harmless (the watch is being closed as the child exits) but, with no
    handler configured, Python prints it on stderr over the Codex screen.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())

#: The events that mean "the file's content may have changed"; opens and
#: read-only closes (the follower's own reads) are left out of the kernel mask.
_WRITES: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


class _Handler(FileSystemEventHandler):
    """Runs on the observer's thread: filters by file name, then wakes (coalesced)."""

    def __init__(self, watcher: ChangeWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = self._watcher._names  # noqa: SLF001 - one object split in two for watchdog
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and os.path.basename(os.fsdecode(p)) in names for p in paths):  # noqa: PTH119
            self._watcher._changed()  # noqa: SLF001


class ChangeWatcher:
    """Calls ``wake`` (from another thread) when a tracked file is written.

    Wake-ups are coalesced: after one, the next comes only once
    :meth:`rearm` was called (call it before looking at the files, so a
    write during the look wakes again). :meth:`close` stops the observer's
    threads; it is safe to call more than once.

    ``observer_factory`` builds the watchdog observer (the platform's
    native one by default); tests inject one that fails.
    """

    def __init__(
        self,
        wake: Callable[[], None],
        *,
        observer_factory: Callable[[], BaseObserver] | None = None,
    ) -> None:
        self._wake = wake
        self._factory = observer_factory or Observer
        self._observer: BaseObserver | None = None
        self._handler = _Handler(self)
        self._watches: dict[Path, ObservedWatch] = {}
        self._names: frozenset[str] = frozenset()
        self._tracked: frozenset[Path] = frozenset()
        self._lock = threading.Lock()
        self._armed = True
        self._closed = False
        #: Why watching failed (then the caller polls); None while it works.
        self.failed: str | None = None
        #: Wake-ups delivered so far (for tests and diagnostics).
        self.wakeups = 0
        #: Bumped each time the set of watched files changes: a write just
        #: before the new watch was in place is not announced, so the caller
        #: looks once more before it sleeps.
        self.generation = 0

    @property
    def active(self) -> bool:
        """True while files are watched (tracked, started, not failed or closed)."""
        return self._observer is not None and self.failed is None and not self._closed

    def _changed(self) -> None:
        with self._lock:
            if not self._armed or self._closed:
                return
            self._armed = False
            self.wakeups += 1
        try:
            self._wake()
        except RuntimeError:  # the loop closed meanwhile: nobody to wake
            log.debug("file change after the loop closed", exc_info=True)

    def rearm(self) -> None:
        """Let the next write wake again (call before reading the files)."""
        with self._lock:
            self._armed = True

    def track(self, files: Iterable[Path]) -> bool:
        """Watch exactly ``files`` (those whose folder exists); False when watching failed.

        Cheap when the set did not change. Folders no longer needed are
        unwatched. On failure the observer is stopped, :attr:`failed` says
        why (logged once, a WARNING) and every later call returns False.
        """
        if self.failed is not None or self._closed:
            return False
        wanted = frozenset(f for f in files if f.parent.is_dir())
        if wanted == self._tracked:
            return True
        folders = {f.parent for f in wanted}
        try:
            if self._observer is None:
                self._observer = self._factory()
                self._observer.daemon = True
            for folder in list(self._watches):
                if folder not in folders:
                    self._observer.unschedule(self._watches.pop(folder))
            for folder in folders - set(self._watches):
                self._watches[folder] = self._observer.schedule(
                    self._handler, str(folder), recursive=False, event_filter=_WRITES
                )
            self._names = frozenset(f.name for f in wanted)
            if not self._observer.is_alive():
                self._observer.start()
        except Exception as exc:  # noqa: BLE001 - any failure means: poll instead
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("cannot watch the rollout for writes (%s); polling instead", self.failed)
            self._stop()
            return False
        self._tracked = wanted
        self.generation += 1
        return True

    def close(self) -> None:
        """Stop watching and end the observer's threads."""
        with self._lock:
            self._closed = True
        self._stop()

    def _stop(self) -> None:
        observer, self._observer = self._observer, None
        self._watches.clear()
        self._tracked = frozenset()
        if observer is None:
            return
        try:
            if observer.is_alive():
                observer.stop()
                observer.join(timeout=5.0)
            else:
                observer.unschedule_all()
        except Exception:  # closing must not raise on an exit path
            log.debug("stopping the file watcher failed", exc_info=True)
