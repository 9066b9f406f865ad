"""MCP tools a server lists anew, and what shoal says of its answers (session 39, round 2).

Real servers only: the raw stdio servers tests/hostile_mcp_s38_server.py and
tests/hostile_mcp_s39_server.py (JSON-RPC by hand), shoal's own tools, ScriptedModel.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.exceptions import ToolArgumentError
from shoal.schema import describe_errors
from shoal.testing import ScriptedModel, call
from tests.conftest import arun
from tests.test_changed_tools_mcp_s39 import SERVER
from tests.test_hostile_mcp_s35 import _OffProtocolHTTP
from tests.test_hostile_mcp_s38 import SERVER as SERVER_S38
from tests.test_hostile_mcp_s38 import SLOW


@shoal.tool
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


def pydantic_says(args: dict[str, Any]) -> str:
    """The message pydantic's own error list makes of ``args`` for ``add``."""
    try:
        add._model.__pydantic_validator__.validate_python(args)
    except Exception as exc:
        return describe_errors(exc.errors(include_url=False))[1]  # type: ignore[attr-defined]
    raise AssertionError("pydantic took the arguments")


@pytest.mark.parametrize("args", [
    {"a": 1, "x": 2},
    {"x": 1, "a": "no", "y": 2},
    {"b": 1, **{f"k{i}": i for i in range(30)}},  # a missing: said first, then 19 described
    {**{f"k{i}": [i] for i in range(25)}, "a": 1},
    {"a": 1, "\udc80": 2, "x": 3},  # a name pydantic refuses as text: it judges them all
    {"a": 1, 3: 4},
])
def test_unknown_arguments_are_refused_as_pydantic_says(args: dict[str, Any]) -> None:
    with pytest.raises(ToolArgumentError) as caught:
        add.validate(args)
    assert str(caught.value).endswith(f": {pydantic_says(args)}"), (
        str(caught.value), pydantic_says(args))


def test_a_hundred_thousand_unknown_arguments_are_refused_in_milliseconds() -> None:
    # pydantic made an error of each (its value quoted): 1.5-2 s for one call, while a
    # served event loop answered no one else
    many = {f"k{i}": i for i in range(100_000)}
    add.validate({"a": 1})  # the schema's facts worked out before the clock starts
    start = time.perf_counter()
    with pytest.raises(ToolArgumentError) as caught:
        add.validate({**many, "a": 1, "b": "x"})
    took = time.perf_counter() - start
    message = str(caught.value)
    assert "argument 'b': Input should be a valid integer" in message
    assert message.endswith("unexpected argument 'k18'; and 99,981 more problems"), message
    assert took < 0.5, took  # (0.7-1.6 s before, on a loaded machine; now 0.15-0.25 s)


FINISH = "Thought: done.\nAction: Finish(done)"


def test_a_planner_plans_over_the_tools_as_the_server_lists_them_now() -> None:
    tools = arun(shoal.mcp.tools(command=SERVER, approval=False, timeout=30), timeout=SLOW)
    model = ScriptedModel(["1. redescribe(text='x')\n2. join()",
                           "Thought: again.\nAction: Replan(once more)",
                           "1. echo(text='ab')\n2. join()", FINISH])
    agent = shoal.Agent(name="p", model=model, tools=tools, mode="plan")
    result = arun(agent.run(prompt="go"), timeout=SLOW)
    assert result.output == "done"
    plans = [r for r in model.requests if r.plan_tools]
    assert len(plans) == 2
    first = {t.name: t for t in plans[0].plan_tools}["echo"]
    second = {t.name: t for t in plans[1].plan_tools}["echo"]
    assert first.description == "Echo the text."
    assert second.description == "now short\nFAKE gnol only"
    assert second.parameters["properties"]["text"]["maxLength"] == 3
    assert "Echo the text." in plans[0].instructions
    assert "now short" in plans[1].instructions and "Echo the text." not in (
        plans[1].instructions)


def test_a_planner_whose_tools_did_not_change_keeps_one_prompt() -> None:
    tools = arun(shoal.mcp.tools(command=SERVER, approval=False, timeout=30), timeout=SLOW)
    model = ScriptedModel(["1. echo(text='a')\n2. join()",
                           "Thought: again.\nAction: Replan(once more)",
                           "1. echo(text='b')\n2. join()", FINISH])
    agent = shoal.Agent(name="p", model=model, tools=tools, mode="plan")
    assert arun(agent.run(prompt="go"), timeout=SLOW).output == "done"
    assert len({r.instructions for r in model.requests}) == 1
    plans = [r.plan_tools for r in model.requests if r.plan_tools]
    assert len(plans) == 2 and plans[0] == plans[1] == agent.tool_specs


