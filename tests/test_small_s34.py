"""Small defects of sweep 34: tool names, uncopyable defaults, limits, pattern ids, deadlines."""

import asyncio
import copy
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest

import shoal
from shoal import ToolArgumentError
from shoal.models.base import ModelRequest
from shoal.patterns import Pattern, pipeline
from shoal.testing import ScriptedModel, call
from tests import process_tools as pt
from tests.conftest import arun

# ---- a default whose copy raises ----------------------------------------------------------


class _Uncopyable(list[int]):
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise RuntimeError("copies refused")


_DEFAULT = _Uncopyable([1])


def _with_uncopyable(x: int, seen: list[int] = _DEFAULT) -> int:
    return x


def _copies_itself(value: list[int]) -> list[int]:
    return copy.deepcopy(_DEFAULT)  # the validator's own error, not a default's copy


def _validator_copies(x: Annotated[list[int], pydantic.AfterValidator(_copies_itself)]) -> int:
    return len(x)


def test_a_default_whose_copy_raises_is_named_with_what_its_copy_raised() -> None:
    # was: "... raised RuntimeError: copies refused: the tool's own checking code (a
    # validator or a default_factory of its argument types) failed on them"
    made = shoal.tool(_with_uncopyable)
    with pytest.raises(ToolArgumentError, match=r"the default of 'seen', \[1\], is copied for "
                                                r"each call .* raised RuntimeError: copies "
                                                r"refused") as caught:
        made.validate({"x": 1})
    assert caught.value.argument == "seen" and "validator" not in str(caught.value)
    assert made.validate({"x": 1, "seen": [2]}) == {"x": 1, "seen": [2]}
    plan = shoal.Plan()
    plan.call(shoal.tool(_with_uncopyable), x=1)
    with pytest.raises(shoal.PlanError, match="the default of 'seen'"):
        shoal.run_sync(plan)


def test_a_validator_that_copies_and_fails_is_still_the_checking_code() -> None:
    made = shoal.tool(_validator_copies)
    with pytest.raises(ToolArgumentError, match="the tool's own checking code"):
        made.validate({"x": [1]})


# ---- tool names model APIs refuse ---------------------------------------------------------


@pytest.mark.parametrize(("name", "better"), [
    ("café", "cafe"), ("a.b", "a_b"), ("look up", "look_up"), ("x" * 65, "x" * 64)])
def test_a_tool_name_model_apis_refuse_is_refused_where_a_model_is_offered_it(
        name: str, better: str) -> None:
    # was: accepted; every model request of the agent then failed at the provider (HTTP 400)
    made = shoal.tool(lambda q: q, name=name)  # plans take it: @tool does not refuse it
    assert made.name == name
    with pytest.raises(shoal.ToolDefinitionError, match=(
            rf"agent 'helper': tools\[1\]: tool name .* cannot be offered to a model: .* "
            rf"1-64 letters, digits, '_' or '-' .* @shoal.tool\(name='{better}'\)")):
        shoal.Agent("helper", tools=[shoal.tool(lambda q: q, name="fine"), made])
    for export in (made.to_openai, made.to_anthropic):
        with pytest.raises(shoal.ToolDefinitionError, match="cannot be offered to a model"):
            export()
    renamed = shoal.Tool(made.fn, name=better)
    assert shoal.Agent("helper", tools=[renamed]).tools_by_name.keys() == {better}
    assert renamed.to_openai()["function"]["name"] == better


def test_a_plan_keeps_a_tool_name_no_model_api_takes() -> None:
    plan = shoal.Plan()
    ref = plan.call(shoal.tool(lambda q: q, name="café"), q=1)
    assert shoal.run_sync(plan).value(ref) == 1


# ---- a pattern's run_id in the journal already ----------------------------------------------


def _down(request: ModelRequest) -> str:
    raise RuntimeError("model down")


def _two_steps(a: list[Any], b: list[Any]) -> Pattern:
    return pipeline(shoal.Agent("a", model=ScriptedModel(a)),
                    shoal.Agent("b", model=ScriptedModel(b)))


