"""shoal's own thread pool (``ThreadExecutor``): what a call handed to it may count on.

Each call runs in its own copied context and is stamped when a thread takes it; stopped
before a thread took it, it never runs; stopped after, it is abandoned and counted; a tool's
exceptions come back as its end; several loops share one executor; a closed pool is made
anew; the threads stay within ``max_workers`` and exit once the pool is closed (or dropped).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal.executors.base import Call
from shoal.executors.thread import PoolJob, ThreadExecutor
from tests.conftest import until, wait_until

gate = threading.Event()  # holds the ``held`` tool
ran: list[str] = []
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    gate.clear()
    ran.clear()
    yield
    gate.set()  # a failing test must not leave a thread waiting


@shoal.tool
def held(name: str) -> str:
    ran.append(name)
    gate.wait(30)
    return name


@shoal.tool
def quick(name: str) -> str:
    ran.append(name)
    return name


@shoal.tool
def reads_var() -> str:
    value = var.get()
    var.set("changed by the tool")  # in the call's own context: nobody else sees it
    return value


def call(pos: int, tool: Any, **args: Any) -> Call:
    return Call(pos, f"n{pos}", tool, args, 1, "thread")


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t not in before and t.name.startswith("shoal-tool")}


class Ends:
    """The ``on_end`` of a submit: the jobs reported, in order."""

    def __init__(self) -> None:
        self.jobs: list[PoolJob] = []

    def __call__(self, job: PoolJob) -> None:
        self.jobs.append(job)


def test_a_call_stopped_before_a_thread_took_it_never_runs_and_is_not_reported() -> None:
    async def main() -> None:
        executor, ends = ThreadExecutor(1), Ends()
        first, second = executor.submit(
            [(call(0, held, name="first"), contextvars.copy_context()),
             (call(1, quick, name="second"), contextvars.copy_context())], ends)
        await until(lambda: ran == ["first"])  # the only thread is busy with the first
        executor.stop(second.call, second)
        assert second.cancelled and not second.call.abandoned
        gate.set()
        await until(lambda: len(ends.jobs) == 1)
        await asyncio.sleep(0.05)
        assert ends.jobs == [first] and first.value == "first"
        assert ran == ["first"]  # the second never ran
        assert executor.abandoned_total == 0
        await executor.close()

    asyncio.run(main())


def test_a_call_stopped_while_it_runs_is_abandoned_counted_and_its_end_dropped() -> None:
    async def main() -> None:
        executor, ends = ThreadExecutor(2), Ends()
        (job,) = executor.submit([(call(0, held, name="a"), contextvars.copy_context())], ends)
        await until(lambda: ran == ["a"])
        assert job.call.began_at is not None  # stamped when the thread took it
        executor.stop(job.call, job)
        executor.stop(job.call, job)  # twice: counted once
        assert job.call.abandoned and not job.cancelled
        assert (executor.abandoned_running, executor.abandoned_total) == (1, 1)
        await executor.close()  # does not wait for it
        gate.set()
        await until(lambda: executor.abandoned_running == 0)
        await asyncio.sleep(0.05)
        assert executor.abandoned_total == 1 and ends.jobs == []

    asyncio.run(main())


def test_each_call_runs_in_its_own_copy_of_the_callers_context() -> None:
    async def main() -> None:
        executor, ends = ThreadExecutor(1), Ends()
        var.set("the caller's")
        jobs = executor.submit([(call(i, reads_var), contextvars.copy_context())
                                for i in range(3)], ends)
        await until(lambda: len(ends.jobs) == 3)
        assert [job.value for job in jobs] == ["the caller's"] * 3
        assert var.get() == "the caller's"
        await executor.close()

    asyncio.run(main())


def test_a_tools_exceptions_come_back_as_its_end() -> None:
    @shoal.tool(isolation="thread")
    def fails(kind: str) -> str:
        if kind == "value":
            raise ValueError("bad value")
        if kind == "exit":
            raise SystemExit(3)
        if kind == "stop":
            raise StopIteration("done")
        return "ok"

    plan = shoal.Plan()
    refs = {kind: plan.call(fails, kind=kind) for kind in ["value", "exit", "stop", "fine"]}
    result = shoal.run_sync(plan)
    assert result[refs["fine"]].value == "ok"
    for kind, text in [("value", "bad value"), ("exit", "SystemExit"),
                       ("stop", "raised StopIteration('done')")]:
        outcome = result[refs[kind]]
        assert outcome.status == "failed" and outcome.error is not None
        assert text in str(outcome.error), (kind, outcome.error)


def test_a_keyboard_interrupt_from_a_tool_on_a_thread_fails_its_call() -> None:
    # no Ctrl-C reaches a thread: it is the tool's own, as in a worker process (it used to
    # stop the run; see tests/test_found_s37.py for every backend)
    @shoal.tool(isolation="thread")
    def interrupts() -> str:
        raise KeyboardInterrupt

    plan = shoal.Plan()
    ref = plan.call(interrupts)
    outcome = shoal.run_sync(plan)[ref]
    assert outcome.status == "failed" and outcome.error is not None
    assert "raised KeyboardInterrupt away from the main thread" in outcome.error.message


def test_one_executor_serves_loops_of_several_threads_at_once() -> None:
    executor = ThreadExecutor(8)
    results: dict[int, list[Any]] = {}

    async def on_its_loop(k: int) -> None:
        ends = Ends()
        executor.submit([(call(i, quick, name=f"{k}-{i}"), contextvars.copy_context())
                         for i in range(50)], ends)
        await until(lambda: len(ends.jobs) == 50)
        results[k] = sorted(job.value for job in ends.jobs)

    threads = [threading.Thread(target=asyncio.run, args=(on_its_loop(k),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    asyncio.run(executor.close())
    assert results == {k: sorted(f"{k}-{i}" for i in range(50)) for k in range(4)}


def test_closing_cancels_the_queued_calls_and_a_later_call_gets_a_new_pool() -> None:
    async def main() -> None:
        executor, ends = ThreadExecutor(1), Ends()
        busy, queued = executor.submit(
            [(call(0, held, name="busy"), contextvars.copy_context()),
             (call(1, quick, name="queued"), contextvars.copy_context())], ends)
        await until(lambda: ran == ["busy"])
        await executor.close()
        await until(lambda: queued in ends.jobs)
        assert queued.cancelled and not executor.started
        gate.set()
        await until(lambda: busy in ends.jobs)  # a call that ran on reports its end
        (again,) = executor.submit([(call(2, quick, name="again"), contextvars.copy_context())],
                                   ends)
        await until(lambda: again in ends.jobs)
        assert again.value == "again" and ran == ["busy", "again"]
        await executor.close()

    asyncio.run(main())


def test_the_threads_stay_within_max_workers_and_exit_once_closed() -> None:
    before = set(threading.enumerate())
    most = 0

    async def main() -> None:
        nonlocal most
        executor, ends = ThreadExecutor(3), Ends()
        executor.submit([(call(i, held, name=str(i)), contextvars.copy_context())
                         for i in range(10)], ends)
        await until(lambda: len(ran) == 3)
        await asyncio.sleep(0.1)
        most = len(new_threads(before))
        assert len(ran) == 3  # the others wait for a thread
        gate.set()
        await until(lambda: len(ends.jobs) == 10)
        await executor.close()

    asyncio.run(main())
    assert most == 3
    assert wait_until(lambda: not new_threads(before), timeout=10.0), new_threads(before)


def test_blocking_calls_get_a_thread_each_and_quick_ones_share_a_few() -> None:
    before = set(threading.enumerate())
    barrier = threading.Barrier(20)

    @shoal.tool(isolation="thread")
    def together() -> int:
        return barrier.wait(30)  # only if all 20 run at once

    plan = shoal.Plan()
    for _ in range(20):
        plan.call(together)
    assert shoal.run_sync(plan, thread_workers=100).ok
    assert wait_until(lambda: not new_threads(before), timeout=10.0)

    started = 0
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        nonlocal started
        started += thread.name.startswith("shoal-tool")
        real_start(thread)

    plan = shoal.Plan()
    for i in range(2000):
        plan.call(quick, name=str(i))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", counting_start)
        assert shoal.run_sync(plan, thread_workers=1000).ok
    # a thread per call waiting would be hundreds (as a ThreadPoolExecutor makes); calls
    # that end at once are taken by the threads already there
    assert 1 <= started < 200


def test_a_thread_that_cannot_be_started_fails_the_calls_that_would_wait_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = shoal.Plan()
    refs = [plan.call(quick, name=str(i)) for i in range(3)]

    async def main() -> shoal.RunResult:
        async with shoal.Runtime(store=None) as runtime:
            await runtime.executor_for("thread").start()
            monkeypatch.setattr(threading.Thread, "start", no_new_thread)
            return await asyncio.wait_for(runtime.run(plan), 30)

    result = asyncio.run(main())
    for ref in refs:
        outcome = result[ref]
        assert outcome.status == "failed" and "can't start new thread" in str(outcome.error)
        assert outcome.error is not None and outcome.error.type.endswith("NoThreadError")


def no_new_thread(_: threading.Thread) -> None:
    raise RuntimeError("can't start new thread")


def test_a_call_no_busy_thread_takes_fails_once_the_pool_took_none_for_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS refuses a thread while the only one is blocked: the queued call fails, typed.

    It never runs, and the blocked call still ends as its own (it would otherwise wait for
    the blocked one, here for as long as that blocks).
    """
    monkeypatch.setattr("shoal.executors.thread.NO_THREAD_WAIT", 0.2)

    async def main() -> None:
        executor = ThreadExecutor(4)
        await executor.start()
        first = asyncio.ensure_future(executor.execute(call(0, held, name="first")))
        await until(lambda: ran == ["first"])
        monkeypatch.setattr(threading.Thread, "start", no_new_thread)
        began = time.monotonic()
        with pytest.raises(shoal.NoThreadError, match="can't start new thread") as info:
            await asyncio.wait_for(executor.execute(call(1, quick, name="second")), 10)
        assert time.monotonic() - began < 8  # not after the blocked call: it still blocks
        assert (info.value.tool, info.value.busy, info.value.waited) == ("quick", 1, 0.2)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert "thread_workers" in str(info.value)  # says what to do
        copy = pickle.loads(pickle.dumps(info.value))  # as every shoal error, with its fields
        assert (str(copy), copy.tool, copy.busy, copy.waited) == (
            str(info.value), "quick", 1, 0.2)
        gate.set()
        assert await first == "first"
        await asyncio.sleep(0.05)
        assert ran == ["first"]  # the second never ran
        await executor.close()

    asyncio.run(main())


