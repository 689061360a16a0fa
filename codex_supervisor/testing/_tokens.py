"""Fake ChatGPT credentials: unsigned JWTs and auth.json files.

Codex reads the id_token claims without verifying signatures, so tests can
mint tokens locally. The signature part is a fixed non-empty placeholder
because Codex splits a JWT into three non-empty parts.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._fs import write_atomic
from .._jwt import decode_jwt_claims

__all__ = [
    "AUTH_CLAIMS_KEY",
    "decode_jwt_claims",
    "make_jwt",
    "write_apikey_auth_json",
    "write_auth_json",
]

AUTH_CLAIMS_KEY = "https://api.openai.com/auth"
_FAKE_SIGNATURE = "ZmFrZS1zaWduYXR1cmU"  # base64url("fake-signature")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """Return an unsigned (``alg: none``) JWT carrying ``claims``."""
    header = {"alg": "none", "typ": "JWT"}
    parts = [
        _b64url(json.dumps(header, separators=(",", ":")).encode()),
        _b64url(json.dumps(claims, separators=(",", ":")).encode()),
        _FAKE_SIGNATURE,
    ]
    return ".".join(parts)


def new_refresh_token() -> str:
    """A random opaque refresh token in the style the real service issues."""
    return "rt_fake_" + secrets.token_urlsafe(24)


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON whole with mode 0600 in a 0700 folder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(data, indent=2).encode())


def write_auth_json(
    codex_home: Path | str,
    *,
    id_token: str,
    access_token: str,
    refresh_token: str,
    account_id: str,
    last_refresh: datetime | None = None,
) -> Path:
    """Write a ChatGPT-login ``auth.json`` into ``codex_home`` (mode 0600)."""
    path = Path(codex_home) / "auth.json"
    refreshed = last_refresh or datetime.now(UTC)
    _write_private(
        path,
        {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": id_token,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "account_id": account_id,
            },
            "last_refresh": refreshed.isoformat().replace("+00:00", "Z"),
        },
    )
    return path


def write_apikey_auth_json(codex_home: Path | str, api_key: str) -> Path:
    """Write an API-key-login ``auth.json`` into ``codex_home`` (mode 0600)."""
    path = Path(codex_home) / "auth.json"
    _write_private(path, {"auth_mode": "apikey", "OPENAI_API_KEY": api_key})
    return path
