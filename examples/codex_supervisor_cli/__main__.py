"""``python -m codex_supervisor_cli``: the ``codex-supervisor`` command."""

from codex_supervisor_cli.cli import entry_point

entry_point()
