"""Round 2 of the session 40 hostile sweep: usage, tool-call ids, open runs.

Real parts only: the strict wire servers of :mod:`tests.wire` over the real SDKs, real
runtimes and stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError, ModelError, ShoalError
from shoal.models import ModelResponse
from tests.conftest import arun
from tests.test_models_hostile_stream import (
    MESSAGE,
    RawAnthropic,
    block_stop,
    echo,
    message_end,
    ran,
    request_once,
    stream_once,
)
from tests.wire import (
    AnthropicWireServer,
    OpenAIWireServer,
    call,
    text_reply,
    tool_call_reply,
)
from tests.wire.base import sse

SERVERS = [OpenAIWireServer, AnthropicWireServer]


@pytest.mark.parametrize("usage", [None, "absent"])
def test_an_anthropic_message_without_usage_is_charged_at_least_what_it_says(
        usage: Any) -> None:
    # a whole Anthropic reply with no usage was a ModelError ("malformed response"), while
    # OpenAI's and both streams charge the lower bound: one decision on every provider/mode
    text = "word " * 4_000
    answer: dict[str, Any] = {**MESSAGE, "content": [{"type": "text", "text": text}],
                              "usage": usage}
    if usage == "absent":
        del answer["usage"]
    response = request_once(AnthropicWireServer, answer)
    assert isinstance(response, ModelResponse), repr(response)
    assert response.text == text
    assert response.usage.input_tokens >= 1
    assert response.usage.output_tokens >= len(text) // 16


def test_an_anthropic_stream_whose_message_start_has_no_usage_is_charged_at_least() -> None:
    # a message_start with "usage": null (a compatible gateway) was "malformed response"
    start = sse({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": None}},
        "message_start")
    text = "word " * 400
    stream = [start, sse({"type": "content_block_start", "index": 0,
                          "content_block": {"type": "text", "text": text}},
                         "content_block_start"),
              block_stop(0), *message_end()]
    response = stream_once(RawAnthropic, stream)
    assert isinstance(response, ModelResponse), repr(response)
    assert response.text == text
    assert response.usage.input_tokens >= 1
    assert response.usage.output_tokens == 9  # what message_delta reported stands


def _agent_error(server_class: type[Any], *replies: Any) -> Any:
    """The error (or result) of an agent with the echo tool whose model answers ``replies``."""
    ran.clear()
    with server_class(list(replies)) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo], max_turns=4)

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        try:
            return arun(main(), timeout=60)
        except ShoalError as exc:
            return exc


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_providers_absurd_token_count_is_blamed_on_its_server(server_class: Any) -> None:
    # the message ended "a custom model's Usage must count what the request used": nothing
    # a user of a provider's model can do; the provider's server reported it
    error = _agent_error(server_class, text_reply("hi", input_tokens=10**16))
    assert type(error) is ModelError, repr(error)
    said = str(error)
    assert "input_tokens=10000000000000000" in said
    assert "custom model" not in said
    assert "server" in said and error.model in said


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_call_ids_that_differ_only_by_lone_surrogates_stay_distinct_once_sent(
        server_class: Any, stream: bool) -> None:
    # both ids became "a\ufffd" once made sendable: two results under one id, which the
    # provider refuses (the wire server's 400 ended the run)
    reply = tool_call_reply(call("echo", {"x": 1}, id="a\ud800"),
                            call("echo", {"x": 2}, id="a\udbff"))
    if stream:
        server = server_class([reply, text_reply("done")])
        with server:
            model = server.model()
            agent = shoal.Agent(name="a", model=model, tools=[echo], max_turns=4,
                                stream_dispatch=True)

            async def main() -> Any:
                try:
                    return await agent.run("go")
                finally:
                    await model.aclose()

            ran.clear()
            result = arun(main(), timeout=60)
    else:
        result = _agent_error(server_class, reply, text_reply("done"))
    assert not isinstance(result, ShoalError), repr(result)
    assert result.output == "done"
    assert sorted(ran) == [1, 2]


# ---- open runs ------------------------------------------------------------------------


@shoal.tool
async def unit(label: Any = None) -> str:
    """Answer at once (after one turn of the loop)."""
    await asyncio.sleep(0)
    return f"u{label}"


def _broken_ids() -> Iterator[str]:
    yield "unit#1"
    raise ValueError("the feeder's generator broke")


def test_cancel_given_nodes_whose_reading_raises_is_a_typed_error_and_the_run_goes_on(
) -> None:
    # run.cancel(generator) raised the generator's own ValueError, where after=generator
    # says "after= could not be read"; the nodes it had read were not cancelled either way
    async def main() -> tuple[str, dict[str, str]]:
        async with shoal.Runtime().open_run() as run:
            run.call(unit, label=1)
            with pytest.raises(ConfigError) as raised:
                run.cancel(_broken_ids())
            run.call(unit, label=2)
        return str(raised.value), {k: o.status for k, o in run.result.outcomes.items()}

    said, statuses = arun(main(), timeout=30)
    assert "cancel() could not read the nodes it was given" in said
    assert "ValueError: the feeder's generator broke" in said
    assert statuses == {"unit#1": "ok", "unit#2": "ok"}
