"""Limits hold exactly: run-wide, per tool, per resource key, and rates (a token bucket)."""

import asyncio
import time
from typing import Any

import pytest

import shoal
from shoal import ConfigError, Plan, Rate, RunResult, Runtime, parse_rate, tool
from shoal.limits import ConcurrencyLimit, RateLimiter, first_blocked
from tests.conftest import Gauge, Stamps, arun
from tests.spans import started

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

BURST = 200


# ---- the bookkeeping itself ---------------------------------------------------------------------


def test_concurrency_limit_counts() -> None:
    limit = ConcurrencyLimit("x", 2)
    assert limit.available()
    limit.acquire()
    limit.acquire()
    assert not limit.available()
    limit.release()
    assert limit.available()
    unbounded = ConcurrencyLimit("y", None)
    for _ in range(1000):
        unbounded.acquire()
    assert unbounded.available()
    assert first_blocked([unbounded, limit]) is None
    limit.acquire()
    assert first_blocked([unbounded, limit]) is limit
    with pytest.raises(ConfigError):
        ConcurrencyLimit("z", 0)


def test_rate_limiter_is_a_token_bucket() -> None:
    bucket = RateLimiter("t", Rate(4, 1.0))
    for _ in range(4):  # starts full
        assert bucket.wait_time(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.25)
    assert bucket.wait_time(0.1) == pytest.approx(0.15)
    assert bucket.wait_time(0.25) == 0.0
    bucket.take(0.25)
    assert bucket.wait_time(0.25) == pytest.approx(0.25)
    assert bucket.wait_time(100.0) == 0.0  # refills, but never beyond its size
    for _ in range(4):
        bucket.take(100.0)
    assert bucket.wait_time(100.0) > 0


def test_slow_rates_wait_long() -> None:
    bucket = RateLimiter("t", parse_rate("5/10s"))
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(2.0)
    assert str(parse_rate("100/min")) == "100/60s"


# ---- the runtime honours them exactly -----------------------------------------------------------


def burst_of(t: Any, n: int = BURST, **args: Any) -> Plan:
    plan = Plan()
    for i in range(n):
        plan.call(t, i=i, **args)
    return plan


def test_the_global_limit_holds_exactly(gauge: Gauge) -> None:
    @tool
    async def probe(i: int) -> int:
        with gauge:
            await asyncio.sleep(0.003)
        return i

    result = shoal.run_sync(burst_of(probe), max_concurrency=7)
    assert result.ok and gauge.total == BURST
    assert gauge.peak == 7


def test_the_global_limit_holds_for_sync_tools(gauge: Gauge) -> None:
    @tool
    def probe(i: int) -> int:
        with gauge:
            time.sleep(0.003)
        return i

    result = shoal.run_sync(burst_of(probe, 100), max_concurrency=5)
    assert result.ok
    assert gauge.peak == 5


def test_a_per_tool_limit_holds_exactly_while_others_run_freely() -> None:
    limited, free = Gauge(), Gauge()

    @tool(max_concurrency=3)
    async def capped(i: int) -> int:
        with limited:
            await asyncio.sleep(0.003)
        return i

    @tool
    async def uncapped(i: int) -> int:
        with free:
            await asyncio.sleep(0.05)
        return i

    plan = burst_of(capped)
    for i in range(20):
        plan.call(uncapped, i=i)
    result = shoal.run_sync(plan)
    assert result.ok
    assert limited.total == BURST and limited.peak == 3
    assert free.peak == 20


def test_a_per_tool_limit_holds_for_sync_tools(gauge: Gauge) -> None:
    @tool(max_concurrency=4)
    def capped(i: int) -> int:
        with gauge:
            time.sleep(0.003)
        return i

    assert shoal.run_sync(burst_of(capped, 100)).ok
    assert gauge.peak == 4


def test_a_per_call_override_has_its_own_limit() -> None:
    one, two = Gauge(), Gauge()

    @tool
    async def probe(i: int, which: str) -> int:
        with one if which == "one" else two:
            await asyncio.sleep(0.005)
        return i

    plan = Plan()
    for i in range(40):
        plan.call(probe.options(max_concurrency=1), i=i, which="one")
        plan.call(probe.options(max_concurrency=2), i=i, which="two")
    assert shoal.run_sync(plan).ok
    assert one.peak == 1 and two.peak == 2


def test_resource_limits_hold_per_key() -> None:
    per_host = {h: Gauge() for h in ("a", "b", "c", "d")}
    overall = Gauge()

    @tool(reads="host:{host}")
    async def fetch(i: int, host: str) -> int:
        with overall, per_host[host]:
            await asyncio.sleep(0.005)
        return i

    plan = Plan()
    for i in range(BURST):
        plan.call(fetch, i=i, host="abcd"[i % 4])
    result = shoal.run_sync(plan, resource_limits={"host:*": 2})
    assert result.ok
    assert {h: g.peak for h, g in per_host.items()} == dict.fromkeys("abcd", 2)
    assert overall.peak == 8  # each key has its own limit


