"""A tool of a process or Ray agent that writes garbage to the agent's socket fails that agent.

The parent reads the agent's messages as a length and a pickle. Bytes that are no message (a
length no message has, a message of no known kind, or whose parts do not fit its kind) fail
that agent with a :class:`~shoal.exceptions.SerializationError` naming what came, its
process is ended, and its siblings finish. Before, a garbage length was waited for until the
agent ended (never, as it waited for its parent's replies), and a misshapen message was an
``IndexError`` or a ``TypeError`` naming nothing.
"""

from __future__ import annotations

import gc
import pickle
import struct
import time
from typing import Any

import pytest

import shoal
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _link() -> Any:
    from shoal.agents._process import Link

    for found in gc.get_objects():
        if isinstance(found, Link):
            return found
    raise RuntimeError("no link to the parent in this process")


def _message(message: Any) -> bytes:
    body = pickle.dumps(message)
    return struct.pack(">Q", len(body)) + body


WRITTEN = {
    "ascii": b"garbage!garbage!",
    "length": struct.pack(">Q", 1 << 40),
    "short done": _message(("done",)),
    "done of no result": _message(("done", 42)),
    "unknown kind": _message(("hello", 1)),
    "kind of no text": _message((42, 1)),
    "bad pause": _message(("gate_pause", "m", float("nan"))),
    "no tuple": _message(["done", 42]),
}


@shoal.tool
def scribble(kind: str) -> str:
    """Write bytes that are no message to the agent's socket, then wait a little."""
    link = _link()
    with link._send_lock:
        link._sock.sendall(WRITTEN[kind])
    time.sleep(0.5)
    return "written"


@shoal.tool
def fine(tag: str) -> str:
    """Return plain data."""
    return f"fine {tag}"


def check_garbage(kind: str, isolation: Any) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t"), call("reader", task="s")], "done"],
        "t": [[call("scribble", kind=kind)], "read"], "s": [[call("fine", tag="x")], "sib"]})
    reader = shoal.Agent(name="reader", model=model, tools=[scribble, fine],
                         isolation=isolation)
    # without the fix, a garbage length is waited for until this wall clock
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(wall_clock=60))
    scribbler, sibling = result.children
    assert result.output == "done" and sibling.status == "ok" and sibling.output == "sib"
    assert scribbler.status == "failed", scribbler
    error = scribbler.error
    assert isinstance(error, shoal.SerializationError), repr(error)
    assert "lead/reader#1" in str(error)
    words = "more than any message may hold" if kind in ("ascii", "length") else "malformed"
    assert words in str(error)


@pytest.mark.parametrize("kind", list(WRITTEN))
def test_garbage_on_a_process_agents_socket_fails_that_agent_naming_it(kind: str) -> None:
    check_garbage(kind, "process")


@shoal.tool
def refund(tokens: int) -> str:
    """Report usage of the tool's choosing to the tree, as the agent's process does."""
    from shoal.models.base import Usage

    _link().ask("add_usage", Usage(tokens, 0, 0), "lead/reader#1")
    return "reported"


def test_an_agent_process_cannot_report_usage_no_reply_has() -> None:
    # a negative count took tokens off the whole tree's spending: a budget dodged
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("refund", tokens=-10**9), call("refund", tokens=7)], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[refund], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(tokens=10**6))
    [child] = result.children
    assert child.status == "ok" and [c.status for c in child.calls] == ["failed", "ok"]
    assert "which no model reply has" in child.calls[0].message.content
    assert result.usage.input_tokens > 7  # the lead's turns, the agent's and the 7 reported
    assert child.usage.input_tokens > 7
