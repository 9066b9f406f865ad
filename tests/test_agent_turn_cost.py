"""What an agent turn saves must not change what it does.

A swarm's turns share work that once was redone per run or per turn: the fixed parts of an
agent's request digest are made once per definition, a request's private copy is built
directly, and a finished agent leaves nothing in its tree's books. Each shortcut is checked
against the long way here: the same digests (so journals written before still resume), the
same copies, no leftovers.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import pickle
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.context import TreeContext
from shoal.agents.run import ConversationDigest
from shoal.agents.toolcalls import CallRecord, CallStream
from shoal.models.base import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
)
from shoal.models.retry import ModelGate
from shoal.testing import ScriptedModel, call, run_virtual

REQUEST = ModelRequest("", [UserMessage("go")])


@shoal.tool
def lookup(key: str, limit: int = 3) -> str:
    """Look a key up."""
    return key * limit


class Answer(pydantic.BaseModel):
    """A structured answer."""

    title: str
    score: int


def _agents() -> list[shoal.Agent[Any]]:
    model = ScriptedModel(["x"])
    return [
        shoal.Agent(name="plain", model=model),
        shoal.Agent(name="tooled", model=model, tools=[lookup], instructions="Be brief.",
                    settings=ModelSettings(temperature=0.2, extra={"seed": [1, 2]})),
        shoal.Agent(name="typed", model=model, tools=[lookup], output_type=Answer),
    ]


def _request(agent: shoal.Agent[Any], lineage: str, **changes: Any) -> ModelRequest:
    spec = agent.output_spec
    fields: dict[str, Any] = {
        "instructions": agent.full_instructions, "tools": agent.tool_specs,
        "settings": agent.settings, "output_schema": spec.schema if spec else None,
        "lineage": lineage,
        "messages": (UserMessage("go"), AssistantMessage("", (ToolCall("1", "lookup", "{}"),)))}
    fields.update(changes)
    return ModelRequest(**fields)


@pytest.mark.parametrize("agent", _agents(), ids=lambda a: a.name)
def test_an_agents_request_digest_is_the_one_computed_from_the_request_alone(
        agent: shoal.Agent[Any]) -> None:
    # quotes, escapes, non-ASCII and a lone surrogate: the lineage's JSON is made by hand
    for lineage in ("lead", "lead/worker#7", 'lead/"w\\ö"#2', "lead/\u2028\ud800\n"):
        request = _request(agent, lineage)
        assert ConversationDigest(agent).of(request) == ConversationDigest().of(request)


def test_a_request_that_is_not_the_agents_own_is_digested_from_itself() -> None:
    agent = _agents()[1]
    other = _request(agent, "lead", instructions="Something else.",
                     tools=(ToolSpec("other", "", {"type": "object"}),))
    digest = ConversationDigest(agent).of(other)
    assert digest == ConversationDigest().of(other)
    assert digest != ConversationDigest().of(_request(agent, "lead"))


@dataclass(frozen=True, slots=True)
class _Tagged(ModelRequest):
    tag: str = ""


def test_a_requests_copy_is_private_where_it_can_change_and_shared_where_it_cannot() -> None:
    agent = _agents()[2]
    request = _request(agent, "lead")
    copied = copy.deepcopy(request)
    assert copied == request and type(copied) is ModelRequest
    assert copied.messages is request.messages  # immutable: shared, never copied
    assert copied.tools[0].parameters == request.tools[0].parameters
    assert copied.tools[0].parameters is not request.tools[0].parameters
    assert copied.output_schema == request.output_schema
    assert copied.output_schema is not request.output_schema
    tagged = _Tagged(instructions="i", messages=(), tools=agent.tool_specs, tag="t")
    again = copy.deepcopy(tagged)
    assert type(again) is _Tagged and again.tag == "t" and again == tagged
    assert again.tools[0].parameters is not tagged.tools[0].parameters


def test_a_finished_swarm_leaves_no_step_in_its_trees_books() -> None:
    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt(
        {"*": [[call("lookup", key="k")], "done"]}), tools=[lookup])
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[call("worker", task=f"t{i}") for i in range(30)], "all done"]), subagents=[worker])

    async def main() -> dict[str, Any]:
        handle = lead.start("go")
        result = await handle
        assert result.ok and len(result.children) == 30
        return handle._ctx._handles

    assert asyncio.run(main()) == {}


def test_a_model_error_of_any_turn_reaches_the_agent_whole() -> None:
    # the model turn's node is bound once per run; each turn's error is still its own
    class Flaky(shoal.Model):
        name = "flaky"

        def __init__(self) -> None:
            self.turn = 0

        async def request(self, request: ModelRequest) -> Any:
            self.turn += 1
            if self.turn == 2:
                raise shoal.ModelError("flaky", f"turn {self.turn} broke")
            return await ScriptedModel([[call("lookup", key="a")]]).request(request)

    agent = shoal.Agent(name="a", model=Flaky(), tools=[lookup])
    with pytest.raises(shoal.ModelError, match="turn 2 broke"):
        agent.run_sync("go")


def test_an_agents_steps_are_one_journaled_run_and_each_call_knows_its_turn() -> None:
    model = ScriptedModel([[call("lookup", key="a"), call("lookup", key="b")],
                           [call("lookup", key="c")], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])
    runtime = shoal.Runtime()
    result = agent.run_sync("go", runtime=runtime, run_id="r1")
    assert [(c.lineage, c.turn) for c in result.calls] == [
        ("lead/lookup#1", 1), ("lead/lookup#2", 1), ("lead/lookup#3", 2)]
    store = runtime.store
    assert store is not None
    # one run for every model turn and call of the agent, not one per step
    assert [r.run_id for r in store.list_runs()] == ["r1/lead/steps"]
    nodes = [node_id.split(":")[0] for node_id in store.outcomes("r1/lead/steps")]
    assert nodes == ["model-1", "lookup#1", "lookup#2", "model-2", "lookup#3", "model-3"]


def test_a_gate_paused_once_still_holds_every_reply_until_it_opens() -> None:
    # a gate with no cap that was never paused lets a reply through without waiting (its
    # wait is not even begun); one paused once must hold streamed and plain replies alike
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        gate = ModelGate("m")
        model = ScriptedModel(["a", "b", "c", "d"], latency=0.1)
        arrived: list[float] = []
        start = loop.time()
        await gate.stream_to(model, REQUEST, lambda event: None)
        arrived.append(loop.time() - start)
        gate.pause(0.5)
        start = loop.time()
        await gate.stream_to(model, REQUEST, lambda event: None)
        arrived.append(loop.time() - start)
        gate.pause(0.5)
        start = loop.time()
        _ = [event async for event in gate.stream(model, REQUEST)]
        arrived.append(loop.time() - start)
        gate.pause(0.5)
        start = loop.time()
        await gate.request(model, REQUEST)
        arrived.append(loop.time() - start)
        return arrived

    assert run_virtual(main()) == pytest.approx([0.1, 0.6, 0.6, 0.6])


def test_a_streams_calls_stand_as_started_and_a_reply_of_the_same_calls_is_kept_whole() -> None:
    a, b, c = call("a", x=1), call("b"), call("c")
    stream = CallStream({}, open_run=_no_run)  # unknown tools: rejected, never run
    stream.add(0, a)
    stream.add(1, b)
    reply = (a, b)
    assert stream.merged(reply) is reply  # every call started as the reply has it
    assert stream.merged((a, c)) == (a, b)  # a retried stream's other call: the first stands
    assert stream.merged((a, b, c)) == (a, b, c)


def _no_run(on_event: object) -> Any:
    raise AssertionError("a rejected call opens no run")



def test_a_gate_whose_slots_are_elsewhere_is_entered_and_left_for_every_request() -> None:
    # a process agent's gate takes its slots from its tree's root: skipping an open gate's
    # wait must not skip its enter while its release still tells the root a slot came back
    class Counted(ModelGate):
        entered = left = 0

        async def acquire(self) -> None:
            Counted.entered += 1

        def release(self) -> None:
            Counted.left += 1

    async def main() -> None:
        gate = Counted("m")
        model = ScriptedModel(["a", "b", "c"])
        await gate.stream_to(model, REQUEST, lambda event: None)
        _ = [event async for event in gate.stream(model, REQUEST)]
        await gate.request(model, REQUEST)

    run_virtual(main())
    assert (Counted.entered, Counted.left) == (3, 3)


@shoal.tool
async def quick_fetch(key: str) -> str:
    """Fetch a key at once."""
    return key


class _FutureCounting(asyncio.SelectorEventLoop):
    """An event loop that counts the futures made on it."""

    made = 0

    def create_future(self) -> asyncio.Future[Any]:
        self.made += 1
        return super().create_future()


def _futures_per_run(calls: int) -> int:
    model = ScriptedModel.per_prompt(
        {"*": [*([call("quick_fetch", key=f"k{c}") for c in range(calls)] for _ in range(3)),
               "done"]})
    agent = shoal.Agent(name="worker", model=model, tools=[quick_fetch])
    loop = _FutureCounting()
    try:
        loop.run_until_complete(agent.run("go"))  # first-use work out of the count
        loop.made = 0
        result = loop.run_until_complete(agent.run("go"))
    finally:
        loop.close()
    assert result.ok and len(result.calls) == 3 * calls
    assert [c.message.content for c in result.calls[:calls]] == [f"k{c}" for c in range(calls)]
    return loop.made


def test_a_tool_phase_reads_the_outcomes_its_calls_have_without_a_future_each() -> None:
    # calls that end at once have their outcomes when the phase is waited for: one future
    # per call (made and set at once) was six per subagent of a swarm
    made = [_futures_per_run(n) for n in (1, 2, 4)]
    assert made[0] == made[1] == made[2], made


def test_an_agents_turns_share_one_tool_phase_restarted_per_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a phase made per turn was seven objects each (itself, its containers, the bound
    # methods it holds); restarted, each turn still names, counts and records its own calls
    made: list[CallStream] = []
    original = CallStream.__init__

    def counted(self: CallStream, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(CallStream, "__init__", counted)
    for streams in (True, False):
        made.clear()
        model = ScriptedModel([[call("lookup", key="a"), call("lookup", key="b")],
                               [call("lookup", key="c")], "done"])
        model.streams_tool_calls = streams
        agent = shoal.Agent(name="lead", model=model, tools=[lookup])
        result = asyncio.run(agent.run("go"))
        assert result.ok and result.output == "done" and result.turns == 3
        assert len(made) == 1, streams
        assert [(c.lineage, c.turn, c.message.content) for c in result.calls] == [
            ("lead/lookup#1", 1, "aaa"), ("lead/lookup#2", 1, "bbb"), ("lead/lookup#3", 2, "ccc")]


class _HeldAnswer(shoal.Model):
    """Streams one answer without calls, once :attr:`go` is set; :attr:`asked` says it waits."""

    name = "held"
    streams_tool_calls = True

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streaming agent streams its replies")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.asked.set()
        await self.go.wait()
        yield ResponseDone(ModelResponse(text="done", usage=Usage(1, 1, 1)))


def test_a_streamed_reply_opens_its_tool_phase_with_its_first_call_only() -> None:
    # an answer turn (every agent's last) starts no call: its tree tracks the model turn
    # alone, not a tool phase made for calls that never come
    model = _HeldAnswer()
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])

    async def main() -> tuple[dict[str, int], shoal.AgentResult[Any]]:
        handle = agent.start("go")
        await model.asked.wait()
        books = {where: len(handle._ctx.in_flight(where)) for where in handle._ctx._handles}
        model.go.set()
        return books, await handle

    books, result = asyncio.run(main())
    assert books == {"lead": 1}
    assert result.ok and result.output == "done" and result.calls == []


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and hasattr(awaited, "cr_code"):
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names


def test_a_turn_waits_on_its_model_in_the_turn_loop_itself() -> None:
    # a coroutine per turn between the turn loop and the model turn's outcome was one more
    # object per waiting agent of a swarm, and one more frame each wake-up went through
    model = _HeldAnswer()
    agent = shoal.Agent(name="lead", model=model, tools=[lookup])

    async def main() -> tuple[list[list[str]], shoal.AgentResult[Any]]:
        handle = agent.start("go")
        await model.asked.wait()
        chains = [_awaiting(task) for task in asyncio.all_tasks()]
        model.go.set()
        return chains, await handle

    chains, result = asyncio.run(main())
    turn_loop = [chain for chain in chains if "AgentRun._turns" in chain]
    assert len(turn_loop) == 1, chains
    assert "AgentRun.answer" not in turn_loop[0], turn_loop
    assert turn_loop[0][-1] == "AgentRun._turns"  # it awaits the node's future directly
    assert result.ok and result.output == "done" and result.turns == 1


class _Step:
    """A step in flight that says whether (and why) it was cancelled."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def cancel(self, node: None = None, *, reason: str, timed_out: bool = False) -> None:
        self.reason = reason


