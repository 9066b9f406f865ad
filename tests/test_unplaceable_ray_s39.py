"""A Ray tool or agent reserving what no node of the cluster has: shoal says so, naming it.

Ray keeps such a task waiting until a node that has it joins, and its own warning goes to the
driver's log, which shoal does not show: a call without a timeout waited for ever, silently.
Real Ray: ``RAY_ADDRESS`` if set, else a private local Ray for the module.
"""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("ray")

import shoal
from shoal.testing import ScriptedModel
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]


def _run(plan: shoal.Plan) -> shoal.RunResult:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan)

    return arun(main(), timeout=120)


def test_a_tool_reserving_what_no_node_has_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # was: no word; the calls waited until their timeouts (for ever without one)
    plan = shoal.Plan()
    missing = rt.echo.options(isolation="ray", resources={"s39_absent": 1, "num_cpus": 1},
                              timeout=1.0)
    calls = [plan.call(missing, value=n) for n in range(2)]
    with caplog.at_level(logging.WARNING, logger="shoal"):
        result = _run(plan)
    assert [result[c].status for c in calls] == ["timed_out", "timed_out"]
    said = [r.getMessage() for r in caplog.records if "no node of the Ray cluster" in r.message]
    assert len(said) == 1, said  # once for the tool, not once per call
    assert said[0].startswith("no node of the Ray cluster has what tool 'echo' reserves "
                              "(CPU=1, s39_absent=1; the most a node has: CPU="), said
    assert said[0].endswith("s39_absent=0): its calls wait until such a node joins, for ever "
                            "without a timeout"), said


def test_a_tool_whose_resources_a_node_has_runs_without_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    plan = shoal.Plan()
    fits = plan.call(rt.echo.options(isolation="ray", resources={"num_cpus": 0.5}), value=1)
    with caplog.at_level(logging.WARNING, logger="shoal"):
        assert _run(plan).value(fits) == 1
    assert not [r for r in caplog.records if "no node of the Ray cluster" in r.getMessage()]


def test_a_ray_agent_reserving_what_no_node_has_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    # was: no word; it waited for its deadline
    model = ScriptedModel.per_prompt({"r": ["never asked"]})
    nowhere = shoal.Agent(name="reader", model=model, isolation="ray",
                          resources={"s39_nowhere": 1})
    plan = shoal.Plan()
    node = plan.call(nowhere, task="r")
    with caplog.at_level(logging.WARNING, logger="shoal"):
        result = shoal.run_sync(plan, deadline=2.0)
    assert result[node].status != "ok"
    said = [r.getMessage() for r in caplog.records if "no node of the Ray cluster" in r.message]
    assert len(said) == 1, said
    assert said[0].startswith("no node of the Ray cluster has what agent "), said
    assert said[0].endswith("reserves (s39_nowhere=1; the most a node has: s39_nowhere=0): its "
                            "actor waits until such a node joins, for ever without a timeout")
