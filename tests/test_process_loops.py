"""One ``ProcessExecutor`` serving several event loops at once (threads, each with a loop).

A worker's pipes, and the template's socket, belong to the loop that opened them, so each loop
gets workers (and a template) of its own: a call's result reaches its own loop, a loop that
starts using the pool leaves the other loops' workers alone, the cap on workers holds across
loops, and ``close()`` ends them all, whichever loop it runs on.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest

import shoal
from shoal import Plan, RunResult
from shoal.executors import process
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from tests import process_tools as pt
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

METHODS = ["template", "spawn"]


def a_call(target: Any, **args: Any) -> Call:
    return Call(0, "node", target, args, 1, "process", None, "run")


async def run_call(executor: ProcessExecutor, target: Any, **args: Any) -> Any:
    call = a_call(target, **args)
    await executor.prepare(call)
    return await executor.execute(call)


def on_threads(*sessions: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run each session on a thread and event loop of its own, all at once; their results."""
    results: list[Any] = [None] * len(sessions)
    errors: list[BaseException] = []

    def main(index: int) -> None:
        try:
            results[index] = asyncio.run(sessions[index]())  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(i,), daemon=True)
               for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    return results


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("method", METHODS)
def test_two_loops_at_once_each_keep_their_workers_and_get_their_own_results(
        method: str) -> None:
    executor = ProcessExecutor(8, start_method=method)
    both_going = threading.Barrier(2, timeout=60.0)

    def session(k: int) -> Callable[[], Awaitable[list[int]]]:
        async def go() -> list[int]:
            first = await asyncio.gather(*(run_call(executor, pt.item_pid, item=i)
                                           for i in range(2)))
            await asyncio.to_thread(both_going.wait)  # the other loop has its workers too
            values = []
            for round_ in range(5):
                xs = [100 * k + 10 * round_ + i for i in range(3)]
                values += await asyncio.gather(*(run_call(executor, pt.square, x=x)
                                                 for x in xs))
                assert values[-3:] == [x * x for x in xs]
            assert all(alive(pid) for pid in first), "a worker of this loop was dropped"
            await asyncio.to_thread(both_going.wait)  # neither loop leaves under the other
            await executor.leave()
            # killed: a tool's pid is not always the worker's own (a spawned worker runs
            # tools below a stand-in), and a killed process takes a moment to end
            gone = await asyncio.to_thread(
                wait_until, lambda: not any(alive(pid) for pid in first), timeout=5.0)
            assert gone, "this loop's workers outlived leave()"
            return values

        return go

    first, second = on_threads(session(1), session(2))
    assert first == [(100 + 10 * r + i) ** 2 for r in range(5) for i in range(3)]
    assert second == [(200 + 10 * r + i) ** 2 for r in range(5) for i in range(3)]
    assert executor.workers_crashed == 0
    assert executor.worker_pids == []
    assert executor.template_pid is None


@pytest.mark.parametrize("method", METHODS)
def test_the_cap_holds_across_loops_an_idle_worker_of_another_loop_makes_room(
        method: str) -> None:
    executor = ProcessExecutor(2, start_method=method)
    held = threading.Event()
    done = threading.Event()
    holders: list[int] = []

    async def holder() -> None:
        holders.extend(await asyncio.gather(*(run_call(executor, pt.item_pid, item=i)
                                              for i in range(2))))
        held.set()  # two idle workers of this loop: the pool is full
        await asyncio.to_thread(done.wait, 60.0)  # this loop runs on, idle
        await executor.leave()

    async def newcomer() -> tuple[int, int]:
        await asyncio.to_thread(held.wait, 60.0)
        try:
            value = int(await asyncio.wait_for(run_call(executor, pt.square, x=7), 60.0))
            assert len(executor.worker_pids) <= 2
            return value, sum(alive(pid) for pid in holders)
        finally:
            done.set()
            await executor.leave()

    _, (value, holders_alive) = on_threads(holder, newcomer)
    assert value == 49
    assert holders_alive == 1  # one of the holder's idle workers made room
    # the one killed to make room was killed from the other loop, which does not wait for
    # its exit: on a loaded machine it may take a moment to be gone
    assert wait_until(lambda: not any(alive(pid) for pid in holders), timeout=30.0)
    assert executor.worker_pids == []


@pytest.mark.parametrize("method", METHODS)
def test_close_on_one_loop_ends_the_workers_of_another_loop_still_running(method: str) -> None:
    executor = ProcessExecutor(4, start_method=method)
    ready = threading.Event()
    closed = threading.Event()
    other: list[int] = []

    async def keeper() -> bool:
        other.extend(await asyncio.gather(*(run_call(executor, pt.item_pid, item=i)
                                            for i in range(2))))
        ready.set()
        await asyncio.to_thread(closed.wait, 60.0)
        # the pool can start afresh on this loop after close()
        again = int(await run_call(executor, pt.square, x=3)) == 9
        await executor.leave()
        return again

    async def closer() -> list[int]:
        await asyncio.to_thread(ready.wait, 60.0)
        mine = [int(await run_call(executor, pt.pid))]
        await executor.close()
        closed.set()
        await executor.leave()  # nothing left here: a no-op
        return mine

    again, mine = on_threads(keeper, closer)
    assert again
    assert not any(alive(pid) for pid in [*other, *mine])
    asyncio.run(executor.close())
    assert executor.worker_pids == []


