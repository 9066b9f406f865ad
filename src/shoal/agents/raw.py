"""Run the tool calls of a raw SDK response in parallel, for code that drives the SDK itself.

Keep your own loop over the ``openai`` or ``anthropic`` SDK and let shoal run each turn's tool
calls side by side, under its runtime (timeouts, retries, limits, conflict analysis)::

    completion = client.chat.completions.create(model=..., messages=messages,
                                                tools=[t.to_openai() for t in tools])
    messages.append(completion.choices[0].message)
    messages += openai_tool_messages_sync(completion, tools)       # role "tool", in order

    message = client.messages.create(model=..., max_tokens=1024, messages=history,
                                     tools=[t.to_anthropic() for t in tools])
    history.append({"role": "assistant", "content": message.content})
    history.append(anthropic_tool_results_sync(message, tools))   # one user message

Responses may be SDK objects or their ``model_dump()`` dicts. A call that cannot run
(arguments that are not JSON, an unknown tool, arguments that do not fit its schema) gets an
error result the model can read, and a tool that fails gets one too: every call is answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from shoal.agents.toolcalls import execute_calls
from shoal.events import EventSink
from shoal.exceptions import describe_exception
from shoal.merge import shown
from shoal.models.base import ToolCall, ToolResultMessage
from shoal.runtime import Runtime, run_blocking
from shoal.tools import Tool, tool

__all__ = [
    "Tools",
    "anthropic_calls",
    "anthropic_tool_results",
    "anthropic_tool_results_sync",
    "openai_calls",
    "openai_tool_messages",
    "openai_tool_messages_sync",
]

#: Tools or plain functions (made into tools with default options), or tools by name.
Tools = Iterable[Tool[..., Any] | Callable[..., Any]] | Mapping[str, Tool[..., Any]]

T = TypeVar("T")


def openai_calls(source: Any) -> list[ToolCall]:
    """The function tool calls of a chat completion, of its message, or a list of tool calls.

    Arguments stay the raw JSON text the model wrote, malformed or not.
    """
    if _has(source, "choices"):
        choices = _get(source, "choices") or []
        source = _get(choices[0], "message") if choices else None
    if source is None:
        return []
    if _has(source, "tool_calls") or _has(source, "role"):
        source = _get(source, "tool_calls") or []
    return [_openai_call(item) for item in source]


def _openai_call(item: Any) -> ToolCall:
    function = _get(item, "function")
    if function is None:  # not a function call (a custom tool): reported as unknown
        return ToolCall(_text(_get(item, "id") or ""), f"<{_text(_get(item, 'type'))} tool call>",
                        "{}")
    return ToolCall(_text(_get(item, "id") or ""), _text(_get(function, "name") or ""),
                    _json_text(_get(function, "arguments") or "{}"))


def anthropic_calls(source: Any) -> list[ToolCall]:
    """The ``tool_use`` blocks of a message, or of a list of content blocks, as tool calls."""
    if _has(source, "content"):
        source = _get(source, "content")
    if not isinstance(source, Iterable) or isinstance(source, str | bytes | Mapping):
        return []
    return [ToolCall(_text(_get(block, "id")), _text(_get(block, "name")),
                     _json_text(_get(block, "input") or {}))
            for block in source if _get(block, "type") == "tool_use"]


def _text(value: Any) -> str:
    """``str(value)``, or a short description when its own ``__str__`` fails."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # a dict made by hand may hold anything: the call is still answered
        return shown(value)


def _json_text(value: Any) -> str:
    """Arguments as the JSON text a call carries; text is kept as the model wrote it.

    A value JSON cannot hold (a cycle, nesting too deep, an object of no JSON type) becomes
    text that is not JSON, so that its call is answered with an error, as malformed JSON is.
    """
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (ValueError, TypeError, RecursionError) as exc:
        return f"<arguments JSON cannot hold ({describe_exception(exc)}): {shown(value)}>"


async def openai_tool_messages(source: Any, tools: Tools, *, runtime: Runtime | None = None,
                               on_event: EventSink | None = None) -> list[dict[str, Any]]:
    """Run the tool calls of ``source`` in parallel; return the ``role: tool`` messages.

    ``source`` is what :func:`openai_calls` takes. The messages come in the order of the calls,
    one per call, ready to append to the conversation after the assistant message.
    ``runtime`` runs the calls (default: a fresh one); ``on_event`` receives its events.
    """
    results = await _run(openai_calls(source), tools, runtime, on_event)
    from shoal.models.openai import tool_message  # the adapters load on use: cheap imports

    return [tool_message(result) for result in results]


async def anthropic_tool_results(source: Any, tools: Tools, *,
                                 runtime: Runtime | None = None,
                                 on_event: EventSink | None = None) -> dict[str, Any]:
    """Run the ``tool_use`` blocks of ``source`` in parallel; return the user message.

    The message holds one ``tool_result`` block per call, in the order of the calls, with
    ``is_error`` set for calls that failed or could not run. Its content is empty when
    ``source`` asked for no tools (the API would reject it: check ``stop_reason`` first).
    """
    results = await _run(anthropic_calls(source), tools, runtime, on_event)
    from shoal.models.anthropic import tool_result_block

    return {"role": "user", "content": [tool_result_block(result) for result in results]}


def openai_tool_messages_sync(source: Any, tools: Tools, *,
                              on_event: EventSink | None = None) -> list[dict[str, Any]]:
    """:func:`openai_tool_messages` for synchronous code (runs its own event loop)."""
    return run_blocking(openai_tool_messages(source, tools, on_event=on_event),
                        "'await shoal.openai_tool_messages(...)'")


def anthropic_tool_results_sync(source: Any, tools: Tools, *,
                                on_event: EventSink | None = None) -> dict[str, Any]:
    """:func:`anthropic_tool_results` for synchronous code (runs its own event loop)."""
    return run_blocking(anthropic_tool_results(source, tools, on_event=on_event),
                        "'await shoal.anthropic_tool_results(...)'")


async def _run(calls: Sequence[ToolCall], tools: Tools, runtime: Runtime | None,
               on_event: EventSink | None) -> list[ToolResultMessage]:
    if not calls:
        return []
    records = await execute_calls(calls, _as_tools(tools), runtime=runtime, on_event=on_event)
    return [record.message for record in records]


def _as_tools(tools: Tools) -> list[Tool[..., Any]] | Mapping[str, Tool[..., Any]]:
    if isinstance(tools, Mapping):
        return tools
    return [t if isinstance(t, Tool) else tool(t) for t in tools]



def _has(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, Mapping) else hasattr(obj, key)


def _get(obj: Any, key: str) -> Any:
    """A field of an SDK object or of its ``model_dump()`` dict."""
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
