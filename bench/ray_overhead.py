"""shoal's Ray backend against raw Ray: per-node overhead, and 1000 concurrent 50 ms calls.

Part 1, per-node overhead of a no-op sync tool, steady state (each backend warmed up first):
shoal on ``thread``, ``process`` (when ``shoal.executors.process`` imports) and ``ray``
(default resources: one Ray task per call, ``num_cpus=1``), against raw Ray tasks of the same
function (``[f.remote(i) for ...]``, then ``gather``); and shoal's actor pool
(``resources={"num_cpus": 0}``) against calls of a no-op method of a raw async actor.

Part 2, 1000 calls of 50 ms (``time.sleep`` in a sync tool, ``asyncio.sleep`` in an async one)
with ``num_cpus=0`` through shoal's Ray backend, against (a) a raw async actor
(``max_concurrency=1000``) awaiting ``asyncio.sleep(0.05)`` 1000 times concurrently: the floor,
interleaved with shoal; target: shoal <= 1.2 x the raw actor. Blocking code cannot run on an
actor's event loop, so the sync tool's floor is the same raw actor running ``time.sleep(0.05)``
on a thread pool (``run_in_executor``), as a hand-written actor would; its ratio to the pure
async floor is printed too. And (b) raw Ray tasks of the same
functions (``num_cpus=0``; the async one under ``asyncio.run``, as Ray requires), run once each
after the rest: each of the 1000 needs a worker process of its own, and the hundreds of workers
Ray starts for them take a while to go away, which would slow down whatever ran next.

shoal is timed end to end (build the plan, ``runtime.run``) on a runtime kept open across
trials, as an application would; trials are interleaved, best and median of the reps. Ray is
started once (``RAY_ADDRESS`` if set, else a local Ray) and shut down at the end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median

NAME = "ray_overhead"
TARGET = Target("ratio", "<=", 1.2)
FREE = {"num_cpus": 0}  # reserves nothing: shoal runs these calls on its actor pool


@shoal.tool
def noop(i: int) -> int:
    """Return ``i``."""
    return i


@shoal.tool
def nap_sync(seconds: float) -> float:
    """Block like a synchronous client, then return the wait."""
    time.sleep(seconds)
    return seconds


@shoal.tool
async def nap_async(seconds: float) -> float:
    """Await like an async client, then return the wait."""
    await asyncio.sleep(seconds)
    return seconds


def _run_async_fn(seconds: float) -> float:
    """The async tool as a raw Ray task can run it: under ``asyncio.run``."""
    waited: float = asyncio.run(nap_async.fn(seconds))
    return waited


class RawActor:
    """A hand-written async actor: the floor for concurrent I/O-bound calls on Ray."""

    def __init__(self) -> None:
        self._threads = ThreadPoolExecutor(1000)

    async def noop(self, i: int) -> int:
        return i

    async def nap(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def nap_blocking(self, seconds: float) -> float:
        """The sync tool's floor: blocking code needs a thread in any actor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, nap_sync.fn, seconds)


Trial = Callable[[], Awaitable[float]]


def shoal_trial(runtime: shoal.Runtime, tool: shoal.Tool[..., Any], n: int,
                bad: list[str], **args: Any) -> Trial:
    async def trial() -> float:
        start = time.perf_counter()
        plan = shoal.Plan()
        for i in range(n):
            plan.call(tool, **({"i": i} if "i" in tool.parameters else args))
        result = await runtime.run(plan)
        elapsed = time.perf_counter() - start
        if not result.ok or len(result) != n:
            bad.append(f"{tool.name}: {result.counts}")
        return elapsed

    return trial


def raw_trial(submit: Callable[[int], Any], n: int) -> Trial:
    async def trial() -> float:
        start = time.perf_counter()
        await asyncio.gather(*[submit(i) for i in range(n)])
        return time.perf_counter() - start

    return trial


def runtimes() -> dict[str, shoal.Runtime]:
    """One runtime per backend, each sending every call to that backend."""
    made = {"thread": shoal.Runtime(executor="thread"), "ray": shoal.Runtime(executor="ray")}
    if importlib.util.find_spec("shoal.executors.process") is not None:
        try:
            importlib.import_module("shoal.executors.process")
            made["process"] = shoal.Runtime(executor="process")
        except Exception as exc:  # another backend's bug must not stop this benchmark
            print(f"  process backend skipped: {type(exc).__name__}: {exc}")
    return made


