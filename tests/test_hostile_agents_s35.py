"""Agents and their models against a hostile user and hostile models (session 35).

Over the real SDKs and HTTP (the strict wire servers of :mod:`tests.wire`), in processes of
their own and on the virtual clock: what a model sends, and what is done to an agent, must end
in a typed error or a recorded outcome, never a crash of the whole run.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest

import shoal
from shoal.agents.budget import HELD_BY_DEFAULT
from shoal.events import ModelRetrying
from shoal.exceptions import ConfigError, ModelConnectionError, ModelError, ModelHTTPError
from shoal.models import ModelGate, ModelGates, ModelRetry
from shoal.testing import ScriptedModel
from shoal.testing import call as scripted_call
from tests.conftest import arun
from tests.test_models_hostile_stream import (
    RawAnthropic,
    RawOpenAI,
    block_start,
    block_stop,
    chunk,
    completion,
    message_end,
    message_start,
    openai_stream,
    opening,
    ran,
    request_once,
    run_agent,
    sent_back,
    tool_block,
)
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    OpenAIWireServer,
    RawReply,
    call,
    text_reply,
    tool_call_reply,
)


@pytest.mark.parametrize("odd", ["NaN", "Infinity", '"a\\ud800b"'])
def test_anthropic_arguments_nested_deep_with_a_nan_or_surrogate_do_not_end_the_run(
        odd: str) -> None:
    # the arguments go back as an object: made sendable by recursion, 480 levels of them
    # (two frames a level) ended the whole run in a RecursionError
    deep = "[" * 600 + odd + "]" * 600
    stream = [message_start(), *tool_block(0, "toolu_a", '{"x": ' + deep + "}"),
              *tool_block(1, "toolu_b", '{"x": 2}'), *message_end()]
    result, server = run_agent(RawAnthropic, [stream])
    assert result.output == "done", repr(result)
    assert len(ran) == 2 and 2 in ran  # both calls ran, and both results went back
    assert "got 2" in sent_back(server)
    sent = json.dumps(server.requests[1].body["messages"][1]["content"][0]["input"])
    assert sent.count("[") == 600 and "\\ud800" not in sent  # the input, made sendable


@pytest.mark.parametrize("options", [{"max_concurrency": 0}, {"max_concurrency": -1},
                                     {"max_concurrency": 1.5}, {"max_concurrency": "2"},
                                     {"max_concurrency": True}, {"retry": 3}])
def test_model_gates_of_the_wrong_kind_are_refused_when_made(options: dict[str, Any]) -> None:
    # they were taken, then failed every agent of the tree at its first request (-1, "2",
    # retry=3), or quietly meant no cap at all (0)
    for make in (lambda: ModelGates(**options), lambda: ModelGate("m", **options)):
        with pytest.raises(ConfigError, match=r"max_concurrency must be at least 1|retry= takes"):
            make()
    assert ModelGates(max_concurrency=2, retry=ModelRetry(retries=1)) is not None



DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON, deeper than Python's reader recurses


def _with_deep_field(reply: dict[str, Any]) -> RawReply:
    return RawReply((json.dumps(reply)[:-1] + ', "extra": ' + DEEP + "}").encode(),
                    content_type="application/json")


@pytest.mark.parametrize(("server_class", "reply"), [
    (OpenAIWireServer, completion(message={"role": "assistant", "content": "hi"})),
    (AnthropicWireServer, {"id": "m", "type": "message", "role": "assistant", "model": "c",
                           "stop_reason": "end_turn", "stop_sequence": None,
                           "usage": {"input_tokens": 1, "output_tokens": 1},
                           "content": [{"type": "text", "text": "hi"}]}),
], ids=["openai", "anthropic"])
def test_a_reply_nested_too_deep_to_read_is_a_model_error(server_class: Any,
                                                          reply: dict[str, Any]) -> None:
    # the JSON reader's RecursionError came out of model.request as it was
    answer: Any = _with_deep_field(reply)  # request_once takes any answer the server sends
    error = request_once(server_class, answer)
    assert isinstance(error, ModelError), repr(error)[:300]
    assert "nested too deeply to read" in str(error)


def test_a_stream_chunk_nested_too_deep_ends_the_turn_in_a_model_error() -> None:
    stream = openai_stream(opening(0, "call_a", "echo", '{"x": 1}'))
    stream.insert(1, 'data: {"extra": ' + DEEP + "}\n\n")
    result, _ = run_agent(RawOpenAI, [stream])
    assert isinstance(result, ModelError), repr(result)[:300]
    assert "nested too deeply to read" in str(result)


def test_an_anthropic_event_nested_too_deep_ends_the_turn_in_a_model_error() -> None:
    event = ('event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
             '"delta": {"type": "input_json_delta", "partial_json": "{}"}, "x": ' + DEEP
             + "}\n\n")
    stream = [message_start(), block_start(0, "toolu_a", "echo"), event, block_stop(0),
              *message_end()]
    result, _ = run_agent(RawAnthropic, [stream])
    assert isinstance(result, ModelError), repr(result)[:300]
    assert "nested too deeply to read" in str(result)


@pytest.mark.parametrize("server_class", [OpenAIWireServer, AnthropicWireServer])
def test_a_proxys_error_page_of_megabytes_is_quoted_in_part(server_class: Any) -> None:
    # the whole 5 MB page was the error's message: in the agent's error, every retry's event
    # and log line, and the journal
    page = b"<html>" + b"x" * 5_000_000 + b"</html>"
    with server_class(RawReply(page, status=502)) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model)
        seen: list[Any] = []

        async def main() -> Any:
            try:
                return await agent.run("go", on_event=seen.append,
                                       gates=ModelGates(retry=ModelRetry(retries=1, backoff=0)))
            finally:
                await model.aclose()

        with pytest.raises(ModelHTTPError) as raised:
            arun(main(), timeout=60)
    error = raised.value
    assert error.status == 502 and raised.value.result.error is error  # type: ignore[attr-defined]
    assert len(str(error)) < 2_200 and "characters left out" in str(error)
    assert str(error).endswith("x</html>")  # its start and its end
    retried = [e for e in seen if isinstance(e, ModelRetrying)]
    assert len(retried) == 1 and len(retried[0].error) < 2_200


def test_an_error_event_of_megabytes_in_a_stream_is_quoted_in_part() -> None:
    error_event = 'data: {"error": {"message": "' + "y" * 5_000_000 + '", "code": 400}}\n\n'
    result, _ = run_agent(RawOpenAI, [[error_event]])
    assert isinstance(result, ModelHTTPError), repr(result)[:300]
    assert len(str(result)) < 2_200 and "characters left out" in str(result)


@pytest.mark.parametrize("server_class", [OpenAIWireServer, AnthropicWireServer])
def test_a_made_up_tool_name_of_a_megabyte_is_cut_in_its_lineage_and_its_error(
        server_class: Any) -> None:
    # the whole name was the call's lineage (in every event, the journal, the live view) and
    # went into the error its model read, 100,000 characters of it, on every later turn
    name = "/#x" * 400_000
    result, server = _run(server_class, tool_call_reply(call(name, {"x": 1}),
                                                        call("echo", {"x": 2})))
    unknown, fine = result.calls
    assert unknown.status == "rejected" and fine.status == "ok"
    assert unknown.lineage.startswith("a/%2F#x%2F#x") and unknown.lineage.endswith("?")
    assert len(unknown.lineage) < 200 and "characters left out" in unknown.lineage
    assert "/" not in unknown.lineage[2:]  # still one part of the lineage
    assert len(unknown.message.content) < 400 and "the tools are: echo" in unknown.message.content
    assert "got 2" in json.dumps(server.requests[1].body["messages"])


@shoal.tool
async def echo(x: int = 0) -> str:
    """Say what came in."""
    return f"got {x}"


def _run(server_class: Any, first: Any) -> tuple[Any, Any]:
    """Run an agent with ``echo`` whose model answers ``first``, then "done"."""
    with server_class([first, text_reply("done")]) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo])

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        result = arun(main(), timeout=60)
        assert not server.errors
        return result, server


def _like_openai(body: dict[str, Any]) -> Any:
    """Answer as OpenAI does: a request asking for more output than the model writes is a 400."""
    asked = body.get("max_tokens", body.get("max_completion_tokens"))
    if asked is not None and asked > 32_768:
        return ErrorReply(400, f"max_tokens is too large: {asked}. This model supports at most "
                               f"32768 completion tokens, whereas you provided {asked}.")
    if body["messages"][-1]["role"] == "tool":
        return text_reply("done")
    return tool_call_reply(call("echo", {"x": 1}))


@pytest.mark.parametrize("stream_dispatch", [True, False])
def test_a_large_token_budget_does_not_make_every_openai_request_ask_too_much(
        stream_dispatch: bool) -> None:
    # each request asked for all the tokens the budget left (200,000), more than any OpenAI
    # model writes: every request was refused, as in the first example of docs/agents.md
    with OpenAIWireServer(_like_openai) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo], stream_dispatch=stream_dispatch)

        async def main() -> Any:
            try:
                return await agent.run("go", budget=shoal.Budget(tokens=200_000))
            finally:
                await model.aclose()

        result = arun(main(), timeout=60)
        assert not server.errors
        asked = [r.body.get("max_tokens") for r in server.requests]
    # each asks for what it holds of the budget: with no max_tokens set, 4,096 at most
    # (see BudgetTracker.reserve), which every model writes
    assert result.output == "done" and asked == [HELD_BY_DEFAULT, HELD_BY_DEFAULT]


def test_a_small_token_budget_left_still_caps_an_openai_reply() -> None:
    with OpenAIWireServer(_like_openai) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo], stream_dispatch=False)

        async def main() -> Any:
            try:
                return await agent.run("go", budget=shoal.Budget(tokens=3_000))
            finally:
                await model.aclose()

        result = arun(main(), timeout=60)
        asked = [r.body.get("max_tokens") for r in server.requests]
    assert result.output == "done"
    assert asked[0] == 3_000 and 0 < asked[1] < 3_000


@shoal.tool(approval=True)
def send(text: str) -> str:
    """Send ``text`` (a side effect that needs a person's approval)."""
    return f"sent {text}"


def test_a_subagent_cancelled_while_its_approval_waits_lets_its_siblings_answer_come(
        ) -> None:
    # the approver (a person who walked away) never answers mailer#1's request: cancelling
    # mailer#1 withdrew it, but its function went on, and the answer to mailer#2's request,
    # in the same batch, waited for it for good: the run hung
    model = ScriptedModel.per_prompt({
        "go": [[scripted_call("mailer", task="m"), scripted_call("mailer", task="n")], "done"],
        "m": [[scripted_call("send", text="never")], "mailed m"],
        "n": [[scripted_call("send", text="yes")], "mailed n"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send])
    lead = shoal.Agent(name="lead", model=model, subagents=[mailer])
    asked: list[str] = []
    both_asked, walked_away = asyncio.Event(), asyncio.Event()

    async def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        asked.append(request.args["text"])
        if len(asked) == 2:
            both_asked.set()
        if request.args["text"] == "never":
            await walked_away.wait()
        return shoal.Decision.approve()

    async def scenario() -> Any:
        handle = lead.start("go", approver=approver)
        await both_asked.wait()
        handle.cancel("lead/mailer#1")
        return await handle

    result = arun(scenario(), virtual=True)
    assert result.output == "done"
    stuck, fine = result.children
    assert fine.status == "ok" and [c.status for c in fine.calls] == ["ok"]
    assert [c.status for c in stuck.calls] == ["cancelled"]


def _link() -> Any:
    """This agent process's link to its parent (the socket its tools have within reach)."""
    from shoal.agents._process import Link

    for found in gc.get_objects():
        if isinstance(found, Link):
            return found
    raise RuntimeError("no link to the parent in this process")


@shoal.tool
def close_the_gate() -> str:
    """Tell the root that the model asked for a pause of 1e300 seconds (no model would)."""
    _link().send(("gate_pause", "scripted", 1e300))
    return "closed"


def test_an_agent_process_cannot_close_its_trees_model_gate_for_good() -> None:
    # the root took any finite pause: every later request of the tree's model waited 1e300 s
    model = ScriptedModel.per_prompt({
        "go": [[scripted_call("reader", task="t")], "done"],
        "t": [[scripted_call("close_the_gate")], "read"]})
    assert model.name == "scripted"
    reader = shoal.Agent(name="reader", model=model, tools=[close_the_gate],
                         isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    gates = ModelGates(retry=ModelRetry(max_retry_after=0.5))
    result = arun(lead.run("go", gates=gates), timeout=30)
    assert result.output == "done" and result.children[0].output == "read"


class _NoUsage(OpenAIWireServer):
    """A compatible server that reports no usage, streamed or not."""

    def render_json(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {**super().render_json(body, reply), "usage": None}

    def render_events(self, body: dict[str, Any], reply: Any) -> Any:
        return (event for event in super().render_events(body, reply) if '"usage"' not in event)


#: each reply of :func:`stopped_by_the_token_budget`'s agent: 20,000 characters, so 1,250
#: tokens at the least
LONG_TEXT = "word " * 4_000


def stopped_by_the_token_budget(server: Any, stream_dispatch: bool) -> Any:
    """The result of an agent on ``server`` (every reply :data:`LONG_TEXT` and a call of
    ``echo``) under ``Budget(tokens=5_000)``, checked to stop on tokens, not at max_turns.
    """
    model = server.model()
    agent = shoal.Agent(name="a", model=model, tools=[echo], max_turns=50,
                        stream_dispatch=stream_dispatch)

    async def main() -> Any:
        try:
            return await agent.run("go", budget=shoal.Budget(tokens=5_000))
        finally:
            await model.aclose()

    with pytest.raises(shoal.BudgetExceeded) as raised:
        arun(main(), timeout=60)
    assert raised.value.limit == "tokens"
    assert 2 <= len(server.requests) <= 4  # not until max_turns
    result = raised.value.result
    assert result is not None and result.usage.output_tokens >= 1_250
    return result


@pytest.mark.parametrize("stream_dispatch", [True, False])
def test_a_token_budget_holds_against_a_server_that_reports_no_usage(
        stream_dispatch: bool) -> None:
    # its replies counted no tokens: Budget(tokens=) never stopped anything, however much
    # the tree read and wrote
    reply = tool_call_reply(call("echo", {"x": 1}), text=LONG_TEXT)
    with _NoUsage(lambda body: reply) as server:
        stopped_by_the_token_budget(server, stream_dispatch)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "30", True])
@pytest.mark.parametrize("server_class", [OpenAIWireServer, AnthropicWireServer])
def test_a_models_timeout_that_is_no_time_is_refused_when_made(server_class: Any,
                                                              timeout: Any) -> None:
    # 0, -1 and NaN failed every request as a timeout, retried before the run failed; "30"
    # failed the agent with Python's TypeError
    with server_class(text_reply("hi")) as server, pytest.raises(
            ConfigError, match="timeout must be a positive number of seconds"):
        server.model(timeout=timeout)


@pytest.mark.parametrize("max_tokens", [0, -5, 2.5, "100", None])
def test_an_anthropic_models_max_tokens_that_is_no_count_is_refused_when_made(
        max_tokens: Any) -> None:
    with AnthropicWireServer(text_reply("hi")) as server, pytest.raises(
            ConfigError, match="max_tokens must be a whole number"):
        server.model(max_tokens=max_tokens)


@pytest.mark.parametrize("first", [
    tool_call_reply(call("echo", {"x": 1}), text="\n\n"),
    text_reply(" \n\t"),  # blank: sent back as an empty answer, and asked again
], ids=["blank-before-a-call", "blank-answer"])
def test_anthropic_blank_text_of_a_reply_is_not_sent_back(first: Any) -> None:
    # the API refuses a message whose text is only whitespace ("text content blocks must
    # contain non-whitespace text"): every later request of the run was refused
    result, server = _run(AnthropicWireServer, first)
    assert result.output == "done"
    assert len(server.requests) == 2 and all(r.status == 200 for r in server.requests)


def test_an_openai_stream_broken_off_mid_event_is_retried_as_a_lost_connection() -> None:
    # its last line, cut short, read as data that is not JSON: a ModelError, not retried,
    # where a stream broken off anywhere else is a lost connection, retried
    whole = chunk({"content": "hello there"})
    cut = [chunk({"role": "assistant", "content": ""}), whole[:len(whole) // 2]]
    result, server = run_agent(RawOpenAI, [cut, None])
    assert result.output == "unused", repr(result)  # the second request's reply
    assert len(server.requests) == 2


def test_an_openai_stream_line_that_is_no_json_before_more_lines_is_not_retried() -> None:
    stream = [chunk({"role": "assistant", "content": ""}), 'data: {"id": 1, ',
              chunk({"content": "more"})]
    result, server = run_agent(RawOpenAI, [stream, None])
    assert isinstance(result, ModelError) and not isinstance(result, ModelConnectionError)
    assert "malformed stream data" in str(result) and len(server.requests) == 1


@pytest.mark.parametrize("prompt", ["", "   ", " \n\t"], ids=["empty", "spaces", "blank"])
def test_an_anthropic_models_blank_prompt_is_refused_before_the_request(prompt: str) -> None:
    # the API answered HTTP 400 ("text content blocks must contain non-whitespace text", or
    # for an empty one, left out, "messages: at least one message is required")
    with AnthropicWireServer(text_reply("done")) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model)

        async def main() -> Any:
            try:
                return await agent.run(prompt)
            finally:
                await model.aclose()

        with pytest.raises(ModelError) as raised:
            arun(main(), timeout=60)
        assert not server.requests  # refused before anything was sent
    blank = "empty" if not prompt else "only whitespace"
    assert raised.value.detail == (f"the prompt is {blank}: the Anthropic API refuses a user "
                                   "message without text; give it a task")
    assert not isinstance(raised.value, ModelHTTPError)


def test_an_openai_models_blank_prompt_is_sent_as_its_api_takes_it() -> None:
    # the rule is Anthropic's: chat completions take a user message of empty text
    with OpenAIWireServer(text_reply("done")) as server:
        model = server.model()

        async def main() -> Any:
            try:
                return await shoal.Agent(name="a", model=model).run(" ")
            finally:
                await model.aclose()

        assert arun(main(), timeout=60).output == "done"
        assert not server.errors and len(server.requests) == 1
