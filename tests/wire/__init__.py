"""Test servers that speak the providers' real wire protocols over real HTTP on 127.0.0.1.

The SDKs under test (``openai``, ``anthropic``) talk to these exactly as they would to the
providers: no mocks, no patched clients. Each server runs on a background thread with a free
port, so it works under any event loop.

::

    from tests.wire import OpenAIWireServer, call, text_reply, tool_call_reply

    def responder(body):                          # the parsed JSON request body
        if body["messages"][-1]["role"] == "tool":
            return text_reply("done")
        return tool_call_reply(call("search", {"q": "a"}), call("search", {"q": "b"}))

    with OpenAIWireServer(responder) as server:   # or the fixtures in tests.wire.fixtures
        model = server.model("gpt-4.1-mini")      # an OpenAIModel pointed at server.url
        ...
        server.requests                           # every request: .body, .headers, .status, .at
        server.errors                             # protocol problems a real API would reject

Answers (:mod:`tests.wire.replies`): :func:`text_reply`, :func:`tool_call_reply` with
:func:`call`, :class:`Reply` (tokens, ``delay``, ``chunk_delay``, ``model``),
:class:`ErrorReply` (status, ``retry_after``, ``mid_stream``), or a raw ``dict``. The
responder may also be a single answer, or a list used one answer per request.

Failures and timing (chainable): ``fail_every(3, status=429, retry_after=0.05)``,
``fail_next(2, status=500)``, ``clear_failures()``, ``delay(0.2)``. ``max_in_flight`` is the
most requests the server was handling at once.

``OpenAIWireServer.url`` ends in ``/v1`` (OpenAI's base URL); ``AnthropicWireServer.url`` is
the bare root (the SDK adds ``/v1``). ``server.client()`` / ``server.sync_client()`` give a raw
SDK client pointed at the server, with SDK retries off. :func:`closed_port_url` gives a URL
where connections are refused.
"""

from tests.wire.anthropic_server import AnthropicWireServer
from tests.wire.base import Recorded, WireServer, closed_port_url
from tests.wire.openai_server import OpenAIWireServer
from tests.wire.replies import (
    ErrorReply,
    RawReply,
    Reply,
    Responder,
    WireToolCall,
    call,
    text_reply,
    tool_call_reply,
)

__all__ = [
    "AnthropicWireServer",
    "ErrorReply",
    "OpenAIWireServer",
    "RawReply",
    "Recorded",
    "Reply",
    "Responder",
    "WireServer",
    "WireToolCall",
    "call",
    "closed_port_url",
    "text_reply",
    "tool_call_reply",
]
