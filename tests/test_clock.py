"""The virtual-clock loop: timers follow virtual time and never wait in real time."""

from __future__ import annotations

import asyncio
import time

import pytest

import shoal
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
