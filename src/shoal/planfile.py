"""Plan files: a plan written as JSON or YAML, loaded into a :class:`~shoal.plan.Plan`.

The shape::

    name: research            # optional
    nodes:
      - id: a
        tool: mypkg.tools:search          # import path "module:attr" (attr may be dotted)
        args: {query: "ray actors"}
        options: {timeout: 2, retries: 1} # optional, as for Tool.options
      - id: b
        tool: search                      # a bare name, looked up in the ``tools`` mapping
        args: {query: "$a.hits[0].title"}
        after: [a]                        # optional: ids that must finish first
      - id: c
        tool: search
        map: {over: $b.queries, item_arg: query, partial: true}   # one call per item

A node with ``map`` calls its tool once per item of the list ``over`` refers to, with the
item as argument ``item_arg`` (default: the tool's one required argument not in ``args``)
and ``args`` given to every call; its output is the list of results, in item order (see
:meth:`shoal.Plan.map`). ``map: $b.queries`` is short for ``map: {over: $b.queries}``.

References. An argument value (at any depth inside lists and dicts) that is a string made
*entirely* of a reference stands for another node's output:

* ``"$a"`` is the whole output of node ``a``; ``"${a}"`` is the same, and braces let an id
  hold any character (``"${fetch.v2}.body"``);
* ``"$a.field"`` is a field, ``"$a[0]"`` an item, ``"$a.hits[2].title"`` both in turn.

A ``$`` inside longer text (``"see $a"``, ``"$a and $b"``) is left alone: references are never
interpolated into strings. A string that starts with ``$``, holds no whitespace and is not a
valid reference (``"$a[x]"``) is reported as a problem rather than silently kept, since it is
almost always a mistyped reference. To start a string with a literal dollar, double it:
``"$$5"`` is the text ``"$5"``. Dict keys are never references.

Every problem in a file is reported at once, in one :class:`~shoal.exceptions.PlanError`.
Files are read as untrusted input, within the limits and rules of :mod:`shoal.plandata`
(size, depth, YAML aliases, duplicate keys, numbers, text): a file that breaks one is reported
as that one problem, with its line and column.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.exceptions import (
    ArgumentTypeError,
    PlanError,
    PlanProblem,
    ShoalError,
    describe_exception,
)
from shoal.merge import error_text, shown
from shoal.nodeids import node_id_problem, plain_text
from shoal.plan import MapSpec, Plan, Ref, _item_arg, as_tool
from shoal.plandata import DataError, check_value, parse_json, parse_yaml, read_text
from shoal.schema import unresolved_names
from shoal.tools import Tool

__all__ = ["check_import", "convert_refs", "import_object", "load_plan", "parse_ref",
           "plan_from_dict"]

# an item index has at most 18 digits: no list is longer, and int() refuses a 4,301-digit
# one with a ValueError, which crashed the parse of a plan that wrote $a[999...9]
_REF = re.compile(
    r"\$(?:\{(?P<braced>[^{}]+)\}|(?P<plain>[\w-]+))"
    r"(?P<path>(?:\.[\w-]+|\[-?[0-9]{1,18}\])*)"
)
_STEP = re.compile(r"\.(?P<field>[\w-]+)|\[(?P<item>-?[0-9]{1,18})\]")
_NODE_KEYS = ("id", "tool", "args", "after", "options", "map")
_MAP_KEYS = ("over", "item_arg", "partial")
_TOP_KEYS = ("name", "nodes")
_REF_HELP = "write $id, $id.field, $id[0] or ${id}, or start with '$$' for a literal '$'"


# --- references ------------------------------------------------------------------------------


def parse_ref(text: str) -> Ref | None:
    """Return the :class:`Ref` that ``text`` spells in full, or ``None`` if it is not one.

    ``"$a"`` -> ``Ref("a")``; ``"$a.items[0]"`` -> ``Ref("a", ("items", 0))``;
    ``"${a.b}[1]"`` -> ``Ref("a.b", (1,))``. Bracketed integers are items and dotted names
    are fields. ``"see $a"`` and ``"$$a"`` are not references.
    """
    match = _REF.fullmatch(text)
    if match is None:
        return None
    braced, plain, steps = match.group("braced", "plain", "path")
    node = braced if braced is not None else plain
    if not steps:  # most refs ($3): no path to walk (plan text has one per step or more)
        return Ref(node)
    path = tuple(
        int(step["item"]) if step["item"] is not None else step["field"]
        for step in _STEP.finditer(steps)
    )
    return Ref(node, path)


def convert_refs(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """Copy ``value``, making reference strings :class:`Ref` and unescaping ``$$``.

    Walks lists, tuples and dict values. Also returns a message for each string that looks
    like a reference but is not one, and for each reference inside a set (refs are not
    resolved inside sets); ``where`` prefixes those messages (e.g. an argument's name).
    """
    errors: list[str] = []
    return _convert(value, _Where(None, where), errors), errors


@dataclass(frozen=True, slots=True)
class _Where:
    """The path of a value, rendered as text only for a message.

    Building each value's path as text would copy its parent's path, which costs the square
    of a long key's length.
    """

    parent: _Where | None
    step: str

    def __str__(self) -> str:
        steps: list[str] = []
        at: _Where | None = self
        while at is not None:
            steps.append(at.step)
            at = at.parent
        return "".join(reversed(steps))


def _key_step(key: Any) -> str:
    return f"[{_show(key)}]"


def _convert(value: Any, where: _Where, errors: list[str]) -> Any:
    if isinstance(value, str):
        return _convert_text(value, where, errors)
    if isinstance(value, dict):
        return {k: _convert(v, _Where(where, _key_step(k)), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v, _Where(where, f"[{i}]"), errors) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_convert(v, _Where(where, f"[{i}]"), errors) for i, v in enumerate(value))
    if isinstance(value, set | frozenset):
        inner: list[str] = []
        if any(isinstance(_convert(v, where, inner), Ref) for v in value):
            errors.append(f"{where}: references cannot sit inside a set; use a list instead")
        return value
    return value


def _convert_text(text: str, where: _Where, errors: list[str]) -> Any:
    if text.startswith("$$"):
        return text[1:]
    ref = parse_ref(text)
    if ref is not None:
        return ref
    if text.startswith("$") and not any(c.isspace() for c in text):
        errors.append(f"{where}: {_show(text)} starts with '$' but is not a valid reference; "
                      + _REF_HELP)
    return text


def _show(value: Any) -> str:
    """A short repr of ``value`` for a message, costing little however big the value is.

    Never raises (but on Ctrl-C): plan data given as Python objects (:func:`plan_from_dict`)
    may hold a value whose ``__repr__`` raises or calls ``sys.exit()``, which reprlib lets out.
    """
    try:
        return _SHORT.repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: quoting a value ends no program
        return shown(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 3


# --- reading files ---------------------------------------------------------------------------


def load_plan(path: str | Path, *,
              tools: Mapping[str, Tool[..., Any]] | Iterable[Any] | None = None,
              modules: Sequence[str] | None = None) -> Plan:
    """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``) plan file into a :class:`Plan`.

    Other extensions are read as JSON, then as YAML. ``tools`` maps bare tool names used in
    the file to tools (a list of tools is keyed by their names); other nodes name their tool
    by import path ``"module:attr"``. The plan's name defaults to the file's stem.

    ``modules`` limits what those import paths may name: a module listed, or one inside a
    package listed (``"mypkg"`` allows ``mypkg.tools``), checked before anything is imported;
    ``()`` allows the ``tools`` names only; ``None`` (the default) allows any module. Whatever
    it says, an import path must name a Python function, a tool, an agent or a pattern:
    classes, modules and builtins (``builtins:eval``, ``os:system``) are refused.

    Raises:
        PlanError: listing every problem found (missing file, syntax, limits, duplicate keys,
            shape, imports, references, arguments, cycles), with ``source`` set to ``path``.
    """
    file = Path(path)
    duplicates: list[DataError] = []
    data = _read_data(file, str(path), duplicates)
    # a duplicate key is not fatal: the plan is still built, so that its problems come too
    found = [PlanProblem(d.code, d.message) for d in duplicates]
    try:  # parsing checked the data's limits already: walking a big file twice costs seconds
        plan = _build(data, _Lookup(_named(tools), _modules(modules)), str(path))
    except PlanError as exc:
        raise PlanError(found + exc.problems, str(path)) from None
    if found:
        raise PlanError(found, str(path))
    plan.name = plan.name or file.stem
    return plan


def _read_data(file: Path, source: str, duplicates: list[DataError]) -> Any:
    text = _read_text(file, source)
    suffix = file.suffix.lower()
    try:
        if suffix == ".json":
            return parse_json(text, duplicates)
        if suffix in (".yaml", ".yml"):
            return parse_yaml(text, duplicates)
        try:
            return parse_json(text, duplicates)
        except DataError as exc:
            if exc.code != "syntax" or not exc.message.startswith("invalid JSON"):
                raise  # it is JSON, with a problem of its own: YAML would only hide it
            # not JSON: YAML is the more forgiving reading, so its error is reported
            return parse_yaml(text, duplicates)
    except DataError as exc:
        raise _fail(exc.code, exc.message, source) from None


def _read_text(file: Path, source: str) -> str:
    """The file's text, read with the limits of :func:`shoal.plandata.read_text`."""
    try:
        return read_text(file, "plan file")
    except DataError as exc:
        raise _fail(exc.code, exc.message, source) from None


