"""Process workers forked from a template process: warm starts that keep every guarantee.

A worker forked from the template is isolated and limited as one started afresh; a template
that dies is replaced (or its failure reported), never waited on forever; killing the parent
leaves neither the template nor a worker behind; many workers can start at once.
"""

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from shoal import WorkerCrashedError
from shoal.exceptions import ConfigError, ExecutorError
from shoal.executors import _reaper
from shoal.executors._template import Template, fork_supported
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from shoal.tools import Tool
from tests import process_tools as pt
from tests.conftest import arun, until, wait_until
from tests.conftest import pid_gone as gone

pytestmark = [pytest.mark.usefixtures("no_child_process_leak"),
              pytest.mark.skipif(not fork_supported(), reason="workers are forked on Linux only")]

ROOT = Path(__file__).resolve().parents[1]
SLOW = 120.0  # arun's limit: a loaded machine may take seconds to start the template


def a_call(target: Tool[..., Any], **args: Any) -> Call:
    return Call(0, "node", target, args, 1, "process", None, "run")


def test_a_forked_worker_is_isolated_and_limited_as_before(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-template-secret")
    monkeypatch.setenv("ASKED_FOR", "visible")
    monkeypatch.chdir(tmp_path)
    limited = pt.environment.options(limits={"open_files": 64, "memory": "2GiB"},
                                     env=["ASKED_FOR"])

    async def main() -> None:
        executor = ProcessExecutor(2)
        try:
            assert executor.start_method == "template"
            env = await executor.execute(a_call(limited))
            inner = await executor.execute(a_call(pt.pid.options(
                limits={"open_files": 64, "memory": "2GiB"}, env=["ASKED_FOR"])))
            template = executor.template_pid
            assert template is not None
            # forked by the template (the worker's stand-in is its child), not spawned
            assert [psutil.Process(p).ppid() for p in executor.worker_pids] == [template]
            assert "shoal.executors._template" in " ".join(psutil.Process(inner).cmdline())
            # the profile's environment and limits, and nothing of the parent's secrets,
            # not even in the environment the process was started with
            assert env["ASKED_FOR"] == "visible" and "OPENAI_API_KEY" not in env
            for pid in (template, inner):
                assert "OPENAI_API_KEY" not in psutil.Process(pid).environ()
            assert psutil.Process(inner).rlimit(psutil.RLIMIT_NOFILE) == (64, 64)
            assert psutil.Process(inner).rlimit(psutil.RLIMIT_AS) == (2 * 2**30,) * 2
            assert psutil.Process(inner).cwd() == str(tmp_path)
            assert os.getsid(inner) != os.getsid(0)  # a session of its own
            # a crash fails its own call; the pool goes on with a fresh fork
            with pytest.raises(WorkerCrashedError, match="SIGSEGV"):
                await executor.execute(a_call(pt.segfault))
            assert await executor.execute(a_call(pt.square, x=7)) == 49
        finally:
            await executor.close()
        assert executor.template_pid is None
        # killed with its worker's group; the tool's process, a child of the worker's
        # stand-in, may take a moment more to die than the worker takes to be reaped
        await until(lambda: gone(template) and gone(inner), within=10)

    arun(main(), timeout=SLOW)


def test_a_killed_template_is_replaced_and_its_workers_die_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "busy.pid"

    async def main() -> None:
        executor = ProcessExecutor(3)
        try:
            idle = await executor.execute(a_call(pt.pid))
            busy = asyncio.ensure_future(executor.execute(
                a_call(pt.sleep_forever, pid_file=str(pid_file))))
            await until(lambda: pid_file.exists() and pid_file.read_text(), every=0.02)
            template = executor.template_pid
            assert template is not None
            os.kill(template, signal.SIGKILL)
            # the busy call fails at once, saying why; nothing hangs
            with pytest.raises(WorkerCrashedError, match="template process"):
                await asyncio.wait_for(busy, 30.0)
            assert wait_until(lambda: gone(idle) and gone(int(pid_file.read_text())), 10.0)
            # the next worker starts from a new template
            again = await asyncio.wait_for(executor.execute(a_call(pt.pid)), 60.0)
            assert again != idle
            assert executor.template_pid not in (None, template)
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


def sleeps(token: str) -> list[psutil.Process]:
    """Live ``sleep <token>`` processes, wherever they were reparented."""
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == ["sleep", token] and p.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("how", ["session", "double_fork"])
def test_what_a_tool_started_dies_with_a_killed_template(how: str, tmp_path: Path) -> None:
    token = f"300.{secrets.randbelow(10**9)}"  # a unique sleep to find the tool's process by
    ready = tmp_path / "ready"

    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            busy = asyncio.ensure_future(executor.execute(a_call(
                pt.spawn_detached, seconds=token, how=how, ready_file=str(ready), stay=True)))
            await until(lambda: ready.exists(), every=0.02)
            assert wait_until(lambda: bool(sleeps(token)), 10.0)
            template = executor.template_pid
            assert template is not None
            os.kill(template, signal.SIGKILL)
            with pytest.raises(WorkerCrashedError, match="template process"):
                await asyncio.wait_for(busy, 30.0)
            # out of the worker's group and session, yet ended with it
            assert wait_until(lambda: not sleeps(token), 10.0), sleeps(token)
        finally:
            await executor.close()
            for leftover in sleeps(token):
                leftover.kill()

    arun(main(), timeout=SLOW)


def test_a_template_that_cannot_start_is_reported_not_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHOME", str(Path(os.devnull) / "nowhere"))  # Python cannot start

    async def main() -> None:
        executor = ProcessExecutor(1, pass_env=["PYTHONHOME"])
        try:
            t0 = time.perf_counter()
            with pytest.raises(ExecutorError, match=r"template process .* ended twice"):
                await executor.execute(a_call(pt.pid))
            assert time.perf_counter() - t0 < 60
            assert executor.worker_pids == [] and executor.template_pid is None
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


def test_killing_the_parent_leaves_no_template_and_no_worker(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    busy_file = tmp_path / "busy.pid"
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from shoal.executors.base import Call
        from shoal.executors.process import ProcessExecutor
        from tests import process_tools as pt

        def call(target, **args):
            return Call(0, "node", target, args, 1, "process", None, "run")

        async def main():
            executor = ProcessExecutor(3)
            asyncio.ensure_future(executor.execute(
                call(pt.sleep_forever, pid_file={str(busy_file)!r})))
            while not os.path.exists({str(busy_file)!r}) or not open({str(busy_file)!r}).read():
                await asyncio.sleep(0.02)
            idle = await executor.execute(call(pt.pid))  # a second worker, idle from here
            pids = [executor.template_pid, idle, *executor.worker_pids]
            with open({str(pids_file)!r}, "w") as f:
                f.write(" ".join(map(str, pids)))
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    parent = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=SLOW,
                            capture_output=True, text=True)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    pids = [*map(int, pids_file.read_text().split()), int(busy_file.read_text())]
    assert len(set(pids)) == 5  # the template, two workers and their stand-ins
    assert wait_until(lambda: all(gone(p) for p in pids), timeout=15.0), [
        p for p in pids if not gone(p)]


def test_an_ending_template_kills_its_workers_with_one_look_at_the_process_table(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed one tree at a time, each worker cost two walks of ``/proc`` while the rest ran on."""
    walks = 0
    walk = _reaper._parents

    def counted() -> dict[int, int]:
        nonlocal walks
        walks += 1
        return walk()

    # workers as the template holds them: its children, each with a child of its own
    workers = [subprocess.Popen(["sh", "-c", "sleep 300 & wait"]) for _ in range(6)]
    ours, theirs = socket.socketpair()
    try:
        template = Template(ours)
        template.running = {index: (worker.pid, -1) for index, worker in enumerate(workers)}
        grandchildren = [psutil.Process(w.pid).children for w in workers]
        assert wait_until(lambda: all(len(children()) == 1 for children in grandchildren), 10.0)
        sleeps = [children()[0].pid for children in grandchildren]
        monkeypatch.setattr(_reaper, "_parents", counted)
        template.end_workers()
        assert walks <= 3, walks  # one that freezes every tree, one that finds no more
        assert all(gone(w.pid) for w in workers)
        assert wait_until(lambda: all(gone(pid) for pid in sleeps), 10.0)
    finally:
        ours.close()
        theirs.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()  # reaped already by the template: this only settles the Popen


def test_a_template_whose_parent_dies_while_it_imports_ends_at_once() -> None:
    """It reads its socket only once its imports are done: its death signal ends it before."""
    script = textwrap.dedent("""
        from shoal.executors.process import _TemplateHandle, worker_env

        template = _TemplateHandle()
        template.start(worker_env(("PYTHONPATH", "SLOW_IMPORT")), ("tests.slow_import",))
        print(template.pid, flush=True)
    """)  # and this parent ends, its template still importing for a minute
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLOW_IMPORT": "60"}
    started = time.monotonic()
    parent = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, timeout=SLOW,
                            capture_output=True, text=True)
    # the template holds the output pipe too: the run returns once both have ended
    took = time.monotonic() - started
    assert parent.returncode == 0, parent.stderr
    assert took < 30, (took, parent.stderr)
    # its files closed as it began to exit: dead, or nearly
    assert wait_until(lambda: gone(int(parent.stdout)), timeout=10.0)


def test_many_workers_start_at_once() -> None:
    count = 16

    async def main() -> None:
        executor = ProcessExecutor(count)
        try:
            t0 = time.perf_counter()
            pids = await asyncio.gather(*(executor.execute(a_call(pt.burn, seconds=0.3))
                                          for _ in range(count)))
            elapsed = time.perf_counter() - t0
            assert len(set(pids)) == count  # each call had a worker of its own
            assert len(executor.worker_pids) == count
            template = executor.template_pid
            assert all(psutil.Process(p).ppid() == template for p in executor.worker_pids)
            print(f"\n{count} workers forked and busy together: {elapsed:.2f} s")
        finally:
            await executor.close()
        # SIGKILLed at close; on a busy machine the kernel may take a moment to end them
        assert wait_until(lambda: all(gone(p) for p in pids), timeout=10.0)

    arun(main(), timeout=SLOW)


def test_spawn_is_still_there_and_the_start_method_is_checked() -> None:
    with pytest.raises(ConfigError, match="start_method"):
        ProcessExecutor(1, start_method="forkserver")

    async def main() -> None:
        executor = ProcessExecutor(1, start_method="spawn")
        try:
            assert await executor.execute(a_call(pt.square, x=3)) == 9
            assert executor.template_pid is None
            (worker,) = executor.worker_pids
            assert psutil.Process(worker).ppid() == os.getpid()
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


def test_the_template_refuses_to_fork_once_it_has_a_thread() -> None:
    # Run in a process of its own: the template's loop, one request, and a thread started
    # beforehand (a fork then could copy a lock that thread holds).
    script = textwrap.dedent(f"""
        import os, pickle, socket, sys, threading, time
        sys.path.insert(0, {str(ROOT)!r})
        from shoal.executors._template import Template

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        template = Template(theirs)
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        (r1, w1), (r2, w2), (r3, w3) = os.pipe(), os.pipe(), os.pipe()
        socket.send_fds(ours, [pickle.dumps(("worker", {{}}, None))], [r1, w2, w3])
        assert template.request()
        print(ours.recv(4096).decode())
        print(len(os.listdir("/proc/self/fd")))  # the descriptors it was sent are closed
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=SLOW,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reply, fds = done.stdout.splitlines()
    assert reply == "noRuntimeError: the template process has 2 threads, not one"
    assert int(fds) == 3 + 2 + 6 + 1  # stdio, the socket pair, six pipe ends, the listing


def test_cancelling_a_start_leaves_the_template_and_the_other_workers_alone() -> None:
    async def main() -> None:
        executor = ProcessExecutor(8)
        try:
            busy = asyncio.ensure_future(executor.execute(a_call(pt.burn, seconds=1.0)))
            await executor.execute(a_call(pt.square, x=2))  # the template is up from here
            template = executor.template_pid
            for delay in (0.0, 0.001, 0.002, 0.005, 0.01, 0.02):  # at every stage of a start
                starting = asyncio.ensure_future(executor.execute(a_call(
                    pt.pid.options(limits={"open_files": 1000 + int(delay * 1000)}))))
                await asyncio.sleep(delay)
                starting.cancel()  # a start that is done already just keeps its worker
                await asyncio.gather(starting, return_exceptions=True)
            assert isinstance(await busy, int)  # the busy worker lived through it all
            assert executor.template_pid == template
            assert await executor.execute(a_call(pt.square, x=3)) == 9
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


@pytest.mark.parametrize("start_method", ["template", "spawn"])
def test_a_start_cancelled_as_its_pipes_are_attached_ends_cancelled(start_method: str) -> None:
    # A Ctrl-C landing while a new worker's pipes were being attached closed the worker's
    # process handle with its pipes; reaping it then raised ValueError (a closed descriptor),
    # so the call the user cancelled ended failed, and the worker was never killed.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        attach = loop.connect_read_pipe
        stops: list[int] = []

        async def cancelled_meanwhile(*args: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the cancel comes as the worker's reply pipe is being attached
            stops.append(1)
            return await attach(*args)

        executor = ProcessExecutor(2, start_method=start_method)
        try:
            loop.connect_read_pipe = cancelled_meanwhile  # type: ignore[method-assign,assignment]
            starting = asyncio.ensure_future(executor.execute(a_call(pt.square, x=2)))
            outcome = await asyncio.gather(starting, return_exceptions=True)
            loop.connect_read_pipe = attach  # type: ignore[method-assign]
            assert stops == [1]
            assert [type(o) for o in outcome] == [asyncio.CancelledError], outcome
            assert executor.worker_pids == []  # its worker was killed and reaped
            assert await executor.execute(a_call(pt.square, x=3)) == 9  # the pool goes on
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)
