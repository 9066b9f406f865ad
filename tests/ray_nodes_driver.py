"""The driver of tests/test_ray_nodes.py: runs one plan on a two-node Ray cluster, prints JSON.

It runs in a process of its own (``python -m tests.ray_nodes_driver CONFIG``), as a user's
program would: Ray allows one connection per process, and the test process must stay free to
start and kill the cluster's nodes. The journal (a SQLite file) and the approver live here, on
the driver; what the run did is printed as one JSON line for the test to check.

CONFIG is JSON: ``address`` (the head), ``journal`` (the SQLite file), ``directory`` (where
tools leave marks), ``scenario`` (``"placed"`` or ``"node_lost"``: a plan of calls;
``"agents_placed"`` or ``"agents_lost"``: agents in Ray actors, ``Agent(isolation="ray")``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from shoal import Agent, Plan, Runtime
from shoal.agents.result import AgentResult
from shoal.approvals import ApprovalRequest
from shoal.exceptions import AgentError
from shoal.outcome import RunResult
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests import ray_tools as rt

ON_A = {"node-a": 1}
ON_B = {"node-b": 1}
FREE = {"num_cpus": 0}  # shoal's actor pool: one actor per node


def placed(directory: str) -> Plan:
    """Calls pinned to each node by their resources or labels, pooled calls, one approved."""
    del directory
    plan = Plan()
    on_ray = rt.node_ip.options(isolation="ray")
    for i in range(3):
        plan.call(on_ray.options(resources=ON_A), node_id=f"a{i}")
        plan.call(on_ray.options(resources=ON_B), node_id=f"b{i}")
    for i in range(2):
        plan.call(on_ray.options(resources=FREE), node_id=f"pooled{i}")
    plan.call(on_ray.options(resources=ON_B, approval=True), node_id="approved")
    plan.call(on_ray.options(labels={"zone": "b"}), node_id="zone-b")
    plan.call(on_ray.options(labels={"zone": "!b"}), node_id="not-zone-b")
    return plan


def node_lost(directory: str) -> Plan:
    """Calls that need one CPU, any node's: with one CPU per node they run on both."""
    plan = Plan()
    slow = rt.mark_and_wait.options(isolation="ray", resources={"num_cpus": 1})
    for i in range(4):
        plan.call(slow, directory=directory, name=f"c{i}", seconds=3.0, node_id=f"c{i}")
    return plan


SCENARIOS = {"placed": placed, "node_lost": node_lost}


def _tree_model(directory: str) -> ScriptedModel:
    """The scripts of every agent of the agent scenarios, by prompt."""
    def busy(name: str) -> list[Any]:
        return [[call("mark_and_wait", directory=directory, name=name, seconds=5.0)],
                f"{name} done"]

    return ScriptedModel.per_prompt({
        "go": [[call("on_a", task="a"), call("on_b", task="b"), call("zone_b", task="z")],
               "placed"],
        "a": [[call("node_ip")], "on a"],
        "b": [[call("node_ip"), call("approved_ip")], "on b"],
        "z": [[call("node_ip")], "in zone b"],
        "slow": [[call("slow_a", task="sa"), call("slow_b", task="sb")], "the lead is done"],
        "sa": busy("slow_a"), "sb": busy("slow_b"), "r0": busy("r0"), "r1": busy("r1"),
    })


def agents_placed(directory: str) -> tuple[Agent[str], str, Plan]:
    """A lead (on the driver) whose subagents run in actors on both nodes, placed by
    resources and by a label; the one on node-b asks for an approval."""
    model = _tree_model(directory)
    tools = [rt.node_ip, rt.approved_ip]
    lead = Agent(name="lead", model=model, subagents=[
        Agent(name="on_a", model=model, tools=tools, isolation="ray", resources=ON_A),
        Agent(name="on_b", model=model, tools=tools, isolation="ray", resources=ON_B),
        Agent(name="zone_b", model=model, tools=tools, isolation="ray", labels={"zone": "b"}),
    ])
    # an agent as a plan node, placed on node-b: the node's outcome says where it ran
    plan = Plan()
    plan.call(Agent(name="node_b", model=model, tools=tools, isolation="ray",
                    labels={"zone": "b"}), task="z", node_id="agent-node")
    return lead, "go", plan


