"""``shoal.testing``'s own tools refuse what cannot work when made, and take async step functions.

Found by a hostile read of the testing helpers (session 35): a virtual loop started at
``inf`` hung at its first timer and one at ``nan`` fired every timer at once; a script step
of no kind (``5``) failed only when its turn came, as a model error in the middle of a run;
an ``async def`` step function was played as the coroutine object it returned.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import shoal
from shoal.models.base import ModelRequest
from shoal.testing import ScriptedModel, VirtualClockLoop, call


@pytest.mark.parametrize("start", [math.inf, -math.inf, math.nan])
def test_a_virtual_loop_refuses_a_start_that_is_not_finite(start: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        VirtualClockLoop(start=start)


@pytest.mark.parametrize("start", [True, "0", None])
def test_a_virtual_loop_refuses_a_start_that_is_not_a_number(start: Any) -> None:
    with pytest.raises(TypeError, match="number of seconds"):
        VirtualClockLoop(start=start)


def test_a_virtual_loop_started_at_an_int_keeps_time_as_a_float() -> None:
    loop = VirtualClockLoop(start=3)
    try:
        assert loop.time() == 3.0 and isinstance(loop.time(), float)
        assert loop.run_until_complete(asyncio.sleep(2, result="slept")) == "slept"
        assert loop.time() == 5.0
    finally:
        loop.close()


@pytest.mark.parametrize("step", [5, None, b"text", {"text": "x"}, [call("t"), 7]])
def test_a_step_of_no_kind_is_refused_when_the_script_is_made(step: object) -> None:
    with pytest.raises(TypeError, match="step 2 must be"):
        ScriptedModel(["first", step])  # type: ignore[list-item]


def test_a_per_prompt_step_of_no_kind_names_its_script() -> None:
    with pytest.raises(TypeError, match=r"script for 'go': step 1 must be"):
        ScriptedModel.per_prompt({"go": [3.5]})  # type: ignore[list-item]


@shoal.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def test_an_async_step_function_is_awaited_in_plain_and_streamed_turns() -> None:
    seen: list[int] = []

    async def answer(request: ModelRequest) -> list[Any]:
        await asyncio.sleep(0)
        seen.append(len(request.messages))
        return [call("lookup", key="k")]

    async def finish(request: ModelRequest) -> str:
        return "done: " + str(request.messages[-1].content)[:20]

    for stream_dispatch in (False, True):
        agent = shoal.Agent(name="a", model=ScriptedModel([answer, finish]), tools=[lookup],
                            stream_dispatch=stream_dispatch)
        result = agent.run_sync("go")
        assert result.ok and result.output.startswith("done: ")
    assert len(seen) == 2
