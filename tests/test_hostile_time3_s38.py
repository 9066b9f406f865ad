"""A hostile user of abandoned threads and the keys they hold (sweep 38, round 3).

Each test here failed before the fix it names. They run on the real clock: the work is on
pool threads, which the virtual clock of :mod:`shoal.testing` may leap past (a timeout could
fire before a worker took the job, and the attempt would not be abandoned but never run).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import shoal
from shoal.events import Event, NodeFinished, NodeHeld, NodeRetrying
from shoal.scheduler.driver import Driver


class _Attempts:
    """A sync tool whose first attempt outlives its timeout, let go once it is retried."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.log: list[str] = []

    def work(self, p: str) -> None:
        n = sum(1 for line in self.log if line.endswith("begins"))
        self.log.append(f"{n} begins")
        if n == 0:
            self.gate.wait(10)
            time.sleep(0.2)  # (real time) long enough for a retry started early to log first
        self.log.append(f"{n} ends")

    def sink(self, events: list[Event]) -> Any:
        def on(event: Event) -> None:
            events.append(event)
            if isinstance(event, NodeRetrying):
                self.gate.set()  # the retry is due: the first attempt's thread ends 0.2 s later
        return on


def _retried(work: _Attempts, **options: Any) -> tuple[shoal.Plan, str]:
    tool = shoal.tool(work.work, name="w", timeout=0.2, retries=1, backoff=0.05, **options)
    plan = shoal.Plan()
    return plan, plan.call(tool, p="/p").node


def test_a_retry_of_a_write_waits_for_the_thread_of_its_own_timed_out_attempt() -> None:
    # was: the retry started at once, the first attempt's thread still writing file:/p
    work, events = _Attempts(), list[Event]()
    plan, node = _retried(work, writes=["file:{p}"])
    result = asyncio.run(shoal.Runtime(on_event=work.sink(events)).run(plan))
    assert result[node].status == "ok" and result[node].attempts == 2
    assert work.log == ["0 begins", "0 ends", "1 begins", "1 ends"]
    (held,) = [e for e in events if isinstance(e, NodeHeld)]
    assert held.node_id == node and held.by == node
    assert held.reason == ("waiting for the thread of its own attempt 1, which timed out and "
                           "still runs, to release file:/p")


def test_an_exclusive_retry_waits_for_its_own_thread_and_one_without_keys_does_not() -> None:
    work, events = _Attempts(), list[Event]()
    plan, node = _retried(work, exclusive=True)
    asyncio.run(shoal.Runtime(on_event=work.sink(events)).run(plan))
    assert work.log == ["0 begins", "0 ends", "1 begins", "1 ends"]
    assert [e.reason for e in events if isinstance(e, NodeHeld)] == [
        "waiting for the thread of its own attempt 1, which timed out and still runs, to end "
        f"({node} is exclusive)"]
    free = _Attempts()  # no key, not exclusive: retried at once, as before
    plan, node = _retried(free)
    events.clear()
    asyncio.run(shoal.Runtime(on_event=free.sink(events)).run(plan))
    assert free.log == ["0 begins", "1 begins", "1 ends"]  # its first thread still runs
    for _ in range(100):
        if "0 ends" in free.log:
            break
        time.sleep(0.05)
    assert not [e for e in events if isinstance(e, NodeHeld)]


def test_a_retry_held_by_its_own_thread_ends_at_the_runs_deadline() -> None:
    work = _Attempts()
    plan, node = _retried(work, writes=["file:{p}"])

    async def main() -> shoal.RunResult:
        try:
            return await shoal.Runtime(deadline=1).run(plan)
        finally:
            work.gate.set()

    result = asyncio.run(main())
    assert result[node].status == "timed_out"  # at the deadline, not ok
    assert "1 begins" not in work.log


def test_a_thread_that_never_returns_does_not_keep_the_runs_driver_alive() -> None:
    # was: the abandoned call's ``released`` kept the driver's bound method (and so its
    # state, journal and results) for as long as the thread ran, here for ever
    work = _Attempts()
    tool = shoal.tool(work.work, name="w", timeout=0.2, writes=["file:{p}"])
    plan = shoal.Plan()
    plan.call(tool, p="/p")
    node = plan.call(tool, p="/p").node  # held by the first one's thread until the deadline
    try:
        result = asyncio.run(shoal.Runtime(deadline=1).run(plan))
        assert result[node].status == "cancelled"
        run_id = result.run_id
        del result
        gc.collect()
        assert not [o for o in gc.get_objects()
                    if isinstance(o, Driver) and o.state.run_id == run_id]
    finally:
        work.gate.set()


def test_a_resource_limit_slot_is_held_until_an_abandoned_thread_ends() -> None:
    # was: 'slow' (reads host:a, a limit of 1) timed out and gave its slot back at once, its
    # thread still talking to host:a, and 'quick' (reads host:a too: no order between reads)
    # took it: two calls on host:a at once
    work = _Attempts()
    slow = shoal.tool(work.work, name="slow", reads=["host:{p}"], timeout=0.2)
    quick = shoal.tool(lambda p: work.log.append("quick runs"), name="quick",
                       reads=["host:{p}"])
    plan = shoal.Plan()
    first = plan.call(slow, p="a")
    second = plan.call(quick, p="a")

    def sink(event: Event) -> None:
        if isinstance(event, NodeFinished) and event.node_id == first.node:
            work.gate.set()

    runtime = shoal.Runtime(resource_limits={"host:*": 1}, on_event=sink)
    result = asyncio.run(runtime.run(plan))
    assert result[first.node].status == "timed_out"
    assert result[second.node].status == "ok"
    assert work.log == ["0 begins", "0 ends", "quick runs"]


