"""Streams and replies off the wire protocol, over the real SDKs and HTTP: never a crash.

A server that speaks chat completions or the messages API badly (arguments that are not JSON,
a stream cut short, tool call indexes out of order or reused, events for a block never
started) must end each call as a recorded failure, or the turn in a typed ``ModelError``; no
call may run twice, and no sibling's result may be lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal.exceptions import ModelConnectionError, ModelError, ModelHTTPError, ShoalError
from shoal.models.base import ModelRequest, ModelResponse, ToolSpec, UserMessage
from tests.conftest import arun
from tests.wire import AnthropicWireServer, OpenAIWireServer, Reply, text_reply
from tests.wire.base import sse

ran: list[Any] = []


@shoal.tool
async def echo(x: Any = None) -> str:
    """Say what came in."""
    ran.append(x)
    return f"got {x}"


class RawStreams:
    """A wire server whose streamed answers are given as raw SSE events, one list a request.

    ``None`` in place of a list streams the scripted reply as the real provider would.
    """

    raw: list[list[str] | None]

    def render_events(self, body: dict[str, Any], reply: Reply) -> Iterator[str]:
        events = self.raw.pop(0) if self.raw else None
        if events is None:
            yield from super().render_events(body, reply)  # type: ignore[misc]
        else:
            yield from events


class RawOpenAI(RawStreams, OpenAIWireServer):
    """Chat completions with raw streams."""


class RawAnthropic(RawStreams, AnthropicWireServer):
    """The messages API with raw streams."""


HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4.1-mini"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> str:
    """One chat completion chunk."""
    return sse({**HEAD, "choices": [{"index": 0, "delta": delta or {},
                                     "finish_reason": finish}]})


def opening(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    """The first delta of a tool call."""
    return {"tool_calls": [{"index": index, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}


def more(index: int, arguments: str) -> dict[str, Any]:
    """A later delta of a tool call: a piece of its arguments."""
    return {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}


def openai_stream(*deltas: dict[str, Any], finish: str | None = "tool_calls",
                  done: bool = True) -> list[str]:
    """A whole stream: the role, ``deltas``, the finish reason, and ``[DONE]``."""
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk(delta) for delta in deltas]
    if finish is not None:
        events.append(chunk({}, finish))
    return [*events, sse("[DONE]")] if done else events


def run_agent(server_class: type[Any], raw: list[list[str] | None],
              then: Any = None) -> tuple[Any, Any]:
    """Run an agent whose model streams ``raw`` (then answers ``then``, default "done")."""
    ran.clear()
    replies = [text_reply("unused") for _ in raw] + [then or text_reply("done")]
    with server_class(replies) as server:
        server.raw = list(raw)
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo], max_turns=4)

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        try:
            return arun(main(), timeout=60), server
        except ShoalError as exc:  # the agent's error, or the model's
            return exc, server


def sent_back(server: Any) -> str:
    """The messages of every request after the first, as JSON text."""
    return json.dumps([r.body["messages"] for r in server.requests[1:]])


# ---- chat completions ------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", ['{"x": ', "not json", "[" * 10_000 + "]" * 10_000,
                                       '{"x": "\x00\x01"', '"just a string"'],
                         ids=["truncated", "not-json", "deep", "control", "not-object"])
def test_arguments_that_do_not_parse_fail_their_call_and_the_run_goes_on(
        arguments: str) -> None:
    stream = openai_stream(opening(0, "call_a", "echo", arguments),
                           opening(1, "call_b", "echo", '{"x": 2}'))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert ran == [2]  # the sibling ran, and its result went back
    assert "got 2" in sent_back(server) and "call_a" in sent_back(server)


def test_a_ten_megabyte_argument_reaches_the_tool() -> None:
    big = "y" * 10_000_000
    stream = openai_stream(opening(0, "call_a", "echo", json.dumps({"x": big})))
    result, _ = run_agent(RawOpenAI, [stream])
    assert result.output == "done" and ran == [big]


UNKNOWN_NAMES = ["nope", "ec\x00ho", "ec\ud800ho", "<b>echo</b>", "", "x" * 200,
                 "ta\u0308b.le"]
#: What the APIs accept as a tool name (OpenAI: 64 characters at most; Anthropic: 128).
API_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def names_sent_back(server: Any) -> list[str]:
    """The tool call names in the history of every request after the first."""
    names = []
    for request in server.requests[1:]:
        for message in request.body["messages"]:
            names += [c["function"]["name"] for c in message.get("tool_calls") or ()]
            content = message["content"] if isinstance(message["content"], list) else []
            names += [b["name"] for b in content if b["type"] == "tool_use"]
    return names


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_a_tool_not_offered_is_answered_with_an_error_and_the_run_goes_on(name: str) -> None:
    stream = openai_stream(opening(0, "call_a", name, "{}"),
                           opening(1, "call_b", "echo", '{"x": 2}'))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert ran == [2]
    assert "there is no tool named" in sent_back(server)
    # the name went back as written, which the API refuses (and every later request)
    names = names_sent_back(server)
    assert len(names) == 2 and all(API_TOOL_NAME.fullmatch(n) for n in names), names
    if name == "x" * 200:  # the model is still told the name it used, cut
        assert "xxxxxxxxxx" in sent_back(server)


def test_a_stream_that_ends_without_a_finish_reason_or_done_is_retried_as_cut() -> None:
    # it was taken as it stood: a reply cut by a closed connection came back whole. The
    # retry streams the call again; the agent keeps the one it started, which ran once.
    call = opening(0, "call_a", "echo", '{"x": 1}')
    result, server = run_agent(RawOpenAI, [openai_stream(call, finish=None, done=False),
                                           openai_stream(call)])
    assert result.output == "done" and ran == [1]
    assert len(server.requests) == 3  # the cut one, its retry, the turn after the call


def test_a_stream_with_a_finish_reason_but_no_done_is_complete() -> None:
    # some compatible servers never send [DONE] (llama.cpp before 2024-09): the finish
    # reason says the reply is whole
    stream = openai_stream(opening(0, "call_a", "echo", '{"x": 1}'), done=False)
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done" and ran == [1] and len(server.requests) == 2


def test_a_final_answer_cut_mid_text_is_retried_not_taken_as_the_answer() -> None:
    # the connection closed after some text: the cut answer was the run's output, status ok
    cut = [chunk({"role": "assistant", "content": ""}), chunk({"content": "The answer is 4"})]
    result, server = run_agent(RawOpenAI, [cut])
    assert result.output == "done" and len(server.requests) == 2, repr(result)


def test_an_sse_line_that_is_not_json_is_a_typed_model_error() -> None:
    stream = [chunk({"role": "assistant", "content": ""}), "data: {not json\n\n"]
    result, _ = run_agent(RawOpenAI, [stream])
    assert isinstance(result, ModelError), repr(result)
    assert "malformed stream data" in str(result)


@pytest.mark.parametrize("payload", [{"choices": "x"}, {"choices": ["x"]},
                                     {"choices": [{"delta": "x"}]},
                                     {"choices": [{"delta": {"tool_calls": "x"}}]},
                                     {"choices": [{"delta": {"tool_calls": [5]}}]}],
                         ids=["choices", "choice", "delta", "tool_calls", "tool_call"])
def test_a_chunk_of_the_wrong_shape_is_a_typed_model_error(payload: dict[str, Any]) -> None:
    stream = [chunk({"role": "assistant", "content": ""}), sse({**HEAD, **payload})]
    result, _ = run_agent(RawOpenAI, [stream])
    assert isinstance(result, ModelError), repr(result)
    assert "malformed stream chunk" in str(result)


def test_arguments_sent_as_an_object_are_read_as_json() -> None:
    # some compatible servers send the arguments as an object, not as JSON text
    part = {"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "echo", "arguments": {"x": 1}}}
    result, _ = run_agent(RawOpenAI, [openai_stream({"tool_calls": [part]})])
    assert result.output == "done" and ran == [1]


def test_calls_that_all_reuse_index_zero_each_run_once() -> None:
    # some compatible servers send each parallel call whole, every one at index 0
    stream = openai_stream(opening(0, "call_a", "echo", '{"x": 1}'),
                           opening(0, "call_b", "echo", '{"x": 2}'),
                           opening(0, "call_c", "echo", '{"x": 3}'))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert sorted(ran) == [1, 2, 3]
    assert all(f"got {n}" in sent_back(server) for n in (1, 2, 3))


def test_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    # one call in pieces that each repeat its id, then a call sent whole
    def part(call_id: str, arguments: str, name: str | None = None) -> dict[str, Any]:
        function = {"arguments": arguments, **({"name": name} if name else {})}
        return {"tool_calls": [{"id": call_id, "type": "function", "function": function}]}

    stream = openai_stream(part("call_a", '{"x"', "echo"), part("call_a", ": 1}"),
                           part("call_b", '{"x": 2}', "echo"))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert sorted(ran) == [1, 2] and "got 1" in sent_back(server)


def test_calls_whose_indexes_come_out_of_order_each_run_once_whole() -> None:
    # index 2 then 3 then 1: it ran index 3's call twice (as positions 1 and 2) and never 1's
    stream = openai_stream(opening(2, "call_c", "echo", '{"x": 3}'),
                           opening(3, "call_d", "echo", '{"x": 4}'),
                           opening(1, "call_b", "echo", '{"x": 2}'))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert sorted(ran) == [2, 3, 4]
    assert all(f"got {n}" in sent_back(server) for n in (2, 3, 4))


def test_arguments_for_a_call_after_the_next_began_fail_only_that_call() -> None:
    # held up: the first call is complete once the next begins; it ran (and failed) with the
    # arguments it had then, which the conversation carries too; the sibling ran once
    stream = openai_stream(opening(0, "call_a", "echo", '{"x"'),
                           opening(1, "call_b", "echo", '{"x": 2}'),
                           more(0, ': 1}'))
    result, server = run_agent(RawOpenAI, [stream])
    assert result.output == "done", result
    assert ran == [2] and "not valid JSON" in sent_back(server)


# ---- the messages API ------------------------------------------------------------------------


def message_start() -> str:
    """The ``message_start`` event."""
    return sse({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1}}}, "message_start")


def block_start(index: int, call_id: str, name: str) -> str:
    """A ``tool_use`` block's start."""
    return sse({"type": "content_block_start", "index": index, "content_block": {
        "type": "tool_use", "id": call_id, "name": name, "input": {}}}, "content_block_start")


