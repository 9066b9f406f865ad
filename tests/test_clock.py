"""The virtual-clock loop: timers follow virtual time and never wait in real time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import shoal
from shoal.clock import clock_of
from shoal.testing import VirtualClockLoop, run_virtual


def test_an_hour_long_sleep_takes_no_real_time() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        return before, loop.time()

    wall = time.perf_counter()
    before, after = run_virtual(main())
    assert time.perf_counter() - wall < 1.0
    assert after - before == pytest.approx(3600, abs=1e-9)


def test_run_virtual_uses_a_virtual_loop_and_closes_it() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> str:
        seen.append(asyncio.get_running_loop())
        return "done"

    assert run_virtual(main()) == "done"
    assert isinstance(seen[0], VirtualClockLoop)
    assert seen[0].is_closed()


def test_the_loop_starts_at_the_given_time() -> None:
    loop = VirtualClockLoop(start=100.0)
    try:
        assert loop.time() == 100.0
        loop.run_until_complete(asyncio.sleep(5))
        assert loop.time() == pytest.approx(105.0, abs=1e-9)
    finally:
        loop.close()


def test_concurrent_sleeps_end_at_the_longest() -> None:
    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ends: list[float] = []

        async def nap(seconds: float) -> None:
            await asyncio.sleep(seconds)
            ends.append(loop.time() - start)

        await asyncio.gather(nap(1), nap(2), nap(3))
        return ends, loop.time() - start

    ends, total = run_virtual(main())
    assert ends == pytest.approx([1, 2, 3], abs=1e-9)
    assert total == pytest.approx(3, abs=1e-9)


def test_timeouts_fire_in_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.sleep(3600)
        return loop.time() - start

    wall = time.perf_counter()
    assert run_virtual(main()) == pytest.approx(10, abs=1e-9)
    assert time.perf_counter() - wall < 1.0


def test_call_later_order_follows_virtual_time() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        done = loop.create_future()
        loop.call_later(2, fired.append, "b")
        loop.call_later(1, fired.append, "a")
        loop.call_later(3, done.set_result, None)
        await done
        return fired

    assert run_virtual(main()) == ["a", "b"]


def test_real_io_from_another_thread_still_wakes_the_loop() -> None:
    # With no timer pending the loop waits for real I/O, so a thread's result gets through.
    async def main() -> int:
        return await asyncio.to_thread(lambda: 42)

    assert run_virtual(main()) == 42


@shoal.tool
async def nap(seconds: float, after_value: float = 0.0) -> float:
    """Sleep ``seconds`` and return them."""
    await asyncio.sleep(seconds)
    return seconds


def test_shoal_makespan_equals_the_critical_path_on_the_virtual_loop() -> None:
    plan = shoal.Plan()
    a = plan.call(nap, seconds=1.0)
    b = plan.call(nap, seconds=2.0, after_value=a)  # chain a -> b: 3 s
    c = plan.call(nap, seconds=2.5)  # parallel with the chain
    d = plan.call(nap, seconds=0.5, after=[b, c])  # join: 3.5 s
    e = plan.call(nap, seconds=0.25)  # independent

    result = run_virtual(shoal.run(plan))

    assert result.ok
    assert result.makespan == pytest.approx(3.5, abs=1e-6)
    assert result.critical_path_time == pytest.approx(3.5, abs=1e-6)
    assert result.makespan == pytest.approx(result.critical_path_time, abs=1e-6)
    assert result.critical_path == [a.node, b.node, d.node]
    assert result[d].started_at == pytest.approx(3.0, abs=1e-6)
    assert result[e].finished_at == pytest.approx(0.25, abs=1e-6)


# ---- one clock for the driver and the runtime (shoal.clock) ----------------------------------


@shoal.tool(approval=True)
async def gated(value: int) -> int:
    """A call that needs a person's yes."""
    return value


_FLAKY_CALLS: list[str] = []  # attempts of flaky_once, by key (arguments are copied per call)


