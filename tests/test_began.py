"""A call's recorded start is when it really ran, not when it was started.

Calls that end in their first step run at once, one after another, without a task; sync calls
go to the thread pool without one. Both may wait before they run (behind the calls queued
ahead of them, or for a free worker). That wait is no work of theirs: their outcome's
``started_at`` and ``duration``, and the estimates the scheduler learns from them, leave it out.
"""

from __future__ import annotations

import asyncio
import time

import shoal
from shoal.executors.thread import ThreadExecutor

HEAVY = 0.3  # seconds of blocking work in the call queued first


@shoal.tool
async def heavy() -> int:
    """Hold the loop (no await: it runs at once), as a CPU-bound step would."""
    until = time.perf_counter() + HEAVY
    while time.perf_counter() < until:
        pass
    return 0


@shoal.tool
async def trivial(i: int) -> int:
    """Return at once."""
    return i


@shoal.tool(isolation="thread")
def heavy_sync() -> int:
    """Hold the only pool worker a while."""
    time.sleep(HEAVY)
    return 0


@shoal.tool(isolation="thread")
def trivial_sync(i: int) -> int:
    """Return at once, on the pool."""
    return i


def _check(result: shoal.RunResult, first: str, quick: list[str]) -> None:
    assert result.ok
    slow = result.outcomes[first]
    assert slow.duration >= HEAVY * 0.9
    for node_id in quick:
        outcome = result.outcomes[node_id]
        # it waited HEAVY seconds behind the heavy call, but ran in microseconds
        assert outcome.duration < HEAVY / 2, (node_id, outcome.duration)
        assert slow.finished_at is not None and outcome.started_at is not None
        assert outcome.started_at >= slow.finished_at - HEAVY / 2  # ran after it


def test_calls_run_at_once_are_timed_from_when_they_ran() -> None:
    """Trivial calls queued behind a blocking one: their durations are their own."""
    plan = shoal.Plan()
    first = plan.call(heavy)
    quick = [plan.call(trivial, i=i) for i in range(20)]
    events: list[shoal.Event] = []
    result = shoal.run_sync(plan, on_event=events.append)
    _check(result, first.node, [r.node for r in quick])
    by_node = {e.node_id: e for e in events if isinstance(e, shoal.NodeFinished)}
    for ref in quick:  # the events tell the same durations as the outcomes
        assert by_node[ref.node].duration == result.outcomes[ref.node].duration


def test_pool_calls_that_waited_for_a_worker_are_timed_from_when_they_ran() -> None:
    """One worker: plain results skip the result object, and still leave the wait out."""
    plan = shoal.Plan()
    first = plan.call(heavy_sync)
    quick = [plan.call(trivial_sync, i=i) for i in range(5)]

    async def main() -> shoal.RunResult:
        async with shoal.Runtime(executors={"thread": ThreadExecutor(1)}) as runtime:
            return await runtime.run(plan)

    result = asyncio.run(main())
    _check(result, first.node, [r.node for r in quick])
    assert [result.value(r) for r in quick] == list(range(5))
