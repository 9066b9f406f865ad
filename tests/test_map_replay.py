"""Resuming a run whose map items replay: every item's value is gathered, the last one too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import shoal

calls: Counter[str] = Counter()


@shoal.tool
async def numbers(n: int) -> list[int]:
    """The numbers 1 to n."""
    calls["numbers"] += 1
    return list(range(1, n + 1))


@shoal.tool
async def double(x: int) -> int:
    """Twice x."""
    calls["double"] += 1
    return 2 * x


@shoal.tool
async def plus_one(x: int) -> int:
    """x and one."""
    calls["plus_one"] += 1
    return x + 1


@shoal.tool
async def total(values: list[int]) -> int:
    """The sum of the values."""
    calls["total"] += 1
    return sum(values)


def chained(n: int) -> shoal.Plan:
    """A map over a map's list, and a reduce."""
    plan = shoal.Plan(name="chained maps")
    xs = plan.call(numbers, n=n, node_id="xs")
    ys = plan.map(double, over=xs, node_id="ys")
    zs = plan.map(plus_one, over=ys, node_id="zs")
    plan.call(total, values=zs, node_id="sum")
    return plan


@pytest.mark.parametrize("n", [1, 3, 8])
def test_a_resumed_run_replays_every_item_of_chained_maps(tmp_path: Path, n: int) -> None:
    runtime = shoal.Runtime(store=tmp_path / "r.db")
    first = runtime.run_sync(chained(n))
    expected = [2 * x + 1 for x in range(1, n + 1)]
    assert first["zs"].value == expected
    calls.clear()
    again = shoal.Runtime(store=tmp_path / "r.db").resume_sync(first.run_id, chained(n))
    assert calls == Counter()  # all replayed: nothing ran twice
    assert again["ys"].value == [2 * x for x in range(1, n + 1)]
    assert again["zs"].value == expected  # the last item of each map is not lost
    assert again["sum"].value == sum(expected)
    assert sorted(o.node_id for o in again) == sorted(o.node_id for o in first)


def test_a_map_of_no_items_gathers_an_empty_list_on_resume(tmp_path: Path) -> None:
    runtime = shoal.Runtime(store=tmp_path / "r.db")
    first = runtime.run_sync(chained(0))
    assert first["sum"].value == 0
    again = shoal.Runtime(store=tmp_path / "r.db").resume_sync(first.run_id, chained(0))
    assert (again["ys"].value, again["zs"].value, again["sum"].value) == ([], [], 0)
