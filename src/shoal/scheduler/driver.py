"""The async driver: carries out the state machine's decisions on the event loop.

Each call attempt is one asyncio task, which runs the tool's coroutine itself. When the tool
ends, the same task feeds the result to the state machine and immediately carries out what it
decides (start, cancel, set a timer), so a dependent starts in the same loop iteration its
last input finishes: no polling loop, no lock-step rounds, no callback hop. Retry back-offs,
rate-limit waits and the run deadline are timers on the run's clock (:mod:`shoal.clock`), the
only place the driver reads time.

The driver never reads the state machine's slots: each input returns :class:`Decisions`
that carry what to start (each :class:`~shoal.executors.base.Call`), what ended (with its
outcome, for the journal and for whoever waits), what to cancel, which timers to set, whom
to ask for approval (with what the person is shown) and the events to publish; a few
queries (``outcome_at``, ``awaiting``, ``ended`` ...) answer the rest.

Attempts never raise into the driver: a tool's error, a timeout and a cancellation all come back
as an :class:`~shoal.scheduler.state.AttemptResult`. That is why the driver keeps its own set of
tasks instead of an ``asyncio.TaskGroup`` (which would cancel every sibling on one error); it
still never leaves a task behind: on every exit path it cancels and awaits whatever is running
(but a task that ignores its cancellation for :data:`ABANDON_GRACE` seconds is abandoned, as a
thread's call is: its outcome is recorded and the run ends without it).

With a store, the driver journals the run (:mod:`shoal.store.journal`): each input's outcomes
and the attempts it starts go to the journal before the attempts are created, and each
attempt awaits the journal's barrier before it runs, so with a durable store an outcome is
committed before anything that depends on it starts. A resumed run first restores the
outcomes the journal replays and holds in doubt what may not run twice.

Approvals: the state machine says which nodes to ask about (:class:`~shoal.scheduler.state.Ask`);
the driver hands that to the run's :class:`~shoal.approvals.desk.RunApprovals`, which keeps
each request in the ledger, asks the runtime's :class:`~shoal.approvals.desk.ApprovalDesk`,
and feeds the answer back to the state machine (see :mod:`shoal.approvals`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import operator
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeAlias

from shoal.approvals.desk import ApprovalDesk, RunApprovals
from shoal.approvals.policy import ApprovalRequest
from shoal.clock import Clock, clock_of, read_epoch, running_loop
from shoal.deps import Graph
from shoal.events import Event, RunFinished, RunStarted, deliver
from shoal.exceptions import (
    ConfigError,
    JournalWriteError,
    RunClosedError,
    SelfWaitError,
    ShoalError,
    StoreError,
    ToolTimeoutError,
)
from shoal.executors._results import PLAIN_RESULTS as _PLAIN
from shoal.executors._results import (
    tool_interrupt_error,
    unasked_cancel_error,
    unawaited_result,
    value_interrupt_error,
)
from shoal.executors.base import Call, Executor
from shoal.executors.inline import InlineExecutor
from shoal.executors.thread import PoolJob, ThreadExecutor
from shoal.instrumentation import RunObserver
from shoal.limits import within_files_limit
from shoal.outcome import ErrorInfo, Outcome, RunResult
from shoal.plan import _ITEM_ID, Node
from shoal.scheduler.eager import ends_in_first_step
from shoal.scheduler.gates import GiveBack
from shoal.scheduler.scope import RunScope, Settles, events_origin, inject
from shoal.scheduler.selfwait import awaiter, cycle_error
from shoal.scheduler.state import (
    AttemptResult,
    AttemptStatus,
    Decisions,
    SchedulerState,
    StopStatus,
)
from shoal.store.base import (
    AttemptEnded,
    AttemptStarted,
    CancelRequest,
    EventRecord,
    OutcomeRecord,
    RunEnded,
    RunRecord,
    RunStart,
    RunStatus,
    Store,
    run_record_with,
)
from shoal.store.claims import this_process
from shoal.store.journal import Journal
from shoal.store.resume import Resumption
from shoal.tools import Tool

__all__ = ["CallCancelled", "Driver", "Snapshot", "epoch_now"]

log = logging.getLogger("shoal")
#: Most calls run at once (see _burst) before the driver gives the loop a turn: a long
#: cascade of calls that end in their first step must not hold the loop (timers, a deadline,
#: other runs) longer than a loop turn of as many tasks would.
AT_ONCE_BURST = 1000
#: ... and after this many seconds of them (wall time), however few: a call that cannot suspend
#: may still compute a while, and a chain of such calls had a loop turn after each with tasks.
AT_ONCE_SLICE = 0.002
#: A start time earlier than any: a call's end fed with it moves no start (finish_ok_many).
_NO_START = float("-inf")
#: Lean tasks made in one go before the loop gets a turn (see _start_calls): the first of a
#: wide fan-out's calls take their first step (and set their timers) this many task creations
#: after the decision, not after all of them; each later turn makes twice as many.
LEAN_FIRST = 32
#: Seconds a cancelled or timed-out attempt's task may take to end after its cancel. One still
#: running then ignores its cancellation (it catches ``CancelledError`` and goes on): its call
#: is *abandoned*, as a thread's is (see :meth:`Driver._abandon`): its outcome is recorded,
#: and the run ends without it, its task left to end on its own time. A tool that stops when
#: cancelled ends well within it (its ``finally`` blocks run before its outcome is recorded).
ABANDON_GRACE = 5.0
#: This machine's name: where the calls of backends that run everything here ran.
HOST = socket.gethostname()
_FINISHED_AT = operator.attrgetter("finished_at")
#: Who waits for a node's outcome: one future, or several.
_Waiting: TypeAlias = "asyncio.Future[Outcome] | list[asyncio.Future[Outcome]]"


def epoch_now(loop: asyncio.AbstractEventLoop | None = None) -> float:
    """Now in epoch seconds, on the clock of ``loop`` (default: the running loop, if any).

    A loop with a clock of its own (:class:`shoal.testing.VirtualClockLoop`) tells its own:
    a run's date and its times, which count on the loop's clock, must be on one clock, or a
    journal's runs and steps would not line up. Any other loop: the wall clock.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return time.time()
    return clock_of(loop).epoch()


