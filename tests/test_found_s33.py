"""Found by reviews, fixed in session 33: injected names a call may not set, a node added
halfway, schemas that do not match their validation, refs as dict keys, timed-out threads
piling up, process agents that do not end, short socket reads, unbounded replies.
"""

from __future__ import annotations

from typing import Any

import pytest

import shoal
from shoal.exceptions import PlanError, ToolArgumentError
from shoal.testing import ScriptedModel, call


def test_a_model_naming_an_injected_argument_of_an_agent_tool_gets_a_rejected_call() -> None:
    # the agent node's tool takes **context: 'shoal_node' was taken as context, then replaced
    # by the runtime's value, and the call ran as if it had not been named
    worker = shoal.Agent(name="worker", model=ScriptedModel(["W"]))
    lead_model = ScriptedModel([[call("worker", task="x", shoal_node=1)], "done"])
    lead = shoal.Agent(name="lead", model=lead_model, tools=[worker.node_tool])
    assert lead.run_sync("go").output == "done"
    result = lead_model.requests[-1].messages[-1]
    assert getattr(result, "is_error", False)
    said = str(getattr(result, "content", ""))
    assert "unexpected argument 'shoal_node': the runtime fills it in" in said


def test_a_tool_taking_more_refuses_its_injected_parameter_by_name() -> None:
    def keyed(x: int, key: shoal.IdempotencyKey, **more: Any) -> int:
        return x

    tool = shoal.tool(keyed)
    assert tool.validate({"x": 1, "y": 2}) == {"x": 1, "y": 2}
    with pytest.raises(ToolArgumentError) as caught:
        tool.validate({"x": 1, "key": "mine"})
    assert caught.value.argument == "key" and "the runtime fills it in" in str(caught.value)
    plan = shoal.Plan()
    first = plan.call(tool, x=1)
    plan.call(tool, x=first, key="mine")  # a ref among the arguments: checked one by one
    with pytest.raises(PlanError, match="'key': the runtime fills it in"):
        plan.validate()
