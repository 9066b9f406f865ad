"""The journal's contract: the :class:`Store` protocol and the records it keeps.

A store keeps, per run: the run itself (:class:`RunRecord`), every attempt that started and
how it ended (:class:`AttemptRecord`), each node's latest outcome (:class:`StoredOutcome`),
approval requests and decisions (:class:`ApprovalRecord`), cancel requests from other
processes (:class:`CancelRequest`) and, when the store keeps them, the run's events.

The runtime writes through :meth:`Store.write`: one call is one transaction, so a batch of
records (say every outcome of one loop iteration plus the starts it decided) is either stored
whole or not at all. Everything else is a small direct call. Methods are synchronous; a
durable store is written from a writer thread of its own (:mod:`shoal.store.journal`), so the
event loop never waits on a disk.

Approvals: a decision is bound to :func:`~shoal.approvals.ledger.approval_hash` of the tool's
name and its canonical JSON arguments, so a decision for other arguments never matches, and it
is used once (:meth:`Store.use_decision` marks it used). Pending requests are stored too, so a
run killed while a person was deciding is still waiting for them after resume. The store is
the approval ledger's durable home (:mod:`shoal.approvals.ledger`).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from shoal._slots import slot_init
from shoal.events import Event
from shoal.outcome import Outcome, jsonable

__all__ = [
    "ApprovalRecord",
    "AttemptEnded",
    "AttemptRecord",
    "AttemptStarted",
    "CancelRequest",
    "Decision",
    "EffectRecord",
    "EventRecord",
    "OutcomeRecord",
    "Record",
    "DECISIONS",
    "RUN_STATUSES",
    "RunEnded",
    "RunRecord",
    "RunStart",
    "RunStatus",
    "Store",
    "StoredEffect",
    "StoredOutcome",
    "canonical_json",
    "idempotency_key",
    "nested_run_ids",
]

RunStatus = Literal["running", "finished", "cancelled", "interrupted"]
Decision = Literal["pending", "approved", "denied"]
RUN_STATUSES: tuple[RunStatus, ...] = ("running", "finished", "cancelled", "interrupted")
DECISIONS: tuple[Decision, ...] = ("pending", "approved", "denied")


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: equal data gives equal text."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def idempotency_key(run_id: str, node_id: str) -> str:
    """The key a tool asking for one (``shoal.IdempotencyKey``) gets.

    Stable across attempts, crashes and resumes of the same call; different for every other.
    """
    return f"{run_id}:{node_id}"


# ---- what the runtime writes (one Store.write call = one transaction) ---------------------
# Named tuples rather than frozen dataclasses: a run writes several per call, and tuples are
# the cheapest immutable records Python builds.


@slot_init  # made for every run of every agent's steps (two per subagent of a swarm)
@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as the journal knows it.

    ``plan`` describes the plan for resume's change check (per-node digests and edges, see
    :mod:`shoal.store.fingerprint`); ``fingerprint`` hashes it. ``source`` says where the plan
    came from (for a plan file: ``path``, ``sha256`` and ``text``). ``sessions`` counts how
    often the run was started or resumed; ``heartbeat`` is the last time (epoch seconds) a live
    runtime said it was still running the run, so a run whose process died reads as
    ``interrupted`` rather than ``running``. ``pid`` and ``host`` name the process that runs
    it, and ``pid_start`` which process that pid was (its boot and start time): after a
    reboot or once pids wrap around, another process may hold the pid.
    """

    run_id: str
    started_at: float  # epoch seconds
    nodes: int
    fingerprint: str
    plan: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    status: RunStatus = "running"
    finished_at: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    makespan: float = 0.0
    sessions: int = 1
    heartbeat: float = 0.0
    pid: int = 0
    host: str = ""
    damaged: str = ""  # what of the stored row is damaged (then the rest is a best guess)
    #: which process ``pid`` was, of all that ever held it on ``host``: its boot and start
    #: time (:func:`shoal.store.claims.process_start`); ``""`` in records from before it
    pid_start: str = ""


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
_RUN_VALUES = operator.attrgetter(*_RUN_FIELDS)
_RUN_INDEX = {name: i for i, name in enumerate(_RUN_FIELDS)}


