"""Failures: timeouts, retries, skips, fail-fast, cancellation and deadlines; the run survives."""

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

import shoal
from shoal import Plan, Ref, RunResult, Runtime, ToolArgumentError, tool
from tests.conftest import arun, elapsed, leftover_tasks, until, wait_until
from tests.spans import finished, started

pytestmark = pytest.mark.usefixtures("no_child_process_leak")


@tool
async def nap(seconds: float, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


@tool
async def boom(message: str = "boom", upstream: Any = None) -> None:
    raise ValueError(message)


# ---- timeouts -----------------------------------------------------------------------------------


def test_an_async_timeout_really_cancels_the_coroutine() -> None:
    seen: list[str] = []

    @tool(timeout=0.1)
    async def stuck() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")
        return "late"

    plan = Plan()
    ref = plan.call(stuck)
    result, took = arun(elapsed(shoal.run(plan)), virtual=True)
    out = result[ref]
    assert out.status == "timed_out"
    assert out.value is None
    assert out.error is not None and out.error.type == "shoal.exceptions.ToolTimeoutError"
    assert "0.1" in out.error.message
    assert not out.abandoned and result.abandoned == []
    # on the virtual clock: stopped at exactly its 0.1 s timeout, not at the 5 s sleep's end
    assert took == pytest.approx(0.1, abs=1e-9)
    assert out.duration == pytest.approx(0.1, abs=1e-9)
    assert seen == ["cancelled"]


def test_a_sync_timeout_abandons_the_thread_and_drops_its_late_result() -> None:
    release = threading.Event()
    returned: list[str] = []

    @tool(timeout=0.1)
    def blocking() -> str:
        release.wait(60)
        returned.append("returned")
        return "late value"

    plan = Plan()
    ref = plan.call(blocking)
    plan.call(nap, seconds=0, value="sibling", node_id="sibling")
    # real time: a sync tool blocks a real thread, which the virtual clock cannot see
    start = time.perf_counter()
    result = shoal.run_sync(plan)
    # the run did not wait for the thread (60 s); a wide margin, for a loaded machine
    assert time.perf_counter() - start < 10
    out = result[ref]
    assert out.status == "timed_out"
    assert out.abandoned is True
    assert result.abandoned == [ref.node]
    assert result["sibling"].value == "sibling"
    release.set()
    assert wait_until(lambda: returned == ["returned"])
    assert result[ref].status == "timed_out" and result[ref].value is None
    assert result.to_dict()["abandoned"] == [ref.node]


def test_timeouts_are_per_attempt_and_retried() -> None:
    attempts: list[int] = []

    @tool(timeout=0.1, retries=2, backoff=0.01)
    async def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.sleep(5)
        return "second time lucky"

    plan = Plan()
    ref = plan.call(slow_then_fast)
    result = arun(shoal.run(plan), virtual=True)
    assert result[ref].status == "ok"
    assert result[ref].value == "second time lucky"
    assert result[ref].attempts == 2


def test_a_tool_raising_timeout_error_itself_failed_rather_than_timed_out() -> None:
    @tool(timeout=5)
    async def socket_like() -> None:
        raise TimeoutError("connect timed out")

    plan = Plan()
    ref = plan.call(socket_like)
    out = shoal.run_sync(plan)[ref]
    assert out.status == "failed"
    assert out.error is not None and out.error.type == "TimeoutError"


def test_waiting_for_a_free_thread_does_not_eat_the_timeout() -> None:
    # 0.7 s to spare for a call on a loaded machine; the last two wait 1.2 s for a thread,
    # which, were it counted, would time them out
    @tool(timeout=1.0)
    def job(i: int) -> int:
        time.sleep(0.3)
        return i

    plan = Plan()
    refs = [plan.call(job, i=i) for i in range(10)]
    result = shoal.run_sync(plan, thread_workers=2)
    assert [result[r].status for r in refs] == ["ok"] * 10


# ---- retries ------------------------------------------------------------------------------------


def test_retries_with_backoff_count_attempts() -> None:
    moments: list[float] = []

    @tool(retries=3, backoff=0.05, jitter=0.0)
    async def flaky() -> str:
        moments.append(asyncio.get_running_loop().time())
        if len(moments) < 3:
            raise ConnectionError(f"attempt {len(moments)}")
        return "ok now"

    plan = Plan()
    ref = plan.call(flaky)
    result = arun(shoal.run(plan), virtual=True)
    out = result[ref]
    assert (out.status, out.value, out.attempts) == ("ok", "ok now", 3)
    waits = [b - a for a, b in itertools.pairwise(moments)]
    assert waits == pytest.approx([0.05, 0.1], abs=1e-9)  # the virtual clock: 0.05, then doubled


def test_retries_run_out_and_the_last_error_is_kept() -> None:
    count: list[int] = []

    @tool(retries=2, backoff=0.001)
    async def hopeless() -> None:
        count.append(1)
        raise OSError(f"failure {len(count)}")

    plan = Plan()
    ref = plan.call(hopeless)
    out = shoal.run_sync(plan)[ref]
    assert out.status == "failed" and out.attempts == 3
    assert out.error is not None and out.error.message == "failure 3"


def test_retry_on_filters_errors() -> None:
    calls: list[int] = []

    @tool(retries=3, retry_on=(ConnectionError,), backoff=0.001)
    async def picky(kind: str) -> None:
        calls.append(1)
        raise KeyError(kind) if kind == "key" else ConnectionError(kind)

    plan = Plan()
    not_retried = plan.call(picky, kind="key")
    result = shoal.run_sync(plan)
    assert result[not_retried].attempts == 1
    error = result[not_retried].error
    assert error is not None
    assert error.type == "KeyError"
    plan = Plan()
    retried = plan.call(picky, kind="conn")
    assert shoal.run_sync(plan)[retried].attempts == 4


def test_tool_argument_errors_are_never_retried() -> None:
    calls: list[int] = []

    @tool(retries=3, backoff=0.001)
    async def validates_inside(x: Any) -> None:
        calls.append(1)
        raise ToolArgumentError("validates_inside", "x", "x is wrong")

    @tool(retries=3, backoff=0.001)
    async def wants_int(n: int) -> int:
        calls.append(1)
        return n

    plan = Plan()
    a = plan.call(validates_inside, x=1)
    text = plan.call(nap, seconds=0, value="not a number")
    b = plan.call(wants_int, n=text)
    result = shoal.run_sync(plan)
    assert result[a].status == "failed" and result[a].attempts == 1
    assert result[b].status == "failed" and result[b].attempts == 0  # never started
    error = result[b].error
    assert error is not None and "'n'" in error.message
    assert len(calls) == 1


def test_sync_tools_are_retried_too() -> None:
    calls: list[int] = []

    @tool(retries=1, backoff=0.001)
    def once_broken() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first")
        return len(calls)

    plan = Plan()
    ref = plan.call(once_broken)
    out = shoal.run_sync(plan)[ref]
    assert (out.status, out.value, out.attempts, out.executor) == ("ok", 2, 2, "thread")


# ---- failure policy -----------------------------------------------------------------------------


def test_continue_skips_dependents_and_keeps_siblings() -> None:
    plan = Plan()
    bad = plan.call(boom, message="disk full", node_id="bad")
    child = plan.call(nap, seconds=0, value=bad, node_id="child")
    grandchild = plan.call(nap, seconds=0, value=[child], node_id="grandchild")
    ordered = plan.call(nap, seconds=0, value=1, after=[bad], node_id="ordered")
    sibling = plan.call(nap, seconds=0.05, value="kept", node_id="sibling")
    nephew = plan.call(nap, seconds=0, value=sibling, node_id="nephew")
    result = shoal.run_sync(plan)
    assert result[bad].status == "failed"
    error = result[bad].error
    assert error is not None and error.message == "disk full"
    assert "Traceback" in error.traceback
    assert result[child].status == "skipped"
    assert "'bad'" in result[child].reason and "disk full" in result[child].reason
    assert result[grandchild].status == "skipped"
    assert "'child'" in result[grandchild].reason
    assert "root cause" in result[grandchild].reason and "'bad'" in result[grandchild].reason
    assert result[ordered].status == "skipped"
    assert result[sibling].value == "kept" and result[nephew].value == "kept"
    assert result[child].started_at is None and result[child].attempts == 0
    assert result.counts["skipped"] == 3


def test_a_failed_writer_does_not_skip_the_next_writer() -> None:
    @tool(writes="file:{path}")
    async def write(path: str, fail: bool) -> str:
        if fail:
            raise OSError("no space")
        return path

    plan = Plan()
    first = plan.call(write, path="x", fail=True)
    second = plan.call(write, path="x", fail=False)
    result = shoal.run_sync(plan)
    assert result[first].status == "failed"
    assert result[second].status == "ok"
    assert started(result[second]) >= finished(result[first])


def test_fail_fast_cancels_the_rest() -> None:
    seen: list[str] = []

    @tool
    async def long_sibling() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "done"

    plan = Plan()
    # the failure comes once the sibling runs (a call cancelled before its first step never
    # runs its tool at all: tests/test_review_scheduler.py)
    plan.call(boom, upstream=plan.call(nap, seconds=0.1), node_id="bad")
    running = plan.call(long_sibling, node_id="running")
    waiting = plan.call(nap, seconds=0, value=running, node_id="waiting")
    result, took = arun(elapsed(shoal.run(plan, fail_fast=True)), virtual=True)
    assert took == pytest.approx(0.1, abs=1e-9)  # the virtual clock: the 5 s sibling was
    # stopped as the failure came
    assert result["bad"].status == "failed"
    assert result[running].status == "cancelled"
    assert "fail_fast" in result[running].reason
    assert result[waiting].status in ("cancelled", "skipped")
    assert seen == ["cancelled"]


def test_fail_fast_can_be_chosen_per_run() -> None:
    plan = Plan()
    plan.call(boom)
    sibling = plan.call(nap, seconds=0.1, value=1)
    runtime = Runtime(fail_fast=True)
    assert arun(runtime.run(plan, fail_fast=False), virtual=True)[sibling].status == "ok"


@pytest.mark.parametrize("isolation", ["inline", "thread"])
def test_a_tool_raising_system_exit_fails_and_the_runtime_lives(isolation: str) -> None:
    @tool(isolation=isolation)
    async def quitter() -> None:
        raise SystemExit(3)

    plan = Plan()
    bad = plan.call(quitter)
    good = plan.call(nap, seconds=0.01, value="still here")
    runtime = Runtime()
    result = runtime.run_sync(plan)
    assert result[bad].status == "failed"
    error = result[bad].error
    assert error is not None and error.type == "SystemExit"
    assert result[good].value == "still here"
    assert runtime.run_sync(plan)[good].status == "ok"  # and it can run again


def test_a_sync_tool_raising_system_exit_fails() -> None:
    @tool
    def sync_quitter() -> None:
        raise SystemExit("bye")

    plan = Plan()
    ref = plan.call(sync_quitter)
    out = shoal.run_sync(plan)[ref]
    assert out.status == "failed" and out.executor == "thread"


@tool
async def raises_cancelled_at_once() -> None:
    raise asyncio.CancelledError("from the tool")  # no await: run without a task of its own


@tool(timeout=5.0)
async def raises_cancelled_after_an_await() -> None:
    await asyncio.sleep(0.01)
    raise asyncio.CancelledError


@tool
async def awaits_a_task_cancelled_elsewhere() -> None:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0.01)
    inner.cancel()  # as a library closing a connection cancels what waits on it
    await inner


