"""A hostile user of timeouts, retries, limits, budgets and the virtual clock (sweep 38).

Each test here failed before the fix it names; time runs on the virtual clock of
:mod:`shoal.testing` wherever it matters.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import shoal
from shoal import ConfigError, ToolDefinitionError
from shoal.exceptions import ModelHTTPError
from shoal.models.base import (
    Model,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextDelta,
    Usage,
)
from shoal.models.prices import Price
from shoal.models.retry import ModelGates, ModelRetry
from shoal.testing import ScriptedModel, VirtualClockLoop, pause, run_virtual
from tests import process_tools as pt


def test_timers_due_at_one_instant_fire_in_the_order_they_were_set() -> None:
    # was: asyncio's heap of timers orders them by due time alone, and on the virtual clock
    # thousands are due at the very same time: they fired in heap order (0, 2, 6, 14, 30,
    # 4999, 4998, ...), where a real loop, whose clock moves between two call_later, fires
    # them in the order they were set
    loop = VirtualClockLoop()
    fired: list[object] = []

    def again(n: int) -> None:  # set from a timer's callback, at the same instant
        fired.append(("again", n))
        if n < 3:
            loop.call_at(10.0, again, n + 1)

    try:
        for i in range(5000):
            loop.call_at(10.0, fired.append, i)
        loop.call_at(10.0, again, 0)
        loop.call_at(5.0, fired.append, "first")
        handles = [loop.call_at(10.0, fired.append, f"dropped {i}") for i in range(100)]
        for handle in handles:  # cancelled ones make the loop rebuild its heap
            handle.cancel()
        loop.run_until_complete(asyncio.sleep(20))
    finally:
        loop.close()
    assert fired == ["first", *range(5000), *(("again", n) for n in range(4))]


def test_calls_that_sleep_alike_end_in_the_order_they_began() -> None:
    ended: list[int] = []

    @shoal.tool
    async def nap(i: int) -> int:
        """Sleep a second, then say so."""
        await asyncio.sleep(1)
        ended.append(i)
        return i

    plan = shoal.Plan()
    for i in range(50):
        plan.call(nap, i=i)
    result = run_virtual(shoal.run(plan))
    assert all(o.ok and o.finished_at == 1.0 for o in result.outcomes.values())
    assert ended == list(range(50))  # was [0, 2, 6, 14, 30, 49, 48, 47, ...]


class _FailsOnceMidStream(Model):
    """Streams 1,600 characters of plan or answer, failing with a 503 after them once.

    The bound on a stream is a token per 16 characters: 100 tokens for each attempt; the
    reply's usage is 110 tokens.
    """

    name = "midstream"
    streams_tool_calls = True

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then = first, then
        self.streams = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        """The plan's joiner: done."""
        return ModelResponse(self.then, usage=Usage(1, 1, requests=1))

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The reply: failing the first time, after its text."""
        self.streams += 1
        text = self.first + " " * (1600 - len(self.first))
        for start in range(0, 1600, 160):
            await asyncio.sleep(0.01)
            yield TextDelta(text[start : start + 160])
        if self.streams == 1:
            raise ModelHTTPError(self.name, "overloaded", 503)
        yield ResponseDone(ModelResponse(text, usage=Usage(10, 100, requests=1)))


@pytest.mark.parametrize("mode", ["tools", "plan"])
def test_a_stream_retried_midway_counts_its_text_once_against_the_token_budget(mode: str) -> None:
    # was: the text the failed attempt streamed still counted while its retry streamed the
    # reply again from its start: a reply of 110 tokens stopped the tree under
    # Budget(tokens=150), "used 160" (the retry's reply, once it ended, settled only itself)
    @shoal.tool
    async def echo(x: str) -> str:
        """Echo ``x``."""
        return x

    first = "1. echo('a')\n" if mode == "plan" else "the answer"
    model = _FailsOnceMidStream(first, "Thought: done.\nAction: Finish(done)")
    agent: shoal.Agent[str] = shoal.Agent(name="lead", model=model, tools=[echo], mode=mode)  # type: ignore[arg-type]
    gates = ModelGates(retry=ModelRetry(retries=1, backoff=0.1))
    result = run_virtual(agent.run("go", gates=gates, budget=shoal.Budget(tokens=150)))
    assert model.streams == 2 and gates.retries == 1
    assert result.usage.output_tokens >= 100 and result.usage.total_tokens <= 150


def test_a_thread_call_timed_out_by_the_virtual_clock_says_why() -> None:
    # was: a sync tool of 0.2 s (real) with timeout=10 ended timed_out at virtual 10 s, its
    # thread abandoned, saying only "did not finish within its timeout of 10 s": the virtual
    # clock leapt to the timeout while the thread worked (threads take no virtual time)
    @shoal.tool(timeout=10)
    def nap() -> str:
        """Sleep on the real clock."""
        time.sleep(0.2)
        return "rested"

    plan = shoal.Plan()
    plan.call(nap)
    outcome = run_virtual(shoal.run(plan)).outcomes["nap#1"]
    assert outcome.status == "timed_out" and outcome.abandoned
    assert (
        "timed out on the virtual clock of shoal.testing, where work on a thread or in a "
        "process takes no virtual time" in outcome.reason
    )
    assert "test the tool on a real event loop, or give it no timeout" in outcome.reason


def test_an_async_call_timed_out_by_the_virtual_clock_says_nothing_of_threads() -> None:
    @shoal.tool(timeout=10)
    async def hang() -> str:
        """Sleep on the virtual clock, past the timeout."""
        await asyncio.sleep(20)
        return "rested"

    plan = shoal.Plan()
    plan.call(hang)
    outcome = run_virtual(shoal.run(plan)).outcomes["hang#1"]
    assert (outcome.status, outcome.reason, outcome.finished_at) == ("timed_out", "", 10.0)


def test_a_process_call_on_the_virtual_clock_fails_at_once_saying_why() -> None:
    # was: failed after a leap of 120 virtual seconds with "the template process that starts
    # workers did not answer within 120 s" (a worker process answers in real time, which
    # the virtual clock does not wait for: it leapt past the wait at once)
    plan = shoal.Plan()
    plan.call(shoal.tool(pt.square).options(isolation="process"), x=3)
    outcome = run_virtual(shoal.run(plan)).outcomes["square#1"]
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.type == "shoal.exceptions.ExecutorError" and outcome.finished_at == 0.0
    assert (
        "cannot run on shoal.testing's virtual clock: a worker process answers in real "
        "time" in outcome.error.message
    )


@pytest.mark.parametrize("seed", [[1], {}, math.nan, True, object()])
@pytest.mark.parametrize(
    "make", [lambda seed: shoal.Runtime(seed=seed), lambda seed: ModelGates(seed=seed)]
)
def test_a_jitter_seed_of_no_use_is_refused_naming_it(seed: object, make: Any) -> None:
    # was: random's own TypeError ("The only supported seed types are: None, int, ..."),
    # naming neither the option nor the value; a NaN was taken, whose hash is its identity,
    # so the "reproducible" jitter differed at each run
    with pytest.raises(
        ConfigError,
        match=r"seed must be a whole number, text or bytes, or "
        r"None \(no seed\), got ",
    ):
        make(seed)


@pytest.mark.parametrize("seed", [7, "run-7", b"7", 2**100])
def test_a_jitter_seed_makes_the_same_waits_each_time(seed: object) -> None:
    def waits() -> list[float]:
        starts: list[float] = []

        @shoal.tool(retries=3, backoff=1.0, jitter=1.0)
        async def down() -> None:
            """Fail each time, noting when."""
            starts.append(asyncio.get_running_loop().time())
            raise ConnectionError("down")

        plan = shoal.Plan()
        plan.call(down)
        run_virtual(shoal.Runtime(seed=seed).run(plan))  # type: ignore[arg-type]
        return starts

    first = waits()
    assert len(first) == 4 and first == waits()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_model_timeout_too_large_for_a_float_is_refused_when_made(kind: str) -> None:
    # was: OpenAIModel(timeout=10**400) was taken, and each of its requests failed with an
    # OverflowError ("int too large to convert to float") from setting its timer
    from shoal.models.anthropic import AnthropicModel
    from shoal.models.openai import OpenAIModel

    make = OpenAIModel if kind == "openai" else AnthropicModel
    with pytest.raises(
        ConfigError,
        match=r"timeout must be a number of seconds a float can "
        r"hold \(None or math.inf for no limit\); got <a whole number of about "
        r"401 digits>",
    ):
        make("m", timeout=10**400, api_key="k")
    assert make("m", timeout=10**300, api_key="k").timeout == 10**300


@pytest.mark.parametrize(
    ("make", "error", "named"),
    [
        (lambda big: ModelRetry(backoff=big), ConfigError, "ModelRetry: backoff must be"),
        (lambda big: ModelRetry(max_backoff=big), ConfigError, "ModelRetry: max_backoff must be"),
        (
            lambda big: ModelRetry(max_retry_after=big),
            ConfigError,
            "ModelRetry: max_retry_after must be",
        ),
        (lambda big: ModelRetry(jitter=big), ConfigError, "ModelRetry: jitter must be"),
        (lambda big: pause(big), ValueError, "pause() takes a finite number of seconds"),
        (
            lambda big: VirtualClockLoop(start=big),
            ValueError,
            "VirtualClockLoop's start must be a finite number",
        ),
        (
            lambda big: ScriptedModel(["x"], tokens_per_second=big),
            ValueError,
            "tokens_per_second must be a positive number",
        ),
        (lambda big: ScriptedModel(["x"], latency=big), ValueError, "latency must be a finite"),
        (
            lambda big: ScriptedModel(["x"], tokens_per_second=1, first_token=big),
            ValueError,
            "first_token must be a finite number",
        ),
        (lambda big: Price(input=big, output=1), ConfigError, "Price.input must be a finite"),
        (lambda big: ModelSettings(temperature=big), ConfigError, "temperature must be a finite"),
    ],
)
def test_seconds_too_large_for_a_float_are_refused_naming_what(
    make: Any, error: type[Exception], named: str
) -> None:
    # was: math.isfinite's bare OverflowError ("int too large to convert to float"), naming
    # neither the setting nor its value
    with pytest.raises(
        error, match=re.escape(named) + ".* got <a whole number of about 401 digits>"
    ):
        make(10**400)


def test_a_clock_whose_epoch_is_too_large_for_a_float_is_refused_saying_so() -> None:
    class Far(shoal.Clock):
        def epoch(self) -> float:
            return 10**400

    @shoal.tool
    async def one() -> int:
        """Return 1."""
        return 1

    async def main() -> None:
        plan = shoal.Plan()
        plan.call(one)
        await shoal.Runtime(clock=Far(asyncio.get_running_loop())).run(plan)

    with pytest.raises(
        ConfigError,
        match=r"gave the date <a whole number of about 401 "
        r"digits>: its epoch\(\) must return finite epoch seconds",
    ):
        run_virtual(main())


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_deadline_the_virtual_clock_leapt_to_past_a_thread_call_says_why(
    timeout: float | None,
) -> None:
    # was: "the run's deadline of 10 s passed", of a sync tool of 0.2 s (real): the virtual
    # clock leapt to the deadline while the thread worked
    @shoal.tool(timeout=timeout)
    def nap() -> str:
        """Sleep on the real clock."""
        time.sleep(0.2)
        return "rested"

    plan = shoal.Plan()
    plan.call(nap)
    outcome = run_virtual(shoal.Runtime(deadline=10).run(plan)).outcomes["nap#1"]
    assert outcome.status == "timed_out" and outcome.abandoned
    assert outcome.reason.startswith(
        "the run's deadline of 10 s passed, on the virtual clock of shoal.testing, which "
        "leapt to it while calls ran on a thread or in a process"
    )


def test_a_deadline_on_the_virtual_clock_past_async_calls_says_only_so() -> None:
    @shoal.tool
    async def nap() -> str:
        """Sleep on the virtual clock, past the deadline."""
        await asyncio.sleep(20)
        return "rested"

    plan = shoal.Plan()
    plan.call(nap)
    outcome = run_virtual(shoal.Runtime(deadline=10).run(plan)).outcomes["nap#1"]
    assert (outcome.status, outcome.reason) == ("timed_out", "the run's deadline of 10 s passed")


@pytest.mark.parametrize(
    "make",
    [
        lambda: shoal.tool(retries=3, retry_on=[])(_one),
        lambda: shoal.tool(_one, retries=3).options(retry_on=()),
        lambda: shoal.RetryPolicy(retries=3, on=iter([])),
    ],
)
def test_retries_on_no_error_at_all_are_refused_when_made(make: Any) -> None:
    # was: taken, and never retried anything: an empty retry_on matches no error
    with pytest.raises(
        ToolDefinitionError,
        match=r"retry_on is empty: it matches no error, so "
        r"retries=3 would never retry; give the exception classes to retry on",
    ):
        make()


def test_an_empty_retry_on_without_retries_still_stands() -> None:
    assert shoal.tool(retry_on=[])(_one).policy.retry.on == ()


def _one() -> int:
    """Return 1 (made into tools, never run)."""
    return 1
