"""The LLMCompiler-style planner: Agent(mode="plan") streams a plan, runs it, joins, replans."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.planner import join_action, plan_prompt, tool_signature
from shoal.agents.planprompts import replan_note
from shoal.exceptions import ModelHTTPError
from shoal.models.base import (
    AssistantMessage,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    UserMessage,
)
from shoal.models.retry import ModelGates, ModelRetry
from shoal.testing import ScriptedModel, run_virtual

Res = shoal.AgentResult[Any]
FINISH = "Thought: the results answer it.\nAction: Finish({})"


def _is_planner(request: ModelRequest) -> bool:
    return bool(request.plan_tools)


def _said(request: ModelRequest) -> str:
    """A request's messages as one text: the conversation its model reads."""
    return "\n\n".join(str(getattr(m, "content", "")) for m in request.messages)


# ---- the must-show: a streamed 10-call plan ------------------------------------------------

TEN_CALLS = """Thought: fetch four sources, then combine them pairwise and in the end.
1. fetch(source="a", seconds=0.4)
2. fetch(source="b", seconds=1.5)
3. fetch(source="c", seconds=0.2)
4. combine(parts=[$1, $3], seconds=0.3)
5. fetch(source="d", seconds=0.1)
6. combine(parts=[$4, $5], seconds=0.2)
7. combine(parts=[$2], seconds=0.1)
8. fetch(source="e", seconds=2.0)
9. combine(parts=[$6, $7], seconds=0.25)
10. combine(parts=[$9, $8, $1], seconds=0.1)
11. join()
"""
DEPS = {"1": [], "2": [], "3": [], "4": ["1", "3"], "5": [], "6": ["4", "5"], "7": ["2"],
        "8": [], "9": ["6", "7"], "10": ["9", "8", "1"]}


@shoal.tool
async def fetch(source: str, seconds: float) -> str:
    """Fetch one source (it takes ``seconds``)."""
    await asyncio.sleep(seconds)
    return source


@shoal.tool
async def combine(parts: list[str], seconds: float) -> str:
    """Combine parts into one text (it takes ``seconds``)."""
    await asyncio.sleep(seconds)
    return "(" + "+".join(parts) + ")"


def test_each_call_of_a_streamed_plan_starts_once_written_and_its_inputs_are_done() -> None:
    model = ScriptedModel([TEN_CALLS, FINISH.format("done")], tokens_per_second=40.0,
                          first_token=0.3)
    agent = shoal.Agent(name="planner", model=model, tools=[fetch, combine], mode="plan")
    events: list[shoal.Event] = []
    result = run_virtual(agent.run("combine the sources", on_event=events.append))
    assert result.output == "done"
    plan_run = f"{result.run_id}/planner/plan"
    parsed = {e.node_id: e.time for e in events if isinstance(e, shoal.PlanCallParsed)}
    started = {e.node_id: e.time for e in events
               if isinstance(e, shoal.NodeStarted) and e.run_id == plan_run}
    finished = {e.node_id: e.time for e in events
                if isinstance(e, shoal.NodeFinished) and e.run_id == plan_run}
    assert sorted(parsed, key=int) == sorted(DEPS, key=int) == sorted(started, key=int)
    for node, needs in DEPS.items():
        ready = max([parsed[node], *(finished[n] for n in needs)])
        assert started[node] >= parsed[node]
        assert abs(started[node] - ready) <= 0.005, (node, started[node], ready)
    # the recorded outcomes carry the same times as the events
    outcomes = {r.call.id: r.outcome for r in result.calls}
    assert all((outcome := outcomes[n]) is not None
               and outcome.started_at == pytest.approx(started[n]) for n in DEPS)
    # calls ran while the model still wrote the plan: several ended before the last line
    stream_end = max(parsed.values())
    assert sum(t < stream_end for t in finished.values()) >= 3
    assert [r.status for r in result.calls] == ["ok"] * 10
    assert result.calls[-1].message.content == "((((a+c)+d)+(b))+e+a)"
    assert result.plans == [TEN_CALLS]
    assert [r.lineage for r in result.calls[:2]] == ["planner/fetch#1", "planner/fetch#2"]


def test_scripted_token_timing_is_exact_on_the_virtual_clock() -> None:
    text = "x" * 40  # 10 tokens
    model = ScriptedModel([text, text], tokens_per_second=10.0, first_token=0.5)

    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        began, times = loop.time(), []
        async for event in model.stream(ModelRequest("", ())):
            if isinstance(event, TextDelta):
                times.append(loop.time() - began)
        began = loop.time()
        await model.request(ModelRequest("", ()))
        return times, loop.time() - began

    times, took = run_virtual(main())
    assert times == pytest.approx([0.5 + i * 0.1 for i in range(10)])
    assert took == pytest.approx(times[-1])  # a plain request takes as long as the stream
    with pytest.raises(ValueError, match="tokens_per_second"):
        ScriptedModel([], tokens_per_second=0)
    with pytest.raises(ValueError, match="first_token"):
        ScriptedModel([], first_token=-1)


