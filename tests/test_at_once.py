"""Calls of async tools that cannot suspend run at once, without a task of their own.

An ``async def`` with no ``await`` ends in its first step; the driver runs it in place (see
``shoal.scheduler.eager``) with the same outcome, context and cancellation a task would give.
Tools that may suspend keep their task: their timeout, cancellation and context are as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

import shoal
from shoal.scheduler import driver as driver_module
from shoal.scheduler.eager import ends_in_first_step
from shoal.testing import run_virtual
from tests.conftest import until

ran: list[int] = []
where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


@shoal.tool
async def instant(i: int) -> int:
    """Return ``i`` at once (no await: ends in its first step)."""
    ran.append(i)
    return i


@shoal.tool
async def marks(i: int | str) -> str:
    """Set the context variable, return what it was before (each call has its own copy)."""
    before = where.get()
    where.set(f"call {i}")
    return before


@shoal.tool
async def boom() -> int:
    """Fail at once."""
    raise ValueError("boom")


@shoal.tool
async def exits() -> int:
    """Ask the interpreter to exit, at once: the call fails, the run goes on."""
    raise SystemExit(3)


@shoal.tool(timeout=0.5)
async def slow_marks(i: int) -> str:
    """Wait (so it gets a task), then tell what the context variable holds."""
    where.set(f"slow {i}")
    await asyncio.sleep(0.2)
    return where.get()


@shoal.tool(timeout=1.0)
async def too_slow() -> int:
    """Wait longer than its timeout."""
    await asyncio.sleep(5)
    return 1


async def _returns(value: int) -> int:
    return value


def _attempt_tasks(loop: asyncio.AbstractEventLoop, seen: list[str]) -> None:
    """Record the name of every task's coroutine that the loop creates from now on."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                **kwargs: Any) -> asyncio.Task[Any]:
        seen.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]


def test_which_functions_end_in_their_first_step() -> None:
    async def plain(x: int) -> int:
        return x * 2

    async def awaits() -> None:
        await asyncio.sleep(0)

    async def with_block(lock: asyncio.Lock) -> None:
        async with lock:
            pass

    async def loops(items: Any) -> list[Any]:
        return [item async for item in items]

    async def nested() -> list[int]:  # a comprehension that awaits is a coroutine of its own
        return [await _returns(i) for i in range(3)]

    def sync(x: int) -> int:
        return x

    assert ends_in_first_step(plain)
    assert not ends_in_first_step(awaits)
    assert not ends_in_first_step(with_block)
    assert not ends_in_first_step(loops)
    assert not ends_in_first_step(nested)
    assert not ends_in_first_step(sync)
    assert not ends_in_first_step(functools.partial(plain, 1))  # not a plain async def
    assert not ends_in_first_step(instant)  # the Tool object itself: only its function is


def test_the_answer_follows_a_functions_code_and_keeps_few_codes_alive() -> None:
    from shoal.scheduler import eager

    async def swapped(x: int) -> int:
        return x

    async def awaits() -> None:
        await asyncio.sleep(0)

    assert ends_in_first_step(swapped)
    swapped.__code__ = awaits.__code__  # a hot reload: asked again, the new code answers
    assert not ends_in_first_step(swapped)
    made = []
    for i in range(eager._RECENT_MAX * 2):  # new code objects, each asked about
        scope: dict[str, Any] = {}
        exec(f"async def f{i}(x):\n    return x + {i}\n", scope)
        made.append(scope[f"f{i}"])
        assert ends_in_first_step(made[-1])
    assert len(eager._recent) <= eager._RECENT_MAX  # the fast answers keep few of them alive
    assert all(ends_in_first_step(fn) for fn in made)


