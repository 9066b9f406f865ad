"""Tools for :mod:`tests.test_hostile_exec_s34`; worker processes import them from here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from shoal.tools import tool


@tool(isolation="process")
def wait_to_be_killed(marker: str) -> int:
    """Create ``marker``, then wait (for the test to kill this worker, as an OOM killer would)."""
    Path(marker).touch()
    time.sleep(60)
    return 0


@tool(isolation="process")
def square(x: int) -> int:
    """``x * x``: a sibling that must keep its result."""
    return x * x


class PicklingRaises:
    """A result whose pickling raises ``SystemExit`` or ``KeyboardInterrupt`` (its kind)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> NoReturn:
        if self.kind == "exit":
            raise SystemExit(7)
        raise KeyboardInterrupt


@tool
def unpicklable_result(kind: str) -> PicklingRaises:
    """A result that cannot be pickled, and says so with ``SystemExit`` or ``KeyboardInterrupt``."""
    return PicklingRaises(kind)


@tool
def echo(value: str) -> str:
    """``value`` back."""
    return value


@tool(isolation="process")
def fork_and_leave(how: str) -> int:
    """``os.fork()`` with no exec; the child returns too (``how="return"``) or exits."""
    pid = os.fork()
    if pid == 0 and how == "exit":
        sys.exit(0)
    return pid


@tool(isolation="process")
def number(i: int) -> int:
    """``i`` back: each call must get its own."""
    return i


async def _goes_on() -> None:
    """A task that ignores its cancellation."""
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


@tool(isolation="process")
async def leaves_a_stubborn_task() -> str:
    """Start a task that ignores its cancellation, then return at once."""
    _LEFT.append(asyncio.get_running_loop().create_task(_goes_on()))
    await asyncio.sleep(0)
    return "done"


_LEFT: list[asyncio.Task[None]] = []


@tool
def raises_generator_exit() -> int:
    """Raise ``GeneratorExit``, as a generator's ``close()`` does inside."""
    raise GeneratorExit


class ProxyError(Exception):
    """An error that hands attribute lookups on to ``inner``, which it never set: recursion."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@tool(isolation="process")
def raises_proxy_error() -> int:
    """Raise an error whose missing attributes (``__notes__``) recurse without end."""
    raise ProxyError("the wrapped call failed")


class BuiltOnlyHere(Exception):
    """An error whose constructor raises ``SystemExit`` (or ``KeyboardInterrupt``) elsewhere."""

    def __init__(self, message: str, kind: str = "", pid: int = 0) -> None:
        super().__init__(message, kind, pid)
        if pid and pid != os.getpid():
            raise SystemExit(6) if kind == "exit" else KeyboardInterrupt


@tool(isolation="process")
def raises_built_only_here(kind: str) -> int:
    """Raise an error that cannot be rebuilt in another process without ending it."""
    raise BuiltOnlyHere("boom", kind, os.getpid())


@tool(isolation="process")
def returns_built_only_here(kind: str) -> BuiltOnlyHere:
    """Return an error (a value results may hold) that cannot be rebuilt elsewhere."""
    return BuiltOnlyHere("boom", kind, os.getpid())


@tool(isolation="process", limits={"memory": "400MB"})
def fills_memory() -> int:
    """Fill the worker's memory limit with small pieces, held until the MemoryError."""
    kept = []
    while True:
        kept.append(bytearray(1000))
