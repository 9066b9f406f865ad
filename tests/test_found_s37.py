"""Defects an earlier session found and left: each test fails without its fix."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

import shoal
from shoal import Plan
from shoal.store.claims import write_lock_holder
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests import found_s37_tools as ft
from tests.conftest import ONE_AT_A_TIME, arun

# ---- a process worker gives every call its signal handlers, import path and modules back ---


def test_a_call_after_one_that_changed_signals_and_imports_finds_the_workers_own() -> None:
    # was: the later call found the SIGTERM handler, the ignored SIGINT, the blocked SIGUSR1,
    # the alarm (which would have killed the worker an hour later, mid-call), the extra
    # sys.path entry and the fake json module the earlier call left on the same worker
    plan = Plan()
    before = plan.call(ft.imports_and_signals)
    changed = plan.call(ft.change_imports_and_signals, after=[before])
    after = plan.call(ft.imports_and_signals, after=[changed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].value["pid"] == result[changed].value  # the same worker
    assert result[after].value == result[before].value


# ---- a tool's own KeyboardInterrupt off the main thread fails its call, on every backend ----

_INTERRUPTS = {
    "thread-sync": ft.raise_keyboard_interrupt.options(isolation="thread"),
    "thread-async": ft.raise_keyboard_interrupt_async.options(isolation="thread"),
    "process-sync": ft.raise_keyboard_interrupt,
    "process-async": ft.raise_keyboard_interrupt_async,
}


def _assert_the_tools_interrupt_failed_its_call(result: shoal.RunResult, bad: Any,
                                                sibling: Any) -> None:
    """The call failed with the same error on every backend; the run went on."""
    out = result[bad]
    assert out.status == "failed" and out.error is not None, out
    assert out.error.type == "shoal.exceptions.ToolDefinitionError", out.error
    assert "raised KeyboardInterrupt away from the main thread" in out.error.message
    assert "raised by the tool" in out.error.traceback  # the tool's own, as the cause
    assert result.value(sibling) == "kept"


@pytest.mark.parametrize("where", sorted(_INTERRUPTS))
def test_a_tools_keyboard_interrupt_off_the_main_thread_fails_its_call(where: str) -> None:
    # was: on a thread, the KeyboardInterrupt stopped the whole run (raised to the caller as
    # a Ctrl-C), while in a process worker the same tool's call failed with 'KeyboardInterrupt'
    plan = Plan()
    bad = plan.call(_INTERRUPTS[where])
    sibling = plan.call(ft.echo.options(isolation=where.split("-")[0]), value="kept")
    result = shoal.run_sync(plan, process_workers=1)
    _assert_the_tools_interrupt_failed_its_call(result, bad, sibling)


@ONE_AT_A_TIME
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("resources", [{}, {"num_cpus": 0}], ids=["task", "actor-pool"])
def test_a_tools_keyboard_interrupt_on_ray_fails_its_call_as_elsewhere(
        resources: dict[str, Any]) -> None:
    # was: as a Ray task, ExecutorError 'raised KeyboardInterrupt, or something outside shoal
    # cancelled its Ray task'; on the actor pool, 'KeyboardInterrupt' (as in a process)
    pytest.importorskip("ray")
    ray = {"isolation": "ray", "resources": resources, "timeout": 60.0}
    for tool in (ft.raise_keyboard_interrupt, ft.raise_keyboard_interrupt_async):
        plan = Plan()
        bad = plan.call(tool.options(**ray))
        sibling = plan.call(ft.echo.options(**ray), value="kept")
        _assert_the_tools_interrupt_failed_its_call(shoal.run_sync(plan), bad, sibling)


def test_a_keyboard_interrupt_on_the_main_thread_still_stops_the_run() -> None:
    # the other side of the rule: an async tool on the loop (the main thread here) cannot be
    # told from a Ctrl-C, which stops the run
    plan = Plan()
    plan.call(ft.raise_keyboard_interrupt_async.options(isolation="inline"))
    with pytest.raises(KeyboardInterrupt):
        shoal.run_sync(plan)


# ---- merge.minimum / maximum refuse a first value that cannot be ordered --------------------


class _Unordered:
    """A plain object: equal to itself, ordered with nothing."""


@pytest.mark.parametrize("rule", [shoal.merge.minimum, shoal.merge.maximum])
@pytest.mark.parametrize("first", [{"a": 1}, _Unordered()], ids=["dict", "object"])
def test_a_first_value_that_cannot_be_ordered_is_refused_at_its_write(
        rule: shoal.merge.Rule, first: object) -> None:
    # was: taken as the key's value; the next write (a plain 3) was then blamed for it
    # ("3 cannot be compared with the value so far"), and a lone write was never refused
    board = shoal.Board(k=rule)
    with pytest.raises(shoal.BoardValueError, match=r"cannot be ordered \(TypeError"):
        board.write("k", first)
    assert board["k"] is None  # intact
    board.write("k", 3)
    assert board["k"] == 3


@shoal.tool
async def _writes_then_returns(value: Any, board: shoal.BoardHandle) -> str:
    board.write("k", value)
    return "written"


def test_a_calls_first_value_that_cannot_be_ordered_fails_that_call_alone() -> None:
    board = shoal.Board(k=shoal.merge.minimum)
    plan = Plan()
    bad = plan.call(_writes_then_returns, value={"a": 1})
    good = plan.call(_writes_then_returns, value=5)
    result = shoal.run_sync(plan, board=board)
    out = result[bad]
    assert out.status == "failed" and out.error is not None, out
    assert out.error.type == "shoal.exceptions.BoardValueError"
    assert "{'a': 1} cannot be ordered" in out.error.message
    assert result[good].status == "ok"
    assert board["k"] == 5  # whichever committed first: the dict never reached the board


# ---- a flag that is not a bool is refused where it is given --------------------------------


@pytest.mark.parametrize("flag", ["force", "resume"])
def test_an_agents_start_refuses_a_flag_that_is_not_a_bool_at_the_call(flag: str) -> None:
    # was: force='no' was refused only when the tree's first step run started (the handle
    # came back, and awaiting it raised); resume='no' was taken for true, silently
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]))

    wrong: dict[str, Any] = {flag: "no"}
    right: dict[str, Any] = {flag: False}

    async def main() -> None:
        with pytest.raises(shoal.ConfigError, match=f"{flag} takes True or False, got str 'no'"):
            lead.start("hi", **wrong)  # no handle: refused before anything is made
        assert (await lead.start("hi", **right)).output == "done"

    asyncio.run(main())


def test_the_local_model_refuses_parallel_calls_that_is_not_a_bool() -> None:
    # was: kept as given ('no' read as true), whichever way the model was set up
    from shoal.models.local import LocalModel

    with pytest.raises(shoal.ConfigError, match="parallel_calls takes True or False"):
        LocalModel(parallel_calls="no")  # type: ignore[arg-type]


# ---- the notice of a wait for the journal's write lock names who holds it --------------------


def test_the_journals_write_lock_holder_is_named_without_writing_anything(
        tmp_path: Path) -> None:
    # was: "another process holds it locked", naming nobody; now the pid from /proc/locks
    # (the lock on the write byte of runs.db-shm) and the run its lock file names
    if not Path("/proc/locks").exists():
        pytest.skip("needs Linux's /proc/locks")
    store = SQLiteStore(tmp_path / "runs.db")
    assert write_lock_holder(store.path, store.lock_folder) == ""  # nobody writes
    claim = store.claim_run("r-held")
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # mid-write, as a run's commit is
        said = write_lock_holder(store.path, store.lock_folder)
        assert said == f"pid {os.getpid()}, running run r-held; it is alive", said
        claim.release()
        said = write_lock_holder(store.path, store.lock_folder)
        assert said == f"pid {os.getpid()}, running no run of this journal; it is alive", said
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


# ---- a wall_clock budget that runs out times out what was under way, as a deadline does ------


@shoal.tool
async def _slow(key: str) -> str:
    """Take a long time (on the virtual clock)."""
    await asyncio.sleep(30)
    return key


def test_a_wall_clock_budget_running_out_times_out_the_calls_under_way() -> None:
    # was: they ended 'cancelled', while the same calls stopped by the run's deadline or
    # their own timeout= end 'timed_out' (tokens or cost spent still cancel them: an
    # overspend, see test_agents.py); the reason says which limit fired
    model = ScriptedModel([[call("_slow", key="a"), call("_slow", key="b")], "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[_slow])

    async def main() -> list[tuple[str, str]]:
        with pytest.raises(shoal.BudgetExceeded, match="wall_clock") as caught:
            await agent.run("go", budget=shoal.Budget(wall_clock=1))
        result = caught.value.result
        assert result is not None
        return [(c.status, c.outcome.reason if c.outcome else "") for c in result.calls]

    ends = arun(main(), virtual=True)
    assert [status for status, _ in ends] == ["timed_out", "timed_out"], ends
    assert all("wall_clock" in reason for _, reason in ends), ends



def test_a_run_handle_cancelled_for_a_time_limit_times_out_what_is_under_way() -> None:
    # the option the wall_clock budget uses, for a time limit of the caller's own
    plan = Plan()
    slow = plan.call(_slow, key="a")
    after = plan.call(_slow, key=slow)

    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            handle = runtime.start(plan)
            with pytest.raises(shoal.ConfigError, match="timed_out takes True or False"):
                handle.cancel(reason="mine", timed_out="yes")  # type: ignore[arg-type]
            await asyncio.sleep(1)
            handle.cancel(reason="my own time limit", timed_out=True)
            return await handle

    result = arun(main(), virtual=True)
    assert (result[slow].status, result[slow].reason) == ("timed_out", "my own time limit")
    assert result[after].status == "cancelled"  # it never started


# ---- a call a reviewer edited tells its model what ran ---------------------------------------


@shoal.tool(approval=True)
async def _pay(to: str) -> str:
    """Pay someone."""
    return f"paid {to}"


def _edit_to_zed(request: shoal.ApprovalRequest) -> shoal.Decision:
    return shoal.Decision.edit({"to": 'zed "<x>"'}, "not that one")


@pytest.mark.parametrize("mode", ["tools", "plan"])
def test_a_call_run_with_edited_arguments_says_so_to_its_model(mode: str) -> None:
    # was: the model read 'paid zed ...' beside its own call pay(to="ann"), never told that a
    # reviewer had changed what ran
    script: list[Any] = ([[call("_pay", to="ann")], "done"] if mode == "tools" else
                         ['1. _pay(to="ann")', "Thought: paid.\nAction: Finish(done)"])
    agent = shoal.Agent(name="lead", model=ScriptedModel(script), tools=[_pay],
                        mode=mode)  # type: ignore[arg-type]
    result = agent.run_sync("go", approver=_edit_to_zed)
    (record,) = result.calls
    assert record.status == "ok" and record.outcome is not None
    assert record.outcome.edited_args == {"to": 'zed "<x>"'}
    text = record.message.content
    assert text.startswith('paid zed "<x>"'), text
    assert "a reviewer changed its arguments" in text, text
    assert '{"to": "zed \\"<x>\\""}' in text, text  # what ran, as JSON


def test_a_call_approved_as_asked_reads_as_its_result_alone() -> None:
    script: list[Any] = [[call("_pay", to="ann")], "done"]
    agent = shoal.Agent(name="lead", model=ScriptedModel(script), tools=[_pay])
    result = agent.run_sync("go", approver=lambda r: shoal.Decision.approve())
    (record,) = result.calls
    assert record.message.content == "paid ann"
    assert record.outcome is not None and record.outcome.edited_args is None


@shoal.tool(approval=True)
async def _refund(amount: int) -> str:
    """Refund an amount."""
    if amount > 10:
        raise ValueError("too much")
    return f"refunded {amount}"


def test_an_edited_call_that_fails_says_so_through_the_agents_own_wording() -> None:
    script: list[Any] = [[call("_refund", amount=5)], "done"]
    agent = shoal.Agent(name="lead", model=ScriptedModel(script), tools=[_refund],
                        tool_error_format=lambda record: "it did not work")
    result = agent.run_sync("go", approver=lambda r: shoal.Decision.edit({"amount": 50}))
    (record,) = result.calls
    assert record.status == "failed"
    assert record.message.content == ("it did not work\n[note: a reviewer changed its arguments "
                                      'before it ran; it ran with {"amount": 50}]')


# ---- an async tool's KeyboardInterrupt on a loop off the main thread fails its call -----------


def _from_a_thread(work: Callable[[], object]) -> object:
    """What ``work()`` returns or raises, called on a thread of its own (a loop it makes is
    off the main thread)."""
    ended: list[object] = []

    def main() -> None:
        try:
            ended.append(work())
        except BaseException as exc:  # (the test reads what came out)
            ended.append(exc)

    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
    (result,) = ended
    return result


_LOOP_INTERRUPTS = {  # each of the driver's ways to run an async call on its loop
    "at-once": ft.raise_keyboard_interrupt_async.options(isolation="inline"),
    "task": ft.raise_keyboard_interrupt_after_waiting,
    "task-with-timeout": ft.raise_keyboard_interrupt_after_waiting.options(timeout=60.0),
    "executor": ft.raise_keyboard_interrupt_after_waiting.options(retries=1),
}


@pytest.mark.parametrize("where", sorted(_LOOP_INTERRUPTS))
def test_an_async_tools_keyboard_interrupt_on_a_loop_off_the_main_thread_fails_its_call(
        where: str) -> None:
    # was: it stopped the whole run (raised to the caller as a Ctrl-C), while the same tool
    # on a thread or process backend failed its call alone: no Ctrl-C reaches that thread
    plan = Plan()
    bad = plan.call(_LOOP_INTERRUPTS[where])
    sibling = plan.call(ft.echo.options(isolation="thread"), value="kept")
    result = _from_a_thread(lambda: shoal.run_sync(plan))
    assert isinstance(result, shoal.RunResult), result  # was: KeyboardInterrupt
    _assert_the_tools_interrupt_failed_its_call(result, bad, sibling)
    if where == "executor":
        assert result[bad].attempts == 2  # a failure like any other: retried


class _InterruptingModel(shoal.Model):
    """A model whose request raises ``KeyboardInterrupt`` (its client's own code, say)."""

    name = "interrupting"

    async def request(self, request: shoal.ModelRequest) -> shoal.ModelResponse:
        await asyncio.sleep(0)
        raise KeyboardInterrupt("raised by the model")


def test_a_models_keyboard_interrupt_on_a_loop_off_the_main_thread_fails_the_agent() -> None:
    # the agent's model turn runs in its caller's task (run_here): was a KeyboardInterrupt
    # out of run_sync, as if a person had pressed Ctrl-C
    agent = shoal.Agent(name="lead", model=_InterruptingModel())
    error = _from_a_thread(lambda: agent.run_sync("go"))
    assert isinstance(error, shoal.ShoalError), error  # was: KeyboardInterrupt
    assert "raised KeyboardInterrupt away from the main thread" in str(error), error


# ---- a structured final answer is read as JSON strictly: no lax coercions ------------------


class _Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class _Shipment:
    count: int
    weight: float
    due: datetime.date
    colour: _Colour
    tags: tuple[str, ...]


class _Invoice(pydantic.BaseModel):
    total: decimal.Decimal
    at: datetime.datetime
    id: uuid.UUID
    paid: bool


@pytest.mark.parametrize(("output_type", "answer", "wrong"), [
    (int, "true", "valid integer"),
    (int, '"7"', "valid integer"),
    (int, "7.0", "valid integer"),
    (float, '"1e3"', "valid number"),
    (bool, '"yes"', "valid boolean"),
    (bool, "1", "valid boolean"),
])
def test_a_final_answer_json_cannot_express_as_the_type_is_sent_back(
        output_type: Any, answer: str, wrong: str) -> None:
    # was: true read as 1, "7" as 7, "1e3" as 1000.0, "yes" as True (pydantic's lax mode):
    # the model's mistake taken silently as an answer
    agent = shoal.Agent(name="lead", model=ScriptedModel([answer, answer]),
                        output_type=output_type, output_retries=1)
    with pytest.raises(shoal.OutputValidationError, match=wrong):
        agent.run_sync("go")


def test_ordinary_structured_answers_still_validate_from_their_json_forms() -> None:
    shipment = ('{"count": 3, "weight": 2, "due": "2026-12-07", "colour": "blue", '
                '"tags": ["a", "b"]}')
    invoice = ('{"total": "12.50", "at": "2026-12-07T10:00:00Z", '
               '"id": "12345678-1234-5678-1234-567812345678", "paid": false}')
    got = shoal.Agent(name="a", model=ScriptedModel([shipment]),
                      output_type=_Shipment).run_sync("go").output
    assert got == _Shipment(3, 2.0, datetime.date(2026, 12, 7), _Colour.BLUE, ("a", "b"))
    paid = shoal.Agent(name="b", model=ScriptedModel([invoice]),
                       output_type=_Invoice).run_sync("go").output
    assert paid.total == decimal.Decimal("12.50") and paid.at.year == 2026
    assert paid.id == uuid.UUID("12345678-1234-5678-1234-567812345678") and paid.paid is False


def test_a_planners_final_answer_is_read_as_strictly() -> None:
    finish = "Thought: done.\nAction: Finish(true)"
    agent = shoal.Agent(name="lead", model=ScriptedModel([finish] * 4), output_type=int,
                        tools=[_pay], mode="plan", output_retries=1)
    with pytest.raises(shoal.OutputValidationError, match="valid integer"):
        agent.run_sync("go")


def test_the_journal_keeps_what_an_edited_call_ran_with(tmp_path: Path) -> None:
    # was: an outcome read back from the journal (a resume's, show's) had no edited_args, so
    # a resumed agent's model read the result without the note
    plan = Plan()
    paid = plan.call(_pay, to="ann")
    same = plan.call(_pay, to="bob")

    def decide(request: shoal.ApprovalRequest) -> shoal.Decision:
        return _edit_to_zed(request) if request.args["to"] == "ann" else shoal.Decision.approve()

    store = SQLiteStore(tmp_path / "runs.db")
    try:
        result = shoal.run_sync(plan, store=store, approver=decide)
        kept = store.outcomes(result.run_id)
    finally:
        store.close()
    assert kept[paid.node].outcome.edited_args == {"to": 'zed "<x>"'}
    assert kept[same.node].outcome.edited_args is None
