"""Lazy re-exports for a package's ``__getattr__`` (PEP 562), in one place."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["resolve"]


def resolve(
    package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any], name: str
) -> Any:
    """The attribute ``name`` of ``package``: a re-export, or a submodule not imported yet.

    A re-exported name is imported from the module ``exports`` names and cached
    in ``namespace`` (the package's globals), so this runs once per name. Any
    other name is tried as a submodule (``package.sessions`` after a bare
    ``import package``, as an eager package allowed). Raises AttributeError
    for anything else; an import error inside an existing submodule surfaces.
    """
    module = exports.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value
    if name.isidentifier() and not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise  # the submodule exists but needs something missing
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
