"""Concurrency and rate limits, as pure bookkeeping.

Nothing here sleeps or reads a clock: the scheduler's state machine passes ``now`` in and asks
*whether* and *when* a call may start. That keeps limits exact (no race between a check and a
take) and testable without time passing. Nor do they lock: a limit that runs on several threads
use (the gates of a runtime those threads share) is checked and taken under its owner's lock.
"""

from __future__ import annotations

import decimal
import math
import numbers
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from shoal.exceptions import (
    ConfigError,
    OpenFilesLimitError,
    bounded_text,
    describe_exception,
)
from shoal.merge import shown

_T = TypeVar("_T")

__all__ = [
    "ConcurrencyLimit",
    "ProcessLimits",
    "Rate",
    "RateLimiter",
    "decimal_as_float",
    "parse_process_limits",
    "parse_rate",
    "seeded",
]

_UNITS = {
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
#: A count or a number of units, as Python writes a float: "20", "0.5", ".5", "1e3"
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_RATE = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})?\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``period`` seconds, as a token bucket of size ``count``.

    A burst of ``count`` starts at once, then one every ``period / count`` seconds: so a
    window of ``period`` seconds that opens with a full bucket holds up to
    ``2 * count - 1`` starts (``"10/s"``: 10 at 0 s, then one each 0.1 s), and any longer
    stretch of time averages ``count`` per ``period``.
    """

    count: float
    period: float

    def __post_init__(self) -> None:
        if not all(_positive(v) for v in (self.count, self.period)):
            # quoted with shown(): a count of 10**5000 has no decimal repr, and a value's own
            # __repr__ may fail (or call sys.exit())
            raise ConfigError(f"a rate needs a positive, finite count and period, "
                              f"got count={shown(self.count)}, period={shown(self.period)}")
        # a start every period / count seconds: past a float (count=5e-324) the wait is
        # infinite, and a count / period of 0 refills nothing: no second call ever started (a
        # virtual clock, whose time would have to reach infinity, hung the run)
        if not finite(float(self.period) / float(self.count)) or not (
                float(self.count) / float(self.period) > 0):
            raise ConfigError(
                f"a rate of {shown(self.count)} per {shown(self.period)} s leaves longer "
                "between two starts than a number of seconds can hold; give a larger count "
                "or a shorter period")

    def __str__(self) -> str:
        return f"{self.count:g}/{self.period:g}s"


def finite(value: float | numbers.Real) -> bool:
    """Whether ``value`` is finite as a float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def decimal_as_float(value: _T) -> _T | float:
    """A ``Decimal`` as the float it stands for, where one holds it; anything else as it is.

    Seconds and dollars are worked with as floats, which hold a config file's or a price
    table's ``Decimal("0.10")`` closely enough. ``Decimal`` is no ``numbers.Real``, so one was
    refused as "must be positive ... got Decimal('1.5')". A NaN, or one past a float's range
    (``Decimal("1e400")`` would be infinity: no limit, not what was meant), is left as it is,
    for the check to refuse; ``Decimal("Infinity")`` is infinity.
    """
    if isinstance(value, decimal.Decimal) and not value.is_nan():
        number = float(value)
        if math.isfinite(number) or value.is_infinite():
            return number
    return value


def fits_a_float(number: float) -> bool:
    """Whether ``number`` is a float, or an int that can be one (one of 400 digits cannot).

    Infinity stands: a deadline or a ``wall_clock`` that never comes. Seconds and dollars
    are worked with as floats (a timer's due time is one), so an int too large for a float
    must be refused where it is given, not fail with an ``OverflowError`` in the middle of
    a run.
    """
    try:
        float(number)
    except OverflowError:
        return False
    return True


def seeded(where: str, seed: object) -> random.Random:
    """A generator of retry jitter seeded with ``seed``; ``None``: from the OS's entropy.

    A whole number, text or bytes (or a finite float) makes the same waits at each run. Others
    are a :class:`ConfigError` naming ``where``'s seed: a list was random's own ``TypeError``,
    naming neither, and a NaN was taken, though its hash (the seed) is its identity, so the
    waits it was to make the same differed at each run.
    """
    if seed is None or isinstance(seed, str | bytes | bytearray) or (
            isinstance(seed, float) and finite(seed)):
        return random.Random(seed)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return random.Random(int(seed))  # a numpy integer, an int of a subclass
    raise ConfigError(f"{where}: seed must be a whole number, text or bytes, or None (no "
                      f"seed), got {type(seed).__name__} {shown(seed)}")


