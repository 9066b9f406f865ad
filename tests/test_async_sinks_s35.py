"""An ``async def`` event sink is refused where it is given; a stream has one reader (session 35).

A sink is called with each event and never awaited: an async one made a coroutine per event
that nothing ran (it saw no event, and Python warned "never awaited" once per event). A plain
sink that returns a coroutine is found when it does, and logged as a failing sink.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import pytest

import shoal
from shoal.events import Event
from shoal.exceptions import ConfigError
from shoal.testing import ScriptedModel, run_virtual


@shoal.tool
async def echo(x: int) -> int:
    """Echo ``x``."""
    return x


def _plan() -> shoal.Plan:
    plan = shoal.Plan()
    plan.call(echo, x=1)
    return plan


async def _async_sink(event: Event) -> None:
    del event


async def _tagged_sink(tag: str, event: Event) -> None:
    del tag, event


class _AsyncCallable:
    async def __call__(self, event: Event) -> None:
        del event


@pytest.mark.parametrize("sink", [_async_sink, functools.partial(_tagged_sink, "t"),
                                  _AsyncCallable(), [print, _async_sink]],
                         ids=["function", "partial", "callable object", "one of a list"])
def test_an_async_sink_is_refused_saying_how_to_read_events_async(sink: Any) -> None:
    says = r"on_event= takes plain functions \(a sink is called, never awaited\)"
    with pytest.raises(ConfigError, match=says):
        shoal.run_sync(_plan(), on_event=sink)
    with pytest.raises(ConfigError, match=says):
        shoal.Runtime(on_event=sink)
    with pytest.raises(ConfigError, match=says):
        shoal.Agent(name="a", model=ScriptedModel(["x"])).run_sync("go", on_event=sink)


def test_a_plain_sink_returning_a_coroutine_is_logged_and_the_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = shoal.run_sync(_plan(), on_event=lambda event: _async_sink(event))
    assert result.ok
    assert "to be awaited: a sink is called, never awaited" in caplog.text


def test_a_plain_sink_and_a_callable_object_still_see_every_event() -> None:
    seen: list[str] = []

    class Recorder:
        def __call__(self, event: Event) -> None:
            seen.append(event.kind)

    assert shoal.run_sync(_plan(), on_event=[Recorder(), lambda event: None]).ok
    assert seen == ["RunStarted", "NodeQueued", "NodeStarted", "NodeFinished", "RunFinished"]


def test_a_second_task_reading_a_stream_is_told_a_stream_has_one_reader() -> None:
    # it got asyncio's "anext(): asynchronous generator is already running"
    @shoal.tool
    async def nap(seconds: float) -> float:
        """Sleep ``seconds``."""
        await asyncio.sleep(seconds)
        return seconds

    plan = shoal.Plan()
    for i in range(3):
        plan.call(nap, seconds=0.1 * i)

    async def main() -> tuple[Any, Any]:
        stream = shoal.stream(plan)

        async def read() -> list[str]:
            return [type(item).__name__ async for item in stream]

        first, second = await asyncio.gather(read(), read(), return_exceptions=True)
        return first, second

    first, second = run_virtual(main())
    assert isinstance(first, list) and first[-1] == "RunResult"
    assert isinstance(second, RuntimeError) and "a stream has one reader" in str(second)
