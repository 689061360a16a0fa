"""Run a batch of ``codex exec`` prompts as one Codex session, supervised.

Each prompt is one supervised run (``Supervisor.run``): the first starts the
session with ``codex exec PROMPT``, every later one continues it with
``codex exec resume <session id> PROMPT``. The session id comes from the
``SessionBound`` event of the first run. When an account runs out of quota
mid-prompt, the supervisor resumes the same session on another account, so
the batch goes on as if nothing happened::

    python examples/batch_exec.py --pool ~/.codex-supervisor --codex-home ~/.codex \\
        --codex codex --cwd ~/src/project \\
        "Add type hints to utils.py" "Run the tests and fix what fails" "Summarise the diff"

``--weekend-only NAME`` (repeatable) keeps account NAME out of use from Monday
to Friday (UTC), with the ``WeekdayPolicy`` of ``weekday_policy.py`` beside
this file.

It prints one line per prompt (the account or accounts it ran on, the session
id, the exit code) and a summary, and exits with the first non-zero exit code
of the batch, or 0. A failed prompt does not stop the batch; a supervisor
stopped by a signal (exit code 128 + N) does.

Like ``codex exec`` itself, each run appends whatever is piped on stdin to its
prompt: run the script with ``< /dev/null`` inside a pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
from weekday_policy import WeekdayPolicy  # the sibling example file

from codex_supervisor import (
    AccountPool,
    RotationPolicy,
    Supervisor,
    SupervisorConfig,
    SupervisorError,
)

#: Options given to every ``codex exec`` (and ``exec resume``); add ``-m MODEL``
#: and the like here. Drop ``--skip-git-repo-check`` to keep Codex's refusal to
#: run outside a git repository.
EXEC_OPTIONS: tuple[str, ...] = ("--skip-git-repo-check",)


@attrs.frozen
class BatchResult:
    """How one prompt of the batch went."""

    prompt: str
    accounts: tuple[str, ...]  # every account it ran on, in order (more than one: rotated)
    session_id: str | None
    exit_code: int


def exec_argv(prompt: str, session_id: str | None) -> list[str]:
    """``exec PROMPT`` for a new session, ``exec resume ID PROMPT`` to continue one."""
    # "--" keeps a prompt that starts with "-" from reading as an option.
    if session_id is None:
        return ["exec", *EXEC_OPTIONS, "--", prompt]
    return ["exec", "resume", *EXEC_OPTIONS, "--", session_id, prompt]


async def run_batch(
    pool: AccountPool,
    prompts: Sequence[str],
    *,
    codex: str,
    cwd: Path | str,
    policy: RotationPolicy | None = None,
    environ: Mapping[str, str] | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
) -> list[BatchResult]:
    """Run ``prompts`` in order as one Codex session; one supervised run per prompt.

    ``on_result`` is called with each prompt's result as soon as it is known.
    """
    config = SupervisorConfig(codex=codex)
    results: list[BatchResult] = []
    session_id: str | None = None
    supervisor = Supervisor(pool, config=config, policy=policy, environ=environ)
    for prompt in prompts:
        run = await supervisor.run(exec_argv(prompt, session_id), cwd=cwd)
        session_id = run.session_id or session_id
        results.append(BatchResult(prompt, run.accounts, session_id, run.exit_code))
        if on_result is not None:
            on_result(results[-1])
        if run.signal is not None:  # the supervisor was stopped by a signal: so is the batch
            break
    return results


def exit_code(results: Sequence[BatchResult]) -> int:
    """The first non-zero exit code of the batch, or 0."""
    return next((r.exit_code for r in results if r.exit_code != 0), 0)


def describe(result: BatchResult) -> str:
    """One line for one prompt."""
    accounts = " -> ".join(result.accounts) or "-"
    return (
        f"{accounts}  session {result.session_id or '-'}  exit {result.exit_code}"
        f"  {result.prompt[:40]!r}"
    )


def summary(results: Sequence[BatchResult], total: int) -> str:
    """The closing line: prompts run, failures, sessions and accounts used."""
    failed = sum(1 for r in results if r.exit_code != 0)
    sessions = sorted({r.session_id for r in results if r.session_id is not None})
    accounts = sorted({a for r in results for a in r.accounts})
    return (
        f"{len(results)}/{total} prompts run, {failed} failed;"
        f" session {', '.join(sessions) or '-'}; accounts {', '.join(accounts) or '-'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pool", required=True, type=Path, help="the pool folder")
    parser.add_argument("--codex-home", required=True, type=Path, help="your base CODEX_HOME")
    parser.add_argument("--codex", required=True, help="the Codex CLI binary")
    parser.add_argument("--cwd", type=Path, default=Path(), help="where Codex works (default .)")
    parser.add_argument(
        "--weekend-only",
        action="append",
        default=[],
        metavar="NAME",
        help="an account to use only on Saturday and Sunday (UTC); repeatable",
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    args = parser.parse_args(argv)

    pool = AccountPool(root=args.pool, base_codex_home=args.codex_home)
    policy = WeekdayPolicy(weekend_only=args.weekend_only) if args.weekend_only else None
    try:
        results = asyncio.run(
            run_batch(
                pool,
                args.prompts,
                codex=args.codex,
                cwd=args.cwd,
                policy=policy,
                on_result=lambda result: print(describe(result), flush=True),
            )
        )
    except SupervisorError as exc:
        print(f"batch_exec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary(results, len(args.prompts)))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
