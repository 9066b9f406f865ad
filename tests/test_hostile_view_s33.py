"""Found by attacking shoal's transparency surface, session 33: event sinks that raise what
no ``except Exception`` catches, live trees too large or too deep to draw, and more.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.tree import Tree

import shoal
from shoal.cli.render import plan_problems
from shoal.cli.tree import MIN_LIVE_ROWS, AgentTree, live_rows, render_tree
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    JsonlSink,
    ModelResponded,
    NodeFinished,
    NodeStarted,
)
from shoal.exceptions import PlanError, PlanProblem
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from shoal.timeline import from_journal
from shoal.timeline.html import render
from shoal.timeline.journal import _natural
from shoal.timeline.model import from_run_result, mark_critical, step_order
from tests.cli_process import run_cli
from tests.conftest import arun

ROOT = Path(__file__).resolve().parent.parent


@shoal.tool
async def work(x: int) -> int:
    """Sleep a second, then give ``x`` back."""
    await asyncio.sleep(1)
    return x


def cancelled_result(event: Event) -> None:
    """A sink whose own code raises CancelledError: a cancelled future's ``result()``."""
    del event
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    future.result()


# -- a sink raising CancelledError --------------------------------------------------------


def test_a_sink_raising_cancelled_error_loses_no_outcome(caplog: Any) -> None:
    # it broke the run while it recorded the outcome the event was about: the awaited run
    # raised KeyError (or CancelledError), its result lost
    plan = shoal.Plan()
    for i in range(4):
        plan.call(work, x=i, node_id=f"n{i}")
    seen: list[str] = []

    def sink(event: Event) -> None:
        seen.append(event.kind)
        if event.kind in ("NodeStarted", "NodeFinished", "RunStarted"):
            cancelled_result(event)

    async def main() -> shoal.RunResult:
        return await shoal.Runtime().start(plan, on_event=sink)

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = arun(main(), virtual=True)
    assert result.ok and [result[f"n{i}"].value for i in range(4)] == [0, 1, 2, 3]
    assert seen.count("NodeFinished") == 4 and seen[-1] == "RunFinished"
    assert "event sink" in caplog.text and "continuing" in caplog.text


def test_an_agent_trees_sink_raising_cancelled_error_loses_no_outcome(caplog: Any) -> None:
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("work", x=7)], "done"]),
                       tools=[work])
    kinds: list[str] = []

    def sink(event: Event) -> None:
        kinds.append(event.kind)
        if event.kind in ("AgentStarted", "ModelResponded", "NodeFinished"):
            cancelled_result(event)

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = arun(lead.run("go", on_event=sink), virtual=True)
    assert result.status == "ok" and result.output == "done"
    assert [(c.status, c.outcome and c.outcome.value) for c in result.calls] == [("ok", 7)]
    assert kinds[-1] == "AgentFinished"


def test_a_sink_raising_keyboard_interrupt_still_stops_the_run() -> None:
    plan = shoal.Plan()
    plan.call(work, x=1)

    def sink(event: Event) -> None:
        if isinstance(event, NodeStarted):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shoal.run_sync(plan, on_event=sink)


# -- the live tree of a swarm of swarms, and of a lineage a journal made deep --------------