def test_a_look_due_on_a_loop_that_closed_is_made_again_on_a_loop_that_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls of two loops wait; the loop the look was due on closes: the other's still fail."""
    monkeypatch.setattr("shoal.executors.thread.NO_THREAD_WAIT", 0.2)

    async def queue_one_and_close(executor: ThreadExecutor) -> None:
        executor.submit([(call(1, quick, name="left"), contextvars.copy_context())], Ends())

    async def main() -> None:
        executor = ThreadExecutor(4)
        await executor.start()
        first = asyncio.ensure_future(executor.execute(call(0, held, name="first")))
        await until(lambda: ran == ["first"])
        go, closed = threading.Event(), threading.Event()

        def other_loop() -> None:  # another thread's loop queues a call (the look is due
            go.wait(10)  # there), then closes
            asyncio.run(queue_one_and_close(executor))
            closed.set()

        threading.Thread(target=other_loop, daemon=True).start()  # before threads are refused
        monkeypatch.setattr(threading.Thread, "start", no_new_thread)
        go.set()
        await until(closed.is_set)
        with pytest.raises(shoal.NoThreadError, match="can't start new thread"):
            await asyncio.wait_for(executor.execute(call(2, quick, name="second")), 10)
        gate.set()
        assert await first == "first"
        assert ran == ["first"]  # neither queued call ran
        await executor.close()

    asyncio.run(main())


