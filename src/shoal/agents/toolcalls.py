"""One model turn's tool calls, run as one plan through the runtime.

:func:`execute_calls` takes the calls a model asked for, in its order, and returns one
:class:`CallRecord` per call, in the same order, each with the message that goes back to the
model. Calls that cannot run (arguments that are not JSON, an unknown tool, arguments that
do not fit the schema, a refusal such as a budget limit) never reach the runtime: they become
error results the model can read and correct. The rest form one plan, so the runtime's
dependency analysis (resource conflicts between the calls) and limits apply, and every call
whose inputs are ready runs at once.

:class:`CallStream` does the same for calls that arrive one by one while the model still
streams its reply: each call joins an open run (:mod:`shoal.openrun`) and starts the moment it
is complete, and :meth:`CallStream.finish` returns the records in the order the model asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shoal._slots import slot_init
from shoal.events import Event, EventSink, edited_args_text
from shoal.exceptions import ConfigError, ToolArgumentError, bounded_text
from shoal.models._common import sendable_text
from shoal.models.base import ModelResponse, ToolCall, ToolResultMessage
from shoal.outcome import Outcome, RunResult, jsonable
from shoal.plan import Plan
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.openrun import OpenRun
    from shoal.runtime import RunHandle, Runtime

__all__ = ["CallRecord", "CallStream", "Opener", "Preparer", "SharedRun", "Starter",
           "ToolErrorFormat", "check_run_options", "cut_answer_text", "edit_note", "error_text",
           "execute_calls", "note_line", "result_text", "settle", "tool_map"]

log = logging.getLogger("shoal")

#: Called for each well-formed call before it joins the plan, with the call's position in
#: the turn, the call, its tool and its lineage; returns the tool to run (possibly bound to
#: per-call state, as subagents are) or an exception that refuses the call.
Preparer = Callable[[int, ToolCall, Tool[..., Any], str], "Tool[..., Any] | BaseException"]

#: Starts a turn's plan with the given event sink and returns its handle.
Starter = Callable[[Plan, "EventSink | None"], "RunHandle"]

#: Opens a turn's open run with the given event sink (for :class:`CallStream`).
Opener = Callable[["EventSink | None"], "OpenRun"]


@slot_init
@dataclass(frozen=True, slots=True)
class CallRecord:
    """One tool call a model asked for and how it ended.

    Attributes:
        call: the call as the model wrote it (``id``, tool ``name``, raw JSON ``arguments``).
        lineage: where it ran, e.g. ``"lead/reader#2/read_paper#1"``: the lead's second
            ``reader`` subagent's first ``read_paper`` call; a call of an unknown tool ends
            in ``?`` (``"lead/nosuch?"``).
        status: the outcome's status (``ok``, ``failed``, ``timed_out``, ``cancelled``,
            ``skipped``, ``denied``, ``in_doubt``), or ``rejected`` for a call that never ran
            (arguments that are not JSON, an unknown tool, arguments that do not fit, a budget
            refusal).
        message: what the model receives: the result, or one short sentence saying what went
            wrong (``fetch timed out after 1 s``; see :func:`error_text`, and an agent's
            ``tool_error_format`` to word it yourself).
        outcome: the runtime's full record of the call (value, ``error`` with type, message
            and traceback, times, attempts); ``None`` for a rejected call.
        epoch: when (epoch seconds) the run that ran the call started: its outcome's times
            count from there (the timeline places calls with it); 0 for a rejected call.
        turn: the agent's model turn that asked for the call (1 for its first); 0 for a call
            run outside an agent's turns (:func:`execute_calls`).
    """

    call: ToolCall
    lineage: str
    status: str
    message: ToolResultMessage
    outcome: Outcome | None = None
    epoch: float = 0.0
    turn: int = 0

    @property
    def ok(self) -> bool:
        """Whether the call ran and succeeded."""
        return self.status == "ok"


def tool_map(
    tools: Iterable[Tool[..., Any]] | Mapping[str, Tool[..., Any]],
) -> dict[str, Tool[..., Any]]:
    """Tools by name (a mapping is taken as is)."""
    if isinstance(tools, Mapping):
        return dict(tools)
    return {t.name: t for t in tools}


#: Words a call that did not succeed for its model: gets the call's :class:`CallRecord`
#: (``message.content`` holds shoal's own sentence, ``outcome`` the full error) and returns
#: the text the model reads instead. Given as ``Agent(..., tool_error_format=...)``.
ToolErrorFormat = Callable[[CallRecord], str]

_TIMEOUT = re.compile(r"timeout of ([0-9.e+-]+) s")
_NEEDS = re.compile(r"^needs '([^']+)', which (?:ended (\w+)|was (skipped))")
_ENDED = {"failed": "failed", "timed_out": "timed out", "cancelled": "was cancelled",
          "denied": "was denied", "skipped": "was skipped", "in_doubt": "was in doubt"}


def result_text(outcome: Outcome, name: str | None = None) -> tuple[str, bool]:
    """What the model reads for an outcome, and whether it is an error (see :func:`error_text`).

    ``name`` is the tool's name as the model called it (default: the outcome's tool).
    A call its approver edited (``Decision.edit``) ends with :func:`edit_note`: the model
    asked for other arguments than the ones the result comes from.
    """
    if outcome.status == "ok":
        value = outcome.value
        text = bounded(value if isinstance(value, str) else json.dumps(jsonable(value)))
        return _noted(text, outcome), False
    return _noted(bounded(error_text(name or outcome.tool, outcome)), outcome), True


def _noted(text: str, outcome: Outcome | None) -> str:
    """``text`` with :func:`edit_note`'s line, or ``text`` itself when there is none.

    Itself, not a copy: ``+ ""`` makes a plain ``str`` of a tool's ``str`` subclass, which
    then would cross to a process agent's parent as text while its outcome could not.
    """
    note = "" if outcome is None else edit_note(outcome)
    return text + note if note else text


def edit_note(outcome: Outcome) -> str:
    """For a call run with arguments its approver changed, a line saying so and what ran.

    The arguments as :func:`~shoal.events.edited_args_text` writes them (JSON, bounded);
    ``""`` for a call that ran with the arguments it was given.
    """
    if outcome.edited_args is None:
        return ""
    shown = edited_args_text(outcome.edited_args)
    return note_line(f"a reviewer changed its arguments before it ran; it ran with {shown}")


def note_line(text: str) -> str:
    """A note shoal adds after a result a model reads: a line of its own, in brackets.

    So it reads as shoal's, not the tool's: an edited call's (:func:`edit_note`), a
    subagent's answer cut off at its output cap (:func:`cut_answer_text`).
    """
    return f"\n[note: {text}]"


#: What the parent's model reads after a subagent's answer that was cut off at its output cap.
CUT_OFF_NOTE = note_line(
    "this answer was cut off at the subagent's limit of output tokens: it ends mid-way; "
    "ask it for a shorter answer if the rest is needed")


def cut_answer_text(text: str) -> str:
    """A subagent's answer cut off at its model's output cap, as its parent's model reads it.

    The answer, then :data:`CUT_OFF_NOTE`: the cut text alone reads as whole. Within
    :data:`MAX_RESULT_CHARS` (the note kept last): the subagent's own result keeps it all.
    """
    if len(text) + len(CUT_OFF_NOTE) <= MAX_RESULT_CHARS:
        return text + CUT_OFF_NOTE
    keep = MAX_RESULT_CHARS - len(CUT_OFF_NOTE) - 80  # (the line below is under 80)
    return (f"{text[:keep]}\n[... {len(text) - keep} more characters cut: the result is too "
            f"long]{CUT_OFF_NOTE}")


#: The most characters of one call's result (or error) a model is sent; the outcome keeps all.
MAX_RESULT_CHARS = 100_000


def bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_RESULT_CHARS`, saying how much was left out.

    A tool that returns 10 MB would otherwise go whole into every later request of the agent,
    past any context window, and fail the run there.
    """
    if len(text) <= MAX_RESULT_CHARS:
        return text
    cut = len(text) - MAX_RESULT_CHARS
    return f"{text[:MAX_RESULT_CHARS]}\n[... {cut} more characters cut: the result is too long]"