# ---- replanning ------------------------------------------------------------------------------


def test_a_failing_call_leads_to_a_replan_that_reuses_the_finished_results() -> None:
    ran: Counter[str] = Counter()

    @shoal.tool
    async def get(url: str) -> str:
        """Download a page."""
        ran[url] += 1
        await asyncio.sleep(0.1)
        if url == "bad":
            raise ConnectionError("host unreachable")
        return f"page {url}"

    @shoal.tool
    async def summarize(pages: list[str]) -> str:
        """Summarize pages."""
        ran["summarize"] += 1
        return " & ".join(pages)

    first = '1. get("a")\n2. get("bad")\n3. summarize(pages=[$1, $2])\n4. join()'
    second = 'Thought: a mirror instead\n4. get("mirror")\n5. summarize([$1, $4])\n6. join()'
    model = ScriptedModel([first, "Thought: get(bad) failed.\nAction: Replan(try a mirror)",
                           second, FINISH.format("page a & page mirror")])
    agent = shoal.Agent(name="planner", model=model, tools=[get, summarize], mode="plan")
    result = run_virtual(agent.run("summarize a and b"))
    assert result.output == "page a & page mirror"
    assert result.plans == [first, second]
    assert ran == {"a": 1, "bad": 1, "mirror": 1, "summarize": 1}  # 1 was not run again
    assert [(r.call.id, r.status) for r in result.calls] == [
        ("1", "ok"), ("2", "failed"), ("3", "skipped"), ("4", "ok"), ("5", "ok")]
    replan = model.requests[2]
    assert _is_planner(replan) and not replan.tools
    said = _said(replan)
    assert "2. get" in said and "ConnectionError: host unreachable" in said
    assert "try a mirror" in said
    assert "Number the new calls from 4 on" in replan.messages[-1].content
    assert replan.instructions == model.requests[0].instructions
    joiner = model.requests[3]
    assert first in _said(joiner) and second in _said(joiner)
    assert "page mirror" in joiner.messages[-1].content
    assert result.turns == 4 and result.usage.requests == 4


def test_a_replan_past_max_replans_ends_the_run_with_a_typed_error() -> None:
    @shoal.tool
    def probe(n: int) -> int:
        """Probe."""
        return n

    again = "Thought: not enough\nAction: Replan(need more)"
    model = ScriptedModel(['1. probe(1)\n2. join()', again, '2. probe(2)\n3. join()', again])
    agent = shoal.Agent(name="planner", model=model, tools=[probe], mode="plan", max_replans=1)
    with pytest.raises(shoal.MaxReplansExceeded, match="raise max_replans") as caught:
        run_virtual(agent.run("go"))
    result = caught.value.result
    assert result.status == "failed" and len(result.plans) == 2
    assert "not allowed" in _said(model.requests[3])  # the last joiner was told
    assert "not allowed" not in _said(model.requests[1]) + model.requests[1].instructions
    assert [r.status for r in result.calls] == ["ok", "ok"]


def test_the_joiner_reply_is_read_tolerantly() -> None:
    assert join_action("just the answer") == ("finish", "just the answer")
    assert join_action("Thought: x\nAction: Finish(a (b) c)\n") == ("finish", "a (b) c")
    assert join_action("Thought: x\naction:finish(\"quoted\")") == ("finish", "quoted")
    assert join_action("Action: Replan(more\nlines)") == ("replan", "more\nlines")
    assert join_action("Action: Finish(first)\nAction: Replan(second)") == ("replan", "second")
    assert join_action("Action: Finish(no close") == ("finish", "no close")


class Answer(pydantic.BaseModel):
    total: int


def test_output_type_applies_to_the_joiners_answer_and_is_asked_again() -> None:
    @shoal.tool
    def count(word: str) -> int:
        """Count letters."""
        return len(word)

    model = ScriptedModel(['1. count("abc")\n2. count("de")\n3. join()',
                           "Action: Finish(five)", 'Action: Finish({"total": 5})'])
    agent: shoal.Agent[Answer] = shoal.Agent(name="planner", model=model, tools=[count],
                                             mode="plan", output_type=Answer)
    result = run_virtual(agent.run("how many letters?"))
    assert result.output == Answer(total=5)
    assert "JSON schema" in model.requests[1].instructions
    assert model.requests[1].output_schema is None  # the reply is Thought/Action text
    assert "did not fit" in model.requests[2].messages[-1].content


# ---- one conversation: each request extends the previous one and its reply ----------------


def _assert_one_conversation(requests: list[ModelRequest], replies: list[str]) -> None:
    """Each request has the first one's instructions, and its messages start with the
    previous request's messages and then the previous reply, as the assistant's message."""
    assert len(requests) == len(replies)
    for before, reply, request in zip(requests, replies, requests[1:], strict=False):
        assert request.instructions == requests[0].instructions
        shared = len(before.messages)
        assert request.messages[:shared] == before.messages
        assert request.messages[shared] == AssistantMessage(reply)
        assert len(request.messages) > shared + 1  # and something new from the user
        assert all(isinstance(m, UserMessage) for m in request.messages[shared + 1:])


