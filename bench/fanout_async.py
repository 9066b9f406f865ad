"""1000 async calls of 50 ms through shoal vs a raw ``asyncio.gather`` of the same coroutines.

Floor: ``asyncio.gather`` of the tool's own coroutine function, no plan, no scheduler.
shoal is timed end to end: building the plan and ``await shoal.run(plan)`` (which validates,
analyses, creates a Runtime and runs). Both run on the same loop, interleaved, best of 3.
Target: shoal / floor <= 1.10.
"""

from __future__ import annotations

import asyncio
import time

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median

NAME = "fanout_async"
TARGET = Target("ratio", "<=", 1.10)


@shoal.tool
async def io_call(seconds: float) -> float:
    """Wait like an I/O-bound call, then return how long it waited."""
    await asyncio.sleep(seconds)
    return seconds


async def floor_once(n: int, seconds: float) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(io_call.fn(seconds) for _ in range(n)))
    return time.perf_counter() - start


async def shoal_once(n: int, seconds: float, bad: list[str]) -> float:
    start = time.perf_counter()
    plan = shoal.Plan()
    for _ in range(n):
        plan.call(io_call, seconds=seconds)
    result = await shoal.run(plan)
    elapsed = time.perf_counter() - start
    if not result.ok or len(result) != n:
        bad.append(repr(result))
    return elapsed


async def measure(n: int, seconds: float, reps: int) -> tuple[dict[str, list[float]], list[str]]:
    bad: list[str] = []
    await floor_once(10, 0.001)  # warm-up, untimed: first-use costs of both paths
    await shoal_once(10, 0.001, bad)
    times = await interleave_async(reps, {
        "floor": lambda: floor_once(n, seconds),
        "shoal": lambda: shoal_once(n, seconds, bad),
    })
    return times, bad


def main(quick: bool = False) -> BenchResult:
    n, seconds, reps = (50, 0.05, 3) if quick else (1000, 0.05, 3)
    result = BenchResult(NAME)
    result.header(f"{n} async calls of {seconds * 1e3:g} ms; shoal.run vs asyncio.gather "
                  f"(interleaved, {reps} reps)")
    times, bad = asyncio.run(measure(n, seconds, reps))
    shoal_t, floor_t = times["shoal"], times["floor"]
    result.add(f"wall time, best of {reps}", min(shoal_t), "s", floor=min(floor_t), target=TARGET)
    result.add(f"wall time, median of {reps}", median(shoal_t), "s", floor=median(floor_t))
    result.add("overhead beyond the floor, per call (best)",
               (min(shoal_t) - min(floor_t)) / n * 1e6, "us")
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
