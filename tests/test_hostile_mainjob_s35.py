"""Hostile tests of the main job as a new user meets it: ``shoal run`` on the local model.

The tests that construct a local model are skipped when the ``local`` extra is not installed,
as in ``tests/test_local_model.py``; none of them loads the model itself: a stand-in command
plays a server that is slow to load.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.cli.agents import notice_lines
from shoal.cli.tree import AgentTree
from shoal.events import AgentFinished, Event, ModelServerStarted
from shoal.exceptions import AgentError, ConfigError, ModelError
from shoal.models import check_model_spec
from shoal.models.base import ModelRequest, ModelResponse, ModelSettings, ToolSpec, UserMessage
from shoal.models.local import LocalModel, LocalModelServer
from shoal.testing import ScriptedModel
from tests.cli_process import run_cli
from tests.conftest import arun, wait_until
from tests.test_local_model import MISSING, needs_model

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = "examples/literature_review/agents.py:review"


# A "server" that never answers: a model that takes minutes to load.
_LOADING = [sys.executable, "-c", "import time; time.sleep(120)"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _loading(server: LocalModelServer) -> None:
    server._command = lambda port, ubatch: list(_LOADING)  # type: ignore[method-assign]


# -- Ctrl-C while the local model loads ------------------------------------------------------


@needs_model
def test_stop_cuts_a_start_in_progress_short() -> None:
    # stop() from another thread (an agent run ending on Ctrl-C closes its model so) waited
    # for the start's lock: until the model had loaded, or startup_timeout had passed.
    server = LocalModelServer(startup_timeout=60)
    _loading(server)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    assert wait_until(lambda: server.pid is not None, timeout=10)
    pid = server.pid
    assert pid is not None
    began = time.monotonic()
    server.stop()
    starting.join(timeout=20)
    assert not starting.is_alive()
    assert time.monotonic() - began < 10
    assert not _alive(pid)
    assert len(errors) == 1 and isinstance(errors[0], ModelError)
    assert "stopped while it started" in str(errors[0])
    assert not server.running


@needs_model
def test_a_request_cancelled_while_the_model_loads_closes_at_once() -> None:
    model = LocalModel(startup_timeout=60)
    _loading(model.server)

    async def main() -> float:
        request = ModelRequest(instructions="", messages=(UserMessage("hi"),))
        asking = asyncio.ensure_future(model.request(request))
        assert await asyncio.to_thread(wait_until, lambda: model.server.pid is not None, 10)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        began = time.monotonic()
        await model.aclose()
        return time.monotonic() - began

    assert arun(main(), timeout=40) < 10
    assert not model.server.running


# -- Ctrl-C mid-run: what a cancelled reader says ----------------------------------------------


def test_an_agent_cancelled_with_its_plan_node_says_so_in_words() -> None:
    # It said "agent review/reader#1[0] was its plan node was cancelled".
    agent = shoal.Agent(name="reader", model=ScriptedModel(["never"], latency=60.0))
    plan = shoal.Plan("review")
    plan.call(agent, task="read")
    finished: list[AgentFinished] = []

    def sink(event: Event) -> None:
        if isinstance(event, AgentFinished):
            finished.append(event)

    async def main() -> None:
        async with shoal.Runtime() as runtime:
            handle = runtime.start(plan, on_event=sink)
            await asyncio.sleep(1.0)
            handle.cancel(reason="interrupted (Ctrl-C)")
            await handle

    arun(main(), virtual=True)
    assert [e.status for e in finished] == ["cancelled"]
    assert "was its plan node" not in finished[0].error
    assert finished[0].error.endswith("was cancelled with its plan node")


# -- a model file that is no model ---------------------------------------------------------------


@needs_model
@pytest.mark.parametrize(("content", "said"), [
    (b"", "is empty"), (b"not a model at all", "starts with b'not '"), (b"GG", "starts with")])
def test_a_file_that_is_not_gguf_is_refused_before_a_server_starts(
        tmp_path: Path, content: bytes, said: str) -> None:
    # It started a server, which died a few seconds later with a traceback as its message.
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    for make in (LocalModelServer, LocalModel):
        with pytest.raises(ConfigError, match="is not a GGUF model file") as raised:
            make(path)
        assert said in str(raised.value)


@needs_model
def test_a_gguf_file_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert LocalModelServer(path).gguf == path  # starts nothing


def test_shoal_run_on_a_model_object_of_no_gguf_says_so_in_one_line(tmp_path: Path) -> None:
    if MISSING is not None:
        pytest.skip(f"the local extra is not installed ({MISSING})")
    (tmp_path / "empty.gguf").write_bytes(b"")
    models = tmp_path / "mymodels.py"
    models.write_text("from shoal.models.local import LocalModel\n"
                      f"model = LocalModel({str(tmp_path / 'empty.gguf')!r})\n")
    done = run_cli(["run", MAIN_JOB, "q", "--model", f"{models}:model", "--no-store", "--json"],
                   cwd=ROOT, env=os.environ, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "is not a GGUF model file (it is empty)" in done.stderr
    assert json.loads(done.stdout)["error"] == "config"


# -- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n", "\u3000"])
def test_a_blank_prompt_is_refused_before_the_run(prompt: str) -> None:
    # Whitespace alone ran the whole main job on no question (exit 0, journaled).
    done = run_cli(["run", MAIN_JOB, prompt, "--model", "tests/agent_models.py:main_job_model",
                    "--no-store", "--json"], cwd=ROOT, env=os.environ, timeout=60)
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith("error: give the prompt after the agent")
    assert json.loads(done.stdout)["error"] == "config"


# -- --model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [":", " : ", ":model"])
def test_a_model_option_naming_no_module_is_an_unknown_model(spec: str) -> None:
    # ':' was imported as a module named '': "importing '' failed: ValueError: Empty module
    # name", which says nothing of what --model takes.
    done = run_cli(["run", MAIN_JOB, "q", "--model", spec, "--no-store"], cwd=ROOT,
                   env=os.environ, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: unknown model {spec!r}."), done.stderr
    assert "'local'" in done.stderr and "Empty module name" not in done.stderr


@needs_model
def test_a_run_cancelled_while_the_model_loads_shows_the_start_cancelled() -> None:
    # The tree said "local model server  failed  CancelledError", and stderr "the server did
    # not start: CancelledError", for a Ctrl-C while the model loaded.
    model = LocalModel(startup_timeout=60)
    _loading(model.server)
    agent = shoal.Agent(name="lead", model=model)
    events: list[Event] = []
    tree = AgentTree()

    async def main() -> None:
        handle = agent.start("hi", on_event=[events.append, tree])
        assert await asyncio.to_thread(wait_until, lambda: model.server.pid is not None, 10)
        handle.cancel(reason="interrupted (Ctrl-C)")
        try:
            with pytest.raises(AgentError, match="interrupted"):
                await handle
        finally:
            await model.aclose()

    arun(main(), timeout=40)
    started = [e for e in events if isinstance(e, ModelServerStarted)]
    assert len(started) == 1 and started[0].cancelled
    assert "CancelledError" not in started[0].error
    server_rows = [r for r in tree.rows.values() if r.is_server]
    assert [r.status for r in server_rows] == ["cancelled"]
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        notice_lines(started[0])
    assert said.getvalue() == "shoal: lead: local:smollm2-135m: the server's start was cancelled\n"


@pytest.mark.parametrize(("spec", "path"), [
    ("/no/such/model.gguf", "/no/such/model.gguf"), ("local:my.GGUF", "my.GGUF"),
    (" models/x.gguf ", "models/x.gguf")])
def test_a_gguf_file_as_a_model_string_says_how_to_run_one(spec: str, path: str) -> None:
    # It said only "unknown model '/no/such/model.gguf'." and listed the model strings.
    with pytest.raises(ConfigError) as raised:
        check_model_spec(spec)
    assert f"pass LocalModel({path!r}) from shoal.models.local" in str(raised.value)
    assert "--model FILE.py:NAME" in str(raised.value)


def test_shoal_run_with_a_gguf_path_for_model_says_how_to_run_one() -> None:
    done = run_cli(["run", MAIN_JOB, "q", "--model", "/no/such/model.gguf", "--no-store"],
                   cwd=ROOT, env=os.environ, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "LocalModel('/no/such/model.gguf')" in done.stderr


# -- a reply cut off by max_tokens -------------------------------------------------------------


class _Inner:
    """Stands for the OpenAI adapter in front of the server: answers one fixed reply."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(self.text, stop_reason="length")


ADD = ToolSpec("add", "Add two integers.", {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]})


@needs_model
def test_tool_calls_cut_off_by_max_tokens_are_an_error_not_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The cut-off JSON became the agent's answer, status ok:
    # '{ "tool_calls": [{"name": "add", "arguments": { "a": 2,'
    model = LocalModel()
    cut = '{ "tool_calls": [{"name": "add", "arguments": { "a": 2,'

    async def ready() -> _Inner:
        return _Inner(cut)

    monkeypatch.setattr(model, "_ready", ready)
    request = ModelRequest(instructions="", messages=(UserMessage("2+3?"),), tools=(ADD,),
                           settings=ModelSettings(max_tokens=24))
    with pytest.raises(ModelError, match=r"cut off by max_tokens \(24\) in the middle of its "
                                         r"tool calls: raise the agent's ModelSettings"):
        arun(model.request(request))
    # an answer cut off is still salvaged, as before
    monkeypatch.setattr(model, "_ready", lambda: _ready_with('{"answer": "It is fi'))
    assert arun(model.request(request)).text == "It is fi"


async def _ready_with(text: str) -> _Inner:
    return _Inner(text)