def _failing_then_mirrored() -> tuple[list[shoal.Tool[..., Any]], list[str]]:
    @shoal.tool
    async def get(url: str) -> str:
        """Download a page."""
        await asyncio.sleep(0.1)
        if url == "bad":
            raise ConnectionError("host unreachable")
        return f"page {url}"

    @shoal.tool
    def count(pages: list[str]) -> int:
        """Count the pages."""
        return len(pages)

    steps = ['Thought: both pages.\n1. get("a")\n2. get("bad")\n3. count(pages=[$1, $2])'
             '\n4. join()',
             "Thought: get(bad) failed.\nAction: Replan(try a mirror)",
             '4. get("mirror")\n5. count([$1, $4])\n6. join()',
             "Thought: two pages.\nAction: Finish(two)",  # not an Answer: asked again
             'Thought: two pages.\nAction: Finish({"total": 2})']
    return [get, count], steps


@pytest.mark.parametrize("streamed", [False, True])
def test_each_planner_request_extends_the_previous_request_and_its_reply(
        streamed: bool) -> None:
    tools, steps = _failing_then_mirrored()
    options: dict[str, Any] = {"tokens_per_second": 80.0, "first_token": 0.2} if streamed else {}
    model = ScriptedModel(steps, **options)
    agent: shoal.Agent[Answer] = shoal.Agent(
        name="planner", model=model, tools=tools, mode="plan", output_type=Answer,
        instructions="Count what you find.")
    result = run_virtual(agent.run("count the pages a and b"))
    assert result.output == Answer(total=2) and len(result.plans) == 2
    requests = model.requests
    assert [_is_planner(r) for r in requests] == [True, False, True, False, False]
    _assert_one_conversation(requests, steps)
    # the instructions tell both turns (the answer's schema included); the messages the rest
    assert requests[0].instructions.startswith("Count what you find.\n\nWrite a plan")
    assert "Action: Replan(" in requests[0].instructions
    assert "JSON schema" in requests[0].instructions
    assert requests[0].messages == (UserMessage("count the pages a and b"),)
    said = [str(getattr(m, "content", "")) for m in requests[4].messages]
    assert "ConnectionError: host unreachable" in said[2] and "Judge the results" in said[2]
    assert said[4] == replan_note(4)
    assert "page mirror" in said[6] and "not allowed" not in said[6]
    assert "did not fit" in said[8]


def test_the_last_round_is_told_in_the_conversation_that_it_must_answer() -> None:
    tools, steps = _failing_then_mirrored()
    model = ScriptedModel(steps)
    agent: shoal.Agent[Answer] = shoal.Agent(name="planner", model=model, tools=tools,
                                            mode="plan", output_type=Answer, max_replans=1)
    assert run_virtual(agent.run("count")).output == Answer(total=2)
    _assert_one_conversation(model.requests, steps)
    last = model.requests[3].messages[-1].content
    assert "Replanning is not allowed any more" in last


def test_a_per_prompt_script_counts_a_joiner_asked_again_before_a_replan() -> None:
    @shoal.tool
    def probe(n: int) -> int:
        """Probe."""
        return n

    steps = ["1. probe(1)\n2. join()", "Action: Finish()",  # empty: asked again
             "Action: Replan(probe 2 as well)", "2. probe(2)\n3. join()", "Action: Finish(3)"]
    model = ScriptedModel.per_prompt({"probe": steps})
    agent = shoal.Agent(name="planner", model=model, tools=[probe], mode="plan")
    result = run_virtual(agent.run("probe"))
    assert result.output == "3" and [r.status for r in result.calls] == ["ok", "ok"]
    assert result.plans == [steps[0], steps[3]]
    _assert_one_conversation(model.requests, steps)
    model.check()


class _FailsLastJoin(ScriptedModel):
    """A scripted model whose fifth request (the last joiner's retry) fails for good."""

    async def request(self, request: ModelRequest) -> ModelResponse:
        if len(self.requests) == 4:
            self.requests.append(request)
            raise ModelHTTPError(self.name, "bad request", 400)
        return await super().request(request)


def test_a_resumed_planner_replays_its_own_turns_of_the_conversation(tmp_path: Path) -> None:
    tools, steps = _failing_then_mirrored()
    agent: shoal.Agent[Answer] = shoal.Agent(name="planner", model=_FailsLastJoin(steps[:4]),
                                            tools=tools, mode="plan", output_type=Answer)

    async def main() -> tuple[ScriptedModel, Any]:
        runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
        with pytest.raises(shoal.ModelError):
            await agent.run("count", runtime=runtime, run_id="r1")
        model = ScriptedModel([steps[4]])
        resumed = await agent.resume("r1", "count", runtime=runtime, model=model)
        return model, resumed

    model, resumed = run_virtual(main())
    assert resumed.output == Answer(total=2) and len(resumed.plans) == 2
    # the four finished turns (two plans, two joiner replies) came from the journal
    assert len(model.requests) == 1
    said = model.requests[0].messages
    assert len(said) == 9 and said[-2] == AssistantMessage(steps[3])
    assert [r.status for r in resumed.calls] == ["ok", "failed", "skipped", "ok", "ok"]


