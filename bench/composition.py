"""Run-time fan-out and open runs: ``plan.map`` over a list made while the plan runs, and an
open run fed 10,000 nodes while it goes.

(a) map: a producer (100 ms) returns 1,000 items; ``plan.map`` calls a 50 ms async tool per
item. Floor: the producer plus one item (150 ms), the least any scheduler can take; a raw
asyncio version (sleep, then ``gather`` of the 1,000) is shown beside it. Timed end to end
(build + ``await shoal.run(plan)``), interleaved with the raw version, best of 5. Again with
10 items failing (``partial=True``): 990 values must come back in item order. Target:
makespan / floor <= 1.3. The same plan on the virtual clock must take exactly the floor.

(b) open run: 10,000 nodes added to ``runtime.open_run()`` while it runs, in batches of 20
with the event loop free between batches: odd nodes form one chain (each takes the previous
one's output), even nodes fan out (no inputs). Latency from *ready* to *start*, per node:
ready is when the node was added (``time.perf_counter()`` just before ``run.call``) or, if
later, when the tool function of the node it needs returned; start is the first line of its
own tool function. So it counts everything shoal does in between: recording the outcome,
releasing the successor, the priority queue, resolving the argument, the asyncio task.
What it leaves out is the time the feeding code itself held the event loop in between (its
batches of ``run.call``, timed from each resume to the next ``await``): no scheduler on one
asyncio loop can start anything while the caller's code runs. That share is shown apart
(the same latency with it counted, and what one ``run.call`` costs). Floor: the same pattern
with bare ``asyncio.create_task`` (fan-out tasks created by the feeder, each chain task
created by its predecessor as it returns), measured the same way. Targets: median <= 0.2 ms,
p99 <= 2 ms.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from itertools import accumulate
from typing import Any

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median, percentile
from shoal.testing import run_virtual

NAME = "composition"
RATIO_TARGET = Target("ratio", "<=", 1.3)
MEDIAN_TARGET = Target("value", "<=", 0.2e-3)
P99_TARGET = Target("value", "<=", 2e-3)
PRODUCER, ITEM = 0.1, 0.05
BATCH = 20


@shoal.tool
async def produce(n: int, seconds: float) -> list[int]:
    """The list to map over, after ``seconds``."""
    await asyncio.sleep(seconds)
    return list(range(n))


@shoal.tool
async def item(x: int, seconds: float, every: int = 0) -> int:
    """One item: wait ``seconds``; with ``every``, items 7, 7 + every, ... fail."""
    await asyncio.sleep(seconds)
    if every and x % every == 7:
        raise ValueError(f"item {x} is broken")
    return x


# ---- (a) map ------------------------------------------------------------------------------


async def map_once(n: int, broken: int, bad: list[str]) -> float:
    """Map over ``n`` items, ``broken`` of them failing (spread over the list)."""
    every = n // broken if broken else 0
    start = time.perf_counter()
    plan = shoal.Plan()
    listed = plan.call(produce, n=n, seconds=PRODUCER)
    mapped = plan.map(item, over=listed, seconds=ITEM, every=every, partial=broken > 0)
    result = await shoal.run(plan)
    elapsed = time.perf_counter() - start
    expect = [x for x in range(n) if not (every and x % every == 7)]
    if result[mapped].value != expect or len(expect) != n - broken:
        bad.append(f"map with {broken} broken: {result[mapped].status}, "
                   f"{len(result[mapped].value or [])} values")
    return elapsed


async def raw_once(n: int) -> float:
    start = time.perf_counter()
    items = await produce.fn(n, PRODUCER)
    await asyncio.gather(*(item.fn(x, ITEM) for x in items))
    return time.perf_counter() - start


async def measure_map(n: int, reps: int) -> tuple[dict[str, list[float]], list[str]]:
    bad: list[str] = []
    await map_once(10, 0, bad)  # warm-up, untimed
    times = await interleave_async(reps, {
        "raw": lambda: raw_once(n),
        "map": lambda: map_once(n, 0, bad),
        "map, 10 failing": lambda: map_once(n, 10, bad),
    })
    return times, bad


def virtual_makespan(n: int) -> float:
    plan = shoal.Plan()
    listed = plan.call(produce, n=n, seconds=PRODUCER)
    plan.map(item, over=listed, seconds=ITEM)
    return run_virtual(shoal.run(plan)).makespan


# ---- (b) open run -------------------------------------------------------------------------

entered: dict[int, float] = {}
returned: dict[int, float] = {}


@shoal.tool
async def step(key: int, prev: int | None = None) -> int:
    """Note when it starts (and returns, for the node after it in the chain)."""
    entered[key] = now = time.perf_counter()
    returned[key] = now
    return key


class Busy:
    """When the feeding code held the loop: intervals from each resume to the next await."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._since = time.perf_counter()

    async def yield_loop(self) -> None:
        self.spans.append((self._since, time.perf_counter()))
        await asyncio.sleep(0)
        self._since = time.perf_counter()

    def close(self) -> None:
        self.spans.append((self._since, time.perf_counter()))

    def between(self) -> Any:
        """A function: seconds of feeding between two moments."""
        starts = [a for a, _ in self.spans]
        before = [0.0, *accumulate(b - a for a, b in self.spans)]

        def held(t: float) -> float:  # feeding time up to t
            i = bisect.bisect_right(starts, t)
            if i == 0:
                return 0.0
            a, b = self.spans[i - 1]
            return before[i - 1] + min(t, b) - a

        return lambda start, end: held(end) - held(start)


