"""Tools: decorator forms, schema and docs, validation, policy options and their checks."""

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

import shoal
from shoal import (
    ConfigError,
    Rate,
    RetryPolicy,
    Tool,
    ToolArgumentError,
    ToolDefinitionError,
    ToolPolicy,
    parse_rate,
    tool,
)


@tool
async def search(query: str, limit: int = 10, tags: list[str] | None = None) -> list[str]:
    """Search the docs for a query.

    More words about searching.

    Args:
        query: what to look for.
        limit (int): how many hits at most.

    Returns:
        The hits.
    """
    return [query] * limit


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(name="fetch_page", description="Fetch one page.", timeout=2.5, retries=3,
      retry_on=ValueError, backoff=0.2, max_backoff=1.0, jitter=0.0, max_concurrency=4,
      rate="10/s", reads="host:{host}", writes=["cache:{host}", "log"], estimate=0.5,
      idempotent=True)
def fetch(host: str, path: str = "/") -> str:
    return host + path


# ---- decorator forms ----------------------------------------------------------------------------


def test_bare_decorator_on_async_function() -> None:
    assert isinstance(search, Tool)
    assert search.is_async
    assert search.name == "search"
    assert search.default_isolation == "inline"
    assert search.policy == ToolPolicy()
    assert "async" in repr(search) and "inline" in repr(search)


def test_bare_decorator_on_sync_function() -> None:
    assert isinstance(add, Tool)
    assert not add.is_async
    assert add.default_isolation == "thread"
    assert add.description == "Add two integers."
    assert add.parameters == frozenset({"a", "b"})


def test_tools_remain_directly_callable() -> None:
    assert add(a=2, b=3) == 5
    assert asyncio.run(search(query="q", limit=2)) == ["q", "q"]


def test_decorator_with_options_sets_the_policy() -> None:
    p = fetch.policy
    assert fetch.name == "fetch_page"
    assert fetch.description == "Fetch one page."
    assert p.timeout == 2.5
    assert p.retry == RetryPolicy(retries=3, on=(ValueError,), backoff=0.2, max_backoff=1.0,
                                  jitter=0.0)
    assert p.max_concurrency == 4
    assert p.rate == Rate(10.0, 1.0)
    assert p.reads == ("host:{host}",)
    assert p.writes == ("cache:{host}", "log")
    assert p.estimate == 0.5
    assert p.idempotent is True
    assert p.exclusive is False


def test_decorator_with_options_on_async_function() -> None:
    @tool(timeout=1.0, exclusive=True)
    async def wipe(table: str) -> None:
        return None

    assert wipe.is_async
    assert wipe.policy.timeout == 1.0
    assert wipe.policy.exclusive


# ---- name, description, schema ------------------------------------------------------------------


def test_description_is_the_docstring_up_to_the_first_section() -> None:
    assert search.description == "Search the docs for a query.\n\nMore words about searching."
    assert "Args" not in search.description and "Returns" not in search.description


def test_json_schema_from_signature_and_args_section() -> None:
    schema = search.json_schema()
    assert schema["type"] == "object"
    assert schema["required"] == ["query"]
    props = schema["properties"]
    assert set(props) == {"query", "limit", "tags"}
    assert props["query"]["type"] == "string"
    assert props["query"]["description"] == "what to look for."
    assert props["limit"]["type"] == "integer"
    assert props["limit"]["default"] == 10
    assert props["limit"]["description"] == "how many hits at most."
    assert "description" not in props["tags"]
    assert "title" not in schema
    assert all("title" not in p for p in props.values())
    assert schema.get("additionalProperties") is False


def test_kwargs_tool_accepts_extra_arguments() -> None:
    @tool
    def anything(first: int, **rest: Any) -> dict[str, Any]:
        return {"first": first, **rest}

    assert anything.validate({"first": "1", "other": "x"}) == {"first": 1, "other": "x"}
    assert anything.json_schema()["additionalProperties"] is True


def test_to_openai_shape() -> None:
    entry = search.to_openai()
    assert entry["type"] == "function"
    assert set(entry["function"]) == {"name", "description", "parameters"}
    assert entry["function"]["name"] == "search"
    assert entry["function"]["description"] == search.description
    assert entry["function"]["parameters"] == search.json_schema()


