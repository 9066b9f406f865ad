"""The agent turn loop on ScriptedModel: parallel tool calls, subagents, budgets, bad calls."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pydantic
import pytest

import shoal
from shoal.events import AgentFinished, AgentStarted, Event, NodeStarted, ToolCallRejected
from shoal.exceptions import (
    BudgetExceeded,
    ConfigError,
    MaxTurnsExceeded,
    OutputValidationError,
    ScriptError,
)
from shoal.models.base import ToolResultMessage, UserMessage
from shoal.testing import ScriptedModel, call
from tests.conftest import arun, elapsed, until
from tests.spans import finished, started


@shoal.tool
async def slow_lookup(key: str) -> str:
    """Look a key up (takes 300 ms)."""
    await asyncio.sleep(0.3)
    return f"value of {key}"


@shoal.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@shoal.tool
async def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


def tool_results(result: shoal.AgentResult[Any]) -> list[ToolResultMessage]:
    return [m for m in result.messages if isinstance(m, ToolResultMessage)]


# -- one turn, many calls -------------------------------------------------------------------


def test_five_calls_of_one_turn_run_in_parallel() -> None:
    model = ScriptedModel([[call("slow_lookup", key=f"k{i}") for i in range(5)], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[slow_lookup])
    result, took = arun(elapsed(agent.run("look up five keys")), virtual=True)
    assert result.output == "done"
    # on the virtual clock: 5 x 300 ms side by side end at exactly 0.3 s (one after another: 1.5)
    assert took == pytest.approx(0.3, abs=1e-9), f"the tool phase of 5 x 300 ms took {took} s"
    spans = [(started(c.outcome), finished(c.outcome)) for c in result.calls if c.outcome]
    assert len(spans) == 5
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all overlapped
    model.check()


def test_results_go_back_in_the_order_the_model_asked() -> None:
    @shoal.tool
    async def wait(seconds: float) -> float:
        """Sleep, then return the seconds."""
        await asyncio.sleep(seconds)
        return seconds

    model = ScriptedModel([[call("wait", seconds=0.2), call("wait", seconds=0.0),
                            call("wait", seconds=0.1)], "ok"])
    result = shoal.Agent(name="lead", model=model, tools=[wait]).run_sync("go")
    contents = [m.content for m in tool_results(result)]
    assert contents == ["0.2", "0.0", "0.1"]
    ids = [m.call_id for m in tool_results(result)]
    assert ids == [c.id for c in model.requests[1].messages[1].tool_calls]  # type: ignore[union-attr]


def test_malformed_calls_go_back_to_the_model_as_errors() -> None:
    model = ScriptedModel([
        [call("add", raw_arguments="{not json"), call("nope", x=1), call("add", a="x", b=2),
         call("add", raw_arguments="[1, 2]"), call("add", a=1, b=2), call("explode", reason="r")],
        "recovered",
    ])
    result = shoal.Agent(name="lead", model=model, tools=[add, explode]).run_sync("go")
    assert result.output == "recovered"
    msgs = tool_results(result)
    assert [m.is_error for m in msgs] == [True, True, True, True, False, True]
    assert "not valid JSON" in msgs[0].content
    assert "no tool named 'nope'" in msgs[1].content and "add, explode" in msgs[1].content
    assert "'a'" in msgs[2].content
    assert "JSON object" in msgs[3].content
    assert msgs[4].content == "3"
    assert "RuntimeError: boom: r" in msgs[5].content
    assert [c.status for c in result.calls] == [
        "rejected", "rejected", "rejected", "rejected", "ok", "failed"]
    model.check()


def test_resource_conflicts_inside_a_turn_are_respected() -> None:
    log: list[str] = []

    @shoal.tool(writes="file:{path}")
    async def write(path: str, text: str) -> int:
        """Write text to a path."""
        log.append(f"start {text}")
        await asyncio.sleep(0.05)
        log.append(f"end {text}")
        return len(text)

    model = ScriptedModel([[call("write", path="a", text="1"), call("write", path="a", text="2"),
                            call("write", path="b", text="3")], "ok"])
    shoal.Agent(name="lead", model=model, tools=[write]).run_sync("go")
    assert log.index("end 1") < log.index("start 2")  # same file: in the order asked
    assert log.index("start 3") < log.index("end 1")  # another file: alongside


# -- subagents -------------------------------------------------------------------------------


def researcher_model() -> ScriptedModel:
    tasks = [f"topic {i}" for i in range(4)]
    return ScriptedModel.per_prompt({
        task: [[call("slow_lookup", key=f"{task}/a"), call("slow_lookup", key=f"{task}/b")],
               f"summary of {task}"]
        for task in tasks
    }, name="researcher-model")


def test_four_subagents_in_one_turn_run_in_parallel_in_fresh_contexts() -> None:
    sub_model = researcher_model()
    researcher = shoal.Agent(name="researcher", model=sub_model, tools=[slow_lookup],
                             instructions="Research one topic.")
    lead_model = ScriptedModel([
        [call("researcher", task=f"topic {i}") for i in range(4)],
        "final report",
    ])
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[researcher])
    events: list[Event] = []
    result, took = arun(elapsed(lead.run("write a report", on_event=events.append)),
                        virtual=True)
    assert result.output == "final report"
    # on the virtual clock: 4 subagents x 2 parallel 300 ms calls, all side by side: 0.3 s
    assert took == pytest.approx(0.3, abs=1e-9), f"4 subagents x 2 x 300 ms took {took} s"
    assert [m.content for m in tool_results(result)] == [
        f"summary of topic {i}" for i in range(4)]
    # no subagent saw another's messages: each request holds only its own task and results
    for request in sub_model.requests:
        own = next(m.content for m in request.messages if isinstance(m, UserMessage))
        text = repr(request.messages)
        assert all(f"topic {i}" not in text for i in range(4) if f"topic {i}" != own)
    assert [c.agent for c in result.children] == ["researcher"] * 4
    assert [c.lineage for c in result.children] == [f"lead/researcher#{i}" for i in range(1, 5)]
    lineages = {e.lineage for e in events if isinstance(e, NodeStarted)}
    assert "lead/researcher#2/slow_lookup#1" in lineages
    assert "lead/researcher#2" in lineages
    assert result.usage.requests == 2 + 4 * 2
    sub_model.check()
    lead_model.check()


def test_a_subagent_budget_of_three_runs_exactly_three_of_ten() -> None:
    sub_model = ScriptedModel.per_prompt({"*": ["done"]})
    worker = shoal.Agent(name="worker", model=sub_model)
    lead_model = ScriptedModel([[call("worker", task=f"job {i}") for i in range(10)], "ok"])
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[worker],
                       budget=shoal.Budget(subagents=3))
    result = lead.run_sync("fan out")
    assert len(sub_model.requests) == 3
    statuses = [c.status for c in result.calls]
    assert statuses.count("ok") == 3 and statuses.count("rejected") == 7
    refused = [m.content for m in tool_results(result) if m.is_error]
    assert len(refused) == 7
    assert all("subagents limit is 3" in text for text in refused)


def test_depth_and_fan_out_limits_refuse_calls_with_the_limit_named() -> None:
    leaf = shoal.Agent(name="leaf", model=ScriptedModel.per_prompt({"*": ["leaf done"]}))
    middle = shoal.Agent(name="middle", subagents=[leaf],
                         model=ScriptedModel.per_prompt({"*": [[call("leaf", task="x")], "mid"]}))
    lead_model = ScriptedModel([[call("middle", task="m"), call("add", a=1, b=1),
                                 call("add", a=2, b=2)], "ok"])
    lead = shoal.Agent(name="lead", model=lead_model, tools=[add], subagents=[middle])
    result = lead.run_sync("go", budget=shoal.Budget(depth=1, fan_out=2))
    msgs = tool_results(result)
    assert msgs[0].content == "mid" and msgs[1].content == "2"
    assert "fan_out limit is 2" in msgs[2].content
    middle_result = result.children[0]
    assert "depth limit is 1" in tool_results(middle_result)[0].content


def test_the_same_agent_runs_twenty_times_concurrently() -> None:
    model = ScriptedModel(
        [lambda req: ([call("add", a=len(req.messages), b=int(_prompt(req).split()[-1]))]
                      if len(req.messages) == 1 else f"answer {req.messages[-1].content}")
         ] * 40)
    agent = shoal.Agent(name="adder", model=model, tools=[add])

    async def main() -> list[shoal.AgentResult[Any]]:
        async with shoal.Runtime() as runtime:
            return await asyncio.gather(*(agent.run(f"add {i}", runtime=runtime)
                                          for i in range(20)))

    results = arun(main())
    assert [r.output for r in results] == [f"answer {1 + i}" for i in range(20)]
    assert len({r.run_id for r in results}) == 20
    assert all(len(r.messages) == 4 for r in results)  # prompt, call, result, answer
    model.check()


def _prompt(request: shoal.ModelRequest) -> str:
    first = request.messages[0]
    assert isinstance(first, UserMessage)
    return first.content


# -- budgets that stop the tree, turns, structured output -----------------------------------


def test_a_token_budget_stops_the_tree_and_keeps_every_outcome() -> None:
    @shoal.tool
    async def hang(x: int) -> int:
        """Wait a long time."""
        await asyncio.sleep(30)
        return x

    big = shoal.ModelResponse(text="never", usage=shoal.Usage(2000, 0, 1))
    sub_model = ScriptedModel.per_prompt({
        "slow": [[call("hang", x=1)]],
        "greedy": [[call("add", a=1, b=2)], big],
    }, usage=shoal.Usage(10, 10, 1))
    sub = shoal.Agent(name="sub", model=sub_model, tools=[hang, add])
    lead_model = ScriptedModel([[call("sub", task="slow"), call("sub", task="greedy")], "never"],
                               usage=shoal.Usage(10, 10, 1))
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[sub])
    began = time.perf_counter()  # real time: 'add' is a sync tool, on a real thread
    with pytest.raises(BudgetExceeded) as caught:
        lead.run_sync("go", budget=shoal.Budget(tokens=1000))
    assert time.perf_counter() - began < 5
    error = caught.value
    assert error.limit == "tokens" and error.allowed == 1000
    result = error.result
    assert result is not None and result.status == "budget_exceeded"
    slow = next(c for c in result.children if c.prompt == "slow")
    assert slow.status == "budget_exceeded"
    assert [c.status for c in slow.calls] == ["cancelled"]
    assert "tokens" in (slow.calls[0].outcome.reason if slow.calls[0].outcome else "")


def test_a_requests_budget_and_max_turns_stop_with_the_limit_named() -> None:
    loop_model = ScriptedModel([[call("add", a=1, b=1)]] * 3)
    agent = shoal.Agent(name="lead", model=loop_model, tools=[add], max_turns=3)
    with pytest.raises(MaxTurnsExceeded) as caught:
        agent.run_sync("go")
    assert caught.value.result is not None and caught.value.result.turns == 3
    with pytest.raises(BudgetExceeded, match="requests limit is 2") as stopped:
        shoal.Agent(name="lead", model=ScriptedModel([[call("add", a=1, b=1)]] * 2),
                    tools=[add]).run_sync("go", budget=shoal.Budget(requests=2))
    assert stopped.value.limit == "requests"
    assert stopped.value.result is not None
    assert stopped.value.result.usage.requests == 2  # the same count, the same name


def test_the_old_turns_budget_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"Budget\(requests=\)"):
        budget = shoal.Budget(turns=2)
    assert budget.requests == 2
    with pytest.raises(BudgetExceeded, match="requests limit is 2"):
        shoal.Agent(name="lead", model=ScriptedModel([[call("add", a=1, b=1)]] * 2),
                    tools=[add]).run_sync("go", budget=budget)
    with (pytest.warns(DeprecationWarning, match=r"Budget\(requests=\)"),
          pytest.raises(ConfigError, match="disagree")):
        shoal.Budget(turns=2, requests=3)
    from shoal.agents.budget import BudgetTracker

    tracker = BudgetTracker(shoal.Budget(requests=3), lambda breach: None)
    with pytest.warns(DeprecationWarning, match="start_request"):
        tracker.start_turn("lead")
    with pytest.warns(DeprecationWarning, match="requests"):
        assert tracker.turns == tracker.requests == 1


def test_a_wall_clock_budget_times_out_calls_in_flight() -> None:
    model = ScriptedModel([[call("slow_lookup", key="x")] * 3, "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[slow_lookup])
    async def main() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(BudgetExceeded, match="wall_clock") as caught:
            await agent.run("go", budget=shoal.Budget(wall_clock=0.1))
        # the tree's deadline: they ran out of time, as at a run's (see test_found_s37.py)
        assert [c.status for c in caught.value.result.calls] == ["timed_out"] * 3
        return loop.time() - began

    # on the virtual clock the budget stops the run at exactly 0.1 s, not at the calls' 0.3 s
    assert arun(main(), virtual=True) == pytest.approx(0.1, abs=1e-9)


class Verdict(pydantic.BaseModel):
    """A structured answer."""

    winner: str
    score: float


def test_structured_output_is_validated_and_retried() -> None:
    model = ScriptedModel(['{"winner": "ray"}', '```json\n{"winner": "ray", "score": 0.9}\n```'])
    agent = shoal.Agent(name="judge", model=model, output_type=Verdict)
    result = agent.run_sync("who wins?")
    assert result.output == Verdict(winner="ray", score=0.9)
    retry = model.requests[1].messages[-1]
    assert isinstance(retry, UserMessage) and "score" in retry.content
    assert "JSON schema" in model.requests[0].instructions
    with pytest.raises(OutputValidationError, match="after 1 retries"):
        shoal.Agent(name="judge", model=ScriptedModel(["nope", "still no"]),
                    output_type=Verdict, output_retries=1).run_sync("who wins?")


# -- control and transparency ------------------------------------------------------------------


def test_cancelling_one_subagent_leaves_its_siblings_and_parent_running() -> None:
    @shoal.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return "rested"

    sub_model = ScriptedModel.per_prompt({
        "short": [[call("nap", seconds=0.1)], "short done"],
        "long": [[call("nap", seconds=30)], "never"],
    })
    sub = shoal.Agent(name="sub", model=sub_model, tools=[nap])
    lead_model = ScriptedModel([[call("sub", task="short"), call("sub", task="long")], "lead done"])
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[sub])

    async def main() -> shoal.AgentResult[Any]:
        handle = lead.start("go")
        await until(lambda: len(sub_model.requests) >= 2)  # both subagents asked for their naps
        await asyncio.sleep(0.05)
        handle.cancel("lead/sub#2", reason="not needed")
        return await handle

    result, took = arun(elapsed(main()), virtual=True)
    # on the virtual clock: the run ends when the short nap does (0.1 s): the cancelled 30 s
    # nap is not waited for
    assert took == pytest.approx(0.1, abs=1e-9), took
    assert result.output == "lead done"
    msgs = tool_results(result)
    assert msgs[0].content == "short done"
    assert msgs[1].is_error and "cancelled" in msgs[1].content
    assert result.children[1].status == "cancelled"


def test_a_subagent_cancelled_alone_ends_its_call_cancelled_with_the_reason() -> None:
    # The subagent's CancelledError reaches its parent's call from the subagent, not from a
    # cancel of the call: still a cancellation (not a tool's failure), saying why
    sub = shoal.Agent(name="sub", model=ScriptedModel([[call("slow_lookup", key="x")], "never"]),
                      tools=[slow_lookup])
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("sub", task="t")], "lead done"]),
                       subagents=[sub])

    async def main() -> shoal.AgentResult[Any]:
        handle = lead.start("go")
        await asyncio.sleep(0.1)  # the subagent's lookup is in flight
        handle.cancel("lead/sub#1", reason="not needed")
        return await handle

    result = arun(main(), virtual=True)
    assert result.output == "lead done"
    (record,) = result.calls
    assert record.outcome is not None and record.outcome.status == "cancelled"
    assert record.outcome.reason == "not needed"
    assert record.message.content == "sub was cancelled: not needed"


def test_cancelling_the_whole_tree_raises_with_the_result_so_far() -> None:
    model = ScriptedModel([[call("slow_lookup", key="x")], "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[slow_lookup])

    async def main() -> None:
        handle = agent.start("go")
        await asyncio.sleep(0.1)  # the lookup (300 ms) is in flight: the clock is virtual
        handle.cancel()
        await handle

    with pytest.raises(shoal.AgentError, match="cancelled") as caught:
        arun(main(), virtual=True)
    assert caught.value.result.calls[0].status == "cancelled"


@pytest.mark.parametrize(("lineage", "reason", "words"), [
    ("", "why", "takes an agent's lineage such as 'lead/researcher#2'"),  # not the whole tree
    (3, "why", "got 3"),
    (["lead/sub#1"], "why", "got ['lead/sub#1']"),
    ("lead/sub#1", 3, "reason must be text, got int"),
])
def test_a_cancel_that_names_no_agent_is_refused_and_stops_nothing(
        lineage: Any, reason: Any, words: str) -> None:
    model = ScriptedModel([[call("slow_lookup", key="x")], "lead done"])
    agent = shoal.Agent(name="lead", model=model, tools=[slow_lookup])

    async def main() -> shoal.AgentResult[Any]:
        handle = agent.start("go")
        await asyncio.sleep(0.1)  # the lookup is in flight
        with pytest.raises(TypeError, match=re.escape(words)):
            handle.cancel(lineage, reason=reason)
        return await handle

    result = arun(main(), virtual=True)
    assert result.output == "lead done" and result.calls[0].status == "ok"


def test_a_run_cancel_whose_reason_is_not_text_is_refused() -> None:
    plan = shoal.Plan()
    plan.call(slow_lookup, key="x")

    async def main() -> shoal.RunResult:
        handle = shoal.Runtime().start(plan)
        await asyncio.sleep(0.1)
        with pytest.raises(TypeError, match="reason must be text, got dict"):
            handle.cancel(reason={"not": "text"})  # type: ignore[arg-type]
        return await handle

    assert arun(main(), virtual=True).ok


def test_events_carry_lineage_for_agents_and_calls() -> None:
    sub = shoal.Agent(name="sub", model=ScriptedModel.per_prompt(
        {"*": [[call("add", a=1, b=2)], "3"]}), tools=[add])
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[call("sub", task="a"), call("bogus")], "done"]), subagents=[sub])
    events: list[Event] = []
    lead.run_sync("go", on_event=events.append)
    started = [e.lineage for e in events if isinstance(e, AgentStarted)]
    assert started == ["lead", "lead/sub#1"]
    finished = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    assert finished == {"lead": "ok", "lead/sub#1": "ok"}
    assert [e.lineage for e in events if isinstance(e, ToolCallRejected)] == ["lead/bogus?"]
    assert "lead/sub#1/add#1" in {e.lineage for e in events if isinstance(e, NodeStarted)}
    assert all(e.run_id == events[0].run_id for e in events if isinstance(e, AgentStarted))


# -- the scripted model fails loudly ----------------------------------------------------------


def test_scripted_model_fails_loudly() -> None:
    model = ScriptedModel(["one"])
    agent = shoal.Agent(name="lead", model=model, tools=[add])
    assert agent.run_sync("go").output == "one"
    with pytest.raises(ScriptError, match="has no step"):
        agent.run_sync("again")
    with pytest.raises(ScriptError, match="unexpected request"):
        model.check()
    unused = ScriptedModel(["a", "b"])
    shoal.Agent(name="lead", model=unused).run_sync("go")
    with pytest.raises(ScriptError, match="1 step\\(s\\) never used: step 2"):
        unused.check()
    with pytest.raises(ScriptError, match="never used"), ScriptedModel(["x"]):
        pass


def test_bad_agent_definitions_get_clear_errors() -> None:
    with pytest.raises(shoal.ConfigError, match="agent name"):
        shoal.Agent(name="has space")
    with pytest.raises(shoal.ConfigError, match="agent name"):  # '$' matched before a '\n'
        shoal.Agent(name="lead\n")

    class Exits:
        def __repr__(self) -> str:
            raise SystemExit(3)

    with pytest.raises(shoal.ConfigError, match="agent name"):  # quoted without its repr
        shoal.Agent(name=Exits())  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="unique"):
        shoal.Agent(name="lead", tools=[add], subagents=[shoal.Agent(name="add")])
    with pytest.raises(shoal.ConfigError, match="max_turns"):
        shoal.Agent(name="lead", max_turns=0)
    with pytest.raises(shoal.ConfigError, match="budget tokens"):
        shoal.Budget(tokens=0)


# -- approvals reach the runtime's approver with the call's lineage ---------------------------


def test_gated_calls_of_subagents_reach_the_approver_with_lineage_and_denials_go_back() -> None:
    sent: list[str] = []

    @shoal.tool(approval=lambda args: args["amount"] > 100)
    async def pay(to: str, amount: int) -> str:
        """Pay someone."""
        sent.append(f"{to}:{amount}")
        return f"paid {amount} to {to}"

    seen: list[shoal.ApprovalRequest] = []

    def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        seen.append(request)
        return shoal.Decision.deny("too much") if request.args["amount"] > 500 else \
            shoal.Decision.approve()

    sub = shoal.Agent(name="payer", tools=[pay], model=ScriptedModel.per_prompt({
        "*": [lambda req: [call("pay", to=_prompt(req), amount=int(_prompt(req)[1:]))], "ok"]}))
    lead = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("payer", task="a50"), call("payer", task="b200"), call("payer", task="c900")],
         "done"]))

    async def main() -> shoal.AgentResult[Any]:
        async with shoal.Runtime(approver=approver) as runtime:
            return await lead.run("pay everyone", runtime=runtime)

    result = arun(main())
    assert sorted(sent) == ["a50:50", "b200:200"]  # the small one needed no approval
    assert sorted(r.lineage for r in seen) == ["lead/payer#2/pay#1", "lead/payer#3/pay#1"]
    denied = result.children[2].calls[0]
    assert denied.status == "denied"
    assert denied.message.is_error and "too much" in denied.message.content


def test_a_cost_budget_counts_every_agent_of_the_tree() -> None:
    priced = shoal.Usage(input_tokens=10, output_tokens=10, requests=1, cost=0.004)
    sub = shoal.Agent(name="sub", model=ScriptedModel.per_prompt({"*": ["sub done"]},
                                                                  usage=priced))
    lead = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("sub", task="a"), call("sub", task="b")], "never"], usage=priced))
    with pytest.raises(BudgetExceeded, match=r"cost limit is 0\.01") as caught:
        lead.run_sync("go", budget=shoal.Budget(cost=0.01))
    assert caught.value.limit == "cost" and caught.value.used == pytest.approx(0.012)
    result = caught.value.result
    assert result.usage.cost == pytest.approx(0.012)
