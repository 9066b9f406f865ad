"""The inline executor: async tools run as tasks on the event loop itself."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from shoal.exceptions import ExecutorError
from shoal.executors.base import Call, Executor

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Awaits async tools on the running loop; cancellation stops them at their next ``await``."""

    name = "inline"
    runs_here = True

    def execute(self, call: Call) -> Awaitable[Any]:
        """The tool's own coroutine: awaiting it directly saves a frame on the hottest path."""
        if not call.tool.is_async:
            raise ExecutorError(
                f"tool {call.tool.name!r} is sync and cannot run inline without blocking the loop"
            )
        coro: Awaitable[Any] = call.tool.fn(**call.args)
        return coro
