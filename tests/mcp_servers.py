"""A small MCP server with awkward tools, run as a program by tests/test_mcp.py.

Written with the MCP SDK's own server API (not shoal's): slow calls, a call that never
answers, huge results, error results, and tool names that are not valid shoal tool names.
"""

import asyncio
import base64
import sys
from typing import Any

import mcp_types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

app = MCPServer("awkward")
READ_ONLY = ToolAnnotations(read_only_hint=True)


@app.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@app.tool(annotations=READ_ONLY)
async def never() -> str:
    """Never answers."""
    await asyncio.Event().wait()
    return "unreachable"


@app.tool(annotations=READ_ONLY)
def huge(size: int) -> str:
    """A text of ``size`` characters."""
    return "x" * size


@app.tool(annotations=READ_ONLY)
def fail(why: str) -> str:
    """Always an error result."""
    raise ToolError(f"refused: {why}")  # the SDK sends a ToolError's text as the result


@app.tool(name="bad name!", annotations=READ_ONLY)
def bad_name() -> str:
    """A name with a space and a bang."""
    return "bad name answered"


@app.tool(name="dotted.name", annotations=READ_ONLY)
def dotted() -> str:
    """A name with a dot."""
    return "dotted answered"


@app.tool(name="newline\n", annotations=READ_ONLY)
def newline_name() -> str:
    """A valid name but for the newline that ends it."""
    return "newline answered"


@app.tool(name="n" * 100, annotations=READ_ONLY)
def long_name() -> str:
    """A name of 100 characters."""
    return "long answered"


@app.tool()
def unannotated(text: str) -> str:
    """No annotations at all: MCP's defaults apply."""
    return text


# -- "raw": the SDK's low-level server, for schemas and results MCPServer would not make --

RAW_TOOLS = {
    "remote_ref": {"type": "object",
                   "properties": {"x": {"$ref": "https://example.invalid/schema.json"}}},
    "mixed": {"type": "object", "properties": {}},
    "bad_schema": {"type": "object", "properties": {"x": {"type": "no-such-type"}}},
}


async def raw_list(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
    skip = set(sys.argv[2:])
    return mcp_types.ListToolsResult(tools=[
        mcp_types.Tool(name=n, input_schema=schema, annotations=READ_ONLY)
        for n, schema in RAW_TOOLS.items() if n not in skip])


async def raw_call(ctx: Any, params: mcp_types.CallToolRequestParams,
                   ) -> mcp_types.CallToolResult:
    pixel = base64.b64encode(b"\x89PNG" + bytes(96)).decode()
    return mcp_types.CallToolResult(content=[
        mcp_types.TextContent(text="three blocks:"),
        mcp_types.ImageContent(data=pixel, mime_type="image/png"),
        mcp_types.EmbeddedResource(resource=mcp_types.TextResourceContents(
            uri="file:///notes.txt", text="the notes")),
        mcp_types.ResourceLink(name="more", uri="file:///more.txt"),
    ])


async def raw_main() -> None:
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

    server: Server[Any] = Server("raw", on_list_tools=raw_list, on_call_tool=raw_call)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif sys.argv[1:2] == ["raw"]:
        asyncio.run(raw_main())
    else:
        app.run()
