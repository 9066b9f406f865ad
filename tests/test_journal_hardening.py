"""The journal under hostile conditions: read-only files, odd lock folders, hostile text.

Every case runs the real ``shoal`` command in a subprocess on a real SQLite file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.exceptions import StoreError
from shoal.store.claims import process_alive, process_start
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]


def shoal_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` in ``cwd``, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=120)


@shoal.tool
def echo(text: str) -> str:
    """Return ``text``."""
    return text


def journal_with_a_run(where: Path, run_id: str = "r1") -> Path:
    """A journal at ``where`` holding one finished run ``run_id``."""
    plan = shoal.Plan(name="p")
    plan.add(echo, {"text": "hi"}, node_id="a")
    path = where / "runs.db"
    assert shoal.Runtime(store=SQLiteStore(path)).run_sync(plan, run_id=run_id).ok
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder whose files can be read but not written (a read-only bind mount as root)."""
    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    journal_with_a_run(source)
    (source / "plan.yaml").write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    if os.geteuid() != 0:
        (source / "runs.db").chmod(0o444)
        source.chmod(0o555)
        yield source
        source.chmod(0o755)
        return
    with bound_read_only(source, mounted, "folder"):
        yield mounted


@contextlib.contextmanager
def bound_read_only(source: Path, target: Path, what: str) -> Iterator[None]:
    """``source`` bind-mounted read-only at ``target`` (as root); the test skips where not."""
    mount = shutil.which("mount")
    done = mount and subprocess.run(
        [mount, "--bind", str(source), str(target)], capture_output=True, check=False)
    if not done or done.returncode:
        pytest.skip(f"cannot make a read-only {what} here")
    try:
        if subprocess.run([mount, "-o", "remount,bind,ro", str(target)],  # type: ignore[list-item]
                          capture_output=True, check=False).returncode:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        # lazily: a journal still open in this process must not keep the mount (and the
        # machine's mount table) around after the test
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True, check=False)


def test_a_read_only_journal_is_listed_and_shown_and_refused_for_writing(
        read_only_dir: Path) -> None:
    store = str(read_only_dir / "runs.db")
    listed = shoal_cli("runs", "--store", store, "--json", cwd=read_only_dir)
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["r1"]
    shown = shoal_cli("show", "r1", "--store", store, "--json", cwd=read_only_dir)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["outcomes"][0]["value"] == "hi"
    for command in (["resume", "r1"], ["run", "plan.yaml"]):
        refused = shoal_cli(*command, "--store", store, cwd=read_only_dir)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    with pytest.raises(StoreError, match="cannot write"):
        SQLiteStore(store, read_only=True).heartbeat("r1", 1.0)


@shoal.tool
def items(n: int) -> list[str]:
    """``n`` texts of 200 characters."""
    return [f"{i:05d}" + "x" * 195 for i in range(n)]


def journal_failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "could not be written" in line
            or "cannot write" in line]


def run_until_the_journal_fills_up(tmp_path: Path, *options: str
                                   ) -> subprocess.CompletedProcess[str]:
    """``shoal run`` of a map of 3,000 items whose journal file hits a size limit mid-run.

    A file size limit stands for a full disk: SQLite's writes fail part way through the run.
    """
    path = journal_with_a_run(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - {id: i, tool: 'tests.test_journal_hardening:items', args: {n: 3000}}\n"
        "  - {id: each, tool: 'tests.test_journal_hardening:echo', map: {over: $i, "
        "item_arg: text}}\n")
    limit = path.stat().st_size + 200_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "run", "plan.yaml", "--store", str(path),
         *options],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120, preexec_fn=small_files, check=False)


