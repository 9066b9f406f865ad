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
