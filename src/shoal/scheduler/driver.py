"""The async driver: carries out the state machine's decisions on the event loop.

Each call attempt is one asyncio task. When it ends, a done-callback feeds the result to the
state machine and immediately carries out what it decides (start, cancel, set a timer), so a
dependent starts in the same loop iteration its last input finishes: no polling loop, no
lock-step rounds. Retry back-offs, rate-limit waits and the run deadline are loop timers.

Attempts never raise into the driver: a tool's error, a timeout and a cancellation all come back
as an :class:`~shoal.scheduler.state.AttemptResult`. That is why the driver keeps its own set of
tasks instead of an ``asyncio.TaskGroup`` (which would cancel every sibling on one error); it
still never leaves a task behind: on every exit path it cancels and awaits whatever is running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from shoal.deps import Graph
from shoal.events import Event, RunFinished, RunStarted
from shoal.exceptions import ToolTimeoutError
from shoal.executors.base import Call, Executor
from shoal.outcome import RunResult
from shoal.scheduler.state import AttemptResult, Decisions, SchedulerState

__all__ = ["Driver", "Snapshot"]

log = logging.getLogger("shoal")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A moment of a run, for live views: counts, and what is in flight since when."""

    run_id: str
    total: int
    elapsed: float
    counts: Mapping[str, int]
    running: Sequence[tuple[str, str, str, float]]  # (node id, tool, executor, started at)
    finished: bool


