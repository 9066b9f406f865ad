"""A hostile user's review of the thread pool, of calls fed to the state machine in batches,
and of the process executor serving several event loops.

Each test pins a defect found there (it failed before the fix).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal.executors.base import Executor
from shoal.executors.process import ProcessExecutor
from shoal.executors.thread import ThreadExecutor
from tests import process_tools as pt


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Threads switch every microsecond: a race between them shows up in a few tries."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.usefixtures("switch_often")
def test_threads_asking_for_a_backend_at_once_get_the_same_one(isolation: str) -> None:
    """Runs of several threads on one runtime (``run_sync`` from each) share its backends.

    Two made at once for one isolation would each have the whole cap on workers, and
    ``aclose()`` would close only the one the runtime kept: the other's threads or worker
    processes would live on.
    """
    for _ in range(150):
        runtime = shoal.Runtime(store=None)
        ready = threading.Barrier(4, timeout=30.0)
        got: list[Executor] = []

        def ask(runtime: shoal.Runtime = runtime, ready: threading.Barrier = ready,
                got: list[Executor] = got) -> None:
            ready.wait()
            got.append(runtime.executor_for(isolation))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30.0)
        assert len(got) == 4
        assert len({id(executor) for executor in got}) == 1, "two backends for one isolation"
        assert got[0] is runtime.executor_for(isolation)


# Each loop closes with its workers idle (no leave()); asyncio then warns about their
# transports, as test_process_loops.py's test_a_loop_that_ends_without_leaving_... says.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.usefixtures("no_child_process_leak")
def test_two_threads_runs_then_close_from_a_third_leave_no_worker_behind() -> None:
    """Two threads each run process tools on one runtime (one cancelled mid-run); a third
    closes it: every worker and template of both loops ends, though the handles live on."""
    runtime = shoal.Runtime(store=None, process_workers=3)
    handles: list[shoal.RunHandle] = []
    outcomes: dict[int, set[str]] = {}
    both = threading.Barrier(2, timeout=60.0)

    def run(k: int, cancel: bool) -> None:
        async def main() -> set[str]:
            plan = shoal.Plan(f"plan-{k}")
            for i in range(8):
                plan.add(pt.identity, {"value": i}, node_id=f"v{i}")
            both.wait()
            handle = runtime.start(plan)
            handles.append(handle)  # kept: the run's backends must not depend on collection
            if cancel:
                await asyncio.sleep(0.05)
                handle.cancel(reason="stopped mid-run")
            result = await handle
            return {outcome.status for outcome in result.outcomes.values()}

        outcomes[k] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(k, k == 2), daemon=True) for k in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
        assert not thread.is_alive()
    closer = threading.Thread(target=lambda: asyncio.run(runtime.aclose()), daemon=True)
    closer.start()
    closer.join(60.0)
    assert not closer.is_alive()
    assert outcomes[1] == {"ok"}
    assert outcomes[2] <= {"ok", "cancelled"}


def run_script(body: str, *, within: float = 120.0) -> tuple[str, float]:
    """Run ``body`` in a fresh interpreter; its output and how long it took to exit."""
    began = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(body)],
                              capture_output=True, text=True, timeout=within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the interpreter did not exit within {within:.0f} s")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), time.monotonic() - began


CHAIN_IN_A_THREAD = """
    import collections, threading, time
    import shoal
    {touch}

    @shoal.tool
    def step(i: int) -> int:
        time.sleep(0.05)
        return i + 1

    def work():
        plan = shoal.Plan()
        last = plan.call(step, i=0)
        for _ in range(5):
            last = plan.call(step, i=last)
        result = shoal.run_sync(plan)
        print(sorted(collections.Counter(o.status for o in result.outcomes.values()).items()),
              result[last].value, flush=True)

    threading.Thread(target=work, daemon={daemon}).start()
    time.sleep(0.02)  # main returns while the run goes on
