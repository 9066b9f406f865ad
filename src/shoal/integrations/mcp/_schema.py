"""JSON schemas of MCP tools: their check against the meta-schema, and loops and size in them.

Taken out of :mod:`shoal.integrations.mcp` (which lists tools and calls them): what a listed
tool's schema must pass before its tool is made, each piece with why shoal checks it itself.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from shoal.exceptions import bounded_text

__all__ = ["MAX_SCHEMA_OBJECTS", "NAMED", "VALUES", "WORDS", "check_schema", "meta_checker",
           "objects_past", "plainly_valid", "ref_loop"]

#: A schema's keywords whose text is words about it, those whose content is values, and
#: those that map names to schemas.
WORDS = frozenset({"description", "title"})
VALUES = frozenset({"default", "const", "enum", "examples"})
NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas"})


#: The most JSON objects (each property's schema is one) a listed tool's input schema may
#: hold. Taking a schema costs time for each object (checking it, see :func:`check_schema`,
#: looking for loops and control characters in it), on every listing. Real schemas hold
#: tens, at most a few thousand.
MAX_SCHEMA_OBJECTS = 5_000


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise :class:`jsonschema.SchemaError` if ``schema`` is no valid JSON schema.

    A draft 2020-12 schema (the default) or draft 7 one (what the MCP TypeScript SDK's
    servers often list) is taken at once if :func:`plainly_valid`; else a 2020-12 one is
    checked by :func:`meta_checker`, which finds the same schemas valid a few times faster
    than jsonschema's own check; only one it refuses is checked again by that, for its error.
    """
    checker = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    if checker in _PLAIN_DIALECTS and plainly_valid(schema, checker):
        return
    if checker is not jsonschema.Draft202012Validator or not meta_checker().is_valid(schema):
        checker.check_schema(schema)


#: The draft 2020-12 keywords :func:`plainly_valid` reads, by what their value must be.
_TEXT = frozenset({"description", "title", "$comment", "format", "contentEncoding",
                   "contentMediaType"})
_ARRAY = frozenset({"enum", "examples"})
_ANY = frozenset({"default", "const"})
_COUNT = frozenset({"minLength", "maxLength", "minItems", "maxItems", "minProperties",
                    "maxProperties", "minContains", "maxContains"})
_NUMBER = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_FLAG = frozenset({"uniqueItems", "deprecated", "readOnly", "writeOnly"})
_SUBSCHEMA = frozenset({"additionalProperties", "items", "not", "if", "then", "else",
                        "contains", "propertyNames", "unevaluatedProperties",
                        "unevaluatedItems", "contentSchema"})
_SUBSCHEMAS = frozenset({"properties", "$defs", "definitions", "dependentSchemas",
                         "patternProperties"})
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_FORMATTED = {"pattern": "regex", "$ref": "uri-reference", "$schema": "uri"}
_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
#: The dialects :func:`plainly_valid` reads (whose meta-schemas constrain its keywords alike).
_PLAIN_DIALECTS = (jsonschema.Draft202012Validator, jsonschema.Draft7Validator)
#: How deep :func:`plainly_valid` reads a schema (jsonschema's own check is left the rest).
_PLAIN_DEPTH = 40


def plainly_valid(schema: Any, dialect: Any = jsonschema.Draft202012Validator) -> bool:
    """Whether ``schema`` is a valid draft 2020-12 (or ``dialect``) schema, read by hand.

    False: not known.

    jsonschema's check (even :func:`meta_checker`'s) takes about 0.2 ms an object: 1 s for a
    schema of 4,900 properties, on every listing. A schema of the common keywords (types,
    properties, bounds, patterns, combinations ...) is read here in a few milliseconds; one
    with any other keyword the meta-schema constrains (``$id``, ``$anchor``,
    ``dependentRequired`` ...), a value read otherwise than plainly (a count of ``2.0``, say)
    or nested past :data:`_PLAIN_DEPTH` is left to jsonschema, which also words any refusal.
    Keywords the meta-schema does not name are free, as there; those it names are read as
    2020-12 reads them, which draft 7 reads alike (its other keywords, ``dependencies``,
    ``additionalItems`` and an ``items`` that is a list, are left to jsonschema).
    """
    constrained = (meta_checker().schema if dialect is jsonschema.Draft202012Validator
                   else dialect.META_SCHEMA)["properties"].keys()
    conforms = dialect.FORMAT_CHECKER.conforms
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict) or depth > _PLAIN_DEPTH:
            return False
        for key, value in node.items():
            if key in _SUBSCHEMA:
                stack.append((value, depth + 1))
            elif key in _SUBSCHEMAS:
                if not isinstance(value, dict) or (key == "patternProperties" and not all(
                        conforms(name, "regex") for name in value)):
                    return False
                stack += [(inner, depth + 1) for inner in value.values()]
            elif key in _SCHEMA_LIST:
                if not isinstance(value, list) or not value:
                    return False
                stack += [(inner, depth + 1) for inner in value]
            elif not _plain_value(key, value, conforms) and (
                    key in constrained or not isinstance(key, str)):
                return False
    return True


