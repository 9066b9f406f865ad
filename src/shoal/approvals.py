"""Approvals: a person (or a rule, or your code) decides whether a call may run.

A tool needs approval with ``@tool(approval=True)``, or ``approval=predicate`` to ask only for
some arguments (``approval=lambda args: args["amount"] > 100``). When such a call's inputs are
ready, the runtime resolves its arguments and sends an :class:`ApprovalRequest` to the run's
:class:`Approver`; the call waits without holding any limit, so calls that need no approval go
on running. Requests that become pending together (in one turn of the event loop, from any run
of the same :class:`~shoal.runtime.Runtime`, subagents' included) reach the approver as one
**batch**, and it answers each with a :class:`Decision`: approve, deny with a reason, or edit
the arguments (the edited call is what gets approved and run).

Built in: :class:`ConsoleApprover` (asks on the terminal, pausing a live view meanwhile),
:class:`RulesApprover` (allow / deny patterns over tool names, arguments and lineage, with a
fallback approver for the rest) and :class:`CallbackApprover` (your function, sync or async).
A plain callable passed as ``Runtime(approver=fn)`` becomes a :class:`CallbackApprover`.

Guarantees (see :mod:`shoal.scheduler.approval_desk` for how they are kept): a decision is
bound to :func:`~shoal.store.base.approval_hash` of the exact tool and canonical arguments,
stored, and used once, by one call (its automatic retries included); a denied call ends
``denied`` with the reason and never runs; no approver, an approver error, a timeout, or an
exhausted approval budget all count as a denial.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import queue
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from shoal.exceptions import ConfigError, describe_exception
from shoal.store.base import canonical_json

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "ApprovalRequest",
    "Approver",
    "CallbackApprover",
    "ConsoleApprover",
    "Decision",
    "Rule",
    "RulesApprover",
    "Verdict",
    "as_approver",
    "request_id",
]

Verdict = Literal["approve", "deny", "edit"]


def request_id(run_id: str, node_id: str, args_hash: str) -> str:
    """The id of the request about one call (the same after a resume: it names the call)."""
    return f"{run_id}:{node_id}:{args_hash[:12]}"


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
        inner = ", ".join(f"{_ascii(k)}={json.dumps(v)}" for k, v in self.args.items())
        text = f"{_ascii(self.tool)}({inner})"
        if len(text) <= width:
            return text
        keep = max(width - 30, 1)
        return f"{text[:keep]}… {len(text) - keep:,} more characters"


def _ascii(name: str) -> str:
    """``name`` with whatever is not printable ASCII escaped as JSON would."""
    return json.dumps(str(name))[1:-1]


@dataclass(frozen=True, slots=True)
class Decision:
    """An approver's answer to one request: :meth:`approve`, :meth:`deny` or :meth:`edit`."""

    verdict: Verdict
    reason: str = ""
    args: Mapping[str, Any] | None = None  # the replacement arguments of an ``edit``

    def __post_init__(self) -> None:
        if self.verdict not in ("approve", "deny", "edit"):
            raise ConfigError(f"a decision is 'approve', 'deny' or 'edit', got {self.verdict!r}")
        if (self.verdict == "edit") != (self.args is not None):
            raise ConfigError("an edit carries the new arguments (and only an edit does)")

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
        return cls("edit", reason, dict(args))


class Approver(ABC):
    """Decides on batches of pending calls. Subclass it and implement :meth:`review`.

    ``review`` may take as long as a person needs; the runtime's ``approval_timeout`` turns
    a late answer into a denial. It is never called twice at once by one runtime (the next
    batch waits), but one approver may serve several runtimes.
    """

    @property
    def name(self) -> str:
        """Who decided, as stored with each decision (default: the class name)."""
        return type(self).__name__

    @abstractmethod
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """One decision per request, in the batch's order."""

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """These requests no longer need an answer (their calls were cancelled or timed out).

        Called on the event loop; the default does nothing.
        """
        return None


CallbackResult = Decision | bool | None
Callback = Callable[[ApprovalRequest], CallbackResult | Awaitable[CallbackResult]]


