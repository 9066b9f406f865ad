"""The approval desk: where a runtime's pending approval requests wait for their approver.

One desk per :class:`~shoal.runtime.Runtime`, shared by all its runs (an agent's turns and its
subagents' included), so that:

* requests that become pending in the same turn of the event loop go to the approver as **one
  batch**, whichever run they come from; while the approver reviews a batch, new requests
  gather for the next one (one review at a time: a person answers one prompt at a time);
* a **rate limit** (``Runtime(approval_rate="5/s")``) spaces out the requests passed on, and
  a **budget** (``approval_budget=N``) caps how many are ever passed on: the rest are denied
  at once, so a runaway agent cannot flood a person;
* an **approval timeout** (``approval_timeout=S``), counted from the request, denies a call
  nobody decided on in time; no approver at all, or an approver that fails, also denies.

The desk only asks and answers. Deciding what an answer means for a call (and storing it) is
the driver's part; the ledger (:class:`ApprovalLedger`) is where decisions are kept: the
run's :class:`~shoal.store.base.Store` when it has one, else a :class:`MemoryLedger`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from shoal.approvals import ApprovalRequest, Approver, Decision
from shoal.exceptions import describe_exception
from shoal.limits import Rate, RateLimiter
from shoal.store.base import ApprovalRecord
from shoal.store.base import Decision as StoredDecision

__all__ = ["NO_APPROVER", "ApprovalDesk", "ApprovalLedger", "MemoryLedger", "Ruling"]

log = logging.getLogger("shoal")

DRAIN_GRACE = 1.0  # seconds a cancelled review gets to end when its run ends

NO_APPROVER = ("this tool needs approval and the runtime has no approver "
               "(Runtime(approver=...), or shoal run --approve ...)")

#: Called with the decision and who made it (an approver's name, ``timeout``, ``budget``...).
Ruling = Callable[[Decision, str], None]


class ApprovalLedger(Protocol):
    """Where approval requests and decisions are kept.

    This is the approval part of :class:`~shoal.store.base.Store`: every store is a ledger.
    """

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request; if one for the same run, node and hash exists, return it."""
        ...

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        ...

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, marked used; ``None`` if there is none."""
        ...

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's requests and decisions, oldest first."""
        ...


class MemoryLedger:
    """An :class:`ApprovalLedger` in memory, for runtimes without a store. Thread-safe."""

    def __init__(self) -> None:
        self._records: dict[str, list[ApprovalRecord]] = {}
        self._lock = threading.Lock()

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request, or return the open one for the same call."""
        with self._lock:
            found = self._open(record.run_id, record.node_id, record.args_hash)
            if found is not None:
                return found[1]
            stored = replace(record, requested_at=record.requested_at or time.time())
            self._records.setdefault(record.run_id, []).append(stored)
            return stored

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        when = time.time() if at is None else at
        with self._lock:
            found = self._open(run_id, node_id, args_hash)
            records = self._records.setdefault(run_id, [])
            if found is None:
                records.append(ApprovalRecord(run_id, node_id, "", args_hash, requested_at=when))
                found = (len(records) - 1, records[-1])
            records[found[0]] = replace(found[1], decision=decision, decided_by=decided_by,
                                        decided_at=when, reason=reason)

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, now marked used (or ``None``)."""
        with self._lock:
            found = self._open(run_id, node_id, args_hash)
            if found is None or found[1].decision == "pending":
                return None
            used = self._records[run_id][found[0]] = replace(found[1], used=True)
            return used

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's requests and decisions, oldest first."""
        with self._lock:
            found = list(self._records.get(run_id, []))
        return [r for r in found if r.decision == "pending"] if pending_only else found

    def _open(self, run_id: str, node_id: str,
              args_hash: str) -> tuple[int, ApprovalRecord] | None:
        for i, known in enumerate(self._records.get(run_id, [])):
            if known.node_id == node_id and known.args_hash == args_hash and not known.used:
                return i, known
        return None


