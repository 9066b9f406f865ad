"""Streaming a run to its caller: ``async for item in lead.stream(prompt)``.

Every event in order with its lineage, the models' text as it is generated (interleaved as it
arrives across parallel subagents), the result last (a failed one too); a consumer that stops
early cancels the run; a slow one never slows the run, and what it misses is said.
"""

from __future__ import annotations

import asyncio
import gc
import io
import warnings
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from rich.console import Console

import shoal
from shoal.cli.tree import AgentTree, render_tree
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    EventsDropped,
    ModelResponded,
    ModelRetrying,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunStarted,
    TextDelta,
)
from shoal.exceptions import ConfigError, ModelHTTPError, PlanError
from shoal.models.base import Model, ModelRequest, ModelResponse, ResponseDone, StreamEvent
from shoal.models.base import TextDelta as TextPiece
from shoal.models.retry import ModelGates, ModelRetry
from shoal.streaming import STOPPED
from shoal.testing import ScriptedModel, call, pause, run_virtual
from tests.conftest import arun, leftover_tasks

T = TypeVar("T")

# a task or coroutine left behind by a stream stopped early fails the test, not just warns
pytestmark = [pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("error:.*never awaited:RuntimeWarning")]


def loop_errors() -> list[dict[str, Any]]:
    """What the running loop reports from now on ("Task exception was never retrieved", ...)."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    return errors


def virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run on the virtual clock; no task may outlive the run."""

    async def main() -> T:
        value = await coro
        await asyncio.sleep(0)
        assert not leftover_tasks(), leftover_tasks()
        return value

    return run_virtual(main())


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def events_of(items: list[Any]) -> list[Event]:
    assert all(isinstance(i, Event) for i in items[:-1]), "only the last item is no event"
    return items[:-1]


def text_of(items: list[Any], lineage: str, turn: int | None = None) -> str:
    return "".join(e.text for e in items if isinstance(e, TextDelta) and e.lineage == lineage
                   and (turn is None or e.turn == turn))


