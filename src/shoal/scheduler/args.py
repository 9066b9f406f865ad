"""Building one call's arguments: refs replaced by upstream outputs, and everything copied.

Each call gets its own copy of its arguments (guarantee 5), so a tool that mutates a list it was
given cannot change what a sibling, a retry or the recorded outcome sees. Plain data (dicts,
lists, tuples, sets, bytearrays, pydantic models and dataclasses) is copied; other objects such as
clients, connections and locks are passed as they are, because copying those is usually wrong
(a copied connection pool is not the pool) and often impossible.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pydantic

from shoal.plan import Ref

__all__ = ["isolate", "isolate_all", "resolve_arguments"]

_IMMUTABLE = frozenset({str, int, float, bool, bytes, complex, type(None), range, frozenset})
_SCALARS = _IMMUTABLE - {frozenset}  # a frozenset may still hold refs to resolve


def isolate(value: Any) -> Any:
    """A private copy of the plain data in ``value`` (see the module docstring for the rule)."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {k: isolate(v) for k, v in value.items()}
    if kind is list:
        return [isolate(v) for v in value]
    if kind is tuple:
        return tuple(isolate(v) for v in value)
    if kind is set:
        return {isolate(v) for v in value}
    if kind is bytearray:
        return bytearray(value)
    if isinstance(value, pydantic.BaseModel):
        return value.model_copy(deep=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return copy.deepcopy(value)
    return value


def isolate_all(args: dict[str, Any]) -> dict[str, Any]:
    """A new argument dict whose values are private copies (see :func:`isolate`)."""
    return {name: isolate(value) for name, value in args.items()} if args else {}


def resolve_arguments(args: dict[str, Any], lookup: Callable[[Ref], Any]) -> dict[str, Any]:
    """``args`` with every ref replaced by ``isolate(lookup(ref))``, all plain data copied."""
    return {name: _resolve(value, lookup) for name, value in args.items()}


def _resolve(value: Any, lookup: Callable[[Ref], Any]) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is Ref:
        return isolate(lookup(value))
    if kind is dict:
        return {k: _resolve(v, lookup) for k, v in value.items()}
    if kind is list:
        return [_resolve(v, lookup) for v in value]
    if kind is tuple:
        return tuple(_resolve(v, lookup) for v in value)
    if kind is set or kind is frozenset:
        return kind(_resolve(v, lookup) for v in value)
    return isolate(value)
