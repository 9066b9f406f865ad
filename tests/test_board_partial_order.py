"""``minimum`` / ``maximum`` over values that are only partially ordered (sets).

Of two sets neither of which holds the other, neither is smaller: the result would be
whichever committed first, so parallel writers would leave a board that depends on timing.
Such values are refused with a :class:`BoardValueError` naming the key and both values, and a
call that writes one commits none of its writes. Totally ordered values merge as before.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import shoal
from shoal.exceptions import BoardValueError

RULES = [shoal.merge.minimum, shoal.merge.maximum]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("first", "second"), [
    ({1}, {2}),
    (frozenset({1, 2}), frozenset({2, 3})),
    ({"a": 1}.keys(), {"b": 2}.keys()),
    (({1},), ({2},)),  # a tuple compares its items: a set inside is no better
])
def test_incomparable_values_are_refused_in_either_order(rule: Any, first: Any,
                                                         second: Any) -> None:
    for a, b in ((first, second), (second, first)):
        board = shoal.Board(k=rule)
        board.write("k", a)
        with pytest.raises(BoardValueError, match=r"board key 'k'") as raised:
            board.write("k", b)
        message = str(raised.value)
        assert shoal.merge.shown(a) in message and shoal.merge.shown(b) in message
        assert "order" in message
        assert board["k"] == a


@pytest.mark.parametrize("rule", RULES)
def test_long_incomparable_values_are_shortened_in_the_message(rule: Any) -> None:
    board = shoal.Board(k=rule)
    board.write("k", frozenset(range(0, 2000, 2)))
    with pytest.raises(BoardValueError) as raised:
        board.write("k", frozenset(range(1, 2000, 2)))
    assert len(str(raised.value)) < 600


@pytest.mark.parametrize(("rule", "expected"), [(shoal.merge.minimum, {1}),
                                                (shoal.merge.maximum, {1, 2, 3})])
def test_comparable_sets_still_merge(rule: Any, expected: set[int]) -> None:
    board = shoal.Board(k=rule)
    for value in ({1, 2}, {1}, {1, 2, 3}, {1, 2}):
        board.write("k", value)
    assert board["k"] == expected


@pytest.mark.parametrize("values", [
    [3, -1, 7, 7, 0],
    [2.5, -0.0, 0.0, 1e300, -1e-300],
    ["b", "a", "c", ""],
    [(1, "a"), (1, "b"), (0, "z"), (1, "a", 0)],
    [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in (5, 1, 9)],
    [Decimal("1.5"), 1, Fraction(3, 2), 0.25],
])
def test_totally_ordered_values_merge_as_before(values: list[Any]) -> None:
    low, high = shoal.Board(k=shoal.merge.minimum), shoal.Board(k=shoal.merge.maximum)
    for value in values:
        low.write("k", value)
        high.write("k", value)
    assert low["k"] == min(values) and high["k"] == max(values)


@pytest.mark.parametrize("rule", RULES)
def test_a_call_whose_value_became_incomparable_commits_none_of_its_writes(rule: Any) -> None:
    # Each call alone is fine (the board is empty when it writes); the second to commit meets
    # the first's set, which neither holds nor is held by its own: all or none.
    board = shoal.Board(best=rule, items=shoal.merge.append)
    first_done = threading.Event()

    @shoal.tool
    def first(board: shoal.BoardHandle) -> str:
        board.write("best", frozenset({1}))
        return "first"

    @shoal.tool
    def second(board: shoal.BoardHandle) -> str:
        board.write("items", "kept only if best merges")
        board.write("best", frozenset({2}))
        first_done.wait(5)
        return "second"

    plan = shoal.Plan()
    late = plan.call(second, node_id="second")
    plan.call(first, node_id="first")

    def release(event: shoal.Event) -> None:
        if isinstance(event, shoal.NodeFinished) and event.node_id == "first":
            first_done.set()

    result = shoal.Runtime(on_event=release).run_sync(plan, board=board)
    error = result[late].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "frozenset({1})" in error.message and "frozenset({2})" in error.message
    assert result["first"].value == "first"
    assert board["items"] == [] and board["best"] == frozenset({1})


@pytest.mark.parametrize("rule", RULES)
def test_tuples_holding_nan_are_refused_like_nan(rule: Any) -> None:
    board = shoal.Board(k=rule)
    board.write("k", (1.0, 2.0))
    with pytest.raises(BoardValueError, match="not ordered"):
        board.write("k", (float("nan"), 0.0))
    assert board["k"] == (1.0, 2.0)


@pytest.mark.parametrize(("rule", "late"), [(shoal.merge.minimum, frozenset({2})),
                                            (shoal.merge.minimum, "text")])
def test_reading_a_pending_write_that_no_longer_merges_is_a_board_value_error(
        rule: Any, late: Any) -> None:
    board = shoal.Board(k=rule)
    handle = shoal.BoardHandle(board, "a")
    handle.write("k", frozenset({1}))  # fine against the empty board this call sees
    board.write("k", late, writer="b")  # then another writer commits
    with pytest.raises(BoardValueError, match=r"board key 'k'.*another call committed"):
        handle.read("k")
    with pytest.raises(BoardValueError, match=r"board key 'k'"):
        handle.settle(ok=True)
    assert board["k"] == late
