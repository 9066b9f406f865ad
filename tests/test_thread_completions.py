"""Sync calls on the thread pool reach the event loop in batches, one wake-up per batch."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

import shoal
from shoal.executors.thread import ThreadExecutor
from tests.conftest import until, wait_until

CALLS = 40
_barrier = threading.Barrier(CALLS)


@shoal.tool(isolation="thread")
def together(i: int) -> int:
    """Wait until every call of the batch is on a thread, then end with the others."""
    _barrier.wait(timeout=30)
    return i * 2


class _CountingLoop(asyncio.SelectorEventLoop):
    """A loop that counts the wake-ups other threads send it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any,  # type: ignore[override]
                             context: Any = None) -> asyncio.Handle:
        self.wakeups += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_calls_that_end_together_wake_the_loop_fewer_times_than_there_are_calls() -> None:
    plan = shoal.Plan()
    refs = [plan.call(together, i=i) for i in range(CALLS)]
    with asyncio.Runner(loop_factory=_CountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, _CountingLoop)
        result = runner.run(shoal.run(plan, thread_workers=CALLS))
        wakeups = loop.wakeups
    assert result.ok
    assert [result[ref].value for ref in refs] == [i * 2 for i in range(CALLS)]
    # wrap_future would wake the loop once per call; a batch takes one wake-up
    assert wakeups < CALLS


def test_errors_and_values_come_back_to_each_caller() -> None:
    @shoal.tool(isolation="thread")
    def maybe(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(f"no {i}")
        return i

    plan = shoal.Plan()
    refs = [plan.call(maybe, i=i) for i in range(30)]
    result = shoal.run_sync(plan)
    for i, ref in enumerate(refs):
        outcome = result[ref]
        if i % 3 == 0:
            assert outcome.status == "failed" and outcome.error is not None
            assert f"no {i}" in str(outcome.error)
        else:
            assert outcome.status == "ok" and outcome.value == i


def test_a_cancelled_call_is_abandoned_and_its_late_result_dropped() -> None:
    release = threading.Event()

    @shoal.tool(isolation="thread", timeout=0.2)
    def stuck() -> str:
        release.wait(timeout=30)
        return "late"

    executor = ThreadExecutor(4)

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(stuck)
        async with shoal.Runtime(executors={"thread": executor}) as runtime:
            result = await runtime.run(plan)
            release.set()
            await until(lambda: not executor.abandoned_running, within=10)
        return result

    result = asyncio.run(main())
    (outcome,) = result.outcomes.values()
    assert outcome.status == "timed_out" and outcome.abandoned
    assert executor.abandoned_total == 1 and executor.abandoned_running == 0


def test_one_executor_serves_runs_on_two_loops_one_after_the_other() -> None:
    executor = ThreadExecutor(4)

    @shoal.tool(isolation="thread")
    def double(i: int) -> int:
        return 2 * i

    async def once(i: int) -> Any:
        plan = shoal.Plan()
        ref = plan.call(double, i=i)
        result = await shoal.Runtime(executors={"thread": executor}).run(plan)
        return result[ref].value

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 4


@pytest.mark.parametrize("n", [1, 200])
def test_many_or_one_sync_calls_all_finish(n: int) -> None:
    @shoal.tool(isolation="thread")
    def ident(i: int) -> int:
        return i

    plan = shoal.Plan()
    refs = [plan.call(ident, i=i) for i in range(n)]
    result = shoal.run_sync(plan)
    assert [result[r].value for r in refs] == list(range(n))


def test_a_callback_that_raises_leaves_the_rest_of_its_batch_to_the_next_turn() -> None:
    """One caller's error (a KeyboardInterrupt, say) must not lose the other ends of a batch."""
    from shoal.executors.base import Call
    from shoal.executors.thread import PoolJob

    @shoal.tool
    def ident(i: int) -> int:
        return i

    seen: list[int] = []
    errors: list[object] = []

    def on_end(job: PoolJob) -> None:
        if job.value == 0:
            raise RuntimeError("a caller's bug")
        seen.append(job.value)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context.get("exception")))
        executor = ThreadExecutor(1)  # one thread: the calls end in order
        calls = [(Call(i, f"n{i}", ident, {"i": i}, 1, "thread"), contextvars.copy_context())
                 for i in range(3)]
        jobs = executor.submit(calls, on_end)
        # the loop is held until all three have ended: they are one batch
        assert wait_until(lambda: all(job.ended for job in jobs), timeout=30.0)
        for _ in range(5):
            await asyncio.sleep(0)
        await executor.close()

    asyncio.run(main())
    assert seen == [1, 2]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
