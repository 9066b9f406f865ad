"""Plans: a DAG of tool calls whose arguments may refer to other calls' outputs.

A :class:`Ref` stands for the output of a node, or a field or item of it (``ref["field"]``,
``ref[0]``); refs may sit anywhere inside an argument (in lists, tuples and dicts). A
:class:`Plan` collects nodes in order and :meth:`Plan.validate` reports every problem at once
as a :class:`~shoal.exceptions.PlanError`. Plan files and LLMCompiler-style plan text are read
by :mod:`shoal.planfile` and :mod:`shoal.plantext`.
"""

from __future__ import annotations

import itertools
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar, cast

from shoal.exceptions import (
    ArgumentTypeError,
    ConfigError,
    PlanError,
    PlanProblem,
    ToolArgumentError,
    ToolDefinitionError,
)
from shoal.merge import error_text, shown
from shoal.nodeids import check_node_id, plain_text
from shoal.tools import Tool, not_a_function, tool

__all__ = ["MapSpec", "Node", "Plan", "Ref", "each_item", "find_refs", "foreign_ref", "map_spec",
           "owned_ref"]

PathPart = str | int
T = TypeVar("T")


#: Whether a :class:`Ref` was ever hashed in this process (put in a set, or made a dict key):
#: until then no dict of any call's arguments can have one as a key (see _refuse_ref_keys).
_ref_hashed = False


class Ref:
    """The output of a plan node, or a part of it reached through ``[key]`` steps.

    A ref returned by a plan (or an open run) knows which one made it: used in another, where
    a node may have the same id (``search#1``), it is refused rather than read that node's
    output. One made by hand (``Ref("a")``, a plan file's ``$a``) names an id in any plan.
    """

    __slots__ = ("_plan", "node", "path")

    def __init__(self, node: str, path: tuple[PathPart, ...] = ()) -> None:
        if type(node) is not str:  # an id is compared, hashed and written out wherever it goes
            node = _ref_node(node)
        if type(path) is not tuple:
            raise ArgumentTypeError(f"Ref(..., path) takes a tuple of field names and indexes, "
                                    f"got {type(path).__name__} {shown(path)}")
        self.node = node
        self.path = path
        self._plan = 0  # the serial number of the plan that made it (0: none, made by hand)

    def __getitem__(self, key: PathPart) -> Ref:
        if type(key) is not str and (type(key) is not int or not -_MAX_INDEX <= key <= _MAX_INDEX):
            key = _path_step(self, key)  # a field or an index, as refs read
        ref = Ref(self.node, (*self.path, key))
        ref._plan = self._plan
        return ref

    def __iter__(self) -> NoReturn:
        # Without this, __getitem__ would make every Ref an endless iterator ($a[0], $a[1] ...)
        raise TypeError(f"{self!r} is not iterable: it stands for a future result; index it "
                        f"instead ({self!r}[0], {self!r}['field'])")

    def __repr__(self) -> str:
        tail = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in self.path)
        return f"${self.node}{tail}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and (self.node, self.path) == (other.node, other.path)

    def __hash__(self) -> int:
        global _ref_hashed
        _ref_hashed = True  # it may be a dict key from now on: find_refs looks at keys too
        return hash((self.node, self.path))

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self!r} is a reference to a future result, not a value; it has no truth value "
            "until the plan runs"
        )

    def pick(self, value: Any) -> Any:
        """Follow this ref's path into ``value`` (the node's output).

        A step is a key of a mapping, an index of a sequence, or a field of another object
        (a pydantic model, a dataclass, a plain object's attribute); methods and names starting
        with ``_`` are not fields, so ``$a.count`` on a list is an error, not ``list.count``.
        Raises :class:`LookupError` naming the ref when a step leads nowhere.
        """
        for part in self.path:
            if isinstance(value, Mapping):
                try:
                    value = value[part]
                except KeyError:  # still a KeyError (a LookupError), saying which ref and keys
                    raise KeyError(f"{self!r}: no key {part!r} in a mapping with keys "
                                   f"[{_some_keys(value)}]") from None
            elif isinstance(part, int) and isinstance(value, Sequence):
                try:
                    value = value[part]
                except IndexError:
                    raise IndexError(f"{self!r}: no item {part} in a {type(value).__name__} "
                                     f"of {len(value)} items") from None
            elif isinstance(part, str) and _has_field(value, part):
                value = getattr(value, part)
            else:
                kind = type(value).__name__
                raise LookupError(f"{self!r}: no {part!r} in a value of type {kind}")
        return value


_MAX_INDEX = sys.maxsize  # no list has an item past it (and its index can be written out)
_KEYS_SHOWN = 20  # the keys of a mapping a ref's missing key is said to be missing from


def _some_keys(mapping: Mapping[Any, Any]) -> str:
    """The first keys of ``mapping``, for an error; never raises (but on Ctrl-C).

    The mapping is a tool's output: its keys' own ``__repr__`` may raise, or call
    ``sys.exit()``, and it may hold millions of keys (only the first are read).
    """
    try:
        keys = list(itertools.islice(mapping, _KEYS_SHOWN + 1))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # its own __iter__
        return f"that cannot be listed ({error_text(exc)})"
    more = ", ..." if len(keys) > _KEYS_SHOWN else ""
    return ", ".join(shown(k) for k in keys[:_KEYS_SHOWN]) + more

_serials = itertools.count(1)  # each plan's serial number, which the refs it makes carry


def owned_ref(node_id: str, plan: int) -> Ref:
    """A ref to ``node_id`` made by the plan whose serial number is ``plan``."""
    ref = Ref(node_id)
    ref._plan = plan
    return ref


