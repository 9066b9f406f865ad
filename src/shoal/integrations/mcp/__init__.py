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

import asyncio
import collections
import contextlib
import contextvars
import copy
import functools
import json
import logging
import math
import os
import re
import shlex
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO, cast

import pydantic

from shoal.exceptions import (
    ConfigError,
    MCPServerError,
    MCPToolError,
    MissingDependencyError,
    PlanError,
    ShoalError,
    ToolArgumentError,
    ToolDefinitionError,
    bounded_text,
    describe_exception,
    exception_message,
)
from shoal.merge import shown
from shoal.policy import ApprovalRule, ToolPolicy, policy_from
from shoal.scheduler.scope import RunScope, register_injector
from shoal.schema import model_facts
from shoal.tools import Tool, api_tool_name

try:
    import anyio  # what the mcp SDK's transports run on
    import jsonschema  # type: ignore[import-untyped]  # a dependency of mcp; no type hints
    import mcp_types
    from mcp import Client, StdioServerParameters
    from mcp.shared.exceptions import MCPError
except ImportError as exc:  # the extra is missing: say how to install it
    raise MissingDependencyError("mcp", "mcp") from exc

from shoal.integrations.mcp._schema import (
    MAX_SCHEMA_OBJECTS,
    NAMED,
    VALUES,
    WORDS,
    check_schema,
    objects_past,
    ref_loop,
)
from shoal.integrations.mcp._transports import REQUEST_FAILED

if TYPE_CHECKING:
    from shoal.executors.base import Call
    from shoal.outcome import Outcome
    from shoal.runtime import Runtime

__all__ = ["MAX_SCHEMA_OBJECTS", "MCPServer", "MCPTool", "RemoteTool", "content_text",
           "result_value", "serve", "served_tools", "server", "tools"]

log = logging.getLogger(__name__)


