"""The rule for node ids a user gives (``plan.call(tool, node_id=...)``, plan files, open runs).

Shoal joins ids with ``/``: a node's lineage is ``lead/reader#2``, a run a node starts is
journaled as ``{run id}/{node id}``, and an agent's steps as ``{run id}/{lineage}/steps``. A
node id holding ``/`` would read as two levels and could name another run's journal (a node
``lead/steps`` of one run against the steps of its agent ``lead``), so a given id may not hold
one; nor may it be empty. Ids shoal makes itself (``search#1``, ``m[3]``) follow the rule.
"""

from __future__ import annotations

from shoal.exceptions import PlanError, PlanProblem

__all__ = ["SEPARATOR", "check_node_id", "node_id_problem", "plain_text"]

#: What joins run ids, lineages and node ids; no node id a user gives holds it.
SEPARATOR = "/"


def node_id_problem(node_id: str) -> str:
    """Why ``node_id`` cannot name a node ('' if it can)."""
    if not node_id:
        return "a node id cannot be empty; give a non-empty name such as 'fetch-1'"
    if SEPARATOR in node_id:
        return (f"a node id cannot hold {SEPARATOR!r} (at position {node_id.index(SEPARATOR)}):"
                f" shoal joins run ids, lineages and node ids with it, so the id would read as "
                f"two levels; use another character such as '-', ':' or '.'")
    return ""


def check_node_id(node_id: str) -> None:
    """Raise :class:`~shoal.exceptions.PlanError` (code ``bad_id``) if ``node_id`` breaks the rule.

    Callers test ``"/" in node_id or not node_id`` first (one C-speed test per node); this
    says why.
    """
    problem = node_id_problem(node_id)
    if problem:
        raise PlanError([PlanProblem("bad_id", problem, node_id)])


def plain_text(text: str) -> str:
    """``text`` as a plain ``str``, without a subclass's own ``__eq__``, ``__hash__``, ``__str__``.

    An id, a name or a key is compared, hashed and written out wherever the run goes; a ``str``
    subclass whose methods raise (or lie) would fail there, far from the call that took it.
    Its text is kept (``str.__str__`` copies a subclass's characters without calling them).
    """
    return text if type(text) is str else str.__str__(text)
