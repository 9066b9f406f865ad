"""Agents over the real SDKs and real HTTP: local servers speaking the providers' protocols."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import shoal
from tests.conftest import arun
from tests.wire import AnthropicWireServer, OpenAIWireServer, call, text_reply, tool_call_reply

LEAD_PROMPT = "Split the job over workers"


@shoal.tool
async def fetch(item: str) -> str:
    """Fetch one item (takes 300 ms)."""
    await asyncio.sleep(0.3)
    return f"contents of {item}"


def _openai_first_user(body: dict[str, Any]) -> str:
    return next(str(m["content"]) for m in body["messages"] if m["role"] == "user")


def _openai_has_results(body: dict[str, Any]) -> bool:
    return any(m["role"] == "tool" for m in body["messages"])


def test_fifty_subagents_through_a_server_answering_429_to_every_third_request() -> None:
    def responder(body: dict[str, Any]) -> Any:
        prompt = _openai_first_user(body)
        if prompt == LEAD_PROMPT:
            if _openai_has_results(body):
                return text_reply("all 50 done")
            return tool_call_reply(*[call("worker", {"task": f"job {i}"}) for i in range(50)])
        return text_reply(f"finished {prompt}")

    with OpenAIWireServer(responder) as server:
        server.fail_every(3, status=429, retry_after=0.05)
        model = server.model("gpt-4.1-mini")
        worker = shoal.Agent(name="worker", model=model, instructions="Do one job.")
        lead = shoal.Agent(name="lead", model=model, subagents=[worker],
                           instructions="Split the work.")

        async def main() -> shoal.AgentResult[Any]:
            try:
                return await lead.run(LEAD_PROMPT)
            finally:
                await model.aclose()

        began = time.perf_counter()
        result = arun(main(), timeout=60)
        elapsed = time.perf_counter() - began
        statuses = [r.status for r in server.requests]
    print(f"50 subagents, 429 on every third request: {elapsed:.2f} s, "
          f"{statuses.count(429)} x 429")
    assert result.output == "all 50 done"
    assert [c.status for c in result.calls] == ["ok"] * 50
    assert sorted(c.message.content for c in result.calls) == sorted(
        f"finished job {i}" for i in range(50))
    assert all("429" not in c.message.content for c in result.calls)
    assert statuses.count(429) >= 17  # every third of 52+ requests was refused ...
    assert statuses.count(200) == 52  # ... and each was retried until answered
    assert not server.errors


def test_a_turn_of_five_300ms_calls_over_the_openai_protocol_overlaps() -> None:
    def responder(body: dict[str, Any]) -> Any:
        if _openai_has_results(body):
            results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
            return text_reply(" / ".join(results))
        return tool_call_reply(*[call("fetch", {"item": f"i{i}"}) for i in range(5)])

    with OpenAIWireServer(responder) as server:
        model = server.model()
        agent = shoal.Agent(name="lead", model=model, tools=[fetch])
        events: list[shoal.Event] = []

        async def main() -> shoal.AgentResult[Any]:
            try:
                return await agent.run("fetch five", on_event=events.append)
            finally:
                await model.aclose()

        result = arun(main())
        last_body = server.bodies[-1]
    assert result.output == " / ".join(f"contents of i{i}" for i in range(5))
    # the five 300 ms calls overlap: all five started before the first ended (an order of
    # events, which a loaded machine does not change, where a bound on seconds would race it)
    assert _starts_and_ends(events, "fetch") == ["start"] * 5 + ["end"] * 5
    tool_msgs = [m for m in last_body["messages"] if m["role"] == "tool"]
    assigned = last_body["messages"][1]["tool_calls"]
    assert [m["tool_call_id"] for m in tool_msgs] == [c["id"] for c in assigned]


def _starts_and_ends(events: list[shoal.Event], tool: str, under: str = "") -> list[str]:
    """The starts and ends of ``tool``'s calls (below lineage ``under``), in order."""
    return ["start" if isinstance(e, shoal.NodeStarted) else "end" for e in events
            if isinstance(e, (shoal.NodeStarted, shoal.NodeFinished)) and e.tool == tool
            and e.lineage.startswith(under)]


def _anthropic_first_user(body: dict[str, Any]) -> str:
    content = body["messages"][0]["content"]
    return content if isinstance(content, str) else str(content[0].get("text", ""))


def _anthropic_results(body: dict[str, Any]) -> list[str]:
    found = []
    for message in body["messages"]:
        if message["role"] == "user" and isinstance(message["content"], list):
            found += [str(b["content"]) for b in message["content"]
                      if b.get("type") == "tool_result"]
    return found


def test_lead_and_four_subagents_over_the_anthropic_protocol_with_a_500() -> None:
    def responder(body: dict[str, Any]) -> Any:
        prompt = _anthropic_first_user(body)
        results = _anthropic_results(body)
        if prompt == LEAD_PROMPT:
            if results:
                return text_reply(" + ".join(results))
            return tool_call_reply(*[call("worker", {"task": f"topic {i}"}) for i in range(4)])
        if results:
            return text_reply(f"{prompt}: {len(results)} fetched")
        return tool_call_reply(call("fetch", {"item": f"{prompt}/a"}),
                               call("fetch", {"item": f"{prompt}/b"}))

    with AnthropicWireServer(responder) as server:
        server.fail_next(1, status=500)
        model = server.model("claude-haiku-4-5")
        worker = shoal.Agent(name="worker", model=model, tools=[fetch])
        lead = shoal.Agent(name="lead", model=model, subagents=[worker])

        events: list[shoal.Event] = []

        async def main() -> shoal.AgentResult[Any]:
            try:
                return await lead.run(LEAD_PROMPT, on_event=events.append)
            finally:
                await model.aclose()

        result = arun(main())
        bodies = server.bodies
        statuses = [r.status for r in server.requests]
    assert result.output == " + ".join(f"topic {i}: 2 fetched" for i in range(4))
    assert statuses.count(500) == 1
    # side by side (in the order of events, which a loaded machine does not change): the four
    # subagents all began before one ended, and each one's two 300 ms fetches overlap
    subagents = [e for e in events if isinstance(e, (shoal.AgentStarted, shoal.AgentFinished))
                 and e.lineage != "lead"]
    assert [isinstance(e, shoal.AgentStarted) for e in subagents] == [True] * 4 + [False] * 4
    for i in range(1, 5):
        assert _starts_and_ends(events, "fetch", f"lead/worker#{i}/") == [
            "start", "start", "end", "end"]
    for body in bodies:  # no subagent saw another's conversation
        prompt = _anthropic_first_user(body)
        if prompt.startswith("topic"):
            others = [f"topic {i}" for i in range(4) if f"topic {i}" != prompt]
            assert not any(o in str(body["messages"]) for o in others)
    assert result.usage.input_tokens > 0 and result.usage.requests == 2 + 4 * 2
    assert not server.errors
