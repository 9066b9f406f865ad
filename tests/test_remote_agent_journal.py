"""Every agent of a tree journals in the root's journal, and a board commit is journaled with it.

Process agents nested in process agents, killed with SIGKILL mid-run and resumed, repeat none
of their finished model turns or tool calls. A board commit that a process agent's tool makes
is journaled by the root in the same step as it is applied: an agent process killed right after
its commit (before it could journal the call) leaves the board and the journal agreeing, and
the call, run again, does not write twice. Real subprocesses and SQLite files throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

import shoal
from shoal.board import replay_journal, stands_alone
from shoal.testing import ScriptedModel, call
from tests.board_commit_kill import KILL_AT_COMMIT, kill_orders, new_board, note
from tests.conftest import pid_gone

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_child_process_leak")]


def _crash_then_resume(tmp_path: Path, middle: str, *, env: dict[str, str] | None = None,
                       timeout: float = 120) -> tuple[dict[str, Any], Path]:
    """Run ``tests.nested_agent_crash`` in crash mode (killed), then resume it; its report."""
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"

    def script(mode: str) -> subprocess.CompletedProcess[str]:
        return _run_whole(
            [sys.executable, "-m", "tests.nested_agent_crash", str(store), "tree-1", mode,
             str(log), middle], timeout=timeout, env=env)

    crashed = script("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "m1", "x1"]
    for name in ("log.txt.middle", "log.txt.leaf"):  # they ended with the root
        pid = int((tmp_path / name).read_text())
        assert _gone_within(pid, 10.0), (name, _described(pid))
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr
    return json.loads(resumed.stdout.strip().splitlines()[-1]), log


#: Seconds the processes a script started may outlive it (they notice within a second).
OUTLIVE = 30.0


def _run_whole(command: list[str], *, timeout: float,
               env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as ``subprocess.run`` would; fail, naming them, if its processes outlive it.

    Every process of the script's tree inherits its output pipes: one that outlives the script
    keeps them open, and ``subprocess.run`` would wait for it until its timeout, saying
    nothing of who. Here the script gets ``timeout`` seconds to end, and whatever it started
    :data:`OUTLIVE` more to let go of the pipes; then the test fails listing the culprits.
    """
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    pipe = os.fstat(proc.stdout.fileno()).st_ino
    streams = {"out": proc.stdout, "err": proc.stderr}
    read: dict[str, bytes] = {}

    def drain(name: str, file: IO[bytes]) -> None:
        read[name] = file.read()

    readers = [threading.Thread(target=drain, args=item, daemon=True) for item in streams.items()]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        tree = [_described(p.pid) for p in psutil.Process(proc.pid).children(recursive=True)]
        _kill_all([proc.pid, *_pipe_holders(pipe)])
        pytest.fail(f"{' '.join(command[2:])} did not end within {timeout:.0f} s; its "
                    f"processes: {tree}")
    end = time.monotonic() + OUTLIVE
    for reader in readers:
        reader.join(max(0.0, end - time.monotonic()))
    if any(reader.is_alive() for reader in readers):
        holders = _pipe_holders(pipe)
        described = [_described(pid) for pid in holders]
        _kill_all(holders)
        pytest.fail(f"processes of {' '.join(command[2:])} outlived it by {OUTLIVE:.0f} s, holding "
                    f"its output pipes: {described or 'not found (not Linux?)'}")
    for file in streams.values():
        file.close()
    return subprocess.CompletedProcess(command, code, read["out"].decode(errors="replace"),
                                       read["err"].decode(errors="replace"))


