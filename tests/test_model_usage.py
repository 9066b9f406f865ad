"""A reply's usage is checked where every reply comes in (the model gate).

A count no reply can have (thousands of digits, negative, not a number) is a
:class:`~shoal.exceptions.ModelError` naming the model and the field, before a budget, the
journal or a result's sums meet it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ModelError
from shoal.models.base import ModelRequest, ResponseDone, Usage, UserMessage
from shoal.models.retry import MAX_REPORTED, ModelGate, ModelRetry
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel
from tests.conftest import arun

BROKEN: list[tuple[dict[str, Any], str]] = [
    ({"input_tokens": 10**5000}, "input_tokens=a number of about 5,001 digits"),
    ({"output_tokens": -1}, "output_tokens=-1"),
    ({"cache_read_tokens": MAX_REPORTED + 1}, "cache_read_tokens=1000000000000001"),
    ({"requests": 10**5000}, "requests=a number of about 5,001 digits"),
    ({"cost": float("nan")}, "cost=nan"),
    ({"cost": 10**400}, "cost=a number of about 401 digits"),
    ({"input_tokens": "12"}, "input_tokens=str"),
]


def usage(**fields: Any) -> Usage:
    return Usage(**{"input_tokens": 3, "output_tokens": 2, "requests": 1, **fields})


@pytest.mark.parametrize(("fields", "said"), BROKEN, ids=[next(iter(f)) + "-" + s.split("=")[1]
                                                        for f, s in BROKEN])
def test_an_agent_whose_model_reports_an_absurd_usage_fails_naming_the_model_and_field(
        tmp_path: Path, fields: dict[str, Any], said: str) -> None:
    # with a budget, its sums failed ("int too large to convert to float"); the journal
    # could not write the agent's summary; a negative count took from the tree's total
    model = ScriptedModel(["done"], name="counts-badly", usage=usage(**fields))
    agent = shoal.Agent(name="lead", model=model)

    async def main() -> None:
        async with shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")) as runtime:
            with pytest.raises(ModelError) as raised:
                await agent.run("hi", runtime=runtime,
                                budget=shoal.Budget(tokens=10**6, cost=10.0))
        error = raised.value
        assert error.model == "counts-badly"
        assert f"its reply reports usage {said}, not a number from 0 to" in str(error)

    arun(main())


@pytest.mark.parametrize("how", ["request", "stream", "stream_to"])
def test_every_way_into_a_model_checks_its_usage_and_does_not_retry_it(how: str) -> None:
    model = ScriptedModel(["done"] * 3, name="counts-badly", usage=usage(output_tokens=-5))
    gate = ModelGate(model.name, retry=ModelRetry(retries=3, backoff=0))
    request = ModelRequest("", (UserMessage("hi"),))

    async def ask() -> None:
        if how == "request":
            await gate.request(model, request)
        elif how == "stream":
            async for _ in gate.stream(model, request):
                pass
        else:
            await gate.stream_to(model, request, lambda event: None)

    async def main() -> None:
        with pytest.raises(ModelError, match="output_tokens=-5"):
            await ask()

    arun(main())
    assert len(model.requests) == 1  # a broken report is not transient: not asked again


def test_the_largest_count_a_reply_may_report_still_passes() -> None:
    model = ScriptedModel(["done"], usage=usage(input_tokens=MAX_REPORTED, cost=0))
    seen: list[object] = []

    async def main() -> None:
        gate = ModelGate(model.name)
        await gate.stream_to(model, ModelRequest("", (UserMessage("hi"),)), seen.append)

    arun(main())
    done = seen[-1]
    assert isinstance(done, ResponseDone) and done.response.usage.input_tokens == MAX_REPORTED
