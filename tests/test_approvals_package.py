"""The approvals package: its parts, the names it keeps at their old addresses, its imports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

import shoal
import shoal.approvals
from shoal import tool
from shoal.approvals import approval_hash, approval_reason
from shoal.cli.approver import ConsoleApprover
from shoal.store import approval_hash as store_approval_hash

MODULES = [
    "shoal.approvals", "shoal.approvals.policy", "shoal.approvals.ledger",
    "shoal.approvals.desk", "shoal.cli.approver", "shoal.store", "shoal.store.base",
    "shoal.scheduler.state", "shoal.scheduler.driver", "shoal.runtime",
]


def test_the_console_approver_is_found_at_each_address() -> None:
    assert shoal.ConsoleApprover is ConsoleApprover
    assert shoal.approvals.ConsoleApprover is ConsoleApprover
    from shoal.approvals import ConsoleApprover as old_address

    assert old_address is ConsoleApprover
    assert "ConsoleApprover" in shoal.approvals.__all__


def test_an_unknown_name_of_the_package_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="ConsoleApprovr"):
        getattr(shoal.approvals, "ConsoleApprovr")  # noqa: B009 (a name that is not there)


@pytest.mark.parametrize("args", [{"amount": 5, "to": "bob"}, {"text": "bad \ud800 text"},
                                  {}, {"nested": {"b": [1, 2], "a": None}}])
def test_the_store_keeps_the_ledgers_hash_at_its_old_address(args: Mapping[str, Any]) -> None:
    assert store_approval_hash("pay", args) == approval_hash("pay", args)


@pytest.mark.parametrize("module", MODULES)
def test_each_part_imports_first_in_a_fresh_process(module: str) -> None:
    # the ledger and the store import each other's parts: no order may go round in a circle
    probe = (f"import {module}, shoal.approvals as a, shoal.store as s; "
             "assert a.ConsoleApprover.__module__ == 'shoal.cli.approver'; "
             "assert s.approval_hash('t', {'x': 1}) == a.approval_hash('t', {'x': 1})")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_policy_and_ledger_load_no_console() -> None:
    probe = ("import sys, shoal.approvals as a; a.RulesApprover(allow=['*']); "
             "print(sorted(m for m in ('rich', 'typer', 'shoal.cli', 'shoal.cli.approver', "
             "'shoal.approvals.desk') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@tool
async def plain(x: int) -> int:
    """No approval."""
    return x


@tool(approval=True)
async def always(x: int) -> int:
    """Always asks."""
    return x


@tool(approval=lambda args: args["x"] > 10)
async def large(x: int) -> int:
    """Asks for large values."""
    return x


def _raises(args: Mapping[str, Any]) -> bool:
    raise KeyError("amount")


@tool(approval=_raises)
async def broken(x: int) -> int:
    """Its rule fails."""
    return x


def test_who_must_approve_what() -> None:
    assert approval_reason(plain, {"x": 1}) == ""
    assert approval_reason(always, {"x": 1}) == "tool 'always' always needs approval"
    assert approval_reason(large, {"x": 1}) == ""
    assert approval_reason(large, {"x": 11}) == (
        "the approval rule of tool 'large' matched these arguments")
    # a rule that fails cannot say "no need": the call is asked about
    assert approval_reason(broken, {"x": 1}) == (
        "the approval rule of tool 'broken' raised KeyError: 'amount'")
