"""Integrations with other ecosystems, each behind an extra of its own.

``shoal.otel`` (OpenTelemetry, extra ``otel``) and ``shoal.mcp`` (MCP servers and tools, extra
``mcp``). Nothing here is imported by ``import shoal``; each module fails at import with an
install hint when its extra is missing.
"""
