"""Tools: typed callables with a schema and an execution policy.

``@shoal.tool`` turns a sync or async function into a :class:`Tool`. Its name, description and
JSON schema come from the function (:mod:`shoal.schema` builds a pydantic model from the
signature); its policy (:mod:`shoal.policy`: timeout, retries, isolation, limits, footprints,
approval, idempotency) travels with it and can be overridden for one call with
:meth:`Tool.options`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import re
import string
import unicodedata
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from shoal.exceptions import (
    ShoalError,
    ToolArgumentError,
    ToolDefinitionError,
    bounded_text,
)
from shoal.merge import error_text, shown
from shoal.nodeids import SEPARATOR
from shoal.policy import (
    ISOLATIONS,
    ApprovalRule,
    Isolation,
    RetryPolicy,
    ToolPolicy,
    check_policy,
    placed_by_options,
    policy_from,
)
from shoal.schema import (
    MAX_DESCRIBED,
    args_model,
    describe_errors,
    field_adapter,
    is_async_callable,
    misstated_choice,
    model_facts,
    param_docs,
    strict_json,
    summary,
    unresolved_names,
)

if TYPE_CHECKING:
    import pydantic
    from pydantic.json_schema import GenerateJsonSchema

__all__ = ["ISOLATIONS", "ApprovalRule", "Isolation", "RetryPolicy", "Tool", "ToolPolicy", "tool"]

P = ParamSpec("P")
R = TypeVar("R")


#: The cached properties of a tool worked out from its schema alone, immutable: a tool bound to
#: another function (see :meth:`Tool.bound_to`) takes them over instead of working them out.
_SCHEMA_FACTS = ("_plain", "_kept_as_is", "_known_names")


class Tool(Generic[P, R]):
    """A named, typed callable with an execution policy.

    Call it like the function it wraps (``search(query="x")`` runs the function directly);
    put it in a plan with ``plan.call(search, query="x")`` to run it under the runtime.
    """

    __slots__ = (
        "__dict__",
        "_model",
        "_param_names",
        "_renames",
        "default_isolation",
        "description",
        "fn",
        "has_default_factory",
        "injected",
        "is_async",
        "model_facts",
        "name",
        "policy",
    )  # fmt: skip

    # fn, is_async, injected and default_isolation are plain attributes, set once (see
    # _set_callable) rather than properties: the scheduler reads them several times for every
    # call it runs, and a property is a Python call each time (tens per subagent of a swarm).
    #: The wrapped function.
    fn: Callable[..., Any]
    #: Whether calling the wrapped callable returns a coroutine (see ``is_async_callable``).
    is_async: bool
    #: Parameters the runtime fills in (name -> what, e.g. ``"idempotency_key"``). They are
    #: not arguments: the schema leaves them out (see ``shoal.IdempotencyKey``).
    injected: Mapping[str, str]
    #: Where the tool runs when neither it nor the runtime says otherwise.
    default_isolation: Isolation

    def __init__(
        self,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str | None = None,
        description: str | None = None,
        policy: ToolPolicy | None = None,
        _model: type[pydantic.BaseModel] | None = None,
    ) -> None:
        if not callable(fn):
            raise not_a_function(fn)
        self._set_callable(fn)
        base: Any = fn
        while isinstance(base, functools.partial):  # name and docs come from the function
            base = base.func
        name, description = _text("name", name), _text("description", description)
        self.name: str = name or str(getattr(base, "__name__", type(base).__name__))
        if SEPARATOR in self.name:
            raise ToolDefinitionError(
                f"tool name {self.name!r} cannot hold {SEPARATOR!r}: shoal names a call "
                f"'<tool>#<n>' and joins run ids, lineages and node ids with {SEPARATOR!r}, so "
                f"the call's id would read as two levels; give name= without it, such as "
                f"{self.name.replace(SEPARATOR, '_')!r}")
        doc = inspect.getdoc(base) or ""
        self.description = description if description is not None else summary(doc)
        self._model = _model or args_model(self.name, fn, param_docs(doc))
        self.model_facts = model_facts(self._model)
        self.injected = self.model_facts.injected
        self._param_names = frozenset(self.model_facts.inputs)
        self._renames = self.model_facts.renames  # empty unless a parameter name needed an alias
        # Whether validating arguments may create new values (a default_factory, here or in a
        # nested model): then a plan's validated arguments are not reused, each run validates
        # afresh and gets its own generated ids and timestamps. True when it cannot be known.
        self.has_default_factory: bool = self.model_facts.fresh_defaults is not False
        self.policy = policy or ToolPolicy()
        self.__doc__ = base.__doc__
        self.__module__ = getattr(base, "__module__", __name__)
        self.__qualname__ = getattr(base, "__qualname__", self.name)
        self.__wrapped__ = fn
        check_policy(self.name, self.is_async, self.policy)
        if not self.model_facts.accepts_extra:  # (a tool taking **more may get any name)
            _check_key_fields(self.name, self.policy, self._param_names)

    def _set_callable(self, fn: Callable[..., Any]) -> None:
        """Wrap ``fn``: it, whether it is async, and so where the tool runs by default."""
        self.fn = fn
        self.is_async = is_async = is_async_callable(fn)
        self.default_isolation = "inline" if is_async else "thread"

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """Each optional argument's default value, by argument name (not default factories)."""
        return {outside: self._model.model_fields[key].default
                for outside, key in self.model_facts.inputs.items()
                if not self._model.model_fields[key].is_required()}

    @property
    def parameters(self) -> frozenset[str]:
        """The names of the tool's arguments."""
        return self._param_names

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the wrapped function directly (no runtime, no policy)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        where = (self.policy.isolation or placed_by_options(self.policy)
                 or self.default_isolation)
        return f"<Tool {self.name} ({'async' if self.is_async else 'sync'}, {where})>"

    def options(self, **overrides: Any) -> Tool[P, R]:
        """A copy of this tool with some policy fields replaced (for one call or one plan).

        Accepts the keyword arguments of :func:`tool` that describe policy, e.g.
        ``search.options(timeout=2, retries=3)``.
        """
        policy = policy_from(self.policy, overrides)
        return Tool(self.fn, name=self.name, description=self.description, policy=policy,
                    _model=self._model)

    def bound_to(self, fn: Callable[..., Any]) -> Tool[..., Any]:
        """The same tool (name, schema, policy) calling ``fn`` instead.

        For per-call state, such as a subagent bound to its place in an agent tree. ``fn``
        must take the same arguments; the schema is reused, not rebuilt.
        """
        if not callable(fn):
            raise not_a_function(fn)
        # as Tool(fn, name=..., description=..., policy=..., _model=...) would make it, but
        # sharing what depends only on the schema and the policy, which an agent binds for
        # every subagent it starts and every run of its own (the docs are ``fn``'s)
        bound: Tool[..., Any] = Tool.__new__(Tool)
        bound._set_callable(fn)
        is_async = bound.is_async
        base: Any = fn
        while isinstance(base, functools.partial):  # the docs come from the function
            base = base.func
        bound.name, bound.description, bound.policy = self.name, self.description, self.policy
        bound._model, bound.model_facts = self._model, self.model_facts
        bound.injected = self.injected
        bound._param_names, bound._renames = self._param_names, self._renames
        bound.has_default_factory = self.has_default_factory
        bound.__doc__ = base.__doc__
        bound.__module__ = getattr(base, "__module__", __name__)
        bound.__qualname__ = getattr(base, "__qualname__", self.name)
        bound.__wrapped__ = fn
        # this schema's cached facts, worked out on the template (once) if not yet: a bound
        # tool is made per subagent started and lives for one call, too short to cache them
        facts = bound.__dict__
        for name in _SCHEMA_FACTS:
            facts[name] = getattr(self, name)
        if is_async != self.is_async:  # the policy was checked for the other kind of callable
            check_policy(self.name, is_async, self.policy)
        return bound

    @functools.cached_property
    def _plain(self) -> PlainFields | None:
        """The fields, if every one takes a plain value as it is (see :func:`plain_fields`)."""
        return plain_fields(self._model)

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check and coerce ``args`` against the schema; raise :class:`ToolArgumentError`."""
        if not self._param_names and not args and self._model.model_config.get("extra") != "allow":
            return {}
        plain = self._plain
        if plain is not None and len(args) <= len(plain):
            # every field a bare int, str, float or bool: a value of exactly that type is what
            # pydantic would return as it is, so the schema needs no pass (most calls' case)
            values: dict[str, Any] = {}
            given = 0
            for name, kind, default in plain:
                value = args.get(name, _UNSET)
                if type(value) is kind:
                    given += 1
                elif value is _UNSET and default is not _UNSET:
                    value = default
                else:
                    break  # a value to convert or to refuse: pydantic says which
                values[name] = value
            else:
                if given == len(args):  # no argument the schema does not know
                    return values
        import pydantic  # (loaded: this tool's model is one) ``import shoal`` loads none

        unknown = self._unknown_names(args)
        try:
            instance = self._model.__pydantic_validator__.validate_python(
                {k: args[k] for k in self._known_names or () if k in args} if unknown else args)
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False)
            argument, message = describe_errors(
                [*errors, *_unknown_errors(args, unknown, MAX_DESCRIBED - len(errors))],
                len(errors) + len(unknown))
            raise ToolArgumentError(self.name, argument, message) from None
        except RecursionError:  # a value (or a default, copied for each call) nested too deep
            raise ToolArgumentError(self.name, "", "the arguments (or a default value copied "
                                    "for the call) are nested too deeply to check") from None
        except KeyboardInterrupt:  # Ctrl-C keeps its meaning
            raise
        except BaseException as exc:  # a validator's own error, SystemExit too: not the run's
            raise self._checker_failed(exc) from None
        if unknown:
            argument, message = describe_errors(
                _unknown_errors(args, unknown, MAX_DESCRIBED), len(unknown))
            raise ToolArgumentError(self.name, argument, message)
        renames = self._renames
        values = ({renames.get(k, k): v for k, v in instance.__dict__.items()} if renames
                  else dict(instance.__dict__))
        extra = instance.__pydantic_extra__
        if extra:  # a tool taking **more: any name but one the runtime fills in itself
            if self.injected and not self.injected.keys().isdisjoint(extra):
                name = next(n for n in extra if n in self.injected)
                raise ToolArgumentError(self.name, name, self._injected_given(name))
            values.update(extra)
        return values

    def _unknown_names(self, args: Mapping[str, Any]) -> set[Any]:
        """The names of ``args`` the schema refuses as unknown, found by a set difference.

        Empty when its model takes unknown names, or may take names its facts do not list
        (an alias choice); pydantic then judges them all. pydantic makes an error of each
        unknown name, its value quoted: arguments of 100,000 unknown names (one request to
        ``shoal mcp serve``) took 1.5-2 s to refuse, while the event loop served no one else.
        """
        known = self._known_names
        if known is None or known.issuperset(args):
            return set()
        unknown = set(args).difference(known)
        try:  # a name that is no plain text pydantic describes otherwise: it judges them all
            "".join(unknown).encode()
        except (TypeError, UnicodeEncodeError):
            return set()
        return unknown

    @functools.cached_property
    def _known_names(self) -> frozenset[str] | None:
        """Every argument name the schema takes, if it refuses any other (else None)."""
        model = self._model
        config = model.model_config
        if config.get("extra") != "forbid" or config.get("populate_by_name") or config.get(
                "validate_by_name"):
            return None
        if any(info.validation_alias is not None and not isinstance(info.validation_alias, str)
               for info in model.model_fields.values()):
            return None
        return frozenset(self.model_facts.inputs)

    def _injected_given(self, name: str) -> str:
        """Why a call may not pass ``name``, a parameter the runtime fills in."""
        return (f"unexpected argument {name!r}: the runtime fills it in "
                f"({self.injected[name]}); leave it out, or give the value another name")

    def _checker_failed(self, exc: BaseException) -> ShoalError:
        """The error for validation that raised ``exc`` instead of judging the arguments.

        pydantic turns only a validator's ``ValueError`` or ``AssertionError`` into a
        validation error: anything else a validator (of a nested model, say) or a
        ``default_factory`` raises comes out as it is. It fails the call, as a tool's own
        error would, and no more: a model reads it as a rejected call, a plan as a bad
        argument. A model that names a type never defined is the tool's definition at
        fault, said so (see :func:`unresolved_names`).
        """
        import pydantic

        if isinstance(exc, pydantic.PydanticUserError):
            return ToolDefinitionError(f"tool {self.name!r}: {unresolved_names(self._model)}")
        copied = self._default_copy_failed(exc)
        if copied is not None:
            return copied
        return ToolArgumentError(self.name, "", f"checking the arguments raised "
                                 f"{error_text(exc)}: the tool's own checking code (a validator "
                                 "or a default_factory of its argument types) failed on them")

    def _default_copy_failed(self, exc: BaseException) -> ToolArgumentError | None:
        """The error for a default whose copy raised ``exc``, if that is what raised it.

        pydantic gives each call its own ``copy.deepcopy`` of a mutable default, so a default
        whose ``__deepcopy__`` (or an item's) raises fails every call that leaves it out: the
        error names the parameter and its default, not the checking code. A ``deepcopy``
        called right from validation (no frame of a validator between) is such a copy.
        """
        tb, caller = exc.__traceback__, None
        while tb is not None:
            code = tb.tb_frame.f_code
            if (code.co_name == "deepcopy" and code.co_filename == copy.__file__
                    and caller is Tool.validate.__code__):
                break
            caller, tb = code, tb.tb_next
        if tb is None:
            return None
        value = tb.tb_frame.f_locals.get("x")
        fields = self._model.model_fields
        found = [outside for outside, key in self.model_facts.inputs.items()
                 if not fields[key].is_required() and fields[key].default is value]
        what = (f"the default of {found[0]!r}, {shown(value)}," if found
                else "a default value of a nested model's field")
        return ToolArgumentError(
            self.name, found[0] if found else "",
            f"{what} is copied for each call that leaves it out, and copying it (copy.deepcopy) "
            f"raised {error_text(exc)}; give a default that can be copied, or default to None "
            "and make the value in the function")

    @functools.cached_property
    def _kept_as_is(self) -> tuple[tuple[str, ...], tuple[type, ...]] | None:
        """The plain fields' names and types (see :meth:`keeps`), if every field is plain."""
        plain = self._plain
        if plain is None:
            return None
        return tuple(name for name, _, _ in plain), tuple(kind for _, kind, _ in plain)

    def keeps(self, args: Mapping[str, Any]) -> bool:
        """Whether :meth:`validate` returns ``args`` as they are: names, order and values.

        True when every field is a plain one (see :func:`plain_fields`) and ``args`` gives
        each, in field order, a value of exactly its type, and nothing else: a check with no
        new dict, for a plan's many ref-free calls (validated once, before the run).
        """
        signature = self._kept_as_is
        if signature is None or len(args) != len(signature[0]):
            return False
        names, kinds = signature
        if len(names) == 1:  # most tools: one argument, looked up (a loop costs 4x as much)
            return type(args.get(names[0], _UNSET)) is kinds[0]
        # a loop, not tuples made to compare: calls have few arguments
        for at, (name, value) in enumerate(args.items()):
            if name != names[at] or type(value) is not kinds[at]:
                return False
        return True

    def positional_names(self) -> list[str]:
        """The arguments a call may give by position (plan text's ``tool("x")``), in order."""
        return list(self._positional)

    @functools.cached_property
    def _positional(self) -> tuple[str, ...]:
        # read once per tool: inspect.signature costs more than the rest of binding a plan
        # text call, which a 100,000-step plan did for every step
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def check_static(self, args: Mapping[str, Any], is_pending: Callable[[Any], bool]) -> str:
        """Problems with ``args`` that can be seen before the run ('' when none).

        Values for which ``is_pending`` is true (refs to other calls' outputs) are not known
        yet; only their presence is checked, and the other arguments are checked one by one.
        """
        pending = [name for name, value in args.items() if is_pending(value)]
        if not pending:
            try:
                self.validate(args)
            except ToolArgumentError as exc:
                return exc.detail
            return ""
        facts = self.model_facts
        problems = [f"argument {n!r}: Field required" for n in sorted(facts.required - set(args))]
        if not facts.accepts_extra:
            problems += [f"unexpected argument {n!r}" for n in args if n not in self._param_names]
        elif self.injected:
            problems += [self._injected_given(n) for n in args if n in self.injected]
        for name, value in args.items():
            if name in self._param_names and name not in pending:
                problems += self._check_one(name, value)
        return "; ".join(problems)

    def _check_one(self, name: str, value: Any) -> list[str]:
        adapters = self.model_facts.adapters
        if name in adapters:
            adapter = adapters[name]
        else:
            adapter = adapters[name] = field_adapter(
                self._model.model_fields[self.model_facts.inputs[name]])
        if adapter is None:
            return []
        import pydantic

        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            return [f"argument {name!r}: {e['msg']} (got {shown(value)})" for e in exc.errors()[:1]]
        return []

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments; a :class:`ToolDefinitionError` if none.

        A parameter pydantic can check but not describe in JSON (a ``Callable``, a default
        value that cannot be written out, not even by its repr) leaves the tool usable in
        plans, but no model can be offered it: the error says which of these it is.
        """
        try:
            schema = self._model.model_json_schema(schema_generator=_schema_generator())
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a default's own repr raising SystemExit too
            raise self._no_schema(exc) from None
        misstated = misstated_choice(self._model, self._renames)
        if misstated is not None:
            where, value = misstated
            raise ToolDefinitionError(
                f"tool {self.name!r}: parameter {where!r} may be {shown(value)}, which a JSON "
                "schema cannot offer as it is (JSON has strings, not bytes; no NaN or "
                "infinity), so no model can be offered it; use str or finite values, or use "
                "it in plans only")
        stays = strict_json(schema)
        if stays:  # (a choice was caught above: this is a value pydantic put elsewhere)
            raise ToolDefinitionError(
                f"tool {self.name!r}: its JSON schema holds NaN or infinity at {stays}, which "
                "JSON cannot hold, so no model can be offered it; use it in plans only")
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    def _no_schema(self, exc: BaseException) -> ToolDefinitionError:
        """The error for a tool whose JSON schema could not be made: ``exc`` was raised."""
        if not self._model.__pydantic_complete__:
            return ToolDefinitionError(f"tool {self.name!r}: {unresolved_names(self._model)}")
        text = error_text(exc).split("\n\nFor further information", 1)[0]
        return ToolDefinitionError(
            f"tool {self.name!r}: its arguments cannot be written as a JSON schema "
            f"({text[:300]}), so no model can be offered it; give its parameters types and "
            "defaults JSON can hold, or use it in plans only")

    def check_api_name(self) -> None:
        """Raise :class:`ToolDefinitionError` if model APIs would refuse the tool's name.

        OpenAI and Anthropic take ``^[a-zA-Z0-9_-]{1,64}$`` as a function or tool name, and
        answer any other with an HTTP 400 for the whole request. Plans take any name but
        ``/``, so :func:`tool` does not check this: an agent's tools and the schema
        exporters do, where the tool is offered to a model.
        """
        if _API_NAME.fullmatch(self.name):
            return
        ascii_name = unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode()
        better = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_")[:64] or "tool"
        long = f" ({len(self.name)} characters)" if len(self.name) > 64 else ""
        raise ToolDefinitionError(
            f"tool name {bounded_text(repr(self.name), 120)}{long} cannot be offered to a model: "
            "model APIs (OpenAI, Anthropic) take 1-64 letters, digits, '_' or '-' and refuse "
            f"the whole request otherwise; rename it with @shoal.tool(name={better!r}) or "
            f"shoal.Tool(fn, name={better!r}) (plans may keep the name)")

    def to_openai(self) -> dict[str, Any]:
        """The tool as an OpenAI chat-completions ``tools`` entry.

        Raises :class:`ToolDefinitionError` for a name the API refuses (see
        :meth:`check_api_name`) or arguments with no JSON schema.
        """
        self.check_api_name()
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.json_schema(),
        }}  # fmt: skip

    def to_anthropic(self) -> dict[str, Any]:
        """The tool as an Anthropic messages ``tools`` entry (checked as :meth:`to_openai`)."""
        self.check_api_name()
        return {"name": self.name, "description": self.description,
                "input_schema": self.json_schema()}


@functools.cache
def _schema_generator() -> type[GenerateJsonSchema]:
    """The JSON schema generator: pydantic's, without its warning for a default JSON cannot hold.

    Such a default is left out of the schema: the argument stays optional, and a call that
    leaves it out gets the default. That is a schema that works, not one to warn about (and
    under ``-W error``, where the warning raised, a tool no model could be offered). Made on
    first use: ``import shoal`` loads no pydantic.
    """
    from pydantic.json_schema import GenerateJsonSchema

    class _Schema(GenerateJsonSchema):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ignored_warning_kinds = {"skipped-choice", "non-serializable-default"}

    return _Schema


_API_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # tool names OpenAI and Anthropic accept


def api_tool_name(name: str) -> str:
    """``name`` if model APIs accept it as a tool name, else one they do, told apart by a hash.

    OpenAI and Anthropic take 1-64 letters, digits, ``_`` and ``-``. Any other character
    becomes ``_``, the name is cut to 55, and a short hash of the original follows, so that
    two names differing only in the characters replaced stay apart (and apart from a tool
    whose name is the cleaned one).
    """
    if _API_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return (re.sub(r"[^A-Za-z0-9_-]", "_", name)[:55] or "tool") + "_" + digest
_FIELD_NAME = re.compile(r"[^.\[]*")  # the argument a key's field starts from: 'x' of 'x.y[0]'


def _check_key_fields(name: str, policy: ToolPolicy, parameters: frozenset[str]) -> None:
    """Refuse a resource key whose field names no argument of the tool (a typo, say).

    Its key would be a wildcard over its literal prefix at every call (as for a value not
    known yet), so the tool's calls would wait for every other use of that prefix: a plan
    silently run one call at a time. (The template's syntax is checked with the policy.)
    """
    for template in (*policy.reads, *policy.writes, *policy.merges):
        for _, field, _, _ in string.Formatter().parse(template):
            if field is None:
                continue
            argument = _FIELD_NAME.match(field)
            if argument is not None and argument.group() not in parameters:
                known = ", ".join(sorted(parameters)) or "none"
                raise ToolDefinitionError(
                    f"tool {name!r}: resource key {shown(template)} names "
                    f"{shown(argument.group())}, which is none of its arguments ({known})")


def _text(what: str, value: object) -> str | None:
    """A tool's ``name=`` or ``description=`` as a plain str (of a subclass too), or ``None``."""
    if value is None or type(value) is str:
        return value
    if not isinstance(value, str):
        raise ToolDefinitionError(f"a tool's {what} is text (a str) or None, got "
                                  f"{type(value).__name__} {shown(value)}")
    return str.__str__(value)  # an enum's member, say: its own __str__ or __eq__ play no part


_UNSET: Any = object()  # a field without a default; an argument not given
#: core schema types whose lax validation returns a value of exactly the type as it is
_PLAIN_TYPES: Mapping[str, type] = {"int": int, "str": str, "float": float, "bool": bool}
_PLAIN_DEFAULTS = (int, str, float, bool, type(None))  # immutable: shared, never copied


PlainFields = tuple[tuple[str, type, Any], ...]
#: per model: a tool made per call (``t.options(...)``) shares its model, and the answer
_PLAIN: weakref.WeakKeyDictionary[type[pydantic.BaseModel], PlainFields | None] = (
    weakref.WeakKeyDictionary())


def plain_fields(model: type[pydantic.BaseModel]) -> PlainFields | None:
    """``(name, type, default)`` of each field, if validating ``model`` only checks types.

    That is: every field a bare ``int``, ``str``, ``float`` or ``bool`` (no constraint,
    alias, strict mode or validator), defaults immutable, no extra arguments accepted, no
    model-level hook or config that changes values. ``None`` otherwise (or when unsure):
    such a model is validated by pydantic every time.
    """
    try:
        return _PLAIN[model]
    except KeyError:
        found = _PLAIN[model] = _plain_fields(model)
        return found
    except TypeError:  # not weakly referenceable: worked out each time
        return _plain_fields(model)


def _plain_fields(model: type[pydantic.BaseModel]) -> PlainFields | None:
    schema = getattr(model, "__pydantic_core_schema__", None)
    if not isinstance(schema, dict) or schema.get("type") != "model" or (
            schema.get("custom_init") or schema.get("root_model") or "post_init" in schema):
        return None
    config = schema.get("config", {})
    if config.get("extra_fields_behavior") != "forbid" or set(config) - {
            "extra_fields_behavior", "title"}:
        return None
    body = schema.get("schema", {})
    if body.get("type") != "model-fields" or set(body) - {
            "type", "fields", "model_name", "computed_fields"} or body.get("computed_fields"):
        return None
    found: list[tuple[str, type, Any]] = []
    for name, spec in body.get("fields", {}).items():
        if spec.get("type") != "model-field" or set(spec) - {"type", "schema", "metadata"}:
            return None
        inner, default = spec.get("schema", {}), _UNSET
        if inner.get("type") == "default":
            if set(inner) != {"type", "schema", "default"}:
                return None
            inner, default = inner["schema"], inner["default"]
            if type(default) not in _PLAIN_DEFAULTS:
                return None
        kind = _PLAIN_TYPES.get(inner.get("type", ""))
        if kind is None or set(inner) != {"type"}:
            return None
        found.append((name, kind, default))
    return tuple(found)


class _ToolDecorator(Protocol):
    """What ``tool(name=..., **options)`` returns: applied to a function, it makes the tool.

    Like bare ``tool``, it reads an async function's result as what the coroutine returns.
    """

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Tool[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Tool[P, R]: ...


def not_a_function(obj: object) -> ToolDefinitionError:
    """The error for making a tool of ``obj``, which is not callable.

    A coroutine (``f(x)`` given for ``f``) is closed: refused, it will never be awaited, and
    Python would warn that it never was, beside the error.
    """
    if inspect.iscoroutine(obj):
        obj.close()
        return ToolDefinitionError(
            f"a tool wraps a function, got the coroutine {obj.__qualname__}(...): give the "
            f"function itself, and its arguments to plan.call")
    if getattr(type(obj), "__shoal_node__", None) is not None:  # an Agent, a pattern
        return ToolDefinitionError(
            f"a tool wraps a function, got {type(obj).__name__} {shown(obj)}: it is a plan node "
            f"as it is (plan.call(it, task=...)); an agent a model may delegate to belongs in "
            f"the lead's subagents=")
    return ToolDefinitionError(f"a tool wraps a function, got {type(obj).__name__} {shown(obj)}")


@overload
def tool(
    fn: Callable[P, Awaitable[R]], /, *, name: str | None = ..., description: str | None = ...,
    **policy: Any,
) -> Tool[P, R]: ...
@overload
def tool(
    fn: Callable[P, R], /, *, name: str | None = ..., description: str | None = ..., **policy: Any
) -> Tool[P, R]: ...
@overload
def tool(
    fn: None = None, /, *, name: str | None = ..., description: str | None = ..., **policy: Any
) -> _ToolDecorator: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    **policy: Any,
) -> Any:
    """Make a tool of a sync or async function; use bare (``@tool``) or with options.

    Options: ``timeout`` (seconds), ``retries`` (extra attempts), ``retry_on`` (exception
    types that are retried; default any ``Exception``), ``backoff`` / ``max_backoff`` /
    ``jitter`` (retry waits), ``isolation`` (``"inline"``, ``"thread"``, ``"process"``,
    ``"ray"``; default inline for async and thread for sync), ``max_concurrency``, ``rate``
    (``"20/s"``), ``reads`` / ``writes`` (resource keys such as ``"file:{path}"``),
    ``merges`` (keys the call only merges into commutatively, such as ``"board:count"``),
    ``exclusive``, ``approval`` (bool or predicate over the arguments), ``idempotent``,
    ``estimate`` (expected seconds, for critical-path ordering), ``resources`` / ``labels``
    (what a Ray call needs of its node: ``{"num_gpus": 1}``, ``{"zone": "b"}``).
    """

    def make(func: Callable[..., Any]) -> Tool[Any, Any]:
        if isinstance(func, Tool):  # a tool made a tool again: its options, with these on top
            return Tool(func.fn, name=func.name if name is None else name,
                        description=func.description if description is None else description,
                        policy=policy_from(func.policy, policy),
                        _model=func._model if name is None else None)
        return Tool(func, name=name, description=description,
                    policy=policy_from(ToolPolicy(), policy))

    if fn is not None:
        return make(fn)
    return cast(_ToolDecorator, make)


def _unknown_errors(args: Mapping[str, Any], unknown: set[Any], most: int) -> list[dict[str, Any]]:
    """The errors pydantic makes of at most ``most`` of the ``unknown`` names, in order."""
    found: list[dict[str, Any]] = []
    for name, value in args.items():
        if len(found) >= most:
            break
        if name in unknown:
            found.append({"type": "extra_forbidden", "loc": (name,), "input": value,
                          "msg": "Extra inputs are not permitted"})
    return found

