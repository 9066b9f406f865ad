"""Pool calls whose ends reach the loop together are fed to the state machine together.

One decision for a batch of plain returns (as for calls run at once), fed in the order the
pool reported them: an end that is not a plain value (a failure) first feeds those before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

import shoal
from shoal.scheduler.state import SchedulerState

N = 40


@shoal.tool
def echo(x: int) -> int:
    """Return ``x`` on a pool thread, at once."""
    return x


@shoal.tool
def broken(x: int) -> int:
    """Fail on a pool thread."""
    raise ValueError(f"broken {x}")


@shoal.tool
def after(x: int) -> int:
    """Run once what it uses has ended."""
    return x + 1


@shoal.tool(isolation="inline")
async def hog() -> str:
    """Hold the event loop while the pool's calls end on their threads (their ends pile up)."""
    await asyncio.sleep(0.02)
    time.sleep(0.5)  # noqa: ASYNC251 - blocks the loop on purpose: the pool's ends wait
    return "done"


def test_ends_that_came_together_are_fed_in_one_decision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[list[int]] = []
    original = SchedulerState.finish_ok_many

    def noted(self: SchedulerState, ended: Sequence[tuple[int, Any, str, float, float]],
              at: float | None = None) -> Any:
        batches.append([pos for pos, *_ in ended])
        return original(self, ended, at)

    monkeypatch.setattr(SchedulerState, "finish_ok_many", noted)
    plan = shoal.Plan()
    calls = [plan.call(echo, x=i) for i in range(N)]
    failing = plan.call(broken, x=7)
    last = plan.call(after, x=calls[-1])
    plan.call(hog)
    result = shoal.run_sync(plan)
    assert [result[c].value for c in calls] == list(range(N))
    assert result[last].value == N  # what an end fed in a batch releases still runs
    assert result[failing].status == "failed"
    assert "broken 7" in str(result[failing].error)
    # the N plain ends waited for the busy loop and were fed in few decisions, not N
    fed = [b for b in batches if len(b) > 1]
    assert fed, batches
    assert sum(len(b) for b in fed) >= N // 2, batches