def test_calls_that_end_in_their_first_step_make_no_task() -> None:
    """100 instant calls: no attempt task; each outcome as before, in plan order."""
    seen: list[str] = []

    async def main() -> shoal.RunResult:
        _attempt_tasks(asyncio.get_running_loop(), seen)
        plan = shoal.Plan()
        for i in range(100):
            plan.call(instant, i=i)
        return await shoal.run(plan)

    result = asyncio.run(main())
    assert result.ok and [o.value for o in result.outcomes.values()] == list(range(100))
    assert "Driver._attempt" not in seen
    assert all(o.status == "ok" and o.attempts == 1 and o.executor == "inline"
               for o in result.outcomes.values())


def test_calls_that_may_suspend_keep_their_task() -> None:
    seen: list[str] = []

    async def main() -> shoal.RunResult:
        _attempt_tasks(asyncio.get_running_loop(), seen)
        plan = shoal.Plan()
        plan.call(slow_marks, i=1)
        return await shoal.run(plan)

    result = run_virtual(main())
    assert result.ok and seen.count("Driver._attempt") == 1


def test_each_instant_call_has_its_own_context() -> None:
    """The caller's value is seen; a call's own set() reaches no other call, nor the caller."""

    async def main() -> tuple[shoal.RunResult, str]:
        where.set("caller")
        plan = shoal.Plan()
        for i in range(5):
            plan.call(marks, i=i)
        first = plan.call(marks, i=10)
        plan.call(marks, i=first)  # a dependent, started from the first one's end
        result = await shoal.run(plan)
        return result, where.get()

    result, after = asyncio.run(main())
    assert result.ok and after == "caller"
    assert {o.value for o in result.outcomes.values()} == {"caller"}


def test_a_suspending_call_after_instant_ones_times_out_and_sees_its_context() -> None:
    async def main() -> shoal.RunResult:
        where.set("caller")
        plan = shoal.Plan()
        first = plan.call(instant, i=1)
        plan.call(slow_marks, i=first)
        plan.call(too_slow)
        plan.call(marks, i=2)
        return await shoal.run(plan)

    result = run_virtual(main())
    statuses = {o.node_id: (o.status, o.value) for o in result.outcomes.values()}
    assert statuses == {"instant#1": ("ok", 1), "slow_marks#1": ("ok", "slow 1"),
                        "too_slow#1": ("timed_out", None), "marks#1": ("ok", "caller")}


def test_errors_of_instant_calls_are_their_outcomes() -> None:
    plan = shoal.Plan()
    bad = plan.call(boom)
    plan.call(instant, i=bad)
    plan.call(exits)
    plan.call(instant, i=7)
    result = shoal.run_sync(plan)
    by = {o.node_id: o for o in result.outcomes.values()}
    assert by["boom#1"].status == "failed" and "boom" in str(by["boom#1"].error)
    assert by["instant#1"].status == "skipped"
    assert by["exits#1"].status == "failed" and "SystemExit" in str(by["exits#1"].error)
    assert by["instant#2"].status == "ok" and by["instant#2"].value == 7


def test_fail_fast_cancels_instant_calls_before_they_run() -> None:
    """The failure is fed back before the calls started with it run: they never do."""
    ran.clear()
    plan = shoal.Plan()
    plan.call(boom)
    for i in range(5):
        plan.call(instant, i=i)
    result = shoal.run_sync(plan, fail_fast=True)
    statuses = sorted(o.status for o in result.outcomes.values())
    assert statuses == ["cancelled"] * 5 + ["failed"] and ran == []


