"""Smoke tests: every benchmark runs in its tiny ``quick`` configuration and is correct.

Timing targets are not asserted here (a loaded CI machine would make them flaky); only the
correctness fields are: every call ok, refs resolved, no ordering violations.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from bench import (
    agents,
    asynchow,
    fanout_async,
    fanout_sync,
    import_time,
    large_plan,
    latency,
    nestools,
    plan_parsing,
    process_start,
    swarm,
    swarm_process,
    trivial,
)
from bench.common import BenchResult, Target, dataset_file, datasets_dir, judge_targets, passed

import shoal
from shoal.agents.planprompts import planner_prompt
from shoal.models.base import ModelRequest, StreamEvent
from shoal.plantext import PlanTextParser
from shoal.testing import run_virtual

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def earlier_objects_frozen() -> None:
    """Keep the collector off what the tests before these left alive.

    The benchmarks collect garbage between trials; late in a long test session each full
    collection walks every object earlier tests keep (modules, caches, fixtures): seconds
    per benchmark, and none of it a benchmark's garbage. Frozen, those are left out, for
    good: unfrozen, what ``tests/conftest.py`` froze after collection would be walked again
    (collected first: garbage frozen would never be freed).
    """
    gc.collect()
    gc.freeze()


def assert_correct(result: BenchResult) -> None:
    if result.skipped:
        pytest.skip(f"{result.name}: {result.skipped}")
    assert result.checks, "a benchmark must check something"
    assert result.correct, result.checks
    assert result.metrics


@pytest.mark.parametrize("module", [fanout_async, fanout_sync, trivial, large_plan, agents,
                                    plan_parsing, process_start, swarm, swarm_process,
                                    import_time],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_synthetic_benchmarks_are_correct(module: ModuleType) -> None:
    assert_correct(module.main(quick=True))


def test_asynchow_quick() -> None:
    result = asynchow.main(quick=True)
    assert_correct(result)
    virtual = {m.name: m.value for m in result.metrics if m.name.startswith("virtual")}
    assert virtual["virtual makespan / optimal, max"] == pytest.approx(1.0, abs=1e-6)


def test_asynchow_runs_its_real_time_mode_on_a_select_loop_when_asked(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = asynchow.main(quick=True, select_loop=True)
    assert_correct(result)
    assert "an event loop on select()" in capsys.readouterr().out


def test_nestools_quick() -> None:
    result = nestools.main(quick=True)
    assert_correct(result)
    values = {m.name.split(" (")[0]: m.value for m in result.metrics}
    assert values["plans passed"] == 50
    assert values["ordering violations"] == 0


def test_nestools_checker_catches_a_miswired_ref() -> None:
    path = dataset_file("test", "nestools", "test_data.jsonl")
    if path is None:
        pytest.skip("nestools dataset not found")
    record = next(r for r in nestools.load(path) if r["test_id"] == 1)
    replay = nestools.Replay(record, random.Random(0))
    # Wire the last call's "exact_location" to call 0's "book_details" (also a str) instead of
    # call 1's "location_desc": a valid plan, wrongly wired.
    right = replay.producers["API_call_2"]
    replay.producers["API_call_2"] = (0, "book_details")
    plan, ids = nestools.build(replay)
    replay.producers["API_call_2"] = right
    report = nestools.check(replay, ids, asyncio.run(shoal.run(plan)))
    assert not report.ok
    assert report.resolved < report.refs
    assert any("call 2" in p for p in report.problems)


def test_missing_datasets_skip_with_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOAL_DATASETS", str(tmp_path))
    assert datasets_dir() == tmp_path
    for module in (asynchow, nestools, latency):
        result = module.main(quick=True)
        assert result.skipped
    out = capsys.readouterr().out
    assert "SKIPPED" in out and "SHOAL_DATASETS" in out


def test_default_dataset_path_is_beside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_DATASETS", raising=False)
    assert datasets_dir() == ROOT.parent / "shared" / "datasets"


def test_run_all_script_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", "trivial",
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    # a quick run judges correctness only: a busy machine cannot fail it
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (result,) = json.loads(out.read_text())
    assert result["name"] == "trivial" and result["correct"]
    assert "summary" in proc.stdout
    assert "not judged (quick run)" in proc.stdout and "PASS" not in proc.stdout


def test_a_quick_run_judges_no_target_and_a_full_run_does() -> None:
    result = BenchResult("made-up", echo=False)
    result.check("every call ok", True)
    result.add("wall time", 2.0, "s", floor=1.0, target=Target("ratio", "<=", 1.5))
    try:
        judge_targets(False)
        assert passed(result)
        judge_targets(True)
        assert not passed(result)
        result.checks["every call ok"] = False
        judge_targets(False)
        assert not passed(result)  # a wrong result fails a quick run too
    finally:
        judge_targets(True)


def test_composition_quick() -> None:
    from bench import composition

    result = composition.main(quick=True)
    assert_correct(result)
    assert result.checks["virtual makespan is the floor"]
    assert result.checks["no node started before it was ready"]


def test_latency_quick() -> None:
    result = latency.main(quick=True)
    assert_correct(result)
    assert result.checks["measured latency = the strategy's formula (1 us)"]
    values = {m.name: m.value for m in result.metrics}
    # the planner never loses to parallel function calling on a task with dependencies
    beaten = [k for k in values if "tasks with deps where the planner is faster" in k]
    assert beaten
    for name in beaten:
        assert values[name] == int(name.rsplit("(of ", 1)[1].rstrip(")"))


def latency_task() -> latency.Task:
    """Two independent calls (one with a literal '$' text) and a third that uses both."""
    calls = [
        latency.Call("search", {"price_range": "$100-$500", "query": "laptop"},
                     latency.written("search", {"price_range": "$100-$500"}), 0.7),
        latency.Call("invoice", {"amount": 1000}, latency.written("invoice", {"amount": 1000}),
                     0.2),
        latency.Call("pay", {"item": latency.RefTo(0, "best"), "bill": latency.RefTo(1)},
                     latency.written("pay", {"item": "$var1.best$", "bill": "$var2$"}), 0.4),
    ]
    return latency.Task("made-up", "1", calls)


@pytest.mark.parametrize("strategy", latency.STRATEGIES)
def test_latency_strategies_run_exactly_as_their_formula(strategy: str) -> None:
    task = latency_task()
    assert task.layers() == [[0, 1], [2]]

    async def go() -> latency.Trial:
        return await latency.trial(task, strategy, latency.HOSTED)

    trial = run_virtual(go())
    assert trial.problems == []  # a literal leading '$' reaches the tool as written
    assert trial.latency == pytest.approx(trial.predicted, abs=1e-9)
    assert trial.requests == (2 if strategy.startswith("planner") else
                              {"react": 4}.get(strategy, 3))
    assert trial.tokens_out > latency.FINAL_TOKENS and trial.tokens_in > 0


def test_latency_orders_of_the_strategies_on_one_task() -> None:
    task = latency_task()

    async def go() -> dict[str, float]:
        return {s: (await latency.trial(task, s, latency.HOSTED)).latency
                for s in latency.STRATEGIES}

    t = run_virtual(go())
    assert t["planner"] < t["streamed"] < t["parallel_fc"] < t["react"]
    assert t["planner"] < t["planner_thoughts"]


@pytest.mark.parametrize("setting", [latency.HOSTED, latency.LOCAL], ids=lambda s: s.name)
def test_latency_bounds_hold_below_the_strategies(setting: latency.Setting) -> None:
    """The bounds printed beside the published figures: no strategy run here beats the best
    plan-then-answer strategy, which is slower than writing the calls in no time."""
    task = latency_task()

    async def go() -> dict[str, float]:
        return {s: (await latency.trial(task, s, setting)).latency for s in latency.STRATEGIES}

    measured = run_virtual(go())
    best = latency.best_plan_then_answer(task, setting)
    free = latency.calls_written_free(task, setting)
    assert free < best < min(measured.values())
    # written free: one first token, the critical path (0.7 s then 0.4 s), the last turn
    last_turn = setting.first_token(0) + latency.FINAL_TOKENS / setting.rate
    assert free == pytest.approx(
        setting.first_token(latency.prompt_tokens(task)) + 0.7 + 0.4 + last_turn)


def test_latency_planner_is_shoals_planner_agent() -> None:
    """The planner strategies run ``Agent(mode="plan")``: its prompt, its streamed plan with
    each call started as its line arrives, its joiner; the usage is the agent's."""
    task = latency.Task("made-up", "1", latency_task().calls, "Pay the best laptop's bill.",
                        json.dumps([{"name": "search", "parameters": {"query": "string"}}]))
    setting = latency.HOSTED

    async def go() -> latency.Trial:
        return await latency.trial(task, "planner", setting)

    trial = run_virtual(go())
    assert trial.problems == [] and trial.agent is not None
    lines = latency.plan_lines(task)
    assert trial.agent.plans == ["".join(lines)]
    assert [(r.call.id, r.call.name, r.status) for r in trial.agent.calls] == [
        ("1", "search", "ok"), ("2", "invoice", "ok"), ("3", "pay", "ok")]
    assert trial.agent.output.startswith("The answer, from the results")
    assert (trial.tokens_in, trial.requests) == (
        sum(r.total for r in trial.reads), trial.agent.usage.requests)
    assert trial.tokens_out == latency.tokens("".join(lines)) + latency.FINAL_TOKENS
    # the plan request's instructions: the dataset's specs, then shoal's own planner prompt
    specs = [shoal.Agent(name="p", model=latency.SimulatedModel(setting, ""), mode="plan",
                         tools=list(latency.Tools(task).table.values())).tool_specs][0]
    instructions = f"The tools' specifications:\n{task.tools}\n\n{planner_prompt(specs)}"
    assert trial.reads[0].instructions == len(instructions)
    assert trial.reads[0].total == latency.tokens(f"{instructions}\n\n{task.question}")
    # call 1 starts the moment its line has streamed, before the plan's end
    first = setting.first_token(trial.reads[0].fresh)
    line_end = math.ceil(len(lines[0]) / latency.CHARS_PER_TOKEN) / setting.rate
    assert trial.latency == pytest.approx(trial.predicted, abs=1e-9)
    assert first + line_end < first + latency.tokens("".join(lines)) / setting.rate


