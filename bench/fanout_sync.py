"""1000 blocking calls of 50 ms through shoal's thread pool vs a raw ThreadPoolExecutor.

Floor: ``ThreadPoolExecutor(max_workers=1000)`` created inside the timed region, the 1000 calls
submitted and their results collected. shoal is timed end to end with ``shoal.run_sync(plan)``:
build the plan, start an event loop, create the Runtime and its default pool (up to 1000
threads), run. Both pools start cold inside the timed region, and neither is joined inside it
(shoal's run returns without joining its threads, so the floor's ``shutdown(wait=True)`` comes
after its timer stops); between trials we wait, untimed, until the last trial's threads exit.
Interleaved, best of 3. Target: shoal / floor <= 1.15.

Second workload: 10,000 trivial sync calls (``noop_sync(i)``), shoal end to end with
``shoal.run_sync(plan)`` (its default pool of up to 1000 threads) against a raw
``ThreadPoolExecutor`` of the same size: submit 10,000, collect the results. Both pools are
created cold inside the timed region. Target: shoal's calls/s >= 0.85 x the raw pool's.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import shoal
from bench.common import BenchResult, Target, cli, interleave, median, settle_threads

NAME = "fanout_sync"
TARGET = Target("ratio", "<=", 1.15)
#: shoal's calls/s over the raw pool's, for trivial calls
TRIVIAL_TARGET = Target("ratio", ">=", 0.85)
#: shoal's default pool: as many threads as calls in flight (max_concurrency, 1000)
POOL = 1000


@shoal.tool
def blocking_call(seconds: float) -> float:
    """Block the calling thread like a synchronous client would, then return the wait."""
    time.sleep(seconds)
    return seconds


@shoal.tool
def noop_sync(i: int) -> int:
    """Return ``i`` without doing anything, on a thread."""
    return i


def floor_trivial(n: int) -> float:
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=POOL)
    futures = [pool.submit(noop_sync.fn, i) for i in range(n)]
    for future in futures:
        future.result()
    elapsed = time.perf_counter() - start
    pool.shutdown(wait=True)
    return elapsed


def shoal_trivial(n: int, bad: list[str]) -> float:
    start = time.perf_counter()
    plan = shoal.Plan()
    for i in range(n):
        plan.call(noop_sync, i=i)
    result = shoal.run_sync(plan)
    elapsed = time.perf_counter() - start
    if not result.ok or len(result) != n:
        bad.append(repr(result))
    return elapsed


def floor_once(n: int, seconds: float) -> float:
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=n)
    futures = [pool.submit(blocking_call.fn, seconds) for _ in range(n)]
    for future in futures:
        future.result()
    elapsed = time.perf_counter() - start
    pool.shutdown(wait=True)
    return elapsed


def shoal_once(n: int, seconds: float, bad: list[str]) -> float:
    start = time.perf_counter()
    plan = shoal.Plan()
    for _ in range(n):
        plan.call(blocking_call, seconds=seconds)
    result = shoal.run_sync(plan)  # default pool: max(64, max_concurrency=1000) threads
    elapsed = time.perf_counter() - start
    if not result.ok or len(result) != n:
        bad.append(repr(result))
    return elapsed


def main(quick: bool = False) -> BenchResult:
    n, seconds, reps = (50, 0.05, 3) if quick else (1000, 0.05, 3)
    result = BenchResult(NAME)
    result.header(f"{n} sync calls of {seconds * 1e3:g} ms; shoal.run_sync (thread pool) vs "
                  f"ThreadPoolExecutor({n}) (cold pools, interleaved, {reps} reps)")
    baseline = threading.active_count()
    bad: list[str] = []

    def settled(trial: float) -> float:
        settle_threads(baseline)
        return trial

    times = interleave(reps, {
        "floor": lambda: settled(floor_once(n, seconds)),
        "shoal": lambda: settled(shoal_once(n, seconds, bad)),
    })
    shoal_t, floor_t = times["shoal"], times["floor"]
    result.add(f"wall time, best of {reps}", min(shoal_t), "s", floor=min(floor_t), target=TARGET)
    result.add(f"wall time, median of {reps}", median(shoal_t), "s", floor=median(floor_t))
    result.add("overhead beyond the floor, per call (best)",
               (min(shoal_t) - min(floor_t)) / n * 1e6, "us")
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    trivial(result, 500 if quick else 10_000, reps, baseline)
    return result


def trivial(result: BenchResult, n: int, reps: int, baseline: int) -> None:
    """10,000 trivial sync calls: shoal's calls/s against the raw pool's (same pool size)."""
    result.header(f"{n} trivial sync calls; shoal.run_sync vs ThreadPoolExecutor({POOL}) "
                  f"(cold pools, interleaved, {reps} reps)")
    bad: list[str] = []

    def settled(trial: float) -> float:
        settle_threads(baseline)
        return trial

    shoal_trivial(50, bad)  # warm-up, untimed
    times = interleave(reps, {
        "floor": lambda: settled(floor_trivial(n)),
        "shoal": lambda: settled(shoal_trivial(n, bad)),
    })
    shoal_t, floor_t = times["shoal"], times["floor"]
    result.add(f"trivial sync calls/s, best of {reps}", n / min(shoal_t), "calls/s",
               floor=n / min(floor_t), target=TRIVIAL_TARGET)
    result.add(f"trivial sync calls/s, median of {reps}", n / median(shoal_t), "calls/s",
               floor=n / median(floor_t))
    result.check("every trivial call ok", not bad, "; ".join(bad[:3]))


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
