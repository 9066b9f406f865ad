"""A hostile user of the process backend, second round (sweep 38).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import shoal
from shoal import Plan
from shoal.executors import process
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from shoal.executors.thread import ThreadExecutor
from tests import hostile_exec2_s38_tools as t

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def test_a_tool_that_closes_the_workers_pipes_is_told_so_not_exit_code_1() -> None:
    # was: "the worker process running tool 'close_every_fd' died: exit code 1" (the worker's
    # reply raised EBADF): nothing said the tool had closed descriptors it did not open
    plan = Plan()
    node = plan.call(t.close_every_fd)
    result = shoal.Runtime(process_workers=1).run_sync(plan)
    error = result.outcomes[node.node].error
    assert error is not None and error.type == "shoal.exceptions.WorkerCrashedError", error
    assert "closed the worker's pipes to shoal" in error.message, error.message
    assert "os.closerange" in error.message


def test_a_long_lived_pool_keeps_no_crash_count_per_run_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: ProcessExecutor._crashes kept one entry per (run, tool) that crashed its worker,
    # never dropped: a service running one run per request, a tool crashing now and then,
    # grew it by one entry per such run for as long as the pool lived
    monkeypatch.setattr(process, "CRASH_BOOKS", 4)  # (1024 by default: 1024 runs is slow)

    async def main() -> tuple[int, list[str]]:
        pool = ProcessExecutor(1)
        await pool.start()
        errors = []
        try:
            for run in range(12):  # three times the bound
                call = Call(0, "n", t.die_hard, {}, 1, "process", run_id=f"run-{run}")
                try:
                    await pool.execute(call)
                except shoal.WorkerCrashedError as exc:
                    errors.append(str(exc))
        finally:
            await pool.close()
        return len(pool._crashes), errors

    kept, errors = asyncio.run(main())
    assert len(errors) == 12 and "exit code 3" in errors[-1]
    assert kept == 4, kept  # bounded, whatever the number of runs


def test_the_crash_books_bound_keeps_the_quarantine_of_the_runs_going(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the bound drops the runs that crashed longest ago, never the count of a run still crashing
    monkeypatch.setattr(process, "CRASH_BOOKS", 2)

    async def main() -> list[str]:
        pool = ProcessExecutor(1)
        await pool.start()
        errors = []
        try:
            for run in ("a", "b", "a", "c", "a", "a"):
                call = Call(0, "n", t.die_hard, {}, 1, "process", run_id=run)
                try:
                    await pool.execute(call)
                except shoal.ExecutorError as exc:
                    errors.append(type(exc).__name__)
        finally:
            await pool.close()
        return errors

    errors = asyncio.run(main())
    assert errors == ["WorkerCrashedError"] * 5 + ["ToolQuarantinedError"], errors


# ---- one pool given to two runtimes ---------------------------------------------------------


def _nap_plan(seconds: float) -> tuple[Plan, str]:
    plan = Plan()
    return plan, plan.call(t.nap, seconds=seconds).node


def test_a_pool_two_threads_runtimes_share_is_closed_by_the_last_not_the_first() -> None:
    # was: the runtime whose run ended first closed the pool under the other's running call
    # (its worker killed: "the process pool was closed while tool 'nap' was running"), and
    # the two closing at once, each on the other's loop, raised CancelledError out of run_sync
    pool = ProcessExecutor(2)
    results: dict[str, shoal.RunResult] = {}
    errors: list[BaseException] = []

    def run(name: str, seconds: float) -> None:
        plan, _ = _nap_plan(seconds)
        try:
            results[name] = shoal.Runtime(executors={"process": pool}).run_sync(plan)
        except BaseException as exc:  # (reported by the assert below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("short", 0.2)),
               threading.Thread(target=run, args=("long", 3.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for name in ("short", "long"):
        [outcome] = results[name].outcomes.values()
        assert outcome.status == "ok", (name, outcome.error)
    assert pool.worker_pids == []  # the last runtime to end closed it


def test_a_pool_given_to_two_runtimes_of_one_loop_outlives_the_first_closed() -> None:
    # was: rt1.aclose() closed the pool while rt2's call ran on it: that call failed with
    # "the process pool was closed while tool 'nap' was running", though rt2 was never closed
    pool = ProcessExecutor(2)

    async def main() -> shoal.RunResult:
        first, second = (shoal.Runtime(executors={"process": pool}) for _ in range(2))
        plan, _ = _nap_plan(0.0)
        await first.run(plan)
        long_plan, _ = _nap_plan(1.5)
        going = asyncio.create_task(second.run(long_plan))
        await asyncio.sleep(0.7)  # its call runs
        await first.aclose()
        result = await going
        assert pool.worker_pids  # still the second runtime's
        await second.aclose()
        assert pool.worker_pids == []
        return result

    result = asyncio.run(main())
    [outcome] = result.outcomes.values()
    assert outcome.status == "ok", outcome.error



def test_a_thread_pool_given_to_two_runtimes_keeps_the_others_queued_calls() -> None:
    # the rule holds for every backend: was, rt1.aclose() closed the shared thread pool, and
    # rt2's call queued behind its running one ended "cancelled", though rt2 was never closed
    pool = ThreadExecutor(1)

    async def main() -> shoal.RunResult:
        first, second = (shoal.Runtime(executors={"thread": pool}) for _ in range(2))
        warm = Plan()
        warm.call(t.thread_nap, seconds=0.0)
        await first.run(warm)
        plan = Plan()
        plan.call(t.thread_nap, seconds=0.6)
        plan.call(t.thread_nap, seconds=0.1)  # queued: the pool has one thread
        going = asyncio.create_task(second.run(plan))
        await asyncio.sleep(0.3)
        await first.aclose()
        result = await going
        await second.aclose()
        return result

    result = asyncio.run(main())
    assert [o.status for o in result.outcomes.values()] == ["ok", "ok"], result.outcomes


def test_a_call_whose_pool_is_closed_under_it_says_by_what() -> None:
    # was: "the process pool was closed while tool 'nap' was running": which close, whose, and
    # why a runtime nobody closed lost its call, the message did not say
    pool = ProcessExecutor(1)
    ended: list[shoal.RunResult] = []
    plan, node = _nap_plan(5.0)
    thread = threading.Thread(
        target=lambda: ended.append(shoal.Runtime(executors={"process": pool}).run_sync(plan)))
    thread.start()
    for _ in range(400):  # its call runs
        if pool.worker_pids:
            break
        threading.Event().wait(0.05)
    threading.Event().wait(0.5)
    asyncio.run(pool.close())
    thread.join(60)
    error = ended[0].outcomes[node].error
    assert error is not None, ended[0].outcomes
    assert "the process pool was closed while tool 'nap' was running" in error.message
    assert "by ProcessExecutor.close()" in error.message
