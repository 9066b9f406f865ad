"""Tests for shoal.plantext: LLMCompiler plan text, whole and streamed."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.exceptions import PlanError
from shoal.plan import Plan, Ref
from shoal.plantext import ParsedCall, PlanTextParser, parse_plan_text
from shoal.tools import Tool, tool
from tests.plan_tools import add, anything, merge, scale, search

TOOLS: list[Tool[..., Any]] = [search, merge, add, scale, anything]

EXAMPLE = """\
Thought: I need two searches.
1. search("ray actors")
2. search(query="asyncio")
3. merge(parts=["$1", "$2"])
Thought: done
4. join()
"""


def parse(text: str, tools: Any = TOOLS) -> Plan:
    return parse_plan_text(text, tools)


def problems_of(text: str, tools: Any = TOOLS) -> PlanError:
    with pytest.raises(PlanError) as info:
        parse_plan_text(text, tools)
    return info.value


def codes(error: PlanError) -> list[str]:
    return [p.code for p in error.problems]


def test_llmcompiler_example() -> None:
    plan = parse(EXAMPLE)
    assert [n.id for n in plan] == ["1", "2", "3"]
    assert plan.node("1").args == {"query": "ray actors"}
    assert plan.node("2").args == {"query": "asyncio"}
    assert plan.node("3").args == {"parts": [Ref("1"), Ref("2")]}
    assert plan.node("3").tool is merge


def test_tools_may_be_a_mapping() -> None:
    plan = parse('1. find("x")\n', {"find": search})
    assert plan.node("1").tool is search


def test_positional_and_keyword_arguments() -> None:
    plan = parse('1. add(1, b=2)\n2. add(3, 4)\n3. scale(5, factor=3)\n4. anything()\n')
    assert plan.node("1").args == {"a": 1, "b": 2}
    assert plan.node("2").args == {"a": 3, "b": 4}
    assert plan.node("3").args == {"value": 5, "factor": 3}
    assert plan.node("4").args == {}


def test_literal_values() -> None:
    plan = parse("1. anything(value=[1, -2.5, (True, None)], extra={'k': {'n': 'v'}})")
    assert plan.node("1").args == {"value": [1, -2.5, (True, None)], "extra": {"k": {"n": "v"}}}


@pytest.mark.parametrize(("written", "ref"), [
    ('"$1"', Ref("1")),
    ("'${1}'", Ref("1")),
    ('"$1.hits[0].title"', Ref("1", ("hits", 0, "title"))),
    ('"$1[2]"', Ref("1", (2,))),
    ("$1", Ref("1")),
    ("${1}", Ref("1")),
    ("$1.hits[0].title", Ref("1", ("hits", 0, "title"))),
    ("$1[-1]", Ref("1", (-1,))),
])
def test_refs_quoted_and_unquoted(written: str, ref: Ref) -> None:
    plan = parse(f'1. search("x")\n2. anything(value={written})\n')
    assert plan.node("2").args == {"value": ref}


def test_unquoted_refs_nested_and_positional() -> None:
    plan = parse('1. search("x")\n2. search("y")\n'
                 "3. anything([$1, {'a': ($2.hits, $1[0])}], $2)\n")
    assert plan.node("3").args == {
        "value": [Ref("1"), {"a": (Ref("2", ("hits",)), Ref("1", (0,)))}],
        "extra": Ref("2"),
    }


def test_dollars_inside_strings_are_left_alone() -> None:
    plan = parse('1. search("x")\n'
                 '2. anything(value="see $1", extra=["$$5", \'costs $1\', "$1 and $1"])\n')
    assert plan.node("2").args == {"value": "see $1",
                                   "extra": ["$5", "costs $1", "$1 and $1"]}
    assert plan.node("2").refs == ()


def test_forward_refs_are_allowed() -> None:
    plan = parse('1. merge(parts=[$2])\n2. search("x")\n')
    assert plan.node("1").needs == {"2"}


def test_multi_line_calls() -> None:
    plan = parse(
        "Thought: gather\n"
        '1. search(\n'
        '     query="a (tricky) one",  # a comment with ( in it\n'
        ")\n"
        "2. merge(parts=[\n"
        '     $1,\n'
        '     """multi\n'
        'line ) text""",\n'
        "   ])\n"
        "3. add(1,\n"
        "       2)\n"
    )
    assert plan.node("1").args == {"query": "a (tricky) one"}
    assert plan.node("2").args == {"parts": [Ref("1"), "multi\nline ) text"]}
    assert plan.node("3").args == {"a": 1, "b": 2}


def test_windows_line_endings() -> None:
    plan = parse('Thought: x\r\n1. search("a")\r\n2. merge(parts=[\r\n$1])\r\n')
    assert plan.node("2").args == {"parts": [Ref("1")]}


def test_join_ends_the_plan() -> None:
    plan = parse(EXAMPLE + '5. search("never")\nnot even a call\n')
    assert [n.id for n in plan] == ["1", "2", "3"]


