"""Ctrl-C raised by a span processor (a user's, or arriving while it runs) is a Ctrl-C.

It interrupts the run as a Ctrl-C anywhere else does: the run is cancelled, every call ends
with an outcome in the journal, and the caller of ``run_sync`` gets ``KeyboardInterrupt``
once that is done (before: it escaped the event loop at once, a raw traceback, the run left
``running`` with its calls in flight and no outcome).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from shoal.store.sqlite import SQLiteStore

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent


def test_ctrl_c_from_a_span_processor_cancels_the_run_and_every_call_has_an_outcome(
        tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    done = subprocess.run([sys.executable, "-m", "tests.otel_ctrl_c_s40", str(store)],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert json.loads(done.stdout) == {"caller": "KeyboardInterrupt"}, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    journal = SQLiteStore(store, read_only=True)
    record = journal.get_run("r1")
    assert record is not None and record.status == "cancelled", record
    outcomes = journal.outcomes("r1")
    assert {node: kept.outcome.status for node, kept in outcomes.items()} == {
        "a": "ok", "b": "cancelled"}
