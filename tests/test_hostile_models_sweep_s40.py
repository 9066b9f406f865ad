"""Model providers over real HTTP against a hostile server (session 40 sweep).

Over the real SDKs and the strict wire servers of :mod:`tests.wire`: what a provider's
server answers must end in a typed error or a whole reply, never a raw Python error.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shoal.exceptions import ModelConnectionError, ModelError, ModelHTTPError
from shoal.models import ModelResponse, OpenAIModel, Price
from shoal.models.retry import ModelGate, ModelRetry
from tests.conftest import arun
from tests.test_models_hostile_http import ASK, SERVERS, ask
from tests.test_models_hostile_stream import (
    RawAnthropic,
    RawOpenAI,
    block_delta,
    block_stop,
    message_end,
    message_start,
    openai_stream,
    opening,
    run_agent,
    stream_once,
    tool_block,
)
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    OpenAIWireServer,
    RawReply,
    closed_port_url,
    text_reply,
)
from tests.wire.base import sse


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("year", ["99999", "10000000000"])
def test_a_retry_after_date_past_year_9999_is_a_wait_longer_than_any(
        server_class: type[Any], stream: bool, year: str) -> None:
    # a year past datetime's was an OverflowError raised out of the request (the larger) or
    # read as no header at all (the smaller), so the request was tried again at once
    date = f"Wed, 21 Oct {year} 07:28:00 GMT"
    error = ask(server_class, ErrorReply(429, "slow down", headers={"retry-after": date}),
                stream=stream)
    assert type(error) is ModelHTTPError, repr(error)
    assert error.status == 429
    assert error.retry_after == math.inf


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_usage_count_past_a_floats_range_priced_from_your_table_costs_infinity(
        server_class: type[Any], stream: bool) -> None:
    # priced from the model's own table, a count of 10**400 tokens raised OverflowError out of
    # the request (genai-prices' table priced it at infinity)
    huge = 10**400
    reply = text_reply("hi", input_tokens=huge, output_tokens=huge)
    prices = {"gpt-4.1-mini": Price(1, 2), "claude-haiku-4-5": Price(1, 2)}
    answer = ask(server_class, reply, stream=stream, prices=prices)
    assert isinstance(answer, ModelResponse), repr(answer)
    assert answer.usage.input_tokens == huge and answer.usage.cost == math.inf


def test_a_price_for_counts_past_a_floats_range_is_infinity() -> None:
    assert Price(0.5, 1.5).cost(10**400, 10**400, 10**399, 10**399) == math.inf
    assert Price(0.5, 1.5).cost(2_000_000, 1_000_000) == 2.5
    assert Price(0.0, 0.0).cost(10**400, 10**400) == 0
    assert Price(0.0, 1.0, cache_read=0.0).cost(10**400, 3_000_000, 10**400) == 3.0


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("body", [b'{"id": "chatcmpl-1", "choi', b""], ids=["cut", "nothing"])
def test_a_whole_reply_whose_connection_breaks_says_it_was_lost_not_never_reached(
        server_class: type[Any], body: bytes) -> None:
    # the server answered a head (and part of a body) and reset the connection: the error
    # said "cannot reach 127.0.0.1:...", of a server that had been reached and had answered
    error = ask(server_class, RawReply(body, "application/json", reset=True), stream=False)
    assert type(error) is ModelConnectionError, repr(error)
    assert "cannot reach" not in str(error)
    assert "connection to 127.0.0.1:" in str(error) and " lost: " in str(error)


def test_a_server_that_refuses_the_connection_is_still_not_reached() -> None:
    model = OpenAIModel("gpt-4.1-mini", base_url=closed_port_url() + "/v1", api_key="k")

    async def main() -> Any:
        try:
            return await model.request(ASK)
        finally:
            await model.aclose()

    with pytest.raises(ModelConnectionError, match=r"cannot reach 127\.0\.0\.1:\d+: "
                                                   r"connection refused"):
        arun(main(), timeout=20)


#: a number with more digits than Python reads into an int (4,300)
LONG_NUMBER = "7" * 5_000
WHOLE_REPLIES = {
    OpenAIWireServer: '{"id": "x", "object": "chat.completion", "created": 1, "model": "m", '
                      '"choices": [{"index": 0, "message": {"role": "assistant", "content": '
                      '"hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": %s, '
                      '"completion_tokens": 1, "total_tokens": 1}}',
    AnthropicWireServer: '{"id": "x", "type": "message", "role": "assistant", "model": "m", '
                         '"content": [{"type": "text", "text": "hi"}], "stop_reason": '
                         '"end_turn", "usage": {"input_tokens": %s, "output_tokens": 1}}',
}


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_whole_reply_holding_a_number_too_long_to_read_is_a_model_error(
        server_class: type[Any]) -> None:
    # Python reads no int of more than 4,300 digits: a raw ValueError came out of the request
    body = (WHOLE_REPLIES[server_class] % LONG_NUMBER).encode()
    error = ask(server_class, RawReply(body, "application/json"), stream=False)
    assert type(error) is ModelError, repr(error)
    assert "too long to read" in str(error) and "set_int_max_str_digits" not in str(error)


def test_anthropic_a_stream_event_holding_a_number_too_long_to_read_is_a_model_error() -> None:
    start = message_start().replace('"input_tokens": 5', f'"input_tokens": {LONG_NUMBER}')
    error = stream_once(RawAnthropic, [start, *message_end()])
    assert type(error) is ModelError, repr(error)
    assert "too long to read" in str(error)


def test_anthropic_a_stream_that_reports_no_usage_is_charged_at_least_what_it_says() -> None:
    # without a message_start (some compatible gateways) and no usage in message_delta, the
    # reply counted 0 tokens in and 0 out: 20,000 characters never reached a Budget(tokens=)
    text = "word " * 4_000
    stream = [sse({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": text}}, "content_block_start"),
              block_stop(0),
              sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
                  "message_delta"),
              sse({"type": "message_stop"}, "message_stop")]
    response = stream_once(RawAnthropic, stream)
    assert isinstance(response, ModelResponse), repr(response)
    assert response.text == text
    assert response.usage.input_tokens >= 1
    assert response.usage.output_tokens >= len(text) // 16


def _cut_in_a_call(server_class: type[Any], stop_reason: str) -> list[str]:
    """Each call's message to the model, of a reply that stopped (for ``stop_reason``) inside
    its last call's arguments."""
    if server_class is RawOpenAI:
        stream = openai_stream(opening(0, "call_a", "echo", '{"x": 1}'),
                               opening(1, "call_b", "echo", '{"x": "a long text th'),
                               finish=stop_reason)
    else:
        stream = [message_start(), *tool_block(0, "toolu_a", '{"x": 1}'),
                  *tool_block(1, "toolu_b", '{"x": "a long text th'),
                  sse({"type": "message_delta", "delta": {"stop_reason": stop_reason},
                       "usage": {"output_tokens": 4096}}, "message_delta"),
                  sse({"type": "message_stop"}, "message_stop")]
    result, _ = run_agent(server_class, [stream])
    assert result.output == "done", repr(result)
    return [record.message.content for record in result.calls]


