"""The model contract: what an agent sends a model and what comes back, provider-neutral.

A :class:`Model` takes a :class:`ModelRequest` (instructions, the conversation as
:data:`Message` records, tool specs, an optional output schema) and returns a
:class:`ModelResponse` (text, tool calls, :class:`Usage`). :meth:`Model.stream` yields
:class:`TextDelta` pieces, a :class:`ToolCallDone` for each tool call as soon as its arguments
are complete (models that can tell), and ends with a :class:`ResponseDone` carrying the same
response.

Adapters (``shoal.models.openai``, ``shoal.models.anthropic``) translate to and from a
provider's wire format and translate its errors into :class:`~shoal.exceptions.ModelError`.
They do **not** retry: shoal retries transient errors itself (see :mod:`shoal.models.retry`)
so one rate limit per model is shared by every agent of a run.
"""

from __future__ import annotations

import copy
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shoal._slots import slot_init
from shoal.limits import finite
from shoal.merge import shown

__all__ = [
    "AssistantMessage",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "ResponseDone",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDone",
    "ToolResultMessage",
    "ToolSpec",
    "Usage",
    "UserMessage",
]


@slot_init
@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and cost of one or more model requests; add two with ``+``.

    ``input_tokens`` counts every input token; ``cache_read_tokens`` and ``cache_write_tokens``
    say how many of them the provider read from or wrote to its prompt cache (where it reports
    them; they are priced at its cache rates). ``cost`` is in US dollars, ``None`` when no
    price is known for the model.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost: float | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = (None if self.cost is None and other.cost is None
                else (self.cost or 0.0) + (other.cost or 0.0))
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens,
                     self.requests + other.requests, cost,
                     self.cache_read_tokens + other.cache_read_tokens,
                     self.cache_write_tokens + other.cache_write_tokens)


@slot_init
@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call a model asked for.

    ``arguments`` is the raw JSON text the model wrote: it may be invalid, which the agent
    reports back to the model as an error result rather than crashing.
    """

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raises ``ValueError`` saying what is wrong with them."""
        text = self.arguments.strip() or "{}"
        try:  # what json.loads does with stripped text, less its layers: every call's case
            value, end = _scan_json(text, 0)
        except Exception:  # read again below, for json.loads's own error
            end = -1
        if end == len(text):
            if isinstance(value, dict):
                return value
            raise ValueError(f"the arguments must be a JSON object, got {text[:200]!r}")
        try:
            value = json.loads(text, parse_int=_json_int)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the arguments are not valid JSON ({exc.msg} at position "
                             f"{exc.pos}): {text[:200]!r}") from None
        except _NumberTooLong as exc:  # int()'s own words advise a programmer, not a model
            raise ValueError(str(exc)) from None
        except RecursionError:
            raise ValueError("the arguments are nested too deeply to read") from None
        if not isinstance(value, dict):
            raise ValueError(f"the arguments must be a JSON object, got {text[:200]!r}")
        return value


class _NumberTooLong(ValueError):
    """A JSON integer with more digits than ``int()`` reads (``sys.set_int_max_str_digits``)."""


def _json_int(digits: str) -> int:
    """A JSON integer (``parse_int``); one too long for ``int()`` says so in a model's terms.

    Only the slow path of :meth:`ToolCall.parsed_arguments` uses it (the fast one has failed).
    """
    try:
        return int(digits)
    except ValueError:
        raise _NumberTooLong(number_too_long(
            "the arguments hold", len(digits.lstrip("-")), sys.get_int_max_str_digits(),
            "the tool")) from None


def number_too_long(holder: str, digits: int, limit: int, taker: str) -> str:
    """What to tell a model that sent a JSON number too long to read, in its own terms.

    Not Python's advice to a programmer (``sys.set_int_max_str_digits``) nor pydantic's
    "number out of range": how long it was, the most allowed, and what to send instead.
    ``holder`` starts the sentence (``"the arguments hold"``); ``taker`` is what might take
    the digits as text (``"the tool"``).
    """
    return (f"{holder} a number {digits:,} digits long, and a number may have at most "
            f"{limit:,} digits: send a shorter number (or, if {taker} takes text, the digits "
            "as a JSON string)")


#: Reads one JSON value at a position: ``json.loads`` is this, plus whitespace and checks.
_scan_json: Callable[[str, int], tuple[Any, int]] = (
    json.JSONDecoder().scan_once)  # type: ignore[attr-defined]  # set in its __init__


def _frozen_tuple(obj: object, name: str) -> None:
    """Make the sequence field ``name`` of a frozen dataclass a tuple (a list could change)."""
    value = getattr(obj, name)
    if type(value) is not tuple:
        object.__setattr__(obj, name, tuple(value))


@slot_init
@dataclass(frozen=True, slots=True)
class UserMessage:
    """A message from the user (or a retry prompt from shoal).

    Messages are immutable (frozen, their sequences tuples), so one conversation is shared by
    every turn and every request that holds it, never copied.
    """

    content: str
    role: Literal["user"] = "user"


