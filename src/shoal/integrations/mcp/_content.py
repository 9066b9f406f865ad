"""A call's MCP result as the value shoal gives it (content blocks as text)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mcp_types

from shoal.exceptions import (
    MCPToolError,
    bounded_text,
)
from shoal.integrations.mcp._text import _prompt_text

if TYPE_CHECKING:
    from shoal.integrations.mcp._listed import RemoteTool


def result_value(result: mcp_types.CallToolResult, remote: RemoteTool) -> Any:
    """A call's value: its structured content if any, else its content as text.

    Images, audio and resources are described in the text rather than dropped; a result
    marked ``isError`` raises :class:`MCPToolError` with the server's text.
    """
    if result.is_error:
        text = content_text(result.content)
        if not text and result.structured_content is not None:
            text = json.dumps(result.structured_content, ensure_ascii=False, default=repr)
        raise MCPToolError(remote.server.described, remote.name, text)
    if result.structured_content is not None:
        return result.structured_content
    return content_text(result.content)


def content_text(blocks: Sequence[Any]) -> str:
    """MCP content blocks as one text (non-text blocks described in brackets)."""
    return "\n".join(_block_text(b) for b in blocks)


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {_said(block.mime_type)}, {_payload(block.data)}]"
    if kind == "resource_link":
        return f"[resource link: {_said(block.name)} {_said(block.uri)}]"
    if kind == "resource":
        res = block.resource
        text = getattr(res, "text", None)
        if isinstance(text, str):
            return f"[resource {_said(res.uri)}]\n{text}"
        blob = getattr(res, "blob", "") or ""
        return f"[resource {_said(res.uri)}: {_said(res.mime_type or 'binary')}, {_payload(blob)}]"
    return f"[{_said(kind or type(block).__name__)} content]"


#: The most characters of a server's name, URI or media type a content block's description
#: quotes.
SAID_CHARS = 300


def _said(text: object) -> str:
    r"""A server's name, URI or media type as a content block's description quotes it.

    One line, without control characters, cut: in brackets of shoal's making, a name holding
    ``]\n`` or an escape sequence read as more blocks, or as the terminal's orders.
    """
    return bounded_text(" ".join(_prompt_text(str(text)).split()), SAID_CHARS)


#: base64 (RFC 4648) as servers send it, line breaks allowed.
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]*(?:=\s*){0,2}")


def _payload(data: str) -> str:
    """How many bytes base64 ``data`` stands for (without decoding it), or that it is not base64.

    Data that is not base64 was described as "about N bytes" of an image (or audio, or a
    file) that no one can decode.
    """
    letters = len(data) - sum(data.count(c) for c in " \t\r\n")
    if letters % 4 or not _BASE64.fullmatch(data):
        return f"not valid base64 ({len(data):,} characters)"
    trimmed = data.rstrip()
    padding = len(trimmed) - len(trimmed.rstrip("="))
    return f"about {letters * 3 // 4 - padding:,} bytes"
