"""A swarm's cost per subagent: the cuts of session 38 keep every guarantee.

Each test runs the real parts (the codec, a SQLite journal, the scheduler) and checks what a
user relies on; where a cut is about where work happens (a thread hop less), a fresh
interpreter tells which threads ran.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import shoal
from shoal.models.base import ModelResponse, ToolCall, Usage
from shoal.store import codec
from shoal.testing import ScriptedModel, call

# ---- a model turn's reply is journaled without a thread hop ------------------------------


def _encode_threads(expression: str) -> dict[str, Any]:
    """Encode the value of ``expression`` in a fresh interpreter: the threads it started.

    Also whether it came back equal from its encoding, and that encoding.
    """
    script = textwrap.dedent(f"""
        import json, threading
        from shoal.models.base import ModelResponse, ToolCall, Usage
        from shoal.store import codec
        import shoal.agents.run  # what a journaled agent run has imported

        class Text(str):
            pass

        value = {expression}
        encoded = codec.encode_value(value)
        back, real = codec.decode_value(encoded.encoding, encoded.payload, encoded.view)
        print(json.dumps({{
            "threads": sorted(t.name for t in threading.enumerate()),
            "encoding": encoded.encoding, "real": real, "equal": back == value,
            "view": encoded.view}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_a_model_reply_is_encoded_where_asked_without_the_guard_thread() -> None:
    # every model turn of a journaled agent is a node whose value is its reply: handed to a
    # guard thread and waited for, each one cost the journal's single writer a thread round
    # trip (up to the interpreter's switch interval while the loop's thread ran)
    found = _encode_threads(
        'ModelResponse("done", (ToolCall("c1", "fetch", \'{"key": "t0"}\'),), '
        'Usage(10, 2, 1, 0.5), "scripted", "tool_calls")')
    assert found["threads"] == ["MainThread"]
    assert found["encoding"] == "pickle" and found["real"] and found["equal"]
    view = json.loads(str(found["view"]))
    assert view["text"] == "done" and view["tool_calls"][0]["name"] == "fetch"


def test_a_model_reply_holding_a_value_of_its_own_type_is_still_guarded() -> None:
    # a str subclass may pickle with code of its own (a __reduce__ that never returns): such
    # a reply still goes to the guard thread, which gives up on it after ENCODE_TIMEOUT
    found = _encode_threads('ModelResponse(Text("done"))')
    assert "shoal-encode" in found["threads"]
    assert found["encoding"] == "pickle" and found["equal"]


def test_a_subclass_of_a_record_is_still_guarded() -> None:
    found = _encode_threads(
        'type("Mine", (ModelResponse,), {"__slots__": ()})("done")')
    assert "shoal-encode" in found["threads"]


def test_a_record_that_holds_itself_ends_the_walk() -> None:
    # a record's tuple field may hold a list that holds the record again: the walk that
    # decides where it is encoded visits each object once
    looped: list[object] = []
    reply = ModelResponse("x", (ToolCall("c", "t", "{}"),), Usage())
    object.__setattr__(reply, "tool_calls", (looped,))
    looped.append(reply)
    encoded = codec.encode_value(reply)
    back, real = codec.decode_value(encoded.encoding, encoded.payload, encoded.view)
    assert encoded.encoding == "pickle" and real
    assert back.tool_calls[0][0] is back


# ---- a journaled swarm resumes as before ---------------------------------------------------


@shoal.tool
async def fetch(key: str) -> str:
    """Return a value at once."""
    return f"value of {key}"


def _tree() -> shoal.Agent:
    worker = shoal.Agent(name="worker", tools=[fetch], model=ScriptedModel.per_prompt(
        {"*": [[call("fetch", key="a"), call("fetch", key="b")], "worker summary"]}))
    lead = ScriptedModel([[call("worker", task=f"job {i}") for i in range(5)], "report"])
    return shoal.Agent(name="lead", model=lead, subagents=[worker])


def test_a_journaled_swarm_replays_every_model_turn_on_resume(tmp_path: Path) -> None:
    asyncio.run(_journaled_then_resumed(tmp_path / "runs.db"))


async def _journaled_then_resumed(store: Path) -> None:
    runtime = shoal.Runtime(store=store)
    first = await _tree().run("go", runtime=runtime)
    await runtime.aclose()
    assert first.ok and len(first.children) == 5
    # resumed: every turn's reply comes back from the journal, no model is asked again
    never = shoal.Agent(name="worker", tools=[fetch], model=ScriptedModel.per_prompt({"*": []}))
    lead = shoal.Agent(name="lead", model=ScriptedModel([]), subagents=[never])
    again = shoal.Runtime(store=store)
    resumed = await lead.resume(first.run_id, "go", runtime=again)
    await again.aclose()
    # the lead's turns (replies holding calls, usage) came back whole from their encoding
    assert resumed.ok and resumed.output == "report"
    assert resumed.turns == first.turns == 2 and resumed.usage.requests >= 2
    assert len(resumed.calls) == 5 and all(c.ok for c in resumed.calls)


# ---- the journal's writer binds each row's text once, as SQLite can hold it ------------------


@shoal.tool
async def echo(text: str) -> str:
    """Return ``text`` as it came."""
    return text


@shoal.tool
async def fail(text: str) -> str:
    """Fail, saying ``text``."""
    raise ValueError(text)


def test_rows_of_ascii_other_text_and_lone_surrogates_are_kept_exactly(tmp_path: Path) -> None:
    # most rows are ASCII alone and are bound as they are; a row with text SQLite cannot
    # hold (a lone surrogate) anywhere in it, even past its ASCII fields, is bound as bytes
    texts = ["plain", "caf\u00e9 \u2603", "lone \ud800 high", "\udfff", "pair \ud83d\ude00"]
    plan = shoal.Plan("binds")
    for index, text in enumerate(texts):
        plan.call(echo, text=text, node_id=f"echo{index}")
        plan.call(fail, text=text, node_id=f"fail{index}")
    store = tmp_path / "runs.db"

    async def go() -> str:
        runtime = shoal.Runtime(store=store)
        try:
            return (await runtime.run(plan)).run_id
        finally:
            await runtime.aclose()

    run_id = asyncio.run(go())
    from shoal.store.sqlite import SQLiteStore

    kept = SQLiteStore(store).outcomes(run_id)
    for index, text in enumerate(texts):
        assert kept[f"echo{index}"].outcome.value == text
        error = kept[f"fail{index}"].outcome.error
        assert error is not None and error.message == text  # a surrogate pair too
