"""The calls of an agent tree by the names ``shoal show`` prints, for ``shoal cancel``.

An agent tree (``shoal run pkg:agent`` or ``pkg:plan_function``, or ``Agent.run`` with a
journal) journals each agent's steps as a run of its own nested in the tree's
(``RUN/lead/steps``; a plan function's plan: ``RUN/plan``): a call shown as
``lead/helper#1/pay#1`` is node ``pay#1`` of run ``RUN/lead/helper#1/steps``. The tree's own
record has none of those nodes, so a cancel request for them must go to the nested run that
holds each, which takes it as any run takes one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shoal.exceptions import ShoalError
from shoal.store.base import RunRecord, Store

#: a model turn's node in an agent's steps run (``model-3:<digest>``): never a call to cancel
_MODEL_TURN = "model-"
#: names listed in an error, at most
_LISTED = 20


def lineage_of(root: str, nested_id: str) -> str:
    """The lineage a nested run's calls are shown under: ``RUN/lead/steps`` -> ``lead``."""
    lineage = nested_id[len(root) + 1:]
    return lineage.removesuffix("/steps") if lineage.endswith("/steps") else lineage


def _calls(store: Store, record: RunRecord) -> set[str]:
    """The node ids of ``record`` a person may cancel: planned ones and those that started."""
    planned = set(record.plan.get("nodes", {}))
    started = {attempt.node_id for attempt in store.attempts(record.run_id)}
    return {node for node in planned | started
            if not (node.startswith(_MODEL_TURN) and "#" not in node)}


def targets(store: Store, root: str, names: Sequence[str], nested: Sequence[RunRecord],
            running: Callable[[RunRecord], bool]) -> dict[str, list[str]]:
    """Each of ``names`` as (the nested run going on that holds it, its node id there).

    A name is a call as ``shoal show`` prints it (``lead/helper#1/pay#1``, ``plan/fetch#2``),
    or its bare node id when only one run of the tree going on has a node of that id.
    Raises :class:`ShoalError` naming what is unknown or ambiguous, and the calls there are.
    """
    going = [record for record in nested if running(record)]
    if not going:
        raise ShoalError(f"no part of run {root!r} is going on: nothing to cancel")
    calls = {record.run_id: _calls(store, record) for record in going}
    shown = {f"{lineage_of(root, run_id)}/{node}": (run_id, node)
             for run_id, nodes in calls.items() for node in nodes}
    found: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in names:
        where = shown.get(name)
        if where is None:
            holders = [run_id for run_id, nodes in calls.items() if name in nodes]
            if len(holders) > 1:
                raise ShoalError(
                    f"run {root!r}: {name!r} names a call of several agents; give one of "
                    f"{sorted(f'{lineage_of(root, r)}/{name}' for r in holders)}")
            where = (holders[0], name) if holders else None
        if where is None:
            unknown.append(name)
            continue
        found.setdefault(where[0], []).append(where[1])
    if unknown:
        some = sorted(shown)[:_LISTED]
        more = f" and {len(shown) - _LISTED} more" if len(shown) > _LISTED else ""
        raise ShoalError(f"run {root!r} has no call(s) {unknown} going on; its calls are named "
                         f"as 'shoal show {root}' prints them: {', '.join(some)}{more}")
    return found
