r"""The journal gives back exactly the text it was given, and its writer's cuts keep that.

Text a model or a tool hands shoal can hold the two code points of a surrogate pair
(``"\ud83d\ude00"``, which is not the one character ``"\U0001f600"``) or a lone surrogate.
Each test writes such text to a real SQLite journal and reads it back.
"""

from __future__ import annotations

from pathlib import Path

from shoal.events import Event
from shoal.outcome import ErrorInfo, Outcome
from shoal.store.base import (
    AttemptEnded,
    AttemptStarted,
    EventRecord,
    OutcomeRecord,
    RunEnded,
    RunRecord,
)
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


# ---- a batch is written in few statements, as executemany wrote it row by row -------------


def _attempts(store: SQLiteStore) -> list[tuple[object, ...]]:
    return [(a.node_id, a.attempt, a.started_at, a.ended_at, a.status, a.error)
            for a in store.attempts("r")]


def test_a_big_batch_keeps_every_row_in_order_and_the_last_of_a_key(tmp_path: Path) -> None:
    # 300 rows cut into statements of many rows: each row kept, a key written twice in one
    # batch (an attempt ended twice, a node's outcome replaced) ends as its last write says
    store = _store(tmp_path)
    nodes = [f"n{i}{PAIR if i % 7 == 0 else ''}" for i in range(300)]
    starts = [AttemptStarted("r", 1, node, 1, "t", "async", 2.0 + i / 3)
              for i, node in enumerate(nodes)]
    ends = [AttemptEnded("r", 1, node, 1, "ok", 9.0 + i / 7, error=f"e{i}")
            for i, node in enumerate(nodes)]
    again = AttemptEnded("r", 1, nodes[5], 1, "failed", 99.5, error=HOSTILE)
    outcomes = [OutcomeRecord("r", Outcome(node, "t", "ok", value=[i, node]), i)
                for i, node in enumerate(nodes)]
    last = OutcomeRecord("r", Outcome(nodes[3], "t", "ok", value=b"\x00bytes"), 3)
    events = [EventRecord("r", Event(run_id="r", time=float(i), lineage=node))
              for i, node in enumerate(nodes)]
    store.keeps_events = True
    store.write([*starts, *ends, again, *outcomes, last, *events,
                 RunEnded("r", "finished", 50.0, {"ok": 300}, 0.5)])
    found = _attempts(store)
    assert [row[0] for row in found] == nodes
    assert found[5] == (nodes[5], 1, 2.0 + 5 / 3, 99.5, "failed", HOSTILE)
    assert found[299] == (nodes[299], 1, 2.0 + 299 / 3, 9.0 + 299 / 7, "ok", "e299")
    back = store.outcomes("r")
    assert list(back) == nodes
    assert back[nodes[3]].outcome.value == b"\x00bytes"
    assert back[nodes[299]].outcome.value == [299, nodes[299]]
    assert [e["lineage"] for e in store.events("r")] == nodes
    run = store.get_run("r")
    assert run is not None and (run.status, dict(run.counts)) == ("finished", {"ok": 300})


def test_a_batch_inserts_few_statements_of_many_rows_not_one_per_row(tmp_path: Path) -> None:
    # SQLite lets the GIL go at each step and the writer waits to retake it: a row per step
    # made a swarm's every commit wait about as many times as it had rows
    store = _store(tmp_path)
    said: list[str] = []
    store._conn.set_trace_callback(said.append)
    nodes = [f"n{i}" for i in range(300)]
    store.write([*(AttemptStarted("r", 1, n, 1, "t", "async", 1.0) for n in nodes),
                 *(AttemptEnded("r", 1, n, 1, "ok", 2.0) for n in nodes),
                 *(OutcomeRecord("r", Outcome(n, "t", "ok", value=1), i)
                   for i, n in enumerate(nodes))])
    store._conn.set_trace_callback(None)
    inserts = [s for s in said if s.startswith("INSERT")]
    # 300 = 2 x 128 + 32 + 8 + 4 rows, of each table and of the staged attempt ends (which
    # one UPDATE ... FROM sets: session 39)
    assert len(inserts) <= 3 * 5, len(inserts)
    assert len([s for s in said if s.startswith("UPDATE")]) <= 2, said
    assert len(_attempts(store)) == 300 and len(store.outcomes("r")) == 300
