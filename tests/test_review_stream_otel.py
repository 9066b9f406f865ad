"""Streaming and OpenTelemetry under attack: one clock for a run's events, and what broke.

Every event of one outermost run (a plan, an agent tree run alone, the runs and agents nested
in either) is on the event loop's clock (so the virtual clock of ``shoal.testing`` applies)
and counts from the outermost run's start: a reader's ``AgentStarted`` comes after the
``NodeStarted`` of its plan node, and its tool calls after its model's reply.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

import shoal
from shoal.cli.tree import AgentTree
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    EventsDropped,
    NodeFinished,
    NodeQueued,
    NodeStarted,
    RunStarted,
)
from shoal.streaming import STOPPED
from shoal.testing import ScriptedModel, call, pause, run_virtual


@shoal.tool
async def slow(x: int) -> int:
    """Take one second (of the virtual clock) and return ``x``."""
    await asyncio.sleep(1.0)
    return x


def reader(steps: int = 1) -> shoal.Agent[str]:
    """An agent that thinks 0.5 s, calls ``slow`` ``steps`` times (one a turn), then answers."""
    turns: list[Any] = [[pause(0.5), call("slow", x=i)] for i in range(steps)]
    model = ScriptedModel.per_prompt({"*": [*turns, [pause(0.5), "done"]]})
    return shoal.Agent("reader", instructions="read", model=model, tools=[slow])


def in_order(events: list[Event]) -> None:
    """Times never go back in the order the events came."""
    times = [event.time for event in events]
    behind = [(a, b) for a, b in itertools.pairwise(events) if b.time < a.time - 1e-9]
    assert not behind, f"times go back: {[(a.kind, a.time, b.kind, b.time) for a, b in behind]}"
    assert times == sorted(times)


# ---- 1. one clock, one origin --------------------------------------------------------------


def test_an_agent_alone_times_its_events_on_the_loop_clock_from_its_start() -> None:
    events: list[Event] = []

    async def main() -> None:
        await reader(steps=2).run("go", on_event=events.append)

    run_virtual(main())
    in_order(events)
    started = next(e for e in events if isinstance(e, AgentStarted))
    finished = next(e for e in events if isinstance(e, AgentFinished))
    assert started.time == 0.0
    # 3 turns of 0.5 s thinking and 2 calls of 1 s: exactly, on the virtual clock
    assert finished.time == pytest.approx(3.5)
    assert finished.duration == pytest.approx(3.5)
    calls = [e for e in events if isinstance(e, NodeStarted) and "slow" in e.node_id]
    assert [round(e.time, 6) for e in calls] == [0.5, 2.0]  # not 0.0: the turn's own start


def test_an_agent_node_counts_from_the_plan_start_as_the_plan_nodes_do() -> None:
    events: list[Event] = []

    async def main() -> None:
        plan = shoal.Plan()
        first = plan.call(slow, x=1)
        plan.call(reader(), task="go", after=[first])
        await shoal.run(plan, on_event=events.append)

    run_virtual(main())
    in_order(events)
    node = next(e for e in events if isinstance(e, NodeStarted) and e.node_id == "reader#1")
    started = next(e for e in events if isinstance(e, AgentStarted))
    assert node.time == pytest.approx(1.0)
    assert started.time >= node.time
    call_ = next(e for e in events if isinstance(e, NodeFinished) and e.lineage.endswith("slow#1")
                 and e.lineage != "slow#1")
    assert call_.time == pytest.approx(2.5)  # 1 s node, 0.5 s thinking, 1 s call
    # a nested run's start says where it is in wall-clock time: its epoch is the one its
    # time counts from, the plan's (it said its own start, with a time counted from the plan's)
    outer, *nested = [e for e in events if isinstance(e, RunStarted)]
    assert nested and all(e.time > 0 and e.epoch == outer.epoch for e in nested)


def test_a_pattern_in_a_plan_counts_from_the_plan_start_too() -> None:
    from shoal.patterns import pipeline

    events: list[Event] = []

    async def main() -> None:
        plan = shoal.Plan()
        first = plan.call(slow, x=1)
        plan.call(pipeline(reader(), reader()), task="go", after=[first])
        await shoal.run(plan, on_event=events.append)

    run_virtual(main())
    in_order(events)
    agents = [e for e in events if isinstance(e, AgentFinished)]
    assert [round(e.time, 6) for e in agents] == [3.0, 5.0]


def test_a_runtime_sink_hears_an_agent_nodes_tool_calls_once() -> None:
    """``Runtime(on_event=...)`` got each event of an agent node's tool phase twice."""
    events: list[Event] = []

    async def main() -> None:
        plan = shoal.Plan()
        plan.call(reader(), task="go")
        async with shoal.Runtime(on_event=events.append) as runtime:
            await runtime.run(plan)

    run_virtual(main())
    seen = [(e.kind, e.run_id, e.lineage, getattr(e, "node_id", ""), e.time) for e in events]
    twice = sorted({s for s in seen if seen.count(s) > 1})
    assert not twice
    assert any(kind == "NodeFinished" and lineage == "reader#1/slow#1"
               for kind, _, lineage, _, _ in seen)
    in_order(events)


def test_the_live_tree_places_calls_by_their_times() -> None:
    """The tree placed a call by when its event came: a tool phase's times were its own."""
    tree = AgentTree(text=True)

    async def main() -> None:
        await reader(steps=2).run("go", on_event=tree)

    run_virtual(main())
    calls = [tree.rows[f"reader/slow#{n}"] for n in (1, 2)]
    assert [(row.started, row.ended) for row in calls] == [
        pytest.approx((0.5, 1.5)), pytest.approx((2.0, 3.0))]
    assert tree.rows["reader"].ended == pytest.approx(3.5)


