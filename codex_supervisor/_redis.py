"""The one way the Redis backends connect, and how a Redis URL is shown (password hidden)."""

from __future__ import annotations

from typing import Any

from .errors import SupervisorError

__all__ = ["connect", "masked_url"]

_SCHEMES = ("redis://", "rediss://", "unix://")


def masked_url(url: str) -> str:
    """``url`` with its password hidden: ``user:***@`` and ``password=***``."""
    scheme, sep, rest = url.partition("://")
    where, question, query = rest.partition("?")
    credentials, at, host = where.rpartition("@")
    if at:
        user = credentials.partition(":")[0]
        where = f"{user}:***@{host}" if user else f"***@{host}"
    if question:
        query = "&".join(
            f"{key}=***" if key.lower() == "password" else f"{key}{eq}{value}"
            for key, eq, value in (part.partition("=") for part in query.split("&"))
        )
    return f"{scheme}{sep}{where}{question}{query}"


def connect(url: str, *, socket_timeout: float, who: str, error: type[SupervisorError]) -> Any:
    """A synchronous ``redis.Redis`` client for ``url`` (bytes replies), made lazily.

    ``who`` names the caller in errors, raised as ``error``: no client
    installed (the ``redis`` extra), a URL that is not Redis's, or one
    asking for decoded replies (every backend reads bytes).
    """
    try:
        import redis  # noqa: PLC0415 - the optional dependency
    except ImportError as exc:
        raise error(f"{who} needs the redis client: pip install 'codex-supervisor[redis]'") from exc
    if not url.startswith(_SCHEMES):
        raise error(
            f"a Redis URL starts with redis://, rediss:// or unix://, got {masked_url(url)!r}"
        )
    if "decode_responses" in url:
        raise error(f"{who} reads bytes: drop decode_responses")
    try:
        return redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
    except ValueError as exc:
        raise error(f"bad Redis URL {masked_url(url)!r}: {exc}") from None
