"""A hostile user of the composition layer, third sweep: cancels, deep values, grammars.

Each test gives what a new or hostile user would (a cancel at the moment a batch of calls
waits for the journal, a deeply nested task beside a ref, call bounds of the wrong kind) and
checks every call still ends in a recorded outcome of its own, or the refusal is a typed shoal
error raised where the mistake is made.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError, PlanError, StoreError, ToolDefinitionError
from shoal.models.base import ToolSpec
from shoal.patterns import fan_out, reflect
from shoal.plangrammar import plan_grammar
from shoal.plantext import parse_plan_text
from shoal.store.base import OutcomeRecord, Record
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests.conftest import arun


@shoal.tool
async def slow() -> str:
    """Wait a long time (it is cancelled first)."""
    await asyncio.sleep(3600)
    return "slow"


@shoal.tool
def sibling() -> str:
    """A call beside the cancelled one."""
    return "kept"


# -- a cancel while a batch of calls waits for the journal ------------------------------------


def test_cancelling_a_call_waiting_for_the_journal_leaves_its_batch_alone(
        tmp_path: Path) -> None:
    # the calls a decision starts wait for the journal on one shared future; a call
    # cancelled while it waited cancelled that future, and with it every other call of the
    # batch: the sibling failed with "tool 'sibling' raised CancelledError, but nothing
    # cancelled its call" (a pattern's or agent's node cancelled did the same to its
    # neighbours)
    path = tmp_path / "journal.db"
    SQLiteStore(path).close()

    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(store=SQLiteStore(path))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process writing: the commit must wait
        try:
            plan = shoal.Plan()
            cancelled = plan.call(slow)
            plan.call(sibling)
            handle = runtime.start(plan)
            for _ in range(50):  # both calls started, waiting for the journal's commit
                await asyncio.sleep(0)
            handle.cancel(cancelled.node)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        result = await handle
        await runtime.aclose()
        return result

    result = arun(main())
    assert [(o.node_id, o.status) for o in result] == [
        ("slow#1", "cancelled"), ("sibling#1", "ok")]
    assert result.value("sibling#1") == "kept"


# -- a deeply nested value beside a ref --------------------------------------------------------


def nested(depth: int) -> object:
    """A list ``depth`` levels deep (past Python's recursion limit)."""
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def bottom(value: object) -> object:
    """What a :func:`nested` value holds at its bottom (walked without recursion)."""
    while isinstance(value, list):
        value = value[0]
    return value


@shoal.tool
def first() -> int:
    """A value for a ref."""
    return 1


@shoal.tool
def both(deep: object, near: object) -> str:
    """What the deep argument holds at its bottom, and the ref's value."""
    return f"{bottom(deep)} {near}"


def test_a_deep_argument_holding_no_ref_beside_a_ref_is_passed_as_when_alone() -> None:
    # with a ref in another argument, every argument was walked to put refs' values in, and
    # the deep one (no ref in it) failed the call: "argument 'deep' holds refs nested deeper
    # than Python's recursion limit"; alone, the same value ran. A reflect loop's critic
    # (task and a ref to the draft) failed so for a deep task, after the worker had run
    plan = shoal.Plan()
    alone = plan.call(both, deep=nested(10_000), near=0)
    beside = plan.call(both, deep=nested(10_000), near=plan.call(first))
    result = shoal.run_sync(plan)
    assert result.value(alone) == "bottom 0"
    assert result.value(beside) == "bottom 1"
    # a deep argument that does hold a ref still fails its call, saying so
    deep_ref = shoal.Plan()
    value: object = deep_ref.call(first)
    for _ in range(10_000):
        value = [value]
    failing = deep_ref.call(both, deep=value, near=0)
    outcome = shoal.run_sync(deep_ref)[failing]
    assert outcome.status == "failed" and "holds refs nested deeper" in str(outcome.error)


def test_a_reflect_loop_on_a_deeply_nested_task_runs_its_critic() -> None:
    writer = shoal.Agent(name="writer", model=ScriptedModel.per_prompt({"*": ["a draft"]}))
    critic = shoal.Agent(name="critic", model=ScriptedModel.per_prompt({"*": ["ACCEPT"]}))
    done = reflect(writer, critic).run_sync(nested(10_000))
    assert (done.output, done.accepted, done.rounds) == ("a draft", True, 1)


# -- a plan grammar given what is no spec, or call bounds of the wrong kind --------------------


@shoal.tool
def search(query: str, limit: int = 3) -> str:
    """Search for the query."""
    return query


def test_a_plan_grammar_over_tools_lets_the_plan_pass_their_arguments() -> None:
    # a Tool's .parameters (a set of names) was read as an empty schema: the grammar let a
    # model write search() only, never search(query=...), which the tool needs
    rule = next(line for line in plan_grammar([search], max_calls=1).splitlines()
                if line.startswith("tool-1-at-1 ::="))
    assert '"query=" string' in rule
    assert plan_grammar([search]) == plan_grammar([
        ToolSpec(search.name, search.description, search.json_schema())])
    assert plan_grammar(s for s in [search]) == plan_grammar([search])  # any iterable


@pytest.mark.parametrize(("specs", "message"), [
    ("search", "takes a list of tool specs .* got str 'search'"),
    ({"search": search}, "takes a list of tool specs .* got dict"),
    (5, "takes a list of tool specs .* got int 5"),
    (["search"], "each tool is a shoal.models.ToolSpec.* got str 'search'"),
    ([ToolSpec(["s"], "", {})], "each tool is a shoal.models.ToolSpec"),  # type: ignore[arg-type]
])
def test_a_plan_grammar_over_what_is_no_tool_is_a_config_error(specs: Any, message: str) -> None:
    # an AttributeError ('str' object has no attribute 'name'), or for a dict its keys read
    with pytest.raises(ConfigError, match=message):
        plan_grammar(specs)


@pytest.mark.parametrize("bound", [2.0, 10.5, "10", None, True],
                         ids=["2.0", "10.5", "str", "None", "True"])
def test_plan_grammar_call_bounds_of_the_wrong_kind_are_config_errors(bound: Any) -> None:
    # max_calls=2.0 raised TypeError "'float' object cannot be interpreted as an integer",
    # "10" and None a TypeError of '<='; True (and min_calls=2.0) were taken as numbers
    for name in ("max_calls", "min_calls"):
        with pytest.raises(ConfigError, match=f"{name} is a whole number of calls, got "):
            plan_grammar([search], **{name: bound})
    with pytest.raises(ConfigError, match="max_calls=<a whole number of about 5,001 digits>"):
        plan_grammar([search], max_calls=10**5000)


def test_a_schema_naming_a_number_too_long_to_write_takes_any_value() -> None:
    # an enum or const of an int past 4,300 digits raised ValueError ("Exceeds the limit for
    # integer string conversion"); a list among the required names raised "unhashable type"
    for schema in ({"enum": [10**5000]}, {"const": -(10**5000)}):
        spec = ToolSpec("pick", "Pick.", {"type": "object", "properties": {"n": schema},
                                          "required": ["n", ["n"]]})
        rule = next(line for line in plan_grammar([spec], max_calls=1).splitlines()
                    if line.startswith("tool-1-at-1 ::="))
        assert rule == 'tool-1-at-1 ::= "pick(" "n=" value-at-1 ")"'


# -- a merge function raising KeyboardInterrupt inside an agent's tree --------------------------


def _interrupting(merged: object, value: object) -> object:
    raise KeyboardInterrupt


@shoal.tool
def note(fact: str, board: shoal.BoardHandle) -> str:
    """Note a fact on the board."""
    board.write("facts", fact)
    return "noted"


def test_a_merge_functions_keyboard_interrupt_stops_an_agents_tree_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # the interrupt left the driver before the call's end was recorded: the agent's steps
    # run still counted the call as running, and stopping the tree waited 5 s for it, then
    # logged "tool 'reader' of node reader#1 ignored its cancellation for 5 s" (and the same
    # of the fan-out) and "task(s) that ignore their cancellation were abandoned"
    readers = [shoal.Agent(name=f"reader{i}", tools=[note], model=ScriptedModel.per_prompt(
        {"*": [[call("note", fact=f"fact {i}")], "done"]})) for i in range(3)]
    board = shoal.Board(facts=shoal.merge.using(_interrupting))
    with pytest.raises(KeyboardInterrupt):
        fan_out(*readers).run_sync("read", board=board)
    assert "ignored its cancellation" not in caplog.text
    assert "abandoned" not in caplog.text
    assert board["facts"] is None  # nothing was merged


# -- a cancel of the wait for an open run's end ------------------------------------------------


@shoal.tool
async def quick() -> str:
    """Done at once."""
    return "done"


def test_a_timeout_firing_while_an_open_run_ends_keeps_every_outcome() -> None:
    # the block's end awaited the run's own task: the timeout's cancel cancelled that task,
    # the run ended with no result, and run.result said "has not ended yet" (quick#1's 'ok'
    # lost with the rest)
    async def block(opened: list[shoal.OpenRun]) -> None:
        async with asyncio.timeout(2), shoal.Runtime().open_run() as run:
            opened.append(run)
            run.call(quick)
            run.call(slow)

    async def main() -> shoal.OpenRun:
        opened: list[shoal.OpenRun] = []
        with pytest.raises(TimeoutError):
            await block(opened)
        return opened[0]

    run = arun(main(), virtual=True)
    assert [(o.node_id, o.status) for o in run.result] == [
        ("quick#1", "ok"), ("slow#1", "cancelled")]
    assert "the wait for the open run's end was cancelled" in run.result["slow#1"].reason


def test_a_second_cancel_while_an_open_run_stops_leaves_its_result_to_read() -> None:
    # Ctrl-C twice: the first stops the run (its nodes cancelled, each saying why); the
    # second, while the block waited for them, cancelled the run's task: no result at all
    @shoal.tool
    async def lingering() -> str:
        """Takes a while to stop."""
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # cleaning up
            raise
        return "never"

    async def body(opened: asyncio.Future[shoal.OpenRun]) -> None:
        async with shoal.Runtime().open_run() as run:
            run.call(quick)
            run.call(lingering)
            opened.set_result(run)
            await asyncio.sleep(3600)

    async def main() -> shoal.OpenRun:
        opened: asyncio.Future[shoal.OpenRun] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(body(opened))
        run = await opened
        await asyncio.sleep(0.5)
        task.cancel()  # the first Ctrl-C
        await asyncio.sleep(0.5)
        task.cancel()  # the second, while lingering#1 cleans up
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(asyncio.shield(run.handle.as_future()), 3)
        return run

    run = arun(main(), virtual=True)
    assert [(o.node_id, o.status) for o in run.result] == [
        ("quick#1", "ok"), ("lingering#1", "cancelled")]


# -- a model request cancelled while the price data loads ---------------------------------------


_PRICES_LOADING = """
import asyncio
from shoal.models.prices import catalog_loading

async def main() -> None:
    cancelled, kept = catalog_loading(), catalog_loading()  # two agents' first requests
    assert cancelled is not None and kept is not None
    waits = [asyncio.ensure_future(asyncio.wait_for(f, 60)) for f in (cancelled, kept)]
    await asyncio.sleep(0)
    waits[0].cancel()  # one agent of a fan-out cancelled
    await waits[1]
    print("kept")

asyncio.run(main())
"""


def test_a_request_cancelled_while_the_price_data_loads_leaves_the_others_waiting() -> None:
    # each request's wait was chained to the one load: a cancel of one cancelled the load,
    # so a sibling agent's request failed with CancelledError (nothing had cancelled it),
    # and the loading thread died on stderr with InvalidStateError: CANCELLED (in a fresh
    # process: the data loads once per process)
    done = subprocess.run([sys.executable, "-c", _PRICES_LOADING], capture_output=True,
                          text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "kept"), done.stderr
    assert "InvalidStateError" not in done.stderr


# -- an argument made of shared parts ----------------------------------------------------------


def shared(levels: int) -> list[object]:
    """Lists nine wide holding one list nine times, ``levels`` deep: few objects, 9**n items."""
    value: list[object] = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


@shoal.tool
def size(value: object, also: object = None) -> int:
    """How many leaves ``value`` holds (counted once per distinct list: 9 per level)."""
    count = 1
    while isinstance(value, list):
        count, value = count * len(value), value[0]
    return count


@pytest.mark.timeout(60)
def test_an_argument_of_shared_parts_costs_its_parts_not_its_expansion() -> None:
    # plan.call walked about ten million items for refs (8 s each call, on the caller's
    # thread), and a call with a ref beside it put the refs' values in by walking the
    # whole expansion, 390 million items, on the event loop (minutes: the run hung); a
    # list seen twice is now walked once, as when the value is copied for the call
    plan = shoal.Plan()
    alone = plan.call(size, value=shared(8))
    beside = plan.call(size, value=shared(8), also=plan.call(first))
    within = plan.call(size, value=[shared(8), plan.call(first)])
    result = shoal.run_sync(plan)
    assert result.value(alone) == result.value(beside) == 9**9
    assert result.value(within) == 2 * 9**9


# -- a local model's plan bound, checked where it is given ---------------------------------


@pytest.mark.parametrize(("bound", "message"), [
    (2.5, "plan_calls is a whole number of calls, got float 2.5"),
    (True, "plan_calls is a whole number of calls, got bool True"),
    ("10", "plan_calls is a whole number of calls, got str '10'"),
    (0, "a plan grammar needs 1 <= plan_calls <= 999, got plan_calls=0"),
], ids=["2.5", "True", "str", "0"])
def test_a_local_models_plan_bound_of_the_wrong_kind_is_refused_when_it_is_made(
        monkeypatch: pytest.MonkeyPatch, bound: Any, message: str) -> None:
    # plan_calls=2.5 or True passed the constructor's range check, and failed only at the
    # first plan request (in plan_grammar); "10" raised TypeError. The constructor now runs
    # the grammar's own check. Every part of the local extra counts as installed: the bound
    # is checked before the server (the model file) is looked at, so no llama_cpp is needed
    from shoal.models.local import LocalModel

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: real(name, *a) or ModuleSpec(name, None))
    with pytest.raises(ConfigError, match=message):
        LocalModel(plan_calls=bound)


