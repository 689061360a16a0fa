"""Codex CLI grammar and versions: classify argv, rebuild it for a resume, detect the version.

The supervisor never passes the user's argv to Codex blindly and never guesses
from the first word. :func:`parse_argv` reads argv the way Codex's own parser
(clap) does for each tested version, using one table of options
(:data:`_OPTIONS`, taken from ``codex --help``, ``codex resume --help``,
``codex fork --help``, ``codex exec --help`` and ``codex exec resume --help`` of
0.169.0) and the changes of each later release, and returns an
:class:`Invocation`:

- ``codex [OPTIONS] [PROMPT]`` is a new interactive session, with or without a
  PROMPT and with any options (``codex "fix it"`` and ``codex -m X "fix it"``
  are interactive: the earlier supervisor ran both unsupervised);
- ``codex resume`` / ``codex fork`` / ``codex exec`` / ``codex exec resume``;
- everything else — ``login``, ``--help``, ``app-server``, an unknown option, a
  shape Codex itself would refuse — is :attr:`Mode.PASSTHROUGH` with a reason:
  running it once unsupervised is always safer than supervising it wrongly.

:func:`launch_argv` adds what the installed version needs to the user's argv;
:func:`resume_argv` rebuilds argv to continue the *same* session on another
account (``resume <id>``, never ``--last``, never the original prompt).
:func:`detect_version` runs ``codex --version``; :func:`features_for` maps a
version to what it needs, from a small table.

Versions: :data:`MINIMUM_VERSION` is the oldest supported release (older ones
are refused); :data:`TESTED_CODEX_VERSIONS` lists the releases the test suite
runs against, each with its own grammar (:data:`_GRAMMAR_CHANGES`); a newer
release is never refused, it runs with the newest tested release's rules and
a logged warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import final

import attrs

from .errors import CodexCLIError, CodexNotFoundError, ConfigError, UnsupportedCodexVersion

__all__ = [
    "MINIMUM_VERSION",
    "TESTED_CODEX_VERSIONS",
    "CodexVersion",
    "Invocation",
    "Mode",
    "VersionFeatures",
    "detect_version",
    "features_for",
    "launch_argv",
    "parse_argv",
    "resume_argv",
]

logger = logging.getLogger(__name__)


class Mode(enum.Enum):
    """What a Codex command line does, as far as supervision is concerned."""

    INTERACTIVE = "interactive"  # a new TUI session, with or without a PROMPT
    RESUME = "resume"
    FORK = "fork"
    EXEC = "exec"
    EXEC_RESUME = "exec_resume"
    PASSTHROUGH = "passthrough"  # run once, unsupervised


# -- versions -----------------------------------------------------------------

_VERSION_RE = re.compile(r"(?<![\w.])v?(\d{1,9})\.(\d{1,9})\.(\d{1,9})(?![\d])")


@final
@attrs.frozen(order=True)
class CodexVersion:
    """A Codex CLI release number; ordered, printed as ``0.169.0``."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> CodexVersion:
        """Read ``codex-cli 0.169.0`` or ``0.169.0`` (a prerelease suffix is ignored)."""
        found = _VERSION_RE.search(text)
        if found is None:
            raise CodexCLIError(f"no Codex version in {text[:200]!r}")
        major, minor, patch = (int(part) for part in found.groups())
        return cls(major, minor, patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


#: The oldest Codex the supervisor drives (the oldest *supported* version):
#: :func:`features_for` refuses anything older with
#: :class:`~codex_supervisor.errors.UnsupportedCodexVersion`. From 0.157.0 the
#: TUI reads the account through HTTPS workspace discovery (the behaviour the
#: fake backend and the interactive run are built around), and 0.157.0's
#: ``--help`` shows the same TUI grammar as 0.169.0, ``--no-daemon`` included.
#: It is supported but not tested end to end: it was checked by its ``--help``
#: and ``features list`` alone.
MINIMUM_VERSION = CodexVersion(0, 157, 0)

#: The Codex releases the test suite runs against, oldest first: the one
#: source of truth for CI (``scripts/test`` runs the real-binary tests once per
#: version), ``scripts/fetch-codex`` (its default is the first), the README's
#: support table and the untested-version warning of :func:`features_for`.
#: Adding a release is routine: ``scripts/new-codex-version X.Y.Z`` shows what
#: changed; update the grammar and version tables below, then append it here.
TESTED_CODEX_VERSIONS: tuple[str, ...] = ("0.169.0", "0.171.0")

_TESTED = frozenset(CodexVersion.parse(v) for v in TESTED_CODEX_VERSIONS)
_NEWEST_TESTED = max(_TESTED)


# -- the option table ---------------------------------------------------------


class _Context(enum.Enum):
    """Where in the command line an option is read; the value is the command."""

    ROOT = "codex"
    RESUME = "codex resume"
    FORK = "codex fork"
    EXEC = "codex exec"
    EXEC_RESUME = "codex exec resume"


class _Role(enum.Enum):
    """What an option means to the supervisor when it rebuilds a command line."""

    KEEP = "keep"  # repeated as given
    PICKER = "picker"  # --last/--all choose a session: the id replaces them
    IMAGE = "image"  # attached to the initial prompt, so never sent again
    SANDBOX = "sandbox"  # `exec resume` has no -s: becomes -c sandbox_mode=...
    CWD = "cwd"  # `exec resume` has no -C: the caller runs the child there
    REMOTE = "remote"  # a remote app server's account is not ours to rotate
    HELP = "help"  # --help/--version: Codex prints and exits


@final
@attrs.frozen(kw_only=True)
class _Spec:
    """One Codex option: its names, whether it takes a value, and where it is accepted."""

    short: str | None
    long: str
    takes_value: bool
    where: frozenset[_Context]
    # `-i, --image <FILE>...`: clap keeps taking the following words as more
    # values until the next option, so `codex -i a.png fix` has no PROMPT.
    greedy_in: frozenset[_Context] = frozenset()
    role: _Role = _Role.KEEP

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling, short first."""
        return (self.short, self.long) if self.short else (self.long,)


_ROOT, _RESUME, _FORK, _EXEC, _EXEC_RESUME = (
    _Context.ROOT,
    _Context.RESUME,
    _Context.FORK,
    _Context.EXEC,
    _Context.EXEC_RESUME,
)
_TUI = frozenset({_ROOT, _RESUME, _FORK})
_TUI_EXEC = _TUI | {_EXEC}
_EXECS = frozenset({_EXEC, _EXEC_RESUME})
_ANYWHERE = _TUI | _EXECS
_PICKABLE = frozenset({_RESUME, _FORK, _EXEC_RESUME})  # the commands that pick a session


def _opt(
    short: str | None,
    long: str,
    *,
    value: bool,
    where: frozenset[_Context],
    greedy_in: frozenset[_Context] = frozenset(),
    role: _Role = _Role.KEEP,
) -> _Spec:
    return _Spec(
        short=short, long=long, takes_value=value, where=where, greedy_in=greedy_in, role=role
    )


#: Every option of codex-cli 0.169.0 (0.157.0 has the same set minus exec's
#: --trust and --cyber-access-program); later releases apply
#: :data:`_GRAMMAR_CHANGES`. ``where`` is exactly the set of ``--help`` pages
#: that list it; tests/e2e/test_codex_cli_real.py checks each tested version's
#: table against that version's binary in both directions.
_OPTIONS: tuple[_Spec, ...] = (
    _opt("-c", "--config", value=True, where=_ANYWHERE),
    _opt(None, "--enable", value=True, where=_ANYWHERE),
    _opt(None, "--disable", value=True, where=_ANYWHERE),
    _opt(None, "--remote", value=True, where=_TUI, role=_Role.REMOTE),
    _opt(None, "--remote-auth-token-env", value=True, where=_TUI),
    _opt(None, "--strict-config", value=False, where=_ANYWHERE),
    # exec resume's -i takes one value per occurrence; everywhere else it is greedy.
    _opt("-i", "--image", value=True, where=_ANYWHERE, greedy_in=_TUI_EXEC, role=_Role.IMAGE),
    _opt("-m", "--model", value=True, where=_ANYWHERE),
    _opt(None, "--oss", value=False, where=_TUI_EXEC),
    _opt(None, "--local-provider", value=True, where=_TUI_EXEC),
    _opt("-p", "--profile", value=True, where=_TUI_EXEC),
    _opt("-s", "--sandbox", value=True, where=_TUI_EXEC, role=_Role.SANDBOX),
    _opt(None, "--approve-for-me", value=False, where=_TUI_EXEC),
    _opt(None, "--dangerously-bypass-approvals-and-sandbox", value=False, where=_ANYWHERE),
    _opt(None, "--dangerously-bypass-hook-trust", value=False, where=_ANYWHERE),
    _opt("-C", "--cd", value=True, where=_TUI_EXEC, role=_Role.CWD),
    _opt(None, "--worktree", value=False, where=_ANYWHERE),
    _opt(None, "--add-dir", value=True, where=_TUI_EXEC),
    _opt("-a", "--ask-for-approval", value=True, where=_TUI),
    _opt(None, "--search", value=False, where=_TUI),
    _opt(None, "--no-alt-screen", value=False, where=_TUI),
    _opt(None, "--no-daemon", value=False, where=_TUI),
    _opt(None, "--last", value=False, where=_PICKABLE, role=_Role.PICKER),
    _opt(None, "--all", value=False, where=_PICKABLE, role=_Role.PICKER),
    _opt(None, "--include-non-interactive", value=False, where=frozenset({_RESUME})),
    _opt(None, "--thread-source", value=True, where=_EXECS),
    _opt(None, "--cyber-access-program", value=True, where=_EXECS),
    _opt(None, "--skip-git-repo-check", value=False, where=_EXECS),
    _opt(None, "--trust", value=False, where=_EXECS),
    _opt(None, "--ephemeral", value=False, where=_EXECS),
    _opt(None, "--ignore-user-config", value=False, where=_EXECS),
    _opt(None, "--ignore-rules", value=False, where=_EXECS),
    _opt(None, "--output-schema", value=True, where=_EXECS),
    _opt(None, "--color", value=True, where=frozenset({_EXEC})),
    _opt(None, "--json", value=False, where=_EXECS),
    _opt("-o", "--output-last-message", value=True, where=_EXECS),
    _opt("-h", "--help", value=False, where=_ANYWHERE, role=_Role.HELP),
    _opt("-V", "--version", value=False, where=_TUI_EXEC, role=_Role.HELP),
)

#: Subcommands that change the context; every other known one is passed through.
_SUBCOMMANDS: dict[_Context, dict[str, _Context]] = {
    _ROOT: {"exec": _EXEC, "e": _EXEC, "resume": _RESUME, "fork": _FORK},
    _EXEC: {"resume": _EXEC_RESUME},
}
#: The other subcommands of 0.169.0, hidden ones included (from ``codex
#: completion bash``). A word not listed here is a PROMPT, as it is for Codex.
# fmt: off
_PASSTHROUGH_SUBCOMMANDS: dict[_Context, frozenset[str]] = {
    _ROOT: frozenset({
        "a", "agents", "app-server", "apply", "archive", "cloud", "cloud-tasks", "completion",
        "debug", "delete", "doctor", "exec-server", "execpolicy", "features", "git-credential",
        "help", "login", "logout", "mcp", "migrate-nfs-db", "migrate-rollouts", "plugin",
        "queue", "remote-control", "responses-api-proxy", "review", "sandbox", "stdio-to-uds",
        "tcp-tunnel", "unarchive", "update",
    }),
    _EXEC: frozenset({"fork", "review", "help"}),
}
# fmt: on


@final
@attrs.frozen(kw_only=True)
class _GrammarChange:
    """How the command line of release ``since`` differs from the release before it."""

    since: CodexVersion
    # New options, or new definitions (by long name) of existing ones.
    options: tuple[_Spec, ...] = ()
    removed_options: frozenset[str] = frozenset()  # long names
    added_subcommands: Mapping[_Context, frozenset[str]] = attrs.field(factory=dict)
    removed_subcommands: Mapping[_Context, frozenset[str]] = attrs.field(factory=dict)


@final
@attrs.frozen(kw_only=True)
class _Grammar:
    """The options and pass-through subcommands of the releases from ``since`` on."""

    since: CodexVersion
    options: tuple[_Spec, ...]
    passthrough: Mapping[_Context, frozenset[str]]
    by_name: Mapping[str, _Spec] = attrs.field(init=False, eq=False, repr=False)

    @by_name.default
    def _index(self) -> Mapping[str, _Spec]:
        return {name: spec for spec in self.options for name in spec.names}


#: Every change of the command line since 0.169.0, oldest first, each checked
#: against the real binary's ``--help`` pages and ``completion bash``
#: (``scripts/new-codex-version`` prints them for a new release). A version
#: uses the table of the newest change at or below it.
_GRAMMAR_CHANGES: tuple[_GrammarChange, ...] = (
    _GrammarChange(
        since=CodexVersion(0, 171, 0),
        # `codex exec` and `codex exec resume` gained --remote <ADDR> and
        # --remote-auth-token-env <ENV_VAR> ("Connect to an existing app server").
        options=(
            _opt(None, "--remote", value=True, where=_ANYWHERE, role=_Role.REMOTE),
            _opt(None, "--remote-auth-token-env", value=True, where=_ANYWHERE),
        ),
        removed_subcommands={_ROOT: frozenset({"stdio-to-uds"})},
    ),
)


def _apply(grammar: _Grammar, change: _GrammarChange) -> _Grammar:
    replaced = {spec.long: spec for spec in change.options}
    options = [
        replaced.pop(spec.long, spec)
        for spec in grammar.options
        if spec.long not in change.removed_options
    ]
    contexts = set(grammar.passthrough) | set(change.added_subcommands)
    passthrough = {
        ctx: (grammar.passthrough.get(ctx, frozenset()) | change.added_subcommands.get(ctx, set()))
        - change.removed_subcommands.get(ctx, frozenset())
        for ctx in contexts
    }
    return _Grammar(
        since=change.since, options=(*options, *replaced.values()), passthrough=passthrough
    )


def _union(grammars: Sequence[_Grammar]) -> _Grammar:
    """What any of ``grammars`` accepts: an option or a subcommand of any of them is known."""
    merged: dict[str, _Spec] = {}
    for grammar in grammars:
        for spec in grammar.options:
            old = merged.setdefault(spec.long, spec)
            if old == spec:
                continue
            # A release that changed an option's arity would need its own parse
            # of an untagged argv; none has, and the tables must say so.
            if (old.short, old.takes_value, old.role) != (spec.short, spec.takes_value, spec.role):
                raise AssertionError(f"{spec.long} changed its shape between releases")
            merged[spec.long] = attrs.evolve(
                old, where=old.where | spec.where, greedy_in=old.greedy_in | spec.greedy_in
            )
    contexts = {ctx for grammar in grammars for ctx in grammar.passthrough}
    return _Grammar(
        since=grammars[0].since,
        options=tuple(merged.values()),
        passthrough={
            ctx: frozenset().union(*(g.passthrough.get(ctx, frozenset()) for g in grammars))
            for ctx in contexts
        },
    )


def _build_grammars() -> tuple[_Grammar, ...]:
    grammars = [
        _Grammar(since=MINIMUM_VERSION, options=_OPTIONS, passthrough=_PASSTHROUGH_SUBCOMMANDS)
    ]
    for change in sorted(_GRAMMAR_CHANGES, key=lambda c: c.since):
        grammars.append(_apply(grammars[-1], change))
    return tuple(grammars)


_GRAMMARS = _build_grammars()
#: The grammar of an argv whose Codex version is not known: the union of all.
#: Conservative both ways: an option of any release is read with its arity (a
#: PROMPT after a value-taking option is never misread), and a subcommand of
#: any release is passed through rather than taken for a PROMPT.
_ANY_VERSION = _union(_GRAMMARS)


def _grammar(version: CodexVersion | None) -> _Grammar:
    """The grammar ``version`` accepts (None: the union of every known release)."""
    if version is None:
        return _ANY_VERSION
    fitting = [g for g in _GRAMMARS if g.since <= version]
    return fitting[-1] if fitting else _GRAMMARS[0]


_BY_NAME: Mapping[str, _Spec] = _ANY_VERSION.by_name
_CONFIG = _BY_NAME["--config"]
_ENABLE = _BY_NAME["--enable"]
_DISABLE = _BY_NAME["--disable"]
_NO_DAEMON = _BY_NAME["--no-daemon"]
#: Positional arguments each context takes (PROMPT; or SESSION_ID and PROMPT).
_MAX_POSITIONALS = {_ROOT: 1, _EXEC: 1, _RESUME: 2, _FORK: 2, _EXEC_RESUME: 2}
_MODES = {
    _ROOT: Mode.INTERACTIVE,
    _RESUME: Mode.RESUME,
    _FORK: Mode.FORK,
    _EXEC: Mode.EXEC,
    _EXEC_RESUME: Mode.EXEC_RESUME,
}

_RESUME_ACCOUNT_CHECK = "cli_resume_account_check"


# -- parsed options -----------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class _Opt:
    """One option occurrence: its spec (None if unknown), its tokens as given, its values."""

    spec: _Spec | None
    tokens: tuple[str, ...]
    values: tuple[str, ...] = ()


def _is_option_like(word: str) -> bool:
    # clap reads a lone "-" as a value (stdin) and anything else with a dash as a flag.
    return word.startswith("-") and word != "-"


def _scan(words: Sequence[str]) -> list[_Opt]:
    """Split a tuple of option tokens (as kept in an Invocation) back into options.

    Lenient and context-free: the tuple holds only options and their values,
    so a separate value never looks like an option. Unknown tokens come back
    with ``spec=None``; it never raises.
    """
    out: list[_Opt] = []
    i = 0
    while i < len(words):
        word = words[i]
        name = word.partition("=")[0] if word.startswith("--") else word[:2]
        spec = _BY_NAME.get(name) if _is_option_like(word) else None
        attached = _attached_value(word)
        if spec is None or not spec.takes_value:
            out.append(_Opt(spec=spec, tokens=(word,)))
            i += 1
            continue
        if attached is not None:
            out.append(_Opt(spec=spec, tokens=(word,), values=(attached,)))
            i += 1
            continue
        j = i + 1
        while j < len(words) and not _is_option_like(words[j]):
            j += 1
            if not spec.greedy_in:
                break
        out.append(_Opt(spec=spec, tokens=tuple(words[i:j]), values=tuple(words[i + 1 : j])))
        i = j
    return out


# -- the invocation -------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class Invocation:
    """A classified Codex command line: what it does and the parts a rebuild needs.

    ``global_options`` are the options before the subcommand (for a new
    interactive session: all of them), ``command_options`` those of ``resume``,
    ``fork``, ``exec`` or ``exec resume`` (for exec resume, including those given
    before ``resume``). Both keep the tokens as given, values included, in order.
    """

    mode: Mode
    argv: tuple[str, ...]
    global_options: tuple[str, ...] = ()
    command_options: tuple[str, ...] = ()
    prompt: str | None = None  # for exec, "-" means stdin
    session_ref: str | None = None  # resume/fork target: a UUID or a session name
    last: bool = False
    all_sessions: bool = False
    cwd: str | None = None  # the -C/--cd value; exec resume has no -C, the caller uses this
    reason: str = ""  # why PASSTHROUGH
    subcommand: str | None = None  # the unsupervised subcommand of a PASSTHROUGH, if any

    @property
    def is_interactive(self) -> bool:
        """Whether this runs the TUI (a new session, resume or fork)."""
        return self.mode in (Mode.INTERACTIVE, Mode.RESUME, Mode.FORK)

    @property
    def is_exec(self) -> bool:
        """Whether this runs ``codex exec`` (new or resumed)."""
        return self.mode in (Mode.EXEC, Mode.EXEC_RESUME)

    def _options(self) -> list[_Opt]:
        return _scan(self.global_options) + _scan(self.command_options)

    def has_option(self, *names: str) -> bool:
        """Whether any of ``names`` (``-m``, ``--model``, ...) was given, in any spelling.

        ``--model`` also finds ``-m X``, ``-mX``, ``--model=X``: a known name
        stands for every spelling of its option.
        """
        specs = {_BY_NAME[n] for n in names if n in _BY_NAME}
        literal = set(names)
        for opt in self._options():
            if opt.spec is not None and opt.spec in specs:
                return True
            if opt.spec is None and opt.tokens[0].partition("=")[0] in literal:
                return True
        return False

    def has_feature_flag(self, feature: str) -> bool:
        """Whether the user already set ``feature`` on the command line.

        By ``--enable F``, ``--disable F`` or ``-c features.F=...``; when so, the
        supervisor adds nothing for that feature (the user's word wins).
        """
        for opt in self._options():
            if opt.spec in (_ENABLE, _DISABLE) and feature in opt.values:
                return True
            if opt.spec is _CONFIG:
                for value in opt.values:
                    key, eq, _ = value.partition("=")
                    if eq and key.strip() == f"features.{feature}":
                        return True
        return False


class _Unsupported(Exception):
    """An argv the supervisor does not supervise; the message is the reason."""

    def __init__(self, reason: str, *, subcommand: str | None = None) -> None:
        super().__init__(reason)
        self.subcommand = subcommand


def _shown(token: str) -> str:
    # Reasons name options only; a value could be a path or a secret-looking string.
    name = token.partition("=")[0]
    return name if len(name) <= 60 else name[:57] + "..."


def _read_option(args: Sequence[str], i: int, ctx: _Context, grammar: _Grammar) -> tuple[_Opt, int]:
    """Read the option at ``args[i]`` as clap would in ``ctx``; return it and the next index."""
    word = args[i]
    is_long = word.startswith("--")
    name = word.partition("=")[0] if is_long else word[:2]
    spec = grammar.by_name.get(name)
    if spec is None or ctx not in spec.where:
        raise _Unsupported(f"{_shown(name)} is not an option of `{ctx.value}`")
    if not spec.takes_value:
        # `--flag=x` is refused by Codex; the only short flags are -h and -V,
        # and `-hV` is still a request for help.
        if (is_long and "=" in word) or (
            not is_long and len(word) > 2 and spec.role is not _Role.HELP
        ):
            raise _Unsupported(f"{_shown(word)} is not a flag Codex accepts in this form")
        return _Opt(spec=spec, tokens=(word,)), i + 1
    attached = _attached_value(word)
    if attached is not None:
        return _Opt(spec=spec, tokens=(word,), values=(attached,)), i + 1
    j = i + 1
    if j >= len(args) or _is_option_like(args[j]):
        raise _Unsupported(f"{spec.long} needs a value")
    j += 1
    if ctx in spec.greedy_in:
        while j < len(args) and not _is_option_like(args[j]):
            j += 1
        if j < len(args) and args[j] == "--":
            # clap takes this `--` as the end of the values only, not of all
            # options; rather than model that corner, let Codex read it.
            raise _Unsupported(f"`--` right after the values of {spec.long}")
    return _Opt(spec=spec, tokens=tuple(args[i:j]), values=tuple(args[i + 1 : j])), j


def _attached_value(word: str) -> str | None:
    """The value in ``--name=X``, ``-nX`` or ``-n=X`` (clap's spellings), else None."""
    if word.startswith("--"):
        _, eq, value = word.partition("=")
        return value if eq else None
    if len(word) > 2:
        return word[3:] if word[2] == "=" else word[2:]
    return None


def _enter_subcommand(
    ctx: _Context, word: str, grammar: _Grammar, *, has_positional: bool
) -> _Context | None:
    """The context ``word`` switches to, None if it is a positional; raises for pass-through."""
    if ctx not in _SUBCOMMANDS:
        return None
    passthrough = grammar.passthrough.get(ctx, frozenset())
    if word not in _SUBCOMMANDS[ctx] and word not in passthrough:
        return None
    if has_positional:
        raise _Unsupported(f"a PROMPT before the subcommand {word!r}")
    if word in passthrough:
        raise _Unsupported(f"`{ctx.value} {word}` is not supervised", subcommand=word)
    return _SUBCOMMANDS[ctx][word]


def _assign_positionals(
    ctx: _Context, positionals: list[str], *, last: bool
) -> tuple[str | None, str | None]:
    """Split the positionals into (session_ref, prompt)."""
    if _MAX_POSITIONALS[ctx] == 1:
        return None, positionals[0] if positionals else None
    if last:
        # With --last the one positional is the PROMPT; Codex refuses two.
        if len(positionals) > 1:
            raise _Unsupported("--last with both a SESSION_ID and a PROMPT")
        return None, positionals[0] if positionals else None
    return (
        positionals[0] if positionals else None,
        positionals[1] if len(positionals) > 1 else None,
    )


def _last_value(opts: list[_Opt], role: _Role) -> str | None:
    found = [o.values[-1] for o in opts if o.spec is not None and o.spec.role is role and o.values]
    return found[-1] if found else None


def _classify(args: tuple[str, ...], grammar: _Grammar) -> Invocation:
    ctx = _ROOT
    global_opts: list[_Opt] = []
    command_opts: list[_Opt] = []
    positionals: list[str] = []
    options_ended = False
    i = 0
    while i < len(args):
        word = args[i]
        if options_ended:
            positionals.append(word)
        elif word == "--":
            options_ended = True
        elif _is_option_like(word):
            opt, i = _read_option(args, i, ctx, grammar)
            assert opt.spec is not None
            if opt.spec.role is _Role.HELP:
                raise _Unsupported(f"{opt.spec.long} prints and exits")
            if opt.spec.role is _Role.REMOTE:
                raise _Unsupported("--remote drives an app server whose account is not ours")
            (global_opts if ctx is _ROOT else command_opts).append(opt)
            continue
        # clap tries a word as a subcommand before taking it as a positional,
        # even after a PROMPT (`codex hi resume` runs resume); `--` stops that.
        elif (
            entered := _enter_subcommand(ctx, word, grammar, has_positional=bool(positionals))
        ) is not None:
            ctx = entered
        else:
            positionals.append(word)
        if len(positionals) > _MAX_POSITIONALS[ctx]:
            raise _Unsupported(f"too many arguments for `{ctx.value}`")
        i += 1

    last = any(o.spec is not None and o.spec.long == "--last" for o in command_opts)
    session_ref, prompt = _assign_positionals(ctx, positionals, last=last)
    # A subcommand's -C overrides the root's, as Codex merges them.
    cwd = _last_value(command_opts, _Role.CWD)
    return Invocation(
        mode=_MODES[ctx],
        argv=args,
        global_options=tuple(t for o in global_opts for t in o.tokens),
        command_options=tuple(t for o in command_opts for t in o.tokens),
        prompt=prompt,
        session_ref=session_ref,
        last=last,
        all_sessions=any(o.spec is not None and o.spec.long == "--all" for o in command_opts),
        cwd=cwd if cwd is not None else _last_value(global_opts, _Role.CWD),
    )


def parse_argv(argv: Sequence[str], *, version: CodexVersion | None = None) -> Invocation:
    """Classify a Codex command line (without the program name); never raises.

    Anything this module cannot read with certainty — an unknown option, a
    shape Codex would refuse, a subcommand that is not supervised — comes back
    as :attr:`Mode.PASSTHROUGH` with a ``reason``.

    ``version`` (from :func:`detect_version`) selects that release's grammar:
    ``codex exec --remote-auth-token-env VAR hi`` is an exec on 0.171.0 and an
    unknown option on 0.169.0. Without it, the argv is read by the union of
    every known release, which reads every known option with its arity and
    passes through any word that is a subcommand in some release.
    """
    args = tuple(str(a) for a in argv)
    try:
        return _classify(args, _grammar(version))
    except _Unsupported as exc:
        return Invocation(
            mode=Mode.PASSTHROUGH, argv=args, reason=str(exc), subcommand=exc.subcommand
        )
    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the user's codex
        logger.warning("codex_cli.parse_failed error=%r", exc)
        return Invocation(mode=Mode.PASSTHROUGH, argv=args, reason=f"unreadable argv ({exc!r})")


# -- what each version needs ---------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class VersionFeatures:
    """What one Codex version needs on its command line."""

    version: CodexVersion
    # The TUI runs its agent in a shared background daemon unless told not to;
    # then stopping the TUI would not stop the agent (CODEX_FACTS.md §5).
    tui_no_daemon: bool
    # The version knows the feature that refuses to resume another account's
    # thread, so a cross-account resume passes --disable cli_resume_account_check.
    # An older version rejects that flag ("Unknown feature flag").
    resume_account_check_feature: bool
    # Newer than every release in TESTED_CODEX_VERSIONS: it runs with the
    # newest tested release's needs and grammar, and a warning is logged once.
    newer_than_tested: bool = False


@final
@attrs.frozen(kw_only=True)
class _Needs:
    since: CodexVersion
    tui_no_daemon: bool
    resume_account_check_feature: bool


#: What each known version needs, oldest first; a version uses the last row at
#: or below it.
_VERSION_TABLE: tuple[_Needs, ...] = (
    # --no-daemon exists; cli_resume_account_check does not (checked on 0.157.0).
    _Needs(since=MINIMUM_VERSION, tui_no_daemon=True, resume_account_check_feature=False),
    # Both (checked on 0.169.0; 0.171.0 needs the same).
    _Needs(since=CodexVersion(0, 169, 0), tui_no_daemon=True, resume_account_check_feature=True),
)

_warned_untested: set[CodexVersion] = set()


def features_for(version: CodexVersion) -> VersionFeatures:
    """What ``version`` needs; :class:`UnsupportedCodexVersion` if it is too old.

    A version below :data:`MINIMUM_VERSION` is refused. A version newer than
    the newest in :data:`TESTED_CODEX_VERSIONS` is never refused — Codex moves
    fast, and refusing a newer release would break every user on the day it
    ships: it gets the newest row's needs, ``newer_than_tested`` set, and a
    WARNING ``codex_cli.version_newer_than_tested`` logged once per version
    and process. A version between the oldest supported and the newest tested
    that is not itself tested runs silently with the row at or below it.
    """
    if version < MINIMUM_VERSION:
        raise UnsupportedCodexVersion(str(version), str(MINIMUM_VERSION))
    row = [needs for needs in _VERSION_TABLE if needs.since <= version][-1]
    return VersionFeatures(
        version=version,
        tui_no_daemon=row.tui_no_daemon,
        resume_account_check_feature=row.resume_account_check_feature,
        newer_than_tested=_warn_if_untested(version),
    )


def _warn_if_untested(version: CodexVersion) -> bool:
    """Whether ``version`` is newer than every tested release; warns once per version."""
    if version <= _NEWEST_TESTED:
        return False
    if version not in _warned_untested:
        _warned_untested.add(version)
        logger.warning(
            "codex_cli.version_newer_than_tested version=%s newest_tested=%s"
            " (runs with the newest tested release's rules; never refused)",
            version,
            _NEWEST_TESTED,
        )
    return True


def _tail(data: bytes, limit: int = 800) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The child leads its own process group, so an npm launcher and the native
    # binary it started die together (killing only the launcher orphans it).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def detect_version(
    codex: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the Supervisor's API; applied with asyncio.timeout
) -> CodexVersion:
    """Run ``codex --version`` and read the version; the child is always reaped.

    A version newer than every one in :data:`TESTED_CODEX_VERSIONS` is
    returned like any other, with a WARNING logged once (see
    :func:`features_for`); detection never refuses a version.
    A missing or non-executable binary raises :class:`CodexNotFoundError`; a
    timeout, a non-zero exit or output without a version raises
    :class:`CodexCLIError` carrying the end of stderr.
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, got {timeout!r}")
    program = os.fspath(codex)
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            "--version",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise CodexNotFoundError(f"cannot run Codex at {program!r}: {exc.strerror}") from exc
    except OSError as exc:
        raise CodexCLIError(f"cannot start Codex at {program!r}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate()
    except TimeoutError as exc:
        raise CodexCLIError(f"`{program} --version` gave no answer within {timeout:g}s") from exc
    finally:
        if proc.returncode is None:
            _kill_group(proc)
            # Shielded so a cancellation here still leaves no zombie behind.
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        raise CodexCLIError(f"`{program} --version` exited with {proc.returncode}: {_tail(stderr)}")
    try:
        version = CodexVersion.parse(stdout.decode("utf-8", errors="replace"))
    except CodexCLIError as exc:
        raise CodexCLIError(
            f"`{program} --version` printed no version: {_tail(stdout, 200)!r};"
            f" stderr: {_tail(stderr)}"
        ) from exc
    _warn_if_untested(version)
    return version


# -- building command lines ------------------------------------------------------


def _added_flags(inv: Invocation, features: VersionFeatures, *, resuming: bool) -> list[str]:
    """The flags the version needs for ``inv``, minus any the user already set.

    They are root options: placed before the subcommand they cannot be lost,
    since Codex builds `resume`/`fork` on top of the root options, and
    --enable/--disable are global (accepted, and folded in, anywhere).
    """
    flags: list[str] = []
    if inv.is_interactive and features.tui_no_daemon and not inv.has_option(_NO_DAEMON.long):
        flags.append(_NO_DAEMON.long)
    if (
        resuming
        and features.resume_account_check_feature
        and not inv.has_feature_flag(_RESUME_ACCOUNT_CHECK)
    ):
        flags += [_DISABLE.long, _RESUME_ACCOUNT_CHECK]
    return flags


def launch_argv(inv: Invocation, features: VersionFeatures) -> list[str]:
    """The argv (without the program) to start Codex with for ``inv``.

    The user's argv unchanged, plus ``--no-daemon`` for the TUI and, when the
    command resumes an existing session (which the selected account may not
    have created), ``--disable cli_resume_account_check`` — each only if the
    version needs it and the user did not set it. Exec and pass-through
    command lines are returned as given.
    """
    if inv.mode in (Mode.PASSTHROUGH, Mode.EXEC):
        return list(inv.argv)
    resuming = inv.mode in (Mode.RESUME, Mode.FORK, Mode.EXEC_RESUME)
    return [*_added_flags(inv, features, resuming=resuming), *inv.argv]


def _positionals(*words: str) -> list[str]:
    # A session name or prompt starting with "-" would read as an option.
    return ["--", *words] if any(_is_option_like(w) for w in words) else list(words)


def _kept(opts: Iterable[_Opt]) -> list[_Opt]:
    return [o for o in opts if o.spec is None or o.spec.role not in (_Role.PICKER, _Role.IMAGE)]


def resume_argv(
    inv: Invocation,
    session_id: str,
    features: VersionFeatures,
    *,
    prompt: str | None = None,
) -> list[str]:
    """The argv (without the program) that continues session ``session_id`` on another account.

    Interactive modes become ``[global options] resume [options] <id> [prompt]``
    (a fork's rotation resumes the forked, new session). Exec modes become
    ``[global options] exec [exec-only options] resume [options] <id> <prompt>``,
    with ``-s X`` turned into ``-c sandbox_mode="X"`` and ``-C`` dropped
    (``exec resume`` has neither: run the child in ``inv.cwd``). Every option is
    kept in order except ``--last``/``--all`` (the id replaces them) and images
    (they belong to the original prompt, which is never sent again). ``prompt``
    is the new PROMPT; exec needs one (``"-"`` reads stdin).
    """
    if not session_id:
        raise ConfigError("resume_argv needs a session id")
    if inv.mode is Mode.PASSTHROUGH:
        raise ConfigError(f"a pass-through command line cannot be resumed ({inv.reason})")
    added = _added_flags(inv, features, resuming=True)
    global_tokens = [t for o in _kept(_scan(inv.global_options)) for t in o.tokens]
    command = _kept(_scan(inv.command_options))
    if inv.is_interactive:
        words = [session_id] if prompt is None else [session_id, prompt]
        command_tokens = [t for o in command for t in o.tokens]
        return [*added, *global_tokens, "resume", *command_tokens, *_positionals(*words)]
    if prompt is None:
        raise ConfigError("resuming a codex exec session needs a prompt")
    before: list[str] = []
    after: list[str] = []
    sandbox: str | None = None
    for opt in command:
        role = opt.spec.role if opt.spec is not None else _Role.KEEP
        if role is _Role.CWD:
            continue
        if role is _Role.SANDBOX:
            sandbox = opt.values[-1] if opt.values else sandbox  # the last -s wins, as in clap
        elif opt.spec is None or _EXEC_RESUME in opt.spec.where:
            after += opt.tokens
        else:
            # exec accepts it before `resume` (e.g. -p, --add-dir, --color).
            before += opt.tokens
    if sandbox is not None:
        # Last, so it wins over an earlier -c sandbox_mode as -s did.
        after += ["-c", f"sandbox_mode={json.dumps(sandbox)}"]
    return [
        *added,
        *global_tokens,
        "exec",
        *before,
        "resume",
        *after,
        *_positionals(session_id, prompt),
    ]
