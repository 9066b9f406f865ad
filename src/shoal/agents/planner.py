"""The LLMCompiler-style planner: ``Agent(..., mode="plan", max_replans=2)``.

Each round has two model turns:

1. **Plan.** The model is shown the tools (subagents among them, as tools taking a ``task``)
   and writes a plan in the LLMCompiler text format (see :mod:`shoal.plantext`)::

       Thought: two searches, then a summary of both.
       1. search("ray actors")
       2. search(query="asyncio")
       3. summarize(parts=[$1, $2])
       4. join()

   The reply is read as it streams. Each call joins the agent's plan run (one open run, see
   :mod:`shoal.openrun`) the moment its line is complete, with ``$N`` as a ref to call N, so
   it starts as soon as its inputs are done, while the model still writes the rest. Calls
   run under the same limits, conflict analysis, approvals, budgets and journal as any
   agent's calls. A line that cannot run (an unknown tool, arguments that do not fit, a ref
   to a call not written above, a number used twice) becomes a ``rejected``
   :class:`~shoal.agents.toolcalls.CallRecord`: the joiner reads why. Text after
   ``join()`` is ignored (the stream is still read to its end, so its usage counts).
2. **Join.** Once the plan's calls have ended, the model reads the task, the plan and each
   call's result, and answers ``Thought: ...`` then ``Action: Finish(<answer>)`` or
   ``Action: Replan(<why>)``. A reply without an ``Action:`` line is the answer as a whole.

A replan starts the next round: the planner sees its earlier plans, their results and the
joiner's reason, and numbers its new calls on from the last, so ``$N`` can use any earlier
result: finished calls never run again. After ``max_replans`` new plans the joiner is told it
must answer; asking for another ends the run with
:class:`~shoal.exceptions.MaxReplansExceeded`. An agent's ``output_type`` applies to the
answer inside ``Finish(...)``, checked and asked again as in tools mode.

A model stream retried after a failure is read again from its start: a call already started
under the same number, tool and arguments stands (it is not added again), and one that
changed is rejected, so no call ever runs twice. Every model turn is journaled as in tools
mode, and so is the plan run (``{run id}/{lineage}/plan``): a resumed planner replays its
finished turns and calls and runs only the rest.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shoal.agents.toolcalls import (
    MAX_RESULT_CHARS,
    CallRecord,
    _Counter,
    _reword,
    _settled,
    _sink,
    _unsendable,
    bounded,
    result_text,
)
from shoal.events import Event, ModelRetrying, PlanCallParsed
from shoal.exceptions import (
    MaxReplansExceeded,
    MaxTurnsExceeded,
    ModelError,
    OutputValidationError,
    PlanError,
    PlanProblem,
    ShoalError,
)
from shoal.models.base import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    TextDelta,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)
from shoal.plantext import ParsedCall, PlanTextParser

if TYPE_CHECKING:
    from shoal.agents.run import AgentRun
    from shoal.openrun import OpenRun
    from shoal.tools import Tool

__all__ = ["Planner", "join_action", "plan_prompt", "tool_signature"]

log = logging.getLogger("shoal")

#: The most characters of observations one joiner or replanning request holds.
MAX_OBSERVATION_CHARS = 4 * MAX_RESULT_CHARS

_FENCE = re.compile(r"\s*```")
_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(Finish|Replan)[ \t]*\(", re.IGNORECASE | re.M)
_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
               "array": "list", "object": "dict", "null": "None"}


# ---- prompts ------------------------------------------------------------------------------


def tool_signature(spec: ToolSpec) -> str:
    """``name(a: str, b: int = 3)``: a tool's parameters, from its JSON schema."""
    props = spec.parameters.get("properties", {})
    required = set(spec.parameters.get("required", ()))
    params = []
    for name, prop in props.items():
        text = f"{name}: {_type_name(prop)}"
        if name not in required and "default" in prop:
            text += f" = {prop['default']!r}"
        elif name not in required:
            text += " = None"
        params.append(text)
    return f"{spec.name}({', '.join(params)})"


