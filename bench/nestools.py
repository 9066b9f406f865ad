"""NesTools: replay all 1000 nested tool-call plans and check shoal wires and orders them right.

For each record, every ``api`` spec becomes one simulated shoal Tool (typed parameters from the
spec, defaults of ``None`` for parameters not in ``required``) that sleeps 1-5 ms and returns a
dict with one field per ``responses`` key. Each gold call becomes a plan node; a parameter value
``"API_call_k"`` (also inside a list) becomes a Ref to the field that produced it.

Outputs are deterministic and say which call produced them (``"{api}#{call}.{field}"`` for
strings; numbers, lists and dicts encode the call and field too), so wiring can be checked: a
tool invocation is matched to the gold call whose expected arguments, with every ref replaced by
its producer's value, equal the arguments it received; a call matched by no invocation, an
invocation matching no call, or a node whose output is not its call's output fails the plan.
No call may start before every call it depends on has finished (outcome timestamps).
Target: 1000/1000 plans pass, every ref resolved, 0 ordering violations.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import keyword
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shoal
from bench.common import BenchResult, Target, cli, dataset_file

NAME = "nestools"
SPEC_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool,
                              "list": list, "dict": dict}
REF_PREFIX = "API_call_"


def encode(api: str, call: int, index: int, name: str, kind: str) -> Any:
    """The value field ``name`` (the ``index``-th) of call number ``call`` returns."""
    tag = f"{api}#{call}.{name}"
    if kind == "int":
        return 1000 * (call + 1) + index
    if kind == "float":
        return (call + 1) + (index + 1) / 1000
    if kind == "bool":
        return (call + index) % 2 == 0  # two values only: bool refs are checked by value alone
    if kind == "list":
        return [tag]
    if kind == "dict":
        return {"produced_by": tag}
    return tag  # "str" and any type the spec names that we do not know


def python_name(name: str) -> bool:
    """Whether a Python function can have a parameter called ``name`` (``class`` cannot)."""
    return name.isidentifier() and not keyword.iskeyword(name)


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX)


@dataclass
class Replay:
    """One record: its gold calls, what each should receive and return, and what tools saw."""

    record: dict[str, Any]
    rng: random.Random
    specs: dict[str, dict[str, Any]] = field(init=False)
    # "API_call_k" -> (index of the call that produces it, name of the field)
    producers: dict[str, tuple[int, str]] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    expected: list[dict[str, Any]] = field(default_factory=list)
    received: dict[int, dict[str, Any]] = field(default_factory=dict)
    strays: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.specs = {api["api_name"]: api for api in self.record["api"]}
        for i, call in enumerate(self.record["call"]):
            schema = self.specs[call["api_name"]]["responses"]
            names = list(schema)
            self.outputs.append({name: encode(call["api_name"], i, j, name, schema[name]["type"])
                                 for j, name in enumerate(names)})
            for j, label in enumerate(call["responses"]):
                self.producers[label] = (i, names[j])
        self.expected = [self._expected_args(call) for call in self.record["call"]]

    def _expected_args(self, call: dict[str, Any]) -> dict[str, Any]:
        spec = self.specs[call["api_name"]]["parameters"]
        args = {name: None for name in spec if python_name(name)}  # optional ones default to None
        for name, value in call["parameters"].items():
            args[name] = self.resolve(value)
        return args

    def resolve(self, value: Any) -> Any:
        """``value`` with every ``API_call_k`` replaced by the value its producer returns."""
        if is_ref(value):
            call, name = self.producers[value]
            return self.outputs[call][name]
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def claim(self, api: str, args: dict[str, Any]) -> int | None:
        """The first unclaimed gold call of ``api`` whose expected arguments are ``args``."""
        for i, call in enumerate(self.record["call"]):
            if call["api_name"] == api and i not in self.received and self.expected[i] == args:
                self.received[i] = args
                return i
        self.strays.append((api, args))
        return None

    def latency(self) -> float:
        return self.rng.uniform(0.001, 0.005)


def make_tool(spec: dict[str, Any], replay: Replay) -> shoal.Tool[..., Any]:
    """A shoal Tool with the spec's typed parameters that reports to ``replay``."""
    api = spec["api_name"]

    async def simulated(**kwargs: Any) -> dict[str, Any]:
        index = replay.claim(api, kwargs)
        await asyncio.sleep(replay.latency())
        if index is None:  # wrong inputs: return something that cannot pass downstream checks
            return {name: f"{api}#?.{name}" for name in spec["responses"]}
        return replay.outputs[index]

    params, hints = [], {}
    for name, info in spec["parameters"].items():
        if not python_name(name):
            continue  # e.g. "class": no Python parameter can have that name; see below
        kind = SPEC_TYPES.get(info.get("type", ""), Any)
        required = name in spec["required"]
        hint = kind if required else kind | None
        params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=hint,
            default=inspect.Parameter.empty if required else None))
        hints[name] = hint
    if len(params) < len(spec["parameters"]):
        # Names that are Python keywords reach the function untyped, through **extra.
        params.append(inspect.Parameter("extra", inspect.Parameter.VAR_KEYWORD))
    simulated.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    simulated.__annotations__ = hints
    simulated.__name__ = simulated.__qualname__ = api
    return shoal.Tool(simulated, name=api, description=spec.get("api_description", ""))


