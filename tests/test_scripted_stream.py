"""ScriptedModel streams its steps, timed by pause(), on the virtual clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from shoal.exceptions import ScriptError
from shoal.models.base import (
    AssistantMessage,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCallDone,
    UserMessage,
)
from shoal.testing import ScriptedModel, call, pause, run_virtual

REQUEST = ModelRequest("", [UserMessage("go")])


async def _timed(model: Model) -> list[tuple[float, StreamEvent]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    return [(round(loop.time() - start, 6), event) async for event in model.stream(REQUEST)]


def test_stream_yields_each_call_when_the_script_reaches_it() -> None:
    a, b = call("a", x=1), call("b")
    model = ScriptedModel([["thinking", a, pause(0.2), b, pause(0.1)], "done"])
    events = run_virtual(_timed(model))
    assert events[:3] == [(0.0, TextDelta("thinking")), (0.0, ToolCallDone(0, a)),
                          (0.2, ToolCallDone(1, b))]
    at, done = events[3]
    assert at == pytest.approx(0.3)
    assert isinstance(done, ResponseDone)
    assert done.response.tool_calls == (a, b)
    assert done.response.text == "thinking"
    assert done.response.stop_reason == "tool_calls"
    assert len(events) == 4


def test_request_takes_the_pauses_total_and_ignores_them_in_the_answer() -> None:
    a, b = call("a"), call("b")
    model = ScriptedModel([[a, pause(0.2), b, pause(0.3)]], latency=0.5)

    async def main() -> tuple[float, ModelResponse]:
        loop = asyncio.get_running_loop()
        response = await model.request(REQUEST)
        return loop.time(), response

    took, response = run_virtual(main())
    assert took == pytest.approx(1.0)
    assert response.tool_calls == (a, b)
    model.check()


def test_plain_steps_stream_text_then_calls() -> None:
    a = call("a")
    model = ScriptedModel([ModelResponse("hi", (a,)), "bye"])
    first = run_virtual(_timed(model))
    assert [e for _, e in first][:2] == [TextDelta("hi"), ToolCallDone(0, a)]
    second = run_virtual(_timed(model))
    assert [type(e) for _, e in second] == [TextDelta, ResponseDone]
    model.check()


def test_the_default_stream_of_a_model_ends_each_call() -> None:
    a, b = call("a"), call("b")

    class Plain(Model):
        async def request(self, request: ModelRequest) -> ModelResponse:
            return ModelResponse("", (a, b))

    events = [e for _, e in run_virtual(_timed(Plain()))]
    assert events[:2] == [ToolCallDone(0, a), ToolCallDone(1, b)]
    assert isinstance(events[2], ResponseDone)


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan])
def test_pause_refuses_impossible_waits(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        pause(bad)


@pytest.mark.parametrize("bad", ["1", None, True])
def test_pause_refuses_what_is_not_a_number(bad: object) -> None:
    with pytest.raises(TypeError, match="number of seconds"):
        pause(bad)  # type: ignore[arg-type]


def test_a_bad_step_fails_before_anything_streams() -> None:
    # played by a function: a bad list given as a step is refused when the script is made
    # (tests/test_testing_tools_s35.py)
    model = ScriptedModel([lambda request: [call("a"), 3]])

    async def main() -> list[StreamEvent]:
        return [e async for e in model.stream(REQUEST)]

    with pytest.raises(ScriptError, match="pause"):
        run_virtual(main())


def test_a_scripted_request_finds_its_prompt_and_its_turn_in_one_pass() -> None:
    # asked for every request of every test and swarm: the first prompt and the turn were
    # two passes over the conversation (and a call more)
    from shoal.testing.scripted import _conversation

    messages = (AssistantMessage("x"), UserMessage("go"), UserMessage("more"),
                AssistantMessage("y"))
    assert _conversation(ModelRequest("", messages)) == ("go", 2)
    assert _conversation(ModelRequest("", ())) == ("", 0)
    assert _conversation(ModelRequest("", (UserMessage(""), UserMessage("b")))) == ("", 0)
    assert "_first_prompt" not in _conversation.__code__.co_names


def test_a_scripted_list_step_streams_its_calls_and_text_in_order() -> None:
    model = ScriptedModel([["a", call("f", x=1), pause(0.0), "b", call("g")]])

    async def main() -> list[StreamEvent]:
        return [event async for event in model.stream(ModelRequest("", (UserMessage("go"),)))]

    events = asyncio.run(main())
    assert [type(e).__name__ for e in events] == [
        "TextDelta", "ToolCallDone", "TextDelta", "ToolCallDone", "ResponseDone"]
    assert [e.index for e in events if isinstance(e, ToolCallDone)] == [0, 1]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.text == "ab" and [c.name for c in done.response.tool_calls] == ["f", "g"]
