"""The transports of :func:`serve`: stdio (answering unreadable requests) and HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any, Self

import anyio
import mcp_types

from shoal.exceptions import ConfigError


async def _serve_stdio(srv: Any, ready: Callable[[], None] | None) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        if ready is not None:
            ready()
        await srv.run(_AnsweringReader(read, write), write, srv.create_initialization_options())


class _AnsweringReader:
    """A served stdio session's read stream: a request the SDK cannot read gets an error.

    The MCP SDK drops a line it cannot read (a lone surrogate's escape, which JSON allows;
    nesting too deep), and the client's call waited for good; a request such a line names is
    answered with a JSON-RPC error (invalid request) saying why.
    """

    def __init__(self, read: Any, write: Any) -> None:
        self._read = read
        self._write = write

    async def __aenter__(self) -> Self:
        await self._read.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._read.__aexit__(*exc)

    def __aiter__(self) -> _AnsweringReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> Any:
        """The next message (or a line the SDK could not read, which names no request)."""
        while True:
            item = await self._read.receive()
            refused = _refused_request(item) if isinstance(item, Exception) else None
            if refused is None:
                return item
            await self._write.send(refused)

    async def aclose(self) -> None:
        """Close the stream."""
        await self._read.aclose()


def _refused_request(error: Exception) -> Any:
    """An error answer to the request a line the SDK could not read names (None: none)."""
    from mcp.shared.message import SessionMessage

    from shoal.integrations.mcp._transports import shallow_message

    errors = getattr(error, "errors", None)
    found = errors() if callable(errors) else None
    if not (isinstance(found, list) and found and isinstance(found[0], dict)):
        return None
    line, reason = found[0].get("input"), found[0].get("ctx", {}).get("error")
    if not isinstance(line, str):
        return None
    try:
        message = json.loads(line)
    except RecursionError:
        message, reason = shallow_message(line), f"nested too deeply: {reason}"
    except json.JSONDecodeError:  # no JSON: no request to name
        return None
    except ValueError:  # JSON all the same: an integer of more digits than Python reads
        message = shallow_message(line)
    if not (isinstance(message, dict) and "method" in message):  # a request: it has one
        return None
    request = message.get("id")
    if isinstance(request, bool) or not isinstance(request, int | str):
        return None  # a notification, or no id an answer can name
    said = mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST,
                               message=f"the request could not be read ({reason})")
    return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=request, error=said))


async def _serve_http(srv: Any, host: str, port: int, ready: Callable[[], None] | None) -> None:
    import uvicorn

    app = srv.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    # bound here, not by uvicorn: it answers a taken port or a bad host with sys.exit(), which
    # escapes the event loop as a traceback and exit code 3
    task = asyncio.create_task(web.serve(sockets=[_listening(host, port)]))
    # uvicorn offers no event for "listening": its flag is polled (for a moment, once)
    while not web.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if web.started and ready is not None:
        ready()
    await task
    if not web.started:
        raise ConfigError(f"cannot serve on http://{host}:{port}/mcp (is the port taken?)")


def _listening(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the HTTP server, or a :class:`ConfigError` why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot serve on http://{host}:{port}/mcp: {exc.strerror or exc}"
                          ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve on http://{host}:{port}/mcp: {exc.strerror or exc}"
                          ) from None
    return sock