def _pipe_holders(inode: int) -> list[int]:
    """The other processes that have the pipe ``inode`` open (Linux ``/proc``; else none)."""
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit() or int(name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{name}/fd")
            if any(_links_to(f"/proc/{name}/fd/{fd}", f"pipe:[{inode}]") for fd in fds):
                found.append(int(name))
    return found


def _links_to(link: str, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:  # closed meanwhile
        return False


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _described(pid: int) -> str:
    """What a process that should be gone is, and what holds it (for a failing test)."""
    try:
        proc = psutil.Process(pid)
        chain = [f"{p.pid} {p.status()} {' '.join(p.cmdline())[:80]}"
                 for p in [proc, *proc.parents()]]
        return " <- ".join(chain) + f" threads={[t.id for t in proc.threads()]}"
    except psutil.Error as exc:
        return repr(exc)


def _gone_within(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pid_gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_process_agent_nested_in_a_process_agent_resumes_without_repeating_work(
        tmp_path: Path) -> None:
    report, log = _crash_then_resume(tmp_path, "process")
    assert report["output"] == "final answer", report
    assert report["middle"] == ["ok"] * 3 and report["leaf"] == ["ok"] * 3, report
    assert report["lead_requests"] == 1  # only the turn after the middle agent's answer
    assert report["middle_error"] == "None" and report["leaf_error"] == "None", report
    # no finished call of any level ran again, and none of their board writes counts twice
    assert sorted(log.read_text().split()) == ["a", "m1", "x1"]
    assert sorted(report["board"]) == ["a", "m1", "x1"]


@shoal.tool
def mark(path: str) -> str:
    """Append a line to ``path`` (a side effect that must not repeat)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write("ran\n")
    return "marked"


@shoal.tool(idempotent=True)
def die_once(path: str) -> str:
    """SIGKILL this process the first time (``path`` remembers it); say so after."""
    if not Path(path).exists():
        Path(path).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def test_a_retried_process_agent_continues_from_the_roots_journal(tmp_path: Path) -> None:
    """Its process died mid-run; the retried agent replays what it finished from the journal."""
    log, marker = tmp_path / "log", tmp_path / "died"
    model = ScriptedModel.per_prompt({"go": [
        [call("mark", path=str(log))], [call("die_once", path=str(marker))], "done"]})
    helper = shoal.Agent(name="helper", model=model, tools=[mark, die_once],
                         isolation="process", stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task="go")
    runtime = shoal.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}")
    result = runtime.run_sync(plan)
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert result[ref].value == "done"
    assert log.read_text().split() == ["ran"]  # the finished call replayed, not run again


# ---- board commits of process agents ----------------------------------------------------


def _retried_agent_plan(pid_file: Path) -> tuple[shoal.Plan, shoal.Agent[str], Any]:
    """A process agent as a plan node that is retried once, whose one call writes ``x1``."""
    model = ScriptedModel.per_prompt({"go": [
        [call("note", text="x1", pid_file=str(pid_file))], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note], isolation="process",
                         stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper.node_tool.options(retries=1), task="go")
    return plan, helper, ref


def test_an_agent_killed_between_its_board_commit_and_its_journal_writes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The awkward moment: the root has the commit, the agent's process has not journaled it.

    The agent's process is SIGKILLed while the root merges its write; the node is retried,
    its agent continues from the journal and runs the call (in flight at the kill) again.
    The write counts once, on the board and in the journal alike.
    """
    db, pid_file = tmp_path / "runs.db", tmp_path / "helper.pid"
    monkeypatch.setenv(KILL_AT_COMMIT, kill_orders(tmp_path / "kill", "x1", pid_file))
    plan, _, ref = _retried_agent_plan(pid_file)
    board = new_board()
    runtime = shoal.Runtime(store=f"sqlite:///{db}")
    result = runtime.run_sync(plan, board=board, run_id="plan-1")
    assert (tmp_path / "kill.done").exists()  # the first process was killed at its commit
    assert result[ref].status == "ok" and result[ref].attempts == 2, result[ref]
    assert (tmp_path / "helper.pid.ran").read_text().split() == ["x1", "x1"]  # ran again
    assert board["notes"] == ["x1"]  # ... but its write counts once
    journaled = new_board()
    replay_journal(journaled, shoal.SQLiteStore(db), "plan-1")
    assert journaled["notes"] == ["x1"]  # the journal holds what the board holds


def test_a_board_commit_the_root_journaled_is_replayed_once_on_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's process is killed at its commit and never retried: the run is resumed.

    The commit stands in the journal (the board had it), and the call, in flight at the
    kill, runs again on resume without writing a second time.
    """
    db, pid_file = tmp_path / "runs.db", tmp_path / "helper.pid"
    monkeypatch.setenv(KILL_AT_COMMIT, kill_orders(tmp_path / "kill", "x1", pid_file))
    model = ScriptedModel.per_prompt({"go": [
        [call("note", text="x1", pid_file=str(pid_file))], "noted"]})
    helper = shoal.Agent(name="helper", model=model, tools=[note], isolation="process",
                         stream_dispatch=False)
    plan = shoal.Plan()
    ref = plan.call(helper, task="go")
    board = new_board()
    first = shoal.Runtime(store=f"sqlite:///{db}").run_sync(plan, board=board, run_id="p-1")
    assert first[ref].status == "failed" and "SIGKILL" in str(first[ref].error)
    assert board["notes"] == ["x1"]  # the root applied the commit before the kill
    resumed_board = new_board()
    again = shoal.Runtime(store=f"sqlite:///{db}").resume_sync("p-1", plan,
                                                               board=resumed_board)
    assert again[ref].status == "ok", again[ref]
    assert resumed_board["notes"] == ["x1"]  # replayed from the journal, not written again
    assert (tmp_path / "helper.pid.ran").read_text().split() == ["x1", "x1"]


def test_a_root_killed_after_journaling_a_commit_the_agent_had_not_resumes_writing_once(
        tmp_path: Path) -> None:
    """The root dies at the awkward moment: its journal has the commit, not the call's outcome.

    (The agent's process is stopped as it commits, so it journals nothing; the root journals
    the commit, then is SIGKILLed.) The resumed run counts the commit once and runs the call,
    in flight at the crash, again without a second write.
    """
    store = tmp_path / "runs.db"

    def script(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.board_commit_crash", str(store), mode,
             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=90)

    crashed = script("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert _gone_within(int((tmp_path / "helper.pid").read_text()), 10.0)
    journal = shoal.SQLiteStore(store)
    commits = [e.record for e in journal.effects("plan-1", nested=True)]
    assert [(c.data["writes"], stands_alone(c)) for c in commits] == [([["notes", "x1"]], True)]
    step = commits[0].run_id  # the helper's tool phase: the call never got its outcome
    assert commits[0].node_id not in journal.outcomes(step)
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert report["status"] == "ok" and report["value"] == "noted", report
    assert report["board"] == ["x1"]  # the journaled commit, once
    assert report["ran"] == ["x1", "x1"]  # the call ran again (idempotent), writing nothing
