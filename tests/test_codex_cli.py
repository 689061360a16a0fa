"""Tests for codex_supervisor.codex_cli: argv classification, rebuilding, versions."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_supervisor import codex_cli
from codex_supervisor.codex_cli import (
    _OPTIONS,
    _PASSTHROUGH_SUBCOMMANDS,
    _SUBCOMMANDS,
    MINIMUM_VERSION,
    TESTED_CODEX_VERSIONS,
    CodexVersion,
    Invocation,
    Mode,
    VersionFeatures,
    _Context,
    _grammar,
    _Role,
    _Spec,
    detect_version,
    features_for,
    launch_argv,
    parse_argv,
    resume_argv,
)
from codex_supervisor.errors import (
    CodexCLIError,
    CodexNotFoundError,
    ConfigError,
    UnsupportedCodexVersion,
)

V169 = features_for(CodexVersion(0, 169, 0))
V157 = features_for(CodexVersion(0, 157, 0))
NOTHING_NEEDED = VersionFeatures(
    version=CodexVersion(9, 0, 0), tui_no_daemon=False, resume_account_check_feature=False
)
SID = "019a0000-0000-7000-8000-000000000001"
NO_CHECK = ["--disable", "cli_resume_account_check"]


# -- classification -------------------------------------------------------------

CLASSIFY = [
    # Each row: an argv, then the mode, global and command options, PROMPT and session it has.
    ([], Mode.INTERACTIVE, (), (), None, None),
    (["fix the bug"], Mode.INTERACTIVE, (), (), "fix the bug", None),
    (["-m", "X", "fix it"], Mode.INTERACTIVE, ("-m", "X"), (), "fix it", None),
    (["fix it", "-m", "X"], Mode.INTERACTIVE, ("-m", "X"), (), "fix it", None),
    (["-m", "X"], Mode.INTERACTIVE, ("-m", "X"), (), None, None),
    (["-mX", "hi"], Mode.INTERACTIVE, ("-mX",), (), "hi", None),
    (["--model=X", "hi"], Mode.INTERACTIVE, ("--model=X",), (), "hi", None),
    (["-c", "k=v", "hi"], Mode.INTERACTIVE, ("-c", "k=v"), (), "hi", None),
    (["--config=k=v"], Mode.INTERACTIVE, ("--config=k=v",), (), None, None),
    (["-c=k=v"], Mode.INTERACTIVE, ("-c=k=v",), (), None, None),
    (["--enable", "foo", "hi"], Mode.INTERACTIVE, ("--enable", "foo"), (), "hi", None),
    (["--enable=foo"], Mode.INTERACTIVE, ("--enable=foo",), (), None, None),
    (["-m", "resume"], Mode.INTERACTIVE, ("-m", "resume"), (), None, None),
    (["-i", "a.png", "b.png"], Mode.INTERACTIVE, ("-i", "a.png", "b.png"), (), None, None),
    # `-i <FILE>...` is greedy in clap: the next words are images, not a PROMPT or a command.
    (["-i", "a.png", "login"], Mode.INTERACTIVE, ("-i", "a.png", "login"), (), None, None),
    (
        ["-i", "a.png", "-m", "X", "hi"],
        Mode.INTERACTIVE,
        ("-i", "a.png", "-m", "X"),
        (),
        "hi",
        None,
    ),
    (["--image=a.png", "hi"], Mode.INTERACTIVE, ("--image=a.png",), (), "hi", None),
    (["-i", "a", "-i", "b"], Mode.INTERACTIVE, ("-i", "a", "-i", "b"), (), None, None),
    (["--", "--help"], Mode.INTERACTIVE, (), (), "--help", None),
    (["--", "login"], Mode.INTERACTIVE, (), (), "login", None),
    (["-m", "X", "--", "-v is verbose"], Mode.INTERACTIVE, ("-m", "X"), (), "-v is verbose", None),
    (["-"], Mode.INTERACTIVE, (), (), "-", None),
    (["resume"], Mode.RESUME, (), (), None, None),
    (["resume", "--last"], Mode.RESUME, (), ("--last",), None, None),
    (["resume", "my-name"], Mode.RESUME, (), (), None, "my-name"),
    (["resume", SID, "go on"], Mode.RESUME, (), (), "go on", SID),
    (["resume", "--last", "go on"], Mode.RESUME, (), ("--last",), "go on", None),
    (["resume", "--all"], Mode.RESUME, (), ("--all",), None, None),
    (
        ["-m", "X", "resume", SID, "--no-alt-screen"],
        Mode.RESUME,
        ("-m", "X"),
        ("--no-alt-screen",),
        None,
        SID,
    ),
    (
        ["resume", "--include-non-interactive", "--last"],
        Mode.RESUME,
        (),
        ("--include-non-interactive", "--last"),
        None,
        None,
    ),
    (["resume", "--", "-odd-name"], Mode.RESUME, (), (), None, "-odd-name"),
    (["fork", SID], Mode.FORK, (), (), None, SID),
    (
        ["fork", "--last", "-s", "read-only"],
        Mode.FORK,
        (),
        ("--last", "-s", "read-only"),
        None,
        None,
    ),
    (["exec", "hi"], Mode.EXEC, (), (), "hi", None),
    (["e", "hi"], Mode.EXEC, (), (), "hi", None),
    (["exec", "-"], Mode.EXEC, (), (), "-", None),
    (["exec"], Mode.EXEC, (), (), None, None),
    (
        ["exec", "--json", "-o", "out.md", "hi"],
        Mode.EXEC,
        (),
        ("--json", "-o", "out.md"),
        "hi",
        None,
    ),
    (["-c", "a=b", "exec", "-c", "c=d", "hi"], Mode.EXEC, ("-c", "a=b"), ("-c", "c=d"), "hi", None),
    (["exec", "--", "-hi"], Mode.EXEC, (), (), "-hi", None),
    (["exec", "resume", "--last"], Mode.EXEC_RESUME, (), ("--last",), None, None),
    (
        ["exec", "--json", "resume", "--last", "2+2"],
        Mode.EXEC_RESUME,
        (),
        ("--json", "--last"),
        "2+2",
        None,
    ),
    (["exec", "resume", SID, "-"], Mode.EXEC_RESUME, (), (), "-", SID),
    (
        ["exec", "-s", "read-only", "resume", SID, "go"],
        Mode.EXEC_RESUME,
        (),
        ("-s", "read-only"),
        "go",
        SID,
    ),
    (
        ["exec", "resume", "-i", "a.png", SID, "go"],
        Mode.EXEC_RESUME,
        (),
        ("-i", "a.png"),
        "go",
        SID,
    ),
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(case[0], case[1:]) for case in CLASSIFY],
    ids=[" ".join(case[0]) or "<empty>" for case in CLASSIFY],
)
def test_classification(argv: list[str], expected: tuple[object, ...]) -> None:
    """Each supported shape gets the mode, options, prompt and session Codex would see."""
    inv = parse_argv(argv)
    assert inv.reason == ""
    assert inv.argv == tuple(argv)
    got = (
        inv.mode,
        inv.global_options,
        inv.command_options,
        inv.prompt,
        inv.session_ref,
    )
    assert got == expected


PASSTHROUGH = [
    (["--help"], "--help"),
    (["-h"], "--help"),
    (["-V"], "--version"),
    (["--version"], "--version"),
    (["-Vh"], "--version"),
    (["resume", "--help"], "--help"),
    (["exec", "resume", "-h"], "--help"),
    (["-m", "X", "--help"], "--help"),
    (["login"], "login"),
    (["logout"], "logout"),
    (["-c", "k=v", "login", "--with-api-key"], "login"),
    (["app-server"], "app-server"),
    (["mcp", "list"], "mcp"),
    (["features", "list"], "features"),
    (["completion", "bash"], "completion"),
    (["doctor"], "doctor"),
    (["sandbox", "linux", "ls"], "sandbox"),
    (["apply", "t1"], "apply"),
    (["a", "t1"], "`codex a`"),
    (["cloud"], "cloud"),
    (["review"], "review"),
    (["help"], "help"),
    (["exec", "review"], "review"),
    (["exec", "fork", SID, "hi"], "fork"),
    (["--frobnicate"], "--frobnicate"),
    (["--full-auto", "hi"], "--full-auto"),
    (["-x"], "-x"),
    (["exec", "resume", "-s", "read-only", SID, "hi"], "-s"),
    (["exec", "resume", "-C", "/tmp", SID, "hi"], "-C"),
    (["exec", "--no-daemon", "hi"], "--no-daemon"),
    (["exec", "-a", "never", "hi"], "-a"),
    (["exec", "resume", "--color", "never", SID, "hi"], "--color"),
    (["fork", "--include-non-interactive"], "--include-non-interactive"),
    (["--last"], "--last"),
    (["exec", "--last", "resume"], "--last"),
    (["--no-daemon=yes"], "--no-daemon"),
    (["-m"], "needs a value"),
    (["-m", "--help"], "needs a value"),
    (["-c", "-x"], "needs a value"),
    (["fix", "this bug"], "too many"),
    (["exec", "a", "b"], "too many"),
    (["resume", "a", "b", "c"], "too many"),
    (["resume", "--last", "a", "b"], "--last"),
    (["hi", "resume"], "before the subcommand"),
    (["exec", "hi", "resume", SID], "before the subcommand"),
    (["--remote", "ws://127.0.0.1:1", "hi"], "--remote"),
    (["-i", "a.png", "--", "hi"], "--"),
]


@pytest.mark.parametrize(
    ("argv", "reason"), PASSTHROUGH, ids=[" ".join(case[0]) for case in PASSTHROUGH]
)
def test_passthrough(argv: list[str], reason: str) -> None:
    """Unsupervised commands and shapes Codex would refuse pass through, with a reason."""
    inv = parse_argv(argv)
    assert inv.mode is Mode.PASSTHROUGH
    assert reason in inv.reason
    assert inv.argv == tuple(argv)
    assert not inv.is_interactive
    assert not inv.is_exec


def test_passthrough_reason_names_options_not_values() -> None:
    """A reason never repeats an option's value (it could be a path or a token)."""
    inv = parse_argv(["--api-key=sk-secret-value"])
    assert inv.mode is Mode.PASSTHROUGH
    assert "sk-secret-value" not in inv.reason
    assert "--api-key" in inv.reason


