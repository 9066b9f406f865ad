"""Found by attacking shoal, session 32: a model's repeated call ids, a ``Retry-After`` too
large for a float, and an agent process that lies about its depth.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from fractions import Fraction
from typing import Any

import pytest

import shoal
from shoal.agents.toolcalls import with_distinct_ids
from shoal.exceptions import ModelHTTPError
from shoal.models._common import parse_retry_after
from shoal.models.base import (
    AssistantMessage,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolResultMessage,
    UserMessage,
)
from shoal.models.retry import ModelGate, ModelRetry
from shoal.testing import ScriptedModel, call, run_virtual
from tests.conftest import arun
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    OpenAIWireServer,
    text_reply,
    tool_call_reply,
)
from tests.wire import call as wire_call

SERVERS = [OpenAIWireServer, AnthropicWireServer]
got: list[Any] = []


@shoal.tool
async def echo(x: int) -> str:
    """Say which call this was."""
    got.append(x)
    return f"echo {x}"


@pytest.mark.parametrize("stream_dispatch", [True, False])
@pytest.mark.parametrize("server_class", SERVERS)
def test_two_calls_under_one_id_both_run_and_the_provider_takes_the_next_request(
        server_class: Any, stream_dispatch: bool) -> None:
    # both ran, and both results went back under one id: the API refused the next request
    # (Anthropic: a 400, not retried, which ended the run)
    got.clear()
    first = tool_call_reply(wire_call("echo", {"x": 1}, id="dup"),
                            wire_call("echo", {"x": 2}, id="dup"))
    with server_class([first, text_reply("done")]) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[echo],
                            stream_dispatch=stream_dispatch)

        async def main() -> Any:
            try:
                return await agent.run("go")
            finally:
                await model.aclose()

        result = arun(main(), timeout=120)
        assert not server.errors, server.errors
    assert result.output == "done" and sorted(got) == [1, 2]
    ids = [record.call.id for record in result.calls]
    assert ids[0] == "dup" and ids[1] != "dup" and len(set(ids)) == 2
    sent = json.dumps(server.requests[1].body["messages"])
    assert all(json.dumps(i) in sent for i in ids)  # the reply kept and each result's id


def test_a_scripted_reply_with_repeated_and_empty_ids_gets_one_id_per_call() -> None:
    model = ScriptedModel([[call("echo", x=1, call_id="c"), call("echo", x=2, call_id="c"),
                            call("echo", x=3, call_id="c_1"), call("echo", x=4, call_id="c"),
                            ToolCall("", "echo", '{"x": 5}')], "done"])
    result = shoal.Agent(name="a", model=model, tools=[echo]).run_sync("go")
    ids = [record.call.id for record in result.calls]
    assert len(set(ids)) == 5 and all(ids)
    assert ids[0] == "c" and ids[1] == "c_1"  # the first keeps its id
    asked = next(m for m in result.messages if isinstance(m, AssistantMessage) and m.tool_calls)
    assert [c.id for c in asked.tool_calls] == ids  # the conversation says what ran
    answers = [m.call_id for m in result.messages if isinstance(m, ToolResultMessage)]
    assert answers == ids


def test_distinct_ids_are_decided_by_the_calls_before_each() -> None:
    # a streamed reply's calls are taken one by one: each id depends only on those before it
    calls = (ToolCall("a", "t"), ToolCall("a", "t"), ToolCall("", "t"), ToolCall("a_1", "t"))
    whole = with_distinct_ids(ModelResponse(tool_calls=calls), "lead").tool_calls
    for n in range(1, len(calls)):
        prefix = with_distinct_ids(ModelResponse(tool_calls=calls[:n]), "lead").tool_calls
        assert prefix == whole[:n]
    assert len({c.id for c in whole}) == 4 and all(c.id for c in whole)
    same = ModelResponse(tool_calls=(ToolCall("x", "t"), ToolCall("y", "t")))
    assert with_distinct_ids(same, "lead") is same


@pytest.mark.parametrize("header", [{"retry-after": "1e309"}, {"retry-after-ms": "1e400"},
                                    {"Retry-After": " 1E999 "}])
def test_a_retry_after_too_large_for_a_float_is_longer_than_any_wait(
        header: dict[str, str]) -> None:
    # it was read as absent: the request was retried at once, as with no Retry-After at all
    assert parse_retry_after(header) == float("inf")


@pytest.mark.parametrize("header", [{"retry-after": "nan"}, {"retry-after-ms": "NaN"}])
def test_a_retry_after_that_is_no_number_is_absent(header: dict[str, str]) -> None:
    assert parse_retry_after(header) is None


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_429_asking_for_1e309_seconds_fails_at_once_saying_so(server_class: Any) -> None:
    # read as no Retry-After: retried after the back-off, again and again, as a 429 without one
    with server_class([ErrorReply(429, headers={"retry-after": "1e309"}),
                       text_reply("ok")]) as server:
        model = server.model()
        gate = ModelGate("m", retry=ModelRetry(retries=3, backoff=0.005))

        async def main() -> Any:
            try:
                return await gate.request(model, ModelRequest("", [UserMessage("hi")]))
            finally:
                await model.aclose()

        with pytest.raises(ModelHTTPError) as info:
            arun(main(), timeout=60)
        assert len(server.requests) == 1 and gate.retries == 0
    assert "longer than a number can say" in str(info.value)
    assert "max_retry_after=600" in str(info.value)


@shoal.tool
def ask_subagent(depth: int, where: str) -> str:
    """Ask the tree for a subagent of the caller's choosing, as the agent's process does."""
    from tests.test_agent_socket_garbage import _link

    return repr(_link().ask("take_subagent", depth, where))


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_child_process_leak")
def test_an_agent_process_cannot_take_a_subagent_at_a_depth_or_place_not_its_own() -> None:
    # depth 0 from an agent at depth 1 was taken as the lead's own subagent: Budget(depth=1)
    # dodged; a lineage outside its subtree was charged as another agent's
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("ask_subagent", depth=0, where="lead/reader#1/x#1"),
               call("ask_subagent", depth=3, where="lead/other#1/x#1"),
               call("ask_subagent", depth=True, where="lead/reader#1/x#1"),
               call("ask_subagent", depth=2, where="lead/reader#1/x#1")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[ask_subagent], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(depth=1))
    [child] = result.children
    assert [c.status for c in child.calls] == ["failed", "failed", "failed", "ok"]
    assert all("not one of its own subtree" in c.message.content for c in child.calls[:3])
    assert "depth" in child.calls[3].message.content  # the honest ask: over Budget(depth=1)


@pytest.mark.parametrize("with_fraction", [False, True])
def test_a_counter_of_huge_ints_and_a_float_sums_the_same_in_every_order(
        with_fraction: bool) -> None:
    # 10**400 + 0.5 went past a float's range and was refused, or not, by commit order
    values: list[Any] = [10**400, -10**400, 0.5]
    if with_fraction:
        values.append(Fraction(1, 3))
    sums = set()
    for order in itertools.permutations(values):
        board = shoal.Board(n=shoal.merge.counter)
        for value in order:
            board.write("n", value)
        sums.add(board["n"])
    assert sums == {float(Fraction(5, 6)) if with_fraction else 0.5}  # rounded once


async def _slept(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return asyncio.get_running_loop().time()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seconds", [1e12, 1e17, 1e300])
def test_the_virtual_clock_leaps_to_a_timer_years_away_at_once(seconds: float) -> None:
    # asyncio caps a select's timeout at a day: the clock crept a day per turn of the loop
    # (1e300 s: for good), and near 1e300 the timer never came due at all
    assert seconds <= run_virtual(_slept(seconds)) <= seconds * (1 + 1e-12)


@pytest.mark.timeout(60)
def test_a_sleep_for_ever_on_the_virtual_clock_waits_like_any_other_loop() -> None:
    # it spun, a day of virtual time per turn of the loop, until something real woke it
    async def main() -> float:
        loop = asyncio.get_running_loop()
        sleeping = asyncio.ensure_future(asyncio.sleep(math.inf))
        threading.Timer(0.3, loop.call_soon_threadsafe, (sleeping.cancel,)).start()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        return loop.time()

    assert run_virtual(main()) == 0  # no timer came due: no virtual time passed
