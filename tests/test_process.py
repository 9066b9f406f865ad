"""The process backend: crash safety, timeouts that kill, scrubbed environments, OS limits.

Every test checks (through ``no_child_process_leak``) that no worker process outlives it.
Tools live in :mod:`tests.process_tools` so that workers can import them; a few are defined here
on purpose, to show tools from a test module and from closures travel too.
"""

import asyncio
import contextlib
import gc
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal import (
    ConfigError,
    Plan,
    RemoteToolError,
    Runtime,
    SerializationError,
    Tool,
    ToolDefinitionError,
    ToolQuarantinedError,
    WorkerCrashedError,
    tool,
)
from shoal.executors import _reaper
from shoal.executors.base import Call
from shoal.executors.process import (
    ALLOWED_ENV,
    QUARANTINE_AFTER,
    ProcessExecutor,
    describe_exit,
    worker_env,
)
from shoal.limits import ProcessLimits
from shoal.testing import ScriptedModel
from tests import process_tools as pt
from tests.conftest import arun, until, wait_until
from tests.conftest import pid_gone as gone

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

ROOT = Path(__file__).resolve().parents[1]
SLOW = 60.0  # arun's limit for tests that start many workers (a worker takes ~0.2-0.4 s)


class BudgetError(Exception):
    """A typed error defined in the test module itself, with an extra attribute."""

    def __init__(self, message: str, budget: float = 0.0) -> None:
        super().__init__(message)
        self.budget = budget


@tool(isolation="process")
def triple_here(x: int) -> int:
    return 3 * x


@tool(isolation="process")
def over_budget(budget: float) -> None:
    raise BudgetError("over budget", budget=budget)


def a_call(target: Tool[..., Any], run_id: str = "run", **args: Any) -> Call:
    return Call(0, "node", target, args, 1, "process", None, run_id)


def renamed(target: Tool[..., Any], name: str) -> Tool[..., Any]:
    """The same function under another tool name (quarantine counts per name)."""
    return Tool(target.fn, name=name, policy=target.policy)


def live_workers() -> list[psutil.Process]:
    """Every live worker of this process's pools, however it was started.

    One per worker: the process shoal started (on Linux, the worker's stand-in). A spawned
    worker is this process's child running ``shoal.executors._worker``; a forked one is a child
    of a pool's template (``shoal.executors._template``), the template's own command line.
    """
    found = []
    me = os.getpid()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            parent = child.parent()
            spawned = (child.ppid() == me
                       and "shoal.executors._worker" in " ".join(child.cmdline()))
            forked = (parent is not None and parent.ppid() == me
                      and "shoal.executors._template" in " ".join(parent.cmdline()))
            if spawned or forked:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_live_workers_finds_forked_and_spawned_workers() -> None:
    """The helper the checks below rely on sees workers of either start method."""

    async def main() -> None:
        for method in ("template", "spawn"):
            executor = ProcessExecutor(2, start_method=method)
            try:
                pids = await asyncio.gather(*(executor.execute(a_call(pt.burn, seconds=0.5))
                                              for _ in range(2)))
                assert len(set(pids)) == 2, method  # two workers, side by side
                assert len(live_workers()) == 2, method
            finally:
                await executor.close()
            assert wait_until(lambda: live_workers() == [], 10), method

    arun(main(), timeout=SLOW)


# ---- the pieces ----------------------------------------------------------------------------------


def test_exit_causes_are_named() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGSEGV) == "killed by signal SIGSEGV (segmentation fault)"
    assert describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL (killed; out of memory?)"
    limited = ProcessLimits(cpu_seconds=2)
    assert describe_exit(-signal.SIGXCPU, limited) == (
        "killed by signal SIGXCPU (CPU time limit exceeded: over its limit of cpu_seconds=2)")


