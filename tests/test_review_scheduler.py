"""A hard look at the scheduler core: cancellation at awkward moments, clocks, runs kept short.

Each test here failed before the fix it pins: a call cancelled before its first step that still
ran its tool, a module-level run that dropped the journal its agent nodes' retries read, clocks
whose overrides were ignored or whose timers went to a loop that was not running, a cancel from
another thread that waited for the loop to wake by itself, approval decisions dated on the
wall clock while their requests were dated on the run's, a run whose clock could not set a
timer that left its journal open (or journaled a run that stopped on an error as finished).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal.events import Event, NodeStarted
from shoal.store.sqlite import SQLiteStore
from shoal.testing import run_virtual
from tests.test_composition_review import _hiccuping_counter, listing

ran: list[Any] = []


@shoal.tool
async def quick() -> int:
    """End at once."""
    return 1


@shoal.tool
async def boom() -> int:
    """Fail at once."""
    raise ValueError("boom")


@shoal.tool
async def effect(value: int) -> int:
    """A side effect (recorded), done in the tool's first step."""
    ran.append(("inline", value))
    return value


@shoal.tool(isolation="thread")
def sync_effect(value: int) -> int:
    """A side effect on a thread."""
    ran.append(("thread", value))
    return value


@shoal.tool
async def forever() -> None:
    """Wait an hour: only a cancel ends it."""
    await asyncio.sleep(3600)


@shoal.tool(retries=1, backoff=5.0, max_backoff=5.0)
async def flaky(key: str) -> str:
    """Fail the first attempt of each key, succeed the next."""
    if key not in seen:
        seen.add(key)
        raise ConnectionError("first attempt fails")
    return key


seen: set[str] = set()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ran.clear()
    seen.clear()


# ---- a call cancelled before its first step never runs -----------------------------------


def test_fail_fast_never_runs_calls_it_cancelled_before_they_began() -> None:
    """``quick`` releases the effects; ``boom`` fails in the same loop turn, before they step.

    fail_fast cancels them there: they must end ``cancelled`` without running (they used to
    take their first step, so an inline tool ran to the end and came out ``ok``).
    """
    plan = shoal.Plan()
    first = plan.call(quick)
    plan.call(boom)
    inline = [plan.call(effect, value=first) for _ in range(3)]
    threaded = [plan.call(sync_effect, value=first) for _ in range(3)]
    result = shoal.run_sync(plan, fail_fast=True)
    for ref in [*inline, *threaded]:
        outcome = result[ref]
        assert outcome.status == "cancelled" and not outcome.abandoned, outcome
    assert [r for r in ran if r[0] == "inline"] == []


def test_a_run_cancelled_as_its_calls_start_runs_none_of_them() -> None:
    """A sink cancels the run on the first NodeStarted: the calls it started never step."""

    async def main() -> shoal.RunResult:
        holder: list[shoal.RunHandle] = []

        def cancel_on_start(event: Event) -> None:
            if isinstance(event, NodeStarted) and holder:
                holder[0].cancel(reason="stop at the start")

        plan = shoal.Plan()
        for value in range(4):
            plan.call(effect, value=value)
        async with shoal.Runtime() as runtime:
            handle = runtime.start(plan, on_event=cancel_on_start)
            holder.append(handle)
            return await handle

    result = asyncio.run(main())
    assert {o.status for o in result.outcomes.values()} == {"cancelled"}
    assert ran == []


# ---- a cancel from another thread --------------------------------------------------------


def test_a_run_cancelled_from_another_thread_ends_without_waiting_for_a_timer() -> None:
    """The loop sleeps on an hour-long timer; a cancel from a thread must wake it at once.

    Real time (a real thread): the bound is 20 s against the moment of the cancel, which a
    loop that is woken ends in milliseconds and one left asleep only at the 20 s timer.
    """
    started = threading.Event()
    cancelled_at: list[float] = []

    def cancel_when_started(handle: shoal.RunHandle) -> None:
        if started.wait(10):
            cancelled_at.append(time.monotonic())
            handle.cancel(reason="from a thread")

    async def main() -> tuple[shoal.RunResult, float]:
        plan = shoal.Plan()
        plan.call(forever)
        async with shoal.Runtime() as runtime:
            handle = runtime.start(
                plan, on_event=lambda e: started.set() if isinstance(e, NodeStarted) else None)
            canceller = threading.Thread(target=cancel_when_started, args=(handle,))
            canceller.start()
            try:  # the bound only matters when the cancel does not wake the loop
                result = await asyncio.wait_for(handle.as_future(), 20.0)
                return result, time.monotonic()
            finally:
                canceller.join()

    result, ended = asyncio.run(main())
    (outcome,) = result.outcomes.values()
    assert outcome.status == "cancelled" and result.cancelled_reason == "from a thread"
    assert ended - cancelled_at[0] < 10.0


