"""Limits hold exactly when one runtime serves several threads at once.

Each thread runs ``run_sync`` on a loop of its own; the runs share the runtime's gates (a tool's
``max_concurrency``, its ``rate``, the cap on workers). The threads are switched as often as
the interpreter allows (``sys.setswitchinterval``), so a check-then-take on a gate that is not
atomic across threads shows up within a few rounds: more calls in flight than the cap, a gate
created twice (each run then counts against its own), a slot lost for good (a later run waits
forever), or a run that waits on a gate another thread freed and never hears of it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shoal
from shoal import Plan, RunResult
from shoal.deps import analyze
from shoal.events import Event, NodeQueued
from shoal.limits import ConcurrencyLimit, Rate, RateLimiter
from shoal.scheduler.gates import Gates, SharedLimits
from shoal.scheduler.state import AttemptResult, Decisions, SchedulerState
from tests.conftest import Gauge

ROUNDS = 20
THREADS = 4
CALLS = 24  # per thread and round
JOIN = 120.0  # per round: far above what a healthy round needs (well under a second)

inside = Gauge()  # how many calls of the gated tools are inside at once, across threads


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """Switch threads every microsecond, not every 5 ms: races get a chance to show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    inside.now = inside.peak = inside.total = 0
    yield
    sys.setswitchinterval(before)


@shoal.tool(max_concurrency=3, isolation="thread")
def capped_sync(i: int) -> int:
    """A sync call on the thread pool that stays inside for a moment."""
    with inside:
        time.sleep(0.0005)
    return i


@shoal.tool(max_concurrency=3, isolation="inline")
async def capped_async(i: int) -> int:
    """An async call inline on its run's loop that suspends once inside."""
    with inside:
        await asyncio.sleep(0)
    return i


def run_threads(runtime: shoal.Runtime, make: Callable[[int], Plan],
                threads: int = THREADS) -> list[RunResult]:
    """``run_sync`` one plan per thread, all started at once; fail on a run that hangs."""
    start = threading.Barrier(threads, timeout=JOIN)
    results: dict[int, RunResult] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        plan = make(k)
        start.wait()
        try:
            results[k] = runtime.run_sync(plan)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN)
        assert not worker.is_alive(), "a run hung: a wake-up between threads was lost"
    assert not errors, errors
    return [results[k] for k in range(threads)]


def calls_of(tool: shoal.Tool[..., Any]) -> Callable[[int], Plan]:
    def make(k: int) -> Plan:
        plan = Plan(f"plan-{k}")
        for i in range(CALLS):
            plan.add(tool, {"i": 100 * k + i}, node_id=f"c-{i}")
        return plan

    return make


def assert_all_ok(results: list[RunResult]) -> None:
    for k, result in enumerate(results):
        assert result.counts["ok"] == CALLS, (result.cancelled_reason, result.counts)
        assert [result[f"c-{i}"].value for i in range(CALLS)] == [100 * k + i
                                                                for i in range(CALLS)]


def assert_all_given_back(runtime: shoal.Runtime) -> None:
    """Every slot taken was given back: none was lost to an update made from two threads."""
    shared = runtime._limits
    gates = [*shared.tool_limits.values(), *shared.key_limits.values(),
             *shared.executor_limits.values()]
    assert [(gate.name, gate.in_use) for gate in gates if gate.in_use] == []


@pytest.mark.parametrize("tool", [capped_sync, capped_async], ids=["thread", "inline"])
def test_max_concurrency_holds_across_threads_sharing_a_runtime(
        tool: shoal.Tool[..., Any]) -> None:
    for _ in range(ROUNDS):
        runtime = shoal.Runtime(store=None)
        assert_all_ok(run_threads(runtime, calls_of(tool)))
        assert_all_given_back(runtime)
    assert inside.total == ROUNDS * THREADS * CALLS
    assert inside.peak <= 3, f"{inside.peak} calls of a max_concurrency=3 tool ran at once"


