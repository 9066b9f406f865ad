"""A 1,000,000-node plan, closed and fed to an open run: time, and memory per node.

Shape: one seed node; 500 chains of 1000 ``inc`` calls hanging off it (data refs); 100
fan-outs (a hub ``inc`` off the seed and 3,999 ``inc`` calls off the hub); a tree of ``total``
joins (fan-in 10) summing the chain ends; independent ``inc`` calls pad the plan to exactly
1,000,000 nodes. Tools are trivial async functions, so this measures shoal alone.

(a) Closed plan: build, ``plan.validate()``, ``shoal.analyze(plan)``, then
``Runtime().run(plan)`` (which reuses the validation and analysis, cached on the plan), each
timed in wall-clock and CPU seconds. (b) Open run: the same nodes fed to
``Runtime().open_run()`` with ``run.call`` (the event loop gets a turn every 1,000 calls), the
block timed from opening to its end. Memory: the growth of the peak RSS (``ru_maxrss``) over
the pass, per node (it stays 0 if something earlier in the same process peaked higher), and,
in a second pass of each under ``tracemalloc``, the peak of Python allocations per node
(tracemalloc slows code down several times, hence separate passes). The time Python's cyclic
garbage collector took is printed apart (``gc.callbacks``).

``--nodes N`` runs the same shape at another size (as many chains and fan-outs per node), for
quicker rounds; the seconds targets are set for the full size.

Targets: the closed plan end to end (build + validate + analyse + run) <= 30 s; the open run
(feeding + running) <= 30 s; traced peak per node < 1 KB for both.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import shoal
from bench.common import BenchResult, Target, cli

NAME = "large_plan"
BATCH = 1000  # open run: calls between two turns of the event loop
KB = Target("value", "<=", 1000)  # bytes per node
SECONDS = Target("value", "<=", 30)


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
    hubs: int
    fan_out: int
    fan_in: int = 10

    @property
    def expected(self) -> int:
        return self.chains * self.length  # every chain end holds its length

    def describe(self) -> str:
        return (f"{self.nodes:,} nodes: {self.chains} chains of {self.length}, {self.hubs} "
                f"fan-outs of {self.fan_out}, join tree (fan-in {self.fan_in}), padding")


FULL = Shape(1_000_000, 500, 1000, 100, 3999)
QUICK = Shape(3000, 10, 100, 10, 99)


def scaled(nodes: int) -> Shape:
    """``FULL``'s shape at another size (``--nodes``): as many chains and fan-outs per node."""
    if nodes < 10_000:
        raise SystemExit("--nodes: at least 10,000 (one chain and one fan-out)")
    per = nodes / FULL.nodes
    return Shape(nodes, max(1, round(FULL.chains * per)), FULL.length,
                 max(1, round(FULL.hubs * per)), FULL.fan_out)


class Caller(Protocol):
    def call(self, tool: Any, /, **args: Any) -> shoal.Ref: ...


def add_nodes(target: Caller, shape: Shape, size: Callable[[], int]) -> Iterator[shoal.Ref]:
    """Add ``shape``'s nodes to a plan or an open run, one per step; the last is the answer."""
    start = target.call(seed)
    yield start
    ends = []
    for _ in range(shape.chains):
        ref = start
        for _ in range(shape.length):
            ref = target.call(inc, x=ref)
            yield ref
        ends.append(ref)
    for _ in range(shape.hubs):
        hub = target.call(inc, x=start)
        yield hub
        for _ in range(shape.fan_out):
            yield target.call(inc, x=hub)
    layer = ends
    while len(layer) > 1:
        layer = [target.call(total, xs=layer[i:i + shape.fan_in])
                 for i in range(0, len(layer), shape.fan_in)]
        yield from layer
    for _ in range(shape.nodes - size()):
        yield target.call(inc, x=0)
    yield layer[0]


def build(shape: Shape) -> tuple[shoal.Plan, shoal.Ref]:
    plan = shoal.Plan("large")
    *_, final = add_nodes(plan, shape, plan.__len__)
    return plan, final


