"""Tools for tests/test_ray.py, in an importable module: Ray workers load tools by reference.

Ray workers share no memory with the test process, so tools report through return values
(process ids, wall-clock spans) and through files in a directory the test passes in.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from shoal.testing.conformance_tools import add_async
from shoal.testing.conformance_tools import echo as echo
from shoal.testing.conformance_tools import echo_async as echo_async
from shoal.tools import Tool, tool

add = add_async  # the suite's shared tool, under the name the Ray tests use


class ToolFailure(Exception):
    """A tool's own error whose attributes must survive the trip back from a Ray worker."""

    def __init__(self, message: str, code: int, detail: dict[str, Any]) -> None:
        super().__init__(message, code, detail)
        self.message = message
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type[ToolFailure], tuple[str, int, dict[str, Any]]]:
        return (ToolFailure, (self.message, self.code, self.detail))

    def __str__(self) -> str:  # built from the attributes: the recorded message proves them
        return f"{self.message} [code={self.code}, detail={self.detail}]"


def pick(sync: Tool[..., Any], async_: Tool[..., Any], kind: str) -> Tool[..., Any]:
    """The sync or the async tool of a pair."""
    return sync if kind == "sync" else async_


@tool
def where() -> int:
    """The id of the process the call ran in."""
    return os.getpid()


@tool
async def where_async() -> int:
    """The id of the process the call ran in."""
    return os.getpid()


@tool
def fail(message: str, code: int) -> None:
    """Raise a :class:`ToolFailure`."""
    raise ToolFailure(message, code, {"code": code, "tags": ["x"]})


@tool
async def fail_async(message: str, code: int) -> None:
    """Raise a :class:`ToolFailure`."""
    await asyncio.sleep(0)
    raise ToolFailure(message, code, {"code": code, "tags": ["x"]})


@tool
def raise_cancelled() -> None:
    """Raise ``CancelledError`` though nothing cancelled the call."""
    raise asyncio.CancelledError("from the tool")


@tool
def raise_keyboard_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` itself (which Ray's task cancel raises too)."""
    raise KeyboardInterrupt


@tool
async def raise_cancelled_async() -> None:
    """Raise ``CancelledError`` after an ``await``, though nothing cancelled the call."""
    await asyncio.sleep(0)
    raise asyncio.CancelledError("from the tool")


@tool
def span(seconds: float) -> tuple[float, float]:
    """Sleep; return the (start, end) wall-clock times, for overlap checks."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@tool
def nap(seconds: float) -> float:
    """Block for ``seconds``."""
    time.sleep(seconds)
    return seconds


@tool
async def nap_async(seconds: float) -> float:
    """Await for ``seconds``."""
    await asyncio.sleep(seconds)
    return seconds


@tool
def slow_then_mark(directory: str, name: str, seconds: float) -> str:
    """Write ``name.started``, sleep, then write ``name.done`` (only if not stopped)."""
    Path(directory, f"{name}.started").touch()
    time.sleep(seconds)
    Path(directory, f"{name}.done").touch()
    return name


@tool
async def slow_then_mark_async(directory: str, name: str, seconds: float) -> str:
    """Write ``name.started``, sleep, then write ``name.done`` (only if not stopped)."""
    # touched on the loop on purpose: a cancelled call must not still write ".done" from a
    # thread it left behind (the test reads that file as "was not stopped")
    Path(directory, f"{name}.started").touch()  # noqa: ASYNC240
    await asyncio.sleep(seconds)
    Path(directory, f"{name}.done").touch()  # noqa: ASYNC240
    return name


@tool
def die(code: int) -> None:
    """End the worker process at once, as a crash would."""
    os._exit(code)


@tool
def die_once(directory: str) -> int:
    """End the worker process on the first attempt; on a later one return the attempt number."""
    attempts = Path(directory, "attempts")
    with attempts.open("a") as f:
        f.write(f"{os.getpid()}\n")
    count = len(attempts.read_text().splitlines())
    if count == 1:
        os._exit(3)
    return count


@tool
def returns_lock() -> Any:
    """Return something that cannot be pickled."""
    import threading

    return threading.Lock()


@tool
def takes_anything(value: Any) -> str:
    """Accept any argument."""
    return type(value).__name__


@tool
async def join(parts: list[Any], sep: str = "-") -> str:
    """Join ``parts`` as text."""
    return sep.join(map(str, parts))


@tool
def node_ip() -> str:
    """The address of the Ray node the call ran on."""
    import ray

    util: Any = ray.util
    return str(util.get_node_ip_address())


@tool(approval=True)
def approved_ip() -> str:
    """:func:`node_ip`, once the run's approver has said yes."""
    return str(node_ip())


@tool(retries=2, backoff=0.2)
def mark_and_wait(directory: str, name: str, seconds: float) -> str:
    """Write ``name.<node address>.<pid>.started`` (one per attempt), wait, return the address.

    The test watches for these files to kill a node while a call runs on it. The wait ends
    after ``seconds``, or as soon as the file ``go`` appears in ``directory`` (the test writes
    it once the node it killed has no process left that could still finish a call).
    """
    ip: str = node_ip()
    Path(directory, f"{name}.{ip}.{os.getpid()}.started").touch()
    end, go = time.monotonic() + seconds, Path(directory, "go")
    while time.monotonic() < end and not go.exists():
        time.sleep(0.02)
    return ip
