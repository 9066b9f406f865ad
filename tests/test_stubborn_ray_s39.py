"""Ray calls whose tools ignore their cancellation hold what they hold until their work ends.

A Ray task's tool that catches the ``KeyboardInterrupt`` of ``ray.cancel`` runs on until shoal
kills its worker, :data:`~shoal.executors.ray.CANCEL_GRACE` seconds later; its outcome was
recorded at once, though, and a write to the same resource key ran beside it. An async tool on
shoal's actor pool that catches its ``CancelledError`` runs on for good, and its outcome said
it had stopped (not ``abandoned``). Now a task's outcome is recorded once its worker is gone
(as a process worker's is), and an async pooled call that outlives its grace is recorded
abandoned, holding its keys until it ends. Real Ray: ``RAY_ADDRESS`` if set, else a local Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

import shoal
from tests import ray_s39_tools as tools
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]

POOLED = {"isolation": "ray", "resources": {"num_cpus": 0}}


def _run(plan: shoal.Plan) -> shoal.RunResult:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            warm = shoal.Plan()  # a task worker and the pool actor up first
            warm.call(rt.echo.options(isolation="ray"), value="up")
            warm.call(rt.echo.options(**POOLED), value="up")
            await runtime.run(warm)
            return await runtime.run(plan)

    return arun(main(), timeout=120)


def _writes(tool: shoal.Tool[..., Any], d: str, **options: Any) -> tuple[shoal.Plan, Any, Any]:
    plan = shoal.Plan()
    slow = plan.call(tool.options(timeout=1.0, writes=["file:{p}"], **options), directory=d,
                     name="slow", seconds=4.0, p="/p")
    after = plan.call(tools.quick_write.options(**POOLED, writes=["file:{p}"]), directory=d,
                      name="after", p="/p")
    return plan, slow, after


def test_a_write_waits_until_a_timed_out_ray_task_ignoring_its_interrupt_is_killed(
        tmp_path: Path) -> None:
    # was: 'after' ran while 'slow' still worked, for the second before its worker was killed
    d = str(tmp_path)
    plan, slow, after = _writes(tools.stubborn_write, d, isolation="ray")
    result = _run(plan)
    assert result[slow].status == "timed_out" and not result[slow].abandoned, result[slow]
    assert result.value(after) == "after"
    log = tools.steps(d)
    assert "slow ignored an interrupt" in log and "slow ended" not in log, log
    assert log[-1] == "after ran", log  # nothing of 'slow' after it: it was dead by then


def test_an_async_pooled_tool_ignoring_its_cancel_is_abandoned_and_holds_its_key(
        tmp_path: Path) -> None:
    # was: recorded timed_out, not abandoned, and 'after' ran while it went on writing
    d = str(tmp_path)
    plan, slow, after = _writes(tools.stubborn_write_async, d, **POOLED)
    result = _run(plan)
    assert result[slow].status == "timed_out" and result[slow].abandoned, result[slow]
    assert result.value(after) == "after"
    log = tools.steps(d)
    assert "slow ignored a cancel" in log, log
    assert log[-2:] == ["slow ended", "after ran"], log