@shoal.tool
async def nap(seconds: float) -> str:
    """Sleep ``seconds``."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


def three_researchers() -> shoal.Agent[str]:
    """A lead whose three parallel subagents write their text at staggered moments."""
    sub = shoal.Agent(name="researcher", model=ScriptedModel.per_prompt({
        "a": [["a1 ", pause(0.3), "a2"]],
        "b": [[pause(0.1), "b1 ", pause(0.3), "b2"]],
        "c": [[pause(0.2), "c1 ", pause(0.3), "c2"]],
    }))
    lead = ScriptedModel([
        ["Asking three. ", call("researcher", task="a"), call("researcher", task="b"),
         call("researcher", task="c")],
        ["All ", pause(0.1), "three answered."],
    ])
    return shoal.Agent(name="lead", model=lead, subagents=[sub])


# -- order, lineage, text, result -----------------------------------------------------------


def test_events_come_in_order_with_lineage_then_the_result() -> None:
    seen: list[Event] = []
    items = virtual(collect(three_researchers().stream("go", on_event=seen.append)))
    result = items[-1]
    assert isinstance(result, shoal.AgentResult)
    assert result.status == "ok" and result.output == "All three answered."
    events = events_of(items)
    # exactly what a plain sink got, in the same order, plus the text it did not ask for
    assert [e for e in events if not isinstance(e, TextDelta)] == seen
    assert not any(isinstance(e, TextDelta) for e in seen)
    assert isinstance(events[0], AgentStarted) and events[0].lineage == "lead"
    assert isinstance(events[-1], AgentFinished) and events[-1].lineage == "lead"
    subs = [f"lead/researcher#{i}" for i in (1, 2, 3)]
    for lineage in ["lead", *subs]:
        mine = [e for e in events if e.lineage == lineage and isinstance(
            e, AgentStarted | TextDelta | ModelResponded | AgentFinished)]
        kinds = [e.kind for e in mine]
        assert kinds[0] == "AgentStarted" and kinds[-1] == "AgentFinished", kinds
        # each turn's pieces come before the turn's ModelResponded, and join to its text
        for responded in (e for e in mine if isinstance(e, ModelResponded)):
            at = mine.index(responded)
            pieces = [e for e in mine[:at] if isinstance(e, TextDelta)
                      and e.turn == responded.turn]
            assert "".join(p.text for p in pieces) == responded.text
            assert all(p.agent == responded.agent for p in pieces)
    assert text_of(events, "lead", 1) == "Asking three. "
    assert text_of(events, "lead", 2) == "All three answered."


def test_parallel_subagents_text_interleaves_in_arrival_order() -> None:
    items = virtual(collect(three_researchers().stream("go")))
    pieces = [(e.lineage, e.text) for e in items if isinstance(e, TextDelta)
              and e.lineage != "lead"]
    assert pieces == [
        ("lead/researcher#1", "a1 "), ("lead/researcher#2", "b1 "), ("lead/researcher#3", "c1 "),
        ("lead/researcher#1", "a2"), ("lead/researcher#2", "b2"), ("lead/researcher#3", "c2"),
    ]
    assert all(isinstance(e, TextDelta) and e.agent == "researcher" and e.turn == 1
               for e in items if isinstance(e, TextDelta) and e.lineage != "lead")


def test_the_result_read_before_the_stream_ends_is_a_typed_error_saying_when() -> None:
    async def main() -> None:
        stream = three_researchers().stream("go")
        with pytest.raises(shoal.RunNotEndedError, match="after 'async for item in stream'"):
            stream.result  # noqa: B018
        async for _ in stream:
            pass

    virtual(main())


def test_the_stream_has_the_typed_result_when_it_ends() -> None:
    async def main() -> None:
        stream = three_researchers().stream("go")
        with pytest.raises(RuntimeError, match="not ended"):
            stream.result  # noqa: B018
        last = None
        async for item in stream:
            last = item
        assert stream.result is last
        assert stream.dropped == 0

    virtual(main())


class _PlainModel(Model):
    """Answers with text only; counts plain requests and streams."""

    name = "plain"

    def __init__(self, text: str) -> None:
        self.text = text
        self.requests = 0
        self.streams = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.requests += 1
        await asyncio.sleep(0.1)
        return ModelResponse(self.text)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.streams += 1
        for word in self.text.split(" "):
            await asyncio.sleep(0.01)
            yield TextPiece(word + " ")
        yield ResponseDone(ModelResponse(self.text))


@pytest.mark.parametrize("dispatch", [False, None])
def test_text_flows_even_where_stream_dispatch_is_off(dispatch: bool | None) -> None:
    model = _PlainModel("one two three")  # streams_tool_calls is False: dispatch is off
    agent = shoal.Agent(name="solo", model=model, stream_dispatch=dispatch)
    items = virtual(collect(agent.stream("go")))
    assert [e.text for e in items if isinstance(e, TextDelta)] == ["one ", "two ", "three "]
    assert (model.streams, model.requests) == (1, 0)


def test_nobody_listening_for_text_keeps_the_plain_request() -> None:
    model = _PlainModel("one two three")
    seen: list[Event] = []
    result = virtual(shoal.Agent(name="solo", model=model).run("go", on_event=seen.append))
    assert result.output == "one two three"
    assert (model.streams, model.requests) == (0, 1)  # observed, but nobody asked for text
    assert not any(isinstance(e, TextDelta) for e in seen)


def test_a_sink_can_ask_for_text() -> None:
    class Listener:
        wants_text = True

        def __init__(self) -> None:
            self.texts: list[str] = []

        def __call__(self, event: Event) -> None:
            if isinstance(event, TextDelta):
                self.texts.append(event.text)

    listener = Listener()
    model = _PlainModel("one two")
    virtual(shoal.Agent(name="solo", model=model, stream_dispatch=False).run(
        "go", on_event=listener))
    assert listener.texts == ["one ", "two "]


def test_a_model_without_a_stream_of_its_own_gives_its_text_in_one_piece() -> None:
    class RequestOnly(ScriptedModel):
        async def request(self, request: ModelRequest) -> ModelResponse:
            return await super().request(request)

    agent = shoal.Agent(name="solo", model=RequestOnly(["the whole answer"]))
    items = virtual(collect(agent.stream("go")))
    assert [e.text for e in items if isinstance(e, TextDelta)] == ["the whole answer"]


def test_a_retried_request_starts_its_text_again_after_model_retrying() -> None:
    class FlakyOnce(_PlainModel):
        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            self.streams += 1
            yield TextPiece("half ")
            if self.streams == 1:
                raise ModelHTTPError(self.name, "overloaded", 503)
            yield TextPiece("whole")
            yield ResponseDone(ModelResponse("half whole"))

    agent = shoal.Agent(name="solo", model=FlakyOnce("x"))
    gates = ModelGates(retry=ModelRetry(retries=2, backoff=0.1), seed=1)
    items = virtual(collect(agent.stream("go", gates=gates)))
    kinds = [(e.kind, getattr(e, "text", "")) for e in events_of(items)
             if isinstance(e, TextDelta | ModelRetrying)]
    assert kinds == [("TextDelta", "half "), ("ModelRetrying", ""),
                     ("TextDelta", "half "), ("TextDelta", "whole")]
    assert items[-1].output == "half whole"


# -- failure, early stop, cancellation --------------------------------------------------------


def test_a_failed_run_ends_the_stream_with_its_failed_result() -> None:
    class Refuses(_PlainModel):
        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield TextPiece("I will ")
            raise ModelHTTPError(self.name, "bad request", 400)

    items = virtual(collect(shoal.Agent(name="solo", model=Refuses("x")).stream("go")))
    result = items[-1]
    assert isinstance(result, shoal.AgentResult)
    assert result.status == "failed"
    assert isinstance(result.error, ModelHTTPError)
    finished = [e for e in events_of(items) if isinstance(e, AgentFinished)]
    assert [f.status for f in finished] == ["failed"]
    assert text_of(items, "solo") == "I will "


def test_a_breached_budget_ends_the_stream_with_that_result() -> None:
    lead = shoal.Agent(name="lead", tools=[nap], model=ScriptedModel(
        [["First. ", call("nap", seconds=0.1)], "never asked"]))
    items = virtual(collect(lead.stream("go", budget=shoal.Budget(requests=1))))
    assert items[-1].status == "budget_exceeded"
    assert isinstance(items[-1].error, shoal.BudgetExceeded)
    assert [e.status for e in items if isinstance(e, AgentFinished)] == ["budget_exceeded"]
    assert text_of(items, "lead") == "First. "


def test_a_subagent_failing_is_an_event_and_the_lead_goes_on() -> None:
    sub = shoal.Agent(name="helper", model=ScriptedModel([]))  # no step: ScriptError
    lead = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("helper", task="x")], "went on"]))
    items = virtual(collect(lead.stream("go")))
    assert items[-1].output == "went on"
    failed = [e for e in items if isinstance(e, AgentFinished) and e.lineage == "lead/helper#1"]
    assert [f.status for f in failed] == ["failed"]


def _slow_lead(ended: list[str]) -> shoal.Agent[str]:
    @shoal.tool
    async def slow(seconds: float) -> str:
        """Sleep long."""
        ended.append("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        ended.append("finished")
        return "late"

    return shoal.Agent(name="lead", tools=[slow], model=ScriptedModel(
        [["Starting. ", call("slow", seconds=30), pause(0.1), "still going"], "never"]))


def test_breaking_out_cancels_the_run_cleanly() -> None:
    ended: list[str] = []

    async def main() -> None:
        errors = loop_errors()
        async with _slow_lead(ended).stream("go") as stream:
            async for item in stream:
                if isinstance(item, TextDelta) and item.text == "still going":
                    break
        assert ended == ["started", "cancelled"]
        assert stream.dropped == 0
        gc.collect()
        await asyncio.sleep(0)
        assert not errors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arun(main(), timeout=10)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)
                or "was never retrieved" in str(w.message)]


def test_a_bare_break_cancels_the_run_when_the_stream_is_dropped() -> None:
    ended: list[str] = []
    finished: list[Event] = []

    async def main() -> None:
        errors = loop_errors()
        lead = _slow_lead(ended)
        async for item in lead.stream("go", on_event=finished.append):
            if isinstance(item, TextDelta) and item.text == "still going":
                break
        for _ in range(50):  # the dropped stream is closed by the loop, soon
            if len(ended) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gc.collect()
        assert not errors

    arun(main(), timeout=10, virtual=True)  # "soon" in loop turns, not in real time
    assert ended == ["started", "cancelled"]
    lead_end = [e for e in finished if isinstance(e, AgentFinished) and e.lineage == "lead"]
    assert [(e.status, STOPPED in e.error) for e in lead_end] == [("cancelled", True)]


def test_a_cancelled_consumer_cancels_the_run() -> None:
    ended: list[str] = []

    async def main() -> None:
        errors = loop_errors()
        stream = _slow_lead(ended).stream("go")
        with pytest.raises(TimeoutError):  # noqa: PT012 - raised as the timeout block ends
            async with asyncio.timeout(0.3):
                async for _ in stream:
                    pass
        assert ended == ["started", "cancelled"]
        assert not errors

    arun(main(), timeout=10)


def test_a_stream_never_iterated_runs_nothing() -> None:
    model = _PlainModel("x")

    async def main() -> None:
        stream = shoal.Agent(name="solo", model=model).stream("go")
        await asyncio.sleep(0.01)
        await stream.aclose()

    arun(main())
    assert (model.requests, model.streams) == (0, 0)


def test_a_run_refused_before_it_starts_raises_from_the_loop() -> None:
    async def main() -> None:
        async with shoal.Runtime() as runtime:
            stream = three_researchers().stream("go", runtime=runtime, approver=lambda r: True)
            with pytest.raises(ConfigError, match="give it the approver"):
                async for _ in stream:
                    pass

    arun(main())


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", None])
def test_a_bad_buffer_is_a_config_error(bad: Any) -> None:
    lead = three_researchers()
    with pytest.raises(ConfigError, match="buffer must be a whole number"):
        lead.stream("go", buffer=bad)
    with pytest.raises(ConfigError, match="buffer must be a whole number"):
        shoal.stream(shoal.Plan(), buffer=bad)


# -- backpressure -----------------------------------------------------------------------------


def _wide(calls: int) -> shoal.Agent[str]:
    step: list[Any] = []
    for i in range(calls):
        step += [f"w{i} ", call("nap", seconds=1.0)]
    return shoal.Agent(name="lead", tools=[nap], model=ScriptedModel([step, "done"]))


def _end_time(sink: list[float]) -> Any:
    def on_event(event: Event) -> None:
        if isinstance(event, AgentFinished) and event.lineage == "lead":
            sink.append(asyncio.get_running_loop().time())
    return on_event


def test_a_slow_consumer_never_slows_the_run_and_the_policy_holds() -> None:
    calls = 1000

    async def plain() -> float:
        began = asyncio.get_running_loop().time()
        ends: list[float] = []
        await _wide(calls).run("go", on_event=_end_time(ends))
        return ends[0] - began

    async def slow_reader() -> tuple[float, list[Any], int]:
        loop = asyncio.get_running_loop()
        began, items = loop.time(), []
        ends: list[float] = []
        stream = _wide(calls).stream("go", on_event=_end_time(ends), buffer=100)
        async for item in stream:
            items.append(item)
            await asyncio.sleep(0.01)  # 10 ms per item: far behind the run
        assert loop.time() - began > 10  # the reader took long ...
        return ends[0] - began, items, stream.dropped

    makespan = virtual(plain())
    streamed, items, dropped = virtual(slow_reader())
    assert streamed == pytest.approx(makespan, abs=1e-6)  # ... the run did not wait for it
    assert makespan == pytest.approx(1.0, abs=0.01)
    events = events_of(items)
    assert items[-1].status == "ok"
    # lifecycle events are all there
    finished = [e for e in events if isinstance(e, NodeFinished)]
    assert len(finished) == calls
    assert sum(isinstance(e, AgentFinished) for e in events) == 1
    assert sum(isinstance(e, RunFinished) for e in events) == 1  # the tool phase
    assert sum(isinstance(e, ModelResponded) for e in events) == 2
    # the lead's text is whole: later pieces joined the unread one
    assert text_of(events, "lead", 1) == "".join(f"w{i} " for i in range(calls))
    # what was left out is said, and only progress was left out
    markers = [e for e in events if isinstance(e, EventsDropped)]
    assert markers and sum(m.count for m in markers) == dropped > 0
    kinds: set[str] = set().union(*(m.kinds for m in markers))
    assert kinds <= {"NodeQueued", "NodeStarted", "NodeRetrying", "TextDelta"}
    assert all(m.count == sum(m.kinds.values()) for m in markers)


def test_text_of_one_agent_coalesces_rather_than_being_dropped() -> None:
    pieces = [f"piece{i} " for i in range(500)]
    agent = shoal.Agent(name="solo", model=ScriptedModel([list(pieces)]))

    async def main() -> tuple[list[Any], int]:
        stream = agent.stream("go", buffer=5)
        items = []
        async for item in stream:
            items.append(item)
            await asyncio.sleep(1)
        return items, stream.dropped

    items, dropped = virtual(main())
    assert dropped == 0
    deltas = [e for e in items if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == "".join(pieces)
    assert len(deltas) < 10  # joined while unread
    responded = next(i for i, e in enumerate(items) if isinstance(e, ModelResponded))
    assert all(i < responded for i, e in enumerate(items) if isinstance(e, TextDelta))


# -- plan runs and open runs ------------------------------------------------------------------


def test_a_plan_streams_its_events_then_its_run_result() -> None:
    reader = shoal.Agent(name="reader", model=ScriptedModel([["Reading ", pause(0.1), "done"]]))
    plan = shoal.Plan()
    a = plan.call(nap, seconds=0.2)
    b = plan.call(reader, task="Summarise")

    items = virtual(collect(shoal.stream(plan)))
    result = items[-1]
    assert isinstance(result, shoal.RunResult)
    assert result[a].status == "ok" and result[b].value == "Reading done"
    events = events_of(items)
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert [t.text for t in texts] == ["Reading ", "done"]
    assert {t.lineage for t in texts} == {b.node}  # the agent node's lineage: its node id
    assert texts[0].agent == "reader"


def test_agent_nodes_of_a_plan_interleave_their_text() -> None:
    reader = shoal.Agent(name="reader", model=ScriptedModel.per_prompt({
        "p1": [["one ", pause(0.2), "uno"]], "p2": [[pause(0.1), "two ", pause(0.2), "dos"]]}))
    plan = shoal.Plan()
    papers = plan.call(listing)
    summaries = plan.map(reader, over=papers)
    items = virtual(collect(shoal.stream(plan)))
    assert items[-1][summaries].value == ["one uno", "two dos"]
    assert [t.text for t in items if isinstance(t, TextDelta)] == ["one ", "two ", "uno", "dos"]
    assert len({t.lineage for t in items if isinstance(t, TextDelta)}) == 2


@shoal.tool
def listing() -> list[str]:
    """Two papers."""
    return ["p1", "p2"]


def test_a_slow_consumer_of_a_wide_plan_never_slows_it() -> None:
    def wide() -> shoal.Plan:
        plan = shoal.Plan()
        for _ in range(1000):
            plan.call(nap, seconds=1.0)
        return plan

    async def slow_reader() -> tuple[shoal.RunResult, list[Any], int]:
        stream = shoal.stream(wide(), buffer=50)
        items: list[Any] = []
        async for item in stream:
            items.append(item)
            await asyncio.sleep(0.01)
        return items[-1], items, stream.dropped

    plain = virtual(shoal.run(wide()))
    result, items, dropped = virtual(slow_reader())
    assert result.makespan == pytest.approx(plain.makespan, abs=1e-6)
    assert plain.makespan == pytest.approx(1.0, abs=0.01)
    events = events_of(items)
    assert sum(isinstance(e, NodeFinished) for e in events) == 1000
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    markers = [e for e in events if isinstance(e, EventsDropped)]
    assert sum(m.count for m in markers) == dropped > 0
    assert set().union(*(m.kinds for m in markers)) <= {"NodeQueued", "NodeStarted"}


def test_runtime_stream_and_a_bad_plan() -> None:
    async def main() -> None:
        async with shoal.Runtime() as runtime:
            plan = shoal.Plan()
            node = plan.call(nap, seconds=0.1)
            items = await collect(runtime.stream(plan))
            assert items[-1][node].value == "slept 0.1"
            bad = shoal.Plan()
            bad.add(nap, {"seconds": "not a number"})
            with pytest.raises(PlanError):
                await collect(runtime.stream(bad))

    virtual(main())


def test_an_open_run_streams_from_its_first_event() -> None:
    async def main() -> list[Any]:
        async with shoal.Runtime() as runtime:
            async with runtime.open_run("grow") as run:
                stream = run.events()
                first = run.call(nap, seconds=0.1)
                reader = asyncio.ensure_future(collect(stream))
                await run.value(first)
                run.call(nap, seconds=0.2, after=[first])
                run.close()
                items = await reader
            assert items[-1] is not None and items[-1].counts == run.result.counts
            return items

    items = virtual(main())
    events = events_of(items)
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, NodeFinished) for e in events) == 2


def test_an_open_run_asked_for_its_events_too_late_says_so() -> None:
    async def main() -> None:
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="before the first 'await'"):
                run.events()

    virtual(main())


def test_leaving_an_open_runs_stream_early_cancels_the_run() -> None:
    async def main() -> shoal.Outcome:
        async with shoal.Runtime() as runtime:
            async with runtime.open_run() as run:
                events = run.events()
                node = run.call(nap, seconds=30)
                async with events:
                    async for item in events:
                        if isinstance(item, RunStarted):
                            break
                with pytest.raises(RuntimeError, match="closed"):
                    run.call(nap, seconds=1)
            return run.result[node]

    outcome = virtual(main())
    assert outcome.status == "cancelled"
    assert STOPPED in (outcome.reason or "")


# -- hostile text ------------------------------------------------------------------------------


HOSTILE = ["[bold red]alarm[/bold red] ", "\x1b[2J\x1b[31mred ", "back\rover ", "bell\x07 ",
           "lone \ud800 surrogate ", "[/INST] [link=http://x]y[/link] ", "x" * 200_000]


def test_hostile_text_streams_exactly_and_the_live_tree_shows_it_safely() -> None:
    agent = shoal.Agent(name="solo", model=ScriptedModel(
        [[*HOSTILE, call("nap", seconds=0.5)], "fine"]), tools=[nap])
    view = AgentTree(text=True)
    frames: list[str] = []

    async def main() -> list[Any]:
        items = []
        async with agent.stream("go", on_event=view) as stream:
            async for item in stream:
                items.append(item)
                if isinstance(item, TextDelta) and item.text.startswith("x"):
                    frames.append(_draw(view))  # while the agent runs
        return items

    items = virtual(main())
    assert text_of(items, "solo", 1) == "".join(HOSTILE)
    assert frames
    frame = frames[-1]
    assert "\x1b" not in frame and "\r" not in frame and "\x07" not in frame
    assert "xxx" in frame and len(max(frame.splitlines(), key=len)) <= 160
    early = AgentTree(text=True)  # what the tree shows after each of the first pieces
    drawn: list[str] = []
    for item in events_of(items):
        early(item)
        if isinstance(item, TextDelta) and not item.text.startswith("x"):
            drawn.append(_draw(early))
    assert "[bold red]alarm[/bold red]" in drawn[0]  # markup shown as text, not applied
    assert "\\x1b[2J" in drawn[1] and "\\x07" in drawn[3] and "\\ud800" in drawn[4]
    assert "[link=http://x]y[/link]" in drawn[5]
    assert not any(c in frame for frame in drawn for c in "\x1b\r\x07")


def test_a_tree_that_did_not_ask_for_text_does_not_get_it() -> None:
    assert not AgentTree().wants_text
    assert AgentTree(text=True).wants_text


def _draw(view: AgentTree) -> str:
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None, force_terminal=False)
    console.print(render_tree(view, "run"))
    return out.getvalue()


# -- the live tree on a terminal ---------------------------------------------------------------

WRITER = '''
import shoal
from shoal.testing import ScriptedModel, pause

lead = shoal.Agent(name="lead", model=ScriptedModel([
    ["Thinking about [bold]markup[/bold] \\x1b[2J and more ", pause(4.0), "done"]]))
'''


def test_the_live_tree_shows_what_the_model_is_writing(tmp_path: Path) -> None:
    from tests.test_cli_safe import Terminal

    (tmp_path / "writer.py").write_text(WRITER)
    term = Terminal(["run", "writer.py:lead", "go", "--no-store"], tmp_path)
    try:
        shown = term.wait_for("and more")  # while the model still writes
        out = term.wait_for("1 turn by the lead")
    finally:
        code = term.close()
    assert code == 0, out
    live = [line for line in shown.splitlines() if "and more" in line and "running" in line]
    assert live, shown  # on the running agent's row of the live tree, escaped, markup as text
    assert "Thinking about [bold]markup[/bold] \\x1b[2J and more" in live[0]


def test_a_planner_streams_its_plan_and_its_joiners_text() -> None:
    """mode="plan": the plan's text and the joiner's reach the caller as they are written."""

    @shoal.tool
    def probe(n: int) -> int:
        """Echo n."""
        return n

    plan = '1. probe(1)\n2. probe(2)\n3. join()\n'
    joined = "Thought: both came back.\nAction: Finish(1 and 2)"
    model = ScriptedModel([plan, joined], tokens_per_second=40.0)
    planner = shoal.Agent(name="planner", model=model, tools=[probe], mode="plan")
    items = virtual(collect(planner.stream("probe twice")))
    result = items[-1]
    assert result.status == "ok" and result.output == "1 and 2"
    assert text_of(items, "planner", turn=1) == plan
    assert text_of(items, "planner", turn=2) == joined
    pieces = [e for e in items if isinstance(e, TextDelta)]
    assert len(pieces) > 4  # token by token, not the reply in one piece
    # the first call started while the plan was still being written
    started = next(e for e in items if isinstance(e, NodeStarted) and e.tool == "probe")
    assert items.index(started) < items.index(pieces[len(plan) // 4 - 1])
