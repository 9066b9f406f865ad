"""A hostile user of tool calls and the backends that run them (sweep 34).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

import shoal
from shoal import Plan
from shoal.executors._sandbox import problem
from shoal.testing import VirtualClockLoop, run_virtual
from tests import hostile_exec_tools as ht
from tests.conftest import arun

SANDBOXES = ["none", pytest.param("namespace", marks=pytest.mark.skipif(
    problem() is not None, reason=f"namespace sandbox unavailable: {problem()}"))]


# ---- a worker killed by SIGKILL says so -------------------------------------------------------


def _kill_workers_once(marker: Path, number: int) -> threading.Thread:
    """A thread that sends ``number`` to every worker of this process once ``marker`` exists.

    The workers are the leaves of this process's tree (a template and a stand-in each have a
    child), as the kernel's OOM killer picks the process that holds the memory.
    """
    def kill() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for child in psutil.Process().children(recursive=True):
            if not child.children():
                child.send_signal(number)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("no_child_process_leak")
@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_worker_killed_by_sigkill_is_reported_killed_not_exit_code_1(
        sandbox: str, tmp_path: Path) -> None:
    # was: "died: exit code 1" (and a traceback of OSError: [Errno 22] on stderr): the
    # worker's stand-in re-raised the signal its worker died of, but cannot set SIGKILL's
    # handler, so it failed and exited 1; an OOM kill read as the tool's own exit
    marker = tmp_path / "running"
    plan = Plan()
    crash = plan.call(ht.wait_to_be_killed, marker=str(marker))
    fine = plan.call(ht.square, x=4)
    killer = _kill_workers_once(marker, signal.SIGKILL)
    result = shoal.run_sync(plan, process_workers=1, process_sandbox=sandbox)
    killer.join()
    error = result[crash].error
    assert error is not None and error.type == "shoal.exceptions.WorkerCrashedError"
    assert "killed by signal SIGKILL (killed; out of memory?)" in error.message, error.message
    assert result[fine].value == 16


# ---- the virtual clock far from 0 --------------------------------------------------------------


async def _slept(*seconds: float) -> list[float]:
    """The loop's time after each sleep of ``seconds``, one after another."""
    loop = asyncio.get_running_loop()
    times = []
    for wait in seconds:
        await asyncio.sleep(wait)
        times.append(loop.time())
    return times


@pytest.mark.timeout(30)
def test_the_virtual_clock_serves_short_timers_after_a_long_wait() -> None:
    # was: past 2**24 s (194 days) the loop spun for good at the first short timer: the clock
    # moved to the timer exactly, where now plus asyncio's clock resolution is now, so the
    # timer never came due (and a timer closer than half the float's step, never either)
    week, year = 7 * 86400.0, 1e8
    after = run_virtual(_slept(year, 0.01, week, 1e-9, 0.5))
    assert after[0] >= year and after[1] >= after[0] + 0.01
    assert after[2] >= after[1] + week and after[3] > after[2] and after[4] >= after[3] + 0.5
    assert after[4] <= year + week + 0.52


@pytest.mark.timeout(30)
def test_a_virtual_clock_loop_started_late_serves_its_timers() -> None:
    # was: VirtualClockLoop(start=3e7) spun for good at its first timer
    loop = VirtualClockLoop(start=3e7)
    try:
        assert loop.run_until_complete(_slept(0.1, 0.2)) == pytest.approx([3e7 + 0.1, 3e7 + 0.3])
    finally:
        loop.close()


@shoal.tool
async def _nap() -> str:
    await asyncio.sleep(0.01)
    return "ok"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [1e-8, 1e-300])
def test_a_very_slow_rate_runs_on_the_virtual_clock(count: float) -> None:
    # was: the second call started 1 / count seconds in, then its sleep never ended
    async def main() -> shoal.RunResult:
        plan = Plan()
        for _ in range(2):
            plan.call(_nap.options(rate=(count, 1.0)))
        async with shoal.Runtime() as runtime:
            return await runtime.run(plan)

    result = run_virtual(main())
    assert result.counts["ok"] == 2 and result.makespan >= 1 / count