def _fail(code: str, message: str, source: str) -> PlanError:
    return PlanError([PlanProblem(code, message)], source)


# --- building the plan -----------------------------------------------------------------------


@dataclass(slots=True)
class _Spec:
    """A node read from the file; ``tool`` is None when it could not be resolved."""

    id: str
    tool: Tool[..., Any] | None
    args: dict[str, Any]
    after: tuple[str, ...]
    map: tuple[Ref, str | None, bool] | None = None  # over, item_arg, partial


def plan_from_dict(
    data: Any, *, tools: Mapping[str, Tool[..., Any]] | Iterable[Any] | None = None,
    source: str = "",
    modules: Sequence[str] | None = None,
) -> Plan:
    """Build a :class:`Plan` from already-parsed plan data (see the module docstring).

    ``tools`` and ``modules`` as for :func:`load_plan`.

    Raises:
        PlanError: listing every problem at once; ``source`` names where the data came from.
    """
    bad = check_value(data)
    if bad is not None:  # nothing further can be read safely from such data
        raise PlanError([PlanProblem(bad.code, bad.message)], source)
    return _build(data, _Lookup(_named(tools), _modules(modules)), source)


def _named(tools: Mapping[str, Any] | Iterable[Any] | None) -> Mapping[str, Any]:
    """``tools`` as a mapping of the names plan files use to tools.

    A mapping is taken as it is; a list (of tools, or functions, as an agent's ``tools=``)
    is keyed by each tool's name.
    """
    if tools is None:
        return {}
    if isinstance(tools, Mapping):
        odd = [name for name in tools if not isinstance(name, str)]
        if odd:  # each is matched against a plan's text, and listed in messages
            raise ArgumentTypeError(f"tools: a tool's name must be text, got "
                                    f"{type(odd[0]).__name__} {shown(odd[0])}")
        return {plain_text(name): tool for name, tool in tools.items()}
    if isinstance(tools, str | bytes) or not isinstance(tools, Iterable):
        raise ArgumentTypeError(f"tools takes a mapping of names to tools or a list of tools, "
                                f"got {type(tools).__name__} {shown(tools)}")
    table: dict[str, Any] = {}
    item: Any
    for item in tools:
        try:
            found = as_tool(item)
        except Exception as exc:
            raise ArgumentTypeError(f"tools: {shown(item)} is not a tool nor a function: "
                                    f"{error_text(exc)}") from None
        table[found.name] = found
    return table