@pytest.mark.parametrize(("server_class", "stop_reason"), [
    (RawOpenAI, "length"), (RawAnthropic, "max_tokens")], ids=["openai", "anthropic"])
def test_a_call_cut_off_at_the_output_cap_tells_the_model_why_its_arguments_broke(
        server_class: type[Any], stop_reason: str) -> None:
    # the model read only "the arguments are not valid JSON (Unterminated string...)", and
    # wrote the same long call again, to be cut off again at the same place
    first, cut = _cut_in_a_call(server_class, stop_reason)
    assert first == "got 1"
    assert cut.startswith("Error: the arguments are not valid JSON")
    assert (f"your reply was cut off at the model's limit of output tokens (stop reason "
            f"{stop_reason!r}) inside this call's arguments") in cut
    assert "ModelSettings(max_tokens=" in cut


@pytest.mark.parametrize(("server_class", "stop_reason"), [
    (RawOpenAI, "tool_calls"), (RawAnthropic, "tool_use")], ids=["openai", "anthropic"])
def test_a_call_whose_arguments_broke_without_a_cut_says_nothing_of_one(
        server_class: type[Any], stop_reason: str) -> None:
    first, broken = _cut_in_a_call(server_class, stop_reason)
    assert first == "got 1"
    assert broken.startswith("Error: the arguments are not valid JSON")
    assert "cut off" not in broken


BAD_UTF8 = b"h\xff\xfei"


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_whole_reply_that_is_not_utf8_is_a_model_error(server_class: type[Any]) -> None:
    # a raw UnicodeDecodeError came out of the request
    body = (WHOLE_REPLIES[server_class] % "1").encode().replace(b'"hi"', b'"' + BAD_UTF8 + b'"')
    error = ask(server_class, RawReply(body, "application/json"), stream=False)
    assert type(error) is ModelError, repr(error)
    assert "not UTF-8" in str(error) and "0xff" in str(error)


def test_anthropic_a_stream_event_that_is_not_utf8_is_a_model_error() -> None:
    # chat completions read such bytes as U+FFFD; the messages API raised UnicodeDecodeError
    start = sse({"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": "@"}}, "content_block_start")
    body = "".join([message_start(), start, block_stop(0), *message_end()]).encode()
    error = ask(AnthropicWireServer, RawReply(body.replace(b'"@"', b'"' + BAD_UTF8 + b'"'),
                                              "text/event-stream"), stream=True)
    assert type(error) is ModelError, repr(error)
    assert "not UTF-8" in str(error) and "0xff" in str(error)