@pytest.mark.parametrize(
    ("argv", "last", "all_sessions"),
    [
        (["resume", "--last"], True, False),
        (["resume", "--all"], False, True),
        (["fork", "--all", "--last"], True, True),
        (["exec", "resume", "--last", "--all", "hi"], True, True),
        (["resume", SID], False, False),
    ],
)
def test_picker_flags(argv: list[str], last: bool, all_sessions: bool) -> None:
    """``--last`` and ``--all`` are reported as flags, not left in a positional."""
    inv = parse_argv(argv)
    assert (inv.last, inv.all_sessions) == (last, all_sessions)


@pytest.mark.parametrize(
    ("argv", "cwd"),
    [
        (["-C", "/a", "hi"], "/a"),
        (["--cd=/a", "hi"], "/a"),
        (["-C/a"], "/a"),
        (["-C", "/a", "resume", "-C", "/b"], "/b"),
        (["-C", "/a", "resume"], "/a"),
        (["exec", "-C", "/x", "resume", SID, "hi"], "/x"),
        (["exec", "--cd", "/x", "--cd", "/y", "hi"], "/y"),
        (["hi"], None),
    ],
)
def test_cwd(argv: list[str], cwd: str | None) -> None:
    """The -C/--cd value is exposed; a subcommand's overrides the root's, the last one wins."""
    assert parse_argv(argv).cwd == cwd