def test_to_anthropic_shape() -> None:
    entry = search.to_anthropic()
    assert set(entry) == {"name", "description", "input_schema"}
    assert entry["name"] == "search"
    assert entry["input_schema"] == search.json_schema()


def test_star_args_and_positional_only_are_rejected() -> None:
    def star(*items: int) -> int:
        return 0

    def posonly(a: int, /) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="items"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match="positional-only"):
        tool(posonly)


def test_not_a_function_is_rejected() -> None:
    with pytest.raises(ToolDefinitionError):
        Tool(42)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_field_as_default_keeps_its_constraints_and_stays_required() -> None:
    import pydantic

    @tool
    async def page(number: int = pydantic.Field(ge=1, description="1-based page")) -> int:
        return number

    schema = page.json_schema()
    assert schema.get("required") == ["number"]
    assert schema["properties"]["number"].get("minimum") == 1
    assert schema["properties"]["number"].get("description") == "1-based page"
    with pytest.raises(ToolArgumentError):
        page.validate({"number": 0})
    with pytest.raises(ToolArgumentError):
        page.validate({})


@pytest.mark.filterwarnings("error")  # pydantic warns when a field shadows a BaseModel attribute
def test_parameter_names_that_shadow_basemodel_attributes_keep_their_names() -> None:
    @tool
    async def describe(schema: str, json: int = 2, model_config: bool = False,
                       _private: str = "p", schema_: str = "other") -> str:
        """Describe a schema.

        Args:
            schema: the schema's name.
        """
        return f"{schema} {json} {model_config} {_private} {schema_}"

    assert describe.parameters == frozenset({"schema", "json", "model_config", "_private",
                                             "schema_"})
    spec = describe.json_schema()
    assert set(spec["properties"]) == {"schema", "json", "model_config", "_private", "schema_"}
    assert spec["required"] == ["schema"]
    assert spec["properties"]["schema"]["description"] == "the schema's name."
    assert describe.validate({"schema": "s", "json": "3"}) == {
        "schema": "s", "json": 3, "model_config": False, "_private": "p", "schema_": "other"}
    with pytest.raises(ToolArgumentError, match="'schema'"):
        describe.validate({"json": 1})
    with pytest.raises(ToolArgumentError, match="'json'"):
        describe.validate({"schema": "s", "json": "many"})

    # checked one by one next to a ref, and mapped back to the parameter names for the call
    plan = shoal.Plan()
    up = plan.call(search, query="q")
    ref = plan.call(describe, schema=up[0], json=0, _private="x")
    bad = shoal.Plan()
    bad.call(describe, schema=bad.call(search, query="q")[0], json="many", node_id="bad")
    assert [(p.code, p.node) for p in bad.problems()] == [("bad_arguments", "bad")]
    assert "'json'" in bad.problems()[0].message
    assert shoal.run_sync(plan)[ref].value == "q 0 False x other"


# ---- validation ---------------------------------------------------------------------------------


def test_validation_coerces_values_and_fills_defaults() -> None:
    assert search.validate({"query": "q", "limit": "3"}) == {"query": "q", "limit": 3,
                                                              "tags": None}
    assert add.validate({"a": "1", "b": 2.0}) == {"a": 1, "b": 2}


@tool
def scaled(a: int, factor: float = 1.0, label: str = "x", on: bool = True) -> str:
    """Every field plain: validation keeps values of exactly their types as they are."""
    return label * a


@pytest.mark.parametrize("args", [
    {"a": 1, "factor": 2.0, "label": "y", "on": False},  # kept
    {"a": 1},  # defaults filled in: a new dict
    {"factor": 2.0, "a": 1, "label": "y", "on": False},  # another order
    {"a": True, "factor": 2.0, "label": "y", "on": False},  # a bool for an int: converted
    {"a": 1, "factor": 2, "label": "y", "on": False},  # an int for a float: converted
    {"a": "1", "factor": 2.0, "label": "y", "on": False},  # a str for an int: converted
    {"a": 1, "factor": 2.0, "label": "y", "on": False, "more": 1},  # refused
    {},  # refused: a is required
])
def test_keeps_says_whether_validation_returns_the_arguments_as_they_are(
        args: dict[str, Any]) -> None:
    """``keeps`` (the plan's check without a new dict) agrees with what ``validate`` does."""
    try:
        checked = scaled.validate(args)
    except ToolArgumentError:
        as_they_are = False
    else:
        as_they_are = (list(checked) == list(args) and all(
            checked[name] is value for name, value in args.items()))
    assert scaled.keeps(args) is as_they_are


