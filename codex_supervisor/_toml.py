"""A small TOML writer for the ``config.toml`` files the library writes.

Python reads TOML (:mod:`tomllib`) but cannot write it, and Codex's config
needs only tables, strings, booleans, numbers and arrays, so this writes
exactly those. Every document it produces reads back equal with
:func:`tomllib.loads` (a property test checks it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

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
