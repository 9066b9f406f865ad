"""Models and agents against a hostile user and hostile models (session 37).

Over the real SDKs and HTTP (the strict wire servers of :mod:`tests.wire`) and through
:class:`~shoal.testing.ScriptedModel`, on the virtual clock where time matters: what a model
sends, and what is done to an agent, must end in a typed error or a recorded outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.agents.budget import BudgetTracker
from shoal.exceptions import ConfigError, ModelError, ModelHTTPError
from shoal.models import (
    AnthropicModel,
    Model,
    ModelRequest,
    ModelResponse,
    OpenAIModel,
    Price,
    Usage,
)
from shoal.testing import ScriptedModel
from shoal.testing import call as scripted_call
from tests.conftest import arun, until
from tests.test_hostile_agents_s35 import LONG_TEXT, stopped_by_the_token_budget
from tests.wire import (
    AnthropicWireServer,
    OpenAIWireServer,
    call,
    text_reply,
    tool_call_reply,
)

#: each reply of these tests: 100 tokens
HUNDRED = Usage(input_tokens=60, output_tokens=40, requests=1)


def _capped(caps: list[tuple[float, int | None]], task: str) -> Any:
    """A scripted step that notes when its reply came and the output cap it was asked with."""
    def step(request: ModelRequest) -> str:
        caps.append((asyncio.get_running_loop().time(), request.token_cap))
        return f"read {task}"
    return step


@pytest.mark.parametrize("max_tokens", [None, 700])
def test_requests_in_flight_together_never_promise_more_tokens_than_the_budget_left(
        max_tokens: int | None) -> None:
    # two subagents asked at once, replies not streamed: each request's output cap was what
    # the tree had left when it started (900 each of the 900 left), so together they could
    # write 1,800 tokens under Budget(tokens=1000) before either reply was counted
    caps: list[tuple[float, int | None]] = []
    settings = shoal.ModelSettings(max_tokens=max_tokens)
    reader = shoal.Agent(name="reader", settings=settings, stream_dispatch=False,
                         model=ScriptedModel.per_prompt(
                             {task: [_capped(caps, task)] for task in "abc"},
                             latency=1.0, usage=HUNDRED))
    lead = shoal.Agent(name="lead", subagents=[reader], stream_dispatch=False,
                       model=ScriptedModel.per_prompt({"go": [
                           [scripted_call("reader", task=t) for t in "abc"], "done"]},
                           usage=HUNDRED))

    async def main() -> Any:
        return await lead.run("go", budget=shoal.Budget(tokens=1000))

    result = arun(main(), virtual=True)
    assert result.output == "done"
    _fit_the_budget(caps)


def _fit_the_budget(caps: list[tuple[float, int | None]]) -> None:
    """Check the readers' caps: those asked at once fit in what was left (1,000 in all)."""
    # every reply takes a second: those that came at the same moment were in flight
    # together, and their caps fit in what the replies before them left (the lead's first
    # reply spent 100: 900 left when the three readers were asked)
    for moment in {when for when, _ in caps}:
        before = sum(when < moment for when, _ in caps)
        promised = sum(cap or 0 for when, cap in caps if when == moment)
        assert promised <= 1000 - 100 * (1 + before), caps
    assert len(caps) == 3 and all(cap is not None and cap >= 1 for _, cap in caps), caps



class _HoldsUntil(Model):
    """Answers only once ``path`` exists (its request in flight until then); notes its cap."""

    name = "holds"
    changes_requests = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.caps: list[int | None] = []

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.caps.append(request.token_cap)
        await until(self.path.exists)  # written by another process: nothing to await
        return ModelResponse("held", usage=HUNDRED)


def _cap_then_touch(path: Path) -> Any:
    """A scripted step (run in the agent's process): say its cap, then let the holder end."""
    def step(request: ModelRequest) -> str:
        path.touch()
        return f"cap {request.token_cap}"
    return step


