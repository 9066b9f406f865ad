"""Merge rules for the keys of a shared board (:class:`shoal.Board`): ``shoal.merge.counter`` ...

Each key of a board declares how the values written to it combine:

``append``
    every written value is kept, in a list, in the order the writing calls committed (a call
    commits its writes when it succeeds; one call's writes keep their own order).
``union``
    a set of the written values (each must be hashable); of equal values (``1``, ``1.0``,
    ``True``) it keeps one, the same in any commit order (see ``minimum``).
``counter``
    the sum of the written numbers (start: 0). Floats (and fractions with them) are summed
    exactly and the sum rounded once when read, so it does not depend on the order in which
    writers commit (a sum past a float's range reads as infinity, and as itself again once
    later writes bring it back).
``minimum`` / ``maximum`` (also ``min`` / ``max``)
    the smallest / largest value written (start: ``None``); values must compare, and be
    ordered: two sets neither of which holds the other are refused (of them, the one kept
    would be the one committed first). Of equal values, the one kept is the same in any commit
    order: by type (``int``, ``bool``, ``Fraction``, ``float``, ``Decimal``, then others by
    name), then ``-0.0`` for the smallest and ``0.0`` for the largest, then by ``repr``.
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
import inspect
import math
import numbers
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from shoal._ties import preferred, stored_equal

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


class _ShortRepr(reprlib.Repr):
    """Bounded (a huge or self-containing value costs little); a failing repr is named."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlevel = 3

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            return repr(x)
        except (Exception, SystemExit) as exc:  # sys.exit() in a __repr__ too
            return _unrepresentable(x, exc)

    def repr_int(self, x: int, level: int) -> str:
        if abs(x) > 10**100:  # in a container too: its text may not exist (4,300 digits)
            return _huge_int(x)
        return super().repr_int(x, level)


def _huge_int(value: int) -> str:
    """A whole number too long to write out, by its size."""
    digits = int(value.bit_length() * math.log10(2)) + 1
    return f"{'-' if value < 0 else ''}<a whole number of about {digits:,} digits>"


def _unrepresentable(value: Any, exc: BaseException) -> str:
    return f"<{type(value).__qualname__}: repr failed with {type(exc).__name__}>"


_SHORT = _ShortRepr()


def shown(value: Any) -> str:
    """A short repr of a written value for an error message; never raises.

    Values come from tools and models: a ``__repr__`` that raises (or a container whose
    items misbehave) gives a placeholder naming the type, so the error that quotes the value
    is still the one raised.
    """
    if type(value) is int and abs(value) > 10**100:  # its text may not exist (4,300 digits)
        return _huge_int(value)
    try:
        text = _SHORT.repr(value)
    except (Exception, SystemExit) as exc:  # a container whose items misbehave, sys.exit()
        return _unrepresentable(value, exc)
    return text if len(text) <= 80 else text[:77] + "..."


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by a value's own code; never raises."""
    try:
        message = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException:  # sys.exit() in its __str__ too: the value's code ends no run
        message = "<its message cannot be shown>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """How the values written to one board key combine into its merged value.

    ``start()`` is the merged value of a key nobody wrote yet; ``fold(merged, value)`` merges
    one written value in and returns the result (rules with ``in_place`` update ``merged``
    itself and cannot fail); ``check(value, current)`` says why ``value`` cannot be written
    ('' if it can; ``current()`` gives the merged value the writer sees); ``copy`` gives
    readers their own copy of a merged value; ``trial(merged, values)`` says why values
    that passed ``check`` cannot be merged in place now ('' if they can), before anything
    changes, so that a commit stays all or none. ``commutative`` rules do not care in which
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
    trial: Callable[[Any, list[Any]], str] = lambda merged, values: ""

    def __repr__(self) -> str:
        return f"merge.{self.name}"


def _appended(merged: list[Any], value: Any) -> list[Any]:
    merged.append(value)
    return merged


def _added(merged: set[Any], value: Any) -> set[Any]:
    there = stored_equal(merged, value)
    if there is not value and preferred(there, value) is value:  # the same in any order
        merged.discard(there)
    merged.add(value)
    return merged


def _hashable(value: Any, current: Callable[[], Any]) -> str:
    try:
        hash(value)
    except Exception as exc:  # TypeError, or a __hash__ of the value's own that raises
        return (f"a set holds only hashable values, got {type(value).__name__} "
                f"{shown(value)} ({error_text(exc)})")
    return ""  # whether it compares with the set's values is tried at commit (_findable)