class _OneLineNoise(logging.Filter):
    """A stdio server's stray stdout line, logged in one line rather than with a traceback.

    The MCP SDK logs each line a server prints that is not JSON-RPC with a traceback of its
    parser (``Failed to parse JSONRPC message from server``); the line is the server's doing,
    not a fault here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith("Failed to parse JSONRPC"):
            batch = _batch_size(record.exc_info[1])
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

CONNECT_TIMEOUT = 30.0  # seconds for a server to start and answer the handshake
CLOSE_TIMEOUT = 10.0  # seconds for a session to close before its task is cancelled
CANCEL_POST_WAIT = 2.0  # seconds a closing HTTP session waits for its cancels to be posted
STDERR_TAIL = 2000  # characters of a server's stderr quoted when it fails
MAX_ARGUMENT_DEPTH = 250  # levels of nesting of an argument's value a call can send
MAX_PAGES = 1000  # tools/list pages read from one server (one that pages on: MCPServerError)
MAX_RELISTINGS = 5  # listings in a row while a server says its tools changed during each
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what model APIs accept as tool names
_SESSIONS = "shoal.mcp.sessions"  # the key of a run's sessions in RunScope.shared
_SCOPE_PARAM = "_shoal_mcp_scope"  # the injected parameter that brings a call its run's scope
#: Why a stdio server's session ended when its output did.
_STDOUT_ENDED = ("the connection closed: its output (stdout) ended, so no answer can come (the "
                 "server exited, or closed its stdout)")


def _scope_of(call: Call, scope: RunScope | None) -> RunScope | None:
    return scope


register_injector("shoal.mcp", _scope_of)


# -- servers and sessions -------------------------------------------------------------------


@dataclass(eq=False)
class MCPServer:
    """An MCP server to start (``command``) or reach (``url``); see :func:`server`.

    ``async with server:`` keeps one session open until the block ends: every call of its
    tools meanwhile (in any run, or called directly) uses it. Without that, each run opens
    its own session on its first call and closes it when it ends, and a direct call outside
    any run opens one for that call alone.
    """

    command: tuple[str, ...] = ()
    url: str | None = None
    name: str | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    headers: Mapping[str, str] | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    _held: _Session | None = field(default=None, init=False, repr=False)
    _retired: list[_Session] = field(default_factory=list, init=False, repr=False)
    _label: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.command, str | bytes) or not isinstance(self.command, Sequence):
            # a str would run as one program per character ('m c p - s e r v e r ...')
            raise ConfigError(f"command is a list of program and arguments, e.g. "
                              f"[{shown(self.command)}], got {type(self.command).__name__}")
        object.__setattr__(self, "command", tuple(self.command))
        if bool(self.command) == (self.url is not None):
            raise ConfigError("an MCP server needs exactly one of command=[...] (a program "
                              "speaking MCP on stdio) or url='http://.../mcp' (streamable HTTP)")
        if self.command and not all(isinstance(a, str) and a for a in self.command):
            raise ConfigError(f"command must be a list of non-empty strings, got "
                              f"{list(self.command)!r}")
        if self.env is not None and not (isinstance(self.env, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.env.items())):
            raise ConfigError(f"env maps names to strings, got {shown(self.env)}")
        if self.headers is not None and not (isinstance(self.headers, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items())):
            raise ConfigError("headers map names to strings")
        if self.url is not None and not (isinstance(self.url, str)
                                         and re.match(r"^https?://", self.url)):
            raise ConfigError(f"url must be an http:// or https:// URL, got {shown(self.url)}")
        wait = self.connect_timeout
        if isinstance(wait, bool) or not (isinstance(wait, int | float) and 0 < wait < math.inf):
            raise ConfigError(f"connect_timeout must be a positive, finite number of seconds, "
                              f"got {shown(wait)}")
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"name must be a str (or None), got {type(self.name).__name__} "
                              f"{shown(self.name)}")
        if self.cwd is not None and not isinstance(self.cwd, str | os.PathLike):
            raise ConfigError(f"cwd must be a directory's path (or None), got "
                              f"{type(self.cwd).__name__} {shown(self.cwd)}")
        self._label = self.name or (os.path.basename(self.command[0]) if self.command
                                    else str(self.url))

    @property
    def where(self) -> str:
        """How the server is started (its command line) or reached (its URL)."""
        return shlex.join(self.command) if self.command else str(self.url)

    @property
    def label(self) -> str:
        """The server's name: ``name=``, else the name it gives, else its program or URL."""
        return self._label

    @property
    def described(self) -> str:
        """The server as error messages name it: its name and where it runs."""
        return (f"{self._label!r} ({self.where})" if self._label != self.where
                else repr(self.where))

    @property
    def key(self) -> str:
        """The resource key its tools read or write (``mcp:NAME``)."""
        return "mcp:" + re.sub(r"[^\w.\-/:@]", "_", self._label)

    async def tools(
        self,
        *,
        prefix: str = "",
        only: Collection[str] | None = None,
        approval: ApprovalRule | None = None,
        # each tool's per-call timeout, a setting of the tools made, not one for this listing
        timeout: float | None = None,  # noqa: ASYNC109
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[MCPTool]:
        """The server's tools as shoal tools (see :func:`tools` for the options)."""
        if only is not None and not isinstance(only, str | bytes) and isinstance(
                only, Iterable):
            only = tuple(only)  # read once: a generator would be empty when used below
        if isinstance(only, str) or (only is not None and not (isinstance(only, tuple) and all(
                isinstance(n, str) for n in only))):
            raise ConfigError(f"only is a list of tool names, e.g. [{shown(only)}], got "
                              f"{shown(only)}")
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a string, got {shown(prefix)}")
        listed = await self._list()
        wanted = set(only) if only is not None else None
        if wanted is not None:
            missing = wanted - {t.name for t in listed}
            if missing:
                raise ConfigError(f"MCP server {self.described} has no tool "
                                  f"{', '.join(map(repr, sorted(missing)))}; it has "
                                  f"{', '.join(t.name for t in listed) or 'none'}")
            listed = [t for t in listed if t.name in wanted]
        remotes = [_remote(self, t) for t in _once_each(self, listed)]
        names = _shoal_names([prefix + r.name for r in remotes])
        made = [MCPTool(r, n, _policy(self, r, approval, timeout))
                for r, n in zip(remotes, names, strict=True)]
        return _overridden(made, overrides or {}, self)

    async def _list(self) -> list[mcp_types.Tool]:
        if self._held is not None:
            return await self._held.list_tools()
        session = _Session(self)
        try:
            return await session.list_tools()
        finally:
            await session.close()

    def _client(self, errlog: TextIO, session: _Session) -> Client:
        if self.url is not None:
            return Client(_http_statuses(self, session), cache=None)
        # bytes that are not UTF-8 read as U+FFFD: strictly decoded, they ended the SDK's
        # reader in a drain that lasts as long as the server, and every call waited for good
        params = StdioServerParameters(command=self.command[0], args=list(self.command[1:]),
                                       env=dict(self.env) if self.env else None, cwd=self.cwd,
                                       encoding_error_handler="replace")
        from shoal.integrations.mcp._transports import stdio_transport

        return Client(_watched(stdio_transport(params, errlog=errlog), session), cache=None)

    def _http_transport(self, http_client: Any) -> Any:
        from mcp.client.streamable_http import streamable_http_client

        from shoal.integrations.mcp import _transports as _mcp_transports

        return streamable_http_client(str(self.url), http_client=http_client,
                                      max_sse_event_size=_mcp_transports.MAX_EVENT_BYTES)

    def _http_client(self) -> Any:
        """The HTTP client of a session: the MCP SDK's timeouts, no redirects, the headers.

        A JSON-RPC batch in an answer is read one message at a time, as over stdio.
        """
        from shoal.integrations.mcp._transports import unbatching_client

        return unbatching_client(dict(self.headers) if self.headers else None)

    def _session_for(self, scope: RunScope | None) -> tuple[_Session, bool]:
        """The session a call uses, and whether the call must close it itself.

        A session whose server died is replaced (the server starts again for the next
        call); the dead one is still closed with the others, so that nothing outlives them.
        """
        if self._held is not None:
            if self._held.dead:
                self._retired.append(self._held)
                self._held = _Session(self)
            return self._held, False
        if scope is None:  # a call outside any run: a session of its own
            return _Session(self), True
        sessions = scope.shared.get(_SESSIONS)
        if not isinstance(sessions, _RunSessions):
            sessions = scope.shared[_SESSIONS] = _RunSessions()
            scope.at_end(functools.partial(_close_all, scope.shared, sessions))
        found = sessions.live.get(self)
        if found is None or found.dead:
            found = sessions.live[self] = _Session(self)
            sessions.every.append(found)
        return found, False

    async def __aenter__(self) -> MCPServer:
        if self._held is not None:
            raise ConfigError(f"MCP server {self.described} is held open already")
        session = _Session(self)
        try:
            await session.open()
        except BaseException:  # its start (and process) ends here, not after the block
            await asyncio.shield(session.close())
            raise
        self._held = session
        return self

    async def __aexit__(self, *exc: object) -> None:
        ending = [*self._retired, *([self._held] if self._held is not None else [])]
        self._held, self._retired = None, []
        await asyncio.gather(*(s.close() for s in ending))


@dataclass(eq=False)
class _RunSessions:
    """A run's sessions: the live one of each server, and every one it opened."""

    live: dict[MCPServer, _Session] = field(default_factory=dict)
    every: list[_Session] = field(default_factory=list)


async def _close_all(shared: dict[str, Any], sessions: _RunSessions) -> None:
    """Close a run's sessions (its at_end hook); a later run of the same tree opens anew."""
    if shared.get(_SESSIONS) is sessions:
        del shared[_SESSIONS]
    await asyncio.gather(*(s.close() for s in sessions.every))


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
                    if not self.server.name and client.server_info and client.server_info.name:
                        self.server._label = client.server_info.name
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
                        schema: Mapping[str, Any] | None = None) -> mcp_types.CallToolResult:
        """Call ``name``; fail with :class:`MCPServerError` if the server dies meanwhile.

        :class:`_NotSent` instead when a stdio server's connection was found closed before
        the call's request was written: the server never saw the call. ``schema``: the input
        schema the arguments were checked against (see :func:`_refit`).
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
                f"{bounded_text(', '.join(sorted(self.tool_names)), 500) or 'none'}): the "
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
        try:
            result: mcp_types.CallToolResult = await self._race(work, f"calling {name!r}")
        except MCPServerError as exc:
            if (self.server.command and not sent.written) or self.terminated:
                raise _NotSent(exc) from None
            raise
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


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a dropped task's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


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
        yield _WatchedReader(read, session), _WatchedWriter(write, session)


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

    def __init__(self, inner: Any, session: _Session) -> None:
        super().__init__(inner, session)
        self._batched: collections.deque[Any] = collections.deque()  # a batch's, not handed on

    def __aiter__(self) -> _WatchedReader:
        return self

    async def __anext__(self) -> Any:
        item = self._batched.popleft() if self._batched else await self._received()
        if isinstance(item, Exception):  # a line the SDK could not read: dropped, unless ...
            self._batched.extend(_salvaged(item))
            if not self._batched:
                return item
            item = self._batched.popleft()
        if isinstance(item.message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            self._session.answered(item.message)
        _heard(self._session, item.message)
        return item

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


def _salvaged(error: Exception) -> list[Any]:
    """The messages a line the MCP SDK could not read stands for (none: it is dropped).

    The SDK reads one message a line, and drops any other line: the calls it answered
    waited for good, without a timeout. Python's parser reads the line again, and

    - a JSON-RPC batch (an array of messages, which MCP's 2025-03-26 revision allowed) is
      its messages, one by one;
    - an answer the SDK refuses (a lone surrogate's escape, say, which its parser refuses but
      JSON allows) is an error answer to the request it names.

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
    except RecursionError:  # its outermost object, or a batch's objects, read shallowly
        reason = f"nested too deeply: {reason}"
        if not isinstance(line, str) or not line.lstrip().startswith("["):
            message = shallow_answer(line) if isinstance(line, str) else None
        else:
            read = [_error_answer(item, reason) if deep else _batched_message(item)
                    for item, deep in shallow_batch(line) or ()]
            return [m for m in read if m is not None]
    except ValueError:
        return []
    read = ([_batched_message(item) for item in message] if isinstance(message, list)
            else [_error_answer(message, reason)])
    return [m for m in read if m is not None]


def _checker_of(schema: Any) -> Any:
    """A validator of ``schema``, a tool's input schema listed anew; else why it is not taken.

    Checked as a listed schema is (see :func:`_remote`), its words then in :func:`_refit`'s.
    """
    if not isinstance(schema, dict) or objects_past(schema, MAX_SCHEMA_OBJECTS):
        return "its new schema is not one shoal takes (no object schema, or too big)"
    try:
        check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"its new schema is invalid ({bounded_text(exc.message, 300)})"
    if ref_loop(schema) is not None:
        return "its new schema loops (checking any argument against it never ends)"
    return jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator)(schema)