def test_a_trees_books_hold_one_step_as_itself_and_two_in_a_set() -> None:
    # an agent has one step in flight most of the time: kept as it is, not in a set made and
    # dropped for each step; a streamed reply's tool phase beside its turn makes it two
    ctx = TreeContext(run_id="r", runtime=shoal.Runtime(), budget=None, sinks=[])
    turn, phase, other = _Step(), _Step(), _Step()
    ctx.track_handle("lead", turn, turn=True)
    assert ctx._handles["lead"] is turn and ctx.in_flight("lead") == [turn]
    ctx.track_handle("lead", turn, turn=True)  # again: still the one step
    assert ctx._handles["lead"] is turn
    ctx.track_handle("lead", phase)
    ctx.track_handle("lead/worker#1", other)
    assert isinstance(ctx._handles["lead"], set)
    assert set(ctx.in_flight("lead")) == {turn, phase}
    ctx.cancel("lead", "stopped")
    assert turn.reason == phase.reason == other.reason == "stopped"
    ctx.untrack_handle("lead", turn)
    assert ctx.in_flight("lead") == [phase] and ctx._turns == set()
    ctx.untrack_handle("lead", phase)
    ctx.untrack_handle("lead/worker#1", other)
    ctx.untrack_handle("lead", phase)  # forgotten already: nothing to do
    assert ctx._handles == {} and ctx.in_flight("lead") == []