def test_end_of_plan_marker() -> None:
    plan = parse('1. search("a")\n<END_OF_PLAN>\ngarbage\n')
    assert len(plan) == 1


def test_join_is_an_ordinary_call_when_it_is_a_tool() -> None:
    @tool
    def join(parts: list[Any]) -> str:
        """Join parts."""
        return "".join(map(str, parts))

    plan = parse('1. search("a")\n2. join([$1])\n3. search("b")\n', [search, join])
    assert [n.id for n in plan] == ["1", "2", "3"]
    assert plan.node("2").tool is join


# --- problems --------------------------------------------------------------------------------


def test_unknown_tool_lists_known_tools() -> None:
    error = problems_of('1. serch("a")\n')
    assert codes(error) == ["unknown_tool"]
    assert error.problems[0].node == "1"
    assert "add, anything, merge, scale, search" in error.problems[0].message
    assert "did you mean 'search'" in error.problems[0].message


def test_stray_line_is_a_syntax_problem_with_its_line_number() -> None:
    error = problems_of('Thought: x\n1. search("a")\nI will now search\n')
    assert codes(error) == ["syntax"]
    assert "line 3" in error.problems[0].message


@pytest.mark.parametrize(("call", "fragment"), [
    ('search("a"', "never closed"),
    ("search(query=)", "cannot parse"),
    ('search("a") + 1', "expected a call"),
    ('tools.search("a")', "expected a call"),
    ("search(x)", "not a literal"),
    ("search(**{'query': 'a'})", "write name=value"),
    ("search(*['a'])", "not a literal"),
    ('search("$1[x]")', "not a valid reference"),
    ("search(query=1 if True else 2)", "not a literal"),
])
def test_unparseable_calls(call: str, fragment: str) -> None:
    error = problems_of(f"1. {call}\n")
    assert codes(error) == ["syntax"]
    assert fragment in error.problems[0].message
    assert error.problems[0].node == "1"


def test_arguments_are_never_evaluated() -> None:
    # were the argument evaluated, SystemExit would end the test run
    error = problems_of("1. anything(value=__import__('sys').exit(3))\n")
    assert codes(error) == ["syntax"]


def test_too_many_positional_arguments() -> None:
    error = problems_of("1. add(1, 2, 3)\n2. scale(1, 2)\n")
    assert codes(error) == ["bad_arguments", "bad_arguments"]
    assert "at most 2 positional argument(s) (a, b), got 3" in error.problems[0].message
    assert "at most 1 positional argument(s) (value), got 2" in error.problems[1].message


def test_argument_given_twice() -> None:
    error = problems_of("1. add(1, a=2, b=3)\n")
    assert codes(error) == ["bad_arguments"]
    assert "'a' is given both by position and by name" in error.problems[0].message


def test_wrong_argument_type() -> None:
    error = problems_of('1. add("one", 2)\n')
    assert codes(error) == ["bad_arguments"]


def test_duplicate_number() -> None:
    error = problems_of('1. search("a")\n1. search("b")\n')
    assert codes(error) == ["duplicate_id"]
    assert "line 2" in error.problems[0].message


def test_dangling_ref_and_cycle() -> None:
    assert codes(problems_of('1. merge(parts=[$7])\n')) == ["dangling_ref"]
    assert codes(problems_of("1. anything($2)\n2. anything($1)\n")) == ["cycle"]


def test_every_problem_at_once_in_line_order() -> None:
    text = (
        "Thought: many mistakes\n"
        '1. search(7)\n'
        "2. lookup($1)\n"
        "this line is chatter\n"
        '3. add(1, 2, 3)\n'
        "4. search(\n"
        '5. merge(parts=[$2, $4, $9])\n'
        "6. join()\n"
    )
    error = problems_of(text)
    # problems tied to a line come in line order, then the plan's own (arguments, refs)
    assert codes(error) == ["unknown_tool", "syntax", "bad_arguments", "syntax",
                            "bad_arguments", "dangling_ref"]
    messages = [p.message for p in error.problems]
    assert [m[:7] for m in messages[:4]] == ["line 3:", "line 4:", "line 5:", "line 6:"]
    assert error.problems[4].node == "1"
    assert "$9" in messages[5]
    # $2 (unknown tool) and $4 (unparseable) are not reported again as dangling refs
    assert not any("$2 " in m or "$4 " in m for m in messages)


def test_unclosed_call_at_the_end() -> None:
    error = problems_of('1. search("a")\n2. merge(parts=[$1,\n')
    assert codes(error) == ["syntax"]
    assert "never closed" in error.problems[0].message


# --- streaming -------------------------------------------------------------------------------


def test_feed_returns_calls_once_their_line_is_complete() -> None:
    parser = PlanTextParser(TOOLS)
    assert parser.feed("Thought: go\n1. search(") == []
    assert parser.feed('"a")') == []
    [first] = parser.feed("\n2. merge(parts=[\n")
    assert first == ParsedCall("1", "search", ("a",), {}, 2)
    [second] = parser.feed("  $1])\n3. join()\n")
    assert second.kwargs == {"parts": [Ref("1")]} and second.line == 3
    assert parser.done
    assert parser.feed('4. search("late")\n') == []
    assert parser.close() == []
    assert parser.problems == []


