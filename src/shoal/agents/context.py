"""What every agent of one run tree shares: the runtime, budgets, model gates, events, control.

One :class:`TreeContext` is made per root run (``Agent.run``) and handed down to every subagent.
It is the only shared thing in a tree, and it holds no conversation state: each agent's
messages live in its own run, so siblings can neither see nor change each other's context.

It also keeps what is *in flight* per lineage (the run handles of its model turns and tool
phases), so that a budget breach or a person can stop the whole tree, or one agent's subtree,
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from types import MethodType
from typing import TYPE_CHECKING, Any, Protocol

from shoal import instrumentation
from shoal.agents.budget import Budget, BudgetTracker
from shoal.events import Event, EventSink, TextDelta, deliver, wants_text
from shoal.exceptions import BudgetExceeded, MissingDependencyError
from shoal.models.base import Model
from shoal.models.retry import ModelGates

if TYPE_CHECKING:
    from shoal.agents._launch import AgentLauncher
    from shoal.agents.result import AgentResult
    from shoal.agents.settle import Settling
    from shoal.board import Board
    from shoal.runtime import Runtime
    from shoal.scheduler.scope import RunScope

__all__ = ["DEFAULT_MODEL", "TREE_KEY", "DefaultModel", "Stoppable", "TreeContext",
           "breach_stopper", "is_within", "tree_in"]

#: The key of a tree's own context in the ``shared`` dict of its tool phases' scopes.
TREE_KEY = "shoal.tree"

log = logging.getLogger("shoal")


class DefaultModel(str):
    """``"local"``, as the model of an agent given no ``model=``.

    Told apart from an explicit ``model="local"``, so that errors can say the default was used.
    """

    __slots__ = ()


DEFAULT_MODEL = DefaultModel("local")


class Stoppable(Protocol):
    """A step in flight that its tree can stop: a run's handle, a model turn, a tool phase."""

    def cancel(self, node: None = None, *, reason: str, timed_out: bool = False) -> None:
        """Cancel the step; every call of it still ends with an outcome saying why.

        ``timed_out``: the tree's ``wall_clock`` ran out: calls under way end ``timed_out``.
        """


def is_within(lineage: str, root: str) -> bool:
    """Whether ``lineage`` is ``root`` itself or below it (``lead/a#1`` is within ``lead``)."""
    return lineage == root or lineage.startswith(root + "/")


def tree_in(shared: dict[str, Any]) -> TreeContext | None:
    """The agent tree whose tool phases a run's ``shared`` dict belongs to, if any.

    The tree's scope holds it weakly (the tree holds its scope, so a strong reference back
    would make every tree a reference cycle, freed only by a full garbage collection).
    """
    ref = shared.get(TREE_KEY)
    tree = ref() if isinstance(ref, weakref.ref) else None
    return tree if isinstance(tree, TreeContext) else None


def breach_stopper(ctx: TreeContext) -> Callable[[BudgetExceeded], None]:
    """What the tree's budget tracker calls on a breach: stop ``ctx``'s steps.

    It holds the tree weakly: the tracker's callback holding it (as a bound method would)
    made every tree a reference cycle, kept with all its results until a full collection.
    """
    tree = weakref.ref(ctx)

    def stop(breach: BudgetExceeded) -> None:
        alive = tree()
        if alive is not None:  # else the tree ended, and nothing of it runs to stop
            alive._stop_everything(breach)

    return stop


