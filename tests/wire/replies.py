"""What a wire server answers: provider-neutral replies that each server renders in its protocol.

A responder returns one of:

- :class:`Reply` — a successful answer (text and/or tool calls, usage), rendered as the
  provider's JSON or, when the request asked to stream, as its SSE event stream;
- :class:`ErrorReply` — an error status with the provider's error body (optionally with
  ``Retry-After``), or with ``mid_stream=True`` an error event inside a started stream;
- a ``dict`` — sent verbatim as a 200 JSON body (for shapes the helpers do not cover).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ErrorReply",
    "RawReply",
    "Reply",
    "Responder",
    "WireToolCall",
    "call",
    "text_reply",
    "tool_call_reply",
]


@dataclass(frozen=True)
class WireToolCall:
    """One tool call in a reply. ``arguments`` as a dict is encoded as JSON; a string is sent
    verbatim (so a test can send malformed JSON: OpenAI in both modes, Anthropic only when
    streaming, as its JSON answer carries an object). ``id`` defaults to a fresh server id."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments))


@dataclass(frozen=True)
class Reply:
    """A successful model answer.

    ``input_tokens`` / ``output_tokens`` default to a deterministic estimate from the request and
    reply sizes. ``delay`` waits before answering; ``chunk_delay`` waits between stream events.
    ``model`` overrides the model id echoed back (e.g. a dated snapshot id).
    ``cache_read_tokens`` / ``cache_write_tokens`` are the part of ``input_tokens`` read from /
    written to the prompt cache, reported the way each provider does.
    """

    text: str = ""
    tool_calls: tuple[WireToolCall, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: str | None = None
    model: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class ErrorReply:
    """An error answer: ``status`` with the provider's error body and ``message``.

    ``retry_after`` sets ``Retry-After`` (seconds); ``headers`` adds any others (e.g.
    ``retry-after-ms``). With ``mid_stream=True`` a streaming request first gets a 200 and the
    start of the stream, then the error as an event, the way providers report overload mid-way.
    """

    status: int
    message: str = "injected error"
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    mid_stream: bool = False


@dataclass(frozen=True)
class RawReply:
    """Bytes answered as they are, whatever the request asked: a server off the protocol.

    ``status`` and ``content_type`` go in the head (with ``content-length``); ``pause`` waits
    that many seconds after each byte of the body, and ``head_pause`` after each byte of the
    head, the way a server that trickles its answer a byte at a time sends it. With ``reset``
    the connection is reset (a TCP RST) once the body is out, its ``content-length`` promising
    more: a server that falls over mid-answer.
    """

    body: bytes
    content_type: str = "text/html"
    status: int = 200
    pause: float = 0.0
    head_pause: float = 0.0
    reset: bool = False


#: Takes the parsed JSON body of one request, returns what to answer. Called on server
#: threads, possibly several at once: keep shared state behind a lock.
Responder = Callable[[dict[str, Any]], "Reply | ErrorReply | RawReply | dict[str, Any]"]


def call(name: str, arguments: Mapping[str, Any] | str | None = None, *,
         id: str | None = None) -> WireToolCall:
    """A tool call for :func:`tool_call_reply`: ``call("search", {"query": "x"})``."""
    return WireToolCall(name, {} if arguments is None else arguments, id)


def text_reply(text: str, **options: Any) -> Reply:
    """A plain text answer; ``options`` are :class:`Reply` fields (tokens, delays...)."""
    return Reply(text=text, **options)


CallLike = WireToolCall | tuple[str, Mapping[str, Any] | str]


def tool_call_reply(*calls: CallLike, text: str = "", **options: Any) -> Reply:
    """An answer asking for ``calls`` in this order (parallel tool calls when several).

    Each call is a :func:`call` or a ``(name, arguments)`` tuple.
    """
    return Reply(text=text, tool_calls=tuple(_as_call(c) for c in calls), **options)


def _as_call(value: CallLike) -> WireToolCall:
    if isinstance(value, WireToolCall):
        return value
    name, arguments = value
    return WireToolCall(name, arguments)


def estimate_tokens(value: object) -> int:
    """A stable stand-in for a token count: about four characters a token."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return len(text) // 4 + 1


def pieces(text: str, count: int = 3) -> list[str]:
    """``text`` cut into up to ``count`` non-empty pieces, to stream it in several events."""
    if not text:
        return []
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)]


def words(text: str) -> list[str]:
    """``text`` cut after each space, the way models stream text."""
    out: list[str] = []
    start = 0
    for i, char in enumerate(text):
        if char == " ":
            out.append(text[start:i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out

