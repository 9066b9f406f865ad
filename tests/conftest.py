"""Shared helpers for the core runtime tests.

pytest-asyncio is not used: async tests build a coroutine and hand it to :func:`arun`, which runs
it on a fresh event loop under a hard timeout (so a scheduler bug shows up as a failure, never as
a hung test run) and checks that no asyncio task outlived the run.
"""

import asyncio
import functools
import gc
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from typing import Any, Self, TypeVar

import psutil
import pytest
from hypothesis import HealthCheck, settings

from shoal.testing import run_virtual

T = TypeVar("T")

#: Upper bound for one run in a test on the virtual clock: far above what any healthy run
#: here needs.
HANG_TIMEOUT = 5.0
#: The same for a run in real time: wider, as a machine loaded many times over its cores
#: stretches a healthy run of a second several times over (a hang still fails, later).
REAL_HANG_TIMEOUT = 30.0

#: The tests that pytest-xdist (``-n``, ``--dist loadgroup``) runs one after another, on one
#: worker: those on the one Ray head (or a Ray of their own: one test's Ray workers would
#: take another's cores and time), those that load the local model (memory and both cores),
#: and the suite's one strict mypy run with its readers. Other tests run beside them.
ONE_AT_A_TIME = pytest.mark.xdist_group("one_at_a_time")