# ---- copying a call's arguments runs user code: its SystemExit fails the call ------------------


@dataclasses.dataclass
class _ExitsWhenCopied:
    """A value whose ``__deepcopy__`` raises ``SystemExit`` (or a list whose ``__copy__`` does)."""

    n: int = 1

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        raise SystemExit(9)


class _ListExitsWhenCopied(list[int]):
    def __copy__(self) -> NoReturn:
        raise SystemExit(3)


@shoal.tool
def _kind(x: Any) -> str:
    return type(x).__name__


@shoal.tool
def _made(kind: str) -> Any:
    return _ExitsWhenCopied() if kind == "dataclass" else [_ExitsWhenCopied()]


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("value", [_ExitsWhenCopied(), _ListExitsWhenCopied([1])],
                         ids=["deepcopy", "copy"])
def test_an_argument_whose_copy_raises_system_exit_fails_its_call(isolation: str,
                                                                 value: Any) -> None:
    # was: the SystemExit came out of run_sync: the run ended, every outcome lost
    plan = Plan()
    bad = plan.call(_kind.options(isolation=isolation), x=value)
    sibling = plan.call(_kind.options(isolation=isolation), x=[1])
    result = shoal.run_sync(plan)
    error = result[bad].error
    assert error is not None and error.type == "SystemExit", result[bad]
    assert result.value(sibling) == "list"


def test_an_upstream_value_whose_copy_raises_system_exit_fails_its_dependents() -> None:
    # was: the SystemExit came out of run_sync, from the copy of the upstream value given to
    # a dependent, or to the items of a map over it
    plan = Plan()
    one = plan.call(_made, kind="dataclass")
    items = plan.call(_made, kind="list")
    by_ref = plan.call(_kind, x=one)
    mapped = plan.map(_kind, over=items)
    sibling = plan.call(_kind, x=(1,))
    result = shoal.run_sync(plan)
    for ref in (by_ref, mapped):
        error = result[ref].error
        assert error is not None and error.type == "SystemExit", result[ref]
    assert result.value(sibling) == "tuple"


# ---- process limits with a fraction ---------------------------------------------------------


@pytest.mark.parametrize("limits", [{"cpu_seconds": 2.5}, {"open_files": 64.5}, {"memory": 1.5}])
def test_a_process_limit_with_a_fraction_is_refused(limits: dict[str, object]) -> None:
    # was: cut to a whole number without a word: cpu_seconds=2.5 killed calls at 2 s, and
    # memory=1.5 (bytes) left a worker that could not start
    with pytest.raises(shoal.ConfigError, match="takes a whole number"):
        _kind.options(isolation="process", limits=limits)


def test_whole_process_limits_given_as_floats_still_hold() -> None:
    made = _kind.options(isolation="process",
                         limits={"memory": 2e9, "cpu_seconds": 3.0, "open_files": 64.0})
    assert made.policy.limits == shoal.limits.ProcessLimits(2_000_000_000, 3, 64)


# ---- a default JSON cannot hold ----------------------------------------------------------------


class _Opaque:
    """A default value JSON cannot hold (its repr works)."""

    def __repr__(self) -> str:
        return "_Opaque()"


def _takes_opaque_default(n: int, extra: Any = _Opaque()) -> int:  # noqa: B008 - on purpose
    """Take a default JSON cannot hold."""
    return n


def test_a_default_json_cannot_hold_is_left_out_of_the_schema_without_a_warning() -> None:
    # was: pydantic's PydanticJsonSchemaWarning at each json_schema() (and under -W error, as
    # in this suite, a ToolDefinitionError: the tool could be offered to no model)
    made = shoal.tool(_takes_opaque_default)
    schema = made.json_schema()
    assert schema["required"] == ["n"] and "default" not in schema["properties"]["extra"]
    assert made.to_openai()["function"]["parameters"] == schema
    assert made.validate({"n": 1})["extra"].__class__ is _Opaque


# ---- a tool that forks without exec ---------------------------------------------------------


