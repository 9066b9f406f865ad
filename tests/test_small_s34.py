"""Small defects of sweep 34: tool names, uncopyable defaults, limits, pattern ids, deadlines."""

import copy
from typing import Annotated, Any

import pydantic
import pytest

import shoal
from shoal import ToolArgumentError

# ---- a default whose copy raises ----------------------------------------------------------


class _Uncopyable(list[int]):
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise RuntimeError("copies refused")


_DEFAULT = _Uncopyable([1])


def _with_uncopyable(x: int, seen: list[int] = _DEFAULT) -> int:
    return x


def _copies_itself(value: list[int]) -> list[int]:
    return copy.deepcopy(_DEFAULT)  # the validator's own error, not a default's copy


def _validator_copies(x: Annotated[list[int], pydantic.AfterValidator(_copies_itself)]) -> int:
    return len(x)


def test_a_default_whose_copy_raises_is_named_with_what_its_copy_raised() -> None:
    # was: "... raised RuntimeError: copies refused: the tool's own checking code (a
    # validator or a default_factory of its argument types) failed on them"
    made = shoal.tool(_with_uncopyable)
    with pytest.raises(ToolArgumentError, match=r"the default of 'seen', \[1\], is copied for "
                                                r"each call .* raised RuntimeError: copies "
                                                r"refused") as caught:
        made.validate({"x": 1})
    assert caught.value.argument == "seen" and "validator" not in str(caught.value)
    assert made.validate({"x": 1, "seen": [2]}) == {"x": 1, "seen": [2]}
    plan = shoal.Plan()
    plan.call(shoal.tool(_with_uncopyable), x=1)
    with pytest.raises(shoal.PlanError, match="the default of 'seen'"):
        shoal.run_sync(plan)


def test_a_validator_that_copies_and_fails_is_still_the_checking_code() -> None:
    made = shoal.tool(_validator_copies)
    with pytest.raises(ToolArgumentError, match="the tool's own checking code"):
        made.validate({"x": [1]})
