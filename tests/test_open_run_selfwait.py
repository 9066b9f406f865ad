"""A node of an open run that waits on what cannot end while it runs gets a SelfWaitError.

``await run`` (the whole run), ``await run.wait(own id)`` and a cycle of waits (A waits on B,
which waits on A, or on a node that needs A's output) would each hang for ever; the waiting
call fails at once, saying why, and the run ends with every other outcome kept. On the
virtual clock (:mod:`shoal.testing`): a hang would fail as a timeout, not hang the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import shoal
from shoal.exceptions import SelfWaitError
from shoal.openrun import OpenRun
from shoal.testing import run_virtual

T = TypeVar("T")


def vrun(coro: Coroutine[Any, Any, T], limit: float = 3_600.0) -> T:
    """Run on the virtual clock; a hang fails (its timer fires) instead of hanging."""

    async def main() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return run_virtual(main())


class Box:
    """The run the tools wait on, and the errors they caught."""

    def __init__(self) -> None:
        self.run: OpenRun | None = None
        self.caught: list[BaseException] = []

    def get(self) -> OpenRun:
        assert self.run is not None
        return self.run


@shoal.tool
async def nap(seconds: float) -> float:
    """Sleep ``seconds``; return them."""
    await asyncio.sleep(seconds)
    return seconds


def make(box: Box) -> dict[str, Any]:
    @shoal.tool
    async def whole() -> str:
        """Await the whole run (cannot end while this node runs)."""
        await asyncio.sleep(0.1)
        try:
            await box.get()
        except SelfWaitError as exc:
            box.caught.append(exc)
            raise
        return "never"

    @shoal.tool
    async def own(me: str) -> str:
        """Wait on this node's own outcome."""
        await asyncio.sleep(0.1)
        await box.get().wait(me)
        return "never"

    @shoal.tool
    async def first_step_own(me: str) -> str:
        """Wait on this node's own outcome in its first step (no sleep before)."""
        await box.get().wait(me)
        return "never"

    @shoal.tool
    async def waits_on(other: str, delay: float = 0.1) -> str:
        """Wait on ``other``'s outcome after ``delay``."""
        await asyncio.sleep(delay)
        outcome = await box.get().wait(other)
        return f"{other} ended {outcome.status}"

    @shoal.tool
    async def gathers(me: str) -> str:
        """Wait on this node's own outcome from a child task (gather)."""
        await asyncio.sleep(0.1)
        await asyncio.gather(box.get().wait(me))
        return "never"

    @shoal.tool
    async def adds_consumer(me: str) -> str:
        """Add a node that needs this node's output, then wait on it."""
        run = box.get()
        later = run.call(nap, seconds=shoal_ref(run, me))
        await run.wait(later)
        return "never"

    @shoal.tool
    async def awaits_task(me: str) -> str:
        """Wait on this node's own outcome from a task it awaits."""
        await asyncio.sleep(0.1)
        await asyncio.ensure_future(box.get().wait(me))
        return "never"

    @shoal.tool
    async def gathers_deep(me: str) -> str:
        """Wait on the whole run from a task two gathers down."""
        async def inner() -> None:
            await box.get()

        async def middle() -> None:
            await asyncio.gather(inner())

        await asyncio.sleep(0.1)
        await asyncio.gather(middle())
        return "never"

    @shoal.tool(timeout=60)
    async def own_with_timeout(me: str) -> str:
        """As ``own``, for a call with a timeout (a full attempt, not a lean one)."""
        await asyncio.sleep(0.1)
        await box.get().wait(me)
        return "never"

    return {f.name: f for f in (whole, own, first_step_own, waits_on, gathers, adds_consumer,
                                own_with_timeout, awaits_task, gathers_deep)}


def self_wait(outcome: shoal.Outcome) -> str:
    """The message of the node's SelfWaitError (it failed with one)."""
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.type == "shoal.exceptions.SelfWaitError", outcome.error
    return outcome.error.message


def shoal_ref(run: OpenRun, node_id: str) -> Any:
    """A ref to ``node_id`` of ``run`` (a node's output)."""
    del run
    return shoal.Ref(node_id)