def foreign_ref(ref: Ref, node_id: str = "") -> PlanProblem:
    """The problem of a ref (in an argument, or ``after=``) that another plan or run made."""
    return PlanProblem("foreign_ref", (
        f"{ref!r} was made by another plan or open run (its node {ref.node!r} is that one's); "
        f"a ref only stands for a node of the plan that made it, even where this one has a node "
        f"of the same id. Use a ref this plan returned, or pass the other run's value (await "
        f"it, or read its result) as a plain value; to name this plan's node {ref.node!r} on "
        f"purpose (a node moved here from another plan), write Ref({ref.node!r})"), node_id)


def _ref_node(node: object) -> str:
    """A ref's node id given as other than a plain ``str``: a subclass's text, else refused."""
    if isinstance(node, str):
        return plain_text(node)
    raise ArgumentTypeError(f"a Ref names a node by its id (text), got {type(node).__name__} "
                            f"{shown(node)}; refs come from plan.call(...) or Ref('node-id')")


def _path_step(ref: Ref, key: object) -> PathPart:
    """A step ``ref[key]`` may take that is no plain ``str`` or small ``int``, or raise why not."""
    if isinstance(key, str):
        return plain_text(key)
    if type(key) is int:  # an index past any list's end: its text may not even exist
        raise ConfigError(f"{ref!r}[...]: index {shown(key)} is past the end of any list; an "
                          f"index is at most {_MAX_INDEX} either way")
    raise ArgumentTypeError(f"{ref!r}[...] takes a field name or an index, got "
                            f"{type(key).__name__} {shown(key)}")


def _has_field(value: Any, name: str) -> bool:
    """Whether ``name`` is a data attribute of ``value`` that a ref may step into."""
    if name.startswith("_") or isinstance(value, (Sequence, Mapping, str, bytes, bytearray)):
        return False
    try:
        found = getattr(value, name)
    except AttributeError:
        return False
    if not callable(found):
        return True
    # a callable is a field only when declared as one (a dataclass or pydantic field)
    declared = getattr(type(value), "__dataclass_fields__", None) or getattr(
        type(value), "__pydantic_fields__", None) or {}
    return name in declared


_WALKED = (list, tuple, set, frozenset)  # a tuple, not a union: isinstance is twice as fast
_ONE_NODE = (Ref, str)


def _after_id(step: object, plan: Plan) -> str:
    """The id of one node ``after=`` names: a ref's node, or an id (text, nothing else).

    A ref that another plan (or open run) made is a :class:`PlanError` (``foreign_ref``).
    """
    if isinstance(step, Ref):
        if step._plan and step._plan != plan.serial:
            raise PlanError([foreign_ref(step)], plan.name)
        return step.node
    if isinstance(step, str):
        return plain_text(step)
    raise ArgumentTypeError(f"after= takes refs and node ids (text), got {type(step).__name__} "
                            f"{shown(step)}")
_ITEM_ID = re.compile(r"(.*)\[\d+\]", re.DOTALL)  # "m[3]": the id of an item of map "m"


def find_refs(value: Any) -> list[Ref]:
    """Every :class:`Ref` inside ``value`` (walking lists, tuples, sets and dict values).

    Subclasses (``OrderedDict``, ``defaultdict``, named tuples ...) are walked too; the
    scheduler's ``resolve_arguments`` rebuilds exactly the containers walked here.
    """
    if _ref_hashed:  # a ref may be a dict key: see _refuse_ref_keys
        return _find_refs_tracked(value, keys=True)
    found: list[Ref] = []
    stack = [value]
    # past this many items, a value may hold itself or share its parts ([x] * 9 nine levels
    # deep: 9**9 items walked so, 81 tracked): walk it tracked. Items, not containers: each
    # of a million lists of nine strings was as cheap to count, and took seconds to walk
    left = _ITEMS_UNTRACKED
    while stack:
        item = stack.pop()
        if isinstance(item, Ref):
            found.append(item)
        elif isinstance(item, dict):
            size = len(stack)  # the items pushed, counted on the stack: no __len__ of theirs
            stack.extend(item.values())
            left -= len(stack) - size + 1
            if left < 0:
                return _find_refs_tracked(value)
        elif isinstance(item, _WALKED):
            size = len(stack)
            stack.extend(item)
            left -= len(stack) - size + 1
            if left < 0:
                return _find_refs_tracked(value)
    return found


_ITEMS_UNTRACKED = 100_000  # a few hundredths of a second of walking


def _find_refs_tracked(value: Any, *, keys: bool = False) -> list[Ref]:
    """:func:`find_refs` walking each container once (one holding itself would never end).

    ``keys``: each dict's keys are checked too (see :func:`_refuse_ref_keys`).
    """
    found: list[Ref] = []
    stack = [value]
    walked: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, Ref):
            found.append(item)
        elif isinstance(item, dict):
            if id(item) not in walked:
                walked.add(id(item))
                stack.extend(item.values())
                if keys and not _NO_REFS.issuperset(map(type, item)):
                    _refuse_ref_keys(item)
        elif isinstance(item, _WALKED) and id(item) not in walked:
            walked.add(id(item))
            stack.extend(item)
    return found


_NO_REFS = frozenset({int, str, float, bool, bytes, type(None)})  # values that hold no ref


def _refuse_ref_keys(mapping: dict[Any, Any]) -> None:
    """Raise a :class:`PlanError` if a key of ``mapping`` is, or holds, a :class:`Ref`.

    Refs are resolved in values only (the scheduler rebuilds a dict's values, not its keys):
    such a key would reach the tool as the ref itself. Looking at every key of every dict
    of every call's arguments would cost a dict-heavy plan a third of its time, so keys are
    looked at only once a ref has been hashed in this process (a ref is hashed as it becomes
    a key; shoal's own code never hashes one): see :meth:`Ref.__hash__`.
    """
    for key in mapping:
        if type(key) in _NO_REFS:
            continue
        if isinstance(key, Ref) or (isinstance(key, _WALKED) and find_refs(key)):
            raise PlanError([PlanProblem("bad_arguments", (
                f"a ref is a dict key ({shown(key)}): refs are filled in only where they are "
                "values (of a dict, a list, a tuple, a set), never in keys; pass the pairs as "
                "a list of [key, value] items, or let a tool build the dict"))])