def nested_run_ids(store: Store, run_id: str) -> list[str]:
    """The ids of the runs nested in ``run_id`` (starting ``f"{run_id}/"``), in id order.

    A store's own ``nested_run_ids`` reads only those (SQLite: through the index of run
    ids); a store of your own without one is asked for every run, and they are picked out.
    """
    read = getattr(store, "nested_run_ids", None)
    if callable(read):
        return list(read(run_id))
    prefix = f"{run_id}/"
    return sorted(r.run_id for r in store.list_runs(2**62) if r.run_id.startswith(prefix))


def run_record_with(record: RunRecord, **changes: Any) -> RunRecord:
    """``dataclasses.replace(record, **changes)``, at about the cost of making a record.

    Every run is recorded twice this way (when it starts and when it ends), and an agent runs
    each of its turns as a run: ``replace``'s per-field checks cost more than the record.
    An unknown field is refused, as ``replace`` refuses it.
    """
    values = list(_RUN_VALUES(record))
    for name, value in changes.items():
        index = _RUN_INDEX.get(name)
        if index is None:
            raise TypeError(f"RunRecord has no field {name!r}")
        values[index] = value
    return RunRecord(*values)


class RunStart(NamedTuple):
    """A new run's :class:`RunRecord`, but for what is known only once it starts.

    The runtime knows these when it makes a run, the driver the rest when the run starts: the
    record is made once, then (a frozen record of 17 fields costs more than a small run's
    scheduling, and an agent runs its every step as a run).
    """

    run_id: str
    nodes: int
    fingerprint: str
    plan: Mapping[str, Any]
    source: Mapping[str, Any]
    name: str

    def started(self, started_at: float, *, heartbeat: float, pid: int, host: str,
                pid_start: str) -> RunRecord:
        """The run's record as its first session starts (status ``running``)."""
        return RunRecord(self.run_id, started_at, self.nodes, self.fingerprint, self.plan,
                         self.source, self.name, heartbeat=heartbeat, pid=pid, host=host,
                         pid_start=pid_start)


class RunEnded(NamedTuple):
    """A session of a run ended: how, when (epoch), with how many nodes in each status."""

    run_id: str
    status: RunStatus
    finished_at: float
    counts: Mapping[str, int]
    makespan: float


class AttemptStarted(NamedTuple):
    """An attempt began (``at``: seconds on the run's clock). Written ahead of the call.

    ``held``: the limit that held it back once it was ready (``tool fetch max_concurrency=2``,
    ``tool search rate=5/s``, ``the run's max_concurrency=64``), empty when none did.
    """

    run_id: str
    session: int
    node_id: str
    attempt: int
    tool: str
    executor: str
    at: float
    held: str = ""


class AttemptEnded(NamedTuple):
    """An attempt ended, with the attempt's status and error text (if any).

    ``where``: the machine it ran on, as its outcome's ``where`` says (empty when unknown).
    """

    run_id: str
    session: int
    node_id: str
    attempt: int
    status: str
    at: float
    error: str = ""
    where: str = ""


class OutcomeRecord(NamedTuple):
    """A node's outcome; the store serialises the value (see :mod:`shoal.store.codec`)."""

    run_id: str
    outcome: Outcome
    position: int = 0  # the node's place in the plan, so outcomes read back in plan order


class EffectRecord(NamedTuple):
    """What a call did besides returning its value (``kind="board"``: its board writes).

    Journaled in the same transaction as the call's ``ok`` outcome, and replayed with it on
    resume, so the effect counts exactly once. ``data`` is stored like an outcome's value
    (see :mod:`shoal.store.codec`). A store keeps the latest per run, node and kind, and
    gives them back in the order they were written (:meth:`Store.effects`, optional for
    stores of your own: without it a run cannot use a board).
    """

    run_id: str
    node_id: str
    kind: str
    data: Any


class EventRecord(NamedTuple):
    """One event of the run; the store keeps it as ``event.to_dict()`` (``kind`` included)."""

    run_id: str
    event: Event


Record = (RunRecord | RunEnded | AttemptStarted | AttemptEnded | OutcomeRecord | EventRecord
          | EffectRecord)