class TreeContext:
    """The state one agent tree shares (see the module docstring)."""

    def __init__(
        self,
        *,
        run_id: str,
        runtime: Runtime,
        budget: Budget | None,
        sinks: Sequence[EventSink],
        gates: ModelGates | None = None,
        model_override: Model | None = None,
        resuming: bool = False,
        force: bool = False,
        board: Board | None = None,
        within: dict[str, Any] | None = None,
        settling: Settling | None = None,
    ) -> None:
        self.run_id = run_id
        #: calls in doubt a person settled on resume: by agent lineage, the node ids of its
        #: steps run to run again, and those marked done with their values
        self.settling = settling or {}
        self.runtime = runtime
        #: the board every tool of the tree (subagents' too) reads and writes, if any
        self.board = board
        self.tracker = BudgetTracker(budget, breach_stopper(self))
        self.gates = gates or ModelGates()
        self.model_override = model_override
        #: whether this tree continues a journaled run: steps the journal knows are resumed
        self.resuming = resuming
        #: resume even steps that another process seems to run (``Agent.resume(force=True)``)
        self.force = force
        self._sinks = list(sinks)
        self._sink_failures: dict[int, int] = {}  # by id(sink): see events.deliver
        self._text_sinks = [sink for sink in self._sinks if wants_text(sink)]
        #: whether a sink asked for model text (:class:`~shoal.events.TextDelta`): then every
        #: agent of the tree streams its model's replies (and a nested run's sinks that are
        #: this tree's ``emit`` ask for text too)
        self.wants_text = bool(self._text_sinks)
        # ``within``: the ``shared`` dict of the run the tree is part of (an agent node's), so
        # that the tree counts its events from that run's start, and is traced as it is
        # the loop time its events count from: the outermost run's start, else this tree's
        # (taken when it first tells the time)
        from shoal.scheduler.scope import ORIGIN_KEY

        self._origin: tuple[float, float] | None = (
            None if within is None else within.get(ORIGIN_KEY))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models: dict[str, Model] = {}
        # lineage -> its steps in flight (model turns and tool phases): the step itself when
        # it is the only one (an agent's case but while a streamed reply starts its calls),
        # not a set made and dropped for each step of each agent
        self._handles: dict[str, Stoppable | set[Stoppable]] = {}
        self._turns: set[Stoppable] = set()  # those of them that are model turns
        self._cancelled: dict[str, str] = {}  # lineage root -> reason
        self._resumed: set[str] = set()  # lineage roots whose journaled steps are continued
        # lineage -> how to stop the agent there that runs in a process of its own
        self._remotes: dict[str, Callable[[str, BudgetExceeded | None], None]] = {}
        self._launcher: AgentLauncher | None = None  # starts them, once one is needed
        self.results: dict[str, AgentResult[Any]] = {}  # every agent's result, by lineage
        #: the exceptions of the failed pattern nodes among its agents' tools, by lineage (the
        #: errors of the :class:`~shoal.agents.node.Composition` such a pattern joins)
        self.joined_errors: dict[str, BaseException] = {}
        self._deadline: asyncio.TimerHandle | None = None
        self._clock_origin: float | None = None  # when the wall clock was first armed
        self._scope: RunScope | None = None
        #: OpenTelemetry, if instrumented (once per tree, kept for its steps' runs)
        self.observing = observing = instrumentation.of(within)
        if observing is not None:
            self._sinks.append(observing.observe_tree(self))
        #: Whether anyone listens to events (they are only built when someone does). Set
        #: once: the sinks are fixed when the tree is made, and each agent's every turn and
        #: call asks.
        self.observed = bool(self._sinks)

    @property
    def scope(self) -> RunScope:
        """What this tree's tool phases run within.

        So a pattern among an agent's tools joins this tree (its budget, cancellation and
        resume) instead of starting a tree of its own.
        """
        if self._scope is None:
            from shoal.scheduler.scope import ORIGIN_KEY, RunScope  # (it needs no agents)

            self._scope = RunScope(self.runtime, self.run_id, resuming=self.resuming,
                                   shared={TREE_KEY: weakref.ref(self),
                                           ORIGIN_KEY: self.started,
                                           instrumentation.SHARED_KEY: self.observing})
        return self._scope

    # -- time and events ----------------------------------------------------------------

    @property
    def origin(self) -> float:
        """The loop time this tree's events count from (see :func:`events_origin`).

        The start of the outermost run it is part of, or of the tree itself; the runs of its
        steps count their events from there too, so every event of the tree is on one clock.
        """
        return self.started[0]

    def adopt_origin(self, loop_time: float, epoch: float) -> None:
        """Count this tree's events from another process's origin (an agent in a process).

        Loop clocks are ``time.monotonic``, one clock for every process of a machine, so the
        times of the child's events agree with its root's.
        """
        self._origin = (loop_time, epoch)

    @property
    def started(self) -> tuple[float, float]:
        """The loop time and the wall-clock time (epoch seconds) of :attr:`origin`."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._origin is None:  # dated on the loop's clock: a virtual loop's own epoch
            from shoal.scheduler.driver import epoch_now

            self._origin = (self._loop.time(), epoch_now(self._loop))
        return self._origin

    def now(self) -> float:
        """Seconds since the outermost start, on the event loop's clock (see :attr:`origin`)."""
        origin = self.origin
        assert self._loop is not None  # set with the origin
        return self._loop.time() - origin

    def emit(self, event: Event) -> None:
        """Send ``event`` to every sink; a sink that fails is logged, never fatal.

        A :class:`~shoal.events.TextDelta` goes only to the sinks that asked for text.
        """
        for sink in self._text_sinks if isinstance(event, TextDelta) else self._sinks:
            # an observer's bug must not break the tree it observes
            deliver(sink, event, failures=self._sink_failures)

    def emit_nested(self, event: Event) -> None:
        """Send an event of a run the tree started (a tool phase, a pattern) to its sinks.

        Not to the sinks of the runtime it runs on (``Runtime(on_event=...)``): those get
        every event of every run of that runtime from the run itself, and would see this one
        twice. (The tree's own events, :meth:`emit`, reach them only through this tree.)
        """
        own = self.runtime._sinks
        for sink in self._sinks:
            if not _among(sink, own):
                deliver(sink, event, failures=self._sink_failures)

    @property
    def observed_nested(self) -> bool:
        """Whether any sink hears the runs the tree starts through it (see emit_nested)."""
        if not self._sinks:  # (nobody listens: asked once per agent started)
            return False
        own = self.runtime._sinks
        return any(not _among(sink, own) for sink in self._sinks)

    def relay(self, lineage_of: Callable[[Event], str]) -> EventSink:
        """A sink for a tool phase's runtime events that stamps each with its lineage."""

        def forward(event: Event) -> None:
            self.emit(replace(event, lineage=lineage_of(event)))

        return forward

    # -- models -------------------------------------------------------------------------

    def model_for(self, spec: str | Model) -> Model:
        """The model an agent asked for: the run's override, or one instance per spec."""
        if self.model_override is not None:
            return self.model_override
        if isinstance(spec, Model):
            return spec
        if spec not in self._models:
            from shoal.models import resolve_model  # adapters load their SDKs on use

            try:
                self._models[spec] = resolve_model(spec)
            except MissingDependencyError as exc:
                if isinstance(spec, DefaultModel):
                    exc.msg = (f"no model= given, so the default 'local' model was used: "
                               f"{exc}, or pass a hosted model, e.g. "
                               "Agent(..., model='openai:gpt-4.1-mini')")
                    exc.args = (exc.msg,)  # ImportError shows msg, pickling uses args
                raise
        return self._models[spec]

    async def close_models(self) -> None:
        """Close the models this tree created from strings (not ones the user passed in).

        And end what the tree's tool phases hold until the tree ends (the ``at_end`` hooks of
        :attr:`scope`, such as the sessions of MCP servers): the phases are nested runs, so
        no run of theirs is the outermost one that would. And stop the template that
        forked the tree's agent processes, if one was started.
        """
        models, self._models = self._models, {}
        for model in models.values():
            await model.aclose()
        if self._scope is not None:
            await self._scope.end()
        launcher, self._launcher = self._launcher, None
        if launcher is not None:  # every agent process has ended: its template goes too
            launcher.close()

    def stop_unstarted(self) -> None:
        """End what a tree that never began holds: the template it may have started.

        Its models were made but never asked (no connection to close), its runtime ran
        nothing and no tool phase began: only a template process lives on.
        """
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            launcher.close()

    def agent_processes(self) -> AgentLauncher:
        """What starts this tree's agent processes (see :mod:`shoal.agents._launch`).

        Made on first use, and ended with :meth:`close_models` (a later node of a plan makes
        another).
        """
        if self._launcher is None:
            from shoal.agents._launch import AgentLauncher  # only process agents need it

            self._launcher = AgentLauncher()
        return self._launcher

    def resume_within(self, lineage: str) -> None:
        """Continue the journaled steps of the agent at ``lineage`` and below, too.

        For one subtree of a tree that is not resumed as a whole: an agent plan node that runs
        again (a retry, or its nested run resumed) picks up where its journal stopped.
        """
        self._resumed.add(lineage)

    def resumes(self, lineage: str) -> bool:
        """Whether the agent at ``lineage`` continues steps the journal knows."""
        return self.resuming or (bool(self._resumed) and any(
            is_within(lineage, root) for root in self._resumed))

    # -- control: what runs, and stopping it --------------------------------------------

    def start_clock(self) -> None:
        """Arm the ``wall_clock`` budget, if there is one, for what is left of it.

        The clock runs from when it was first armed: armed again after :meth:`stop_clock` (a
        plan's agent nodes, one after another), it fires when the whole allowance is used up.
        """
        limit = self.tracker.budget.wall_clock
        if limit is not None:
            loop = asyncio.get_running_loop()
            if self._clock_origin is None:  # on the loop's clock, as the timer
                self._clock_origin = loop.time()
            left = limit - (loop.time() - self._clock_origin)
            self._deadline = loop.call_later(max(0.0, left), self._wall_clock_over, limit)

    def _wall_clock_over(self, limit: float) -> None:
        # the time used since the clock was armed (the tree's events count from the start of
        # the run it is part of, which may have begun long before)
        assert self._clock_origin is not None  # armed before the timer that calls this
        used = asyncio.get_running_loop().time() - self._clock_origin
        over = BudgetExceeded("wall_clock", used, limit, "the whole tree",
                              advice=_leapt_past_threads())
        # stop() records and broadcasts the breach, then raises it; the agents raise it
        # again where they stand, so here it is only swallowed
        spared = self.tracker.breach is not None  # the model turns the requests limit spared
        with contextlib.suppress(BudgetExceeded):
            self.tracker.stop(over)
        if spared:  # the first breach wins the record, but the clock still stops them
            self._cancel_within("", str(over), timed_out=True)

    def stop_clock(self) -> None:
        """Disarm the ``wall_clock`` timer (the root ended)."""
        if self._deadline is not None:
            self._deadline.cancel()

    def check(self, lineage: str, *, answered: bool = False) -> None:
        """Raise if the tree's budget broke or this agent (or an ancestor) was cancelled.

        ``answered``: the agent holds a final answer from a request made within the budget;
        reaching the ``requests`` limit since then (another agent was refused a request) does
        not take it away.
        """
        breach = self.tracker.breach
        if breach is not None and not (answered and breach.limit == "requests"):
            raise breach
        for root, reason in self._cancelled.items():
            if is_within(lineage, root):
                raise asyncio.CancelledError(reason)

    def stop_reason(self, lineage: str) -> str | None:
        """Why ``lineage`` must stop (a budget breach, or a cancellation), or ``None``."""
        if self.tracker.breach is not None:
            return str(self.tracker.breach)
        if not self._cancelled:  # asked as each tool call starts: mostly nothing was
            return None
        return self.cancelled_reason(lineage)

    def cancelled_reason(self, lineage: str) -> str | None:
        """Why ``lineage`` was cancelled, or ``None`` if it was not."""
        for root, reason in self._cancelled.items():
            if is_within(lineage, root):
                return reason
        return None

    def track_handle(self, lineage: str, handle: Stoppable, *, turn: bool = False) -> None:
        """Remember a step in flight (``turn``: a model turn), so it can be cancelled."""
        handles = self._handles
        held = handles.get(lineage)
        if held is None:
            handles[lineage] = handle
        elif isinstance(held, set):
            held.add(handle)
        elif held is not handle:
            handles[lineage] = {held, handle}
        if turn:
            self._turns.add(handle)

    def untrack_handle(self, lineage: str, handle: Stoppable) -> None:
        """Forget a finished step (and its agent, once it has none in flight)."""
        handles = self._handles
        held = handles.get(lineage)
        if held is handle:
            del handles[lineage]
        elif isinstance(held, set):
            held.discard(handle)
            if not held:
                del handles[lineage]
        self._turns.discard(handle)

    def in_flight(self, lineage: str) -> list[Stoppable]:
        """The steps of the agent at ``lineage`` in flight (model turns and tool phases)."""
        held = self._handles.get(lineage)
        if held is None:
            return []
        return list(held) if isinstance(held, set) else [held]

    def track_remote(self, lineage: str,
                     stop: Callable[[str, BudgetExceeded | None], None]) -> None:
        """Remember an agent running elsewhere (its own process): ``stop`` tells it to stop.

        ``stop`` gets the reason and, when the tree broke its budget, the breach.
        """
        self._remotes[lineage] = stop

    def untrack_remote(self, lineage: str) -> None:
        """Forget an agent running elsewhere (it ended)."""
        self._remotes.pop(lineage, None)

    def cancel(self, lineage: str, reason: str) -> None:
        """Cancel the agent at ``lineage`` and everything below it: model turns and calls."""
        self._cancelled.setdefault(lineage, reason)
        self._cancel_within(lineage, reason)

    def _stop_everything(self, breach: BudgetExceeded) -> None:
        # Reaching the requests limit refuses the request over it; the model turns in flight
        # were admitted within the limit (and may be paid for already), so they finish, and
        # an agent whose turn brings its final answer keeps it. Every other breach is an
        # overspend, and stops the turns in flight too.
        spared = self._turns if breach.limit == "requests" else set()
        # The wall_clock is the tree's deadline: what was under way ran out of time, and ends
        # timed_out as at a run's deadline; every other breach is an overspend: cancelled
        self._cancel_within("", str(breach), spared, timed_out=breach.limit == "wall_clock")

    def _cancel_within(self, root: str, reason: str, spared: set[Stoppable] | None = None, *,
                       timed_out: bool = False) -> None:
        # Deepest agents first, so each call's outcome gets this reason rather than the
        # "parent was cancelled" that a parent's cancellation would give it a moment later.
        for where in sorted(self._handles, key=lambda w: -w.count("/")):
            if not root or is_within(where, root):
                for handle in self.in_flight(where):
                    if spared is None or handle not in spared:
                        handle.cancel(reason=reason, timed_out=timed_out)
        for where, stop in list(self._remotes.items()):  # they spare their own turns
            if not root or is_within(where, root):
                stop(reason, self.tracker.breach)


def _among(sink: EventSink, sinks: Iterable[EventSink]) -> bool:
    """Whether ``sink`` is one of ``sinks``: the same object, or the same bound method.

    Never by a sink's own ``__eq__`` (``sink in sinks`` asks it): one that raises, or says
    anything but a bool, failed the agent whose events it was given.
    """
    for other in sinks:
        if other is sink:
            return True
        if isinstance(sink, MethodType) and isinstance(other, MethodType) and (
                sink.__self__ is other.__self__ and sink.__func__ is other.__func__):
            return True
    return False


def _leapt_past_threads() -> str:
    """What to do, if not to raise ``wall_clock``: the virtual clock leapt past a thread's work.

    On :class:`shoal.testing.VirtualClockLoop` a sync tool's thread takes no virtual time:
    the clock leaps to the limit while it runs, whatever the limit, so a larger one cannot help.
    """
    from shoal.clock import clock_of
    from shoal.executors.thread import threads_at_work

    if clock_of().from_monotonic(0.0) is not None or not threads_at_work():
        return ""
    return ("the virtual clock of shoal.testing leapt to it while a tool ran on a thread "
            "(work there takes no virtual time), so no larger limit can help: make the tool "
            "async, or test it on a real event loop")
