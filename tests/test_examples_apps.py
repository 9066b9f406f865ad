"""The application examples end to end: data aggregation and market research.

Both run on ``ScriptedModel`` here (market research on the virtual clock, so that "the
analysts ran side by side" is a fact about exact times), and on the local model in the last
test, which is skipped unless the ``local`` extra is installed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import decimal
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import pytest
from examples.data_aggregation import plan as da_plan
from examples.data_aggregation import tools as da
from examples.market_research import agents as mr_agents
from examples.market_research import tools as mr
from examples.market_research.plan import build_plan as market_plan

import shoal
from shoal.models.base import AssistantMessage, ModelRequest, UserMessage
from shoal.patterns import Reflection
from shoal.testing import ScriptedModel, run_virtual
from tests.app_models import ACCEPTED, COMMENTARY, DRAFT_1, DRAFT_2, FEEDBACK, NOTES
from tests.cli_process import run_cli
from tests.conftest import ONE_AT_A_TIME
from tests.spans import finished, started

ROOT = Path(__file__).resolve().parents[1]
BAD_SHARD = "sales-2026-05.csv"


def run_module(module: str, cwd: Path, *args: str,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from ``cwd``, with the repository on the import path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def prompt_of(request: ModelRequest) -> str:
    """The first user message of a model request: the agent's task as rendered."""
    return next(m.content for m in request.messages if isinstance(m, UserMessage))


# --- data aggregation: a direct computation to check the plan against -------------------------


