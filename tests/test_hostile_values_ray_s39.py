"""Hostile names, values and errors through both routes of the Ray backend (sweep 39).

Every call ends in a recorded outcome, its siblings' values kept. Real Ray: ``RAY_ADDRESS`` if
set, else a private local Ray for the module.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray")

import shoal
from shoal.executors.ray import _task_name
from tests import ray_s39_tools as tools
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]

ROUTES: dict[str, dict[str, Any]] = {"task": {"isolation": "ray"},
                                      "pool": {"isolation": "ray", "resources": {"num_cpus": 0}}}


def _run(plan: shoal.Plan) -> shoal.RunResult:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan)

    return arun(main(), timeout=120)


def test_a_ray_task_name_shows_what_cannot_be_printed_escaped() -> None:
    assert _task_name("e\ud800\n\x1b[2J") == "shoal:e\\ud800\\n\\x1b[2J"
    assert _task_name("lire_é") == "shoal:lire_é"


@pytest.mark.parametrize("route", list(ROUTES))
def test_hostile_names_values_and_errors_end_in_typed_outcomes(route: str) -> None:
    options: dict[str, Any] = {**ROUTES[route], "timeout": 60.0}
    loop: list[object] = []
    loop.append(loop)
    plan = shoal.Plan()
    # was (Ray task): UnicodeEncodeError 'surrogates not allowed': Ray encodes the task's name
    named = plan.call(tools.hostile_name.options(**options), value="x\ud800")
    looped = plan.call(rt.echo.options(**options), value=loop)
    contains = plan.call(tools.self_containing.options(**options))
    deep = plan.call(tools.deep.options(**options), levels=100_000)
    bad = {kind: plan.call(tools.raise_bad_reduce.options(**options), kind=kind)
           for kind in ("runtime", "exit")}
    sibling = plan.call(rt.echo.options(**options), value="kept")
    result = _run(plan)
    assert result.value(named) == "x\ud800", result[named]
    back = result.value(looped)
    assert back[0] is back
    inner = result.value(contains)
    assert inner[0]["me"] is inner and inner[0]["s"] == "\ud800"
    error = result[deep].error
    assert error is not None and error.type == "shoal.exceptions.SerializationError", error
    assert "the result of tool 'deep' cannot be pickled" in error.message
    for kind, ref in bad.items():  # the error's own type, rebuilt from its name and message
        error = result[ref].error
        assert error is not None and error.message == "bad \ud800 \x1b[31mred", (kind, error)
    assert result.value(sibling) == "kept"


@pytest.mark.parametrize("labels", [{"zone": "in("}, {"zone": "\ud800"}, {"zo\nne": "b"}])
def test_labels_ray_refuses_fail_the_call_with_a_config_error_naming_the_tool(
        labels: dict[str, str]) -> None:
    # was: Ray's bare ValueError 'Invalid label selector value ...', naming no tool or setting
    plan = shoal.Plan()
    bad = plan.call(rt.echo.options(isolation="ray", labels=labels, timeout=30.0), value=1)
    sibling = plan.call(rt.echo.options(isolation="ray"), value="kept")
    result = _run(plan)
    error = result[bad].error
    assert error is not None and error.type == "shoal.exceptions.ConfigError", error
    assert error.message.startswith("tool 'echo': Ray refused its task's options (from its "
                                    "resources= and labels=): Invalid label"), error.message
    assert result.value(sibling) == "kept"
