"""An agent tree's calls in doubt are settled on resume, as a plan run's are (guarantee 8).

Each agent's steps are a nested journaled run (``{run id}/{lineage}/steps``): a call of a
tool that is not idempotent, in flight when the process was killed (or stopped by Ctrl-C
while its tool ran), is in doubt on resume. ``shoal resume`` used to drop ``--rerun-in-doubt``
and ``--mark-done`` for an agent run without a word (and ``Agent.resume`` took neither), so
the agent was always told "in doubt"; ``shoal show`` of the killed run showed no call at all.
Now the call is named as ``shoal show`` prints it (``lead/helper#1/pay#1``) and settled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.cli_process import run_cli
from tests.test_indoubt_s33 import _paid, _started, pay

ROOT = Path(__file__).resolve().parents[1]
CALL = "lead/helper#1/pay#1"


def _tree(args: dict[str, str], helper_steps: list[Any], lead_steps: list[Any],
          isolation: str = "inline") -> tuple[shoal.Agent[str], ScriptedModel]:
    helper_model = ScriptedModel(helper_steps)
    helper = shoal.Agent(name="helper", tools=[pay], model=helper_model, stream_dispatch=False,
                         isolation=isolation)  # type: ignore[arg-type]  # (a Literal)
    lead = shoal.Agent(name="lead", subagents=[helper], model=ScriptedModel(lead_steps),
                       stream_dispatch=False)
    return lead, helper_model


def _stopped_mid_call(tmp_path: Path, isolation: str = "inline",
                      ) -> tuple[shoal.Runtime, dict[str, str], Path]:
    """A tree whose helper's ``pay`` was cancelled while it ran (it took effect once)."""
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    args = {"marker": str(marker), "hold": str(hold)}
    lead, _ = _tree(args, [[call("pay", **args)], "never"], [[call("helper", task="x")], "no"],
                    isolation)

    async def main() -> None:
        handle = lead.start("go", runtime=runtime, run_id="tree")
        await _started(marker)
        handle.cancel()
        with pytest.raises(shoal.AgentError):
            await handle

    asyncio.run(main())
    hold.unlink()
    assert _paid(marker) == 1
    return runtime, args, marker


def _told(model: ScriptedModel) -> str:
    return json.dumps([m.content for m in model.requests[-1].messages], default=str)


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_rerun_in_doubt_runs_a_subagents_call_again_on_resume(isolation: str,
                                                              tmp_path: Path) -> None:
    runtime, args, marker = _stopped_mid_call(tmp_path, isolation)
    lead, helper_model = _tree(args, ["helper saw it paid"], ["lead done"], isolation)
    result = lead.resume_sync("tree", "go", runtime=runtime, rerun_in_doubt=[CALL])
    assert _paid(marker) == 2  # run again, as asked (in the subagent's own process too)
    (helper,) = result.children
    calls = [(c.lineage, c.status, c.outcome and c.outcome.value) for c in helper.calls]
    assert calls == [(CALL, "ok", "paid")]
    if isolation == "inline":  # (a process agent's model is a copy, asked in its process)
        assert "may or may not" not in _told(helper_model)
    assert result.output == "lead done"


def test_mark_done_records_a_subagents_call_ok_with_the_value(tmp_path: Path) -> None:
    runtime, args, marker = _stopped_mid_call(tmp_path)
    lead, helper_model = _tree(args, ["helper saw receipt 7"], ["lead done"])
    result = lead.resume_sync("tree", "go", runtime=runtime, mark_done={CALL: {"receipt": 7}})
    assert _paid(marker) == 1  # not run again
    (helper,) = result.children
    calls = [(c.status, c.outcome and c.outcome.value) for c in helper.calls]
    assert calls == [("ok", {"receipt": 7})]
    assert "receipt" in _told(helper_model) and "may or may not" not in _told(helper_model)


def test_a_name_that_is_no_call_in_doubt_is_refused_before_anything_runs(
        tmp_path: Path) -> None:
    runtime, args, marker = _stopped_mid_call(tmp_path)
    lead, helper_model = _tree(args, ["x"], ["y"])
    for wrong in ("pay#1", "lead/pay#1", "lead/helper#1"):
        with pytest.raises(shoal.ConfigError, match=re.escape(f"in doubt: ['{CALL}']")):
            lead.resume_sync("tree", "go", runtime=runtime, rerun_in_doubt=[wrong])

    async def fresh() -> None:
        lead.start("go", runtime=runtime, rerun_in_doubt=[CALL])

    with pytest.raises(shoal.ConfigError, match="only when resuming"):
        asyncio.run(fresh())
    assert not helper_model.requests and _paid(marker) == 1