def readable(path: Path) -> list[dict[str, str]] | None:
    """The rows of a shard, or ``None`` when any row is not a clean sale."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if not row["units"].isdigit() or not re.fullmatch(r"\d+\.\d\d", row["revenue"]):
            return None
    return rows


def direct_totals() -> tuple[dict[str, Any], list[str]]:
    """Totals over every readable shipped shard, straight from the files; the unreadable ones."""
    totals: dict[str, Any] = {"rows": 0, "units": 0, "revenue_cents": 0}
    groups: dict[str, dict[str, list[int]]] = {"region": collections.defaultdict(list),
                                               "product": collections.defaultdict(list)}
    units: dict[str, collections.Counter[str]] = {"region": collections.Counter(),
                                                  "product": collections.Counter()}
    unreadable = []
    for path in sorted(da.SHARDS.glob("*.csv")):
        rows = readable(path)
        if rows is None:
            unreadable.append(path.name)
            continue
        for row in rows:
            cents = int(decimal.Decimal(row["revenue"]) * 100)
            totals["rows"] += 1
            totals["units"] += int(row["units"])
            totals["revenue_cents"] += cents
            for key in groups:
                groups[key][row[key]].append(cents)
                units[key][row[key]] += int(row["units"])
    for key, by in groups.items():
        totals[f"by_{key}"] = {
            name: {"rows": len(sales), "units": units[key][name], "revenue_cents": sum(sales),
                   "min_sale_cents": min(sales), "max_sale_cents": max(sales)}
            for name, sales in sorted(by.items())}
    return totals, unreadable


@pytest.fixture(scope="module")
def aggregation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, shoal.RunResult]:
    cwd = tmp_path_factory.mktemp("data_aggregation")
    plan = da_plan.build_plan(report_path=str(cwd / "sales_report.md"))
    return cwd, shoal.run_sync(plan)


def test_every_shard_is_summarised_and_the_bad_one_fails_alone(
        aggregation: tuple[Path, shoal.RunResult]) -> None:
    _, result = aggregation
    shards = result["shards"].value
    assert [Path(s).name for s in shards] == [f"sales-2026-{m:02d}.csv" for m in range(1, 9)]
    items = [result[f"summaries[{i}]"] for i in range(len(shards))]
    failed = [o for o in items if not o.ok]
    assert len(failed) == 1
    assert failed[0].node_id == "summaries[4]"
    assert failed[0].error is not None
    assert failed[0].error.type == "examples.data_aggregation.tools.ShardError"
    assert failed[0].error.message == f"{BAD_SHARD} line 23: units '1O' is not a whole number"
    assert da_plan.failed_shards(result) == {shards[4]: failed[0].error.message}
    # partial: the map itself is ok and holds the seven others, in shard order
    assert result["summaries"].ok
    assert [s["shard"] for s in result["summaries"].value] == [
        Path(s).name for s in shards if Path(s).name != BAD_SHARD]
    for name in ("totals", "report"):
        assert result[name].ok, name


def test_merged_totals_equal_a_direct_computation(
        aggregation: tuple[Path, shoal.RunResult]) -> None:
    _, result = aggregation
    totals = result["totals"].value
    expected, unreadable = direct_totals()
    assert unreadable == [BAD_SHARD]
    assert totals["shards_missing"] == [BAD_SHARD]
    assert len(totals["shards_summarised"]) == 7
    for key, value in expected.items():
        assert totals[key] == value, key
    # the per-group totals add up to the grand total
    assert sum(g["revenue_cents"] for g in totals["by_region"].values()) == \
        totals["revenue_cents"]
    assert (totals["first_day"], totals["last_day"]) == ("2026-01-02", "2026-08-31")


def test_the_report_shows_the_totals_and_names_the_missing_shard(
        aggregation: tuple[Path, shoal.RunResult]) -> None:
    cwd, result = aggregation
    text = (cwd / "sales_report.md").read_text(encoding="utf-8")
    assert result["report"].value == text  # what it wrote, it returns
    expected, _ = direct_totals()
    assert f"**{da.euros(expected['revenue_cents'])} EUR**" in text
    assert f"`{BAD_SHARD}`" in text
    east = expected["by_region"]["east"]
    assert (f"| east | {east['rows']} | {east['units']} | {da.euros(east['revenue_cents'])} |"
            in text)
    assert "## By product" in text


def test_the_commentary_is_written_from_the_merged_figures(tmp_path: Path) -> None:
    expected, _ = direct_totals()
    paragraph = COMMENTARY
    model = ScriptedModel([paragraph])
    plan = da_plan.build_plan(report_path=str(tmp_path / "r.md"), model=model)
    result = shoal.run_sync(plan)
    model.check()
    assert result["commentary"].value == paragraph
    assert len(model.requests) == 1
    prompt = prompt_of(model.requests[0])
    assert prompt.startswith("Write one paragraph about these sales figures.\n\nfigures:\n")
    assert f"revenue {da.euros(expected['revenue_cents'])} euros" in prompt
    assert "Best product: sourdough" in prompt
    assert f"Not included: {BAD_SHARD}" in prompt
    assert paragraph in (tmp_path / "r.md").read_text(encoding="utf-8")


def test_the_module_runs_as_documented(tmp_path: Path) -> None:
    proc = run_module("examples.data_aggregation", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 shards: 7 summarised, 1 failed" in proc.stdout
    assert f"{BAD_SHARD} line 23" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "sales_report.md").read_text(encoding="utf-8").startswith(
        "# Sales report")


def write_shard(path: Path, *rows: str, header: str = ",".join(da.COLUMNS)) -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("row", "problem"), [
    ("2026-01-05,north,Mill Lane,rye,12", "5 fields where the header has 6"),
    ("2026-01-05,north,Mill Lane,rye,12,55.20,extra", "7 fields where the header has 6"),
    ("2026-01-05,north,Mill Lane,rye,-3,55.20", "units '-3'"),
    ("2026-01-05,north,Mill Lane,rye,12,55.205", "revenue '55.205'"),
    ("2026-01-05,north,Mill Lane,rye,12,NaN", "revenue 'NaN'"),
    ("2026-01-05,north,Mill Lane,rye,12,1e999999", "revenue '1e999999'"),
    ("2026-01-05,north,Mill Lane,rye,12,", "revenue ''"),
    ("2026-13-05,north,Mill Lane,rye,12,55.20", "date '2026-13-05'"),
])
def test_a_bad_row_fails_its_shard_naming_the_line(tmp_path: Path, row: str,
                                                  problem: str) -> None:
    good = "2026-01-04,south,Quayside,baguette,10,24.00"
    path = write_shard(tmp_path / "s.csv", good, row)
    with pytest.raises(da.ShardError, match=rf"^s\.csv line 3: .*{re.escape(problem)}"):
        da.summarise_shard(path)


def test_a_shard_without_a_column_and_an_empty_one(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.csv", "2026-01-04,south,10", header="date,region,units")
    with pytest.raises(da.ShardError, match="no column store, product, revenue"):
        da.summarise_shard(path)
    empty = da.summarise_shard(write_shard(tmp_path / "e.csv"))
    assert (empty["rows"], empty["revenue_cents"], empty["by_region"]) == (0, 0, {})
    assert da.merge_summaries([empty])["min_sale_cents"] is None


def test_how_a_shard_is_encoded_and_quoted(tmp_path: Path) -> None:
    good = "2026-01-04,south,Quayside,baguette,10,24.00"
    exported = tmp_path / "bom.csv"  # a spreadsheet's UTF-8 export starts with a BOM
    exported.write_bytes(b"\xef\xbb\xbf" + (",".join(da.COLUMNS) + "\n" + good).encode())
    assert da.summarise_shard(str(exported))["revenue_cents"] == 2400
    latin = tmp_path / "latin.csv"
    latin.write_bytes((",".join(da.COLUMNS) + "\n2026-01-04,south,Caf\xe9,rye,1,4.60\n")
                      .encode("latin-1"))
    not_utf8 = r"^latin\.csv line 2: not UTF-8 text \(byte 60 is 0xe9\)"
    with pytest.raises(da.ShardError, match=not_utf8):
        da.summarise_shard(str(latin))
    quoted = write_shard(tmp_path / "q.csv", good, '2026-01-05,"north,Mill Lane,rye,2,9.20')
    with pytest.raises(da.ShardError, match=r"^q\.csv line 3: unexpected end of data"):
        da.summarise_shard(quoted)
    stray = write_shard(tmp_path / "s.csv", good, '2026-01-05,"north"x,Mill Lane,rye,2,9.20',
                        good)
    with pytest.raises(da.ShardError, match=r"^s\.csv line 3: ',' expected after '\"'"):
        da.summarise_shard(stray)


def test_merging_is_the_same_in_any_order_and_names_what_is_missing(tmp_path: Path) -> None:
    a = da.summarise_shard(write_shard(tmp_path / "a.csv",
                                       "2026-01-04,south,Quayside,baguette,10,24.00",
                                       "2026-01-05,north,Mill Lane,rye,2,9.20"))
    b = da.summarise_shard(write_shard(tmp_path / "b.csv",
                                       "2026-02-01,south,Quayside,rye,1,4.60"))
    both = da.merge_summaries([a, b], shards=[str(tmp_path / n) for n in ("a.csv", "b.csv")])
    assert both == da.merge_summaries([b, a], shards=[str(tmp_path / "b.csv"),
                                                     str(tmp_path / "a.csv")])
    assert both["revenue_cents"] == 2400 + 920 + 460
    assert both["by_region"]["south"] == {"rows": 2, "units": 11, "revenue_cents": 2860,
                                          "min_sale_cents": 460, "max_sale_cents": 2400}
    assert both["shards_missing"] == []
    assert da.merge_summaries([a], shards=[str(tmp_path / "a.csv"),
                                           str(tmp_path / "b.csv")])["shards_missing"] == ["b.csv"]
    assert da.merge_summaries([])["rows"] == 0


def test_own_shards_and_a_folder_that_is_not_there(tmp_path: Path) -> None:
    write_shard(tmp_path / "one.csv", "2026-01-04,south,Quayside,baguette,10,24.00")
    result = shoal.run_sync(da_plan.build_plan(str(tmp_path), str(tmp_path / "r.md")))
    assert result.ok
    assert result["totals"].value["revenue_cents"] == 2400
    missing = shoal.run_sync(da_plan.build_plan(str(tmp_path / "nope"), str(tmp_path / "r.md")))
    assert missing["shards"].error is not None
    assert "no folder" in missing["shards"].error.message
    assert missing["report"].status == "skipped"


def test_an_unusable_model_is_one_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.data_aggregation.__main__ import main as da_main
    from examples.market_research.__main__ import main as mr_main

    assert da_main(["--model", "bogus"]) == 2
    assert mr_main(["--model", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("--model bogus: unknown model 'bogus'") == 2
    assert "Traceback" not in err


# --- market research -------------------------------------------------------------------------

class MarketTeam(TypedDict):
    """The example's three agents, by their keyword in ``build_plan``."""

    analyst: shoal.Agent[str]
    writer: shoal.Agent[str]
    critic: shoal.Agent[str]


