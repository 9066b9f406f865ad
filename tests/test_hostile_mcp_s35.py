"""Hostile MCP servers against shoal's MCP client, found in session 35.

Each server is a real subprocess speaking MCP over stdio (tests/mcp_hostile_s35_server.py,
on the SDK's low-level server API): whatever it does, shoal answers with a typed error a
person can act on, or the result, never a traceback from inside the SDK or a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.exceptions import MCPServerError, ToolDefinitionError
from shoal.integrations.mcp import MAX_SCHEMA_OBJECTS
from shoal.testing import ScriptedModel, call
from tests.conftest import arun

SERVER = [sys.executable, str(Path(__file__).parent / "mcp_hostile_s35_server.py")]
SLOW = 60.0  # seconds a test may take: only a bound for a hang (servers start in a second)


def test_an_error_answer_to_the_listing_of_tools_is_an_mcp_server_error() -> None:
    # the SDK's own MCPError escaped shoal.mcp.tools(), with a traceback from inside the SDK
    async def main() -> None:
        with pytest.raises(MCPServerError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "list_error"], name="lister")
        said = str(caught.value)
        assert said.startswith("MCP server 'lister' (")
        assert "answered the listing of its tools with an error" in said
        assert "(error -32603)" in said

    arun(main(), timeout=SLOW)


def test_bytes_that_are_not_utf8_on_stdout_are_read_as_replacement_characters() -> None:
    # strictly decoded, they ended the SDK's reader (into a drain that lasts as long as the
    # server): every call then waited for good, the handshake too when a banner held them
    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, "bad_bytes"], timeout=30)
        plan = shoal.Plan()
        first = plan.call(echo, text="one")
        second = plan.call(echo, text="two", after=first)
        result = await shoal.run(plan)
        assert (result[first].status, result[second].status) == ("ok", "ok")
        assert (result[first].value, result[second].value) == ("echo: one", "echo: two")

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize(("mode", "said"), [
    ("out_of_schema", "Invalid structured content returned by tool echo: 'many' is not of type "
                      "'integer'"),
    ("bad_output_schema", "Invalid schema for tool echo: 'no-such-type' is not valid"),
])
def test_a_result_its_output_schema_refuses_fails_its_call_naming_the_server(
        mode: str, said: str) -> None:
    # the MCP SDK's RuntimeError was the call's error: no server named, no MCP error type
    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, mode], name="counter", timeout=30)
        plan = shoal.Plan()
        counted = plan.call(echo, text="x")
        sibling = plan.call(echo, text="y")
        result = await shoal.run(plan)
        for ref in (counted, sibling):
            error = result[ref].error
            assert result[ref].status == "failed" and error is not None
            assert error.type == "shoal.exceptions.MCPServerError"
            assert error.message.startswith("MCP server 'counter' (")
            assert f"answered off-protocol while calling 'echo': {said}" in error.message

    arun(main(), timeout=SLOW)


def _nested(levels: int, leaf: Any = "leaf") -> Any:
    value: Any = leaf
    for _ in range(levels):
        value = {"kid": value}
    return value


def test_an_argument_nested_deeper_than_a_request_carries_is_refused_before_the_run() -> None:
    # the call failed at run time with a bare "ValueError: Maximum serialization depth
    # exceeded" from inside the SDK (which writes at most about 250 levels)
    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=SERVER, timeout=30)
        plan = shoal.Plan()
        deep = plan.call(echo, text="ok", x=_nested(100))
        assert (await shoal.run(plan))[deep].value == "echo: ok"
        plan = shoal.Plan()
        plan.call(echo, text="no", x=_nested(251))
        with pytest.raises(shoal.PlanError) as caught:
            await shoal.run(plan)
        (problem,) = caught.value.problems
        assert problem.code == "bad_arguments"
        assert problem.message == ("echo: argument 'x' is nested more than 250 levels deep, "
                                   "more than an MCP request can carry; pass it flatter (or as "
                                   "text)")

    arun(main(), timeout=SLOW)


def test_a_value_too_deep_for_a_recursive_schema_is_not_blamed_on_the_schema() -> None:
    # the check's RecursionError read "the server's input schema cannot check arguments"
    from shoal.integrations.mcp import MCPTool, RemoteTool
    from shoal.policy import ToolPolicy

    node = {"type": "object", "properties": {"kid": {"$ref": "#/$defs/node"}}}
    schema = {"type": "object", "$defs": {"node": node},
              "properties": {"root": {"$ref": "#/$defs/node"}}}
    tree = MCPTool(RemoteTool(shoal.mcp.server(["x"]), "tree", "", schema), "tree",
                   ToolPolicy(isolation="inline"))
    assert tree.validate({"root": _nested(20, {})}) == {"root": _nested(20, {})}
    with pytest.raises(shoal.ToolArgumentError) as caught:
        tree.validate({"root": _nested(249, {})})
    assert caught.value.detail == ("the arguments are nested too deeply to check against the "
                                   "server's input schema; pass it flatter (or as text)")
    assert "nested too deeply" in tree.check_static({"root": _nested(249, {})}, lambda v: False)


class _OffProtocolHTTP(BaseHTTPRequestHandler):
    """An MCP server over HTTP that handshakes and lists, then answers calls with garbage.

    ``/sse``: an event stream whose event is no JSON; ``/json``: a JSON body that is not JSON.
    """

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, body: bytes, kind: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    #: the name the server gives in its handshake
    server_name: ClassVar[str] = "garbler"

    def _read(self) -> dict[str, Any]:
        """The JSON-RPC message posted."""
        message: dict[str, Any] = json.loads(
            self.rfile.read(int(self.headers.get("content-length") or 0)))
        return message

    def _notified(self, message: dict[str, Any]) -> bool:
        """Whether ``message`` is a notification (answered here: 202, no body)."""
        if "id" in message:
            return False
        self.send_response(202)
        self.end_headers()
        return True

    def _listed_tools(self) -> list[dict[str, Any]]:
        """What ``tools/list`` answers: one read-only tool ``t`` taking nothing."""
        return [{"name": "t", "inputSchema": {"type": "object"},
                 "annotations": {"readOnlyHint": True}}]

    def _answered(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message``'s answer: its handshake or listing filled in, else no result yet."""
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if message["method"] == "initialize":
            answer["result"] = {"protocolVersion": message["params"]["protocolVersion"],
                                "capabilities": {"tools": {}},
                                "serverInfo": {"name": self.server_name, "version": "1"}}
        elif message["method"] == "tools/list":
            answer["result"] = {"tools": self._listed_tools()}
        return answer

    def _call_to_answer(self) -> dict[str, Any] | None:
        """Read the message posted and answer it if it is no call (a notification, the
        handshake, the listing); for a call, its answer with no result yet.
        """
        message = self._read()
        if self._notified(message):
            return None
        answer = self._answered(message)
        if "result" in answer:
            self._send(json.dumps(answer).encode())
            return None
        return answer

    def do_POST(self) -> None:
        """Answer one JSON-RPC message: a call with garbage."""
        if self._call_to_answer() is None:
            return
        if self.path == "/sse":
            self._send(b"data: garbage\n\n", "text/event-stream")
        else:
            self._send(b"{not json")

    def do_GET(self) -> None:
        """No stream of the server's own messages."""
        self.send_response(405)
        self.end_headers()

    def do_DELETE(self) -> None:
        """The session's end."""
        self.send_response(200)
        self.end_headers()


