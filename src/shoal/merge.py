"""Merge rules for the keys of a shared board (:class:`shoal.Board`): ``shoal.merge.counter`` ...

Each key of a board declares how the values written to it combine:

``append``
    every written value is kept, in a list, in the order the writing calls committed (a call
    commits its writes when it succeeds; one call's writes keep their own order).
``union``
    a set of the written values (each must be hashable).
``counter``
    the sum of the written numbers (start: 0).
``minimum`` / ``maximum`` (also ``min`` / ``max``)
    the smallest / largest value written (start: ``None``); values must compare.
``last_writer``
    the last committed value wins. Overwriting a value another writer committed, without
    having read that value first, is a *conflict*: the run reports it with both writers'
    lineages (``RunResult.conflicts``).
``using(fn)``
    ``fn(merged, value) -> merged``, for anything else (start: ``initial``). Any plain
    function of two arguments given as a rule is taken as ``using(fn)``.

All but ``last_writer`` and ``using`` are commutative: the order in which parallel calls
commit changes nothing but the order of an ``append`` list, so calls that only merge into such
a key need not wait for one another (see ``merges=`` in :func:`shoal.tool`).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Rule",
    "append",
    "counter",
    "last_writer",
    "max",
    "maximum",
    "min",
    "minimum",
    "union",
    "using",
]


def _nothing_wrong(value: Any, current: Callable[[], Any]) -> str:
    return ""


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """How the values written to one board key combine into its merged value.

    ``start()`` is the merged value of a key nobody wrote yet; ``fold(merged, value)`` merges
    one written value in and returns the result (rules with ``in_place`` update ``merged``
    itself and cannot fail); ``check(value, current)`` says why ``value`` cannot be written
    ('' if it can; ``current()`` gives the merged value the writer sees); ``copy`` gives
    readers their own copy of a merged value. ``commutative`` rules do not care in which
    order parallel writers commit; ``reports_conflicts`` marks ``last_writer``.
    """

    name: str
    start: Callable[[], Any]
    fold: Callable[[Any, Any], Any]
    commutative: bool
    check: Callable[[Any, Callable[[], Any]], str] = _nothing_wrong
    in_place: bool = False
    reports_conflicts: bool = False
    copy: Callable[[Any], Any] = lambda merged: merged

    def __repr__(self) -> str:
        return f"merge.{self.name}"


def _appended(merged: list[Any], value: Any) -> list[Any]:
    merged.append(value)
    return merged


def _added(merged: set[Any], value: Any) -> set[Any]:
    merged.add(value)
    return merged


def _hashable(value: Any, current: Callable[[], Any]) -> str:
    try:
        hash(value)
    except TypeError:
        return f"a set holds only hashable values, got {type(value).__name__} {value!r:.80}"
    return ""


def _number(value: Any, current: Callable[[], Any]) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"a counter adds numbers, got {type(value).__name__} {value!r:.80}"
    if not math.isfinite(value):
        return f"a counter adds finite numbers, got {value!r}"
    return ""


def _comparable(pick: Callable[[Any, Any], Any]) -> Callable[[Any, Callable[[], Any]], str]:
    def check(value: Any, current: Callable[[], Any]) -> str:
        if value is None:
            return "None cannot be compared; write a value"
        try:
            pick(current(), value)
        except TypeError as exc:
            return f"{value!r:.80} cannot be compared with the value so far ({exc})"
        return ""

    return check


def _smaller(merged: Any, value: Any) -> Any:
    return value if merged is None or value < merged else merged


def _larger(merged: Any, value: Any) -> Any:
    return value if merged is None or value > merged else merged


append = Rule("append", list, _appended, commutative=True, in_place=True, copy=list)
"""Keep every written value, in a list, in commit order."""

union = Rule("union", set, _added, commutative=True, check=_hashable, in_place=True, copy=set)
"""A set of the written values."""

counter = Rule("counter", int, lambda merged, value: merged + value, commutative=True,
               check=_number)
"""The sum of the written numbers."""

minimum = Rule("minimum", lambda: None, _smaller, commutative=True, check=_comparable(_smaller))
"""The smallest value written."""

maximum = Rule("maximum", lambda: None, _larger, commutative=True, check=_comparable(_larger))
"""The largest value written."""

last_writer = Rule("last_writer", lambda: None, lambda merged, value: value, commutative=False,
                   reports_conflicts=True)
"""The last committed value; overwriting another writer's value unseen is a conflict."""

min = minimum  # shoal.merge.min reads as what it is
max = maximum


def using(fn: Callable[[Any, Any], Any], *, initial: Any = None,
          commutative: bool = False) -> Rule:
    """A rule merging with ``fn(merged, value) -> merged``, starting from ``initial``.

    ``fn`` should return a new value rather than change ``merged``: a call whose merge fails
    must leave the board as it was. Say ``commutative=True`` only if the order of two merges
    never matters (then calls that only merge into the key need not wait for each other).
    """
    if not callable(fn):
        raise TypeError(f"merge.using takes a function (merged, value) -> merged, got {fn!r}")
    name = getattr(fn, "__name__", type(fn).__name__)
    return Rule(f"using({name})", lambda: copy.deepcopy(initial), fn,
                commutative=bool(commutative))
