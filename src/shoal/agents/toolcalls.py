"""One model turn's tool calls, run as one plan through the runtime.

:func:`execute_calls` takes the calls a model asked for, in its order, and returns one
:class:`CallRecord` per call, in the same order, each with the message that goes back to the
model. Calls that cannot run (arguments that are not JSON, an unknown tool, arguments that
do not fit the schema, a refusal such as a budget limit) never reach the runtime: they become
error results the model can read and correct. The rest form one plan, so the runtime's
dependency analysis (resource conflicts between the calls) and limits apply, and every call
whose inputs are ready runs at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.events import Event, EventSink
from shoal.exceptions import ToolArgumentError
from shoal.models.base import ToolCall, ToolResultMessage
from shoal.outcome import Outcome, RunResult, jsonable
from shoal.plan import Plan
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.runtime import RunHandle, Runtime

__all__ = ["CallRecord", "Preparer", "Starter", "execute_calls", "result_text", "settle",
           "tool_map"]

#: Called for each well-formed call before it joins the plan, with the call's position in
#: the turn, the call, its tool and its lineage; returns the tool to run (possibly bound to
#: per-call state, as subagents are) or an exception that refuses the call.
Preparer = Callable[[int, ToolCall, Tool[..., Any], str], "Tool[..., Any] | BaseException"]

#: Starts a turn's plan with the given event sink and returns its handle.
Starter = Callable[[Plan, "EventSink | None"], "RunHandle"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One tool call a model asked for and how it ended.

    ``status`` is the outcome's status, or ``rejected`` for a call that never ran (bad JSON,
    unknown tool, arguments that do not fit, a budget refusal); ``message`` is what the model
    receives.
    """

    call: ToolCall
    lineage: str
    status: str
    message: ToolResultMessage
    outcome: Outcome | None = None

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


def result_text(outcome: Outcome) -> tuple[str, bool]:
    """What the model reads for an outcome, and whether it is an error."""
    if outcome.status == "ok":
        value = outcome.value
        return (value if isinstance(value, str) else json.dumps(jsonable(value))), False
    if outcome.status == "failed" and outcome.error is not None:
        return f"Error: {outcome.error.type}: {outcome.error.message}", True
    if outcome.status == "denied":
        return f"Denied: {outcome.reason or 'a person declined this call'}", True
    detail = outcome.reason or (str(outcome.error) if outcome.error else "")
    return f"Error: the call ended {outcome.status}" + (f": {detail}" if detail else ""), True


class _Counter:
    """Names calls ``tool#n``, counting per tool name (shared across an agent's turns)."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = counts if counts is not None else {}

    def next(self, name: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return f"{name}#{self.counts[name]}"


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
        start: starts the plan instead of ``runtime.start`` (the agent layer uses it to give
            each tool phase its own journaled run, and to continue it on resume).
        on_records: receives the records before they are returned, and also when the caller
            is cancelled meanwhile: the calls are then cancelled, their outcomes collected and
            passed here, and ``CancelledError`` is raised.
        run_id: the tool phase's run id.
    """
    by_name = tool_map(tools)
    counter = _Counter(counts)
    records: list[CallRecord | None] = [None] * len(calls)
    plan = Plan(name=lineage)
    planned: dict[str, int] = {}  # node id -> position in calls
    lineages: dict[str, str] = {}
    for index, call in enumerate(calls):
        found = by_name.get(call.name)
        where = _child(lineage, counter.next(call.name) if found else f"{call.name}?")
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
        if on_records is not None:
            on_records([r for r in records if r is not None])
    return [r for r in records if r is not None]


def _child(lineage: str, name: str) -> str:
    return f"{lineage}/{name}" if lineage else name


def _check(
    index: int, call: ToolCall, found: Tool[..., Any] | None, by_name: Mapping[str, Tool[..., Any]],
    where: str, prepare: Preparer | None,
) -> CallRecord | tuple[Tool[..., Any], dict[str, Any]]:
    """The tool and validated arguments of a call, or the record of why it cannot run."""
    if found is None:
        known = ", ".join(sorted(by_name)) or "none"
        return _rejected(call, where, f"Error: there is no tool named {call.name!r}; "
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
    message = ToolResultMessage(call.id, call.name, text, is_error=True)
    return CallRecord(call, where, "rejected", message)


async def _run_plan(
    plan: Plan, runtime: Runtime | None, lineage: str, lineages: Mapping[str, str],
    on_event: EventSink | None,
    start: Starter | None, run_id: str | None, calls: Sequence[ToolCall],
    planned: Mapping[str, int], records: list[CallRecord | None],
) -> None:
    from shoal.runtime import Runtime  # the runtime imports executors: load on use

    def lineage_of(event: Event) -> str:
        return lineages.get(str(getattr(event, "node_id", "")), lineage)

    sink: EventSink | None = None
    if on_event is not None:
        forward = on_event

        def sink(event: Event) -> None:
            forward(_stamped(event, lineage_of(event)))

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


async def settle(handle: RunHandle) -> RunResult:
    """Wait for a run and return its result.

    If the waiter is cancelled meanwhile, the run is cancelled, every outcome is recorded, and
    then ``CancelledError`` is raised.
    """
    result, cancelled = await _settled(handle)
    if cancelled:
        raise asyncio.CancelledError
    return result


async def _settled(handle: RunHandle) -> tuple[RunResult, bool]:
    waiting = asyncio.ensure_future(handle)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(waiting), cancelled
        except asyncio.CancelledError:
            # Our caller was cancelled (maybe again): cancel the calls through the runtime, so
            # each one still ends with a recorded outcome, collect them, then let it go on.
            if not cancelled:
                handle.cancel(reason="the agent running these calls was cancelled")
            cancelled = True


def _fill(result: RunResult, planned: Mapping[str, int], lineages: Mapping[str, str],
          calls: Sequence[ToolCall], records: list[CallRecord | None]) -> None:
    for node_id, index in planned.items():
        outcome = result[node_id]
        text, is_error = result_text(outcome)
        call = calls[index]
        message = ToolResultMessage(call.id, call.name, text, is_error=is_error)
        records[index] = CallRecord(call, lineages[node_id], outcome.status, message, outcome)


def _stamped(event: Event, lineage: str) -> Event:
    from dataclasses import replace

    return replace(event, lineage=lineage)