@dataclass(frozen=True, slots=True)
class _Lookup:
    """Where a node's tool may come from: the names passed in, and the modules allowed."""

    tools: Mapping[str, Tool[..., Any]]
    modules: tuple[str, ...] | None  # None: any module

    def allows(self, module_name: str) -> bool:
        """Whether an import path may name ``module_name`` (a listed module, or inside one)."""
        return self.modules is None or any(
            module_name == allowed or module_name.startswith(allowed + ".")
            for allowed in self.modules)


def _modules(modules: Sequence[str] | None) -> tuple[str, ...] | None:
    if modules is None:
        return None
    if isinstance(modules, str):  # "a,b" is one module name, never its characters
        modules = [modules]
    bad = [m for m in modules if not isinstance(m, str) or not m.strip(". ")]
    if bad:
        raise TypeError(f"modules takes module or package names such as 'mypkg.tools', got "
                        f"{_show(bad[0])}")
    return tuple(m.strip() for m in modules)


def _build(data: Any, tools: _Lookup, source: str) -> Plan:
    """:func:`plan_from_dict` for data already checked (a file's, by its parser)."""
    problems: list[PlanProblem] = []
    name, raw_nodes = _read_top(data, problems)
    plan = Plan(name)
    specs = _read_nodes(raw_nodes, tools, problems)
    for spec in specs:
        # Nodes whose tool is unusable still go in, as placeholders, so that refs to them are
        # not reported as dangling and cycles through them are still found.
        if spec.map is not None:
            _add_map(plan, spec, problems)
        else:
            plan.add(spec.tool or placeholder_tool(), spec.args, after=spec.after,
                     node_id=spec.id)
    # duplicate ids were reported above, with the positions that share them (a node named
    # like a map's item is a duplicate_id only the plan finds)
    shared = {p.node for p in problems if p.code == "duplicate_id"}
    problems += [p for p in plan.problems() if p.code != "duplicate_id" or p.node not in shared]
    if problems:
        raise PlanError(problems, source)
    return plan


