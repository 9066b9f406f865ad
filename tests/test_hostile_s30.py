"""Hostile input the earlier sweeps missed: each gets a typed error naming what is wrong, or
(for a call a model or an SDK response made) an error result, never a stray exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.testing import call
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]


# One value shared by every test (none changes it): a dozen built at import cost each worker
# 0.5 s CPU at collection, and 1.2 million lists for its every full garbage collection to walk.
@functools.cache
def _deep(depth: int = 100_000) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


@shoal.tool
def echo(x: Any = None) -> Any:
    """Give ``x`` back."""
    return x


@pytest.mark.parametrize("name", [5, b"plan", math.nan, ["a"], {"a": 1}, _Unprintable()])
def test_a_plan_name_that_is_not_text_is_refused_as_the_plan_is_made(name: Any) -> None:
    # it was kept, and the run failed later with a StoreError from SQLite's binding (or
    # a NOT NULL constraint, for NaN) once a journal wrote the run
    with pytest.raises(ConfigError, match="a plan's name must be a str, got"):
        shoal.Plan(name)


def test_a_plan_named_none_has_no_name() -> None:
    assert shoal.Plan(None).name == ""  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [[1], "plan", None, _cycle()])
def test_analyze_refuses_what_is_not_a_plan(value: Any) -> None:
    # an AttributeError ('list' object has no attribute 'memo') before
    with pytest.raises(ConfigError, match=r"analyze takes a shoal\.Plan, got"):
        shoal.analyze(value)


@pytest.mark.parametrize("arguments", [
    {"x": _cycle()}, {"x": _deep()}, {"x": _Unprintable()}, {"x": 10**5000}, _deep(),
])
def test_anthropic_inputs_json_cannot_hold_answer_their_call_only(arguments: Any) -> None:
    # the whole batch raised (ValueError, RecursionError, TypeError): the other call lost
    blocks = [{"type": "tool_use", "id": "bad", "name": "echo", "input": arguments},
              {"type": "tool_use", "id": "good", "name": "echo", "input": {"x": 7}}]
    message = shoal.anthropic_tool_results_sync(blocks, tools=[echo])
    bad, good = message["content"]
    assert bad["tool_use_id"] == "bad" and bad["is_error"]
    assert "arguments JSON cannot hold" in bad["content"]
    assert good == {"type": "tool_result", "tool_use_id": "good", "content": "7",
                    "is_error": False}


@pytest.mark.parametrize("arguments", [_deep(), _Unprintable(), _cycle()])
def test_openai_arguments_that_are_not_text_answer_their_call_only(arguments: Any) -> None:
    # str() of them raised (RecursionError, the object's own RuntimeError) for the batch
    calls = [{"id": "bad", "type": "function",
              "function": {"name": "echo", "arguments": arguments}},
             {"id": "good", "type": "function",
              "function": {"name": "echo", "arguments": '{"x": 7}'}}]
    bad, good = shoal.openai_tool_messages_sync(calls, tools=[echo])
    assert bad["tool_call_id"] == "bad" and bad["content"].startswith("Error: ")
    assert good == {"role": "tool", "tool_call_id": "good", "content": "7"}


def test_openai_arguments_given_as_a_mapping_are_read_as_json() -> None:
    # str() made Python's repr of the dict, which is not JSON: the call was refused
    calls = [{"id": "1", "type": "function", "function": {"name": "echo", "arguments": {"x": 7}}}]
    assert shoal.openai_tool_messages_sync(calls, tools=[echo])[0]["content"] == "7"


def test_ids_and_names_whose_str_raises_still_answer_the_call() -> None:
    blocks = [{"type": "tool_use", "id": _Unprintable(), "name": "echo", "input": {"x": 1}},
              {"type": "tool_use", "id": "good", "name": _Unprintable(), "input": {}}]
    first, second = shoal.anthropic_tool_results_sync(blocks, tools=[echo])["content"]
    assert "repr failed with RuntimeError" in first["tool_use_id"]
    assert first["content"] == "1" and second["is_error"]


def test_a_scripted_call_nested_too_deep_is_a_value_error() -> None:
    # a RecursionError from json.dumps before
    with pytest.raises(ValueError, match="nested too deeply to write as JSON"):
        call("echo", x=_deep())


_MISFITS = [_deep(), _Unprintable()]
_AGENT = shoal.Agent(name="a", model="local")


@pytest.mark.parametrize("make", [
    lambda v: shoal.Agent(name="a", model="local", subagents=v),
    lambda v: shoal.Agent(name="a", model="local", tools=v),
    lambda v: shoal.Agent(name="a", model="local", isolation=v),
    lambda v: shoal.Agent(name="a", model="local", max_turns=v),
    lambda v: shoal.Agent(name="a", model="local", output_type=v),
    lambda v: shoal.RulesApprover(v),
    lambda v: shoal.RulesApprover([v]),
    lambda v: shoal.CallbackApprover(v),
    lambda v: shoal.Decision(v),
    lambda v: shoal.Board(cast(Any, {v: shoal.merge.append})) if isinstance(v, _Unprintable)
    else shoal.Board(v),
    lambda v: shoal.Runtime(max_concurrency=v),
    lambda v: shoal.Runtime(approver=v),
    lambda v: shoal.JsonlSink(v),
    lambda v: shoal.tool(v),
    lambda v: shoal.tool(reads=v)(echo.fn),
    lambda v: shoal.tool(resources=v)(echo.fn),
    lambda v: shoal.tool(timeout=v)(echo.fn),
    lambda v: shoal.patterns.reflect(_AGENT, _AGENT, max_rounds=v),
    lambda v: shoal.run_sync(shoal.Plan(), board=v),
])
@pytest.mark.parametrize("value", _MISFITS, ids=["100000_deep", "unprintable"])
def test_a_misfit_whose_repr_fails_is_still_named_in_a_typed_error(make: Any, value: Any
                                                                    ) -> None:
    # the message quoted the value with repr(): a RecursionError, or the value's own
    # RuntimeError, came out instead of the ConfigError
    with pytest.raises((ConfigError, shoal.ToolDefinitionError)) as raised:
        make(value)
    message = str(raised.value)
    assert "[[[[...]]]]" in message or "repr failed with RuntimeError" in message
    assert len(message) < 1000


@pytest.mark.parametrize("after", [[_deep()], _deep(), [_Unprintable()], _Unprintable(), [5],
                                   [None]])
def test_after_names_nodes_by_ref_or_id_only(after: Any) -> None:
    # str() of each item (a RecursionError, the item's own error), or a node "5" to wait for
    with pytest.raises(TypeError, match="after= takes"):
        shoal.Plan().call(echo, x=1, after=after)


def test_after_an_object_whose_equality_raises_is_a_type_error() -> None:
    class Touchy(_Unprintable):
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no eq")

        __hash__ = object.__hash__

    with pytest.raises(TypeError, match="after= takes a ref, a node id or several"):
        shoal.Plan().call(echo, x=1, after=cast(Any, Touchy()))


def test_a_plan_file_naming_an_object_whose_repr_fails_is_a_bad_import(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # `shoal run` printed a traceback: the bad_import message quoted the object with repr()
    (tmp_path / "s30_misfits.py").write_text(
        "class Thing:\n    def __repr__(self):\n        raise RuntimeError('no repr')\n"
        "thing = Thing()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from shoal.planfile import plan_from_dict

    with pytest.raises(shoal.PlanError) as raised:
        plan_from_dict({"nodes": [{"id": "a", "tool": "s30_misfits:thing"}]})
    [problem] = raised.value.problems
    assert problem.code == "bad_import"
    assert "Thing <Thing: repr failed with RuntimeError>" in problem.message


@pytest.mark.parametrize("default", [_cycle(), list(range(1_000_000))],
                         ids=["cycle", "a_million_items"])
def test_a_tool_whose_default_holds_itself_or_is_huge_is_made_at_once(default: Any) -> None:
    # the check for a default_factory walked the default value too: a list holding itself
    # looped for ever (memory growing), a huge one cost a walk of every item
    namespace: dict[str, Any] = {}
    exec("def f(x=DEFAULT):\n    return len(x)\n", {"DEFAULT": default}, namespace)
    made = shoal.tool(namespace["f"])
    plan = shoal.Plan()
    ref = plan.call(made)
    assert shoal.run_sync(plan)[ref].value == len(default)


def test_a_default_too_deep_to_copy_is_a_plan_problem() -> None:
    # pydantic copies a mutable default for each call: a RecursionError came out of run_sync
    namespace: dict[str, Any] = {}
    exec("def f(x=DEFAULT):\n    return 1\n", {"DEFAULT": _deep()}, namespace)
    plan = shoal.Plan()
    plan.call(shoal.tool(namespace["f"]))
    with pytest.raises(shoal.PlanError) as raised:
        shoal.run_sync(plan)
    [problem] = raised.value.problems
    assert problem.code == "bad_arguments" and "nested too deeply to check" in problem.message


def test_a_default_factory_is_still_found_beside_a_default_holding_itself() -> None:
    import pydantic

    cycle = _cycle()
    fresh: Any = pydantic.Field(default_factory=list)

    def f(x: list[Any] = cycle, y: list[int] = fresh) -> int:
        return len(y)

    from shoal.schema import model_facts

    assert model_facts(shoal.tool(f)._model).fresh_defaults is True


_PLAN = '{"nodes": [{"id": "one", "tool": "tests.plan_tools:add", "args": {"a": 1, "b": 2}}]}'


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_plan_file_that_is_a_fifo_written_once_runs_and_is_journaled(tmp_path: Path) -> None:
    # the plan was read through the FIFO, then read again for the journal's copy: that second
    # open waited for a writer that never came, the run started and hung for ever
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)

    def write_once() -> None:
        with open(fifo, "w", encoding="utf-8") as stream:  # waits for shoal to open it
            stream.write(_PLAN)

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
        done = run_cli(["run", "plan.json", "--json"], cwd=tmp_path, env=env, timeout=30)
    finally:
        _unblock(fifo, writer)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcomes"][0]["value"] == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_resume_reads_a_plan_file_become_a_fifo_as_empty_not_waiting(tmp_path: Path) -> None:
    # `shoal resume` read the recorded plan file with a blocking open: a FIFO in its place
    # hung the command
    from shoal.cli.journal import _plan_text

    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    found: list[tuple[str | None, str]] = []
    reader = threading.Thread(target=lambda: found.append(_plan_text(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    waited = reader.is_alive()
    _unblock(fifo, reader, write=True)
    assert not waited and found == [("", "")]


def _unblock(fifo: Path, thread: threading.Thread, *, write: bool = False) -> None:
    """End a thread still blocked opening ``fifo`` (the bug): open the other end once."""
    if not thread.is_alive():
        return
    flags = (os.O_WRONLY if write else os.O_RDONLY) | os.O_NONBLOCK
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, flags))
    thread.join(5)


class _Unshowable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@shoal.tool(isolation="process")
async def _raises_unshowable() -> None:
    raise _Unshowable()


@shoal.tool(isolation="process")
async def _leaves_a_task_running() -> str:
    import asyncio

    asyncio.get_running_loop().create_task(asyncio.sleep(60))  # ended as the call returns
    return "done"


def test_an_async_tool_s_error_whose_repr_raises_keeps_its_type_in_a_worker() -> None:
    # asyncio.run's own Ctrl-C handler, looked up on the way out, repr'd the task and so the
    # error: 'RuntimeError: no repr' was recorded instead (threads said _Unshowable)
    plan = shoal.Plan()
    failing = plan.call(_raises_unshowable)
    other = plan.call(_leaves_a_task_running)
    result = shoal.run_sync(plan)
    assert result[failing].status == "failed"
    error = result[failing].error
    assert error is not None and error.type.endswith("_Unshowable")
    assert result[other].value == "done"


@pytest.mark.parametrize("key", [_deep(), None, 1.5, True, ("a",)])
def test_a_ref_is_indexed_by_field_or_index_only(key: Any) -> None:
    # kept as a path part: the ref's repr recursed (a 100,000-deep list), reading it failed
    plan = shoal.Plan()
    ref = plan.call(echo, x=1)
    with pytest.raises(TypeError, match=r"takes a field name or an index"):
        ref[key]


@pytest.mark.parametrize("key", [_deep(), None, 5])
def test_a_result_is_looked_up_by_ref_or_id_only(key: Any) -> None:
    # an AttributeError ('list' object has no attribute 'node') before
    with pytest.raises(TypeError, match="looked up by ref or node id"):
        shoal.run_sync(shoal.Plan())[key]


def test_insert_takes_a_node_only() -> None:
    # an AttributeError ('list' object has no attribute 'id') before
    with pytest.raises(TypeError, match="insert takes a Node"):
        shoal.Plan().insert(_deep())  # type: ignore[arg-type]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class _NoReprNoEq:
    """A value whose repr and equality raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = object.__hash__