# ---- configuration ---------------------------------------------------------------------------


def test_plan_mode_settings_are_checked() -> None:
    model = ScriptedModel([])
    with pytest.raises(shoal.ConfigError, match="'tools', 'plan'"):
        shoal.Agent(name="a", model=model, tools=[fetch], mode="graph")  # type: ignore[arg-type]
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(shoal.ConfigError, match="max_replans"):
            shoal.Agent(name="a", model=model, tools=[fetch], mode="plan",
                        max_replans=bad)  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="needs tools to plan with"):
        shoal.Agent(name="a", model=model, mode="plan")
    helper = shoal.Agent(name="helper", model=model)
    assert shoal.Agent(name="a", model=model, subagents=[helper], mode="plan").max_replans == 2


def test_the_planner_prompt_describes_each_tool_and_the_format() -> None:
    specs = shoal.Agent(name="a", model=ScriptedModel([]), tools=[fetch, combine]).tool_specs
    assert tool_signature(specs[0]) == "fetch(source: str, seconds: float)"
    prompt = plan_prompt(specs, first_id=7)
    assert "combine(parts: list[str], seconds: float): Combine parts" in prompt
    assert "Number the calls 7, 8, 9" in prompt and "join()" in prompt and "$N" in prompt


# ---- subagents, approvals, budgets, cancellation --------------------------------------------


def test_subagents_are_callable_from_a_plan_and_run_in_parallel() -> None:
    worker_model = ScriptedModel.per_prompt({"*": ["worked"]}, latency=1.0)
    worker = shoal.Agent(name="worker", model=worker_model, instructions="Do one job.")
    model = ScriptedModel(['1. worker(task="x")\n2. worker("y")\n3. join()',
                           FINISH.format("both worked")])
    agent = shoal.Agent(name="planner", model=model, subagents=[worker], mode="plan")

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await agent.run("delegate")
        return result, loop.time() - began

    result, took = run_virtual(main())
    assert result.output == "both worked"
    assert took == pytest.approx(1.0)  # the two subagents overlapped
    assert [c.lineage for c in result.children] == ["planner/worker#1", "planner/worker#2"]
    assert "worker(task: str)" in model.requests[0].instructions


def test_a_plan_call_waits_for_its_approval_and_a_denied_one_never_runs() -> None:
    paid: list[int] = []

    @shoal.tool(approval=lambda args: args["amount"] > 100)
    def pay(amount: int) -> str:
        """Pay."""
        paid.append(amount)
        return f"paid {amount}"

    def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        if request.args["amount"] > 500:
            return shoal.Decision.deny("too much")
        return shoal.Decision.approve()

    model = ScriptedModel(['1. pay(50)\n2. pay(200)\n3. pay(900)\n4. join()',
                           FINISH.format("paid two")])
    agent = shoal.Agent(name="planner", model=model, tools=[pay], mode="plan")
    result = run_virtual(agent.run("pay", approver=approver))
    assert sorted(paid) == [50, 200]
    assert [r.status for r in result.calls] == ["ok", "ok", "denied"]
    assert "too much" in _said(model.requests[1])


def test_fan_out_and_subagent_budgets_hold_in_a_plan() -> None:
    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt({"*": ["ok"]}))
    model = ScriptedModel(['1. worker("a")\n2. worker("b")\n3. worker("c")\n4. fetch("d", 0)'
                           '\n5. join()', FINISH.format("partly")])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], subagents=[worker],
                        mode="plan")
    result = run_virtual(agent.run("go", budget=shoal.Budget(subagents=2)))
    assert [r.status for r in result.calls] == ["ok", "ok", "rejected", "ok"]
    assert "subagents" in result.calls[2].message.content
    model = ScriptedModel(['1. fetch("a", 0)\n2. fetch("b", 0)\n3. fetch("c", 0)\n4. join()',
                           FINISH.format("two")])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")
    result = run_virtual(agent.run("go", budget=shoal.Budget(fan_out=2)))
    assert [r.status for r in result.calls] == ["ok", "ok", "rejected"]
    assert "fan_out" in result.calls[2].message.content


def test_the_requests_budget_stops_a_planner_between_plan_and_join() -> None:
    model = ScriptedModel(['1. fetch("a", 0.5)\n2. join()'])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")
    with pytest.raises(shoal.BudgetExceeded, match="requests") as caught:
        run_virtual(agent.run("go", budget=shoal.Budget(requests=1)))
    result = caught.value.result
    assert result.status == "budget_exceeded"
    assert [r.status for r in result.calls] == ["ok"]  # the call it had started still ran


