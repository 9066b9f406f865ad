"""An MCP server whose tools misbehave as servers do, run as a program by tests/test_mcp.py.

Written with the MCP SDK's own server API: a tool whose call ends the server's process (one
that first leaves a mark of having run), one that answers and ends the process a moment later,
while it is idle, one that writes a line that is not JSON-RPC where the protocol goes, one
that closes the protocol's pipe and lives on, one that writes megabytes to stderr before it
dies, one whose error text is megabytes long, and one that answers with a JSON-RPC error.

The SDK serves the protocol from a private duplicate of stdout and points fd 1 at stderr
while it serves: a tool that writes to ``sys.stdout`` or closes fd 1 misses the protocol's
pipe. The tools that must reach it find it as :func:`_wire` says.
"""

import asyncio
import os
import stat
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations

app = MCPServer("hostile")
READ_ONLY = ToolAnnotations(read_only_hint=True)
_PIPE = os.fstat(1)  # the protocol's output, as this process was started with it


def _wire() -> list[int]:
    """The descriptors open on the protocol's output pipe (the SDK's duplicate among them)."""
    found = []
    for name in os.listdir("/dev/fd"):
        try:
            seen = os.fstat(int(name))
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if stat.S_ISFIFO(seen.st_mode) and (seen.st_dev, seen.st_ino) == (_PIPE.st_dev,
                                                                         _PIPE.st_ino):
            found.append(int(name))
    return found


@app.tool(annotations=READ_ONLY)
async def echo(text: str) -> str:
    """Say it back."""
    return text


@app.tool(annotations=READ_ONLY)
async def die() -> str:
    """End the server's process in the middle of the call."""
    await asyncio.sleep(0.2)
    os._exit(3)


@app.tool()
def mark_and_die(path: str) -> str:
    """Append this process's id to ``path`` (a side effect), then end the process mid-call."""
    with open(path, "a", encoding="utf-8") as marks:
        marks.write(f"{os.getpid()}\n")
    os._exit(3)


@app.tool(annotations=READ_ONLY)
async def leave_soon(seconds: float) -> int:
    """Answer with this process's id, then end the process ``seconds`` later (idle by then)."""
    asyncio.get_running_loop().call_later(seconds, os._exit, 0)
    return os.getpid()


@app.tool(annotations=READ_ONLY)
async def pid() -> int:
    """This server process's id."""
    return os.getpid()


@app.tool(annotations=READ_ONLY)
async def garble() -> str:
    """Write a line that is not JSON-RPC on the protocol's stream, then answer."""
    os.write(_wire()[0], b"this is not JSON-RPC\n")
    return "answered after garbage"


@app.tool(annotations=READ_ONLY)
async def hang_up() -> str:
    """Close the protocol's output and live on, answering nothing."""
    sys.stderr.write("hanging up\n")
    sys.stderr.flush()
    for fd in _wire():
        os.close(fd)
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


@app.tool(annotations=READ_ONLY)
def server_error() -> str:
    """Answer with a JSON-RPC error whose code, -32000, is the first of the server-error range."""
    raise MCPError(code=-32000, message="the backend is down")


if __name__ == "__main__":
    app.run()
