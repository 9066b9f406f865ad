"""Making a tool of a tool, or of a coroutine (session 35's hostile read of ``shoal.tool``).

``shoal.tool(a_tool, timeout=5)`` made a tool named ``'Tool'`` whose every call failed with
"returned a coroutine; did you forget 'await'?"; ``plan.call(f(1))`` (the coroutine for the
function) was refused, but Python then warned that the coroutine was never awaited.
"""

from __future__ import annotations

import gc
import warnings

import pytest

import shoal
from shoal.exceptions import ToolDefinitionError


@shoal.tool(retries=2)
async def fetch(url: str) -> str:
    """Fetch a page."""
    return f"page {url}"


def test_a_tool_made_a_tool_again_keeps_its_name_schema_and_options() -> None:
    again = shoal.tool(fetch, timeout=5)
    assert again.name == "fetch" and again.description == "Fetch a page."
    assert again.policy.timeout == 5 and again.policy.retry.retries == 2  # its own, and the new one
    assert again.json_schema() == fetch.json_schema()
    plan = shoal.Plan()
    ref = plan.call(again, url="a")
    assert shoal.run_sync(plan)[ref].value == "page a"


def test_a_tool_renamed_by_tool_takes_the_new_name_everywhere() -> None:
    renamed = shoal.tool(name="get", description="Get a page.")(fetch)
    assert (renamed.name, renamed.description) == ("get", "Get a page.")
    plan = shoal.Plan()
    ref = plan.call(renamed, url="b")
    result = shoal.run_sync(plan)
    assert ref.node.startswith("get#") and result[ref].value == "page b"


async def _fetch_later(url: str) -> str:
    return url


def test_a_coroutine_given_for_its_function_is_refused_and_closed() -> None:
    plan = shoal.Plan()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coroutine = _fetch_later("x")
        with pytest.raises(ToolDefinitionError, match=r"got the coroutine _fetch_later\(...\): "
                                                      r"give the function itself"):
            plan.call(coroutine)  # type: ignore[arg-type]
        with pytest.raises(ToolDefinitionError, match="coroutine"):
            shoal.tool(_fetch_later("y"))  # type: ignore[call-overload]
        del coroutine
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_an_agent_made_a_tool_says_where_an_agent_goes() -> None:
    from shoal.testing import ScriptedModel

    helper = shoal.Agent(name="helper", model=ScriptedModel(["hi"]))
    with pytest.raises(ToolDefinitionError, match=r"it is a plan node as it is \(plan.call\(it, "
                                                  r"task=...\)\).*subagents="):
        shoal.tool(helper)  # type: ignore[call-overload]