def test_a_journal_that_fills_up_stops_the_run_with_one_line_saying_what_to_do(
        tmp_path: Path) -> None:
    done = run_until_the_journal_fills_up(tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = journal_failure_lines(done.stderr)  # said once, not logged and raised both
    assert line.startswith("error: the journal of run ") and "so the run stopped" in line
    assert "free some space, or journal to another file" in line


@pytest.mark.parametrize("as_json", [False, True])
def test_a_run_whose_journal_fails_shows_the_calls_it_ran(tmp_path: Path, as_json: bool) -> None:
    # the calls that ran before the journal failed had their effects: the user must see them
    done = run_until_the_journal_fills_up(tmp_path, *(["--json"] if as_json else []))
    assert done.returncode == 2, done.stderr
    assert len(journal_failure_lines(done.stderr)) == 1  # the error, said once
    if not as_json:
        assert "3002 nodes: 1 ok" in done.stdout  # i ran; the table lists the map's items
        assert "each[0]" in done.stdout and "run stopped: " in done.stdout
        return
    shown = json.loads(done.stdout)
    assert shown["error"] == "journal" and "so the run stopped" in shown["message"]
    outcomes = {o["node_id"]: o for o in shown["result"]["outcomes"]}
    assert outcomes["i"]["status"] == "ok" and len(outcomes["i"]["value"]) == 3000
    assert len(outcomes) > 1  # the map's items that had begun or ended, too


@shoal.tool
def cap_journal() -> str:
    """Let no file of this process grow any more: the journal's next growth fails (EFBIG)."""
    biggest = max(path.stat().st_size for path in Path.cwd().glob("runs.db*") if path.is_file())
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest, biggest))
    return "capped"


# its second turn's call makes the journal fail as it records that call's end
CAPPING_AGENT = shoal.Agent(name="lead", model=ScriptedModel([
    [call("items", n=1)], [call("cap_journal")], "never asked for"]),
    tools=[items, cap_journal])


@pytest.mark.parametrize("as_json", [False, True])
def test_an_agent_whose_journal_fails_stops_and_shows_what_it_ran(tmp_path: Path,
                                                                  as_json: bool) -> None:
    # the CLI printed the error alone (the run's end record, failing as well, hid the run's
    # result), and the agent asked its model again after its steps run had stopped
    path = journal_with_a_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "run", "tests.test_journal_hardening:CAPPING_AGENT",
         "go", "--store", str(path), *(["--json"] if as_json else [])],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    if not as_json:
        (line,) = journal_failure_lines(done.stderr)  # the error, said once
        assert line.startswith("error: the journal of run ") and "free some space" in line
        assert "lead  failed" in done.stdout and "items#1  ok" in done.stdout
        assert "cap_journal#1  ok" in done.stdout  # ran: it shows as it ended
        return
    shown = json.loads(done.stdout)
    assert shown["status"] == "failed" and shown["error"]["type"] == "JournalWriteError"
    assert [c["tool"] for c in shown["calls"]] == ["items", "cap_journal"]
    assert shown["calls"][0]["status"] == "ok"  # ran before: its effects happened
    assert shown["usage"]["requests"] == 2  # not asked again once its journal had failed
    assert shown["turns"] == 2, shown["turns"]  # nor a third turn counted, never asked


@shoal.tool
def cap_journal_and_wait() -> str:
    """Cap the journal's growth, then outlast a heartbeat (which writes the tree's events)."""
    cap_journal()
    time.sleep(2.5)
    return "waited"