def test_latency_planner_check_catches_a_delay() -> None:
    """A plan whose text reaches the planner 10 ms late: the formula check sees the gap."""

    class Slow(latency.SimulatedModel):
        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            late = bool(request.plan_tools)
            async for event in super().stream(request):
                if late:
                    await asyncio.sleep(0.01)
                    late = False
                yield event

    task = latency_task()
    lines = latency.plan_lines(task)

    async def go() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        model = Slow(latency.HOSTED, "".join(lines))
        agent = latency.planner_agent(task, latency.Tools(task), model)
        await agent.run("Pay the best laptop's bill.")
        took = loop.time() - start
        return took, latency.predict(task, "planner", latency.HOSTED,
                                     [r.fresh for r in model.reads])

    took, predicted = run_virtual(go())
    assert took == pytest.approx(predicted + 0.01, abs=1e-9)


def test_latency_local_planner_reads_only_what_it_does_not_hold() -> None:
    """With a kept context (a local KV cache), the joiner re-reads only what follows the
    plan request and the plan (it continues their conversation); hosted, it reads it all."""
    task = latency.Task("made-up", "1", latency_task().calls, "Pay the best laptop's bill.",
                        json.dumps([{"name": "search", "parameters": {"query": "string"}}]))

    def reads(setting: latency.Setting) -> list[latency.Read]:
        async def go() -> latency.Trial:
            return await latency.trial(task, "planner", setting)
        return run_virtual(go()).reads

    hosted, local = reads(latency.HOSTED), reads(latency.LOCAL)
    assert [r.total for r in hosted] == [r.total for r in local]
    assert [r.fresh for r in hosted] == [r.total for r in hosted]
    assert local[0].fresh == local[0].total
    plan = "".join(latency.plan_lines(task))
    held = local[0].instructions + len(f"\n\n{task.question}\n\n{plan}")
    assert local[1].fresh == local[1].total - held // latency.CHARS_PER_TOKEN
    assert local[1].instructions == local[0].instructions and not local[1].instructions_read


