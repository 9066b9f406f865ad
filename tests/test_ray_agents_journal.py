"""Agents nested in Ray agents journal in the root's journal; Ray agents' board commits too.

And a Ray agent's ``AgentStarted`` says where it runs (its node, its actor's pid), as its
result does.

The Ray twin of tests/test_remote_agent_journal.py: a process agent nested in a Ray agent
journals through the actor into the root's SQLite file, so a tree killed mid-run resumes
without repeating its finished turns or calls; and a Ray agent killed right after its board
commit (before it journaled the call) leaves the board and the journal agreeing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.board import replay_journal
from shoal.events import AgentStarted, Event
from shoal.testing import ScriptedModel, call
from tests.board_commit_kill import KILL_AT_COMMIT, kill_orders, new_board, note
from tests.conftest import ONE_AT_A_TIME
from tests.test_remote_agent_journal import _crash_then_resume

pytest.importorskip("ray")

pytestmark = [pytest.mark.timeout(240),
              ONE_AT_A_TIME]  # the one Ray head


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Ray up for this module (as in tests/test_ray_agents.py); yields the cluster's address."""
    from shoal.executors.ray import RayExecutor

    holder = RayExecutor()  # holds the connection, so every runtime below reuses it
    asyncio.run(holder.start())
    try:
        import ray

        yield str(ray.get_runtime_context().gcs_address)
    finally:
        asyncio.run(holder.close())  # shuts down only a Ray that shoal started


def test_a_process_agent_nested_in_a_ray_agent_resumes_without_repeating_work(
        tmp_path: Path, ray_cluster: str) -> None:
    report, log = _crash_then_resume(tmp_path, "ray", timeout=150,
                                     env={**os.environ, "RAY_ADDRESS": ray_cluster})
    assert report["output"] == "final answer", report
    assert report["middle"] == ["ok"] * 3 and report["leaf"] == ["ok"] * 3, report
    assert report["lead_requests"] == 1  # only the turn after the middle agent's answer
    assert report["middle_error"] == "None" and report["leaf_error"] == "None", report
    assert sorted(log.read_text().split()) == ["a", "m1", "x1"]  # nothing ran twice
    assert sorted(report["board"]) == ["a", "m1", "x1"]


def test_a_ray_agent_killed_between_its_board_commit_and_its_journal_writes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_cluster: str) -> None:
    db, pid_file = tmp_path / "runs.db", tmp_path / "helper.pid"
    monkeypatch.setenv(KILL_AT_COMMIT, kill_orders(tmp_path / "kill", "x1", pid_file))
    model = ScriptedModel.per_prompt({"go": [
        [call("note", text="x1", pid_file=str(pid_file))], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note], isolation="ray",
                         stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task="go")
    board = new_board()
    result = shoal.Runtime(store=f"sqlite:///{db}").run_sync(plan, board=board, run_id="p-1")
    assert (tmp_path / "kill.done").exists()  # the first actor was killed at its commit
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert (tmp_path / "helper.pid.ran").read_text().split() == ["x1", "x1"]  # ran again
    assert board["notes"] == ["x1"]  # ... but its write counts once
    journaled = new_board()
    replay_journal(journaled, shoal.SQLiteStore(db), "p-1")
    assert journaled["notes"] == ["x1"]  # the journal holds what the board holds


@shoal.tool
def pid() -> int:
    """The id of the process that runs this call."""
    return os.getpid()


def test_a_ray_agents_start_event_names_its_node_and_process(ray_cluster: str) -> None:
    model = ScriptedModel.per_prompt({"go": [[call("scout", task="s")], "done"],
                                      "s": [[call("pid")], "scouted"]})
    scout = shoal.Agent(name="scout", model=model, tools=[pid], isolation="ray")
    events: list[Event] = []
    result = shoal.Agent(name="lead", model=model, subagents=[scout]).run_sync(
        "go", on_event=events.append)
    ran = result.children[0]
    (started,) = [e for e in events if isinstance(e, AgentStarted) and e.lineage == ran.lineage]
    assert started.isolation == ran.isolation == "ray"
    assert started.where == ran.where and " node " in ran.where  # its Ray node
    assert started.pid == ran.pid == int(ran.calls[0].message.content) != os.getpid()
    assert started.placement().startswith(f"ray {ran.where.split(' node ')[0]} node ")