def market_team(critic_says: list[str], drafts: list[str], latency: float = 2.0
                ) -> MarketTeam:
    """The example's agents on scripted models: analysts by profile, writer and critic in turn."""
    analysts = ScriptedModel.per_prompt(
        {mr.profile_text(c): [note] for c, note in NOTES.items()}, latency=latency)
    return {"analyst": dataclasses.replace(mr_agents.analyst, model=analysts),
            "writer": dataclasses.replace(mr_agents.writer,
                                          model=ScriptedModel(drafts, latency=latency)),
            "critic": dataclasses.replace(mr_agents.critic,
                                          model=ScriptedModel(critic_says, latency=latency))}


def model_of(agent: object) -> ScriptedModel:
    assert isinstance(agent, shoal.Agent) and isinstance(agent.model, ScriptedModel)
    return agent.model


def run_market(tmp_path: Path, team: MarketTeam,
               **options: Any) -> shoal.RunResult:
    plan = market_plan(report_path=str(tmp_path / "market_report.md"), **team, **options)
    result = run_virtual(shoal.run(plan))
    for agent in team.values():
        model_of(agent).check()  # every scripted answer was asked for, none more
    return result


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, MarketTeam, shoal.RunResult]:
    cwd = tmp_path_factory.mktemp("market_research")
    team = market_team([FEEDBACK, ACCEPTED],
                       [DRAFT_1, DRAFT_2])
    return cwd, team, run_market(cwd, team)


