"""A hostile user of the Ray backend (sweep 34); see :mod:`tests.test_hostile_exec_s34`.

Each test here failed before the fix it names.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from shoal import Plan, RunResult, Runtime
from tests import hostile_exec_tools as ht
from tests.conftest import ONE_AT_A_TIME, arun

pytestmark = [ONE_AT_A_TIME, pytest.mark.usefixtures("ray_cluster")]


@pytest.mark.parametrize("kind", ["exit", "interrupt"])
def test_a_result_whose_pickling_raises_fails_its_call_and_the_actor_pool_lives_on(
        kind: str) -> None:
    # was: its SystemExit (or KeyboardInterrupt) left shoal's pool actor by the reply's
    # pickling and ended the actor's event loop: the call and every later call on the pool
    # (num_cpus=0), in any run of the process, waited for ever (or timed out)
    pooled = {"isolation": "ray", "resources": {"num_cpus": 0}, "timeout": 20.0}

    async def main() -> None:
        async with Runtime() as runtime:
            for _ in range(2):  # the pool still serves the next run
                plan = Plan()
                bad = plan.call(ht.unpicklable_result.options(**pooled), kind=kind)
                sibling = plan.call(ht.echo.options(**pooled), value="kept")
                result = await runtime.run(plan)
                error = result[bad].error
                assert error is not None, result[bad]
                if kind == "exit":
                    assert error.type == "shoal.exceptions.SerializationError", error
                    assert "cannot be pickled: SystemExit: 7" in error.message
                else:  # as on the process backend: the tool's own KeyboardInterrupt
                    assert error.type == "KeyboardInterrupt", error
                assert result.value(sibling) == "kept"

    arun(main(), timeout=120)


def test_a_result_whose_pickling_exits_is_a_serialization_error_in_a_ray_task() -> None:
    # was: WorkerCrashedError 'Ray reported WorkerCrashedError' (the SystemExit ended the Ray
    # worker); the process backend says SerializationError, as for any result that won't pickle
    plan = Plan()
    bad = plan.call(ht.unpicklable_result.options(isolation="ray", timeout=20.0), kind="exit")

    async def main() -> RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    error = arun(main(), timeout=120)[bad].error
    assert error is not None and error.type == "shoal.exceptions.SerializationError", error
    assert "cannot be pickled: SystemExit: 7" in error.message


def test_an_async_tool_leaving_a_task_that_ignores_its_cancel_returns_in_a_ray_task() -> None:
    # was: asyncio.run waited for that task for ever: the call ended timed_out, value lost
    plan = Plan()
    left = plan.call(ht.leaves_a_stubborn_task.options(isolation="ray", timeout=30.0))

    async def main() -> RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    assert arun(main(), timeout=120).value(left) == "done"


def test_a_sync_tool_raising_generator_exit_on_the_actor_pool_fails_with_it() -> None:
    # was: failed with ray.exceptions.RayTaskError(GeneratorExit), Ray's wrapper naming its
    # actor, pid and address: the GeneratorExit escaped the actor's coroutine uncaught
    plan = Plan()
    pooled = {"isolation": "ray", "resources": {"num_cpus": 0}, "timeout": 20.0}
    bad = plan.call(ht.raises_generator_exit.options(**pooled))
    sibling = plan.call(ht.echo.options(**pooled), value="kept")

    async def main() -> RunResult:
        async with Runtime() as runtime:
            return await runtime.run(plan)

    result = arun(main(), timeout=120)
    error = result[bad].error
    assert error is not None and error.type == "GeneratorExit", error
    assert result.value(sibling) == "kept"
