"""Who must approve what, and the types of a decision.

A tool needs approval with ``@tool(approval=True)``, or ``approval=predicate`` to ask only for
some arguments; :func:`approval_reason` says whether (and why) one call needs it. Such a call
becomes an :class:`ApprovalRequest` for the run's :class:`Approver`, which answers each request
of a batch with a :class:`Decision`: approve, deny with a reason, or edit the arguments.

Approvers here: :class:`RulesApprover` (allow / deny :class:`Rule` patterns over tool names,
arguments and lineage, with a fallback for the rest) and :class:`CallbackApprover` (your
function, sync or async; :func:`as_approver` wraps a plain callable in one). The console
approver, which asks a person on the terminal, is part of the command line
(:mod:`shoal.cli.approver`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoal.exceptions import ConfigError, bounded_text, describe_exception
from shoal.merge import _is_async, shown
from shoal.outcome import _safe_repr
from shoal.store.base import canonical_json

if TYPE_CHECKING:
    from shoal.tools import Tool

__all__ = [
    "REASON_LIMIT",
    "ApprovalRequest",
    "Approver",
    "Callback",
    "CallbackApprover",
    "Decision",
    "Rule",
    "RulesApprover",
    "Verdict",
    "answer_now",
    "approval_reason",
    "as_approver",
    "request_id",
]

Verdict = Literal["approve", "deny", "edit"]


def request_id(run_id: str, node_id: str, args_hash: str) -> str:
    """The id of the request about one call (the same after a resume: it names the call)."""
    return f"{run_id}:{node_id}:{args_hash[:12]}"


def approval_reason(tool: Tool[..., Any], args: Mapping[str, Any]) -> str:
    """Why a call of ``tool`` with ``args`` needs approval (``""`` when it does not).

    ``approval=True`` always asks; a predicate asks when it says so, and also when it raises:
    a rule that fails cannot say "no need", so the call is asked about, to be safe.
    """
    rule = tool.policy.approval
    if rule is True:
        return f"tool {tool.name!r} always needs approval"
    if not callable(rule):
        return ""
    try:
        needed = rule(args)
        if inspect.isawaitable(needed):  # a plain function returning one: it says nothing
            if inspect.iscoroutine(needed):
                needed.close()  # (never awaited: not left to warn so)
            return (f"the approval rule of tool {tool.name!r} returned "
                    f"{_safe_repr(needed)}, to be awaited, not an answer")
        needed = bool(needed)  # its own __bool__ may raise: was out of the run, ending it
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException as exc:  # a failing rule (sys.exit too) cannot say "no need": ask
        # the rule's error's own __str__ may fail too: it is still the call's reason to ask
        return f"the approval rule of tool {tool.name!r} raised {describe_exception(exc)}"
    return f"the approval rule of tool {tool.name!r} matched these arguments" if needed else ""


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One call waiting for a decision.

    ``args`` are the call's resolved arguments as JSON-ready data (refs already replaced by
    upstream values); ``args_hash`` is what a decision is bound to. ``lineage`` says where the
    call comes from (``"lead/researcher#2/search#1"`` for an agent's subagent; the node id for
    a plain plan). ``reason`` says why approval is needed. ``requested_at`` is epoch seconds.
    """

    id: str
    run_id: str
    node_id: str
    tool: str
    args: Mapping[str, Any]
    args_hash: str
    lineage: str
    reason: str
    requested_at: float = 0.0
    description: str = ""  # the tool's description, for people deciding

    def describe(self, width: int = 200) -> str:
        r"""``tool(arg=value, ...)`` on one line, at most about ``width`` characters.

        Names and values are JSON with every non-ASCII character escaped (``\u202e``), so
        nothing in them can act on a terminal or hide; a cut description ends saying how much
        is left out (``… 4,812 more characters``), never silently.
        """
        if isinstance(self.args, Mapping):
            inner = ", ".join(f"{_ascii(k)}={json.dumps(v)}" for k, v in self.args.items())
        else:  # arguments shoal could not convert (too deep, a key JSON cannot hold): a repr
            inner = json.dumps(self.args if isinstance(self.args, str) else shown(self.args))
        text = f"{_ascii(self.tool)}({inner})"
        if len(text) <= width:
            return text
        keep = max(width - 30, 1)
        return f"{text[:keep]}… {len(text) - keep:,} more characters"


