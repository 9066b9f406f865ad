"""Per-tool limits hold across every run of one runtime: parallel plans and agent trees."""

from __future__ import annotations

import asyncio
import time

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.conftest import Gauge, arun, elapsed


def test_two_concurrent_runs_share_a_tools_max_concurrency() -> None:
    gauge = Gauge()

    @shoal.tool(max_concurrency=2)
    async def fetch(i: int) -> int:
        """Fetch one item."""
        with gauge:
            await asyncio.sleep(0.02)
        return i

    def plan(n: int) -> shoal.Plan:
        p = shoal.Plan()
        for i in range(n):
            p.call(fetch, i=i)
        return p

    async def main() -> list[shoal.RunResult]:
        async with shoal.Runtime() as runtime:
            return await asyncio.gather(*(runtime.run(plan(8)) for _ in range(3)))

    results, took = arun(elapsed(main()), virtual=True)
    assert all(r.ok for r in results)
    assert gauge.total == 24
    assert gauge.peak == 2  # not 2 per run
    assert took == pytest.approx(12 * 0.02, abs=1e-9)  # the virtual clock: 24 calls, 2 at a time


def test_a_subagent_tree_shares_a_tools_max_concurrency() -> None:
    gauge = Gauge()

    @shoal.tool(max_concurrency=2)
    async def search(query: str) -> str:
        """Search (the API allows two requests at a time)."""
        with gauge:
            await asyncio.sleep(0.03)
        return f"hits for {query}"

    sub = shoal.Agent(name="researcher", tools=[search], model=ScriptedModel.per_prompt({
        "*": [lambda req: [call("search", query=f"{req.messages[0].content}/{k}")
                           for k in range(3)], "done"]}))
    lead = shoal.Agent(name="lead", subagents=[sub], model=ScriptedModel(
        [[call("researcher", task=f"t{i}") for i in range(4)], "report"]))

    result, took = arun(elapsed(lead.run("go")), virtual=True)
    assert result.output == "report"
    assert [c.status for child in result.children for c in child.calls] == ["ok"] * 12
    assert gauge.peak == 2  # across the four subagents' tool phases together
    assert took == pytest.approx(6 * 0.03, abs=1e-9)  # the virtual clock: 12 calls, 2 at a time


def test_a_rate_limit_is_shared_by_concurrent_runs() -> None:
    @shoal.tool(rate="10/s")
    async def ping(i: int) -> int:
        """Ping."""
        return i

    def plan() -> shoal.Plan:
        p = shoal.Plan()
        for i in range(10):
            p.call(ping, i=i)
        return p

    async def main() -> tuple[tuple[shoal.RunResult, shoal.RunResult], float]:
        async with shoal.Runtime() as runtime:
            return await elapsed(asyncio.gather(runtime.run(plan()), runtime.run(plan())))

    results, took = arun(main(), virtual=True)
    assert all(r.ok for r in results)
    # 10 tokens at once, then 10 per second: on the virtual clock the last of the twenty starts
    # at exactly 1 s, where per-run buckets would let all twenty through at once
    assert took == pytest.approx(1.0, abs=1e-9), took


def test_runs_share_the_thread_workers_gate_made_by_the_first_that_needs_it() -> None:
    gauge = Gauge()

    @shoal.tool
    async def quick(i: int) -> int:
        """Run inline: needs no worker."""
        return i

    @shoal.tool
    def slow(i: int) -> int:
        """Run on a pool thread."""
        with gauge:
            time.sleep(0.02)
        return i

    def plan(tool: shoal.Tool[..., int], n: int) -> shoal.Plan:
        p = shoal.Plan()
        for i in range(n):
            p.call(tool, i=i)
        return p

    async def main() -> list[shoal.RunResult]:
        async with shoal.Runtime(thread_workers=2) as runtime:
            inline = await runtime.run(plan(quick, 5))
            made_by_inline_runs = dict(runtime._limits.executor_limits)
            pooled = await asyncio.gather(*(runtime.run(plan(slow, 4)) for _ in range(3)))
            gates = runtime._limits.executor_limits
            assert made_by_inline_runs == {}  # no worker was needed: no gate made
            assert [(name, g.capacity, g.in_use) for name, g in gates.items()] == [
                ("thread", 2, 0)]  # one for every run, all given back
            return [inline, *pooled]

    results = arun(main())
    assert all(r.ok for r in results)
    assert gauge.total == 12
    assert gauge.peak == 2  # the runtime's two workers, not two per run
