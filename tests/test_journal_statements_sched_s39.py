"""The SQLite journal updates many rows in a few statements, each row as before."""

from pathlib import Path

from shoal.store.base import AttemptEnded, AttemptStarted, RunEnded, RunRecord
from shoal.store.sqlite import SQLiteStore


def _statements(store: SQLiteStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)  # SQLite's own hook: every statement it runs
    return seen


def test_a_thousand_attempt_ends_are_a_few_statements_and_each_row_is_set(
        tmp_path: Path) -> None:
    # one UPDATE per row: SQLite hands the GIL back at each, and the journal's writer waited
    # to retake it once per row while a busy loop held it (11,000 a swarm run)
    store = SQLiteStore(tmp_path / "runs.db")
    store.write([RunRecord("r", 1.0, 1000, "fp")])
    store.write([AttemptStarted("r", 1, f"n{i}", 1, "t", "inline", float(i))
                 for i in range(1000)])
    seen = _statements(store)
    ends = [AttemptEnded("r", 1, f"n{i}", 1, "ok" if i % 2 else "failed", 5.0, f"e{i}", "here")
            for i in range(1000)]
    ends.append(AttemptEnded("r", 1, "n7", 1, "cancelled", 6.0))  # the last for a key wins
    ends.append(AttemptEnded("r", 1, "ghost", 1, "ok", 6.0))  # no such attempt: sets nothing
    store.write(ends)
    updates = [s for s in seen if "UPDATE" in s.upper()]
    assert 1 <= len(updates) <= 2 and len(seen) < 40, seen[:50]
    attempts = {a.node_id: a for a in store.attempts("r")}
    assert len(attempts) == 1000 and "ghost" not in attempts
    assert (attempts["n3"].status, attempts["n3"].ended_at, attempts["n3"].error) == (
        "ok", 5.0, "e3")
    assert attempts["n4"].status == "failed"
    assert (attempts["n7"].status, attempts["n7"].ended_at, attempts["n7"].error) == (
        "cancelled", 6.0, "")
    store.close()


def test_runs_ended_and_heartbeats_of_many_runs_are_set_in_few_statements(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    store.write([RunRecord(f"r{i}", 1.0, 1, "fp") for i in range(300)])
    seen = _statements(store)
    store.heartbeat_many([f"r{i}" for i in range(300)], 42.0)
    store.write([RunEnded(f"r{i}", "finished", 9.0, {"ok": i}, 1.5) for i in range(0, 300, 2)])
    assert len([s for s in seen if "UPDATE" in s.upper()]) <= 2 and len(seen) < 40, seen[:50]
    runs = {r.run_id: r for r in store.list_runs(limit=1000)}
    assert runs["r1"].heartbeat == 42.0 and runs["r1"].status == "running"
    assert (runs["r4"].status, runs["r4"].finished_at, dict(runs["r4"].counts),
            runs["r4"].makespan, runs["r4"].heartbeat) == ("finished", 9.0, {"ok": 4}, 1.5, 42.0)
    store.close()
