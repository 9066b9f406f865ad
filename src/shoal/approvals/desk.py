"""The desk: where approval requests wait for their approver, and a run acts on the answers.

One :class:`ApprovalDesk` per :class:`~shoal.runtime.Runtime`, shared by all its runs (an
agent's turns and its subagents' included), so that:

* requests that become pending in the same turn of the event loop go to the approver as **one
  batch**, whichever run they come from; while the approver reviews a batch, new requests
  gather for the next one (one review at a time: a person answers one prompt at a time);
* a **rate limit** (``Runtime(approval_rate="5/s")``) spaces out the requests passed on, and
  a **budget** (``approval_budget=N``) caps how many are ever passed on: the rest are denied
  at once, so a runaway agent cannot flood a person;
* an **approval timeout** (``approval_timeout=S``), counted from the request, denies a call
  nobody decided on in time; no approver at all, or an approver that fails, also denies (one
  that raises ``SystemExit`` too: only ``KeyboardInterrupt`` keeps its Ctrl-C meaning).

The desk itself only asks and answers. Each run has a :class:`RunApprovals` at the desk: the
state machine says which of its nodes to ask about (:class:`~shoal.scheduler.state.Ask`) or
no longer (:class:`~shoal.scheduler.state.Withdraw`); it keeps each request in the ledger
(:mod:`shoal.approvals.ledger`), hands it to the desk, and turns the answer into
``state.approve`` or ``state.deny``, keeping the decision and using it first: a decision that
cannot be kept, or was used already, denies the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from shoal.approvals.ledger import (
    ApprovalLedger,
    MemoryLedger,
    RunLedger,
    batched,
    batches,
    earlier_edits,
)
from shoal.approvals.policy import _ANSWER, ApprovalRequest, Approver, Decision, reviewed, stopped
from shoal.approvals.policy import request_id as request_id_of  # its parameters are ids
from shoal.clock import running_loop
from shoal.events import ApprovalRequested, Event
from shoal.exceptions import bounded_text, describe_exception, exception_message
from shoal.limits import Rate, RateLimiter
from shoal.outcome import _safe_repr
from shoal.scheduler.state import Ask, Withdraw

if TYPE_CHECKING:
    from shoal.scheduler.state import ApprovalAction, Decisions, SchedulerState
    from shoal.store.base import ApprovalRecord

__all__ = ["DRAIN_GRACE", "NO_APPROVER", "ApprovalDesk", "RunApprovals", "Ruling"]

log = logging.getLogger("shoal")

DRAIN_GRACE = 1.0  # seconds a cancelled review gets to end when its run ends
#: The most characters of an approver's ``name`` kept with each decision it makes.
NAME_LIMIT = 200

NO_APPROVER = ("this tool needs approval and the runtime has no approver "
               "(Runtime(approver=...), or shoal run --approve ...)")

#: Called with the decision and who made it (an approver's name, ``timeout``, ``budget``...).
Ruling = Callable[[Decision, str], None]


@dataclass(slots=True, eq=False)  # one request is itself: compared and hashed by identity
class _Pending:
    request: ApprovalRequest
    on_ruling: Ruling
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None  # loop time past which an answer comes too late
    open: bool = True
    sent: bool = False  # handed to the approver
    review: asyncio.Task[None] | None = None  # the review it is part of, once sent


@dataclass(slots=True, eq=False)
class _Lane:
    """The desk's requests of one event loop, and what serves them there.

    A runtime may run plans from several threads at once, each on its own loop: each loop's
    requests wait, are timed out, batched and reviewed on that loop (a task, a timer or a
    handle belongs to one loop), while the approver, the budget and the rate are the desk's.
    """

    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]  # weakly: see ApprovalDesk._lanes
    # a deque: taken from the front one by one (a list's pop(0) moved the rest each time)
    queue: deque[_Pending] = field(default_factory=deque)
    open: dict[str, _Pending] = field(default_factory=dict)
    # each review under way, with those of its batch's requests still open: a request
    # closed is taken out, and the review of a batch with none left is cancelled (a list
    # looked through, comparing field by field, made withdrawing a batch of 20,000 take
    # minutes). One at a time for a serial approver (a person); several for one that
    # decides each request on its own, so a request it never answers holds back no other
    reviews: dict[asyncio.Task[None], set[_Pending]] = field(default_factory=dict)
    flush_soon: asyncio.Handle | None = None
    rate_timer: asyncio.TimerHandle | None = None
    # decisions handed on early (answer_now), ruled together at the loop's next turn: those
    # that come at once (a thousand async answers) are kept in one commit, not one each
    early: list[tuple[_Pending, Decision, str]] = field(default_factory=list)
    early_soon: asyncio.Handle | None = None


class _Rulings:
    """Decisions made together (one review's): kept in one transaction per ledger, then acted on.

    A run's ruling writes its decision inside its ledger's batch (:meth:`keep`) and leaves
    what it does with it for later (:meth:`then`); :meth:`close` commits each ledger's batch
    and only then acts, in the order the decisions came: nothing runs on a decision before it
    is on disk, and a ledger whose batch does not commit has its calls denied instead.
    """

    __slots__ = ("_acts", "_batches")

    def __init__(self) -> None:
        # id(ledger) -> its open batch (None: it could not begin; writes go one by one)
        self._batches: dict[int, tuple[ApprovalLedger, AbstractContextManager[object] | None]] = {}
        self._acts: list[tuple[int, Callable[[Exception | None], None]]] = []

    def keep(self, ledger: ApprovalLedger) -> bool:
        """Open ``ledger``'s batch, unless it is open: the writes that follow join it.

        ``False`` if the ledger cannot batch (a :class:`MemoryLedger`, a memory store): its
        decisions are acted on at once, as they are kept.
        """
        if id(ledger) in self._batches:
            return True
        if not batches(ledger):
            return False
        manager = batched(ledger)
        try:
            manager.__enter__()
        except Exception:  # it cannot begin: each write is tried (and fails or not) alone
            self._batches[id(ledger)] = (ledger, None)
            return True
        self._batches[id(ledger)] = (ledger, manager)  # the ledger held: its id stays its own
        return True

    def then(self, ledger: ApprovalLedger, act: Callable[[Exception | None], None]) -> None:
        """Call ``act`` once the writes to ``ledger`` are committed (with the error if not)."""
        self._acts.append((id(ledger), act))

    def close(self, error: BaseException | None = None) -> None:
        """Commit every batch, then act (``error``: one left the block; undo all, do nothing)."""
        failed: dict[int, Exception] = {}
        for key, (_, manager) in self._batches.items():
            if manager is None:
                continue
            try:
                if error is None:
                    manager.__exit__(None, None, None)
                else:
                    manager.__exit__(type(error), error, error.__traceback__)
            except Exception as exc:  # not committed: what was written in it is not kept
                failed[key] = exc
        if error is not None:
            return
        for key, act in self._acts:
            try:
                act(failed.get(key))
            except Exception:  # a bug in shoal itself: act on the other decisions
                log.exception("applying a decision failed")


class ApprovalDesk:
    """Batches, paces and times out a runtime's approval requests; see the module docstring.

    Requests are served on the event loop that submitted them (one lane per loop, see
    :class:`_Lane`), so runs on several threads' loops each get their answers; the budget and
    the rate count the requests of every loop together.

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
        # the default ledger is made on first use (see ledger): most runtimes never ask anything
        self._ledger = ledger
        self._limiter = RateLimiter("approval requests", rate) if rate is not None else None
        self.requested = 0  # requests passed to the approver (what the budget counts)
        # the budget and the rate are checked and taken under this lock: lanes of several
        # threads' loops share them
        self._shared = threading.Lock()
        # weakly, both ways: a runtime outlives the loops it served (a new one per
        # asyncio.run), and must not keep them alive; a lane refers to its loop weakly too.
        # Made with the first lane: most runtimes never ask anything (shoal.run makes one per
        # run), and a weak dictionary costs more to make than the rest of the desk
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane] | None = None
        # the decisions being made together on each thread (see rulings): stored in one
        # transaction per ledger, acted on once committed. Made by the first lot (see
        # together): a thread-local costs more to make than the rest of the desk
        self._rulings: threading.local | None = None

    @property
    def ledger(self) -> ApprovalLedger:
        """Where decisions are kept: the one given, else a :class:`MemoryLedger` (made once)."""
        if self._ledger is None:
            with self._shared:  # one for every thread that asks first at once
                if self._ledger is None:
                    self._ledger = MemoryLedger()
        return self._ledger

    @property
    def rulings(self) -> _Rulings | None:
        """The decisions this thread is making together, if it is (see :meth:`together`)."""
        found: _Rulings | None = getattr(self._rulings, "open", None)  # (None: no lot yet)
        return found

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Rule inside as one lot: decisions stored in one commit per ledger, then acted on."""
        if self.rulings is not None:  # within one already: it commits them all
            yield
            return
        local = self._rulings
        if local is None:
            with self._shared:  # one for every thread: each thread's lot is its attribute
                if self._rulings is None:
                    self._rulings = threading.local()
                local = self._rulings
        rulings = local.open = _Rulings()
        try:
            yield
        except BaseException as exc:
            local.open = None
            rulings.close(exc)
            raise
        local.open = None
        rulings.close()

    def pending(self, run_id: str | None = None) -> list[ApprovalRequest]:
        """Requests waiting for a decision (of one run, or all), on every loop."""
        return [p.request for lane in self._all_lanes() for p in list(lane.open.values())
                if run_id is None or p.request.run_id == run_id]

    def submit(self, request: ApprovalRequest, on_ruling: Ruling) -> None:
        """Queue ``request``; ``on_ruling`` is called once, on the loop, with the decision."""
        loop = asyncio.get_running_loop()
        lane = self._lane()
        pending = _Pending(request, on_ruling)
        lane.open[request.id] = pending
        lane.queue.append(pending)
        if self.timeout is not None:
            pending.deadline = loop.time() + self.timeout
            pending.timer = loop.call_at(pending.deadline, self._expire, lane, request.id)
        if lane.flush_soon is None:  # later submits of this loop turn join the same batch
            lane.flush_soon = loop.call_soon(self._flush, lane)

    def withdraw(self, request_id: str) -> None:
        """The call no longer needs a decision (it was cancelled); no ruling follows."""
        lane = self._lane_of(request_id)
        if lane is None:  # answered or withdrawn already
            return
        pending = self._close(lane, request_id)
        if pending is not None and pending.sent and self.approver is not None:
            self._tell_withdrawn(self.approver, [pending.request])

    @property
    def asked(self) -> bool:
        """Whether a run ever asked this desk anything (else :meth:`drain` has nothing to do)."""
        return self._lanes is not None

    async def drain(self, run_id: str) -> None:
        """Withdraw ``run_id``'s requests and wait for a review that only they kept going."""
        lanes = self._lanes
        lane = lanes.get(asyncio.get_running_loop()) if lanes else None
        if lane is None:  # this loop never asked anything (no loop did: most runtimes)
            return
        for pending in [p for p in lane.open.values() if p.request.run_id == run_id]:
            self.withdraw(pending.request.id)
        stopping = {review for review in lane.reviews if review.cancelling()}
        if stopping:
            # bounded: an approver that ignores cancellation must not hold the run open
            await asyncio.wait(stopping, timeout=DRAIN_GRACE)

    async def aclose(self) -> None:
        """Withdraw everything and stop the reviews in progress (each on its own loop)."""
        if not self._lanes:  # no loop ever asked anything (most runtimes)
            return
        here = asyncio.get_running_loop()
        for lane in self._all_lanes():
            loop = lane.loop()
            if loop is here:
                await self._close_lane(lane)
            elif loop is not None and not loop.is_closed():  # another thread's: closed
                with contextlib.suppress(RuntimeError):  # there, not waited for (or gone)
                    loop.call_soon_threadsafe(self._stop_lane, lane)

    async def _close_lane(self, lane: _Lane) -> None:
        reviews = self._stop_lane(lane)
        if reviews:
            await asyncio.wait(reviews, timeout=DRAIN_GRACE)

    def _stop_lane(self, lane: _Lane) -> set[asyncio.Task[None]]:
        """Withdraw a lane's requests and cancel its reviews (on its loop); those still on."""
        for request_id in list(lane.open):
            pending = self._close(lane, request_id)
            if pending is not None and pending.sent and self.approver is not None:
                self._tell_withdrawn(self.approver, [pending.request])
        for handle in (lane.flush_soon, lane.rate_timer):
            if handle is not None:
                handle.cancel()
        lane.flush_soon = lane.rate_timer = None
        reviews = {review for review in lane.reviews if not review.done()}
        for review in reviews:
            review.cancel()
        return reviews

    # ---- internals ------------------------------------------------------------------------

    def _lane(self) -> _Lane:
        """The lane of the running loop (made on its first request)."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop) if self._lanes is not None else None
        if lane is None:
            with self._shared:  # other threads may be making theirs
                if self._lanes is None:
                    self._lanes = weakref.WeakKeyDictionary()
                lane = self._lanes[loop] = _Lane(weakref.ref(loop))
        return lane

    def _all_lanes(self) -> list[_Lane]:
        """Every loop's lane (copied under the lock: other threads may be adding theirs)."""
        lanes = self._lanes
        if not lanes:  # no loop ever asked anything (most runtimes): no copy to make
            return []
        with self._shared:
            return list(lanes.values())

    def _lane_of(self, request_id: str) -> _Lane | None:
        """The lane where ``request_id`` waits: the running loop's, as a rule."""
        loop = running_loop()
        lanes = self._lanes
        here = lanes.get(loop) if loop is not None and lanes is not None else None
        if here is not None and request_id in here.open:
            return here
        return next((lane for lane in self._all_lanes() if request_id in lane.open), None)

    def _close(self, lane: _Lane, request_id: str) -> _Pending | None:
        """Mark a request answered or withdrawn; stop a review nobody waits for any more."""
        pending = lane.open.pop(request_id, None)
        if pending is None:
            return None
        pending.open = False
        if pending.timer is not None:
            pending.timer.cancel()
        review = pending.review
        batch = lane.reviews.get(review) if review is not None else None
        if review is not None and batch is not None:
            batch.discard(pending)
            if not batch:  # every request of it answered or withdrawn: nobody needs it
                review.cancel()
                # one that ignores its cancellation must not hold the lane (the next batch,
                # of this run or another, waited for it, for good without approval_timeout)
                review.get_loop().call_later(DRAIN_GRACE, self._abandon_review, lane, review)
        return pending

    def _abandon_review(self, lane: _Lane, review: asyncio.Task[None]) -> None:
        """A review cancelled :data:`DRAIN_GRACE` s ago still runs: free its lane of it.

        Its answers, if it ever gives any, are for requests closed already: they are
        dropped. The next batch is reviewed meanwhile (the approver, which ignored the
        cancellation, is then asked while its old review goes on).
        """
        if review not in lane.reviews or review.done():
            return
        log.warning("approver %s ignored the cancellation of a review whose requests were all "
                    "answered or withdrawn, for %g s: the next batch is reviewed without "
                    "waiting for it",
                    _name_of(self.approver) if self.approver is not None else "?", DRAIN_GRACE)
        del lane.reviews[review]
        if lane.queue and lane.flush_soon is None:
            lane.flush_soon = review.get_loop().call_soon(self._flush, lane)

    def _expire(self, lane: _Lane, request_id: str, *, answered: bool = False) -> None:
        """Deny a request nobody decided on within the timeout (``answered``: too late)."""
        pending = self._close(lane, request_id)
        if pending is None:
            return
        if pending.sent and not answered and self.approver is not None:
            self._tell_withdrawn(self.approver, [pending.request])
        reason = f"no decision within {self.timeout:g} s (the approval timeout)"
        self._rule(pending, Decision.deny(reason), "timeout")

    def _flush(self, lane: _Lane) -> None:
        """Pass queued requests on as one batch, within the budget and the rate."""
        lane.flush_soon = None
        if lane.reviews and _serial(self.approver):
            return  # the review in progress flushes again when it ends
        # the denials made here (no approver, the budget spent) are kept in one commit
        with self.together():
            batch = self._take_batch(lane)
        if batch:  # on the lane's loop: this runs there (a handle or a timer of its own)
            review = asyncio.get_running_loop().create_task(self._run_review(lane, batch))
            lane.reviews[review] = set(batch)
            for pending in batch:
                pending.review = review
            review.add_done_callback(_retrieved)

    def _take_batch(self, lane: _Lane) -> list[_Pending]:
        """The queued requests the approver gets now; deny those it never will get."""
        batch: list[_Pending] = []
        queue = lane.queue
        while queue:
            pending = queue[0]
            if not pending.open:
                queue.popleft()
                continue
            if self.approver is None:
                self._deny_now(lane, pending, NO_APPROVER, "no approver")
                continue
            with self._shared:  # checked and counted at once: other loops' lanes count too
                spent = self.budget is not None and self.requested >= self.budget
                taken = not spent and self._take_token(lane)
                if taken:
                    self.requested += 1
            if spent:
                self._deny_now(lane, pending, f"the approval budget of {self.budget} requests "
                               "is used up", "budget")
                continue
            if not taken:
                break
            queue.popleft()
            pending.sent = True
            batch.append(pending)
        return batch

    def _deny_now(self, lane: _Lane, pending: _Pending, reason: str, by: str) -> None:
        lane.queue.popleft()
        self._close(lane, pending.request.id)
        self._rule(pending, Decision.deny(reason), by)

    def _take_token(self, lane: _Lane) -> bool:
        """Whether the rate allows one more request now; if not, flush again when it does."""
        if self._limiter is None:
            return True
        loop = asyncio.get_running_loop()  # the lane's: flushes run on it
        now = loop.time()
        wait = self._limiter.wait_time(now)
        if wait <= 0:
            self._limiter.take(now)
            return True
        if lane.rate_timer is None:
            lane.rate_timer = loop.call_later(wait, self._rate_due, lane)
        return False

    def _rate_due(self, lane: _Lane) -> None:
        lane.rate_timer = None
        self._flush(lane)

    async def _run_review(self, lane: _Lane, batch: list[_Pending]) -> None:
        approver = self.approver
        assert approver is not None
        review = asyncio.current_task()  # this review's task, as _flush made it
        assert review is not None
        # what the approver hands on early (answer_now) is ruled at once, in this task's
        # context only: another review's approver cannot answer for this one's requests
        _ANSWER.set(partial(self._answer_early, lane, review, approver))
        try:
            decisions = await self._ask(approver, [p.request for p in batch])
        except asyncio.CancelledError:
            return  # every request in the batch was answered or withdrawn meanwhile
        finally:
            loop = asyncio._get_running_loop()  # the review's task runs on the lane's loop
            # (none: its coroutine closed as garbage, its loop gone); a review abandoned
            # (see _abandon_review) no longer holds the lane: another's may be under way
            if (loop is not None and lane.reviews.pop(review, None) is not None
                    and lane.queue and lane.flush_soon is None and not loop.is_closed()):
                lane.flush_soon = loop.call_soon(self._flush, lane)
        with self.together():  # the batch's decisions: one commit (per ledger) for them all
            for pending, decision in zip(batch, decisions, strict=True):
                self._decide(lane, pending, decision, _name_of(approver))

    def _answer_early(self, lane: _Lane, review: asyncio.Task[Any], approver: Approver,
                      request: ApprovalRequest, decision: Decision) -> None:
        """Rule one request of ``review``'s batch now (see :func:`~shoal.approvals.answer_now`).

        From a thread the review started (``asyncio.to_thread`` carries its context), it is
        handed to the review's loop: made there, it failed the whole batch (``no running event
        loop``), denying calls a person had approved.
        """
        loop = review.get_loop()
        if running_loop() is not loop:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(self._answer_early, lane, review, approver, request,
                                          decision)
            return
        pending = lane.open.get(request.id) if isinstance(request, ApprovalRequest) else None
        if pending is None or pending.review is not review:  # not this review's (any more)
            return
        if not isinstance(decision, Decision):  # quoted in bounds, as in _ask
            decision = Decision.deny(f"the approver answered {_safe_repr(decision)}, "
                                     "not a Decision")
        lane.early.append((pending, decision, _name_of(approver)))
        if lane.early_soon is None:
            lane.early_soon = loop.call_soon(self._rule_early, lane)

    def _rule_early(self, lane: _Lane) -> None:
        """Rule the decisions handed on early since the last turn of the loop, in one lot."""
        early, lane.early, lane.early_soon = lane.early, [], None
        with self.together():
            for pending, decision, by in early:
                self._decide(lane, pending, decision, by)

    def _decide(self, lane: _Lane, pending: _Pending, decision: Decision, by: str) -> None:
        """Rule a request the approver answered, unless it is closed or its time ran out."""
        if not pending.open:
            return
        if pending.deadline is not None and asyncio.get_running_loop().time() >= pending.deadline:
            # answered after the timeout, whose timer could not run meanwhile (a sync
            # approver holding the loop): the timeout's denial stands, not the answer
            self._expire(lane, pending.request.id, answered=True)
            return
        self._close(lane, pending.request.id)
        self._rule(pending, decision, by)

    async def _ask(self, approver: Approver, requests: list[ApprovalRequest]) -> list[Decision]:
        """The approver's decisions, one per request; a failing approver denies them all."""
        try:  # no more answers than requests are read: an endless iterator must not hang
            answer = await reviewed(approver, requests)
            wrong = _not_decisions(answer)
            if wrong is not None:
                log.warning("approver %s %s", _name_of(approver), wrong)
                return [Decision.deny(f"the approver {wrong}") for _ in requests]
            answers = list(itertools.islice(answer, len(requests)))
        except KeyboardInterrupt as exc:
            if threading.current_thread() is threading.main_thread():
                raise  # Ctrl-C keeps its meaning
            # no Ctrl-C reaches a loop off the main thread: the approver's own raise, which
            # denies as any failure of its code does (it stopped the whole run)
            log.warning("approver %s raised KeyboardInterrupt away from the main thread",
                        _name_of(approver))
            why = (f"the approver failed: it raised {describe_exception(exc)} away from the "
                   "main thread, where no Ctrl-C reaches it")
            return [Decision.deny(why) for _ in requests]
        except GeneratorExit:
            if asyncio._get_running_loop() is None:  # the review's coroutine closed as
                raise  # garbage (its loop gone): no answer can be given any more
            log.exception("approver %s failed", _name_of(approver))
            return [Decision.deny("the approver failed: GeneratorExit") for _ in requests]
        except asyncio.CancelledError as exc:
            if stopped():
                raise  # the desk (or the loop's end) cancelled the review: it ends there
            # the approver's own CancelledError (a task of its own cancelled under it): as
            # any failure of its code; was taken for a withdrawn batch, and its calls waited
            # for a decision for good (with no approval_timeout)
            log.warning("approver %s raised CancelledError that nothing asked for",
                        _name_of(approver))
            why = f"the approver failed: {describe_exception(exc)} (nothing cancelled it)"
            return [Decision.deny(why) for _ in requests]
        except BaseException as exc:  # the approver's bug (sys.exit too): deny, saying so
            log.exception("approver %s failed", _name_of(approver))
            why = f"the approver failed: {describe_exception(exc)}"
            return [Decision.deny(why) for _ in requests]
        decisions = [a if isinstance(a, Decision) else Decision.deny(  # quoted in bounds
            f"the approver answered {_safe_repr(a)}, not a Decision") for a in answers]
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
            told: object = approver.withdrawn(requests)  # type: ignore[func-returns-value]
            if told is not None and inspect.isawaitable(told):  # an async def withdrawn: run
                # it (was never awaited: the approver was never told, and it warned so)
                telling = asyncio.ensure_future(told)
                _TELLING.add(telling)
                telling.add_done_callback(partial(_told, approver))
        except BaseException as exc:  # the approver's bug (sys.exit too) must not end the run
            _raise_ctrl_c(exc)
            log.exception("approver %s failed on withdrawn requests", _name_of(approver))


