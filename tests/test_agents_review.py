"""Adversarial review of the agent layer and the shared limits: hostile uses, races, edges.

Each test pins down one hostile use, race or edge case: thirteen of them found bugs (lost
wake-ups on shared gates, cancels landing between a model turn and its tools, a second
cancellation losing records, foreign errors leaving results "running", ...), fixed since.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

import shoal
from shoal.agents.context import TreeContext
from shoal.deps import analyze
from shoal.events import AgentFinished, Event, ModelResponded, NodeStarted
from shoal.exceptions import AgentError, BudgetExceeded, ScriptError
from shoal.limits import parse_rate
from shoal.models.base import ModelRequest, ModelResponse, Usage
from shoal.scheduler.gates import SharedLimits
from shoal.scheduler.state import SchedulerState
from shoal.testing import ScriptedModel, call
from tests.conftest import Gauge, arun

Ag = shoal.Agent[Any]
Res = shoal.AgentResult[Any]

# -- cancellation races ---------------------------------------------------------------------


def test_cancel_after_the_model_answered_stops_that_turns_tool_calls() -> None:
    ran: list[str] = []

    @shoal.tool
    async def delete_everything(target: str) -> str:
        """Dangerous."""
        ran.append(target)
        return "deleted"

    async def main() -> tuple[Exception | None, list[str]]:
        model = ScriptedModel([[call("delete_everything", target="prod")], "done"])
        holder: list[shoal.AgentHandle[Any]] = []

        def guard(event: Event) -> None:  # a person (or a policy) stops the tree on sight
            if isinstance(event, ModelResponded) and "delete_everything" in event.tool_calls:
                holder[0].cancel(reason="refused by the guard")

        # the calls must wait for the whole reply for a guard on it to stop them
        agent: Ag = shoal.Agent(name="lead", model=model, tools=[delete_everything],
                                stream_dispatch=False)
        holder.append(agent.start("clean up", on_event=guard))
        try:
            await holder[0]
        except AgentError as exc:
            return exc, ran
        return None, ran

    error, ran_targets = arun(main())
    assert isinstance(error, AgentError)
    assert ran_targets == []  # the tree was cancelled before the tool phase began


def test_cancelling_the_tree_twice_and_after_it_ended_is_harmless() -> None:
    @shoal.tool
    async def nap(seconds: float) -> float:
        """Sleep."""
        await asyncio.sleep(seconds)
        return seconds

    async def main() -> tuple[shoal.AgentResult[Any], shoal.AgentResult[Any]]:
        agent: Ag = shoal.Agent(name="lead", model=ScriptedModel([[call("nap", seconds=5)], "x"]),
                            tools=[nap])
        napping = asyncio.Event()

        def watch(event: Event) -> None:
            if isinstance(event, NodeStarted) and event.tool == "nap":
                napping.set()

        handle = agent.start("go", on_event=watch)
        await napping.wait()  # the call is running: cancel it, not the model request
        handle.cancel(reason="first")
        handle.cancel(reason="second")
        with pytest.raises(AgentError, match="first"):
            await handle
        handle.cancel(reason="after")  # ended: nothing to do
        quick: Ag = shoal.Agent(name="lead", model=ScriptedModel(["fine"]))
        h2 = quick.start("go")
        ok = await h2
        h2.cancel()
        h2.cancel("lead/nobody#1")
        return handle.result, ok

    cancelled, ok = arun(main())
    assert cancelled.status == "cancelled"
    assert [c.status for c in cancelled.calls] == ["cancelled"]
    assert ok.status == "ok"


def test_cancelling_a_subtree_while_its_model_request_runs() -> None:
    class Slow(ScriptedModel):
        async def request(self, request: ModelRequest) -> ModelResponse:
            if request.lineage.startswith("lead/researcher#1"):
                await asyncio.sleep(5)
            return await super().request(request)

    sub_model = Slow.per_prompt({"*": ["sub answer"]})
    sub: Ag = shoal.Agent(name="researcher", model=sub_model)
    lead: Ag = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("researcher", task="a"), call("researcher", task="b")], "report"]))

    async def main() -> shoal.AgentResult[Any]:
        handle = lead.start("go")
        await asyncio.sleep(0.05)
        handle.cancel("lead/researcher#1", reason="not needed")
        return await handle

    result = arun(main(), virtual=True)
    assert result.output == "report"
    assert [c.status for c in result.calls] == ["cancelled", "ok"]
    assert [c.status for c in result.children] == ["cancelled", "ok"]


# -- errors that are not shoal's -----------------------------------------------------------


def test_a_subagent_whose_model_raises_a_non_model_error_ends_failed() -> None:
    events: list[Event] = []
    # the subagent's script has no step: its model raises ScriptError
    sub: Ag = shoal.Agent(name="researcher", model=ScriptedModel([]))
    lead: Ag = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("researcher", task="a")], "report"]))
    result = lead.run_sync("go", on_event=events.append)
    assert result.output == "report"
    assert result.calls[0].status == "failed"
    assert "ScriptError" in result.calls[0].message.content
    child = result.children[0]
    assert child.status == "failed"  # not "running", though it ended long ago
    assert isinstance(child.error, ScriptError)
    assert [e.lineage for e in events if isinstance(e, AgentFinished)] == [
        "lead/researcher#1", "lead"]


def test_the_roots_result_is_not_running_after_a_foreign_error() -> None:
    class Broken(ScriptedModel):
        async def request(self, request: ModelRequest) -> ModelResponse:
            raise KeyError("bug in a user's model adapter")

    async def main() -> shoal.AgentHandle[Any]:
        handle: shoal.AgentHandle[Any] = shoal.Agent(name="lead", model=Broken()).start("go")
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever it is, it ends the run
            await handle
        return handle

    handle = arun(main())
    assert handle.done()
    assert handle.result.status != "running"


def test_a_failing_event_sink_does_not_break_the_agent() -> None:
    def sink(event: Event) -> None:
        raise RuntimeError("observer bug")

    result: Res = shoal.Agent(name="lead", model=ScriptedModel(["fine"])).run_sync(
        "go", on_event=sink)
    assert result.output == "fine"


def test_a_tool_raising_a_base_exception_is_a_failed_call() -> None:
    class Halt(BaseException):
        pass

    @shoal.tool
    async def halt() -> str:
        """Raises a BaseException subclass."""
        raise Halt("stop")

    @shoal.tool
    def sys_exit() -> str:
        """Calls sys.exit in a thread."""
        raise SystemExit(3)

    model = ScriptedModel([[call("halt"), call("sys_exit")], "survived"])
    agent: Ag = shoal.Agent(name="lead", model=model, tools=[halt, sys_exit])
    result = agent.run_sync("go")
    assert result.output == "survived"
    assert [c.status for c in result.calls] == ["failed", "failed"]


# -- malformed tool calls -------------------------------------------------------------------


def test_deeply_nested_arguments_go_back_to_the_model_as_an_error() -> None:
    @shoal.tool
    def echo(value: Any) -> str:
        """Echo."""
        return "ok"

    deep = '{"value": ' + "[" * 100_000 + "]" * 100_000 + "}"
    model = ScriptedModel([[call("echo", raw_arguments=deep), call("echo", value=1)], "done"])
    result: Res = shoal.Agent(name="lead", model=model, tools=[echo]).run_sync("go")
    assert result.output == "done"
    assert [c.status for c in result.calls] == ["rejected", "ok"]


def test_malformed_arguments_of_every_kind_are_rejected_one_by_one() -> None:
    @shoal.tool
    def put(key: str, value: dict[str, list[int]]) -> str:
        """Store."""
        return f"{key}={sorted(value)}"

    big = {f"k{i}": list(range(50)) for i in range(2000)}
    model = ScriptedModel([[
        call("put", raw_arguments="null"),
        call("put", raw_arguments="[1, 2]"),
        call("put", raw_arguments='"text"'),
        call("put", raw_arguments="{not json"),
        call("put", raw_arguments=""),  # empty: {} -> missing arguments
        call("put", key="a", value={"x": ["not int"]}),
        call("put", key="b", value=big),
        call("nope", raw_arguments="{}"),
    ], "done"])
    result: Res = shoal.Agent(name="lead", model=model, tools=[put]).run_sync("go")
    assert [c.status for c in result.calls] == ["rejected"] * 6 + ["ok", "rejected"]
    assert all(c.message.is_error for c in result.calls if c.status == "rejected")


# -- budgets --------------------------------------------------------------------------------


def test_fan_out_counts_only_calls_that_start() -> None:
    model = ScriptedModel([[call("add", raw_arguments="{oops"), call("add", a=1, b=2),
                            call("add", a=3, b=4)], "done"])

    @shoal.tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    result: Res = shoal.Agent(name="lead", model=model, tools=[add]).run_sync(
        "go", budget=shoal.Budget(fan_out=2))
    assert [c.status for c in result.calls] == ["rejected", "ok", "ok"]


def test_a_token_breach_in_one_subagent_stops_siblings_mid_request() -> None:
    class Mixed(ScriptedModel):
        async def request(self, request: ModelRequest) -> ModelResponse:
            if request.messages[0].content == "slow":
                await asyncio.sleep(5)
                return ModelResponse("late")
            return ModelResponse("greedy", usage=Usage(10_000, 10, 1))

    sub: Ag = shoal.Agent(name="worker", model=Mixed())
    lead: Ag = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("worker", task="slow"), call("worker", task="greedy")], "never"]))

    async def main() -> BudgetExceeded:
        with pytest.raises(BudgetExceeded) as info:
            await lead.run("go", budget=shoal.Budget(tokens=5_000))
        return info.value

    breach = arun(main())
    assert breach.limit == "tokens"
    result = breach.result
    assert result is not None
    assert result.status == "budget_exceeded"
    assert sorted(c.status for c in result.children) == ["budget_exceeded"] * 2


def test_wall_clock_does_not_fire_after_the_run_ended() -> None:
    async def main() -> shoal.AgentResult[Any]:
        agent: Ag = shoal.Agent(name="lead", model=ScriptedModel(["quick"]))
        result = await agent.run("go", budget=shoal.Budget(wall_clock=0.05))
        await asyncio.sleep(0.1)  # the timer would have fired by now
        return result

    result = arun(main(), virtual=True)
    assert result.status == "ok"


def test_wall_clock_during_a_subagents_tool_phase_stops_everything() -> None:
    @shoal.tool
    async def nap() -> str:
        """Sleep long."""
        await asyncio.sleep(5)
        return "rested"

    sub: Ag = shoal.Agent(name="worker", tools=[nap],
                      model=ScriptedModel.per_prompt({"*": [[call("nap")], "x"]}))
    lead: Ag = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("worker", task="a"), call("worker", task="b")], "never"]))

    async def main() -> BudgetExceeded:
        with pytest.raises(BudgetExceeded) as info:
            await lead.run("go", budget=shoal.Budget(wall_clock=0.2))
        return info.value

    breach = arun(main(), virtual=True)
    assert breach.limit == "wall_clock"
    assert breach.result is not None
    for child in breach.result.children:
        assert child.status == "budget_exceeded"
        assert [c.status for c in child.calls] == ["timed_out"]  # out of the tree's time


# -- ScriptedModel misuse -------------------------------------------------------------------


def test_scripted_model_rejects_list_items_that_are_not_calls() -> None:
    bad: Any = [{"name": "add", "arguments": "{}"}]
    with pytest.raises(TypeError, match="step 1 must be"):  # refused when the script is made
        ScriptedModel([bad])
    model = ScriptedModel([lambda request: bad])  # played by a function: when its turn comes
    with pytest.raises(ScriptError):
        shoal.Agent(name="lead", model=model).run_sync("go")


# -- one agent in two places at once ---------------------------------------------------------


def test_one_agent_is_a_subagent_of_two_parents_running_at_once() -> None:
    shared: Ag = shoal.Agent(name="helper", model=ScriptedModel.per_prompt({
        "*": [lambda req: f"helped with {req.messages[0].content}"]}))

    def parent(name: str) -> shoal.Agent[Any]:
        return shoal.Agent(name=name, subagents=[shared], model=ScriptedModel(
            [[call("helper", task=f"{name}-{i}") for i in range(3)], f"{name} done"]))

    async def main() -> list[shoal.AgentResult[Any]]:
        async with shoal.Runtime() as runtime:
            return list(await asyncio.gather(parent("p1").run("go", runtime=runtime),
                                             parent("p2").run("go", runtime=runtime)))

    r1, r2 = arun(main())
    assert [c.message.content for c in r1.calls] == [f"helped with p1-{i}" for i in range(3)]
    assert [c.message.content for c in r2.calls] == [f"helped with p2-{i}" for i in range(3)]
    assert [c.lineage for c in r1.children] == [f"p1/helper#{i}" for i in (1, 2, 3)]


# -- event lineage --------------------------------------------------------------------------


def test_every_tool_event_carries_the_lineage_of_its_call() -> None:
    @shoal.tool
    def look(q: str) -> str:
        """Look."""
        return q

    sub: Ag = shoal.Agent(name="r", tools=[look], model=ScriptedModel.per_prompt({
        "*": [lambda req: [call("look", q="x"), call("look", q="y")], "sub done"]}))
    lead: Ag = shoal.Agent(name="lead", subagents=[sub], tools=[look], model=ScriptedModel(
        [[call("r", task="t1"), call("look", q="z"), call("r", task="t2")], "done"]))
    events: list[Event] = []
    lead.run_sync("go", on_event=events.append)
    started = sorted(e.lineage for e in events if isinstance(e, NodeStarted))
    assert started == ["lead/look#1", "lead/r#1", "lead/r#1/look#1", "lead/r#1/look#2",
                       "lead/r#2", "lead/r#2/look#1", "lead/r#2/look#2"]


# -- shared limits across runs ---------------------------------------------------------------


def test_cancelling_a_run_parked_on_a_shared_gate_strands_no_one() -> None:
    gauge = Gauge()

    @shoal.tool(max_concurrency=1)
    async def exclusive(i: int) -> int:
        """One at a time across the runtime."""
        with gauge:
            await asyncio.sleep(0.02)
        return i

    def plan(n: int) -> shoal.Plan:
        p = shoal.Plan()
        for i in range(n):
            p.call(exclusive, i=i)
        return p

    async def main() -> tuple[shoal.RunResult, shoal.RunResult, shoal.RunResult]:
        async with shoal.Runtime() as runtime:
            a = runtime.start(plan(3))
            b = runtime.start(plan(5))
            c = runtime.start(plan(3))
            await asyncio.sleep(0.01)
            b.cancel(reason="not needed")
            ra, rb, rc = await a, await b, await c
            # the gate is whole again: a fresh run gets it at once
            fresh = await runtime.run(plan(1))
            assert fresh.ok
            return ra, rb, rc

    ra, rb, rc = arun(main(), virtual=True)
    assert ra.ok and rc.ok
    assert "cancelled" in rb.counts and rb.counts["cancelled"] >= 4
    assert gauge.peak == 1


def test_a_run_that_holds_a_shared_gate_and_is_task_cancelled_frees_it() -> None:
    @shoal.tool(max_concurrency=1)
    async def hold(seconds: float) -> float:
        """Hold the one slot."""
        await asyncio.sleep(seconds)
        return seconds

    def plan(seconds: float) -> shoal.Plan:
        p = shoal.Plan()
        p.call(hold, seconds=seconds)
        return p

    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            holder = asyncio.ensure_future(runtime.run(plan(5)))
            await asyncio.sleep(0.02)
            waiter = runtime.start(plan(0.0))
            await asyncio.sleep(0.02)
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            return await waiter

    assert arun(main(), virtual=True).ok


def _rate_plan(n: int) -> shoal.Plan:
    @shoal.tool(rate="1/10s")
    async def slow_api(i: int) -> int:
        """Rate limited."""
        return i

    p = shoal.Plan()
    for i in range(n):
        p.call(slow_api, i=i)
    return p


def test_a_shared_rate_limiter_sees_one_time_line_across_clock_origins() -> None:
    shared = SharedLimits()
    plan_a, plan_b = _rate_plan(1), _rate_plan(1)

    def state(plan: shoal.Plan, origin: float) -> SchedulerState:
        s = SchedulerState(analyze(plan), run_id=f"r{origin}", max_concurrency=None,
                           shared_limits=shared, rng=random.Random(0))
        s.clock_origin = origin
        return s

    a = state(plan_a, 100.0)
    b = state(plan_b, 105.0)  # started 5 s later on the shared clock
    assert len(a.begin(0.0).starts) == 1  # the one token, at shared time 100
    d = b.begin(0.0)  # shared time 105: half a token back
    assert d.starts == []
    assert [kind for _, kind, _ in d.timers] == ["rate"]
    assert d.timers[0][0] == pytest.approx(5.0)
    assert b.wake(5.0).starts  # shared time 110: a full token
    assert parse_rate("1/10s").count == 1


def test_shared_gate_wakeups_across_two_states_without_a_driver() -> None:
    @shoal.tool(max_concurrency=1)
    async def one(i: int) -> int:
        """One."""
        return i

    def plan() -> shoal.Plan:
        p = shoal.Plan()
        p.call(one, i=0)
        return p

    shared = SharedLimits()
    a = SchedulerState(analyze(plan()), run_id="a", max_concurrency=None, shared_limits=shared)
    b = SchedulerState(analyze(plan()), run_id="b", max_concurrency=None, shared_limits=shared)
    da = a.begin(0.0)
    assert len(da.starts) == 1
    db = b.begin(0.0)
    assert db.starts == [] and len(db.parked) == 1
    gate = db.parked[0]
    from shoal.scheduler.state import AttemptResult

    done = a.finish(0, AttemptResult("ok", 0), 1.0)
    assert done.freed == [gate]
    assert len(b.wake_gate(gate, 1.0).starts) == 1


def test_tree_context_cancel_of_an_unknown_lineage_is_inert() -> None:
    async def main() -> None:
        async with shoal.Runtime() as runtime:
            ctx = TreeContext(run_id="x", runtime=runtime, budget=None, sinks=())
            ctx.cancel("ghost", "why")
            ctx.check("lead")  # not within "ghost"
            with pytest.raises(asyncio.CancelledError):
                ctx.check("ghost/child#1")
            assert ctx.cancelled_reason("ghosts") is None

    arun(main())


def test_cancelling_a_woken_node_passes_its_gate_wakeup_on() -> None:
    from shoal.scheduler.state import AttemptResult, Phase

    @shoal.tool(max_concurrency=1)
    async def gated(i: int) -> int:
        """One at a time across the runtime."""
        return i

    @shoal.tool
    async def other(i: int) -> int:
        """Not gated."""
        return i

    shared = SharedLimits()
    pb = shoal.Plan()
    pb.call(gated, i=0, node_id="x")
    b = SchedulerState(analyze(pb), run_id="b", max_concurrency=None, shared_limits=shared)
    pa = shoal.Plan()
    pa.call(gated, i=1, node_id="a1")
    pa.call(gated, i=2, node_id="a2")
    pa.call(other, i=3, node_id="s")
    a = SchedulerState(analyze(pa), run_id="a", max_concurrency=1, shared_limits=shared)

    assert [c.node_id for c in b.begin(0.0).starts] == ["x"]
    da = a.begin(0.0)
    assert [c.node_id for c in da.starts] == ["s"]  # a1 and a2 parked on the tool's gate
    gate = da.parked[0]
    freed = b.finish(0, AttemptResult("ok", 0), 1.0).freed
    assert freed == [gate]
    assert a.wake_gate(gate, 1.0).starts == []  # a1 woken, but "s" holds a's only slot
    a.cancel(["a1"], "not needed", 1.5)
    a.finish(2, AttemptResult("ok", 3), 2.0)  # "s" ends: a's slot is free again
    a2 = a.slots[1]
    assert a2.phase is Phase.RUNNING  # the gate is free and nobody else wants it


def test_a_second_cancellation_does_not_lose_the_calls_records() -> None:
    from shoal.agents.toolcalls import CallRecord, execute_calls
    from shoal.models.base import ToolCall

    @shoal.tool
    async def nap(seconds: float) -> float:
        """Sleep, ignoring the first cancel for a moment (cleanup takes time)."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            raise
        return seconds

    got: list[CallRecord] = []

    async def main() -> None:
        async with shoal.Runtime() as runtime:
            calls = [ToolCall("c1", "nap", '{"seconds": 5}'), ToolCall("c2", "nap", "{bad")]
            task = asyncio.ensure_future(execute_calls(calls, [nap], runtime=runtime,
                                                       on_records=got.extend))
            await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    arun(main(), virtual=True)
    assert sorted(r.status for r in got) == ["cancelled", "rejected"]