def _add_map(plan: Plan, spec: _Spec, problems: list[PlanProblem]) -> None:
    """Add a map node; one whose tool or item argument is unusable goes in as a placeholder."""
    assert spec.map is not None
    over, item_arg, partial = spec.map
    tool = spec.tool
    if tool is not None:
        try:
            chosen = _item_arg(tool, spec.args, item_arg)
        except TypeError as exc:
            problems.append(PlanProblem("bad_arguments", str(exc), spec.id))
        else:
            plan.insert(plan.make_node(tool, {**spec.args, chosen: over}, after=spec.after,
                                       node_id=spec.id, map_spec=MapSpec(chosen, partial)))
            return
    plan.add(placeholder_tool(), {**spec.args, item_arg or "map over": over}, after=spec.after,
             node_id=spec.id)


def _read_map(value: Any, label: str,
              problems: list[PlanProblem]) -> tuple[Ref, str | None, bool] | None:
    """``map: $ref`` or ``map: {over: $ref, item_arg: name, partial: bool}``."""
    how = "write map: {over: $id, item_arg: name, partial: true} or map: $id"
    raw = value if isinstance(value, Mapping) else {"over": value}
    own: list[str] = [_unknown_key(k, _MAP_KEYS, "'map'") for k in raw if k not in _MAP_KEYS]
    over = parse_ref(raw["over"]) if isinstance(raw.get("over"), str) else None
    if over is None:
        own.append(f"'map' needs 'over': a reference to the list to map over, got "
                   f"{_show(raw.get('over'))}; {how}")
    item_arg = raw.get("item_arg")
    if item_arg is not None and (not isinstance(item_arg, str) or not item_arg):
        own.append(f"'map': 'item_arg' must be an argument name, got {_show(item_arg)}")
    partial = _or(raw.get("partial"), False)
    if not isinstance(partial, bool):
        own.append(f"'map': 'partial' must be true or false, got {_show(partial)}")
    problems += [PlanProblem("bad_shape", message, label) for message in own]
    if own or over is None:
        return None
    return over, None if item_arg is None else plain_text(item_arg), partial


