"""Hostile MCP servers against shoal's MCP client, second round of session 38.

Each server is real: a subprocess speaking MCP over stdio (tests/hostile_mcp_s38_server.py,
JSON-RPC by hand), or a local HTTP server (the ones of earlier sessions' tests). Whatever it
does, every call ends in a recorded outcome (its answer, or a typed error a person can act on).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from tests.conftest import arun
from tests.test_hostile_mcp_s37 import http_serving
from tests.test_hostile_mcp_s38 import SLOW, _SlowHTTP


def test_a_call_over_http_silent_past_the_sdks_read_limit_still_gets_its_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the MCP SDK's HTTP client gives up on an answer of which no byte came for 300 s
    # (MCP_DEFAULT_SSE_READ_TIMEOUT), whatever the tool's own timeout says: a call of a tool
    # that works 6 minutes failed ("ReadTimeout"). Shortened to 1 s here, that limit must not
    # apply: the server answers after 3 s, within the tool's timeout of 20 s.
    import mcp.shared._httpx_utils as sdk_http

    monkeypatch.setattr(sdk_http, "MCP_DEFAULT_SSE_READ_TIMEOUT", 1.0)
    posted: list[dict[str, Any]] = []

    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        assert (result.status, result.value) == ("ok", ""), result.error

    with http_serving(type("Slow", (_SlowHTTP,), {"posted": posted})) as base:
        arun(main(base), timeout=SLOW)
