"""Defects an earlier session found and left: each test fails without its fix."""

from __future__ import annotations

import shoal
from shoal import Plan
from tests import found_s37_tools as ft

# ---- a process worker gives every call its signal handlers, import path and modules back ---


def test_a_call_after_one_that_changed_signals_and_imports_finds_the_workers_own() -> None:
    # was: the later call found the SIGTERM handler, the ignored SIGINT, the blocked SIGUSR1,
    # the alarm (which would have killed the worker an hour later, mid-call), the extra
    # sys.path entry and the fake json module the earlier call left on the same worker
    plan = Plan()
    before = plan.call(ft.imports_and_signals)
    changed = plan.call(ft.change_imports_and_signals, after=[before])
    after = plan.call(ft.imports_and_signals, after=[changed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].value["pid"] == result[changed].value  # the same worker
    assert result[after].value == result[before].value
