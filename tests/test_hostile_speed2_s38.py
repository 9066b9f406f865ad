r"""The journal gives back exactly the text it was given, and its writer's cuts keep that.

Text a model or a tool hands shoal can hold the two code points of a surrogate pair
(``"\ud83d\ude00"``, which is not the one character ``"\U0001f600"``) or a lone surrogate.
Each test writes such text to a real SQLite journal and reads it back.
"""

from __future__ import annotations

from pathlib import Path

from shoal.events import Event
from shoal.outcome import ErrorInfo, Outcome
from shoal.store.base import EventRecord, OutcomeRecord, RunRecord
from shoal.store.sqlite import SQLiteStore

PAIR = "\ud83d\ude00"  # two code points: JSON's escapes read back as one character
HOSTILE = f"bad {PAIR} and \ud800 \x00 é"


def _store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "runs.db")
    store.write([RunRecord("r", 1.0, 1, "fp")])
    return store


def test_an_error_message_comes_back_exactly(tmp_path: Path) -> None:
    store = _store(tmp_path)
    error = ErrorInfo("ValueError", HOSTILE, f"Traceback {PAIR}")
    store.write([OutcomeRecord("r", Outcome("n", "t", "failed", error=error, attempts=1))])
    store.close()
    back = SQLiteStore(tmp_path / "runs.db").outcomes("r")["n"].outcome.error
    assert back is not None
    assert (back.message, back.traceback) == (HOSTILE, f"Traceback {PAIR}")


def test_a_run_plan_and_source_with_a_surrogate_pair_come_back_exactly(tmp_path: Path) -> None:
    # resume compares the journal's plan with the fresh one: a node id read back joined was
    # a changed plan, and the run could not be resumed
    store = SQLiteStore(tmp_path / "runs.db")
    plan = {"nodes": {PAIR: ["tool", "digest"]}, "edge_list": [[PAIR, "b", "data", HOSTILE]]}
    store.write([RunRecord("r", 1.0, 1, "fp", plan=plan, source={"text": HOSTILE},
                           name=HOSTILE)])
    back = store.get_run("r")
    assert back is not None and not back.damaged
    assert (dict(back.plan), dict(back.source), back.name) == (plan, {"text": HOSTILE}, HOSTILE)


def test_a_cancel_request_for_a_node_named_with_a_surrogate_pair_names_it(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.request_cancel("r", [PAIR, "\ud800"], reason=HOSTILE)
    [request] = store.take_cancel_requests("r")
    assert (request.node_ids, request.reason) == ((PAIR, "\ud800"), HOSTILE)


def test_an_event_comes_back_exactly(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db", keep_events=True)
    store.write([RunRecord("r", 1.0, 1, "fp")])
    store.write([EventRecord("r", Event(run_id="r", time=1.0, lineage=f"lead/{PAIR}#1"))])
    [data] = store.events("r")
    assert data["lineage"] == f"lead/{PAIR}#1"