def test_a_pattern_run_id_journaled_already_says_what_a_pattern_user_can_do(
        tmp_path: Path) -> None:
    # was: "continue it with Runtime.resume('r1', plan)": the pattern's user has no plan
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    with pytest.raises(RuntimeError, match="model down"):
        _two_steps(["A"], [_down]).run_sync("go", runtime=shoal.Runtime(store=store),
                                            run_id="r1")
    again = _two_steps(["A"], ["B"])
    with pytest.raises(shoal.ConfigError, match=(
            r"pipeline: run 'r1' is in the journal already; run\(\) starts a new run, "
            r"so give another run_id \(or none\)\. .* plan = shoal.Plan\(name='pipeline'\); "
            r"plan.add\(pattern, .* node_id='pipeline'\); runtime.resume\('r1', plan\)")):
        again.run_sync("go", runtime=shoal.Runtime(store=store), run_id="r1")
    plan = shoal.Plan(name="pipeline")  # what the message says to do works
    ref = plan.add(again, {"task": "go"}, node_id="pipeline")
    assert shoal.Runtime(store=store).resume_sync("r1", plan)[ref].value == "B"
    fresh = _two_steps(["A"], ["B"])
    assert fresh.run_sync("go", runtime=shoal.Runtime(store=store), run_id="r2") == "B"


# ---- an open_files limit too small to load the tool ---------------------------------------


def test_an_open_files_limit_too_small_to_load_the_tool_says_so() -> None:
    # was: the call failed with the import's bare "OSError: [Errno 24] Too many open files"
    plan = shoal.Plan()
    starved = plan.call(pt.square.options(limits={"open_files": 1}), x=3)
    roomy = plan.call(pt.item_pid.options(limits={"open_files": 64}), item=1)
    result = shoal.run_sync(plan)
    error = result[starved].error
    assert result[starved].status == "failed" and error is not None
    assert error.type == "shoal.exceptions.ConfigError"
    assert "limits open_files=1 leaves the worker process too few file descriptors" in (
        error.message)
    assert "Too many open files" in error.message and "give a larger open_files" in (
        error.message)
    assert result[roomy].ok


# ---- the run's deadline and a call between attempts ---------------------------------------


async def _fails_then_waits(hold: float) -> str:
    if hold == 0:
        raise RuntimeError("try again")
    await asyncio.sleep(hold)
    return "done"


async def _deadline_between_attempts(backoff: float) -> shoal.Outcome:
    # one slot: the retry of the failed call is due at `backoff`, but the other call holds
    # the slot until after the deadline (at 1 s)
    made = shoal.tool(_fails_then_waits, max_concurrency=1, retries=1, backoff=backoff,
                      max_backoff=backoff, jitter=0)
    plan = shoal.Plan()
    retried = plan.call(made, hold=0)
    plan.call(made, hold=60)  # started second (same priority): when the first has failed
    result = await shoal.Runtime(deadline=1).run(plan)
    return result[retried]


@pytest.mark.parametrize("backoff", [0.1, 30])
def test_a_retry_the_deadline_stops_is_timed_out_whether_queued_or_in_backoff(
        backoff: float) -> None:
    # was: 'cancelled' when the retry was due but held by the limit (backoff 0.1), while one
    # still in its backoff (30) was 'timed_out': both are calls under way, between attempts
    outcome = arun(_deadline_between_attempts(backoff), virtual=True)
    assert outcome.status == "timed_out" and outcome.attempts == 1
    assert "deadline of 1 s passed (before its retry; attempt 1 ended failed" in outcome.reason


def test_an_open_files_limit_too_small_to_start_an_agents_process_says_so() -> None:
    # was: "the process running agent lead/reader#1 died: exit code 1"
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "r1": ["r1 done"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process",
                         limits={"open_files": 1})
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [failed] = result.calls
    assert failed.status == "failed"
    text = str(failed.message.content)
    assert "the process for agent lead/reader#1 could not start: limits open_files=1 " in text
    assert "Too many open files" in text and "give a larger open_files" in text