_TwoRuns = tuple[_Attempts, shoal.Runtime, shoal.Plan, str, shoal.Plan, str]


def _two_runs_on_one_slot() -> _TwoRuns:
    """A runtime of one ``host:*`` slot, a read of host:a outliving its timeout, another's read.

    Returns the work, the runtime, and each plan with its node.
    """
    work = _Attempts()
    slow = shoal.tool(work.work, name="slow", reads=["host:{p}"], timeout=0.2)
    quick = shoal.tool(lambda p: work.log.append("quick runs"), name="quick",
                       reads=["host:{p}"])
    runtime = shoal.Runtime(resource_limits={"host:*": 1})
    first, second = shoal.Plan(), shoal.Plan()
    one, two = first.call(slow, p="a").node, second.call(quick, p="a").node
    return work, runtime, first, one, second, two


def test_a_resource_limit_slot_kept_past_its_runs_end_goes_back_when_the_thread_ends() -> None:
    # its run is over (run_sync closed its loop): the thread gives the slot back as it ends,
    # and the next run of the runtime gets it then, not while the thread still uses host:a
    work, runtime, first, one, second, two = _two_runs_on_one_slot()
    try:
        assert runtime.run_sync(first)[one].status == "timed_out"
        threading.Timer(0.3, work.gate.set).start()
        assert runtime.run_sync(second, deadline=5)[two].status == "ok"
        assert work.log == ["0 begins", "0 ends", "quick runs"]
    finally:
        work.gate.set()


def test_the_journal_says_why_a_held_call_started_late(tmp_path: Any) -> None:
    # was: the journal had no word of the hold: the timeline said the call waited for the
    # timed-out write to end (at its timeout), then started much later with no reason given
    from shoal.timeline.journal import from_journal

    spans: dict[str, list[float]] = {}

    def slow(p: str) -> None:
        spans["slow"] = [time.monotonic()]
        time.sleep(0.9)
        spans["slow"].append(time.monotonic())

    plan = shoal.Plan()
    first = plan.call(shoal.tool(slow, writes=["db:{p}"], timeout=0.3), p="t").node
    second = plan.call(shoal.tool(lambda p: p, name="quick", writes=["db:{p}"]), p="t").node
    store = shoal.SQLiteStore(tmp_path / "runs.db")
    result = shoal.Runtime(store=store).run_sync(plan)
    assert result[second].status == "ok"
    why = (f"waiting for the thread of {first!r}, which timed out and still runs, to release "
           "db:t")
    (attempt,) = [a for a in store.attempts(result.run_id) if a.node_id == second]
    assert attempt.held == why
    (bar,) = [b for b in from_journal(store, result.run_id).bars if b.node_id == second]
    assert [w.text for w in bar.waits] == [
        f"waited for {first} (resource conflict: writes db:t / writes db:t); then held: "
        f"{why}"]


def test_the_timeline_says_a_retry_waited_for_its_own_earlier_thread(tmp_path: Any) -> None:
    from shoal.timeline.journal import from_journal

    work = _Attempts()
    plan, node = _retried(work, writes=["file:{p}"])
    store = shoal.SQLiteStore(tmp_path / "runs.db")
    result = asyncio.run(shoal.Runtime(store=store, on_event=work.sink([])).run(plan))
    assert result[node].attempts == 2
    why = ("waiting for the thread of its own attempt 1, which timed out and still runs, to "
           "release file:/p")
    assert [a.held for a in store.attempts(result.run_id)] == ["", why]
    (bar,) = from_journal(store, result.run_id).bars
    (wait,) = bar.waits
    assert wait.kind == "retry" and wait.text.endswith(f"; then held: {why}")


def test_a_held_retry_names_the_key_its_attempt_used_not_the_plans_wildcard() -> None:
    # its path came from an upstream call: the plan's key was 'file:*'
    work, events = _Attempts(), list[Event]()
    plan = shoal.Plan()
    path = plan.call(shoal.tool(lambda: "/x\x1b[2J", name="path"))
    tool = shoal.tool(work.work, name="w", timeout=0.2, retries=1, backoff=0.05,
                      writes=["file:{p}"])
    node = plan.call(tool, p=path).node
    result = shoal.Runtime(on_event=work.sink(events)).run_sync(plan)
    assert result[node].status == "ok"
    assert [e.reason for e in events if isinstance(e, NodeHeld)] == [
        "waiting for the thread of its own attempt 1, which timed out and still runs, to "
        "release file:/x\x1b[2J"]


def test_another_run_of_the_runtime_waits_for_the_slot_an_abandoned_thread_keeps() -> None:
    work, runtime, first, _, second, _ = _two_runs_on_one_slot()

    async def main() -> None:
        one = runtime.start(first)
        await asyncio.sleep(0.3)  # 'slow' timed out, its thread still on host:a
        two = runtime.start(second)
        await asyncio.sleep(0.2)
        work.log.append("let go")
        work.gate.set()
        await one
        await two

    asyncio.run(main())
    assert work.log == ["0 begins", "let go", "0 ends", "quick runs"]


def test_the_snapshot_lists_a_retry_held_by_its_own_thread() -> None:
    work = _Attempts()
    plan, node = _retried(work, writes=["file:{p}"])
    handles: list[shoal.RunHandle] = []
    seen: list[Any] = []

    def sink(event: Event) -> None:
        if isinstance(event, NodeRetrying):
            seen.append(handles[0].snapshot().held)
            work.gate.set()

    async def main() -> shoal.RunResult:
        handles.append(shoal.Runtime(on_event=sink).start(plan))
        return await handles[0]

    assert asyncio.run(main())[node].status == "ok"
    assert seen == [[(node, "w", "waiting for the thread of its own attempt 1, which timed out "
                                 "and still runs, to release file:/p")]]
