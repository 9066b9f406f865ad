"""An agent's conversation is shared immutably between turns, never copied per turn.

A turn's cost must not grow with the conversation: each model request holds the very message
objects of the previous one (plus the new ones), the model turn's journaled argument is a
digest updated per new message, and still no model can change another turn's context.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.run import ConversationDigest
from shoal.models.base import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
)
from shoal.testing import call


@shoal.tool
async def echo(text: str) -> str:
    """Say it back."""
    return text


class Answer(pydantic.BaseModel):
    """A structured answer."""

    text: str


class Vandal(shoal.Model):
    """Records each request, then scribbles on every mutable part of it it can reach."""

    name = "vandal"

    def __init__(self, turns: int, final: str = "done") -> None:
        self.turns = turns
        self.final = final
        self.requests: list[ModelRequest] = []
        self.seen_schemas: list[Any] = []

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        self.seen_schemas.append(copy.deepcopy(dict(request.tools[0].parameters)))
        for spec in request.tools:
            spec.parameters["vandalised"] = True  # type: ignore[index]
        if request.output_schema is not None:
            request.output_schema["vandalised"] = True  # type: ignore[index]
        request.settings.extra["vandalised"] = True  # type: ignore[index]
        if len(self.requests) < self.turns:
            return ModelResponse(tool_calls=(call("echo", text=f"t{len(self.requests)}"),),
                                 usage=Usage(1, 1, 1))
        return ModelResponse(text=self.final, usage=Usage(1, 1, 1))


def test_each_turn_shares_the_previous_turns_messages_instead_of_copying_them() -> None:
    model = Vandal(turns=4)
    result = shoal.Agent(name="lead", model=model, tools=[echo]).run_sync("go")
    assert result.ok and len(model.requests) == 4
    first = model.requests[0].messages
    for later in model.requests[1:]:
        assert type(later.messages) is tuple
        # the very same objects: a per-turn (deep) copy of the conversation would fail this
        assert all(a is b for a, b in zip(first, later.messages, strict=False))
        assert len(later.messages) > len(first)
    last = model.requests[-1].messages
    assert all(a is b for a, b in zip(last, result.messages, strict=False))


def test_messages_cannot_be_changed_by_whoever_holds_them() -> None:
    request = ModelRequest("be brief", [UserMessage("hi"),
                                        AssistantMessage("", [call("echo")])])  # type: ignore[arg-type]
    assert type(request.messages) is tuple
    assert type(request.messages[1].tool_calls) is tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.messages[0].content = "changed"
    with pytest.raises(TypeError):
        request.messages[0] = UserMessage("changed")  # type: ignore[index]
    assert type(ModelResponse(tool_calls=[call("echo")]).tool_calls) is tuple  # type: ignore[arg-type]


def test_a_model_that_changes_its_request_changes_no_other_turn_or_run() -> None:
    agent = shoal.Agent(name="lead", model=Vandal(turns=3, final='{"text": "ok"}'),
                        tools=[echo], output_type=Answer,
                        settings=shoal.ModelSettings(extra={"seed": 1}))
    first = agent.run_sync("go")
    assert first.output == Answer(text="ok")
    model = agent.model
    assert isinstance(model, Vandal)
    assert all("vandalised" not in schema for schema in model.seen_schemas)
    # the definition the next run starts from is untouched too
    assert "vandalised" not in agent.tool_specs[0].parameters
    assert agent.output_spec is not None and "vandalised" not in agent.output_spec.schema
    assert dict(agent.settings.extra) == {"seed": 1}


class Reader(shoal.Model):
    """Only reads its requests, and says so: it gets the agent's own request, not a copy."""

    name = "reader"
    changes_requests = False

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if len(self.requests) < 3:
            return ModelResponse(tool_calls=(call("echo", text="x"),), usage=Usage(1, 1, 1))
        return ModelResponse(text="done", usage=Usage(1, 1, 1))


def test_a_model_that_only_reads_its_requests_gets_no_copy_per_turn() -> None:
    model = Reader()
    agent = shoal.Agent(name="lead", model=model, tools=[echo])
    assert agent.run_sync("go").ok
    # the definition's own schemas: no private copy was made for any of the three turns
    assert all(r.tools is agent.tool_specs and r.settings is agent.settings
               for r in model.requests)
    assert Vandal.changes_requests  # the default: any model may change what it is given


def test_a_scripted_step_function_gets_a_copy_of_its_own_to_change() -> None:
    def scribble(request: ModelRequest) -> str:
        request.tools[0].parameters["vandalised"] = True  # type: ignore[index]
        request.settings.extra["vandalised"] = True  # type: ignore[index]
        return "done"

    model = shoal.testing.ScriptedModel([scribble, scribble])
    assert not model.changes_requests  # the model itself only reads them
    agent = shoal.Agent(name="lead", model=model, tools=[echo],
                        settings=shoal.ModelSettings(extra={"seed": 1}), stream_dispatch=False)
    assert agent.run_sync("go").ok
    streamed = shoal.Agent(name="lead", model=model, tools=[echo])
    assert streamed.run_sync("go").ok
    for changed in (agent, streamed):
        assert "vandalised" not in changed.tool_specs[0].parameters
    assert dict(agent.settings.extra) == {"seed": 1}


