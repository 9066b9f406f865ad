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
hands a JSON batch on as an event stream, and rewrites an event stream as it comes so that an
event holding a batch is one event a message (an event that is no batch is not held back).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.lowlevel
import httpx2  # the MCP SDK's HTTP client

from shoal.integrations.mcp._wire import _LONE

if TYPE_CHECKING:
    from mcp import StdioServerParameters

log = logging.getLogger("mcp.client.stdio")  # the SDK's: what filters its noise filters ours
http_log = logging.getLogger("mcp.client.streamable_http")


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
    from mcp.shared._httpx_utils import MCP_DEFAULT_TIMEOUT

    return _UnbatchingClient(
        # no bound on the wait for a free connection (the SDK's: 30 s): with 100 calls
        # running, the next ones wait their turn (bounded by their own timeouts); none on the
        # wait for an answer's next byte either (see HTTP_READ_TIMEOUT)
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=HTTP_READ_TIMEOUT, pool=None),
        headers=headers)


#: How long an HTTP answer may send no byte: no limit. The MCP SDK's 300 s
#: (``MCP_DEFAULT_SSE_READ_TIMEOUT``) failed any call of a tool that works longer than that
#: without a word ("ReadTimeout"), whatever its timeout said. A call is bounded by its tool's
#: timeout (a call that times out is cancelled on the server), the handshake and a listing
#: by the server's ``connect_timeout``, a close by its own bound.
HTTP_READ_TIMEOUT: float | None = None


class _UnbatchingClient(httpx2.AsyncClient):
    """An HTTP client each of whose transports, a proxy's too, is :class:`_Unbatching`.

    Given a transport (``transport=``), httpx uses no proxy of the environment: the MCP
    server was reached straight, past the ``HTTPS_PROXY`` or ``HTTP_PROXY`` that the SDK's own
    client goes through (a server behind the proxy could not be reached at all). Built as
    httpx builds its own, the environment's proxies (and ``NO_PROXY``) hold, and each
    transport it makes is wrapped.
    """

    #: Called when the POST of a ``notifications/cancelled`` has been answered (or failed).
    cancel_posted: Callable[[], None] | None = None

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        """Send ``request`` (as httpx does), telling :attr:`cancel_posted` of a cancel's end."""
        try:
            return await super().send(request, **kwargs)
        finally:
            if self.cancel_posted is not None and _is_cancel(request):
                self.cancel_posted()

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _Unbatching(super()._init_transport(*args, **kwargs))

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _Unbatching(super()._init_proxy_transport(*args, **kwargs))


class _Unbatching(httpx2.AsyncBaseTransport):
    """An HTTP transport that unpacks batches, and fails a request alone when its POST fails.

    A JSON answer holding a batch is handed on as an event stream, an event stream is read
    through :class:`EventRewriter`; see :meth:`handle_async_request` for failures.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """The answer to ``request``: a JSON batch made an event stream, all else as it came.

        A request's POST that fails (its connection reset, no answer within the read
        timeout ...) is answered with a JSON-RPC error (:data:`REQUEST_FAILED`): raised, it
        ended the MCP SDK's transport, and every other call on the session failed with it
        ("Connection closed"). A notification's POST that fails is logged and taken as
        accepted, for the same reason.
        """
        try:
            return await self._answer(request)
        except httpx2.TransportError as exc:
            if request.method != "POST":  # the GET stream, the closing DELETE: the SDK's
                raise
            request_id = _request_id(request)
            if request_id is None:  # a notification (a cancel, say): lost, and said so
                http_log.warning("Could not post a notification to the MCP server at %s (it "
                                 "is lost): %s: %s", request.url, type(exc).__name__, exc)
                return httpx2.Response(202)
            return _failed(request_id, exc)

    async def _answer(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        kind = response.headers.get("content-type", "").lower()
        if response.status_code >= 400:
            return response
        if kind.startswith("text/event-stream"):  # a POST's answer, or the GET stream
            return _rewritten(response, _request_id(request))
        if request.method != "POST" or not kind.startswith("application/json"):
            return response
        try:
            body = await response.aread()  # read whole by the SDK anyway
        finally:
            await response.aclose()
        return _unbatched(response, body, _request_id(request))

    async def aclose(self) -> None:
        """Close the transport."""
        await self._inner.aclose()


#: The ``data`` of the error that stands for a request whose HTTP exchange failed.
REQUEST_FAILED = "shoal: the HTTP request failed"


def _failed(request: Any, exc: httpx2.TransportError) -> httpx2.Response:
    """A JSON answer failing the request ``request`` because ``exc`` ended its exchange."""
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx2.ReadTimeout):
        said += " (no byte of the answer came within the HTTP read timeout)"
    error = {"code": -32603, "message": said, "data": REQUEST_FAILED}
    return httpx2.Response(200, headers=[("content-type", "application/json")],
                           content=json.dumps({"jsonrpc": "2.0", "id": request, "error": error}))


def _is_cancel(request: httpx2.Request) -> bool:
    """Whether ``request`` posts a ``notifications/cancelled``."""
    if request.method != "POST" or b"notifications/cancelled" not in request.content:
        return False
    try:
        sent = json.loads(request.content)
    except (ValueError, RecursionError):
        return False
    return isinstance(sent, dict) and sent.get("method") == "notifications/cancelled"


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
    body = _surrogates_replaced(body)
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


#: A JSON escape of a surrogate (maybe a lone one: see :func:`_surrogates_replaced`).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _surrogates_replaced(body: bytes) -> bytes:
    """``body``, a JSON answer, with each lone surrogate's escape read as U+FFFD.

    JSON allows one, the MCP SDK's parser refuses the whole answer (a listing of every tool,
    for one description holding it); on stdio it reads as U+FFFD (see ``_wire._replaced``).
    """
    if not _SURROGATE_ESCAPE.search(body):
        return body
    try:
        text = json.dumps(json.loads(body), ensure_ascii=False)
    except (ValueError, RecursionError):
        return body
    return _LONE.sub("\ufffd", text).encode() if _LONE.search(text) else body


#: A JSON body that is an array: only its leading whitespace is looked at, not a copy made.
_ARRAY_START = re.compile(rb"[ \t\r\n]*\[")


def _batch(body: bytes, request: Any) -> list[Any] | None:
    """The messages of ``body`` if it is a JSON-RPC batch (an array of objects), else None.

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
    if not (isinstance(messages, list) and messages
            and all(isinstance(m, dict) for m in messages)):
        return None  # no JSON-RPC batch (which holds objects): it fails as it is
    answers = [m for m in messages if "result" in m or "error" in m]
    if any(m.get("id") != request for m in answers):
        return None
    # the answers last: the SDK stops reading a request's stream at its answer, and a
    # notification after it in the batch was dropped (a batch's order carries no meaning)
    return [m for m in messages if not any(m is a for a in answers)] + answers


