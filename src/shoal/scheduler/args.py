"""Building one call's arguments: refs replaced by upstream outputs, and everything copied.

Each call gets its own copy of its arguments (guarantee 5), so a tool that mutates a list it was
given cannot change what a sibling, a retry or the recorded outcome sees. Plain data is copied:
dicts, lists, tuples, sets and bytearrays, their subclasses too (``defaultdict``,
``OrderedDict``, named tuples ... rebuilt as the same type, keeping a ``default_factory``),
pydantic models and dataclasses. Other objects such as clients, connections and locks are passed
as they are, because copying those is usually wrong (a copied connection pool is not the pool)
and often impossible. So is a model or dataclass that ``copy.deepcopy`` cannot copy (one that
holds a lock, say, fails with ``TypeError``): it is passed as it is, shared, rather than failing
the call. An object whose ``__deepcopy__`` raises anything else refuses on purpose, and that
error fails the call (a ``SystemExit`` too: it is user code, as a tool's own). A value nested
deeper than Python's recursion limit (a 10,000-level dict) cannot be copied by walking it
either: it too is passed as it is, shared.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any, cast

from shoal._pydantic import is_model
from shoal.exceptions import ToolArgumentError
from shoal.plan import Ref, find_refs

__all__ = ["IMMUTABLE", "isolate", "isolate_all", "resolve_arguments"]

_IMMUTABLE = frozenset({str, int, float, bool, bytes, complex, type(None), range, frozenset})
#: The types whose values :func:`isolate` keeps as they are (the scheduler's look at them).
IMMUTABLE = _IMMUTABLE
_SCALARS = _IMMUTABLE - {frozenset}  # a frozenset may still hold refs to resolve
_UNCOPYABLE = (TypeError, copy.Error)  # what deepcopy raises for locks, sockets, modules ...
# tuples rather than unions, as isinstance checks them about twice as fast
_COPIED = (dict, list, tuple, set)  # container subclasses isolate rebuilds (frozensets are kept)
_WALKED = (dict, list, tuple, set, frozenset)  # the containers find_refs walks for refs


class _Unbuildable(Exception):
    """A container subclass could not be rebuilt with new items."""


def isolate(value: Any) -> Any:
    """A private copy of the plain data in ``value`` (see the module docstring for the rule).

    Like ``copy.deepcopy``, a container met twice is copied once and shared in the copy as in
    the original: a value made of shared parts (``x = [x, x]`` twenty times) costs its size,
    not two to the twenty, and a list or dict that holds itself is copied as one that does.
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    try:
        return _isolate(value, {})
    except RecursionError:  # nested too deep to walk: shared, as a value that cannot be copied
        return value


