"""The Ray backend (shoal.executors.ray) against a real Ray.

One Ray serves the whole module: the CI head when ``RAY_ADDRESS`` is set, else a local Ray that
shoal starts (on loopback) and shuts down after the last test. One test starts a Ray of its
own in a subprocess without ``RAY_ADDRESS``, to cover the local path either way. Tools live in
tests/ray_tools.py, which Ray workers import.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import shoal  # noqa: E402  (after the skip: nothing here runs without Ray)
from shoal import Plan, Runtime  # noqa: E402
from shoal.exceptions import (  # noqa: E402
    ExecutorError,
    MissingDependencyError,
    SerializationError,
    WorkerCrashedError,
)
from shoal.executors.ray import RayExecutor, _is_loopback, ray_options  # noqa: E402
from shoal.outcome import RunResult  # noqa: E402
from tests import ray_tools as rt  # noqa: E402
from tests.conftest import ONE_AT_A_TIME, arun, until  # noqa: E402

pytestmark = ONE_AT_A_TIME  # the one Ray head

ROOT = Path(__file__).resolve().parents[1]
FREE = {"num_cpus": 0}  # reserves nothing: runs on shoal's actor pool
KINDS = ["sync", "async"]


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """Ray up for the module: connect to ``RAY_ADDRESS`` if set, else start a local Ray.

    shoal's own executor does it (as a user's first run would), and holds the connection so
    that every runtime below reuses it; closing it shuts down a Ray it started, only.
    """
    holder = RayExecutor()
    asyncio.run(holder.start())
    try:
        yield
    finally:
        asyncio.run(holder.close())


def run(plan: Plan, timeout: float = 60.0, **options: Any) -> RunResult:
    """Run ``plan`` on a fresh runtime (closed afterwards) under a hang limit."""

    async def go() -> RunResult:
        async with Runtime(**options) as runtime:
            return await runtime.run(plan)

    return arun(go(), timeout=timeout)


def on_ray(tool: shoal.Tool[..., Any], **options: Any) -> shoal.Tool[..., Any]:
    return tool.options(isolation="ray", **options)


def peak_overlap(spans: Sequence[Sequence[float]]) -> int:
    edges = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 0))


# ---- values, errors, routes ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("resources", [None, FREE], ids=["task", "pool"])
def test_values_and_typed_errors_come_back_intact(kind: str,
                                                  resources: dict[str, int] | None) -> None:
    extra = {} if resources is None else {"resources": resources}
    echo = on_ray(rt.pick(rt.echo, rt.echo_async, kind), **extra)
    failing = on_ray(rt.pick(rt.fail, rt.fail_async, kind), **extra)
    value = {"text": "héllo ✓", "n": 3, "items": [1, (2, 3)], "raw": b"\x00\xff", "none": None}
    plan = Plan()
    ok = plan.call(echo, value=value)
    bad = plan.call(failing, message="no luck", code=7)
    result = run(plan)
    assert result[ok].status == "ok", result[ok]
    assert result.value(ok) == value
    assert result[ok].executor == "ray"
    error = result[bad].error
    assert result[bad].status == "failed" and error is not None, result[bad]
    assert error.type == "tests.ray_tools.ToolFailure"
    assert error.message == str(rt.ToolFailure("no luck", 7, {"code": 7, "tags": ["x"]}))
    assert failing.fn.__name__ in error.traceback  # the worker's traceback is kept
    assert result[bad].attempts == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("resources", [None, FREE], ids=["task", "pool"])
def test_a_tool_raising_cancelled_error_itself_fails_saying_so(
        kind: str, resources: dict[str, int] | None) -> None:
    # the contract of the other backends: nothing cancelled the call, so it is the tool's
    # failure (retried as one), not a crashed worker or a cancellation
    extra = {} if resources is None else {"resources": resources}
    bad = on_ray(rt.pick(rt.raise_cancelled, rt.raise_cancelled_async, kind), retries=1,
                 backoff=0.01, **extra)
    plan = Plan()
    ref = plan.call(bad)
    sibling = plan.call(on_ray(rt.echo, resources=FREE), value="kept")
    result = run(plan)
    out = result[ref]
    assert out.status == "failed" and out.attempts == 2, out
    assert out.error is not None and out.error.type == "shoal.exceptions.ToolDefinitionError"
    assert out.error.message.startswith(f"tool {bad.name!r} raised CancelledError, but nothing "
                                        "cancelled its call"), out.error.message
    assert bad.fn.__name__ in out.error.traceback  # the cause: where the tool raised it
    assert result.value(sibling) == "kept"


@pytest.mark.parametrize("kind", KINDS)
def test_sync_and_async_tools_run_in_ray_workers(kind: str) -> None:
    where = rt.pick(rt.where, rt.where_async, kind)
    plan = Plan()
    as_task = plan.call(on_ray(where))
    pooled = [plan.call(on_ray(where, resources=FREE)) for _ in range(3)]
    result = run(plan)
    assert result.ok, result
    pids = {result.value(as_task), *(result.value(r) for r in pooled)}
    assert os.getpid() not in pids
    # one node here, so one pool actor serves every call that reserves nothing
    assert len({result.value(r) for r in pooled}) == 1


def test_unpicklable_arguments_and_results_are_serialization_errors() -> None:
    import threading

    plan = Plan()
    arg = plan.call(on_ray(rt.takes_anything), value=threading.Lock())
    res = plan.call(on_ray(rt.returns_lock))
    pooled_res = plan.call(on_ray(rt.returns_lock, resources=FREE))
    result = run(plan)
    for ref in (arg, res, pooled_res):
        error = result[ref].error
        assert result[ref].status == "failed" and error is not None, result[ref]
        assert error.type == "shoal.exceptions.SerializationError", error
        assert "lock" in error.message
    assert issubclass(SerializationError, ExecutorError)


# ---- resources ---------------------------------------------------------------------------------


def test_resources_map_to_ray_options() -> None:
    options, pooled = ray_options((("GPU", 1.0), ("accelerator", 2.0), ("memory", 1e9),
                                   ("num_cpus", 2.0)))
    assert options == {"num_cpus": 2.0, "num_gpus": 1.0, "memory": 1_000_000_000,
                       "resources": {"accelerator": 2.0}, "max_retries": 0,
                       "retry_exceptions": False}
    assert not pooled
    assert ray_options(())[0]["num_cpus"] == 1.0  # Ray's default: one CPU per call
    assert not ray_options(())[1]
    assert ray_options((("num_cpus", 0.0),))[1]  # reserves nothing: the actor pool
    assert not ray_options((("num_cpus", 0.0), ("GPU", 1.0)))[1]


def test_loopback_addresses_are_recognised() -> None:
    for address in ("127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379"):
        assert _is_loopback(address), address
    for address in ("10.0.0.5:6379", "ray://head.example:10001", "auto"):
        assert not _is_loopback(address), address


def test_num_cpus_zero_runs_beyond_the_cluster_cpus() -> None:
    calls, seconds = 40, 0.3
    plan = Plan()
    for kind in KINDS:
        napper = on_ray(rt.pick(rt.nap, rt.nap_async, kind), resources=FREE)
        for _ in range(calls):
            plan.call(napper, seconds=seconds)
    start = time.monotonic()
    result = run(plan)
    elapsed = time.monotonic() - start
    assert result.ok, result.counts
    # serially, or a CPU each, this would take 2 * 40 * 0.3 / CPUs seconds
    assert elapsed < 2 * calls * seconds / max(cluster_cpus(), 1) / 2, elapsed


def test_one_cpu_per_call_limits_concurrency_to_the_cluster_cpus() -> None:
    cpus = cluster_cpus()
    plan = Plan()
    refs = [plan.call(on_ray(rt.span, resources={"num_cpus": 1}), seconds=0.4)
            for _ in range(3 * cpus)]
    result = run(plan)
    assert result.ok, result.counts
    peak = peak_overlap([result.value(r) for r in refs])
    assert min(2, cpus) <= peak <= cpus, f"{peak} calls overlapped on {cpus} CPUs"


# ---- timeouts, cancellation, crashes ------------------------------------------------------------


def warm_up() -> None:
    """Have a worker ready for each cluster CPU, and the pool actor, before a timing test.

    A Ray worker takes a second or more to start (several on a busy machine), and a call's
    timeout counts from its submission: without this, a short timeout can end a call before
    it ever started, and the test would prove nothing about stopping running work.
    """
    plan = Plan()
    for _ in range(cluster_cpus()):
        plan.call(on_ray(rt.span), seconds=0.3)  # side by side: one worker each
    plan.call(on_ray(rt.where, resources=FREE))
    assert run(plan).ok


def cpus_freed_by(deadline: float) -> bool:
    """Whether every cluster CPU is free again before ``deadline`` (``time.monotonic()``).

    A Ray task holds its CPU until it really ends, so this tells a stopped task from one that
    was only told to stop (a ``KeyboardInterrupt`` reaches ``time.sleep`` when it returns).
    """
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU"):
            return True
        time.sleep(0.05)
    return False


def test_timeouts_stop_tasks_and_pooled_async_calls(tmp_path: Path) -> None:
    timeout, seconds = 1.0, 4.0
    plan = Plan()
    cases = {
        "task-sync": on_ray(rt.slow_then_mark, timeout=timeout),
        "task-async": on_ray(rt.slow_then_mark_async, timeout=timeout),
        "pool-async": on_ray(rt.slow_then_mark_async, timeout=timeout, resources=FREE),
        "pool-sync": on_ray(rt.slow_then_mark, timeout=timeout, resources=FREE),
    }
    refs = {name: plan.call(t, directory=str(tmp_path), name=name, seconds=seconds)
            for name, t in cases.items()}
    warm_up()
    start = time.monotonic()
    result = run(plan)
    assert time.monotonic() - start < timeout + 2.0, "timing out took too long"
    for name, ref in refs.items():
        assert result[ref].status == "timed_out", result[ref]
        assert (tmp_path / f"{name}.started").exists(), f"{name} never started"
    # a thread in the pool actor cannot be stopped: the outcome says so
    assert [n for n, r in refs.items() if result[r].abandoned] == ["pool-sync"]
    # the tasks' workers were killed, well before their work would have ended
    assert cpus_freed_by(start + seconds - 1.0), "a timed-out task still holds its CPU"
    time.sleep(max(0.0, start + seconds + 0.5 - time.monotonic()))  # past its natural end
    done = sorted(p.stem for p in tmp_path.glob("*.done"))
    assert done == ["pool-sync"], f"stopped work finished anyway: {done}"


def test_cancelling_a_call_through_the_handle(tmp_path: Path) -> None:
    seconds = 4.0
    plan = Plan()
    target = plan.call(on_ray(rt.slow_then_mark), directory=str(tmp_path), name="target",
                       seconds=seconds)
    sibling = plan.call(on_ray(rt.echo, resources=FREE), value="fine")
    after = plan.call(rt.echo.options(isolation="ray"), value=target)
    cancelled_at: list[float] = []

    async def go() -> RunResult:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            await until(lambda: (tmp_path / "target.started").exists(), every=0.02)
            cancelled_at.append(time.monotonic())
            handle.cancel(target)
            return await handle

    result = arun(go(), timeout=60)
    assert result[target].status == "cancelled", result[target]
    assert not result[target].abandoned
    assert result.value(sibling) == "fine"
    assert result[after].status == "skipped"
    assert cpus_freed_by(cancelled_at[0] + seconds - 1.0), "the cancelled task holds its CPU"
    time.sleep(max(0.0, cancelled_at[0] + seconds + 0.5 - time.monotonic()))
    assert not (tmp_path / "target.done").exists(), "the cancelled task ran to the end"


def test_workers_that_ignore_sigint_take_it_back_for_ray_cancel() -> None:
    """A head started from a script's background job gives its workers SIGINT ignored.

    Ray's polite cancel (``KeyboardInterrupt`` through ``_thread.interrupt_main``) does
    nothing in such a worker; tasks put Python's handler back first.
    """
    script = ("import signal\n"
              "from shoal.executors.ray import _take_sigint\n"
              "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
              "_take_sigint()\n"
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_a_dying_worker_is_an_executor_error_and_retried(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "pool").mkdir()
    plan = Plan()
    dead = plan.call(on_ray(rt.die), code=9)
    retried = plan.call(on_ray(rt.die_once, retries=1, backoff=0.01),
                        directory=str(tmp_path / "task"))
    pooled = plan.call(on_ray(rt.die_once, retries=1, backoff=0.01, resources=FREE),
                       directory=str(tmp_path / "pool"))
    result = run(plan)
    error = result[dead].error
    assert result[dead].status == "failed" and error is not None, result[dead]
    assert error.type == "shoal.exceptions.WorkerCrashedError", error
    assert issubclass(WorkerCrashedError, ExecutorError)
    for ref in (retried, pooled):  # the first attempt died; shoal's retry succeeded
        assert result[ref].status == "ok", result[ref]
        assert result.value(ref) == 2 and result[ref].attempts == 2


# ---- plans, scale, connection -----------------------------------------------------------------


def test_the_same_plan_runs_inline_and_on_ray_unchanged() -> None:
    plan = Plan()
    a = plan.call(rt.add, a=1, b=2)
    b = plan.call(rt.add, a=a, b=10)
    parts = plan.call(rt.echo_async, value={"n": 5, "tags": ["x", "y"]})
    c = plan.call(rt.join, parts=[a, b, parts["n"], parts["tags"][1]])
    inline = run(plan)
    on_ray_result = run(plan, executor="ray")
    assert {o.executor for o in inline} == {"inline"}
    assert {o.executor for o in on_ray_result} == {"ray"}
    for ref in (a, b, parts, c):
        assert on_ray_result.value(ref) == inline.value(ref)
    assert on_ray_result.value(c) == "3-13-5-y"


@pytest.mark.parametrize("resources", [None, FREE], ids=["task", "pool"])
def test_a_fan_out_of_1000_nodes_completes(resources: dict[str, int] | None) -> None:
    echo = on_ray(rt.echo) if resources is None else on_ray(rt.echo, resources=resources)
    plan = Plan()
    refs = [plan.call(echo, value=i) for i in range(1000)]
    result = run(plan, timeout=80)
    assert result.ok, result.counts
    assert [result.value(r) for r in refs] == list(range(1000))


def test_closing_leaves_a_ray_that_shoal_did_not_start_running() -> None:
    plan = Plan()
    ref = plan.call(on_ray(rt.echo), value=1)
    assert run(plan).value(ref) == 1
    assert ray.is_initialized()  # the module's connection is still up


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes "import ray" fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'shoal\[ray\]'"):
        asyncio.run(RayExecutor().start())


LOCAL_SCRIPT = """
import json, shoal, ray
from shoal import Plan, Runtime
from tests import ray_tools as rt
plan = Plan()
a = plan.call(rt.echo, value="local")
b = plan.call(rt.where.options(resources={"num_cpus": 0}))
async def main():
    async with Runtime(executor="ray") as runtime:
        result = await runtime.run(plan)
        node_ip = ray.util.get_node_ip_address()
    return result, node_ip
import asyncio
result, node_ip = asyncio.run(main())
print(json.dumps({"ok": result.ok, "value": result.value(a), "executor": result[a].executor,
                  "node_ip": node_ip, "up_after_close": ray.is_initialized()}))
"""


def test_without_ray_address_shoal_starts_a_local_ray() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", LOCAL_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"ok": True, "value": "local", "executor": "ray",
                      "node_ip": "127.0.0.1", "up_after_close": False}


def test_no_ray_tasks_left_running() -> None:
    """Last in the module: every task the tests started has ended (or been killed)."""
    try:
        from ray.util.state import list_tasks

        running = list_tasks(filters=[("state", "=", "RUNNING")], raise_on_missing_output=False)
    except Exception:  # the state API needs the dashboard, which neither Ray here runs
        running = None
    if running is not None:
        assert not running, running
    end = time.monotonic() + 15
    while time.monotonic() < end:
        total, free = ray.cluster_resources(), ray.available_resources()
        if free.get("CPU") == total.get("CPU"):
            break
        time.sleep(0.1)
    assert free.get("CPU") == total.get("CPU"), f"CPUs still held: {free} of {total}"
