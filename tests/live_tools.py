"""A run with a slow call that is not idempotent, for resuming runs that are still live.

``python -m tests.live_tools DB RUN_ID run`` runs :func:`build_plan` under that run id;
``... resume [--rerun NODE] [--force]`` resumes it; ``... agent`` runs :func:`build_agent`.
Each prints its outcome as JSON on its last line: ``{node: status}``, or
``{"refused": pid}`` when the run was refused as still running elsewhere.

Every call of :func:`pay` leaves a line in ``$SHOAL_LIVE_DIR/started`` when it begins and one
in ``.../effects`` when it takes effect, so a test can count how often each payment happened.
``$SHOAL_LIVE_SLOW`` is how long payment ``b`` takes (seconds) at most: a file
``$SHOAL_LIVE_DIR/release`` ends it sooner, so a test can hold the run live for as long as its
checks take on a loaded machine (a wide margin) and let it finish the moment they are done.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import shoal
from shoal.testing import ScriptedModel, call


def _trace(name: str, line: str) -> None:
    with (Path(os.environ["SHOAL_LIVE_DIR"]) / name).open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


@shoal.tool
def pay(order: str, seconds: float = 0.0) -> str:
    """Pay for ``order`` (not idempotent: every call pays again), taking ``seconds``."""
    _trace("started", order)
    release = Path(os.environ["SHOAL_LIVE_DIR"]) / "release"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not release.exists():
        time.sleep(0.01)
    _trace("effects", order)
    return f"paid {order}"


def slow() -> float:
    """How long payment ``b`` takes."""
    return float(os.environ.get("SHOAL_LIVE_SLOW", "2"))


def build_plan() -> shoal.Plan:
    """``a``, then the slow ``b``, then ``c``: three payments in a row."""
    plan = shoal.Plan(name="live")
    a = plan.call(pay, order="a", node_id="a")
    b = plan.call(pay, order="b", seconds=slow(), node_id="b", after=a)
    plan.call(pay, order="c", node_id="c", after=b)
    return plan


def build_agent() -> shoal.Agent[str]:
    """An agent that makes the slow payment ``b``, then answers."""
    model = ScriptedModel([[call("pay", order="b", seconds=slow())], "done"])
    return shoal.Agent(name="lead", model=model, tools=[pay])


def main(argv: list[str]) -> None:
    """The command line (see the module doc)."""
    db, run_id, what, *rest = argv
    runtime = shoal.Runtime(store=db, executor="thread")
    try:
        if what == "agent":
            answer = build_agent().run_sync("pay b", runtime=runtime, run_id=run_id)
            print(json.dumps({"agent": answer.status}))
            return
        if what == "run":
            result = runtime.run_sync(build_plan(), run_id=run_id)
        else:
            rerun = [rest[i + 1] for i, arg in enumerate(rest) if arg == "--rerun"]
            result = runtime.resume_sync(run_id, build_plan(), rerun_in_doubt=rerun,
                                         force="--force" in rest)
    except shoal.RunActiveError as exc:
        print(json.dumps({"refused": exc.pid}))
        return
    print(json.dumps({node: outcome.status for node, outcome in result.outcomes.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
