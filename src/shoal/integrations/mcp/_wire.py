"""The streams between a session and its transport: what they watch, note and salvage."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Self

import anyio
import mcp_types
import pydantic

from shoal.integrations.mcp._text import _reason_phrase

if TYPE_CHECKING:
    from shoal.integrations.mcp._server import MCPServer
    from shoal.integrations.mcp._session import _Session


class _Sent:
    """Whether a call's request was handed to its stdio transport (it may have reached it)."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


#: The call whose task writes: set around the making of its request's task, which copies it.
_SENDING: contextvars.ContextVar[_Sent | None] = contextvars.ContextVar(
    "shoal_mcp_sending", default=None)


@contextlib.asynccontextmanager
async def _watched(transport: Any, session: _Session) -> AsyncIterator[tuple[Any, Any]]:
    """A stdio transport whose output's end ends ``session``, and whose writes are marked.

    The session learns that the server's output ended as it happens, idle or not (the SDK
    only tells the requests waiting then): a call that comes later finds it closed before
    writing anything, and goes to a server started again. A request written is marked on its
    call (:data:`_SENDING`), so that a call whose request went out is never sent again.
    """
    async with transport as (read, write):
        probe = _Probe(write)
        yield _WatchedReader(read, session, probe), _WatchedWriter(write, session, probe)


#: Seconds the SDK's ``server/discover`` probe waits before the server is asked for a ping,
#: and then, once the ping is answered, for the probe's own answer (see :class:`_Probe`).
PROBE_WAIT = 1.0
PROBE_GRACE = 0.5
#: The id of that ping (the SDK numbers its requests 0, 1, 2 ...: no text id is its own).
PING_ID = "shoal-discover-ping"
_UNTIL_WRITTEN = 0.02  # seconds between the reader's looks until the SDK writes its first request


class _Probe:
    """The SDK's ``server/discover`` probe of a stdio session, while it waits for its answer.

    The SDK waits 10 s for it, and a server of the 2025 protocol that ignores requests it
    does not know never answers: each of its sessions started 10 s late. When the probe has
    waited :data:`PROBE_WAIT`, the server is sent a ``ping``; a server that answers it (or
    refuses it) is up, so the probe's answer, if it is still not there :data:`PROBE_GRACE`
    later, will not come: the probe is answered for it as a method the server does not know,
    and the SDK goes on with the ``initialize`` handshake at once. A server still starting
    (it answers neither yet) is waited for as the SDK waits. The ping's answer is the
    reader's alone.
    """

    __slots__ = ("deadline", "pending", "pinged", "writer", "written")

    def __init__(self, writer: Any) -> None:
        self.writer = writer  # the transport's own stream, for the ping
        self.pending: Any = None  # the probe's request id, while it waits
        self.pinged = False
        self.deadline: float | None = None  # when to answer the probe (the ping was answered)
        self.written = False  # whether the SDK wrote a request yet (the probe comes first)

    def sent(self, item: Any) -> None:
        """Note the probe's request as the SDK writes it."""
        message = getattr(item, "message", None)
        if isinstance(message, mcp_types.JSONRPCRequest):
            self.written = True
            if message.method == "server/discover":
                self.pending, self.pinged, self.deadline = message.id, False, None

    def wait(self) -> float | None:
        """How long the reader may wait for the next message before it acts (None: no limit)."""
        if not self.written:  # the reader waits before the probe is written: it looks again
            return _UNTIL_WRITTEN
        if self.pending is None or (self.pinged and self.deadline is None):
            return None
        if self.deadline is not None:
            return max(0.0, self.deadline - anyio.current_time())
        return PROBE_WAIT

    async def waited(self) -> Any:
        """The wait ran out: ping the server, or answer the probe (its stand-in answer)."""
        if not self.written or self.pending is None:
            return None
        if self.deadline is None:
            from mcp.shared.message import SessionMessage

            self.pinged = True
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.writer.send(SessionMessage(mcp_types.JSONRPCRequest(
                    jsonrpc="2.0", id=PING_ID, method="ping")))
            return None
        return self._unknown()

    def heard(self, message: Any) -> bool:
        """Note an answer the server sent; whether it is the ping's (not handed on)."""
        if not isinstance(message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            return False
        if message.id == PING_ID:
            if self.pending is not None:
                self.deadline = anyio.current_time() + PROBE_GRACE
            return True
        if self.pending is not None and message.id == self.pending:
            self.pending, self.deadline = None, None
        return False

    def _unknown(self) -> Any:
        from mcp.shared.message import SessionMessage

        request, self.pending, self.deadline = self.pending, None, None
        said = mcp_types.ErrorData(code=mcp_types.METHOD_NOT_FOUND, message=(
            "shoal: the server answered a ping but not server/discover: taken as unknown"))
        return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=request, error=said))


