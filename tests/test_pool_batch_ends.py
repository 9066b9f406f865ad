"""Pool calls whose ends reach the loop together are fed to the state machine together.

One decision for a batch of plain returns (as for calls run at once), fed in the order the
pool reported them: an end that is not a plain value (a failure) first feeds those before it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

import shoal
from shoal.scheduler.state import SchedulerState

N = 40
#: set by ``hog`` once it holds the loop: the pool's calls end only after that
LOOP_HELD = threading.Event()
_ended = threading.Semaphore(0)


@shoal.tool
def echo(x: int) -> int:
    """Return ``x`` on a pool thread once ``hog`` holds the loop, and count the end."""
    LOOP_HELD.wait(30)
    _ended.release()
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
    """Hold the event loop until every ``echo`` has ended on its thread (their ends pile up).

    The ends come while the loop is held whatever the machine's load: each ``echo`` waits for
    the hold to begin, and the hold lasts until all N have returned (a test that let a fixed
    sleep stand for "busy" saw the ends fed one by one on a loaded machine).
    """
    await asyncio.sleep(0)
    LOOP_HELD.set()
    for _ in range(N):  # blocks the loop on purpose: the pool's ends wait for it
        if not _ended.acquire(timeout=30):
            break
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
    LOOP_HELD.clear()
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
