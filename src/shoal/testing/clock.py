"""A virtual-time asyncio event loop: ``asyncio.sleep(3600)`` returns at once, an hour later.

:class:`VirtualClockLoop` keeps its own clock. Whenever the loop has nothing ready to run and
would block until its next timer, the clock jumps forward to that timer instead of the thread
sleeping. Timers, ``asyncio.sleep``, ``asyncio.timeout`` and ``loop.call_later`` all follow the
virtual clock, and so does everything shoal measures (``Outcome.started_at``, ``makespan``):
code costs no virtual time, so a run's timings are exactly what its sleeps and its scheduling
make them, with no noise and no timer resolution to blur them.

Only pure-asyncio code belongs on this loop. Work on real threads or processes
(``run_in_executor``, ``asyncio.to_thread``, shoal's thread executor for sync tools, subprocesses)
is invisible to the virtual clock: while the loop waits for such work with any timer pending,
virtual time leaps past that timer as if the work took no time, so timeouts fire early and
measured durations are wrong. Results still arrive (the loop keeps polling real I/O), but their
timings mean nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from contextvars import Context
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from shoal.clock import Clock
from shoal.limits import finite
from shoal.merge import shown

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["VirtualClockLoop", "run_virtual"]

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")


class _Clock:
    """The virtual time shared by a loop and its selector."""

    __slots__ = ("now",)

    def __init__(self, start: float) -> None:
        self.now = start


#: what asyncio adds to now to find the timers due (its ``_clock_resolution``)
_RESOLUTION = time.get_clock_info("monotonic").resolution


class _JumpingSelector(selectors.BaseSelector):
    """A selector that advances the virtual clock instead of blocking for a timeout.

    asyncio calls ``select(timeout)`` with ``timeout`` equal to the wait until its next timer
    (``0`` when callbacks are ready, ``None`` when there is no timer at all). Real I/O is always
    polled first without blocking, so sockets and cross-thread wake-ups still get through.
    """

    def __init__(self, clock: _Clock, next_timer: Callable[[], float | None]) -> None:
        self._clock = clock
        self._next_timer = next_timer
        self._real = selectors.DefaultSelector()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Ready I/O now; if there is none, jump to the next timer rather than waiting for it."""
        if timeout is None:
            # No timer at all: only real I/O (or another thread) can wake the loop, so wait
            # for it in real time; jumping would leave nothing to jump to.
            return self._real.select(None)
        events = self._real.select(0)
        if not events and (timeout > 0 or self._stuck()) and not self._leap():
            return self._real.select(None)  # ``sleep(inf)``: it waits for good, as any loop
        return events

    def _stuck(self) -> bool:
        """Whether the next timer is due now but the loop cannot see it (see :meth:`_leap`).

        Past 2**24 s a timer set less than half the float's step ahead (``call_later(1e-9)``;
        ``sleep(0.01)`` near 1e300) is due at now itself, which asyncio finds not yet due
        (now plus its resolution is now) and selects for 0 s: it would spin for good.
        """
        when = self._next_timer()
        now = self._clock.now
        return when is not None and when <= now and not when < now + _RESOLUTION

    def _leap(self) -> bool:
        """Jump to the next timer; ``False`` if it is never due (``sleep(inf)``).

        To the timer itself, not by the ``timeout`` asyncio gives: that is capped at a day,
        and ``sleep(1e300)`` would take 1e295 turns of the loop. Just past it where the float
        cannot tell the timer from now plus the clock's resolution (from 2**24 s, 194 days,
        on: after a long wait, or from a large ``start``), or the loop would find it not yet
        due and select again with a timeout of 0, for good.
        """
        when = self._next_timer()
        if when is None or not math.isfinite(when):
            return False
        due = when if when + _RESOLUTION > when else math.nextafter(when, math.inf)
        self._clock.now = max(self._clock.now, due)
        return True

    def register(self, fileobj: FileDescriptorLike, events: int,
                 data: Any = None) -> selectors.SelectorKey:
        """Watch ``fileobj`` on the real selector."""
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        """Stop watching ``fileobj``."""
        return self._real.unregister(fileobj)

    def modify(self, fileobj: FileDescriptorLike, events: int,
               data: Any = None) -> selectors.SelectorKey:
        """Change what is watched on ``fileobj``."""
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        """The real selector's registrations."""
        return self._real.get_map()

    def close(self) -> None:
        """Close the real selector."""
        self._real.close()