def _plain_value(key: str, value: Any, conforms: Any) -> bool:
    """Whether ``value`` is plainly valid for the keyword ``key`` (False: not one read so)."""
    if key in _ANY:
        return True
    if key in _TEXT:
        return isinstance(value, str)
    if key in _ARRAY:
        return isinstance(value, list)
    if key in _FLAG:
        return isinstance(value, bool)
    if key in _COUNT:
        return type(value) is int and value >= 0
    if key in _NUMBER or key == "multipleOf":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and (key != "multipleOf" or value > 0))
    if key == "type":
        named = value if isinstance(value, list) else [value]
        return (bool(named) and all(isinstance(n, str) and n in _TYPES for n in named)
                and len(set(named)) == len(named))
    if key == "required":
        return (isinstance(value, list) and all(isinstance(n, str) for n in value)
                and len(set(value)) == len(value))
    if key in _FORMATTED:
        return isinstance(value, str) and bool(conforms(value, _FORMATTED[key]))
    return False


@functools.cache
def meta_checker() -> Any:
    """A validator of draft 2020-12's meta-schema that follows no reference at check time.

    jsonschema's own check (``check_schema``) follows a reference into each of the seven
    vocabulary meta-schemas for every object of the schema checked, each looked up by URI:
    about half a millisecond an object, 1.5 s for a schema of 2,400 properties. Here each
    reference is resolved once, its target put in its place (an ``allOf``: what a ``$ref``
    beside other keywords means), ``$dynamicRef: "#meta"`` is the root (what it resolves to
    for a plain 2020-12 schema), and the vocabularies' ``properties``, which name different
    keywords, are merged into the root's.
    """
    meta = jsonschema.Draft202012Validator.META_SCHEMA
    # (jsonschema's resolver of the meta-schema: it holds the vocabularies; the check that
    # this checker refuses what jsonschema refuses is tests/test_hostile_mcp_s37.py's)
    root = _inlined(meta, jsonschema.Draft202012Validator(meta)._resolver, {})
    unmerged: list[Any] = []
    for part in map(_unwrapped, root.pop("allOf", [])):
        named = set(part.get("properties", {})) if isinstance(part, dict) else set()
        if (isinstance(part, dict) and set(part) <= {"type", "properties"}
                and part.get("type") == root["type"] and not named & set(root["properties"])):
            root["properties"].update(part.get("properties", {}))
        else:  # a vocabulary that cannot be merged stays as it was
            unmerged.append(part)
    if unmerged:
        root["allOf"] = unmerged
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _unwrapped(part: Any) -> Any:
    """What an inlined ``{"$ref": ...}`` alone (``{"allOf": [target]}``) stands for."""
    while isinstance(part, dict) and set(part) == {"allOf"} and len(part["allOf"]) == 1:
        part = part["allOf"][0]
    return part


#: What a meta-schema's object keeps of its own keywords once inlined: no identity or
#: annotation (which change nothing a check finds, and an $id would be a base for no $ref).
_UNINLINED = frozenset({"$id", "$schema", "$dynamicAnchor", "$vocabulary", "$comment", "title",
                        "$defs"})


def _inlined(contents: Any, resolver: Any, done: dict[int, Any]) -> Any:
    """``contents`` (a meta-schema's part) with each reference replaced by what it names.

    ``done``: what each part became (by ``id``), so that a part reached again is the same
    object: a reference back to the root makes the result a cycle of objects, which
    jsonschema follows as deep as the schema checked goes.
    """
    if not isinstance(contents, dict):
        return contents
    if id(contents) in done:
        return done[id(contents)]
    out: dict[str, Any] = {}
    done[id(contents)] = out
    from referencing.jsonschema import DRAFT202012

    resolver = resolver.in_subresource(DRAFT202012.create_resource(contents))
    targets: list[Any] = []
    for key, inner in contents.items():
        if key in ("$ref", "$dynamicRef"):
            found = resolver.lookup(inner)
            targets.append(done[id(jsonschema.Draft202012Validator.META_SCHEMA)]
                           if inner == "#meta" else _inlined(found.contents, found.resolver,
                                                             done))
        elif key in VALUES or key in _UNINLINED:
            if key not in _UNINLINED:
                out[key] = inner
        elif key in NAMED and isinstance(inner, dict):
            out[key] = {name: _inlined(v, resolver, done) for name, v in inner.items()}
        elif isinstance(inner, list):
            out[key] = [_inlined(v, resolver, done) for v in inner]
        else:
            out[key] = _inlined(inner, resolver, done)
    if targets:
        out["allOf"] = [*out.get("allOf", []), *targets]
    return out


def objects_past(schema: Mapping[str, Any], limit: int) -> bool:
    """Whether ``schema`` holds more than ``limit`` JSON objects (itself included).

    The walk stops at the first object past ``limit``: its own cost is bounded too.
    """
    stack: list[Any] = [schema]
    objects = 0
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            objects += 1
            if objects > limit:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


