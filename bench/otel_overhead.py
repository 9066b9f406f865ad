"""What OpenTelemetry costs: 10,000 no-op async calls with ``shoal.otel`` off, on, and raw.

The workload of ``trivial.py`` (build a plan of 10,000 ``noop(i)`` calls, ``await
shoal.run(plan)``), timed three ways, interleaved, best of 3: not instrumented ("off", what
every program pays that never calls ``shoal.otel.instrument()``), instrumented with the SDK's
tracer provider and an in-memory exporter ("on": a span per call and per run, each exported as
it ends), and the floor, a raw ``asyncio.gather`` of the same coroutines.

"Off" costs one look at ``shoal.instrumentation.active`` per run and per agent tree, and one
``is None`` check per call attempt. What that costs cannot be timed by leaving it out (it is
the same code), so it is bounded: the checks a run of ``trivial.py`` makes (one per call, one
for the run) are timed on their own, as the driver makes them (an attribute read, a test, a
branch, in a Python loop whose own cost is counted too), and set against the best "off" run.
Target: that share <= 2 % (issue: "the disabled path costs < 2 % on the trivial benchmark").
The spread between "off" runs is printed beside it, as the noise any direct comparison would
have to beat. Needs the ``otel`` extra (without it, skipped).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median

NAME = "otel_overhead"
#: The disabled path's share of a trivial run, in percent.
TARGET = Target("value", "<=", 2.0)


class _Driver:
    """Holds ``_observer`` as the scheduler's driver does (``None``: not instrumented)."""

    def __init__(self) -> None:
        self._observer: object | None = None


def checks_once(n: int) -> float:
    """Seconds for ``n`` of the driver's per-attempt checks, and the run's one look, timed."""
    driver = _Driver()
    start = time.perf_counter()
    observing = shoal.instrumentation.active  # the run's one look
    for _ in range(n):  # the loop's own cost is counted too: a bound, not an estimate
        observer = driver._observer
        _ = 0 if observer is None else 1
    elapsed = time.perf_counter() - start
    assert observing is None
    return elapsed


@shoal.tool
async def noop(i: int) -> int:
    """Return ``i`` without doing anything."""
    return i


async def floor_once(n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(noop.fn(i) for i in range(n)))
    return time.perf_counter() - start


async def shoal_once(n: int, bad: list[str]) -> float:
    start = time.perf_counter()
    plan = shoal.Plan()
    for i in range(n):
        plan.call(noop, i=i)
    result = await shoal.run(plan)
    elapsed = time.perf_counter() - start
    if not result.ok or len(result) != n:
        bad.append(repr(result))
    return elapsed


def main(quick: bool = False) -> BenchResult:
    result = BenchResult(NAME)
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        result.skipped = "the otel extra is not installed (pip install 'shoal[otel]')"
        print(f"[{NAME}] SKIPPED: {result.skipped}")
        return result
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # quick (the test suite's) checks one span a call and every call ok: one short rep shows it
    n, reps = (200, 1) if quick else (10_000, 5)
    result.header(f"{n} no-op async calls: shoal.otel off / on (SDK, in-memory exporter) / "
                  f"raw asyncio (interleaved, {reps} reps)")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bad: list[str] = []
    spans: list[int] = []

    async def off() -> float:
        shoal.otel.uninstrument()
        return await shoal_once(n, bad)

    async def on() -> float:
        exporter.clear()
        shoal.otel.instrument(provider)
        try:
            return await shoal_once(n, bad)
        finally:
            shoal.otel.uninstrument()
            spans.append(len(exporter.get_finished_spans()))

    async def checks() -> float:
        return checks_once(n + 1)  # one per call attempt, one for the run

    async def measure() -> dict[str, list[float]]:
        await shoal_once(50, bad)  # warm-up, untimed
        return await interleave_async(reps, {
            "floor": lambda: floor_once(n), "off": off, "on": on,
            "checks": checks})

    try:
        times = asyncio.run(measure())
    finally:
        shoal.otel.uninstrument()
        provider.shutdown()
    off_best, on_best = min(times["off"]), min(times["on"])
    result.add(f"off: throughput, best of {reps}", n / off_best, "nodes/s")
    result.add(f"on: throughput, best of {reps}", n / on_best, "nodes/s")
    result.add("floor: asyncio tasks, best", n / min(times["floor"]), "nodes/s")
    result.add("on / off, time per node", on_best / off_best, "x")
    result.add("on: added time per node", (on_best - off_best) / n * 1e6, "us")
    checked = median(times["checks"])
    result.add("off: the hook checks, per node", checked / n * 1e9, "ns")
    result.add("off: the hook checks, share of the best off run", checked / off_best * 100,
               "%", target=TARGET)
    result.add("off: spread of the off runs (max / min - 1)",
               (max(times["off"]) / off_best - 1) * 100, "%")
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    result.check("on: one span per call and one for the run", spans == [n + 1] * reps,
                 f"spans exported per rep: {spans}")
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