@pytest.mark.parametrize("path", ["sse", "json"])
def test_an_http_answer_that_is_not_json_rpc_is_off_protocol_logged_in_one_line(
        path: str, caplog: pytest.LogCaptureFixture) -> None:
    # it failed the call with MCPToolError "the server refused the call" (the tool refused
    # nothing), and the SDK's log of it carried a traceback
    web = ThreadingHTTPServer(("127.0.0.1", 0), _OffProtocolHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/{path}"

    async def main() -> None:
        (tool,) = await shoal.mcp.tools(url=url, timeout=30)
        plan = shoal.Plan()
        called = plan.call(tool)
        error = (await shoal.run(plan))[called].error
        assert error is not None and error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith(f"MCP server 'garbler' ({url}): answered off-protocol "
                                        "while calling 't': Failed to parse ")

    try:
        with caplog.at_level(logging.WARNING, "mcp"):
            arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()
    said = [r for r in caplog.records if r.name == "mcp.client.streamable_http"]
    assert said and all(r.exc_info is None for r in said)
    assert said[0].getMessage() == ("MCP server answered over HTTP with what is not JSON-RPC: "
                                    + ("garbage" if path == "sse" else "{not json"))


@pytest.mark.parametrize("mode", ["list_error_after_a_call", "list_hangs_after_a_call"])
def test_a_listing_that_fails_after_a_call_ran_does_not_take_its_answer(mode: str) -> None:
    # the MCP SDK lists the tools after a call's answer (to check it against its output
    # schema) when it has no listing yet: an error answer failed the call that had run, as
    # "the server refused the call", and a listing that never came kept its answer from it
    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, mode], timeout=30)
        plan = shoal.Plan()
        first = plan.call(echo, text="one")
        second = plan.call(echo, text="two", after=first)
        result = await shoal.run(plan)
        assert (result[first].value, result[second].value) == ("echo: one", "echo: two")

    arun(main(), timeout=SLOW)


