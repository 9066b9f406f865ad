"""Any value a tool returns journals, or is recorded as not journaled: never a hang, never a
lost sibling. Every awkward kind of :mod:`tests.awkward_values`, through every store (memory,
SQLite, none) and backend (inline, thread, process, Ray: on Ray all kinds share one plan per
route, since a Ray connection per case would cost minutes).
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import shoal
import shoal.store.codec as codec
from shoal.policy import Isolation
from shoal.store.codec import decode_value, encode_value
from shoal.store.sqlite import SQLiteStore
from tests.awkward_values import KINDS, REPLAYABLE, after, awkward, sibling
from tests.conftest import ONE_AT_A_TIME

# a worker process cannot make Looping's result travel back: its pickling never ends there
# either, and only a tool timeout stops it (see the process backend)
PROCESS_KINDS = [k for k in KINDS if k != "looping"]
#: results a tool may not return: they can be read only once (see tests/test_unawaited.py)
ONE_SHOT = {"generator", "endless_iterator"}
BOUND = 60.0  # seconds any one run may take on a loaded machine


@pytest.fixture(autouse=True)
def quick_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "ENCODE_TIMEOUT", 1.0)


def _plan(kind: str) -> tuple[shoal.Plan, shoal.Ref, shoal.Ref, shoal.Ref]:
    plan = shoal.Plan()
    odd = plan.call(awkward, kind=kind, node_id="odd")
    twin = plan.call(sibling, n=21, node_id="twin")
    then = plan.call(after, value="-", node_id="then", after=odd)
    return plan, odd, twin, then


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type, sharing included; without ``==``, which would walk a DAG's
    every path (2**60 of them) or recurse forever into a list that holds itself."""
    return type(a) is type(b) and pickle.dumps(a) == pickle.dumps(b)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("store", ["memory", "sqlite", "none"])
@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_every_awkward_result_ends_in_a_recorded_outcome(kind: str, store: str, executor: Isolation,
                                                         tmp_path: Path) -> None:
    where: Any = {"memory": "memory", "none": None}.get(store, tmp_path / "runs.db")
    runtime = shoal.Runtime(store=where, executor=executor)
    plan, odd, twin, then = _plan(kind)
    began = time.monotonic()
    result = runtime.run_sync(plan)
    assert time.monotonic() - began < BOUND
    assert result[twin].status == "ok" and result[twin].value == 42  # never lost
    if kind in ONE_SHOT:  # read once: it would reach only the first call given it
        assert result[odd].status == "failed" and result[then].status == "skipped"
        error = result[odd].error
        assert error is not None and "can be read only once" in error.message
        return
    assert result[odd].status == "ok" and result[then].status == "ok"
    if store != "sqlite":
        return
    stored = SQLiteStore(tmp_path / "runs.db").outcomes(result.run_id)
    assert set(stored) == {"odd", "twin", "then"} and stored["twin"].outcome.value == 42
    json.dumps(SQLiteStore(tmp_path / "runs.db").outcomes(result.run_id, decode=False)[
        "odd"].outcome.value)  # shoal show's view is JSON, whatever the value
    assert stored["odd"].replayable == (kind in REPLAYABLE), stored["odd"].outcome.value
    if kind in REPLAYABLE:
        assert _same(stored["odd"].outcome.value, result[odd].value)
    # resume: a replayable value replays as itself; the others run again (idempotent tool)
    again = shoal.Runtime(store=tmp_path / "runs.db", executor=executor).resume_sync(
        result.run_id, _plan(kind)[0])
    assert again.ok and again[twin].value == 42
    if kind in REPLAYABLE:
        assert _same(again[odd].value, result[odd].value)