def test_a_scripted_model_whose_subclass_answers_itself_gets_copies_again() -> None:
    class Scribbler(shoal.testing.ScriptedModel):
        async def request(self, request: ModelRequest) -> ModelResponse:
            request.tools[0].parameters["vandalised"] = True  # type: ignore[index]
            return await super().request(request)

    model = Scribbler(["done"])
    assert model.changes_requests
    agent = shoal.Agent(name="lead", model=model, tools=[echo])
    assert agent.run_sync("go").ok
    assert "vandalised" not in agent.tool_specs[0].parameters


def test_deepcopy_of_a_request_shares_the_messages_and_copies_the_rest() -> None:
    messages = [UserMessage(f"m{i}") for i in range(1000)]
    request = ModelRequest("i", messages, tools=[ToolSpec("t", "d", {"type": "object"})],
                           output_schema={"type": "object"})
    copied = copy.deepcopy(request)
    assert copied.messages is request.messages
    assert copied.tools[0].parameters == request.tools[0].parameters
    assert copied.tools[0].parameters is not request.tools[0].parameters
    assert copied.output_schema is not request.output_schema
    assert copied == request


def test_deepcopy_of_a_request_copies_nested_schemas_and_settings_all_the_way_down() -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "enum": [["a"], ("b",)]}}}
    extra = {"seed": 1, "stop": ["\n"], "nested": {"deep": [{"x": 1.5, "y": None, "z": True}]}}
    request = ModelRequest("i", [UserMessage("go")], tools=[ToolSpec("t", "d", schema)],
                           settings=ModelSettings(temperature=0.2, extra=extra),
                           output_schema={"anyOf": [{"type": "string"}]})
    copied = copy.deepcopy(request)
    assert copied == request
    copied.tools[0].parameters["properties"]["tags"]["enum"][0].append("vandalised")
    copied.settings.extra["nested"]["deep"][0]["x"] = "vandalised"
    copied.settings.extra["stop"].append("vandalised")
    copied.output_schema["anyOf"][0]["type"] = "vandalised"  # type: ignore[index]
    assert "vandalised" not in repr(request)
    assert copied.settings.temperature == 0.2


def _conversation(n: int) -> list[Any]:
    made: list[Any] = [UserMessage("go")]
    for i in range(n):
        made.append(AssistantMessage(f"thinking {i}", (call("echo", text=str(i)),)))
        made.append(ToolResultMessage(f"c{i}", "echo", str(i), is_error=i % 2 == 0))
    return made


def test_the_turn_digest_is_incremental_but_equals_a_digest_from_scratch() -> None:
    conversation = _conversation(20)
    running = ConversationDigest()
    for end in range(1, len(conversation) + 1):
        request = ModelRequest("be brief", conversation[:end], lineage="lead")
        assert running.of(request) == ConversationDigest().of(request)


def test_the_turn_digest_of_every_kind_of_message_is_the_one_an_earlier_shoal_journaled() -> None:
    # Resume compares each turn's digest with the journal's: a digest computed another way
    # (here, messages written out without their dataclass repr) must give the same value.
    messages: list[Message] = [
        UserMessage("go 'é' \"x\"\n\ud800"),
        AssistantMessage("", (ToolCall("1", "fetch", '{"key": "a"}'),)),
        AssistantMessage("t", (ToolCall("1", "fetch", "{}"), ToolCall("2", "x", "{'"))),
        AssistantMessage("hi"),
        ToolResultMessage("1", "fetch", "v\t", is_error=True),
        ToolResultMessage("2", "x", "ok"), UserMessage("again")]
    running = ConversationDigest()
    digests = [running.of(ModelRequest("be brief", messages[:end], lineage="lead/w#1"))
               for end in range(1, len(messages) + 1)]
    assert digests[0] == "9f540e7fd525e05b3167791a948c0a26"
    assert digests[1] == "5db1ac974196becba3e0c8d8cd1381b5"
    assert digests[-1] == "58d4cdc2d91d9ea44517acfc998ec14a"


def test_the_turn_digest_changes_with_any_part_of_the_request() -> None:
    base = ModelRequest("be brief", _conversation(3), lineage="lead")
    digest = ConversationDigest().of(base)
    changed_message = list(base.messages)
    changed_message[2] = ToolResultMessage("c0", "echo", "0", is_error=False)
    for other in (dataclasses.replace(base, instructions="be long"),
                  dataclasses.replace(base, lineage="lead/sub#1"),
                  dataclasses.replace(base, messages=changed_message),
                  dataclasses.replace(base, messages=base.messages[:-1]),
                  dataclasses.replace(base, output_schema={"type": "string"})):
        assert ConversationDigest().of(other) != digest