class Driver:
    """Runs one plan's state machine to completion on the current event loop."""

    def __init__(
        self,
        state: SchedulerState,
        executors: Mapping[str, Executor],
        *,
        sinks: Sequence[Callable[[Event], None]] = (),
        deadline: float | None = None,
    ) -> None:
        self.state = state
        self._executors = executors
        self._sinks = list(sinks)
        self._deadline = deadline
        self._tasks: dict[int, asyncio.Task[AttemptResult]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._mono_t0 = 0.0
        self._epoch = 0.0
        self._finished: asyncio.Future[None] | None = None
        self._before_start: list[Decisions] = []
        self.cancelled_reason = ""

    @property
    def graph(self) -> Graph:
        """The graph being run."""
        return self.state.graph

    def now(self) -> float:
        """Seconds since the run started, on the loop's clock."""
        return (self._loop.time() - self._t0) if self._loop is not None else 0.0

    async def run(self) -> RunResult:
        """Run until every node has an outcome; if cancelled from outside, stop all, re-raise."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._mono_t0 = time.monotonic()  # backends report when work began on this clock
        self._epoch = time.time()
        self._finished = self._loop.create_future()
        self._publish([RunStarted(run_id=self.state.run_id, time=0.0,
                                  nodes=len(self.state.slots), epoch=self._epoch)])
        for early in self._before_start:  # cancellations asked for before the run's first turn
            self._publish(early.events)
        self._before_start.clear()
        if self._deadline is not None:
            self._set_timer(self._deadline, "deadline", -1)
        self._apply(self.state.begin(0.0))
        try:
            await self._finished
        except asyncio.CancelledError:
            self.cancelled_reason = self.cancelled_reason or "the run was cancelled"
            self._apply(self.state.cancel(None, self.cancelled_reason, self.now()))
            await self._drain()
            raise
        except BaseException:  # an internal error surfaced by _attempt_done: stop, then raise it
            await self._drain()
            raise
        finally:
            for handle in self._timers:
                handle.cancel()
            self._timers.clear()
        result = self.result()
        self._publish([RunFinished(run_id=self.state.run_id, time=max(self.now(), result.makespan),
                                   counts=result.counts, makespan=result.makespan)])
        return result

    def cancel(self, node_ids: Iterable[str] | None, reason: str) -> None:
        """Cancel some nodes, or the whole run (``None``); outcomes are recorded as usual."""
        if node_ids is None:
            self.cancelled_reason = self.cancelled_reason or reason
        decisions = self.state.cancel(node_ids, reason, self.now())
        if self._loop is None:  # not started: nothing runs yet, so only events are pending
            self._before_start.append(decisions)
        else:
            self._apply(decisions)

    def snapshot(self) -> Snapshot:
        """Counts and in-flight calls now."""
        return Snapshot(self.state.run_id, len(self.state.slots), self.now(),
                        dict(self.state.status_counts), self.state.running(), self.state.finished)

    def result(self) -> RunResult:
        """The outcomes so far (all of them once the run is over)."""
        outcomes = self.state.outcomes()
        makespan = max((o.finished_at or 0.0 for o in outcomes), default=0.0)
        return RunResult(self.state.run_id, {o.node_id: o for o in outcomes}, makespan,
                         self.graph, self._epoch, self.cancelled_reason)

    # ---- carrying out decisions ---------------------------------------------------------

    def _apply(self, d: Decisions) -> None:
        assert self._loop is not None
        # Starts before cancels: one decision can start a call and (fail_fast) cancel it.
        for call in d.starts:
            task = self._loop.create_task(self._attempt(call))
            self._tasks[call.pos] = task
            task.add_done_callback(partial(self._attempt_done, call))
        for pos in d.cancels:
            running = self._tasks.get(pos)
            if running is not None:
                running.cancel()
        for when, kind, pos in d.timers:
            self._set_timer(when, kind, pos)
        if d.events:
            self._publish(d.events)
        if self.state.finished and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    async def _attempt(self, call: Call) -> AttemptResult:
        executor = self._executors[call.executor]
        scope: asyncio.Timeout | None = None
        try:
            if executor.prepares:  # outside the timeout: waiting for a worker is not the call's
                await executor.prepare(call)
            if call.timeout is None:
                value = await executor.execute(call)
            else:
                async with asyncio.timeout(call.timeout) as scope:
                    value = await executor.execute(call)
            return AttemptResult("ok", value)
        except TimeoutError as exc:
            if scope is not None and scope.expired():
                return AttemptResult("timed_out", error=ToolTimeoutError(call.tool.name,
                                     call.timeout or 0.0), abandoned=call.abandoned)
            return AttemptResult("failed", error=exc)
        except asyncio.CancelledError:
            return AttemptResult("cancelled", abandoned=call.abandoned)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # incl. SystemExit: a tool's exit fails it; the run lives
            return AttemptResult("failed", error=exc)

    def _attempt_done(self, call: Call, task: asyncio.Task[AttemptResult]) -> None:
        del self._tasks[call.pos]  # one attempt per node at a time: this is the one
        # a task cancelled before its first step never entered _attempt's try block
        result = AttemptResult("cancelled") if task.cancelled() else task.result()
        if call.began_at is not None:
            result.began = call.began_at - self._mono_t0
        try:
            self._apply(self.state.finish(call.pos, result, self.now()))
        except Exception as exc:  # a bug in shoal itself: end the run loudly rather than hang
            log.exception("internal error while recording %s", call.node_id)
            if self._finished is not None and not self._finished.done():
                self._finished.set_exception(exc)

    def _set_timer(self, when: float, kind: str, pos: int) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            self._on_timer(kind, pos)

        handle = self._loop.call_at(self._t0 + when, fire)
        self._timers.add(handle)

    def _on_timer(self, kind: str, pos: int) -> None:
        now = self.now()
        if kind == "retry":
            self._apply(self.state.retry_due(pos, now))
        elif kind == "rate":
            self._apply(self.state.wake(now))
        elif kind == "deadline":
            reason = f"the run's deadline of {self._deadline:g} s passed"
            self.cancelled_reason = self.cancelled_reason or reason
            self._apply(self.state.expire(reason, now))

    def _publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for sink in self._sinks:
                try:
                    sink(event)
                except Exception:  # an observer's bug must not break the run it observes
                    log.exception("event sink %r failed on %s; continuing", sink, event.kind)

    async def _drain(self) -> None:
        """Wait for cancelled attempts to end, so no task outlives the run."""
        while self._tasks:
            pending = list(self._tasks.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
