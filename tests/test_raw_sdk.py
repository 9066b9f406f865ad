"""shoal.agents.raw: tool calls from real SDK responses (fetched over HTTP) run in parallel."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal.agents.raw import (
    anthropic_calls,
    anthropic_tool_results,
    anthropic_tool_results_sync,
    openai_calls,
    openai_tool_messages,
    openai_tool_messages_sync,
)
from shoal.exceptions import ShoalError
from tests.conftest import arun
from tests.wire import AnthropicWireServer, OpenAIWireServer, call, text_reply, tool_call_reply


@shoal.tool
async def slow(label: str) -> str:
    """Take a while, then say which call this was."""
    await asyncio.sleep(0.3)
    return f"done {label}"


@shoal.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@shoal.tool
def explode(reason: str) -> str:
    """Fail on purpose."""
    raise ValueError(reason)


def shout(text: str) -> str:
    """A plain function: made into a tool on the fly."""
    return text.upper()


TOOLS: list[shoal.Tool[..., Any] | Callable[..., Any]] = [slow, add, explode, shout]

TURN = tool_call_reply(
    call("slow", {"label": "a"}, id="c1"),
    call("add", {"a": 1, "b": 2}, id="c2"),
    call("slow", {"label": "b"}, id="c3"),
    call("add", '{"a": 1,', id="c4"),           # malformed JSON
    call("nope", {}, id="c5"),                  # unknown tool
    call("explode", {"reason": "boom"}, id="c6"),
    call("slow", {"label": "c"}, id="c7"),
    call("add", {"a": "x", "b": 2}, id="c8"),   # does not fit the schema
    call("shout", {"text": "hi"}, id="c9"),
)
IDS = [f"c{i}" for i in range(1, 10)]
ERRORS = {"c4", "c5", "c6", "c8"}


def check_contents(by_id: dict[str, str], *, prefixed: bool = True) -> None:
    """``prefixed``: errors read ``Error: ...`` (chat completions have no error flag)."""
    assert by_id["c1"] == "done a" and by_id["c3"] == "done b" and by_id["c7"] == "done c"
    assert by_id["c2"] == "3" and by_id["c9"] == "HI"
    assert "not valid JSON" in by_id["c4"]
    assert "no tool named 'nope'" in by_id["c5"]
    assert "ValueError: boom" in by_id["c6"]
    assert "'a'" in by_id["c8"] or "a:" in by_id["c8"]
    assert by_id["c6"] == ("Error: " if prefixed else "") + "explode failed: ValueError: boom"
    if prefixed:
        assert all(by_id[i].startswith("Error") for i in ERRORS)


def test_openai_completion_tool_calls_run_in_parallel() -> None:
    with OpenAIWireServer([TURN, text_reply("all done")]) as server:
        client = server.sync_client()
        question: dict[str, Any] = {"role": "user", "content": "go"}
        specs = [t.to_openai() for t in (slow, add, explode)]
        completion = client.chat.completions.create(model="gpt-4.1-mini", messages=[question],
                                                    tools=specs)
        started = time.perf_counter()
        messages = openai_tool_messages_sync(completion, TOOLS)
        elapsed = time.perf_counter() - started

        assert elapsed < 0.85, f"three 0.3 s calls took {elapsed:.2f} s: not in parallel"
        assert [m["tool_call_id"] for m in messages] == IDS
        assert all(m["role"] == "tool" for m in messages)
        check_contents({m["tool_call_id"]: m["content"] for m in messages})

        # the messages fit the protocol: the server checks every call is answered once
        final = client.chat.completions.create(
            model="gpt-4.1-mini", tools=specs,
            messages=[question, completion.choices[0].message, *messages])
        assert final.choices[0].message.content == "all done"
        assert server.errors == []
        client.close()


def test_openai_sources_in_every_shape() -> None:
    with OpenAIWireServer(TURN) as server:
        client = server.sync_client()
        completion = client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "go"}])
        client.close()
    message = completion.choices[0].message
    expected = openai_calls(completion)
    assert [c.id for c in expected] == IDS
    assert expected[3].arguments == '{"a": 1,'
    assert openai_calls(message) == expected
    assert openai_calls(message.tool_calls) == expected
    assert openai_calls(completion.model_dump()) == expected
    assert openai_calls(message.model_dump()) == expected
    assert openai_calls({"role": "assistant", "content": "hi"}) == []


def test_anthropic_message_tool_uses_run_in_parallel() -> None:
    turn = tool_call_reply(*[c for c in TURN.tool_calls if c.id != "c4"], text="Working.")
    with AnthropicWireServer([turn, text_reply("all done")]) as server:
        client = server.sync_client()
        question: dict[str, Any] = {"role": "user", "content": "go"}
        specs = [t.to_anthropic() for t in (slow, add, explode)]
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=512,
                                         messages=[question], tools=specs)
        started = time.perf_counter()
        reply = anthropic_tool_results_sync(message, TOOLS)
        elapsed = time.perf_counter() - started

        assert elapsed < 0.85, f"three 0.3 s calls took {elapsed:.2f} s: not in parallel"
        assert reply["role"] == "user"
        blocks = reply["content"]
        assert [b["tool_use_id"] for b in blocks] == [i for i in IDS if i != "c4"]
        assert all(b["type"] == "tool_result" for b in blocks)
        assert {b["tool_use_id"] for b in blocks if b["is_error"]} == ERRORS - {"c4"}
        contents = {b["tool_use_id"]: b["content"] for b in blocks}
        check_contents({**contents, "c4": "Error: not valid JSON"}, prefixed=False)

        final = client.messages.create(
            model="claude-haiku-4-5", max_tokens=512, tools=specs,
            messages=[question, {"role": "assistant", "content": message.content}, reply])
        assert final.content[0].type == "text" and final.content[0].text == "all done"
        assert server.errors == []
        client.close()


def test_anthropic_sources_in_every_shape() -> None:
    with AnthropicWireServer(tool_call_reply(call("add", {"a": 1, "b": 2}, id="t1"),
                                             text="Adding.")) as server:
        client = server.sync_client()
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                         messages=[{"role": "user", "content": "go"}])
        client.close()
    expected = anthropic_calls(message)
    assert [(c.id, c.name, c.parsed_arguments()) for c in expected] == [
        ("t1", "add", {"a": 1, "b": 2})]
    assert anthropic_calls(message.content) == expected
    assert anthropic_calls(message.model_dump()) == expected
    assert anthropic_calls({"role": "assistant", "content": "just text"}) == []


def test_async_variants_on_a_running_loop() -> None:
    anthropic_turn = tool_call_reply(*[c for c in TURN.tool_calls if c.id != "c4"])
    with OpenAIWireServer(TURN) as oai, AnthropicWireServer(anthropic_turn) as anth:
        async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            openai_client, anthropic_client = oai.client(), anth.client()
            completion = await openai_client.chat.completions.create(
                model="gpt-4.1-mini", messages=[{"role": "user", "content": "go"}])
            message = await anthropic_client.messages.create(
                model="claude-haiku-4-5", max_tokens=64,
                messages=[{"role": "user", "content": "go"}])
            with pytest.raises(ShoalError, match="running event loop"):
                openai_tool_messages_sync(completion, TOOLS)
            both: tuple[list[dict[str, Any]], dict[str, Any]] = await asyncio.gather(
                openai_tool_messages(completion, TOOLS), anthropic_tool_results(message, TOOLS))
            await openai_client.close()
            await anthropic_client.close()
            return both

        messages, reply = arun(main())
    assert [m["tool_call_id"] for m in messages] == IDS
    assert [b["tool_use_id"] for b in reply["content"]] == [i for i in IDS if i != "c4"]


def test_a_response_without_tool_calls_gives_nothing_to_send() -> None:
    assert openai_tool_messages_sync({"choices": [{"message": {"role": "assistant",
                                                               "content": "hi"}}]}, TOOLS) == []
    assert anthropic_tool_results_sync({"content": [{"type": "text", "text": "hi"}]},
                                       TOOLS) == {"role": "user", "content": []}


def test_tools_by_name_and_a_runtime_of_ones_own() -> None:
    calls = {"choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": "x", "type": "function",
         "function": {"name": "plus", "arguments": '{"a": 2, "b": 3}'}},
    ]}}]}

    async def main() -> list[dict[str, Any]]:
        async with shoal.Runtime(max_concurrency=2) as runtime:
            return await openai_tool_messages(calls, {"plus": add}, runtime=runtime)

    assert arun(main()) == [{"role": "tool", "tool_call_id": "x", "content": "5"}]
