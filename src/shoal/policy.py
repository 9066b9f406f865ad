"""Tool policies: how a tool's calls run (timeouts, retries, isolation, limits, footprints ...).

A :class:`ToolPolicy` is frozen and travels with its tool; :func:`policy_from` applies the
user-facing keyword options of ``@tool(...)`` and ``Tool.options(...)`` to one, and
:func:`check_policy` rejects values that cannot work, with a message that says what can.
"""

from __future__ import annotations

import numbers
import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from shoal._deprecation import renamed
from shoal.exceptions import (
    BoardError,
    ToolArgumentError,
    ToolDefinitionError,
    ToolQuarantinedError,
)
from shoal.limits import (
    ProcessLimits,
    Rate,
    decimal_as_float,
    env_names,
    finite,
    parse_process_limits,
    parse_rate,
)
from shoal.merge import _is_async, shown

__all__ = [
    "ISOLATIONS",
    "MAX_BACKOFF_SECONDS",
    "MAX_RETRIES",
    "RAY_OPTIONS",
    "RESOURCE_STEP",
    "ApprovalRule",
    "Isolation",
    "RetryPolicy",
    "ToolPolicy",
    "check_policy",
    "policy_from",
]

Isolation = Literal["inline", "thread", "process", "ray"]
ISOLATIONS: tuple[Isolation, ...] = ("inline", "thread", "process", "ray")
ApprovalRule = bool | Callable[[Mapping[str, Any]], bool]


def _is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (``bool`` is not taken for one)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and finite(value))


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
            f"retry_on=[TimeoutError, ConnectionError]), got {shown(value)}"
        )
    return cast(tuple[type[BaseException], ...], items)


_BACKOFF = 0.1  # seconds before the first retry
_MAX_BACKOFF = 10.0  # the longest wait between two attempts


#: The most extra attempts a tool may have: more would retry a failing call practically forever.
MAX_RETRIES = 1000
#: The longest wait between two attempts a tool may ask for (a day): longer never ends.
MAX_BACKOFF_SECONDS = 86400.0


