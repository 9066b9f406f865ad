"""Tools for tests/test_*_ray_s39.py, in an importable module: Ray workers load tools by reference.

They report through a log file in a directory the test passes in (a worker shares no memory
with the test): one line per step, in the order the steps happened.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shoal.tools import tool


def note(directory: str, line: str) -> None:
    """Append ``line`` to the log in ``directory`` (one short write: never interleaved)."""
    with Path(directory, "log").open("a") as log:
        log.write(line + "\n")


def steps(directory: str) -> list[str]:
    """The lines of the log in ``directory``, in order."""
    path = Path(directory, "log")
    return path.read_text().splitlines() if path.exists() else []


@tool
def slow_write(directory: str, name: str, seconds: float, p: str) -> str:
    """Work on ``p`` for ``seconds`` (a sync tool: on a pool actor, a thread that cannot stop)."""
    note(directory, f"{name} began")
    time.sleep(seconds)
    note(directory, f"{name} ended")
    return name


@tool
def quick_write(directory: str, name: str, p: str) -> str:
    """Note that it worked on ``p``."""
    note(directory, f"{name} ran")
    return name


@tool
def stubborn_write(directory: str, name: str, seconds: float, p: str) -> str:
    """Work on ``p`` for ``seconds`` (a line each 0.1 s), ignoring ``ray.cancel``'s interrupt."""
    note(directory, f"{name} began")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.1)
            note(directory, f"{name} works")
        except KeyboardInterrupt:
            note(directory, f"{name} ignored an interrupt")
    note(directory, f"{name} ended")
    return name


@tool
async def stubborn_write_async(directory: str, name: str, seconds: float, p: str) -> str:
    """Work on ``p`` for ``seconds`` (a line each 0.1 s), ignoring every cancellation."""
    note(directory, f"{name} began")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.1)
            note(directory, f"{name} works")
        except asyncio.CancelledError:
            note(directory, f"{name} ignored a cancel")
    note(directory, f"{name} ended")
    return name


def _echo(value: object) -> object:
    """Give ``value`` back."""
    return value


#: a tool whose name holds a lone surrogate, a newline and terminal escapes
hostile_name = tool(_echo, name="e\ud800\n\x1b[2J\x1b]0;pwned\x07")


@tool
def self_containing() -> list[object]:
    """A list that contains itself, in a dict that contains the list."""
    loop: list[object] = []
    loop.append({"me": loop, "s": "\ud800"})
    return loop


@tool
def deep(levels: int) -> list[object]:
    """A list nested ``levels`` deep."""
    value: list[object] = []
    for _ in range(levels):
        value = [value]
    return value


class BadReduce(Exception):
    """An error whose pickling raises."""

    def __reduce__(self) -> tuple[object, ...]:
        raise RuntimeError("no pickling me")


class BadReduceExit(Exception):
    """An error whose pickling raises SystemExit."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit(3)


@tool
def raise_bad_reduce(kind: str) -> None:
    """Raise an error whose ``__reduce__`` fails."""
    raise (BadReduce if kind == "runtime" else BadReduceExit)("bad \ud800 \x1b[31mred")
