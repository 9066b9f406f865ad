"""Agents: how long a turn's tool phase and a subagent fan-out take, against their floors.

1. One turn asking for 5 tool calls of 300 ms (ScriptedModel, no model latency): the tool
   phase (first call queued to last call finished, from the run's events) against
   ``asyncio.gather`` of the same 5 coroutines. Target: < 450 ms.
2. A lead starting 4 subagents in one turn, each making 2 parallel 300 ms calls: the whole run
   against the critical path (one 300 ms call). Target: < 1 s.
3. 50 subagents (model latency 50 ms per request): the run against its critical path of three
   model requests (lead, subagent, lead).
4. 50 subagents through the real ``openai`` SDK against a local server speaking the OpenAI
   protocol, answering 429 (``Retry-After: 0.05``) to every third request, against the same
   run without failures. Check: all 50 finish, none fails for a 429.
5. Per-turn overhead against conversation length: an agent with a 10,000-message history
   runs turns (each one model request and one tool call, on a model that answers at once)
   against the same agent with a 10-message history, measured in the same run. Target: the
   difference per turn is under 2 ms (a turn's cost must not grow with the conversation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import shoal
from bench.common import BenchResult, Target, cli
from shoal.agents.context import TreeContext
from shoal.agents.run import AgentRun
from shoal.events import Event, NodeFinished, NodeQueued
from shoal.models.base import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelResponse,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from shoal.testing import ScriptedModel, call

NAME = "agents"
CALL_SECONDS = 0.3


@shoal.tool
async def lookup(key: str) -> str:
    """Wait like an I/O call of 300 ms."""
    await asyncio.sleep(CALL_SECONDS)
    return f"value of {key}"


def tool_phase(events: list[Event]) -> float:
    queued = [e.time for e in events if isinstance(e, NodeQueued)]
    ended = [e.time for e in events if isinstance(e, NodeFinished)]
    return max(ended) - min(queued)


async def one_turn(calls: int) -> tuple[float, bool]:
    model = ScriptedModel([[call("lookup", key=f"k{i}") for i in range(calls)], "done"])
    events: list[Event] = []
    result = await shoal.Agent(name="lead", model=model, tools=[lookup]).run(
        "go", on_event=events.append)
    return tool_phase(events), result.ok and all(c.ok for c in result.calls)


async def gather_floor(calls: int) -> float:
    began = time.perf_counter()
    await asyncio.gather(*(lookup.fn(f"k{i}") for i in range(calls)))
    return time.perf_counter() - began


async def four_subagents() -> tuple[float, bool]:
    tasks = [f"topic {i}" for i in range(4)]
    sub_model = ScriptedModel.per_prompt({
        t: [[call("lookup", key=f"{t}/a"), call("lookup", key=f"{t}/b")], f"summary {t}"]
        for t in tasks})
    researcher = shoal.Agent(name="researcher", model=sub_model, tools=[lookup])
    lead_model = ScriptedModel([[call("researcher", task=t) for t in tasks], "report"])
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[researcher])
    began = time.perf_counter()
    result = await lead.run("go")
    return time.perf_counter() - began, result.ok and len(result.children) == 4


async def fifty_subagents(latency: float) -> tuple[float, bool]:
    worker = shoal.Agent(name="worker",
                         model=ScriptedModel.per_prompt({"*": ["done"]}, latency=latency))
    lead_model = ScriptedModel([[call("worker", task=f"job {i}") for i in range(50)], "all"],
                               latency=latency)
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[worker])
    began = time.perf_counter()
    result = await lead.run("go")
    return time.perf_counter() - began, result.ok and sum(c.ok for c in result.calls) == 50


def wire_fifty(fail_every: int | None) -> tuple[float, int, bool]:
    from tests.wire import OpenAIWireServer, text_reply, tool_call_reply
    from tests.wire import call as wire_call

    def responder(body: dict[str, Any]) -> Any:
        prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if prompt != "go":
            return text_reply(f"finished {prompt}")
        if any(m["role"] == "tool" for m in body["messages"]):
            return text_reply("all done")
        return tool_call_reply(*[wire_call("worker", {"task": f"job {i}"}) for i in range(50)])

    with OpenAIWireServer(responder) as server:
        if fail_every:
            server.fail_every(fail_every, status=429, retry_after=0.05)
        model = server.model()
        lead = shoal.Agent(name="lead", model=model,
                           subagents=[shoal.Agent(name="worker", model=model)])

        async def main() -> tuple[float, bool]:
            began = time.perf_counter()
            try:
                result = await lead.run("go")
            finally:
                await model.aclose()
            ok = [c.status for c in result.calls] == ["ok"] * 50 and not any(
                "429" in c.message.content for c in result.calls)
            return time.perf_counter() - began, ok

        elapsed, ok = asyncio.run(main())
        refused = sum(r.status == 429 for r in server.requests)
    return elapsed, refused, ok


@shoal.tool
async def noop(key: str) -> str:
    """Answer at once."""
    return key


class _Instant(shoal.Model):
    """Asks for one ``noop`` call per request until the last, then answers; costs nothing.

    Unlike ``ScriptedModel`` it never looks at the conversation, so what is measured is the
    agent's own per-turn cost.
    """

    name = "instant"

    def __init__(self, turns: int) -> None:
        self.left = turns
        self.first_answered = 0.0

    async def request(self, request: ModelRequest) -> ModelResponse:
        if not self.first_answered:
            self.first_answered = time.perf_counter()
        self.left -= 1
        if self.left <= 0:
            return ModelResponse(text="done", usage=Usage(1, 1, 1))
        return ModelResponse(tool_calls=(call("noop", key=str(self.left)),), usage=Usage(1, 1, 1))


def history(messages: int) -> list[Message]:
    """A plausible conversation of ``messages`` messages (user, tool call, tool result ...)."""
    made: list[Message] = []
    while len(made) < messages:
        n = len(made)
        made.append(UserMessage(f"question {n}: " + "words " * 15))
        made.append(AssistantMessage("", (call("noop", key=f"k{n}"),)))
        made.append(ToolResultMessage(f"call_{n}", "noop", "a result " * 12))
    return made[:messages]


async def turns_with_history(past: Sequence[Message], turns: int, store: Any) -> float:
    """Seconds per turn of an agent whose conversation starts with ``past``.

    Timed from the first request on: before it, the run takes in the ``past`` it was handed
    (each message once, as a run that grew the conversation itself would have, turn by turn).
    """
    model = _Instant(turns)
    async with shoal.Runtime(store=store) as runtime:
        agent = shoal.Agent(name="lead", model=model, tools=[noop], max_turns=turns)
        ctx = TreeContext(run_id=f"history-{len(past)}-{time.monotonic_ns()}", runtime=runtime,
                          budget=None, sinks=[])
        run = AgentRun(agent, ctx, lineage="lead", depth=0, prompt="go on")
        run.result.messages.extend(past)
        result = await run.run()
        elapsed = time.perf_counter() - model.first_answered
    if not result.ok or result.turns != turns:
        raise RuntimeError(f"history run ended {result.status} after {result.turns} turns")
    return elapsed / (turns - 1)


def history_overhead(result: BenchResult, quick: bool) -> None:
    """Workload 5: a turn with 10,000 messages of history against one with 10."""
    turns, reps = (20, 2) if quick else (50, 5)
    long_past, short_past = history(10_000), history(10)
    for store, label in (("memory", "in-memory journal"), (None, "no journal")):
        asyncio.run(turns_with_history(short_past, 5, store))  # warm-up
        short = min(asyncio.run(turns_with_history(short_past, turns, store))
                    for _ in range(reps))
        long = min(asyncio.run(turns_with_history(long_past, turns, store))
                   for _ in range(reps))
        result.add(f"turn with 10,000-message history ({label})", long, "s", floor=short)
        result.add(f"  difference per turn vs 10 messages ({label})", long - short, "s",
                   target=Target("value", "<=", 0.002))
    result.check("history turns ok", True)


def main(quick: bool = False) -> BenchResult:
    reps = 1 if quick else 3
    result = BenchResult(NAME)
    result.header("tool phases and subagent fan-outs on ScriptedModel; 50 subagents over HTTP")

    phases = [asyncio.run(one_turn(5)) for _ in range(reps)]
    floors = [asyncio.run(gather_floor(5)) for _ in range(reps)]
    result.add("one turn, 5 x 300 ms calls: tool phase (best)", min(p for p, _ in phases), "s",
               floor=min(floors), target=Target("value", "<=", 0.45))
    result.check("5 calls ok", all(ok for _, ok in phases))

    runs = [asyncio.run(four_subagents()) for _ in range(reps)]
    result.add("lead + 4 subagents x 2 x 300 ms: whole run (best)", min(t for t, _ in runs), "s",
               floor=CALL_SECONDS, target=Target("value", "<=", 1.0))
    result.check("4 subagents ok", all(ok for _, ok in runs))

    latency = 0.05
    fifty = [asyncio.run(fifty_subagents(latency)) for _ in range(reps)]
    result.add("50 subagents, 50 ms per model request (best)", min(t for t, _ in fifty), "s",
               floor=3 * latency)
    result.check("50 subagents ok", all(ok for _, ok in fifty))

    wire_fifty(None)  # warm-up, untimed: the SDK's first import and connection set-up
    clean, _, clean_ok = wire_fifty(None)
    stormy, refused, stormy_ok = wire_fifty(3)
    result.add("50 subagents over HTTP, 429 on every 3rd request", stormy, "s", floor=clean)
    result.note(f"{refused} requests answered 429 and retried after Retry-After")
    result.check("50 subagents over HTTP ok (no 429 leaked)", clean_ok and stormy_ok)

    history_overhead(result, quick)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
