"""Agents start each tool call as the model streams it, not when its reply ends."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ModelHTTPError
from shoal.models.base import (
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCallDone,
)
from shoal.models.retry import ModelGates, ModelRetry
from shoal.testing import ScriptedModel, call, pause, run_virtual

Res = shoal.AgentResult[Any]


def _five_calls() -> ScriptedModel:
    """One turn streaming 5 calls 200 ms apart (its reply ends 200 ms after the last)."""
    step: list[Any] = []
    for name in "abcde":
        step += [call("work", name=name), pause(0.2)]
    return ScriptedModel([step, "done"])


def _tool_phase_end(stream_dispatch: bool | None) -> tuple[float, Res]:
    ended: list[float] = []

    @shoal.tool
    async def work(name: str) -> str:
        """Work on one thing: 1 s for ``a``, 300 ms for the others."""
        await asyncio.sleep(1.0 if name == "a" else 0.3)
        ended.append(asyncio.get_running_loop().time())
        return f"{name} done"

    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=_five_calls(), tools=[work],
                                          stream_dispatch=stream_dispatch)

    async def main() -> tuple[float, Res]:
        began = asyncio.get_running_loop().time()  # the model request starts at once
        result = await agent.run("go")
        return max(ended) - began, result

    return run_virtual(main())


def test_calls_start_as_the_model_streams_them() -> None:
    took, result = _tool_phase_end(None)  # on by default: the scripted model streams
    assert took <= 1.35
    assert took == pytest.approx(1.1)  # the first call (1 s) and the last (0.8 s + 0.3 s)
    assert result.output == "done"
    assert [m.content for m in (r.message for r in result.calls)] == [
        f"{n} done" for n in "abcde"]


def test_the_switch_waits_for_the_whole_reply() -> None:
    took, result = _tool_phase_end(False)
    assert took >= 2.0  # the reply ends at 1 s, then the first call takes 1 s
    assert result.output == "done"


def test_results_go_back_in_the_order_asked_whatever_order_they_end_in() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    model = ScriptedModel([[call("nap", seconds=3.0), pause(0.1), call("nap", seconds=1.0),
                            pause(0.1), call("nap", seconds=0.5)], "done"])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[nap])
    result = run_virtual(agent.run("go"))
    slept = ["slept 3.0", "slept 1.0", "slept 0.5"]
    assert [r.message.content for r in result.calls] == slept
    sent = model.requests[1].messages[-3:]
    assert [getattr(m, "content", None) for m in sent] == slept
    assert [getattr(m, "call_id", None) for m in sent] == [
        c.id for c in result.messages[1].tool_calls]  # type: ignore[union-attr]


def test_a_malformed_streamed_call_goes_back_as_an_error_and_the_rest_run() -> None:
    ran: list[str] = []

    @shoal.tool
    async def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    model = ScriptedModel([[call("note", text="x"), pause(0.1),
                            call("note", raw_arguments="{oops"), pause(0.1),
                            call("nosuch"), call("note", text="y")], "done"])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[note])
    result = run_virtual(agent.run("go"))
    assert [r.status for r in result.calls] == ["ok", "rejected", "rejected", "ok"]
    assert "not valid JSON" in result.calls[1].message.content
    assert "no tool named 'nosuch'" in result.calls[2].message.content
    assert ran == ["x", "y"]
    assert result.output == "done"


def test_a_streamed_call_waits_for_its_approval() -> None:
    sent: list[int] = []

    @shoal.tool(approval=lambda args: args["amount"] > 100)
    async def pay(amount: int) -> str:
        """Pay."""
        sent.append(amount)
        return f"paid {amount}"

    def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        if request.args["amount"] > 500:
            return shoal.Decision.deny("too much")
        return shoal.Decision.approve()

    model = ScriptedModel([[call("pay", amount=50), pause(0.1), call("pay", amount=200),
                            pause(0.1), call("pay", amount=900)], "done"])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[pay])
    result = run_virtual(agent.run("go", approver=approver))
    assert sorted(sent) == [50, 200]
    assert [r.status for r in result.calls] == ["ok", "ok", "denied"]
    assert "too much" in result.calls[2].message.content


def test_fan_out_refuses_streamed_calls_past_the_limit() -> None:
    ran: list[str] = []

    @shoal.tool
    async def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    model = ScriptedModel([[call("note", raw_arguments="{oops"), call("note", text="a"),
                            pause(0.1), call("note", text="b"), pause(0.1),
                            call("note", text="c")], "done"])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[note])
    result = run_virtual(agent.run("go", budget=shoal.Budget(fan_out=2)))
    assert [r.status for r in result.calls] == ["rejected", "ok", "ok", "rejected"]
    assert "fan_out" in result.calls[3].message.content
    assert ran == ["a", "b"]


class _FailsMidway(Model):
    """Streams call ``a``, then fails with a 503 the first time; the retry streams a and b."""

    name = "midway"
    streams_tool_calls = True

    def __init__(self, retried_a: str = '{"text": "a"}') -> None:
        self.attempts = 0
        self.retried_a = retried_a

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("an agent with stream dispatch streams")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if len(request.messages) > 1:  # the results came back: answer
            yield ResponseDone(ModelResponse("done"))
            return
        self.attempts += 1
        if self.attempts == 1:
            yield TextDelta("Let me note a")  # text seen does not stop the agent's retry
            yield ToolCallDone(0, shoal.models.ToolCall("first-a", "note", '{"text": "a"}'))
            await asyncio.sleep(0.1)
            raise ModelHTTPError(self.name, "overloaded", 503)
        a = shoal.models.ToolCall("second-a", "note", self.retried_a)
        b = shoal.models.ToolCall("second-b", "note", '{"text": "b"}')
        yield ToolCallDone(0, a)
        yield ToolCallDone(1, b)
        yield ResponseDone(ModelResponse("", (a, b), stop_reason="tool_calls"))


@pytest.mark.parametrize("retried_a", ['{"text": "a"}', '{"text": "other"}'])
def test_a_stream_retried_midway_never_runs_a_started_call_twice(retried_a: str) -> None:
    ran: list[str] = []

    @shoal.tool
    async def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    model = _FailsMidway(retried_a)
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[note])
    gates = ModelGates(retry=ModelRetry(retries=2, backoff=0.5))
    result = run_virtual(agent.run("go", gates=gates))
    assert model.attempts == 2 and gates.retries == 1
    assert sorted(ran) == ["a", "b"]  # a started before the failure and stands
    assert [r.call.id for r in result.calls] == ["first-a", "second-b"]
    assert result.messages[1].tool_calls == tuple(  # type: ignore[union-attr]
        r.call for r in result.calls)  # the conversation holds the calls that ran
    assert result.output == "done"


def test_a_model_failing_after_calls_started_cancels_them_and_records_their_outcomes() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "slept"

    class Fails(Model):
        name = "fails"
        streams_tool_calls = True

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError("streamed")

        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield ToolCallDone(0, shoal.models.ToolCall("c1", "nap", '{"seconds": 10}'))
            await asyncio.sleep(0.5)
            raise ModelHTTPError(self.name, "bad request", 400)

    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=Fails(), tools=[nap])

    async def main() -> tuple[BaseException, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(shoal.ModelError) as caught:
            await agent.run("go")
        return caught.value, loop.time()

    error, ended = run_virtual(main())
    assert ended < 1  # the 10 s call did not keep the run waiting
    result = error.result  # type: ignore[attr-defined]
    assert [r.status for r in result.calls] == ["cancelled"]
    assert "model turn" in (result.calls[0].outcome.reason or "")


def test_a_resumed_turn_replays_its_streamed_calls_from_the_journal(tmp_path: Path) -> None:
    ran: list[str] = []

    @shoal.tool
    def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    def refused(request: ModelRequest) -> ModelResponse:
        raise ModelHTTPError("scripted", "bad request", 400)

    first = ScriptedModel([[call("note", text="a"), pause(0.05), call("note", text="b")],
                           refused])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=first, tools=[note])
    with pytest.raises(shoal.ModelError):  # the second turn fails
        agent.run_sync("go", runtime=runtime, run_id="r1")
    assert sorted(ran) == ["a", "b"]
    again = ScriptedModel(["done"])
    resumed = shoal.Agent(name="lead", model=again, tools=[note])
    result = resumed.resume_sync("r1", "go", runtime=runtime)
    assert result.output == "done"
    assert sorted(ran) == ["a", "b"]  # replayed, not run again
    assert len(again.requests) == 1  # only the turn that had not answered
    assert [r.message.content for r in result.calls] == ["a", "b"]
    assert [r.status for r in result.calls] == ["ok", "ok"]


def test_stream_dispatch_must_be_a_bool_or_none() -> None:
    with pytest.raises(shoal.ConfigError, match="stream_dispatch"):
        shoal.Agent(name="lead", model=ScriptedModel([]), stream_dispatch="yes")  # type: ignore[arg-type]


ROOT = Path(__file__).resolve().parent.parent


def _stream_crash(store: Path, log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.stream_crash", str(store), "r1", mode,
                           str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_reply_cut_by_a_crash_is_asked_again_and_its_finished_calls_replay(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    crashed = _stream_crash(store, log, "crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert log.read_text().split() == ["a"]  # note ran while the reply still streamed
    resumed = _stream_crash(store, log, "resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "final answer"
    assert report["requests"] == 2  # the cut reply, asked again, and the last turn
    assert report["calls"] == ["ok", "ok"]
    assert report["results"] == ["noted a", "survived"]
    assert log.read_text().split() == ["a"]  # replayed from the journal, not run again


def test_cancelling_the_agent_mid_stream_cancels_the_started_calls_and_keeps_them() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "slept"

    model = ScriptedModel([[call("nap", seconds=10), pause(5), call("nap", seconds=1)]])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[nap])

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        handle = agent.start("go")
        await asyncio.sleep(0.5)  # the first call runs, the reply still streams
        handle.cancel(reason="enough")
        with pytest.raises(shoal.AgentError) as caught:
            await handle
        return caught.value.result, loop.time()

    result, ended = run_virtual(main())
    assert ended < 1
    assert result.status == "cancelled"
    assert [r.status for r in result.calls] == ["cancelled"]


def test_a_stream_that_ends_without_its_reply_fails_the_turn_and_cancels_its_calls() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "slept"

    class Cut(Model):
        name = "cut"
        streams_tool_calls = True

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError("streamed")

        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield ToolCallDone(0, shoal.models.ToolCall("c1", "nap", '{"seconds": 10}'))
            yield ToolCallDone(7, shoal.models.ToolCall("c9", "nap", '{"seconds": 10}'))

    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=Cut(), tools=[nap])

    async def main() -> BaseException:
        with pytest.raises(shoal.ModelError, match="without a complete reply") as caught:
            await agent.run("go")
        return caught.value

    result = run_virtual(main()).result  # type: ignore[attr-defined]
    assert [r.call.id for r in result.calls] == ["c1"]  # a call out of order never started
    assert [r.status for r in result.calls] == ["cancelled"]


def test_a_budget_breach_mid_stream_stops_the_started_calls() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "slept"

    model = ScriptedModel([[call("nap", seconds=10), pause(5), call("nap", seconds=1)]])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[nap])

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(shoal.BudgetExceeded) as caught:
            await agent.run("go", budget=shoal.Budget(wall_clock=1.0))
        return caught.value.result, loop.time()

    result, ended = run_virtual(main())
    assert ended == pytest.approx(1.0, abs=0.01)
    assert result.status == "budget_exceeded"
    assert [r.status for r in result.calls] == ["timed_out"]  # the tree's deadline passed


def test_cancelling_the_task_that_waits_for_a_turns_calls_still_ends_each_call() -> None:
    # the tool phase reads each call's outcome from its own future, unshielded: the waiter's
    # cancellation (even repeated) must still cancel every call and wait for its outcome
    stopped: list[str] = []

    @shoal.tool
    async def nap(key: str) -> str:
        """Sleep long."""
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stopped.append(key)
            raise
        return "slept"

    model = ScriptedModel([[call("nap", key="a"), call("nap", key="b")], "never"])
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[nap])
    events: list[Any] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(agent.run("go", on_event=events.append))
        await asyncio.sleep(1)  # both calls run; the agent waits for their outcomes
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # again, while the calls are being stopped
        with pytest.raises(asyncio.CancelledError):
            await task
        return loop.time()

    ended = run_virtual(main())
    assert ended < 2  # not the calls' 10 s
    assert sorted(stopped) == ["a", "b"]
    finished = {e.node_id: e for e in events if isinstance(e, shoal.events.NodeFinished)
                and e.tool == "nap"}
    assert sorted(finished) == ["nap#1", "nap#2"]
    assert {e.status for e in finished.values()} == {"cancelled"}


class _Announces(Model):
    """A streaming model that says its server starts while it streams (as LocalModel does)."""

    name = "announces"
    streams_tool_calls = True

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("streamed")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        from shoal.events import ModelServerStarting
        from shoal.models._common import notify

        notify(ModelServerStarting(run_id="", time=0.0, model=self.name))
        await asyncio.sleep(0.1)
        if not any(m.role == "tool" for m in request.messages):
            yield ToolCallDone(0, shoal.models.ToolCall("c1", "note", '{"text": "a"}'))
            yield ResponseDone(ModelResponse("", (shoal.models.ToolCall(
                "c1", "note", '{"text": "a"}'),), stop_reason="tool_calls"))
        else:
            yield ResponseDone(ModelResponse("done"))


@pytest.mark.parametrize("observed", [True, False])
def test_what_a_streaming_model_announces_reaches_the_trees_sinks_with_its_lineage(
        observed: bool) -> None:
    from shoal.events import Event, ModelServerStarting

    @shoal.tool
    async def note(text: str) -> str:
        """Note."""
        return text

    worker = shoal.Agent(name="worker", model=_Announces(), tools=[note])
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("worker", task="t")], "ok"]),
                       subagents=[worker])
    events: list[Event] = []
    result = run_virtual(lead.run("go", on_event=events.append if observed else None))
    assert result.output == "ok" and result.children[0].output == "done"
    said = [e for e in events if isinstance(e, ModelServerStarting)]
    # one per model request of the worker (2 turns), stamped with the worker's lineage
    assert [e.lineage for e in said] == (["lead/worker#1"] * 2 if observed else [])
