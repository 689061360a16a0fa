"""The reference CLI from a checkout: ``python examples/cli.py ARGS``.

Installed (``pip install ./examples``), the same command is ``codex-supervisor``;
its code is the package ``codex_supervisor_cli`` beside this file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from codex_supervisor_cli.cli import entry_point

if __name__ == "__main__":
    entry_point()
