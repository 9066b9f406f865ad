"""A tool that hands back work still to be awaited fails, on every backend, saying so.

A forgotten ``await`` used to be recorded ``ok`` and a model was sent ``<coroutine object
...>``. The coroutine is closed (no "never awaited" warning), a task or future cancelled.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal import Plan, Runtime
from shoal.testing import ScriptedModel, call
from tests import unawaited_tools as ut
from tests.conftest import ONE_AT_A_TIME, arun

FORGOT = "returned a coroutine; did you forget 'await'?"


def run_one(fn: Callable[..., Any], isolation: str, **options: Any) -> shoal.Outcome:
    plan = Plan()
    node = plan.add(shoal.tool(fn, isolation=isolation), {"url": "u"})

    async def go() -> shoal.RunResult:
        async with Runtime(**options) as runtime:
            return await runtime.run(plan)

    return arun(go(), timeout=120)[node]


def assert_fails_with(outcome: shoal.Outcome, text: str) -> None:
    assert outcome.status == "failed", outcome
    assert outcome.error is not None
    assert outcome.error.type == "shoal.exceptions.ToolDefinitionError"
    assert text in outcome.error.message, outcome.error.message
    assert repr(outcome.tool) in outcome.error.message  # names the tool


@pytest.mark.parametrize(("fn", "isolation"), [
    (ut.forgot_await, "inline"),
    (ut.forgot_await, "thread"),
    (ut.sync_returns_coroutine, "thread"),
    (ut.forgot_await, "process"),
    (ut.sync_returns_coroutine, "process"),
])
def test_a_returned_coroutine_fails_the_call_without_a_never_awaited_warning(
        fn: Callable[..., Any], isolation: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run_one(fn, isolation)
        gc.collect()  # an unclosed coroutine warns when it is collected
    assert_fails_with(outcome, FORGOT)
    assert not [w for w in caught if "never awaited" in str(w.message)]


@pytest.mark.parametrize(("fn", "isolation", "text"), [
    (ut.returns_task, "inline", "returned an asyncio task; did you forget 'await'?"),
    (ut.returns_future, "inline", "returned a future; did you forget 'await'?"),
    (ut.returns_awaitable, "thread", "returned an awaitable (Pending); did you forget 'await'?"),
    (ut.stream, "thread", "returned an async generator; return a list instead"),
    (ut.stream, "process", "returned an async generator; return a list instead"),
])
def test_other_unfinished_work_fails_the_call_too(fn: Callable[..., Any], isolation: str,
                                                  text: str) -> None:
    assert_fails_with(run_one(fn, isolation), text)


def test_a_returned_task_is_cancelled_not_left_running() -> None:
    seen: list[Any] = []

    async def starts_task(url: str) -> Any:
        import asyncio

        task = asyncio.get_running_loop().create_task(asyncio.sleep(30, url))
        seen.append(task)
        return task

    assert_fails_with(run_one(starts_task, "inline"), "asyncio task")
    assert seen[0].cancelled() or seen[0].cancelling()


@ONE_AT_A_TIME  # the one Ray head
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
@pytest.mark.timeout(300)
def test_a_returned_coroutine_fails_on_ray_as_well() -> None:
    plan = Plan()
    node = plan.add(shoal.tool(ut.forgot_await, isolation="ray"), {"url": "u"})

    async def go() -> shoal.RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    outcome = arun(go(), timeout=280)[node]
    assert outcome.status == "failed", outcome
    assert outcome.error is not None and FORGOT in outcome.error.message


def test_real_results_pass_untouched() -> None:
    def plain(url: str) -> dict[str, Any]:
        return {"url": url, "items": (1, 2)}

    outcome = run_one(plain, "thread")
    assert outcome.ok and outcome.value == {"url": "u", "items": (1, 2)}


def test_an_agent_is_told_about_the_forgotten_await_never_a_coroutine_repr() -> None:
    model = ScriptedModel([[call("forgot_await", url="x")], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[shoal.tool(ut.forgot_await)])
    result = agent.run_sync("go")
    record = result.calls[0]
    assert record.status == "failed"
    assert record.message.is_error
    assert record.message.content == (
        f"forgot_await failed: ToolDefinitionError: tool 'forgot_await' {FORGOT}")
    assert "<coroutine" not in record.message.content


def test_a_generator_is_not_sent_to_a_model() -> None:
    model = ScriptedModel([[call("pages", url="x")], "done"])
    result = shoal.Agent(name="lead", model=model, tools=[ut.pages]).run_sync("go")
    record = result.calls[0]
    assert record.status == "failed" and record.message.is_error
    assert "returned a generator; return a list instead" in record.message.content
    assert "<generator" not in record.message.content
    assert record.outcome is not None and record.outcome.status == "failed"


@pytest.mark.parametrize(("fn", "isolation"), [
    (ut.pages_later, "inline"), (ut.pages, "thread"), (ut.pages, "process")])
def test_a_generator_fails_its_call_in_a_plan_too(fn: Callable[..., Any], isolation: str) -> None:
    # read once: of two calls given it, the second got nothing (an empty list, silently)
    plan = Plan()
    node = plan.add(shoal.tool(fn, isolation=isolation), {"url": "u"})
    first = plan.call(ut.count, items=node)
    second = plan.call(ut.count, items=node)
    result = shoal.run_sync(plan)
    assert_fails_with(result[node], "returned a generator; return a list instead (e.g. list(")
    assert result[first].status == result[second].status == "skipped"


@pytest.mark.parametrize("value", [
    map(str, "ab"), iter([1]), zip("a", "b", strict=True), filter(None, [1])])
def test_other_one_shot_iterators_fail_their_call(value: Any) -> None:
    outcome = run_one(lambda url: value, "thread")
    assert_fails_with(outcome, f"returned a one-shot iterator ({type(value).__qualname__})")


def test_a_file_object_is_a_value_as_before() -> None:
    buffer = io.StringIO("text")
    outcome = run_one(lambda url: buffer, "thread")
    assert outcome.ok and outcome.value is buffer


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_sync_tool_raising_stop_iteration_fails_instead_of_hanging(isolation: str) -> None:
    outcome = run_one(ut.stops, isolation)  # used to wait forever on the thread backend
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.type == "RuntimeError"
    assert outcome.error.message == "the tool raised StopIteration('u')"  # the same everywhere
    assert "StopIteration: u" in outcome.error.traceback  # the tool's own, as the cause


@ONE_AT_A_TIME  # the one Ray head
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
@pytest.mark.timeout(300)
def test_a_sync_tool_raising_stop_iteration_fails_on_rays_actor_pool() -> None:
    plan = Plan()
    pooled = plan.add(shoal.tool(ut.stops, isolation="ray", resources={"num_cpus": 0},
                                 timeout=120),
                      {"url": "u"})  # the pool runs sync tools on threads, behind a future
    task = plan.add(shoal.tool(ut.stops, isolation="ray", timeout=120), {"url": "u"})

    async def go() -> shoal.RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    result = arun(go(), timeout=280)
    for node in (pooled, task):
        error = result[node].error
        assert result[node].status == "failed" and error is not None, result[node]
        # as on threads: a Ray task sent it back bare, and the driver's coroutine said only
        # "coroutine raised StopIteration"
        assert error.type == "RuntimeError"
        assert error.message == "the tool raised StopIteration('u')"
