"""Found by attacking shoal's transparency surface, session 33: event sinks that raise what
no ``except Exception`` catches, live trees too large or too deep to draw, and more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import shoal
from shoal.events import Event, NodeStarted
from shoal.testing import ScriptedModel, call
from tests.conftest import arun


@shoal.tool
async def work(x: int) -> int:
    """Sleep a second, then give ``x`` back."""
    await asyncio.sleep(1)
    return x


def cancelled_result(event: Event) -> None:
    """A sink whose own code raises CancelledError: a cancelled future's ``result()``."""
    del event
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    future.result()


# -- a sink raising CancelledError --------------------------------------------------------


def test_a_sink_raising_cancelled_error_loses_no_outcome(caplog: Any) -> None:
    # it broke the run while it recorded the outcome the event was about: the awaited run
    # raised KeyError (or CancelledError), its result lost
    plan = shoal.Plan()
    for i in range(4):
        plan.call(work, x=i, node_id=f"n{i}")
    seen: list[str] = []

    def sink(event: Event) -> None:
        seen.append(event.kind)
        if event.kind in ("NodeStarted", "NodeFinished", "RunStarted"):
            cancelled_result(event)

    async def main() -> shoal.RunResult:
        return await shoal.Runtime().start(plan, on_event=sink)

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = arun(main(), virtual=True)
    assert result.ok and [result[f"n{i}"].value for i in range(4)] == [0, 1, 2, 3]
    assert seen.count("NodeFinished") == 4 and seen[-1] == "RunFinished"
    assert "event sink" in caplog.text and "continuing" in caplog.text


def test_an_agent_trees_sink_raising_cancelled_error_loses_no_outcome(caplog: Any) -> None:
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("work", x=7)], "done"]),
                       tools=[work])
    kinds: list[str] = []

    def sink(event: Event) -> None:
        kinds.append(event.kind)
        if event.kind in ("AgentStarted", "ModelResponded", "NodeFinished"):
            cancelled_result(event)

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = arun(lead.run("go", on_event=sink), virtual=True)
    assert result.status == "ok" and result.output == "done"
    assert [(c.status, c.outcome.value) for c in result.calls] == [("ok", 7)]
    assert kinds[-1] == "AgentFinished"


def test_a_sink_raising_keyboard_interrupt_still_stops_the_run() -> None:
    plan = shoal.Plan()
    plan.call(work, x=1)

    def sink(event: Event) -> None:
        if isinstance(event, NodeStarted):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shoal.run_sync(plan, on_event=sink)
