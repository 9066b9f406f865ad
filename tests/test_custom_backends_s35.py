"""``Runtime(executors=)`` with what is not a backend: a clear ``ConfigError`` when made.

Found by a hostile read (session 35): the class given instead of an instance, or any object,
was accepted and failed later with ``AttributeError: type object 'object' has no attribute
'close'``, raised as the runtime closed; a backend whose ``start()`` raised said nothing of
which backend it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.executors.base import Call, Executor
from shoal.testing import run_virtual


class _Refusing(Executor):
    """A backend whose start fails (its pool cannot be made)."""

    async def start(self) -> None:
        raise OSError("cannot start my pool")

    def execute(self, call: Call) -> Any:
        return asyncio.sleep(0, result=call.args)

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("executors", "says"), [
    ({"process": _Refusing},
     r"is the class _Refusing: give an instance of it \(_Refusing\(...\)\)"),
    ({"process": object()}, r"is not a backend \(object has no start, execute, close\)"),
    ({"thread": "threads"}, r"executors\['thread'\] is not a backend"),
    ({"gpu": _Refusing()}, r"executors may replace .*; got 'gpu'"),
    ({5: _Refusing()}, r"executors may replace .*; got 5"),
    ([_Refusing()], r"executors must map isolation names to backends.*got list"),
])
def test_what_is_not_a_backend_is_refused_when_the_runtime_is_made(
        executors: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        shoal.Runtime(executors=executors)


@shoal.tool(isolation="process")
def double(x: int) -> int:
    """Double ``x``."""
    return 2 * x


def test_a_backend_whose_start_fails_is_named_in_the_error() -> None:
    async def main() -> None:
        plan = shoal.Plan()
        plan.call(double, x=1)
        async with shoal.Runtime(executors={"process": _Refusing()}) as runtime:
            await runtime.run(plan)

    with pytest.raises(OSError, match="cannot start my pool") as caught:
        run_virtual(main())
    assert any("starting the 'process' backend, _Refusing" in note
               for note in getattr(caught.value, "__notes__", []))