def test_a_server_that_cannot_list_its_tools_is_sent_no_call(tmp_path: Path) -> None:
    # the call ran, then failed as MCPToolError "the server refused the call"
    marks = tmp_path / "marks"

    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, "list_error_when_marked",
                                                 str(marks)], name="lister", timeout=30)
        plan = shoal.Plan()
        called = plan.call(echo, text="one")
        error = (await shoal.run(plan))[called].error
        assert error is not None and error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith("MCP server 'lister' (")
        assert ("answered the listing of its tools with an error: Internal server error "
                "(error -32603)") in error.message

    arun(main(), timeout=SLOW)
    assert marks.read_text() == ""  # listed once (by shoal.mcp.tools), never called


def test_a_listing_cancelled_while_its_server_starts_stops_the_start_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C (or a cancelled run) while a server started waited CLOSE_TIMEOUT (10 s) for a
    # handshake that would not come before the start was stopped; made huge here, a wait for
    # it is a hang, while stopping the start takes the SDK's own shutdown (about 2.5 s)
    import psutil

    from shoal.integrations.mcp import _session

    monkeypatch.setattr(_session, "CLOSE_TIMEOUT", 3600.0)
    silent = [sys.executable, "-c", "import time; time.sleep(3600)  # never speaks MCP"]

    def starting() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True)
                if "never speaks MCP" in " ".join(p.cmdline())]

    async def main() -> None:
        listing = asyncio.ensure_future(shoal.mcp.tools(command=silent, connect_timeout=3600))
        while not starting():  # noqa: ASYNC110 (until its process runs: a wait, not a check)
            await asyncio.sleep(0.05)
        listing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listing

    arun(main(), timeout=SLOW)
    assert not [p for p in starting() if p.status() != psutil.STATUS_ZOMBIE]


def test_a_tool_with_an_argument_named_as_shoals_own_is_refused_when_listed() -> None:
    # its value was silently dropped: the name is the parameter shoal hands a call its run by
    async def main() -> None:
        with pytest.raises(shoal.ToolDefinitionError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "reserved_name"], name="sneaky")
        assert str(caught.value) == (
            f"MCP server 'sneaky' ({shlex.join([*SERVER, 'reserved_name'])}): tool 'sneaky' "
            "has an argument named '_shoal_mcp_scope', a name shoal keeps for handing a call "
            "its run; leave it out with only=[...]")
        (echo,) = await shoal.mcp.tools(command=[*SERVER, "reserved_name"], only=["echo"])
        assert echo.name == "echo"

    arun(main(), timeout=SLOW)


def test_two_servers_tools_of_one_name_in_an_agent_are_told_how_to_tell_them_apart() -> None:
    # "names must be unique" said nothing of how an MCP tool's name is chosen
    from shoal.integrations.mcp import MCPTool, RemoteTool
    from shoal.policy import ToolPolicy

    def fetch(program: str) -> MCPTool:
        remote = RemoteTool(shoal.mcp.server([program]), "fetch", "", {"type": "object"})
        return MCPTool(remote, "fetch", ToolPolicy(isolation="inline"))

    with pytest.raises(shoal.ConfigError) as caught:
        shoal.Agent(name="a", model=ScriptedModel(["hi"]), tools=[fetch("a"), fetch("b")])
    assert str(caught.value) == (
        "agent 'a' has several tools or subagents named ['fetch']; names must be unique (two "
        "MCP servers with the same tool names: give one's tools a prefix, "
        "shoal.mcp.tools(..., prefix='b_'))")


