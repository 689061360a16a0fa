"""The reference CLI's settings: <pool>/config.toml, and flag > environment > file > default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from codex_supervisor_cli import settings

from codex_supervisor import ConfigError, Strategy, WindowKind

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli.py"


def _resolve(pool: Path, environ: dict[str, str] | None = None, **flags: Any) -> settings.Settings:
    given: dict[str, Any] = {
        "pool": pool,
        "codex_home": None,
        "codex": None,
        "strategy": None,
        "utc": False,
    }
    given.update(flags)
    return settings.resolve(environ={"HOME": str(pool.parent), **(environ or {})}, **given)


def _write(pool: Path, text: str) -> None:
    pool.mkdir(parents=True, exist_ok=True)
    (pool / "config.toml").write_text(text)


def test_without_a_file_every_setting_is_its_default(tmp_path: Path) -> None:
    found = _resolve(tmp_path / "pool")
    assert not found.file_found
    assert found.file == tmp_path / "pool" / "config.toml"
    assert found.values["pool"] == settings.Setting(tmp_path / "pool", "flag --pool")
    assert found.values["codex"] == settings.Setting("codex", "default")
    assert found.values["codex_home"] == settings.Setting(tmp_path / ".codex", "default")
    assert found.values["strategy"] == settings.Setting("headroom", "default")
    assert found.values["utc"] == settings.Setting(False, "default")
    policy = found.policy()
    assert policy.strategy is Strategy.HEADROOM
    assert policy.rotate_at[WindowKind.WEEKLY] == 5


#: Each setting with the flag, the variable and the file line that set it.
_LAYERS = [
    # key, flag keyword and value, variable and value, file line, the value each gives
    ("codex", ("codex", "/flag/codex"), ("CODEX_SUPERVISOR_CODEX_BIN", "/env/codex"),
     'codex = "/file/codex"', ("/flag/codex", "/env/codex", "/file/codex")),
    ("codex_home", ("codex_home", Path("/flag/home")), ("CODEX_HOME", "/env/home"),
     'codex_home = "/file/home"', (Path("/flag/home"), Path("/env/home"), Path("/file/home"))),
    ("strategy", ("strategy", "drain"), ("CODEX_SUPERVISOR_STRATEGY", "soonest_reset"),
     'strategy = "headroom"', ("drain", "soonest_reset", "headroom")),
]  # fmt: skip


@pytest.mark.parametrize(("key", "flag", "variable", "line", "values"), _LAYERS)
def test_a_flag_beats_the_environment_which_beats_the_file(  # noqa: PLR0917 - parameters
    tmp_path: Path,
    key: str,
    flag: tuple[str, Any],
    variable: tuple[str, str],
    line: str,
    values: tuple[Any, Any, Any],
) -> None:
    pool = tmp_path / "pool"
    _write(pool, line + "\n")
    env = dict([variable])
    by_flag = _resolve(pool, env, **dict([flag])).values[key]
    by_env = _resolve(pool, env).values[key]
    by_file = _resolve(pool).values[key]
    assert by_flag == settings.Setting(values[0], f"flag --{flag[0].replace('_', '-')}")
    assert by_env == settings.Setting(values[1], f"environment ${variable[0]}")
    assert by_file == settings.Setting(values[2], "config file")


def test_the_pool_comes_from_the_flag_or_the_environment_and_holds_the_file(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "env-pool", 'strategy = "drain"\n')
    found = settings.resolve(
        pool=None,
        codex_home=None,
        codex=None,
        strategy=None,
        utc=False,
        environ={"HOME": str(tmp_path), "CODEX_SUPERVISOR_HOME": str(tmp_path / "env-pool")},
    )
    assert found.values["pool"] == settings.Setting(
        tmp_path / "env-pool", "environment $CODEX_SUPERVISOR_HOME"
    )
    assert found.values["strategy"] == settings.Setting("drain", "config file")


def test_the_file_shapes_the_rotation_policy_and_the_time_zone(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _write(
        pool,
        'strategy = "drain"\nutc = true\nhysteresis = 2.5\n'
        "[rotate_at]\nweekly = 10\n[prewarm_margin]\nfive_hour = 8\n",
    )
    found = _resolve(pool)
    assert found.file_found
    assert found["utc"] is True
    policy = found.policy()
    assert policy.strategy is Strategy.DRAIN
    assert policy.hysteresis == 2.5
    # A window not named keeps its default.
    assert dict(policy.rotate_at) == {WindowKind.FIVE_HOUR: 5.0, WindowKind.WEEKLY: 10.0}
    assert dict(policy.prewarm_margin) == {WindowKind.FIVE_HOUR: 8.0, WindowKind.WEEKLY: 3.0}
    # The flag's strategy still wins over the file's.
    assert _resolve(pool, strategy="soonest_reset").policy().strategy is Strategy.SOONEST_RESET


def test_paths_in_the_file_expand_the_home_and_read_relative_ones_from_its_folder(
    tmp_path: Path,
) -> None:
    pool = tmp_path / "pool"
    _write(pool, 'codex = "bin/codex"\ncodex_home = "~/base"\n')
    found = _resolve(pool)
    assert found["codex"] == str(pool / "bin" / "codex")
    assert found["codex_home"] == tmp_path / "base"
    _write(pool, 'codex = "codex-beta"\n')  # a command name is looked up on PATH, as given
    assert _resolve(pool)["codex"] == "codex-beta"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("stratgy = 'drain'\n", "unknown key 'stratgy' (the keys are: codex, codex_home"),
        ("strategy = 'fastest'\n", "strategy must be one of headroom, drain, soonest_reset"),
        ("codex = 3\n", "codex must be a command or a path, got 3"),
        ("codex_home = ''\n", "codex_home must be a path (a non-empty string)"),
        ("utc = 'yes'\n", "utc must be true or false, got 'yes'"),
        ("rotate_at = 5\n", "rotate_at must be a table such as [rotate_at] with five_hour = 5"),
        ("[rotate_at]\nmonthly = 5\n", "rotate_at.monthly is not a window"),
        ("[rotate_at]\nweekly = 120\n", "rotate_at: the weekly setting must be 0..100"),
        ("[rotate_at]\nweekly = true\n", "rotate_at takes numbers (percent)"),
        ("[prewarm_margin]\nweekly = '3'\n", "prewarm_margin takes numbers (percent)"),
        ("hysteresis = -1\n", "hysteresis: hysteresis must be 0..100, got -1"),
        ("strategy = \n", "is not valid TOML: "),
    ],
)
def test_a_bad_file_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, text: str, said: str
) -> None:
    pool = tmp_path / "pool"
    _write(pool, text)
    with pytest.raises(ConfigError) as caught:
        _resolve(pool)
    assert str(pool / "config.toml") in str(caught.value)
    assert said in str(caught.value)


def test_a_file_that_is_no_text_or_no_file_is_an_error(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "config.toml").write_bytes(b"strategy = '\xff'\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        _resolve(pool)
    (pool / "config.toml").unlink()
    (pool / "config.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        _resolve(pool)


def test_a_wrong_strategy_in_the_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$CODEX_SUPERVISOR_STRATEGY must be one of"):
        _resolve(tmp_path / "pool", {"CODEX_SUPERVISOR_STRATEGY": "fastest"})


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    result = subprocess.run(
        [sys.executable, str(CLI), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_config_show_prints_each_value_and_where_it_came_from(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _write(pool, 'strategy = "drain"\n[rotate_at]\nweekly = 10\n')
    env = {"CODEX_SUPERVISOR_CODEX_BIN": "/opt/codex"}
    result = _cli(tmp_path, "--pool", str(pool), "--utc", "config", "show", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"config file: {pool / 'config.toml'} (read)"
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == [
        "pool",
        "codex",
        "codex_home",
        "strategy",
        "utc",
        "rotate_at",
        "prewarm_margin",
        "hysteresis",
        "backend",
        "pool_name",
        "credential_key_file",
    ]
    assert rows["pool"].split() == ["pool", str(pool), "flag", "--pool"]
    assert rows["backend"].split() == ["backend", "(not", "set)", "default"]
    assert rows["codex"].split() == [
        "codex",
        "/opt/codex",
        "environment",
        "$CODEX_SUPERVISOR_CODEX_BIN",
    ]
    assert rows["strategy"].split() == ["strategy", "drain", "config", "file"]
    assert rows["utc"].split() == ["utc", "true", "flag", "--utc"]
    # The file's windows merged over the defaults: what a run uses.
    assert rows["rotate_at"].split() == [
        "rotate_at", "five_hour", "5,", "weekly", "10", "config", "file"
    ]  # fmt: skip
    assert rows["hysteresis"].split() == ["hysteresis", "5", "default"]
    assert lines[-1] == "precedence: flag > environment > config file > default"

    shown = json.loads(_cli(tmp_path, "--pool", str(pool), "config", "show", "--json").stdout)
    assert shown["file"] == str(pool / "config.toml")
    assert shown["file_found"] is True
    assert shown["settings"]["strategy"] == {"value": "drain", "source": "config file"}
    assert shown["settings"]["rotate_at"] == {
        "value": {"five_hour": 5.0, "weekly": 10.0},
        "source": "config file",
    }
    assert shown["settings"]["codex"] == {"value": "codex", "source": "default"}


def test_a_bad_config_file_ends_every_command_with_exit_2_and_the_prefix(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _write(pool, "stratgy = 'drain'\n")
    for command in (["status"], ["config", "show"], ["run", "--", "exec", "hi"]):
        result = _cli(tmp_path, "--pool", str(pool), *command)
        assert result.returncode == 2
        assert result.stderr.startswith(f"codex-supervisor: error: {pool / 'config.toml'}: ")
        assert "unknown key 'stratgy'" in result.stderr
        assert result.stdout == ""


def test_a_home_of_an_unknown_user_or_a_pool_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _write(pool, 'codex_home = "~nosuchuser-of-this-test/x"\n')
    with pytest.raises(ConfigError, match=r"config.toml: codex_home: "):
        _resolve(pool)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"--pool .*/file is not a folder"):
        _resolve(tmp_path / "file")
    result = _cli(tmp_path, "--pool", str(tmp_path / "file"), "config", "show")
    assert result.returncode == 2
    assert result.stderr == f"codex-supervisor: error: --pool {tmp_path / 'file'} is not a folder\n"
