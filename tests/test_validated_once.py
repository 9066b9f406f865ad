"""A tool's argument validation runs once per call: a validator that transforms a value
(appends, rounds, normalises) transforms it once, whichever way the call came.

An agent checks a model's call before adding it to its run (to answer a bad one with an
error message); the run then took those checked arguments as new input and validated them
again, so ``"hi"`` reached the tool as ``"hi!!"``.
"""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import AfterValidator

import shoal
from shoal.testing import ScriptedModel, call

seen: list[str] = []


def _exclaim(value: str) -> str:
    return value + "!"


@shoal.tool
def shout(text: Annotated[str, AfterValidator(_exclaim)]) -> str:
    """Say ``text`` louder (its validator adds the '!')."""
    seen.append(text)
    return text


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.clear()


def test_a_plan_call_is_validated_once() -> None:
    plan = shoal.Plan()
    ref = plan.call(shout, text="hi")
    result = shoal.run_sync(plan)
    assert result[ref].value == "hi!"
    assert seen == ["hi!"]


def test_an_agents_tool_call_is_validated_once() -> None:
    model = ScriptedModel([[call("shout", text="hi"), call("shout", text="yo")], "done"])
    agent = shoal.Agent(name="a", model=model, tools=[shout])
    result = agent.run_sync("go")
    assert result.ok, result
    assert sorted(seen) == ["hi!", "yo!"]


def test_a_planners_call_is_validated_once() -> None:
    plan = '1. shout(text="hi")\n2. join()\n'
    finish = 'Thought: said.\nAction: Finish(said)'
    model = ScriptedModel([plan, finish])
    agent = shoal.Agent(name="p", model=model, tools=[shout], mode="plan")
    result = agent.run_sync("go")
    assert result.ok, result
    assert seen == ["hi!"]
