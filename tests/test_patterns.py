"""shoal.patterns: pipeline, fan_out and reflect, nested, under one exact tree budget."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.events import AgentFinished, AgentStarted, Event
from shoal.models.base import ModelRequest, ModelResponse
from shoal.patterns import (
    NotAcceptedError,
    PatternError,
    Reflection,
    Verdict,
    fan_out,
    pipeline,
    reflect,
    verdict_of,
)
from shoal.testing import ScriptedModel, call
from tests.conftest import arun

ROOT = Path(__file__).resolve().parent.parent


def agent(name: str, steps: list[Any], **options: Any) -> shoal.Agent[Any]:
    return shoal.Agent(name=name, model=ScriptedModel(steps), **options)


def model_of(a: shoal.Agent[Any]) -> ScriptedModel:
    assert isinstance(a.model, ScriptedModel)
    return a.model


def prompts(a: shoal.Agent[Any]) -> list[str]:
    return [str(getattr(r.messages[0], "content", "")) for r in model_of(a).requests]


def test_a_pipeline_passes_each_output_on_as_the_next_task() -> None:
    a, b, c = agent("a", ["A"]), agent("b", ["B"]), agent("c", ["C"])
    plan = shoal.Plan()
    ref = plan.call(pipeline(a, b, c), task="start", extra="x")
    result = shoal.run_sync(plan)
    assert result[ref].value == "C"
    assert prompts(a) == ["start\n\nextra:\nx"]  # extra arguments reach the first step only
    assert prompts(b) == ["A"] and prompts(c) == ["B"]


class Together(ScriptedModel):
    """Answers only once ``count`` requests are waiting at once: sequential requests hang."""

    def __init__(self, answer: str, waiting: list[asyncio.Event], count: int) -> None:
        super().__init__([answer])
        self.waiting, self.count = waiting, count

    async def request(self, request: ModelRequest) -> ModelResponse:
        here = asyncio.Event()
        self.waiting.append(here)
        if len(self.waiting) == self.count:
            for event in self.waiting:
                event.set()
        await asyncio.wait_for(here.wait(), 3)
        return await super().request(request)


def test_a_fan_out_runs_its_workers_at_once_and_the_aggregator_sees_every_output() -> None:
    waiting: list[asyncio.Event] = []
    workers = [shoal.Agent(name="reader", model=Together(f"R{i}", waiting, 8)) for i in range(8)]
    agg = agent("agg", ["all read"])

    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(fan_out(*workers, aggregate=agg), task="read")
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan)

    result = arun(main())
    assert result["fan_out#1"].value == "all read"
    expected = "read\n\n" + "\n\n".join(f"reader#{i + 1}:\nR{i}" for i in range(8))
    assert prompts(agg) == [expected]  # one agent given 8 times: each output by its node id


def test_a_fan_out_without_an_aggregator_gives_the_list_of_outputs() -> None:
    plan = shoal.Plan()
    ref = plan.call(fan_out(agent("x", ["X"]), agent("y", ["Y"])), task="t")
    after = plan.call(agent("z", ["Z"]), task=ref[1])  # an item of the list
    result = shoal.run_sync(plan)
    assert result[ref].value == ["X", "Y"]
    assert result[after].value == "Z"


def test_reflect_stops_when_the_critic_accepts() -> None:
    writer = agent("writer", ["draft 1", "draft 2", "never"])
    critic = agent("critic", ['{"accept": false, "feedback": "too short"}',
                              '{"accept": true, "feedback": "good"}'], output_type=Verdict)
    value = reflect(writer, critic, max_rounds=3).run_sync("Write a poem")
    assert value == Reflection("draft 2", accepted=True, rounds=2, feedback="good")
    assert prompts(writer) == ["Write a poem",
                               "Write a poem\n\nprevious_draft:\ndraft 1\n\nfeedback:\ntoo short"]
    assert prompts(critic) == ["Write a poem\n\ndraft:\ndraft 1", "Write a poem\n\ndraft:\ndraft 2"]
    assert len(model_of(writer).requests) == 2  # no third draft


def test_reflect_stops_at_max_rounds_with_the_last_draft_not_accepted() -> None:
    writer = agent("writer", ["d1", "d2"])
    critic = agent("critic", ["Needs work.", "Still weak."])
    plan = shoal.Plan()
    ref = plan.call(reflect(writer, critic, max_rounds=2), task="Write")
    later = plan.call(agent("reader", ["read"]), task=ref["output"])
    result = shoal.run_sync(plan)
    assert result[ref].value == Reflection("d2", accepted=False, rounds=2,
                                           feedback="Still weak.")
    assert result[later].value == "read"


def test_reflect_with_must_accept_fails_at_max_rounds() -> None:
    loop = reflect(agent("writer", ["d1"]), agent("critic", ["no"]), max_rounds=1,
                   must_accept=True)
    with pytest.raises(NotAcceptedError) as info:
        loop.run_sync("Write")
    assert info.value.reflection == Reflection("d1", accepted=False, rounds=1, feedback="no")


@pytest.mark.parametrize(("text", "accept", "feedback"), [
    ("ACCEPT", True, ""),
    ("accepted. Nice work", True, "Nice work"),
    ("**ACCEPT**: fine", True, "fine"),
    ("Acceptable? no, rewrite it", False, "Acceptable? no, rewrite it"),
    ("  Rewrite the end.  ", False, "Rewrite the end."),
])
def test_a_critic_accepts_in_text_with_a_first_word_accept(text: str, accept: bool,
                                                          feedback: str) -> None:
    assert verdict_of(text) == Verdict(accept=accept, feedback=feedback)


def test_a_critic_answering_something_else_fails_the_loop_saying_so() -> None:
    assert verdict_of({"accept": True}) == Verdict(accept=True)
    with pytest.raises(PatternError, match="Verdict"):
        verdict_of(42)
    critic = agent("critic", ["7"], output_type=int)
    with pytest.raises(PatternError, match=r"must answer a shoal\.patterns\.Verdict"):
        reflect(agent("writer", ["d"]), critic).run_sync("Write")


def test_patterns_check_their_steps() -> None:
    a = agent("a", [])
    with pytest.raises(shoal.ConfigError, match="at least one step"):
        pipeline()
    with pytest.raises(shoal.ConfigError, match="at least one worker"):
        fan_out(aggregate=a)
    with pytest.raises(shoal.ConfigError, match="must be an Agent or a pattern"):
        pipeline(a, print)  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="max_rounds"):
        reflect(a, a, max_rounds=0)
    with pytest.raises(shoal.ConfigError, match="name"):
        pipeline(a, name="two words")


# -- the nesting test: everything inside everything, one exact budget ----------------------


class Tree:
    """A pipeline whose steps are an agent, a fan-out of 8 agents with an aggregator, a reflect
    loop whose worker is a pipeline of 3 agents (accepted in round 2), and a reflect loop that
    stops at max_rounds. It makes 1 + 9 + 2 * (3 + 1) + 2 * 2 = 22 model requests."""

    REQUESTS = 22

    def __init__(self) -> None:
        self.planner = agent("planner", ["plan"])
        self.readers = [agent(f"reader{i}", [f"notes {i}"]) for i in range(8)]
        self.agg = agent("agg", ["all notes"])
        self.drafters = [agent(f"d{i}", [f"d{i} v1", f"d{i} v2"]) for i in range(3)]
        self.critic = agent("critic", ["Too vague.", "ACCEPT"])
        self.editor = agent("editor", ["e1", "e2"])
        self.picky = agent("picky", ["No.", "Still no."])
        self.pattern = pipeline(
            self.planner,
            fan_out(*self.readers, aggregate=self.agg),
            reflect(pipeline(*self.drafters), self.critic, max_rounds=3),
            reflect(self.editor, self.picky, max_rounds=2),
            name="tree")

    @property
    def agents(self) -> list[shoal.Agent[Any]]:
        return [self.planner, *self.readers, self.agg, *self.drafters, self.critic,
                self.editor, self.picky]

    def requests(self) -> int:
        return sum(len(model_of(a).requests) for a in self.agents)

    def run(self, budget: int) -> tuple[shoal.RunResult, list[Event]]:
        plan = shoal.Plan()
        top = plan.call(self.pattern, task="Write the report")
        plan.call(agent("publisher", ["published"]), task=top["output"])
        events: list[Event] = []
        result = shoal.run_sync(plan, budget=shoal.Budget(requests=budget),
                                on_event=events.append)
        return result, events


def test_nested_patterns_run_with_a_budget_that_is_just_enough() -> None:
    tree = Tree()
    result, events = tree.run(Tree.REQUESTS + 1)  # +1: the publisher after the tree
    assert result.ok, result.to_dict()
    assert result["tree#1"].value == Reflection("e2", accepted=False, rounds=2,
                                                feedback="Still no.")
    assert result["publisher#1"].value == "published"
    assert tree.requests() == Tree.REQUESTS
    assert prompts(tree.drafters[0])[0] == "all notes"  # the fan-out's output, passed on
    assert prompts(tree.drafters[1]) == ["d0 v1", "d0 v2"]
    assert prompts(tree.editor)[0] == "d2 v2"  # the accepted draft of the loop before
    lineages = {e.lineage for e in events if isinstance(e, AgentStarted)}
    assert "tree#1/fan_out#1/reader3#1" in lineages
    assert "tree#1/reflect#1/pipeline#2/d2#1" in lineages
    assert "tree#1/reflect#2/picky#2" in lineages
    assert len(lineages) == 1 + 9 + 8 + 4 + 1


def test_nested_patterns_stop_exactly_at_the_budget() -> None:
    tree = Tree()
    result, events = tree.run(Tree.REQUESTS - 1)
    assert tree.requests() == Tree.REQUESTS - 1  # the last critic's request never went out
    outcome = result["tree#1"]
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.type == "shoal.exceptions.BudgetExceeded"
    assert "requests limit is 21" in outcome.error.message
    assert result["publisher#1"].status == "skipped"
    ended = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    assert ended["tree#1/reflect#2/picky#2"] == "budget_exceeded"


def test_a_breach_in_the_middle_of_a_fan_out_stops_every_worker() -> None:
    tree = Tree()
    result, events = tree.run(5)  # the planner, then 4 of the 8 readers get a request slot
    # The 5th reader's request is refused: the tree stops, but the 4 requests that had their
    # slots were admitted within the limit, so they go out and their answers stand. The
    # fan-out needs every worker, so it fails with the breach; the aggregator never runs.
    assert tree.requests() == 5
    assert model_of(tree.planner).requests and model_of(tree.agg).requests == []
    error = result["tree#1"].error
    assert error is not None and error.type == "shoal.exceptions.BudgetExceeded"
    assert "requests limit is 5" in error.message
    ended = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    readers = sorted(s for lineage, s in ended.items() if "/reader" in lineage)
    assert readers == ["budget_exceeded"] * 4 + ["ok"] * 4


def test_running_a_pattern_on_its_own_raises_the_breach_itself() -> None:
    tree = Tree()
    with pytest.raises(shoal.BudgetExceeded, match="requests limit is 10"):
        tree.pattern.run_sync("Write the report", budget=shoal.Budget(requests=10))
    assert tree.requests() == 10


# -- cancellation, approvals, resume ---------------------------------------------------------


class Hang(ScriptedModel):
    def __init__(self) -> None:
        super().__init__([])
        self.asked = asyncio.Event()

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.asked.set()
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")


def test_cancelling_a_pattern_node_cancels_every_agent_inside() -> None:
    hang = Hang()

    async def main() -> tuple[shoal.RunResult, list[Event]]:
        stuck = shoal.Agent(name="stuck", model=hang)
        plan = shoal.Plan()
        node = plan.call(pipeline(agent("a", ["A"]), fan_out(stuck, agent("b", ["B"]))),
                         task="go")
        events: list[Event] = []
        async with shoal.Runtime(on_event=events.append) as runtime:
            handle = runtime.start(plan)
            await hang.asked.wait()
            handle.cancel(node)
            return await handle, events

    result, events = arun(main())
    assert result["pipeline#1"].status == "cancelled"
    ended = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    assert ended["pipeline#1/fan_out#1/stuck#1"] == "cancelled"
    assert ended["pipeline#1/a#1"] == "ok"


def test_approvals_inside_a_pattern_go_to_the_runtime_approver() -> None:
    asked: list[str] = []

    @shoal.tool(approval=True)
    def publish(text: str) -> str:
        """Publish."""
        return f"published {text}"

    def approve(request: shoal.ApprovalRequest) -> bool:
        asked.append(request.lineage)
        return True

    poster = agent("poster", [[call("publish", text="x")], "done"], tools=[publish])
    plan = shoal.Plan()
    plan.call(pipeline(agent("a", ["A"]), poster), task="go")
    result = shoal.run_sync(plan, approver=approve)
    assert result.ok, result.to_dict()
    assert len(asked) == 1 and asked[0].startswith("pipeline#1/poster#1")


def test_a_resumed_pattern_replays_its_finished_steps(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    def down(request: ModelRequest) -> str:
        raise RuntimeError("model down")

    def build(a_steps: list[Any], b_steps: list[Any]) -> tuple[shoal.Plan, shoal.Agent[Any],
                                                                shoal.Agent[Any]]:
        a, b = agent("a", a_steps), agent("b", b_steps)
        plan = shoal.Plan()
        plan.call(pipeline(a, reflect(b, agent("critic", ["ACCEPT"]))), task="go")
        return plan, a, b

    plan, a, b = build(["A"], [down])
    first = shoal.Runtime(store=store).run_sync(plan, run_id="r1")
    assert first["pipeline#1"].status == "failed"
    assert "model down" in str(first["pipeline#1"].error)
    plan, a, b = build([], ["B"])
    resumed = shoal.Runtime(store=store).resume_sync("r1", plan)
    assert resumed["pipeline#1"].value == Reflection("B", accepted=True, rounds=1)
    assert model_of(a).requests == []  # the first step replayed from the journal
    assert len(model_of(b).requests) == 1


def test_shoal_patterns_is_reachable_from_the_package() -> None:
    assert shoal.patterns.pipeline is pipeline


def test_a_pattern_is_a_tool_of_an_agent_within_its_tree() -> None:
    writer = agent("writer", ["draft"])
    critic = agent("critic", ["ACCEPT"])
    review = reflect(writer, critic, name="review")
    lead = agent("lead", [[call("review", task="Write it")], "done"], tools=[review])
    events: list[Event] = []
    result = lead.run_sync("go", on_event=events.append, budget=shoal.Budget(requests=4))
    assert result.output == "done"
    assert result.calls[0].status == "ok"
    assert '"accepted": true' in result.calls[0].message.content
    started = [e.lineage for e in events if isinstance(e, AgentStarted)]
    assert started == ["lead", "lead/review#1/writer#1", "lead/review#1/critic#1"]
    # the tree's budget holds inside the pattern: 3 requests allowed, the lead's second is over
    lead2 = agent("lead", [[call("review", task="Write it")], "done"],
                  tools=[reflect(agent("writer", ["draft"]), agent("critic", ["no"]),
                                 name="review", max_rounds=5)])
    with pytest.raises(shoal.BudgetExceeded, match="requests limit is 3"):
        lead2.run_sync("go", budget=shoal.Budget(requests=3))


def test_cancelling_an_agent_cancels_the_patterns_it_called() -> None:
    hang = Hang()

    async def main() -> tuple[shoal.AgentResult[Any], list[Event]]:
        inner = pipeline(shoal.Agent(name="stuck", model=hang), name="inner")
        lead = agent("lead", [[call("inner", task="wait")], "never"], tools=[inner])
        events: list[Event] = []
        handle = lead.start("go", on_event=events.append)
        await hang.asked.wait()
        handle.cancel(reason="stop")
        with pytest.raises(shoal.AgentError):
            await handle
        return handle.result, events

    result, events = arun(main())
    assert result.status == "cancelled"
    ended = {e.lineage: e.status for e in events if isinstance(e, AgentFinished)}
    assert ended["lead/inner#1/stuck#1"] == "cancelled"


def crash_script(store: Path, log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.pattern_crash", str(store), "plan-1",
                           mode, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_killed_plan_of_nested_patterns_resumes_without_asking_anything_twice(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    crashed = crash_script(store, log, "crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "b", "w1", "w2"]
    resumed = crash_script(store, log, "resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["outcomes"] == {"pipeline#1": ["ok", "final answer"],
                                  "shout#1": ["ok", "FINAL ANSWER"]}
    # only b's last turn is asked: every other turn replays from the journal
    assert report["requests"] == {"a": 0, "w1": 0, "w2": 0, "agg": 0, "b": 1}
    assert sorted(log.read_text().split()) == ["a", "b", "w1", "w2"]  # no note ran twice


def test_a_pattern_tool_tells_a_model_what_it_does() -> None:
    a, b = agent("a", []), agent("b", [])
    assert pipeline(a, b).node_tool.description == "Run the pipeline: a, then b"
    assert fan_out(a, a, aggregate=b, name="crowd").node_tool.description == (
        "Run the fan_out crowd: a and a at once, then b")
    assert reflect(a, b, max_rounds=2).node_tool.description == (
        "Run the reflect: a drafts and b reviews, up to 2 rounds")
    schema = pipeline(a).node_tool.json_schema()
    assert schema["required"] == ["task"] and schema["additionalProperties"] is True
