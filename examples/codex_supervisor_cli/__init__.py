"""The reference command line of codex_supervisor (``codex-supervisor``).

One consumer of the library's public API; ``cli`` holds the commands,
``settings`` the config file, ``completion`` the shell completion scripts and
``watch`` the live status view.
"""

from codex_supervisor_cli.cli import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
