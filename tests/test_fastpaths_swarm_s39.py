"""A reply whose calls each have an id of their own is kept as it is, at a glance.

Every reply of every agent of a swarm asks whether its calls' ids are distinct: they are
compared at once (a set of them), and a reply with a repeated, empty or missing id still goes
the general way, which gives each such call an id of its own as it always did.
"""

from __future__ import annotations

from typing import Any

import pytest

from shoal.agents.toolcalls import with_distinct_ids
from shoal.models.base import ModelResponse, ToolCall


def reply(*ids: Any) -> ModelResponse:
    return ModelResponse("", tuple(ToolCall(i, "fetch", "{}") for i in ids))


def test_a_reply_whose_calls_have_ids_of_their_own_is_kept_as_it_is() -> None:
    response = reply("a", "b", "c")
    assert with_distinct_ids(response, "lead") is response


@pytest.mark.parametrize(("ids", "expected"), [
    (("a", "a"), ["a", "a_1"]),
    (("a", ""), ["a", "call_1"]),
    (("", "b", ""), ["call_0", "b", "call_2"]),
    (("a", None), ["a", "call_1"]),  # not a str: the general path names it as before
])
def test_a_reply_with_a_repeated_or_missing_id_still_gets_distinct_ids(
        ids: tuple[Any, ...], expected: list[str]) -> None:
    distinct = with_distinct_ids(reply(*ids), "lead")
    assert [c.id for c in distinct.tool_calls] == expected


def test_an_answer_without_calls_is_kept_as_it_is() -> None:
    response = ModelResponse("done")
    assert with_distinct_ids(response, "lead") is response


def test_a_new_id_depends_only_on_the_calls_before_it() -> None:
    # the repeated "a" at position 1 becomes "a_1"; the model's own "a_1" after it is then
    # taken, and renamed in turn (as a streamed reply's calls, taken one by one, are)
    distinct = with_distinct_ids(reply("a", "a", "a_1"), "lead")
    assert [c.id for c in distinct.tool_calls] == ["a", "a_1", "a_1_2"]
