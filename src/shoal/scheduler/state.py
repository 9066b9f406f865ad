r"""The scheduler's state machine: every decision about which call runs when, and no I/O.

The driver (:mod:`shoal.scheduler.driver`) feeds it inputs (``begin``, ``finish``,
``retry_due``, ``wake``, ``cancel``, ``expire``, ``approve``, ``deny``; on resume first
``hold_in_doubt`` and ``restore``) with the current run time, and carries out the
:class:`Decisions` each input returns: attempts to start, running attempts to cancel, timers
to set, approvals to ask for, events to publish, outcomes to journal. Nothing here
awaits, sleeps, reads a clock or touches a thread, so each transition is exact and every path
is testable without time passing.

A node moves through these phases; :data:`TRANSITIONS` is the whole table::

    WAITING --deps done--> READY --slot free--> RUNNING --ok/final error--> DONE
       |                     |                    |  \\--retryable error--> BACKOFF --due--> READY
       \\--skip/cancel--------+--cancel/stop-------+---------------------------/--cancel--> DONE
       |                     ^
       \\--needs approval--> APPROVAL --approved/edited   (denied/cancelled --> DONE)

A node whose tool needs approval waits in ``APPROVAL`` (holding no limit, so nothing else
waits for it) once its arguments are resolved: the state machine emits an :class:`Ask`, the
run's :class:`~shoal.approvals.desk.RunApprovals` asks and feeds back
:meth:`SchedulerState.approve` or :meth:`SchedulerState.deny`. Who must approve what is
:func:`~shoal.approvals.policy.approval_reason`.
An approval is bound to the hash of the exact arguments; the hash is checked again right
before every attempt starts, so an approval for some arguments can never start others.

The ready queue is a heap ordered by critical path: the node with the longest chain of
estimated work still behind it goes first. Estimates start from each tool's ``estimate`` (or
1 unit) and are learned per tool as calls finish. A node blocked by a per-tool, per-key or rate
limit is parked on that limit and returns to the heap when the limit frees up, so nothing polls.
The nodes ready at the start wait beside the heap as one run sorted the same way (a wide plan's
nodes then cost no heap traffic); the best of both goes first.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import operator
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, cast

from shoal.approvals.ledger import approval_hash, hash_and_kind, hash_before_keys
from shoal.approvals.policy import approval_reason, request_id
from shoal.deps import Graph, render_key
from shoal.events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    NodeCancelled,
    NodeFinished,
    NodeHeld,
    NodeQueued,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    edited_args_text,
)
from shoal.executors._results import value_interrupt_error
from shoal.executors.base import Call, new_call
from shoal.limits import ConcurrencyLimit, RateLimiter
from shoal.outcome import STATUSES, ErrorInfo, Outcome, Status, jsonable
from shoal.plan import Node, Ref
from shoal.policy import placed_by_options
from shoal.scheduler.args import IMMUTABLE, isolate_all, resolve_arguments
from shoal.scheduler.gates import Gates, SharedLimits
from shoal.scheduler.priority import CriticalPath
from shoal.tools import Isolation, Tool

__all__ = [
    "MAX_MAP_ITEMS", "TRANSITIONS", "ApprovalAction", "Ask", "AttemptResult", "Decisions",
    "Ended", "Fate", "Phase", "SchedulerState", "Withdraw",
]  # fmt: skip

#: Most predecessors whose priority one added node may raise (see SchedulerState._lift).
LIFT_BUDGET = 64

#: A map over more items than this fails instead of adding them (each item is a node).
MAX_MAP_ITEMS = 1_000_000
# a map of this many items or more takes long enough to make (tens of ms and up) that the
# outcomes decided before it are sent to the journal first (see SchedulerState.before_expand)
EARLY_JOURNAL_ITEMS = 1000

#: What resume makes of a node the journal knows: ``("run", None)``, ``("replay", outcome)``
#: (in the journal already), ``("settle", outcome)`` (decided on resume: journal it), or
#: ``("doubt", reason)``.
Fate = tuple[str, Any]


class Phase:
    """Where a node is in its life: ``WAITING``, ``APPROVAL``, ``READY``, ``RUNNING``, ...

    The phases are ``WAITING``, ``APPROVAL``, ``READY``, ``RUNNING``, ``BACKOFF``, ``DONE``.

    Plain singletons rather than an ``Enum``: phases are compared and hashed on every transition
    of every node, and identity hashing is several times cheaper than ``Enum.__hash__``.
    """

    __slots__ = ("value",)
    WAITING: Phase
    APPROVAL: Phase
    READY: Phase
    RUNNING: Phase
    BACKOFF: Phase
    DONE: Phase

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Phase.{self.value.upper()}"


for _name in ("waiting", "approval", "ready", "running", "backoff", "done"):
    setattr(Phase, _name.upper(), Phase(_name))
PHASES = (Phase.WAITING, Phase.APPROVAL, Phase.READY, Phase.RUNNING, Phase.BACKOFF, Phase.DONE)
_UNSTARTED = frozenset({Phase.WAITING, Phase.APPROVAL, Phase.READY})
#: backends whose abandoned work is a thread (the Ray backend's: one of a pool actor's)
_ON_THREADS = frozenset({"thread", "ray"})


TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.WAITING: frozenset({Phase.READY, Phase.APPROVAL, Phase.DONE}),
    Phase.APPROVAL: frozenset({Phase.READY, Phase.DONE}),
    Phase.READY: frozenset({Phase.RUNNING, Phase.DONE}),
    Phase.RUNNING: frozenset({Phase.BACKOFF, Phase.DONE}),
    Phase.BACKOFF: frozenset({Phase.READY, Phase.DONE}),
    Phase.DONE: frozenset(),
}

AttemptStatus = Literal["ok", "failed", "timed_out", "cancelled"]
#: How a stop ends the calls under way: ``timed_out`` when a time limit stopped them.
StopStatus = Literal["cancelled", "timed_out"]


@dataclass(slots=True)
class AttemptResult:
    """How an attempt ended, as reported by the driver."""

    status: AttemptStatus
    value: Any = None
    error: BaseException | None = None
    abandoned: bool = False
    began: float | None = None  # run time at which a worker really started (if known)
    ended: float | None = None  # run time at which the work really ended (if known)
    where: str = ""  # where the attempt ran (a host, a Ray node), if the backend said
    reason: str = ""  # why a cancelled attempt stopped, when the attempt itself said so
    # a cancelled attempt stopped before its tool took its first step (it never ran), as the
    # driver knows: its outcome is not ``interrupted`` (resume runs it again, see Outcome)
    unstarted: bool = False
    # an abandoned attempt whose work still runs (a pool thread, a task that ignores its
    # cancel), whose end the driver will feed as ``released``: the calls that only wait for
    # it to be over (resource and exclusive edges) wait for that, not for its outcome
    running_on: bool = False


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask the approver about a node: its resolved arguments (JSON-ready), their hash, and why."""

    pos: int
    node_id: str
    tool: str
    args: dict[str, Any]
    args_hash: str
    reason: str
    kind: str = "approval"  # or "in_doubt": resume asks whether to run a call in doubt again
    before: str = ""  # its hash_before_keys: a journal written before keeps it under that


@dataclass(frozen=True, slots=True)
class Withdraw:
    """A node that was waiting for a decision no longer needs one (it was cancelled)."""

    pos: int
    node_id: str
    args_hash: str


ApprovalAction = Ask | Withdraw


class _Approval:
    """What a gated node was asked about, and what it may run once approved."""

    __slots__ = ("args", "args_hash", "edited", "hashed")

    def __init__(self, args_hash: str, hashed: dict[str, Any] | None = None) -> None:
        self.args_hash = args_hash
        # the scheduler's own arguments that hashed to args_hash, when they run no code of
        # their own (exact JSON data): unchanged until they run, so not hashed again then
        self.hashed = hashed
        self.args: dict[str, Any] | None = None  # a private copy of the approved arguments
        self.edited = False  # approved with other arguments than asked (a reviewer's edit)


#: What a :class:`Decisions` list holds until its first item: shared by every decision, so
#: never written (each field gets a list of its own through the methods that add to it).
_NOTHING: list[Any] = []


class Decisions:
    """What the driver must do after an input: start, cancel, set timers, publish events.

    ``done`` lists the positions of the nodes that got their outcome in this input (each
    outcome is :meth:`SchedulerState.outcome_at`, its journal order the node's plan index):
    the driver journals them before it starts anything (a node's outcome is committed before
    its dependents start) and tells whoever waits for them. Positions, not records: a wide
    run's decision lists thousands, and most runs neither journal them nor wait for them.
    """

    __slots__ = ("approvals", "cancels", "done", "events", "freed", "parked", "starts", "timers")

    def __init__(self) -> None:
        # Every field starts empty and shared, and gets a list of its own on its first item
        # (through the methods below): an input decides one or two things, and each list
        # never used was one more object for the collector (two decisions per call of an
        # agent's steps run: each gen-0 pass of a swarm comes sooner with each). ``starts``,
        # ``events``, ``done`` and ``approvals`` start as the shared empty list _NOTHING
        # (read as an empty list, never written); the rest as the empty tuple.
        # ``parked`` / ``freed``: gates (shared with the runtime's other runs) that a node of
        # this run now waits on / that this run released, so the driver can pass wake-ups on.
        self.parked: list[object] | tuple[object, ...] = ()
        self.freed: list[object] | tuple[object, ...] = ()
        self.starts: list[Call] = _NOTHING
        self.cancels: list[int] | tuple[int, ...] = ()
        self.timers: list[tuple[float, str, int]] | tuple[tuple[float, str, int], ...] = ()
        self.events: list[Event] = _NOTHING
        self.done: list[int] = _NOTHING  # positions (see the class docstring)
        self.approvals: list[ApprovalAction] = _NOTHING

    def start(self, call: Call) -> None:
        """Start ``call`` (an attempt)."""
        if self.starts is _NOTHING:
            self.starts = [call]
        else:
            self.starts.append(call)

    def event(self, event: Event) -> None:
        """Publish ``event``."""
        if self.events is _NOTHING:
            self.events = [event]
        else:
            self.events.append(event)

    def ended(self, pos: int) -> None:
        """Note that the node at ``pos`` got its outcome (journal it, tell who waits)."""
        if self.done is _NOTHING:
            self.done = [pos]
        else:
            self.done.append(pos)

    def ask(self, action: ApprovalAction) -> None:
        """Ask the approver about a node, or withdraw a question."""
        if self.approvals is _NOTHING:
            self.approvals = [action]
        else:
            self.approvals.append(action)

    def park(self, gate: object) -> None:
        """Note that a node of this run now waits on ``gate``."""
        if isinstance(self.parked, list):
            self.parked.append(gate)
        else:
            self.parked = [gate]

    def free(self, gate: object) -> None:
        """Note that this run released ``gate``."""
        if isinstance(self.freed, list):
            self.freed.append(gate)
        else:
            self.freed = [gate]

    def cancel(self, pos: int) -> None:
        """Stop the running call of the node at ``pos``."""
        if isinstance(self.cancels, list):
            self.cancels.append(pos)
        else:
            self.cancels = [pos]

    def timer(self, when: float, kind: str, pos: int) -> None:
        """Call back at ``when`` (``kind``: ``"retry"`` or ``"rate"``) for the node at ``pos``."""
        if isinstance(self.timers, list):
            self.timers.append((when, kind, pos))
        else:
            self.timers = [(when, kind, pos)]


class Ended(NamedTuple):
    """A node that got its outcome: its position, its plan index (journal order), the outcome."""

    pos: int
    order: int
    outcome: Outcome


