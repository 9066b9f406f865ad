"""A plan whose root is killed between a process agent's board commit and its journal record.

``python -m tests.board_commit_crash STORE crash|resume DIR``: the plan's one node is
``helper``, an agent in a process of its own, whose one call writes ``x1`` to the board. In
``crash`` mode the board's merge (in this, the root's, process) stops the helper's process
with SIGSTOP as it commits, so the helper never journals the call, and once the root has
journaled the commit it SIGKILLs the helper and itself (see :mod:`tests.board_commit_kill`).
In ``resume`` mode the run continues from the journal and prints what it found: the node's
status, the board, and how often the call ran.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import shoal
from shoal.testing import ScriptedModel, call
from tests.board_commit_kill import KILL_AT_COMMIT, kill_orders, new_board, note

STORE, MODE, DIR = sys.argv[1:4]
RUN_ID = "plan-1"


def main() -> None:
    pid_file = Path(DIR) / "helper.pid"
    model = ScriptedModel.per_prompt({"go": [
        [call("note", text="x1", pid_file=str(pid_file))], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note], isolation="process",
                         stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper, task="go")
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    board = new_board()
    if MODE == "crash":
        os.environ[KILL_AT_COMMIT] = kill_orders(Path(DIR) / "kill", "x1", pid_file,
                                                 signal.SIGSTOP, (STORE, RUN_ID))
        runtime.run_sync(plan, board=board, run_id=RUN_ID)
        return
    result = runtime.resume_sync(RUN_ID, plan, board=board)
    print(json.dumps({"status": result[ref].status, "value": result[ref].value,
                      "board": board["notes"],
                      "ran": (Path(DIR) / "helper.pid.ran").read_text().split()}))


if __name__ == "__main__":
    main()
