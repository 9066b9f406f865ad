"""A sync call abandoned on a Ray pool actor's thread holds what it holds until it really ends.

Calls that reserve no CPU (``resources={"num_cpus": 0}``) run on shoal's Ray actors, a sync
tool on one of the actor's threads, which ``ray.cancel`` cannot stop: timed out, the call is
recorded ``abandoned`` and its thread runs on. It used to let go of its resource keys and of
an exclusive tool's turn at once, so a write to the same key ran beside the thread still
writing; the thread backend holds them until the thread returns (``Call.released``), and so
does the Ray backend now. Real Ray: ``RAY_ADDRESS`` if set, else a private local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

import shoal
from shoal.events import Event, NodeHeld
from tests import ray_s39_tools as tools
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]

POOLED = {"isolation": "ray", "resources": {"num_cpus": 0}}
SLOW = 2.5  # seconds the abandoned thread works on after it began (its timeout: 1 s)


def _run(plan: shoal.Plan, events: list[Event]) -> shoal.RunResult:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime(on_event=events.append) as runtime:
            warm = shoal.Plan()  # the pool actor up first: the slow call's 1 s is its own
            warm.call(rt.echo.options(**POOLED), value="up")
            await runtime.run(warm)
            return await runtime.run(plan)

    return arun(main(), timeout=120)


def _slow(**options: Any) -> shoal.Tool[..., Any]:
    return tools.slow_write.options(**POOLED, timeout=1.0, **options)


def test_a_write_waits_for_the_pool_thread_of_a_timed_out_write_to_the_same_key(
        tmp_path: Path) -> None:
    # was: 'after' began while the abandoned thread of 'slow' still wrote file:/p
    d = str(tmp_path)
    plan = shoal.Plan()
    slow = plan.call(_slow(writes=["file:{p}"]), directory=d, name="slow", seconds=SLOW, p="/p")
    after = plan.call(tools.quick_write.options(**POOLED, writes=["file:{p}"]),
                      directory=d, name="after", p="/p")
    events: list[Event] = []
    result = _run(plan, events)
    assert result[slow].status == "timed_out" and result[slow].abandoned, result[slow]
    assert result.value(after) == "after"
    assert tools.steps(d) == ["slow began", "slow ended", "after ran"]
    held = [e for e in events if isinstance(e, NodeHeld)]
    assert [(e.node_id, e.by) for e in held] == [(after.node, slow.node)], held
    assert held[0].reason == (f"waiting for the thread of {slow.node!r}, which timed out and "
                              "still runs, to release file:/p")


def test_an_exclusive_tool_waits_for_an_abandoned_pool_thread(tmp_path: Path) -> None:
    d = str(tmp_path)
    plan = shoal.Plan()
    slow = plan.call(_slow(), directory=d, name="slow", seconds=SLOW, p="/p")
    alone = plan.call(tools.quick_write.options(**POOLED, exclusive=True),
                      directory=d, name="alone", p="/q")
    events: list[Event] = []
    result = _run(plan, events)
    assert result[slow].abandoned and result.value(alone) == "alone"
    assert tools.steps(d) == ["slow began", "slow ended", "alone ran"]


def test_a_retry_waits_for_its_own_abandoned_attempt_on_a_pool_thread(tmp_path: Path) -> None:
    # was: its second attempt began writing file:/p beside its first, still running
    d = str(tmp_path)
    plan = shoal.Plan()
    slow = plan.call(_slow(writes=["file:{p}"], retries=1, backoff=0.0), directory=d,
                     name="slow", seconds=SLOW, p="/p")
    result = _run(plan, [])
    assert result[slow].attempts == 2 and result[slow].status == "timed_out", result[slow]
    assert tools.steps(d)[:3] == ["slow began", "slow ended", "slow began"]


def test_an_abandoned_pool_thread_that_ends_holds_nothing_afterwards(tmp_path: Path) -> None:
    # a short overrun: its thread ends soon after its timeout, and the next call then runs
    d = str(tmp_path)
    plan = shoal.Plan()
    slow = plan.call(_slow(writes=["file:{p}"]), directory=d, name="slow", seconds=1.3, p="/p")
    after = plan.call(tools.quick_write.options(**POOLED, writes=["file:{p}"]),
                      directory=d, name="after", p="/p")
    result = _run(plan, [])
    assert result[slow].abandoned and result.value(after) == "after"
    assert tools.steps(d) == ["slow began", "slow ended", "after ran"]


UNSTARTED = """
import json, sys, time
import shoal
from tests import ray_s39_tools as tools

d = sys.argv[1]
pool = {"isolation": "ray", "resources": {"num_cpus": 0}}
plan = shoal.Plan()
slow = plan.call(tools.slow_write.options(**pool, timeout=0.05), directory=d, name="slow",
                 seconds=1.0, p="/p")
out = shoal.run_sync(plan)[slow]
time.sleep(1.5)  # a thread that had started would have ended by now
print(json.dumps([out.status, out.abandoned, tools.steps(d)]))
"""


def test_a_sync_pooled_call_stopped_before_the_actor_started_it_is_not_abandoned(
        tmp_path: Path) -> None:
    # was: abandoned, "still running", though it never ran: the first call of a driver waits
    # for its pool actor to start, and this one timed out meanwhile
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", UNSTARTED, str(tmp_path)], cwd=root, env=env,
                          text=True, capture_output=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    status, abandoned, log = json.loads(done.stdout.splitlines()[-1])
    assert (status, abandoned, log) == ("timed_out", False, [])
