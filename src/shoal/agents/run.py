"""The turn loop of one agent run (the lead's, or one subagent's).

Each turn: ask the model (through the tree's shared gate for that model), append its reply,
and if it asked for tool calls run *all of them at once* through the runtime, then send the
results back in the order it asked. Every step of an agent run (each model turn, each call)
is a node of one open run, its steps run, journaled as ``{run id}/{lineage}/steps``. With
stream dispatch (``Agent(stream_dispatch=)``, on where the model streams its calls) the reply
is read as a stream and each call starts the moment it is complete. A reply without tool
calls is the final answer (checked against ``output_type`` when there is one). Subagent
calls are tool calls whose tool runs another :class:`AgentRun` with a fresh message list: a
sibling can neither see nor change it. Everything an agent run owns lives here; the
:class:`~shoal.agents.agent.Agent` it runs is an immutable definition, so one agent can
run many times at once.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import cache, partial
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from shoal.agents.budget import HELD_BY_DEFAULT
from shoal.agents.context import TreeContext
from shoal.agents.result import AgentResult, AgentStatus
from shoal.agents.toolcalls import (
    _CANCELLED_WITH_AGENT,
    CallRecord,
    CallStream,
    _node_settled,
    _settled,
    cut_answer_text,
    with_distinct_ids,
)
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    EventSink,
    ModelResponded,
    TextDelta,
    ToolCallRejected,
)
from shoal.exceptions import (
    AgentError,
    BudgetExceeded,
    MaxTurnsExceeded,
    ModelError,
    OutputCutOffError,
    OutputValidationError,
    PlanChangedError,
    exception_message,
)
from shoal.executors._results import finished_result_type
from shoal.models.base import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    ToolCall,
    ToolCallDone,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from shoal.models.base import TextDelta as TextPiece  # a model's stream item, not the event
from shoal.openrun import OpenRun
from shoal.outcome import Outcome, jsonable
from shoal.policy import ToolPolicy
from shoal.runtime import RunHandle
from shoal.scheduler import driver
from shoal.scheduler.driver import epoch_now
from shoal.store.fingerprint import canonical
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.agents.node import NodeContext
    from shoal.executors.base import Call
    from shoal.models.retry import ModelGate
    from shoal.store.base import Store

__all__ = ["AgentRun", "cut_off_error", "cut_off_note"]


async def _model_turn(request_digest: str) -> Any:
    """One model request (bound, per turn, to the request, the agent's model and its gate).

    The node's only argument is a digest of the request, not the request: the journal keeps
    it for resume's change check, and neither the digest nor argument isolation then costs
    more as the conversation grows (see :class:`ConversationDigest`).
    """
    del request_digest
    raise AssertionError("a model turn is bound to its agent before it runs")


# A model turn's value, its reply, is a finished result: its end takes the driver's plain path
# (no check for work left to await, no result object), as a tool's str does.
finished_result_type(ModelResponse)

# A reply with neither text nor tool calls answers nothing: it is sent back like an answer that
# does not fit, so a model that stalls gets to try again, then the run ends in a typed error.
_EMPTY = "the reply was empty: no text and no tool calls"
_EMPTY_AGAIN = "Your reply was empty (no text and no tool calls). Answer the task, or call a tool."

class ConversationDigest:
    """A digest of each model request, updated with each new message only.

    Hashing the whole conversation on every turn would make a turn's cost grow with the
    conversation; here each message is hashed once, when it is first asked about, and the
    parts that stay the same for a run (instructions, tools, settings, schema, lineage) are
    hashed once per run (and encoded once per agent definition). Equal requests give equal
    digests in any process (canonical JSON).
    """

    __slots__ = ("_agent", "_fixed", "_hashed", "_messages")

    def __init__(self, agent: Agent[Any] | None = None) -> None:
        self._messages = hashlib.blake2b(digest_size=16)
        self._hashed = 0  # how many messages of the conversation are in the hash
        self._fixed: hashlib.blake2b | None = None  # the fixed parts hashed, copied per turn
        self._agent = agent  # whose requests' fixed parts are canonical already, once

    def of(self, request: ModelRequest) -> str:
        """The request's digest; ``request.messages`` extends the previous request's."""
        if self._fixed is None:
            self._fixed = hashlib.blake2b(self._fixed_json(request), digest_size=16)
        messages = request.messages
        hashed = self._hashed
        if hashed < len(messages):
            update = self._messages.update
            for index in range(hashed, len(messages)):
                update(_message_bytes(messages[index]))
            self._hashed = len(messages)
        whole = self._fixed.copy()
        whole.update(self._messages.digest())
        return whole.hexdigest()

    def _fixed_json(self, request: ModelRequest) -> bytes:
        """The canonical JSON of the request's parts that stay the same for a run."""
        agent = self._agent
        if agent is not None and _of_agent(request, agent):  # the same JSON, encoded once
            before, after = agent._request_json
            return before + _encoded_str(request.lineage) + after
        parts = {"instructions": request.instructions, "tools": request.tools,
                 "settings": request.settings, "output_schema": request.output_schema,
                 "lineage": request.lineage}
        if request.plan_tools:  # only then: other requests keep the digests they had
            parts["plan_tools"] = request.plan_tools
        return _encoded(canonical(parts))


def request_json_around_lineage(parts: dict[str, Any]) -> tuple[bytes, bytes]:
    """``_encoded({**parts, "lineage": x})`` cut into what comes before ``x`` and after it.

    ``parts`` is canonical JSON data. Sorted keys put ``lineage`` among the others, so each
    item is encoded as ``json.dumps(..., sort_keys=True)`` would, and the items joined.
    """
    keys = sorted({*parts, "lineage"})
    place = keys.index("lineage")
    items = [_encoded(key) + b":" + _encoded(parts[key]) if key != "lineage" else b""
             for key in keys]
    before = b"{" + b",".join(items[:place]) + (b"," if place else b"") + b'"lineage":'
    after = (b"," if place < len(keys) - 1 else b"") + b",".join(items[place + 1:]) + b"}"
    return before, after


def _of_agent(request: ModelRequest, agent: Agent[Any]) -> bool:
    """Whether ``request`` holds ``agent``'s own instructions, tools, settings and schema."""
    spec = agent.output_spec
    return (request.tools is agent.tool_specs and request.settings is agent.settings
            and not request.plan_tools and request.instructions == agent.full_instructions
            and request.output_schema is (spec.schema if spec else None))


def _message_bytes(message: Message) -> bytes:
    # The repr of shoal's own (frozen, str-only) messages is exact and the same in every
    # process, and ten times quicker than JSON; anything else goes through canonical JSON.
    # Neither holds a raw newline, so it separates messages safely.
    if type(message) is ToolResultMessage:
        text = (f"ToolResultMessage(call_id={message.call_id!r}, name={message.name!r}, "
                f"content={message.content!r}, is_error={message.is_error!r}, "
                f"role={message.role!r})")
    elif type(message) is AssistantMessage:
        text = _assistant_repr(message)
    elif type(message) is UserMessage:
        text = f"UserMessage(content={message.content!r}, role={message.role!r})"
    else:
        return _encoded(canonical(message)) + b"\n"
    return text.encode("utf-8", "surrogatepass") + b"\n"


def _assistant_repr(message: AssistantMessage) -> str:
    """``repr(message)``, built without the dataclass repr's per-object bookkeeping."""
    calls = message.tool_calls
    for call in calls:  # a loop, not any() of a generator: asked of every reply with calls
        if type(call) is not ToolCall:  # a subclass has its own repr
            shown = repr(calls)
            break
    else:
        shown = ", ".join([f"ToolCall(id={call.id!r}, name={call.name!r}, "
                           f"arguments={call.arguments!r})" for call in calls])
        shown = f"({shown},)" if len(calls) == 1 else f"({shown})"
    return (f"AssistantMessage(content={message.content!r}, tool_calls={shown}, "
            f"role={message.role!r})")


def _encoded_str(text: str) -> bytes:
    """``_encoded(text)`` for a str, without making a JSON encoder (once per agent run)."""
    if type(text) is not str:
        return _encoded(text)
    # what json.dumps(text) returns with its default ensure_ascii
    return encode_basestring_ascii(text).encode("utf-8", "surrogatepass")


def _encoded(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")


#: Reads one streamed model reply (the planner's, as plan text arrives).
Reader = Callable[[ModelRequest], Awaitable[ModelResponse]]

# Idempotent: asking a model again has no side effect, so a turn in flight at a crash is
# simply asked again on resume.
#: The policy of every model turn's call (the same object): how an observer of a run tells a
#: model request from a tool call named ``model`` (see :mod:`shoal.integrations.otel`).
MODEL_TURN_POLICY = ToolPolicy(isolation="inline", idempotent=True)


@cache
def _model_turn_tool() -> Tool[..., Any]:
    """The model turn's tool, made on first use rather than at import.

    Its argument model would be the first pydantic validator ``import shoal`` builds, and the
    first one costs milliseconds more than the rest (pydantic then looks up its plugins).
    """
    return Tool(_model_turn, name="model", policy=MODEL_TURN_POLICY)


class _Asking:
    """The model turn in progress: what its node asks, and the last error an attempt raised.

    Its tree stops it through :meth:`cancel`: the turn's node alone is cancelled. A streamed
    reply's events are handed to it as they come (it is the gate's ``take``): each call to
    the turn's tool phase, the text to ``text``, and the whole reply kept as :attr:`response`.
    With ``phases`` (stream dispatch), the turn's tool phase is opened by its first call: a
    reply without calls (every agent's answer) opens none.
    """

    __slots__ = ("asked", "began", "bound", "call", "chars", "handle", "node_id", "phases",
                 "raised", "read", "request", "response", "text")

    def __init__(self, request: ModelRequest, phases: AgentRun | None,
                 read: Reader | None, handle: RunHandle, node_id: str, began: float) -> None:
        self.request = request
        self.began = began  # the tree's time when it was asked (if anyone listens)
        self.phases = phases  # whose tool phase the streamed calls start in, if they do
        self.read = read
        self.handle = handle
        self.node_id = node_id
        self.raised: Exception | None = None  # kept whole: the outcome keeps its type name
        self.response: ModelResponse | None = None  # the streamed reply, once complete
        self.text: Callable[[str], None] | None = None  # where streamed text goes
        # with Budget(tokens=): told the characters streamed so far, raises once surely over
        # it (a reply's usage comes at its end, which an endless stream never reaches)
        self.bound: Callable[[int], None] | None = None
        self.chars = 0
        self.asked = False  # whether its node asked the model (not: the run stopped first)
        #: its node's attempt, when the turn's own task runs it (see :meth:`AgentRun.outcome`)
        self.call: Call | None = None

    def __call__(self, event: StreamEvent) -> None:
        """Take one event of the streamed reply."""
        if isinstance(event, ToolCallDone):
            if self.phases is not None:
                self.phases.tool_phase().add(event.index, event.call)
        elif isinstance(event, ResponseDone):
            self.response = event.response
        elif isinstance(event, TextPiece):
            if self.text is not None:
                self.text(event.text)
            if self.bound is not None:
                self.chars += len(event.text)
                self.bound(self.chars)

    def restart(self) -> None:
        """Forget what an attempt that failed streamed: its retry streams the reply anew.

        Its text no longer counts against ``Budget(tokens=)``: the retry's text, sent again
        from the start, counted on top of it (a reply of 110 tokens retried once stopped a
        tree at 150 as "160 used"), and the reply's usage settles only its own attempt.
        """
        self.response = None
        if self.chars:
            self.chars = 0
            if self.bound is not None:
                self.bound(0)

    def cancel(self, node: None = None, *, reason: str, timed_out: bool = False) -> None:
        """Cancel the turn's node (it still ends with an outcome saying why).

        Always ``cancelled``, ``timed_out`` or not: the turn is the agent's own step, which
        then ends with the tree's breach; a turn that timed out reads as the model's failure.
        """
        del node, timed_out
        self.handle.cancel(self.node_id, reason=reason)


class AgentRun:
    """One run of one agent inside a tree: its messages, counters and result."""

    # slots: a swarm holds a thousand of these while each waits on its model
    __slots__ = ("_asking", "_calls", "_counts", "_digest", "_gate", "_journaled", "_model_tool",
                 "_phase", "_plan_handle", "_started", "_started_this_turn", "_steps", "_streams",
                 "agent", "ctx", "depth", "here", "lineage", "lineages", "model", "result")

    def __init__(self, agent: Agent[Any], ctx: TreeContext, *, lineage: str, depth: int,
                 prompt: str, here: bool = False) -> None:
        self.agent = agent
        #: whether the turn loop runs in this process, whatever the agent's ``isolation``
        #: (the process that an agent of ``isolation="process"`` runs in says so)
        self.here = here or agent.isolation == "inline"
        self.ctx = ctx
        self.lineage = lineage
        self.depth = depth
        self.model = ctx.model_for(agent.model)
        self.result: AgentResult[Any] = AgentResult(agent.name, lineage, ctx.run_id, prompt)
        self._counts: dict[str, int] = {}  # per-tool call counters, for lineage names
        self._started_this_turn = 0  # calls of the current turn past their checks (fan_out)
        self._started = 0.0
        self._digest = ConversationDigest(agent)
        dispatch = agent.stream_dispatch
        self._streams = self.model.streams_tool_calls if dispatch is None else dispatch
        self._plan_handle: RunHandle | None = None  # a planner's plan run, while it goes
        self._model_tool: Tool[..., Any] | None = None  # every model turn's node's tool
        self._asking: _Asking | None = None  # the model turn in progress
        self._phase: CallStream | None = None  # its tool phase, once its first call came
        self._calls: CallStream | None = None  # every turn's tool phase, made on first use
        self._gate: ModelGate | None = None  # the tree's gate for this run's model, once asked
        # every step of this run (model turns and tool calls) is a node of one open run,
        # opened with the first step and ended with the run (see _steps_run)
        self._steps: OpenRun | None = None
        #: each call's node id in the steps run -> its lineage (for its events)
        self.lineages: dict[str, str] = {}
        self._journaled: dict[int, str] | None = None  # resumed: turn -> its journaled digest

    async def run(self) -> AgentResult[Any]:
        """Run turns until a final answer or a stop; the result records which.

        Never raises, except ``CancelledError``, which is re-raised after recording. An agent
        of ``isolation="process"`` runs in a process of its own (see
        :mod:`shoal.agents.remote`), one of ``isolation="ray"`` in a Ray actor (see
        :mod:`shoal.agents.ray_agent`), with the same contract.
        """
        if not self.here and self.agent.isolation == "ray":
            from shoal.agents.ray_agent import run_on_ray  # only Ray agents need it

            return await run_on_ray(self)
        if not self.here:
            from shoal.agents.remote import run_elsewhere  # only process agents need it

            return await run_elsewhere(self)
        self._started = self.ctx.now()
        self.result.started_at = epoch_now()  # the loop's clock: virtual on a virtual loop
        self.result.where = driver.HOST  # read now: a Ray agent's actor names its node there
        self.result.pid, self.result.isolation = os.getpid(), self.agent.isolation
        self.ctx.results[self.lineage] = self.result
        self._emit_started()
        try:
            stopped: str | None = None
            try:
                output = await self._turns()
            except asyncio.CancelledError:  # (Ctrl-C in run_sync, a cancel of the awaiter)
                stopped = self._run_stopped()
                raise
            finally:
                await self._end_steps(stopped)
            self.result.output = output
            self._end("ok")
        except BudgetExceeded as exc:
            self._end("budget_exceeded", exc)
        except (MaxTurnsExceeded, OutputValidationError, ModelError) as exc:
            self._end("max_turns" if isinstance(exc, MaxTurnsExceeded) else "failed", exc)
        except Exception as exc:  # a model adapter's bug, a ScriptError, a changed definition
            self._end("failed", exc)
        except asyncio.CancelledError:
            breach = self.ctx.tracker.breach
            if breach is not None:
                self._end("budget_exceeded", breach)
            else:
                reason = self.ctx.cancelled_reason(self.lineage) or "cancelled"
                self._end("cancelled", AgentError(f"agent {self.lineage} was {reason}"))
            raise
        return self.result

    async def _turns(self) -> Any:
        if self.agent.mode == "plan":
            from shoal.agents.planner import Planner  # only planners need it

            return await Planner(self).run()
        agent, messages = self.agent, self.result.messages
        messages.append(UserMessage(self.result.prompt))
        output_retries = 0
        while True:
            self.ctx.check(self.lineage)
            if self.result.turns >= agent.max_turns:
                raise MaxTurnsExceeded(f"agent {self.lineage} used all {agent.max_turns} turns "
                                       "without a final answer; raise max_turns or simplify")
            self._phase = stream = None
            try:
                # what answer() does, awaited here: a coroutine less for each turn of each
                # agent (each made, held while the model answers, and resumed through)
                asking = self._model_step(self._next_request(), self._streams, None, None)
                outcome: Outcome | None = None
                try:
                    try:
                        call = asking.call
                        if call is not None:  # its attempt is this task's: run here, now
                            asking.call = None
                            outcome = await asking.handle.run_here(call, _CANCELLED_WITH_AGENT)
                        if outcome is None:
                            outcome = await asking.handle.outcome_of(asking.node_id)
                    except asyncio.CancelledError:
                        await self._stop_turn(asking)
                        raise
                finally:
                    self._turn_over(asking, outcome)
                response = self._answered(asking, outcome)
                stream = self._phase  # opened by the reply's first call, if it streamed one
                messages.append(response.as_message())
                # cancelled or over budget while the model answered (a final answer stands
                # when only the requests limit was reached meanwhile: it came within the limit)
                self.ctx.check(self.lineage, answered=not response.tool_calls)
                if response.tool_calls:  # the tool phase: the turn's calls, as steps
                    if stream is None:  # not streamed: the calls start now, all at once
                        stream = self._call_stream(self.result.turns)
                    # awaited here, not in a coroutine of its own: a swarm holds each agent's
                    # frames for as long as its calls run
                    records = await stream.finish(
                        response.tool_calls, self.result.calls.extend,
                        cut_off=response.stop_reason if response.cut_off else "")
                    self._untrack_phase(stream)
                    if self._journaled is not None:  # resumed: subagents that had ended
                        self._add_replayed_children(records)
                    messages.extend([record.message for record in records])
                    continue
                if stream is not None:  # no calls: the turn had no tool phase
                    self._untrack_phase(stream)
            except BaseException as exc:
                if stream is None:  # the reply did not come, but its first calls may have
                    stream = self._phase
                if stream is not None:
                    if stream.pending:  # calls started, the turn failed
                        await stream.abandon(_why_abandoned(exc), self.result.calls.extend)
                    self._untrack_phase(stream)
                raise
            spec = agent.output_spec
            try:
                if not response.text.strip():
                    raise ValueError(_EMPTY)
                output = response.text if spec is None else spec.parse(response.text)
            except ValueError as exc:
                if response.cut_off:  # asked again with the same cap, it would be cut again
                    raise cut_off_error(self.lineage, response, exc) from None
                output_retries += 1
                if output_retries > agent.output_retries:
                    wanted = "an answer" if spec is None else repr(agent.output_type)
                    raise OutputValidationError(
                        f"agent {self.lineage}'s answer did not fit {wanted} after "
                        f"{agent.output_retries} retries: {exc}") from None
                messages.append(UserMessage(_EMPTY_AGAIN if spec is None
                                            else spec.retry_prompt(str(exc))))
                continue
            if response.cut_off:  # kept, but nothing else would tell it is cut short
                self.result.cut_off = cut_off_note(self.lineage, response)
            return output

    def _next_request(self) -> ModelRequest:
        """Start the next turn (charged to the budget) and make its request.

        Not a coroutine awaiting :meth:`answer`: a swarm holds each waiting turn's frames.
        """
        agent = self.agent
        self.start_turn()
        return ModelRequest(
            instructions=agent.full_instructions, messages=tuple(self.result.messages),
            tools=agent.specs_now(), settings=agent.settings,
            output_schema=agent.output_spec.schema if agent.output_spec else None,
            lineage=self.lineage, token_cap=self.ctx.tracker.tokens_left())

    def start_turn(self) -> None:
        """Charge one model request to the budget and count it as this agent's turn."""
        self.ctx.tracker.start_request(self.lineage)
        self.result.turns += 1

    def _unstart_turn(self) -> None:
        """Take back :meth:`start_turn` for a turn that never asked its model."""
        self.result.turns -= 1
        self.ctx.tracker.refund_request(self.lineage)

    async def answer(self, request: ModelRequest, *, streamed: bool = False,
                     read: Reader | None = None, digest: str | None = None) -> ModelResponse:
        """Ask the model for this turn, as a node of the steps run; count its usage, say so.

        Running the request as a node puts the turn in the runtime's journal (the request's
        digest in the node's id and argument, the response as its outcome): a resumed agent
        gets its finished turns replayed instead of asked again, and a changed definition
        (other instructions, tools or prompt make another request, so another digest) is
        refused with :class:`~shoal.exceptions.PlanChangedError` before it is asked.

        ``streamed``: the reply is streamed and each complete call starts at once, in the
        turn's tool phase (:meth:`tool_phase`, opened by the first call); the node's outcome
        is still the whole reply, so a resumed turn replays it and its calls replay from the
        steps run's journal. When a sink asks for model text, the
        reply is streamed too (its calls start when it ends); otherwise it is a plain request.
        ``read`` streams the reply itself (the planner reads plan text as it arrives);
        ``digest`` replaces the conversation digest, for requests whose messages do not
        extend the previous request's.

        One coroutine, with the node added by :meth:`_model_step` (not a coroutine awaited
        from here): a swarm holds a waiting turn's frames for each agent. The turn loop does
        the same steps without this coroutine (see :meth:`_turns`).
        """
        asking = self._model_step(request, streamed, read, digest)
        outcome: Outcome | None = None
        try:
            try:
                call = asking.call
                if call is not None:  # its attempt is this task's: run here, now
                    asking.call = None
                    outcome = await asking.handle.run_here(call, _CANCELLED_WITH_AGENT)
                if outcome is None:  # the node's own future, no shield
                    outcome = await asking.handle.outcome_of(asking.node_id)
            except asyncio.CancelledError:  # the future went with the agent: stop the turn
                await self._stop_turn(asking)
                raise
        finally:
            self._turn_over(asking, outcome)
        return self._answered(asking, outcome)

    @staticmethod
    async def _stop_turn(asking: _Asking) -> None:
        """Cancel a turn whose waiter was cancelled; return once its outcome is recorded."""
        handle, node_id = asking.handle, asking.node_id
        handle.cancel(node_id, reason=_CANCELLED_WITH_AGENT)
        await _node_settled(handle, node_id)

    def _turn_over(self, asking: _Asking, outcome: Outcome | None) -> None:
        """Forget the model turn in flight, whatever its end; a turn never asked is no turn."""
        self.ctx.untrack_handle(self.lineage, asking)
        self._asking = None
        tracker = self.ctx.tracker
        if outcome is None or outcome.status != "ok":
            if asking.chars:
                # a stream that ended with no usage to settle it no longer counts as streaming
                tracker.charge_streamed(0, self.lineage)
            if tracker.held:  # no usage will replace what its request held
                tracker.release(self.lineage)
        if outcome is None or outcome.status != "ok":
            if not asking.asked:
                self._unstart_turn()  # its run stopped before it asked: not a turn (an ok
                # outcome unasked is a resumed turn's, replayed from the journal)
            else:  # asked, never answered (cancelled in flight, failed): still a request,
                # as the turn and the tree's requests budget count it; its tokens unknown
                self.result.own_usage = self.result.own_usage + _UNANSWERED

    def _answered(self, asking: _Asking, outcome: Outcome | None) -> ModelResponse:
        """The turn's reply (or its error, raised), its usage counted and, if heard, told."""
        assert outcome is not None  # the waiter returned: the node has its outcome
        response: ModelResponse = (outcome.value if outcome.status == "ok"
                                   else self._response_of(outcome, asking))
        usage = response.usage if response.usage.requests else _one_request(response.usage)
        result = self.result
        result.own_usage = result.own_usage + usage
        ctx = self.ctx
        if ctx.observed:
            ctx.emit(ModelResponded(
                run_id=ctx.run_id, time=ctx.now(), lineage=self.lineage, agent=self.agent.name,
                model=self.model.name, turn=result.turns, text=response.text[:500],
                tool_calls=tuple(c.name for c in response.tool_calls),
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                duration=ctx.now() - asking.began, cost=usage.cost))
        ctx.tracker.add_usage(usage, self.lineage)
        return response

    def _model_step(self, request: ModelRequest, streamed: bool,
                    read: Reader | None, digest: str | None) -> _Asking:
        """Add the turn's node to the steps run (see :meth:`_steps_run`); the turn in progress.

        A turn whose node could not be added (its journal failed, say) never asked its model:
        its request is taken back (see :meth:`start_turn`) before the error goes on.
        """
        ctx = self.ctx
        began = ctx.now() if ctx.observed else 0.0  # only its event tells how long it took
        try:
            turn = self.result.turns
            if self._model_tool is None:  # bound once per run, not per turn (a tool is costly)
                self._model_tool = _model_turn_tool().bound_to(self._ask_model)
            digest = digest if digest is not None else self._digest.of(request)
            run = self._steps if self._steps is not None else self._steps_run()
            if self._journaled is not None:  # a resumed run: the journal's request, or refused
                self._check_turn(turn, digest)
            node_id = f"model-{turn}:{digest}"
            asking = self._asking = _Asking(request, self if streamed else None, read,
                                            run.handle, node_id, began)
            # the digest is a str made here: the model turn's schema has nothing to check.
            # Its attempt, if it starts now, is run by this task (no task, no future of its
            # own): what the turn awaits anyway
            asking.call = run.add_owned(self._model_tool, {"request_digest": digest},
                                        node_id=node_id, validated=True, here=True)
        except BaseException:
            self._asking = None
            self._unstart_turn()
            raise
        ctx.track_handle(self.lineage, asking, turn=True)
        return asking

    def _response_of(self, outcome: Outcome, asking: _Asking) -> ModelResponse:
        """The reply of a model turn's node, or the error it ended with, raised."""
        if outcome.status == "ok":
            response: ModelResponse = outcome.value
            return response
        if asking.raised is not None:
            raise asking.raised
        if outcome.status in ("cancelled", "skipped"):
            raise asyncio.CancelledError(outcome.reason)
        raise ModelError(self.model.name,
                         str(outcome.error or outcome.reason or outcome.status))

    async def _ask_model(self, request_digest: str) -> ModelResponse:
        """The model turn's node: ask the model for the request of the turn in progress.

        With stream dispatch (or a sink that asks for text), the reply is streamed and each
        call starts in the turn's tool phase the moment it is complete; its text goes to the
        sinks that asked for it, piece by piece, as it arrives. Read here, not in a coroutine
        of its own: a swarm holds a waiting turn's frames for each agent.
        """
        del request_digest
        asking = self._asking
        if asking is None:  # only a turn in progress runs its node
            raise AssertionError(f"agent {self.lineage} has no model turn in progress")
        request, model = asking.request, self.model
        if request.token_cap is not None:  # Budget(tokens=): the output its reply may use
            request = await self._hold_tokens(request)
        asking.asked = True
        if model.changes_requests:
            # a private copy per attempt, as the runtime gives any call: the model may
            # change it freely; the messages inside are immutable, shared, never copied
            request = copy.deepcopy(request)
        try:
            if asking.read is not None:
                return with_distinct_ids(await asking.read(request), self.lineage)
            ctx = self.ctx
            gate = self._gate
            if gate is None:  # the tree's gate for the model: looked up once per run
                gate = self._gate = ctx.gates.for_model(model)
            # the model's own events (a retry, a server starting) only when someone listens
            on_event = self._model_event if ctx.observed else None
            if asking.phases is None and not ctx.wants_text:
                return with_distinct_ids(await gate.request(model, request, on_event=on_event),
                                         self.lineage)
            asking.response, asking.chars = None, 0  # a retried attempt's reply is its own
            asking.text = self.text_streamed if ctx.wants_text else None
            if ctx.tracker.budget.tokens is not None:
                asking.bound = functools.partial(ctx.tracker.check_streamed,
                                                 where=self.lineage)
            # the agent keeps only the whole reply, so text already streamed is no reason
            # not to retry, as a plain request would be retried (a listener sees
            # ModelRetrying, then the turn's text again from its start)
            await gate.stream_to(model, request, asking, on_event=on_event,
                                 retry_after_text=True, restart=asking.restart)
            response = asking.response
            if response is None:
                raise ModelError(model.name, "the stream ended without a complete reply")
            stream = self._phase if asking.phases is not None else None
            if stream is None:  # no call started while it streamed
                return with_distinct_ids(response, self.lineage)
            calls = stream.merged(response.tool_calls)
            return with_distinct_ids(response if calls == response.tool_calls
                                     else replace(response, tool_calls=calls), self.lineage)
        except Exception as exc:  # kept whole: the outcome only keeps its type name
            asking.raised = exc
            raise

    async def _hold_tokens(self, request: ModelRequest) -> ModelRequest:
        """The request, its output capped to what the tree holds for it (see ``reserve``).

        It holds its settings' ``max_tokens``, else its model's own (``AnthropicModel`` and
        ``LocalModel`` have one), else :data:`HELD_BY_DEFAULT`: holding all that is left
        would make the requests of other agents at the same time wait.
        """
        most = request.settings.max_tokens
        if most is None:
            own = getattr(self.model, "max_tokens", None)
            most = own if type(own) is int and own >= 1 else HELD_BY_DEFAULT
        cap = await self.ctx.tracker.reserve(self.lineage, most)
        return request if cap == request.token_cap else replace(request, token_cap=cap)

    def text_streamed(self, text: str) -> None:
        """Hand a piece of the reply's text to the sinks that asked for text."""
        ctx = self.ctx
        if text and ctx.wants_text:
            ctx.emit(TextDelta(run_id=ctx.run_id, time=ctx.now(), lineage=self.lineage,
                               agent=self.agent.name, turn=self.result.turns, text=text))

    def tool_phase(self) -> CallStream:
        """The tool phase of the turn in progress, opened by the first call streamed to it."""
        phase = self._phase
        if phase is None:
            phase = self._phase = self._call_stream(self.result.turns)
        return phase

    def _call_stream(self, turn: int) -> CallStream:
        """Turn ``turn``'s tool phase, ready to take calls.

        Its calls join this run's steps run (see :meth:`_steps_run`) as the model writes them.
        """
        self._started_this_turn = 0
        if self._steps is None:
            self._steps_run()
        stream = self._calls
        if stream is None:  # made once per run, restarted per turn: a turn's phase cost
            # seven objects (itself, its containers, the three bound methods it holds)
            stream = self._calls = CallStream(
                self.agent.tools_by_name, open_run=self._phase_run, lineage=self.lineage,
                counts=self._counts, prepare=self._prepare, on_reject=self._rejected,
                error_format=self.agent.tool_error_format, shared=self, turn=turn)
        else:
            stream.restart(turn)
        self.ctx.track_handle(self.lineage, stream)
        return stream

    def _phase_run(self, on_event: EventSink | None) -> OpenRun:
        """The run a tool phase's calls join: this run's steps run."""
        del on_event  # the steps run has its sink already
        return self._steps_run()

    def _steps_run(self) -> OpenRun:
        """The open run of this agent run's steps: each model turn and each tool call.

        One journaled run, ``{run id}/{lineage}/steps``, opened with the first step and ended
        with the agent run: a model turn is its node ``model-N:<digest of the request>`` (the
        digest tells a changed definition on resume), a tool call its node ``tool#n``. When
        the tree is resumed and the journal knows the run, it is continued: finished turns
        and calls replay their recorded outcomes.
        """
        run = self._steps
        if run is not None:
            return run
        ctx = self.ctx
        run_id = f"{ctx.run_id}/{self.lineage}/steps"
        store = ctx.runtime.store
        resumes = store is not None and ctx.resumes(self.lineage)  # asked once per agent
        resume = resumes and store is not None and store.get_run(run_id) is not None
        if not resume and resumes and store is not None:
            _refuse_steps_per_run(store, f"{ctx.run_id}/{self.lineage}")
        sink = self._steps_sink() if ctx.observed_nested else None
        # calls in doubt a person settled (checked against the journal as the tree started)
        rerun, done = ctx.settling.get(self.lineage, ((), None)) if resume else ((), None)
        run = self._steps = ctx.runtime.open_run(
            self.lineage, run_id=None if resume else run_id, resume=run_id if resume else None,
            rerun_in_doubt=rerun, mark_done=done,
            lineage=self.lineage, on_event=sink, force=ctx.force, within=ctx.scope,
            board=ctx.board, here=True)  # no task of its own: it starts now, ends as it ends
        if resume and store is not None:
            self._journaled = _journaled_turns(store, run_id)
        return run

    def _steps_sink(self) -> EventSink:
        """The steps run's events for the tree: each call's stamped with its lineage.

        Not the model turns' (their node ids are ``model-N:...``, a call's ``tool#n``): a
        model request was never a tool call to the tree's listeners.
        """
        emit, lineage, lineages = self.ctx.emit_nested, self.lineage, self.lineages

        def sink(event: Event) -> None:
            node_id = str(getattr(event, "node_id", ""))
            if node_id.startswith("model-") and "#" not in node_id:
                return
            emit(replace(event, lineage=lineages.get(node_id, lineage)))

        return sink

    def stop_reason(self) -> str | None:
        """Why this agent must stop (a budget breach, a cancellation), or ``None``."""
        return self.ctx.stop_reason(self.lineage)

    def _check_turn(self, turn: int, digest: str) -> None:
        """Refuse a resumed turn whose request is not the one the journal has."""
        journaled = self._journaled.get(turn) if self._journaled is not None else None
        if journaled is not None and journaled != digest:
            run_id = f"{self.ctx.run_id}/{self.lineage}/steps"
            raise PlanChangedError(run_id, [self._turn_changed(turn)])

    def _turn_changed(self, turn: int) -> str:
        """Why a resumed turn's request differs: a call the journal could not replay, if any.

        A call whose value the journal could not keep (too deep, too big) is ``in_doubt`` when
        resumed, not its value: the model would be told something else than it was.
        """
        doubtful = [record for record in self.result.calls if record.status == "in_doubt"]
        if doubtful:
            first = doubtful[0]
            why = first.outcome.reason if first.outcome is not None else ""
            return (f"agent {self.lineage}: model turn {turn} cannot be asked again as it was: "
                    f"call {first.lineage} is in_doubt ({why or 'its result was not journaled'})"
                    ", so its model would be told another result than it was; this agent "
                    "cannot be resumed (start a new run)")
        return (f"agent {self.lineage}: model turn {turn} asks another request than the "
                "journal's (its instructions, tools, settings, output type, prompt or an "
                "earlier turn changed)")

    def _run_stopped(self) -> str | None:
        """Why the whole tree was stopped, if this agent's cancel is that (``None``: not).

        A cancel from outside shoal (Ctrl-C in ``run_sync``, a cancel of the awaiting task)
        records no reason: it stops the tree, as the CLI's Ctrl-C (the root's cancel) does.
        An agent cancelled alone (its node's cancel) leaves a tree that goes on.
        """
        ctx = self.ctx
        if ctx.tracker.breach is not None:  # the budget's stop says so on its own
            return None
        if ctx.cancelled_reason(self.lineage) is None:
            return "the run was cancelled"
        return ctx.cancelled_reason(self.lineage.split("/", 1)[0])

    async def _end_steps(self, stopped: str | None = None) -> None:
        """End the steps run: every step has ended, so it ends at once (journaled so).

        ``stopped``: why the agent was cancelled, if it was. The steps run is then cancelled
        as a whole with that reason before it closes, so that its journal records it stopped
        (``shoal runs`` / ``shoal show``), not ``finished``, however the cancel came (the
        CLI's Ctrl-C cancels the run itself; ``run_sync``'s cancels only the awaiting task).
        """
        run = self._steps
        if run is None:
            return
        # its nodes' tools call back into this run: dropped, so that neither is left in a
        # cycle for the collector's next full pass
        self._steps = self._model_tool = None
        if stopped is not None:
            run.cancel(reason=stopped)
        run.close()
        ended = run.handle.as_future()
        if ended.done():  # ended as it closed (a memory journal's, most runs): nothing to await
            ended.result()  # (its error, raised, as awaiting it would)
            return
        _, cancelled = await _settled(run.handle)
        if cancelled:
            raise asyncio.CancelledError

    def _open_step(self, step: str, on_event: EventSink | None) -> OpenRun:
        """Open a planner's plan run as its own journaled open run (continued on resume)."""
        ctx = self.ctx
        run_id = f"{ctx.run_id}/{self.lineage}/{step}"
        store = ctx.runtime.store
        resume = (ctx.resumes(self.lineage) and store is not None
                  and store.get_run(run_id) is not None)
        run = ctx.runtime.open_run(self.lineage, run_id=None if resume else run_id,
                                   resume=run_id if resume else None, lineage=self.lineage,
                                   on_event=on_event, force=ctx.force, within=ctx.scope,
                                   board=ctx.board)
        ctx.track_handle(self.lineage, run.handle)
        self._plan_handle = run.handle
        return run

    def _untrack_phase(self, stream: CallStream | None = None) -> None:
        """Forget a tool phase (or the planner's plan run) in the tree's books: it ended."""
        if stream is not None:
            self.ctx.untrack_handle(self.lineage, stream)
            if stream is self._phase:  # it holds this run: no cycle left for the collector
                self._phase = None
        if self._plan_handle is not None:
            self.ctx.untrack_handle(self.lineage, self._plan_handle)
            self._plan_handle = None

    def _prepare(self, index: int, call: ToolCall, tool: Tool[..., Any],
                 where: str) -> Tool[..., Any] | BaseException:
        """Refuse calls over the turn's fan-out; bind subagent calls to this tree."""
        # fan_out counts the calls this turn starts: malformed or unknown ones do not count
        tracker = self.ctx.tracker
        if tracker.budget.fan_out is not None:  # (no limit: nothing to refuse, nothing made)
            refusal = tracker.fan_out_refusal(self._started_this_turn, self.lineage)
            if refusal is not None:
                return refusal
        self._started_this_turn += 1
        child = self.agent.subagents_by_name.get(tool.name)
        if child is None:
            return tool
        refusal = tracker.take_subagent(self.depth + 1, where)
        if refusal is not None:
            return refusal
        return self._bind_subagent(child, where)

    def _bind_subagent(self, child: Agent[Any], where: str) -> Tool[..., Any]:
        # a partial, not a closure: two objects for each subagent waiting in its call, where
        # a closure held a function, its closure tuple and a cell per name
        return child._call_tool.bound_to(partial(AgentRun._run_subagent, self, child, where))

    async def _run_subagent(self, child: Agent[Any], where: str, task: str,
                            shoal_node: NodeContext | None = None) -> Any:
        """A subagent call's tool: run ``child`` at ``where`` on ``task``; its answer."""
        child_run = AgentRun(child, self.ctx, lineage=where, depth=self.depth + 1, prompt=task)
        self.result.children.append(child_run.result)
        try:
            result = await child_run.run()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if child_run.result.status == "running" or (
                    current is not None and current.cancelling()):
                raise  # this call was cancelled (its turn, the run): the driver knows why
            # the subagent alone was cancelled (its lineage, a budget breach): its call ends
            # cancelled too, saying why, not as an error of the tool
            raise driver.CallCancelled(self.ctx.cancelled_reason(where)
                                       or str(child_run.result.error or "cancelled")) from None
        finally:  # the call's outcome says where the subagent ran (a Ray node), ended or not
            if shoal_node is not None:
                shoal_node.ran_on(child_run.result.where)
        if result.status != "ok":
            assert result.error is not None
            raise result.error
        output = result.output
        text = output if isinstance(output, str) else json.dumps(jsonable(output))
        # its result says it is cut short; its parent's model must read that too
        return cut_answer_text(text) if result.cut_off else text

    def _add_replayed_children(self, records: list[CallRecord]) -> None:
        """Put in ``children`` the subagents whose calls replayed a journaled answer.

        They ended before the run stopped, so they do not run again: their results are read
        back from the journal (:mod:`shoal.agents.replayed`), in the order of their calls
        among the turn's subagents that did run.
        """
        store = self.ctx.runtime.store
        by_name = self.agent.subagents_by_name
        children = self.result.children
        known = {child.lineage for child in children}
        turn = [r for r in records if r.call.name in by_name and r.status != "rejected"]
        missing = [r for r in turn if r.lineage not in known and r.status == "ok"]
        if store is None or not missing:
            return
        from shoal.agents.replayed import replayed_child, task_of  # resumed trees only

        made = {r.lineage: replayed_child(store, self.ctx.run_id, by_name[r.call.name], r,
                                          task_of(r.call.arguments)) for r in missing}
        lineages = {r.lineage for r in turn}
        ran = {c.lineage: c for c in children if c.lineage in lineages}
        children[:] = [c for c in children if c.lineage not in lineages]
        children.extend(made.get(r.lineage) or ran[r.lineage] for r in turn
                        if r.lineage in made or r.lineage in ran)

    def _model_event(self, event: Event) -> None:
        """A retry or a starting server, from the gate or the model: on the tree's sinks."""
        if self.ctx.observed:
            self.ctx.emit(replace(event, run_id=self.ctx.run_id, time=self.ctx.now(),
                                  lineage=self.lineage))

    def _rejected(self, record: CallRecord) -> None:
        if self.ctx.observed:
            self.ctx.emit(ToolCallRejected(
                run_id=self.ctx.run_id, time=self.ctx.now(), lineage=record.lineage,
                agent=self.agent.name, call_id=record.call.id, tool=record.call.name,
                error=record.message.content))

    def _emit_started(self) -> None:
        if self.ctx.observed:
            result = self.result
            self.ctx.emit(AgentStarted(
                run_id=self.ctx.run_id, time=self.ctx.now(), lineage=self.lineage,
                agent=self.agent.name, prompt=result.prompt, depth=self.depth,
                where=result.where, pid=result.pid, isolation=result.isolation))

    def _end(self, status: AgentStatus, error: BaseException | None = None) -> None:
        # the model turn's tool calls back into this run: dropped, the run is freed as soon
        # as nothing needs it, not at the collector's next full pass (a tool phase too)
        self._model_tool = self._phase = self._calls = None
        result = self.result
        result.status = status
        result.error = error
        if error is not None and isinstance(error, AgentError) and error.result is None:
            error.result = result
        result.duration = self.ctx.now() - self._started
        total = result.own_usage
        for child in result.children:
            total = total + child.usage
        result.usage = total
        if self.ctx.observed:
            self.ctx.emit(AgentFinished(
                run_id=self.ctx.run_id, time=self.ctx.now(), lineage=self.lineage,
                agent=self.agent.name, status=status, output=str(result.output)[:200],
                turns=result.turns, total_tokens=total.total_tokens, duration=result.duration,
                error="" if error is None else exception_message(error),
                cut_off=result.cut_off))


def _refuse_steps_per_run(store: Store, where: str) -> None:
    """Refuse to start over an agent whose journal keeps its steps a run each (``model-1``).

    An earlier shoal journaled each step as a run of its own: starting the agent afresh would
    ask its model again and run its finished calls a second time.
    """
    if store.get_run(f"{where}/model-1") is not None:
        raise PlanChangedError(where.split("/", 1)[0], [
            f"agent {where.split('/', 1)[-1]}: the journal keeps its steps as a run each "
            f"({where}/model-1, ...), as shoal wrote them before its steps were one run; "
            "finish this run with the shoal version that started it"])


_TURN_ID = re.compile(r"model-(\d+):(\w+)")


def _journaled_turns(store: Store, run_id: str) -> dict[int, str]:
    """The digest of each model turn the journal knows of steps run ``run_id``."""
    ids = set(store.outcomes(run_id, decode=False))
    ids.update(attempt.node_id for attempt in store.attempts(run_id))
    found: dict[int, str] = {}
    for node_id in ids:
        match = _TURN_ID.fullmatch(node_id)
        if match is not None:
            found[int(match[1])] = match[2]
    return found


def cut_off_note(lineage: str, response: ModelResponse) -> str:
    """What to say of a final answer cut off at the model's output cap, and how to raise it.

    Tools and plan mode both set :attr:`AgentResult.cut_off` to it.
    """
    wrote = response.usage.output_tokens
    after = f", after {wrote:,} token{'' if wrote == 1 else 's'}" if wrote else ""
    return (f"agent {lineage}'s answer was cut off at the model's limit of output tokens "
            f"(stop reason {response.stop_reason!r}{after}): raise it with "
            "ModelSettings(max_tokens=...) on the agent or its model (under Budget(tokens=...) "
            f"a request that sets none holds {HELD_BY_DEFAULT:,}), or ask for a shorter answer")


def cut_off_error(lineage: str, response: ModelResponse, exc: Exception,
                  ) -> OutputCutOffError:
    """The error of a final answer cut off at the output cap that could not be read.

    Raised at once: asked again with the same cap, the answer would be cut again.
    """
    return OutputCutOffError(f"{cut_off_note(lineage, response)}; what came could not be "
                             f"read: {exc}")


def _why_abandoned(exc: BaseException) -> str:
    """Why the calls a turn had started are cancelled, for their outcomes."""
    if isinstance(exc, asyncio.CancelledError):
        return "the agent running these calls was cancelled"
    if isinstance(exc, BudgetExceeded):
        return str(exc)
    return f"the model turn that asked for these calls failed: {exception_message(exc)}"


#: The usage of a model request sent but never answered: one request, no tokens known.
_UNANSWERED = Usage(0, 0, 1)


def _one_request(usage: Usage) -> Usage:
    return replace(usage, requests=1)
