"""Sending a tool's function to another process (a worker, a Ray task) and back.

``@tool`` replaces a module's function with a :class:`~shoal.tools.Tool`, so pickle's
by-reference lookup (``module.qualname`` must be the function itself) fails for every tool. We
ship a reference to the *tool* instead when the receiving side can import it, and fall back to
cloudpickle's by-value pickling of the function (closures, ``__main__``, notebooks) otherwise.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from shoal.exceptions import SerializationError
from shoal.tools import Tool

__all__ = ["dumps", "dumps_callable", "loads", "loads_callable"]


def _reference(tool: Tool[..., Any]) -> tuple[str, str] | None:
    """(module, qualname) under which importing finds this tool's function, if there is one."""
    module_name = getattr(tool.fn, "__module__", None)
    qualname = getattr(tool.fn, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    target = found.fn if isinstance(found, Tool) else found
    return (module_name, qualname) if target is tool.fn else None


def dumps_callable(tool: Tool[..., Any]) -> bytes:
    """Bytes from which :func:`loads_callable` rebuilds the tool's function elsewhere."""
    ref = _reference(tool)
    if ref is not None:
        return pickle.dumps(("ref", *ref))
    try:
        return pickle.dumps(("value", cloudpickle.dumps(tool.fn)))
    except Exception as exc:
        raise SerializationError(
            f"tool {tool.name!r} cannot be sent to another process: {exc}; define it at the top "
            "level of an importable module"
        ) from exc


def loads_callable(blob: bytes) -> Callable[..., Any]:
    """The function shipped by :func:`dumps_callable`."""
    kind, *rest = pickle.loads(blob)
    if kind == "value":
        fn: Callable[..., Any] = cloudpickle.loads(rest[0])
        return fn
    found: Any = importlib.import_module(rest[0])
    for part in rest[1].split("."):
        found = getattr(found, part)
    target: Callable[..., Any] = found.fn if isinstance(found, Tool) else found
    return target


def dumps(value: Any, what: str) -> bytes:
    """Cloudpickle ``value``, or raise :class:`SerializationError` naming ``what`` it is."""
    try:
        blob: bytes = cloudpickle.dumps(value)
    except Exception as exc:
        raise SerializationError(f"{what} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    return blob


def loads(blob: bytes) -> Any:
    """The value from :func:`dumps`."""
    return cloudpickle.loads(blob)