def _findable(merged: set[Any], values: list[Any]) -> str:
    """Why ``values`` cannot be added to ``merged`` ('' if they can).

    Adding compares a value with the members of equal hash, so an ``__eq__`` that raises
    would fail the add half way through a commit; this tries the same comparisons first.
    """
    for value in values:
        try:
            value in merged  # noqa: B015 - the lookup is the test
        except Exception as exc:
            return (f"{type(value).__name__} {shown(value)} cannot be compared with the "
                    f"set's values ({error_text(exc)})")
    try:
        set(values)
    except Exception as exc:
        return f"the values written cannot be compared with one another ({error_text(exc)})"
    return ""


def _number(value: Any, current: Callable[[], Any]) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"a counter adds numbers, got {type(value).__name__} {shown(value)}"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int (or fraction) too large for a float is still finite
        finite = True
    except Exception as exc:  # a number type of its own whose __float__ raises
        return f"a counter adds numbers, got {shown(value)}, which is not one ({error_text(exc)})"
    if not finite:
        return f"a counter adds finite numbers, got {shown(value)}"
    return ""


class _ExactSum:
    """A counter's sum that holds floats: kept exact, rounded to a float once, when read.

    Adding floats one by one rounds at each step, so parallel writers committing in another
    order would give another float; the exact sum of the same numbers is one number. Every
    finite float is a whole multiple of 2**-1074, so the sum is kept as a whole number of
    those (``scaled``): adding is adding ints, and Python divides ints correctly rounded.
    """

    __slots__ = ("scaled",)

    def __init__(self, scaled: int) -> None:
        self.scaled = scaled

    @property
    def value(self) -> float:
        """The sum, rounded once (past a float's range: infinity, as IEEE rounds it).

        Sums beyond a float's range along the way are kept exact, so ``1e308 + 1e308 -
        1e308`` is ``1e308`` in every order of the writes (refusing the write that went past
        would refuse one write or another by order, or none).
        """
        if abs(self.scaled) >= _OVERFLOW:
            return -math.inf if self.scaled < 0 else math.inf
        return self.scaled / _ONE

    def __repr__(self) -> str:
        return repr(self.value)


_TINY_BITS = 1074  # 2**-1074: the smallest float step
_ONE = 1 << _TINY_BITS
# sums this large (in steps of 2**-1074) round to infinity: 2**1024 less half a last place
_OVERFLOW = ((1 << 1024) - (1 << 970)) << _TINY_BITS


def _scaled(number: float | int) -> int:
    """``number`` as a whole number of 2**-1074 steps (exact for ints and finite floats)."""
    if isinstance(number, int):
        return number << _TINY_BITS
    numerator, denominator = number.as_integer_ratio()  # the denominator: a power of two
    return numerator << (_TINY_BITS + 1 - denominator.bit_length())


def _sum(merged: Any, value: Any) -> Any:
    if type(merged) is int and type(value) is int:  # the usual count: exact already
        return merged + value
    exact = type(merged) is _ExactSum or isinstance(merged, float)
    if (exact or isinstance(value, float)) and isinstance(value, float | int) and (
            exact or isinstance(merged, int)):
        # past a float's range too: only the exact total, when read, decides (see .value)
        total = (merged.scaled if type(merged) is _ExactSum else _scaled(merged)) + _scaled(value)
        return _ExactSum(total)
    if _rational(merged) and _rational(value) and (
            type(merged) is _RationalSum or isinstance(merged, Fraction)
            or isinstance(value, Fraction)):
        return _rational_sum(merged, value)
    if type(merged) is _ExactSum:
        merged = merged.value
    total = merged + value
    if isinstance(total, float) and not math.isfinite(total):
        # an infinite sum would make the result depend on the order of the writes
        raise OverflowError(f"the sum {shown(merged)} + {shown(value)} overflows a float; count in "
                            "smaller units or with ints")
    return total


class _RationalSum:
    """A counter's sum of fractions and floats: exact, rounded to a float once, when read.

    ``Fraction + float`` is a float, rounded at each step: parallel writers committing in
    another order would give another float (or, with large floats, lose a fraction whole).
    """

    __slots__ = ("total",)

    def __init__(self, total: Fraction) -> None:
        self.total = total

    @property
    def value(self) -> float:
        """The sum, rounded once (past a float's range: infinity, as in :class:`_ExactSum`)."""
        if abs(self.total) >= _FLOAT_LIMIT:
            return -math.inf if self.total < 0 else math.inf
        return float(self.total)

    def __repr__(self) -> str:
        return repr(self.value)


_FLOAT_LIMIT = (1 << 1024) - (1 << 970)  # sums this large round to infinity


def _rational(number: Any) -> bool:
    """Whether ``number`` is known exactly as a fraction (ints, floats, fractions, sums)."""
    return isinstance(number, int | float | Fraction | _ExactSum | _RationalSum)