def block_delta(index: int, partial: str) -> str:
    """A piece of a ``tool_use`` block's input."""
    return sse({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": partial}},
               "content_block_delta")


def block_stop(index: int) -> str:
    """A block's end."""
    return sse({"type": "content_block_stop", "index": index}, "content_block_stop")


def message_end() -> list[str]:
    """``message_delta`` (stop reason, usage) and ``message_stop``."""
    return [sse({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": 9}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


def tool_block(index: int, call_id: str, arguments: str, name: str = "echo") -> list[str]:
    """A whole ``tool_use`` block."""
    return [block_start(index, call_id, name), block_delta(index, arguments), block_stop(index)]


def test_anthropic_arguments_that_do_not_parse_fail_their_call_only() -> None:
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": '),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, server = run_agent(RawAnthropic, [stream])
    assert result.output == "done", result
    assert ran == [2] and "got 2" in sent_back(server)


def test_anthropic_events_for_a_block_never_started_are_a_typed_model_error() -> None:
    # they were dropped without a word: the model's arguments for that block were lost
    stream = [message_start(), block_delta(3, '{"x": 1}'), block_stop(3), *message_end()]
    result, _ = run_agent(RawAnthropic, [stream])
    assert isinstance(result, ModelError), repr(result)
    assert "which was never started" in str(result)


def test_anthropic_a_block_stopped_twice_runs_its_call_once() -> None:
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": 1}'), block_stop(0),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, _ = run_agent(RawAnthropic, [stream])
    assert result.output == "done" and sorted(ran) == [1, 2]


def test_anthropic_a_block_index_used_again_after_its_stop_is_a_call_of_its_own() -> None:
    # the second start replaced the first call, which had run; the second never ran
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": 1}'),
              *tool_block(0, "toolu_b", '{"x": 2}'), *message_end()]
    result, server = run_agent(RawAnthropic, [stream])
    assert result.output == "done", result
    assert sorted(ran) == [1, 2] and "got 1" in sent_back(server) and "got 2" in sent_back(server)


def test_anthropic_a_block_started_again_before_its_stop_is_a_typed_model_error() -> None:
    stream = [message_start(), block_start(0, "toolu_a", "echo"),
              *tool_block(0, "toolu_b", '{"x": 2}'), *message_end()]
    result, _ = run_agent(RawAnthropic, [stream])
    assert isinstance(result, ModelError), repr(result)
    assert "started again before it stopped" in str(result)


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_anthropic_a_tool_not_offered_is_answered_and_the_run_goes_on(name: str) -> None:
    stream = [message_start(), *tool_block(0, "toolu_a", "{}", name=name),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, server = run_agent(RawAnthropic, [stream])
    assert result.output == "done", result
    assert ran == [2] and "there is no tool named" in sent_back(server)
    names = names_sent_back(server)
    assert len(names) == 2 and all(API_TOOL_NAME.fullmatch(n) for n in names), names


def test_anthropic_a_stream_cut_before_message_stop_is_retried_as_cut() -> None:
    # it was taken as it stood; the retry streams the call again, which runs once
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": 1}')]
    result, server = run_agent(RawAnthropic, [stream, [*stream, *message_end()]])
    assert result.output == "done" and ran == [1]
    assert len(server.requests) == 3  # the cut one, its retry, the turn after the call


def test_anthropic_a_final_answer_cut_mid_text_is_retried_not_taken_as_it_is() -> None:
    # the connection closed after some text: the cut answer was the run's output, status ok
    cut = [message_start(),
           sse({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}, "content_block_start"),
           sse({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "The answer is 4"}},
               "content_block_delta")]
    result, server = run_agent(RawAnthropic, [cut])
    assert result.output == "done" and len(server.requests) == 2, repr(result)


def test_anthropic_a_block_never_stopped_still_runs_once() -> None:
    stream = [message_start(), block_start(0, "toolu_a", "echo"), block_delta(0, '{"x": 1}'),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, _ = run_agent(RawAnthropic, [stream])
    assert result.output == "done", result
    assert sorted(ran) == [1, 2]


@pytest.mark.parametrize(("events", "said"), [
    (["event: content_block_delta\ndata: {not json\n\n"], "malformed stream data"),
    ([sse({"type": "content_block_start", "index": 0}, "content_block_start")],
     "'content_block_start' event of the wrong shape"),
    ([block_start(0, "toolu_a", "echo"),
      sse({"type": "content_block_delta", "index": 0}, "content_block_delta")],
     "'content_block_delta' event of the wrong shape"),
    ([block_start(0, "toolu_a", "echo"),
      sse({"type": "content_block_delta", "index": 0,
           "delta": {"type": "input_json_delta", "partial_json": 5}}, "content_block_delta"),
      block_stop(0)], "partial_json of block 0 is not text"),
], ids=["not-json", "no-block", "no-delta", "partial-not-text"])
def test_anthropic_an_event_of_the_wrong_shape_is_a_typed_model_error(
        events: list[str], said: str) -> None:
    # it ended the agent with the SDK's or Python's own error (AttributeError, TypeError...)
    result, _ = run_agent(RawAnthropic, [[message_start(), *events]])
    assert isinstance(result, ModelError), repr(result)
    assert said in str(result)


@pytest.mark.parametrize("depth", [200, 990])
def test_anthropic_arguments_nested_deep_but_readable_do_not_end_the_run(depth: int) -> None:
    # the input goes back in the next request as an object: writing it must not fail
    deep = "[" * depth + "]" * depth
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": ' + deep + "}"),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, server = run_agent(RawAnthropic, [stream])
    assert result.output == "done", repr(result)
    assert 2 in ran and "got 2" in sent_back(server)


# ---- whole replies (not streamed) ----------------------------------------------------------

ASK = ModelRequest("", (UserMessage("hi"),),
                   tools=(ToolSpec("echo", "", {"type": "object", "properties": {}}),))


def request_once(server_class: type[Any], answer: dict[str, Any]) -> Any:
    """``model.request`` of a server whose reply is ``answer`` (raw JSON); or its error."""
    with server_class(answer) as server:
        model = server.model()

        async def main() -> Any:
            try:
                return await model.request(ASK)
            finally:
                await model.aclose()

        try:
            return arun(main(), timeout=30)
        except ShoalError as exc:
            return exc


def completion(**choice: Any) -> dict[str, Any]:
    """A chat completion with one choice holding ``choice``."""
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", **choice}]}


@pytest.mark.parametrize("answer", [
    {**completion(), "choices": "x"}, {**completion(), "choices": ["x"]}, completion(),
    completion(message={"role": "assistant", "tool_calls": ["x"]}),
    completion(message={"role": "assistant", "tool_calls": [{"id": "a", "type": "function"}]}),
], ids=["choices", "choice", "no-message", "call", "no-function"])
def test_a_completion_of_the_wrong_shape_is_a_typed_model_error(answer: dict[str, Any]) -> None:
    # it raised the AttributeError of the SDK's unchecked objects
    error = request_once(OpenAIWireServer, answer)
    assert isinstance(error, ModelError), repr(error)
    assert "malformed response" in str(error)


def test_a_completions_arguments_and_text_sent_as_objects_are_read_as_json_text() -> None:
    # the ToolCall's arguments were the dict itself (not text), which failed when parsed
    call = {"id": "a", "type": "function", "function": {"name": "echo", "arguments": {"x": 1}}}
    response = request_once(OpenAIWireServer, completion(
        message={"role": "assistant", "content": {"a": 1}, "tool_calls": [call]}))
    assert response.tool_calls[0].parsed_arguments() == {"x": 1}
    assert response.text == '{"a": 1}'


MESSAGE = {"id": "m", "type": "message", "role": "assistant", "model": "c",
           "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}


@pytest.mark.parametrize("answer", [
    {**MESSAGE, "content": "x"}, {**MESSAGE, "content": ["x"]}, {},
], ids=["content", "block", "empty"])
def test_a_message_of_the_wrong_shape_is_a_typed_model_error(answer: dict[str, Any]) -> None:
    error = request_once(AnthropicWireServer, answer)
    assert isinstance(error, ModelError), repr(error)
    assert "malformed response" in str(error)


def test_a_message_without_usage_is_unreported_usage_charged_at_least() -> None:
    # it was a ModelError ("malformed response"); a reply without usage is unreported usage,
    # charged at least what it says, on every provider and mode (OpenAI's, both streams)
    response = request_once(AnthropicWireServer, {**MESSAGE, "content": [], "usage": None})
    assert isinstance(response, ModelResponse), repr(response)
    assert response.usage.input_tokens >= 1


@pytest.mark.parametrize("server_class", [OpenAIWireServer, AnthropicWireServer])
def test_a_stream_that_stalls_ends_in_a_connection_error_saying_so(
        server_class: type[Any]) -> None:
    # chat completions said only "connection lost: " (httpx's ReadTimeout has no text)
    with server_class(text_reply("a b c d", chunk_delay=5)) as server:
        model = server.model(timeout=0.5)

        async def main() -> None:
            try:
                async for _ in model.stream(ASK):
                    pass
            finally:
                await model.aclose()

        with pytest.raises(ModelConnectionError, match=r"within 0\.5 s"):
            arun(main(), timeout=30)


# ---- fields of the wrong type ---------------------------------------------------------------

CALL = {"id": "a", "type": "function", "function": {"name": "echo", "arguments": "{}"}}
SAID = {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize(("answer", "said"), [
    ({**completion(message=SAID), "model": 5}, "model is 5"),
    (completion(message=SAID, finish_reason=7), "finish_reason is 7"),
    (completion(message={"role": "assistant", "tool_calls": [{**CALL, "id": 5}]}),
     "a tool call's id is 5"),
], ids=["model", "finish", "id"])
def test_a_completions_field_of_the_wrong_type_is_a_model_error_naming_it(
        answer: dict[str, Any], said: str) -> None:
    # the number went on as the response's model, stop reason or call id (an id the next
    # request then sent back as a number)
    error = request_once(OpenAIWireServer, answer)
    assert isinstance(error, ModelError), repr(error)
    assert said in str(error)


BLOCK = {"type": "tool_use", "id": "toolu_a", "name": "echo", "input": {}}


@pytest.mark.parametrize(("answer", "said"), [
    ({**MESSAGE, "model": 5, "content": []}, "model is 5"),
    ({**MESSAGE, "stop_reason": 5, "content": []}, "stop_reason is 5"),
    ({**MESSAGE, "content": [{**BLOCK, "id": None}]}, "id is None"),
    ({**MESSAGE, "content": [{**BLOCK, "id": 5}]}, "id is 5"),
    ({**MESSAGE, "content": [{**BLOCK, "name": ["echo"]}]}, "name is ['echo']"),
], ids=["model", "stop", "no-id", "id", "name"])
def test_a_messages_field_of_the_wrong_type_is_a_model_error_naming_it(
        answer: dict[str, Any], said: str) -> None:
    # a call with id None or a list for its name went on to the agent as it was
    error = request_once(AnthropicWireServer, answer)
    assert isinstance(error, ModelError), repr(error)
    assert "malformed response" in str(error) and said in str(error)


@pytest.mark.parametrize(("events", "said"), [
    ([sse({**HEAD, "model": 5, "choices": []})], "model is int"),
    ([chunk({"content": "hi"}, 7)], "finish_reason is int"),  # type: ignore[arg-type]
    (openai_stream({"tool_calls": [{"index": 0, "id": 5, "type": "function",
                                    "function": {"name": "echo", "arguments": "{}"}}]}),
     "id is int"),
    (openai_stream({"tool_calls": [{"index": "0", "id": "c", "type": "function",
                                    "function": {"name": "echo", "arguments": "{}"}}]}),
     "index is str"),
], ids=["model", "finish", "id", "index"])
def test_a_chunks_field_of_the_wrong_type_is_a_model_error_naming_it(
        events: list[str], said: str) -> None:
    # the id was replaced by one made up, silently; "0" read as no index at all; the
    # number went on as text
    result, _ = run_agent(RawOpenAI, [events])
    assert isinstance(result, ModelError), repr(result)
    assert "malformed stream chunk" in str(result) and said in str(result)


def stream_once(server_class: type[Any], events: list[str]) -> Any:
    """``model.stream`` of a server streaming ``events``: its last event's response, or error."""
    with server_class(text_reply("unused")) as server:
        server.raw = [events]
        model = server.model()

        async def main() -> Any:
            try:
                return [event async for event in model.stream(ASK)][-1].response
            finally:
                await model.aclose()

        try:
            return arun(main(), timeout=30)
        except ShoalError as exc:
            return exc


@pytest.mark.parametrize("error", ["upstream fell over", ["a", "b"], 5])
def test_an_error_in_a_stream_that_is_no_object_is_an_error_still(error: Any) -> None:
    # {"error": "..."} was a chunk with nothing in it: the reply ended empty, and silently
    result = stream_once(RawOpenAI, [chunk({"content": ""}), sse({"error": error})])
    assert isinstance(result, ModelHTTPError), repr(result)
    assert result.status == 500 and "the stream reported an error" in str(result)


@pytest.mark.parametrize("code", [True, 7, 10**6])
def test_an_error_code_in_a_stream_that_is_no_http_status_is_a_500(code: Any) -> None:
    # true was status True ("HTTP True"), 7 a status no retry could tell
    result = stream_once(RawOpenAI, [sse({"error": {"message": "x", "code": code}})])
    assert isinstance(result, ModelHTTPError), repr(result)
    assert result.status == 500 and type(result.status) is int


@pytest.mark.parametrize(("event", "said"), [
    (sse({"type": "message_start", "message": {"model": 5, "usage": {
        "input_tokens": 1, "output_tokens": 1}}}, "message_start"), "model is 5"),
    (sse({"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "name": "echo", "input": {}}}, "content_block_start"), "id is None"),
    (sse({"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_a", "name": 5, "input": {}}}, "content_block_start"),
     "name is 5"),
    (sse({"type": "message_delta", "delta": {"stop_reason": 5},
          "usage": {"output_tokens": 1}}, "message_delta"), "stop_reason is 5"),
], ids=["model", "no-id", "name", "stop"])
def test_anthropic_an_events_field_of_the_wrong_type_is_a_model_error_naming_it(
        event: str, said: str) -> None:
    result, _ = run_agent(RawAnthropic, [[message_start(), event, block_stop(0)]])
    assert isinstance(result, ModelError), repr(result)
    assert "the stream broke the protocol" in str(result) and said in str(result)


def test_anthropic_text_that_is_a_number_is_a_model_error_not_a_type_error() -> None:
    # the TypeError of joining the text escaped from the model, after a TextDelta(5)
    text = [sse({"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            sse({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": 5}}, "content_block_delta")]
    result, _ = run_agent(RawAnthropic, [[message_start(), *text, *message_end()]])
    assert isinstance(result, ModelError), repr(result)
    assert "text_delta's text is 5" in str(result)
