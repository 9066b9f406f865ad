"""ModelGate retries real SDK errors over HTTP: Retry-After, 5xx, 4xx, refused connections."""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.exceptions import ConfigError, ModelConnectionError, ModelHTTPError
from shoal.models.anthropic import AnthropicModel
from shoal.models.base import Model, ModelRequest, ResponseDone, TextDelta, UserMessage
from shoal.models.openai import OpenAIModel
from shoal.models.retry import ModelGate, ModelRetry
from tests.conftest import arun, until
from tests.wire import (
    AnthropicWireServer,
    ErrorReply,
    OpenAIWireServer,
    WireServer,
    closed_port_url,
    text_reply,
)

#: Tiny back-off so the waits measured below come from Retry-After, not from the back-off.
FAST = ModelRetry(retries=7, backoff=0.005, max_backoff=0.02, jitter=0.0)


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest) -> Iterator[WireServer]:
    kind = OpenAIWireServer if request.param == "openai" else AnthropicWireServer
    with kind() as wire:
        yield wire


def model_of(server: WireServer) -> Model:
    assert isinstance(server, OpenAIWireServer | AnthropicWireServer)
    model: Model = server.model()
    return model


def ask(text: str = "hello") -> ModelRequest:
    return ModelRequest("", [UserMessage(text)])


def gap(server: WireServer, first: int, second: int) -> float:
    """Seconds between the arrivals of two requests (0-based positions)."""
    requests = server.requests
    return requests[second].at - requests[first].at


def test_429_waits_at_least_retry_after(server: WireServer) -> None:
    server.fail_next(1, status=429, retry_after=0.4)
    gate = ModelGate("m", retry=FAST)
    response = arun(gate.request(model_of(server), ask()))

    assert response.text == "ok"
    assert [r.status for r in server.requests] == [429, 200]
    assert gap(server, 0, 1) >= 0.39  # the back-off alone would have waited 0.005 s
    assert gate.retries == 1


def test_a_retry_after_longer_than_max_retry_after_fails_at_once(server: WireServer) -> None:
    # a day asked for (a spent daily quota, a broken proxy): not waited for, silently, with
    # every agent on that model; the request fails saying how long was asked for
    server.fail_next(1, status=429, retry_after=86400)
    gate = ModelGate("m", retry=ModelRetry(retries=7, backoff=0.005, max_retry_after=60))
    with pytest.raises(ModelHTTPError) as info:
        arun(gate.request(model_of(server), ask()))
    assert info.value.status == 429 and info.value.retry_after == 86400
    assert "asked to wait 86400 s" in str(info.value) and "max_retry_after=60" in str(info.value)
    assert [r.status for r in server.requests] == [429] and gate.retries == 0
    # and the gate was not closed for the day: the next request goes out at once
    assert arun(gate.request(model_of(server), ask())).text == "ok"


def test_a_retry_after_within_max_retry_after_is_waited_for(server: WireServer) -> None:
    server.fail_next(1, status=429, retry_after=0.3)
    gate = ModelGate("m", retry=ModelRetry(retries=7, backoff=0.005, max_retry_after=0.3))
    assert arun(gate.request(model_of(server), ask())).text == "ok"
    assert gap(server, 0, 1) >= 0.29


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "60"])
def test_max_retry_after_must_be_seconds(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_retry_after"):
        ModelRetry(max_retry_after=bad)


def test_retry_after_ms_is_honoured(server: WireServer) -> None:
    server.responder = [ErrorReply(429, headers={"retry-after-ms": "300"}), text_reply("ok")]
    arun(ModelGate("m", retry=FAST).request(model_of(server), ask()))
    assert gap(server, 0, 1) >= 0.29


def test_server_errors_are_retried(server: WireServer) -> None:
    server.fail_next(2, status=500)
    gate = ModelGate("m", retry=FAST)
    assert arun(gate.request(model_of(server), ask())).text == "ok"
    assert [r.status for r in server.requests] == [500, 500, 200]
    assert gate.retries == 2


def test_client_errors_are_not_retried(server: WireServer) -> None:
    server.responder = ErrorReply(400, "bad request")
    gate = ModelGate("m", retry=FAST)
    with pytest.raises(ModelHTTPError) as info:
        arun(gate.request(model_of(server), ask()))
    assert info.value.status == 400
    assert len(server.requests) == 1 and gate.retries == 0


def test_retries_stop_after_the_last_attempt(server: WireServer) -> None:
    server.fail_every(1, status=503, retry_after=None)
    retry = ModelRetry(retries=2, backoff=0.005, jitter=0.0)
    with pytest.raises(ModelHTTPError) as info:
        arun(ModelGate("m", retry=retry).request(model_of(server), ask()))
    assert info.value.status == 503
    assert len(server.requests) == 3


def test_no_retries_means_one_try(server: WireServer) -> None:
    server.fail_every(1, status=503, retry_after=None)
    gate = ModelGate("m", retry=ModelRetry(retries=0, backoff=0.005, jitter=0.0))
    with pytest.raises(ModelHTTPError):
        arun(gate.request(model_of(server), ask()))
    assert len(server.requests) == 1 and gate.retries == 0


def test_retries_counts_extra_tries_and_the_default_is_seven() -> None:
    assert ModelRetry().retries == 7  # eight tries in all, as the former attempts=8
    assert ModelRetry(retries=0).retries == 0


def test_the_former_attempts_setting_still_works_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match=r"ModelRetry\(attempts=\.\.\.\).*retries"):
        old = ModelRetry(attempts=3, backoff=0.005)
    assert old == ModelRetry(retries=2, backoff=0.005)
    with pytest.warns(DeprecationWarning, match="ModelRetry.attempts"):
        assert old.attempts == 3


