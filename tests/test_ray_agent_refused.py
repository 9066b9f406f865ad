"""A Ray agent's result holding what the driver's loader refuses loses only that part.

As for process agents (tests/test_process_agent_refused.py): the actor runs the same child
program, and the driver loads its messages with the same :func:`~shoal.agents.remote.
load_message`. Real Ray: with ``RAY_ADDRESS`` set that cluster, otherwise one private local
Ray for the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.conftest import ONE_AT_A_TIME
from tests.test_agent_socket_garbage import check_garbage
from tests.test_process_agent_refused import ODD, REFUSED, _fail_holding, fine, odd, opaque
from tests.test_process_agent_refused_parts import CASES, _run

pytest.importorskip("ray")

pytestmark = [pytest.mark.timeout(180), ONE_AT_A_TIME]  # the one Ray head



@pytest.mark.usefixtures("ray_cluster")
def test_a_refused_value_and_end_error_of_a_ray_agent_fail_only_their_parts() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("opaque"), call("fine", tag="a")],
                                            _fail_holding]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque, fine], isolation="ray")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "failed"
    refused, kept = child.calls
    assert refused.status == "failed" and refused.outcome is not None
    assert refused.outcome.error is not None and refused.outcome.error.type == REFUSED
    assert "lead/reader#1/opaque#1" in refused.outcome.error.message
    assert "Opaque" in refused.outcome.error.message
    assert kept.status == "ok" and kept.outcome is not None and kept.outcome.value == "fine a"
    assert isinstance(child.error, shoal.SerializationError)
    assert "Holding: the model broke" in str(child.error) and "Opaque" in str(child.error)


@pytest.mark.usefixtures("ray_cluster")
def test_a_ray_agent_journaling_through_the_driver_goes_on_past_a_refused_value(
        tmp_path: Path) -> None:
    # a Ray agent's durable journal is the driver's, written through it: the refused value's
    # call is journaled failed, and the agent, its other calls and its journal go on
    journal = str(tmp_path / "journal.db")
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("opaque"), call("odd")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque, odd], isolation="ray")
    runtime = shoal.Runtime(store=journal)
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", runtime=runtime, run_id="r1")
    [child] = result.children
    assert child.status == "ok" and child.output == "read", child.error
    assert [c.status for c in child.calls] == ["failed", "ok"]
    assert runtime.store is not None
    kept = runtime.store.outcomes("r1/lead/reader#1/steps")
    assert kept["opaque#1"].outcome.status == "failed"
    assert kept["opaque#1"].outcome.error is not None
    assert "Opaque" in kept["opaque#1"].outcome.error.message
    assert kept["odd#1"].outcome.value == ODD


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_part_of_a_ray_agents_conversation_costs_only_that_part(case: str) -> None:
    # as for a process agent (tests/test_process_agent_refused_parts.py): it failed the agent
    turn, check = CASES[case]
    check(_run(turn(), "ray"))


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("kind", ["ascii", "short done"])
def test_garbage_on_a_ray_agents_socket_fails_that_agent_naming_it(kind: str) -> None:
    # as for a process agent (tests/test_agent_socket_garbage.py): the length was waited for
    check_garbage(kind, "ray")