def test_latency_model_reads_a_growing_context() -> None:
    """Each request's time to first token grows with what it reads (the conversation so far);
    a server that keeps its context reads only what is new."""
    task = latency.Task("made-up", "1", latency_task().calls, "Pay the best laptop's bill.",
                        json.dumps([{"name": "search", "parameters": {"query": "string"}}]))
    assert latency.prompt_tokens(task) == (
        latency.tokens("x" * latency.INSTRUCTION_CHARS) + latency.tokens(task.tools)
        + latency.tokens(task.question))
    # the hosted setting's published point: TTFT 0.39 s at 1,000 input tokens
    assert latency.HOSTED.first_token(1000) == pytest.approx(0.39)
    hosted = latency.Conversation(latency.HOSTED, latency.prompt_tokens(task))
    first = hosted.start()
    hosted.wrote(latency.tokens(latency.react_step(task.calls[0])))
    hosted.read(latency.RESULT_TOKENS)
    second = hosted.start()
    grown = latency.tokens(latency.react_step(task.calls[0])) + latency.RESULT_TOKENS
    assert second - first == pytest.approx(grown / latency.HOSTED.prefill)
    local = latency.Conversation(latency.LOCAL, latency.prompt_tokens(task))
    assert local.start() == pytest.approx(latency.prompt_tokens(task) / latency.LOCAL.prefill)
    local.wrote(10)
    local.read(latency.RESULT_TOKENS)
    assert local.start() == pytest.approx(latency.RESULT_TOKENS / latency.LOCAL.prefill)
    assert local.tokens_in == 2 * latency.prompt_tokens(task) + 10 + latency.RESULT_TOKENS