async def per_node(result: BenchResult, ray: Any, n: int, reps: int, bad: list[str]) -> None:
    result.header(f"per-node overhead of a no-op sync tool, {n} calls, steady state "
                  f"(interleaved, {reps} reps)")
    rts = runtimes()
    actor = ray.remote(RawActor).options(num_cpus=0, max_concurrency=1000).remote()
    raw_task = ray.remote(noop.fn).options(num_cpus=1, max_retries=0)
    trials = {name: shoal_trial(rt, noop, n, bad) for name, rt in rts.items()}
    trials["ray pool"] = shoal_trial(rts["ray"], noop.options(resources=FREE), n, bad)
    trials["raw tasks"] = raw_trial(raw_task.remote, n)
    trials["raw actor"] = raw_trial(actor.noop.remote, n)
    try:
        for trial in trials.values():  # warm-up: workers, actors and pools up, untimed
            await trial()
        times = await interleave_async(reps, trials)
    finally:
        for rt in rts.values():
            await rt.aclose()
        ray.kill(actor)
    us = {name: min(t) / n * 1e6 for name, t in times.items()}
    for name in ("thread", "process"):
        if name in us:
            result.add(f"shoal {name}, per node (best)", us[name], "us")
    result.add("shoal ray (a task per call), per node (best)", us["ray"], "us",
               floor=us["raw tasks"])
    result.add("shoal ray pool (num_cpus=0), per node (best)", us["ray pool"], "us",
               floor=us["raw actor"])
    result.add("raw Ray tasks, per node (best)", us["raw tasks"], "us")
    result.add("raw async actor calls, per node (best)", us["raw actor"], "us")


async def fan_out(result: BenchResult, ray: Any, n: int, seconds: float, reps: int,
                  bad: list[str], raw_tasks: bool = True) -> None:
    result.header(f"{n} calls of {seconds * 1e3:g} ms with num_cpus=0: shoal on Ray vs a raw "
                  f"async actor (interleaved, {reps} reps), then raw Ray tasks")
    runtime = shoal.Runtime(executor="ray")
    actor = ray.remote(RawActor).options(num_cpus=0, max_concurrency=1000).remote()
    trials = {
        "raw actor": raw_trial(lambda _: actor.nap.remote(seconds), n),
        "raw actor, threads": raw_trial(lambda _: actor.nap_blocking.remote(seconds), n),
        "shoal async": shoal_trial(runtime, nap_async.options(resources=FREE), n, bad,
                                   seconds=seconds),
        "shoal sync": shoal_trial(runtime, nap_sync.options(resources=FREE), n, bad,
                                  seconds=seconds),
    }
    try:
        for trial in trials.values():
            await trial()
        times = await interleave_async(reps, trials)
    finally:
        await runtime.aclose()
        ray.kill(actor)
    floor_best = min(times["raw actor"])
    threads = times["raw actor, threads"]
    for name, floor in (("shoal async", times["raw actor"]), ("shoal sync", threads)):
        result.add(f"{name}, best of {reps}", min(times[name]), "s", floor=min(floor),
                   target=TARGET)
        result.add(f"{name}, median of {reps}", median(times[name]), "s", floor=median(floor))
    result.add(f"shoal sync vs the raw async actor, best of {reps}", min(times["shoal sync"]),
               "s", floor=floor_best)
    result.add(f"raw async actor (the floor), best of {reps}", floor_best, "s")
    result.add(f"raw actor, blocking sleep on its threads, best of {reps}", min(threads), "s",
               floor=floor_best)
    if not raw_tasks:  # a quick run: Ray starting a worker per task takes seconds
        return
    # Apart, and after: a thousand task workers take a while to go away, and would slow down
    # whatever ran next.
    for name, fn in (("sync", nap_sync.fn), ("async", _run_async_fn)):
        task = ray.remote(fn).options(num_cpus=0, max_retries=0)

        def submit(_: int, task: Any = task) -> Any:
            return task.remote(seconds)

        elapsed = await raw_trial(submit, n)()
        result.add(f"raw Ray tasks, {name} function, one run", elapsed, "s", floor=floor_best)


def main(quick: bool = False) -> BenchResult:
    result = BenchResult(NAME)
    if importlib.util.find_spec("ray") is None:
        result.skipped = "ray is not installed (pip install 'shoal[ray]')"
        print(f"[{NAME}] SKIPPED: {result.skipped}")
        return result
    import ray

    from shoal.executors.ray import RayExecutor

    per_node_n, fan_n, reps = (50, 100, 2) if quick else (1000, 1000, 5)
    bad: list[str] = []

    async def measure() -> None:
        connection = RayExecutor()  # holds Ray up for the whole benchmark
        await connection.start()
        try:
            await per_node(result, ray, per_node_n, reps, bad)
            await fan_out(result, ray, fan_n, 0.05, reps, bad, raw_tasks=not quick)
        finally:
            await connection.close()

    asyncio.run(measure())
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
