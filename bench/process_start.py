"""Cold start of a process worker: forked from the pool's template vs started afresh.

Each trial asks a :class:`~shoal.executors.process.ProcessExecutor` for a worker it does not
have yet (every trial uses a profile of its own, so no idle worker fits) and times from the
request to the worker's first answer: start, handshake (limits applied, "ready"), loading the
tool, and one call of ``os.getpid`` (a builtin, so no module of the benchmark's is imported).
Measured in the same run, interleaved: ``start_method="template"`` (a fork of the template,
which is started once, untimed, before the trials), ``start_method="spawn"`` (a fresh
interpreter: the way workers started before templates), and the floor: a raw ``os.fork()``
whose child writes one byte to a pipe that the parent reads. Target: a template-forked worker
answers in < 30 ms (median of 20).

The same for agents in processes of their own (``Agent(isolation="process")``): a lead asks
for one process agent per turn, and each one's start is timed from the lead's reply asking for
it to that agent's first model reply (an instant ``ScriptedModel``), on the tree's clock (its
events). A tree forks its agent processes from a template of its own, started with the tree;
each tree's first agent, which may still wait for the template's imports, is printed apart.
Trees with agents started as fresh interpreters (how they started before) run interleaved.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import warnings

import shoal
from bench.common import BenchResult, Target, cli, interleave_async, median, percentile
from shoal.agents._launch import AgentLauncher
from shoal.events import Event, ModelResponded
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from shoal.testing import ScriptedModel, call

NAME = "process_start"
TARGET = Target("value", "<=", 0.030)
getpid = shoal.tool(os.getpid, isolation="process", name="getpid")


def fork_round_trip() -> float:
    """The floor: ``os.fork()``, the child writes a byte, the parent reads it."""
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    with warnings.catch_warnings():  # threads here are harmless: the child only writes, exits
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.write(write_end, b"x")
        os._exit(0)
    os.read(read_end, 1)
    elapsed = time.perf_counter() - start
    os.close(read_end)
    os.close(write_end)
    os.waitpid(pid, 0)
    return elapsed


class Starts:
    """One executor whose every trial needs a new worker (a profile of its own)."""

    def __init__(self, method: str, trials: int) -> None:
        self.executor = ProcessExecutor(trials + 1, start_method=method)
        self.profiles = 0
        self.answers: list[int] = []

    async def once(self) -> float:
        self.profiles += 1
        limited = getpid.options(limits={"open_files": 4096 - self.profiles})
        call = Call(self.profiles, f"n{self.profiles}", limited, {}, 1, "process", None, "run")
        start = time.perf_counter()
        self.answers.append(await self.executor.execute(call))
        return time.perf_counter() - start


AGENTS_PER_TREE = 6


async def agent_starts(forks: bool, agents: int = AGENTS_PER_TREE) -> list[float]:
    """Seconds from the lead asking for each process agent to that agent's first model reply.

    ``forks``: from the tree's template (else each agent process is a fresh interpreter).
    """
    worker = shoal.Agent(name="worker", model=ScriptedModel(["ready"] * agents),
                         isolation="process")
    lead_model = ScriptedModel([*([call("worker", task=f"t{i}")] for i in range(agents)),
                                "done"])
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[worker], max_turns=agents + 1)
    events: list[Event] = []
    handle = lead.start("go", on_event=events.append)
    if not forks:  # the tree's launcher, made to start interpreters (the bench's comparison)
        ctx = handle._ctx
        ctx.agent_processes().close()
        ctx._launcher = AgentLauncher(fork=False)
    result = await handle
    if not (result.ok and len(result.children) == agents):
        raise RuntimeError(f"the agent tree failed: {result.error}")
    asked = [e.time for e in events if isinstance(e, ModelResponded) and e.lineage == "lead"]
    first = {e.lineage: e.time for e in reversed(events)
             if isinstance(e, ModelResponded) and e.lineage != "lead"}
    return [first[f"lead/worker#{i + 1}"] - asked[i] for i in range(agents)]


def measure_agents(result: BenchResult, trees: int, agents: int = AGENTS_PER_TREE) -> None:
    """Process agents' starts, template vs fresh interpreter, ``trees`` trees of each."""
    if not AgentLauncher().forks:
        result.note("process agents: forked from a template on Linux only (skipped)")
        return
    asyncio.run(agent_starts(True, 2))  # warm-up, untimed
    warm: dict[bool, list[float]] = {True: [], False: []}
    first: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(trees):
        for forks in (True, False):
            gc.collect()
            times = asyncio.run(agent_starts(forks, agents))
            first[forks].append(times[0])
            warm[forks].extend(times[1:])
    count = len(warm[True])
    result.add(f"process agent, template fork: to first model reply, median of {count}",
               median(warm[True]), "s", floor=median(warm[False]))
    result.add(f"process agent, template fork: p90 of {count}", percentile(warm[True], 0.9),
               "s", floor=percentile(warm[False], 0.9))
    result.add(f"process agent, fresh interpreter: median of {count}", median(warm[False]),
               "s")
    result.add(f"process agent, a tree's first (template start), median of {trees}",
               median(first[True]), "s", floor=median(first[False]))


def main(quick: bool = False) -> BenchResult:
    # quick (the suite's smoke test) checks correctness, not figures: few starts of each kind
    trials = 2 if quick else 20
    result = BenchResult(NAME)
    result.header(f"{trials} cold process-worker starts, request to first answer: template "
                  "fork vs fresh interpreter vs raw os.fork (interleaved)")
    for _ in range(3):  # warm-up, untimed (the children only write a byte and _exit, so
        fork_round_trip()  # forking this process is safe even once it has threads)
    template, spawn = Starts("template", trials), Starts("spawn", trials)
    if template.executor.start_method != "template":
        result.skipped = "workers are forked from a template on Linux only"
        result.note(result.skipped)
        return result

    async def floor_once() -> float:
        return fork_round_trip()

    async def measure() -> tuple[float, dict[str, list[float]]]:
        try:
            first = await template.once()  # the template itself starts here: untimed below
            times = await interleave_async(trials, {
                "floor": floor_once, "template": template.once, "spawn": spawn.once})
        finally:
            await template.executor.close()
            await spawn.executor.close()
        return first, times

    first, times = asyncio.run(measure())
    floor_times = times["floor"]
    fork, fresh = times["template"], times["spawn"]
    result.add(f"template fork, median of {trials}", median(fork), "s",
               floor=median(floor_times), target=TARGET)
    result.add(f"template fork, p90 of {trials}", percentile(fork, 0.9), "s",
               floor=percentile(floor_times, 0.9))
    result.add(f"fresh interpreter (spawn), median of {trials}", median(fresh), "s",
               floor=median(fork))
    result.add(f"fresh interpreter (spawn), p90 of {trials}", percentile(fresh, 0.9), "s",
               floor=percentile(fork, 0.9))
    result.add("first worker of a pool (template start included)", first, "s")
    workers = template.answers + spawn.answers
    result.check("every start answered, each from a new worker",
                 len(set(workers)) == len(workers) == 2 * trials + 1)
    if quick:
        measure_agents(result, 1, 3)
    else:
        measure_agents(result, 5)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