def test_latency_texts_follow_llmcompilers_formats() -> None:
    """ReAct writes a thought per call; the plan writes its calls then one thought before
    join() (a thought per call with ``thought_per_call``), and both plans parse."""
    task = latency_task()
    step = latency.react_step(task.calls[2])
    assert step.startswith("Thought: ") and "\nAction: pay(item=\"$1.best\", bill=\"$2\")" in step
    assert len(latency.THOUGHT) == len("Thought: ") + 66 + 1  # LLMCompiler's mean thought
    lean = latency.plan_lines(task)
    assert lean[-2:] == [latency.THOUGHT, "4. join()\n"]
    assert latency.call_lines(lean) == [0, 1, 2]
    costly = latency.plan_lines(task, thought_per_call=True)
    assert costly.count(latency.THOUGHT) == 4 and latency.call_lines(costly) == [1, 3, 5]
    for lines in (lean, costly):
        tools = latency.Tools(task)
        parser = PlanTextParser(tools.table)
        ids = [call.id for line in lines for call in parser.feed(line)]
        parser.close()
        assert ids == ["1", "2", "3"] and parser.done and not parser.problems
    reads = [1000, 1200]  # the same requests: the thoughts cost only their streaming time
    t = {s: latency.predict(task, s, latency.HOSTED, reads)
         for s in ("planner", "planner_thoughts")}
    assert t["planner"] < t["planner_thoughts"]
    with pytest.raises(ValueError, match="two requests' reads"):
        latency.predict(task, "planner", latency.HOSTED)


def test_latency_checker_catches_miswiring_and_early_starts() -> None:
    task = latency_task()
    tools = latency.Tools(task)

    async def go() -> None:
        # call 3 run with call 2's output where call 1's belongs: matches no call of the task
        await tools.table["pay"].fn(item=task.outputs[1], bill=task.outputs[1])

    run_virtual(go())
    tools.spans = {0: (0.0, 0.7), 1: (0.0, 0.2), 2: (0.5, 0.9)}  # 3 starts before 1 has ended
    problems = latency.check_run(task, tools)
    assert any("no call of the task has" in p for p in problems)
    assert any("call 3 started before call 1" in p for p in problems)
    tools.spans.pop(2)
    assert any("never ran: [2]" in p for p in latency.check_run(task, tools))


def test_latency_runs_the_datasets_it_finds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    answers = tmp_path / "bfcl_parallel" / "possible_answer"
    answers.mkdir(parents=True)
    records = [{"id": "p0", "ground_truth": [{"spotify.play": {"artist": ["A"], "n": [""]}},
                                             {"spotify.play": {"artist": ["B"]}}]},
               {"id": "p1", "ground_truth": []}]  # no call: left out
    (answers / "BFCL_v4_parallel.json").write_text("\n".join(map(json.dumps, records)))
    question = {"id": "p0", "question": [[{"role": "user", "content": "Play A and B."}]],
                "function": [{"name": "spotify.play", "parameters": {}}]}
    (tmp_path / "bfcl_parallel" / "BFCL_v4_parallel.json").write_text(json.dumps(question))
    (task,) = [t for t in latency.load_bfcl(tmp_path / "bfcl_parallel") if t.calls]
    assert task.question == "Play A and B." and "spotify.play" in task.tools
    monkeypatch.setenv("SHOAL_DATASETS", str(tmp_path))
    result = latency.main(quick=True)
    assert_correct(result)
    out = capsys.readouterr().out
    assert "latency/nestools] SKIPPED" in out and "latency/asynchow] SKIPPED" in out
    assert "| bfcl_parallel (1) | planner |" in out
    assert not any(m.name.startswith("nestools") for m in result.metrics)


def test_latency_planner_problems_are_reported() -> None:
    """A plan whose last call refers to a call never written: shoal rejects that call, and
    the bench's checks say so (a call not ok, one call fewer run than the task has)."""
    task = latency_task()
    lines = latency.plan_lines(task)
    wrong = [line.replace('"$1.best"', '"$7.best"') for line in lines]
    assert wrong != lines
    tools = latency.Tools(task)

    async def go() -> shoal.AgentResult[str]:
        model = latency.SimulatedModel(latency.HOSTED, "".join(wrong))
        return await latency.planner_agent(task, tools, model).run("Pay the bill.")

    result = run_virtual(go())
    problems = latency.planner_problems(task, result, wrong) + latency.check_run(task, tools)
    assert any(p.startswith("call 3 (pay): rejected") for p in problems)
    assert any("never ran: [2]" in p for p in problems)
    assert latency.planner_problems(task, result, lines)  # not the plan written
