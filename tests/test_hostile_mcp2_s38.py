"""Hostile MCP servers against shoal's MCP client, second round of session 38.

Each server is real: a subprocess speaking MCP over stdio (tests/hostile_mcp_s38_server.py,
JSON-RPC by hand), or a local HTTP server (the ones of earlier sessions' tests). Whatever it
does, every call ends in a recorded outcome (its answer, or a typed error a person can act on).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from tests.conftest import arun
from tests.test_hostile_mcp_s37 import http_serving
from tests.test_hostile_mcp_s38 import SERVER, SLOW, _SlowHTTP


def test_a_call_over_http_silent_past_the_sdks_read_limit_still_gets_its_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the MCP SDK's HTTP client gives up on an answer of which no byte came for 300 s
    # (MCP_DEFAULT_SSE_READ_TIMEOUT), whatever the tool's own timeout says: a call of a tool
    # that works 6 minutes failed ("ReadTimeout"). Shortened to 1 s here, that limit must not
    # apply: the server answers after 3 s, within the tool's timeout of 20 s.
    import mcp.shared._httpx_utils as sdk_http

    monkeypatch.setattr(sdk_http, "MCP_DEFAULT_SSE_READ_TIMEOUT", 1.0)
    posted: list[dict[str, Any]] = []

    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        assert (result.status, result.value) == ("ok", ""), result.error

    with http_serving(type("Slow", (_SlowHTTP,), {"posted": posted})) as base:
        arun(main(base), timeout=SLOW)


def test_a_call_is_checked_against_the_input_schema_the_server_lists_now() -> None:
    # the arguments were checked against the schema listed when the tools were made, for the
    # whole session: after the server made 'echo's text at most 3 characters long (and said
    # its tools changed), a call with a longer text was sent as it was
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=[*SERVER, "reargue"],
                                                          name="changer", timeout=30,
                                                          approval=False)}
        plan = shoal.Plan()
        changed = plan.call(tools["reargue"])
        fits = plan.call(tools["echo"], text="abc", after=changed)
        long = plan.call(tools["echo"], text="abcdef", after=changed)
        result = await shoal.run(plan)
        assert result[changed].status == "ok"
        assert (result[fits].status, result[fits].value) == ("ok", "echo: abc"), (
            result[fits].error)
        error = result[long].error
        assert result[long].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPToolError"
        assert error.message.startswith("MCP server 'changer' (")
        assert error.message.endswith(
            ") changed the input schema of tool 'echo' since its tools were listed, and the "
            "arguments do not fit it now (argument 'text': 'abcdef' is too long): the call was "
            "not sent; list its tools again (shoal.mcp.tools)"), error.message

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_a_batch_nested_too_deeply_to_parse_fails_the_call_it_answers_at_once(
        depth: int) -> None:
    # an answer alone on its line so nested was failed at once; in a JSON-RPC batch, the
    # line was dropped, and its call waited until its timeout (here 60 s), or for good
    async def main() -> None:
        (deep,) = await shoal.mcp.tools(command=SERVER, name="deep", only=["deep"],
                                         approval=False, timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(deep, n=depth, text="batch")
        sibling = plan.call(deep, n=3, text="batch")
        started = time.monotonic()
        result = await shoal.run(plan)
        assert time.monotonic() - started < SLOW / 2
        assert (result[sibling].status, result[sibling].value) == ("ok", {"a": {"a": {"a": 1}}})
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith("MCP server 'deep' (")
        assert "): answered off-protocol while calling 'deep': its answer is JSON the MCP SDK " \
            "cannot read (nested too deeply" in error.message, error.message

    arun(main(), timeout=SLOW * 2)


DEEP = '{"a": ' * 5000 + "1" + "}" * 5000


@pytest.mark.parametrize(("line", "read"), [
    (f'[{{"method": "n"}}, {{"result": {DEEP}, "id": 4}}]',
     [({"method": "n"}, False), ({"id": 4, "result": None}, True)]),
    (f'[{{"result": {DEEP}}}]', [(None, True)]),  # it names no request
    (f' [ {{"id": "x", "error": {DEEP}}} ]', [({"id": "x", "result": None}, True)]),
    (f'[1, {{"result": {DEEP}, "id": 4}}]',  # what is no object is passed over
     [({"id": 4, "result": None}, True)]),
    (f'[[{{"result": {DEEP}, "id": 4}}]]', None),  # no array of objects
    (f'[{{"result": {DEEP}, "id": 4}}', None),  # cut off
    (f'{{"result": {DEEP}, "id": 4}}', None),  # no batch
])
def test_a_batch_too_deep_to_parse_is_read_one_object_at_a_time(line: str, read: Any) -> None:
    from shoal.integrations._mcp_transports import shallow_batch

    assert shallow_batch(line) == read

