"""The timeline: built from results and the journal, and drawn by a real headless Chromium.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when it can); without it the
browser tests skip and say why. The page must load with no console error and draw one bar per
call; the screenshot of the main job is the README's picture.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import RunNotFoundError
from shoal.store.base import AttemptStarted, RunRecord
from shoal.store.sqlite import SQLiteStore
from shoal.testing import run_virtual
from shoal.timeline import embed, from_journal, render
from shoal.timeline.critical import longest_chain
from shoal.timeline.model import from_run_result
from tests.agent_models import REVIEW_PROMPT, review_model
from tests.browser import Browser, find_chromium
from tests.cli_process import run_cli
from tests.review_agents import lead

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = "examples/literature_review/agents.py:review"
HOSTILE = ("</script><script>window.pwned=1</script><!-- <img src=x onerror=window.pwned=2>"
           " \u2028\u2029 \ud800 \udfff \x00\x01\x1b[31m & &amp; \"'` ${x} \\u003c")


def shoal_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return run_cli(args, cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    pytest.importorskip("websocket", reason="the dev extra's websocket-client drives Chromium")
    binary = find_chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it when it can: "
                    "apt-get install chromium)")
    with Browser(binary) as started:
        yield started


def load(browser: Browser, page: Path, **size: int) -> float:
    browser.errors.clear()
    took = browser.load(page, **size)
    assert browser.evaluate("document.body.getAttribute('data-ready')") == "1"
    assert browser.errors == []
    return took


def drawn(browser: Browser) -> int:
    return int(browser.evaluate("document.querySelectorAll('[data-bar]').length"))


def journaled_calls(db: Path, run_id: str) -> int:
    """The calls of a run and every run nested in it, counted in the file itself."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM outcomes WHERE run_id = ? OR run_id LIKE ?",
                                (run_id, f"{run_id}/%")).fetchone()[0])


# ---- tools for the plans below -------------------------------------------------------------


@shoal.tool
async def fetch(url: str) -> str:
    """Pretend to fetch a page."""
    await asyncio.sleep(0.02)
    return f"page {url}"


@shoal.tool
async def merge(parts: list[str]) -> str:
    """Join the pages."""
    await asyncio.sleep(0.01)
    return " + ".join(parts)


@shoal.tool(writes="file:{path}")
async def save(path: str, text: str) -> int:
    """Write a file (two saves to one path keep plan order)."""
    await asyncio.sleep(0.02)
    return len(text)


@shoal.tool(max_concurrency=1)
async def slow_api(n: int) -> int:
    """An API that takes one call at a time."""
    await asyncio.sleep(0.03)
    return n


_FLAKY: dict[str, int] = {}


@shoal.tool(retries=2, backoff=0.05, max_backoff=0.05)
async def flaky(key: str) -> str:
    """Fails the first time for each key."""
    _FLAKY[key] = _FLAKY.get(key, 0) + 1
    if _FLAKY[key] == 1:
        raise ConnectionError("connection reset")
    return "ok"


@shoal.tool(approval=True)
async def pay(amount: int) -> str:
    """Needs a person's approval."""
    return f"paid {amount}"


@shoal.tool(exclusive=True)
async def migrate() -> str:
    """Runs alone: a barrier between what comes before and after it."""
    await asyncio.sleep(0.01)
    return "migrated"


@shoal.tool
async def echo(text: str) -> str:
    """Return the text as it came."""
    return text


@shoal.tool
async def explode(text: str) -> str:
    """Fail with the text as the message."""
    raise ValueError(text)


@shoal.tool
async def noop(i: int) -> int:
    """Do nothing."""
    return i


def waits_plan(key: str) -> shoal.Plan:
    plan = shoal.Plan("waits")
    a = plan.call(fetch, url="a")
    b = plan.call(fetch, url="b")
    plan.call(merge, parts=[a, b], node_id="merged")
    plan.call(save, path="out.txt", text="1", node_id="save-1")
    plan.call(save, path="out.txt", text="2", node_id="save-2")
    plan.call(slow_api, n=1, node_id="api-1")
    plan.call(slow_api, n=2, node_id="api-2")
    plan.call(flaky, key=key, node_id="flaky")
    plan.call(pay, amount=5, node_id="pay")
    plan.call(noop, i=1, after=["api-2"], node_id="later")
    plan.call(migrate, node_id="migrate")
    return plan


