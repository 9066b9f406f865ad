"""What shoal's core takes from pydantic, loaded on first use: ``import shoal`` loads none of it.

``import pydantic`` loads ``pydantic_core`` (its schema types, typing_extensions, decimal,
datetime ...): a sixth of the instructions of ``import shoal`` and every public name. The core
needs it only when it converts a value to JSON or meets a model, and a tool's argument model
(:mod:`shoal.schema`) loads it where it is made.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["is_model", "to_jsonable_python"]


def to_jsonable_python(value: Any, **options: Any) -> Any:
    """:func:`pydantic_core.to_jsonable_python` (the same arguments), imported on first call."""
    return _to_jsonable()(value, **options)


@functools.cache
def _to_jsonable() -> Callable[..., Any]:
    from pydantic_core import to_jsonable_python as convert

    return convert


def is_model(value: object) -> bool:
    """Whether ``value`` is a pydantic model (no value is one before pydantic is loaded)."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)