@pytest.mark.parametrize("tool", [capped_sync, capped_async], ids=["thread", "inline"])
def test_the_gates_of_one_runtime_stay_exact_over_many_runs_from_threads(
        tool: shoal.Tool[..., Any]) -> None:
    """One runtime for every round: a slot lost in one round would hold up the next ones."""
    runtime = shoal.Runtime(store=None)
    for _ in range(ROUNDS):
        assert_all_ok(run_threads(runtime, calls_of(tool)))
        assert_all_given_back(runtime)
    assert inside.peak <= 3, f"{inside.peak} calls of a max_concurrency=3 tool ran at once"


@shoal.tool(isolation="thread", writes=["slot:one"])
def keyed(i: int) -> int:
    """A sync call that writes one resource key."""
    with inside:
        time.sleep(0.0005)
    return i


def test_a_resource_limit_and_the_worker_cap_hold_across_threads() -> None:
    """Several gates on one call (a resource key, the thread pool's cap): each stays exact."""
    for _ in range(ROUNDS // 2):
        runtime = shoal.Runtime(store=None, thread_workers=2,
                                resource_limits={"slot:*": 3})
        assert_all_ok(run_threads(runtime, calls_of(keyed)))
        assert_all_given_back(runtime)
    assert inside.peak <= 2, f"{inside.peak} calls ran at once on a pool of 2 threads"


starts: list[float] = []
starts_lock = threading.Lock()


@shoal.tool(rate="5/s", isolation="inline")
async def rated(i: int) -> int:
    """An inline call whose starts are limited to 5 a second (a bucket of 5)."""
    with starts_lock:
        starts.append(time.monotonic())
    return i


def test_a_rate_holds_across_threads_sharing_a_runtime() -> None:
    """The token bucket is the runtime's: 4 threads share 5 starts a second between them.

    Real time (each loop has its own clock; the virtual one serves one loop), so few calls and
    wide margins: 4 x 4 calls need at least (16 - 5) / 5 = 2.2 s; in any 1 s window, at most
    5 starts plus 5 refilled, never the 4 x 5 that separate buckets would allow.
    """
    starts.clear()
    runtime = shoal.Runtime(store=None)

    def make(k: int) -> Plan:
        plan = Plan(f"rated-{k}")
        for i in range(4):
            plan.add(rated, {"i": i}, node_id=f"r-{i}")
        return plan

    began = time.monotonic()
    results = run_threads(runtime, make)
    took = time.monotonic() - began
    assert all(result.counts["ok"] == 4 for result in results)
    assert len(starts) == 16
    assert took >= 2.0, f"16 starts at 5/s took {took:.2f} s: the bucket was not shared"
    stamps = sorted(starts)
    densest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert densest <= 10, f"{densest} starts within one second at a rate of 5/s"


holding = threading.Event()  # the call holding the gate has started
let_go = threading.Event()  # lets it end


@shoal.tool(max_concurrency=1, isolation="inline")
async def one_at_a_time(hold: bool) -> str:
    """One call at a time across the runtime; ``hold`` keeps the gate until ``let_go``."""
    if hold:
        holding.set()
        await asyncio.to_thread(let_go.wait, JOIN)
    return "done"


def test_a_gate_freed_on_another_thread_just_before_the_run_waiting_on_it_asks_to_hear() -> None:
    """Run B finds the gate full and parks its node; before B's driver asks to be told when
    the gate frees (it does so once the decision is carried out), run A, on another thread,
    frees it and tells everyone it knows waits: not B. B must look again itself, or it waits
    for a release that never comes. B's event sink, which runs between the two, holds B there.
    """
    holding.clear()
    let_go.clear()
    runtime = shoal.Runtime(store=None)
    b_parked, a_ended = threading.Event(), threading.Event()

    def hold_b_there(event: Event) -> None:
        if isinstance(event, NodeQueued) and not b_parked.is_set():
            b_parked.set()  # B's node is parked on the gate by now (the same decision)
            assert a_ended.wait(JOIN)

    def one(hold: bool) -> Plan:
        plan = Plan(f"hold-{hold}")
        plan.add(one_at_a_time, {"hold": hold}, node_id="one")
        return plan

    results: dict[str, RunResult] = {}
    run_a = threading.Thread(target=lambda: results.update(a=runtime.run_sync(one(True))),
                             daemon=True)
    run_b = threading.Thread(
        target=lambda: results.update(b=runtime.run_sync(one(False), on_event=hold_b_there)),
        daemon=True)
    try:
        run_a.start()
        assert holding.wait(JOIN)
        run_b.start()
        assert b_parked.wait(JOIN)
        let_go.set()
        run_a.join(JOIN)
        assert not run_a.is_alive()
    finally:
        let_go.set()
        a_ended.set()  # B goes on: it asks to hear of the gate only now
    run_b.join(10.0)
    assert not run_b.is_alive(), "run B waits on a gate nobody holds: its wake-up was lost"
    assert results["a"].counts["ok"] == 1 and results["b"].counts["ok"] == 1


# ---- the state machines of several runs, each driven on a thread of its own ----------------
# No loop, no backend: each thread starts what its run's state machine starts and ends it at
# once, as fast as it can, so the threads check and take the shared gates all the time.

STATE_CALLS = 1000


def drive(state: SchedulerState, in_flight: Gauge, began: float) -> None:
    """Run ``state`` to its end on this thread: each started call ends right away.

    A node parked on a gate that another thread's run holds is looked at again (what the
    driver does when told that the gate freed up).
    """
    running: deque[int] = deque()
    waits_on: list[object] = []

    def started(d: Decisions) -> None:
        for call in d.starts:
            in_flight.__enter__()
            running.append(call.pos)
        waits_on.extend(d.parked)

    started(state.begin(0.0))
    while not state.finished:
        assert time.monotonic() - began < JOIN, "a run stalled: a slot of its gate was lost"
        if running:
            pos = running.popleft()
            in_flight.__exit__()
            started(state.finish(pos, AttemptResult("ok", pos), 1.0))
        else:
            started(state.wake_gate(waits_on[-1], 1.0))


def gate_of(shared: SharedLimits) -> ConcurrencyLimit:
    (gate,) = shared.tool_limits.values()
    return gate


def run_states(tool: shoal.Tool[..., Any], args: dict[str, Any], shared: SharedLimits,
               in_flight: Gauge, threads: int) -> list[SchedulerState]:
    plan = Plan("stress")
    for i in range(STATE_CALLS):
        plan.add(tool, args, node_id=f"c-{i}")
    states = [SchedulerState(analyze(plan), run_id=f"run-{k}", max_concurrency=None,
                             shared_limits=shared) for k in range(threads)]
    start = threading.Barrier(threads, timeout=JOIN)
    errors: list[BaseException] = []

    def run(state: SchedulerState) -> None:
        start.wait()
        try:
            drive(state, in_flight, time.monotonic())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(state,), daemon=True) for state in states]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN + 10.0)
        assert not worker.is_alive()
    assert not errors, errors
    return states


