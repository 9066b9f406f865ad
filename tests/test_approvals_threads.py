"""One runtime's approval desk serving runs on several threads' event loops at once.

Each loop's requests are served on that loop (its timers, batches and reviews); the approver,
the budget and the rate are the runtime's, counted across loops. Before, a request from a
second loop reset the desk: the first loop's requests were never answered and its run hung.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import shoal
from shoal import ApprovalRequest, Approver, Decision

ROUNDS = 5


@shoal.tool(approval=True)
async def guarded(i: int) -> int:
    """A call that needs approval."""
    return i


class Slow(Approver):
    """Approves every request after a short wait (its review spans other loops' requests)."""

    name = "slow"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        with self.lock:
            self.seen += [r.id for r in batch]
        await asyncio.sleep(0.02)
        return [Decision.approve() for _ in batch]


def _plan(tag: str, calls: int) -> shoal.Plan:
    plan = shoal.Plan(tag)
    for i in range(calls):
        plan.call(guarded, i=i, node_id=f"{tag}-{i}")
    return plan


def _on_threads(runtime: shoal.Runtime, plans: list[shoal.Plan]) -> list[shoal.RunResult]:
    """``runtime.run_sync`` of each plan on a thread of its own, all at once."""
    results: list[shoal.RunResult | None] = [None] * len(plans)
    errors: list[BaseException] = []
    start = threading.Barrier(len(plans))

    def work(index: int) -> None:
        start.wait()
        try:
            results[index] = runtime.run_sync(plans[index], deadline=30)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a run never ended"
    assert not errors, errors
    return [r for r in results if r is not None]


def test_runs_on_two_threads_both_get_their_approvals() -> None:
    for _ in range(ROUNDS):
        approver = Slow()
        runtime = shoal.Runtime(approver=approver, approval_timeout=20)
        results = _on_threads(runtime, [_plan("a", 3), _plan("b", 3)])
        assert [r.counts["ok"] for r in results] == [3, 3], [r.counts for r in results]
        assert len(approver.seen) == 6


def test_the_approval_budget_counts_the_requests_of_every_thread_once() -> None:
    for _ in range(ROUNDS):
        approver = Slow()
        runtime = shoal.Runtime(approver=approver, approval_budget=4)
        results = _on_threads(runtime, [_plan("a", 3), _plan("b", 3), _plan("c", 3)])
        ok = sum(r.counts["ok"] for r in results)
        denied = [o for r in results for o in r.outcomes.values() if o.status == "denied"]
        assert ok == 4 and len(approver.seen) == 4 and len(denied) == 5
        assert all("approval budget of 4 requests is used up" in o.reason for o in denied)
