"""One session with an MCP server: its start, listings, calls and end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO, cast

import mcp_types
import pydantic
from mcp import Client
from mcp.shared.exceptions import MCPError

from shoal.exceptions import (
    MCPServerError,
    MCPToolError,
    bounded_text,
    describe_exception,
    exception_message,
)
from shoal.integrations.mcp._checks import _checker_of, _refit
from shoal.integrations.mcp._errors import (
    _CLOSED_UNDER,
    _STDOUT_ENDED,
    _cause,
    _connection_closed,
    _NotSent,
    _session_terminated,
    _stream_failed,
)
from shoal.integrations.mcp._limits import (
    CANCEL_POST_WAIT,
    CLOSE_TIMEOUT,
    MAX_PAGES,
    MAX_RELISTINGS,
    STDERR_TAIL,
)
from shoal.integrations.mcp._logs import _HTTP_UNREADABLE
from shoal.integrations.mcp._text import (
    _names_said,
    _own_name,
    _reason_phrase,
    _server_words,
)
from shoal.integrations.mcp._transports import REQUEST_FAILED
from shoal.integrations.mcp._wire import _HTTP_FAILED, _SENDING, _UNREADABLE, _Sent

if TYPE_CHECKING:
    from shoal.integrations.mcp._server import MCPServer


class _Session:
    """One session with a server, owned by a task of its own.

    The SDK's transports live in anyio task groups, which must be left by the task that
    entered them; calls come from many tasks (each call of a run runs in its own), and the
    session must outlive the call that happened to open it. The owning task waits until
    :meth:`close`; calls send their requests through the client from wherever they run.
    """

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._dead: asyncio.Future[str] | None = None  # its result: why the session ended
        self._stop = asyncio.Event()
        self._errlog: TextIO | None = None
        # the listing of its tools made once it started (see open()), and anew each time the
        # server says its tools changed (``_again``: once more, it said so while listing)
        self._listing: asyncio.Future[list[mcp_types.Tool]] | None = None
        self._again = False
        self.tool_names: frozenset[str] | None = None  # what the last listing found
        self.input_schemas: dict[str, Any] = {}  # and each tool's input schema in it
        self._checkers: dict[str, tuple[Any, Any, Any]] = {}  # see _checker()
        self.terminated = False  # an HTTP server ended it, unread request and all (404)
        # the HTTP status (and its phrase) each request the server failed got, by request id
        self.http_failed: dict[Any, tuple[int, str]] = {}
        # the requests written to the server: the highest id (the SDK numbers them 1, 2 ...)
        # and any id that is no number
        self.top_request = 0
        self.named_requests: set[str] = set()
        # notifications/cancelled handed to an HTTP transport and not yet posted: a close waits
        # (boundedly) for them, or the server never learnt its work was no longer wanted
        self.cancels = _Pending()

    @property
    def modern(self) -> bool:
        """Whether the session speaks a revision of MCP that cancels by closing a request."""
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        client = self._client
        return client is not None and client.session.protocol_version in (
            MODERN_PROTOCOL_VERSIONS)

    @property
    def dead(self) -> bool:
        """Whether the session has ended (the server died, or it was closed)."""
        return self._dead is not None and self._dead.done()

    async def open(self) -> Client:
        """Start the session and list its tools (once; concurrent callers wait for the same).

        The tools are listed before any call is sent: the MCP SDK lists them itself after a
        call's answer came (to check it against the tool's output schema) when it has no
        listing, so that a listing that failed failed a call that had run ("refused"), and
        one that never answered kept its answer from it.
        """
        client = await self._connect()
        if self._listing is None:
            self._listing = asyncio.ensure_future(self._relisting(client))
            self._listing.add_done_callback(_retrieve)
        # shielded: one caller's cancellation must not cancel the listing for the others
        await asyncio.shield(self._listing)
        return client

    async def _connect(self) -> Client:
        """Start the session (once; concurrent callers wait for the same start)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            from shoal.testing.clock import VirtualClockLoop

            if isinstance(loop, VirtualClockLoop):  # it jumped past connect_timeout at once
                raise MCPServerError(self.server.described, (
                    "cannot be reached on shoal.testing's virtual clock: an MCP server answers "
                    "in real time, which that clock does not wait for; call MCP tools on a "
                    "real event loop (asyncio.run)"))
            self._ready, self._dead = loop.create_future(), loop.create_future()
            self._task = loop.create_task(self._own(), name=f"shoal.mcp {self.server.label}")
        assert self._ready is not None and self._dead is not None
        try:
            async with asyncio.timeout(self.server.connect_timeout):
                # shielded: one caller's cancellation must not cancel the start for the others
                await asyncio.shield(self._ready)
        except TimeoutError:
            self._end(f"did not start and answer the MCP handshake within "
                      f"{self.server.connect_timeout:g} s")
            self._task.cancel()  # still starting: stop that (its cleanup kills the process)
        if self._client is None or self.dead:
            raise self._error()
        return self._client

    async def _own(self) -> None:
        """The session's life: connect, hold the connection until told to stop, close."""
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
            self._errlog = cast(TextIO, errlog)
            cause = "the session was closed"
            try:
                async with self.server._client(self._errlog, self) as client:
                    own = _own_name(client.server_info.name) if client.server_info else ""
                    if not self.server.name and own:
                        self.server._label = own
                    self._client = client
                    assert self._ready is not None
                    if not self._ready.done():
                        self._ready.set_result(None)
                    await self._stop.wait()
            except asyncio.CancelledError:
                cause = "the session was cancelled"
                raise
            except BaseException as exc:  # whatever ended it is the cause to report
                cause = _cause(exc, self._client is None, self.server)
            finally:
                self._end(cause)

    def tools_changed(self) -> None:
        """The server said its tools changed: list them anew before the next call is sent.

        The first listing was kept for good: a tool it removed was still called (and a server
        need not answer a call of a tool it no longer has), and the MCP SDK checked each result
        against the output schema listed first, failing a call whose tool had changed it.
        """
        listing, client = self._listing, self._client
        if listing is None or client is None or self.dead:  # the first listing is to come
            return
        if not listing.done():  # it may have been read before the change: once more
            self._again = True
            return
        self._listing = asyncio.ensure_future(self._relisting(client))
        self._listing.add_done_callback(_retrieve)

    async def _relisting(self, client: Client) -> list[mcp_types.Tool]:
        """List the tools, again while the server says they changed meanwhile.

        At most :data:`MAX_RELISTINGS` times in a row: a server that says so each time it
        lists them was listed for good, and every call waited for that to end.
        """
        for _ in range(MAX_RELISTINGS):
            self._again = False
            found = await self._list_all(client)
            if not self._again:
                break
        return found

    def output_ended(self) -> None:
        """The server's output ended (it exited, or closed its stdout): the session is over.

        Not while it starts (a server that exits then could not start, which says more), nor
        when it is closing (its own shutdown closes the stream too).
        """
        if self._client is not None and not self._stop.is_set():
            self._end(_STDOUT_ENDED)

    def answered(self, message: Any) -> None:
        """End the session if ``message``, an answer, answers no request it sent.

        The MCP SDK drops such an answer (as it drops a late one), and the call it was meant
        for waited for good, without a timeout: nothing says which call that is, and a server
        that numbers its answers wrongly may match any answer with the wrong call. An error
        that names no request (``id: null``, JSON-RPC's answer to a request it could not
        read) leaves one request without an answer alike.
        """
        request = message.id
        if request is None:
            error = message.error
            self._end(f"answered with an error that names no request (id null: a request it "
                      f"could not read, which gets no answer): {_reason_phrase(error.message)} "
                      f"(error {error.code})")
            return
        number = request if isinstance(request, int) else None
        if isinstance(request, str):
            with contextlib.suppress(ValueError):
                number = int(request)  # "7" answers 7, as the SDK matches them
        if (number is not None and number > self.top_request) or (
                number is None and request not in self.named_requests):
            self._end(f"answered a request it was never sent (id {bounded_text(repr(request), 60)}"
                      f", after {self.top_request} requests): its answers cannot be matched "
                      "with the calls they answer")

    def _end(self, cause: str) -> None:
        """Mark the session ended with ``cause`` (the first cause wins) and let it close."""
        if self._dead is not None and not self._dead.done():
            self._dead.set_result(self._with_stderr(cause))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)  # the start is over: its waiters see it failed
        self._stop.set()

    def _with_stderr(self, cause: str) -> str:
        tail = ""
        if self._errlog is not None and not self._errlog.closed:
            with contextlib.suppress(OSError, ValueError):
                self._errlog.flush()
                # only the end is read: a chatty server's stderr may hold gigabytes (a start
                # inside a character reads as U+FFFD, cut off with the rest of the start)
                end = self._errlog.seek(0, os.SEEK_END)
                self._errlog.seek(max(0, end - 4 * STDERR_TAIL))
                tail = self._errlog.read()[-STDERR_TAIL:].strip()
        return f"{cause}; its stderr ends: {tail}" if tail else cause

    def _error(self, doing: str = "") -> MCPServerError:
        cause = self._dead.result() if self._dead is not None and self._dead.done() else (
            "the session is not open")
        return MCPServerError(self.server.described, f"{cause}{doing}")

    async def call_tool(self, name: str, arguments: Mapping[str, Any],
                        schema: Mapping[str, Any] | None = None,
                        bound: float | None = None) -> mcp_types.CallToolResult:
        """Call ``name``; fail with :class:`MCPServerError` if the server dies meanwhile.

        :class:`_NotSent` instead when a stdio server's connection was found closed before
        the call's request was written: the server never saw the call. ``schema``: the input
        schema the arguments were checked against (see :func:`_refit`). ``bound``: the
        seconds its answer may take once sent (None: no bound), past which it is cancelled
        and fails with :class:`MCPServerError` naming the server's ``answer_timeout``.
        """
        listing = self._listing
        connected = (self._client is not None and not self.dead and listing is not None
                     and listing.done() and not listing.cancelled()
                     and listing.exception() is None)  # up and listed: then it ended
        try:
            client = await self.open()
        except MCPServerError as exc:
            if connected and self.server.command:  # it was up, and ended before this call
                raise _NotSent(exc) from None
            raise
        if self.tool_names is not None and name not in self.tool_names:
            raise MCPToolError(self.server.described, name, (
                f"MCP server {self.server.described} does not list tool {name!r} now (its "
                f"tools changed since they were listed; it lists "
                f"{_names_said(sorted(self.tool_names)) or 'none'}): the "
                "call was not sent; list its tools again (shoal.mcp.tools)"))
        checker = self._checker(name, schema)
        if checker is not None:
            _refit(self.server, name, checker, arguments)
        sent = _Sent()
        token = _SENDING.set(sent)  # the request's task, made now, copies it: the writer's mark
        try:
            work = asyncio.ensure_future(client.call_tool(name, dict(arguments)))
        finally:
            _SENDING.reset(token)
        limit = asyncio.timeout(bound)  # None: no bound
        try:
            async with limit:
                result: mcp_types.CallToolResult = await self._race(work, f"calling {name!r}")
        except TimeoutError:
            if not limit.expired():
                raise
            raise MCPServerError(self.server.described, (
                f"did not answer the call of {name!r} within {bound:g} s (answer_timeout, the "
                "bound of a call whose tool has no timeout of its own: give the tool timeout=, "
                "or the server answer_timeout=None to wait for good)")) from None
        except MCPServerError as exc:
            if (self.server.command and not sent.written) or self.terminated:
                raise _NotSent(exc) from None
            raise
        listing = self._listing
        if listing is not None and not listing.done():
            # the server said its tools changed (during the call, say): the answer waits for
            # the new listing (bounded by connect_timeout, and never failed by it), so that
            # what the call's caller does next (a model's next turn) sees the tools as now
            await asyncio.wait({listing})
        return result

    def _checker(self, name: str, schema: Mapping[str, Any] | None) -> Any:
        """What checks a call of ``name`` made for ``schema`` against the schema listed now.

        None while the two are the same; else :func:`_checker_of`'s, made once a listing.
        """
        now = self.input_schemas.get(name)
        if schema is None or now is None:
            return None
        made = self._checkers.get(name)
        if made is None or made[0] is not now or made[1] is not schema:
            made = self._checkers[name] = (
                now, schema, None if now == schema else _checker_of(now))
        return made[2]

    async def list_tools(self) -> list[mcp_types.Tool]:
        """Every tool the server lists (all pages): listed anew unless it just started."""
        listed = self._listing is not None and self._listing.done()
        client = await self.open()
        assert self._listing is not None
        return await self._list_all(client) if listed else self._listing.result()

    async def _list_all(self, client: Client) -> list[mcp_types.Tool]:
        """List every tool (all pages); a listing that fails ends the session, saying why."""
        found: list[mcp_types.Tool] = []
        cursor: str | None = None
        cursors: set[str] = set()
        for _ in range(MAX_PAGES):
            try:  # bounded like the handshake: no tool timeout covers a listing
                async with asyncio.timeout(self.server.connect_timeout):
                    page = await self._race(client.list_tools(cursor=cursor),
                                            "listing its tools")
            except TimeoutError:
                self._end(f"did not list its tools within {self.server.connect_timeout:g} s "
                          "(an answer the MCP SDK cannot read, such as one nested too deeply, "
                          "is dropped and logged; connect_timeout= gives a slow server longer)")
                raise self._error() from None
            except MCPError as exc:  # an error answer: its listing failed on its side
                self._end(f"answered the listing of its tools with an error: "
                          f"{_server_words(exc.message)} "
                          f"(error {exc.code})")
                raise self._error() from None
            except MCPServerError as exc:  # off-protocol, say: the session ends with it, so
                self._end(exc.cause)  # that the next call starts a fresh one, not fails alike
                raise self._error() from None
            found += page.tools
            cursor = page.next_cursor
            if not cursor:
                self.tool_names = frozenset(t.name for t in found)
                self.input_schemas = {t.name: t.input_schema for t in found}
                self.server._latest = {t.name: t for t in found}
                return found
            if cursor in cursors:  # it would page on for good, its tools over and over
                self._end(f"pages the listing of its tools in a loop (its cursor "
                          f"{bounded_text(repr(cursor), 100)} came again, after {len(found)} "
                          "tools)")
                raise self._error()
            cursors.add(cursor)
        self._end(f"lists more than {MAX_PAGES} pages of tools ({len(found)} tools so far); "
                  "shoal reads at most that many")
        raise self._error()

    async def _race(self, work: Any, doing: str) -> Any:
        """Await ``work`` unless the session ends first (then raise why)."""
        assert self._dead is not None
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._dead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():  # the session died, or this call was cancelled (its timeout)
                task.cancel()
                task.add_done_callback(_retrieve)
        if not task.done():
            raise self._error(f" (while {doing})")
        try:
            return task.result()
        except MCPError as exc:
            if _connection_closed(exc):  # its output ended under the request
                self._end(self._closed_cause(exc))
                raise self._error(f" (while {doing})") from None
            if self.server.url is not None and _session_terminated(exc):
                # 404 to the session's id: the server knows it no more (it restarted, or let
                # it expire) and never read the request, which may go to a new session
                self.terminated = True
                self._end("the server no longer knows the session (it answered 404 to its "
                          "id: it restarted, or let the session expire)")
                raise self._error(f" (while {doing})") from None
            if exc.data == REQUEST_FAILED:  # its HTTP exchange failed: no tool's doing
                raise MCPServerError(self.server.described, f"its HTTP request failed while "
                                     f"{doing}: {bounded_text(exc.message, 2000)}") from None
            if _stream_failed(exc):  # the event stream of its answer broke: no tool's doing
                raise MCPServerError(self.server.described, f"its event stream failed while "
                                     f"{doing}: {bounded_text(exc.message, 2000)}") from None
            if exc.data == _HTTP_FAILED:  # a status for an answer (500, 401 ...): no tool's
                raise MCPServerError(self.server.described, f"answered {exc.message} while "
                                     f"{doing}") from None
            if exc.data == _UNREADABLE or (  # or the SDK's HTTP client could not read it
                    exc.code == mcp_types.PARSE_ERROR and exc.data is None
                    and exc.message.startswith(_HTTP_UNREADABLE)):
                raise MCPServerError(self.server.described, f"answered off-protocol while "
                                     f"{doing}: {bounded_text(exc.message, 2000)}") from None
            raise
        except pydantic.ValidationError as exc:  # an answer that is not MCP
            raise MCPServerError(self.server.described, f"answered off-protocol while {doing}: "
                                 f"{bounded_text(str(exc), 2000)}") from None
        except RuntimeError as exc:  # the SDK's check of a result against the output schema
            said = exception_message(exc) if type(exc) is RuntimeError else describe_exception(
                exc)  # (a RecursionError, say, of a result nested too deeply to check)
            raise MCPServerError(self.server.described, f"answered off-protocol while {doing}: "
                                 f"{bounded_text(said, 2000)}") from None

    def _closed_cause(self, exc: MCPError) -> str:
        """Why a request got no answer: the server's output ended (its requests all fail).

        A stdio server's stdout ends when it exits, and also when it closes stdout and lives
        on: no answer can come either way, so the calls waiting fail now, whatever their
        timeout (none, say), rather than wait for it.
        """
        if self.server.command:
            return _STDOUT_ENDED
        return f"the connection closed ({exc.message}); the server may have crashed"

    async def close(self) -> None:
        """End the session and wait (boundedly) for its task to finish.

        A call still waiting for its answer fails saying the session was closed under it:
        its answer was lost when the server's output closed, read as the server's doing
        ("the server exited, or closed its stdout").
        """
        task = self._task
        await self.cancels.drained(CANCEL_POST_WAIT)  # a call's cancel, still being posted
        if self._client is not None:
            self._end(_CLOSED_UNDER)
        self._stop.set()
        if task is None:
            return
        if self._client is None:  # still starting (no handshake yet): stopped at once, as
            task.cancel()  # open()'s timeout does; it waited CLOSE_TIMEOUT for the start
        # asyncio.wait: the task's own ending (even its cancellation) is not raised here
        await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not task.done():  # a transport that does not close in time is cancelled
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if task.done():
            _retrieve(task)


class _Pending:
    """A count of things under way, and a wait (bounded) until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()

    def add(self) -> None:
        """One more under way."""
        self._count += 1
        self._none.clear()

    def done(self) -> None:
        """One fewer under way."""
        self._count = max(0, self._count - 1)
        if not self._count:
            self._none.set()

    async def drained(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """Wait until none is under way, at most ``timeout`` seconds."""
        if self._count:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._none.wait()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a dropped task's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
