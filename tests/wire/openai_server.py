"""A fake OpenAI: ``POST /v1/chat/completions``, JSON and SSE, tool calls, usage, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

from tests.wire.base import WireServer, sse
from tests.wire.replies import ErrorReply, Reply, estimate_tokens, pieces, words

__all__ = ["OpenAIWireServer"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_api_key", 404: "not_found_error",
                429: "rate_limit_exceeded"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}


class OpenAIWireServer(WireServer):
    """Speaks the chat completions protocol; ``url`` ends in ``/v1`` like OpenAI's base URL.

    Streams follow the API: a first chunk with the role, text deltas, tool calls as an opening
    delta (index, id, name) and argument pieces, a chunk with ``finish_reason``, a usage chunk
    with no choices when ``stream_options.include_usage`` is set, then ``data: [DONE]``.
    """

    path: ClassVar[str] = "/v1/chat/completions"
    url_suffix: ClassVar[str] = "/v1"
    call_id_prefix: ClassVar[str] = "call_"

    def client(self, **options: Any) -> Any:
        """An ``openai.AsyncOpenAI`` pointed here, with SDK retries off."""
        import openai

        options.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.url, api_key="test-key", **options)

    def sync_client(self, **options: Any) -> Any:
        """An ``openai.OpenAI`` pointed here, with SDK retries off."""
        import openai

        options.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url, api_key="test-key", **options)

    def model(self, model: str = "gpt-4.1-mini", **options: Any) -> Any:
        """A :class:`shoal.models.openai.OpenAIModel` pointed here."""
        from shoal.models.openai import OpenAIModel

        options.setdefault("api_key", "test-key")
        return OpenAIModel(model, base_url=self.url, **options)

    # ------------------------------------------------------------------ rendering

    def render_json(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None,
                                   "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": c.id or self.new_call_id(), "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments_json()}}
                for c in reply.tool_calls]
        return {**self._envelope(body, reply, "chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": _finish_reason(reply)}],
                "usage": _usage(body, reply)}

    def render_events(self, body: dict[str, Any], reply: Reply) -> Iterator[str]:
        head = self._envelope(body, reply, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in words(reply.text):
            yield chunk({"content": piece})
        for index, call in enumerate(reply.tool_calls):
            opening = {"index": index, "id": call.id or self.new_call_id(), "type": "function",
                       "function": {"name": call.name, "arguments": ""}}
            yield chunk({"tool_calls": [opening]})
            for piece in pieces(call.arguments_json()):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, _finish_reason(reply))
        if (body.get("stream_options") or {}).get("include_usage"):
            yield sse({**head, "choices": [], "usage": _usage(body, reply)})
        yield sse("[DONE]")

    def render_stream_error(self, body: dict[str, Any], error: ErrorReply) -> Iterator[str]:
        head = self._envelope(body, Reply(), "chat.completion.chunk")
        yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                              "content": ""},
                                        "finish_reason": None}]})
        yield sse(self.error_body(error.status, error.message))

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _envelope(self, body: dict[str, Any], reply: Reply, kind: str) -> dict[str, Any]:
        return {"id": self.new_id("chatcmpl-"), "object": kind,
                "created": int(time.time()), "model": reply.model or body.get("model", ""),
                "system_fingerprint": "fp_wire"}

    # ----------------------------------------------------------------- validation

    def validate(self, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
        problems: list[str] = []
        if not headers.get("authorization", "").startswith("Bearer "):
            problems.append("missing 'Authorization: Bearer' header")
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("'model' is required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("'messages' must be a non-empty array")
        else:
            problems += _check_messages(messages)
        problems += _check_tools(body)
        if "stream_options" in body and body.get("stream") is not True:
            problems.append("'stream_options' is only allowed when 'stream' is true")
        return problems


def _check_messages(messages: list[Any]) -> list[str]:
    """The conversation rules the API enforces on roles and tool-call pairing."""
    problems: list[str] = []
    pending: list[str] = []  # tool_call ids of the last assistant message still unanswered
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            problems.append(f"messages[{i}]: invalid role {role!r}")
            continue
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                problems.append(f"messages[{i}]: role 'tool' must answer a tool_call_id of the "
                                f"preceding assistant message, got {call_id!r}")
            else:
                pending.remove(call_id)
            if not isinstance(message.get("content"), str):
                problems.append(f"messages[{i}]: tool content must be a string")
            continue
        if pending:
            problems.append(f"messages[{i}]: tool_call ids {pending} were not answered by "
                            "'tool' messages")
            pending = []
        if role == "assistant":
            problems += _check_assistant(i, message)
            pending = [c.get("id") for c in message.get("tool_calls") or []]
        elif not isinstance(message.get("content"), str | list):
            problems.append(f"messages[{i}]: content is required")
    if pending:
        problems.append(f"tool_call ids {pending} were not answered by 'tool' messages")
    return problems


def _check_assistant(i: int, message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        ok = isinstance(message.get("content"), str)
        return [] if ok else [f"messages[{i}]: assistant content is required without tool_calls"]
    if not isinstance(calls, list) or not calls:
        return [f"messages[{i}]: 'tool_calls' must be a non-empty array when present"]
    problems = []
    ids = [call.get("id") for call in calls]
    if len(set(ids)) < len(ids):
        problems.append(f"messages[{i}].tool_calls: duplicate tool call ids {ids}")
    for j, call in enumerate(calls):
        function = call.get("function") or {}
        if not (call.get("id") and call.get("type") == "function" and function.get("name")
                and isinstance(function.get("arguments"), str)):
            problems.append(f"messages[{i}].tool_calls[{j}]: needs id, type 'function', "
                            "function.name and function.arguments (a string)")
    return problems


def _check_tools(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    if tools is None:
        return (["'parallel_tool_calls' is only allowed when 'tools' are specified"]
                if "parallel_tool_calls" in body else [])
    problems = []
    for i, tool in enumerate(tools if isinstance(tools, list) else [None]):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(function, dict) or tool.get("type") != "function"
                or not function.get("name")):
            problems.append(f"tools[{i}]: must be {{'type': 'function', 'function': "
                            "{'name': ..., 'parameters': ...}}")
        elif not isinstance(function.get("parameters", {}), dict):
            problems.append(f"tools[{i}]: parameters must be a JSON schema object")
    return problems


def _finish_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop")


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt = (reply.input_tokens if reply.input_tokens is not None
              else estimate_tokens(body.get("messages", [])))
    completion = (reply.output_tokens if reply.output_tokens is not None
                  else estimate_tokens(reply.text) + 10 * len(reply.tool_calls))
    # prompt_tokens counts the cached ones too; OpenAI reports no cache writes
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens}}