def test_the_new_errors_pickle_with_their_attributes() -> None:
    for error in (WorkerCrashedError("t", "exit code 1", 1), ToolQuarantinedError("t", 3),
                  RemoteToolError("m.E", "boom", "Traceback ...")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert vars(back) == vars(error)


def test_worker_env_keeps_only_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    env = worker_env()
    assert "OPENAI_API_KEY" not in env
    assert env["LC_TIME"] == "C" and env["TZ"] == "UTC"
    assert set(env) <= ALLOWED_ENV | {"LC_TIME"} | {k for k in env if k.startswith("LC_")}
    assert worker_env(["OPENAI_API_KEY"])["OPENAI_API_KEY"] == "sk-test-123"


# ---- (1) crash safety ----------------------------------------------------------------------------


def test_crashing_workers_fail_only_their_own_calls() -> None:
    plan = Plan()
    # Distinct names: quarantine is per tool, and this test is about crashes alone.
    crashing = ([renamed(pt.exit_now, f"exit_now_{i}") for i in range(10)]
                + [renamed(pt.segfault, f"segfault_{i}") for i in range(2)])
    kinds = ["ok"] * 88 + crashing
    random.Random(7).shuffle(kinds)
    refs = []
    for i, kind in enumerate(kinds):
        if isinstance(kind, str):
            refs.append(("ok", i, plan.call(pt.square, x=i)))
        else:
            refs.append((kind.name, i, plan.call(kind)))

    async def main() -> None:
        async with Runtime(process_workers=4) as runtime:
            t0 = time.perf_counter()
            result = await runtime.run(plan)
            elapsed = time.perf_counter() - t0
            assert result.counts["ok"] == 88 and result.counts["failed"] == 12, result.counts
            for kind, i, ref in refs:
                outcome = result[ref]
                if kind == "ok":
                    assert outcome.value == i * i
                    continue
                assert outcome.status == "failed"
                assert outcome.error is not None
                assert outcome.error.type == "shoal.exceptions.WorkerCrashedError"
                expected = ("exit code 1" if kind.startswith("exit_now")
                            else "killed by signal SIGSEGV (segmentation fault)")
                assert expected in outcome.error.message, outcome.error.message
            executor = runtime.executor_for("process")
            assert isinstance(executor, ProcessExecutor)
            assert executor.workers_crashed == 12
            assert len(executor.worker_pids) <= 4
            print(f"\n100 calls, 12 crashes, 4 workers: {elapsed:.2f} s, "
                  f"{executor.workers_started} workers started")
            again = Plan()
            more = [again.call(pt.square, x=i) for i in range(10)]
            after = await runtime.run(again)  # the runtime, and the pool, live on
            assert [after[r].value for r in more] == [i * i for i in range(10)]
        assert live_workers() == []

    arun(main(), timeout=SLOW)


def test_a_crash_with_another_exit_code_names_it() -> None:
    plan = Plan()
    ref = plan.call(pt.exit_now, code=3)
    result = shoal.run_sync(plan, process_workers=1)
    error = result[ref].error
    assert error is not None
    assert error.message == (
        "the worker process running tool 'exit_now' died: exit code 3")


# ---- (2) timeouts --------------------------------------------------------------------------------


def test_a_sync_tool_that_never_returns_is_timed_out_and_its_process_killed(
        tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        async with Runtime(process_workers=1) as runtime:
            warm = Plan()
            warm.call(pt.noop)
            await runtime.run(warm)  # the worker exists now: the timeout is the tool's alone
            plan = Plan()
            ref = plan.call(pt.sleep_forever.options(timeout=0.5), pid_file=str(pid_file))
            t0 = time.perf_counter()
            result = await runtime.run(plan)
            elapsed = time.perf_counter() - t0
            assert result[ref].status == "timed_out"
            assert not result[ref].abandoned  # a process can be stopped, unlike a thread
            assert elapsed < 5.0, elapsed  # not forever: a wide margin, for a loaded machine
            pid = int(pid_file.read_text())
            # frozen and killed before the outcome was recorded; it ran below the worker's
            # stand-in, so whoever adopts it once that is gone reaps it, a moment later
            assert wait_until(lambda: gone(pid))
            executor = runtime.executor_for("process")
            assert isinstance(executor, ProcessExecutor)
            assert executor.workers_crashed == 0  # a timeout is not a crash
            assert executor.worker_pids == []

    arun(main(), timeout=SLOW)  # a worker starts: real time, which a loaded machine stretches


def test_cancellation_while_a_worker_starts_leaves_no_process() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        task = asyncio.ensure_future(executor.execute(a_call(pt.noop)))
        await asyncio.sleep(0.05)  # inside the worker's start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert executor.worker_pids == []
        await executor.close()

    arun(main())


# ---- (3) the environment -------------------------------------------------------------------------


def test_secrets_in_the_parent_never_reach_a_worker_unless_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-test-wJalrXUtnFEMI")
    plan = Plan()
    plain = plan.call(pt.environment)
    asked = plan.call(pt.environment.options(env=["AWS_SECRET_ACCESS_KEY"]))

    result = shoal.run_sync(plan, process_workers=2)
    env = result[plain].value
    assert "OPENAI_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not any("sk-test" in v or "aws-test" in v for v in env.values())
    assert env["PATH"] == os.environ["PATH"]
    assert result[asked].value["AWS_SECRET_ACCESS_KEY"] == "aws-test-wJalrXUtnFEMI"
    assert "OPENAI_API_KEY" not in result[asked].value

    passed = shoal.run_sync(plan, process_workers=2, pass_env=["OPENAI_API_KEY"])
    assert passed[plain].value["OPENAI_API_KEY"] == "sk-test-0123456789abcdef"
    assert "AWS_SECRET_ACCESS_KEY" not in passed[plain].value


@pytest.mark.parametrize(("names", "words"), [
    ("OPENAI_API_KEY", "takes a list of environment variable names"),  # not letter by letter
    (["A=B"], "no '=' or NUL"),
    (["A\0B"], "no '=' or NUL"),
    ([""], "no '=' or NUL"),
    ([3], "got 3"),
    (["\ud800"], "names the OS can hold"),
])
def test_environment_names_that_cannot_be_passed_on_are_refused_at_once(
        names: Any, words: str) -> None:
    with pytest.raises(ToolDefinitionError, match=re.escape(words)):
        pt.environment.options(env=names)
    with pytest.raises(ConfigError, match=re.escape(words)):
        shoal.Runtime(pass_env=names)


def test_environment_names_given_as_an_iterator_are_all_kept() -> None:
    names = iter(["HOME", "LANG"])
    assert shoal.Runtime(pass_env=names).pass_env == ("HOME", "LANG")  # type: ignore[arg-type]
    assert pt.environment.options(env=iter(["HOME"])).policy.env == ("HOME",)
    agent = shoal.Agent(name="a", model=ScriptedModel(), isolation="process",
                        env=iter(["HOME"]))  # type: ignore[arg-type]
    assert agent.env == ("HOME",)


# ---- (4) limits ----------------------------------------------------------------------------------


def test_a_memory_limit_makes_a_big_allocation_fail_with_memory_error() -> None:
    limited = pt.allocate.options(limits={"memory": "1GiB"})
    plan = Plan()
    small = plan.call(limited, megabytes=16)
    big = plan.call(limited, megabytes=4096, after=small)
    result = shoal.run_sync(plan, process_workers=1)
    assert result[small].value == 16 * 2**20
    assert result[big].status == "failed"
    error = result[big].error
    assert error is not None and error.type == "MemoryError"


def test_a_cpu_limit_kills_a_busy_loop() -> None:
    plan = Plan()
    ref = plan.call(pt.busy_forever.options(limits={"cpu_seconds": 1}))
    t0 = time.perf_counter()
    result = shoal.run_sync(plan, process_workers=1)
    elapsed = time.perf_counter() - t0
    error = result[ref].error
    assert result[ref].status == "failed" and error is not None
    assert error.type == "shoal.exceptions.WorkerCrashedError"
    assert "SIGXCPU" in error.message or "SIGKILL" in error.message, error.message
    assert elapsed < 10


def test_each_call_gets_its_own_cpu_budget() -> None:
    burn = pt.burn.options(limits={"cpu_seconds": 1})

    async def main() -> None:
        executor = ProcessExecutor(1)
        try:  # three calls on one worker use more CPU than one budget, none more than its own
            pids = {await executor.execute(a_call(burn, seconds=0.6)) for _ in range(3)}
            assert len(pids) == 1 and executor.workers_crashed == 0
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


def test_workers_are_pooled_by_profile_under_one_cap() -> None:
    profiles = [pt.pid.options(limits={"open_files": n}) for n in (500, 600, 700)]

    async def main() -> None:
        executor = ProcessExecutor(2)
        try:
            seen = []
            for target in profiles * 2:
                seen.append(await executor.execute(a_call(target)))
                assert len(executor.worker_pids) <= 2
            assert len(live_workers()) <= 2
            same = [await executor.execute(a_call(profiles[0])) for _ in range(3)]
            assert len(set(same)) == 1  # one profile, one call at a time: one reused worker
            together = await asyncio.gather(*(executor.execute(a_call(t)) for t in profiles))
            assert len(together) == 3 and len(executor.worker_pids) <= 2
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


# ---- (5) quarantine ------------------------------------------------------------------------------


def test_a_tool_that_keeps_crashing_its_workers_is_quarantined_for_the_run() -> None:
    async def main() -> None:
        async with Runtime(process_workers=1) as runtime:
            plan = Plan()
            crashes = [plan.call(pt.exit_now) for _ in range(QUARANTINE_AFTER + 2)]
            fine = plan.call(pt.square, x=4)
            result = await runtime.run(plan)
            types = sorted(result[r].error.type for r in crashes)  # type: ignore[union-attr]
            assert types == (["shoal.exceptions.ToolQuarantinedError"] * 2
                             + ["shoal.exceptions.WorkerCrashedError"] * QUARANTINE_AFTER)
            quarantined = [result[r].error for r in crashes
                           if "Quarantined" in result[r].error.type]  # type: ignore[union-attr]
            assert "'exit_now'" in quarantined[0].message  # type: ignore[union-attr]
            assert f"{QUARANTINE_AFTER} times" in quarantined[0].message  # type: ignore[union-attr]
            assert result[fine].value == 16
            executor = runtime.executor_for("process")
            assert isinstance(executor, ProcessExecutor)
            assert executor.workers_crashed == QUARANTINE_AFTER
            # quarantined calls started no worker: one per crash, at most one for `square`
            assert executor.workers_started <= QUARANTINE_AFTER + 1
            again = Plan()  # quarantine lasts one run
            one = again.call(pt.exit_now)
            later = await runtime.run(again)
            error = later[one].error
            assert error is not None
            assert error.type == "shoal.exceptions.WorkerCrashedError"
            assert executor.workers_crashed == QUARANTINE_AFTER + 1

    arun(main(), timeout=SLOW)


def test_quarantine_is_reported_without_starting_a_worker() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            for _ in range(QUARANTINE_AFTER):
                with pytest.raises(WorkerCrashedError, match="exit code 1"):
                    await executor.execute(a_call(pt.exit_now))
            started = executor.workers_started
            with pytest.raises(ToolQuarantinedError, match="'exit_now'") as info:
                await executor.execute(a_call(pt.exit_now))
            assert info.value.crashes == QUARANTINE_AFTER
            assert executor.workers_started == started
            assert await executor.execute(a_call(pt.square, run_id="other", x=3)) == 9
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


# ---- (6) where tools come from -------------------------------------------------------------------


def test_tools_from_the_test_module_closures_and_async_tools_all_run() -> None:
    factor = 5

    @tool(isolation="process")
    def scaled(x: int) -> int:
        return factor * x

    @tool(isolation="process")
    async def async_scaled(x: int) -> int:
        await asyncio.sleep(0.01)
        return factor * x

    plan = Plan()
    refs = {
        "module": plan.call(triple_here, x=2),
        "closure": plan.call(scaled, x=2),
        "async closure": plan.call(async_scaled, x=3),
        "async module": plan.call(pt.async_square, x=5),
        "sync": plan.call(pt.square, x=6),
    }
    result = shoal.run_sync(plan, process_workers=2)
    assert {k: result[r].value for k, r in refs.items()} == {
        "module": 6, "closure": 10, "async closure": 15, "async module": 25, "sync": 36}
    assert all(result[r].executor == "process" for r in refs.values())


def test_prints_do_not_disturb_the_protocol(capfd: pytest.CaptureFixture[str]) -> None:
    plan = Plan()
    ref = plan.call(pt.chatty, lines=2000)
    after = plan.call(pt.square, x=3, after=ref)
    result = shoal.run_sync(plan, process_workers=1)
    assert result[ref].value == 2000 and result[after].value == 9
    assert "line 1999" in capfd.readouterr().out


def test_workers_are_reused_and_timings_exclude_waiting_for_one() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            call = a_call(pt.pid)
            before = time.monotonic()
            first = await executor.execute(call)
            assert call.began_at is not None and call.began_at > before + 0.05  # after start-up
            assert await executor.execute(a_call(pt.pid)) == first
            assert executor.workers_started == 1
        finally:
            await executor.close()

    arun(main())


# ---- (7) errors keep their types -----------------------------------------------------------------


def test_a_typed_error_comes_back_as_itself_with_its_attributes() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            with pytest.raises(BudgetError) as here:
                await executor.execute(a_call(over_budget, budget=2.5))
            assert here.value.budget == 2.5 and str(here.value) == "over budget"
            with pytest.raises(pt.QuotaError) as there:
                await executor.execute(a_call(pt.raise_quota, quota=7))
            assert there.value.quota == 7
            text = "".join(traceback.format_exception(there.value))
            assert "traceback in the worker process" in text and "raise QuotaError" in text
        finally:
            await executor.close()

    arun(main())


def test_errors_that_cannot_travel_come_back_by_type_name_and_message() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            for target, type_name, message in (
                (pt.raise_locked, "tests.process_tools.LockedError", "cannot travel"),
                (pt.raise_picky, "tests.process_tools.PickyError", "7: picky"),
            ):
                with pytest.raises(RemoteToolError) as info:
                    await executor.execute(a_call(target))
                assert info.value.type_name == type_name
                assert info.value.message == message
                assert "Traceback" in info.value.traceback_text
            # a KeyboardInterrupt travels as the error every backend gives the tool's own
            with pytest.raises(ToolDefinitionError, match="raised KeyboardInterrupt"):
                await executor.execute(a_call(pt.raise_keyboard_interrupt))
            assert executor.workers_crashed == 0 and executor.workers_started == 1
        finally:
            await executor.close()

    arun(main())


def test_outcomes_name_the_original_error_type() -> None:
    plan = Plan()
    typed = plan.call(over_budget, budget=1.0)
    locked = plan.call(pt.raise_locked)
    result = shoal.run_sync(plan, process_workers=1)
    typed_error, locked_error = result[typed].error, result[locked].error
    assert typed_error is not None and locked_error is not None
    assert typed_error.type == "tests.test_process.BudgetError"
    assert "raise BudgetError" in typed_error.traceback
    # could not travel as itself, yet the outcome names the original type and message
    assert locked_error.type == "tests.process_tools.LockedError"
    assert locked_error.message == "cannot travel"


# ---- (8) what cannot be pickled ------------------------------------------------------------------


def test_unpicklable_arguments_and_results_fail_with_serialization_error() -> None:
    plan = Plan()
    argument = plan.call(pt.identity, value={"lock": threading.Lock()})
    value = plan.call(pt.make_lock)
    fine = plan.call(pt.square, x=2)
    result = shoal.run_sync(plan, process_workers=1)
    for ref, what in ((argument, "argument 'value' of tool 'identity'"),
                      (value, "the result of tool 'make_lock'")):
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None
        assert error.type == "shoal.exceptions.SerializationError"
        assert what in error.message and "lock" in error.message, error.message
    assert result[fine].value == 4


def test_an_unpicklable_result_does_not_cost_the_worker() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            first = await executor.execute(a_call(pt.pid))
            with pytest.raises(SerializationError):
                await executor.execute(a_call(pt.make_lock))
            assert await executor.execute(a_call(pt.pid)) == first
        finally:
            await executor.close()

    arun(main())


# ---- (9) big data --------------------------------------------------------------------------------


def test_fifty_megabytes_in_and_out() -> None:
    size = 50 * 2**20
    data = os.urandom(4096) * (size // 4096)
    plan = Plan()
    echoed = plan.call(pt.identity, value=data)
    made = plan.call(pt.blob, data=data, size=size)
    result = shoal.run_sync(plan, process_workers=2)
    assert result[echoed].value == data
    assert len(result[made].value) == size and result[made].value[:16] == data[:16]


# ---- (10) cancellation ---------------------------------------------------------------------------


async def start_writing_pids(runtime: Runtime, tool: Any, folder: Path,
                             count: int) -> tuple[shoal.RunHandle, list[int]]:
    """Start ``count`` calls of ``tool``, each writing a pid to its file; those pids, written."""
    plan = Plan()
    for i in range(count):
        plan.call(tool, pid_file=str(folder / f"{i}.pid"))
    handle = runtime.start(plan)
    files = [folder / f"{i}.pid" for i in range(count)]
    await until(lambda: all(f.exists() and f.read_text() for f in files), every=0.05)
    return handle, [int(f.read_text()) for f in files]


def test_cancelling_a_run_kills_every_busy_worker(tmp_path: Path) -> None:
    count = 20

    async def main() -> None:
        async with Runtime(process_workers=count) as runtime:
            handle, pids = await start_writing_pids(runtime, pt.sleep_forever, tmp_path, count)
            t0 = time.perf_counter()
            handle.cancel()
            result = await handle
            assert result.counts["cancelled"] == count
            with contextlib.suppress(AssertionError):  # the assertion below says how long
                await until(lambda: all(gone(p) for p in pids), within=2.0, every=0.02)
            assert all(gone(p) for p in pids), time.perf_counter() - t0
            print(f"\ncancel of {count} busy workers: all gone in {time.perf_counter() - t0:.3f} s")
            assert live_workers() == []

    arun(main(), timeout=SLOW)


def test_cancelling_a_run_kills_its_workers_together_with_one_look_at_the_process_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed one at a time, each worker cost two walks of ``/proc`` while the rest ran on."""
    count = 8
    walks = 0
    walk = _reaper._parents

    def counted() -> dict[int, int]:
        nonlocal walks
        walks += 1
        return walk()

    async def main() -> None:
        async with Runtime(process_workers=count) as runtime:
            handle, sleeps = await start_writing_pids(runtime, pt.spawn_and_sleep, tmp_path,
                                                      count)
            workers = [w.pid for w in live_workers()]
            assert len(workers) == count
            monkeypatch.setattr(_reaper, "_parents", counted)
            handle.cancel()
            result = await handle
            assert result.counts["cancelled"] == count
            assert walks <= 3, walks  # one that freezes every tree, one that finds no more
            await until(lambda: all(gone(p) for p in workers), within=10.0)
            await until(lambda: not any(psutil.pid_exists(p) and not gone(p)
                                               for p in sleeps), within=10.0)

    arun(main(), timeout=SLOW)


def test_a_terminals_ctrl_c_cannot_reach_workers() -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            worker = await executor.execute(a_call(pt.pid))
            # Ctrl-C goes to the terminal's foreground process group; workers are elsewhere,
            # so only the parent hears it, and it decides what to cancel.
            assert os.getpgid(worker) != os.getpgid(0)
            assert os.getsid(worker) != os.getsid(0)
        finally:
            await executor.close()

    arun(main())


def test_a_timeout_also_kills_the_processes_the_tool_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"

    async def main() -> None:
        executor = ProcessExecutor(1)
        try:
            task = asyncio.ensure_future(executor.execute(a_call(pt.spawn_and_sleep,
                                                                 pid_file=str(pid_file))))
            await until(lambda: pid_file.exists() and pid_file.read_text(), every=0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)
    grandchild = int(pid_file.read_text())
    # The sleep was the worker's child: once orphaned, init reaps it (no zombie check needed).
    assert wait_until(lambda: not psutil.pid_exists(grandchild) or gone(grandchild))


# ---- lifetime ------------------------------------------------------------------------------------


def test_close_kills_idle_workers_and_the_pool_starts_afresh() -> None:
    async def main() -> None:
        executor = ProcessExecutor(2)
        first = await executor.execute(a_call(pt.pid))
        await executor.close()
        # SIGKILLed and reaped by close(); on a busy machine the kernel may take a moment to
        # finish ending what the worker's group still holds
        assert executor.worker_pids == [] and wait_until(lambda: gone(first), timeout=5.0)
        second = await executor.execute(a_call(pt.pid))
        assert second != first
        await executor.close()

    arun(main())


# Never closed, the pool leaves its worker's pipes to the collector: when the event loop closes
# before it has read their end, asyncio warns about them as unclosed transports wherever they
# are collected. Collected here, the warnings (expected) stay with this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unclosed_pool_is_cleaned_up_when_collected() -> None:
    async def main() -> int:
        executor = ProcessExecutor(1)
        pid: int = await executor.execute(a_call(pt.pid))
        del executor
        gc.collect()
        return pid

    pid = arun(main())
    assert wait_until(lambda: gone(pid), timeout=30.0)
    gc.collect()


# The first loop closes with its worker idle; asyncio then warns about that worker's transports
# (collected at the end of this test, so that the warnings stay with it).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_runtime_used_on_two_event_loops_starts_new_workers() -> None:
    runtime = Runtime(process_workers=1)
    plan = Plan()
    ref = plan.call(pt.pid)
    first = asyncio.run(runtime.run(plan))[ref].value
    second = asyncio.run(runtime.run(plan))[ref].value
    asyncio.run(runtime.aclose())
    assert first != second
    assert wait_until(lambda: gone(first))
    gc.collect()


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    busy_file, idle_file = tmp_path / "busy.pid", tmp_path / "idle.pid"
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from shoal import Plan, Runtime
        from tests import process_tools as pt

        async def main():
            runtime = Runtime(process_workers=2)
            plan = Plan()
            plan.call(pt.sleep_forever, pid_file={str(busy_file)!r})  # stays busy
            idle = plan.call(pt.pid)  # idle once done
            handle = runtime.start(plan)
            while (not os.path.exists({str(busy_file)!r}) or not open({str(busy_file)!r}).read()
                   or idle.node not in handle.partial_result().outcomes):
                await asyncio.sleep(0.02)
            with open({str(idle_file)!r}, "w") as f:
                f.write(str(handle.partial_result()[idle].value))
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    parent = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60,
                            capture_output=True, text=True)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    workers = [int(busy_file.read_text()), int(idle_file.read_text())]
    assert wait_until(lambda: all(gone(w) for w in workers), timeout=3.0)


def test_starting_a_cold_worker_does_not_count_against_the_timeout() -> None:
    # A fresh worker takes ~0.2 s (much more under load) to start, mostly importing Python
    # packages; an instant call with a 0.1 s timeout must not time out because of that: the
    # timeout starts once a worker is ready.
    plan = Plan()
    refs = [plan.call(pt.square.options(timeout=0.1), x=i) for i in range(4)]
    result = shoal.run_sync(plan, process_workers=4)
    assert [result[r].status for r in refs] == ["ok"] * 4


def test_a_calls_end_is_when_its_worker_finished_not_when_the_loop_looked() -> None:
    """The worker stamps a call's end: a loop busy elsewhere does not lengthen the call."""

    @tool(isolation="inline")
    async def hog(seconds: float) -> None:
        await asyncio.sleep(0.1)  # the process call is sent by now
        # holds the event loop on purpose: the worker's reply waits to be read
        time.sleep(seconds)  # noqa: ASYNC251

    async def main() -> shoal.RunResult:
        async with Runtime() as runtime:
            warm = Plan()
            warm.call(pt.square, x=1)
            await runtime.run(warm)  # a warm worker: the call below is sent at once
            plan = Plan()
            plan.call(pt.nap, seconds=0.3, node_id="work")
            plan.call(hog, seconds=3.0, node_id="hog")
            return await runtime.run(plan)

    result = arun(main(), timeout=SLOW)
    work = result.outcomes["work"]
    assert result.ok and work.duration is not None
    # read by the loop 3 s after it started, at the earliest; the work itself took 0.3 s (the
    # margins are wide: a loaded machine stretches real time)
    assert 0.25 <= work.duration < 2.0, work.duration


def test_a_forged_end_stamp_is_kept_within_the_calls_own_window() -> None:
    """The worker runs the tool's code: its stamp counts only between sending and now."""
    from shoal.executors._worker import ENDED
    from shoal.executors.process import _unstamped

    call = a_call(pt.noop)
    call.began_at = sent = time.monotonic()
    for stamp, expected in ((float("nan"), None), (sent - 5.0, None), (float("-inf"), None)):
        body = bytearray(ENDED.pack(stamp) + b"reply")
        assert _unstamped(call, body) is expected and body == b"reply"
    late = _unstamped(call, bytearray(ENDED.pack(float("inf")) + b"reply"))
    assert late is not None and sent <= late <= time.monotonic()  # the future is now
    with pytest.raises(SerializationError, match="malformed reply"):
        _unstamped(call, bytearray(b"\x00\x01"))
