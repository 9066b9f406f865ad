"""What a swarm's agents cost the process that runs them: objects, bytes, and cycles.

A thousand subagents in one process each hold their turn in flight while they wait on their
model: every object a turn keeps is one more for the garbage collector to walk on each full
pass, and the collector's passes were most of a swarm's CPU time. So the objects and bytes an
idle subagent holds are pinned here (with margin: they depend on the Python version a little),
and the steps that used to leave reference cycles behind (which only a full pass frees) are
checked to be freed by reference counting alone.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

import shoal
from shoal.clock import clock_of
from shoal.deps import analyze
from shoal.exceptions import RunActiveError
from shoal.models.base import ModelRequest, ModelResponse, Usage
from shoal.plan import Plan
from shoal.store.base import RunRecord, run_record_with
from shoal.store.memory import MemoryStore
from shoal.testing import ScriptedModel, call

WORKERS = 200
#: Upper bounds per idle subagent. Measured: 87 objects and 18.6 KiB (93 while each steps run
#: held a claim, a partial and a pair for its end, a journal buffer and a gated-backends set of
#: its own; 103 and 20.2 KiB while a subagent's steps run had a task of its own and each model
#: turn's attempt one too; 167 and 26 KiB before a turn's run shed its rarely used containers,
#: cycles, finalizers and coroutine levels).
MAX_OBJECTS = 90
MAX_BYTES = 24 * 1024


@shoal.tool
async def fetch(key: str) -> str:
    """Fetch a key."""
    return key


class Parked(shoal.Model):
    """A model whose requests wait until released; says when ``expected`` requests wait."""

    name = "parked"

    def __init__(self, expected: int) -> None:
        self.waiting = 0
        self.expected = expected
        self.go = asyncio.Event()
        self.all_waiting = asyncio.Event()

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_waiting.set()
        await self.go.wait()
        return ModelResponse(text="done", usage=Usage(1, 1, 1))


async def _parked(workers: int, measure: Callable[[], int]) -> tuple[int, bool]:
    """``measure()`` after ``workers`` subagents park on their first request, minus before."""
    model = Parked(workers)
    worker = shoal.Agent(name="worker", model=model, tools=[fetch])
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[call("worker", task=f"job {i}") for i in range(workers)], "report"]))
    gc.collect()
    before = measure()
    handle = lead.start("go")
    await asyncio.wait_for(model.all_waiting.wait(), 60)
    await asyncio.sleep(0.05)  # every request settled into its wait
    gc.collect()
    held = measure() - before
    model.go.set()
    result = await handle
    return held, result.ok and len(result.children) == workers


def _per_idle_subagent(measure: Callable[[], int]) -> float:
    asyncio.run(_parked(5, measure))  # warm-up: first-use imports and caches
    held, ok = asyncio.run(_parked(WORKERS, measure))
    assert ok
    return held / WORKERS


def test_an_idle_subagent_holds_few_objects_for_the_collector() -> None:
    per_agent = _per_idle_subagent(lambda: len(gc.get_objects()))
    assert per_agent <= MAX_OBJECTS, f"{per_agent:.1f} tracked objects per idle subagent"


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.usefixtures("traced")
def test_an_idle_subagent_holds_few_bytes() -> None:
    per_agent = _per_idle_subagent(lambda: tracemalloc.get_traced_memory()[0])
    assert per_agent <= MAX_BYTES, f"{per_agent / 1024:.1f} KiB per idle subagent"


@pytest.mark.usefixtures("collector_paused")
def test_a_swarms_steps_leave_no_cycles_while_the_tree_lives() -> None:
    # what a full pass of the collector would free while the tree still holds its results
    async def swarm(workers: int) -> tuple[shoal.AgentResult[str], ScriptedModel]:
        model = ScriptedModel.per_prompt({"*": [[call("fetch", key="a"), call("fetch", key="b")],
                                                "summary"]})
        worker = shoal.Agent(name="worker", model=model, tools=[fetch])
        lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
            [[call("worker", task=f"job {i}") for i in range(workers)], "report"]))
        return await lead.run("go"), model

    cyclic = []
    # both past the in-memory journal's 100 runs (an agent's steps are one run): it keeps as
    # many runs for either
    for workers in (120, 220):
        kept = asyncio.run(swarm(workers))
        assert kept[0].ok
        cyclic.append(gc.collect())
    # what is left is the tree's own (its runtime, and the last runs its journal keeps), the
    # same for any size of swarm; each step used to leave its graph and builder, its call's
    # node context and its agent run in cycles (160 objects per subagent)
    assert cyclic[1] - cyclic[0] <= 5 * 100, cyclic


@pytest.mark.usefixtures("collector_paused")
def test_an_open_runs_graph_is_freed_without_the_collector() -> None:
    plan = Plan("open")
    plan.call(fetch, key="a")
    graph = analyze(plan).fork()  # grows: it holds a builder
    graph.grow(Plan("more").make_node(fetch, {"key": "b"}, node_id="fetch#2"))
    assert [n.id for n in graph.nodes] == ["fetch#1", "fetch#2"]
    gone = weakref.ref(graph)
    del graph
    assert gone() is None


def test_a_claim_dropped_unreleased_is_let_go_and_one_released_twice_frees_no_other() -> None:
    store = MemoryStore()
    claim = store.claim_run("r")
    with pytest.raises(RunActiveError):
        store.claim_run("r")
    del claim  # a run's task dropped unawaited: its claim goes with it
    again = store.claim_run("r")
    again.release()
    later = store.claim_run("r")
    again.release()  # twice: the later claim stands
    with pytest.raises(RunActiveError):
        store.claim_run("r")
    later.release()
    store.claim_run("r").release()


def test_a_loop_keeps_one_clock_that_follows_its_time() -> None:
    loop = asyncio.new_event_loop()
    try:
        first = clock_of(loop)
        assert clock_of(loop) is first
        loop.time = lambda: 42.0  # type: ignore[method-assign]
        moved = clock_of(loop)
        assert moved is not first and moved.time() == 42.0
    finally:
        loop.close()


def test_a_run_record_updated_is_the_one_replace_makes() -> None:
    record = RunRecord("r", 1.0, 3, "digest", {"nodes": []}, {"path": "p"}, "plan", pid=7,
                       host="h", counts={"ok": 1})
    changes: dict[str, Any] = {"status": "finished", "finished_at": 2.5, "makespan": 1.5,
                               "heartbeat": 9.0}
    assert run_record_with(record, **changes) == replace(record, **changes)
    assert run_record_with(record) == record
    with pytest.raises(TypeError, match="no field 'statuss'"):
        run_record_with(record, statuss="finished")


def test_a_one_node_plans_graph_is_the_one_the_builder_makes() -> None:
    from shoal.deps import _Builder, _topological

    @shoal.tool(writes=["file:{key}"], exclusive=True)
    async def write(key: str) -> str:
        """Write a key."""
        return key

    for tool in (fetch, write):
        plan = Plan("one")
        plan.call(tool, key="a")
        built = _Builder(_topological(plan))
        for i in built.position.values():
            built.data_and_after(i)
            built.footprint(i)
            built.barrier(i)
        graph = analyze(plan)
        assert (graph.nodes, graph.position, graph.preds, graph.succs, graph.extra,
                graph.static_count) == (built.nodes, built.position, built.preds, built.succs,
                                        built.extra, 1)
        assert graph.edges == []
    empty = analyze(Plan("none"))
    assert (empty.nodes, empty.position, empty.preds, empty.static_count) == ([], {}, [], 0)


@shoal.tool
async def awaits(key: str) -> str:
    """Wait a moment, then give the key back."""
    await asyncio.sleep(0)
    return key


def test_a_run_makes_its_at_once_queues_only_with_a_call_that_runs_at_once() -> None:
    # an agent's steps run (every call awaits) holds no empty deques while it goes; a call
    # that ends in its first step, added later, still runs at once
    async def main() -> tuple[bool, bool, list[object]]:
        async with shoal.Runtime().open_run("steps") as run:
            first = run.call(awaits, key="a")
            await run.wait(first)
            driver = run.handle._driver
            before = driver._at_once is None
            second = run.call(fetch, key="b")  # ends in its first step: runs at once
            after = driver._at_once is not None
            values = [await run.value(first), await run.value(second)]
        return before, after, values

    before, after, values = asyncio.run(main())
    assert before and after and values == ["a", "b"]
