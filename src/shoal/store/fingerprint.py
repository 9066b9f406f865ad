"""A plan's fingerprint, so resume can tell that the plan changed since the run started.

:func:`describe_plan` records, per node, its tool's name, a digest of the tool's argument
schema, a digest of its arguments (refs included) and its ``after`` list, plus a digest of
every dependency edge. The tools' code is deliberately left out: fixing the bug that made a
call fail and resuming is what resume is for. :func:`plan_differences` compares two
descriptions and says what differs, in words.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from shoal._pydantic import to_jsonable_python
from shoal.deps import Graph
from shoal.plan import Ref
from shoal.tools import Tool

__all__ = [
    "FORMAT", "LazyDescription", "canonical", "describe_plan", "fingerprint", "plan_differences",
]

FORMAT = 1  # bump when the description's shape changes
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # made once: dumps() is slow
_FLAT = (str, int, float, bool, type(None))
#: The most containers :func:`canonical` converts for an argument digest (about 0.3 s): past
#: them, the exact digest, which visits each container once however often it appears.
_CONVERTED = 100_000


def _digest(data: Any) -> str:
    return _hash(_ENCODER.encode(data))


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _args_digest(args: Mapping[str, Any]) -> str:
    """A digest of a node's arguments; flat arguments (the common case) skip JSON.

    Arguments nested too deep for :func:`canonical`, holding themselves, holding an integer
    too long to write out, or expanding past :data:`_CONVERTED` containers (shared parts count
    each time they appear) are digested exactly instead (iteratively, each container once,
    sets sorted).
    """
    try:
        if all(type(v) in _FLAT for v in args.values()):
            return _hash(repr(sorted(args.items())))  # reprs of these types are stable
        return _digest(_convert(args, [_CONVERTED]))
    except (RecursionError, ValueError):  # ValueError: an int past the limit on its digits,
        # or a value that expands past _CONVERTED (shared parts: a list [x, x] of [y, y] ...
        # of 60 levels has 2**60 paths; converting it never ended, nor did the run's start)
        from shoal.approvals.ledger import exact_digest  # iterative; imports the store

        return "x" + exact_digest(dict(args))[:16]


def canonical(value: Any) -> Any:
    """``value`` as JSON data that is equal across processes for equal values.

    Sets are sorted (their order changes with string hashing), refs become ``"$ref:$a.b"``,
    and objects JSON cannot hold become their type's name: a repr often holds a memory
    address, which would make every process see a different plan.
    """
    return _convert(value, None)


class _TooManyItems(ValueError):
    """A value expands to more containers than :func:`_convert` was given to visit."""


def _convert(value: Any, left: list[int] | None) -> Any:
    """:func:`canonical`, visiting at most ``left[0]`` containers (``None``: any number).

    Each container it enters takes one from ``left`` (a shared one each time it appears, as
    the JSON copies it); past the last, :class:`_TooManyItems`.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Ref):
        return f"$ref:{value!r}"
    if left is not None and isinstance(value, Mapping | list | tuple | set | frozenset):
        left[0] -= 1
        if left[0] < 0:
            raise _TooManyItems
    if isinstance(value, Mapping):
        return {str(k): _convert(v, left) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_convert(v, left) for v in value]
    if isinstance(value, set | frozenset):
        items = [_convert(v, left) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    try:
        converted = to_jsonable_python(value, fallback=_type_name)
    except Exception:
        return _type_name(value)
    return converted if isinstance(converted, str) else _convert(converted, left)


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__}>"


def describe_plan(graph: Graph) -> dict[str, Any]:
    """What resume compares: each node's tool, signature, arguments and ``after``; the edges.

    ``nodes`` maps each id to ``[tool, schema digest, arguments digest, after]``, in plan
    order; ``edge_list`` holds every edge as ``[source, target, kind, detail]``.
    """
    schemas: dict[int, str] = {}
    nodes: dict[str, list[Any]] = {}
    planned = graph.nodes[:graph.static_count]  # not the nodes a run added (a map's items)
    for node in planned:
        nodes[node.id] = [node.tool.name, _schema_digest(node.tool, schemas),
                          _args_digest(node.args), sorted(node.after) if node.after else []]
        if node.map is not None:
            nodes[node.id].append(["map", node.map.item_arg, node.map.partial])
    static = graph.position if len(planned) == len(graph.nodes) else nodes
    edges = sorted((e.source, e.target, e.kind, e.detail) for e in graph.edges
                   if e.target in static)
    # the digest leaves out the reasons' wording, which may change between shoal versions
    return {"format": FORMAT, "nodes": nodes, "edges": _digest([e[:3] for e in edges]),
            "edge_list": edges}


class LazyDescription(Mapping[str, Any]):
    """:func:`describe_plan` worked out on first use.

    For stores that never leave the process (a memory store): most runs are never resumed,
    so they need not pay for describing their plan.
    """

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self._data: dict[str, Any] | None = None

    def _described(self) -> dict[str, Any]:
        if self._data is None:
            self._data = describe_plan(self._graph)
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._described()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._described())

    def __len__(self) -> int:
        return len(self._described())


#: schema digests by the arguments model they were rendered from (a tool's bound copies share
#: it): pydantic renders a schema in about a millisecond, and an agent describes a plan for
#: each of its turns and tool phases whenever its journal may be read in another process
_SCHEMAS: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()


def _schema_digest(tool: Tool[..., Any], cache: dict[int, str]) -> str:
    known = cache.get(id(tool))
    if known is None:
        model = getattr(tool, "_model", None)
        known = _SCHEMAS.get(model) if isinstance(model, type) else None
        if known is None:
            try:
                schema: Any = tool.json_schema()
            except Exception:  # a schema pydantic cannot render: its parameter names count
                schema = sorted(tool.parameters)
            known = _digest(schema)
            if isinstance(model, type):
                _SCHEMAS[model] = known
        cache[id(tool)] = known
    return known


def fingerprint(description: Mapping[str, Any]) -> str:
    """One hash of a whole plan description."""
    return _digest(description)


def plan_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What changed from ``old`` to ``new`` (empty when nothing did), one line per change."""
    if old.get("format") != new.get("format"):
        return [f"the run was journaled by a shoal with plan format {old.get('format')}, this "
                f"one writes format {new.get('format')}"]
    before: Mapping[str, list[Any]] = old.get("nodes", {})
    after: Mapping[str, list[Any]] = new.get("nodes", {})
    found = [f"node {nid!r} was removed" for nid in before if nid not in after]
    found += [f"node {nid!r} was added" for nid in after if nid not in before]
    for nid, was in before.items():
        now = after.get(nid)
        if now is not None and list(now) != list(was):
            found.append(f"node {nid!r}: {_node_change(list(was), list(now))}")
    if not found and old.get("edges") != new.get("edges"):
        found.append("the dependency edges changed (resource footprints, exclusive tools)")
    return found


def _node_change(was: list[Any], now: list[Any]) -> str:
    tool, schema, args, after = was
    if now[0] != tool:
        return f"tool changed from {tool!r} to {now[0]!r}"
    parts = []
    if now[1] != schema:
        parts.append(f"tool {tool!r} takes different arguments now")
    if now[2] != args:
        parts.append("arguments changed")
    if now[3] != after:
        parts.append(f"'after' changed from {after} to {now[3]}")
    return "; ".join(parts)