async def in_run(box: Box, build: Any) -> shoal.RunResult:
    runtime = shoal.Runtime()
    async with runtime.open_run("selfwait") as run:
        box.run = run
        kept_open = build(run)
        if kept_open is not None:  # the block stays open until that node ends
            await run.wait(kept_open)
    await runtime.aclose()
    return run.result


def test_await_whole_run_from_a_node_fails_at_once() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(nap, node_id="other", seconds=1.0)
        run.call(tools["whole"], node_id="w")

    result = vrun(in_run(box, build))
    assert result["other"].status == "ok"
    assert "whole run" in self_wait(result["w"])
    assert isinstance(box.caught[0], SelfWaitError)
    text = str(box.caught[0])
    assert "'w'" in text and "whole run" in text


@pytest.mark.parametrize("name", ["own", "first_step_own", "gathers", "own_with_timeout",
                                  "awaits_task"])
def test_wait_on_own_node_fails_at_once(name: str) -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(nap, node_id="other", seconds=1.0)
        run.call(tools[name], node_id="me", me="me")

    result = vrun(in_run(box, build))
    assert result["other"].status == "ok"
    assert "waits on its own outcome" in self_wait(result["me"])


def test_await_whole_run_from_a_gathered_task_fails() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(nap, node_id="other", seconds=1.0)
        run.call(tools["gathers_deep"], node_id="g", me="g")

    result = vrun(in_run(box, build))
    assert result["other"].status == "ok"
    assert "awaits the whole run" in self_wait(result["g"])


def test_cycle_of_two_waits_fails_the_second_waiter() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(tools["waits_on"], node_id="a", other="b", delay=0.1)
        run.call(tools["waits_on"], node_id="b", other="a", delay=0.2)

    result = vrun(in_run(box, build))
    # b waits last, closing the cycle: it fails; a then gets b's outcome and goes on
    assert "'a' waits on 'b'" in self_wait(result["b"])
    assert result["a"].status == "ok" and result["a"].value == "b ended failed"


def test_cycle_of_three_waits() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(tools["waits_on"], node_id="a", other="b", delay=0.1)
        run.call(tools["waits_on"], node_id="b", other="c", delay=0.2)
        run.call(tools["waits_on"], node_id="c", other="a", delay=0.3)

    result = vrun(in_run(box, build))
    assert "'a' waits on 'b', and 'b' waits on 'c'" in self_wait(result["c"])
    assert result["b"].value == "c ended failed" and result["a"].value == "b ended ok"


def test_waits_that_are_no_cycle_still_work() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> None:
        run.call(nap, node_id="slow", seconds=1.0)
        run.call(tools["waits_on"], node_id="a", other="slow")
        run.call(tools["waits_on"], node_id="b", other="a")

    result = vrun(in_run(box, build))
    assert result.ok
    assert result["b"].value == "a ended ok"


def test_wait_on_a_node_needing_own_output_fails() -> None:
    box = Box()
    tools = make(box)

    def build(run: OpenRun) -> str:
        run.call(tools["adds_consumer"], node_id="me", me="me")
        return "me"

    result = vrun(in_run(box, build))
    assert "needs the end of 'me'" in self_wait(result["me"])
    # the consumer never ran: its input failed
    assert any(o.status != "ok" for k, o in result.outcomes.items() if k != "me")


def test_await_run_after_the_node_ended_is_no_self_wait() -> None:
    """A task a node left behind may await the run once that node has ended."""
    box = Box()
    seen: list[str] = []
    background: list[asyncio.Task[None]] = []

    @shoal.tool
    async def leaves_task() -> str:
        """Start a task that awaits the run, and return."""
        async def later() -> None:
            result = await box.get()
            seen.append(str(result.ok))

        background.append(asyncio.ensure_future(later()))
        await asyncio.sleep(0.1)  # it waits while this node runs, not awaited by it
        return "done"

    async def go() -> None:
        runtime = shoal.Runtime()
        async with runtime.open_run("bg") as run:
            box.run = run
            run.call(leaves_task, node_id="l")
        await asyncio.gather(*background)
        await runtime.aclose()

    vrun(go())
    assert seen == ["True"]