def error_text(name: str, outcome: Outcome) -> str:
    """One short sentence for a model about a call that did not succeed.

    ``fetch failed: ValueError: bad url``, ``fetch timed out after 1 s``, ``fetch was denied:
    <reason>``, ``fetch was skipped because search failed``, ``fetch was cancelled: <reason>``
    (a budget spent is such a reason), ``fetch timed out: <reason>`` (the run's deadline, or
    the tree's ``wall_clock`` budget). Module paths and tracebacks stay on the outcome.
    """
    status, reason, error = outcome.status, outcome.reason, outcome.error
    if status == "failed":
        if error is None:
            return f"{name} failed" + (f": {reason}" if reason else "")
        kind = error.type.rsplit(".", 1)[-1]
        return f"{name} failed: {kind}" + (f": {error.message}" if error.message else "")
    if status == "timed_out":  # its own timeout, or (its reason) the run's or tree's time
        found = _TIMEOUT.search(error.message) if error is not None else None
        return f"{name} timed out" + (f" after {found.group(1)} s" if found
                                      else f": {reason}" if reason else "")
    if status == "denied":
        return f"{name} was denied: {reason or 'a person declined this call'}"
    if status == "skipped":
        needs = _NEEDS.match(reason)
        if needs is not None:
            upstream = needs.group(1).rsplit("#", 1)[0]
            ended = _ENDED.get(needs.group(2) or needs.group(3), "did not succeed")
            return f"{name} was skipped because {upstream} {ended}"
        return f"{name} was skipped" + (f": {reason}" if reason else "")
    if status == "in_doubt":
        return (f"{name} was interrupted and may or may not have taken effect"
                + (f": {reason}" if reason else ""))
    detail = reason or (str(error) if error is not None else "")
    return f"{name} {_ENDED.get(status, 'ended ' + status)}" + (f": {detail}" if detail else "")