def test_an_unknown_node_cancelled_from_another_thread_is_refused_there() -> None:
    errors: list[BaseException] = []

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(quick)
        async with shoal.Runtime() as runtime:
            handle = runtime.start(plan)

            def cancel() -> None:
                try:
                    handle.cancel("nope#1")
                except KeyError as exc:
                    errors.append(exc)

            await asyncio.to_thread(cancel)
            return await handle

    assert asyncio.run(main()).ok
    assert len(errors) == 1 and "nope#1" in str(errors[0])


# ---- shoal.run without a store -----------------------------------------------------------


def test_module_level_run_keeps_the_journal_a_retried_agent_node_continues_from() -> None:
    """An agent node retried after a failed attempt replays its tool calls from the journal.

    ``shoal.run_sync`` keeps no journal for plain plans; with agent nodes it must keep one,
    or each retry refuses to run (its tool calls would run twice).
    """
    agent = _hiccuping_counter()
    plan = shoal.Plan()
    mapped = plan.map(agent.node_tool.options(retries=1), over=plan.call(listing, n=3),
                      partial=True)
    board = shoal.Board(count=shoal.merge.counter)
    result = shoal.run_sync(plan, board=board)
    assert result[mapped].value == ["done"] * 3
    assert result.board == {"count": 3}


def test_module_level_run_of_a_plain_plan_still_keeps_no_journal() -> None:
    from shoal.runtime import _throwaway

    plan = shoal.Plan()
    plan.call(quick)
    assert _throwaway({}, plan) == {"store": None}
    assert _throwaway({"store": "memory"}, plan) == {"store": "memory"}


# ---- clocks ------------------------------------------------------------------------------


def test_a_clock_that_overrides_time_is_refused_not_ignored() -> None:
    class Backwards(shoal.Clock):
        def time(self) -> float:
            return -1.0

    async def main() -> None:
        Backwards(asyncio.get_running_loop())

    with pytest.raises(shoal.ConfigError, match=r"overrides Clock\.time"):
        asyncio.run(main())


def test_a_runtime_refuses_a_clock_that_is_not_one() -> None:
    with pytest.raises(shoal.ConfigError, match=r"clock must be a shoal\.Clock"):
        shoal.Runtime(clock=object())  # type: ignore[arg-type]


def test_a_clock_of_another_loop_is_refused_before_anything_runs() -> None:
    """Its timers (a retry's back-off) would go to a loop that never runs: a hang."""
    other = asyncio.new_event_loop()
    try:
        runtime = shoal.Runtime(clock=shoal.Clock(other))
        plan = shoal.Plan()
        plan.call(flaky, key="k")
        plan.call(effect, value=1)
        with pytest.raises(shoal.ConfigError, match="clock of another event loop"):
            runtime.run_sync(plan)
        assert ran == [] and seen == set()
    finally:
        other.close()


@pytest.mark.parametrize("date", [math.nan, math.inf, "soon", OSError("clock broke")])
def test_a_clock_that_cannot_date_the_run_is_refused_before_anything_runs(date: Any) -> None:
    class BadDates(shoal.Clock):
        def epoch(self) -> float:
            if isinstance(date, BaseException):
                raise date
            return date  # type: ignore[no-any-return]

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(effect, value=1)
        async with shoal.Runtime(clock=BadDates(asyncio.get_running_loop())) as runtime:
            return await runtime.run(plan)

    with pytest.raises(shoal.ConfigError, match="the run's clock"):
        asyncio.run(main())
    assert ran == []


def test_a_clock_that_stops_dating_midway_still_ends_the_run_with_a_date() -> None:
    """Dates after the start fall back to the start's date plus the run's own time."""
    store = shoal.MemoryStore()

    class Tired(shoal.Clock):
        calls = 0

        def epoch(self) -> float:
            Tired.calls += 1
            if Tired.calls > 2:  # the runtime's record and the driver's start
                return math.nan
            return 1_000_000.0 + self.time()

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(flaky, key="tired")
        async with shoal.Runtime(clock=Tired(asyncio.get_running_loop()),
                                 store=store) as runtime:
            return await runtime.run(plan, run_id="tired")

    result = run_virtual(main())
    assert result.ok
    record = store.get_run("tired")
    assert record is not None and record.finished_at is not None
    assert record.finished_at == pytest.approx(record.started_at + result.makespan, abs=1e-6)