@pytest.mark.parametrize(
    ("mode", "interactive", "exec_"),
    [
        (Mode.INTERACTIVE, True, False),
        (Mode.RESUME, True, False),
        (Mode.FORK, True, False),
        (Mode.EXEC, False, True),
        (Mode.EXEC_RESUME, False, True),
        (Mode.PASSTHROUGH, False, False),
    ],
)
def test_mode_helpers(mode: Mode, interactive: bool, exec_: bool) -> None:
    """is_interactive covers the TUI modes, is_exec the exec ones."""
    inv = Invocation(mode=mode, argv=())
    assert (inv.is_interactive, inv.is_exec) == (interactive, exec_)


@pytest.mark.parametrize(
    ("argv", "names", "expected"),
    [
        (["-m", "X"], ("--model",), True),
        (["-mX"], ("-m",), True),
        (["--model=X"], ("-m",), True),
        (["--no-daemon"], ("--no-daemon",), True),
        (["resume", "--no-daemon"], ("--no-daemon",), True),
        (["exec", "--json", "hi"], ("--json",), True),
        (["-c", "no-daemon=1"], ("--no-daemon",), False),
        (["--", "--no-daemon"], ("--no-daemon",), False),
        (["-m", "--no-daemon-like"], ("--no-daemon",), False),
        (["hi"], ("--model", "--no-daemon"), False),
        (["-s", "read-only"], ("--model", "--sandbox"), True),
    ],
)
def test_has_option(argv: list[str], names: tuple[str, ...], expected: bool) -> None:
    """has_option knows every spelling of an option and never looks at values or PROMPTs."""
    assert parse_argv(argv).has_option(*names) is expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--enable", "cli_resume_account_check"], True),
        (["--disable", "cli_resume_account_check"], True),
        (["--disable=cli_resume_account_check"], True),
        (["resume", "--enable", "cli_resume_account_check"], True),
        (["-c", "features.cli_resume_account_check=true"], True),
        (["--config=features.cli_resume_account_check=false"], True),
        (["-cfeatures.cli_resume_account_check=false"], True),
        (["exec", "-c", " features.cli_resume_account_check = false", "hi"], True),
        (["--disable", "apps"], False),
        (["-c", "features.cli_resume_account_check_v2=true"], False),
        (["-c", "x=features.cli_resume_account_check"], False),
        (["cli_resume_account_check"], False),
    ],
)
def test_has_feature_flag(argv: list[str], expected: bool) -> None:
    """A feature counts as set by --enable/--disable or -c features.F=..., in any spelling."""
    assert parse_argv(argv).has_feature_flag("cli_resume_account_check") is expected


# -- launch argv ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "features", "expected"),
    [
        (["hi"], V169, ["--no-daemon", "hi"]),
        (["-m", "X", "hi"], V169, ["--no-daemon", "-m", "X", "hi"]),
        (["--no-daemon", "hi"], V169, ["--no-daemon", "hi"]),
        (["resume", "--last"], V169, ["--no-daemon", *NO_CHECK, "resume", "--last"]),
        (["resume", "--no-daemon", SID], V169, [*NO_CHECK, "resume", "--no-daemon", SID]),
        (["fork", SID], V169, ["--no-daemon", *NO_CHECK, "fork", SID]),
        (
            ["resume", "--enable", "cli_resume_account_check", SID],
            V169,
            ["--no-daemon", "resume", "--enable", "cli_resume_account_check", SID],
        ),
        (["resume", SID], V157, ["--no-daemon", "resume", SID]),
        (["resume", SID], NOTHING_NEEDED, ["resume", SID]),
        (["exec", "hi"], V169, ["exec", "hi"]),
        (["exec", "resume", SID, "hi"], V169, [*NO_CHECK, "exec", "resume", SID, "hi"]),
        (["exec", "resume", SID, "hi"], V157, ["exec", "resume", SID, "hi"]),
        (["login"], V169, ["login"]),
        (["--help"], V169, ["--help"]),
    ],
)
def test_launch_argv(argv: list[str], features: VersionFeatures, expected: list[str]) -> None:
    """The user's argv plus what the version needs, as root options, never twice."""
    assert launch_argv(parse_argv(argv), features) == expected


# -- resume argv ------------------------------------------------------------------

