"""An agent's model sees an MCP server's tools as the server lists them now (session 39).

After a server says its tools changed (``notifications/tools/list_changed``), shoal lists them
again and checks calls against the new listing; the tool list given to the MODEL stayed the
one made when the agent was defined: the model was offered a schema the server no longer
takes, a description it no longer gives, and a tool it no longer has. Real servers only: the
raw stdio servers of tests/hostile_mcp_s38_server.py and tests/hostile_mcp_s39_server.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.models import ModelRequest, ToolSpec
from shoal.testing import ScriptedModel, call
from tests.conftest import arun
from tests.test_hostile_mcp_s38 import SERVER as SERVER_S38
from tests.test_hostile_mcp_s38 import SLOW

SERVER = [sys.executable, str(Path(__file__).parent / "hostile_mcp_s39_server.py")]


def spec(request: ModelRequest, name: str) -> ToolSpec | None:
    """The tool ``name`` as ``request`` offers it to the model (None: not offered)."""
    return next((t for t in request.tools if t.name == name), None)


def run_agent(tools: list[Any], steps: list[Any]) -> tuple[ScriptedModel, Any]:
    """Run an agent on ``tools`` whose model plays ``steps``; its model and its result."""
    model = ScriptedModel(steps)
    agent = shoal.Agent(name="changer", model=model, tools=tools)
    return model, arun(agent.run(prompt="go"), timeout=SLOW)


def test_the_model_is_offered_the_input_schema_the_server_lists_after_a_change() -> None:
    tools = arun(shoal.mcp.tools(command=[*SERVER_S38, "reargue"], approval=False,
                                 timeout=30), timeout=SLOW)
    model, result = run_agent(tools, [[call("reargue")], [call("echo", text="abc")], "done"])
    assert result.output == "done"
    before, after = spec(model.requests[0], "echo"), spec(model.requests[1], "echo")
    assert before is not None and after is not None
    assert "maxLength" not in before.parameters["properties"]["text"]
    assert after.parameters["properties"]["text"]["maxLength"] == 3  # what the server takes
    assert [c.outcome.value for c in result.calls if c.outcome is not None] == [
        "reargue: done", "echo: abc"]


def test_a_tool_the_server_no_longer_lists_is_no_longer_offered_to_the_model() -> None:
    tools = arun(shoal.mcp.tools(command=SERVER_S38, approval=False, timeout=30),
                 timeout=SLOW)
    model, result = run_agent(tools, [[call("shrink")], "done"])
    assert result.output == "done"
    assert spec(model.requests[0], "gone") is not None
    assert spec(model.requests[1], "gone") is None  # the server removed it
    assert spec(model.requests[1], "echo") is not None  # the others stay


def test_a_new_description_reaches_the_model_plain_and_a_call_fitting_the_new_schema_runs(
        ) -> None:
    tools = arun(shoal.mcp.tools(command=SERVER, approval=False, timeout=30), timeout=SLOW)
    model, result = run_agent(tools, [[call("redescribe")], [call("echo", text="abcdef")],
                                      [call("echo", text="ab")], "done"])
    assert result.output == "done"
    first, second = spec(model.requests[0], "echo"), spec(model.requests[1], "echo")
    assert first is not None and second is not None
    assert first.description == "Echo the text."
    # the server's new words, without its escape sequences, CR, NUL or bidi override
    assert second.description == "now short\nFAKE gnol only"
    assert second.parameters["properties"]["text"]["maxLength"] == 3
    outcomes = [c.outcome for c in result.calls if c.outcome is not None]
    assert outcomes[1].status == "failed"  # 6 characters: what the server now refuses
    assert outcomes[1].error is not None and "is too long" in outcomes[1].error.message
    assert (outcomes[2].status, outcomes[2].value) == ("ok", "echo: ab")


def test_an_agent_whose_servers_did_not_change_sends_the_tools_it_was_defined_with() -> None:
    # the same object each turn: a request's digest encodes an agent's own tools once
    tools = arun(shoal.mcp.tools(command=SERVER, approval=False, timeout=30), timeout=SLOW)
    model = ScriptedModel([[call("echo", text="a")], [call("echo", text="b")], "done"])
    agent = shoal.Agent(name="steady", model=model, tools=tools)
    arun(agent.run(prompt="go"), timeout=SLOW)
    assert all(r.tools == agent.tool_specs for r in model.requests)
    assert len(model.requests) == 3
