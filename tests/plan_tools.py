"""Small tools for the plan file and plan text tests, importable as ``tests.plan_tools:NAME``."""

from __future__ import annotations

from typing import Any

from shoal.tools import tool


@tool
def search(query: str) -> dict[str, Any]:
    """Pretend to search; return hits for ``query``."""
    return {"query": query, "hits": [{"title": f"about {query}", "tags": ["a", "b"]}]}


@tool
def merge(parts: list[str]) -> str:
    """Join ``parts`` with spaces."""
    return " ".join(parts)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def scale(value: int, *, factor: int = 2) -> int:
    """Multiply ``value`` by the keyword-only ``factor``."""
    return value * factor


@tool
def anything(value: Any = None, extra: Any = None) -> Any:
    """Return ``value``; accepts any value, so refs of any shape fit."""
    return value


def shout(text: str) -> str:
    """Upper-case ``text`` (a plain function, not a tool)."""
    return text.upper()


class Namespace:
    """Holds a tool one attribute down, for dotted import paths."""

    inner = merge


NOT_CALLABLE = 42
