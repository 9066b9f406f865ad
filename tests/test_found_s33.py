"""Found by reviews, fixed in session 33: injected names a call may not set, a node added
halfway, schemas that do not match their validation, refs as dict keys, timed-out threads
piling up, process agents that do not end, short socket reads, unbounded replies.
"""

from __future__ import annotations

import enum
import gc
import inspect
import json
import math
import os
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import pytest

import shoal
from shoal.agents import _process, remote
from shoal.exceptions import PlanError, ToolArgumentError, ToolDefinitionError
from shoal.scheduler.state import MAX_ABANDONED
from shoal.testing import ScriptedModel, call
from tests.conftest import REAL_HANG_TIMEOUT, arun
from tests.wire import (
    AnthropicWireServer,
    OpenAIWireServer,
    text_reply,
    tool_call_reply,
)
from tests.wire import call as wire_call


def test_a_model_naming_an_injected_argument_of_an_agent_tool_gets_a_rejected_call() -> None:
    # the agent node's tool takes **context: 'shoal_node' was taken as context, then replaced
    # by the runtime's value, and the call ran as if it had not been named
    worker = shoal.Agent(name="worker", model=ScriptedModel(["W"]))
    lead_model = ScriptedModel([[call("worker", task="x", shoal_node=1)], "done"])
    lead = shoal.Agent(name="lead", model=lead_model, tools=[worker.node_tool])
    assert lead.run_sync("go").output == "done"
    result = lead_model.requests[-1].messages[-1]
    assert getattr(result, "is_error", False)
    said = str(getattr(result, "content", ""))
    assert "unexpected argument 'shoal_node': the runtime fills it in" in said


def test_a_tool_taking_more_refuses_its_injected_parameter_by_name() -> None:
    def keyed(x: int, key: shoal.IdempotencyKey, **more: Any) -> int:
        return x

    tool = shoal.tool(keyed)
    assert tool.validate({"x": 1, "y": 2}) == {"x": 1, "y": 2}
    with pytest.raises(ToolArgumentError) as caught:
        tool.validate({"x": 1, "key": "mine"})
    assert caught.value.argument == "key" and "the runtime fills it in" in str(caught.value)
    plan = shoal.Plan()
    first = plan.call(tool, x=1)
    plan.call(tool, x=first, key="mine")  # a ref among the arguments: checked one by one
    with pytest.raises(PlanError, match="'key': the runtime fills it in"):
        plan.validate()


class _CtrlCWhenWritten:
    """A value whose text is a Ctrl-C: pressed while a key template is filled in with it."""

    def __format__(self, spec: str) -> str:
        raise KeyboardInterrupt


@shoal.tool(writes="key:{x}")
async def write_key(x: Any) -> str:
    """Write the key."""
    return "written"


@shoal.tool
async def plain(y: int) -> int:
    """Return y."""
    return y


def test_a_node_whose_addition_is_cut_short_leaves_the_open_run_as_it_was() -> None:
    # the graph had the node, the run no slot for it: the next node's slot stood at the wrong
    # position, and the run ended with an IndexError (or waited for the missing node for ever)
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            first = run.call(plain, y=1)
            with pytest.raises(KeyboardInterrupt):
                run.call(write_key, x=_CtrlCWhenWritten())
            second = run.call(write_key, x=1)
            third = run.call(write_key, x=1)
            last = run.call(plain, y=first)
        result = run.result
        assert [result[r].status for r in (first, second, third, last)] == ["ok"] * 4
        assert result[last].value == 1
        return result

    result = arun(main())
    assert len(result.outcomes) == 4
    assert sorted((e.source, e.target, e.kind) for e in result.edges) == [
        ("plain#1", "plain#2", "data"), ("write_key#2", "write_key#3", "resource")]


class _NotANumber(enum.Enum):
    missing = float("nan")
    one = 1.0


@dataclass
class _Tagged:
    tag: Literal[b"x"]


def _bytes_choice(x: Literal[b"x"]) -> None:
    """Take the bytes b'x'."""


def _nan_member(e: _NotANumber | None = None) -> None:
    """Take a member."""


def _nested_bytes_choice(items: list[_Tagged]) -> None:
    """Take tagged items."""


@pytest.mark.parametrize(("fn", "where", "value"), [
    (_bytes_choice, "x", "b'x'"), (_nan_member, "e", "nan"), (_nested_bytes_choice,
                                                              "items.tag", "b'x'")])
def test_a_choice_no_json_schema_can_offer_is_refused_with_its_parameter(
        fn: Any, where: str, value: str) -> None:
    # was: Literal[b"x"] offered as the string "x", which validation refused (a str is not
    # bytes); an Enum member NaN offered as `NaN`, which is no JSON (and validation refused
    # nan too: nan != nan)
    made = shoal.tool(fn)
    with pytest.raises(ToolDefinitionError, match=f"parameter {where!r} may be .*{value}"):
        made.json_schema()
    with pytest.raises(ToolDefinitionError, match="no model can be offered it"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), tools=[made]).run_sync("go")


def test_a_schema_drops_an_infinite_default_or_bound_and_stays_strict_json() -> None:
    def bounded(y: float = math.inf, z: Annotated[float, pydantic.Field(ge=-math.inf)] = 1.0,
                w: Literal["a", 1] = "a") -> None:
        """Take numbers."""

    schema = shoal.tool(bounded).json_schema()
    json.dumps(schema, allow_nan=False)  # was: ValueError, 'default': inf is no JSON
    assert schema["properties"]["y"] == {"type": "number"}
    assert schema["properties"]["w"] == {"default": "a", "enum": ["a", 1]}


