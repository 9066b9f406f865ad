"""What an agent's model reads when a call does not succeed, and errors a new user meets.

The model gets one short sentence (``fetch timed out after 0.05 s``), never a module path or
a traceback; the full error stays on the call's outcome; ``tool_error_format`` rewords it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

import pytest

import shoal
from shoal import Plan
from shoal.agents.toolcalls import CallRecord, error_text
from shoal.exceptions import ConfigError, MissingDependencyError
from shoal.models.base import ToolCall
from shoal.testing import ScriptedModel, call
from tests.conftest import arun


@shoal.tool
async def fetch(url: str) -> str:
    """Fetch a page."""
    if not url.startswith("http"):
        raise ValueError("bad url")
    return f"page {url}"


@shoal.tool(timeout=0.05)
async def slow(url: str) -> str:
    """Take too long."""
    await asyncio.sleep(30)
    return url


@shoal.tool(approval=True)
async def pay(to: str) -> str:
    """Pay someone (needs a person's yes)."""
    return f"paid {to}"


def one_turn(*calls: ToolCall, tools: list[shoal.Tool[..., Any]],
             **options: object) -> list[CallRecord]:
    model = ScriptedModel([list(calls), "done"])
    agent = shoal.Agent(name="lead", model=model, tools=tools, **options)  # type: ignore[arg-type]
    return agent.run_sync("go").calls


def test_a_model_reads_one_short_sentence_per_failure_and_the_outcome_keeps_the_rest() -> None:
    failed, timed_out, ok = one_turn(call("fetch", url="nope"), call("slow", url="x"),
                                     call("fetch", url="http://a"), tools=[fetch, slow])
    assert failed.message.content == "fetch failed: ValueError: bad url"
    assert timed_out.message.content == "slow timed out after 0.05 s"
    assert ok.message.content == "page http://a" and not ok.message.is_error
    for record in (failed, timed_out):
        assert record.message.is_error
        assert "shoal." not in record.message.content and "Traceback" not in record.message.content
    assert failed.outcome is not None and failed.outcome.error is not None
    assert failed.outcome.error.type == "ValueError"
    assert "raise ValueError" in failed.outcome.error.traceback
    assert timed_out.outcome is not None and timed_out.outcome.error is not None
    assert timed_out.outcome.error.type == "shoal.exceptions.ToolTimeoutError"


def test_approver_on_run_decides_and_a_denial_reads_as_one_sentence() -> None:
    model = ScriptedModel([[call("pay", to="ann"), call("pay", to="bob")], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[pay])
    result = agent.run_sync("go", approver=lambda r: (
        shoal.Decision.approve() if r.args["to"] == "ann" else shoal.Decision.deny("bob is out")))
    ann, bob = result.calls
    assert ann.status == "ok" and ann.message.content == "paid ann"
    assert bob.status == "denied" and bob.message.content == "pay was denied: bob is out"


def test_without_an_approver_gated_calls_are_denied_and_the_model_is_told() -> None:
    (record,) = one_turn(call("pay", to="ann"), tools=[pay])
    assert record.status == "denied"
    assert record.message.content.startswith("pay was denied: ")


def test_approver_with_your_own_runtime_is_refused_with_what_to_do() -> None:
    agent = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    with pytest.raises(ConfigError, match=r"Runtime\(approver=\.\.\.\)"):
        agent.run_sync("go", runtime=shoal.Runtime(), approver=lambda r: True)


def test_a_call_stopped_by_the_budget_says_so() -> None:
    model = ScriptedModel([[call("slow", url="x")], "never"])
    agent = shoal.Agent(name="lead", model=model, tools=[slow.options(timeout=None)])

    async def main() -> list[CallRecord]:  # virtual time: the call started before 0.1 s
        with pytest.raises(shoal.BudgetExceeded) as stopped:
            await agent.run("go", budget=shoal.Budget(wall_clock=0.1))
        assert stopped.value.result is not None
        return list(stopped.value.result.calls)

    (record,) = arun(main(), virtual=True)
    assert record.status == "timed_out"  # the wall_clock is the tree's deadline
    assert record.message.content.startswith("slow timed out: budget exceeded: wall_clock")


def test_skipped_and_other_statuses_read_as_sentences() -> None:
    plan = Plan()
    search = plan.add(fetch, {"url": "nope"}, node_id="search#1")
    page = plan.add(fetch, {"url": search}, node_id="fetch#1")
    result = shoal.run_sync(plan)
    assert error_text("fetch", result[page]) == "fetch was skipped because search failed"
    assert error_text("search", result[search]) == "search failed: ValueError: bad url"


def test_tool_error_format_rewords_every_call_that_did_not_succeed() -> None:
    def word(record: CallRecord) -> str:
        error = record.outcome.error if record.outcome else None
        kind = error.type if error else record.status
        return f"[{record.call.name}] {record.status}: {kind} ({record.message.content})"

    failed, unknown, ok = one_turn(call("fetch", url="nope"), call("nosuch"),
                                   call("fetch", url="http://a"), tools=[fetch],
                                   tool_error_format=word)
    assert failed.message.content == (
        "[fetch] failed: ValueError (fetch failed: ValueError: bad url)")
    assert unknown.status == "rejected"
    assert unknown.message.content.startswith("[nosuch] rejected: rejected (Error: there is no")
    assert ok.message.content == "page http://a"  # successes are never reworded


def test_a_failing_tool_error_format_falls_back_to_shoals_words(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(record: CallRecord) -> str:
        raise RuntimeError("formatter bug")

    with caplog.at_level(logging.ERROR, logger="shoal"):
        (record,) = one_turn(call("fetch", url="nope"), tools=[fetch], tool_error_format=broken)
    assert record.message.content == "fetch failed: ValueError: bad url"
    assert "tool_error_format failed" in caplog.text


@pytest.mark.parametrize(("spec", "suggestion"), [
    ("opnai:gpt-4.1-mini", "did you mean 'openai:gpt-4.1-mini'?"),
    ("antropic:claude-sonnet-4-5", "did you mean 'anthropic:claude-sonnet-4-5'?"),
    ("gpt-4.1-mini", "did you mean 'openai:gpt-4.1-mini'?"),
    ("claude-sonnet-4-5", "did you mean 'anthropic:claude-sonnet-4-5'?"),
    ("locl", "did you mean 'local'?"),
    ("openai", "'openai:<model id>'"),
    ("mistral:large", "Accepted: 'openai:<model id>'"),
])
def test_a_misspelt_model_fails_when_the_agent_is_made(spec: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        shoal.Agent(name="lead", model=spec)
    assert suggestion in str(caught.value)
    assert "agent 'lead'" in str(caught.value)


def test_a_model_that_is_neither_a_string_nor_a_model_fails_when_the_agent_is_made() -> None:
    with pytest.raises(ConfigError, match="must be a string or a Model"):
        shoal.Agent(name="lead", model=42)  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None,
                    reason="the local model is installed here")
def test_a_forgotten_model_says_the_default_was_used() -> None:
    with pytest.raises(MissingDependencyError) as caught:
        shoal.Agent(name="lead").run_sync("go")
    message = str(caught.value)
    assert message.startswith("no model= given, so the default 'local' model was used")
    assert "pip install 'shoal[local]'" in message and "model='openai:" in message
    with pytest.raises(MissingDependencyError) as explicit:
        shoal.Agent(name="lead", model="local").run_sync("go")
    assert "no model= given" not in str(explicit.value)


@pytest.mark.parametrize(("options", "problem"), [
    ({"tools": fetch}, "tools must be a list, got <Tool fetch"),
    ({"subagents": shoal.Agent(name="sub", model="openai:gpt-4.1-mini")},
     "subagents must be a list"),
    ({"subagents": [fetch]}, "subagents must be Agents"),
    ({"max_turns": "3"}, "max_turns must be a whole number, 1 or more, got '3'"),
    ({"max_turns": True}, "max_turns must be a whole number"),
    ({"output_retries": -1}, "output_retries must be a whole number, 0 or more"),
    ({"tool_error_format": "short"}, "tool_error_format must be a function"),
    ({"name": 7}, "agent name 7"),
])
def test_new_users_mistakes_in_a_definition_fail_when_the_agent_is_made(
        options: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        shoal.Agent(**{"name": "lead", "model": "openai:gpt-4.1-mini", **options})  # type: ignore[arg-type]
    assert problem in str(caught.value)
