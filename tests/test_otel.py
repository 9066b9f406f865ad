"""OpenTelemetry (``shoal.otel``): spans for runs, agents, model requests and tool calls.

Spans are checked as the SDK hands them to an exporter: in memory, and over OTLP/HTTP to a
receiver started on loopback (``tests/otlp.py``), which decodes each request with the real
protobuf types (``ExportTraceServiceRequest``). Workers in other processes export their own
spans to the same receiver; they must land in the caller's trace, under the call's span.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import shoal
from shoal import Plan, Runtime
from shoal.exceptions import ConfigError
from shoal.testing import ScriptedModel, call, run_virtual
from tests import otel_tools
from tests.conftest import ONE_AT_A_TIME, arun

if TYPE_CHECKING:
    from tests.otlp import Receiver

pytest_plugins = ("tests.otlp",)  # the OTLP/HTTP receiver's fixtures

ROOT = Path(__file__).resolve().parent.parent


# ---- reading spans ----------------------------------------------------------------------


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """shoal instrumented with a provider that keeps every ended span in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider)
    try:
        yield exporter
    finally:
        shoal.otel.uninstrument()
        provider.shutdown()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [s for s in named(spans, name)
             if all((s.attributes or {}).get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    own = parent.context.span_id
    return sorted((s for s in spans if s.parent is not None and s.parent.span_id == own),
                  key=lambda s: (s.start_time or 0, s.name))


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def seconds(span: ReadableSpan) -> float:
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


def within(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.start_time and child.end_time and parent.start_time and parent.end_time
    return parent.start_time <= child.start_time <= child.end_time <= parent.end_time


def links(span: ReadableSpan) -> list[tuple[int, str, str]]:
    return sorted((link.context.span_id, str((link.attributes or {})["shoal.edge.reason"]),
                   str((link.attributes or {})["shoal.edge.source"])) for link in span.links)


# ---- a plan run ---------------------------------------------------------------------------


@shoal.tool
async def nap(seconds: float, tag: str = "") -> str:
    await asyncio.sleep(seconds)
    return tag


@shoal.tool(writes="file:{path}")
async def write(path: str, text: str) -> int:
    await asyncio.sleep(1.0)
    return len(text)


@shoal.tool(exclusive=True)
async def barrier() -> None:
    await asyncio.sleep(0.5)


@shoal.tool
async def explode(x: Any) -> None:
    await asyncio.sleep(0.25)
    raise ValueError(f"no good: {x}")


@shoal.tool(approval=True)
async def deploy(target: str) -> str:
    await asyncio.sleep(0.5)
    return f"deployed {target}"


def flaky_tool() -> shoal.Tool[..., Any]:
    tries: list[int] = []

    async def flaky(n: int) -> int:
        tries.append(n)
        await asyncio.sleep(0.5)
        if len(tries) < 2:
            raise ConnectionError("first try fails")
        return n

    return shoal.tool(flaky, retries=2)


def test_a_plan_run_is_a_run_span_over_one_span_per_call(exported: InMemorySpanExporter) -> None:
    plan = Plan("otel demo")
    a = plan.call(nap, seconds=1.0, tag="a")
    b = plan.call(nap, seconds=2.0, tag=a)  # data: waits for a
    w1 = plan.call(write, path="x.txt", text="one")
    w2 = plan.call(write, path="x.txt", text="two")  # resource: waits for w1
    late = plan.call(nap, seconds=0.5, after=[b])  # after: waits for b
    flaky = plan.call(flaky_tool(), n=7)
    boom = plan.call(explode, x=a)
    doomed = plan.call(nap, seconds=1.0, tag=boom)  # skipped: boom fails
    yes = plan.call(deploy, target="staging")
    no = plan.call(deploy, target="production")
    wall = plan.call(barrier)  # exclusive: after everything above

    def approve(request: shoal.ApprovalRequest) -> bool:
        return bool(request.args["target"] == "staging")

    async def go() -> shoal.RunResult:
        async with Runtime(approver=approve, seed=1) as runtime:
            return await runtime.run(plan)

    result = run_virtual(go())
    assert result[doomed].status == "skipped" and result[no].status == "denied"
    spans = exported.get_finished_spans()
    run_span = one(spans, "shoal.run")
    assert attr(run_span, "shoal.run.id") == result.run_id
    assert attr(run_span, "shoal.run.nodes") == 11
    assert attr(run_span, "shoal.run.ok") == 8 and attr(run_span, "shoal.run.failed") == 1
    assert run_span.status.status_code is StatusCode.ERROR  # a call failed
    calls = children(spans, run_span)
    assert len(calls) == 11 and len(spans) == 12
    assert {s.context.trace_id for s in spans} == {run_span.context.trace_id}
    by_node = {attr(s, "shoal.node.id"): s for s in calls}

    # the GenAI tool attributes and shoal's own, and the times of the virtual clock
    span_b = by_node[b.node]
    assert span_b.name == "execute_tool nap"
    assert attr(span_b, "gen_ai.operation.name") == "execute_tool"
    assert attr(span_b, "gen_ai.tool.name") == "nap"
    assert attr(span_b, "shoal.call.status") == "ok" and attr(span_b, "shoal.call.attempts") == 1
    assert attr(span_b, "shoal.call.isolation") == "inline"
    assert seconds(span_b) == pytest.approx(2.0, abs=1e-6)
    assert seconds(by_node[a.node]) == pytest.approx(1.0, abs=1e-6)
    assert span_b.start_time == by_node[a.node].end_time  # it started as a ended
    assert all(within(s, run_span) for s in calls)
    assert seconds(run_span) == pytest.approx(result.makespan, abs=1e-6)
    assert "gen_ai.tool.call.arguments" not in (span_b.attributes or {})  # content is opt-in

    # edges as links, each saying why
    sid = {node: s.context.span_id for node, s in by_node.items()}
    assert links(span_b) == [(sid[a.node], "data", a.node)]
    assert links(by_node[w2.node]) == [(sid[w1.node], "resource", w1.node)]
    assert links(by_node[late.node]) == [(sid[b.node], "after", b.node)]
    assert links(by_node[doomed.node]) == [(sid[boom.node], "data", boom.node)]
    waited = links(by_node[wall.node])
    assert {reason for _, reason, _ in waited} == {"exclusive"}
    assert {source for _, _, source in waited} == {n for n in sid if n != wall.node}
    assert links(by_node[a.node]) == []

    # a retry, a failure, a skip
    span_flaky = by_node[flaky.node]
    assert attr(span_flaky, "shoal.call.attempts") == 2
    assert [e.name for e in span_flaky.events] == ["shoal.retry", "shoal.attempt"]
    retry = span_flaky.events[0]
    assert "first try fails" in str((retry.attributes or {})["shoal.retry.error"])
    assert span_flaky.status.status_code is StatusCode.UNSET
    span_boom = by_node[boom.node]
    assert span_boom.status.status_code is StatusCode.ERROR
    assert "no good" in (span_boom.status.description or "")
    assert attr(span_boom, "error.type") == "ValueError"
    span_doomed = by_node[doomed.node]
    assert attr(span_doomed, "shoal.call.status") == "skipped"
    assert attr(span_doomed, "shoal.call.attempts") == 0
    assert boom.node in str(attr(span_doomed, "shoal.call.reason"))
    assert seconds(span_doomed) == 0.0

    # approvals: the decision on the call's span, as attributes and events
    span_yes, span_no = by_node[yes.node], by_node[no.node]
    assert attr(span_yes, "shoal.approval.verdict") == "approve"
    assert attr(span_yes, "shoal.call.status") == "ok"
    assert [e.name for e in span_yes.events] == ["shoal.approval.requested",
                                                 "shoal.approval.decided"]
    assert attr(span_yes, "shoal.call.isolation") == "inline"
    assert attr(span_no, "shoal.approval.verdict") == "deny"
    assert attr(span_no, "shoal.call.status") == "denied"
    assert str(attr(span_no, "shoal.approval.by")).endswith("approve")
    assert [e.name for e in span_no.events] == ["shoal.approval.requested",
                                                "shoal.approval.decided"]


def test_a_tool_s_own_spans_are_children_of_its_call_span(
        exported: InMemorySpanExporter) -> None:
    @shoal.tool
    def on_a_thread(x: int) -> int:
        with tracer.start_as_current_span("inside thread"):
            return x

    @shoal.tool
    async def inline(x: int) -> int:
        with tracer.start_as_current_span("inside inline"):
            return x

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("tests")
    plan = Plan()
    t = plan.call(on_a_thread, x=1)
    i = plan.call(inline, x=2)
    shoal.run_sync(plan)
    spans = exported.get_finished_spans()
    for node, inner in ((t.node, "inside thread"), (i.node, "inside inline")):
        call_span = one(spans, f"execute_tool {node.split('#')[0]}")
        assert [s.name for s in children(spans, call_span)] == [inner]


def test_a_run_started_inside_a_span_of_the_caller_is_its_child(
        exported: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with provider.get_tracer("tests").start_as_current_span("caller"):
        plan = Plan()
        plan.call(nap, seconds=0.0)
        shoal.run_sync(plan)
    spans = exported.get_finished_spans()
    assert [s.name for s in children(spans, one(spans, "caller"))] == ["shoal.run"]


def test_a_run_past_its_deadline_is_a_failed_run_span(exported: InMemorySpanExporter) -> None:
    plan = Plan()
    plan.call(nap, seconds=0.5)
    plan.call(nap, seconds=60.0)
    result = run_virtual(shoal.run(plan, deadline=2.0))
    assert result.counts["ok"] == 1 and result.counts["timed_out"] == 1
    spans = exported.get_finished_spans()
    run_span = one(spans, "shoal.run")
    assert run_span.status.status_code is StatusCode.ERROR
    assert "deadline" in (run_span.status.description or "")
    assert seconds(run_span) == pytest.approx(2.0, abs=1e-6)
    slow = one(spans, "execute_tool nap", **{"shoal.call.status": "timed_out"})
    assert slow.status.status_code is StatusCode.ERROR and seconds(slow) == pytest.approx(2.0)


def test_a_run_cancelled_from_outside_still_ends_every_span(
        exported: InMemorySpanExporter) -> None:
    plan = Plan()
    done = plan.call(nap, seconds=0.1)
    plan.call(nap, seconds=60.0, tag=done)
    plan.call(nap, seconds=60.0)

    async def go() -> None:
        async with Runtime() as runtime:
            task = asyncio.ensure_future(runtime.run(plan))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run_virtual(go())
    spans = exported.get_finished_spans()
    run_span = one(spans, "shoal.run")
    assert run_span.status.status_code is StatusCode.ERROR
    calls = children(spans, run_span)
    assert sorted(str(attr(s, "shoal.call.status")) for s in calls) == [
        "cancelled", "cancelled", "ok"]
    assert all(within(s, run_span) for s in calls)


# ---- an agent tree ------------------------------------------------------------------------


@shoal.tool
async def lookup(key: str) -> str:
    await asyncio.sleep(1.0)
    return key.upper()


def test_an_agent_tree_nests_agents_model_requests_and_tool_calls(
        exported: InMemorySpanExporter) -> None:
    sub_model = ScriptedModel.per_prompt({
        f"topic {i}": [[call("lookup", key=f"k{i}"), call("lookup", key=f"j{i}")],
                       f"summary {i}"]
        for i in range(2)}, name="openai:gpt-4.1-mini")
    researcher = shoal.Agent(name="researcher", model=sub_model, tools=[lookup])
    lead_model = ScriptedModel([
        [call("researcher", task="topic 0"), call("researcher", task="topic 1"),
         call("no_such_tool")],
        "final report"], name="anthropic:claude-sonnet-4")
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[researcher])

    result = run_virtual(lead.run("write a report"))
    assert result.output == "final report"
    spans = exported.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    run_span = one(spans, "shoal.run")
    assert run_span.parent is None
    assert attr(run_span, "shoal.run.id") == result.run_id
    lead_span = one(spans, "invoke_agent lead")
    assert children(spans, run_span) == [lead_span]
    assert attr(lead_span, "gen_ai.operation.name") == "invoke_agent"
    assert attr(lead_span, "gen_ai.agent.name") == "lead"
    assert attr(lead_span, "shoal.agent.status") == "ok"
    assert attr(lead_span, "shoal.agent.turns") == 2
    assert attr(lead_span, "gen_ai.usage.input_tokens") == result.usage.input_tokens
    assert attr(lead_span, "gen_ai.usage.output_tokens") == result.usage.output_tokens

    # the lead: two model requests, two subagent calls and the call it asked for wrongly
    below = children(spans, lead_span)
    assert sorted(s.name for s in below) == [
        "chat claude-sonnet-4", "chat claude-sonnet-4", "execute_tool no_such_tool",
        "execute_tool researcher", "execute_tool researcher"]
    first, second = [s for s in below if s.name.startswith("chat")]
    for turn, chat in enumerate((first, second), 1):
        assert chat.kind is trace.SpanKind.CLIENT
        assert attr(chat, "gen_ai.operation.name") == "chat"
        assert attr(chat, "gen_ai.provider.name") == "anthropic"
        assert attr(chat, "gen_ai.request.model") == "claude-sonnet-4"
        assert attr(chat, "shoal.agent.turn") == turn
        assert isinstance(attr(chat, "gen_ai.usage.input_tokens"), int)
        assert isinstance(attr(chat, "gen_ai.usage.output_tokens"), int)
    assert attr(first, "shoal.model.tool_calls") == ("researcher", "researcher", "no_such_tool")
    lead_usage = result.own_usage
    assert (attr(first, "gen_ai.usage.input_tokens") + attr(second, "gen_ai.usage.input_tokens")
            == lead_usage.input_tokens)
    rejected = one(spans, "execute_tool no_such_tool")
    assert rejected.status.status_code is StatusCode.ERROR
    assert attr(rejected, "shoal.call.status") == "rejected"

    # each subagent under the call that ran it, its own requests and calls under it
    for i in (1, 2):
        call_span = one(spans, "execute_tool researcher", **{"shoal.lineage":
                                                             f"lead/researcher#{i}"})
        assert call_span.start_time and first.end_time and call_span.start_time >= first.end_time
        (agent_span,) = children(spans, call_span)
        assert agent_span.name == "invoke_agent researcher"
        assert attr(agent_span, "shoal.agent.depth") == 1
        assert within(agent_span, call_span)
        inner = children(spans, agent_span)
        assert [s.name for s in inner] == ["chat gpt-4.1-mini", "execute_tool lookup",
                                           "execute_tool lookup", "chat gpt-4.1-mini"]
        assert attr(inner[0], "gen_ai.provider.name") == "openai"
        assert all(within(s, agent_span) for s in inner)
        assert seconds(inner[1]) == pytest.approx(1.0, abs=1e-6)
        assert attr(inner[1], "shoal.lineage") == f"lead/researcher#{i}/lookup#1"
    assert all(within(s, run_span) for s in spans if s is not run_span)
    del lead, researcher, result
    gc.collect()
    assert not active_trees()  # nothing keeps a finished tree alive


def active_trees() -> list[Any]:
    from shoal import instrumentation

    tracing = instrumentation.active
    assert tracing is not None
    return list(tracing._trees)  # type: ignore[attr-defined]


def test_a_failed_model_request_is_a_failed_chat_span(exported: InMemorySpanExporter) -> None:
    class Down(ScriptedModel):
        async def request(self, request: Any) -> Any:
            raise shoal.ModelError(self.name, "the service is down")

    agent = shoal.Agent(name="lead", model=Down(name="openai:gpt-x"))
    with pytest.raises(shoal.ModelError):
        run_virtual(agent.run("hello"))
    spans = exported.get_finished_spans()
    lead_span = one(spans, "invoke_agent lead")
    assert lead_span.status.status_code is StatusCode.ERROR
    (chat,) = children(spans, lead_span)
    assert chat.name.startswith("chat") and chat.status.status_code is StatusCode.ERROR
    assert "the service is down" in (chat.status.description or "")


def test_a_retried_model_request_says_so_on_its_chat_span(
        exported: InMemorySpanExporter) -> None:
    class Busy(ScriptedModel):
        failures = 1

        async def request(self, request: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise shoal.ModelHTTPError(self.name, "slow down", 429, retry_after=3.0)
            return await super().request(request)

    agent = shoal.Agent(name="lead", model=Busy(["done"], name="openai:gpt-x"))
    result = run_virtual(agent.run("hello"))
    assert result.output == "done"
    spans = exported.get_finished_spans()
    (chat,) = children(spans, one(spans, "invoke_agent lead"))
    assert chat.name == "chat gpt-x" and chat.status.status_code is StatusCode.UNSET
    (retry,) = chat.events
    assert retry.name == "shoal.model.retry"
    assert "429" in str((retry.attributes or {})["shoal.retry.error"])
    assert seconds(chat) >= 3.0  # the wait it was told to keep is part of the request


def test_an_agent_node_in_a_plan_nests_under_its_call(exported: InMemorySpanExporter) -> None:
    reader = shoal.Agent(name="reader", model=ScriptedModel(["read it"]))
    plan = Plan()
    first = plan.call(nap, seconds=1.0, tag="p1")
    plan.call(reader, task=first)
    shoal.run_sync(plan)
    spans = exported.get_finished_spans()
    assert len(named(spans, "shoal.run")) == 1  # the agent's tree makes no run of its own
    call_span = one(spans, "execute_tool reader")
    (agent_span,) = children(spans, call_span)
    assert agent_span.name == "invoke_agent reader"
    assert [s.name for s in children(spans, agent_span)] == ["chat scripted"]
    assert attr(children(spans, agent_span)[0], "gen_ai.provider.name") == "_OTHER"


@shoal.tool
async def tags(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


@shoal.tool
async def joined(parts: list[str]) -> str:
    return " ".join(parts)


def test_a_map_its_items_and_what_waits_for_it_are_linked(
        exported: InMemorySpanExporter) -> None:
    plan = Plan()
    listed = plan.call(tags, n=3)
    mapped = plan.map(nap, over=listed, item_arg="tag", seconds=1.0)
    plan.call(joined, parts=mapped)
    result = run_virtual(shoal.run(plan))
    assert result.ok, result.outcomes
    spans = exported.get_finished_spans()
    listing = one(spans, "execute_tool tags")
    items = [s for s in named(spans, "execute_tool nap")
             if attr(s, "shoal.node.id") != mapped.node]
    the_map = one(spans, "execute_tool nap", **{"shoal.node.id": mapped.node})
    assert len(items) == 3
    # each item waited for what its map waited for: the list
    for item in items:
        assert links(item) == [(listing.context.span_id, "data", attr(listing, "shoal.node.id"))]
    # the map runs from its first item to its gather, so its items lie within it ...
    assert all(within(item, the_map) for item in items)
    assert seconds(the_map) == pytest.approx(1.0, abs=1e-6)
    # ... and what needs its value waited for it: a link, though it starts at the map's end
    assert [source for _, _, source in links(one(spans, "execute_tool joined"))] == [mapped.node]


# ---- hostile values -----------------------------------------------------------------------


HOSTILE = "\x00nul \x1b[31mred\x1b[0m \ud800 lone \udfff surrogates \x7f\u0085 " + "x" * 200_000


@shoal.tool
async def echo(text: str) -> str:
    return text


@shoal.tool
async def fail_with(text: str) -> str:
    raise RuntimeError(text)


def test_hostile_values_are_bounded_and_cleaned_so_exporting_never_fails() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider, capture_content=True, max_attribute_length=1000)
    try:
        plan = Plan()
        plan.call(echo, text=HOSTILE)
        plan.call(fail_with, text=HOSTILE)
        shoal.run_sync(plan)
        model = ScriptedModel([[call("echo", text=HOSTILE), call(HOSTILE, text="?")], HOSTILE],
                              name=HOSTILE)
        agent = shoal.Agent(name="lead", model=model, tools=[echo])
        run_virtual(agent.run(HOSTILE))
    finally:
        shoal.otel.uninstrument()
    spans = exporter.get_finished_spans()
    assert len(spans) >= 8
    texts: list[str] = []
    for span in spans:
        texts.append(span.name)
        texts += [v for v in (span.attributes or {}).values() if isinstance(v, str)]
        texts += [span.status.description or ""]
        for event in span.events:
            texts += [v for v in (event.attributes or {}).values() if isinstance(v, str)]
    for text in texts:
        assert len(text) < 1100
        text.encode("utf-8")  # no lone surrogate left
        assert not any(ch in text for ch in "\x00\x1b\x7f\x85")
    echo_span = one(spans, "execute_tool echo", **{"shoal.lineage": "echo#1"})
    assert "more characters" in str(attr(echo_span, "gen_ai.tool.call.arguments"))
    assert "more characters" in str(attr(echo_span, "gen_ai.tool.call.result"))
    assert "nul" in str(attr(echo_span, "gen_ai.tool.call.result"))
    failed = one(spans, "execute_tool fail_with")
    assert "surrogates" in (failed.status.description or "")
    (rejected,) = [s for s in spans if attr(s, "shoal.call.status") == "rejected"]
    assert rejected.name.startswith("execute_tool \ufffdnul")  # the name the model made up
    agent_span = one(spans, "invoke_agent lead")
    assert "lone" in str(attr(agent_span, "gen_ai.input.messages"))
    # and the real OTLP encoder takes every one of them
    assert encode_spans(spans).SerializeToString()


def test_a_list_attribute_is_bounded_as_a_whole() -> None:
    # each name was cut to the limit, but not the list: a turn asking for 300 calls of
    # made-up 100-character names gave the chat span an attribute of 30,000 characters
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider, max_attribute_length=1000)
    try:
        names = [f"{n:03d}" + "x" * 97 for n in range(300)]
        model = ScriptedModel([[call(name) for name in names], "done"])
        run_virtual(shoal.Agent(name="lead", model=model).run("go"))
    finally:
        shoal.otel.uninstrument()
    chat = exporter.get_finished_spans()
    (first,) = [s for s in chat if attr(s, "shoal.model.tool_calls")]
    listed = list(attr(first, "shoal.model.tool_calls"))
    assert sum(map(len, listed)) < 1200, sum(map(len, listed))
    assert listed[:10] == names[:10]  # the first ones, as they were
    assert listed[-1] == f"... [{300 - len(listed) + 1} more items]"
    assert encode_spans(chat).SerializeToString()


def test_captured_content_is_what_each_call_ran_with_and_gave_back() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider, capture_content=True)
    try:
        plan = Plan()
        first = plan.call(echo, text="héllo ✓\nline two")
        plan.call(echo, text=first)  # a ref: the span holds the value it resolved to
        shoal.run_sync(plan)
    finally:
        shoal.otel.uninstrument()
    spans = exporter.get_finished_spans()
    for node in ("echo#1", "echo#2"):
        span = one(spans, "execute_tool echo", **{"shoal.node.id": node})
        assert attr(span, "gen_ai.tool.call.arguments") == '{"text": "héllo ✓\\nline two"}'
        assert attr(span, "gen_ai.tool.call.result") == '"héllo ✓\\nline two"'


class BrokenTracer(trace.Tracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("the tracer is on fire")

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the tracer is on fire")


class BrokenProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return BrokenTracer()


def test_a_tracer_that_fails_never_fails_a_run_or_an_agent(
        caplog: pytest.LogCaptureFixture) -> None:
    shoal.otel.instrument(BrokenProvider())
    try:
        plan = Plan()
        a = plan.call(nap, seconds=0.5, tag="a")
        plan.call(nap, seconds=0.5, tag=a)
        result = run_virtual(shoal.run(plan))
        sub = shoal.Agent(name="sub", model=ScriptedModel(["sub done"]))
        lead = shoal.Agent(name="lead", model=ScriptedModel([[call("sub", task="t")], "done"]),
                           subagents=[sub])
        answer = run_virtual(lead.run("go"))
    finally:
        shoal.otel.uninstrument()
    assert result.ok and answer.output == "done"
    assert "the tracer is on fire" in caplog.text


def test_instrument_rejects_a_useless_attribute_length() -> None:
    for bad in (0, 15, -1, True, 1.5):
        with pytest.raises(ConfigError, match="max_attribute_length"):
            shoal.otel.instrument(max_attribute_length=bad)  # type: ignore[arg-type]
    assert not shoal.otel.is_instrumented()


# ---- on and off ---------------------------------------------------------------------------


def test_uninstrument_stops_new_spans_and_a_run_in_flight_finishes_its_own() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider)
    assert shoal.otel.is_instrumented()

    async def go() -> None:
        plan = Plan()
        plan.call(nap, seconds=5.0)
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(1.0)
            shoal.otel.uninstrument()  # the run in flight keeps its spans
            await handle
            later = Plan()
            later.call(nap, seconds=1.0)
            await runtime.run(later)  # not instrumented: nothing

    try:
        run_virtual(go())
    finally:
        shoal.otel.uninstrument()
    assert not shoal.otel.is_instrumented()
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["execute_tool nap", "shoal.run"]
    assert seconds(one(spans, "execute_tool nap")) == pytest.approx(5.0, abs=1e-6)
    agent = shoal.Agent(name="lead", model=ScriptedModel(["hi"]))
    run_virtual(agent.run("hello"))
    assert len(exporter.get_finished_spans()) == 2


def test_shoal_otel_without_the_extra_says_how_to_install_it() -> None:
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opentelemetry' or name.startswith('opentelemetry.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import shoal\n"
        "assert 'opentelemetry' not in sys.modules\n"
        "otel = shoal.otel\n"
        "try:\n"
        "    otel.instrument()\n"
        "except shoal.MissingDependencyError as exc:\n"
        "    print(exc)\n"
        "assert not otel.is_instrumented()\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout and "shoal[otel]" in done.stdout, done.stdout


# ---- OTLP over HTTP, and workers in other processes ----------------------------------------


def assert_worker_joined(receiver: Receiver, label: str, tool: str) -> None:
    (worker,) = receiver.named(f"worker {label}")
    (call_span,) = [s for s in receiver.named(f"execute_tool {tool}")
                    if any(a.key == "shoal.lineage" for a in s.attributes)
                    and s.span_id == worker.parent_span_id]
    assert worker.trace_id == call_span.trace_id
    assert worker.parent_span_id == call_span.span_id
    (run_span,) = [s for s in receiver.named("shoal.run") if s.trace_id == worker.trace_id]
    assert call_span.parent_span_id == run_span.span_id
    resources = {r.get("service.name") for r, s in receiver.spans if s.span_id == worker.span_id}
    assert resources == {"shoal-worker"}  # exported from the worker, by the worker
    pid = next(a.value.int_value for a in worker.attributes if a.key == "worker.pid")
    assert pid != os.getpid()


def test_spans_travel_over_otlp_http_and_process_workers_join_the_trace(
        over_otlp: Receiver, no_child_process_leak: None) -> None:
    plan = Plan()
    first = plan.call(nap, seconds=0.01, tag="x")
    plan.call(otel_tools.traced_in_worker, endpoint=over_otlp.endpoint, label=first)
    plan.call(otel_tools.traced_in_worker_async, endpoint=over_otlp.endpoint, label="async")

    async def go() -> shoal.RunResult:
        async with Runtime(process_workers=2) as runtime:
            return await runtime.run(plan)

    result = arun(go(), timeout=60)
    assert result.ok, result.outcomes
    assert_worker_joined(over_otlp, "x", "traced_in_worker")
    assert_worker_joined(over_otlp, "async", "traced_in_worker_async")
    (nap_span,) = over_otlp.named("execute_tool nap")
    attributes = {a.key: a.value for a in nap_span.attributes}
    assert attributes["gen_ai.tool.name"].string_value == "nap"
    assert attributes["shoal.call.attempts"].int_value == 1
    (worker_call,) = [s for s in over_otlp.named("execute_tool traced_in_worker")]
    assert {a.key: a.value for a in worker_call.attributes}[
        "shoal.call.isolation"].string_value == "process"
    assert [link.span_id for link in worker_call.links] == [nap_span.span_id]


def test_a_worker_of_a_run_that_is_not_instrumented_gets_no_trace_context(
        receiver: Receiver, no_child_process_leak: None) -> None:
    plan = Plan()
    plan.call(otel_tools.traced_in_worker, endpoint=receiver.endpoint, label="alone")
    result = shoal.run_sync(plan, process_workers=1)
    assert result.ok, result.outcomes
    (worker,) = receiver.named("worker alone")
    assert worker.parent_span_id == b""  # a trace of its own
    assert receiver.named("shoal.run") == []


@pytest.mark.parametrize("tool", [otel_tools.current_trace, otel_tools.current_trace_async],
                         ids=["sync", "async"])
def test_the_ray_worker_side_runs_each_call_in_the_trace_context_it_came_with(
        tool: shoal.Tool[..., Any]) -> None:
    # what a Ray task and shoal's pool actor run in the worker, called here without Ray
    from shoal.executors import ray as on_ray
    from shoal.executors.base import Call

    provider = TracerProvider()
    with provider.get_tracer("tests").start_as_current_span("call") as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    expected = (span.get_span_context().trace_id, span.get_span_context().span_id)
    assert "traceparent" in carrier

    def payload(trace_context: dict[str, str] | None) -> bytes:
        return on_ray._pack(Call(0, "x", tool, {}, 1, "ray", None, trace=trace_context))

    assert on_ray._unpack_reply(tool.name, on_ray.run_task(payload(carrier))) == expected
    pool = on_ray.PoolWorker()
    reply = asyncio.run(pool.run(payload(carrier)))
    assert on_ray._unpack_reply(tool.name, reply) == expected
    assert on_ray._unpack_reply(tool.name, on_ray.run_task(payload(None))) == (0, 0)
    assert trace.get_current_span().get_span_context().span_id == 0  # detached afterwards


@ONE_AT_A_TIME  # the one Ray head
@pytest.mark.skipif(not os.environ.get("RAY_ADDRESS"),
                    reason="needs a running Ray head (RAY_ADDRESS); CI starts one")
@pytest.mark.parametrize("resources", [None, {"num_cpus": 0}], ids=["task", "pool"])
def test_ray_workers_join_the_trace(over_otlp: Receiver,
                                    resources: dict[str, float] | None) -> None:
    extra = {} if resources is None else {"resources": resources}
    on_ray = otel_tools.traced_in_worker.options(isolation="ray", **extra)
    plan = Plan()
    plan.call(on_ray, endpoint=over_otlp.endpoint, label="ray")

    async def go() -> shoal.RunResult:
        async with Runtime(ray_address=os.environ["RAY_ADDRESS"]) as runtime:
            return await runtime.run(plan)

    result = arun(go(), timeout=120)
    assert result.ok, result.outcomes
    assert_worker_joined(over_otlp, "ray", "traced_in_worker")


def test_the_overhead_bench_runs_and_counts_one_span_per_call() -> None:
    from bench import otel_overhead

    result = otel_overhead.main(quick=True)
    assert result.correct, result.to_dict()
    assert not shoal.otel.is_instrumented()
