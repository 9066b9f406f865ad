"""What every run costs however small it is, and what it still journals.

An agent runs each of its steps as an open run, so a swarm starts thousands: a new run's
record is made once (when it starts), a memory journal gets the run's end in one write and is
closed without a coroutine, and a run nobody asked for approval drains no approval desk. The
journal still holds what it held: the run's start (process, host, date) and its end.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.approvals.desk import ApprovalDesk
from shoal.scheduler import driver
from shoal.store.base import RunRecord
from shoal.store.journal import Journal
from shoal.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(60)


@shoal.tool
async def echo(x: int) -> int:
    """Return ``x``."""
    return x


@shoal.tool(approval=True)
async def guarded(x: int) -> int:
    """Return ``x``, once approved."""
    return x


async def _open_run(runtime: shoal.Runtime, run_id: str) -> shoal.RunResult:
    async with runtime.open_run(run_id=run_id) as run:
        run.call(echo, x=1)
    return run.result


def test_a_new_runs_record_is_made_once_and_says_who_runs_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    init = RunRecord.__init__

    def counted(self: RunRecord, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self.run_id)

    monkeypatch.setattr(RunRecord, "__init__", counted)
    store = MemoryStore()
    result = asyncio.run(_open_run(shoal.Runtime(store=store), "once"))
    assert [o.status for o in result.outcomes.values()] == ["ok"]
    assert made == ["once"]  # made as the run started, not before it as well
    record = store.get_run("once")
    assert record is not None
    assert (record.status, record.sessions, record.nodes) == ("finished", 1, 0)
    assert record.pid == os.getpid() and record.host == driver.HOST
    assert record.heartbeat > 0 and record.started_at == result.started_at_epoch
    assert record.source == {"open_run": True} and record.counts["ok"] == 1


def test_a_memory_journal_gets_a_runs_start_and_its_end_in_a_write_each() -> None:
    writes: list[list[str]] = []

    class Counting(MemoryStore):
        def write(self, records: Any) -> None:
            writes.append([type(r).__name__ for r in records])
            super().write(records)

    store = Counting()
    asyncio.run(_open_run(shoal.Runtime(store=store), "two-writes"))
    assert writes == [["RunRecord"], ["OutcomeRecord", "RunEnded"]]
    assert [s.outcome.status for s in store.outcomes("two-writes").values()] == ["ok"]


def test_a_memory_journal_is_closed_without_a_coroutine_a_durable_one_awaited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    close = Journal.close

    async def counted(self: Journal) -> None:
        closed.append(self.durable)
        await close(self)

    monkeypatch.setattr(Journal, "close", counted)
    asyncio.run(_open_run(shoal.Runtime(), "memory"))
    assert closed == []
    runtime = shoal.Runtime(store=str(tmp_path / "runs.db"))
    result = asyncio.run(_open_run(runtime, "durable"))
    assert closed == [True]  # its writer thread is waited for
    assert [o.status for o in result.outcomes.values()] == ["ok"]


def test_a_memory_journal_that_failed_still_fails_the_run() -> None:
    class Failing(MemoryStore):
        def write(self, records: Any) -> None:
            if any(type(r).__name__ == "RunEnded" for r in records):
                raise OSError("disk on fire")
            super().write(records)

    with pytest.raises(shoal.exceptions.StoreError, match="disk on fire"):
        asyncio.run(_open_run(shoal.Runtime(store=Failing()), "failing"))


def test_only_a_run_of_a_desk_that_was_asked_drains_it(monkeypatch: pytest.MonkeyPatch) -> None:
    drained: list[str] = []
    drain = ApprovalDesk.drain

    async def counted(self: ApprovalDesk, run_id: str) -> None:
        drained.append(run_id)
        await drain(self, run_id)

    monkeypatch.setattr(ApprovalDesk, "drain", counted)
    plain = shoal.Plan("plain")
    plain.call(echo, x=1)
    assert shoal.run_sync(plain).ok
    assert drained == []
    asked = shoal.Plan("asked")
    asked.call(guarded, x=1)
    result = shoal.run_sync(asked, approver=lambda request: True)
    assert result.ok and len(drained) == 1


def test_a_node_given_its_id_and_a_list_after_is_made_in_call_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a plan built as a plan file's or a benchmark's is (ids of its own, after= lists): its
    # nodes are made by call()'s own path, not the general one, and come out the same
    general: list[str | None] = []
    make = shoal.Plan._make_node

    def counted(self: shoal.Plan, *args: Any) -> Any:
        general.append(args[3])
        return make(self, *args)

    monkeypatch.setattr(shoal.Plan, "_make_node", counted)
    plan = shoal.Plan("ids")
    a = plan.call(echo, x=1, node_id="a")
    b = plan.call(echo, x=a, after=[a], node_id="b")
    plan.call(echo, x=2, after=("a", b), node_id="c")
    plan.call(echo, x=3, after=[])
    assert general == []
    assert [(n.id, n.after, n.index) for n in plan.nodes] == [
        ("a", (), 0), ("b", ("a",), 1), ("c", ("a", "b"), 2), ("echo#1", (), 3)]
    assert [r.node for r in plan.node("b").refs] == ["a"]
    assert shoal.run_sync(plan).ok
    # what call() does not take goes the general way, and is refused or kept as before
    plan.call(echo, x=4, node_id="a")  # taken: kept aside, reported by validate()
    plan.call(echo, x=5, node_id="m[1]")
    plan.call(echo, x=6, after=a)  # one ref, not a list
    assert general == ["a", "m[1]", None]
    with pytest.raises(shoal.PlanError) as raised:
        plan.validate()
    assert [p.code for p in raised.value.problems] == ["duplicate_id"]
    other = shoal.Plan("other").call(echo, x=1)
    with pytest.raises(shoal.PlanError, match="another plan"):
        plan.call(echo, x=7, after=[other], node_id="d")
    with pytest.raises(shoal.PlanError, match="/"):
        plan.call(echo, x=8, node_id="a/b")


def test_a_throwaway_runtime_makes_no_ledger_and_awaits_nothing_to_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # shoal.run makes a runtime per run: its approval desk's ledger and thread-local are made
    # on first use, and closing awaits no backend, desk or composition that holds nothing
    from shoal.approvals.ledger import MemoryLedger
    from shoal.runtime import Runtime
    from shoal.scheduler.scope import RunScope

    made: list[str] = []

    class Ledger(MemoryLedger):
        def __init__(self) -> None:
            made.append("ledger")
            super().__init__()

    awaited: list[str] = []

    def counting(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            awaited.append(name)
            return await original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    monkeypatch.setattr("shoal.approvals.desk.MemoryLedger", Ledger)
    for cls, name in ((RunScope, "end"), (Runtime, "_end_runs"), (Runtime, "_close_backends"),
                      (ApprovalDesk, "aclose")):
        counting(cls, name)
    plain = shoal.Plan("plain")
    plain.call(echo, x=1)
    assert shoal.run_sync(plain).ok
    assert (made, awaited) == ([], [])
    asked = shoal.Plan("asked")
    asked.call(guarded, x=1)
    result = shoal.run_sync(asked, approver=lambda request: True)
    assert result.ok and made == ["ledger"]  # made once asked: one for the runtime
    assert "_close_backends" in awaited and "aclose" in awaited
    desk = ApprovalDesk(None)
    assert desk.ledger is desk.ledger and made == ["ledger", "ledger"]


def test_a_node_after_nodes_the_plan_has_is_validated_without_the_general_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    general = shoal.Plan._node_problems

    def counted(self: shoal.Plan, node: Any) -> Any:
        checked.append(node.id)
        return general(self, node)

    monkeypatch.setattr(shoal.Plan, "_node_problems", counted)
    plan = shoal.Plan("after")
    a = plan.call(echo, x=1, node_id="a")
    plan.call(echo, x=2, after=[a], node_id="b")
    plan.call(echo, x=3, after=["a", "b"], node_id="c")
    plan.validate()
    assert checked == []
    assert all(node.checked is node.args for node in plan.nodes)  # as the general check sets
    # an after naming no node, or the node itself, is still found and said
    plan.call(echo, x=4, after=["nowhere"], node_id="d")
    plan.call(echo, x=5, after=["e"], node_id="e")
    with pytest.raises(shoal.PlanError) as raised:
        plan.validate()
    assert [(p.code, p.node) for p in raised.value.problems] == [
        ("bad_after", "d"), ("self_ref", "e")]
    assert checked == ["d", "e"]
