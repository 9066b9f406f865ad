"""Hostile MCP servers against shoal's MCP client, found in session 37.

Each server is a real subprocess speaking MCP over stdio: tests/mcp_hostile_s37_server.py
writes JSON-RPC by hand, to break the protocol as no SDK lets a server. Whatever it does,
every call ends in a recorded outcome (its answer, or a typed error a person can act on),
never a wait without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import jsonschema  # type: ignore[import-untyped]
import psutil

import shoal
from shoal.exceptions import ToolDefinitionError
from tests.conftest import arun
from tests.test_hostile_mcp_s35 import _OffProtocolHTTP

SERVER = [sys.executable, str(Path(__file__).parent / "mcp_hostile_s37_server.py")]
SLOW = 60.0  # seconds a test may take: only a bound for a hang (servers start in a second)


@contextlib.contextmanager
def http_serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server of ``handler`` on loopback while the block runs: its base URL."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{web.server_address[1]}"
    finally:
        web.shutdown()
        web.server_close()


def test_a_schema_whose_ref_loops_is_refused_when_listed_not_blamed_on_each_value() -> None:
    # jsonschema accepts a schema whose $ref leads back to itself (through allOf, anyOf ...)
    # without reaching into the value; checking any argument then recursed to Python's limit,
    # and every call was refused as "nested too deeply ... pass it flatter", blaming the value
    # (and a looping output schema failed every call as "off-protocol", blaming the answer)
    async def main() -> None:
        with pytest.raises(ToolDefinitionError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "ref_loop"], name="loopy")
        said = str(caught.value)
        assert said.startswith("MCP server 'loopy' (")
        assert ("tool 'looped' has an input schema that leads back to itself without reaching "
                "into the value (it loops through allOf -> $ref '#/$defs/b' -> anyOf -> "
                "$ref '#/$defs/a'), so checking any argument against it never ends; leave it "
                "out with only=[...]") in said
        with pytest.raises(ToolDefinitionError) as caught:  # so did the SDK's check of results
            await shoal.mcp.tools(command=[*SERVER, "output_loop"], name="loopy")
        assert ("tool 'looped_out' has an output schema that leads back to itself without "
                "reaching into the value (it loops through not -> $ref '#/properties/y'), so "
                "checking any result against it never ends; leave it out with only=[...]"
                ) in str(caught.value)
        # the other tools are there to take, and a schema that refers to itself through a
        # property (a tree, which each level of the value ends) is no loop
        tools = await shoal.mcp.tools(command=[*SERVER, "ref_loop", "ref_tree"],
                                      only=["echo", "tree"])
        tree = {t.name: t for t in tools}["tree"]
        assert tree.validate({"root": {"kid": {"kid": {}}}}) == {"root": {"kid": {"kid": {}}}}

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("schema", [
    {"type": "object", "$ref": "#"},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/a~1b"}},
     "$defs": {"a/b": {"not": {"$ref": "#/$defs/a~1b"}}}},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}},
     "$defs": {"a": {"dependentSchemas": {"y": {"$ref": "#/$defs/a"}}}}},
])
def test_each_kind_of_ref_loop_is_found(schema: dict[str, object]) -> None:
    from shoal.integrations.mcp._schema import ref_loop

    assert ref_loop(schema) is not None


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"$ref": "#"}}},  # each level is a part of the value
    {"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}},  # a loop never met
    {"type": "object", "properties": {"$ref": {"type": "string"}, "allOf": {"const": 1}}},
    {"type": "object", "properties": {"x": {"enum": [{"$ref": "#"}]}}},  # a value, no schema
    {"type": "object", "properties": {"x": {"$id": "other", "$ref": "#"}}},  # another base
])
def test_a_schema_that_only_looks_like_a_ref_loop_is_none(schema: dict[str, object]) -> None:
    from shoal.integrations.mcp._schema import ref_loop

    assert ref_loop(schema) is None


def test_an_answer_in_a_json_rpc_batch_reaches_its_call(caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    # the MCP SDK reads one message a line: a batch (an array, which MCP's 2025-03-26 revision
    # allowed) was dropped as "a line that is not JSON-RPC", and its call waited for good (or
    # until its timeout); its messages are now read one by one, and a bad answer fails its call
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(
            command=SERVER, name="batcher", timeout=20)}
        plan = shoal.Plan()
        batched = plan.call(tools["batched"], text="one")
        bad = plan.call(tools["batched_bad"], text="two")
        sibling = plan.call(tools["echo"], text="three")
        result = await shoal.run(plan)
        assert (result[batched].status, result[batched].value) == ("ok", "batched: one")
        assert (result[sibling].status, result[sibling].value) == ("ok", "echo: three")
        error = result[bad].error
        assert result[bad].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith("MCP server 'batcher' (")
        assert "answered off-protocol while calling 'batched_bad': " in error.message

    with caplog.at_level(logging.WARNING, logger="mcp.client.stdio"):
        arun(main(), timeout=SLOW)
    said = [r.getMessage() for r in caplog.records if "batch" in r.getMessage()]
    assert sorted(said) == [f"MCP server sent a JSON-RPC batch of {n} messages (read one by one)"
                            for n in (1, 2)]


#: Schemas jsonschema's own check refuses, each for another keyword (and some it takes).
SCHEMAS: list[Any] = [
    {"type": "no-such-type"}, {"type": "object", "properties": {"a": {"type": 3}}},
    {"minLength": -1}, {"properties": {"a": {"pattern": "(["}}}, {"$ref": 5},
    {"items": [{"type": "string"}]}, {"required": "a"}, {"required": ["a", "a"]},
    {"$defs": {"x": {"enum": 3}}}, {"anyOf": []}, {"additionalProperties": {"type": ["x"]}},
    {"dependentRequired": {"a": [1]}}, {"format": 3}, {"$id": 4}, {"unevaluatedProperties": 3},
    {"properties": {"a": {"allOf": [{"not": {"type": "q"}}]}}}, {"contentMediaType": 1},
    {"title": 1}, {"deprecated": "yes"}, {"prefixItems": [{"minimum": "a"}]},
    {"$anchor": "1bad"}, {"definitions": {"a": {"type": 1}}}, {"dependencies": {"a": [1]}},
    {"$comment": 1}, {"$vocabulary": {"x": 1}}, {"contentSchema": {"type": 1}},
    {"patternProperties": {"x": {"minItems": -2}}}, {"propertyNames": {"maxLength": 1.5}},
    {"multipleOf": 0}, {"uniqueItems": 1}, {"properties": {"x": {"$defs": {"y": {"type": "z"}}}}},
    {"const": {"$ref": 1}}, {"enum": []}, {"$defs": {"a": True, "b": False}}, True,
    {"type": "object", "properties": {"p": {"type": "string", "description": "x"}}},
]


def _random_schema(rng: random.Random, depth: int = 0) -> Any:
    """A schema-like value: keywords of draft 2020-12 with values of any kind, nested."""
    if rng.random() < 0.1:
        return rng.choice([True, False])
    keywords = [
        *sorted(jsonschema.Draft202012Validator.META_SCHEMA["properties"]), "type", "enum",
        "minimum", "maxLength", "pattern", "required", "properties", "items", "prefixItems",
        "allOf", "anyOf", "not", "if", "additionalProperties", "format", "dependentSchemas",
        "$ref", "$id", "$anchor", "$defs", "title", "default", "multipleOf"]
    values: list[Callable[[], Any]] = [
        lambda: rng.randrange(-3, 5), lambda: rng.random() * 4 - 1,
        lambda: rng.choice(["string", "object", "x", "([", "#/a", "a b"]),
        lambda: rng.choice([True, False, None]), lambda: [],
        lambda: [rng.randrange(3) for _ in range(rng.randrange(3))]]
    if depth < 3:
        values += [lambda: _random_schema(rng, depth + 1),
                   lambda: [_random_schema(rng, depth + 1) for _ in range(rng.randrange(3))],
                   lambda: {rng.choice("ab"): _random_schema(rng, depth + 1)}]
    return {rng.choice(keywords): rng.choice(values)() for _ in range(rng.randrange(4))}


def _schema_error(check: Callable[[Any], None], schema: Any) -> str | None:
    """The message of the :class:`jsonschema.SchemaError` ``check(schema)`` raises, if any."""
    try:
        check(schema)
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def test_the_quick_check_of_a_schema_finds_what_jsonschemas_own_check_finds() -> None:
    # jsonschema's check of a draft 2020-12 schema follows a reference into each of seven
    # meta-schemas for every object of the schema: 1.5 s for one of 2,400 properties, on
    # every listing. The quick one follows none, and must refuse exactly what it refuses
    from shoal.integrations.mcp._schema import check_schema, meta_checker

    rng = random.Random(37)
    schemas = SCHEMAS + [_random_schema(rng) for _ in range(800)]
    valid = 0
    for schema in schemas:
        said = _schema_error(jsonschema.Draft202012Validator.check_schema, schema)
        assert meta_checker().is_valid(schema) == (said is None), schema
        assert _schema_error(check_schema, schema) == said  # its error, word for word
        valid += said is None
    assert 150 < valid < len(schemas) - 150  # both kinds, many of each


def test_the_quick_check_of_a_schema_looks_nothing_up() -> None:
    from shoal.integrations.mcp._schema import meta_checker

    seen: set[int] = set()
    stack: list[Any] = [meta_checker().schema]
    while stack:  # the meta-schema is a cycle of objects: each is walked once
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):  # a schema: a map of names to schemas is not one
            assert not {"$ref", "$dynamicRef", "$id"} & set(item), item
            for key, inner in item.items():
                named = key in ("properties", "patternProperties", "dependentSchemas")
                stack += list(inner.values()) if named else [inner]
        elif isinstance(item, list):
            stack += item
    assert len(seen) > 100


def test_calls_waiting_when_their_held_server_is_closed_fail_saying_so(tmp_path: Path) -> None:
    # the calls failed with "the connection closed: its output (stdout) ended ... (the server
    # exited, or closed its stdout)": blamed on the server, when shoal had closed it itself
    srv = shoal.mcp.server(SERVER, name="held")
    marks = tmp_path / "marks"

    async def main() -> None:
        (echo,) = await srv.tools(only=["echo"])
        plan = shoal.Plan()
        refs = [plan.call(echo, text=f"t{i}", n=60, mark=str(marks)) for i in range(5)]
        async with srv:
            running = asyncio.ensure_future(shoal.run(plan))
            # another process writes the file: polled (for a moment, once)
            while len(marks.read_text().split()) < 5 if marks.exists() else True:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # until the server has every call
        result = await running
        for ref in refs:
            error = result[ref].error
            assert result[ref].status == "failed" and error is not None
            assert error.type == "shoal.exceptions.MCPServerError"
            assert error.message.startswith("MCP server 'held' (")
            assert error.message.endswith(
                "): the session was closed while the call waited for its answer (the `async "
                "with` block that held the server open ended, or the run that started it did) "
                "(while calling 'echo')")
        assert not psutil.Process().children(recursive=True)  # the server was stopped

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize(("tool", "said"), [
    ("misnumbered", "answered a request it was never sent (id "),
    ("batched_stray", "answered a request it was never sent (id "),
    ("unnamed", "answered with an error that names no request (id null: a request it could not "
                "read, which gets no answer): Parse error: bad request (error -32700)"),
])
def test_an_answer_to_no_request_sent_ends_the_session_rather_than_leave_calls_waiting(
        tool: str, said: str) -> None:
    # the MCP SDK drops such an answer: the call it was meant for waited for good (no tool has
    # a timeout by default), and nothing says which call that is. The session ends, so every
    # call waiting on it fails at once, saying why; the next run starts the server again
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=SERVER, name="numberer")}
        plan = shoal.Plan()
        plan.call(tools["echo"], text="waits", n=60, node_id="slow")
        plan.call(tools[tool], node_id="stray")  # answered once the slow call has come
        result = await shoal.run(plan)
        for ref in ("slow", "stray"):
            error = result[ref].error
            assert result[ref].status == "failed" and error is not None
            assert error.type == "shoal.exceptions.MCPServerError"
            assert error.message.startswith("MCP server 'numberer' (")
            assert f"): {said}" in error.message
            assert tool == "unnamed" or (", after " in error.message and "): its answers "
                                             "cannot be matched with the calls they answer"
                                             in error.message)
        plan = shoal.Plan()
        again = plan.call(tools["echo"], text="again")
        assert (await shoal.run(plan))[again].value == "echo: again"
        assert not psutil.Process().children(recursive=True)

    arun(main(), timeout=SLOW)


def test_content_blocks_are_described_as_they_are_in_one_plain_line_each() -> None:
    # data that is not base64 was "about 10 bytes" of an image no one can decode, and a
    # server's name, URI or media type went into the description as it was: a line break and
    # a bracket there read as another block (a forged "[image: ...]"), an escape sequence
    # reached the terminal that shows the value
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=SERVER)}
        assert await tools["media"]() == "\n".join([
            "[image: image/png, not valid base64 (14 characters)]",
            "[audio: audio/wav, about 4 bytes]",
            "[resource link: z] [image: a file:///z]",
            "[resource file:///y: application/pdf, not valid base64 (3 characters)]"])

    arun(main(), timeout=SLOW)


class _MisnumberedHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP that answers each call with its id plus 1000 (JSON)."""

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call with an id it was never sent."""
        message = self._read()
        if self._notified(message):
            return
        answer = self._answered(message)
        if message["method"] == "tools/call":
            answer = {"jsonrpc": "2.0", "id": message["id"] + 1000, "result": {"content": []}}
        elif "result" not in answer:  # the SDK's probe of newer revisions: not known here
            answer["error"] = {"code": -32601, "message": "no such method"}
        self._send(json.dumps(answer).encode())


def test_an_http_answer_to_no_request_sent_fails_its_call_at_once() -> None:
    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        error = (await shoal.run(plan))[ref].error
        assert error is not None and error.type == "shoal.exceptions.MCPServerError"
        assert "): answered a request it was never sent (id " in error.message
        assert error.message.endswith("): its answers cannot be matched with the calls they "
                                      "answer (while calling 't')")

    with http_serving(_MisnumberedHTTP) as base:
        arun(main(base), timeout=SLOW)


def test_a_large_answer_over_stdio_is_read_in_time_in_proportion_to_its_size() -> None:
    # the MCP SDK's stdio reader joined what it held of a line with each 64 KiB chunk and
    # split the whole again: 50 MB took 33-117 s (time growing as the size squared); shoal's
    # own reader joins a line once (about a second here). The bound only tells them apart.
    size = 50_000_000

    async def main() -> float:
        (big,) = await shoal.mcp.tools(command=SERVER, only=["big"], timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(big, n=size)
        started = time.monotonic()
        result = (await shoal.run(plan))[ref]
        took = time.monotonic() - started
        assert result.status == "ok" and result.value == "x" * size
        return took

    took = arun(main(), timeout=SLOW * 2)
    assert took < 20, f"a {size}-byte answer took {took:.1f} s"


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 64])
def test_stdout_split_into_lines_anywhere_reads_as_whole_lines(cut: int) -> None:
    from shoal.integrations.mcp._transports import split_lines

    data = 'a\n{"é": "😀"}\r\n\n' + "z" * 100 + "\nrest"
    raw = data.encode()
    pieces: list[bytes] = []
    lines = [line for start in range(0, len(raw), cut)
             for line in split_lines(pieces, raw[start:start + cut])]
    assert [line.decode() for line in lines] == ["a", '{"é": "😀"}\r', "", "z" * 100]
    assert b"".join(pieces) == b"rest"  # unended: kept until its line break comes


class _BatchingHTTP(_OffProtocolHTTP):
    """An MCP server over HTTP that answers each call in a JSON-RPC batch.

    ``/json``: a JSON body (a log notification, then the answer); ``/sse``: an event stream
    whose one event is that batch. ``/bad``: a JSON batch whose answer is no MCP result
    (still off-protocol, as over stdio); ``/stray``: a JSON batch whose answer names
    another request (its id plus 1000).
    """

    def do_POST(self) -> None:
        """Answer the handshake and the listing; a call in a batch."""
        answer = self._call_to_answer()
        if answer is None:
            return
        answer["result"] = {"content": [{"type": "text", "text": "batched"}]}
        if self.path == "/bad":
            answer["result"] = {"content": "not a list"}
        if self.path == "/stray":
            answer["id"] += 1000
        batch = json.dumps([{"jsonrpc": "2.0", "method": "notifications/message",
                             "params": {"level": "info", "data": "about to answer"}}, answer])
        if self.path == "/sse":
            self._send(f"event: message\ndata: {batch}\n\n".encode(), "text/event-stream")
        else:
            self._send(batch.encode())


@pytest.mark.parametrize("path", ["json", "sse", "bad", "stray"])
def test_an_answer_in_a_json_rpc_batch_over_http_reaches_its_call(path: str) -> None:
    # over stdio a batch was read one message at a time; over HTTP the MCP SDK failed the
    # call as a parse error ("answered off-protocol"), though its answer was there. A batch
    # whose answer names another request stays off-protocol: unpacked, the SDK would have
    # given that answer to the call unseen.
    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/{path}", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        if path in ("json", "sse"):
            assert (result.status, result.value) == ("ok", "batched")
            return
        assert result.error is not None and result.error.type == "shoal.exceptions.MCPServerError"
        assert "answered off-protocol while calling 't': " in result.error.message

    with http_serving(_BatchingHTTP) as base:
        arun(main(base), timeout=SLOW)
