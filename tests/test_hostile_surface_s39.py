"""Found by attacking shoal's surface, session 39: the journal's codec and its views, approval
events and hashes, the timeline page's writer, and outcomes of a status that does not exist.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import shoal
from shoal.approvals import approval_hash
from shoal.approvals.ledger import hash_before_keys
from shoal.events import edited_args_text
from shoal.exceptions import ConfigError
from shoal.outcome import STATUSES, Outcome
from shoal.store.base import OutcomeRecord, RunRecord
from shoal.store.codec import (
    decode_arguments,
    decode_value,
    encode_arguments,
    encode_value,
    view_value,
)
from shoal.store.sqlite import SQLiteStore
from tests.test_hostile_journal_s36 import shoal_cli

PAIR = "\ud83d\ude00"  # two code points: a high surrogate and a low one, not one character
EMOJI = "\U0001f600"  # the one character JSON's escapes of PAIR read back as


# ---- (a) the codec's views and arguments keep surrogates as the journal's cells do ----------


def test_a_views_pair_of_surrogates_is_not_read_back_as_one_character() -> None:
    # was: a value that does not pickle (a lock beside the text) is kept as its view only;
    # the view escaped PAIR as two \u escapes, which JSON reads back as EMOJI: the value read
    # back was another one, and (PAIR, lock) and (EMOJI, lock) were kept alike
    lock = threading.Lock()
    kept = [encode_value([text, lock]) for text in (PAIR, EMOJI)]
    assert all(encoded.encoding == "repr" for encoded in kept)
    back = [decode_value(e.encoding, e.payload, e.view)[0][0] for e in kept]
    assert back == [PAIR, EMOJI]
    assert kept[0].payload != kept[1].payload


def test_a_pickled_values_view_keeps_a_pair_of_surrogates() -> None:
    # the view shoal show prints (never unpickled) said EMOJI where the value held PAIR
    encoded = encode_value((PAIR,))
    assert encoded.encoding == "pickle" and encoded.view is not None
    assert decode_value("pickle", encoded.payload, encoded.view)[0] == (PAIR,)
    assert view_value(encoded.view) == [PAIR]


def test_edited_arguments_that_do_not_pickle_keep_a_pair_of_surrogates() -> None:
    # was: encode_arguments' JSON fallback (arguments that do not pickle) escaped PAIR: read
    # back as EMOJI, so the outcome's edited_args said the call ran with another text
    lock = threading.Lock()
    texts = [encode_arguments({"to": text, "lock": lock}) for text in (PAIR, EMOJI)]
    assert texts[0] != texts[1]
    assert [decode_arguments(text)["to"] for text in texts] == [PAIR, EMOJI]


def test_edited_arguments_with_a_pair_of_surrogates_survive_the_journal(tmp_path: Path) -> None:
    # the journal's own cell, through SQLite: what was written is what is read
    lock = threading.Lock()
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        store.write([RunRecord("r", time.time(), 1, "f"), OutcomeRecord("r", Outcome(
            "n", "t", "ok", 1, edited_args={"to": PAIR, "lock": lock}))])
        edited = store.outcomes("r")["n"].outcome.edited_args
        assert edited is not None and edited["to"] == PAIR
    finally:
        store.close()


# ---- (d) an outcome's status is one of STATUSES ------------------------------------------


@pytest.mark.parametrize("status", ["okay", "OK", "", "done", 1, None])
def test_an_outcome_of_an_unknown_status_is_refused(status: object) -> None:
    # was: Outcome("n", "t", "okay") was made and kept: its run counted it nowhere, .ok was
    # false, the journal then read its own row back as damaged
    with pytest.raises(ConfigError, match="status") as info:
        Outcome("n", "t", status)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    for name in STATUSES:
        assert name in str(info.value)


def test_every_known_status_makes_an_outcome() -> None:
    assert [Outcome("n", "t", status).status for status in STATUSES] == list(STATUSES)


# ---- (e) approval hashes tell key types apart -------------------------------------------


@pytest.mark.parametrize(("one", "other"), [
    ({"n": {1: 1}}, {"n": {"1": 1}}),
    ({"n": {True: 1}}, {"n": {"true": 1}}),
    ({"n": {None: 1}}, {"n": {"null": 1}}),
    ({"n": {1.5: 1}}, {"n": {"1.5": 1}}),
    ({"n": [{2: "a"}]}, {"n": [{"2": "a"}]}),
])
def test_arguments_whose_keys_differ_in_type_hash_apart(one: dict[str, object],
                                                         other: dict[str, object]) -> None:
    # was: {1: 1} and {"1": 1} both hashed as the JSON {"1":1}: approving one approved the
    # other (a decision is bound to its exact arguments)
    assert approval_hash("t", one) != approval_hash("t", other)
    assert approval_hash("t", one) == approval_hash("t", dict(one))


def test_text_keyed_arguments_keep_their_hash() -> None:
    # what a model sends, and what every journal holds: the hash stays what it was
    import hashlib

    from shoal.store.base import canonical_json

    args = {"n": {"1": 1}, "to": "bob"}
    old = hashlib.sha256(f"t\n{canonical_json(args)}".encode()).hexdigest()
    assert approval_hash("t", args) == old


# ---- (b) ApprovalRequested says what the request says: tests/test_hostile_journal2_s38.py


@shoal.tool(approval=True)
def tally(counts: dict[int, int]) -> int:
    """Needs approval; its arguments have keys that are not text."""
    return sum(counts.values())


async def _never(request: shoal.ApprovalRequest) -> shoal.Decision:
    await asyncio.Event().wait()
    raise AssertionError("never answered")


@shoal.tool
def send_nothing(text: str) -> str:
    """Returns its text."""
    return text


def _hush(request: shoal.ApprovalRequest) -> shoal.Decision:
    raise AssertionError(f"asked again about {request.args}")


@pytest.mark.parametrize("earlier", ["approved", "pending"])
def test_a_decision_kept_under_the_former_hash_is_found_on_resume(tmp_path: Path,
                                                                   earlier: str) -> None:
    # a journal written before {1: 1} hashed apart from {"1": 1} holds its decision under the
    # former hash: a resume acts on it (approved: runs, not asked), or asks again (pending),
    # and the former request is closed: used, never acted on twice
    path = tmp_path / "runs.db"
    plan = shoal.Plan()
    node = plan.call(tally, counts={1: 2, 3: 4})
    args = {"counts": {1: 2, 3: 4}}
    old = hash_before_keys("tally", args)
    assert old and old == approval_hash("tally", {"counts": {"1": 2, "3": 4}})
    assert old != approval_hash("tally", args)

    async def first() -> None:
        store = SQLiteStore(path)
        runtime = shoal.Runtime(store=store, approver=_never)
        try:
            handle = runtime.start(plan, run_id="r1")
            while not store.approvals("r1"):  # noqa: ASYNC110 (a journal's row)
                await asyncio.sleep(0.01)
            handle.cancel()
            await handle
        finally:
            await runtime.aclose()

    asyncio.run(first())
    with sqlite3.connect(path) as db:  # as a journal written before keeps it
        db.execute("UPDATE approvals SET args_hash = ?, decision = ?, decided_by = ?",
                   (old, earlier, "" if earlier == "pending" else "ann"))
    asked: list[shoal.ApprovalRequest] = []

    def answer(request: shoal.ApprovalRequest) -> shoal.Decision:
        asked.append(request)
        return shoal.Decision.approve()

    store = SQLiteStore(path)
    runtime = shoal.Runtime(store=store, approver=_hush if earlier == "approved" else answer)
    try:
        assert runtime.resume_sync("r1", plan)[node].value == 6
        records = store.approvals("r1")
    finally:
        asyncio.run(runtime.aclose())
    assert len(asked) == (earlier == "pending")
    assert all(record.used for record in records)
    assert (records[-1].args_hash, records[-1].decision) == (
        approval_hash("tally", args), "approved")


# ---- (c) a timeline page's writer killed mid-write leaves nothing behind -----------------

_KILLED_WRITER = """
import os, sys, time
from shoal.timeline import html

