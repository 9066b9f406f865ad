"""The tools :class:`~shoal.testing.conformance.ExecutorConformance` runs on every backend.

They live at module level in an installed module on purpose: worker processes and Ray workers
receive a tool by reference (module and name) and import it, which fails for tools defined in a
test function or in ``__main__``. Most come in pairs, a sync one and an ``_async`` one, picked
with :func:`pick`, so each behaviour is checked for both kinds of tool.

Tools report what they saw (wall-clock spans, process ids, files written in a directory the test
passes as an argument) instead of touching shared memory, because a worker process or a Ray
worker shares none with the test.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Literal

from shoal.tools import Tool, tool

__all__ = [
    "ConformanceError",
    "Kind",
    "UnpicklableError",
    "count_attempts",
    "crash",
    "pick",
    "payload",
]

Kind = Literal["sync", "async"]

TICK = 0.02  # seconds between two ticks of the tick tools


class ConformanceError(Exception):
    """A tool's own error type, with attributes that must survive the trip back from a worker.

    ``__str__`` is built from the attributes, so the message recorded in the test process proves
    they arrived intact (the outcome keeps only the type name and the message).
    """

    def __init__(self, message: str, code: int, detail: dict[str, Any]) -> None:
        super().__init__(message, code, detail)
        self.message = message
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type[ConformanceError], tuple[str, int, dict[str, Any]]]:
        return (ConformanceError, (self.message, self.code, self.detail))

    def __str__(self) -> str:
        return f"{self.message} (code={self.code}, detail={self.detail})"


class UnpicklableError(Exception):
    """An error that cannot cross a process boundary: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def payload(megabytes: int) -> bytes:
    """``megabytes`` MiB of a fixed, non-constant pattern (so truncation or reordering shows)."""
    return bytes(range(256)) * (megabytes * 4096)


def count_attempts(marker_dir: str | Path) -> int:
    """How many attempts :func:`flaky` recorded in ``marker_dir``."""
    path = Path(marker_dir) / "attempts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _record_attempt(marker_dir: str) -> int:
    """Append one line per attempt; one attempt of a node runs at a time, so no race."""
    with (Path(marker_dir) / "attempts").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return count_attempts(marker_dir)


def _tick(path: str) -> None:
    with open(path, "ab") as f:  # reopened per tick: each tick is on disk when it returns
        f.write(b".")


# ---- values ---------------------------------------------------------------------------------


@tool
def echo(value: Any) -> Any:
    """Return the argument."""
    return value


@tool
async def echo_async(value: Any) -> Any:
    """Return the argument."""
    await asyncio.sleep(0)
    return value


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
async def add_async(a: int, b: int) -> int:
    """Add two numbers."""
    await asyncio.sleep(0)
    return a + b


@tool
def measure(value: Any) -> tuple[int, int]:
    """The length and CRC-32 of a bytes argument."""
    return len(value), zlib.crc32(value)


@tool
async def measure_async(value: Any) -> tuple[int, int]:
    """The length and CRC-32 of a bytes argument."""
    await asyncio.sleep(0)
    return len(value), zlib.crc32(value)


@tool
def big_payload(megabytes: int) -> bytes:
    """``payload(megabytes)``."""
    return payload(megabytes)


@tool
async def big_payload_async(megabytes: int) -> bytes:
    """``payload(megabytes)``."""
    await asyncio.sleep(0)
    return payload(megabytes)


@tool
def where() -> int:
    """The id of the process the call ran in."""
    return os.getpid()


@tool
async def where_async() -> int:
    """The id of the process the call ran in."""
    await asyncio.sleep(0)
    return os.getpid()


# ---- errors ---------------------------------------------------------------------------------


@tool
def raise_typed(message: str, code: int) -> None:
    """Raise a :class:`ConformanceError`."""
    raise ConformanceError(message, code, {"code": code, "tags": ["a", "b"]})


@tool
async def raise_typed_async(message: str, code: int) -> None:
    """Raise a :class:`ConformanceError`."""
    await asyncio.sleep(0)
    raise ConformanceError(message, code, {"code": code, "tags": ["a", "b"]})


@tool
def raise_unpicklable(message: str) -> None:
    """Raise an :class:`UnpicklableError`."""
    raise UnpicklableError(message)


@tool
async def raise_unpicklable_async(message: str) -> None:
    """Raise an :class:`UnpicklableError`."""
    await asyncio.sleep(0)
    raise UnpicklableError(message)


@tool
def flaky(marker_dir: str, succeed_on: int) -> int:
    """Fail with :class:`ConformanceError` until attempt ``succeed_on``; return the attempt."""
    attempt = _record_attempt(marker_dir)
    if attempt < succeed_on:
        raise ConformanceError(f"attempt {attempt} fails", attempt, {})
    return attempt


@tool
async def flaky_async(marker_dir: str, succeed_on: int) -> int:
    """Fail with :class:`ConformanceError` until attempt ``succeed_on``; return the attempt."""
    await asyncio.sleep(0)
    attempt = _record_attempt(marker_dir)
    if attempt < succeed_on:
        raise ConformanceError(f"attempt {attempt} fails", attempt, {})
    return attempt


@tool
def crash(code: int = 3) -> None:
    """End the process running the call at once, as a segfault or an OOM kill would."""
    os._exit(code)


# ---- serialization --------------------------------------------------------------------------


@tool
def takes_anything(value: Any) -> str:
    """The argument's type name."""
    return type(value).__name__


@tool
async def takes_anything_async(value: Any) -> str:
    """The argument's type name."""
    await asyncio.sleep(0)
    return type(value).__name__


@tool
def returns_unpicklable() -> Any:
    """A lock, which pickle refuses."""
    return threading.Lock()


@tool
async def returns_unpicklable_async() -> Any:
    """A lock, which pickle refuses."""
    await asyncio.sleep(0)
    return threading.Lock()


# ---- time -----------------------------------------------------------------------------------


@tool
def span(seconds: float) -> tuple[float, float]:
    """Sleep; return the wall-clock (start, end), comparable across processes on one host."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@tool
async def span_async(seconds: float) -> tuple[float, float]:
    """Sleep; return the wall-clock (start, end), comparable across processes on one host."""
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time()


@tool
def tick(path: str, seconds: float) -> int:
    """Append a byte to ``path`` every few ms for ``seconds``: the file grows while work runs."""
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        _tick(path)
        count += 1
        time.sleep(TICK)
    return count


@tool
async def tick_async(path: str, seconds: float) -> int:
    """Append a byte to ``path`` every few ms for ``seconds``: the file grows while work runs."""
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        _tick(path)
        count += 1
        await asyncio.sleep(TICK)
    return count


_PAIRS: dict[str, tuple[Tool[..., Any], Tool[..., Any]]] = {
    "echo": (echo, echo_async),
    "add": (add, add_async),
    "measure": (measure, measure_async),
    "big_payload": (big_payload, big_payload_async),
    "where": (where, where_async),
    "raise_typed": (raise_typed, raise_typed_async),
    "raise_unpicklable": (raise_unpicklable, raise_unpicklable_async),
    "flaky": (flaky, flaky_async),
    "takes_anything": (takes_anything, takes_anything_async),
    "returns_unpicklable": (returns_unpicklable, returns_unpicklable_async),
    "span": (span, span_async),
    "tick": (tick, tick_async),
}


def pick(name: str, kind: Kind) -> Tool[..., Any]:
    """The sync or the async version of the tool ``name``."""
    sync, async_ = _PAIRS[name]
    return sync if kind == "sync" else async_
