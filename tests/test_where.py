"""Where calls ran (``Outcome.where``, attempts' ``where``), and checks of ``resources``.

Ray nodes are covered by tests/test_ray_nodes.py; here the local backends, the journal's
columns (also in files from before them) and the validation of a tool's resources.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.agents.node import NodeInjected
from shoal.exceptions import ToolDefinitionError
from shoal.executors.base import Call
from shoal.store.sqlite import SQLiteStore
from shoal.testing.conformance_tools import add_async, echo
from tests import process_tools as pt

HOST = socket.gethostname()


def run(plan: shoal.Plan, db: Path | None = None) -> shoal.RunResult:
    async def go() -> shoal.RunResult:
        store: Any = "memory" if db is None else SQLiteStore(db)
        async with shoal.Runtime(store=store) as runtime:
            return await runtime.run(plan)

    return asyncio.run(go())


def test_local_backends_name_this_machine_and_calls_that_never_ran_nothing() -> None:
    plan = shoal.Plan()
    plan.call(add_async, a=1, b=2, node_id="inline")
    plan.call(echo, value=1, node_id="thread")
    plan.call(pt.square, x=3, node_id="process")
    result = run(plan)
    assert result.ok, result
    assert {o.node_id: (o.executor, o.where) for o in result} == {
        "inline": ("inline", HOST), "thread": ("thread", HOST), "process": ("process", HOST)}
    assert result["process"].to_dict()["where"] == HOST


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_agents_say_where_they_ran_and_so_do_the_calls_that_ran_them(isolation: str) -> None:
    from shoal.testing import ScriptedModel, call

    model = ScriptedModel.per_prompt({"go": [[call("scout", task="h")], "done"],
                                      "h": ["helped"], "n": ["as a node"]})
    scout = shoal.Agent(name="scout", model=model,
                         isolation=isolation)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, subagents=[scout])
    result = lead.run_sync("go")
    assert [(r.lineage, r.where) for r in result.walk()] == [
        ("lead", HOST), ("lead/scout#1", HOST)]
    outcome = result.calls[0].outcome
    assert outcome is not None and outcome.where == HOST
    assert result.to_dict()["children"][0]["where"] == HOST
    plan = shoal.Plan()
    plan.call(scout, task="n", node_id="agent")
    assert run(plan)["agent"].where == HOST


def test_a_subagent_call_records_the_where_its_agent_gives() -> None:
    # the agent decides the call's where (a Ray agent names its node): a failed one too
    seen: list[Call] = []

    async def fake_node(task: str, shoal_node: NodeInjected) -> str:
        assert shoal_node.call is not None
        seen.append(shoal_node.call)
        shoal_node.ran_on("10.0.0.7 node 4f1c")
        shoal_node.ran_on("")  # says nothing: changes nothing
        raise RuntimeError("the agent failed")

    plan = shoal.Plan()
    plan.call(shoal.tool(fake_node), task="t", node_id="agent")
    outcome = run(plan)["agent"]
    assert outcome.status == "failed" and outcome.where == "10.0.0.7 node 4f1c"
    assert len(seen) == 1


def test_a_call_that_never_ran_says_nowhere() -> None:
    plan = shoal.Plan()
    first = plan.call(pt.square, x=2, node_id="first")
    plan.call(shoal.tool(lambda: 1, name="never").options(isolation="thread"),
              after=first, node_id="second")

    async def go() -> shoal.RunResult:
        async with shoal.Runtime(max_concurrency=1) as runtime:
            handle = runtime.start(plan)
            handle.cancel("second")
            return await handle

    result = asyncio.run(go())
    assert result["second"].status == "cancelled" and result["second"].where == ""
    assert result["first"].where == HOST


def test_the_journal_keeps_where_for_outcomes_and_attempts(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    plan = shoal.Plan()
    plan.call(pt.square, x=3, node_id="process")
    plan.call(echo, value=1, node_id="thread")
    result = run(plan, db)
    store = SQLiteStore(db, read_only=True)
    assert {k: s.outcome.where for k, s in store.outcomes(result.run_id).items()} == {
        "process": HOST, "thread": HOST}
    assert {a.where for a in store.attempts(result.run_id)} == {HOST}


def test_a_journal_from_before_where_is_read_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    plan = shoal.Plan()
    plan.call(echo, value=1, node_id="thread")
    first = run(plan, db)
    with sqlite3.connect(db) as conn:  # the tables as older versions of shoal made them
        conn.execute("ALTER TABLE attempts DROP COLUMN ran_on")
        conn.execute("ALTER TABLE outcomes DROP COLUMN ran_on")
    old = SQLiteStore(db, read_only=True)
    assert old.outcomes(first.run_id)["thread"].outcome.where == ""
    assert {a.where for a in old.attempts(first.run_id)} == {""}
    old.close()
    second = run(plan, db)  # opened for writing: the columns are added
    store = SQLiteStore(db, read_only=True)
    assert store.outcomes(first.run_id)["thread"].outcome.where == ""
    assert store.outcomes(second.run_id)["thread"].outcome.where == HOST
    assert {a.where for a in store.attempts(second.run_id)} == {HOST}


# ---- resources: checked when the tool is defined ---------------------------------------------


@pytest.mark.parametrize(("resources", "message"), [
    ({"": 1}, "non-empty text"),
    ({"  ": 1}, "non-empty text"),
    ({3: 1}, "non-empty text"),
    ({" node-b": 1}, "spaces at its ends"),
    ({"node-b\n": 1}, "spaces at its ends"),
    ({"node\x00b": 1}, "unprintable"),
    ({"node-b": -1}, "number of 0 or more"),
    ({"node-b": float("nan")}, "number of 0 or more"),
    ({"node-b": float("inf")}, "number of 0 or more"),
    ({"node-b": True}, "number of 0 or more"),
    ({"node-b": "1"}, "number of 0 or more"),
    ({"node-b": 0.00001}, "smallest amount Ray counts"),
    ({"num_cpus": 1, "CPU": 2}, "both set Ray's num_cpus"),
    ({"GPU": 1, "num_gpus": 1}, "both set Ray's num_gpus"),
    (["node-b"], "takes a mapping"),
])
def test_bad_resources_are_refused_when_the_tool_is_defined(resources: Any,
                                                            message: str) -> None:
    with pytest.raises(ToolDefinitionError, match=message):
        shoal.tool(isolation="ray", resources=resources)(lambda: None)
    with pytest.raises(ToolDefinitionError, match=message):
        echo.options(resources=resources)


def test_good_resources_are_kept() -> None:
    spec = {"node-b": 1, "node:10.0.0.7": 0.01, "num_cpus": 0, "memory": 2e9}
    policy = echo.options(isolation="ray", resources=spec).policy
    assert dict(policy.resources) == {k: float(v) for k, v in spec.items()}


@pytest.mark.parametrize("labels", [["zone"], {"": "b"}, {"zone": 1}, {3: "b"}, "zone=b"])
def test_bad_labels_are_refused_when_the_tool_is_defined(labels: Any) -> None:
    with pytest.raises(ToolDefinitionError, match="labels"):
        echo.options(isolation="ray", labels=labels)


def test_labels_become_rays_label_selector_and_never_the_pool() -> None:
    from shoal.executors.ray import ray_options

    policy = echo.options(isolation="ray", labels={"zone": "!b", "disk": "ssd"},
                          resources={"num_cpus": 0}).policy
    assert policy.labels == (("disk", "ssd"), ("zone", "!b"))
    options, pooled = ray_options(policy.resources, policy.labels)
    assert options["label_selector"] == {"disk": "ssd", "zone": "!b"}
    assert not pooled  # the pool's actors are placed without regard to labels
    assert ray_options((("num_cpus", 0.0),))[1]
