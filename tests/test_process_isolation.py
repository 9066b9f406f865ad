"""What process isolation protects against, checked with real workers and real subprocesses.

* Replies from workers are loaded with the restricted loader: a tool cannot run code in the
  parent through its result or its exception; the call fails, the run lives on.
* Processes a tool starts (in a session of their own, or double-forked) end with the call's
  timeout, its cancellation, the runtime's close, and the parent's death.
* With ``process_sandbox="namespace"`` a tool cannot read the parent's environment through
  ``/proc`` (without it, it can: the README says so, and a test here shows it).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

import shoal
from shoal import Plan, Runtime
from shoal.exceptions import ConfigError
from shoal.executors import process as process_module
from shoal.executors._worker import REPLY_MARK
from shoal.executors.process import sandbox_problem as problem
from shoal.executors.results import allow_result_types
from tests import process_tools as pt
from tests import test_conformance
from tests.conftest import arun, until, wait_until

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_PROBLEM = problem()
needs_sandbox = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                                   reason=f"namespace sandbox unavailable: {SANDBOX_PROBLEM}")
SANDBOXES = ["none", pytest.param("namespace", marks=needs_sandbox)]


# ---- results cannot run code in the parent -------------------------------------------------


def test_a_result_that_would_run_code_fails_the_call_and_the_run_goes_on(tmp_path: Path) -> None:
    marker = tmp_path / "ran-in-parent"
    plan = Plan()
    bad = plan.call(pt.trap, command=f"touch {marker}")
    after = plan.call(pt.square, x=plan.call(pt.square, x=3))
    result = shoal.run_sync(plan, process_workers=1)
    outcome = result[bad]
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.type == "shoal.exceptions.SerializationError"
    assert f"it names {os.system.__module__}.system" in outcome.error.message
    assert result[after].value == 81  # the same worker, the same run
    assert not marker.exists()


def test_a_result_that_would_fill_the_parents_memory_fails_the_call() -> None:
    plan = Plan()
    bad = plan.call(pt.hoard)
    after = plan.call(pt.square, x=4)
    result = shoal.run_sync(plan, process_workers=1)
    error = result[bad].error
    assert error is not None and error.type == "shoal.exceptions.SerializationError"
    assert "it builds list from range(0, 1000000000000)" in error.message
    assert result[after].value == 16


def test_an_exception_that_would_run_code_comes_back_by_name_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran-in-parent"
    plan = Plan()
    bad = plan.call(pt.trap_error, command=f"touch {marker}")
    result = shoal.run_sync(plan, process_workers=1)
    error = result[bad].error
    assert result[bad].status == "failed" and error is not None
    assert error.type == "tests.process_tools.TrapError" and f"touch {marker}" in error.message
    assert "(the exception was refused: it names posix.system" in error.traceback.replace(
        os.system.__module__, "posix")
    assert not marker.exists()


def test_functions_are_refused_unless_the_tool_is_trusted() -> None:
    plan = Plan()
    refused = plan.call(pt.make_function, offset=1)
    trusted = plan.call(pt.make_function.options(trust_results=True), offset=2)
    result = shoal.run_sync(plan, process_workers=1)
    assert result[refused].status == "failed"
    assert "cloudpickle" in result[refused].error.message  # type: ignore[union-attr]
    assert result[trusted].value(40) == 42


def test_a_class_the_application_allows_comes_back_from_a_worker() -> None:
    plan = Plan()
    ref = plan.call(pt.plain, value=5)
    first = shoal.run_sync(plan, process_workers=1)[ref]
    assert first.status == "failed"
    assert "tests.process_tools.Plain, a class that is not allowed" in first.error.message  # type: ignore[union-attr]
    allow_result_types(pt.Plain)
    assert shoal.run_sync(plan, process_workers=1)[ref].value == pt.Plain(5)


def test_trust_results_must_be_a_bool() -> None:
    with pytest.raises(shoal.ToolDefinitionError, match="trust_results must be True or False"):
        pt.square.options(trust_results="yes")


# ---- every process a tool starts ends with its call -----------------------------------------


def sleeps(token: str) -> list[psutil.Process]:
    """Live ``sleep <token>`` processes, wherever they were reparented."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", token] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


@pytest.fixture
def token() -> Iterator[str]:
    """A unique ``sleep`` duration, to find the tool's detached processes by; kills leftovers."""
    # not the random module: a seeded one (hypothesis seeds it) would give two test runs on
    # one machine the same token, and one run's cleanup would kill the other's sleep
    value = f"300.{secrets.randbelow(10**9)}"
    yield value
    for proc in sleeps(value):  # a failing test must not leave them behind
        proc.kill()


