"""Found by attacking shoal's outcomes, session 39 (second round): a status set after an
outcome was made, and the status check kept off the hot path.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect

import pytest

import shoal
from shoal import Plan
from shoal.exceptions import StatusError
from shoal.outcome import STATUSES, Outcome, RunResult
from shoal.testing import run_virtual
from tests.test_otel import nap


def test_a_status_set_after_the_outcome_was_made_does_not_break_the_counts() -> None:
    # was: RunResult.counts raised KeyError: 'okay' (and to_dict, and everything printing a
    # result). Counted under its own name now; the run is not ok.
    plan = Plan()
    plan.call(nap, seconds=0.5, tag="a")
    plan.call(nap, seconds=0.5, tag="b")
    result = run_virtual(shoal.run(plan))
    outcome = next(iter(result.outcomes.values()))
    outcome.status = "okay"  # type: ignore[assignment]
    assert result.counts["okay"] == 1 and result.counts["ok"] == 1
    assert not result.ok
    assert result.to_dict()["counts"]["okay"] == 1


def test_counts_name_every_status_even_at_zero() -> None:
    result = RunResult("r", {"n": Outcome("n", "t", "ok")}, 0.0)
    assert result.counts == {**dict.fromkeys(STATUSES, 0), "ok": 1}


def test_the_written_out_init_takes_the_fields_in_order_with_their_defaults() -> None:
    # Outcome's __init__ is written out (the status check inline): it must stay the one the
    # dataclass would make, or replace() and positional callers break
    params = list(inspect.signature(Outcome).parameters.values())
    fields = dataclasses.fields(Outcome)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        want = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        assert param.default == want, field.name


@pytest.mark.parametrize("status", [*STATUSES, "".join(["o", "k"])])
def test_every_status_however_made_is_taken(status: str) -> None:
    # a status read from a file or joined at run time is another object than the literal
    outcome = Outcome("n", "t", status)  # type: ignore[arg-type]
    assert outcome.status == status
    assert dataclasses.replace(outcome, value=1).status == status


class Hostile(str):
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("status", ["okay", ["ok"], {"ok": 1}, Hostile("okay"), b"ok", 0])
def test_an_unknown_status_is_still_refused_by_init_and_replace(status: object) -> None:
    with pytest.raises(StatusError):
        Outcome("n", "t", status)  # type: ignore[arg-type]
    with pytest.raises(StatusError):
        dataclasses.replace(Outcome("n", "t", "ok"), status=status)  # type: ignore[arg-type]


def test_an_unhashable_str_equal_to_a_status_is_taken() -> None:
    assert Outcome("n", "t", Hostile("failed")).status == "failed"  # type: ignore[arg-type]


def test_a_str_enum_status_is_taken_and_a_typo_in_one_refused() -> None:
    class Said(enum.StrEnum):
        FAILED = "failed"
        TYPO = "fialed"

    assert Outcome("n", "t", Said.FAILED).status == "failed"  # type: ignore[arg-type]
    with pytest.raises(StatusError, match="fialed"):
        Outcome("n", "t", Said.TYPO)  # type: ignore[arg-type]
