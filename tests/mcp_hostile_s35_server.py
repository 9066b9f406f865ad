"""A raw MCP server (the SDK's low-level API) that misbehaves as asked, for session 35's tests.

``python mcp_hostile_s35_server.py MODE``: ``list_error`` answers the listing of its tools
with an error; ``bad_bytes`` writes bytes that are not UTF-8 on the protocol's pipe (a line of
its own) before each answer; ``out_of_schema`` declares an output schema that its results do
not fit (a count that is no integer), ``bad_output_schema`` one that is no schema;
``list_error_after_a_call`` and ``list_hangs_after_a_call`` list their tools until they have
answered a call; ``list_error_when_marked PATH`` lists them once, marking PATH, and then
refuses (so in every process started later), and marks PATH again for each call it answers;
``reserved_name`` lists a tool whose argument has the name shoal hands a call its run under;
``pages_in_a_loop`` pages its listing with the same cursor over and over, and
``pages_without_end`` pages it without end; ``listed_twice`` lists ``echo`` twice alike,
``two_different`` a second, different ``echo``; ``wide_schema N`` lists one tool of N
properties.
"""

import asyncio
import os
import sys
from typing import Any

import mcp_types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

MODE = sys.argv[1] if len(sys.argv) > 1 else ""
WIRE = os.dup(1)  # the protocol's pipe (the SDK points fd 1 elsewhere while it serves)
READ_ONLY = mcp_types.ToolAnnotations(read_only_hint=True)


OUTPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "out_of_schema": {"type": "object", "properties": {"count": {"type": "integer"}},
                      "required": ["count"]},
    "bad_output_schema": {"type": "no-such-type"},
}


CALLED: list[str] = []  # the calls this process answered


def _mark(text: str) -> bool:
    """Append ``text`` to the mark file (made if missing); whether it was missing."""
    missing = not os.path.exists(sys.argv[2])
    with open(sys.argv[2], "a", encoding="utf-8") as marks:
        marks.write(text)
    return missing


async def on_list(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
    if MODE == "list_error" or (MODE == "list_error_after_a_call" and CALLED):
        raise RuntimeError("the tool registry is down")
    if MODE == "list_hangs_after_a_call" and CALLED:
        await asyncio.Event().wait()
    if MODE == "list_error_when_marked" and not _mark(""):  # marked: not the first listing
        raise RuntimeError("the tool registry is down")
    if MODE in ("pages_in_a_loop", "pages_without_end"):
        at = int(params.cursor) if params is not None and params.cursor else 0
        return mcp_types.ListToolsResult(tools=[mcp_types.Tool(
            name=f"page{at}", input_schema={"type": "object"}, annotations=READ_ONLY)],
            next_cursor="1" if MODE == "pages_in_a_loop" else str(at + 1))
    if MODE == "wide_schema":  # a schema of N properties, each described
        return mcp_types.ListToolsResult(tools=[mcp_types.Tool(name="wide", input_schema={
            "type": "object", "properties": {f"p{n}": {"type": "string", "description": "x"}
                                             for n in range(int(sys.argv[2]))}},
            annotations=READ_ONLY)])
    sneaky = [mcp_types.Tool(name="sneaky", input_schema={
        "type": "object", "properties": {"_shoal_mcp_scope": {"type": "string"}}},
        annotations=READ_ONLY)] if MODE == "reserved_name" else []
    echo = mcp_types.Tool(
        name="echo", input_schema={"type": "object", "properties": {
            "text": {"type": "string"}, "max-chars": {"type": "integer"}}},
        output_schema=OUTPUT_SCHEMAS.get(MODE), annotations=READ_ONLY)
    again = {"listed_twice": [echo.model_copy()],
             "two_different": [echo.model_copy(update={"description": "another echo"})]}
    return mcp_types.ListToolsResult(tools=[echo, *sneaky, *again.get(MODE, [])])


async def on_call(ctx: Any, params: mcp_types.CallToolRequestParams,
                  ) -> mcp_types.CallToolResult:
    CALLED.append(params.name)
    if MODE == "list_error_when_marked":
        _mark("called\n")
    text = str((params.arguments or {}).get("text", ""))[:(params.arguments or {}).get(
        "max-chars")]  # an argument whose name is no Python name
    if MODE == "bad_bytes":
        os.write(WIRE, b"a stray line \xff\xfe that is not UTF-8\n")
    if MODE in OUTPUT_SCHEMAS:
        return mcp_types.CallToolResult(content=[mcp_types.TextContent(text="many")],
                                        structured_content={"count": "many"})
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=f"echo: {text}")])


async def main() -> None:
    server: Server[Any] = Server("hostile35", on_list_tools=on_list, on_call_tool=on_call)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    asyncio.run(main())