@pytest.mark.usefixtures("no_child_process_leak")
@pytest.mark.parametrize("how", ["return", "exit"])
def test_a_fork_a_tool_makes_never_answers_for_the_worker(how: str) -> None:
    # was: the fork came back into the worker's loop: it sent a reply of its own (its return
    # value, or its SystemExit) and read commands from the same pipe, so later calls got
    # other calls' results (number(i=0) -> None), or failed unpickling half a command
    async def main() -> None:
        async with shoal.Runtime(process_workers=1) as runtime:
            plan = Plan()
            forked = plan.call(ht.fork_and_leave.options(timeout=20.0), how=how)
            assert (await runtime.run(plan))[forked].value > 0  # the worker's answer
            for _ in range(3):
                plan = Plan()
                refs = [plan.call(ht.number.options(timeout=20.0), i=i) for i in range(6)]
                result = await runtime.run(plan)
                assert [result.value(ref) for ref in refs] == list(range(6))

    arun(main(), timeout=60)


# ---- a call stopped between its attempts keeps how its last attempt ended -------------------


@shoal.tool(retries=3, backoff=10.0, jitter=0.0)
async def _fails_slowly() -> str:
    await asyncio.sleep(1)
    raise ConnectionError("the service refused")


@pytest.mark.parametrize("stop", ["deadline", "cancel"])
def test_a_call_stopped_before_its_retry_says_how_its_last_attempt_ended(stop: str) -> None:
    # was: "the run's deadline of 5 s passed" / "cancelled by the user", attempts=1 and no
    # error: nothing in the outcome said that the attempt had failed, or how
    async def main() -> shoal.RunResult:
        plan = Plan()
        plan.call(_fails_slowly)
        async with shoal.Runtime(deadline=5.0 if stop == "deadline" else None) as runtime:
            handle = runtime.start(plan)
            if stop == "cancel":
                await asyncio.sleep(3)  # its first attempt failed at 1 s; its retry is at 11 s
                handle.cancel()
            return await handle

    (outcome,) = run_virtual(main()).outcomes.values()
    assert outcome.status == ("timed_out" if stop == "deadline" else "cancelled")
    assert outcome.attempts == 1 and not outcome.interrupted
    assert outcome.reason.endswith(
        "(before its retry; attempt 1 ended failed: ConnectionError: the service refused)")


# ---- an async tool in a worker that leaves a task ignoring its cancellation ------------------


@pytest.mark.usefixtures("no_child_process_leak")
def test_an_async_tool_leaving_a_task_that_ignores_its_cancel_still_returns_its_value() -> None:
    # was: the worker waited for that task to end for ever (asyncio.run's cleanup): the call
    # ended timed_out, its value lost, or without a timeout never ended
    async def main() -> None:
        async with shoal.Runtime(process_workers=1) as runtime:
            plan = Plan()
            left = plan.call(ht.leaves_a_stubborn_task.options(timeout=30.0))
            assert (await runtime.run(plan)).value(left) == "done"
            plan = Plan()
            after = plan.call(ht.number, i=7)  # the worker serves the next call
            assert (await runtime.run(plan)).value(after) == 7

    arun(main(), timeout=60)


# ---- an error whose own code fails as its traceback is written ------------------------------


@pytest.mark.usefixtures("no_child_process_leak")
def test_an_error_whose_attribute_lookup_recurses_fails_its_call_not_the_worker() -> None:
    # was: WorkerCrashedError 'died: exit code 1': writing the traceback looks up __notes__,
    # whose __getattr__ recursed; the RecursionError ended the worker (and counted toward
    # the tool's quarantine)
    plan = Plan()
    bad = plan.call(ht.raises_proxy_error)
    sibling = plan.call(ht.number, i=3)
    result = shoal.run_sync(plan, process_workers=1)
    error = result[bad].error
    assert error is not None and error.type == "tests.hostile_exec_tools.ProxyError", error
    assert error.message == "the wrapped call failed"
    assert result.value(sibling) == 3


# ---- a reply whose loading runs code that raises SystemExit or KeyboardInterrupt -------------


