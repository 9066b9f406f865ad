"""A model turn's attempt runs in its agent's own task, and ends as a task of its own would.

The turn's node is added to the agent's steps run as before (journaled, cancellable, with its
outcome), but when its attempt starts at once it is not given a task: the agent's task, which
would only wait for it, runs it (one task and one future less per turn of every agent of a
swarm). A stop of the node, of the agent, of the whole tree and a budget the reply breaches
end it as they did, and the agent's task is left as it was.

A subagent's steps run has no task of its own either: it starts as it is opened (so its
first turn is run by the subagent's task too) and ends as its last step ends, journaled as
before; a durable journal's end is still awaited (in a task made then).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import shoal
from shoal.models.base import (
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from shoal.testing import ScriptedModel, call


@shoal.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return key * 2


class _Recording(shoal.Model):
    """Answers as scripted; notes the task each request ran in; can hold one turn."""

    name = "recording"
    changes_requests = False

    def __init__(self, script: list[Any], hold: int | None = None) -> None:
        self.scripted = ScriptedModel(script)
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.hold = hold  # this turn (1 for the first) waits until cancelled
        self.held = asyncio.Event()

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.tasks.append(asyncio.current_task())
        if len(self.tasks) == self.hold:
            self.held.set()
            await asyncio.Event().wait()
        return await self.scripted.request(request)


def _tasks_running(name: str) -> int:
    """How many tasks run a coroutine of this qualified name now."""
    return sum(1 for task in asyncio.all_tasks()
               if getattr(task.get_coro(), "__qualname__", "") == name)


def _steps(runtime: shoal.Runtime, run_id: str) -> dict[str, shoal.Outcome]:
    store = runtime.store
    assert store is not None
    return {node_id.split(":")[0]: stored.outcome
            for node_id, stored in store.outcomes(run_id).items()}


def test_an_agents_later_turns_ask_its_model_in_the_agents_own_task() -> None:
    model = _Recording([[call("lookup", key="a")], [call("lookup", key="b")], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])
    runtime = shoal.Runtime()

    async def main() -> tuple[shoal.AgentResult[Any], asyncio.Task[Any]]:
        handle = agent.start("go", runtime=runtime, run_id="r1")
        return await handle, handle._task

    result, root = asyncio.run(main())
    assert result.ok and result.output == "done" and result.turns == 3
    assert model.tasks[1] is root and model.tasks[2] is root  # no task of their own
    steps = _steps(runtime, "r1/lead/steps")
    assert list(steps) == ["model-1", "lookup#1", "model-2", "lookup#2", "model-3"]
    assert all(outcome.status == "ok" for outcome in steps.values())
    assert steps["model-3"].value.text == "done" and steps["model-3"].attempts == 1


def test_a_subagent_cancelled_in_a_later_turn_ends_cancelled_and_its_lead_goes_on() -> None:
    worker_model = _Recording([[call("lookup", key="a")], "never"], hold=2)
    worker = shoal.Agent(name="worker", model=worker_model, tools=[lookup])
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("worker", task="t")], "done"]),
                       subagents=[worker])
    runtime = shoal.Runtime()

    async def main() -> shoal.AgentResult[Any]:
        handle = lead.start("go", runtime=runtime, run_id="r2")
        await worker_model.held.wait()
        handle.cancel("lead/worker#1", reason="enough")
        result = await handle
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0
        return result

    result = asyncio.run(main())
    assert result.ok and result.output == "done"
    [record] = result.calls
    assert record.status == "cancelled" and "enough" in record.message.content
    [child] = result.children
    assert child.status == "cancelled" and child.turns == 2
    steps = _steps(runtime, "r2/lead/worker#1/steps")
    assert steps["model-2"].status == "cancelled" and steps["model-2"].reason == "enough"
    assert steps["model-1"].status == "ok" and steps["lookup#1"].status == "ok"


def test_an_agents_task_cancelled_in_a_later_turn_records_the_turn_cancelled() -> None:
    model = _Recording([[call("lookup", key="a")], "never"], hold=2)
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])
    runtime = shoal.Runtime()

    async def main() -> shoal.AgentResult[Any]:
        handle = agent.start("go", runtime=runtime, run_id="r3")
        await model.held.wait()
        handle._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handle
        return handle.result

    result = asyncio.run(main())
    assert result.status == "cancelled" and result.turns == 2
    steps = _steps(runtime, "r3/lead/steps")
    assert steps["model-2"].status == "cancelled"
    assert steps["model-2"].reason == "the agent running these calls was cancelled"


class _Endless(shoal.Model):
    """First turn: one call; second: text that never ends (streamed)."""

    name = "endless"
    streams_tool_calls = True
    changes_requests = False

    def __init__(self) -> None:
        self.turn = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streaming agent streams its replies")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.turn += 1
        if self.turn == 1:
            async for event in ScriptedModel([[call("lookup", key="a")]]).stream(request):
                yield event
            return
        while True:
            yield TextDelta("word " * 50)
            await asyncio.sleep(0)


def test_a_later_turn_whose_stream_breaches_the_budget_stops_in_its_agents_task() -> None:
    # the turn stops its own node from inside its attempt (run by the agent's task): it is
    # cancelled at its next read, not left streaming, and the agent's task is not cancelled
    model = _Endless()
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])

    async def main() -> shoal.AgentResult[Any]:
        handle = agent.start("go", budget=shoal.Budget(tokens=500))
        try:
            await asyncio.wait_for(asyncio.shield(handle._task), 10)
        except shoal.ShoalError as exc:
            result = getattr(exc, "result", None)
            assert isinstance(result, shoal.AgentResult)
            return result
        return handle.result

    result = asyncio.run(main())
    assert result.status == "budget_exceeded" and result.turns == 2
    assert [c.status for c in result.calls] == ["ok"]


def test_a_turn_that_raises_in_the_agents_task_fails_as_its_own_task_would() -> None:
    class Broken(shoal.Model):
        name = "broken"

        def __init__(self) -> None:
            self.turn = 0

        async def request(self, request: ModelRequest) -> ModelResponse:
            self.turn += 1
            if self.turn == 2:
                raise shoal.ModelError("broken", "turn 2 broke")
            return ModelResponse(tool_calls=(ToolCall("1", "lookup", '{"key": "a"}'),),
                                 usage=Usage(1, 1, 1))

    agent = shoal.Agent(name="lead", model=Broken(), tools=[lookup])
    runtime = shoal.Runtime()
    with pytest.raises(shoal.ModelError, match="turn 2 broke"):
        agent.run_sync("go", runtime=runtime, run_id="r4")
    steps = _steps(runtime, "r4/lead/steps")
    assert steps["model-2"].status == "failed"
    assert steps["model-2"].error is not None and "turn 2 broke" in steps["model-2"].error.message


def test_a_subagents_steps_run_has_no_task_and_its_first_turn_runs_in_the_subagents_task(
        ) -> None:
    worker_model = _Recording([[call("lookup", key="a")], "found"], hold=2)
    worker = shoal.Agent(name="worker", model=worker_model, tools=[lookup])
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("worker", task="t")], "done"]),
                       subagents=[worker])
    runtime = shoal.Runtime()

    async def main() -> tuple[shoal.AgentResult[Any], int]:
        handle = lead.start("go", runtime=runtime, run_id="r5")
        await worker_model.held.wait()
        drives = _tasks_running("Runtime._drive")  # neither steps run has a task
        worker_model.hold = None
        handle.cancel("lead/worker#1", reason="enough")
        return await handle, drives

    result, drives = asyncio.run(main())
    assert drives == 0
    assert worker_model.tasks[0] is worker_model.tasks[1]  # the worker's task: both turns
    assert result.ok and result.children[0].status == "cancelled"
    store = runtime.store
    assert store is not None
    record = store.get_run("r5/lead/worker#1/steps")  # its agent alone was cancelled
    assert record is not None and record.status == "finished"
    steps = _steps(runtime, "r5/lead/worker#1/steps")
    assert [(node, o.status, o.reason) for node, o in steps.items()] == [
        ("model-1", "ok", ""), ("lookup#1", "ok", ""), ("model-2", "cancelled", "enough")]


def test_a_subagents_steps_run_without_a_task_is_journaled_whole_in_a_durable_journal(
        tmp_path: Any) -> None:
    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt(
        {"*": [[call("lookup", key="a")], "found"]}), tools=[lookup])
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[call("worker", task="t1"), call("worker", task="t2")], "done"]), subagents=[worker])
    store = shoal.SQLiteStore(str(tmp_path / "journal.db"))
    runtime = shoal.Runtime(store=store)
    result = lead.run_sync("go", runtime=runtime, run_id="r6")
    assert result.ok and [c.output for c in result.children] == ["found", "found"]
    for n in (1, 2):
        run_id = f"r6/lead/worker#{n}/steps"
        record = store.get_run(run_id)
        assert record is not None and record.status == "finished", record
        assert [node_id.split(":")[0] for node_id in store.outcomes(run_id)] == [
            "model-1", "lookup#1", "model-2"]
        assert all(s.outcome.status == "ok" for s in store.outcomes(run_id).values())


def test_a_steps_run_that_ends_as_it_closes_is_not_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a memory journal's steps run ends as its agent closes it: its end has nothing to await
    # (no waiter made per agent); one that fails as it ends still raises its error
    from shoal.agents import run as agent_run
    from shoal.agents import toolcalls

    waited: list[object] = []
    settled = toolcalls._settled

    def counted(handle: Any) -> Any:
        waited.append(handle)
        return settled(handle)

    monkeypatch.setattr(agent_run, "_settled", counted)
    worker = shoal.Agent(name="worker", model=ScriptedModel([[call("lookup", key="a")], "ok"]),
                         tools=[lookup])
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[call("worker", task="t")], "done"]))
    result = asyncio.run(lead.run("go"))
    assert result.ok and result.children[0].ok and result.output == "done"
    assert waited == []


def test_a_steps_run_opens_without_a_decision_and_runs_what_is_added_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # an open run opening empty (every agent's steps run) has nothing to queue or start: it
    # is marked begun without the state machine's begin(); its steps still run as added
    from shoal.scheduler.state import SchedulerState

    begun: list[int] = []
    begin = SchedulerState.begin

    def counted(self: SchedulerState, now: float) -> Any:
        begun.append(len(self.graph.nodes))
        return begin(self, now)

    monkeypatch.setattr(SchedulerState, "begin", counted)
    worker = shoal.Agent(name="worker", model=ScriptedModel([[call("lookup", key="a")], "ok"]),
                         tools=[lookup])
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[call("worker", task="t")], "done"]))
    result = asyncio.run(lead.run("go"))
    assert result.ok and result.children[0].output == "ok"
    assert result.children[0].calls[0].message.content == "aa"
    assert begun == []

    async def opened_with_a_node() -> Any:  # one with a node before it starts: as before
        async with shoal.Runtime().open_run("p") as run:
            return await run.value(run.call(lookup, key="b"))

    assert asyncio.run(opened_with_a_node()) == "bb"
