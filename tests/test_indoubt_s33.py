"""A call stopped while its tool ran is in doubt on resume, not run again (guarantee 8).

Cancelled (a run cancel, Ctrl-C, fail_fast, a deadline, a budget) or timed out by its own
``timeout=``, a call whose tool had started may have taken effect: resume used to run it again
(a payment made twice). It now runs again only if its tool is idempotent, else it is in doubt
until settled. A call stopped before its tool took its first step never ran: it runs again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.events import Event, NodeStarted
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests.cli_process import ctrl_c_once, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _paid(marker: str | Path) -> int:
    """How many times the tool took effect (a line each)."""
    path = Path(marker)
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def _note(marker: str | Path, line: str) -> None:
    with open(marker, "a", encoding="utf-8") as file:
        file.write(f"{line}\n")


def _held(hold: str) -> bool:
    return os.path.exists(hold)


async def _hold_while(hold: str) -> None:
    """Wait while the file ``hold`` exists (a call still going)."""
    while True:
        if not _held(hold):
            return
        await asyncio.sleep(0.02)


async def _pay(marker: str, hold: str) -> str:
    _note(marker, "paid")
    await _hold_while(hold)
    return "paid"


@shoal.tool
async def pay(marker: str, hold: str) -> str:
    """Take effect (a line in ``marker``), then wait while ``hold`` exists."""
    return await _pay(marker, hold)


@shoal.tool(idempotent=True)
async def fetch(marker: str, hold: str) -> str:
    """As :func:`pay`, but idempotent (safe to run again: a read, say)."""
    _note(marker, "fetched")
    await _hold_while(hold)
    return "fetched"


@shoal.tool(timeout=0.3)
async def pay_slowly(marker: str, hold: str) -> str:
    """As :func:`pay`, timed out after 0.3 s while it holds."""
    return await _pay(marker, hold)


@shoal.tool(timeout=1.0, isolation="process")
def pay_in_a_process(marker: str, hold: str) -> str:
    """As :func:`pay`, in a worker process, killed by its timeout while it holds."""
    with open(marker, "a", encoding="utf-8") as file:
        file.write("paid\n")
    while os.path.exists(hold):
        time.sleep(0.02)
    return "paid"


@shoal.tool(max_concurrency=1)
async def pay_at_the_till(marker: str, hold: str) -> str:
    """As :func:`pay`, one at a time."""
    return await _pay(marker, hold)


async def _started(marker: Path) -> None:
    deadline = time.monotonic() + 60
    while not _paid(marker):
        assert time.monotonic() < deadline, "the tool never started"
        await asyncio.sleep(0.01)


def _cancel_mid_call(runtime: shoal.Runtime, plan: shoal.Plan, marker: Path) -> shoal.RunResult:
    """Run ``plan`` as ``r1``, cancelling the run once its tool has taken effect."""

    async def main() -> shoal.RunResult:
        handle = runtime.start(plan, run_id="r1")
        await _started(marker)
        handle.cancel()
        return await handle

    return asyncio.run(main())


def _plan(tool: shoal.Tool[..., str], tmp_path: Path) -> tuple[shoal.Plan, Path, Path]:
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    plan = shoal.Plan(name="p")
    plan.add(tool, {"marker": str(marker), "hold": str(hold)}, node_id="pay")
    return plan, marker, hold


def test_an_async_call_cancelled_mid_call_is_in_doubt_on_resume_not_run_again(
        tmp_path: Path) -> None:
    plan, marker, hold = _plan(pay, tmp_path)
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    first = _cancel_mid_call(runtime, plan, marker)
    assert first["pay"].status == "cancelled" and first["pay"].interrupted, first["pay"]
    hold.unlink()
    resumed = runtime.resume_sync("r1", plan)
    outcome = resumed["pay"]
    assert outcome.status == "in_doubt", outcome
    assert "while its tool ran" in outcome.reason and "rerun_in_doubt" in outcome.reason
    assert _paid(marker) == 1  # not paid twice
    # still in doubt on a resume that settles nothing; run again once when asked
    assert runtime.resume_sync("r1", plan)["pay"].status == "in_doubt"
    assert _paid(marker) == 1
    again = runtime.resume_sync("r1", plan, rerun_in_doubt=["pay"])
    assert again["pay"].status == "ok" and _paid(marker) == 2
    assert runtime.resume_sync("r1", plan)["pay"].value == "paid" and _paid(marker) == 2


def test_an_approver_decides_whether_a_call_cancelled_mid_call_runs_again(
        tmp_path: Path) -> None:
    plan, marker, hold = _plan(pay, tmp_path)
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    _cancel_mid_call(runtime, plan, marker)
    hold.unlink()
    asked: list[shoal.ApprovalRequest] = []

    def person(request: shoal.ApprovalRequest) -> bool:
        asked.append(request)
        return True  # it did not take effect: run it again

    approving = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"), approver=person)
    resumed = approving.resume_sync("r1", plan)
    assert [r.node_id for r in asked] == ["pay"]
    assert "in doubt after the run stopped" in asked[0].reason
    assert "while its tool ran" in asked[0].reason
    assert resumed["pay"].status == "ok" and _paid(marker) == 2


def test_a_call_cancelled_mid_call_in_a_memory_journal_is_in_doubt_too(tmp_path: Path) -> None:
    """The outcome says it, for journals that keep no attempts (memory, a remote agent's)."""
    plan, marker, hold = _plan(pay, tmp_path)
    runtime = shoal.Runtime(store=MemoryStore())
    _cancel_mid_call(runtime, plan, marker)
    hold.unlink()
    assert runtime.resume_sync("r1", plan)["pay"].status == "in_doubt"
    assert _paid(marker) == 1
    done = runtime.resume_sync("r1", plan, mark_done={"pay": "paid"})
    assert done["pay"].status == "ok" and done["pay"].value == "paid" and _paid(marker) == 1


def test_a_stopped_call_journaled_by_an_older_shoal_is_in_doubt_if_it_had_started(
        tmp_path: Path) -> None:
    """Its outcome does not say whether its tool ran (no ``interrupted``): it may have."""
    marker, hold, other = tmp_path / "paid.txt", tmp_path / "hold", tmp_path / "other.txt"
    hold.touch()
    plan = shoal.Plan(name="p")
    plan.add(pay_at_the_till, {"marker": str(marker), "hold": str(hold)}, node_id="first")
    plan.add(pay_at_the_till, {"marker": str(other), "hold": str(hold)}, node_id="second")
    db = tmp_path / "runs.db"
    runtime = shoal.Runtime(store=SQLiteStore(db))
    _cancel_mid_call(runtime, plan, marker)
    hold.unlink()
    with sqlite3.connect(db) as conn:  # as an older shoal wrote them
        conn.execute("UPDATE outcomes SET interrupted = ''")
    conn.close()
    resumed = shoal.Runtime(store=SQLiteStore(db)).resume_sync("r1", plan)
    assert resumed["first"].status == "in_doubt" and _paid(marker) == 1  # it had started
    assert resumed["second"].status == "ok" and _paid(other) == 1  # it never started


def test_an_idempotent_call_cancelled_mid_call_runs_again(tmp_path: Path) -> None:
    plan, marker, hold = _plan(fetch, tmp_path)
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    _cancel_mid_call(runtime, plan, marker)
    hold.unlink()
    resumed = runtime.resume_sync("r1", plan)
    assert resumed["pay"].status == "ok" and resumed["pay"].value == "fetched"
    assert _paid(marker) == 2


@pytest.mark.parametrize("tool", [pay_slowly, pay_in_a_process], ids=["inline", "process"])
def test_a_call_ended_by_its_timeout_is_in_doubt_on_resume(tool: Any, tmp_path: Path) -> None:
    # inline its task is cancelled; in a process the worker is killed: either way it may
    # have paid already
    plan, marker, hold = _plan(tool, tmp_path)
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    first = runtime.run_sync(plan, run_id="r1")
    assert first["pay"].status == "timed_out" and first["pay"].interrupted, first["pay"]
    assert _paid(marker) == 1
    hold.unlink()
    resumed = runtime.resume_sync("r1", plan)
    assert resumed["pay"].status == "in_doubt", resumed["pay"]
    assert "ended timed_out while its tool ran" in resumed["pay"].reason
    assert _paid(marker) == 1
    again = runtime.resume_sync("r1", plan, rerun_in_doubt=["pay"])
    assert again["pay"].status == "ok" and _paid(marker) == 2


def test_a_call_cancelled_while_queued_behind_a_limit_runs_again(tmp_path: Path) -> None:
    marker, hold, other = tmp_path / "paid.txt", tmp_path / "hold", tmp_path / "other.txt"
    hold.touch()
    plan = shoal.Plan(name="p")
    plan.add(pay_at_the_till, {"marker": str(marker), "hold": str(hold)}, node_id="first")
    plan.add(pay_at_the_till, {"marker": str(other), "hold": str(hold)}, node_id="second")
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    first = _cancel_mid_call(runtime, plan, marker)
    assert first["first"].interrupted and first["first"].status == "cancelled"
    queued = first["second"]
    assert queued.status == "cancelled" and not queued.interrupted and queued.attempts == 0
    assert _paid(other) == 0
    hold.unlink()
    resumed = runtime.resume_sync("r1", plan)
    assert resumed["first"].status == "in_doubt" and _paid(marker) == 1
    assert resumed["second"].status == "ok" and _paid(other) == 1  # it never ran: run now


@shoal.tool(isolation="thread")
def pay_on_a_thread(marker: str, hold: str) -> str:
    """As :func:`pay`, on a pool thread (which cannot be stopped: it is abandoned)."""
    _note(marker, "paid")
    deadline = time.monotonic() + 60
    while _held(hold) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "paid"


def test_a_thread_call_cancelled_while_it_waits_for_a_thread_runs_again(tmp_path: Path) -> None:
    """One thread: the second call waits for it, and never runs before resume.

    The first, abandoned on its thread, is in doubt (as before, see test_hostile_journal_s33).
    """
    for store in (MemoryStore(), SQLiteStore(tmp_path / "runs.db")):
        marker, hold, other = tmp_path / "paid.txt", tmp_path / "hold", tmp_path / "other.txt"
        marker.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
        hold.touch()
        plan = shoal.Plan(name="p")
        plan.add(pay_on_a_thread, {"marker": str(marker), "hold": str(hold)}, node_id="first")
        plan.add(pay_on_a_thread, {"marker": str(other), "hold": str(hold)}, node_id="second")
        runtime = shoal.Runtime(store=store, thread_workers=1)
        first = _cancel_mid_call(runtime, plan, marker)
        hold.unlink()
        assert first["first"].abandoned and first["first"].interrupted, first["first"]
        assert first["second"].status == "cancelled" and not first["second"].interrupted
        assert _paid(other) == 0
        resumed = runtime.resume_sync("r1", plan)
        assert resumed["first"].status == "in_doubt" and _paid(marker) == 1
        assert resumed["second"].status == "ok" and _paid(other) == 1, resumed["second"]


@shoal.tool
async def effect(marker: str, value: int) -> int:
    """Take effect: a line in ``marker``."""
    _note(marker, str(value))
    return value


def test_calls_cancelled_as_they_started_never_ran_and_run_again(tmp_path: Path) -> None:
    """A sink cancels the run on the first NodeStarted: the calls never took a step."""
    marker = tmp_path / "effects.txt"

    def plan_of() -> shoal.Plan:
        plan = shoal.Plan(name="p")
        for value in range(4):
            plan.add(effect, {"marker": str(marker), "value": value}, node_id=f"e{value}")
        return plan

    for store in (MemoryStore(), SQLiteStore(tmp_path / "runs.db")):
        marker.unlink(missing_ok=True)
        runtime = shoal.Runtime(store=store)

        async def main(runtime: shoal.Runtime = runtime) -> shoal.RunResult:
            holder: list[shoal.RunHandle] = []

            def cancel_on_start(event: Event) -> None:
                if isinstance(event, NodeStarted) and holder:
                    holder[0].cancel(reason="stop at the start")

            handle = runtime.start(plan_of(), run_id="r1", on_event=cancel_on_start)
            holder.append(handle)
            return await handle

        first = asyncio.run(main())
        assert _paid(marker) == 0
        started = [o for o in first if o.attempts]
        assert started, "no call was started, then cancelled"
        assert all(o.status == "cancelled" and not o.interrupted for o in first), list(first)
        resumed = runtime.resume_sync("r1", plan_of())
        assert resumed.ok, list(resumed)
        assert sorted(marker.read_text(encoding="utf-8").split()) == ["0", "1", "2", "3"]


def test_an_agents_call_cancelled_mid_call_is_in_doubt_when_the_tree_resumes(
        tmp_path: Path) -> None:
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    args = {"marker": str(marker), "hold": str(hold)}

    async def main() -> shoal.AgentResult[str]:
        agent = shoal.Agent(name="lead", tools=[pay],
                            model=ScriptedModel([[call("pay", **args)], "never"]))
        handle = agent.start("go", runtime=runtime, run_id="tree")
        await _started(marker)
        handle.cancel()
        with pytest.raises(shoal.AgentError) as stopped:
            await handle
        result: shoal.AgentResult[str] = stopped.value.result
        return result

    first = asyncio.run(main())
    assert [c.status for c in first.calls] == ["cancelled"]
    hold.unlink()
    model = ScriptedModel(["it may or may not have paid"])
    again = shoal.Agent(name="lead", tools=[pay], model=model).resume_sync(
        "tree", "go", runtime=runtime)
    assert [c.status for c in again.calls] == ["in_doubt"], again.calls
    assert _paid(marker) == 1  # not paid twice
    told = json.dumps([m.content for m in model.requests[0].messages], default=str)
    assert "may or may not have taken effect" in told, told
    assert again.output == "it may or may not have paid"


@shoal.tool
async def pay_and_hold(marker: str, hold: str) -> str:
    """:func:`pay`, for the command line."""
    return await _pay(marker, hold)


def test_the_cli_says_a_call_stopped_by_ctrl_c_is_in_doubt_and_how_to_settle_it(
        tmp_path: Path) -> None:
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: pay\n    tool: tests.test_indoubt_s33:pay_and_hold\n"
        f"    args: {{marker: {json.dumps(str(marker))}, hold: {json.dumps(str(hold))}}}\n",
        encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    stopped = ctrl_c_once(["run", "plan.yaml", "--store", "runs.db", "--json"],
                          marker=marker, cwd=tmp_path, env=env)
    out, err = stopped.stdout, stopped.stderr
    assert stopped.returncode == 130, err
    outcome = json.loads(out)["outcomes"][0]
    assert outcome["status"] == "cancelled" and outcome["interrupted"], outcome
    said = " ".join(err.split())
    assert "call pay was stopped while its tool ran" in said, err
    assert "--rerun-in-doubt" in said and "--mark-done" in said, err
    found = re.search(r"shoal: run (\S+) \(", err)
    assert found is not None, err
    run_id = found[1]
    hold.unlink()
    resumed = run_cli(("resume", run_id, "--store", "runs.db", "--json"), cwd=tmp_path,
                      env=env, timeout=120)
    assert resumed.returncode == 1, resumed.stderr
    outcome = json.loads(resumed.stdout)["outcomes"][0]
    assert outcome["status"] == "in_doubt" and "--rerun-in-doubt pay" in outcome["reason"]
    assert _paid(marker) == 1  # once
    again = run_cli(("resume", run_id, "--store", "runs.db", "--rerun-in-doubt", "pay",
                     "--json"), cwd=tmp_path, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert _paid(marker) == 2


AGENT_MODULE = '''
import asyncio
import os

import shoal
from shoal.testing import ScriptedModel, call


@shoal.tool
async def pay(marker: str, hold: str) -> str:
    """Take effect (a line in marker), then wait while hold exists."""
    with open(marker, "a", encoding="utf-8") as file:
        file.write("paid\\n")
    while os.path.exists(hold):
        await asyncio.sleep(0.02)
    return "paid"


ARGS = {"marker": os.environ["PAY_MARKER"], "hold": os.environ["PAY_HOLD"]}
agent = shoal.Agent(name="lead", tools=[pay], model=ScriptedModel(
    ["told"] if os.environ.get("PAY_RESUMING") else [[call("pay", **ARGS)], "never"]))
'''


def test_the_cli_says_an_agents_call_stopped_by_ctrl_c_is_in_doubt(tmp_path: Path) -> None:
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    (tmp_path / "cashier.py").write_text(AGENT_MODULE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}",
           "PAY_MARKER": str(marker), "PAY_HOLD": str(hold), "COLUMNS": "200"}
    stopped = ctrl_c_once(["run", "cashier:agent", "go", "--store", "runs.db", "--json"],
                          marker=marker, cwd=tmp_path, env=env)
    err = stopped.stderr
    assert stopped.returncode == 130, err
    said = " ".join(err.split())
    assert "call lead/pay#1 was stopped while its tool ran" in said, err
    assert "tells its agent so" in said, err
    found = re.search(r"run (\S+) interrupted", said)
    assert found is not None, err
    hold.unlink()
    resumed = run_cli(("resume", found[1], "--store", "runs.db", "--json"), cwd=tmp_path,
                      env={**env, "PAY_RESUMING": "1"}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "told"
    assert [c["status"] for c in report["calls"]] == ["in_doubt"], report["calls"]
    assert _paid(marker) == 1  # not paid twice
