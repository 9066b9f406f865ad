"""Hostile plans against the planner (mode="plan") and plan text, found in session 37."""

from __future__ import annotations

import re
from typing import Any

import pytest

import shoal
from shoal.exceptions import PlanError
from shoal.models.base import ModelResponse, ToolCall, ToolSpec
from shoal.plangrammar import _literal, plan_grammar
from shoal.plantext import parse_plan_text
from shoal.testing import ScriptedModel, run_virtual
from tests.conftest import arun
from tests.test_models_hostile_stream import RawAnthropic, RawOpenAI, message_start, openai_stream
from tests.wire import text_reply
from tests.wire.base import sse

FINISH = "Thought: done.\nAction: Finish(done)"


@shoal.tool
async def echo(x: Any = None, y: Any = None) -> str:
    """Say what came in."""
    return repr(x) if y is None else repr((x, y))


def _calls(result: shoal.AgentResult[Any]) -> list[tuple[str, str, str]]:
    return [(c.call.id, c.status, c.message.content) for c in result.calls]


# -- a raw carriage return that Python would read as a line's end --------------------------------

CR_FIX = (r"a raw carriage return inside a quoted string, after {after}: plan text cannot "
          r"hold it raw; write it as \\r")


@pytest.mark.parametrize(("written", "after"), [
    ('echo("""a\rb""")', 'echo("""a'),
    ("echo('''a\rb''')", "echo('''a"),
    ('echo("a\\\rb")', 'echo("a\\'),  # a backslash before it: both vanished
    ('echo("""a\\\rb""")', 'echo("""a\\'),
], ids=["triple-double", "triple-single", "after-backslash", "triple-after-backslash"])
def test_a_raw_carriage_return_a_string_would_lose_is_refused_saying_what_to_write(
        written: str, after: str) -> None:
    # Python reads a raw \r as a line's end: inside triple quotes the tool got "a\nb", and
    # after a backslash (a line continuation) "ab"; a one-line string said so already
    with pytest.raises(PlanError) as raised:
        parse_plan_text(f"1. {written}\n2. join()", [echo])
    (problem,) = raised.value.problems
    assert re.fullmatch(r"line 1: " + CR_FIX.format(after=re.escape(repr(after))), problem.message)
    assert problem.node == "1"


def test_a_raw_carriage_return_on_a_later_line_of_a_string_names_that_line() -> None:
    text = '1. echo(\n  x="""one\n  two\rthree""",\n)\n2. join()'
    with pytest.raises(PlanError, match=r"line 1: a raw carriage return inside a quoted string "
                                        r"\(line 3\), after 'two'"):
        parse_plan_text(text, [echo])


def test_line_ends_and_escapes_around_a_triple_quoted_string_still_read_as_written() -> None:
    # what stays allowed: \r\n ends a line (in a string too), \r between arguments is
    # whitespace, and the escape \r is the character
    text = '1. echo(x="""a\r\nb""",\r y="c\\rd")\r\n2. join()\r\n'
    plan = parse_plan_text(text, [echo])
    assert plan.nodes[0].args == {"x": "a\nb", "y": "c\rd"}


def test_a_raw_carriage_return_before_a_line_end_in_a_string_is_refused_not_dropped() -> None:
    # "\r\r\n" ended the line with both: the string's own \r vanished without a word
    with pytest.raises(PlanError, match=r"line 1: a raw carriage return inside a quoted string, "
                                        r"after 'echo\(\"\"\"a': .* write it as \\r$"):
        parse_plan_text('1. echo("""a\r\r\nb""")\r\n2. join()', [echo])
    # between calls it is only more of the line's end
    plan = parse_plan_text('1. echo("a")\r\r\n2. echo($1)\r\r\n3. join()', [echo])
    assert [node.args for node in plan.nodes] == [{"x": "a"}, {"x": shoal.Ref("1")}]


def test_the_planner_rejects_a_call_whose_string_holds_a_raw_carriage_return() -> None:
    plan = '1. echo("""a\rb""")\n2. echo("ok")\n3. join()'
    agent = shoal.Agent(name="p", model=ScriptedModel([plan, FINISH]), tools=[echo],
                        mode="plan")
    result = run_virtual(agent.run("go"))
    (first, second) = _calls(result)
    assert first[:2] == ("1", "rejected") and "write it as \\r" in first[2]
    assert second == ("2", "ok", "'ok'")


# -- a character streamed in two halves -------------------------------------------------------

PLAN = "1. echo('😀 é')\n2. join()"
HALF = PLAN.index("😀")
# the emoji's two UTF-16 halves in two events (the JSON escapes \ud83d and \ude00)
HALVES = [PLAN[:HALF] + "\ud83d", "\ude00" + PLAN[HALF + 1:]]


