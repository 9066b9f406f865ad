"""Hostile MCP servers and clients against shoal, found in session 39.

Real servers only: the raw stdio server tests/hostile_mcp_s39_server.py (JSON-RPC by hand),
and ``shoal mcp serve`` driven by a raw JSON-RPC client over its stdio. Whatever they send,
every call ends in a recorded outcome, and what a model, the journal and an error show holds
no control character a server wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests.conftest import arun
from tests.test_changed_tools_mcp_s39 import SERVER
from tests.test_hostile_mcp_s38 import SLOW
from tests.test_mcp import ROOT, SHOAL_SERVE

API_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: what no text shown to a model or a person may hold: C0/C1 controls but newline and tab,
#: bidi controls, line and paragraph separators
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def test_hostile_tool_names_and_descriptions_reach_model_and_journal_plain(
        tmp_path: Path) -> None:
    tools = arun(shoal.mcp.tools(command=[*SERVER, "hostile"], approval=False, timeout=30),
                 timeout=SLOW)
    hostile = [t for t in tools if t.name not in ("echo", "redescribe")]
    assert len(hostile) == 3
    for tool in tools:
        assert API_NAME.fullmatch(tool.name), tool.name
        assert not HIDDEN.search(tool.description), repr(tool.description)
        assert len(tool.description) <= 20_100  # cut, with a note
    model = ScriptedModel([[call(t.name, text="x") for t in hostile], "done"])
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        agent = shoal.Agent(name="reader", model=model, tools=tools)
        result = arun(agent.run(prompt="go", runtime=shoal.Runtime(store=store)),
                      timeout=SLOW)
        assert result.output == "done"
        offered = model.requests[0].tools
        assert {t.name for t in offered} >= {t.name for t in hostile}
        for spec in offered:
            assert API_NAME.fullmatch(spec.name) and not HIDDEN.search(spec.description)
        # each call ran, under its shoal name, and the server got its own name back
        names = {t.remote.name: t.name for t in hostile}
        values = sorted(str(c.outcome.value) for c in result.calls if c.outcome is not None)
        assert values == sorted(f"{remote}: x" for remote in names)
        journaled = {node for run in store.list_runs() for node in store.outcomes(run.run_id)}
        for name in names.values():
            assert any(node.endswith(f"/{name}#1") or node == f"{name}#1"
                       for node in journaled), (name, journaled)
        assert not any(HIDDEN.search(node) for node in journaled)
    finally:
        store.close()


def test_tools_a_server_lists_no_more_are_named_plainly_in_the_error() -> None:
    # the error named the tools the server lists now as the server wrote them: its escape
    # sequences went to the model (a tool error is its next prompt) and to the terminal
    async def main() -> None:
        found = {t.name: t for t in await shoal.mcp.tools(
            command=[*SERVER, "hostile", "forget"], approval=False, timeout=30,
            only=["echo", "redescribe", "red\x1b[31m\x1b]8;;http://evil\x07link"])}
        plan = shoal.Plan()
        forgot = plan.call(found["redescribe"], text="x")
        echo = plan.call(found["echo"], text="x", after=forgot)
        result = await shoal.run(plan)
        error = result[echo].error
        assert result[echo].status == "failed" and error is not None
        assert "does not list tool 'echo' now" in error.message
        assert not HIDDEN.search(error.message), error.message
        assert "'red\\x1b[31m\\x1b]8;;http://evil\\x07link'" in error.message

    arun(main(), timeout=SLOW)


def test_an_answer_holding_an_integer_python_cannot_parse_fails_its_call_at_once() -> None:
    # the MCP SDK refuses an integer of 5,000 digits (JSON allows any), and so did Python's
    # parser reading the line again: the answer was dropped, and its call waited until its
    # timeout, or for good without one
    async def main() -> None:
        (big,) = await shoal.mcp.tools(command=[*SERVER, "bigint"], name="big",
                                       only=["bigint"], approval=False, timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(big, text="x")
        began = time.monotonic()
        result = await shoal.run(plan)
        assert time.monotonic() - began < SLOW / 3
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None, result[ref]
        assert error.type == "shoal.exceptions.MCPServerError"
        assert "answered off-protocol while calling 'bigint'" in error.message, error.message

    arun(main(), timeout=SLOW)


def test_a_server_that_exits_between_listing_and_call_fails_the_call_saying_so() -> None:
    async def main() -> None:
        found = {t.name: t for t in await shoal.mcp.tools(
            command=[*SERVER, "exit_after_list"], name="brief", approval=False)}
        plan = shoal.Plan()
        ref = plan.call(found["echo"], text="x")
        began = time.monotonic()
        result = await shoal.run(plan)
        assert time.monotonic() - began < SLOW / 3
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert "its output (stdout) ended" in error.message

    arun(main(), timeout=SLOW)


def test_two_runs_at_once_of_one_stdio_server_config_each_get_a_server(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def main() -> None:
        srv = shoal.mcp.server([*SERVER, "sleep=1", f"pid={pids}"], name="shared")
        (echo,) = await srv.tools(only=["echo"], approval=False, timeout=30)
        pids.unlink()

        async def one(text: str) -> Any:
            plan = shoal.Plan()
            ref = plan.call(echo, text=text)
            return (await shoal.run(plan))[ref].value

        assert list(await asyncio.gather(one("a"), one("b"))) == ["echo: a", "echo: b"]

    arun(main(), timeout=SLOW)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2  # a session (and process) of each run: neither blocked the other
    for pid in started:  # each stopped with its run
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_server_tool_named_like_an_agents_turns_runs_as_a_tool() -> None:
    tools = arun(shoal.mcp.tools(command=[*SERVER, "builtin"], only=["model"], timeout=30),
                 timeout=SLOW)
    model = ScriptedModel([[call("model", text="hi")], "done"])
    agent = shoal.Agent(name="namer", model=model, tools=tools)
    result = arun(agent.run(prompt="go"), timeout=SLOW)
    assert result.output == "done" and result.turns == 2
    assert [c.outcome.value for c in result.calls if c.outcome is not None] == ["model: hi"]


# -- shoal mcp serve, driven by a raw client ---------------------------------------------------


class RawClient:
    """A JSON-RPC client of ``shoal mcp serve tests.mcp_tools:tools`` over its stdio, by hand."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(SHOAL_SERVE, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.ask(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}))
        self.ask('{"jsonrpc": "2.0", "method": "notifications/initialized"}')

    def ask(self, line: str) -> Any:
        """Send ``line``; the answer, if it is a request (None for a notification)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        if '"id"' not in line:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], SLOW / 3)
        assert ready, f"no answer to {line[:100]}"
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        """Stop the server and close its pipes."""
        self.proc.kill()
        with self.proc:
            pass


def tool_call(request: int, name: str, arguments: str) -> str:
    """A ``tools/call`` request line, its arguments' JSON as given."""
    return (f'{{"jsonrpc": "2.0", "id": {request}, "method": "tools/call", '
            f'"params": {{"name": {json.dumps(name)}, "arguments": {arguments}}}}}')


