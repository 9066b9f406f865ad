"""A wide decision's lean attempts get their tasks over a few loop turns (Driver._start_lean)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

import shoal
from shoal.scheduler.driver import LEAN_FIRST
from tests.conftest import arun

WIDE = LEAN_FIRST * 20


def test_first_calls_step_before_the_last_tasks_are_made() -> None:
    seen: list[int] = []

    @shoal.tool
    async def wait(seconds: float) -> float:
        seen.append(len(asyncio.all_tasks()))  # tasks that exist at this call's first step
        await asyncio.sleep(seconds)
        return seconds

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        for _ in range(WIDE):
            plan.call(wait, seconds=0.01)
        return await shoal.run(plan)

    result = arun(main(), virtual=True)
    assert result.ok and len(result) == WIDE
    assert len(seen) == WIDE
    # all WIDE tasks at once would be there at the first step; only the first few are
    assert seen[0] <= LEAN_FIRST + 2
    assert [o.node_id for o in result] == [f"wait#{i}" for i in range(1, WIDE + 1)]


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_calls_whose_task_is_made_later_each_get_their_own_context() -> None:
    """Each sees what the caller set, and what it sets itself is seen by no other call."""
    seen: list[tuple[str, str]] = []

    @shoal.tool
    async def mark(me: int) -> None:
        before = WHO.get()
        WHO.set(f"call {me}")
        await asyncio.sleep(0.01)  # every other call sets its own meanwhile
        seen.append((before, WHO.get()))

    async def main() -> shoal.RunResult:
        WHO.set("caller")
        plan = shoal.Plan()
        for me in range(WIDE):
            plan.call(mark, me=me)
        result = await shoal.run(plan)
        assert WHO.get() == "caller"  # no call's value reached the caller either
        return result

    result = arun(main(), virtual=True)
    assert result.ok
    assert sorted(seen) == sorted(("caller", f"call {me}") for me in range(WIDE))


def test_fail_fast_never_runs_the_calls_whose_task_is_not_made() -> None:
    ran: list[int] = []

    @shoal.tool
    async def step(i: int) -> int:
        ran.append(i)
        if i == 0:
            raise ValueError("first fails")
        await asyncio.sleep(1)
        return i

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        for i in range(WIDE):
            plan.call(step, i=i)
        return await shoal.run(plan, fail_fast=True)

    result = arun(main(), virtual=True)
    assert result["step#1"].status == "failed"
    statuses = {o.status for o in list(result)[1:]}
    assert statuses == {"cancelled"}
    assert len(ran) <= LEAN_FIRST  # the first decision's tasks at most: the rest never ran


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_a_run_cancelled_while_tasks_are_made_ends_every_call(turns: int) -> None:
    ran: list[int] = []
    ended: list[int] = []

    @shoal.tool
    async def step(i: int) -> int:
        ran.append(i)
        try:
            await asyncio.sleep(1)
        finally:
            ended.append(i)
        return i

    async def main() -> None:
        plan = shoal.Plan()
        for i in range(WIDE):
            plan.call(step, i=i)
        run = asyncio.ensure_future(shoal.run(plan))
        for _ in range(turns + 1):
            await asyncio.sleep(0)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert sorted(ran) == sorted(ended)  # no call left running after the run
        assert len(ran) < WIDE  # cancelled before every task was made
        assert asyncio.all_tasks() == {asyncio.current_task()}

    arun(main(), virtual=True)
