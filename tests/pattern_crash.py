"""A plan of nested patterns that kills its own process mid-run, for the pattern resume test.

``python -m tests.pattern_crash STORE RUN_ID crash|resume LOG``: the plan is one node,
``pipeline(a, fan_out(w1, w2, aggregate=agg), b)``, then a tool node using its output. Every
agent notes something (appended to LOG); ``b`` then calls ``boom``, which SIGKILLs the process
in ``crash`` mode. In ``resume`` mode the run is continued from the journal, with models that
fail loudly if asked for a turn that the journal should replay.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import shoal
from shoal.models.base import ModelRequest
from shoal.patterns import fan_out, pipeline
from shoal.testing import ScriptedModel, call

STORE, RUN_ID, MODE, LOG = sys.argv[1:5]


@shoal.tool
def note(text: str) -> str:
    """Append a line to the log (a side effect that must not repeat)."""
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")
    return f"noted {text}"


@shoal.tool(idempotent=True)
def boom() -> str:
    """Kill this process (in crash mode)."""
    if MODE == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@shoal.tool
def shout(text: str) -> str:
    """The pipeline's output, loud."""
    return text.upper()


def replayed(request: ModelRequest) -> Any:
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def model(steps: list[Any], finished: int) -> ScriptedModel:
    """A model for one agent; in resume mode its first ``finished`` turns must replay."""
    if MODE == "resume":
        steps = [replayed] * finished + steps[finished:]
    return ScriptedModel.per_prompt({"*": steps})


def main() -> None:
    models = {
        "a": model([[call("note", text="a")], "A"], 2),
        "w1": model([[call("note", text="w1")], "W1"], 2),
        "w2": model([[call("note", text="w2")], "W2"], 2),
        "agg": model(["AGG"], 1),
        "b": model([[call("note", text="b")], [call("boom")], "final answer"], 2),
    }
    # Calls wait for each whole reply, so every turn is journaled before boom can kill: with
    # stream dispatch a reply cut by the crash is asked again (test_stream_dispatch.py).
    agents = {name: shoal.Agent(name=name, model=m, tools=[note, boom], stream_dispatch=False)
              for name, m in models.items()}
    plan = shoal.Plan()
    out = plan.call(pipeline(agents["a"], fan_out(agents["w1"], agents["w2"],
                                                  aggregate=agents["agg"]), agents["b"]),
                    task="go")
    plan.call(shout, text=out)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    if MODE == "crash":
        result = runtime.run_sync(plan, run_id=RUN_ID)
    else:
        result = runtime.resume_sync(RUN_ID, plan)
    print(json.dumps({"outcomes": {o.node_id: [o.status, o.value] for o in result},
                      "requests": {name: len(m.requests) for name, m in models.items()}}))


if __name__ == "__main__":
    main()