_RECORDS = [Usage, ToolCall, UserMessage, AssistantMessage, ToolResultMessage, ModelRequest,
            ModelResponse, TextDelta, ToolCallDone, ResponseDone, CallRecord]


@pytest.mark.parametrize("record", _RECORDS, ids=lambda record: record.__name__)
def test_a_records_init_sets_its_slots_directly_with_the_dataclasss_signature(
        record: type[Any]) -> None:
    # the records every turn and call makes: set through each slot's descriptor, not through
    # object.__setattr__ field by field, as the frozen dataclass's own __init__ does
    assert "__setattr__" not in record.__init__.__code__.co_names
    same: Any = dataclasses.dataclass(frozen=True, slots=True)(
        type(record.__name__, (), {"__annotations__": dict(record.__annotations__), **{
            f.name: f.default for f in dataclasses.fields(record)
            if f.default is not dataclasses.MISSING}}))
    assert inspect.signature(record.__init__) == inspect.signature(same.__init__)
    assert record.__init__.__qualname__ == f"{record.__name__}.__init__"


def test_records_made_by_the_quick_init_are_the_dataclasses_they_were() -> None:
    request = ModelRequest("i", [UserMessage("go")], lineage="lead")  # a list: made a tuple
    assert type(request.messages) is tuple and request.lineage == "lead"
    assert request.tools == () and request.output_schema is None
    assert request == ModelRequest("i", (UserMessage("go"),), lineage="lead")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.lineage = "other"  # type: ignore[misc]
    assert replace(request, lineage="x").lineage == "x"
    assert pickle.loads(pickle.dumps(request)) == request
    assert Usage(1, 2) + Usage(3, 4, 1, 0.5) == Usage(4, 6, 1, 0.5)
    assert repr(ToolCall("1", "f")) == "ToolCall(id='1', name='f', arguments='{}')"
    with pytest.raises(TypeError):
        ToolCall("1")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Usage(1, 2, 3, None, 4, 5, 6)  # type: ignore[call-arg]
    record = CallRecord(ToolCall("1", "f"), "lead/f#1", "ok", ToolResultMessage("1", "f", "x"))
    assert record.turn == 0 and record.outcome is None and record.ok
    tagged = _Tagged(instructions="i", messages=[], tag="t")  # a subclass: its own init
    assert tagged.tag == "t" and tagged.messages == ()