class Clock:
    """Wall-clock and CPU seconds per phase, and the time the garbage collector took."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.gc = 0.0
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        del info
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc += time.perf_counter() - self._gc_start

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - wall
            self.cpu[name] = time.process_time() - cpu

    @contextmanager
    def watching_gc(self) -> Iterator[None]:
        gc.callbacks.append(self._on_gc)
        try:
            yield
        finally:
            gc.callbacks.remove(self._on_gc)


def closed_pass(shape: Shape, clock: Clock) -> tuple[shoal.RunResult, shoal.Ref]:
    with clock.phase("build"):
        plan, final = build(shape)
    with clock.phase("validate"):
        plan.validate()
    with clock.phase("analyze"):
        shoal.analyze(plan)
    with clock.phase("run"):
        result = asyncio.run(shoal.Runtime().run(plan))
    return result, final


async def feed(shape: Shape, clock: Clock) -> tuple[shoal.RunResult, shoal.Ref]:
    added = [0]

    def size() -> int:
        return added[0]

    with clock.phase("open run"):
        async with shoal.Runtime().open_run() as run:
            started = time.perf_counter()
            final: shoal.Ref | None = None
            for ref in add_nodes(run, shape, size):
                final = ref  # the last one: the answer
                added[0] += 1
                if added[0] % BATCH == 0:
                    await asyncio.sleep(0)
            clock.wall["feeding"] = time.perf_counter() - started
    assert final is not None
    return run.result, final


def open_pass(shape: Shape, clock: Clock) -> tuple[shoal.RunResult, shoal.Ref]:
    return asyncio.run(feed(shape, clock))


def traced_peak(do: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        do()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def judge(result: BenchResult, shape: Shape, label: str, run: shoal.RunResult,
          final: shoal.Ref) -> None:
    ok = run.ok and len(run) == shape.nodes and run.value(final) == shape.expected
    result.check(f"{label}: all nodes ok, final sum right", ok,
                 f"{len(run):,} nodes, {run.counts['ok']:,} ok, final "
                 f"{run.value(final) if run.ok else '-'}")


def seconds_target(shape: Shape, quick: bool) -> Target | None:
    """The 30 s target is set for the full size; smaller runs print their time unjudged."""
    return None if quick or shape.nodes != FULL.nodes else SECONDS


def closed(result: BenchResult, shape: Shape, quick: bool) -> None:
    clock = Clock()
    gc.collect()
    rss0 = maxrss()
    with clock.watching_gc():
        run, final = closed_pass(shape, clock)
    grown = maxrss() - rss0
    for phase in ("build", "validate", "analyze", "run"):
        result.add(f"closed: {phase} (CPU {clock.cpu[phase]:.2f} s)", clock.wall[phase], "s")
    result.add("closed: end to end (build + validate + analyze + run)", sum(clock.wall.values()),
               "s", target=seconds_target(shape, quick))
    result.add("closed: of which the garbage collector", clock.gc, "s")
    result.add("closed: throughput end to end", shape.nodes / sum(clock.wall.values()),
               "nodes/s")
    result.add("closed: peak RSS growth per node (ru_maxrss)", grown / shape.nodes, "B")
    judge(result, shape, "closed", run, final)
    del run
    peak = traced_peak(lambda: closed_pass(shape, Clock()))
    result.add("closed: tracemalloc peak per node", peak / shape.nodes, "B",
               target=None if quick else KB)


def opened(result: BenchResult, shape: Shape, quick: bool) -> None:
    clock = Clock()
    gc.collect()
    rss0 = maxrss()
    with clock.watching_gc():
        run, final = open_pass(shape, clock)
    grown = maxrss() - rss0
    result.add(f"open run: feeding {shape.nodes:,} nodes", clock.wall["feeding"], "s")
    result.add(f"open run: open to end (CPU {clock.cpu['open run']:.2f} s)",
               clock.wall["open run"], "s", target=seconds_target(shape, quick))
    result.add("open run: of which the garbage collector", clock.gc, "s")
    result.add("open run: peak RSS growth per node (ru_maxrss)", grown / shape.nodes, "B")
    judge(result, shape, "open run", run, final)
    del run
    peak = traced_peak(lambda: open_pass(shape, Clock()))
    result.add("open run: tracemalloc peak per node", peak / shape.nodes, "B",
               target=None if quick else KB)


def main(quick: bool = False, nodes: int | None = None) -> BenchResult:
    shape = QUICK if quick else FULL if nodes is None else scaled(nodes)
    result = BenchResult(NAME)
    result.header(shape.describe())
    closed(result, shape, quick)
    opened(result, shape, quick)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or "", nodes_flag=True))