def _positive(value: object) -> bool:
    """Whether ``value`` is a positive, finite real number (``bool`` is not taken for one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return finite(value) and float(value) > 0
    except Exception:  # a number type of its own whose __float__ fails: not a number here
        return False


_FORMS = ("write it as COUNT/UNIT, e.g. '20/s', '100/min', '5/10s', or as a (count, seconds) "
          "pair such as (20, 1.0)")


def parse_rate(spec: str | Rate | tuple[float, float]) -> Rate:
    """Read a rate such as ``"20/s"``, ``"100/min"``, ``"5/10s"`` or ``(20, 1.0)``.

    A (count, seconds) pair may also be a two-item list (as plan files write it).
    """
    if isinstance(spec, Rate):
        return spec
    if isinstance(spec, tuple | list):
        if len(spec) == 2:  # a Decimal count or period (a config file's) as a float
            spec = (decimal_as_float(spec[0]), decimal_as_float(spec[1]))
        if len(spec) != 2 or not all(_positive(v) for v in spec):
            raise ConfigError(f"cannot read rate {shown(spec)}: a pair needs a positive count "
                              f"and a positive number of seconds; {_FORMS}")
        return Rate(float(spec[0]), float(spec[1]))
    if not isinstance(spec, str):
        raise ConfigError(f"cannot read rate {shown(spec)}: {_FORMS}")
    match = _RATE.match(spec.lower())
    if not match or match.group(3) not in _UNITS:
        raise ConfigError(f"cannot read rate {shown(spec)}: {_FORMS}")
    count, multiple, unit = match.groups()
    return Rate(float(count), float(multiple or 1.0) * _UNITS[unit])


class ConcurrencyLimit:
    """A counter of calls in flight with a fixed capacity (``None`` means unbounded)."""

    __slots__ = ("capacity", "in_use", "name")

    def __init__(self, name: str, capacity: int | None) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigError(f"{name}: max_concurrency must be at least 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.in_use = 0

    def available(self) -> bool:
        """Whether one more call fits."""
        return self.capacity is None or self.in_use < self.capacity

    def acquire(self) -> None:
        """Take one slot (callers check :meth:`available` first)."""
        self.in_use += 1

    def release(self) -> None:
        """Give one slot back."""
        self.in_use -= 1


class RateLimiter:
    """A token bucket driven by the caller's clock: ``count`` tokens refilled over ``period``.

    The bucket holds at least one token: a rate of less than one start per period
    (``"0.5/s"``) is one start per ``period / count`` (every 2 s). A bucket of half a token
    would never hold the whole token a start takes, and its calls would wait for good.
    """

    __slots__ = ("_capacity", "_stamp", "_tokens", "name", "rate")

    def __init__(self, name: str, rate: Rate) -> None:
        self.name = name
        self.rate = rate
        self._capacity = max(rate.count, 1.0)
        self._tokens = self._capacity
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
        elif now > self._stamp:  # a ``now`` read before another run's refill adds nothing
            gained = (now - self._stamp) * self.rate.count / self.rate.period
            self._tokens = min(self._capacity, self._tokens + gained)
            self._stamp = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self._refill(now)
        missing = 1.0 - self._tokens
        return 0.0 if missing <= 1e-12 else missing * self.rate.period / self.rate.count

    def take(self, now: float) -> None:
        """Spend one token (callers check :meth:`wait_time` first)."""
        self._refill(now)
        self._tokens -= 1.0


def first_blocked(limits: Iterable[ConcurrencyLimit]) -> ConcurrencyLimit | None:
    """The first limit in ``limits`` that has no free slot, or ``None`` when all have one."""
    for limit in limits:
        if not limit.available():
            return limit
    return None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
               "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10,
               "mib": 2**20, "gib": 2**30, "tib": 2**40, "ki": 2**10, "mi": 2**20,
               "gi": 2**30, "ti": 2**40}


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """Operating-system limits on the worker process that runs a call (``isolation="process"``).

    ``memory`` is the address-space limit in bytes (``RLIMIT_AS``): allocations past it fail with
    ``MemoryError``; ``cpu_seconds`` is CPU time (``RLIMIT_CPU``), past which the worker is
    killed; ``open_files`` caps file descriptors (``RLIMIT_NOFILE``). ``None`` means no limit.
    """

    memory: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None


#: The largest OS limit a process can be given (``setrlimit`` takes a signed 64-bit value).
MAX_LIMIT = 2**63 - 1


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"memory takes bytes or a size such as '512MB', got {shown(value)}")
    if isinstance(value, int | float):
        return _whole("memory", value, exact=True)
    match = _SIZE.match(value.lower())
    if not match or (match.group(2) or "") not in _SIZE_UNITS:
        raise ConfigError(f"cannot read size {shown(value)}: write e.g. '512MB', '2GiB' or "
                          "bytes")
    return _whole("memory", float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])


def _whole(key: str, value: int | float, *, exact: bool = False) -> int:
    """``value`` as a whole number from 1 to :data:`MAX_LIMIT`, or a ConfigError saying so.

    ``exact``: a number given with a fraction is refused rather than cut (the OS counts
    whole seconds, files and bytes: ``cpu_seconds=2.5`` would kill a call at 2 s), not one
    worked out from a size (``"1.5KB"``).
    """
    if not finite(value) or not 1 <= value <= MAX_LIMIT:
        raise ConfigError(f"{key} takes a number from 1 to 2**63 - 1, got {shown(value)}")
    if exact and value != int(value):
        raise ConfigError(f"{key} takes a whole number (the OS counts no fractions), got "
                          f"{shown(value)}; give {int(value)} or {int(value) + 1}")
    return int(value)


def parse_process_limits(spec: ProcessLimits | dict[str, object] | None) -> ProcessLimits | None:
    """Read ``{"memory": "512MB", "cpu_seconds": 10, "open_files": 64}`` (any subset)."""
    if spec is None or isinstance(spec, ProcessLimits):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"limits takes a mapping of memory/cpu_seconds/open_files, got "
                          f"{shown(spec)}")
    unknown = set(spec) - {"memory", "cpu_seconds", "open_files"}
    if unknown:
        # keys of any type (no order among them), each quoted in bounds
        named = ", ".join(sorted(shown(key) for key in unknown)[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConfigError(f"unknown process limit(s) [{named}]{more}; "
                          "known: memory, cpu_seconds, open_files")
    values: dict[str, int | None] = {"memory": None, "cpu_seconds": None, "open_files": None}
    if spec.get("memory") is not None:
        values["memory"] = _size(spec["memory"])
    for key in ("cpu_seconds", "open_files"):
        raw = spec.get(key)
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ConfigError(f"{key} takes a positive number, got {shown(raw)}")
            values[key] = _whole(key, raw, exact=True)
    return ProcessLimits(**values)


def env_names(names: object) -> tuple[str, ...]:
    """``names`` as environment variable names to pass on; a ValueError says what is wrong.

    A list of names (a lone string would be read letter by letter; an iterator is read once,
    here); each non-empty, without ``=`` or NUL (neither can be in a name), and one the OS
    can hold (no lone surrogate).
    """
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise ValueError("takes a list of environment variable names, e.g. ['OPENAI_API_KEY']")
    kept = tuple(names)
    for name in kept:
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"takes environment variable names (no '=' or NUL), "
                             f"e.g. ['OPENAI_API_KEY'], got {shown(name)}")
        try:
            os.fsencode(name)
        except UnicodeError:
            raise ValueError(f"takes names the OS can hold, got {shown(name)}") from None
    return kept


def lowest_free_descriptor() -> int:
    """The lowest file descriptor number free now: those below it are this process's own."""
    probe = os.open(os.devnull, os.O_RDONLY)
    os.close(probe)
    return probe


