"""What a model or a tool sends that the next request cannot carry, over the real SDKs and HTTP.

Lone surrogates, ``NaN`` in a model's arguments, a result of 10 MB, a reply with nothing in it:
each used to end the run (the SDK failed to encode the next request) or went whole into every
later request. Now the run goes on, and the model reads text a provider accepts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import shoal
from shoal.agents.toolcalls import MAX_RESULT_CHARS
from shoal.exceptions import OutputValidationError
from tests.conftest import arun
from tests.wire import AnthropicWireServer, OpenAIWireServer, call, text_reply, tool_call_reply

SERVERS = [OpenAIWireServer, AnthropicWireServer]
seen: list[Any] = []


@shoal.tool
async def echo(x: Any = None) -> str:
    """Say what came in."""
    seen.append(x)
    return f"got {x}"


@shoal.tool
async def broken_text() -> str:
    """Text with a lone surrogate (say, file names decoded with surrogateescape)."""
    return "name: \udcff.txt"


@shoal.tool
async def huge() -> str:
    """A result of 10 MB."""
    return "z" * 10_000_000


def answered(server: Any) -> list[dict[str, Any]]:
    """The messages of every request after the first (the ones carrying tool results)."""
    return [r.body["messages"] for r in server.requests[1:]]


def run(server_class: Any, first: Any, *, then: Any = None) -> tuple[Any, Any]:
    """Run an agent whose model answers ``first``, then ``then`` (default: "done")."""
    replies = [first, then or text_reply("done")]
    with server_class(replies) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo, broken_text, huge])

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        result = arun(main(), timeout=120)
        assert not server.errors
        return result, server


@pytest.mark.parametrize("server_class", SERVERS)
def test_lone_surrogates_in_a_models_arguments_do_not_end_the_run(server_class: Any) -> None:
    seen.clear()
    result, server = run(server_class, tool_call_reply(call("echo", '{"x": "a\\ud800b"}')))
    assert result.output == "done" and seen == ["a\ud800b"]  # the tool got what was sent
    assert "\ufffd" in json.dumps(answered(server), ensure_ascii=False)


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_tool_result_with_lone_surrogates_reaches_the_model(server_class: Any) -> None:
    result, server = run(server_class, tool_call_reply(call("broken_text")))
    assert result.output == "done"
    assert "name: \ufffd.txt" in json.dumps(answered(server), ensure_ascii=False)
    assert result.calls[0].outcome.value == "name: \udcff.txt"  # the outcome keeps it whole


def test_nan_in_a_models_arguments_does_not_end_the_run() -> None:
    seen.clear()
    # Anthropic's tool input is an object that is sent back with the next request
    result, server = run(AnthropicWireServer, tool_call_reply(call("echo", '{"x": NaN}')))
    assert result.output == "done" and str(seen[0]) == "nan"
    assert '"NaN"' in json.dumps(answered(server))


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_huge_result_reaches_the_model_cut_saying_so(server_class: Any) -> None:
    result, server = run(server_class, tool_call_reply(call("huge")))
    assert result.output == "done"
    sent = json.dumps(answered(server))
    assert MAX_RESULT_CHARS < len(sent) < MAX_RESULT_CHARS + 1000
    assert "[... 9900000 more characters cut: the result is too long]" in sent
    assert len(result.calls[0].outcome.value) == 10_000_000


@pytest.mark.parametrize("server_class", SERVERS)
def test_an_empty_reply_is_sent_back_and_the_model_answers_again(server_class: Any) -> None:
    result, server = run(server_class, text_reply(""), then=text_reply("the answer"))
    assert result.output == "the answer"
    assert "Your reply was empty" in json.dumps(server.requests[1].body["messages"])


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_model_that_only_ever_answers_nothing_ends_in_a_typed_error(
        server_class: Any) -> None:
    with server_class(text_reply("")) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, output_retries=1)

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        with pytest.raises(OutputValidationError, match="did not fit an answer after 1 retries: "
                                                        "the reply was empty"):
            arun(main(), timeout=120)
        assert len(server.requests) == 2