class _Counter:
    """Names calls ``tool#n``, counting per tool name (shared across an agent's turns)."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = counts if counts is not None else {}

    def next(self, name: str) -> str:
        return _next_name(self.counts, name)


def _next_name(counts: dict[str, int], name: str) -> str:
    """The next call of ``name``'s node name, ``tool#n``, counted in ``counts``."""
    n = counts[name] = counts.get(name, 0) + 1
    return f"{name}#{n}"


async def execute_calls(
    calls: Sequence[ToolCall],
    tools: Iterable[Tool[..., Any]] | Mapping[str, Tool[..., Any]],
    *,
    runtime: Runtime | None = None,
    lineage: str = "",
    counts: dict[str, int] | None = None,
    prepare: Preparer | None = None,
    on_event: EventSink | None = None,
    on_reject: Callable[[CallRecord], None] | None = None,
    start: Starter | None = None,
    on_records: Callable[[list[CallRecord]], None] | None = None,
    run_id: str | None = None,
    error_format: ToolErrorFormat | None = None,
) -> list[CallRecord]:
    """Run ``calls`` in parallel as one plan; return a record per call, in the calls' order.

    Args:
        calls: the tool calls, in the order the model asked for them.
        tools: the tools the model may call.
        runtime: the runtime to run on (default: a fresh one, closed afterwards).
        lineage: the caller's lineage; each call's is ``f"{lineage}/{tool}#{n}"``.
        counts: per-tool call counters to continue (so names stay unique across turns).
        prepare: a last check or binding per call (see :data:`Preparer`).
        on_event: receives the runtime's events, each stamped with its call's lineage.
        on_reject: told about every call that did not run.
        start: starts the plan instead of ``runtime.start`` (to give the calls a journaled
            run of the caller's choosing, or continue one on resume).
        on_records: receives the records before they are returned, and also when the caller
            is cancelled meanwhile: the calls are then cancelled, their outcomes collected and
            passed here, and ``CancelledError`` is raised.
        run_id: the tool phase's run id.
        error_format: words the message of each call that did not succeed (see
            :data:`ToolErrorFormat`); default: shoal's own sentence (:func:`error_text`).
    """
    check_run_options(runtime, None, on_event, None)
    if on_event is not None and not callable(on_event):  # a list: one sink is taken here
        raise ConfigError(f"on_event= takes one callable here, got {type(on_event).__name__}")
    by_name = tool_map(tools)
    counter = _Counter(counts)
    records: list[CallRecord | None] = [None] * len(calls)
    plan = Plan(name=lineage)
    planned: dict[str, int] = {}  # node id -> position in calls
    lineages: dict[str, str] = {}
    for index, call in enumerate(calls):
        found = by_name.get(call.name)
        where = _child(lineage, counter.next(call.name) if found else unknown_part(call.name))
        checked = _check(index, call, found, by_name, where, prepare)
        if isinstance(checked, CallRecord):
            records[index] = checked
            if on_reject is not None:
                on_reject(checked)
            continue
        tool, args = checked
        node_id = where.rsplit("/", 1)[-1]
        plan.add(tool, args, node_id=node_id)
        planned[node_id] = index
        lineages[node_id] = where
    try:
        if planned:
            await _run_plan(plan, runtime, lineage, lineages, on_event, start,
                            run_id, calls, planned, records)
    finally:
        if error_format is not None:
            _reword(records, error_format)
        if on_records is not None:
            on_records([r for r in records if r is not None])
    return [r for r in records if r is not None]


