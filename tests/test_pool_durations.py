"""A pool call's duration is its own: not the time its end waited for a busy event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import shoal


@shoal.tool
def quick(x: int) -> int:
    """Work of 0.1 s on a pool thread."""
    time.sleep(0.1)
    return x


@shoal.tool(isolation="inline")
async def hog() -> str:
    """Hold the event loop for 0.8 s, while ``quick`` ends on its thread."""
    await asyncio.sleep(0.02)
    time.sleep(0.8)  # noqa: ASYNC251 - blocks the loop on purpose: the pool's end waits
    return "done"


@pytest.mark.parametrize("journal", [False, True])
def test_a_pool_calls_end_is_stamped_where_it_ran(tmp_path: Path, journal: bool) -> None:
    plan = shoal.Plan()
    fast = plan.call(quick, x=1)
    plan.call(hog)
    store = f"sqlite:///{tmp_path / 'runs.db'}" if journal else None
    result = shoal.run_sync(plan, store=store)
    outcome = result[fast]
    assert outcome.ok
    # it ran 0.1 s, and the loop saw its end about 0.8 s after it began
    assert 0.08 <= outcome.duration < 0.5, outcome
    if journal:  # the journal keeps the same end
        kept = shoal.SQLiteStore(str(tmp_path / "runs.db")).outcomes(result.run_id)
        assert kept[outcome.node_id].outcome.finished_at == pytest.approx(outcome.finished_at)
