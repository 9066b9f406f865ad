"""A refused thing anywhere in a remote agent's result costs only the part that holds it.

tests/test_process_agent_refused.py covers the calls' values, the answer, the end error and
the children. Here: the conversation (a model's reply of a ``str`` subclass, a tool call with
fields of its own, a tool's text kept in a message), the usage a model reports, and (loaded
directly, as a hostile agent process could send them) the board, its conflicts, the plans,
the plain fields and a subagent refused whole. Each such part is replaced saying why (a
:class:`~shoal.exceptions.SerializationError`'s text naming it); the agent's calls, answer
and children arrive. Before, any of them failed the whole agent with every call lost.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from typing import Any

import pytest

import shoal
from shoal.agents.remote import load_message
from shoal.agents.result import AgentResult
from shoal.agents.toolcalls import CallRecord
from shoal.board import BoardConflict
from shoal.models.base import (
    AssistantMessage,
    ModelResponse,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from shoal.outcome import Outcome
from shoal.testing import ScriptedModel, call
from tests.test_process_agent_refused import Opaque, fine

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


class Tagged(str):
    """Text of a class the parent's loader refuses (a ``str`` subclass, not allowed)."""


@dataclasses.dataclass(frozen=True)
class ExtraCall(ToolCall):
    """A model's tool call with a field of its own (a dataclass: allowed) holding a refused one."""

    extra: Any = None


@dataclasses.dataclass(frozen=True)
class ExtraUsage(Usage):
    """A model's usage report with a field of its own holding a refused thing."""

    extra: Any = None


@shoal.tool
def tagged() -> Any:
    """Return text of a ``str`` subclass: the conversation keeps it as the message's text."""
    return Tagged("tagged value")


