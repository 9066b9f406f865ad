"""Which of two equal values a board keeps: the same in any commit order, without repr."""

from decimal import Decimal
from itertools import permutations
from typing import Any, ClassVar

import pytest

import shoal
from shoal._ties import preferred


class Loud:
    """An immutable item whose repr is noted (and long): a tie should not need it."""

    shown: ClassVar[list[int]] = []

    def __lt__(self, other: object) -> bool:
        return False

    def __deepcopy__(self, memo: dict[int, Any]) -> "Loud":
        return self  # immutable: a copy is itself, as an int's is

    def __repr__(self) -> str:
        Loud.shown.append(1)
        return "x" * 1000


def _merged(rule: Any, values: list[Any]) -> Any:
    board = shoal.Board(k=rule)
    for value in values:
        board.write("k", value)
    return board["k"]


@pytest.mark.parametrize("rule", [shoal.merge.minimum, shoal.merge.maximum])
def test_a_tie_of_large_equal_tuples_is_told_by_their_first_difference_not_their_repr(
        rule: Any) -> None:
    shared = Loud()
    a = (shared, *range(10_000), 1)
    b = (shared, *range(10_000), 1.0)
    Loud.shown.clear()
    for order in ([a, b], [b, a]):
        assert type(_merged(rule, order)[-1]) is int
    assert Loud.shown == []


def test_nested_lists_and_tuples_tie_the_same_in_any_order() -> None:
    values = [[(1, [Decimal("1.0")])], [(1.0, [Decimal("1")])], [(True, [Decimal("1.00")])],
              [(1, [Decimal("1")])]]
    for rule in (shoal.merge.minimum, shoal.merge.maximum):
        kept = {repr(_merged(rule, list(order))) for order in permutations(values)}
        assert kept == {"[(1, [Decimal('1')])]"}


def test_zeros_inside_tuples_keep_their_sign_rule() -> None:
    assert repr(preferred((0.0, 1), (-0.0, 1))) == "(-0.0, 1)"
    assert repr(preferred((-0.0, 1), (0.0, 1), largest=True)) == "(0.0, 1)"


def test_a_value_nested_deeper_than_the_stack_ties_without_recursion() -> None:
    a: Any = 1
    b: Any = 1.0
    for _ in range(100_000):
        a, b = [a], [b]
    assert preferred(b, a) is a and preferred(a, b) is a