def _refit(srv: MCPServer, name: str, checker: Any, arguments: Mapping[str, Any]) -> None:
    """Refuse ``arguments`` unless ``checker`` (:func:`_checker_of`'s) finds they fit.

    They were checked against the schema listed when the tool was made: after the server
    changed it (and said its tools changed), a call that no longer fits was sent as it was.
    """
    def refused(why: str) -> MCPToolError:
        return MCPToolError(srv.described, name, (
            f"MCP server {srv.described} changed the input schema of tool {name!r} since its "
            f"tools were listed, and {why}: the call was not sent; list its tools again "
            "(shoal.mcp.tools)"))

    if isinstance(checker, str):
        raise refused(checker)
    try:
        errors = sorted(checker.iter_errors(dict(arguments)), key=_error_order)
    except Exception as exc:  # a $ref elsewhere (never fetched), or too deep: not checked
        raise refused(f"the arguments cannot be checked against it "
                      f"({describe_exception(exc)})") from None
    if errors:
        raise refused(f"the arguments do not fit it now "
                      f"({'; '.join(_error_text(e) for e in errors[:10])})")


def _batched_message(item: Any) -> Any:
    """One message of a batch, read as the SDK reads a line; else as :func:`_error_answer`."""
    from mcp.shared.message import SessionMessage

    try:  # as JSON again: the SDK's parser refuses what it refuses on a line of its own
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(
            json.dumps(item), by_name=False))
    except (ValueError, RecursionError) as exc:
        errors = exc.errors() if isinstance(exc, pydantic.ValidationError) else []
        return _error_answer(item, errors[0].get("ctx", {}).get("error") if errors else exc)


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

    async def send(self, item: Any) -> None:
        """Hand ``item`` to the transport, unless the server's output has ended."""
        if self._session.dead:  # nothing written: the SDK says the connection closed
            raise anyio.ClosedResourceError
        self._note(item)
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


