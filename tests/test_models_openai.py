"""OpenAIModel through the real openai SDK, over HTTP, against a chat completions wire server."""

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shoal.exceptions import ModelConnectionError, ModelError, ModelHTTPError, install_hint
from shoal.models.base import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
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
from shoal.models.openai import OpenAIModel
from shoal.models.prices import Price
from tests.conftest import arun
from tests.wire import (
    ErrorReply,
    OpenAIWireServer,
    Reply,
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


async def collect(model: OpenAIModel, request: ModelRequest) -> list[StreamEvent]:
    return [event async for event in model.stream(request)]


def test_plain_text(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = text_reply("Hi there.")
    response = arun(openai_server.model().request(ask()))

    assert response.text == "Hi there."
    assert response.tool_calls == ()
    assert response.stop_reason == "stop"
    assert response.model == "gpt-4.1-mini"
    body = openai_server.bodies[0]
    assert body["model"] == "gpt-4.1-mini"
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "hello"}]
    assert "tools" not in body and "stream" not in body
    assert openai_server.requests[0].headers["authorization"] == "Bearer test-key"
    assert openai_server.errors == []


def test_parallel_tool_calls_keep_ids_names_arguments_and_order(
        openai_server: OpenAIWireServer) -> None:
    nested = {"query": "ray", "filters": {"year": [2023, 2024]}, "note": "naïve \"quote\""}
    openai_server.responder = tool_call_reply(
        call("search", {"query": "asyncio"}, id="call_a"),
        call("fetch", nested, id="call_b"),
        call("search", {"query": "trio"}, id="call_c"))
    response = arun(openai_server.model().request(ask(tools=[SEARCH])))

    assert [(c.id, c.name) for c in response.tool_calls] == [
        ("call_a", "search"), ("call_b", "fetch"), ("call_c", "search")]
    assert [c.parsed_arguments() for c in response.tool_calls] == [
        {"query": "asyncio"}, nested, {"query": "trio"}]
    assert response.stop_reason == "tool_calls"


def test_tool_results_go_back_as_tool_messages(openai_server: OpenAIWireServer) -> None:
    calls = (ToolCall("call_1", "search", '{"query": "a"}'),
             ToolCall("call_2", "search", '{"query": "b"}'))
    request = ModelRequest("Be brief.", [
        UserMessage("find a and b"),
        AssistantMessage("", calls),
        ToolResultMessage("call_1", "search", "result a"),
        ToolResultMessage("call_2", "search", "ValueError: no such page", is_error=True),
    ], tools=[SEARCH])
    arun(openai_server.model().request(request))

    assert openai_server.errors == []  # the server checks tool-call pairing like the API
    messages = openai_server.bodies[0]["messages"]
    assert messages[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "search", "arguments": '{"query": "a"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "search", "arguments": '{"query": "b"}'}}]}
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "result a"}
    assert messages[4] == {"role": "tool", "tool_call_id": "call_2",
                           "content": "Error: ValueError: no such page"}


def test_tools_and_settings_are_sent(openai_server: OpenAIWireServer) -> None:
    settings = ModelSettings(temperature=0.2, max_tokens=256, parallel_tool_calls=False,
                             extra={"seed": 7})
    arun(openai_server.model().request(ask(tools=[SEARCH], settings=settings)))

    body = openai_server.bodies[0]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "search", "description": "Search the web.", "parameters": SEARCH.parameters}}]
    assert body["parallel_tool_calls"] is False
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 256  # compatible servers: max_tokens, not max_completion_tokens
    assert body["seed"] == 7


def test_output_schema_becomes_response_format_only_without_tools(
        openai_server: OpenAIWireServer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    model = openai_server.model()
    arun(model.request(ask(output_schema=schema)))
    arun(model.request(ask(output_schema=schema, tools=[SEARCH])))

    plain, with_tools = openai_server.bodies
    assert plain["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": schema, "strict": False}}
    assert "response_format" not in with_tools


