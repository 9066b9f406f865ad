"""The journal: stores (memory and SQLite), values, schema versions, and the runtime's hooks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError, RunNotFoundError, StoreError, StoreVersionError
from shoal.outcome import ErrorInfo, Outcome
from shoal.store import approval_hash, open_store
from shoal.store.base import (
    ApprovalRecord,
    AttemptEnded,
    AttemptStarted,
    OutcomeRecord,
    Record,
    RunEnded,
    RunRecord,
    Store,
)
from shoal.store.codec import decode_value, encode_value, is_plain_json
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import arun, until


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "j.db")
    yield made
    made.close()


def _run(run_id: str = "r1", nodes: int = 2) -> RunRecord:
    return RunRecord(run_id, time.time(), nodes, "fp", {"format": 1}, {"path": "p.yaml"}, "demo")


# ---- values --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2.5, float("inf"), "héllo \"x\"\n", "", [], {}, [1, "a", None],
    {"a": {"b": [1, 2, {"c": "d"}]}}, 10**30,
])  # fmt: skip
def test_plain_json_values_are_stored_as_json_and_come_back_equal(value: Any) -> None:
    encoded = encode_value(value)
    assert encoded.encoding == "json"
    back, real = decode_value(encoded.encoding, encoded.payload, encoded.view)
    assert real and back == value and type(back) is type(value)


class Point:
    """A plain class: pickled, and shown by its repr."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    def __repr__(self) -> str:
        return f"Point({self.x})"


@pytest.mark.parametrize("value", [
    (1, 2), {1, 2}, {1: "int key"}, b"\x00\xff", Point(3), [("nested", "tuple")],
    pytest.param(10**5000, id="huge-int"),
])  # fmt: skip
def test_other_values_are_pickled_with_a_json_view(value: Any) -> None:
    encoded = encode_value(value)
    assert encoded.encoding == "pickle"
    assert encoded.view is not None
    json.loads(encoded.view)  # the view is JSON, for shoal show
    back, real = decode_value(encoded.encoding, encoded.payload, encoded.view)
    assert real and back == value and type(back) is type(value)


def test_unpicklable_values_keep_their_view_and_are_not_replayable() -> None:
    encoded = encode_value({"lock": threading.Lock()})
    assert encoded.encoding == "repr"
    back, real = decode_value(encoded.encoding, encoded.payload, encoded.view)
    assert not real and "lock" in json.dumps(back)


def test_a_pickle_whose_class_is_gone_comes_back_as_its_view() -> None:
    encoded = encode_value(Point(1))
    broken = encoded.payload.replace(b"Point", b"Pnope")
    back, real = decode_value("pickle", broken, encoded.view)
    assert not real and back == "Point(1)"


def test_a_20_mb_result_goes_through_the_sqlite_journal(tmp_path: Path) -> None:
    @shoal.tool
    def big(n: int) -> str:
        return "x" * n

    plan = shoal.Plan()
    ref = plan.call(big, n=20_000_000)
    runtime = shoal.Runtime(store=tmp_path / "big.db")
    result = runtime.run_sync(plan)
    stored = SQLiteStore(tmp_path / "big.db").outcomes(result.run_id)[ref.node]
    assert stored.encoding == "json" and len(stored.outcome.value) == 20_000_000
    assert runtime.resume_sync(result.run_id, plan)[ref].value == "x" * 20_000_000


# ---- the SQLite file -------------------------------------------------------------------------


def test_sqlite_is_wal_with_full_sync_and_sound(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.db")
    with closing(sqlite3.connect(tmp_path / "j.db")) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.integrity_check() == "ok"


def test_a_journal_from_a_newer_shoal_is_refused_naming_both_versions(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "j.db").close()
    with closing(sqlite3.connect(tmp_path / "j.db")) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreVersionError) as caught:
        SQLiteStore(tmp_path / "j.db")
    assert caught.value.found == SCHEMA_VERSION + 1 and caught.value.supported == SCHEMA_VERSION
    assert f"version {SCHEMA_VERSION + 1}" in str(caught.value)
    assert f"up to version {SCHEMA_VERSION}" in str(caught.value)


def test_files_that_are_not_journals_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.db").write_text("hello, not a database" * 100)
    with pytest.raises(StoreError, match="not a usable shoal journal"):
        SQLiteStore(tmp_path / "text.db")
    with closing(sqlite3.connect(tmp_path / "other.db")) as conn, conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(StoreError, match="not a shoal journal"):
        SQLiteStore(tmp_path / "other.db")