RESUME = [
    # Each row: an argv, the version needs, the new PROMPT, then the rebuilt argv.
    (["hi"], V169, None, ["--no-daemon", *NO_CHECK, "resume", SID]),
    (["-m", "X", "fix it"], V169, None, ["--no-daemon", *NO_CHECK, "-m", "X", "resume", SID]),
    (
        ["-m", "X", "fix it"],
        V169,
        "go on",
        ["--no-daemon", *NO_CHECK, "-m", "X", "resume", SID, "go on"],
    ),
    (["resume", "--last"], V169, None, ["--no-daemon", *NO_CHECK, "resume", SID]),
    (
        ["resume", "--all", "--last", "-m", "X"],
        V169,
        None,
        ["--no-daemon", *NO_CHECK, "resume", "-m", "X", SID],
    ),
    (["resume", "old-name", "first"], V169, None, ["--no-daemon", *NO_CHECK, "resume", SID]),
    (
        ["fork", "--last", "-s", "read-only"],
        V169,
        None,
        ["--no-daemon", *NO_CHECK, "resume", "-s", "read-only", SID],
    ),
    (["--no-daemon", "hi"], V169, None, [*NO_CHECK, "--no-daemon", "resume", SID]),
    (
        ["-c", "features.cli_resume_account_check=false", "hi"],
        V169,
        None,
        ["--no-daemon", "-c", "features.cli_resume_account_check=false", "resume", SID],
    ),
    (["hi"], V157, None, ["--no-daemon", "resume", SID]),
    (["hi"], NOTHING_NEEDED, None, ["resume", SID]),
    (["-i", "a.png", "b.png", "-m", "X", "look"], NOTHING_NEEDED, None, ["-m", "X", "resume", SID]),
    (
        ["resume", "-C", "/w", "--include-non-interactive", SID],
        NOTHING_NEEDED,
        None,
        ["resume", "-C", "/w", "--include-non-interactive", SID],
    ),
    (["hi"], NOTHING_NEEDED, "-p is a prompt", ["resume", "--", SID, "-p is a prompt"]),
    (["exec", "hi"], NOTHING_NEEDED, "continue", ["exec", "resume", SID, "continue"]),
    (["exec", "hi"], V169, "continue", [*NO_CHECK, "exec", "resume", SID, "continue"]),
    (["exec", "hi"], NOTHING_NEEDED, "-", ["exec", "resume", SID, "-"]),
    (
        [
            "-c",
            "a=b",
            "exec",
            "--skip-git-repo-check",
            "-s",
            "read-only",
            "-m",
            "M",
            "--json",
            "hi",
        ],
        NOTHING_NEEDED,
        "continue",
        [
            "-c",
            "a=b",
            "exec",
            "resume",
            "--skip-git-repo-check",
            "-m",
            "M",
            "--json",
            "-c",
            'sandbox_mode="read-only"',
            SID,
            "continue",
        ],
    ),
    (
        [
            "exec",
            "--sandbox=workspace-write",
            "-C",
            "/w",
            "-p",
            "prof",
            "--add-dir",
            "/x",
            "--color",
            "never",
            "-o",
            "o.md",
            "hi",
        ],
        NOTHING_NEEDED,
        "continue",
        [
            "exec",
            "-p",
            "prof",
            "--add-dir",
            "/x",
            "--color",
            "never",
            "resume",
            "-o",
            "o.md",
            "-c",
            'sandbox_mode="workspace-write"',
            SID,
            "continue",
        ],
    ),
    (
        ["exec", "-s", "read-only", "-c", "sandbox_mode=danger-full-access", "hi"],
        NOTHING_NEEDED,
        "continue",
        [
            "exec",
            "resume",
            "-c",
            "sandbox_mode=danger-full-access",
            "-c",
            'sandbox_mode="read-only"',
            SID,
            "continue",
        ],
    ),
    (
        ["exec", "--json", "resume", "--last", "--all", "-i", "x.png", "--enable", "f", "first"],
        NOTHING_NEEDED,
        "again",
        ["exec", "resume", "--json", "--enable", "f", SID, "again"],
    ),
    (
        ["exec", "-i", "a.png", "b.png", "--ephemeral", "hi"],
        NOTHING_NEEDED,
        "again",
        ["exec", "resume", "--ephemeral", SID, "again"],
    ),
]


@pytest.mark.parametrize(
    ("argv", "features", "prompt", "expected"),
    RESUME,
    ids=[" ".join(case[0]) for case in RESUME],
)
def test_resume_argv(
    argv: list[str], features: VersionFeatures, prompt: str | None, expected: list[str]
) -> None:
    """Rebuilding keeps every option in order, drops --last/--all/images and the old prompt."""
    assert resume_argv(parse_argv(argv), SID, features, prompt=prompt) == expected


def test_resume_argv_of_a_fork_resumes_the_new_session() -> None:
    """A fork rotates by resuming the forked (new) session id, never forking again."""
    out = resume_argv(parse_argv(["fork", "old-id"]), SID, NOTHING_NEEDED)
    assert out == ["resume", SID]
    assert "fork" not in out
    assert "old-id" not in out