def _rational_sum(merged: Any, value: Any) -> Any:
    """The exact sum of two numbers one of which is a fraction; rounded once if any floats."""
    def exactly(number: Any) -> Fraction:
        if type(number) is _ExactSum:
            return Fraction(number.scaled, _ONE)
        if type(number) is _RationalSum:
            return number.total
        return Fraction(number)

    total = exactly(merged) + exactly(value)
    if not any(isinstance(n, float | _ExactSum | _RationalSum) for n in (merged, value)):
        return total  # fractions and ints: a fraction, exactly (as Fraction + int gives)
    return _RationalSum(total)  # past a float's range too: see _ExactSum.value


def _sum_read(merged: Any) -> Any:
    """What readers of a counter get: its sum as a plain number."""
    return merged.value if type(merged) in (_ExactSum, _RationalSum) else merged


def _is_nan(value: Any) -> bool:
    """Whether ``value`` is a NaN (float or Decimal), without running the value's own code."""
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, Decimal) and value.is_nan()


def _comparable(pick: Callable[[Any, Any], Any]) -> Callable[[Any, Callable[[], Any]], str]:
    """``check`` for :data:`minimum` / :data:`maximum`: ``value`` must order with what is there.

    The first value has nothing to be compared with, so it is compared with itself: a dict or
    a plain object, which cannot be ordered at all, is refused at its write, rather than kept
    as the key's value and blamed on whichever value is written after it (or never noticed).
    """
    def check(value: Any, current: Callable[[], Any]) -> str:
        if value is None:
            return "None cannot be compared; write a value"
        if _is_nan(value):  # neither smaller nor larger: the result would depend on order
            return f"{shown(value)} cannot be compared (it is neither smaller nor larger than " \
                   "any number); write a number"
        merged = current()
        try:
            pick(value if merged is None else merged, value)
        except Exception as exc:  # TypeError, or a comparison of the value's own that raises
            if merged is None:
                return (f"{shown(value)} cannot be ordered ({error_text(exc)}); write values "
                        "that compare with each other (numbers, strings, tuples of them)")
            return (f"{shown(value)} cannot be compared with the value so far "
                    f"({error_text(exc)})")
        return ""

    return check


def _smaller(merged: Any, value: Any) -> Any:
    if merged is None or value < merged:
        return value
    if merged < value:
        return merged
    if merged == value:  # of equal values, the same one whatever the commit order
        return preferred(merged, value)
    raise _unordered(merged, value, "smallest")


def _larger(merged: Any, value: Any) -> Any:
    if merged is None or value > merged:
        return value
    if merged > value:
        return merged
    if merged == value:
        return preferred(merged, value, largest=True)
    raise _unordered(merged, value, "largest")


def _unordered(merged: Any, value: Any, which: str) -> ValueError:
    """The error for values neither smaller, larger nor equal (two sets, neither in the other).

    Neither wins, and the one kept would be the one committed first: parallel writers would
    leave a board that depends on timing.
    """
    return ValueError(f"{shown(value)} and {shown(merged)} are not ordered (neither is smaller, "
                      f"nor are they equal), so the {which} would depend on the order of the "
                      "writes; write values that all compare (numbers, strings, tuples of "
                      "them), or use another rule")


append = Rule("append", list, _appended, commutative=True, in_place=True, copy=list)
"""Keep every written value, in a list, in commit order."""

union = Rule("union", set, _added, commutative=True, check=_hashable, in_place=True, copy=set,
             trial=_findable)
"""A set of the written values."""

counter = Rule("counter", int, _sum, commutative=True, check=_number, copy=_sum_read)
"""The sum of the written numbers (of floats: exact, rounded once, whatever the order)."""

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

    ``fn`` gets copies of the merged value (shallow) and of the written one (deep): a
    function that adds to ``merged`` in place and returns it changes the board only when the
    call commits, all or none. (What ``merged`` holds is the board's own: a function that
    changes it, ``merged[k].append(v)``, and then fails, leaves that change.) Say
    ``commutative=True`` only if the order of two merges never matters (then calls that only
    merge into the key need not wait for each other).
    """
    if not callable(fn):
        raise TypeError(f"merge.using takes a function (merged, value) -> merged, got "
                        f"{shown(fn)}")
    if _is_async(fn):  # its merge would give an unawaited coroutine, kept as the value
        raise TypeError(f"merge.using takes a plain function (merged, value) -> merged, got "
                        f"the async function {shown(fn)}: a board merges as it commits, "
                        "without awaiting; make it a def")
    if _is_generator(fn):  # its merge would give a generator never run, kept as the value
        raise TypeError(f"merge.using takes a function returning the merged value, got the "
                        f"generator function {shown(fn)}: its merge would be a generator, "
                        "never run; return the value instead of yielding it")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError as exc:  # found now, not at the first write, where it fails a call
        raise TypeError(f"merge.using takes a function of two arguments (merged, value) -> "
                        f"merged; {shown(fn)} cannot take them: {exc}") from None
    except ValueError:  # no signature to check (some builtins): the first merge will tell
        pass
    if not isinstance(commutative, bool):  # "no" would be taken as true: merges unordered
        raise TypeError(f"merge.using: commutative= is True or False, got {shown(commutative)}")
    name = getattr(fn, "__name__", type(fn).__name__)
    return Rule(f"using({name})", lambda: copy.deepcopy(initial), _not_awaitable(fn),
                commutative=commutative)


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine or an async generator, not a value.

    An object whose own attribute lookups fail (a ``__getattr__`` raising what is not an
    ``AttributeError``, which ``inspect`` lets through) is taken for a plain callable.
    """
    try:
        call = getattr(fn, "__call__", None)  # noqa: B004 - an object's own async __call__
        return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
                   for f in (fn, call) if f is not None)
    except Exception:
        return False