@tool
def halved(a: float) -> float:
    """One plain field: ``keeps`` looks it up instead of looping."""
    return a / 2


@pytest.mark.parametrize("args", [
    {"a": 1.0},  # kept
    {"a": 1},  # an int for a float: converted
    {"b": 1.0},  # another name: refused
    {},  # refused: a is required
    {"a": 1.0, "b": 1.0},  # refused: one more
    {"a": None},  # refused
])
def test_keeps_agrees_with_validate_for_a_tool_of_one_field(args: dict[str, Any]) -> None:
    try:
        checked = halved.validate(args)
    except ToolArgumentError:
        as_they_are = False
    else:
        as_they_are = list(checked) == list(args) and checked["a"] is args["a"]
    assert halved.keeps(args) is as_they_are


def test_keeps_is_false_for_a_tool_whose_fields_are_not_plain() -> None:
    assert not search.keeps({"query": "q", "limit": 3, "tags": None})  # tags: a list field
    assert add.keeps({"a": 1, "b": 2})  # every field plain


def test_validation_error_names_the_argument() -> None:
    with pytest.raises(ToolArgumentError) as info:
        search.validate({"query": "q", "limit": "many"})
    err = info.value
    assert err.argument == "limit"
    assert err.tool == "search"
    assert "'limit'" in str(err) and "many" in str(err)
    assert isinstance(err, shoal.ShoalError)


def test_unknown_argument_is_named() -> None:
    with pytest.raises(ToolArgumentError) as info:
        search.validate({"query": "q", "bogus": 1})
    assert info.value.argument == "bogus"
    assert "unexpected argument 'bogus'" in str(info.value)


def test_missing_argument_is_named() -> None:
    with pytest.raises(ToolArgumentError) as info:
        add.validate({"a": 1})
    assert info.value.argument == "b"
    assert "required" in str(info.value).lower()


def test_every_problem_is_listed_in_the_message() -> None:
    with pytest.raises(ToolArgumentError) as info:
        add.validate({"a": "x", "c": 1})
    text = str(info.value)
    assert "'a'" in text and "'b'" in text and "'c'" in text


def test_tool_without_parameters_rejects_arguments() -> None:
    @tool
    async def ping() -> str:
        return "pong"

    assert ping.validate({}) == {}
    with pytest.raises(ToolArgumentError):
        ping.validate({"x": 1})


def test_tool_argument_error_pickles() -> None:
    import pickle

    err = ToolArgumentError("t", "a", "bad")
    back = pickle.loads(pickle.dumps(err))
    assert (back.tool, back.argument, back.detail) == ("t", "a", "bad")


# ---- options ------------------------------------------------------------------------------------


def test_options_returns_a_copy_and_leaves_the_original_alone() -> None:
    before = search.policy
    quick = search.options(timeout=1.0, retries=2, rate="5/s", writes="x:{query}")
    assert quick is not search
    assert quick.policy.timeout == 1.0
    assert quick.policy.retry.retries == 2
    assert quick.policy.rate == Rate(5.0, 1.0)
    assert quick.policy.writes == ("x:{query}",)
    assert search.policy is before
    assert search.policy.timeout is None and search.policy.retry.retries == 0
    assert quick.name == search.name
    assert quick.description == search.description
    assert quick.json_schema() == search.json_schema()
    assert quick.fn is search.fn


def test_options_keep_untouched_retry_fields() -> None:
    again = fetch.options(retries=5)
    assert again.policy.retry.retries == 5
    assert again.policy.retry.on == (ValueError,)
    assert again.policy.retry.backoff == 0.2
    assert fetch.policy.retry.retries == 3


def test_options_can_clear_the_rate() -> None:
    assert fetch.options(rate=None).policy.rate is None