@pytest.mark.parametrize(
    ("argv", "session_id", "prompt", "message"),
    [
        (["login"], SID, "p", "pass-through"),
        (["exec", "hi"], SID, None, "needs a prompt"),
        (["exec", "resume", "--last"], SID, None, "needs a prompt"),
        (["hi"], "", None, "session id"),
    ],
)
def test_resume_argv_refuses(
    argv: list[str], session_id: str, prompt: str | None, message: str
) -> None:
    """A pass-through, an exec without a new prompt, or no session id is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        resume_argv(parse_argv(argv), session_id, V169, prompt=prompt)


# -- versions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("codex-cli 0.169.0", (0, 169, 0)),
        ("codex-cli 0.169.0\n", (0, 169, 0)),
        ("0.169.0", (0, 169, 0)),
        ("v1.2.3", (1, 2, 3)),
        ("codex-cli 0.170.0-alpha.2", (0, 170, 0)),
        ("codex-cli 1.0.0+build.5", (1, 0, 0)),
        ("WARNING: noise\ncodex-cli 0.158.1", (0, 158, 1)),
    ],
)
def test_version_parse(text: str, expected: tuple[int, int, int]) -> None:
    """Versions are read with or without the program name; prerelease suffixes are tolerated."""
    assert CodexVersion.parse(text) == CodexVersion(*expected)


@pytest.mark.parametrize("text", ["", "codex-cli", "codex-cli 0.169", "garbage", "1.2.x", "a1.2.3"])
def test_version_parse_refuses_garbage(text: str) -> None:
    """Text without a version is a CodexCLIError."""
    with pytest.raises(CodexCLIError):
        CodexVersion.parse(text)


def test_version_order_and_text() -> None:
    """Versions compare numerically and print as major.minor.patch."""
    assert CodexVersion(0, 99, 0) < CodexVersion(0, 157, 0) < CodexVersion(0, 169, 0)
    assert CodexVersion(1, 0, 0) > CodexVersion(0, 999, 999)
    assert str(CodexVersion(0, 169, 0)) == "0.169.0"
    assert sorted([CodexVersion(0, 169, 0), CodexVersion(0, 9, 1)])[0] == CodexVersion(0, 9, 1)


@pytest.mark.parametrize(
    ("version", "no_daemon", "account_check"),
    [
        ((0, 157, 0), True, False),
        ((0, 160, 3), True, False),
        ((0, 169, 0), True, True),
        ((0, 169, 5), True, True),
    ],
)
def test_features_table(
    version: tuple[int, int, int], no_daemon: bool, account_check: bool
) -> None:
    """Each known version gets the needs of the newest table row at or below it."""
    features = features_for(CodexVersion(*version))
    assert features.version == CodexVersion(*version)
    assert features.tui_no_daemon is no_daemon
    assert features.resume_account_check_feature is account_check


def test_features_too_old() -> None:
    """A version below the minimum is refused with both versions in the error."""
    with pytest.raises(UnsupportedCodexVersion) as info:
        features_for(CodexVersion(0, 156, 9))
    assert info.value.version == "0.156.9"
    assert info.value.minimum == str(MINIMUM_VERSION) == "0.157.0"
    assert isinstance(info.value, CodexCLIError)


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which untested versions this process already warned about."""
    monkeypatch.setattr(codex_cli, "_warned_untested", set())


@pytest.mark.usefixtures("fresh_warnings")
def test_features_newer_than_tested_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """A newer version is never refused: the newest needs, a flag, and one logged warning."""
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.codex_cli"):
        features = features_for(CodexVersion(0, 200, 0))
    assert features.tui_no_daemon
    assert features.resume_account_check_feature
    assert features.newer_than_tested
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "codex_cli.version_newer_than_tested version=0.200.0" in record.getMessage()
    assert f"newest_tested={TESTED_CODEX_VERSIONS[-1]}" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.codex_cli"):
        assert features_for(CodexVersion(0, 200, 0)).newer_than_tested  # once per version
        assert features_for(CodexVersion(0, 170, 0)).newer_than_tested is False  # in between
        for version in TESTED_CODEX_VERSIONS:
            assert features_for(CodexVersion.parse(version)).newer_than_tested is False
    assert caplog.text == ""


def test_tested_versions_are_one_ordered_list() -> None:
    """The tested versions are distinct, oldest first, and all supported."""
    parsed = [CodexVersion.parse(v) for v in TESTED_CODEX_VERSIONS]
    assert [str(v) for v in parsed] == list(TESTED_CODEX_VERSIONS)
    assert parsed == sorted(set(parsed))
    assert parsed[0] >= MINIMUM_VERSION


_VERSION_CELL = re.compile(r"[`*]*(\d+\.\d+\.\d+)[`*]*")


def _readme_versions() -> dict[str, list[str]]:
    """The rows of the README's tables whose first cell is a version, by version, in order."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows: dict[str, list[str]] = {}
    for line in readme.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        found = _VERSION_CELL.fullmatch(cells[0])
        if found:
            rows[found.group(1)] = cells
    return rows


def test_readme_support_table_names_exactly_the_tested_versions() -> None:
    """The README's support table: the oldest supported, then exactly the tested versions."""
    rows = _readme_versions()
    assert list(rows) == [str(MINIMUM_VERSION), *TESTED_CODEX_VERSIONS]
    assert "oldest supported" in rows[str(MINIMUM_VERSION)][1]
    assert all("tested" in rows[v][1] for v in TESTED_CODEX_VERSIONS)


@pytest.mark.parametrize("version", [str(MINIMUM_VERSION), *TESTED_CODEX_VERSIONS])
def test_readme_support_table_says_what_each_version_needs(version: str) -> None:
    """Each row names exactly the flags the version table adds for that version."""
    features = features_for(CodexVersion.parse(version))
    needs = _readme_versions()[version][2]
    assert ("`--no-daemon`" in needs) is features.tui_no_daemon
    assert ("`--disable cli_resume_account_check`" in needs) is (
        features.resume_account_check_feature
    )


