"""What the SDK adapters share: credentials, local-server detection and error translation.

Both SDKs raise the same shapes of error (a status error carrying the ``httpx`` response, a
connection error, a timeout); this module turns them into shoal's
:class:`~shoal.exceptions.ModelError` family without importing either SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar, Token
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from shoal.events import Event, deliver
from shoal.exceptions import (
    ConfigError,
    MissingAPIKeyError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    bounded_text,
)
from shoal.limits import fits_a_float
from shoal.merge import shown
from shoal.models.base import Message, ModelRequest, ToolCall, Usage
from shoal.models.prices import Price, cost
from shoal.tools import api_tool_name

__all__ = [
    "LOCAL_API_KEY",
    "StreamedText",
    "UNNAMED",
    "cut_short",
    "sent_tool_name",
    "Pace",
    "PerLoop",
    "check_base_url",
    "check_model_options",
    "check_timeout",
    "not_a_reply",
    "not_a_stream",
    "stalled",
    "too_deep",
    "unreadable",
    "text_field",
    "describe_cause",
    "http_error",
    "is_local_url",
    "notices_to",
    "notify",
    "parse_retry_after",
    "priced_usage",
    "resolve_credentials",
    "sendable",
    "sendable_text",
    "token_count",
    "counted_tokens",
    "reported_count",
    "transport_error",
    "unreachable",
    "unreported_tokens",
]

log = logging.getLogger("shoal")

T = TypeVar("T")

#: Sent to local servers (llama.cpp, vLLM, Ollama) that need no key: the SDKs insist on one.
LOCAL_API_KEY = "shoal-local-no-key"

#: The name sent back for a call the model gave no name: the APIs refuse an empty one, and
#: the whole conversation with it (the call itself was answered "no tool named ''").
UNNAMED = "unnamed_tool"

_LOCAL_NAMES = {"localhost", "host.docker.internal"}


class StreamedText:
    r"""A reply's text as it streams in pieces, no character split between two of them.

    A server that writes its stream as JSON with ASCII escapes sends a character beyond
    U+FFFF (an emoji) as two escapes, ``\ud83d\ude00``: when one event ends between them,
    each piece decodes to a lone surrogate, and the two never make the character again
    (a plan then read "a lone surrogate", where the model wrote an emoji). The first half
    is held back until the next piece comes, and joined to the second half there.
    """

    __slots__ = ("_held", "pieces")

    def __init__(self) -> None:
        self.pieces: list[str] = []  # the text, as given out
        self._held = ""  # a high surrogate the last piece ended with

    def add(self, piece: str) -> str:
        """Take the next piece of text; return the text it completes (to stream now)."""
        if self._held:
            piece, self._held = self._held + piece, ""
            if len(piece) > 1 and "\udc00" <= piece[1] <= "\udfff":  # the second half
                piece = piece[:2].encode("utf-16-le", "surrogatepass").decode(
                    "utf-16-le") + piece[2:]
        if piece and "\ud800" <= piece[-1] <= "\udbff":  # a first half: its second may follow
            piece, self._held = piece[:-1], piece[-1]
        if piece:
            self.pieces.append(piece)
        return piece

    def end(self) -> str:
        """The stream has ended: the text still held back (a lone first half, kept as is)."""
        rest, self._held = self._held, ""
        if rest:
            self.pieces.append(rest)
        return rest

    @property
    def text(self) -> str:
        """The text given out so far, whole."""
        return "".join(self.pieces)


def sent_tool_name(name: str) -> str:
    """A model's tool call's name as the history sent back to the provider may carry it.

    A model can call a tool by a name no tool has (markup, control characters, a name too
    long); the call was answered with an error naming what it used, but the name itself,
    sent back as written, made the API refuse every later request of the conversation. It
    goes back as :func:`~shoal.tools.api_tool_name` makes it; an empty one is
    :data:`UNNAMED`.
    """
    return api_tool_name(name) if name else UNNAMED


def cut_short(name: str, missing: str) -> ModelConnectionError:
    """The error for a stream that ended cleanly before the provider said it was complete.

    ``missing`` names the signal that never came. A connection closed early by a server or a
    proxy that fell over ends the stream like a finished one; taken as it stood, a final
    answer cut mid-text came back as the agent's answer. Transient, as a lost connection is.
    """
    return ModelConnectionError(name, f"the stream ended before the provider said it was "
                                      f"complete ({missing}): the reply may be cut short")


def is_local_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine or a private network (where keys are optional)."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOCAL_NAMES or host.endswith((".localhost", ".local")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def resolve_credentials(name: str, *, api_key: str | None, base_url: str | None,
                        key_env: str, url_env: str) -> tuple[str, str | None]:
    """The API key and base URL to use: arguments first, then the environment.

    A local server with no key gets :data:`LOCAL_API_KEY`; anywhere else a missing key is a
    :class:`~shoal.exceptions.MissingAPIKeyError` that says which variable to set. A base URL
    that is not an ``http(s)://`` URL is a :class:`~shoal.exceptions.ConfigError`.
    """
    url = base_url or os.environ.get(url_env) or None
    if url is not None:
        check_base_url(url, "base_url" if base_url else url_env)
    key = api_key or os.environ.get(key_env) or None
    if key is None:
        if not is_local_url(url):
            raise MissingAPIKeyError(name, key_env)
        key = LOCAL_API_KEY
    return key, url


def check_base_url(url: str, where: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is an ``http://`` or ``https://`` URL.

    ``where`` says where it came from (``base_url``, or the environment variable).
    """
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} {url!r} is not a URL: give the API root as "
                          "http(s)://host[:port][/path], e.g. http://localhost:8080/v1")


