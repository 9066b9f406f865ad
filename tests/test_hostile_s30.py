"""Hostile input the earlier sweeps missed: each gets a typed error naming what is wrong, or
(for a call a model or an SDK response made) an error result, never a stray exception.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.testing import call


def _deep(depth: int = 100_000) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


@shoal.tool
def echo(x: Any = None) -> Any:
    """Give ``x`` back."""
    return x


@pytest.mark.parametrize("name", [5, b"plan", math.nan, ["a"], {"a": 1}, _Unprintable()])
def test_a_plan_name_that_is_not_text_is_refused_as_the_plan_is_made(name: Any) -> None:
    # it was kept, and the run failed later with a StoreError from SQLite's binding (or
    # a NOT NULL constraint, for NaN) once a journal wrote the run
    with pytest.raises(ConfigError, match="a plan's name must be a str, got"):
        shoal.Plan(name)


def test_a_plan_named_none_has_no_name() -> None:
    assert shoal.Plan(None).name == ""  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [[1], "plan", None, _cycle()])
def test_analyze_refuses_what_is_not_a_plan(value: Any) -> None:
    # an AttributeError ('list' object has no attribute 'memo') before
    with pytest.raises(ConfigError, match=r"analyze takes a shoal\.Plan, got"):
        shoal.analyze(value)


@pytest.mark.parametrize("arguments", [
    {"x": _cycle()}, {"x": _deep()}, {"x": _Unprintable()}, {"x": 10**5000}, _deep(),
])
def test_anthropic_inputs_json_cannot_hold_answer_their_call_only(arguments: Any) -> None:
    # the whole batch raised (ValueError, RecursionError, TypeError): the other call lost
    blocks = [{"type": "tool_use", "id": "bad", "name": "echo", "input": arguments},
              {"type": "tool_use", "id": "good", "name": "echo", "input": {"x": 7}}]
    message = shoal.anthropic_tool_results_sync(blocks, tools=[echo])
    bad, good = message["content"]
    assert bad["tool_use_id"] == "bad" and bad["is_error"]
    assert "arguments JSON cannot hold" in bad["content"]
    assert good == {"type": "tool_result", "tool_use_id": "good", "content": "7",
                    "is_error": False}


@pytest.mark.parametrize("arguments", [_deep(), _Unprintable(), _cycle()])
def test_openai_arguments_that_are_not_text_answer_their_call_only(arguments: Any) -> None:
    # str() of them raised (RecursionError, the object's own RuntimeError) for the batch
    calls = [{"id": "bad", "type": "function",
              "function": {"name": "echo", "arguments": arguments}},
             {"id": "good", "type": "function",
              "function": {"name": "echo", "arguments": '{"x": 7}'}}]
    bad, good = shoal.openai_tool_messages_sync(calls, tools=[echo])
    assert bad["tool_call_id"] == "bad" and bad["content"].startswith("Error: ")
    assert good == {"role": "tool", "tool_call_id": "good", "content": "7"}


def test_openai_arguments_given_as_a_mapping_are_read_as_json() -> None:
    # str() made Python's repr of the dict, which is not JSON: the call was refused
    calls = [{"id": "1", "type": "function", "function": {"name": "echo", "arguments": {"x": 7}}}]
    assert shoal.openai_tool_messages_sync(calls, tools=[echo])[0]["content"] == "7"


def test_ids_and_names_whose_str_raises_still_answer_the_call() -> None:
    blocks = [{"type": "tool_use", "id": _Unprintable(), "name": "echo", "input": {"x": 1}},
              {"type": "tool_use", "id": "good", "name": _Unprintable(), "input": {}}]
    first, second = shoal.anthropic_tool_results_sync(blocks, tools=[echo])["content"]
    assert "repr failed with RuntimeError" in first["tool_use_id"]
    assert first["content"] == "1" and second["is_error"]


def test_a_scripted_call_nested_too_deep_is_a_value_error() -> None:
    # a RecursionError from json.dumps before
    with pytest.raises(ValueError, match="nested too deeply to write as JSON"):
        call("echo", x=_deep())