class CallbackApprover(Approver):
    """Asks a function about each request.

    The function returns a :class:`Decision`, or ``True`` (approve) / ``False`` or ``None``
    (deny).
    Async functions answer a batch concurrently; sync ones run on the event loop, one after
    another, so keep them quick (do slow work in an async function). A function that raises
    denies that request, with the error as the reason.
    """

    def __init__(self, fn: Callback, *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"CallbackApprover takes a callable, got {fn!r}")
        self._fn = fn
        self._name = name or getattr(fn, "__qualname__", None) or type(fn).__name__

    @property
    def name(self) -> str:
        """The function's name (or the one given)."""
        return self._name

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Ask the function about every request in ``batch``."""
        answers = [self._call(r) for r in batch]
        waiting = [i for i, a in enumerate(answers) if inspect.isawaitable(a)]
        if waiting:  # only async answers need the loop: sync ones cost no task
            done = await asyncio.gather(*(self._await(answers[i]) for i in waiting))
            for i, answer in zip(waiting, done, strict=True):
                answers[i] = answer
        return [a if isinstance(a, Decision) else _as_decision(a) for a in answers]

    def _call(self, request: ApprovalRequest) -> object:
        try:
            return self._fn(request)
        except Exception as exc:  # the user's function failed: deny, saying why
            return _raised(exc)

    @staticmethod
    async def _await(answer: Any) -> object:
        try:
            return await answer
        except Exception as exc:
            return _raised(exc)


def _raised(exc: Exception) -> Decision:
    return Decision.deny(f"the approval callback raised {describe_exception(exc)}")


def _as_decision(answer: object) -> Decision:
    if isinstance(answer, Decision):
        return answer
    if answer is True:
        return Decision.approve()
    if answer is False or answer is None:
        return Decision.deny("denied by the approval callback")
    return Decision.deny(f"the approval callback returned {answer!r}, not a Decision or bool")


def as_approver(value: Approver | Callback | None) -> Approver | None:
    """``value`` as an :class:`Approver`: callables are wrapped in :class:`CallbackApprover`."""
    if value is None or isinstance(value, Approver):
        return value
    if callable(value):
        return CallbackApprover(value)
    raise ConfigError(f"approver takes an Approver or a callable, got {value!r}")


# ---- rules ---------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    """An argument as text for glob matching: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else canonical_json(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow or deny the calls it matches.

    ``tool`` and ``lineage`` are glob patterns (``"read_*"``, ``"lead/researcher#*"``);
    ``args`` maps argument names to globs over the argument's text (strings as they are,
    other values as JSON), all of which must match; ``when`` is an optional predicate over the
    arguments. ``reason`` is stored with the decision (and shown to an agent on a denial).
    """

    action: Literal["allow", "deny"]
    tool: str = "*"
    args: Mapping[str, str] = field(default_factory=dict)
    lineage: str = "*"
    when: Callable[[Mapping[str, Any]], bool] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise ConfigError(f"a rule's action is 'allow' or 'deny', got {self.action!r}")

    def matches(self, request: ApprovalRequest) -> bool:
        """Whether this rule applies to ``request``."""
        if not fnmatchcase(request.tool, self.tool):
            return False
        if self.lineage != "*" and not fnmatchcase(request.lineage, self.lineage):
            return False
        for name, pattern in self.args.items():
            if name not in request.args or not fnmatchcase(_value_text(request.args[name]),
                                                           pattern):
                return False
        return self.when is None or bool(self.when(request.args))

    def decision(self) -> Decision:
        """What this rule says."""
        if self.action == "allow":
            return Decision.approve(self.reason or f"allowed by rule {self.tool!r}")
        return Decision.deny(self.reason or f"denied by rule {self.tool!r}")


Otherwise = Literal["deny", "allow"] | Approver


class RulesApprover(Approver):
    """Decides by rules, first match wins; ``deny=`` patterns come before ``allow=`` ones.

    A request no rule matches goes to ``otherwise``: ``"deny"`` (the default), ``"allow"``, or
    another approver (say a :class:`ConsoleApprover`) that receives those requests as one batch.

    Args:
        rules: :class:`Rule` objects, in order.
        allow: tool name patterns to allow (after ``rules`` and ``deny``).
        deny: tool name patterns to deny (after ``rules``).
        otherwise: what happens to requests no rule matches.
    """

    def __init__(self, rules: Sequence[Rule] = (), *, allow: Sequence[str] = (),
                 deny: Sequence[str] = (), otherwise: Otherwise = "deny") -> None:
        if not isinstance(otherwise, Approver) and otherwise not in ("deny", "allow"):
            raise ConfigError(f"otherwise is 'deny', 'allow' or an Approver, got {otherwise!r}")
        self.rules = [*rules, *(Rule("deny", p) for p in deny), *(Rule("allow", p) for p in allow)]
        self.otherwise = otherwise

    def decide(self, request: ApprovalRequest) -> Decision | None:
        """The first matching rule's decision, or ``None`` when no rule matches."""
        for rule in self.rules:
            try:
                matched = rule.matches(request)
            except Exception as exc:  # a predicate failed: say no rather than guess yes
                return Decision.deny(f"rule {rule.tool!r} could not be checked: "
                                     f"{describe_exception(exc)}")
            if matched:
                return rule.decision()
        return None

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Decide by rules; pass the unmatched requests to ``otherwise``."""
        decided = [self.decide(r) for r in batch]
        rest = [r for r, d in zip(batch, decided, strict=True) if d is None]
        if rest and isinstance(self.otherwise, Approver):
            answers = iter(await self.otherwise.review(rest))
            return [d if d is not None else next(answers, Decision.deny("no decision"))
                    for d in decided]
        fallback = (Decision.approve("allowed: no rule matched") if self.otherwise == "allow"
                    else Decision.deny("no rule allows this call"))
        return [d if d is not None else fallback for d in decided]

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
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in rules; "
                              "known: rules, otherwise")
        rules = [_rule(item, i) for i, item in enumerate(data.get("rules") or [], 1)]
        otherwise = data.get("otherwise", "deny")
        if otherwise == "ask":
            return cls(rules, otherwise=ask if ask is not None else "deny")
        if otherwise not in ("deny", "allow"):
            raise ConfigError(f"otherwise is 'deny', 'allow' or 'ask', got {otherwise!r}")
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
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the rules file {str(source)!r}: "
                              f"{exc.strerror or exc}") from None
        return cls.from_dict(_parse_rules(text, source), ask=ask)


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
                          f"may have args, lineage, reason; got keys {sorted(item)}")
    args = item.get("args") or {}
    if not isinstance(args, Mapping) or not all(isinstance(v, str) for v in args.values()):
        raise ConfigError(f"{where}: args maps argument names to patterns (strings)")
    action: Literal["allow", "deny"] = "allow" if actions[0] == "allow" else "deny"
    return Rule(action, str(item[action]), {str(k): v for k, v in args.items()},
                str(item.get("lineage", "*")), reason=str(item.get("reason", "")))


# ---- the console ---------------------------------------------------------------------------


class _Lines:
    """Lines of a text stream, read on a daemon thread so that waiting never blocks the loop.

    One thread per stream, started on first use and kept: a thread blocked in ``readline``
    cannot be stopped, and a daemon one does not keep the process alive at exit.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._lock = threading.Lock()

    def _read(self) -> None:
        while True:
            try:
                line: str | None = self._stream.readline() or None
            except (OSError, ValueError):  # closed underneath us: the same as end of input
                line = None
            self._lines.put(line)
            self._wake()
            if line is None:
                return

    def _wake(self) -> None:
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)

    def discard_typed_ahead(self) -> None:
        """Drop lines typed before the prompt: they answered a question that is gone."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:  # end of input is not typed-ahead: keep it
                self._lines.put(None)
                return

    async def readline(self) -> str | None:
        """The next line without its newline, or ``None`` at end of input."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="shoal-approval-input",
                                            daemon=True)
            self._thread.start()
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                future = asyncio.get_running_loop().create_future()
                with self._lock:
                    self._waiter = (asyncio.get_running_loop(), future)
                if self._lines.empty():
                    await future
                continue
            if line is None:
                self._lines.put(None)  # every later read sees the end too
                return None
            return line.rstrip("\r\n")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ConsoleApprover(Approver):
    r"""Asks a person on the terminal; works alongside ``shoal run``'s live view.

    A batch is shown as a table: the tool and its arguments, the lineage, why approval is
    needed. With more than one request the person may approve all (``a``), deny all (``d``)
    or go one by one (``o``); per request: ``y`` approve, ``n`` deny (a reason is asked),
    ``e`` edit (new arguments as a JSON object), ``v`` view the whole call. End of input
    denies whatever is left.

    Nothing is hidden from the person deciding. Arguments are shown as JSON in which every
    control, bidi, zero-width or other invisible character is a visible ``\uXXXX`` escape
    (highlighted) and a run of spaces is counted (``⟨240 spaces⟩``), so ``"ls -la"`` followed
    by spaces cannot hide a ``; curl ... | sh`` after them. A call longer than
    :attr:`shown` characters is cut with a marker saying how much more there is; it cannot
    be approved (``y``, ``a``, or keeping it unchanged in an edit) until ``v`` has shown it
    in full. Denying never needs the full view.

    Args:
        console: a rich console to write to (default: standard error).
        input: where answers are read from (default: standard input).
        pause: a function returning a context manager held while prompting; a live display
            passes one that stops redrawing (``shoal run`` does this for you).
        shown: characters of a call's arguments shown before the rest waits for ``v``.
    """

    def __init__(self, console: Console | None = None, input: TextIO | None = None, *,
                 pause: Callable[[], AbstractContextManager[None]] | None = None,
                 shown: int = 1000) -> None:
        self._console = console
        self._lines = _Lines(input if input is not None else sys.stdin)
        self.pause = pause
        self.shown = max(int(shown), 1)
        self._busy: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @property
    def console(self) -> Console:
        """The console prompts are written to."""
        if self._console is None:
            from shoal.cli.safe import console  # the UI: loaded only when prompting

            self._console = console(stderr=True)
        return self._console

    def _lock(self) -> asyncio.Lock:
        """One prompt at a time, even when several runtimes share this approver."""
        loop = asyncio.get_running_loop()
        if self._busy is None or self._busy[0] is not loop:
            self._busy = (loop, asyncio.Lock())
        return self._busy[1]

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Show ``batch`` and read the person's answers."""
        async with self._lock():
            with self._paused():
                self._lines.discard_typed_ahead()
                calls = [_Shown(r, self.shown) for r in batch]
                self._show(calls)
                return await self._ask(calls)

    @contextmanager
    def _paused(self) -> Iterator[None]:
        with self.pause() if self.pause is not None else nullcontext():
            yield

    def _show(self, calls: Sequence[_Shown]) -> None:
        from rich.table import Table

        from shoal.cli.safe import text

        count = len(calls)
        table = Table(title=f"{count} call{'s' if count != 1 else ''} need approval",
                      title_justify="left", show_lines=count > 1, header_style="bold")
        for name in ("#", "call", "from", "why"):
            table.add_column(name, overflow="fold")
        for i, call in enumerate(calls, 1):
            table.add_row(str(i), call.text(), text(call.request.lineage, "dim", width=200),
                          text(call.request.reason, "dim", width=500))
        self.console.print(table)

    async def _ask(self, calls: Sequence[_Shown]) -> list[Decision]:
        if len(calls) > 1:
            choice = await self._choose_batch(calls)
            if choice == "a":
                return [Decision.approve("approved by a person (all)") for _ in calls]
            if choice != "o":  # "d", or end of input
                reason = "denied by a person (all)" if choice == "d" else _NO_INPUT
                return [Decision.deny(reason) for _ in calls]
        decisions: list[Decision] = []
        for i, call in enumerate(calls, 1):
            if len(calls) > 1:  # the table may have scrolled away: show this call again
                self.console.print(call.text(title=f"#{i} "))
            decisions.append(await self._ask_one(i, call))
        return decisions

    async def _choose_batch(self, calls: Sequence[_Shown]) -> str | None:
        cut = [str(i) for i, call in enumerate(calls, 1) if not call.whole]
        if not cut:
            return await self._choose("approve [a]ll, [d]eny all, or one by [o]ne? ",
                                      ("a", "d", "o"))
        self.console.print(f"call{'s' if len(cut) > 1 else ''} #{', #'.join(cut)} "
                           f"{'are' if len(cut) > 1 else 'is'} cut short: go one by one to "
                           "view and decide", markup=False)
        return await self._choose("[d]eny all, or one by [o]ne? ", ("d", "o"))

    async def _ask_one(self, number: int, call: _Shown) -> Decision:
        while True:
            name = call.tool_name()
            view = "" if call.whole else ", [v]iew all"
            choice = await self._choose(f"#{number} {name}: [y]es, [n]o, [e]dit{view}? ",
                                        ("y", "n", "e", "v"))
            if choice == "v":
                self._view_all(call)
            elif choice == "y" and not call.whole:
                self._must_view(call)
            elif choice == "y":
                return Decision.approve("approved by a person")
            elif choice == "e":
                decision = await self._edit(call)
                if decision is not None:
                    return decision
            elif choice is None:
                return Decision.deny(_NO_INPUT)
            else:
                reason = await self._prompt("reason (optional): ")
                return Decision.deny(f"denied by a person: {reason}" if reason
                                     else "denied by a person")

    def _view_all(self, call: _Shown) -> None:
        self.console.print(call.text(full=True))
        call.whole = call.exact

    def _must_view(self, call: _Shown) -> None:
        if not call.exact:
            self.console.print("these arguments are not JSON and cannot be shown in full: deny "
                               "the call or edit its arguments", markup=False)
            return
        self.console.print(f"{call.hidden:,} characters of this call are not shown yet: "
                           "view it all (v) before approving it", markup=False)

    async def _edit(self, call: _Shown) -> Decision | None:
        """The edited call; ``None`` to ask again (keeping a call not yet seen in full)."""
        while True:
            text = await self._prompt("new arguments as a JSON object (Enter keeps them): ")
            if text is None:
                return Decision.deny(_NO_INPUT)
            if not text.strip():
                if not call.whole:
                    self._must_view(call)
                    return None
                return Decision.approve("approved by a person")
            try:
                args = json.loads(text)
            except json.JSONDecodeError as exc:
                self.console.print(f"not JSON ({exc.msg}); try again", markup=False)
                continue
            if isinstance(args, dict):
                return Decision.edit(args, "edited by a person")
            self.console.print('write a JSON object, e.g. {"path": "notes.txt"}', markup=False)

    async def _choose(self, prompt: str, options: tuple[str, ...]) -> str | None:
        while True:
            answer = await self._prompt(prompt)
            if answer is None:
                return None
            if answer.strip().lower()[:1] in options:
                return answer.strip().lower()[:1]
            self.console.print(f"answer one of {', '.join(options)}", markup=False)

    async def _prompt(self, text: str) -> str | None:
        self.console.print(text, end="", markup=False, highlight=False)
        self.console.file.flush()
        return await self._lines.readline()

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """Say which calls no longer need an answer."""
        from shoal.cli.safe import one_line, text

        for request in requests:
            self.console.print(text(f"no longer needed: {one_line(request.tool, 80)} "
                                    f"({one_line(request.lineage, 200)})", "dim"))


