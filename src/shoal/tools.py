"""Tools: typed callables with a schema and an execution policy.

``@shoal.tool`` turns a sync or async function into a :class:`Tool`. Its name, description and
JSON schema come from the function (pydantic builds the schema from the signature); its policy
(timeout, retries, isolation, limits, footprints, approval, idempotency) travels with it and can
be overridden for one call with :meth:`Tool.options`.
"""

from __future__ import annotations

import functools
import inspect
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast, get_type_hints, overload

import pydantic
from pydantic import ConfigDict

from shoal.exceptions import ToolArgumentError, ToolDefinitionError
from shoal.limits import Rate, parse_rate

__all__ = ["Isolation", "RetryPolicy", "Tool", "ToolPolicy", "tool"]

P = ParamSpec("P")
R = TypeVar("R")

Isolation = Literal["inline", "thread", "process", "ray"]
ISOLATIONS: tuple[Isolation, ...] = ("inline", "thread", "process", "ray")
ApprovalRule = bool | Callable[[Mapping[str, Any]], bool]


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
        if self.retries < 0:
            raise ToolDefinitionError(f"retries must be 0 or more, got {self.retries}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ToolDefinitionError(f"jitter must be within [0, 1], got {self.jitter}")

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


def _args_model(
    name: str, fn: Callable[..., Any], docs: dict[str, str]
) -> type[pydantic.BaseModel]:
    """A pydantic model of ``fn``'s parameters, used both to validate and to publish a schema."""
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    extra: Literal["forbid", "allow"] = "forbid"
    for param in inspect.signature(fn).parameters.values():
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
        fields[param.name] = (annotation, pydantic.Field(default, description=docs.get(param.name)))
    config = ConfigDict(arbitrary_types_allowed=True, extra=extra)
    model_name = re.sub(r"\W", "_", name) + "_args"
    model: type[pydantic.BaseModel] = pydantic.create_model(model_name, __config__=config, **fields)
    return model


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
        "__dict__", "_fn", "_is_async", "_model", "_param_names", "description", "name", "policy",
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
        self._is_async = inspect.iscoroutinefunction(fn)
        self.name: str = name or str(getattr(fn, "__name__", type(fn).__name__))
        doc = inspect.getdoc(fn) or ""
        self.description = description if description is not None else _summary(doc)
        self._model = _model or _args_model(self.name, fn, _param_docs(doc))
        self._param_names = frozenset(self._model.model_fields)
        self.policy = policy or ToolPolicy()
        self.__doc__ = fn.__doc__
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__wrapped__ = fn
        _check_policy(self)

    @property
    def fn(self) -> Callable[..., Any]:
        """The wrapped function."""
        return self._fn

    @property
    def is_async(self) -> bool:
        """Whether the wrapped function is a coroutine function."""
        return self._is_async

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
        values = dict(instance.__dict__)
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
        problems = [f"argument {n!r}: Field required" for n in sorted(self._required - set(args))]
        if not self._accepts_extra:
            problems += [f"unexpected argument {n!r}" for n in args if n not in self._param_names]
        for name, value in args.items():
            if name in self._param_names and name not in pending:
                problems += self._check_one(name, value)
        return "; ".join(problems)

    @functools.cached_property
    def _required(self) -> frozenset[str]:
        return frozenset(n for n, f in self._model.model_fields.items() if f.is_required())

    @functools.cached_property
    def _accepts_extra(self) -> bool:
        return self._model.model_config.get("extra") == "allow"

    def _check_one(self, name: str, value: Any) -> list[str]:
        annotation: Any = self._model.model_fields[name].annotation
        try:
            adapter = _adapter(annotation)
        except pydantic.PydanticSchemaGenerationError:
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


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    """A (cached) validator for one annotation, to check one argument on its own."""
    return pydantic.TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


_POLICY_KEYS = frozenset({
    "timeout", "retries", "retry_on", "backoff", "max_backoff", "jitter", "isolation",
    "max_concurrency", "rate", "reads", "writes", "exclusive", "approval", "idempotent",
    "estimate", "retry",
})  # fmt: skip


def _as_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _policy_from(base: ToolPolicy, opts: Mapping[str, Any]) -> ToolPolicy:
    """``base`` with the user-facing options in ``opts`` applied."""
    unknown = set(opts) - _POLICY_KEYS
    if unknown:
        raise ToolDefinitionError(
            f"unknown tool option(s) {sorted(unknown)}; known: {sorted(_POLICY_KEYS)}"
        )
    retry = opts.get("retry", base.retry)
    retry_fields = {
        "retries": opts.get("retries"), "on": opts.get("retry_on"),
        "base_delay": opts.get("backoff"), "max_delay": opts.get("max_backoff"),
        "jitter": opts.get("jitter"),
    }  # fmt: skip
    changes = {k: v for k, v in retry_fields.items() if v is not None}
    if isinstance(changes.get("on"), type):
        changes["on"] = (changes["on"],)
    if changes:
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
    if p.timeout is not None and p.timeout <= 0:
        raise ToolDefinitionError(f"tool {t.name!r}: timeout must be positive, got {p.timeout}")
    if p.max_concurrency is not None and p.max_concurrency < 1:
        raise ToolDefinitionError(
            f"tool {t.name!r}: max_concurrency must be at least 1, got {p.max_concurrency}"
        )
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
