"""Hostile plans and streams against the planner (mode="plan"), found in session 30."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

import shoal
from shoal.exceptions import ModelHTTPError
from shoal.models.base import ModelRequest, StreamEvent, TextDelta
from shoal.models.retry import ModelGates, ModelRetry
from shoal.testing import ScriptedModel, call, run_virtual

FINISH = "Thought: done.\nAction: Finish(done)"


def _echo(ran: list[str]) -> shoal.Tool[..., Any]:
    @shoal.tool
    async def echo(x: str) -> str:
        """Echo x."""
        ran.append(x)
        return f"e:{x}"

    return echo


class _RewritesAfterFailure(ScriptedModel):
    """The first plan stream fails midway (503); the retry writes step 2 as another call."""

    attempts = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.attempts += 1
        if self.attempts == 1:
            yield TextDelta("1. echo('a')\n2. echo('b')\n3. ec")
            raise ModelHTTPError(self.name, "overloaded", 503)
        async for event in super().stream(request):
            yield event


def test_a_retried_plan_that_rewrites_a_started_step_does_not_feed_its_refs_the_old_result(
) -> None:
    ran: list[str] = []
    model = _RewritesAfterFailure(["1. echo('a')\n2. echo('c')\n3. echo($2)\n4. join()", FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[_echo(ran)], mode="plan")
    gates = ModelGates(retry=ModelRetry(retries=2, backoff=0.1))
    result = run_virtual(asyncio.wait_for(agent.run("go", gates=gates), 60))
    assert model.attempts == 2
    # step 2 of the first reply (b) stands; the retry's step 2 (c) is refused, and so is
    # step 3, which means c's result: running it on b's would be a silently wrong result
    assert sorted(ran) == ["a", "b"]
    by_id = {(r.call.id, r.status): r for r in result.calls}
    assert set(by_id) == {("1", "ok"), ("2", "ok"), ("2", "rejected"), ("3", "rejected")}
    why = by_id["3", "rejected"].message.content
    assert "$2 cannot be used" in why and "sent again after a failure" in why
    assert result.output == "done"


def test_a_native_call_with_unreadable_arguments_is_refused_naming_its_tool_and_line() -> None:
    ran: list[str] = []
    reply = [call("echo", raw_arguments='{"x": "a"'), call("echo", x="ok")]
    agent = shoal.Agent(name="p", model=ScriptedModel([reply, FINISH]), tools=[_echo(ran)],
                        mode="plan")
    result = run_virtual(asyncio.wait_for(agent.run("go"), 60))
    assert ran == ["ok"]
    refused, fine = result.calls
    assert (refused.call.id, refused.call.name, refused.status) == ("1", "echo", "rejected")
    why = refused.message.content
    # not "invalid syntax; write N. tool(...)", which tells a model using native calls nothing
    assert why.startswith("Error: line 1: echo's arguments are not a JSON object")
    assert "syntax" not in why and "{\"x\": \"a\"" in why
    assert result.plans[0].splitlines()[0].startswith("1. echo(")
    assert (fine.call.id, fine.status) == ("2", "ok")


def test_a_native_call_whose_key_is_no_name_is_not_read_as_other_arguments() -> None:
    seen: list[tuple[object, object]] = []

    @shoal.tool
    async def pair(x: object = None, y: object = None) -> str:
        """Pair."""
        seen.append((x, y))
        return "paired"

    reply = [call("pair", **{"x=1, y": "v"})]  # once a plan line, that read as x=1, y='v'
    agent = shoal.Agent(name="p", model=ScriptedModel([reply, FINISH]), tools=[pair],
                        mode="plan")
    result = run_virtual(asyncio.wait_for(agent.run("go"), 60))
    assert seen == []
    (record,) = result.calls
    assert record.status == "rejected" and record.call.name == "pair"
    assert "'x=1, y' is not a parameter name" in record.message.content


class _EndlessPlan(ScriptedModel):
    """Starts a plan with one call, then writes thoughts forever."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        yield TextDelta("1. wait('a')\n")
        while True:
            yield TextDelta("Thought: and another thing to think about first.\n" * 10)
            await asyncio.sleep(0.01)


def test_an_endless_plan_stream_is_stopped_by_the_token_budget_and_its_call_recorded() -> None:
    @shoal.tool
    async def wait(x: str) -> str:
        """Wait a long time."""
        await asyncio.sleep(10_000)
        return x

    agent = shoal.Agent(name="p", model=_EndlessPlan([]), tools=[wait], mode="plan")

    async def main() -> shoal.AgentResult[Any]:
        handle = agent.start("go", budget=shoal.Budget(tokens=5_000))
        with pytest.raises(shoal.BudgetExceeded, match="tokens limit is 5000"):
            await asyncio.wait_for(handle, 600)  # it used to stream until this timed out
        return handle.result

    result = run_virtual(main())
    assert result.status == "budget_exceeded"
    (record,) = result.calls
    assert (record.call.id, record.status) == ("1", "cancelled")
    assert "tokens limit" in record.message.content


def _counted_calls(action: Any) -> int:
    """How many Python and builtin function calls ``action()`` makes (not load-dependent)."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return count


def test_a_plan_streaming_many_bad_lines_costs_time_linear_in_them() -> None:
    ran: list[str] = []

    def plan(bad: int) -> None:
        lines = [f"not a call {i}\n" for i in range(bad)] + ["1. echo('a')\n", "2. join()"]
        agent = shoal.Agent(name="p", model=ScriptedModel([lines, FINISH]), tools=[_echo(ran)],
                            mode="plan")
        result = run_virtual(asyncio.wait_for(agent.run("go"), 60))
        assert [r.status for r in result.calls] == ["ok"]

    small, large = _counted_calls(lambda: plan(1000)), _counted_calls(lambda: plan(4000))
    # four times the lines: about four times the work (every problem sorted at each line, as
    # the reader once asked for them, is sixteen times)
    assert large < 6 * small, (small, large)


class _EndlessAnswer(ScriptedModel):
    """Plans one call (to a planner), then answers with text that never ends."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if request.plan_tools:
            async for event in super().stream(request):
                yield event
            return
        while True:
            yield TextDelta("and so on, " * 100)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["tools", "plan"])
def test_an_endless_streamed_answer_is_stopped_by_the_token_budget(mode: str) -> None:
    ran: list[str] = []
    model = _EndlessAnswer(["1. echo('a')\n2. join()"])
    agent = shoal.Agent(name="p", model=model, tools=[_echo(ran)], mode=mode)  # type: ignore[arg-type]

    async def main() -> object:
        items = [item async for item in agent.stream("go", budget=shoal.Budget(tokens=5_000))]
        return items[-1]

    # it used to stream until this timed out
    result = run_virtual(asyncio.wait_for(main(), 600))
    assert isinstance(result, shoal.AgentResult)
    assert result.status == "budget_exceeded"
    assert "tokens limit is 5000" in str(result.error)
    assert ran == (["a"] if mode == "plan" else [])


def test_a_code_fence_inside_a_triple_quoted_argument_is_kept_as_text() -> None:
    ran: list[str] = []
    plan = ["```\n", "1. echo('''a\n", "```python\n", "b''')\n", "2. join()\n", "```"]
    agent = shoal.Agent(name="p", model=ScriptedModel([plan, FINISH]), tools=[_echo(ran)],
                        mode="plan")
    result = run_virtual(asyncio.wait_for(agent.run("go"), 60))
    assert ran == ["a\n```python\nb"]  # the fence lines around the plan are skipped, not it
    assert [r.status for r in result.calls] == ["ok"]
