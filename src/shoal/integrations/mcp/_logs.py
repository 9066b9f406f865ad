"""What the MCP SDK logs of a server's stray output, in one line rather than a traceback."""

from __future__ import annotations

import logging

from shoal.exceptions import bounded_text
from shoal.integrations.mcp._wire import salvaged


class _OneLineNoise(logging.Filter):
    """A stdio server's stray stdout line, logged in one line rather than with a traceback.

    The MCP SDK logs each line a server prints that is not JSON-RPC with a traceback of its
    parser (``Failed to parse JSONRPC message from server``); the line is the server's doing,
    not a fault here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Make ``record`` one line; drop it if it logs no line that is dropped."""
        if record.exc_info and record.getMessage().startswith("Failed to parse JSONRPC"):
            batch = _batch_size(record.exc_info[1])
            if batch is None and salvaged(record.exc_info[1], keep=True):
                # an answer shoal reads after all, or turns into its call's error (which
                # says why): not ignored, and not the log's to tell
                return False
            record.msg, record.args = (
                ("MCP server printed a line that is not JSON-RPC on stdout (ignored): %s",
                 (_printed(record.exc_info[1]),)) if batch is None else
                ("MCP server sent a JSON-RPC batch of %d messages (read one by one)", (batch,)))
            record.exc_info = record.exc_text = None
        elif record.exc_info and record.getMessage() in _HTTP_NOISE:
            # an HTTP server's answer that is not JSON-RPC: the request it answers fails
            # saying so (MCPServerError, "answered off-protocol"); the log needs one line
            record.msg, record.args = ("MCP server answered over HTTP with what is not "
                                       "JSON-RPC: %s"), (_printed(record.exc_info[1]),)
            record.exc_info = record.exc_text = None
        return True


def _printed(error: BaseException | None) -> str:
    """The line a parse error of the SDK quotes (pydantic's ``input``), cut."""
    errors = getattr(error, "errors", None)
    found = errors() if callable(errors) else None
    said = found[0].get("input") if isinstance(found, list) and found and isinstance(
        found[0], dict) else error
    if isinstance(said, bytes):  # the body of an HTTP answer
        said = said.decode("utf-8", "replace")
    return bounded_text(str(said), 200)


def _batch_size(error: BaseException | None) -> int | None:
    """How many messages the batch holds whose line the SDK refused (None: no batch)."""
    errors = getattr(error, "errors", None)
    found = errors() if callable(errors) else None
    said = found[0].get("input") if isinstance(found, list) and found and isinstance(
        found[0], dict) else None
    return len(said) if isinstance(said, list) else None


#: What the MCP SDK's HTTP client logs, with a traceback, of an answer that is not JSON-RPC.
_HTTP_NOISE = frozenset({"Error parsing SSE message", "Error parsing JSON response"})
#: The start of the error it answers the request with then (code -32700, a parse error).
_HTTP_UNREADABLE = ("Failed to parse SSE message: ", "Failed to parse JSON response: ")

logging.getLogger("mcp.client.stdio").addFilter(_OneLineNoise())
logging.getLogger("mcp.client.streamable_http").addFilter(_OneLineNoise())