"""


@pytest.mark.parametrize("touch", ["shoal.run_sync", ""], ids=["loaded", "loaded-while-exiting"])
def test_a_run_in_a_thread_python_waits_for_goes_on_after_main_returns(touch: str) -> None:
    """Python waits for a thread that is not a daemon: its run's sync calls still run (they
    were refused, failing the run; and shoal's modules first loaded then failed to import)."""
    out, _ = run_script(CHAIN_IN_A_THREAD.format(touch=touch, daemon=False))
    assert out == "[('ok', 6)] 6"


def test_a_run_in_a_daemon_thread_does_not_hold_the_exit_up() -> None:
    body = CHAIN_IN_A_THREAD.replace("range(5)", "range(2000)")  # 100 s of calls
    out, took = run_script(body.format(touch="shoal.run_sync", daemon=True))
    # the interpreter did not wait for the run: it was cut off, or (a race with the exit) it
    # ended early, its next call refused by the thread pool the interpreter was shutting down
    assert out == "" or ("('skipped', " in out and "('ok', 2001)" not in out), out
    assert took < 60


@pytest.mark.parametrize("setting", ["thread_workers", "process_workers", "max_concurrency"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True, float("nan")])
def test_a_count_of_workers_or_calls_that_is_no_whole_number_of_at_least_one_is_refused(
        setting: str, value: Any) -> None:
    """0 was read as "the default" (a thousand threads), 2.5 and True were taken as they
    were, "4" failed with a bare TypeError."""
    options: dict[str, Any] = {setting: value}
    with pytest.raises(shoal.ConfigError, match=f"{setting} must be a whole number"):
        shoal.Runtime(store=None, **options)


@pytest.mark.parametrize("cap", [0, 1.5, "2", None, True])
def test_a_resource_limit_that_is_no_whole_number_of_at_least_one_is_refused(
        cap: Any) -> None:
    with pytest.raises(shoal.ConfigError, match="resource limit 'db' must be a whole number"):
        shoal.Runtime(store=None, resource_limits={"db": cap})