def test_an_unsupported_output_type_is_a_config_error_at_definition() -> None:
    class Opaque:
        def __init__(self, handle: object) -> None:
            self.handle = handle

    with pytest.raises(shoal.ConfigError):
        shoal.Agent(name="lead", model=ScriptedModel(["{}"]), output_type=Opaque)


def test_structured_output_edges() -> None:
    import pydantic

    class Answer(pydantic.BaseModel):
        score: int
        tags: list[str]

    model = ScriptedModel([
        "Sure! here it is: {\"score\": 1, \"tags\": []}",  # prose: retried
        "```json\n{\"score\": \"x\", \"tags\": []}\n```",  # wrong type: retried
        "```json\n{\"score\": 3, \"tags\": [\"a\"]}\n```",
    ])
    result = shoal.Agent(name="lead", model=model, output_type=Answer,
                         output_retries=2).run_sync("go")
    assert result.output == Answer(score=3, tags=["a"])
    assert result.turns == 3


def test_cancelling_one_call_of_a_run_parked_on_a_shared_gate_does_not_hang_it() -> None:
    @shoal.tool(max_concurrency=1)
    async def gated(i: int) -> int:
        """One at a time across the runtime."""
        await asyncio.sleep(0.05)
        return i

    @shoal.tool
    async def other(i: int) -> int:
        """Not gated, slow."""
        await asyncio.sleep(0.3)
        return i

    async def main() -> shoal.RunResult:
        async with shoal.Runtime(max_concurrency=1) as runtime:
            pb = shoal.Plan()
            pb.call(gated, i=0, node_id="x")
            b = runtime.start(pb)
            pa = shoal.Plan()
            pa.call(gated, i=1, node_id="a1")
            pa.call(gated, i=2, node_id="a2")
            pa.call(other, i=3, node_id="s")
            a = runtime.start(pa)
            await b  # x ended: a1 was woken but waits behind "s" for a's only slot
            await asyncio.sleep(0.05)
            a.cancel("a1", reason="not needed")
            return await a

    result = arun(main(), timeout=1.2, virtual=True)
    assert result["a2"].status == "ok"