def test_a_long_cascade_of_instant_calls_gives_the_loop_turns() -> None:
    """A chain longer than a burst neither overflows the stack nor holds the loop throughout."""
    ran.clear()
    length = 3 * driver_module.AT_ONCE_BURST + 10
    turns: list[int] = []

    async def main() -> shoal.RunResult:
        async def watch() -> None:
            while True:
                turns.append(len(ran))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        plan = shoal.Plan()
        ref = plan.call(instant, i=0)
        for _ in range(length - 1):
            ref = plan.call(instant, i=ref)
        try:
            return await shoal.run(plan)
        finally:
            watcher.cancel()

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(200, length // 4))  # recursion per call would overflow this
    try:
        result = asyncio.run(main())
    finally:
        sys.setrecursionlimit(limit)
    assert result.ok and len(ran) == length
    assert any(0 < seen < length for seen in turns), "the loop got no turn mid-cascade"


def test_cancelling_a_run_between_bursts_cancels_what_did_not_run() -> None:
    """A cancel arriving while a burst waits for its next turn: those calls never run."""
    ran.clear()
    length = 3 * driver_module.AT_ONCE_BURST

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        for i in range(length):
            plan.call(instant, i=i)
        async with shoal.Runtime(max_concurrency=None) as runtime:
            handle = runtime.start(plan)
            for _ in range(100):  # the run's first burst, a loop turn or two away
                if ran:
                    break
                await asyncio.sleep(0)
            handle.cancel()
            return await handle

    result = asyncio.run(main())
    counts = result.counts
    assert counts["ok"] == len(ran) and 0 < len(ran) < length
    assert counts["cancelled"] == length - len(ran)


@pytest.mark.parametrize("timeout", [None, 0.001])
def test_an_instant_call_with_a_timeout_ends_ok(timeout: float | None) -> None:
    """It cannot be interrupted, so (as with a task) its timeout never fires."""
    tool = shoal.tool(timeout=timeout)(instant.fn) if timeout else instant
    plan = shoal.Plan()
    plan.call(tool, i=3)
    result = shoal.run_sync(plan)
    assert result.ok and result.outcomes[next(iter(result.outcomes))].value == 3


# ---- sync calls go to the thread pool without a task ---------------------------------------

gate = threading.Event()
blocking: list[int] = []  # what blocks() holds on its thread, in order


@shoal.tool
def sync_marks(i: int) -> str:
    """On a pool thread: what the context variable held, after setting it."""
    before = where.get()
    where.set(f"thread {i}")
    return before


@shoal.tool
def blocks(i: int) -> int:
    """Block until the test lets it go."""
    blocking.append(i)
    gate.wait(10)
    return i


@shoal.tool(timeout=0.2)
def sync_too_slow() -> int:
    """Block past its timeout (the pool thread is abandoned)."""
    gate.wait(10)
    return 1


def test_sync_calls_without_a_timeout_make_no_task_and_keep_their_context() -> None:
    seen: list[str] = []

    async def main() -> tuple[shoal.RunResult, str]:
        _attempt_tasks(asyncio.get_running_loop(), seen)
        where.set("caller")
        plan = shoal.Plan()
        for i in range(20):
            plan.call(sync_marks, i=i)
        result = await shoal.run(plan)
        return result, where.get()

    result, after = asyncio.run(main())
    assert result.ok and after == "caller"
    assert {o.value for o in result.outcomes.values()} == {"caller"}
    assert all(o.executor == "thread" for o in result.outcomes.values())
    assert "Driver._attempt" not in seen


def test_stopped_sync_calls_are_cancelled_or_abandoned_as_before() -> None:
    """One thread: the first call runs (abandoned when cancelled), the second never starts."""
    gate.clear()
    blocking.clear()

    async def main() -> tuple[shoal.RunResult, shoal.RunResult]:
        plan = shoal.Plan()
        plan.call(blocks, i=1)
        plan.call(blocks, i=2)
        timed = shoal.Plan()
        timed.call(sync_too_slow)
        async with shoal.Runtime(thread_workers=1) as runtime:
            handle = runtime.start(plan)
            await until(lambda: blocking == [1])  # the first runs on the one thread
            handle.cancel()
            cancelled = await handle
            timed_out = await runtime.run(timed)
        gate.set()
        return cancelled, timed_out

    cancelled, timed_out = asyncio.run(main())
    by = {o.node_id: o for o in cancelled.outcomes.values()}
    assert by["blocks#1"].status == "cancelled" and by["blocks#1"].abandoned
    assert by["blocks#2"].status == "cancelled" and not by["blocks#2"].abandoned
    (slow,) = timed_out.outcomes.values()
    assert slow.status == "timed_out"


@shoal.tool
async def interrupts_at_once() -> int:
    """An instant async tool that raises KeyboardInterrupt."""
    raise KeyboardInterrupt


@pytest.mark.parametrize("tool", [interrupts_at_once])
def test_a_keyboard_interrupt_in_a_call_without_a_task_stops_the_run(tool: Any) -> None:
    """It reaches the caller, as from a task, and the run ends without waiting on the call.

    On the main thread only: a sync tool's on its thread fails its call (see
    ``tests/test_found_s37.py``).
    """
    gate.clear()
    plan = shoal.Plan()
    plan.call(tool)
    for i in range(3):
        plan.call(instant, i=i)
        plan.call(blocks, i=i)
    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(shoal.run(plan))
    finally:
        gate.set()


@shoal.tool
async def awaits_nothing_slow(i: int) -> int:
    """Awaits (so it keeps its task), but what it awaits ends at once: so does its first step."""
    return await _returns(i)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task factories: Python 3.12+")
def test_instant_calls_and_tasks_mix_under_an_eager_task_factory() -> None:
    """A chain alternating calls that run at once with calls whose tasks an eager factory starts
    inside ``create_task``: each reports once, none recurses, fail_fast still stops the rest."""
    ran.clear()

    async def main() -> tuple[shoal.RunResult, shoal.RunResult]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        chain = shoal.Plan()
        ref = chain.call(instant, i=0)
        for step in range(3000):
            ref = chain.call(awaits_nothing_slow if step % 2 else instant, i=ref)
        failing = shoal.Plan()
        failing.call(boom)
        for i in range(4):
            failing.call(awaits_nothing_slow, i=i)
        return await shoal.run(chain), await shoal.run(failing, fail_fast=True)

    chained, failed = asyncio.run(main())
    assert chained.ok and len(chained.outcomes) == 3001
    assert sorted(o.status for o in failed.outcomes.values()) == ["cancelled"] * 4 + ["failed"]


@shoal.tool
async def burns(ms: float) -> float:
    """Compute for ``ms`` milliseconds without awaiting (ends in its first step)."""
    import time

    until = time.perf_counter() + ms / 1000
    while time.perf_counter() < until:
        pass
    return ms


def test_instant_calls_run_in_one_round_are_timed_back_to_back() -> None:
    """Each is timed from when it ran: one's start is the previous one's end, never earlier.

    The calls of a round run one after another and are fed to the state machine together;
    a start taken for the whole round would make them overlap.
    """
    plan = shoal.Plan()
    for _ in range(5):  # 1 ms in all: within one burst's slice of the loop
        plan.call(burns, ms=0.2)
    result = shoal.run_sync(plan)
    spans = sorted((o.started_at or 0.0, o.finished_at or 0.0) for o in result.outcomes.values())
    assert result.ok
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 1e-9, spans
    assert all(end - start >= 0.0002 for start, end in spans), spans


def test_a_call_cancelled_by_a_later_one_in_its_round_keeps_the_value_it_returned() -> None:
    """Cancelling a node that ran earlier in the same round (its end not yet fed) is too late.

    As when each end was fed at once: the node ran and returned, so it ends ``ok`` with its
    value; the call that cancelled it ends too, and the run has nothing left hanging.
    """
    handle_box: list[shoal.RunHandle] = []

    @shoal.tool
    async def cancels(node: str) -> str:
        handle_box[0].cancel(node)
        return node

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(instant, i=1, node_id="first")
        plan.call(cancels, node="first", node_id="second")
        plan.call(instant, i=3, node_id="third")
        async with shoal.Runtime() as runtime:
            handle = runtime.start(plan)
            handle_box.append(handle)
            return await handle

    result = asyncio.run(main())
    assert result.outcomes["first"].status == "ok" and result.outcomes["first"].value == 1
    assert result.outcomes["second"].value == "first"
    assert result.outcomes["third"].status == "ok"