def _type_name(prop: Mapping[str, Any]) -> str:
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):
        return " | ".join(_type_name(o) for o in options if isinstance(o, Mapping)) or "any"
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(_JSON_TYPES.get(str(k), str(k)) for k in kind)
    name = _JSON_TYPES.get(str(kind), "any")
    items = prop.get("items")
    if name == "list" and isinstance(items, Mapping) and items:
        return f"list[{_type_name(items)}]"
    return name


def _end_line(tools: Sequence[ToolSpec]) -> str:
    if any(spec.name == "join" for spec in tools):  # then join() is an ordinary call
        return "<END_OF_PLAN>"
    return "N. join()"


def plan_prompt(tools: Sequence[ToolSpec], *, first_id: int = 1) -> str:
    """The planner's instructions (LLMCompiler's format) over ``tools``."""
    listed = "\n".join(f"{i}. {tool_signature(spec)}: {_about(spec.description)}"
                       for i, spec in enumerate(tools, 1))
    end = _end_line(tools)
    ending = ("End the plan with the line N. join(), N being the next number: it hands "
              "the results to a joiner, who answers the task or asks for a new plan."
              if end != "<END_OF_PLAN>" else
              "End the plan with the line <END_OF_PLAN>.")
    return f"""Write a plan of tool calls that solves the task, so that as many calls as \
possible can run at the same time.

The tools:
{listed}

Write the plan as numbered lines, one call per line, e.g.
{first_id}. tool_name("a literal", name=2)
{first_id + 1}. other_tool(data=${first_id})
Rules:
- Number the calls {first_id}, {first_id + 1}, {first_id + 2} ... in order; give each call \
its own number.
- An argument is a Python literal (a string in quotes, a number, True, False, None, a list \
or a dict of these) or the result of a call above it, written $N (N being its number), or a \
part of that result: $N.field, $N[0].
- Calls that do not use each other's results run in parallel: only make a call wait for \
another when it needs its result.
- A line "Thought: ..." before a call may say why; write nothing else between the calls.
- Use only the tools above; never invent a tool or an argument.
- {ending} Write nothing after it."""


def _about(description: str) -> str:
    text = " ".join(description.split())
    return text[:500] + ("..." if len(text) > 500 else "") if text else "(no description)"


def _replan_note(first_id: int) -> str:
    return (f"Write a new plan for what is still missing. The calls above that succeeded "
            f"will not run again: use their results as $N. Number the new calls from "
            f"{first_id} on.")


def _joiner_prompt(last: bool, answer_format: str) -> str:
    replan = ("Replanning is not allowed any more: answer with Action: Finish(...), from what "
              "the results give (say what is missing if you must)." if last else
              "Ask for a new plan only if the results cannot answer the task, e.g. a call "
              "failed; the new plan can reuse the results that succeeded.")
    return f"""A plan of tool calls was run for the task below. Read the task, the plan and \
each call's result, then reply in this form:
Thought: <what the results show>
Action: Finish(<the final answer to the task>)
or, when the results are not enough to answer:
Thought: <what is missing or went wrong>
Action: Replan(<what a new plan must do differently>)
{replan}{answer_format}"""


def join_action(text: str) -> tuple[str, str]:
    """Read a joiner's reply: ``("finish", answer)`` or ``("replan", reason)``.

    The last ``Action: Finish(...)`` or ``Action: Replan(...)`` line counts (its text may run
    over several lines, up to the last ``)``); a reply without one is the answer as a whole.
    """
    found = list(_ACTION.finditer(text))
    if not found:
        return "finish", text.strip()
    action = found[-1]
    body = text[action.end():]
    close = body.rfind(")")
    body = (body[:close] if close >= 0 else body).strip()
    return action[1].lower(), _unquoted(body)