async def feed_open(n: int) -> tuple[list[float], list[float], list[float], bool]:
    """Latencies without and with the feeder's time, the cost of each add, and whether ok."""
    entered.clear()
    returned.clear()
    added: dict[int, float] = {}
    costs: list[float] = []
    needs: dict[int, int] = {}
    runtime = shoal.Runtime(max_concurrency=n)
    busy = Busy()
    async with runtime.open_run("fed") as run:
        chain: Any = None
        last = -1
        for key in range(n):
            added[key] = time.perf_counter()
            if key % 2:  # the chain
                if last >= 0:
                    needs[key] = last
                chain = run.call(step, key=key, prev=chain)
                last = key
            else:  # the fan-out
                run.call(step, key=key)
            costs.append(time.perf_counter() - added[key])
            if key % BATCH == BATCH - 1:
                await busy.yield_loop()
        busy.close()
    ok = run.result.ok and len(run.result) == n
    ready = [max(added[k], returned[needs[k]]) if k in needs else added[k] for k in range(n)]
    start = [entered[k] for k in range(n)]
    return (*_latencies(ready, start, busy), costs, ok)


def _latencies(ready: list[float], start: list[float],
               busy: Busy) -> tuple[list[float], list[float]]:
    held = busy.between()
    whole = [s - r for r, s in zip(ready, start, strict=True)]
    return [w - held(r, s) for w, r, s in zip(whole, ready, start, strict=True)], whole


async def feed_raw(n: int) -> list[float]:
    """The floor: the same pattern with bare tasks, the feeder's time left out likewise."""
    began: dict[int, float] = {}
    ready: dict[int, float] = {}
    tasks: set[asyncio.Task[None]] = set()
    pending_chain: list[int] = []  # chain keys added but not started (their predecessor runs)
    state = {"running": False}
    busy = Busy()

    def start(key: int) -> None:
        task = asyncio.get_running_loop().create_task(body(key))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def body(key: int) -> None:
        began[key] = time.perf_counter()
        if key % 2:  # a chain link: the next one, if added already, is ready now
            if pending_chain:
                nxt = pending_chain.pop(0)
                ready[nxt] = max(ready[nxt], time.perf_counter())
                start(nxt)
            else:
                state["running"] = False

    for key in range(n):
        ready[key] = time.perf_counter()
        if key % 2 and state["running"]:
            pending_chain.append(key)
        else:
            if key % 2:
                state["running"] = True
            start(key)
        if key % BATCH == BATCH - 1:
            await busy.yield_loop()
    busy.close()
    while tasks:  # a chain link starts the next one, so wait until none is left
        await asyncio.wait(tuple(tasks))
    return _latencies([ready[k] for k in range(n)], [began[k] for k in range(n)], busy)[0]


def main(quick: bool = False) -> BenchResult:
    n, reps, fed = (100, 2, 500) if quick else (1000, 5, 10_000)
    result = BenchResult(NAME)
    floor = PRODUCER + ITEM
    result.header(f"map over {n} items made at run time ({PRODUCER * 1e3:g} ms producer, "
                  f"{ITEM * 1e3:g} ms per item), best of {reps}")
    times, bad = asyncio.run(measure_map(n, reps))
    result.add("map makespan (best)", min(times["map"]), "s", floor=floor, target=RATIO_TARGET)
    result.add("map makespan, 10 items failing (best)", min(times["map, 10 failing"]), "s",
               floor=floor, target=RATIO_TARGET)
    result.add("raw asyncio: sleep, then gather (best)", min(times["raw"]), "s", floor=floor)
    result.add("map makespan (median)", median(times["map"]), "s", floor=floor)
    virtual = virtual_makespan(n)
    result.add("virtual-clock makespan", virtual, "s", floor=floor)
    result.check(f"values in item order ({n - 10} of {n} with 10 failing)", not bad,
                 "; ".join(bad))
    result.check("virtual makespan is the floor", abs(virtual - floor) < 1e-9)

    result.header(f"open run fed {fed:,} nodes live (chain + fan-out, batches of {BATCH}): "
                  "ready -> start latency")
    latencies, whole, costs, ok = asyncio.run(feed_open(fed))
    raw = asyncio.run(feed_raw(fed))
    result.add("ready -> start, median", median(latencies), "s", floor=median(raw),
               target=MEDIAN_TARGET)
    result.add("ready -> start, p99", percentile(latencies, 0.99), "s",
               floor=percentile(raw, 0.99), target=P99_TARGET)
    result.add("ready -> start, max", max(latencies), "s", floor=max(raw))
    result.add("the same with the feeding code's time, median", median(whole), "s")
    result.add("the same with the feeding code's time, p99", percentile(whole, 0.99), "s")
    result.add("one run.call (checks, analysis, queueing), median", median(costs), "s")
    result.add("one run.call, p99", percentile(costs, 0.99), "s")
    result.check("every fed node ok", ok)
    result.check("no node started before it was ready", min(latencies) >= 0 and min(raw) >= 0)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, (__doc__ or "").split("\n\n")[0]))