#: the approvers' async ``withdrawn`` calls under way (the loop keeps only weak references)
_TELLING: set[asyncio.Future[Any]] = set()


def _told(approver: Approver, telling: asyncio.Future[Any]) -> None:
    """An async ``withdrawn`` ended: log what it raised, as a sync one's failure is."""
    _TELLING.discard(telling)
    if telling.cancelled():
        return
    failed = telling.exception()
    if failed is not None:
        log.error("approver %s failed on withdrawn requests", _name_of(approver),
                  exc_info=failed)


#: What iterates but is no list of decisions: read as one, text gave a character per request
_NOT_A_LIST = (str, bytes, bytearray, memoryview, Mapping, Decision)


def _not_decisions(answer: object) -> str | None:
    """What is wrong with a review's ``answer`` when it is plainly no list of decisions.

    ``"yes"`` was read as one answer per character (``the approver answered 'y'``), a dict
    as its keys, ``None`` (no ``return``) logged a ``TypeError`` traceback, and a coroutine
    a review returned unawaited was never run (Python warned of it at collection); each
    now denies its batch saying what came.
    """
    if inspect.isawaitable(answer):
        if inspect.iscoroutine(answer):
            answer.close()  # never run: closed, so it is not reported as never awaited
        return (f"answered {_safe_repr(answer)}, an awaitable it did not await, not "
                "decisions (await it in review)")
    if isinstance(answer, _NOT_A_LIST) or not (isinstance(answer, Iterable)
                                               or hasattr(answer, "__getitem__")):
        return (f"answered {_safe_repr(answer)}, not a list of decisions (one per request, "
                "in the batch's order)")
    return None