class _Watched:
    """One of a transport's streams, used through this wrapper, which tells ``session``."""

    def __init__(self, inner: Any, session: _Session) -> None:
        self._inner = inner
        self._session = session

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)

    async def aclose(self) -> None:
        """Close the stream."""
        await self._inner.aclose()


class _WatchedReader(_Watched):
    """The transport's read stream; its end (the server's stdout ended) ends the session."""

    def __init__(self, inner: Any, session: _Session, probe: _Probe | None = None) -> None:
        super().__init__(inner, session)
        self._batched: collections.deque[Any] = collections.deque()  # a batch's, not handed on
        self._probe = probe

    def __aiter__(self) -> _WatchedReader:
        return self

    async def __anext__(self) -> Any:
        item = self._batched.popleft() if self._batched else await self._next()
        if isinstance(item, Exception):  # a line the SDK could not read: dropped, unless ...
            self._batched.extend(salvaged(item))
            if not self._batched:
                return item
            item = self._batched.popleft()
        if isinstance(item.message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            self._session.answered(item.message)
        _heard(self._session, item.message)
        return item

    async def _next(self) -> Any:
        """The transport's next item, as :class:`_Probe` has it while the SDK's probe waits."""
        probe = self._probe
        while True:
            wait = None if probe is None else probe.wait()
            if wait is None:
                item = await self._received()
            else:
                item = None
                with anyio.move_on_after(wait):
                    item = await self._received()
                if item is None:
                    stand_in = await probe.waited()  # type: ignore[union-attr]
                    if stand_in is not None:
                        return stand_in
                    continue
            if probe is None or not probe.heard(getattr(item, "message", None)):
                return item
            # the ping's answer: the reader's alone

    async def _received(self) -> Any:
        """The transport's next item; its end ends the session."""
        try:
            return await self._inner.receive()
        except anyio.EndOfStream:
            self._session.output_ended()
            raise StopAsyncIteration from None
        except anyio.ClosedResourceError:
            self._session.output_ended()
            raise


def _heard(session: _Session, message: Any) -> None:
    """Tell ``session`` of a notification it acts on, as it arrives (before what follows it).

    Read here rather than by the SDK's notification handler, which runs in a task of its
    own: an answer that came after the notification could reach its call first.
    """
    if (isinstance(message, mcp_types.JSONRPCNotification)
            and message.method == "notifications/tools/list_changed"):
        session.tools_changed()


#: The ``data`` of the error that stands for an answer the MCP SDK could not read.
_UNREADABLE = "shoal: the server's answer could not be read"


#: The last line the SDK could not read, and what it stands for (see :func:`salvaged`).
_LAST_SALVAGED: list[Any] = [None, None]


def salvaged(error: BaseException | None, *, keep: bool = False) -> list[Any]:
    """What :func:`_salvaged` reads ``error`` as, read once for the log and the reader.

    The SDK logs a line it could not read as it reads it (the log's filter asks then, with
    ``keep``: see ``_logs``), then hands the error on; the reader asks next, and is handed
    what was read then.
    """
    last = _LAST_SALVAGED
    if last[0] is not None and last[0] is error:
        found: list[Any] = last[1]
        last[0] = last[1] = None
    else:
        found = _salvaged(error) if isinstance(error, Exception) else []
    if keep:
        last[0], last[1] = error, found
    return found


def _salvaged(error: Exception) -> list[Any]:
    """The messages a line the MCP SDK could not read stands for (none: it is dropped).

    The SDK reads one message a line, and drops any other line: the calls it answered
    waited for good, without a timeout. Python's parser reads the line again, and

    - a JSON-RPC batch (an array of messages, which MCP's 2025-03-26 revision allowed) is
      its messages, one by one;
    - a message holding a lone surrogate's escape (which JSON allows and the SDK's parser
      refuses) is read with each lone surrogate made U+FFFD, as bytes that are not UTF-8 are;
    - another answer the SDK refuses is an error answer to the request it names.

    A line Python cannot read either, nested too deeply, is an error answer to the request
    its outermost object names (read off the line without parsing what is nested), if any:
    that call waited until its timeout, or for good without one. Such a batch is its
    objects, each parsed alone, and each still too deep an error answer alike.
    """
    from shoal.integrations.mcp._transports import shallow_answer, shallow_batch

    errors = getattr(error, "errors", None)
    found = errors() if callable(errors) else None
    if not (isinstance(found, list) and found and isinstance(found[0], dict)):
        return []
    line, reason = found[0].get("input"), found[0].get("ctx", {}).get("error")
    try:  # a batch arrives parsed already (its items are what the SDK refused)
        message = json.loads(line) if isinstance(line, str) else line
    except json.JSONDecodeError:
        return []
    except (RecursionError, ValueError) as exc:  # JSON Python cannot read either (nested too
        # deeply, or an integer of more digits than it reads): read shallowly, its outermost
        # object or a batch's objects
        if isinstance(exc, RecursionError):
            reason = f"nested too deeply: {reason}"
        if not isinstance(line, str) or not line.lstrip().startswith("["):
            message = shallow_answer(line) if isinstance(line, str) else None
        else:
            read = [_error_answer(item, reason) if deep else _batched_message(item)
                    for item, deep in shallow_batch(line) or ()]
            return [m for m in read if m is not None]
    read = ([_batched_message(item) for item in message] if isinstance(message, list)
            else [_replaced(message) or _error_answer(message, reason)])
    return [m for m in read if m is not None]


#: A lone surrogate (JSON's escapes may write one; UTF-8, and the MCP SDK's parser, cannot).
_LONE = re.compile("[\ud800-\udfff]")


def _replaced(message: Any) -> Any:
    """``message`` read as the SDK reads a line, its lone surrogates made U+FFFD; else None.

    A tool's description (or any text) holding a lone surrogate's escape failed the whole
    answer, a listing of every tool; bytes that are not UTF-8 read as U+FFFD already. (A
    pair of escapes is one character once parsed: only lone ones are left to replace.)
    """
    from mcp.shared.message import SessionMessage

    try:
        text = json.dumps(message, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None
    if not _LONE.search(text):
        return None
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(
            _LONE.sub("\ufffd", text), by_name=False))
    except (ValueError, RecursionError):
        return None


def _batched_message(item: Any) -> Any:
    """One message of a batch, read as the SDK reads a line; else as :func:`_error_answer`."""
    from mcp.shared.message import SessionMessage

    try:  # as JSON again: the SDK's parser refuses what it refuses on a line of its own
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(
            json.dumps(item), by_name=False))
    except (ValueError, RecursionError) as exc:
        errors = exc.errors() if isinstance(exc, pydantic.ValidationError) else []
        return _replaced(item) or _error_answer(
            item, errors[0].get("ctx", {}).get("error") if errors else exc)


