"""Malformed text from a model or a tool never ends a run: lone surrogates (``"\\ud800"``, valid
JSON) in tool-call arguments, error messages, reasons, node and run ids, run names and events
are hashed, journaled and read back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

import shoal
from shoal.store import approval_hash
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call

ODD = "bad \ud800 text \udfff"


@shoal.tool(approval=True)
def send(text: str) -> str:
    """A gated tool."""
    return f"sent {text!r}"


@shoal.tool
def breaks(x: int) -> str:
    """Fails with a message holding lone surrogates."""
    raise ValueError(f"{ODD} {x}")


@shoal.tool
def fine(x: int) -> int:
    """A sibling whose result must not be lost."""
    return x + 1


@shoal.tool
def echo(text: str) -> str:
    """Returns its text."""
    return text


def test_approval_hash_takes_any_text_and_is_stable() -> None:
    first = approval_hash("send", {"text": ODD})
    assert first == approval_hash("send", {"text": ODD})
    assert first != approval_hash("send", {"text": "bad \ufffd text \ufffd"})
    assert first != approval_hash("send", {"text": "bad \\ud800 text \\udfff"})
    assert approval_hash("send", {"text": "é"}) == approval_hash("send", {"text": "é"})


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_gated_call_with_lone_surrogates_runs_once_approved(tmp_path: Path,
                                                              store: str) -> None:
    asked: list[shoal.ApprovalRequest] = []

    def person(request: shoal.ApprovalRequest) -> bool:
        asked.append(request)
        return True

    where = "memory" if store == "memory" else tmp_path / "runs.db"
    model = ScriptedModel([[call("send", raw_arguments='{"text": "hi \\ud800"}')], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[send])
    result = agent.run_sync("go", runtime=shoal.Runtime(approver=person, store=where))
    assert result.status == "ok" and result.output == "done"
    assert [c.status for c in result.calls] == ["ok"]
    assert asked[0].args == {"text": "hi \ud800"}
    assert asked[0].args_hash == approval_hash("send", {"text": "hi \ud800"})


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_an_error_message_with_lone_surrogates_is_journaled_beside_a_sibling(
        tmp_path: Path, store: str) -> None:
    where = "memory" if store == "memory" else tmp_path / "runs.db"
    plan = shoal.Plan()
    bad = plan.call(breaks, x=1, node_id="bad")
    ok = plan.call(fine, x=1, node_id="ok")
    runtime = shoal.Runtime(store=where)
    result = runtime.run_sync(plan)
    assert result[ok].value == 2 and result[bad].status == "failed"
    error = result[bad].error
    assert error is not None and ODD in error.message
    if store == "sqlite":
        journal = SQLiteStore(tmp_path / "runs.db")
        stored = journal.outcomes(result.run_id)
        assert stored["ok"].outcome.value == 2
        error = stored["bad"].outcome.error
        assert error is not None and ODD in error.message and ODD in error.traceback
        assert ODD in journal.attempts(result.run_id)[0].error or any(
            ODD in a.error for a in journal.attempts(result.run_id))


def test_ids_names_and_events_with_lone_surrogates_round_trip_and_resume(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    plan = shoal.Plan(name=f"plan {ODD}")
    first = plan.call(echo, text=ODD, node_id=f"n{ODD}")
    plan.call(fine, x=1, node_id="later", after=first)
    run_id = f"run-{ODD}"
    store = SQLiteStore(db, keep_events=True)
    result = shoal.Runtime(store=store).run_sync(plan, run_id=run_id)
    assert result.ok and result[first].value == ODD
    journal = SQLiteStore(db)
    record = journal.get_run(run_id)
    assert record is not None and record.name == f"plan {ODD}" and not record.damaged
    assert run_id in [r.run_id for r in journal.list_runs()]
    assert journal.outcomes(run_id)[f"n{ODD}"].outcome.value == ODD
    assert {a.node_id for a in journal.attempts(run_id)} == {f"n{ODD}", "later"}
    assert any(e.get("node_id") == f"n{ODD}" for e in journal.events(run_id))
    again = shoal.Runtime(store=db).resume_sync(run_id, plan)  # replays: ids match exactly
    assert again.ok and again[first].value == ODD


@pytest.mark.parametrize("make", [MemoryStore, "sqlite"])
def test_approval_records_with_lone_surrogates(tmp_path: Path, make: object) -> None:
    store = MemoryStore() if make is MemoryStore else SQLiteStore(tmp_path / "a.db")
    digest = approval_hash("send", {"text": ODD})
    store.request_approval(shoal.store.ApprovalRecord(
        f"r{ODD}", f"n{ODD}", "send", digest, {"text": ODD}))
    store.decide(f"r{ODD}", f"n{ODD}", digest, "approved", decided_by=ODD, reason=ODD)
    used = store.use_decision(f"r{ODD}", f"n{ODD}", digest)
    assert used is not None and used.decision == "approved" and used.reason == ODD
    assert store.approvals(f"r{ODD}")[0].arguments == {"text": ODD}