def check_run_options(runtime: object, budget: object, on_event: object,
                   gates: object) -> list[Callable[[Event], None]]:
    """Refuse wrong-typed run options before anything starts; return the event sinks.

    For an agent run (:meth:`~shoal.agents.agent.Agent.start` and what calls it) and a batch
    of tool calls (:func:`execute_calls`).

    Raises :class:`~shoal.exceptions.ConfigError` saying what each option takes (as a plan
    run does, with the same checks), not an ``AttributeError`` from deep inside the run.
    """
    from shoal.merge import shown
    from shoal.models.retry import ModelGates
    from shoal.runtime import Runtime, _sink_list
    from shoal.scheduler.scope import check_budget

    if runtime is not None and not isinstance(runtime, Runtime):
        raise ConfigError(f"runtime= takes a shoal.Runtime(...), got {type(runtime).__name__} "
                          f"{shown(runtime)}")
    if gates is not None and not isinstance(gates, ModelGates):
        raise ConfigError(f"gates= takes a shoal.models.ModelGates(), got "
                          f"{type(gates).__name__} {shown(gates)}")
    check_budget(budget)
    return _sink_list(on_event)  # type: ignore[arg-type]  # checked there


def note_cut_call(records: list[CallRecord | None], stop_reason: str) -> None:
    """Say why the last call's arguments broke, of a reply cut off at its output cap.

    Told only that its arguments were no JSON, a model wrote the same long call again, to
    be cut off again at the same place.
    """
    last = len(records) - 1
    record = records[last] if records else None
    if record is None or record.status != "rejected":
        return
    try:
        record.call.parsed_arguments()
    except ValueError:  # cut inside them (else the call was refused for another reason)
        note = (f"\nNote: your reply was cut off at the model's limit of output tokens (stop "
                f"reason {stop_reason!r}) inside this call's arguments: write shorter "
                f"arguments (or the work in several calls), or have the agent's owner raise "
                f"ModelSettings(max_tokens=...).")
        message = replace(record.message, content=record.message.content + note)
        records[last] = replace(record, message=message)


def _reword(records: list[CallRecord | None], error_format: ToolErrorFormat) -> None:
    """Replace the message of each call that did not succeed with ``error_format``'s text."""
    for index, record in enumerate(records):
        if record is None or record.ok:
            continue
        try:
            text = error_format(record)
        except (Exception, SystemExit):  # a formatter's bug (sys.exit() too, as an approver's)
            log.exception("tool_error_format failed on %s; the model gets shoal's wording",
                          record.lineage)  # must not lose the results of a whole turn
            continue
        if not isinstance(text, str):  # None or a number would reach the model as 'None'
            log.error("tool_error_format returned %s, not text, on %s; the model gets "
                      "shoal's wording", type(text).__name__, record.lineage)
            continue
        message = replace(record.message, content=_noted(bounded(text), record.outcome))
        records[index] = replace(record, message=message)


def with_distinct_ids(response: ModelResponse, where: str) -> ModelResponse:
    """``response``, each of its calls under an id no earlier call of it has.

    A model (or a proxy in front of one) may give two calls of one reply the same id, or
    none: both would run, and both results would go back under one id, which the providers
    refuse (an Anthropic 400 ends the run). A call whose id is taken or empty is given one of
    its own (see :func:`distinct_call`), in the reply the conversation keeps and in its record.
    """
    calls = response.tool_calls
    if not calls:
        return response  # an answer: nothing to compare
    # what distinct_call asks of each call, all at once: ids as they are sent, where two
    # that differ only by lone surrogates are one (each surrogate becomes U+FFFD)
    ids = set(map(_sent_id, map(_call_id, calls)))
    if len(ids) == len(calls) and all(ids):
        return response  # every id given and its own (most replies): nothing to change
    seen: set[str] = set()
    distinct = tuple([distinct_call(call, index, seen, where)
                      for index, call in enumerate(calls)])
    if all(map(operator.is_, distinct, calls)):
        return response
    return replace(response, tool_calls=distinct)


_call_id = operator.attrgetter("id")


def _sent_id(call_id: object) -> str:
    """A call's id as it is sent (see :func:`sendable_text`); none (``None``...) is ``""``."""
    return sendable_text(call_id) if isinstance(call_id, str) else ""