class _Rare:
    """The fields of a slot that few nodes ever set: approvals, cancellations, skips, maps."""

    __slots__ = ("abandoned", "approval", "cancel_reason", "cancel_status", "failed_before",
                 "held_due", "items", "root")

    def __init__(self) -> None:
        self.abandoned = 0  # attempts abandoned with their work still running (see finish)
        # a retry held for its own abandoned attempt's work whose back-off is over: it is
        # queued once that work ends (see released)
        self.held_due = False
        self.failed_before = ""  # how its last attempt ended, once a retry is due (see finish)
        self.approval: _Approval | None = None  # set once the node was asked about
        self.cancel_reason = ""
        self.cancel_status: Status = "cancelled"
        self.root = ""  # for a skipped node: the failure at the start of its chain
        self.items: list[int] | None = None  # a map node, once expanded: its items' positions


_INDEX = operator.attrgetter("index")  # a node's plan index
_MAP = operator.attrgetter("map")  # a node's MapSpec, if it is a map
_TOOL = operator.attrgetter("tool")
_NEVER = float("-inf")  # a start time earlier than any (see SchedulerState.finish_ok)
_RUN: Fate = ("run", None)  # a node's fate when no journal says otherwise: run it

_COMMON = _Rare()  # the defaults, shared by every slot that never set one (never written)


def _edited_args(rare: _Rare) -> dict[str, Any] | None:
    """The arguments a reviewer's edit made the node run with; ``None`` if it ran as asked."""
    approval = rare.approval
    return approval.args if approval is not None and approval.edited else None


class _Slot:
    """The scheduler's record of one node.

    A large run holds a million of these at once: the fields few nodes set live in a
    :class:`_Rare` made on the first write (``rare``), behind properties of the same names.
    """

    __slots__ = (
        "args", "attempts", "executor", "gates", "gather", "held", "node", "outcome", "phase",
        "pos", "priority", "queued_at", "rare", "ready_mark", "started_at", "waiting", "where",
    )  # fmt: skip
    rare: _Rare  # _COMMON until one of its fields is set

    @property
    def approval(self) -> _Approval | None:
        """Set once the node was asked about."""
        return self.rare.approval

    @approval.setter
    def approval(self, value: _Approval | None) -> None:
        self.own().approval = value

    @property
    def cancel_reason(self) -> str:
        """Why it was cancelled (the first reason)."""
        return self.rare.cancel_reason

    @cancel_reason.setter
    def cancel_reason(self, value: str) -> None:
        self.own().cancel_reason = value

    @property
    def cancel_status(self) -> Status:
        """The status a cancellation gives it."""
        return self.rare.cancel_status

    @cancel_status.setter
    def cancel_status(self, value: Status) -> None:
        self.own().cancel_status = value

    @property
    def root(self) -> str:
        """For a skipped node: the failure at the start of its chain."""
        return self.rare.root

    @root.setter
    def root(self, value: str) -> None:
        self.own().root = value

    @property
    def items(self) -> list[int] | None:
        """A map node, once expanded: its items' positions."""
        return self.rare.items

    @items.setter
    def items(self, value: list[int] | None) -> None:
        self.own().items = value

    def own(self) -> _Rare:
        """The slot's own rare fields (made on the first write)."""
        rare = self.rare
        if rare is _COMMON:
            rare = self.rare = _Rare()
        return rare


    def __init__(self, pos: int, node: Node, waiting: int, executor: Isolation) -> None:
        self.pos = pos
        self.node = node
        self.waiting = waiting
        self.executor = executor
        self.phase = Phase.WAITING
        self.priority = 0.0
        self.attempts = 0
        self.queued_at: float | None = None
        self.started_at: float | None = None
        self.args: dict[str, Any] | None = None
        self.gates: tuple[ConcurrencyLimit, ...] | None = None
        self.outcome: Outcome | None = None
        self.rare = _COMMON
        self.gather = -1  # a map item: the position of its map node
        self.held = ""  # the limit it was parked on since it was last ready (for the journal)
        self.where = ""  # where its latest attempt ran, as its backend said
        self.ready_mark = 0  # the run-wide limit's block count when it was last ready


class _Over:
    """An ended node's record, made when :attr:`SchedulerState.slots` is asked for it.

    The state machine itself keeps no object per ended node (see :class:`_Gone`): a slot's
    fields for waiting, queueing and running are not needed any more, and the outcome holds
    the rest (attempts, times, backend, where it ran). Its phase is ``DONE`` for good; the
    other fields a slot has give inert values.
    """

    __slots__ = ("node", "outcome", "pos", "rare")
    phase = Phase.DONE
    priority = 0.0
    waiting = 0
    gather = -1
    args: dict[str, Any] | None = None
    gates: tuple[ConcurrencyLimit, ...] | None = None

    def __init__(self, pos: int, node: Node, outcome: Outcome, rare: _Rare) -> None:
        self.pos = pos
        self.node = node
        self.outcome = outcome
        self.rare = rare

    @property
    def root(self) -> str:
        """For a skipped node: the failure at the start of its chain."""
        return self.rare.root

    @property
    def items(self) -> list[int] | None:
        """A map node: its items' positions (``None`` if it made none)."""
        return self.rare.items

    @property
    def cancel_reason(self) -> str:
        """Why it was cancelled (the first reason)."""
        return self.rare.cancel_reason

    @property
    def approval(self) -> _Approval | None:
        """Set if the node was asked about."""
        return self.rare.approval

    @property
    def attempts(self) -> int:
        """How many attempts it made."""
        return self.outcome.attempts

    @property
    def executor(self) -> str:
        """The backend its attempts ran on (empty if it never ran)."""
        return self.outcome.executor


#: A node's record in :attr:`SchedulerState.slots`: live, or ended.
AnySlot = _Slot | _Over


class _Gone:
    """Where an ended node's slot was: one shared object (the outcome is kept apart).

    A large run holds a million ended nodes: what the state machine still needs of each (its
    outcome, and the rare fields a few set) lives in :attr:`SchedulerState._ended` and
    ``_kept_rare``, so ended nodes cost the collector nothing and a list entry of memory. The
    reads the state machine makes of any slot (``phase``, ``priority``, ``waiting``,
    ``gather``) give inert values.
    """

    __slots__ = ()
    phase = Phase.DONE
    priority = 0.0
    waiting = 0
    gather = -1


_GONE = _Gone()

#: What :attr:`SchedulerState._slots` holds: a live slot, or the mark of an ended one.
Kept = _Slot | _Gone


class _SlotsView:
    """Every node's record, by position: a live slot, or an ended node's (made when asked)."""

    __slots__ = ("_state",)

    def __init__(self, state: SchedulerState) -> None:
        self._state = state

    def __len__(self) -> int:
        return len(self._state._slots)

    def __getitem__(self, pos: int) -> AnySlot:
        return self._state._record_at(pos)

    def __iter__(self) -> Iterator[AnySlot]:
        return (self._state._record_at(pos) for pos in range(len(self._state._slots)))


#: How many attempts of one call may be abandoned with their work still running before it is
#: retried no more, whatever its ``retries``: a thread cannot be stopped (and a task may ignore
#: its cancellation), so each retry of a call that hangs would leave one more thread behind,
#: taking a place in the pool from every other call (``timeout=0.05, retries=20`` on a sync
#: tool that blocks: 21 threads). So a call that hangs gets one fresh attempt, not twenty.
MAX_ABANDONED = 2


def _left_running(slot: _Slot) -> str:
    """Count an attempt of ``slot`` abandoned still running; why it is not retried, if not."""
    rare = slot.own()
    rare.abandoned += 1
    if rare.abandoned < MAX_ABANDONED:
        return ""
    return (f"not retried: {rare.abandoned} of its attempts were abandoned still running "
            f"(a thread cannot be stopped), and each retry would leave one more behind")


def choose_executor(tool: Tool[..., Any], default: Isolation | None) -> Isolation:
    """The backend for ``tool``: its own isolation, else its options', else the run's default.

    Its options' is where its ``limits``, ``env``, ``resources`` or ``labels`` apply
    (:func:`~shoal.policy.placed_by_options`); with none of them and no default, by kind.
    A sync tool never runs inline, whatever the default, because it would block the loop.
    """
    policy = tool.policy
    if policy.isolation is not None:
        return policy.isolation
    if policy.limits or policy.env or policy.resources or policy.labels:  # (no call: most)
        placed = placed_by_options(policy)
        assert placed is not None  # one of them is set
        return placed
    if default is None or (default == "inline" and not tool.is_async):
        return tool.default_isolation
    return default