def test_open_store_reads_urls_and_paths(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/a.db"
    assert isinstance(open_store(tmp_path / "b.db"), SQLiteStore)
    assert isinstance(open_store(str(tmp_path / "c.sqlite")), SQLiteStore)
    mine = MemoryStore()
    assert open_store(mine) is mine
    for bad in ("postgres://x", "sqlite://relative.db", "runs.txt"):
        with pytest.raises(ConfigError):
            open_store(bad)


def test_runtime_store_defaults_to_memory_and_can_be_off() -> None:
    assert isinstance(shoal.Runtime().store, MemoryStore)
    assert shoal.Runtime(store=None).store is None


# ---- the store contract (both stores) --------------------------------------------------------


def test_runs_attempts_and_outcomes_round_trip(store: Store) -> None:
    boom = ErrorInfo("ValueError", "bad", "Traceback ...")
    records: Sequence[Record] = [
        _run(),
        AttemptStarted("r1", 1, "b", 1, "t", "thread", 0.5),
        AttemptStarted("r1", 1, "a", 1, "t", "inline", 0.1),
        AttemptEnded("r1", 1, "a", 1, "ok", 0.2),
        OutcomeRecord("r1", Outcome("b", "t", "failed", None, boom, "", 1, 0.4, 0.5, 0.9,
                                    "thread"), 1),
        OutcomeRecord("r1", Outcome("a", "t", "ok", {"v": (1, 2)}, None, "", 1, 0.0, 0.1, 0.2,
                                    "inline"), 0),
        RunEnded("r1", "finished", time.time(), {"ok": 1, "failed": 1}, 0.9),
    ]
    store.write(records)
    run = store.get_run("r1")
    assert run is not None and run.status == "finished" and run.name == "demo"
    assert run.counts == {"ok": 1, "failed": 1} and run.makespan == 0.9
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    outcomes = store.outcomes("r1")
    assert list(outcomes) == ["a", "b"]  # plan order
    assert outcomes["a"].outcome.value == {"v": (1, 2)}
    assert outcomes["b"].outcome.error == boom
    if store.durable:
        assert store.outcomes("r1", decode=False)["a"].outcome.value == {"v": [1, 2]}
        attempts = {a.node_id: a for a in store.attempts("r1")}
        assert attempts["a"].ended_at == 0.2 and attempts["a"].status == "ok"
        assert attempts["b"].ended_at is None
    assert store.get_run("nope") is None


def test_approval_decisions_are_bound_to_the_arguments_and_used_once(store: Store) -> None:
    store.write([_run()])
    digest = approval_hash("pay", {"amount": 5, "to": "bob"})
    assert digest == approval_hash("pay", {"to": "bob", "amount": 5})  # canonical: key order
    assert digest != approval_hash("pay", {"amount": 6, "to": "bob"})
    request = ApprovalRecord("r1", "pay#1", "pay", digest, {"amount": 5, "to": "bob"})
    stored = store.request_approval(request)
    assert stored.decision == "pending" and stored.requested_at > 0
    assert store.request_approval(request) == stored  # asking again finds the same request
    assert [a.node_id for a in store.approvals("r1", pending_only=True)] == ["pay#1"]
    assert store.use_decision("r1", "pay#1", digest) is None  # nothing decided yet
    store.decide("r1", "pay#1", digest, "approved", decided_by="ana", reason="fine")
    assert store.use_decision("r1", "pay#1", "other-hash") is None
    used = store.use_decision("r1", "pay#1", digest)
    assert used is not None and used.decision == "approved" and used.decided_by == "ana"
    assert store.use_decision("r1", "pay#1", digest) is None  # once
    assert store.approvals("r1", pending_only=True) == []
    assert store.approvals("r1")[0].used


def test_a_pending_request_outlives_the_process(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "j.db")
    first.write([_run()])
    first.request_approval(ApprovalRecord("r1", "n", "t", "h", {"x": 1}))
    first.close()
    again = SQLiteStore(tmp_path / "j.db")
    pending = again.approvals("r1", pending_only=True)
    assert [(p.node_id, p.arguments) for p in pending] == [("n", {"x": 1})]


def test_cancel_requests_are_taken_once(store: Store) -> None:
    store.write([_run()])
    store.request_cancel("r1", ["a", "b"], reason="stop a and b")
    store.request_cancel("r1")
    taken = store.take_cancel_requests("r1")
    assert [(t.node_ids, t.reason) for t in taken] == [
        (("a", "b"), "stop a and b"), ((), "cancelled by the user")]
    assert store.take_cancel_requests("r1") == []
    with pytest.raises(RunNotFoundError):
        store.request_cancel("nope")


def test_the_memory_store_keeps_the_latest_runs() -> None:
    store = MemoryStore(max_runs=3)
    for i in range(5):
        store.write([_run(f"r{i}"), RunEnded(f"r{i}", "finished", time.time(), {}, 0.0)])
    assert sorted(r.run_id for r in store.list_runs()) == ["r2", "r3", "r4"]


def test_the_memory_store_evicts_finished_runs_first_and_never_running_ones() -> None:
    store = MemoryStore(max_runs=6)
    for i in range(4):  # running runs never go
        store.write([_run(f"running{i}")])
    store.write([_run("a"), _run("b")])
    store.write([RunEnded("b", "finished", time.time(), {}, 0.0)])
    store.write([RunEnded("a", "cancelled", time.time(), {}, 0.0)])
    store.write([_run("c")])  # b finished first, so it goes first
    kept = {r.run_id for r in store.list_runs()}
    assert {f"running{i}" for i in range(4)} <= kept and "b" not in kept and "a" in kept
    store.write([dataclasses.replace(_run("a"), status="running")])  # a resumed: running again
    store.write([_run("d")])
    assert store.get_run("a") is not None
    store.write([RunEnded("c", "finished", time.time(), {}, 0.0), _run("e")])
    assert store.get_run("c") is None and store.get_run("a") is not None


def test_the_memory_store_drops_the_approvals_of_the_runs_it_drops() -> None:
    store = MemoryStore(max_runs=2)
    for i in range(3):
        store.request_approval(ApprovalRecord(f"r{i}", "n", "delete", "h"))
        store.decide(f"r{i}", "n", "h", "approved", decided_by="me")
        store.write([_run(f"r{i}"), RunEnded(f"r{i}", "finished", time.time(), {}, 0.0)])
    assert store.get_run("r0") is None and store.approvals("r0") == []  # r0 went, with them
    assert store.use_decision("r0", "n", "h") is None
    for kept in ("r1", "r2"):
        assert [(a.decision, a.used) for a in store.approvals(kept)] == [("approved", False)]
        assert store.use_decision(kept, "n", "h") is not None


def test_a_memory_ledger_forgets_one_run_and_keeps_the_others() -> None:
    from shoal.approvals import MemoryLedger

    ledger = MemoryLedger()
    for run_id in ("a", "b"):
        ledger.request_approval(ApprovalRecord(run_id, "n", "delete", "h"))
    ledger.forget_run("a")
    ledger.forget_run("never-asked")  # nothing to forget: nothing happens
    assert ledger.approvals("a") == [] and len(ledger.approvals("b")) == 1
    again = ledger.request_approval(ApprovalRecord("a", "n", "delete", "h"))
    assert again.decision == "pending" and ledger.approvals("a") == [again]  # asked anew


# ---- the runtime's journal -------------------------------------------------------------------


@shoal.tool
def double(x: int) -> int:
    """Twice ``x``."""
    return 2 * x


def test_runs_are_journaled_in_the_default_memory_store() -> None:
    plan = shoal.Plan("twice")
    a = plan.call(double, x=2)
    b = plan.call(double, x=a)
    runtime = shoal.Runtime()
    result = runtime.run_sync(plan)
    assert runtime.store is not None
    run = runtime.store.get_run(result.run_id)
    assert run is not None and run.status == "finished" and run.nodes == 2
    assert run.name == "twice" and run.counts["ok"] == 2
    assert {n: s.outcome.value for n, s in runtime.store.outcomes(result.run_id).items()} == {
        a.node: 4, b.node: 8}


def test_sqlite_journal_records_attempts_events_and_ends(tmp_path: Path) -> None:
    calls = {"n": 0}

    @shoal.tool(retries=1, backoff=0)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("first try fails")
        return "ok"

    plan = shoal.Plan()
    ref = plan.call(flaky)
    store = SQLiteStore(tmp_path / "j.db", keep_events=True)
    result = shoal.Runtime(store=store).run_sync(plan)
    attempts = store.attempts(result.run_id)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "failed"), (2, "ok")]
    assert "ConnectionError: first try fails" in attempts[0].error
    kinds = [e["kind"] for e in store.events(result.run_id)]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished" and "NodeRetrying" in kinds
    assert store.outcomes(result.run_id)[ref.node].outcome.attempts == 2
    run = store.get_run(result.run_id)
    assert run is not None and run.status == "finished" and run.finished_at is not None
    assert run.heartbeat > 0 and run.pid > 0