def test_a_served_request_holding_an_integer_python_cannot_parse_is_answered() -> None:
    # the MCP SDK could not read it, nor Python's parser (more than 4,300 digits): the
    # request was dropped unanswered and the client's call waited for good
    client = RawClient()
    try:
        big = client.ask(tool_call(2, "add", '{"a": ' + "9" * 5000 + ', "b": 1}'))
        fine = client.ask(tool_call(3, "add", '{"a": 1, "b": 2}'))
    finally:
        client.close()
    assert big["id"] == 2 and big["error"]["code"] == -32600, big
    assert big["error"]["message"].startswith("the request could not be read (")
    assert fine["id"] == 3 and fine["result"]["structuredContent"] == {"result": 3}


def test_a_served_call_of_a_huge_unknown_tool_name_is_refused_with_it_cut() -> None:
    # the error result quoted the name whole: a 1 MB name came back as a 1 MB answer
    client = RawClient()
    try:
        refused = client.ask(tool_call(2, "x" * 1_000_000, "{}"))
    finally:
        client.close()
    text = refused["result"]["content"][0]["text"]
    assert refused["result"]["isError"] is True
    assert text.startswith("no tool 'xxxx") and len(text) < 1_000, len(text)
    assert text.endswith("; the tools: add, one_at_a_time, side_by_side, launch, too_slow, "
                         "shout")


def test_a_server_s_huge_hostile_name_for_itself_is_plain_and_short_in_keys_and_errors() -> None:
    # the name a server gives itself (serverInfo) names it when name= is not given: 100,000
    # characters after an escape sequence went whole into its tools' resource key (every
    # event and journal record of their calls) and into every error naming the server
    async def main() -> None:
        (big,) = await shoal.mcp.tools(command=[*SERVER, "bigname", "bigint"], only=["bigint"],
                                       approval=False, timeout=SLOW)
        assert len(big.remote.server.key) <= 110 and not HIDDEN.search(big.remote.server.key)
        plan = shoal.Plan()
        ref = plan.call(big, text="x")
        result = await shoal.run(plan)
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert len(error.message) < 5_000 and "\\x1b" not in error.message, len(error.message)
        assert error.message.startswith("MCP server 'NNNN")

    arun(main(), timeout=SLOW)


def test_a_served_call_of_a_hundred_thousand_unknown_arguments_is_refused_counting_them(
        ) -> None:
    # each problem was described (its value quoted) before the message was cut to its first
    # few: seconds for one request, while the served event loop answered no other client
    client = RawClient()
    try:
        many = {f"k{i}": i for i in range(100_000)}
        refused = client.ask(tool_call(2, "add", json.dumps({**many, "a": 1, "b": 2})))
    finally:
        client.close()
    text = refused["result"]["content"][0]["text"]
    assert refused["result"]["isError"] is True
    assert text.startswith("add: unexpected argument 'k0'; unexpected argument 'k1'; ")
    assert text.endswith("unexpected argument 'k19'; and 99,980 more problems"), text[-200:]
