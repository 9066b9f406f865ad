"""A hostile user of timeouts, abandoned threads, budgets and the virtual clock (sweep 38, round 2).

Each test here failed before the fix it names; time runs on the virtual clock of
:mod:`shoal.testing` wherever it matters, and on the real clock where a sync tool's thread must
be running before its timeout fires (the virtual clock may leap to the timeout before a worker
took the job, and the attempt is then never run, not abandoned; see shoal.testing.clock).
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from typing import Any

import shoal
from shoal.events import Event, NodeFinished, NodeHeld
from shoal.testing import run_virtual

# ---- an abandoned thread keeps its resource keys and exclusivity until it really ends ------


class _Slow:
    """A sync tool's work that outlives its timeout: it returns once let go, a while later."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.log: list[str] = []

    def slow(self, p: str) -> None:
        self.log.append("slow begins")
        self.gate.wait(10)
        time.sleep(0.2)  # (real time) long enough for a successor started early to log first
        self.log.append("slow ends")

    def after(self, p: str) -> None:
        self.log.append("after runs")


def _plan(work: _Slow, **after_options: Any) -> tuple[shoal.Plan, list[str]]:
    slow = shoal.tool(work.slow, name="slow", writes=["file:{p}"], timeout=1)
    after = shoal.tool(work.after, name="after", **after_options)
    plan = shoal.Plan()
    first = plan.call(slow, p="/p")
    second = plan.call(after, p="/p")
    return plan, [first.node, second.node]


def _let_go_once_recorded(work: _Slow, events: list[Event]) -> Any:
    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, NodeFinished) and event.tool == "slow":
            work.gate.set()  # its outcome is recorded: its thread now ends, 0.2 s later
    return sink


def test_a_write_waits_for_the_thread_of_a_timed_out_write_to_the_same_key() -> None:
    # was: 'slow' timed out and was abandoned, its thread still writing file:/p, and 'after'
    # (writes file:/p too) started at once: the two writes overlapped
    work, events = _Slow(), list[Event]()
    plan, (first, second) = _plan(work, writes=["file:{p}"])
    runtime = shoal.Runtime(on_event=_let_go_once_recorded(work, events))
    result = asyncio.run(runtime.run(plan))
    assert result[first].status == "timed_out" and result[first].abandoned
    assert result[second].status == "ok"
    assert work.log == ["slow begins", "slow ends", "after runs"]
    held = [e for e in events if isinstance(e, NodeHeld)]
    assert len(held) == 1 and held[0].node_id == second and held[0].by == first
    assert held[0].reason == (f"waiting for the thread of {first!r}, which timed out and "
                              "still runs, to release file:/p")


def test_an_exclusive_tool_waits_for_an_abandoned_thread_and_a_data_successor_is_skipped() -> None:
    work, events = _Slow(), list[Event]()
    slow = shoal.tool(work.slow, name="slow", timeout=1)
    alone = shoal.tool(work.after, name="after", exclusive=True)
    plan = shoal.Plan()
    first = plan.call(slow, p="/p")
    uses = plan.call(alone, p=first)  # needs its value: skipped at once, as before
    last = plan.call(alone, p="/q")
    runtime = shoal.Runtime(on_event=_let_go_once_recorded(work, events))
    result = asyncio.run(runtime.run(plan))
    assert result[uses.node].status == "skipped"
    assert result[last.node].status == "ok"
    assert work.log == ["slow begins", "slow ends", "after runs"]
    (held,) = [e for e in events if isinstance(e, NodeHeld)]
    assert held.node_id == last.node and "to end (after#1 is exclusive)" in held.reason