@shoal.tool(isolation="process")
def slow_square(x: int) -> int:
    import time

    time.sleep(0.05)
    return x * x


@shoal.tool(isolation="thread")
def slow_square_here(x: int) -> int:
    import time

    time.sleep(0.05)
    return x * x


@pytest.mark.parametrize("target", [slow_square, slow_square_here], ids=["process", "thread"])
def test_run_sync_from_two_threads_at_once_sharing_the_worker_cap(target: Any) -> None:
    """The runs share the cap on workers (a gate of the runtime): one freeing a place wakes
    the other's loop, another thread's, which would otherwise sleep on."""
    runtime = shoal.Runtime(store=None, process_workers=2, thread_workers=2)
    both_started = threading.Barrier(2, timeout=60.0)

    def run(k: int) -> RunResult:
        plan = Plan(f"plan-{k}")
        for i in range(6):
            plan.add(target, {"x": 10 * k + i}, node_id=f"sq-{i}")
        both_started.wait()
        return runtime.run_sync(plan)

    results: dict[int, RunResult] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: run(k)}), daemon=True)
               for k in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
        assert not thread.is_alive()
    for k, result in results.items():
        assert result.counts["ok"] == 6, [o.error for o in result.outcomes.values()]
        assert [result[f"sq-{i}"].value for i in range(6)] == [(10 * k + i) ** 2
                                                            for i in range(6)]
    assert sorted(results) == [1, 2]


# The first loop closes with its worker idle; asyncio then warns about that worker's transports
# (as test_process.py's test_a_runtime_used_on_two_event_loops_starts_new_workers says).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_that_ends_without_leaving_has_its_workers_ended_by_another() -> None:
    executor = ProcessExecutor(1)

    async def first() -> int:
        return int(await run_call(executor, pt.pid))

    pid = asyncio.run(first())  # the loop closes with its worker idle
    assert alive(pid)

    async def second() -> int:
        try:
            return int(await run_call(executor, pt.square, x=4))  # the cap is 1: room made
        finally:
            await executor.close()

    assert asyncio.run(second()) == 16
    assert wait_until(lambda: not alive(pid), timeout=5.0)
    gc.collect()  # the warnings about the first loop's transports stay with this test


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_that_started_while_its_loop_left_is_still_ended_by_close(method: str) -> None:
    executor = ProcessExecutor(2, start_method=method)

    async def main() -> list[int]:
        call = a_call(pt.pid)
        preparing = asyncio.ensure_future(executor.prepare(call))
        await asyncio.sleep(0)  # the start is under way
        await executor.leave()
        try:
            await preparing
            await executor.execute(call)
        except Exception:  # the template was stopped under the start: no worker came of it
            return []
        workers = executor.worker_pids
        try:
            assert len(workers) == 1  # in the books, not lost
        finally:
            await executor.close()
        assert executor.worker_pids == []
        return workers

    workers = asyncio.run(main())
    assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=5.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_lane_closed_twice_at_once_reaps_each_worker_once(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a run_sync ending on one thread closes the pool, which closes another thread's lane on
    # that lane's loop while the lane's own run_sync leaves it: two reaps of one worker, the
    # second waiting on a status pipe the first had closed (ValueError: Invalid file
    # descriptor: -1, out of the other thread's run_sync; seen in CI). Two waits on one
    # status pipe: the second reader took the first's place, which then waited out the grace
    monkeypatch.setattr(process, "_REAP_GRACE", 120.0)
    executor = ProcessExecutor(4, start_method=method)

    async def go() -> list[int]:
        pids = await asyncio.gather(*(run_call(executor, pt.item_pid, item=i)
                                      for i in range(2)))
        lane = executor._lanes[asyncio.get_running_loop()]
        await asyncio.wait_for(asyncio.gather(executor._close_lane(lane),
                                              executor._close_lane(lane)), 30)
        return pids

    pids = asyncio.run(go())
    # each worker ends: killed and reaped once. (One was seen, in about one run in five
    # beside test_process.py, still exiting for a moment after the close returned: no command
    # line, its parent init, gone within a second; not understood yet, see the s33 note)
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 10.0), pids
    assert executor.workers_crashed == 0


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_evicted_for_another_loop_as_its_own_loop_leaves_is_ended_once(
        method: str) -> None:
    # Another loop asks this one (call_soon_threadsafe) to stop an idle worker to make room
    # for its own; the request runs after this loop's leave() chose its workers to reap and
    # before the reaping started. The evicted worker's pipes were closed under the reaping,
    # which then waited on them: ValueError "Invalid file descriptor: -1" out of run_sync
    # (two threads' run_sync sharing a cap, about one run in 50).
    executor = ProcessExecutor(2, start_method=method)

    async def go() -> int:
        pid = int(await run_call(executor, pt.pid))
        lane = executor._lanes[asyncio.get_running_loop()]
        # queued now, so it runs before the tasks leave() starts to reap with
        asyncio.get_running_loop().call_soon(executor._evict, lane)
        await executor.leave()  # (not in a task of its own, which would start after it)
        return pid

    pid = asyncio.run(go())
    assert wait_until(lambda: not alive(pid), 10.0), pid
    assert executor.workers_crashed == 0
