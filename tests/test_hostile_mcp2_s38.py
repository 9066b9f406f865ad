"""Hostile MCP servers against shoal's MCP client, second round of session 38.

Each server is real: a subprocess speaking MCP over stdio (tests/hostile_mcp_s38_server.py,
JSON-RPC by hand), or a local HTTP server (the ones of earlier sessions' tests). Whatever it
does, every call ends in a recorded outcome (its answer, or a typed error a person can act on).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from tests.conftest import arun
from tests.test_hostile_mcp_s37 import http_serving
from tests.test_hostile_mcp_s38 import SERVER, SLOW, _SlowHTTP


def test_a_call_over_http_silent_past_the_sdks_read_limit_still_gets_its_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the MCP SDK's HTTP client gives up on an answer of which no byte came for 300 s
    # (MCP_DEFAULT_SSE_READ_TIMEOUT), whatever the tool's own timeout says: a call of a tool
    # that works 6 minutes failed ("ReadTimeout"). Shortened to 1 s here, that limit must not
    # apply: the server answers after 3 s, within the tool's timeout of 20 s.
    import mcp.shared._httpx_utils as sdk_http

    monkeypatch.setattr(sdk_http, "MCP_DEFAULT_SSE_READ_TIMEOUT", 1.0)
    posted: list[dict[str, Any]] = []

    async def main(base: str) -> None:
        (tool,) = await shoal.mcp.tools(url=f"{base}/mcp", timeout=20)
        plan = shoal.Plan()
        ref = plan.call(tool)
        result = (await shoal.run(plan))[ref]
        assert (result.status, result.value) == ("ok", ""), result.error

    with http_serving(type("Slow", (_SlowHTTP,), {"posted": posted})) as base:
        arun(main(base), timeout=SLOW)


def test_a_call_is_checked_against_the_input_schema_the_server_lists_now() -> None:
    # the arguments were checked against the schema listed when the tools were made, for the
    # whole session: after the server made 'echo's text at most 3 characters long (and said
    # its tools changed), a call with a longer text was sent as it was
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=[*SERVER, "reargue"],
                                                          name="changer", timeout=30,
                                                          approval=False)}
        plan = shoal.Plan()
        changed = plan.call(tools["reargue"])
        fits = plan.call(tools["echo"], text="abc", after=changed)
        long = plan.call(tools["echo"], text="abcdef", after=changed)
        result = await shoal.run(plan)
        assert result[changed].status == "ok"
        assert (result[fits].status, result[fits].value) == ("ok", "echo: abc"), (
            result[fits].error)
        error = result[long].error
        assert result[long].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPToolError"
        assert error.message.startswith("MCP server 'changer' (")
        assert error.message.endswith(
            ") changed the input schema of tool 'echo' since its tools were listed, and the "
            "arguments do not fit it now (argument 'text': 'abcdef' is too long): the call was "
            "not sent; list its tools again (shoal.mcp.tools)"), error.message

    arun(main(), timeout=SLOW)


def test_a_call_after_the_server_listed_an_invalid_input_schema_is_refused_saying_so() -> None:
    async def main() -> None:
        tools = {t.name: t for t in await shoal.mcp.tools(command=[*SERVER, "reargue_bad"],
                                                          name="changer", timeout=30,
                                                          approval=False)}
        plan = shoal.Plan()
        changed = plan.call(tools["reargue"])
        calls = [plan.call(tools["echo"], text="abc", after=changed) for _ in range(2)]
        result = await shoal.run(plan)
        assert result[changed].status == "ok"
        for call in calls:
            error = result[call].error
            assert result[call].status == "failed" and error is not None
            assert error.message.endswith(
                ") changed the input schema of tool 'echo' since its tools were listed, and "
                "its new schema is invalid ('strin' is not valid under any of the given "
                "schemas): the call was not sent; list its tools again (shoal.mcp.tools)"), (
                error.message)

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_a_batch_nested_too_deeply_to_parse_fails_the_call_it_answers_at_once(
        depth: int) -> None:
    # an answer alone on its line so nested was failed at once; in a JSON-RPC batch, the
    # line was dropped, and its call waited until its timeout (here 60 s), or for good
    async def main() -> None:
        (deep,) = await shoal.mcp.tools(command=SERVER, name="deep", only=["deep"],
                                         approval=False, timeout=SLOW)
        plan = shoal.Plan()
        ref = plan.call(deep, n=depth, text="batch")
        sibling = plan.call(deep, n=3, text="batch")
        started = time.monotonic()
        result = await shoal.run(plan)
        assert time.monotonic() - started < SLOW / 2
        assert (result[sibling].status, result[sibling].value) == ("ok", {"a": {"a": {"a": 1}}})
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.MCPServerError"
        assert error.message.startswith("MCP server 'deep' (")
        assert "): answered off-protocol while calling 'deep': its answer is JSON the MCP SDK " \
            "cannot read (nested too deeply" in error.message, error.message

    arun(main(), timeout=SLOW * 2)


DEEP = '{"a": ' * 5000 + "1" + "}" * 5000


@pytest.mark.parametrize(("line", "read"), [
    (f'[{{"method": "n"}}, {{"result": {DEEP}, "id": 4}}]',
     [({"method": "n"}, False), ({"id": 4, "result": None}, True)]),
    (f'[{{"result": {DEEP}}}]', [(None, True)]),  # it names no request
    (f' [ {{"id": "x", "error": {DEEP}}} ]', [({"id": "x", "result": None}, True)]),
    (f'[1, {{"result": {DEEP}, "id": 4}}]',  # what is no object is passed over
     [({"id": 4, "result": None}, True)]),
    (f'[[{{"result": {DEEP}, "id": 4}}]]', None),  # no array of objects
    (f'[{{"result": {DEEP}, "id": 4}}', None),  # cut off
    (f'{{"result": {DEEP}, "id": 4}}', None),  # no batch
])
def test_a_batch_too_deep_to_parse_is_read_one_object_at_a_time(line: str, read: Any) -> None:
    from shoal.integrations.mcp._transports import shallow_batch

    assert shallow_batch(line) == read


def _common_schema(rng: random.Random, depth: int = 0) -> Any:
    """A schema-like value of the common keywords (what the quick reading takes), nested.

    Its values are mostly what each keyword wants, now and then what it does not.
    """
    if depth and rng.random() < 0.05:  # (a root that is no object nor bool is never checked)
        return rng.choice([True, False, 3, "x", [], None])
    good: dict[str, Callable[[], Any]] = {
        "type": lambda: rng.choice(["string", "object", ["null", "integer"], "number"]),
        "description": lambda: "a \x1b[2J\ud800 text", "title": lambda: "t",
        "format": lambda: "date-time", "enum": lambda: [1, "a", None], "const": lambda: {},
        "default": lambda: [1], "examples": lambda: ["x"], "minLength": lambda: 2,
        "maxItems": lambda: 0, "minimum": lambda: -1.5, "exclusiveMaximum": lambda: 7,
        "multipleOf": lambda: 0.5, "uniqueItems": lambda: True, "readOnly": lambda: False,
        "pattern": lambda: "^[a-z]+$", "$ref": lambda: "#/$defs/a", "$comment": lambda: "c",
        "required": lambda: ["a", "b"], "x-vendor": lambda: {"type": 1},
    }
    bad: list[Callable[[], Any]] = [
        lambda: -1, lambda: 2.0, lambda: 1.5, lambda: True, lambda: "([", lambda: ["a", "a"],
        lambda: [], lambda: "no-type", lambda: ["string", "string"], lambda: 0, lambda: {},
        lambda: None, lambda: "a b\\", lambda: [3]]
    if depth < 3:
        good.update({
            "properties": lambda: {k: _common_schema(rng, depth + 1) for k in "ab"},
            "$defs": lambda: {"a": _common_schema(rng, depth + 1)},
            "patternProperties": lambda: {rng.choice(["^x", "(["]): _common_schema(rng, depth + 1)},
            "items": lambda: _common_schema(rng, depth + 1),
            "additionalProperties": lambda: _common_schema(rng, depth + 1),
            "anyOf": lambda: [_common_schema(rng, depth + 1) for _ in range(rng.randrange(3))],
            "prefixItems": lambda: [_common_schema(rng, depth + 1)],
            "not": lambda: _common_schema(rng, depth + 1),
            "if": lambda: _common_schema(rng, depth + 1),
        })
    keys = rng.sample(sorted(good), rng.randrange(1, 6))
    return {k: (rng.choice(bad)() if rng.random() < 0.08 else good[k]()) for k in keys}


def test_the_plain_reading_of_a_schema_finds_what_jsonschemas_own_check_finds() -> None:
    # jsonschema's check (even the quick meta-checker's) took 1 s a listing for a schema of
    # 4,900 properties. The plain reading takes a schema of common keywords at once: it must
    # take only what jsonschema takes, and check_schema refuse what it refuses, word for word
    import jsonschema  # type: ignore[import-untyped]

    from shoal.integrations.mcp._schema import check_schema, plainly_valid
    from tests.test_hostile_mcp_s37 import SCHEMAS, _random_schema, _schema_error

    rng = random.Random(38)
    corpus = [*SCHEMAS, *(_random_schema(rng) for _ in range(200)),
              *(_common_schema(rng) for _ in range(1000)), _wide_schema(200),
              {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},  # a loop: valid
              {"properties": {"a": {"minimum": float("nan")}}}, {"type": []},
              {"multipleOf": -1}, {"required": [1]}, {"maxLength": 2**70}]
    plain = valid = 0
    for schema in corpus:
        said = _schema_error(jsonschema.Draft202012Validator.check_schema, schema)
        assert _schema_error(check_schema, schema) == said, schema
        if plainly_valid(schema):
            assert said is None, schema
            plain += 1
        valid += said is None
    assert plain > 400 and len(corpus) - valid > 200, (plain, valid)
    print("COUNTS", plain, valid, len(corpus))  # each kind, many


DRAFT_7 = "http://json-schema.org/draft-07/schema#"


def test_the_plain_reading_of_a_draft_7_schema_finds_what_jsonschemas_own_check_finds(
        ) -> None:
    # servers made with the MCP TypeScript SDK often list draft 7 schemas ("$schema"): their
    # check took 1 s for 4,900 properties (draft 7's own meta-schema)
    import jsonschema

    from shoal.integrations.mcp._schema import check_schema, plainly_valid
    from tests.test_hostile_mcp_s37 import SCHEMAS, _random_schema, _schema_error

    rng = random.Random(7)
    corpus = [{**s, "$schema": DRAFT_7} for s in [
        *SCHEMAS[:-2], *(_random_schema(rng) for _ in range(200)),
        *(_common_schema(rng) for _ in range(800)), _wide_schema(50),
        {"items": [{"type": "string"}]}, {"additionalItems": 3}, {"deprecated": 3},
        {"dependencies": {"a": ["b"]}}, {"$defs": {"a": {"type": "no"}}}] if isinstance(s, dict)]
    plain = valid = 0
    for schema in corpus:
        said = _schema_error(jsonschema.Draft7Validator.check_schema, schema)
        assert _schema_error(check_schema, schema) == said, schema
        if plainly_valid(schema, jsonschema.Draft7Validator):
            assert said is None, schema
            plain += 1
        valid += said is None
    assert plain > 300 and len(corpus) - valid > 150, (plain, valid)


def _wide_schema(properties: int) -> dict[str, Any]:
    """An object schema of ``properties`` described string properties, one required."""
    return {"type": "object", "required": ["p1"], "properties": {
        f"p{i}": {"type": "string", "description": "x", "maxLength": 5}
        for i in range(properties)}}


@pytest.mark.parametrize("dialect", [None, DRAFT_7,
                                     "https://json-schema.org/draft/2020-12/schema"])
def test_a_schema_of_4900_properties_is_checked_at_once(dialect: str | None) -> None:
    from shoal.integrations.mcp._schema import check_schema, meta_checker

    meta_checker()  # made once per process
    schema = _wide_schema(4900) | ({"$schema": dialect} if dialect else {})
    started = time.perf_counter()
    check_schema(schema)
    assert time.perf_counter() - started < 0.4  # 0.5-1.6 s before; about 0.02-0.06 s now
