"""Latency: what streaming and planning are worth, on real tasks, on a simulated clock.

Real tasks written by others are replayed: BFCL v4 parallel (independent calls), NesTools and
NESTFUL v1 (calls that use earlier calls' outputs) and AsyncHow (how-to DAGs with step
durations). Each task is a DAG of calls. Five strategies run every task, each through shoal's
real runtime (open runs) and, for the planner, shoal's real planner agent, on the virtual clock
of :mod:`shoal.testing`, so every latency is exact and costs no real time:

1. ``react``: sequential ReAct in LLMCompiler's published format: each turn writes
   ``Thought: ...`` and ``Action: <one call>``; the call runs after its turn; the next turn
   reads its result; then a final turn (``Thought:`` + ``Action: Finish(...)``).
2. ``parallel_fc``: parallel function calling, one turn per dependency layer (every call of
   the layer as a JSON tool call in one response); the calls start when the whole response
   has arrived.
3. ``streamed``: the same turns, but each call is added to the open run the moment its own
   text has streamed (dispatch-as-streamed).
4. ``planner``: shoal's planner, ``Agent(mode="plan")``, end to end: its plan request (shoal's
   planner prompt) is answered by a simulated model streaming the whole plan in LLMCompiler's
   format (numbered calls with ``$N`` refs, then one ``Thought:`` before ``join()``); shoal
   reads it as it streams, each call joins the agent's open run the moment its line is read
   and starts when its inputs are done; then shoal's joiner turn, the same conversation
   continued (the plan as the assistant's message, then the results), answers
   ``Action: Finish(...)``.
5. ``planner_thoughts``: the same plan with a ``Thought:`` before every call as well (as
   long as ReAct's): a costlier plan, printed beside it to show how much thoughts weigh.

What is simulated: the model and the tools. A model request waits its time to first token,
``base + tokens read / prefill rate`` (what it reads: the instructions, the task's real tool
specs and question, and the conversation so far, tool results included; a local server that
keeps its KV cache reads only what is new), then streams its output at a fixed rate; output
tokens are each text's characters / 4, rounded up. The planner's requests are the ones shoal
really sends (its own prompts instead of the instructions assumed for the others), counted
the same way. Tools take seeded latencies; AsyncHow's steps keep their own relative
durations. What is real: the scheduler, the open runs and, for the planner, the whole agent
(prompts, streaming parse, dispatch, joiner). Every measured latency is also checked against
the formula the strategy implies, so a delay added by shoal would show up as a mismatch.

Targets (hosted setting): the planner's median speedup over ReAct at least LLMCompiler's
published one for the shape (2.15x ParallelQA for independent calls, 1.80x HotpotQA
otherwise); the planner faster than parallel function calling on every task with
dependencies; dispatch-as-streamed faster than waiting for whole turns (total latency per
dataset).
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import shoal
from bench import nestools as nestools_bench
from bench.common import BenchResult, Target, cli, dataset_file, median, percentile
from shoal.agents.planprompts import planner_prompt
from shoal.models.base import (
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    Usage,
)
from shoal.testing import run_virtual

NAME = "latency"
CHARS_PER_TOKEN = 4  # a common rule of thumb for English and JSON text with BPE tokenizers
#: The instructions every request starts with, the same for every strategy: as long as
#: LLMCompiler's planner instructions (its intro, ``join`` description and guidelines in
#: src/llm_compiler/planner.py, 1,657 characters), without its tool list (the dataset's own
#: tool specs are counted instead) and without few-shot examples (none of these datasets
#: comes with any).
INSTRUCTION_CHARS = 1657
#: One ``Thought:`` as long as the mean of the 48 thoughts in LLMCompiler's published ReAct
#: examples (configs/{hotpotqa,movie,parallelqa}_react/gpt_prompts.py: 66 characters).
THOUGHT = "Thought: I need this call's result for the question; its inputs are at hand\n"
ANSWER_TOKENS = 50  # the final answer's text: an assumption, the same for every strategy
RESULT_TOKENS = 40  # what the model reads back per tool result: an assumption (see README)
TOOL_RANGE = (0.2, 1.5)  # seconds, uniform, seeded per call: an assumption (see README)
STRATEGIES = ("react", "parallel_fc", "streamed", "planner", "planner_thoughts")
QUICK_TASKS = 5


@dataclass(frozen=True)
class Setting:
    """A simulated model: time to first token (a base plus reading the prompt), output speed."""

    name: str
    base: float  # seconds to the first token beyond reading the prompt (network, queueing)
    prefill: float  # input tokens read per second
    rate: float  # output tokens per second
    keeps_context: bool  # whether the server keeps the last request's context (KV cache)
    source: str

    def first_token(self, read: int) -> float:
        """Seconds from a request to its first token when it reads ``read`` new tokens."""
        return self.base + read / self.prefill


#: GPT-4o (May '24) on OpenAI's API, as Artificial Analysis' provider page for it shows: 81
#: output tokens/s and 0.39 s to first token (medians; the copy read does not say its prompt
#: length: taken here as 1,000 input tokens, an assumption). Prefill speed is not published
#: there; 8,000 tokens/s is read off Workorb AI's "Comparing Latency of GPT-4o vs. GPT-4o
#: Mini" (2024-08-29, Azure OpenAI): GPT-4o's response time passes 5 s at 40,000 tokens and
#: nears 10 s at 80,000. The base is what remains of 0.39 s after reading 1,000 tokens.
HOSTED = Setting(
    "hosted", 0.39 - 1000 / 8000, 8000.0, 81.0, False,
    "GPT-4o (May '24), OpenAI API, Artificial Analysis' provider page: 81 output tok/s, "
    "TTFT 0.39 s (its prompt length taken as 1,000 tokens: assumption); prefill 8,000 tok/s "
    "read off Workorb AI's GPT-4o latency curve (2024-08-29: ~5 s more from 40k to 80k "
    "tokens); base 0.39 - 1000/8000 = 0.265 s; no prompt cache (each request reads its "
    "whole context)")
#: llama.cpp, Llama 3 8B Q4_K_M on a 14-inch M1 Max MacBook Pro (32-core GPU), as published in
#: XiongjieDai/GPU-Benchmarks-on-LLM-Inference (snapshots of May 2024): tg512 35.73 tok/s,
#: pp512 408.23 tok/s. llama.cpp's server reuses a slot's cached prompt (``cache_prompt``),
#: so a request reads only its new tokens; no network, hence no base latency.
LOCAL = Setting(
    "local", 0.0, 408.23, 35.73, True,
    "llama.cpp, Llama 3 8B Q4_K_M, M1 Max 32-core GPU laptop: 35.73 output tok/s (tg512), "
    "408.23 prompt tok/s (pp512), XiongjieDai/GPU-Benchmarks-on-LLM-Inference, May 2024; "
    "the server's KV cache keeps the conversation, so a request reads only its new tokens; "
    "base 0 s (no network)")

#: Published speedups over ReAct, measured by others on other tasks and models.
PUBLISHED = (
    "LLMCompiler (Kim et al., ICML 2024), speedup over ReAct: HotpotQA 1.80x, "
    "Movie Recommendation 3.74x, ParallelQA 2.15x",
    "OpenAI parallel function calling, same paper: HotpotQA 1.61x, Movie Recommendation "
    "2.76x, ParallelQA 1.86x",
    "AsyncLM (Gim et al., 2024): 1.6x-5.4x over synchronous function calling on BFCL",
)
#: The published figures each dataset is set beside, by the shape of its tasks:
#: (LLMCompiler's benchmark, LLMCompiler's speedup, OpenAI parallel FC's on the same).
MATCHED = {"bfcl_parallel": ("ParallelQA", 2.15, 1.86), "nestools": ("HotpotQA", 1.80, 1.61),
           "nestful_v1": ("HotpotQA", 1.80, 1.61), "asynchow": ("HotpotQA", 1.80, 1.61)}
#: The planner's target speedup over ReAct (median): LLMCompiler's figure for the shape.
PLANNER_TARGET = {name: figure for name, (_, figure, _) in MATCHED.items()}


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
    question: str = ""  # the user's request, as the dataset writes it
    tools: str = ""  # the specs of the tools the model is offered, as the dataset writes them
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls = ordered(self.calls)
        fields: list[set[str]] = [set() for _ in self.calls]
        for call in self.calls:
            for ref in refs_in(call.args):
                if ref.field is not None:
                    fields[ref.index].add(ref.field)
        self.outputs = [result_value(i, names) for i, names in enumerate(fields)]

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


def result_value(index: int, fields: set[str]) -> dict[str, Any]:
    """What call ``index`` returns: the fields later calls use, padded with text so that, as
    JSON, it is :data:`RESULT_TOKENS` tokens long (what the other strategies assume a model
    reads per result; shoal's joiner reads the real JSON)."""
    value: dict[str, Any] = {"call": index, **{f: f"<{index}.{f}>" for f in sorted(fields)}}
    room = RESULT_TOKENS * CHARS_PER_TOKEN - len(json.dumps({**value, "text": ""}))
    value["text"] = (f"result of call {index + 1}; " * RESULT_TOKENS)[:max(room, 0)]
    return value


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


def bfcl_questions(path: Path) -> dict[str, tuple[str, str]]:
    """A BFCL question file's user text and offered function specs, by id (none if absent)."""
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        said = [m["content"] for turn in record["question"] for m in turn if m["role"] == "user"]
        found[record["id"]] = ("\n".join(said), json.dumps(record["function"]))
    return found


def load_bfcl(root: Path) -> list[Task]:
    """BFCL v4 parallel tasks: each answer's calls, all independent (first acceptable values)."""
    tasks = []
    for path in sorted((root / "possible_answer").glob("BFCL_v4_*.json")):
        questions = bfcl_questions(root / path.name)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            calls = []
            for i, entry in enumerate(record["ground_truth"]):
                ((name, params),) = entry.items()
                # each parameter lists its acceptable values; "" first means "may be omitted"
                args = {k: v[0] for k, v in params.items() if v and v[0] != ""}
                calls.append(Call(identifier(name), {identifier(k): v for k, v in args.items()},
                                  written(name, args), tool_time("bfcl", record["id"], i)))
            question, specs = questions.get(record["id"], ("", ""))
            tasks.append(Task("bfcl_parallel", record["id"], calls, question, specs))
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
        tasks.append(Task("nestools", str(record["test_id"]), calls, record["task"],
                          json.dumps(record["api"])))
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
        spec_path = root / f"{part}-spec.json"
        specs = ({s["name"]: s for s in json.loads(spec_path.read_text())}
                 if spec_path.is_file() else {})
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
            offered = [specs[k] for k in dict.fromkeys(s["name"] for s in steps) if k in specs]
            tasks.append(Task("nestful_v1", task_id, calls, record["input"],
                              json.dumps(offered)))
    return tasks


#: AsyncHow has steps, not tools: the one tool its plans are written with, specified as a
#: function-calling spec like the other datasets' (written here, so counted as it is).
STEP_SPEC = json.dumps({
    "name": "step", "description": "Carry out one step of the how-to plan.",
    "parameters": {"type": "object", "properties": {
        "what": {"type": "string", "description": "the step, as the plan words it"},
        "after": {"type": "array", "items": {"type": "string"},
                  "description": "the steps that must be done first"}},
        "required": ["what"]}})


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
        tasks.append(Task("asynchow", str(record["idx"]), calls, record["title"], STEP_SPEC))
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
    """Tokens of ``text``: :data:`CHARS_PER_TOKEN` characters each, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


#: The last turn of every strategy (ReAct's last step, the joiner, the answer after function
#: calls): a thought, then the answer; the same for all.
FINAL_TOKENS = tokens(THOUGHT) + tokens("Action: Finish()\n") + ANSWER_TOKENS


def prompt_tokens(task: Task) -> int:
    """What a task's first request reads: instructions, the offered tools' specs, the question."""
    return math.ceil(INSTRUCTION_CHARS / CHARS_PER_TOKEN) + tokens(task.tools) + tokens(
        task.question)


def react_step(call: Call) -> str:
    """One ReAct turn as LLMCompiler's ReAct prompts write it: a thought, then the action (in
    the planner's call syntax, which is shorter than function-call JSON)."""
    return f"{THOUGHT}Action: {call_text(call)}\n"


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


def call_text(call: Call) -> str:
    """``call`` as plan text writes it: ``name(key=literal, ...)``, refs as ``"$N"``."""
    return f"{call.name}(" + ", ".join(f"{k}={literal(v)}" for k, v in call.args.items()) + ")"


def plan_lines(task: Task, thought_per_call: bool = False) -> list[str]:
    """The plan text a planner streams for ``task``, line by line, in LLMCompiler's format.

    As LLMCompiler's planner prompts write it: the calls, then one ``Thought:`` before
    ``join()``; with ``thought_per_call``, a thought before every call as well (ReAct's
    thought per call, a costlier plan). This is the one place the planner's text comes
    from: a real planner model can stand in for it.
    """
    calls = [f"{i + 1}. {call_text(c)}\n" for i, c in enumerate(task.calls)]
    join = f"{len(task.calls) + 1}. join()\n"
    if thought_per_call:
        calls = [*itertools.chain.from_iterable((THOUGHT, line) for line in calls)]
    return [*calls, THOUGHT, join]


def call_lines(lines: list[str]) -> list[int]:
    """The index, in ``lines``, of each call's line (in call order; ``join()`` left out)."""
    return [i for i, line in enumerate(lines) if line[0].isdigit()][:-1]


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
        return shoal.Tool(simulated, name=name, description="specified above")

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


# ---- the strategies ------------------------------------------------------------------------


@dataclass
class Trial:
    """One strategy on one task: latency, model tokens read and written, requests, checks."""

    latency: float
    tokens_in: int
    tokens_out: int
    requests: int
    predicted: float
    problems: list[str] = field(default_factory=list)
    agent: shoal.AgentResult[str] | None = None  # the planner agent's result (planners)
    reads: list[Read] = field(default_factory=list)  # what each planner request read


@dataclass
class Conversation:
    """One strategy's model requests on one task: what each reads and writes, and its time.

    A request reads the whole conversation so far (instructions, tool specs, question, every
    earlier turn and tool result); a server that keeps its context (a local KV cache) reads
    only what was added since its last request. The same bookkeeping serves the simulated
    run and :func:`predict`.
    """

    setting: Setting
    context: int  # tokens the next request reads
    kept: int = 0  # tokens of ``context`` the server still holds from the last request
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def start(self) -> float:
        """Book a request; the seconds to its first token."""
        fresh = self.context - self.kept if self.setting.keeps_context else self.context
        self.requests += 1
        self.tokens_in += self.context
        return self.setting.first_token(fresh)

    def wrote(self, count: int) -> float:
        """Book ``count`` streamed output tokens; the seconds they take."""
        self.context += count
        self.kept = self.context
        self.tokens_out += count
        return count / self.setting.rate

    def read(self, count: int) -> None:
        """Add tool results to the conversation: the next request reads them."""
        self.context += count

    async def request(self, pieces: list[int],
                      on_piece: Callable[[int], None] = lambda _: None) -> None:
        """One request streaming ``pieces`` (token counts); ``on_piece(i)`` as each ends."""
        await asyncio.sleep(self.start())
        for i, count in enumerate(pieces):
            await asyncio.sleep(self.wrote(count))
            on_piece(i)


async def react(task: Task, tools: Tools, run: shoal.OpenRun, convo: Conversation) -> None:
    """Sequential ReAct: a thought and one call per turn, each turn reading the last result."""
    for i, call in enumerate(task.calls):
        await convo.request([tokens(react_step(call))])
        await run.value(run.add(tools.table[call.name], tools.args(call), node_id=str(i + 1)))
        convo.read(RESULT_TOKENS)


async def by_layer(task: Task, tools: Tools, run: shoal.OpenRun, convo: Conversation,
                   streamed: bool) -> None:
    """A turn per dependency layer; calls start at the end of the turn or as each streams."""
    for layer in task.layers():
        refs: list[shoal.Ref] = []

        def dispatch(j: int, layer: list[int] = layer, refs: list[shoal.Ref] = refs) -> None:
            call = task.calls[layer[j]]
            refs.append(run.add(tools.table[call.name], tools.args(call),
                                node_id=str(layer[j] + 1)))

        pieces = [tokens(task.calls[i].written) for i in layer]
        await convo.request(pieces, dispatch if streamed else lambda _: None)
        if not streamed:  # parallel function calling: the calls start with the whole response
            for j in range(len(layer)):
                dispatch(j)
        for ref in refs:
            await run.value(ref)
        convo.read(RESULT_TOKENS * len(layer))


#: The joiner's reply: a thought, then the answer in ``Finish(...)``: as long as every
#: strategy's last turn (:data:`FINAL_TOKENS`).
JOIN_ANSWER = ("The answer, from the results of the calls. " * ANSWER_TOKENS)[
    :ANSWER_TOKENS * CHARS_PER_TOKEN]
JOIN_REPLY = f"{THOUGHT}Action: Finish({JOIN_ANSWER})\n"


@dataclass
class Read:
    """What one request to :class:`SimulatedModel` read: its tokens, and those not cached."""

    total: int
    fresh: int
    instructions: int  # characters of the request's instructions
    instructions_read: bool = True  # False when a kept context held them already


class SimulatedModel(Model):
    """A model with a :class:`Setting`'s timing that answers a planner's plan and join turns.

    Each request reads its whole text (instructions, then each message, joined by blank
    lines; tokens as :func:`tokens` counts them); a setting that keeps its context (a local
    KV cache) reads only what follows the longest prefix it shares with the previous request
    and its reply (held as the next message, after a blank line).
    The first token comes ``setting.first_token(read)`` seconds after the request; then the
    reply streams in pieces of :data:`CHARS_PER_TOKEN` characters, each ``1 / rate`` seconds
    after the one before (so the reply takes ``tokens(reply) / rate``, as in
    :class:`Conversation`). A request with ``plan_tools`` (the plan turn) gets ``plan``; any
    other (the joiner's) gets :data:`JOIN_REPLY`. Usage is reported as read and written.
    """

    name = "simulated"

    def __init__(self, setting: Setting, plan: str) -> None:
        self.setting = setting
        self.plan = plan
        self.held = ""  # what the server holds of the last request and its reply
        self.reads: list[Read] = []

    def _book(self, request: ModelRequest) -> tuple[str, Usage, float]:
        """The reply to ``request``, its usage and its time to first token."""
        text = "\n\n".join([request.instructions,
                             *(getattr(m, "content", "") for m in request.messages)])
        reply = self.plan if request.plan_tools else JOIN_REPLY
        total = tokens(text)
        shared = shared_prefix(self.held, text) if self.setting.keeps_context else 0
        kept = shared // CHARS_PER_TOKEN  # whole tokens only
        # the reply as the next request holds it: the next message, after the blank line
        # that joins messages (a chat template's assistant header in a real server)
        self.held = f"{text}\n\n{reply}"
        self.reads.append(Read(total, total - kept, len(request.instructions),
                               shared < len(request.instructions)))
        usage = Usage(input_tokens=total, output_tokens=tokens(reply), requests=1)
        return reply, usage, self.setting.first_token(total - kept)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The reply, streamed at the setting's rate after its time to first token."""
        reply, usage, first = self._book(request)
        await asyncio.sleep(first)
        for i in range(0, len(reply), CHARS_PER_TOKEN):
            await asyncio.sleep(1 / self.setting.rate)
            yield TextDelta(reply[i:i + CHARS_PER_TOKEN])
        yield ResponseDone(ModelResponse(reply, (), usage, self.name, "stop"))

    async def request(self, request: ModelRequest) -> ModelResponse:
        """The reply whole, once it would have streamed to its end."""
        reply, usage, first = self._book(request)
        await asyncio.sleep(first + tokens(reply) / self.setting.rate)
        return ModelResponse(reply, (), usage, self.name, "stop")


def shared_prefix(a: str, b: str) -> int:
    """How many characters ``a`` and ``b`` share from their start."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def specs_text(task: Task) -> str:
    """The planner agent's own instructions: the dataset's specs of the offered tools."""
    return f"The tools' specifications:\n{task.tools}" if task.tools else ""


def own_prompt(task: Task, read: Read) -> int:
    """Characters of a planner request's instructions that are shoal's own prompt."""
    given = specs_text(task)
    return read.instructions - (len(given) + 2 if given else 0)  # joined by a blank line


def planner_agent(task: Task, tools: Tools, model: SimulatedModel) -> shoal.Agent[str]:
    """shoal's planner over the task's tools; its instructions are the dataset's tool specs
    (the simulated tools have no schema of their own: the specs are what the model is told)."""
    return shoal.Agent(name="planner", model=model, instructions=specs_text(task),
                       tools=list(tools.table.values()), mode="plan", max_replans=2)


async def planner(task: Task, tools: Tools, setting: Setting, lines: list[str]
                  ) -> tuple[shoal.AgentResult[str], SimulatedModel]:
    """shoal's ``Agent(mode="plan")`` on the task, its model streaming ``lines`` as the plan."""
    model = SimulatedModel(setting, "".join(lines))
    result = await planner_agent(task, tools, model).run(task.question or f"Task {task.id}.")
    return result, model


def planner_problems(task: Task, result: shoal.AgentResult[str], lines: list[str]
                     ) -> list[str]:
    """What went wrong in a planner run: a call not ok, a replan, an unexpected answer."""
    problems = [f"call {r.call.id} ({r.call.name}): {r.status}: {r.message.content[:200]}"
                for r in result.calls if r.status != "ok"]
    if result.plans != ["".join(lines)]:
        problems.append(f"{len(result.plans)} plans instead of the one written")
    if len(result.calls) != len(task.calls):
        problems.append(f"{len(result.calls)} calls recorded, {len(task.calls)} planned")
    if result.output != JOIN_ANSWER:
        problems.append(f"the answer is not the joiner's: {str(result.output)[:100]}")
    return problems


async def trial(task: Task, strategy: str, setting: Setting) -> Trial:
    """Run ``task`` one way on the running (virtual) loop, then the final turn; check it."""
    tools = Tools(task)
    loop = asyncio.get_running_loop()
    start = loop.time()
    if strategy.startswith("planner"):
        lines = plan_lines(task, thought_per_call=strategy == "planner_thoughts")
        result, model = await planner(task, tools, setting, lines)
        latency = loop.time() - start
        usage = result.usage
        return Trial(latency, usage.input_tokens, usage.output_tokens, usage.requests,
                     predict(task, strategy, setting, [r.fresh for r in model.reads]),
                     planner_problems(task, result, lines) + check_run(task, tools),
                     result, model.reads)
    convo = Conversation(setting, prompt_tokens(task))
    async with shoal.Runtime().open_run(f"{task.dataset}-{task.id}-{strategy}") as run:
        if strategy == "react":
            await react(task, tools, run, convo)
        else:
            await by_layer(task, tools, run, convo, strategy == "streamed")
    await convo.request([FINAL_TOKENS])  # the answer (ReAct's last step)
    latency = loop.time() - start
    problems = [] if run.result.ok else [f"not every call ok: {run.result.counts}"]
    problems += check_run(task, tools)
    return Trial(latency, convo.tokens_in, convo.tokens_out, convo.requests,
                 predict(task, strategy, setting), problems)


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


def predict(task: Task, strategy: str, setting: Setting, reads: list[int] | None = None
            ) -> float:
    """The latency the strategy implies, from the model's and the tools' times alone.

    The planners take ``reads``: the tokens each of their requests read (not cached), as
    shoal's planner sent them (its prompt, the plan and the results, as the joiner reads
    them); the time each takes is still the setting's.
    """
    if strategy.startswith("planner"):
        if reads is None or len(reads) != 2:
            raise ValueError(f"the planner's formula takes its two requests' reads, got {reads}")
        return predict_planner(task, setting, strategy == "planner_thoughts", reads)
    convo = Conversation(setting, prompt_tokens(task))
    calls = task.calls
    now = 0.0
    if strategy == "react":
        for call in calls:
            now += convo.start() + convo.wrote(tokens(react_step(call))) + call.duration
            convo.read(RESULT_TOKENS)
    else:
        for layer in task.layers():
            first = now + convo.start()
            ends = list(itertools.accumulate(convo.wrote(tokens(calls[i].written))
                                             for i in layer))
            if strategy == "parallel_fc":
                now = first + ends[-1] + max(calls[i].duration for i in layer)
            else:
                now = max([first + ends[-1]] + [first + e + calls[i].duration
                                                for e, i in zip(ends, layer, strict=True)])
            convo.read(RESULT_TOKENS * len(layer))
    return now + convo.start() + convo.wrote(FINAL_TOKENS)


def predict_planner(task: Task, setting: Setting, thought_per_call: bool, reads: list[int]
                    ) -> float:
    """The plan's first token; each call sent when its line's last piece has streamed (a
    piece of :data:`CHARS_PER_TOKEN` characters every ``1 / rate`` s) and started once its
    inputs are done; the joiner's request once the plan has streamed and every call ended."""
    lines = plan_lines(task, thought_per_call=thought_per_call)
    first = setting.first_token(reads[0])
    ends = list(itertools.accumulate(len(line) for line in lines))  # characters
    sent = [first + math.ceil(ends[j] / CHARS_PER_TOKEN) / setting.rate
            for j in call_lines(lines)]
    now = dag_finish(task, sent, first + tokens("".join(lines)) / setting.rate)
    return now + setting.first_token(reads[1]) + tokens(JOIN_REPLY) / setting.rate


def best_plan_then_answer(task: Task, setting: Setting) -> float:
    """The latency of the best strategy that writes the calls in one request and answers in
    a second, the way every strategy here pays its model: a bound, not a strategy.

    Its first request reads only what the others' first request reads (no planner prompt of
    its own); it writes each call in the plan's shortest syntax (no numbers, thoughts or
    ``join()``), and each call starts the moment its text has streamed and its inputs are
    done; its answer's request reads what it must (without a kept context: the task, the calls
    written and their results; with one: the results only) and writes the same last
    turn as every strategy. Whatever a planner adds to this costs time, so no planner, shoal's
    or LLMCompiler's, is faster on these settings.
    """
    prompt = prompt_tokens(task)
    first = setting.first_token(prompt)
    written = list(itertools.accumulate(tokens(call_text(c)) for c in task.calls))
    done = dag_finish(task, [first + w / setting.rate for w in written],
                      first + written[-1] / setting.rate)
    results = RESULT_TOKENS * len(task.calls)
    answer_read = results if setting.keeps_context else prompt + written[-1] + results
    return done + setting.first_token(answer_read) + FINAL_TOKENS / setting.rate


def calls_written_free(task: Task, setting: Setting) -> float:
    """A looser bound still: :func:`best_plan_then_answer` with the calls written in no time
    and an answer's request that reads nothing: one first token, the tools' critical path,
    then the last turn."""
    finish: list[float] = []
    for call in task.calls:
        finish.append(max([0.0, *(finish[d] for d in call.deps)]) + call.duration)
    return (setting.first_token(prompt_tokens(task)) + max(finish) + setting.first_token(0)
            + FINAL_TOKENS / setting.rate)


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
    tokens_in: dict[str, list[int]] = field(default_factory=dict)
    tokens_out: dict[str, list[int]] = field(default_factory=dict)
    requests: dict[str, list[int]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    deep: list[bool] = field(default_factory=list)  # whether the task has a dependency
    model_share: list[float] = field(default_factory=list)  # of ReAct's latency
    worst_gap: float = 0.0
    problems: list[str] = field(default_factory=list)
    #: the planner's requests: tokens read by its plan and joiner turns, and the characters
    #: of shoal's own prompt in each; the others' first request, for comparison
    plan_read: list[int] = field(default_factory=list)
    join_read: list[int] = field(default_factory=list)
    plan_prompt: list[int] = field(default_factory=list)
    join_fresh: list[int] = field(default_factory=list)  # not cached (a kept context)
    first_read: list[int] = field(default_factory=list)
    #: the planner's speedup over ReAct by its formula, had shoal's prompts been as long as
    #: the instructions assumed for the others
    as_assumed: list[float] = field(default_factory=list)
    #: the speedup over ReAct of :func:`best_plan_then_answer` and of
    #: :func:`calls_written_free`: what no planner can pass on these settings
    best_plan: list[float] = field(default_factory=list)
    written_free: list[float] = field(default_factory=list)


async def run_dataset(tasks: list[Task], setting: Setting) -> Stats:
    """Every task, every strategy, one after another on the running loop."""
    stats = Stats()
    for task in tasks:
        trials = {s: await trial(task, s, setting) for s in STRATEGIES}
        stats.deep.append(len(task.layers()) > 1)
        tools_total = sum(c.duration for c in task.calls)
        stats.model_share.append(1 - tools_total / trials["react"].latency)
        plan, join = trials["planner"].reads
        stats.plan_read.append(plan.total)
        stats.join_read.append(join.total)
        stats.plan_prompt.append(own_prompt(task, plan))
        stats.join_fresh.append(join.fresh)
        stats.first_read.append(prompt_tokens(task))
        assumed = math.ceil(INSTRUCTION_CHARS / CHARS_PER_TOKEN)
        # only a request that read its instructions (not held by a kept context) reads more
        reads = [r.fresh + (assumed - math.ceil(own_prompt(task, r) / CHARS_PER_TOKEN)
                            if r.instructions_read else 0) for r in (plan, join)]
        stats.as_assumed.append(trials["react"].latency
                                / predict(task, "planner", setting, reads))
        react_latency = trials["react"].latency
        stats.best_plan.append(react_latency / best_plan_then_answer(task, setting))
        stats.written_free.append(react_latency / calls_written_free(task, setting))
        for s, t in trials.items():
            stats.speedup.setdefault(s, []).append(trials["react"].latency / t.latency)
            stats.tokens_in.setdefault(s, []).append(t.tokens_in)
            stats.tokens_out.setdefault(s, []).append(t.tokens_out)
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
            "tokens read, median | tokens written, median | model requests, median |",
            "|---|---|---|---|---|---|---|"]
    for name, tasks in found.items():
        s = stats[(setting.name, name)]
        for strategy in STRATEGIES:
            rows.append(f"| {name} ({len(tasks)}) | {strategy} | "
                        f"{median(s.speedup[strategy]):.2f}x | "
                        f"{percentile(s.speedup[strategy], 0.9):.2f}x | "
                        f"{median(s.tokens_in[strategy]):g} | "
                        f"{median(s.tokens_out[strategy]):g} | "
                        f"{median(s.requests[strategy]):g} |")
    return rows


def planner_requests(found: dict[str, list[Task]], stats: dict[tuple[str, str], Stats],
                     settings: tuple[Setting, ...]) -> list[str]:
    """What shoal's planner sent, beside the others' first request, per dataset (medians),
    and its speedup had its prompts been as long as the instructions assumed for the others."""
    names = " / ".join(s.name for s in settings)
    kept = next((t for t in settings if t.keeps_context), None)
    rows = ["| dataset | plan request, tokens | of which shoal's planner prompt (plan and "
            "joiner turns), characters | joiner request, tokens | "
            f"of which read anew ({kept.name if kept else 'no setting'} keeps the context) | "
            f"the others' first request, tokens | planner speedup with {INSTRUCTION_CHARS}-"
            f"character prompts (formula), {names} |", "|---|---|---|---|---|---|---|"]
    for name in found:
        s = stats[(settings[0].name, name)]
        anew = median(stats[(kept.name, name)].join_fresh) if kept else median(s.join_read)
        what_if = " / ".join(f"{median(stats[(t.name, name)].as_assumed):.2f}x"
                             for t in settings)
        rows.append(f"| {name} | {median(s.plan_read):g} | {median(s.plan_prompt):g} | "
                    f"{median(s.join_read):g} | {anew:g} | "
                    f"{median(s.first_read):g} | {what_if} |")
    return rows


def beside_published(found: dict[str, list[Task]], stats: dict[tuple[str, str], Stats],
                     setting: Setting) -> list[str]:
    """Each dataset's median speedups beside the published ones for the same shape."""
    rows = ["| dataset | published benchmark of that shape | planner | LLMCompiler | "
            "parallel FC | OpenAI parallel FC | best plan-then-answer (bound) | "
            "calls written free (bound) |", "|---|---|---|---|---|---|---|---|"]
    for name in found:
        s = stats[(setting.name, name)]
        bench, compiler, openai = MATCHED[name]
        rows.append(f"| {name} | {bench} | {median(s.speedup['planner']):.2f}x | "
                    f"{compiler:.2f}x | {median(s.speedup['parallel_fc']):.2f}x | "
                    f"{openai:.2f}x | {median(s.best_plan):.2f}x | "
                    f"{median(s.written_free):.2f}x |")
    return rows


#: Model speeds to try the bound on beside the published settings' (what-if figures, not
#: published ones): (seconds to the first token beyond reading, output tokens per second).
WHAT_IF_SPEEDS = ((0.265, 81.0), (0.4, 60.0), (0.5, 30.0), (0.6, 20.0), (1.0, 20.0))


def bound_at_other_speeds(found: dict[str, list[Task]]) -> list[str]:
    """The best plan-then-answer strategy's median speedup over ReAct at other model speeds
    (hosted reading, no kept context): whether a slower or faster model would lift the bound
    past the published figures. Formulas only: nothing is run."""
    rows = ["| TTFT base, output tok/s | " + " | ".join(found) + " |",
            "|---|" + "---|" * len(found)]
    for base, rate in WHAT_IF_SPEEDS:
        setting = replace(HOSTED, name="what-if", base=base, rate=rate)
        cells = [median([predict(t, "react", setting) / best_plan_then_answer(t, setting)
                          for t in tasks]) for tasks in found.values()]
        rows.append(f"| {base:g} s, {rate:g} | " + " | ".join(f"{c:.2f}x" for c in cells)
                    + " |")
    return rows


def judge(result: BenchResult, name: str, s: Stats) -> None:
    """The targets, on the hosted setting: planner vs LLMCompiler's figure, vs parallel FC on
    every task with dependencies, and dispatch-as-streamed vs waiting for the whole turn."""
    result.add(f"{name}: share of ReAct's latency spent in the model, median",
               median(s.model_share))
    result.add(f"{name}: planner speedup over ReAct, median", median(s.speedup["planner"]),
               "", target=Target("value", ">=", PLANNER_TARGET[name]))
    result.add(f"{name}:   the best any plan-then-answer strategy can reach, median",
               median(s.best_plan))
    result.add(f"{name}:   the same with the calls written in no time, median",
               median(s.written_free))
    deep = [i for i, d in enumerate(s.deep) if d]
    if deep:
        over = [s.latency["parallel_fc"][i] / s.latency["planner"][i] for i in deep]
        result.add(f"{name}: planner speedup over parallel FC, tasks with deps, median",
                   median(over))
        result.add(f"{name}:   tasks with deps where the planner is faster (of {len(deep)})",
                   sum(o > 1 for o in over), target=Target("value", ">=", len(deep)))
    total = sum(s.latency["parallel_fc"]) / sum(s.latency["streamed"])
    result.add(f"{name}: whole turn / dispatch-as-streamed, total latency", total,
               target=Target("value", ">", 1.0))
    faster = sum(a > b + 1e-9 for a, b in zip(s.latency["parallel_fc"], s.latency["streamed"],
                                               strict=True))
    result.add(f"{name}:   tasks where streamed is faster (of {len(s.deep)})", faster)


def settings_notes(result: BenchResult, settings: tuple[Setting, ...]) -> None:
    """Every setting and assumption, printed so that a rerun can be checked against them."""
    for setting in settings:
        result.note(f"setting {setting.name}: TTFT {setting.base:.3g} s + tokens read / "
                    f"{setting.prefill:g} tok/s, then {setting.rate:g} output tok/s; "
                    f"{setting.source}")
    result.note(f"tokens = ceil(characters / {CHARS_PER_TOKEN}); every request of react, "
                f"parallel_fc and streamed reads instructions ({INSTRUCTION_CHARS} characters, "
                f"LLMCompiler's planner instructions: an assumption), the dataset's specs of "
                f"the offered tools, the question, and the conversation so far; each tool "
                f"result adds {RESULT_TOKENS} tokens (assumption)")
    result.note("planner, planner_thoughts: shoal's Agent(mode='plan') end to end; each "
                "request reads what shoal sends (its instructions, then each message): the "
                "agent's instructions (the dataset's tool specs), then shoal's own planner "
                f"prompt ({len(planner_prompt(()))} characters + a line per tool; the same in "
                "the plan and joiner requests) instead of the assumed instructions; the "
                "question; the joiner also the plan (the assistant's message), then each call "
                f"with its result (the result's JSON padded to {RESULT_TOKENS} tokens) and "
                "the joiner's note; a kept context (local) re-reads only what follows the "
                "prefix the request shares with the last request and its reply; the formula "
                "takes each request's tokens from the request shoal sent")
    result.note(f"writes: ReAct a thought ({tokens(THOUGHT)} tokens: the mean of LLMCompiler's "
                f"48 published ReAct thoughts) + 'Action: name(args)' per turn; parallel FC "
                f"and streamed the calls as JSON; planner an LLMCompiler line per call, then a "
                f"thought and join(), as LLMCompiler's planner prompts (planner_thoughts: a "
                f"thought before every call too); every strategy ends with the same "
                f"{FINAL_TOKENS}-token turn (thought + Finish(answer of {ANSWER_TOKENS} "
                f"tokens, assumption))")
    result.note(f"tools: {TOOL_RANGE[0]:g}-{TOOL_RANGE[1]:g} s uniform, seeded per call "
                f"(assumption); AsyncHow steps keep their relative durations, mean "
                f"{sum(TOOL_RANGE) / 2:g} s per plan")


def main(quick: bool = False) -> BenchResult:
    """Run the benchmark (a few tasks per dataset when ``quick``) and print the tables."""
    found = load_all(quick)
    if not found:
        return BenchResult(NAME, skipped="no dataset found", echo=False)
    result = BenchResult(NAME)
    settings = (HOSTED, LOCAL)
    result.header(f"{sum(map(len, found.values()))} tasks from {', '.join(found)}; strategies "
                  f"{', '.join(STRATEGIES)}; virtual clock")
    settings_notes(result, settings)
    wall = time.perf_counter()
    stats = run_all(found, settings)
    wall = time.perf_counter() - wall
    for setting in settings:
        result.header(f"setting {setting.name}")
        for row in table(found, stats, setting):
            result.note(row)
    result.note("the planner's requests (medians; tokens are read again on every setting):")
    for row in planner_requests(found, stats, settings):
        result.note(row)
    result.header("published, on other tasks and models (for comparison, not reproduced here)")
    for text in PUBLISHED:
        result.note(text)
    for setting in settings:
        result.note(f"medians, setting {setting.name}, beside the published figures:")
        for row in beside_published(found, stats, setting):
            result.note(row)
    result.note("the bound (best plan-then-answer, median speedup over ReAct) at other model "
                f"speeds, prefill {HOSTED.prefill:g} tok/s, no kept context:")
    for row in bound_at_other_speeds(found):
        result.note(row)
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
