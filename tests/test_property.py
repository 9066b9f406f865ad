"""Random DAGs of calls that succeed, fail, time out or get cancelled: the guarantees still hold."""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import Plan, Ref, RunResult, Runtime, tool
from shoal.events import Event, NodeCancelled, NodeFinished, NodeSkipped
from tests.conftest import arun

TIMEOUT = 0.02


@tool
async def work(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    await asyncio.sleep(delay)
    if deps != expect:
        raise AssertionError(f"node {i} got inputs {deps}, expected {expect}")
    return i


@tool
def work_sync(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    time.sleep(delay)
    if deps != expect:
        raise AssertionError(f"node {i} got inputs {deps}, expected {expect}")
    return i


@tool
async def fail(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    await asyncio.sleep(delay)
    raise ValueError(f"node {i} fails")


@tool
def fail_sync(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    raise ValueError(f"node {i} fails")


@tool(timeout=TIMEOUT)
async def hang(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    await asyncio.sleep(10)
    return i


@tool(timeout=TIMEOUT)
def hang_sync(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    time.sleep(0.2)  # a thread cannot be stopped: it is abandoned and ends on its own
    return i


@tool
async def wait_for_cancel(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    await asyncio.sleep(10)
    return i


@tool
def wait_for_cancel_sync(i: int, delay: float, deps: list[Any], expect: list[int]) -> int:
    time.sleep(0.2)
    return i


TOOLS = {
    ("ok", False): work, ("ok", True): work_sync,
    ("raise", False): fail, ("raise", True): fail_sync,
    ("timeout", False): hang, ("timeout", True): hang_sync,
    ("cancel", False): wait_for_cancel, ("cancel", True): wait_for_cancel_sync,
}


@dataclass
class Spec:
    index: int
    behaviour: str
    sync: bool
    delay: float
    refs: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"n{self.index}"

    @property
    def preds(self) -> set[str]:
        return {f"n{p}" for p in (*self.refs, *self.after)}


@dataclass
class Scenario:
    specs: list[Spec]
    cancel_at: float

    @property
    def targets(self) -> list[str]:
        return [s.id for s in self.specs if s.behaviour == "cancel"]

    def plan(self) -> Plan:
        plan = Plan()
        for s in self.specs:
            plan.call(TOOLS[s.behaviour, s.sync], node_id=s.id, after=[f"n{a}" for a in s.after],
                      i=s.index, delay=s.delay, deps=[Ref(f"n{r}") for r in s.refs],
                      expect=list(s.refs))
        return plan


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    size = draw(st.integers(1, 25))
    specs: list[Spec] = []
    for i in range(size):
        preds = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        split = draw(st.integers(0, len(preds)))
        specs.append(Spec(
            index=i,
            behaviour=draw(st.sampled_from(["ok", "ok", "ok", "ok", "raise", "timeout",
                                            "cancel"])),
            sync=draw(st.booleans()),
            delay=draw(st.sampled_from([0.0, 0.001, 0.004])),
            refs=preds[:split],
            after=preds[split:],
        ))
    return Scenario(specs, draw(st.sampled_from([0.0, 0.005, 0.03])))


async def execute(scenario: Scenario, events: list[Event]) -> RunResult:
    async with Runtime() as runtime:
        handle = runtime.start(scenario.plan(), on_event=events.append)
        if scenario.targets:
            await asyncio.sleep(scenario.cancel_at)
            handle.cancel(scenario.targets, reason="cancelled mid-run")
        return await handle


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_dags_keep_every_guarantee(scenario: Scenario) -> None:
    events: list[Event] = []
    result = arun(execute(scenario, events), timeout=10.0)  # also: no task left running
    out = result.outcomes
    by_id = {s.id: s for s in scenario.specs}

    # every node gets exactly one outcome, and exactly one terminal event
    assert list(out) == [s.id for s in scenario.specs]
    terminal = [e.node_id for e in events if isinstance(e, NodeFinished | NodeSkipped
                                                          | NodeCancelled)]
    assert sorted(terminal) == sorted(out)

    for s in scenario.specs:
        o = out[s.id]
        preds_ok = all(out[p].status == "ok" for p in s.preds)

        # nothing starts before every node it depends on has finished
        if o.started_at is not None:
            assert preds_ok, f"{s.id} started although an input did not succeed"
            for p in s.preds:
                finished = out[p].finished_at
                assert finished is not None and o.started_at >= finished - 1e-9, (
                    f"{s.id} started at {o.started_at} before {p} finished at {finished}")

        # dependents of a node that did not succeed are skipped, naming an upstream node
        if not preds_ok:
            bad = {p for p in s.preds if out[p].status != "ok"}
            if o.status == "skipped":
                assert any(f"'{p}'" in o.reason for p in bad), (s.id, o.reason, bad)
                assert o.started_at is None and o.attempts == 0
            else:
                assert o.status == "cancelled" and s.behaviour == "cancel", (s.id, o)
            continue

        # every node whose inputs all succeeded ends as its behaviour says
        expected = {"ok": "ok", "raise": "failed", "timeout": "timed_out",
                    "cancel": "cancelled"}[s.behaviour]
        assert o.status == expected, (s.id, s.behaviour, o)
        if expected == "ok":
            assert o.value == s.index
        if expected == "failed":
            assert o.error is not None and o.error.type == "ValueError"
        if expected == "timed_out":
            assert o.abandoned == s.sync
        if expected == "cancelled":
            assert o.reason == "cancelled mid-run"
    assert by_id.keys() == out.keys()
