"""A step whose last dependency ended starts in the same loop iteration as the floor's would.

The floor is issue 14's: a minimal hand-written asyncio DAG executor (a task per step awaiting
its predecessors' events). Loop iterations are counted, not timed, so the test is exact on a
loaded machine: every extra iteration shoal took between a dependency's end and the next
step's start would show as one more iteration per edge of the critical path, which in real
time is a trip through the selector (and, on epoll, a whole millisecond when a timer is due
within one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

import shoal


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its iterations (each one a pass through the selector)."""

    iterations = 0

    def _run_once(self) -> None:
        self.iterations += 1
        super()._run_once()  # type: ignore[misc]


@shoal.tool
async def wait_step(seconds: float) -> float:
    """Wait ``seconds`` (0: give the loop one turn), as an AsyncHow step does."""
    await asyncio.sleep(seconds)
    return seconds


Preds = dict[str, list[str]]


def chain(n: int) -> Preds:
    return {str(i): [str(i - 1)] if i else [] for i in range(n)}


def diamond_joins(levels: int) -> Preds:
    """Levels of two parallel steps, each level joining both steps of the one before."""
    preds: Preds = {"start": []}
    before = ["start"]
    for level in range(levels):
        here = [f"{level}a", f"{level}b"]
        for s in here:
            preds[s] = list(before)
        before = here
    preds["end"] = list(before)
    return preds


def shoal_side(preds: Preds, seconds: float) -> Callable[[], Awaitable[object]]:
    async def go() -> object:
        plan = shoal.Plan("counted")
        refs: dict[str, shoal.Ref] = {}
        for s, before in preds.items():  # (written in a topological order)
            refs[s] = plan.call(wait_step, seconds=seconds, after=[refs[p] for p in before],
                                node_id=s)
        result = await shoal.run(plan)
        assert result.ok
        return result
    return go


def floor_side(preds: Preds, seconds: float) -> Callable[[], Awaitable[object]]:
    async def go() -> object:
        done = {s: asyncio.Event() for s in preds}

        async def one(s: str) -> None:
            for p in preds[s]:
                await done[p].wait()
            await wait_step.fn(seconds)
            done[s].set()

        return await asyncio.gather(*(one(s) for s in preds))
    return go


def iterations(side: Callable[[], Awaitable[object]]) -> int:
    loop = CountingLoop()
    try:
        loop.run_until_complete(side())  # warm-up: imports and caches out of the count
        loop.iterations = 0
        loop.run_until_complete(side())
        return loop.iterations
    finally:
        loop.close()


@pytest.mark.parametrize("seconds", [0.0, 0.001])
@pytest.mark.parametrize("preds", [chain(1), chain(12), diamond_joins(5)],
                         ids=["one-step", "chain-12", "diamond-joins-5"])
def test_shoal_takes_no_more_loop_iterations_than_the_hand_written_floor(
        preds: Preds, seconds: float) -> None:
    floor = iterations(floor_side(preds, seconds))
    ours = iterations(shoal_side(preds, seconds))
    assert ours <= floor, (ours, floor)


def test_a_chain_costs_the_loop_one_turn_per_step_beyond_its_wait() -> None:
    """Each step of a chain of zero waits: one turn to start it, one for its sleep(0).

    Exactly: dispatch in the iteration that ended the step before, never in a later one.
    """
    short, long = (iterations(shoal_side(chain(n), 0.0)) for n in (4, 14))
    assert long - short == 2 * 10