def _is_generator(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a generator (it yields), not a value.

    Its own ``__call__`` counts, and an object whose attribute lookups fail is taken for a
    plain callable, as in :func:`_is_async`.
    """
    try:
        call = getattr(fn, "__call__", None)  # noqa: B004 - an object's own generator __call__
        return any(inspect.isgeneratorfunction(f) for f in (fn, call) if f is not None)
    except Exception:
        return False


def owned(value: Any) -> Any:
    """A deep copy of ``value``, or ``value`` itself if it cannot be copied (a lock in it).

    Never raises but for a ``KeyboardInterrupt``: a ``__deepcopy__`` of the value's own that
    fails (``sys.exit()`` too), or a value nested too deep to copy, gives the value as it is,
    as a board's reads do.
    """
    if is_frozen(value):  # deepcopy would walk it all to give it back as it is
        return value
    try:
        return copy.deepcopy(value)
    except (Exception, SystemExit):
        return value


#: Types whose values never change (exact types: a subclass may add what does)
_ATOMS = frozenset({str, int, float, bool, type(None), bytes, complex, Fraction, Decimal})
_FLAT_DEPTH = 32  # tuples in tuples deeper than this are left to deepcopy


def is_frozen(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is atoms, or tuples and frozensets of them, all the way down.

    ``copy.deepcopy`` gives such a value back as it is, but only after walking all of it: a
    tuple of 100,000 numbers written to a board took 0.3 s a write, copied twice.
    """
    kind = type(value)
    if kind in _ATOMS:
        return True
    if (kind is not tuple and kind is not frozenset) or depth > _FLAT_DEPTH:
        return False
    if all(map(_ATOMS.__contains__, map(type, value))):  # flat (most): at C speed
        return True
    return all(is_frozen(item, depth + 1) for item in value)


def _shallow(value: Any) -> Any:
    """A shallow copy of ``value`` (itself if it cannot be copied); never raises, as owned."""
    try:
        return copy.copy(value)
    except (Exception, SystemExit):
        return value


def _not_awaitable(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``fn`` on copies of its inputs, refusing a result that must be awaited or iterated.

    Copies: a merge function that changes ``merged`` in place (``merged.append(value)``)
    changed the board's own value, so a merge failing half way through a commit left half of
    it; one that changes ``value`` changed the write the call commits later. ``merged`` is
    copied shallow (it grows with every commit: a deep copy each time made a thousand
    commits take seconds); what it holds is the board's, changed in place only by a commit
    that succeeds (a call's read folds into a deep copy, see ``BoardHandle._view``).
    Kept as the merged value, a coroutine or a generator (a function returning one) would
    never run: the board would hold garbage, and the journal could not keep it.
    """
    def fold(merged: Any, value: Any) -> Any:
        result = fn(_shallow(merged), owned(value))
        if inspect.isawaitable(result) or inspect.isgenerator(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()  # no "never awaited" warning: the error says it all
            raise TypeError(f"the merge function {shown(fn)} returned "
                            f"{_lazy(result)} ({type(result).__name__}), not the merged "
                            "value; a board merges as it commits: return the value itself")
        if result is None and merged is not None and value is not None:
            # merged.append(value) and no return: kept, None failed the next call's merge
            raise TypeError(f"the merge function {shown(fn)} returned None for "
                            f"{shown(merged)} and {shown(value)}: a merge function must "
                            "return the merged value ('return merged' after changing it)")
        return result

    return fold


def _lazy(result: object) -> str:
    """What a merge function gave instead of a value: something to await, or to iterate."""
    return "a generator" if inspect.isgenerator(result) else "an awaitable"