async def _approve_later(request: Any) -> bool:
    await asyncio.sleep(0.05)  # a person takes a moment
    return True


def run_journaled(plan: shoal.Plan, db: Path) -> shoal.RunResult:
    async def go() -> shoal.RunResult:
        async with shoal.Runtime(store=SQLiteStore(db), approver=_approve_later) as runtime:
            return await runtime.run(plan)
    return asyncio.run(go())


# ---- the model: waits, critical path ------------------------------------------------------


def test_waits_are_explained_from_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = run_journaled(waits_plan(str(tmp_path)), db)
    assert result.ok
    view = from_journal(SQLiteStore(db, read_only=True), result.run_id)
    assert len(view.bars) == len(result.outcomes)
    waits = {b.node_id: {w.kind: w for w in b.waits} for b in view.bars}
    assert "merged" in waits and "data" in waits["merged"]
    assert "waited for fetch#" in waits["merged"]["data"].text
    assert "data dependency" in waits["merged"]["data"].text
    assert "resource" in waits["save-2"]
    assert "save-1" in waits["save-2"]["resource"].text
    assert "resource conflict: writes file:out.txt" in waits["save-2"]["resource"].text
    api = [w for n in ("api-1", "api-2") for w in waits[n].values() if w.kind == "limit"]
    assert len(api) == 1 and api[0].end - api[0].start > 0.02  # one waited for the other
    assert api[0].text == "waited for a free slot: tool slow_api max_concurrency=1"  # recorded
    retry = waits["flaky"]["retry"]
    assert "retry backoff after attempt 1" in retry.text and "connection reset" in retry.text
    assert retry.end - retry.start >= 0.02  # the backoff, at least half of 0.05 (jitter)
    flaky = next(b for b in view.bars if b.node_id == "flaky")
    assert [a.status for a in flaky.attempts][-1] == "ok" and len(flaky.attempts) == 2
    assert flaky.detail == "ok"  # each attempt is drawn: the detail need not count them
    from_result = next(b for b in from_run_result(result).bars if b.node_id == "flaky")
    assert from_result.detail == "2 attempts\nok"  # one attempt bar: the detail says it
    approval = waits["pay"]["approval"]
    assert "approval approved" in approval.text and approval.end - approval.start >= 0.04
    assert waits["later"]["after"].text == "waited for api-2 (ordered by: after=api-2)"
    assert waits["migrate"]["barrier"].text.startswith("waited for ")
    assert "(barrier: migrate is exclusive)" in waits["migrate"]["barrier"].text


def test_the_run_wide_limit_is_recorded(tmp_path: Path) -> None:
    plan = shoal.Plan()
    for i in range(3):
        plan.call(fetch, url=str(i))

    async def go() -> shoal.RunResult:
        async with shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"),
                                 max_concurrency=1) as runtime:
            return await runtime.run(plan)
    result = asyncio.run(go())
    held = [a.held for a in SQLiteStore(tmp_path / "runs.db").attempts(result.run_id)]
    assert sorted(held) == ["", "the run's max_concurrency=1", "the run's max_concurrency=1"]


def test_a_journal_from_before_held_is_read_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = run_journaled(waits_plan(str(tmp_path)), db)
    with sqlite3.connect(db) as conn:  # the attempts table as older versions of shoal made it
        conn.execute("ALTER TABLE attempts DROP COLUMN held")
    old = SQLiteStore(db, read_only=True)
    assert {a.held for a in old.attempts(first.run_id)} == {""}
    assert len(from_journal(old, first.run_id).bars) == len(first.outcomes)
    old.close()
    second = run_journaled(waits_plan(str(tmp_path / "again")), db)  # opened for writing
    store = SQLiteStore(db, read_only=True)
    assert {a.held for a in store.attempts(first.run_id)} == {""}
    assert "tool slow_api max_concurrency=1" in {a.held for a in store.attempts(second.run_id)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'"
                            ).fetchone()[0] == "1"


