"""An agent whose process is killed while its model is still streaming a reply.

``python -m tests.stream_crash STORE RUN_ID crash|resume LOG``: the lead's first reply streams
``note(a)``, then 300 ms later ``boom``, then goes on streaming for 5 s; ``boom`` SIGKILLs the
process in ``crash`` mode, so the reply never completes. In ``resume`` mode the run is
continued from the journal. Every ``note`` appends to LOG, so a test can see whether it ran
twice.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import shoal
from shoal.testing import ScriptedModel, call, pause

STORE, RUN_ID, MODE, LOG = sys.argv[1:5]


@shoal.tool
def note(text: str) -> str:
    """Append a line to the log (a side effect that must not repeat)."""
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")
    return f"noted {text}"


@shoal.tool(idempotent=True)
def boom() -> str:
    """Kill this process (in crash mode), once note(a) has surely been journaled."""
    if MODE == "crash":
        time.sleep(1.0)  # ample time to journal note(a), even on a loaded machine
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def main() -> None:
    model = ScriptedModel([[call("note", text="a"), pause(0.3), call("boom"), pause(5)],
                           "final answer"] if MODE == "crash" else
                          [[call("note", text="a"), call("boom")], "final answer"])
    lead = shoal.Agent(name="lead", model=model, tools=[note, boom])
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    if MODE == "crash":
        result = lead.run_sync("go", runtime=runtime, run_id=RUN_ID)
    else:
        result = lead.resume_sync(RUN_ID, "go", runtime=runtime)
    print(json.dumps({"output": result.output, "requests": len(model.requests),
                      "calls": [c.status for c in result.calls],
                      "results": [c.message.content for c in result.calls]}))


if __name__ == "__main__":
    main()
