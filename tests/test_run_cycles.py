"""A finished run is freed by reference counting, not left to the garbage collector.

With the collector off, once the caller drops a run's result, the run's runtime, store,
results and agent tree must already be gone: a reference cycle among them would keep the
whole run (every outcome, every journal record) until the collector's next full pass, which
in a swarm of agents is a large share of its CPU time.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest

import shoal
from shoal.agents.context import TreeContext
from shoal.patterns import pipeline
from shoal.store.memory import MemoryStore
from shoal.testing import ScriptedModel, call


@shoal.tool
async def fetch(key: str) -> str:
    """Return a value for ``key``."""
    return f"value of {key}"


@shoal.tool
async def double(x: int) -> int:
    """Double ``x`` (on the loop: a thread pool's idle worker may hold its last call a moment
    after the run, which would make the assertions below racy)."""
    return 2 * x


def _plan() -> tuple[shoal.Plan, shoal.Ref]:
    plan = shoal.Plan()
    first = plan.call(fetch, key="a")
    plan.call(double, x=2, after=first)
    return plan, first


def test_a_plan_run_and_its_memory_store_are_freed_without_the_collector(
        collector_paused: None) -> None:
    plan, first = _plan()
    runtime = shoal.Runtime()  # the default journal: a MemoryStore
    store = runtime.store
    assert isinstance(store, MemoryStore)
    result = runtime.run_sync(plan)
    assert result[first].value == "value of a"
    refs: list[weakref.ref[object]] = [weakref.ref(runtime), weakref.ref(store),
                                       weakref.ref(result)]
    del runtime, store, result
    assert [ref() for ref in refs] == [None, None, None]


LOOPS: list[weakref.ref[asyncio.AbstractEventLoop]] = []


@shoal.tool
async def note_loop() -> str:
    """Note the loop the call runs on."""
    LOOPS.append(weakref.ref(asyncio.get_running_loop()))
    return "noted"


def test_shoal_run_sync_frees_its_run_and_its_loop_without_the_collector(
        collector_paused: None) -> None:
    LOOPS.clear()
    plan = shoal.Plan()  # calls on the loop only: a thread pool's idle worker may still hold
    plan.call(note_loop, after=plan.call(fetch, key="a"))  # its last call's loop a moment
    result = shoal.run_sync(plan)
    assert result.ok and len(LOOPS) == 1
    ref = weakref.ref(result)
    del result
    assert ref() is None
    assert LOOPS[0]() is None  # the loop run_sync made, with the clock the run kept on it


def test_agent_run_sync_frees_its_loop_without_the_collector(collector_paused: None) -> None:
    LOOPS.clear()
    agent = shoal.Agent(name="a", tools=[note_loop],
                        model=ScriptedModel([[call("note_loop")], "done"]))
    agent.tool_specs  # noqa: B018  # made once per agent, not per run
    assert agent.run_sync("go").output == "done"
    assert len(LOOPS) == 1 and LOOPS[0]() is None


def _tree() -> shoal.Agent:
    worker = shoal.Agent(name="worker", tools=[fetch], model=ScriptedModel.per_prompt(
        {"*": [[call("fetch", key="k1"), call("fetch", key="k2")], "worker summary"]}))
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[call("worker", task="job 1"), call("worker", task="job 2")], "report"]))
    lead.tool_specs  # noqa: B018  # made once per agent (pydantic's schema), not per run
    worker.tool_specs  # noqa: B018
    return lead


def _tree_refs(handle: shoal.AgentHandle[str], result: shoal.AgentResult[str]
               ) -> list[weakref.ref[object]]:
    ctx = handle._ctx
    assert isinstance(ctx, TreeContext)
    assert isinstance(ctx.runtime.store, MemoryStore)
    # (results are slotted, with no weak references: the tree holds every one of them)
    assert ctx.results[result.lineage] is result
    objects: list[object] = [ctx, ctx.tracker, ctx.runtime, ctx.runtime.store]
    return [weakref.ref(o) for o in objects]


def _assert_freed(tree_run: Coroutine[Any, Any, list[weakref.ref[object]]]) -> None:
    """Run ``tree_run`` on a loop of its own, closed only after the check: what the weak
    references it returns name must be freed already, without the collector."""
    loop = asyncio.new_event_loop()
    try:
        refs = loop.run_until_complete(tree_run)
        alive = [ref() for ref in refs]
        assert alive == [None] * len(refs), [type(o).__name__ for o in alive if o is not None]
    finally:
        loop.close()


def test_an_agent_tree_with_subagents_is_freed_without_the_collector(
        collector_paused: None) -> None:
    lead = _tree()

    async def main() -> list[weakref.ref[object]]:
        handle = lead.start("go", budget=shoal.Budget(requests=10))
        result = await handle
        assert result.output == "report" and len(result.children) == 2
        assert all(child.ok and len(child.calls) == 2 for child in result.children)
        return _tree_refs(handle, result)

    _assert_freed(main())


def test_a_budget_breach_still_stops_the_tree() -> None:
    # the tracker reaches its tree through a weak reference now: it must still stop it
    lead = _tree()
    with pytest.raises(shoal.BudgetExceeded) as caught:
        asyncio.run(lead.run("go", budget=shoal.Budget(requests=2)))
    assert caught.value.limit == "requests"


def test_an_agent_with_a_pattern_among_its_tools_is_freed_without_the_collector(
        collector_paused: None) -> None:
    writer = shoal.Agent(name="writer", model=ScriptedModel.per_prompt({"*": ["a draft"]}))
    tools: list[Any] = [pipeline(writer, name="drafting")]  # a pattern is a tool here
    lead = shoal.Agent(name="lead", tools=tools,
                       model=ScriptedModel([[call("drafting", task="write")], "report"]))
    lead.tool_specs  # noqa: B018  # made once per agent, not per run

    async def main() -> list[weakref.ref[object]]:
        handle = lead.start("go")
        result = await handle
        assert result.output == "report" and result.calls[0].status == "ok"
        return _tree_refs(handle, result)

    _assert_freed(main())


def test_a_run_on_the_callers_own_loop_frees_that_loop_without_the_collector(
        collector_paused: None) -> None:
    """The clock shoal keeps for a loop must not hold the loop in a cycle with it."""
    LOOPS.clear()

    async def main() -> bool:
        plan = shoal.Plan()
        plan.call(note_loop, after=plan.call(fetch, key="a"))
        runtime = shoal.Runtime()
        try:
            return (await runtime.run(plan)).ok
        finally:
            await runtime.aclose()

    assert asyncio.run(main())  # the caller's loop: shoal's *_sync entry points are not used
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main())
    finally:
        loop.close()
    del loop
    assert len(LOOPS) == 2 and [ref() for ref in LOOPS] == [None, None]
