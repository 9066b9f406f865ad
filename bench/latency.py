"""Latency: what streaming and planning are worth, on real tasks, on a simulated clock.

Real tasks written by others are replayed: BFCL v4 parallel (independent calls), NesTools and
NESTFUL v1 (calls that use earlier calls' outputs) and AsyncHow (how-to DAGs with step
durations). Each task is a DAG of calls. Four strategies run every task, each through shoal's
real runtime (open runs) and, for the planner, shoal's real plan-text parser, on the virtual
clock of :mod:`shoal.testing`, so every latency is exact and costs no real time:

1. ``react``: sequential ReAct, one call per model turn; the call runs after its turn; the next
   turn starts when its result is back; then a final answer turn.
2. ``parallel_fc``: parallel function calling, one turn per dependency layer (every call of
   the layer in one response); the calls start when the whole response has arrived.
3. ``streamed``: the same turns, but each call is added to the open run the moment its own
   text has streamed (dispatch-as-streamed).
4. ``planner``: one planning turn streams the whole plan in LLMCompiler text (``$N`` refs),
   fed line by line to :class:`shoal.plantext.PlanTextParser`; each parsed call goes into the
   open run at once and starts when its inputs are done; then one joiner (answer) turn.

What is simulated: the model (a request costs ``ttft`` seconds, then streams ``tokens / rate``
seconds; output tokens are the call's text length / 4, rounded up) and the tools (seeded
latencies; AsyncHow's steps keep their own relative durations). What is real: the scheduler,
the open runs, the plan text and its parser. Every measured latency is also checked against
the formula the strategy implies, so a delay added by shoal would show up as a mismatch.

Targets (hosted setting): the planner's median speedup over ReAct at least LLMCompiler's
published one for the shape (2.15x ParallelQA for independent calls, 1.80x HotpotQA
otherwise); the planner faster than parallel function calling on tasks with dependencies;
dispatch-as-streamed faster than waiting for whole turns (total latency per dataset).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shoal
from bench import nestools as nestools_bench
from bench.common import BenchResult, Target, cli, dataset_file, median, percentile
from shoal.plantext import PlanTextParser
from shoal.testing import run_virtual

NAME = "latency"
CHARS_PER_TOKEN = 4  # a common rule of thumb for English and JSON text with BPE tokenizers
ANSWER_TOKENS = 50  # the final answer (ReAct's last turn, the planner's joiner): same for all
TOOL_RANGE = (0.2, 1.5)  # seconds, uniform, seeded per call
STRATEGIES = ("react", "parallel_fc", "streamed", "planner")
QUICK_TASKS = 5


@dataclass(frozen=True)
class Setting:
    """A simulated model: time to first token (prompt processing included) and output speed."""

    name: str
    ttft: float
    rate: float  # output tokens per second
    why: str


HOSTED = Setting("hosted", 0.5, 80.0,
                 "an assumption, meant as typical of a hosted GPT-4o-class API; not measured")
LOCAL = Setting("local", 1.0, 15.0,
                "an assumption, meant as typical of a mid-size model on one consumer GPU or "
                "a laptop; not measured")

#: Published speedups over ReAct, measured by others on other tasks and models.
PUBLISHED = (
    "LLMCompiler (Kim et al., ICML 2024), speedup over ReAct: HotpotQA 1.80x, "
    "Movie Recommendation 3.74x, ParallelQA 2.15x",
    "OpenAI parallel function calling, same paper: HotpotQA 1.61x, Movie Recommendation "
    "2.76x, ParallelQA 1.86x",
    "AsyncLM (Gim et al., 2024): 1.6x-5.4x over synchronous function calling on BFCL",
)
#: The planner's target speedup over ReAct (median), by the shape of a dataset's tasks:
#: LLMCompiler's ParallelQA figure for independent calls, its HotpotQA figure otherwise.
PLANNER_TARGET = {"bfcl_parallel": 2.15, "nestools": 1.80, "nestful_v1": 1.80,
                  "asynchow": 1.80}


# ---- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefTo:
    """A reference, in a call's arguments, to call ``index``'s output (or one field of it)."""

    index: int
    field: str | None = None


@dataclass
class Call:
    """One call of a task: its tool, arguments (with :class:`RefTo`), text and tool time."""

    name: str  # a Python identifier, as plan text needs
    args: dict[str, Any]
    written: str  # the call as the dataset writes it, as one function-call JSON object
    duration: float = 0.0
    deps: frozenset[int] = frozenset()


@dataclass
class Task:
    """A DAG of calls, in an order where every call comes after the calls it uses."""

    dataset: str
    id: str
    calls: list[Call]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls = ordered(self.calls)
        fields: list[set[str]] = [set() for _ in self.calls]
        for call in self.calls:
            for ref in refs_in(call.args):
                if ref.field is not None:
                    fields[ref.index].add(ref.field)
        self.outputs = [{"call": i, **{f: f"<{i}.{f}>" for f in sorted(names)}}
                        for i, names in enumerate(fields)]

    def resolved(self, value: Any) -> Any:
        """``value`` with each :class:`RefTo` replaced by what the producing call returns."""
        if isinstance(value, RefTo):
            out = self.outputs[value.index]
            return out if value.field is None else out[value.field]
        if isinstance(value, list):
            return [self.resolved(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolved(v) for k, v in value.items()}
        return value

    def layers(self) -> list[list[int]]:
        """Calls grouped by dependency depth: each layer needs only the layers before it."""
        depth: list[int] = []
        for call in self.calls:
            depth.append(1 + max((depth[d] for d in call.deps), default=-1))
        return [[i for i, d in enumerate(depth) if d == level] for level in range(max(depth) + 1)]


def refs_in(value: Any) -> Iterator[RefTo]:
    """Every :class:`RefTo` inside ``value`` (lists and dict values, at any depth)."""
    if isinstance(value, RefTo):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from refs_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from refs_in(v)


def ordered(calls: list[Call]) -> list[Call]:
    """The calls in a dependency order (stable), refs renumbered; ``deps`` filled in."""
    deps = [frozenset(r.index for r in refs_in(c.args)) for c in calls]
    order: list[int] = []
    while len(order) < len(calls):
        ready = [i for i in range(len(calls)) if i not in order and deps[i] <= set(order)]
        if not ready:
            raise ValueError("the task's calls refer to each other in a cycle")
        order += ready
    new = {old: pos for pos, old in enumerate(order)}

    def renumber(value: Any) -> Any:
        if isinstance(value, RefTo):
            return RefTo(new[value.index], value.field)
        if isinstance(value, list):
            return [renumber(v) for v in value]
        if isinstance(value, dict):
            return {k: renumber(v) for k, v in value.items()}
        return value

    return [Call(calls[i].name, renumber(calls[i].args), calls[i].written, calls[i].duration,
                 frozenset(new[d] for d in deps[i])) for i in order]


def identifier(name: str) -> str:
    """``name`` made a Python identifier (plan text calls ``name(...)``, keywords ``k=v``)."""
    text = re.sub(r"\W", "_", name)
    text = f"_{text}" if not text or text[0].isdigit() else text
    return f"{text}_" if not nestools_bench.python_name(text) or text == "join" else text


def written(name: str, args: dict[str, Any]) -> str:
    """A call as a model writes it in function calling: one JSON object."""
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def seeded(*key: object) -> random.Random:
    """A random generator seeded by ``key`` (stable across processes, unlike ``hash``)."""
    return random.Random(hashlib.sha256(repr(key).encode()).digest())


def tool_time(dataset: str, task: str, index: int) -> float:
    """A call's simulated tool latency: uniform in :data:`TOOL_RANGE`, seeded per call."""
    return seeded(dataset, task, index).uniform(*TOOL_RANGE)