def _server_words(text: str) -> str:
    r"""A server's error message as an error of shoal's quotes it: plain (lines kept), cut.

    It went into the error as it was: an escape sequence (``\x1b[2J``, or C1's ``\x9b``)
    reached the terminal that shows the error, a carriage return overwrote its start (it
    now reads as a line break).
    """
    return bounded_text(_prompt_text(text), 2000)


#: The most characters of an HTTP reason phrase an error quotes (the standard ones are short).
REASON_PHRASE_CHARS = 100


def _reason_phrase(phrase: str) -> str:
    r"""A server's HTTP reason phrase as an error may quote it: one line, plain, short.

    The phrase is the server's own text: a hostile one of kilobytes, with tabs and C1 control
    characters (``\x9b``: an escape sequence to a terminal), went into the error as it was.
    """
    plain = " ".join(_prompt_text(phrase).split())  # tabs and line breaks: one space
    return bounded_text(plain, REASON_PHRASE_CHARS)


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


# -- tools ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RemoteTool:
    """A tool as its MCP server describes it: its name there, schema and annotations."""

    server: MCPServer
    name: str
    description: str
    schema: Mapping[str, Any]
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None
    output_schema: Mapping[str, Any] | None = None
    #: the input schema as the server listed it (``schema`` has its descriptions made plain)
    listed_schema: Mapping[str, Any] | None = None