def stuck(fd):  # a disk that never finishes: the page is half written when the kill comes
    print("writing", flush=True)
    time.sleep(600)

os.fsync = stuck
html.write({"runs": []}, sys.argv[1])
"""


def test_a_page_writer_killed_mid_write_leaves_no_temporary_behind(tmp_path: Path) -> None:
    # was: each writer SIGKILLed while its page was being written left its .PAGE.XXXX.tmp
    # beside the page for good; the next write left it there too
    page = tmp_path / "run.html"
    for _ in range(2):
        with subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(page)],
                              stdout=subprocess.PIPE, cwd=tmp_path) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
            proc.kill()
            proc.wait()
    # the second writer removed the first one's temporary: its own is left
    assert len(os.listdir(tmp_path)) == 1
    from shoal.timeline import html

    html.write({"runs": []}, page)
    assert os.listdir(tmp_path) == ["run.html"]


def test_a_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    # the sweep removes only the temporaries of writers that are gone
    page = tmp_path / "run.html"
    with subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(page)],
                          stdout=subprocess.PIPE, cwd=tmp_path) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
            (busy,) = os.listdir(tmp_path)
            from shoal.timeline import html

            html.write({"runs": []}, page)
            assert sorted(os.listdir(tmp_path)) == sorted([busy, "run.html"])
        finally:
            proc.kill()


def test_an_async_approver_asked_as_the_run_is_cancelled_leaves_no_coroutine_unawaited(
        tmp_path: Path) -> None:
    # was: the run cancelled before the approver's task took its first step: its coroutine
    # was never awaited, and Python warned so (an error under filterwarnings=error)
    plan = shoal.Plan()
    plan.call(tally, counts={1: 2})

    async def scenario(path: Path) -> None:
        store = SQLiteStore(path)
        runtime = shoal.Runtime(store=store, approver=_never)
        try:
            handle = runtime.start(plan, run_id="r1")
            while not store.approvals("r1"):  # noqa: ASYNC110 (kept: about to ask)
                await asyncio.sleep(0.01)
            handle.cancel()
            assert [o.status for o in (await handle).outcomes.values()] == ["cancelled"]
        finally:
            await runtime.aclose()

    for i in range(3):
        asyncio.run(scenario(tmp_path / f"runs{i}.db"))
        gc.collect()


def test_a_views_key_that_is_not_text_does_not_hide_a_text_key_like_it() -> None:
    # was: {1: "a", "1": "b"} was viewed as {"1": "b"}: an item lost from what shoal show
    # prints, and, for a value kept as its view only, from the value read back
    lock = threading.Lock()
    for value in ({1: "a", "1": "b", "lock": lock}, {"1": "b", 1: "a", "lock": lock}):
        encoded = encode_value(value)
        shown = decode_value(encoded.encoding, encoded.payload, encoded.view)[0]
        assert len(shown) == 3 and shown["1"] == "b" and shown["<int 1>"] == "a"
    assert view_value(encode_value(({2: "x"},)).view) == [{"2": "x"}]  # alone: as before


# ---- shoal runs lists a run its other commands could not name -----------------------------


def test_a_run_id_with_surrogates_is_named_as_shoal_runs_shows_it(tmp_path: Path) -> None:
    # was: a run id holding lone surrogates (valid JSON from a program, kept exactly) was
    # listed by shoal runs as r\ud83d..., but shoal show, cancel and resume, given that,
    # said "no run": no command line can pass the code points themselves
    plan = shoal.Plan(name="p")
    plan.call(send_nothing, text="hi")
    run_id = f"r{PAIR}\udcff"
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / ".shoal" / "runs.db"))
    assert runtime.run_sync(plan, run_id=run_id).ok
    listed = json.loads(shoal_cli("runs", "--json", cwd=tmp_path).stdout)
    (shown,) = [run["run_id"] for run in listed]
    assert shown == "r\\ud83d\\ude00\\udcff"
    proc = shoal_cli("show", shown, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run_id"] == shown
    cancel = shoal_cli("cancel", shown, cwd=tmp_path)
    assert cancel.returncode == 1 and "not running" in cancel.stdout + cancel.stderr


def test_a_run_whose_id_is_written_with_a_backslash_is_still_named_by_it(tmp_path: Path) -> None:
    # alone, the run is named by its id as written; next to a run holding the code points,
    # which shoal runs --json shows so (session 40), by the form --json shows it in, r\\udcff
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / ".shoal" / "runs.db"))
    for run_id, name in (("r\\udcff", "literal"), ("r\udcff", "surrogate")):
        plan = shoal.Plan(name=name)
        plan.call(send_nothing, text="hi")
        assert runtime.run_sync(plan, run_id=run_id).ok
        proc = shoal_cli("show", "r\\udcff", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["name"] == name
    proc = shoal_cli("show", "r\\\\udcff", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "literal"


def test_an_edits_arguments_text_tells_a_surrogate_pair_from_its_character() -> None:
    # was: ApprovalDecided.edited_args (and the note an edited call's model reads) wrote PAIR
    # and EMOJI alike, "\ud83d\ude00": a reader took the two code points for the character
    texts = [edited_args_text({"to": text}) for text in (PAIR, EMOJI)]
    assert [json.loads(text)["to"] for text in texts] == ["\\ud83d\\ude00", EMOJI]
    assert edited_args_text({"to": "bob"}) == '{"to": "bob"}'  # as before


def test_shoal_shows_approved_arguments_with_a_surrogate_pair_apart_from_its_character() -> None:
    # was: shoal show's approvals table wrote both {"to": PAIR} and {"to": EMOJI} as
    # {"to": "\ud83d\ude00"}: the arguments a person approved read as others
    from rich.console import Console

    from shoal.cli.journal import _approval_table
    from shoal.store.base import ApprovalRecord

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(_approval_table([ApprovalRecord("r", f"n{i}", "t", "h", {"to": text})
                                   for i, text in enumerate((PAIR, EMOJI))]))
    lines = [line for line in console.export_text().splitlines() if line.startswith(("n0", "n1"))]
    assert '"\\\\ud83d\\\\ude00"' in lines[0] and '"\\ud83d\\ude00"' in lines[1]


def test_a_status_of_a_str_enum_equal_to_a_known_one_is_taken() -> None:
    import enum

    class Said(enum.StrEnum):
        OK = "ok"
        TYPO = "okay"

    assert Outcome("n", "t", Said.OK).ok  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="okay"):
        Outcome("n", "t", Said.TYPO)  # type: ignore[arg-type]