def distinct_call(call: ToolCall, index: int, seen: set[str], where: str) -> ToolCall:
    """``call``, or a copy with an id not in ``seen``; the id it keeps is added to ``seen``.

    The new id depends only on the calls before it (``seen``) and its position, so a streamed
    reply's calls, taken one by one, get the ids its whole reply gets afterwards. ``seen``
    holds ids as they are sent (:func:`~shoal.models._common.sendable_text`): two ids that
    differ only by lone surrogates are sent as one (each surrogate U+FFFD), so the second
    is taken.
    """
    sent = _sent_id(call.id)
    if sent and sent not in seen:
        seen.add(sent)
        return call
    from shoal.merge import shown

    new = f"{sent or 'call'}_{index}"
    while new in seen:
        new += "_"
    seen.add(new)
    log.warning("%s: the model gave call %d (%s) %s; it is sent and answered as %r",
                where or "agent", index, shown(call.name),
                f"the id {shown(call.id)} of an earlier call" if call.id else "no id", new)
    return replace(call, id=new)


#: The most characters of a made-up tool name a lineage, or the error its model reads, holds.
UNKNOWN_NAME_CHARS = 100


def unknown_part(name: str) -> str:
    """The lineage part of a call of a tool no one offered: its name, then ``?``.

    A ``/`` in the name a model made up is written ``%2F``: lineages are split at ``/``, and
    a name holding one would read as calls nested in calls that never were. A name longer
    than :data:`UNKNOWN_NAME_CHARS` is cut in the middle (saying how much): a model's name of
    a megabyte was the lineage of its call, in every event and the journal.
    """
    if len(name) > UNKNOWN_NAME_CHARS:
        name = bounded_text(name, UNKNOWN_NAME_CHARS)
    return f"{name.replace('/', '%2F')}?"


def _child(lineage: str, name: str) -> str:
    return f"{lineage}/{name}" if lineage else name


def _check(
    index: int, call: ToolCall, found: Tool[..., Any] | None, by_name: Mapping[str, Tool[..., Any]],
    where: str, prepare: Preparer | None,
) -> CallRecord | tuple[Tool[..., Any], dict[str, Any]]:
    """The tool and validated arguments of a call, or the record of why it cannot run."""
    if found is None:
        known = ", ".join(sorted(by_name)) or "none"
        named = bounded_text(repr(call.name), UNKNOWN_NAME_CHARS)
        return _rejected(call, where, f"Error: there is no tool named {named}; "
                                      f"the tools are: {known}")
    try:
        args = found.validate(call.parsed_arguments())
    except ValueError as exc:  # not JSON, or not an object
        return _rejected(call, where, f"Error: {exc}")
    except ToolArgumentError as exc:
        return _rejected(call, where, f"Error: {exc}")
    tool: Tool[..., Any] | BaseException = found
    if prepare is not None:
        tool = prepare(index, call, found, where)
    if isinstance(tool, BaseException):
        return _rejected(call, where, f"Error: {tool}")
    return tool, args


def _rejected(call: ToolCall, where: str, text: str) -> CallRecord:
    message = ToolResultMessage(call.id, call.name, bounded(text), is_error=True)
    return CallRecord(call, where, "rejected", message)


async def _run_plan(
    plan: Plan, runtime: Runtime | None, lineage: str, lineages: Mapping[str, str],
    on_event: EventSink | None,
    start: Starter | None, run_id: str | None, calls: Sequence[ToolCall],
    planned: Mapping[str, int], records: list[CallRecord | None],
) -> None:
    from shoal.runtime import Runtime  # the runtime imports executors: load on use

    sink = _sink(on_event, lineage, lineages)
    own = runtime is None and start is None
    active = runtime if runtime is not None else Runtime()
    try:
        if start is not None:
            handle = start(plan, sink)
        else:
            handle = active.start(plan, on_event=sink, run_id=run_id, lineage=lineage)
        result, cancelled = await _settled(handle)
    finally:
        if own:
            await active.aclose()
    _fill(result, planned, lineages, calls, records)
    if cancelled:
        raise asyncio.CancelledError


def _sink(on_event: EventSink | None, lineage: str,
          lineages: Mapping[str, str]) -> EventSink | None:
    """``on_event`` with each event stamped with its call's lineage (read when it comes)."""
    if on_event is None:
        return None
    forward = on_event

    def sink(event: Event) -> None:
        forward(_stamped(event, lineages.get(str(getattr(event, "node_id", "")), lineage)))

    return sink