def test_a_wall_clock_breach_mid_plan_times_out_the_running_calls() -> None:
    model = ScriptedModel(['1. fetch("a", 10)\n2. fetch("b", 0.1)\n3. join()'])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(shoal.BudgetExceeded) as caught:
            await agent.run("go", budget=shoal.Budget(wall_clock=1.0))
        return caught.value.result, loop.time()

    result, ended = run_virtual(main())
    assert ended == pytest.approx(1.0, abs=0.01)
    # the tree's deadline, as a run's deadline: a call under way ends timed out
    assert [r.status for r in result.calls] == ["timed_out", "ok"]


def test_cancelling_a_planner_mid_plan_gives_cancelled_outcomes() -> None:
    model = ScriptedModel(['1. fetch("a", 10)\n2. fetch("b", 0.1)\n3. fetch("c", 20)\n'
                           '4. join()'])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        handle = agent.start("go")
        await asyncio.sleep(0.5)
        handle.cancel(reason="enough")
        with pytest.raises(shoal.AgentError) as caught:
            await handle
        return caught.value.result, loop.time()

    result, ended = run_virtual(main())
    assert ended < 1
    assert result.status == "cancelled"
    assert [r.status for r in result.calls] == ["cancelled", "ok", "cancelled"]


# ---- hostile plans ---------------------------------------------------------------------------


def test_every_kind_of_bad_line_is_a_rejection_the_joiner_reads() -> None:
    ran: list[str] = []

    @shoal.tool
    def echo(text: str) -> str:
        """Echo."""
        ran.append(text)
        return text

    plan = "\n".join([
        "Here is my plan:",                        # prose: a note
        "```",                                     # a code fence: skipped
        '1. echo("ok")',
        '2. nosuch("x")',                          # unknown tool
        "3. echo(text=5)",                         # bad argument type
        "4. echo(text=$99)",                       # dangling ref
        "5. echo(text=$5)",                        # self ref
        '6. echo("a", "b")',                       # too many positional arguments
        '1. echo("again")',                        # a number used twice
        "7. echo(text=$8)",                        # a forward ref (no cycles in a plan)
        '8. echo(text=$7)',                        # ... nor back to a rejected call
        '9. echo("bell\x07 tab\t")',               # control characters are data
        r'13. echo("escaped \ud800 surrogate")',   # a lone surrogate, escaped ...
        '14. echo("raw \ud800 surrogate")',         # ... or raw
        '15. echo("raw nul \x00")',                 # a raw NUL
        "10. echo(text=open('/etc/passwd'))",      # not a literal
        "11. echo(",                               # never closed
        "12. join()", "```"])
    model = ScriptedModel([plan, FINISH.format("only one worked")])
    agent = shoal.Agent(name="planner", model=model, tools=[echo], mode="plan")
    result = run_virtual(agent.run("echo"))
    assert result.output == "only one worked"
    by_id = {r.call.id: r for r in result.calls if r.status == "rejected"}
    assert [r.status for r in result.calls if r.call.id == "1"] == ["ok", "rejected"]
    assert "no tool named 'nosuch'" in by_id["2"].message.content
    assert "text" in by_id["3"].message.content
    assert "$99" in by_id["4"].message.content
    assert "own output" in by_id["5"].message.content
    assert "positional" in by_id["6"].message.content
    assert "already taken" in [r for r in result.calls if r.call.id == "1"][1].message.content
    assert "$8" in by_id["7"].message.content and "$7" in by_id["8"].message.content
    assert "not a literal" in by_id["10"].message.content
    assert "not closed" in by_id["11"].message.content
    assert "lone surrogate" in by_id["13"].message.content
    assert "a lone surrogate \\ud800 inside a quoted string" in by_id["14"].message.content
    assert "a NUL inside a quoted string" in by_id["15"].message.content
    assert "write it as \\x00" in by_id["15"].message.content
    assert ran == ["ok", "bell\x07 tab\t"]
    joiner = _said(model.requests[1])
    joiner.encode("utf-8")  # sendable: the raw surrogate of the plan is not sent back
    assert "Note: line 1" in joiner and "no tool named 'nosuch'" in joiner
    assert all(r.message.is_error for r in by_id.values())


def test_a_plan_of_two_thousand_lines_runs_and_the_joiner_gets_bounded_text() -> None:
    @shoal.tool
    def big(n: int) -> str:
        """A big result."""
        return str(n) * 5_000

    lines = [f"{i}. big({i})" for i in range(1, 2001)]
    model = ScriptedModel(["\n".join([*lines, "2001. join()"]), FINISH.format("all")])
    agent = shoal.Agent(name="planner", model=model, tools=[big], mode="plan")
    result = run_virtual(agent.run("go"), debug=False)
    assert result.output == "all" and len(result.calls) == 2000
    assert all(r.ok for r in result.calls)
    joiner = _said(model.requests[1])
    assert len(joiner) < 500_000 and "more characters cut" in joiner


