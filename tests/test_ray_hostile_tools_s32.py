"""A hostile tool on Ray: one that raises ``KeyboardInterrupt`` itself.

Ray stops a task by raising ``KeyboardInterrupt`` in it, so Ray reports such a tool's task as
cancelled; shoal, which did not cancel it, used to say its worker process had died.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from shoal import Plan, run_sync
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster")]


def test_a_task_whose_tool_raises_keyboard_interrupt_fails_without_a_dead_worker() -> None:
    # was: WorkerCrashedError 'the worker process running tool ... died: Ray reported
    # TaskCancelledError' (no worker died; the next call reuses it)
    plan = Plan()
    bad = plan.call(rt.raise_keyboard_interrupt.options(isolation="ray"))
    sibling = plan.call(rt.echo.options(isolation="ray"), value="kept")
    result = run_sync(plan)
    out = result[bad]
    assert out.status == "failed" and out.error is not None, out
    # as on every backend since (see tests/test_found_s37.py): the tool's own raise
    assert out.error.type == "shoal.exceptions.ToolDefinitionError", out.error
    assert "raised KeyboardInterrupt away from the main thread" in out.error.message
    assert result.value(sibling) == "kept"