def test_an_agent_in_a_process_is_capped_by_what_the_roots_requests_in_flight_hold(
        tmp_path: Path) -> None:
    # the agent in a process was given what the whole tree had left when it was charged
    # (900), though an inline sibling's request in flight had 700 of it promised already
    flag = tmp_path / "asked"
    holder_model = _HoldsUntil(flag)
    settings = shoal.ModelSettings(max_tokens=700)
    holder = shoal.Agent(name="holder", model=holder_model, settings=settings)
    reader = shoal.Agent(name="reader", isolation="process", settings=settings,
                         model=ScriptedModel.per_prompt({"r": [_cap_then_touch(flag)]},
                                                        usage=HUNDRED))
    lead = shoal.Agent(name="lead", subagents=[holder, reader], model=ScriptedModel.per_prompt(
        {"go": [[scripted_call("holder", task="h"), scripted_call("reader", task="r")],
                "done"]}, usage=HUNDRED))
    result = lead.run_sync("go", budget=shoal.Budget(tokens=1000))
    assert result.output == "done"
    # the lead's first reply spent 100; the holder holds 700 of the 900 left, from its start
    # (inline) until the reader has answered
    assert holder_model.caps == [700]
    assert [child.output for child in result.children] == ["held", "cap 200"]


def _refuse(request: ModelRequest) -> str:
    """A scripted step whose request fails: its reply never comes, nor its usage."""
    raise ModelError("scripted", f"refused (asked for {request.token_cap})")


def test_a_request_that_fails_gives_back_what_it_held_to_the_one_waiting() -> None:
    # the reader that fails holds all 900 tokens left; its sibling waits for them, and gets
    # them though no usage comes to replace the hold (else it, and the run, would wait for good)
    caps: list[tuple[float, int | None]] = []
    reader = shoal.Agent(name="reader", settings=shoal.ModelSettings(max_tokens=900),
                         model=ScriptedModel.per_prompt(
                             {"a": [_refuse], "b": [_capped(caps, "b")]},
                             latency=1.0, usage=HUNDRED))
    lead = shoal.Agent(name="lead", subagents=[reader], model=ScriptedModel.per_prompt(
        {"go": [[scripted_call("reader", task="a"), scripted_call("reader", task="b")],
                "done"]}, usage=HUNDRED))

    async def main() -> Any:
        return await lead.run("go", budget=shoal.Budget(tokens=1000))

    result = arun(main(), virtual=True)
    assert result.output == "done"
    assert [child.status for child in result.children] == ["failed", "ok"]
    assert caps == [(2.0, 900)]  # asked once the first gave its 900 back, at 1 s


def test_a_request_waiting_for_tokens_held_is_stopped_with_its_tree_and_recorded() -> None:
    # one reader holds all that is left for 10 s; the other waits for it when the tree's
    # wall clock runs out: both end, recorded, and the one that waited made no request
    reader = shoal.Agent(name="reader", settings=shoal.ModelSettings(max_tokens=900),
                         model=ScriptedModel.per_prompt({"*": ["never"]}, latency=10.0,
                                                        usage=HUNDRED))
    lead = shoal.Agent(name="lead", subagents=[reader], model=ScriptedModel.per_prompt(
        {"go": [[scripted_call("reader", task="a"), scripted_call("reader", task="b")],
                "done"]}, usage=HUNDRED))

    async def main() -> shoal.BudgetExceeded:
        with pytest.raises(shoal.BudgetExceeded) as info:
            await lead.run("go", budget=shoal.Budget(tokens=1000, wall_clock=2.0))
        return info.value

    breach = arun(main(), virtual=True)
    assert breach.limit == "wall_clock" and breach.result is not None
    children = breach.result.children
    assert [child.status for child in children] == ["budget_exceeded"] * 2
    # the one that held was asked (a request whose usage never came); the other never was
    assert sorted(child.usage.requests for child in children) == [0, 1]



