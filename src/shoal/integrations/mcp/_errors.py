"""How a session's end and the MCP SDK's errors are told apart and put in words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mcp_types
from mcp.shared.exceptions import MCPError

from shoal.exceptions import (
    MCPServerError,
    describe_exception,
)
from shoal.integrations.mcp._transports import REQUEST_FAILED

if TYPE_CHECKING:
    from shoal.integrations.mcp._server import MCPServer


#: Why a stdio server's session ended when its output did.
_STDOUT_ENDED = ("the connection closed: its output (stdout) ended, so no answer can come (the "
                 "server exited, or closed its stdout)")


#: Why the calls running when a session was closed got no answer.
_CLOSED_UNDER = ("the session was closed while the call waited for its answer (the `async "
                 "with` block that held the server open ended, or the run that started it did)")


def _connection_closed(exc: MCPError) -> bool:
    """Whether the MCP SDK raised ``exc`` because the connection closed under a request.

    Its code, -32000, is also the first of JSON-RPC's server-error codes, which servers send
    for errors of their own: taken for a closed connection, such an answer ended the session
    and failed every call in flight on it. The SDK's own error is told by its exact text.
    """
    return (exc.code == mcp_types.CONNECTION_CLOSED and exc.message == "Connection closed"
            and exc.data is None)


def _stream_failed(exc: MCPError) -> bool:
    """Whether the MCP SDK's HTTP client raised ``exc`` because an answer's event stream broke.

    It failed (an event past the size limit, say), or ended without the answer: the SDK
    answers the request with an error of its own, which read as the server refusing the call.
    """
    return (exc.code == mcp_types.CONNECTION_CLOSED and exc.data is None
            and exc.message.startswith("SSE stream "))


def _session_terminated(exc: MCPError) -> bool:
    """Whether the MCP SDK's HTTP client raised ``exc`` for a 404 to the session's id."""
    return (exc.code == mcp_types.INVALID_REQUEST and exc.message == "Session terminated"
            and exc.data is None)


def _cause(exc: BaseException, starting: bool, server: MCPServer) -> str:
    """What ended a session, in words: the innermost errors of an exception group."""
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    said = "; ".join(dict.fromkeys(
        e.message if isinstance(e, MCPError) and e.data == REQUEST_FAILED  # (the HTTP error)
        else describe_exception(e) for e in leaves)) or repr(exc)
    if starting and isinstance(exc, FileNotFoundError | PermissionError) and server.command:
        return f"cannot start {server.command[0]!r}: {said}"
    return f"{'could not start' if starting else 'failed'}: {said}"


class _NotSent(Exception):
    """A call's request was not written: its stdio server's connection was found closed."""

    def __init__(self, error: MCPServerError) -> None:
        super().__init__(str(error))
        self.error = error