def test_keys_matching_no_pattern_are_unlimited_and_the_first_pattern_wins() -> None:
    db, other = Gauge(), Gauge()

    @tool(reads="{kind}:{name}")
    async def touch(i: int, kind: str, name: str) -> int:
        with db if kind == "db" else other:
            await asyncio.sleep(0.01)
        return i

    plan = Plan()
    for i in range(30):
        plan.call(touch, i=i, kind="db", name="main")
        plan.call(touch, i=i, kind="cache", name="main")
    result = shoal.run_sync(plan, resource_limits={"db:*": 1, "db:main": 5})
    assert result.ok
    assert db.peak == 1
    assert other.peak == 30


def test_limits_combine(gauge: Gauge) -> None:
    @tool(max_concurrency=10, reads="k:{k}")
    async def probe(i: int, k: str) -> int:
        with gauge:
            await asyncio.sleep(0.003)
        return i

    plan = Plan()
    for i in range(100):
        plan.call(probe, i=i, k=str(i % 10))
    assert shoal.run_sync(plan, max_concurrency=4, resource_limits={"k:*": 1}).ok
    assert gauge.peak == 4


@pytest.mark.slow
def test_a_rate_limit_is_a_token_bucket_on_starts(stamps: Stamps) -> None:
    @tool(rate="20/s")
    async def rated(i: int) -> int:
        stamps.mark(str(i))
        return i

    start = time.perf_counter() - stamps.t0
    result = shoal.run_sync(burst_of(rated, 30))
    assert result.ok
    starts = sorted(t - start for _, t in stamps.items)
    assert len(starts) == 30
    for k, moment in enumerate(starts, start=1):
        allowed = 20 + moment * 20 + 1  # a full bucket, the refill so far, one start of slack
        assert k <= allowed, f"start #{k} at {moment:.3f} s: the bucket allows {allowed:.1f}"
    assert starts[19] < 0.2  # the first 20 go at once
    assert 0.4 < starts[-1] < 1.5  # the other 10 at ~20/s, not all at once and not stalled


def test_a_rate_limit_applies_to_sync_tools(stamps: Stamps) -> None:
    @tool(rate="10/s")
    def rated(i: int) -> int:
        stamps.mark(str(i))
        return i

    start = time.perf_counter() - stamps.t0
    assert shoal.run_sync(burst_of(rated, 13)).ok
    starts = sorted(t - start for _, t in stamps.items)
    assert starts[-1] >= 0.25  # 3 calls past the bucket need 0.3 s of refill


# ---- bugs ---------------------------------------------------------------------------------------


def test_cancelling_a_queued_node_behind_a_tool_limit_does_not_hang_the_run() -> None:
    @tool(max_concurrency=1)
    async def one_at_a_time(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    plan = burst_of(one_at_a_time, 3)

    async def main() -> RunResult:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(0.01)
            handle.cancel("one_at_a_time#2")
            return await handle

    result = arun(main(), timeout=1.0, check_tasks=False)
    assert [o.status for o in result] == ["ok", "cancelled", "ok"]


def test_a_rerank_does_not_hang_a_run_with_limits() -> None:
    @tool
    async def plain(seconds: float, data: Any = None) -> str:
        await asyncio.sleep(seconds)
        return "plain"

    @tool(reads="k:{key}")
    async def keyed(key: str, seconds: float, data: Any = None) -> str:
        await asyncio.sleep(seconds)
        return key

    plan = Plan()
    first = plan.call(plain, seconds=0.01)
    plan.call(keyed, key="a", seconds=0.01, data=first)
    plan.call(keyed, key="a", seconds=0.01, data=first)
    plan.call(plain, seconds=0.05)
    plan.call(keyed, key="a", seconds=0.1)
    run = shoal.run(plan, max_concurrency=3, resource_limits={"k:*": 1})
    result = arun(run, timeout=1.5, check_tasks=False)
    assert result.ok


@pytest.mark.slow
def test_a_free_tool_slot_is_not_left_idle_behind_a_busy_key() -> None:
    @tool(max_concurrency=1, reads="k:{key}")
    async def t(key: str) -> str:
        await asyncio.sleep(0.1)
        return key

    @tool(reads="k:{key}")
    async def hog(key: str) -> str:
        await asyncio.sleep(0.6)
        return key

    plan = Plan()
    plan.call(hog, key="a")
    plan.call(t, key="b")
    plan.call(t, key="a")
    c = plan.call(t, key="c")
    result = shoal.run_sync(plan, resource_limits={"k:*": 1})
    assert result.ok
    assert started(result[c]) < 0.4, "t(key='c') waited for an unrelated key"