def test_an_agents_steps_are_checked_and_waited_for_without_a_wrapper_per_step() -> None:
    # every step of every agent: the handle asks asyncio which loop runs, not running_loop()
    # (a call each); the plan's checks still apply to each step
    from shoal.runtime import RunHandle

    assert "running_loop" not in RunHandle.outcome_of.__code__.co_names

    async def main() -> None:
        run = shoal.Runtime().open_run("steps")
        run.add_owned(lookup, {"key": "a"}, node_id="lookup#1")
        with pytest.raises(shoal.PlanError):  # the plan's checks still apply: an id taken
            run.add_owned(lookup, {"key": "b"}, node_id="lookup#1")
        assert (await run.handle.outcome_of("lookup#1")).value == "aaa"
        run.close()
        result = await run
        assert list(result.outcomes) == ["lookup#1"]
        with pytest.raises(shoal.RunClosedError):
            run.add_owned(lookup, {"key": "c"}, node_id="lookup#2")

    asyncio.run(main())


def test_a_runtime_waits_on_a_started_runs_own_task_and_drops_one_cancelled_before_it_began(
        ) -> None:
    # a future and a done-callback per run (a callback the loop ran when each run's task
    # ended) were what aclose() waited on: a swarm starts a run per agent
    async def main() -> None:
        runtime = shoal.Runtime()
        run = runtime.open_run("steps")
        task = run.handle.as_future()
        assert list(runtime._runs.values()) == [task]
        task.cancel()  # before its first step: its _drive never runs to say it ended
        await asyncio.sleep(0)
        assert task.cancelled()
        await asyncio.wait_for(runtime.aclose(), 5)
        assert not runtime._runs
        ended = runtime.open_run("steps-2")
        ended.close()
        await ended
        assert not runtime._runs  # one that ran forgets itself as it ends

    asyncio.run(main())


