"""What an approval costs: 100 gated no-op calls approved by a callback, against 100 ungated.

Both sides run the same plan of 100 no-op async calls on a fresh runtime (default in-memory
journal). "gated" adds ``approval=True`` and ``Runtime(approver=lambda request: True)``: each
call is asked about (all 100 in one batch), its request and decision are stored in the
journal, the decision is marked used, and the arguments' hash is checked again before it
starts. The difference per call is the approval round trip's overhead, shoal's own share of
it: a person or a remote approval service adds their own time on top. Interleaved, best of 5.
"""

from __future__ import annotations

import asyncio
import time

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median

NAME = "approvals"
TARGET = Target("value", "<=", 200.0)  # microseconds of overhead per gated call


@shoal.tool
async def noop(i: int) -> int:
    """Return ``i``."""
    return i


gated = noop.options(approval=True)


async def once(n: int, tool: shoal.Tool[..., int], approver: object, bad: list[str]) -> float:
    plan = shoal.Plan()
    for i in range(n):
        plan.call(tool, i=i)
    start = time.perf_counter()
    async with shoal.Runtime(approver=approver) as runtime:  # type: ignore[arg-type]
        result = await runtime.run(plan)
    elapsed = time.perf_counter() - start
    if not result.ok or len(result) != n:
        bad.append(repr(result.counts))
    return elapsed


def main(quick: bool = False) -> BenchResult:
    n, reps = (100, 3) if quick else (100, 5)
    result = BenchResult(NAME)
    result.header(f"{n} no-op calls: gated and auto-approved by a callback vs not gated "
                  f"(interleaved, best of {reps})")
    bad: list[str] = []

    def approve(request: object) -> bool:
        return True

    async def measure() -> dict[str, list[float]]:
        await once(10, gated, approve, bad)  # warm-up, untimed
        return await interleave_async(reps, {
            "ungated": lambda: once(n, noop, None, bad),
            "gated": lambda: once(n, gated, approve, bad),
        })

    times = asyncio.run(measure())
    best_gated, best_plain = min(times["gated"]), min(times["ungated"])
    result.add("run of 100 gated calls, best", best_gated * 1e3, "ms", floor=best_plain * 1e3)
    result.add("approval overhead per call, best", (best_gated - best_plain) / n * 1e6, "us",
               target=TARGET)
    result.add("approval overhead per call, median",
               (median(times["gated"]) - median(times["ungated"])) / n * 1e6, "us")
    result.check("every call ok", not bad, "; ".join(bad[:3]))
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