def test_the_analysts_run_side_by_side(
        market: tuple[Path, MarketTeam, shoal.RunResult]) -> None:
    _, team, result = market
    assert result.ok, result.counts
    analysts = [result[f"analysts[{i}]"] for i in range(5)]
    assert [o.value for o in analysts] == [NOTES[c] for c in sorted(NOTES)]
    # all five were in flight together: one model turn (2 s) for the lot, not five
    assert max(started(o) for o in analysts) < min(finished(o) for o in analysts)
    assert all(finished(o) - started(o) == pytest.approx(2.0) for o in analysts)
    # 2 s of analysts, then four turns in a row (draft, review, draft, review)
    assert result.makespan == pytest.approx(2.0 + 4 * 2.0)
    # each analyst got exactly its own company's profile as its task
    prompts = sorted(prompt_of(r) for r in model_of(team["analyst"]).requests)
    assert prompts == sorted(mr.profile_text(c) for c in NOTES)


def test_the_critic_loop_revises_once_then_accepts(
        market: tuple[Path, MarketTeam, shoal.RunResult]) -> None:
    _, team, result = market
    review = result["review"].value
    assert isinstance(review, Reflection)
    assert (review.rounds, review.accepted, review.output) == (2, True, DRAFT_2)
    writer, critic = model_of(team["writer"]), model_of(team["critic"])
    first, second = (prompt_of(r) for r in writer.requests)
    # the brief carries the checklist, built from the companies' files
    for company in NOTES:
        facts = mr.company_facts(company)
        line = (f"- {facts['name']}: revenue {facts['revenue_2025_eur_m']:.1f} million euros "
                "in 2025")
        assert line in first
        assert line in prompt_of(critic.requests[0])  # the critic checks against it
        assert NOTES[company] in first  # and the writer has every analyst's note
    assert f"draft:\n{DRAFT_1}" in prompt_of(critic.requests[0])
    assert f"previous_draft:\n{DRAFT_1}" in second
    assert f"feedback:\n{FEEDBACK}" in second
    assert f"draft:\n{DRAFT_2}" in prompt_of(critic.requests[1])
    for request in [*writer.requests, *critic.requests]:  # one turn each, no history
        assert not any(isinstance(m, AssistantMessage) for m in request.messages)


def test_the_fact_check_and_the_report_come_from_the_data(
        market: tuple[Path, MarketTeam, shoal.RunResult]) -> None:
    cwd, _, result = market
    assert result["check"].value["complete"] is True
    text = (cwd / "market_report.md").read_text(encoding="utf-8")
    assert DRAFT_2 in text
    assert "*Draft 2, accepted by the critic. Fact check: every company and its revenue" in text
    for company in NOTES:
        lines = (mr.COMPANIES / f"{company}.md").read_text(encoding="utf-8").splitlines()
        fields = dict(line.split(": ", 1) for line in lines if re.match(r"^[a-z0-9_]+: ", line))
        before, now = float(fields["revenue_2024_eur_m"]), float(fields["revenue_2025_eur_m"])
        growth = (now - before) / before * 100
        name = lines[0].removeprefix("# ")
        assert f"| {name} | {now:.1f} | {growth:+.1f}% |" in text
        assert f"{name}: {NOTES[company]}" in text  # the analyst's note, under its company