def _anthropic_text(*pieces: str) -> list[str]:
    """A messages API stream of one text block streamed in ``pieces``."""
    events = [message_start(), sse({"type": "content_block_start", "index": 0, "content_block": {
        "type": "text", "text": ""}}, "content_block_start")]
    events += [sse({"type": "content_block_delta", "index": 0, "delta": {
        "type": "text_delta", "text": piece}}, "content_block_delta") for piece in pieces]
    return [*events, sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": 9}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


def _planned(server_class: type[Any], raw: list[str]) -> tuple[Any, list[str]]:
    """A planner over a server streaming ``raw``, then finishing; its result and text pieces."""
    with server_class([text_reply("unused"), text_reply(FINISH)]) as server:
        server.raw = [raw]
        model = server.model()
        agent = shoal.Agent(name="p", model=model, tools=[echo], mode="plan")

        async def main() -> tuple[Any, list[str]]:
            pieces: list[str] = []
            try:
                async for item in agent.stream("go"):
                    if isinstance(item, shoal.events.TextDelta):
                        pieces.append(item.text)
                    elif isinstance(item, shoal.AgentResult):
                        return item, pieces
            finally:
                await model.aclose()
            raise AssertionError("the stream ended without its result")

        result: tuple[Any, list[str]] = arun(main(), timeout=60)
        return result


@pytest.mark.parametrize("server_class", [RawOpenAI, RawAnthropic], ids=["openai", "anthropic"])
def test_a_character_streamed_in_two_halves_reaches_the_plan_whole(server_class: Any) -> None:
    # each half decoded alone is a lone surrogate: the call was rejected, "a lone surrogate
    # \ud83d inside a quoted string: ... write the character itself", which the model did
    raw = (openai_stream(*({"content": half} for half in HALVES), finish="stop")
           if server_class is RawOpenAI else _anthropic_text(*HALVES))
    result, pieces = _planned(server_class, raw)
    assert _calls(result) == [("1", "ok", "'😀 é'")]
    assert result.plans == [PLAN]
    assert "".join(pieces).startswith(PLAN)  # the pieces streamed add up to the reply's text


@pytest.mark.parametrize("server_class", [RawOpenAI, RawAnthropic], ids=["openai", "anthropic"])
def test_a_first_half_that_ends_the_stream_is_kept_and_refused_by_the_plan(
        server_class: Any) -> None:
    # held back for a second half that never comes, it is still the reply's last character
    text = "1. echo('a')\n2. join()\nThought: \ud83d"
    raw = (openai_stream({"content": text}, finish="stop") if server_class is RawOpenAI
           else _anthropic_text(text))
    result, pieces = _planned(server_class, raw)
    assert _calls(result) == [("1", "ok", "'a'")]
    assert result.plans == [text]
    assert "".join(pieces).startswith(text)


# -- the numbers a new plan is told to use --------------------------------------------------------


def test_a_replan_after_a_twelve_digit_step_is_told_a_free_number_and_its_refs_follow() -> None:
    # numbers of 12 digits or more were left out of "the largest so far": after a plan had
    # numbered on from 99999999999 as told, the next was told to number from 100000000000
    # again; the call written so was rejected ("another node already has this id") and
    # $100000000000 read the earlier plan's result in its place
    steps = ["99999999999. echo('a')\n100000000000. join()", "Action: Replan(one more)",
             "100000000000. echo('b')\n100000000001. join()", "Action: Replan(and again)",
             "100000000000. echo('c')\n100000000001. echo($100000000000)\n"
             "100000000002. join()", FINISH]
    model = ScriptedModel(steps)
    agent = shoal.Agent(name="p", model=model, tools=[echo], mode="plan", max_replans=2)
    result = run_virtual(agent.run("go"))
    assert _calls(result) == [("99999999999", "ok", "'a'"), ("100000000000", "ok", "'b'"),
                              ("100000000001", "ok", "'c'"), ("100000000002", "ok", "\"'c'\"")]
    told = [m.content for m in model.requests[4].messages if "Number the new calls" in m.content]
    assert told[-1].endswith("Number the new calls from 100000000001 on.")


# -- a dict that gives a key twice ----------------------------------------------------------------


@pytest.mark.parametrize(("written", "key"), [
    ('{"a": 1, "a": 2}', "'a'"),
    ('[{"k": {"b": 1, "b": 2}}]', "'b'"),  # at any depth
    ("{1: 'one', True: 'true'}", "True"),  # equal keys written two ways
])
def test_a_dict_argument_that_gives_a_key_twice_is_refused_naming_it(written: str,
                                                                        key: str) -> None:
    # Python keeps the value written last without a word: the tool got {"a": 2}; a plan
    # file's mapping with a key twice, and an argument given twice by name, are refused
    with pytest.raises(PlanError) as raised:
        parse_plan_text(f"1. echo({written})\n2. echo(y={{'c': 1, 'd': 1}})\n3. join()", [echo])
    (problem,) = raised.value.problems
    assert problem.message == (f"line 1: positional argument 1: the key {key} is given twice "
                               "in one dict (the value written last would silently win); "
                               "give it once")


@pytest.mark.parametrize(("arguments", "why"), [
    ('{"x": 1, "x": 2}', "the key 'x' appears twice in one object"),  # ran with x=2
    ('{"x": NaN}', "NaN is not JSON (JSON numbers are finite); pass it as text"),
    ('{"x": 1' + "0" * 5000 + "}", "an integer has more than 1000 digits"),  # "no JSON object"
], ids=["key-twice", "nan", "huge-int"])
def test_native_plan_calls_follow_a_plan_files_json_rules_saying_which_broke(
        arguments: str, why: str) -> None:
    reply = ModelResponse(text="1. echo('a')\n", tool_calls=(ToolCall("c", "echo", arguments),))
    agent = shoal.Agent(name="p", model=ScriptedModel([reply, FINISH]), tools=[echo],
                        mode="plan")
    result = run_virtual(agent.run("go"))
    (first, native) = _calls(result)
    assert first == ("1", "ok", "'a'")
    assert native[:2] == ("2", "rejected")
    assert native[2].startswith(f"Error: line 2: echo's arguments cannot be passed: {why}")


def test_a_fenced_plans_problems_name_the_lines_of_the_reply() -> None:
    # the fence lines were dropped before the parser counted lines: each problem after a
    # fence named the line above the one it was about
    plan = "Here it is:\n```\n1. echo('a')\n2. nosuch($1)\n```\n```text\n3. echo(\n4. join()"
    agent = shoal.Agent(name="p", model=ScriptedModel([plan, FINISH]), tools=[echo],
                        mode="plan")
    result = run_virtual(agent.run("go"))
    (first, unknown, unclosed) = _calls(result)
    assert first == ("1", "ok", "'a'")
    assert unknown[2].startswith("Error: line 4: no tool named 'nosuch'")
    assert plan.splitlines()[3].startswith("2. nosuch")
    assert unclosed[2].startswith("Error: line 7: the call's brackets or quotes are not closed")
    assert plan.splitlines()[6] == "3. echo("


# -- a plan grammar's fixed values as plan text reads them ----------------------------------------


@pytest.mark.parametrize("schema", [{"enum": ["$USD", "EUR"]}, {"const": "$USD"}],
                         ids=["enum", "const"])
def test_a_grammars_fixed_text_that_starts_with_a_dollar_is_written_as_the_text(
        schema: dict[str, Any]) -> None:
    # the grammar let the model write only currency="$USD", which plan text reads as a
    # reference to a step "USD": every plan the grammar allowed with it was rejected
    def pay(currency: str) -> str:
        return currency

    spec = ToolSpec("pay", "Pay.", {"type": "object", "properties": {"currency": schema},
                                    "required": ["currency"]})
    grammar = plan_grammar([spec], max_calls=2)
    assert _literal('"$$USD"') in grammar and _literal('"$USD"') not in grammar
    plan = parse_plan_text('1. pay(currency="$$USD")\n2. join()', {"pay": shoal.tool(pay)})
    assert plan.nodes[0].args == {"currency": "$USD"}


# -- a failed call a new plan writes again --------------------------------------------------------


def test_a_replan_that_restates_a_failed_call_is_told_it_did_not_run_again() -> None:
    # the restated call stands with its earlier outcome (no call runs twice), but the joiner
    # read the same failure with no word of that, as if the retry had failed too
    tries: list[str] = []

    @shoal.tool
    async def flaky(x: str) -> str:
        """Fail the first time."""
        tries.append(x)
        if len(tries) == 1:
            raise RuntimeError("a passing glitch")
        return "fine"

    steps = ["1. flaky('a')\n2. join()", "Action: Replan(flaky failed: try it again)",
             "1. flaky('a')\n2. join()", "Action: Replan(it failed again)",
             "2. flaky('a')\n3. join()", FINISH]
    model = ScriptedModel(steps)
    agent = shoal.Agent(name="p", model=model, tools=[flaky], mode="plan", max_replans=2)
    result = run_virtual(agent.run("go"))
    assert tries == ["a", "a"]  # once in the first plan, once under the new number
    assert [(c.call.id, c.status) for c in result.calls] == [("1", "failed"), ("2", "ok")]
    judged = model.requests[3].messages[-1].content
    assert ("Note: line 1: step 1 is the same call as an earlier plan's step 1, so it did not "
            "run again: its result is that call's; to run it again, give it a new number (the "
            "next free one is 2)") in judged
    assert "same call" not in model.requests[1].messages[-1].content  # the first plan's own


def test_native_calls_after_the_plans_end_are_noted_as_not_run() -> None:
    # a text plan ended by join() with native calls in the same reply: they were dropped
    # without a word, and the joiner judged as if the model had asked for nothing more
    reply = ModelResponse(text="1. echo('a')\n2. join()",
                          tool_calls=(ToolCall("c1", "echo", '{"x": "b"}'),
                                      ToolCall("c2", "echo", '{"x": "c"}')))
    model = ScriptedModel([reply, FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[echo], mode="plan")
    result = run_virtual(agent.run("go"))
    assert _calls(result) == [("1", "ok", "'a'")]
    assert ("Note: the reply's tool calls (echo) came after the plan's end, so none of them "
            "ran; write every call as a numbered line before the end"
            ) in model.requests[1].messages[-1].content