def _remote(srv: MCPServer, listed: mcp_types.Tool) -> RemoteTool:
    hints = listed.annotations or mcp_types.ToolAnnotations()
    schema = listed.input_schema
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema that is not an object schema: "
                                  f"{bounded_text(repr(schema), 300)}; leave it out with "
                                  "only=[...]")
    if objects_past(schema, MAX_SCHEMA_OBJECTS):
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema of more than {MAX_SCHEMA_OBJECTS:,} JSON "
                                  "objects (each property's schema is one), past what shoal "
                                  "takes from a server: checking it would take seconds on "
                                  "each listing; leave it out with only=[...]")
    try:
        check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"invalid input schema ({exc.message}); leave it out with "
                                  "only=[...]") from None
    _refuse_loops(srv, listed)
    if _SCOPE_PARAM in (schema.get("properties") or {}):  # its value would be dropped
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"argument named {_SCOPE_PARAM!r}, a name shoal keeps for "
                                  "handing a call its run; leave it out with only=[...]")
    keyed = _control_key(schema)
    if keyed is not None:  # a property's name goes into prompts (the planner's) as it is
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema with a key holding control characters "
                                  f"({bounded_text(repr(keyed), 100)}); leave it out with "
                                  "only=[...]")
    schema = _described_plainly(schema)
    return RemoteTool(srv, listed.name,
                      bounded_text(_prompt_text(listed.description or ""), 20_000),
                      schema, hints.read_only_hint, hints.destructive_hint,
                      hints.idempotent_hint, hints.open_world_hint, listed.output_schema,
                      listed.input_schema)


def _refuse_loops(srv: MCPServer, listed: mcp_types.Tool) -> None:
    """Refuse a tool whose input or output schema loops (see :func:`ref_loop`).

    jsonschema's check passes such a schema; checking any argument against it then recursed
    to Python's limit (blamed on the value: "nested too deeply"), and so did the MCP SDK's
    check of every result against the output schema (blamed on the answer: "off-protocol").
    """
    for kind, schema, checked in (("input", listed.input_schema, "argument"),
                                  ("output", listed.output_schema, "result")):
        loop = ref_loop(schema) if isinstance(schema, Mapping) else None
        if loop is not None:
            raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has "
                                      f"an {kind} schema that leads back to itself without "
                                      f"reaching into the value (it loops through {loop}), "
                                      f"so checking any {checked} against it never ends; "
                                      "leave it out with only=[...]")


#: An ANSI escape sequence: CSI (ESC [ or U+009B ... final byte), OSC (ESC ] ... BEL or ESC \\),
#: or ESC and one byte.
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*"
                   r"(?:\x07|\x1b\\|\x9c)?|\x1b[@-_]?")
#: Line breaks other than a newline, which read as one.
_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
#: Control characters other than newline and tab, and bidi embeddings, overrides, isolates.
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: What a schema's key may not hold: control characters (newline and tab too), other line
#: breaks, bidi controls.
_CONTROL_IN_KEY = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _prompt_text(text: str) -> str:
    """A server's text as it may go into a model's prompt: no control characters.

    A tool's description (and its arguments') goes into the tool schemas sent to models and
    into the planner's prompt: ANSI escapes, NUL, carriage returns or bidi overrides went there
    as the server wrote them. Escape sequences are dropped whole, other line breaks become
    newlines, and the other control characters are dropped; newlines and tabs stay.
    """
    if text.isprintable():
        return text
    return _UNSHOWN.sub("", _BREAKS.sub("\n", _ANSI.sub("", text)))