# Hypothesis times its examples: on a loaded machine (CI's two busy cores) a healthy example,
# or drawing one, takes seconds, and its 200 ms deadline or its too_slow health check failed
# tests that had found nothing wrong. These are the defaults every property test builds on
# (made before the test modules are imported: a test's own @settings keeps what it sets).
settings.register_profile("loaded", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loaded")


class Hung(AssertionError):
    """The run did not finish within its hang bound: the scheduler stalled."""


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks on the running loop other than the current one."""
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


def arun(coro: Coroutine[Any, Any, T], *, timeout: float | None = None,
         check_tasks: bool = True, virtual: bool = False) -> T:
    """Run ``coro`` on a fresh loop; fail (instead of hanging) when it takes over ``timeout``.

    ``virtual=True`` runs it on :class:`shoal.testing.VirtualClockLoop`: sleeps cost no real
    time and ``loop.time()`` is exact, so a test can assert the very moment things happen
    (see :func:`elapsed`). ``timeout`` is then virtual too. Only for pure-asyncio work: thread
    and process backends run in real time, which the virtual clock does not see.
    ``timeout`` defaults to :data:`HANG_TIMEOUT` on the virtual clock and to
    :data:`REAL_HANG_TIMEOUT` in real time.
    """
    if timeout is None:
        timeout = HANG_TIMEOUT if virtual else REAL_HANG_TIMEOUT

    async def main() -> T:
        scope = asyncio.timeout(timeout)  # in this task, so leftover_tasks() stays exact
        try:
            async with scope:
                value = await coro
        except TimeoutError:
            if scope.expired():
                raise Hung(f"the run did not finish within {timeout} s") from None
            raise
        if check_tasks:
            await asyncio.sleep(0)  # let done-callbacks of just-finished tasks run
            left = leftover_tasks()
            assert not left, f"asyncio tasks left running after the run: {left}"
        return value

    if virtual:
        return run_virtual(main())
    return asyncio.run(main())


async def elapsed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """Await ``awaitable``; return its value and how long it took on the running loop's clock.

    On a virtual-clock loop that is exact: the sum of the sleeps on its critical path.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    value = await awaitable
    return value, loop.time() - began


class Gauge:
    """Counts how many callers are inside at once and remembers the maximum (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.total = 0

    def __enter__(self) -> Self:
        with self._lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


class Stamps:
    """Records (label, moment) pairs on a monotonic clock, relative to its creation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.items: list[tuple[str, float]] = []

    def mark(self, label: str) -> float:
        moment = time.perf_counter() - self.t0
        with self._lock:
            self.items.append((label, moment))
        return moment

    def of(self, label: str) -> float:
        return next(t for name, t in self.items if name == label)

    def labels(self) -> list[str]:
        return [name for name, _ in self.items]


@pytest.fixture
def gauge() -> Gauge:
    return Gauge()


@pytest.fixture
def stamps() -> Stamps:
    return Stamps()


@pytest.fixture
def no_child_process_leak() -> Iterator[None]:
    """Fail if a test leaves child processes of this interpreter running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra = [p for p in me.children(recursive=True)
                 if p.pid not in before and p.is_running()
                 and p.status() != psutil.STATUS_ZOMBIE]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"child processes left behind: {[p.cmdline() for p in extra]}"


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie nobody reaped yet).

    One psutil call: ``pid_exists`` then ``Process`` would race with the process ending
    in between (``NoSuchProcess``).
    """
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def until(predicate: Callable[[], object], within: float = 30.0,
                every: float = 0.01) -> None:
    """Wait, without blocking the loop, until ``predicate()`` holds; fail after ``within`` s.

    For state that nothing announces (a file another process writes, a process's status, what
    a test double has recorded so far), so it is polled every ``every`` seconds.
    """
    end = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < end, f"still not so after {within} s"
        await asyncio.sleep(every)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` (in real time, blocking) until it holds or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def stderr_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60.0) -> str:
    """Read ``proc``'s stderr until it shows ``needle``; return what was read.

    For a subprocess test to act once the program has said it reached a state (a prompt, the
    first Ctrl-C taken) rather than after a fixed sleep. It reads the pipe's descriptor, as
    ``communicate()`` does, so nothing is held in a buffer ``communicate()`` would not see:
    add what this returns to the ``err`` that ``communicate()`` gives later.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout} s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr closed before {needle!r}: {seen!r}"
            seen += chunk
    return seen.decode(errors="replace")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Ray up for one test module, connected as shoal connects (``RAY_ADDRESS`` if set).

    A module that needs more (the cluster's address, say) defines its own.
    """
    from shoal.executors.ray import RayExecutor

    holder = RayExecutor()  # holds the connection, so every runtime below reuses it
    asyncio.run(holder.start())
    try:
        yield
    finally:
        asyncio.run(holder.close())  # shuts down only a Ray that shoal started


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect the garbage a stalled run leaves (futures holding errors) before moving on.

    Their finalizers log through asyncio's exception handler; run late, inside an unrelated
    import, they can trip CPython 3.11's shared AST recursion counter (SystemError in ast.parse).
    """
    yield
    gc.collect()


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the test (what it frees, it frees after)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave what collection made out of the garbage collector's full collections for good.

    The test modules, their parameters and what they import (half a million objects) live
    as long as the session; each full collection walked them all again: 0.17 s of CPU each,
    3.1 s in 35 s of tests/test_agents.py and a few others (0.5 s frozen). Frozen after one
    collection, they are left out; what the tests make is collected as before.
    """
    del session
    gc.collect()
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    """In the main process of a pytest-xdist run: a folder for the run's one strict mypy run.

    Each worker collects the suite and reaches the hook below; the folder (passed on in the
    environment, which the workers inherit) lets the first start mypy and the rest read it.
    """
    if hasattr(config, "workerinput") or config.getoption("dist", "no") == "no":
        return
    from tests.mypy_run import SHARED_FOLDER

    folder = tempfile.mkdtemp(prefix="shoal-mypy-")
    os.environ[SHARED_FOLDER] = folder
    config.add_cleanup(functools.partial(shutil.rmtree, folder, ignore_errors=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Make a report's text UTF-8, its lone surrogates as ``\\udcff`` escapes.

    Many tests here pass lone surrogates around; one of them failing put its value in the
    report, which pytest-xdist could not send from its worker ("strings must be utf-8
    encodable"): the whole run stopped with an INTERNALERROR, every other result lost.
    """
    del item, call
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    report.sections = [(name, _utf8(text)) for name, text in report.sections]
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        report.longrepr = (longrepr[0], longrepr[1], _utf8(longrepr[2]))
    elif longrepr is not None:
        text = str(longrepr)
        if _utf8(text) != text:
            report.longrepr = _utf8(text)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: The tests that read the suite's one strict mypy run (``tests/mypy_run.py``).
MYPY_TESTS = {"test_mypy_strict_is_clean", "test_typical_agent_programs_pass_mypy_strict"}


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they will
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the strict mypy run now, beside the tests, in a run of the whole suite.

    There the tests before its first reader (tests/test_agents_typing.py) are the
    ``test_agent*`` files, which hold no tight real-time bound. A run of chosen files can
    put a timed test there (a Ctrl-C answered within 2 s, say): mypy runs when asked, then.
    """
    keep_groups_together(config, items)
    whole_suite = config.args_source is pytest.Config.ArgsSource.TESTPATHS
    if (whole_suite and not config.option.collectonly
            and any(item.name in MYPY_TESTS for item in items)):
        from tests.mypy_run import start
        from tests.test_agents_typing import USER_PROGRAM

        start(USER_PROGRAM)


def keep_groups_together(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker under ``--dist loadgroup``: end grouped tests' ids in ``@group``.

    The scheduler reads a test's group from that ending, which pytest-xdist writes into the
    old ``_nodeid`` field; since pytest 9.2 an item's id lives in ``_id`` and that write is
    lost: the groups are silently spread over the workers (pytest-xdist issue 1386). Written
    here where the ending is missing (and so not twice once pytest-xdist writes it again).
    """
    if not getattr(config.option, "loadgroup", False) or not hasattr(config, "workerinput"):
        return
    from _pytest.nodeid import NodeId  # where pytest keeps an item's id since 9.2

    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        ending = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(ending) and hasattr(item, "_id"):
            item._id = NodeId.parse(item.nodeid + ending)
