"""codex_cli against each tested real Codex CLI: its version, its grammar, and real resumes.

The suite runs these once per version of TESTED_CODEX_VERSIONS (scripts/test);
each run checks that version's own tables (the drift detectors) and that what
the supervisor builds for it is accepted by it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codex_supervisor.codex_cli import (
    TESTED_CODEX_VERSIONS,
    CodexVersion,
    Mode,
    VersionFeatures,
    _Context,
    detect_version,
    features_for,
    launch_argv,
    parse_argv,
    resume_argv,
)
from codex_supervisor.testing import FakeCodexBackend, offline_flags
from codex_supervisor.testing._surface import (
    CodexSurface,
    read_binary_surface,
    report,
    surface_changes,
    table_surface,
)

pytestmark = pytest.mark.real_codex

RunCodex = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def version(codex_version: str) -> CodexVersion:
    """The version of the binary under test."""
    return CodexVersion.parse(codex_version)


@pytest.fixture(scope="module")
def features(version: CodexVersion) -> VersionFeatures:
    """What the binary under test needs, from the version table."""
    return features_for(version)


@pytest.fixture(scope="module")
def surface(codex_bin: Path) -> CodexSurface:
    """The binary's command-line surface (its --help pages and completion script)."""
    return read_binary_surface(codex_bin)


def _session_id(stderr: str) -> str:
    found = re.search(r"session id: ([0-9a-f-]{36})", stderr)
    assert found, stderr[-2000:]
    return found.group(1)


@pytest.mark.anyio
async def test_detect_version_of_the_real_binary(codex_bin: Path, codex_version: str) -> None:
    """Each tested binary needs --no-daemon and the account check flag, and is not "newer"."""
    version = await detect_version(codex_bin)
    assert str(version) == codex_version
    features = features_for(version)
    assert features.tui_no_daemon
    assert features.resume_account_check_feature
    if codex_version in TESTED_CODEX_VERSIONS:
        assert not features.newer_than_tested


@pytest.mark.parametrize("ctx", list(_Context), ids=[c.value for c in _Context])
def test_option_table_matches_the_real_help(
    ctx: _Context, surface: CodexSurface, codex_version: str
) -> None:
    """Drift detector: this version's table lists exactly the options `--help` shows, with arity."""
    shown = surface.options[ctx.value]
    expected = table_surface(codex_version).options[ctx.value]
    assert shown, ctx.value
    assert shown - expected == set(), "options Codex has that the table lacks"
    assert expected - shown == set(), "options the table has that Codex lacks"


def test_subcommand_table_matches_the_real_completion(
    surface: CodexSurface, codex_version: str
) -> None:
    """Drift detector: every subcommand Codex knows (hidden ones too) is classified."""
    table = table_surface(codex_version)
    assert surface.subcommands["codex"] == table.subcommands["codex"]
    assert surface.subcommands["codex exec"] == table.subcommands["codex exec"]
    # The whole comparison, as scripts/new-codex-version prints it.
    assert surface_changes(table, surface) == []


def test_new_version_report_finds_no_drift(
    codex_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/new-codex-version's report: nothing to change for this version."""
    assert report(codex_bin) == []
    assert "Drift against codex_cli's tables" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "--remote-auth-token-env", "TOK"],
        ["exec", "resume", "--remote-auth-token-env", "TOK", "--last"],
        ["-m", "x", "stdio-to-uds"],
        ["exec", "--json", "--oss"],
    ],
    ids=" ".join,
)
def test_version_grammar_agrees_with_the_real_parser(
    argv: list[str], version: CodexVersion, run_codex: RunCodex, world: Any
) -> None:
    """What parse_argv reads for this version, Codex's own parser accepts, and vice versa."""
    ours = parse_argv(argv, version=version)
    # --help after the last word makes clap check everything before it, then exit 0.
    theirs = run_codex([*argv, "--help"], codex_home=world.codex_home(), backend=None)
    usages = [line for line in theirs.stdout.splitlines() if line.startswith("Usage: ")]
    usage = usages[0] if theirs.returncode == 0 and usages else theirs.stderr
    if ours.mode is Mode.PASSTHROUGH:
        # Either Codex refuses it, or it is a subcommand we pass through.
        assert theirs.returncode != 0 or ours.subcommand is not None, (ours.reason, usage)
    else:
        assert theirs.returncode == 0, (ours.mode, usage)
        assert usage.startswith("Usage: codex exec" if ours.is_exec else "Usage: codex"), usage


SID = "019a0000-0000-7000-8000-000000000001"
CW = ["-C", "/tmp"]
REBUILT = [
    # Each row: the user's argv, the usage line Codex prints for the rebuilt argv.
    (["-m", "fake-model", "--search", "-c", "a=1", "fix it"], "Usage: codex resume"),
    (["-i", "a.png", "-a", "never", "--no-alt-screen", "first"], "Usage: codex resume"),
    (["resume", "--last", "-s", "read-only", "--include-non-interactive"], "Usage: codex resume"),
    (["-p", "prof", "fork", "--all", "--last", "--add-dir", "/tmp"], "Usage: codex resume"),
    (["exec", "--json", "-s", "workspace-write", *CW, "hi"], "Usage: codex exec resume"),
    (
        ["exec", "-p", "prof", "--color", "never", "--add-dir", "/x", "-o", "o.md", "-"],
        "Usage: codex exec resume",
    ),
    (
        ["--enable", "apps", "exec", "--oss", "resume", "--last", "-i", "x.png", "--ephemeral"],
        "Usage: codex exec resume",
    ),
]


