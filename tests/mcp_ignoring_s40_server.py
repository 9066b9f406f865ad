"""A stdio MCP server of the 2025 protocol that ignores every request it does not know.

``python -m tests.mcp_ignoring_s40_server``: it answers ``initialize``, ``ping``,
``tools/list`` and ``tools/call`` (one tool, ``echo``) and says nothing to any other request
(``server/discover`` among them), as some servers do.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TOOL = {"name": "echo", "description": "Its text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                        "required": ["text"]}}


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    """The result for ``request``, or ``None`` to ignore it."""
    method = request.get("method")
    if method == "initialize":
        return {"protocolVersion": request["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "ignoring", "version": "1"}}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [TOOL]}
    if method == "tools/call":
        text = request["params"]["arguments"]["text"]
        return {"content": [{"type": "text", "text": text}], "isError": False}
    return None


def main() -> None:
    """Answer requests on stdin, one JSON-RPC message a line."""
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request:
            continue
        result = answer(request)
        if result is not None:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"],
                                         "result": result}) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