def _short(value: object) -> str:
    """``repr(value)``, cut short: a 10**100 in a plan file should not flood the message.

    By :func:`~shoal.merge.shown`: a value whose repr raises or recurses is named by its type.
    """
    text = shown(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _old_keyword(old: str, old_value: float | None, new: str, new_value: float,
                 default: float) -> float:
    """The value of a renamed keyword of :class:`RetryPolicy`, given by its old or new name."""
    if old_value is None:
        return new_value
    if new_value != default:
        raise ToolDefinitionError(f"RetryPolicy got both {old}= and {new}=; give {new}= only "
                                  f"({old} is its former name)")
    renamed(f"RetryPolicy({old}=...)", f"RetryPolicy({new}=...)", stacklevel=4)
    return old_value


# Retrying cannot help: the arguments will not fit any better, a quarantined tool stays so,
# a board does not grow the key it lacks.
_NEVER_RETRIED = (ToolArgumentError, ToolQuarantinedError, BoardError)


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """How often and on which errors a call is tried again.

    ``retries`` extra attempts follow a failed one when the error is an instance of one of
    ``on``. The wait before attempt ``n`` (counting from 1 for the first retry) is
    ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds, scaled by a random factor in
    ``[1 - jitter, 1]`` so that many failing calls do not retry in lock-step. These are the
    names ``@tool(retries=, backoff=, max_backoff=, jitter=)`` takes too. A ``backoff`` above
    ``max_backoff`` (``@tool(backoff=30)`` with the default ``max_backoff`` of 10) is a
    :class:`~shoal.exceptions.ToolDefinitionError`: its waits would all be ``max_backoff``.

    An attempt that timed out while its work could not be stopped (a sync tool's thread, a
    task ignoring its cancellation) is *abandoned*, still running. A call is retried after one
    such attempt, but not after a second (``shoal.scheduler.state.MAX_ABANDONED``), whatever
    ``retries`` says: each retry of a call that hangs would leave one more thread behind.

    ``base_delay`` and ``max_delay``, the former names of ``backoff`` and ``max_backoff``, are
    still accepted (and readable) for one release, with a :class:`DeprecationWarning`.
    """

    retries: int
    on: tuple[type[BaseException], ...]
    backoff: float
    max_backoff: float
    jitter: float

    def __init__(self, retries: int = 0,
                 on: type[BaseException] | Iterable[type[BaseException]] = (Exception,),
                 backoff: float = _BACKOFF, max_backoff: float = _MAX_BACKOFF,
                 jitter: float = 0.5, *, base_delay: float | None = None,
                 max_delay: float | None = None) -> None:
        backoff = _old_keyword("base_delay", base_delay, "backoff", backoff, _BACKOFF)
        max_backoff = _old_keyword("max_delay", max_delay, "max_backoff", max_backoff,
                                   _MAX_BACKOFF)
        backoff, max_backoff, jitter = map(decimal_as_float, (backoff, max_backoff, jitter))
        # (typed as given: a Decimal is a float from here on)
        if not _is_int(retries) or not 0 <= retries <= MAX_RETRIES:
            raise ToolDefinitionError(f"retries must be a whole number from 0 to {MAX_RETRIES}, "
                                      f"got {_short(retries)}")
        for what, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if not _is_number(value) or not 0 <= value <= MAX_BACKOFF_SECONDS:
                raise ToolDefinitionError(f"{what} must be a number of seconds from 0 to "
                                          f"{MAX_BACKOFF_SECONDS:g}, got {_short(value)}")
        if backoff > max_backoff:  # min(max_backoff, ...) would take the smaller, silently
            raise ToolDefinitionError(
                f"backoff={float(backoff):g} is more than max_backoff={float(max_backoff):g} "
                f"(the longest wait, {_MAX_BACKOFF:g} s unless given): every wait would be "
                f"{float(max_backoff):g} s; give max_backoff={float(backoff):g} or more too")
        if not _is_number(jitter) or not 0.0 <= jitter <= 1.0:
            raise ToolDefinitionError(f"jitter must be a number within [0, 1], got {shown(jitter)}")
        kinds = _exception_types(on)
        if retries and not kinds:  # taken, it never retried anything
            raise ToolDefinitionError(
                f"retry_on is empty: it matches no error, so retries={int(retries)} would never "
                "retry; give the exception classes to retry on (retry_on=[ConnectionError]), "
                "or retries=0")
        # frozen: the dataclass way to set fields in __init__; seconds and fractions as floats
        object.__setattr__(self, "retries", int(retries))
        object.__setattr__(self, "on", kinds)
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "max_backoff", float(max_backoff))
        object.__setattr__(self, "jitter", float(jitter))

    @property
    def base_delay(self) -> float:
        """Deprecated: the former name of :attr:`backoff`."""
        renamed("RetryPolicy.base_delay", "RetryPolicy.backoff")
        return self.backoff

    @property
    def max_delay(self) -> float:
        """Deprecated: the former name of :attr:`max_backoff`."""
        renamed("RetryPolicy.max_delay", "RetryPolicy.max_backoff")
        return self.max_backoff

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which raised ``error``, gets another.

        A ``retry_on`` class whose own instance check fails (a metaclass's
        ``__instancecheck__``, an ABC's ``__subclasshook__`` raising) matches nothing: the
        call ends with its error rather than the run with the check's.
        """
        if attempt > self.retries or isinstance(error, _NEVER_RETRIED):
            return False
        try:
            return isinstance(error, self.on)
        except KeyboardInterrupt:
            raise
        except BaseException:  # SystemExit too: user code, run as the scheduler decides
            return False

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        raw = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return float(raw * (1.0 - self.jitter * rng.random()))


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """How a tool's calls run; every field can be overridden per call via ``Tool.options``.

    ``reads`` / ``writes`` are resource keys, templated from arguments (``"file:{path}"``): two
    calls whose keys meet, one of them writing, run in plan order. ``merges`` are keys the call
    only changes by a commutative merge (``"board:count"`` for a board key whose rule is a
    counter, an append, a union, a minimum or a maximum): merges into one key need no order
    among themselves, but still keep plan order with reads and writes of it. ``exclusive``
    makes a call a barrier: it runs alone, after everything before it and before everything
    after it.
    ``estimate`` is a guess of the duration in seconds used for critical-path ordering until
    the run has measured the tool. ``isolation=None`` lets the runtime choose: its ``executor``
    setting if given, else ``inline`` for async and ``thread`` for sync tools.
    ``resources`` are what a call needs on a Ray cluster (``num_cpus``, ``num_gpus``,
    ``memory``, or custom resources); ``labels`` the node labels it needs there (Ray's
    ``label_selector``: ``{"zone": "b"}``, ``{"zone": "!b"}``, ``{"zone": "in(a,b)"}``);
    ``limits`` are OS limits on a process worker; ``env`` names environment variables a
    process worker may see besides the runtime's allow-list.
    ``trust_results=True`` loads the replies of the tool's process workers with plain pickle
    instead of :mod:`shoal.executors.results`' restricted loading: only for tools whose code
    is as trusted as the application's own (a pickle can run any code where it is loaded).
    """

    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    isolation: Isolation | None = None
    max_concurrency: int | None = None
    rate: Rate | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    merges: tuple[str, ...] = ()
    exclusive: bool = False
    approval: ApprovalRule = False
    idempotent: bool = False
    estimate: float | None = None
    resources: tuple[tuple[str, float], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    limits: ProcessLimits | None = None
    env: tuple[str, ...] = ()
    trust_results: bool = False

    def __post_init__(self) -> None:
        """Seconds as floats: a ``Fraction``, a ``numpy`` number or an int given is converted.

        What reads them formats them as floats (``ToolTimeoutError``'s ``{timeout:g}`` raised
        TypeError for a ``Fraction``); a value that is no finite number is left for
        :func:`check_policy` to refuse.
        """
        for name in ("timeout", "estimate"):
            value = getattr(self, name)
            number = decimal_as_float(value)  # (a Decimal given: a float from here on)
            if value is not None and type(value) is not float and _is_number(number):
                object.__setattr__(self, name, float(number))


_POLICY_KEYS = frozenset({
    "timeout", "retries", "retry_on", "backoff", "max_backoff", "jitter", "isolation",
    "max_concurrency", "rate", "reads", "writes", "merges", "exclusive", "approval",
    "idempotent", "estimate", "retry", "resources", "labels", "limits", "env", "trust_results",
})  # fmt: skip


def _as_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        keys: tuple[Any, ...] = (value,)
    else:
        keys = tuple(value) if isinstance(value, Iterable) else (value,)
    if not all(isinstance(k, str) for k in keys):
        raise ToolDefinitionError(
            f"reads/writes/merges take a resource key or a list of them, such as 'file:{{path}}', "
            f"got {shown(value)}"
        )
    for key in keys:
        _check_template(key)
    return keys


_FORMATTER = string.Formatter()


def _check_template(key: str) -> None:
    """Refuse a resource key template that no call's arguments could fill in.

    A key is filled in with :meth:`str.format` rules from each call's arguments, by name:
    a brace left open or alone, a conversion other than ``!r``, ``!s`` or ``!a``, a field
    with no argument name (``{}``, ``{0}``) or a field nested in a format spec would fail
    (or match nothing) at every call; they are told when the tool is made.
    """
    try:
        parts = list(_FORMATTER.parse(key))
    except ValueError as exc:
        raise ToolDefinitionError(
            f"resource key {shown(key)} is not a template: {exc} (write a literal brace as "
            "'{{' or '}}', an argument as '{name}')") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        problem = ""
        if not field_name or field_name[0].isdigit() or field_name[0] in ".[":
            problem = "a field must name an argument, such as {path}"
        elif conversion not in (None, "r", "s", "a"):
            problem = f"unknown conversion !{conversion} (use !r, !s or !a)"
        elif spec and ("{" in spec or "}" in spec):
            problem = "a format spec cannot hold another field"
        if problem:
            raise ToolDefinitionError(f"resource key {shown(key)}: {problem}")


def policy_from(base: ToolPolicy, opts: Mapping[str, Any]) -> ToolPolicy:
    """``base`` with the user-facing options in ``opts`` applied."""
    unknown = set(opts) - _POLICY_KEYS
    if unknown:
        raise ToolDefinitionError(
            f"unknown tool option(s) {sorted(unknown)}; known: {sorted(_POLICY_KEYS)}"
        )
    retry = opts.get("retry", base.retry)
    if not isinstance(retry, RetryPolicy):
        raise ToolDefinitionError(f"retry takes a RetryPolicy, got {shown(retry)}")
    retry_fields = {
        "retries": opts.get("retries"), "on": opts.get("retry_on"),
        "backoff": opts.get("backoff"), "max_backoff": opts.get("max_backoff"),
        "jitter": opts.get("jitter"),
    }  # fmt: skip
    changes = {k: v for k, v in retry_fields.items() if v is not None}
    if changes:  # RetryPolicy checks the values (and makes retry_on a tuple)
        retry = replace(retry, **changes)
    updates: dict[str, Any] = {"retry": retry}
    for key in ("timeout", "isolation", "max_concurrency", "exclusive", "approval",
                "idempotent", "estimate", "trust_results"):
        if key in opts:
            updates[key] = opts[key]
    if "rate" in opts:
        updates["rate"] = None if opts["rate"] is None else parse_rate(opts["rate"])
    for key in ("reads", "writes", "merges"):
        if key in opts:
            updates[key] = _as_keys(opts[key])
    if "env" in opts:
        try:
            updates["env"] = () if opts["env"] is None else env_names(opts["env"])
        except ValueError as exc:
            raise ToolDefinitionError(f"env {exc}") from None
    if "limits" in opts:
        updates["limits"] = parse_process_limits(opts["limits"])
    if "resources" in opts:
        updates["resources"] = _resources(opts["resources"])
    if "labels" in opts:
        updates["labels"] = _labels(opts["labels"])
    return replace(base, **updates)


#: Resource names that are Ray's own task options, not custom resources (in any case).
RAY_OPTIONS = {"num_cpus": "num_cpus", "cpu": "num_cpus", "num_gpus": "num_gpus",
               "gpu": "num_gpus", "memory": "memory"}
#: Ray counts resources in steps of this size; a smaller amount would be read as none.
RESOURCE_STEP = 0.0001


def _resources(spec: Any) -> tuple[tuple[str, float], ...]:
    """``{"num_cpus": 1, "GPU": 1}`` as a sorted tuple (policies are frozen and hashable)."""
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise ToolDefinitionError(f"resources takes a mapping such as {{'num_cpus': 2}}, "
                                  f"got {shown(spec)}")
    items: list[tuple[str, float]] = []
    options: dict[str, str] = {}
    for key, value in spec.items():
        _check_resource_name(key)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not finite(value) or value < 0):
            raise ToolDefinitionError(f"resource {key!r} needs a number of 0 or more, "
                                      f"got {shown(value)}")
        if 0 < value < RESOURCE_STEP:
            raise ToolDefinitionError(
                f"resource {key!r}: {value!r} is below the smallest amount Ray counts "
                f"({RESOURCE_STEP:g}); ask for 0 or at least {RESOURCE_STEP:g}")
        option = RAY_OPTIONS.get(key.lower())
        if option is not None and option in options:
            raise ToolDefinitionError(f"resources {options[option]!r} and {key!r} both set "
                                      f"Ray's {option}; give one of them")
        if option is not None:
            options[option] = key
        items.append((key, float(value)))
    return tuple(sorted(items))


def _labels(spec: Any) -> tuple[tuple[str, str], ...]:
    """``{"zone": "b"}`` as a sorted tuple; Ray checks the selector syntax when it is used."""
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise ToolDefinitionError(f"labels takes a mapping of node label to value, such as "
                                  f"{{'zone': 'b'}}, got {shown(spec)}")
    for key, value in spec.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(value, str):
            raise ToolDefinitionError(f"labels: a label is non-empty text and its value is "
                                      f"text (such as 'b', '!b' or 'in(a,b)'), got "
                                      f"{key!r}: {value!r}")
    return tuple(sorted(spec.items()))


def _check_resource_name(key: Any) -> None:
    """A resource name must be text a Ray node can declare (``--resources='{"gpu-a": 1}'``)."""
    if not isinstance(key, str) or not key.strip():
        raise ToolDefinitionError(f"resource names are non-empty text such as 'num_cpus' or "
                                  f"'node-b', got {shown(key)}")
    if key != key.strip() or not key.isprintable():
        raise ToolDefinitionError(f"resource name {key!r} has spaces at its ends or "
                                  "unprintable characters; no node could declare it")


def check_policy(name: str, is_async: bool, p: ToolPolicy) -> None:
    """Raise :class:`ToolDefinitionError` for a policy value that cannot work."""
    if p.isolation is not None and p.isolation not in ISOLATIONS:
        raise ToolDefinitionError(
            f"tool {name!r}: isolation must be one of {ISOLATIONS}, got {shown(p.isolation)}"
        )
    if p.isolation == "inline" and not is_async:
        raise ToolDefinitionError(
            f"tool {name!r} is a sync function: running it inline would block the event "
            "loop; use isolation='thread' (the default for sync tools) or 'process'"
        )
    _check_placement_options(name, p)
    if p.timeout is not None and not (_is_number(p.timeout) and p.timeout > 0):
        raise ToolDefinitionError(
            f"tool {name!r}: timeout must be positive: a finite number of seconds, or None; "
            f"got {shown(p.timeout)}"
        )
    if p.max_concurrency is not None and not (_is_int(p.max_concurrency)
                                              and p.max_concurrency >= 1):
        raise ToolDefinitionError(
            f"tool {name!r}: max_concurrency must be at least 1: a whole number, or None; "
            f"got {shown(p.max_concurrency)}"
        )
    if p.estimate is not None and not (_is_number(p.estimate) and p.estimate >= 0):
        raise ToolDefinitionError(
            f"tool {name!r}: estimate must be a finite number of seconds, 0 or more, or "
            f"None, got {shown(p.estimate)}"
        )
    if not isinstance(p.retry, RetryPolicy):
        raise ToolDefinitionError(f"tool {name!r}: retry takes a RetryPolicy, got {shown(p.retry)}")
    if p.rate is not None and not isinstance(p.rate, Rate):
        raise ToolDefinitionError(f"tool {name!r}: rate must be a Rate, got {shown(p.rate)}")
    for flag in ("exclusive", "idempotent", "trust_results"):
        if not isinstance(getattr(p, flag), bool):
            raise ToolDefinitionError(
                f"tool {name!r}: {flag} must be True or False, got {shown(getattr(p, flag))}")
    for key in (*p.reads, *p.writes, *p.merges):  # a ToolPolicy made directly too
        if not isinstance(key, str):
            raise ToolDefinitionError(f"tool {name!r}: a resource key is text, got {shown(key)}")
        _check_template(key)
    if not (isinstance(p.approval, bool) or callable(p.approval)):
        raise ToolDefinitionError(f"tool {name!r}: approval must be a bool or a predicate")
    if not isinstance(p.approval, bool) and _is_async(p.approval):  # its coroutine, never
        # awaited, is true: every call was asked about, and a warning said it was not awaited
        raise ToolDefinitionError(f"tool {name!r}: approval takes a plain predicate over the "
                                  f"arguments (it decides at once), got an async function "
                                  f"{shown(p.approval)}")


def placed_by_options(p: ToolPolicy) -> Isolation | None:
    """The backend a tool naming no isolation runs on for its options, if they need one.

    ``limits`` and ``env`` only a process worker applies, ``resources`` and ``labels`` only a
    Ray task: such a tool runs there whatever the runtime's ``executor`` (on a thread, a tool
    given ``env=`` to keep the process's secrets from it saw them all, and its ``limits``
    held nothing).
    """
    if p.limits or p.env:
        return "process"
    if p.resources or p.labels:
        return "ray"
    return None


def _check_placement_options(name: str, p: ToolPolicy) -> None:
    """Refuse options the tool's own isolation never applies, rather than ignore them.

    ``limits`` and ``env`` shape a process worker, ``resources`` and ``labels`` a Ray task: a
    tool that names another isolation (``"thread"`` shares this process's limits and
    environment) would run without them, as if they held. With no isolation named, the
    options choose it (:func:`placed_by_options`), so they cannot ask for both.
    """
    if p.isolation is None:
        if (p.limits or p.env) and (p.resources or p.labels):
            raise ToolDefinitionError(
                f"tool {name!r}: limits= and env= shape a process worker, resources= and "
                f"labels= a Ray task, and one call runs on one of them; keep the options of "
                f"one, with isolation='process' or isolation='ray'")
        return
    if p.isolation not in ISOLATIONS:
        return
    given = [option for option, value in (("limits", p.limits), ("env", p.env))
             if value] if p.isolation != "process" else []
    given += [option for option, value in (("resources", p.resources), ("labels", p.labels))
              if value] if p.isolation != "ray" else []
    if given:
        where = " and ".join(f"{option}=" for option in given)
        wanted = ("isolation='process'" if given[0] in ("limits", "env") else "isolation='ray'")
        raise ToolDefinitionError(
            f"tool {name!r}: {where} {'do' if len(given) > 1 else 'does'} nothing with "
            f"isolation={p.isolation!r} (limits= and env= shape a process worker, resources= "
            f"and labels= a Ray task); use {wanted}, or leave {where} out")
