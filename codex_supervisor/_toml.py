"""A small TOML writer for the ``config.toml`` files the library writes, and a
bounded reader for the ones it reads.

Python reads TOML (:mod:`tomllib`) but cannot write it, and Codex's config
needs only tables, strings, booleans, numbers and arrays, so this writes
exactly those. Every document it produces reads back equal with
:func:`tomllib.loads` (a property test checks it).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .errors import ConfigError

__all__ = ["MAX_BYTES", "dumps", "loads"]

#: A config.toml is read up to this size; Codex's own is a few KB.
MAX_BYTES: Final = 1 << 20
# tomllib keeps every prefix of a dotted key, the current table's header in
# front: a key of n parts costs n*n/2 slots, so 100 000 parts (200 KB of text)
# would take 40 GB. Real keys have a handful of parts.
_MAX_KEY_PARTS: Final = 16
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_LONG_KEY = re.compile(
    rf"^[ \t]*(?:\[\[?[ \t]*)?(?:{_KEY_PART}[ \t]*\.[ \t]*){{{_MAX_KEY_PARTS}}}", re.MULTILINE
)


def loads(text: str, *, source: str) -> dict[str, Any]:
    """Parse TOML from outside (a user's or an embedder's), within bounds.

    Raises :class:`~codex_supervisor.errors.ConfigError` naming ``source`` for
    invalid TOML, text over :data:`MAX_BYTES`, a key of more than 16 dotted
    parts (tomllib's memory grows with the square of a key's parts) and
    nesting deeper than the interpreter's recursion limit.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(f"cannot read {source}: larger than {MAX_BYTES} bytes")
    if _LONG_KEY.search(text):
        raise ConfigError(f"cannot read {source}: a key of more than {_MAX_KEY_PARTS} dotted parts")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed {source}: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"malformed {source}: nested too deeply") from exc


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate has no UTF-8 form, and a TOML file is UTF-8.
        raise TypeError(f"cannot write a string as TOML: {exc.reason}") from exc
    # A JSON string is a TOML basic string, except that TOML wants DEL escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, not {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: object) -> str:  # noqa: PLR0911 - one return per TOML type
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _table(path: tuple[str, ...], table: Mapping[str, Any], lines: list[str]) -> None:
    nested = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if path and (len(nested) < len(table) or not nested):
        lines.append(f"[{'.'.join(_key(p) for p in path)}]")
    for key, value in table.items():
        if not isinstance(value, Mapping):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        if lines:
            lines.append("")
        _table((*path, key), value, lines)


def dumps(document: Mapping[str, Any]) -> str:
    """``document`` as TOML text: nested mappings become tables.

    Raises :class:`TypeError` for values TOML cannot hold (``None``, bytes,
    objects, strings with lone surrogates), for non-string keys and for
    documents nested past the recursion limit (or containing themselves).
    """
    lines: list[str] = []
    try:
        _table((), document, lines)
    except RecursionError as exc:
        raise TypeError("cannot write a document nested this deeply as TOML") from exc
    return "\n".join(lines) + "\n" if lines else ""
