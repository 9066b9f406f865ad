"""Integrations with other ecosystems, each behind an extra (``mcp``: MCP servers and tools).

Nothing here is imported by ``import shoal``; each module fails at import with an install hint
when its extra is missing.
"""
