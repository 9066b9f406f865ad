"""Hostile clients and servers for shoal's MCP server and client, its OpenTelemetry export and
its timeline: each gets a typed error or a recorded outcome, never a dead server or a hang.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.integrations import mcp
from shoal.integrations.mcp._serve import _Served
from shoal.runtime import Runtime
from shoal.store.sqlite import SQLiteStore
from tests.conftest import arun

HOSTILE = [sys.executable, str(Path(__file__).parent / "mcp_hostile_server.py")]


@shoal.tool
def _lone_surrogate_value(text: str) -> dict[str, str]:
    """A value the wire (UTF-8) cannot carry."""
    return {"v": "\ud800" + text}


@shoal.tool
def _lone_surrogate_error(text: str) -> str:
    """An error message the wire cannot carry."""
    raise ValueError("bad \ud800 " + text)


@pytest.mark.parametrize("tool", [_lone_surrogate_value, _lone_surrogate_error])
def test_a_served_result_with_a_lone_surrogate_is_sent_with_it_replaced(tool: Any) -> None:
    # the SDK's writer raised on it, and that took the whole server (every client) down
    async def main() -> Any:
        served = _Served(mcp.served_tools([tool]), Runtime())
        try:
            return await served.call(tool.name, {"text": "a"})
        finally:
            await served.runtime.aclose()

    result = asyncio.run(main())
    wire = result.model_dump_json(by_alias=True, exclude_unset=True)
    assert "?a" in wire or "? a" in wire
    assert result.is_error == (tool is _lone_surrogate_error)


_started = asyncio.Event()


@shoal.tool
async def _hangs() -> str:
    """Runs until cancelled."""
    _started.set()
    await asyncio.sleep(3600)
    return "never"


def test_a_served_call_the_client_cancels_ends_cancelled_in_the_journal(tmp_path: Path) -> None:
    # the SDK cancels the handler on notifications/cancelled (and when the client goes away):
    # the run was left 'running' in the journal for as long as the server lived
    async def main() -> list[Any]:
        _started.clear()
        store = SQLiteStore(tmp_path / "j.db")
        served = _Served(mcp.served_tools([_hangs]), Runtime(store=store))
        try:
            task = asyncio.create_task(served.call("_hangs", {}))
            await asyncio.wait_for(_started.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return [(r.status, store.outcomes(r.run_id).get("_hangs"))
                    for r in store.list_runs()]
        finally:
            await served.runtime.aclose()

    [(status, outcome)] = asyncio.run(main())
    assert status == "cancelled"
    assert outcome is not None and outcome.outcome.status == "cancelled"
    assert "MCP client cancelled" in (outcome.outcome.reason or "")


def test_a_json_rpc_error_coded_minus_32000_fails_that_call_and_keeps_the_session() -> None:
    # -32000 is the MCP SDK's code for a closed connection, and the first of JSON-RPC's
    # server-error codes: the server's answer was taken for its output ending, which ended
    # the session (failing every call in flight on it) and blamed a crash
    async def main() -> tuple[int, int]:
        server = shoal.mcp.server(HOSTILE, name="hostile")
        async with server:  # listed in the session held open: one server start, not two
            found = {t.name: t for t in await server.tools()}
            before = await found["pid"]()
            with pytest.raises(shoal.MCPToolError, match=r"the backend is down \(error -32000\)"):
                await found["server_error"]()
            return before, await found["pid"]()

    before, after = arun(main(), timeout=60)
    assert before == after


_UNREADABLE_SERVER = r"""
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    answer = {"jsonrpc": "2.0", "id": request.get("id")}
    if request.get("method") == "initialize":
        answer["result"] = {"protocolVersion": request["params"]["protocolVersion"],
                            "capabilities": {"tools": {}},
                            "serverInfo": {"name": "raw", "version": "1"}}
    elif request.get("method") == "tools/list":
        answer["result"] = {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}
    elif request.get("method") == "tools/call":  # nested too deeply for any parser to read
        sys.stdout.write(json.dumps(answer)[:-1] + ', "result": {"content": [], '
                         '"structuredContent": {"a": ' + "[" * 5000 + "]" * 5000 + '}}}\n')
        sys.stdout.flush()
        continue
    elif "id" in request:  # server/discover and the like: refused at once, as JSON-RPC says
        answer["error"] = {"code": -32601, "message": "no such method"}
    else:  # a notification
        continue
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
"""


def test_an_answer_the_sdk_cannot_read_fails_its_call_instead_of_leaving_it_waiting(
        tmp_path: Path) -> None:
    # the SDK dropped the line (logging it), and the call, with no timeout, waited for good
    script = tmp_path / "server.py"
    script.write_text(_UNREADABLE_SERVER)

    async def main() -> None:
        [tool] = await shoal.mcp.tools(command=[sys.executable, str(script)])
        with pytest.raises(shoal.MCPServerError, match="answered off-protocol while calling "
                           "'t': its answer is JSON the MCP SDK cannot read"):
            await asyncio.wait_for(tool(), 30)

    arun(main(), timeout=60)
