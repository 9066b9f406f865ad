"""Settling an agent tree's calls in doubt on resume (``rerun_in_doubt`` / ``mark_done``).

Each agent of a journaled tree runs its steps as a nested run, ``{run id}/{lineage}/steps``,
whose tool call nodes are ``pay#1``, ``helper#2`` ...; ``shoal show`` prints each call by its
lineage, ``lead/helper#1/pay#1``: the agent's lineage, '/', the node. A person names calls
in doubt that way, and :func:`settling` sorts them out per agent, checked before anything
runs: each must be a call the resume will hold in doubt (in flight when the run stopped, or
stopped while its tool ran, its tool not idempotent; or held in doubt by an earlier resume
whose agent has not been told yet). A call whose agent an earlier resume already told it was
in doubt, and which went on from there, cannot be settled any more: its model answered what
it was told, and its later turns replay from the journal.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from shoal.exceptions import ConfigError
from shoal.store.resume import check_settling

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.store.base import Store

__all__ = ["Settling", "in_doubt_calls", "settling"]

#: per agent lineage: the node ids of its steps run to run again, and those marked done
Settling = dict[str, tuple[tuple[str, ...], dict[str, Any]]]

_TOLD = "told"  # in doubt, and its agent was told so by an earlier resume and went on


def settling(store: Store, run_id: str, agent: Agent[Any], rerun_in_doubt: Collection[str],
             mark_done: Mapping[str, Any] | None) -> Settling:
    """``rerun_in_doubt`` and ``mark_done`` (call lineages) by agent lineage, checked.

    Raises :class:`ConfigError` naming the calls that are not in doubt (and those that are),
    a call named twice, and a call whose agent was told already.
    """
    rerun = check_settling(rerun_in_doubt, mark_done)
    done = dict(mark_done or {})
    if not rerun and not done:
        return {}
    both = sorted(set(rerun) & done.keys())
    if both:
        raise ConfigError(f"{both} cannot be both run again and marked done")
    doubtful = in_doubt_calls(store, run_id, agent)
    named = [*rerun, *done]
    unknown = [c for c in named if c not in doubtful]
    if unknown:
        open_ = sorted(c for c, why in doubtful.items() if why != _TOLD)
        raise ConfigError(
            f"{unknown} are not calls in doubt in agent run {run_id!r}, so they cannot be run "
            f"again or marked done; name a call as shoal show prints it (agent lineage/call, "
            f"as 'lead/helper#1/pay#1'); in doubt: {open_ or 'none'}")
    told = [c for c in named if doubtful[c] == _TOLD]
    if told:
        raise ConfigError(
            f"{told} {'was' if len(told) == 1 else 'were'} held in doubt by an earlier resume, "
            "which told the agent so, and it went on from there (its later turns are "
            "journaled): it can no longer be run again or marked done; settle a call in doubt "
            "on the first resume after the run stopped, or start a new run")
    found: Settling = {}
    for call in named:
        lineage, _, node = call.rpartition("/")
        again, marked = found.setdefault(lineage, ((), {}))
        if call in done:
            marked[node] = done[call]
        else:
            found[lineage] = ((*again, node), marked)
    return found


def in_doubt_calls(store: Store, run_id: str, agent: Agent[Any] | None) -> dict[str, str]:
    """The tree's calls that its resume holds in doubt, by lineage: how each stands.

    ``"in flight"``, ``"stopped"`` (cancelled or timed out while its tool ran), ``"in
    doubt"`` (held so by an earlier resume, its agent not told yet) or ``"told"``. Only
    calls of tools that are not idempotent (a tool the tree does not know counts as not;
    with no ``agent``, every tool: ``shoal show``, which loads none); never a subagent's
    call (it runs again: its own steps say what ran) nor a model turn.
    """
    from shoal.store.base import nested_run_ids
    from shoal.store.resume import _in_flight, _stopped_running

    idempotent = _idempotent_tools(agent) if agent is not None else {}
    prefix, found = f"{run_id}/", {}
    steps = [r for r in nested_run_ids(store, run_id) if r.endswith("/steps")]
    agents = {r[len(prefix):-len("/steps")] for r in steps}
    for steps_id in steps:
        lineage = steps_id[len(prefix):-len("/steps")]
        tools = idempotent.get(_agent_name(lineage), {})
        stored = store.outcomes(steps_id, decode=False)
        flying = _in_flight(store.attempts(steps_id))
        order = list(stored)  # the order the steps were added in: turns, calls, turns
        position = {n: i for i, n in enumerate(order)}
        last_turn = max((i for i, n in enumerate(order) if n.startswith("model-")), default=-1)
        for node_id in [*order, *(n for n in flying if n not in stored)]:
            if node_id.startswith("model-") or f"{lineage}/{node_id}" in agents:
                continue
            known = stored.get(node_id)
            if node_id in flying and (known is None or known.outcome.status not in ("ok",
                                                                                   "denied")):
                tool, how = flying[node_id].tool, "in flight"
            elif known is not None and _stopped_running(known.outcome):
                tool, how = known.outcome.tool, "stopped"
            elif known is not None and known.outcome.status == "in_doubt":
                tool, how = known.outcome.tool, "in doubt"
            else:
                continue
            if node_id in stored and position[node_id] < last_turn:
                how = _TOLD  # a later turn of its agent was asked: it was told its result
            if not tools.get(tool, False):
                found[f"{lineage}/{node_id}"] = how
    return found


def _agent_name(lineage: str) -> str:
    """The name of the agent at ``lineage`` (``lead/helper#1`` -> ``helper``)."""
    return lineage.rsplit("/", 1)[-1].split("#", 1)[0]


def _idempotent_tools(agent: Agent[Any]) -> dict[str, dict[str, bool]]:
    """By agent name, whether each of its tools may run again (a subagent's call may)."""
    found: dict[str, dict[str, bool]] = {}
    for each in agent.with_subagents():
        tools = found.setdefault(each.name, {})
        for name, tool in each.tools_by_name.items():
            tools.setdefault(name, tool.policy.idempotent)
    return found
