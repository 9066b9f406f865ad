"""A 100,000-node plan: time to build, validate, analyse and run it, and the memory it takes.

Shape: one seed node; 1000 chains of 99 ``inc`` calls hanging off it (data refs); a tree of
``total`` joins (fan-in 10) summing the chain ends; independent ``inc`` calls pad the plan to
exactly 100,000 nodes. Tools are trivial async functions, so this measures shoal alone.

Pass 1 (timings and RSS): build, ``plan.validate()``, ``shoal.analyze(plan)``, then
``Runtime().run(plan)`` (which reuses the validation and analysis, cached on the plan). RSS
growth is process RSS (psutil) after the run minus before the build, and the growth of the
peak RSS (ru_maxrss), which stays 0 if an earlier benchmark in the same process already peaked
higher.
Pass 2 repeats everything under tracemalloc for the peak of Python allocations (tracemalloc
slows code down, hence two passes). Target: it completes, with the right answer.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil  # a dev dependency of shoal

import shoal
from bench.common import BenchResult, cli

NAME = "large_plan"
T = TypeVar("T")


@shoal.tool
async def seed() -> int:
    """The start of every chain."""
    return 0


@shoal.tool
async def inc(x: int) -> int:
    """One step of a chain."""
    return x + 1


@shoal.tool
async def total(xs: list[int]) -> int:
    """A join: the sum of its inputs."""
    return sum(xs)


@dataclass
class Shape:
    nodes: int
    chains: int
    length: int
    fan_in: int = 10

    @property
    def expected(self) -> int:
        return self.chains * self.length  # every chain end holds its length


def build(shape: Shape) -> tuple[shoal.Plan, shoal.Ref]:
    plan = shoal.Plan("large")
    start = plan.call(seed)
    ends = []
    for _ in range(shape.chains):
        ref = start
        for _ in range(shape.length):
            ref = plan.call(inc, x=ref)
        ends.append(ref)
    layer = ends
    while len(layer) > 1:
        layer = [plan.call(total, xs=layer[i:i + shape.fan_in])
                 for i in range(0, len(layer), shape.fan_in)]
    for _ in range(shape.nodes - len(plan)):
        plan.call(inc, x=0)
    return plan, layer[0]


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def one_pass(shape: Shape) -> tuple[dict[str, float], shoal.RunResult, shoal.Ref, int]:
    times: dict[str, float] = {}
    times["build"], (plan, final) = timed(lambda: build(shape))
    times["validate"], _ = timed(plan.validate)
    times["analyze"], graph = timed(lambda: shoal.analyze(plan))
    times["run"], result = timed(lambda: asyncio.run(shoal.Runtime().run(plan)))
    return times, result, final, len(graph.edges)


def main(quick: bool = False) -> BenchResult:
    shape = Shape(2000, 20, 49) if quick else Shape(100_000, 1000, 99)
    result = BenchResult(NAME)
    result.header(f"{shape.nodes:,}-node plan: {shape.chains} chains of {shape.length}, "
                  f"join tree (fan-in {shape.fan_in}), padding")
    gc.collect()
    proc = psutil.Process()
    rss0, maxrss0 = proc.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, run, final, edges = one_pass(shape)
    rss1, maxrss1 = proc.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for phase in ("build", "validate", "analyze"):
        result.add(f"{phase}", times[phase], "s")
    result.add("Runtime().run (validation and analysis cached)", times["run"], "s")
    result.add("total", sum(times.values()), "s")
    result.add("end-to-end throughput (build + run)", shape.nodes / (times["build"] + times["run"]),
               "nodes/s")
    result.add("makespan reported by shoal", run.makespan, "s")
    result.add("process RSS growth (psutil, result alive)", (rss1 - rss0) / 2**20, "MiB")
    result.add("peak RSS growth (ru_maxrss)", (maxrss1 - maxrss0) / 1024, "MiB")
    ok = run.ok and len(run) == shape.nodes and run.value(final) == shape.expected
    result.check("all nodes ok, final sum right", ok,
                 f"{len(run)} nodes, {edges} edges, final {run.value(final) if run.ok else '-'}")
    del run
    gc.collect()
    tracemalloc.start()
    try:
        one_pass(shape)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result.add("tracemalloc peak (whole pass)", peak / 2**20, "MiB")
    result.add("tracemalloc peak per node", peak / shape.nodes, "B")
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