def _refs_in(arguments: dict[str, Any]) -> tuple[Ref, ...]:
    """The refs in a call's arguments; no walk when every value is a plain scalar or a ref.

    In :func:`find_refs`'s order (the arguments' refs last to first), which the node keeps.
    """
    found: list[Ref] | None = None
    for value in arguments.values():
        kind = type(value)
        if kind is Ref:  # a chain's or a fan-out's argument: the ref itself
            if found is None:
                found = [value]
            else:
                found.insert(0, value)
        elif kind not in _NO_REFS:
            return tuple(find_refs(arguments))
    return () if found is None else tuple(found)


def _holds_refs(value: Any) -> bool:
    """Whether ``value`` is a :class:`Ref` or holds one (``bool(find_refs(value))``, sooner)."""
    if isinstance(value, Ref):
        return True
    return isinstance(value, (dict, *_WALKED)) and bool(find_refs(value))


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What makes a node a map: which argument gets each item, and whether failures are kept.

    A map node's ``args`` hold the list ref under ``item_arg``; when that list is known the
    scheduler adds one node per item (``id[0]``, ``id[1]`` ...) with the item in its place,
    and the map node's value is their values, in item order.
    """

    item_arg: str
    partial: bool = False


@dataclass(slots=True, eq=False)
class Node:
    """One call in a plan: a tool, its arguments (refs allowed), explicit ``after`` ids."""

    id: str
    tool: Tool[..., Any]
    args: dict[str, Any]
    after: tuple[str, ...] = ()
    index: int = 0
    refs: tuple[Ref, ...] = field(default=())
    checked: dict[str, Any] | None = None  # validated args of a ref-free node, set by validation
    map: MapSpec | None = None  # set for plan.map nodes (see MapSpec)

    @property
    def needs(self) -> frozenset[str]:
        """Ids of the nodes whose outputs this node's arguments use."""
        return frozenset(r.node for r in self.refs)


_wrapped: dict[Callable[..., Any], Tool[..., Any]] = {}


class NodeMaker(Protocol):
    """Something a plan runs as one node through a tool of its own: an agent, a pattern."""

    def __shoal_node__(self) -> Tool[..., Any]:
        """The tool that runs this object as a plan node."""
        ...


Callee = Tool[..., Any] | Callable[..., Any] | NodeMaker


def as_tool(obj: Callee) -> Tool[..., Any]:
    """``obj`` if it is a tool, else a tool made of the plain function (made once per function).

    An object whose type has ``__shoal_node__`` (an :class:`~shoal.Agent`, a pattern of
    :mod:`shoal.patterns`) is run by the tool that method returns (cached by the object).
    """
    if isinstance(obj, Tool):
        return obj
    if obj is None:  # tool(None) would be a decorator waiting for its function, not a tool
        raise ToolDefinitionError("a tool wraps a function, got None")
    if not callable(obj) and getattr(type(obj), "__shoal_node__", None) is None:
        # a list, a dict: not even a key of the cache below (unhashable)
        raise not_a_function(obj)
    made = _wrapped.get(obj)  # type: ignore[arg-type]  # a miss for anything not a function
    if made is None:
        node = getattr(type(obj), "__shoal_node__", None)
        if node is not None:
            return _node_tool(obj, node(obj))
        fn = cast(Callable[..., Any], obj)
        made = _wrapped[fn] = tool(fn)
    return made


def _node_tool(obj: object, made: object) -> Tool[..., Any]:
    """What ``obj.__shoal_node__()`` returned, which a plan runs: it must be a :class:`Tool`.

    Anything else failed later, far from the object, as an AttributeError of the scheduler.
    """
    if not isinstance(made, Tool):
        raise ToolDefinitionError(
            f"{type(obj).__name__} {shown(obj)}: its __shoal_node__() returned "
            f"{type(made).__name__} {shown(made)}, not a shoal.Tool; it must return the tool "
            f"that runs the object as a plan node")
    return made