def test_an_answer_shoal_fails_its_call_with_is_not_logged_as_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Any:
        (deep,) = await shoal.mcp.tools(command=SERVER_S38, name="deep", only=["deep"],
                                         approval=False, timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(deep, n=2000)
        return (await shoal.run(plan))[ref]

    with caplog.at_level(logging.INFO):
        outcome = arun(main(), timeout=SLOW)
    assert outcome.status == "failed" and outcome.error is not None
    assert "cannot read (nested too deeply" in outcome.error.message
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert said == [], said


def test_a_line_that_is_really_ignored_is_still_logged_so(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Any:
        tools = await shoal.mcp.tools(command=[*SERVER, "offline"], approval=False, timeout=30)
        plan = shoal.Plan()
        ref = plan.call(next(t for t in tools if t.name == "echo"), text="a")
        return (await shoal.run(plan))[ref]

    with caplog.at_level(logging.INFO):
        outcome = arun(main(), timeout=SLOW)
    assert (outcome.status, outcome.value) == ("ok", "echo: a")
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert said == ["MCP server printed a line that is not JSON-RPC on stdout (ignored): "
                    "not JSON-RPC at all"], said


def run_approved(mode: str, steps: list[Any]) -> tuple[list[str], Any, list[Any]]:
    """Run an agent on the s39 server in ``mode``; the tools approval was asked for."""
    asked: list[str] = []

    def approver(request: Any) -> bool:
        asked.append(request.tool)
        return True

    tools = arun(shoal.mcp.tools(command=[*SERVER, mode], timeout=30), timeout=SLOW)
    agent = shoal.Agent(name="a", model=ScriptedModel(steps), tools=tools)
    result = arun(agent.run(prompt="go", runtime=shoal.Runtime(approver=approver)),
                  timeout=SLOW)
    return asked, result, tools


def test_a_tool_listed_anew_as_destructive_needs_approval_from_then_on() -> None:
    asked, result, tools = run_approved("harden", [
        [call("echo", text="a")], [call("redescribe")], [call("echo", text="b")], "done"])
    assert result.output == "done"
    assert asked == ["echo"]  # the second call only: the first was of a read-only tool
    assert [c.outcome.value for c in result.calls if c.outcome is not None] == [
        "echo: a", "redescribe: ", "echo: b"]
    echo = next(t for t in tools if t.name == "echo")
    assert echo.policy.approval is True and echo.remote.read_only is True


def test_a_tool_listed_anew_as_read_only_still_needs_approval() -> None:
    # a server could drop destructiveHint to have a call skip its approval
    asked, result, tools = run_approved("soften", [
        [call("echo", text="a")], [call("redescribe")], [call("echo", text="b")], "done"])
    assert result.output == "done"
    assert asked == ["echo", "echo"]
    echo = next(t for t in tools if t.name == "echo")
    assert echo.policy.approval is True


def test_approval_given_stays_as_given_whatever_the_listing_says() -> None:
    tools = arun(shoal.mcp.tools(command=[*SERVER, "harden"], approval=False, timeout=30),
                 timeout=SLOW)
    model = ScriptedModel([[call("redescribe")], [call("echo", text="b")], "done"])
    agent = shoal.Agent(name="a", model=model, tools=tools)
    result = arun(agent.run(prompt="go"), timeout=SLOW)
    assert result.output == "done"
    echo = next(t for t in tools if t.name == "echo")
    assert echo.policy.approval is False


def test_a_tool_s_description_follows_the_listing_as_served() -> None:
    tools = arun(shoal.mcp.tools(command=SERVER, approval=False, timeout=30), timeout=SLOW)
    echo = next(t for t in tools if t.name == "echo")
    assert echo.description == "Echo the text."
    model = ScriptedModel([[call("redescribe")], "done"])
    arun(shoal.Agent(name="a", model=model, tools=tools).run(prompt="go"), timeout=SLOW)
    assert echo.description == "now short\nFAKE gnol only"


def test_a_lone_surrogate_in_one_description_reads_as_u_fffd_not_a_failed_listing() -> None:
    # JSON allows the escape, the MCP SDK's parser refuses it: the listing of every tool failed
    tools = arun(shoal.mcp.tools(command=[*SERVER, "surrogate"], approval=False, timeout=30),
                 timeout=SLOW)
    assert sorted(t.name for t in tools) == ["echo", "odd", "redescribe"]
    odd = next(t for t in tools if t.name == "odd")
    assert odd.description == "half \ufffd a pair"
    echo = next(t for t in tools if t.name == "echo")
    assert arun(echo(text="a"), timeout=SLOW) == "echo: a"


class _SurrogateHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP (JSON answers) whose tool's description holds ``\\ud800``."""

    def _listed_tools(self) -> list[dict[str, Any]]:
        return [{**tool, "description": "half \ud800 a pair"}
                for tool in super()._listed_tools()]

    def do_POST(self) -> None:
        """Answer the handshake, the listing and calls (with a lone surrogate too)."""
        message = self._read()
        if self._notified(message):
            return
        answer = self._answered(message)
        answer.setdefault("result", {"content": [{"type": "text", "text": "a \udc80 b"}]})
        self._send(json.dumps(answer).encode())  # the lone surrogates as JSON escapes


def test_a_lone_surrogate_in_an_http_json_answer_reads_as_u_fffd() -> None:
    web = ThreadingHTTPServer(("127.0.0.1", 0), _SurrogateHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/mcp"

    async def main() -> None:
        (tool,) = await shoal.mcp.tools(url=url, timeout=30)
        assert tool.description == "half \ufffd a pair"
        assert await tool() == "a \ufffd b"

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()
