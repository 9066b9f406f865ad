"""Argument schemas from function signatures: pydantic models, docs, validation messages.

A tool's arguments become a pydantic model built from the signature and the docstring's
parameter section (Google, NumPy or Sphinx style, read by griffe); it validates calls and
publishes the JSON schema. Parameter names pydantic cannot use as fields (``schema``,
``json``, leading underscores ...) are aliased, so users always see their own names.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
import re
import textwrap
import types
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from shoal.exceptions import ToolDefinitionError
from shoal.merge import error_text, shown

if TYPE_CHECKING:
    import pydantic
    from griffe import PerStyleOptions
    from pydantic import ConfigDict
    from pydantic.fields import FieldInfo

__all__ = [
    "IDEMPOTENCY_KEY",
    "IdempotencyKey",
    "Injected",
    "ModelFacts",
    "args_model",
    "describe_errors",
    "field_adapter",
    "is_async_callable",
    "misstated_choice",
    "model_facts",
    "param_docs",
    "strict_json",
    "summary",
    "unresolved_names",
]


class Injected:
    """Marks a parameter that the runtime fills in itself, such as :data:`IdempotencyKey`.

    Such a parameter is left out of the tool's schema: callers and models never see or set it.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"Injected({self.what!r})"


IDEMPOTENCY_KEY = Injected("idempotency_key")
IdempotencyKey = Annotated[str, IDEMPOTENCY_KEY]
"""Annotate a tool parameter with this to receive an idempotency key: ``"<run id>:<node id>"``,
the same for every attempt of the call, and after a crash and resume too, so a remote service
can tell a repeat from a new request. Not part of the tool's schema."""


