"""A remote agent retried after its process died replays what it finished, with the memory journal.

As an inline agent retried in the same run does: the tree's in-memory journal holds every
model turn and tool phase the agent finished (its process mirrors its journal to its parent),
so the retried agent plan node, in a new process, neither asks its model again for a
finished turn nor runs a finished call's side effect again. Real subprocesses; the Ray twin
is in tests/test_ray_agents_journal.py.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pytest

import shoal
from shoal.agents.remote import Mirrored, load_mirrored
from shoal.models.base import ModelRequest
from shoal.testing import ScriptedModel, call, pause

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@shoal.tool
def count_call(path: str) -> str:
    """Append a line to ``path``: a side effect that must happen once."""
    with open(path, "a", encoding="utf-8") as out:
        out.write("ran\n")
    return "counted"


@shoal.tool(idempotent=True)
def die_first(path: str, how: str) -> str:
    """End this whole process the first time (``path`` remembers it); say so after.

    ``how``: ``"sigkill"`` (``SIGKILL`` of its own process) or ``"exit"`` (``os._exit``).
    """
    if not Path(path).exists():
        Path(path).write_text("died")
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return "survived"


@shoal.tool(idempotent=True)
def die_after(path: str, watch: str, line: str) -> str:
    """SIGKILL this process once ``watch`` has the line ``line`` (the first time only)."""
    if Path(path).exists():
        return "survived"
    deadline = time.monotonic() + 60
    while not (Path(watch).exists() and line in Path(watch).read_text().split()):
        if time.monotonic() > deadline:
            return "gave up waiting"
        time.sleep(0.02)
    time.sleep(0.5)  # what the agent below sent meanwhile reaches the root
    Path(path).write_text("died")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def asked(path: str, turn: int, step: Any, request: ModelRequest) -> Any:
    """A scripted step that notes in ``path`` that the model was asked for ``turn``."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{turn}\n")
    return step


def turns_asked(path: Path) -> list[int]:
    """The turns the agent's model was asked for (replayed turns are not), in order."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def retried_helper(tmp_path: Path, isolation: Literal["inline", "process", "ray"],
                   how: str = "sigkill",
                   ) -> tuple[shoal.Plan, Any, Path]:
    """A plan whose one node is an agent retried once; its first attempt dies in turn 2.

    Turn 1 calls :func:`count_call` (a side effect, counted in a file), turn 2 calls
    :func:`die_first`, which ends the agent's process; turn 3 answers. The retried agent must
    replay turns 1 and 2 and the call of turn 1, and ask its model only for turn 3.
    """
    log, marker, asks = tmp_path / "log", tmp_path / "died", str(tmp_path / "asked")
    steps = [[call("count_call", path=str(log))],
             [call("die_first", path=str(marker), how=how)], "done"]
    model = ScriptedModel.per_prompt({"go": [
        partial(asked, asks, turn, step) for turn, step in enumerate(steps, 1)]})
    helper = shoal.Agent(name="helper", model=model, tools=[count_call, die_first],
                         isolation=isolation, stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task="go")
    return plan, ref, log


def step_runs(store: Any, run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The tree's journaled steps below ``run_id``: (step, status, each node's status)."""
    found = []
    for record in store.list_runs(limit=1000):
        if record.run_id.startswith(f"{run_id}/"):
            outcomes = store.outcomes(record.run_id)
            # a model turn's node id ends with its request's digest, which names the tree's
            # paths (the twin's differ): compared without it
            found.append((record.run_id.rsplit("/", 1)[1], record.status,
                          {node.split(":", 1)[0]: o.outcome.status
                           for node, o in outcomes.items()}))
    return sorted(found, key=lambda step: step[0])


def run_inline_twin(tmp_path: Path) -> tuple[shoal.RunResult, Any, list[int], Any]:
    """The same plan with an inline agent whose call does not die: what a retry must match."""
    twin = tmp_path / "inline"
    twin.mkdir()
    plan, ref, _ = retried_helper(twin, "inline")
    (twin / "died").write_text("died")  # it survives
    runtime = shoal.Runtime()
    result = runtime.run_sync(plan)
    return result, ref, turns_asked(twin / "asked"), runtime.store


@pytest.mark.parametrize(("how", "events"), [("sigkill", False), ("exit", False),
                                             ("sigkill", True)])
def test_a_retried_process_agent_replays_its_finished_turns_from_the_memory_journal(
        tmp_path: Path, how: str, events: bool) -> None:
    plan, ref, log = retried_helper(tmp_path, "process", how)
    # the default journal (in memory), or one that keeps every event too
    runtime = shoal.Runtime(store=shoal.MemoryStore(keep_events=events))
    result = runtime.run_sync(plan)
    outcome = result[ref]
    assert outcome.status == "ok" and outcome.attempts == 2, outcome
    assert outcome.value == "done"
    assert log.read_text().split() == ["ran"]  # the finished call replayed, not run again
    # turns 1 and 2 in the first process; the retry asked only for turn 3
    assert turns_asked(tmp_path / "asked") == [1, 2, 3]

    inline, inline_ref, inline_turns, inline_store = run_inline_twin(tmp_path)
    assert inline[inline_ref].value == outcome.value
    assert inline_turns == [1, 2, 3]
    # the tree's journal holds the agent's steps as it holds an inline agent's
    assert runtime.store is not None
    load_mirrored(runtime.store)
    assert step_runs(runtime.store, result.run_id) == step_runs(inline_store, inline.run_id)
    if events:  # the agent's events are journaled under its steps, as an inline agent's
        steps = next(r.run_id for r in runtime.store.list_runs(limit=1000)
                     if r.run_id.endswith("/steps"))
        assert any(e["kind"] == "NodeFinished" for e in runtime.store.events(steps))


