""":func:`serve`: shoal tools as an MCP server, each call a run of a runtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types

from shoal.exceptions import ConfigError, PlanError, ShoalError, bounded_text
from shoal.integrations.mcp._limits import CLOSE_TIMEOUT, NAME_PATTERN
from shoal.integrations.mcp._serve_io import _serve_http, _serve_stdio
from shoal.integrations.mcp._tool import MCPTool
from shoal.merge import shown
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.outcome import Outcome
    from shoal.runtime import Runtime


def _annotations(tool: Tool[..., Any]) -> mcp_types.ToolAnnotations:
    """What a shoal tool's policy says about it, as MCP hints.

    Read-only: it declares reads and nothing else. Destructive: it needs approval (the
    mirror of how :func:`tools` reads the hint).
    """
    policy = tool.policy
    read_only = bool(policy.reads) and not (policy.writes or policy.merges or policy.exclusive)
    return mcp_types.ToolAnnotations(read_only_hint=read_only,
                                     destructive_hint=policy.approval is not False,
                                     idempotent_hint=policy.idempotent or read_only)


def _result(outcome: Outcome) -> mcp_types.CallToolResult:
    """A call's outcome as an MCP result (anything but ``ok`` is an error result).

    A string is text; any other value is JSON text and structured content.
    """
    from shoal.outcome import jsonable

    if outcome.status == "ok":
        value = outcome.value
        if isinstance(value, str):
            return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=value)])
        data = jsonable(value)
        # structured content is an object; other values go in {"result": ...}, as the MCP
        # SDK's own servers send them
        return mcp_types.CallToolResult(
            content=[mcp_types.TextContent(text=json.dumps(data, ensure_ascii=False))],
            structured_content=data if isinstance(data, dict) else {"result": data})
    if outcome.error is not None:
        text = f"{outcome.status}: {outcome.error.type}: {outcome.error.message}"
    else:
        text = f"{outcome.status}: {outcome.reason or 'the call did not run'}"
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=text)], is_error=True)


@dataclass
class _Served:
    """The tools a :func:`serve` offers, and the runtime their calls run on."""

    table: dict[str, Tool[..., Any]]
    runtime: Runtime
    count: int = 0

    def listing(self) -> list[mcp_types.Tool]:
        return [mcp_types.Tool(name=t.name, description=t.description or None,
                               input_schema=t.json_schema(), annotations=_annotations(t))
                for t in self.table.values()]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> mcp_types.CallToolResult:
        return _encodable(await self._call(name, arguments))

    async def _call(self, name: str, arguments: Mapping[str, Any]) -> mcp_types.CallToolResult:
        from shoal.plan import Plan

        found = self.table.get(name)
        if found is None:
            return _error_result(f"no tool {bounded_text(repr(name), 200)}; the tools: "
                                 f"{', '.join(self.table)}")
        plan = Plan(name=f"mcp {name}")
        try:
            ref = plan.add(found, dict(arguments), node_id=name)
            handle = self.runtime.start(plan)
        except PlanError as exc:  # arguments that do not fit: the client can correct them
            return _error_result("; ".join(p.message for p in exc.problems))
        except ShoalError as exc:  # the runtime could not run it (its journal, say)
            return _error_result(f"{type(exc).__name__}: {exc}")
        try:
            result = await asyncio.shield(handle.as_future())
        except asyncio.CancelledError:
            # the client cancelled the request, or went away: the run is cancelled through its
            # handle, so the call ends ``cancelled`` and the journal says so (cancelled from
            # outside, the run read as ``running`` for as long as the server lived)
            handle.cancel(reason="the MCP client cancelled the call, or disconnected")
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await asyncio.wait({handle.as_future()})
            raise
        return _result(result[ref])


def _encodable(result: mcp_types.CallToolResult) -> mcp_types.CallToolResult:
    """``result`` with each lone surrogate (in a value, or an error's message) made ``?``.

    JSON on the wire is UTF-8, which has no lone surrogates: the SDK's writer fails on one and
    takes the whole server down with it, every client's calls included.
    """
    dumped = result.model_dump(mode="json", by_alias=True, exclude_unset=True)
    text = json.dumps(dumped, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogates sit only inside strings: '?' keeps the JSON valid
        return mcp_types.CallToolResult.model_validate_json(
            text.encode("utf-8", "replace"))
    return result


def _error_result(text: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=text)], is_error=True)


def served_tools(found: Sequence[Any]) -> dict[str, Tool[..., Any]]:
    """The tools to serve, by name, from tools and plain functions; names must be unique."""
    from shoal.plan import as_tool

    table: dict[str, Tool[..., Any]] = {}
    for item in found:
        if not callable(item):
            raise ConfigError(f"only tools and functions can be served, got {shown(item)}")
        made = as_tool(item)
        if made.name in table:
            raise ConfigError(f"two tools are named {made.name!r}; tool names must be unique")
        if not NAME_PATTERN.fullmatch(made.name):
            raise ConfigError(f"tool name {made.name!r} is not a valid MCP tool name (1-64 "
                              "letters, digits, '_' or '-')")
        table[made.name] = made
    if not table:
        raise ConfigError("no tools to serve")
    return table


async def serve(found: Sequence[Any], *, port: int | None = None, host: str = "127.0.0.1",
                runtime: Runtime | None = None, name: str = "shoal",
                ready: Callable[[], None] | None = None) -> None:
    """Serve shoal tools as an MCP server: on stdio, or on ``http://HOST:PORT/mcp``.

    Each call runs as a one-node run of ``runtime`` (default: a new :class:`Runtime`), so
    the tool's timeout, retries and limits hold (limits across concurrent calls too), calls
    that need approval go to the runtime's approver (none: denied), and a runtime with a
    durable store journals every call. A failed, timed-out or denied call is an error result
    (``isError``) saying what happened. ``ready`` is called once the server listens.
    """
    from mcp.server.lowlevel import Server as LowLevelServer

    from shoal import __version__
    from shoal.runtime import Runtime

    served = _Served(served_tools(found), runtime if runtime is not None else Runtime())

    async def list_tools(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=served.listing())

    async def call_tool(ctx: Any, params: mcp_types.CallToolRequestParams,
                        ) -> mcp_types.CallToolResult:
        return await served.call(params.name, params.arguments or {})

    srv: LowLevelServer[Any] = LowLevelServer(name, version=__version__,
                                              on_list_tools=list_tools, on_call_tool=call_tool)
    try:
        async with _held_servers(served.table.values()):
            if port is None:
                await _serve_stdio(srv, ready)
            else:
                await _serve_http(srv, host, port, ready)
    finally:
        await served.runtime.aclose()


@contextlib.asynccontextmanager
async def _held_servers(served: Collection[Tool[..., Any]]) -> AsyncIterator[None]:
    """One session held open, while serving, for each MCP server whose tools are served.

    Each served call is a run of its own, and a run that finds no held session opens one and
    closes it when it ends: re-served MCP tools would start their server (a process, for a
    command) for every call, and calls at once would each start one. A server held open
    already (by the caller) is left as it is.
    """
    upstream = {id(t.remote.server): t.remote.server for t in served
                if isinstance(t, MCPTool) and t.remote.server._held is None}
    async with contextlib.AsyncExitStack() as stack:
        for held in upstream.values():
            await stack.enter_async_context(held)
        yield