def test_a_listing_paged_in_a_loop_or_without_end_is_an_error_not_copies_of_its_tools(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a cursor that came again gave 1,000 copies of the same tool (page1, page1_1, ...), and
    # a listing without end was cut at 1,000 pages, silently
    from shoal.integrations.mcp import _session

    monkeypatch.setattr(_session, "MAX_PAGES", 5)

    async def main() -> None:
        with pytest.raises(MCPServerError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "pages_in_a_loop"], name="pager")
        assert str(caught.value).endswith(
            ": pages the listing of its tools in a loop (its cursor '1' came again, after 2 "
            "tools)")
        with pytest.raises(MCPServerError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "pages_without_end"], name="pager")
        assert str(caught.value).endswith(
            ": lists more than 5 pages of tools (5 tools so far); shoal reads at most that many")

    arun(main(), timeout=SLOW)


def test_a_tool_listed_twice_is_one_tool_and_two_different_of_one_name_are_refused() -> None:
    # the second became echo_1, whose calls ran whichever tool the server picks for "echo"
    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, "listed_twice"])
        assert echo.name == "echo"
        with pytest.raises(shoal.ToolDefinitionError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "two_different"], name="twins")
        assert str(caught.value).endswith(
            "two_different) lists two different tools named 'echo' (a call names one by its "
            "name alone); leave them out with only=[...]")

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("mode", ["list_error", "silent"])
def test_a_server_held_open_that_fails_to_start_leaves_nothing_running(mode: str) -> None:
    # the failed start's session (its task, the SDK's, the server's process) lived on past the
    # async with, ending only when the event loop did
    import psutil

    command = ([*SERVER, mode] if mode != "silent" else
               [sys.executable, "-c", "import time; time.sleep(3600)  # held, never speaks"])

    async def main() -> None:
        with pytest.raises(MCPServerError):
            async with shoal.mcp.server(command, connect_timeout=3):
                pass

    arun(main(), timeout=SLOW)  # which also fails on tasks left running
    assert not [p for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE and command[-1] in " ".join(p.cmdline())]


def test_an_mcp_call_on_the_virtual_clock_says_it_cannot_be_made_there() -> None:
    # the virtual clock jumped past connect_timeout while the server started in real time:
    # "did not start and answer the MCP handshake within 30 s", after seconds of real time
    from shoal.integrations.mcp import MCPTool, RemoteTool
    from shoal.policy import ToolPolicy
    from shoal.testing import run_virtual

    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    echo = MCPTool(RemoteTool(shoal.mcp.server(SERVER, name="echoer"), "echo", "", schema),
                   "echo", ToolPolicy(isolation="inline"))
    plan = shoal.Plan()
    called = plan.call(echo, text="a")
    error = run_virtual(shoal.run(plan))[called].error
    assert error is not None and error.type == "shoal.exceptions.MCPServerError"
    assert error.message.endswith(
        "cannot be reached on shoal.testing's virtual clock: an MCP server answers in real "
        "time, which that clock does not wait for; call MCP tools on a real event loop "
        "(asyncio.run)")