class CallStream:
    """One turn's tool calls, each started as soon as the model has finished writing it.

    :meth:`add` takes the calls in the order the model writes them; each is checked as in
    :func:`execute_calls` (arguments that are not JSON, an unknown tool, ``prepare``'s
    refusals become error records at once) and the others join one open run, made by
    ``open_run`` on the first call that can run, where they start at once under the same
    limits, conflict checks, approvals and journal as a closed plan's calls. :meth:`finish`
    adds the calls not seen yet, closes the run, waits, and returns a record per call in the
    order asked. Names (``tool#n``) are given in that order too, so a resumed turn that adds
    the same calls again finds each one's journaled outcome.

    A position already taken is never taken again: a model stream retried after a failure
    repeats the calls it had sent, and those already started stand (see :meth:`merged`).
    The other arguments are those of :func:`execute_calls`.
    """

    # slots: a swarm holds one per agent whose turn is in flight
    __slots__ = ("_by_name", "_counts", "_error_format", "_finished", "_ids", "_lineage",
                 "_lineages", "_on_reject", "_open_run", "_planned", "_prepare", "_records", "_run",
                 "_shared", "_sink", "_stopped", "_turn", "taken")

    def __init__(self, tools: Iterable[Tool[..., Any]] | Mapping[str, Tool[..., Any]], *,
                 open_run: Opener, lineage: str = "", counts: dict[str, int] | None = None,
                 prepare: Preparer | None = None, on_event: EventSink | None = None,
                 on_reject: Callable[[CallRecord], None] | None = None,
                 error_format: ToolErrorFormat | None = None,
                 shared: SharedRun | None = None, turn: int = 0) -> None:
        self._by_name = tools if isinstance(tools, dict) else tool_map(tools)  # only read
        self._counts = counts if counts is not None else {}  # per tool, across turns
        self._open_run = open_run
        self._lineage = lineage
        self._prepare = prepare
        self._on_reject = on_reject
        self._error_format = error_format
        self._shared = shared
        self._turn = turn
        self._lineages: dict[str, str] = shared.lineages if shared is not None else {}
        self._sink = None if shared is not None else _sink(on_event, lineage, self._lineages)
        self._planned: dict[str, int] = {}
        self._records: list[CallRecord | None] = []
        self._run: OpenRun | None = None
        self._finished = False
        #: why the calls of this turn are cancelled (a shared run: each one added later too)
        self._stopped: str | None = None
        #: The calls taken so far, by position.
        self.taken: list[ToolCall] = []
        self._ids: set[str] = set()  # theirs (each call's own: see distinct_call)

    def restart(self, turn: int) -> None:
        """Take the calls of turn ``turn`` of a shared run, as a stream made for it would.

        The last turn's calls are forgotten (:meth:`finish` handed their records out): an
        agent's turns reuse one stream rather than make one, and its containers, per turn.
        """
        self._turn = turn
        self._planned.clear()
        self._records.clear()
        self.taken.clear()
        self._ids.clear()
        self._run = None
        self._finished = False
        self._stopped = None

    @property
    def pending(self) -> bool:
        """Whether calls may be running that :meth:`finish` has not waited for yet."""
        return self._run is not None and not self._finished

    def add(self, index: int, call: ToolCall) -> None:
        """Take the call at position ``index`` and start it (or record why it cannot run).

        A position already taken is ignored (a retried stream sends its calls again); one
        past the next free position is left for :meth:`finish`, which takes the calls in
        order, so names and fan-out counts never depend on the order events arrive in.
        """
        if self._finished or index != len(self.taken):
            return
        ids = self._ids
        sent = _sent_id(call.id)  # as distinct_call compares it
        if sent in ids or not sent:
            call = distinct_call(call, index, ids, self._lineage)
        else:
            ids.add(sent)
        self.taken.append(call)
        self._records.append(None)
        name = call.name
        found = self._by_name.get(name)
        if found:  # named tool#n, as _next_name does (inline: every call's case)
            counts = self._counts
            n = counts[name] = counts.get(name, 0) + 1
            node_name = f"{name}#{n}"
        else:
            node_name = unknown_part(name)
        where = f"{self._lineage}/{node_name}" if self._lineage else node_name
        checked = _check(index, call, found, self._by_name, where, self._prepare)
        if isinstance(checked, CallRecord):
            if self._turn:
                checked = replace(checked, turn=self._turn)
            self._records[index] = checked
            if self._on_reject is not None:
                self._on_reject(checked)
            return
        tool, args = checked
        node_id = node_name  # the last part of ``where``: a tool's name never holds a "/"
        self._lineages[node_id] = where
        if self._run is None:
            self._run = self._open_run(self._sink)
        # checked by _check: validated once (a transforming validator must not run twice)
        self._run.add_owned(tool, args, node_id=node_id, validated=tool is found)
        self._planned[node_id] = index
        if self._shared is not None:
            stop = self._stopped if self._stopped is not None else self._shared.stop_reason()
            if stop is not None:  # the last moment before it starts: it gets its outcome
                self._stopped = stop
                self._run.cancel(node_id, reason=stop)

    def merged(self, calls: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
        """The reply's ``calls`` with the calls already taken in their positions.

        After a retried stream, the reply the conversation keeps holds the calls that did
        start (with their ids), then the retried reply's calls past them: the model then
        reads the result of every call that ran, and a resumed turn replays exactly these.
        """
        taken = self.taken
        if len(calls) == len(taken) and all(map(operator.is_, calls, taken)):
            return tuple(calls)  # every call started as the reply has it: most replies
        changed = [i for i, c in enumerate(calls[:len(self.taken)])
                   if (c.name, c.arguments) != (self.taken[i].name, self.taken[i].arguments)]
        if changed:
            log.warning("%s: the retried model stream asked for other calls at position(s) %s "
                        "than those already started; the started calls stand",
                        self._lineage or "agent", changed)
        return (*self.taken, *calls[len(self.taken):])

    async def finish(self, calls: Sequence[ToolCall],
                     on_records: Callable[[list[CallRecord]], None] | None = None,
                     *, cut_off: str = "") -> list[CallRecord]:
        """Take the rest of ``calls``, wait for every call; return the records in order.

        ``calls`` is the whole reply's list (see :meth:`merged`). If the caller is cancelled
        meanwhile, the calls are cancelled, their outcomes recorded and passed to
        ``on_records``, and ``CancelledError`` is raised. ``cut_off``: the stop reason of a
        reply cut off at its output cap (see :func:`note_cut_call`).
        """
        for index in range(len(self.taken), len(calls)):
            self.add(index, calls[index])
        self._finished = True  # from here on, ``taken`` and ``_planned`` stay as they are
        cancelled = False
        try:
            if self._run is not None and self._shared is not None:  # this turn's nodes only
                # waited for here, not in a coroutine of its own: a swarm holds the frames
                # of each agent's tool phase for as long as its calls run
                handle = self._run.handle
                outcomes: dict[str, Outcome] = {}
                # most nodes have their outcome by the time the turn's first call ended:
                # read at once, no future made to hold it
                ended_now = handle._ended_outcomes()
                for node_id in self._planned:
                    if ended_now is not None and (ended := ended_now(node_id)) is not None:
                        outcomes[node_id] = ended
                        continue
                    while True:
                        # the node's own future, no shield: it is this waiter's alone (a
                        # cancelled one is asked for again)
                        future = handle.outcome_of(node_id)
                        try:
                            outcomes[node_id] = (future.result() if future.done()
                                                 else await future)
                            break
                        except asyncio.CancelledError:  # each node still ends with an outcome
                            if not cancelled:
                                handle.cancel(list(self._planned), reason=_CANCELLED_WITH_AGENT)
                            cancelled = True
                _fill_outcomes(outcomes, handle.started_at_epoch, self._planned,
                               self._lineages, self.taken, self._records, self._turn)
                _raise_if_stopped(handle)
            elif self._run is not None:
                self._run.close()
                result, cancelled = await _settled(self._run.handle)
                _fill(result, self._planned, self._lineages, self.taken, self._records)
            if cancelled:
                raise asyncio.CancelledError
        finally:
            if cut_off:
                note_cut_call(self._records, cut_off)
            if self._error_format is not None:
                _reword(self._records, self._error_format)
            records = [r for r in self._records if r is not None]
            if on_records is not None:
                on_records(records)
        return records

    async def abandon(self, reason: str,
                      on_records: Callable[[list[CallRecord]], None] | None = None) -> None:
        """Cancel the calls started so far and wait until each has its outcome.

        For a turn that ends without its tool phase (the model failed after some calls had
        started, the budget ran out): nothing keeps running unseen.
        """
        if self._run is not None and not self._finished:
            self.cancel(reason=reason)
        if not self._finished:
            await self.finish(self.taken, on_records)


    def cancel(self, node: None = None, *, reason: str, timed_out: bool = False) -> None:
        """Cancel this turn's calls: those started so far, and (a shared run) any added later.

        A run of the turn's own is cancelled as a whole. ``timed_out``: see
        :meth:`shoal.RunHandle.cancel` (calls added later never started: ``cancelled``).
        """
        del node
        if self._shared is None:
            if self._run is not None:
                self._run.cancel(reason=reason, timed_out=timed_out)
            return
        if self._stopped is None:
            self._stopped = reason
        if self._run is not None and self._planned:
            self._run.cancel(list(self._planned), reason=reason, timed_out=timed_out)


class SharedRun(Protocol):
    """An agent's run of all its steps, as the tool phases of its turns share it.

    ``lineages`` maps each call's node id to its lineage (for its events); ``stop_reason``
    says why the agent must stop (a budget breach, a cancellation), checked as each call is
    added: a call added after that is cancelled at once, with an outcome saying why.
    """

    lineages: dict[str, str]

    def stop_reason(self) -> str | None:
        """Why the calls must not start, or ``None``."""


async def settle(handle: RunHandle) -> RunResult:
    """Wait for a run and return its result.

    If the waiter is cancelled meanwhile, the run is cancelled, every outcome is recorded, and
    then ``CancelledError`` is raised.
    """
    result, cancelled = await _settled(handle)
    if cancelled:
        raise asyncio.CancelledError
    return result


def _raise_if_stopped(handle: RunHandle) -> None:
    """Raise the error that stopped a shared run (its journal failed, say).

    Called once the turn's calls have their outcomes: the agent must not ask its model again
    as if nothing had happened.
    """
    error = handle.stopped_by()
    if error is not None:
        raise error


T = TypeVar("T")
_CANCELLED_WITH_AGENT = "the agent running these calls was cancelled"


async def _settled(handle: RunHandle) -> tuple[RunResult, bool]:
    """The run's result once it ended, and whether the waiter was cancelled meanwhile.

    If the waiter is cancelled (maybe again), the run's calls are cancelled through the
    runtime, so each one still ends with a recorded outcome; they are collected, then the
    cancellation is the caller's to raise.
    """
    return await _unshielded(handle.as_future(),  # not ensure_future: one task less
                             partial(handle.cancel, reason=_CANCELLED_WITH_AGENT))


async def _node_settled(handle: RunHandle, node_id: str) -> tuple[Outcome, bool]:
    """The outcome of a node of a run that goes on, and whether the waiter was cancelled.

    As :func:`_settled` for a whole run: if the waiter is cancelled meanwhile, the node is
    cancelled through the runtime, and its outcome is still collected.
    """
    return await _unshielded(handle.outcome_of(node_id),
                             partial(handle.cancel, node_id, reason=_CANCELLED_WITH_AGENT))


async def _unshielded(waiting: asyncio.Future[T], stop: Callable[[], object],
                      ) -> tuple[T, bool]:
    """``waiting``'s result, calling ``stop()`` once if the waiter is cancelled meanwhile.

    What ``asyncio.shield`` does, with one future and one callback instead of its future, two
    closures and their cells: a swarm has a step of each agent waiting here.
    """
    cancelled = False
    loop = asyncio.get_running_loop()
    while not waiting.done():
        waiter: asyncio.Future[None] = loop.create_future()
        wake = partial(_wake, waiter)
        waiting.add_done_callback(wake)
        try:
            await waiter
        except asyncio.CancelledError:
            waiting.remove_done_callback(wake)
            if not cancelled:
                stop()
            cancelled = True
    return waiting.result(), cancelled


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _fill(result: RunResult, planned: Mapping[str, int], lineages: Mapping[str, str],
          calls: Sequence[ToolCall], records: list[CallRecord | None]) -> None:
    _fill_outcomes(result.outcomes, result.started_at_epoch, planned, lineages, calls, records)


def _fill_outcomes(outcomes: Mapping[str, Outcome], epoch: float, planned: Mapping[str, int],
                   lineages: Mapping[str, str], calls: Sequence[ToolCall],
                   records: list[CallRecord | None], turn: int = 0) -> None:
    for node_id, index in planned.items():
        call = calls[index]
        outcome = outcomes[node_id]
        value = outcome.value
        if (type(value) is str and outcome.status == "ok" and len(value) <= MAX_RESULT_CHARS
                and outcome.edited_args is None):  # most calls: the text as it is
            text, is_error = value, False
        else:
            text, is_error = result_text(outcome, call.name)
        message = ToolResultMessage(call.id, call.name, text, is_error)
        records[index] = CallRecord(call, lineages[node_id], outcome.status, message, outcome,
                                    epoch, turn)


def _stamped(event: Event, lineage: str) -> Event:
    from dataclasses import replace

    return replace(event, lineage=lineage)
