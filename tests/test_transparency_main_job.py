"""What a person watching the main job sees: its event stream and its trace.

The main job (``examples/literature_review/agents.py:review``) is a plan with agent nodes: a
reader agent mapped over six papers, then the lead's synthesis. Here it runs on a
``ScriptedModel`` that streams each reader's summary in pieces with pauses between them (the
local model serves one request at a time, so its readers' text could never interleave; a
scripted one answers every reader at once, as a hosted model does), on the virtual clock where
time matters, so the timings are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import shoal
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    EventsDropped,
    TextDelta,
)
from shoal.executors.base import Call, Executor
from shoal.models.base import ModelRequest, UserMessage
from shoal.testing import ScriptedModel, pause, run_virtual

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What makes agent runs fast and safe?"
#: The seconds between a reader's streamed pieces, and how many pieces each reader writes.
STEP, PIECES = 0.1, 3
#: Event kinds the stream may leave out when its reader falls behind (README: the policy).
PROGRESS = {"NodeQueued", "NodeStarted", "NodeRetrying", "TextDelta"}


def load_main_job() -> ModuleType:
    """A fresh copy of the example module (its agents can then be given another model)."""
    spec = importlib.util.spec_from_file_location(
        "literature_review_agents", ROOT / "examples" / "literature_review" / "agents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prompt(request: ModelRequest) -> str:
    return next(m.content for m in request.messages if isinstance(m, UserMessage))


def _answer(request: ModelRequest, slow: str = "") -> list[Any]:
    """A reader streams its paper's title in PIECES pieces, STEP s apart; the lead one line.

    The reader of the paper titled ``slow`` waits 2 * STEP more before its last piece.
    """
    prompt = _prompt(request)
    if not prompt.endswith("What is the main finding of this paper?"):
        return ["Synthesis: ", pause(STEP), "the readers agree."]
    title = prompt.split("\n\n")[0]
    step: list[Any] = []
    for i in range(PIECES):
        step += [pause(STEP)] if i else []
        step.append(f"[{title} part {i}] ")
    return [*step[:-1], pause(2 * STEP), step[-1]] if title == slow else step


def main_job(module: Any, slow: str = "") -> shoal.Plan:
    """The example's own plan, with its two agents on the streaming scripted model.

    A plan run has no model override of its own (the CLI's ``--model`` builds the run
    itself), so the module's agents are replaced by copies on the scripted model.
    """
    model = ScriptedModel.per_prompt({"*": [lambda request: _answer(request, slow)]})
    module.reader = dataclasses.replace(module.reader, model=model)
    module.lead = dataclasses.replace(module.lead, model=model)
    plan: shoal.Plan = module.review(QUESTION)
    return plan


class OnTheLoop(Executor):
    """Serves ``thread``: the main job's sync tools (they read six small files) on the loop.

    On the virtual clock a real thread's work is invisible: virtual time leaps past the
    tools' timeouts while a thread runs (see :mod:`shoal.testing.clock`).
    """

    name = "thread"

    def execute(self, call: Call) -> Awaitable[Any]:
        async def run() -> Any:
            return call.tool.fn(**call.args)

        return run()


def virtual_options() -> dict[str, Any]:
    return {"executors": {"thread": OnTheLoop()}}


# -- 1. the stream: readers' text interleaved, then the result; a stalled reader loses nothing


def lifecycle(events: list[Event]) -> Counter[tuple[str, str]]:
    """Every event the policy keeps, by kind and lineage."""
    return Counter((e.kind, e.lineage) for e in events
                   if e.kind not in PROGRESS and not isinstance(e, EventsDropped))


def plain_run() -> tuple[shoal.RunResult, list[Event]]:
    seen: list[Event] = []

    async def main() -> shoal.RunResult:
        async with shoal.Runtime(**virtual_options()) as runtime:
            return await runtime.run(main_job(load_main_job()), on_event=seen.append)

    return run_virtual(main()), seen


def streamed(stall: float, buffer: int | None = None) -> tuple[list[Any], int]:
    """The main job streamed; the reader stops for ``stall`` s after the first item."""

    async def main() -> tuple[list[Any], int]:
        options = virtual_options() | ({} if buffer is None else {"buffer": buffer})
        stream = shoal.stream(main_job(load_main_job()), **options)
        items = []
        async for item in stream:
            items.append(item)
            if len(items) == 1:
                await asyncio.sleep(stall)
        return items, stream.dropped

    return run_virtual(main())


def reader_lineages(events: list[Any]) -> list[str]:
    return sorted({e.lineage for e in events if isinstance(e, AgentStarted)
                   and e.agent == "reader"})


def alternate(deltas: list[tuple[int, str]], a: str, b: str, *, before: int) -> bool:
    """Whether ``deltas`` (index, lineage) hold a, b, a, b in that order, all at < before."""
    want = [a, b, a, b]
    for index, lineage in deltas:
        if want and lineage == want[0] and index < before:
            want.pop(0)
    return not want


def test_the_readers_text_interleaves_while_they_run_then_the_result() -> None:
    items, dropped = streamed(stall=0.0)
    result = items[-1]
    assert isinstance(result, shoal.RunResult) and result.ok
    assert all(isinstance(i, Event) for i in items[:-1])
    assert dropped == 0
    readers = reader_lineages(items)
    assert len(readers) == 6
    deltas = [(i, e.lineage) for i, e in enumerate(items) if isinstance(e, TextDelta)
              and e.lineage in readers]
    finished = {e.lineage: i for i, e in enumerate(items) if isinstance(e, AgentFinished)}
    # A, B, A, B: pieces of two readers alternate, all before either of them has finished
    pairs = {(a, b) for a in readers for b in readers
             if a != b and alternate(deltas, a, b, before=min(finished[a], finished[b]))}
    assert {a for a, _ in pairs} == set(readers), deltas  # every reader with another
    # the first round holds a piece of every reader: they run side by side, not in turn
    assert sorted(lineage for _, lineage in deltas[:6]) == readers
    for lineage in readers:  # each reader's text is whole and in order
        text = "".join(e.text for e in items if isinstance(e, TextDelta)
                       and e.lineage == lineage)
        assert text.count(" part ") == PIECES and "part 0] [" in text


def test_a_reader_that_stops_for_five_seconds_loses_nothing_and_stalls_nothing() -> None:
    plain, seen = plain_run()
    makespan = plain.makespan
    assert makespan == pytest.approx((PIECES - 1) * STEP + STEP, abs=1e-6)  # readers, lead
    items, dropped = streamed(stall=5.0)
    result = items[-1]
    assert isinstance(result, shoal.RunResult) and result.ok
    # the run did not wait for the reader: it ended long before the reader woke up
    assert result.makespan == pytest.approx(makespan, abs=1e-9)
    assert makespan < 5.0
    # with the default buffer nothing was left out: every event a plain sink got is there
    assert dropped == 0
    events = items[:-1]
    assert Counter((e.kind, e.lineage) for e in events if not isinstance(e, TextDelta)) == \
        Counter((e.kind, e.lineage) for e in seen)
    assert result.critical_path == plain.critical_path


def test_a_stalled_reader_with_a_small_buffer_gets_the_policy() -> None:
    plain, seen = plain_run()
    items, dropped = streamed(stall=5.0, buffer=8)
    result = items[-1]
    assert isinstance(result, shoal.RunResult) and result.ok
    assert result.makespan == pytest.approx(plain.makespan, abs=1e-9)
    events: list[Event] = items[:-1]
    # every lifecycle event is kept beyond the bound ...
    assert lifecycle(events) == lifecycle(seen)
    assert sum(e.kind == "NodeFinished" for e in events) == \
        sum(e.kind == "NodeFinished" for e in seen) == 11
    # ... the progress left out is announced where it was, and counted exactly
    markers = [e for e in events if isinstance(e, EventsDropped)]
    assert dropped > 0 and sum(m.count for m in markers) == dropped
    assert set().union(*(m.kinds for m in markers)) <= PROGRESS
    # and text is joined while unread or said to be left out: every piece is accounted for
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    delivered = text.count(" part ") + text.count("Synthesis: ") + text.count("agree.")
    left_out = sum(m.kinds.get("TextDelta", 0) for m in markers)
    assert delivered + left_out == 6 * PIECES + 2 and left_out > 0


# -- 2. the trace: one trace, every call a span under the right parent, the critical path


SLOW_PAPER = "Budgets for Agent Trees"  # p4, read by reader#1[3]: the slowest reader


def attributes(span: Any) -> dict[str, Any]:
    """A decoded OTLP span's attributes as plain values."""
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def seconds(span: Any) -> float:
    return float(span.end_time_unix_nano - span.start_time_unix_nano) / 1e9