def test_the_limit_that_held_a_call_is_named_from_the_result() -> None:
    plan = shoal.Plan()
    plan.call(slow_api, n=1)
    plan.call(slow_api, n=2)
    page = shoal.run_sync(plan).timeline()
    bars = json.loads(_embedded(page))["bars"]
    # the one held by the other (the first may show a moment's wait for the loop, when busy)
    limits = [w for bar in bars for w in bar[11] if w[0] == "limit" and w[2] - w[1] > 0.02]
    assert len(limits) == 1
    assert "slow_api max_concurrency=1" in limits[0][3]


def test_the_critical_path_is_the_runs_measured_one(tmp_path: Path) -> None:
    plan = shoal.Plan()
    a = plan.call(fetch, url="a")
    b = plan.call(merge, parts=[a])
    plan.call(merge, parts=[b], node_id="last")
    plan.call(noop, i=1)  # off the path: nothing depends on it, and it is quick
    result = shoal.run_sync(plan)
    page = result.timeline(tmp_path / "t.html")
    data = json.loads(_embedded(page))
    marked = [bar[1] for bar in data["bars"] if bar[13]]
    assert sorted(marked) == sorted(result.critical_path) and "last" in marked
    assert data["critical_time"] == pytest.approx(result.critical_path_time, abs=1e-5)
    assert (tmp_path / "t.html").read_text(encoding="ascii") == page


def test_an_agent_tree_from_code_in_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"

    async def go() -> shoal.AgentResult[str]:
        async with shoal.Runtime(store=SQLiteStore(db)) as runtime:
            return await lead.run(REVIEW_PROMPT, runtime=runtime, model=review_model())
    result = asyncio.run(go())
    view = from_journal(SQLiteStore(db, read_only=True), result.run_id)
    assert len(view.bars) == journaled_calls(db, result.run_id) == 26  # 14 turns, 12 calls
    assert [lane.lineage for lane in view.lanes] == ["lead", *(
        f"lead/reader#{i}" for i in range(1, 7))]
    assert [lane.depth for lane in view.lanes] == [0] + [1] * 6
    critical = [b for b in view.bars if b.critical]
    # the lead's first turn, one reader (its turns and its call), the lead's last turn
    assert sorted(b.kind for b in critical) == ["agent", "call", "model", "model", "model",
                                                "model"]
    assert len({b.lane for b in critical}) == 2  # the lead's and one reader's
    assert view.lanes[critical[0].lane].lineage == "lead"
    assert view.critical_time <= view.duration + 1e-6
    # from the result alone: the agents and their calls (model turns are in the journal only)
    page = result.timeline()
    data = json.loads(_embedded(page))
    assert len(data["bars"]) == sum(len(a.calls) for a in result.walk()) == 12
    assert data["agents"]["children"][0]["lineage"] == "lead/reader#1"
    assert data["answer"].startswith("Review:")
    with_store = json.loads(_embedded(result.timeline(store=SQLiteStore(db, read_only=True))))
    assert len(with_store["bars"]) == 26 and with_store["answer"].startswith("Review:")


