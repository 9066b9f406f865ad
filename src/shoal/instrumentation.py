"""The global instrumentation hook: one observer that every run and agent tree feeds.

Off by default (:data:`active` is ``None``), and then it costs a run one look at
:data:`active` when it starts, an agent tree one when it is made, and each call attempt one
``is None`` check on its run's driver: no event is built for it, no context is copied.

When an :class:`Instrumentation` is installed (``shoal.otel.instrument()`` installs one),
each run started from then on asks it for a :class:`RunObserver`, which gets the run's events
(like any sink, but kept out of the sinks that nested runs inherit) and makes the context each
call attempt runs in; each agent tree made from then on gives it the tree's own events (agents,
model replies, rejected calls) through :meth:`Instrumentation.observe_tree`. Runs and trees
that had started before keep what they had.

The core never imports the observer's libraries: this module names only the protocols.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shoal.agents.context import TreeContext
    from shoal.events import Event, EventSink
    from shoal.executors.base import Call
    from shoal.scheduler.driver import Driver

__all__ = ["SHARED_KEY", "Instrumentation", "RunObserver", "active", "install", "of",
           "uninstall"]

#: The key, in the ``shared`` dict of a composition (:class:`shoal.scheduler.scope.RunScope`),
#: of the instrumentation its outermost run or agent tree started with (``None``: none).
SHARED_KEY = "shoal.instrumentation"


class RunObserver(Protocol):
    """What an instrumentation keeps for one run: a sink, and each attempt's context."""

    def __call__(self, event: Event) -> None:
        """Take one of the run's events (on the event loop; quick)."""
        ...

    def attempt_context(self, call: Call) -> contextvars.Context:
        """The context the attempt ``call`` runs in (a copy of the current one, amended).

        It may also set ``call.trace``, the carrier that backends in other processes hand
        to the worker running the call.
        """
        ...

    def close(self) -> None:
        """The run is over (also when it was cancelled from outside, with no ``RunFinished``)."""
        ...


class Instrumentation(Protocol):
    """An observer of every run and agent tree in this process (see the module docstring)."""

    def observe_run(self, driver: Driver) -> RunObserver:
        """The observer of the run ``driver`` is about to drive."""
        ...

    def observe_tree(self, tree: TreeContext) -> EventSink:
        """A sink for the events of the agent tree ``tree``."""
        ...


#: The installed instrumentation, or ``None`` (the default: nothing is observed).
active: Instrumentation | None = None


def install(instrumentation: Instrumentation) -> None:
    """Make ``instrumentation`` the one that runs and trees started from now on feed."""
    global active
    active = instrumentation


def of(shared: dict[str, Any] | None) -> Instrumentation | None:
    """The instrumentation of a run or agent tree that is part of the composition ``shared``.

    The one its outermost run or tree started with (kept in ``shared`` from then on), else
    :data:`active`: a run in flight keeps what it started with, its nested runs (an agent's
    model turns and tool phases, agent nodes, patterns) included, whatever is installed or
    uninstalled meanwhile, so that its trace is neither cut short nor split in two.
    """
    if shared is None:
        return active
    found: Instrumentation | None = shared.setdefault(SHARED_KEY, active)
    return found


def uninstall(instrumentation: Instrumentation | None = None) -> None:
    """Remove ``instrumentation`` (``None``: whichever is installed); others stay."""
    global active
    if instrumentation is None or active is instrumentation:
        active = None