@pytest.mark.parametrize(("tool", "args", "cap", "threads"),
                         [(one_at_a_time, {"hold": False}, 1, 2), (capped_async, {"i": 0}, 3, 4)],
                         ids=["1-of-2", "3-of-4"])
def test_runs_on_several_threads_never_check_and_take_a_gate_past_its_capacity(
        tool: shoal.Tool[..., Any], args: dict[str, Any], cap: int, threads: int) -> None:
    in_flight = Gauge()
    for _ in range(ROUNDS):
        shared = SharedLimits()
        Gates(shared=shared).for_call(tool, "inline", {})  # made before (see the next test)
        states = run_states(tool, args, shared, in_flight, threads)
        assert all(state.done_count == STATE_CALLS for state in states)
        assert gate_of(shared).in_use == 0  # every slot taken was given back
    assert in_flight.total == ROUNDS * threads * STATE_CALLS
    assert in_flight.peak <= cap, f"{in_flight.peak} calls of a max_concurrency={cap} tool ran"


def gated_tools(count: int) -> list[shoal.Tool[..., Any]]:
    """``count`` tools, each of a name, a resource key and a rate of its own."""
    async def fn(i: int) -> int:
        return i

    return [shoal.tool(fn, name=f"gated_{k}", max_concurrency=3, rate="5/s",
                       writes=[f"key:{k}"]) for k in range(count)]


