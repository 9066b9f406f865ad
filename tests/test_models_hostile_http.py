"""Answers off HTTP itself, over the real SDKs: pages in place of replies, trickled bytes.

A proxy's HTML page answered with 200, or a server that ignores ``stream`` and answers a
whole JSON reply, must end the request in a typed ``ModelError`` quoting what came (it was a
raw ``AttributeError``, or a silently empty reply); a server that trickles its answer a byte
at a time must not hold the request past its timeout (the transport's timeout is per read).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shoal.exceptions import ModelConnectionError, ModelError, ShoalError
from shoal.models.base import ModelRequest, ResponseDone, TextDelta, UserMessage
from tests.conftest import arun
from tests.wire import AnthropicWireServer, OpenAIWireServer, RawReply, text_reply
from tests.wire.base import Answer, sse

ASK = ModelRequest("", (UserMessage("hi"),))
SERVERS = [OpenAIWireServer, AnthropicWireServer]
PAGE = b"<html><body>502 from the gateway</body></html>"


def ask(server_class: type[Any], answer: Answer, *, stream: bool,
        timeout: float = 30.0, **options: Any) -> Any:
    """The model's answer to one request (streamed or not) given ``answer``; or its error.

    ``options`` go to the model (``prices=``...).
    """
    with server_class(answer) as server:
        model = server.model(timeout=timeout, **options)

        async def main() -> Any:
            try:
                if not stream:
                    return await model.request(ASK)
                events = [event async for event in model.stream(ASK)]
                assert isinstance(events[-1], ResponseDone)
                return events[-1].response
            finally:
                await model.aclose()

        try:
            return arun(main(), timeout=20)
        except ShoalError as exc:
            return exc


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_html_page_answered_with_200_is_a_model_error_quoting_it(
        server_class: type[Any], stream: bool) -> None:
    # chat completions raised the SDK's AttributeError ('str' object has no attribute
    # 'choices'); streamed, both read no event in it and returned an empty reply
    error = ask(server_class, RawReply(PAGE), stream=stream)
    assert type(error) is ModelError, repr(error)
    assert "502 from the gateway" in str(error)
    assert ("text/html" in str(error)) is stream


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_whole_json_reply_to_a_streamed_request_is_a_model_error(
        server_class: type[Any]) -> None:
    # a server that ignores "stream": its reply was read as an empty stream, and dropped
    body = json.dumps({"choices": [{"message": {"content": "the answer"}}]}).encode()
    error = ask(server_class, RawReply(body, "application/json"), stream=True)
    assert type(error) is ModelError, repr(error)
    assert "not an event stream" in str(error) and "the answer" in str(error)


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize(("stream", "answer"), [
    (False, RawReply(b" " * 2000, "application/json", pause=0.02)),
    (True, RawReply(b":" * 2000, "text/event-stream", pause=0.02)),
    (True, RawReply(b"", "text/event-stream", head_pause=0.02)),
], ids=["whole", "streamed", "head"])
def test_a_server_trickling_bytes_fails_the_request_at_its_timeout(
        server_class: type[Any], stream: bool, answer: RawReply) -> None:
    # each byte came within the transport's read timeout: the request went on for as long
    # as the server kept trickling (here 40 s, past the 20 s the test allows)
    error = ask(server_class, answer, stream=stream, timeout=1.0)
    assert isinstance(error, ModelConnectionError), repr(error)
    assert "within 1 s" in str(error)


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_consumer_slower_than_the_timeout_does_not_fail_the_stream(
        server_class: type[Any]) -> None:
    # the deadline counts while the stream reads, never while its consumer holds an event
    with server_class(text_reply("abc")) as server:
        model = server.model(timeout=1.5)

        async def main() -> str:
            text = ""
            try:
                async for event in model.stream(ASK):
                    if isinstance(event, TextDelta):
                        text += event.text
                        await asyncio.sleep(3.0)
            finally:
                await model.aclose()
            return text

        assert arun(main(), timeout=20) == "abc"


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_stream_cancelled_while_it_reads_is_cancelled_not_stalled(
        server_class: type[Any]) -> None:
    # a cancellation from outside stays one: it is not taken for the deadline's
    answer = RawReply(b":" * 400, "text/event-stream", pause=0.05)
    with server_class(answer) as server:
        model = server.model(timeout=10)

        async def main() -> None:
            try:
                async with asyncio.timeout(1.0):
                    async for _ in model.stream(ASK):
                        pass
            finally:
                await model.aclose()

        with pytest.raises(TimeoutError):
            arun(main(), timeout=20)


@pytest.mark.parametrize(("server_class", "start"), [
    (OpenAIWireServer, sse({"choices": [{"index": 0, "delta": {"content": "hel"}}]})),
    (AnthropicWireServer, sse({"type": "message_start", "message": {
        "model": "c", "usage": {"input_tokens": 1, "output_tokens": 1}}}, "message_start")),
])
def test_a_connection_reset_mid_stream_says_it_was_lost_not_never_reached(
        server_class: type[Any], start: str) -> None:
    # the messages API said "cannot reach 127.0.0.1:...", of a server that had answered
    answer = RawReply(start.encode(), "text/event-stream", reset=True)
    error = ask(server_class, answer, stream=True)
    assert isinstance(error, ModelConnectionError), repr(error)
    assert "connection lost" in str(error) and "cannot reach" not in str(error)


@pytest.mark.parametrize(("server_class", "events", "missing"), [
    (OpenAIWireServer, [sse({"choices": [{"index": 0, "delta": {"content": "The answer"}}]})],
     "no finish_reason and no [DONE]"),
    (AnthropicWireServer, [
        sse({"type": "message_start", "message": {
            "model": "c", "usage": {"input_tokens": 1, "output_tokens": 1}}}, "message_start"),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": "The answer"}}, "content_block_start")],
     "no message_stop event"),
], ids=["openai", "anthropic"])
def test_a_stream_closed_cleanly_before_it_was_complete_is_a_connection_error(
        server_class: type[Any], events: list[str], missing: str) -> None:
    # the server closed the connection after some text, without the provider's end of the
    # reply: the cut text came back as a whole reply (and an agent's answer, status ok)
    answer = RawReply("".join(events).encode(), "text/event-stream")
    error = ask(server_class, answer, stream=True)
    assert isinstance(error, ModelConnectionError), repr(error)
    assert "ended before the provider said it was complete" in str(error)
    assert missing in str(error)


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_model_without_a_timeout_still_answers(server_class: type[Any], stream: bool) -> None:
    # timeout=None (no limit, as the SDKs take it) must not fail on the deadline's arithmetic
    with server_class(text_reply("abc")) as server:
        model = server.model(timeout=None)

        async def main() -> str:
            try:
                if not stream:
                    return str((await model.request(ASK)).text)
                events = [event async for event in model.stream(ASK)]
                assert isinstance(events[-1], ResponseDone)
                return events[-1].response.text
            finally:
                await model.aclose()

        assert arun(main(), timeout=20) == "abc"