class _ForgetfulHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP with sessions, which forgets them all when it "restarts".

    Each session id is of one generation; ``restart()`` starts the next, and a request with an
    id of an earlier one is answered 404, as the streamable HTTP transport says a server does
    for a session it no longer knows.
    """

    server_name = "forgetful"
    generation = 0
    calls: ClassVar[list[str]] = []  # the session id each call came with

    @classmethod
    def restart(cls) -> None:
        """Forget every session."""
        cls.generation += 1

    def do_POST(self) -> None:
        """Answer one JSON-RPC message within a session."""
        message = self._read()
        known = self.headers.get("mcp-session-id")
        if known is not None and known != f"s{self.generation}":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self._notified(message):
            return
        answer = self._answered(message)
        if message["method"] == "tools/call":
            self.calls.append(str(known))
            answer["result"] = {"content": [{"type": "text", "text": f"in {known}"}]}
        elif "result" not in answer:
            answer["error"] = {"code": -32601, "message": "Method not found"}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("mcp-session-id", f"s{self.generation}")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_call_in_a_session_the_http_server_forgot_goes_to_a_new_session() -> None:
    # the 404 ("Session terminated") failed the call as MCPToolError "the server refused the
    # call", and every later call of the held session (or of the run) the same way, for good;
    # the server never saw the call (it knew no such session), so it goes again, once
    web = ThreadingHTTPServer(("127.0.0.1", 0), _ForgetfulHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    srv = shoal.mcp.server(url=f"http://127.0.0.1:{web.server_address[1]}/mcp")

    async def main() -> None:
        (tool,) = await srv.tools()
        async with srv:
            assert await tool() == "in s0"
            _ForgetfulHTTP.restart()  # the server restarted: it knows no session
            assert await tool() == "in s1"
            assert await tool() == "in s1"

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()
    assert _ForgetfulHTTP.calls == ["s0", "s1", "s1"]  # each call ran once


class _StatusHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP that answers a call with the status its URL's path names.

    ``phrase``: the reason phrase sent with it (``None``: the standard one).
    """

    phrase: ClassVar[str | None] = None

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call gets an error status, in plain text."""
        message = self._read()
        if self._notified(message):
            return
        answer = self._answered(message)
        if "result" not in answer:
            body = b"upstream fell over"
            self.send_response(int(self.path.strip("/")), self.phrase)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._send(json.dumps(answer).encode())


@pytest.mark.parametrize(("status", "phrase"), [(500, "Internal Server Error"),
                                                (502, "Bad Gateway"), (401, "Unauthorized")])
def test_an_http_error_status_to_a_call_is_a_server_error_naming_it(status: int,
                                                                    phrase: str) -> None:
    # it failed the call as MCPToolError "the server refused the call: Server returned an
    # error response (error -32603)": the status was lost, and the tool was blamed
    web = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/{status}"

    async def main() -> None:
        (tool,) = await shoal.mcp.tools(url=url, timeout=30)
        plan = shoal.Plan()
        called = [plan.call(tool), plan.call(tool)]  # two at once: each names its own
        result = await shoal.run(plan)
        for ref in called:
            error = result[ref].error
            assert error is not None and error.type == "shoal.exceptions.MCPServerError"
            assert error.message == (f"MCP server 'garbler' ({url}): answered HTTP {status} "
                                     f"({phrase}) while calling 't'")

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()


def test_a_hostile_http_reason_phrase_is_cut_and_cleaned_in_the_error() -> None:
    # the server's phrase went into the error as it came: 20,000 characters, with tabs and a
    # C1 control character (U+009B, an escape sequence to a terminal)
    class Hostile(_StatusHTTP):
        phrase = "Bad\tGateway \x9b31m" + "z" * 20_000

    web = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/502"

    async def main() -> None:
        (tool,) = await shoal.mcp.tools(url=url, timeout=30)
        with pytest.raises(MCPServerError) as caught:
            await tool()
        said = str(caught.value)
        assert "answered HTTP 502 (Bad Gateway 31mzzz" in said, said
        assert "characters left out" in said and len(said) < 300
        assert "\t" not in said and "\x9b" not in said

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()


#: Where a listing holds JSON nested too deeply for any parser (5,000 levels), written so.
_TOO_DEEP = "too deep to read"


class _UnreadableListingHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP whose second listing of its tools no parser reads (too deep)."""

    server_name = "lister"
    listings: ClassVar[list[str]] = []

    def _listed_tools(self) -> list[dict[str, Any]]:
        self.listings.append("listed")
        described = _TOO_DEEP if len(self.listings) == 2 else "fine"  # written nested
        return [{**tool, "description": described} for tool in super()._listed_tools()]

    def do_POST(self) -> None:
        """Answer the handshake, the listings (the second unreadable) and calls."""
        message = self._read()
        if self._notified(message):
            return
        answer = self._answered(message)
        answer.setdefault("result", {"content": [{"type": "text", "text": "called"}]})
        self._send(json.dumps(answer).encode().replace(
            json.dumps(_TOO_DEEP).encode(), b"[" * 5000 + b"]" * 5000))