def printed(renderable: Any, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(renderable)
    return out.getvalue()


def swarm_of_swarms(tree: AgentTree, width: int, depth: int) -> int:
    """Agents ``width`` wide and ``depth`` deep under a lead, each with two calls running."""
    tree(AgentStarted(run_id="r", time=0.0, lineage="lead", agent="lead", prompt="p", depth=0))
    made, level = 1, ["lead"]
    for d in range(depth):
        below = []
        for parent in level:
            for i in range(width):
                lineage = f"{parent}/sub#{i}"
                tree(AgentStarted(run_id="r", time=1.0, lineage=lineage, agent="sub",
                                  prompt="p", depth=d + 1))
                for k in range(2):
                    tree(NodeStarted(run_id="r", time=2.0, lineage=f"{lineage}/t#{k}",
                                     node_id=f"t#{k}", tool="t", attempt=1, executor="inline"))
                below.append(lineage)
        made += len(below) * 3
        level = below
    return made


def test_the_live_tree_of_a_swarm_of_swarms_is_bounded_and_says_what_it_left_out() -> None:
    # every agent had at most 20 subagents, so none was summed up: 1,110 agents and 2,220
    # calls were drawn on every redraw of the live view, eight a second on the run's own
    # event loop (about a second each)
    tree = AgentTree(text=True)
    total = swarm_of_swarms(tree, 10, 3)
    assert len(tree.rows) == total == 3331
    whole = printed(render_tree(tree, "run"))
    assert len(whole.splitlines()) == total + 1  # unbounded: every row, as before
    out = printed(render_tree(tree, "run", rows=40))
    lines = out.splitlines()
    assert len(lines) < 3 * 40
    # breadth first: the lead and its ten subagents are drawn, the deeper ones counted
    assert sum(1 for line in lines if "sub#" in line and "running" in line) >= 10
    counted = [int(line.split("… ")[1].split()[0]) for line in lines if "more not drawn" in line]
    assert counted and all("running" in line for line in lines if "more not drawn" in line)
    drawn = sum(1 for line in lines if ("sub#" in line or "t#" in line) and "  running" in line)
    assert drawn + 1 <= 40 and sum(counted) > 0
    assert live_rows(50) == 25 and live_rows(3) == MIN_LIVE_ROWS


def test_a_lineage_deeper_than_the_stack_is_a_row_not_a_recursion_error() -> None:
    # a journal may hold any lineage: one 5,000 levels deep made the tree's sink (and shoal
    # show) fail with RecursionError
    tree = AgentTree()
    lineage = "lead/" + "/".join(f"s#{i}" for i in range(5000))
    tree(AgentStarted(run_id="r", time=0.0, lineage=lineage, agent="deep", prompt="p",
                      depth=5000))
    tree(AgentFinished(run_id="r", time=1.0, lineage=lineage, agent="deep", status="ok",
                       output="deep end", turns=1, total_tokens=1, duration=1.0))
    assert len(tree.rows) == 5001 and tree.roots == ["lead"]
    assert tree.rows["lead/s#0"].children == ["lead/s#0/s#1"]
    out = printed(render_tree(tree, "run", rows=30), width=400)
    assert "… 1 more not drawn (1 running)" in out and len(out.splitlines()) == 32
    whole = render_tree(tree, "run")  # built without recursion too (rich draws it so)
    assert isinstance(whole, Tree)
    for _ in range(5001):
        assert len(whole.children) == 1
        whole = whole.children[0]
    assert "deep end" in str(whole.label) and not whole.children


# -- a stream closed by another task than the one reading it ------------------------------


@shoal.tool
async def long_work(x: int) -> int:
    """Sleep ten seconds, then give ``x`` back."""
    await asyncio.sleep(10)
    return x


@pytest.mark.parametrize("agent", [False, True])
def test_closing_a_stream_another_task_reads_stops_the_run_and_ends_that_loop(
        agent: bool) -> None:
    # aclose() raised RuntimeError ('asynchronous generator is already running') and the
    # run went on to its end: a stop button could not stop a stream a reader task followed
    ended: list[Event] = []

    async def main() -> tuple[list[Any], float, float]:
        loop = asyncio.get_running_loop()
        if agent:
            lead = shoal.Agent(name="lead", tools=[long_work], model=ScriptedModel(
                [[call("long_work", x=1), call("long_work", x=2)], "done"]))
            stream: Any = lead.stream("go", on_event=ended.append)
        else:
            plan = shoal.Plan()
            for i in range(3):
                plan.call(long_work, x=i)
            stream = shoal.Runtime().stream(plan, on_event=ended.append)
        got: list[Any] = []

        async def reader() -> None:
            async for item in stream:
                got.append(item)

        reading = asyncio.ensure_future(reader())
        await asyncio.sleep(1)
        await stream.aclose()
        closed_at = loop.time()
        await asyncio.wait_for(reading, 1)  # its loop ended (it would have read until 10 s)
        return got, closed_at, loop.time()

    got, closed_at, at = arun(main(), virtual=True)
    assert closed_at == at == 1.0
    assert got and all(isinstance(item, Event) for item in got)  # no result: it was closed
    assert ended[-1].kind == ("AgentFinished" if agent else "RunFinished")
    last = ended[-1]
    if isinstance(last, shoal.events.RunFinished):
        assert last.counts["cancelled"] == 3
    else:
        assert isinstance(last, AgentFinished) and last.status == "cancelled"


# -- the timeline of a plan whose agent nodes have odd ids ---------------------------------


def test_a_timeline_orders_lanes_whatever_digits_their_ids_hold(tmp_path: Any) -> None:
    # the lanes were sorted by a key that took int() of each run of what isdigit() calls
    # digits: a node id holding "²" after a number ("a1²"), or a run of digits longer than
    # Python writes out, made shoal show RUN --html fail with ValueError
    ids = ["a1²", "a2²", "n" + "7" * 5000]
    plan = shoal.Plan()
    for node_id in ids:
        plan.call(shoal.Agent(name="reader", model=ScriptedModel(["fine"])), task="x",
                  node_id=node_id)
    path = tmp_path / "runs.db"

    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(store=str(path))
        try:
            return await runtime.run(plan)
        finally:
            await runtime.aclose()

    result = arun(main())
    assert result.ok
    store = SQLiteStore(str(path))
    try:
        timeline = from_journal(store, result.run_id)
    finally:
        store.close()
    assert sorted(lane.lineage for lane in timeline.lanes) == sorted(["", *ids])
    assert "a1\\u00b2" in render(timeline.to_data())  # the page is ASCII
    keys = ["s10", "s9", "s" + "1" * 5000, "s1²", "s09", "s²", "s"]
    assert sorted(keys, key=_natural) == ["s", "s1²", "s9", "s09", "s10", "s" + "1" * 5000,
                                          "s²"]
    assert step_order("model-²") is None and step_order("turn-" + "9" * 5000) is None
    assert step_order("turn-12") == (12, 1)


# -- shoal run --json of an agent whose model's error cannot be written out -----------------


def test_json_output_of_an_agent_whose_model_error_has_no_words() -> None:
    # str() of the error was taken for --json: the command crashed after the run, with a
    # traceback and nothing on stdout (the text view showed a placeholder all along)
    done = run_cli(["run", "tests/view_s33_agents.py:unprintable_error_agent", "hi", "--json",
                    "--no-store"], cwd=ROOT, env={**os.environ, "COLUMNS": "160"})
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "failed"
    assert data["error"] == {"type": "UnprintableModelError",
                             "message": "<its message cannot be shown: its __str__ failed>"}
    assert "Traceback" not in done.stderr


# -- text whose own methods raise, in an event and in a prompt ------------------------------


class Touchy(str):
    """Text whose every method of its own raises."""

    def __deepcopy__(self, memo: Any) -> Any:
        raise RuntimeError("no deepcopy")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise RuntimeError("no reduce")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_an_event_holding_text_whose_methods_raise_is_written_out(tmp_path: Path) -> None:
    # to_dict() deep-copied every field (asdict): a str subclass whose copying fails made
    # JsonlSink lose the event (and any sink writing events out); a value JSON cannot hold
    # whose repr fails made it raise too
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    text = Touchy("it said \x1b[31mred\u202e")
    sink(ModelResponded(run_id="r", time=1.0, lineage="lead", agent="lead", model="m",
                        turn=1, text=text, tool_calls=(text,), input_tokens=1,
                        output_tokens=1, duration=0.5))
    sink(NodeFinished(run_id="r", time=2.0, node_id="n", tool="t", status="failed",
                      attempts=1, duration=1.0, error=NoRepr()))  # type: ignore[arg-type]
    sink.close()
    assert sink.lost == 0 and not sink.error
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["text"] == "it said \x1b[31mred\u202e" and first["tool_calls"] == [first["text"]]
    assert second["kind"] == "NodeFinished" and "NoRepr" in second["error"]


def test_an_agent_takes_a_prompt_whose_own_methods_raise_as_its_text(tmp_path: Path) -> None:
    # the run failed in its first turn ('no repr', from sizing the request), and its
    # AgentStarted event was lost from the events file ('no deepcopy')
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    try:
        result = arun(lead.run(Touchy("go \x1b[2J"), on_event=sink), virtual=True)
    finally:
        sink.close()
    assert result.status == "ok" and result.output == "done"
    kinds = [json.loads(line) for line in path.read_text().splitlines()]
    assert kinds[0]["kind"] == "AgentStarted" and kinds[0]["prompt"] == "go \x1b[2J"
    assert sink.lost == 0


# -- sinks whose __eq__ raises -------------------------------------------------------------


class TouchySink:
    """A sink whose ``__eq__`` raises (an array-like collector's may, or return an array)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, event: Event) -> None:
        self.kinds.append(event.kind)

    def take(self, event: Event) -> None:
        self.kinds.append(event.kind)

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = object.__hash__


def test_sinks_whose_eq_raises_do_not_fail_the_agent_they_observe() -> None:
    # the tree told its sinks from its runtime's by 'sink in runtime_sinks', which asked
    # each sink's own __eq__: the agent ended failed with 'no eq'
    mine, theirs = TouchySink(), TouchySink()
    both = TouchySink()

    async def main() -> Any:
        runtime = shoal.Runtime(on_event=[theirs, both.take])
        lead = shoal.Agent(name="lead", tools=[work],
                           model=ScriptedModel([[call("work", x=3)], "done"]))
        try:
            return await lead.run("go", on_event=[mine, both.take], runtime=runtime)
        finally:
            await runtime.aclose()

    result = arun(main(), virtual=True)
    assert result.status == "ok" and result.output == "done"
    assert mine.kinds[0] == "AgentStarted" and mine.kinds[-1] == "AgentFinished"
    assert "NodeFinished" in mine.kinds and "NodeFinished" in theirs.kinds
    # the same bound method given to both hears each event once, as before
    for kind in {*mine.kinds, *theirs.kinds}:
        assert both.kinds.count(kind) == max(mine.kinds.count(kind), theirs.kinds.count(kind))


# -- the current directory's name in a hint ------------------------------------------------


def test_the_import_hint_shows_the_current_directory_escaped(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    # the hint under a plan whose tool module cannot be imported printed the directory's
    # name raw: a directory named with escapes (an unpacked archive, a clone) set the
    # terminal's title and colours
    folder = tmp_path / "tools\x1b]0;pwned\x07\x1b[31m\u202eevil"
    folder.mkdir()
    monkeypatch.chdir(folder)
    error = PlanError([PlanProblem("bad_import", "no module named 'nosuch' (in 'nosuch:t')",
                                   "a")])
    out = plan_problems(error)
    assert "hint: tool modules are imported from the current directory" in out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "tools\\x1b]0;pwned\\x07\\x1b[31m\\u202eevil" in out


# -- a sink failing on every event ---------------------------------------------------------


@shoal.tool
async def quick(x: int) -> int:
    """Give ``x`` back."""
    return x


def test_a_sink_failing_on_every_event_is_logged_in_full_a_few_times_then_counted(
        caplog: Any) -> None:
    # each failure was logged with its traceback: a run of 5,000 calls wrote 120,000 lines
    # to the log and ran ten times slower than with no sink
    plan = shoal.Plan()
    for i in range(300):
        plan.call(quick, x=i)
    calls = 0

    def sink(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("this sink is broken")

    async def main() -> shoal.RunResult:
        return await shoal.Runtime().run(plan, on_event=sink)

    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = arun(main(), virtual=True)
    assert result.ok and calls == 902  # every event still goes to it
    records = [r for r in caplog.records if "event sink" in r.getMessage()]
    assert [r.exc_info is not None for r in records] == [True, True, True, False, False]
    assert "from here on, only every 10th" in records[2].getMessage()
    assert "has failed 10 times in this run" in records[3].getMessage()
    assert "has failed 100 times" in records[4].getMessage()
    assert "ValueError: this sink is broken" in records[4].getMessage()


# -- a map whose call takes many refs beside the list it maps over ------------------------


@shoal.tool
async def numbers(n: int) -> list[int]:
    """0 .. n-1, after a second."""
    await asyncio.sleep(1)
    return list(range(n))


@shoal.tool
async def seed(i: int) -> int:
    """``i``, after ``i % 7`` seconds."""
    await asyncio.sleep(i % 7)
    return i


@shoal.tool
async def scaled(item: int, context: list[int]) -> int:
    """``item`` times the context's length, after ``item % 5`` seconds."""
    await asyncio.sleep(item % 5)
    return item * len(context)


def mapped_over_many_refs(n: int) -> shoal.RunResult:
    plan = shoal.Plan()
    refs = [plan.call(seed, i=i) for i in range(n)]
    plan.map(scaled, over=plan.call(numbers, n=n), context=refs, node_id="m")
    return arun(shoal.Runtime(max_concurrency=10 * n).run(plan), virtual=True, timeout=60)


def test_a_maps_items_share_its_inputs_on_the_timeline_and_the_critical_path_holds() -> None:
    # every item got its own copy of the map's inputs: n items of a map taking n refs made
    # n * n edges and n * n steps of explaining waits (800 of each: 2 s; 5,000: a minute)
    result = mapped_over_many_refs(40)
    timeline = from_run_result(result)
    items = [b for b in timeline.bars if b.node_id.startswith("m[")]
    assert len(items) == 40 and all(b.preds is items[0].preds for b in items)
    # the same critical path and waits as with a copy per item
    copied = from_run_result(result)
    for bar in copied.bars:
        bar.critical = False
        bar.preds = list(bar.preds)
    assert mark_critical(copied.bars, copied.lanes) == timeline.critical_time
    # (which of chains of equal length is marked was never fixed: edges are walked as a set)
    assert [(b.node_id.partition("[")[0], b.duration) for b in copied.bars if b.critical] == [
        (b.node_id.partition("[")[0], b.duration) for b in timeline.bars if b.critical]
    assert [b.waits for b in items] == [
        b.waits for b in copied.bars if b.node_id.startswith("m[")]
    assert any("and 40 others" in w.text for w in items[0].waits)
    big = mapped_over_many_refs(1500)
    began = time.process_time()
    assert from_run_result(big).calls == 1500 * 2 + 2
    assert time.process_time() - began < 3.0  # some 10 s before


@shoal.tool
async def minute(x: int) -> int:
    """Sleep a minute, then give ``x`` back."""
    await asyncio.sleep(60)
    return x


def test_closing_an_open_runs_stream_read_on_another_loop_stops_the_run() -> None:
    # closed from the run's loop while a thread's loop read it: RuntimeError ('asynchronous
    # generator is already running') and the run went on; then, a wait woken from the
    # reader's thread, which the closing loop did not notice
    got: list[Any] = []

    async def main() -> tuple[Any, bool]:
        async with shoal.Runtime().open_run() as run:
            stream = run.events()
            run.call(minute, x=1)

            started = threading.Event()

            def reader() -> None:
                async def read() -> None:
                    async for item in stream:
                        got.append(item)
                        if isinstance(item, NodeStarted):
                            started.set()

                asyncio.run(read())

            thread = threading.Thread(target=reader)
            thread.start()
            assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 20)
            await asyncio.wait_for(stream.aclose(), 5)  # the call sleeps a minute
            thread.join(20)
            alive = thread.is_alive()
        return run.result, alive

    result, alive = arun(main(), timeout=40)
    assert not alive and result.counts["cancelled"] == 1
    assert not any(isinstance(item, shoal.RunResult) for item in got)