@slot_init
@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """A model's reply: text and the tool calls it asked for, in the order it asked."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    role: Literal["assistant"] = "assistant"

    def __post_init__(self) -> None:
        if type(self.tool_calls) is not tuple:
            _frozen_tuple(self, "tool_calls")


@slot_init
@dataclass(frozen=True, slots=True)
class ToolResultMessage:
    """The result of one tool call, sent back to the model; ``is_error`` marks failures."""

    call_id: str
    name: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = UserMessage | AssistantMessage | ToolResultMessage


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as a model sees it: name, description and the JSON schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolSpec:
        # Every model request gets a private copy of its tools (the model may change it);
        # a schema is plain JSON, copied here without copy.deepcopy's per-object bookkeeping,
        # which made the copy most of a turn's cost for an agent with a few tools.
        return ToolSpec(self.name, self.description, _json_copy(self.parameters, memo))


def _json_copy(value: Any, memo: dict[int, Any]) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars); anything else by ``deepcopy``."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {key: _json_copy(item, memo) for key, item in value.items()}
    if kind is list:
        return [_json_copy(item, memo) for item in value]
    return copy.deepcopy(value, memo)


def _settings_problem(settings: ModelSettings) -> str:
    """What is wrong with ``settings`` (``""``: nothing)."""
    t, most, parallel = settings.temperature, settings.max_tokens, settings.parallel_tool_calls
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                          or not finite(t) or t < 0):
        return f"temperature must be a finite number >= 0 (or None), got {shown(t)}"
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        return f"max_tokens must be a whole number >= 1 (or None), got {shown(most)}"
    if parallel is not None and not isinstance(parallel, bool):
        return f"parallel_tool_calls must be True, False or None, got {shown(parallel)}"
    extra = settings.extra
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        return f"extra must be a mapping of str names to values, got {shown(extra)}"
    return ""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Sampling settings passed through to the provider (``None``: the provider's default).

    Checked when made, so a mistake fails where it was written, not at the provider in the
    middle of a run: ``temperature`` a finite number >= 0, ``max_tokens`` a whole number >= 1,
    ``parallel_tool_calls`` True or False, ``extra`` a mapping of names to values (a
    :class:`~shoal.exceptions.ConfigError` otherwise).
    """

    temperature: float | None = None
    max_tokens: int | None = None
    parallel_tool_calls: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _settings_problem(self)
        if problem:
            from shoal.exceptions import ConfigError

            raise ConfigError(f"ModelSettings: {problem}")

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelSettings:
        # copied with every model request, like ToolSpec's schema: plain values and JSON
        return ModelSettings(self.temperature, self.max_tokens, self.parallel_tool_calls,
                             _json_copy(self.extra, memo))