def test_a_cancel_after_every_outcome_is_recorded_does_not_mark_the_run_cancelled() -> None:
    from shoal.events import NodeFinished

    @shoal.tool
    async def quick() -> int:
        """Quick."""
        return 1

    async def main() -> tuple[shoal.RunResult, str]:
        holder: list[Any] = []

        def late_cancel(event: Event) -> None:
            if isinstance(event, NodeFinished):  # the last outcome
                holder[0].cancel(reason="too late")

        async with shoal.Runtime(on_event=late_cancel) as runtime:
            plan = shoal.Plan()
            plan.call(quick)
            holder.append(runtime.start(plan, run_id="late-cancel"))
            result = await holder[0]
            assert runtime.store is not None
            record = runtime.store.get_run("late-cancel")
            assert record is not None
            return result, record.status

    result, status = arun(main())
    assert result.ok
    assert result.cancelled_reason == ""
    assert status == "finished"


def test_runtime_level_sinks_see_the_lineage_of_agent_calls() -> None:
    @shoal.tool
    def look(q: str) -> str:
        """Look."""
        return q

    events: list[Event] = []

    async def main() -> None:
        async with shoal.Runtime(on_event=events.append) as runtime:
            agent: Ag = shoal.Agent(name="lead", tools=[look],
                                model=ScriptedModel([[call("look", q="x")], "done"]))
            await agent.run("go", runtime=runtime)

    arun(main())
    started = [e for e in events if isinstance(e, NodeStarted)]
    # a model turn's node is named after the turn and its request's digest (model-1:<digest>)
    assert [e.lineage.split(":")[0] for e in started] == ["lead/model-1", "lead/look#1",
                                                         "lead/model-2"]