def test_a_critic_that_never_accepts_stops_at_max_rounds(tmp_path: Path) -> None:
    team = market_team([FEEDBACK, "REVISE: the comparison of margins is missing."],
                       [DRAFT_1, DRAFT_1])
    result = run_market(tmp_path, team)
    review = result["review"].value
    assert (review.rounds, review.accepted, review.feedback) == (
        2, False, "REVISE: the comparison of margins is missing.")
    assert result["check"].value == {
        "complete": False, "missing": ["Quillon Bikes"],
        "companies": [{"company": mr.company_facts(c)["name"], "named": c != "quillon",
                       "revenue": c != "quillon"} for c in sorted(NOTES)]}
    text = (tmp_path / "market_report.md").read_text(encoding="utf-8")
    assert "*Draft 2, not accepted by the critic. Fact check: missing from the text: " \
           "Quillon Bikes.*" in text


def test_a_short_run_and_one_draft(tmp_path: Path) -> None:
    team = market_team(["ACCEPT"], [DRAFT_2])
    analysts = ScriptedModel.per_prompt({mr.profile_text("harbourline"): [NOTES["harbourline"]],
                                         mr.profile_text("larkspur"): [NOTES["larkspur"]]})
    team["analyst"] = dataclasses.replace(mr_agents.analyst, model=analysts)
    result = run_market(tmp_path, team, limit=2, max_rounds=1)
    assert result["companies"].value == ["harbourline", "larkspur"]
    assert result["review"].value.rounds == 1
    assert result["check"].value["complete"] is True  # the two it studied are in the draft


def test_analysts_over_budget_stop_the_report_not_the_facts(tmp_path: Path) -> None:
    team = market_team([ACCEPTED], [DRAFT_2])
    plan = market_plan(report_path=str(tmp_path / "market_report.md"), **team)
    result = run_virtual(shoal.run(plan, budget=shoal.Budget(requests=3)))
    analysts = [result[f"analysts[{i}]"] for i in range(5)]
    over = [o for o in analysts if not o.ok]
    assert over  # five analysts, three requests: some could not ask
    for outcome in over:
        assert outcome.error is not None
        assert outcome.error.type == "shoal.exceptions.BudgetExceeded"
    assert result["analysts"].status == "failed"
    for name in ("notes", "review", "check", "report"):
        assert result[name].status == "skipped", name
    assert result["facts"].ok and result["brief"].ok  # what needs no analyst still ran
    assert len(model_of(team["analyst"]).requests) <= 3
    assert model_of(team["writer"]).requests == []
    assert not (tmp_path / "market_report.md").exists()


def test_a_resumed_market_run_asks_no_model_again(tmp_path: Path) -> None:
    store = tmp_path / "journal.db"
    team = market_team([FEEDBACK, ACCEPTED], [DRAFT_1, DRAFT_2], latency=0.0)
    path = str(tmp_path / "market_report.md")
    first = shoal.Runtime(store=store).run_sync(market_plan(report_path=path, **team))
    assert first.ok
    silent = market_team([], [], latency=0.0)  # any request would be a ScriptError
    again_plan = market_plan(report_path=path, **silent)
    again = shoal.Runtime(store=store).resume_sync(first.run_id, again_plan)
    assert again.ok, again.counts
    assert all(model_of(a).requests == [] for a in silent.values())
    assert again["analysts"].value == [NOTES[c] for c in sorted(NOTES)]  # all five, in order
    assert again["review"].value.output == DRAFT_2
    # every node of the plan replays (a map whole, with every item's value)
    assert {o.node_id for o in again} >= {node.id for node in again_plan}


