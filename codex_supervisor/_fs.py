"""Small filesystem primitives shared by the state, lease and account code.

Every file the library owns is written whole: a temporary file in the same
folder, written, fsynced, then renamed over the target, and the folder
fsynced. A reader therefore sees the old content or the new content, never an
empty or half-written file, even when the write fails midway or the process
is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "fsync_dir", "write_atomic"]

log = logging.getLogger(__name__)

#: Suffix of the temporary files of :func:`write_atomic` (``.<name>.<hex>.tmp``).
TEMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort.

    Atomicity does not depend on it, and some filesystems refuse to fsync a
    folder, so a failure is logged, not raised.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        log.debug("fsync of folder %s failed", folder, exc_info=True)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically, with permissions ``mode``.

    On any failure the temporary file is removed and the previous content of
    ``path`` (if any) is left untouched; the exception propagates. Without
    ``durable`` nothing is fsynced: the replacement is still atomic for every
    reader, only a crash of the whole machine may lose it (for records that
    mean nothing after a reboot, such as lease heartbeats).
    """
    # A dot-prefixed temp name never matches a "*.json" glob of real files.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or widened it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(path)
    except BaseException:
        # Whatever failed, the file on disk is the old one (or none): only
        # the temp file can be partial, and it goes.
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)