@dataclass(slots=True)
class _Pending:
    request: ApprovalRequest
    on_ruling: Ruling
    timer: asyncio.TimerHandle | None = None
    open: bool = True
    sent: bool = False  # handed to the approver


class ApprovalDesk:
    """Batches, paces and times out a runtime's approval requests; see the module docstring.

    Args:
        approver: who decides (``None``: every request is denied with :data:`NO_APPROVER`).
        timeout: seconds from a request to its denial if nobody decided (``None``: wait).
        rate: at most this many requests passed to the approver per period.
        budget: at most this many requests passed to the approver, ever; the rest are denied.
        ledger: where decisions are kept.
    """

    def __init__(self, approver: Approver | None, *, timeout: float | None = None,
                 rate: Rate | None = None, budget: int | None = None,
                 ledger: ApprovalLedger | None = None) -> None:
        self.approver = approver
        self.timeout = timeout
        self.budget = budget
        self.ledger: ApprovalLedger = ledger if ledger is not None else MemoryLedger()
        self._limiter = RateLimiter("approval requests", rate) if rate is not None else None
        self.requested = 0  # requests passed to the approver (what the budget counts)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Pending] = []
        self._open: dict[str, _Pending] = {}
        self._batch: list[_Pending] = []
        self._review: asyncio.Task[None] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._rate_timer: asyncio.TimerHandle | None = None

    def pending(self, run_id: str | None = None) -> list[ApprovalRequest]:
        """Requests waiting for a decision (of one run, or all)."""
        return [p.request for p in self._open.values()
                if run_id is None or p.request.run_id == run_id]

    def submit(self, request: ApprovalRequest, on_ruling: Ruling) -> None:
        """Queue ``request``; ``on_ruling`` is called once, on the loop, with the decision."""
        self._bind()
        assert self._loop is not None
        pending = _Pending(request, on_ruling)
        self._open[request.id] = pending
        self._queue.append(pending)
        if self.timeout is not None:
            pending.timer = self._loop.call_later(self.timeout, self._expire, request.id)
        if self._flush_soon is None:  # later submits of this loop turn join the same batch
            self._flush_soon = self._loop.call_soon(self._flush)

    def withdraw(self, request_id: str) -> None:
        """The call no longer needs a decision (it was cancelled); no ruling follows."""
        pending = self._close(request_id)
        if pending is not None and pending.sent and self.approver is not None:
            self._tell_withdrawn(self.approver, [pending.request])

    async def drain(self, run_id: str) -> None:
        """Withdraw ``run_id``'s requests and wait for a review that only they kept going."""
        for request in self.pending(run_id):
            self.withdraw(request.id)
        review = self._review
        if review is not None and review.cancelling():
            # bounded: an approver that ignores cancellation must not hold the run open
            await asyncio.wait({review}, timeout=DRAIN_GRACE)

    async def aclose(self) -> None:
        """Withdraw everything and stop a review in progress."""
        for request_id in list(self._open):
            self.withdraw(request_id)
        for handle in (self._flush_soon, self._rate_timer):
            if handle is not None:
                handle.cancel()
        self._flush_soon = self._rate_timer = None
        review = self._review
        if review is not None and not review.done():
            review.cancel()
            await asyncio.wait({review}, timeout=DRAIN_GRACE)

    # ---- internals ------------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # requests of a loop that is gone cannot be answered there
            self._loop = loop
            self._queue, self._open, self._batch = [], {}, []
            self._review = self._flush_soon = self._rate_timer = None

    def _close(self, request_id: str) -> _Pending | None:
        """Mark a request answered or withdrawn; stop a review nobody waits for any more."""
        pending = self._open.pop(request_id, None)
        if pending is None:
            return None
        pending.open = False
        if pending.timer is not None:
            pending.timer.cancel()
        if (self._review is not None and pending in self._batch
                and not any(p.open for p in self._batch)):
            self._review.cancel()
        return pending

    def _expire(self, request_id: str) -> None:
        pending = self._close(request_id)
        if pending is None:
            return
        if pending.sent and self.approver is not None:
            self._tell_withdrawn(self.approver, [pending.request])
        reason = f"no decision within {self.timeout:g} s (the approval timeout)"
        self._rule(pending, Decision.deny(reason), "timeout")

    def _flush(self) -> None:
        """Pass queued requests on as one batch, within the budget and the rate."""
        self._flush_soon = None
        if self._review is not None:
            return  # the review in progress flushes again when it ends
        assert self._loop is not None
        batch: list[_Pending] = []
        while self._queue:
            pending = self._queue[0]
            if not pending.open:
                self._queue.pop(0)
                continue
            if self.approver is None:
                self._deny_now(pending, NO_APPROVER, "no approver")
                continue
            if self.budget is not None and self.requested >= self.budget:
                self._deny_now(pending, f"the approval budget of {self.budget} requests is "
                               "used up", "budget")
                continue
            if not self._take_token():
                break
            self._queue.pop(0)
            pending.sent = True
            self.requested += 1
            batch.append(pending)
        if batch:
            self._batch = batch
            self._review = self._loop.create_task(self._run_review(batch))

    def _deny_now(self, pending: _Pending, reason: str, by: str) -> None:
        self._queue.pop(0)
        self._close(pending.request.id)
        self._rule(pending, Decision.deny(reason), by)

    def _take_token(self) -> bool:
        """Whether the rate allows one more request now; if not, flush again when it does."""
        if self._limiter is None:
            return True
        assert self._loop is not None
        now = self._loop.time()
        wait = self._limiter.wait_time(now)
        if wait <= 0:
            self._limiter.take(now)
            return True
        if self._rate_timer is None:
            self._rate_timer = self._loop.call_later(wait, self._rate_due)
        return False

    def _rate_due(self) -> None:
        self._rate_timer = None
        self._flush()

    async def _run_review(self, batch: list[_Pending]) -> None:
        approver = self.approver
        assert approver is not None
        try:
            decisions = await self._ask(approver, [p.request for p in batch])
        except asyncio.CancelledError:
            return  # every request in the batch was answered or withdrawn meanwhile
        finally:
            self._review, self._batch = None, []
            if self._queue and self._flush_soon is None and self._loop is not None:
                self._flush_soon = self._loop.call_soon(self._flush)
        for pending, decision in zip(batch, decisions, strict=True):
            if pending.open:
                self._close(pending.request.id)
                self._rule(pending, decision, approver.name)

    async def _ask(self, approver: Approver, requests: list[ApprovalRequest]) -> list[Decision]:
        """The approver's decisions, one per request; a failing approver denies them all."""
        try:
            answers = list(await approver.review(requests))
        except Exception as exc:  # the approver's bug: deny, and say so, rather than run
            log.exception("approver %s failed", approver.name)
            why = f"the approver failed: {describe_exception(exc)}"
            return [Decision.deny(why) for _ in requests]
        decisions = [a if isinstance(a, Decision) else Decision.deny(
            f"the approver answered {a!r}, not a Decision") for a in answers[:len(requests)]]
        missing = len(requests) - len(decisions)
        return decisions + [Decision.deny("the approver gave no decision")] * missing

    def _rule(self, pending: _Pending, decision: Decision, by: str) -> None:
        try:
            pending.on_ruling(decision, by)
        except Exception:  # a bug in shoal itself: keep serving the other requests
            log.exception("applying the decision on %s failed", pending.request.id)

    @staticmethod
    def _tell_withdrawn(approver: Approver, requests: Sequence[ApprovalRequest]) -> None:
        try:
            approver.withdrawn(requests)
        except Exception:  # the approver's bug must not break the run
            log.exception("approver %s failed on withdrawn requests", approver.name)
