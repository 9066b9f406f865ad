"""Async tools that ignore their cancellation: abandoned after a grace, as a thread's call is.

A tool that catches ``CancelledError`` and goes on would otherwise hold its run (the driver's
drain), its ``*_sync`` call (the loop's teardown) and any run that waits for it forever: its
timeout, a cancel, a deadline, a budget could not end it. ``ABANDON_GRACE`` seconds after its
cancel its outcome is recorded (``abandoned``, with a reason saying so), its task is left to
end on its own time, and its end, if it comes, is discarded. Also: an attempt whose end cannot
be made into a result (a hostile value or exception) fails instead of never being reported.

Virtual clock (:mod:`shoal.testing`) where time matters: exact, and instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from typing import Any

import pytest

import shoal
from shoal import Plan, RunResult, Runtime, tool
from shoal.scheduler import driver
from shoal.scheduler.driver import ABANDON_GRACE, CallCancelled, is_abandoned
from shoal.testing import ScriptedModel, call, run_virtual
from tests.conftest import arun, elapsed, leftover_tasks

#: Virtual seconds the stubborn tools ignore cancellation for: far beyond any bound below,
#: so that a run that waits for one (the defect) fails its test instead of passing late.
STUBBORN_FOR = 10_000.0
#: A virtual bound for a run that must end (a hang fails the test at this time instead).
BOUND = 1_000.0

ignored: list[str] = []  # a cancellation each stubborn call caught and ignored


@tool
async def stubborn(label: str = "") -> str:
    """Ignore cancellation for STUBBORN_FOR seconds (virtual), then return."""
    loop = asyncio.get_running_loop()
    end = loop.time() + STUBBORN_FOR
    while loop.time() < end:
        try:
            await asyncio.sleep(end - loop.time())
        except asyncio.CancelledError:
            ignored.append(label)
    return "late"


@tool
async def nap(seconds: float, value: Any = None) -> Any:
    """Sleep, then return ``value``."""
    await asyncio.sleep(seconds)
    return value


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ignored.clear()


def only_abandoned_left() -> None:
    """The tasks left on the loop after the run are those of abandoned calls, nothing else."""
    left = leftover_tasks()
    assert left and all(is_abandoned(task) for task in left), left


def check_abandoned(out: shoal.Outcome, status: str) -> None:
    assert out.status == status
    assert out.abandoned is True
    assert "ignored its cancellation" in out.reason and "abandoned" in out.reason, out.reason


# ---- the run ends, with every outcome -------------------------------------------------------


def test_a_tool_ignoring_its_timeout_is_abandoned_after_the_grace() -> None:
    plan = Plan()
    stuck = plan.call(stubborn.options(timeout=1), label="t")
    after = plan.call(nap, seconds=0, value=stuck)
    sibling = plan.call(nap, seconds=3, value="kept")

    async def main() -> tuple[RunResult, float]:
        result, took = await elapsed(shoal.run(plan))
        only_abandoned_left()
        return result, took

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    # exactly: its timeout, then the grace (the sibling ended meanwhile, at 3 s)
    assert took == pytest.approx(1 + ABANDON_GRACE, abs=1e-9)
    out = result[stuck]
    check_abandoned(out, "timed_out")
    assert out.error is not None and out.error.type == "shoal.exceptions.ToolTimeoutError"
    assert result[after].status == "skipped"
    assert result[sibling].value == "kept"
    assert result.abandoned == [stuck.node]
    assert set(ignored) == {"t"}  # (its loop's end cancels it again)


def test_a_cancelled_run_ends_although_a_tool_ignores_its_cancellation() -> None:
    plan = Plan()
    stuck = plan.call(stubborn, label="c")
    sibling = plan.call(nap, seconds=0.5, value="kept")

    async def main() -> tuple[RunResult, float]:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(1)
            began = asyncio.get_running_loop().time()
            handle.cancel(reason="enough")
            result = await handle
            took = asyncio.get_running_loop().time() - began
        only_abandoned_left()
        return result, took

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(ABANDON_GRACE, abs=1e-9)
    out = result[stuck]
    check_abandoned(out, "cancelled")
    assert out.reason.startswith("enough; ")  # the cancel's own reason first
    assert result[sibling].value == "kept"  # ended before the cancel: kept
    assert result.cancelled_reason == "enough"


def test_a_run_whose_task_is_cancelled_ends_although_a_tool_ignores_it() -> None:
    plan = Plan()
    plan.call(stubborn, label="o")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):  # the outer timeout: the run's task is cancelled
            await asyncio.wait_for(shoal.run(plan), 2)
        only_abandoned_left()
        return loop.time() - began

    took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(2 + ABANDON_GRACE, abs=1e-9)
    assert set(ignored) == {"o"}  # (its loop's end cancels it again)


def test_a_deadline_ends_a_run_whose_tool_ignores_its_cancellation() -> None:
    plan = Plan()
    stuck = plan.call(stubborn, label="d")
    later = plan.call(nap, seconds=0, value=stuck)

    async def main() -> tuple[RunResult, float]:
        async with Runtime(deadline=2) as runtime:
            result, took = await elapsed(runtime.run(plan))
        only_abandoned_left()
        return result, took

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(2 + ABANDON_GRACE, abs=1e-9)
    out = result[stuck]
    check_abandoned(out, "timed_out")
    assert out.reason.startswith("the run's deadline of 2 s passed; ")
    assert result[later].status in ("cancelled", "skipped")


def test_fail_fast_ends_a_run_whose_tool_ignores_its_cancellation() -> None:
    @tool
    async def boom() -> None:
        await asyncio.sleep(1)
        raise ValueError("boom")

    plan = Plan()
    stuck = plan.call(stubborn, label="f")
    failed = plan.call(boom)

    async def main() -> tuple[RunResult, float]:
        async with Runtime(fail_fast=True) as runtime:
            result, took = await elapsed(runtime.run(plan))
        only_abandoned_left()
        return result, took

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(1 + ABANDON_GRACE, abs=1e-9)
    assert result[failed].status == "failed"
    check_abandoned(result[stuck], "cancelled")


def test_a_tool_that_stops_when_cancelled_is_recorded_once_it_stopped() -> None:
    """The usual case is unchanged: the outcome comes after the tool's finally ran, at once."""
    cleaned: list[float] = []

    @tool(timeout=1)
    async def tidy() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.25)  # a cleanup that takes a while, well within the grace
            cleaned.append(asyncio.get_running_loop().time())

    plan = Plan()
    ref = plan.call(tidy)
    result, took = arun(elapsed(shoal.run(plan)), virtual=True)
    assert took == pytest.approx(1.25, abs=1e-9)
    assert result[ref].status == "timed_out" and not result[ref].abandoned
    assert result[ref].reason == ""
    assert cleaned == [pytest.approx(1.25, abs=1e-9)]