@tool
def sync_raises_cancelled() -> None:
    raise asyncio.CancelledError


@pytest.mark.parametrize("bad", [raises_cancelled_at_once, raises_cancelled_after_an_await,
                                 awaits_a_task_cancelled_elsewhere, sync_raises_cancelled],
                         ids=lambda t: t.name)
def test_a_tool_raising_cancelled_error_itself_fails_saying_so(bad: shoal.Tool[..., Any]) -> None:
    # Nothing cancelled the call: a CancelledError from the tool's own code is its failure
    # (as on the process backend), not a cancellation with no reason, and it is retried
    plan = Plan()
    ref = plan.call(bad.options(retries=1, backoff=0.001))
    sibling = plan.call(nap, seconds=0.05, value="kept")
    result = arun(shoal.run(plan), virtual=bad is not sync_raises_cancelled)
    out = result[ref]
    assert out.status == "failed", out
    assert out.attempts == 2
    assert out.error is not None and out.error.type == "shoal.exceptions.ToolDefinitionError"
    assert out.error.message.startswith(f"tool {bad.name!r} raised CancelledError, but nothing "
                                        "cancelled its call")
    # the CancelledError is the cause: the traceback shows where the tool raised it
    assert "CancelledError" in out.error.traceback
    assert bad.fn.__code__.co_name in out.error.traceback
    assert result[sibling].value == "kept"


