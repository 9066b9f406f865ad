"""A stdio MCP server that ignores ``server/discover`` does not cost its session 10 s.

The MCP SDK probes every session with ``server/discover`` and waits 10 s for an answer a
server of the 2025 protocol that ignores unknown requests never sends. Once such a server
has shown it is up (it answers a ``ping``) while the probe still waits, the probe is answered
for it as unknown, and the session goes on with the ``initialize`` handshake.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from shoal.integrations.mcp import MCPServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def test_a_server_that_ignores_discover_starts_its_session_in_moments() -> None:
    server = MCPServer(command=(sys.executable, "-m", "tests.mcp_ignoring_s40_server"))

    async def use() -> tuple[float, str]:
        began = time.monotonic()
        async with server:
            tools = await server.tools()
            took = time.monotonic() - began
            answer = await tools[0].fn(text="hi")
        return took, answer

    took, answer = asyncio.run(use())
    assert answer == "hi"
    assert took < 6, took  # the SDK alone: 10 s of probe, then the handshake