@pytest.mark.parametrize("kind", ["exit", "interrupt"])
def test_a_reply_whose_loading_raises_system_exit_or_ctrl_c_fails_only_its_call(kind: str) -> None:
    # was: building the worker's error (or result) here ran its class's __init__, whose
    # KeyboardInterrupt stopped the whole run as a Ctrl-C would, and whose SystemExit became
    # the call's error in place of the tool's own ('SystemExit: 6', the message lost)
    plan = Plan()
    raised = plan.call(ht.raises_built_only_here, kind=kind)
    returned = plan.call(ht.returns_built_only_here, kind=kind)
    sibling = plan.call(ht.number, i=5)
    result = shoal.run_sync(plan, process_workers=2)
    error = result[raised].error
    assert error is not None and error.type == "tests.hostile_exec_tools.BuiltOnlyHere", error
    assert "boom" in error.message
    error = result[returned].error
    assert error is not None and error.type == "shoal.exceptions.SerializationError", error
    named = "SystemExit" if kind == "exit" else "KeyboardInterrupt"
    assert f"building it raised {named}" in error.message
    assert result.value(sibling) == 5


# ---- a tool that fills its memory limit -------------------------------------------------------


@pytest.mark.usefixtures("no_child_process_leak")
def test_a_tool_filling_its_memory_limit_fails_with_memory_error_not_a_crash() -> None:
    # was: WorkerCrashedError 'died: exit code 1': what the tool held (its frame, kept by the
    # MemoryError's traceback) still filled the limit, so writing the reply ran out too
    plan = Plan()
    full = plan.call(ht.fills_memory.options(timeout=60.0))
    sibling = plan.call(ht.number, i=9)
    result = shoal.run_sync(plan, process_workers=2)
    error = result[full].error
    assert error is not None and error.type == "MemoryError", error
    assert "fills_memory" in error.traceback  # where it ran out is still told
    assert result.value(sibling) == 9


# ---- an environment too large to start a worker with ----------------------------------------


@pytest.mark.usefixtures("no_child_process_leak")
@pytest.mark.parametrize("start_method", ["template", "spawn"])
def test_an_environment_too_large_for_a_worker_is_a_config_error_saying_so(
        start_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # was: OSError '[Errno 90] Message too long' (forked from the template, which was
    # stopped too) or '[Errno 7] Argument list too long: .../python' (spawned)
    from shoal.executors._template import fork_supported
    from shoal.executors.process import ProcessExecutor

    if start_method == "template" and not fork_supported():
        pytest.skip("workers are forked from a template on Linux 5.3+ only")
    monkeypatch.setenv("SHOAL_S34_BIG", "x" * 900_000)

    async def main() -> None:
        pool = ProcessExecutor(1, start_method=start_method)
        async with shoal.Runtime(executors={"process": pool}) as runtime:
            plan = Plan()
            big = plan.call(ht.number.options(env=["SHOAL_S34_BIG"], timeout=20.0), i=1)
            result = await runtime.run(plan)
            error = result[big].error
            assert error is not None and error.type == "shoal.exceptions.ConfigError", error
            assert "too large to start it" in error.message
            assert "'SHOAL_S34_BIG', 900,000 characters" in error.message
            plan = Plan()
            fine = plan.call(ht.number.options(timeout=20.0), i=2)
            assert (await runtime.run(plan)).value(fine) == 2

    arun(main(), timeout=60)


@pytest.mark.usefixtures("no_child_process_leak")
def test_a_runtime_pass_env_too_large_for_a_worker_is_a_config_error_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: OSError '[Errno 7] Argument list too long: .../python' (the template's start)
    monkeypatch.setenv("SHOAL_S34_BIG", "x" * 200_000)
    plan = Plan()
    big = plan.call(ht.number.options(timeout=20.0), i=1)
    error = shoal.run_sync(plan, pass_env=["SHOAL_S34_BIG"])[big].error
    assert error is not None and error.type == "shoal.exceptions.ConfigError", error
    assert "'SHOAL_S34_BIG', 200,000 characters" in error.message
