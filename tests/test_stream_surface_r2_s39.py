"""Found by attacking shoal's event streams, session 39 (second round)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal.events import Event, EventsDropped, NodeStarted
from shoal.exceptions import ConfigError
from shoal.outcome import RunResult
from shoal.streaming import _SharedBuffer
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


def test_events_left_out_while_read_from_another_thread_are_all_counted() -> None:
    # an open run's stream may be read on another thread's loop: the run's thread added to
    # an EventsDropped (or joined text to a piece) the reader had just taken: the count
    # (the text) was lost. Real threads, switching as often as Python lets them.
    buffer = _SharedBuffer(1)  # an open run's stream's
    event = NodeStarted(run_id="r", time=0.0, node_id="n", tool="t", attempt=1,
                        executor="inline")
    total, done, seen = 100_000, threading.Event(), [0]

    def read() -> None:
        while not done.is_set() or buffer._slots:
            item = buffer.pop()
            if item is not None:
                seen[0] += item.count if isinstance(item, EventsDropped) else 1

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        reader = threading.Thread(target=read)
        reader.start()
        for _ in range(total):
            buffer(event)
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(before)
    assert seen[0] == total


def test_an_open_runs_stream_is_the_one_locked() -> None:
    async def go() -> tuple[bool, bool]:
        async with shoal.Runtime() as runtime:
            run = runtime.open_run()
            async with run:
                events = run.events()
            async for _ in events:
                pass
            plain = shoal.stream(two_naps())
            async for _ in plain:
                pass
            return (isinstance(events._run.buffer, _SharedBuffer),
                    isinstance(plain._run.buffer, _SharedBuffer))

    assert run_virtual(go()) == (True, False)


def generator_sink(event: Event) -> Iterator[None]:
    seen.append(event.kind)  # never runs: calling it only makes a generator
    yield


seen: list[str] = []


class GeneratorCall:
    def __call__(self, event: Event) -> Iterator[None]:
        seen.append(event.kind)
        yield


@pytest.mark.parametrize("sink", [generator_sink, GeneratorCall()])
def test_a_sink_that_yields_is_refused_as_an_async_one_is(sink: Any) -> None:
    # was: taken; each call made a generator that never ran: no event handled, no word
    with pytest.raises(ConfigError, match="generator"):
        shoal.Runtime(on_event=sink)
    assert seen == []