# -- one grammar per version ----------------------------------------------------------

V169_, V171_ = CodexVersion(0, 169, 0), CodexVersion(0, 171, 0)
TOKEN_ENV = ["exec", "--remote-auth-token-env", "TOK", "hi"]


@pytest.mark.parametrize(
    ("argv", "version", "mode", "prompt"),
    [
        # 0.171.0 gave exec --remote-auth-token-env <ENV_VAR>; 0.169.0 refuses it.
        (TOKEN_ENV, V169_, Mode.PASSTHROUGH, None),
        (TOKEN_ENV, V171_, Mode.EXEC, "hi"),
        (TOKEN_ENV, None, Mode.EXEC, "hi"),
        (
            ["exec", "resume", "--remote-auth-token-env", "TOK", SID, "hi"],
            V171_,
            Mode.EXEC_RESUME,
            "hi",
        ),
        # --remote drives someone else's app server: never supervised, in any version.
        (["exec", "--remote", "ws://127.0.0.1:1", "hi"], V169_, Mode.PASSTHROUGH, None),
        (["exec", "--remote", "ws://127.0.0.1:1", "hi"], V171_, Mode.PASSTHROUGH, None),
        (["exec", "--remote", "ws://127.0.0.1:1", "hi"], None, Mode.PASSTHROUGH, None),
        # 0.171.0 dropped `stdio-to-uds`: there the word is a PROMPT, as for Codex.
        (["stdio-to-uds"], V169_, Mode.PASSTHROUGH, None),
        (["stdio-to-uds"], V171_, Mode.INTERACTIVE, "stdio-to-uds"),
        (["stdio-to-uds"], None, Mode.PASSTHROUGH, None),
        # Untested versions: older ones read like the oldest table, newer like the newest.
        (["stdio-to-uds"], CodexVersion(0, 150, 0), Mode.PASSTHROUGH, None),
        (["stdio-to-uds"], CodexVersion(0, 170, 9), Mode.PASSTHROUGH, None),
        (TOKEN_ENV, CodexVersion(0, 300, 0), Mode.EXEC, "hi"),
    ],
)
def test_parse_follows_the_grammar_of_the_version(
    argv: list[str], version: CodexVersion | None, mode: Mode, prompt: str | None
) -> None:
    """Each release is read by its own grammar; without a version, by the union of all."""
    inv = parse_argv(argv, version=version)
    assert inv.mode is mode, inv.reason
    assert inv.prompt == prompt


def test_a_prompt_after_a_new_value_option_is_never_misread() -> None:
    """The value of a value-taking option of 0.171.0 is not taken for the PROMPT."""
    inv = parse_argv(["exec", "--remote-auth-token-env", "TOK", "-m", "X", "do it"], version=V171_)
    assert (inv.mode, inv.prompt) == (Mode.EXEC, "do it")
    assert inv.command_options == ("--remote-auth-token-env", "TOK", "-m", "X")
    out = resume_argv(inv, SID, features_for(V171_), prompt="next")
    assert out == [*NO_CHECK, "exec", "resume", *inv.command_options, SID, "next"]
    again = parse_argv(out, version=V171_)
    assert (again.mode, again.session_ref, again.prompt) == (Mode.EXEC_RESUME, SID, "next")
    assert again.has_option("--remote-auth-token-env")


def test_the_grammars_differ_only_where_codex_changed() -> None:
    """0.171.0's table is 0.169.0's plus exec's --remote options, minus stdio-to-uds."""
    old, new = _grammar(V169_), _grammar(V171_)
    assert old.options == _OPTIONS
    assert old.passthrough == _PASSTHROUGH_SUBCOMMANDS
    changed = {s.long: s for s in new.options}.items() - {s.long: s for s in old.options}.items()
    assert {name for name, _ in changed} == {"--remote", "--remote-auth-token-env"}
    for name, spec in changed:
        assert spec.where - old.by_name[name].where == {_Context.EXEC, _Context.EXEC_RESUME}
    assert old.passthrough[_Context.ROOT] - new.passthrough[_Context.ROOT] == {"stdio-to-uds"}
    assert new.passthrough[_Context.EXEC] == old.passthrough[_Context.EXEC]
    union = _grammar(None)
    assert union.passthrough[_Context.ROOT] == old.passthrough[_Context.ROOT]
    assert union.by_name["--remote-auth-token-env"] == new.by_name["--remote-auth-token-env"]


# -- detect_version ------------------------------------------------------------------