def _retrieved(review: asyncio.Task[None]) -> None:
    """Read a review's end: one an approver's ``KeyboardInterrupt`` ended has been raised.

    It went out of the event loop to the run's caller, as Ctrl-C would; left unread, asyncio
    would log it again, with its traceback, whenever the garbage collector met the task.
    """
    if not review.cancelled():
        review.exception()


def _serial(approver: Approver | None) -> bool:
    """Whether ``approver`` reviews one batch at a time (its ``serial``; a failing one: yes)."""
    if approver is None:
        return True
    try:
        return bool(approver.serial)
    except BaseException as exc:  # a property of the user's that fails (sys.exit() too,
        # which ended the program): the safe, old way
        _raise_ctrl_c(exc)
        log.exception("approver %s: its serial property failed", _name_of(approver))
        return True


def _raise_ctrl_c(exc: BaseException) -> None:
    """Raise ``exc`` again if it is a Ctrl-C: a ``KeyboardInterrupt`` on the main thread.

    Off it (a run on a thread's loop) no Ctrl-C arrives: it is the approver's own raise, a
    failure of its code like any other (it ended the whole run).
    """
    if isinstance(exc, KeyboardInterrupt) and (
            threading.current_thread() is threading.main_thread()):
        raise exc


def _name_of(approver: Approver) -> str:
    """Who decided, as stored: the approver's ``name``, or its class's if that is not text.

    A ``name`` that raises must not leave the batch it decided unanswered; one that is not
    text could not be journaled, and the approval would be lost; a huge one is cut (it was
    stored whole with each decision, as the reason of each denial was).
    """
    try:
        name = approver.name
    except BaseException as exc:  # sys.exit too: the approver's code ends no run
        _raise_ctrl_c(exc)
        log.exception("approver %s: its name failed", type(approver).__name__)
        name = None
    if not isinstance(name, str) or not name:
        return type(approver).__name__
    return bounded_text(name, NAME_LIMIT)  # stored with every decision it makes


