"""A listed tool as shoal takes it: its checks, names and policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema  # type: ignore[import-untyped]  # a dependency of mcp; no type hints
import mcp_types

from shoal.exceptions import (
    ConfigError,
    ToolDefinitionError,
    bounded_text,
)
from shoal.integrations.mcp._limits import _SCOPE_PARAM
from shoal.integrations.mcp._schema import (
    MAX_SCHEMA_OBJECTS,
    check_schema,
    objects_past,
    ref_loop,
)
from shoal.integrations.mcp._text import _control_key, _described_plainly, _prompt_text
from shoal.policy import ApprovalRule, ToolPolicy, policy_from
from shoal.tools import api_tool_name

if TYPE_CHECKING:
    from shoal.integrations.mcp._server import MCPServer
    from shoal.integrations.mcp._tool import MCPTool


@dataclass(frozen=True, eq=False)
class RemoteTool:
    """A tool as its MCP server describes it: its name there, schema and annotations."""

    server: MCPServer
    name: str
    description: str
    schema: Mapping[str, Any]
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None
    output_schema: Mapping[str, Any] | None = None
    #: the input schema as the server listed it (``schema`` has its descriptions made plain)
    listed_schema: Mapping[str, Any] | None = None


def _remote(srv: MCPServer, listed: mcp_types.Tool) -> RemoteTool:
    hints = listed.annotations or mcp_types.ToolAnnotations()
    schema = listed.input_schema
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema that is not an object schema: "
                                  f"{bounded_text(repr(schema), 300)}; leave it out with "
                                  "only=[...]")
    if objects_past(schema, MAX_SCHEMA_OBJECTS):
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema of more than {MAX_SCHEMA_OBJECTS:,} JSON "
                                  "objects (each property's schema is one), past what shoal "
                                  "takes from a server: checking it would take seconds on "
                                  "each listing; leave it out with only=[...]")
    try:
        check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"invalid input schema ({exc.message}); leave it out with "
                                  "only=[...]") from None
    _refuse_loops(srv, listed)
    if _SCOPE_PARAM in (schema.get("properties") or {}):  # its value would be dropped
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"argument named {_SCOPE_PARAM!r}, a name shoal keeps for "
                                  "handing a call its run; leave it out with only=[...]")
    keyed = _control_key(schema)
    if keyed is not None:  # a property's name goes into prompts (the planner's) as it is
        raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has an "
                                  f"input schema with a key holding control characters "
                                  f"({bounded_text(repr(keyed), 100)}); leave it out with "
                                  "only=[...]")
    schema = _described_plainly(schema)
    return RemoteTool(srv, listed.name,
                      _described(listed),
                      schema, hints.read_only_hint, hints.destructive_hint,
                      hints.idempotent_hint, hints.open_world_hint, listed.output_schema,
                      listed.input_schema)


def _described(listed: mcp_types.Tool) -> str:
    """A listed tool's description as a model is offered it: plain (no control characters)."""
    return bounded_text(_prompt_text(listed.description or ""), 20_000)


def _refuse_loops(srv: MCPServer, listed: mcp_types.Tool) -> None:
    """Refuse a tool whose input or output schema loops (see :func:`ref_loop`).

    jsonschema's check passes such a schema; checking any argument against it then recursed
    to Python's limit (blamed on the value: "nested too deeply"), and so did the MCP SDK's
    check of every result against the output schema (blamed on the answer: "off-protocol").
    """
    for kind, schema, checked in (("input", listed.input_schema, "argument"),
                                  ("output", listed.output_schema, "result")):
        loop = ref_loop(schema) if isinstance(schema, Mapping) else None
        if loop is not None:
            raise ToolDefinitionError(f"MCP server {srv.described}: tool {listed.name!r} has "
                                      f"an {kind} schema that leads back to itself without "
                                      f"reaching into the value (it loops through {loop}), "
                                      f"so checking any {checked} against it never ends; "
                                      "leave it out with only=[...]")


def _once_each(srv: MCPServer, listed: list[mcp_types.Tool]) -> list[mcp_types.Tool]:
    """The tools listed, each name once: a tool listed twice alike is one tool.

    A call names its tool, so two different tools under one name cannot both be called: the
    second became ``name_1``, whose calls ran whichever the server picks for the name.
    """
    kept: dict[str, mcp_types.Tool] = {}
    for tool in listed:
        first = kept.setdefault(tool.name, tool)
        if first is not tool and first != tool:
            raise ToolDefinitionError(f"MCP server {srv.described} lists two different tools "
                                      f"named {tool.name!r} (a call names one by its name "
                                      "alone); leave them out with only=[...]")
    return list(kept.values())


def _shoal_names(wanted: Sequence[str]) -> list[str]:
    """Tool names model APIs accept (letters, digits, ``_`` and ``-``, at most 64), unique.

    A name that had to change gets a short hash of the original, so that two names that
    differ only in the characters replaced stay apart.
    """
    out: list[str] = []
    for name in wanted:
        made = api_tool_name(name)
        while made in out:
            made = made[:60] + "_" + str(len(out))
        out.append(made)
    return out


def _policy(srv: MCPServer, remote: RemoteTool, approval: ApprovalRule | None,
            timeout: float | None) -> ToolPolicy:
    """The shoal policy the server's annotations ask for (see the module docstring)."""
    options: dict[str, Any] = {"isolation": "inline", "timeout": timeout}
    if remote.read_only is True:
        options.update(reads=srv.key, idempotent=True, approval=False)
    else:
        options.update(writes=srv.key, idempotent=remote.idempotent is True,
                       approval=remote.destructive is not False)  # MCP's default: destructive
    if approval is not None:
        options["approval"] = approval
    return policy_from(ToolPolicy(), options)


def _overridden(made: list[MCPTool], overrides: Mapping[str, Mapping[str, Any]],
                srv: MCPServer) -> list[MCPTool]:
    """Apply ``overrides`` (by the server's tool name or the shoal name) to the tools."""
    if not isinstance(overrides, Mapping) or not all(
            isinstance(o, Mapping) for o in overrides.values()):
        raise ConfigError("overrides maps a tool name to @shoal.tool options, e.g. "
                          "{'write_file': {'approval': False}}")
    by_name = {t.remote.name: t for t in made} | {t.name: t for t in made}
    unknown = [n for n in overrides if n not in by_name]
    if unknown:
        raise ConfigError(f"overrides name no tool of MCP server {srv.described}: "
                          f"{', '.join(map(repr, unknown))}; its tools: "
                          f"{', '.join(t.name for t in made) or 'none'}")
    changed = {id(by_name[n]): dict(o) for n, o in overrides.items()}
    return [t.options(**changed[id(t)]) if id(t) in changed else t for t in made]
