"""A planner whose process is killed while a slow call of its plan runs.

``python -m tests.planner_crash STORE RUN_ID MODE LOG``, MODE one of ``crash``, ``resume``,
``crash-streaming``, ``resume-streaming``: the plan notes ``a`` and
``b``, then ``slow`` (which needs both) SIGKILLs the process in ``crash`` mode once they are
journaled; the last note needs ``slow``. In ``resume`` mode the run is continued from the
journal: the planner's turn must be replayed, and only the joiner is asked. Every call
appends its name to LOG, so a test can see what ran twice.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import shoal
from shoal.testing import ScriptedModel

STORE, RUN_ID, MODE, LOG = sys.argv[1:5]
PLAN = """Thought: note two things, then the slow part, then the last note.
1. note("a")
2. note("b")
3. slow(parts=[$1, $2])
4. note(text=$3)
5. join()
"""


def _log(text: str) -> None:
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")


@shoal.tool
def note(text: str) -> str:
    """Append a line to the log (a side effect that must not repeat)."""
    _log(text)
    return f"noted {text}"


@shoal.tool(idempotent=True)
def slow(parts: list[str]) -> str:
    """Join the parts slowly; in crash mode the process dies meanwhile."""
    _log("slow")
    if MODE.startswith("crash"):
        time.sleep(1.0)  # ample time to journal notes a and b, even on a loaded machine
        os.kill(os.getpid(), signal.SIGKILL)
    return "c"


def _model() -> ScriptedModel:
    joiner = "Thought: all done\nAction: Finish(final answer)"
    if MODE == "crash":
        return ScriptedModel([PLAN, joiner])
    if MODE == "resume":
        # the planner's finished turn comes from the journal: the model is only asked for
        # the joiner's (a second request would find no step and fail loudly)
        return ScriptedModel([joiner])
    # "-streaming": the kill comes while the plan still streams (slowly, after its calls), so
    # the cut planner turn is asked again on resume
    tail = "Thought: still writing.\n" * 200 if MODE == "crash-streaming" else ""
    return ScriptedModel([PLAN.replace("5. join()", tail + "5. join()"), joiner],
                         tokens_per_second=50.0)


def main() -> None:
    model = _model()
    planner = shoal.Agent(name="planner", model=model, tools=[note, slow], mode="plan")
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    if MODE.startswith("crash"):
        result = planner.run_sync("go", runtime=runtime, run_id=RUN_ID)
    else:
        result = planner.resume_sync(RUN_ID, "go", runtime=runtime)
    print(json.dumps({"output": result.output, "requests": len(model.requests),
                      "calls": [c.status for c in result.calls],
                      "results": [c.message.content for c in result.calls],
                      "plans": len(result.plans)}))


if __name__ == "__main__":
    main()