@pytest.mark.parametrize("bad", [raises_cancelled_at_once, sync_raises_cancelled],
                         ids=lambda t: t.name)
def test_a_tool_raising_cancelled_error_in_a_worker_process_fails_the_same_way(
        bad: shoal.Tool[..., Any]) -> None:
    # one contract on every backend: in a worker process it failed as a bare CancelledError
    # (empty message for the async tool), where the other backends give the error below
    plan = Plan()
    ref = plan.call(bad)
    out = shoal.Runtime(executor="process", process_workers=1).run_sync(plan)[ref]
    assert out.status == "failed" and out.attempts == 1, out
    assert out.error is not None and out.error.type == "shoal.exceptions.ToolDefinitionError"
    assert out.error.message.startswith(f"tool {bad.name!r} raised CancelledError, but nothing "
                                        "cancelled its call")


def test_a_call_cancelled_while_its_tool_catches_and_reraises_stays_cancelled() -> None:
    # the other side: a cancel the run asked for is a cancellation, whatever the tool does
    @tool
    async def tidy() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # cleans up, then lets the cancellation go on
            raise asyncio.CancelledError("tidied") from None

    async def main() -> RunResult:
        plan = Plan()
        plan.call(tidy, node_id="t")
        handle = Runtime().start(plan)
        await asyncio.sleep(0.1)
        handle.cancel("t", reason="not needed")
        return await handle

    out = arun(main(), virtual=True)["t"]
    assert out.status == "cancelled" and out.reason == "not needed"


