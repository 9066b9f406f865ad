"""Waits that could never end: a node of an open run waiting on itself, or on a cycle of waits.

A node's tool may wait on other nodes of its open run (``await run.wait(ref)``). A wait on its
own outcome, or on a node that cannot end before it does, would hang for good; the driver asks
:func:`cycle_error` before such a wait starts. Which node (if any) is waiting is found from the
tasks at the moment of the wait, never noted as each call starts (which every call would pay
for): the driver looks at the current task and, through :func:`awaiter`, at the tasks that
await it.

:func:`awaiter` reads asyncio's own fields (``_callbacks``, ``_fut_waiter``, ``_children``):
asyncio offers no public way to ask which task awaits another. Each is read with ``getattr``
and every find is confirmed, so an asyncio that keeps them otherwise finds nothing (the wait
then goes on as before), never a wrong task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shoal.exceptions import SelfWaitError

if TYPE_CHECKING:
    from shoal.deps import Graph
    from shoal.outcome import Outcome

__all__ = ["awaiter", "cycle_error"]


def cycle_error(waiter: str, me: int, target: int, run_id: str, graph: Graph,
                outcome_at: Callable[[int], Outcome | None],
                waits: Mapping[int, Sequence[int]]) -> SelfWaitError | None:
    """The error for node ``me`` (id ``waiter``) waiting on node ``target``, if it never ends.

    It never ends when ``target`` is ``me``, or reaches ``me`` through nodes without an
    outcome: each waits for its inputs (data, ``after``, resource edges) and, once running,
    for the nodes its attempt waits on now (``waits``, by position).
    """
    if target == me:
        return SelfWaitError(
            f"node {waiter!r} of open run {run_id} waits on its own outcome, which it has only "
            "once it returns: that wait would never end. Return the value instead, or wait on "
            "another node")
    came: dict[int, tuple[int, bool]] = {target: (-1, False)}  # node -> (from, by a wait)
    todo = [target]
    while todo:
        pos = todo.pop()
        if outcome_at(pos) is not None:
            continue
        for nxt, waited in (*((p, False) for p in graph.preds[pos]),
                            *((p, True) for p in waits.get(pos, ()))):
            if nxt in came:
                continue
            came[nxt] = (pos, waited)
            if nxt != me:
                todo.append(nxt)
                continue
            return SelfWaitError(
                f"node {waiter!r} of open run {run_id} waits on {graph.nodes[target].id!r}, "
                f"which cannot end before {waiter!r} does ({_path(came, me, graph)}): that "
                "wait would never end. Wait on a node that does not need this one, or give "
                "what it needs another way")
    return None


def _path(came: dict[int, tuple[int, bool]], me: int, graph: Graph) -> str:
    """How the search reached ``me``: "'a' waits on 'b', and 'b' needs the end of 'c'"."""
    steps, at = [], me
    while came[at][0] != -1:
        before, by_wait = came[at]
        how = "waits on" if by_wait else "needs the end of"
        steps.append(f"{graph.nodes[before].id!r} {how} {graph.nodes[at].id!r}")
        at = before
    return ", and ".join(reversed(steps))


def awaiter(task: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The task that is awaiting ``task`` now (``await task``, or ``gather`` of it), if any.

    Found from ``task``'s done-callbacks (the awaiting task's wake-up, or a gather's
    callback, whose gathering future the awaiting task waits on), and kept only if that
    task's own ``_fut_waiter`` shows it waits on ``task`` (or the gather): so a callback of
    another kind, or asyncio keeping these otherwise, finds nothing, never a wrong task.
    """
    for callback, _ in getattr(task, "_callbacks", None) or ():
        parent = getattr(callback, "__self__", None)
        if isinstance(parent, asyncio.Task):
            if getattr(parent, "_fut_waiter", None) is task:
                return parent
            continue
        for cell in getattr(callback, "__closure__", None) or ():
            try:
                outer = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            children = getattr(outer, "_children", None)
            if not isinstance(outer, asyncio.Future) or not isinstance(children, list) or (
                    task not in children):
                continue
            for waker, _ in getattr(outer, "_callbacks", None) or ():
                parent = getattr(waker, "__self__", None)
                if isinstance(parent, asyncio.Task) and (
                        getattr(parent, "_fut_waiter", None) is outer):
                    return parent
    return None