def test_an_unreadable_listing_ends_the_session_so_the_next_call_starts_a_fresh_one() -> None:
    # the listing failed (MCPServerError, off-protocol) but the session lived on, holding the
    # failed listing: every later call of the run on it failed the same way, for good
    web = ThreadingHTTPServer(("127.0.0.1", 0), _UnreadableListingHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/mcp"

    async def main() -> None:
        tools = await shoal.mcp.tools(url=url, timeout=30)  # the first listing: readable
        model = ScriptedModel([[call("t")], [call("t")], "done"])
        result = await shoal.Agent(name="a", model=model, tools=tools).run(prompt="go")
        first, second = (c.outcome for c in result.calls)
        assert first is not None and first.error is not None
        assert first.error.type == "shoal.exceptions.MCPServerError"
        assert "answered off-protocol while listing its tools" in first.error.message
        assert second is not None and second.value == "called"

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()
    assert len(_UnreadableListingHTTP.listings) == 3  # the second session listed again


class _NoisyHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP whose tools' names and descriptions hold control characters."""

    server_name = "noisy"
    tools: ClassVar[list[dict[str, Any]]] = []

    def _listed_tools(self) -> list[dict[str, Any]]:
        return self.tools


def test_control_characters_of_a_server_do_not_reach_prompts() -> None:
    # descriptions (the tool's and its arguments') went into the tool schemas sent to models and
    # into the planner's prompt as the server wrote them: ANSI escapes, NUL, bidi overrides
    from shoal.agents.planprompts import plan_prompt
    from shoal.models.base import ToolSpec

    said = ("Reads\x1b[2J a \x1b[31mfile\x1b[0m.\r\nSecond\rline\tkept\x00\x07 end\u202e"
            "\x1b]0;title\x07 \x9b1mdone\u2028last")
    _NoisyHTTP.tools = [
        {"name": "read\x1b[31m", "description": said,
         "inputSchema": {"type": "object", "title": "T\x1b[1m", "properties": {
             "path": {"type": "string", "description": "where\x00\x1b[0m", "default": "a\x1b"},
             "description": {"type": "string", "title": "about\x07"}}}},
        {"name": "keyed", "inputSchema": {"type": "object", "properties": {
            "a\nb": {"type": "string"}}}},
    ]
    web = ThreadingHTTPServer(("127.0.0.1", 0), _NoisyHTTP)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/mcp"

    async def main() -> None:
        (read,) = await shoal.mcp.tools(url=url, only=["read\x1b[31m"])
        assert read.description == "Reads a file.\nSecond\nline\tkept end done\nlast"
        assert read.name.startswith("read__") and read.remote.name == "read\x1b[31m"
        schema = read.json_schema()
        assert schema["title"] == "T"
        assert schema["properties"]["path"] == {"type": "string", "description": "where",
                                                "default": "a\x1b"}  # a value: as it is
        assert schema["properties"]["description"]["title"] == "about"
        prompt = plan_prompt([ToolSpec(read.name, read.description, schema)])
        assert not [
            c for c in prompt if not c.isprintable() and c not in "\n"]
        with pytest.raises(shoal.ToolDefinitionError) as caught:
            await shoal.mcp.tools(url=url, only=["keyed"])
        assert str(caught.value) == (
            f"MCP server 'noisy' ({url}): tool 'keyed' has an input schema with a key holding "
            "control characters ('a\\nb'); leave it out with only=[...]")

    try:
        arun(main(), timeout=SLOW)
    finally:
        web.shutdown()
        web.server_close()


def test_a_tool_schema_of_20000_properties_is_refused_at_once_naming_the_cap() -> None:
    # checking it against the JSON schema meta-schema took 7 s and more, on every listing
    async def main() -> None:
        with pytest.raises(ToolDefinitionError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "wide_schema", "20000"], name="wide")
        said = str(caught.value)
        assert said.startswith("MCP server 'wide' (") and "tool 'wide'" in said
        assert f"more than {MAX_SCHEMA_OBJECTS:,} JSON objects" in said
        assert "leave it out with only=[...]" in said

    arun(main(), timeout=SLOW)


def test_a_tool_schema_of_a_few_hundred_properties_is_listed() -> None:
    async def main() -> None:
        (wide,) = await shoal.mcp.tools(command=[*SERVER, "wide_schema", "300"])
        assert len(wide.json_schema()["properties"]) == 300

    arun(main(), timeout=SLOW)