def test_check_report_reads_numbers_and_names_strictly() -> None:
    facts = [mr.company_facts("larkspur")]

    def complete(text: str) -> bool:
        return bool(run_virtual(mr.check_report(text, facts))["complete"])

    assert complete("LARKSPUR CARGO made EUR 52.5M.")
    assert complete("Larkspur Cargo: revenue 52.5 million euros.")
    assert not complete("Larkspur Cargo made 152.5 million euros.")
    assert not complete("Larkspur Cargo made 52.55 million euros.")
    assert not complete("Larkspur Cargos made 52.5 million euros.")
    assert not complete("Larkspur made 52.5 million euros.")


@pytest.mark.parametrize("value", ["", "nan", "inf", "-3", "12,5"])
def test_a_profile_with_a_bad_figure_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    text = mr.profile_text("quillon").replace("revenue_2025_eur_m: 6.1",
                                              f"revenue_2025_eur_m: {value}")
    (tmp_path / "quillon.md").write_text(text, encoding="utf-8")
    monkeypatch.setattr(mr, "COMPANIES", tmp_path)
    with pytest.raises(ValueError, match=r"^quillon\.md: revenue_2025_eur_m is missing or not "
                                         r"a number of 0 or more$"):
        mr.company_facts("quillon")


def test_company_tools() -> None:
    assert run_virtual(mr.list_companies()) == sorted(NOTES)
    assert run_virtual(mr.list_companies(limit=2)) == ["harbourline", "larkspur"]
    assert run_virtual(mr.read_company(" Quillon.md ")).startswith("# Quillon Bikes\n")
    known = re.escape("no company '../etc'; the companies are: harbourline")
    with pytest.raises(ValueError, match=known):
        mr.profile_text("../etc")
    facts = run_virtual(mr.key_facts(["voltaic"]))
    assert facts[0]["growth_pct"] == pytest.approx(51.6)
    assert facts[0]["main_risk"] == "three parcel carriers bring most of the revenue"
    with pytest.raises(ValueError, match="1 notes for 2 companies"):
        run_virtual(mr.collect_notes(run_virtual(mr.key_facts(["voltaic", "quillon"])),
                                     ["one"]))


def test_the_market_module_runs_as_documented(tmp_path: Path) -> None:
    # the documented command, every agent on one scripted model (tests/app_models.py)
    proc = run_module("examples.market_research", tmp_path, "--model", "tests.app_models:market")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "market_report.md"
    assert proc.stdout == (f"report: {report.resolve()} (draft 2, accepted by the critic; "
                           "fact check complete)\n")
    progress = proc.stderr.splitlines()
    for i in range(5):
        assert f"  analysts[{i}]: started" in progress
        assert any(line.startswith(f"  analysts[{i}]: ok after ") for line in progress)
    assert [line.split(":")[0].strip() for line in progress if "review/" in line] == [
        "review/writer#1", "review/writer#1", "review/critic#1", "review/critic#1",
        "review/writer#2", "review/writer#2", "review/critic#2", "review/critic#2"]
    assert DRAFT_2 in report.read_text(encoding="utf-8")


