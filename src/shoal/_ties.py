"""Which of two equal values a board key keeps: the same one whatever the commit order.

``1``, ``1.0``, ``True``, ``Fraction(1)`` and ``Decimal(1)`` are all equal, as are ``0.0`` and
``-0.0`` and the tuples ``(1, "x")`` and ``(1.0, "x")``; a ``minimum``, ``maximum`` or
``union`` that kept the one committed first would leave a board that depends on which parallel
call finished first. Of two equal values, the one kept is:

1. the one whose type comes first in: ``int``, ``bool``, ``Fraction``, ``float``, ``Decimal``,
   then any other type, by its module and name;
2. of zeros of one type: ``-0.0`` for a ``minimum`` (and a ``union``), ``0.0`` for a
   ``maximum`` (as IEEE 754's minimum and maximum do);
3. of two lists or two tuples, the one whose first differing item comes first by these same
   rules (``(1, 'x')`` before ``(1.0, 'x')``): items that are the same object are skipped
   without a look, so two equal copies of a large value cost a walk in C, not two ``repr``;
4. else the one whose ``repr`` comes first (``Decimal('1.0')`` before ``Decimal('1.00')``).

A value whose ``repr`` fails ties with anything, and the value there first is kept.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from itertools import compress
from operator import is_not, not_
from typing import Any

__all__ = ["preferred", "stored_equal"]

_RANKS: dict[type, int] = {int: 0, bool: 1, Fraction: 2, float: 3, Decimal: 4}
# equal values of these types (exactly) are the same value: nothing to choose
_SAME_WHEN_EQUAL = frozenset({int, bool, str, bytes, Fraction})


def preferred(kept: Any, value: Any, *, largest: bool = False) -> Any:
    """Of ``kept`` and ``value``, which are equal, the one to keep (see the module's text)."""
    return value if _order(kept, value, largest) > 0 else kept


def _order(first: Any, second: Any, largest: bool) -> int:
    """-1 if ``first`` (equal to ``second``) comes first, 1 if ``second`` does, 0 if a tie.

    Lists and tuples are walked with a stack of the item pairs still to compare, not by
    recursion: a value may be nested deeper than Python's stack.
    """
    stack = [(first, second)]
    while stack:
        a, b = stack.pop()
        kind, other = type(a), type(b)
        if kind is not other:
            ranked = _type_key(kind), _type_key(other)
            if ranked[0] != ranked[1]:
                return -1 if ranked[0] < ranked[1] else 1
            continue  # two types of one name (classes made in a function): no order to tell
        if kind in _SAME_WHEN_EQUAL or a is b:
            continue
        if kind is float or kind is Decimal:
            # of one type, equal numbers differ only as zeros' signs ...
            if a == 0 and _negative(a) != _negative(b):
                return -1 if _negative(a) != largest else 1
            if kind is float:
                continue
        if (kind is tuple or kind is list) and len(a) == len(b):
            stack += reversed(_telling(a, b))
            continue
        a_text, b_text = _text(a), _text(b)  # ... or as Decimal('1.0') and Decimal('1.00')
        if a_text is not None and b_text is not None and a_text != b_text:
            return -1 if a_text < b_text else 1
    return 0


def _telling(a: list[Any] | tuple[Any, ...], b: list[Any] | tuple[Any, ...]) -> list[
        tuple[Any, Any]]:
    """The pairs of equal items of ``a`` and ``b``, in order, that may tell them apart.

    Not those that are one object, nor, where every pair has one type, those of a type
    whose equal values are the same value (str, int ...): found in C, item by item.
    """
    apart = list(map(is_not, a, b))
    firsts, seconds = list(compress(a, apart)), list(compress(b, apart))
    kinds = list(map(type, firsts))
    if kinds == list(map(type, seconds)):
        telling = list(map(not_, map(_SAME_WHEN_EQUAL.__contains__, kinds)))
        firsts, seconds = list(compress(firsts, telling)), list(compress(seconds, telling))
    return list(zip(firsts, seconds, strict=True))


def _type_key(kind: type) -> tuple[int, str]:
    rank = _RANKS.get(kind)
    if rank is not None:
        return rank, ""
    return len(_RANKS), f"{kind.__module__}.{kind.__qualname__}"


def _negative(zero: float | Decimal) -> bool:
    return zero.is_signed() if isinstance(zero, Decimal) else math.copysign(1.0, zero) < 0


def _text(value: Any) -> str | None:
    """``repr(value)``, or None if it has none (it raises, or is too long an int to write)."""
    try:
        return repr(value)
    except (Exception, SystemExit):  # a value's own __repr__ (sys.exit() too): ends no run
        return None


def stored_equal(values: set[Any], value: Any) -> Any:
    """The member of ``values`` equal to ``value``, or ``value`` itself if none is (or shows).

    A set finds a member by hash, then asks it whether it equals what is looked up; a
    member's ``__eq__`` that does not know the probe hands the question to the probe, which
    notes who asked. (A member whose ``__eq__`` answers for itself is not seen: ``value``.)
    """
    if value not in values:  # most adds: a lookup in C
        return value
    probe = _Probe(value)
    return probe.found if probe in values and probe.found is not None else value


class _Probe:
    """Looked up in a set in place of ``value``: notes the member found equal to it."""

    __slots__ = ("found", "hash", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.hash = hash(value)
        self.found: Any = None

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        try:
            equal = bool(self.value == other)
        except (Exception, SystemExit):  # the commit's trial compared them (merge._findable)
            return False
        if equal:
            self.found = other
        return equal
