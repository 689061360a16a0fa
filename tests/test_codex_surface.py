"""The drift report's parts: reading --help pages and completion scripts, and diffing."""

from __future__ import annotations

from codex_supervisor.codex_cli import TESTED_CODEX_VERSIONS
from codex_supervisor.testing._surface import (
    CodexSurface,
    parse_completion,
    parse_help_options,
    surface_changes,
    table_surface,
)

HELP = """\
Run Codex non-interactively

Usage: codex exec [OPTIONS] [PROMPT] [COMMAND]

Options:
  -c, --config <key=value>
          Override a configuration value

  -i, --image <FILE>...
          Optional image(s) to attach to the initial prompt

      --remote <ADDR>
          Connect to an existing app server

      --json
          Print events to stdout as JSONL
"""

COMPLETION = """\
            codex,exec)
                cmd="codex__exec"
                ;;
            codex,stdio-to-uds)
                cmd="codex__stdio__to__uds"
                ;;
            codex__exec,resume)
                cmd="codex__exec__resume"
                ;;
"""


def test_parse_help_options_reads_names_and_arity() -> None:
    """Short and long names, whether a value follows, whether several do."""
    assert parse_help_options(HELP) == {
        ("-c", "--config", True, False),
        ("-i", "--image", True, True),
        (None, "--remote", True, False),
        (None, "--json", False, False),
    }


def test_parse_completion_reads_both_levels() -> None:
    """Subcommands of `codex` and of `codex exec`, hidden ones included."""
    assert parse_completion(COMPLETION) == {
        "codex": {"exec", "stdio-to-uds"},
        "codex exec": {"resume"},
    }


def test_the_tables_of_the_tested_versions_differ_by_the_known_drift() -> None:
    """0.169.0 -> 0.171.0, as the report prints it."""
    old, new = (table_surface(v) for v in TESTED_CODEX_VERSIONS[:2])
    assert surface_changes(old, new) == [
        "`codex exec`: option added    --remote <VALUE>",
        "`codex exec`: option added    --remote-auth-token-env <VALUE>",
        "`codex exec resume`: option added    --remote <VALUE>",
        "`codex exec resume`: option added    --remote-auth-token-env <VALUE>",
        "`codex`: subcommand removed  stdio-to-uds",
    ]
    assert surface_changes(new, new) == []


def test_changed_arity_and_features_are_reported() -> None:
    """An option that starts taking a value shows as removed and added; features too."""
    old = CodexSurface(
        version="1.0.0",
        options={"codex": frozenset({(None, "--x", False, False)})},
        subcommands={},
        features=frozenset({"a", "b"}),
    )
    new = CodexSurface(
        version="1.1.0",
        options={"codex": frozenset({(None, "--x", True, False)})},
        subcommands={"codex exec": frozenset({"fork"})},
        features=frozenset({"b", "c"}),
    )
    assert surface_changes(old, new) == [
        "`codex`: option added    --x <VALUE>",
        "`codex`: option removed  --x",
        "`codex exec`: subcommand added    fork",
        "features list: added    c",
        "features list: removed  a",
    ]
