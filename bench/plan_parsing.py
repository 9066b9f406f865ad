"""Reading plans: plan text parsed whole and streamed, plan files, and hostile files refused.

Plan text: one ``merge`` call whose list spans N lines (as a planner streaming a long list
writes it), parsed whole with ``parse_plan_text`` and fed one character at a time to
``PlanTextParser``. The time for 4N lines over the time for N lines shows how the cost grows:
about 4 when linear, 16 when every line rescans the call. Targets: ratio <= 6 both ways.
Plan files: a 1000-node JSON file and the same as YAML, loaded with ``load_plan``.
Hostile files: a 352-byte YAML alias bomb and JSON nested 100,000 deep, each refused with a
PlanError. Target: each refusal < 1 s. Best of 3 throughout, with the garbage collector
paused while timing.
"""

from __future__ import annotations

import functools
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.common import BenchResult, Target, cli
from shoal.exceptions import PlanError
from shoal.planfile import load_plan
from shoal.plantext import PlanTextParser, parse_plan_text
from shoal.tools import tool

NAME = "plan_parsing"
LINEAR = Target("value", "<=", 6)
REFUSED_FAST = Target("value", "<=", 1)
LOL = '"lol"'
# nine levels of nine aliases: 352 bytes that expand to 9**9 strings
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{','.join([f'*{prev}' if prev else LOL] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
) + "nodes: []\n"


@tool
def merge(parts: list[str]) -> str:
    """Join the parts (never called: only parsed)."""
    return "".join(parts)


@tool
def add(a: int, b: int) -> int:
    """The sum (never called: only loaded from plan files)."""
    return a + b


def long_call(lines: int) -> str:
    return "1. merge(parts=[\n" + "".join(f'  "part {i}",\n' for i in range(lines)) + "])\n"


def best_of(reps: int, action: Callable[[], object]) -> float:
    """The best time of ``reps`` runs, with the garbage collector off while timing: its passes
    cost more the more objects are alive, which would blur the growth of the parser's own work."""
    times = []
    for _ in range(reps):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            action()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


def streamed(text: str) -> None:
    parser = PlanTextParser([merge])
    for char in text:
        parser.feed(char)
    parser.close()


def refused(path: Path) -> bool:
    try:
        load_plan(path)
    except PlanError:
        return True
    return False


def main(quick: bool = False) -> BenchResult:
    lines, nodes, reps = (500, 100, 3) if quick else (5000, 1000, 3)
    result = BenchResult(NAME)
    result.header(f"plan text of one call over {lines:,} and {4 * lines:,} lines; "
                  f"{nodes}-node plan files; hostile files (best of {reps})")
    small, large = long_call(lines), long_call(4 * lines)
    whole = [best_of(reps, functools.partial(parse_plan_text, t, [merge])) for t in (small, large)]
    result.add(f"plan text, whole, {lines:,} lines", whole[0], "s")
    result.add("plan text, whole, 4x the lines / 1x (linear: 4)", whole[1] / whole[0],
               target=LINEAR)
    chars = [best_of(reps, functools.partial(streamed, t)) for t in (small, large)]
    result.add(f"plan text, one char at a time, {len(small):,} chars", chars[0], "s")
    result.add("plan text, one char at a time, 4x / 1x (linear: 4)", chars[1] / chars[0],
               target=LINEAR)
    parts = parse_plan_text(large, [merge]).node("1").args["parts"]
    result.check("the long call is read whole", len(parts) == 4 * lines)

    data = {"nodes": [{"id": f"n{i}", "tool": "bench.plan_parsing:add",
                       "args": {"a": i, "b": f"$n{i - 1}" if i else 0}} for i in range(nodes)]}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "plan.json").write_text(json.dumps(data))
        (base / "plan.yaml").write_text(yaml.safe_dump(data))
        (base / "bomb.yaml").write_text(ALIAS_BOMB)
        (base / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        for suffix in ("json", "yaml"):
            path = base / f"plan.{suffix}"
            result.add(f"load a {nodes}-node .{suffix} plan file",
                       best_of(reps, functools.partial(load_plan, path)), "s")
            result.check(f"the .{suffix} file loads whole", len(load_plan(path)) == nodes)
        for name in ("bomb.yaml", "deep.json"):
            path = base / name
            result.add(f"refuse {name} ({path.stat().st_size:,} bytes)",
                       best_of(reps, functools.partial(refused, path)), "s", target=REFUSED_FAST)
            result.check(f"{name} is refused with a PlanError", refused(path))
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