def load_bfcl(root: Path) -> list[Task]:
    """BFCL v4 parallel tasks: each answer's calls, all independent (first acceptable values)."""
    tasks = []
    for path in sorted((root / "possible_answer").glob("BFCL_v4_*.json")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            calls = []
            for i, entry in enumerate(record["ground_truth"]):
                ((name, params),) = entry.items()
                # each parameter lists its acceptable values; "" first means "may be omitted"
                args = {k: v[0] for k, v in params.items() if v and v[0] != ""}
                calls.append(Call(identifier(name), {identifier(k): v for k, v in args.items()},
                                  written(name, args), tool_time("bfcl", record["id"], i)))
            tasks.append(Task("bfcl_parallel", record["id"], calls))
    return tasks


def load_nestools(path: Path) -> list[Task]:
    """NesTools tasks: the gold calls, ``API_call_k`` values made refs to their producers."""
    tasks = []
    for record in nestools_bench.load(path):
        producers = nestools_bench.Replay(record, random.Random(0)).producers

        def convert(value: Any, producers: dict[str, tuple[int, str]] = producers) -> Any:
            if nestools_bench.is_ref(value):
                index, name = producers[value]
                return RefTo(index, name if re.fullmatch(r"\w+", name) else None)
            return [convert(v) for v in value] if isinstance(value, list) else value

        calls = [Call(identifier(c["api_name"]),
                      {identifier(k): convert(v) for k, v in c["parameters"].items()},
                      written(c["api_name"], c["parameters"]),
                      tool_time("nestools", record["test_id"], i))
                 for i, c in enumerate(record["call"])]
        tasks.append(Task("nestools", str(record["test_id"]), calls))
    return tasks


_NESTFUL_REF = re.compile(r"\$(var[0-9]+)(?:\.([^$]+))?\$")


def nestful_arg(value: Any, labels: dict[str, int]) -> Any:
    """A NESTFUL argument with its ``$varN.field$`` refs made :class:`RefTo`."""
    if isinstance(value, str) and (ref := _NESTFUL_REF.search(value)):
        # a path deeper than one field, or a ref inside longer text (a few of them), passes
        # the producer's whole output: the dependency is what counts here
        whole = ref.group() == value and re.fullmatch(r"\w+", ref[2] or "")
        return RefTo(labels[ref[1]], ref[2] if whole else None)
    if isinstance(value, list):
        return [nestful_arg(v, labels) for v in value]
    if isinstance(value, dict):
        return {k: nestful_arg(v, labels) for k, v in value.items()}
    return value


def load_nestful(root: Path) -> list[Task]:
    """NESTFUL v1 tasks (all three parts): the calls before ``var_result`` (the answer)."""
    tasks = []
    for part in ("executable", "non-executable-glaive", "non-executable-sgd"):
        path = root / f"{part}-data.json"
        if not path.is_file():  # a partial copy: the parts present still count
            print(f"[{NAME}/nestful_v1] {path.name} not found: that part is left out")
            continue
        for n, record in enumerate(json.loads(path.read_text())):
            steps = [o for o in record["output"] if o["name"] != "var_result"]  # the answer
            task_id = f"{part}-{n}"
            labels: dict[str, int] = {}  # a label names the latest call so far that has it
            calls = []
            for i, step in enumerate(steps):
                args = {identifier(k): nestful_arg(v, labels)
                        for k, v in step["arguments"].items()}
                calls.append(Call(identifier(step["name"]), args,
                                  written(step["name"], step["arguments"]),
                                  tool_time("nestful", task_id, i)))
                labels[step["label"]] = i  # two plans reuse a label for a later call
            tasks.append(Task("nestful_v1", task_id, calls))
    return tasks


def load_asynchow(path: Path) -> list[Task]:
    """Each step a call ``step(what=..., after=[$k, ...])``; durations scaled per plan so that
    its mean step takes the mean of :data:`TOOL_RANGE` (plans span minutes to months)."""
    tasks = []
    mean_tool = sum(TOOL_RANGE) / 2
    for line in path.read_text().splitlines():
        record = json.loads(line)
        ids = [str(i) for i in range(1, record["step_nums"] + 1)]
        preds: dict[str, list[str]] = {i: [] for i in ids}
        for before, after in record["step_deps"]:
            preds[after].append(before)
        days = {i: record["duration_seconds"][i][0] for i in ids}
        scale = mean_tool / (sum(days.values()) / len(ids))
        calls = []
        for i in ids:
            args = {"what": record["steps"][int(i) - 1], "after": preds[i]}
            calls.append(Call("step", {"what": args["what"],
                                       "after": [RefTo(int(p) - 1) for p in preds[i]]},
                              written("step", args), days[i] * scale))
        tasks.append(Task("asynchow", str(record["idx"]), calls))
    return tasks


def load_all(quick: bool) -> dict[str, list[Task]]:
    """Every dataset found (a missing one is skipped with a message)."""
    found: dict[str, list[Task]] = {}
    loaders: list[tuple[str, tuple[str, ...], Callable[[Path], list[Task]]]] = [
        ("bfcl_parallel", ("bfcl_parallel", "possible_answer", "BFCL_v4_parallel.json"),
         lambda p: load_bfcl(p.parents[1])),
        ("nestools", ("nestools", "test_data.jsonl"), load_nestools),
        ("nestful_v1", ("nestful_v1", "executable-data.json"), lambda p: load_nestful(p.parent)),
        ("asynchow", ("asynchow", "asynchow_async.jsonl"), load_asynchow),
    ]
    for name, parts, loader in loaders:
        path = dataset_file(f"{NAME}/{name}", *parts)
        if path is not None:
            tasks = [t for t in loader(path) if t.calls]  # a task with no call has no latency
            if tasks:
                found[name] = pick_quick(tasks) if quick else tasks
    return found


def pick_quick(tasks: list[Task]) -> list[Task]:
    """A few tasks, with the deepest and the widest among them (both shapes get exercised)."""
    deepest = max(tasks, key=lambda t: len(t.layers()))
    widest = max(tasks, key=lambda t: max(len(layer) for layer in t.layers()))
    return list({id(t): t for t in [*tasks[:QUICK_TASKS - 2], deepest, widest]}.values())


# ---- text and tokens -----------------------------------------------------------------------


def tokens(text: str) -> int:
    """Output tokens of ``text``: :data:`CHARS_PER_TOKEN` characters each, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def literal(value: Any) -> str:
    """``value`` as a Python literal in plan text; refs as ``"$N"`` / ``"$N.field"``."""
    if isinstance(value, RefTo):
        return json.dumps(f"${value.index + 1}" + (f".{value.field}" if value.field else ""))
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and value.startswith("$"):
        return repr(f"${value}")  # "$$" is the format's escape for a literal leading "$"
    return repr(value)


def plan_lines(task: Task) -> list[str]:
    """The LLMCompiler plan a planner writes for ``task``, one line per call, then ``join()``."""
    lines = [f"{i + 1}. {c.name}(" + ", ".join(f"{k}={literal(v)}" for k, v in c.args.items())
             + ")\n" for i, c in enumerate(task.calls)]
    return [*lines, f"{len(task.calls) + 1}. join()\n"]


# ---- simulated tools -----------------------------------------------------------------------


@dataclass
class Tools:
    """One simulated tool per name in a task; records when each call ran, with what."""

    task: Task
    table: dict[str, shoal.Tool[..., Any]] = field(default_factory=dict)
    # the arguments each call must receive -> the calls (identical calls may repeat)
    expected: dict[str, list[int]] = field(default_factory=dict)
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)
    strays: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, call in enumerate(self.task.calls):
            self.expected.setdefault(self.key(call.name, self.task.resolved(call.args)),
                                     []).append(i)
            if call.name not in self.table:
                self.table[call.name] = self._make(call.name)

    @staticmethod
    def key(name: str, args: dict[str, Any]) -> str:
        return f"{name}{json.dumps(args, sort_keys=True, default=repr)}"

    def _make(self, name: str) -> shoal.Tool[..., Any]:
        async def simulated(**kwargs: Any) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            waiting = self.expected.get(self.key(name, kwargs))
            if not waiting:  # wrong arguments (miswired): fail the check, take no time
                self.strays.append(f"{name}{kwargs}"[:200])
                return {}
            index = waiting.pop(0)
            start = loop.time()
            await asyncio.sleep(self.task.calls[index].duration)
            self.spans[index] = (start, loop.time())
            return self.task.outputs[index]

        simulated.__name__ = simulated.__qualname__ = name
        return shoal.Tool(simulated, name=name, description="a simulated tool")

    def args(self, call: Call) -> dict[str, Any]:
        """``call``'s arguments for the open run: :class:`RefTo` become shoal refs."""
        def convert(value: Any) -> Any:
            if isinstance(value, RefTo):
                ref = shoal.Ref(str(value.index + 1))
                return ref if value.field is None else ref[value.field]
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {k: convert(v) for k, v in call.args.items()}


# ---- the four strategies -------------------------------------------------------------------


@dataclass
class Trial:
    """One strategy on one task: latency, model output tokens and requests, and checks."""

    latency: float
    tokens: int
    requests: int
    predicted: float
    problems: list[str] = field(default_factory=list)


async def model(setting: Setting, pieces: list[int],
                on_piece: Callable[[int], None] = lambda _: None) -> None:
    """One model request streaming ``pieces`` (token counts); ``on_piece(i)`` as each ends."""
    await asyncio.sleep(setting.ttft)
    for i, count in enumerate(pieces):
        await asyncio.sleep(count / setting.rate)
        on_piece(i)


async def react(task: Task, tools: Tools, run: shoal.OpenRun, setting: Setting) -> int:
    """Sequential ReAct: a turn per call, each waiting for the last result; its requests."""
    for i, call in enumerate(task.calls):
        await model(setting, [tokens(call.written)])
        await run.value(run.add(tools.table[call.name], tools.args(call), node_id=str(i + 1)))
    return len(task.calls)


async def by_layer(task: Task, tools: Tools, run: shoal.OpenRun, setting: Setting,
                   streamed: bool) -> int:
    """A turn per dependency layer; calls start at the end of the turn or as each streams."""
    for layer in task.layers():
        refs: list[shoal.Ref] = []

        def dispatch(j: int, layer: list[int] = layer, refs: list[shoal.Ref] = refs) -> None:
            call = task.calls[layer[j]]
            refs.append(run.add(tools.table[call.name], tools.args(call),
                                node_id=str(layer[j] + 1)))

        pieces = [tokens(task.calls[i].written) for i in layer]
        await model(setting, pieces, dispatch if streamed else lambda _: None)
        if not streamed:  # parallel function calling: the calls start with the whole response
            for j in range(len(layer)):
                dispatch(j)
        for ref in refs:
            await run.value(ref)
    return len(task.layers())


async def planner(task: Task, tools: Tools, run: shoal.OpenRun, setting: Setting,
                  problems: list[str]) -> int:
    """One plan in LLMCompiler text, each line parsed and started as it streams."""
    lines = plan_lines(task)
    parser = PlanTextParser(tools.table)
    refs: list[shoal.Ref] = []

    def feed(i: int) -> None:
        for call in parser.feed(lines[i]):
            try:
                tool, args = call.bind(tools.table)
                refs.append(run.add(tool, args, node_id=call.id))
            except shoal.PlanError as exc:  # the run goes on; the check reports it
                problems.append(str(exc))

    await model(setting, [tokens(line) for line in lines], feed)
    parser.close()
    problems += [p.message for p in parser.problems]
    if not parser.done:
        problems.append("the plan's end marker was not read")
    for ref in refs:
        await run.value(ref)
    return 1


async def trial(task: Task, strategy: str, setting: Setting) -> Trial:
    """Run ``task`` one way on the running (virtual) loop, then the answer turn; check it."""
    tools = Tools(task)
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with shoal.Runtime().open_run(f"{task.dataset}-{task.id}-{strategy}") as run:
        if strategy == "react":
            requests = await react(task, tools, run, setting)
        elif strategy == "planner":
            requests = await planner(task, tools, run, setting, problems)
        else:
            requests = await by_layer(task, tools, run, setting, strategy == "streamed")
    await model(setting, [ANSWER_TOKENS])  # the final answer (the planner's joiner)
    latency = loop.time() - start
    if not run.result.ok:
        problems.append(f"not every call ok: {run.result.counts}")
    problems += check_run(task, tools)
    return Trial(latency, output_tokens(task, strategy), requests + 1,
                 predict(task, strategy, setting), problems)


def output_tokens(task: Task, strategy: str) -> int:
    """Output tokens the model writes for ``task`` with ``strategy``, answer included."""
    if strategy == "planner":
        return sum(tokens(line) for line in plan_lines(task)) + ANSWER_TOKENS
    return sum(tokens(c.written) for c in task.calls) + ANSWER_TOKENS


def check_run(task: Task, tools: Tools) -> list[str]:
    """Every call ran once with the right arguments, none before a call it uses had ended."""
    problems = [f"a call got arguments no call of the task has: {s}" for s in tools.strays]
    missing = sorted(set(range(len(task.calls))) - set(tools.spans))
    if missing:
        problems.append(f"calls never ran: {missing}")
    for i, call in enumerate(task.calls):
        for d in call.deps:
            if i in tools.spans and d in tools.spans and tools.spans[i][0] < tools.spans[d][1]:
                problems.append(f"call {i + 1} started before call {d + 1} (which it uses) ended")
    return problems


def predict(task: Task, strategy: str, setting: Setting) -> float:
    """The latency the strategy implies, from the model's and tools' times alone."""
    def turn(count: int) -> float:
        return count / setting.rate

    answer = setting.ttft + turn(ANSWER_TOKENS)
    calls = task.calls
    if strategy == "react":
        return sum(setting.ttft + turn(tokens(c.written)) + c.duration for c in calls) + answer
    if strategy == "planner":
        pieces = [tokens(line) for line in plan_lines(task)]
        sent = list(itertools.accumulate(turn(p) for p in pieces))
        return dag_finish(task, [setting.ttft + s for s in sent], setting.ttft + sent[-1]) + answer
    now = 0.0
    for layer in task.layers():
        sent = list(itertools.accumulate(turn(tokens(calls[i].written)) for i in layer))
        streamed = now + setting.ttft + sent[-1]
        if strategy == "parallel_fc":
            now = streamed + max(calls[i].duration for i in layer)
        else:
            now = max([streamed] + [now + setting.ttft + s + calls[i].duration
                                    for s, i in zip(sent, layer, strict=True)])
    return now + answer


def dag_finish(task: Task, sent: list[float], stream_end: float) -> float:
    """When the last call ends, each starting once sent and its inputs are done."""
    finish: list[float] = []
    for i, call in enumerate(task.calls):
        ready = max([sent[i], *(finish[d] for d in call.deps)])
        finish.append(ready + call.duration)
    return max([stream_end, *finish])


# ---- running and reporting -----------------------------------------------------------------


@dataclass
class Stats:
    """Per strategy on one dataset: per-task speedups over ReAct, tokens, requests."""

    speedup: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    requests: dict[str, list[int]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    deep: list[bool] = field(default_factory=list)  # whether the task has a dependency
    model_share: list[float] = field(default_factory=list)  # of ReAct's latency
    worst_gap: float = 0.0
    problems: list[str] = field(default_factory=list)


async def run_dataset(tasks: list[Task], setting: Setting) -> Stats:
    """Every task, every strategy, one after another on the running loop."""
    stats = Stats()
    for task in tasks:
        trials = {s: await trial(task, s, setting) for s in STRATEGIES}
        stats.deep.append(len(task.layers()) > 1)
        tools_total = sum(c.duration for c in task.calls)
        stats.model_share.append(1 - tools_total / trials["react"].latency)
        for s, t in trials.items():
            stats.speedup.setdefault(s, []).append(trials["react"].latency / t.latency)
            stats.tokens.setdefault(s, []).append(t.tokens)
            stats.requests.setdefault(s, []).append(t.requests)
            stats.latency.setdefault(s, []).append(t.latency)
            stats.worst_gap = max(stats.worst_gap, abs(t.latency - t.predicted))
            stats.problems += [f"{task.dataset} {task.id} {s}: {p}" for p in t.problems]
    return stats


def run_all(found: dict[str, list[Task]], settings: tuple[Setting, ...]
            ) -> dict[tuple[str, str], Stats]:
    """Every dataset under every setting, on one virtual-clock loop."""
    async def go() -> dict[tuple[str, str], Stats]:
        return {(setting.name, name): await run_dataset(tasks, setting)
                for setting in settings for name, tasks in found.items()}

    return run_virtual(go())


def table(found: dict[str, list[Task]], stats: dict[tuple[str, str], Stats],
          setting: Setting) -> list[str]:
    """The results as a Markdown table, one row per dataset and strategy."""
    rows = ["| dataset (tasks) | strategy | speedup over ReAct, median | p90 | "
            "output tokens, median | model requests, median |", "|---|---|---|---|---|---|"]
    for name, tasks in found.items():
        s = stats[(setting.name, name)]
        for strategy in STRATEGIES:
            rows.append(f"| {name} ({len(tasks)}) | {strategy} | "
                        f"{median(s.speedup[strategy]):.2f}x | "
                        f"{percentile(s.speedup[strategy], 0.9):.2f}x | "
                        f"{median(s.tokens[strategy]):g} | {median(s.requests[strategy]):g} |")
    return rows


def judge(result: BenchResult, name: str, s: Stats) -> None:
    """The targets, on the hosted setting: planner vs LLMCompiler's figure, vs parallel FC on
    tasks with dependencies, and dispatch-as-streamed vs waiting for the whole turn."""
    result.add(f"{name}: share of ReAct's latency spent in the model, median",
               median(s.model_share))
    result.add(f"{name}: planner speedup over ReAct, median", median(s.speedup["planner"]),
               "", target=Target("value", ">=", PLANNER_TARGET[name]))
    deep = [i for i, d in enumerate(s.deep) if d]
    if deep:
        over = [s.latency["parallel_fc"][i] / s.latency["planner"][i] for i in deep]
        result.add(f"{name}: planner speedup over parallel FC, tasks with deps, median",
                   median(over), "", target=Target("value", ">", 1.0))
        result.add(f"{name}:   tasks with deps where the planner is faster (of {len(deep)})",
                   sum(o > 1 for o in over))
    total = sum(s.latency["parallel_fc"]) / sum(s.latency["streamed"])
    result.add(f"{name}: whole turn / dispatch-as-streamed, total latency", total,
               target=Target("value", ">", 1.0))
    faster = sum(a > b + 1e-9 for a, b in zip(s.latency["parallel_fc"], s.latency["streamed"],
                                               strict=True))
    result.add(f"{name}:   tasks where streamed is faster (of {len(s.deep)})", faster)


def main(quick: bool = False) -> BenchResult:
    """Run the benchmark (a few tasks per dataset when ``quick``) and print the tables."""
    found = load_all(quick)
    if not found:
        return BenchResult(NAME, skipped="no dataset found", echo=False)
    result = BenchResult(NAME)
    settings = (HOSTED, LOCAL)
    result.header(f"{sum(map(len, found.values()))} tasks from {', '.join(found)}; strategies "
                  f"{', '.join(STRATEGIES)}; virtual clock")
    for setting in settings:
        result.note(f"setting {setting.name}: TTFT {setting.ttft:g} s, {setting.rate:g} output "
                    f"tokens/s ({setting.why})")
    result.note(f"output tokens = ceil(characters / {CHARS_PER_TOKEN}) of each call's text "
                f"(function-call JSON; the planner's LLMCompiler lines); final answer "
                f"{ANSWER_TOKENS} tokens; tools {TOOL_RANGE[0]:g}-{TOOL_RANGE[1]:g} s uniform, "
                f"seeded per call; AsyncHow steps keep their relative durations, mean "
                f"{sum(TOOL_RANGE) / 2:g} s per plan")
    wall = time.perf_counter()
    stats = run_all(found, settings)
    wall = time.perf_counter() - wall
    for setting in settings:
        result.header(f"setting {setting.name} (TTFT {setting.ttft:g} s, {setting.rate:g} tok/s)")
        for row in table(found, stats, setting):
            result.note(row)
    result.header("published, on other tasks and models (for comparison, not reproduced here)")
    for text in PUBLISHED:
        result.note(text)
    result.header("targets (hosted setting)")
    for name in found:
        judge(result, name, stats[(HOSTED.name, name)])
    problems = [p for s in stats.values() for p in s.problems]
    worst = max(s.worst_gap for s in stats.values())
    result.add("worst |measured - predicted latency|", worst, "s")
    result.add("real time for every simulated run", wall, "s")
    result.check("every call ran once, right inputs, in order", not problems,
                 "; ".join(problems[:3]))
    result.check("measured latency = the strategy's formula (1 us)", worst <= 1e-6)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))

