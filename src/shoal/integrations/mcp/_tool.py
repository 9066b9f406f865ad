""":class:`MCPTool`: a server's tool as a shoal tool, and its call."""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]  # a dependency of mcp; no type hints
import mcp_types
import pydantic
from mcp.shared.exceptions import MCPError

from shoal.exceptions import (
    MCPToolError,
    ToolArgumentError,
    ToolDefinitionError,
    describe_exception,
)
from shoal.integrations.mcp._checks import _error_order, _error_text, _nested_deeper
from shoal.integrations.mcp._content import result_value
from shoal.integrations.mcp._errors import _NotSent
from shoal.integrations.mcp._limits import _SCOPE_PARAM, MAX_ARGUMENT_DEPTH
from shoal.integrations.mcp._listed import RemoteTool, _described, _remote
from shoal.integrations.mcp._text import _server_words
from shoal.models.base import ToolSpec
from shoal.policy import ToolPolicy, policy_from
from shoal.schema import model_facts
from shoal.tools import Tool


async def _invoke(remote: RemoteTool, **arguments: Any) -> Any:
    """Call the remote tool (the function behind every :class:`MCPTool`).

    A call whose tool has no timeout (the runtime gives none, or it is called directly)
    waits for its answer at most the server's ``answer_timeout``: nothing tells a server
    that will never answer (over HTTP, say) from a slow one, and the call waited for good.
    """
    scope, timeout = arguments.pop(_SCOPE_PARAM, None) or (None, None)
    bound = remote.server.answer_timeout if timeout is None else None
    for attempt in range(2):  # a stdio server found gone before the call was sent: once more
        session, own = remote.server._session_for(scope)
        try:
            result = await session.call_tool(remote.name, arguments, remote.listed_schema,
                                             bound)
            break
        except _NotSent as unsent:  # the next session starts the server again
            if attempt:
                raise unsent.error from None
        except MCPError as exc:  # the server refused the call (unknown tool, bad params ...)
            raise MCPToolError(remote.server.described, remote.name,
                               f"the server refused the call: {_server_words(exc.message)} "
                               f"(error {exc.code})"
                               ) from None
        finally:
            if own:
                await session.close()
    return result_value(result, remote)