def _read_top(data: Any, problems: list[PlanProblem]) -> tuple[str, list[Any]]:
    if data is None:
        problems.append(PlanProblem("bad_shape", "the plan is empty; write a mapping with a "
                                                 "'nodes' list"))
        return "", []
    if not isinstance(data, Mapping):
        problems.append(PlanProblem("bad_shape", f"the plan must be a mapping with a 'nodes' "
                                                 f"list, got {_kind(data)}"))
        return "", []
    problems += [PlanProblem("bad_shape", _unknown_key(k, _TOP_KEYS, "the plan"))
                 for k in data if k not in _TOP_KEYS]
    name = data.get("name", "")
    if not isinstance(name, str):
        problems.append(PlanProblem("bad_shape", f"'name' must be a string, got {_kind(name)}"))
        name = ""
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        got = "none" if nodes is None else _kind(nodes)
        problems.append(PlanProblem("bad_shape", f"the plan needs a 'nodes' list (got {got}); "
                                                 "write nodes: [{id: ..., tool: ...}, ...]"))
        return name, []
    return name, nodes


def _read_nodes(
    raw_nodes: list[Any], tools: _Lookup, problems: list[PlanProblem]
) -> list[_Spec]:
    specs: list[_Spec] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_nodes):
        spec = _read_node(index, raw, tools, problems)
        if spec is None:
            continue
        if spec.id in first_index:  # still added: the plan checks its refs and arguments too
            problems.append(PlanProblem(
                "duplicate_id", f"nodes[{first_index[spec.id]}] and nodes[{index}] share this "
                                "id; give every node its own id", spec.id))
        first_index.setdefault(spec.id, index)
        specs.append(spec)
    return specs


def _read_node(
    index: int, raw: Any, tools: _Lookup, problems: list[PlanProblem]
) -> _Spec | None:
    if not isinstance(raw, Mapping):
        problems.append(PlanProblem("bad_shape", f"nodes[{index}] must be a mapping with 'id' "
                                                 f"and 'tool', got {_kind(raw)}"))
        return None
    node_id = _read_id(index, raw.get("id"), problems)
    label = node_id or ""
    own: list[PlanProblem] = []
    own += [PlanProblem("bad_shape", _unknown_key(k, _NODE_KEYS), label)
            for k in raw if k not in _NODE_KEYS]
    found = _resolve(raw.get("tool"), tools, label, own)
    # an optional key left empty (YAML "args:" reads as null) means the same as leaving it out
    args = _read_args(_or(raw.get("args"), {}), label, own)
    after = _read_after(_or(raw.get("after"), []), label, own)
    if found is not None and raw.get("options") is not None:
        found = _apply_options(found, raw["options"], label, own)
    mapping = _read_map(raw["map"], label, own) if raw.get("map") is not None else None
    if mapping is None and raw.get("map") is not None:
        found = None  # the map could not be read: the node is only a placeholder
    if node_id is None:  # without an id, only its position tells the reader which node it is
        problems += [PlanProblem(p.code, f"nodes[{index}]: {p.message}") for p in own]
        return None
    problems += own
    return _Spec(node_id, found if args is not None else None, args or {}, after, mapping)


def _read_id(index: int, value: Any, problems: list[PlanProblem]) -> str | None:
    if value is None:
        message = f"nodes[{index}] has no 'id'; give it a unique string id"
    elif not isinstance(value, str) or not value:
        message = (f"nodes[{index}]: 'id' must be a non-empty string, got {_show(value)}; "
                   "quote it (e.g. id: \"1\")")
    elif problem := node_id_problem(value):
        problems.append(PlanProblem("bad_id", f"nodes[{index}]: {problem}", value))
        return None
    else:
        return plain_text(value)  # a str subclass's own __hash__ and __eq__ left out
    problems.append(PlanProblem("bad_shape", message))
    return None