def test_a_plan_without_calls_or_without_join_still_reaches_the_joiner() -> None:
    model = ScriptedModel(["I cannot plan this.", "Action: Finish(no plan needed)",
                           ])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")
    result = run_virtual(agent.run("go"))
    assert result.output == "no plan needed" and result.calls == []
    joiner = _said(model.requests[1])
    assert "expected a numbered call" in joiner


class _FailsMidPlan(Model):
    """Streams part of a plan, then a 503 the first time; the retry streams it from the start."""

    name = "midplan"
    streams_tool_calls = True

    def __init__(self, retried_first: str) -> None:
        self.attempts = 0
        self.retried_first = retried_first

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse("Action: Finish(done)")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.attempts += 1
        if self.attempts == 1:
            yield TextDelta('1. note("a")\n2. note(')
            await asyncio.sleep(0.1)
            raise ModelHTTPError(self.name, "overloaded", 503)
        text = f'{self.retried_first}\n2. note("b")\n3. join()\n'
        for piece in (text[:10], text[10:]):
            yield TextDelta(piece)
        yield ResponseDone(ModelResponse(text))


@pytest.mark.parametrize("retried_first", ['1. note("a")', '1. note("other")'])
def test_a_plan_stream_retried_midway_never_runs_a_call_twice(retried_first: str) -> None:
    ran: list[str] = []

    @shoal.tool
    async def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    model = _FailsMidPlan(retried_first)
    agent = shoal.Agent(name="planner", model=model, tools=[note], mode="plan")
    gates = ModelGates(retry=ModelRetry(retries=2, backoff=0.5))
    result = run_virtual(agent.run("go", gates=gates))
    assert model.attempts == 2 and gates.retries == 1
    assert sorted(ran) == ["a", "b"]  # a started before the failure and stands
    statuses = [(r.call.id, r.status) for r in result.calls]
    if retried_first.endswith('("a")'):
        assert statuses == [("1", "ok"), ("2", "ok")]
    else:  # the changed line is refused: the started call stands
        assert statuses == [("1", "ok"), ("1", "rejected"), ("2", "ok")]
        assert "already taken" in result.calls[1].message.content
    assert result.output == "done"


# ---- journal and resume ---------------------------------------------------------------------


def test_a_resumed_planner_replays_its_turns_and_finished_calls(tmp_path: Path) -> None:
    ran: list[str] = []

    @shoal.tool
    def note(text: str) -> str:
        """Note."""
        ran.append(text)
        return text

    def refused(request: ModelRequest) -> ModelResponse:
        raise ModelHTTPError("scripted", "bad request", 400)

    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    plan = '1. note("a")\n2. note(text="b")\n3. join()'
    agent = shoal.Agent(name="planner", model=ScriptedModel([plan, refused]), tools=[note],
                        mode="plan")
    with pytest.raises(shoal.ModelError):  # the joiner's turn fails
        agent.run_sync("go", runtime=runtime, run_id="r1")
    assert sorted(ran) == ["a", "b"]
    again = ScriptedModel([FINISH.format("resumed")])
    resumed = shoal.Agent(name="planner", model=again, tools=[note], mode="plan")
    result = resumed.resume_sync("r1", "go", runtime=runtime)
    assert result.output == "resumed" and result.plans == [plan]
    assert sorted(ran) == ["a", "b"] and len(again.requests) == 1
    assert [r.status for r in result.calls] == ["ok", "ok"]


ROOT = Path(__file__).resolve().parent.parent


