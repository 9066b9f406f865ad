"""Found by attacking shoal's event streams, session 39 (second round)."""

from __future__ import annotations

import shoal
from shoal.events import Event
from shoal.outcome import RunResult
from shoal.testing import run_virtual
from tests.test_otel import nap


def two_naps() -> shoal.Plan:
    plan = shoal.Plan()
    plan.call(nap, seconds=0.5, tag="a")
    plan.call(nap, seconds=5.0, tag="b")
    return plan


def test_a_stream_closed_early_gives_its_ended_runs_result() -> None:
    # was: RunNotEndedError 'the stream has not ended yet': the run had ended (cancelled,
    # every outcome recorded) and its result, the one finished call's value with it, was
    # out of the caller's reach
    async def go() -> RunResult:
        async with shoal.stream(two_naps()) as events:
            async for item in events:
                if isinstance(item, Event) and item.kind == "NodeFinished":
                    break
        return events.result

    result = run_virtual(go())
    assert {k: v for k, v in result.counts.items() if v} == {"ok": 1, "cancelled": 1}
    assert [o.value for o in result.outcomes.values() if o.ok] == ["a"]


def test_an_open_runs_stream_closed_before_its_first_item_gives_the_result() -> None:
    async def go() -> RunResult:
        async with shoal.Runtime() as runtime:
            run = runtime.open_run()
            async with run:
                events = run.events()
                run.call(nap, seconds=5.0, tag="x")
                await events.aclose()
            return events.result

    result = run_virtual(go())
    assert {k: v for k, v in result.counts.items() if v} == {"cancelled": 1}
