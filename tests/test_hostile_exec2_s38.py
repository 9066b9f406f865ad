"""A hostile user of the process backend, second round (sweep 38).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import asyncio

import pytest

import shoal
from shoal import Plan
from shoal.executors import process
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
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
    monkeypatch.setattr(process, "CRASH_BOOKS", 8)  # (1024 by default: 1024 runs is slow)

    async def main() -> tuple[int, list[str]]:
        pool = ProcessExecutor(1)
        await pool.start()
        errors = []
        try:
            for run in range(40):
                call = Call(0, "n", t.die_hard, {}, 1, "process", run_id=f"run-{run}")
                try:
                    await pool.execute(call)
                except shoal.WorkerCrashedError as exc:
                    errors.append(str(exc))
        finally:
            await pool.close()
        return len(pool._crashes), errors

    kept, errors = asyncio.run(main())
    assert len(errors) == 40 and "exit code 3" in errors[-1]
    assert kept == 8, kept  # bounded, whatever the number of runs


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

