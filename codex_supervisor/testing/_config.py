"""Write a Codex ``config.toml`` that points Codex only at a fake backend."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _toml

if TYPE_CHECKING:
    from ._backend import FakeCodexBackend

__all__ = [
    "OFFLINE_DISABLE_FEATURES",
    "codex_config",
    "hermetic_env",
    "offline_flags",
    "write_config_toml",
]

#: Features whose endpoints live outside 127.0.0.1; turning them off keeps a
#: real Codex from opening any non-loopback connection (CODEX_FACTS.md §2).
OFFLINE_DISABLE_FEATURES: tuple[str, ...] = (
    "apps",
    "plugins",
    "remote_plugin",
    "plugin_sharing",
    "tool_suggest",
)


def offline_flags() -> list[str]:
    """``--disable F`` for every feature in :data:`OFFLINE_DISABLE_FEATURES`."""
    flags: list[str] = []
    for feature in OFFLINE_DISABLE_FEATURES:
        flags += ["--disable", feature]
    return flags


def codex_config(
    backend: FakeCodexBackend,
    *,
    model: str = "fake-model",
    auth: str = "chatgpt",
    api_key_env: str = "FAKE_CODEX_API_KEY",
    extra: Mapping[str, object] | None = None,
    disable_features: Iterable[str] = OFFLINE_DISABLE_FEATURES,
) -> dict[str, Any]:
    """A Codex ``config.toml`` (as a mapping) that points Codex only at ``backend``.

    ``auth="chatgpt"`` uses the auth.json tokens (``requires_openai_auth``);
    ``auth="apikey"`` sends the key from the environment variable
    ``api_key_env`` instead. ``extra`` adds top-level keys.
    """
    if auth not in ("chatgpt", "apikey"):
        raise ValueError(f"auth must be 'chatgpt' or 'apikey', not {auth!r}")
    provider: dict[str, object] = {
        "name": "Fake local",
        "base_url": backend.base_url,
        "wire_api": "responses",
        "request_max_retries": 0,
        "stream_max_retries": 0,
    }
    if auth == "chatgpt":
        provider["requires_openai_auth"] = True
    else:
        provider["env_key"] = api_key_env
    return {
        "model": model,
        "model_provider": "fake",
        "check_for_update_on_startup": False,
        "chatgpt_base_url": backend.chatgpt_base_url,
        "cli_auth_credentials_store": "file",
        **(extra or {}),
        "model_providers": {"fake": provider},
        "analytics": {"enabled": False},
        "features": dict.fromkeys(disable_features, False),
    }


def write_config_toml(
    codex_home: Path | str,
    backend: FakeCodexBackend,
    *,
    model: str = "fake-model",
    auth: str = "chatgpt",
    api_key_env: str = "FAKE_CODEX_API_KEY",
    extra: Mapping[str, object] | None = None,
    disable_features: Iterable[str] = OFFLINE_DISABLE_FEATURES,
) -> Path:
    """Write :func:`codex_config` to ``codex_home/config.toml`` and return its path."""
    config = codex_config(
        backend,
        model=model,
        auth=auth,
        api_key_env=api_key_env,
        extra=extra,
        disable_features=disable_features,
    )
    path = Path(codex_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_toml.dumps(config), encoding="utf-8")
    return path


def hermetic_env(
    codex_home: Path | str,
    home: Path | str,
    backend: FakeCodexBackend | None = None,
    *,
    path: str = "/usr/local/bin:/usr/bin:/bin",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A minimal environment for running Codex against a fake backend.

    Nothing of the caller's environment leaks in: HOME and CODEX_HOME are the
    given folders, PATH is fixed, and the backend's variables (refresh URL,
    CA certificate) are added.
    """
    env = {
        "PATH": path,
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "RUST_LOG": "error",
    }
    if backend is not None:
        env.update(backend.codex_env())
    env.update(extra or {})
    return env
