"""Checks of a call's arguments: their depth, and a schema the server changed since listing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jsonschema  # type: ignore[import-untyped]  # a dependency of mcp; no type hints

from shoal.exceptions import (
    MCPToolError,
    bounded_text,
    describe_exception,
)
from shoal.integrations.mcp._schema import (
    MAX_SCHEMA_OBJECTS,
    check_schema,
    objects_past,
    ref_loop,
)

if TYPE_CHECKING:
    from shoal.integrations.mcp._server import MCPServer


def _checker_of(schema: Any) -> Any:
    """A validator of ``schema``, a tool's input schema listed anew; else why it is not taken.

    Checked as a listed schema is (see :func:`_remote`), its words then in :func:`_refit`'s.
    """
    if not isinstance(schema, dict) or objects_past(schema, MAX_SCHEMA_OBJECTS):
        return "its new schema is not one shoal takes (no object schema, or too big)"
    try:
        check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"its new schema is invalid ({bounded_text(exc.message, 300)})"
    if ref_loop(schema) is not None:
        return "its new schema loops (checking any argument against it never ends)"
    return jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator)(schema)


def _refit(srv: MCPServer, name: str, checker: Any, arguments: Mapping[str, Any]) -> None:
    """Refuse ``arguments`` unless ``checker`` (:func:`_checker_of`'s) finds they fit.

    They were checked against the schema listed when the tool was made: after the server
    changed it (and said its tools changed), a call that no longer fits was sent as it was.
    """
    def refused(why: str) -> MCPToolError:
        return MCPToolError(srv.described, name, (
            f"MCP server {srv.described} changed the input schema of tool {name!r} since its "
            f"tools were listed, and {why}: the call was not sent; list its tools again "
            "(shoal.mcp.tools)"))

    if isinstance(checker, str):
        raise refused(checker)
    try:
        errors = sorted(checker.iter_errors(dict(arguments)), key=_error_order)
    except Exception as exc:  # a $ref elsewhere (never fetched), or too deep: not checked
        raise refused(f"the arguments cannot be checked against it "
                      f"({describe_exception(exc)})") from None
    if errors:
        raise refused(f"the arguments do not fit it now "
                      f"({'; '.join(_error_text(e) for e in errors[:10])})")


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` holds lists or mappings nested more than ``limit`` levels deep."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        inner: list[Any] = []
        for item in level:
            if isinstance(item, Mapping):
                inner += item.values()
            elif isinstance(item, list | tuple):
                inner += item
        if not inner:
            return False
        level = inner
    return True


def _error_order(error: Any) -> tuple[int, str]:
    return (len(error.absolute_path), str(list(error.absolute_path)))


def _error_text(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    message = bounded_text(str(error.message), 300)
    return f"argument {where!r}: {message}" if where else message
