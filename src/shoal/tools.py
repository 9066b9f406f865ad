"""Tools: typed callables with a schema and an execution policy.

``@shoal.tool`` turns a sync or async function into a :class:`Tool`. Its name, description and
JSON schema come from the function (pydantic builds the schema from the signature); its policy
(timeout, retries, isolation, limits, footprints, approval, idempotency) travels with it and can
be overridden for one call with :meth:`Tool.options`.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import random
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    get_type_hints,
    overload,
)

import pydantic
from pydantic import ConfigDict
from pydantic.fields import FieldInfo

from shoal.exceptions import ToolArgumentError, ToolDefinitionError
from shoal.limits import Rate, parse_rate

__all__ = ["Isolation", "RetryPolicy", "Tool", "ToolPolicy", "tool"]

P = ParamSpec("P")
R = TypeVar("R")

Isolation = Literal["inline", "thread", "process", "ray"]
ISOLATIONS: tuple[Isolation, ...] = ("inline", "thread", "process", "ray")
ApprovalRule = bool | Callable[[Mapping[str, Any]], bool]


def _is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (``bool`` is not taken for one)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value: object) -> bool:
    """Whether ``value`` is a whole number of type int (``bool`` is not taken for one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a tuple: one exception class, or any iterable of them."""
    items: tuple[object, ...]
    if isinstance(value, type):
        items = (value,)
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
        items = tuple(value)
    else:
        items = (value,)
    bad = [v for v in items if not (isinstance(v, type) and issubclass(v, BaseException))]
    if bad:
        raise ToolDefinitionError(
            f"retry_on takes an exception class or a list/tuple of them (e.g. "
            f"retry_on=[TimeoutError, ConnectionError]), got {value!r}"
        )
    return cast(tuple[type[BaseException], ...], items)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and on which errors a call is tried again.

    ``retries`` extra attempts follow a failed one when the error is an instance of one of
    ``on``. The wait before attempt ``n`` (counting from 1 for the first retry) is
    ``min(max_delay, base_delay * 2 ** (n - 1))``, scaled by a random factor in
    ``[1 - jitter, 1]`` so that many failing calls do not retry in lock-step.
    """

    retries: int = 0
    on: tuple[type[BaseException], ...] = (Exception,)
    base_delay: float = 0.1
    max_delay: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not _is_int(self.retries) or self.retries < 0:
            raise ToolDefinitionError(f"retries must be a whole number, 0 or more, "
                                      f"got {self.retries!r}")
        object.__setattr__(self, "on", _exception_types(self.on))
        for what, value in (("backoff (base_delay)", self.base_delay),
                            ("max_backoff (max_delay)", self.max_delay)):
            if not _is_number(value) or value < 0:
                raise ToolDefinitionError(f"{what} must be a finite number of seconds, 0 or "
                                          f"more, got {value!r}")
        if not _is_number(self.jitter) or not 0.0 <= self.jitter <= 1.0:
            raise ToolDefinitionError(f"jitter must be a number within [0, 1], "
                                      f"got {self.jitter!r}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which raised ``error``, gets another."""
        return (
            attempt <= self.retries
            and isinstance(error, self.on)
            and not isinstance(error, ToolArgumentError)
        )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        raw = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return float(raw * (1.0 - self.jitter * rng.random()))


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """How a tool's calls run; every field can be overridden per call via ``Tool.options``.

    ``reads`` / ``writes`` are resource keys, templated from arguments (``"file:{path}"``): two
    calls whose keys meet, one of them writing, run in plan order. ``exclusive`` makes a call a
    barrier: it runs alone, after everything before it and before everything after it.
    ``estimate`` is a guess of the duration in seconds used for critical-path ordering until
    the run has measured the tool. ``isolation=None`` lets the runtime choose: its ``executor``
    setting if given, else ``inline`` for async and ``thread`` for sync tools.
    """

    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    isolation: Isolation | None = None
    max_concurrency: int | None = None
    rate: Rate | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    exclusive: bool = False
    approval: ApprovalRule = False
    idempotent: bool = False
    estimate: float | None = None


_ARG_DOC = re.compile(r"^\s{2,}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _param_docs(doc: str) -> dict[str, str]:
    """Argument descriptions from a Google-style ``Args:`` section of a docstring."""
    found: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        header = line.strip().lower()
        if header in ("args:", "arguments:", "parameters:"):
            in_args = True
        elif in_args and line.strip() and not line.startswith(" "):
            in_args = False
        elif in_args and (match := _ARG_DOC.match(line)):
            found[match.group(1)] = match.group(2).strip()
    return found


def _summary(doc: str) -> str:
    """The docstring up to its first section header (``Args:``, ``Returns:`` ...)."""
    kept: list[str] = []
    for line in doc.splitlines():
        if re.match(r"^\s*(args|arguments|parameters|returns?|raises|yields|examples?):\s*$",
                    line, re.IGNORECASE):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def _needs_alias(name: str) -> bool:
    """Whether ``name`` cannot be a pydantic field name as it is.

    pydantic drops names with a leading underscore (they become private attributes) and warns
    about, or refuses, names that shadow ``BaseModel`` attributes (``schema``, ``json``,
    ``copy``, ``dict``, ``model_config``, ``model_dump`` ...).
    """
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


def _args_model(
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
    params = list(inspect.signature(fn).parameters.values())
    taken = {p.name for p in params}
    fields: dict[str, Any] = {}
    renames: dict[str, str] = {}
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
        default = ... if param.default is inspect.Parameter.empty else param.default
        key, alias = param.name, None
        if _needs_alias(param.name):
            key, alias = _field_name(param.name, taken), param.name
            taken.add(key)
            renames[key] = param.name
        fields[key] = _field_spec(annotation, default, docs.get(param.name), alias)
    config = ConfigDict(arbitrary_types_allowed=True, extra=extra)
    model_name = re.sub(r"\W", "_", name) + "_args"
    model: type[pydantic.BaseModel] = pydantic.create_model(model_name, __config__=config, **fields)
    _FACTS[model] = _ModelFacts.of(model, renames)
    return model


@dataclass(slots=True, eq=False)
class _ModelFacts:
    """What a tool needs to know about its argument model, worked out once per model."""

    inputs: dict[str, str]  # argument name a caller uses -> model field name
    renames: dict[str, str]  # model field name -> function parameter name, where they differ
    required: frozenset[str]  # argument names that must be given
    accepts_extra: bool
    fresh_defaults: bool | None  # a default_factory anywhere (None: the schema is not built)
    adapters: dict[str, pydantic.TypeAdapter[Any] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, model: type[pydantic.BaseModel], renames: Mapping[str, str]) -> _ModelFacts:
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


_FACTS: weakref.WeakKeyDictionary[type[pydantic.BaseModel], _ModelFacts] = (
    weakref.WeakKeyDictionary())


def _facts(model: type[pydantic.BaseModel]) -> _ModelFacts:
    found = _FACTS.get(model)
    if found is None:  # a model not made by _args_model
        found = _FACTS[model] = _ModelFacts.of(model, {})
    return found


def _has_default_factory(schema: Any) -> bool | None:
    """Whether a pydantic core schema uses a ``default_factory`` anywhere (nested models too).

    ``None`` when the schema is not built yet (a mock, for unresolved forward references).
    """
    if not isinstance(schema, dict):
        return None
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "default_factory" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns an awaitable coroutine.

    Sees through ``functools.partial``, looks at the ``__call__`` of callable objects, and
    follows ``__wrapped__`` only for callables that cannot tell by themselves (such as the C
    wrapper of ``functools.lru_cache``): a Python function's own code decides for it, so a
    sync wrapper made with ``functools.wraps`` around an async function stays sync.
    """
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


def _describe(errors: Sequence[Any]) -> tuple[str, str]:
    """(first offending argument, every problem as text) from pydantic's error list."""
    parts: list[str] = []
    first = ""
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or str(err["loc"][0] if err["loc"] else "")
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        if err["type"] == "extra_forbidden":
            parts.append(f"unexpected argument {loc!r}")
        else:
            parts.append(f"argument {loc!r}: {err['msg']}{got}")
    return first, "; ".join(parts)


class Tool(Generic[P, R]):
    """A named, typed callable with an execution policy.

    Call it like the function it wraps (``search(query="x")`` runs the function directly);
    put it in a plan with ``plan.call(search, query="x")`` to run it under the runtime.
    """

    __slots__ = (
        "__dict__", "_facts", "_fn", "_is_async", "_model", "_param_names", "_renames",
        "description", "has_default_factory", "name", "policy",
    )  # fmt: skip

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
            raise ToolDefinitionError(f"a tool wraps a function, got {fn!r}")
        self._fn = fn
        self._is_async = _is_async_callable(fn)
        base: Any = fn
        while isinstance(base, functools.partial):  # name and docs come from the function
            base = base.func
        self.name: str = name or str(getattr(base, "__name__", type(base).__name__))
        doc = inspect.getdoc(base) or ""
        self.description = description if description is not None else _summary(doc)
        self._model = _model or _args_model(self.name, fn, _param_docs(doc))
        self._facts = _facts(self._model)
        self._param_names = frozenset(self._facts.inputs)
        self._renames = self._facts.renames  # empty unless a parameter name needed an alias
        # Whether validating arguments may create new values (a default_factory, here or in a
        # nested model): then a plan's validated arguments are not reused, each run validates
        # afresh and gets its own generated ids and timestamps. True when it cannot be known.
        self.has_default_factory: bool = self._facts.fresh_defaults is not False
        self.policy = policy or ToolPolicy()
        self.__doc__ = base.__doc__
        self.__module__ = getattr(base, "__module__", __name__)
        self.__qualname__ = getattr(base, "__qualname__", self.name)
        self.__wrapped__ = fn
        _check_policy(self)

    @property
    def fn(self) -> Callable[..., Any]:
        """The wrapped function."""
        return self._fn

    @property
    def is_async(self) -> bool:
        """Whether calling the wrapped callable returns a coroutine (see ``_is_async_callable``)."""
        return self._is_async

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """Each optional argument's default value, by argument name (not default factories)."""
        return {outside: self._model.model_fields[key].default
                for outside, key in self._facts.inputs.items()
                if not self._model.model_fields[key].is_required()}

    @property
    def default_isolation(self) -> Isolation:
        """Where the tool runs when neither it nor the runtime says otherwise."""
        return "inline" if self._is_async else "thread"

    @property
    def parameters(self) -> frozenset[str]:
        """The names of the tool's arguments."""
        return self._param_names

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the wrapped function directly (no runtime, no policy)."""
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        where = self.policy.isolation or self.default_isolation
        return f"<Tool {self.name} ({'async' if self._is_async else 'sync'}, {where})>"

    def options(self, **overrides: Any) -> Tool[P, R]:
        """A copy of this tool with some policy fields replaced (for one call or one plan).

        Accepts the keyword arguments of :func:`tool` that describe policy, e.g.
        ``search.options(timeout=2, retries=3)``.
        """
        policy = _policy_from(self.policy, overrides)
        return Tool(self._fn, name=self.name, description=self.description, policy=policy,
                    _model=self._model)

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check and coerce ``args`` against the schema; raise :class:`ToolArgumentError`."""
        if not self._param_names and not args and self._model.model_config.get("extra") != "allow":
            return {}
        try:
            instance = self._model.__pydantic_validator__.validate_python(args)
        except pydantic.ValidationError as exc:
            argument, message = _describe(exc.errors())
            raise ToolArgumentError(self.name, argument, message) from None
        renames = self._renames
        values = ({renames.get(k, k): v for k, v in instance.__dict__.items()} if renames
                  else dict(instance.__dict__))
        if instance.__pydantic_extra__:
            values.update(instance.__pydantic_extra__)
        return values

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
        facts = self._facts
        problems = [f"argument {n!r}: Field required" for n in sorted(facts.required - set(args))]
        if not facts.accepts_extra:
            problems += [f"unexpected argument {n!r}" for n in args if n not in self._param_names]
        for name, value in args.items():
            if name in self._param_names and name not in pending:
                problems += self._check_one(name, value)
        return "; ".join(problems)

    def _check_one(self, name: str, value: Any) -> list[str]:
        adapters = self._facts.adapters
        if name in adapters:
            adapter = adapters[name]
        else:
            adapter = adapters[name] = _field_adapter(
                self._model.model_fields[self._facts.inputs[name]])
        if adapter is None:
            return []
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            return [f"argument {name!r}: {e['msg']} (got {value!r})" for e in exc.errors()[:1]]
        return []

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments."""
        schema = self._model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    def to_openai(self) -> dict[str, Any]:
        """The tool as an OpenAI chat-completions ``tools`` entry."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.json_schema(),
        }}  # fmt: skip

    def to_anthropic(self) -> dict[str, Any]:
        """The tool as an Anthropic messages ``tools`` entry."""
        return {"name": self.name, "description": self.description,
                "input_schema": self.json_schema()}


def _field_adapter(info: FieldInfo) -> pydantic.TypeAdapter[Any] | None:
    """A validator for one field on its own, constraints included (``None`` if none fits).

    pydantic keeps ``Annotated`` constraints (``Field(ge=1)``, ``max_length``...) in
    ``FieldInfo.metadata`` and a union's discriminator apart, not in ``annotation``.
    """
    extras: list[Any] = list(info.metadata)
    if info.discriminator is not None:
        extras.append(pydantic.Field(discriminator=info.discriminator))
    annotation: Any = Annotated[(info.annotation, *extras)] if extras else info.annotation
    try:
        return pydantic.TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except pydantic.PydanticSchemaGenerationError:
        return None


_POLICY_KEYS = frozenset({
    "timeout", "retries", "retry_on", "backoff", "max_backoff", "jitter", "isolation",
    "max_concurrency", "rate", "reads", "writes", "exclusive", "approval", "idempotent",
    "estimate", "retry",
})  # fmt: skip


def _as_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    keys = tuple(value) if isinstance(value, Iterable) else (value,)
    if not all(isinstance(k, str) for k in keys):
        raise ToolDefinitionError(
            f"reads/writes take a resource key or a list of them, such as 'file:{{path}}', "
            f"got {value!r}"
        )
    return keys


def _policy_from(base: ToolPolicy, opts: Mapping[str, Any]) -> ToolPolicy:
    """``base`` with the user-facing options in ``opts`` applied."""
    unknown = set(opts) - _POLICY_KEYS
    if unknown:
        raise ToolDefinitionError(
            f"unknown tool option(s) {sorted(unknown)}; known: {sorted(_POLICY_KEYS)}"
        )
    retry = opts.get("retry", base.retry)
    if not isinstance(retry, RetryPolicy):
        raise ToolDefinitionError(f"retry takes a RetryPolicy, got {retry!r}")
    retry_fields = {
        "retries": opts.get("retries"), "on": opts.get("retry_on"),
        "base_delay": opts.get("backoff"), "max_delay": opts.get("max_backoff"),
        "jitter": opts.get("jitter"),
    }  # fmt: skip
    changes = {k: v for k, v in retry_fields.items() if v is not None}
    if changes:  # RetryPolicy checks the values (and makes retry_on a tuple)
        retry = replace(retry, **changes)
    updates: dict[str, Any] = {"retry": retry}
    for key in ("timeout", "isolation", "max_concurrency", "exclusive", "approval",
                "idempotent", "estimate"):
        if key in opts:
            updates[key] = opts[key]
    if "rate" in opts:
        updates["rate"] = None if opts["rate"] is None else parse_rate(opts["rate"])
    for key in ("reads", "writes"):
        if key in opts:
            updates[key] = _as_keys(opts[key])
    return replace(base, **updates)


def _check_policy(t: Tool[Any, Any]) -> None:
    p = t.policy
    if p.isolation is not None and p.isolation not in ISOLATIONS:
        raise ToolDefinitionError(
            f"tool {t.name!r}: isolation must be one of {ISOLATIONS}, got {p.isolation!r}"
        )
    if p.isolation == "inline" and not t.is_async:
        raise ToolDefinitionError(
            f"tool {t.name!r} is a sync function: running it inline would block the event "
            "loop; use isolation='thread' (the default for sync tools) or 'process'"
        )
    if p.timeout is not None and not (_is_number(p.timeout) and p.timeout > 0):
        raise ToolDefinitionError(
            f"tool {t.name!r}: timeout must be positive: a finite number of seconds, or None; "
            f"got {p.timeout!r}"
        )
    if p.max_concurrency is not None and not (_is_int(p.max_concurrency)
                                              and p.max_concurrency >= 1):
        raise ToolDefinitionError(
            f"tool {t.name!r}: max_concurrency must be at least 1: a whole number, or None; "
            f"got {p.max_concurrency!r}"
        )
    if p.estimate is not None and not (_is_number(p.estimate) and p.estimate >= 0):
        raise ToolDefinitionError(
            f"tool {t.name!r}: estimate must be a finite number of seconds, 0 or more, or "
            f"None, got {p.estimate!r}"
        )
    if not isinstance(p.retry, RetryPolicy):
        raise ToolDefinitionError(f"tool {t.name!r}: retry takes a RetryPolicy, got {p.retry!r}")
    if p.rate is not None and not isinstance(p.rate, Rate):
        raise ToolDefinitionError(f"tool {t.name!r}: rate must be a Rate, got {p.rate!r}")
    for flag in ("exclusive", "idempotent"):
        if not isinstance(getattr(p, flag), bool):
            raise ToolDefinitionError(
                f"tool {t.name!r}: {flag} must be True or False, got {getattr(p, flag)!r}")
    if not (isinstance(p.approval, bool) or callable(p.approval)):
        raise ToolDefinitionError(f"tool {t.name!r}: approval must be a bool or a predicate")


@overload
def tool(fn: Callable[P, Awaitable[R]], /) -> Tool[P, R]: ...
@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...
@overload
def tool(
    fn: None = None, /, *, name: str | None = ..., description: str | None = ..., **policy: Any
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


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
    ``exclusive``, ``approval`` (bool or predicate over the arguments), ``idempotent``,
    ``estimate`` (expected seconds, for critical-path ordering).
    """

    def make(func: Callable[..., Any]) -> Tool[Any, Any]:
        return Tool(func, name=name, description=description,
                    policy=_policy_from(ToolPolicy(), policy))

    if fn is not None:
        return make(fn)
    return cast(Callable[[Callable[P, R]], Tool[P, R]], make)