def test_awkward_results_from_worker_processes(tmp_path: Path) -> None:
    """All kinds in one plan on one worker (a worker started per kind cost 20 s of a loaded
    CI worker): each ends in an outcome, the journal keeps every sibling's result, and a kind
    that cannot travel back skips only what depends on it."""
    runtime = shoal.Runtime(store=tmp_path / "runs.db", executor="process", process_workers=1)
    plan = shoal.Plan()
    odd = {kind: plan.call(awkward, kind=kind, node_id=kind) for kind in PROCESS_KINDS}
    then = {kind: plan.call(after, value="-", node_id=f"then-{kind}", after=ref)
            for kind, ref in odd.items()}
    twin = plan.call(sibling, n=21, node_id="twin")
    began = time.monotonic()
    result = runtime.run_sync(plan)
    assert time.monotonic() - began < 2 * BOUND
    assert result[twin].value == 42
    for kind, ref in odd.items():
        # what cannot travel back from a worker (a generator) fails there, with a reason
        assert result[ref].status in ("ok", "failed"), (kind, result[ref])
        if result[ref].status == "failed":
            assert result[ref].error is not None, kind
            assert result[then[kind]].status == "skipped", (kind, result[then[kind]])
        else:
            assert result[then[kind]].status == "ok", (kind, result[then[kind]])
    stored = SQLiteStore(tmp_path / "runs.db").outcomes(result.run_id)
    assert stored["twin"].outcome.value == 42
    assert {k: stored[k].outcome.status for k in odd} == {k: result[r].status
                                                           for k, r in odd.items()}


# ---- the codec on its own: any value, bounded time ----------------------------------------


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    # a list of characters joined: st.text's alphabet left the lone surrogates out (it drew
    # none in 300 values), so the property never met the values it names
    st.lists(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "\udfff"])).map(
        "".join),
    st.binary(max_size=20), st.tuples(st.integers()),
)
values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=5),
    st.frozensets(st.integers(), max_size=3)), max_leaves=30)


# 100 drawn values (hypothesis's default; 300 took 20 s of a loaded CI worker) beside the
# awkward ones written out, so that every run tries those whatever it draws
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example({"\ud800": [float("nan"), -0.0, b"\x00\xff"], 1: ("\udfff", frozenset({2**70}))})
@example([[{"k": (1,)}], "\x00\u202e\U0001f600", float("inf"), 2**64, None, True])
@example({"\ud800x": "\udfff" * 3, "": {}, "nested": [[[[[]]]]]})
def test_any_value_encodes_and_comes_back(value: Any) -> None:
    encoded = encode_value(value)
    assert encoded.encoding in ("json", "pickle")
    back, real = decode_value(encoded.encoding, encoded.payload, encoded.view)
    assert real and _deep_same(back, value)
    encoded.payload.decode("utf-8") if encoded.encoding == "json" else None
    if encoded.view is not None:
        # written as it is (lone surrogates too): the store keeps it as surrogatepass bytes
        encoded.view.encode("utf-8", "surrogatepass")
        json.loads(encoded.view)


def _deep_same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_deep_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_deep_same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_a_value_over_the_size_limit_is_a_note_not_a_failed_write(tmp_path: Path) -> None:
    encoded = encode_value(["x" * 2**20] * 70)
    assert encoded.encoding == "repr" and "over 64.0 MB" in str(json.loads(encoded.view or ""))


def test_a_view_never_consumes_a_generator() -> None:
    def numbers() -> Any:
        yield from range(3)

    made = numbers()
    encoded = encode_value({"gen": made})
    assert encoded.encoding == "repr" and "generator" in (encoded.view or "")
    assert list(made) == [0, 1, 2]


@ONE_AT_A_TIME  # the one Ray head
@pytest.mark.parametrize("route", ["pool", "task"])
def test_awkward_results_from_ray_workers(route: str, tmp_path: Path) -> None:
    """All kinds in one plan (a Ray connection per case would cost minutes): each ends in an
    outcome, the journal keeps every sibling's result, and nothing hangs."""
    pytest.importorskip("ray")
    extra: dict[str, Any] = {"resources": {"num_cpus": 0}} if route == "pool" else {}
    on_ray = awkward.options(isolation="ray", **extra)
    plan = shoal.Plan()
    odd = {kind: plan.call(on_ray, kind=kind, node_id=kind) for kind in PROCESS_KINDS}
    twin = plan.call(sibling.options(isolation="ray", **extra), n=21, node_id="twin")
    runtime = shoal.Runtime(store=tmp_path / "runs.db")
    began = time.monotonic()
    result = runtime.run_sync(plan)
    assert time.monotonic() - began < 2 * BOUND
    assert result[twin].value == 42
    for kind, ref in odd.items():
        assert result[ref].status in ("ok", "failed"), (kind, result[ref])
        if result[ref].status == "failed":
            error = result[ref].error
            assert error is not None and error.message, kind
    stored = SQLiteStore(tmp_path / "runs.db").outcomes(result.run_id)
    assert stored["twin"].outcome.value == 42
    assert {k: stored[k].outcome.status for k in odd} == {k: result[r].status
                                                           for k, r in odd.items()}