@pytest.mark.parametrize(("options", "says"), [
    ({"retries": -1}, "retries must be a whole number"),
    ({"retries": 1.5}, "retries must be a whole number"),
    ({"retries": True}, "retries must be a whole number"),
    ({"backoff": -0.1}, "backoff must be a finite number"),
    ({"max_backoff": float("inf")}, "max_backoff must be a finite number"),
    ({"jitter": 1.5}, "jitter must be a number within"),
    ({"attempts": 0}, "attempts .* 1 or more"),
    ({"attempts": 3, "retries": 1}, "both attempts= and retries="),
])
def test_bad_retry_settings_are_config_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ModelRetry(**options)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_connection_refused_is_retried_then_raised(kind: str) -> None:
    model: Model = (OpenAIModel("gpt-4.1-mini", base_url=closed_port_url("/v1"), api_key="k")
                    if kind == "openai"
                    else AnthropicModel("claude-haiku-4-5", base_url=closed_port_url(),
                                        api_key="k"))
    gate = ModelGate("m", retry=ModelRetry(retries=2, backoff=0.005, jitter=0.0))
    with pytest.raises(ModelConnectionError):
        arun(gate.request(model, ask()))
    assert gate.retries == 2


def test_one_429_pauses_every_caller_of_the_gate(server: WireServer) -> None:
    server.fail_next(1, status=429, retry_after=0.4)
    gate = ModelGate("m", retry=FAST)
    model = model_of(server)

    async def main() -> None:
        first = asyncio.create_task(gate.request(model, ask("first")))
        await until(lambda: any(r.status == 429 for r in server.requests), every=0.005)
        # the 429 has reached the gate: it is closed now (the client reads the reply a moment
        # after the server logged it, a long moment on a loaded machine)
        await until(lambda: gate._open_at > 0, every=0.005)
        second = await gate.request(model, ask("second"))  # must wait for the pause too
        assert second.text == "ok"
        await first

    arun(main())
    second_arrival = next(r.at for r in server.requests if "second" in str(r.body))
    assert second_arrival - server.requests[0].at >= 0.39


def test_many_concurrent_requests_survive_a_429_every_third(server: WireServer) -> None:
    server.fail_every(3, status=429, retry_after=0.05)
    server.responder = lambda body: text_reply(f"echo {len(str(body))}")
    gate = ModelGate("m", retry=FAST)
    model = model_of(server)

    async def main() -> list[str]:
        responses = await asyncio.gather(*(gate.request(model, ask(f"q{i:02d}"))
                                           for i in range(30)))
        return [r.text for r in responses]

    texts = arun(main(), timeout=15)
    assert len(texts) == 30 and all(t.startswith("echo ") for t in texts)
    statuses = [r.status for r in server.requests]
    assert statuses.count(200) == 30
    assert statuses.count(429) >= 10  # every third of at least 30 requests
    assert gate.retries == statuses.count(429)
    assert server.errors == []


def test_many_concurrent_streams_survive_a_429_every_third(server: WireServer) -> None:
    server.fail_every(3, status=429, retry_after=0.05)
    server.responder = text_reply("streamed reply")
    gate = ModelGate("m", retry=FAST)
    model = model_of(server)

    async def one(i: int) -> str:
        text = ""
        async for event in gate.stream(model, ask(f"q{i}")):
            if isinstance(event, TextDelta):
                text += event.text
            else:
                assert isinstance(event, ResponseDone) and event.response.text == text
        return text

    async def main() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(15))))

    assert arun(main(), timeout=15) == ["streamed reply"] * 15


def test_a_stream_that_fails_before_any_text_is_retried(server: WireServer) -> None:
    server.responder = [ErrorReply(529, "Overloaded", mid_stream=True), text_reply("fine")]

    async def main() -> list[str]:
        gate = ModelGate("m", retry=FAST)
        return [e.text for e in [ev async for ev in gate.stream(model_of(server), ask())]
                if isinstance(e, TextDelta)]

    assert "".join(arun(main())) == "fine"
    assert len(server.requests) == 2


def test_the_gate_caps_requests_in_flight(server: WireServer) -> None:
    server.delay(0.05)
    gate = ModelGate("m", max_concurrency=3, retry=FAST)
    model = model_of(server)

    async def main() -> None:
        await asyncio.gather(*(gate.request(model, ask(str(i))) for i in range(12)))

    arun(main())
    assert len(server.requests) == 12
    assert server.max_in_flight <= 3


def test_callers_queued_for_a_slot_also_wait_out_the_pause(server: WireServer) -> None:
    # One slot: the second caller queues for it while the first one draws a 429. When the slot
    # frees up the gate is closed, so the second caller must wait for Retry-After too.
    server.fail_next(1, status=429, retry_after=0.4)
    gate = ModelGate("m", max_concurrency=1, retry=FAST)
    model = model_of(server)

    async def main() -> None:
        await asyncio.gather(gate.request(model, ask("a")), gate.request(model, ask("b")))

    arun(main())
    first, *rest = server.requests
    assert first.status == 429 and len(rest) == 2
    assert all(r.at - first.at >= 0.39 for r in rest), [r.at - first.at for r in rest]