def _resolve(
    value: Any, tools: _Lookup, label: str, problems: list[PlanProblem]
) -> Tool[..., Any] | None:
    if value is None or not isinstance(value, str) or not value:
        got = "no 'tool'" if value is None else f"a bad 'tool' {_show(value)}"
        problems.append(PlanProblem(
            "bad_shape", f"the node has {got}; set 'tool' to an import path "
                         "'package.module:function' or a tool name", label))
        return None
    found = _find_tool(plain_text(value), tools)
    if isinstance(found, PlanProblem):
        problems.append(PlanProblem(found.code, found.message, label))
        return None
    return found


def _find_tool(name: str, lookup: _Lookup) -> Tool[..., Any] | PlanProblem:
    """Return the tool ``name`` stands for, or a problem (without a node) saying why not."""
    tools = lookup.tools
    if name in tools:
        return as_tool(tools[name])
    if ":" not in name:
        return PlanProblem("unknown_tool", _unknown_tool(name, tools))
    module_name = name.partition(":")[0]
    if not lookup.allows(module_name):  # before importing: a module's import runs its code
        return PlanProblem("bad_import", _not_allowed(name, module_name, lookup))
    try:
        obj = import_object(name)
    except ImportError as exc:
        return PlanProblem("bad_import", str(exc))
    kind = _unusable_kind(obj)
    if kind:
        return PlanProblem("bad_import", f"{_show(name)} cannot be used as a tool: it is "
                                         f"{kind}, which a plan file may not call; point it "
                                         "at a Python function, a shoal tool, an agent or a "
                                         "pattern")
    try:
        found = as_tool(obj)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # any user function can fail schema building (its string
        # annotations are evaluated: sys.exit() in one ended the program); report, not crash
        return PlanProblem("bad_import", f"{_show(name)} cannot be used as a tool: "
                                         f"{describe_exception(exc)}")
    model = found._model
    if not model.__pydantic_complete__:  # a type its module never defines: pydantic waits
        # for it to be, and the check of the plan raised a ToolDefinitionError, not a problem
        why = unresolved_names(model)  # (which completes the model if it now can be)
        if not model.__pydantic_complete__:
            return PlanProblem("bad_import", f"{_show(name)} cannot be used as a tool: {why}")
    return found


def check_import(name: str, modules: Sequence[str] | None, source: str = "") -> None:
    """Refuse import path ``name`` (``module:attribute``) unless ``modules`` allows its module.

    What :func:`load_plan` checks for each of a plan file's import paths, for the other things
    that name code to import (``shoal run module:agent``, ``--model module:name``, ``shoal mcp
    serve module:tools``): the same :class:`PlanError` (``bad_import``), before anything is
    imported. ``modules=None`` allows any module. A file path (``dir/file.py:agent``) names no
    module: it is refused whenever the modules are listed.
    """
    lookup = _Lookup({}, _modules(modules))
    if lookup.modules is None:
        return
    module_name = name.rpartition(":")[0] or name
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        message = (f"{_show(name)} names a file, {_show(module_name)}, which may not be "
                   f"imported while the modules are listed ({_listed(lookup)}); put it in "
                   "an allowed package and name it package.module:name")
        raise PlanError([PlanProblem("bad_import", message)], source)
    if not lookup.allows(module_name):
        raise PlanError([PlanProblem("bad_import", _not_allowed(name, module_name, lookup))],
                        source)


def _listed(lookup: _Lookup) -> str:
    return (f"modules allowed: {', '.join(sorted(lookup.modules))}" if lookup.modules
            else "no module is allowed, only the tool names passed in")


