"""Hostile plans against the planner (mode="plan") and plan text, found in session 37."""

from __future__ import annotations

import re
from typing import Any

import pytest

import shoal
from shoal.exceptions import PlanError
from shoal.plantext import parse_plan_text
from shoal.testing import ScriptedModel, run_virtual

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


def test_the_planner_rejects_a_call_whose_string_holds_a_raw_carriage_return() -> None:
    plan = '1. echo("""a\rb""")\n2. echo("ok")\n3. join()'
    agent = shoal.Agent(name="p", model=ScriptedModel([plan, FINISH]), tools=[echo],
                        mode="plan")
    result = run_virtual(agent.run("go"))
    (first, second) = _calls(result)
    assert first[:2] == ("1", "rejected") and "write it as \\r" in first[2]
    assert second == ("2", "ok", "'ok'")
