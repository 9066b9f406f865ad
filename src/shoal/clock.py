"""The one clock a run reads: loop time for its timers and durations, epoch seconds for dates.

The driver and the runtime read time only through a :class:`Clock`, never from ``time`` or
the loop directly, so a clock that is not the wall clock (``shoal.testing``'s virtual clock)
drives all of a run: its timers (retry back-offs, rate-limit waits, the deadline), every time
it records (``Outcome.started_at``, ``makespan``), and every date it journals (the run's
``started_at`` and ``finished_at``, when approvals were asked for).

By default a run uses the clock of the loop it runs on (:func:`clock_of`): the loop's own
``time()`` and the wall clock's epoch, or the loop's own :class:`Clock` if it has one (a
:class:`shoal.testing.VirtualClockLoop` does). Give ``Runtime(clock=...)`` to choose another;
its :meth:`Clock.time` must be the time the loop's timers use, as the runtime's timers are loop
timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable

from shoal.exceptions import ConfigError
from shoal.limits import finite
from shoal.merge import shown

__all__ = ["Clock", "clock_of", "forget_clock", "read_epoch", "running_loop"]


class Clock:
    """The clock of one event loop: ``time()`` for timers and durations, ``epoch()`` for dates.

    Args:
        loop: the event loop whose timers the run sets.
    """

    __slots__ = ("__weakref__", "_shift", "loop", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if type(self) is not Clock and "time" in _defined_below_clock(type(self)):
            # the instance's time (the loop's, below) would hide it: refuse, not ignore it
            raise ConfigError(
                f"{type(self).__qualname__} overrides Clock.time(): a run's timers are the "
                "loop's timers, so its time must be the loop's; override epoch() (dates) or "
                "from_monotonic() instead, or run on a loop whose time() is the one you want")
        self.loop = loop
        #: Seconds on the loop's clock (a bound method: read on every transition).
        self.time: Callable[[], float] = loop.time
        # backends stamp when work began with time.monotonic(): how far that is from loop time
        self._shift = time.monotonic() - loop.time()

    def epoch(self) -> float:
        """Now in epoch seconds (the wall clock): when runs start and end, for the journal."""
        return time.time()

    def from_monotonic(self, stamp: float) -> float | None:
        """A backend's ``time.monotonic()`` stamp on this clock (``None``: it has no meaning here).

        Backends that run calls on threads or in other processes say when the work really
        began on the monotonic clock (see :class:`~shoal.executors.base.Executor`).
        """
        return stamp - self._shift

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Call ``callback`` at ``when`` on this clock (a loop timer)."""
        return self.loop.call_at(when, callback)


def _defined_below_clock(cls: type) -> set[str]:
    """The names the subclasses between ``cls`` and :class:`Clock` define."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is Clock:
            break
        names.update(vars(klass))
    return names


def read_epoch(clock: Clock) -> float:
    """``clock.epoch()``, checked: finite epoch seconds, else :class:`ConfigError`.

    A date the journal keeps must be a number (a NaN cannot be stored, and orders nothing).
    """
    try:
        epoch = clock.epoch()
    except Exception as exc:
        raise ConfigError(f"the run's clock ({type(clock).__qualname__}) could not say the "
                          f"date: its epoch() raised {type(exc).__name__}: {exc}") from exc
    if isinstance(epoch, bool) or not isinstance(epoch, int | float) or not finite(epoch):
        raise ConfigError(f"the run's clock ({type(clock).__qualname__}) gave the date "
                          f"{shown(epoch)}: its epoch() must return finite epoch seconds")
    return float(epoch)


#: Where the clock made for a loop that keeps none of its own is kept: on the loop itself, so
#: there is one per loop while runs use it, not one per run (an agent runs each of its turns
#: as a run; a swarm, thousands at once), and it goes with its loop. The loop holds it weakly:
#: the clock holds its loop, and a loop holding its clock would be a reference cycle, keeping
#: a caller's finished loop (and what it holds) until the garbage collector's next full pass.
_MADE = "_shoal_made_clock"


def clock_of(loop: asyncio.AbstractEventLoop | None = None) -> Clock:
    """The clock of ``loop`` (default: the running loop): its own, if it keeps one."""
    if loop is None:
        loop = asyncio.get_running_loop()
    own = getattr(loop, "shoal_clock", None)
    if isinstance(own, Clock):
        return own
    kept = getattr(loop, _MADE, None)
    made = kept() if isinstance(kept, weakref.ref) else None
    if isinstance(made, Clock) and made.time == loop.time:  # else its time() was replaced
        return made
    made = Clock(loop)
    # (not contextlib.suppress: its three calls cost more than the rest; and the clock is made
    # again by each run that starts once the last one's clock has gone, as shoal.run's do)
    try:
        setattr(loop, _MADE, weakref.ref(made))
    except AttributeError:  # a loop that takes no attribute: one per run
        return made
    return made


def forget_clock(loop: asyncio.AbstractEventLoop) -> None:
    """Drop the clock :func:`clock_of` keeps on ``loop`` (a loop that has run its last).

    The loop holds it weakly (no cycle): this only tidies the loop's attribute away.
    """
    with contextlib.suppress(AttributeError):
        delattr(loop, _MADE)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any (``None`` where none runs)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
