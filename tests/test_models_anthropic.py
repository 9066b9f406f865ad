"""AnthropicModel through the real anthropic SDK, over HTTP, against a Messages wire server."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shoal.exceptions import ModelConnectionError, ModelError, ModelHTTPError, install_hint
from shoal.models.anthropic import AnthropicModel
from shoal.models.base import (
    AssistantMessage,
    ModelRequest,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)
from tests.conftest import arun
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    call,
    closed_port_url,
    text_reply,
    tool_call_reply,
)

pytest_plugins = ["tests.wire.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
SEARCH = ToolSpec("search", "Search the web.",
                  {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]})


def ask(text: str = "hello", **fields: Any) -> ModelRequest:
    return ModelRequest("You are terse.", [UserMessage(text)], **fields)


async def collect(model: AnthropicModel, request: ModelRequest) -> list[StreamEvent]:
    return [event async for event in model.stream(request)]


def done_of(events: list[StreamEvent]) -> ResponseDone:
    assert isinstance(events[-1], ResponseDone)
    return events[-1]


def test_plain_text(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = text_reply("Hi there.")
    response = arun(anthropic_server.model().request(ask()))

    assert response.text == "Hi there."
    assert response.tool_calls == ()
    assert response.stop_reason == "end_turn"
    assert response.model == "claude-haiku-4-5"
    body = anthropic_server.bodies[0]
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 4096
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert "tools" not in body and "stream" not in body
    assert anthropic_server.errors == []


def test_parallel_tool_calls_keep_ids_names_arguments_and_order(
        anthropic_server: AnthropicWireServer) -> None:
    nested = {"query": "ray", "filters": {"year": [2023, 2024]}, "note": "naïve \"quote\""}
    anthropic_server.responder = tool_call_reply(
        call("search", {"query": "asyncio"}, id="toolu_a"),
        call("fetch", nested, id="toolu_b"),
        call("search", {"query": "trio"}, id="toolu_c"),
        text="Looking.")
    response = arun(anthropic_server.model().request(ask(tools=[SEARCH])))

    assert response.text == "Looking."
    assert [(c.id, c.name) for c in response.tool_calls] == [
        ("toolu_a", "search"), ("toolu_b", "fetch"), ("toolu_c", "search")]
    assert [c.parsed_arguments() for c in response.tool_calls] == [
        {"query": "asyncio"}, nested, {"query": "trio"}]
    assert response.stop_reason == "tool_use"


def test_tool_results_go_back_in_one_user_message(anthropic_server: AnthropicWireServer) -> None:
    calls = (ToolCall("toolu_1", "search", '{"query": "a"}'),
             ToolCall("toolu_2", "search", '{"query": "b"}'))
    request = ModelRequest("Be brief.", [
        UserMessage("find a and b"),
        AssistantMessage("On it.", calls),
        ToolResultMessage("toolu_1", "search", "result a"),
        ToolResultMessage("toolu_2", "search", "ValueError: no such page", is_error=True),
        UserMessage("Answer in one line."),  # e.g. a retry prompt right after the results
    ], tools=[SEARCH])
    arun(anthropic_server.model().request(request))

    assert anthropic_server.errors == []  # the server checks pairing and order like the API
    messages = anthropic_server.bodies[0]["messages"]
    assert len(messages) == 3
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "On it."},
        {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "a"}},
        {"type": "tool_use", "id": "toolu_2", "name": "search", "input": {"query": "b"}}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "result a",
         "is_error": False},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "ValueError: no such page",
         "is_error": True},
        {"type": "text", "text": "Answer in one line."}]}


def test_a_call_with_malformed_arguments_still_makes_a_valid_conversation(
        anthropic_server: AnthropicWireServer) -> None:
    request = ModelRequest("", [
        UserMessage("go"),
        AssistantMessage("", (ToolCall("toolu_1", "search", '{"query": '),)),
        ToolResultMessage("toolu_1", "search", "arguments are not valid JSON", is_error=True),
    ], tools=[SEARCH])
    arun(anthropic_server.model().request(request))
    assert anthropic_server.errors == []
    body = anthropic_server.bodies[0]
    assert "system" not in body
    assert body["messages"][1]["content"][0]["input"] == {}


def test_tools_and_settings_are_sent(anthropic_server: AnthropicWireServer) -> None:
    settings = ModelSettings(temperature=0.2, max_tokens=256, parallel_tool_calls=False,
                             extra={"top_k": 5})
    arun(anthropic_server.model().request(ask(tools=[SEARCH], settings=settings)))

    body = anthropic_server.bodies[0]
    assert body["tools"] == [{"name": "search", "description": "Search the web.",
                              "input_schema": SEARCH.parameters}]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 256
    assert body["top_k"] == 5


def test_stream_text(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = text_reply("one two three four", input_tokens=12,
                                            output_tokens=4)
    events = arun(collect(anthropic_server.model(), ask()))

    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4 and "".join(deltas) == "one two three four"
    response = done_of(events).response
    assert response.text == "one two three four"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 4)
    assert response.stop_reason == "end_turn"
    assert anthropic_server.bodies[0]["stream"] is True


def test_stream_tool_calls_are_put_back_together(anthropic_server: AnthropicWireServer) -> None:
    long_query = "a rather long query " * 5
    anthropic_server.responder = tool_call_reply(
        call("search", {"query": long_query}, id="toolu_x"),
        call("fetch", {"url": "https://example.com/a?b=c"}, id="toolu_y"),
        call("now", {}, id="toolu_z"),
        text="Let me look.")
    events = arun(collect(anthropic_server.model(), ask(tools=[SEARCH])))

    response = done_of(events).response
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me look."
    assert [(c.id, c.name) for c in response.tool_calls] == [
        ("toolu_x", "search"), ("toolu_y", "fetch"), ("toolu_z", "now")]
    assert [c.parsed_arguments() for c in response.tool_calls] == [
        {"query": long_query}, {"url": "https://example.com/a?b=c"}, {}]
    assert response.stop_reason == "tool_use"
    # each call is reported at its content_block_stop, in order, as the response carries it
    assert [(e.index, e.call) for e in events if isinstance(e, ToolCallDone)] == list(
        enumerate(response.tool_calls))


def test_usage_and_cost(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = text_reply("x", input_tokens=2_000_000, output_tokens=100_000,
                                            model="claude-haiku-4-5-20251001")
    for streamed in (False, True):
        model = anthropic_server.model("claude-haiku-4-5")
        response = (done_of(arun(collect(model, ask()))).response if streamed
                    else arun(model.request(ask())))
        assert (response.usage.input_tokens, response.usage.output_tokens) == (
            2_000_000, 100_000)
        assert response.usage.cost == pytest.approx(2 * 1.00 + 0.1 * 5.00)
        assert response.model == "claude-haiku-4-5-20251001"


def test_cache_reads_and_writes_are_counted_and_priced(
        anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = text_reply("x", input_tokens=100_000, output_tokens=10_000,
                                            cache_read_tokens=50_000, cache_write_tokens=20_000)
    for streamed in (False, True):
        model = anthropic_server.model("claude-haiku-4-5")
        response = (done_of(arun(collect(model, ask()))).response if streamed
                    else arun(model.request(ask())))
        usage = response.usage
        # input_tokens counts every input token; Anthropic reports the cached ones apart
        assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
            100_000, 50_000, 20_000)
        assert usage.cost == pytest.approx(
            (30_000 * 1.00 + 50_000 * 0.10 + 20_000 * 1.25 + 10_000 * 5.00) / 1e6)


def test_error_status_is_translated(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = ErrorReply(400, "messages: roles must alternate")
    with pytest.raises(ModelHTTPError) as info:
        arun(anthropic_server.model().request(ask()))
    assert info.value.status == 400 and not info.value.transient
    assert "messages: roles must alternate" in str(info.value)
    assert info.value.model == "anthropic:claude-haiku-4-5"
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize("status", [429, 529])
def test_rate_limit_and_overload_carry_retry_after(anthropic_server: AnthropicWireServer,
                                                   status: int) -> None:
    anthropic_server.responder = ErrorReply(status, "slow down", retry_after=3)
    with pytest.raises(ModelHTTPError) as info:
        arun(anthropic_server.model().request(ask()))
    assert info.value.status == status and info.value.transient
    assert info.value.retry_after == 3.0


def test_error_event_inside_a_stream_is_transient(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = ErrorReply(529, "Overloaded", mid_stream=True)
    with pytest.raises(ModelHTTPError) as info:
        arun(collect(anthropic_server.model(), ask()))
    assert info.value.status == 529 and info.value.transient
    assert "Overloaded" in str(info.value)


def test_connection_refused() -> None:
    model = AnthropicModel("claude-haiku-4-5", base_url=closed_port_url(), api_key="k")
    with pytest.raises(ModelConnectionError):
        arun(model.request(ask()))
    with pytest.raises(ModelConnectionError):
        arun(collect(model, ask()))


def test_timeout_is_a_connection_error(anthropic_server: AnthropicWireServer) -> None:
    anthropic_server.responder = text_reply("late", delay=2.0)
    with pytest.raises(ModelConnectionError, match=r"no answer within 0.2 s"):
        arun(anthropic_server.model(timeout=0.2).request(ask()))


def test_one_model_serves_several_event_loops(anthropic_server: AnthropicWireServer) -> None:
    model = anthropic_server.model()
    for _ in range(3):
        assert arun(model.request(ask())).text == "ok"
        assert done_of(arun(collect(model, ask()))).response.text == "ok"
    arun(model.aclose())


def test_a_loop_that_ends_closes_the_clients_connections(
        anthropic_server: AnthropicWireServer) -> None:
    """A program that never calls ``aclose()``: each ``asyncio.run`` closes its own client."""
    model = anthropic_server.model()
    clients = []

    async def main() -> str:
        text: str = (await model.request(ask())).text
        clients.append(model._client())  # the one this loop made
        return text

    for _ in range(2):
        assert asyncio.run(main()) == "ok"
        assert clients[-1].is_closed()  # closed as its loop shut down, on that loop
    assert clients[0] is not clients[1]
    arun(model.aclose())  # nothing left to close: a no-op


def test_key_and_url_come_from_the_environment(anthropic_server: AnthropicWireServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    arun(AnthropicModel("claude-haiku-4-5").request(ask()))
    headers = anthropic_server.requests[0].headers
    assert "from-env" in (headers.get("x-api-key", "") + headers.get("authorization", ""))


def test_remote_server_without_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ModelError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-haiku-4-5")


def test_local_server_needs_no_key(anthropic_server: AnthropicWireServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    model = AnthropicModel("local-claude", base_url=anthropic_server.url)
    assert arun(model.request(ask())).text == "ok"


def test_missing_sdk_is_an_install_hint() -> None:
    probe = textwrap.dedent("""
        import sys
        sys.modules["anthropic"] = None  # as if the package were not installed
        import shoal.models
        from shoal.exceptions import MissingDependencyError
        from shoal.models.anthropic import AnthropicModel
        for make in (lambda: AnthropicModel("claude-haiku-4-5", api_key="k"),
                     lambda: shoal.models.resolve_model("anthropic:claude-haiku-4-5")):
            try:
                make()
            except MissingDependencyError as exc:
                print(exc)
            else:
                print("no error")
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    hint = install_hint("anthropic")
    assert lines == [f"anthropic is not installed; install it with: {hint}"] * 2
    assert "pip install 'shoal[anthropic]'" in lines[0]  # the PyPI form, whatever the install