class RunApprovals:
    """One run at the desk: asks about the nodes its state machine says, acts on the answers.

    Args:
        desk: the runtime's desk.
        state: the run's state machine, which is told each answer.
        apply: carries out what the state machine decides on an answer.
        now: the run's time, which the state machine counts in.
        store: where the run's decisions are kept (default: the desk's ledger).
        lineage: whose calls these are (an agent's), prefixed to each request's lineage.
        barrier: what requests wait for before they are kept (the run's journal: its record
            must be in the store before its requests are); ``None`` when nothing to wait for.
        epoch: the clock that dates requests (epoch seconds).
    """

    def __init__(self, desk: ApprovalDesk, state: SchedulerState,
                 apply: Callable[[Decisions], None], now: Callable[[], float], *,
                 store: ApprovalLedger | None = None, lineage: str = "",
                 barrier: Callable[[], asyncio.Future[None] | None] | None = None,
                 epoch: Callable[[], float] = time.time) -> None:
        self.desk = desk
        # one place decides where decisions are kept: the run's store, if it has one
        self.ledger = RunLedger(store if store is not None else desk.ledger, epoch=epoch)
        self.lineage = lineage
        self._state = state
        self._apply = apply
        self._now = now
        self._barrier = barrier
        self._epoch = epoch
        self._asked: dict[int, ApprovalRequest] = {}  # position -> its request at the desk
        # calls an edit replaced before the run stopped (read at the first ask: a resume)
        self._edits: dict[tuple[str, str], ApprovalRecord] | None = None

    def pending(self) -> list[ApprovalRequest]:
        """The requests of this run waiting for a decision."""
        return list(self._asked.values())

    def act(self, actions: Sequence[ApprovalAction]) -> None:
        """Ask about the nodes the state machine asks about; withdraw what it no longer asks."""
        asks: list[Ask] = []
        for action in actions:
            if isinstance(action, Withdraw):
                request = self._asked.pop(action.pos, None)
                if request is not None:  # the ledger keeps it pending: a resume asks again
                    self.desk.withdraw(request.id)
            else:
                asks.append(action)
        if not asks:
            return
        barrier = self._barrier() if self._barrier is not None else None
        if barrier is None:
            self._ask(asks)
        else:  # the run's record must be in the store before its requests are
            barrier.add_done_callback(lambda _: self._ask(asks))

    def _ask(self, asks: list[Ask]) -> None:
        """Keep the requests of ``asks`` (in one transaction, if the ledger batches), then ask."""
        if batches(self.ledger.ledger):
            self._ask_together(asks)
        else:  # one by one, as each is kept at once (a ledger in memory)
            for ask in asks:
                self._ask_together([ask], together=False)

    def _ask_together(self, asks: list[Ask], *, together: bool = True) -> None:
        """Keep the requests of ``asks`` in one transaction, then ask about them.

        Nothing is asked or acted on before the requests are stored: a commit that fails
        denies them all, as unstored. ``together``: the earlier decisions found (a resume)
        are kept in one commit too, then acted on.
        """
        requests: list[tuple[Ask, ApprovalRequest]] = []
        for ask in asks:
            tool = self._state.awaiting(ask.pos)
            if tool is None:
                continue  # cancelled while its request was being stored
            requests.append((ask, self._request(ask, tool.description)))
        if not requests:
            return
        kept: list[ApprovalRecord | Exception] = []
        try:
            with batched(self.ledger.ledger):  # one commit for the lot
                for ask, request in requests:
                    try:
                        kept.append(self.ledger.record(request, ask.kind, ask.before))
                    except Exception as exc:  # unstored, it could not be used once: denied
                        kept.append(exc)
        except Exception as exc:  # the batch could not begin or commit: none of them is kept
            kept = [exc] * len(requests)
        if not together:
            self._act_on(requests, kept)
            return
        with self.desk.together():  # decisions found (a resume): one commit for them too
            self._act_on(requests, kept)

    def _act_on(self, requests: list[tuple[Ask, ApprovalRequest]],
                kept: list[ApprovalRecord | Exception]) -> None:
        """Ask about each request kept; act on an earlier decision; deny the unstored."""
        for (ask, request), known in zip(requests, kept, strict=True):
            if self._state.awaiting(ask.pos) is None:
                continue  # ended meanwhile (another call's denial, say): nothing to ask
            if isinstance(known, Exception):
                self._deny(ask.pos, request, "the request could not be stored: "  # in turn
                           f"{exception_message(known)}", "journal", later=self._later())
                continue
            if known.decision != "pending":  # decided before the run stopped (resume)
                earlier = (Decision.approve(known.reason) if known.decision == "approved"
                           else Decision.deny(known.reason or "denied"))
                self._ruled(ask.pos, request, earlier, known.decided_by or "journal")
                continue
            request = self._with_earlier_edit(request)
            self._asked[ask.pos] = request
            self.desk.submit(request, partial(self._ruled, ask.pos, request))

    def _request(self, ask: Ask, description: str) -> ApprovalRequest:
        """The request about the call of ``ask``, as the approver is asked it."""
        run_id = self._state.run_id
        return ApprovalRequest(
            request_id_of(run_id, ask.node_id, ask.args_hash), run_id, ask.node_id, ask.tool,
            ask.args, ask.args_hash, f"{self.lineage}/{ask.node_id}" if self.lineage
            else ask.node_id, ask.reason, self._epoch(), description)

    def noted(self, events: Sequence[Event], actions: Sequence[ApprovalAction]
              ) -> Sequence[Event]:
        """``events``, each :class:`ApprovalRequested` of ``actions`` saying what its request says.

        That is, for a call an edit changed before the run stopped, how (see
        :meth:`_with_earlier_edit`): the event, streamed and journaled, said only why the
        call needed approval, where the approver was told it had run as edited.
        """
        if not self._earlier_edits(self._state.run_id):  # (most runs: no edit before)
            return events
        asks = {action.node_id: action for action in actions if isinstance(action, Ask)}
        shown: list[Event] = []
        for event in events:
            if isinstance(event, ApprovalRequested) and (ask := asks.get(event.node_id)):
                said = self._with_earlier_edit(self._request(ask, "")).reason
                if said != ask.reason:
                    event = dataclasses.replace(event, reason=said)
            shown.append(event)
        return shown

    def _with_earlier_edit(self, request: ApprovalRequest) -> ApprovalRequest:
        """``request``, its reason saying how an edit changed the call before the run stopped.

        A resume asks about such a call with the arguments it was asked with at first: an
        approver who is not told would approve the call as first asked, not as it ran.
        """
        edit = self._earlier_edits(request.run_id).get((request.node_id, request.args_hash))
        if edit is None:
            return request
        edited = dataclasses.replace(request, args=edit.arguments).describe()
        # first: a view that cuts a long reason (an in-doubt call's) keeps this
        return dataclasses.replace(request, reason=(
            f"before the run stopped, {edit.decided_by or 'its approver'} edited this call to "
            f"{edited} and it ran so: approving runs it as asked here (edit it again to run "
            f"it as edited); {request.reason}"))

    def _earlier_edits(self, run_id: str) -> dict[tuple[str, str], ApprovalRecord]:
        """The calls an edit changed before the run stopped (read once: see earlier_edits)."""
        if self._edits is None:  # the earlier sessions' records
            try:
                self._edits = earlier_edits(self.ledger.ledger.approvals(run_id))
            except Exception:  # unreadable: the request is asked as it is
                log.exception("could not read the earlier decisions of run %s", run_id)
                self._edits = {}
        return self._edits

    def _ruled(self, pos: int, request: ApprovalRequest, decision: Decision, by: str) -> None:
        """Keep ``decision``, use it (once), and let the state machine act on it.

        Among decisions made together (:meth:`ApprovalDesk.together`), it is kept in their
        transaction and acted on once that is committed.
        """
        self._asked.pop(pos, None)
        tool = self._state.awaiting(pos)
        if tool is None:
            return  # cancelled or ended meanwhile: nothing to act on
        rulings = self._later()
        if decision.verdict == "deny":
            self._deny(pos, request, decision.reason, by, later=rulings)
            return
        try:
            args, args_hash = self.ledger.approve(request, decision, tool, by)
        except Exception as exc:  # bad edited arguments, used already, or an unwritable store
            # (a store's error whose own __str__ fails too: the call is denied all the same,
            # not left waiting for good)
            self._deny(pos, request, exception_message(exc), by, later=rulings)
            return

        def approve(error: Exception | None) -> None:
            if self._state.awaiting(pos) is None:
                return  # cancelled meanwhile (by a decision acted on before it)
            if error is not None:  # its commit failed: the approval is not kept
                self._deny(pos, request, exception_message(error), by)
                return
            self._apply(self._state.approve(pos, args_hash, self._now(), args=args, by=by,
                                            reason=decision.reason, verdict=decision.verdict))

        if rulings is None:
            approve(None)
        else:
            rulings.then(self.ledger.ledger, approve)

    def _later(self) -> _Rulings | None:
        """The decisions being made together, if this run's ledger keeps them in one commit.

        ``None`` otherwise (no such lot, or a ledger in memory): act on a decision at once.
        """
        rulings = self.desk.rulings
        return rulings if rulings is not None and rulings.keep(self.ledger.ledger) else None

    def _deny(self, pos: int, request: ApprovalRequest, reason: str, by: str, *,
              later: _Rulings | None = None) -> None:
        """Keep a denial and deny the call (``later``: once the decisions made with it are kept).

        A denial is safe unrecorded: one whose commit fails denies the call all the same.
        """
        self.ledger.deny(request, reason, by)
        if later is None:
            self._apply(self._state.deny(pos, reason, self._now(), by=by))
            return

        def deny(_: Exception | None) -> None:
            if self._state.awaiting(pos) is not None:  # (not cancelled meanwhile)
                self._apply(self._state.deny(pos, reason, self._now(), by=by))

        later.then(self.ledger.ledger, deny)
