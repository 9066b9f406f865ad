"""What OpenTelemetry costs: 10,000 no-op async calls with ``shoal.otel`` off, on, and raw.

The workload of ``trivial.py`` (build a plan of 10,000 ``noop(i)`` calls, ``await
shoal.run(plan)``), timed three ways, interleaved, best of 3: not instrumented ("off", what
every program pays that never calls ``shoal.otel.instrument()``), instrumented with the SDK's
tracer provider and an in-memory exporter ("on": a span per call and per run, each exported as
it ends), and the floor, a raw ``asyncio.gather`` of the same coroutines.

"Off" costs one ``is None`` check per run, per agent tree and per call attempt, so its
throughput is ``trivial.py``'s. Needs the ``otel`` extra.
"""

from __future__ import annotations

import asyncio
import time

import shoal
from bench.common import BenchResult, cli, interleave_async

NAME = "otel_overhead"


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
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    n, reps = (500, 3) if quick else (10_000, 3)
    result = BenchResult(NAME)
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

    async def measure() -> dict[str, list[float]]:
        await shoal_once(50, bad)  # warm-up, untimed
        return await interleave_async(reps, {
            "floor": lambda: floor_once(n), "off": off, "on": on})

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
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    result.check("on: one span per call and one for the run", spans == [n + 1] * reps,
                 f"spans exported per rep: {spans}")
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
