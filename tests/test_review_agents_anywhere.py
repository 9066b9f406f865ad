"""Hostile and awkward cases of agents anywhere: where an agent runs, and its board commits.

A journaled start event whose placement fields are damaged reaches no view, and a board
commit keyed by its call swallows no other call's writes that happen to share the key (an
agent whose model, asked again, made another call under the same name). Real subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import shoal
from shoal.agents.node import NodeInjected
from shoal.cli.agent_journal import event_from_dict
from shoal.cli.tree import AgentTree, render_tree
from shoal.events import AgentStarted
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


# ---- damaged placement fields in a journal ------------------------------------------------


def _started(**fields: Any) -> dict[str, Any]:
    return {"kind": "AgentStarted", "run_id": "r", "time": 0.5, "lineage": "lead/a#1",
            "agent": "a", "prompt": "go", "depth": 1, **fields}


@pytest.mark.parametrize("damage", [
    {"isolation": 5}, {"isolation": "ray", "where": {"host": 1}}, {"isolation": ["ray"]},
    {"isolation": "process", "pid": "4242; rm -rf"}, {"isolation": "process", "pid": True},
    {"isolation": "process", "pid": 1.5},
])
def test_a_damaged_placement_in_a_journaled_start_event_is_left_out(
        damage: dict[str, Any]) -> None:
    event = event_from_dict(_started(**damage))
    assert isinstance(event, AgentStarted)
    assert isinstance(event.where, str) and isinstance(event.isolation, str)
    assert type(event.pid) is int
    tree = AgentTree.replay([event])
    console = Console(record=True, width=120)
    console.print(render_tree(tree, "run r"))  # drawn, not a traceback
    assert "lead" in console.export_text() or "a#1" in console.export_text()


def test_a_journaled_event_whose_time_is_not_a_number_is_skipped() -> None:
    assert event_from_dict(_started(time="soon")) is None
    assert event_from_dict(_started(lineage=["lead"])) is None


# ---- a call's commit is keyed by the call, not only its name -------------------------------


@shoal.tool(idempotent=True)
def note(text: str, board: shoal.BoardHandle) -> str:
    """Append ``text`` to the board's ``notes``."""
    board.write("notes", text)
    return f"noted {text}"


@shoal.tool
def die_once(path: str) -> str:
    """SIGKILL this process the first time (``path`` remembers it)."""
    import os
    import signal

    if not Path(path).exists():
        Path(path).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def first_turn(request: Any) -> list[Any]:
    """The first turn: a note naming the attempt (the model answers differently each time)."""
    marker = Path(_marker_of(request))
    attempt = "second" if marker.exists() else "first"
    return [call("note", text=f"{attempt} answer")]


def second_turn(request: Any) -> list[Any]:
    """The second turn: the first time, its process dies (the note committed before)."""
    return [call("die_once", path=_marker_of(request))]


def _marker_of(request: Any) -> str:
    # the marker file's path travels in the prompt: "go MARKER"
    text = json.dumps([m.content for m in request.messages], default=str)
    return text.split("go ")[1].split('"')[0]


def test_a_retried_agent_whose_model_answers_anew_keeps_both_attempts_writes(
        tmp_path: Path) -> None:
    """The first attempt's process dies after its note committed (in its second turn); the
    retried agent notes anew.

    With no journal the retried agent starts afresh: its model, asked again, writes another
    note under the same call name (``note#1`` of turn 1). That is another call, whose write
    counts: it is not taken for the first call run again.
    """
    assert _retried_notes(tmp_path, None) == ["first answer", "second answer"]


def test_a_retried_agent_replays_its_note_from_the_memory_journal(tmp_path: Path) -> None:
    """With the in-memory journal the retried agent replays its first turn and its note, as
    an inline agent does: its model is not asked again, and the note counts once."""
    assert _retried_notes(tmp_path, "memory") == ["first answer"]