def _completion_with_calls(*calls: dict[str, Any]) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                           "role": "assistant", "content": None, "tool_calls": list(calls)}}],
                       }).encode()


@pytest.mark.parametrize("kind", [{}, {"type": None}], ids=["no-type", "null-type"])
def test_a_whole_replys_call_without_its_type_is_read_as_streamed_ones_are(
        kind: dict[str, Any]) -> None:
    # some compatible servers leave out a call's "type": the call was dropped without a
    # word, the reply read as an empty answer (streamed, the same call was read)
    body = _completion_with_calls({"id": "c1", **kind,
                                   "function": {"name": "echo", "arguments": '{"x": 1}'}})
    answer = ask(OpenAIWireServer, RawReply(body, "application/json"), stream=False)
    assert isinstance(answer, ModelResponse), repr(answer)
    assert [(c.id, c.name, c.arguments) for c in answer.tool_calls] == [
        ("c1", "echo", '{"x": 1}')]


def test_a_whole_replys_call_of_a_type_shoal_never_offers_is_a_model_error_naming_it() -> None:
    body = _completion_with_calls(
        {"id": "c0", "type": "function", "function": {"name": "echo", "arguments": "{}"}},
        {"id": "c1", "type": "custom", "custom": {"name": "echo", "input": "x"}})
    error = ask(OpenAIWireServer, RawReply(body, "application/json"), stream=False)
    assert type(error) is ModelError, repr(error)
    assert "'custom'" in str(error)


def _tool_use_start(given: Any) -> str:
    return sse({"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "echo", "input": given}},
        "content_block_start")


def test_anthropic_a_tool_use_whose_input_comes_whole_in_its_start_keeps_it() -> None:
    # some compatible gateways send the whole input in content_block_start and no
    # input_json_delta: the call ran with {} in its place, without a word
    response = stream_once(RawAnthropic, [message_start(), _tool_use_start({"x": 1}),
                                          block_stop(0), *message_end()])
    assert isinstance(response, ModelResponse), repr(response)
    (call,) = response.tool_calls
    assert json.loads(call.arguments) == {"x": 1}


def test_anthropic_a_tool_use_streamed_as_the_api_does_reads_its_deltas() -> None:
    response = stream_once(RawAnthropic, [message_start(), _tool_use_start({}),
                                          block_delta(0, '{"x": '), block_delta(0, "2}"),
                                          block_stop(0), *message_end()])
    assert isinstance(response, ModelResponse), repr(response)
    assert [c.arguments for c in response.tool_calls] == ['{"x": 2}']


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("header", [{"retry-after": "-1"}, {"retry-after": "0"},
                                    {"retry-after-ms": "-500"},
                                    {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}],
                         ids=["negative", "zero", "negative-ms", "past-date"])
def test_a_retry_after_of_no_wait_still_backs_off(server_class: type[Any],
                                                  header: dict[str, str]) -> None:
    # taken as it was, every retry went at once: a proxy answering 429 with "retry-after: -1"
    # had all of them spent in milliseconds (the SDKs back off then)
    retry = ModelRetry(retries=2, backoff=0.2, max_backoff=1.0, jitter=0.0)
    with server_class([ErrorReply(429, "slow down", headers=header),
                       ErrorReply(429, "slow down", headers=header), text_reply("ok")]) as server:
        model = server.model()
        gate = ModelGate("m", retry=retry)

        async def main() -> Any:
            try:
                return await gate.request(model, ASK)
            finally:
                await model.aclose()

        assert arun(main(), timeout=30).text == "ok"
        at = [r.at for r in server.requests]
    assert [r.status for r in server.requests] == [429, 429, 200]
    assert at[1] - at[0] >= 0.19 and at[2] - at[1] >= 0.39  # backoff 0.2 s, then 0.4 s


#: Gemini's OpenAI-compatible endpoint answers errors as a list of error objects
LISTED_ERROR = (b'[{"error": {"code": 400, "message": "Invalid JSON payload received.", '
                b'"status": "INVALID_ARGUMENT"}}]')


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_error_body_that_lists_its_errors_is_quoted(server_class: type[Any],
                                                       stream: bool) -> None:
    # chat completions said "HTTP 400: Error code: 400": the provider's words were lost
    error = ask(server_class, RawReply(LISTED_ERROR, "application/json", status=400),
                stream=stream)
    assert type(error) is ModelHTTPError, repr(error)
    assert error.status == 400 and "Invalid JSON payload received." in str(error)


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b"12345", b'{"detail": {"why": "boom"}}'])
def test_an_error_body_of_no_known_shape_is_quoted_as_it_came(body: bytes) -> None:
    error = ask(OpenAIWireServer, RawReply(body, "application/json", status=500), stream=False)
    assert type(error) is ModelHTTPError, repr(error)
    assert json.dumps(json.loads(body)) in str(error)