def _unquoted(body: str) -> str:
    """``Finish("text")``: the text, when the answer is one quoted string literal."""
    if len(body) >= 2 and body[0] == body[-1] and body[0] in "'\"":
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return body
        if isinstance(value, str):
            return value
    return body


# ---- one round's calls ------------------------------------------------------------------------


@dataclass(slots=True)
class _Round:
    """One plan and its calls: node ids (started or reused) and rejections, in plan order."""

    number: int
    entries: list[str | CallRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines of the plan that are not calls
    text: str = ""
    records: list[CallRecord] | None = None  # once every call of the round has ended

    def restart(self) -> None:
        """A retried stream is read again: keep only the calls that started."""
        self.entries = [e for e in self.entries if isinstance(e, str)]
        self.notes.clear()

    @property
    def node_ids(self) -> list[str]:
        """The round's calls that run (or ran) in the plan run."""
        return [e for e in self.entries if isinstance(e, str)]


class _PlanCalls:
    """The agent's plan run: takes each parsed call, starts it or records why it cannot run."""

    def __init__(self, agent_run: AgentRun) -> None:
        self.agent_run = agent_run
        self.tools = agent_run.agent.tools_by_name
        self.counter = _Counter(agent_run._counts)
        self.lineages: dict[str, str] = {}  # node id -> lineage of its call
        self.calls: dict[str, ToolCall] = {}  # node id -> the call as recorded
        self.written: dict[str, str] = {}  # node id -> the call's text, for calls started
        self.numbers: set[str] = set()  # every number a plan has used, started or not
        self.reported: set[str] = set()  # node ids whose records are in the agent's calls
        ctx = agent_run.ctx
        sink = _sink(ctx.emit if ctx.observed else None, agent_run.lineage, self.lineages)
        self.run: OpenRun = agent_run._open_step("plan", sink)
        stop = ctx.stop_reason(agent_run.lineage)
        if stop is not None:
            self.run.cancel(reason=stop)

    @property
    def next_id(self) -> int:
        """The number the next plan's first call gets."""
        numbers = [int(n) for n in self.numbers if n.isdigit() and len(n) < 12]
        return max(numbers, default=0) + 1

    def take(self, call: ParsedCall, round_: _Round) -> None:
        """Start ``call`` in the plan run, or record in ``round_`` why it cannot run."""
        text = _call_text(call)
        self.numbers.add(call.id)
        known = self.written.get(call.id)
        if known is not None:
            if known == text:  # a retried stream, or the call of an earlier plan: it stands
                if call.id not in round_.entries:
                    round_.entries.append(call.id)
            else:
                self._reject(round_, call, f"line {call.line}: step {call.id} is already "
                             f"taken by {known[:200]}, which stands; give each call its own "
                             f"number (the next free one is {self.next_id})")
            return
        self._parsed(call)
        try:
            tool, args = call.bind(self.tools)
        except PlanError as exc:
            self._reject(round_, call, _problems(exc.problems))
            return
        try:
            problems = self.run.problems(tool, args, node_id=call.id)
        except Exception as exc:  # a literal no check foresaw: refused, never the agent's end
            log.exception("%s: checking plan step %s failed", self.agent_run.lineage, call.id)
            problems = [PlanProblem("bad_arguments", f"the arguments cannot be checked: "
                                    f"{type(exc).__name__}: {exc}", call.id)]
        if problems:
            self._reject(round_, call, _problems(problems), tool.name, args)
            return
        self._start(call, tool, args, text, round_)

    def _start(self, call: ParsedCall, tool: Tool[..., Any], args: dict[str, Any], text: str,
               round_: _Round) -> None:
        agent_run = self.agent_run
        recorded = ToolCall(call.id, tool.name, _arguments(args))
        where = _child(agent_run.lineage, self.counter.next(tool.name))
        index = agent_run._started_this_turn
        prepared = agent_run._prepare(index, recorded, tool, where)
        if isinstance(prepared, BaseException):
            self._reject(round_, call, str(prepared), tool.name, args, where)
            return
        self.lineages[call.id] = where
        try:
            self.run.add(prepared, args, node_id=call.id)
        except (ShoalError, RuntimeError) as exc:  # a resumed journal knows another call
            del self.lineages[call.id]
            self._reject(round_, call, str(exc), tool.name, args, where)
            return
        self.written[call.id] = text
        self.calls[call.id] = recorded
        round_.entries.append(call.id)

    def _parsed(self, call: ParsedCall) -> None:
        ctx, agent_run = self.agent_run.ctx, self.agent_run
        if ctx.observed:
            ctx.emit(PlanCallParsed(run_id=self.run.run_id, time=self.run.handle.now(),
                                    lineage=agent_run.lineage, agent=agent_run.agent.name,
                                    node_id=call.id, tool=call.tool))

    def _reject(self, round_: _Round, call: ParsedCall, why: str, tool: str | None = None,
                args: Mapping[str, Any] | None = None, where: str | None = None) -> None:
        name = tool or call.tool
        arguments = _arguments(args if args is not None else _raw_args(call))
        record = _rejected(ToolCall(call.id, name, arguments),
                           where or _child(self.agent_run.lineage, f"{name}?"), why)
        round_.entries.append(record)
        self.agent_run._rejected(record)

    def note(self, problem: PlanProblem, round_: _Round) -> None:
        """Record a problem of the plan text: a rejected call, or a line that is no call."""
        if not problem.node:
            round_.notes.append(problem.message)
            return
        if problem.node in self.written:  # a number taken already: the line stands apart
            problem = replace(problem, message=f"{problem.message} (step {problem.node} is "
                              "taken, give each call its own number)")
        record = _rejected(ToolCall(problem.node, "", "{}"),
                           _child(self.agent_run.lineage, "plan?"), problem.message)
        self.numbers.add(problem.node)
        round_.entries.append(record)
        self.agent_run._rejected(record)

    async def wait(self, round_: _Round) -> None:
        """Wait for the round's calls to end; record them (in plan order) on the result."""
        if round_.records is None:
            outcomes = {node_id: await self.run.wait(node_id) for node_id in round_.node_ids}
            self._settle(round_, outcomes)

    def _settle(self, round_: _Round, outcomes: Mapping[str, Any]) -> None:
        round_.records = self._records(round_, outcomes)
        # a call an earlier plan started and this one lists again is in the calls once
        fresh = [r for r in round_.records
                 if r.outcome is None or r.call.id not in self.reported]
        self.reported.update(r.call.id for r in fresh if r.outcome is not None)
        self.agent_run.result.calls.extend(fresh)

    def _records(self, round_: _Round, outcomes: Mapping[str, Any]) -> list[CallRecord]:
        records: list[CallRecord | None] = []
        for entry in round_.entries:
            if isinstance(entry, CallRecord):
                records.append(entry)
                continue
            call = self.calls[entry]
            outcome = outcomes.get(entry)
            if outcome is None:  # the run ended before it (cannot happen once it was added)
                records.append(_rejected(call, self.lineages[entry], "the call never ended"))
                continue
            outcome = _unsendable(outcome, call.name)
            text, is_error = result_text(outcome, call.name)
            message = ToolResultMessage(call.id, call.name, text, is_error=is_error)
            records.append(CallRecord(call, self.lineages[entry], outcome.status, message,
                                      outcome, self.run.handle.started_at_epoch))
        error_format = self.agent_run.agent.tool_error_format
        if error_format is not None:
            _reword(records, error_format)
        return [r for r in records if r is not None]

    async def close(self, round_: _Round | None, reason: str | None) -> None:
        """End the plan run (cancelling what still runs when ``reason`` is given).

        The records of ``round_``, if it had not ended, are completed from the outcomes.
        """
        if reason is not None:
            self.run.cancel(reason=reason)
        self.run.close()
        try:
            result, cancelled = await _settled(self.run.handle)
        finally:
            self.agent_run._untrack_phase()
        if round_ is not None and round_.records is None:
            self._settle(round_, {n: result.outcomes[n] for n in round_.node_ids
                                  if n in result.outcomes})
        if cancelled and reason is None:  # cancelled while the last calls were collected
            raise asyncio.CancelledError


def _child(lineage: str, name: str) -> str:
    return f"{lineage}/{name}" if lineage else name


def _problems(problems: Sequence[PlanProblem]) -> str:
    return "; ".join(p.message for p in problems) or "the call cannot run"


def _rejected(call: ToolCall, where: str, why: str) -> CallRecord:
    message = ToolResultMessage(call.id, call.name, bounded(f"Error: {why}"), is_error=True)
    return CallRecord(call, where, "rejected", message)


def _raw_args(call: ParsedCall) -> dict[str, Any]:
    return {f"_positional_{i}": v for i, v in enumerate(call.args)} | call.kwargs


def _arguments(args: Mapping[str, Any]) -> str:
    """The arguments as JSON, refs written ``$N`` as in the plan."""
    return _json(dict(args))


def _call_text(call: ParsedCall) -> str:
    """The call as written, normalized: equal calls give equal text."""
    return f"{call.tool}({_json([list(call.args), call.kwargs])})"


def _json(value: Any) -> str:
    """``value`` as JSON where it can be, else its repr (a plan's literals can be neither).

    A literal such as ``{(1, 2): 3}`` has keys JSON cannot hold; what is written here is only
    shown and compared, never parsed back.
    """
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


# ---- the loop ---------------------------------------------------------------------------------


class Planner:
    """Runs one planner agent: plan, run the calls as they are written, join, maybe replan."""

    def __init__(self, agent_run: AgentRun) -> None:
        self.agent_run = agent_run
        self.agent = agent_run.agent
        self.ctx = agent_run.ctx
        self.lineage = agent_run.lineage
        self.rounds: list[_Round] = []

    async def run(self) -> Any:
        """Plan and join until the joiner answers; return the answer (see the module doc)."""
        result = self.agent_run.result
        result.messages.append(UserMessage(result.prompt))
        calls = _PlanCalls(self.agent_run)
        try:
            answer = await self._rounds(calls)
        except BaseException as exc:
            current = self.rounds[-1] if self.rounds else None
            await calls.close(current, _why_stopped(exc))
            raise
        await calls.close(None, None)
        return answer

    async def _rounds(self, calls: _PlanCalls) -> Any:
        agent, ctx = self.agent, self.ctx
        planning: list[Message] = [UserMessage(self.agent_run.result.prompt)]
        while True:
            ctx.check(self.lineage)
            round_ = _Round(len(self.rounds) + 1)
            self.rounds.append(round_)
            first_id = calls.next_id
            await self._plan(calls, round_, planning, first_id)
            await calls.wait(round_)
            ctx.check(self.lineage)
            last = len(self.rounds) > agent.max_replans
            action, text = await self._join(last)
            if action == "finish":
                return text
            if last:
                raise MaxReplansExceeded(
                    f"agent {self.lineage}'s joiner asked for a new plan after "
                    f"{agent.max_replans} replan(s): {text[:300]}; raise max_replans "
                    f"(now {agent.max_replans}) or give the planner better tools")
            said = (f"{_observations([round_])}\n\nThe joiner asked for a new plan: {text}"
                    f"\n\n{_replan_note(calls.next_id)}")
            # providers refuse an empty assistant message: a plan of nothing says so
            planning += [AssistantMessage(_sendable(round_.text) or "(no plan)"),
                         UserMessage(_sendable(said))]

    def _check_turns(self) -> None:
        agent = self.agent
        if self.agent_run.result.turns >= agent.max_turns:
            raise MaxTurnsExceeded(f"agent {self.lineage} used all {agent.max_turns} turns "
                                   "without a final answer; raise max_turns or simplify")

    async def _plan(self, calls: _PlanCalls, round_: _Round, messages: list[Message],
                    first_id: int) -> None:
        agent, agent_run = self.agent, self.agent_run
        self._check_turns()
        agent_run.start_turn()
        agent_run._started_this_turn = 0  # fan_out counts each plan's calls
        instructions = f"{agent.instructions}\n\n{plan_prompt(agent.tool_specs, first_id=first_id)}"
        request = ModelRequest(
            instructions=instructions.strip(), messages=tuple(messages), tools=(),
            settings=agent.settings, lineage=self.lineage, plan_tools=agent.tool_specs)
        reader = _PlanReader(self, calls, round_)
        response = await agent_run.answer(request, read=reader.read, digest=_digest(request))
        if not reader.read_whole:  # replayed from the journal: its calls are added now
            reader.feed_all(response.text)
        round_.text = response.text
        agent_run.result.plans.append(response.text)
        agent_run.result.messages.append(AssistantMessage(response.text))
        self.ctx.check(self.lineage)

    async def _join(self, last: bool) -> tuple[str, Any]:
        agent, agent_run, ctx = self.agent, self.agent_run, self.ctx
        spec = agent.output_spec
        answer_format = ("" if spec is None else "\nThe answer inside Finish(...) must be only "
                         f"a JSON value that fits this JSON schema: {json.dumps(spec.schema)}")
        instructions = f"{agent.instructions}\n\n{_joiner_prompt(last, answer_format)}".strip()
        messages: list[Message] = [UserMessage(self._joiner_text())]
        retries = 0
        while True:
            self._check_turns()
            agent_run.start_turn()
            request = ModelRequest(instructions=instructions, messages=tuple(messages),
                                   settings=agent.settings, lineage=self.lineage)
            response = await agent_run.answer(request, digest=_digest(request))
            agent_run.result.messages.append(response.as_message())
            ctx.check(self.lineage, answered=True)
            action, text = join_action(response.text)
            if action == "replan":
                return action, text or "(no reason given)"
            try:
                if not text.strip():
                    raise ValueError("the answer was empty")
                return action, text if spec is None else spec.parse(text)
            except ValueError as exc:
                retries += 1
                if retries > agent.output_retries:
                    wanted = "an answer" if spec is None else repr(agent.output_type)
                    raise OutputValidationError(
                        f"agent {self.lineage}'s answer did not fit {wanted} after "
                        f"{agent.output_retries} retries: {exc}") from None
                again = ("Your answer was empty." if spec is None
                         else spec.retry_prompt(str(exc)))
                messages += [AssistantMessage(_sendable(response.text) or "(empty)"),
                             UserMessage(f"{again} Reply with Action: Finish(<the answer>).")]

    def _joiner_text(self) -> str:
        parts = [f"Task: {self.agent_run.result.prompt}"]
        for round_ in self.rounds:
            parts.append(f"Plan {round_.number}:\n{round_.text.strip() or '(empty)'}")
            parts.append(_observations([round_]))
        return _sendable("\n\n".join(parts))


class _PlanReader:
    """Reads one planner reply as it streams, handing each complete call to the plan run."""

    def __init__(self, planner: Planner, calls: _PlanCalls, round_: _Round) -> None:
        self.planner = planner
        self.calls = calls
        self.round = round_
        self.read_whole = False  # whether the reply was read here (not replayed)
        self._parser = PlanTextParser(calls.tools)
        self._line = ""  # text after the last newline, not fed yet
        self._problems = 0
        self._restarted = False

    async def read(self, request: ModelRequest) -> ModelResponse:
        """Stream the reply through the model's gate (its retries included)."""
        agent_run = self.planner.agent_run
        model = agent_run.model
        gate = agent_run.ctx.gates.for_model(model)
        streamed: list[str] = []
        response: ModelResponse | None = None

        def on_event(event: Event) -> None:
            if isinstance(event, ModelRetrying):  # the stream starts again from its first text
                self._restarted = True
            agent_run._model_event(event)

        async for event in gate.stream(model, request, on_event=on_event,
                                       retry_after_text=True):
            if self._restarted:
                self._restart()
                streamed.clear()
            if isinstance(event, TextDelta):
                streamed.append(event.text)
                self.feed(event.text)
                agent_run.text_streamed(event.text)
            elif isinstance(event, ResponseDone):
                response = event.response
        if response is None:
            raise ModelError(model.name, "the stream ended without a complete reply")
        text = "".join(streamed)
        if text != response.text:  # a stream that sent less text than its reply holds
            if response.text.startswith(text):
                self.feed(response.text[len(text):])
            else:
                self._restart()
                self.feed(response.text)
        self.close()
        self.read_whole = True
        return response

    def _restart(self) -> None:
        self._restarted = False
        self._parser = PlanTextParser(self.calls.tools)
        self._line = ""
        self._problems = 0
        self.round.restart()

    def feed(self, text: str) -> None:
        """Take streamed text; each complete line goes to the parser (code fences skipped)."""
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            if not _FENCE.match(line):
                self._take(self._parser.feed(line + "\n"))

    def close(self) -> None:
        """The reply has ended: read its last line."""
        if self._line and not _FENCE.match(self._line):
            self._take(self._parser.feed(self._line))
        self._line = ""
        self._take(self._parser.close())

    def feed_all(self, text: str) -> None:
        """Read a whole reply at once (one replayed from the journal)."""
        self.feed(text)
        self.close()

    def _take(self, parsed: list[ParsedCall]) -> None:
        # the problems found while reading the lines that gave these calls come first
        problems = self._parser.problems
        for problem in problems[self._problems:]:
            self.calls.note(problem, self.round)
        self._problems = len(problems)
        for call in parsed:
            self.calls.take(call, self.round)


def _sendable(text: str) -> str:
    """``text`` with lone surrogates (which no provider accepts) replaced by ``?``.

    A plan may hold them (a model's JSON can encode one); it goes back to the model as text.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _digest(request: ModelRequest) -> str:
    """A planner's requests do not extend each other's messages: each is digested whole."""
    from shoal.agents.run import ConversationDigest

    return ConversationDigest().of(request)


def _observations(rounds: Sequence[_Round]) -> str:
    """What each call of the rounds gave, for the joiner and the next planner."""
    lines: list[str] = []
    for round_ in rounds:
        lines += [f"Note: {note}" for note in round_.notes]
        lines += [_observation(record) for record in round_.records or ()]
    if not lines:
        return "Observations: the plan had no calls."
    text = "Observations:\n" + "\n".join(lines)
    if len(text) > MAX_OBSERVATION_CHARS:
        cut = len(text) - MAX_OBSERVATION_CHARS
        text = f"{text[:MAX_OBSERVATION_CHARS]}\n[... {cut} more characters cut]"
    return text


def _observation(record: CallRecord) -> str:
    call = record.call
    shown = call.arguments if len(call.arguments) <= 300 else call.arguments[:300] + "..."
    head = f"{call.id}. {call.name or '(unreadable)'}({shown})"
    return f"{head} -> {record.status}: {record.message.content}"


def _why_stopped(exc: BaseException) -> str:
    """Why the calls still running are cancelled, for their outcomes."""
    from shoal.agents.run import _why_abandoned

    if isinstance(exc, (MaxReplansExceeded, MaxTurnsExceeded, OutputValidationError)):
        return f"the planner stopped: {exc}"
    return _why_abandoned(exc)
