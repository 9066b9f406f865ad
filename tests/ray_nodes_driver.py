"""The driver of tests/test_ray_nodes.py: runs one plan on a two-node Ray cluster, prints JSON.

It runs in a process of its own (``python -m tests.ray_nodes_driver CONFIG``), as a user's
program would: Ray allows one connection per process, and the test process must stay free to
start and kill the cluster's nodes. The journal (a SQLite file) and the approver live here, on
the driver; what the run did is printed as one JSON line for the test to check.

CONFIG is JSON: ``address`` (the head), ``journal`` (the SQLite file), ``directory`` (where
tools leave marks), ``scenario`` (``"placed"`` or ``"node_lost"``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from shoal import Plan, Runtime
from shoal.approvals import ApprovalRequest
from shoal.outcome import RunResult
from shoal.store.sqlite import SQLiteStore
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


def main(config: dict[str, Any]) -> dict[str, Any]:
    """Run the scenario's plan with the journal and approver here; report what happened."""
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