# -- an object whose __shoal_node__ gives no tool ----------------------------------------------


class NotANode:
    """Says it is a plan node, but its ``__shoal_node__`` gives what is no tool."""

    def __shoal_node__(self) -> Any:
        """Text, not the :class:`shoal.Tool` a plan runs."""
        return "a tool, honestly"


def test_a_shoal_node_that_gives_no_tool_is_refused_naming_what_it_gave() -> None:
    # plan.call(obj) took the string as the node's tool, and failed later with
    # AttributeError: 'str' object has no attribute 'spec' (no word of the object)
    with pytest.raises(ToolDefinitionError,
                       match=r"NotANode .*__shoal_node__\(\) returned str 'a tool, honestly', "
                             r"not a shoal.Tool"):
        shoal.Plan().call(NotANode(), task="x")

    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            run.call(NotANode(), task="x")

    with pytest.raises(ToolDefinitionError, match="__shoal_node__"):
        arun(main())


# -- an open run that ends with an error of its own --------------------------------------------


class UnwritableJournal(MemoryStore):
    """A journal whose outcomes cannot be written (a full disk): the run stops with it."""

    def write(self, records: Sequence[Record]) -> None:
        """Refuse every batch holding an outcome."""
        if any(isinstance(record, OutcomeRecord) for record in records):
            raise OSError("disk full")
        super().write(records)