def skip_impossible(how: str, sandbox: str) -> None:
    """Process 1 of a PID namespace may not clone(CLONE_PARENT): nothing to check there."""
    if how == "sibling" and sandbox == "namespace":
        pytest.skip("the kernel refuses clone(CLONE_PARENT) to process 1 of a PID namespace")


def detached(token: str, how: str, tmp_path: Path, stay: bool,
             **options: Any) -> tuple[Plan, Any, Path]:
    ready = tmp_path / "ready"
    plan = Plan()
    ref = plan.call(pt.spawn_detached.options(**options), seconds=token, how=how,
                    ready_file=str(ready), stay=stay)
    return plan, ref, ready


HOWS = ["session", "double_fork", "hundred_deaf", "stopped_group",
        pytest.param("sibling", marks=pytest.mark.skipif(
            not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
            reason="clone(CLONE_PARENT) by system call number: x86-64 Linux"))]


def timeout_to_start(how: str) -> float:
    """A timeout that leaves the tool ample time to start its sleeps and the test to see them.

    The timeout counts from the call's start in a worker already up (its start does not count).
    Starting one sleep (or a Python that starts it) and seeing it took under 0.1 s with three
    busy loops on two cores: 1 s is over ten times that. A hundred shells took up to 0.5 s.
    """
    return 2.0 if how == "hundred_deaf" else 1.0


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("how", HOWS)
def test_a_timeout_ends_what_the_tool_started(how: str, sandbox: str, token: str,
                                              tmp_path: Path) -> None:
    skip_impossible(how, sandbox)
    plan, ref, ready = detached(token, how, tmp_path, stay=True, timeout=timeout_to_start(how))

    async def main() -> None:
        async with Runtime(process_workers=1, process_sandbox=sandbox) as runtime:
            handle = runtime.start(plan)
            await until(lambda: ready.exists(), every=0.02)
            assert sleeps(token)  # started, and outside the worker's process group
            result = await handle
            assert result[ref].status == "timed_out"
            assert wait_until(lambda: not sleeps(token)), sleeps(token)  # before close

    arun(main(), timeout=60)


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("how", HOWS)
def test_a_cancellation_ends_what_the_tool_started(how: str, sandbox: str, token: str,
                                                   tmp_path: Path) -> None:
    skip_impossible(how, sandbox)
    plan, ref, ready = detached(token, how, tmp_path, stay=True)

    async def main() -> None:
        async with Runtime(process_workers=1, process_sandbox=sandbox) as runtime:
            handle = runtime.start(plan)
            await until(lambda: ready.exists(), every=0.02)
            assert sleeps(token)
            handle.cancel()
            assert (await handle)[ref].status == "cancelled"
            assert wait_until(lambda: not sleeps(token)), sleeps(token)

    arun(main(), timeout=60)


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("how", HOWS)
def test_closing_the_runtime_ends_what_finished_tools_started(how: str, sandbox: str,
                                                              token: str, tmp_path: Path) -> None:
    skip_impossible(how, sandbox)
    plan, ref, _ = detached(token, how, tmp_path, stay=False)

    async def main() -> None:
        async with Runtime(process_workers=1, process_sandbox=sandbox) as runtime:
            assert (await runtime.run(plan))[ref].status == "ok"
            assert sleeps(token)  # the call is over, its sleep lives on until the close

    arun(main(), timeout=60)
    assert wait_until(lambda: not sleeps(token)), sleeps(token)


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("how", HOWS)
def test_killing_the_parent_ends_what_the_tools_started(how: str, sandbox: str, token: str,
                                                        tmp_path: Path) -> None:
    skip_impossible(how, sandbox)
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from shoal import Plan, Runtime
        from tests import process_tools as pt

        async def main():
            runtime = Runtime(process_workers=1, process_sandbox={sandbox!r})
            plan = Plan()
            plan.call(pt.spawn_detached, seconds={token!r}, how={how!r},
                      ready_file={str(ready)!r}, stay=True)
            runtime.start(plan)
            while not os.path.exists({str(ready)!r}):
                await asyncio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    # the tool's sleep inherits no pipe of ours: run() returns when the parent dies
    parent = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    assert wait_until(lambda: not sleeps(token), timeout=5.0), sleeps(token)


