"""What starting a subagent skips, and what it still keeps.

A parent's call of an inline subagent is bound to a tool without an injected node (the lean
path of an inline call): its outcome still says where the subagent ran, a process agent's
call keeps its node, and a tool bound for each call validates as its template does.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError, ToolArgumentError
from shoal.scheduler import driver
from shoal.schema import is_async_callable
from shoal.testing import ScriptedModel, call

pytestmark = pytest.mark.timeout(120)


def _lead(isolation: str) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({"go": [[call("worker", task="w")], "lead done"],
                                      "w": ["worker done"]})
    worker = shoal.Agent(name="worker", model=model, isolation=isolation)  # type: ignore[arg-type]
    return shoal.Agent(name="lead", model=model, subagents=[worker])


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_subagent_calls_outcome_says_where_the_subagent_ran(isolation: str) -> None:
    result = _lead(isolation).run_sync("go")
    assert result.ok, result.error
    (record,) = result.calls
    assert record.outcome is not None and record.outcome.status == "ok"
    assert record.outcome.where == result.children[0].where == driver.HOST


def test_an_inline_subagents_call_injects_nothing_a_process_agents_its_node() -> None:
    inline = _lead("inline").subagents[0]
    elsewhere = _lead("process").subagents[0]
    assert not inline._call_tool.injected  # the runtime's lean path: no node to make
    assert dict(elsewhere._call_tool.injected) == {"shoal_node": "node"}
    # what the parent's model sees is the same for both
    assert inline._call_tool.json_schema() == inline.subagent_tool.json_schema()
    assert inline._call_tool.description == inline.subagent_tool.description
    assert inline._call_tool.policy == inline.subagent_tool.policy


def test_a_bound_tool_validates_as_its_template_after_the_template_did() -> None:
    @shoal.tool
    async def template(task: str, times: int = 1) -> str:
        """A task, some times."""
        return task * times

    assert template.validate({"task": "a"}) == {"task": "a", "times": 1}  # its facts cached

    async def other(task: str, times: int = 1) -> str:
        return task

    bound = template.bound_to(other)
    assert bound.validate({"task": "a"}) == {"task": "a", "times": 1}
    assert bound.validate({"task": "a", "times": "2"}) == {"task": "a", "times": 2}
    with pytest.raises(ToolArgumentError):
        bound.validate({"task": ["not", "text"]})
    assert bound.keeps({"task": "a", "times": 2}) and not bound.keeps({"task": 1, "times": 2})



def test_tools_bound_from_a_template_that_never_validated_share_its_facts() -> None:
    # an agent binds its call's and its model turn's tool per subagent started: the schema's
    # facts are worked out once, on the template, not by each bound tool on its first check
    @shoal.tool
    async def template(task: str, times: int = 1) -> str:
        """A task, some times."""
        return task * times

    async def one(task: str, times: int = 1) -> str:
        return task

    async def two(task: str, times: int = 1) -> str:
        return task * 2

    first, second = template.bound_to(one), template.bound_to(two)
    assert first._kept_as_is is second._kept_as_is is template._kept_as_is is not None
    assert first.keeps({"task": "a", "times": 2}) and not second.keeps({"task": 1, "times": 2})
    assert second.validate({"task": "a", "times": "2"}) == {"task": "a", "times": 2}
    with pytest.raises(ToolArgumentError):
        first.validate({"task": ["not", "text"]})

    @shoal.tool
    async def unplain(task: list[str]) -> str:  # not plain: pydantic checks every call
        """Tasks."""
        return ",".join(task)

    bound = unplain.bound_to(one)
    assert bound._kept_as_is is None and not bound.keeps({"task": ["a"]})
    assert bound.validate({"task": ("a", "b")}) == {"task": ["a", "b"]}

class _Worker:
    async def run(self, task: str) -> str:
        return task

    def run_sync(self, task: str) -> str:
        return task


def test_is_async_callable_through_methods_and_partials() -> None:
    worker = _Worker()
    assert is_async_callable(worker.run)
    assert is_async_callable(functools.partial(_Worker.run, worker))
    assert is_async_callable(functools.partial(worker.run))
    assert is_async_callable(functools.partial(functools.partial(worker.run), "t"))
    assert not is_async_callable(worker.run_sync)
    assert not is_async_callable(functools.partial(_Worker.run_sync, worker))

    @functools.wraps(_Worker.run)
    def sync_wrapper(*args: Any) -> Any:  # a sync wrapper of an async function stays sync
        return None

    assert not is_async_callable(sync_wrapper)


@pytest.mark.parametrize("rerun", ["n1", 3, [1]])
def test_an_open_run_still_refuses_what_is_not_node_ids_to_rerun(rerun: Any) -> None:
    async def scenario() -> None:
        runtime = shoal.Runtime(store=None)
        with pytest.raises(ConfigError):
            runtime.open_run(rerun_in_doubt=rerun)

    asyncio.run(scenario())


def test_a_journaled_steps_run_is_dated_when_it_starts(tmp_path: Any) -> None:
    """Its record is no longer dated when made: the driver dates it as the run starts."""
    from shoal.scheduler.driver import epoch_now
    from shoal.store.open import open_store

    store = str(tmp_path / "runs.db")
    before = epoch_now()
    result = _lead("inline").run_sync("go", runtime=shoal.Runtime(store=store))
    after = epoch_now()
    assert result.ok
    journal = open_store(store)
    try:
        records = journal.list_runs()
    finally:
        journal.close()
    assert {r.run_id.split("/", 1)[1] for r in records} == {"lead/steps", "lead/worker#1/steps"}
    assert all(before <= r.started_at <= after for r in records), records
