"""What a run shares with the calls that run inside it: the runtime, the run, and its channels.

A plan node may be more than a tool call: an agent, a pattern (a pipeline, a fan-out, a
reflect loop) or a tool that writes to a shared board. Those need to know where they run: the
runtime to start nested runs on, the run's id and lineage (so a nested run is named and
journaled under its parent, and resumed with it), the tree budget they share, and the board.
A :class:`RunScope` carries that; the driver builds one per run and hands it to the
*injectors*: the functions that fill in a tool's injected parameters (see
:class:`shoal.schema.Injected`) for one call. Injectors register by kind, so that the board and
the agent layer plug in here without the driver knowing about either.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from shoal.exceptions import ConfigError
from shoal.store.base import EffectRecord, idempotency_key

if TYPE_CHECKING:
    from shoal.agents.budget import Budget
    from shoal.board import Board
    from shoal.events import EventSink
    from shoal.executors.base import Call
    from shoal.runtime import Runtime

__all__ = [
    "INJECTORS", "ORIGIN_KEY", "REPLAYERS", "RunScope", "Settles", "check_budget",
    "events_origin", "inject", "register_injector", "register_replayer",
]

#: The key, in :attr:`RunScope.shared`, of the start (loop time, epoch seconds) that every
#: event of a composition (an outermost run or agent tree, with the runs and agents nested
#: in it) counts from (see :func:`events_origin`).
ORIGIN_KEY = "shoal.origin"


def events_origin(shared: dict[str, Any], now: float, epoch: float) -> tuple[float, float]:
    """Where the events of the composition that ``shared`` belongs to count from.

    The loop time and the wall-clock time (epoch seconds) of its start: the first one to ask
    (the outermost run, or an agent tree run alone) sets them to ``now`` and ``epoch`` (its
    start); runs nested in it count their events from there, so a reader's events come after
    the plan node that started it, on the event loop's clock (the virtual clock of
    :mod:`shoal.testing` too).
    """
    loop_time, wall = shared.setdefault(ORIGIN_KEY, (now, epoch))
    return float(loop_time), float(wall)


def check_budget(budget: object) -> None:
    """Refuse a ``budget=`` that is neither ``None`` nor a :class:`~shoal.Budget`."""
    if budget is None:
        return
    from shoal.agents.budget import Budget
    from shoal.merge import shown

    if not isinstance(budget, Budget):
        raise ConfigError(f"budget= takes a shoal.Budget(tokens=..., cost=..., ...), "
                          f"got {type(budget).__name__} {shown(budget)}")


@dataclass(slots=True, eq=False)
class RunScope:
    """One run's place in the world, for the calls that run inside it.

    ``shared`` holds what nested runs inherit from their parent (the agent tree of the
    run's agent nodes, the board, ...), keyed by who owns it; a nested run made with
    ``within=scope`` shares the same dict, so a budget holds across every level of nesting.
    """

    runtime: Runtime
    run_id: str
    lineage: str = ""
    resuming: bool = False
    board: Board | None = None
    budget: Budget | None = None
    sinks: tuple[EventSink, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict)
    #: whether this run is nested in no other: its end is the end of everything ``shared``
    outermost: bool = True

    def at_end(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` when the outermost run around this one has ended.

        For what lives as long as the whole composition (the models its agents share).
        """
        self.shared.setdefault(_AT_END, []).append(hook)

    @property
    def ends_with_hooks(self) -> bool:
        """Whether :meth:`at_end` was given a hook (else :meth:`end` has nothing to await)."""
        return _AT_END in self.shared

    async def end(self) -> None:
        """Run the hooks of :meth:`at_end` (the runtime calls it as the outermost run ends)."""
        hooks = self.shared.pop(_AT_END, [])
        for hook in hooks:
            await hook()

    def __post_init__(self) -> None:
        if self.board is not None:  # a run given something else fails here, before it runs
            from shoal.board import check_board

            check_board(self.board)
        check_budget(self.budget)  # so does a budget (not at its first agent's first turn)

    def where(self, node_id: str) -> str:
        """The lineage of a node of this run (``lead/reader#2``)."""
        return f"{self.lineage}/{node_id}" if self.lineage else node_id

    def nested_run_id(self, node_id: str) -> str:
        """The run id of a run that a node of this run starts (journaled under this one)."""
        return f"{self.run_id}/{node_id}"

    def replay(self, effects: Sequence[EffectRecord]) -> None:
        """Resume: apply again the effects (board writes) of the calls the run replays.

        Raises :class:`~shoal.exceptions.ConfigError` when they cannot be (the run wrote to
        a board, and is resumed without one).
        """
        by_kind: dict[str, list[EffectRecord]] = {}
        for record in effects:
            by_kind.setdefault(record.kind, []).append(record)
        for kind, records in by_kind.items():
            replayer = _provided(REPLAYERS, kind)
            if replayer is None:
                raise ConfigError(f"run {self.run_id!r}'s journal holds effects of kind "
                                  f"{kind!r} that this version of shoal cannot replay")
            replayer(self, records)


@runtime_checkable
class Settles(Protocol):
    """An injected value that acts when its call's attempt ends (a board handle).

    ``settle(ok)`` commits what the attempt did (``ok``) or drops it, and returns a record to
    journal with the call's outcome (``None``: nothing to journal). It may raise: the attempt
    then failed with that error.
    """

    def settle(self, ok: bool) -> EffectRecord | None:
        """Commit (``ok``) or drop what the attempt did; what to journal with its outcome."""
        ...


_AT_END = "shoal.at_end"

Injector = Callable[["Call", "RunScope | None"], Any]
Replayer = Callable[["RunScope", list[EffectRecord]], None]

#: What fills in each kind of injected parameter, by kind (``"idempotency_key"``, ...).
INJECTORS: dict[str, Injector] = {
    "idempotency_key": lambda call, scope: idempotency_key(call.run_id, call.node_id),
}
#: What replays each kind of journaled effect on resume, by kind (``"board"``).
REPLAYERS: dict[str, Replayer] = {}
#: The modules that register a kind's injector and replayer, loaded when first needed.
PROVIDERS: dict[str, str] = {"board": "shoal.board", "board?": "shoal.board",
                             "node": "shoal.agents.node"}


def register_injector(kind: str, injector: Injector) -> None:
    """Let ``injector(call, scope)`` fill in parameters annotated ``Injected(kind)``."""
    INJECTORS[kind] = injector


def register_replayer(kind: str, replayer: Replayer) -> None:
    """Let ``replayer(scope, records)`` replay journaled effects of ``kind`` on resume."""
    REPLAYERS[kind] = replayer


def _provided(table: dict[str, Any], kind: str) -> Any:
    """``table[kind]``, loading the module that provides it first if need be."""
    found = table.get(kind)
    if found is None and kind in PROVIDERS:
        importlib.import_module(PROVIDERS[kind])
        found = table.get(kind)
    return found


def inject(call: Call, scope: RunScope | None) -> list[Settles]:
    """Fill in the parameters of ``call`` that the runtime provides.

    Returns the injected values that must hear how the attempt ended (see :class:`Settles`).
    A kind with no injector (its module never imported) is a definition error of the tool,
    raised into the call, so that it fails saying so.
    """
    settling: list[Settles] = []
    for name, kind in call.tool.injected.items():
        injector = _provided(INJECTORS, kind)
        if injector is None:
            raise TypeError(f"tool {call.tool.name!r}: nothing provides its injected "
                            f"parameter {name!r} ({kind}) in this run")
        value = call.args[name] = injector(call, scope)
        if hasattr(value, "settle"):  # not isinstance(value, Settles): that is ten times slower
            settling.append(value)
    return settling
