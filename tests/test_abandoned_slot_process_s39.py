"""An async tool that ignores its cancellation, its run's loop closed by ``run_sync`` under it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import shoal
from shoal.scheduler import driver

pytestmark = pytest.mark.timeout(60)


@shoal.tool(reads=["host:{p}"])
async def deaf(p: str) -> str:
    """Read host ``p``, ignoring every cancellation for an hour."""
    end = time.monotonic() + 3600
    while time.monotonic() < end:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
    return "late"


@shoal.tool(reads=["host:{p}"])
async def quick(p: str) -> str:
    """Read host ``p`` at once."""
    return "ok"


def test_the_slot_of_an_abandoned_task_goes_back_when_run_sync_closes_its_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: the task, left running as its loop closed, could never end, so its resource_limits
    # slot was never given back: every later run of the runtime needing host:a waited for
    # good (here until its deadline: 'cancelled', the run's deadline of 5 s passed)
    monkeypatch.setattr(driver, "ABANDON_GRACE", 0.3)
    runtime = shoal.Runtime(resource_limits={"host:*": 1})
    first, second = shoal.Plan(), shoal.Plan()
    stuck, after = first.call(deaf.options(timeout=0.2), p="a"), second.call(quick, p="a")
    started = time.monotonic()
    result = runtime.run_sync(first)  # returns after the timeout and the grace
    assert result[stuck].status == "timed_out" and result[stuck].abandoned
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert runtime.run_sync(second, deadline=5)[after].status == "ok"
    assert time.monotonic() - started < 4