#: The most bytes of one event of an HTTP server's event stream. The MCP SDK's own limit, 1 MiB,
#: failed a tool's answer of 2 MB sent as an event (and, unpacked, as a JSON batch), which as a
#: JSON answer or on stdio reads whole; this one only bounds what a hostile server makes held.
#: An event that may be a batch is held back up to this size too; a larger one passes as it came.
MAX_EVENT_BYTES = 128 * 1024 * 1024


def _rewritten(response: httpx2.Response, request: Any) -> httpx2.Response:
    """``response``, an event stream, read through :class:`EventRewriter` as it comes."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-length", "content-encoding")]
    return httpx2.Response(response.status_code, extensions=response.extensions,
                           headers=headers, stream=_RewrittenStream(response, request))


class _RewrittenStream(httpx2.AsyncByteStream):
    """The (decoded) body of an event stream, each event that is a batch made its messages."""

    def __init__(self, response: httpx2.Response, request: Any) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The stream's bytes, rewritten, as they come."""
        rewriter = EventRewriter(self._request)
        async for chunk in self._response.aiter_bytes():
            out = rewriter.feed(chunk)
            if out:
                yield out
        out = rewriter.end()
        if out:
            yield out

    async def aclose(self) -> None:
        """Close the stream (the connection under it)."""
        await self._response.aclose()


