"""mcp-server-time's tools, listed at import, for ``shoal mcp serve tests.mcp_time_tools:tools``.

The server's command is the JSON list in ``SHOAL_TEST_TIME_SERVER`` (tests/test_mcp.py puts
the relay of tests/mcp_relay.py in front of it). Served by shoal, these tools are a proxy:
each call goes on to the time server, over one session held open while shoal serves.
"""

import asyncio
import json
import os

import shoal

tools = asyncio.run(shoal.mcp.tools(command=json.loads(os.environ["SHOAL_TEST_TIME_SERVER"]),
                                    name="mcp-time"))