def check_model_options(kind: str, model: object, *, name: object, base_url: object,
                        api_key: object, prices: object) -> None:
    """Refuse options of the wrong kind where a provider's model is made.

    ``kind`` is the class (``OpenAIModel``). Taken as they came, a model id that is no text
    made a model named ``openai:5`` or ``anthropic:None``, a ``base_url`` that is no text
    failed with Python's ``AttributeError``, and an entry of ``prices`` that is no
    :class:`~shoal.models.prices.Price` failed every reply as a "malformed response" of the
    server's (a list of prices was quietly never read).
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{kind}'s model must be the provider's model id, a non-empty str; "
                          f"got {type(model).__name__} {shown(model)}")
    for option, value in (("name", name), ("base_url", base_url), ("api_key", api_key)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{kind} {model!r}: {option} must be a str (or None); got "
                              f"{type(value).__name__} {shown(value)}")
    if prices is not None and (not isinstance(prices, Mapping) or not all(
            isinstance(key, str) and isinstance(price, Price) for key, price in prices.items())):
        raise ConfigError(f"{kind} {model!r}: prices must map model ids to "
                          "shoal.models.Price(input=..., output=...) (US dollars per million "
                          f"tokens); got {type(prices).__name__} {shown(prices)}")


def check_timeout(name: str, timeout: object) -> None:
    """Refuse a model's ``timeout`` that is not a positive number of seconds (or ``None``).

    Checked when the model is made: ``0``, ``-1`` or NaN failed every request as a timeout
    (retried, as timeouts are, before the run failed), and ``"30"`` failed the agent with
    Python's ``TypeError``.
    """
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not timeout > 0):  # NaN compares false
        raise ConfigError(f"model {name!r}: timeout must be a positive number of seconds, or "
                          f"None for no limit; got {shown(timeout)}")
    if timeout is not None and not fits_a_float(timeout):  # each request's timer: OverflowError
        raise ConfigError(f"model {name!r}: timeout must be a number of seconds a float can "
                          f"hold (None or math.inf for no limit); got {shown(timeout)}")


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a response asks us to wait: ``retry-after-ms``, else ``retry-after``.

    ``retry-after`` may be seconds (``"2"``, ``"0.5"``) or an HTTP date. ``None`` when neither
    header is there or readable; never negative. A date past year 9999 (past what a
    ``datetime`` holds) is ``inf``, as a number too large for a float is: longer than any wait.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if (millis := _number(lowered.get("retry-after-ms"))) is not None:
        return max(0.0, millis / 1000)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    if (seconds := _number(raw)) is not None:
        return max(0.0, seconds)
    # an HTTP date is rare (servers send seconds): email.utils is loaded for it alone, not with
    # every ``import shoal`` (it costs a few milliseconds)
    from email.utils import parsedate_to_datetime, parsedate_tz

    parts = parsedate_tz(raw)
    if parts is not None and parts[0] > 9999:  # datetime's last year: OverflowError past it
        return math.inf
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _number(text: str | None) -> float | None:
    """The header's number; ``inf`` for one too large for a float, ``None`` for NaN.

    ``1e309`` seconds is longer than any wait, so over ``max_retry_after``: never read as no
    header at all (which backs off and tries again).
    """
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return None if math.isnan(value) else value


#: The most characters of a provider's error body an error quotes (its start and its end).
ERROR_BODY_CHARS = 2_000


def http_error(name: str, status: int, headers: Mapping[str, str], body: object,
               fallback: str, *, model_id: str = "", key_env: str = "") -> ModelHTTPError:
    """A :class:`ModelHTTPError` for an SDK status error, with the provider's own message.

    A refused key (401), a key without the right (403) and an unknown model (404) say so
    first, and what to check. The provider's words are quoted up to
    :data:`ERROR_BODY_CHARS` characters: a proxy's error page of megabytes was the error's
    message whole, in every retry's event and log line, the agent's result and the journal.
    """
    message = bounded_text(_error_message(body) or fallback, ERROR_BODY_CHARS)
    if status == 401:
        message = (f"the API key was refused"
                   f"{f' (check {key_env})' if key_env else ''}: {message}")
    elif status == 403:
        message = f"the API key may not do this (check its project and permissions): {message}"
    elif status == 404:
        message = (f"no model {model_id!r} here (check the model name, and the base URL): "
                   f"{message}" if model_id else f"not found: {message}")
    return ModelHTTPError(name, message, status, parse_retry_after(headers))


def _error_message(body: object) -> str:
    # OpenAI's SDK hands over the inner ``error`` object, Anthropic's the whole body. Some
    # servers list their errors (Gemini's OpenAI-compatible endpoint): the first one says it;
    # a body of no known shape is quoted as it came (chat completions said "Error code: 400").
    if isinstance(body, list) and body and isinstance(body[0], Mapping):
        return _error_message(body[0]) or _body_text(body)
    if not isinstance(body, Mapping):
        return body if isinstance(body, str) else _body_text(body)
    message: Any = body.get("message")
    if isinstance(message, str) and message:
        return message
    inner = body.get("error")
    if isinstance(inner, str) and inner:
        return inner
    return (_error_message(inner) if isinstance(inner, Mapping) else "") or _body_text(body)


def _body_text(body: object) -> str:
    """An error body of no known shape as JSON text (``None``: empty)."""
    if body is None:
        return ""
    try:
        return json.dumps(body, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # not from JSON after all
        return shown(body)


def transport_error(name: str, exc: BaseException,
                    timeout: float | None = None) -> ModelConnectionError | None:
    """A :class:`ModelConnectionError` for a raw transport error, else ``None``.

    A connection that drops while a stream is read surfaces as the HTTP library's own error,
    not the SDK's; the SDKs ship ``httpx`` (or its successor ``httpx2``) under different
    names across versions, so the error is recognised by its ``TransportError`` base. A
    stream that stalled past ``timeout`` (the request's) says so: its error has no text.
    """
    bases = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.startswith("httpx")}
    if "TransportError" not in bases:
        return None
    if "TimeoutException" in bases:
        within = f" within {timeout:g} s" if timeout is not None else ""
        return ModelConnectionError(name, f"the reply stopped coming: no data{within} while "
                                          f"it streamed ({type(exc).__name__})")
    return ModelConnectionError(name, f"connection lost: {str(exc) or type(exc).__name__}")


def stalled(name: str, timeout: float) -> ModelConnectionError:
    """The error for a stream whose next line (or event) did not come whole within ``timeout``.

    The transport's own timeout is per read: a server that trickles a byte at a time, or
    sends its headers that way, never trips it, and the request hung for good.
    """
    return ModelConnectionError(name, f"the reply stopped coming: nothing whole within "
                                      f"{timeout:g} s while it streamed")


class Pace:
    """A deadline on each read of a streamed reply: the next line (or event) within ``within`` s.

    Around each read: :meth:`begin`, the read, :meth:`end`; a read that passed the deadline
    is cancelled, and :meth:`stalled` tells that cancellation from any other. One timer
    serves the whole stream, moved on only when it fires early: ``asyncio.timeout`` around
    each read cost an event about 12 microseconds (a stream is thousands of events), and
    one held across the stream's ``yield`` would fire in its consumer's code.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_since", "_task", "name", "within")

    def __init__(self, name: str, within: float | None) -> None:
        self.name = name  # the model's, for the error
        self.within = within
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None  # the task reading now, if one is
        self._since = 0.0  # when the read began
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    async def read(self, items: AsyncIterator[T]) -> T | None:
        """The next of ``items`` (lines or events: never ``None``) within the deadline.

        ``None`` once there is none. A read past the deadline is a :func:`stalled` error
        (transient: retried).
        """
        self.begin()
        try:
            return await anext(items, None)
        except asyncio.CancelledError:
            if self.stalled():
                raise stalled(self.name, self.within or 0.0) from None
            raise
        finally:
            self.end()

    def begin(self) -> None:
        """A read begins (in the running task)."""
        self._task = asyncio.current_task()
        self._since = self._loop.time()
        if self._handle is None and self.within is not None:  # None: no deadline
            self._handle = self._loop.call_at(self._since + self.within, self._check)

    def end(self) -> None:
        """The read is over, however it ended."""
        self._task = None

    def stalled(self) -> bool:
        """Whether the read was cancelled for passing its deadline (and by nothing else)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0  # another cancellation too: that one wins

    def close(self) -> None:
        """No more reads: drop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._task is None:  # not reading: the next read arms the timer again
            return
        due = self._since + (self.within or 0.0)
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._fired = True
        self._task.cancel()


def text_field(value: object, what: str, *, optional: bool = True) -> str:
    """``value``, a field the API sends as text; ``None`` is empty when ``optional``.

    Anything else is a ``TypeError`` naming the field and quoting the value: the SDKs build
    replies unchecked, and a number or ``null`` where an id or a name belongs went on into
    the conversation (where the next request failed on it, or the agent did).
    """
    if isinstance(value, str):
        return value
    if value is None and optional:
        return ""
    raise TypeError(f"{what} is {shown(value)}, not text")


def unreadable(name: str, exc: ValueError) -> ModelError | None:
    """The error for a reply the SDK's reader could not read as text and JSON, else ``None``.

    Bytes that are not UTF-8, or an integer of more digits than Python reads
    (``sys.get_int_max_str_digits()``, 4,300): the SDKs raised a raw ``UnicodeDecodeError``
    or ``ValueError`` out of the request (the latter advising a setting that is no business
    of the person running the agent).
    """
    if isinstance(exc, UnicodeDecodeError):
        byte = bytes(exc.object[exc.start:exc.start + 1])
        return ModelError(name, f"the reply is not UTF-8 text (byte 0x{byte.hex()} at "
                                f"position {exc.start:,}: {exc.reason}): the server is off "
                                f"the protocol")
    if "integer string conversion" not in str(exc):  # CPython's words for that limit
        return None
    return ModelError(name, f"the reply holds a number too long to read (more than "
                            f"{sys.get_int_max_str_digits():,} digits): the server is off the "
                            f"protocol")


def not_a_reply(name: str, body: object) -> ModelError:
    """The error for a 200 answer whose body is no JSON object (an HTML page, plain text).

    The SDKs hand such a body over as its text instead of the reply they promise.
    """
    return ModelError(name, f"the reply is not a JSON object: {shown(body)}")


def too_deep(name: str, exc: RecursionError) -> ModelError:
    """The error for a reply (or a stream's event) nested deeper than JSON can be read.

    Python's JSON reader recurses once a level: a body 100,000 arrays deep raised the
    reader's own ``RecursionError`` out of the model, where a reply off the protocol is a
    :class:`ModelError` (not retried: the server would send it again).
    """
    return ModelError(name, f"the reply is nested too deeply to read ({exc})")


async def not_a_stream(name: str, response: Any, within: float | None) -> ModelError | None:
    """The error for an answer to a streamed request that is no event stream, else ``None``.

    ``response`` is the ``httpx`` response. A server that ignores ``stream`` (and answers a
    whole JSON reply) or a proxy's HTML page has a ``content-type`` other than
    ``text/event-stream``; read as events, it held none, and the reply was silently empty.
    The error quotes the start of the body (what of it came ``within`` seconds). No
    ``content-type`` at all is taken as a stream.
    """
    kind = str(response.headers.get("content-type") or "")
    if kind.split(";", 1)[0].strip().lower() in ("", "text/event-stream"):
        return None
    start = b""
    with contextlib.suppress(Exception):  # only for the message: the answer is wrong anyway
        async with asyncio.timeout(within):
            async for piece in response.aiter_bytes():
                start += piece
                if len(start) >= 200:
                    break
    text = start[:200].decode("utf-8", "replace")
    return ModelError(name, f"the reply to a streamed request is not an event stream "
                            f"(content-type {shown(kind)}): {shown(text)}")


def describe_cause(exc: BaseException) -> str:
    """What lies under an SDK's generic "Connection error.", in a few words.

    The innermost cause decides: ``connection refused``, ``name not resolved``, or the
    transport's own error.
    """
    cause: BaseException | None = exc.__cause__ or exc.__context__
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "name not resolved (no network, or a wrong host name)"
        if isinstance(cause, TimeoutError):
            return "timed out"
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            text = str(cause)
            if "refused" in text.lower() or "all connection attempts failed" in text.lower():
                return "connection refused"
            return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        cause, seen = inner, seen + 1
    return "no detail"


def unreachable(name: str, url: object, exc: BaseException) -> ModelConnectionError:
    """``cannot reach api.openai.com: connection refused`` for a request that got nowhere.

    A request whose connection was made and then broke (reset, closed before the reply was
    whole or began) says ``connection to api.openai.com lost: ...``: "cannot reach" sent
    people checking the URL and the network of a server that had answered.
    """
    parts = urlsplit(str(url))
    where = parts.netloc.rpartition("@")[2] or str(url)
    said = f"connection to {where} lost" if _connected(exc) else f"cannot reach {where}"
    return ModelConnectionError(name, f"{said}: {describe_cause(exc)}")


#: httpx's errors of a connection that was made (it read or wrote, then broke), by name: the
#: SDKs ship httpx under other names across versions (see :func:`transport_error`)
_AFTER_CONNECTING = frozenset({"ReadError", "WriteError", "CloseError", "RemoteProtocolError"})


def _connected(exc: BaseException) -> bool:
    """Whether an SDK's connection error broke a connection it had made (see ``unreachable``)."""
    cause: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(10):  # bounded, as describe_cause: a chain may loop
        if cause is None:
            return False
        if any(cls.__name__ in _AFTER_CONNECTING and cls.__module__.startswith("httpx")
               for cls in type(cause).__mro__):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


_notices: ContextVar[Callable[[Event], None] | None] = ContextVar("shoal_model_notices",
                                                                  default=None)


class notices_to:  # a function once: its lower-case name stays
    """Within the block, :func:`notify` from this task's model calls goes to ``sink``.

    A class, not ``contextlib.contextmanager``: a streamed model reply enters it once per
    event, and the generator and its wrapper per entry were most of a stream step's objects.
    """

    __slots__ = ("_sink", "_token")

    def __init__(self, sink: Callable[[Event], None] | None) -> None:
        self._sink = sink
        self._token: Token[Callable[[Event], None] | None] | None = None

    def __enter__(self) -> None:
        # nothing to set when the sink is the one in force already (mostly: none, when no one
        # listens): each set makes the task's context anew, objects that each step then kept
        if _notices.get() is not self._sink:
            self._token = _notices.set(self._sink)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _notices.reset(self._token)
            self._token = None


def notify(event: Event) -> None:
    """Tell whoever sent the current request about the model (say, its server is starting).

    The event's ``run_id``, ``time`` and ``lineage`` are filled in by the receiver. A sink
    that fails is logged, never fatal.
    """
    sink = _notices.get()
    if sink is None:
        return
    deliver(sink, event, "a model event sink")  # its bug must not fail the request it observes


class PerLoop(Generic[T]):
    """One value (an SDK client) per running event loop, made on first use.

    An HTTP client's pooled connections belong to the loop that opened them: a model reused by
    a second ``asyncio.run`` (``agent.run_sync`` twice) must not touch the first loop's
    connections. Entries go when their loop is garbage collected.

    With ``close``, a value is also closed on its own loop when that loop shuts down (as
    ``asyncio.run`` does at its end), so a program that never calls the model's ``aclose()``
    leaves no open connection behind. The hook is the loop's own: a loop finalizes the
    asynchronous generators still alive before it closes (``shutdown_asyncgens``), and each
    value has one, started and parked, whose ``finally`` closes it.
    """

    def __init__(self, make: Callable[[], T],
                 close: Callable[[T], Awaitable[None]] | None = None) -> None:
        self._make = make
        self._close = close
        self._values: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None, None] | None]] = (
            weakref.WeakKeyDictionary())

    def get(self) -> T:
        """The value for the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._values.get(loop)
        if entry is None:
            value = self._make()
            entry = self._values[loop] = (value, self._closer(value))
        return entry[0]

    async def aclose(self) -> None:
        """Close the running loop's value now, if it has one, and forget it."""
        entry = self._values.pop(asyncio.get_running_loop(), None)
        if entry is None:
            return
        value, closer = entry
        if closer is not None:
            await closer.aclose()  # its finally closes the value, once
        elif self._close is not None:
            await self._close(value)

    def _closer(self, value: T) -> AsyncGenerator[None, None] | None:
        """A parked generator that closes ``value`` when it is finalized (see the class)."""
        close = self._close
        if close is None:
            return None

        async def closer() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                await close(value)

        generator = closer()
        step = generator.__anext__()  # registers it with the running loop's finalizer hook
        with contextlib.suppress(StopIteration):
            step.send(None)  # runs it to its ``yield`` without a loop turn: parked there
        return generator


