"""Dependency analysis: a plan in, a graph of edges with their reasons out. Pure; no I/O.

Edges come from four sources, and each edge remembers which:

- ``data``: a node's arguments use another node's output (a :class:`~shoal.plan.Ref`);
- ``after``: an explicit ``after=`` in the plan;
- ``resource``: two nodes' footprints share a key and at least one writes it; they keep plan
  order. A ``merges`` use (a commutative merge, such as adding to a board's counter) orders
  against reads and writes of the key but not against other merges: they commute. A key
  whose template uses an argument that is not known before the run (a ref) becomes
  a wildcard over its literal prefix (``"file:{path}"`` with a ref path conflicts with every
  ``file:`` key), because shoal cannot prove the calls touch different resources;
- ``exclusive``: an exclusive tool is a barrier between everything before and after it.

"Plan order" is the order nodes were added, adjusted only where data or ``after`` edges demand
otherwise, so resource and barrier edges can never create a cycle.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import string
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Literal, NamedTuple

from shoal.exceptions import ConfigError
from shoal.merge import shown
from shoal.outcome import _converts_in_bounds
from shoal.plan import Node, Plan, find_refs, hard_predecessors

__all__ = ["Edge", "EdgeKind", "Graph", "analyze", "render_key"]

EdgeKind = Literal["data", "after", "resource", "exclusive"]
_formatter = string.Formatter()


class Edge(NamedTuple):
    """``source`` must finish before ``target`` starts, because of ``kind`` (see ``detail``).

    A named tuple rather than a dataclass: large plans have one per dependency, and tuples are
    the cheapest records Python builds.
    """

    source: str
    target: str
    kind: EdgeKind
    detail: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind}: {self.detail})"


#: An adjacency entry: a tuple while short (no spare capacity; the empty one is shared), then
#: a list. Most nodes of a large plan have zero to two neighbours each way.
Adjacency = tuple[int, ...] | list[int]
_SHORT = 8


@dataclass(slots=True, weakref_slot=True)
class Graph:
    """The analysed plan: nodes in a topological order, adjacency by position, edge reasons.

    A graph may grow while its run goes (an open run, a map's items): :meth:`grow` adds a
    node after every node it has, with its edges to them, so positions stay topological.
    The first ``static_count`` nodes are the plan's own; the rest were added while it ran.

    ``preds[i]`` and ``succs[i]`` are sequences of positions (tuples while short). Data and
    ``after`` edges are not kept as records: each follows from its target node's refs and
    ``after``, so :attr:`edges` lists them from the nodes on first use; ``extra`` holds the
    resource and barrier edges in the order they were found.
    """

    nodes: list[Node]
    position: dict[str, int]
    preds: list[Adjacency]
    succs: list[Adjacency]
    extra: list[Edge] = field(default_factory=list)
    static_count: int = 0
    builder: _Builder | None = None
    listed: list[Edge] | None = None  # every edge, once :attr:`edges` was asked for

    @property
    def edges(self) -> list[Edge]:
        """Every edge with its reason, in the order found.

        The plan's own nodes' data and ``after`` edges (node by node) come first, then their
        resource and barrier edges; then, for each node added while the run went, its edges.
        Made on first use and kept up to date as the graph grows.
        """
        if self.listed is None:
            self.listed = self._list_edges()
        return self.listed

    def _list_edges(self) -> list[Edge]:
        listed: list[Edge] = []
        extra, k, static = self.extra, 0, self.static_count
        for i in range(static):
            listed += hard_edges(self.nodes[i])
        while k < len(extra) and self.position[extra[k].target] < static:
            listed.append(extra[k])
            k += 1
        for i in range(static, len(self.nodes)):  # a grown node: its edges all point to it
            node = self.nodes[i]
            listed += hard_edges(node)
            while k < len(extra) and extra[k].target == node.id:
                listed.append(extra[k])
                k += 1
        listed += extra[k:]  # none are left, unless a builder was given nodes out of order
        return listed

    def reasons(self, source: str, target: str) -> list[Edge]:
        """Why ``target`` waits for ``source`` (empty when it does not, directly)."""
        node = self.nodes[self.position[target]] if target in self.position else None
        hard = [e for e in hard_edges(node) if e.source == source] if node is not None else []
        return hard + [e for e in self.extra if e.source == source and e.target == target]

    def grow(self, node: Node, within: int | None = None) -> int:
        """Add ``node`` after every other node; return its position.

        Its refs and ``after`` must name nodes the graph has; its resource and barrier edges
        come from the nodes before it, or, for an item of the map at position ``within``,
        from the map's earlier items only.
        """
        if self.builder is None:
            if self is _NO_NODES:  # shared by every empty plan: a run grows its own fork
                raise RuntimeError("the empty plans' shared graph cannot grow: fork it first")
            self.builder = _Builder.resume(self)
        return self.builder.extend(node, within)

    def forget_from(self, count: int, map_of: Callable[[int], int]) -> None:
        """Forget every node at position ``count`` or later, and every edge to it.

        For a node whose growth was cut short by an error (see ``SchedulerState``): the graph
        is as it was before. Rare, so it works from the graph, not from a log of changes:
        the builder is made again from the nodes kept (``map_of(pos)`` is the position of the
        map whose item the node at ``pos`` is, or -1).
        """
        nodes, preds, succs = self.nodes, self.preds, self.succs
        if max(len(nodes), len(preds), len(succs)) <= count and all(
                at < count for at in self.position.values()):
            return  # nothing grew (the empty plans' shared graph, too, is never changed)
        for at in range(count, len(preds)):  # each edge is in its target's preds first
            for source in preds[at]:
                if source < count:
                    kept = [s for s in succs[source] if s < count]
                    succs[source] = kept if isinstance(succs[source], list) else tuple(kept)
        gone = {n.id for n in nodes[count:]}
        for name, at in list(self.position.items()):
            if at >= count:
                del self.position[name]
        del nodes[count:], preds[count:], succs[count:]
        self.extra[:] = [e for e in self.extra if e.target not in gone]
        self.listed = None  # made again from the nodes, on first use
        if self.builder is not None:
            self.builder = _Builder.resume(self, map_of)

    def fork(self) -> Graph:
        """A copy that can grow without changing this one (a plan's graph is cached)."""
        if not self.nodes and not self.extra:  # nothing to copy (every agent's steps run)
            copy = Graph([], {}, [], [], [], self.static_count, listed=None if (
                self.listed is None) else [])
            builder = copy.builder = _Builder.__new__(_Builder)
            builder._own()
            builder._share(copy)
            return copy
        copy = Graph(list(self.nodes), dict(self.position), [_copied(p) for p in self.preds],
                     [_copied(s) for s in self.succs], list(self.extra), self.static_count)
        if self.listed is not None:
            copy.listed = list(self.listed)
        copy.builder = _Builder.resume(copy)
        return copy


def _copied(adjacency: Adjacency) -> Adjacency:
    return adjacency if isinstance(adjacency, tuple) else list(adjacency)


def hard_edges(node: Node) -> list[Edge]:
    """The data and ``after`` edges into ``node`` (made from its refs and ``after``)."""
    nid = node.id
    found = [Edge(ref.node, nid, "data", f"uses {ref!r}") for ref in node.refs if ref.node != nid]
    if node.after:
        found += [Edge(dep, nid, "after", f"after={dep}") for dep in node.after if dep != nid]
    return found


@dataclass(frozen=True, slots=True)
class _Key:
    """A rendered resource key; ``wild`` means 'any key starting with ``text``'."""

    text: str
    wild: bool

    def meets(self, other: _Key) -> bool:
        if self.wild:
            return other.text.startswith(self.text)
        if other.wild:
            return self.text.startswith(other.text)
        return self.text == other.text

    def __str__(self) -> str:
        return f"{self.text}*" if self.wild else self.text


def render_key(template: str, args: Mapping[str, Any], defaults: Mapping[str, Any]) -> _Key:
    """Fill ``template`` from ``args``; stop at the first field whose value is not known yet.

    The key is then a wildcard: what it was filled with so far, then anything. So is it when
    a value cannot be written into it (its ``__format__`` or ``__repr__`` raises, an int too
    long to write out): such a call is ordered after every earlier use of a key it might be,
    never left to overlap one it clashes with.
    """
    out: list[str] = []
    values = {**defaults, **args}
    for literal, field_name, spec, conversion in _formatter.parse(template):
        out.append(literal)
        if field_name is None:
            continue
        text = _field_text(field_name, spec, conversion, values)
        if text is None:
            return _Key("".join(out), wild=True)
        out.append(text)
    return _Key("".join(out), wild=False)


def _field_text(field_name: str, spec: str | None, conversion: str | None,
                values: Mapping[str, Any]) -> str | None:
    """One field of a key template filled in, or ``None``: not known yet, or not writable.

    Such a key counts as any key that starts as far as it got: the call is ordered against
    every use that may be the same key, never against none. (No such argument, a spec that
    does not fit the value's type, an int too long to write out, a container whose text
    would exceed :data:`~shoal.outcome.JSON_ITEMS` items, a value whose own ``__getattr__``,
    ``__format__`` or ``__repr__`` raises: ``SystemExit`` too, user code ends no run.)
    """
    try:
        value, _ = _formatter.get_field(field_name, (), values)
        if find_refs(value):  # known once that node has run
            return None
        if isinstance(value, _CONTAINERS) and not _converts_in_bounds(value):
            return None  # its text would be too long to write: shared parts, as [x, x] of
            # [y, y] ... 60 levels deep, repeat in it 2**60 times (the run never started)
        text = _formatter.format_field(_formatter.convert_field(value, conversion), spec or "")
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None
    return text if type(text) is str else None


_CONTAINERS = (dict, list, tuple, set, frozenset)  # whose text holds their items' text

#: A use of a resource key by a node: the key, the node's position, the mode.
_Use = tuple["_Key", int, str]


class _Builder:
    """Accumulates edges while walking nodes in order.

    It keeps what later nodes are checked against (footprints seen, the last barrier), so a
    graph can grow one node at a time.
    """

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        # a node's position is its plan index when they agree (always, for a plan whose refs
        # point backwards): the same int objects then serve both, which a large plan notices
        self.position = {n.id: n.index if n.index == i else i for i, n in enumerate(nodes)}
        self.preds: list[Adjacency] = [()] * len(nodes)
        self.succs: list[Adjacency] = [()] * len(nodes)
        self.extra: list[Edge] = []  # resource and barrier edges (data and after: see Graph)
        # the graph grown, whose listed edges are kept current; a weak reference, since the
        # graph holds its builder: a cycle would keep every open run's graph (and its nodes)
        # until the collector's next full pass, which in a swarm walks thousands of them
        self._graph: weakref.ref[Graph] | None = None
        self._own()

    def _own(self) -> None:
        """The builder's own bookkeeping: what later nodes are checked against."""
        self._seen: dict[int, set[int]] = {}  # the preds of nodes with many, as sets
        self._last_writer: dict[_Key, int] = {}
        self._readers: dict[_Key, list[int]] = {}  # since the key's last writer
        self._mergers: dict[_Key, list[int]] = {}  # since the key's last writer
        # since the key's last writer: the uses of each mode that a later use of the other
        # mode must still wait for directly, and marks (see _exact_use)
        self._open: dict[_Key, _Open] = {}
        # wildcard uses, checked by later keys; all uses, checked by later wildcards; each by
        # mode, so a use meets only the modes it clashes with (a thousand wildcard reads
        # checked each against every read before them: minutes for a large open run). None
        # until a node with a footprint comes: most open runs (an agent's steps) have none,
        # and a swarm keeps one builder per agent in flight
        self._wild: dict[_Key, dict[str, list[_Use]]] | None = None  # by key, then mode
        self._history: dict[str, list[_Use]] | None = None
        # the position of the last write of each wildcard key: a later use of that same key
        # meets only it and what came after it (what came before, the write is after), not
        # every earlier use: 2,000 calls writing 'file:{path}' with a ref path got an edge
        # from each of those before them, 2 million, and took 33 s to analyse
        self._wild_writes: dict[_Key, int] = {}
        self._last_barrier: int | None = None
        self._since: list[int] = []  # nodes since the last barrier
        self._maps: dict[int, _Builder] = {}  # a map's position -> what its items meet

    @classmethod
    def resume(cls, graph: Graph, map_of: Callable[[int], int] | None = None) -> _Builder:
        """A builder that continues ``graph`` (sharing its lists), to grow it.

        ``map_of(pos)``: the position of the map whose item the node at ``pos`` is (-1: none),
        for a graph that has maps' items; their footprints meet only their map's other items.
        """
        b = cls.__new__(cls)  # not cls([]): its lists would be replaced by the graph's at once
        b._own()
        b._share(graph)
        for i in graph.position.values():
            within = -1 if map_of is None else map_of(i)
            order = b if within < 0 else b._items_of(within)
            order.footprint(i, with_edges=False)
            order.barrier(i, with_edges=False)
        return b

    @property
    def graph(self) -> Graph | None:
        """The graph this builder grows, if it grows one (and it is still alive)."""
        return None if self._graph is None else self._graph()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Builder:
        """A copy that grows the copy of its graph, not the original.

        ``deepcopy`` keeps a weak reference as it is: the copy would keep the original's edge
        list current instead of its own.
        """
        copied = _Builder.__new__(_Builder)
        memo[id(self)] = copied
        for name, value in vars(self).items():
            setattr(copied, name, copy.deepcopy(value, memo))
        graph = self.graph
        if graph is not None:
            copied._graph = weakref.ref(memo.get(id(graph), graph))
        return copied

    def _share(self, graph: Graph) -> None:
        self._graph = weakref.ref(graph)
        self.nodes, self.position, self.preds, self.succs, self.extra = (
            graph.nodes, graph.position, graph.preds, graph.succs, graph.extra)

    def extend(self, node: Node, within: int | None = None) -> int:
        """Append ``node`` and every edge it gets from the nodes before it.

        An item of the map at position ``within`` meets only that map's earlier items: among
        the other nodes the map stands for its items (its footprint, with the item still
        unknown, covers theirs; it is a barrier if they are; it ends after them). Edges from
        nodes added after the map would make it wait for its own items.
        """
        nodes, position, preds, succs = self.nodes, self.position, self.preds, self.succs
        i = len(nodes)
        if node.index == i:  # the same int object as the node's index: a large run keeps one
            i = node.index
        nodes.append(node)
        position[node.id] = i
        grown = self._graph  # (the graph property, without its call: every node passes here)
        graph = grown() if grown is not None else None
        if graph is not None and graph.listed is not None:
            graph.listed += hard_edges(node)
        refs = node.refs
        source = position[refs[0].node] if len(refs) == 1 and not node.after else i
        if source != i:  # a chain's or a fan-out's node: one link (link's work, inlined)
            preds.append(self._one(source))  # (read before: the new node has no entry yet)
            succs.append(())
            after = succs[source]
            if isinstance(after, tuple):
                succs[source] = (*after, i) if len(after) < _SHORT else [*after, i]
            else:
                after.append(i)
        else:
            preds.append(())
            succs.append(())
            if refs or node.after:
                self.data_and_after(i)
        order = self if within is None else self._items_of(within)
        policy = node.tool.policy
        if policy.reads or policy.writes or policy.merges:
            order.footprint(i)
        if policy.exclusive or order._last_barrier is not None:
            order.barrier(i)
        else:  # what barrier() does for most nodes: no barrier before it, none itself
            order._since.append(i)
        return i

    def _items_of(self, map_pos: int) -> _Builder:
        """The footprints and barriers of one map's items, kept apart from the others'."""
        found = self._maps.get(map_pos)
        if found is None:
            found = self._maps[map_pos] = _Builder([])
            found.nodes, found.position, found.preds, found.succs, found.extra = (
                self.nodes, self.position, self.preds, self.succs, self.extra)
            found._graph, found._seen = self._graph, self._seen
        return found

    def add(self, source: int, target: int, kind: EdgeKind, detail: str) -> None:
        """A resource or barrier edge (data and after edges: :meth:`link` alone)."""
        if source == target:
            return
        edge = Edge(self.nodes[source].id, self.nodes[target].id, kind, detail)
        self.extra.append(edge)
        graph = self.graph
        if graph is not None and graph.listed is not None:
            graph.listed.append(edge)
        self.link(source, target)

    def link(self, source: int, target: int) -> None:
        """Note that ``target`` waits for ``source`` (once, however many reasons it has)."""
        if source == target:
            return
        preds = self.preds[target]
        if isinstance(preds, tuple):
            if source in preds:
                return
            self.preds[target] = (self._one(source) if not preds else (*preds, source)
                                  if len(preds) < _SHORT else [*preds, source])
        else:
            seen = self._seen.get(target)
            if seen is None:
                seen = self._seen[target] = set(preds)
            if source in seen:
                return
            seen.add(source)
            preds.append(source)
        succs = self.succs[source]
        if isinstance(succs, tuple):
            self.succs[source] = (*succs, target) if len(succs) < _SHORT else [*succs, target]
        else:
            succs.append(target)

    def _one(self, source: int) -> Adjacency:
        """``(source,)``: a tuple of the graph's own if one is at hand, else a new one.

        A chain's node waits for the one before it, whose only successor it is, and each node
        of a fan-out waits for its hub alone: their 1-tuples are equal, so they share one
        (found in two lookups, never searched for), which a large plan notices.
        """
        succs = self.succs[source]
        if succs:  # a sibling waiting for ``source`` alone has it
            sibling = self.preds[succs[-1]]
            if len(sibling) == 1 and isinstance(sibling, tuple):
                return sibling
        before = self.preds[source]
        if len(before) == 1:  # ``source``'s own predecessor, if ``source`` is all that follows it
            shared = self.succs[before[0]]
            if len(shared) == 1 and isinstance(shared, tuple):
                return shared
        return (source,)

    def data_and_after(self, i: int) -> None:
        node = self.nodes[i]
        position = self.position
        for ref in node.refs:
            self.link(position[ref.node], i)
        for dep in node.after:
            self.link(position[dep], i)

    def footprint(self, i: int, *, with_edges: bool = True) -> None:
        """Resource edges from earlier nodes whose footprints meet this node's."""
        node = self.nodes[i]
        policy = node.tool.policy
        if not policy.reads and not policy.writes and not policy.merges:
            return
        history, wild = self._history, self._wild
        if history is None or wild is None:  # the first footprint
            history, wild = _by_mode(), {}
            self._history, self._wild = history, wild
        defaults = node.tool.defaults
        uses = [(render_key(t, node.args, defaults), "reads") for t in policy.reads]
        uses += [(render_key(t, node.args, defaults), "writes") for t in policy.writes]
        uses += [(render_key(t, node.args, defaults), "merges") for t in policy.merges]
        for key, mode in uses:
            if with_edges:
                self._wild_meets(i, key, mode)
            if not key.wild:
                self._exact_use(i, key, mode, with_edges)
            else:
                found = wild.get(key)
                if found is None:
                    found = wild[key] = _by_mode()
                found[mode].append((key, i, mode))
                if mode == "writes":
                    self._wild_writes[key] = i
            history[mode].append((key, i, mode))

    def _wild_meets(self, i: int, key: _Key, mode: str) -> None:
        """Resource edges to node ``i``'s use of ``key`` where a wildcard is on either side.

        A wildcard meets every earlier use; an exact key, the earlier wildcards it may be.
        Of the uses of one wildcard key, only its last write and what came after it: that
        write comes after the uses before it, whatever they are.
        """
        assert self._history is not None and self._wild is not None
        if key.wild:
            self._exact_met(i, key, mode)
            since = self._wild_writes.get(key, 0)
            pairs = [(k, uses, since) for k, uses in self._wild.items() if key.meets(k)]
        else:
            pairs = [(k, uses, self._wild_writes.get(k, 0)) for k, uses in self._wild.items()
                     if key.meets(k)]
        for _, uses, since in pairs:
            for other_key, j, other_mode in _clashing(uses, mode, since):
                if key.meets(other_key):
                    self.add(j, i, "resource", f"{other_mode} {other_key} / {mode} {key}")

    def _exact_met(self, i: int, key: _Key, mode: str) -> None:
        """Resource edges to node ``i``'s wildcard use of ``key`` from the exact keys it meets.

        As a use of each such key in that mode would get them (see :meth:`_exact_use`): from
        its last write, and the reads and merges since that clash with ``mode``, not from
        every earlier use: the earlier ones come before that write. n writes of one key and
        then n wildcard reads over it made n * n edges (minutes at n = 5,000), now n + n.
        Uses before the last write of ``key`` itself are ordered by that write.
        """
        since = self._wild_writes.get(key, 0)
        found: list[tuple[int, str, _Key]] = []
        for exact, j in self._last_writer.items():
            if j >= since and key.meets(exact):
                found.append((j, "writes", exact))
        for other_mode, by_key in (("reads", self._readers), ("merges", self._mergers)):
            if not _clash(mode, other_mode):
                continue
            for exact, users in by_key.items():
                if users and key.meets(exact):
                    found += [(j, other_mode, exact) for j in users if j >= since]
        for j, other_mode, exact in sorted(found, key=_FIRST):
            self.add(j, i, "resource", f"{other_mode} {exact} / {mode} {key}")

    def _exact_use(self, i: int, key: _Key, mode: str, with_edges: bool) -> None:
        """Order node ``i``'s use of ``key`` after the earlier uses it clashes with."""
        if with_edges and key in self._last_writer:
            self.add(self._last_writer[key], i, "resource", f"writes {key} / {mode} {key}")
        if mode == "writes":
            if with_edges:
                for r in self._readers.get(key, ()):
                    self.add(r, i, "resource", f"reads {key} / writes {key}")
                for m in self._mergers.get(key, ()):
                    self.add(m, i, "resource", f"merges {key} / writes {key}")
            self._last_writer[key] = i
            self._readers[key], self._mergers[key] = [], []
            self._open.pop(key, None)
            return
        reading = mode == "reads"
        (self._readers if reading else self._mergers).setdefault(key, []).append(i)
        state = self._open.get(key)
        if state is None:
            state = self._open[key] = _Open()
        mine, others = (state.reads, state.merges) if reading else (state.merges, state.reads)
        if with_edges:
            before, after = ("merges", "reads") if reading else ("reads", "merges")
            for j in others:
                self.add(j, i, "resource", f"{before} {key} / {after} {key}")
        node = self.nodes[i]
        # A read waits for the merges since the last write, and a merge for the reads; but
        # not directly for those a use it waits for waits for: reads and merges taking turns
        # on one key (10,000 of them) got an edge from every earlier use of the other mode,
        # 25 million, where they now get one or two each. Only through uses that cannot end
        # before what they wait for has: a use that needs another node's result (a ref, an
        # ``after``) is skipped at once if that node fails, and what waits for it goes on.
        solid = not node.refs and not node.after
        mark = state.read_mark if reading else state.merge_mark
        if solid and mark is not None:
            # a solid use of the other mode came after the solid use of this mode that marked
            # ``mark`` (and waited for it): the uses of this mode before that one come before
            # it, so before whatever waits for it (every later use of the other mode does)
            del mine[:mark]
        mine.append(i)
        if solid:  # the uses of the other mode before it all come before it
            if reading:
                state.read_mark, state.merge_mark = None, len(others)
            else:
                state.merge_mark, state.read_mark = None, len(others)

    def barrier(self, i: int, *, with_edges: bool = True) -> None:
        """Exclusive tools order everything before and after them."""
        node = self.nodes[i]
        if self._last_barrier is not None and with_edges:
            self.add(self._last_barrier, i, "exclusive",
                     f"{self.nodes[self._last_barrier].id} is exclusive")
        if node.tool.policy.exclusive:
            if with_edges:
                for j in self._since:
                    self.add(j, i, "exclusive", f"{node.id} is exclusive")
            self._since = []
            self._last_barrier = i
        else:
            self._since.append(i)


@dataclass(slots=True)
class _Open:
    """Of one exact key since its last write: the reads a merge must wait for, and the merges.

    ``merge_mark``: after a solid read (one that needs no other node's result),
    how many of ``merges`` came before it; ``read_mark`` the same of ``reads`` after a solid
    merge. Once a solid use of the other mode follows it, those can go: it orders them.
    """

    reads: list[int] = field(default_factory=list)
    merges: list[int] = field(default_factory=list)
    read_mark: int | None = None
    merge_mark: int | None = None


def _topological(plan: Plan) -> list[Node]:
    """Nodes ordered by hard edges (data, after), ties broken by plan order."""
    nodes = plan.nodes
    if plan.points_back():
        return nodes  # every hard edge points back in plan order: it is topological already
    ids = {n.id for n in nodes}
    preds = {n.id: (hard_predecessors(n) & ids) if (n.refs or n.after) else set() for n in nodes}
    succs: dict[str, list[Node]] = {n.id: [] for n in nodes}
    indegree: dict[str, int] = {}
    for node in nodes:
        indegree[node.id] = len(preds[node.id])
        for p in preds[node.id]:
            succs[p].append(node)
    heap = [(n.index, n.id) for n in nodes if indegree[n.id] == 0]
    heapq.heapify(heap)
    by_id = {n.id: n for n in nodes}
    order: list[Node] = []
    while heap:
        _, nid = heapq.heappop(heap)
        order.append(by_id[nid])
        for s in succs[nid]:
            indegree[s.id] -= 1
            if indegree[s.id] == 0:
                heapq.heappush(heap, (s.index, s.id))
    return order


def _clash(mode: str, other: str) -> bool:
    """Whether two uses of one key keep plan order: all but two reads, or two merges."""
    return mode != other or mode == "writes"


_MODES = ("reads", "writes", "merges")


def _by_mode() -> dict[str, list[_Use]]:
    return {mode: [] for mode in _MODES}


def _clashing(uses: dict[str, list[_Use]], mode: str, since: int = 0) -> Iterable[_Use]:
    """The uses of the modes that clash with ``mode`` from position ``since`` on, in order."""
    lists = []
    for other in _MODES:
        found = uses[other]
        if found and _clash(mode, other):
            start = bisect.bisect_left(found, since, key=_POSITION) if since else 0
            if start < len(found):
                lists.append(found if start == 0 else found[start:])
    if len(lists) == 1:
        return lists[0]
    return heapq.merge(*lists, key=_POSITION)


_POSITION = itemgetter(1)  # of a use: the node's position
_FIRST = itemgetter(0)


def analyze(plan: Plan) -> Graph:
    """The dependency graph of a valid plan (call :meth:`Plan.validate` first); cached per plan.

    Anything but a :class:`~shoal.plan.Plan` is refused with a :class:`ConfigError`.
    """
    if not isinstance(plan, Plan):
        raise ConfigError(f"analyze takes a shoal.Plan, got {type(plan).__name__} "
                          f"{shown(plan)}")
    return plan.memo("graph", lambda: _analyze(plan))


def _analyze(plan: Plan) -> Graph:
    if not len(plan):  # an open run as it opens (one per agent of a swarm): the shared graph
        return _NO_NODES
    if len(plan) <= 1:  # no edges to find (an agent's model turn, an open run as it opens)
        nodes = plan.nodes
        return Graph(nodes, {n.id: 0 for n in nodes}, [()] * len(nodes), [()] * len(nodes),
                     [], len(nodes))
    builder = _Builder(_topological(plan))
    positions = builder.position.values()  # in node order; the ints the graph keeps
    nodes, position, link = builder.nodes, builder.position, builder.link
    for i, node in zip(positions, nodes, strict=True):  # in passes, so the edges come in the
        if node.refs or node.after:  # same order as ever (Builder.data_and_after, inlined: a
            for ref in node.refs:  # large plan has a million nodes, most with no edge)
                link(position[ref.node], i)
            for dep in node.after:
                link(position[dep], i)
    # a pass that finds nothing is skipped: most plans have no footprints or no exclusive tool
    # (tools compare by identity: the set is made at C speed; a plan has few of them)
    policies = {id(t.policy): t.policy for t in set(map(attrgetter("tool"), nodes))}.values()
    if any(p.reads or p.writes or p.merges for p in policies):
        for i in positions:
            builder.footprint(i)
    if any(p.exclusive for p in policies):
        for i in positions:
            builder.barrier(i)
    return Graph(builder.nodes, builder.position, builder.preds, builder.succs, builder.extra,
                 len(builder.nodes))


#: The graph of every empty plan (an open run's, as it opens): read, forked, never grown.
_NO_NODES = Graph([], {}, [], [], [], 0)
EMPTY_GRAPH = _NO_NODES  #: (the same, for the runtime: an empty plan needs no analysis)