def _fake_codex(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "codex"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.anyio
async def test_detect_version_reads_the_version(tmp_path: Path) -> None:
    """``codex --version`` output is parsed, and the argument really is --version."""
    codex = _fake_codex(tmp_path, '[ "$1" = --version ] && echo "codex-cli 0.169.0"')
    assert await detect_version(codex) == CodexVersion(0, 169, 0)


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_warnings")
async def test_detect_version_warns_about_a_newer_version_and_returns_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version newer than every tested one is returned (never refused), with one warning."""
    codex = _fake_codex(tmp_path, 'echo "codex-cli 0.999.1"')
    with caplog.at_level(logging.WARNING, logger="codex_supervisor.codex_cli"):
        assert await detect_version(codex) == CodexVersion(0, 999, 1)
        assert await detect_version(codex) == CodexVersion(0, 999, 1)
        assert features_for(CodexVersion(0, 999, 1)).newer_than_tested
    assert [r.getMessage().split()[0] for r in caplog.records] == [
        "codex_cli.version_newer_than_tested"
    ]


@pytest.mark.anyio
async def test_detect_version_passes_env_and_devnull_stdin(tmp_path: Path) -> None:
    """The given environment is the child's whole environment, and stdin is empty."""
    codex = _fake_codex(tmp_path, 'cat; echo "codex-cli $FAKE_VERSION"; [ -z "$HOME" ] || exit 3')
    assert await detect_version(str(codex), env={"FAKE_VERSION": "0.170.1"}) == CodexVersion(
        0, 170, 1
    )


@pytest.mark.anyio
async def test_detect_version_garbage(tmp_path: Path) -> None:
    """Output without a version is a CodexCLIError naming what was printed."""
    codex = _fake_codex(tmp_path, "echo hello; echo oops >&2")
    with pytest.raises(CodexCLIError, match="printed no version") as info:
        await detect_version(codex)
    assert "oops" in str(info.value)
    assert not isinstance(info.value, CodexNotFoundError)


@pytest.mark.anyio
async def test_detect_version_non_zero_exit(tmp_path: Path) -> None:
    """A failing child is a CodexCLIError carrying its exit code and the end of stderr."""
    codex = _fake_codex(tmp_path, "echo 'x' >&2; echo 'error: broken install' >&2; exit 4")
    with pytest.raises(CodexCLIError, match=r"(?s)exited with 4: .*broken install"):
        await detect_version(codex)


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (or is only a zombie of another parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


@pytest.mark.anyio
async def test_detect_version_timeout_kills_and_reaps(tmp_path: Path) -> None:
    """A child that hangs is killed with its process group and reaped before the error."""
    pids = tmp_path / "pids"
    codex = _fake_codex(tmp_path, f"sleep 60 & echo $$ $! > {pids}; wait")
    started = time.monotonic()
    with pytest.raises(CodexCLIError, match=r"no answer within 0\.5s"):
        await detect_version(codex, timeout=0.5)
    assert time.monotonic() - started < 10
    shell, grandchild = (int(p) for p in pids.read_text().split())
    # Our own child is reaped (not even a zombie) by the time the error arrives.
    with pytest.raises(ProcessLookupError):
        os.kill(shell, 0)
    deadline = time.monotonic() + 10
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the grandchild survived the timeout"
        time.sleep(0.02)


@pytest.mark.anyio
async def test_detect_version_missing_binary(tmp_path: Path) -> None:
    """A binary that does not exist is a CodexNotFoundError (also a FileNotFoundError)."""
    with pytest.raises(CodexNotFoundError) as info:
        await detect_version(tmp_path / "nope" / "codex")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.anyio
async def test_detect_version_not_executable(tmp_path: Path) -> None:
    """A file without execute permission is a CodexNotFoundError."""
    path = tmp_path / "codex"
    path.write_text("#!/bin/sh\necho codex-cli 0.169.0\n")
    path.chmod(0o600)
    with pytest.raises(CodexNotFoundError):
        await detect_version(path)


@pytest.mark.anyio
async def test_detect_version_bad_timeout(tmp_path: Path) -> None:
    """A non-positive timeout is a configuration error, raised before anything runs."""
    with pytest.raises(ConfigError):
        await detect_version(tmp_path / "codex", timeout=0)


# -- properties ------------------------------------------------------------------------

_WORDS = sorted(
    {name for spec in _grammar(None).options for name in spec.names}
    | {f"{spec.long}=x" for spec in _grammar(None).options}
    | {name for subs in _SUBCOMMANDS.values() for name in subs}
    | {name for subs in _grammar(None).passthrough.values() for name in subs}
    | {"--", "-", "", "-=", "--=", "---", "-mX", "-Vh", "-hX", "=", SID}
)
_ANY_WORD = st.one_of(st.sampled_from(_WORDS), st.text(max_size=12))


@settings(max_examples=600)
@given(st.lists(_ANY_WORD, max_size=14))
def test_parse_never_raises(argv: list[str]) -> None:
    """Any list of words (option-looking or not) is classified without an exception."""
    inv = parse_argv(argv)
    assert inv.argv == tuple(argv)
    assert (inv.mode is Mode.PASSTHROUGH) == bool(inv.reason)
    # The parser's last-resort guard must never be what classified it.
    assert not inv.reason.startswith("unreadable argv"), inv.reason
    if inv.mode is not Mode.PASSTHROUGH:
        # What the parser kept is a faithful subset of the argv.
        assert len(inv.global_options) + len(inv.command_options) <= len(argv)
        relaunched = launch_argv(inv, V169)
        assert relaunched[len(relaunched) - len(argv) :] == list(argv)


# Values never start with "-" (clap would refuse them) and never contain ":",
# which marks the PROMPT, so the PROMPT cannot hide inside a value.
_VALUE = st.text(alphabet="abcXYZ019._/=+ ", min_size=1, max_size=8)
_PROMPT = st.text(alphabet="abc -:!?", max_size=10).map(lambda s: f"P:{s}")


@st.composite
def _option(draw: st.DrawFn, ctx: _Context, roles: frozenset[_Role]) -> list[str]:
    """One option valid in ``ctx``, in one of the spellings clap accepts."""
    # Every release's options: an argv of unknown version is read by their union.
    candidates = [s for s in _grammar(None).options if ctx in s.where and s.role in roles]
    spec: _Spec = draw(st.sampled_from(candidates))
    if not spec.takes_value:
        return [spec.long]
    value = draw(_VALUE)
    spellings = [[f"{spec.long}={value}"]]
    if spec.short:
        spellings.append([f"{spec.short}{value}"])
    if ctx not in spec.greedy_in:
        # A separate value is only safe when clap will not read on (greedy -i).
        spellings.append([spec.long, value])
        if spec.short:
            spellings.append([spec.short, value])
    return draw(st.sampled_from(spellings))


_TUI_ROLES = frozenset({_Role.KEEP, _Role.SANDBOX, _Role.CWD, _Role.IMAGE})
_RESUME_ROLES = _TUI_ROLES | {_Role.PICKER}


def _options(ctx: _Context, roles: frozenset[_Role]) -> st.SearchStrategy[list[list[str]]]:
    return st.lists(_option(ctx, roles), max_size=5)


def _flat(groups: list[list[str]]) -> list[str]:
    return [word for group in groups for word in group]


def _kept(groups: list[list[str]]) -> list[str]:
    """The option words a rebuild keeps: all but images and --last/--all."""
    dropped = ("-i", "--image", "--last", "--all")
    return _flat([g for g in groups if not g[0].startswith(dropped)])


Case = tuple[list[str], list[list[str]], str | None]


@st.composite
def _interactive_argv(draw: st.DrawFn) -> Case:
    """A valid new-session, resume or fork argv: (argv, its global option groups, its prompt)."""
    global_groups = draw(_options(_Context.ROOT, _TUI_ROLES))
    kind = draw(st.sampled_from(["new", "resume", "fork"]))
    prompt = draw(st.none() | _PROMPT)
    if kind == "new":
        # clap takes the PROMPT anywhere among the root options.
        at = draw(st.integers(0, len(global_groups)))
        groups = [*global_groups[:at], *([[prompt]] if prompt else []), *global_groups[at:]]
        return _flat(groups), global_groups, prompt
    ctx = _Context.RESUME if kind == "resume" else _Context.FORK
    command = _flat(draw(_options(ctx, _RESUME_ROLES)))
    # With --last the one positional is the PROMPT; without, the id comes first.
    positionals = [] if "--last" in command else [SID]
    if prompt is not None:
        positionals.append(prompt)
    return [*_flat(global_groups), kind, *command, *positionals], global_groups, prompt


@st.composite
def _exec_argv(draw: st.DrawFn) -> Case:
    """A valid exec or exec resume argv: (argv, its global option groups, its prompt)."""
    global_groups = draw(_options(_Context.ROOT, _TUI_ROLES))
    exec_opts = _flat(draw(_options(_Context.EXEC, _TUI_ROLES)))
    prompt = draw(_PROMPT)
    if draw(st.booleans()):
        return [*_flat(global_groups), "exec", *exec_opts, prompt], global_groups, prompt
    resume_opts = _flat(draw(_options(_Context.EXEC_RESUME, _RESUME_ROLES)))
    target = [] if "--last" in resume_opts else [SID]
    argv = [*_flat(global_groups), "exec", *exec_opts, "resume", *resume_opts, *target, prompt]
    return argv, global_groups, prompt


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(word == seen for seen in it) for word in needle)


NEW_SID = "019a0000-0000-7000-8000-0000000000ff"


@settings(max_examples=300)
@given(_interactive_argv() | _exec_argv(), st.sampled_from([V169, V157, NOTHING_NEEDED]))
def test_rebuild_preserves_options_and_drops_the_prompt(
    case: Case, features: VersionFeatures
) -> None:
    """Every kept global option survives in order; the old prompt never comes back."""
    argv, global_groups, prompt = case
    inv = parse_argv(argv)
    assert inv.mode is not Mode.PASSTHROUGH, inv.reason
    assert list(inv.global_options) == _flat(global_groups)
    assert inv.prompt == prompt
    new_prompt = "next step" if inv.is_exec else None

    out = resume_argv(inv, NEW_SID, features, prompt=new_prompt)

    assert _is_subsequence(_kept(global_groups), out)
    assert prompt is None or prompt not in out
    assert "--last" not in out
    assert "--all" not in out
    again = parse_argv(out)
    assert again.mode is (Mode.EXEC_RESUME if inv.is_exec else Mode.RESUME), again.reason
    assert again.session_ref == NEW_SID
    assert again.prompt == new_prompt
    assert not again.last
    if inv.is_interactive and features.tui_no_daemon:
        assert again.has_option("--no-daemon")
    if features.resume_account_check_feature:
        assert again.has_feature_flag("cli_resume_account_check")
    # Rebuilding a rebuilt command line adds nothing more.
    assert resume_argv(again, NEW_SID, features, prompt=new_prompt) == out


def test_subsequence_helper() -> None:
    """The property test's order check accepts gaps and refuses reordering."""
    assert _is_subsequence(["-m", "X"], ["--no-daemon", "-m", "X", "resume"])
    assert not _is_subsequence(["X", "-m"], ["-m", "X"])


def test_session_ids_are_uuid_shaped() -> None:
    """The test ids are real UUIDs, like Codex's session ids."""
    assert uuid.UUID(SID)
    assert uuid.UUID(NEW_SID)