def _control_key(value: Any) -> str | None:
    """A key of a JSON schema (a property's name, say) holding a control character, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, inner in item.items():
                if isinstance(key, str) and _CONTROL_IN_KEY.search(key):
                    return key
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _described_plainly(schema: Any, named: bool = False) -> Any:
    """``schema`` with its ``description`` and ``title`` texts made plain (:func:`_prompt_text`).

    What it accepts is unchanged.

    ``named``: ``schema`` maps names to schemas (``properties``, ``$defs`` ...), whose keys
    are names, not keywords.
    """
    if isinstance(schema, list):
        return [_described_plainly(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    if named:
        return {key: _described_plainly(inner) for key, inner in schema.items()}
    out: dict[Any, Any] = {}
    for key, inner in schema.items():
        if key in VALUES:  # values, not words: as they are
            out[key] = inner
        elif key in WORDS and isinstance(inner, str):
            out[key] = _prompt_text(inner)
        else:
            out[key] = _described_plainly(inner, key in NAMED)
    return out


def _once_each(srv: MCPServer, listed: list[mcp_types.Tool]) -> list[mcp_types.Tool]:
    """The tools listed, each name once: a tool listed twice alike is one tool.

    A call names its tool, so two different tools under one name cannot both be called: the
    second became ``name_1``, whose calls ran whichever the server picks for the name.
    """
    kept: dict[str, mcp_types.Tool] = {}
    for tool in listed:
        first = kept.setdefault(tool.name, tool)
        if first is not tool and first != tool:
            raise ToolDefinitionError(f"MCP server {srv.described} lists two different tools "
                                      f"named {tool.name!r} (a call names one by its name "
                                      "alone); leave them out with only=[...]")
    return list(kept.values())


def _shoal_names(wanted: Sequence[str]) -> list[str]:
    """Tool names model APIs accept (letters, digits, ``_`` and ``-``, at most 64), unique.

    A name that had to change gets a short hash of the original, so that two names that
    differ only in the characters replaced stay apart.
    """
    out: list[str] = []
    for name in wanted:
        made = api_tool_name(name)
        while made in out:
            made = made[:60] + "_" + str(len(out))
        out.append(made)
    return out


def _policy(srv: MCPServer, remote: RemoteTool, approval: ApprovalRule | None,
            timeout: float | None) -> ToolPolicy:
    """The shoal policy the server's annotations ask for (see the module docstring)."""
    options: dict[str, Any] = {"isolation": "inline", "timeout": timeout}
    if remote.read_only is True:
        options.update(reads=srv.key, idempotent=True, approval=False)
    else:
        options.update(writes=srv.key, idempotent=remote.idempotent is True,
                       approval=remote.destructive is not False)  # MCP's default: destructive
    if approval is not None:
        options["approval"] = approval
    return policy_from(ToolPolicy(), options)


def _overridden(made: list[MCPTool], overrides: Mapping[str, Mapping[str, Any]],
                srv: MCPServer) -> list[MCPTool]:
    """Apply ``overrides`` (by the server's tool name or the shoal name) to the tools."""
    if not isinstance(overrides, Mapping) or not all(
            isinstance(o, Mapping) for o in overrides.values()):
        raise ConfigError("overrides maps a tool name to @shoal.tool options, e.g. "
                          "{'write_file': {'approval': False}}")
    by_name = {t.remote.name: t for t in made} | {t.name: t for t in made}
    unknown = [n for n in overrides if n not in by_name]
    if unknown:
        raise ConfigError(f"overrides name no tool of MCP server {srv.described}: "
                          f"{', '.join(map(repr, unknown))}; its tools: "
                          f"{', '.join(t.name for t in made) or 'none'}")
    changed = {id(by_name[n]): dict(o) for n, o in overrides.items()}
    return [t.options(**changed[id(t)]) if id(t) in changed else t for t in made]


async def _invoke(remote: RemoteTool, **arguments: Any) -> Any:
    """Call the remote tool (the function behind every :class:`MCPTool`)."""
    scope = arguments.pop(_SCOPE_PARAM, None)
    for attempt in range(2):  # a stdio server found gone before the call was sent: once more
        session, own = remote.server._session_for(scope)
        try:
            result = await session.call_tool(remote.name, arguments, remote.listed_schema)
            break
        except _NotSent as unsent:  # the next session starts the server again
            if attempt:
                raise unsent.error from None
        except MCPError as exc:  # the server refused the call (unknown tool, bad params ...)
            raise MCPToolError(remote.server.described, remote.name,
                               f"the server refused the call: {_server_words(exc.message)} "
                               f"(error {exc.code})"
                               ) from None
        finally:
            if own:
                await session.close()
    return result_value(result, remote)


def result_value(result: mcp_types.CallToolResult, remote: RemoteTool) -> Any:
    """A call's value: its structured content if any, else its content as text.

    Images, audio and resources are described in the text rather than dropped; a result
    marked ``isError`` raises :class:`MCPToolError` with the server's text.
    """
    if result.is_error:
        text = content_text(result.content)
        if not text and result.structured_content is not None:
            text = json.dumps(result.structured_content, ensure_ascii=False, default=repr)
        raise MCPToolError(remote.server.described, remote.name, text)
    if result.structured_content is not None:
        return result.structured_content
    return content_text(result.content)