def test_a_run_cancelled_while_a_call_is_held_ends_that_call_cancelled() -> None:
    work, events = _Slow(), list[Event]()
    plan, (first, second) = _plan(work, writes=["file:{p}"])
    handles: list[shoal.RunHandle] = []
    held_seen: list[Any] = []

    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, NodeHeld):
            held_seen.append(handles[0].snapshot().held)
            handles[0].cancel(reason="enough")

    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(on_event=sink)
        handles.append(runtime.start(plan))
        try:
            return await handles[0]
        finally:
            work.gate.set()

    result = asyncio.run(main())
    assert result[second].status == "cancelled"
    assert "after runs" not in work.log
    assert held_seen == [[(second, "after", f"waiting for the thread of {first!r}, which "
                                              "timed out and still runs, to release file:/p")]]


def _two_writes(lasts: float) -> tuple[shoal.Plan, str, str, dict[str, list[float]]]:
    """A write of db:t that times out (0.3 s) but lasts ``lasts`` s on its thread, then another.

    On the real clock: the thread must have begun before its timeout fires (see the module's
    docstring); 0.3 s leaves a loaded machine room for that.
    """
    spans: dict[str, list[float]] = {}

    def slow(p: str) -> None:
        spans["slow"] = [time.monotonic()]
        time.sleep(lasts)
        spans["slow"].append(time.monotonic())

    def quick(p: str) -> None:
        spans["quick"] = [time.monotonic()]

    plan = shoal.Plan()
    first = plan.call(shoal.tool(slow, writes=["db:{p}"], timeout=0.3), p="t").node
    second = plan.call(shoal.tool(quick, writes=["db:{p}"]), p="t").node
    return plan, first, second, spans


def test_on_the_real_clock_two_writes_to_one_key_never_overlap() -> None:
    plan, first, second, spans = _two_writes(1.2)
    result = shoal.run_sync(plan)
    assert result[first].status == "timed_out"
    assert (result[first].finished_at or 0.0) < 1.1  # recorded at its timeout, not its end
    assert result[second].status == "ok"
    assert spans["quick"][0] >= spans["slow"][1]


def test_the_live_view_says_which_calls_an_abandoned_thread_holds_up() -> None:
    import io

    from rich.console import Console

    from shoal.cli.live import render_snapshot
    from shoal.scheduler.driver import Snapshot

    why = "waiting for the thread of 'w#1', which timed out and still runs, to release file:/p"
    snap = Snapshot("r", 2, 3.0, {"timed_out": 1}, [], False, (),
                    [("w#2\x1b[2J", "w", why)])
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_snapshot(snap, "plan"))
    assert f"w#2\\x1b[2J: {why}" in out.getvalue()
    assert "\x1b" not in out.getvalue()


# ---- Budget(wall_clock=) that the virtual clock leapt to while a sync tool ran --------------


