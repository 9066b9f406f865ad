"""The plan of tests/test_mcp.py's time server test, and a client process that runs it.

``twenty_zones(get)`` is the plan: one ``get_current_time`` call that waits for the server to
start, then 20 more, all ready at once.
``python tests/mcp_time_client.py SERVER_COMMAND_JSON`` is a separate MCP client: it lists the
tools of the server that command starts (``shoal mcp serve ...`` in the test), runs the same
plan over one session, and prints each call's timezone, start and end as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import shoal

ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney"] * 4


def twenty_zones(get: shoal.Tool[..., Any]) -> tuple[shoal.Plan, list[shoal.Ref]]:
    """20 calls of ``get`` (``get_current_time``), one per zone of ZONES, side by side.

    They wait for a first call, which is answered once the server has started (a second or
    two): the 20 then measure calls, not a server's start.
    """
    plan = shoal.Plan("twenty zones")
    first = plan.call(get, timezone="UTC", node_id="first")
    return plan, [plan.call(get, timezone=zone, after=first) for zone in ZONES]


async def run(command: list[str]) -> list[dict[str, Any]]:
    """Run the plan against the server ``command`` starts; each call's zone and times."""
    # the server gets only a few of this process's variables unless told (the MCP SDK's rule)
    env = {k: os.environ[k] for k in ("PYTHONPATH", "SHOAL_TEST_TIME_SERVER") if k in os.environ}
    found = {t.name: t for t in await shoal.mcp.tools(command=command, env=env)}
    plan, refs = twenty_zones(found["get_current_time"])
    result = await shoal.run(plan)
    return [{"status": result[r].status, "timezone": (result[r].value or {}).get("timezone")
             if result[r].ok else None, "started": result[r].started_at,
             "finished": result[r].finished_at} for r in refs]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
