"""Anthropic's messages API through the official ``anthropic`` SDK.

:class:`AnthropicModel` sends a :class:`~shoal.models.base.ModelRequest` as a messages request
(``pip install 'shoal[anthropic]'``): instructions as ``system``, tools with their
``input_schema``, the model's tool calls as ``tool_use`` blocks and results as ``tool_result``
blocks, all results of one turn in one user message. Streaming reads the raw event stream. The
SDK's own retries are off: :class:`~shoal.models.retry.ModelGate` retries, once per model.

``output_schema`` is not sent: structured output is not available on every Claude model or SDK
version, and the agent validates the final answer (and asks again) either way.

Credentials: ``api_key`` or ``ANTHROPIC_API_KEY``; ``base_url`` or ``ANTHROPIC_BASE_URL``. A
server on this machine or a private network needs no key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.exceptions import (
    ConfigError,
    MissingDependencyError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
)
from shoal.merge import shown
from shoal.models._common import (
    Pace,
    PerLoop,
    StreamedText,
    check_model_options,
    check_timeout,
    counted_tokens,
    cut_short,
    describe_cause,
    http_error,
    not_a_reply,
    not_a_stream,
    priced_usage,
    reported_count,
    resolve_credentials,
    sendable,
    sent_tool_name,
    text_field,
    token_count,
    too_deep,
    transport_error,
    unreachable,
    unreadable,
)
from shoal.models.base import (
    AssistantMessage,
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
)
from shoal.models.prices import Price, catalog_loading, provider_for_url

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from anthropic.types import Message as AnthropicMessage
    from anthropic.types import RawMessageStreamEvent
    from anthropic.types import Usage as AnthropicUsage

__all__ = ["AnthropicModel", "anthropic_messages", "anthropic_tools", "tool_result_block"]

#: ``max_tokens`` is required by the API; this is sent when the settings do not say.
DEFAULT_MAX_TOKENS = 4096

# An error event inside a stream arrives on a 200 response; its type says what the status
# would have been, which decides whether shoal retries it.
_ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "overloaded_error": 529,
}


def _require_sdk() -> None:
    try:
        import anthropic  # noqa: F401
    except ImportError:
        raise MissingDependencyError("anthropic", "anthropic") from None


class AnthropicModel(Model):
    """A Claude model behind the Anthropic messages API.

    Args:
        model: the model id, e.g. ``"claude-sonnet-4-5"``.
        base_url: the API root without ``/v1`` (default ``ANTHROPIC_BASE_URL``, else
            Anthropic's).
        api_key: the key (default ``ANTHROPIC_API_KEY``; a local ``base_url`` needs none).
        name: how shoal names the model in events and rate limits (``"anthropic:<model>"``).
        timeout: seconds for one request, streamed or not.
        max_tokens: the answer's token cap when the request's settings give none.
        client: an ``anthropic.AsyncAnthropic`` to use instead of making one; its retries are
            turned off for shoal's requests. ``base_url`` and ``api_key`` are then ignored.
        prices: your own prices for ``Usage.cost``, looked up before genai-prices' (see
            :mod:`shoal.models.prices`).

    Raises:
        MissingDependencyError: the ``anthropic`` package is not installed.
        MissingAPIKeyError: no API key for a non-local server.
        ConfigError: ``base_url`` (or the environment's) is not an ``http(s)://`` URL.
    """

    streams_tool_calls = True  # agents start each call as soon as it has streamed in

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 name: str | None = None, timeout: float = 120.0,
                 max_tokens: int = DEFAULT_MAX_TOKENS, client: AsyncAnthropic | None = None,
                 prices: Mapping[str, Price] | None = None) -> None:
        _require_sdk()
        check_model_options("AnthropicModel", model, name=name, base_url=base_url, api_key=api_key,
                            prices=prices)
        self.model = model
        self.name = name or f"anthropic:{model}"
        check_timeout(self.name, timeout)
        self.timeout = timeout
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"model {self.name!r}: max_tokens must be a whole number, 1 or "
                              f"more (the API requires it); got {shown(max_tokens)}")
        self.max_tokens = max_tokens
        self._prices = prices
        self._given = client.with_options(max_retries=0) if client is not None else None
        self._api_key, self._base_url = ("", None) if client is not None else resolve_credentials(
            self.name, api_key=api_key, base_url=base_url,
            key_env="ANTHROPIC_API_KEY", url_env="ANTHROPIC_BASE_URL")
        # which provider's prices apply: Anthropic's, unless the URL is another provider's
        self._pricing_url = str(client.base_url) if client is not None else self._base_url
        self._clients = PerLoop(self._new_client, _close_client)

    def _client(self) -> AsyncAnthropic:
        """The SDK client to use on the running event loop."""
        return self._given if self._given is not None else self._clients.get()

    def _new_client(self) -> AsyncAnthropic:
        import anthropic

        # Our own HTTP client, not the SDK's default one: that one closes itself from __del__
        # by starting a task on whatever loop is running then, which fails on a foreign loop.
        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url,
                                        timeout=self.timeout, max_retries=0,
                                        http_client=anthropic.DefaultAsyncHttpxClient())

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Send one messages request and return the whole response."""
        client = self._client()
        prices = catalog_loading()  # loads in a thread while the request runs
        with self._sdk_errors():
            try:  # the transport's timeout is per read: a server trickling bytes never trips it
                async with asyncio.timeout(self.timeout):
                    message: AnthropicMessage = await client.messages.create(
                        **sendable(self._params(request)))
            except TimeoutError:
                raise ModelConnectionError(
                    self.name, f"no answer within {self.timeout:g} s") from None
        if prices is not None:
            await prices
        return self._response(message, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream a messages request: text and complete tool calls as they arrive, then all.

        A tool call is complete at its ``content_block_stop``. A stream that ends before its
        ``message_stop`` was cut short: a :class:`~shoal.exceptions.ModelConnectionError`
        (retried).
        """
        from anthropic import APIConnectionError

        client = self._client()
        state = _StreamState()
        prices = catalog_loading()  # loads in a thread while the reply streams
        with self._sdk_errors():
            # each event must come whole within the timeout (the transport's is per read: a
            # server trickling bytes never trips it), and so must the headers
            try:
                async with asyncio.timeout(self.timeout):
                    events = await client.messages.create(**sendable(self._params(request)),
                                                          stream=True)
            except TimeoutError:
                raise ModelConnectionError(
                    self.name, f"no answer within {self.timeout:g} s") from None
            pace = Pace(self.name, self.timeout)
            try:
                async with events:
                    if (wrong := await not_a_stream(self.name, events.response,
                                                    self.timeout)) is not None:
                        raise wrong
                    stream = aiter(events)
                    while (event := await pace.read(stream)) is not None:
                        if text := self._take(state, event):
                            yield TextDelta(text)
                        while state.finished:
                            yield ToolCallDone(*state.finished.pop(0))
            except APIConnectionError as exc:  # the SDK's, for a connection lost mid-stream
                if type(exc) is not APIConnectionError:  # its timeout: said in _sdk_errors
                    raise
                raise ModelConnectionError(self.name, f"connection lost while the reply "
                                                      f"streamed: {describe_cause(exc)}") from exc
            finally:
                pace.close()
        if not state.stopped:  # the connection closed early: the reply may be cut mid-text
            raise cut_short(self.name, "no message_stop event")
        if rest := state.text.end():  # a first half that no second followed
            yield TextDelta(rest)
        if prices is not None:
            await prices
        yield ResponseDone(self._finish(state, request))

    def _take(self, state: _StreamState, event: RawMessageStreamEvent) -> str:
        """``state.add(event)``; an event off the protocol is a :class:`ModelError`."""
        try:
            return state.add(event)
        except _OffProtocol as exc:  # say so, never drop the model's work without a word
            raise ModelError(self.name, f"the stream broke the protocol: {exc}") from None
        except (AttributeError, TypeError) as exc:  # the SDK builds events unchecked: an
            # event missing a field (a block start with no block) has None in its place
            raise ModelError(self.name, f"the stream broke the protocol: a "
                                        f"{getattr(event, 'type', 'nameless')!r} event of the "
                                        f"wrong shape ({exc})") from None

    async def aclose(self) -> None:
        """Close this loop's connections of the client this model made (never one passed in)."""
        await self._clients.aclose()

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        self._check_user_text(request.messages)
        settings = request.settings
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.output_tokens(self.max_tokens),
            "messages": anthropic_messages(request.messages),
        }
        if request.instructions:
            params["system"] = request.instructions
        if request.tools:
            params["tools"] = anthropic_tools(request.tools)
            if settings.parallel_tool_calls is False:
                params["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
        # temperature goes in the raw body: newer SDKs no longer accept it as an argument,
        # while the API still does for the models that support it
        extra = {} if settings.temperature is None else {"temperature": settings.temperature}
        extra.update(settings.extra)
        if extra:
            params["extra_body"] = extra
        return params

    def _check_user_text(self, messages: Sequence[Message]) -> None:
        """Refuse a user message with no text but whitespace, before the request is sent.

        The API answers it with HTTP 400 ("text content blocks must contain non-whitespace
        text", or, an empty one being left out, "messages: at least one message is required"),
        which named no cause a caller could act on; a blank prompt has no task to do.
        """
        for n, message in enumerate((m for m in messages if isinstance(m, UserMessage)), 1):
            if not message.content.strip():
                which = "the prompt" if n == 1 else f"user message {n} of the conversation"
                blank = "empty" if not message.content else "only whitespace"
                raise ModelError(self.name, f"{which} is {blank}: the Anthropic API refuses a "
                                            "user message without text; give it a task")

    def _response(self, message: AnthropicMessage, request: ModelRequest) -> ModelResponse:
        """The SDK's message as shoal's response; one of the wrong shape is a ModelError.

        The SDK builds responses unchecked: a server off the protocol (content as text)
        leaves a field of the wrong type, or ``None``, in its place.
        """
        if isinstance(message, str):  # the SDK's answer to a body that is no JSON
            raise not_a_reply(self.name, message)
        try:
            return self._read(message, request)
        except (AttributeError, TypeError) as exc:
            raise ModelError(self.name, f"malformed response ({exc})") from None

    def _read(self, message: AnthropicMessage, request: ModelRequest) -> ModelResponse:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                texts.append(text_field(block.text, "a text block's text"))
            elif block.type == "tool_use":
                calls.append(ToolCall(text_field(block.id, "a tool_use block's id",
                                                 optional=False),
                                      text_field(block.name, "a tool_use block's name",
                                                 optional=False), json.dumps(block.input)))
        state = _StreamState()
        state.take_usage(getattr(message, "usage", None))  # left out: None
        text = "".join(texts)
        return ModelResponse(text=text, tool_calls=tuple(calls),
                             usage=self._usage(state, message.model, request, text, calls),
                             model=text_field(message.model, "model") or self.model,
                             stop_reason=text_field(message.stop_reason, "stop_reason"))

    def _finish(self, state: _StreamState, request: ModelRequest) -> ModelResponse:
        calls = tuple(ToolCall(c.id, c.name, c.text())
                      for c in state.calls)
        text = state.text.text
        return ModelResponse(text=text, tool_calls=calls,
                             usage=self._usage(state, state.model, request, text, calls),
                             model=state.model or self.model, stop_reason=state.stop_reason)

    def _usage(self, state: _StreamState, served_by: str, request: ModelRequest, text: str,
               calls: Sequence[ToolCall]) -> Usage:
        """The reply's usage; a count the server did not report is charged at least.

        See :func:`counted_tokens`: the cached input tokens count among the input's.
        """
        read, write = state.cache_read_tokens, state.cache_write_tokens
        tokens_in = None if state.input_tokens is None else state.input_tokens + read + write
        tokens_in, tokens_out = counted_tokens(tokens_in, state.output_tokens, request, text,
                                               calls)
        return priced_usage(self.model, served_by, max(tokens_in, read + write),
                            tokens_out, self._prices, cache_read=read,
                            cache_write=write,
                            provider=provider_for_url(self._pricing_url, "anthropic"))

    @contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Turn the SDK's errors into shoal's, so ModelGate can tell transient ones apart."""
        import anthropic

        try:
            yield
        except anthropic.APIStatusError as exc:
            error = http_error(self.name, exc.status_code, exc.response.headers, exc.body,
                               exc.message, model_id=self.model, key_env="ANTHROPIC_API_KEY")
            if exc.status_code < 400:  # an error event inside a 200 stream
                error = ModelHTTPError(self.name, error.detail, _stream_error_status(exc.body),
                                       error.retry_after)
            raise error from exc
        except anthropic.APITimeoutError as exc:
            raise ModelConnectionError(
                self.name, f"no answer within {self.timeout:g} s") from exc
        except anthropic.APIConnectionError as exc:
            raise unreachable(self.name, exc.request.url, exc) from exc
        except anthropic.AnthropicError as exc:
            raise ModelError(self.name, str(exc)) from exc
        except json.JSONDecodeError as exc:  # the SDK reads each event's data as JSON
            raise ModelError(self.name, f"malformed stream data ({exc.msg}): "
                                        f"{exc.doc[:200]!r}") from exc
        except RecursionError as exc:  # the reader's, for JSON nested too deep to read
            raise too_deep(self.name, exc) from None
        except ValueError as exc:  # the reader's: bytes not UTF-8, a number too long
            if (unread := unreadable(self.name, exc)) is not None:
                raise unread from None
            raise
        except Exception as exc:
            if (lost := transport_error(self.name, exc, self.timeout)) is not None:
                raise lost from exc
            raise


def _stream_error_status(body: object) -> int:
    error = body.get("error", body) if isinstance(body, Mapping) else None
    kind = error.get("type") if isinstance(error, Mapping) else None
    return _ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500


@dataclass(slots=True)
class _PartialCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    #: the input its block's start gave (the API's is ``{}``, its deltas the whole input;
    #: some compatible gateways give it whole there, and no delta): JSON text, or ""
    given: str = ""

    def text(self) -> str:
        """The call's arguments as JSON text: its deltas', else its start's, else ``{}``."""
        return "".join(self.arguments) or self.given or "{}"


class _OffProtocol(ValueError):
    """A stream event the messages API never sends in that place (a block never started)."""


@dataclass(slots=True)
class _StreamState:
    """A streamed message put back together from its raw events.

    Tool calls are kept in the order their blocks began. An event for a block never started
    is ``_OffProtocol`` (its arguments were dropped without a word); a block index started
    again after its stop begins a new call (the second start replaced the first call, whose
    result then answered no call of the reply, and the second call never ran); a block
    stopped twice is reported once.
    """

    text: StreamedText = field(default_factory=StreamedText)
    calls: list[_PartialCall] = field(default_factory=list)  # in the order their blocks began
    open: dict[int, int] = field(default_factory=dict)  # a tool block's index -> its position
    started: set[int] = field(default_factory=set)  # every block index begun (text too)
    #: not read from or written to the prompt cache (``None``: the server said no count;
    #: so is a stream without a message_start, which some compatible gateways send)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str = ""
    stop_reason: str = ""
    stopped: bool = False  # message_stop seen: the message is complete
    finished: list[tuple[int, ToolCall]] = field(default_factory=list)  # complete, unreported

    def add(self, event: RawMessageStreamEvent) -> str:
        """Take in one event; return its text (empty when it carries none)."""
        if event.type == "message_start":
            self.model = text_field(event.message.model, "model")
            self.take_usage(event.message.usage)
        elif event.type == "content_block_start":
            return self._start(event.index, event.content_block)
        elif event.type == "content_block_delta":
            self._known(event.index, event.type)
            delta = event.delta
            if delta.type == "text_delta":
                return self._text(text_field(delta.text, "a text_delta's text"))
            if delta.type == "input_json_delta" and event.index in self.open:
                if not isinstance(delta.partial_json, str):
                    raise _OffProtocol(f"partial_json of block {event.index} is not text")
                self.calls[self.open[event.index]].arguments.append(delta.partial_json)
        elif event.type == "content_block_stop":
            self._known(event.index, event.type)
            position = self.open.pop(event.index, None)
            if position is not None:  # not a text block, nor one stopped already
                call = self.calls[position]
                self.finished.append((position, ToolCall(call.id, call.name,
                                                         call.text())))
        elif event.type == "message_stop":
            self.stopped = True
        elif event.type == "message_delta":
            self.stop_reason = (text_field(event.delta.stop_reason, "stop_reason")
                                or self.stop_reason)
            self.output_tokens = reported_count(event.usage.output_tokens)  # cumulative
        return ""

    def _start(self, index: int, block: Any) -> str:
        if index in self.open:
            raise _OffProtocol(f"content block {index} started again before it stopped")
        self.started.add(index)
        if block.type == "tool_use":
            self.open[index] = len(self.calls)
            given = getattr(block, "input", None)
            self.calls.append(_PartialCall(
                text_field(block.id, "a tool_use block's id", optional=False),
                text_field(block.name, "a tool_use block's name", optional=False),
                given=json.dumps(given, ensure_ascii=False) if given else ""))
        elif block.type == "text":
            return self._text(text_field(block.text, "a text block's text"))
        return ""

    def _known(self, index: int, kind: str) -> None:
        if index not in self.started:
            raise _OffProtocol(f"{kind} for content block {index}, which was never started")

    def take_usage(self, usage: AnthropicUsage | None) -> None:
        """Take the counts of a message's usage (Anthropic counts cached input apart).

        A message without usage (``null`` or left out, some compatible servers) reports no
        count: each is then charged at least what the reply says (see ``_usage``), as a
        stream's or an OpenAI reply's is, rather than failing the request.
        """
        if usage is None:
            return
        self.input_tokens = reported_count(usage.input_tokens)
        self.output_tokens = reported_count(usage.output_tokens)
        self.cache_read_tokens = token_count(usage.cache_read_input_tokens)
        self.cache_write_tokens = token_count(usage.cache_creation_input_tokens)

    def _text(self, text: str) -> str:
        return self.text.add(text)


def anthropic_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation as Messages API messages.

    Consecutive messages of one role become one message of content blocks, so every result of
    a turn goes back in the single user message the API expects after ``tool_use`` blocks.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue  # the API rejects empty content
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(message, UserMessage):
        return "user", _text_blocks(message.content)
    if isinstance(message, AssistantMessage):
        uses = [{"type": "tool_use", "id": c.id, "name": sent_tool_name(c.name), "input": _input(c)}
                for c in message.tool_calls]
        # text of nothing but whitespace ("\n\n" before a call, a blank answer sent back as
        # empty) is left out: the API refuses it ("text content blocks must contain
        # non-whitespace text"), and with it every later request of the conversation
        text = message.content if message.content.strip() else ""
        return "assistant", _text_blocks(text) + uses
    return "user", [tool_result_block(message)]


def tool_result_block(result: ToolResultMessage) -> dict[str, Any]:
    """A tool result as a ``tool_result`` content block (``is_error`` marks failures)."""
    return {"type": "tool_result", "tool_use_id": result.call_id, "content": result.content,
            "is_error": result.is_error}


def _text_blocks(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []


def _input(call: ToolCall) -> dict[str, Any]:
    # The API wants an object back; arguments that never parsed were answered with an error
    # result already, so an empty input keeps the conversation valid without hiding anything.
    try:
        return call.parsed_arguments()
    except ValueError:
        return {}


def anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as Messages API tools."""
    out: list[dict[str, Any]] = []
    for spec in tools:
        tool: dict[str, Any] = {"name": spec.name, "input_schema": dict(spec.parameters)}
        if spec.description:
            tool["description"] = spec.description
        out.append(tool)
    return out


async def _close_client(client: AsyncAnthropic) -> None:
    """Close the connections an SDK client holds (at ``aclose()``, or as its loop ends)."""
    await client.close()
