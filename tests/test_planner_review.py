"""The planner under hostile input: plan text, joiner replies and model replies that models
really send, each pinned by the defect it once caused."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal

import pydantic
import pytest

import shoal
from shoal.agents.planprompts import join_action
from shoal.exceptions import ModelHTTPError
from shoal.models.base import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
)
from shoal.models.retry import ModelGates, ModelRetry
from shoal.plantext import parse_plan_text
from shoal.testing import ScriptedModel, call, run_virtual

Res = shoal.AgentResult[Any]


def _echo_tool(ran: Counter[str]) -> shoal.Tool[..., Any]:
    @shoal.tool
    def echo(text: str) -> str:
        """Echo the text."""
        ran[text] += 1
        return text

    return echo


def _run(steps: list[Any], **options: Any) -> tuple[Res, Counter[str], ScriptedModel]:
    ran: Counter[str] = Counter()
    model = ScriptedModel(steps)
    agent = shoal.Agent(name="planner", model=model, tools=[_echo_tool(ran)], mode="plan",
                        **options)
    return run_virtual(agent.run("go")), ran, model


def _joiner_text(model: ScriptedModel, index: int = 1) -> str:
    """What the joiner of request ``index`` reads: the conversation so far, as one text."""
    return "\n\n".join(str(getattr(m, "content", "")) for m in model.requests[index].messages)


# ---- the joiner's reply ---------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "expected"), [
    # prose after the answer, with brackets of its own, is not part of the answer
    ("Action: Finish(done)\n\nThought: extra (x)", ("finish", "done")),
    ("Action: Finish(42)\n\nI hope this helps (really).", ("finish", "42")),
    ("Thought: fine\nAction: Replan(fetch b)\nObservation: (none)", ("replan", "fetch b")),
    # markdown around the words
    ("**Action:** Finish(bold)", ("finish", "bold")),
    ("**Action**: **Finish**(bolder)", ("finish", "bolder")),
    ("Action: `Finish(ticked)`", ("finish", "ticked")),
    ("> Action: replan(quoted)", ("replan", "quoted")),
    # brackets inside the answer, balanced or not
    ("Action: Finish(f(x) = (a+b))", ("finish", "f(x) = (a+b)")),
    ("Action: Finish(Steps:\n1) do a\n2) do b)", ("finish", "Steps:\n1) do a\n2) do b")),
    ("Action: Finish(the answer is :) yes)", ("finish", "the answer is :) yes")),
    ('Action: Finish("a) b")', ("finish", "a) b")),
])
def test_the_joiner_reply_ends_where_its_action_ends(reply: str,
                                                      expected: tuple[str, str]) -> None:
    assert join_action(reply) == expected


def test_prose_after_finish_is_not_in_the_agents_answer() -> None:
    reply = "**Thought:** both ran.\n**Action:** Finish(ab)\n\nLet me know (if needed)!"
    result, _, _ = _run(['1. echo("a")\n2. echo("b")\n3. join()', reply])
    assert result.output == "ab"


# ---- a plan reply holding native tool calls ----------------------------------------------------


def test_native_tool_calls_in_a_plan_reply_run_as_plan_calls() -> None:
    # OpenAI models sometimes answer with tool calls though the request had no tools
    result, ran, model = _run([[call("echo", text="a"), call("echo", text="$1")],
                               "Action: Finish(a twice)"])
    assert result.output == "a twice"
    assert [(r.call.id, r.status, r.message.content) for r in result.calls] == [
        ("1", "ok", "a"), ("2", "ok", "a")]
    assert ran == {"a": 2}  # the second call echoes the first one's result
    assert result.plans == ["1. echo(text='a')\n2. echo(text='$1')"]
    assert "1. echo(text='a')" in _joiner_text(model)


def test_native_tool_calls_after_plan_text_are_numbered_on_and_checked() -> None:
    steps = [["Thought: one by text, the rest natively.\n1. echo('t')",
              call("echo", text="$1"), call("nosuch", x=1), call("echo", oops=[1])],
             "Action: Finish(done)"]
    result, _, model = _run(steps)
    assert [(r.call.id, r.status) for r in result.calls] == [
        ("1", "ok"), ("2", "ok"), ("3", "rejected"), ("4", "rejected")]
    assert result.calls[1].message.content == "t"
    assert "no tool named 'nosuch'" in result.calls[2].message.content
    assert "oops" in result.calls[3].message.content
    assert "4. echo(oops=[1])" in _joiner_text(model)


def test_native_tool_calls_after_join_are_ignored_as_any_text_after_it() -> None:
    result, ran, _ = _run([["1. echo('a')\n2. join()", call("echo", text="late")],
                           "Action: Finish(a)"])
    assert ran == {"a": 1} and [r.call.id for r in result.calls] == ["1"]


def test_native_tool_calls_over_the_openai_protocol_and_on_resume(tmp_path: Any) -> None:
    from tests.conftest import arun
    from tests.wire import OpenAIWireServer, text_reply
    from tests.wire.replies import Reply, WireToolCall

    ran: Counter[str] = Counter()
    echo = _echo_tool(ran)
    replies: list[Any] = [
        Reply(tool_calls=(WireToolCall("echo", {"text": "wire"}),
                          WireToolCall("echo", '{"text": "$1"'))),  # cut JSON: refused
        text_reply("Thought: one ran.\nAction: Finish(wire)")]
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    with OpenAIWireServer(replies) as server:
        model = server.model()
        agent = shoal.Agent(name="planner", model=model, tools=[echo], mode="plan")

        async def main() -> Res:
            try:
                return await agent.run("go", runtime=runtime, run_id="r1")
            finally:
                await model.aclose()

        result = arun(main())
        assert not server.errors
    assert result.output == "wire" and ran == {"wire": 1}
    assert [(r.call.id, r.status) for r in result.calls] == [("1", "ok"), ("2", "rejected")]
    assert "not a JSON object" in result.calls[1].message.content
    # resumed, the journaled reply is read again the same way: nothing runs, nothing is asked
    again = ScriptedModel([])
    resumed = shoal.Agent(name="planner", model=again, tools=[echo], mode="plan")
    replayed = resumed.resume_sync("r1", "go", runtime=runtime)
    assert replayed.output == "wire" and ran == {"wire": 1} and again.requests == []
    assert [(r.call.id, r.status) for r in replayed.calls] == [("1", "ok"), ("2", "rejected")]


# ---- numbers and refs ---------------------------------------------------------------------------


def test_a_number_with_leading_zeros_is_that_number() -> None:
    plan = '007. echo("a")\n7. echo("b")\n8. echo($7)\n9. echo($007)\n10. echo("${07}")\n11. join()'
    result, ran, _ = _run([plan, "Action: Finish(a)"])
    assert [(r.call.id, r.status) for r in result.calls] == [
        ("7", "ok"), ("7", "rejected"), ("8", "ok"), ("9", "ok"), ("10", "ok")]
    assert "step 7 is already taken by echo" in result.calls[1].message.content
    assert '{"text": "a"}' in result.calls[1].message.content  # shown as the call ran
    assert result.calls[2].message.content == "a"  # $7 is call 007
    assert ran == {"a": 4}
    numbers = parse_plan_text('01. echo("x")\n2. echo($001)', [_echo_tool(Counter())])
    assert [node.id for node in numbers.nodes] == ["1", "2"]


def test_huge_numbers_are_ids_and_do_not_break_the_next_plans_numbering() -> None:
    huge = "9" * 5000  # beyond int()'s default digit limit
    steps = [f'{huge}. echo("a")\n2. echo(${huge})\n3. join()', "Action: Replan(more)",
             "4. echo($2)\n5. join()", "Action: Finish(a)"]
    result, _, model = _run(steps)
    assert [r.status for r in result.calls] == ["ok", "ok", "ok"]
    assert "Number the new calls from 3 on" in _joiner_text(model, 2)


def test_a_ref_to_a_rejected_call_says_that_call_was_rejected() -> None:
    steps = ['1. nosuch("x")\n2. echo($1)\n3. join()', "Action: Replan(use echo)",
             '3. echo(text={"k": [$1]})\n4. join()', "Action: Finish(none ran)"]
    result, ran, _ = _run(steps)
    assert not ran
    for record in result.calls[1:]:
        assert record.status == "rejected"
        assert "$1 is the result of call 1, which was rejected" in record.message.content
        assert "no tool named 'nosuch'" in record.message.content


# ---- the shape of the plan text ---------------------------------------------------------------


@pytest.mark.parametrize("plan", [
    '1. echo("a") 2. echo($1) 3. echo(text="b; 4. echo(x)") 4. join() 5. echo("late")',
    '1. echo("a"); 2. echo($1);3. echo("b; 4. echo(x)"), 4. join()',
    '```\r\n1. echo("a")  2. echo(\r\n$1)\t3. echo("b; 4. echo(x)") <END_OF_PLAN>\r\n```',
    '1. echo("a")\r2. echo($1)\r3. echo("b; 4. echo(x)")\r4. join()\r',  # lone \r newlines
])
def test_a_plan_written_on_one_line_runs_call_by_call(plan: str) -> None:
    result, ran, _ = _run([plan, "Action: Finish(ok)"])
    assert [(r.call.id, r.status, r.message.content) for r in result.calls] == [
        ("1", "ok", "a"), ("2", "ok", "a"), ("3", "ok", "b; 4. echo(x)")]
    assert "late" not in ran


def test_calls_on_one_line_keep_their_line_and_errors_stay_apart() -> None:
    tools = [_echo_tool(Counter())]
    plan = parse_plan_text('1. echo("a") 2. echo($1)\n3. echo($2) # 4. echo("c")', tools)
    assert [node.id for node in plan.nodes] == ["1", "2", "3"]
    with pytest.raises(shoal.PlanError) as caught:
        parse_plan_text('1. echo("a") 2. nosuch($1) 3. echo(x y)', tools)
    messages = sorted(p.message for p in caught.value.problems)
    assert len(messages) == 2
    assert messages[0].startswith("line 1: cannot parse 'echo(x y)'")
    assert messages[1].startswith("line 1: no tool named 'nosuch'")
    # a long line of calls is read without deep recursion
    many = " ".join(f'{i}. echo("{i}")' for i in range(1, 3001))
    assert len(parse_plan_text(many, tools).nodes) == 3000


# ---- replanning ---------------------------------------------------------------------------------


def test_a_replan_numbered_from_1_again_runs_its_calls_under_new_numbers() -> None:
    first = '1. echo("a")\n2. echo("b")\n3. join()'
    second = 'Thought: start over\n1. echo("c")\n2. echo(text=$1)\n3. echo("b")\n4. join()'
    result, ran, model = _run([first, "Action: Replan(need c)", second, "Action: Finish(c)"])
    assert result.output == "c"
    assert [(r.call.id, r.message.content) for r in result.calls] == [
        ("1", "a"), ("2", "b"), ("3", "c"), ("4", "c"), ("5", "b")]
    assert ran == {"a": 1, "b": 2, "c": 2}  # "3. echo("b")" is a new call: it runs
    joiner = _joiner_text(model, 3)
    assert "this plan's step 1 ran as step 3 (its result is $3)" in joiner
    assert '4. echo({"text": "$3"}) -> ok: c' in joiner


def test_a_replan_going_back_keeps_refs_to_calls_it_did_not_renumber() -> None:
    first = '1. echo("a")\n2. echo("b")\n3. join()'
    second = '2. echo("new")\n3. echo($1)\n4. echo($2)\n5. join()'
    result, _, _ = _run([first, "Action: Replan(more)", second, "Action: Finish(ok)"])
    assert [(r.call.id, r.message.content) for r in result.calls] == [
        ("1", "a"), ("2", "b"), ("3", "new"), ("4", "a"), ("5", "new")]


class _RetriedReplan(shoal.Model):
    """Plans, asks for a replan, then streams a replan numbered from 1 again that fails
    midway with a 503 once; the retry streams it whole."""

    name = "retried-replan"
    streams_tool_calls = True

    def __init__(self) -> None:
        self.streams = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        joined = sum(isinstance(m, AssistantMessage) for m in request.messages)  # plans, replies
        return ModelResponse("Action: Replan(more)" if joined < 2 else "Action: Finish(ok)")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if not request.plan_tools:
            yield ResponseDone(await self.request(request))
            return
        self.streams += 1
        if self.streams == 1:
            text = '1. echo("a")\n2. join()'
        elif self.streams == 2:
            yield TextDelta('1. echo("c")\n2. echo(')
            raise ModelHTTPError(self.name, "overloaded", 503)
        else:
            text = '1. echo("c")\n2. echo($1)\n3. join()'
        yield TextDelta(text)
        yield ResponseDone(ModelResponse(text))


def test_a_renumbered_call_read_again_after_a_retry_does_not_run_twice() -> None:
    ran: Counter[str] = Counter()
    agent = shoal.Agent(name="planner", model=_RetriedReplan(), tools=[_echo_tool(ran)],
                        mode="plan")
    gates = ModelGates(retry=ModelRetry(retries=2, backoff=0.1))
    result = run_virtual(agent.run("go", gates=gates))
    assert result.output == "ok" and gates.retries == 1
    assert ran == {"a": 1, "c": 2}
    assert [(r.call.id, r.message.content) for r in result.calls] == [
        ("1", "a"), ("2", "c"), ("3", "c")]


class Total(pydantic.BaseModel):
    total: int


def test_a_joiner_answering_with_native_calls_is_read_or_told_it_cannot_call_tools() -> None:
    plan = '1. echo("a")\n2. join()'
    result, _, _ = _run([plan, [call("Finish", answer="from a call")]])
    assert result.output == "from a call"
    steps = [plan, [call("Replan", reason="more")], plan.replace("1.", "2."),
             [call("echo", text="x")], "Action: Finish(told)"]
    result, _, model = _run(steps)
    assert result.output == "told" and len(result.plans) == 2
    retry = model.requests[4].messages[-1].content
    assert "No tools can be called here (you called echo)" in retry
    ran: Counter[str] = Counter()
    typed = shoal.Agent(name="planner", model=ScriptedModel([plan, [call("finish", total=3)]]),
                        tools=[_echo_tool(ran)], mode="plan", output_type=Total)
    assert run_virtual(typed.run("go")).output == Total(total=3)


def test_markdown_around_numbers_thoughts_and_calls_is_read_through() -> None:
    plan = ("**Thought:** two calls.\n**1.** `echo(\"a\")`\n2. `echo($1)` **3.** echo(\"`b`\")"
            "\n> Thought: done\n4. `join()`")
    result, _, model = _run([plan, "Action: Finish(ok)"])
    assert [(r.call.id, r.status, r.message.content) for r in result.calls] == [
        ("1", "ok", "a"), ("2", "ok", "a"), ("3", "ok", "`b`")]
    assert "Note:" not in _joiner_text(model)  # no line was taken for prose


class _CutOnce(shoal.Model):
    """Streams part of a plan, then a 503 the first time; the retry streams all of it."""

    name = "cut-once"
    streams_tool_calls = True

    def __init__(self, whole: str, cut_after: str) -> None:
        self.whole, self.cut_after, self.streams = whole, cut_after, 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse("Action: Finish(ok)")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if not request.plan_tools:
            yield ResponseDone(await self.request(request))
            return
        self.streams += 1
        if self.streams == 1:
            yield TextDelta(self.whole[:self.whole.index(self.cut_after) + len(self.cut_after)])
            raise ModelHTTPError(self.name, "overloaded", 503)
        yield TextDelta(self.whole)
        yield ResponseDone(ModelResponse(self.whole))


def test_a_retried_plan_stream_keeps_plan_order_and_tells_each_line_once() -> None:
    ran: Counter[str] = Counter()
    whole = 'prose\n1. nosuch()\n2. echo("a")\n3. echo($2)\n4. echo($1)\n5. join()'
    model = _CutOnce(whole, '3. echo(')
    agent = shoal.Agent(name="planner", model=model, tools=[_echo_tool(ran)], mode="plan")
    events: list[shoal.Event] = []
    gates = ModelGates(retry=ModelRetry(retries=1, backoff=0.1))
    result = run_virtual(agent.run("go", on_event=events.append, gates=gates))
    assert model.streams == 2 and ran == {"a": 2}
    assert [(r.call.id, r.status) for r in result.calls] == [
        ("1", "rejected"), ("2", "ok"), ("3", "ok"), ("4", "rejected")]
    told = [(type(e).__name__, getattr(e, "node_id", getattr(e, "call_id", "")))
            for e in events if isinstance(e, shoal.PlanCallParsed | shoal.ToolCallRejected)]
    assert sorted(told) == sorted([("PlanCallParsed", "1"), ("ToolCallRejected", "1"),
                                   ("PlanCallParsed", "2"), ("PlanCallParsed", "3"),
                                   ("PlanCallParsed", "4"), ("ToolCallRejected", "4")])


# ---- the planner's prompt ------------------------------------------------------------------------


class Query(pydantic.BaseModel):
    text: str
    limit: int = 3


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


def test_the_signature_spells_out_the_shapes_the_model_must_write() -> None:
    from shoal.agents.planprompts import tool_signature

    @shoal.tool
    def find(mode: Literal["fast", "deep"], query: Query, tree: Node,
             weights: dict[str, float] | None = None) -> str:
        """Find."""
        return mode

    spec = shoal.Agent(name="a", model=ScriptedModel([]), tools=[find]).tool_specs[0]
    signature = tool_signature(spec)
    assert signature.startswith("find(mode: 'fast' | 'deep', "
                                'query: {"text": str, "limit": int = 3}, tree: {"name": str, ')
    assert "weights: dict[str, float] | None = None)" in signature
    assert "any" in signature  # the recursive model ends, spelled as far as it helps


def _seconds_to_read(plan: str) -> float:
    import time

    @shoal.tool
    def size(text: str) -> int:
        """Measure the text."""
        return len(text)

    model = ScriptedModel([plan, "Action: Finish(ok)"], tokens_per_second=1e6)
    agent = shoal.Agent(name="planner", model=model, tools=[size], mode="plan")
    began = time.perf_counter()
    result = run_virtual(agent.run("go"), debug=False)
    assert [r.status for r in result.calls] == ["ok"]
    return time.perf_counter() - began


def test_a_long_line_streamed_token_by_token_is_read_in_linear_time() -> None:
    # 100,000 tokens either way; read again at each token, the long line cost ~10 times more
    one_line = '1. size("' + "x" * 400_000 + '")\n2. join()'
    many_lines = '1. size("""' + ("x" * 99 + "\n") * 4_000 + '""")\n2. join()'
    assert _seconds_to_read(one_line) < 3 * _seconds_to_read(many_lines) + 1.0


def test_requests_stay_bounded_however_many_rounds_bring_big_results() -> None:
    from shoal.agents.planner import MAX_OBSERVATION_CHARS

    @shoal.tool
    def big(n: int) -> str:
        """A big result."""
        return str(n % 10) * 90_000

    def plan(first: int) -> str:
        return "\n".join(f"{i}. big({i})" for i in range(first, first + 6)) + "\n99. join()"

    steps = [plan(1), "Action: Replan(more)", plan(7), "Action: Replan(more)", plan(13),
             "Action: Finish(enough)"]
    model = ScriptedModel(steps)
    agent = shoal.Agent(name="planner", model=model, tools=[big], mode="plan")
    result = run_virtual(agent.run("go"), debug=False)
    assert result.output == "enough" and len(result.calls) == 18
    for request in model.requests:
        size = sum(len(m.content) for m in request.messages)
        assert size < MAX_OBSERVATION_CHARS + 5_000
    # the last plan's results are in the last joiner's request, cut, not left out
    assert "13. big" in _joiner_text(model, 5) and "more characters cut" in _joiner_text(model, 5)


def test_a_ref_into_a_result_that_lacks_the_part_says_which_ref_and_what_is_there() -> None:
    @shoal.tool
    def info() -> dict[str, Any]:
        """Info."""
        return {"name": "x", "items": [1, 2]}

    @shoal.tool
    def show(value: Any) -> str:
        """Show a value."""
        return repr(value)

    plan = ('1. info()\n2. show($1.items[7])\n3. show($1.nope)\n4. show($1["name"])\n'
            "5. show($1.items[-1])\n6. join()")
    model = ScriptedModel([plan, "Action: Finish(x)"])
    agent = shoal.Agent(name="planner", model=model, tools=[info, show], mode="plan")
    result = run_virtual(agent.run("go"))
    by_id = {r.call.id: r.message.content for r in result.calls}
    assert "IndexError: $1.items[7]: no item 7 in a list of 2 items" in by_id["2"]
    assert "KeyError" in by_id["3"]
    assert "$1.nope: no key 'nope' in a mapping with keys ['name', 'items']" in by_id["3"]
    assert "a part of a result is $N.field or $N[0]" in by_id["4"]
    assert by_id["5"] == "2"


# ---- the scripted model's timing ----------------------------------------------------------------


def test_scripted_token_timing_does_not_drift_on_a_real_clock() -> None:
    import asyncio
    import time

    async def last_token_at() -> float:
        model = ScriptedModel(["x" * 4 * 500], tokens_per_second=500.0, first_token=0.1)
        began, last = time.perf_counter(), 0.0
        async for event in model.stream(ModelRequest("", ())):
            if isinstance(event, TextDelta):
                last = time.perf_counter() - began
                # a reader that works on each token, as a planner does: blocking on purpose
                time.sleep(0.0005)  # noqa: ASYNC251
        return last

    # due 0.1 + 499 / 500 s after the request; counted token to token, the reader's own time
    # and each wake-up's lateness used to add up (to a quarter of a second and more)
    assert asyncio.run(last_token_at()) == pytest.approx(1.098, abs=0.2)


def test_per_prompt_scripts_answer_planners_running_at_once() -> None:
    ran: Counter[str] = Counter()
    scripts = {
        "x": ['1. echo("x")\n2. join()', "Action: Replan(again)", '2. echo($1)\n3. join()',
              "Action: Finish(did x)"],
        "y": ['1. echo("y")\n2. join()', "Action: Finish(did y)"],
    }
    inner = shoal.Agent(name="inner", model=ScriptedModel.per_prompt(scripts, latency=0.5),
                        tools=[_echo_tool(ran)], mode="plan")
    model = ScriptedModel(['1. inner("x")\n2. inner(task="y")\n3. join()',
                           "Action: Finish(both)"])
    agent = shoal.Agent(name="planner", model=model, subagents=[inner], mode="plan")
    result = run_virtual(agent.run("go"))
    assert result.output == "both" and ran == {"x": 2, "y": 1}
    assert [r.message.content for r in result.calls] == ["did x", "did y"]
    assert [c.plans for c in result.children] == [
        ['1. echo("x")\n2. join()', '2. echo($1)\n3. join()'], ['1. echo("y")\n2. join()']]
    inner.model.check()  # type: ignore[union-attr]


def test_a_ref_to_no_call_above_says_so_with_its_line() -> None:
    plan = ('1. echo($2)\n2. echo("a")\n3. echo(text={"k": [$9]})\n4. echo($4)\n5. echo(5)\n'
            '6. join()')
    result, ran, _ = _run([plan, "Action: Finish(a)"])
    by_id = {r.call.id: r.message.content for r in result.calls}
    assert by_id["1"] == ("Error: line 1: $2 is no call above this line; a call can use only "
                          "the results of calls written before it")
    assert by_id["3"].startswith("Error: line 3: $9 is no call above this line")
    assert by_id["4"] == "Error: line 4: argument refers to its own output $4"
    assert by_id["5"].startswith("Error: line 5: echo: argument 'text'")
    assert ran == {"a": 1}


def test_text_after_a_call_on_its_line_is_named_as_the_problem() -> None:
    plan = ('1. echo("a") Thought: then b\n2. echo("b") - to get b\n3. echo("c")  # fine\n'
            '4. echo(x y) z\n5. join()')
    result, ran, _ = _run([plan, "Action: Finish(c)"])
    by_id = {r.call.id: r.message.content for r in result.calls}
    assert by_id["1"].startswith("""Error: line 1: text follows the call 'echo("a")': """
                                 "'Thought: then b'; end the line after the call")
    assert "text follows the call" in by_id["2"] and "'- to get b'" in by_id["2"]
    assert by_id["3"] == "c" and ran == {"c": 1}
    assert "cannot parse 'echo(x y) z'" in by_id["4"]  # the call itself is wrong: said so
