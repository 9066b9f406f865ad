"""A small MCP server with awkward tools, run as a program by tests/test_mcp.py.

Written with the MCP SDK's own server API (not shoal's): slow calls, a call that never
answers, huge results, error results, and tool names that are not valid shoal tool names.
"""

import asyncio
import sys

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


@app.tool(name="n" * 100, annotations=READ_ONLY)
def long_name() -> str:
    """A name of 100 characters."""
    return "long answered"


@app.tool()
def unannotated(text: str) -> str:
    """No annotations at all: MCP's defaults apply."""
    return text


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
