""":class:`MCPServer`: a server to start or reach, and the sessions its calls use."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import mcp_types
from mcp import Client, StdioServerParameters

from shoal.exceptions import ConfigError
from shoal.integrations.mcp._limits import _SESSIONS, ANSWER_TIMEOUT, CONNECT_TIMEOUT
from shoal.integrations.mcp._listed import _once_each, _overridden, _policy, _remote, _shoal_names
from shoal.integrations.mcp._session import _Session
from shoal.integrations.mcp._text import _names_said
from shoal.integrations.mcp._tool import MCPTool
from shoal.integrations.mcp._wire import _http_statuses, _watched
from shoal.merge import shown
from shoal.policy import ApprovalRule
from shoal.scheduler.scope import RunScope, register_injector

if TYPE_CHECKING:
    from shoal.executors.base import Call


def _site_of(call: Call, scope: RunScope | None) -> tuple[RunScope | None, float | None]:
    """What a call's run gives it: the run (its sessions), and the call's own timeout."""
    return scope, call.timeout


register_injector("shoal.mcp", _site_of)


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
    answer_timeout: float | None = ANSWER_TIMEOUT
    _held: _Session | None = field(default=None, init=False, repr=False)
    _retired: list[_Session] = field(default_factory=list, init=False, repr=False)
    _label: str = field(default="", init=False, repr=False)
    #: its tools by name, as the last listing of any of its sessions found them (None: none
    #: yet): what its tools offer models now (see :meth:`MCPTool.spec_now`)
    _latest: dict[str, mcp_types.Tool] | None = field(default=None, init=False, repr=False)

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
        bound = self.answer_timeout
        if bound is not None and (isinstance(bound, bool) or not (
                isinstance(bound, int | float) and 0 < bound < math.inf)):
            raise ConfigError(f"answer_timeout must be a positive, finite number of seconds "
                              f"(or None: wait for good), got {shown(bound)}")
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
                                  f"{_names_said(t.name for t in listed) or 'none'}")
            listed = [t for t in listed if t.name in wanted]
        remotes = [_remote(self, t) for t in _once_each(self, listed)]
        names = _shoal_names([prefix + r.name for r in remotes])
        made = [MCPTool(r, n, _policy(self, r, approval, timeout), _hinted=approval is None)
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