def test_the_gates_first_used_by_several_threads_at_once_are_made_once() -> None:
    """Two runs that each made their own gate for a tool would each allow 3 of its calls (and
    their own rate limiter, their own limit per resource key).

    Each thread's run uses many tools for the first time, in the same order as the others, so
    the threads often make the same tool's gates at the same moment.
    """
    tools = gated_tools(200)
    for _ in range(ROUNDS):
        shared = SharedLimits()
        made: list[list[object]] = [[] for _ in range(THREADS)]
        start = threading.Barrier(THREADS, timeout=JOIN)

        def first_use(found: list[object], shared: SharedLimits = shared,
                      start: threading.Barrier = start) -> None:
            gates = Gates({"key:*": 2}, shared=shared)  # a run of this runtime
            start.wait()
            for tool in tools:
                found.extend(gates.for_call(tool, "inline", {}))
                found.append(gates.rate_for(tool))

        workers = [threading.Thread(target=first_use, args=(found,), daemon=True)
                   for found in made]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(JOIN)
            assert not worker.is_alive()
        assert [len(found) for found in made] == [3 * len(tools)] * THREADS
        twice = [getattr(gates[0], "name", "") for gates in zip(*made, strict=True)
                 if len({id(gate) for gate in gates}) != 1]
        assert not twice, f"made more than once: {twice}"


@shoal.tool(rate="200/h", isolation="inline")
async def rated_hourly(i: int) -> int:
    """A call whose starts are limited to 200 an hour (a bucket of 200)."""
    return i


def spend(state: SchedulerState) -> int:
    """Start and end what ``state`` starts at a moment that never passes; how many started.

    The bucket is never refilled, so what all the runs start together is exactly its size.
    """
    running = deque(call.pos for call in state.begin(0.0).starts)
    count = len(running)
    while running:
        for call in state.finish(running.popleft(), AttemptResult("ok", 0), 0.0).starts:
            running.append(call.pos)
            count += 1
    return count


def test_runs_on_several_threads_spend_each_token_of_a_shared_rate_once() -> None:
    plan = Plan("rated")
    for i in range(STATE_CALLS):
        plan.add(rated_hourly, {"i": i}, node_id=f"r-{i}")
    for _ in range(ROUNDS):
        shared = SharedLimits()
        Gates(shared=shared).rate_for(rated_hourly)  # made before (see the test above)
        states = [SchedulerState(analyze(plan), run_id=f"run-{k}", max_concurrency=None,
                                 shared_limits=shared) for k in range(THREADS)]
        counts: list[int] = []
        start = threading.Barrier(THREADS, timeout=JOIN)

        def run(state: SchedulerState, start: threading.Barrier = start,
                counts: list[int] = counts) -> None:
            start.wait()
            counts.append(spend(state))

        workers = [threading.Thread(target=run, args=(state,), daemon=True) for state in states]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(JOIN)
            assert not worker.is_alive()
        assert sum(counts) == 200, f"{sum(counts)} starts from a bucket of 200 ({counts})"


def test_a_rate_limiter_read_with_an_older_time_than_another_runs_keeps_its_tokens() -> None:
    """Each run reads its ``now`` before it takes the lock, so a run on another thread may have
    refilled the bucket at a later time meanwhile: the older time must not take tokens back."""
    limiter = RateLimiter("tool t", Rate(2, 1.0))
    assert limiter.wait_time(0.0) == 0.0
    limiter.take(0.0)
    limiter.take(0.0)  # empty at 0.0
    assert limiter.wait_time(10.0) == 0.0  # full again (2 tokens) at 10.0: another run's look
    assert limiter.wait_time(9.0) == 0.0  # a run that read 9.0 before that look: still full
    limiter.take(9.0)
    limiter.take(9.0)
    assert limiter.wait_time(10.0) == pytest.approx(0.5)  # both spent; the next in 0.5 s