def test_the_late_end_of_an_abandoned_call_is_discarded_and_its_retry_runs() -> None:
    """It ends at last while its node's retry runs: the retry's outcome stands."""
    attempts: list[int] = []

    @tool(timeout=1, retries=1, backoff=0.01)
    async def flaky() -> str:
        loop = asyncio.get_running_loop()
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:  # ignores its cancellation until 6.5 s: abandoned at 6 s
            while loop.time() < 6.5:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(6.5 - loop.time())
            return "first, late"
        await asyncio.sleep(0.9)  # the retry (from 6.01 s) outlives the first one's late end
        return "retry"

    plan = Plan()
    ref = plan.call(flaky)
    result, took = arun(elapsed(shoal.run(plan)), virtual=True, timeout=BOUND)
    assert result[ref].status == "ok" and result[ref].value == "retry"
    assert result[ref].attempts == 2
    # abandoned at 6 s, retried after its back-off (jittered), then 0.9 s
    assert 1 + ABANDON_GRACE + 0.9 < took < 1 + ABANDON_GRACE + 0.9 + 0.05


# ---- *_sync calls return (real time) ---------------------------------------------------------


def test_run_sync_returns_although_a_tool_ignores_its_cancellation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(driver, "ABANDON_GRACE", 0.2)
    stop = threading.Event()

    @tool(timeout=0.2)
    async def deaf() -> str:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.02)
        return "late"

    plan = Plan()
    ref = plan.call(deaf)
    plan.call(nap, seconds=0, value="kept", node_id="sibling")
    returned: list[RunResult] = []
    runner = threading.Thread(target=lambda: returned.append(shoal.run_sync(plan)), daemon=True)
    began = time.perf_counter()
    runner.start()
    runner.join(20)  # (a hang would never return: a wide margin over 0.4 s, for a loaded box)
    took = time.perf_counter() - began
    try:
        assert returned, "run_sync did not return"
    finally:
        stop.set()  # (its loop is closed: the task never resumes; this ends it on the old code)
    result = returned[0]
    check_abandoned(result[ref], "timed_out")
    assert result["sibling"].value == "kept"
    assert took < 10
    gc.collect()
    assert "destroyed but it is pending" not in caplog.text


