"""Critical-path priorities: which ready node goes first when not all of them can start.

A node's priority is the longest chain of estimated work from it to the end of the plan
(its *bottom level*). Estimates start from each tool's ``estimate`` (or one unit) and are
learned per tool, as an exponential moving average of measured durations, while calls finish
(a duration far above the estimate counts for less: see ``SAMPLE_CAP``).
Re-ranking costs O(nodes), so it happens only when an estimate has moved by more than
``RELEARN_FACTOR`` since the last ranking, and at most once per ``RERANK_SHARE`` of the plan's
completions: learning stays O(1) per node, amortised. With a single tool the order cannot
change, so nothing is ever re-ranked.

Nodes added while a run goes (an open run) get their levels in batches: the scheduler asks
:meth:`CriticalPath.take_added` for the nodes added since, when the order of its ready queue
is about to matter, and works their levels out newest first in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import attrgetter, is_
from typing import Any

from shoal.deps import Graph
from shoal.plan import Node
from shoal.tools import Tool

__all__ = ["DEFAULT_ESTIMATE", "CriticalPath"]

DEFAULT_ESTIMATE = 1.0
RELEARN_FACTOR = 2.0
#: Estimates below this many seconds count as equal when judging whether to re-rank: a trivial
#: call's duration jitters by large factors (a cache miss, a collection), and ordering among
#: such calls is worth far less than a re-ranking of the whole plan.
RELEARN_FLOOR = 0.001
RERANK_SHARE = 0.1
LEARN_WEIGHT = 0.3
#: One measured duration counts for at most this many times the estimate (or for
#: ``RELEARN_FLOOR``, if that is more): a call that happened to span a pause of the whole
#: process (the collector's full pass, the machine's other work) says nothing about its tool,
#: yet would move a trivial tool's estimate by orders of magnitude, and so call for a
#: re-ranking of the plan, and another once it falls back (a trivial tool's estimate stays
#: below the floor after one such sample, so it calls for none). A tool that really got slower
#: moves its estimate by up to 1 + LEARN_WEIGHT * (SAMPLE_CAP - 1) = 1.9 times per call: a
#: few calls get it there.
SAMPLE_CAP = 4.0

_TOOL = attrgetter("tool")  # a node's tool


class CriticalPath:
    """Per-tool duration estimates and the bottom-level ranking they imply."""

    def __init__(self, graph: Graph, estimates: dict[str, float],
                 tools: set[Tool[..., Any]] | None = None) -> None:
        """``tools``: the graph's distinct tools, if the caller has them (else found here)."""
        self.graph = graph
        self.estimates = estimates  # shared with the Runtime, so later runs start informed
        self._used: dict[str, float] = {}  # estimate per tool at the last ranking (nan: none)
        self._next_at = 0  # completions before which no re-ranking happens
        if tools is None:  # found at C speed (they hash by identity; a wide plan has a few)
            tools = set(map(_TOOL, graph.nodes))
        # several tool objects may share a name (one estimate): the names count
        self._multi_tool = len(tools) > 1 and len({t.name for t in tools}) > 1
        self._ranked = len(graph.nodes)  # positions before it had their level worked out

    def take_added(self) -> range:
        """The positions added since the last ranking or call, whose levels are not worked out.

        The caller works them out now (newest first: what follows a node came after it).
        """
        added = range(self._ranked, len(self.graph.nodes))
        self._ranked = added.stop
        return added

    def note(self, node: Node) -> None:
        """A node was added while the run goes: a new tool may make re-ranking worthwhile."""
        if not self._multi_tool and self.graph.nodes and node.tool.name != (
                self.graph.nodes[0].tool.name):
            self._multi_tool = True

    def estimate(self, tool: Tool[..., Any]) -> float:
        """Seconds one call of ``tool`` is expected to take."""
        learned = self.estimates.get(tool.name)
        if learned is not None:
            return learned
        return tool.policy.estimate if tool.policy.estimate is not None else DEFAULT_ESTIMATE

    def rank(self, done_count: int, ended: Sequence[object] | None = None) -> list[float]:
        """Each node's priority, by position (lower pops first from a heap: the negated level).

        ``ended[pos]`` is not ``None`` for a node that has ended: it is given 0 and costs nothing
        (nothing that waits comes before it, and what it ended for runs no more), so a ranking
        late in a large run works only on what is left.
        """
        nodes, succs = self.graph.nodes, self.graph.succs
        if not any(succs) and (ended is None or ended.count(None) == len(ended)):
            return self._rank_unlinked({}, done_count)
        last_first: Iterable[int] = range(len(nodes) - 1, -1, -1)  # topological order, last first
        if ended is not None:  # an ended node's level stays 0 (found at C speed)
            last_first = compress(last_first, map(is_, reversed(ended), repeat(None)))
        level = self._levels(last_first, done_count)
        shared: dict[float, float] = {}  # many nodes share a level: one float object each
        return [shared.setdefault(value, -value) for value in level]

    def rank_live(self, done_count: int, live: Sequence[int]) -> list[float]:
        """:meth:`rank`'s priorities of the nodes at ``live`` (the positions not ended, in order).

        The same levels (an ended node's is 0), worked out without a Python step per ended
        node: late in a large run, or in an open run ranked while it is fed, most have ended.
        """
        level = self._levels(reversed(live), done_count)
        shared: dict[float, float] = {}  # many nodes share a level: one float object each
        return [shared.setdefault(value, -value) for value in map(level.__getitem__, live)]

    def _levels(self, last_first: Iterable[int], done_count: int) -> list[float]:
        """Every node's bottom level by position, worked out for ``last_first`` (others: 0).

        ``last_first`` holds positions in reverse topological order, so each node's successors
        have their levels when it is reached.
        """
        cache: dict[tuple[str, float | None], float] = {}  # per-call options may set estimate=
        by_tool: dict[int, float] = {}  # the same, by the tool object: one lookup per node
        nodes, succs = self.graph.nodes, self.graph.succs
        level = [0.0] * len(nodes)
        at = level.__getitem__
        for pos in last_first:
            tool = nodes[pos].tool
            own = by_tool.get(id(tool))
            if own is None:
                key = (tool.name, tool.policy.estimate)
                if key not in cache:
                    cache[key] = self.estimate(tool)
                own = by_tool[id(tool)] = cache[key]
            below = succs[pos]
            level[pos] = own + max(map(at, below)) if below else own
        self._ranked_now(cache, done_count)
        return level

    def _rank_unlinked(self, cache: dict[tuple[str, float | None], float],
                       done_count: int) -> list[float]:
        """:meth:`rank` of a graph without edges, none of its nodes ended (a wide plan's start).

        Each node's level is its own estimate: worked out per tool, and handed out per node
        without a Python step per node.
        """
        nodes = self.graph.nodes
        tools = set(map(_TOOL, nodes))  # tools compare by identity; few of them
        negated: dict[Tool[..., Any], float] = {}
        for tool in tools:
            key = (tool.name, tool.policy.estimate)
            if key not in cache:
                cache[key] = self.estimate(tool)
            negated[tool] = -cache[key]
        self._ranked_now(cache, done_count)
        return list(map(negated.__getitem__, map(_TOOL, nodes)))

    def _ranked_now(self, cache: dict[tuple[str, float | None], float], done_count: int) -> None:
        """Note a ranking made now with the estimates in ``cache``: when the next may be due."""
        self._used = {name: self.estimates[name] for name, _ in cache
                      if name in self.estimates} if self._multi_tool else {}
        self._next_at = done_count + max(1, int(len(self.graph.nodes) * RERANK_SHARE))
        self._ranked = len(self.graph.nodes)

    def learn(self, tool_name: str, seconds: float) -> None:
        """Fold one measured duration into the tool's estimate."""
        old = self.estimates.get(tool_name)
        if old is None:
            self.estimates[tool_name] = seconds
        else:
            if seconds > old * SAMPLE_CAP and seconds > RELEARN_FLOOR:  # counts for less
                seconds = max(old * SAMPLE_CAP, RELEARN_FLOOR)  # (see SAMPLE_CAP)
            self.estimates[tool_name] = old + LEARN_WEIGHT * (seconds - old)
        if self._multi_tool and tool_name not in self._used:
            self._used[tool_name] = math.nan

    def stale(self, done_count: int) -> bool:
        """Whether a re-ranking is due: allowed by now, and some estimate moved enough."""
        if not self._used or done_count < self._next_at:
            return False
        for name, used in self._used.items():
            if math.isnan(used):
                return True
            used = max(used, RELEARN_FLOOR)
            current = max(self.estimates.get(name, used), RELEARN_FLOOR)
            if not used / RELEARN_FACTOR <= current <= used * RELEARN_FACTOR:
                return True
        return False