def _error_answer(message: Any, reason: Any) -> Any:
    """An error answer to the request ``message`` answers (None: it answers none).

    ``message``: parsed JSON the SDK refused; ``reason``: why.
    """
    from mcp.shared.message import SessionMessage

    if not (isinstance(message, dict) and ("result" in message or "error" in message)):
        return None
    request = message.get("id")
    if isinstance(request, bool) or not isinstance(request, int | str):
        return None
    said = mcp_types.ErrorData(code=mcp_types.INTERNAL_ERROR, data=_UNREADABLE,
                               message=f"its answer is JSON the MCP SDK cannot read ({reason})")
    return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=request, error=said))


class _NotingWriter(_Watched):
    """A transport's write stream that notes on its session each request it writes."""

    async def send(self, item: Any) -> None:
        """Note ``item`` if it is a request, and hand it to the transport."""
        self._note(item)
        await self._inner.send(item)

    def _note(self, item: Any) -> None:
        """Note a request's id before it is written (its answer may come at once).

        Over HTTP, a cancel to be posted is noted too (see :attr:`_Session.cancels`).
        """
        message = getattr(item, "message", None)
        if (isinstance(message, mcp_types.JSONRPCNotification)
                and message.method == "notifications/cancelled"
                and self._session.server.url is not None and not self._session.modern):
            self._session.cancels.add()  # (a modern revision posts none: it closes the POST)
        if isinstance(message, mcp_types.JSONRPCRequest):
            if isinstance(message.id, int):
                self._session.top_request = max(self._session.top_request, message.id)
            else:
                self._session.named_requests.add(message.id)

    def close(self) -> None:
        """Close the stream at once."""
        self._inner.close()


