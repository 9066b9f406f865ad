"""Replies from Ray workers are loaded with the restricted loader, like those of process workers:
a tool on Ray cannot run code in the driver through its result or its exception."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

import shoal
from shoal import Plan, Runtime
from shoal.executors.ray import RayExecutor
from tests import process_tools as pt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = ONE_AT_A_TIME  # the one Ray head


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """Ray up for this module (``RAY_ADDRESS`` if set, else a local Ray that shoal starts)."""
    holder = RayExecutor()
    asyncio.run(holder.start())
    try:
        yield
    finally:
        asyncio.run(holder.close())


@pytest.mark.parametrize("resources", [None, {"num_cpus": 0}], ids=["task", "actor-pool"])
def test_results_and_errors_from_ray_cannot_run_code_in_the_driver(
        resources: dict[str, Any] | None, tmp_path: Path) -> None:
    marker = tmp_path / "ran-in-driver"
    options: dict[str, Any] = {"isolation": "ray", "resources": resources}
    plan = Plan()
    result_trap = plan.call(pt.trap.options(**options), command=f"touch {marker}")
    error_trap = plan.call(pt.trap_error.options(**options), command=f"touch {marker}")
    fine = plan.call(pt.square.options(**options), x=5)

    async def go() -> shoal.RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    result = arun(go(), timeout=120)
    refused = result[result_trap].error
    assert refused is not None and refused.type == "shoal.exceptions.SerializationError"
    assert f"it names {os.system.__module__}.system" in refused.message
    assert result[error_trap].error.type == "tests.process_tools.TrapError"  # type: ignore[union-attr]
    assert result[fine].value == 25
    assert not marker.exists()