def _isolate(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    found = memo.get(id(value), memo)  # the memo itself: "not seen" (None is a value)
    if found is not memo:
        return found
    # lists and dicts enter the memo before their items, so one that holds itself ends
    if kind is dict:
        new_dict: dict[Any, Any] = {}
        memo[id(value)] = new_dict
        for k, v in value.items():
            new_dict[k] = _isolate(v, memo)
        return new_dict
    if kind is list:
        new_list: list[Any] = []
        memo[id(value)] = new_list
        new_list.extend([_isolate(v, memo) for v in value])
        return new_list
    copied = _isolate_other(value, kind, memo)
    memo[id(value)] = copied
    return copied


def _isolate_other(value: Any, kind: type, memo: dict[int, Any]) -> Any:
    """:func:`_isolate` of anything but an exact list or dict."""
    if kind is tuple:
        return tuple([_isolate(v, memo) for v in value])
    if kind is set:
        return {_isolate(v, memo) for v in value}
    if kind is bytearray:
        return bytearray(value)
    # the exact builtins above are the fast path; subclasses and other objects from here on
    if isinstance(value, _COPIED):
        try:
            return _rebuild(value, lambda item: _isolate(item, memo))
        except _Unbuildable:
            return value  # a container type that cannot be rebuilt: passed as it is
    if isinstance(value, bytearray):
        try:
            return copy.copy(value)
        except Exception:
            return value
    if is_model(value):
        try:
            return value.model_copy(deep=True)
        except _UNCOPYABLE:
            return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return copy.deepcopy(value)
        except _UNCOPYABLE:
            return value
    return value


def _rebuild(value: Any, each: Callable[[Any], Any]) -> Any:
    """A container of ``value``'s type holding ``each(item)`` for its items (dict values).

    ``each`` runs outside the guarded part, so its own errors (a ref that cannot be looked up,
    a refusing ``__deepcopy__``) propagate; raises :class:`_Unbuildable` when the type cannot be
    rebuilt.
    """
    kind = type(value)
    if isinstance(value, dict):
        items = [(k, each(v)) for k, v in value.items()]
        if kind is defaultdict:
            return defaultdict(cast("defaultdict[Any, Any]", value).default_factory, items)
        if kind is OrderedDict:
            return OrderedDict(items)
        try:  # a shallow copy keeps the type, a default_factory and instance attributes
            new: Any = copy.copy(value)
            for k, v in items:
                new[k] = v
        except Exception as exc:
            raise _Unbuildable from exc
        return new
    if isinstance(value, list):
        values = [each(v) for v in value]
        try:
            new_list: Any = copy.copy(value)
            new_list[:] = values
        except Exception as exc:
            raise _Unbuildable from exc
        return new_list
    if isinstance(value, tuple):
        values = [each(v) for v in value]
        make = getattr(kind, "_make", None)  # named tuples take their fields one by one
        try:
            return make(values) if callable(make) else kind(values)
        except Exception as exc:
            raise _Unbuildable from exc
    values = [each(v) for v in value]  # set or frozenset
    try:
        if isinstance(value, set):
            new_set: Any = copy.copy(value)
            new_set.clear()
            new_set.update(values)
            return new_set
        return kind(values)
    except Exception as exc:
        raise _Unbuildable from exc


def isolate_all(args: dict[str, Any]) -> dict[str, Any]:
    """A new argument dict whose values are private copies (see :func:`isolate`)."""
    for value in args.values():
        if type(value) not in _IMMUTABLE:
            return {name: isolate(value) for name, value in args.items()}
    return dict(args)  # every value is immutable (most calls' ints and strings): a plain copy


def resolve_arguments(args: dict[str, Any], lookup: Callable[[Ref], Any],
                      tool: str) -> dict[str, Any]:
    """``args`` with every ref replaced by ``isolate(lookup(ref))``, all plain data copied.

    Refs are replaced inside exactly the containers :func:`shoal.plan.find_refs` walks: dicts
    (their values), lists, tuples, sets and frozensets, subclasses included. A list or dict
    that holds itself is rebuilt as one that does; a value holding refs nested deeper than
    Python's recursion limit is a :class:`ToolArgumentError` of ``tool`` naming the argument.
    """
    resolved: dict[str, Any] = {}
    for name, value in args.items():  # (_resolve's first cases, without its call: most values)
        kind = type(value)
        if kind is Ref:  # an argument that is a ref: its node's output, copied
            found = lookup(value)
            resolved[name] = found if type(found) in _IMMUTABLE else isolate(found)
        elif kind in _SCALARS:
            resolved[name] = value
        else:
            # most values are small trees, walked without noting the containers met (the
            # per-call path); one that recursed past the limit, or met more containers than
            # a tree that size has (parts shared: [x] * 9 nine levels deep is 9**9 lists
            # walked so, 9 noted), is walked again, noting them
            try:
                resolved[name] = _resolve(value, lookup, [_UNTRACKED])
            except (RecursionError, _TooMany):
                resolved[name] = _resolved_tracked(name, value, lookup, tool)
    return resolved


#: Containers of one argument walked without noting them: past this many, it is walked again,
#: each container once (a value of shared parts is a tree of many more than it holds).
_UNTRACKED = 100_000


class _TooMany(Exception):
    """An argument met more than :data:`_UNTRACKED` containers while walked untracked."""


def _resolve(value: Any, lookup: Callable[[Ref], Any], left: list[int]) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is Ref:
        return isolate(lookup(value))
    left[0] -= 1
    if left[0] < 0:
        raise _TooMany
    if kind is dict:
        return {k: _resolve(v, lookup, left) for k, v in value.items()}
    if kind is list:
        return [_resolve(v, lookup, left) for v in value]
    if kind is tuple:
        return tuple(_resolve(v, lookup, left) for v in value)
    if kind is set or kind is frozenset:
        return kind(_resolve(v, lookup, left) for v in value)
    if isinstance(value, _WALKED):
        return _rebuilt(value, lambda v: _resolve(v, lookup, left))
    return isolate(value)


def _rebuilt(value: Any, each: Callable[[Any], Any]) -> Any:
    """:func:`_rebuild` of a container holding refs, or the ``TypeError`` saying it cannot be."""
    try:
        return _rebuild(value, each)
    except _Unbuildable as exc:
        raise TypeError(
            f"cannot rebuild a {type(value).__qualname__} with the values of the refs inside "
            f"it; pass a plain dict, list, tuple or set instead"
        ) from exc.__cause__


def _resolved_tracked(name: str, value: Any, lookup: Callable[[Ref], Any], tool: str) -> Any:
    """:func:`_resolve` of argument ``name``, noting each container met (see _resolve_tracked).

    A value that holds itself ends so; one nested too deep for this walk too fails the call,
    if it holds a ref: one that holds none is passed as any other value too deep to walk is
    (a node with a ref in one argument failed for a deep task in another, which alone ran).
    """
    if not find_refs(value):  # (walked without recursion)
        return isolate(value)
    try:
        return _resolve_tracked(value, lookup, {})
    except RecursionError:
        raise ToolArgumentError(tool, name, (
            f"argument {name!r} holds refs nested deeper than Python's recursion limit, too "
            "deep to put their values in; pass it with fewer levels")) from None


def _resolve_tracked(value: Any, lookup: Callable[[Ref], Any], memo: dict[int, Any]) -> Any:
    """:func:`_resolve`, with ``memo`` mapping each container met to its copy.

    Like ``copy.deepcopy``: lists and dicts enter the memo before their items, so one that
    holds itself is rebuilt as one that does, and a container met twice is rebuilt once.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is Ref:
        return isolate(lookup(value))
    found = memo.get(id(value), memo)  # the memo itself: "not seen" (None is a value)
    if found is not memo:
        return found
    if kind is dict:
        new_dict: dict[Any, Any] = {}
        memo[id(value)] = new_dict
        for k, v in value.items():
            new_dict[k] = _resolve_tracked(v, lookup, memo)
        return new_dict
    if kind is list:
        new_list: list[Any] = []
        memo[id(value)] = new_list
        new_list.extend([_resolve_tracked(v, lookup, memo) for v in value])
        return new_list
    made: Any
    if kind is tuple:
        made = tuple([_resolve_tracked(v, lookup, memo) for v in value])
    elif kind is set or kind is frozenset:
        made = kind(_resolve_tracked(v, lookup, memo) for v in value)
    elif isinstance(value, _WALKED):
        made = _rebuilt(value, lambda v: _resolve_tracked(v, lookup, memo))
    else:
        made = isolate(value)
    memo[id(value)] = made
    return made