def shoal_run(target: str, task: str, cwd: Path, *args: str
              ) -> subprocess.CompletedProcess[str]:
    """``shoal run target task --json`` from ``cwd``, journaled there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(["run", target, task, "--json", *args], cwd=cwd, env=env, timeout=120)


def test_the_plan_file_maps_and_reduces_the_same(
        tmp_path: Path, aggregation: tuple[Path, shoal.RunResult]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = run_cli(["run", str(ROOT / "examples/data_aggregation/plan.yaml"), "--json"],
                   cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 1  # the May shard's call failed; every other node is ok
    outcomes = {o["node_id"]: o for o in json.loads(proc.stdout)["outcomes"]}
    assert [k for k, o in outcomes.items() if o["status"] != "ok"] == ["summaries[4]"]
    assert outcomes["totals"]["value"] == aggregation[1]["totals"].value  # as the Python plan
    assert (tmp_path / "sales_report.md").read_text(encoding="utf-8") == \
        outcomes["report"]["value"]


def test_shoal_run_takes_the_market_research_as_a_plan_function(tmp_path: Path) -> None:
    question = "Which maker is the safest bet?"
    proc = shoal_run(str(ROOT / "examples/market_research/plan.py") + ":research", question,
                     tmp_path, "--model", "tests.app_models:market")
    assert proc.returncode == 0, proc.stderr
    root = json.loads(proc.stdout)
    assert (root["agent"], root["status"], root["prompt"]) == ("research", "ok", question)
    report = (tmp_path / "market_report.md").read_text(encoding="utf-8")
    assert root["output"] == report  # the answer is the report, as written
    assert DRAFT_2 in report
    agents = sorted(child["lineage"] for child in root["children"])
    assert agents[:5] == [f"research/analysts[{i}]" for i in range(5)]
    assert root["usage"]["requests"] == 5 + 4  # five analysts, two drafts, two reviews
    brief = next(c for c in root["calls"] if c["lineage"] == "research/brief")
    assert brief["status"] == "ok"


def test_shoal_run_takes_the_aggregation_and_counts_the_bad_shard(tmp_path: Path) -> None:
    proc = shoal_run(str(ROOT / "examples/data_aggregation/plan.py") + ":aggregate",
                     "Which region sells most?", tmp_path, "--model",
                     "tests.app_models:commentary")
    # every node must succeed for shoal run: the May shard did not, so the exit code is 1,
    # and the report of the seven others is written all the same
    assert proc.returncode == 1
    root = json.loads(proc.stdout)
    assert root["status"] == "failed"
    assert "summaries[4] failed" in root["error"]["message"]
    report = (tmp_path / "sales_report.md").read_text(encoding="utf-8")
    assert COMMENTARY in report
    assert f"`{BAD_SHARD}`" in report


def test_the_commentary_through_the_module(tmp_path: Path) -> None:
    proc = run_module("examples.data_aggregation", tmp_path, "--model",
                      "tests.app_models:commentary")
    assert proc.returncode == 0, proc.stderr
    assert COMMENTARY in (tmp_path / "sales_report.md").read_text(encoding="utf-8")


def test_a_model_outage_is_reported_without_a_report(tmp_path: Path) -> None:
    proc = run_module("examples.market_research", tmp_path, "--model", "tests.app_models:down",
                      "--companies", "2")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    for i in range(2):
        assert f"analysts[{i}]: failed: model 'scripted': the service is down (HTTP 503)" in lines
    assert lines[-1].startswith("no report: needs ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "market_report.md").exists()


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--companies", "-1"], ["--rounds", "x"]])
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    proc = run_module("examples.market_research", tmp_path, *args)
    assert proc.returncode == 2
    assert "is not a whole number, 1 or more" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- on the local model ------------------------------------------------------------------


def _local_model_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (the local extra)"
    from shoal.exceptions import MissingDependencyError
    from shoal.models.local import LocalModelServer

    try:
        LocalModelServer()  # checks the packages and the model file; starts nothing
    except MissingDependencyError as exc:
        return str(exc)
    return None


LOCAL_MISSING = _local_model_missing()


@ONE_AT_A_TIME  # the local model
@pytest.mark.skipif(LOCAL_MISSING is not None, reason=str(LOCAL_MISSING))
@pytest.mark.timeout(600)  # the local model's runs may take their whole 600 s on a loaded machine
def test_both_examples_run_on_the_local_model(tmp_path: Path) -> None:
    # one commentary request, then one analyst, one draft and one review: four in all
    # a model server to start and a small model on a busy machine: minutes, not seconds.
    # The two programs run at once, each with its own server (each server takes half the
    # cores), in folders of their own.
    (tmp_path / "data").mkdir()
    (tmp_path / "market").mkdir()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        data_run = pool.submit(run_module, "examples.data_aggregation", tmp_path / "data",
                               "--model", "local", timeout=600)
        market_run = pool.submit(run_module, "examples.market_research", tmp_path / "market",
                                 "--companies", "1", "--rounds", "1", timeout=600)
        data, market = data_run.result(), market_run.result()
    assert data.returncode == 0, data.stderr
    report = (tmp_path / "data" / "sales_report.md").read_text(encoding="utf-8")
    commentary = report.split("\n\n")[2]
    assert commentary.strip() and not commentary.startswith(("**Not included", "## By"))
    assert market.returncode == 0, market.stderr
    assert "analysts[0]: ok" in market.stderr
    text = (tmp_path / "market" / "market_report.md").read_text(encoding="utf-8")
    assert "| Harbourline Mobility | 30.1 | -9.3% |" in text
    assert "## Analysts' notes\n\nHarbourline Mobility: " in text
