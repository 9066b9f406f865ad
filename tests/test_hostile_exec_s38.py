"""A hostile user of the process backend and of agents in processes of their own (sweep 38).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shoal
from shoal import Plan
from tests import hostile_exec_s38_tools as st

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


# ---- what a call lowers for good on its worker ------------------------------------------------


def test_a_call_that_lowered_its_workers_soft_file_limit_leaves_the_next_call_the_old_one(
        ) -> None:
    # was: the next call on that worker (of any tool) failed with OSError [Errno 24] Too many
    # open files: the earlier call's setrlimit(RLIMIT_NOFILE, (16, ...)) stayed
    plan = Plan()
    lowered = plan.call(st.lower_limits, hard=False)
    after = plan.call(st.open_files_and_priority, count=100, after=[lowered])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].status == "ok", result[after].error
    assert result[after].value["pid"] == result[lowered].value  # the same worker, put back
    assert result[after].value["opened"] == 100


#: runs a command without the capabilities that raise hard limits and priorities again
_UNPRIVILEGED = ["setpriv", "--bounding-set=-sys_resource,-sys_nice",
                 "--inh-caps=-sys_resource,-sys_nice"]


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root, and no setpriv to drop CAP_SYS_RESOURCE and CAP_SYS_NICE")
@pytest.mark.parametrize("change", ["hard_file_limit", "priority"])
def test_a_call_that_lowered_what_only_privilege_raises_gets_its_worker_replaced(
        change: str) -> None:
    # was: the worker served the next call so: out of files at 16 (a hard limit only goes
    # down), or at a lower priority (os.nice() only goes up), whichever tool it ran
    command = [*(_UNPRIVILEGED if os.geteuid() == 0 else []), sys.executable, "-m",
               "tests.hostile_exec_s38_lowered", change]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["first"][0] == "ok"  # its own result is kept
    status, value = seen["after"]
    assert status == "ok", value
    assert value["pid"] != seen["first"][1]  # a worker of its own
    assert value["opened"] == 100 and value["nice"] == os.nice(0)


@pytest.mark.parametrize("change", ["hard_file_limit", "priority"])
def test_what_a_call_lowered_is_given_back_to_the_next_where_this_process_may(
        change: str) -> None:
    plan = Plan()
    first = plan.call(st.lower_limits, hard=True) if change == "hard_file_limit" else plan.call(
        st.lower_priority)
    after = plan.call(st.open_files_and_priority, count=100, after=[first])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[first].status == "ok", result[first].error
    assert result[after].status == "ok", result[after].error
    assert result[after].value["opened"] == 100
    assert result[after].value["nice"] == os.nice(0)


# ---- a tool's module that takes long to import in its worker ----------------------------------


def test_a_call_whose_module_import_outlasts_its_timeout_in_the_worker_ends_by_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: the import (warm-up, before the call's timeout starts) had no bound at all: the
    # call given timeout=1 waited the 60 s the import took, then returned ok; an import that
    # hangs (a connect at import time, no timeout) hung its run for good. Now the import
    # gets _IMPORT_WAIT seconds of its own (60; 1 here), then counts against the call's
    from shoal.executors import process
    from tests import hostile_exec_s38_slow as slow

    monkeypatch.setattr(process, "_IMPORT_WAIT", 1.0)
    monkeypatch.setenv("SHOAL_S38_SLOW_IMPORT", "60")
    plan = Plan()
    slowed = plan.call(slow.after_a_slow_import)
    other = plan.call(st.open_files_and_priority, count=1)
    began = time.monotonic()
    result = shoal.run_sync(plan, process_workers=2, pass_env=["SHOAL_S38_SLOW_IMPORT"])
    assert time.monotonic() - began < 20
    assert result[other].status == "ok"
    outcome = result[slowed]
    assert outcome.status == "timed_out", outcome  # within its timeout's second and its own
    assert outcome.error is not None and outcome.error.type.endswith("ToolTimeoutError")


# ---- a worker stopped mid-call ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_stopped_mid_call_is_killed_and_its_call_fails_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: a call with no timeout whose worker was stopped (SIGSTOP, kill -STOP) waited for
    # good, and its run with it: a stopped process answers nothing and its pipe stays open
    # (an agent's process found stopped was killed after STOPPED_GRACE already)
    from shoal.executors import process

    monkeypatch.setattr(process, "_STOPPED_GRACE", 1.0)
    monkeypatch.setattr(process, "_STOPPED_CHECK", 0.1)
    plan = Plan()
    stopped = plan.call(st.stop_myself)
    sibling = plan.call(st.open_files_and_priority, count=1)
    result = shoal.run_sync(plan, process_workers=2)
    assert result[sibling].status == "ok"
    outcome = result[stopped]
    assert outcome.status == "failed" and outcome.error is not None, outcome
    assert outcome.error.type.endswith("WorkerCrashedError")
    assert "stopped (SIGSTOP or SIGTSTP)" in outcome.error.message
    assert "did not answer for 1 s" in outcome.error.message


# ---- the interpreter's settings a call changed -------------------------------------------------


def test_a_call_after_one_that_changed_the_interpreter_finds_it_as_the_worker_started() -> None:
    # was: the next call on that worker, of another tool, failed ("the result ... cannot be
    # pickled: ... excessively deep recursion required": a list 60 deep, under the earlier
    # call's recursion limit of 40), and ran under its trace and profile hooks (every line
    # of it calling them) with the garbage collector off
    plan = Plan()
    changed = plan.call(st.change_the_interpreter)
    after = plan.call(st.interpreter_state, after=[changed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].status == "ok", result[after].error
    seen = result[after].value
    assert seen["pid"] == result[changed].value  # the same worker, put back
    assert seen["limit"] == sys.getrecursionlimit()
    assert (seen["trace"], seen["profile"], seen["threads"], seen["gc"]) == (
        True, True, True, True)