def _ascii(name: str) -> str:
    """``name`` with whatever is not printable ASCII escaped as JSON would."""
    return json.dumps(str(name))[1:-1]


#: The most characters of a decision's reason kept (its start and end, with a note of how
#: much of the middle was left out): a reason is journaled and shown to agents with its call.
REASON_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Decision:
    """An approver's answer to one request: :meth:`approve`, :meth:`deny` or :meth:`edit`."""

    verdict: Verdict
    reason: str = ""
    args: Mapping[str, Any] | None = None  # the replacement arguments of an ``edit``

    def __post_init__(self) -> None:
        if not isinstance(self.verdict, str) or self.verdict not in ("approve", "deny", "edit"):
            raise ConfigError(f"a decision is 'approve', 'deny' or 'edit', got "
                              f"{shown(self.verdict)}")
        if (self.verdict == "edit") != (self.args is not None):
            raise ConfigError("an edit carries the new arguments (and only an edit does)")
        if self.args is not None and not isinstance(self.args, Mapping):
            raise ConfigError(f"an edit's arguments are a mapping of argument names to values, "
                              f"got {shown(self.args)}")
        if self.reason is None:  # no reason given
            object.__setattr__(self, "reason", "")
        elif not isinstance(self.reason, str):  # it is journaled, and shown to agents, as text
            raise ConfigError(f"a decision's reason is text, got {shown(self.reason)}")
        elif len(self.reason) > REASON_LIMIT:  # kept in the ledger, the outcome and events:
            # a 5 MB reason (one quoting a call's arguments, say) made 35 MB of journal a call
            object.__setattr__(self, "reason", bounded_text(self.reason, REASON_LIMIT))

    @classmethod
    def approve(cls, reason: str = "") -> Decision:
        """Let the call run with exactly the arguments it was requested with."""
        return cls("approve", reason)

    @classmethod
    def deny(cls, reason: str = "") -> Decision:
        """Refuse the call: it ends ``denied`` with ``reason`` and never runs."""
        return cls("deny", reason or "denied")

    @classmethod
    def edit(cls, args: Mapping[str, Any], reason: str = "") -> Decision:
        """Run the call with ``args`` instead (checked against the tool's schema first)."""
        return cls("edit", reason, dict(args) if isinstance(args, Mapping) else args)


class Approver(ABC):
    """Decides on batches of pending calls. Subclass it and implement :meth:`review`.

    ``review`` may take as long as a person needs; the runtime's ``approval_timeout`` turns
    a late answer into a denial. Unless its :attr:`serial` is false, it is never called twice
    at once by one runtime (the next batch waits), but one approver may serve several
    runtimes; a review cancelled (every request of its batch answered or withdrawn) that
    ignores its cancellation for a second no longer holds up the next batch.
    """

    @property
    def name(self) -> str:
        """Who decided, as stored with each decision (default: the class name)."""
        return type(self).__name__

    @property
    def serial(self) -> bool:
        """Whether it reviews one batch at a time (the default: a person at one prompt).

        An approver that decides each request on its own (a function, a tree's root desk)
        says ``False``: the next batch is then passed on while a review goes on, so a
        request it never answers holds back no later one.
        """
        return True

    @abstractmethod
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """One decision per request, in the batch's order.

        A decision made before the others may be handed on at once with :func:`answer_now`
        (its call starts then); the one returned for it later is ignored.
        """

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """These requests no longer need an answer (their calls were cancelled or timed out).

        Called on the event loop; the default does nothing. It may be an ``async def``: it
        then runs as a task of its own (what it raises is logged).
        """
        return None


#: Set by the desk in each review's task: hands one decision of the batch on at once.
_ANSWER: contextvars.ContextVar[Callable[[ApprovalRequest, Decision], None] | None] = (
    contextvars.ContextVar("shoal_approval_answer", default=None))


