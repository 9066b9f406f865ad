"""Hostile plans against the planner (mode="plan") and plan text, found in session 35."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.models.base import ModelResponse
from shoal.testing import ScriptedModel, run_virtual
from tests.conftest import arun

SERVER = [sys.executable, str(Path(__file__).parent / "mcp_hostile_s35_server.py")]
SLOW = 60.0  # seconds a test with a real MCP server may take: only a bound for a hang
FINISH = "Thought: done.\nAction: Finish(done)"


def test_a_plan_gives_an_mcp_tool_its_arguments_by_position_in_its_schemas_order() -> None:
    # read off the function behind the tool (it takes only **arguments), no argument could be
    # given by position: get_current_time("UTC") was rejected ("takes at most 0 positional
    # argument(s) (none)"), and an argument named "max-chars", which cannot be written as a
    # keyword, could not be given at all
    pytest.importorskip("mcp", reason="the mcp extra is not installed")

    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=SERVER, timeout=30)
        plan = ("1. echo('hello', 3)\n2. echo('again')\n3. echo($1, text='twice')\n"
                "4. echo('a', 1, 2)\n5. join()")
        agent = shoal.Agent(name="p", model=ScriptedModel([plan, FINISH]), tools=[echo],
                            mode="plan")
        result = await agent.run("go")
        by_id = {c.call.id: c for c in result.calls}
        assert (by_id["1"].status, by_id["1"].message.content) == ("ok", "echo: hel")
        assert (by_id["2"].status, by_id["2"].message.content) == ("ok", "echo: again")
        assert by_id["3"].status == "rejected"
        assert "'text' is given both by position and by name" in by_id["3"].message.content
        assert by_id["4"].status == "rejected"
        assert ("echo takes at most 2 positional argument(s) (text, max-chars), got 3"
                in by_id["4"].message.content)

    arun(main(), timeout=SLOW)


@shoal.tool
async def _echo(x: str) -> str:
    """Echo x."""
    return f"e:{x}"


def test_a_plan_cut_off_at_the_token_limit_tells_the_joiner_so() -> None:
    # the joiner (and a person reading the run) only read that line 2's brackets never close
    cut = ModelResponse(text="1. _echo('a')\n2. _echo('b", stop_reason="length")
    model = ScriptedModel([cut, FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[_echo], mode="plan")
    result = run_virtual(agent.run("go"))
    assert [(c.call.id, c.status) for c in result.calls] == [("1", "ok"), ("2", "rejected")]
    judged = model.requests[1].messages[-1].content
    assert ("Note: the plan was cut off at the model's limit of output tokens (stop reason "
            "'length'), so its last call may be incomplete") in judged
    assert "raise the model's max_tokens" in judged


def test_a_plan_that_reached_join_before_the_token_limit_has_no_such_note() -> None:
    whole = ModelResponse(text="1. _echo('a')\n2. join()\nThought: and now a long ",
                          stop_reason="length")
    model = ScriptedModel([whole, FINISH])
    agent = shoal.Agent(name="p", model=model, tools=[_echo], mode="plan")
    result = run_virtual(agent.run("go"))
    assert [(c.call.id, c.status) for c in result.calls] == [("1", "ok")]
    assert "cut off" not in model.requests[1].messages[-1].content


def test_the_plan_prompt_says_which_arguments_can_only_be_given_by_position() -> None:
    # it listed "max-chars: int = None" as any other: a model wrote max-chars=3, which no
    # plan line can parse
    pytest.importorskip("mcp", reason="the mcp extra is not installed")
    from shoal.agents.planprompts import tool_signature
    from shoal.integrations.mcp import MCPTool, RemoteTool
    from shoal.policy import ToolPolicy

    schema = {"type": "object", "properties": {"text": {"type": "string"},
                                               "max-chars": {"type": "integer"},
                                               "class": {"type": "string"}}}
    echo = MCPTool(RemoteTool(shoal.mcp.server(["x"]), "echo", "Echo.", schema), "echo",
                   ToolPolicy(isolation="inline"))
    agent = shoal.Agent(name="p", model=ScriptedModel([FINISH]), tools=[echo], mode="plan")
    assert tool_signature(agent.tool_specs[0]) == (
        "echo(text: str = None, max-chars: int = None, class: str = None) "
        "[by position only: max-chars, class]")
    assert tool_signature(_echo_spec()) == "_echo(x: str)"


def _echo_spec() -> Any:
    agent = shoal.Agent(name="p", model=ScriptedModel([FINISH]), tools=[_echo], mode="plan")
    return agent.tool_specs[0]