def test_show_lists_the_agents_and_calls_of_an_agent_tree_from_code(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"

    async def go() -> shoal.AgentResult[str]:
        async with shoal.Runtime(store=SQLiteStore(db)) as runtime:
            return await lead.run(REVIEW_PROMPT, runtime=runtime, model=review_model())
    result = asyncio.run(go())
    done = shoal_cli("show", result.run_id, "--store", str(db))
    assert done.returncode == 0, done.stderr
    assert "agent tree · 7 agents · 26 calls and model turns" in done.stdout
    assert done.stdout.count("read_paper#1") == 6 and "reader#6" in done.stdout
    data = json.loads(shoal_cli("show", result.run_id, "--store", str(db), "--json").stdout)
    assert data["kind"] == "agent tree" and len(data["calls"]) == 26
    assert {c["lineage"] for c in data["calls"]} >= {"lead", "lead/reader#3"}
    listed = json.loads(shoal_cli("runs", "--store", str(db), "--json").stdout)
    assert [(r["run_id"], r["name"], r["status"], r["counts"]) for r in listed] == [
        (result.run_id, "agent lead", "finished", {"ok": 12})]  # its tool calls, as for shoal run
    steps = shoal_cli("runs", "--store", str(db), "--json", "--steps", "-n", "100")
    assert len(json.loads(steps.stdout)) == 7  # each agent's steps


# ---- hostile and odd input ----------------------------------------------------------------


def test_a_turn_and_the_calls_it_streamed_overlap_but_count_once_on_the_critical_path() -> None:
    """A call starts while its turn still streams: the summed durations count that twice."""
    from shoal.timeline.model import Bar, Lane, mark_critical, turn_links

    bars = [Bar("m1", "model-1", "model", 0, "ok", start=0.0, end=1.0, step="model-1"),
            Bar("c1", "fetch#1", "fetch", 0, "ok", start=0.9, end=2.0, step="turn-1"),
            Bar("m2", "model-2", "model", 0, "ok", start=2.0, end=2.5, step="model-2")]
    assert mark_critical(bars, [Lane("lead", "lead")], turn_links(bars)) == 2.5  # not 2.6
    assert all(b.critical for b in bars)
    apart = [Bar("m1", "model-1", "model", 0, "ok", start=0.0, end=1.0, step="model-1"),
             Bar("c1", "fetch#1", "fetch", 0, "ok", start=1.5, end=2.0, step="turn-1")]
    assert mark_critical(apart, [Lane("lead", "lead")], turn_links(apart)) == 1.5  # no gap


def test_the_longest_chain_ends_on_a_cycle_too() -> None:
    weights = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 4.0}
    assert longest_chain(list(weights), weights, [("a", "j"), ("j", "b"), ("a", "c")]) == (
        ["a", "j", "b"], 6.0)  # "j" is a join point of no weight
    chain, total = longest_chain(list(weights), weights, [("b", "c"), ("c", "b"), ("a", "d")])
    assert chain == ["a", "d"] and total == 5.0  # the cycle a hand edit made is left out


def test_embedded_data_cannot_end_the_script_or_start_markup() -> None:
    data = {"text": HOSTILE, HOSTILE: [HOSTILE], "nan": float("nan")}
    text = embed(data)
    assert text.isascii()
    assert not set("<>&") & set(text)
    assert "\u2028" not in text and "\\u2028" in text and "\\ud800" in text
    back = json.loads(text)
    assert back["text"] == HOSTILE and back[HOSTILE] == [HOSTILE] and back["nan"] == "NaN"
    page = render(data)
    assert page.isascii() and page.count("</script>") == 2


def test_data_that_holds_itself_or_nests_deep_is_embedded_as_its_repr() -> None:
    # a value holding itself (with a NaN beside it, or not) or nested 10,000 deep raised
    # RecursionError out of embed and render
    itself: dict[str, Any] = {"text": HOSTILE}
    itself["me"] = itself
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    for data in (itself, [float("nan"), itself], deep, {"n": 10**5000, "me": itself}):
        text = embed(data)
        assert text.isascii() and not set("<>&") & set(text)
        assert isinstance(json.loads(text), str)  # its bounded repr, as a JSON string
        assert render(data).count("</script>") == 2


def test_hostile_values_stay_text_in_a_real_browser(tmp_path: Path, browser: Browser) -> None:
    plan = shoal.Plan(HOSTILE)
    plan.call(echo, text=HOSTILE, node_id="echoed")
    plan.call(explode, text=HOSTILE, node_id="exploded")
    result = shoal.run_sync(plan)
    page = tmp_path / "hostile.html"
    result.timeline(page, title=HOSTILE)
    load(browser, page)
    assert drawn(browser) == 2
    assert browser.evaluate("window.pwned === undefined")
    assert browser.evaluate("document.querySelectorAll('script').length") == 2
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.getElementById('title').textContent") == HOSTILE
    browser.evaluate("document.querySelector('[data-bar]').click()")
    shown = browser.evaluate("document.getElementById('pbody').textContent")
    assert "</script><script>window.pwned=1</script>" in shown
    assert browser.errors == []