def _wall_clock_breach(fn: Any, asked: Any) -> shoal.BudgetExceeded:
    """What an agent calling ``fn`` once (``asked``) under ``Budget(wall_clock=60)`` raises."""
    from shoal.testing import ScriptedModel

    model = ScriptedModel([[asked], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[shoal.tool(fn)])

    async def main() -> shoal.BudgetExceeded:
        try:
            await agent.run("go", budget=shoal.Budget(wall_clock=60))
        except shoal.BudgetExceeded as exc:
            return exc
        raise AssertionError("the budget was not exceeded")

    return run_virtual(main())


def test_a_wall_clock_the_virtual_clock_leapt_to_past_a_thread_does_not_say_raise_it() -> None:
    # was: "budget exceeded: wall_clock limit is 60, reached (at the whole tree); raise
    # Budget(wall_clock=) to allow more", of a sync tool of 0.3 s: the clock leaps to any limit
    # while a thread runs, so a larger one cannot help
    from shoal.testing import call

    def lookup(q: str) -> str:
        time.sleep(0.3)
        return q

    exc = _wall_clock_breach(lookup, call("lookup", q="x"))
    message = str(exc)
    assert str(pickle.loads(pickle.dumps(exc))) == message  # (a worker process sends it on)
    assert "raise Budget(wall_clock=)" not in message
    assert "virtual clock of shoal.testing" in message
    assert "make the tool async, or test it on a real event loop" in message


def test_a_wall_clock_reached_by_virtual_sleeps_still_says_raise_it() -> None:
    from shoal.testing import call

    async def nap() -> str:
        import asyncio

        await asyncio.sleep(100)
        return "ok"

    assert "raise Budget(wall_clock=) to allow more" in str(
        _wall_clock_breach(nap, call("nap")))


# ---- Decimal seconds and dollars (a config file read with Decimal, a price table's) --------


def test_decimal_seconds_and_dollars_are_taken_as_floats() -> None:
    # was: Decimal("1.5") was refused as "timeout must be positive ... got Decimal('1.5')"
    # (and likewise backoff, Budget(cost=), Budget(wall_clock=), Runtime(deadline=))
    from decimal import Decimal

    def f(x: int) -> int:
        return x

    made = shoal.tool(f, timeout=Decimal("1.5"), retries=2, backoff=Decimal("0.25"),
                      max_backoff=Decimal("4"), jitter=Decimal("0.5"))
    policy = made.policy
    assert (policy.timeout, policy.retry.backoff, policy.retry.max_backoff,
            policy.retry.jitter) == (1.5, 0.25, 4.0, 0.5)
    assert all(type(v) is float for v in (policy.timeout, policy.retry.backoff))
    budget = shoal.Budget(cost=Decimal("0.10"), wall_clock=Decimal("30"))  # type: ignore[arg-type]
    assert (budget.cost, budget.wall_clock) == (0.1, 30.0) and type(budget.cost) is float
    no_limit = Decimal("Infinity")
    assert shoal.Budget(cost=no_limit).cost == float("inf")  # type: ignore[arg-type]
    runtime = shoal.Runtime(deadline=Decimal("5"))  # type: ignore[arg-type]
    assert runtime.deadline == 5.0 and type(runtime.deadline) is float


def test_a_decimal_no_float_can_hold_is_refused_saying_so() -> None:
    from decimal import Decimal

    import pytest

    # Decimal("1e400") as a float is infinity: "no limit" is not what was meant
    with pytest.raises(shoal.ConfigError, match=r"got Decimal Decimal\('1E\+400'\)"):
        shoal.Budget(cost=Decimal("1e400"))  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match=r"Decimal Decimal\('NaN'\)"):
        shoal.Budget(wall_clock=Decimal("NaN"))  # type: ignore[arg-type]
    with pytest.raises(shoal.ToolDefinitionError, match="timeout must be positive"):
        shoal.tool(lambda: 1, name="g", timeout=Decimal("-1"))


# ---- more ways a call is abandoned while it holds a key ------------------------------------


def test_a_deadline_ends_a_call_held_by_a_thread_that_never_returns_in_time() -> None:
    work, events = _Slow(), list[Event]()
    plan, (first, second) = _plan(work, writes=["file:{p}"])
    runtime = shoal.Runtime(on_event=events.append, deadline=2.5)

    async def main() -> shoal.RunResult:
        try:
            return await runtime.run(plan)
        finally:
            work.gate.set()

    result = asyncio.run(main())
    assert result[first].status == "timed_out"
    assert result[second].status == "cancelled"
    assert "deadline" in result[second].reason
    assert "after runs" not in work.log


def test_a_sync_call_cancelled_on_its_thread_holds_its_key_until_that_thread_returns() -> None:
    # the pool's task-less path (a sync tool without a timeout), stopped by a cancel of its node
    work, events = _Slow(), list[Event]()
    handles: list[shoal.RunHandle] = []

    def cancels_itself(p: str) -> None:  # from its thread: the cancel finds it running
        handles[0].cancel(first)
        work.slow(p)

    slow = shoal.tool(cancels_itself, name="slow", writes=["file:{p}"])
    after = shoal.tool(work.after, name="after", writes=["file:{p}"])
    plan = shoal.Plan()
    first = plan.call(slow, p="/p").node
    second = plan.call(after, p="/p").node

    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, NodeFinished) and event.node_id == first:
            work.gate.set()

    async def main() -> shoal.RunResult:
        handles.append(shoal.Runtime(on_event=sink).start(plan))
        return await handles[0]

    result = run_virtual(main())
    assert result[first].status == "cancelled" and result[first].abandoned
    assert result[second].status == "ok"
    assert work.log == ["slow begins", "slow ends", "after runs"]
    (held,) = [e for e in events if isinstance(e, NodeHeld)]
    assert "which cancelled and still runs" in held.reason