@shoal.tool
def given(d: Any) -> Any:
    """Return what was given."""
    return d


def test_a_ref_as_a_dict_key_is_refused_when_the_call_is_made() -> None:
    # was: the key was never resolved, and the tool got the Ref object itself
    plan = shoal.Plan()
    first = plan.call(given, d="k")
    for keyed in ({first: 1}, [{"a": {(first, 1): 2}}], {"x": {frozenset([first["f"]]): 1}}):
        with pytest.raises(PlanError, match=r"a ref is a dict key .*never in keys"):
            plan.call(given, d=keyed)
    as_values = plan.call(given, d={"k": first, "s": {first}})  # values: still resolved
    assert shoal.run_sync(plan)[as_values].value == {"k": "k", "s": {"k"}}

    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            one = run.call(given, d=1)
            with pytest.raises(PlanError, match="a ref is a dict key"):
                run.call(given, d={"outer": {one: "v"}})
        assert len(run.result) == 1

    arun(main())


def test_a_call_that_hangs_on_a_thread_is_retried_once_not_once_per_retry() -> None:
    # was: timeout=0.05, retries=20 on a sync tool that blocks left 21 threads behind
    release = threading.Event()
    began: list[int] = []

    @shoal.tool(timeout=0.05, retries=20, backoff=0.0)
    def hangs() -> None:
        began.append(1)
        release.wait(REAL_HANG_TIMEOUT)

    try:
        plan = shoal.Plan()
        ref = plan.call(hangs)
        outcome = shoal.run_sync(plan)[ref]
    finally:
        release.set()
    assert (outcome.status, outcome.attempts, len(began)) == ("timed_out", MAX_ABANDONED, 2)
    assert outcome.abandoned and "not retried: 2 of its attempts were abandoned" in (
        outcome.reason)


_LEFT_RUNNING = """
import asyncio, sys
from shoal.agents import _process
from shoal.scheduler.driver import keep_abandoned

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def agent():  # as an agent's run ends once its tool's task was abandoned
    keep_abandoned(asyncio.create_task(stubborn()))
    await asyncio.sleep(0)

_process.run_to_end(agent())
print("ended", flush=True)
"""


def test_a_process_agents_loop_ends_though_a_tool_ignores_its_cancellation() -> None:
    # was: the agent process ended its loop with asyncio.run, which waited for ever for the
    # abandoned tool's task: the process never ended by itself
    done = subprocess.run([sys.executable, "-c", _LEFT_RUNNING], capture_output=True,
                          text=True, timeout=REAL_HANG_TIMEOUT, check=False)
    assert (done.returncode, done.stdout) == (0, "ended\n"), done.stderr
    source = inspect.getsource(_process._serve)
    assert "run_to_end(run(spec, link)" in source and "asyncio.run(" not in source


@shoal.tool
def half_message(then: str) -> str:
    """Write a message's length and a part of it to the agent's socket, then go on."""
    link = next(o for o in gc.get_objects() if isinstance(o, _process.Link))
    with link._send_lock:
        link._sock.sendall(struct.pack(">Q", 1 << 24) + b"part")
    if then == "exit":  # its process ends: the socket closes short of the length
        os._exit(0)
    return "written"  # the agent goes on, then waits for replies that cannot come


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_child_process_leak")
@pytest.mark.parametrize("then", ["exit", "wait"])
def test_a_short_message_on_an_agents_socket_fails_that_agent_naming_it(
        then: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # was: a legal length was waited for until the agent ended (never, as it waited for its
    # parent's replies) or, its socket closed, taken for a process that died
    monkeypatch.setattr(remote, "MESSAGE_WAIT", 2.0)
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t"), call("reader", task="s")], "done"],
        "t": [[call("half_message", then=then)], "read"], "s": [[call("plain", y=1)], "sib"]})
    reader = shoal.Agent(name="reader", model=model, tools=[half_message, plain],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(wall_clock=60))
    short, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("done", "ok", "sib")
    assert short.status == "failed" and isinstance(short.error, shoal.SerializationError)
    assert "lead/reader#1" in str(short.error) and "a short read" in str(short.error)
    assert ("its socket ended after 4" if then == "exit" else "not all came within") in str(
        short.error)


@pytest.mark.parametrize("server_class", [OpenAIWireServer, AnthropicWireServer])
def test_a_reply_asks_for_no_more_output_than_the_token_budget_leaves(
        server_class: Any) -> None:
    # was: a reply that is not streamed was counted only once it had come, whatever its
    # length (the provider's own limit, thousands of tokens past the budget)
    replies = [tool_call_reply(wire_call("plain", {"y": 1})), text_reply("done")]
    with server_class(replies) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, tools=[plain], stream_dispatch=False,
                            settings=shoal.ModelSettings(max_tokens=100_000))

        async def main() -> Any:
            try:
                return await agent.run("go", budget=shoal.Budget(tokens=1000))
            finally:
                await model.aclose()

        result = arun(main(), timeout=120)
        assert not server.errors, server.errors
        asked = [r.body["max_tokens"] for r in server.requests]
    assert result.output == "done"
    assert asked[0] == 1000 and 0 < asked[1] < 1000  # what the first turn spent is taken off