def _injected(annotation: Any) -> str | None:
    """What the runtime injects into a parameter with this annotation (``None``: nothing).

    That is an ``Annotated[..., Injected(kind)]``, or a class that names its kind in
    ``__shoal_injected__`` (such as :class:`shoal.BoardHandle`); such a class or ``None``
    (``BoardHandle | None``) is the kind with a ``?``: ``None`` when the run has none.
    """
    if isinstance(annotation, type):
        kind = getattr(annotation, "__shoal_injected__", None)
        return kind if isinstance(kind, str) else None
    if get_origin(annotation) in (Union, UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1 < len(get_args(annotation)) and isinstance(options[0], type):
            kind = _injected(options[0])
            return None if kind is None else f"{kind}?"
    if get_origin(annotation) is Annotated:
        for extra in get_args(annotation)[1:]:
            if isinstance(extra, Injected):
                return extra.what
    return None


# griffe's parsers log a warning for each oddity (an undocumented type, an unknown section);
# those are for documentation builds, not for the users of a tool.
_QUIET: PerStyleOptions = {"google": {"warnings": False}, "numpy": {"warnings": False},
                           "sphinx": {"warnings": False}}


# A line that could open a section in some style: a Google header or admonition ("Args:",
# "Note: ..."), a Sphinx field (":param x:"), a NumPy underline ("-----"). Only a docstring
# with one is handed to griffe, so shoal's own tools do not load it at import.
_MAY_HAVE_SECTIONS = re.compile(r"^[ \t]*(?:\w[\w \t-]*:|:|-{3,})", re.MULTILINE)


@functools.lru_cache(maxsize=64)  # a tool asks twice: for its summary, for its arguments
def _parsed_doc(doc: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(summary, (parameter, description) pairs) of a docstring in any style griffe reads.

    The style (Google, NumPy or Sphinx) is told from the docstring's section markers; with
    none, it is read as Google style. A docstring griffe cannot read is all summary.
    """
    if not _MAY_HAVE_SECTIONS.search(doc):  # plain text: no need to load griffe for it
        return doc.strip(), ()
    import griffe

    try:
        sections = griffe.parse_auto(griffe.Docstring(doc), default="google",
                                     per_style_options=_QUIET)
    except Exception:  # griffe's bug, not the tool's: keep the text, lose the structure
        return doc.strip(), ()
    return _summary_of(sections), tuple(_params_of(sections))


def _summary_of(sections: Sequence[Any]) -> str:
    """The text before the first structured section; a note or warning in it kept as written."""
    kept: list[str] = []
    for section in sections:
        if section.kind.value == "text":
            kept.append(str(section.value))
        elif section.kind.value == "admonition":
            body = str(section.value.description)
            kept.append(f"{section.title}:\n{textwrap.indent(body, '    ')}")
        else:
            break
    return "\n\n".join(kept).strip()


def _params_of(sections: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """(name, description) of every documented parameter, keyword-only ones included."""
    for section in sections:
        if section.kind.value in ("parameters", "other parameters"):
            for param in section.value:
                name, text = str(param.name).lstrip("*"), str(param.description).strip()
                if name and text:
                    yield name, text


def param_docs(doc: str) -> dict[str, str]:
    """Argument descriptions from a docstring's parameter sections, each kept whole.

    Google (``Args:``), NumPy (``Parameters`` / ``----------``) and Sphinx (``:param x:``)
    styles are read; a description over several lines keeps all of them.
    """
    return dict(_parsed_doc(doc)[1])


def summary(doc: str) -> str:
    """The docstring up to its first section (``Args:``, ``Returns:``, ``Parameters`` ...)."""
    return _parsed_doc(doc)[0]


def _needs_alias(name: str) -> bool:
    """Whether ``name`` cannot be a pydantic field name as it is.

    pydantic drops names with a leading underscore (they become private attributes) and warns
    about, or refuses, names that shadow ``BaseModel`` attributes (``schema``, ``json``,
    ``copy``, ``dict``, ``model_config``, ``model_dump`` ...).
    """
    import pydantic  # where a model is made: ``import shoal`` loads no pydantic

    return name.startswith("_") or hasattr(pydantic.BaseModel, name)


def _field_name(name: str, taken: set[str]) -> str:
    """A safe field name for parameter ``name``, distinct from every name in ``taken``."""
    candidate = (name.strip("_") or "arg") + "_"
    while candidate in taken or _needs_alias(candidate):
        candidate += "_"
    return candidate


def _field_spec(annotation: Any, default: Any, description: str | None,
                alias: str | None) -> tuple[Any, Any]:
    """(annotation, FieldInfo) for one parameter; ``default`` may itself be a ``Field(...)``."""
    # here, not at the top: pydantic (and pydantic.fields, with the annotated types it brings)
    # are a third of what ``import shoal`` and every public name cost without it; only a
    # tool's argument model needs them
    import pydantic
    from pydantic.fields import FieldInfo

    if isinstance(default, FieldInfo):  # the idiom `x: int = Field(ge=1, description=...)`
        extras: dict[str, Any] = {}
        if description is not None and default.description is None:
            extras["description"] = description
        if alias is not None and default.alias is None and default.validation_alias is None:
            extras["alias"] = alias
        if not extras:
            return annotation, default
        # pydantic merges the Field in the Annotated metadata with the one assigned
        return Annotated[annotation, default], pydantic.Field(**extras)
    return annotation, pydantic.Field(default, description=description, alias=alias)


def _hint_source(fn: Callable[..., Any]) -> Any:
    """The object whose annotations describe calling ``fn``.

    That is a partial's function, or the ``__call__`` of a callable object.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return call if inspect.isfunction(call) else fn


def args_model(
    name: str, fn: Callable[..., Any], docs: dict[str, str]
) -> type[pydantic.BaseModel]:
    """A pydantic model of ``fn``'s parameters, used both to validate and to publish a schema.

    A parameter whose name pydantic cannot use as a field name (see :func:`_needs_alias`)
    becomes a field with a safe name and the parameter's name as its alias: callers, error
    messages and the JSON schema all use the parameter's name, and :meth:`Tool.validate`
    maps the field back to it.
    """
    try:
        hints = get_type_hints(_hint_source(fn), include_extras=True)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:  # builtins (max), classes written in C (int)
        raise ToolDefinitionError(
            f"tool {name!r}: its parameters cannot be read ({exc}); wrap it in a Python "
            f"function with named, annotated parameters") from None
    taken = {p.name for p in params}
    fields: dict[str, Any] = {}
    renames: dict[str, str] = {}
    injected: dict[str, str] = {}
    extra: Literal["forbid", "allow"] = "forbid"
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            raise ToolDefinitionError(
                f"tool {name!r}: *{param.name} is not supported; tools take named arguments"
            )
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolDefinitionError(
                f"tool {name!r}: positional-only parameter {param.name!r} cannot be passed "
                "by name; remove the '/' from the signature"
            )
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        if (what := _injected(annotation)) is not None:  # filled in by the runtime: no field
            injected[param.name] = what
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        key, alias = param.name, None
        if _needs_alias(param.name):
            key, alias = _field_name(param.name, taken), param.name
            taken.add(key)
            renames[key] = param.name
        fields[key] = _field_spec(annotation, default, docs.get(param.name), alias)
    model = _built_model(name, fn, fields, extra)
    _FACTS[model] = ModelFacts.of(model, renames)
    _FACTS[model].injected = injected
    return model


def _built_model(name: str, fn: Callable[..., Any], fields: Mapping[str, Any],
                 extra: Literal["forbid", "allow"]) -> type[pydantic.BaseModel]:
    """The argument model of tool ``name`` with these fields, or a ToolDefinitionError.

    The model belongs to ``fn``'s module, so a name its annotations use that is not defined
    yet (a class further down the module) is looked up there when the model is first used.
    A type pydantic cannot check (``typing.TypedDict`` before Python 3.12, an annotation
    whose text does not evaluate) is the tool's error, naming its parameter.
    """
    import pydantic
    from pydantic import ConfigDict

    config = ConfigDict(arbitrary_types_allowed=True, extra=extra)
    model_name = re.sub(r"\W", "_", name) + "_args"
    module = getattr(_hint_source(fn), "__module__", None)
    home = module if isinstance(module, str) else __name__
    try:
        return pydantic.create_model(model_name, __config__=config, __module__=home, **fields)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # pydantic's refusal, or an annotation's own code failing
        culprit = _failing_field(model_name, config, home, fields)
        where = f"parameter {culprit!r}" if culprit else "its parameters"
        raise ToolDefinitionError(
            f"tool {name!r}: the type of {where} cannot be checked ({_cut(error_text(exc))}); "
            "annotate it with a type pydantic supports") from None


def _failing_field(model_name: str, config: ConfigDict, module: str,
                   fields: Mapping[str, Any]) -> str:
    """The first field of ``fields`` whose model on its own cannot be made ('' if none)."""
    import pydantic

    for key, spec in fields.items():
        try:
            pydantic.create_model(model_name, __config__=config, __module__=module, **{key: spec})
        except KeyboardInterrupt:
            raise
        except BaseException:
            from pydantic.fields import FieldInfo

            alias = spec[1].alias if isinstance(spec[1], FieldInfo) else None
            return str(alias or key)
    return ""


def _cut(text: str, most: int = 300) -> str:
    """``text`` up to ``most`` characters (pydantic's messages carry a whole URL)."""
    text = text.split("\n\nFor further information", 1)[0]
    return text if len(text) <= most else text[:most - 3] + "..."


def unresolved_names(model: type[pydantic.BaseModel]) -> str:
    """What stops ``model``'s annotations from resolving, for a tool whose model is not complete.

    pydantic leaves a model whose annotations name something not defined (yet) incomplete,
    to try again when it is used; this says what is still missing, in a sentence.
    """
    import pydantic

    try:
        model.model_rebuild(raise_errors=True)
    except pydantic.PydanticUndefinedAnnotation as exc:
        return (f"its parameters' types name {exc.name!r}, which is not defined in module "
                f"{model.__module__!r}; define or import it there")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return f"its parameters' types cannot be checked ({_cut(error_text(exc))})"
    return "its parameters' types could not be checked when it was first used; call it again"


@dataclass(slots=True, eq=False)
class ModelFacts:
    """What a tool needs to know about its argument model, worked out once per model."""

    inputs: dict[str, str]  # argument name a caller uses -> model field name
    renames: dict[str, str]  # model field name -> function parameter name, where they differ
    required: frozenset[str]  # argument names that must be given
    accepts_extra: bool
    fresh_defaults: bool | None  # a default_factory anywhere (None: the schema is not built)
    adapters: dict[str, pydantic.TypeAdapter[Any] | None] = field(default_factory=dict)
    injected: dict[str, str] = field(default_factory=dict)  # parameter -> what the runtime puts

    @classmethod
    def of(cls, model: type[pydantic.BaseModel], renames: Mapping[str, str]) -> ModelFacts:
        """Read the facts off ``model``; ``renames`` maps aliased field names back."""
        inputs: dict[str, str] = {}
        required: set[str] = set()
        for key, info in model.model_fields.items():
            given = info.validation_alias if isinstance(info.validation_alias, str) else None
            outside = given or info.alias or key
            inputs[outside] = key
            if info.is_required():
                required.add(outside)
        return cls(inputs, dict(renames), frozenset(required),
                   model.model_config.get("extra") == "allow",
                   _has_default_factory(model.__pydantic_core_schema__))


_FACTS: weakref.WeakKeyDictionary[type[pydantic.BaseModel], ModelFacts] = (
    weakref.WeakKeyDictionary())


def model_facts(model: type[pydantic.BaseModel]) -> ModelFacts:
    """The (cached) facts of an argument model."""
    found = _FACTS.get(model)
    if found is None:  # a model not made by args_model
        found = _FACTS[model] = ModelFacts.of(model, {})
    return found


def _has_default_factory(schema: Any) -> bool | None:
    """Whether a pydantic core schema uses a ``default_factory`` anywhere (nested models too).

    ``None`` when the schema is not built yet (a mock, for unresolved forward references).
    A default value is the tool's own (it may contain itself, or be huge): it is not walked.
    """
    if not isinstance(schema, dict):
        return None
    stack: list[Any] = [schema]
    seen: set[int] = set()  # schemas shared by reference are walked once
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if type(item) is dict:
            if "default_factory" in item:
                return True
            if item.get("type") == "default":  # {"type": "default", "schema": ..., "default": v}
                stack.append(item.get("schema"))
            else:
                stack.extend(item.values())
        elif type(item) is list or type(item) is tuple:
            stack.extend(item)
    return False


def _misstated(value: Any) -> bool:
    """Whether a JSON schema would offer ``value`` as something else, or not as JSON at all.

    pydantic writes a ``bytes`` value out as a string, which validation then refuses (a str
    is not bytes), and a float NaN or infinity as itself, which strict JSON cannot hold.
    """
    if isinstance(value, enum.Enum):
        value = value.value
    return isinstance(value, bytes) or (isinstance(value, float) and not math.isfinite(value))


def misstated_choice(model: type[pydantic.BaseModel],
                     renames: Mapping[str, str]) -> tuple[str, Any] | None:
    """(argument path, value) of a ``Literal`` or ``Enum`` choice no JSON schema can offer.

    Such a choice (see :func:`_misstated`) would be advertised as a value its validation
    refuses, or as no JSON: ``None`` when the model has none. Defaults are not looked at (a
    default is the tool's own value: a schema can leave it out).
    """
    schema: Any = model.__pydantic_core_schema__
    if not isinstance(schema, dict):  # not built (unresolved names): said elsewhere
        return None
    defs: dict[str, Any] = {}
    stack: list[tuple[Any, str]] = [(schema, "")]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (list, tuple)):
            stack.extend((x, where) for x in item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "literal" or kind == "enum":
            for value in item.get("expected" if kind == "literal" else "members", ()):
                if _misstated(value):
                    return where, value
        if kind == "definitions":
            defs.update((d["ref"], d) for d in item["definitions"])
            stack.append((item["schema"], where))
        elif kind == "definition-ref":
            stack.append((defs.get(item["schema_ref"]), where))
        elif kind in ("model-fields", "typed-dict-fields"):
            top = not where and item.get("model_name") == model.__name__
            stack.extend((f, _joined(where, renames.get(k, k) if top else k))
                         for k, f in item["fields"].items())
        elif kind == "dataclass-args":
            stack.extend((f, _joined(where, f["name"])) for f in item["fields"])
        else:
            stack.extend((v, where) for k, v in item.items()
                         if k not in ("default", "metadata", "expected", "members"))
    return None


def _joined(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


#: Schema keywords a non-finite float may be dropped from: the schema then says less (no
#: bound, no default shown), never something validation refuses.
_DROPPABLE = frozenset({"default", "examples", "minimum", "maximum", "exclusiveMinimum",
                        "exclusiveMaximum", "multipleOf"})


def strict_json(schema: dict[str, Any]) -> str:
    """Make a JSON schema strict JSON in place: '' once it is, else where a NaN or inf stays.

    A non-finite float under a keyword of :data:`_DROPPABLE` (a default of ``inf``, a bound
    ``le=math.inf``) is dropped with its keyword; anywhere else it is reported, as a path.
    """
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key in [k for k in item if k in _DROPPABLE and _non_finite(item[k])]:
                del item[key]
            stack.extend((v, f"{where}/{k}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return where or "/"
    return ""


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is, or (a list) holds, a float NaN or infinity."""
    if isinstance(value, list):
        return any(map(_non_finite, value))
    return isinstance(value, float) and not math.isfinite(value)


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns an awaitable coroutine.

    Sees through ``functools.partial``, looks at the ``__call__`` of callable objects, and
    follows ``__wrapped__`` only for callables that cannot tell by themselves (such as the C
    wrapper of ``functools.lru_cache``): a Python function's own code decides for it, so a
    sync wrapper made with ``functools.wraps`` around an async function stays sync.
    """
    # most tools' case first, without inspect's unwrapping: an ``async def`` function, or a
    # method or partial of one (an agent binds one for each subagent and each run it starts)
    base = fn.func if type(fn) is functools.partial else fn
    if type(base) is types.MethodType:
        base = base.__func__
    if type(base) is types.FunctionType and base.__code__.co_flags & inspect.CO_COROUTINE:
        return True
    for _ in range(100):  # a bound on the unwrapping, against __wrapped__ loops
        if inspect.iscoroutinefunction(fn):
            return True
        if isinstance(fn, functools.partial):
            fn = fn.func
            continue
        if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type):
            return False
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
        if inspect.isfunction(call):
            return inspect.iscoroutinefunction(call)
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None:
            return False
        fn = wrapped
    return False


#: The most problems :func:`describe_errors` describes; the others are counted.
MAX_DESCRIBED = 20


def describe_errors(errors: Sequence[Any], total: int | None = None) -> tuple[str, str]:
    """(first offending argument, the problems as text) from pydantic's error list.

    ``total``: how many problems there are, when ``errors`` holds only the first
    :data:`MAX_DESCRIBED` of them (default: as many as it holds).

    At most :data:`MAX_DESCRIBED` are described, then counted: each described one quotes
    its value, and arguments of 100,000 unknown names (one request to ``shoal mcp serve``)
    took seconds to describe, while the event loop served no one else, for a message cut
    to its first few anyway.
    """
    parts: list[str] = []
    first = ""
    for err in errors[:MAX_DESCRIBED]:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or str(err["loc"][0] if err["loc"] else "")
        got = f" (got {shown(err['input'])})" if err["type"] != "missing" else ""
        if err["type"] == "extra_forbidden":
            parts.append(f"unexpected argument {loc!r}")
        elif not err["loc"]:  # of no argument: an argument's name itself, such as "\udc80"
            parts.append(f"an argument's name {shown(err['input'])}: {err['msg']}")
        else:
            parts.append(f"argument {loc!r}: {err['msg']}{got}")
    total = len(errors) if total is None else total
    if total > MAX_DESCRIBED:
        parts.append(f"and {total - MAX_DESCRIBED:,} more problems")
    return first, "; ".join(parts)


def field_adapter(info: FieldInfo) -> pydantic.TypeAdapter[Any] | None:
    """A validator for one field on its own, constraints included (``None`` if none fits).

    pydantic keeps ``Annotated`` constraints (``Field(ge=1)``, ``max_length``...) in
    ``FieldInfo.metadata`` and a union's discriminator apart, not in ``annotation``.
    """
    import pydantic
    from pydantic import ConfigDict

    extras: list[Any] = list(info.metadata)
    if info.discriminator is not None:
        extras.append(pydantic.Field(discriminator=info.discriminator))
    annotation: Any = Annotated[(info.annotation, *extras)] if extras else info.annotation
    try:
        return pydantic.TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except pydantic.PydanticSchemaGenerationError:
        return None