def test_run_sync_returns_when_a_stray_task_ignores_its_cancellation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A task of the tool's own (not a call) left on the loop: its teardown waits a grace."""
    monkeypatch.setattr(driver, "ABANDON_GRACE", 0.2)
    stop = threading.Event()

    async def deaf() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.02)

    strays: list[asyncio.Task[None]] = []

    @tool
    async def spawn() -> str:
        strays.append(asyncio.get_running_loop().create_task(deaf()))
        return "spawned"

    plan = Plan()
    ref = plan.call(spawn)
    returned: list[RunResult] = []
    runner = threading.Thread(target=lambda: returned.append(shoal.run_sync(plan)), daemon=True)
    with caplog.at_level(logging.WARNING, logger="shoal"):
        runner.start()
        runner.join(20)
        try:
            assert returned, "run_sync did not return"
        finally:
            stop.set()
    assert returned[0][ref].value == "spawned"
    assert "ignored its cancellation" in caplog.text
    gc.collect()
    assert "destroyed but it is pending" not in caplog.text


def test_run_virtual_returns_although_a_tool_never_stops() -> None:
    """The virtual clock's runner ends its loop as run_sync does: the grace is virtual."""
    stop = threading.Event()

    @tool(timeout=1)
    async def forever() -> str:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(100)
        return "late"

    plan = Plan()
    ref = plan.call(forever)
    returned: list[tuple[RunResult, float]] = []
    runner = threading.Thread(
        target=lambda: returned.append(run_virtual(elapsed(shoal.run(plan)))), daemon=True)
    runner.start()
    runner.join(20)  # (a hang never returns: the virtual loop would spin on, 100 s a turn)
    try:
        assert returned, "run_virtual did not return"
    finally:
        stop.set()
    result, took = returned[0]
    assert took == pytest.approx(1 + ABANDON_GRACE, abs=1e-9)
    check_abandoned(result[ref], "timed_out")


# ---- open runs and agents ---------------------------------------------------------------------


def test_an_open_run_closed_by_a_cancel_ends_although_a_tool_ignores_it() -> None:
    async def main() -> tuple[RunResult, float]:
        runtime = Runtime()
        loop = asyncio.get_running_loop()
        async with runtime:
            run = runtime.open_run()
            stuck = run.call(stubborn, label="open")
            kept = run.call(nap, seconds=0.5, value="kept")
            await asyncio.sleep(1)
            began = loop.time()
            run.cancel(reason="closing")
            outcome = await run.wait(stuck)
            took = loop.time() - began
            assert (await run.wait(kept)).value == "kept"
            result = await run
        only_abandoned_left()
        check_abandoned(outcome, "cancelled")
        return result, took

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(ABANDON_GRACE, abs=1e-9)
    assert result.abandoned != []


def test_an_agent_whose_run_is_cancelled_ends_although_its_tool_ignores_it() -> None:
    model = ScriptedModel([[call("stubborn", label="agent"), call("nap", seconds=0.5,
                                                                  value="kept")], "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[stubborn, nap])

    async def main() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(agent.run("go"))
        await asyncio.sleep(1)
        began = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        only_abandoned_left()
        return loop.time() - began

    took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(ABANDON_GRACE, abs=1e-9)
    assert set(ignored) == {"agent"}  # (its loop's end cancels it again)


def test_an_agent_budget_ends_calls_whose_tool_ignores_cancellation() -> None:
    model = ScriptedModel([[call("stubborn", label="budget")], "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[stubborn])

    async def main() -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(shoal.BudgetExceeded) as caught:
            await agent.run("go", budget=shoal.Budget(wall_clock=1))
        only_abandoned_left()
        return caught.value.result, loop.time() - began

    result, took = arun(main(), virtual=True, timeout=BOUND, check_tasks=False)
    assert took == pytest.approx(1 + ABANDON_GRACE, abs=1e-9)
    outcome = result.calls[0].outcome
    assert outcome is not None
    check_abandoned(outcome, "timed_out")  # the wall_clock is the tree's deadline


# ---- an end that cannot be made into a result ------------------------------------------------


class _NoReason(CallCancelled):
    """A CallCancelled that skips its __init__: it has no ``reason``."""

    def __init__(self) -> None:
        asyncio.CancelledError.__init__(self)


class _Hostile:
    """A value whose ``__class__`` raises: asking what kind of result it is fails."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("no class for you")


def test_an_end_that_cannot_be_recorded_fails_its_call_instead_of_hanging(
        caplog: pytest.LogCaptureFixture) -> None:
    @tool
    async def no_reason() -> None:
        await asyncio.sleep(0.1)
        raise _NoReason()

    @tool
    async def hostile() -> Any:
        await asyncio.sleep(0.1)
        return _Hostile()

    plan = Plan()
    bad_cancel = plan.call(no_reason)
    bad_value = plan.call(hostile)
    kept = plan.call(nap, seconds=0.2, value="kept")
    result = arun(shoal.run(plan), virtual=True)
    for ref, what in ((bad_cancel, "_NoReason"), (bad_value, "its returned value")):
        out = result[ref]
        assert out.status == "failed", out
        assert out.error is not None and "internal error" in out.error.message
        assert what in out.error.message
    assert result[kept].value == "kept"
    assert "internal error" in caplog.text and "Traceback" in caplog.text