def answer_now(request: ApprovalRequest, decision: Decision) -> None:
    """Give ``request`` of the batch under review its decision now, before the review ends.

    For an :meth:`Approver.review` that decides its requests one by one: each call starts as
    its decision is made, instead of waiting for the slowest (or a never answered) request
    of its batch. Called from the review, a task it started, or a thread it started with its
    context (``asyncio.to_thread``: the decision is handed to the review's loop); elsewhere,
    or for a request answered, withdrawn or timed out already, it does nothing.
    """
    answer = _ANSWER.get()
    if answer is not None:
        answer(request, decision)


CallbackResult = Decision | bool | None
Callback = Callable[[ApprovalRequest], CallbackResult | Awaitable[CallbackResult]]


class CallbackApprover(Approver):
    """Asks a function about each request.

    The function returns a :class:`Decision`, or ``True`` (approve) / ``False`` or ``None``
    (deny).
    Async functions answer a batch concurrently; sync ones run on the event loop, one after
    another, so keep them quick (do slow work in an async function). A function that raises
    (``SystemExit`` too; not ``KeyboardInterrupt``) denies that request, with the error as the
    reason. An async function still at work on a request that is withdrawn (its call was
    cancelled, or timed out) is cancelled: the other requests of its batch get their answers
    without waiting for it.
    """

    def __init__(self, fn: Callback, *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"CallbackApprover takes a callable, got {shown(fn)}")
        self._fn = fn
        self._name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        self._asking: dict[str, asyncio.Future[object]] = {}  # request id -> its answer

    @property
    def name(self) -> str:
        """The function's name (or the one given)."""
        return self._name

    @property
    def serial(self) -> bool:
        """``False``: the function decides each request on its own."""
        return False

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Ask the function about every request in ``batch``; each answer is used as it comes."""
        answers = [self._call(r) for r in batch]
        waiting = [i for i, a in enumerate(answers) if inspect.isawaitable(a)]
        if waiting:  # only async answers need the loop: sync ones cost no task
            for request, answer in zip(batch, answers, strict=True):
                if not inspect.isawaitable(answer):  # its call need not wait for the others
                    answer_now(request, _as_decision(answer))
            # a task each, known by its request: withdrawn, it is cancelled (see withdrawn);
            # else a function that never answers a request nobody needs any more (a person
            # who walked away) held back the answers of the whole batch for good. Each task
            # hands its answer on as it comes (one never answered holds back only itself)
            asking = {batch[i].id: asyncio.ensure_future(self._await(answers[i], batch[i]))
                      for i in waiting}
            self._asking.update(asking)
            try:
                done = await asyncio.gather(*asking.values(), return_exceptions=True)
            finally:
                for request_id, task in asking.items():
                    if self._asking.get(request_id) is task:
                        del self._asking[request_id]
                for i in waiting:  # a task cancelled before its first step never awaited it:
                    _close_unstarted(answers[i])  # Python then warned "never awaited"
            for i, answer in zip(waiting, done, strict=True):
                if isinstance(answer, asyncio.CancelledError):  # withdrawn: nobody reads it
                    answer = Decision.deny("withdrawn")
                elif isinstance(answer, BaseException):  # KeyboardInterrupt: _await lets it by
                    raise answer
                answers[i] = answer
        return [a if isinstance(a, Decision) else _as_decision(a) for a in answers]

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """Cancel the function's work on these requests: no one waits for their answers."""
        for request in requests:
            task = self._asking.pop(request.id, None)
            if task is not None:
                task.cancel()

    def _call(self, request: ApprovalRequest) -> object:
        try:
            return self._fn(request)
        except KeyboardInterrupt:
            raise
        except asyncio.CancelledError as exc:
            if stopped():
                raise
            return _raised(exc)  # the function's own, not the review's cancellation
        except BaseException as exc:  # the user's function failed (sys.exit too): deny, why
            return _raised(exc)

    @staticmethod
    async def _await(answer: Any, request: ApprovalRequest) -> object:
        try:
            decided = _as_decision(await answer)
        except KeyboardInterrupt:
            raise
        except asyncio.CancelledError as exc:
            if stopped():
                raise
            decided = _raised(exc)  # as in _call
        except BaseException as exc:  # sys.exit too, as in _call
            decided = _raised(exc)
        answer_now(request, decided)
        return decided