def test_stream_text(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = text_reply("one two three four", input_tokens=12,
                                         output_tokens=4)
    events = arun(collect(openai_server.model(), ask()))

    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4 and "".join(deltas) == "one two three four"
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.text == "one two three four"
    assert (done.response.usage.input_tokens, done.response.usage.output_tokens) == (12, 4)
    assert done.response.stop_reason == "stop"
    body = openai_server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_stream_tool_calls_are_put_back_together(openai_server: OpenAIWireServer) -> None:
    long_query = "a rather long query " * 5
    openai_server.responder = tool_call_reply(
        call("search", {"query": long_query}, id="call_x"),
        call("fetch", {"url": "https://example.com/a?b=c"}, id="call_y"),
        text="Let me look.")
    events = arun(collect(openai_server.model(), ask(tools=[SEARCH])))

    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me look."
    assert [(c.id, c.name) for c in done.response.tool_calls] == [
        ("call_x", "search"), ("call_y", "fetch")]
    assert [c.parsed_arguments() for c in done.response.tool_calls] == [
        {"query": long_query}, {"url": "https://example.com/a?b=c"}]
    assert done.response.stop_reason == "tool_calls"
    # each call is reported once complete, in order, as the response then carries it
    assert [(e.index, e.call) for e in events if isinstance(e, ToolCallDone)] == list(
        enumerate(done.response.tool_calls))


def test_stream_without_text_yields_the_call_then_done(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = tool_call_reply(call("search", {"query": "x"}))
    events = arun(collect(openai_server.model(), ask(tools=[SEARCH])))
    assert len(events) == 2 and isinstance(events[1], ResponseDone)
    assert events[0] == ToolCallDone(0, events[1].response.tool_calls[0])


def test_a_streamed_call_is_complete_when_the_next_one_begins() -> None:
    from shoal.models.openai import _StreamState

    state = _StreamState()

    def part(index: int, **function: str) -> dict[str, Any]:
        return {"choices": [{"delta": {"tool_calls": [
            {"index": index, **({"id": f"c{index}"} if "name" in function else {}),
             "function": function}]}}]}

    state.add(part(0, name="search", arguments='{"q":'))
    state.add(part(0, arguments=' "x"}'))
    assert state.complete(final=False) == []  # call 0 may still grow
    state.add(part(1, name="fetch", arguments="{}"))
    assert state.complete(final=False) == [(0, ToolCall("c0", "search", '{"q": "x"}'))]
    assert state.complete(final=False) == []  # reported once
    state.add(part(1, arguments=""))
    assert state.complete(final=True) == [(1, ToolCall("c1", "fetch", "{}"))]


def test_malformed_arguments_are_kept_verbatim(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = tool_call_reply(call("search", '{"query": "unterminated'))
    for streamed in (False, True):
        model = openai_server.model()
        if streamed:
            done = arun(collect(model, ask(tools=[SEARCH])))[-1]
            assert isinstance(done, ResponseDone)
            response = done.response
        else:
            response = arun(model.request(ask(tools=[SEARCH])))
        (bad,) = response.tool_calls
        assert bad.arguments == '{"query": "unterminated'
        with pytest.raises(ValueError, match="not valid JSON"):
            bad.parsed_arguments()


def test_usage_and_cost(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = text_reply("x", input_tokens=1_000_000, output_tokens=500_000,
                                         model="gpt-4.1-mini-2025-04-14")
    response = arun(openai_server.model("gpt-4.1-mini").request(ask()))
    assert response.usage.input_tokens == 1_000_000
    assert response.usage.output_tokens == 500_000
    assert response.usage.requests == 1
    assert response.usage.cost == pytest.approx(0.40 + 0.80)
    assert response.model == "gpt-4.1-mini-2025-04-14"

    openai_server.responder = text_reply("x", input_tokens=1_000_000, output_tokens=500_000)
    custom = openai_server.model("my-model", prices={"my-model": Price(1.0, 2.0)})
    assert arun(custom.request(ask())).usage.cost == pytest.approx(1.0 + 1.0)
    assert arun(openai_server.model("unknown-model").request(ask())).usage.cost is None


@pytest.mark.parametrize("streamed", [False, True])
def test_cached_prompt_tokens_are_counted_and_priced(openai_server: OpenAIWireServer,
                                                     streamed: bool) -> None:
    openai_server.responder = text_reply("x", input_tokens=1_000_000, output_tokens=0,
                                         cache_read_tokens=400_000)
    model = openai_server.model("gpt-4.1-mini")
    if streamed:
        done = arun(collect(model, ask()))[-1]
        assert isinstance(done, ResponseDone)
        response = done.response
    else:
        response = arun(model.request(ask()))
    usage = response.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        1_000_000, 400_000, 0)
    assert usage.cost == pytest.approx(0.6 * 0.40 + 0.4 * 0.10)  # hits at $0.10, not $0.40
    # your own price table wins over genai-prices', cache rate included
    mine = openai_server.model("gpt-4.1-mini", prices={"gpt-4.1-mini": Price(1.0, 1.0, 0.5)})
    assert arun(mine.request(ask())).usage.cost == pytest.approx(0.6 * 1.0 + 0.4 * 0.5)


def test_error_status_is_translated(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = ErrorReply(400, "Invalid value for 'messages'.")
    with pytest.raises(ModelHTTPError) as info:
        arun(openai_server.model().request(ask()))
    error = info.value
    assert error.status == 400 and not error.transient and error.retry_after is None
    assert "Invalid value for 'messages'." in str(error)
    assert error.model == "openai:gpt-4.1-mini"
    assert len(openai_server.requests) == 1  # the SDK did not retry


@pytest.mark.parametrize(("headers", "retry_after", "expected"), [
    ({}, 2, 2.0),
    ({"retry-after-ms": "1500"}, 9, 1.5),  # the more precise header wins
    ({}, None, None),
])
def test_rate_limit_carries_retry_after(openai_server: OpenAIWireServer,
                                        headers: dict[str, str], retry_after: float | None,
                                        expected: float | None) -> None:
    openai_server.responder = ErrorReply(429, "Rate limit reached", retry_after=retry_after,
                                         headers=headers)
    with pytest.raises(ModelHTTPError) as info:
        arun(openai_server.model().request(ask()))
    assert info.value.status == 429 and info.value.transient
    assert info.value.retry_after == expected


def test_errors_while_streaming_are_translated(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = ErrorReply(503, "overloaded", retry_after=1)
    with pytest.raises(ModelHTTPError) as info:
        arun(collect(openai_server.model(), ask()))
    assert info.value.status == 503 and info.value.retry_after == 1.0

    openai_server.responder = ErrorReply(500, "the model crashed", mid_stream=True)
    with pytest.raises(ModelError, match="the model crashed"):
        arun(collect(openai_server.model(), ask()))


def test_connection_refused() -> None:
    model = OpenAIModel("gpt-4.1-mini", base_url=closed_port_url("/v1"), api_key="k")
    with pytest.raises(ModelConnectionError) as info:
        arun(model.request(ask()))
    assert info.value.transient
    with pytest.raises(ModelConnectionError):
        arun(collect(model, ask()))


def test_timeout_is_a_connection_error(openai_server: OpenAIWireServer) -> None:
    openai_server.responder = text_reply("late", delay=2.0)
    with pytest.raises(ModelConnectionError, match=r"no answer within 0.2 s"):
        arun(openai_server.model(timeout=0.2).request(ask()))


def test_a_client_passed_in_never_retries(openai_server: OpenAIWireServer) -> None:
    async def main() -> None:
        client = openai_server.client(max_retries=5)
        model = OpenAIModel("gpt-4.1-mini", client=client)
        with pytest.raises(ModelHTTPError):
            await model.request(ask())
        await client.close()

    openai_server.fail_next(1, status=500)
    arun(main())
    assert len(openai_server.requests) == 1


def test_one_model_serves_several_event_loops(openai_server: OpenAIWireServer) -> None:
    model = openai_server.model()
    for _ in range(3):  # agent.run_sync() twice must not reuse a dead loop's connections
        assert arun(model.request(ask())).text == "ok"
    arun(model.aclose())


def test_concurrent_requests_share_one_model(openai_server: OpenAIWireServer) -> None:
    def responder(body: dict[str, Any]) -> Reply:
        return text_reply(f"echo {body['messages'][-1]['content']}", delay=0.05)

    async def main(model: OpenAIModel) -> list[ModelResponse]:
        return await asyncio.gather(*(model.request(ask(str(i))) for i in range(20)))

    openai_server.responder = responder
    responses = arun(main(openai_server.model()))
    assert [r.text for r in responses] == [f"echo {i}" for i in range(20)]
    assert openai_server.max_in_flight > 1


def test_a_loop_that_ends_closes_the_clients_connections(openai_server: OpenAIWireServer) -> None:
    """A program that never calls ``aclose()``: each ``asyncio.run`` closes its own client."""
    model = openai_server.model()
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


def test_key_and_url_come_from_the_environment(openai_server: OpenAIWireServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    arun(OpenAIModel("gpt-4.1-mini").request(ask()))
    assert openai_server.requests[0].headers["authorization"] == "Bearer from-env"


def test_local_server_needs_no_key(openai_server: OpenAIWireServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = OpenAIModel("llama", base_url=openai_server.url)
    assert arun(model.request(ask())).text == "ok"
    assert openai_server.requests[0].headers["authorization"].startswith("Bearer ")


def test_remote_server_without_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        OpenAIModel("gpt-4.1-mini")
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        OpenAIModel("gpt-4.1-mini", base_url="https://llm.example.com/v1")


def test_missing_sdk_is_an_install_hint() -> None:
    probe = textwrap.dedent("""
        import sys
        sys.modules["openai"] = None  # as if the package were not installed
        import shoal.models
        from shoal.exceptions import MissingDependencyError
        from shoal.models.openai import OpenAIModel
        for make in (lambda: OpenAIModel("gpt-4.1-mini", api_key="k"),
                     lambda: shoal.models.resolve_model("openai:gpt-4.1-mini")):
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
    assert lines == [f"openai is not installed; install it with: {install_hint('openai')}"] * 2
    assert "pip install 'shoal[openai]'" in lines[0]  # the PyPI form, whatever the install


def test_request_body_is_plain_json(openai_server: OpenAIWireServer) -> None:
    # What reaches the wire must round-trip as JSON: no SDK objects, no NotGiven sentinels.
    arun(openai_server.model().request(ask(tools=[SEARCH])))
    body = openai_server.bodies[0]
    assert json.loads(json.dumps(body)) == body
    assert set(body) == {"model", "messages", "tools"}
