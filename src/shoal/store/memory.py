"""An in-memory store: the library's default journal (fast, gone when the process ends).

Nothing in it survives the process, so the runtime does not journal calls one by one here:
it records the run when it starts and every outcome when the run (or a resumed session of it)
ends, as the objects the run produced (no serialising). That is enough for
``Runtime.resume`` in the same process (say, after a cancelled run) and costs about a
microsecond per call; attempts are not recorded. It keeps the most recent ``max_runs`` runs;
older finished runs are dropped, so a long-lived ``Runtime`` does not grow without bound.
Safe to use from several threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.approvals.ledger import MemoryLedger
from shoal.exceptions import RunNotFoundError
from shoal.outcome import Outcome
from shoal.store.base import (
    ApprovalRecord,
    AttemptEnded,
    AttemptRecord,
    AttemptStarted,
    CancelRequest,
    Decision,
    EffectRecord,
    EventRecord,
    OutcomeRecord,
    Record,
    RunEnded,
    RunRecord,
    StoredEffect,
    StoredOutcome,
    run_record_with,
)
from shoal.store.claims import LocalClaims, RunClaim

__all__ = ["DEFAULT_MAX_RUNS", "MemoryStore"]

DEFAULT_MAX_RUNS = 100


@dataclass(slots=True)
class _Run:
    record: RunRecord
    attempts: dict[tuple[int, str, int], AttemptRecord] = field(default_factory=dict)
    # every outcome written, with its node's position, in the order written (the latest of a
    # node wins when read): two flat lists, as a large run writes a million of them at once
    positions: list[int] | None = None  # None while each outcome's position is its place
    ended: list[Outcome] = field(default_factory=list)
    settled: int = 0  # outcomes written when a session last ended
    # made on first use, as most runs never get one (an agent's every turn is a run)
    events: list[dict[str, Any]] | None = None
    # (node id, kind) -> (when written, the record): the latest effect of each call
    effects: dict[tuple[str, str], tuple[int, EffectRecord]] = field(default_factory=dict)
    cancels: list[CancelRequest] | None = None
    taken: int = 0  # cancel requests handed out so far
    # how its last session ended (status, finished_at, counts, makespan), not yet folded into
    # ``record``: folded when the record is read (see _fold), so a run's end makes no record
    # (most runs' records are never read again: an agent's every turn is a run)
    ended_as: tuple[str, float, dict[str, int], float] | None = None


def _fold(run: _Run) -> RunRecord:
    """``run``'s record, with how its last session ended written into it (under the lock)."""
    if run.ended_as is not None:
        status, finished_at, counts, makespan = run.ended_as
        run.record = run_record_with(run.record, status=status, finished_at=finished_at,
                                     counts=counts, makespan=makespan)
        run.ended_as = None
    return run.record


def _position(item: tuple[int, Outcome]) -> int:
    return item[0]


def _latest(run: _Run) -> dict[str, tuple[int, Outcome]]:
    """Each node's latest outcome with its position (in the order nodes were first written)."""
    positions = range(len(run.ended)) if run.positions is None else run.positions
    return {o.node_id: (p, o) for p, o in zip(positions, run.ended, strict=True)}


def _compact(run: _Run) -> None:
    """Drop the outcomes a later session wrote again (each session writes all it has)."""
    latest = _latest(run)
    if len(latest) < len(run.ended):
        positions = [p for p, _ in latest.values()]
        in_place = all(p == i for i, p in enumerate(positions))
        run.positions = None if in_place else positions
        run.ended = [o for _, o in latest.values()]