def test_an_agent_whose_journal_fails_between_its_steps_shows_what_it_ran(
        tmp_path: Path) -> None:
    # the heartbeat's write (or, on a slow machine, the end record's) is the one that fails:
    # either way the run stops, and the tree and the error are shown, not the error alone
    (tmp_path / "waiting.py").write_text(
        "import shoal\nfrom shoal.testing import ScriptedModel, call\n"
        "from tests.test_journal_hardening import cap_journal_and_wait\n"
        "agent = shoal.Agent(name='lead', model=ScriptedModel([[call('cap_journal_and_wait')],"
        " 'done']), tools=[cap_journal_and_wait])\n")
    path = journal_with_a_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "run", "waiting:agent", "go", "--store", str(path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
                           "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    (line,) = journal_failure_lines(done.stderr)
    assert "free some space" in line
    assert "lead  failed" in done.stdout and "cap_journal_and_wait#1" in done.stdout


@pytest.fixture
def read_only_file(tmp_path: Path) -> Iterator[Path]:
    """A journal file that cannot be written, in a folder that can (a read-only bind mount
    of the file as root)."""
    path = journal_with_a_run(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        f"nodes:\n  - {{id: t, tool: 'tests.test_journal_hardening:touch', "
        f"args: {{path: {str(tmp_path / 'touched')!r}}}}}\n")
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield path
        path.chmod(0o644)
        return
    with bound_read_only(path, path, "file"):
        yield path


@shoal.tool
def touch(path: str) -> str:
    """Create ``path``: a side effect a run that cannot be journaled must not have."""
    Path(path).touch()
    return path


def test_a_run_on_a_read_only_journal_file_stops_with_one_line_and_runs_nothing(
        read_only_file: Path) -> None:
    where = read_only_file.parent
    done = shoal_cli("run", "plan.yaml", "--store", str(read_only_file), cwd=where)
    assert done.returncode == 2, done.stderr
    (line,) = journal_failure_lines(done.stderr)
    assert line.startswith("error: ") and "read-only: make it writable" in line
    assert not (where / "touched").exists()


def test_read_only_opening_refuses_what_is_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(StoreError, match="no shoal journal"):
        SQLiteStore(tmp_path / "empty.db", read_only=True)
    (tmp_path / "junk.db").write_bytes(b"junk" * 300)
    with pytest.raises(StoreError, match="not a database"):
        SQLiteStore(tmp_path / "junk.db", read_only=True)
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(tmp_path / "missing.db", read_only=True)


@pytest.fixture(scope="module")
def unlucky_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal holding one run of the ``unlucky`` agent by ``shoal run``, made once."""
    where = tmp_path_factory.mktemp("unlucky")
    done = shoal_cli("run", str(ROOT / "tests/newcomer_agents.py:unlucky"), "look up a and b",
                     "--store", str(where / "runs.db"), cwd=ROOT)
    assert done.returncode in (0, 1), done.stderr
    return where


@pytest.fixture
def unlucky_run(unlucky_journal: Path, tmp_path: Path) -> Path:
    """``tmp_path``, holding a copy of that journal (``runs.db``) for the test to damage.

    A copy of the folder costs nothing; a ``shoal run`` for each test cost seconds.
    """
    shutil.copytree(unlucky_journal, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_resuming_a_step_of_an_agent_run_names_the_agent_run(unlucky_run: Path) -> None:
    store = str(unlucky_run / "runs.db")
    runs = json.loads(shoal_cli("runs", "--store", store, "--json", cwd=ROOT).stdout)
    root = runs[0]["run_id"]
    steps = json.loads(shoal_cli("runs", "--steps", "--store", store, "--json", cwd=ROOT).stdout)
    step = next(r["run_id"] for r in steps if r["run_id"].endswith("/steps"))
    refused = shoal_cli("resume", step, "--store", store, "--json", cwd=ROOT)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (f"error: run {step!r} is a step of agent run {root!r}; resume "
                              f"the agent run: shoal resume {root}\n")
    assert json.loads(refused.stdout)["error"] == "journal"


@shoal.tool
def flaky(marker: str, seconds: float) -> str:
    """Fail until ``marker`` exists, then take ``seconds`` and succeed."""
    if not Path(marker).exists():
        raise RuntimeError("not yet")
    time.sleep(seconds)
    return "done"


def test_a_cancel_request_the_run_never_took_does_not_cancel_its_resume(tmp_path: Path) -> None:
    # shoal cancel raced the run's end: the request was written after the run stopped looking
    marker = tmp_path / "fixed"
    plan = shoal.Plan(name="p")
    plan.add(flaky, {"marker": str(marker), "seconds": 1.0}, node_id="a")
    store = SQLiteStore(tmp_path / "runs.db")
    assert not shoal.Runtime(store=store).run_sync(plan, run_id="r").ok
    store.request_cancel("r", reason="too late")
    marker.touch()
    resumed = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")).resume_sync("r", plan)
    assert resumed["a"].status == "ok", resumed["a"]
    assert store.open_cancel_requests("r") == 0  # dropped, not left for a later session


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_process_that_ended_but_was_not_reaped_is_not_alive() -> None:
    # a run killed with kill -9 stays a zombie until its parent reaps it: it runs nothing
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
    try:
        assert not process_alive(child.pid)
    finally:
        child.wait()
    assert process_alive(os.getpid())


def test_shoal_cancel_of_a_run_that_dies_while_it_waits_says_so_at_once(tmp_path: Path) -> None:
    path = journal_with_a_run(tmp_path, "r")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        store = SQLiteStore(path)
        record = store.get_run("r")
        assert record is not None  # now "running" in the holder, as far as the journal says
        store.write([dataclasses.replace(record, status="running", finished_at=None,
                                         pid=holder.pid, host=socket.gethostname(),
                                         pid_start=process_start(holder.pid),
                                         heartbeat=time.time() + 60)])
        began = time.monotonic()
        cancel = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.app", "cancel", "r", "--store", str(path),
             "--wait", "100"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE, text=True)
        while not store.open_cancel_requests("r"):  # it asked; the run never looks
            assert time.monotonic() - began < 60
            time.sleep(0.05)
        holder.kill()
        holder.wait()
        _, err = cancel.communicate(timeout=60)
        assert cancel.returncode == 1, err
        # the run was started from Python (journal_with_a_run), which shoal resume refuses
        assert err == ("run r is not running (it is interrupted); resume it with: Runtime.resume"
                       " from Python (it was not started from a plan file)\n")
        assert time.monotonic() - began < 60  # not the 100 s it was willing to wait
    finally:
        holder.kill()
        holder.wait()


def test_resume_whose_plan_file_is_unreadable_uses_the_copy_in_the_journal(
        tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    store = str(tmp_path / "runs.db")
    assert shoal_cli("run", "plan.yaml", "--store", store, cwd=tmp_path).returncode == 0
    run_id = json.loads(shoal_cli("runs", "--store", store, "--json", cwd=tmp_path).stdout)[0][
        "run_id"]
    plan_file.unlink()
    for spoil, why in ((plan_file.mkdir, "cannot be read (cannot read"),
                       (lambda: plan_file.write_bytes(b"\xff\xfe"), "is no longer UTF-8 text")):
        spoil()
        resumed = shoal_cli("resume", run_id, "--store", store, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert f"plan.yaml {why}" in resumed.stderr
        assert "; resuming with the copy kept in the journal" in resumed.stderr
        assert "Is a directory" in resumed.stderr or "UTF-8" in why
        assert "Traceback" not in resumed.stderr
        if plan_file.is_dir():
            plan_file.rmdir()


class Refusing:
    """Loads from a pickle only while :data:`LOADS` says so (its code changed meanwhile)."""

    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: dict[str, int]) -> None:
        if not LOADS:
            raise TypeError("Refusing() takes a newer state")
        self.__dict__.update(state)


LOADS = True


@shoal.tool
def refusing() -> Refusing:
    """A value whose class will refuse its pickle."""
    return Refusing()


def test_a_pickle_its_changed_class_refuses_is_in_doubt_not_damage(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   ) -> None:
    plan = shoal.Plan(name="p")
    plan.add(refusing, {}, node_id="r")
    assert shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")).run_sync(plan, run_id="x").ok
    monkeypatch.setattr(sys.modules[__name__], "LOADS", False)
    stored = SQLiteStore(tmp_path / "runs.db").outcomes("x")["r"]
    assert not stored.damaged and not stored.replayable and stored.encoding == "pickle"
    resumed = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")).resume_sync("x", plan)
    assert resumed["r"].status == "in_doubt"
    assert "journaled as a pickle that does not load here" in resumed["r"].reason


@pytest.mark.parametrize(("edit", "problem"), [
    ({"path": 7}, "runs.source: 'path' is 7, not str"),
    ({"settings": [1]}, "runs.source: 'settings' is [1], not dict or NoneType"),
    ({"settings": {"max_concurrency": "many"}},
     "runs.source.settings: 'max_concurrency' is 'many', not int or NoneType"),
])
def test_resume_of_a_run_whose_source_was_edited_reports_the_damage(
        tmp_path: Path, edit: dict[str, object], problem: str) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    store = tmp_path / "runs.db"
    assert shoal_cli("run", "plan.yaml", "--store", str(store), cwd=tmp_path).returncode == 0
    with sqlite3.connect(store) as db:
        run_id, source = db.execute("SELECT run_id, source FROM runs").fetchone()
        db.execute("UPDATE runs SET source = ?", (json.dumps(json.loads(source) | edit),))
    db.close()
    resumed = shoal_cli("resume", run_id, "--store", str(store), cwd=tmp_path)
    assert resumed.returncode == 2, resumed.stderr
    assert resumed.stderr.startswith("error: the journal is damaged") and problem in resumed.stderr


def test_resume_of_an_agent_run_whose_source_lost_its_target_reports_the_damage(
        unlucky_run: Path) -> None:
    store = unlucky_run / "runs.db"
    with sqlite3.connect(store) as db:
        run_id, source = db.execute("SELECT run_id, source FROM runs WHERE run_id NOT LIKE "
                                    "'%/%'").fetchone()
        data = json.loads(source)
        del data["target"]
        db.execute("UPDATE runs SET source = ? WHERE run_id = ?", (json.dumps(data), run_id))
    db.close()
    resumed = shoal_cli("resume", run_id, "--store", str(store), cwd=ROOT)
    assert resumed.returncode == 2, resumed.stderr
    assert "runs.source: 'target' is missing" in resumed.stderr
    assert "Traceback" not in resumed.stderr


@pytest.mark.parametrize(("path", "value", "problem"), [
    (("turns",), "x", "runs.source.result.turns: 'x' is not int"),
    (("status",), "\ud800", "runs.source.result.status: '\\ud800' is not an agent status"),
    (("calls",), 5, "runs.source.result.calls: 5 is not list"),
    (("calls", 0, "duration"), None, "runs.source.result.calls[0].duration: None is not int or "
                                      "float"),
])
def test_an_agent_run_whose_journaled_tree_was_edited_is_listed_and_shown_as_damaged(
        unlucky_run: Path, path: tuple[object, ...], value: object, problem: str) -> None:
    store = unlucky_run / "runs.db"
    with sqlite3.connect(store) as db:
        run_id, source = db.execute("SELECT run_id, source FROM runs WHERE run_id NOT LIKE "
                                    "'%/%'").fetchone()
        data = json.loads(source)
        inner = data["result"]
        for key in path[:-1]:
            inner = inner[key]
        inner[path[-1]] = value
        db.execute("UPDATE runs SET source = ? WHERE run_id = ?", (json.dumps(data), run_id))
    db.close()
    for command in (["runs"], ["show", run_id]):
        done = shoal_cli(*command, "--store", str(store), cwd=ROOT)
        assert done.returncode == 0 and not done.stderr, done.stderr
        listed = shoal_cli(*command, "--store", str(store), "--json", cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
        json.loads(listed.stdout, parse_constant=lambda name: pytest.fail(name))
    shown = shoal_cli("show", run_id, "--store", str(store), "--json", cwd=ROOT)
    assert json.loads(shown.stdout)["damaged"] == problem


def test_one_writer_thread_journals_a_swarm_and_ends_with_it(tmp_path: Path) -> None:
    # each subagent's steps run is a run of its own: it had a writer thread of its own, each
    # polling the file five times a second (a thousand subagents, a thousand threads)
    seen: list[int] = []

    def count(_: object) -> None:
        seen.append(sum(t.name.startswith("shoal-journal") for t in threading.enumerate()))

    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt({"*": ["done"]},
                                                                       latency=0.05))
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[call("worker", task=f"job {i}") for i in range(60)], "all done"]), subagents=[worker])
    result = lead.run_sync("go", runtime=shoal.Runtime(store=tmp_path / "runs.db"),
                           on_event=count, budget=shoal.Budget(fan_out=60, subagents=60))
    assert result.ok and len(result.children) == 60
    assert seen and max(seen) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("shoal-journal")]
    store = SQLiteStore(tmp_path / "runs.db")
    try:  # every steps run journaled, and ended
        steps = [r for r in store.list_runs(limit=100) if r.run_id.endswith("/steps")]
        assert len(steps) == 61 and {r.status for r in steps} == {"finished"}
    finally:
        store.close()


def test_a_swarms_steps_runs_take_no_lock_of_their_own_and_cannot_be_resumed_meanwhile(
        tmp_path: Path) -> None:
    # a claim is a lock file made and removed (milliseconds each on a busy disk): one per
    # subagent made a journaled swarm of 1,000 ten times slower; the tree's claim covers them
    db = tmp_path / "runs.db"
    locks: list[int] = []
    refused: list[BaseException] = []

    @shoal.tool
    def look() -> str:
        """Count the lock files; try to resume this very steps run on its own."""
        locks.append(len(list(Path(f"{db}-locks").iterdir())))
        try:
            shoal.Runtime(store=db).resume_sync("swarm/lead/worker#1/steps", shoal.Plan())
        except shoal.RunActiveError as exc:
            refused.append(exc)
        return "looked"

    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt(
        {"*": [[call("look")], "done"]}), tools=[look])
    lead = shoal.Agent(name="lead", model=ScriptedModel(
        [[call("worker", task=f"job {i}") for i in range(20)], "all done"]), subagents=[worker])
    result = lead.run_sync("go", runtime=shoal.Runtime(store=db), run_id="swarm",
                           budget=shoal.Budget(fan_out=20, subagents=20))
    assert result.ok and len(locks) == 20
    assert set(locks) == {1}  # the tree's own, nothing per subagent
    assert len(refused) == 20 and all("swarm" in str(exc) for exc in refused)
