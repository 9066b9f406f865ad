"""An MCP server whose tools misbehave as servers do, run as a program by tests/test_mcp.py.

Written with the MCP SDK's own server API: a tool whose call ends the server's process, one
that writes a line that is not JSON-RPC where the protocol goes, one that closes the
protocol's pipe and lives on, one that writes megabytes to stderr before it dies, and one
whose error text is megabytes long.
"""

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

app = MCPServer("hostile")
READ_ONLY = ToolAnnotations(read_only_hint=True)


@app.tool(annotations=READ_ONLY)
async def echo(text: str) -> str:
    """Say it back."""
    return text


@app.tool(annotations=READ_ONLY)
async def die() -> str:
    """End the server's process in the middle of the call."""
    await asyncio.sleep(0.2)
    os._exit(3)


@app.tool(annotations=READ_ONLY)
async def garble() -> str:
    """Write a line that is not JSON-RPC on the protocol's stream, then answer."""
    sys.stdout.write("this is not JSON-RPC\n")
    sys.stdout.flush()
    return "answered after garbage"


@app.tool(annotations=READ_ONLY)
async def hang_up() -> str:
    """Close the protocol's output and live on, answering nothing."""
    os.close(1)
    await asyncio.sleep(3600)
    return "unreachable"


@app.tool(annotations=READ_ONLY)
def babble_and_die(megabytes: int) -> str:
    """Write ``megabytes`` MB to stderr, then a last line, then end the process."""
    block = "chatter " * 131_072  # 1 MB
    for _ in range(megabytes):
        sys.stderr.write(block + "\n")
    sys.stderr.write("the last words\n")
    sys.stderr.flush()
    os._exit(3)


@app.tool(annotations=READ_ONLY)
def shout(size: int) -> str:
    """An error result of ``size`` characters."""
    raise ToolError("e" * size)


if __name__ == "__main__":
    app.run()
