"""Ray: two threads' first pooled calls share one pool; labels no node carries are warned about.

The actor pool (one actor per node) was made on first use without a lock: runtimes on two
threads, whose first pooled calls came at once, could both make it (two actors on a node, and
the counts of calls in flight beside them torn). And a tool or agent whose ``labels=`` no node
matches waited (for ever without a timeout) without a word, while ``resources=`` no node has
were warned about. Real Ray: ``RAY_ADDRESS`` if set, else a private local Ray for the module.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import pytest

pytest.importorskip("ray")

import shoal
from shoal.testing import ScriptedModel
from tests import ray_tools as rt
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(180)]

ROUNDS = 8


def _alive_nodes() -> int:
    import ray

    nodes: list[dict[str, Any]] = cast(Any, ray).nodes()
    return len([node for node in nodes if node.get("Alive")])


def _at_once(work: Any, count: int = 2) -> list[Any]:
    """``work()`` on ``count`` threads released together; their results (errors re-raised)."""
    gate = threading.Barrier(count)
    results: list[Any] = [None] * count

    def go(i: int) -> None:
        gate.wait()
        try:
            results[i] = work()
        except BaseException as exc:  # handed to the test's thread
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_two_runtimes_first_pooled_calls_on_two_threads_share_one_pool() -> None:
    # was: each thread's first call could make the pool: two actors per node, one left idle
    from shoal.executors import ray as backend

    pooled = rt.where.options(isolation="ray", resources={"num_cpus": 0})

    def run() -> list[str]:
        plan = shoal.Plan()
        calls = [plan.call(pooled) for _ in range(20)]
        result = shoal.Runtime().run_sync(plan)
        return [result[c].status for c in calls]

    for _ in range(3):  # the pool lives as long as the connection: made in the first round
        assert _at_once(run) == [["ok"] * 20] * 2
    session = backend._SESSION
    assert session is not None
    assert len(session.pool.actors) == len(session.pool.pending) == _alive_nodes()


def test_the_pool_is_made_once_when_two_threads_pick_from_it_at_once() -> None:
    import ray

    from shoal.executors.ray import _Pool

    for _ in range(ROUNDS):
        pool = _Pool(ray)
        try:
            picked = _at_once(pool.pick)
            assert len(pool.actors) == len(pool.nodes) == len(pool.pending) == _alive_nodes()
            assert all(0 <= index < len(pool.actors) for index in picked)
        finally:
            pool.kill()


def _run(plan: shoal.Plan) -> shoal.RunResult:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan)

    return arun(main(), timeout=120)


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "no node of the Ray cluster" in r.message]


def test_a_tool_whose_labels_no_node_carries_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # was: no word; the calls waited until their timeouts (for ever without one)
    plan = shoal.Plan()
    nowhere = rt.echo.options(isolation="ray", labels={"s40-zone": "in(mars, venus)"},
                              timeout=1.0)
    calls = [plan.call(nowhere, value=n) for n in range(2)]
    with caplog.at_level(logging.WARNING, logger="shoal"):
        result = _run(plan)
    assert [result[c].status for c in calls] == ["timed_out", "timed_out"]
    assert _said(caplog) == [
        "no node of the Ray cluster carries the labels tool 'echo' asks for "
        "(s40-zone=in(mars, venus)): its calls wait until such a node joins, for ever without "
        "a timeout"]


def test_a_tool_whose_labels_every_node_matches_runs_without_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    # "!x" and "!in(...)": any node but those, so also nodes without the label
    plan = shoal.Plan()
    anywhere = rt.echo.options(isolation="ray", labels={"s40-zone": "!mars",
                                                        "s40-rack": "!in(a, b)"})
    call = plan.call(anywhere, value=7)
    with caplog.at_level(logging.WARNING, logger="shoal"):
        assert _run(plan).value(call) == 7
    assert _said(caplog) == []


def test_a_ray_agent_whose_labels_no_node_carries_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedModel.per_prompt({"r": ["never asked"]})
    nowhere = shoal.Agent(name="reader", model=model, isolation="ray",
                          labels={"s40-zone": "mars"})
    plan = shoal.Plan()
    node = plan.call(nowhere, task="r")
    with caplog.at_level(logging.WARNING, logger="shoal"):
        result = shoal.run_sync(plan, deadline=2.0)
    assert result[node].status != "ok"
    said = _said(caplog)
    assert len(said) == 1, said
    assert said[0].startswith("no node of the Ray cluster carries the labels agent "), said
    assert said[0].endswith("asks for (s40-zone=mars): its actor waits until such a node "
                            "joins, for ever without a timeout"), said