def content_text(blocks: Sequence[Any]) -> str:
    """MCP content blocks as one text (non-text blocks described in brackets)."""
    return "\n".join(_block_text(b) for b in blocks)


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {_said(block.mime_type)}, {_payload(block.data)}]"
    if kind == "resource_link":
        return f"[resource link: {_said(block.name)} {_said(block.uri)}]"
    if kind == "resource":
        res = block.resource
        text = getattr(res, "text", None)
        if isinstance(text, str):
            return f"[resource {_said(res.uri)}]\n{text}"
        blob = getattr(res, "blob", "") or ""
        return f"[resource {_said(res.uri)}: {_said(res.mime_type or 'binary')}, {_payload(blob)}]"
    return f"[{_said(kind or type(block).__name__)} content]"


#: The most characters of a server's name, URI or media type a content block's description
#: quotes.
SAID_CHARS = 300


def _said(text: object) -> str:
    r"""A server's name, URI or media type as a content block's description quotes it.

    One line, without control characters, cut: in brackets of shoal's making, a name holding
    ``]\n`` or an escape sequence read as more blocks, or as the terminal's orders.
    """
    return bounded_text(" ".join(_prompt_text(str(text)).split()), SAID_CHARS)


#: base64 (RFC 4648) as servers send it, line breaks allowed.
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]*(?:=\s*){0,2}")


def _payload(data: str) -> str:
    """How many bytes base64 ``data`` stands for (without decoding it), or that it is not base64.

    Data that is not base64 was described as "about N bytes" of an image (or audio, or a
    file) that no one can decode.
    """
    letters = len(data) - sum(data.count(c) for c in " \t\r\n")
    if letters % 4 or not _BASE64.fullmatch(data):
        return f"not valid base64 ({len(data):,} characters)"
    trimmed = data.rstrip()
    padding = len(trimmed) - len(trimmed.rstrip("="))
    return f"about {letters * 3 // 4 - padding:,} bytes"


