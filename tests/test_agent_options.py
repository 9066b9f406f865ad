"""Wrong-typed options to an agent run are refused up front, saying what each one takes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.models.base import ToolCall
from shoal.testing import ScriptedModel

WRONG = [
    ({"budget": 5}, "budget= takes a shoal.Budget"),
    ({"budget": {"tokens": 10}}, "budget= takes a shoal.Budget"),
    ({"on_event": 5}, "on_event= takes a callable or a list of them, got int 5"),
    ({"on_event": "print"}, "on_event= takes a callable or a list of them"),
    ({"on_event": [print, 5]}, "on_event= takes callables; one of them is int 5"),
    ({"runtime": 5}, "runtime= takes a shoal.Runtime"),
    ({"runtime": "memory"}, "runtime= takes a shoal.Runtime"),
    ({"gates": 5}, "gates= takes a shoal.models.ModelGates"),
]


def _agent() -> tuple[shoal.Agent, ScriptedModel]:
    model = ScriptedModel(["an answer"])
    return shoal.Agent(name="a", model=model), model


@pytest.mark.parametrize(("options", "message"), WRONG)
def test_run_sync_refuses(options: dict[str, Any], message: str) -> None:
    agent, model = _agent()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        agent.run_sync("go", **options)
    assert model.requests == []  # nothing ran


@pytest.mark.parametrize(("options", "message"), WRONG)
def test_run_and_start_refuse(options: dict[str, Any], message: str) -> None:
    agent, model = _agent()

    async def main() -> None:
        with pytest.raises(ConfigError) as by_run:
            await agent.run("go", **options)
        with pytest.raises(ConfigError) as by_start:
            agent.start("go", **options)  # at once, not when awaited
        assert message in str(by_run.value) and message in str(by_start.value)

    asyncio.run(main())
    assert model.requests == []


@pytest.mark.parametrize(("options", "message"), WRONG)
def test_stream_refuses_when_called(options: dict[str, Any], message: str) -> None:
    agent, model = _agent()
    with pytest.raises(ConfigError, match=message.split(",")[0].replace(".", r"\.")):
        agent.stream("go", **options)
    assert model.requests == []


def test_resume_refuses_a_runtime_that_is_not_one() -> None:
    agent, _ = _agent()
    with pytest.raises(ConfigError, match=r"runtime= takes a shoal\.Runtime"):
        asyncio.run(agent.resume("run-1", "go", runtime=5))  # type: ignore[arg-type]


def test_right_options_still_run() -> None:
    agent, _ = _agent()
    seen: list[shoal.Event] = []
    result = agent.run_sync("go", budget=shoal.Budget(requests=2), on_event=[seen.append],
                            gates=shoal.models.ModelGates())
    assert result.output == "an answer" and seen


def test_an_agent_refuses_a_default_budget_that_is_not_one() -> None:
    with pytest.raises(ConfigError, match=r"agent 'a': budget= takes a shoal\.Budget"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), budget=5)  # type: ignore[arg-type]


@shoal.tool
def echo(x: int) -> int:
    """Return ``x``."""
    return x


@pytest.mark.parametrize(("options", "message"), [
    ({"runtime": 5}, "runtime= takes a shoal.Runtime"),
    ({"on_event": 5}, "on_event= takes a callable or a list of them, got int 5"),
    ({"on_event": [print]}, "on_event= takes one callable here, got list"),
])
def test_execute_calls_refuses(options: dict[str, Any], message: str) -> None:
    calls = [ToolCall(id="c1", name="echo", arguments='{"x": 1}')]
    with pytest.raises(ConfigError) as caught:
        asyncio.run(shoal.execute_calls(calls, [echo], **options))
    assert message in str(caught.value)
