"""Review of the swarm's cuts to the core (per-loop clocks, adopted backends, freed values).

Each test here failed before its fix: what a cheaper run must still get right when a loop
ends, when a backend is being started by another run, and when a call is abandoned.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import threading
import weakref
from typing import Any

import shoal
from shoal.clock import clock_of
from shoal.deps import analyze
from shoal.executors.base import Call, Executor
from shoal.plan import Plan
from tests.conftest import wait_until


@shoal.tool
async def echo(x: int) -> int:
    """Echo ``x``."""
    return x


def test_a_loop_that_ran_runs_is_not_kept_alive_by_its_clock() -> None:
    # one clock per loop, not per run: but a loop that is closed and dropped must go, with its
    # selector and everything it holds, or a program calling run_sync in a loop keeps them all
    gone: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        try:
            plan = Plan("one")
            plan.call(echo, x=1)
            result = loop.run_until_complete(shoal.run(plan))
            assert result.ok
            assert clock_of(loop) is clock_of(loop)  # still one clock per loop
        finally:
            loop.close()
        gone.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


class _GatedStart(Executor):
    """A backend whose start waits until the test lets it finish; refuses calls before."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = False
        self.refused = 0

    async def start(self) -> None:
        await self.gate.wait()
        self.started = True

    async def execute(self, call: Call) -> Any:
        if not self.started:
            self.refused += 1
            raise RuntimeError("called before its start finished")
        return call.tool.fn(**call.args)


@shoal.tool(isolation="thread")
def on_thread(x: int) -> int:
    """Return ``x``."""
    return x


@shoal.tool(isolation="process")
def in_process(x: int) -> int:
    """Return ``x``."""
    return x


async def _a_backend_being_started_elsewhere() -> tuple[list[str], int]:
    thread, process = _GatedStart(), _GatedStart()
    runtime = shoal.Runtime(executors={"thread": thread, "process": process}, store=None)
    first = runtime.open_run("first")  # started with no backend at all
    await asyncio.sleep(0.01)
    runtime.executor_for("thread")  # now the runtime has one: the next run starts it
    second = runtime.open_run("second")
    await asyncio.sleep(0.01)  # the second run waits in the thread backend's start
    first.call(in_process, x=1)  # the first run makes the process backend and starts it
    await asyncio.sleep(0.01)
    thread.gate.set()  # the second run's own start is done; the process backend's is not
    await asyncio.sleep(0.01)
    second.call(in_process, x=2)  # must wait for that start, not run on a backend not started
    await asyncio.sleep(0.01)
    process.gate.set()
    first.close()
    second.close()
    results = [await first.handle, await second.handle]
    await runtime.aclose()
    return [o.status for r in results for o in r.outcomes.values()], process.refused


def test_a_run_does_not_adopt_a_backend_that_another_run_is_still_starting() -> None:
    statuses, refused = asyncio.run(_a_backend_being_started_elsewhere())
    assert statuses == ["ok", "ok"]
    assert refused == 0


class _Abandoning(Executor):
    """Like the thread backend: the work reads the call's arguments when a thread takes it
    up, and a cancelled call whose thread runs is abandoned, not stopped."""

    name = "abandoning"

    def __init__(self) -> None:
        self.go = threading.Event()
        self.seen: list[object] = []
        self.threads: list[threading.Thread] = []

    async def execute(self, call: Call) -> Any:
        args, fn = call.args, call.tool.fn

        def work() -> None:
            self.go.wait(10)
            try:
                self.seen.append(fn(**args))
            except Exception as exc:
                self.seen.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        self.threads.append(thread)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            call.abandoned = True  # the thread runs on; it still has the call's arguments
            raise


@shoal.tool(isolation="thread", timeout=0.05)
def charge(amount: int, key: shoal.IdempotencyKey) -> str:
    """Charge ``amount`` once, by ``key``."""
    return f"{amount} {key}"


def test_an_abandoned_attempt_keeps_its_injected_values() -> None:
    backend = _Abandoning()

    async def main() -> shoal.RunResult:
        async with shoal.Runtime(executors={"thread": backend}) as runtime:
            plan = Plan("pay")
            plan.call(charge, amount=5)
            return await runtime.run(plan)

    result = asyncio.run(main())
    outcome = result.outcomes["charge#1"]
    assert outcome.status == "timed_out" and outcome.abandoned
    backend.go.set()
    for thread in backend.threads:
        thread.join(10)
    assert len(backend.seen) == 1
    assert isinstance(backend.seen[0], str) and backend.seen[0].startswith("5 "), backend.seen


@shoal.tool(isolation="thread")
def doubled(x: int) -> int:
    """Return ``2 * x``."""
    return 2 * x


def test_a_runtime_used_on_several_loops_keeps_none_of_them_alive() -> None:
    # the same class of leak as the clock's: the thread backend's per-loop table must not
    # keep a loop that is closed and dropped, while the runtime (and so the backend) lives on
    runtime = shoal.Runtime(store=None)
    gone: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    for i in range(2):
        loop = asyncio.new_event_loop()
        try:
            plan = Plan("thread")
            plan.call(doubled, x=i)
            assert loop.run_until_complete(runtime.run(plan)).ok
        finally:
            loop.close()
        gone.append(weakref.ref(loop))
        del loop

    def all_gone() -> bool:  # a pool thread may still be returning from handing a result over
        gc.collect()
        return all(ref() is None for ref in gone)

    assert wait_until(all_gone, 10), [ref() for ref in gone]
    asyncio.run(runtime.aclose())


def test_a_deep_copied_graph_grows_itself_not_the_original() -> None:
    # the builder holds its graph weakly, and copy.deepcopy copies a weak reference as is:
    # the copy's builder must still keep the copy's edge list current, not the original's
    plan = Plan("open")
    plan.call(echo, x=1)
    graph = analyze(plan).fork()
    graph.grow(Plan("more").make_node(echo, {"x": 2}, node_id="echo#2", after="echo#1"))
    assert len(graph.edges) == 1  # listed: kept current from here on
    twin = copy.deepcopy(graph)
    twin.grow(Plan("more").make_node(echo, {"x": 3}, node_id="echo#3", after="echo#2"))
    assert [(e.source, e.target) for e in twin.edges] == [("echo#1", "echo#2"),
                                                          ("echo#2", "echo#3")]
    assert [(e.source, e.target) for e in graph.edges] == [("echo#1", "echo#2")]