@slot_init
@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything one model turn needs.

    Attributes:
        instructions: the system prompt (with the output format appended when the agent has
            an ``output_type``).
        messages: the conversation so far, oldest first, as a tuple (a list given here is
            made one). The messages are immutable and shared: an agent's next request holds
            the same message objects plus the new ones, so a turn costs the same however long
            the conversation is.
        tools: the tools the model may call.
        settings: sampling settings.
        output_schema: the JSON schema the final answer must fit (from an agent's
            ``output_type``); adapters may pass it to providers that support structured
            output, and the agent validates the answer either way.
        lineage: which agent asks, e.g. ``"lead/reader#2"`` (the lead's second ``reader``
            subagent); for logs and scripted models, never sent to a provider.
        plan_tools: when set, the reply is a plan in the LLMCompiler text format over these
            tools (they are described in the instructions, and ``tools`` is empty so that
            the model writes text); a model that can constrain its output to a grammar does
            so.
        token_cap: the most tokens the tree's ``Budget(tokens=)`` holds for this reply
            (``None``: no such budget; see ``BudgetTracker.reserve``). An adapter asks for
            no more output than the lesser of it and ``settings.max_tokens`` (see
            :meth:`output_tokens`): a reply that is not streamed is counted only once it has
            come, so only the provider can stop it in time (the OpenAI adapter sends a cap
            that only it sets when it is at most 4,096: a larger one may be more than the
            model writes, which providers refuse).
            Not part of the request's identity in the journal.

    ``copy.deepcopy`` of a request copies the mutable parts (tool schemas, settings, output
    schema) and shares the immutable messages, so a model that changes its request cannot
    change another's, and copying does not grow with the conversation.
    """

    instructions: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    settings: ModelSettings = ModelSettings()
    output_schema: Mapping[str, Any] | None = None
    lineage: str = ""
    plan_tools: Sequence[ToolSpec] = ()
    token_cap: int | None = None

    def __post_init__(self) -> None:
        # the type checks inline: most requests hold tuples already (an agent's do), and a
        # call per field was a good part of making one
        if type(self.messages) is not tuple:
            _frozen_tuple(self, "messages")
        if type(self.tools) is not tuple:
            _frozen_tuple(self, "tools")
        if type(self.plan_tools) is not tuple:
            _frozen_tuple(self, "plan_tools")

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelRequest:
        tools, plan_tools = _specs_copy(self.tools, memo), _specs_copy(self.plan_tools, memo)
        if type(self) is not ModelRequest:  # a subclass's own fields come along
            return replace(self, tools=tools, plan_tools=plan_tools,
                           settings=copy.deepcopy(self.settings, memo),
                           output_schema=_json_copy(self.output_schema, memo))
        # built directly (each agent turn copies its request): ``replace`` and deepcopy's
        # bookkeeping for the tuples cost more than copying the schemas themselves
        return ModelRequest(
            self.instructions, self.messages, tools, copy.deepcopy(self.settings, memo),
            _json_copy(self.output_schema, memo), self.lineage, plan_tools, self.token_cap)

    def output_tokens(self, default: int | None = None) -> int | None:
        """The most output tokens to ask for (``None``: the provider's own limit).

        That is ``settings.max_tokens`` (else ``default``), lowered to :attr:`token_cap`.
        """
        most = self.settings.max_tokens if self.settings.max_tokens is not None else default
        cap = self.token_cap
        return most if cap is None or (most is not None and most <= cap) else max(cap, 1)


def _specs_copy(specs: Sequence[ToolSpec], memo: dict[int, Any]) -> tuple[ToolSpec, ...]:
    """A private copy of each tool spec (their schemas; the names and texts are shared)."""
    return tuple(spec.__deepcopy__(memo) if type(spec) is ToolSpec
                 else copy.deepcopy(spec, memo) for spec in specs)


#: The stop reasons that say a reply reached its output cap (see :attr:`ModelResponse.cut_off`).
CUT_OFF_REASONS = frozenset({"length", "max_tokens"})


@slot_init
@dataclass(frozen=True, slots=True)
class ModelResponse:
    """A model's answer: text, tool calls in the order asked, usage, and why it stopped."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    stop_reason: str = ""

    def __post_init__(self) -> None:
        if type(self.tool_calls) is not tuple:
            _frozen_tuple(self, "tool_calls")

    def as_message(self) -> AssistantMessage:
        """The response as the assistant message that goes into the conversation."""
        return AssistantMessage(self.text, self.tool_calls)

    @property
    def cut_off(self) -> bool:
        """Whether the model stopped at its output cap (``max_tokens``), its text cut short.

        OpenAI's (and OpenAI-compatible local servers') ``"length"``, Anthropic's
        ``"max_tokens"``.
        """
        return self.stop_reason in CUT_OFF_REASONS


@slot_init
@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text."""

    text: str


@slot_init
@dataclass(frozen=True, slots=True)
class ToolCallDone:
    """A tool call whose arguments are complete, while the rest of the response still streams.

    ``index`` is the call's position among the response's tool calls (0 for the first), so
    the call is ``response.tool_calls[index]`` of the :class:`ResponseDone` that follows.
    """

    index: int
    call: ToolCall


@slot_init
@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The end of a stream: the whole response, as :meth:`Model.request` would return it."""

    response: ModelResponse


StreamEvent = TextDelta | ToolCallDone | ResponseDone


class Model(ABC):
    """A chat model that can call tools. Subclass it to plug in a provider.

    Implementations must be safe to call concurrently from many agents, must not retry
    (shoal does, see :mod:`shoal.models.retry`), and must raise
    :class:`~shoal.exceptions.ModelHTTPError` / :class:`~shoal.exceptions.ModelConnectionError`
    for provider errors so shoal can tell transient ones apart.
    """

    #: The model's name as shown in events and used to share one rate limit per model,
    #: e.g. ``"openai:gpt-4.1-mini"``.
    name: str = "model"

    #: Whether :meth:`stream` yields each :class:`ToolCallDone` as soon as that call is
    #: complete, before the reply ends. Agents then start each call at that moment (see
    #: ``Agent(stream_dispatch=...)``); the default :meth:`stream` yields them at the end.
    streams_tool_calls: bool = False

    #: Whether the model may change the requests it is given (assumed of any model). An agent
    #: then gives it a private copy of each request (its tool schemas, settings and output
    #: schema; the messages are immutable and shared), so that a change reaches no other turn,
    #: run or agent definition. A model that only reads its requests says ``False`` and gets
    #: the agent's request itself: no copy per turn, and nothing more to keep while it waits.
    changes_requests: bool = True

    @abstractmethod
    async def request(self, request: ModelRequest) -> ModelResponse:
        """Send one request and return the whole response."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Yield text and each complete tool call as they arrive, then a :class:`ResponseDone`.

        The default sends a plain request and yields its text in one piece, then its calls.
        """
        response = await self.request(request)
        if response.text:
            yield TextDelta(response.text)
        for index, call in enumerate(response.tool_calls):
            yield ToolCallDone(index, call)
        yield ResponseDone(response)

    async def aclose(self) -> None:  # noqa: B027 - most models hold nothing to release
        """Release connections or servers the model holds."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