class SchedulerState:
    """All of a run's scheduling state; see the module docstring."""

    # slots: an agent swarm holds a run, so a state, per turn in flight (thousands at once)
    __slots__ = (
        "_ask_doubt", "_asking", "_backends", "_begun", "_critical", "_default_executor", "_doubt",
        "_early", "_ended", "_gates", "_global", "_global_blocks", "_global_held", "_heap",
        "_held",
        "_kept", "_kept_rare", "_maps_due", "_next_index", "_one_tool", "_plan_order", "_rng",
        "_slots",
        "_sorted", "_sorting", "_spare", "before_expand", "clock_origin", "closed", "ctrl_c_here",
        "done_count",
        "fail_fast", "fate_of", "graph", "in_flight", "record_events", "run_id", "status_counts",
        "stopping",
    )

    def __init__(
        self,
        graph: Graph,
        *,
        run_id: str,
        max_concurrency: int | None,
        resource_limits: Mapping[str, int] | None = None,
        executor_limits: Mapping[str, int] | None = None,
        fail_fast: bool = False,
        default_executor: Isolation | None = None,
        estimates: dict[str, float] | None = None,
        rng: random.Random | None = None,
        record_events: bool = False,
        shared_limits: SharedLimits | None = None,
        open_run: bool = False,
    ) -> None:
        # (scans at C speed: a MapSpec is true, None false; every run of a wide plan pays them)
        grows = open_run or any(map(_MAP, graph.nodes))
        if grows:
            graph = graph.fork()  # it grows while the run goes; the plan's own stays as it is
        self.graph = graph
        #: whether no more nodes will be added (an open run is closed by :meth:`close`)
        self.closed = not open_run
        self._begun = False
        nodes = graph.nodes
        # the plan index the next node added gets (-1: not worked out yet; most runs add none,
        # and finding it costs a pass over every node)
        self._next_index = -1
        self._plan_order: bool | None = None  # whether positions follow plan order (once known)
        #: resume: what the journal says about a node added while the run goes (see add())
        self.fate_of: Callable[[Node], Fate] | None = None
        #: called with the decisions so far before a map makes EARLY_JOURNAL_ITEMS items or
        #: more (seconds of work): the driver sends their outcomes to the journal meanwhile
        self.before_expand: Callable[[Decisions], None] | None = None
        self.run_id = run_id
        #: whether a KeyboardInterrupt here may be a Ctrl-C (the run's loop is on the main
        #: thread): else one a value's own code raises fails its node (set by the driver)
        self.ctrl_c_here = True
        self.fail_fast = fail_fast
        self.record_events = record_events
        self._default_executor = default_executor
        self._ask_doubt = False  # resume: nodes in doubt go to the approver (see hold_in_doubt)
        # maps to expand or gather (see _make_ready); made for the first map (most runs have none)
        self._maps_due: deque[_Slot] | None = None
        self._rng = rng or random.Random()
        self._global = ConcurrencyLimit("run max_concurrency", max_concurrency)
        self._global_blocks = 0  # how often ready nodes were left waiting on self._global
        # journaled as what held a node back (made when it first does: most runs never wait)
        self._global_held = ""
        self._gates = Gates(resource_limits, executor_limits, shared_limits)
        # Where this run's clock starts on the shared clock (the loop's), so rate limiters
        # shared with other runs see one time line; the driver sets it when the run starts.
        self.clock_origin = 0.0
        self._heap: list[tuple[float, int]] = []
        # The nodes begin() queues, sorted once, and taken from the front: a wide plan's nodes
        # would otherwise each go through the heap (a push, and a pop of log n comparisons).
        # The ready queue is the union of both; _dispatch takes the smaller of their heads.
        # the nodes ready at the start, best last (popped from the end; a list, not a deque:
        # an empty deque costs 600 bytes per run, and a swarm opens a run per agent)
        self._sorted: list[tuple[float, int]] = _NONE_SORTED
        self._sorting: list[tuple[float, int]] | None = None  # set while begin() queues
        executors: dict[Tool[..., Any], Isolation] = {}
        self._slots: list[Kept] = []
        # by tool object (a large plan has few tools, found at C speed: tools hash by identity)
        tools: set[Tool[..., Any]] = set(map(_TOOL, nodes))
        self._critical = CriticalPath(graph, estimates if estimates is not None else {}, tools)
        if nodes:  # (else an open run as it opens, an agent's steps run: nothing to map)
            executors = {tool: choose_executor(tool, default_executor) for tool in tools}
            # positions as the graph's own ints (one of each), in node order as ``preds`` is;
            # made by map() without a Python step per node: every run pays one slot per node
            self._slots = list(map(_Slot, graph.position.values(), nodes, map(len, graph.preds),
                                   map(executors.__getitem__, map(_TOOL, nodes))))
        #: each node's outcome, by position (``None`` until it has one); an ended node's slot
        #: gives way to ``_GONE``, and its rare fields, if it set any, to ``_kept_rare``
        self._backends = set(executors.values())
        # every node the same tool (object: the same estimate), none added later: if none
        # needs another either, every node has the same critical-path level (see begin)
        self._one_tool = len(executors) <= 1 and not grows
        self._ended: list[Outcome | None] = [None] * len(self._slots)
        self._kept_rare: dict[int, _Rare] = {}
        self.done_count = 0
        self.status_counts: dict[str, int] = _NO_COUNTS.copy()
        self.in_flight: dict[int, float] = {}  # position -> when its current attempt started
        self.stopping = ""  # the reason, once the run stops dispatching new work
        # gated nodes whose inputs are ready, not yet asked about (made for the first one)
        self._asking: list[_Slot] | None = None
        self._doubt: dict[int, str] = {}  # resume: calls in doubt that an approver settles
        # what add() decides into: kept while adding decides nothing (a node that waits for
        # its inputs, most nodes of a graph fed faster than it runs), handed out when it does
        self._spare: Decisions | None = None
        # abandoned nodes whose work still runs -> the nodes their resource and exclusive
        # edges hold until it ends, each with why (made when the first is held)
        self._held: dict[int, dict[int, str]] | None = None
        # nodes that ended before what they wait for had (skipped, cancelled while waiting),
        # by position: what they order waits on until that has ended (see _pass_on)
        self._early: dict[int, _Slot] | None = None
        # abandoned nodes whose work still runs -> the resource_limits slots it still holds
        self._kept: dict[int, tuple[ConcurrencyLimit, ...]] | None = None

    @property
    def slots(self) -> _SlotsView:
        """Every node's record, by position (for tests and diagnostics).

        The driver asks the queries below instead. An ended node's record is made when asked:
        phase ``DONE``, its outcome, its rare fields.
        """
        return _SlotsView(self)

    def _record_at(self, pos: int) -> AnySlot:
        slot = self._slots[pos]
        if isinstance(slot, _Slot):
            return slot
        outcome = self._ended[pos]
        assert outcome is not None
        return _Over(pos, self.graph.nodes[pos], outcome, self._rare_at(pos))

    def _rare_at(self, pos: int) -> _Rare:
        """The rare fields of the node at ``pos``, live or ended."""
        slot = self._slots[pos]
        return slot.rare if isinstance(slot, _Slot) else self._kept_rare.get(pos, _COMMON)

    # ---- inputs -------------------------------------------------------------------------

    def begin(self, now: float) -> Decisions:
        """Queue every node without dependencies and start what the limits allow."""
        # the empty decision nodes added before the start kept (see add), else a new one: an
        # open run's state keeps no spare from its first step on (an agent's steps run is
        # opened with one node added, then waits on it: five objects a swarm holds per agent)
        d = self._spare if self._spare is not None else Decisions()
        self._spare = None
        self._begun = True
        cap = self._global.capacity
        # otherwise every node starts once ready; and ranking nodes of one level changes no
        # order (ties go by position either way)
        if cap is not None and len(self._slots) > cap and not (
                self._one_tool and not any(self.graph.succs)):
            self._rank()
        queued: list[tuple[float, int]] = []
        self._sorting = queued
        try:
            self._queue_ready(queued, now, d)
        finally:
            self._sorting = None
        queued.sort(reverse=True)  # in plan order already, unless ranked otherwise: one pass
        self._sorted = queued
        self._dispatch(now, d)
        if not self._sorted:  # every one started (an open run's first step): the list goes
            self._sorted = _NONE_SORTED
        return d

    def begin_empty(self) -> bool:
        """:meth:`begin` for an open run with no node yet and nothing decided: whether it was one.

        Such a run (an open run as it opens: every agent's steps run) has nothing to queue,
        start or ask about: it is only marked begun, with no decision made and carried out.
        Otherwise nothing is done, and :meth:`begin` is the caller's to call.
        """
        if self.closed or self._slots or self._spare is not None or self._asking:
            return False  # (a closed run with no node ends as it begins: begin() says so)
        self._begun = True
        return True

    def _queue_ready(self, queued: list[tuple[float, int]], now: float, d: Decisions) -> None:
        """begin(): make every node without dependencies ready (into ``queued``, sorted later).

        Most of them are plain (no map, no approval, nobody listens, not stopping): made ready
        here, as :meth:`_make_ready` would, without its call; the rest go through it.
        """
        ready, blocks = Phase.READY, self._global_blocks
        plain = not (self.stopping or self.record_events or self._doubt)
        for slot in self._slots:
            if slot.waiting == 0 and slot.phase is Phase.WAITING and isinstance(slot, _Slot):
                node = slot.node
                if plain and node.map is None and node.tool.policy.approval is False:
                    slot.phase, slot.held, slot.ready_mark, slot.queued_at = ready, "", blocks, now
                    queued.append((slot.priority, slot.pos))
                else:
                    self._make_ready(slot, now, d)
                    plain = not (self.stopping or self.record_events or self._doubt)

    def add(self, nodes: Iterable[Node], now: float) -> Decisions | None:
        """Nodes added to an open run: each waits for the nodes it needs, then runs as usual.

        A node's refs and ``after`` must name nodes the run has (checked by the caller); its
        resource and barrier edges come from every node added before it. Before
        :meth:`begin` nodes are only recorded; ``begin`` queues them. Returns ``None`` when
        there is nothing to carry out (the nodes wait for their inputs).
        """
        d = self._spare
        if d is None:
            d = self._spare = Decisions()
        queued = len(self._heap)
        try:
            for node in nodes:
                self._add_node(node, now, d)
            # after every input the ready queue is empty or the run-wide limit full: only a
            # node queued (or ended, or to ask about) now may start something. Most nodes of
            # a graph fed faster than it runs wait for their inputs, and skip the call
            if self._begun and (len(self._heap) != queued or d.done or self._asking):
                self._dispatch(now, d)
        except BaseException:
            self._spare = None  # what it holds was decided halfway: never carried out later
            raise
        if (d.starts or d.done or d.events or d.approvals or d.timers or d.cancels or d.parked
                or d.freed):
            self._spare = None
            return d
        return None  # d is still empty: the next add decides into it

    def close(self, now: float) -> Decisions:
        """No more nodes will be added: the run ends once every node has an outcome."""
        self.closed = True
        return Decisions()

    def finish(self, pos: int, result: AttemptResult, now: float) -> Decisions:
        """An attempt ended: retry it, or record the outcome and release its dependents."""
        d = Decisions()
        running_on = result.abandoned and result.running_on
        slot = self._attempt_ended(pos, result.where, d, running_on)
        if result.began is not None and slot.attempts == 1 and slot.started_at is not None:
            slot.started_at = max(slot.started_at, result.began)  # exclude waiting for a worker
        status = slot.cancel_status if result.status == "cancelled" else result.status
        kept_running = ""  # why an abandoned attempt is not retried (see MAX_ABANDONED)
        if (status != "ok" and status != "cancelled" and not self.stopping
                and not slot.cancel_reason and result.error is not None
                and slot.node.tool.policy.retry.should_retry(result.error, slot.attempts)
                and not (result.abandoned and (kept_running := _left_running(slot)))):
            delay = slot.node.tool.policy.retry.delay(slot.attempts, self._rng)
            self._set_phase(slot, Phase.BACKOFF)
            d.timer(now + delay, "retry", pos)
            failed = str(ErrorInfo.from_exception(result.error, with_traceback=False))
            if running_on and _orders(slot.node.tool):
                self._hold_own(slot, status, now, d)
            # kept for its outcome, should the call be stopped before its next attempt ends
            slot.own().failed_before = f"attempt {slot.attempts} ended {status}: {failed}"
            if self.record_events:
                d.event(NodeRetrying(
                    run_id=self.run_id, time=now, node_id=slot.node.id, tool=slot.node.tool.name,
                    attempt=slot.attempts, delay=delay, error=failed))
        else:
            end = (_end_of(result.ended, slot.started_at, now)
                   if result.status in ("ok", "failed") else now)  # a timeout ends at now
            if slot.started_at is not None:
                self._critical.learn(slot.node.tool.name, end - slot.started_at)
            error = None if status == "ok" else self._error(slot, result)
            said = (slot.cancel_reason or result.reason) if status == "cancelled" else ""
            if result.abandoned and result.reason:  # the driver abandoned it: say so too
                said = (f"{slot.cancel_reason}; {result.reason}" if slot.cancel_reason
                        else result.reason)
            if kept_running:
                said = f"{said}; {kept_running}" if said else kept_running
            # stopped while its tool ran (not one that ended on its own, or never ran): it
            # may have taken effect
            stopped = status == "cancelled" or status == "timed_out"
            self._record(slot, status, end, d, value=result.value, error=error, reason=said,
                         abandoned=result.abandoned,
                         interrupted=stopped and (result.abandoned or not result.unstarted),
                         holds=running_on)
        self._dispatch(now, d)
        return d

    def finish_ok(self, pos: int, value: Any, where: str, now: float,
                  began: float | None = None, ended: float | None = None) -> Decisions:
        """:meth:`finish` for an attempt that returned ``value`` (began at ``began``).

        What most calls report, without an :class:`AttemptResult` to carry it: a batch of one
        for :meth:`finish_ok_many` (a start of ``-inf`` moves no start time). ``ended`` (when
        the work really ended, before ``now``) is the outcome's end; what it releases is
        decided at ``now``.
        """
        if began is None and ended is None:  # most: no start to move, ended now
            return self.finish_ok_many(((pos, value, where, _NEVER, now),), now)
        start = _NEVER if began is None else began
        slot = self._slots[pos]
        started = slot.started_at if isinstance(slot, _Slot) else None
        if started is not None and start > started:
            started = start
        finished = now if ended is None else _end_of(ended, started, now)
        return self.finish_ok_many(((pos, value, where, start, finished),), now)

    def finish_ok_many(self, ended: Sequence[tuple[int, Any, str, float, float]],
                       at: float | None = None) -> Decisions:
        """:meth:`finish_ok` for several attempts that ended one after another, in that order.

        Each is ``(pos, value, where, began, finished)``; what they release is dispatched
        once, at the end (at ``at``, if later than the last ``finished``). For calls the driver
        ran without giving the loop a turn: one decision for the batch instead of one per call
        (the same outcomes and starts).
        """
        d = Decisions()
        d.done = done = []  # (each call of the batch ends here)
        now = 0.0
        learn = self._critical.learn
        slots, outcomes, in_flight = self._slots, self._ended, self.in_flight
        succs, general = self.graph.succs, self.record_events
        quiet = 0  # the outcomes recorded here, without _record
        try:
            for pos, value, where, began, now in ended:
                slot = slots[pos]
                assert isinstance(slot, _Slot) and slot.phase is Phase.RUNNING, (
                    f"{self.graph.nodes[pos].id} ended twice")
                del in_flight[pos]
                if slot.gates:
                    self._release(slot, d)
                started = slot.started_at
                if started is not None:
                    if slot.attempts == 1 and began > started:
                        slot.started_at = started = began  # exclude waiting to run
                    if now < started:  # a backend's stamp, kept after the start (see _end_of)
                        now = started
                    learn(slot.node.tool.name, now - started)
                if general or slot.gather >= 0 or succs[pos]:  # events, or nodes wait for it
                    self._global.in_use -= 1
                    slot.where = where or slot.where
                    self._record_ok(slot, now, d, value)
                    continue
                # most ends of a wide run: nothing waits for the node, nobody listens. What
                # _record would do, inline: the outcome, the slot given way, the end reported
                node = slot.node
                outcomes[pos] = Outcome(
                    node.id, node.tool.name, "ok", value, None, "", slot.attempts,
                    slot.queued_at, started, now, slot.executor, False, where or slot.where)
                slot.phase = Phase.DONE
                slots[pos] = _GONE
                if slot.rare is not _COMMON:
                    self._kept_rare[pos] = slot.rare
                    edited = _edited_args(slot.rare)
                    kept = outcomes[pos]
                    if edited is not None and kept is not None:  # (no work on the common path)
                        outcomes[pos] = replace(kept, edited_args=edited)
                done.append(pos)
                quiet += 1
        finally:  # counted once for the batch (nothing above reads these counts)
            if quiet:  # (none when each end released something: a chain's)
                self._global.in_use -= quiet
                self.done_count += quiet
                self.status_counts["ok"] += quiet
        if self._heap or self._sorted or self._asking:  # (else _dispatch has nothing to do)
            self._dispatch(now if at is None or at < now else at, d)
        return d

    def releases(self, pos: int) -> bool:
        """Whether the end of the running node at ``pos`` may start another node at once.

        A node waits for it (a dependent, or its map if it is an item), or it holds a gate
        (a tool's or a resource's limit) that a parked node may wait on. The driver feeds such
        an end at once and batches the others (see ``Driver._attempt_inline``).
        """
        slot = self._slots[pos]
        return bool(self.graph.succs[pos]) or not isinstance(slot, _Slot) or (
            slot.gather >= 0 or bool(slot.gates))

    def _attempt_ended(self, pos: int, where: str, d: Decisions,
                       running_on: bool = False) -> _Slot:
        """The running node at ``pos``, its attempt over: give back what the attempt held.

        ``running_on``: its abandoned work still runs, and keeps its ``resource_limits`` slots
        until :meth:`released` (or the run's end, :meth:`let_go`).
        """
        slot = self._slots[pos]
        assert isinstance(slot, _Slot), f"{self.graph.nodes[pos].id} ended twice"
        self._global.in_use -= 1
        del self.in_flight[pos]
        gates = slot.gates
        if gates:
            if running_on:
                keys = self._gates.key_gates(gates)
                if keys:
                    if self._kept is None:
                        self._kept = {}
                    self._kept[pos] = keys
                    gates = tuple(gate for gate in gates if gate not in keys)
            self._release_gates(gates, d)
        slot.where = where or slot.where
        return slot

    def released(self, pos: int, now: float) -> Decisions:
        """The abandoned attempt of the node at ``pos`` really ended (its thread returned).

        The nodes its resource and exclusive edges held (see ``AttemptResult.running_on``)
        stop waiting for it; those cancelled meanwhile stay as they ended. Fed at most
        once per hold; a node that holds nothing (its work ended before its outcome was
        recorded, or the run was resumed) makes this a no-op.
        """
        d = Decisions()
        held = self._held.pop(pos, None) if self._held else None
        kept = self._kept.pop(pos, None) if self._kept else None
        if kept:
            self._release_gates(kept, d)
        for succ, why in (held or {}).items():
            after = self._slots[succ]
            if not isinstance(after, _Slot):
                held_back = self._early.get(succ) if self._early is not None else None
                if held_back is not None:  # ended early, and what it orders waits for this
                    stack: list[tuple[_Slot, bool]] = []
                    self._count_down_early(held_back, stack)
                    if stack:
                        self._pass_on_from(stack, held_back, now, d, False)
                continue  # ended meanwhile (cancelled, the run's deadline)
            if succ == pos:  # its own retry (see _hold_own): due once its back-off is over too
                self._end_own_hold(after, why)
            elif after.phase is Phase.WAITING:
                after.waiting -= 1
                if after.waiting == 0:
                    self._make_ready(after, now, d)
                    after.held = why  # journaled with its start: why it was ready so late
        if held or kept:
            self._dispatch(now, d)
        return d

    def let_go(self) -> dict[int, tuple[ConcurrencyLimit, ...]]:
        """The run ended: the ``resource_limits`` slots its abandoned work keeps, by node.

        This run's state hears no more of that work (see ``Driver``: its end is no longer
        asked for); the caller gives them back when it ends (``gates.GiveBack``).
        """
        kept, self._kept = self._kept, None
        return kept or {}

    def holds(self, pos: int) -> bool:
        """Whether the node at ``pos`` holds others until its abandoned work ends."""
        held, kept = self._held, self._kept
        return (held is not None and pos in held) or (kept is not None and pos in kept)

    def _hold_own(self, slot: _Slot, status: Status, now: float, d: Decisions) -> None:
        """``slot``'s retry waits for its own abandoned attempt's work, which still runs.

        It reads or writes resource keys, or is exclusive: the two attempts must not overlap.
        """
        tool = slot.node.tool
        policy = tool.policy
        args = slot.node.args
        if slot.node.refs:  # the keys its attempts used, not the plan's wildcards (file:*)
            with contextlib.suppress(Exception):  # (it ran with them: this does not fail)
                args = resolve_arguments(args, self._lookup, tool.name)
        keys = [str(render_key(t, args, tool.defaults))
                for t in (*policy.reads, *policy.writes, *policy.merges)]
        what = " and ".join(
            ([f"release {', '.join(keys)}"] if keys else [])
            + ([f"end ({slot.node.id} is exclusive)"] if policy.exclusive else []))
        work = "thread" if slot.executor in _ON_THREADS else "task"
        why = (f"waiting for the {work} of its own attempt {slot.attempts}, which "
               f"{status.replace('_', ' ')} and still runs, to {what}")
        if self._held is None:
            self._held = {}
        self._held.setdefault(slot.pos, {})[slot.pos] = why
        if self.record_events:
            d.event(NodeHeld(run_id=self.run_id, time=now, node_id=slot.node.id,
                             tool=tool.name, reason=why, by=slot.node.id))

    def _end_own_hold(self, slot: _Slot, why: str) -> None:
        """Its own earlier attempt's work ended: its retry goes, if its back-off is over.

        (If not, the back-off's end queues it as usual: the hold cost it no time.)
        """
        if slot.phase is Phase.BACKOFF and slot.rare.held_due:
            slot.rare.held_due = False
            self._set_phase(slot, Phase.READY)
            slot.held = why  # journaled with its start: why it started so late
            heapq.heappush(self._heap, (slot.priority, slot.pos))

    def held(self) -> list[tuple[str, str, str]]:
        """(node id, tool, why) of every node waiting for an abandoned call's work to end."""
        found: list[tuple[str, str, str]] = []
        for by, waits in (self._held or {}).items():
            for pos, why in waits.items():
                slot = self._slots[pos]
                if isinstance(slot, _Slot) and (slot.phase is Phase.WAITING or (
                        pos == by and slot.phase is Phase.BACKOFF)):
                    found.append((slot.node.id, slot.node.tool.name, why))
        return found

    def retry_due(self, pos: int, now: float) -> Decisions:
        """A retry's back-off is over: queue the node again."""
        d = Decisions()
        slot = self._slots[pos]
        if slot.phase is Phase.BACKOFF and isinstance(slot, _Slot):
            if self._held and pos in self._held.get(pos, ()):
                slot.own().held_due = True  # its own earlier attempt still runs: released()
                return d
            self._set_phase(slot, Phase.READY)
            heapq.heappush(self._heap, (slot.priority, pos))
            self._dispatch(now, d)
        return d

    @property
    def shared_limits(self) -> SharedLimits:
        """The gates this run shares with the other runs of its runtime."""
        return self._gates.shared

    def wake_gate(self, gate: object, now: float) -> Decisions:
        """Another run freed ``gate``: give this run's best node parked on it another look."""
        d = Decisions()
        self._wake_one(gate)
        self._dispatch(now, d)
        return d

    def waits_on(self, gate: object) -> bool:
        """Whether nodes of this run are parked on ``gate`` (never once the run has finished)."""
        return not self.finished and self._gates.has_parked(gate)

    def wake(self, now: float) -> Decisions:
        """A rate-limit timer fired: give parked nodes another look."""
        d = Decisions()
        for item in self._gates.take_rate_waiters():
            heapq.heappush(self._heap, item)
        self._dispatch(now, d)
        return d

    def cancel(self, node_ids: Iterable[str] | None, reason: str, now: float, *,
               status: StopStatus = "cancelled") -> Decisions:
        """Cancel the named nodes (all when ``None``); dependents of cancelled nodes are skipped.

        Cancelling the whole run also stops dispatching anything new. ``status="timed_out"``:
        the nodes under way end ``timed_out``, as at the run's deadline (a time limit of the
        caller's ran out), and those that never started ``cancelled``.
        """
        d = Decisions()
        if node_ids is None:
            self.stopping = self.stopping or reason
            # dependents first, so each is cancelled in its own right, not skipped for its input
            targets: Iterable[Kept] = reversed(self._slots)
        else:
            targets = [self._slots[self.graph.position[nid]] for nid in node_ids]
        for slot in targets:
            self._cancel_slot(slot, reason, status, now, d)
        self._dispatch(now, d)
        return d

    def expire(self, reason: str, now: float) -> Decisions:
        """The run's deadline passed: running calls time out, the rest are cancelled."""
        d = Decisions()
        self.stopping = self.stopping or reason
        for slot in reversed(self._slots):
            self._cancel_slot(slot, reason, "timed_out", now, d)
        return d

    def approve(self, pos: int, args_hash: str, now: float, *, args: dict[str, Any] | None = None,
                by: str = "", reason: str = "", verdict: str = "approve") -> Decisions:
        """The node waiting for approval may run, with exactly the arguments it was approved for.

        Those are the arguments hashed ``args_hash``: the ones it was asked about, or ``args``
        (an edit, already validated). A hash that does not match the arguments denies the
        node instead: an approval for some arguments never lets others run. Ignored unless the
        node is still waiting.
        """
        d = Decisions()
        slot = self._slots[pos]
        if not isinstance(slot, _Slot) or slot.phase is not Phase.APPROVAL or (
                slot.approval is None):
            return d
        if args is not None:
            slot.args = args
            slot.approval.hashed = None  # (an edit's own are hashed here; the asked ones go)
        assert slot.args is not None
        asked = slot.approval.args_hash  # the hash of slot.args, unless they were edited
        if (args_hash != asked if args is None
                else approval_hash(slot.node.tool.name, slot.args) != args_hash):
            return self.deny(pos, "the approval was given for other arguments", now, by=by)
        self._decided(slot, verdict, reason, by, now, d,
                      edited=args if verdict == "edit" else None)
        slot.approval.edited = args_hash != asked  # its outcome says so (and its model reads it)
        slot.approval.args_hash = args_hash
        slot.approval.args = isolate_all(slot.args)  # what retries run: pristine, approved
        self._set_phase(slot, Phase.READY)
        heapq.heappush(self._heap, (slot.priority, slot.pos))
        self._dispatch(now, d)
        return d

    def deny(self, pos: int, reason: str, now: float, *, by: str = "") -> Decisions:
        """The node waiting for approval ends ``denied`` with ``reason``; it never runs.

        A call in doubt (see :meth:`hold_in_doubt`) stays ``in_doubt`` instead: a person said
        not to run it again, which says nothing about whether it took effect.
        """
        d = Decisions()
        slot = self._slots[pos]
        if slot.phase is Phase.APPROVAL and isinstance(slot, _Slot):
            self._decided(slot, "deny", reason, by, now, d)
            status: Status = "in_doubt" if slot.pos in self._doubt else "denied"
            self._record(slot, status, now, d, reason=reason)
            self._dispatch(now, d)
        return d

    def restore(self, outcomes: Iterable[Outcome], now: float) -> Decisions:
        """Resume: nodes that completed before the run stopped keep their recorded outcome.

        They never run again; what waits for them is released (or skipped) as if they had
        just ended. Call before :meth:`begin`. The decisions returned are those of the
        release (nodes skipped, maps whose list is now known making their items, which may
        end at once): the restored outcomes themselves are in the journal already.
        """
        d = Decisions()
        restored: list[_Slot] = []
        for outcome in outcomes:
            slot = self._slots[self.graph.position[outcome.node_id]]
            if not isinstance(slot, _Slot) or slot.phase is Phase.DONE:
                continue
            slot.attempts, slot.queued_at = outcome.attempts, outcome.queued_at
            slot.started_at = outcome.started_at
            self._store(slot, outcome.status, now, d, outcome.value, outcome.error,
                        outcome.reason, outcome.abandoned, outcome.interrupted)
            # exactly as recorded: times, executor, attempts
            slot.outcome = self._ended[slot.pos] = outcome
            restored.append(slot)
        # released only once all are restored: a map released before its own outcome was
        # would make its items again (and run those whose results cannot be replayed)
        released = Decisions()
        for slot in restored:
            self._pass_on(slot, now, released)
        return released

    def hold_in_doubt(self, reasons: Mapping[str, str], now: float, *,
                      ask: bool = False) -> Decisions:
        """Resume: calls that were in flight when the run stopped and may not run twice.

        Without ``ask`` they end ``in_doubt`` (with the reason) and what needs them is skipped.
        With ``ask`` each goes to the approver once its inputs are ready: approved, it runs
        again; denied, it ends ``in_doubt``. Call before :meth:`begin`.
        """
        d = Decisions()
        self._ask_doubt = ask
        for node_id, reason in reasons.items():
            slot = self._slots[self.graph.position[node_id]]
            if not isinstance(slot, _Slot) or slot.phase is Phase.DONE:
                continue
            if ask:
                self._doubt[slot.pos] = reason
            else:
                self._record(slot, "in_doubt", now, d, reason=reason)
        return d

    # ---- queries --------------------------------------------------------------------------
    # What the driver may ask; it never reads the slots themselves, so either side can change.

    @property
    def size(self) -> int:
        """How many nodes the run has (an open run's grows)."""
        return len(self._slots)

    def backends(self) -> set[Isolation]:
        """The backends the run's nodes use so far (ended nodes' included)."""
        return set(self._backends)

    def _must_succeed(self, source: int, target: int) -> bool:
        """Whether ``target`` needs ``source`` to *succeed* (data and after edges).

        Resource and barrier edges only order. Asked only when a node did not succeed, so
        worked out from the target's refs and ``after`` then: no set of every such pair (a
        large run would hold millions), nor an object per run to ask (a swarm holds a run
        per agent in flight).
        """
        nodes = self.graph.nodes
        node, nid = nodes[target], nodes[source].id
        return nid in node.after or any(r.node == nid for r in node.refs)

    def outcome_at(self, pos: int) -> Outcome | None:
        """The outcome of the node at ``pos``, if it has one."""
        return self._ended[pos]

    def items_of(self, pos: int) -> int | None:
        """How many items the map at ``pos`` made (``None``: it has made none)."""
        items = self._rare_at(pos).items
        return None if items is None else len(items)

    def ended(self) -> Iterator[Ended]:
        """Every node that has its outcome, with its plan index (for the journal).

        A generator: a million-node run's journal takes them one at a time, never as a list.
        """
        nodes = self.graph.nodes
        return (Ended(pos, nodes[pos].index, o) for pos, o in enumerate(self._ended)
                if o is not None)

    def ended_in_order(self) -> tuple[Iterator[Outcome], Iterator[int]]:
        """:meth:`ended`'s outcomes and their plan indexes, as two iterators in step.

        For a large run's journal: its records are made from these by ``map``, with no
        :class:`Ended` (nor a Python step of a generator) per node.
        """
        ended = self._ended

        def have() -> Iterator[bool]:  # which positions ended (lazily, at C speed)
            return map(operator.is_not, ended, itertools.repeat(None))

        return (cast(Iterator[Outcome], itertools.compress(ended, have())),
                itertools.compress(map(_INDEX, self.graph.nodes), have()))

    @property
    def finished(self) -> bool:
        """Whether every node has an outcome and no more can be added."""
        return self.closed and self.done_count == len(self._slots)

    def running(self) -> list[tuple[str, str, str, float]]:
        """(node id, tool, executor, start time) of every attempt in flight."""
        found: list[tuple[str, str, str, float]] = []
        for pos, since in self.in_flight.items():
            slot = self._slots[pos]
            assert isinstance(slot, _Slot)  # in flight: live
            found.append((slot.node.id, slot.node.tool.name, slot.executor, since))
        return found

    def awaiting_approval(self) -> list[tuple[str, str, float]]:
        """(node id, tool, since) of every node waiting for an approver's decision."""
        return [(s.node.id, s.node.tool.name, s.queued_at or 0.0) for s in self._slots
                if isinstance(s, _Slot)
                and s.phase is Phase.APPROVAL and s.approval is not None]

    def awaiting(self, pos: int) -> Tool[..., Any] | None:
        """The tool of the node at ``pos`` while it waits in ``APPROVAL``, else ``None``."""
        slot = self._slots[pos]
        return slot.node.tool if isinstance(slot, _Slot) and slot.phase is Phase.APPROVAL else None

    def phase_counts(self) -> dict[str, int]:
        """How many nodes are in each phase (for progress displays)."""
        counts = {p.value: 0 for p in PHASES}
        for s in self._slots:
            counts[s.phase.value] += 1
        return counts

    def outcomes(self) -> list[Outcome]:
        """The outcomes recorded so far, in plan order."""
        ended = self._ended
        if not self._in_plan_order():
            nodes = self.graph.nodes
            order = sorted(range(len(ended)), key=lambda pos: nodes[pos].index)
            return [o for pos in order if (o := ended[pos]) is not None]
        return [o for o in ended if o is not None]

    def _in_plan_order(self) -> bool:
        """Whether positions follow plan order (not so for a plan whose refs point back, say).

        Looked at once: a node added while the run goes comes last in both orders.
        """
        if self._plan_order is None:  # indexes never decrease: compared without a Python step
            indexes = list(map(_INDEX, self.graph.nodes))
            self._plan_order = all(map(operator.le, indexes, itertools.islice(indexes, 1, None)))
        return self._plan_order

    def outcomes_by_id(self) -> dict[str, Outcome]:
        """The outcomes recorded so far by node id, in plan order (a run's result).

        A large finished run's dict is made at its final size, from the graph's ids: grown an
        entry at a time, a million-entry dict would hold its old table and its new one at once.
        """
        if not self.finished or not self._in_plan_order():
            return {o.node_id: o for o in self.outcomes()}
        # every node has its outcome, and positions are in plan order: the ids in position
        # order, each given its node's outcome
        position = self.graph.position
        if len(position) <= _GROWN_RESULT:  # small: made in one pass, growing as it goes
            return dict(zip(position, cast(list[Outcome], self._ended), strict=True))
        # large: made at its final size first (no entry is added, so the table never grows)
        found = cast(dict[str, Outcome], dict.fromkeys(position))
        found.update(zip(position, cast(list[Outcome], self._ended), strict=True))
        return found

    # ---- transitions --------------------------------------------------------------------------

    def _set_phase(self, slot: AnySlot, phase: Phase) -> None:
        assert phase in TRANSITIONS[slot.phase], f"{slot.node.id}: {slot.phase} -> {phase}"
        assert isinstance(slot, _Slot)  # an ended node has no transition left
        slot.phase = phase
        if phase is Phase.READY:  # what holds it back from here on is journaled at its start
            slot.held, slot.ready_mark = "", self._global_blocks

    def _make_ready(self, slot: _Slot, now: float, d: Decisions) -> None:
        assert slot.phase is Phase.WAITING, f"{slot.node.id}: {slot.phase} -> ready"
        if self.stopping:
            self._record(slot, "cancelled", now, d, reason=self.stopping)
            return
        if slot.node.map is not None:  # runs nothing itself: makes its items, then gathers
            if self._maps_due is None:
                self._maps_due = deque()
            self._maps_due.append(slot)
            if len(self._maps_due) == 1:  # else a caller up the stack is at it already
                self._run_maps(now, d)
            return
        if slot.node.tool.policy.approval is not False or (
                self._doubt and slot.pos in self._doubt):  # asked about in _dispatch, once
            self._set_phase(slot, Phase.APPROVAL)  # its arguments are resolved with the others
            slot.queued_at = now
            if self._asking is None:
                self._asking = []
            self._asking.append(slot)
            return
        # WAITING -> READY (only waiting nodes are made ready), without _set_phase's call: every
        # node passes here
        slot.phase, slot.held, slot.ready_mark = Phase.READY, "", self._global_blocks
        slot.queued_at = now
        if self._sorting is not None:  # begin(): sorted once they are all in
            self._sorting.append((slot.priority, slot.pos))
        else:
            heapq.heappush(self._heap, (slot.priority, slot.pos))
        if self.record_events:
            d.event(NodeQueued(run_id=self.run_id, time=now, node_id=slot.node.id,
                                       tool=slot.node.tool.name))

    def _run_maps(self, now: float, d: Decisions) -> None:
        """Expand or gather the maps that are due, one after another.

        A map that ends at once (an empty list, items that replay) releases the next one;
        done here in a loop, not by recursion, a chain of hundreds of maps cannot overflow
        the stack.
        """
        due = self._maps_due
        assert due is not None  # called for a map just queued
        try:
            while due:
                slot = due[0]
                if slot.phase is not Phase.WAITING:
                    pass  # cancelled or skipped meanwhile
                elif self.stopping:
                    self._record(slot, "cancelled", now, d, reason=self.stopping)
                elif slot.items is None:
                    self._expand(slot, now, d)
                else:
                    self._gather(slot, now, d)
                due.popleft()
        except BaseException:
            due.clear()  # an internal error: the next call must not think it runs
            raise

    def _add_node(self, node: Node, now: float, d: Decisions, *, gather: int = -1,
                  priority: float | None = None) -> _Slot:
        """Grow the graph by ``node`` and give it a slot: waiting, replayed, skipped or queued."""
        fate: Fate = self.fate_of(node) if self.fate_of is not None else _RUN
        index = self._next_index
        if index < 0:  # the first node added: after every node the run started with
            index = max(map(_INDEX, self.graph.nodes), default=-1) + 1
        node.index = index
        self._next_index = index + 1
        graph, critical = self.graph, self._critical
        tool = node.tool
        executor = choose_executor(tool, self._default_executor)
        backends = self._backends
        if executor not in backends:
            backends.add(executor)
        slots, ended = self._slots, self._ended
        count = len(slots)
        try:  # the graph grows and the node gets its slot, or neither: see _forget_from
            builder = graph.builder  # (grow's work, without its call, once the graph grows)
            pos = (builder.extend(node) if builder is not None and gather < 0 else
                   graph.grow(node, gather if gather >= 0 else None))
            blocked = -1  # the position of a needed node that did not succeed
            waiting, done = 0, Phase.DONE
            for p in graph.preds[pos]:
                if slots[p].phase is not done:
                    waiting += 1
                elif blocked < 0 and (failed := ended[p]) is not None and (
                        failed.status != "ok" and self._must_succeed(p, pos)):
                    blocked = p
            slot = _Slot(pos, node, waiting, executor)
            if gather >= 0:
                slot.gather = gather
            slots.append(slot)
            ended.append(None)
        except BaseException:  # Ctrl-C in a key template's __format__, say
            self._forget_from(count, index)
            raise
        critical.note(node)
        # raised by what is added after it, once that matters: _lift_added
        slot.priority = -critical.estimate(tool) if priority is None else priority
        if self.stopping:
            self._record(slot, "cancelled", now, d, reason=self.stopping)
        elif fate[0] != "run":
            self._settle(slot, fate, now, d)
        elif blocked >= 0:
            failed = self._ended[blocked]
            assert failed is not None
            root = self._rare_at(blocked).root
            slot.root = root or _root_cause(failed.node_id, failed)
            self._store(slot, "skipped", now, d, None, None,
                        f"needs {failed.node_id!r}, which ended {failed.status}"
                        f"{_detail(failed)}", False)
        elif waiting == 0 and self._begun:
            if (node.map is None and tool.policy.approval is False and not self._doubt
                    and not self.record_events and self._sorting is None):
                # WAITING -> READY: _make_ready's work for a plain node, without its call (most
                # nodes added to an open run, each call of an agent's steps run)
                slot.phase, slot.held, slot.ready_mark = Phase.READY, "", self._global_blocks
                slot.queued_at = now
                heapq.heappush(self._heap, (slot.priority, pos))
            else:
                self._make_ready(slot, now, d)
        return slot

    def _forget_from(self, count: int, index: int) -> None:
        """Undo a node's addition cut short by an error: the nodes from position ``count`` on.

        A node in the graph without a slot would shift every later node's slot from its
        position, and whatever waited for it would wait for ever: the run could not end.
        """
        del self._slots[count:], self._ended[count:]
        slots = self._slots
        self.graph.forget_from(count, lambda pos: slots[pos].gather)
        self._next_index = index

    def _lift_added(self) -> None:
        """Give the nodes added since the last call their critical-path priorities.

        Done in one pass, newest first, when the order of the ready queue matters, not as each
        node comes: a chain fed node by node would raise every node before it each time
        (quadratic). Whatever follows a node was added after it, so the pass gives each new
        node its exact level; only then is what waits upstream of them lifted (:meth:`_lift`).
        """
        added = self._critical.take_added()
        slots, succs, preds = self._slots, self.graph.succs, self.graph.preds
        for pos in reversed(added):
            slot = slots[pos]
            if slot.gather >= 0 or slot.phase not in _UNSTARTED or not isinstance(slot, _Slot):
                continue  # a map's item stands for its map; a node that started is placed
            if succs[pos]:  # each successor has its level already: it came later
                level = self._critical.estimate(slot.node.tool) - min(
                    slots[s].priority for s in succs[pos])
                if level > -slot.priority:
                    slot.priority = -level
                    if slot.phase is Phase.READY:  # the stale heap entry is skipped later
                        heapq.heappush(self._heap, (slot.priority, pos))
                    if slot.rare.items:  # a map: its items rise with it
                        self._lift_items(slot, LIFT_BUDGET)
            if preds[pos] and min(preds[pos]) < added.start:  # it waits for an older node
                self._lift(slot, added.start)

    def _lift(self, slot: _Slot, floor: int) -> None:
        """Raise the priority of what waits upstream of a node, before position ``floor``.

        Only nodes that have not started matter, and the walk is bounded: a graph fed faster
        than it runs keeps O(1) work per node; the periodic re-ranking catches the rest.
        """
        budget = LIFT_BUDGET
        stack: list[_Slot] = [slot]
        preds, slots, estimate = self.graph.preds, self._slots, self._critical.estimate
        tool: Tool[..., Any] | None = None
        cost = 0.0
        while stack and budget > 0:
            below = stack.pop()
            for p in preds[below.pos]:
                if p >= floor:
                    continue  # added since the last pass: lifted by it
                before = slots[p]
                if before.phase not in _UNSTARTED or not isinstance(before, _Slot):
                    continue
                budget -= 1
                if before.node.tool is not tool:  # a chain's nodes share theirs: asked once
                    tool = before.node.tool
                    cost = estimate(tool)
                level = cost - below.priority
                if level > -before.priority:
                    before.priority = -level
                    if before.phase is Phase.READY:  # the stale heap entry is skipped later
                        heapq.heappush(self._heap, (before.priority, before.pos))
                    stack.append(before)
                    if before.rare.items:  # a map: its items rise with it
                        budget = self._lift_items(before, budget)

    def _lift_items(self, mapped: _Slot, budget: int) -> int:
        """A map was lifted: its items waiting to start rise with it; return the budget left.

        They stand for the map, and the graph has no edge from them to what follows it.
        """
        for pos in mapped.items or ():
            if budget <= 0:
                break
            item = self._slots[pos]
            if (isinstance(item, _Slot) and item.phase in _UNSTARTED
                    and item.priority > mapped.priority):
                budget -= 1
                item.priority = mapped.priority
                if item.phase is Phase.READY:
                    heapq.heappush(self._heap, (item.priority, item.pos))
        return budget

    def _settle(self, slot: _Slot, fate: Fate, now: float, d: Decisions) -> None:
        """Resume: a node added under an id the journal knows gets what the journal says."""
        kind, what = fate
        if kind == "doubt":
            if self._ask_doubt:
                self._doubt[slot.pos] = str(what)
                if slot.waiting == 0 and self._begun:
                    self._make_ready(slot, now, d)
            else:
                self._record(slot, "in_doubt", now, d, reason=str(what))
            return
        outcome: Outcome = what
        slot.attempts, slot.queued_at = outcome.attempts, outcome.queued_at
        slot.started_at = outcome.started_at
        self._record(slot, outcome.status, now, d, value=outcome.value, error=outcome.error,
                     reason=outcome.reason, abandoned=outcome.abandoned,
                     interrupted=outcome.interrupted)
        self._ended[slot.pos] = outcome  # what the driver reports for it (see Decisions.done)
        if kind == "replay":  # in the journal already: not written again
            at = len(d.done) - 1 - d.done[::-1].index(slot.pos)
            del d.done[at]

    def _expand(self, slot: _Slot, now: float, d: Decisions) -> None:
        """A map's list is known: add one node per item, each with the item in its place."""
        node = slot.node
        assert node.map is not None
        try:
            args = resolve_arguments(node.args, self._lookup, node.tool.name)
            items = args.pop(node.map.item_arg)
            if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (list, tuple)):
                kind = "None" if items is None else f"a {type(items).__name__}"
                raise TypeError(f"map {node.id!r} needs a list to map over; "
                                f"{node.args[node.map.item_arg]!r} is {kind}")
            if type(items) is not list and type(items) is not tuple:
                # a subclass: its own __iter__ and __len__ run here, once, or never (read
                # again below, an error there would leave the map half expanded, for good)
                items = list(items)
            if len(items) > MAX_MAP_ITEMS:
                raise ValueError(f"map {node.id!r}: {len(items)} items is more than "
                                 f"{MAX_MAP_ITEMS}; split the list")
        except BaseException as exc:  # SystemExit too: the list's own code fails the map,
            # as a tool's exit fails its call, not the run
            error = self._own_error(exc, "the list a map maps over")  # Ctrl-C: raised
            self._record(slot, "failed", now, d, error=ErrorInfo.from_exception(error))
            return
        if len(items) >= EARLY_JOURNAL_ITEMS and d.done and self.before_expand is not None:
            self.before_expand(d)
        slot.items = []
        # an item may end as it is added (replayed, in doubt, cancelled): one count more
        # until every item is in the list, or the map would gather without the last ones
        slot.waiting = len(items) + 1
        slot.queued_at = now
        for i, item in enumerate(items):
            child = Node(f"{node.id}[{i}]", node.tool, {**args, node.map.item_arg: item})
            slot.items.append(self._add_node(child, now, d, gather=slot.pos,
                                             priority=slot.priority).pos)
        slot.waiting -= 1
        if slot.waiting == 0 and slot.phase is Phase.WAITING:
            self._gather(slot, now, d)

    def _gather(self, slot: _Slot, now: float, d: Decisions) -> None:
        """Every item of a map has ended: the map's value is theirs, in item order."""
        assert slot.items is not None and slot.node.map is not None
        values: list[Any] = []
        failed: list[str] = []
        for pos in slot.items:
            outcome = self._ended[pos]
            assert outcome is not None
            if outcome.status == "ok":
                values.append(outcome.value)
            else:
                failed.append(f"{outcome.node_id} {outcome.status}{_detail(outcome)}")
        if not failed:
            self._record(slot, "ok", now, d, value=values)
            return
        summary = (f"{len(failed)} of {len(slot.items)} items did not succeed: "
                   + "; ".join(failed[:5]) + ("; ..." if len(failed) > 5 else ""))
        if slot.cancel_reason:
            self._record(slot, slot.cancel_status, now, d, reason=slot.cancel_reason)
        elif slot.node.map.partial:
            self._record(slot, "ok", now, d, value=values, reason=summary)
        else:
            self._record(slot, "failed", now, d, error=ErrorInfo("MapItemsFailed", summary))

    def _dispatch(self, now: float, d: Decisions) -> None:
        """Start ready nodes, best first, while the run-wide limit has room."""
        if self._asking:
            self._ask(now, d)
        if not self._heap and not self._sorted:
            return  # nothing ready (each end of a wide run's last calls, say)
        limit, slots = self._global, self._slots
        # order only matters when one of several ready nodes is about to start (ranking costs
        # O(nodes)); until then, the priorities of nodes added meanwhile can wait
        ready = len(self._heap) + len(self._sorted)
        if ready > 1 and (limit.capacity is None or limit.in_use < limit.capacity):
            if (limit.capacity is not None and ready > limit.capacity - limit.in_use
                    and self._critical.stale(self.done_count)):
                self._rank()
            self._lift_added()
        heap, ordered = self._heap, self._sorted  # bound after _rank, which replaces the list
        gates_for, capacity = self._gates.for_call, limit.capacity
        by_arguments, gated = self._gates.by_arguments, self._gates.gated_backends
        in_flight, run_id, events = self.in_flight, self.run_id, self.record_events
        immutable = IMMUTABLE
        while (heap or ordered) and (capacity is None or limit.in_use < capacity):
            if self.stopping:
                return
            # the best of both queues: the end of the sorted one is its smallest entry
            if ordered and (not heap or ordered[-1] < heap[0]):
                slot = slots[ordered.pop()[1]]
            else:
                slot = slots[heapq.heappop(heap)[1]]
            if slot.phase is not Phase.READY or not isinstance(slot, _Slot):
                continue  # cancelled or skipped while queued: its heap entry is stale
            node = slot.node
            if slot.args is None:
                checked = node.checked
                if checked is None or node.refs or slot.rare is not _COMMON:
                    if not self._prepare(slot, now, d):
                        continue
                else:  # most nodes: arguments checked with the plan, only copied (see _prepare)
                    for value in checked.values():  # isolate_all's look, without its call
                        if type(value) not in immutable:
                            break
                    else:  # every value immutable (most calls' numbers and strings): a copy
                        slot.args = dict(checked)
                    if slot.args is None:
                        try:
                            slot.args = isolate_all(checked)
                        except BaseException as exc:  # a failing __deepcopy__ (sys.exit()
                            # in it too): _prepare fails the node, not the run
                            self._own_error(exc, "")  # a Ctrl-C stops the run
                            if not self._prepare(slot, now, d):
                                continue
            if slot.gates is None:  # for_call's answer for most calls, without its call
                slot.gates = (gates_for(node.tool, slot.executor, slot.args or {})
                              if by_arguments or slot.executor in gated
                              or node.tool.policy.max_concurrency is not None else ())
            # the approval first: past _admit, the node holds its limits
            if (slot.rare is not _COMMON and slot.rare.approval is not None
                    and not self._still_approved(slot, now, d)):
                continue
            if (slot.gates or node.tool.policy.rate is not None) and not self._admit(
                    slot, now, d):
                continue
            # started (every call passes here: _start's work, without its call)
            slot.phase = Phase.RUNNING
            limit.in_use += 1  # (its gates were taken by _admit)
            slot.attempts = attempts = slot.attempts + 1
            if slot.started_at is None:
                slot.started_at = now
            # a retry resolves afresh, so it never sees what this attempt mutated
            args, slot.args, tool = slot.args, None, node.tool
            assert args is not None  # prepared above
            held = slot.held or (
                (self._global_held or self._held_by_global())
                if self._global_blocks > slot.ready_mark else "")
            starts = d.starts  # (its own list from the first start on: see Decisions)
            if starts is _NOTHING:
                starts = d.starts = []
            starts.append(new_call(slot.pos, node.id, tool, args, attempts, slot.executor,
                                   tool.policy.timeout, run_id, held))
            in_flight[slot.pos] = now
            if events:
                d.event(NodeStarted(run_id=run_id, time=now, node_id=node.id,
                                    tool=tool.name, attempt=attempts, executor=slot.executor))
        if (heap or ordered) and limit.capacity is not None and limit.in_use >= limit.capacity:
            self._global_blocks += 1  # the nodes left ready were held by the run-wide limit

    def _held_by_global(self) -> str:
        """What the journal says held a node back when the run-wide limit did (made once)."""
        self._global_held = f"the run's max_concurrency={self._global.capacity}"
        return self._global_held

    def _ask(self, now: float, d: Decisions) -> None:
        """Resolve the arguments of gated nodes and ask about those that need approval."""
        asking, self._asking = self._asking or [], None
        for slot in asking:
            if slot.phase is not Phase.APPROVAL or not self._prepare(slot, now, d):
                continue  # cancelled meanwhile, or its inputs do not fit (failed)
            assert slot.args is not None
            tool = slot.node.tool
            doubt = self._doubt.get(slot.pos) if self._doubt else None
            why = (f"in doubt after the run stopped ({doubt}); approve to run it again" if doubt
                   else approval_reason(tool, slot.args))
            if not why:  # the tool's predicate says these arguments need no approval
                self._set_phase(slot, Phase.READY)
                heapq.heappush(self._heap, (slot.priority, slot.pos))
                continue
            args_hash, exact = hash_and_kind(tool.name, slot.args)
            slot.approval = _Approval(args_hash, slot.args if exact else None)
            d.ask(Ask(slot.pos, slot.node.id, tool.name, jsonable(slot.args), args_hash, why,
                      "in_doubt" if doubt else "approval",
                      "" if exact else hash_before_keys(tool.name, slot.args)))
            if self.record_events:
                d.event(ApprovalRequested(
                    run_id=self.run_id, time=now, node_id=slot.node.id, tool=tool.name,
                    request_id=request_id(self.run_id, slot.node.id, args_hash), reason=why))

    def _still_approved(self, slot: _Slot, now: float, d: Decisions) -> bool:
        """Whether the arguments about to run are exactly the approved ones (else: denied)."""
        approval = slot.approval
        assert approval is not None and slot.args is not None
        if slot.args is approval.hashed:  # hashed when asked about (a 2 MB list: 0.5 s)
            approval.hashed = None  # what runs may change it: a retry's copy is hashed
            return True
        if approval_hash(slot.node.tool.name, slot.args) == approval.args_hash:
            return True
        self._record(slot, "denied", now, d,
                     reason="its arguments are not the ones that were approved")
        return False

    def _decided(self, slot: _Slot, verdict: str, reason: str, by: str, now: float,
                 d: Decisions, edited: dict[str, Any] | None = None) -> None:
        if self.record_events:  # an edit says what will run (only an edit pays for the JSON)
            d.event(ApprovalDecided(
                run_id=self.run_id, time=now, node_id=slot.node.id, tool=slot.node.tool.name,
                verdict=verdict, reason=reason, by=by,
                edited_args="" if edited is None else edited_args_text(edited)))

    def _prepare(self, slot: _Slot, now: float, d: Decisions) -> bool:
        """Resolve and validate the node's arguments; a node whose inputs do not fit fails here."""
        node = slot.node
        approval = slot.rare.approval
        try:
            if approval is not None and approval.args is not None:
                slot.args = isolate_all(approval.args)  # a retry runs what was approved
            elif node.refs:
                resolved = resolve_arguments(node.args, self._lookup, node.tool.name)
                tool = node.tool  # values validation keeps as they are need no new dict
                slot.args = resolved if tool.keeps(resolved) else tool.validate(resolved)
            elif node.checked is not None:  # validated with the plan: only copy
                slot.args = isolate_all(node.checked)
            else:
                slot.args = node.tool.validate(isolate_all(node.args))
        except BaseException as exc:  # refs that do not fit, invalid args, a failing
            # __deepcopy__; SystemExit too: a value's own code (an output's __getitem__ or
            # __repr__ calling sys.exit()) fails the node, as a tool's exit fails its call,
            # not the run (escaping, it ended the run and every other outcome was lost)
            error = self._own_error(exc, "an argument's own code (its __deepcopy__, say)")
            self._record(slot, "failed", now, d, error=ErrorInfo.from_exception(error))
            return False
        return True

    def _own_error(self, exc: BaseException, what: str) -> BaseException:
        """What a value's own code raised, as its node's error; a Ctrl-C is raised again.

        A ``KeyboardInterrupt`` is a Ctrl-C only on the main thread: off it (see
        ``Driver._start``) it is ``what``'s own raise, and fails the node as any error does.
        """
        if isinstance(exc, KeyboardInterrupt):
            if self.ctrl_c_here:
                raise exc
            return value_interrupt_error(what, exc)
        return exc

    def _lookup(self, ref: Ref) -> Any:
        outcome = self._ended[self.graph.position[ref.node]]
        assert outcome is not None and outcome.status == "ok"
        return ref.pick(outcome.value) if ref.path else outcome.value

    def _admit(self, slot: _Slot, now: float, d: Decisions) -> bool:
        """Take every limit on the node if all have room now; if not, park it where it waits.

        Check and take are one step under the lock of the runtime's gates: runs on other
        threads' loops check and take them too, and a room seen must still be there when taken.
        A gate seen full needs no lock to wait on: whoever frees it wakes this node.
        """
        gates = slot.gates or ()
        for gate in gates:
            if not gate.available():
                return self._wait_for(gate, slot, d)
        limiter = (self._gates.rate_for(slot.node.tool)
                   if slot.node.tool.policy.rate is not None else None)
        lock = self._gates.lock
        lock.acquire()  # not ``with``: half the cost, paid by every call with a limit
        try:
            found = self._take(gates, limiter, now)
        finally:
            lock.release()
        if isinstance(found, ConcurrencyLimit):  # taken meanwhile by a run on another thread
            return self._wait_for(found, slot, d)
        if found <= 0:
            return True
        assert limiter is not None
        slot.held = f"{limiter.name} rate={limiter.rate}"
        self._park(limiter, slot)
        if self._gates.rate_wait(limiter):  # one timer per limiter
            d.timer(now + found, "rate", slot.pos)
        return False

    def _wait_for(self, gate: ConcurrencyLimit, slot: _Slot, d: Decisions) -> bool:
        """Park ``slot`` on ``gate``, which is full (always False: it does not start now)."""
        slot.held = f"{gate.name} max_concurrency={gate.capacity}"
        self._park(gate, slot)
        d.park(gate)
        return False

    def _take(self, gates: tuple[ConcurrencyLimit, ...], limiter: RateLimiter | None,
              now: float) -> ConcurrencyLimit | float:
        """Take ``gates`` and a token of ``limiter`` if all have room now (call under their lock).

        Returns 0.0 when taken; else the first gate with no room, or how long until the
        limiter has a token (and takes nothing).
        """
        for gate in gates:
            if not gate.available():
                return gate
        if limiter is not None:
            shared_now = now + self.clock_origin  # the time line of every run's limiters
            wait = limiter.wait_time(shared_now)
            if wait > 0:
                return wait
            limiter.take(shared_now)
        for gate in gates:
            gate.acquire()
        return 0.0

    def _park(self, gate: object, slot: _Slot) -> None:
        self._gates.park(gate, (slot.priority, slot.pos))
        # This node may have been woken by another of its gates, which now has a free slot
        # nobody uses: pass that wake-up on, or the slot idles while this node waits here.
        for other in slot.gates or ():
            if other is not gate and other.available():
                self._wake_one(other)

    def _wake_one(self, gate: object) -> None:
        """Return the best node parked on ``gate`` that still waits to the ready heap."""
        item = self._gates.pop_live(gate, self._is_ready)
        if item is not None:
            heapq.heappush(self._heap, item)

    def _is_ready(self, pos: int) -> bool:
        return self._slots[pos].phase is Phase.READY  # not cancelled while it was parked

    def _release(self, slot: _Slot, d: Decisions) -> None:
        """Give back the slot's gates and return one parked node per freed gate to the heap.

        (The run-wide limit and ``in_flight`` are given back by :meth:`finish` itself.)
        """
        self._release_gates(slot.gates or (), d)

    def _release_gates(self, gates: tuple[ConcurrencyLimit, ...], d: Decisions) -> None:
        """:meth:`_release` for these gates."""
        lock = self._gates.lock  # runs on other threads' loops take and give back these too
        lock.acquire()  # not ``with``: half the cost, paid by every call with a limit
        try:
            for gate in gates:
                gate.release()
        finally:
            lock.release()
        self._hand_on(gates, d)

    def _hand_on(self, gates: Iterable[ConcurrencyLimit], d: Decisions) -> None:
        """Give each of ``gates``, which has room, to a node parked here, or to another run.

        Another run's, when one waits in line for it: that run has waited longer than any node
        of this one (nodes of a busy run took every slot it freed, and a run waiting on it
        waited until the busy run had no node left to start).
        """
        shared = self._gates.shared
        for gate in gates:
            if not shared.others_in_line(gate, self):
                self._wake_one(gate)
            d.free(gate)  # other runs of the runtime may wait on it too

    def _error(self, slot: _Slot, result: AttemptResult) -> ErrorInfo | None:
        if result.error is not None:
            return ErrorInfo.from_exception(result.error)
        if result.status == "cancelled" and (slot.cancel_reason or result.reason):
            return ErrorInfo("CallCancelledError", slot.cancel_reason or result.reason)
        return None

    def _cancel_slot(self, slot: Kept, reason: str, status: Status, now: float,
                     d: Decisions) -> None:
        if slot.phase is Phase.DONE or not isinstance(slot, _Slot):
            return
        if slot.items is not None and not slot.cancel_reason:
            slot.cancel_reason, slot.cancel_status = reason, status
        for item in slot.items or ():  # a map: its items end first, then it gathers them
            self._cancel_slot(self._slots[item], reason, status, now, d)
        if slot.phase is Phase.DONE:
            return
        if slot.phase is Phase.RUNNING:
            if not slot.cancel_reason:  # the first reason is the one that stopped it
                slot.cancel_reason, slot.cancel_status = reason, status
            d.cancel(slot.pos)
        else:
            if slot.phase is Phase.APPROVAL and slot.approval is not None:
                d.ask(Withdraw(slot.pos, slot.node.id, slot.approval.args_hash))
            if slot.phase is Phase.READY and slot.gates:
                self._pass_wakeups_on(slot, d)
            # a node between attempts (in its backoff, or its retry due and queued for a
            # limit or an approval), or a map with items, was under way: a deadline times it
            # out; one that never started is only cancelled
            under_way = slot.phase is Phase.BACKOFF or slot.items or slot.rare.failed_before
            final: Status = status if under_way else "cancelled"
            if slot.rare.failed_before:  # its outcome says why it was to run again
                reason = f"{reason} (before its retry; {slot.rare.failed_before})"
            if slot.phase is Phase.WAITING and slot.waiting > 0:
                self._ended_early(slot)
            self._record(slot, final, now, d, reason=reason)

    def _ended_early(self, slot: _Slot) -> None:
        """``slot`` ends while it still waits for ``slot.waiting`` of its predecessors."""
        early = self._early
        if early is None:
            early = self._early = {}
        early[slot.pos] = slot

    def _pass_wakeups_on(self, slot: _Slot, d: Decisions) -> None:
        """Hand on the wake-ups a queued node that will never start may hold.

        It may have been woken by one of its gates, then waited for the run's own limit: give
        each of its gates with room to the next node waiting on it, here or in another run,
        or that room idles and they wait forever.
        """
        self._hand_on([gate for gate in slot.gates or () if gate.available()], d)

    def _record(self, slot: _Slot, status: Status, now: float, d: Decisions, *, value: Any = None,
                error: ErrorInfo | None = None, reason: str = "", abandoned: bool = False,
                interrupted: bool = False, holds: bool = False) -> None:
        """Give ``slot`` its outcome, then release or skip everything that waits for it.

        ``holds``: its abandoned work still runs; what only waits for it to be over waits on.
        """
        # a call that succeeded as it was being cancelled (fail_fast, a deadline) keeps its
        # value, and says nothing of a cancellation that did not happen to it
        said = reason or (slot.cancel_reason if status != "ok" else "")
        self._store(slot, status, now, d, value, error, said, abandoned, interrupted)
        if slot.gather >= 0 or self.graph.succs[slot.pos]:  # else nothing waits for it
            self._pass_on(slot, now, d, holds)
        if self.fail_fast and status in ("failed", "timed_out") and not self.stopping:
            reason = f"fail_fast: {slot.node.id!r} {status}"
            self.stopping = reason
            for other in reversed(self._slots):
                self._cancel_slot(other, reason, "cancelled", now, d)

    def _record_ok(self, slot: _Slot, now: float, d: Decisions, value: Any) -> None:
        """:meth:`_record` of a value: the outcome, then release what waits for it.

        The edge from an end to the start of what waits for it: nothing to skip, so, unless
        it is a map's item or a node ended early is about, each dependent only counts down.
        """
        self._store(slot, "ok", now, d, value, None, "", False)
        succs = self.graph.succs[slot.pos]
        if slot.gather >= 0 or self._early:  # (_pass_on_from's general walk)
            self._pass_on_from([(slot, False)], slot, now, d, False)
            return
        slots = self._slots
        for succ in succs:
            after = slots[succ]
            if after.phase is Phase.DONE or not isinstance(after, _Slot):
                continue
            after.waiting -= 1
            if after.waiting == 0 and after.phase is Phase.WAITING:
                self._make_ready(after, now, d)

    def _pass_on(self, slot: _Slot, now: float, d: Decisions, holds: bool = False) -> None:
        """``slot`` has its outcome: release what waits for it, or skip it (and so on).

        ``holds``: ``slot``'s abandoned work still runs, so what it orders (a shared resource
        key, an exclusive tool) is held until :meth:`released`, not released now.
        """
        if slot.gather < 0 and not self.graph.succs[slot.pos]:
            return  # nothing waits for it (most nodes of a wide plan)
        self._pass_on_from([(slot, False)], slot, now, d, holds)

    def _pass_on_from(self, stack: list[tuple[_Slot, bool]], slot: _Slot, now: float,
                      d: Decisions, holds: bool) -> None:
        """:meth:`_pass_on` of each ``(node, again)`` on ``stack``, and of what they skip.

        A node that ended before what it waits for (skipped at once, or cancelled while it
        waited) skips what needs its result at once, but what it only orders (a resource
        or exclusive edge) waits on until the rest of what it waited for has ended, as it
        would have: a write between a long write and a read, skipped, let the read overlap
        the first write. It comes back (``again``) to release those once that is so.
        """
        early = self._early
        while stack:
            done, again = stack.pop()
            assert done.outcome is not None
            if done.gather >= 0 and not again:  # a map item: its map gathers once all have
                gatherer = self._slots[done.gather]  # ended
                if isinstance(gatherer, _Slot):  # else the map ended first (cancelled)
                    gatherer.waiting -= 1
                    if gatherer.waiting == 0 and gatherer.phase is Phase.WAITING:
                        self._make_ready(gatherer, now, d)
            failed = done.outcome.status != "ok"
            # whether what ``done`` waited for has all ended (else it comes back once it has)
            over = again or early is None or done.pos not in early
            for succ in self.graph.succs[done.pos]:
                after = self._slots[succ]
                if after.phase is Phase.DONE or not isinstance(after, _Slot):
                    held_back = early.get(succ) if early is not None else None
                    if held_back is not None and over:  # ended early, and waits for ``done``
                        if holds:
                            self._hold(slot, done, held_back, now, d)
                        else:
                            self._count_down_early(held_back, stack)
                    continue
                if failed and self._must_succeed(done.pos, succ):
                    after.root = done.root or _root_cause(done.node.id, done.outcome)
                    why = f"needs {done.node.id!r}, which " + (
                        f"was skipped; root cause: {after.root}" if done.root else
                        f"ended {done.outcome.status}{_detail(done.outcome)}")
                    if over:
                        after.waiting -= 1
                    if after.waiting > 0 and not holds:  # it waits for others still
                        self._ended_early(after)
                        early = self._early
                    self._store(after, "skipped", now, d, None, None, why, False)
                    stack.append((after, False))
                    continue
                if not over:  # released when the rest of what ``done`` waits for has ended
                    continue
                if holds:  # (through the nodes it skipped too: they order as it would)
                    self._hold(slot, done, after, now, d)
                    continue
                after.waiting -= 1
                if after.waiting == 0 and after.phase is Phase.WAITING:
                    self._make_ready(after, now, d)

    def _count_down_early(self, held_back: _Slot, stack: list[tuple[_Slot, bool]]) -> None:
        """One more of what ``held_back`` (ended early) waited for has ended."""
        held_back.waiting -= 1
        if held_back.waiting <= 0:
            assert self._early is not None
            del self._early[held_back.pos]
            stack.append((held_back, True))

    def _hold(self, slot: _Slot, done: _Slot, after: _Slot, now: float, d: Decisions) -> None:
        """``after`` waits for ``slot``'s abandoned work to end: say so (an event, ``held()``).

        ``done`` is what ``after`` waits for: ``slot``, or a node skipped since it needed it.
        """
        assert slot.outcome is not None
        held = self._held
        if held is None:
            held = self._held = {}
        why = _held_why(slot.node.id, slot.outcome, self.graph.reasons(done.node.id,
                                                                        after.node.id))
        held.setdefault(slot.pos, {})[after.pos] = why
        if self.record_events:
            d.event(NodeHeld(run_id=self.run_id, time=now, node_id=after.node.id,
                             tool=after.node.tool.name, reason=why, by=slot.node.id))

    def _store(self, slot: _Slot, status: Status, now: float, d: Decisions, value: Any,
               error: ErrorInfo | None, reason: str, abandoned: bool,
               interrupted: bool = False) -> None:
        if slot.phase is Phase.RUNNING:  # (most: RUNNING -> DONE, without _set_phase's call)
            slot.phase = Phase.DONE
        else:
            self._set_phase(slot, Phase.DONE)
        self.done_count += 1
        self.status_counts[status] += 1
        slot.args = None
        tool = slot.node.tool.name
        slot.outcome = outcome = Outcome(
            slot.node.id, tool, status, value if status == "ok" else None, error, reason,
            slot.attempts, slot.queued_at, slot.started_at, now,
            slot.executor if slot.attempts else "", abandoned, slot.where, interrupted,
            None if slot.rare is _COMMON else _edited_args(slot.rare),
        )
        # the slot is done with: the run keeps the outcome, and the rare fields if it set any
        self._slots[slot.pos] = _GONE
        self._ended[slot.pos] = outcome
        if slot.rare is not _COMMON:
            self._kept_rare[slot.pos] = slot.rare
        d.ended(slot.pos)
        if not self.record_events:
            return
        nid = slot.node.id
        if status == "skipped":
            d.event(NodeSkipped(run_id=self.run_id, time=now, node_id=nid, tool=tool,
                                        reason=reason))
        elif slot.attempts == 0 and status in ("cancelled", "timed_out"):
            # (an ok one that never ran is a map's, or a call in doubt marked done on resume)
            d.event(NodeCancelled(run_id=self.run_id, time=now, node_id=nid, tool=tool,
                                          reason=reason))
        else:
            d.event(NodeFinished(run_id=self.run_id, time=now, node_id=nid, tool=tool,
                                         status=status, attempts=slot.attempts,
                                         duration=slot.outcome.duration,
                                         error=str(error) if error else reason))

    def _rank(self) -> None:
        """Re-rank every node by critical path and rebuild the ready heap."""
        slots = self._slots
        live: Sequence[int]
        if self.done_count:  # the nodes not ended, found at C speed: only they are ranked
            live = list(itertools.compress(range(len(slots)), map(
                operator.is_, self._ended, itertools.repeat(None))))
            ranked = self._critical.rank_live(self.done_count, live)
        else:
            live, ranked = range(len(slots)), self._critical.rank(0, self._ended)
        for pos, priority in zip(live, ranked, strict=True):
            slot = slots[pos]
            assert isinstance(slot, _Slot)  # not ended
            # a map's item stands for its map (what waits for the map waits for it), which
            # comes before it: the graph has no edge from an item to what follows the map
            slot.priority = priority if slot.gather < 0 else slots[slot.gather].priority
        self._heap = [(self._slots[p].priority, p)
                      for _, p in itertools.chain(self._heap, self._sorted)]
        self._sorted.clear()
        heapq.heapify(self._heap)