def test_a_call_whose_agent_was_told_it_is_in_doubt_cannot_be_settled_later(
        tmp_path: Path) -> None:
    runtime, args, marker = _stopped_mid_call(tmp_path)
    lead, _ = _tree(args, ["helper told"], ["lead done"])
    told = lead.resume_sync("tree", "go", runtime=runtime)  # no settling: the agent is told
    assert [c.status for c in told.children[0].calls] == ["in_doubt"]
    reason = told.children[0].calls[0].outcome
    assert reason is not None and f"--rerun-in-doubt {CALL}" in reason.reason, reason
    lead, _ = _tree(args, ["x"], ["y"])
    with pytest.raises(shoal.ConfigError, match="earlier resume, which told the agent so"):
        lead.resume_sync("tree", "go", runtime=runtime, rerun_in_doubt=[CALL])
    assert _paid(marker) == 1


KILLED_MODULE = '''
import os
import signal

import shoal
from shoal.testing import ScriptedModel, call

MARKER = os.environ["PAY_MARKER"]


@shoal.tool
def pay(amount: int) -> str:
    """Take effect (a line in MARKER); the first time, the process is killed right after."""
    with open(MARKER, "a", encoding="utf-8") as file:
        file.write("paid\\n")
    if not os.environ.get("PAY_RESUMING"):
        os.kill(os.getpid(), signal.SIGKILL)
    return "paid"


helper = shoal.Agent(name="helper", tools=[pay], stream_dispatch=False,
                     model=ScriptedModel.per_prompt({"x": [[call("pay", amount=3)], "h"]}))
agent = shoal.Agent(name="lead", subagents=[helper], stream_dispatch=False,
                    model=ScriptedModel.per_prompt({"go": [[call("helper", task="x")], "done"]}))
'''


@pytest.mark.parametrize("settle", [["--rerun-in-doubt", CALL], ["--mark-done", f"{CALL}=7"]])
def test_shoal_resume_settles_a_call_in_doubt_of_a_killed_agent_tree(
        settle: list[str], tmp_path: Path) -> None:
    marker = tmp_path / "paid.txt"
    (tmp_path / "cashier.py").write_text(KILLED_MODULE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}",
           "PAY_MARKER": str(marker), "COLUMNS": "300"}
    killed = run_cli(["run", "cashier:agent", "go", "--store", "runs.db"], cwd=tmp_path,
                     env=env, timeout=120)
    assert killed.returncode == -9 or killed.returncode == 137, killed.stderr
    found = re.search(r"run (\S+) \(journaling", killed.stderr)
    assert found is not None, killed.stderr
    run_id = found[1]
    shown = run_cli(["show", run_id, "--store", "runs.db"], cwd=tmp_path, env=env)
    said = " ".join(shown.stdout.split())
    assert f"--rerun-in-doubt {CALL}" in said, shown.stdout  # the call, named as it is taken
    listed = run_cli(["show", run_id, "--store", "runs.db", "--json"], cwd=tmp_path, env=env)
    assert json.loads(listed.stdout)["in_doubt"] == [CALL]
    resumed = run_cli(["resume", run_id, "--store", "runs.db", "--json", *settle],
                      cwd=tmp_path, env={**env, "PAY_RESUMING": "1"}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    (helper,) = json.loads(resumed.stdout)["children"]
    (paid,) = helper["calls"]
    assert paid["status"] == "ok", paid
    assert _paid(marker) == (2 if settle[0] == "--rerun-in-doubt" else 1)
    again = run_cli(["resume", run_id, "--store", "runs.db", *settle], cwd=tmp_path,
                    env={**env, "PAY_RESUMING": "1"}, timeout=120)
    assert again.returncode == 2 and "not calls in doubt" in again.stderr, again.stderr



def test_a_call_marked_done_is_told_to_listeners_as_finished_ok_not_cancelled(
        tmp_path: Path) -> None:
    """Its event was ``NodeCancelled`` (it ran no attempt): the live tree drew it cancelled."""
    from shoal.events import Event, NodeCancelled, NodeFinished

    runtime, args, _ = _stopped_mid_call(tmp_path)
    lead, _ = _tree(args, ["helper saw receipt"], ["lead done"])
    seen: list[Event] = []
    lead.resume_sync("tree", "go", runtime=runtime, mark_done={CALL: "receipt"},
                     on_event=seen.append)
    told = [e for e in seen if isinstance(e, NodeFinished | NodeCancelled) and e.lineage == CALL]
    assert [(type(e).__name__, getattr(e, "status", "")) for e in told] == [
        ("NodeFinished", "ok")]


def test_ctrl_c_on_an_agent_run_says_how_to_settle_its_calls_in_doubt() -> None:
    from shoal.cli.interrupt import doubt_hint

    said = doubt_hint([CALL], agent=True)
    assert f"call {CALL} was stopped" in said and "tells its agent so" in said
    assert "--rerun-in-doubt CALL" in said and "--mark-done CALL=VALUE" in said