def _close_unstarted(answer: object) -> None:
    """Close ``answer`` if it is a coroutine that never started (nothing will await it)."""
    if inspect.iscoroutine(answer) and inspect.getcoroutinestate(answer) == "CORO_CREATED":
        answer.close()


async def reviewed(approver: Approver, batch: Sequence[ApprovalRequest]) -> Any:
    """What ``approver.review(batch)`` answers, awaited if it is to be awaited.

    A ``review`` written as a plain ``def`` answers at once: its list was taken for an
    approver's failure (``object list can't be used in 'await' expression``), denying every
    call it approved.
    """
    answer: Any = approver.review(batch)
    return await answer if inspect.isawaitable(answer) else answer


def stopped() -> bool:
    """Whether the running task was asked to stop (cancelled), or no task runs.

    A ``CancelledError`` that an approver's own code raises (a task of its own cancelled
    under it) is not that: it is its failure, and denies, where a stop must go on up.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _raised(exc: BaseException) -> Decision:
    return Decision.deny(f"the approval callback raised {describe_exception(exc)}")


def _as_decision(answer: object) -> Decision:
    if isinstance(answer, Decision):
        return answer
    if answer is True:
        return Decision.approve()
    if answer is False or answer is None:
        return Decision.deny("denied by the approval callback")
    return Decision.deny(f"the approval callback returned {_safe_repr(answer)}, not a Decision "
                         "or bool")  # quoted in bounds: it becomes the stored reason


def as_approver(value: Approver | Callback | None) -> Approver | None:
    """``value`` as an :class:`Approver`: callables are wrapped in :class:`CallbackApprover`."""
    if value is None or isinstance(value, Approver):
        return value
    if callable(value):
        return CallbackApprover(value)
    raise ConfigError(f"approver takes an Approver or a callable, got {shown(value)}")


# ---- rules ---------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    """An argument as text for glob matching: strings as they are, the rest as JSON.

    The JSON of a value is made once per request (see :meth:`RulesApprover.decide`), not
    once per rule: 50 rules with argument patterns over a 1 MB list took 10 s a call.
    """
    return value if isinstance(value, str) else _json_of(value)[0]


def _json_of(value: Any) -> tuple[str, bool]:
    """``value``'s JSON text, and whether it holds every string of ``value`` as written.

    A request's arguments are JSON-ready already (see :class:`ApprovalRequest`): written by
    ``json.dumps`` directly, they need none of :func:`canonical_json`'s conversion and
    checks, which took 1.5 s of a 2 MB list's 2.2 s decision. What ``json.dumps`` refuses
    (a set, ``NaN``, an integer too long, a value that holds itself) goes through
    :func:`canonical_json`, whose text may be a bounded repr (not faithful).
    """
    texts = _TEXTS.get()
    found = None if texts is None else texts.get(id(value))
    if found is not None and found[0] is value:
        return found[1], found[2]
    try:
        text, faithful = json.dumps(value, sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False, allow_nan=False), True
    except (TypeError, ValueError, RecursionError):
        text, faithful = canonical_json(value), False
    if texts is not None:
        texts[id(value)] = (value, text, faithful)
    return text, faithful


#: While a request is matched against rules: the JSON text of each of its values, by id, and
#: whether that text holds each of its strings as written
_TEXTS: contextvars.ContextVar[dict[int, tuple[Any, str, bool]] | None] = (
    contextvars.ContextVar("shoal_rule_texts", default=None))


def _glob(text: str, pattern: str) -> bool:
    """Whether ``text`` matches the glob ``pattern``, as :func:`fnmatch.fnmatchcase` says.

    A pattern of text and ``*`` only (the usual argument pattern, ``"*secret*"``) is matched
    by ``str.find`` for each piece between stars: the regular expression fnmatch makes
    scans a long value one character at a time per star, so 50 such rules over a 1.4 MB
    value took 1.7 s a call. Patterns with ``?`` or ``[`` go to fnmatch.
    """
    pieces = _star_pieces(pattern)
    if pieces is None:
        return fnmatchcase(text, pattern)
    if len(pieces) == 1:
        return text == pieces[0]
    first, *middle, last = pieces
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    at = len(first)
    for piece in middle:  # the leftmost place of each leaves the most room for the rest
        at = text.find(piece, at, end)
        if at < 0:
            return False
        at += len(piece)
    return True


@functools.lru_cache(maxsize=1024)
def _star_pieces(pattern: str) -> tuple[str, ...] | None:
    """The text between the stars of ``pattern``; ``None`` if it has ``?`` or ``[`` too."""
    if "?" in pattern or "[" in pattern:
        return None
    return tuple(pattern.split("*"))


_SEGMENTS = re.compile(r"[/\\]")


def _has_parent_segment(text: str) -> bool:
    """Whether ``text`` has a ``..`` path segment (between slashes or backslashes, or at an end)."""
    return ".." in text and ".." in _SEGMENTS.split(text)


#: The control characters (see :func:`_is_control`): categories Cc, Zl and Zp
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Those that JSON text holds unescaped (``json.dumps`` escapes the ones below U+0020)
_RAW_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029]")


def _is_control(char: str) -> bool:
    """A control character or a line/paragraph separator (newline, NUL, ESC, DEL, C1...)."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _strings(value: Any) -> Iterable[str]:
    """The strings in an argument: itself, or those of a JSON value (keys too).

    Walked with a stack, not recursively: a generator per level cost a 2 MB list 0.6 s.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            for key, child in item.items():
                stack.append(child)
                stack.append(key)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))


def _allow_glob(value: Any, pattern: str) -> bool:
    """Whether an allow rule's argument pattern matches ``value``.

    ``*`` and ``?`` match any character, ``/`` and newlines too, so ``"/tmp/*"`` matched
    ``"/tmp/../etc/passwd"``: a value with a ``..`` path segment, or with a control character
    (in any string of it, for a JSON value), is not matched unless the pattern has that
    segment or character itself. Text is matched as written (``%2e%2e`` is not decoded);
    deny rules match plain globs (matching more).
    """
    if isinstance(value, str):  # (checked below, as its own only string)
        text, faithful = value, False
    else:
        text, faithful = _json_of(value)
    if not _glob(text, pattern):
        return False
    if (faithful and ".." not in text and "\\" not in text
            and _RAW_CONTROL.search(text) is None):
        # no string in it has a ".." or a control character: JSON text holds each string as
        # written, but for the control characters below U+0020, escaped with a backslash (a
        # scan in C, where walking a 2 MB list's strings one by one took 0.6 s a rule)
        return True
    parent_ok = _has_parent_segment(pattern)
    for text in _strings(value):
        if not parent_ok and _has_parent_segment(text):
            return False
        if _CONTROL.search(text) is not None and any(
                c not in pattern for c in set(_CONTROL.findall(text))):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow or deny the calls it matches.

    ``tool`` and ``lineage`` are glob patterns (``"read_*"``, ``"lead/researcher#*"``);
    ``args`` maps argument names to globs over the argument's text (strings as they are,
    other values as JSON), all of which must match (an allow rule's globs do not match a
    value with a ``..`` path segment or a control character unless the pattern has it);
    ``when`` is an optional predicate over the
    arguments. ``reason`` is stored with the decision (and shown to an agent on a denial).
    """

    action: Literal["allow", "deny"]
    tool: str = "*"
    args: Mapping[str, str] = field(default_factory=dict)
    lineage: str = "*"
    when: Callable[[Mapping[str, Any]], bool] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or self.action not in ("allow", "deny"):
            raise ConfigError(f"a rule's action is 'allow' or 'deny', got {shown(self.action)}")
        # checked now: a pattern that is not text failed every match, denying every call
        # with a TypeError, and the rule said nothing when it was written
        for name in ("tool", "lineage"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"a rule's {name} is a glob pattern (text), got "
                                  f"{shown(getattr(self, name))}")
        if not isinstance(self.args, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.args.items()):
            raise ConfigError(f"a rule's args map argument names to glob patterns (text), got "
                              f"{shown(self.args)}")
        if self.when is not None and not callable(self.when):
            raise ConfigError(f"a rule's when is a predicate over the arguments, got "
                              f"{shown(self.when)}")
        if self.when is not None and _is_async(self.when):
            # its coroutine, never awaited, is true: the rule matched every call it was
            # asked about (an allow rule approved them all, unchecked)
            raise ConfigError(f"a rule's when is a plain predicate over the arguments (rules "
                              f"decide at once), got an async function {shown(self.when)}; "
                              "decide in an async approver, as otherwise=")
        if self.reason is None:
            object.__setattr__(self, "reason", "")
        elif not isinstance(self.reason, str):  # stored with the decision, as text
            raise ConfigError(f"a rule's reason is text, got {shown(self.reason)}")

    def matches(self, request: ApprovalRequest) -> bool:
        """Whether this rule applies to ``request``."""
        if not fnmatchcase(request.tool, self.tool):
            return False
        if self.lineage != "*" and not fnmatchcase(request.lineage, self.lineage):
            return False
        if self.args and not isinstance(request.args, Mapping):  # checked: no, not yes
            raise ValueError("the call's arguments could not be read as JSON (too deep, "
                             "holding themselves, or a key JSON cannot hold), so its argument "
                             "patterns cannot be checked")
        # an allow rule confines: its globs do not reach past a ``..`` segment or a control
        # character the pattern does not have; a deny rule's plain glob matches more
        for name, pattern in self.args.items():
            if name not in request.args:
                return False
            value = request.args[name]
            if self.action == "allow":
                if not _allow_glob(value, pattern):
                    return False
            elif not _glob(_value_text(value), pattern):
                return False
        if self.when is None:
            return True
        verdict = self.when(request.args)
        if inspect.isawaitable(verdict):  # a sync function returning one: never true
            if inspect.iscoroutine(verdict):
                verdict.close()
            raise TypeError(f"when returned {_safe_repr(verdict)}, to be awaited: a rule's "
                            "when is a plain predicate")
        return bool(verdict)

    def decision(self) -> Decision:
        """What this rule says."""
        if self.action == "allow":
            return Decision.approve(self.reason or f"allowed by rule {self.tool!r}")
        return Decision.deny(self.reason or f"denied by rule {self.tool!r}")


Otherwise = Literal["deny", "allow"] | Approver


class RulesApprover(Approver):
    """Decides by rules, first match wins; ``deny=`` patterns come before ``allow=`` ones.

    A request no rule matches goes to ``otherwise``: ``"deny"`` (the default), ``"allow"``, or
    another approver (say a :class:`~shoal.cli.approver.ConsoleApprover`) that receives those
    requests as one batch.

    Args:
        rules: :class:`Rule` objects, in order.
        allow: tool name patterns to allow (after ``rules`` and ``deny``).
        deny: tool name patterns to deny (after ``rules``).
        otherwise: what happens to requests no rule matches.
    """

    def __init__(self, rules: Sequence[Rule] = (), *, allow: Sequence[str] = (),
                 deny: Sequence[str] = (), otherwise: Otherwise = "deny") -> None:
        if not isinstance(otherwise, Approver) and otherwise not in ("deny", "allow"):
            raise ConfigError(f"otherwise is 'deny', 'allow' or an Approver, got "
                              f"{shown(otherwise)}")
        rules, allow, deny = _listed(rules, "rules"), _listed(allow, "allow"), _listed(deny, "deny")
        if not all(isinstance(rule, Rule) for rule in rules):
            raise ConfigError(f"rules takes Rule objects, e.g. Rule('deny', 'delete_*'), got "
                              f"{shown(rules)}")
        if not all(isinstance(pattern, str) for pattern in (*allow, *deny)):
            raise ConfigError(f"allow and deny take tool name patterns (text), got "
                              f"{shown([*deny, *allow])}")
        self.rules: list[Rule] = [*rules, *(Rule("deny", p) for p in deny),
                                  *(Rule("allow", p) for p in allow)]
        self.otherwise = otherwise

    def decide(self, request: ApprovalRequest) -> Decision | None:
        """The first matching rule's decision, or ``None`` when no rule matches."""
        texts = _TEXTS.set({})  # each value's JSON, made once for all the rules
        try:
            return self._first_match(request)
        finally:
            _TEXTS.reset(texts)

    def _first_match(self, request: ApprovalRequest) -> Decision | None:
        for rule in self.rules:
            try:
                matched = rule.matches(request)
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except BaseException as exc:  # a predicate failed (sys.exit too): say no, not yes
                return Decision.deny(f"rule {rule.tool!r} could not be checked: "
                                     f"{describe_exception(exc)}")
            if matched:
                return rule.decision()
        return None

    @property
    def serial(self) -> bool:
        """Whether ``otherwise`` reviews one batch at a time (rules alone never wait)."""
        return isinstance(self.otherwise, Approver) and self.otherwise.serial

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Decide by rules; pass the unmatched requests to ``otherwise``."""
        decided = [self.decide(r) for r in batch]
        rest = [r for r, d in zip(batch, decided, strict=True) if d is None]
        if rest and isinstance(self.otherwise, Approver):
            for request, decision in zip(batch, decided, strict=True):
                if decision is not None:  # a rule's call need not wait for the fallback
                    answer_now(request, decision)
            answers = iter(await self._otherwise(rest))  # one each, in order
            return [d if d is not None else next(answers) for d in decided]
        fallback = (Decision.approve("allowed: no rule matched") if self.otherwise == "allow"
                    else Decision.deny("no rule allows this call"))
        return [d if d is not None else fallback for d in decided]

    async def _otherwise(self, rest: list[ApprovalRequest]) -> list[Decision]:
        """The fallback approver's answers to ``rest``, one each.

        A fallback that fails (raises, ``sys.exit()`` too, or answers what cannot be read as
        a list of answers) denies ``rest`` only: the calls the rules decided keep their
        decisions.
        """
        assert isinstance(self.otherwise, Approver)
        try:  # no more answers than requests are read: an endless iterator must not hang
            answers: list[Any] = list(itertools.islice(await reviewed(self.otherwise, rest),
                                                       len(rest)))
        except KeyboardInterrupt:
            raise
        except asyncio.CancelledError as exc:
            if stopped():
                raise
            why = f"the fallback approver failed: {describe_exception(exc)} (nothing cancelled it)"
            return [Decision.deny(why) for _ in rest]  # and the rules' decisions stand
        except BaseException as exc:  # the fallback's bug: deny what it was asked, saying so
            why = f"the fallback approver failed: {describe_exception(exc)}"
            return [Decision.deny(why) for _ in rest]
        return answers + [Decision.deny("no decision")] * (len(rest) - len(answers))

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """Tell the fallback approver, which may be asking about them."""
        if isinstance(self.otherwise, Approver):
            self.otherwise.withdrawn(requests)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, ask: Approver | None = None) -> RulesApprover:
        """Rules from data such as a rules file holds (see :meth:`from_file`)."""
        if not isinstance(data, Mapping):
            raise ConfigError("a rules file holds a mapping with 'rules' and 'otherwise'")
        unknown = set(data) - {"rules", "otherwise"}
        if unknown:
            raise ConfigError(f"unknown key(s) {_keys(unknown)} in rules; "
                              "known: rules, otherwise")
        rules = [_rule(item, i) for i, item in enumerate(data.get("rules") or [], 1)]
        otherwise = data.get("otherwise", "deny")
        if otherwise == "ask":
            return cls(rules, otherwise=ask if ask is not None else "deny")
        if otherwise not in ("deny", "allow"):
            raise ConfigError(f"otherwise is 'deny', 'allow' or 'ask', got {shown(otherwise)}")
        return cls(rules, otherwise=otherwise)

    @classmethod
    def from_file(cls, path: str | Path, *, ask: Approver | None = None) -> RulesApprover:
        """Read rules from a YAML or JSON file.

        For example::

            rules:
              - deny: "delete_*"
                reason: deleting is never allowed
              - allow: fetch
                args: {url: "https://docs.example.com/*"}
              - allow: "read_*"
                lineage: "lead/*"
            otherwise: ask      # deny (default), allow, or ask: pass to ``ask``

        ``otherwise: ask`` without an ``ask`` approver denies.
        """
        from shoal.plandata import DataError, read_text

        source = Path(path)
        try:  # bounded, and a FIFO or /dev/zero neither hangs nor fills memory
            text = read_text(source, "rules file")
        except DataError as exc:
            raise ConfigError(f"cannot read the rules file {str(source)!r}: "
                              f"{exc.message}") from None
        return cls.from_dict(_parse_rules(text, source), ask=ask)


def _listed(value: Any, name: str) -> list[Any]:
    """``value`` as a list; one string is refused, not read as one pattern per character.

    ``allow="read_*"`` would otherwise allow ``"*"``: every tool.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} takes a list, e.g. {name}=[{shown(value)}], got {shown(value)}")
    return list(value)


def _parse_rules(text: str, source: Path) -> Any:
    """A rules file's data, read with the limits of plan files.

    So no alias bombs, and no duplicate keys: a rule written twice must not silently mean
    its last copy.
    """
    from shoal.plandata import DataError, parse_json, parse_yaml

    json_file = source.suffix.lower() == ".json"
    try:
        return parse_json(text) if json_file else parse_yaml(text)
    except DataError as exc:
        kind = "JSON" if json_file else "YAML"
        raise ConfigError(f"{source}: not a usable {kind} rules file: {exc.message}") from None


def _rule(item: Any, number: int) -> Rule:
    """One rule of a rules file: ``{allow|deny: PATTERN, args, lineage, reason}``."""
    where = f"rule {number}"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: write a rule as a mapping, e.g. {{deny: 'delete_*'}}")
    actions = [a for a in ("allow", "deny") if a in item]
    unknown = set(item) - {"allow", "deny", "args", "lineage", "reason"}
    if len(actions) != 1 or unknown:
        raise ConfigError(f"{where}: needs exactly one of allow/deny (a tool pattern), and "
                          f"may have args, lineage, reason; got keys {_keys(item)}")
    args = item.get("args") or {}
    if not isinstance(args, Mapping) or not all(isinstance(v, str) for v in args.values()):
        raise ConfigError(f"{where}: args maps argument names to patterns (strings)")
    action: Literal["allow", "deny"] = "allow" if actions[0] == "allow" else "deny"
    return Rule(action, _text(item, action, where), {str(k): v for k, v in args.items()},
                _text(item, "lineage", where, "*"), reason=_text(item, "reason", where, ""))


def _keys(keys: Iterable[Any]) -> str:
    """Keys of a rules file for a message: of any type (YAML's ``1:`` is an int).

    Text keys are quoted whole (the command line bounds its error lines, ``--json`` keeps
    them), any other quoted with :func:`~shoal.merge.shown`; ten at most.
    """
    named = sorted(str.__repr__(key) if isinstance(key, str) else shown(key) for key in keys)
    more = f" and {len(named) - 10} more" if len(named) > 10 else ""
    return f"[{', '.join(named[:10])}]{more}"


def _text(item: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    """A rule's ``key`` as text: a pattern or a reason is text (or a number, written as such).

    ``deny:`` with nothing after it (YAML's null), a list or a mapping would otherwise become
    a pattern such as ``"None"`` that matches nothing, and the rule would silently do nothing.
    """
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, str | int | float) or (
            isinstance(value, int) and abs(value) > 10**100):  # past 4,300 digits: no str()
        raise ConfigError(f"{where}: {key} is text (a pattern such as 'delete_*'"
                          f"{'' if key != 'reason' else ', or a reason'}), got {shown(value)}")
    return str(value)