class MCPTool(Tool[..., Any]):
    """A tool of an MCP server, usable in plans and by agents like any other tool.

    ``remote`` is how the server describes it (its own name, which may differ from
    :attr:`name` when that had to be made a valid tool name, and its annotations).
    Arguments are checked against the server's JSON schema.
    """

    def __init__(self, remote: RemoteTool, name: str, policy: ToolPolicy,
                 _model: type[pydantic.BaseModel] | None = None, *,
                 _hinted: bool = False) -> None:
        # whether its approval is what the annotations ask (else approval= or overrides= set it)
        self._hinted = _hinted and isinstance(policy.approval, bool)
        if policy.isolation not in (None, "inline"):
            raise ToolDefinitionError(f"tool {name!r} of MCP server {remote.server.described} "
                                      f"runs inline, not {policy.isolation!r}: its session "
                                      "with the server lives in this process")
        self.remote = remote
        self._validator = jsonschema.validators.validator_for(
            remote.schema, default=jsonschema.Draft202012Validator)(dict(remote.schema))
        super().__init__(functools.partial(_invoke, remote), name=name,
                         description=remote.description, policy=policy,
                         _model=_model or _facts_model(name, remote.schema))

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """Each optional argument's default: None (the server applies its own defaults)."""
        facts = self.model_facts
        return {name: None for name in facts.inputs if name not in facts.required}

    def options(self, **overrides: Any) -> MCPTool:
        """A copy with some policy fields replaced (as :meth:`Tool.options`)."""
        return MCPTool(self.remote, self.name, policy_from(self.policy, overrides),
                       _model=self._model, _hinted=self._hinted and "approval" not in overrides)

    @property  # (over the slot of Tool: the listing now)
    def description(self) -> str:
        """The tool's description as its server lists it now (made plain)."""
        now = self._now()
        made: str = _DESCRIPTION.__get__(self)
        return made if now is None or now is self.remote else now.description

    @description.setter
    def description(self, value: str) -> None:
        _DESCRIPTION.__set__(self, value)

    @property  # (over the slot of Tool: made stricter by a listing now)
    def policy(self) -> ToolPolicy:
        """The tool's policy; approval as strict as the strictest listing seen says.

        A server that lists the tool anew as destructive gets its calls approved from then
        on; one that drops ``destructiveHint`` (or says read-only) mid-run does not get them
        unapproved: approval a listing asked for stays asked for. ``approval=`` or an
        override of it is kept as given. Its other hints stay as first listed.
        """
        made: ToolPolicy = _POLICY.__get__(self)
        if not self._hinted or made.approval is not False:
            return made
        strict: ToolPolicy | None = self.__dict__.get("_strict")
        if strict is not None:
            return strict
        now = self._now()
        if now is None or now is self.remote or not _asks_approval(now):
            return made
        strict = self.__dict__["_strict"] = policy_from(made, {"approval": True})
        return strict

    @policy.setter
    def policy(self, value: ToolPolicy) -> None:
        _POLICY.__set__(self, value)

    def positional_names(self) -> list[str]:
        """The schema's properties, in its order: plan text may give any of them by position.

        (The function behind the tool takes only ``**arguments``: read off it, a plan line
        such as ``get_current_time("UTC")`` was refused, and so was every call of a tool
        whose argument names are no Python names, such as ``"max-results"``.)
        """
        return [str(name) for name in self.remote.schema.get("properties") or {}]

    def json_schema(self) -> dict[str, Any]:
        """The server's input schema, as the server lists it now (descriptions made plain)."""
        return copy.deepcopy(dict((self._now() or self.remote).schema))

    def spec_now(self, made: ToolSpec) -> ToolSpec | None:
        """The tool as a model is offered it now; None once its server lists it no more.

        ``made``: its spec when the agent was defined, returned as it is while the server
        lists the tool as then. After the server said its tools changed, the session lists
        them again and checks calls against the new listing, but the model was still
        offered the schema and description of the first: a schema the server no longer
        takes, and a tool it no longer has.
        """
        now = self._now()
        if now is None or now is self.remote:
            return None if now is None else made
        seen = self.__dict__.get("_spec_now")
        if seen is None or seen[0] is not now or seen[1] is not made:
            spec = ToolSpec(self.name, now.description, copy.deepcopy(dict(now.schema)))
            seen = self.__dict__["_spec_now"] = (now, made, made if spec == made else spec)
        spec_now: ToolSpec = seen[2]
        return spec_now

    def _now(self) -> RemoteTool | None:
        """The tool as its server lists it now: :attr:`remote` while it is the same.

        None once the server lists it no more. A new listing of it that shoal refuses (an
        invalid schema, say: see :func:`_remote`) leaves :attr:`remote`, whose calls the
        session then refuses saying why.
        """
        latest = self.remote.server._latest
        if latest is None:  # never listed (a tool made by hand)
            return self.remote
        listed = latest.get(self.remote.name)
        if listed is None:
            return None
        seen = self.__dict__.get("_listed_now")
        if seen is not None and seen[0] is listed:
            now: RemoteTool = seen[1]
            return now
        now = self.remote
        if listed.input_schema != self.remote.listed_schema or (
                _described(listed) != self.remote.description) or (
                    _hints(listed) != _hints(self.remote)):
            with contextlib.suppress(ToolDefinitionError):
                now = _remote(self.remote.server, listed)
        self.__dict__["_listed_now"] = (listed, now)
        return now

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the server's schema; raise :class:`ToolArgumentError`.

        Arguments that fit the schema the server lists now pass too (a model is offered
        that one: :meth:`spec_now`); the session checks every call against it before
        sending it, and refuses, saying so, one that fits only the schema listed first.
        """
        self._check_depth(args)
        errors = sorted(self._schema_errors(dict(args), None, ""), key=_error_order)
        now = self._now() if errors else None
        if now is not None and now is not self.remote:
            errors = sorted(self._schema_errors(dict(args), None, "", now), key=_error_order)
        if errors:
            first = errors[0]
            argument = str(first.absolute_path[0]) if first.absolute_path else ""
            raise ToolArgumentError(self.name, argument,
                                    "; ".join(_error_text(e) for e in errors[:10]))
        return dict(args)

    def check_static(self, args: Mapping[str, Any], is_pending: Callable[[Any], bool]) -> str:
        """Problems seen before the run: missing or unknown arguments, and known values."""
        if not any(is_pending(v) for v in args.values()):
            try:
                self.validate(args)
            except ToolArgumentError as exc:
                return exc.detail
            return ""
        try:
            self._check_depth(args)
        except ToolArgumentError as exc:
            return exc.detail
        schema = self.remote.schema
        properties = schema.get("properties") or {}
        problems = [f"argument {n!r}: Field required"
                    for n in schema.get("required") or () if n not in args]
        if schema.get("additionalProperties") is False:
            problems += [f"unexpected argument {n!r}" for n in args if n not in properties]
        for name, value in args.items():
            if name in properties and not is_pending(value):
                try:
                    problems += [_error_text(e) for e in
                                 self._schema_errors(value, properties[name], name)][:1]
                except ToolArgumentError as exc:
                    problems.append(exc.detail)
        return "; ".join(problems)

    def _check_depth(self, args: Mapping[str, Any]) -> None:
        """Refuse an argument nested deeper than an MCP request can carry.

        The MCP SDK cannot write one (pydantic's serializer stops at about 250 levels): the
        call failed with a bare ``ValueError``, and checking it against the schema first
        failed with a ``RecursionError`` blamed on the server's schema.
        """
        for name, value in args.items():
            if _nested_deeper(value, MAX_ARGUMENT_DEPTH):
                raise ToolArgumentError(self.name, str(name), (
                    f"argument {str(name)!r} is nested more than {MAX_ARGUMENT_DEPTH} levels "
                    "deep, more than an MCP request can carry; pass it flatter (or as text)"))

    def _schema_errors(self, value: Any, schema: Any, path: str,
                       now: RemoteTool | None = None) -> list[Any]:
        """What the server's schema finds wrong with ``value`` (``schema``: a part of it).

        A schema jsonschema cannot apply (a ``$ref`` to elsewhere, which is never fetched)
        is a :class:`ToolArgumentError` saying so, rather than an error from deep inside.
        ``now``: the tool as the server lists it now, whose schema is used (see :meth:`_now`).
        """
        try:
            validator = self._validator if now is None else self._validator_of(now)
            if schema is None:
                return list(validator.iter_errors(value))
            return list(validator.descend(value, schema, path=path))
        except RecursionError:  # the value's doing, not the schema's ($refs cost frames)
            raise ToolArgumentError(self.name, path, (
                f"{f'argument {path!r} is' if path else 'the arguments are'} nested too deeply "
                "to check against the server's input schema; pass it flatter (or as text)")
                                    ) from None
        except Exception as exc:
            raise ToolArgumentError(self.name, path, f"the server's input schema cannot "
                                    f"check arguments: {describe_exception(exc)}") from None

    def _validator_of(self, now: RemoteTool) -> Any:
        """A validator of ``now``'s schema, made once for each new listing of the tool."""
        seen = self.__dict__.get("_validator_now")
        if seen is None or seen[0] is not now:
            seen = self.__dict__["_validator_now"] = (now, jsonschema.validators.validator_for(
                now.schema, default=jsonschema.Draft202012Validator)(dict(now.schema)))
        return seen[1]


#: The slots of :class:`Tool` that :class:`MCPTool`'s properties of the same names hold.
_DESCRIPTION: Any = Tool.__dict__["description"]
_POLICY: Any = Tool.__dict__["policy"]


def _hints(tool: RemoteTool | mcp_types.Tool) -> tuple[bool | None, ...]:
    """A listed tool's annotations (its policy hints), as compared between listings."""
    if isinstance(tool, RemoteTool):
        return (tool.read_only, tool.destructive, tool.idempotent, tool.open_world)
    hints = tool.annotations or mcp_types.ToolAnnotations()
    return (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint,
            hints.open_world_hint)


def _asks_approval(remote: RemoteTool) -> bool:
    """Whether a tool's annotations ask for approval (as :func:`_policy` reads them)."""
    return remote.read_only is not True and remote.destructive is not False


def _facts_model(name: str, schema: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    """A pydantic model standing for the schema's top-level arguments (names, which required).

    The runtime reads a tool's argument names and required ones off its model's facts (a
    map's item argument, plan checks); the values are checked against the JSON schema
    itself. The model also marks the parameter through which the runtime hands a call its run.
    It has no field of its own: a pydantic field an argument took 0.7-1.2 s for a schema of
    4,900 properties, on every listing; the facts are set as its fields would have made them.
    """
    properties = [str(prop) for prop in schema.get("properties") or {}]
    required = {str(prop) for prop in schema.get("required") or ()}
    extra: Literal["forbid", "allow"] = (
        "forbid" if schema.get("additionalProperties") is False else "allow")
    model: type[pydantic.BaseModel] = pydantic.create_model(
        re.sub(r"\W", "_", name) + "_args", __config__=pydantic.ConfigDict(extra=extra))
    facts = model_facts(model)
    facts.inputs = {prop: prop for prop in properties}
    facts.required = frozenset(required.intersection(properties))
    facts.injected = {_SCOPE_PARAM: "shoal.mcp"}
    return model