def _odd_usage(event: str, usage: dict[str, Any]) -> str:
    """``event`` (an SSE event) with each ``usage`` object in its data replaced by ``usage``."""
    head, _, data = event.partition("data: ")
    if '"usage"' not in data:
        return event
    payload = json.loads(data)
    for place in (payload, payload.get("message") or {}):
        if "usage" in place:
            place["usage"] = usage
    return f"{head}data: {json.dumps(payload)}\n\n"


class _OddOpenAI(OpenAIWireServer):
    """An OpenAI-compatible server whose usage counts are what :attr:`usage` says."""

    usage: dict[str, Any]  # set before it is asked

    def render_json(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {**super().render_json(body, reply), "usage": self.usage}

    def render_events(self, body: dict[str, Any], reply: Any) -> Any:
        return (_odd_usage(event, self.usage) for event in super().render_events(body, reply))


class _OddAnthropic(AnthropicWireServer):
    """An Anthropic-compatible server whose usage counts are what :attr:`usage` says."""

    usage: dict[str, Any]  # set before it is asked

    def render_json(self, body: dict[str, Any], reply: Any) -> dict[str, Any]:
        return {**super().render_json(body, reply), "usage": self.usage}

    def render_events(self, body: dict[str, Any], reply: Any) -> Any:
        return (_odd_usage(event, self.usage) for event in super().render_events(body, reply))


@pytest.mark.parametrize("stream_dispatch", [True, False])
@pytest.mark.parametrize(("server_class", "tokens_in", "tokens_out"), [
    (_OddOpenAI, "prompt_tokens", "completion_tokens"),
    (_OddAnthropic, "input_tokens", "output_tokens")])
@pytest.mark.parametrize("count", ["many", -5, 12.5, None, [3], "missing"])
def test_an_output_count_that_is_no_count_is_charged_at_least_what_the_reply_says(
        count: Any, server_class: Any, tokens_in: str, tokens_out: str,
        stream_dispatch: bool) -> None:
    # a server reporting its input tokens but an output count of the wrong kind (a string, a
    # negative, a fraction, a null, none) had the reply counted as no output at all: 20,000
    # characters a turn and Budget(tokens=5_000) never stopped the run until max_turns
    usage = {tokens_in: 10} if count == "missing" else {tokens_in: 10, tokens_out: count}
    with server_class(tool_call_reply(call("echo", {"x": 1}), text=LONG_TEXT)) as server:
        server.usage = usage
        result = stopped_by_the_token_budget(server, stream_dispatch)
    assert result.usage.input_tokens >= 10  # what the server did report stands


@pytest.mark.parametrize("model_class", [OpenAIModel, AnthropicModel])
@pytest.mark.parametrize(("options", "said"), [
    ({"model": 5}, "model must be the provider's model id, a non-empty str; got int 5"),
    ({"model": None}, "model must be the provider's model id"),
    ({"model": "  "}, "model must be the provider's model id"),
    ({"base_url": 5}, "base_url must be a str (or None); got int 5"),
    ({"api_key": 12345}, "api_key must be a str (or None); got int"),
    ({"name": ["m"]}, "name must be a str (or None); got list"),
    ({"prices": [Price(1, 2)]}, "prices must map model ids to shoal.models.Price("),
    ({"prices": {"m": 5}}, "prices must map model ids to shoal.models.Price("),
])
def test_a_models_option_of_the_wrong_kind_is_refused_where_the_model_is_made(
        model_class: Any, options: dict[str, Any], said: str) -> None:
    # OpenAIModel(5) made a model named 'openai:5' (AnthropicModel(None): 'anthropic:None'),
    # a base_url of 5 failed with Python's AttributeError, prices={"m": 5} failed every reply
    # as a "malformed response" of the server's, and a list of prices was never read
    options = {"model": "m", "api_key": "k", **options}
    with pytest.raises(ConfigError) as raised:
        model_class(options.pop("model"), **options)
    assert said in str(raised.value) and model_class.__name__ in str(raised.value)



def test_what_a_request_holds_counts_once_with_what_its_reply_streamed() -> None:
    # a hold and the reply streaming within it are one promise: counted twice, the requests
    # after it were given less than was left (or waited), counted never, more
    tracker = BudgetTracker(shoal.Budget(tokens=1000), lambda breach: None)

    async def main() -> list[int | None]:
        caps = [await tracker.reserve("a", 600)]
        tracker.charge_streamed(250, "a")  # within a's 600: 400 still left for others
        caps.append(await tracker.reserve("b", 4096))
        tracker.charge_streamed(0, "a")  # a's stream failed: its hold alone stands
        tracker.release("a")  # and goes back
        caps.append(await tracker.reserve("c", 4096))
        tracker.add_usage(Usage(10, 300, 1), "b")  # b's usage replaces its hold
        caps.append(tracker.committed())
        return caps

    assert arun(main(), virtual=True) == [600, 400, 600, 910]


@shoal.tool
def hold_for(lineage: str, most: Any) -> str:
    """Ask the root's tracker to hold tokens for ``lineage``, as this agent's process may."""
    import gc

    from shoal.agents._process import Link

    [link] = [found for found in gc.get_objects() if isinstance(found, Link)]
    try:
        return f"held {link.ask('reserve', lineage, most)}"
    except shoal.ShoalError as exc:
        return f"refused: {exc}"


def test_an_agent_process_holds_tokens_only_for_its_own_requests() -> None:
    # a hold for the lead (no request of its subtree) would take what the tree left from the
    # lead for good; a count of no tokens is no request's cap
    model = ScriptedModel.per_prompt({
        "go": [[scripted_call("reader", task="t")], "done"],
        "t": [[scripted_call("hold_for", lineage="lead", most=500),
               scripted_call("hold_for", lineage="lead/reader#1", most=-5),
               scripted_call("hold_for", lineage="lead/reader#1/x#1", most=5)], "read"]},
        usage=HUNDRED)
    reader = shoal.Agent(name="reader", model=model, tools=[hold_for], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", budget=shoal.Budget(tokens=10_000))
    [child] = result.children
    said = [call.message.content for call in child.calls]
    assert said[0].startswith("refused: agent lead/reader#1 asked to hold"), said
    assert said[1].startswith("refused: agent lead/reader#1 asked to hold"), said
    assert said[2] == "held 5", said  # a request of its subtree's: taken
    assert result.output == "done"


def test_a_models_own_max_tokens_is_what_its_requests_hold_of_a_large_budget() -> None:
    # AnthropicModel(max_tokens=8192) was asked for 4,096 under Budget(tokens=200_000): what
    # a request with no max_tokens of its own holds, though its model says more
    with AnthropicWireServer(text_reply("done")) as server:
        model = server.model(max_tokens=8192)
        agent = shoal.Agent(name="a", model=model)

        async def main() -> Any:
            try:
                return await agent.run("go", budget=shoal.Budget(tokens=200_000))
            finally:
                await model.aclose()

        result = arun(main(), timeout=60)
        asked = [r.body.get("max_tokens") for r in server.requests]
    assert result.output == "done" and asked == [8192]


def _presses_ctrl_c(then: Any) -> Any:
    """A scripted step that presses Ctrl-C (SIGINT, in this main thread), then plays ``then``."""
    def step(request: ModelRequest) -> Any:
        signal.raise_signal(signal.SIGINT)  # asyncio's handler: it cancels run_sync's task
        if isinstance(then, BaseException):
            raise then
        return then
    return step


@pytest.fixture
def default_ctrl_c() -> Any:
    """SIGINT's default handler for the test (asyncio's run_sync handler replaces only that)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("waiting", ["on_retry_after", "on_the_reply"])
@pytest.mark.usefixtures("default_ctrl_c")
def test_an_agent_run_sync_stopped_by_ctrl_c_is_journaled_cancelled(
        tmp_path: Path, waiting: str) -> None:
    # Ctrl-C in agent.run_sync (a SQLite journal) while its model turn waited: the turn was
    # recorded cancelled, but the run 'finished' in shoal runs / shoal show (the CLI's own
    # Ctrl-C cancels the run itself, asyncio's cancels only the awaiting task)
    from shoal.store.sqlite import SQLiteStore
    from shoal.testing import pause

    limited = ModelHTTPError("scripted", "rate limited", 429, retry_after=30.0)
    first = _presses_ctrl_c(limited if waiting == "on_retry_after" else [pause(30.0), "done"])
    agent = shoal.Agent(name="lead", model=ScriptedModel([first, "done"]))
    db = tmp_path / "runs.db"
    with pytest.raises(KeyboardInterrupt):
        agent.run_sync("go", runtime=shoal.Runtime(store=f"sqlite:///{db}"), run_id="r1")
    store = SQLiteStore(str(db))
    try:
        record = store.get_run("r1/lead/steps")
        assert record is not None and record.status == "cancelled", record
    finally:
        store.close()



@pytest.mark.usefixtures("default_ctrl_c")
def test_ctrl_c_in_a_subagents_turn_journals_every_steps_run_of_the_tree_cancelled(
        tmp_path: Path) -> None:
    # both the lead's and the worker's steps runs said 'finished' after run_sync's Ctrl-C
    from shoal.store.sqlite import SQLiteStore
    from shoal.testing import pause

    worker = shoal.Agent(name="worker", model=ScriptedModel(
        [_presses_ctrl_c([pause(30.0), "found"])]))
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[scripted_call("worker", task="t")], "done"]))
    db = tmp_path / "runs.db"
    with pytest.raises(KeyboardInterrupt):
        lead.run_sync("go", runtime=shoal.Runtime(store=f"sqlite:///{db}"), run_id="r1")
    store = SQLiteStore(str(db))
    try:
        statuses = {r.run_id: r.status for r in store.list_runs()}
    finally:
        store.close()
    assert statuses == {"r1/lead/steps": "cancelled", "r1/lead/worker#1/steps": "cancelled"}


def test_a_tree_cancelled_through_its_handle_journals_its_steps_runs_cancelled() -> None:
    # handle.cancel() (what the CLI's Ctrl-C calls) left both steps runs 'finished'; one
    # agent cancelled alone still leaves its steps run 'finished' (the tree goes on)
    from shoal.testing import pause

    worker = shoal.Agent(name="worker", model=ScriptedModel([[pause(30.0), "found"]]))
    lead = shoal.Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[scripted_call("worker", task="t")], "done"]))
    runtime = shoal.Runtime()

    async def main() -> None:
        handle = lead.start("go", runtime=runtime, run_id="r1")
        await asyncio.sleep(1.0)  # the worker's reply takes 30 s
        handle.cancel(reason="enough")
        with pytest.raises(shoal.AgentError):
            await handle

    arun(main(), virtual=True)
    store = runtime.store
    assert store is not None
    for run_id in ("r1/lead/steps", "r1/lead/worker#1/steps"):
        record = store.get_run(run_id)
        assert record is not None and record.status == "cancelled", (run_id, record)


@shoal.tool
def square(x: int) -> int:
    """The square of ``x``."""
    return x * x


@pytest.mark.parametrize("sign", ["", "-"])
def test_a_tool_call_with_a_number_too_long_tells_the_model_what_to_send(sign: str) -> None:
    # 5,000 digits were refused with Python's own advice to the programmer ("use
    # sys.set_int_max_str_digits() to increase the limit"), which the model cannot act on
    digits = "9" * 5000
    agent = shoal.Agent(name="lead", tools=[square], model=ScriptedModel([
        [scripted_call("square", raw_arguments=f'{{"x": {sign}{digits}}}')], "done"]))
    result = agent.run_sync("go")
    [record] = result.calls
    said = record.message.content
    assert record.message.is_error and result.output == "done"
    assert "a number 5,000 digits long" in said and "at most 4,300 digits" in said, said
    assert "send a shorter number" in said and "set_int_max_str_digits" not in said, said


def _answer_with_events(agent: shoal.Agent[Any], model: Model | None = None,
                        ) -> tuple[Any, list[shoal.events.AgentFinished]]:
    """Run ``agent`` on "go" (its ``model`` closed after); its result and AgentFinished events."""
    ended: list[shoal.events.AgentFinished] = []

    def sink(event: Any) -> None:
        if isinstance(event, shoal.events.AgentFinished):
            ended.append(event)

    async def main() -> Any:
        try:
            return await agent.run("go", on_event=sink)
        finally:
            if model is not None:
                await model.aclose()

    return arun(main(), timeout=60), ended


@pytest.mark.parametrize("provider", ["openai", "anthropic", "scripted"])
def test_a_text_answer_cut_off_at_the_output_cap_says_so_and_how_to_raise_it(
        provider: str) -> None:
    # the cut answer was accepted 'ok' and nothing said it stopped at max_tokens
    stop = "max_tokens" if provider == "anthropic" else "length"
    cut = "The three causes are: first, the"
    if provider == "scripted":
        scripted = ScriptedModel([ModelResponse(text=cut, stop_reason=stop,
                                                usage=Usage(10, 16, 1))])
        result, ended = _answer_with_events(shoal.Agent(name="a", model=scripted))
    else:
        server_type = OpenAIWireServer if provider == "openai" else AnthropicWireServer
        with server_type(text_reply(cut, stop_reason=stop, output_tokens=16)) as server:
            model = server.model()
            result, ended = _answer_with_events(shoal.Agent(name="a", model=model), model)
    assert result.ok and result.output == cut  # kept: a text cut short is still text
    said = result.cut_off
    assert f"stop reason {stop!r}, after 16 tokens" in said, said
    assert "ModelSettings(max_tokens=...)" in said and "4,096" in said, said
    assert [e.cut_off for e in ended] == [said]
    assert result.to_dict()["cut_off"] == said


def test_a_whole_answer_says_nothing_of_a_cut() -> None:
    result, ended = _answer_with_events(shoal.Agent(name="a", model=ScriptedModel(
        [ModelResponse(text="done", stop_reason="stop")])))
    assert result.cut_off == "" and [e.cut_off for e in ended] == [""]
    assert "cut_off" not in result.to_dict()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_structured_output_cut_mid_json_is_a_typed_error_at_once(provider: str) -> None:
    # cut mid-JSON, the answer was asked for again (output_retries) with the same cap, and
    # ended an OutputValidationError about bad JSON that never named the cap
    from pydantic import BaseModel

    class Report(BaseModel):
        title: str
        body: str

    stop = "max_tokens" if provider == "anthropic" else "length"
    server_type = OpenAIWireServer if provider == "openai" else AnthropicWireServer
    with server_type(text_reply('{"title": "Q3", "body": "Revenue rose by',
                                stop_reason=stop, output_tokens=12)) as server:
        model = server.model()
        agent = shoal.Agent(name="a", model=model, output_type=Report)
        with pytest.raises(shoal.OutputCutOffError) as caught:
            _answer_with_events(agent, model)
        asked = len(server.requests)
    assert isinstance(caught.value, shoal.OutputValidationError)  # caught as before
    message = str(caught.value)
    assert f"stop reason {stop!r}" in message and "ModelSettings(max_tokens=...)" in message
    assert asked == 1  # not asked again with the same cap


def test_shoal_run_says_beside_the_answer_that_it_was_cut_off() -> None:
    # the CLI printed the cut answer in its panel and exited 0, saying nothing of the cap
    from tests.cli_process import run_cli

    root = Path(__file__).resolve().parent.parent
    done = run_cli(("run", "tests/agent_models.py:cut_off_agent", "go", "--no-store"),
                   cwd=root, env={**os.environ, "COLUMNS": "160"}, timeout=60)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # (rich wraps long lines)
    assert "The causes are: first, the" in out
    assert "answer was cut off at the model's limit of output tokens" in out, out
    assert "ModelSettings(max_tokens=...)" in out, out


def test_an_answer_with_no_text_before_the_cap_is_a_typed_error_at_once() -> None:
    # a reasoning model that spent its whole cap thinking answered nothing: it was asked
    # again (output_retries) with the same cap, then ended "did not fit an answer"
    model = ScriptedModel([ModelResponse(text="", stop_reason="length", usage=HUNDRED),
                           "unused", "unused"])
    with pytest.raises(shoal.OutputCutOffError, match="stop reason 'length', after 40 tokens"):
        shoal.Agent(name="a", model=model).run_sync("go")
    assert len(model.requests) == 1


# ---- round 3: plan mode's cut answer, a subagent's cut answer read by its parent ------------


def test_a_planners_answer_cut_off_at_the_output_cap_says_so() -> None:
    # tools mode set result.cut_off; a planner's Finish(...) cut at the cap said nothing
    cut = "Thought: done.\nAction: Finish(The causes are: first, the"
    model = ScriptedModel(['1. square(x=3)', ModelResponse(text=cut, stop_reason="length",
                                                            usage=Usage(10, 16, 1))])
    result, ended = _answer_with_events(shoal.Agent(name="p", model=model, tools=[square],
                                                    mode="plan"))
    assert result.ok and result.output == "The causes are: first, the"
    said = result.cut_off
    assert "stop reason 'length', after 16 tokens" in said, said
    assert "ModelSettings(max_tokens=...)" in said, said
    assert [e.cut_off for e in ended] == [said]


def test_a_planners_structured_answer_cut_off_is_a_typed_error_at_once() -> None:
    # it was asked again (output_retries) with the same cap, to be cut again
    cut = 'Thought: done.\nAction: Finish({"title": "Q3", "body": "Revenue rose by'
    model = ScriptedModel(['1. square(x=3)',
                           ModelResponse(text=cut, stop_reason="max_tokens",
                                         usage=Usage(10, 12, 1)), "unused", "unused"])
    agent = shoal.Agent(name="p", model=model, tools=[square], mode="plan",
                        output_type=dict[str, str])
    with pytest.raises(shoal.OutputCutOffError, match="stop reason 'max_tokens'"):
        agent.run_sync("go")
    assert len(model.requests) == 2  # the plan and the one answer, not asked again


@pytest.mark.parametrize("mode", ["tools", "plan"])
def test_a_subagents_cut_off_answer_says_so_to_its_parents_model(mode: str) -> None:
    # the child's result said it was cut short; its parent's model read the text as whole
    cut = "The causes are: first, the"
    child = shoal.Agent(name="worker", model=ScriptedModel(
        [ModelResponse(text=cut, stop_reason="length", usage=Usage(10, 16, 1))]))
    script: list[Any] = ([[scripted_call("worker", task="why")], "done"] if mode == "tools"
                         else ['1. worker(task="why")', "Thought: ok.\nAction: Finish(done)"])
    lead = shoal.Agent(name="lead", model=ScriptedModel(script), subagents=[child],
                       mode=mode)  # type: ignore[arg-type]
    result = lead.run_sync("go")
    [record] = result.calls
    read = record.message.content
    assert read.startswith(cut) and not record.message.is_error, read
    assert "[note: this answer was cut off at the subagent's limit of output tokens" in read
    assert result.children[0].output == cut and result.children[0].cut_off  # its own: whole
    assert result.cut_off == ""  # the parent's own answer was not cut


def test_a_subagents_whole_answer_reads_as_it_is() -> None:
    child = shoal.Agent(name="worker", model=ScriptedModel(["all of it"]))
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[scripted_call("worker", task="why")], "done"]), subagents=[child])
    [record] = lead.run_sync("go").calls
    assert record.message.content == "all of it"


def test_a_subagents_cut_answer_too_long_to_read_whole_keeps_the_note() -> None:
    from shoal.agents.toolcalls import CUT_OFF_NOTE, MAX_RESULT_CHARS

    long = "x" * (MAX_RESULT_CHARS + 10)
    child = shoal.Agent(name="worker", model=ScriptedModel(
        [ModelResponse(text=long, stop_reason="length")]))
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[scripted_call("worker", task="why")], "done"]), subagents=[child])
    [record] = lead.run_sync("go").calls
    read = record.message.content
    assert len(read) <= MAX_RESULT_CHARS and read.endswith(CUT_OFF_NOTE)
    assert "more characters cut: the result is too long" in read


# ---- round 3: an approver's edit says what will run, in its event -----------------------------


@shoal.tool(approval=True)
async def _send(to: str) -> str:
    """Send to someone."""
    return f"sent to {to}"


def _decided_events(to: str, edit: dict[str, Any] | None) -> list[Any]:
    """Run one approved ``_send(to)`` call, edited to ``edit`` if given; its ApprovalDecided."""
    plan = shoal.Plan()
    plan.call(_send, to=to)
    seen: list[Any] = []

    def decide(request: shoal.ApprovalRequest) -> shoal.Decision:
        return shoal.Decision.approve() if edit is None else shoal.Decision.edit(edit, "no")

    shoal.run_sync(plan, approver=decide, on_event=seen.append)
    return [e for e in seen if isinstance(e, shoal.events.ApprovalDecided)]


def test_an_edits_event_carries_the_arguments_that_will_run() -> None:
    # was: ApprovalDecided(verdict="edit") said nothing of what the node would now run
    [event] = _decided_events("ann", {"to": 'zed "<x>"'})
    assert event.verdict == "edit" and event.edited_args == '{"to": "zed \\"<x>\\""}'
    assert event.to_dict()["edited_args"] == event.edited_args  # --events / --json write it
    [plain] = _decided_events("ann", None)
    assert plain.verdict == "approve" and plain.edited_args == ""


def test_an_edits_event_bounds_the_arguments_it_carries() -> None:
    from shoal.events import MAX_EDIT_CHARS

    [event] = _decided_events("ann", {"to": "z" * 50_000})
    said = event.edited_args
    assert len(said) <= MAX_EDIT_CHARS and said.startswith('{"to": "zzz'), len(said)
    assert said.endswith('zz"}') and "characters left out" in said  # says that some were


def test_an_edits_arguments_reach_opentelemetry_only_when_content_is_captured() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    found: dict[bool, list[Any]] = {}
    for capture in (False, True):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        shoal.otel.instrument(provider, capture_content=capture)
        try:
            _decided_events("ann", {"to": "zed"})
        finally:
            shoal.otel.uninstrument()
            provider.shutdown()
        found[capture] = [dict(e.attributes or {}) for span in exporter.get_finished_spans()
                          for e in span.events if e.name == "shoal.approval.decided"]
    assert [a.get("shoal.approval.edited_args") for a in found[True]] == ['{"to": "zed"}']
    assert [a.get("shoal.approval.edited_args") for a in found[False]] == [None]


# ---- round 3: structured output with a number too long to read --------------------------------


@pytest.mark.parametrize("shape", ["bare", "in an object"])
def test_an_answers_number_too_long_tells_the_model_what_to_send(shape: str) -> None:
    # the model was sent pydantic's "Invalid JSON: number out of range at line 1 column 4302"
    digits = "9" * 5000
    first = digits if shape == "bare" else f'{{"note": "{"1" * 6000}",\n "n": -{digits}}}'
    output_type: Any = int if shape == "bare" else dict[str, Any]
    model = ScriptedModel([first, "42" if shape == "bare" else '{"n": 42}'])
    result = shoal.Agent(name="a", model=model, output_type=output_type).run_sync("go")
    assert result.output in (42, {"n": 42})
    told = model.requests[1].messages[-1].content
    assert "the answer holds a number 5,000 digits long" in told, told[:300]
    assert "at most 4,300 digits: send a shorter number" in told, told[:300]
    assert "out of range" not in told, told[:300]