def _reader(clock: Clock, loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What reads ``clock``'s time: its ``time``, or the very function it calls.

    A plain asyncio loop's ``time()`` is ``time.monotonic()`` in a Python frame of its own:
    read directly, each of the run's clock readings (two per call) costs no frame.
    """
    reads = clock.time
    if (getattr(reads, "__func__", None) is asyncio.BaseEventLoop.time
            and getattr(reads, "__self__", None) is loop):
        return time.monotonic
    return reads


def _shifted(event: Event, shift: float, epoch: float) -> Event:
    """``event`` timed from ``shift`` seconds earlier: from the start at ``epoch``."""
    if isinstance(event, RunStarted):  # the wall-clock time its time counts from
        return replace(event, time=event.time + shift, epoch=epoch)
    return replace(event, time=event.time + shift)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A moment of a run, for live views: counts, and what is in flight since when."""

    run_id: str
    total: int
    elapsed: float
    counts: Mapping[str, int]
    running: Sequence[tuple[str, str, str, float]]  # (node id, tool, executor, started at)
    finished: bool
    awaiting_approval: Sequence[tuple[str, str, float]] = ()  # (node id, tool, waiting since)
    #: (node id, tool, why) of the calls held until an abandoned call's work ends
    held: Sequence[tuple[str, str, str]] = ()


class Driver:
    """Runs one plan's state machine to completion on the current event loop."""

    # slots: a swarm holds a run per agent turn in flight, thousands at once; an instance
    # dict of this many attributes costs a kilobyte and is one more object for the collector
    __slots__ = (
        "_at_once", "_at_once_contexts", "_at_once_stopped", "_before_start", "_burst_due",
        "_bursting", "_clock",
        "_context", "_ctrl_c_here", "_deadline", "_desk", "_early", "_ends_each", "_entered",
        "_epoch",
        "_executor_for", "_executors", "_finished", "_given_clock", "_graced", "_handed",
        "_handing", "_holding", "_hosts", "_internal", "_journal", "_journaled_early", "_late",
        "_lean_due",
        "_loop",
        "_observer", "_on_end", "_on_pool", "_origin_epoch",
        "_pool_returned", "_quick",
        "_resume",
        "_run_approvals", "_run_record", "_session", "_settling", "_shift", "_sink_failures",
        "_sinks", "_starting",
        "_stopped_late", "_store", "_streaming", "_t0", "_task_of", "_task_returned",
        "_taskless", "_tasks", "_time", "_timers",
        "_to_pool", "_waits", "_watchers", "cancelled_reason", "lineage", "scope", "sinks", "state",
    )

    def __init__(
        self,
        state: SchedulerState,
        executors: Mapping[str, Executor],
        *,
        sinks: Sequence[Callable[[Event], None]] = (),
        deadline: float | None = None,
        store: Store | None = None,
        run_record: RunRecord | RunStart | None = None,
        resume: Resumption | None = None,
        approvals: ApprovalDesk | None = None,
        lineage: str = "",
        scope: RunScope | None = None,
        executor_for: Callable[[str], Executor] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.state = state
        # every time the driver reads or sets (timers, run times, dates) is on this clock;
        # None: the clock of the loop the run starts on
        self._given_clock = clock
        self.lineage = lineage
        self.scope = scope  # what nodes that start nested runs (agents, patterns) build on
        self._desk = approvals if approvals is not None else ApprovalDesk(None)
        self._store = store
        # made when the run first asks about a call (see _approvals): most runs never do
        self._run_approvals: RunApprovals | None = None
        self._executors = dict(executors)
        # a node added while the run goes (an open run, a map's items) may need a backend
        # that the run did not start with: the runtime makes it (it starts it once)
        self._executor_for = executor_for
        # Rarely used containers are made on first use: each run of an agent's turn would
        # otherwise allocate (and keep, while the turn waits on its model) a dozen empty ones.
        self._starting: dict[str, asyncio.Future[Executor]] | None = None  # backends starting
        self._sinks = tuple(sinks)
        self._sink_failures: dict[int, int] = {}  # by id(sink): see events.deliver
        self.sinks = tuple(sinks)  # the observers' own sinks (not the journal's), for nested runs
        # the journal's and the instrumentation's sinks: they see the run's own clock
        self._internal: tuple[Callable[[Event], None], ...] = ()
        # seconds from the outermost run's start to this one's: the observers' events count
        # from the outermost start, so that every event of a composition is on one clock
        self._shift = 0.0
        self._origin_epoch = 0.0  # the wall-clock time of the outermost start
        # whether a KeyboardInterrupt on the run's loop may be a Ctrl-C (see _start)
        self._ctrl_c_here = True
        self._deadline = deadline
        self._resume = resume
        if resume is not None:  # the nodes the run adds as it goes meet the journal on adding
            state.fate_of = resume.fate_of
        self._run_record = run_record
        self._session = resume.session if resume is not None else 1
        self._journal: Journal | None = None
        # A durable journal gets every outcome and attempt as it happens; a memory store,
        # which dies with the process anyway, gets the outcomes once, when the session ends.
        self._streaming = store is not None and store.durable
        # A memory journal whose outcomes must outlive this process as they come (a remote
        # agent's, mirrored to its parent so a retry replays what it finished) says so
        self._ends_each = (not self._streaming and store is not None
                           and bool(getattr(store, "journals_ends", False)))
        if store is not None:
            # only a durable journal's writer looks for cancel requests (from other processes)
            self._journal = Journal(
                store, state.run_id, on_failure=self._journal_failed,
                on_cancel=self._cancel_request if store.durable else None)
            if store.keeps_events:
                self._internal = (self._journal_event,)
        # outcomes journaled before a wide map made its items (see _journal_before_expanding)
        self._journaled_early: set[int] | None = None
        if self._streaming:
            state.before_expand = self._journal_before_expanding
        self._observer: RunObserver | None = None  # the instrumentation's (see observe)
        # position -> attempt (no task: it runs at once, see _burst, and has not yet)
        self._tasks: dict[int, Call] = {}
        # position -> the task of its attempt, for those that have one (most calls run at once
        # or on a pool have none: no pair per call to make)
        self._task_of: dict[int, asyncio.Task[None]] = {}
        # position -> the attempt run in the task that added its node (see add(here=True) and
        # run_here): no task of its own. Made on first use (most runs never hand one over)
        self._handed: dict[int, _Handed] | None = None
        # while add(here=True) adds its node: its id, then its lean attempt, if one started
        self._handing: str | Call | None = None
        # calls that end in their first step, to run at once, each in the context a task of
        # its own would have copied; those cancelled before they ran; whether a burst runs.
        # The two queues are made with the first such call (see _at_once_queues): an agent's
        # steps run has none, and an empty deque is 600 bytes per run in flight.
        self._at_once: deque[Call] | None = None
        # ... and theirs, in that order: for each call, the pair its start decision made (see
        # _start_calls): [the context as its calls started, the copy they run in]
        self._at_once_contexts: deque[list[contextvars.Context]] | None = None
        # positions of those cancelled before they ran (made on first use: an agent's steps
        # run never has one, and an empty set is 200 bytes the collector walks, per run)
        self._at_once_stopped: set[int] | None = None
        self._bursting = False
        self._entered = False  # whether the driver's context is the current one (see _report)
        self._burst_due = False  # a burst continues on the next loop turn
        # id(tool) -> its function's code, whether its calls run at once
        self._quick: dict[int, tuple[object, bool]] = {}
        # position -> the pool and job of a sync call handed to the thread pool without a
        # task (see _pool_now); positions of such calls stopped, whose end is on its way
        self._on_pool: dict[int, tuple[ThreadExecutor, PoolJob]] = {}
        # (pos, value, where, began, finished) of pool calls that returned a plain value, fed
        # to the state machine together once the pool's batch of ends is in (_pool_batch_end);
        # made on first use (an agent's steps run has none, and a swarm keeps a thousand runs)
        self._pool_returned: list[tuple[int, Any, str, float, float]] | None = None
        # positions of pool calls stopped whose end is on its way (made on first use: most
        # runs never stop one, and a swarm keeps a run per agent in flight)
        self._stopped_late: set[int] | None = None
        # (pos, value, where, began, finished) of tasks (see _attempt_inline) that returned a
        # plain value in this loop turn, fed to the state machine together on the next
        # (_task_batch_end); None while there are none
        self._task_returned: list[tuple[int, Any, str, float, float]] | None = None
        # lean attempts decided but whose task is made on a later loop turn (see _start_lean)
        self._lean_due: deque[tuple[Call, contextvars.Context]] | None = None
        # sync calls to hand to each pool on the next loop turn, all at once (see _submit)
        self._to_pool: dict[ThreadExecutor, list[tuple[Call, contextvars.Context]]] = {}
        self._hosts: dict[str, str] = {}  # backend -> where its calls run (see _here)
        self._context: contextvars.Context | None = None  # the driver's (see _attempt)
        self._settling: dict[int, list[Settles]] = {}  # position -> its attempt's board handles
        self._timers: set[asyncio.TimerHandle] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Clock | None = None
        self._time: Callable[[], float] | None = None  # self._clock.time, once running
        self._t0 = 0.0
        self._epoch = 0.0
        self._finished: asyncio.Future[None] | None = None
        # started by start_here (no task): where its result goes, and what to call at its end
        # (two fields, not a pair: a swarm holds a run per agent, each pair one more object)
        self._taskless: asyncio.Future[RunResult] | None = None
        self._on_end: Callable[[Driver], None] | None = None
        self._before_start: list[Decisions] | None = None
        # position -> who waits for its outcome: one future (most nodes: the agent that added
        # it), a list only once there are more (a swarm holds one per agent in flight)
        self._watchers: dict[int, _Waiting] = {}
        # item id -> waiting: items of maps whose list is not known yet (see outcome_of)
        self._early: dict[str, list[asyncio.Future[Outcome]]] = {}
        self.cancelled_reason = ""
        # id(call) -> (its grace timer, the status it ends with if abandoned) for attempts
        # whose task was cancelled and has not ended yet; id(call) -> call for the attempts
        # abandoned (their end, if it ever comes, is not reported). Made on first use.
        self._graced: dict[int, tuple[asyncio.TimerHandle, AttemptStatus]] | None = None
        self._late: dict[int, Call] | None = None
        # position -> an abandoned call whose work still runs and holds others (resource keys,
        # exclusivity, resource_limits slots) until it ends: let go at the run's end, so a
        # thread that never returns does not keep this driver alive. Made on first use.
        self._holding: dict[int, Call] | None = None
        # position -> the nodes its attempt waits on now (see wait_from); made on first use
        self._waits: dict[int, list[int]] | None = None

    @property
    def _approvals(self) -> RunApprovals:
        """The run at the approval desk (made on first use)."""
        if self._run_approvals is None:
            self._run_approvals = RunApprovals(
                self._desk, self.state, self._apply, self.now, store=self._store,
                lineage=self.lineage, barrier=self._approval_barrier, epoch=self._epoch_now)
        return self._run_approvals

    @property
    def graph(self) -> Graph:
        """The graph being run."""
        return self.state.graph

    def adopt(self, executors: Mapping[str, Executor]) -> None:
        """Backends started for this run, besides those its nodes needed at the start.

        Nodes added while the run goes (an open run's: an agent's tool phase) then use them
        at once, instead of each run starting (and each of its first calls awaiting) a start.
        """
        for name, executor in executors.items():
            self._executors.setdefault(name, executor)

    @property
    def instrumented(self) -> bool:
        """Whether an instrumentation observes this run (see :meth:`instrument`)."""
        return self._observer is not None

    def instrument(self, observer: RunObserver) -> None:
        """Let an instrumentation's ``observer`` see this run (see :mod:`shoal.instrumentation`).

        It gets every event, but is not one of :attr:`sinks`: nested runs ask for their own.
        """
        self._observer = observer
        self._internal = (*self._internal, observer)

    @property
    def epoch(self) -> float:
        """When the run started (epoch seconds; 0 until it has): :meth:`now` counts from it."""
        return self._epoch

    @property
    def clock(self) -> Clock | None:
        """The clock the run reads (``None`` until it starts, unless one was given)."""
        return self._clock or self._given_clock

    def now(self) -> float:
        """Seconds since the run started, on the run's clock."""
        return (self._time() - self._t0) if self._time is not None else 0.0

    def run(self) -> Coroutine[Any, Any, RunResult]:
        """Run until every node has an outcome; if cancelled from outside, stop all, re-raise.

        (Await it. Not a coroutine function itself: an uninstrumented run is awaited directly,
        one coroutine less for each of a swarm's runs in flight.)
        """
        if self._observer is None:  # started here, its end awaited: no coroutine around both
            self._start()
            return self._finish()
        return self._run_observed(self._observer)

    async def _run_observed(self, observer: RunObserver) -> RunResult:
        try:
            return await self._run()
        finally:  # a run cancelled from outside publishes no RunFinished: its spans end here
            observer.close()

    def start_here(self, ended: asyncio.Future[RunResult],
                   on_end: Callable[[Driver], None]) -> None:
        """Start the run now, without a task of its own; ``ended`` gets its result.

        What :meth:`run` does, for a run whose end needs no task of its own (a nested open
        run, not instrumented: an agent's steps): it starts now, in the calling task, and
        its nodes start as they are added. Once it has ended (see :meth:`_end_here`), its
        result is set on ``ended`` and ``on_end(driver)`` is called (the caller's bound method
        serves every run: no partial per run); its end is carried out where
        it ended, or, when it must be awaited (an approval desk to drain, a durable journal
        to close, an error to stop on), in a task made then.
        """
        self._start()
        self._taskless, self._on_end = ended, on_end
        try:
            self._begin()
        except Exception as exc:  # (as in _run: stopped and journaled at its end)
            if self._finished is not None and not self._finished.done():
                self._finished.set_exception(exc)
        if self._taskless is not None and self._finished is not None and self._finished.done():
            self._end_here()  # it failed as it began

    def _stopped_here(self) -> None:
        """A run started by :meth:`start_here` stopped on an error: ended in a task."""
        if self._taskless is not None and self._loop is not None:
            self._loop.call_soon(self._end_soon)

    def _end_soon(self) -> None:
        if self._taskless is not None:
            self._end_here()

    def _end_here(self) -> None:
        """End a run started by :meth:`start_here` (its ``_finished`` is done).

        Here and now when nothing needs awaiting (most ends: a memory journal, no approval
        asked): what :meth:`_run` does after its run finished. Otherwise in a task.
        """
        ended, on_end = self._taskless, self._on_end
        self._taskless = self._on_end = None
        assert ended is not None and on_end is not None
        assert self._finished is not None and self._loop is not None
        finished = self._finished
        if (finished.cancelled() or finished.exception() is not None or self._desk.asked
                or (self._journal is not None and self._journal.durable)):
            task = self._loop.create_task(self._end_in_task(ended, on_end))
            _ENDING.add(task)  # held until it ends (the loop keeps only weak references)
            task.add_done_callback(_ENDING.discard)
            return
        try:
            self._forget_timers()
            result = self._ended_run()
            journal = self._end_journal(result)
            if journal is not None:
                journal.close_written()
        except Exception as exc:  # (a bug: the run's awaiter gets it, as a task's would)
            if not ended.done():
                ended.set_exception(exc)
        else:
            if not ended.done():
                ended.set_result(result)
        finally:
            on_end(self)

    async def _end_in_task(self, ended: asyncio.Future[RunResult],
                           on_end: Callable[[Driver], None]) -> None:
        """:meth:`_end_here` for an end that must be awaited: what :meth:`_run` does."""
        try:
            result = await self._finish(begin=False)
        except asyncio.CancelledError:
            ended.cancel()
            raise
        except BaseException as exc:
            if not ended.done():
                ended.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not ended.done():
                ended.set_result(result)
        finally:
            on_end(self)

    async def _run(self) -> RunResult:
        self._start()
        return await self._finish()

    def _start(self) -> None:
        """Set the run's loop, clock and times, and journal it as started (nothing runs yet)."""
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()
        # Python raises Ctrl-C on the main thread alone: on a loop elsewhere (run_sync or
        # asyncio.run from a worker thread), a tool's KeyboardInterrupt is its own raise and
        # fails its call, as on the thread and process backends (decided once per run)
        self._ctrl_c_here = threading.current_thread() is threading.main_thread()
        self.state.ctrl_c_here = self._ctrl_c_here  # (a value's own code, run by the state)
        clock = self._given_clock or clock_of(self._loop)
        if clock.loop is not self._loop:  # its timers would be set on a loop that is not running
            raise ConfigError(
                f"run {self.state.run_id} was given the clock of another event loop: a clock "
                "(Runtime(clock=...)) serves the loop it was made for, so make the runtime "
                "and its clock on the loop its runs run on (run_sync makes a new loop per run)")
        self._epoch = read_epoch(clock)  # checked before anything runs
        self._clock = clock
        # a resumed run keeps the clock of its first session: replayed times stay comparable
        offset = 0.0 if self._resume is None else self._epoch - self._resume.record.started_at
        self._epoch -= offset
        self._time = _reader(clock, self._loop)
        self._t0 = self._time() - offset
        self.state.clock_origin = self._t0  # rate limiters shared across runs use this clock
        if self.scope is not None:  # the first run of a composition sets its events' origin
            origin, self._origin_epoch = events_origin(self.scope.shared, self._t0, self._epoch)
            self._shift = self._t0 - origin
        self._finished = self._loop.create_future()
        self._open_journal()

    async def _finish(self, begin: bool = True) -> RunResult:
        """Begin the run (unless :meth:`start_here` did), wait for its end, then end it."""
        assert self._finished is not None
        try:
            if begin:
                self._begin()  # a clock's timer that fails, say: stopped and journaled as below
            await self._finished
        except asyncio.CancelledError:
            self.cancelled_reason = self.cancelled_reason or "the run was cancelled"
            self._task_ends_first()  # those that ended before the cancel keep their outcome
            self._apply(self.state.cancel(None, self.cancelled_reason, self.now()))
            await self._stop_cancelled()
            raise
        except BaseException as exc:  # an internal error (in _attempt_done, say): stop, raise it
            # journaled as stopped, not finished: its nodes may not all have their outcomes
            self.cancelled_reason = self.cancelled_reason or (
                f"the run stopped on an error: {type(exc).__name__}: {exc}")
            await self._drain()
            await self._close_journal(quiet=True, raising=exc)
            if isinstance(exc, JournalWriteError):  # which calls ran: their effects happened
                exc.result = self.result()
            raise
        finally:
            self._forget_timers()
        if self._desk.asked:  # (no coroutine for a desk never asked: most runs' desk)
            await self._desk.drain(self.state.run_id)
        result = self._ended_run()
        # after RunFinished: a journal that keeps events has it too
        journal = self._end_journal(result)
        if journal is not None:  # (one without a writer thread closes without a coroutine)
            await journal.close() if journal.durable else journal.close_written()
        return result

    def _forget_timers(self) -> None:
        """The run has ended (or stopped): its timers go, and so do its shared limits' books."""
        for handle in self._timers or ():
            handle.cancel()
        self._timers = None
        holding, self._holding = self._holding, None
        kept = self.state.let_go()  # the resource_limits slots its abandoned work keeps
        for pos, call in (holding or {}).items():
            gates = kept.pop(pos, None)
            # its thread keeps the call, not this driver: what it still holds is given back
            # by itself when it ends (now, if it ended meanwhile)
            give = None if gates is None else GiveBack(gates, self.state.shared_limits)
            call.released = give
            if give is not None and call.ended_at is not None:
                give(call)
        for gates in kept.values():  # (no call: nothing to wait for)
            GiveBack(gates, self.state.shared_limits)(None)
        self.state.shared_limits.forget(self.state)

    def _ended_run(self) -> RunResult:
        """Tell the waiters still waiting, make the run's result and announce its end."""
        if self._watchers or self._early:
            self._tell_all_watchers()
        result = self.result()
        if self._sinks or self._internal:  # else nobody listens: no event to make
            self._publish([RunFinished(
                run_id=self.state.run_id, time=max(self.now(), result.makespan),
                counts=self._counts(), makespan=result.makespan)])
        return result

    def _begin(self) -> None:
        """Announce the run, set its deadline, restore what a resume replays, start it."""
        if self._sinks or self._internal:  # else nobody listens: no event to make
            self._publish([RunStarted(run_id=self.state.run_id, time=self.now(),
                                      nodes=self.state.size, epoch=self._epoch)])
        for early in self._before_start or ():  # cancellations asked for before its first turn
            if self._streaming:
                self._journal_decisions(early)
            elif self._ends_each:
                self._journal_ends(early.done)
            self._publish(early.events)
            if self._watchers and early.done:  # an open run's node cancelled: say so now
                self._tell_watchers(early.done)
        self._before_start = None
        if self._deadline is not None:
            self._set_timer(self.now() + self._deadline, "deadline", -1)
        if self._resume is not None:
            self._restore(self._resume)
        if not self.state.begin_empty():  # (an agent's steps run opens empty: nothing to do)
            self._apply(self.state.begin(self.now()))

    def cancel(self, node_ids: Iterable[str] | None, reason: str, *,
               status: StopStatus = "cancelled") -> None:
        """Cancel some nodes, or the whole run (``None``); outcomes are recorded as usual.

        ``status``: as :meth:`SchedulerState.cancel
        <shoal.scheduler.state.SchedulerState.cancel>`'s.
        """
        if self.state.finished:  # every outcome is in: a late cancel changes nothing
            return
        if node_ids is None:
            self.cancelled_reason = self.cancelled_reason or reason
        decisions = self.state.cancel(node_ids, reason, self.now(), status=status)
        if self._loop is None:  # not started: nothing runs yet, so only events are pending
            self._pending(decisions)
        else:
            self._apply(decisions)

    def _pending(self, decisions: Decisions) -> None:
        """Keep ``decisions`` made before the run started, for :meth:`_begin`."""
        if self._before_start is None:
            self._before_start = []
        self._before_start.append(decisions)

    def observe(self, sink: Callable[[Event], None]) -> None:
        """Add an observer before the run starts (an open run's event stream).

        Later it would miss what happened already, so it is refused.
        """
        if self._loop is not None:
            raise RuntimeError(f"run {self.state.run_id} has started already: ask for its events "
                               "before the first 'await' after opening it, so none is missed")
        self._sinks = (*self._sinks, sink)
        self.sinks = (*self.sinks, sink)
        self.state.record_events = True
        if self.scope is not None:  # nested runs (agent nodes, patterns) report to it too
            self.scope.sinks = (*self.scope.sinks, sink)

    def add(self, nodes: Sequence[Node], *, here: bool = False) -> Call | None:
        """Add nodes to an open run (validated by the caller); they run once their inputs are.

        ``here`` (one node): if its attempt starts at once and would get a lean task of its own
        (an inline async call with nothing around it, see :meth:`_start_calls`), no task is
        made: the attempt is returned, for the caller to run in its own task, now, with
        :meth:`run_here` (an agent's model turn: one task and one future less per turn).
        Otherwise ``None``: it runs as any node does.
        """
        if self.state.closed:
            why = f" ({self.cancelled_reason})" if self.cancelled_reason else ""
            raise RunClosedError(f"run {self.state.run_id} is closed: it takes no more nodes{why}")
        now = (self._time() - self._t0) if self._time is not None else 0.0  # (self.now())
        if here:
            self._handing = nodes[0].id
        try:
            decisions = self.state.add(nodes, now)
            if decisions is None:  # nothing to carry out: the nodes wait for their inputs
                return None
            if self._loop is None:  # not started: only replays and skips can be pending
                self._pending(decisions)
            else:
                self._apply(decisions)
        finally:
            handed, self._handing = self._handing, None
        return handed if isinstance(handed, Call) else None

    async def run_here(self, call: Call, cancelled: str) -> Outcome | None:
        """Run the attempt :meth:`add` handed over, in the calling task; report how it ended.

        Returns the node's outcome, or ``None`` if it has none yet (a retry is due).

        As a lean attempt's task would (see :meth:`_attempt_inline`), but its end is fed to
        the state machine at once, so the caller reads the node's outcome when this returns.
        A stop of the node (see :meth:`_stop`) cancels the calling task while the attempt
        runs, and the attempt ends ``cancelled``; that cancellation is taken back
        (``uncancel``), so the caller goes on. If the calling task is cancelled from outside
        meanwhile, the node is cancelled with the reason ``cancelled``, its outcome recorded,
        and the ``CancelledError`` raised on.
        """
        task = asyncio.current_task()
        assert task is not None and self._context is not None
        if self._tasks.get(call.pos) is not call:  # reported ended meanwhile (the run stopped)
            return self.state.outcome_at(call.pos)
        stopped = self._at_once_stopped
        if stopped and call.pos in stopped:  # stopped before it began: it never runs its tool
            stopped.discard(call.pos)
            self._context.run(self._report, self._attempt_done, call,
                              AttemptResult("cancelled", abandoned=call.abandoned))
            return self.state.outcome_at(call.pos)
        handed = _Handed(task)
        if self._handed is None:
            self._handed = {}
        self._handed[call.pos] = handed
        result: AttemptResult
        outside: asyncio.CancelledError | None = None
        try:
            try:
                value = await call.tool.fn(**call.args)
            finally:
                if handed.sent:  # the node's stop cancelled this task: taken back
                    task.uncancel()
        except KeyboardInterrupt as exc:
            if self._ctrl_c_here:
                raise
            result = _tool_interrupted(call, exc)
        except asyncio.CancelledError as exc:
            if handed.sent and task.cancelling() == 0:  # the node's stop, and nothing else
                result = _raised(call, exc, True)
            elif isinstance(exc, CallCancelled) or task.cancelling() == 0:
                result = _raised(call, exc)  # the tool's own (a cancellation nobody asked for)
            else:  # the calling task was cancelled: so is the node, saying why
                outside = exc
                handed.stopping = True  # nothing left to stop: it ended here
                self.cancel([call.node_id], cancelled)
                result = _raised(call, exc, True)
        except BaseException as exc:  # a tool's raise (SystemExit too: see _raised)
            result = _raised(call, exc)
        else:
            del self._handed[call.pos]
            if type(value) in _PLAIN:  # most calls: no result object (see _returned)
                assert self._context is not None
                self._context.run(self._returned, call, value)
                return self.state.outcome_at(call.pos)
            result = _returned_value(call, value)
        self._handed.pop(call.pos, None)
        assert self._context is not None
        self._context.run(self._report, self._attempt_done, call, result)
        if outside is not None:
            raise outside
        return self.state.outcome_at(call.pos)

    def outcome_of(self, node_id: str) -> asyncio.Future[Outcome]:
        """A future for the outcome of ``node_id`` (resolved at once if it has one).

        An item of a map whose list is not known yet (``m[3]``) is waited for too: the
        future fails with :class:`KeyError` if the map ends without such an item.
        """
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        pos = self.graph.position.get(node_id)
        if pos is None:
            owner = _ITEM_ID.fullmatch(node_id)
            mapped = self.graph.position.get(owner[1]) if owner is not None else None
            if mapped is None or self.graph.nodes[mapped].map is None:
                raise KeyError(f"no node {node_id!r} in run {self.state.run_id}")
            self._early.setdefault(node_id, []).append(future)
            self._look_early()
            return future
        outcome = self.state.outcome_at(pos)
        if outcome is not None:
            future.set_result(outcome)
        else:
            self._watch(pos, future)
        return future

    def waiter(self) -> Call | None:
        """The attempt of this run that cannot end before the current task's wait does.

        An attempt of this run in flight whose own task is the current one, or awaits it
        (``await task``, or through ``asyncio.gather``, at any depth). A task it started and
        does not await is no such waiter: the attempt may end without it. ``None`` when there
        is none (most waits: the code that opened the run). Found from the tasks themselves
        (see :func:`_attempt_of`), only when something waits: no call pays for it as it starts.
        Only on the run's loop.
        """
        current = asyncio.current_task()
        task: asyncio.Future[Any] | None = current
        for _ in range(_AWAIT_DEPTH):
            if task is None or not isinstance(task, asyncio.Task):
                return None
            call = _attempt_of(task, self)
            if call is not None:
                return call if self._task_of.get(call.pos) is task and (
                    self._tasks.get(call.pos) is call) else None
            task = awaiter(task)
        return None

    def whole_run_wait(self) -> None:
        """Refuse ``await run`` from an attempt of this run (see :meth:`waiter`)."""
        call = self.waiter()
        if call is not None:
            raise SelfWaitError(
                f"node {call.node_id!r} of open run {self.state.run_id} awaits the whole run, "
                f"which cannot end while {call.node_id!r} runs: that wait would never end. "
                "Wait on the nodes it needs (await run.wait(ref) or run.value(ref)) and leave "
                "awaiting the run to the code that opened it")

    async def wait_from(self, node_id: str) -> Outcome:
        """:meth:`outcome_of`, awaited, for a wait that may come from a node of this run.

        A wait that could never end raises :class:`~shoal.exceptions.SelfWaitError` at once
        (see :meth:`_wait_cycle`); the others are noted while they wait, so a later wait that
        closes a cycle through them is found.
        """
        call = self.waiter()
        if call is None:
            return await self.outcome_of(node_id)
        me = call.pos
        target = self.graph.position.get(node_id)
        if target is None:  # an item of a map whose list is not known yet: wait on the map
            owner = _ITEM_ID.fullmatch(node_id)
            target = self.graph.position.get(owner[1]) if owner is not None else None
        if target is not None:
            self._wait_cycle(call, target)
        future = self.outcome_of(node_id)
        if future.done() or target is None:
            return await future
        if self._waits is None:
            self._waits = {}
        waits = self._waits.setdefault(me, [])
        waits.append(target)
        try:
            return await future
        finally:
            waits.remove(target)
            if not waits and self._waits.get(me) is waits:
                del self._waits[me]

    def _wait_cycle(self, call: Call, target: int) -> None:
        """Raise :class:`SelfWaitError` if the node at ``target`` cannot end before ``call``."""
        error = cycle_error(call.node_id, call.pos, target, self.state.run_id, self.graph,
                            self.state.outcome_at, self._waits or {})
        if error is not None:
            raise error

    def outcome_if_ended(self, node_id: str) -> Outcome | None:
        """The outcome of ``node_id`` if it has one now, else ``None``; makes no future.

        For a waiter that asks for several nodes' outcomes and finds most already there (an
        agent's tool phase, once its first call ended): :meth:`outcome_of` would make a
        future to hold each of them. Only on the run's loop (its state is that loop's alone).
        """
        pos = self.graph.position.get(node_id)
        return None if pos is None else self.state.outcome_at(pos)

    def _watch(self, pos: int, future: asyncio.Future[Outcome]) -> None:
        """Let ``future`` wait for the outcome of the node at ``pos``."""
        waiting = self._watchers.get(pos)
        if waiting is None:
            self._watchers[pos] = future
        elif isinstance(waiting, list):
            waiting.append(future)
        else:
            self._watchers[pos] = [waiting, future]

    def _look_early(self) -> None:
        """Hand the waiters of map items that now exist on; fail those whose map ended."""
        position, state = self.graph.position, self.state
        for node_id in list(self._early):
            pos = position.get(node_id)
            if pos is not None:  # made: wait for it as for any node (it may have ended)
                for future in self._early.pop(node_id):
                    self._watch(pos, future)
                if state.outcome_at(pos) is not None:
                    self._tell_watchers([pos])
                continue
            owner = _ITEM_ID.fullmatch(node_id)
            assert owner is not None  # only item ids of maps are waited for early
            mapped = position[owner[1]]
            mapped_outcome, items = state.outcome_at(mapped), state.items_of(mapped)
            if mapped_outcome is None and not state.finished:
                continue
            ended = f" ended {mapped_outcome.status}" if mapped_outcome is not None else ""
            made = (f"with {items} items" if items is not None else
                    "without making its items (its outcome was replayed from the journal, "
                    "or it did not get its list)")
            error = KeyError(f"map {owner[1]!r}{ended} {made}: it has no item {node_id!r}")
            for future in self._early.pop(node_id):
                if not future.done():
                    future.set_exception(error)

    def _tell_watchers(self, ended: Iterable[int]) -> None:
        """Resolve the futures of callers waiting for the outcomes of the nodes at ``ended``."""
        outcome_at = self.state.outcome_at
        for pos in ended:
            waiting = self._watchers.pop(pos, None)
            if waiting is not None:
                outcome = outcome_at(pos)
                assert outcome is not None  # told only once it has one
                for future in waiting if isinstance(waiting, list) else (waiting,):
                    if not future.done():
                        future.set_result(outcome)

    def _tell_all_watchers(self) -> None:
        """Outcomes that came from no decision (replayed on resume; the run's end)."""
        if self._early:
            self._look_early()
        outcome_at = self.state.outcome_at
        self._tell_watchers([pos for pos in list(self._watchers) if outcome_at(pos) is not None])

    def close(self) -> None:
        """No more nodes: the run ends once every node it has has ended."""
        decisions = self.state.close(self.now())
        if self._loop is not None:
            self._apply(decisions)

    def stopped_by(self) -> BaseException | None:
        """The error that stopped the run (its journal failed, say), as soon as one did.

        Set before the run's calls are cancelled and its own task ends with that error, so a
        caller handed those cancelled outcomes can tell why.
        """
        finished = self._finished
        if finished is None or not finished.done() or finished.cancelled():
            return None
        return finished.exception()

    def snapshot(self) -> Snapshot:
        """Counts and in-flight calls now."""
        return Snapshot(self.state.run_id, self.state.size, self.now(),
                        dict(self.state.status_counts), self.state.running(), self.state.finished,
                        self.state.awaiting_approval(), self.state.held())

    def pending_approvals(self) -> list[ApprovalRequest]:
        """The requests of this run waiting for a decision."""
        return [] if self._run_approvals is None else self._run_approvals.pending()

    def result(self) -> RunResult:
        """The outcomes so far (all of them once the run is over)."""
        outcomes = self.state.outcomes_by_id()
        try:  # every outcome has its end time (unless replayed from an older journal)
            makespan = max(map(_FINISHED_AT, outcomes.values()), default=0.0) or 0.0
        except TypeError:  # one is None: it counts as 0 (a lone None is compared with none)
            makespan = max((o.finished_at or 0.0 for o in outcomes.values()), default=0.0)
        result = RunResult(self.state.run_id, outcomes, makespan, self.graph, self._epoch,
                           self.cancelled_reason)
        board = self.scope.board if self.scope is not None else None
        if board is not None and board.local:
            assert self.scope is not None
            values = board.snapshot() if self.scope.outermost else board._values()
            result.board, result.conflicts = values, board.conflicts
        return result

    # ---- carrying out decisions ---------------------------------------------------------

    def _apply(self, d: Decisions) -> None:
        assert self._loop is not None
        if self._streaming:
            barrier = self._journal_decisions(d)
        else:
            barrier = None
            if self._ends_each and d.done:
                self._journal_ends(d.done)
        # Starts before cancels: one decision can start a call and (fail_fast) cancel it.
        submitting = bool(self._to_pool)
        if d.starts:
            self._start_calls(d.starts, barrier)
        for pos in d.cancels:
            self._stop(pos)
        if self._to_pool and not submitting:
            self._loop.call_soon(self._submit)
        for when, kind, pos in d.timers:
            self._set_timer(when, kind, pos)
        if d.events:
            # an ApprovalRequested says what its request says (an edit before a resume)
            self._publish(self._approvals.noted(d.events, d.approvals)
                          if d.approvals and (self._sinks or self._internal) else d.events)
        if d.approvals:
            self._approvals.act(d.approvals)
        if d.parked or d.freed:
            self._share_gates(d)
        if self._early and d.done:  # maps made their items, or ended
            self._look_early()
        if self._watchers and d.done:
            self._tell_watchers(d.done)
        state = self.state  # closed first: an open run's decisions, until it is closed
        ends = False
        if (state.closed and state.finished and self._finished is not None
                and not self._finished.done()):
            self._finished.set_result(None)
            ends = self._taskless is not None  # no task awaits it: ends here (see start_here)
        if self._at_once and not self._bursting and not self._burst_due:
            self._burst()
        if ends and self._taskless is not None:
            self._end_here()

    def _start_calls(self, starts: list[Call], barrier: asyncio.Future[None] | None) -> None:
        """Start these attempts: each with a task, on a pool without one, or to run at once.

        Each attempt reports its own end (see _attempt): no done-callback, no extra loop hop.
        """
        assert self._loop is not None
        observer, to_pool = self._observer, self._to_pool
        taskless = barrier is None and observer is None
        tasks, at_once, contexts, quick, copy_context = (
            self._tasks, self._at_once, self._at_once_contexts, self._quick,
            contextvars.copy_context)
        inline_here = type(self._executors.get("inline")) is InlineExecutor
        last: Tool[..., Any] | None = None  # the tool of the call before (most share one)
        shared: list[contextvars.Context] | None = None  # (see _at_once_contexts)
        at_once_ok = lean_ok = False
        # an inline async call with nothing around it gets the lean attempt (see
        # _attempt_inline), its task made directly: no task factory to honour (an eager one
        # would run its first step before the driver has recorded it)
        lean = (taskless and inline_here and not self._streaming
                and self._loop.get_task_factory() is None)
        loop, task_of = self._loop, self._task_of
        lean_made = 0  # lean tasks made here (see LEAN_FIRST)
        due = self._lean_due
        base: contextvars.Context | None = None  # the context the deferred ones copy
        for call in starts:
            if taskless:
                # no task: start after this decision's cancels (one that fail_fast stops here
                # never runs), in the context a task made now would copy. An inline call that
                # ends in its first step runs at once (see _quick_for; checked here inline:
                # every call of a wide run passes here, and asked once per tool in a row: no
                # code runs between these starts, so none can be reloaded meanwhile)
                tool = call.tool
                if tool is not last:
                    known = quick.get(id(tool))
                    if known is None or (known[1] and known[0] is not tool.fn.__code__):
                        known = self._quick_for(tool)
                    last, at_once_ok = tool, known[1] and inline_here
                    lean_ok = lean and tool.is_async and not tool.injected
                if at_once_ok and call.isolation == "inline":
                    tasks[call.pos] = call
                    if at_once is None or contexts is None:
                        at_once, contexts = self._at_once_queues()
                    at_once.append(call)
                    if shared is None:  # one copy for these calls, while none changes it
                        base = copy_context()
                        shared = [base, base.copy()]
                    contexts.append(shared)
                    continue
                # (an inline call never goes to a pool: most calls of an agent's steps)
                if inline_here and call.isolation == "inline":
                    if lean_ok and call.timeout is None:
                        tasks[call.pos] = call
                        if self._handing is not None and call.node_id == self._handing:
                            self._handing = call  # run by the task adding it (see add)
                            continue
                        if lean_made < LEAN_FIRST and not due:
                            lean_made += 1
                            task_of[call.pos] = asyncio.Task(self._attempt_inline(call),
                                                             loop=loop)
                        else:
                            if due is None:
                                due = self._lean_due = deque()
                            if not due:
                                loop.call_soon(self._start_lean, LEAN_FIRST * 2)
                            if base is None:
                                base = copy_context()
                            due.append((call, base))
                        continue
                else:
                    pool = self._pool_now(call)
                    if pool is not None:
                        tasks[call.pos] = call
                        queued = to_pool.get(pool)
                        if queued is None:
                            queued = to_pool[pool] = []
                        queued.append((call, copy_context()))
                        continue
            attempt = self._attempt(call, barrier)
            task = (self._loop.create_task(attempt) if observer is None  # not instrumented
                    else self._loop.create_task(attempt, context=observer.attempt_context(call)))
            tasks[call.pos] = call
            self._task_of[call.pos] = task

    def _start_lean(self, count: int) -> None:
        """Make the tasks of up to ``count`` lean attempts that wait for theirs, in order.

        A wide decision's first :data:`LEAN_FIRST` lean attempts get their task at once, the
        rest here, twice as many per loop turn: the first calls take their first step (a
        fan-out's set their timers) before the last tasks are made, as a loop turn after each
        task would have them, at the cost of a few turns. One stopped meanwhile never runs:
        reported cancelled, as a task cancelled before its first step is.
        """
        due, loop, task_of = self._lean_due, self._loop, self._task_of
        attempt = self._attempt_inline
        if due is None or loop is None:
            return
        stopped = self._at_once_stopped
        for _ in range(min(count, len(due))):
            call, context = due.popleft()
            if stopped and call.pos in stopped:
                stopped.discard(call.pos)
                assert self._context is not None
                self._context.run(self._report, self._attempt_done, call,
                                  AttemptResult("cancelled"))
                continue
            task_of[call.pos] = asyncio.Task(attempt(call), loop=loop, context=context.copy())
        if due and count:  # (a drain's call makes them all: nothing is left)
            loop.call_soon(self._start_lean, count * 2)

    def _at_once_queues(self) -> tuple[deque[Call], deque[list[contextvars.Context]]]:
        """The queues of the calls to run at once and of their contexts (made on first use)."""
        if self._at_once is None or self._at_once_contexts is None:
            self._at_once, self._at_once_contexts = deque(), deque()
        return self._at_once, self._at_once_contexts

    def _stopped_early(self) -> set[int]:
        """The positions of calls without a task stopped before they ran (made on first use)."""
        if self._at_once_stopped is None:
            self._at_once_stopped = set()
        return self._at_once_stopped

    def _quick_for(self, tool: Tool[..., Any]) -> tuple[object, bool]:
        """Whether ``tool``'s inline calls run without a task, noted by tool (see :meth:`_apply`).

        Those of a tool whose coroutine ends in its first step (see :mod:`shoal.scheduler.eager`):
        it can neither wait nor be interrupted, so a timeout cannot fire and nothing can cancel
        it once it runs; a task would only add its cost and a loop turn. Not for injected values
        (their settling is the task's). Noted with its function's code: a hot reload (IPython's
        autoreload, say) swaps a function's code in place, and the new code may await.
        """
        code = getattr(tool.fn, "__code__", None)
        known = self._quick[id(tool)] = (code, (
            tool.is_async and not tool.injected and ends_in_first_step(tool.fn)))
        return known

    def _pool_now(self, call: Call) -> ThreadExecutor | None:
        """The thread pool to hand ``call`` to now, without a task, if it fits.

        A sync call without a timeout needs no task: the pool's batched completions report
        its end (see :meth:`_pool_ended`), and a cancel stops it as its task would have.
        """
        executor = self._executors.get(call.isolation)
        if (type(executor) is ThreadExecutor and executor.started and call.timeout is None
                and not call.tool.injected):
            return executor
        return None

    def _submit(self) -> None:
        """Hand the sync calls started since the last turn to their pool, all at once.

        Not as each starts: a batch of ends, each starting a call, would wake a pool thread
        per call while the loop still works through the batch, and the loop and the threads
        would take the GIL from each other call by call.
        """
        batch, self._to_pool = self._to_pool, {}
        for pool, calls in batch.items():
            if self._at_once_stopped:
                calls = self._not_stopped(calls)
            try:
                jobs = pool.submit(calls, self._pool_ended, self._pool_batch_end)
            except Exception as exc:  # the pool refused them: their outcome, as from a task
                assert self._context is not None
                for call, _ in calls:
                    self._context.run(self._report, self._attempt_done, call,
                                      AttemptResult("failed", error=exc))
                continue
            on_pool = self._on_pool
            for job in jobs:
                on_pool[job.call.pos] = (pool, job)
        if self._at_once and not self._bursting and not self._burst_due:
            self._burst()

    def _not_stopped(self, calls: list[tuple[Call, contextvars.Context]]
                     ) -> list[tuple[Call, contextvars.Context]]:
        """The calls not cancelled before they were handed over; those are reported, not run."""
        kept = []
        for call, context in calls:
            if call.pos in self._stopped_early():
                queue, contexts = self._at_once_queues()
                queue.append(call)  # reported cancelled, never run
                contexts.append([context, context])
            else:
                kept.append((call, context))
        return kept

    def _pool_ended(self, job: PoolJob) -> None:
        """A call handed to the pool without a task ended: report it as its task would have.

        A plain value, most calls' end, waits in ``_pool_returned`` for the pool's batch of
        ends to be in (:meth:`_pool_batch_end`): one decision for the batch, as for calls run
        at once. Any other end first feeds those, so ends are fed in the order they came.
        """
        call = job.call
        on_pool = self._on_pool.get(call.pos)
        if on_pool is None or on_pool[1] is not job:  # stopped: reported already
            return
        error = job.error
        if job.cancelled:  # its pool closed before a thread took it
            result = AttemptResult("cancelled")
        elif error is None:
            value = job.value
            if type(value) in _PLAIN:  # most calls: no result object (see _returned)
                del self._on_pool[call.pos]
                if self._streaming or call.tool.injected or (
                        self._settling and call.pos in self._settling):
                    self._pool_batch_end()
                    assert self._context is not None
                    self._context.run(self._returned, call, value)
                else:
                    try:
                        end = self._plain_end(call, value)
                        if self._pool_returned is None:
                            self._pool_returned = [end]
                        else:
                            self._pool_returned.append(end)
                    except Exception as exc:
                        self._internal_error(call.node_id, exc)
                return
            result = _returned_value(call, value)
        else:  # a KeyboardInterrupt too, as the tool's own error (see tool_interrupt_error)
            result = _raised(call, error)
        del self._on_pool[call.pos]
        self._pool_batch_end()
        assert self._context is not None
        self._context.run(self._report, self._attempt_done, call, result)

    def _plain_end(self, call: Call, value: Any) -> tuple[int, Any, str, float, float]:
        """A pool call's plain return as :meth:`_returned_many` takes it; its attempt is over.

        Out of ``_tasks`` from here on: a cancel finds nothing to stop, as one that came after
        it ran would change nothing (as for calls run at once, see :meth:`_burst`).
        """
        del self._tasks[call.pos]  # one attempt per node at a time: this is the one
        if self._task_of:
            self._task_of.pop(call.pos, None)
        began = None if call.began_at is None else self._began(call.began_at)
        where = call.where or self._hosts.get(call.isolation) or self._here(call)
        now, ended = self.now(), self._ended(call)  # its end as the pool thread stamped it
        return (call.pos, value, where, _NO_START if began is None else began - self._t0,
                now if ended is None or ended > now else ended)

    def _pool_batch_end(self) -> None:
        """Feed the pool calls' plain returns collected so far to the state machine at once."""
        if self._pool_returned:
            batch, self._pool_returned = self._pool_returned, None
            assert self._context is not None
            self._context.run(self._report, self._returned_many, batch, self.now())

    def _stopped_end(self, call: Call, result: AttemptResult) -> None:
        """The end of a stopped call that had no task, one loop turn later (as a task's)."""
        if self._stopped_late is not None:
            self._stopped_late.discard(call.pos)
        if self._tasks.get(call.pos) is call:
            assert self._context is not None
            self._context.run(self._report, self._attempt_done, call, result)

    def _burst(self) -> None:
        """Run the calls waiting to run at once, and those their ends start, in a loop.

        The calls queued now run one after another; those that returned a plain value are
        then fed to the state machine together (one decision for the batch, see
        :meth:`_returned_many`), and the calls they release join the queue for the next round:
        a cascade runs iteratively, never by recursion. One clock reading ends a call and
        begins the next. After :data:`AT_ONCE_BURST` calls, or :data:`AT_ONCE_SLICE` seconds
        of them, the rest waits for the next loop turn, so timers and other tasks get theirs.
        """
        assert self._context is not None
        if not self._entered:  # each end is fed to the state machine in the driver's context
            self._context.run(self._report, self._burst)
            return
        queue, contexts, stopped = self._at_once, self._at_once_contexts, self._stopped_early()
        if queue is None or contexts is None:  # no call was ever queued to run at once
            self._burst_due = False
            return
        self._bursting, self._burst_due = True, False
        tasks, ran = self._tasks, 0
        clock, t0 = self._time, self._t0
        assert clock is not None
        until = time.perf_counter() + AT_ONCE_SLICE
        here = ""  # where these calls run (all inline: this machine), asked once
        # (pos, value, where, began, finished) of the calls that returned a plain value
        returned: list[tuple[int, Any, str, float, float]] = []
        try:
            while queue:
                began = clock() - t0
                for _ in range(len(queue)):  # this round: the calls queued before it
                    if ran >= AT_ONCE_BURST or (ran and time.perf_counter() >= until):
                        assert self._loop is not None
                        self._burst_due = True
                        self._loop.call_soon(self._burst)
                        return
                    call, pair = queue.popleft(), contexts.popleft()
                    if stopped and call.pos in stopped:
                        stopped.discard(call.pos)
                        self._flush(returned)  # ends are fed in the order they came
                        self._attempt_done(call, AttemptResult(  # it never runs
                            "cancelled", unstarted=True))
                        began = clock() - t0
                        continue
                    ran += 1
                    # the call itself, inline; its end as _attempt would report it (a plain
                    # value, most calls' end, as it is: no result object, see _returned)
                    call_context = pair[1]
                    try:
                        coro = call.tool.fn(**call.args)
                        call_context.run(coro.send, None)
                        result: Any = _suspended(call, coro)
                    except StopIteration as stop:
                        result = stop.value
                        if type(result) not in _PLAIN:
                            result = _returned_value(call, result)
                    except KeyboardInterrupt as exc:
                        if self._ctrl_c_here:  # it stays to be reported cancelled
                            stopped.add(call.pos)
                            queue.appendleft(call)
                            contexts.appendleft(pair)
                            raise
                        result = _tool_interrupted(call, exc)  # the tool's own (see _start)
                    except BaseException as exc:  # incl. SystemExit: a tool's exit fails it
                        result = _raised(call, exc)
                    if call_context != pair[0]:  # it set a context variable: the calls started
                        pair[1] = pair[0].copy()  # with it run in a copy of what they started in
                    finished = clock() - t0
                    if stopped:  # a cancel while it ran (from its own code) came
                        stopped.discard(call.pos)  # too late to stop it
                    if type(result) is not AttemptResult:  # a plain value: the call succeeded
                        if not here:
                            here = self._hosts.get(call.isolation) or self._here(call)
                        # its attempt is over: a cancel from here on finds nothing to stop,
                        # as one that came after it ran would change nothing (see _flush)
                        del tasks[call.pos]
                        returned.append((call.pos, result, call.where or here, began, finished))
                        began = finished
                    else:
                        self._flush(returned)
                        result.began = began
                        self._attempt_done(call, result)
                        began = clock() - t0
                self._flush(returned)  # the calls these ends release join the queue
        finally:
            self._flush(returned)
            self._bursting = False

    def _flush(self, returned: list[tuple[int, Any, str, float, float]]) -> None:
        """Feed the plain returns collected so far to the state machine, and forget them."""
        if returned:
            batch = returned.copy()
            returned.clear()
            self._returned_many(batch)

    def _report(self, step: Callable[..., None], *args: object) -> None:
        """Run ``step`` (already in the driver's context), noting that the context is entered."""
        entered, self._entered = self._entered, True
        try:
            step(*args)
        finally:
            self._entered = entered

    def _share_gates(self, d: Decisions) -> None:
        """Pass wake-ups between the runtime's runs that share gates.

        Ask to hear when gates this run waits on free up; tell the runs that wait on the gates
        this run freed.
        """
        shared = self.state.shared_limits
        for gate in d.parked:
            if shared.wait_on(gate, self.state, self._gate_freed):
                # a run on another thread freed it after this run's check, before this run was
                # in the books, so nobody told it: look again now, or it may wait forever
                self._gate_freed(gate)
        for gate in d.freed:
            shared.freed(gate)

    def _gate_freed(self, gate: object) -> bool:
        """Another run freed ``gate``; look again on the next loop turn (never re-entrantly).

        That run may be another thread's (``run_sync`` from several threads on one runtime):
        then this loop is woken through its thread-safe queue, or it would sleep on.
        False if this run cannot look (it has ended): the slot goes to another run.
        """
        loop = self._loop
        if loop is None or self.state.finished:
            return False
        if running_loop() is loop:  # (None: freed from a thread that runs no loop)
            loop.call_soon(self._recheck_gate, gate)
            return True
        try:
            loop.call_soon_threadsafe(self._recheck_gate, gate)
        except RuntimeError:  # closed: its run has ended
            return False
        return True

    def _recheck_gate(self, gate: object) -> None:
        """Look at ``gate`` as told; then say so, whether a node of this run took the slot or not.

        Said even when the look fails: a slot this run was told of and never answered for
        would idle, and every run waiting on it would wait for good.
        """
        state = self.state
        try:
            if not state.finished:
                self._apply(state.wake_gate(gate, self.now()))
        finally:
            state.shared_limits.answered(gate, state, state.waits_on(gate))

    async def _attempt(self, call: Call, barrier: asyncio.Future[None] | None) -> None:
        """Run one attempt, then feed how it ended to the state machine, in the same task.

        Attempts never raise: a tool's error, a timeout and a cancellation all become an
        :class:`AttemptResult`. The end is handled in the driver's own context (not the
        attempt's, which the tool may have changed), so what it starts copies the same
        context a done-callback would see; no callback and no extra loop hop per call.
        """
        scope: asyncio.Timeout | None = None
        result: AttemptResult
        sent = False  # handed to its backend: from here its tool may run
        try:
            if call.pos not in self._tasks:
                # started eagerly (an eager task factory runs a task's first step inside
                # create_task): the driver has not recorded this attempt yet, and may be in
                # the middle of carrying out a decision, so report nothing from here; go on in
                # a turn of the loop of its own, as a task started lazily would
                await asyncio.sleep(0)
            executor = self._executors.get(call.isolation) or await self._new_executor(call)
            if barrier is not None:  # the journal holds what released this call, and its start
                # shielded: the calls a decision starts share the one future, and a task
                # cancelled while awaiting a future cancels it (a sibling cancelled at that
                # moment failed every other call of the batch, and released the approvals
                # waiting on it before the journal held their run)
                await asyncio.shield(barrier)
            if barrier is not None and self._journal is not None and (
                    self._journal.failed is not None):
                result = AttemptResult("cancelled", unstarted=True)  # stopping: never run it
            else:
                if call.tool.injected:
                    settling = inject(call, self.scope)
                    if settling:
                        self._settling[call.pos] = settling
                if executor.prepares:  # outside the timeout: waiting for a worker is not the call's
                    await executor.prepare(call)
                sent = True
                if call.timeout is None:
                    value = await executor.execute(call)
                else:
                    async with self._timeout(call) as scope:
                        value = await executor.execute(call)
                    if scope.expired():  # the tool caught the timeout's cancel and returned
                        raise TimeoutError
                if type(value) in _PLAIN:  # most calls: no result object (see _returned)
                    assert self._context is not None
                    self._context.run(self._returned, call, value)
                    return
                result = _returned_value(call, value)  # every backend's result
        except TimeoutError as exc:
            if scope is not None and scope.expired():
                result = AttemptResult("timed_out", error=ToolTimeoutError(
                    call.tool.name, call.timeout or 0.0), abandoned=call.abandoned,
                    reason=self._leapt(call))
            else:
                result = AttemptResult("failed", error=exc)
        except KeyboardInterrupt as exc:
            if self._ctrl_c_here:
                raise
            result = _tool_interrupted(call, exc)  # the tool's own (see _start)
        except BaseException as exc:  # a cancel, or a tool's raise (SystemExit too: see _raised)
            result = _raised(call, exc, _cancel_asked())
            if not sent and result.status == "cancelled":  # waiting for its backend or the
                result.unstarted = True  # journal: its tool never ran
        assert self._context is not None
        self._context.run(self._report, self._attempt_done, call, result)

    def _leapt(self, call: Call) -> str:
        """Why a call off the loop timed out, when the run's clock does not see its work.

        On :class:`shoal.testing.VirtualClockLoop` (a clock on which a backend's real-time
        stamps mean nothing) a thread's or a process's work takes no virtual time: the clock
        leaps to the timeout while the tool runs, and "did not finish within its timeout of
        10 s" said nothing of why a tool of 0.2 s did not.
        """
        if call.isolation == "inline" or not self._virtual():
            return ""
        return (f"timed out on the virtual clock of shoal.testing, where work on a thread or "
                f"in a process takes no virtual time: the clock leapt to the timeout "
                f"({call.timeout or 0.0:g} s) while the tool ran; test the tool on a real "
                f"event loop, or give it no timeout there")

    def _virtual(self) -> bool:
        """Whether the run's clock does not see work off the loop (a backend's real time)."""
        clock = self._clock
        return clock is not None and clock.from_monotonic(0.0) is None

    def _leapt_past(self) -> str:
        """What the deadline's reason adds when a virtual clock leapt to it past a thread's work.

        (It read "the run's deadline of 10 s passed", of a sync tool of 0.2 s.)
        """
        if not self._virtual() or not (self._on_pool or any(
                call.isolation != "inline" for call in self._tasks.values())):
            return ""
        return (", on the virtual clock of shoal.testing, which leapt to it while calls ran on "
                "a thread or in a process (work there takes no virtual time): test them on a "
                "real event loop")

    async def _attempt_inline(self, call: Call) -> None:
        """:meth:`_attempt` for an async call run inline with nothing around it: most calls.

        Its backend is the loop itself, and it has no barrier, no injected value and no
        timeout (see :meth:`_start_calls`): the tool's coroutine is awaited directly. A plain
        return that starts nothing at once (no node waits for it, it holds no limit, nobody
        awaits its outcome: a fan-out's calls) joins this loop turn's batch of task ends, fed
        to the state machine together on the next turn (:meth:`_task_batch_end`): one
        decision for the ends that came together (a fan-out's timers fire together), not one
        each. Any other end is fed at once, so what waits for it starts in this loop turn; so
        is the batch once no attempt is left in flight (at the run's end, say): no end can
        join it any more, and it would hold the run's end a loop turn.
        """
        result: AttemptResult
        try:
            value = await call.tool.fn(**call.args)
        except KeyboardInterrupt as exc:
            if self._ctrl_c_here:
                raise
            result = _tool_interrupted(call, exc)  # the tool's own (see _start)
        except BaseException as exc:  # a cancel, or a tool's raise (SystemExit too: see _raised)
            result = _raised(call, exc, _cancel_asked())
        else:
            if type(value) in _PLAIN:  # most calls: no result object (see _returned)
                pos = call.pos
                if (call.began_at is not None or call.ended_at is not None
                        or pos in self._watchers or self.state.releases(pos)):
                    # something waits for it: fed now, so it starts in this loop turn
                    assert self._context is not None
                    self._context.run(self._returned, call, value)
                    return
                try:
                    self._task_returned_plain(call, value)
                except Exception as exc:
                    self._internal_error(call.node_id, exc)
                    return
                if not self._tasks:  # no attempt in flight, so no end can join the batch:
                    self._task_ends_first()  # fed now, or it would hold the run's end a turn
                return
            result = _returned_value(call, value)
        assert self._context is not None
        self._context.run(self._report, self._attempt_done, call, result)

    def _task_returned_plain(self, call: Call, value: Any) -> None:
        """Note the plain return of a lean attempt's task; its attempt is over.

        Out of ``_tasks`` from here on: a cancel finds nothing to stop, as one that came after
        it returned would change nothing (as for calls run at once, see :meth:`_burst`).
        """
        if self._late and id(call) in self._late:  # abandoned: its end is not reported
            return
        pos = call.pos
        del self._tasks[pos]  # one attempt per node at a time: this is the one
        del self._task_of[pos]
        assert self._time is not None
        end = (pos, value, call.where or self._hosts.get(call.isolation) or self._here(call),
               _NO_START, self._time() - self._t0)
        if self._task_returned is None:
            self._task_returned = [end]
            assert self._loop is not None
            self._loop.call_soon(self._task_ends_first)
        else:
            self._task_returned.append(end)

    def _task_batch_end(self) -> None:
        """Feed the tasks' plain returns collected so far to the state machine at once.

        On the loop turn after they came (see :meth:`_task_ends_first`), or before any other
        end or input that the state machine gets meanwhile, so it sees ends in the order they
        came. Run in the driver's context.
        """
        batch = self._task_returned
        if batch:
            self._task_returned = None
            self._report(self._returned_many, batch, self.now())

    def _task_ends_first(self) -> None:
        """Feed the tasks' plain returns not fed yet, in the driver's context.

        On the loop turn after the first of them came, or before another end or input of the
        run, whichever is first.
        """
        if self._task_returned:
            if self._entered:
                self._task_batch_end()
            else:
                assert self._context is not None
                self._context.run(self._task_batch_end)

    def _stop(self, pos: int) -> None:
        """Cancel the running attempt of ``pos``.

        An attempt started in this loop iteration has not taken its first step yet: cancelled
        now, it never runs its tool (a call that ``fail_fast`` or a cancel stopped before it
        began has no side effect), and never reaches the code that reports its end, so a
        done-callback reports it (a no-op if the attempt did report).
        """
        call = self._tasks.get(pos)
        if call is not None:
            task = self._task_of.get(pos)
            if task is None:
                handed = self._handed.get(pos) if self._handed else None
                if handed is not None:
                    self._stop_handed(pos, handed)
                    return
                self._stop_taskless(pos, call)
                return
            task.cancel()
            task.add_done_callback(partial(self._unreported, call))
            self._arm_grace(call, task, "cancelled")

    def _stop_handed(self, pos: int, handed: _Handed) -> None:
        """Cancel the task running a handed-over attempt (see :meth:`run_here`), once.

        From that task itself (the attempt stopping its own node: a budget its reply
        breached), on the next loop turn, if the attempt still runs then: a task cancelled
        while it runs would be cancelled at its next ``await``, which may come after its
        attempt, in the code of its caller.
        """
        if handed.stopping:
            return
        handed.stopping = True
        if handed.task is asyncio.current_task():
            assert self._loop is not None
            self._loop.call_soon(self._cancel_handed, pos, handed)
        else:
            self._cancel_handed(pos, handed)

    def _cancel_handed(self, pos: int, handed: _Handed) -> None:
        if self._handed and self._handed.get(pos) is handed and not handed.sent:
            handed.sent = True
            handed.task.cancel()

    def _stop_taskless(self, pos: int, call: Call) -> None:
        on_pool = self._on_pool.pop(pos, None)
        if on_pool is not None:  # on the pool: cancelled if no thread has it, else abandoned
            pool, job = on_pool
            pool.stop(call, job)
            assert self._loop is not None
            if self._stopped_late is None:
                self._stopped_late = set()
            self._stopped_late.add(pos)
            # never ran if no thread took it (a thread stamps began_at as it takes a call;
            # one that ran to its end is neither abandoned nor unstarted)
            self._loop.call_soon(self._stopped_end, call, AttemptResult(
                "cancelled", abandoned=call.abandoned,
                unstarted=not call.abandoned and call.began_at is None))
        elif not self._stopped_late or pos not in self._stopped_late:
            self._stopped_early().add(pos)  # to run at once, and not yet: it never will

    def _orphans(self) -> None:
        """Report cancelled the calls without a task that nothing will report any more.

        Only after an error broke off the code that would have (a ``KeyboardInterrupt`` in a
        batch of pool completions, say): the run is stopping, and must not wait for them.
        """
        for pos, call in list(self._tasks.items()):
            if (pos not in self._task_of and self._tasks.get(pos) is call
                    and pos not in self._on_pool and (not self._handed or pos not in self._handed)
                    and (not self._stopped_late or pos not in self._stopped_late)
                    and not self._at_once and not self._to_pool and not self._lean_due):
                assert self._context is not None
                self._context.run(self._report, self._attempt_done, call,
                                  AttemptResult("cancelled"))

    def _unreported(self, call: Call, task: asyncio.Task[None]) -> None:
        if self._task_of.get(call.pos) is task:  # it ended without saying so
            # cancelled before its first step (an attempt that began says how it ended, a
            # cancel included): its tool never ran
            self._attempt_done(call, AttemptResult("cancelled", unstarted=task.cancelled()))

    async def _new_executor(self, call: Call) -> Executor:
        # started once, by the first call that needs it; calls arriving meanwhile wait for
        # that start to finish instead of using a backend that is not started yet
        if self._starting is None:
            self._starting = {}
        starting = self._starting.get(call.isolation)
        if starting is None:
            if self._executor_for is None:
                raise RuntimeError(f"no backend {call.isolation!r} in this run")
            starting = self._starting[call.isolation] = asyncio.ensure_future(
                self._start_executor(call.isolation, self._executor_for(call.isolation)))
        return await asyncio.shield(starting)

    async def _start_executor(self, name: str, executor: Executor) -> Executor:
        await executor.start()
        self._executors[name] = executor
        return executor

    def _returned(self, call: Call, value: Any, began: float | None = None) -> None:
        """:meth:`_attempt_done` for a call that returned ``value``, without an AttemptResult.

        Run in the driver's context, as :meth:`_report` runs a step (its work done here: the
        edge from an end to what it releases passes here, one call less on it). ``began`` is
        when a call run at once ran (run time); a pool call's start is its ``began_at``. Only
        for an attempt with nothing to settle or journal (a call run at once, or a plain sync
        call on the pool, has none); any other goes the general way.
        """
        entered, self._entered = self._entered, True
        try:
            if self._late and id(call) in self._late:  # abandoned: its end is not reported
                return
            if self._task_returned:
                self._task_ends_first()
            if self._streaming or call.tool.injected or (
                    self._settling and call.pos in self._settling):
                self._attempt_done(call, AttemptResult("ok", value, began=began))
                return
            try:
                pos = call.pos
                del self._tasks[pos]  # one attempt per node at a time: this is the one
                if self._task_of:
                    self._task_of.pop(pos, None)
                where = call.where or self._hosts.get(call.isolation) or self._here(call)
                if call.began_at is None and call.ended_at is None:  # (a lean attempt's)
                    d = self.state.finish_ok(pos, value, where, self.now(), began)
                else:
                    if call.began_at is not None:
                        began = self._began(call.began_at)
                        began = None if began is None else began - self._t0
                    ended = None if call.ended_at is None else self._ended(call)
                    d = self.state.finish_ok(pos, value, where, self.now(), began, ended)
                self._apply(d)
            except Exception as exc:
                self._internal_error(call.node_id, exc)
        finally:
            self._entered = entered

    def _returned_many(self, batch: list[tuple[int, Any, str, float, float]],
                       at: float | None = None) -> None:
        """:meth:`_returned` for several calls, ``(pos, value, where, began, finished)`` each.

        Calls run at once, or pool calls whose ends came in one batch. One decision for the
        batch: what their ends release is dispatched once. (Their attempts are out of
        ``_tasks`` already, see :meth:`_burst` and :meth:`_plain_end`; neither kind is fed
        this way with a journal that writes ends one at a time.) What they release is
        decided at ``at`` (now), if given: a pool call's end is when its thread stamped it.
        """
        assert not self._streaming, "a call ran at once with a durable journal"
        if self._task_returned:
            self._task_ends_first()
        try:
            self._apply(self.state.finish_ok_many(batch, at))
        except Exception as exc:
            self._internal_error(self.graph.nodes[batch[-1][0]].id, exc)

    def _internal_error(self, node_id: str, exc: Exception) -> None:
        """A bug in shoal itself while recording a call's end: end the run loudly, not hang."""
        log.exception("internal error while recording %s", node_id)
        if self._finished is not None and not self._finished.done():
            self._finished.set_exception(exc)
            self._stopped_here()

    def _attempt_done(self, call: Call, result: AttemptResult) -> None:
        if self._late and id(call) in self._late:  # abandoned: its end is not reported
            return
        if self._task_returned:
            self._task_ends_first()
        try:
            del self._tasks[call.pos]  # one attempt per node at a time: this is the one
            if self._task_of:
                self._task_of.pop(call.pos, None)
            settling = self._settling.pop(call.pos, None) if self._settling else None
            interrupted: KeyboardInterrupt | None = None
            if settling:
                result, interrupted = self._settle(settling, result)
            if call.began_at is not None:
                began = self._began(call.began_at)
                if began is not None:
                    result.began = began - self._t0
            result.ended = self._ended(call)
            result.where = call.where or self._hosts.get(call.isolation) or self._here(call)
            now = self.now()
            if self._streaming and self._journal is not None:
                error = "" if result.error is None else str(ErrorInfo.from_exception(
                    result.error, with_traceback=False))
                self._journal.add(AttemptEnded(self.state.run_id, self._session, call.node_id,
                                               call.attempt, result.status, now, error,
                                               result.where))
            if result.abandoned and not result.running_on and self._reports_end(call):
                result.running_on = self._watch_end(call)
            self._apply(self.state.finish(call.pos, result, now))
            if call.released is not None:
                if not self.state.holds(call.pos):
                    call.released = None  # nothing to hold: its end is not wanted
                else:
                    if self._holding is None:
                        self._holding = {}
                    self._holding[call.pos] = call
            # this attempt's own values: a NodeContext points back to the call, a cycle only
            # a full pass would free. Not those of an abandoned attempt: its work may still
            # be about to read them (a pool thread takes the arguments when it starts it)
            if call.tool.injected and not call.abandoned:
                for name in call.tool.injected:
                    call.args.pop(name, None)
        except Exception as exc:
            self._internal_error(call.node_id, exc)
            return
        if interrupted is not None:  # raised once the call's end is in the books (see _settle)
            raise interrupted

    def _reports_end(self, call: Call) -> bool:
        """Whether ``call``'s backend tells when its abandoned work ends (a pool thread's)."""
        if call.isolation == "thread":  # (also a call handed to the pool straight away)
            return True
        executor = self._executors.get(call.isolation)
        return executor is not None and executor.reports_end

    def _watch_end(self, call: Call) -> bool:
        """Ask to hear when abandoned ``call``'s thread returns; whether it still runs.

        Asked before its end is looked at, so an end is either seen here or heard later
        (see ``shoal.executors.thread._released``, ``shoal.executors.ray._watch``; both is
        harmless).
        """
        call.released = self._work_ended
        return call.ended_at is None

    def _work_ended(self, call: Call) -> None:
        """An abandoned call's work really ended: the calls it held may start.

        Run on the loop (a pool thread hands it over); ignored for an attempt that holds
        nothing (it was retried, or the run is over: the held calls ended with it).
        """
        hook = call.released
        if isinstance(hook, GiveBack):  # ended after its run did: what it kept goes back
            hook(call)
            return
        if hook is None or self.state.finished:
            return
        call.released = None
        if self._holding is not None:
            self._holding.pop(call.pos, None)
        assert self._context is not None
        self._context.run(self._report, self._feed_released, call)

    def _feed_released(self, call: Call) -> None:
        try:
            self._apply(self.state.released(call.pos, self.now()))
        except Exception as exc:
            self._internal_error(call.node_id, exc)

    def _ended(self, call: Call) -> float | None:
        """When ``call``'s work really ended (run time), if its backend stamped it (see _began)."""
        if call.ended_at is None:
            return None
        ended = self._began(call.ended_at)
        return None if ended is None else ended - self._t0

    def _began(self, stamp: float) -> float | None:
        """A backend's monotonic stamp on the run's clock, if the clock can tell (else None).

        The clock may be the user's: a reading it cannot give, or gives as no number, only
        loses when the call really began (its start is then when it was started).
        """
        assert self._clock is not None
        try:
            began = self._clock.from_monotonic(stamp)
            return None if began is None or not math.isfinite(began) else began
        except Exception:  # math.isfinite refuses what is no number too
            log.warning("the clock of run %s failed to place a call's start",
                        self.state.run_id, exc_info=True)
            return None

    def _here(self, call: Call) -> str:
        """The name of this machine if ``call`` ran on a backend that runs everything here."""
        here = self._hosts.get(call.isolation)
        if here is None:
            executor = self._executors.get(call.isolation)
            here = HOST if executor is not None and executor.runs_here else ""
            if executor is not None:
                self._hosts[call.isolation] = here
        return here

    def _settle(self, settling: list[Settles], result: AttemptResult) -> tuple[
            AttemptResult, KeyboardInterrupt | None]:
        """Tell a call's injected values how its attempt ended; journal what they did.

        A board handle then commits its writes (or drops them). The records join this loop
        iteration's batch, which the outcome joins too: one transaction, so a resume replays
        both or neither. A commit that fails fails the call. Also returns a merge function's
        ``KeyboardInterrupt``, for the caller to raise once the call's end is recorded.
        """
        ok = result.status == "ok"
        interrupted: KeyboardInterrupt | None = None
        for value in settling:
            try:
                record = value.settle(ok)
            except KeyboardInterrupt as exc:
                if not self._ctrl_c_here:  # no Ctrl-C reaches this loop: the function's own
                    error = value_interrupt_error(
                        "a board's merge function (or a written value's own code)", exc)
                    result, ok = AttemptResult("failed", error=error), False
                    continue
                # a merge function's: stops the run, as Ctrl-C
                # does, but only once the call has ended: raised from here, its attempt was
                # still running as far as the run knew, and a run stopping waited for it (an
                # agent's tree: 5 s, blaming its tools for ignoring their cancellation)
                task = asyncio.current_task()
                if task is not None:  # raised to the run's caller from the loop: the task
                    # that raised it, left unread, was logged as never retrieved, with its
                    # traceback, when the garbage collector met it
                    task.add_done_callback(_read_exception)
                result, ok, interrupted = AttemptResult("failed", error=exc), False, exc
                continue
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # SystemExit too: the value's own code fails its
                # call, as a tool's exit does (escaping, it stopped the run as an internal error)
                result, ok = AttemptResult("failed", error=exc), False
                continue
            if record is not None and self._journal is not None:
                self._journal.add(record)
        return result, interrupted

    def _set_timer(self, when: float, kind: str, pos: int) -> None:
        assert self._clock is not None
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None and self._timers is not None:
                self._timers.discard(handle)
            self._on_timer(kind, pos)

        handle = self._clock.call_at(self._t0 + when, fire)
        if self._timers is None:
            self._timers = set()
        self._timers.add(handle)

    def _on_timer(self, kind: str, pos: int) -> None:
        if self._task_returned:
            self._task_ends_first()
        now = self.now()
        if kind == "retry":
            self._apply(self.state.retry_due(pos, now))
        elif kind == "rate":
            self._apply(self.state.wake(now))
        elif kind == "deadline":
            reason = f"the run's deadline of {self._deadline:g} s passed{self._leapt_past()}"
            self.cancelled_reason = self.cancelled_reason or reason
            self._apply(self.state.expire(reason, now))

    def _epoch_now(self) -> float:
        """Now in epoch seconds on the run's clock (for dates the journal keeps)."""
        if self._clock is None:
            return epoch_now(self._loop)
        try:
            return read_epoch(self._clock)
        except ConfigError:  # it told the start's date: count on from there on its time
            log.warning("the clock of run %s failed to give a date; using the run's start "
                        "plus its elapsed time", self.state.run_id, exc_info=True)
            return self._epoch + self.now()

    def _publish(self, events: Iterable[Event]) -> None:
        if not self._sinks and not self._internal:  # nobody listens: skip the stamping
            return
        for event in events:
            if self.lineage and not event.lineage:  # an agent's step: say whose calls these are
                node_id = getattr(event, "node_id", "")
                event = replace(event, lineage=f"{self.lineage}/{node_id}" if node_id
                                else self.lineage)
            self._send(self._internal, event)
            if self._shift:  # a nested run: its observers count from the outermost start
                event = _shifted(event, self._shift, self._origin_epoch)
            self._send(self._sinks, event)

    def _send(self, sinks: Iterable[Callable[[Event], None]], event: Event) -> None:
        failures = self._sink_failures
        for sink in sinks:
            # an observer's bug must not break the run it observes
            deliver(sink, event, failures=failures)

    # ---- the journal --------------------------------------------------------------------

    def _open_journal(self) -> None:
        """Journal the run as started: a new run's record is made here, a resumed one's anew."""
        if self._journal is None or self._run_record is None:
            return
        assert self._loop is not None
        self._journal.open(self._loop)
        record, self._run_record = self._run_record, None  # the store keeps it from here
        # the heartbeat says the process is alive: always the wall clock, which readers in
        # other processes compare it with; the host is the machine's name, which they compare
        # with theirs to tell whether they can look the pid up (not HOST: a Ray agent's
        # process names its node there, for outcomes)
        heartbeat = time.time()
        pid, host, start = this_process()  # (read once per process: a run per agent asks)
        if isinstance(record, RunStart):  # a new run (its first session)
            self._journal.add(record.started(self._epoch, heartbeat=heartbeat, pid=pid,
                                             host=host, pid_start=start))
            return
        self._journal.add(run_record_with(
            record, started_at=self._epoch, status="running", sessions=self._session,
            finished_at=None, heartbeat=heartbeat, pid=pid, host=host, pid_start=start))

    def _journal_decisions(self, d: Decisions) -> asyncio.Future[None] | None:
        """Journal ``d``'s outcomes and starts; return what the starts must wait for."""
        journal = self._journal
        if journal is None:
            return None
        run_id, now = self.state.run_id, self.now()
        early = self._journaled_early
        for pos in d.done:
            if early and pos in early:  # on its way to the disk already
                early.discard(pos)
                continue
            journal.add(self._outcome_record(pos))
        for call in d.starts:
            journal.add(AttemptStarted(run_id, self._session, call.node_id, call.attempt,
                                       call.tool.name, call.isolation, now, call.held))
        return journal.barrier() if d.starts else None

    def _journal_before_expanding(self, d: Decisions) -> None:
        """Send ``d``'s outcomes to the disk now: a wide map is about to make its items.

        Making 100,000 items takes seconds on the loop; the outcome that gave the map its list
        (a call that may have taken effect) would wait for them, and a crash meanwhile would
        leave it in doubt. Its dependents still start only once it is committed.
        """
        journal = self._journal
        if journal is None:
            return
        early = self._journaled_early
        if early is None:
            early = self._journaled_early = set()
        for pos in d.done:
            if pos not in early:
                early.add(pos)
                journal.add(self._outcome_record(pos))
        journal.send_now()

    def _journal_ends(self, done: Sequence[int]) -> None:
        """Journal the outcomes of the nodes at these positions now (see ``_ends_each``).

        No attempts, no barrier.
        """
        journal = self._journal
        if journal is not None:
            journal.add_many(self._outcome_record(pos) for pos in done)

    def _outcome_record(self, pos: int) -> OutcomeRecord:
        """The journal's record of the outcome of the node at ``pos`` (which has ended)."""
        outcome = self.state.outcome_at(pos)
        assert outcome is not None, f"{self.graph.nodes[pos].id} reported ended without one"
        return OutcomeRecord(self.state.run_id, outcome, self.graph.nodes[pos].index)

    def _restore(self, resume: Resumption) -> None:
        """Resume: hold what is in doubt, replay what completed, record what a person settled."""
        now = self.now()
        # first: replaying releases nodes, and a call in doubt must not be released as ready.
        # With an approver, a person decides whether each call in doubt runs again.
        self._apply(self.state.hold_in_doubt(resume.in_doubt, now,
                                             ask=self._desk.approver is not None))
        self._apply(self.state.restore([*resume.replay, *resume.settled], now))
        if self._watchers or self._early:  # replayed outcomes are not decisions: tell them
            self._tell_all_watchers()
        if (self._streaming or self._ends_each) and self._journal is not None:
            for outcome in resume.settled:  # new to the journal, unlike the replayed ones
                index = self.graph.nodes[self.graph.position[outcome.node_id]].index
                self._journal.add(OutcomeRecord(self.state.run_id, outcome, index))

    def _journal_event(self, event: Event) -> None:
        if self._journal is not None:
            self._journal.add(EventRecord(self.state.run_id, event))

    async def _close_journal(self, *, quiet: bool = False, raising: BaseException | None = None,
                             result: RunResult | None = None) -> None:
        """Record how this session ended and wait until everything is committed.

        ``quiet``: the run is stopping on another error (``raising``, if known), so a journal
        that could not be written is logged instead of raised, unless ``raising`` says so.
        ``result``: the session's result, when the caller has it (a large run's is large).
        """
        journal = self._end_journal(result)
        if journal is None:
            return
        try:
            await journal.close()
        except StoreError as exc:
            if not quiet:
                raise
            if raising is None or raising.__cause__ is not journal.failed:
                log.error("%s", exc)  # else nobody would hear of it

    def _end_journal(self, result: RunResult | None = None) -> Journal | None:
        """Journal how this session ended; the journal, to be closed (``None``: none).

        A memory store gets the outcomes and the end in one write (it wrote nothing before).
        """
        journal, self._journal = self._journal, None
        if journal is None:
            return None
        if result is None:
            result = self.result()
        status: RunStatus = "cancelled" if self.cancelled_reason else "finished"
        ended = RunEnded(self.state.run_id, status, self._epoch_now(), self._counts(),
                         result.makespan)
        if not self._streaming and not self._ends_each:
            outcomes, orders = self.state.ended_in_order()  # (no record per node for memory)
            # a journal that failed already journals no end (after the outcomes, or with them)
            journal.add_outcomes(outcomes, orders, None if journal.failed is not None else ended)
        elif journal.failed is None:
            journal.add(ended)
        return journal

    def _cancel_request(self, request: CancelRequest) -> None:
        """A cancel request from the journal (``shoal cancel`` in another process)."""
        if self.state.finished:
            return
        if not request.node_ids:
            self.cancel(None, request.reason)
            return
        known = [n for n in request.node_ids if n in self.graph.position]
        if len(known) < len(request.node_ids):
            log.warning("cancel request for run %s names unknown nodes %s", self.state.run_id,
                        sorted(set(request.node_ids) - set(known)))
        if known:
            self.cancel(known, request.reason)

    def _counts(self) -> dict[str, int]:
        """How many nodes ended in each status: ``RunResult.counts``, kept as they end.

        A large run's result would count a million outcomes again for each record.
        """
        return dict(self.state.status_counts)

    def _journal_failed(self, error: BaseException) -> None:
        """The journal cannot be written: stop the run, since durability is no longer kept."""
        if self._finished is not None and not self._finished.done():
            stopped = JournalWriteError(
                f"the journal of run {self.state.run_id} could not be written, "
                f"so the run stopped: {error}")
            stopped.__cause__ = error  # the run raises this one: nothing else says it
            self._finished.set_exception(stopped)
            self._stopped_here()

    async def _stop_cancelled(self) -> None:
        """Drain the cancelled run and journal its end, though this task is cancelled again.

        An anyio cancel scope (the MCP SDK's, a Starlette request's) cancels every await
        within it, over and over: awaited here, the drain and the journal's close would be
        cut short at once (the run left ``running`` in the journal, its calls' tasks going
        on). They run in a task of their own, which a second cancel leaves to finish.
        """
        stopping = asyncio.ensure_future(self._drain_and_close())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            _STOPPING.add(stopping)  # held until it ends (the loop keeps only weak references)
            stopping.add_done_callback(_stopped)
            raise

    async def _drain_and_close(self) -> None:
        await self._drain()
        await self._close_journal(quiet=True)

    async def _drain(self) -> None:
        """Wait for cancelled attempts to end, so no task outlives the run (but abandoned ones)."""
        self._task_ends_first()
        while self._tasks:
            pending = list(self._task_of.values())
            for pos in list(self._tasks):
                self._stop(pos)
            if self._at_once and not self._bursting:  # calls that were to run at once never do
                self._burst()
            if self._lean_due:  # tasks not made yet: stopped above, reported cancelled now
                self._start_lean(len(self._lean_due))
            if pending:
                await self._ended_or_abandoned(pending)
            else:  # only calls without tasks: their ends come on the next turn
                await asyncio.sleep(0)
                self._orphans()
            for pos, task in list(self._task_of.items()):
                call = self._tasks.get(pos)
                if call is not None and task.done():  # ended without reporting (Ctrl-C, say)
                    self._unreported(call, task)
            self._task_ends_first()
        await self._desk.drain(self.state.run_id)

    async def _ended_or_abandoned(self, pending: list[asyncio.Task[None]]) -> None:
        """Wait for the tasks of stopped attempts to end, at most :data:`ABANDON_GRACE` s.

        One still running then ignores its cancellation: abandoned, as its grace timer
        abandons it (see :meth:`_abandon`), so that the run ends with its outcome recorded.
        """
        done, late = await asyncio.wait(pending, timeout=ABANDON_GRACE)
        for task in done:  # (retrieved, as gather(return_exceptions=True) did)
            if not task.cancelled():
                task.exception()
        if late:
            for pos, task in list(self._task_of.items()):
                call = self._tasks.get(pos)
                if task in late and call is not None:
                    graced = self._graced.get(id(call)) if self._graced else None
                    self._abandon(call, task, "cancelled" if graced is None else graced[1])

    # ---- attempts that ignore their cancellation ------------------------------------------

    def _timeout(self, call: Call) -> asyncio.Timeout:
        """``asyncio.timeout(call.timeout)`` that arms the grace when it cancels the call."""
        assert self._loop is not None and call.timeout is not None
        return _CallTimeout(self._loop.time() + call.timeout, self, call)

    def _timed_out(self, call: Call) -> None:
        """``call``'s timeout cancelled its task: abandon it if it ignores that (a grace)."""
        task = self._task_of.get(call.pos)
        if task is not None and self._tasks.get(call.pos) is call:
            self._arm_grace(call, task, "timed_out")

    def _arm_grace(self, call: Call, task: asyncio.Task[None], status: AttemptStatus) -> None:
        """A cancel was issued to ``call``'s task: abandon it if it has not ended in a grace.

        Armed only when a cancel is issued (a timer and a done-callback): a call that is
        never cancelled costs nothing here. ``status``: what its outcome is if abandoned.
        """
        graced = self._graced
        if graced is None:
            graced = self._graced = {}
        elif id(call) in graced:  # cancelled again (the drain stops what runs): armed once
            return
        assert self._loop is not None
        graced[id(call)] = (self._loop.call_later(ABANDON_GRACE, self._abandon, call, task,
                                                  status), status)
        task.add_done_callback(partial(self._attempt_gone, call))

    def _attempt_gone(self, call: Call, task: asyncio.Task[None]) -> None:
        """The task of a cancelled attempt ended: its grace is over; say so if abandoned."""
        graced = self._graced.pop(id(call), None) if self._graced else None
        if graced is not None:
            graced[0].cancel()
        if self._late and self._late.pop(id(call), None) is not None:
            log.info("the abandoned call of %s (run %s) ended at last; its end is discarded",
                     call.node_id, self.state.run_id)
            self._work_ended(call)

    def _abandon(self, call: Call, task: asyncio.Task[None], status: AttemptStatus) -> None:
        """``call``'s task still runs :data:`ABANDON_GRACE` s after its cancel: abandon it.

        Its tool ignores cancellation (it catches ``CancelledError`` and goes on). As a
        thread's call that cannot be stopped, it is abandoned: its outcome (``status``) is
        recorded now, marked ``abandoned`` with a reason that says so, and its task is left
        to end on its own time; its end, if it ever comes, is discarded.
        """
        if self._graced:
            graced = self._graced.get(id(call))
            if graced is not None:
                graced[0].cancel()  # (called by the drain before its timer fired)
        if task.done() or self._tasks.get(call.pos) is not call or (
                self._task_of.get(call.pos) is not task):
            return  # it ended after all (its end is reported), or was reported already
        waited = f"{ABANDON_GRACE:g} s"
        log.warning("tool %r of node %s (run %s) ignored its cancellation for %s: abandoned, "
                    "still running", call.tool.name, call.node_id, self.state.run_id, waited)
        reason = (f"tool {call.tool.name!r} ignored its cancellation for {waited}: abandoned, "
                  "still running")
        error = (ToolTimeoutError(call.tool.name, call.timeout or 0.0)
                 if status == "timed_out" else None)
        result = AttemptResult(status, error=error, abandoned=True, reason=reason,
                               running_on=True)
        call.released = self._work_ended  # its task's end (see _attempt_gone) lets go
        if self._entered:
            self._attempt_done(call, result)
        else:
            assert self._context is not None
            self._context.run(self._report, self._attempt_done, call, result)
        if self._late is None:
            self._late = {}
        self._late[id(call)] = call  # from here on, its end is not reported
        keep_abandoned(task, partial(self._never_ends, call))

    def _never_ends(self, call: Call) -> None:
        """The loop closes with ``call``'s abandoned task still running: it never ends now.

        What it holds (its resource keys, a runtime's ``resource_limits`` slot) goes back
        as though it had ended: nothing can run it any more. Its slot stayed taken for the
        runtime's next runs (each ``*_sync`` call a loop of its own) for good.
        """
        if self._late and id(call) in self._late:  # (its end, should it come, is not reported)
            self._work_ended(call)  # (once: a later end gives nothing back twice)

    # ---- approvals ----------------------------------------------------------------------

    def _approval_barrier(self) -> asyncio.Future[None] | None:
        """What approval requests wait for: the run's record must be in the store first."""
        return self._journal.barrier() if self._journal is not None else None


class _Handed:
    """An attempt run in the task that added its node (see :meth:`Driver.run_here`)."""

    __slots__ = ("sent", "stopping", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.stopping = False  # its node's stop was asked for (or it is ending already)
        self.sent = False  # the task was cancelled for it


def _returned_value(call: Call, value: Any) -> AttemptResult:
    """The end of an attempt (on any backend) that returned ``value``, not of a plain type.

    Ok, unless the value is an awaitable nobody awaited.
    """
    try:
        unawaited = unawaited_result(call.tool.name, value)
    except Exception as exc:  # a hostile value (its __class__ raises, say): never unreported
        return _unrecorded(call, "its returned value", exc)
    return (AttemptResult("ok", value) if unawaited is None
            else AttemptResult("failed", error=unawaited))


#: The ends of runs started without a task (see :meth:`Driver.start_here`) that must be awaited.
_ENDING: set[asyncio.Task[None]] = set()


_ATTEMPTS = frozenset({Driver._attempt.__code__, Driver._attempt_inline.__code__})
_AWAIT_DEPTH = 16  # tasks awaiting tasks followed at most (a longer chain is not looked at)


def _attempt_of(task: asyncio.Task[Any], driver: Driver) -> Call | None:
    """The call whose attempt ``task`` runs, if it is one of ``driver``'s attempt tasks.

    Read from the task's coroutine (:meth:`Driver._attempt` or ``_attempt_inline``, whose
    frame holds the call), so no attempt notes anything as it starts; the caller checks the
    call against the driver's own record of its attempts.
    """
    coroutine = task.get_coro()
    if getattr(coroutine, "cr_code", None) not in _ATTEMPTS:
        return None
    frame = getattr(coroutine, "cr_frame", None)
    if frame is None:
        return None
    names = frame.f_locals
    call = names.get("call")
    return call if names.get("self") is driver and isinstance(call, Call) else None


def _unrecorded(call: Call, what: str, exc: Exception) -> AttemptResult:
    """The end of an attempt whose end could not be made into a result: it fails, saying why.

    An exception while building it (a shoal bug, or a hostile value) would otherwise end
    the attempt's task without a report, and the run would wait for it forever.
    """
    log.error("internal error: shoal could not record how the call of %s (tool %r) ended, "
              "from %s; it fails", call.node_id, call.tool.name, what, exc_info=exc)
    error = ShoalError(f"internal error: shoal could not record how tool {call.tool.name!r} "
                       f"ended, from {what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return AttemptResult("failed", error=error)


#: Tasks of abandoned attempts (see :meth:`Driver._abandon`), held until they end: a task
#: nobody references may be collected while it waits, and nobody else would.
_ABANDONED: set[asyncio.Task[Any]] = set()
#: What to do for an abandoned task still running as its loop closes (see end_tasks).
_AT_LOOP_END: weakref.WeakKeyDictionary[asyncio.Task[Any], Callable[[], None]] = (
    weakref.WeakKeyDictionary())


def keep_abandoned(task: asyncio.Task[Any],
                   at_loop_end: Callable[[], None] | None = None) -> None:
    """Hold ``task``, whose attempt was abandoned, until it ends; no destroy-pending warning.

    Its loop may be closed before it ends (see :func:`shoal.runtime.run_blocking`): then it
    never does, and asyncio would log "Task was destroyed but it is pending!" for a task
    shoal chose to leave, as it does for its own (``run_until_complete``). ``at_loop_end``
    is called then (by :func:`end_tasks`), in place of its end.
    """
    if at_loop_end is not None:
        _AT_LOOP_END[task] = at_loop_end
    if task not in _ABANDONED:
        _ABANDONED.add(task)
        task.add_done_callback(_ABANDONED.discard)
        with suppress(AttributeError):  # (asyncio's own flag for this)
            task._log_destroy_pending = False  # type: ignore[attr-defined]


def is_abandoned(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is the task of an abandoned attempt that has not ended yet."""
    return task in _ABANDONED


def end_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """Cancel the tasks left on ``loop`` (run by it) and wait for them, within a grace.

    For a ``*_sync`` call's loop, before it closes: as :class:`asyncio.Runner` does, but it
    waits at most :data:`ABANDON_GRACE` seconds, and not at all for tasks of attempts
    abandoned already (each had its grace). Returns the tasks that ignore their cancellation:
    they are abandoned (logged), and the loop is closed without them.
    """
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return []
    for task in tasks:
        task.cancel()
    waiting = [task for task in tasks if task not in _ABANDONED]
    if waiting:
        loop.run_until_complete(asyncio.wait(waiting, timeout=ABANDON_GRACE))
    stuck = []
    for task in tasks:
        if not task.done():
            stuck.append(task)
        elif not task.cancelled() and task.exception() is not None:  # as asyncio.run reports
            loop.call_exception_handler({
                "message": "unhandled exception during shoal's loop shutdown",
                "exception": task.exception(), "task": task})
    for task in stuck:
        at_end = _AT_LOOP_END.pop(task, None)
        if at_end is not None:  # it never ends now: what it holds goes back
            at_end()
        if task not in _ABANDONED:
            log.warning("task %s ignored its cancellation for %g s as its event loop ended: "
                        "the loop is closed without it", task.get_name(), ABANDON_GRACE)
            keep_abandoned(task)
    if stuck:
        log.warning("%d task(s) that ignore their cancellation were abandoned as the event "
                    "loop closed (a tool that catches CancelledError and goes on?)", len(stuck))
    return stuck


class _CallTimeout(asyncio.Timeout):  # type: ignore[misc]  # (final in typeshed only)
    """``asyncio.timeout()`` for a call's attempt that arms the abandon grace as it cancels.

    When it cancels the call, the driver arms the grace after which a tool that ignores the
    cancellation is abandoned. ``_on_timeout`` is the one place asyncio's timeout cancels its
    task (Python 3.11-3.13).
    """

    def __init__(self, when: float, driver: Driver, call: Call) -> None:
        super().__init__(when)
        self._driver, self._call = driver, call

    def _on_timeout(self) -> None:
        super()._on_timeout()  # type: ignore[misc]
        self._driver._timed_out(self._call)


#: Cancelled runs still draining and closing their journal after their task was cancelled
#: again (see :meth:`Driver._stop_cancelled`).
_STOPPING: set[asyncio.Future[None]] = set()


def _stopped(stopping: asyncio.Future[None]) -> None:
    """A cancelled run's drain and close, left to finish, ended: log what went wrong, if any."""
    _STOPPING.discard(stopping)
    if not stopping.cancelled() and stopping.exception() is not None:
        log.error("a cancelled run could not be stopped cleanly", exc_info=stopping.exception())


class CallCancelled(asyncio.CancelledError):
    """Raised by a tool to end its call ``cancelled``, saying why (``reason``).

    For a tool that stands for work cancelled elsewhere: a subagent's call, when that subagent
    alone was cancelled (``handle.cancel("lead/sub#2")``), ends so, with the subagent's reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _cancel_asked() -> bool:
    """Whether someone asked to cancel the running task (the driver stopping its attempt).

    ``False`` when a ``CancelledError`` came from the tool's own code: it raised one, or
    awaited a task or future that something else cancelled; and without a running loop (an
    abandoned attempt's coroutine closed after its loop was).
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


def _raised(call: Call, exc: BaseException, stopped: bool = False) -> AttemptResult:
    """The end of an attempt (on any backend) that raised ``exc`` (not a ``KeyboardInterrupt``).

    ``stopped``: the attempt was asked to stop (its task cancelled). A ``CancelledError``
    nobody asked for is the tool's own doing, not a cancellation of its call: it fails the
    call (as it does on the process backend), with an error that says so and keeps it as the
    cause, so its traceback shows where it came from; retries apply as to any failure.
    """
    if isinstance(exc, asyncio.CancelledError):
        try:
            if isinstance(exc, CallCancelled):
                return AttemptResult("cancelled", abandoned=call.abandoned,
                                     reason=str(exc.reason))
            if stopped:
                return AttemptResult("cancelled", abandoned=call.abandoned)
            return AttemptResult("failed", error=unasked_cancel_error(call.tool.name, exc))
        except Exception as error:  # a hostile one (no reason, say): never unreported
            return _unrecorded(call, f"the {type(exc).__name__} it raised", error)
    # incl. SystemExit: it fails the call, not the run; in an agent's process with an
    # open_files limit, a tool's "Too many open files" says which limit it reached
    return AttemptResult("failed", error=within_files_limit(exc))


def _tool_interrupted(call: Call, exc: KeyboardInterrupt) -> AttemptResult:
    """The end of an attempt whose tool raised ``KeyboardInterrupt`` where no Ctrl-C reaches.

    That is a loop off the main thread (see :meth:`Driver._start`): it fails the call with
    the error the thread and process backends give it, and the run goes on.
    """
    return AttemptResult("failed", error=tool_interrupt_error(call.tool.name, exc))


def _suspended(call: Call, coro: Coroutine[Any, Any, Any]) -> AttemptResult:
    """A call run at once that did not end in its first step (its code has no ``await``)."""
    coro.close()
    return AttemptResult("failed", error=RuntimeError(
        f"tool {call.tool.name!r} suspended in a step that cannot suspend"))


def _read_exception(task: asyncio.Task[Any]) -> None:
    """Read a task's end, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
