"""MCP tools: the tools of an MCP server as shoal tools, and shoal tools as an MCP server.

Use a server's tools (over stdio or streamable HTTP) in plans and agents::

    tools = await shoal.mcp.tools(command=["mcp-server-time"])
    tools = await shoal.mcp.tools(url="http://127.0.0.1:8000/mcp")

Each tool is a real :class:`~shoal.tools.Tool`: its argument schema is the server's
``inputSchema`` (what a model sees, and what arguments are checked against before a call), its
description the server's, and its policy comes from the server's tool annotations:

- ``readOnlyHint: true``: the call only *reads* the server (footprint ``reads="mcp:NAME"``),
  so read-only calls run side by side; it is safe to run again after a crash (idempotent).
- otherwise it *writes* the server (``writes="mcp:NAME"``): it keeps plan order with the
  server's other calls; ``idempotentHint: true`` makes it idempotent for resume;
  ``destructiveHint`` (true by MCP's default when the server says nothing) makes it need
  approval.
- ``openWorldHint`` is kept on :attr:`MCPTool.remote` (``open_world``); it changes nothing.

Annotations are hints from the server: ``approval=`` (every tool) and ``overrides=`` (per tool,
any option of ``@shoal.tool``) replace what they say.

A run starts each server it needs on its first call, lists its tools before it sends any call
(a server that cannot list them is sent none), shares one session among all its calls
(the MCP SDK matches answers to requests by id, so calls overlap), and stops it when the
outermost run ends. ``async with server:`` holds one session open instead, for every run and
direct call meanwhile (a call still waiting when the block ends fails, saying so). A server
that dies, closes its output (stdout), or answers a request it was never sent (which no call
would ever get) fails its running calls at once with
:class:`~shoal.exceptions.MCPServerError` naming it and what happened; the next call starts
it again. A call whose request had not been sent when a stdio server's
connection was found closed (the server exited while idle) goes to the server started again,
once; one whose request was sent fails (the tool may have run). A result with
``isError: true`` fails the call with
:class:`~shoal.exceptions.MCPToolError` and the server's text.

The other way, :func:`serve` (``shoal mcp serve module:tools``) is an MCP server whose tools
are shoal tools: each call runs through a :class:`~shoal.runtime.Runtime`, with the tools'
limits, approvals and (given a store) the journal.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from shoal.exceptions import ConfigError, MissingDependencyError
from shoal.merge import shown
from shoal.policy import ApprovalRule

try:
    import anyio  # noqa: F401  # what the mcp SDK's transports run on
    import jsonschema  # type: ignore[import-untyped]  # noqa: F401  # a dependency of mcp
    import mcp_types  # noqa: F401
    from mcp import Client, StdioServerParameters  # noqa: F401
    from mcp.shared.exceptions import MCPError  # noqa: F401
except ImportError as exc:  # the extra is missing: say how to install it
    raise MissingDependencyError("mcp", "mcp") from exc

from shoal.integrations.mcp._content import SAID_CHARS as SAID_CHARS
from shoal.integrations.mcp._content import content_text as content_text
from shoal.integrations.mcp._content import result_value as result_value
from shoal.integrations.mcp._limits import ANSWER_TIMEOUT as ANSWER_TIMEOUT
from shoal.integrations.mcp._limits import CANCEL_POST_WAIT as CANCEL_POST_WAIT
from shoal.integrations.mcp._limits import CLOSE_TIMEOUT as CLOSE_TIMEOUT
from shoal.integrations.mcp._limits import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from shoal.integrations.mcp._limits import MAX_ARGUMENT_DEPTH as MAX_ARGUMENT_DEPTH
from shoal.integrations.mcp._limits import MAX_PAGES as MAX_PAGES
from shoal.integrations.mcp._limits import MAX_RELISTINGS as MAX_RELISTINGS
from shoal.integrations.mcp._limits import NAME_PATTERN as NAME_PATTERN
from shoal.integrations.mcp._limits import STDERR_TAIL as STDERR_TAIL
from shoal.integrations.mcp._listed import RemoteTool as RemoteTool
from shoal.integrations.mcp._schema import MAX_SCHEMA_OBJECTS as MAX_SCHEMA_OBJECTS
from shoal.integrations.mcp._serve import serve as serve
from shoal.integrations.mcp._serve import served_tools as served_tools
from shoal.integrations.mcp._server import MCPServer as MCPServer
from shoal.integrations.mcp._text import REASON_PHRASE_CHARS as REASON_PHRASE_CHARS
from shoal.integrations.mcp._tool import MCPTool as MCPTool

__all__ = ["MAX_SCHEMA_OBJECTS", "MCPServer", "MCPTool", "RemoteTool", "content_text",
           "result_value", "serve", "served_tools", "server", "tools"]

log = logging.getLogger(__name__)


def server(command: Sequence[str] | None = None, *, url: str | None = None,
           name: str | None = None, env: Mapping[str, str] | None = None,
           cwd: str | None = None, headers: Mapping[str, str] | None = None,
           connect_timeout: float = CONNECT_TIMEOUT,
           answer_timeout: float | None = ANSWER_TIMEOUT) -> MCPServer:
    """An MCP server: started as ``command`` (stdio) or reached at ``url`` (streamable HTTP).

    ``name`` names it in errors and in its tools' resource key (default: the name the server
    gives, else its program or URL); ``env`` adds environment variables for the command
    (the MCP SDK passes only a safe few of this process's own); ``headers`` go with every
    HTTP request. ``connect_timeout`` bounds starting it and the MCP handshake, and listing its
    tools.
    """
    if isinstance(command, str):
        raise ConfigError(f"command is a list of program and arguments, e.g. "
                          f"[{command!r}], not one string")
    if command is not None and not isinstance(command, Iterable):
        raise ConfigError(f"command is a list of program and arguments, got "
                          f"{type(command).__name__} {shown(command)}")
    return MCPServer(tuple(command or ()), url, name, env, cwd, headers, connect_timeout,
                     answer_timeout)


async def tools(
    command: Sequence[str] | None = None,
    *,
    url: str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    answer_timeout: float | None = ANSWER_TIMEOUT,
    prefix: str = "",
    only: Collection[str] | None = None,
    approval: ApprovalRule | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 (each tool's per-call timeout, see below)
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[MCPTool]:
    """The tools of an MCP server as shoal tools.

    The server is started (or reached) once to list its tools, then stopped; runs start it
    again when they call it (see the module docstring). Server options as for
    :func:`server`. Tool options: ``prefix`` goes before every tool name (two servers with
    the same tool names); ``only`` keeps the named tools (by the server's names);
    ``approval`` replaces what the annotations say for every tool (``True``: every call
    needs approval, ``False``: none does); ``timeout`` is every tool's per-call timeout;
    ``overrides`` maps a tool name to ``@shoal.tool`` options for it, e.g.
    ``{"write_file": {"writes": "file:{path}", "approval": False}}``.
    """
    srv = server(command, url=url, name=name, env=env, cwd=cwd, headers=headers,
                 connect_timeout=connect_timeout, answer_timeout=answer_timeout)
    return await srv.tools(prefix=prefix, only=only, approval=approval, timeout=timeout,
                           overrides=overrides)
