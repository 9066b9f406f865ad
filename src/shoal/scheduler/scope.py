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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.store.base import idempotency_key

if TYPE_CHECKING:
    from shoal.agents.budget import Budget
    from shoal.events import EventSink
    from shoal.executors.base import Call
    from shoal.runtime import Runtime

__all__ = ["INJECTORS", "RunScope", "inject", "register_injector"]


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
    board: Any = None  # a shoal.Board, when the run was given one
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

    async def end(self) -> None:
        """Run the hooks of :meth:`at_end` (the runtime calls it as the outermost run ends)."""
        hooks = self.shared.pop(_AT_END, [])
        for hook in hooks:
            await hook()

    def where(self, node_id: str) -> str:
        """The lineage of a node of this run (``lead/reader#2``)."""
        return f"{self.lineage}/{node_id}" if self.lineage else node_id

    def nested_run_id(self, node_id: str) -> str:
        """The run id of a run that a node of this run starts (journaled under this one)."""
        return f"{self.run_id}/{node_id}"


_AT_END = "shoal.at_end"

Injector = Callable[["Call", "RunScope | None"], Any]

#: What fills in each kind of injected parameter, by kind (``"idempotency_key"``, ...).
INJECTORS: dict[str, Injector] = {
    "idempotency_key": lambda call, scope: idempotency_key(call.run_id, call.node_id),
}


def register_injector(kind: str, injector: Injector) -> None:
    """Let ``injector(call, scope)`` fill in parameters annotated ``Injected(kind)``."""
    INJECTORS[kind] = injector


def inject(call: Call, scope: RunScope | None) -> None:
    """Fill in the parameters of ``call`` that the runtime provides.

    A kind with no injector (its module never imported) is a definition error of the tool,
    raised into the call, so that it fails saying so.
    """
    for name, kind in call.tool.injected.items():
        injector = INJECTORS.get(kind)
        if injector is None:
            raise TypeError(f"tool {call.tool.name!r}: nothing provides its injected "
                            f"parameter {name!r} ({kind}) in this run")
        call.args[name] = injector(call, scope)
