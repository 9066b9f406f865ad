"""Shoal's MCP transports: stdio read in linear time, and HTTP whose batches are unpacked.

Shoal writes this rather than use the MCP SDK's ``stdio_client`` because that reader joins
what it holds of a line with each chunk the pipe gives (64 KiB) and splits the whole again:
an answer of n bytes costs time in proportion to n squared (25 MB took half a minute, and
more on a loaded machine; 10 MB a second). This one keeps a line's chunks in a list, finds
line breaks in each new chunk only, and joins and decodes a line once, when it is whole.

Everything else is the SDK's, reused as is: how the server is started (its environment, its
own process group), how a message is parsed (parse errors handed on as values, logged on
``mcp.client.stdio``), the drain of stdout at the end, and the shutdown (stdin closed, a grace
period, then the process tree killed), so the two behave alike but for speed. The SDK's
helpers are private: an SDK that lacks them gets its own ``stdio_client``.

Over HTTP, the SDK's transport is used with an HTTP client (:func:`unbatching_client`) that
hands a JSON batch on as an event stream. Not yet: a batch inside an event stream's event
(the SDK fails it as a parse error too); unpacking it means rewriting the stream as it comes,
event by event, without holding back the events that are no batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.lowlevel
import httpx2  # the MCP SDK's HTTP client

if TYPE_CHECKING:
    from mcp import StdioServerParameters

log = logging.getLogger("mcp.client.stdio")  # the SDK's: what filters its noise filters ours


#: The SDK's private helpers this transport reuses.
_HELPERS = ("_get_executable_command", "_create_platform_compatible_process", "_drain_stdout",
            "_stop_server_process", "_aclose_all", "_parse_line", "_WRITER_FLUSH_TIMEOUT",
            "get_default_environment")


def stdio_transport(server: StdioServerParameters, errlog: TextIO) -> Any:
    """The transport to the stdio server ``server`` (its stderr to ``errlog``).

    Streams as the SDK's ``stdio_client`` gives, read in linear time; the SDK's own where
    its private helpers are not there to reuse.
    """
    from mcp.client import stdio as sdk

    if not all(hasattr(sdk, name) for name in _HELPERS):
        return sdk.stdio_client(server, errlog=errlog)
    return _transport(server, errlog)


def split_lines(pieces: list[bytes], chunk: bytes) -> list[bytes]:
    """The lines ``chunk`` ends (without their line break); ``pieces`` keeps the line unended.

    Only ``chunk`` is searched, and a line is joined once: linear in the bytes read. A line
    break is byte 10 in UTF-8 and in no other character's bytes, so a line decodes alone.
    """
    end = chunk.find(b"\n")
    if end < 0:
        if chunk:
            pieces.append(chunk)
        return []
    lines = chunk[end + 1:].split(b"\n")
    lines[0:0] = [b"".join([*pieces, chunk[:end]])]
    last = lines.pop()
    pieces[:] = [last] if last else []
    return lines


@contextlib.asynccontextmanager
async def _transport(server: StdioServerParameters, errlog: TextIO) -> AsyncIterator[Any]:
    """The SDK's ``stdio_client``, but for the reader of the server's stdout."""
    from mcp.client import stdio as sdk
    from mcp.shared.message import SessionMessage

    command = await sdk._get_executable_command(server.command)
    process = await sdk._create_platform_compatible_process(
        command=command, args=server.args, env=sdk.get_default_environment() | (server.env or {}),
        errlog=errlog, cwd=server.cwd)
    # no awaits from the spawn to the task group: a cancel there would leak the process
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    state = {"shutting_down": False}
    writer_done = anyio.Event()

    async def stdout_reader() -> None:
        try:
            async with read_writer:
                try:
                    await _read_lines(process, server, read_writer)
                finally:
                    await sdk._drain_stdout(process)
        except anyio.ClosedResourceError:
            pass  # our own shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not state["shutting_down"]:  # noise in shutdown, a real failure otherwise
                log.exception("Reading from the MCP server's stdout failed mid-session")

    async def stdin_writer() -> None:
        assert process.stdin, "the server is spawned with pipes"
        try:
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((data + "\n").encode(
                        server.encoding, errors=server.encoding_error_handler))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # the server may live on: end the reads, or a request would wait for good
            await read_writer.aclose()
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()  # into the drain: a server blocked writing cannot read stdin
        write_stream.close()
        with anyio.move_on_after(sdk._WRITER_FLUSH_TIMEOUT):
            await writer_done.wait()
        await sdk._stop_server_process(process)
        await sdk._aclose_all(read_stream, write_stream, read_writer, write_reader)
        await anyio.lowlevel.checkpoint()  # the unblocked tasks leave by their except paths

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stdout_reader)
        tasks.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            state["shutting_down"] = True
            with anyio.CancelScope(shield=True):  # a cancelled caller must not leak the server
                await shutdown()
            tasks.cancel_scope.cancel()  # a kill survivor's open pipe could block the tasks
    await anyio.lowlevel.cancel_shielded_checkpoint()


async def _read_lines(process: Any, server: StdioServerParameters, out: Any) -> None:
    """Hand each whole line of the server's stdout to ``out``, parsed, one at a time.

    No read ahead while a line waits to be taken; a last line without its line break is dropped,
    as the SDK drops it.
    """
    from mcp.client import stdio as sdk

    assert process.stdout, "the server is spawned with pipes"
    pieces: list[bytes] = []
    while True:
        try:
            chunk = await process.stdout.receive()
        except anyio.EndOfStream:
            return
        for line in split_lines(pieces, chunk):
            text = line.decode(server.encoding, errors=server.encoding_error_handler)
            try:
                await out.send(sdk._parse_line(text))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the session is gone; only the drain remains


def unbatching_client(headers: dict[str, str] | None) -> Any:
    """An HTTP client as the MCP SDK makes one (its timeouts, no redirects), batches unpacked.

    A JSON-RPC batch (an array, which MCP's 2025-03-26 revision allowed) in a JSON answer
    to a POST failed its call as a parse error: the SDK reads one message a body, and hands
    on only its parse error, not the body. Such a body is handed to the SDK as the event
    stream it may also answer with, one event a message, which the SDK reads one by one.
    """
    from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        headers=headers, transport=_Unbatching(httpx2.AsyncHTTPTransport()))


class _Unbatching(httpx2.AsyncBaseTransport):
    """An HTTP transport that hands a JSON answer holding a batch on as an event stream."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """The answer to ``request``: a JSON batch made an event stream, all else as it came."""
        response = await self._inner.handle_async_request(request)
        kind = response.headers.get("content-type", "").lower()
        if (request.method != "POST" or response.status_code >= 400
                or not kind.startswith("application/json")):
            return response
        try:
            body = await response.aread()  # read whole by the SDK anyway
        finally:
            await response.aclose()
        return _unbatched(response, body, _request_id(request))

    async def aclose(self) -> None:
        """Close the transport."""
        await self._inner.aclose()


def _request_id(request: httpx2.Request) -> Any:
    """The id of the JSON-RPC request ``request`` posts (None: it names none)."""
    try:
        sent = json.loads(request.content)
    except (ValueError, RecursionError):
        return None
    return sent.get("id") if isinstance(sent, dict) else None


def _unbatched(response: httpx2.Response, body: bytes, request: Any) -> httpx2.Response:
    """``response`` with its (decoded) ``body``: a batch as an event stream, one event each.

    ``request``: the id of the request answered.
    """
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-length", "content-encoding", "content-type")]
    messages = _batch(body, request)
    if messages is None:
        return httpx2.Response(response.status_code, extensions=response.extensions,
                               headers=[*headers, ("content-type", "application/json")],
                               content=body)
    events = b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n"
                      for m in messages)
    return httpx2.Response(response.status_code, extensions=response.extensions,
                           headers=[*headers, ("content-type", "text/event-stream")],
                           content=events)


#: A JSON body that is an array: only its leading whitespace is looked at, not a copy made.
_ARRAY_START = re.compile(rb"[ \t\r\n]*\[")


def _batch(body: bytes, request: Any) -> list[Any] | None:
    """The messages of ``body`` if it is a JSON-RPC batch (a non-empty array), else None.

    None too if an answer in it names another request than ``request``: the SDK gives an
    event stream's answer the id of the request posted, so such an answer would reach that
    call unseen; left a batch, it fails the call as off-protocol.
    """
    if not _ARRAY_START.match(body):  # a single message: not parsed here, the SDK parses it
        return None
    try:
        messages = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(messages, list) and messages):
        return None
    answers = [m for m in messages if isinstance(m, dict) and ("result" in m or "error" in m)]
    if any(m.get("id") != request for m in answers):
        return None
    return messages
