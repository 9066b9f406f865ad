"""``Runtime.aclose()`` ends the runs of every event loop using the runtime, not only its own.

A runtime shared by threads (each with ``run_sync``, or a loop of its own) has runs on several
loops at once. Closing it from one thread cancels the others' runs on their own loops, waits
for them while those loops run, and never hangs on a loop that is blocked or stopped.
"""

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal import Plan, RunResult
from shoal.runtime import CLOSED_REASON
from tests import process_tools as pt
from tests.conftest import until, wait_until

going = threading.Event()  # a held tool has started
release = threading.Event()  # lets a held thread tool end


@pytest.fixture(autouse=True)
def _events() -> Any:
    going.clear()
    release.clear()
    yield
    release.set()  # a failing test must not leave a thread tool waiting


@shoal.tool(isolation="inline")
async def held_inline() -> str:
    going.set()
    await asyncio.sleep(60)
    return "never"


@shoal.tool(isolation="thread")
def held_thread() -> str:
    going.set()
    release.wait(60)
    return "never"


@shoal.tool(isolation="inline")
async def quick() -> str:
    return "quick"


def held_plan(isolation: str, tmp_path: Path) -> tuple[Plan, Any]:
    """A plan whose first node holds until cancelled, and whether that node has started."""
    plan = Plan("held")
    if isolation == "process":
        started = tmp_path / "worker.pid"
        plan.add(pt.sleep_forever, {"pid_file": str(started)}, node_id="held")
        is_going: Any = started.exists
    else:
        plan.add(held_inline if isolation == "inline" else held_thread, {}, node_id="held")
        is_going = going.is_set
    plan.add(quick, {}, node_id="after", after=["held"])
    return plan, is_going


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``target(*args)`` on a thread of its own; its return value lands in the list."""
    returned: list[Any] = []
    thread = threading.Thread(target=lambda: returned.append(target(*args)), daemon=True)
    thread.start()
    return thread, returned


def assert_closed(result: RunResult) -> None:
    assert result.cancelled_reason == CLOSED_REASON
    assert result.outcomes["held"].status == "cancelled"
    assert result.outcomes["after"].status == "cancelled"  # never run on a closed backend


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_aclose_ends_a_run_sync_going_in_another_thread(
        isolation: str, tmp_path: Path, no_child_process_leak: None) -> None:
    runtime = shoal.Runtime(store=None)
    plan, is_going = held_plan(isolation, tmp_path)
    thread, returned = in_thread(runtime.run_sync, plan)
    assert wait_until(is_going, timeout=30.0)
    began = time.monotonic()
    asyncio.run(runtime.aclose())
    took = time.monotonic() - began
    thread.join(10.0)
    assert not thread.is_alive()
    assert_closed(returned[0])
    assert took < shoal.runtime.OTHER_LOOP_WAIT  # ended there, not given up on
    release.set()


def test_aclose_ends_the_runs_of_several_threads_and_its_own(tmp_path: Path) -> None:
    runtime = shoal.Runtime(store=None)
    plans = [held_plan("inline", tmp_path)[0] for _ in range(3)]
    threads = [in_thread(runtime.run_sync, plan) for plan in plans[:2]]

    async def close_with_one_of_its_own() -> RunResult:
        handle = runtime.start(plans[2])
        await until(lambda: handle.snapshot().running)
        await until(lambda: len(runtime._runs) == 3)  # the threads' runs have started too
        await runtime.aclose()
        assert handle.done()
        return await handle

    assert_closed(asyncio.run(close_with_one_of_its_own()))
    for thread, returned in threads:
        thread.join(10.0)
        assert not thread.is_alive()
        assert_closed(returned[0])


@shoal.tool(isolation="thread")
def pause(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def test_run_sync_from_several_threads_at_once_leaves_the_others_runs_alone() -> None:
    """Each ``run_sync`` closes the runtime as it ends, but not under another thread's run:
    those keep the backends, and the last to end closes them."""
    runtime = shoal.Runtime(store=None)

    def run(k: int) -> RunResult:
        plan = Plan(f"plan-{k}")
        for i in range(3):
            plan.add(pause, {"i": i, "seconds": 0.1 * k}, node_id=f"pause-{i}")
        return runtime.run_sync(plan)

    threads = [in_thread(run, k) for k in range(1, 5)]
    for thread, returned in threads:
        thread.join(30.0)
        assert not thread.is_alive()
        assert returned[0].counts["ok"] == 3, returned[0].cancelled_reason
    # the last run_sync closed the backends: the thread pool keeps no thread
    assert wait_until(lambda: not [t for t in threading.enumerate()
                                   if t.name.startswith("shoal-tool")], timeout=10.0)


def test_aclose_closes_worker_processes_on_the_loop_they_belong_to(
        no_child_process_leak: None) -> None:
    """A worker's pipes are its loop's: closed from another thread, a loop in debug mode
    would raise (asyncio checks the thread), and one not in debug mode could miss it."""
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        runtime = shoal.Runtime(store=None)
        plan = Plan("pid")
        ref = plan.call(pt.pid)
        result = asyncio.run_coroutine_threadsafe(runtime.run(plan), loop).result(60.0)
        assert result.counts["ok"] == 1  # its worker stays, idle, on that loop
        asyncio.run(runtime.aclose())
        worker = result[ref].value
        assert wait_until(lambda: not psutil.pid_exists(worker)
                          or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()


def block(unblock: threading.Event) -> None:
    """Hold the calling thread's event loop (run from a callback there) until ``unblock``."""
    unblock.wait(30.0)


def test_aclose_gives_up_on_a_blocked_loop_and_its_cancel_runs_once_that_loop_goes_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(shoal.runtime, "OTHER_LOOP_WAIT", 0.5)
    runtime = shoal.Runtime(store=None)
    plan, _ = held_plan("inline", tmp_path)
    blocked, unblock = threading.Event(), threading.Event()

    async def blocked_while_running() -> RunResult:
        handle = runtime.start(plan)
        await until(lambda: handle.snapshot().running)
        asyncio.get_running_loop().call_soon(block, unblock)
        blocked.set()
        return await handle

    thread, returned = in_thread(asyncio.run, blocked_while_running())
    try:
        assert blocked.wait(30.0)
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="shoal"):
            asyncio.run(runtime.aclose())  # a deadlock without the bound
        took = time.monotonic() - began
        assert 0.5 <= took < 5.0, took
        assert "ran nothing for" in caplog.text
        assert thread.is_alive()  # still blocked
    finally:
        unblock.set()
    thread.join(10.0)
    assert not thread.is_alive()
    assert_closed(returned[0])  # the cancel queued there ran once the loop went on


def test_aclose_does_not_wait_for_the_runs_of_a_stopped_loop(tmp_path: Path) -> None:
    runtime = shoal.Runtime(store=None)
    plan, _ = held_plan("inline", tmp_path)
    loop = asyncio.new_event_loop()
    try:
        async def begin() -> Any:
            handle = runtime.start(plan)
            await until(lambda: handle.snapshot().running)
            return handle

        handle = loop.run_until_complete(begin())  # the loop stops; its run is left pending
        began = time.monotonic()
        asyncio.run(runtime.aclose())
        assert time.monotonic() - began < 2.0
        assert not handle.done()
        assert_closed(loop.run_until_complete(handle.as_future()))  # cancelled once it runs
    finally:
        loop.close()