def test_a_process_agent_with_no_journal_at_all_runs_again_whole(tmp_path: Path) -> None:
    """``store=None``: nothing is journaled anywhere, so the retry starts over (as inline)."""
    plan, ref, log = retried_helper(tmp_path, "process")
    result = shoal.Runtime(store=None).run_sync(plan)
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert log.read_text().split() == ["ran", "ran"]
    assert turns_asked(tmp_path / "asked") == [1, 2, 1, 2, 3]


def test_an_agent_below_a_retried_process_agent_replays_through_it(tmp_path: Path) -> None:
    """The middle agent dies while the agent it started runs; run again, that one replays.

    The agent below (a process agent too) finished its turn 1 and its call (which the middle
    agent sent on to the root as it came), and was in its turn 2 when the middle's process
    was killed, which ended it as well. The middle agent's node is retried: its tool phase
    runs again, and the agent below, started again, replays its turn 1 and its call from the
    root's journal and asks its model only for turn 2.
    """
    log, leaf_asks, middle_asks = tmp_path / "log", tmp_path / "leaf", tmp_path / "middle"
    leaf_steps: list[Any] = [[call("count_call", path=str(log))], [pause(2.0), "leaf done"]]
    leaf = shoal.Agent(name="leaf", model=ScriptedModel.per_prompt({"*": [
        partial(asked, str(leaf_asks), turn, step) for turn, step in enumerate(leaf_steps, 1)]}),
        tools=[count_call], isolation="process", stream_dispatch=False)
    middle_steps: list[Any] = [
        [call("leaf", task="count"), call("die_after", path=str(tmp_path / "died"),
                                           watch=str(leaf_asks), line="2")], "done"]
    middle = shoal.Agent(name="middle", model=ScriptedModel.per_prompt({"go": [
        partial(asked, str(middle_asks), turn, step)
        for turn, step in enumerate(middle_steps, 1)]}),
        tools=[die_after], subagents=[leaf], isolation="process", stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(middle.node_tool.options(retries=1), task="go")
    result = shoal.Runtime().run_sync(plan)
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert result[ref].value == "done"
    assert log.read_text().split() == ["ran"]  # the call below ran once
    assert turns_asked(leaf_asks) == [1, 2, 2]  # turn 1 replayed; turn 2 had not ended
    assert turns_asked(middle_asks) == [1, 2]  # turn 1 replayed


# ---- what the parent keeps for its agents, loaded when read ------------------------------


class NotAllowed:
    """A class the restricted loader does not build (not a dataclass, not allowed)."""


def _records(run_id: str, *also: Any) -> bytes:
    from shoal.store.base import RunEnded, RunRecord

    return pickle.dumps([RunRecord(run_id, 1.0, 1, ""), *also,
                         RunEnded(run_id, "finished", 2.0, {}, 1.0)])


def test_what_agents_send_is_loaded_when_read_and_only_their_own_runs() -> None:
    """A run's records load when read; records naming another run, a record the loader
    refuses (a class not allowed: only it, the rest of its run loads) and a run whose bytes
    are no pickle are left out."""
    from shoal.store.base import RunRecord

    store = shoal.MemoryStore()
    keeper = Mirrored.of(store)
    assert Mirrored.of(store) is keeper  # one per store
    keeper.add(store, [
        ("r/a#1/turn-1", _records("r/a#1/turn-1", RunRecord("r/b#1/turn-1", 1.0, 1, ""))),
        ("r/a#1/turn-2", _records("r/a#1/turn-2", NotAllowed())),
        ("r/a#1/turn-3", b"not a pickle")])
    assert store.get_run("r/a#1/turn-1") is None  # kept as it came: nothing loaded yet
    load_mirrored(store)
    found = store.get_run("r/a#1/turn-1")
    assert found is not None and found.status == "finished"
    assert store.get_run("r/b#1/turn-1") is None  # another agent's run: not this one's to write
    kept = store.get_run("r/a#1/turn-2")  # its refused record alone is left out
    assert kept is not None and kept.status == "finished"
    assert store.get_run("r/a#1/turn-3") is None


def test_the_parent_keeps_as_many_runs_of_its_agents_as_its_memory_journal_keeps() -> None:
    store = shoal.MemoryStore(max_runs=2)
    keeper = Mirrored.of(store)
    keeper.add(store, [(f"r/a#1/turn-{n}", _records(f"r/a#1/turn-{n}")) for n in (1, 2, 3)])
    load_mirrored(store)
    assert [store.get_run(f"r/a#1/turn-{n}") is not None for n in (1, 2, 3)] == [
        False, True, True]  # the oldest went first
