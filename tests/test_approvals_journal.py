"""Approvals in the SQLite journal: few commits, and every decision on disk before its call runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

import shoal
from shoal.exceptions import StoreError
from shoal.store.base import ApprovalRecord
from shoal.store.sqlite import SQLiteStore

CALLS = 300
SEEN: dict[int, tuple[str, int] | None] = {}  # n -> its approval row as the file held it
DB: list[Path] = []


@shoal.tool(approval=True)
def act(n: int) -> int:
    """Needs approval; reads its own approval from the file (another connection) as it runs."""
    with closing(sqlite3.connect(DB[0])) as db:
        row = db.execute("SELECT decision, used FROM approvals WHERE node_id = ? AND "
                         "decision != 'pending'", (f"act#{n + 1}",)).fetchone()
    SEEN[n] = None if row is None else (row[0], row[1])
    return n


def _plan(calls: int) -> shoal.Plan:
    plan = shoal.Plan()
    for n in range(calls):
        plan.call(act, n=n)
    return plan


def _commits(store: SQLiteStore) -> list[int]:
    counted = [0]

    def trace(sql: str) -> None:
        if sql.strip().upper().startswith("COMMIT"):
            counted[0] += 1

    store._conn.set_trace_callback(trace)
    return counted


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path) -> Iterator[None]:
    SEEN.clear()
    DB[:] = [tmp_path / "runs.db"]
    yield
    SEEN.clear()


def test_calls_approved_together_cost_a_few_commits_not_three_each() -> None:
    store = SQLiteStore(DB[0])
    commits = _commits(store)
    result = shoal.Runtime(store=store, approver=lambda r: True).run_sync(_plan(CALLS))
    assert result.ok
    # each call's request, decision and its use were a commit each (900 here, an fsync each:
    # 2,000 calls took 12 s); now one for the requests asked together and one for the
    # decisions of a batch (a few more for the run's own records)
    assert commits[0] < 30, commits[0]
    kept = store.approvals(result.run_id)
    assert len(kept) == CALLS and all(a.decision == "approved" and a.used for a in kept)
    store.close()


@pytest.mark.parametrize("spent", [False, True])
def test_calls_denied_without_an_approver_or_budget_cost_a_few_commits(spent: bool) -> None:
    # no approver (the default) or a spent approval budget: each denial was a commit of its
    # own (2,000 calls: 8.3 s; a deny-all approver: 0.7 s); now one per lot denied together
    store = SQLiteStore(DB[0])
    commits = _commits(store)
    runtime = (shoal.Runtime(store=store, approver=lambda r: True, approval_budget=0) if spent
               else shoal.Runtime(store=store))
    result = runtime.run_sync(_plan(CALLS))
    assert result.counts["denied"] == CALLS and not SEEN
    assert commits[0] < 30, commits[0]
    kept = store.approvals(result.run_id)
    assert len(kept) == CALLS and all(a.decision == "denied" for a in kept)
    store.close()


def test_every_call_finds_its_approval_on_disk_when_it_runs() -> None:
    store = SQLiteStore(DB[0])
    result = shoal.Runtime(store=store, approver=lambda r: True).run_sync(_plan(CALLS))
    assert result.ok and len(SEEN) == CALLS
    assert set(SEEN.values()) == {("approved", 1)}  # committed (and used) before it ran
    store.close()


class CommitFails(SQLiteStore):
    """A journal whose batches of decisions cannot be committed (a full disk, say)."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        outer = self._depth == 0
        with super().batch():
            yield
            if outer and any(a.decision != "pending" for a in self.approvals(RUN)):
                raise StoreError("database or disk is full")  # undoes the batch


RUN = "decisions-lost"


def test_decisions_whose_commit_fails_deny_their_calls_and_none_runs() -> None:
    store = CommitFails(DB[0])
    result = shoal.Runtime(store=store, approver=lambda r: True).run_sync(
        _plan(20), run_id=RUN)
    assert SEEN == {}  # none ran
    assert {o.status for o in result.outcomes.values()} == {"denied"}
    assert {o.reason for o in result.outcomes.values()} == {"database or disk is full"}
    kept = SQLiteStore(DB[0])
    assert not [a for a in kept.approvals(RUN) if a.decision == "approved"]  # none kept
    kept.close()
    store.close()


def test_a_batch_is_one_commit_and_a_write_failing_in_it_is_undone_alone() -> None:
    store = SQLiteStore(DB[0])
    commits = _commits(store)
    with store.batch():
        for n in range(50):
            store.request_approval(ApprovalRecord("r", f"n{n}", "t", f"h{n}"))
        with pytest.raises(StoreError, match="too large"):
            store.request_approval(ApprovalRecord("r", "bad", "t", "h", requested_at=2**70))
        store.decide("r", "n0", "h0", "approved", decided_by="me")
        assert store.use_decision("r", "n0", "h0") is not None
    assert commits[0] == 1
    kept = store.approvals("r")
    assert len(kept) == 50 and kept[0].used and "bad" not in {a.node_id for a in kept}

    def stopped() -> None:
        with store.batch():  # an error leaving it undoes it all
            store.request_approval(ApprovalRecord("r", "gone", "t", "h"))
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        stopped()
    assert len(store.approvals("r")) == 50 and commits[0] == 1
    store.request_approval(ApprovalRecord("r", "after", "t", "h"))  # usable as before
    assert len(store.approvals("r")) == 51
    store.close()


class RequestsLost(SQLiteStore):
    """A journal whose batches of requests cannot be committed."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        outer = self._depth == 0
        with super().batch():
            yield
            if outer and self.approvals(RUN):
                raise StoreError("disk I/O error")  # undoes the batch


def test_requests_whose_commit_fails_are_denied_unasked() -> None:
    asked: list[str] = []

    def approver(request: shoal.ApprovalRequest) -> bool:
        asked.append(request.node_id)
        return True

    store = RequestsLost(DB[0])
    result = shoal.Runtime(store=store, approver=approver).run_sync(_plan(20), run_id=RUN)
    assert asked == [] and SEEN == {}  # nobody was asked about a request not on disk
    assert {o.status for o in result.outcomes.values()} == {"denied"}
    assert {o.reason for o in result.outcomes.values()} == {
        "the request could not be stored: disk I/O error"}
    store.close()


def test_another_threads_write_waits_for_a_batch_and_is_no_part_of_it() -> None:
    import threading

    store = SQLiteStore(DB[0])
    inside, written = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait(10)
        store.request_approval(ApprovalRecord("r", "other", "t", "h"))
        written.set()

    thread = threading.Thread(target=other)
    thread.start()
    waited: list[bool] = []

    def undone() -> None:
        with store.batch():
            store.request_approval(ApprovalRecord("r", "mine", "t", "h"))
            inside.set()
            waited.append(not written.wait(0.2))  # it cannot write while the batch is open
            raise RuntimeError("undo the batch")

    with pytest.raises(RuntimeError):
        undone()
    thread.join(10)
    assert waited == [True] and written.is_set()
    assert [a.node_id for a in store.approvals("r")] == ["other"]  # its own commit, kept
    store.close()
