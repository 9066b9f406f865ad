"""Plan text at scale: per-step work that does not depend on the step is done once."""

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from shoal import Ref, tool
from shoal.planfile import parse_ref
from shoal.plantext import parse_plan_text


@tool
async def inc(x: int) -> int:
    return x + 1


@tool
async def seed() -> int:
    return 0


def test_a_tools_positional_arguments_are_read_once_not_for_every_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # inspect.signature cost a 100,000-step plan more than the rest of binding its calls
    calls: list[object] = []
    real: Callable[..., inspect.Signature] = inspect.signature

    def counted(fn: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counted)
    text = "1. seed()\n" + "".join(f"{i}. inc(${i - 1})\n" for i in range(2, 2001))
    plan = parse_plan_text(text, [inc, seed])
    assert len(plan) == 2000 and plan.nodes[-1].args == {"x": Ref("1999")}
    assert len(calls) <= 2
    assert inc.positional_names() == ["x"] and seed.positional_names() == []
    inc.positional_names().append("y")  # a copy: the tool's own list is not changed
    assert inc.positional_names() == ["x"]


@pytest.mark.parametrize(("text", "ref"), [
    ("$3", Ref("3")), ("${a.b}", Ref("a.b")), ("$a.items[0]", Ref("a", ("items", 0))),
    ("${a}[-1].x", Ref("a", (-1, "x"))), ("$a-b", Ref("a-b")), ("$$a", None), ("see $a", None),
])
def test_refs_without_a_path_read_as_before(text: str, ref: Ref | None) -> None:
    assert parse_ref(text) == ref
