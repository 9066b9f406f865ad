"""Where a swarm's CPU goes, per subagent, counted in Python bytecodes: noise-free.

``python -m bench.swarm_ops`` runs :mod:`bench.swarm`'s workload on the virtual clock twice,
with ``small`` and ``large`` workers, counting every bytecode the interpreter executes (a
``sys.settrace`` opcode trace), and prints per subagent ((large - small) / (large - small
workers)): the total, the same workload on bare asyncio (:func:`bench.swarm.raw_floor`,
the floor), then the counts by module and the functions that execute most of them.

A count is the same on a quiet machine and on a loaded one (timings on two shared cores vary
by tens of percent), and it names the function: a change to a swarm's per-subagent path is
measured in seconds, before and after, in one run each. It counts what Python executes, not
what a bytecode costs (a call or an allocation costs more than a load): confirm a change
with instructions, as ``bench/README.md`` says (cachegrind). The collector is paused, as in
that measurement: its cost is :mod:`bench.swarm`'s to show.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from bench.swarm import Swarm, SwarmRun, raw_floor, run_swarm
from shoal.testing import run_virtual


@dataclass(frozen=True)
class OpsProfile:
    """Bytecodes per subagent: in all, on bare asyncio, and by function (self counts)."""

    per_subagent: float
    floor: float
    by_function: dict[str, float]

    def by_module(self) -> dict[str, float]:
        """The self counts summed by module (a function's name before ``:``), most first."""
        modules: dict[str, float] = {}
        for name, ops in self.by_function.items():
            module = name.partition(":")[0]
            modules[module] = modules.get(module, 0.0) + ops
        return dict(sorted(modules.items(), key=lambda item: -item[1]))


def _name(code: CodeType) -> str:
    path = code.co_filename
    if "/src/" in path:  # shoal's own: shoal/...
        path = path.rsplit("/src/", 1)[1]
    elif "/lib/python3" in path:  # the standard library's: asyncio/...
        path = path.rsplit("/lib/python3", 1)[1].partition("/")[2]
    return f"{path}:{code.co_firstlineno} {code.co_qualname}"


def _count(make: Callable[[], Coroutine[Any, Any, SwarmRun]]) -> Counter[CodeType]:
    """Run ``make()`` on the virtual clock; the bytecodes each code object executed."""
    counts: Counter[CodeType] = Counter()

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            counts[frame.f_code] += 1
        return local

    def enter(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        return local

    previous = sys.gettrace()  # a debugger's, say: given back after
    sys.settrace(enter)
    try:
        run = run_virtual(make())
    finally:
        sys.settrace(previous)
    if not run.ok:
        raise RuntimeError(f"the swarm did not go as scripted: {run.detail}")
    return counts


def profile(small: int = 10, large: int = 30) -> OpsProfile:
    """Count a swarm of ``small`` and of ``large`` workers; the difference per subagent."""
    if not 0 < small < large:
        raise ValueError(f"need 0 < small < large, got {small} and {large}")
    was = gc.isenabled()
    gc.disable()
    try:
        run_virtual(run_swarm(Swarm(workers=3)))  # imports and first-use caches: not counted
        few = _count(lambda: run_swarm(Swarm(workers=small)))
        many = _count(lambda: run_swarm(Swarm(workers=large)))
        floor_few = _count(lambda: raw_floor(Swarm(workers=small)))
        floor_many = _count(lambda: raw_floor(Swarm(workers=large)))
    finally:
        if was:
            gc.enable()
    extra = large - small
    by_function: dict[str, float] = {}
    for code in many.keys() | few.keys():  # (a code object may run in one of them only)
        ops = (many[code] - few[code]) / extra
        if ops:
            name = _name(code)
            by_function[name] = by_function.get(name, 0.0) + ops
    return OpsProfile((many.total() - few.total()) / extra,
                      (floor_many.total() - floor_few.total()) / extra, by_function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=30)
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    args = parser.parse_args()
    found = profile(args.small, args.large)
    print(f"bytecodes per subagent: {found.per_subagent:,.0f} (bare asyncio: "
          f"{found.floor:,.0f}, {found.per_subagent / found.floor:.2f}x)")
    print("\nby module:")
    for module, ops in list(found.by_module().items())[:20]:
        print(f"{ops:9,.0f}  {module}")
    print(f"\ntop {args.top} functions (self):")
    ranked = sorted(found.by_function.items(), key=lambda item: -item[1])
    for name, ops in ranked[:args.top]:
        print(f"{ops:9,.0f}  {name}")


if __name__ == "__main__":
    main()