def test_an_open_run_ended_by_its_journal_says_so_in_its_result() -> None:
    # the block raised the StoreError, but run.result then said the run "has not ended
    # yet: read its result after its 'async with' block", which it was
    async def main() -> shoal.OpenRun:
        run = shoal.Runtime(store=UnwritableJournal()).open_run()
        with pytest.raises(StoreError, match="disk full"):
            async with run:
                run.call(sibling)
        return run

    run = arun(main())
    for _ in range(2):  # read twice: the same error, noted once
        with pytest.raises(StoreError, match="disk full") as raised:
            run.result  # noqa: B018  # the property raises
        notes = [note for note in raised.value.__notes__ if "ended with this error" in note]
        assert len(notes) == 1 and run.run_id in notes[0]
    assert run.handle.done()


# -- plan text holding what a Python string cannot hold raw ------------------------------------


@pytest.mark.parametrize(("char", "fix"), [
    ("\r", r"a raw carriage return .*: plan text cannot hold it raw; write it as \\r$"),
    ("\x00", r"a NUL .*: plan text cannot hold it raw; write it as \\x00$"),
    ("\ud800", r"a lone surrogate \\ud800 .*: it is half of a character, which no value may "
               r"hold; write the character itself$"),
], ids=["CR", "NUL", "surrogate"])
def test_plan_text_with_a_raw_unwritable_character_in_a_string_says_what_to_write(
        char: str, fix: str) -> None:
    # the problem said "unterminated string literal", "source code string cannot contain
    # null bytes" or "'utf-8' codec can't encode character '\ud800'": nothing of what to
    # change; the character is named, where it is, and what to write instead
    text = f'Thought: look\n1. search(query="ok")\n2. search(query="a{char}b", limit=1)\n3. join()'
    with pytest.raises(PlanError) as raised:
        parse_plan_text(text, [search])
    assert len(raised.value.problems) == 1
    assert re.search(r"line 3: " + fix.replace(" .*", r" inside a quoted string, after "
                                                    r"'search\(query=\"a'"), str(raised.value))
    # in a call over several lines, the line it is on
    lines = f'1. search(\n  query="ok",\n  limit="a{char}b",\n)\n2. join()'
    with pytest.raises(PlanError, match=r"line 1: .*\(line 3\), after 'limit=\"a'"):
        parse_plan_text(lines, [search])


