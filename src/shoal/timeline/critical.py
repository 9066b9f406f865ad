"""The longest chain through a graph, by the summed weight of its nodes."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

__all__ = ["longest_chain"]


def longest_chain(keys: Sequence[str], weights: Mapping[str, float],
                  edges: Sequence[tuple[str, str]]) -> tuple[list[str], float]:
    """The chain of ``keys``, linked by ``edges`` (source before target), of largest weight.

    Keys that only appear in ``edges`` are join points of weight 0. Nodes on a cycle (which a
    journal edited by hand could describe) are left out rather than looped over.
    """
    nodes = list(dict.fromkeys([*keys, *(k for e in edges for k in e)]))
    # lists for the nodes that have successors only: a list per node (100,000 of them for a
    # run of that many calls, most of them empty) made the collector walk them again and again
    succs: dict[str, list[str]] = {}
    indegree = dict.fromkeys(nodes, 0)
    for source, target in set(edges):
        if source != target:
            succs.setdefault(source, []).append(target)
            indegree[target] += 1
    best = {k: weights.get(k, 0.0) for k in nodes}
    via: dict[str, str | None] = dict.fromkeys(nodes)
    ready = deque(k for k in nodes if indegree[k] == 0)
    done: list[str] = []
    while ready:
        key = ready.popleft()
        done.append(key)
        for nxt in succs.get(key, ()):
            reach = best[key] + weights.get(nxt, 0.0)
            # a tie still links a node to a predecessor: chains of no time stay chains
            if reach > best[nxt] or (via[nxt] is None and reach >= best[nxt]):
                best[nxt], via[nxt] = reach, key
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if not done:
        return [], 0.0
    # on a tie, the node later in the order wins: a step of no time after the chain (a map
    # gathering its items) belongs on it
    order = {k: i for i, k in enumerate(done)}
    end = max(done, key=lambda k: (best[k], k in weights, order[k]))
    chain: list[str] = []
    cursor: str | None = end
    while cursor is not None and len(chain) <= len(nodes):
        chain.append(cursor)
        cursor = via[cursor]
    chain.reverse()
    return chain, best[end]
