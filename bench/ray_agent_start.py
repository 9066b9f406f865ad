"""Where a Ray agent's start goes: Ray's worker, shoal's imports, and the agent itself.

Run: ``python -m bench.ray_agent_start`` (a private local Ray of 2 CPUs; ``RAY_ADDRESS``
is ignored). It prints medians of 5 trials, after 2 untimed ones, of

* a bare Ray actor (``num_cpus=0``) made and called once, then ``ray.kill``: Ray's floor
  (a worker process for the actor, started afresh once Ray's prestarted ones are used);
* the same, importing :mod:`shoal.agents.ray_agent` in the actor (what Ray loads for an
  agent's actor): the import's own time is printed too;
* one ``Agent(isolation="ray")`` that answers at once (:class:`~shoal.testing.ScriptedModel`),
  end to end (``await agent.run``);
* a lead with 1, 4 and 8 such subagents in one turn: their actors are asked for at once,
  and the time until each has connected back is printed (start to connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from typing import Any

import shoal
from shoal.agents import ray_agent
from shoal.testing import ScriptedModel, call


def _bare() -> int:
    return os.getpid()


def _importing() -> float:
    began = time.perf_counter()
    import shoal.agents.ray_agent  # noqa: F401  # what an agent's actor loads

    return time.perf_counter() - began


def _actor_once(ray: Any, cls: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    actor = cls.remote()
    got = ray.get(actor.ping.remote())
    elapsed = time.perf_counter() - began
    ray.kill(actor)
    return elapsed, got


def raw_actors(ray: Any) -> None:
    """Ray's floor, and the import of the agent actor's module in a fresh worker."""
    bare = ray.remote(num_cpus=0)(type("Bare", (), {"ping": lambda self: _bare()}))
    importer = ray.remote(num_cpus=0)(type("Importer", (), {"ping": lambda self: _importing()}))
    for _ in range(2):
        _actor_once(ray, bare)
    floors = [_actor_once(ray, bare)[0] for _ in range(5)]
    imports = [_actor_once(ray, importer) for _ in range(5)]
    print(f"bare Ray actor, made and called once: median {statistics.median(floors):.3f} s")
    print(f"actor importing shoal.agents.ray_agent: median "
          f"{statistics.median(t for t, _ in imports):.3f} s, of which the import "
          f"{statistics.median(i for _, i in imports):.3f} s")


async def agents() -> None:
    """One Ray agent end to end; leads with several Ray subagents, and when each connected."""
    model = ScriptedModel.per_prompt({"go": ["done"]})
    one = shoal.Agent(name="a", model=model, isolation="ray")
    for _ in range(2):
        await one.run("go")
    times = []
    for _ in range(5):
        began = time.perf_counter()
        await one.run("go")
        times.append(time.perf_counter() - began)
    print(f"one Ray agent, end to end: median {statistics.median(times):.3f} s")
    connected: list[float] = []
    start = ray_agent.RayChannel.start.__func__  # type: ignore[attr-defined]

    async def timed(cls: Any, *args: Any) -> Any:
        channel = await start(cls, *args)
        connected.append(time.perf_counter())
        return channel

    ray_agent.RayChannel.start = classmethod(timed)  # type: ignore[method-assign,assignment]
    for n in (1, 4, 8):
        lead_model = ScriptedModel.per_prompt({
            "lead": [[call("a", task="go") for _ in range(n)], "ok"], "go": ["done"]})
        lead = shoal.Agent(name="lead", model=lead_model, subagents=[
            shoal.Agent(name="a", model=lead_model, isolation="ray")])
        connected.clear()
        began = time.perf_counter()
        await lead.run("lead")
        total = time.perf_counter() - began
        print(f"lead with {n} Ray subagents: {total:.2f} s; connected after "
              f"{min(connected) - began:.2f} .. {max(connected) - began:.2f} s")
    ray_agent.RayChannel.start = classmethod(start)  # type: ignore[method-assign,assignment]


def main() -> None:
    """Start a private Ray, measure, shut it down."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        raw_actors(ray)
        asyncio.run(agents())
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