@pytest.mark.parametrize(("argv", "usage"), REBUILT, ids=[" ".join(r[0]) for r in REBUILT])
def test_rebuilt_argv_is_accepted_by_the_real_parser(
    argv: list[str],
    usage: str,
    run_codex: RunCodex,
    world: Any,
    features: VersionFeatures,
) -> None:
    """Codex's own parser accepts what resume_argv and launch_argv build (checked via --help)."""
    inv = parse_argv(argv, version=features.version)
    assert inv.mode is not Mode.PASSTHROUGH, inv.reason
    prompt = "continue" if inv.is_exec else None
    rebuilt = resume_argv(inv, SID, features, prompt=prompt)
    # --help after the last word makes clap check everything before it, then exit 0.
    result = run_codex([*rebuilt, "--help"], codex_home=world.codex_home(), backend=None)
    assert result.returncode == 0, (rebuilt, result.stderr[-2000:])
    assert result.stdout.splitlines()[2].startswith(usage), result.stdout[:500]
    if inv.is_interactive:
        launched = launch_argv(inv, features)
        result = run_codex([*launched, "--help"], codex_home=world.codex_home(), backend=None)
        assert result.returncode == 0, (launched, result.stderr[-2000:])


def test_account_check_flag_names_a_real_feature(run_codex: RunCodex, world: Any) -> None:
    """Codex knows the feature the version table disables (an unknown one is an error)."""
    home = world.codex_home()
    result = run_codex(
        ["--disable", "cli_resume_account_check", "features", "list"], codex_home=home, backend=None
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [x for x in result.stdout.splitlines() if x.startswith("cli_resume_account_check ")]
    assert line.split()[-1] == "false"
    refused = run_codex(
        ["--disable", "no_such_feature_xyz", "features", "list"], codex_home=home, backend=None
    )
    assert refused.returncode != 0
    assert "Unknown feature flag" in refused.stderr


def test_exec_resume_argv_continues_the_same_session(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any, features: VersionFeatures
) -> None:
    """The rebuilt exec resume argv runs: exit 0, and the backend sees the same session id."""
    backend.add_account("a")
    home = backend.write_codex_home(world.codex_home(), "a")
    first = run_codex(
        ["exec", "--skip-git-repo-check", *offline_flags(), "hi"], codex_home=home, backend=backend
    )
    assert first.returncode == 0, first.stderr[-3000:]
    sid = _session_id(first.stderr)
    user_argv = [
        *offline_flags(),
        "exec",
        "--skip-git-repo-check",
        "-s",
        "read-only",
        "-m",
        "fake-model",
        "hi",
    ]
    inv = parse_argv(user_argv)
    assert inv.mode is Mode.EXEC

    argv = resume_argv(inv, sid, features, prompt="continue")
    second = run_codex(argv, codex_home=home, backend=backend)

    assert second.returncode == 0, (argv, second.stderr[-3000:])
    assert _session_id(second.stderr) == sid
    [resumed] = [r for r in backend.responses_requests() if "continue" in r.input_texts]
    assert resumed.session_id == sid
    # The original prompt is history now, not a new message.
    assert resumed.input_texts.count("hi") == 1


def test_cross_account_exec_resume_passes_the_account_check(
    run_codex: RunCodex, backend: FakeCodexBackend, world: Any, features: VersionFeatures
) -> None:
    """With the account check on, a plain resume by another account is refused; ours is not."""
    backend.add_account("a")
    backend.add_account("b")
    home_a = backend.write_codex_home(world.codex_home("home-a"), "a")
    home_b = backend.write_codex_home(world.codex_home("home-b"), "b")
    for home in (home_a, home_b):
        with (home / "config.toml").open("a", encoding="utf-8") as config:
            config.write("cli_resume_account_check = true\n")
    (home_a / "sessions").mkdir()
    (home_b / "sessions").symlink_to(home_a / "sessions")
    user_argv = [
        *offline_flags(),
        "exec",
        "--skip-git-repo-check",
        "-s",
        "workspace-write",
        "-C",
        str(world.work),
        "first",
    ]
    first = run_codex(user_argv, codex_home=home_a, backend=backend)
    assert first.returncode == 0, first.stderr[-3000:]
    sid = _session_id(first.stderr)

    plain = run_codex(
        ["exec", "--skip-git-repo-check", *offline_flags(), "resume", sid, "plain"],
        codex_home=home_b,
        backend=backend,
    )
    assert plain.returncode == 1
    assert "created with a different ChatGPT account" in plain.stderr

    inv = parse_argv(user_argv)
    argv = resume_argv(inv, sid, features, prompt="second")
    assert "-C" not in argv
    second = run_codex(argv, codex_home=home_b, backend=backend, cwd=Path(inv.cwd or "."))

    assert second.returncode == 0, (argv, second.stderr[-3000:])
    # -s became -c sandbox_mode=...: the resumed turn runs in the same sandbox.
    assert "sandbox: workspace-write" in second.stderr
    [resumed] = [r for r in backend.responses_requests() if "second" in r.input_texts]
    assert resumed.session_id == sid
    assert resumed.account_id == "b"
