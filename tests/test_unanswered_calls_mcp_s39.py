"""A call an MCP server never answers ends, bounded, with an error naming the bound (session 39).

A call of a tool given no ``timeout`` waited for good when the server never answered (over
HTTP nothing tells a silent server from a slow one): the run never ended, and its call had no
outcome. Now such a call waits at most the server's ``answer_timeout`` (default
``shoal.mcp.ANSWER_TIMEOUT``), then fails with ``MCPServerError`` naming it; a call whose tool
has a timeout of its own is bounded by that alone. Real servers: tests/mcp_servers.py (the
MCP SDK's own server API) over streamable HTTP and over stdio.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.exceptions import ConfigError, MCPServerError
from tests.conftest import arun
from tests.test_mcp import AWKWARD, SLOW, by_name, http_server

__all__ = ["http_server"]  # the fixture, used by name


def test_an_http_call_of_a_tool_without_timeout_that_is_never_answered_fails_naming_the_bound(
        http_server: Any) -> None:
    _, url = http_server([*AWKWARD, "http", "{port}"])

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(url=url, name="silent", answer_timeout=1.5))
        assert found["never"].policy.timeout is None
        plan = shoal.Plan()
        never = plan.call(found["never"])
        quick = plan.call(found["slow"], seconds=0.1)
        began = time.monotonic()
        result = await shoal.run(plan)
        assert 1.4 < time.monotonic() - began < 20
        error = result[never].error
        assert result[never].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message == (
            f"MCP server 'silent' ({url}): did not answer the call of 'never' within 1.5 s "
            "(answer_timeout, the bound of a call whose tool has no timeout of its own: give "
            "the tool timeout=, or the server answer_timeout=None to wait for good)")
        assert (result[quick].status, result[quick].value) == ("ok", {"result": "slept 0.1"})

    arun(main(), timeout=SLOW)


def test_a_call_whose_tool_has_a_timeout_is_bounded_by_that_alone(http_server: Any) -> None:
    _, url = http_server([*AWKWARD, "http", "{port}"])

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(url=url, answer_timeout=0.5, timeout=30))
        plan = shoal.Plan()
        slow = plan.call(found["slow"], seconds=2)
        result = await shoal.run(plan)
        assert (result[slow].status, result[slow].value) == ("ok", {"result": "slept 2.0"})

    arun(main(), timeout=SLOW)


def test_a_direct_call_over_stdio_is_bounded_too() -> None:
    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=AWKWARD, name="quiet",
                                              answer_timeout=1))
        with pytest.raises(MCPServerError, match=r"did not answer the call of 'never' within 1 s"):
            await found["never"]()

    arun(main(), timeout=SLOW)


def test_the_default_bound_is_finite_and_none_waits_for_good() -> None:
    srv = shoal.mcp.server(url="http://127.0.0.1:1/mcp")
    assert srv.answer_timeout == shoal.mcp.ANSWER_TIMEOUT
    assert 0 < shoal.mcp.ANSWER_TIMEOUT < math.inf
    assert shoal.mcp.server(url="http://127.0.0.1:1/mcp", answer_timeout=None).answer_timeout \
        is None
    for bad in (0, -1, math.inf, math.nan, True, "10"):
        with pytest.raises(ConfigError, match="answer_timeout must be"):
            shoal.mcp.server(url="http://127.0.0.1:1/mcp", answer_timeout=bad)  # type: ignore[arg-type]