def test_an_outcome_is_committed_before_its_dependents_start(tmp_path: Path) -> None:
    """Each dependent reads the journal from another connection as it starts."""
    db = tmp_path / "j.db"
    seen: dict[str, tuple[bool, bool]] = {}

    @shoal.tool
    def step(name: str, inputs: list[str]) -> str:
        with closing(sqlite3.connect(db)) as conn:
            stored = {row[0] for row in conn.execute("SELECT node_id FROM outcomes")}
            started = {row[0] for row in conn.execute("SELECT node_id FROM attempts")}
        seen[name] = (set(inputs) <= stored, name in started)
        return name

    plan = shoal.Plan()
    layer = [plan.call(step, node_id=f"a{i}", name=f"a{i}", inputs=[]) for i in range(5)]
    for level in "bcd":
        layer = [plan.call(step, node_id=f"{level}{i}", name=f"{level}{i}",
                           inputs=layer[i:i + 2]) for i in range(len(layer) - 1)]
    result = shoal.Runtime(store=db).run_sync(plan)
    assert result.ok and len(seen) == len(plan)
    assert all(inputs for inputs, _ in seen.values()), seen  # upstream outcomes were stored
    assert all(started for _, started in seen.values()), seen  # and its own start, ahead


def test_a_journal_that_cannot_be_written_stops_the_run(tmp_path: Path) -> None:
    class Broken(MemoryStore):
        durable = True

        def write(self, records: Sequence[Record]) -> None:
            if any(isinstance(r, OutcomeRecord) for r in records):
                raise OSError("disk full")
            super().write(records)

    ran: list[str] = []

    @shoal.tool
    async def note(name: str, after: Any = None) -> str:
        ran.append(name)
        return name

    plan = shoal.Plan()
    first = plan.call(note, name="first")
    plan.call(note, name="second", after=first)
    with pytest.raises(StoreError, match="disk full"):
        shoal.Runtime(store=Broken()).run_sync(plan)
    assert ran == ["first"]  # the dependent never started: its input was not durable