def test_close_completes_the_last_line() -> None:
    parser = PlanTextParser(TOOLS)
    assert parser.feed('1. search("a")') == []
    assert [c.id for c in parser.close()] == ["1"]
    with pytest.raises(ValueError, match="closed"):
        parser.feed("more")


def test_parsed_call_binds_to_its_tool() -> None:
    [call] = PlanTextParser().feed("1. add(1, b=$0)\n")
    assert call.bind(TOOLS) == (add, {"a": 1, "b": Ref("0")})
    with pytest.raises(PlanError) as info:
        call.bind([search])
    assert codes(info.value) == ["unknown_tool"]


STREAM_TEXTS = [
    EXAMPLE,
    'Thought: x\r\n1. search(\r\n  "a (b)"\r\n)\r\n2. merge(parts=[$1, "$$1",\r\n  $1.hits])\r\n',
    '1. search("a")\nbad line\n2. merge(parts=[\n"""x\n)"""])\n3. add(1,\n4. add(1, 2)\n5. add(',
    "1. anything({'k': [$1, '#not a comment']})  # comment\n\n2. join()\n3. nope()",
]


@given(st.sampled_from(STREAM_TEXTS), st.lists(st.integers(0, 200), max_size=12))
def test_streaming_in_any_chunks_matches_whole_text(text: str, cuts: list[int]) -> None:
    whole = PlanTextParser(TOOLS)
    expected = whole.feed(text) + whole.close()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    parser = PlanTextParser(TOOLS)
    got: list[ParsedCall] = []
    for start, end in itertools.pairwise(bounds):
        got += parser.feed(text[start:end])
    got += parser.close()
    assert got == expected
    assert parser.problems == whole.problems


# --- cost grows linearly with the text -------------------------------------------------------


def long_call(lines: int) -> str:
    """One call spread over ``lines`` lines, as a planner streaming a long list writes it."""
    return "1. merge(parts=[\n" + "".join(f'  "part {i}",  # note\n' for i in range(lines)) + "])\n"


def long_string(lines: int) -> str:
    """One call whose triple-quoted argument spans ``lines`` lines."""
    return '1. search("""\n' + "".join(f"line {i} with 'quotes' and $1\n" for i in range(lines)) \
        + '""")\n'


def one_long_line(lines: int) -> str:
    return "1. merge(parts=[" + "".join(f'"part {i}", ${i % 7 + 2}, ' for i in range(lines)) \
        + "])\n" + "".join(f"{n}. search('x')\n" for n in range(2, 9))


def feed_all(text: str, step: int) -> list[ParsedCall]:
    parser = PlanTextParser(TOOLS)
    calls = [call for i in range(0, len(text), step) for call in parser.feed(text[i:i + step])]
    calls += parser.close()
    assert not parser.problems, parser.problems
    return calls


def counted_calls(action: Any) -> int:
    """How many Python and builtin function calls ``action()`` makes: a measure of work that,
    unlike wall time, does not depend on the machine's load."""
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


SHAPES = [long_call, long_string, one_long_line]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("step", [1, 7, 1 << 30])
def test_parsing_work_grows_linearly(shape: Any, step: int) -> None:
    small, large = shape(500), shape(2000)
    assert len(feed_all(large, step)) >= 1
    work_small = counted_calls(lambda: feed_all(small, step))
    work_large = counted_calls(lambda: feed_all(large, step))
    # four times the text: four times the work, give or take; a rescan per line would be 16x
    assert work_large < 6 * work_small, (work_small, work_large)


@pytest.mark.parametrize("shape", SHAPES)
def test_parsing_time_grows_linearly(shape: Any) -> None:
    def best_time(text: str) -> float:
        times = []
        for _ in range(3):
            began = time.process_time()  # CPU time: what other processes take does not count
            parse_plan_text(text, TOOLS)
            times.append(time.process_time() - began)
        return min(times)

    small, large = best_time(shape(1000)), best_time(shape(8000))
    # eight times the text: linear is ~8x, quadratic ~64x; the margin absorbs a busy machine
    assert large < 24 * small + 0.05, (small, large)


def test_a_call_over_2500_lines_parses_fast() -> None:
    began = time.process_time()  # CPU time: what other processes take does not count
    plan = parse_plan_text(long_call(2500), TOOLS)
    assert time.process_time() - began < 2  # took 20 s when every line rescanned the call
    assert len(plan.node("1").args["parts"]) == 2500


@pytest.mark.parametrize("written", ["$1[" + "9" * 5000 + "]", '"$1[' + "9" * 5000 + ']"'])
def test_an_item_index_of_thousands_of_digits_is_a_plan_problem(written: str) -> None:
    # int() refused its 5,000 digits with a ValueError, which escaped the parse
    error = problems_of(f'1. search("x")\n2. search({written})\n3. join()')
    assert codes(error) == ["syntax"]
    assert "not a valid reference" in str(error)
