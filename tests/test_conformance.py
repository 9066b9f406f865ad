"""The executor conformance suite (shoal.testing.conformance) on each of shoal's own backends.

Backends that cannot run here are skipped with the reason: ``process`` until its module imports,
``ray`` when Ray is not installed. With ``RAY_ADDRESS`` set (CI starts a Ray head) the Ray tests
use that cluster; otherwise one local Ray serves the whole module and is shut down after it.
"""

from typing import Any, ClassVar

import pytest

from shoal import Runtime
from shoal.executors.base import Call
from shoal.executors.thread import ThreadExecutor
from shoal.testing import ExecutorConformance
from shoal.testing.conformance import Route
from tests.conftest import ONE_AT_A_TIME


def _import_error(module: str) -> str:
    """Why ``module`` cannot be imported ("" when it can)."""
    try:
        __import__(module)
    except Exception as exc:  # any failure to import means the backend cannot be tested
        return f"{type(exc).__name__}: {exc}"
    return ""


PROCESS_MISSING = _import_error("shoal.executors.process")
RAY_MISSING = _import_error("ray") or _import_error("shoal.executors.ray")


class TestInlineConformance(ExecutorConformance):
    executor = "inline"
    runs_sync_tools = False  # shoal sends sync tools to threads, never inline


class TestThreadConformance(ExecutorConformance):
    executor = "thread"
    kills_on_timeout = False  # a thread cannot be stopped: its call is marked abandoned


class CountingThreadExecutor(ThreadExecutor):
    """Stands in for a third party's backend: shoal's thread pool, counting the calls it runs."""

    runs = 0

    async def execute(self, call: Call) -> Any:
        CountingThreadExecutor.runs += 1
        return await super().execute(call)


class TestPluggedInBackendConformance(TestThreadConformance):
    """A backend handed over with ``Runtime(executors=...)`` runs the suite, as documented."""

    def make_runtime(self, route: Route, **options: Any) -> Runtime:
        return super().make_runtime(route, executors={"thread": CountingThreadExecutor()},
                                    **options)

    def test_the_plugged_in_backend_ran_the_calls(self) -> None:
        before = CountingThreadExecutor.runs
        self.test_values_come_back_intact("sync", "tool")
        assert CountingThreadExecutor.runs > before


@pytest.mark.skipif(bool(PROCESS_MISSING),
                    reason=f"shoal.executors.process does not import: {PROCESS_MISSING}")
class TestProcessConformance(ExecutorConformance):
    executor = "process"
    serializes = True
    isolates_crashes = True
    # two workers even on a one-CPU machine, so the overlap and limit tests mean something
    runtime_options: ClassVar[dict[str, Any]] = {"process_workers": 2}


# ray_cluster (tests/conftest.py): Ray up for this module only, so its worker processes stay
# out of the child-process leak checks of the modules that run later


@ONE_AT_A_TIME  # the one Ray head
@pytest.mark.skipif(bool(RAY_MISSING), reason=f"Ray backend unavailable: {RAY_MISSING}")
class TestRayConformance(ExecutorConformance):
    executor = "ray"
    serializes = True
    isolates_crashes = True
    check_child_processes = False  # a local Ray keeps a pool of worker processes on purpose

    @pytest.fixture(autouse=True)
    def _on_ray(self, ray_cluster: None) -> None:
        """Every test here runs with Ray up."""


class TestRayActorPoolConformance(TestRayConformance):
    """Calls that reserve no CPU run on shoal's long-lived Ray actors instead of Ray tasks."""

    tool_options: ClassVar[dict[str, Any]] = {"resources": {"num_cpus": 0}}
    kills_on_timeout = frozenset({"async"})  # sync tools run on actor threads: abandoned
    isolates_crashes = False  # a crash takes the node's actor, and its other calls, with it