def critical_path_of(calls: dict[str, Any]) -> tuple[list[str], float]:
    """The chain of calls with the largest summed duration, from their spans alone.

    A call's predecessors are its links (the calls it waited for); a map's work is its items'
    (``m#1[0]``, ``m#1[1]``, ...), which sit between the map's inputs and its dependents.
    """
    def preds(node: str) -> list[str]:
        return [next(a.value.string_value for a in link.attributes
                     if a.key == "shoal.edge.source") for link in calls[node].links]

    best: dict[str, tuple[float, list[str]]] = {}

    def chain(node: str) -> tuple[float, list[str]]:
        if node not in best:
            items = [n for n in calls if n.startswith(f"{node}[")]
            if items:
                best[node] = max(chain(item) for item in items)
                best[node] = (best[node][0], [*best[node][1], node])
            else:
                before = max((chain(p) for p in preds(node)), default=(0.0, []))
                best[node] = (before[0] + seconds(calls[node]), [*before[1], node])
        return best[node]

    length, path = max(chain(node) for node in calls)
    return path, length


def test_the_main_job_is_one_trace_over_otlp_with_every_call_and_its_critical_path(
        no_child_process_leak: None) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from tests import otel_tools
    from tests.otlp import exporting, listening

    with listening() as receiver:
        module = load_main_job()
        plan = main_job(module, slow=SLOW_PAPER)
        # one tool in a process worker, after the review: its own span must join the trace
        plan.call(otel_tools.traced_in_worker, endpoint=receiver.endpoint, label="main job",
                  after="answer", node_id="worker")
        with exporting(receiver):
            result = shoal.run_sync(plan, process_workers=1)
        assert result.ok, result.outcomes
        spans = [span for _, span in receiver.spans]

    # one trace, from one run span
    assert len({span.trace_id for span in spans}) == 1
    (run,) = [s for s in spans if s.name == "shoal.run"]
    by_id = {s.span_id: s for s in spans}
    # every recorded call is one span, under the run
    calls = {attributes(s)["shoal.node.id"]: s for s in spans
             if s.name.startswith("execute_tool ")}
    assert sorted(calls) == sorted(result.outcomes)
    assert all(span.parent_span_id == run.span_id for span in calls.values())
    # each agent's span is under the call that ran it, each model request under its agent
    agents = {attributes(s)["shoal.lineage"]: s for s in spans
              if s.name.startswith("invoke_agent ")}
    readers = [f"reader#1[{i}]" for i in range(6)]
    assert sorted(agents) == sorted([*readers, "lead#1"])
    for lineage, agent in agents.items():
        assert agent.parent_span_id == calls[lineage].span_id
        assert agent.name == f"invoke_agent {lineage.split('#')[0]}"
        chats = [s for s in spans if s.name.startswith("chat ")
                 and s.parent_span_id == agent.span_id]
        assert len(chats) == 1  # each agent here answers in one turn
    assert sum(s.name.startswith("chat ") for s in spans) == len(module.reader.model.requests)
    assert all(by_id[s.parent_span_id].name.startswith("invoke_agent ")
               for s in spans if s.name.startswith("chat "))
    # the critical path, from the spans' times and links, is the run's own
    path, length = critical_path_of(calls)
    assert path == result.critical_path
    assert path[path.index("reader#1") - 1] == "reader#1[3]"  # the slow reader
    # a call's span starts when it is handed to its backend (its context must travel with
    # it), its outcome's clock when the backend runs it: a worker's start-up is in the span
    assert result.critical_path_time - 0.01 <= length
    assert length <= seconds(run) == pytest.approx(result.makespan, abs=0.05)
    # the worker's own span: in this trace, under its call's span, exported by the worker
    (worker,) = [(resource, s) for resource, s in receiver.spans if s.name == "worker main job"]
    assert worker[1].parent_span_id == calls["worker"].span_id
    assert worker[0].get("service.name") == "shoal-worker"
    assert attributes(calls["worker"])["shoal.call.isolation"] == "process"