@pytest.mark.parametrize("stamp", [math.nan, "late", ValueError("no idea")])
def test_a_clock_that_cannot_place_a_threads_start_loses_only_that(stamp: Any) -> None:
    class Vague(shoal.Clock):
        def from_monotonic(self, _: float) -> float | None:
            if isinstance(stamp, BaseException):
                raise stamp
            return stamp  # type: ignore[no-any-return]

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(sync_effect, value=1)
        async with shoal.Runtime(clock=Vague(asyncio.get_running_loop())) as runtime:
            return await runtime.run(plan)

    result = asyncio.run(main())
    (outcome,) = result.outcomes.values()
    assert outcome.status == "ok" and outcome.started_at is not None
    assert math.isfinite(outcome.started_at) and math.isfinite(result.makespan)


# ---- approvals on the run's clock --------------------------------------------------------


@shoal.tool(approval=True)
async def gated(value: int) -> int:
    """Needs a person's yes."""
    return value


def _after(seconds: float, answer: bool) -> Callable[[Any], Any]:
    async def approver(_: Any) -> bool:
        await asyncio.sleep(seconds)
        return answer
    return approver


@pytest.mark.parametrize("answer", [True, False])
def test_approval_decisions_are_dated_on_the_runs_clock_like_their_requests(
        answer: bool) -> None:
    """An hour of virtual waiting for a person is an hour between request and decision."""
    store = shoal.MemoryStore()

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(gated, value=1)
        async with shoal.Runtime(store=store, approver=_after(3600.0, answer)) as runtime:
            return await runtime.run(plan, run_id="dated")

    result = run_virtual(main())
    assert result.ok is answer
    (record,) = store.approvals("dated")
    assert record.decided_at is not None
    assert record.decided_at - record.requested_at == pytest.approx(3600.0, abs=1e-6)


class _NoTimers(shoal.Clock):
    """A clock that cannot set timers (after ``allowed`` of them)."""

    allowed = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        if _NoTimers.allowed <= 0:
            raise RuntimeError("no timers on this clock")
        _NoTimers.allowed -= 1
        return super().call_at(when, callback)


@pytest.mark.parametrize("where", ["deadline", "retry"])
def test_a_clock_whose_timers_fail_stops_the_run_and_closes_its_journal(
        where: str, tmp_path: Any) -> None:
    """The run's deadline timer (at its start) or a retry's back-off cannot be set.

    The error reaches the caller, and the journal is closed, not left to a writer thread:
    the run is journaled as stopped, not as finished or still running.
    """
    _NoTimers.allowed = 1 if where == "retry" else 0

    async def main() -> None:
        plan = shoal.Plan()
        plan.call(flaky.options(backoff=0.01, max_backoff=0.01), key=where)
        clock = _NoTimers(asyncio.get_running_loop())
        async with shoal.Runtime(store=str(tmp_path / "runs.db"), clock=clock,
                                 deadline=600.0) as runtime:
            await runtime.run(plan, run_id="timers")

    # real time: the journal's writer is a real thread, which a virtual loop would not wait for
    with pytest.raises(RuntimeError, match="no timers on this clock"):
        asyncio.run(main())
    assert not [t for t in threading.enumerate() if t.name.startswith("shoal-journal")]
    store = SQLiteStore(str(tmp_path / "runs.db"))
    try:
        record = store.get_run("timers")
        assert record is not None and record.status == "cancelled"
    finally:
        store.close()


# ---- an eager task factory ---------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task factories: Python 3.12+")
def test_runs_work_under_an_eager_task_factory() -> None:
    """An eager factory runs a task's first step inside create_task, before the driver has
    recorded the attempt: each attempt must still report once, in a turn of its own.

    A chain of instant tools (it used to fail on the first: an attempt not yet recorded
    reported its end), fail_fast (calls it cancelled never run) and a cancel all end right.
    """

    async def main() -> tuple[shoal.RunResult, shoal.RunResult, shoal.RunResult]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        chain = shoal.Plan()
        ref = chain.call(effect, value=0)
        for _ in range(2000):  # deeper than the stack, were each end to start the next inline
            ref = chain.call(effect, value=ref)
        failing = shoal.Plan()
        first = failing.call(quick)
        failing.call(boom)
        for _ in range(3):
            failing.call(effect, value=first)
        waiting = shoal.Plan()
        for _ in range(5):
            waiting.call(forever)
        async with shoal.Runtime() as runtime:
            handle = runtime.start(waiting)
            await asyncio.sleep(0.01)
            handle.cancel()
            return (await runtime.run(chain), await runtime.run(failing, fail_fast=True),
                    await handle)

    chained, failed, cancelled = asyncio.run(main())
    assert chained.ok and len(chained.outcomes) == 2001
    assert sorted(o.status for o in failed.outcomes.values()) == [
        "cancelled", "cancelled", "cancelled", "failed", "ok"]
    assert {o.status for o in cancelled.outcomes.values()} == {"cancelled"}
