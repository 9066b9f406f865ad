"""OpenAI chat completions, and every server that speaks them (llama.cpp, vLLM, Ollama, ...).

:class:`OpenAIModel` sends a :class:`~shoal.models.base.ModelRequest` through the official
``openai`` SDK (``pip install 'shoal[openai]'``) as a chat completion with function tools, and
reads back text, parallel tool calls and usage, whole or streamed. The SDK's own retries are
off: :class:`~shoal.models.retry.ModelGate` retries, once per model for every agent.

Credentials: ``api_key`` or ``OPENAI_API_KEY``; ``base_url`` or ``OPENAI_BASE_URL``. A server on
this machine or a private network needs no key.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shoal.exceptions import (
    MissingDependencyError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    bounded_text,
)
from shoal.merge import shown
from shoal.models._common import (
    ERROR_BODY_CHARS,
    Pace,
    PerLoop,
    StreamedText,
    check_model_options,
    check_timeout,
    counted_tokens,
    cut_short,
    http_error,
    not_a_reply,
    not_a_stream,
    priced_usage,
    resolve_credentials,
    sendable,
    sent_tool_name,
    text_field,
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
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion

__all__ = ["OpenAIModel", "openai_messages", "openai_tools", "tool_message"]


#: The largest output cap a tree's ``Budget(tokens=)`` alone makes a request ask for: every
#: chat model writes at least this many tokens. Past it the request asks for nothing (the
#: model's own limit), and a streamed reply is still stopped as it goes over the budget.
BUDGET_CAP_SENT = 4_096


def _require_sdk() -> None:
    try:
        import openai  # noqa: F401
    except ImportError:
        raise MissingDependencyError("openai", "openai") from None


class OpenAIModel(Model):
    """A chat model behind the OpenAI chat completions API.

    Args:
        model: the provider's model id, e.g. ``"gpt-4.1-mini"``.
        base_url: the API root including ``/v1`` (default ``OPENAI_BASE_URL``, else OpenAI's).
        api_key: the key (default ``OPENAI_API_KEY``; a local ``base_url`` needs none).
        name: how shoal names the model in events and rate limits (``"openai:<model>"``).
        timeout: seconds for one request, streamed or not.
        client: an ``openai.AsyncOpenAI`` to use instead of making one; its retries are turned
            off for shoal's requests. ``base_url`` and ``api_key`` are then ignored.
        prices: your own prices for ``Usage.cost``, looked up before genai-prices' (see
            :mod:`shoal.models.prices`).

    Raises:
        MissingDependencyError: the ``openai`` package is not installed.
        MissingAPIKeyError: no API key for a non-local server.
        ConfigError: ``base_url`` (or the environment's) is not an ``http(s)://`` URL.
    """

    streams_tool_calls = True  # agents start each call as soon as it has streamed in

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 name: str | None = None, timeout: float = 120.0,
                 client: AsyncOpenAI | None = None,
                 prices: Mapping[str, Price] | None = None) -> None:
        _require_sdk()
        check_model_options("OpenAIModel", model, name=name, base_url=base_url, api_key=api_key,
                            prices=prices)
        self.model = model
        self.name = name or f"openai:{model}"
        check_timeout(self.name, timeout)
        self.timeout = timeout
        self._prices = prices
        self._given = client.with_options(max_retries=0) if client is not None else None
        if client is None:
            self._api_key, self._base_url = resolve_credentials(
                self.name, api_key=api_key, base_url=base_url,
                key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL")
        else:
            self._api_key, self._base_url = "", str(client.base_url)
        # OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens);
        # the servers that copy the API have long understood max_tokens, not always the other.
        host = urlsplit(self._base_url or "https://api.openai.com").hostname
        self._max_tokens_key = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
        self._clients = PerLoop(self._new_client, _close_client)

    def _client(self) -> AsyncOpenAI:
        """The SDK client to use on the running event loop."""
        return self._given if self._given is not None else self._clients.get()

    def _new_client(self) -> AsyncOpenAI:
        import openai

        # Our own HTTP client, not the SDK's default one: that one closes itself from __del__
        # by starting a task on whatever loop is running then, which fails on a foreign loop.
        return openai.AsyncOpenAI(api_key=self._api_key, base_url=self._base_url,
                                  timeout=self.timeout, max_retries=0,
                                  http_client=openai.DefaultAsyncHttpxClient())

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Send one chat completion and return the whole response."""
        client = self._client()
        prices = catalog_loading()  # loads in a thread while the request runs
        with self._sdk_errors():
            try:  # the transport's timeout is per read: a server trickling bytes never trips it
                async with asyncio.timeout(self.timeout):
                    completion: ChatCompletion = await client.chat.completions.create(
                        **sendable(self._params(request)))
            except TimeoutError:
                raise ModelConnectionError(
                    self.name, f"no answer within {self.timeout:g} s") from None
        if prices is not None:
            await prices
        return self._response(completion, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream a chat completion: text and complete tool calls as they arrive, then all.

        A tool call is complete when the next call begins (calls stream one after another),
        or when the stream ends. A stream that ends before a chunk gave a ``finish_reason``
        (or ``[DONE]`` came) was cut short: a
        :class:`~shoal.exceptions.ModelConnectionError` (retried). A stream off the protocol
        (a chunk of the wrong shape, data that is not JSON) is a
        :class:`~shoal.exceptions.ModelError`; one whose last line is cut short broke off
        mid-event: a :class:`~shoal.exceptions.ModelConnectionError`
        (transient: retried).
        """
        client = self._client()
        state = _StreamState()
        prices = catalog_loading()  # loads in a thread while the reply streams
        with self._sdk_errors():
            # The SDK's own stream iterator stops at [DONE] and leaves its inner generators to
            # the garbage collector, whose finalizer then starts cleanup tasks on this loop;
            # reading the SSE lines to the end ourselves leaves nothing behind.
            # Each line must come whole within the timeout (the transport's is per read: a
            # server trickling bytes never trips it), and so must the headers.
            opening = client.chat.completions.with_streaming_response.create(
                **sendable(self._params(request)), stream=True,
                stream_options={"include_usage": True})
            try:
                async with asyncio.timeout(self.timeout):
                    raw = await opening.__aenter__()
            except TimeoutError:
                raise ModelConnectionError(
                    self.name, f"no answer within {self.timeout:g} s") from None
            pace = Pace(self.name, self.timeout)
            try:
                if (wrong := await not_a_stream(self.name, raw.http_response,
                                                self.timeout)) is not None:
                    raise wrong
                lines = aiter(raw.iter_lines())
                while (line := await pace.read(lines)) is not None:
                    try:
                        chunk = self._sse_chunk(line, state)
                    except _NotJSON as exc:
                        # the last line, cut short: the stream broke off mid-event (a server
                        # or a proxy that fell over), transient as a lost connection is
                        if await pace.read(lines) is None:
                            raise ModelConnectionError(
                                self.name, f"the stream broke off in the middle of an event: "
                                           f"{exc.payload[:200]!r}") from None
                        raise ModelError(self.name, f"malformed stream data: "
                                                    f"{exc.payload[:200]!r}") from None
                    if chunk is not None and (text := self._take(state, chunk, line)):
                        yield TextDelta(text)
                    for index, done in state.complete(final=False):
                        yield ToolCallDone(index, done)
            finally:
                pace.close()
                await opening.__aexit__(None, None, None)
        if not (state.done or state.finish_reason):
            # Neither [DONE] nor a finish reason: the connection closed early. Not [DONE]
            # alone: some compatible servers never send it (llama.cpp before 2024-09).
            raise cut_short(self.name, "no finish_reason and no [DONE]")
        if rest := state.text.end():  # a first half that no second followed
            yield TextDelta(rest)
        for index, done in state.complete(final=True):
            yield ToolCallDone(index, done)
        if prices is not None:
            await prices
        yield ResponseDone(self._finish(state, request))

    async def aclose(self) -> None:
        """Close this loop's connections of the client this model made (never one passed in)."""
        await self._clients.aclose()

    def _take(self, state: _StreamState, chunk: dict[str, Any], line: str) -> str:
        """``state.add(chunk)``; a chunk of the wrong shape is a :class:`ModelError`."""
        try:
            return state.add(chunk)
        except _Malformed as exc:  # a server off the protocol: say so, never crash inside
            raise ModelError(self.name, f"malformed stream chunk ({exc}): "
                                        f"{line[5:].strip()[:200]!r}") from None

    def _sse_chunk(self, line: str, state: _StreamState) -> dict[str, Any] | None:
        """The chunk one SSE line carries, or ``None`` (blank lines, comments, ``[DONE]``).

        Chat completion servers put each chunk on one ``data:`` line; an ``error`` object in
        place of a chunk is a failure the server hit after it had started answering.
        """
        if state.done or not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            state.done = True
            return None
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise _NotJSON(payload) from None
        if not isinstance(chunk, dict):
            raise ModelError(self.name, f"malformed stream data: {payload[:200]!r}")
        if isinstance(error := chunk.get("error"), dict):
            code = error.get("code")
            status = code if type(code) is int and 400 <= code <= 599 else 500
            raise ModelHTTPError(self.name, bounded_text(str(error.get("message") or error),
                                                         ERROR_BODY_CHARS), status)
        if error is not None:  # an error of another shape is an error still, not a blank chunk
            raise ModelHTTPError(self.name, f"the stream reported an error: {shown(error)}",
                                 500)
        return chunk

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "messages": openai_messages(request)}
        settings = request.settings
        if request.tools:
            params["tools"] = openai_tools(request.tools)
            if settings.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = settings.parallel_tool_calls
        elif request.output_schema is not None:
            # Only without tools: servers that enforce the schema with a grammar (llama.cpp,
            # vLLM) would otherwise forbid tool calls. The agent validates the answer anyway.
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": dict(request.output_schema), "strict": False}}
        if settings.temperature is not None:
            params["temperature"] = settings.temperature
        most = request.output_tokens()
        if most is not None and (settings.max_tokens is not None or most <= BUDGET_CAP_SENT):
            # a cap that only a budget sets goes out only when it is small: servers refuse a
            # request asking for more output than the model can write (gpt-4.1-mini: 32,768;
            # "max_tokens is too large"), so Budget(tokens=200_000) failed every request
            params[self._max_tokens_key] = most
        if settings.extra:
            params["extra_body"] = dict(settings.extra)
        return params

    def _response(self, completion: ChatCompletion, request: ModelRequest) -> ModelResponse:
        """The SDK's completion as shoal's response; one of the wrong shape is a ModelError.

        The SDK builds responses unchecked: a server off the protocol (choices as text, a
        call with no function) leaves a field of the wrong type, or ``None``, in its place.
        """
        if isinstance(completion, str):  # the SDK's answer to a body that is no JSON
            raise not_a_reply(self.name, completion)
        try:
            if not completion.choices:
                raise ModelError(self.name, "the response has no choices")
            return self._read(completion, request)
        except (AttributeError, TypeError) as exc:
            raise ModelError(self.name, f"malformed response ({exc})") from None

    def _read(self, completion: ChatCompletion, request: ModelRequest) -> ModelResponse:
        choice, usage = completion.choices[0], completion.usage
        calls = tuple(ToolCall(text_field(call.id, "a tool call's id") or _call_id(),
                               _as_text(call.function.name),
                               _as_text(call.function.arguments) or "{}")
                      for call in map(self._function_call, choice.message.tool_calls or ()))
        # a refusal (structured outputs) is the model's answer too: show it, do not drop it
        text = _as_text(choice.message.content) or _as_text(choice.message.refusal)
        served_by = text_field(completion.model, "model")
        return ModelResponse(text=text, tool_calls=calls,
                             # its counts as sent, warning of none of the wrong type
                             usage=self._usage(usage.model_dump(warnings=False) if usage
                                               else None,
                                               served_by, request, text, calls),
                             model=served_by or self.model,
                             stop_reason=text_field(choice.finish_reason, "finish_reason"))

    def _function_call(self, call: Any) -> Any:
        """``call``, a function call; one of another type is a :class:`ModelError`.

        A call without its ``type`` (some compatible servers leave it out, as streamed
        deltas do) is one: dropped, the reply read as an empty answer. shoal offers only
        function tools: a call of another type (``custom``) is no call it can answer.
        """
        if call.type not in (None, "function"):
            raise ModelError(self.name, f"the reply calls a tool of type {shown(call.type)}; "
                                        f"shoal offers only function tools")
        return call

    def _finish(self, state: _StreamState, request: ModelRequest) -> ModelResponse:
        calls = tuple(ToolCall(c.id or _call_id(), c.name, "".join(c.arguments) or "{}")
                      for c in state.calls)
        text = state.text.text
        return ModelResponse(text=text, tool_calls=calls,
                             usage=self._usage(state.usage, state.model, request, text, calls),
                             model=state.model or self.model, stop_reason=state.finish_reason)

    def _usage(self, usage: Mapping[str, Any] | None, served_by: str, request: ModelRequest,
               text: str, calls: Sequence[ToolCall]) -> Usage:
        """Usage from the API's ``usage`` object; cached prompt tokens are among the prompt's.

        A count the server does not report (some compatible servers send no usage, nulls,
        strings or negatives) is charged a lower bound instead (see :func:`counted_tokens`):
        counted as none, its replies never reached a ``Budget(tokens=)``, which then held
        nothing.
        """
        usage = usage or {}
        tokens_in, tokens_out = counted_tokens(usage.get("prompt_tokens"),
                                               usage.get("completion_tokens"),
                                               request, text, calls)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        return priced_usage(self.model, served_by, tokens_in, tokens_out, self._prices,
                            cache_read=cached,
                            provider=provider_for_url(self._base_url, "openai"))

    @contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Turn the SDK's errors into shoal's, so ModelGate can tell transient ones apart."""
        import openai

        try:
            yield
        except openai.APIStatusError as exc:
            raise http_error(self.name, exc.status_code, exc.response.headers, exc.body,
                             exc.message, model_id=self.model, key_env="OPENAI_API_KEY") from exc
        except openai.APITimeoutError as exc:
            raise ModelConnectionError(
                self.name, f"no answer within {self.timeout:g} s") from exc
        except openai.APIConnectionError as exc:
            raise unreachable(self.name, exc.request.url, exc) from exc
        except openai.OpenAIError as exc:
            raise ModelError(self.name, str(exc)) from exc
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


class _NotJSON(ValueError):
    """A stream's data line that is not JSON (see :meth:`OpenAIModel.stream`)."""

    def __init__(self, payload: str) -> None:
        super().__init__(payload)
        self.payload = payload


class _Malformed(ValueError):
    """A stream chunk of a shape the API never sends (a list where an object belongs...)."""


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of ``kind`` (``None`` stands for an empty one), else ``_Malformed``."""
    if value is None:
        return kind() if isinstance(kind, type) else None
    if not isinstance(value, kind):
        raise _Malformed(f"{what} is {type(value).__name__}")
    return value


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _StreamState:
    """A streamed completion put back together from its chunks (plain JSON objects).

    Calls are kept in the order they began, which is the order of their ``index`` on a
    server that follows the API. One that does not is still read whole: an index reused by
    a call with another id begins a new call (some servers send every call at index 0), and
    an index lower than one seen before is a new call after it, not a call slipped in front
    of calls already reported complete (which then ran twice, and the new one never).
    """

    text: StreamedText = field(default_factory=StreamedText)
    calls: list[_PartialCall] = field(default_factory=list)  # in the order they began
    at: dict[int, int] = field(default_factory=dict)  # a delta's index -> its call's position
    usage: dict[str, Any] | None = None
    model: str = ""
    finish_reason: str = ""
    done: bool = False  # [DONE] seen
    emitted: int = 0  # tool calls already reported complete

    def add(self, chunk: dict[str, Any]) -> str:
        """Take in one chunk; return its text (empty when it carries none).

        Raises ``_Malformed`` for a chunk of a shape the API never sends.
        """
        self.model = self.model or _expect(chunk.get("model"), str, "model")
        if isinstance(usage := chunk.get("usage"), dict):  # the last chunk, with include_usage
            self.usage = usage
        choices = _expect(chunk.get("choices"), list, "choices")
        if not choices:
            return ""
        choice = _expect(choices[0], dict, "choices[0]")
        self.finish_reason = (_expect(choice.get("finish_reason"), str, "finish_reason")
                              or self.finish_reason)
        delta = _expect(choice.get("delta"), dict, "delta")
        for part in _expect(delta.get("tool_calls"), list, "delta.tool_calls"):
            self._add_call(_expect(part, dict, "a tool call delta"))
        return self.text.add(_as_text(delta.get("content")) or _as_text(delta.get("refusal")))

    def complete(self, *, final: bool) -> list[tuple[int, ToolCall]]:
        """The calls completed since the last look, with their positions.

        Every call but the last one begun is complete (calls stream one after another); at
        the end (``final``), that one is too. A call without an id gets one here, the same
        one the whole response then carries.
        """
        ready = len(self.calls) if final else len(self.calls) - 1
        out: list[tuple[int, ToolCall]] = []
        for position in range(self.emitted, ready):
            call = self.calls[position]
            call.id = call.id or _call_id()
            out.append((position, ToolCall(call.id, call.name, "".join(call.arguments) or "{}")))
        self.emitted = max(self.emitted, ready)
        return out

    def _add_call(self, part: dict[str, Any]) -> None:
        # Index is required by the API, but not every compatible server sends it: without
        # one, a part with a new id or a name begins a call (see _unindexed_position)
        index = part.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise _Malformed(f"a tool call's index is {type(index).__name__}")
        function = _expect(part.get("function"), dict, "a tool call's function")
        call_id: str = _expect(part.get("id"), str, "a tool call's id")
        position = self.at.get(index) if index is not None else _unindexed_position(
            self.calls, call_id, function)
        if position is None or (
                call_id and self.calls[position].id and call_id != self.calls[position].id):
            position = len(self.calls)
            self.calls.append(_PartialCall())
            if index is not None:
                self.at[index] = position
        call = self.calls[position]
        call.id = call.id or call_id
        # The name comes whole in the first delta; some servers repeat it in later ones.
        name = function.get("name")
        call.name = call.name or _as_text(name)
        call.arguments.append(_as_text(function.get("arguments")))


def _unindexed_position(calls: list[_PartialCall], call_id: str,
                        function: dict[str, Any]) -> int | None:
    """The call a part without an index continues (``None``: it begins a new one).

    A part that names no call continues the last one; so does one repeating its id.
    """
    if not calls:
        return None
    if call_id:
        return len(calls) - 1 if call_id == calls[-1].id else None
    return None if function.get("name") else len(calls) - 1


def _as_text(value: object) -> str:
    """A field the API sends as text (``None``: empty); anything else as its JSON text.

    Some servers send a call's arguments as a JSON object, not as the text of one.
    """
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(value, ensure_ascii=False, default=repr)


def openai_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The request's instructions and conversation as chat completion messages."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages.extend(_message(m) for m in request.messages)
    return messages


def _message(message: Message) -> dict[str, Any]:
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.content}
    if isinstance(message, AssistantMessage):
        return _assistant(message)
    return tool_message(message)


def _assistant(message: AssistantMessage) -> dict[str, Any]:
    if not message.tool_calls:
        return {"role": "assistant", "content": message.content}
    calls = [{"id": c.id, "type": "function",
              "function": {"name": sent_tool_name(c.name), "arguments": c.arguments}}
             for c in message.tool_calls]
    # null, not "", is the API's "no text": some servers render "" as an empty turn
    return {"role": "assistant", "content": message.content or None, "tool_calls": calls}


def tool_message(result: ToolResultMessage) -> dict[str, Any]:
    """A tool result as a ``role: tool`` message.

    Chat completions have no error flag, so a failed call's text is marked ``Error:`` unless
    it already says so.
    """
    content = result.content
    if result.is_error and not content.lower().startswith("error"):
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": result.call_id, "content": content}


def openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as chat completion function tools."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": dict(t.parameters)}}
            for t in tools]


def _call_id() -> str:
    # Some compatible servers omit ids; the conversation still needs one to pair results.
    return f"call_{uuid.uuid4().hex[:24]}"


async def _close_client(client: AsyncOpenAI) -> None:
    """Close the connections an SDK client holds (at ``aclose()``, or as its loop ends)."""
    await client.close()