class _Timer(asyncio.TimerHandle):
    """A loop timer that, due at the same time as another, fires in the order it was set.

    asyncio orders its heap of timers by due time alone. On a real loop the clock moves
    between two ``call_later``, so timers set one after another are due one after another;
    on the virtual clock thousands are due at the very same time, and the heap fired them
    in no particular order (50 calls sleeping a second ended 0, 2, 6, 14, 30, 49, 48, ...).
    """

    __slots__ = ("_order",)
    _order: int  # set by VirtualClockLoop.call_at: how many timers the loop set before it

    def __lt__(self, other: _Timer) -> bool:  # type: ignore[override]
        # every timer of the loop is one (see VirtualClockLoop.call_at): no type check, as
        # heapq compares timers at each push and pop
        when: float = other._when  # type: ignore[attr-defined]
        mine: float = self._when  # type: ignore[attr-defined]
        return mine < when or (mine == when and self._order < other._order)


class _VirtualClock(Clock):
    """A :class:`~shoal.clock.Clock` on a virtual loop: its dates are virtual too."""

    __slots__ = ("_loop_epoch",)

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__(loop)
        self._loop_epoch = loop.epoch

    def epoch(self) -> float:
        """The loop's virtual epoch (see :meth:`VirtualClockLoop.epoch`)."""
        return self._loop_epoch()

    def from_monotonic(self, stamp: float) -> float | None:
        """``None``: a thread's real-time stamp says nothing about virtual time."""
        return None


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual and which never sleeps waiting for a timer.

    Args:
        start: the virtual time the loop starts at (``loop.time()`` before anything waits):
            a finite number (``TypeError``/``ValueError`` otherwise).

    Only for pure-asyncio code; see the module docstring for why threads do not mix.
    """

    def __new__(cls, start: float = 0.0, *args: Any, **kwargs: Any) -> VirtualClockLoop:
        """Refuse a ``start`` that is not a finite number, before the loop exists.

        (A loop whose ``__init__`` raised complains when it is collected.)
        """
        if isinstance(start, bool) or not isinstance(start, int | float):
            raise TypeError(f"VirtualClockLoop's start must be a number of seconds, got "
                            f"{type(start).__name__}")
        if not finite(start):  # timers at inf or nan would never be due, or always
            raise ValueError(f"VirtualClockLoop's start must be a finite number, got "
                             f"{shown(start)}")
        del args, kwargs  # a subclass's own arguments, for its __init__
        return super().__new__(cls)

    def __init__(self, start: float = 0.0) -> None:
        start = float(start)
        self._clock = _Clock(start)
        self._start = start
        self._wall_start = time.time()
        self._timers_set = itertools.count()  # orders timers due at one time (see _Timer)
        super().__init__(_JumpingSelector(self._clock, self._next_timer))
        #: The clock shoal's runs on this loop read (see :mod:`shoal.clock`).
        self.shoal_clock: Clock = _VirtualClock(self)

    def time(self) -> float:
        """The virtual time in seconds: the start, plus every wait the loop skipped."""
        return self._clock.now

    def call_at(self, when: float, callback: Callable[[*_Ts], object],
                *args: *_Ts, context: Context | None = None) -> asyncio.TimerHandle:
        """Call ``callback(*args)`` at ``when``: after the timers due then set before it.

        asyncio's own ``call_at``, with a timer that keeps the order timers were set in
        among those due at one time (see :class:`_Timer`).
        """
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self.get_debug():
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        timer = _Timer(when, callback, args, self, context)
        timer._order = next(self._timers_set)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]  # this frame
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _next_timer(self) -> float | None:
        """When the loop's next timer is due, or ``None``.

        asyncio's heap of timers: its head is not a cancelled one when the loop selects.
        """
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else None

    def epoch(self) -> float:
        """Now in epoch seconds on the virtual clock.

        That is when the loop was made, plus the virtual time since. shoal dates runs and
        agents with it (their ``started_at``) on this loop, so that the times it journals,
        dates and offsets alike, are on one clock.
        """
        return self._wall_start + (self._clock.now - self._start)


def run_virtual(coro: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualClockLoop`, like :func:`asyncio.run`.

    The loop is closed afterwards, after async generators and the default executor are shut
    down, as :func:`asyncio.run` does it, except that tasks left that ignore their
    cancellation are waited for a grace (virtual: at once), not forever, as ``run_sync``
    waits for them (see :func:`shoal.runtime.close_runner`).
    """
    from shoal.runtime import close_runner  # (here: shoal.testing imports little)

    runner = asyncio.Runner(debug=debug, loop_factory=VirtualClockLoop)
    loop = runner.get_loop()
    try:
        return runner.run(coro)
    finally:
        close_runner(runner, loop, set_loop=False)
