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
   to a call not written above or to one rejected, a number used twice) becomes a
   ``rejected`` :class:`~shoal.agents.toolcalls.CallRecord`: the joiner reads why. Text
   after ``join()`` is ignored (the stream is still read to its end, so its usage counts).
   Native tool calls in the reply (models send them even to a request without tools) are
   read as plan lines numbered on from the text's.
2. **Join.** Once the plan's calls have ended, the model reads the task, the plan and each
   call's result, and answers ``Thought: ...`` then ``Action: Finish(<answer>)`` or
   ``Action: Replan(<why>)``. A reply without an ``Action:`` line is the answer as a whole.

The run's requests are one conversation, so that a prompt cache (a local server's KV cache,
a provider's prefix cache) reuses each one: the same instructions every time (the agent's,
then how to plan and how to join: :func:`~shoal.agents.planprompts.planner_prompt`), and
messages that only grow: the task, the plan (the assistant's), the results and what the
joiner is to do (the user's), the joiner's reply, after a replan what the new plan is to do,
the next plan, and so on. Each request is the previous one and its reply, then what is new.

A replan starts the next round: the planner sees its earlier plans, their results and the
joiner's reason, and numbers its new calls on from the last, so ``$N`` can use any earlier
result: finished calls never run again. A new plan that numbers from 1 again (or goes back)
anyway has each such call renumbered past the last (its later ``$N`` follow), unless it
restates an earlier call exactly, which stands. After ``max_replans`` new plans the joiner
is told it must answer; asking for another ends the run with
:class:`~shoal.exceptions.MaxReplansExceeded`. An agent's ``output_type`` applies to the
answer inside ``Finish(...)``, checked and asked again as in tools mode.

A model stream retried after a failure is read again from its start: a call already started
under the same number, tool and arguments stands (it is not added again), and one that
changed is rejected, so no call ever runs twice. Every model turn is journaled as in tools
mode, and so is the plan run (``{run id}/{lineage}/plan``): a resumed planner replays its
finished turns and calls and runs only the rest.

The prompts and the reading of the joiner's reply are in :mod:`shoal.agents.planprompts`.
"""

from __future__ import annotations

import asyncio
import json
import keyword
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shoal.agents.planprompts import (
    join_action,
    join_note,
    plan_prompt,
    planner_prompt,
    replan_note,
    reply_action,
    tool_signature,
)
from shoal.agents.run import cut_off_error, cut_off_note
from shoal.agents.toolcalls import (
    MAX_RESULT_CHARS,
    CallRecord,
    _Counter,
    _reword,
    _settled,
    _sink,
    bounded,
    result_text,
    unknown_part,
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
    describe_exception,
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
    UserMessage,
)
from shoal.plan import Ref, find_refs
from shoal.plandata import DataError, parse_json
from shoal.plantext import ParsedCall, PlanTextParser

if TYPE_CHECKING:
    from shoal.agents.run import AgentRun
    from shoal.openrun import OpenRun
    from shoal.tools import Tool

__all__ = ["Planner", "join_action", "plan_prompt", "tool_signature"]

log = logging.getLogger("shoal")

#: The most characters of plans and observations one joiner or planner request holds (the
#: rounds so far share them equally).
MAX_OBSERVATION_CHARS = 4 * MAX_RESULT_CHARS

_FENCE = re.compile(r"\s*```")


# ---- one round's calls ------------------------------------------------------------------------


@dataclass(slots=True)
class _Round:
    """One plan and its calls: node ids (started or reused) and rejections, in plan order."""

    number: int
    entries: list[str | CallRecord] = field(default_factory=list)
    planned: bool = False  # the plan has been read (``text`` is the whole plan)
    notes: list[str] = field(default_factory=list)  # lines of the plan that are not calls
    text: str = ""
    records: list[CallRecord] | None = None  # once every call of the round has ended
    replan: int | None = None  # after a replan: the next plan's first number
    replan_cut: str = ""  # the stop reason of a Replan(...) cut off at the output cap
    joining: str = ""  # what the joiner was told after the results (see join_note)
    # the joiner's replies, and what it was told after each one that did not fit
    joined: list[AssistantMessage | UserMessage] = field(default_factory=list)
    # numbers an earlier plan took for other calls -> the numbers their calls here run as
    renumbered: dict[str, str] = field(default_factory=dict)
    # calls an earlier attempt of a retried stream started (they stand, read again or not)
    carried: list[str] = field(default_factory=list)
    # numbers of carried calls that the retried stream wrote as other calls (refused): its
    # $N means the call it wrote, which never ran, not the one that stands
    changed: dict[str, str] = field(default_factory=dict)  # number -> the call as rewritten

    def restart(self) -> None:
        """A retried stream is read again: only the calls that started are kept.

        Renumberings stay, so that a call read again keeps the number it started under.
        """
        self.carried = self.node_ids
        self.changed = {}
        self.entries = []
        self.notes.clear()

    def in_order(self) -> list[str | CallRecord]:
        """The round's calls in plan order.

        Started calls that a retried stream did not write again come first (they started
        first).
        """
        written = {e for e in self.entries if isinstance(e, str)}
        return [*(c for c in self.carried if c not in written), *self.entries]

    @property
    def node_ids(self) -> list[str]:
        """The round's calls that run (or ran) in the plan run."""
        return [e for e in self.in_order() if isinstance(e, str)]


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
        self._top = 0  # the largest of them short enough to count (see next_id)
        self._free = 1  # no number from _top + 1 up to this one is free (see next_id)
        self.refused: dict[str, str] = {}  # number -> why, for numbers no call started under
        self.round_of: dict[str, int] = {}  # node id -> the round that started it
        self.reported: set[str] = set()  # node ids whose records are in the agent's calls
        # events already sent: a retried stream reads its lines again, they are told once
        self.announced: set[tuple[str, str]] = set()
        ctx = agent_run.ctx
        sink = _sink(ctx.emit_nested if ctx.observed_nested else None, agent_run.lineage,
                     self.lineages)
        self.run: OpenRun = agent_run._open_step("plan", sink)
        stop = ctx.stop_reason(agent_run.lineage)
        if stop is not None:
            self.run.cancel(reason=stop)

    @property
    def next_id(self) -> int:
        """The number the next plan's first call gets: the first free one after the largest.

        Numbers of 12 digits or more do not count as the largest (a plan may number a step
        with thousands of digits: the next plan numbers on from its other steps), but are
        not free either: a plan numbered on from 99999999999 has taken 100000000000.
        """
        free = max(self._free, self._top + 1)
        while str(free) in self.numbers:  # each number is passed over once: it stays taken
            free += 1
        self._free = free
        return free

    def _use(self, number: str) -> None:
        """Note that a plan used ``number`` (a call's id)."""
        self.numbers.add(number)
        if len(number) < 12 and number.isdigit():
            self._top = max(self._top, int(number))

    def take(self, call: ParsedCall, round_: _Round) -> None:
        """Start ``call`` in the plan run, or record in ``round_`` why it cannot run."""
        call = _renumbered(call, round_.renumbered)
        text = _call_text(call)
        self._use(call.id)
        known = self.written.get(call.id)
        if known is not None and known != text and (
                self.round_of[call.id] < round_.number
                or call.id in round_.renumbered.values()):
            # a new plan numbered from 1 again, or went back: its call gets the next number
            # (and so does one whose number such a call got meanwhile)
            new = round_.renumbered[call.id] = str(self.next_id)
            call = replace(call, id=new)  # its refs were renumbered above, once
            self._use(call.id)
            known = None
        if known is not None:
            if known == text:  # a retried stream, or the call of an earlier plan: it stands
                if call.id not in round_.entries:
                    round_.entries.append(call.id)
                    if self.round_of[call.id] < round_.number:  # else its result reads as new
                        round_.notes.append(
                            f"line {call.line}: step {call.id} is the same call as an earlier "
                            f"plan's step {call.id}, so it did not run again: its result is "
                            "that call's; to run it again, give it a new number (the next "
                            f"free one is {self.next_id})")
            else:
                taken = self.calls[call.id]
                if call.id in round_.carried:
                    round_.changed.setdefault(call.id, f"{call.tool} on line {call.line}")
                self._reject(round_, call, f"line {call.line}: step {call.id} is already "
                             f"taken by {taken.name}({taken.arguments[:200]}), which stands; "
                             f"give each call its own number (the next free one is "
                             f"{self.next_id})")
            return
        self._parsed(call, text)
        try:
            tool, args = call.bind(self.tools)
        except PlanError as exc:
            self._reject(round_, call, _problems(exc.problems))
            return
        unusable = self._refused_inputs(call, args, round_)
        if unusable:
            self._reject(round_, call, unusable, tool.name, args)
            return
        try:
            problems = self.run.problems(tool, args, node_id=call.id)
        except Exception as exc:  # a literal no check foresaw: refused, never the agent's end
            log.exception("%s: checking plan step %s failed", self.agent_run.lineage, call.id)
            problems = [PlanProblem("bad_arguments", f"the arguments cannot be checked: "
                                    f"{describe_exception(exc)}", call.id)]
        if problems:
            self._reject(round_, call, _problems(problems, call.line), tool.name, args)
            return
        self._start(call, tool, args, text, round_)

    def _refused_inputs(self, call: ParsedCall, args: Mapping[str, Any], round_: _Round) -> str:
        """Why ``call`` cannot run for using a result no call above it gives, if so.

        That includes the result of a call a retried stream wrote anew under the number of
        a call its first attempt started: the result there is the started call's, not the
        one the plan now means.
        """
        nodes = dict.fromkeys(ref.node for ref in find_refs(dict(args)))
        changed = [n for n in nodes if n in round_.changed]
        refused = [n for n in nodes if n in self.refused and n not in self.written]
        ahead = [n for n in nodes if n not in self.refused and n not in self.written
                 and n != call.id]  # its own number: the plan's check says so
        return "; ".join([
            *(f"line {call.line}: ${node} cannot be used: the reply was sent again after a "
              f"failure, and its step {node} ({round_.changed[node]}) was rejected because "
              f"the first reply's step {node}, {self.calls[node].name}"
              f"({self.calls[node].arguments[:200]}), had already started and stands; give "
              "the new call its own number and use that" for node in changed),
            *(f"line {call.line}: ${node} is the result of call {node}, which was rejected and "
              f"never ran ({self.refused[node][:200]}); give the rejected call again, "
              "corrected, under a new number and use that" for node in refused),
            *(f"line {call.line}: ${node} is no call above this line; a call can use only the "
              "results of calls written before it" for node in ahead)])

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
        self.round_of[call.id] = round_.number
        round_.entries.append(call.id)

    def _parsed(self, call: ParsedCall, text: str) -> None:
        ctx, agent_run = self.agent_run.ctx, self.agent_run
        if ctx.observed and self._first_time(("parsed", call.id + text)):
            ctx.emit(PlanCallParsed(run_id=self.run.run_id, time=ctx.now(),
                                    lineage=agent_run.lineage, agent=agent_run.agent.name,
                                    node_id=call.id, tool=call.tool))

    def _reject(self, round_: _Round, call: ParsedCall, why: str, tool: str | None = None,
                args: Mapping[str, Any] | None = None, where: str | None = None) -> None:
        name = tool or call.tool
        arguments = _arguments(args if args is not None else _raw_args(call))
        record = _rejected(ToolCall(call.id, name, arguments),
                           where or _child(self.agent_run.lineage, unknown_part(name)), why)
        self.refused.setdefault(call.id, why)
        round_.entries.append(record)
        if self._first_time((call.id, why)):
            self.agent_run._rejected(record)

    def refuse(self, call: ParsedCall, why: str, round_: _Round) -> None:
        """Record ``call`` as rejected for ``why`` without reading it (its number is used)."""
        call = _renumbered(call, round_.renumbered)
        self._use(call.id)
        self._reject(round_, call, why)

    def _first_time(self, key: tuple[str, str]) -> bool:
        if key in self.announced:
            return False
        self.announced.add(key)
        return True

    def note(self, problem: PlanProblem, round_: _Round) -> None:
        """Record a problem of the plan text: a rejected call, or a line that is no call."""
        if not problem.node:
            round_.notes.append(problem.message)
            return
        node = round_.renumbered.get(problem.node, problem.node)
        if self.round_of.get(node, round_.number) < round_.number:  # as in take()
            node = round_.renumbered[problem.node] = str(self.next_id)
        problem = replace(problem, node=node)
        if problem.node in self.written:  # a number taken already: the line stands apart
            problem = replace(problem, message=f"{problem.message} (step {problem.node} is "
                              "taken, give each call its own number)")
        record = _rejected(ToolCall(problem.node, "", "{}"),
                           _child(self.agent_run.lineage, "plan?"), problem.message)
        self._use(problem.node)
        self.refused.setdefault(problem.node, problem.message)
        round_.entries.append(record)
        if self._first_time((node, problem.message)):
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
        for entry in round_.in_order():
            if isinstance(entry, CallRecord):
                records.append(entry)
                continue
            call = self.calls[entry]
            outcome = outcomes.get(entry)
            if outcome is None:  # the run ended before it (cannot happen once it was added)
                records.append(_rejected(call, self.lineages[entry], "the call never ended"))
                continue
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


def _renumbered(call: ParsedCall, numbers: Mapping[str, str]) -> ParsedCall:
    """``call`` with its number and its refs to renumbered calls renumbered."""
    if not numbers:
        return call
    args = tuple(_refs_renumbered(v, numbers) for v in call.args)
    kwargs = {k: _refs_renumbered(v, numbers) for k, v in call.kwargs.items()}
    return replace(call, id=numbers.get(call.id, call.id), args=args, kwargs=kwargs)


def _refs_renumbered(value: Any, numbers: Mapping[str, str]) -> Any:
    if isinstance(value, Ref):
        return Ref(numbers[value.node], value.path) if value.node in numbers else value
    if isinstance(value, list):
        return [_refs_renumbered(v, numbers) for v in value]
    if isinstance(value, tuple):
        return tuple(_refs_renumbered(v, numbers) for v in value)
    if isinstance(value, dict):
        return {k: _refs_renumbered(v, numbers) for k, v in value.items()}
    return value


def _child(lineage: str, name: str) -> str:
    return f"{lineage}/{name}" if lineage else name


def _problems(problems: Sequence[PlanProblem], line: int | None = None) -> str:
    at = f"line {line}: " if line is not None else ""
    return "; ".join(p.message if p.message.startswith("line ") else at + p.message
                     for p in problems) or "the call cannot run"


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
        while True:
            ctx.check(self.lineage)
            round_ = _Round(len(self.rounds) + 1)
            self.rounds.append(round_)
            await self._plan(calls, round_)
            await calls.wait(round_)
            ctx.check(self.lineage)
            last = len(self.rounds) > agent.max_replans
            action, text, cut = await self._join(round_, last)
            if action == "finish":
                return text
            if last:
                raise MaxReplansExceeded(
                    f"agent {self.lineage}'s joiner asked for a new plan after "
                    f"{agent.max_replans} replan(s): {text[:300]}; raise max_replans "
                    f"(now {agent.max_replans}) or give the planner better tools")
            round_.replan = calls.next_id  # the reason is in the joiner's reply
            round_.replan_cut = cut

    def _conversation(self) -> tuple[Message, ...]:
        """The next request's messages: the run's conversation so far.

        The task; then for each round its plan (the assistant's), its results and what the
        joiner is to do (the user's), the joiner's replies (with what it was told after each
        one that did not fit), and after a replan what the new plan is to do. Each request
        thus extends the previous request and its reply, and a prompt cache reuses them.

        The plans and results share :data:`MAX_OBSERVATION_CHARS` equally among the plans
        written so far, so a request stays bounded however many rounds there were; what a
        share cuts is cut the same way in every request until the next plan is written (only
        then can a request stop extending the one before it, and only when a cut bites).
        """
        messages: list[Message] = [UserMessage(self.agent_run.result.prompt)]
        planned = [round_ for round_ in self.rounds if round_.planned]
        share = MAX_OBSERVATION_CHARS // max(len(planned), 1)
        for round_ in planned:
            # providers refuse an empty assistant message: a plan of nothing says so
            messages.append(AssistantMessage(_sendable(_cut(round_.text, share // 8))
                                             or "(no plan)"))
            if not round_.joining:  # not judged yet (no request is sent then)
                break
            said = f"{_observations(round_, share - share // 4)}\n\n{round_.joining}"
            messages.append(UserMessage(_sendable(said)))
            replies = sum(isinstance(m, AssistantMessage) for m in round_.joined)
            for message in round_.joined:
                if isinstance(message, AssistantMessage):  # the replies share an eighth
                    cut = _cut(message.content, share // 8 // max(replies, 1))
                    message = AssistantMessage(_sendable(cut) or "(empty)")
                messages.append(message)
            if round_.replan is not None:
                messages.append(UserMessage(replan_note(round_.replan, round_.replan_cut)))
        return tuple(messages)

    def _check_turns(self) -> None:
        agent = self.agent
        if self.agent_run.result.turns >= agent.max_turns:
            raise MaxTurnsExceeded(f"agent {self.lineage} used all {agent.max_turns} turns "
                                   "without a final answer; raise max_turns or simplify")

    def _request(self, *, plan: bool) -> ModelRequest:
        """The next request: the planner's instructions and the conversation so far.

        A plan request carries the tools as ``plan_tools`` (a model may constrain its output
        to plans over them); a joiner's request does not, so that it writes free text.
        """
        agent = self.agent
        return ModelRequest(instructions=self.instructions, messages=self._conversation(),
                            tools=(), settings=agent.settings, lineage=self.lineage,
                            plan_tools=agent.specs_now() if plan else (),
                            token_cap=self.ctx.tracker.tokens_left())

    @property
    def instructions(self) -> str:
        """The instructions of every request of the run: the agent's, then how to plan and join.

        They describe the tools as offered now (:meth:`~shoal.agents.Agent.specs_now`): an
        MCP server may change its tools mid-run, and the plans were written for the tools
        as first listed. Unless that happens they stay the same from the first request to the
        last, as the prompt cache needs (made once for each tool list).
        """
        agent = self.agent
        specs = agent.specs_now()
        made = self.__dict__.get("_instructions")
        if made is not None and (made[0] is specs or made[0] == specs):
            text: str = made[1]
            return text
        spec = agent.output_spec
        answer_format = ("" if spec is None else "\nThe answer inside Finish(...) must be only "
                         f"a JSON value that fits this JSON schema: {json.dumps(spec.schema)}")
        text = f"{agent.instructions}\n\n{planner_prompt(specs, answer_format)}".strip()
        self.__dict__["_instructions"] = (specs, text)
        return text

    async def _plan(self, calls: _PlanCalls, round_: _Round) -> None:
        agent_run = self.agent_run
        self._check_turns()
        agent_run.start_turn()
        agent_run._started_this_turn = 0  # fan_out counts each plan's calls
        request = self._request(plan=True)
        reader = _PlanReader(self, calls, round_)
        response = await agent_run.answer(request, read=reader.read, digest=_digest(request))
        if not reader.read_whole:  # replayed from the journal: its calls are added now
            reader.finish(response)
        round_.text = reader.text
        round_.planned = True
        agent_run.result.plans.append(reader.text)
        agent_run.result.messages.append(AssistantMessage(reader.text))
        self.ctx.check(self.lineage)

    async def _join(self, round_: _Round, last: bool) -> tuple[str, Any, str]:
        """The joiner's action, its answer or reason, and its stop reason if it was cut off."""
        agent, agent_run, ctx = self.agent, self.agent_run, self.ctx
        spec = agent.output_spec
        round_.joining = join_note(last)
        retries = 0
        while True:
            self._check_turns()
            agent_run.start_turn()
            request = self._request(plan=False)
            response = await agent_run.answer(request, digest=_digest(request))
            agent_run.result.messages.append(response.as_message())
            round_.joined.append(AssistantMessage(_reply_text(response)))
            ctx.check(self.lineage, answered=True)
            action, text = reply_action(response.text, response.tool_calls)
            if action == "replan":
                cut = response.stop_reason if response.cut_off else ""
                return action, text or "(no reason given)", cut
            try:
                if not text.strip():
                    raise ValueError("the answer was empty")
                output = text if spec is None else spec.parse(text)
            except ValueError as exc:
                if response.cut_off:  # asked again with the same cap, it would be cut again
                    raise cut_off_error(self.lineage, response, exc) from None
                retries += 1
                if retries > agent.output_retries:
                    wanted = "an answer" if spec is None else repr(agent.output_type)
                    raise OutputValidationError(
                        f"agent {self.lineage}'s answer did not fit {wanted} after "
                        f"{agent.output_retries} retries: {exc}") from None
                again = ("Your answer was empty." if spec is None
                         else spec.retry_prompt(str(exc)))
                if response.tool_calls:  # a model that answers with calls is told it cannot
                    called = ", ".join(sorted({c.name for c in response.tool_calls}))[:200]
                    again = f"No tools can be called here (you called {called}). {again}"
                round_.joined.append(  # the error may quote the reply, surrogates and all
                    UserMessage(_sendable(f"{again} Reply with Action: Finish(<the answer>).")))
                continue
            if response.cut_off:  # kept, but nothing else would tell it is cut short
                agent_run.result.cut_off = cut_off_note(self.lineage, response)
            return action, output, ""


class _PlanReader:
    """Reads one planner reply as it streams, handing each complete call to the plan run."""

    def __init__(self, planner: Planner, calls: _PlanCalls, round_: _Round) -> None:
        self.planner = planner
        self.calls = calls
        self.round = round_
        self.read_whole = False  # whether the reply was read here (not replayed)
        self.text = ""  # the plan as read: the reply's text, and its native calls as lines
        self._parser = PlanTextParser(calls.tools)
        self._line: list[str] = []  # pieces of the text after the last newline, not fed yet
        self._problems = 0
        self._restarted = False

    async def read(self, request: ModelRequest) -> ModelResponse:
        """Stream the reply through the model's gate (its retries included)."""
        agent_run = self.planner.agent_run
        model = agent_run.model
        gate = agent_run.ctx.gates.for_model(model)
        streamed: list[str] = []
        chars = 0  # streamed so far: an endless plan stream is bounded by Budget(tokens=)
        tracker = agent_run.ctx.tracker
        response: ModelResponse | None = None

        def on_event(event: Event) -> None:
            if isinstance(event, ModelRetrying):  # the stream starts again from its first text
                self._restarted = True
            agent_run._model_event(event)

        try:
            async for event in gate.stream(model, request, on_event=on_event,
                                           retry_after_text=True):
                if self._restarted:
                    self._restart()
                    streamed.clear()
                    if chars:  # the retry streams the plan from its start: the failed
                        # attempt's text counted on top of it stopped plans within the budget
                        chars = 0
                        tracker.charge_streamed(0, self.planner.lineage)
                if isinstance(event, TextDelta):
                    chars += len(event.text)
                    tracker.check_streamed(chars, self.planner.lineage)
                    streamed.append(event.text)
                    self.feed(event.text)
                    agent_run.text_streamed(event.text)
                elif isinstance(event, ResponseDone):
                    response = event.response
        except BaseException:
            if chars:  # no usage will settle what it streamed: it no longer streams
                tracker.charge_streamed(0, self.planner.lineage)
            raise
        if response is None:
            raise ModelError(model.name, "the stream ended without a complete reply")
        self.finish(response, "".join(streamed))
        self.read_whole = True
        return response

    def _restart(self) -> None:
        self._restarted = False
        self._parser = PlanTextParser(self.calls.tools)
        self._line = []
        self._problems = 0
        self.round.restart()

    def feed(self, text: str) -> None:
        """Take streamed text; each complete line goes to the parser (code fences skipped)."""
        if "\n" not in text:  # a piece of a long line: joined once the line is complete
            if text:  # (an empty piece is no line: the native calls' lines would count it)
                self._line.append(text)
            return
        *lines, rest = "".join([*self._line, text]).split("\n")
        self._line = [rest] if rest else []
        for line in lines:
            if _FENCE.match(line) and not self._parser.in_string:  # a fence in a string is text
                line = ""  # a blank line in its place: the lines after it keep their numbers
            self._take(self._parser.feed(line + "\n"))

    def finish(self, response: ModelResponse, streamed: str = "") -> None:
        """The reply has ended: read what of it did not stream (all of a replayed one).

        Native tool calls in the reply (a model may send them though it was given no tools)
        become plan lines numbered on from the text's calls, as if it had written them.
        """
        text = response.text
        if text.startswith(streamed):  # a stream may send less text than its reply holds
            self.feed(text[len(streamed):])
        else:
            self._restart()
            self.feed(text)
        self.text = text
        if response.tool_calls:
            if self._line:  # the text's last line first: its number comes before theirs
                self.feed("\n")
            if self._parser.done:  # the model asked for them: say why they did not run
                names = ", ".join(dict.fromkeys(c.name for c in response.tool_calls))
                self.round.notes.append(
                    f"the reply's tool calls ({names[:200]}) came after the plan's end, so "
                    "none of them ran; write every call as a numbered line before the end")
            else:
                lines = self._native(response.tool_calls)
                self.text = f"{text.rstrip()}\n{lines}" if text.strip() else lines
        self._close()
        if response.cut_off and not self._parser.done:
            # else the joiner only read that the last line's brackets never close, say
            self.round.notes.append(
                f"the plan was cut off at the model's limit of output tokens (stop reason "
                f"{response.stop_reason!r}), so its last call may be incomplete and calls "
                "meant to follow it are missing; write a shorter plan, or raise the model's "
                "max_tokens")

    def _native(self, tool_calls: Sequence[ToolCall]) -> str:
        """Read native tool calls as plan lines numbered on; return those lines.

        A call whose arguments are no JSON object of named values is refused here, saying
        so (as a plan line it would only be a syntax error, and lose the tool's name).
        """
        lines = []
        for number, native in enumerate(tool_calls, self.calls.next_id):
            written, why = _native_call(native)
            lines.append(f"{number}. {written}")
            if why is None:
                self.feed(f"{lines[-1]}\n")
                continue
            self.feed("\n")  # the line is read (and counted), its call refused below
            if not self._parser.done:
                at = self._parser.lines_read
                refused = ParsedCall(str(number), native.name, (), {}, at)
                self.calls.refuse(refused, f"line {at}: {why}", self.round)
        return "\n".join(lines)

    def _close(self) -> None:
        last = "".join(self._line)
        if last and (not _FENCE.match(last) or self._parser.in_string):
            self._take(self._parser.feed(last))
        self._line = []
        self._take(self._parser.close())

    def _take(self, parsed: list[ParsedCall]) -> None:
        # the problems found while reading the lines that gave these calls come first
        problems = self._parser.problems_after(self._problems)
        for problem in problems:
            self.calls.note(problem, self.round)
        self._problems += len(problems)
        for call in parsed:
            self.calls.take(call, self.round)


def _native_call(call: ToolCall) -> tuple[str, str | None]:
    """One native call as a plan call, and why it cannot run when its arguments cannot.

    Arguments must be a JSON object whose keys are names: a key such as ``"x=1, y"`` would
    otherwise be read as two arguments.
    """
    raw = f"{call.arguments[:200]!r}"
    try:  # with a plan file's rules: no key twice, no NaN, no 5000-digit number, said so
        args = parse_json(call.arguments or "{}")
    except DataError as exc:
        if not exc.message.startswith("invalid JSON"):  # JSON, but no arguments to pass
            return (f"{call.name}(<arguments that cannot be passed: {raw}>)",
                    f"{call.name}'s arguments cannot be passed: {exc}")
        args = None
    if not isinstance(args, dict):
        return (f"{call.name}(<arguments that are not a JSON object: {raw}>)",
                f"{call.name}'s arguments are not a JSON object ({raw}); send them as a JSON "
                'object of named values, such as {"query": "x"}')
    names = [key for key in args if not key.isidentifier() or keyword.iskeyword(key)]
    if names:
        return (f"{call.name}(<arguments with a key that is no name: {raw}>)",
                f"{call.name}'s argument {names[0][:100]!r} is not a parameter name; send "
                "the arguments as a JSON object of named values")
    # each value's repr is a Python literal (JSON's true, null are True, None there)
    return f"{call.name}({', '.join(f'{key}={value!r}' for key, value in args.items())})", None


def _reply_text(response: ModelResponse) -> str:
    """A joiner's reply as the conversation shows it: its text, else its native calls.

    Native calls (``Replan(reason=...)``) are written out, so that a reason given that way
    stays in the conversation (no tool results can follow them: the joiner has no tools).
    """
    if response.text.strip() or not response.tool_calls:
        return response.text
    return "\n".join(f"{c.name}({c.arguments})" for c in response.tool_calls)


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
    """A planner's request, digested whole.

    Its requests mostly extend each other, but not always (a cut that bites, ``plan_tools``
    only on plan requests), so the agent's running conversation digest does not fit; a
    request is bounded (:data:`MAX_OBSERVATION_CHARS`), and so is the cost of hashing it.
    """
    from shoal.agents.run import ConversationDigest

    return ConversationDigest().of(request)


def _observations(round_: _Round, limit: int) -> str:
    """What each call of the round gave, for the joiner and the next planner.

    At most ``limit`` characters: a round's results share its request with the others'.
    """
    lines = [f"Note: {note}" for note in round_.notes]
    lines += [f"Note: step {old} was an earlier plan's call, so this plan's step {old} ran "
              f"as step {new} (its result is ${new})" for old, new in round_.renumbered.items()]
    lines += [_observation(record) for record in round_.records or ()]
    if not lines:
        return "Observations: the plan had no calls."
    return _cut("Observations:\n" + "\n".join(lines), limit)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} more characters cut]"


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
