"""The inline executor: async tools run as tasks on the event loop itself."""

from __future__ import annotations

from typing import Any

from shoal.exceptions import ExecutorError
from shoal.executors.base import Call, Executor

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Awaits async tools on the running loop; cancellation stops them at their next ``await``."""

    name = "inline"

    async def execute(self, call: Call) -> Any:
        """Await the tool's coroutine."""
        if not call.tool.is_async:
            raise ExecutorError(
                f"tool {call.tool.name!r} is sync and cannot run inline without blocking the loop"
            )
        return await call.tool.fn(**call.args)