def test_a_crash_ends_what_the_tool_started_in_the_workers_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    plan = Plan()
    ref = plan.call(pt.spawn_then_crash, pid_file=str(pid_file))
    result = shoal.run_sync(plan, process_workers=1)
    assert result[ref].error.type == "shoal.exceptions.WorkerCrashedError"  # type: ignore[union-attr]
    pid = int(pid_file.read_text())
    assert wait_until(lambda: not psutil.pid_exists(pid)
                      or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a subreaper needs Linux")
@pytest.mark.parametrize("how", ["session", "double_fork", "sibling"])
def test_a_crash_ends_what_the_tool_started_outside_the_workers_group(how: str,
                                                                     token: str) -> None:
    skip_impossible(how, "none" if os.uname().machine == "x86_64" else "namespace")
    plan = Plan()
    ref = plan.call(pt.detach_then_crash, seconds=token, how=how)
    result = shoal.run_sync(plan, process_workers=1)
    assert result[ref].error.type == "shoal.exceptions.WorkerCrashedError"  # type: ignore[union-attr]
    assert "exit code 3" in result[ref].error.message  # type: ignore[union-attr]
    assert wait_until(lambda: not sleeps(token)), sleeps(token)


#: A worker's stand-in forks the worker (see shoal.executors._sandbox.split); argv[1] says when
#: the stand-in dies: ``before`` the worker asks for its death signal, or ``after``.
STAND_IN_DIES = textwrap.dedent("""
    import os, sys, time
    from shoal.executors._sandbox import _die_with

    alive, held = os.pipe()
    stand_in = os.getpid()
    if os.fork():
        os.close(alive)
        if sys.argv[1] == "after":
            time.sleep(0.5)
        os._exit(0)
    os.close(held)
    if sys.argv[1] == "before":
        while os.getppid() == stand_in:  # gone, and its child given to another parent
            time.sleep(0.01)
    _die_with(alive)
    print("past", flush=True)
    time.sleep(40)
    print("outlived its stand-in", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("dies", ["before", "after"])
def test_a_worker_dies_with_its_stand_in_even_one_that_died_as_it_started(dies: str) -> None:
    """The death signal is set after the fork: a stand-in dead by then is caught another way."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STAND_IN_DIES, dies], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    # the worker holds the output pipe until it ends: the run returns once it has
    assert "outlived" not in done.stdout and time.monotonic() - started < 30, done.stdout
    assert done.stdout.split() == ([] if dies == "before" else ["past"]), done.stderr


def test_a_tool_holding_the_callers_pipe_does_not_keep_it_open(token: str) -> None:
    # A detached process inherits the worker's stdout, the caller's pipe: until it ends, a
    # caller reading that pipe to its end (subprocess.run, a shell pipeline) would wait.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import shoal
        from tests import process_tools as pt

        plan = shoal.Plan()
        plan.call(pt.spawn_detached, seconds={token!r}, how="session", ready_file="/dev/null",
                  stay=False)
        print(shoal.run_sync(plan, process_workers=1).counts)
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "'ok': 1" in done.stdout
    assert time.monotonic() - started < 30  # not the 300 s of the sleep
    assert wait_until(lambda: not sleeps(token)), sleeps(token)


# ---- the namespace sandbox -------------------------------------------------------------------


def look_for_secret(sandbox: str) -> dict[str, Any]:
    """Run a parent with a secret in its environment; a tool looks for it in ``/proc``."""
    secret = f"sk-{secrets.randbelow(10**12)}"
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import shoal
        from tests import process_tools as pt

        plan = shoal.Plan()
        ref = plan.call(pt.find_secret, parent=os.getpid(), secret=os.environ["API_KEY"],
                        unmount=True)
        result = shoal.run_sync(plan, process_workers=1, process_sandbox={sandbox!r})
        print(json.dumps({{"parent": os.getpid(), **result[ref].value}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "API_KEY": secret})
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_without_the_sandbox_a_tool_can_read_the_parents_environment() -> None:
    # What the README says plainly: scrubbing the worker's environment does not hide the
    # parent's, which a process of the same user (or root) reads from /proc.
    seen = look_for_secret("none")
    assert seen["parent"] in seen["found"]


@needs_sandbox
def test_in_the_sandbox_a_tool_cannot_read_the_parents_environment() -> None:
    seen = look_for_secret("namespace")
    assert seen["found"] == [] and not seen["sees_parent"]
    assert seen["pid"] == 1  # process 1 of a PID namespace of its own
    assert not seen["unmounted"]  # the host's /proc stays covered


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_worker_inherits_none_of_the_parents_files(sandbox: str, tmp_path: Path) -> None:
    # The journal, the event loop, sockets: none is open in the worker. Without the sandbox a
    # tool still sees them through /proc/<parent>/fd (the README says so); in it, it does not.
    journal = tmp_path / "journal.db"
    plan = Plan()
    node = plan.call(pt.open_files, parent=os.getpid())
    seen = shoal.run_sync(plan, process_workers=1, process_sandbox=sandbox,
                          store=str(journal))[node].value
    assert not [t for t in seen["own"] if str(tmp_path) in t or t.startswith("socket:")]
    assert len(seen["own"]) <= 5  # stdin (/dev/null), stdout, stderr, its two pipes
    if sandbox == "none":
        assert str(journal) in seen["parent"]
    else:
        assert seen["parent"] is None


@needs_sandbox
def test_a_crash_in_the_sandbox_is_reported_as_usual() -> None:
    plan = Plan()
    crash = plan.call(pt.segfault)
    fine = plan.call(pt.square, x=4)
    result = shoal.run_sync(plan, process_workers=1, process_sandbox="namespace")
    assert result[crash].error.type == "shoal.exceptions.WorkerCrashedError"  # type: ignore[union-attr]
    assert "SIGSEGV" in result[crash].error.message  # type: ignore[union-attr]
    assert result[fine].value == 16


@needs_sandbox
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_where_the_kernel_refuses_the_sandbox_calls_fail_saying_why() -> None:
    # A user namespace of our own whose limit on nested user namespaces is 0 stands in for a
    # kernel that forbids them (the limit is per namespace: the machine's is untouched).
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import shoal
        from shoal.executors.process import sandbox_problem
        from tests import process_tools as pt

        print("problem:", sandbox_problem())
        plan = shoal.Plan()
        ref = plan.call(pt.square, x=2)
        error = shoal.run_sync(plan, process_workers=1, process_sandbox="namespace")[ref].error
        print("error:", error.type, error.message)
    """)
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"', sys.executable,
         script], cwd=ROOT, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    for said in (lines["problem"], lines["error"]):
        assert "process_sandbox='namespace' is not available here: unshare(" in said
        assert "No space left on device" in said and "user.max_user_namespaces" in said
    assert lines["error"].startswith("shoal.exceptions.ExecutorError a worker process could "
                                     "not start")


def test_bad_sandbox_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="process_sandbox must be"):
        Runtime(process_sandbox="chroot")
    monkeypatch.setattr("sys.platform", "darwin")
    with pytest.raises(ConfigError, match="needs Linux"):
        process_module.ProcessExecutor(1, sandbox="namespace")


@needs_sandbox
class TestSandboxedProcessConformance(test_conformance.TestProcessConformance):
    """The whole conformance suite, with every worker in the namespace sandbox."""

    runtime_options: ClassVar[dict[str, Any]] = {"process_workers": 2,
                                                 "process_sandbox": "namespace"}


@pytest.mark.parametrize("option", [{"trust_results": True}, {"env": ["API_KEY"]}])
def test_a_plan_file_cannot_widen_what_a_tool_reaches(option: dict[str, Any],
                                                      tmp_path: Path) -> None:
    from shoal.planfile import load_plan

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "tool": "tests.process_tools:make_function",
                                           "args": {"offset": 1}, "options": option}]}))
    with pytest.raises(shoal.PlanError, match="a plan file cannot grant"):
        load_plan(path)


def test_a_worker_announcing_a_huge_reply_costs_only_what_it_sends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The length prefix comes from the untrusted side: allocating it up front would let a
    # tool exhaust the parent's memory with eight bytes.
    import struct
    import tracemalloc

    monkeypatch.setattr(process_module, "_PREALLOCATE", 1 << 20)
    reader = process_module._MessageReader()
    tracemalloc.start()
    try:
        reader.data_received(struct.pack(">4sQ", REPLY_MARK, 1 << 40) + b"x" * 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 21)
    reader.data_received(struct.pack(">4sQ", REPLY_MARK, 3))  # too short a body: still waiting
    assert not reader._messages


def test_messages_larger_than_the_preallocation_arrive_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    monkeypatch.setattr(process_module, "_PREALLOCATE", 10)
    reader = process_module._MessageReader()
    body = bytes(range(256)) * 3
    data = (struct.pack(">4sQ", REPLY_MARK, len(body)) + body
            + struct.pack(">4sQ", REPLY_MARK, 2) + b"ok")
    for start in range(0, len(data), 7):  # in odd-sized pieces
        reader.data_received(data[start:start + 7])
    assert list(reader._messages) == [bytearray(body), bytearray(b"ok")]