def test_plan_text_with_an_escaped_carriage_return_or_nul_passes_it_on() -> None:
    # written as the problem says, the tool gets the character
    for char, escape in (("\r", r"\r"), ("\x00", r"\x00")):
        plan = parse_plan_text(f'1. search(query="a{escape}b")\n2. join()', [search])
        assert plan.nodes[0].args["query"] == f"a{char}b"


def test_plan_text_wrong_for_another_reason_too_keeps_pythons_message() -> None:
    # a call that a raw \r is not all that is wrong with is not blamed on the \r
    with pytest.raises(PlanError, match="cannot parse") as raised:
        parse_plan_text('1. search(query="a\rb",, limit=1)\n2. join()', [search])
    assert "carriage return" not in str(raised.value)


# -- a board merge that yields --------------------------------------------------------------


def yielded(total: int, value: int) -> Any:
    """A merge written with ``yield``: calling it runs nothing."""
    yield total + value


class YieldingMerge:
    """A merge object whose ``__call__`` yields."""

    def __call__(self, total: int, value: int) -> Any:
        """Yield the sum instead of returning it."""
        yield total + value


@pytest.mark.parametrize("merge_fn", [yielded, YieldingMerge()], ids=["function", "__call__"])
def test_a_generator_merge_function_is_refused_when_the_board_is_declared(merge_fn: Any) -> None:
    # it was taken: the key then held a generator never run (not the sum), and every call
    # writing to it succeeded, as an async merge function once did
    with pytest.raises(ConfigError, match=r"board key 'total'.*generator function.*return the "
                                          r"value instead of yielding it"):
        shoal.Board(total=merge_fn)
    with pytest.raises(TypeError, match="generator function"):
        shoal.merge.using(merge_fn, initial=0)