def test_a_named_run_cannot_be_started_twice() -> None:
    plan = shoal.Plan()
    plan.call(double, x=1)
    runtime = shoal.Runtime()
    runtime.run_sync(plan, run_id="mine")
    with pytest.raises(ConfigError, match="resume"):
        runtime.run_sync(plan, run_id="mine")


# ---- idempotency keys ------------------------------------------------------------------------


@shoal.tool(retries=2, backoff=0, idempotent=True)
def charge(amount: int, key: shoal.IdempotencyKey) -> str:
    """Charge ``amount`` once per key (fails on the first try, to show the key is stable)."""
    KEYS.append(key)
    if len(KEYS) == 1:
        raise ConnectionError("the first attempt fails")
    return key


KEYS: list[str] = []


def test_idempotency_keys_are_injected_and_stable_across_retries() -> None:
    KEYS.clear()
    assert charge.injected == {"key": "idempotency_key"}
    assert "key" not in charge.json_schema()["properties"]
    assert "key" not in json.dumps(charge.to_openai()["function"]["parameters"])
    assert not is_plain_json((1,)) and is_plain_json({"a": [1, None]})
    plan = shoal.Plan()
    ref = plan.call(charge, amount=5, node_id="pay")
    result = shoal.Runtime().run_sync(plan, run_id="run-7")
    assert result[ref].value == "run-7:pay"
    assert KEYS == ["run-7:pay", "run-7:pay"]
    bad = shoal.Plan()
    bad.call(charge, amount=1, key="mine")
    with pytest.raises(shoal.PlanError, match="unexpected argument 'key'"):
        bad.validate()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_idempotency_keys_reach_every_backend(executor: str) -> None:
    from tests.crash_tools import keyed_echo

    plan = shoal.Plan()
    ref = plan.call(keyed_echo, text="hi", node_id="n")
    runtime = shoal.Runtime(executor=executor)  # type: ignore[arg-type]
    result = runtime.run_sync(plan, run_id=f"r-{executor}")
    assert result[ref].value == f"hi r-{executor}:n", result[ref].error