# ---- cancellation -------------------------------------------------------------------------------


def test_cancelling_one_running_node_through_the_handle() -> None:
    seen: list[str] = []

    @tool
    async def long(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(name)
            raise
        return name

    plan = Plan()
    target = plan.call(long, name="target")
    child = plan.call(nap, seconds=0, value=target)
    other = plan.call(nap, seconds=0.2, value="other")

    async def main() -> RunResult:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(0.05)
            handle.cancel(target, reason="changed my mind")
            return await handle

    result = arun(main(), virtual=True)
    assert result[target].status == "cancelled"
    assert result[target].reason == "changed my mind"
    assert result[child].status == "skipped"
    assert result[other].status == "ok"
    assert seen == ["target"]
    assert result.cancelled_reason == ""


def test_cancelling_one_queued_node_through_the_handle() -> None:
    plan = Plan()
    first = plan.call(nap, seconds=0.2, value=1)
    queued = plan.call(nap, seconds=0.2, value=2)

    async def main() -> RunResult:
        async with Runtime(max_concurrency=1) as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(0.05)
            snap = handle.snapshot()
            assert len(snap.running) == 1
            queued_id = queued.node if snap.running[0][0] == first.node else first.node
            handle.cancel([queued_id])
            result = await handle
            assert result[queued_id].status == "cancelled"
            assert result[queued_id].started_at is None
            return result

    result = arun(main(), virtual=True)
    assert sorted(o.status for o in result) == ["cancelled", "ok"]


def test_cancelling_the_whole_run_gives_every_node_an_outcome() -> None:
    entered, release = threading.Event(), threading.Event()

    @tool
    def blocking() -> str:
        entered.set()
        release.wait(60)
        return "late"

    plan = Plan()
    plan.call(nap, seconds=0.01, value="done", node_id="done")
    plan.call(nap, seconds=5, node_id="running")
    plan.call(blocking, node_id="thread")
    plan.call(nap, seconds=0, value=Ref("running"), node_id="waiting")

    async def main() -> RunResult:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            # "thread" runs on its thread and "done" has ended (whatever the machine's load)
            await until(lambda: entered.is_set() and "done" in handle.partial_result().outcomes)
            handle.cancel(reason="stop everything")
            result = await handle
            handle.cancel()  # after the end: a no-op
            return result

    start = time.perf_counter()  # real time: "thread" blocks a real thread (60 s if waited for)
    try:
        result = arun(main(), timeout=30)
    finally:
        release.set()
    assert time.perf_counter() - start < 10
    assert len(result) == 4
    assert result["done"].status == "ok"
    assert result["running"].status == "cancelled"
    assert result["thread"].status == "cancelled" and result["thread"].abandoned
    assert result["waiting"].status == "cancelled"
    assert result.cancelled_reason == "stop everything"


def test_cancelling_an_unknown_node_is_a_key_error() -> None:
    plan = Plan()
    plan.call(nap, seconds=0.05)

    async def main() -> None:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(0)
            with pytest.raises(KeyError, match="nope"):
                handle.cancel("nope")
            await handle

    arun(main())


def test_outer_cancellation_stops_in_flight_calls_and_leaves_no_tasks() -> None:
    began: list[str] = []
    seen: list[str] = []
    release = threading.Event()

    @tool
    async def long(name: str) -> str:
        began.append(name)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(name)
            raise
        return name

    @tool
    def blocking() -> str:
        release.wait(5)
        return "late"

    plan = Plan()
    for name in ("a", "b", "c"):
        plan.call(long, name=name)
    plan.call(blocking)

    async def main() -> None:
        async with Runtime() as runtime:
            task = asyncio.create_task(runtime.run(plan))
            await until(lambda: len(began) == 3)  # the three calls are in flight
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert leftover_tasks() == []
        assert sorted(seen) == ["a", "b", "c"]

    try:
        arun(main())
    finally:
        release.set()


def test_outer_timeout_around_a_run_cancels_it_cleanly() -> None:
    plan = Plan()
    plan.call(nap, seconds=5)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(shoal.run(plan), 0.1)
        assert leftover_tasks() == []

    arun(main(), virtual=True)


def test_cancelling_the_task_awaiting_a_handle_cancels_the_run() -> None:
    seen: list[str] = []

    @tool
    async def long() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    plan = Plan()
    plan.call(long)

    async def main() -> None:
        async with Runtime() as runtime:
            handle = runtime.start(plan)

            async def waiter() -> RunResult:
                return await handle

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.01)
            assert handle.done()
        assert leftover_tasks() == []

    arun(main(), virtual=True)
    assert seen == ["cancelled"]