def test_an_async_tool_that_ignores_its_cancel_holds_its_key_until_its_task_ends() -> None:
    import asyncio

    log: list[str] = []

    async def stubborn(p: str) -> None:
        log.append("stubborn begins")
        loop = asyncio.get_running_loop()
        end = loop.time() + 100
        while loop.time() < end:
            with __import__("contextlib").suppress(asyncio.CancelledError):
                await asyncio.sleep(end - loop.time())
        log.append("stubborn ends")

    async def after(p: str) -> None:
        log.append(f"after runs at {asyncio.get_running_loop().time():g}")

    events: list[Event] = []
    plan = shoal.Plan()
    first = plan.call(shoal.tool(stubborn, writes=["k:{p}"], timeout=1), p="x").node
    second = plan.call(shoal.tool(after, writes=["k:{p}"]), p="x").node

    async def main() -> tuple[shoal.RunResult, float]:
        began = asyncio.get_running_loop().time()
        result = await shoal.Runtime(on_event=events.append).run(plan)
        return result, began

    result, began = run_virtual(main())
    assert result[first].status == "timed_out" and result[first].abandoned
    assert result[second].status == "ok"
    assert log == ["stubborn begins", "stubborn ends", f"after runs at {began + 100:g}"]
    (held,) = [e for e in events if isinstance(e, NodeHeld)]
    assert held.reason.startswith(f"waiting for the task of {first!r}, which timed out")


def test_a_held_call_names_a_key_that_holds_a_slash_whole() -> None:
    work, events = _Slow(), list[Event]()
    slow = shoal.tool(work.slow, name="slow", writes=["file:{p}"], timeout=1)
    after = shoal.tool(work.after, name="after", reads=["file:{p}"])
    plan = shoal.Plan()
    plan.call(slow, p="a / writes b")
    plan.call(after, p="a / writes b")
    asyncio.run(shoal.Runtime(on_event=_let_go_once_recorded(work, events)).run(plan))
    (held,) = [e for e in events if isinstance(e, NodeHeld)]
    assert held.reason.endswith("to release file:a / writes b")
    assert work.log == ["slow begins", "slow ends", "after runs"]


def test_a_decimal_rate_period_and_approval_timeout_are_taken_as_floats() -> None:
    from decimal import Decimal

    def f(x: int) -> int:
        return x

    made = shoal.tool(f, rate=(10, Decimal("1.5")))
    assert made.policy.rate == shoal.Rate(10.0, 1.5)
    runtime = shoal.Runtime(approval_timeout=Decimal("5"))  # type: ignore[arg-type]
    # (it was "approval_timeout must be positive seconds, got Decimal('5')")
    assert runtime.approvals.timeout == 5.0 and type(runtime.approvals.timeout) is float


def test_a_journaled_run_holds_the_key_and_keeps_why_in_its_events(tmp_path: Any) -> None:
    plan, first, second, spans = _two_writes(0.9)
    store = shoal.SQLiteStore(tmp_path / "runs.db", keep_events=True)
    result = shoal.Runtime(store=store).run_sync(plan)
    assert result[second].status == "ok" and spans["quick"][0] >= spans["slow"][1]
    kept = {n: o.outcome.status for n, o in store.outcomes(result.run_id).items()}
    assert kept == {first: "timed_out", second: "ok"}
    held = [e for e in store.events(result.run_id) if e.get("kind") == "NodeHeld"]
    assert [e["node_id"] for e in held] == [second]