def _not_allowed(name: str, module_name: str, lookup: _Lookup) -> str:
    return (f"{_show(name)} names module {_show(module_name)}, which this plan may not import "
            f"({_listed(lookup)}); allow more with load_plan(..., modules=[...]), shoal run "
            "--modules or SHOAL_PLAN_MODULES")


def _unusable_kind(obj: Any) -> str:
    """What ``obj`` is when a plan file may not call it ("" when it may).

    A plan file may call what a person wrote to be called: a Python function (or a method
    bound to one), a :class:`Tool`, an agent or a pattern. Never a class (constructing one
    runs arbitrary code), a module, or a builtin such as ``eval`` or ``os.system``, which are
    never tools but reach the interpreter and the shell.
    """
    if isinstance(obj, Tool) or hasattr(type(obj), "__shoal_node__"):
        return ""
    if inspect.isfunction(obj) or (inspect.ismethod(obj) and inspect.isfunction(obj.__func__)):
        return ""
    if inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj):
        return "a builtin function"
    if inspect.isclass(obj):
        return "a class"
    if inspect.ismodule(obj):
        return "a module"
    return f"a {type(obj).__name__} object, not a function"


def _unknown_tool(name: str, tools: Mapping[str, Tool[..., Any]]) -> str:
    hint = ""
    if "." in name:
        module, _, attr = name.rpartition(".")
        hint = f" (did you mean the import path '{module}:{attr}'?)"
    known = f"known tools: {', '.join(sorted(tools))}" if tools else "no tools were passed in"
    return (f"no tool named {name!r}{hint}; {known}; or write an import path "
            "'package.module:function'")


def import_object(path: str) -> Any:
    """Import the callable (or agent, or pattern) at ``"package.module:attr"`` (dotted ``attr``).

    Raises:
        ImportError: with a message saying what to fix when the module cannot be imported, an
            attribute is missing, or the object is not callable.
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ImportError(f"{path!r} is not an import path; write 'package.module:function'")
    if module_name.startswith("."):  # relative to nothing: importlib fails with a TypeError
        raise ImportError(f"{path!r} names a module relative to no package; write the "
                          "module's full name, 'package.module:function'")
    obj: Any = _import_module(module_name, path)
    owner = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            close = difflib.get_close_matches(part, [n for n in _names(obj)
                                                     if not n.startswith("_")])
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ImportError(f"{owner!r} has no attribute {part!r}{hint}; check the name after "
                              f"the ':' in {path!r}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a module's __getattr__ or a property's own code (its
            # sys.exit() too): it crashed the load with a traceback, or ended the program
            raise ImportError(f"getting {part!r} of {owner!r} raised {describe_exception(exc)};"
                              f" fix that code or point {path!r} elsewhere") from None
        owner = f"{owner}.{part}"
    if not callable(obj) and not hasattr(type(obj), "__shoal_node__"):  # agents, patterns
        raise ImportError(f"{path!r} is not callable (it is {type(obj).__name__} "
                          f"{shown(obj)}); point it at a function, tool, agent or pattern")
    return obj


def _names(obj: Any) -> list[str]:
    """``dir(obj)`` for a hint, or nothing when the object's own ``__dir__`` fails."""
    try:
        return [name for name in dir(obj) if isinstance(name, str)]
    except KeyboardInterrupt:
        raise
    except BaseException:  # its own code: a hint is not worth a crash
        return []