def _planner_crash(store: Path, log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.planner_crash", str(store), "r1", mode,
                           str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_planner_killed_mid_plan_resumes_without_running_finished_calls_again(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    crashed = _planner_crash(store, log, "crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "b", "slow"]  # killed inside slow
    resumed = _planner_crash(store, log, "resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "final answer"
    assert report["requests"] == 1  # the planner's turn was replayed: only the joiner asked
    assert report["calls"] == ["ok"] * 4 and report["plans"] == 1
    assert report["results"] == ["noted a", "noted b", "c", "noted c"]
    ran = Counter(log.read_text().split())
    # a and b ran once; slow (idempotent) was in flight at the kill, so it ran again
    assert ran == {"a": 1, "b": 1, "slow": 2, "c": 1}


# ---- over the providers' wire protocols -------------------------------------------------------

WIRE_PLAN = ('Thought: fetch both, then combine.\n1. fetch(source="x", seconds=0.3)\n'
             '2. fetch("y", 0.3)\n3. combine(parts=[$1, $2], seconds=0)\n4. join()\n')


def _wire_run(server: Any, system_of: Any) -> tuple[Res, list[dict[str, Any]]]:
    from tests.conftest import arun

    def responder(body: dict[str, Any]) -> Any:
        from tests.wire import text_reply

        if "Judge the results" not in str(body["messages"]):  # the plan request
            return text_reply(WIRE_PLAN, chunk_delay=0.01)
        joined = str(body["messages"])
        return text_reply(f"Thought: ok\nAction: Finish(got {'(x+y)' in joined})")

    with server(responder) as running:
        model = running.model()
        agent = shoal.Agent(name="planner", model=model, tools=[fetch, combine], mode="plan")

        async def main() -> Res:
            try:
                return await agent.run("fetch x and y")
            finally:
                await model.aclose()

        result = arun(main())
        assert not running.errors
        bodies = running.bodies
    # one conversation on the wire: the same system prompt, and the joiner's messages are the
    # plan request's, then the plan as the assistant's, then the results
    assert len(bodies) == 2 and system_of(bodies[0]) == system_of(bodies[1])
    sent = len(bodies[0]["messages"])
    assert bodies[1]["messages"][:sent] == bodies[0]["messages"]
    assert bodies[1]["messages"][sent]["role"] == "assistant"
    assert "4. join()" in str(bodies[1]["messages"][sent])
    return result, bodies


def test_a_planner_over_the_openai_protocol() -> None:
    from tests.wire import OpenAIWireServer

    result, bodies = _wire_run(OpenAIWireServer, lambda b: str(b["messages"][0]["content"]))
    assert result.output == "got True"
    assert [r.status for r in result.calls] == ["ok"] * 3
    assert result.plans == [WIRE_PLAN]
    assert bodies[0].get("stream") is True and "tools" not in bodies[0]


def test_a_planner_over_the_anthropic_protocol() -> None:
    from tests.wire import AnthropicWireServer

    def system_of(body: dict[str, Any]) -> str:
        system = body.get("system", "")
        return system if isinstance(system, str) else " ".join(b["text"] for b in system)

    result, bodies = _wire_run(AnthropicWireServer, system_of)
    assert result.output == "got True"
    assert [r.status for r in result.calls] == ["ok"] * 3
    assert result.plans == [WIRE_PLAN]
    assert bodies[0].get("stream") is True and "tools" not in bodies[0]


def test_a_planner_model_failing_mid_plan_cancels_the_started_calls() -> None:
    class Fails(Model):
        name = "fails"
        streams_tool_calls = True

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError("the plan is streamed")

        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield TextDelta('1. fetch("a", 10)\n2. fetch("b", 0.1)\n')
            await asyncio.sleep(0.5)
            raise ModelHTTPError(self.name, "bad request", 400)

    agent = shoal.Agent(name="planner", model=Fails(), tools=[fetch], mode="plan")

    async def main() -> tuple[BaseException, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(shoal.ModelError) as caught:
            await agent.run("go")
        return caught.value, loop.time()

    error, ended = run_virtual(main())
    assert ended < 1  # the 10 s call did not keep the run waiting
    result = error.result  # type: ignore[attr-defined]
    assert [r.status for r in result.calls] == ["cancelled", "ok"]
    assert "model turn" in (result.calls[0].outcome.reason or "")


def test_cancelling_a_planner_while_its_plan_streams() -> None:
    model = ScriptedModel(['1. fetch("a", 10)\n2. fetch("b", 10)\n' + "Thought: x\n" * 100
                           + '3. fetch("c", 1)\n4. join()'], tokens_per_second=10.0)
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")

    async def main() -> tuple[Res, float]:
        loop = asyncio.get_running_loop()
        handle = agent.start("go")
        await asyncio.sleep(5)  # two calls run; the plan is still being written
        handle.cancel(reason="enough")
        with pytest.raises(shoal.AgentError) as caught:
            await handle
        return caught.value.result, loop.time()

    result, ended = run_virtual(main())
    assert ended == pytest.approx(5.0)
    assert result.status == "cancelled"
    assert [r.status for r in result.calls] == ["cancelled", "cancelled"]
    assert result.plans == []  # the reply never ended


def test_tools_mode_requests_are_digested_as_before() -> None:
    from shoal.agents.run import ConversationDigest

    request = ModelRequest("be brief", ())
    planned = ModelRequest("be brief", (), plan_tools=shoal.Agent(
        name="a", model=ScriptedModel([]), tools=[fetch]).tool_specs)
    assert ConversationDigest().of(request) != ConversationDigest().of(planned)
    assert isinstance(planned.plan_tools, tuple)
    # the digest an earlier shoal journaled for this request: resume still matches it
    assert ConversationDigest().of(request) == "f36f34f97de66ec34d3fa9922b315851"


def test_an_empty_plan_can_be_replanned_over_the_wire_and_a_join_tool_is_a_tool() -> None:
    from tests.conftest import arun
    from tests.wire import OpenAIWireServer, text_reply

    @shoal.tool
    def join(parts: list[str]) -> str:
        """Join parts."""
        return "-".join(parts)

    replies = [text_reply(""), text_reply("Action: Replan(write a plan)"),
               text_reply('1. join(["a", "b"])\n2. join([$1, "c"])\n<END_OF_PLAN>\n3. join([])'),
               text_reply("Action: Finish(a-b-c)")]
    with OpenAIWireServer(replies) as server:
        model = server.model()
        agent = shoal.Agent(name="planner", model=model, tools=[join], mode="plan")

        async def main() -> Res:
            try:
                return await agent.run("join things")
            finally:
                await model.aclose()

        result = arun(main())
        assert not server.errors
        bodies = server.bodies
    assert result.output == "a-b-c"
    assert [(r.call.id, r.message.content) for r in result.calls] == [("1", "a-b"),
                                                                       ("2", "a-b-c")]
    assert "<END_OF_PLAN>" in str(bodies[0]["messages"][0]["content"])
    assert bodies[2]["messages"][2] == {"role": "assistant", "content": "(no plan)"}


def test_a_planner_counts_its_turns_against_max_turns() -> None:
    model = ScriptedModel(['1. fetch("a", 0)\n2. join()', "Action: Replan(again)"])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan", max_turns=2)
    with pytest.raises(shoal.MaxTurnsExceeded, match="2 turns"):
        run_virtual(agent.run("go"))


def test_literals_json_cannot_hold_do_not_end_the_agent() -> None:
    @shoal.tool
    def keys(mapping: dict[Any, int]) -> int:
        """Count keys."""
        return len(mapping)

    model = ScriptedModel(['1. keys({(1, 2): 3})\n2. keys(mapping={1: 2}, extra={(3,): 4})'
                           '\n3. nosuch({(5,): 6})\n4. join()', FINISH.format("checked")])
    agent = shoal.Agent(name="planner", model=model, tools=[keys], mode="plan")
    result = run_virtual(agent.run("go"))
    assert result.output == "checked"
    assert [r.status for r in result.calls] == ["ok", "rejected", "rejected"]
    assert "(1, 2)" in result.calls[0].call.arguments
    assert "unexpected argument 'extra'" in result.calls[1].message.content


def test_a_later_plan_listing_a_finished_call_again_reuses_it() -> None:
    ran: Counter[str] = Counter()

    @shoal.tool
    def step(name: str) -> str:
        """One step."""
        ran[name] += 1
        return name

    first = '1. step("a")\n2. join()'
    second = '1. step("a")\n2. step(name=$1)\n3. join()'  # restates 1 as it was
    model = ScriptedModel([first, "Action: Replan(more)", second, "Action: Finish(ok)"])
    agent = shoal.Agent(name="planner", model=model, tools=[step], mode="plan")
    result = run_virtual(agent.run("go"))
    assert ran == {"a": 2}  # 1 once, 2 once
    assert [(r.call.id, r.status) for r in result.calls] == [("1", "ok"), ("2", "ok")]
    joiner = _said(model.requests[3])
    assert joiner.count('1. step({"name": "a"}) -> ok: a') == 2  # in both plans' results


def test_plan_calls_that_write_the_same_key_run_one_after_the_other() -> None:
    spans: dict[str, tuple[float, float]] = {}

    @shoal.tool(writes="file:{path}")
    async def write(path: str, text: str) -> str:
        """Write a file."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(1.0)
        spans[text] = (began, loop.time())
        return path

    model = ScriptedModel(['1. write("a.txt", "one")\n2. write("b.txt", "two")\n'
                           '3. write("a.txt", "three")\n4. join()', FINISH.format("written")])
    agent = shoal.Agent(name="planner", model=model, tools=[write], mode="plan")
    result = run_virtual(agent.run("write"))
    assert result.output == "written"
    assert spans["three"][0] >= spans["one"][1]  # same file: in plan order
    assert spans["two"][0] < spans["one"][1]  # another file: alongside


def test_plan_calls_appear_in_the_live_tree_under_their_agent() -> None:
    from shoal.cli.tree import AgentTree

    tree = AgentTree()
    model = ScriptedModel(['1. fetch("a", 0.1)\n2. nosuch()\n3. join()', FINISH.format("ok")])
    agent = shoal.Agent(name="planner", model=model, tools=[fetch], mode="plan")
    run_virtual(agent.run("go", on_event=tree))
    assert tree.rows["planner"].children == ["planner/fetch#1", "planner/nosuch?"]
    assert tree.rows["planner/fetch#1"].status == "ok"
    assert tree.rows["planner/nosuch?"].status == "rejected"
    assert tree.rows["planner"].status == "ok"


def test_a_planner_killed_while_its_plan_streams_asks_again_and_replays_finished_calls(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    crashed = _planner_crash(store, log, "crash-streaming")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "b", "slow"]
    resumed = _planner_crash(store, log, "resume-streaming")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "final answer"
    assert report["requests"] == 2  # the cut plan, asked again, and the joiner
    assert report["calls"] == ["ok"] * 4
    assert Counter(log.read_text().split()) == {"a": 1, "b": 1, "slow": 2, "c": 1}