def test_a_merge_function_returning_a_generator_fails_the_call_and_keeps_the_board() -> None:
    board = shoal.Board(total=shoal.merge.using(lambda total, value: (n for n in [total, value]),
                                                initial=0))

    @shoal.tool
    def add(board: shoal.BoardHandle) -> None:
        board.write("total", 1)

    plan = shoal.Plan()
    plan.call(add)
    error = shoal.run_sync(plan, board=board)["add#1"].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "returned a generator (generator), not the merged value" in error.message
    assert board["total"] == 0


def test_an_open_runs_stream_ended_by_its_journal_says_so_in_its_result() -> None:
    # the stream raised the StoreError, and its result then said "the stream has not ended
    # yet: read it after 'async for item in stream' ends", which it had
    async def main() -> shoal.EventStream[shoal.RunResult]:
        run = shoal.Runtime(store=UnwritableJournal()).open_run()
        stream = run.events()
        run.call(sibling)
        run.close()
        with pytest.raises(StoreError, match="disk full"):
            async for _ in stream:
                pass
        return stream

    stream = arun(main())
    with pytest.raises(StoreError, match="disk full") as raised:
        stream.result  # noqa: B018  # the property raises
    assert "the stream's run ended with this error" in raised.value.__notes__[-1]


# -- patterns nested deep --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_pipeline_nested_past_the_recursion_limit_passes_on_its_last_steps_output() -> None:
    # what a pipeline passes on was found by recursing into its last step: a pipeline of a
    # pipeline of ... 1,100 deep failed its run with a bare RecursionError (a fan-out or a
    # reflect loop nested as deep ran); the path is now found by a loop
    writer = shoal.Agent(name="writer", model=ScriptedModel.per_prompt({"*": ["a draft"]}))
    critic = shoal.Agent(name="critic", model=ScriptedModel.per_prompt({"*": ["ACCEPT"]}))
    step: Any = reflect(writer, critic)
    for _ in range(1_100):
        step = shoal.patterns.pipeline(step)
    assert step.output_path == ("output",)  # the draft of the reflect loop at the bottom
    done = step.run_sync("write")  # each level's task is the level below's draft
    assert (done.output, done.accepted) == ("a draft", True)


