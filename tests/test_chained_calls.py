"""A chain of inline async calls: each starts the moment its input ends, as a call of its own.

Each step runs as in a task of its own: a cancel that comes as it is started means its tool
never runs, and it never sees a context variable its input set.
"""

from __future__ import annotations

import asyncio
import contextvars

import shoal
from shoal.events import Event, NodeStarted
from shoal.testing import run_virtual

ran: list[str] = []  # the calls whose tools began, in order


@shoal.tool
async def first(name: str) -> str:
    """Wait a moment (so its task is the loop's, woken), then return."""
    ran.append(name)
    await asyncio.sleep(0.01)
    return name


@shoal.tool
async def then(x: str, name: str) -> str:
    """Note that it began, then wait a moment."""
    ran.append(name)
    await asyncio.sleep(0.01)
    return f"{x}>{name}"


def test_a_chain_runs_in_order_with_each_input() -> None:
    ran.clear()
    plan = shoal.Plan()
    ref = plan.call(first, name="a")
    for name in "bcd":
        ref = plan.call(then, x=ref, name=name)
    result = run_virtual(shoal.run(plan))
    assert result.ok and result[ref].value == "a>b>c>d"
    assert ran == ["a", "b", "c", "d"]
    assert result.makespan == 0.04  # each starts the moment its input ended


def test_a_call_cancelled_as_it_is_started_never_runs() -> None:
    """A sink that cancels the run when ``b`` starts: ``b`` is stopped before its tool runs."""
    ran.clear()
    plan = shoal.Plan()
    a = plan.call(first, name="a", node_id="a")
    b = plan.call(then, x=a, name="b", node_id="b")

    async def go() -> shoal.RunResult:
        runtime = shoal.Runtime(store=None)
        handles: list[shoal.RunHandle] = []

        def cancel_at_b(event: Event) -> None:
            if isinstance(event, NodeStarted) and event.node_id == "b":
                handles[0].cancel()

        async with runtime:
            handles.append(runtime.start(plan, on_event=cancel_at_b))
            return await handles[0]

    result = run_virtual(go())
    assert ran == ["a"]  # b's tool never began
    assert result[a].status == "ok"
    assert result[b].status == "cancelled"


level: contextvars.ContextVar[str] = contextvars.ContextVar("level", default="unset")


@shoal.tool
async def sets_level(name: str) -> str:
    """Set a context variable in its own context, then wait."""
    level.set(name)
    await asyncio.sleep(0.01)
    return name


@shoal.tool
async def reads_level(x: str) -> str:
    """Say what the context variable is where it runs."""
    await asyncio.sleep(0)
    return f"{x}:{level.get()}"


def test_a_call_never_sees_a_context_variable_its_input_set() -> None:
    plan = shoal.Plan()
    a = plan.call(sets_level, name="a")
    b = plan.call(reads_level, x=a)
    c = plan.call(reads_level, x=b)
    result = run_virtual(shoal.run(plan))
    assert result[b].value == "a:unset"  # as in a task of its own: the run's context
    assert result[c].value == "a:unset:unset"