def out_of_descriptors(exc: BaseException) -> OSError | None:
    """The ``EMFILE`` error (too many open files) in ``exc``'s chain of causes, if any.

    Read through ``__cause__`` and ``__context__``: a model's client wraps the socket's error
    in a connection error of its own.
    """
    import errno

    seen: set[int] = set()
    each: BaseException | None = exc
    while each is not None and id(each) not in seen and len(seen) < 32:
        seen.add(id(each))
        if isinstance(each, OSError) and each.errno == errno.EMFILE:
            return each
        each = each.__cause__ or each.__context__
    return None


def files_limit_error(exc: BaseException, limit: int, own: int, who: str, users: str,
                      roomy: int) -> OpenFilesLimitError | None:
    """What to change, if ``exc`` is the ``open_files`` limit of ``who`` (a process) reached.

    ``None`` when ``exc`` has no ``EMFILE`` in its chain. ``own``: the descriptors the process
    held before anything of ``users`` (what opens the rest) opened one; ``roomy``: a limit
    that leaves room for most.
    """
    if out_of_descriptors(exc) is None:
        return None
    what = bounded_text(describe_exception(exc), 300)
    return OpenFilesLimitError(
        f"limits open_files={limit} was reached in {who} ({what}): the process held {own} "
        f"file descriptors of its own (its standard streams and its links to shoal), which "
        f"leaves {max(limit - own, 0)} to {users}; give a larger open_files (at least "
        f"{max(2 * limit, roomy)} leaves room for them), or none", limit, own)


#: This process's ``open_files`` limit, when it is an agent's process started with one: the
#: arguments of :func:`files_limit_error` but the error (see :func:`note_files_limit`)
_process_files_limit: tuple[int, int, str, str, int] | None = None


def note_files_limit(limit: int, own: int, who: str, users: str, roomy: int) -> None:
    """Say that this process runs under an ``open_files`` limit (an agent's process does).

    From then on :func:`within_files_limit` words the ``EMFILE`` errors of the calls run
    here (a tool's files, a model's connections) as the limit reached.
    """
    global _process_files_limit
    _process_files_limit = (limit, own, who, users, roomy)


def within_files_limit(exc: BaseException) -> BaseException:
    """``exc``, or an :class:`OpenFilesLimitError` if it is this process's limit reached."""
    if _process_files_limit is None:
        return exc
    return files_limit_error(exc, *_process_files_limit) or exc
