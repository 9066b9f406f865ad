"""An injected value whose ``settle`` raises: only its call fails, the run goes on."""

from __future__ import annotations

from typing import Annotated

import pytest

import shoal
from shoal.scheduler import scope
from shoal.schema import Injected
from shoal.store.base import EffectRecord

KIND = "tests.quitting_settle"


class Stop(BaseException):
    """A user's own BaseException, as some libraries raise to unwind."""


class Settling:
    """An injected value whose commit at the end of the attempt raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def settle(self, ok: bool) -> EffectRecord | None:
        raise self.error


@shoal.tool
def uses(value: Annotated[Settling, Injected(KIND)]) -> str:
    return "ran"


@shoal.tool
def bystander() -> int:
    return 7


@pytest.mark.parametrize("error", [SystemExit(3), GeneratorExit(), Stop("unwound")],
                         ids=["SystemExit", "GeneratorExit", "custom"])
def test_a_settle_raising_a_base_exception_fails_only_its_call(
        error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    # it escaped the driver's settling: the whole run stopped with an internal error
    monkeypatch.setitem(scope.INJECTORS, KIND, lambda call, run_scope: Settling(error))
    plan = shoal.Plan()
    plan.call(uses)
    plan.call(bystander)
    result = shoal.run_sync(plan)
    failed = result["uses#1"]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.type.endswith(type(error).__name__)
    assert result["bystander#1"].value == 7