def token_count(value: object) -> int:
    """A token count a server reported: a whole number 0 or more, else 0.

    Compatible servers send nulls, floats, strings and negatives; none of them may end a run.
    """
    return reported_count(value) or 0


def reported_count(value: object) -> int | None:
    """A token count a server reported, if it is one (a whole number 0 or more), else ``None``.

    A whole float (``12.0``) counts; a string, a negative, a fraction, a null do not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def counted_tokens(tokens_in: object, tokens_out: object, request: ModelRequest, text: str,
                   calls: Sequence[ToolCall]) -> tuple[int, int]:
    """The input and output tokens of a reply: as its server reported them, or at least.

    A count that is none (missing, a null, a string, a negative) is the lower bound
    :func:`unreported_tokens` puts on it: counted as no tokens, a reply of 20,000 characters
    never reached a ``Budget(tokens=)``, which then held nothing.
    """
    counted_in, counted_out = reported_count(tokens_in), reported_count(tokens_out)
    if counted_in is None or counted_out is None:
        least_in, least_out = unreported_tokens(request, text, calls)
        counted_in = least_in if counted_in is None else counted_in
        counted_out = least_out if counted_out is None else counted_out
    return counted_in, counted_out


def priced_usage(model: str, served_by: str, tokens_in: object, tokens_out: object,
                 prices: Mapping[str, Price] | None, *, cache_read: object = 0,
                 cache_write: object = 0, provider: str | None = None) -> Usage:
    """One request's usage, with its cost where the model (or the id that served it) is known.

    ``tokens_in`` counts every input token, the ``cache_read`` and ``cache_write`` ones
    included; ``provider`` is the genai-prices provider id to price at (see
    :func:`~shoal.models.prices.provider_for_url`). Some compatible servers report no usage,
    or nulls: the request still counts. Cache counts a server reports beyond the input are cut
    to it.
    """
    tokens_in, tokens_out = token_count(tokens_in), token_count(tokens_out)
    read = min(token_count(cache_read), tokens_in)
    write = min(token_count(cache_write), tokens_in - read)
    price = None
    for model_id in (model, served_by) if served_by and served_by != model else (model,):
        price = cost(model_id, tokens_in, tokens_out, prices, cache_read_tokens=read,
                     cache_write_tokens=write, provider=provider)
        if price is not None:
            break
    return Usage(tokens_in, tokens_out, 1, price, read, write)


#: Characters counted as one token where a server reports none: tokenizers average about 4
#: a token, so this is a lower bound (the one ``Budget(tokens=)`` puts on a streaming reply).
UNREPORTED_CHARS_PER_TOKEN = 16


def unreported_tokens(request: ModelRequest, text: str,
                      calls: Sequence[ToolCall]) -> tuple[int, int]:
    """A lower bound on the input and output tokens of a reply whose server reported none.

    A token per :data:`UNREPORTED_CHARS_PER_TOKEN` characters of the request's instructions
    and messages, and of the reply's text and calls; at least one each.
    """
    asked = len(request.instructions) + sum(_chars(m) for m in request.messages)
    said = len(text) + sum(len(c.name) + len(c.arguments) for c in calls)
    return (max(asked // UNREPORTED_CHARS_PER_TOKEN, 1),
            max(said // UNREPORTED_CHARS_PER_TOKEN, 1))


def _chars(message: Message) -> int:
    calls = getattr(message, "tool_calls", ())
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in calls)


def sendable(params: dict[str, Any]) -> dict[str, Any]:
    r"""``params`` as a provider's JSON body can carry them.

    Text a model or a tool produced can hold lone surrogates (the escape ``\ud800`` is valid
    JSON, but not UTF-8) and arguments a model sent can hold ``NaN``; the SDKs would fail to
    encode the next request and end the run. Lone surrogates become U+FFFD and non-finite
    numbers the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Most requests need no
    change: they are checked at C speed first, and returned as they are.
    """
    try:
        json.dumps(params, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        repaired: dict[str, Any] = _repaired(params)
        return repaired
    return params


def _repaired(value: Any) -> Any:
    """``value`` with each string and non-finite float in it made sendable (see ``sendable``).

    Walked with a stack of its own, not by recursion: a model's arguments nested as deep as
    JSON text can carry them (an Anthropic call's ``input`` goes back as an object) fit
    ``json.dumps``, which runs in C, but not Python's recursion limit.
    """
    if not isinstance(value, dict | list | tuple):
        return _repaired_leaf(value)
    top: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[Iterator[Any], dict[Any, Any] | list[Any]]] = [
        (iter(value.items()) if isinstance(value, dict) else iter(value), top)]
    while stack:
        items, out = stack[-1]
        for item in items:
            if isinstance(out, dict):
                key, item = item
                key = _repaired_leaf(key)
            if isinstance(item, dict | list | tuple):
                inner: dict[Any, Any] | list[Any] = {} if isinstance(item, dict) else []
                if isinstance(out, dict):
                    out[key] = inner
                else:
                    out.append(inner)
                stack.append((iter(item.items()) if isinstance(item, dict) else iter(item),
                              inner))
                break
            if isinstance(out, dict):
                out[key] = _repaired_leaf(item)
            else:
                out.append(_repaired_leaf(item))
        else:
            stack.pop()
    return top


def sendable_text(text: str) -> str:
    """``text`` as :func:`sendable` sends it: each lone surrogate U+FFFD (ASCII as it is)."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _repaired_leaf(value: Any) -> Any:
    if isinstance(value, str):
        return sendable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value
