"""Values made of shared parts, or holding themselves, passed between calls and shown.

A list built as ``x = [x, x]`` forty times has 41 distinct lists but 2**40 paths through
them: anything that walks it as a tree (a copy without a memo, JSON, repr) never ends. Each
such value must reach its dependents in time proportional to its size, and be shown boundedly.
"""

from __future__ import annotations

import time
from typing import Any

import shoal
from shoal.outcome import jsonable
from shoal.scheduler.args import isolate
from tests.conftest import arun


def doubled(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value, value]
    return value


@shoal.tool
def make_shared(levels: int) -> list[Any]:
    return doubled(levels)


@shoal.tool
def make_loop() -> dict[str, Any]:
    loop: dict[str, Any] = {"name": "loop", "items": [1, 2]}
    loop["self"] = loop
    loop["items"].append(loop["items"])
    return loop


@shoal.tool
def depth(value: Any) -> int:
    levels = 0
    while isinstance(value, list) and value:
        value, levels = value[0], levels + 1
    return levels


@shoal.tool
def keeps_loop(value: Any) -> bool:  # Any: validation would rebuild a dict
    return value["self"] is value and value["items"][2] is value["items"]


def test_isolate_copies_shared_parts_once_and_keeps_them_shared() -> None:
    value = doubled(60)
    start = time.perf_counter()
    copy = isolate(value)
    assert time.perf_counter() - start < 1.0
    assert copy is not value and copy[0] is copy[1] and copy[0] is not value[0]


def test_isolate_copies_a_value_that_holds_itself() -> None:
    loop: list[Any] = [1, {"k": None}]
    loop[1]["k"] = loop
    copy = isolate(loop)
    assert copy is not loop and copy[1]["k"] is copy and copy[1] is not loop[1]


def test_shared_and_self_holding_results_reach_their_dependents() -> None:
    plan = shoal.Plan()
    shared = plan.call(make_shared, levels=50)
    deep = plan.call(depth, value=shared)
    loop = plan.call(make_loop)
    kept = plan.call(keeps_loop, value=loop)

    async def go() -> shoal.RunResult:
        async with shoal.Runtime(store="memory") as runtime:
            return await runtime.run(plan)

    result = arun(go(), timeout=20)
    assert result.value(deep) == 50 and result.value(kept) is True, result.counts


def test_jsonable_is_bounded_and_consumes_nothing() -> None:
    def endless() -> Any:
        while True:
            yield 1

    start = time.perf_counter()
    shown = jsonable(doubled(60))
    assert isinstance(shown, str) and len(shown) < 100_000
    gen = endless()
    assert "generator" in jsonable({"g": gen}) and next(gen) == 1  # not used up
    loop: list[Any] = [1]
    loop.append(loop)
    assert isinstance(jsonable(loop), str)
    assert time.perf_counter() - start < 5.0
    assert jsonable({"a": [1, (2, 3)], "b": b"\xff"}) == {"a": [1, [2, 3]], "b": {"$bytes": "_w=="}}
