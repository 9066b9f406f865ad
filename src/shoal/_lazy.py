"""One lazy importer for shoal's namespaces: names load on first use (PEP 562).

A package lists each public name with the module that defines it, and its ``__getattr__`` and
``__dir__`` come from :func:`lazy_attributes`::

    __getattr__, __dir__ = _lazy.lazy_attributes(__name__, globals(), {"Plan": "shoal.plan"})

so that ``import shoal`` stays cheap for the CLI and for worker processes that need only part of
the package. Names kept for one release (:class:`Deprecated`) load the same way, with a
:class:`DeprecationWarning` at each use.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Deprecated", "lazy_attributes"]


@dataclass(frozen=True, slots=True)
class Deprecated:
    """A name kept for one release: the module and attribute that hold it, and the warning."""

    module: str
    attr: str
    message: str


def lazy_attributes(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    *,
    submodules: Mapping[str, str] | None = None,
    deprecated: Mapping[str, Deprecated] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module ``package`` whose globals are ``namespace``.

    ``exports`` maps a name to the module that defines it; ``submodules`` an attribute to a
    module that is the value itself. Both are stored in ``namespace`` when first loaded, so later
    lookups skip ``__getattr__``. ``deprecated`` names are loaded on every use, never stored, so
    that each use warns.
    """
    modules = dict(submodules or {})
    old = dict(deprecated or {})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif name in modules:
            value = importlib.import_module(modules[name])
        elif name in old:
            kept = old[name]
            # stacklevel 2: the line that used the name, as for any module attribute
            warnings.warn(kept.message, DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(kept.module), kept.attr)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        # a package's __all__ when it has one: every name in it can be loaded (``mcp``, say,
        # needs its extra, so it stays out of ``shoal``'s)
        if "__all__" in namespace:
            return sorted(namespace["__all__"])
        return sorted({*namespace, *exports, *modules})

    return __getattr__, __dir__
