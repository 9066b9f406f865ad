"""Hostile MCP servers against shoal's MCP client, found in session 38.

Each server is real: a subprocess speaking MCP over stdio (tests/hostile_mcp_s38_server.py,
JSON-RPC by hand), or a local HTTP server (the ones of session 37's tests). Whatever it does,
every call ends in a recorded outcome (its answer, or a typed error a person can act on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from tests.conftest import arun
from tests.test_hostile_mcp_s35 import _OffProtocolHTTP
from tests.test_hostile_mcp_s37 import _BatchingHTTP, http_serving

SERVER = [sys.executable, str(Path(__file__).parent / "hostile_mcp_s38_server.py")]
SLOW = 60.0  # seconds a test may take: only a bound for a hang (servers start in a second)


class _EventBatchingHTTP(_BatchingHTTP):
    """:class:`_BatchingHTTP`, and an event stream of other shapes.

    ``/sse_cr``: its lines end in CR alone, and the batch's event comes after an event that
    is no batch (a log notification) and carries an id; ``/sse_split``: the batch's data is
    on two lines; ``/sse_after``: the answer comes first in the batch, then a notification.
    """

    _real = ""  # the path posted to (``self.path`` is made ``/sse`` for the base class)

    def _send(self, body: bytes, kind: str = "application/json") -> None:
        if kind == "text/event-stream" and self._real != "/sse":
            event = body.decode()
            batch = json.loads(event[event.index("data: ") + 6:])
            if self._real == "/sse_cr":
                note = json.dumps(batch[0])
                body = (f": hello\revent: message\rdata: {note}\r\rid: 7\rdata: "
                        f"{json.dumps(batch)}\r\r").encode()
            elif self._real == "/sse_split":
                lines = json.dumps(batch, indent=1).split("\n")
                body = ("".join(f"data: {line}\n" for line in lines) + "\n").encode()
            elif self._real == "/sse_after":
                body = f"data: {json.dumps(batch[::-1])}\n\n".encode()
        super()._send(body, kind)

    def do_POST(self) -> None:
        """As :class:`_BatchingHTTP`, each event stream path answered as an event stream."""
        self._real = self.path
        if self.path.startswith("/sse"):
            self.path = "/sse"
        super().do_POST()


@pytest.mark.parametrize("path", ["sse", "sse_cr", "sse_split", "sse_after"])
def test_an_answer_in_a_json_rpc_batch_in_an_event_stream_reaches_its_call(path: str) -> None:
    # the MCP SDK reads one message an event: an event holding a batch failed its call as a
    # parse error ("answered off-protocol"), though its answer was there
    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/{path}", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        assert (result.status, result.value) == ("ok", "batched"), result.error

    with http_serving(_EventBatchingHTTP) as base:
        arun(main(base), timeout=SLOW)


@pytest.mark.parametrize("path", ["json", "sse_after"])
def test_a_notification_after_the_answer_in_a_batch_is_not_dropped(path: str) -> None:
    # the MCP SDK stops reading a request's answer at its answer: a notification after it in
    # the batch (here: the tools changed, the tool 'gone' removed) was dropped
    class Changing(_EventBatchingHTTP):
        def _listed_tools(self) -> list[dict[str, Any]]:
            tools = super()._listed_tools()
            return tools if getattr(self.server, "shrunk", False) else [
                *tools, {**tools[0], "name": "gone"}]

        method = ""

        def _read(self) -> dict[str, Any]:
            message = super()._read()
            self.method = message.get("method", "")
            return message

        def _send(self, body: bytes, kind: str = "application/json") -> None:
            sent = json.loads(body.decode().removeprefix("event: message\ndata: "))
            if self.method == "tools/call":  # the tools change with its answer
                self.server.shrunk = True  # type: ignore[attr-defined]
                sent[0] = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
                body = json.dumps(sent[::-1]).encode()  # the answer first
                if kind == "text/event-stream":
                    body = b"data: " + body + b"\n\n"
            _OffProtocolHTTP._send(self, body, kind)

    async def main(base: str) -> None:
        srv = shoal.mcp.server(url=f"{base}/{path}", name="changer")
        tools = {t.name: t for t in await srv.tools(timeout=20)}
        async with srv:
            assert await tools["t"]() == "batched"
            with pytest.raises(shoal.MCPToolError) as caught:
                await tools["gone"]()
        assert str(caught.value) == (
            "MCP server 'changer' (" + base + "/" + path + ") does not list tool 'gone' now "
            "(its tools changed since they were listed; it lists t): the call was not sent; "
            "list its tools again (shoal.mcp.tools)")

    with http_serving(Changing) as base:
        arun(main(base), timeout=SLOW)


def test_a_tool_whose_output_schema_changed_mid_session_is_checked_against_the_new_one(
        ) -> None:
    # the first listing was kept for the whole session: the MCP SDK checked 'shape's result
    # against the output schema listed first, and failed it as off-protocol
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=SERVER, timeout=20,
                                                          approval=False)}
        plan = shoal.Plan()
        changed = plan.call(tools["reshape"])
        shape = plan.call(tools["shape"], after=changed)
        result = await shoal.run(plan)
        assert (result[shape].status, result[shape].value) == ("ok", {"b": "x"}), (
            result[shape].error)

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("remover", ["shrink", "batch_changed"])
def test_a_tool_the_server_stopped_listing_is_refused_saying_so(remover: str) -> None:
    # its call was sent, and the server (which no longer knows the tool) never answered it:
    # the call waited until its timeout, or for good without one
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=SERVER, name="changer",
                                                          timeout=30, approval=False)}
        plan = shoal.Plan()
        removed = plan.call(tools[remover])
        gone = plan.call(tools["gone"], after=removed)
        sibling = plan.call(tools["echo"], text="still", after=removed)
        result = await shoal.run(plan)
        assert result[removed].status == "ok"
        assert (result[sibling].status, result[sibling].value) == ("ok", "echo: still")
        error = result[gone].error
        assert result[gone].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPToolError"
        assert error.message.startswith("MCP server 'changer' (")
        assert error.message.endswith(
            ") does not list tool 'gone' now (its tools changed since they were listed; it "
            "lists batch_changed, deep, echo, grow, refuse, reshape, shape, shrink): the call "
            "was not sent; list its tools again (shoal.mcp.tools)")

    arun(main(), timeout=SLOW)


def test_a_tool_the_server_started_listing_mid_session_can_be_called() -> None:
    async def main() -> None:
        srv = shoal.mcp.server(SERVER)
        async with srv:
            (grow,) = await srv.tools(only=["grow"])
            with pytest.raises(shoal.ConfigError):  # not there yet
                await srv.tools(only=["fresh"])
            assert await grow() == "grow: done"
            (fresh,) = await srv.tools(only=["fresh"])
            assert await fresh() == {"b": "fresh"}

    arun(main(), timeout=SLOW)


STREAM = (b": hi\r\nid: 1\r\ndata: {\"jsonrpc\": \"2.0\", \"method\": \"n\"}\r\n\r\n"
          b"event: message\rdata: [{\"jsonrpc\": \"2.0\", \"method\": \"a\"},\rdata: "
          b"{\"jsonrpc\": \"2.0\", \"id\": 3, \"result\": {}}, {\"jsonrpc\": \"2.0\", "
          b"\"method\": \"b\"}]\rid: 2\rretry: 5\r\r"
          b"event: other\ndata: [1]\n\ndata: [\"no\", \"batch\"]\n\n")


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 1000])
def test_an_event_stream_cut_anywhere_reads_as_the_same_events(cut: int) -> None:
    from shoal.integrations.mcp._transports import EventRewriter

    rewriter = EventRewriter(3)
    out = b"".join(rewriter.feed(STREAM[i:i + cut]) for i in range(0, len(STREAM), cut))
    assert (out + rewriter.end()).decode() == (
        ': hi\nid: 1\ndata: {"jsonrpc": "2.0", "method": "n"}\n\n'
        'event: message\ndata: {"jsonrpc": "2.0", "method": "a"}\n\n'
        'event: message\ndata: {"jsonrpc": "2.0", "method": "b"}\n\n'  # the answer last
        'event: message\ndata: {"jsonrpc": "2.0", "id": 3, "result": {}}\nid: 2\nretry: 5\n\n'
        'event: other\ndata: [1]\n\n'  # not a message: as it came
        'data: ["no", "batch"]\n\n')  # no JSON-RPC batch: as it came


def test_an_event_that_is_no_batch_is_handed_on_before_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.integrations.mcp import _transports as _mcp_transports
    from shoal.integrations.mcp._transports import EventRewriter

    monkeypatch.setattr(_mcp_transports, "MAX_EVENT_BYTES", 1000)

    rewriter = EventRewriter(None)
    assert rewriter.feed(b"id: 4\ndata: {\"jsonrpc\"") == b""  # its line is not over
    assert rewriter.feed(b": \"2.0\"}\n") == b'id: 4\ndata: {"jsonrpc": "2.0"}\n'
    assert rewriter.feed(b"data: more\n") == b"data: more\n"
    assert rewriter.feed(b"\n") == b"\n"
    assert rewriter.feed(b"data: [\n") == b""  # it may be a batch: held
    big = b"data: " + b"1," * 1000 + b"\n"
    assert rewriter.feed(big) == b"data: [\n" + big  # past what is held: as it comes
    assert rewriter.feed(b"data: 2]\n\n") == b"data: 2]\n\n"


class _ProxyingHTTP(_EventBatchingHTTP):
    """An HTTP proxy (it takes a request for a whole URL) that is the MCP server it proxies.

    It keeps the URLs asked of it in ``asked`` (a list of each subclass's own).
    """

    asked: ClassVar[list[str]]

    def do_POST(self) -> None:
        """Note the URL asked for, and answer as the server at its path."""
        self.asked.append(self.path)
        self.path = "/" + self.path.split("/", 3)[3] if "://" in self.path else self.path
        super().do_POST()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY", "http_proxy"])
def test_an_mcp_server_over_http_is_reached_through_the_environments_proxy(
        variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a transport of its own (which unpacks batches), httpx used no proxy of the
    # environment: the server was reached straight, past the proxy the MCP SDK's own client
    # goes through (a server only the proxy reaches could not be reached at all)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    async def main(url: str) -> None:
        (tool,) = await shoal.mcp.tools(url=url, timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        assert (result.status, result.value) == ("ok", "batched"), result.error

    asked: list[str] = []
    proxying = type("Proxying", (_ProxyingHTTP,), {"asked": asked})
    url = "http://mcp.invalid/sse_cr"  # a name no resolver knows: only the proxy answers
    with http_serving(proxying) as proxy:
        monkeypatch.setenv(variable, proxy)
        arun(main(url), timeout=SLOW)
    assert url in asked


def test_no_proxy_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the discard port: nothing there
    with http_serving(_EventBatchingHTTP) as base:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")

        async def main() -> None:
            (tool,) = await shoal.mcp.tools(url=f"{base}/json", timeout=20)
            assert await tool() == "batched"

        arun(main(), timeout=SLOW)


def test_the_argument_facts_of_a_schema_of_4900_properties_are_made_at_once() -> None:
    # a pydantic field an argument: 0.7-1.2 s for 4,900 properties, on every listing
    import time

    from shoal.integrations.mcp._tool import _facts_model

    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4900)},
              "required": [f"p{i}" for i in range(0, 4900, 7)]}
    _facts_model("warm", {"type": "object"})
    started = time.perf_counter()
    _facts_model("wide", schema)
    took = time.perf_counter() - started
    assert took < 0.1, f"{took:.2f} s"


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a b": {}, "max-chars": {"type": "integer"}, "x": {}},
     "required": ["x", "not-a-property"], "additionalProperties": False},
    {"type": "object", "properties": {"q": {"default": 3}}, "required": ["q"]},
    {"type": "object"},
])
def test_an_mcp_tools_argument_facts_are_those_its_fields_made(schema: dict[str, Any]) -> None:
    import pydantic

    from shoal.integrations.mcp import MCPTool, RemoteTool
    from shoal.integrations.mcp._tool import _facts_model
    from shoal.policy import ToolPolicy
    from shoal.schema import ModelFacts, model_facts

    properties = schema.get("properties") or {}
    fields: dict[str, Any] = {  # as the arguments' model was made, one field an argument
        f"p{i}": (Any, pydantic.Field(... if p in schema.get("required", ()) else None, alias=p))
        for i, p in enumerate(properties)}
    extra: Literal["forbid", "allow"] = (
        "forbid" if schema.get("additionalProperties") is False else "allow")
    fielded = ModelFacts.of(pydantic.create_model(
        "m", __config__=pydantic.ConfigDict(extra=extra), **fields), {})
    facts = model_facts(_facts_model("t", schema))
    assert set(facts.inputs) == set(fielded.inputs) and facts.required == fielded.required
    assert (facts.accepts_extra, facts.fresh_defaults) == (fielded.accepts_extra, False)
    srv = shoal.mcp.server(["unused"])
    tool = MCPTool(RemoteTool(srv, "t", "", schema), "t", ToolPolicy(isolation="inline"))
    assert tool.parameters == frozenset(properties)
    assert tool.defaults == {p: None for p in properties if p not in facts.required}


def _notices(log: Path, method: str) -> list[Any]:
    """The params of each notification ``method`` the server logged."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [n["params"] for n in map(json.loads, lines) if n["method"] == method]


def test_a_call_that_times_out_or_is_cancelled_is_cancelled_on_the_server(tmp_path: Path,
                                                                         ) -> None:
    log = tmp_path / "log"

    async def main() -> None:
        (echo,) = await shoal.mcp.tools(command=[*SERVER, f"log={log}"], only=["echo"],
                                         timeout=0.5, approval=False)
        plan = shoal.Plan()
        slow = plan.call(echo, text="slow", n=30)
        result = await shoal.run(plan)
        assert result[slow].status == "timed_out"
        srv = echo.remote.server
        async with srv:
            task = asyncio.ensure_future(echo.options(timeout=None)(text="slower", n=30))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # another process writes the log: polled, for a moment
                if len(_notices(log, "notifications/cancelled")) == 2:
                    break
                await asyncio.sleep(0.05)
        cancelled = _notices(log, "notifications/cancelled")
        assert len(cancelled) == 2, cancelled
        assert all(isinstance(c.get("requestId"), int) for c in cancelled), cancelled

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_an_answer_nested_too_deeply_to_parse_fails_its_call_at_once(depth: int) -> None:
    # neither the MCP SDK's parser nor Python's can read it: the line was dropped as "not
    # JSON-RPC", and its call waited until its timeout, or for good without one
    async def main() -> None:
        (deep,) = await shoal.mcp.tools(command=SERVER, name="deep", only=["deep"],
                                         approval=False, timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(deep, n=depth)
        sibling = plan.call(deep, n=3)
        result = await shoal.run(plan)
        assert (result[sibling].status, result[sibling].value) == ("ok", {"a": {"a": {"a": 1}}})
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith("MCP server 'deep' (")
        assert error.message.endswith(
            "): answered off-protocol while calling 'deep': its answer is JSON the MCP SDK "
            "cannot read (nested too deeply: recursion limit exceeded at line 1 column 1261)")

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize(("line", "request_id"), [
    ('{"jsonrpc": "2.0", "result": {"x": [[["}"]]]}, "id": 7}', 7),
    ('{"id" : "a\\"b", "error": {"code": 1}}', 'a"b'),
    ('{"result": {"id": 3}, "id": -2}', -2),
    ('{"result": {"id": 3}}', None),  # only a nested id
    ('{"method": "x", "id": 3}', None),  # a request, not an answer
    ('[{"result": 1, "id": 3}]', None),  # no object
    ('{"result": 1, "id": true}', None),  # no id an answer can have
    ('{"result": 1, "note": "\\"id\\": 4", "id": 5}', 5),
])
def test_the_id_of_an_answer_is_read_off_its_outermost_object(line: str,
                                                                request_id: Any) -> None:
    from shoal.integrations.mcp._transports import shallow_answer

    found = shallow_answer(line)
    assert (found and found["id"]) == request_id


class _BigHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP that answers a call with a text of 2,000,000 characters.

    ``/json``: as JSON; ``/batch``: in a JSON batch; ``/sse``: as an event; ``/cut``: an
    event stream that ends without the answer (a log notification only).
    """

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call with a big text."""
        answer = self._call_to_answer()
        if answer is None:
            return
        answer["result"] = {"content": [{"type": "text", "text": "x" * 2_000_000}]}
        if self.path == "/cut":
            answer = {"jsonrpc": "2.0", "method": "notifications/message",
                      "params": {"level": "info", "data": "about to answer"}}
        if self.path in ("/sse", "/cut"):
            self._send(f"data: {json.dumps(answer)}\n\n".encode(), "text/event-stream")
        else:
            self._send(json.dumps([answer] if self.path == "/batch" else answer).encode())


@pytest.mark.parametrize("path", ["json", "batch", "sse", "too_big", "cut"])
def test_an_answer_of_2_mb_over_http_is_read_whatever_its_form(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the MCP SDK reads at most 1 MiB of one event: an answer of 2 MB as an event failed (and
    # as a JSON batch, which shoal hands on as events), read whole as JSON; and its failure, or
    # a stream that ended without the answer, read as "the server refused the call"
    from shoal.integrations.mcp import _transports as _mcp_transports

    if path == "too_big":
        monkeypatch.setattr(_mcp_transports, "MAX_EVENT_BYTES", 1_000_000)

    async def main(base: str) -> None:
        where = "sse" if path == "too_big" else path
        (tool,) = await shoal.mcp.tools(url=f"{base}/{where}", name="big", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        if path in ("json", "batch", "sse"):
            assert (result.status, result.value) == ("ok", "x" * 2_000_000), result.error
            return
        error = result.error
        assert result.status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        said = ("SSE stream failed: Server-sent event exceeded the 1000000 byte limit."
                if path == "too_big" else "SSE stream ended without a response")
        assert error.message == (f"MCP server 'big' ({base}/{where}): its event stream failed "
                                 f"while calling 't': {said}")

    with http_serving(_BigHTTP) as base:
        arun(main(base), timeout=SLOW)


def test_a_servers_error_message_is_quoted_without_its_control_characters() -> None:
    # it went into MCPToolError as it was: an escape sequence reached the terminal that shows
    # the error (here: clear the screen, set the window's title), a CR overwrote its start
    async def main() -> None:
        (refuse,) = await shoal.mcp.tools(command=SERVER, only=["refuse"], approval=False)
        with pytest.raises(shoal.MCPToolError) as caught:
            await refuse()
        assert str(caught.value) == (
            "the server refused the call: no\nway, really\nnot (error -32602)")

    arun(main(), timeout=SLOW)


class _ResettingHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP whose calls answer after ``n`` seconds, but for one.

    A call whose ``text`` is ``reset`` gets no answer: its connection is closed at once.
    """

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call after a while, or not at all."""
        answer = self._call_to_answer()
        if answer is None:
            return
        arguments = json.loads(self._posted)["params"]["arguments"]
        if arguments.get("text") == "reset":
            self.close_connection = True  # nothing written: the client sees it disconnect
            return
        time.sleep(float(arguments.get("n", 0)))
        answer["result"] = {"content": [{"type": "text", "text": f"echo: {arguments['text']}"}]}
        self._send(json.dumps(answer).encode())

    def _read(self) -> dict[str, Any]:
        message = super()._read()
        self._posted = json.dumps(message)
        return message


def test_a_call_whose_http_exchange_fails_fails_alone() -> None:
    # the MCP SDK's transport ended with the exception of one request's POST: every other call
    # on the session failed with it ("the connection closed ... the server may have crashed")
    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", name="resetter", timeout=20)
        plan = shoal.Plan()
        slow = [plan.call(tool, text=f"slow{i}", n=1.5) for i in range(5)]
        reset = plan.call(tool, text="reset")
        result = await shoal.run(plan)
        for i, ref in enumerate(slow):
            assert (result[ref].status, result[ref].value) == ("ok", f"echo: slow{i}")
        error = result[reset].error
        assert result[reset].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message == (
            f"MCP server 'resetter' ({base}/mcp): its HTTP request failed while calling 't': "
            "RemoteProtocolError: Server disconnected without sending a response.")

    with http_serving(_ResettingHTTP) as base:
        arun(main(base), timeout=SLOW)


def test_a_server_whose_tools_change_whenever_it_lists_them_is_still_called() -> None:
    # listed anew while it said they changed meanwhile, it was listed for good, and every call
    # waited for that listing to end
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=[*SERVER, "restless"],
                                                          approval=False, timeout=20)}
        plan = shoal.Plan()
        first = plan.call(tools["echo"], text="one")
        then = plan.call(tools["shape"], after=first)
        result = await shoal.run(plan)
        assert (result[first].status, result[first].value) == ("ok", "echo: one")
        assert (result[then].status, result[then].value) == ("ok", {"a": 1})

    arun(main(), timeout=SLOW)


class _SlowHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP whose calls answer after 3 s; it keeps what is posted to it.

    ``posted``: each message posted (a list of each subclass's own).
    """

    posted: ClassVar[list[dict[str, Any]]]

    def _read(self) -> dict[str, Any]:
        message = super()._read()
        self.posted.append(message)
        return message

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call after 3 s; no other request."""
        answer = self._call_to_answer()
        if answer is None:
            return
        if self.posted[-1]["method"] != "tools/call":  # the SDK's probe of newer revisions
            answer["error"] = {"code": -32601, "message": "no such method"}
            self._send(json.dumps(answer).encode())
            return
        time.sleep(3)
        answer["result"] = {"content": []}
        with contextlib.suppress(OSError):  # the client may be gone
            self._send(json.dumps(answer).encode())


def test_a_call_over_http_that_times_out_is_cancelled_on_the_server() -> None:
    # the run ended at once, and closing its session cut off the POST of the cancel: the
    # server never learnt that the call's work was no longer wanted
    posted: list[dict[str, Any]] = []

    async def main(base: str) -> None:
        # (2 s: the run's session opens within the call's timeout, slowly on a loaded machine)
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", timeout=2)
        plan = shoal.Plan()
        ref = plan.call(tool)
        assert (await shoal.run(plan))[ref].status == "timed_out"

    with http_serving(type("Slow", (_SlowHTTP,), {"posted": posted})) as base:
        arun(main(base), timeout=SLOW)
    (call,) = [m for m in posted if m["method"] == "tools/call"]
    cancels = [m for m in posted if m["method"] == "notifications/cancelled"]
    assert [c["params"]["requestId"] for c in cancels] == [call["id"]]


class _CancelResettingHTTP(_SlowHTTP):
    """:class:`_SlowHTTP`, which closes the connection of a posted notification unanswered."""

    def _notified(self, message: dict[str, Any]) -> bool:
        if message.get("method") == "notifications/cancelled":
            self.close_connection = True  # nothing written: the client sees it disconnect
            return True
        return super()._notified(message)


def test_a_notification_that_cannot_be_posted_fails_no_call(
        caplog: pytest.LogCaptureFixture) -> None:
    # the POST of a call's cancel failed, and the MCP SDK's transport ended with it: the call
    # beside it failed ("the connection closed ... the server may have crashed")
    posted: list[dict[str, Any]] = []

    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", name="slow", timeout=20)
        plan = shoal.Plan()
        short = plan.call(tool.options(timeout=2))  # the server answers after 3 s
        long = plan.call(tool)
        result = await shoal.run(plan)
        assert (result[short].status, result[long].status) == ("timed_out", "ok"), (
            result[long].error)

    with http_serving(type("Resetting", (_CancelResettingHTTP,), {"posted": posted})) as base:
        arun(main(base), timeout=SLOW)
    assert [m["method"] for m in posted].count("notifications/cancelled") == 1
    said = [r.getMessage() for r in caplog.records if "notification" in r.getMessage()]
    assert said == [f"Could not post a notification to the MCP server at {base}/mcp (it is "
                    "lost): RemoteProtocolError: Server disconnected without sending a "
                    "response."]


def test_an_http_server_nothing_listens_for_says_so_plainly() -> None:
    import socket

    with socket.socket() as free:  # a port nothing listens on once it is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    async def main() -> None:
        with pytest.raises(shoal.MCPServerError) as caught:
            await shoal.mcp.tools(url=f"http://127.0.0.1:{port}/mcp")
        assert str(caught.value) == (f"MCP server 'http://127.0.0.1:{port}/mcp': could not "
                                     "start: ConnectError: All connection attempts failed")

    arun(main(), timeout=SLOW)


def test_a_served_request_the_sdk_cannot_read_is_answered_with_an_error() -> None:
    # shoal mcp serve (the MCP SDK's server) dropped a line it could not read: a lone
    # surrogate's escape (which JSON allows) or nesting too deep, and the client's call
    # waited for good; the request it names is now answered with an error saying why
    import os
    import select
    import subprocess

    from tests.test_mcp import ROOT, SHOAL_SERVE

    served = subprocess.Popen(SHOAL_SERVE, cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert served.stdin is not None and served.stdout is not None

    def ask(line: str) -> Any:
        assert served.stdin is not None and served.stdout is not None
        served.stdin.write(line.encode() + b"\n")
        served.stdin.flush()
        if '"id"' not in line:
            return None
        ready, _, _ = select.select([served.stdout], [], [], SLOW)
        assert ready, f"no answer to {line[:100]}"
        return json.loads(served.stdout.readline())

    def call(request: int, arguments: str) -> str:
        return ('{"jsonrpc": "2.0", "id": ' + str(request) + ', "method": "tools/call", '
                '"params": {"name": "add", "arguments": ' + arguments + '}}')

    with served:  # (its pipes closed at the end)
        try:
            ask(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}))
            ask('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
            surrogate = ask(call(2, '{"a": "\\ud800", "b": 2}'))
            deep = ask(call(3, '{"a": 1, "b": ' + '[' * 5000 + ']' * 5000 + '}'))
            fine = ask(call(4, '{"a": 1, "b": 2}'))
        finally:
            served.kill()
    assert surrogate["id"] == 2 and surrogate["error"]["code"] == -32600
    assert surrogate["error"]["message"].startswith("the request could not be read (")
    assert deep["id"] == 3 and deep["error"]["code"] == -32600
    assert deep["error"]["message"].startswith(
        "the request could not be read (nested too deeply: ")
    assert fine["id"] == 4 and fine["result"]["structuredContent"] == {"result": 3}
