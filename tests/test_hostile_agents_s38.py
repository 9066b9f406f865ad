"""Hostile agents, subagents, structured output and approvals, found in session 38."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import sys
import threading
import time
import unicodedata
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.output import OutputSpec
from shoal.approvals.policy import ApprovalRequest, Decision, Rule, RulesApprover
from shoal.cli.approver import ConsoleApprover, _Lines
from shoal.cli.safe import MAX_MARKS, clean, exact_json_view
from shoal.models.base import ModelResponse, ToolCall
from shoal.outcome import jsonable
from shoal.testing import ScriptedModel, run_virtual
from tests.conftest import arun
from tests.test_approvals import console_approver, request, review
from tests.test_found_s37 import _from_a_thread

FINISH = "Thought: done.\nAction: Finish(done)"


@shoal.tool
async def _echo(x: str) -> str:
    """Echo x."""
    return f"e:{x}"


def test_a_replan_cut_off_at_the_token_limit_tells_the_planner_so() -> None:
    # a plain answer cut off says so (AgentResult.cut_off); a Replan(...) cut off mid-reason
    # reached the next planner turn as if its reason were whole
    cut = ModelResponse(text="Thought: no.\nAction: Replan(the search for 'b' failed becau",
                        stop_reason="length")
    model = ScriptedModel(["1. _echo('a')\n2. join()", cut, "2. _echo('b')\n3. join()",
                           FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[_echo], mode="plan", max_replans=1)
    result = run_virtual(agent.run("go"))
    assert result.output == "done"
    told = model.requests[2].messages[-1].content
    assert ("Note: the reply asking for a new plan was cut off at the model's limit of "
            "output tokens (stop reason 'length'), so its reason may be incomplete") in told
    assert "Number the new calls from 2 on." in told


def test_a_whole_replan_has_no_cut_off_note() -> None:
    whole = "Thought: no.\nAction: Replan(the search for 'b' is missing)"
    model = ScriptedModel(["1. _echo('a')\n2. join()", whole, "2. _echo('b')\n3. join()",
                           FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[_echo], mode="plan", max_replans=1)
    run_virtual(agent.run("go"))
    assert "cut off" not in model.requests[2].messages[-1].content


class _Reading(pydantic.BaseModel):
    x: float


class _Big(pydantic.BaseModel):
    n: int
    note: str


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1.5E+999", "NaN", "Infinity",
                                     "-Infinity", "1" + "0" * 400])
def test_a_float_field_refuses_what_json_cannot_hold(literal: str) -> None:
    # pydantic reads 1e400 (and a 400-digit integer) as inf, and NaN/Infinity as well
    with pytest.raises(ValueError, match="which is no finite number"):
        OutputSpec.of(_Reading).parse(f'{{"x": {literal}}}')


def test_finite_numbers_long_integers_and_strings_that_look_infinite_still_pass() -> None:
    assert OutputSpec.of(_Reading).parse('{"x": 1e308}').x == 1e308
    big = "9" * 400
    out = OutputSpec.of(_Big).parse(f'{{"n": {big}, "note": "1e400 NaN Infinity"}}')
    assert out.n == int(big) and out.note == "1e400 NaN Infinity"


def test_an_agent_told_its_infinite_answer_does_not_fit_answers_again() -> None:
    model = ScriptedModel(['{"x": 1e400}', '{"x": 2.5}'])
    agent = shoal.Agent(name="a", model=model, output_type=_Reading)
    result = run_virtual(agent.run("go"))
    assert result.output.x == 2.5
    told = model.requests[1].messages[-1].content
    assert "the answer holds 1e400, which is no finite number" in told


# ---- a KeyboardInterrupt of a value's own code, on a loop off the main thread --------------


def _interrupting_merge(merged: Any, value: Any) -> Any:
    raise KeyboardInterrupt("raised by the merge")


@shoal.tool
async def _write_k(board: shoal.BoardHandle) -> str:
    """Write k."""
    board.write("k", 1)
    return "wrote"


@shoal.tool
async def _kept(value: Any) -> str:
    """Return kept."""
    return "kept"


@dataclasses.dataclass
class _InterruptsWhenCopied:  # a dataclass argument is deep-copied for its call
    def __deepcopy__(self, memo: Any) -> Any:
        raise KeyboardInterrupt("raised by __deepcopy__")


def _assert_only_that_call_failed(result: object, bad: Any, sibling: Any) -> None:
    assert isinstance(result, shoal.RunResult), result  # was: KeyboardInterrupt
    out = result[bad]
    assert out.status == "failed" and out.error is not None, out
    assert "raised KeyboardInterrupt on a run's loop away from the main thread" in (
        out.error.message)
    assert result.value(sibling) == "kept"


def test_a_merge_functions_keyboard_interrupt_off_the_main_thread_fails_its_call() -> None:
    # was: the whole run stopped, as for a Ctrl-C, though none reaches a thread's loop (a
    # tool's own KeyboardInterrupt there fails only its call)
    board = shoal.Board(k=shoal.merge.using(_interrupting_merge))
    plan = shoal.Plan()
    bad = plan.call(_write_k)
    sibling = plan.call(_kept, value=1)
    result = _from_a_thread(lambda: shoal.run_sync(plan, board=board))
    _assert_only_that_call_failed(result, bad, sibling)
    assert board.snapshot() == {"k": None}  # nothing committed


def test_a_values_deepcopy_keyboard_interrupt_off_the_main_thread_fails_its_call() -> None:
    plan = shoal.Plan()
    bad = plan.call(_kept, value=_InterruptsWhenCopied())
    sibling = plan.call(_kept, value=[1])
    result = _from_a_thread(lambda: shoal.run_sync(plan))
    _assert_only_that_call_failed(result, bad, sibling)


def test_a_merge_functions_keyboard_interrupt_on_the_main_thread_still_stops_the_run() -> None:
    board = shoal.Board(k=shoal.merge.using(_interrupting_merge))
    plan = shoal.Plan()
    plan.call(_write_k)
    with pytest.raises(KeyboardInterrupt):
        shoal.run_sync(plan, board=board)


# ---- rules over a large argument value --------------------------------------------------------


def _request(value: Any) -> ApprovalRequest:
    return ApprovalRequest("r", "run", "n", "t", jsonable({"data": value}), "h", "n", "why")


_RULES = RulesApprover([Rule("deny", "t", args={"data": "*secret*"}),
                        Rule("allow", "t", args={"data": "*"})])


def test_rules_over_a_4_mb_list_decide_in_a_fraction_of_a_second() -> None:
    # was ~3.5 s a decision (on the loop): the arguments, JSON-ready already, went through
    # canonical_json's conversion and checks, and every string through a per-character walk
    value = [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(70_000)]
    request = _request(value)
    started = time.perf_counter()
    decision = _RULES.decide(request)
    assert decision is not None and decision.verdict == "approve"
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize("bad", ["a/../b", "a\\..\\b", "line\nbreak", "nel\u0085", "ls\u2028",
                                 "del\x7f"])
def test_an_allow_rules_glob_still_refuses_a_parent_segment_or_control_character_in_a_list(
        bad: str) -> None:
    # the quick scan of the JSON text must not let these through
    for value in ([{"k": "fine"}, {"k": bad}], {bad: 1}, [[["x", bad]]]):
        assert _RULES.decide(_request(value)) is None, (bad, value)


def test_values_json_dumps_refuses_are_still_matched_through_canonical_json() -> None:
    secret = RulesApprover([Rule("deny", "t", args={"data": "*secret*"})])
    for value in ({"a": float("nan"), "b": "secret"}, {"n": 10**5000, "s": "secret"}):
        request = ApprovalRequest("r", "run", "n", "t", {"data": value}, "h", "n", "why")
        decision = secret.decide(request)
        assert decision is not None and decision.verdict == "deny", value


# ---- "zalgo": long runs of combining marks ---------------------------------------------------

_ZALGO = "e" + "\u0301\u0316\u0489" * 100  # 300 marks stacked on one letter


def test_clean_keeps_a_few_combining_marks_in_a_row_and_escapes_the_rest() -> None:
    # they passed as printable: stacked hundreds high, they drew over the lines around them
    shown = clean(f"path {_ZALGO} end")
    marks = [c for c in shown if unicodedata.category(c) in ("Mn", "Me")]
    assert len(marks) == MAX_MARKS
    assert shown.startswith("path e\u0301\u0316\u0489\u0301\\u0316\\u0489\\u0301")
    assert shown.endswith("\\u0489 end")
    # text of scripts that need a few marks in a row is left as it is
    for written in ("Tiếng Việt", "क्षत्रिय", "שָׁלוֹם", "e\u0301\u0316\u0489\u0301"):
        assert clean(written) == written


def test_the_console_approver_shows_a_zalgo_argument_legibly() -> None:
    approver, out, _ = console_approver("v\nd\n")
    got = review(approver, request(path=_ZALGO), request(path="b"))
    assert [d.verdict for d in got] == ["deny", "deny"]
    text = out.getvalue()
    for line in text.splitlines():
        assert sum(unicodedata.category(c) in ("Mn", "Me") for c in line) <= MAX_MARKS, line
    assert "\\u0489" in text  # the rest are there, as escapes
    view, whole = exact_json_view({"path": _ZALGO})
    assert whole and json.loads(view) == {"path": _ZALGO}  # the same value, as JSON


# ---- a console approver on a pipe the program read from before -------------------------------


def test_answers_left_in_the_text_buffer_by_the_programs_own_read_are_read() -> None:
    # the program read its first line (Python's text stream took all the bytes in the pipe);
    # the answers sat in the stream's buffer, where select cannot see them: the question
    # waited for good (the pipe stays open, as a wrapper feeding answers keeps it)
    from rich.console import Console

    read, write = os.pipe()
    stream = os.fdopen(read, "r")
    os.write(write, b"first\ny\nn\nbad\ny")  # the last line comes in two parts
    try:
        assert stream.readline() == "first\n"
        approver = ConsoleApprover(Console(file=io.StringIO(), width=120, color_system=None),
                                   stream)

        async def main() -> list[Decision]:
            got = [*await approver.review([request(path="a")]),
                   *await approver.review([request(path="b")])]
            asyncio.get_running_loop().call_later(0.3, os.write, write, b"\n")
            return [*got, *await approver.review([request(path="c")])]

        got = arun(main(), timeout=20)
        assert [d.verdict for d in got] == ["approve", "deny", "approve"]
        assert got[1].reason == "denied by a person: bad"
    finally:
        os.close(write)
        stream.close()


class _HeldTerminal:
    """A terminal, as far as the approver can tell, whose reads wait until released.

    It reads a real pipe: ``select`` sees its lines come. A read held lets a test end the
    question between ``select`` seeing a line and the line being read.
    """

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self.stream = stream
        self.reading = threading.Event()
        self.release = threading.Event()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def readline(self) -> str:
        self.reading.set()
        self.release.wait(10)
        return self.stream.readline()


def test_a_line_typed_for_a_question_that_ended_does_not_answer_the_next() -> None:
    # was: the "y" typed as the first question timed out was read after it ended and taken
    # as the answer to the next question, approving a call nobody said yes to
    read, write = os.pipe()
    stream = os.fdopen(read, "r")
    held = _HeldTerminal(stream)
    lines = _Lines(held)  # type: ignore[arg-type]  # (it reads only what _HeldTerminal has)

    async def main() -> str | None:
        first = asyncio.ensure_future(lines.readline())
        await asyncio.sleep(0.05)
        os.write(write, b"y\n")  # typed for the first question
        # select saw it: the thread is reading it now
        assert await asyncio.to_thread(held.reading.wait, 10)
        first.cancel()  # the first question ends (it timed out)
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(lines.readline())
        await asyncio.sleep(0.05)
        held.release.set()  # the read made for the first question ends now
        await asyncio.sleep(0.2)
        os.write(write, b"n\n")  # typed for the second question
        return await asyncio.wait_for(second, 10)

    try:
        assert arun(main(), timeout=30) == "n"
    finally:
        held.release.set()
        os.close(write)


# ---- an output_type whose own validator calls sys.exit() ---------------------------------------


class _Exits(pydantic.BaseModel):
    x: int

    @pydantic.field_validator("x")
    @classmethod
    def _check(cls, x: int) -> int:
        if x == 1:
            sys.exit(3)
        return x


def test_an_output_types_sys_exit_fails_the_agent_not_the_program() -> None:
    # was: SystemExit out of agent.run (a tool's sys.exit() fails only its call)
    agent = shoal.Agent(name="a", model=ScriptedModel(['{"x": 1}']), output_type=_Exits)
    with pytest.raises(shoal.ShoalError, match=r"own validation code raised SystemExit\(3\)"):
        run_virtual(agent.run("go"))


def test_a_subagents_output_type_sys_exit_fails_only_its_call() -> None:
    sub = shoal.Agent(name="sub", model=ScriptedModel(['{"x": 1}']), output_type=_Exits)
    asks = ModelResponse(tool_calls=(ToolCall("c1", "sub", '{"task": "x"}'),))
    lead = shoal.Agent(name="lead", model=ScriptedModel([asks, "went on"]), subagents=[sub])
    result = run_virtual(lead.run("go"))
    assert result.output == "went on"
    (record,) = result.calls
    assert record.status == "failed"
    assert "SystemExit(3)" in record.message.content


def test_a_cost_budget_of_infinity_is_no_limit_even_for_a_model_without_a_price() -> None:
    # infinity passes the check as "no limit" (as a deadline's does), but the first reply of
    # a model of unknown price ended the tree: "budget cost limit of inf cannot be held"
    agent = shoal.Agent(name="a", model=ScriptedModel(["hi"]),
                        budget=shoal.Budget(cost=float("inf")))
    assert run_virtual(agent.run("go")).output == "hi"


def test_a_printed_line_caps_a_run_of_marks_split_by_colour_codes() -> None:
    # the live view cleaned each styled part apart: one colour per mark kept all 300
    from rich.console import Console

    from shoal.cli.live import _printed_line

    colours = ["\x1b[31m", "\x1b[32m"]
    line = "e" + "".join(f"{colours[i % 2]}\u0301" for i in range(300)) + "\x1b[0m end"
    shown = _printed_line(Console(file=io.StringIO(), width=120), line.encode()).plain
    assert sum(unicodedata.category(c) in ("Mn", "Me") for c in shown) == MAX_MARKS
    assert shown.endswith("\\u0301 end")


# ---- an approver's KeyboardInterrupt on a loop off the main thread ----------------------------


def _interrupting_approver(request: ApprovalRequest) -> Decision:
    raise KeyboardInterrupt("raised by the approver")


@shoal.tool(approval=True)
async def _guarded(path: str) -> str:
    """Needs approval."""
    return f"ran {path}"


def test_an_approvers_keyboard_interrupt_off_the_main_thread_denies_its_calls() -> None:
    # was: the whole run stopped, as for a Ctrl-C, though none reaches a thread's loop (a
    # tool's own KeyboardInterrupt there fails only its call; an approver's SystemExit denies)
    plan = shoal.Plan()
    guarded = plan.call(_guarded, path="x")
    sibling = plan.call(_kept, value=1)
    result = _from_a_thread(lambda: shoal.run_sync(plan, approver=_interrupting_approver))
    assert isinstance(result, shoal.RunResult), result  # was: KeyboardInterrupt
    out = result[guarded]
    assert out.status == "denied", out
    assert "raised KeyboardInterrupt: raised by the approver away from the main thread" in (
        out.reason)
    assert result.value(sibling) == "kept"
