"""A new user's first model errors, through the real SDKs on 127.0.0.1 only.

A missing key is a typed error before anything is sent; a refused connection is retried with
an event (and an INFO log line) before each wait; a refused key (401) and an unknown model
(404) are not retried and say what they are; a base URL that is not a URL is a config error.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.events import Event, ModelRetrying, ModelServerStarted, ModelServerStarting
from shoal.exceptions import (
    ConfigError,
    MissingAPIKeyError,
    MissingDependencyError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    install_hint,
    source_checkout,
)
from shoal.models import ModelGates, ModelRetry, resolve_model
from shoal.models._common import describe_cause
from shoal.models.anthropic import AnthropicModel
from shoal.models.base import Model, ModelRequest, ModelResponse, UserMessage
from shoal.models.openai import OpenAIModel
from shoal.models.retry import ModelGate
from tests.conftest import arun
from tests.newcomer_agents import ServerModel
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    OpenAIWireServer,
    WireServer,
    closed_port_url,
    text_reply,
)

ROOT = Path(__file__).resolve().parent.parent
QUICK = ModelRetry(retries=2, backoff=0.01, max_backoff=0.02, jitter=0.0)
KEYS = {"openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
        "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}


def ask(text: str = "hello") -> ModelRequest:
    return ModelRequest("", [UserMessage(text)])


def refused_model(kind: str) -> Model:
    if kind == "openai":
        return OpenAIModel("gpt-4.1-mini", base_url=closed_port_url("/v1"), api_key="k")
    return AnthropicModel("claude-haiku-4-5", base_url=closed_port_url(), api_key="k")


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest) -> Iterator[WireServer]:
    kind = OpenAIWireServer if request.param == "openai" else AnthropicWireServer
    with kind() as wire:
        yield wire


# -- a missing key ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_missing_key_is_a_typed_error_naming_the_variable(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key_env, url_env = KEYS[kind]
    monkeypatch.delenv(key_env, raising=False)
    monkeypatch.delenv(url_env, raising=False)
    with pytest.raises(MissingAPIKeyError) as info:
        resolve_model(f"{kind}:some-model")
    error = info.value
    assert isinstance(error, ModelError) and error.env_var == key_env
    assert error.model == f"{kind}:some-model"
    assert f"{key_env} is not set: export it" in str(error) and "'local'" in str(error)
    assert "\n" not in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MissingAPIKeyError and str(copy) == str(error)


def test_an_agent_without_a_key_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    ran: list[str] = []

    @shoal.tool
    def work() -> str:
        ran.append("work")
        return "done"

    agent = shoal.Agent(name="lead", model="openai:gpt-4.1-mini", tools=[work])
    events: list[Event] = []
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY is not set"):
        agent.run_sync("hi", on_event=events.append)
    assert ran == [] and events == []


# -- a base URL that is not a URL --------------------------------------------------------------


@pytest.mark.parametrize("url", ["localhost:8080/v1", "api.openai.com/v1", "ftp://x.org/v1",
                                 "http://", "http://host:port/v1", ""])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_base_url_that_is_not_a_url_is_a_config_error(kind: str, url: str) -> None:
    make = OpenAIModel if kind == "openai" else AnthropicModel
    if not url:  # empty means "not given": the provider's own URL
        make("m", base_url=url, api_key="k")
        return
    with pytest.raises(ConfigError, match=r"base_url .* is not a URL"):
        make("m", base_url=url, api_key="k")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_base_url_from_the_environment_is_checked_too(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key_env, url_env = KEYS[kind]
    monkeypatch.setenv(url_env, "localhost:11434")
    monkeypatch.setenv(key_env, "k")
    with pytest.raises(ConfigError, match=f"{url_env} 'localhost:11434' is not a URL"):
        resolve_model(f"{kind}:m")


# -- no network: retried, visibly -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_connection_refused_says_which_host_in_a_few_words(kind: str) -> None:
    model = refused_model(kind)
    with pytest.raises(ModelConnectionError) as info:
        arun(model.request(ask()))
    assert info.value.detail.startswith("cannot reach 127.0.0.1:")
    assert info.value.detail.endswith(": connection refused")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_each_retry_is_an_event_and_a_log_line_before_its_wait(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    gate = ModelGate("m", retry=QUICK)
    seen: list[Event] = []
    with caplog.at_level(logging.INFO, logger="shoal"), pytest.raises(ModelConnectionError):
        arun(gate.request(refused_model(kind), ask(), on_event=seen.append))
    assert [type(e) for e in seen] == [ModelRetrying, ModelRetrying]
    first = seen[0]
    assert isinstance(first, ModelRetrying)
    assert (first.attempt, first.attempts) == (1, 3)
    assert first.describe().startswith("retrying (2/3) in 0.0 s: cannot reach 127.0.0.1:")
    assert first.describe().endswith("connection refused")
    lines = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(lines) == 2 and "(3/3)" in lines[1]


def test_a_stream_announces_its_retries_too(server: WireServer) -> None:
    server.fail_next(1, status=503)

    async def read(model: Model, gate: ModelGate, seen: list[Event]) -> str:
        text = ""
        async for event in gate.stream(model, ask(), on_event=seen.append):
            text += getattr(event, "text", "")
        return text

    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    seen: list[Event] = []
    assert arun(read(server.model(), ModelGate("m", retry=QUICK), seen)) == "ok"
    assert [type(e) for e in seen] == [ModelRetrying]
    assert isinstance(seen[0], ModelRetrying) and "HTTP 503" in seen[0].describe()


def test_an_agent_puts_the_retries_on_its_sinks_with_its_lineage() -> None:
    seen: list[Event] = []
    agent = shoal.Agent(name="lead", model=refused_model("openai"))
    with pytest.raises(ModelConnectionError):
        agent.run_sync("hi", on_event=seen.append, gates=ModelGates(retry=QUICK))
    retries = [e for e in seen if isinstance(e, ModelRetrying)]
    assert len(retries) == 2
    assert all(e.lineage == "lead" and e.run_id and e.time > 0 for e in retries)


def test_a_model_that_starts_a_server_tells_the_agents_sinks() -> None:
    seen: list[Event] = []
    agent = shoal.Agent(name="lead", model=ServerModel(startup=0.05))
    assert agent.run_sync("hi", on_event=seen.append).output == "ready"
    starts = [e for e in seen if isinstance(e, ModelServerStarting | ModelServerStarted)]
    assert [type(e) for e in starts] == [ModelServerStarting, ModelServerStarted]
    assert all(e.lineage == "lead" for e in starts)
    assert starts[1].time >= starts[0].time + 0.04


def test_a_failing_sink_does_not_stop_the_retries() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("sink bug")

    gate = ModelGate("m", retry=QUICK)
    with pytest.raises(ModelConnectionError):
        arun(gate.request(refused_model("openai"), ask(), on_event=broken))
    assert gate.retries == 2


# -- refused keys and unknown models are not retried --------------------------------------------


def test_a_refused_key_is_not_retried_and_says_so(server: WireServer) -> None:
    server.responder = ErrorReply(401, "Incorrect API key provided: sk-xx")
    gate = ModelGate("m", retry=QUICK)
    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    with pytest.raises(ModelHTTPError) as info:
        arun(gate.request(server.model(), ask()))
    error = info.value
    assert error.status == 401 and not error.transient
    key_env = "OPENAI_API_KEY" if isinstance(server, OpenAIWireServer) else "ANTHROPIC_API_KEY"
    assert f"the API key was refused (check {key_env}): Incorrect API key" in str(error)
    assert len(server.requests) == 1


def test_an_unknown_model_says_so(server: WireServer) -> None:
    server.responder = ErrorReply(404, "The model `gpt-9` does not exist")
    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    model: Any = server.model("gpt-9")
    with pytest.raises(ModelHTTPError) as info:
        arun(ModelGate("m", retry=QUICK).request(model, ask()))
    assert info.value.status == 404 and not info.value.transient
    assert "no model 'gpt-9' here (check the model name" in str(info.value)
    assert len(server.requests) == 1


def test_a_key_without_the_right_is_not_retried(server: WireServer) -> None:
    server.responder = ErrorReply(403, "Project does not have access to model")
    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    with pytest.raises(ModelHTTPError) as info:
        arun(ModelGate("m", retry=QUICK).request(server.model(), ask()))
    assert info.value.status == 403 and "the API key may not do this" in str(info.value)
    assert len(server.requests) == 1


def test_a_working_server_still_answers(server: WireServer) -> None:
    server.responder = text_reply("fine")
    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    assert arun(ModelGate("m", retry=QUICK).request(server.model(), ask())).text == "fine"


# -- install hints -------------------------------------------------------------------------


def test_install_hints_fit_how_shoal_was_installed() -> None:
    assert install_hint("ray", checkout="") == "pip install 'shoal[ray]'"
    hint = install_hint("local", checkout="/src/shoal")
    assert hint.startswith("pip install -e '.[local]' in /src/shoal (the source checkout")
    assert "pip install 'shoal[local]'" in hint


def test_this_source_checkout_is_detected() -> None:
    # the tests run from a checkout, installed editable or imported from its src tree
    assert source_checkout() == str(ROOT)
    error = MissingDependencyError("ray", "ray")
    assert f"pip install -e '.[ray]' in {ROOT}" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_a_subagents_missing_key_stops_the_run_before_the_lead_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    asked: list[str] = []

    class Lead(Model):
        name = "test:lead"

        async def request(self, request: ModelRequest) -> ModelResponse:
            asked.append("lead")
            return ModelResponse(text="done")

    writer = shoal.Agent(name="writer", model="anthropic:claude-haiku-4-5")
    lead = shoal.Agent(name="lead", model=Lead(), subagents=[writer])
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY is not set"):
        lead.run_sync("hi")
    assert asked == []


def test_connection_causes_are_said_in_a_few_words() -> None:
    def chained(cause: BaseException) -> Exception:
        outer = Exception("Connection error.")
        outer.__cause__ = cause
        return outer

    assert describe_cause(chained(ConnectionRefusedError(111, "refused"))) == (
        "connection refused")
    assert describe_cause(chained(socket.gaierror(-2, "Name or service not known"))) == (
        "name not resolved (no network, or a wrong host name)")
    assert describe_cause(chained(OSError("TLS handshake failed"))) == (
        "OSError: TLS handshake failed")
    assert describe_cause(Exception("Connection error.")) == "no detail"
