"""The command a supervised Codex runs at its ``SessionStart`` and ``Stop`` hooks.

Run as ``python -I -S _hook.py INBOX`` (isolated: nothing from the session's
folder or the environment is imported; the standard library only). It reads
the one JSON object Codex writes on stdin and appends one line naming the event
and its session to ``INBOX``, a file the supervisor created for this child
alone. It keeps nothing else of the payload (a Stop carries the last answer,
which is the user's, not ours to copy).

It must never disturb Codex: it prints nothing (a SessionStart hook's stdout
goes into the model's context), always exits 0 (a Stop hook exiting 2 makes
Codex continue the turn, again and again), and does not create ``INBOX``: once
the supervisor has removed it, a late hook writes nothing anywhere.
"""

import json
import os
import stat
import sys

_FIELDS = (
    ("hook_event_name", "event"),
    ("session_id", "session_id"),
    ("transcript_path", "transcript_path"),
    ("source", "source"),
    ("turn_id", "turn_id"),
)
_MAX_LINE = 16 * 1024


def _record(raw: bytes) -> bytes | None:
    payload = json.loads(raw)
    if not isinstance(payload, dict):
        return None
    record = {}
    for wire, name in _FIELDS:
        value = payload.get(wire)
        if isinstance(value, str):
            record[name] = value
    # Led by a newline too: after a write cut short (a full disk), the next
    # line still starts on a line of its own.
    line = ("\n" + json.dumps(record, separators=(",", ":")) + "\n").encode(
        "utf-8", "surrogatepass"
    )
    return line if len(line) <= _MAX_LINE else None


def main() -> None:
    try:
        # All of it, so Codex's write never meets a closed pipe.
        line = _record(sys.stdin.buffer.read())
        if line is not None and len(sys.argv) == 2:
            flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(sys.argv[1], flags)
            try:
                # Only the supervisor's own file: never a FIFO or a file someone
                # else put where the removed inbox was.
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_nlink == 1:
                    os.write(fd, line)
            finally:
                os.close(fd)
    except BaseException:  # noqa: BLE001, S110 - a hook that fails must fail silently
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
