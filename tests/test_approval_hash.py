"""The approval hash: fast on large plain arguments, stable across processes, unchanged."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from shoal.approvals import approval_hash
from shoal.store.base import canonical_json

PLAIN: list[dict[str, Any]] = [
    {},
    {"path": "x", "n": 1, "f": 1.5, "ok": True, "none": None},
    {"nested": {"b": [1, 2.0, {"c": "é\u2028"}], "a": (1, 2)}, "z": -0.0},
    {"text": "\ud800 lone surrogate", "big": 10**200, "tiny": 5e-324},
]


@pytest.mark.parametrize("args", PLAIN)
def test_plain_arguments_hash_as_their_canonical_json(args: dict[str, Any]) -> None:
    """The documented form: hashes kept in journals by earlier versions still match."""
    text = f"tool\n{canonical_json(args)}"
    assert approval_hash("tool", args) == hashlib.sha256(
        text.encode("utf-8", "surrogatepass")).hexdigest()


def test_a_million_item_list_hashes_quickly_and_exactly() -> None:
    items = list(range(1_000_001))
    started = time.process_time()
    first = approval_hash("t", {"xs": items, "k": 1})
    spent = time.process_time() - started
    assert spent < 1.5, spent  # one pass of the C encoder; per-item hashing took seconds
    assert approval_hash("t", {"k": 1, "xs": list(items)}) == first  # key order: irrelevant
    items[-1] += 1
    assert approval_hash("t", {"xs": items, "k": 1}) != first  # the last item counts


def test_set_arguments_hash_alike_in_every_process() -> None:
    """A set iterates in another order in each process (string hashing is seeded)."""
    code = ("from shoal.approvals import approval_hash;"
            "print(approval_hash('t', {'tags': {'alpha', 'beta', 'gamma', 'delta', 'eps'},"
            " 'ids': frozenset({8, 1, 17})}))")
    hashes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)},
                             ).stdout for seed in range(4)}
    assert len(hashes) == 1
    assert approval_hash("t", {"tags": {"a", "b"}}) != approval_hash("t", {"tags": {"a", "c"}})


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_hostile_arguments_hash_stably_and_apart() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    values: list[dict[str, Any]] = [
        {"x": float("nan")}, {"x": float("inf")}, {"x": b"\xff"}, {"x": "\xff"},
        {"x": _deep(100_000)}, {"x": _deep(99_999)}, {"x": cycle}, {"x": 10**5000},
        {"x": 10**5000 + 1}, {"x": "a" * 10_000_000}]
    hashes = [approval_hash("t", v) for v in values]
    assert hashes == [approval_hash("t", v) for v in values]
    assert len(set(hashes)) == len(values)


class _Counted(list[Any]):
    """A list that counts how often it is walked."""

    walks = 0

    def __iter__(self) -> Any:
        type(self).walks += 1
        return super().__iter__()


@pytest.mark.parametrize("shape", ["list", "dict", "through a tuple"])
def test_a_value_holding_itself_is_found_out_without_walking_a_million_items(shape: str) -> None:
    # it was walked until the million-item bound ran out: a second or more of the event loop
    # per look (an approval hashed it, and made it JSON, five looks), and ~16 s for one call
    # whose argument held itself
    from shoal.outcome import jsonable

    _Counted.walks = 0
    looped = _Counted([1])
    holder: Any = {"me": looped} if shape == "dict" else (
        (looped,) if shape == "through a tuple" else looped)
    looped.append(holder)
    first = approval_hash("tool", {"x": looped})
    assert isinstance(jsonable({"x": looped}), str)  # a bounded repr
    assert approval_hash("tool", {"x": looped}) == first
    assert _Counted.walks < 100_000, _Counted.walks  # it was millions


def test_shared_parts_still_count_each_time_they_appear() -> None:
    from shoal.outcome import jsonable

    part: list[Any] = [0]
    for _ in range(25):  # 2**25 items as JSON, from 26 lists: too large to convert
        part = [part, part]
    assert isinstance(jsonable(part), str)
    small: list[Any] = [0]
    for _ in range(8):
        small = [small, small]
    assert jsonable(small) == json_copy(small)


def json_copy(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))