class EventRewriter:
    """An event stream's bytes in, the same out but for events holding a JSON-RPC batch.

    Such an event is one event a message (answers last; see :func:`_batch`): the MCP SDK
    reads one message an event and failed a batch as a parse error. An event is held back only
    while it may still be a batch: until its first data shows it is not (it starts with no
    ``[``), or it grows past :data:`MAX_EVENT_BYTES`; then it passes on as it comes. Lines end
    in a newline on the way out, whatever ended them (CR LF, CR or LF, as SSE allows).
    """

    def __init__(self, request: Any) -> None:
        self._request = request  # the id of the request the stream answers (None: the GET)
        self._pieces: list[bytes] = []  # the line not ended yet
        self._held: list[bytes] = []  # the lines of the event that may be a batch
        self._size = 0
        self._array = False  # the event's data starts with "[": it may be a batch
        self._passing = False  # the event is no batch (or too big): its lines pass on
        self._cr = False  # the last chunk ended in CR: a LF starting the next ends no line

    def feed(self, chunk: bytes) -> bytes:
        """What to hand on now of the stream, given its next ``chunk``."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return b"".join(self._line(line) for line in split_lines(self._pieces, chunk))

    def end(self) -> bytes:
        """What is left to hand on when the stream ends (an event never ended: as it came)."""
        rest = b"".join(line + b"\n" for line in self._held) + b"".join(self._pieces)
        self._held, self._pieces = [], []
        return rest

    def _line(self, line: bytes) -> bytes:
        if self._passing:
            self._passing = bool(line)  # a blank line ends the event
            return line + b"\n"
        if not line:
            return self._event()
        self._held.append(line)
        self._size += len(line)
        field, _, value = line.partition(b":")
        value = value.strip()
        if field == b"data" and value and not self._array:  # its data's first character
            self._array = value.startswith(b"[")
            if not self._array:
                return self._pass()
        if self._size > MAX_EVENT_BYTES or (field == b"event" and value != b"message"):
            return self._pass()
        return b""

    def _pass(self) -> bytes:
        """Hand on the event held back, and the rest of it as it comes: it is no batch."""
        self._passing = True
        return self._release()

    def _release(self) -> bytes:
        """The lines held back, as they came."""
        out = b"".join(line + b"\n" for line in self._held)
        self._held, self._size, self._array = [], 0, False
        return out

    def _event(self) -> bytes:
        """The event held back, which its blank line ended: its messages if it is a batch."""
        data, kept = [], []
        for line in self._held:
            field, _, value = line.partition(b":")
            if field == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
            elif field in (b"id", b"retry"):
                kept.append(line)
        messages = _batch(b"\n".join(data), self._request) if data else None
        if messages is None:
            return self._release() + b"\n"
        self._held, self._size, self._array = [], 0, False
        # the event's id (and retry) go with its last message: the batch is read by then
        events = [b"event: message\ndata: " + json.dumps(m).encode() + b"\n" for m in messages]
        events[-1] += b"".join(line + b"\n" for line in kept)
        return b"\n".join(events) + b"\n"


#: A JSON string, or a bracket: what :func:`shallow_answer` reads a line as.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')
#: An answer's id (a number or a string) after its key's colon.
_ID_VALUE = re.compile(r'\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")\s*[,}]')
#: The most tokens :func:`shallow_answer` reads of a line before it gives up.
MAX_SHALLOW_TOKENS = 2_000_000


def shallow_message(line: str) -> dict[str, Any] | None:
    """The outermost object of ``line``: its keys (each value None) and its id, else None.

    For a line too deeply nested to parse: only its outermost object's keys are read (the
    strings and brackets in between are counted, not parsed). None when the line is no
    object or is too long to read so; ``id`` is None when it names none (a number or string).
    """
    depth, keys, found = 0, set(), None
    for count, token in enumerate(_TOKENS.finditer(line)):
        text = token.group()
        if count > MAX_SHALLOW_TOKENS or (depth == 0 and text != "{"):
            return None
        if text in "{[":
            depth += 1
        elif text in "}]":
            depth -= 1
        elif depth == 1:  # a string in the outermost object: a key if a colon follows
            key = line[token.end():token.end() + 64].lstrip()
            if not key.startswith(":"):
                continue
            keys.add(text)
            value = _ID_VALUE.match(line, token.end()) if text == '"id"' else None
            if value is not None:
                with contextlib.suppress(ValueError):  # a number too long: it names none
                    found = json.loads(value.group(1))
        if depth == 0:
            break
    return {**{json.loads(key): None for key in keys}, "id": found}


def shallow_batch(line: str) -> list[tuple[Any, bool]] | None:
    """The messages of the JSON-RPC batch ``line``, too deeply nested to parse whole, else None.

    Each of its objects is parsed alone, as ``(message, False)``; one still too deeply nested
    is read as :func:`shallow_answer` reads a line, as ``(answer or None, True)``; what is no
    object is passed over. None when ``line`` is no array, holds an array, or is too long to
    read so.
    """
    depth, start = 0, 0
    found: list[tuple[Any, bool]] = []
    for count, token in enumerate(_TOKENS.finditer(line)):
        text = token.group()
        if count > MAX_SHALLOW_TOKENS or (depth == 0 and text != "[") or (
                depth == 1 and text not in "{]"):
            return None
        if text in "{[":
            depth += 1
            start = token.start() if depth == 2 else start
        elif text in "}]":
            depth -= 1
            if depth == 1:  # an item ends: read alone
                item = line[start:token.end()]
                try:
                    found.append((json.loads(item), False))
                except json.JSONDecodeError:
                    return None
                except (RecursionError, ValueError):  # too deep, or a number too long
                    found.append((shallow_answer(item), True))
        if depth == 0:
            return found
    return None


def shallow_answer(line: str) -> dict[str, Any] | None:
    """The id of the answer ``line`` holds, as ``{"id": ..., "result": None}``, else None.

    Read as :func:`shallow_message` reads it; None when it has no ``result`` or ``error`` key,
    or names no id.
    """
    found = shallow_message(line)
    if found is None or found["id"] is None or not {"result", "error"} & found.keys():
        return None
    return {"id": found["id"], "result": None}