# ---- what the store gives back ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt: started, and ended unless ``ended_at`` is ``None`` (in flight or lost).

    ``held``: the limit that held it back once it was ready (see :class:`AttemptStarted`);
    ``where``: the machine it ran on (see :class:`AttemptEnded`).
    """

    node_id: str
    session: int
    attempt: int
    tool: str
    executor: str
    started_at: float
    ended_at: float | None = None
    status: str = ""
    error: str = ""
    damaged: str = ""  # what of the stored row is damaged
    held: str = ""
    where: str = ""


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """An outcome read back from the store.

    ``replayable`` is false when the value could be stored neither as JSON nor pickled: the
    outcome then holds the value's JSON view (often its ``repr``), not the value itself.
    ``encoding`` says how the value was stored: ``json``, ``pickle`` or ``repr``. A row that
    does not hold what shoal wrote (a damaged file, a hand edit) reads back as an ``in_doubt``
    outcome with ``damaged`` saying which column and why.
    """

    outcome: Outcome
    replayable: bool = True
    encoding: str = "json"
    damaged: str = ""  # what of the stored row is damaged (the outcome is then in_doubt)


@dataclass(frozen=True, slots=True)
class StoredEffect:
    """An :class:`EffectRecord` read back from the journal.

    ``replayable`` is false when its data could not be stored for replay (as for
    :class:`StoredOutcome`); ``damaged`` says what of the row is damaged.
    """

    record: EffectRecord
    replayable: bool = True
    damaged: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """A request for a person's decision about one call, and the decision once made.

    ``args_hash`` is :func:`~shoal.approvals.ledger.approval_hash` of ``tool`` and the call's
    arguments; a decision only ever applies to exactly those arguments. ``kind`` is
    ``approval`` for a tool that needs approval, or ``in_doubt`` for a call that was in flight
    at a crash (approve = run it again). ``used`` turns true when the runtime acts on the
    decision, which it does once.
    """

    run_id: str
    node_id: str
    tool: str
    args_hash: str
    arguments: Any = None  # JSON-ready, for people to read
    kind: str = "approval"
    requested_at: float = 0.0  # epoch seconds
    decision: Decision = "pending"
    decided_by: str = ""
    decided_at: float | None = None
    reason: str = ""
    used: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A request (usually from ``shoal cancel`` in another process) to cancel a run or nodes.

    ``node_ids`` empty means the whole run.
    """

    id: int
    run_id: str
    node_ids: tuple[str, ...]
    reason: str
    requested_at: float


@runtime_checkable
class Store(Protocol):
    """Where runs are journaled; a store of your own can implement this too.

    :class:`~shoal.store.memory.MemoryStore` and :class:`~shoal.store.sqlite.SQLiteStore`
    implement it.

    ``durable`` says whether written records survive the process (the runtime then waits for
    a batch's commit before starting the calls that depend on it); ``keeps_events`` whether
    the runtime should also journal every event.
    """

    durable: bool
    keeps_events: bool

    def write(self, records: Sequence[Record]) -> None:
        """Store ``records`` in one transaction, in order."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or ``None`` if the store does not know it."""
        ...

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recently started runs first."""
        ...

    def outcomes(self, run_id: str, *, decode: bool = True) -> dict[str, StoredOutcome]:
        """Each node's latest outcome, by node id.

        With ``decode=False`` values are their JSON view (no unpickling), for display.
        """
        ...

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every attempt of the run, in the order they started."""
        ...

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's journaled events (empty when the store does not keep them)."""
        ...

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request; if one for the same run, node and hash exists, return it."""
        ...

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: Decision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a person's decision on a request (creating the request if need be)."""
        ...

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, marked used; ``None`` if there is none.

        Atomic: of two callers, only one gets the decision.
        """
        ...

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's approval requests and decisions, oldest first."""
        ...

    def request_cancel(self, run_id: str, node_ids: Sequence[str] = (), *,
                       reason: str = "cancelled by the user") -> None:
        """Ask the process running ``run_id`` to cancel it (or only ``node_ids``)."""
        ...

    def take_cancel_requests(self, run_id: str) -> list[CancelRequest]:
        """Cancel requests for ``run_id`` not taken yet; taking them marks them taken."""
        ...

    def heartbeat(self, run_id: str, at: float) -> None:
        """Say that a live runtime is still running ``run_id`` (``at``: epoch seconds)."""
        ...

    def close(self) -> None:
        """Release the store's resources (connections, files)."""
        ...
