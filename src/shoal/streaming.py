"""Streaming a run to its caller: ``async for item in lead.stream("prompt"): ...``.

An :class:`EventStream` yields every event of one run, in the order it happened, each with its
lineage; the text of every model reply as :class:`~shoal.events.TextDelta` pieces while the
model generates it (parallel subagents' pieces interleaved in the order they arrive, each
tagged with its agent's lineage); and, as the last item, the run's result: an
:class:`~shoal.agents.result.AgentResult` for :meth:`shoal.Agent.stream`, a
:class:`~shoal.outcome.RunResult` for :func:`shoal.stream`, :meth:`shoal.Runtime.stream` and
:meth:`shoal.openrun.OpenRun.events`. The result is always last and always there: a run that
fails ends the stream with its failed result (``status``, ``error``), not with an exception
that would lose what came before.

The run never waits for the consumer. Its events go into a buffer of ``buffer`` items
(:data:`DEFAULT_BUFFER` unless given); while the consumer is behind by that many:

1. a new text piece joins the unread piece of the same agent's turn (nothing is lost);
2. progress events (text pieces that cannot join, :class:`~shoal.events.NodeQueued`,
   :class:`~shoal.events.NodeStarted`, :class:`~shoal.events.NodeRetrying`) are left out,
   and one :class:`~shoal.events.EventsDropped`, where the first of them was, says how many,
   of which kinds (those left out later join it until it is read: a reader far behind gets
   one per catching up);
3. every other event (how each agent, node and run started or ended, model turns, retries,
   approvals) is kept beyond the bound: they are bounded by the size of the run.

Stopping early stops the run: a stream closed before its end cancels the run and waits for it
to end (every outcome is still recorded, in the journal too; the stream's ``result`` then
holds them). ``async with agent.stream(...)
as events:`` closes it at the end of the block, ``await events.aclose()`` at once (also from
another task than the one reading it, whose loop then ends); so does cancelling the reading
task while it waits for the next item. After a ``break`` (or an
exception in the loop's body) it is closed when the stream is collected, at once for ``async
for item in agent.stream(...)``, which holds it nowhere else.

The run starts when iteration starts (a stream never iterated runs nothing); a problem found
before anything runs (a :class:`~shoal.exceptions.PlanError`, a
:class:`~shoal.exceptions.ConfigError`) is raised by the first step of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Generic, TypeVar

from shoal.clock import running_loop
from shoal.events import (
    Event,
    EventsDropped,
    EventSink,
    NodeQueued,
    NodeRetrying,
    NodeStarted,
    TextDelta,
)
from shoal.exceptions import ConfigError, RunNotEndedError, ended_with
from shoal.merge import shown

__all__ = ["DEFAULT_BUFFER", "EventStream", "Started", "check_buffer"]

R = TypeVar("R")

#: How many unread items a stream holds before it starts to join text and leave out progress.
DEFAULT_BUFFER = 10_000

#: What may be left out when the consumer is behind: the rest says how everything ended.
_PROGRESS = (TextDelta, NodeQueued, NodeStarted, NodeRetrying)

STOPPED = "the caller stopped reading the run's events"


def check_buffer(buffer: object) -> int:
    """``buffer`` as a bound, or :class:`ConfigError` saying what it must be."""
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ConfigError(f"buffer must be a whole number of events, 1 or more, got "
                          f"{shown(buffer)}")
    return buffer


@dataclass(frozen=True, slots=True)
class Started(Generic[R]):
    """A run a stream follows: how to wait for its result, and how to cancel it."""

    #: a coroutine function giving the run's result (a failed run's too, never raising for it)
    result: Callable[[], Coroutine[Any, Any, R]]
    #: cancels the whole run, with a reason
    cancel: Callable[[str], None]


class _Slot:
    """One unread item: an event, the text pieces joined to it, or a count of left-out events."""

    __slots__ = ("drops", "event", "parts")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.parts: list[str] | None = None
        self.drops: dict[str, int] | None = None

    def take(self) -> Event:
        if self.parts is not None:
            assert isinstance(self.event, TextDelta)
            return replace(self.event, text="".join(self.parts))
        if self.drops is not None:
            assert isinstance(self.event, EventsDropped)
            return replace(self.event, count=sum(self.drops.values()), kinds=dict(self.drops))
        return self.event


class _Buffer:
    """The sink a stream gives its run: a bounded buffer with the policy of the module doc."""

    wants_text = True  # the run streams its models' replies for this sink (see wants_text)

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.closed = False
        self.dropped = 0  # events left out so far
        self._slots: deque[_Slot] = deque()
        self._text: dict[str, _Slot] = {}  # lineage -> its unread text piece, still joinable
        # the unread EventsDropped: what is left out joins it until it is read, so that a
        # reader far behind gets one per catching up, not one per event kept in between
        self._marker: _Slot | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __call__(self, event: Event) -> None:
        """Take one event from the run; never blocks, never raises."""
        if self.closed:
            return
        if len(self._slots) >= self.bound and self._overflow(event):
            return
        slot = _Slot(event)
        self._slots.append(slot)
        if isinstance(event, TextDelta):
            self._text[event.lineage] = slot
        else:  # the agent's turn moved on: its next text is no longer the same piece
            self._text.pop(event.lineage, None)
        self.wake()

    def _overflow(self, event: Event) -> bool:
        """Join or leave out ``event`` (``True``), or say it must be kept (``False``)."""
        if isinstance(event, TextDelta):
            slot = self._text.get(event.lineage)
            if slot is not None:
                if slot.parts is None:
                    assert isinstance(slot.event, TextDelta)
                    slot.parts = [slot.event.text]
                slot.parts.append(event.text)
                return True
        if not isinstance(event, _PROGRESS):
            return False
        self.dropped += 1
        marker = self._marker
        if marker is None:
            marker = _Slot(EventsDropped(run_id=event.run_id, time=event.time, count=0,
                                         kinds={}))
            marker.drops = {}
            self._slots.append(marker)
            self._marker = marker
            self.wake()
        assert marker.drops is not None
        marker.drops[event.kind] = marker.drops.get(event.kind, 0) + 1
        return True

    def pop(self) -> Event | None:
        """The oldest unread item, or ``None``."""
        if not self._slots:
            return None
        slot = self._slots.popleft()
        if slot is self._marker:
            self._marker = None
        lineage = slot.event.lineage
        if self._text.get(lineage) is slot:
            del self._text[lineage]
        return slot.take()

    async def wait(self) -> None:
        """Until an item arrives or :meth:`wake` is called."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if not self._slots:  # one may have come from the run's thread as this began
                await self._waiter
        finally:
            self._waiter = None

    def wake(self, *_: object) -> None:
        """Wake the consumer waiting in :meth:`wait`, if any (from any thread).

        An open run's stream may be read on another event loop than the run's (a thread's
        ``asyncio.run``): its waiter is then woken on its own loop, which a future set
        from the run's thread would never wake.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        if running_loop() is loop:
            waiter.set_result(None)
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_wake_up, waiter)


class _SharedBuffer(_Buffer):
    """An open run's buffer: it may be read on another thread's loop than the run's.

    Without the lock, the run's thread joined text to a piece (counted a left-out event in
    an EventsDropped) that the reader had just taken: the text (the count) was lost. Only
    these buffers take it: a lock costs ~4,000 instructions per event (cachegrind).
    """

    def __init__(self, bound: int) -> None:
        super().__init__(bound)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        """Take one event from the run; never raises (waits only for a reader's pop)."""
        with self._lock:
            super().__call__(event)

    def pop(self) -> Event | None:
        """The oldest unread item, or ``None``."""
        with self._lock:
            return super().pop()


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Run(Generic[R]):
    """What a stream knows of its run; its iterator holds this, never the stream itself.

    (A stream left by ``break`` is then freed at once, and the loop closes its iterator,
    which cancels the run: a cycle between the two would keep both until a garbage
    collection.)
    """

    def __init__(self, begin: Callable[[EventSink], Started[R]], buffer: _Buffer) -> None:
        self.begin = begin
        self.buffer = buffer
        self.started: Started[R] | None = None
        self.iterating = False  # whether its iterator has begun (it then stops the run itself)
        self.task: asyncio.Future[R] | None = None  # the run's result, once iteration began
        self.waiting = False  # its iterator waits for the next item (in a reader's task)
        self.stopping = False  # closed by another task than the one reading it
        self.ended = False
        self.result: R | None = None

    def iterate(self) -> AsyncGenerator[Event | R, None]:
        """The stream's items (a generator holding this run, not the stream)."""
        return _iterate(self)


class EventStream(Generic[R]):
    """A run's events, then its result, as an async iterator (see the module docstring).

    Made by :meth:`shoal.Agent.stream`, :func:`shoal.stream`, :meth:`shoal.Runtime.stream`
    and :meth:`shoal.openrun.OpenRun.events`. Each item is an :class:`~shoal.events.Event`,
    except the last, which is the result (``R``). Use it once.
    """

    def __init__(self, begin: Callable[[EventSink], Started[R]], *,
                 buffer: int = DEFAULT_BUFFER, eager: bool = False) -> None:
        # an open run's (eager) may be read on another thread than the run's: locked
        bound = check_buffer(buffer)
        self._run = _Run(begin, _SharedBuffer(bound) if eager else _Buffer(bound))
        if eager:  # the run is started already (an open run): listen from now on
            self._run.started = begin(self._run.buffer)
        self._items = self._run.iterate()
        self._reading = False  # a task waits for the next item

    @property
    def result(self) -> R:
        """The run's result, once the stream has yielded it, or was closed and its run ended.

        A stream closed early (``break``, :meth:`aclose`) stopped its run: the result then
        holds what finished before and the calls cancelled. A run that ended with an error
        of its own (its journal could not be written) has no result: that error is raised
        again, as the stream raised it.
        """
        if not self._run.ended:
            task = self._run.task
            if task is not None and task.done() and not task.cancelled():
                failed = task.exception()
                if failed is not None:  # not "has not ended yet": it ended, and how
                    raise ended_with(failed, "the stream's run ended with this error, so it "
                                             "has no result")
                # closed early: the run has ended all the same (was: "not ended yet", and
                # what had finished was out of reach)
                return task.result()
            raise RunNotEndedError("the stream has not ended yet: its last item is the result; "
                                   "read it after 'async for item in stream' ends")
        return self._run.result  # type: ignore[return-value]  # set with ended

    @property
    def dropped(self) -> int:
        """How many events were left out so far because the consumer was behind."""
        return self._run.buffer.dropped

    def __aiter__(self) -> AsyncIterator[Event | R]:
        return self

    async def __anext__(self) -> Event | R:
        # one reader at a time: a second task's read met the generator's "already running"
        if self._reading:
            raise RuntimeError("this stream is being read by another task: a stream has one "
                               "reader (read it in one task and hand items on, or give the "
                               "run on_event= sinks for other listeners)")
        self._reading = True
        try:
            return await anext(self._items)
        finally:
            self._reading = False

    async def aclose(self) -> None:
        """Stop reading: a run still going is cancelled, and this waits for it to end."""
        run = self._run
        if not run.iterating and run.started is not None:
            # an open run's stream, closed before its first item: its iterator never began,
            # so closing that would neither stop the run nor the buffer filling up unread
            run.iterating = True  # (once)
            run.task = _stop(run.buffer, run.started)
            await asyncio.wait({run.task})
        task = run.task
        if task is not None and run.waiting:
            # another task waits in the loop for the next item: the iterator cannot be closed
            # under it (RuntimeError, and the run went on), so that task's loop ends instead
            run.stopping = run.buffer.closed = True
            if not task.done():
                run.started.cancel(STOPPED)  # type: ignore[union-attr]  # set with task
            run.buffer.wake()
            await _ended(task)
            return
        await self._items.aclose()

    async def __aenter__(self) -> EventStream[R]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


async def _iterate(run: _Run[R]) -> AsyncGenerator[Event | R, None]:
    """The stream's items: the run's events as they come, then its result."""
    buffer = run.buffer
    if run.iterating:  # closed before it began (see EventStream.aclose)
        return
    run.iterating = True
    started = run.started if run.started is not None else run.begin(buffer)
    run.started = started
    task = run.task = asyncio.ensure_future(started.result())
    task.add_done_callback(buffer.wake)
    task.add_done_callback(_retrieve)  # a stream stopped early does not read it
    finished = False
    try:
        while True:
            if run.stopping:  # closed by another task while this one waited: no more items
                return
            event = buffer.pop()
            if event is not None:
                yield event
            elif task.done():
                break
            else:
                run.waiting = True
                try:
                    await buffer.wait()
                finally:
                    run.waiting = False
        finished = True
        buffer.closed = True
        run.result = task.result()  # a bug's exception, after every event
        run.ended = True
        yield run.result
    finally:
        if not finished:  # the consumer left early: cancel the run, wait for its end
            buffer.closed = True
            if not task.done():
                started.cancel(STOPPED)
                await asyncio.wait({task})


def _stop(buffer: _Buffer, started: Started[R]) -> asyncio.Future[R]:
    """Stop a run nobody reads any more; its result, once it has ended."""
    buffer.closed = True
    task = asyncio.ensure_future(started.result())
    task.add_done_callback(_retrieve)
    started.cancel(STOPPED)
    return task


async def _ended(task: asyncio.Future[Any]) -> None:
    """Until ``task`` is done, also when it runs on another loop than this one's.

    (An open run's stream may be read on a thread's loop: a plain wait here would be woken
    from that thread, which this loop does not notice.)
    """
    loop = asyncio.get_running_loop()
    if task.get_loop() is loop:
        await asyncio.wait({task})
        return
    done = loop.create_future()

    def tell(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # this loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(_wake_up, done)

    try:
        task.get_loop().call_soon_threadsafe(task.add_done_callback, tell)
    except RuntimeError:  # its loop is closed: the task is as done as it will ever be
        return
    await done


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as read (it is the stream's to report, or nobody's)."""
    if not task.cancelled():
        task.exception()
