"""A fake Anthropic: ``POST /v1/messages``, JSON and the SSE event stream, tool use, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

from tests.wire.base import WireServer, sse
from tests.wire.replies import ErrorReply, Reply, WireToolCall, estimate_tokens, pieces, words

__all__ = ["AnthropicWireServer"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}


class AnthropicWireServer(WireServer):
    """Speaks the Messages protocol; ``url`` is the bare root, as the SDK appends ``/v1``.

    Streams use the real event names in order: ``message_start``, then per content block
    ``content_block_start`` / ``content_block_delta`` (``text_delta`` or ``input_json_delta``)
    / ``content_block_stop``, a ``ping``, ``message_delta`` (stop reason, output tokens) and
    ``message_stop``.
    """

    path: ClassVar[str] = "/v1/messages"
    url_suffix: ClassVar[str] = ""
    call_id_prefix: ClassVar[str] = "toolu_"

    def client(self, **options: Any) -> Any:
        """An ``anthropic.AsyncAnthropic`` pointed here, with SDK retries off."""
        import anthropic

        options.setdefault("max_retries", 0)
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="test-key", **options)

    def sync_client(self, **options: Any) -> Any:
        """An ``anthropic.Anthropic`` pointed here, with SDK retries off."""
        import anthropic

        options.setdefault("max_retries", 0)
        return anthropic.Anthropic(base_url=self.url, api_key="test-key", **options)

    def model(self, model: str = "claude-haiku-4-5", **options: Any) -> Any:
        """A :class:`shoal.models.anthropic.AnthropicModel` pointed here."""
        from shoal.models.anthropic import AnthropicModel

        options.setdefault("api_key", "test-key")
        return AnthropicModel(model, base_url=self.url, **options)

    # ------------------------------------------------------------------ rendering

    def render_json(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        content += [{"type": "tool_use", "id": c.id or self.new_call_id(), "name": c.name,
                     "input": _input(c)} for c in reply.tool_calls]
        tokens_in, tokens_out = _usage(body, reply)
        return {**self._message(body, reply), "content": content,
                "stop_reason": _stop_reason(reply),
                "usage": {**_input_usage(reply, tokens_in), "output_tokens": tokens_out}}

    def render_events(self, body: dict[str, Any], reply: Reply) -> Iterator[str]:
        tokens_in, tokens_out = _usage(body, reply)
        yield self._start(body, reply, tokens_in)
        index = 0
        if reply.text:
            yield from _block(index, {"type": "text", "text": ""},
                              [{"type": "text_delta", "text": w} for w in words(reply.text)])
            index += 1
        yield sse({"type": "ping"}, "ping")
        for call in reply.tool_calls:
            opening = {"type": "tool_use", "id": call.id or self.new_call_id(),
                       "name": call.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p}
                      for p in pieces(call.arguments_json())]
            yield from _block(index, opening, deltas)
            index += 1
        yield sse({"type": "message_delta",
                   "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                   "usage": {"output_tokens": tokens_out}}, "message_delta")
        yield sse({"type": "message_stop"}, "message_stop")

    def render_stream_error(self, body: dict[str, Any], error: ErrorReply) -> Iterator[str]:
        yield self._start(body, Reply(), estimate_tokens(body.get("messages", [])))
        yield sse(self.error_body(error.status, error.message), "error")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        return {"id": self.new_id("msg_"), "type": "message", "role": "assistant",
                "model": reply.model or body.get("model", ""), "stop_sequence": None}

    def _start(self, body: dict[str, Any], reply: Reply, tokens_in: int) -> str:
        message = {**self._message(body, reply), "content": [], "stop_reason": None,
                   "usage": {**_input_usage(reply, tokens_in), "output_tokens": 1}}
        return sse({"type": "message_start", "message": message}, "message_start")

    # ----------------------------------------------------------------- validation

    def validate(self, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
        problems: list[str] = []
        # SDKs send the key as x-api-key (older) or as a bearer token (newer)
        if not (headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer ")):
            problems.append("missing 'x-api-key' or 'Authorization: Bearer' header")
        if not headers.get("anthropic-version"):
            problems.append("missing 'anthropic-version' header")
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("model: field required")
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            problems.append("max_tokens: field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("messages: must be a non-empty array")
        else:
            problems += _check_messages(messages)
        problems += _check_tools(body.get("tools"))
        return problems


def _block(index: int, opening: dict[str, Any], deltas: list[dict[str, Any]]) -> Iterator[str]:
    yield sse({"type": "content_block_start", "index": index, "content_block": opening},
              "content_block_start")
    for delta in deltas:
        yield sse({"type": "content_block_delta", "index": index, "delta": delta},
                  "content_block_delta")
    yield sse({"type": "content_block_stop", "index": index}, "content_block_stop")


def _check_messages(messages: list[Any]) -> list[str]:
    """Role order, block shapes, and tool_use / tool_result pairing, as the API checks them."""
    problems: list[str] = []
    expected_role = "user"
    open_uses: list[str | None] = []  # tool_use ids of the previous assistant message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            problems.append(f"messages.{i}.role: must be 'user' or 'assistant', got {role!r}")
            continue
        if role != expected_role:
            problems.append(f"messages.{i}: roles must alternate, starting with 'user'")
        expected_role = "assistant" if role == "user" else "user"
        blocks = _content_blocks(message.get("content"))
        if blocks is None:
            problems.append(f"messages.{i}.content: must be a non-empty string or array")
            continue
        problems += [f"messages.{i}.content.{j}: text content blocks must be non-empty"
                     for j, b in enumerate(blocks) if b.get("type") == "text" and not b.get("text")]
        texts = [b.get("text") for b in blocks if b.get("type") == "text"]
        if texts and all(isinstance(t, str) and t and not t.strip() for t in texts):
            problems.append(f"messages.{i}: text content blocks must contain non-whitespace text")
        if role == "user":
            problems += _check_results(i, blocks, open_uses)
            open_uses = []
        else:
            open_uses = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
            if len(set(open_uses)) < len(open_uses):
                problems.append(f"messages.{i}: `tool_use` ids must be unique: {open_uses}")
            problems += [f"messages.{i}.content.{j}.input: must be an object"
                         for j, b in enumerate(blocks)
                         if b.get("type") == "tool_use" and not isinstance(b.get("input"), dict)]
    if open_uses:
        problems.append(f"tool_use ids {open_uses} have no tool_result blocks after them")
    return problems


def _content_blocks(content: Any) -> list[dict[str, Any]] | None:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else None
    if isinstance(content, list) and content and all(isinstance(b, dict) for b in content):
        return content
    return None


def _check_results(i: int, blocks: list[dict[str, Any]], open_uses: list[str | None]
                   ) -> list[str]:
    kinds = [b.get("type") for b in blocks]
    results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
    problems = []
    if results and kinds[:len(results)] != ["tool_result"] * len(results):
        problems.append(f"messages.{i}: tool_result blocks must come first in the content")
    if missing := [u for u in open_uses if u not in results]:
        problems.append(f"messages.{i}: tool_use ids were found without tool_result blocks "
                        f"immediately after: {missing}")
    if stray := [r for r in results if r not in open_uses]:
        problems.append(f"messages.{i}: unexpected tool_use_id in tool_result blocks: {stray}")
    return problems


def _check_tools(tools: Any) -> list[str]:
    if tools is None:
        return []
    problems = []
    for i, tool in enumerate(tools if isinstance(tools, list) else [None]):
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not tool.get("name"):
            problems.append(f"tools.{i}.name: field required")
        elif not isinstance(schema, dict) or schema.get("type") != "object":
            problems.append(f"tools.{i}.input_schema: must be a JSON schema with type 'object'")
    return problems


def _input(call: WireToolCall) -> Any:
    return json.loads(call.arguments_json())


def _stop_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")


def _input_usage(reply: Reply, tokens_in: int) -> dict[str, int]:
    """Input usage as Anthropic reports it: the cached tokens apart from ``input_tokens``."""
    cached = reply.cache_read_tokens + reply.cache_write_tokens
    return {"input_tokens": tokens_in - cached,
            "cache_read_input_tokens": reply.cache_read_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens}


def _usage(body: dict[str, Any], reply: Reply) -> tuple[int, int]:
    tokens_in = (reply.input_tokens if reply.input_tokens is not None
                 else estimate_tokens(body.get("messages", [])))
    tokens_out = (reply.output_tokens if reply.output_tokens is not None
                  else estimate_tokens(reply.text) + 10 * len(reply.tool_calls))
    return tokens_in, tokens_out
