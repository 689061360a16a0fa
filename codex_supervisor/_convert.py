"""The one cattrs converter of the library (never the global one).

JSON in, value objects out, and back. Aware datetimes travel as ISO-8601
strings; paths as strings. Structuring failures are translated into
:class:`~codex_supervisor.errors.StateError` by :func:`structure`, so no cattrs
exception escapes the library.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from .errors import StateError

__all__ = ["converter", "structure", "unstructure"]

T = TypeVar("T")


def _structure_datetime(value: Any, _: type[datetime]) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    # Naive datetimes are never produced by us; treat a foreign one as UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


converter = make_converter(forbid_extra_keys=False)
converter.register_unstructure_hook(datetime, lambda d: d.isoformat())
converter.register_structure_hook(datetime, _structure_datetime)
converter.register_unstructure_hook(Path, str)
converter.register_structure_hook(Path, lambda v, _: Path(v))


def structure(data: Any, cls: type[T], *, what: str = "data") -> T:
    """Turn JSON-shaped ``data`` into ``cls``; malformed input raises StateError."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise StateError(f"malformed {what}: {exc}") from exc


def unstructure(obj: object) -> Any:
    """Turn a value object into JSON-shaped data."""
    return converter.unstructure(obj)