def test_an_open_run_left_open_when_its_loop_ended_says_it_was_stopped() -> None:
    # never closed, the run's task was cancelled as its loop ended; run.result said it
    # "has not ended yet: read its result after its 'async with' block", which never comes
    async def main() -> shoal.OpenRun:
        run = shoal.Runtime().open_run()
        run.call(slow)
        return run  # the loop ends with the run open

    run = arun(main(), virtual=True, check_tasks=False)
    assert run.handle.done()
    with pytest.raises(shoal.RunNotEndedError, match=r"was stopped before its end: its task "
                                                     r"was cancelled .*partial_result\(\)"):
        run.result  # noqa: B018  # the property raises
    assert run.handle.partial_result()["slow#1"].status == "cancelled"


@pytest.mark.parametrize("char", ["\x00", "\ud800"], ids=["NUL", "surrogate"])
def test_plan_text_with_an_unwritable_character_between_arguments_says_to_remove_it(
        char: str) -> None:
    # outside any string nothing can hold it: the problem does not say it is in a string,
    # nor to escape it there
    with pytest.raises(PlanError, match=r"line 1: a (NUL|lone surrogate \\ud800) outside any "
                                        r"quoted string, after 'search\(query=\"a\",': "
                                        r"remove it$"):
        parse_plan_text(f'1. search(query="a",{char} limit=1)\n2. join()', [search])


# -- flags of the wrong kind -----------------------------------------------------------------


def test_force_or_here_that_is_no_flag_is_a_config_error() -> None:
    # force="no" was taken as true: a resume went ahead over a run that another process
    # seemed to run (the very case force= exists to guard); here="no" started the run
    # without a task of its own
    runtime = shoal.Runtime(store=MemoryStore())
    plan = shoal.Plan("flags")
    plan.call(sibling)
    done = runtime.run_sync(plan)
    for flag in ("no", 1, None):
        with pytest.raises(ConfigError, match=r"force takes True or False, got "):
            runtime.resume_sync(done.run_id, plan, force=flag)

    async def main(**flags: Any) -> None:
        async with runtime.open_run(**flags) as run:
            run.call(sibling)

    for name in ("force", "here"):
        with pytest.raises(ConfigError, match=f"{name} takes True or False, got str 'no'"):
            arun(main(**{name: "no"}))

    agent = shoal.Agent(name="writer", model=ScriptedModel(["done"]))

    async def resumed() -> None:
        await agent.resume("some-run", "write", runtime=runtime, force="no")

    with pytest.raises(ConfigError, match="force takes True or False, got str 'no'"):
        arun(resumed())


def test_a_board_key_declared_in_the_mapping_and_as_a_keyword_is_refused() -> None:
    # the keyword's rule silently replaced the mapping's: a key meant to collect every
    # finding (append) kept a counter, and writes of findings failed as "not a number"
    with pytest.raises(ConfigError, match="board key 'count' is declared twice"):
        shoal.Board({"count": shoal.merge.append}, count=shoal.merge.counter)
    board = shoal.Board({"found": shoal.merge.append}, count=shoal.merge.counter)
    assert set(board.rules) == {"found", "count"}


@pytest.mark.parametrize("writer", [b"seed", 5, None], ids=["bytes", "int", "None"])
def test_a_board_writer_that_is_no_text_is_refused(writer: Any) -> None:
    # it was kept as a side of the conflicts it took part in: to_dict(), "JSON-ready", then
    # failed (Object of type bytes is not JSON serializable)
    board = shoal.Board(verdict=shoal.merge.last_writer)
    with pytest.raises(shoal.exceptions.ArgumentTypeError, match="writer= names who wrote, "
                                                                 "as text"):
        board.write("verdict", "ship", writer=writer)
    assert board["verdict"] is None and not board.conflicts  # nothing was written


def test_a_board_writer_of_a_str_subclass_is_its_text() -> None:
    class Name(str):
        """A name with code of its own."""

    board = shoal.Board(verdict=shoal.merge.last_writer)
    board.write("verdict", "ship", writer=Name("seed"))
    board.write("verdict", "wait", writer="judge")
    [conflict] = board.conflicts
    assert conflict.writers == ("seed", "judge") and type(conflict.writers[0]) is str
    json.dumps(conflict.to_dict())
