"""Hostile MCP servers against shoal's MCP client, found in session 37.

Each server is a real subprocess speaking MCP over stdio: tests/mcp_hostile_s37_server.py
writes JSON-RPC by hand, to break the protocol as no SDK lets a server. Whatever it does,
every call ends in a recorded outcome (its answer, or a typed error a person can act on),
never a wait without end.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.exceptions import ToolDefinitionError
from tests.conftest import arun

SERVER = [sys.executable, str(Path(__file__).parent / "mcp_hostile_s37_server.py")]
SLOW = 60.0  # seconds a test may take: only a bound for a hang (servers start in a second)


def test_a_schema_whose_ref_loops_is_refused_when_listed_not_blamed_on_each_value() -> None:
    # jsonschema accepts a schema whose $ref leads back to itself (through allOf, anyOf ...)
    # without reaching into the value; checking any argument then recursed to Python's limit,
    # and every call was refused as "nested too deeply ... pass it flatter", blaming the value
    async def main() -> None:
        with pytest.raises(ToolDefinitionError) as caught:
            await shoal.mcp.tools(command=[*SERVER, "ref_loop"], name="loopy")
        said = str(caught.value)
        assert said.startswith("MCP server 'loopy' (")
        assert ("tool 'looped' has an input schema that leads back to itself without reaching "
                "into the value (it loops through allOf -> $ref '#/$defs/b' -> anyOf -> "
                "$ref '#/$defs/a'), so checking any argument against it never ends; leave it "
                "out with only=[...]") in said
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
    from shoal.integrations.mcp import _ref_loop

    assert _ref_loop(schema) is not None


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"$ref": "#"}}},  # each level is a part of the value
    {"type": "object", "$defs": {"a": {"$ref": "#/$defs/a"}}},  # a loop never met
    {"type": "object", "properties": {"$ref": {"type": "string"}, "allOf": {"const": 1}}},
    {"type": "object", "properties": {"x": {"enum": [{"$ref": "#"}]}}},  # a value, no schema
    {"type": "object", "properties": {"x": {"$id": "other", "$ref": "#"}}},  # another base
])
def test_a_schema_that_only_looks_like_a_ref_loop_is_none(schema: dict[str, object]) -> None:
    from shoal.integrations.mcp import _ref_loop

    assert _ref_loop(schema) is None


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