def _retried_notes(tmp_path: Path, store: str | None) -> list[str]:
    """The board's notes after the helper of :func:`first_turn` died once and ran again."""
    marker = tmp_path / "died"
    model = ScriptedModel.per_prompt({f"go {marker}": [first_turn, second_turn, "done"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note, die_once],
                         isolation="process", stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task=f"go {marker}")
    board = shoal.Board(notes=shoal.merge.append)
    result = shoal.Runtime(store=store).run_sync(plan, board=board)
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    notes: list[str] = board["notes"]
    return notes


# ---- an agent journaling through its parent reads and writes only its own runs -------------


class DurableMemoryStore(shoal.MemoryStore):
    """A durable store without a file: agent processes journal in it through their parent."""

    durable = True


@shoal.tool
def pry(shoal_node: NodeInjected) -> list[str]:
    """Ask the journal (the parent's, through it) for runs around this agent's own; say how.

    This call's run is ``RUN/LINEAGE/steps``: a sibling whose lineage starts with the same
    text (``lead/a#1`` and ``lead/a#10``), the parent's own step and the root run are not
    this agent's.
    """
    store = shoal_node.scope.runtime.store
    assert store is not None
    own = shoal_node.scope.run_id.rsplit("/", 1)[0]  # RUN/LINEAGE
    root = own.split("/", 1)[0]
    said = [type(store).__name__]
    for run_id in (f"{own}0/steps", own, f"{own.rsplit('/', 1)[0]}/steps", root):
        try:
            store.get_run(run_id)
            said.append(f"read {run_id}")
        except shoal.ShoalError as exc:
            said.append("refused" if "may journal only its own runs" in str(exc) else repr(exc))
    try:
        store.outcomes(f"{own}/steps")  # its own: answered
        said.append("own ok")
    except shoal.ShoalError as exc:
        said.append(repr(exc))
    return said


def test_an_agent_journaling_through_its_parent_is_refused_runs_that_are_not_its_own() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r")], "done"],
                                      "r": [[call("pry")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[pry], isolation="process",
                         stream_dispatch=False)
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", runtime=shoal.Runtime(store=DurableMemoryStore()))
    said = result.children[0].calls[0].message.content
    assert json.loads(said) == ["ParentStore", "refused", "refused", "refused", "refused",
                                "own ok"], said


@shoal.tool(idempotent=True)
def note_here(shoal_node: NodeInjected, text: str, pid_file: str,
              board: shoal.BoardHandle) -> str:
    """:func:`tests.board_commit_kill.note`, taking its node's context first (injected too)."""
    import os

    Path(pid_file).write_text(str(os.getpid()))
    with open(pid_file + ".ran", "a", encoding="utf-8") as ran:
        ran.write(text + "\n")
    board.write("notes", text)
    return f"noted {text} in {shoal_node.node_id}"


def test_a_call_taking_its_context_too_run_again_after_its_commit_writes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the runtime injects (the node's context, another object each attempt) is not
    what tells the call: run again after its agent's process was killed at its commit, it
    is the same call, and its write counts once."""
    from tests.board_commit_kill import KILL_AT_COMMIT, kill_orders, new_board

    db, pid_file = tmp_path / "runs.db", tmp_path / "helper.pid"
    monkeypatch.setenv(KILL_AT_COMMIT, kill_orders(tmp_path / "kill", "x1", pid_file))
    model = ScriptedModel.per_prompt({"go": [
        [call("note_here", text="x1", pid_file=str(pid_file))], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note_here], isolation="process",
                         stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task="go")
    board = new_board()
    result = shoal.Runtime(store=f"sqlite:///{db}").run_sync(plan, board=board, run_id="p-1")
    assert (tmp_path / "kill.done").exists()
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert (tmp_path / "helper.pid.ran").read_text().split() == ["x1", "x1"]
    assert board["notes"] == ["x1"]


class FlakyJournal(shoal.SQLiteStore):
    """A SQLite journal that fails the first time it is asked to journal a commit as applied."""

    failed = False

    def write(self, records: Any) -> None:
        from shoal.board import stands_alone

        records = list(records)
        if not FlakyJournal.failed and any(
                getattr(r, "kind", None) == "board" and stands_alone(r) for r in records):
            FlakyJournal.failed = True
            raise shoal.StoreError("the disk is full (once)")
        super().write(records)


@shoal.tool(idempotent=True, retries=1)
def note_again(text: str, board: shoal.BoardHandle) -> str:
    """Append ``text`` to the board's ``notes`` (retried once if its attempt fails)."""
    board.write("notes", text)
    return f"noted {text}"


def test_a_commit_the_root_could_not_journal_is_journaled_when_its_call_runs_again(
        tmp_path: Path) -> None:
    """The root applied the commit but its journal refused it: the call failed saying so.

    Its retry finds the commit applied and writes nothing twice, and the root journals it
    then: the journal holds what the board holds, so a resume does not lose the write.
    """
    from shoal.board import replay_journal

    db = tmp_path / "runs.db"
    FlakyJournal.failed = False
    model = ScriptedModel.per_prompt({"go": [[call("note_again", text="x1")], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note_again],
                         isolation="process", stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper, task="go")
    board = shoal.Board(notes=shoal.merge.append)
    result = shoal.Runtime(store=FlakyJournal(db)).run_sync(plan, board=board, run_id="p-1")
    assert FlakyJournal.failed
    assert result[ref].status == "ok", result[ref]
    assert board["notes"] == ["x1"]
    journaled = shoal.Board(notes=shoal.merge.append)
    replay_journal(journaled, shoal.SQLiteStore(db), "p-1")
    assert journaled["notes"] == ["x1"]