class _Shown:
    """One request as the console shows it: its JSON view, and whether all of it was shown."""

    def __init__(self, request: ApprovalRequest, shown: int) -> None:
        from shoal.cli.safe import clean, exact_json_view

        self.request = request
        self.view, self.exact = exact_json_view(dict(request.args))
        self.shown = shown
        # the tool's name counts as part of the call: a long one is cut in the table too
        self.hidden = max(len(self.view) - shown, 0) + max(
            len(clean(request.tool)) - TOOL_SHOWN, 0)
        # whether the person has had every character in front of them (a value JSON cannot
        # hold is shown as a repr, cut short: it never counts as seen)
        self.whole = self.hidden == 0 and self.exact

    def tool_name(self, *, full: bool = False) -> str:
        """The tool's name, escaped; cut to :data:`TOOL_SHOWN` characters unless ``full``."""
        from shoal.cli.safe import clean, one_line

        return clean(self.request.tool) if full else one_line(self.request.tool, TOOL_SHOWN)

    def text(self, *, full: bool = False, title: str = "") -> Text:
        """``tool {arguments}`` as a rich Text; cut to ``shown`` characters unless ``full``.

        The full view also shows where the call comes from (its lineage) whole.
        """
        from rich.text import Text

        from shoal.cli.safe import clean, view_text

        arguments, left = view_text(self.view, None if full else self.shown)
        out = Text(title, style="bold")
        out.append(self.tool_name(full=full), style="bold")
        out.append(" ")
        out.append_text(arguments)
        if full:
            out.append(f"\nfrom {clean(self.request.lineage)}", style="dim")
        if left or (not full and self.hidden):
            more = left + (0 if full else max(len(clean(self.request.tool)) - TOOL_SHOWN, 0))
            out.append(f" … {more:,} more characters: answer v to view all", style="bold yellow")
        return out


TOOL_SHOWN = 80  # characters of a tool's name shown before the rest waits for "v"


_NO_INPUT = "no answer: the input ended"