def agents_lost(directory: str) -> tuple[Agent[str], str, Plan]:
    """Agents in actors on both nodes, busy when node-b is lost.

    The tree: a lead whose subagents ``slow_a`` and ``slow_b`` are pinned to node-a and
    node-b (no retries: the one on node-b gives the lead an error). The plan: agent nodes
    ``r0``, ``r1``, retried by shoal's policy, each needing one CPU of any node (so one
    lands on each node).
    """
    model = _tree_model(directory)
    tools = [rt.mark_and_wait]
    lead = Agent(name="lead", model=model, subagents=[
        Agent(name="slow_a", model=model, tools=tools, isolation="ray", resources=ON_A),
        Agent(name="slow_b", model=model, tools=tools, isolation="ray", resources=ON_B),
    ])
    anywhere = Agent(name="anywhere", model=model, tools=tools, isolation="ray",
                     resources={"num_cpus": 1})
    plan = Plan()
    for i in range(2):
        plan.call(anywhere.node_tool.options(retries=2, backoff=0.2), task=f"r{i}",
                  node_id=f"r{i}")
    return lead, "slow", plan


AGENT_SCENARIOS = {"agents_placed": agents_placed, "agents_lost": agents_lost}


def run_agents(config: dict[str, Any]) -> dict[str, Any]:
    """Run an agent scenario's tree and plan side by side; report agents, calls, journal."""
    asked: list[dict[str, Any]] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append({"node_id": request.node_id, "pid": os.getpid()})
        return True

    store = SQLiteStore(config["journal"])
    lead, prompt, plan = AGENT_SCENARIOS[config["scenario"]](config["directory"])

    async def go() -> tuple[AgentResult[Any], RunResult]:
        async with Runtime(ray_address=config["address"], store=store,
                           approver=approver) as runtime:
            tree, ran = await asyncio.gather(lead.run(prompt, runtime=runtime),
                                             runtime.run(plan), return_exceptions=True)
        if isinstance(tree, AgentError) and tree.result is not None:
            tree = tree.result
        assert isinstance(tree, AgentResult), tree
        assert isinstance(ran, RunResult), ran
        return tree, ran

    tree, ran = asyncio.run(go())
    runs = [r.run_id for r in store.list_runs(limit=10_000)]
    return {
        "pid": os.getpid(),
        "agents": {r.lineage: {"status": r.status, "where": r.where, "output": r.output,
                               "error": "" if r.error is None else str(r.error)}
                   for r in tree.walk()},
        "calls": {c.lineage: {"status": c.status, "where": c.outcome.where,
                              "value": c.message.content}
                  for r in tree.walk() for c in r.calls if c.outcome is not None},
        "outcomes": {o.node_id: {"status": o.status, "where": o.where, "value": o.value,
                                 "attempts": o.attempts,
                                 "error": "" if o.error is None else o.error.message}
                     for o in ran},
        "attempts": [{"node_id": a.node_id, "attempt": a.attempt, "status": a.status,
                      "error": a.error, "where": a.where} for a in store.attempts(ran.run_id)],
        "journal": {f"{run_id}:{node_id}": stored.outcome.where for run_id in runs
                    for node_id, stored in store.outcomes(run_id).items()},
        "approvals": [{"node_id": a.node_id, "decision": a.decision}
                      for run_id in runs for a in store.approvals(run_id)],
        "asked": asked,
        "tree_run": tree.run_id, "plan_run": ran.run_id,
    }


def main(config: dict[str, Any]) -> dict[str, Any]:
    """Run the scenario's plan with the journal and approver here; report what happened."""
    if config["scenario"] in AGENT_SCENARIOS:
        return run_agents(config)
    asked: list[dict[str, Any]] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append({"node_id": request.node_id, "pid": os.getpid()})
        return True

    store = SQLiteStore(config["journal"])
    plan = SCENARIOS[config["scenario"]](config["directory"])

    async def go() -> RunResult:
        async with Runtime(ray_address=config["address"], store=store,
                           approver=approver) as runtime:
            return await runtime.run(plan)

    result = asyncio.run(go())
    return {
        "pid": os.getpid(),
        "outcomes": {o.node_id: {"status": o.status, "where": o.where, "value": o.value,
                                 "attempts": o.attempts, "executor": o.executor}
                     for o in result},
        "journal": {node_id: stored.outcome.where
                    for node_id, stored in store.outcomes(result.run_id).items()},
        "attempts": [{"node_id": a.node_id, "attempt": a.attempt, "status": a.status,
                      "error": a.error, "where": a.where}
                     for a in store.attempts(result.run_id)],
        "approvals": [{"node_id": a.node_id, "decision": a.decision}
                      for a in store.approvals(result.run_id)],
        "asked": asked,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