@pytest.mark.parametrize("make", [ThreadExecutor, ProcessExecutor], ids=["thread", "process"])
@pytest.mark.parametrize("count", [0, -3, 2.5, True])
def test_a_pool_of_no_whole_number_of_workers_is_refused(make: Any, count: Any) -> None:
    """0 or -3 were made 1 without a word, 2.5 and True were taken as they were."""
    with pytest.raises(shoal.ConfigError, match="max_workers must be a whole number"):
        make(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux has it")
def test_threads_the_os_refuses_slow_the_calls_down_but_every_one_runs() -> None:
    """A real refusal (not a mock): each thread's stack is 256 MiB, and the address space
    has room for three, so the pool gets a few threads; the calls wait for them."""
    out, _ = run_script("""
        import collections, resource, threading, time
        import psutil
        import shoal
        shoal.run_sync  # loaded before the limit

        @shoal.tool
        def slow(i: int) -> int:
            time.sleep(0.05)
            return i

        threading.stack_size(256 * 1024 * 1024)
        used = psutil.Process().memory_info().vms
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (used + 3 * 256 * 1024 * 1024 + 100 * 2**20, hard))
        probes = []
        try:
            for _ in range(12):  # the refusal is real: at most a few threads start
                probe = threading.Thread(target=time.sleep, args=(0.2,))
                probe.start()
                probes.append(probe)
        except RuntimeError:
            pass
        started = len(probes)
        for probe in probes:  # their stacks are given back: the pool's threads get them
            probe.join()
        plan = shoal.Plan()
        refs = [plan.call(slow, i=i) for i in range(12)]
        result = shoal.run_sync(plan, thread_workers=50)
        print(started < 12, sorted(collections.Counter(
            o.status for o in result.outcomes.values()).items()),
            [result[ref].value for ref in refs] == list(range(12)))
    """)
    assert out == "True [('ok', 12)] True"


@shoal.tool
def plus_one(i: int) -> int:
    return i + 1


def test_ten_thousand_calls_from_four_loops_at_once_each_end_once_and_no_thread_stays() -> None:
    before = set(threading.enumerate())
    runtime = shoal.Runtime(store=None)
    ready = threading.Barrier(4, timeout=60.0)
    totals: dict[int, tuple[int, int]] = {}

    def run(k: int) -> None:
        plan = shoal.Plan(f"plan-{k}")
        for i in range(2500):
            plan.call(plus_one, i=i)
        ready.wait()
        result = runtime.run_sync(plan)
        totals[k] = (result.counts["ok"], sum(o.value for o in result.outcomes.values()))

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
        assert not thread.is_alive()
    assert totals == {k: (2500, 2500 * 2501 // 2) for k in range(4)}
    asyncio.run(runtime.aclose())
    deadline = time.monotonic() + 10.0
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, sorted(thread.name for thread in left)


def test_an_abandoned_call_that_hangs_does_not_keep_the_process_alive() -> None:
    """Its run ended (timed out, abandoned); nobody waits for it: the interpreter exits
    (it waited for the call's thread, for ever if the call never returned)."""
    out, took = run_script("""
        import threading
        import shoal

        @shoal.tool(timeout=0.1)
        def hangs() -> int:
            threading.Event().wait()  # never returns
            return 1

        plan = shoal.Plan()
        ref = plan.call(hangs)
        outcome = shoal.run_sync(plan)[ref]
        print(outcome.status, outcome.abandoned)
    """, within=60.0)
    assert out == "timed_out True"
    assert took < 30


def test_calls_running_when_the_interpreter_exits_still_end() -> None:
    """Not abandoned: someone may wait for them (a run in a daemon thread here); the exit
    waits for them as it would for a ThreadPoolExecutor's."""
    out, _ = run_script("""
        import os, threading, time
        import shoal

        started = threading.Semaphore(0)

        @shoal.tool
        def slow(i: int) -> int:
            started.release()
            time.sleep(0.3)
            os.write(1, f"ended {i}\\n".encode())  # one write: the threads' lines stay whole
            return i

        def work():
            plan = shoal.Plan()
            for i in range(3):
                plan.call(slow, i=i)
            shoal.run_sync(plan)

        threading.Thread(target=work, daemon=True).start()
        for _ in range(3):
            assert started.acquire(timeout=60)
        # main returns while the three calls run
    """)
    assert sorted(out.splitlines()) == ["ended 0", "ended 1", "ended 2"]


def test_a_run_sync_that_ends_leaves_a_run_another_thread_just_started_alone() -> None:
    """Thread A's ``run_sync`` ends and closes the runtime, as no other thread's run goes on;
    thread B starts a run right then (held there with a trace hook, no mock: in real use a
    thread switch does it). B's run was cancelled as if the runtime had been closed under it
    (aclose() ends every loop's runs); now A sees it and leaves it the backends."""
    runtime = shoal.Runtime(store=None)
    paused, resume = threading.Event(), threading.Event()

    def hold_at_end_runs(frame: Any, event: str, _: Any) -> Any:
        # (at the start of the close, before it looks for runs: a close with none of its own
        # left no longer calls _end_runs, where this held A before)
        if (event == "call" and frame.f_code.co_name == "_close_after_sync"
                and not paused.is_set()):
            paused.set()  # A is about to end the runs it must end: B starts one now
            resume.wait(30.0)
        return None

    def thread_a() -> None:
        plan = shoal.Plan("a")
        plan.call(plus_one, i=1)
        sys.settrace(hold_at_end_runs)
        try:
            runtime.run_sync(plan)
        finally:
            sys.settrace(None)

    results: list[shoal.RunResult] = []

    async def thread_b_run() -> None:
        plan = shoal.Plan("b")
        plan.call(plus_one, i=2, node_id="b")
        handle = runtime.start(plan)
        resume.set()  # registered: A goes on
        results.append(await handle)

    a = threading.Thread(target=thread_a, daemon=True)
    a.start()
    assert paused.wait(30.0)
    b = threading.Thread(target=lambda: asyncio.run(thread_b_run()), daemon=True)
    b.start()
    a.join(60.0)
    b.join(60.0)
    assert not a.is_alive() and not b.is_alive()
    resume.set()
    [result] = results
    assert result["b"].status == "ok", result["b"].reason
    assert result["b"].value == 3
    asyncio.run(runtime.aclose())