class _WatchedWriter(_NotingWriter):
    """A stdio transport's write stream: refuses a request once the output ended, marks one."""

    def __init__(self, inner: Any, session: _Session, probe: _Probe | None = None) -> None:
        super().__init__(inner, session)
        self._probe = probe

    async def send(self, item: Any) -> None:
        """Hand ``item`` to the transport, unless the server's output has ended."""
        if self._session.dead:  # nothing written: the SDK says the connection closed
            raise anyio.ClosedResourceError
        self._note(item)
        if self._probe is not None:
            self._probe.sent(item)
        sending = _SENDING.get()
        if sending is None or getattr(getattr(item, "message", None), "method", None) != (
                "tools/call"):  # not a call's request (a handshake, a cancel notice ...)
            await self._inner.send(item)
            return
        sending.written = True  # from here on it may reach the server
        try:
            await self._inner.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            sending.written = False  # refused before the transport took it (anyio's streams)
            raise


#: The ``data`` of the error that stands for an HTTP status a request was answered with.
_HTTP_FAILED = "shoal: the server answered with an HTTP error status"
#: The MCP SDK's stand-in for such an answer, which names no status (code -32603).
_HTTP_STAND_IN = "Server returned an error response"


@contextlib.asynccontextmanager
async def _http_statuses(srv: MCPServer, session: _Session) -> AsyncIterator[tuple[Any, Any]]:
    """An HTTP transport whose answers to a failed request name its HTTP status.

    The MCP SDK answers a request whose POST got an error status (other than 404) with its
    stand-in, "Server returned an error response": the status was lost, and the error, an
    ``MCPError``, read as the tool refusing the call. Each status is noted by request id as it
    comes, and the stand-in for that request is replaced by one that names it.
    """
    http_client = srv._http_client()

    async def noted(response: Any) -> None:
        if response.status_code < 400 or response.request.method != "POST":
            return
        try:
            sent = json.loads(response.request.content)
        except (ValueError, RecursionError):
            return
        request = sent.get("id") if isinstance(sent, dict) else None
        if isinstance(request, int | str) and not isinstance(request, bool):
            session.http_failed[request] = (response.status_code,
                                            _reason_phrase(response.reason_phrase))

    http_client.event_hooks["response"].append(noted)
    http_client.cancel_posted = session.cancels.done
    async with http_client, srv._http_transport(http_client) as (read, write):
        yield _StatusReader(read, session), _NotingWriter(write, session)


class _StatusReader(_Watched):
    """An HTTP transport's read stream: the SDK's stand-in for a status is made to name it."""

    def __aiter__(self) -> _StatusReader:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._inner.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        message = getattr(item, "message", None)
        if isinstance(message, mcp_types.JSONRPCResponse):
            self._session.answered(message)
        _heard(self._session, message)
        if not isinstance(message, mcp_types.JSONRPCError):
            return item
        self._session.answered(message)
        status = self._session.http_failed.pop(message.id, None)
        if (status is None or message.error.message != _HTTP_STAND_IN
                or message.error.data is not None):
            return item
        code, phrase = status
        said = mcp_types.ErrorData(code=message.error.code, data=_HTTP_FAILED,
                                   message=f"HTTP {code}" + (f" ({phrase})" if phrase else ""))
        from mcp.shared.message import SessionMessage

        return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=message.id, error=said))