def test_a_deadline_too_big_for_a_float_is_a_config_error() -> None:
    with pytest.raises(shoal.ConfigError, match="deadline must be positive"):
        shoal.run_sync(shoal.Plan(), deadline=10**400)


@pytest.mark.parametrize("make", [
    lambda bad: shoal.Runtime(executor=bad), lambda bad: shoal.Runtime(store=bad)],
    ids=["executor", "store"])
@pytest.mark.parametrize("bad", [_nested(100_000), _NoReprNoEq()], ids=["deep", "unprintable"])
def test_a_runtime_names_a_misfit_executor_or_store_in_a_config_error(
        make: Callable[[Any], Any], bad: Any) -> None:
    with pytest.raises(shoal.ConfigError):
        make(bad)


@pytest.mark.parametrize("bad", [None, [], -1, True, b"runs.db"])
def test_a_sqlite_journal_s_path_that_is_no_path_is_refused_making_no_file(
        bad: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(shoal.ConfigError, match="path is a str or a path"):
        shoal.SQLiteStore(bad)
    assert list(tmp_path.iterdir()) == []


@shoal.tool
async def _waits_for_ever() -> str:
    """Run until cancelled."""
    await asyncio.sleep(3600)
    return "never"


def test_a_run_cancelled_by_an_anyio_cancel_scope_is_journaled_cancelled(
        tmp_path: Path) -> None:
    """An anyio scope cancels every await within it, over and over (as the MCP SDK cancels
    a handler): the run's drain and journal close still finish, and nothing is left running."""
    import anyio

    store = shoal.SQLiteStore(tmp_path / "runs.db")

    async def main() -> tuple[str, str, int]:
        runtime = shoal.Runtime(store=store)
        plan = shoal.Plan()
        plan.call(_waits_for_ever)
        tasks = len(asyncio.all_tasks())
        with anyio.move_on_after(0.2):
            await runtime.run(plan, run_id="scoped")
        for _ in range(500):  # the drain and close finish in a task of their own
            record = store.get_run("scoped")
            left = len(asyncio.all_tasks()) - tasks
            if record is not None and record.status != "running" and left == 0:
                break
            await asyncio.sleep(0.01)
        outcome = store.outcomes("scoped")["_waits_for_ever#1"].outcome
        await runtime.aclose()
        assert record is not None
        return record.status, outcome.status, left

    assert asyncio.run(main()) == ("cancelled", "cancelled", 0)