# ---- deadline -----------------------------------------------------------------------------------


def test_the_run_deadline_times_out_running_calls_and_cancels_the_rest() -> None:
    plan = Plan()
    plan.call(nap, seconds=0.01, value="quick", node_id="quick")
    plan.call(nap, seconds=5, node_id="running")
    plan.call(nap, seconds=0, value=Ref("running"), node_id="waiting")
    plan.call(nap.options(max_concurrency=1), seconds=5, node_id="capped1")
    plan.call(nap.options(max_concurrency=1), seconds=5, node_id="capped2")
    result, took = arun(elapsed(shoal.run(plan, deadline=0.2)), virtual=True)
    assert took == pytest.approx(0.2, abs=1e-9)  # the virtual clock: exactly the deadline
    assert result["quick"].status == "ok"
    assert result["running"].status == "timed_out"
    assert "deadline" in result["running"].reason
    assert result["waiting"].status == "cancelled"
    assert sorted(result[n].status for n in ("capped1", "capped2")) == ["cancelled", "timed_out"]
    assert "deadline" in result.cancelled_reason
    assert len(result) == 5


def test_a_per_run_deadline_overrides_the_runtime_one() -> None:
    plan = Plan()
    ref = plan.call(nap, seconds=0.2, value=1)
    runtime = Runtime(deadline=0.05)
    result, took = arun(elapsed(runtime.run(plan, deadline=5)), virtual=True)
    assert result[ref].status == "ok"
    assert took == pytest.approx(0.2, abs=1e-9)  # the virtual clock: ran its whole 0.2 s