class MemoryStore:
    """A :class:`~shoal.store.base.Store` in this process's memory.

    Args:
        max_runs: runs kept; when a new run would exceed it, the runs that finished first go.
        keep_events: also journal every event (costs building events for every run).
    """

    durable = False

    def __init__(self, *, max_runs: int = DEFAULT_MAX_RUNS, keep_events: bool = False) -> None:
        self.max_runs = max_runs
        self.keeps_events = keep_events
        self._runs: dict[str, _Run] = {}
        # the kept runs that are not running, in the order they finished (a dict as an ordered
        # set): eviction takes the first of them instead of scanning every run, which made
        # each new run cost as much as the runs still running (thousands, in an agent swarm)
        self._finished: dict[str, None] = {}
        # approval requests and decisions, kept apart from runs (a request may come before its
        # run's first record is written), behind a lock of their own (taken after this
        # store's, never before it)
        self._ledger = MemoryLedger()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._claims = LocalClaims()

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._runs)} runs>"

    # ---- writing ------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Store ``records`` (at once: no other thread sees half of them)."""
        with self._lock:
            for record in records:
                _WRITERS[type(record)](self, record)

    @property
    def takes_outcomes_whole(self) -> bool:
        """Whether :meth:`write_outcomes` may stand for records: not when ``write`` is a subclass's.

        A store whose ``write`` is its own (a mirror) gets every record through it.
        """
        return type(self).write is MemoryStore.write

    def write_outcomes(self, run_id: str, outcomes: Sequence[Outcome],
                       positions: Sequence[int]) -> None:
        """``write`` of an :class:`OutcomeRecord` for each outcome, at its node's position.

        What a run's end writes to a memory journal (every outcome at once, see
        ``Journal.add_outcomes``), without a record, a look-up and a call per outcome: a
        swarm ends a steps run per agent. A store whose ``write`` is its own gets the records.
        """
        if not self.takes_outcomes_whole:
            self.write([OutcomeRecord(run_id, o, p) for o, p in zip(outcomes, positions,
                                                                      strict=True)])
            return
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            ended = run.ended
            first = len(ended)
            # each outcome at its place (most runs: plan order, nothing written before)
            if run.positions is None and positions == list(range(first, first + len(positions))):
                ended.extend(outcomes)
                return
            for outcome, position in zip(outcomes, positions, strict=True):
                self._outcome(OutcomeRecord(run_id, outcome, position))

    def _put_run(self, record: RunRecord) -> None:
        known = self._runs.get(record.run_id)
        if known is not None:
            known.record, known.ended_as = record, None  # the record as written, whole
        else:
            self._runs[record.run_id] = _Run(record)
        if record.status == "running":  # a resumed run runs again
            self._finished.pop(record.run_id, None)
        else:
            self._finished.setdefault(record.run_id)
        if known is None:
            self._evict()

    def _evict(self) -> None:
        excess = len(self._runs) - self.max_runs
        while excess > 0 and self._finished:
            rid = next(iter(self._finished))
            del self._finished[rid]
            del self._runs[rid]
            self._ledger.forget_run(rid)
            excess -= 1

    def _end_run(self, r: RunEnded) -> None:
        run = self._runs.get(r.run_id)
        if run is not None:
            run.ended_as = (r.status, r.finished_at, dict(r.counts), r.makespan)
            if r.status != "running":
                self._finished.setdefault(r.run_id)
                # runs that were all going at once (a swarm's agents) are over the limit only
                # once they end: dropped then, not when some later run happens to start
                self._evict()
            if run.settled:  # an earlier session wrote outcomes this one may have written again
                _compact(run)
            run.settled = len(run.ended)

    def _start(self, r: AttemptStarted) -> None:
        run = self._runs.get(r.run_id)
        if run is not None:
            run.attempts[(r.session, r.node_id, r.attempt)] = AttemptRecord(
                r.node_id, r.session, r.attempt, r.tool, r.executor, r.at, held=r.held)

    def _end(self, r: AttemptEnded) -> None:
        run = self._runs.get(r.run_id)
        if run is None:
            return
        key = (r.session, r.node_id, r.attempt)
        started = run.attempts.get(key)
        if started is not None:
            run.attempts[key] = replace(started, ended_at=r.at, status=r.status, error=r.error,
                                        where=r.where)

    def _outcome(self, r: OutcomeRecord) -> None:
        run = self._runs.get(r.run_id)
        if run is not None:
            if run.positions is not None:
                run.positions.append(r.position)
            elif r.position != len(run.ended):  # out of plan order: note every position now
                run.positions = [*range(len(run.ended)), r.position]
            run.ended.append(r.outcome)

    def _effect(self, r: EffectRecord) -> None:
        run = self._runs.get(r.run_id)
        if run is not None:
            run.effects[(r.node_id, r.kind)] = (next(self._ids), r)

    def _event(self, r: EventRecord) -> None:
        run = self._runs.get(r.run_id)
        if run is not None:
            if run.events is None:
                run.events = []
            run.events.append(r.event.to_dict())

    def claim_run(self, run_id: str) -> RunClaim:
        """Claim ``run_id`` for a session; refused while another session holds it.

        Raises :class:`~shoal.exceptions.RunActiveError` then.
        """
        return self._claims.claim(run_id)

    def heartbeat(self, run_id: str, at: float) -> None:
        """Note that a live runtime still runs ``run_id``."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.record = replace(_fold(run), heartbeat=at)

    # ---- reading ------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or ``None``."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        if run.ended_as is None:  # (read without the lock, as a record is replaced whole)
            return run.record
        with self._lock:
            return _fold(run)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recently started runs first."""
        with self._lock:
            records = [_fold(run) for run in self._runs.values()]
        records.sort(key=lambda r: r.started_at, reverse=True)
        return records[:limit]

    def nested_run_ids(self, run_id: str) -> list[str]:
        """The ids of the runs nested in ``run_id`` (starting ``f"{run_id}/"``), in id order."""
        prefix = f"{run_id}/"
        with self._lock:
            return sorted(rid for rid in self._runs if rid.startswith(prefix))

    def outcomes(self, run_id: str, *, decode: bool = True) -> dict[str, StoredOutcome]:
        """Each node's latest outcome, in plan order (values are the objects the run produced)."""
        with self._lock:
            run = self._runs.get(run_id)
            found = sorted(_latest(run).values(), key=_position) if run else []
        return {o.node_id: StoredOutcome(o) for _, o in found}

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every attempt of the run, in the order they started."""
        with self._lock:
            run = self._runs.get(run_id)
            return list(run.attempts.values()) if run is not None else []

    def effects(self, run_id: str, *, nested: bool = False) -> list[StoredEffect]:
        """The latest effect of each of the run's calls (per kind), in the order written.

        ``nested``: those of the runs nested in it too (ids starting ``f"{run_id}/"``).
        """
        prefix = f"{run_id}/"
        with self._lock:
            found = [item for rid, run in self._runs.items()
                     if rid == run_id or (nested and rid.startswith(prefix))
                     for item in run.effects.values()]
        found.sort(key=lambda item: item[0])
        return [StoredEffect(record) for _, record in found]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events, if this store keeps them."""
        with self._lock:
            run = self._runs.get(run_id)
            return list(run.events or ()) if run is not None else []

    # ---- approvals ------------------------------------------------------------------------

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request, or return the one already stored for the same call."""
        return self._ledger.request_approval(record)

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: Decision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        self._ledger.decide(run_id, node_id, args_hash, decision, decided_by=decided_by,
                            reason=reason, at=at)

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, now marked used (or ``None``)."""
        return self._ledger.use_decision(run_id, node_id, args_hash)

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's approval requests and decisions, oldest first."""
        return self._ledger.approvals(run_id, pending_only=pending_only)

    # ---- cancel requests ------------------------------------------------------------------

    def request_cancel(self, run_id: str, node_ids: Sequence[str] = (), *,
                       reason: str = "cancelled by the user") -> None:
        """Queue a cancel request for ``run_id``."""
        with self._lock:
            run = self._run(run_id)
            if run.cancels is None:
                run.cancels = []
            run.cancels.append(
                CancelRequest(next(self._ids), run_id, tuple(node_ids), reason, time.time()))

    def take_cancel_requests(self, run_id: str) -> list[CancelRequest]:
        """Cancel requests not handed out yet."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.cancels is None:
                return []
            fresh = run.cancels[run.taken:]
            run.taken = len(run.cancels)
            return fresh

    def close(self) -> None:
        """Nothing to release."""

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id, "(an in-memory store)")
        return run


# each kind of record's writer, as plain functions: a table of the store's own bound methods
# would make every store a reference cycle, kept (with every run and outcome it holds) until
# the garbage collector's next full pass instead of freed when its runtime is dropped
_WRITERS: dict[type, Callable[[MemoryStore, Any], None]] = {
    RunRecord: MemoryStore._put_run, RunEnded: MemoryStore._end_run,
    AttemptStarted: MemoryStore._start, AttemptEnded: MemoryStore._end,
    OutcomeRecord: MemoryStore._outcome, EventRecord: MemoryStore._event,
    EffectRecord: MemoryStore._effect,
}  # fmt: skip

