"""A hostile user of the composition layer, sweep 34: patterns run alone, refs across plans.

Each test is a defect found by using the layer as a careless or hostile user would, and fails
without its fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import shoal
import shoal.models
from shoal.exceptions import RunActiveError
from shoal.patterns import pipeline
from shoal.testing import ScriptedModel
from tests.conftest import arun


def accepting() -> ScriptedModel:
    return ScriptedModel.per_prompt({"*": ["ACCEPT: fine"]})


# -- a pattern run on its own is an outermost run ---------------------------------------------


def test_a_pattern_run_twice_at_once_under_one_run_id_is_refused_whole() -> None:
    # Pattern.run started its run as if nested in another (a stand-in scope): it took no
    # claim on its run id, so the second run journaled into the first's, and failed deep
    # inside with a ConfigError about 'same/pipeline/a#1/steps'
    reader = shoal.Agent(name="reader", model=accepting())
    writer = shoal.Agent(name="writer", model=accepting())
    steps = pipeline(reader, writer)

    async def main() -> tuple[tuple[Any, Any], shoal.Runtime]:
        runtime = shoal.Runtime()
        both = await asyncio.gather(steps.run("a", runtime=runtime, run_id="same"),
                                    steps.run("b", runtime=runtime, run_id="same"),
                                    return_exceptions=True)
        await runtime.aclose()
        return both, runtime

    (first, second), runtime = arun(main())
    assert first == "ACCEPT: fine"
    assert isinstance(second, RunActiveError), second
    assert runtime.store is not None
    record = runtime.store.get_run("same")
    assert record is not None and record.status == "finished"


class Closing(ScriptedModel):
    closed = 0

    async def aclose(self) -> None:
        Closing.closed += 1


def test_a_pattern_run_alone_closes_the_models_its_agents_made_from_strings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the stand-in scope made the run no outermost one: the composition's end never came,
    # and a model made from a string ("openai:...", "local": a server) was never closed
    made: list[Closing] = []

    def resolve(spec: Any) -> Closing:
        model = Closing(["ACCEPT: fine"] * 4)
        made.append(model)
        return model

    monkeypatch.setattr(shoal.models, "resolve_model", resolve)
    Closing.closed = 0
    agent = shoal.Agent(name="reader", model="openai:gpt-4.1-mini")
    assert pipeline(agent, agent).run_sync("go") == "ACCEPT: fine"
    assert len(made) == 1 and Closing.closed == 1
