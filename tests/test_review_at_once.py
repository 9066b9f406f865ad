"""Review of calls run without a task of their own: each case here failed before its fix."""

from __future__ import annotations

import asyncio
import time

import shoal
from shoal.runtime import CLOSED_REASON

closing: list[shoal.Runtime] = []


@shoal.tool
async def closes_pools() -> int:
    """Close the runtime's backends (on the next loop turn), then end at once."""
    asyncio.get_running_loop().create_task(closing[0].aclose())
    return 1


@shoal.tool
def plus_one(x: int) -> int:
    """A sync tool without a timeout: handed to the thread pool without a task."""
    return x + 1


def test_sync_calls_waiting_for_the_pool_when_the_runtime_closes_end_cancelled() -> None:
    """The runtime closes while sync calls wait to be handed to its pool: the run ends, those
    calls cancelled saying why (``Runtime.aclose`` ends the runs still going before it closes
    the backends); before, they were lost and the run hung."""

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        first = plan.call(closes_pools)
        for _ in range(3):
            plan.call(plus_one, x=first)
        async with shoal.Runtime() as runtime:
            closing[:] = [runtime]
            async with asyncio.timeout(10):
                return await runtime.run(plan)

    result = asyncio.run(main())
    assert [o.status for o in result.outcomes.values()] == ["ok", "cancelled", "cancelled",
                                                             "cancelled"]
    assert result.cancelled_reason == CLOSED_REASON


@shoal.tool
async def busy(i: int) -> int:
    """No await (it runs at once), but works 10 ms of wall time, as a parse of a big document."""
    until = time.perf_counter() + 0.01
    while time.perf_counter() < until:
        pass
    return i + 1


def test_a_chain_of_slow_instant_calls_lets_the_deadline_through() -> None:
    """A chain of no-await calls that each take a while gives the loop turns by time too, so
    the run's deadline stops it; before, a burst ran up to 1000 such calls (here all 40, 0.4 s)
    without a loop turn, and the 0.05 s deadline fired only once the run had ended."""
    plan = shoal.Plan()
    ref = plan.call(busy, i=0)
    for _ in range(39):
        ref = plan.call(busy, i=ref)
    result = shoal.run_sync(plan, deadline=0.05)
    statuses = [o.status for o in result.outcomes.values()]
    assert statuses.count("ok") < 30, statuses
    assert not result.ok


async def _reloaded(i: int) -> int:
    await asyncio.sleep(0)
    return i * 10


@shoal.tool
async def reloadable(i: int) -> int:
    """No await yet: its calls run at once until its code is reloaded."""
    return i


@shoal.tool
async def hot_reload() -> int:
    """Swap ``reloadable``'s code in place, as IPython's autoreload does: the new one awaits."""
    reloadable.fn.__code__ = _reloaded.__code__
    return 0


def test_a_tool_whose_code_is_reloaded_mid_run_runs_its_new_code() -> None:
    """Before, the run remembered the old code's answer: the new code, which awaits, ran at
    once and failed ("suspended in a step that cannot suspend")."""
    original = reloadable.fn.__code__
    plan = shoal.Plan()
    plan.call(reloadable, i=1)
    reload = plan.call(hot_reload, after=["reloadable#1"])
    plan.call(reloadable, i=2, after=[reload])
    try:
        result = shoal.run_sync(plan)
    finally:
        reloadable.fn.__code__ = original
    assert result.ok, result.outcomes
    assert [o.value for o in result.outcomes.values()] == [1, 0, 20]