#: The sorted ready queue once empty after begin() (an open run's, one per agent of a swarm):
#: shared, so never appended to (nodes queued later go to the heap), only read or cleared.
_NONE_SORTED: list[tuple[float, int]] = []
#: up to this many nodes, a run's result dict is grown entry by entry (one pass, cheaper than
#: making it at its final size and then filling it in; what a large one's growing would hold
#: twice, its old table and its new, is small)
_GROWN_RESULT = 4096
#: every status counted 0 (a run's counts start as a copy: cheaper than making it anew)
_NO_COUNTS: dict[str, int] = dict.fromkeys(STATUSES, 0)


def _end_of(ended: float | None, started: float | None, now: float) -> float:
    """When an attempt ended: ``ended`` as its backend stamped it, kept between its start and now.

    A pool thread stamps the end where the work ran; the loop may see it much later (busy
    with a journal's commits or with thousands of other ends), which is no part of the call.
    """
    if ended is None or ended > now:
        return now
    return ended if started is None or ended >= started else started


def _orders(tool: Tool[..., Any]) -> bool:
    """Whether ``tool``'s calls are ordered against others: resource keys, or exclusive."""
    policy = tool.policy
    return bool(policy.reads or policy.writes or policy.merges or policy.exclusive)


def _held_why(node_id: str, outcome: Outcome, edges: Sequence[Any]) -> str:
    """Why a node waits for ``node_id``'s abandoned work: what that work may still touch."""
    what: list[str] = []
    for edge in edges:
        if edge.kind == "resource":
            what.append(f"release {_source_key(edge.detail)}")
        elif edge.kind == "exclusive":
            what.append(f"end ({edge.detail})")
    work = "thread" if outcome.executor in _ON_THREADS else "task"
    return (f"waiting for the {work} of {node_id!r}, which {outcome.status.replace('_', ' ')}"
            f" and still runs, to {' and '.join(what) or 'end'}")


def _source_key(detail: str) -> str:
    """The key a resource edge's source holds, from its detail ``"<mode> <key> / <mode> <key>"``.

    Found by the shape of the whole (a key may hold " / " itself); where the two keys differ
    (a wildcard met a key), the whole detail.
    """
    rest = detail.partition(" ")[2]  # (after the source's mode)
    for other in ("reads", "writes", "merges"):
        size, extra = divmod(len(rest) - len(other) - 4, 2)
        key = rest[:size]
        if size > 0 and not extra and rest == f"{key} / {other} {key}":
            return key
    return f"its key ({detail})"


def _detail(outcome: Outcome) -> str:
    text = str(outcome.error) if outcome.error else outcome.reason
    text = text.splitlines()[0] if text else ""
    return f": {text[:200]}" if text else ""


def _root_cause(node_id: str, outcome: Outcome) -> str:
    """The first node in a chain of skips that did not succeed, and how it ended."""
    return f"{node_id!r} ended {outcome.status}{_detail(outcome)}"
