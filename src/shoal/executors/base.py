"""The executor contract: every backend (inline, thread, process, Ray) implements :class:`Executor`.

An executor runs one :class:`Call` and returns the tool's value or raises the tool's exception.
Timeouts and cancellation arrive as cancellation of the awaiting task; an executor then stops the
work where its backend can (cancel a task, kill a process, ``ray.cancel``) and re-raises. Where
the work cannot be stopped (a thread), it sets ``call.abandoned`` so the outcome says so.
The scheduler never learns how a backend works, only this contract.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar

from shoal.exceptions import ToolDefinitionError
from shoal.tools import Isolation, Tool

__all__ = ["Call", "Executor", "unawaited_result"]

# results that are certainly not awaitables: checked by exact type first, as most are these
_PLAIN = frozenset({str, int, float, bool, bytes, type(None), dict, list, tuple})


@dataclass(slots=True)
class Call:
    """One attempt of one node: what to run, with which (already private) arguments."""

    pos: int
    node_id: str
    tool: Tool[..., Any]
    args: dict[str, Any]
    attempt: int
    executor: Isolation
    timeout: float | None
    run_id: str = ""
    abandoned: bool = False
    began_at: float | None = None
    lease: Any = None  # what prepare() reserved for this attempt (a worker, ...)


class Executor(ABC):
    """A backend that runs calls. Create, ``await start()``, ``execute`` many, ``await close()``."""

    name: ClassVar[str]
    #: Whether :meth:`prepare` does anything (the driver skips the await when it does not).
    prepares: ClassVar[bool] = False

    async def start(self) -> None:
        """Acquire resources (pools, connections). Called once before the first call."""
        return None

    async def prepare(self, call: Call) -> None:
        """Get ready to run ``call`` (e.g. reserve or start a worker) before its timeout starts.

        Waiting for a worker is not the call's own time, so the driver awaits this outside the
        timeout. A backend that reserves something here keeps it in ``call.lease`` and must
        release it in :meth:`execute`, whatever happens there.
        """
        return None

    @abstractmethod
    def execute(self, call: Call) -> Awaitable[Any]:
        """An awaitable that runs ``call`` and returns its value, raising what the tool raised.

        On cancellation, stop the work if the backend can, otherwise set
        ``call.abandoned = True``; then re-raise the cancellation. Backends that know when the
        work really began (a pool thread picking it up) set ``call.began_at``
        (``time.monotonic()``), so reported timings exclude time spent waiting for a worker.
        (Plain ``async def`` implementations fit this signature.)
        """

    async def close(self) -> None:
        """Release resources; never waits for abandoned work."""
        return None


def unawaited_result(tool: str, value: Any) -> ToolDefinitionError | None:
    """The error for a result that is work still to be awaited, or ``None`` for a real result.

    A tool that forgets an ``await`` returns a coroutine (or a task, a future, an async
    generator) instead of its value; recorded as ``ok``, a model would be sent
    ``<coroutine object ...>``. Every backend's result passes through here, so such a call
    fails with a message that says what went wrong. The coroutine is closed (so Python does
    not warn that it was never awaited) and a task or future is cancelled.
    """
    if type(value) in _PLAIN:
        return None
    what = _unawaited(value)
    if what is None:
        return None
    return ToolDefinitionError(f"tool {tool!r} returned {what}")


def _unawaited(value: Any) -> str | None:
    """What kind of unfinished work ``value`` is (closing or cancelling it), or ``None``."""
    if inspect.iscoroutine(value):
        value.close()
        return "a coroutine; did you forget 'await'?"
    if isinstance(value, asyncio.Future | concurrent.futures.Future):
        with suppress(RuntimeError):  # a future of a loop that is closed by now
            value.cancel()
        kind = "an asyncio task" if isinstance(value, asyncio.Task) else "a future"
        return f"{kind}; did you forget 'await'?"
    if inspect.isasyncgen(value):
        return ("an async generator; return a list instead (e.g. "
                "[item async for item in ...])")
    if inspect.isawaitable(value):
        return f"an awaitable ({type(value).__qualname__}); did you forget 'await'?"
    return None
