"""Sending a tool's function to another process (a worker, a Ray task) and back.

``@tool`` replaces a module's function with a :class:`~shoal.tools.Tool`, so pickle's
by-reference lookup (``module.qualname`` must be the function itself) fails for every tool. We
ship a reference to the *tool* instead when the receiving side can import it, and fall back to
cloudpickle's by-value pickling of the function (closures, ``__main__``, notebooks) otherwise.
"""

from __future__ import annotations

import functools
import importlib
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from shoal.exceptions import SerializationError, describe_exception
from shoal.tools import Tool

__all__ = ["dumps", "dumps_callable", "loads", "loads_callable"]


def _reference(fn: Callable[..., Any]) -> tuple[str, str] | None:
    """(module, qualname) under which importing finds this tool function, if there is one."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    target = found.fn if isinstance(found, Tool) else found
    return (module_name, qualname) if target is fn else None


def dumps_callable(tool: Tool[..., Any]) -> bytes:
    """Bytes from which :func:`loads_callable` rebuilds the tool's function elsewhere."""
    fn = tool.fn
    try:
        return _cached_blob(fn) if _hashable(fn) else _function_blob(fn)
    except Exception as exc:
        raise SerializationError(
            f"tool {tool.name!r} cannot be sent to another process: {exc}; define it at the top "
            "level of an importable module"
        ) from exc


def _function_blob(fn: Callable[..., Any]) -> bytes:
    ref = _reference(fn)
    if ref is not None:
        return pickle.dumps(("ref", *ref))
    return pickle.dumps(("value", cloudpickle.dumps(fn)))


# needed for every call, and tool functions live long: compute each once
_cached_blob = functools.lru_cache(maxsize=1024)(_function_blob)


def _hashable(fn: Callable[..., Any]) -> bool:
    try:
        hash(fn)
    except TypeError:  # a callable object with __eq__ and no __hash__
        return False
    return True


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
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a __reduce__ raising SystemExit too
        raise SerializationError(f"{what} cannot be pickled: {describe_exception(exc)}"
                                 ) from exc
    return blob


def loads(blob: bytes) -> Any:
    """The value from :func:`dumps`."""
    return cloudpickle.loads(blob)