def test_unknown_option_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ToolDefinitionError, match="retires") as info:
        search.options(retires=3)
    assert "retries" in str(info.value)
    with pytest.raises(ToolDefinitionError):
        tool(retires=3)(add.fn)


def test_sync_tool_inline_is_rejected_with_a_helpful_message() -> None:
    with pytest.raises(ToolDefinitionError) as info:
        tool(isolation="inline")(add.fn)
    text = str(info.value)
    assert "sync" in text and "block" in text and "thread" in text
    with pytest.raises(ToolDefinitionError):
        add.options(isolation="inline")
    assert search.options(isolation="inline").policy.isolation == "inline"


@pytest.mark.parametrize("options", [
    {"timeout": 0},
    {"timeout": -1.0},
    {"max_concurrency": 0},
    {"retries": -1},
    {"jitter": 1.5},
    {"jitter": -0.1},
    {"isolation": "fork"},
    {"approval": "yes please"},
])
def test_bad_policy_values_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ToolDefinitionError):
        tool(**options)(add.fn)
    with pytest.raises(ToolDefinitionError):
        add.options(**options)


@pytest.mark.parametrize("rate", ["fast", "20", "20/fortnight", "0/s", "20/0s", "-1/s", "/s"])
def test_bad_rate_option_is_a_config_error(rate: str) -> None:
    with pytest.raises(ConfigError):
        tool(rate=rate)(add.fn)


@pytest.mark.parametrize("options", [
    {"timeout": "5"},
    {"timeout": float("nan")},
    {"max_concurrency": 2.5},
    {"estimate": -1.0},
    {"backoff": -1.0},
])
def test_nonsense_policy_values_are_rejected_clearly(options: dict[str, Any]) -> None:
    with pytest.raises((ToolDefinitionError, ConfigError)):
        tool(**options)(add.fn)


def test_approval_accepts_a_predicate() -> None:
    def rule(args: Any) -> bool:
        return bool(args)

    assert tool(approval=rule)(add.fn).policy.approval is rule


# ---- retry policy -------------------------------------------------------------------------------


def test_retry_policy_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retries=5, backoff=0.1, max_backoff=0.5, jitter=0.0)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in range(1, 6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.5, 0.5])


def test_retry_policy_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(retries=1, backoff=1.0, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(1, rng) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.2  # the jitter really varies


def test_retry_policy_takes_the_names_tool_takes() -> None:
    policy = RetryPolicy(retries=2, backoff=0.3, max_backoff=4.0)
    assert (policy.retries, policy.backoff, policy.max_backoff) == (2, 0.3, 4.0)
    assert tool(retries=2, backoff=0.3, max_backoff=4.0)(add.fn).policy.retry == policy


def test_retry_policy_former_names_still_work_and_warn() -> None:
    with pytest.warns(DeprecationWarning, match=r"base_delay=.*use RetryPolicy\(backoff="):
        old = RetryPolicy(retries=1, base_delay=0.3)
    with pytest.warns(DeprecationWarning, match=r"max_delay=.*use RetryPolicy\(max_backoff="):
        old = RetryPolicy(retries=1, backoff=0.3, max_delay=4.0)
    assert old == RetryPolicy(retries=1, backoff=0.3, max_backoff=4.0)
    with pytest.warns(DeprecationWarning, match="RetryPolicy.base_delay"):
        assert old.base_delay == 0.3
    with pytest.warns(DeprecationWarning, match="RetryPolicy.max_delay"):
        assert old.max_delay == 4.0
    with pytest.raises(ToolDefinitionError, match="both base_delay= and backoff="):
        RetryPolicy(base_delay=0.3, backoff=1.0)


def test_should_retry_filters_by_type_and_count() -> None:
    policy = RetryPolicy(retries=2, on=(ValueError,))
    assert policy.should_retry(ValueError("x"), 1)
    assert policy.should_retry(ValueError("x"), 2)
    assert not policy.should_retry(ValueError("x"), 3)
    assert not policy.should_retry(KeyError("x"), 1)


def test_tool_argument_errors_are_never_retried() -> None:
    policy = RetryPolicy(retries=3, on=(Exception,))
    assert not policy.should_retry(ToolArgumentError("t", "a", "bad"), 1)


def test_timeouts_are_retryable_by_default() -> None:
    assert RetryPolicy(retries=1).should_retry(shoal.ToolTimeoutError("t", 1.0), 1)


def test_retry_on_accepts_a_list_of_exception_types() -> None:
    t = tool(retries=1, retry_on=[ValueError, KeyError])(add.fn)
    assert t.policy.retry.should_retry(KeyError("k"), 1)
    assert not t.policy.retry.should_retry(TypeError("t"), 1)


# ---- rates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "count", "period"), [
    ("20/s", 20, 1.0),
    ("100/min", 100, 60.0),
    ("5/10s", 5, 10.0),
    ("3/h", 3, 3600.0),
    ("250/ms", 250, 0.001),
    (" 7 / 2 minutes ", 7, 120.0),
    ("1.5/s", 1.5, 1.0),
    ((4, 2.0), 4, 2.0),
])
def test_parse_rate(spec: Any, count: float, period: float) -> None:
    assert parse_rate(spec) == Rate(count, period)


