"""Read JWT claims without verifying them (Codex does the same for id_tokens)."""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["decode_jwt_claims"]


def decode_jwt_claims(token: object) -> dict[str, Any]:
    """The claims of a JWT, unverified; ``{}`` for anything malformed."""
    if not isinstance(token, str):
        return {}
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; nested too deep
        return {}
    return claims if isinstance(claims, dict) else {}
