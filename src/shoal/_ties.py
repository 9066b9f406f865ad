"""Which of two equal values a board key keeps: the same one whatever the commit order.

``1``, ``1.0``, ``True``, ``Fraction(1)`` and ``Decimal(1)`` are all equal, as are ``0.0`` and
``-0.0`` and the tuples ``(1, "x")`` and ``(1.0, "x")``; a ``minimum``, ``maximum`` or
``union`` that kept the one committed first would leave a board that depends on which parallel
call finished first. Of two equal values, the one kept is:

1. the one whose type comes first in: ``int``, ``bool``, ``Fraction``, ``float``, ``Decimal``,
   then any other type, by its module and name;
2. of zeros of one type: ``-0.0`` for a ``minimum`` (and a ``union``), ``0.0`` for a
   ``maximum`` (as IEEE 754's minimum and maximum do);
3. else the one whose ``repr`` comes first (``(1, 'x')`` before ``(1.0, 'x')``).

A value whose ``repr`` fails ties with anything, and the value there first is kept.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

__all__ = ["preferred", "stored_equal"]

_RANKS: dict[type, int] = {int: 0, bool: 1, Fraction: 2, float: 3, Decimal: 4}
# equal values of these types (exactly) are the same value: nothing to choose
_SAME_WHEN_EQUAL = frozenset({int, bool, str, bytes, Fraction})


def preferred(kept: Any, value: Any, *, largest: bool = False) -> Any:
    """Of ``kept`` and ``value``, which are equal, the one to keep (see the module's text)."""
    kind, other = type(kept), type(value)
    if kind is not other:
        return kept if _type_key(kind) <= _type_key(other) else value
    if kind in _SAME_WHEN_EQUAL or kept is value:
        return kept
    if kind is float or kind is Decimal:
        # of one type, equal numbers differ only as zeros' signs ...
        if kept == 0 and _negative(kept) != _negative(value):
            return kept if _negative(kept) != largest else value
        if kind is float:
            return kept
    kept_text, text = _text(kept), _text(value)  # ... or as Decimal('1.0') and Decimal('1.00')
    if kept_text is None or text is None or kept_text <= text:
        return kept
    return value


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
