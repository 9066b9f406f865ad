"""The site report example, end to end through the CLI, plus its tools on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "site_report"
PAGES = ("/index.html", "/about.html", "/pricing.html",
         "/blog/night-paddles.html", "/blog/spring-birds.html",
         "/blog/beginner-course.html")


def run_example(plan: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a plan of the example from ``cwd`` (outputs land there), tools found via PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shoal.cli.app", "run", str(EXAMPLE / plan),
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def by_id(stdout: str) -> dict[str, dict[str, Any]]:
    return {o["node_id"]: o for o in json.loads(stdout)["outcomes"]}


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cwd = tmp_path_factory.mktemp("site_report")
    proc = run_example("plan.yaml", cwd, "--json")
    assert proc.returncode == 0, proc.stderr
    return cwd, by_id(proc.stdout)


def test_every_node_is_ok(report_run: tuple[Path, dict[str, Any]]) -> None:
    _, outcomes = report_run
    assert len(outcomes) == 16
    assert {o["status"] for o in outcomes.values()} == {"ok"}


def test_the_report_has_real_content(report_run: tuple[Path, dict[str, Any]]) -> None:
    cwd, outcomes = report_run
    report = cwd / "site_report.md"
    assert outcomes["report"]["value"]["path"] == str(report.resolve())
    text = report.read_text()
    assert text.startswith("# Site report: http://127.0.0.1:")
    for page in PAGES:
        assert f"`{page}`" in text
    assert "Tidewater Kayaks" in text  # a page title, so the HTML really was fetched and parsed
    assert "## traffic.csv: visits" in text
    assert "| explorer |" in text  # a group total from bookings.csv
    assert "https://www.example.org/tide-tables" in text  # an external link found on a page
    assert "this text is not counted" not in text  # script text is not content


def test_the_fetches_overlap(report_run: tuple[Path, dict[str, Any]]) -> None:
    _, outcomes = report_run
    fetches = [o for o in outcomes.values() if o["tool"] == "fetch"]
    assert len(fetches) == 6
    # all six were in flight together: some moment lies inside every interval
    assert max(o["started_at"] for o in fetches) < min(o["finished_at"] for o in fetches)


def test_plain_run_prints_the_table(tmp_path: Path) -> None:
    proc = run_example("plan.yaml", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "16 nodes: 16 ok" in proc.stdout
    assert (tmp_path / "site_report.md").exists()


def test_broken_plan_keeps_siblings_and_skips_dependents(tmp_path: Path) -> None:
    proc = run_example("broken_plan.yaml", tmp_path, "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    outcomes = by_id(proc.stdout)
    missing = outcomes["fetch_missing"]
    assert missing["status"] == "failed"
    assert missing["attempts"] == 1  # an HTTP error is not retried
    assert "404" in missing["error"]["message"]
    for sibling in ("serve", "fetch_home", "stats_home", "traffic"):
        assert outcomes[sibling]["status"] == "ok", sibling
    for dependent in ("stats_missing", "report"):
        assert outcomes[dependent]["status"] == "skipped"
        assert "fetch_missing" in outcomes[dependent]["reason"]
    assert not (tmp_path / "broken_report.md").exists()


def test_the_fixture_server_is_started_once() -> None:
    from examples.site_report import tools

    first = tools.serve_fixtures(latency=0.0)
    assert tools.serve_fixtures(latency=0.0) == first
    with urllib.request.urlopen(first["url"] + "/index.html", timeout=5) as response:
        assert b"Tidewater Kayaks" in response.read()


def test_page_stats_and_csv_stats() -> None:
    from examples.site_report import tools

    page: dict[str, Any] = {"url": "http://127.0.0.1:1/a.html", "path": "/a.html", "bytes": 0,
            "body": "<title>T</title><p>Kayak kayak tour</p><script>x y z</script>"
                    "<a href='b.html'>b</a><a href='https://example.org/x'>x</a>"}
    stats = tools.page_stats(page)
    assert stats["title"] == "T"
    assert stats["words"] == 5  # kayak, kayak, tour and the link texts b, x
    assert stats["top_words"][0] == ("kayak", 2)
    assert stats["internal_links"] == ["/b.html"]
    assert stats["external_links"] == ["https://example.org/x"]
    assert tools.count_words(page["body"], top=1) == {"words": 5, "top_words": [("kayak", 2)]}
    table = tools.csv_stats("bookings.csv", "amount", by="tour")
    assert table["rows"] == 60
    assert sum(total for _, total in table["groups"]) == pytest.approx(table["total"])


def test_the_example_runs_unchanged_on_the_process_backend(tmp_path: Path) -> None:
    # `shoal run --executor process`: the same plan, every call in a worker process
    proc = run_example("plan.yaml", tmp_path, "--json", "--executor", "process")
    assert proc.returncode == 0, proc.stderr
    outcomes = by_id(proc.stdout)
    assert {o["status"] for o in outcomes.values()} == {"ok"}
    assert {o["executor"] for o in outcomes.values()} == {"process"}
    assert (tmp_path / "site_report.md").read_text().count("\n") > 10
