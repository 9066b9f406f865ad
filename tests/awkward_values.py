"""Awkward results, made by name inside the tool (so a worker process makes them too).

Workers import this module as ``tests.awkward_values``. :data:`KINDS` names each kind;
:func:`awkward` is the tool that returns one; :data:`REPLAYABLE` says which come back from the
SQLite journal as themselves (equal, and of the same type).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from shoal import tool


class Raising:
    """Every dunder a journal might call raises."""

    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling me")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing")

    def __hash__(self) -> int:
        raise RuntimeError("no hashing")


class Looping:
    """Pickling and showing it never end."""

    def __reduce__(self) -> Any:
        while True:
            time.sleep(0.01)

    def __repr__(self) -> str:
        while True:
            time.sleep(0.01)


class Enormous:
    """Pickles to 100 MB though it is tiny."""

    def __reduce__(self) -> Any:
        return (bytes, (b"x" * (100 * 2**20),))


class Text(str):
    """A subclass of ``str``."""


class Number(int):
    """A subclass of ``int``."""


class Mapping(dict[str, Any]):
    """A subclass of ``dict``."""


def _cycle() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _dict_cycle() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["me"] = value
    return value


def _deep() -> list[Any]:
    top: list[Any] = []
    here = top
    for _ in range(100_000):
        inner: list[Any] = []
        here.append(inner)
        here = inner
    return top


def _dag() -> list[Any]:
    value: list[Any] = [1]
    for _ in range(60):  # 2**60 paths: expanding it would never end
        value = [value, value]
    return value


def _generator() -> Iterator[int]:
    yield 1


KINDS: dict[str, Callable[[], Any]] = {
    "cycle": _cycle,
    "dict_cycle": _dict_cycle,
    "deep": _deep,
    "dag": _dag,
    "huge_text": lambda: "x" * (65 * 2**20),
    "raising": Raising,
    "looping": Looping,
    "enormous_pickle": Enormous,
    "generator": _generator,
    "endless_iterator": lambda: itertools.count(),
    "surrogates": lambda: {"k\udfff": ["\ud800", "ok"]},
    "nan_inf": lambda: [math.nan, math.inf, -math.inf, -0.0],
    "int_keys": lambda: {1: "one", (2, 3): "pair", None: "none"},
    "bytes": lambda: b"\x00\xff\xfe",
    "str_subclass": lambda: Text("t"),
    "int_subclass": lambda: Number(7),
    "dict_subclass": lambda: Mapping(a=1),
    "huge_int": lambda: 10**5000,
    "tuple_in_list": lambda: [("a", 1)],
}

#: kinds whose value comes back from the SQLite journal equal and of the same type
REPLAYABLE = {"dict_cycle", "cycle", "dag", "surrogates", "int_keys", "bytes",
              "str_subclass", "int_subclass", "dict_subclass", "huge_int", "tuple_in_list",
              "nan_inf", "endless_iterator"}


@tool(idempotent=True)
def awkward(kind: str) -> Any:
    """Return the awkward value named ``kind``."""
    return KINDS[kind]()


@tool
def sibling(n: int) -> int:
    """A plain call beside the awkward one: its result must never be lost."""
    return n * 2


@tool
def after(value: Any) -> str:
    """Depends on the awkward call (gets its value, whatever it is)."""
    return type(value).__name__