def build(replay: Replay) -> tuple[shoal.Plan, list[str]]:
    tools = {name: make_tool(spec, replay) for name, spec in replay.specs.items()}
    plan = shoal.Plan(f"nestools-{replay.record['test_id']}")
    ids: list[str] = []

    def to_ref(value: Any) -> Any:
        if is_ref(value):
            call, name = replay.producers[value]
            return shoal.Ref(ids[call])[name]
        if isinstance(value, list):
            return [to_ref(v) for v in value]
        return value

    for i, call in enumerate(replay.record["call"]):
        args = {k: to_ref(v) for k, v in call["parameters"].items()}
        ids.append(plan.add(tools[call["api_name"]], args, node_id=f"{i}:{call['api_name']}").node)
    return plan, ids


def dependencies(call: dict[str, Any], replay: Replay) -> set[int]:
    found: set[int] = set()
    stack = list(call["parameters"].values())
    while stack:
        value = stack.pop()
        if is_ref(value):
            found.add(replay.producers[value][0])
        elif isinstance(value, list):
            stack.extend(value)
    return found


def count_refs(call: dict[str, Any]) -> int:
    values = list(call["parameters"].values())
    return sum(is_ref(v) for v in values) + sum(
        is_ref(x) for v in values if isinstance(v, list) for x in v)


@dataclass
class PlanReport:
    ok: bool = True
    refs: int = 0
    resolved: int = 0
    violations: int = 0
    overlapped: bool = False
    problems: list[str] = field(default_factory=list)


def check(replay: Replay, ids: list[str], run: shoal.RunResult) -> PlanReport:
    report = PlanReport()
    calls = replay.record["call"]
    if not run.ok:
        report.problems.append(f"not ok: {run.counts}")
    if replay.strays:
        report.problems.append(f"invocations matching no gold call: {replay.strays[:2]}")
    spans = []
    for i, call in enumerate(calls):
        outcome = run[ids[i]]
        refs = count_refs(call)
        report.refs += refs
        if i in replay.received:
            report.resolved += refs
        else:
            report.problems.append(f"call {i} ({call['api_name']}) got wrong arguments")
        if outcome.ok and outcome.value != replay.outputs[i]:
            report.problems.append(f"node {ids[i]} returned another call's output")
        for dep in dependencies(call, replay):
            before = run[ids[dep]].finished_at
            if outcome.started_at is not None and (before is None or outcome.started_at < before):
                report.violations += 1
        if outcome.started_at is not None and outcome.finished_at is not None:
            spans.append((outcome.started_at, outcome.finished_at))
    spans.sort()  # any overlap shows up between neighbours in start order
    report.overlapped = any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    report.ok = not report.problems and report.violations == 0
    return report


async def replay_all(records: list[dict[str, Any]]) -> tuple[list[PlanReport], float]:
    reports, building = [], 0.0
    for record in records:
        replay = Replay(record, random.Random(record["test_id"]))
        start = time.perf_counter()
        plan, ids = build(replay)
        building += time.perf_counter() - start
        run = await shoal.run(plan)
        reports.append(check(replay, ids, run))
    return reports, building


def main(quick: bool = False) -> BenchResult:
    path = dataset_file(NAME, "nestools", "test_data.jsonl")
    if path is None:
        return BenchResult(NAME, skipped="dataset not found", echo=False)
    records = load(path)[:50 if quick else None]
    result = BenchResult(NAME)
    result.header(f"{len(records)} plans from {path.name} replayed with simulated tools "
                  "(1-5 ms latency)")
    start = time.perf_counter()
    reports, building = asyncio.run(replay_all(records))
    wall = time.perf_counter() - start
    passed = sum(r.ok for r in reports)
    refs, resolved = sum(r.refs for r in reports), sum(r.resolved for r in reports)
    violations = sum(r.violations for r in reports)
    result.add("plans passed", passed, target=Target("value", ">=", len(records)))
    result.add(f"refs resolved (of {refs})", resolved, target=Target("value", ">=", refs))
    result.add("ordering violations", violations, target=Target("value", "==", 0))
    result.add("plans where calls overlapped in time", sum(r.overlapped for r in reports))
    result.add("total time", wall, "s")
    result.add("  of which building tools and plans", building, "s")
    result.check("all plans pass", passed == len(records),
                 "; ".join(r.problems[0] for r in reports if r.problems)[:500])
    result.check("every ref resolved", resolved == refs)
    result.check("no ordering violations", violations == 0)
    return result


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