def _run(turn: Any, isolation: Any = "process") -> AgentResult[Any]:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [turn, "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[fine, tagged], isolation=isolation)
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.output == "done"
    [child] = result.children
    assert child.status == "ok" and child.output == "read", child.error
    return child


def _replaced(message: Any, where: str, names: str) -> None:
    assert message.content.startswith("[SerializationError: ")
    assert where in message.content and names in message.content


def check_reply_text(child: AgentResult[Any]) -> None:
    assert [c.status for c in child.calls] == ["ok"]
    assert child.calls[0].outcome is not None and child.calls[0].outcome.value == "fine a"
    _, reply, result, answer = child.messages
    assert type(reply) is AssistantMessage and type(result) is ToolResultMessage
    _replaced(reply, "message 2 of agent lead/reader#1", "Tagged")
    [asked] = reply.tool_calls  # kept: the tool result below still answers it
    assert type(asked) is ToolCall and asked.name == "fine" and asked.id == result.call_id
    assert result.content == "fine a" and answer.content == "read"


def check_tool_call_fields(child: AgentResult[Any], names: str = "Opaque") -> None:
    first, second = child.calls
    assert first.status == second.status == "ok"
    assert type(first.call) is ToolCall and first.call == ToolCall("c1", "fine", '{"tag": "a"}')
    assert first.outcome is not None and first.outcome.value == "fine a"
    reply = child.messages[1]
    assert type(reply) is AssistantMessage
    _replaced(reply, "message 2 of agent lead/reader#1", names)
    assert [c.name for c in reply.tool_calls] == ["fine", "fine"]
    assert all(type(c) is ToolCall for c in reply.tool_calls)


def check_usage(child: AgentResult[Any]) -> None:
    assert [c.status for c in child.calls] == ["ok"]
    assert type(child.own_usage) is Usage and child.own_usage.input_tokens >= 1000
    assert type(child.usage) is Usage and child.usage.input_tokens >= 1000


def check_tool_text(child: AgentResult[Any]) -> None:
    refused, kept = child.calls
    assert refused.status == "failed" and refused.outcome is not None
    assert refused.outcome.error is not None and "Tagged" in refused.outcome.error.message
    assert "lead/reader#1/tagged#1" in refused.outcome.error.message
    assert type(refused.message) is ToolResultMessage and refused.message.is_error
    _replaced(refused.message, "lead/reader#1/tagged#1", "Tagged")
    assert kept.status == "ok" and kept.message.content == "fine b"
    in_conversation = [m for m in child.messages if type(m) is ToolResultMessage]
    _replaced(in_conversation[0], "message 3 of agent lead/reader#1", "Tagged")
    assert in_conversation[1].content == "fine b"


def _unpicklable_call(_: Any) -> ModelResponse:
    """A reply whose tool call has a field of its own that cannot be pickled (made there)."""
    return ModelResponse("x", (ExtraCall("c1", "fine", '{"tag": "a"}', threading.Lock()),
                               call("fine", tag="b")))


def check_unpicklable_call(child: AgentResult[Any]) -> None:
    check_tool_call_fields(child, "lock")
    assert "cannot go back to its parent" in child.messages[1].content


CASES: dict[str, tuple[Any, Any]] = {
    "reply text": (lambda: ModelResponse(Tagged("thinking"), (call("fine", tag="a"),)),
                   check_reply_text),
    "tool call fields": (lambda: ModelResponse("x", (
        ExtraCall("c1", "fine", '{"tag": "a"}', Opaque()), call("fine", tag="b"))),
        check_tool_call_fields),
    "usage": (lambda: ModelResponse("x", (call("fine", tag="a"),),
                                    ExtraUsage(1000, 5, 1, extra=Opaque())), check_usage),
    "tool text": (lambda: [call("tagged"), call("fine", tag="b")], check_tool_text),
    # not refused by the parent but not even pickled by the agent's process: it lost the
    # conversation, every call and the answer
    "unpicklable tool call": (lambda: _unpicklable_call, check_unpicklable_call),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_part_of_a_process_agents_conversation_costs_only_that_part(
        case: str) -> None:
    turn, check = CASES[case]
    check(_run(turn()))


def _done(result: AgentResult[Any]) -> bytes:
    return pickle.dumps(("done", result))


def _loaded(result: AgentResult[Any]) -> AgentResult[Any]:
    message = load_message(_done(result), "a test message")
    assert message[0] == "done"
    loaded: AgentResult[Any] = message[1]
    return loaded


def _a_call() -> CallRecord:
    outcome = Outcome(node_id="fine#1", tool="fine", status="ok", value="fine a")
    return CallRecord(ToolCall("c1", "fine", '{"tag": "a"}'), "lead/reader#1/fine#1", "ok",
                      ToolResultMessage("c1", "fine", "fine a"), outcome)


def _a_result(**changes: Any) -> AgentResult[Any]:
    fields: dict[str, Any] = {
        "output": "read", "status": "ok", "calls": [_a_call()],
        "messages": [UserMessage("t"), AssistantMessage("read")], **changes}
    return AgentResult(agent="reader", lineage="lead/reader#1", run_id="r1", prompt="t",
                       **fields)


def test_a_refused_board_value_plan_or_conflict_costs_only_itself() -> None:
    result = _a_result(
        board={"kept": [1, 2], "lost": Opaque()}, plans=["1. fine()", Tagged("2. x()")],
        conflicts=[BoardConflict("k", ("a", "b"), (1, 2)),
                   BoardConflict("k", ("a", "b"), (Opaque(), 2))])
    loaded = _loaded(result)
    assert loaded.status == "ok" and loaded.output == "read"
    assert loaded.calls == [_a_call()] and loaded.messages == result.messages
    assert loaded.board is not None and loaded.board["kept"] == [1, 2]
    lost = loaded.board["lost"]
    assert isinstance(lost, shoal.SerializationError)
    assert "board key 'lost' of agent lead/reader#1" in str(lost) and "Opaque" in str(lost)
    assert loaded.plans[0] == "1. fine()"
    _replaced(AssistantMessage(loaded.plans[1]), "plan 2 of agent lead/reader#1", "Tagged")
    assert [c.values for c in loaded.conflicts] == [(1, 2)]


def test_refused_plain_fields_and_usage_are_replaced_and_the_rest_kept() -> None:
    result = _a_result(where=Tagged("host"), usage=ExtraUsage(7, 3, 1, extra=Opaque()),
                       own_usage=ExtraUsage(7, 3, 1, extra=Opaque()))
    loaded = _loaded(result)
    assert loaded.status == "ok" and loaded.output == "read" and loaded.where == ""
    assert loaded.calls == [_a_call()]
    assert loaded.usage == loaded.own_usage == Usage(7, 3, 1)
    assert type(loaded.usage) is Usage

    refused_status = _loaded(_a_result(status=Tagged("ok")))
    assert refused_status.status == "failed" and refused_status.calls == [_a_call()]
    assert isinstance(refused_status.error, shoal.SerializationError)
    assert "lead/reader#1's status" in str(refused_status.error)


def test_a_message_call_or_subagent_refused_whole_is_replaced_saying_so() -> None:
    grandchild = _a_result(messages=[UserMessage("u"), Opaque()])
    grandchild.lineage = "lead/reader#1/digger#1"
    result = _a_result(children=[grandchild, Opaque()])
    result.calls.append(Opaque())  # type: ignore[arg-type]
    loaded = _loaded(result)
    assert loaded.status == "ok" and loaded.output == "read"
    assert loaded.calls[0] == _a_call()
    lost_call = loaded.calls[1]
    assert lost_call.status == "failed" and not lost_call.ok
    _replaced(lost_call.message, "a call of agent lead/reader#1", "Opaque")
    digger, lost = loaded.children
    assert digger.status == "ok" and digger.calls == [_a_call()]
    assert digger.messages[0] == UserMessage("u")
    _replaced(digger.messages[1], "message 2 of agent lead/reader#1/digger#1", "Opaque")
    assert lost.status == "failed" and isinstance(lost.error, shoal.SerializationError)
    assert "subagent 2 of agent lead/reader#1" in str(lost.error)
    assert "Opaque" in str(lost.error)


def _tagged_name(_: Any) -> ModelResponse:
    """A reply whose tool call's name is of a ``str`` subclass (it still finds the tool)."""
    return ModelResponse("x", (ToolCall("c1", Tagged("fine"), '{"tag": "a"}'),
                               call("fine", tag="b")))


def test_an_event_the_parent_refuses_is_left_out_and_the_agent_goes_on() -> None:
    # the model's turn is told to the tree's sinks with its calls' names: that event was
    # refused by the parent, which failed the agent as it ran
    events: list[Any] = []
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [_tagged_name, "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[fine], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", on_event=events.append)
    [child] = result.children
    assert result.output == "done" and child.status == "ok" and child.output == "read"
    assert [c.status for c in child.calls] == ["ok", "ok"]
    first = child.calls[0]
    assert first.outcome is not None and first.outcome.value == "fine a"
    assert type(first.call) is ToolCall and first.call.id == "c1"
    finished = [e for e in events if type(e).__name__ == "AgentFinished"
                and e.lineage == "lead/reader#1"]
    assert len(finished) == 1 and finished[0].status == "ok"
