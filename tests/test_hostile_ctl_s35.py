"""Hostile tests of session 35: descriptor limits, agent-tree reads, approvals, limits, board."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import shoal
from shoal import ApprovalRequest, Approver, Decision, Plan, Rule, RulesApprover
from shoal.agents.settle import in_doubt_calls
from shoal.cli.app import app
from shoal.cli.tree import agent_status, not_ok_word
from shoal.exceptions import OpenFilesLimitError
from shoal.store.base import nested_run_ids
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from shoal.timeline.journal import nested_runs
from tests import process_tools as pt
from tests.cli_process import run_cli
from tests.conftest import arun
from tests.hostile_ctl_s35_tools import SocketHungryModel, read_missing

ROOT = Path(__file__).resolve().parent.parent


# ---- open_files: a limit the tools' files or the model's connections reach --------------------


def test_a_tools_files_reaching_its_workers_open_files_limit_say_what_to_give() -> None:
    # was: the tool failed with the bare "OSError: [Errno 24] Too many open files"
    limited = pt.open_many.options(limits={"open_files": 32})
    plan = Plan()
    few = plan.call(limited, count=5)
    many = plan.call(limited, count=100, after=few)
    result = shoal.run_sync(plan, process_workers=1)
    assert result[few].value == 5
    error = result[many].error
    assert result[many].status == "failed" and error is not None
    assert error.type == "shoal.exceptions.OpenFilesLimitError"
    message = error.message
    assert "limits open_files=32 was reached in the worker process running tool 'open_many'" in (
        message)
    assert "Too many open files" in message and "file descriptors of its own" in message
    assert "give a larger open_files (at least 64" in message


def test_a_tools_own_oserror_is_left_as_it_is_under_an_open_files_limit() -> None:
    plan = Plan()
    missing = plan.call(read_missing.options(limits={"open_files": 64}))
    error = shoal.run_sync(plan, process_workers=1)[missing].error
    assert error is not None and error.type == "FileNotFoundError"


def test_a_models_connections_reaching_a_process_agents_limit_say_what_to_give() -> None:
    # was: the agent failed with "ModelError: ... cannot connect: [Errno 24] Too many open
    # files", which names no limit
    lead = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"]})
    reader = shoal.Agent(name="reader", model=SocketHungryModel(100), isolation="process",
                         limits={"open_files": 64})
    result = shoal.Agent(name="lead", model=lead, subagents=[reader]).run_sync("go")
    [failed] = result.calls
    text = str(failed.message.content)
    assert failed.status == "failed", text
    assert "OpenFilesLimitError: limits open_files=64 was reached in the process of agent " in (
        text)
    assert "lead/reader#1" in text and "Too many open files" in text
    assert "give a larger open_files (at least 256" in text
    roomy = shoal.Agent(name="reader", model=SocketHungryModel(10), isolation="process",
                        limits={"open_files": 64})
    lead = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"]})
    ok = shoal.Agent(name="lead", model=lead, subagents=[roomy]).run_sync("go")
    assert [c.status for c in ok.calls] == ["ok"]


def test_a_process_agent_whose_model_cannot_be_made_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: a traceback on stderr and "the process running agent lead/reader#1 died: exit
    # code 1" (its model's key set here, but not passed to its process: no env=)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    lead = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"]})
    reader = shoal.Agent(name="reader", model="openai:gpt-4.1-mini", isolation="process")
    result = shoal.Agent(name="lead", model=lead, subagents=[reader]).run_sync("go")
    [failed] = result.calls
    text = str(failed.message.content)
    assert failed.status == "failed"
    assert "the process for agent lead/reader#1 could not start: MissingAPIKeyError" in text
    assert "give env=['OPENAI_API_KEY'] to pass the key by name" in text


_STARVED = """
import shoal
from shoal.testing import ScriptedModel, call
for limit in (2, 3, 4):
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "r1": ["r1 done"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process",
                         limits={"open_files": limit})
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    print(result.calls[0].status)
"""


def test_a_process_agent_starved_of_descriptors_prints_nothing_on_stderr() -> None:
    # was: "Exception ignored in: <function BaseEventLoop.__del__ ...> AttributeError:
    # '_UnixSelectorEventLoop' object has no attribute '_ssock'" on stderr, from the event
    # loop left half built when its wake-up pipe could not be made
    done = subprocess.run([sys.executable, "-c", _STARVED], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed"] * 3
    assert "Exception ignored" not in done.stderr and "AttributeError" not in done.stderr


# ---- an agent tree's runs read by their ids, not by listing the journal -----------------------


def _tree_journal(path: Path, others: list[str]) -> SQLiteStore:
    """A journal of agent tree ``tree`` (cancelled, as a killed run reads) among ``others``."""
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "*": ["read"]})
    lead = shoal.Agent(name="lead", model=model,
                       subagents=[shoal.Agent(name="reader", model=model)])
    store = SQLiteStore(path)
    lead.run_sync("go", runtime=shoal.Runtime(store=store), run_id="tree")
    for other in others:  # ids that sort next to the tree's, and one with a lone surrogate
        lead.run_sync("go", runtime=shoal.Runtime(store=store), run_id=other)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET status = 'cancelled' WHERE run_id LIKE 'tree/%'")
    return SQLiteStore(path)


_NEIGHBOURS = ["tree0", "tree.x", "tre", "tree-2", "tree\ud800"]


def test_an_agent_trees_runs_are_read_without_listing_every_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # was: in_doubt_calls and nested_runs read list_runs(2**62), every run of the journal:
    # shoal show of one agent tree on a journal of 100,000 runs took about 13 s (now 0.5 s)
    store = _tree_journal(tmp_path / "runs.db", _NEIGHBOURS)

    def listing(self: SQLiteStore, limit: int = 50) -> list[Any]:
        raise AssertionError(f"listed {limit} runs")

    monkeypatch.setattr(SQLiteStore, "list_runs", listing)
    expected = ["tree/lead/reader#1/steps", "tree/lead/steps"]
    assert [r.run_id for r in nested_runs(store, "tree")] == expected[::-1]  # oldest first
    assert store.nested_run_ids("tree") == sorted(expected)
    assert in_doubt_calls(store, "tree", None) == {}
    shown = CliRunner().invoke(app, ["show", "tree", "--store", str(tmp_path / "runs.db")])
    assert shown.exit_code == 0, shown.output
    assert "reader#1" in shown.output and "listed" not in shown.output
    store.close()


def test_nested_run_ids_keep_ids_with_lone_surrogates(tmp_path: Path) -> None:
    store = _tree_journal(tmp_path / "runs.db", [])
    store.close()
    others = _tree_journal(tmp_path / "other.db", ["tree\ud800"])
    assert others.nested_run_ids("tree\ud800") == [
        "tree\ud800/lead/reader#1/steps", "tree\ud800/lead/steps"]
    assert others.nested_run_ids("tree") == ["tree/lead/reader#1/steps", "tree/lead/steps"]
    assert others.nested_run_ids("tre") == []
    others.close()


def test_nested_run_ids_of_a_store_without_the_method_are_picked_from_its_runs() -> None:
    memory = MemoryStore()
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "*": ["read"]})
    lead = shoal.Agent(name="lead", model=model,
                       subagents=[shoal.Agent(name="reader", model=model)])
    for run_id in ["tree", *_NEIGHBOURS]:
        lead.run_sync("go", runtime=shoal.Runtime(store=memory), run_id=run_id)
    expected = ["tree/lead/reader#1/steps", "tree/lead/steps"]
    assert memory.nested_run_ids("tree") == expected

    class Plain:  # a store of one's own: no nested_run_ids
        def list_runs(self, limit: int = 50) -> list[Any]:
            return memory.list_runs(limit)

    assert nested_run_ids(Plain(), "tree") == expected  # type: ignore[arg-type]


# ---- an approver's own CancelledError --------------------------------------------------------


@shoal.tool(approval=True)
async def _pay(to: str, amount: int) -> str:
    return f"paid {amount} to {to}"


@shoal.tool
async def _free(x: int) -> int:
    await asyncio.sleep(1)
    return x


class _CancelledUnder(Approver):
    """An approver whose review awaits a task of its own that something else cancelled."""

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        inner = asyncio.ensure_future(asyncio.sleep(3600))
        asyncio.get_running_loop().call_soon(inner.cancel)
        await inner  # raises CancelledError here: nothing cancelled the review
        return [Decision.approve() for _ in batch]


async def _cancelled_under(approver: object) -> tuple[str, str, object]:
    plan = shoal.Plan()
    paid = plan.call(_pay, to="bob", amount=5)
    free = plan.call(_free, x=1)
    result = await shoal.Runtime(approver=approver).run(plan)  # type: ignore[arg-type]
    return result[paid].status, result[paid].reason, result[free].value


async def _raises_cancelled(request: ApprovalRequest) -> bool:
    raise asyncio.CancelledError


def _raises_cancelled_sync(request: ApprovalRequest) -> bool:
    raise asyncio.CancelledError


@pytest.mark.parametrize("approver", [
    _CancelledUnder(), _raises_cancelled, _raises_cancelled_sync,
    RulesApprover([], otherwise=_CancelledUnder())], ids=["review", "async", "sync", "rules"])
def test_an_approvers_own_cancelled_error_denies_rather_than_waiting_for_good(
        approver: object) -> None:
    # was: taken for a batch withdrawn meanwhile: the call waited for a decision for ever
    # (with no approval_timeout), and the run never ended
    status, reason, free = arun(_cancelled_under(approver), virtual=True)
    assert (status, free) == ("denied", 1)
    assert "CancelledError" in reason and ("failed" in reason or "raised" in reason), reason


# ---- a merge function raising KeyboardInterrupt ----------------------------------------------


def _interrupting(merged: object, value: object) -> object:
    raise KeyboardInterrupt


async def _writes(x: int, board: shoal.BoardHandle) -> int:
    board.write("k", x)
    return x


def test_a_merge_functions_keyboard_interrupt_stops_the_run_without_a_logged_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    # was: raised to the caller as Ctrl-C, and then logged again, with its traceback, as
    # "Task exception was never retrieved" (the attempt's task that raised it, left unread)
    board = shoal.Board(k=shoal.merge.using(_interrupting))
    plan = Plan()
    plan.call(shoal.tool(_writes), x=1)

    async def main() -> object:
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan, board=board)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_the_open_files_limit_error_is_an_oserror_too_and_pickles_whole() -> None:
    # so that what caught or retried the bare OSError (retry_on=OSError) still does
    error = OpenFilesLimitError("limits open_files=8 was reached", 8, 5)
    assert isinstance(error, OSError) and isinstance(error, shoal.ConfigError)
    assert error.errno == errno.EMFILE and str(error) == "limits open_files=8 was reached"
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.errno, again.limit, again.own) == (
        OpenFilesLimitError, str(error), errno.EMFILE, 8, 5)


def test_a_call_retried_on_oserror_is_retried_when_its_files_reach_the_limit() -> None:
    limited = pt.open_many.options(limits={"open_files": 32}, retries=1, retry_on=OSError,
                                   backoff=0.01)
    plan = Plan()
    many = plan.call(limited, count=100)
    outcome = shoal.run_sync(plan, process_workers=1)[many]
    assert outcome.status == "failed" and outcome.attempts == 2


# ---- a denied call is not shown as failed -----------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, cwd=ROOT, env={**os.environ, "COLUMNS": "160"}, timeout=60)


def test_an_agents_denied_call_is_said_denied_not_failed(tmp_path: Path) -> None:
    # was: "1 tool call (1 failed)" at the run's end, "ok, 1/1 call failed" in shoal runs and
    # shoal show, and "1 tool calls (1 failed)": a person's denial read as the tool breaking
    store = str(tmp_path / "runs.db")
    done = _cli("run", "tests/agent_models.py:payer", "pay ann", "--approve", "deny",
                "--store", store)
    assert done.returncode == 0, done.stderr
    assert "1 tool call (1 denied)" in done.stdout and "failed" not in done.stdout
    listed = _cli("runs", "--store", store)
    assert "ok, 1/1 call denied" in listed.stdout, listed.stdout
    run_id = SQLiteStore(tmp_path / "runs.db").list_runs(1)[0].run_id.split("/")[0]
    shown = _cli("show", run_id, "--store", store)
    assert "payer  ok, 1/1 call denied" in shown.stdout
    assert "1 tool call (1 denied)" in shown.stdout and "failed" not in shown.stdout


def test_calls_that_ended_in_several_ways_are_said_not_ok() -> None:
    assert not_ok_word(["ok", "denied", "denied"]) == "denied"
    assert not_ok_word(["timed_out", "ok"]) == "timed out"
    assert not_ok_word(["failed", "cancelled"]) == "not ok"
    assert agent_status("ok", 3, 2, not_ok_word(["failed", "denied", "ok"])) == (
        "ok, 2/3 calls not ok")


def test_a_tools_files_reaching_a_process_agents_limit_say_what_to_give() -> None:
    # was: the tool (run in the agent's process) failed with the bare "OSError: [Errno 24]
    # Too many open files", which its agent's model and the tree showed as it was
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "r1": [[call("open_many", count=200)], "r1 done"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process",
                         tools=[pt.open_many.options(isolation="thread")],
                         limits={"open_files": 64})
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [opened] = result.children[0].calls
    assert opened.status == "failed"
    text = str(opened.message.content)
    assert "OpenFilesLimitError: limits open_files=64 was reached in the process of agent " in (
        text)
    assert "Too many open files" in text


# ---- a rule's when that must be awaited ------------------------------------------------------


async def _async_check(args: Mapping[str, Any]) -> bool:
    return False


def test_a_rule_with_an_async_when_is_refused_when_written() -> None:
    # was: its coroutine, never awaited, was true: the allow rule approved every call
    with pytest.raises(shoal.ConfigError, match="a rule's when is a plain predicate"):
        Rule("allow", "_pay", when=_async_check)  # type: ignore[arg-type]


def test_a_rules_when_returning_a_coroutine_denies_rather_than_allows() -> None:
    def sneaky(args: Mapping[str, Any]) -> Any:
        return _async_check(args)

    async def main() -> tuple[str, str]:
        plan = Plan()
        paid = plan.call(_pay, to="bob", amount=5)
        approver = RulesApprover([Rule("allow", "_pay", when=sneaky)])
        result = await shoal.Runtime(approver=approver).run(plan)
        return result[paid].status, result[paid].reason

    status, reason = arun(main(), virtual=True)
    assert status == "denied" and "could not be checked" in reason and "awaited" in reason


# ---- a tool's approval predicate: async, or answering with a hostile truth value -------------


class _NoTruth:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


def _hostile_answer(args: Mapping[str, Any]) -> Any:
    return _NoTruth()


def _awaitable_answer(args: Mapping[str, Any]) -> Any:
    return _async_check(args)


@pytest.mark.parametrize(("predicate", "why"), [
    (_hostile_answer, "raised RuntimeError: no truth value"),
    (_awaitable_answer, "to be awaited, not an answer")], ids=["bool-raises", "awaitable"])
def test_an_approval_predicates_odd_answer_asks_and_ends_no_run(predicate: Any, why: str) -> None:
    # was: a truth value that raised escaped the scheduler: the run ended with a traceback,
    # its sibling's result lost; an awaitable was true (asked) and warned it was never awaited
    gated = shoal.tool(_pay.fn, approval=predicate, name="gated")
    asked: list[str] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append(request.reason)
        return True

    async def main() -> tuple[str, object]:
        plan = Plan()
        paid = plan.call(gated, to="bob", amount=5)
        free = plan.call(_free, x=1)
        result = await shoal.Runtime(approver=approver).run(plan)
        return result[paid].status, result[free].value

    assert arun(main(), virtual=True) == ("ok", 1)
    [reason] = asked
    assert why in reason


def test_an_async_approval_predicate_is_refused_when_the_tool_is_made() -> None:
    with pytest.raises(shoal.ToolDefinitionError, match="approval takes a plain predicate"):
        shoal.tool(_pay.fn, approval=_async_check, name="gated")


# ---- an event sink that must be awaited -------------------------------------------------------


async def _async_sink(event: shoal.Event) -> None:
    raise AssertionError("never run")


def test_an_async_event_sink_is_refused_where_it_is_given() -> None:
    # was: taken, and never run: each event made a coroutine that warned it was never awaited
    with pytest.raises(shoal.ConfigError, match="on_event= takes plain functions"):
        shoal.Runtime(on_event=_async_sink)  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="on_event= takes plain functions"):
        shoal.Runtime(on_event=[print, _async_sink])  # type: ignore[list-item]
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    with pytest.raises(shoal.ConfigError, match="on_event= takes plain functions"):
        lead.run_sync("go", on_event=_async_sink)  # type: ignore[arg-type]


def test_a_sink_returning_a_coroutine_is_logged_as_failing_and_the_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    def sneaky(event: shoal.Event) -> Any:
        return _async_sink(event)

    async def main() -> object:
        plan = Plan()
        free = plan.call(_free, x=1)
        result = await shoal.Runtime().run(plan, on_event=sneaky)
        return result[free].value

    assert arun(main(), virtual=True) == 1
    gc.collect()
    assert "to be awaited: a sink is called, never awaited" in caplog.text


# ---- an approver's async withdrawn ------------------------------------------------------------


class _AsyncWithdrawn(Approver):
    def __init__(self) -> None:
        self.told: list[str] = []

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        await asyncio.sleep(60)
        return [Decision.approve() for _ in batch]

    async def withdrawn(  # type: ignore[override]
            self, requests: Sequence[ApprovalRequest]) -> None:
        await asyncio.sleep(0.1)
        self.told += [request.node_id for request in requests]


def test_an_approvers_async_withdrawn_is_run() -> None:
    # was: called and never awaited: the approver was never told, and a warning said so
    approver = _AsyncWithdrawn()

    async def main() -> str:
        plan = Plan()
        paid = plan.call(_pay, to="bob", amount=5)
        handle = shoal.Runtime(approver=approver).start(plan)
        await asyncio.sleep(1)
        handle.cancel(paid)
        result = await handle
        await asyncio.sleep(1)
        return result[paid].status

    assert arun(main(), virtual=True) == "cancelled"
    assert approver.told == ["_pay#1"]


class _PlainReview(Approver):
    def review(  # type: ignore[override]
            self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return [Decision.approve("fine") for _ in batch]


@pytest.mark.parametrize("approver", [_PlainReview(), RulesApprover([], otherwise=_PlainReview())],
                         ids=["approver", "otherwise"])
def test_an_approver_whose_review_is_a_plain_function_is_heard(approver: Approver) -> None:
    # was: "the approver failed: TypeError: object list can't be used in 'await' expression":
    # every call it approved was denied
    async def main() -> tuple[str, object]:
        plan = Plan()
        paid = plan.call(_pay, to="bob", amount=5)
        result = await shoal.Runtime(approver=approver).run(plan)
        return result[paid].status, result[paid].value

    assert arun(main(), virtual=True) == ("ok", "paid 5 to bob")


# ---- a board write is the value as it was written ---------------------------------------------


_KEPT: list[list[int]] = []


async def _writes_then_changes(board: shoal.BoardHandle) -> int:
    value = [1]
    board.write("k", value)
    value.append(666)  # after the write, before the commit
    _KEPT.append(value)
    return 1


async def _changes_later() -> int:
    await asyncio.sleep(1)
    _KEPT[0].append(777)  # another call, after the commit
    return 2


def test_a_board_write_is_the_value_as_written_not_the_object_the_tool_keeps(
        tmp_path: Path) -> None:
    # was: the board held the tool's own object: [[1, 666, 777]], changed after the commit
    # by another call, behind the merge rules and the journal (which held [[1, 666]])
    _KEPT.clear()
    board = shoal.Board(k=shoal.merge.append)

    async def main() -> None:
        plan = Plan()
        plan.call(shoal.tool(_writes_then_changes))
        plan.call(shoal.tool(_changes_later))
        await shoal.Runtime().run(plan, board=board)

    arun(main(), virtual=True)
    assert board["k"] == [[1]]


# ---- a review that ignores its cancellation --------------------------------------------------


class _Stubborn(Approver):
    """Its first review ignores the cancellation of its withdrawn batch for 30 s."""

    def __init__(self) -> None:
        self.reviews = 0

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        self.reviews += 1
        if self.reviews == 1:
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                await asyncio.sleep(30)
        return [Decision.approve() for _ in batch]


def test_a_review_ignoring_its_cancellation_does_not_hold_the_next_runs_requests() -> None:
    # was: the runtime's next batch waited for the cancelled review to end: for good (here,
    # 30 s), with no approval_timeout, the next run's call never decided
    async def main() -> tuple[str, str, float]:
        runtime = shoal.Runtime(approver=_Stubborn())
        plan = Plan()
        first = plan.call(_pay, to="ann", amount=1)
        handle = runtime.start(plan)
        await asyncio.sleep(1)
        handle.cancel()
        cancelled = (await handle)[first].status
        began = asyncio.get_running_loop().time()
        again = Plan()
        second = again.call(_pay, to="bob", amount=2)
        result = await runtime.run(again)
        took = asyncio.get_running_loop().time() - began
        await asyncio.sleep(40)  # the stubborn review ends (its answer dropped)
        return cancelled, result[second].status, took

    cancelled, status, took = arun(main(), virtual=True, timeout=100)
    assert (cancelled, status) == ("cancelled", "ok") and took < 5