def _import_module(module_name: str, path: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise ImportError(f"no module named {exc.name!r} (in {path!r}); check the spelling "
                              "and that the package is installed or on sys.path") from None
        raise ImportError(f"importing {module_name!r} failed: {describe_exception(exc)}; "
                          "install what it needs") from None
    except KeyboardInterrupt:
        raise  # a Ctrl-C while the module loads
    except BaseException as exc:  # the module's own code failed (sys.exit() in it too, which
        # ended the program: `shoal run` with the module's exit code, and no word why)
        raise ImportError(f"importing {module_name!r} raised {describe_exception(exc)}; fix "
                          "that module") from None


def _read_args(value: Any, label: str, problems: list[PlanProblem]) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        problems.append(PlanProblem("bad_shape", f"'args' must be a mapping from argument names "
                                                 f"to values, got {_show(value)}", label))
        return None
    args, errors = convert_refs(dict(value), "args")
    problems += [PlanProblem("syntax", e, label) for e in errors]
    result: dict[str, Any] = args
    return result


def _read_after(value: Any, label: str, problems: list[PlanProblem]) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(map(plain_text, value))
    problems.append(PlanProblem("bad_shape", f"'after' must be a list of node ids, got "
                                             f"{_show(value)}; write after: [id1, id2]", label))
    return ()


# Options that widen what a tool's code may reach: the application grants them, not the plan.
_CODE_ONLY_OPTIONS = frozenset({"trust_results", "env"})


def _apply_options(
    found: Tool[..., Any], options: Any, label: str, problems: list[PlanProblem]
) -> Tool[..., Any]:
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        problems.append(PlanProblem(
            "bad_shape", f"'options' must be a mapping such as {{timeout: 2, retries: 1}}, got "
                         f"{_show(options)}", label))
        return found
    if "retry_on" in options or "retry" in options:
        problems.append(PlanProblem("bad_shape", "'retry_on' and 'retry' take Python objects, "
                                                 "which a plan file cannot hold; set them on "
                                                 "the tool in code", label))
        return found
    granted = sorted(set(options) & _CODE_ONLY_OPTIONS)
    if granted:
        problems.append(PlanProblem("bad_shape", f"{granted} decide what a tool may reach in "
                                                 "this process (secrets, trusted loading of "
                                                 "its results), which a plan file cannot grant; "
                                                 "set them on the tool in code", label))
        return found
    weakened = _weakened(found, options)
    if weakened:
        problems.append(PlanProblem("bad_shape", f"{weakened}, which a plan file cannot undo; "
                                                 "change it on the tool in code", label))
        return found
    try:
        return found.options(**options)
    except (ShoalError, TypeError, ValueError, AttributeError) as exc:
        # a wrongly typed value (timeout: "2") fails deep in the policy code as a TypeError
        problems.append(PlanProblem("bad_shape", f"bad 'options': {exc}", label))
        return found


# Isolation levels that keep a tool's code out of this process: a plan may not move it back in.
_OUT_OF_PROCESS = frozenset({"process", "ray"})


def _weakened(found: Tool[..., Any], options: Mapping[str, Any]) -> str:
    """What ``options`` would loosen of the safeguards the tool's code set ("" if nothing).

    A plan file may come from a model or another person: it can ask for more care
    (``approval: true``, ``isolation: process``), never for less than the code decided.
    """
    policy = found.policy
    if "approval" in options and policy.approval is not False and options["approval"] is not True:
        return f"tool {found.name!r} asks for approval in code"
    isolation = options.get("isolation", policy.isolation)
    if policy.isolation in _OUT_OF_PROCESS and isolation != policy.isolation:
        return f"tool {found.name!r} runs with isolation={policy.isolation!r} in code"
    return ""


def _unknown_key(key: Any, allowed: tuple[str, ...], where: str = "the node") -> str:
    # (a key that is no text has no close match: its own __str__ is not called)
    close = difflib.get_close_matches(key[:100], allowed, n=1) if isinstance(key, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where} has an unknown key {_show(key)}; {hint}allowed keys: {', '.join(allowed)}"


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _kind(value: Any) -> str:
    return f"a {type(value).__name__} ({_show(value)})"


@functools.cache
def placeholder_tool() -> Tool[..., Any]:
    """Return a tool that stands in for one that could not be resolved, in invalid plans.

    It accepts any arguments, so that a node whose tool failed to load can still be added and
    refs to it are not reported as dangling; such plans raise :class:`PlanError` and never run.
    """

    def unavailable(**args: Any) -> None:
        raise RuntimeError("placeholder for a tool that could not be loaded")

    return Tool(unavailable)
