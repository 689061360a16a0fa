"""One machine of a shared pool, as its own process: ``python host_run.py SPEC.json``.

The spec names the pool folder, base home, Redis URL, pool name, Codex binary,
working folder, Codex argv and the child's environment; the credential key
comes in ``$CODEX_SUPERVISOR_CREDENTIAL_KEY``. Each event becomes a JSON line
``{"event", "account", "at"}`` in the spec's ``events`` file; the exit code is
the run's.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from codex_supervisor.accounts import AccountPool
from codex_supervisor.events import Event
from codex_supervisor.supervisor import Supervisor, SupervisorConfig


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    pool = AccountPool(
        root=spec["root"],
        base_codex_home=spec["base"],
        backend=spec["url"],
        pool_name=spec["pool_name"],
    )
    events = Path(spec["events"]).open("a", buffering=1)  # noqa: SIM115 - open for the run

    def sink(event: Event) -> None:
        line = {"event": event.name, "at": event.at.timestamp()}
        for field in ("account", "successor", "session_id"):
            if isinstance(getattr(event, field, None), str):
                line[field] = getattr(event, field)
        events.write(json.dumps(line) + "\n")

    config = SupervisorConfig(codex=spec["codex"], poll_interval=0.05, quota_stale_after=600)
    supervisor = Supervisor(pool, config=config, sink=sink, environ=spec["env"])
    result = asyncio.run(supervisor.run(spec["argv"], cwd=Path(spec["work"])))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
