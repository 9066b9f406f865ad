"""An event sink that cancels the task it runs on loses nothing, and is logged (guarantee 3).

A sink is called on the task that emits the event: the run's driver, the caller's own task
(``shoal.run``), an agent's. ``asyncio.current_task().cancel()`` in a sink used to cancel
that task at its next ``await``: the whole run ended ``cancelled`` (every call with it, one
mid-call), and the caller got a ``CancelledError`` instead of the result. A sink now runs
outside any task (``asyncio.current_task()`` is ``None`` in it): such a sink fails, is
logged saying why, and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.events import Event, NodeStarted


@shoal.tool
async def slow(x: int) -> int:
    """Return ``x`` after a moment."""
    await asyncio.sleep(0.05)
    return x


@shoal.tool
def add_one(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


def _plan() -> shoal.Plan:
    plan = shoal.Plan()
    first = plan.call(slow, x=1)
    plan.call(add_one, x=2)
    plan.call(add_one, x=first)
    return plan


class CancelsItsTask:
    """Cancels the task it is called on, once, at the first call's start."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, NodeStarted) and not self.seen:
            task = asyncio.current_task()
            self.seen.append(task)
            task.cancel()  # type: ignore[union-attr]  # what the sink means to do


def _said_why(caplog: pytest.LogCaptureFixture) -> None:
    said = [r.getMessage() for r in caplog.records if r.name == "shoal"]
    assert any("runs outside any task" in line for line in said), said


def test_a_sink_cancelling_its_task_on_a_journaled_run_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    sink = CancelsItsTask()

    async def main() -> shoal.RunResult:
        try:
            return await asyncio.wait_for(runtime.start(_plan(), on_event=sink, run_id="r"), 30)
        finally:
            await runtime.aclose()

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = asyncio.run(main())
    assert sink.seen == [None]  # it ran outside any task
    assert [(o.status, o.value) for o in result.outcomes.values()] == [
        ("ok", 1), ("ok", 3), ("ok", 2)]
    assert runtime.store is not None
    record = runtime.store.get_run("r")
    assert record is not None and record.status == "finished"
    _said_why(caplog)


def test_a_sink_cancelling_its_task_under_shoal_run_gives_the_caller_the_result(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> shoal.RunResult:
        return await shoal.run(_plan(), on_event=CancelsItsTask())

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = asyncio.run(main())
    assert result.ok, list(result.outcomes.values())
    _said_why(caplog)


def test_a_sink_called_in_a_task_finds_its_task_again_after_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The emitting task is the current one again once the sink returns (or fails)."""
    from shoal.events import deliver

    def failing(event: Event) -> None:
        raise ValueError("a bug")

    async def main() -> tuple[object, object]:
        me = asyncio.current_task()
        event = NodeStarted(run_id="r", time=0.0, node_id="n", tool="t", attempt=1,
                            executor="inline")
        deliver(lambda e: None, event)
        after_ok = asyncio.current_task()
        deliver(failing, event)
        return me, (after_ok, asyncio.current_task())

    with caplog.at_level(logging.ERROR, logger="shoal"):
        me, after = asyncio.run(main())
    assert after == (me, me)