@pytest.mark.parametrize("spec", ["", "twenty/s", "20", "20/", "20/lightyear", "0/s", "5/0s",
                                  "-3/s", "20/s/s"])
def test_bad_rates_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rate(spec)
    assert "20/s" in str(info.value) or "positive" in str(info.value)


@pytest.mark.parametrize("spec", [20, (20,)])
def test_wrongly_typed_rates_are_config_errors(spec: Any) -> None:
    with pytest.raises(ConfigError):
        parse_rate(spec)


# ---- async detection ----------------------------------------------------------------------------


def test_object_with_async_call_is_an_async_tool() -> None:
    class Doubler:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

    t = tool(Doubler())
    assert t.is_async
    plan = shoal.Plan()
    ref = plan.call(t, x=21)
    result = shoal.run_sync(plan)
    assert result[ref].value == 42


@pytest.mark.parametrize("fn", [int, max])
def test_a_callable_without_a_readable_signature_is_a_tool_definition_error(fn: Any) -> None:
    from shoal.exceptions import ToolDefinitionError

    with pytest.raises(ToolDefinitionError, match=r"parameters cannot be read.*wrap it"):
        shoal.tool(fn)


def test_a_tool_name_holding_the_separator_is_refused_with_what_to_give() -> None:
    """Calls are named ``<tool>#<n>``: a name ``lead/steps`` would read as a nested run's id."""

    def fetch(url: str) -> str:
        return url

    makers: list[Callable[[], object]] = [
        lambda: shoal.tool(fetch, name="web/fetch"),
        lambda: shoal.tool(name="web/fetch")(fetch),
        lambda: shoal.Tool(fetch, name="lead/steps")]
    for make in makers:
        with pytest.raises(ToolDefinitionError, match=r"cannot hold '/'.*give name= without it"):
            make()
    assert shoal.tool(fetch, name="web_fetch").name == "web_fetch"


def test_fn_is_async_injected_and_default_isolation_follow_the_wrapped_callable() -> None:
    """Plain attributes now (read per call by the scheduler), set wherever a callable is wrapped.

    A tool bound to a sync function, or copied with options, must say so as the properties did.
    """

    def keyed(query: str, key: shoal.IdempotencyKey) -> str:
        return f"{query}/{key}"

    async def keyed_async(query: str, key: shoal.IdempotencyKey) -> str:
        return f"{query}/{key}"

    sync = Tool(keyed)
    assert (sync.fn, sync.is_async, sync.default_isolation) == (keyed, False, "thread")
    assert dict(sync.injected) == {"key": "idempotency_key"}
    bound = sync.bound_to(keyed_async)
    assert (bound.fn, bound.is_async, bound.default_isolation) == (keyed_async, True, "inline")
    assert bound.injected is sync.injected
    copied = bound.options(timeout=2)
    assert (copied.fn, copied.is_async, copied.default_isolation) == (keyed_async, True, "inline")
    assert dict(copied.injected) == {"key": "idempotency_key"}
    assert dict(search.injected) == {} and asyncio.run(search(query="x", limit=1)) == ["x"]
    assert repr(bound) == "<Tool keyed (async, inline)>"
