"""Agents as plan nodes (``plan.call(agent, task=...)``): refs, failure, cancel, resume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.node import render_prompt
from shoal.events import AgentFinished, AgentStarted, Event
from shoal.models.base import ModelRequest
from shoal.patterns import Reflection, pipeline
from shoal.planfile import plan_from_dict
from shoal.testing import ScriptedModel, call
from tests.conftest import arun


class Summary(pydantic.BaseModel):
    title: str
    points: list[str]


def agent(name: str, steps: list[Any], **options: Any) -> shoal.Agent[Any]:
    return shoal.Agent(name=name, model=ScriptedModel(steps), **options)


def model_of(a: shoal.Agent[Any]) -> ScriptedModel:
    assert isinstance(a.model, ScriptedModel)
    return a.model


def first_prompt(a: shoal.Agent[Any], index: int = 0) -> str:
    message = model_of(a).requests[index].messages[0]
    return str(getattr(message, "content", ""))


def test_an_agent_output_feeds_a_tool_node_and_another_agent() -> None:
    reader = agent("reader", ['{"title": "Ray", "points": ["actors", "tasks"]}'],
                   output_type=Summary)
    writer = agent("writer", ["A fine review."])

    @shoal.tool
    def shout(text: str) -> str:
        """Shout."""
        return text.upper()

    plan = shoal.Plan()
    summary = plan.call(reader, task="Summarise p1")
    loud = plan.call(shout, text=summary["title"])  # a field of the output_type instance
    review = plan.call(writer, task="Write the review", summary=summary, title=loud)
    events: list[Event] = []
    result = shoal.run_sync(plan, on_event=events.append)
    assert result.ok, result.to_dict()
    assert result[summary].value == Summary(title="Ray", points=["actors", "tasks"])
    assert result[loud].value == "RAY"
    assert result[review].value == "A fine review."
    assert first_prompt(reader) == "Summarise p1"
    assert first_prompt(writer) == render_prompt(
        "Write the review", {"summary": {"title": "Ray", "points": ["actors", "tasks"]},
                             "title": "RAY"})
    assert first_prompt(writer).startswith('Write the review\n\nsummary:\n{\n  "title": "Ray"')
    assert first_prompt(writer).endswith("\n\ntitle:\nRAY")
    # the live tree sees each agent under its node's lineage
    started = [e.lineage for e in events if isinstance(e, AgentStarted)]
    assert started == ["reader#1", "writer#1"]


def test_render_prompt_shows_text_as_is_and_the_rest_as_json() -> None:
    assert render_prompt("task", {}) == "task"
    assert render_prompt({"a": 1}, {"n": [1, 2], "s": "x"}) == (
        '{\n  "a": 1\n}\n\nn:\n[\n  1,\n  2\n]\n\ns:\nx')
    assert render_prompt(Summary(title="é", points=[]), {}) == (
        '{\n  "title": "é",\n  "points": []\n}')


def test_an_agent_is_a_node_with_its_subagents_and_the_budget_counts_them() -> None:
    helper = agent("helper", ["helped"])
    lead = agent("lead", [[call("helper", task="help")], "led"], subagents=[helper])
    plan = shoal.Plan()
    ref = plan.call(lead, task="go")
    result = shoal.run_sync(plan, budget=shoal.Budget(requests=3))
    assert result[ref].value == "led"
    over = shoal.Plan()
    lead2 = agent("lead", [[call("helper", task="help")], "led"],
                  subagents=[agent("helper", ["helped"])])
    ref2 = over.call(lead2, task="go")
    failed = shoal.run_sync(over, budget=shoal.Budget(requests=2))
    assert failed[ref2].status == "failed"
    error = failed[ref2].error
    assert error is not None
    assert error.type == "shoal.exceptions.BudgetExceeded"
    assert len(model_of(lead2).requests) + len(model_of(lead2.subagents[0]).requests) == 2


def test_a_failing_agent_node_fails_its_dependents_are_skipped_siblings_kept() -> None:
    looping = agent("looping", [[call("looping_tool")]], max_turns=1,
                    tools=[shoal.tool(lambda: "x", name="looping_tool")])
    sibling = agent("sibling", ["fine"])
    after = agent("after", ["never"])
    plan = shoal.Plan()
    bad = plan.call(looping, task="loop")
    good = plan.call(sibling, task="be fine")
    child = plan.call(after, task=bad)
    result = shoal.run_sync(plan)
    assert result[bad].status == "failed"
    error = result[bad].error
    assert error is not None
    assert error.type == "shoal.exceptions.MaxTurnsExceeded"
    assert "looping#1 used all 1 turns" in error.message
    assert result[good].value == "fine"
    assert result[child].status == "skipped"
    assert model_of(after).requests == []


def test_bad_arguments_of_an_agent_node_are_plan_errors() -> None:
    plan = shoal.Plan()
    plan.call(agent("a", []))  # no task
    with pytest.raises(shoal.PlanError, match="task"):
        plan.validate()


def test_an_agent_is_not_a_tool_of_another_agent() -> None:
    with pytest.raises(shoal.ConfigError, match="subagents="):
        shoal.Agent(name="lead", model=ScriptedModel([]), tools=[agent("x", [])])  # type: ignore[list-item]


class Gate(ScriptedModel):
    """A model whose requests wait until released (or cancelled)."""

    def __init__(self, steps: list[Any]) -> None:
        super().__init__(steps)
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def request(self, request: ModelRequest) -> shoal.ModelResponse:
        self.asked.set()
        await self.release.wait()
        return await super().request(request)


def test_cancelling_an_agent_node_cancels_its_agent_and_subagents() -> None:
    async def main() -> tuple[shoal.RunResult, list[Event], Gate]:
        gate = Gate(["never"])
        stuck = shoal.Agent(name="stuck", model=gate)
        lead = agent("lead", [[call("stuck", task="wait")], "never"], subagents=[stuck])
        sibling = agent("sibling", ["fine"])
        plan = shoal.Plan()
        node = plan.call(lead, task="go")
        plan.call(sibling, task="be fine")
        plan.call(agent("after", ["never"]), task=node)
        events: list[Event] = []
        async with shoal.Runtime(on_event=events.append) as runtime:
            handle = runtime.start(plan)
            await gate.asked.wait()
            handle.cancel(node, reason="enough")
            return await handle, events, gate

    result, events, gate = arun(main())
    assert result["lead#1"].status == "cancelled"
    assert result["sibling#1"].value == "fine"
    assert result["after#1"].status == "skipped"
    ended = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    assert ended["lead#1"] == "cancelled"
    assert ended["lead#1/stuck#1"] == "cancelled"
    assert not gate.requests  # the subagent's request never got through


def test_a_resumed_plan_does_not_ask_finished_agent_steps_again(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    notes: list[str] = []

    @shoal.tool
    def note(text: str) -> str:
        """Note."""
        notes.append(text)
        return "noted"

    def down(request: ModelRequest) -> str:
        raise RuntimeError("model down")

    def build(first: list[Any], second: list[Any]) -> tuple[shoal.Plan, shoal.Agent[Any],
                                                            shoal.Agent[Any]]:
        a = agent("a", first)
        b = agent("b", second, tools=[note])
        plan = shoal.Plan()
        out = plan.call(a, task="first")
        plan.call(b, task="second", given=out)
        return plan, a, b

    plan, a, b = build(["A"], [[call("note", text="x")], down])
    result = shoal.Runtime(store=store).run_sync(plan, run_id="r1")
    assert result["a#1"].value == "A"
    assert result["b#1"].status == "failed"
    assert "model down" in str(result["b#1"].error)
    assert notes == ["x"]
    plan, a, b = build([], ["B done"])
    resumed = shoal.Runtime(store=store).resume_sync("r1", plan)
    assert resumed.ok, resumed.to_dict()
    assert resumed["a#1"].value == "A" and resumed["b#1"].value == "B done"
    assert model_of(a).requests == []  # the finished agent node replayed
    assert len(model_of(b).requests) == 1  # only the turn that failed is asked again
    assert notes == ["x"]  # its finished tool call replayed, not run again


def test_a_plan_file_names_an_agent_by_import_path() -> None:
    plan = plan_from_dict({"nodes": [
        {"id": "r", "tool": "tests.node_agents:reader", "args": {"task": "Summarise"}},
        {"id": "w", "tool": "tests.node_agents:review", "args": {"task": "$r"}},
    ]})
    result = shoal.run_sync(plan)
    assert result.ok, result.to_dict()
    assert result["r"].value == "summary"
    assert result["w"].value == Reflection("review", accepted=True, rounds=1, feedback="good")


def flaky_once(answer: str) -> Any:
    failures = [RuntimeError("blip")]

    def step(request: ModelRequest) -> str:
        if failures:
            raise failures.pop()
        return answer

    return step


def test_a_retried_agent_node_continues_where_it_failed() -> None:
    ran: list[str] = []

    @shoal.tool
    def work() -> str:
        """Work."""
        ran.append("work")
        return "worked"

    b = shoal.Agent(name="b", tools=[work], model=ScriptedModel.per_prompt(
        {"go": [[call("work")], flaky_once("done")]}))
    plan = shoal.Plan()
    ref = plan.call(b.node_tool.options(retries=1), task="go")
    result = shoal.run_sync(plan)
    assert result[ref].value == "done" and result[ref].attempts == 2
    assert len(model_of(b).requests) == 3  # turn 1 once; turn 2 failed, then asked again
    assert ran == ["work"]  # the finished tool phase replayed


def test_a_retried_pattern_node_continues_its_nested_run() -> None:
    a = agent("a", ["A"])
    b = shoal.Agent(name="b", model=ScriptedModel.per_prompt({"A": [flaky_once("B")]}))
    plan = shoal.Plan()
    ref = plan.call(pipeline(a, b).node_tool.options(retries=1), task="go")
    result = shoal.run_sync(plan)
    assert result[ref].value == "B" and result[ref].attempts == 2
    assert len(model_of(a).requests) == 1  # the first step replayed on the second attempt
    assert len(model_of(b).requests) == 2


def test_the_sinks_of_a_run_see_its_nested_runs_once() -> None:
    async def main() -> list[Event]:
        events: list[Event] = []
        plan = shoal.Plan()
        plan.call(pipeline(agent("a", ["A"]), agent("b", ["B"])), task="go")
        async with shoal.Runtime() as runtime:
            await runtime.run(plan, on_event=events.append)
        return events

    events = arun(main())
    finished = [e.lineage for e in events if e.kind == "NodeFinished"]
    assert finished.count("pipeline#1/a#1") == 1 and finished.count("pipeline#1/b#1") == 1
    assert [e.lineage for e in events if isinstance(e, AgentStarted)] == [
        "pipeline#1/a#1", "pipeline#1/b#1"]


def test_the_wall_clock_budget_runs_across_agent_nodes_one_after_another() -> None:
    from shoal.testing import run_virtual

    async def main() -> shoal.RunResult:
        first = shoal.Agent(name="first", model=ScriptedModel(["1"], latency=6.0))
        second = shoal.Agent(name="second", model=ScriptedModel(["2"], latency=6.0))
        plan = shoal.Plan()
        plan.call(second, task=plan.call(first, task="go"))
        async with shoal.Runtime(store=None) as runtime:
            return await runtime.run(plan, budget=shoal.Budget(wall_clock=10.0))

    result = run_virtual(main())
    assert result["first#1"].value == "1"
    error = result["second#1"].error
    assert error is not None and error.type == "shoal.exceptions.BudgetExceeded"
    assert "wall_clock limit is 10" in error.message
