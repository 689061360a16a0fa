"""The command-line surface of a Codex release, read from a binary or from our tables.

Used by the per-version drift tests (``tests/e2e/test_codex_cli_real.py``) and
by ``scripts/new-codex-version``: a :class:`CodexSurface` holds what
:mod:`codex_supervisor.codex_cli` must know about a release — the options of
each supervised command (from its ``--help`` page), the subcommands (from
``codex completion bash``, hidden ones included) and the feature names (from
``codex features list``) — and :func:`surface_changes` prints how two differ.
Private: a development tool, not part of the public API.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..codex_cli import _SUBCOMMANDS, CodexVersion, _Context, _grammar

__all__ = ["CodexSurface", "read_binary_surface", "surface_changes", "table_surface"]

#: One option as a ``--help`` page shows it: short name, long name, whether it
#: takes a value, whether it takes several (``<FILE>...``).
OptionShape = tuple[str | None, str, bool, bool]

#: The commands whose options the supervisor reads, by their words after ``codex``.
COMMANDS: tuple[str, ...] = tuple(ctx.value for ctx in _Context)
#: Subcommands Codex accepts but ``completion bash`` does not list (hidden aliases).
_NOT_COMPLETED = frozenset({"cloud-tasks"})
# An option line of clap's long help: `  -c, --config <key=value>` or
# `      --image <FILE>...`; descriptions are indented further.
_HELP_OPTION = re.compile(r"^(?:  (-\w), |      )(--[\w-]+)(?: <[^>]+>(\.\.\.)?)?\s*$")
_FEATURE_LINE = re.compile(r"^([a-z0-9_]+)\s{2,}")


@dataclass(frozen=True)
class CodexSurface:
    """What one release accepts on its command line."""

    version: str
    #: Options by command (``"codex"``, ``"codex exec resume"``, ...).
    options: Mapping[str, frozenset[OptionShape]]
    #: Subcommands of ``codex`` and of ``codex exec``.
    subcommands: Mapping[str, frozenset[str]]
    #: Feature names of ``codex features list`` (None: not read, as for a table).
    features: frozenset[str] | None = field(default=None)


def parse_help_options(text: str) -> frozenset[OptionShape]:
    """The options a clap ``--help`` page lists."""
    shown: set[OptionShape] = set()
    for line in text.splitlines():
        found = _HELP_OPTION.match(line)
        if found:
            short, long, many = found.groups()
            shown.add((short, long, "<" in line, bool(many)))
    return frozenset(shown)


def parse_completion(text: str) -> dict[str, frozenset[str]]:
    """The subcommands of ``codex`` and ``codex exec`` in a ``completion bash`` script."""
    return {
        "codex": frozenset(re.findall(r"^\s+codex,([\w-]+)\)", text, re.MULTILINE)),
        "codex exec": frozenset(re.findall(r"^\s+codex__exec,([\w-]+)\)", text, re.MULTILINE)),
    }


def _run(codex: Path, args: list[str], env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [str(codex), *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`codex {' '.join(args)}` exited {done.returncode}: {done.stderr[-800:]}"
        )
    return done.stdout


def read_binary_surface(codex: Path | str) -> CodexSurface:
    """Read a Codex binary's surface; it runs offline in a throwaway CODEX_HOME and HOME."""
    program = Path(codex)
    with tempfile.TemporaryDirectory(prefix="codex-surface-") as scratch:
        home = Path(scratch)
        (home / "codex-home").mkdir(mode=0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "CODEX_HOME": str(home / "codex-home"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "NO_COLOR": "1",
            "RUST_LOG": "error",
        }
        version = str(CodexVersion.parse(_run(program, ["--version"], env)))
        options = {
            command: parse_help_options(_run(program, [*command.split()[1:], "--help"], env))
            for command in COMMANDS
        }
        subcommands = parse_completion(_run(program, ["completion", "bash"], env))
        features = frozenset(
            found.group(1)
            for line in _run(program, ["features", "list"], env).splitlines()
            if (found := _FEATURE_LINE.match(line))
        )
    return CodexSurface(
        version=version, options=options, subcommands=subcommands, features=features
    )


def table_surface(version: str) -> CodexSurface:
    """The surface :mod:`codex_supervisor.codex_cli` expects of ``version`` (no features)."""
    grammar = _grammar(CodexVersion.parse(version))
    options = {
        ctx.value: frozenset(
            (spec.short, spec.long, spec.takes_value, ctx in spec.greedy_in)
            for spec in grammar.options
            if ctx in spec.where
        )
        for ctx in _Context
    }
    subcommands = {
        ctx.value: frozenset(_SUBCOMMANDS[ctx]) | grammar.passthrough.get(ctx, frozenset())
        for ctx in (_Context.ROOT, _Context.EXEC)
    }
    subcommands["codex"] -= _NOT_COMPLETED
    return CodexSurface(version=version, options=options, subcommands=subcommands)


def _shape(option: OptionShape) -> str:
    short, long, value, many = option
    names = f"{short}, {long}" if short else long
    return names + (" <VALUE>" if value else "") + ("..." if many else "")


def surface_changes(old: CodexSurface, new: CodexSurface) -> list[str]:
    """What changed from ``old`` to ``new``, one readable line each ([] if nothing did).

    Options are compared with their arity, so an option that starts or stops
    taking a value shows as removed and added. Features are compared only when
    both sides were read from a binary. The version strings are not compared.
    """
    lines: list[str] = []
    for command in COMMANDS:
        before = old.options.get(command, frozenset())
        after = new.options.get(command, frozenset())
        lines += _changed(f"`{command}`: option", map(_shape, before), map(_shape, after))
    for command in ("codex", "codex exec"):
        lines += _changed(
            f"`{command}`: subcommand",
            old.subcommands.get(command, frozenset()),
            new.subcommands.get(command, frozenset()),
        )
    if old.features is not None and new.features is not None:
        lines += _changed("features list:", old.features, new.features)
    return lines


def _changed(what: str, before: Iterable[str], after: Iterable[str]) -> list[str]:
    old, new = set(before), set(after)
    return [f"{what} added    {name}" for name in sorted(new - old)] + [
        f"{what} removed  {name}" for name in sorted(old - new)
    ]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def report(new_bin: Path | str, old_bin: Path | str | None = None) -> list[str]:
    """What ``scripts/new-codex-version`` prints: the drift first, then the news.

    Returns the drift lines (what :mod:`codex_supervisor.codex_cli` must learn
    before the release can be tested); prints everything on stdout.
    """
    from ..codex_cli import TESTED_CODEX_VERSIONS, features_for  # noqa: PLC0415
    from .simulator import SIMULATED_VERSIONS  # noqa: PLC0415

    new = read_binary_surface(new_bin)
    version = CodexVersion.parse(new.version)
    _say(f"codex-cli {new.version} at {new_bin}")
    _say(f"tested versions: {', '.join(TESTED_CODEX_VERSIONS)}")
    drift = surface_changes(table_surface(new.version), new)
    needs = features_for(version)
    no_daemon = any(option[1] == "--no-daemon" for option in new.options["codex"])
    if no_daemon != needs.tui_no_daemon:
        drift.append(f"version table: --no-daemon {'exists' if no_daemon else 'is gone'}")
    if new.features is not None:
        check = "cli_resume_account_check" in new.features
        if check != needs.resume_account_check_feature:
            drift.append(
                "version table: feature cli_resume_account_check "
                + ("exists" if check else "is gone")
            )
    if new.version not in TESTED_CODEX_VERSIONS:
        drift.append(f"version: {new.version} is not in TESTED_CODEX_VERSIONS")
    if new.version not in SIMULATED_VERSIONS:
        drift.append(f"simulator: {new.version} is not in SIMULATED_VERSIONS")
    _say(f"\n== Drift against codex_cli's tables for {new.version} ({len(drift)})")
    _say("\n".join(f"  {line}" for line in drift) or "  none")
    if old_bin is not None:
        old = read_binary_surface(old_bin)
        if old.version != new.version:
            news = surface_changes(old, new)
            _say(f"\n== What changed from {old.version} to {new.version} ({len(news)})")
            _say("\n".join(f"  {line}" for line in news) or "  nothing")
    return drift


def main(argv: list[str] | None = None) -> int:
    """``python -m codex_supervisor.testing._surface NEW_BIN [OLD_BIN]``: 1 when drift is found."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        _say("usage: python -m codex_supervisor.testing._surface NEW_BIN [OLD_BIN]")
        return 2
    return 1 if report(args[0], args[1] if len(args) > 1 else None) else 0


if __name__ == "__main__":
    raise SystemExit(main())
