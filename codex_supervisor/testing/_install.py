"""Install the Codex simulator as a ``codex`` executable.

Kept apart from the simulator itself so that importing
``codex_supervisor.testing`` never imports the program it launches (running
``python -m`` on an already imported module draws a RuntimeWarning).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

__all__ = ["install_simulator"]


def install_simulator(
    bin_dir: Path | str, *, python: str = sys.executable, version: str | None = None
) -> Path:
    """Write an executable ``codex`` into ``bin_dir`` that runs the simulator; returns its path.

    The script ``exec``s ``python -m codex_supervisor.testing.simulator`` (so
    the PID a test sees is the simulator itself) with this copy of
    ``codex_supervisor`` first on ``PYTHONPATH``, so it runs the same code as
    the caller even from a hermetic environment. ``version`` (``"0.171.0"``)
    makes it impersonate that Codex release (see
    :data:`~codex_supervisor.testing.simulator.SIMULATED_VERSIONS`); by default
    it is 0.169.0, or whatever ``$CODEX_SIMULATOR_VERSION`` says when it runs.
    """
    if version is not None and not re.fullmatch(r"\d{1,9}\.\d{1,9}\.\d{1,9}", version):
        raise ValueError(f"not a Codex version: {version!r}")
    pinned = (
        f"CODEX_SIMULATOR_VERSION={version}\nexport CODEX_SIMULATOR_VERSION\n" if version else ""
    )
    folder = Path(bin_dir)
    folder.mkdir(parents=True, exist_ok=True)
    package_root = Path(__file__).resolve().parents[2]
    script = folder / "codex"
    script.write_text(
        "#!/bin/sh\n"
        "# Codex CLI simulator: see codex_supervisor/testing/simulator.py\n"
        f'PYTHONPATH={shlex.quote(str(package_root))}${{PYTHONPATH:+:"$PYTHONPATH"}}\n'
        "export PYTHONPATH\n"
        f"{pinned}"
        f'exec {shlex.quote(python)} -m codex_supervisor.testing.simulator "$@"\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script