def test_a_plain_validated_step_is_made_checked_in_one_pass_and_any_other_is_checked_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a swarm adds a dozen steps per agent: one with a free id and plain, validated values
    # has no problem the plan's checks could find, so they are not asked; any other is
    # checked as before (a taken id, a ref among its values)
    from shoal.plan import Plan, Ref

    checked: list[str] = []
    real = Plan.node_problems

    def node_problems(plan: Plan, node: Any) -> Any:
        checked.append(node.id)
        return real(plan, node)

    monkeypatch.setattr(Plan, "node_problems", node_problems)

    async def main() -> None:
        run = shoal.Runtime().open_run("steps")
        args = {"key": "a", "limit": 3}
        run.add_owned(lookup, args, node_id="lookup#1", validated=True)
        assert checked == []
        node = run._plan.node("lookup#1")
        assert (node.args is args and node.checked is args and node.refs == ()
                and node.after == () and node.index == 0 and node.map is None)
        with pytest.raises(shoal.PlanError):  # an id taken: the general checks say so
            run.add_owned(lookup, {"key": "b", "limit": 3}, node_id="lookup#1",
                          validated=True)
        run.add_owned(lookup, {"key": Ref("lookup#1"), "limit": 2}, node_id="lookup#2",
                      validated=True)  # a ref: waited for, checked against the tool
        assert checked == ["lookup#1", "lookup#2"]
        assert run._plan.node("lookup#2").checked is None
        assert (await run.handle.outcome_of("lookup#2")).value == "aaaaaa"
        run.close()
        result = await run
        assert list(result.outcomes) == ["lookup#1", "lookup#2"]

    asyncio.run(main())


def test_a_model_turns_reply_ends_its_node_as_a_plain_value_with_the_same_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every turn's reply is a finished result: no check for work left to await and no result
    # object (the path a tool's str takes); the turn's journaled outcome is as it was
    from shoal.scheduler import driver

    asked: list[str] = []
    real = driver._returned_value

    def returned_value(attempt: Any, value: Any) -> Any:
        asked.append(attempt.node_id)
        return real(attempt, value)

    monkeypatch.setattr(driver, "_returned_value", returned_value)
    agent = shoal.Agent(name="a", model=ScriptedModel([[call("lookup", key="k")], "done"]),
                        tools=[lookup])
    runtime = shoal.Runtime()
    result = agent.run_sync("go", runtime=runtime, run_id="r1")
    assert result.ok and result.output == "done" and asked == []
    assert runtime.store is not None
    outcomes = runtime.store.outcomes("r1/a/steps")
    turns = [o.outcome for node_id, o in outcomes.items() if node_id.startswith("model-")]
    assert [type(o.value) for o in turns] == [ModelResponse, ModelResponse]
    assert all(o.status == "ok" and o.attempts == 1 and o.executor == "inline"
               and o.started_at is not None and o.finished_at is not None for o in turns)
    assert turns[1].value.text == "done"


def test_only_a_type_whose_values_are_never_awaited_or_read_is_a_finished_result() -> None:
    from shoal.executors._results import finished_result_type

    class Awaitable:
        def __await__(self) -> Any:
            yield

    kinds: tuple[type, ...] = (asyncio.Future, Awaitable, type(iter([])))
    for kind in kinds:
        with pytest.raises(TypeError):  # work to await or read: never a finished result
            finished_result_type(kind)