#: Keywords whose subschemas apply to the value itself, not to a part of it (one, or a list).
_IN_PLACE = ("$ref", "allOf", "anyOf", "oneOf", "not", "if", "then", "else")
#: Keywords that map names to schemas applied to the value itself (when it has that property).
_IN_PLACE_NAMED = ("dependentSchemas", "dependencies")


def ref_loop(schema: Mapping[str, Any]) -> str | None:
    """A loop of ``$ref`` (through ``allOf``, ``not`` ...) never reaching into the value.

    As text (``allOf -> $ref '#/$defs/a'``), or None: only a loop a check can meet counts.
    jsonschema accepts such a schema, and its check of any value then recurses until Python's
    limit: each argument was refused as "nested too deeply", blaming the value. A loop in an
    unused definition costs nothing, and is left; a schema with an ``$id`` below its root is
    not followed (see :func:`_refs_of`).
    """
    if _refs_of(schema) is not True:  # no $ref, so no loop (a JSON document is a tree)
        return None
    reached: dict[int, Mapping[str, Any]] = {}
    work: list[Any] = [schema]
    while work:  # every subschema checking may meet, by structure or by $ref
        node = work.pop()
        if id(node) in reached:
            continue
        reached[id(node)] = node
        work += [inner for _, inner in _in_place(schema, node)] + _parts(node)
    done: set[int] = set()
    for start in reached.values():
        found = _loop_from(schema, start, done)
        if found is not None:
            return found
    return None


def _loop_from(root: Mapping[str, Any], start: Mapping[str, Any], done: set[int]) -> str | None:
    """A loop of in-place subschemas met from ``start`` (depth first), as text, if any.

    ``done``: the subschemas from which no loop is met (shared across starts: each is walked
    once).
    """
    hops: list[str] = []  # how each subschema on the chain followed was reached
    on_chain: dict[int, int] = {}  # each subschema on that chain: its place in hops
    stack: list[tuple[Mapping[str, Any], str, bool]] = [(start, "", False)]
    while stack:
        node, how, leaving = stack.pop()
        if leaving:
            del on_chain[id(node)]
            hops.pop()
            done.add(id(node))
        elif id(node) in on_chain:  # back on the chain followed: a loop
            return " -> ".join(h for h in [*hops[on_chain[id(node)] + 1:], how] if h)
        elif id(node) not in done:
            on_chain[id(node)] = len(hops)
            hops.append(how)
            stack.append((node, how, True))
            stack += [(inner, hop, False) for hop, inner in _in_place(root, node)]
    return None


def _in_place(root: Mapping[str, Any], node: Mapping[str, Any],
              ) -> list[tuple[str, Mapping[str, Any]]]:
    """The subschemas ``node`` applies to the value itself, each with the keyword leading there."""
    out: list[tuple[str, Any]] = []
    for key in _IN_PLACE:
        inner = node.get(key)
        if key == "$ref":
            target = _pointed(root, inner) if isinstance(inner, str) else None
            out += [(f"$ref {bounded_text(repr(inner), 80)}", target)]
        else:
            out += [(key, i) for i in (inner if isinstance(inner, list) else [inner])]
    for key in _IN_PLACE_NAMED:
        named = node.get(key)
        out += [(key, i) for i in named.values()] if isinstance(named, Mapping) else []
    return [(how, inner) for how, inner in out if isinstance(inner, Mapping)]


def _parts(node: Mapping[str, Any]) -> list[Any]:
    """The subschemas of ``node`` by structure (definitions are reached by ``$ref`` only)."""
    out: list[Any] = []
    for key, inner in node.items():
        if key in VALUES or key in ("$defs", "definitions"):
            continue
        if key in NAMED or key in _IN_PLACE_NAMED:
            out += inner.values() if isinstance(inner, Mapping) else []
        elif isinstance(inner, Mapping):
            out.append(inner)
        elif isinstance(inner, list):
            out += [i for i in inner if isinstance(i, Mapping)]
    return out


def _pointed(root: Mapping[str, Any], ref: str) -> Any:
    """What ``ref`` (``#`` or a JSON pointer ``#/...``) points to in ``root``; else None."""
    if ref != "#" and not ref.startswith("#/"):
        return None  # an anchor, or another document: not followed
    node: Any = root
    for part in ref[2:].split("/") if ref != "#" else ():
        step = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(step)
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return None
    return node


def _refs_of(schema: Mapping[str, Any]) -> bool | None:
    """Whether ``schema`` has a ``$ref``; None if a subschema (not the root) sets ``$id``.

    An ``$id`` below the root is another base, against which its ``$ref`` resolve.
    """
    found = False
    stack: list[Any] = [v for k, v in schema.items() if k not in VALUES]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if isinstance(item.get("$id"), str):
                return None
            found = found or isinstance(item.get("$ref"), str)
            stack += [v for k, v in item.items() if k not in VALUES]
        elif isinstance(item, list):
            stack += item
    return found or isinstance(schema.get("$ref"), str)
