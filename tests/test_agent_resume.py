"""Agents resume from the journal: finished model turns and tool results are not asked again."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.models.base import ModelRequest
from shoal.store.base import RunRecord
from shoal.testing import ScriptedModel, call

ROOT = Path(__file__).resolve().parent.parent


def crash_script(store: Path, log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.agent_crash", str(store), "tree-1", mode,
                           str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_killed_agent_tree_resumes_without_asking_or_doing_anything_twice(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    crashed = crash_script(store, log, "crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "b", "x1"]
    resumed = crash_script(store, log, "resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "final answer"
    assert report["lead_requests"] == 1 and report["sub_requests"] == 0  # only the last turn
    assert report["calls"] == ["ok", "ok", "ok", "ok"]
    assert sorted(log.read_text().split()) == ["a", "b", "x1"]  # no note ran twice
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_resuming_with_a_changed_agent_runs_nothing(tmp_path: Path) -> None:
    @shoal.tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    first = shoal.Agent(name="lead", instructions="Be brief.", tools=[echo],
                        model=ScriptedModel([[call("echo", text="hi")], "done"]))
    first.run_sync("go", runtime=runtime, run_id="r1")
    changed = ScriptedModel(["never"])
    other = shoal.Agent(name="lead", instructions="Be verbose.", tools=[echo], model=changed)
    ended: list[shoal.AgentFinished] = []
    with pytest.raises(shoal.PlanChangedError):
        other.resume_sync("r1", "go", runtime=runtime, on_event=lambda e: ended.extend(
            [e] if isinstance(e, shoal.AgentFinished) else []))
    assert changed.requests == []
    assert [e.turns for e in ended] == [0]  # its turn, refused, was never asked: not counted
    same = ScriptedModel([])
    replay = shoal.Agent(name="lead", instructions="Be brief.", tools=[echo], model=same)
    assert replay.resume_sync("r1", "go", runtime=runtime).output == "done"
    assert same.requests == []  # a finished run replays entirely from the journal


def test_a_journal_with_a_run_per_step_is_not_started_over(tmp_path: Path) -> None:
    # what shoal wrote before an agent's steps were one run: RUN/lead/model-1, RUN/lead/turn-1
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    assert runtime.store is not None
    runtime.store.write([RunRecord("r1/lead/model-1", time.time(), 1, "", {}, {}, "lead")])
    model = ScriptedModel(["never"])
    agent = shoal.Agent(name="lead", model=model)
    with pytest.raises(shoal.PlanChangedError, match="a run each"):
        agent.resume_sync("r1", "go", runtime=runtime)
    assert model.requests == []  # nothing asked again


def test_resume_needs_a_journal() -> None:
    agent = shoal.Agent(name="lead", model=ScriptedModel([]))
    with pytest.raises(shoal.ConfigError, match="journal"):
        agent.resume_sync("r1", "go", runtime=shoal.Runtime(store=None))


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_turn_refused_on_resume_is_not_charged_to_the_requests_budget(
        tmp_path: Path, isolation: str) -> None:
    # The refused turn was never asked, yet it took a request from the tree's budget: the
    # lead's next turn, the second request really made, was refused as over the limit of 2.
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    handles: list[shoal.AgentHandle[Any]] = []

    def stop_the_run(request: ModelRequest) -> str:
        handles[0].cancel(reason="stopped mid-way")  # the helper's call is left unfinished
        return "never kept"

    def agents(instructions: str, model: ScriptedModel, where: str,
               lead_steps: list[Any]) -> shoal.Agent[Any]:
        helper = shoal.Agent(name="helper", description="Helps.", instructions=instructions,
                             model=model, isolation=where)  # type: ignore[arg-type]
        return shoal.Agent(name="lead", subagents=[helper], model=ScriptedModel(lead_steps))

    async def first() -> None:
        handles.append(agents("Help.", ScriptedModel([stop_the_run]), "inline", [
            [call("helper", task="x")]]).start("go", runtime=runtime, run_id="r1"))
        with pytest.raises(shoal.AgentError, match="stopped mid-way"):
            await handles[0]

    asyncio.run(first())
    changed = ScriptedModel(["never"])  # the helper's turn is refused: it asks another request
    resumed = agents("Help more.", changed, isolation, ["done"]).resume_sync(
        "r1", "go", runtime=runtime, budget=shoal.Budget(requests=2))
    assert resumed.output == "done" and changed.requests == []
    assert resumed.calls[0].status == "failed" and "PlanChangedError" in str(
        resumed.calls[0].message.content)
    assert resumed.turns == 2  # the lead's first turn, replayed, and its second, asked