@shoal.tool(retries=2, backoff=10.0)
async def flaky_once(key: str) -> str:
    """Fail the first attempt for ``key``, succeed the second."""
    _FLAKY_CALLS.append(key)
    if _FLAKY_CALLS.count(key) == 1:
        raise ConnectionError("first attempt fails")
    return "ok"


def test_a_run_on_the_virtual_loop_journals_virtual_dates() -> None:
    """Dates the journal keeps (the run's start and end, approval requests) are virtual too."""
    store = shoal.MemoryStore()

    async def main() -> tuple[float, float, shoal.RunResult]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        await asyncio.sleep(7200)  # two virtual hours before the run
        began = loop.epoch()
        plan = shoal.Plan()
        plan.call(nap, seconds=60.0)
        plan.call(gated, value=1)
        runtime = shoal.Runtime(store=store, approver=lambda request: True)
        async with runtime:
            result = await runtime.run(plan, run_id="virtual-dates")
        return began, loop.epoch(), result

    wall = time.time()
    began, ended, result = run_virtual(main())
    assert result.ok
    assert began >= wall + 7200  # the virtual epoch, hours ahead of the wall clock
    record = store.get_run("virtual-dates")
    assert record is not None
    assert record.started_at == pytest.approx(began, abs=1e-6)
    assert record.finished_at == pytest.approx(ended, abs=1e-6)
    assert result.started_at_epoch == pytest.approx(began, abs=1e-6)
    (request,) = store.approvals("virtual-dates")
    assert request.requested_at == pytest.approx(began, abs=1e-6)


class _CountingClock(shoal.Clock):
    """The loop's clock, with dates from a fixed origin and every timer counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: float) -> None:
        super().__init__(loop)
        self.origin = origin
        self.timers: list[float] = []

    def epoch(self) -> float:
        return self.origin + self.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        self.timers.append(when)
        return super().call_at(when, callback)


def test_the_runtime_runs_on_the_clock_it_is_given() -> None:
    """Timers (a retry's back-off, the deadline) and dates all go through the given clock."""

    async def main() -> tuple[_CountingClock, shoal.RunResult, float]:
        loop = asyncio.get_running_loop()
        clock = _CountingClock(loop, origin=1_000_000.0)
        plan = shoal.Plan()
        plan.call(flaky_once, key="given-clock")
        async with shoal.Runtime(clock=clock, deadline=3600.0) as runtime:
            start = clock.time()
            result = await runtime.run(plan)
        return clock, result, start

    clock, result, start = run_virtual(main())
    assert result.ok
    assert result.started_at_epoch == pytest.approx(1_000_000.0 + start, abs=1e-6)
    # the deadline's timer, then the retry's back-off (10 s, jittered) on the same clock
    assert len(clock.timers) == 2
    assert clock.timers[0] == pytest.approx(start + 3600.0, abs=1e-6)
    assert 0 < clock.timers[1] - start <= 20.0
    assert result.makespan == pytest.approx(clock.timers[1] - start, abs=1e-6)


def test_clock_of_a_virtual_loop_is_its_own() -> None:
    async def main() -> tuple[shoal.Clock, shoal.Clock]:
        loop = asyncio.get_running_loop()
        return clock_of(loop), clock_of()

    first, second = run_virtual(main())
    assert first is second  # the loop's own, not a new one each time
    assert first.from_monotonic(time.monotonic()) is None  # threads' real times mean nothing


def test_the_default_clock_is_the_loops_and_the_wall_clocks() -> None:
    async def main() -> tuple[float, float, float | None, float]:
        loop = asyncio.get_running_loop()
        clock = clock_of(loop)
        return clock.time(), clock.epoch(), clock.from_monotonic(time.monotonic()), loop.time()

    now, epoch, stamp, loop_now = asyncio.run(main())
    assert now <= loop_now
    assert epoch == pytest.approx(time.time(), abs=5.0)
    assert stamp is not None and stamp == pytest.approx(loop_now, abs=1.0)