def test_queued_calls_wait_for_busy_threads_while_these_take_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No new thread to be had, but the one there keeps taking calls: none of them fails."""
    monkeypatch.setattr("shoal.executors.thread.NO_THREAD_WAIT", 0.25)

    @shoal.tool
    def nap(name: str) -> str:
        time.sleep(0.05)
        return threading.current_thread().name

    async def main() -> None:
        executor, ends = ThreadExecutor(4), Ends()
        executor.submit([(call(0, quick, name="warm"), contextvars.copy_context())], ends)
        await until(lambda: len(ends.jobs) == 1)  # one thread, parked
        monkeypatch.setattr(threading.Thread, "start", no_new_thread)
        executor.submit([(call(i, nap, name=str(i)), contextvars.copy_context())
                         for i in range(1, 21)], ends)  # 1 s of calls on the one thread
        await until(lambda: len(ends.jobs) == 21)
        assert [job.error for job in ends.jobs] == [None] * 21
        assert len({job.value for job in ends.jobs[1:]}) == 1  # all on the one thread
        await executor.close()

    asyncio.run(main())


def test_an_executor_dropped_unclosed_lets_its_threads_exit() -> None:
    before = set(threading.enumerate())

    async def main() -> None:
        executor, ends = ThreadExecutor(4), Ends()
        executor.submit([(call(i, quick, name=str(i)), contextvars.copy_context())
                         for i in range(20)], ends)
        await until(lambda: len(ends.jobs) == 20)
        assert new_threads(before)

    asyncio.run(main())
    gc.collect()
    assert wait_until(lambda: not new_threads(before), timeout=10.0), new_threads(before)


def test_the_interpreter_exits_with_a_pool_never_closed() -> None:
    script = textwrap.dedent("""
        import asyncio, contextvars
        import shoal
        from shoal.executors.base import Call
        from shoal.executors.thread import ThreadExecutor

        @shoal.tool
        def f(i: int) -> int:
            return i

        KEEP = ThreadExecutor(4)  # never closed, never collected before the exit

        async def main():
            done = []
            KEEP.submit([(Call(i, "n", f, {"i": i}, 1, "thread"), contextvars.copy_context())
                         for i in range(10)], done.append)
            while len(done) < 10:
                await asyncio.sleep(0.01)
            print("ran", sum(job.value for job in done))

        asyncio.run(main())
    """)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran 45"
    assert time.monotonic() - began < 30