def test_every_status_drawn_has_its_key_in_the_legend(tmp_path: Path, browser: Browser) -> None:
    """Damaged rows (and in-doubt calls) were drawn in their colour with no key to read it."""
    db = tmp_path / "runs.db"
    plan = shoal.Plan("statuses")
    plan.call(noop, i=1)
    plan.call(noop, i=2)
    result = run_journaled(plan, db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE outcomes SET status = 'weird' WHERE node_id = 'noop#1'")
    page = tmp_path / "t.html"
    done = shoal_cli("show", result.run_id, "--store", str(db), "--html", str(page))
    assert done.returncode == 0, done.stderr
    load(browser, page)
    drawn_statuses = set(browser.evaluate(
        "Array.from(document.querySelectorAll('[data-status]')).map(function (b) {"
        " return b.getAttribute('data-status'); })"))
    assert drawn_statuses == {"ok", "damaged"}
    legend = browser.evaluate("document.getElementById('legend').textContent")
    assert "damaged" in legend
    assert browser.errors == []


def test_an_empty_run(tmp_path: Path, browser: Browser) -> None:
    result = shoal.run_sync(shoal.Plan())
    page = tmp_path / "empty.html"
    result.timeline(page)
    load(browser, page)
    assert drawn(browser) == 0


def test_a_run_still_in_progress(tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    began = time.time() - 2.0
    plan = {"nodes": {"a": ["fetch"], "b": ["merge"]}, "edge_list": [["a", "b", "data",
                                                                       "uses $a"]]}
    store.write([RunRecord("live", began, 2, "f", plan, {}, "live run", heartbeat=time.time()),
                 AttemptStarted("live", 1, "a", 1, "fetch", "inline", 0.5)])
    view = from_journal(store, "live")
    a, b = view.bars
    assert a.status == "running" and a.start == pytest.approx(0.5) and a.end is None
    assert b.status == "waiting" and b.start is None
    assert view.duration >= 1.9
    page = tmp_path / "live.html"
    done = shoal_cli("show", "live", "--store", str(db), "--html", str(page))
    assert done.returncode == 0, done.stderr
    load(browser, page)
    assert drawn(browser) == 2
    assert browser.evaluate("document.querySelectorAll('.bar.running').length") == 1


def test_an_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    SQLiteStore(db).close()
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        from_journal(SQLiteStore(db), "nope")
    done = shoal_cli("show", "nope", "--store", str(db), "--html", str(tmp_path / "x.html"))
    assert done.returncode == 2
    assert "no run 'nope'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.html").exists()


def test_a_file_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = run_journaled(waits_plan(str(tmp_path)), db)
    done = shoal_cli("show", result.run_id, "--store", str(db), "--html",
                     str(tmp_path / "no" / "such" / "dir" / "t.html"))
    assert done.returncode == 2
    assert "cannot write the timeline" in done.stderr and "Traceback" not in done.stderr


def test_ten_thousand_calls_load(tmp_path: Path, browser: Browser) -> None:
    plan = shoal.Plan("many")
    for i in range(10_000):
        plan.call(noop, i=i)
    result = shoal.run_sync(plan)
    page = tmp_path / "many.html"
    began = time.monotonic()
    result.timeline(page)
    built = time.monotonic() - began
    took = load(browser, page)
    assert drawn(browser) == 10_000
    size = page.stat().st_size
    print(f"10,000 calls: page {size / 1e6:.1f} MB, built in {built:.2f} s, "
          f"loaded in {took:.2f} s")
    assert took < 30  # on a loaded two-core machine; it takes about a second when idle


def test_a_thousand_node_plan_loads_in_under_two_seconds(tmp_path: Path,
                                                          browser: Browser) -> None:
    plan = shoal.Plan("a thousand")
    chain_end = None
    for i in range(1000):  # 100 chains of 10: every bar but the first of a chain waited
        chain_end = plan.call(noop, i=i,
                              after=() if chain_end is None or i % 10 == 0 else chain_end)
    db = tmp_path / "runs.db"
    result = run_journaled(plan, db)
    assert result.ok and len(result) == 1000
    page = tmp_path / "thousand.html"
    shown = shoal_cli("show", result.run_id, "--store", str(db), "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    # the page's own time, from navigation to the end of its load event (the drawing is done
    # by then: load() checked), as Chromium measured it; the best of three loads, so that a
    # loaded machine's one slow moment does not decide (the page is the same each time)
    timings = []
    for _ in range(3):
        took = load(browser, page)  # no console error, rendered (data-ready) by its load event
        assert drawn(browser) == journaled_calls(db, result.run_id) == 1000
        own = browser.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        timings.append((own, took))
    own, took = min(timings)
    print(f"1,000 calls: page {page.stat().st_size / 1e6:.2f} MB, loaded in {own / 1000:.3f} s"
          f" (page's own clock, best of 3), {took:.3f} s round trip")
    assert 0 < own < 2000


# ---- the main job in a real browser ------------------------------------------------------


@shoal.tool
async def doze(seconds: float) -> float:
    """Sleep (on the virtual clock, in the test below)."""
    await asyncio.sleep(seconds)
    return seconds


def test_zooming_in_names_the_bars_that_become_wide_enough(tmp_path: Path,
                                                           browser: Browser) -> None:
    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(doze, seconds=1.0, node_id="long")
        plan.call(doze, seconds=0.01, node_id="short")  # about 11 px wide at first
        return await shoal.run(plan)

    page = tmp_path / "zoom.html"
    run_virtual(main()).timeline(page)
    load(browser, page)
    named = "Array.from(document.querySelectorAll('.bar .txt')).map(function (t) {" \
            " return t.textContent; }).sort()"
    assert browser.evaluate(named) == ["long"]
    browser.evaluate("(function () { var z = document.getElementById('zoom'); z.value = 20;"
                     " z.dispatchEvent(new Event('input')); })()")
    assert browser.evaluate(named) == ["long", "short"]
    assert browser.errors == []


def test_the_main_job_timeline_in_a_real_browser(tmp_path: Path, browser: Browser) -> None:
    """The README's picture is this test's screenshot: ``SHOAL_UPDATE_SCREENSHOT=1`` writes it."""
    db = tmp_path / "runs.db"
    done = shoal_cli("run", MAIN_JOB, "What makes agent runs fast and safe?", "--model",
                     "tests/agent_models.py:main_job_paced", "--store", str(db), "--json")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("SELECT run_id FROM runs WHERE run_id NOT LIKE '%/%'"
                              ).fetchone()[0]
    page = tmp_path / "main.html"
    shown = shoal_cli("show", run_id, "--store", str(db), "--html", str(page))
    assert shown.returncode == 0, shown.stderr
    assert f"timeline of run {run_id}" in shown.stdout
    load(browser, page)
    calls = journaled_calls(db, run_id)
    assert calls == 18  # 11 nodes of the plan and 7 model turns
    assert drawn(browser) == calls
    assert browser.evaluate("document.querySelectorAll('.bar.crit').length") >= 4
    assert "Synthesis" in browser.evaluate("document.getElementById('answer').textContent")
    assert browser.evaluate("document.querySelectorAll('#agents li').length") == 8
    labels = browser.evaluate("document.querySelectorAll('.bar .txt').length")
    track = browser.evaluate("document.querySelector('.track').getBoundingClientRect().width")
    browser.evaluate("(function () { var z = document.getElementById('zoom'); z.value = 20;"
                     " z.dispatchEvent(new Event('input')); })()")
    # zoomed in, the chart is 20 times as wide and every bar wide enough for its name shows it
    # (how many more that is depends on how long the tool calls took on this machine)
    assert browser.evaluate("document.querySelector('.track').getBoundingClientRect().width"
                            ) > 19 * track  # the lane labels' column keeps its width
    unlabelled = browser.evaluate(
        "Array.from(document.querySelectorAll('.bar')).filter(function (b) {"
        " return !b.querySelector('.txt') && b.getBoundingClientRect().width >= 28; }).length")
    assert unlabelled == 0
    assert browser.evaluate("document.querySelectorAll('.bar .txt').length") >= labels
    browser.evaluate("document.querySelector('.bar.crit').click()")
    assert "critical path" in browser.evaluate("document.getElementById('pbody').textContent")
    assert browser.errors == []
    browser.evaluate("document.getElementById('zoom').value = 1;"
                     " document.getElementById('zoom').dispatchEvent(new Event('input'))")
    # the picture: the readers side by side, the slowest on the critical path, and why the
    # lead waited, in its tooltip
    load(browser, page, width=1400, height=760)
    browser.hover(".bar", "lead#1")
    tip = browser.evaluate("document.getElementById('tip').textContent")
    assert "waited for reader#1" in tip and "critical path" in tip, tip
    crit = browser.evaluate("Array.from(document.querySelectorAll('.bar.crit'))"
                            ".map(function (b) { return b.textContent.trim(); })")
    assert "reader#1[3]" in crit and "lead#1" in crit, crit  # p4: the slowest reader
    shot = browser.screenshot(full_page=False)
    assert browser.errors == []
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    (tmp_path / "main.png").write_bytes(shot)
    if os.environ.get("SHOAL_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "timeline.png").write_bytes(shot)


def _embedded(page: str) -> str:
    start = page.index('<script type="application/json" id="data">') + len(
        '<script type="application/json" id="data">')
    return page[start:page.index("</script>", start)]


@shoal.tool
async def wait_for(seconds: float) -> float:
    """Take ``seconds`` of the (virtual) clock."""
    await asyncio.sleep(seconds)
    return seconds


@shoal.tool
async def breaks(seconds: float) -> None:
    """Fail after ``seconds``."""
    await asyncio.sleep(seconds)
    raise ValueError("broken")


def test_a_huge_run_draws_its_critical_path_failures_and_longest_calls_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of every call of a 200,000-call run was 70 MB: past MAX_BARS it draws a part."""
    from shoal.timeline import model

    monkeypatch.setattr(model, "MAX_BARS", 6)
    described: list[str] = []  # the calls whose value was written out for the page

    def outcome_detail(outcome: shoal.Outcome) -> str:
        described.append(outcome.node_id)
        return original_detail(outcome)

    original_detail = model.outcome_detail
    monkeypatch.setattr(model, "outcome_detail", outcome_detail)
    plan = shoal.Plan("huge")
    first = plan.call(wait_for, seconds=5.0, node_id="first")
    plan.call(wait_for, seconds=first, node_id="second")  # the critical path: 10 s
    plan.call(breaks, seconds=0.5, node_id="broken")
    for i in range(12):  # quick ones; the two longest of them fill the page
        plan.call(wait_for, seconds=0.1 * (i + 1), node_id=f"quick-{i}")

    async def go() -> shoal.RunResult:
        async with shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")) as runtime:
            return await runtime.run(plan)

    result = run_virtual(go())
    for source in (result, SQLiteStore(tmp_path / "runs.db", read_only=True)):
        described.clear()
        view = (model.from_run_result(source) if isinstance(source, shoal.RunResult)
                else from_journal(source, result.run_id))
        assert view.calls == 15 and len(view.bars) == 6
        assert [b.node_id for b in view.bars] == [
            "first", "second", "broken", "quick-9", "quick-10", "quick-11"]
        assert any("15 calls: the page draws 6 of them" in n for n in view.notes)
        page = view.html()
        assert "quick-0" not in page and "quick-11" in page and "--json" in page
        # only the drawn calls' values are written out (at 100,000 calls, seconds of JSON)
        assert sorted(described) == sorted(b.node_id for b in view.bars), described
        assert all(b.detail and b.source is None for b in view.bars)