class MCPTool(Tool[..., Any]):
    """A tool of an MCP server, usable in plans and by agents like any other tool.

    ``remote`` is how the server describes it (its own name, which may differ from
    :attr:`name` when that had to be made a valid tool name, and its annotations).
    Arguments are checked against the server's JSON schema.
    """

    def __init__(self, remote: RemoteTool, name: str, policy: ToolPolicy,
                 _model: type[pydantic.BaseModel] | None = None) -> None:
        if policy.isolation not in (None, "inline"):
            raise ToolDefinitionError(f"tool {name!r} of MCP server {remote.server.described} "
                                      f"runs inline, not {policy.isolation!r}: its session "
                                      "with the server lives in this process")
        self.remote = remote
        self._validator = jsonschema.validators.validator_for(
            remote.schema, default=jsonschema.Draft202012Validator)(dict(remote.schema))
        super().__init__(functools.partial(_invoke, remote), name=name,
                         description=remote.description, policy=policy,
                         _model=_model or _facts_model(name, remote.schema))

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """Each optional argument's default: None (the server applies its own defaults)."""
        facts = self.model_facts
        return {name: None for name in facts.inputs if name not in facts.required}

    def options(self, **overrides: Any) -> MCPTool:
        """A copy with some policy fields replaced (as :meth:`Tool.options`)."""
        return MCPTool(self.remote, self.name, policy_from(self.policy, overrides),
                       _model=self._model)

    def positional_names(self) -> list[str]:
        """The schema's properties, in its order: plan text may give any of them by position.

        (The function behind the tool takes only ``**arguments``: read off it, a plan line
        such as ``get_current_time("UTC")`` was refused, and so was every call of a tool
        whose argument names are no Python names, such as ``"max-results"``.)
        """
        return [str(name) for name in self.remote.schema.get("properties") or {}]

    def json_schema(self) -> dict[str, Any]:
        """The server's input schema, as the server gave it."""
        return copy.deepcopy(dict(self.remote.schema))

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the server's schema; raise :class:`ToolArgumentError`."""
        self._check_depth(args)
        errors = sorted(self._schema_errors(dict(args), None, ""), key=_error_order)
        if errors:
            first = errors[0]
            argument = str(first.absolute_path[0]) if first.absolute_path else ""
            raise ToolArgumentError(self.name, argument,
                                    "; ".join(_error_text(e) for e in errors[:10]))
        return dict(args)

    def check_static(self, args: Mapping[str, Any], is_pending: Callable[[Any], bool]) -> str:
        """Problems seen before the run: missing or unknown arguments, and known values."""
        if not any(is_pending(v) for v in args.values()):
            try:
                self.validate(args)
            except ToolArgumentError as exc:
                return exc.detail
            return ""
        try:
            self._check_depth(args)
        except ToolArgumentError as exc:
            return exc.detail
        schema = self.remote.schema
        properties = schema.get("properties") or {}
        problems = [f"argument {n!r}: Field required"
                    for n in schema.get("required") or () if n not in args]
        if schema.get("additionalProperties") is False:
            problems += [f"unexpected argument {n!r}" for n in args if n not in properties]
        for name, value in args.items():
            if name in properties and not is_pending(value):
                try:
                    problems += [_error_text(e) for e in
                                 self._schema_errors(value, properties[name], name)][:1]
                except ToolArgumentError as exc:
                    problems.append(exc.detail)
        return "; ".join(problems)

    def _check_depth(self, args: Mapping[str, Any]) -> None:
        """Refuse an argument nested deeper than an MCP request can carry.

        The MCP SDK cannot write one (pydantic's serializer stops at about 250 levels): the
        call failed with a bare ``ValueError``, and checking it against the schema first
        failed with a ``RecursionError`` blamed on the server's schema.
        """
        for name, value in args.items():
            if _nested_deeper(value, MAX_ARGUMENT_DEPTH):
                raise ToolArgumentError(self.name, str(name), (
                    f"argument {str(name)!r} is nested more than {MAX_ARGUMENT_DEPTH} levels "
                    "deep, more than an MCP request can carry; pass it flatter (or as text)"))

    def _schema_errors(self, value: Any, schema: Any, path: str) -> list[Any]:
        """What the server's schema finds wrong with ``value`` (``schema``: a part of it).

        A schema jsonschema cannot apply (a ``$ref`` to elsewhere, which is never fetched)
        is a :class:`ToolArgumentError` saying so, rather than an error from deep inside.
        """
        try:
            if schema is None:
                return list(self._validator.iter_errors(value))
            return list(self._validator.descend(value, schema, path=path))
        except RecursionError:  # the value's doing, not the schema's ($refs cost frames)
            raise ToolArgumentError(self.name, path, (
                f"{f'argument {path!r} is' if path else 'the arguments are'} nested too deeply "
                "to check against the server's input schema; pass it flatter (or as text)")
                                    ) from None
        except Exception as exc:
            raise ToolArgumentError(self.name, path, f"the server's input schema cannot "
                                    f"check arguments: {describe_exception(exc)}") from None


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` holds lists or mappings nested more than ``limit`` levels deep."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        inner: list[Any] = []
        for item in level:
            if isinstance(item, Mapping):
                inner += item.values()
            elif isinstance(item, list | tuple):
                inner += item
        if not inner:
            return False
        level = inner
    return True


def _error_order(error: Any) -> tuple[int, str]:
    return (len(error.absolute_path), str(list(error.absolute_path)))


def _error_text(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    message = bounded_text(str(error.message), 300)
    return f"argument {where!r}: {message}" if where else message


def _facts_model(name: str, schema: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    """A pydantic model standing for the schema's top-level arguments (names, which required).

    The runtime reads a tool's argument names and required ones off its model's facts (a
    map's item argument, plan checks); the values are checked against the JSON schema
    itself. The model also marks the parameter through which the runtime hands a call its run.
    It has no field of its own: a pydantic field an argument took 0.7-1.2 s for a schema of
    4,900 properties, on every listing; the facts are set as its fields would have made them.
    """
    properties = [str(prop) for prop in schema.get("properties") or {}]
    required = {str(prop) for prop in schema.get("required") or ()}
    extra: Literal["forbid", "allow"] = (
        "forbid" if schema.get("additionalProperties") is False else "allow")
    model: type[pydantic.BaseModel] = pydantic.create_model(
        re.sub(r"\W", "_", name) + "_args", __config__=pydantic.ConfigDict(extra=extra))
    facts = model_facts(model)
    facts.inputs = {prop: prop for prop in properties}
    facts.required = frozenset(required.intersection(properties))
    facts.injected = {_SCOPE_PARAM: "shoal.mcp"}
    return model


# -- the public functions -------------------------------------------------------------------


def server(command: Sequence[str] | None = None, *, url: str | None = None,
           name: str | None = None, env: Mapping[str, str] | None = None,
           cwd: str | None = None, headers: Mapping[str, str] | None = None,
           connect_timeout: float = CONNECT_TIMEOUT) -> MCPServer:
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
    return MCPServer(tuple(command or ()), url, name, env, cwd, headers, connect_timeout)


async def tools(
    command: Sequence[str] | None = None,
    *,
    url: str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
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
                 connect_timeout=connect_timeout)
    return await srv.tools(prefix=prefix, only=only, approval=approval, timeout=timeout,
                           overrides=overrides)


# -- serving shoal tools over MCP -----------------------------------------------------------


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
            return _error_result(f"no tool {name!r}; the tools: {', '.join(self.table)}")
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
    except ValueError:  # no JSON: no request to name
        return None
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