# ---- 2. streams ----------------------------------------------------------------------------


@shoal.tool
async def nap(seconds: float) -> float:
    """Sleep ``seconds``, return them."""
    await asyncio.sleep(seconds)
    return seconds


def test_closing_an_open_runs_stream_before_reading_it_stops_the_run() -> None:
    """``async with run.events():`` left unread closed nothing: the run went on, its buffer
    filling up with events nobody would read."""

    async def main() -> tuple[shoal.Outcome, list[Any], bool]:
        async with shoal.Runtime() as runtime:
            async with runtime.open_run() as run:
                events = run.events(buffer=2)
                node = run.call(nap, seconds=30)
                async with events:
                    pass
                with pytest.raises(RuntimeError, match="closed"):
                    run.call(nap, seconds=1)
                left = [item async for item in events]  # nothing more: it was closed
            return run.result[node], left, events._run.buffer.closed

    outcome, left, closed = run_virtual(main())
    assert outcome.status == "cancelled"
    assert STOPPED in (outcome.reason or "")
    assert left == []
    assert closed


# ---- 3. OpenTelemetry ----------------------------------------------------------------------

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")


def exporter() -> tuple[Any, Any]:
    """A provider exporting to memory, and its exporter."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = otel_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def shape(memory: Any) -> list[tuple[str, str | None]]:
    """Each span's name and its parent's name."""
    spans = memory.get_finished_spans()
    names = {s.context.span_id: s.name for s in spans}
    return sorted((s.name, names.get(s.parent.span_id) if s.parent else None) for s in spans)


WHOLE_TREE = sorted([("shoal.run", None), ("invoke_agent reader", "shoal.run")]
                    + [("chat scripted", "invoke_agent reader")] * 3
                    + [("execute_tool slow", "invoke_agent reader")] * 2)


@pytest.mark.parametrize("then", ["uninstrument", "instrument again"])
def test_a_tree_in_flight_keeps_its_tracing_whatever_is_installed_meanwhile(then: str) -> None:
    """Its later steps made no spans (uninstrument), or orphan runs in another trace, a model
    turn shown as ``execute_tool model`` (instrument again)."""
    first, first_memory = exporter()
    second, second_memory = exporter()

    async def main() -> None:
        model = ScriptedModel([[pause(0.5), call("slow", x=1)], [pause(0.5), call("slow", x=2)],
                               [pause(0.5), "done"]])
        agent = shoal.Agent("reader", model=model, tools=[slow])
        shoal.otel.instrument(first)
        try:
            handle = agent.start("go")
            await asyncio.sleep(1.0)  # within its first call
            if then == "uninstrument":
                shoal.otel.uninstrument()
            else:
                shoal.otel.instrument(second)
            result = await handle
            assert result.status == "ok"
        finally:
            shoal.otel.uninstrument()

    run_virtual(main())
    assert shape(first_memory) == WHOLE_TREE
    assert shape(second_memory) == []


def test_a_plan_in_flight_keeps_its_tracing_for_its_agent_nodes() -> None:
    first, first_memory = exporter()

    async def main() -> None:
        plan = shoal.Plan()
        done = plan.call(nap, seconds=1.0)
        plan.call(reader(), task="go", after=[done])
        shoal.otel.instrument(first)
        try:
            async with shoal.Runtime() as runtime:
                handle = runtime.start(plan)
                await asyncio.sleep(0.5)
                shoal.otel.uninstrument()
                await handle
        finally:
            shoal.otel.uninstrument()

    run_virtual(main())
    names = [name for name, _ in shape(first_memory)]
    assert names.count("invoke_agent reader") == 1
    assert names.count("chat scripted") == 2
    assert ("invoke_agent reader", "execute_tool reader") in shape(first_memory)


def test_a_reader_far_behind_a_wide_plan_gets_one_drop_marker_per_catching_up() -> None:
    """Each event kept past the bound began a new ``EventsDropped``: a reader who read nothing
    while 2,000 calls ran found ~2,000 markers among the unread items, as many as the calls."""
    calls = 2000

    async def main() -> tuple[int, int, list[Any]]:
        plan = shoal.Plan()
        for _ in range(calls):
            plan.call(nap, seconds=1.0)
        stream = shoal.stream(plan, buffer=50)
        items = [await anext(stream)]
        await asyncio.sleep(5)  # the run ends meanwhile: everything waits unread
        unread = len(stream._run.buffer._slots)
        items += [item async for item in stream]
        return unread, stream.dropped, items

    unread, dropped, items = run_virtual(main())
    markers = [item for item in items if isinstance(item, EventsDropped)]
    assert len(markers) == 1
    assert markers[0].count == dropped == sum(markers[0].kinds.values())
    queued = sum(isinstance(item, NodeQueued) for item in items)  # those within the bound
    assert markers[0].kinds == {"NodeQueued": calls - queued, "NodeStarted": calls}
    assert sum(isinstance(item, NodeFinished) for item in items) == calls
    assert unread <= 50 + calls + 2  # the bound, the calls' ends, the run's end and a marker


def test_a_wall_clock_breach_says_the_time_the_tree_used_not_the_runs() -> None:
    """With the tree's clock counting from the plan's start, the breach said it had used the
    plan's 5 s before the agent node started too."""

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        first = plan.call(nap, seconds=5.0)
        model = ScriptedModel([[call("nap", seconds=30.0)], "done"])
        agent = shoal.Agent("sleeper", model=model, tools=[nap])
        plan.call(agent, task="go", after=[first])
        return await shoal.run(plan, budget=shoal.Budget(wall_clock=2.0))

    result = run_virtual(main())
    outcome = result["sleeper#1"]
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.type.endswith("BudgetExceeded")
    assert "wall_clock limit is 2, reached" in outcome.error.message  # not "used 7"