class Plan:
    """An ordered set of nodes forming a DAG; build it with :meth:`call`.

    ``plan.call(tool, **args)`` returns a :class:`Ref` to the new node's output. Reserved
    keywords: ``after`` (ids or refs that must finish first) and ``node_id`` (a chosen id);
    a tool whose own arguments use those names can be called with :meth:`add`.
    """

    def __init__(self, name: str = "") -> None:
        if name is None:  # no name, as the default
            name = ""
        if not isinstance(name, str):  # it is journaled and shown as text: refused here,
            # not as a journal write that fails once the run has started
            raise ConfigError(f"a plan's name must be a str, got {type(name).__name__} "
                              f"{shown(name)}")
        self.name = plain_text(name)
        self.serial = next(_serials)  # carried by the refs this plan makes (see Ref)
        self._nodes: dict[str, Node] = {}
        # nodes added under an id already taken: kept aside (not run, not in ``nodes``) so that
        # validation reports them along with every other problem instead of add() raising
        # rare: none made until the first (a list then: a tuple made anew for each took
        # 5 minutes for a file of 100,000 nodes under one id)
        self._duplicates: list[Node] | tuple[()] = ()
        self._counts: dict[str, int] = {}
        self._memo: dict[str, tuple[int, Any]] = {}
        self._bracketed: dict[str, list[str]] = {}  # "m" -> ids like "m[3]": map items' ids
        # static checks of arguments that are all refs, by tool and names (see _static_check)
        # (by tool, then by the one name, or the names as a tuple: most nodes have one)
        self._static: dict[Tool[..., Any], dict[str | tuple[str, ...], str]] = {}
        # the refs of the last node that had one ref: the nodes of a fan-out all use their
        # hub's ref, and share this tuple (see _shared_refs)
        self._one_ref: tuple[Ref, ...] = ()

    def call(
        self,
        tool: Callee,
        /,
        *,
        after: Ref | str | Iterable[Ref | str] = (),
        node_id: str | None = None,
        **args: Any,
    ) -> Ref:
        """Add a call of ``tool`` with ``args``; return a ref to its output.

        ``after`` is one node (a ref or an id) or several that must finish first.
        """
        # add()'s body: a plan of many small calls spends a good part of its time here. ``args``
        # is a dict made for this call alone: the node keeps it as it is (no copy)
        nodes = self._nodes
        if isinstance(tool, Tool) and not self._duplicates:
            # the usual call, inlined (_make_node, _next_id, _refs_in, insert): a tool, the
            # next id of its name free or a plain id of the caller's that is free (a plan file's,
            # a benchmark's), no after or a list of them. An id like "name#3" cannot be a map
            # item's; one given that could ("m[1]"), or is bad, goes the general way
            new_id: str | None = None
            if node_id is None:
                name = tool.name
                count = self._counts.get(name, 0) + 1
                new_id = f"{name}#{count}"
                if new_id in nodes:  # taken by a node given that id: _make_node finds the next
                    new_id = None
            elif (type(node_id) is str and node_id and "/" not in node_id
                  and not node_id.endswith("]") and node_id not in nodes):
                new_id = node_id
            after_ids: tuple[str, ...] | None = None  # (None: another kind, read the general way)
            if new_id is not None:
                kind = type(after)
                if kind is tuple and not after:
                    after_ids = ()
                elif kind is list or kind is tuple:
                    after_ids = self._listed_after(after)  # type: ignore[arg-type]
            if new_id is not None and after_ids is not None:
                if node_id is None:
                    self._counts[name] = count
                refs: tuple[Ref, ...] = ()
                for value in args.values():
                    if type(value) not in _NO_REFS:
                        refs = self._shared_refs(tuple(find_refs(args)))
                        break
                nodes[new_id] = Node(new_id, tool, args, after_ids, len(nodes), refs)
                return owned_ref(new_id, self.serial)
        node = self._make_node(tool, args, after, node_id, None)
        self._insert(node)
        return owned_ref(node.id, self.serial)

    def add(
        self,
        tool: Callee,
        args: Mapping[str, Any] | None = None,
        *,
        after: Ref | str | Iterable[Ref | str] = (),
        node_id: str | None = None,
    ) -> Ref:
        """Add a call with arguments given as a mapping; return a ref to its output.

        ``after`` is one node (a ref or an id) or several that must finish first. A ``node_id``
        already in the plan is not an error yet: :meth:`validate` reports it together with
        every other problem (the first node keeps the id; the plan cannot run).
        """
        node = self.make_node(tool, args, after=after, node_id=node_id)
        self._insert(node)
        return owned_ref(node.id, self.serial)

    def map(
        self,
        tool: Callee,
        /,
        *,
        over: Ref,
        item_arg: str | None = None,
        partial: bool = False,
        after: Ref | str | Iterable[Ref | str] = (),
        node_id: str | None = None,
        **args: Any,
    ) -> Ref:
        """Call ``tool`` once per item of the list ``over`` stands for; return a ref to the list.

        The list holds the results in item order.

        The calls are made when the list is known, while the plan runs: one node per item,
        ``map-id[0]``, ``map-id[1]`` ..., each with its own outcome, limits and conflict
        analysis, and ``args`` (refs allowed) given to every one. ``item_arg`` names the
        argument that gets the item (default: the tool's one required argument not in
        ``args``). One failed item never loses the others: each keeps its outcome; the map's
        own outcome is ``failed`` (naming the failed items) unless ``partial=True``, which
        makes it ``ok`` with the values of the items that succeeded, in item order.
        """
        resolved = as_tool(tool)
        spec = map_spec(resolved, args, over, item_arg, partial)
        node = self._make_node(resolved, {**args, spec.item_arg: over}, after, node_id, spec)
        self._insert(node)
        return owned_ref(node.id, self.serial)

    def make_node(
        self,
        tool: Callee,
        args: Mapping[str, Any] | None = None,
        *,
        after: Ref | str | Iterable[Ref | str] = (),
        node_id: str | None = None,
        map_spec: MapSpec | None = None,
    ) -> Node:
        """A node for this plan (its id chosen, its refs found), not added yet (:meth:`insert`)."""
        if args is not None and not isinstance(args, Mapping):
            raise ArgumentTypeError(f"args must be a mapping of argument names to values, got "
                            f"{type(args).__name__} {shown(args)}")
        copied = (dict(args) if args else {}) if type(args) is dict or args is None else _read(
            args, "args")
        return self._make_node(tool, copied, after, node_id, map_spec)

    def make_owned_node(self, tool: Callee, arguments: dict[str, Any],
                        node_id: str | None = None, *,
                        after: Ref | str | Iterable[Ref | str] = (),
                        validated: bool = False) -> Node:
        """:meth:`make_node` for ``arguments`` made for this node alone: kept, not copied.

        ``validated``: ``arguments`` are what the tool's validation made of what was asked
        (an agent checks a model's call before it adds it): kept as the checked arguments,
        not validated again (a validator that transforms a value would transform it twice).
        """
        node = self._make_node(tool, arguments, after, node_id, None)
        if validated and not node.refs and not node.tool.has_default_factory:
            node.checked = arguments
        return node

    def checked_owned_node(self, tool: Tool[..., Any], arguments: dict[str, Any],
                           node_id: str) -> Node | None:
        """:meth:`make_owned_node` with ``validated``, when it has no problem to look for.

        The usual step an agent adds to its steps run (a model turn, a tool call): a free id
        with neither ``/`` nor a map item's brackets, arguments of plain values only (no ref
        can hide in them), already validated (no default factory to run again), no ``after``,
        no map. :meth:`node_problems` finds nothing in such a node, so it is not asked: a
        swarm adds a dozen per agent. ``None`` otherwise: make the node the general way.
        """
        nodes = self._nodes
        if (type(node_id) is not str or not node_id or "/" in node_id or node_id in nodes
                or node_id.endswith("]") or tool.has_default_factory):
            return None
        for value in arguments.values():
            if type(value) not in _NO_REFS:
                return None
        return Node(node_id, tool, arguments, (), len(nodes) + len(self._duplicates), (),
                    arguments)

    def _make_node(self, tool: Callee, arguments: dict[str, Any],
                   after: Ref | str | Iterable[Ref | str], node_id: str | None,
                   map_spec: MapSpec | None) -> Node:
        """:meth:`make_node` for ``arguments`` made for this node alone (kept, not copied)."""
        resolved_tool = tool if isinstance(tool, Tool) else as_tool(tool)
        if node_id is None:  # the next id of the tool's name (_next_id, inlined: most nodes)
            name = resolved_tool.name
            count = self._counts.get(name, 0) + 1
            node_id = f"{name}#{count}"
            if node_id in self._nodes:  # taken by a node given that id: the next one free
                node_id = self._next_id(name)
            else:
                self._counts[name] = count
        else:
            if type(node_id) is not str:
                node_id = _given_id(node_id)
            if "/" in node_id or not node_id:
                check_node_id(node_id)  # raises PlanError (bad_id): "/" joins ids and lineages
        kind = type(after)
        after_ids: tuple[str, ...]
        if kind is tuple and not after:
            after_ids = ()
        elif kind is list or kind is tuple:  # most after=: no ABC check, no generator
            after_ids = self._listed_after(after)  # type: ignore[arg-type]
        else:
            after_ids = _other_after(after, self)
        refs = _refs_in(arguments)
        if refs:
            refs = self._shared_refs(refs)
        return Node(node_id, resolved_tool, arguments, after_ids,  # (positional: sooner)
                    len(self._nodes) + len(self._duplicates), refs, None, map_spec)

    def _listed_after(self, after: list[Ref | str] | tuple[Ref | str, ...]) -> tuple[str, ...]:
        """The ids an ``after=`` given as a list or tuple names (most are: no ABC check)."""
        serial = self.serial
        return tuple([a.node if isinstance(a, Ref) and a._plan in (0, serial)
                      else a if type(a) is str else _after_id(a, self) for a in after])

    def fresh_node(self, tool: Tool[..., Any], arguments: dict[str, Any]) -> Node | None:
        """:meth:`_make_node`'s usual case, sooner: ``tool``'s next id, no ``after``, no map.

        ``None`` when that id is taken (by a node given it by hand) or the plan holds
        duplicates: :meth:`_make_node` then finds the id. An open run fed a million calls
        makes each of its nodes here; the id, of the form ``name#n``, is never a map item's.
        """
        if self._duplicates:
            return None
        name = tool.name
        count = self._counts.get(name, 0) + 1
        node_id = f"{name}#{count}"
        nodes = self._nodes
        if node_id in nodes:
            return None
        self._counts[name] = count
        refs: tuple[Ref, ...] = ()
        for value in arguments.values():  # (_refs_in, inlined)
            if type(value) is Ref and len(arguments) == 1:  # a chain's or a fan-out's node
                one = self._one_ref
                refs = one if one and one[0] is value else self._shared_refs((value,))
                break
            if type(value) not in _NO_REFS:
                refs = _refs_in(arguments)
                if refs:
                    refs = self._shared_refs(refs)
                break
        return Node(node_id, tool, arguments, (), len(nodes), refs)

    def _shared_refs(self, refs: tuple[Ref, ...]) -> tuple[Ref, ...]:
        """``refs``, or an equal tuple kept from the node before (one ref, the same object).

        Each node of a fan-out uses its hub's ref: one tuple for all of them instead of one
        each, which the garbage collector would walk on every full pass while the plan lives.
        """
        if len(refs) != 1:
            return refs
        one = self._one_ref
        if one and one[0] is refs[0]:
            return one
        self._one_ref = refs
        return refs

    def insert(self, node: Node) -> None:
        """Add a node made by :meth:`make_node`, or by hand (a taken id is kept aside).

        Raises :class:`~shoal.exceptions.PlanError` (code ``bad_id``) for an id holding ``/``
        or empty, as :meth:`call` does. A :class:`Node` made by hand is made whole first: a
        plain function as its tool is wrapped, its ``after`` read as :meth:`call` reads it,
        and the refs in its arguments found when it lists none (else they would reach the
        tool as refs, its inputs never waited for).
        """
        if not isinstance(node, Node):  # an AttributeError ('id') before
            raise ArgumentTypeError(f"insert takes a Node (see make_node), got "
                                    f"{type(node).__name__} {shown(node)}")
        if not isinstance(node.tool, Tool):
            node.tool = as_tool(node.tool)
        if not isinstance(node.args, dict):
            raise ArgumentTypeError(f"node {shown(node.id)}: its args must be a dict of "
                                    f"argument names to values, got {type(node.args).__name__} "
                                    f"{shown(node.args)}")
        if type(node.after) is not tuple or not all(type(a) is str for a in node.after):
            node.after = _other_after(node.after, self)
        if not node.refs:
            node.refs = _refs_in(node.args)
        # its place is where it is inserted: a node made by hand (index 0), by another plan or
        # made before another one inserted first would share an index, and the plan would look
        # ordered (points_back) with a cycle in it, which the run would then wait on for good.
        # (Not in _insert: an open run's nodes have the index their run gave them.)
        node.index = len(self._nodes) + len(self._duplicates)
        self._insert(node)

    def _insert(self, node: Node) -> None:
        """:meth:`insert` for a node this plan made (:meth:`make_node`): whole already."""
        if type(node.id) is not str:  # a Node made by hand
            node.id = _given_id(node.id)
        if "/" in node.id or not node.id:
            check_node_id(node.id)
        if node.id in self._nodes:
            if self._duplicates:
                self._duplicates.append(node)
            else:
                self._duplicates = [node]
        else:
            self._nodes[node.id] = node
        owner = _ITEM_ID.fullmatch(node.id) if node.id.endswith("]") else None
        if owner is not None:
            self._bracketed.setdefault(owner[1], []).append(node.id)

    def _next_id(self, tool_name: str) -> str:
        count = self._counts.get(tool_name, 0) + 1
        self._counts[tool_name] = count
        candidate = f"{tool_name}#{count}"
        while candidate in self._nodes:
            count += 1
            self._counts[tool_name] = count
            candidate = f"{tool_name}#{count}"
        return candidate

    @property
    def nodes(self) -> list[Node]:
        """The nodes, in the order they were added."""
        return list(self._nodes.values())

    def node(self, ref: Ref | str) -> Node:
        """The node behind a ref or id (``KeyError`` when the plan has none)."""
        if isinstance(ref, Ref):
            return self._nodes[ref.node]
        if not isinstance(ref, str):  # its KeyError would quote it, by a repr that may fail
            raise ArgumentTypeError(f"plan.node() takes a ref or a node id (text), got "
                                    f"{type(ref).__name__} {shown(ref)}")
        return self._nodes[plain_text(ref)]

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Ref):
            return item.node in self._nodes
        return isinstance(item, str) and plain_text(item) in self._nodes  # ids are text

    def __repr__(self) -> str:
        return f"<Plan {self.name or ''} with {len(self._nodes)} nodes>".replace("  ", " ")

    def problems(self) -> list[PlanProblem]:
        """Every problem with the plan (empty when it is valid)."""
        found: list[PlanProblem] = []
        nodes = self._nodes
        # whether the plan points back (see points_back), found on the way: each node's
        # ``after`` is read here anyway, and a second pass cost a small run as much again
        back = True
        for node in nodes.values():
            tool = node.tool
            if (node.refs or node.map is not None or tool.has_default_factory
                    or not tool.keeps(node.args) or node.id.endswith("]")):
                found += self._node_problems(node)
                back = back and _node_points_back(node, nodes)
                continue
            index = node.index
            for dep in node.after:  # each names another node of the plan (else: which is not)
                other = nodes.get(dep)
                if other is None or other is node:
                    found += self._node_problems(node)
                    back = back and _node_points_back(node, nodes)
                    break
                if other.index > index:
                    back = False
            else:  # most nodes: no refs, nodes it comes after that it has, and arguments the
                node.checked = node.args  # schema keeps as is (what _node_problems finds)
        for node in self._duplicates:  # checked too, so that none of its problems is hidden
            found.append(PlanProblem("duplicate_id", "another node already has this id; give "
                                                     "every node its own id", node.id))
            found += self._node_problems(node)
        # kept for points_back(), which the analysis asks: else acyclic
        if not self.memo("points_back", lambda: back):
            found += [PlanProblem("cycle", text) for text in find_cycles(self._nodes)]
        return found

    def _look_alike(self, name: str) -> str:
        """A hint naming the node whose id looks like ``name`` but is other characters.

        ``"Å"`` (one character) and ``"Å"`` (A and a combining ring) print alike: without
        the hint the message would name a node the reader sees right there.
        """
        forms = self.memo("look_alike", lambda: {
            unicodedata.normalize("NFKC", nid): nid for nid in self._nodes})
        found = forms.get(unicodedata.normalize("NFKC", name))
        if found is None:
            return ""
        return (f" (node {found!a} looks the same but is other characters; "
                f"this is {name!a})")

    def _item_hint(self, name: str, as_ref: bool) -> str:
        """A hint for ``name`` (an id that is no node) when it is the id of a map's item.

        A map's items are nodes of the run, not of the plan: a ref reaches one through the
        map's list (``$m[1]``, which prints like ``Ref("m[1]")``), ``after=`` the whole map.
        """
        owner = _ITEM_ID.fullmatch(name) if name.endswith("]") else None
        mapped = self._nodes.get(owner[1]) if owner is not None else None
        if owner is None or mapped is None or mapped.map is None:
            return ""
        index = name[len(owner[1]) + 1:-1]
        how = (f"index the map's ref instead: Ref({mapped.id!r})[{index}]"
               if as_ref else f"name the whole map instead: after={mapped.id!r}")
        return (f" (it is the id of item {index} of map {mapped.id!r}, which is no node a ref "
                f"or after= may name; {how})")

    def node_problems(self, node: Node) -> list[PlanProblem]:
        """The problems of one node against this plan (refs to nodes it has, arguments)."""
        if node.id in self._nodes and self._nodes[node.id] is not node:
            return [PlanProblem("duplicate_id", "another node already has this id; give every "
                                                "node its own id", node.id)]
        taken = self._bracketed.get(node.id) if node.map is not None else None
        if taken:  # checked here only: in a whole plan the other node reports the clash
            return [PlanProblem("duplicate_id", f"this map's items get the ids {node.id}[0], "
                                f"{node.id}[1] ..., and node {taken[0]!r} has one of them; "
                                "give one of the two another id", node.id)]
        return self._node_problems(node)

    def _node_problems(self, node: Node) -> list[PlanProblem]:
        found: list[PlanProblem] = []
        owner = _ITEM_ID.fullmatch(node.id) if node.id.endswith("]") else None
        mapped = self._nodes.get(owner[1]) if owner is not None else None
        if mapped is not None and mapped.map is not None:
            found.append(PlanProblem("duplicate_id", f"ids {mapped.id}[0], {mapped.id}[1] ... "
                                     f"are the items of map {mapped.id!r}; give this node "
                                     "another id", node.id))
        serial = self.serial
        for ref in node.refs:
            if ref._plan and ref._plan != serial:
                found.append(foreign_ref(ref, node.id))
            elif ref.node == node.id:
                found.append(PlanProblem("self_ref", f"argument refers to its own output {ref!r}",
                                         node.id))
            elif ref.node not in self._nodes:
                found.append(PlanProblem("dangling_ref", f"{ref!r} names no node in the plan"
                                         f"{self._item_hint(ref.node, True)}"
                                         f"{self._look_alike(ref.node)}", node.id))
        for dep in node.after:
            if dep == node.id:
                found.append(PlanProblem("self_ref", "a node cannot come after itself", node.id))
            elif dep not in self._nodes:
                found.append(PlanProblem("bad_after", f"after={dep!r} names no node in the plan"
                                         f"{self._item_hint(dep, False)}"
                                         f"{self._look_alike(dep)}", node.id))
        if (node.map is not None and node.map.item_arg not in node.tool.parameters
                and not node.tool.model_facts.accepts_extra):  # **more: any name fits
            names = ", ".join(sorted(node.tool.parameters)) or "none"
            found.append(PlanProblem("bad_arguments", f"{node.tool.name}: map item_arg "
                                     f"{node.map.item_arg!r} is not one of its arguments "
                                     f"({names})", node.id))
        if node.refs:
            detail = self._static_check(node)
        elif node.checked is not None:  # validated already (see make_owned_node), or before
            detail = ""
        elif not node.tool.has_default_factory and node.tool.keeps(node.args):
            node.checked, detail = node.args, ""  # what validate() returns (see problems())
        else:  # fully known now: validate once and keep the result for dispatch ...
            try:
                checked, detail = node.tool.validate(node.args), ""
            except ToolArgumentError as exc:
                detail = exc.detail
            else:  # ... unless validation makes new values (default_factory): redo it per run
                node.checked = None if node.tool.has_default_factory else _same_or(node.args,
                                                                                    checked)
        if detail:
            found.append(PlanProblem("bad_arguments", f"{node.tool.name}: {detail}", node.id))
        return found

    def _static_check(self, node: Node) -> str:
        """What the tool says of a node's arguments before the run ('' when they fit).

        When every argument is a ref, the answer depends only on the tool and the argument
        names (all values are still unknown), so it is worked out once for each: a large plan
        has a few tools and a million such nodes.
        """
        args = node.args
        for value in args.values():
            if not isinstance(value, Ref):
                return node.tool.check_static(args, _holds_refs)
        tool = node.tool
        known = self._static.get(tool)
        if known is None:
            known = self._static[tool] = {}
        # one name (a chain's or a fan-out's node) is its own key: no tuple made
        key: str | tuple[str, ...] = next(iter(args)) if len(args) == 1 else tuple(args)
        detail = known.get(key)
        if detail is None:
            detail = known[key] = tool.check_static(args, _holds_refs)
        return detail

    def validate(self) -> None:
        """Raise :class:`PlanError` listing every problem, if there is any."""
        found = self.memo("problems", self.problems)
        if found:
            raise PlanError(found, self.name)

    def points_back(self) -> bool:
        """Whether every ref and ``after`` names a node added earlier (or none of the plan).

        Plans built with :meth:`call` are: plan order is then a topological order, and the
        plan has no cycle, which a large plan learns without building a graph.
        """
        return self.memo("points_back", lambda: points_back(self._nodes))

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, cached until a node is added (plans only grow, so size is a version)."""
        version = len(self._nodes) + len(self._duplicates)
        hit = self._memo.get(key)
        if hit is not None and hit[0] == version:
            return cast(T, hit[1])
        value = compute()
        self._memo[key] = (version, value)
        return value


def _same_or(args: dict[str, Any], checked: dict[str, Any]) -> dict[str, Any]:
    """``args`` itself when validation kept every value as it was, else ``checked``.

    Both are only read (dispatch copies them), so a large plan need not hold each node's
    arguments twice.
    """
    if len(args) != len(checked):
        return checked
    given = iter(args)  # as long as ``checked``: never exhausted below
    for key, value in checked.items():
        if key != next(given) or args[key] is not value:  # the same keys in the same order
            return checked
    return args


def _other_after(after: object, plan: Plan) -> tuple[str, ...]:
    """The ids ``after=`` names when it is no list or tuple: one node, or any other iterable."""
    if not isinstance(after, (*_ONE_NODE, Iterable)):
        raise ArgumentTypeError(f"after= takes a ref, a node id or several of them, got "
                                f"{type(after).__name__} {shown(after)}")
    if isinstance(after, _ONE_NODE):
        return (_after_id(after, plan),)
    # each checked as it is read (after=itertools.count() is refused at its first step)
    return tuple(_after_id(a, plan) for a in each_item(after, _unreadable(after, "after")))


def each_item(given: Iterable[Any], failed: Callable[[Exception], Exception]) -> Iterator[Any]:
    """The items of ``given``, read one by one; what its own code raises is ``failed(exc)``.

    For what a caller gives as any iterable: each item can be checked as it comes, so an
    endless iterator of what does not fit (``itertools.count()``) is refused at its first
    item, not read until memory runs out.
    """
    try:
        items = iter(given)
    except Exception as exc:  # the caller's object's own code
        raise failed(exc) from exc
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as exc:  # the caller's object's own code
            raise failed(exc) from exc
        yield item


def _read(given: Iterable[Any], what: str) -> Any:
    """``given`` (a mapping, or another iterable) read into a dict (or a list).

    What its own code raises while it is read (a caller's generator or mapping) is a
    ``ConfigError`` naming ``what`` it was given as.
    """
    try:
        return dict(given) if isinstance(given, Mapping) else list(given)
    except Exception as exc:  # the caller's object's own code
        raise _unreadable(given, what)(exc) from exc


def _unreadable(given: object, what: str) -> Callable[[Exception], ConfigError]:
    """The error for ``what=`` whose reading raised (see :func:`each_item`)."""
    return lambda exc: ConfigError(f"{what}= could not be read: reading the "
                                   f"{type(given).__name__} raised {error_text(exc)}")


def map_spec(tool: Tool[..., Any], args: Mapping[str, Any], over: object, item_arg: object,
             partial: object) -> MapSpec:
    """What makes a call of ``tool`` with ``args`` a map over ``over`` (see :meth:`Plan.map`).

    Raises :class:`~shoal.exceptions.ArgumentTypeError` for an ``over`` that is no ref, a
    ``partial`` that is not a bool (``"no"`` would read as true) or an ``item_arg`` that
    names no argument it can take.
    """
    if not isinstance(partial, bool):
        raise ArgumentTypeError(f"plan.map({tool.name}): partial= is True or False, got "
                                f"{type(partial).__name__} {shown(partial)}")
    if not isinstance(over, Ref):
        raise ArgumentTypeError(f"plan.map(over=...) takes a ref to a node's output (a list), "
                                f"got {type(over).__name__}; for a list known now, call "
                                "plan.call once per item")
    return MapSpec(_item_arg(tool, args, item_arg), partial)


def _given_id(node_id: object) -> str:
    """A ``node_id=`` that is no plain ``str``: a subclass's text, else refused."""
    if isinstance(node_id, str):
        return plain_text(node_id)
    raise ArgumentTypeError(f"node_id must be a string, got {type(node_id).__name__} "
                            f"{shown(node_id)}")


def _item_arg(tool: Tool[..., Any], given: Mapping[str, Any], chosen: object = None) -> str:
    """The argument of ``tool`` that a map's items go to.

    ``chosen`` if given (text, not also given a value), else the tool's one required argument
    not in ``given``.
    """
    if chosen is not None:
        if not isinstance(chosen, str):
            raise ArgumentTypeError(f"plan.map({tool.name}): item_arg= names the argument that "
                                    f"gets each item (a str), got {type(chosen).__name__} "
                                    f"{shown(chosen)}")
        chosen = plain_text(chosen)
        if chosen in given:  # the item would silently replace the value given
            raise ArgumentTypeError(f"map({tool.name}): item_arg={chosen!r} gets each item, so it "
                            f"cannot also be given a value ({chosen}=...)")
        return chosen
    facts = tool.model_facts
    open_params = [name for name in facts.inputs if name in facts.required and name not in given]
    if len(open_params) == 1:
        return open_params[0]
    which = (f"its required arguments {open_params} are all missing" if open_params
             else "every required argument is given already")
    raise ArgumentTypeError(f"plan.map({tool.name}): say which argument gets each item, "
                    f"item_arg='...' ({which})")


def hard_predecessors(node: Node) -> set[str]:
    """Ids a node must wait for because of data refs and ``after`` (not resource conflicts)."""
    return {r.node for r in node.refs} | set(node.after)


def points_back(nodes: Mapping[str, Node]) -> bool:
    """Whether each node's refs and ``after`` name only nodes of a lower index (or none).

    Then the index order is topological and there is no cycle. A ref to itself or to no node
    of ``nodes`` does not count (they are problems of their own, not cycles).
    """
    return all(_node_points_back(node, nodes) for node in nodes.values())


def _node_points_back(node: Node, nodes: Mapping[str, Node]) -> bool:
    """Whether ``node``'s refs and ``after`` name only nodes of a lower index (or none)."""
    index = node.index
    for ref in node.refs:
        other = nodes.get(ref.node)
        if other is not None and other.index > index:
            return False
    for dep in node.after:
        other = nodes.get(dep)
        if other is not None and other.index > index:
            return False
    return True


def find_cycles(nodes: Mapping[str, Node]) -> list[str]:
    """Each dependency cycle among ``nodes``, written ``a -> b -> a`` (empty when acyclic)."""
    if points_back(nodes):
        return []  # nothing to build: a large plan's usual case
    # dangling and self edges are reported as problems of their own, not as cycles
    preds = {nid: (hard_predecessors(n) & nodes.keys()) - {nid} if (n.refs or n.after) else set()
             for nid, n in nodes.items()}
    if not any(preds.values()):
        return []
    remaining = topo_leftovers(preds)
    cycles: list[str] = []
    reported: set[str] = set()
    for start in sorted(remaining, key=lambda nid: nodes[nid].index):
        if start in reported:
            continue
        path = [start]
        seen = {start: 0}
        current = start
        while True:
            current = min((p for p in preds[current] if p in remaining),
                          key=lambda nid: nodes[nid].index)
            if current in seen:
                loop = path[seen[current]:]
                break
            seen[current] = len(path)
            path.append(current)
        reported.update(path)
        loop.reverse()  # walked along predecessors; show it in the direction data flows
        cycles.append(" -> ".join([*loop, loop[0]]))
    return cycles


def topo_leftovers(preds: Mapping[str, set[str]]) -> set[str]:
    """Nodes that Kahn's algorithm cannot order (those on or behind a cycle)."""
    indegree = {nid: len(p) for nid, p in preds.items()}
    succs: dict[str, list[str]] = {nid: [] for nid in preds}
    for nid, ps in preds.items():
        for p in ps:
            succs[p].append(nid)
    ready = [nid for nid, d in indegree.items() if d == 0]
    while ready:
        nid = ready.pop()
        for s in succs[nid]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    left = {nid for nid, d in indegree.items() if d > 0}
    # keep only nodes on a cycle: drop those merely downstream of one, sinks first (Kahn's
    # algorithm again, backwards), so that a long chain behind a cycle costs linear time
    outdegree = {nid: sum(1 for s in succs[nid] if s in left) for nid in left}
    sinks = [nid for nid, d in outdegree.items() if d == 0]
    while sinks:
        nid = sinks.pop()
        left.discard(nid)
        for p in preds[nid]:
            if p in left:
                outdegree[p] -= 1
                if outdegree[p] == 0:
                    sinks.append(p)
    return left