# ---- bugs: the run must end, whatever a tool does -----------------------------------------------


@pytest.mark.usefixtures("collect_garbage")
def test_a_tool_raising_a_base_exception_does_not_hang_the_run() -> None:
    class Abort(BaseException):
        pass

    @tool
    async def aborts() -> None:
        raise Abort("stop")

    plan = Plan()
    ref = plan.call(aborts)
    result = arun(shoal.run(plan), timeout=1.0, check_tasks=False, virtual=True)
    assert result[ref].status == "failed"


@pytest.mark.usefixtures("collect_garbage")
def test_retry_on_given_as_a_list_does_not_hang_the_run() -> None:
    @tool(retries=2, retry_on=[ValueError], backoff=0.001)
    async def flaky() -> None:
        raise ValueError("x")

    plan = Plan()
    ref = plan.call(flaky)
    result = arun(shoal.run(plan), timeout=1.0, check_tasks=False, virtual=True)
    assert result[ref].attempts == 3


@pytest.mark.usefixtures("collect_garbage")
def test_an_exception_that_cannot_be_printed_does_not_hang_the_run() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            return str(self.args[0])  # IndexError: raised without arguments

    @tool
    async def raises_unprintable() -> None:
        raise Unprintable()

    plan = Plan()
    ref = plan.call(raises_unprintable)
    result = arun(shoal.run(plan), timeout=1.0, check_tasks=False, virtual=True)
    assert result[ref].status == "failed"
    error = result[ref].error
    assert error is not None and "Unprintable" in error.type


@pytest.mark.usefixtures("collect_garbage")
def test_cancelling_right_after_start_cancels_every_node() -> None:
    plan = Plan()
    plan.call(nap, seconds=0.2, node_id="a")
    plan.call(nap, seconds=0.2, value=Ref("a"), node_id="b")

    async def main() -> RunResult:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            try:
                handle.cancel()  # before the run's task has started
            finally:
                result = await handle  # never leave the run's task (or its error) behind
            return result

    result = arun(main(), timeout=1.0, virtual=True)
    assert [o.status for o in result] == ["cancelled", "cancelled"]


def test_a_node_cancelled_as_its_attempt_fails_is_not_retried() -> None:
    handles: list[shoal.RunHandle] = []
    attempts: list[int] = []

    @tool(retries=2, backoff=0.001)
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            # the user's cancel lands in the same loop turn as this failure
            asyncio.get_running_loop().call_soon(handles[0].cancel, "flaky#1")
            raise ValueError("first attempt")
        return "retried anyway"

    plan = Plan()
    ref = plan.call(flaky)

    async def main() -> RunResult:
        async with Runtime() as runtime:
            handles.append(runtime.start(plan))
            return await handles[0]

    result = arun(main())
    assert result[ref].status in ("cancelled", "failed")
    assert attempts == [1]


def test_fail_fast_cancels_a_call_started_in_the_same_turn() -> None:
    @tool
    async def source() -> Any:
        return "not a number"

    @tool
    async def long(x: Any) -> str:
        await asyncio.sleep(1.0)
        return "finished"

    @tool
    async def need_int(n: int) -> int:
        return n

    plan = Plan()
    s = plan.call(source)
    slow = plan.call(long, x=s)  # ranks first, so it starts before need_int is checked
    plan.call(need_int, n=s)
    result, took = arun(elapsed(shoal.run(plan, fail_fast=True)), virtual=True)
    assert result[slow].status == "cancelled"
    assert took == 0.0  # the virtual clock: the 1 s call was stopped before any time passed