# ---- cancelling from another process ---------------------------------------------------------


def test_a_cancel_request_in_the_journal_stops_a_running_run(tmp_path: Path) -> None:
    db = tmp_path / "j.db"

    @shoal.tool
    async def wait(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    plan = shoal.Plan()
    quick = plan.call(wait, seconds=0.0)
    slow = plan.call(wait, seconds=30.0)
    other = SQLiteStore(db)  # "another process": its own connection

    async def main() -> tuple[shoal.RunResult, float]:
        async with shoal.Runtime(store=db) as runtime:
            handle = runtime.start(plan, run_id="live")
            await until(lambda: quick.node in handle.partial_result().outcomes)  # slow runs
            asked = time.monotonic()
            await asyncio.to_thread(other.request_cancel, "live", reason="stop from the CLI")
            result = await handle
            return result, time.monotonic() - asked

    result, took = arun(main(), timeout=20)
    # noticed by the journal's poll (every 0.2 s), not when the 30 s call ends: a wide margin,
    # for a loaded machine
    assert took < 5.0
    assert result[quick].status == "ok"
    assert result[slow].status == "cancelled" and "stop from the CLI" in str(result[slow].error)
    run = other.get_run("live")
    assert run is not None and run.status == "cancelled"


def test_the_memory_stores_run_end_then_a_heartbeat_then_a_new_session_read_as_written() -> None:
    # the memory store writes a run's end into its record only when the record is read: every
    # reader (get_run, list_runs, a heartbeat's update) sees it, and a record written later
    # (a resumed session) replaces it whole
    store = MemoryStore()
    store.write([_run("r1")])
    store.write([RunEnded("r1", "finished", 10.0, {"ok": 2}, 1.5)])
    for got in (store.get_run("r1"), store.list_runs()[0]):
        assert got is not None
        assert (got.status, got.finished_at, dict(got.counts), got.makespan) == (
            "finished", 10.0, {"ok": 2}, 1.5)
    store.write([RunEnded("r1", "interrupted", 11.0, {"failed": 1}, 2.5)])
    store.heartbeat("r1", 12.0)
    got = store.get_run("r1")
    assert got is not None
    assert (got.status, got.finished_at, dict(got.counts), got.makespan, got.heartbeat) == (
        "interrupted", 11.0, {"failed": 1}, 2.5, 12.0)
    store.write([RunEnded("r1", "cancelled", 13.0, {"cancelled": 2}, 3.0)])
    store.write([dataclasses.replace(_run("r1"), sessions=2)])  # resumed: running again
    got = store.get_run("r1")
    assert got is not None and (got.status, got.finished_at, got.sessions) == ("running", None, 2)


def test_run_record_made_with_slot_init_as_its_dataclass_would_make_it() -> None:
    """RunRecord takes slot_init's faster __init__: the same defaults, a fresh mapping each.

    A ``default_factory`` field (``plan``, ``source``, ``counts``) must get a new value per
    record when not given, and keep the one given, positionally or by name.
    """
    first, second = RunRecord("a", 1.0, 2, "fp"), RunRecord("b", 1.0, 2, "fp")
    assert first.plan == first.source == first.counts == {}
    assert first.plan is not second.plan and first.counts is not second.counts
    assert (first.name, first.status, first.finished_at, first.sessions, first.pid_start) == (
        "", "running", None, 1, "")
    plan = {"nodes": 1}
    given = RunRecord("c", 1.0, 2, "fp", plan, counts={"ok": 2}, status="finished")
    assert given.plan is plan and given.counts == {"ok": 2} and given.source == {}
    assert dataclasses.replace(given, nodes=3) == RunRecord(
        "c", 1.0, 3, "fp", plan, counts={"ok": 2}, status="finished")
    with pytest.raises(TypeError):
        RunRecord("d", 1.0, 2)  # type: ignore[call-arg]  # fingerprint is required
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.nodes = 4  # type: ignore[misc]


def test_run_records_need_no_model_code() -> None:
    """slot_init lives in a module of its own: a plan run's store imports no model code."""
    import subprocess
    import sys

    code = ("import sys, shoal.store.base; "
            "print(sorted(m for m in sys.modules if m.startswith('shoal.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
