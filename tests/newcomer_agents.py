"""Agents for the command-line tests of a new user's first runs (``shoal run file.py:agent``).

``hosted`` asks OpenAI (a key, a base URL from the environment); ``unlucky`` calls a tool that
always fails, twice, and still answers; ``slow_start`` has a model that starts a server of its
own first, saying so as the local model does; ``doomed`` notes something, then kills its own
process (as a crash would).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import shoal
from shoal.events import ModelServerStarted, ModelServerStarting
from shoal.models._common import notify
from shoal.models.base import Model, ModelRequest, ModelResponse
from shoal.testing import ScriptedModel, call

hosted = shoal.Agent(name="hosted", model="openai:gpt-4.1-mini", instructions="Be brief.")


@shoal.tool
def flaky_lookup(key: str) -> str:
    """Look a key up (the service is down)."""
    raise ConnectionError(f"lookup service unreachable for {key!r}")


unlucky = shoal.Agent(name="unlucky", tools=[flaky_lookup], model=ScriptedModel.per_prompt({
    "*": [[call("flaky_lookup", key="a"), call("flaky_lookup", key="b")],
          "I could not look anything up."]}))

clerk = shoal.Agent(name="clerk", tools=[flaky_lookup], model=ScriptedModel.per_prompt({
    "*": [[call("flaky_lookup", key="c")], "nothing found"]}))

manager = shoal.Agent(name="manager", subagents=[clerk], model=ScriptedModel.per_prompt({
    "*": [[call("clerk", task="find c")], "the clerk found nothing"]}))


class ServerModel(Model):
    """A model that starts a server on its first request (here: waits), as LocalModel does."""

    name = "test:server-model"

    def __init__(self, startup: float = 0.6) -> None:
        self.startup = startup
        self.started = False

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Start the "server" once, saying so, then answer."""
        if not self.started:
            notify(ModelServerStarting(run_id="", time=0.0, model=self.name))
            await asyncio.sleep(self.startup)
            self.started = True
            notify(ModelServerStarted(run_id="", time=0.0, model=self.name,
                                      duration=self.startup))
        return ModelResponse(text="ready")


slow_start = shoal.Agent(name="slow_start", model=ServerModel())


@shoal.tool
def note(text: str) -> str:
    """Note something down."""
    return f"noted {text}"


@shoal.tool
def die() -> str:
    """Kill this process, after the journal's next heartbeat has written the events so far."""
    time.sleep(2.5)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


doomed = shoal.Agent(name="doomed", tools=[note, die], model=ScriptedModel.per_prompt({
    "*": [[call("note", text="first")], [call("die")], "never said"]}))
