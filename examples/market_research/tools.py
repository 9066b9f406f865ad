"""Tools of the market research example, importable as ``examples.market_research.tools``.

The shipped data is one markdown profile per company in ``companies/``: a heading with the
company's name, ``key: value`` lines (revenue, margin, main risk ...) and prose sections on
products, customers and risks. The companies are made up for this example.

``list_companies`` and ``read_company`` give the analysts their input; ``key_facts`` reads the
numbers (growth is computed here, never by a model); ``writing_brief`` makes the task the
writer and the critic share, with the checklist the critic checks drafts against;
``collect_notes`` puts the analysts' notes under their companies' names; ``check_report``
checks the final report against the facts without a model; ``save_report`` writes it all.

The tools are ``async`` (they only read small files), so the whole example runs on the event
loop, and on a virtual clock in tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import shoal

__all__ = [
    "COMPANIES", "DEFAULT_QUESTION", "check_report", "collect_notes", "company_facts",
    "company_ids", "key_facts", "list_companies", "profile_text", "read_company", "save_report",
    "writing_brief",
]

#: The shipped company profiles, one markdown file each.
COMPANIES = Path(__file__).resolve().parent / "companies"
_NUMBERS = ("revenue_2024_eur_m", "revenue_2025_eur_m", "gross_margin_pct")
#: The question a report answers when none is given.
DEFAULT_QUESTION = "How do these makers of electric cargo bikes compare?"


def company_ids(limit: int | None = None) -> list[str]:
    """The ids of the shipped companies, in alphabetical order (the first ``limit`` of them)."""
    found = sorted(p.stem for p in COMPANIES.glob("*.md"))
    return found if limit is None else found[:max(limit, 0)]


def _profile(company: str) -> Path:
    # Lenient on purpose: a company id written as "Quillon", "quillon.md" or " quillon ".
    stem = company.strip().lower().removesuffix(".md")
    path = COMPANIES / f"{stem}.md"
    if not re.fullmatch(r"[a-z0-9_-]+", stem) or not path.is_file():
        raise ValueError(f"no company {company!r}; the companies are: {', '.join(company_ids())}")
    return path


def profile_text(company: str) -> str:
    """The profile of one company, as written in its file."""
    return _profile(company).read_text(encoding="utf-8")


def company_facts(company: str) -> dict[str, Any]:
    """The key figures of one company's profile; ``growth_pct`` is computed from its revenue.

    Raises :class:`ValueError` naming the file when a figure is missing or not a number.
    """
    path = _profile(company)
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = dict(line.split(": ", 1) for line in lines[1:] if re.match(r"^[a-z_0-9]+: ", line))
    facts: dict[str, Any] = {"id": path.stem, "name": lines[0].lstrip("# ").strip(),
                             "headquarters": fields.get("headquarters", ""),
                             "main_risk": fields.get("main_risk", "")}
    for key in _NUMBERS:
        try:
            facts[key] = float(fields[key])
        except (KeyError, ValueError):
            facts[key] = math.nan
        if not math.isfinite(facts[key]) or facts[key] < 0:
            raise ValueError(f"{path.name}: {key} is missing or not a number of 0 or more")
    before, now = facts["revenue_2024_eur_m"], facts["revenue_2025_eur_m"]
    facts["growth_pct"] = round((now - before) / before * 100, 1) if before else None
    return facts


@shoal.tool(timeout=5)
async def list_companies(limit: int | None = None) -> list[str]:
    """The ids of the companies to study, in alphabetical order.

    Args:
        limit: study only the first this many (a short run on a slow model).
    """
    return company_ids(limit)


@shoal.tool(timeout=5, reads="company:{company}")
async def read_company(company: str) -> str:
    """The full profile of one company (figures, products, customers, risks).

    Args:
        company: the company's id, such as "quillon" (list_companies gives them).
    """
    return profile_text(company)


@shoal.tool(timeout=5)
async def key_facts(companies: list[str]) -> list[dict[str, Any]]:
    """The key figures of each company, in the order given.

    Args:
        companies: company ids (list_companies gives them).
    """
    return [company_facts(c) for c in companies]


def _fact_line(facts: dict[str, Any]) -> str:
    growth = facts["growth_pct"]
    change = "n/a" if growth is None else f"{growth:+.1f}%"
    return (f"- {facts['name']}: revenue {facts['revenue_2025_eur_m']:.1f} million euros in "
            f"2025 (2024: {facts['revenue_2024_eur_m']:.1f}; growth {change})")


@shoal.tool
async def writing_brief(facts: list[dict[str, Any]], question: str = DEFAULT_QUESTION) -> str:
    """The task of the report's writer and critic: the question, what to write, the checklist.

    Args:
        facts: results of key_facts.
        question: what the report answers.
    """
    names = ", ".join(f["name"] for f in facts)
    return "\n".join([
        f"Question: {' '.join(question.split()) or DEFAULT_QUESTION}",
        f"Write a short market report that answers it, on these makers of electric cargo "
        f"bikes: {names}. Compare their size, growth and main risks, using the analysts' "
        "notes.",
        "",
        "Checklist: the report must name every company below with its 2025 revenue, "
        "written exactly as here.",
        *[_fact_line(f) for f in facts],
    ])


@shoal.tool
async def collect_notes(facts: list[dict[str, Any]], notes: list[str]) -> str:
    """The analysts' notes, each under its company's name, as one text.

    Args:
        facts: results of key_facts, in the order of the notes.
        notes: the analysts' notes, one per company.
    """
    if len(facts) != len(notes):
        raise ValueError(f"{len(notes)} notes for {len(facts)} companies")
    return "\n\n".join(f"{f['name']}: {str(n).strip()}" for f, n in zip(facts, notes,
                                                                       strict=True))


def _names(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE) is not None


def _states(text: str, number: str) -> bool:
    # "52.5", "52.5M" and "EUR 52.5 million" state 52.5; "152.5" and "52.55" do not
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d|\.\d)", text) is not None


@shoal.tool
async def check_report(report: str, facts: list[dict[str, Any]]) -> dict[str, Any]:
    """Check a report against the facts without a model: every company named, with its revenue.

    ``complete`` is true when the report names every company and states its 2025 revenue
    as the checklist writes it (``52.5``); ``missing`` lists the companies that fall short.

    Args:
        report: the report's text.
        facts: results of key_facts.
    """
    rows = [{"company": f["name"], "named": _names(report, f["name"]),
             "revenue": _states(report, f"{f['revenue_2025_eur_m']:.1f}")} for f in facts]
    missing = [r["company"] for r in rows if not (r["named"] and r["revenue"])]
    return {"complete": not missing, "missing": missing, "companies": rows}


def _figures_table(facts: list[dict[str, Any]]) -> list[str]:
    lines = ["| company | revenue 2025 (EUR m) | growth | gross margin | main risk |",
             "|---|---:|---:|---:|---|"]
    for f in sorted(facts, key=lambda f: -f["revenue_2025_eur_m"]):
        growth = "n/a" if f["growth_pct"] is None else f"{f['growth_pct']:+.1f}%"
        lines.append(f"| {f['name']} | {f['revenue_2025_eur_m']:.1f} | {growth} | "
                     f"{f['gross_margin_pct']:.0f}% | {f['main_risk']} |")
    return lines


@shoal.tool(writes="file:{path}")
async def save_report(report: str, accepted: bool, rounds: int, check: dict[str, Any],
                      facts: list[dict[str, Any]], notes: str,
                      path: str = "market_report.md") -> str:
    """Write the market report, its key figures and the analysts' notes to ``path``.

    Returns the markdown it wrote.

    Args:
        report: the report's text (the reflect loop's last draft).
        accepted: whether the critic accepted it.
        rounds: how many drafts were written.
        check: the result of check_report.
        facts: results of key_facts.
        notes: the analysts' notes (collect_notes).
        path: where to write (relative paths start at the current directory).
    """
    verdict = "accepted by the critic" if accepted else "not accepted by the critic"
    checked = ("every company and its revenue are in the text" if check["complete"] else
               "missing from the text: " + ", ".join(check["missing"]))
    text = "\n".join(["# Market report: electric cargo bikes", "", report.strip(), "",
                      f"*Draft {rounds}, {verdict}. Fact check: {checked}.*", "",
                      "## Key figures", "", *_figures_table(facts), "",
                      "## Analysts' notes", "", notes.strip(), ""])
    _write(path, text)
    return text


def _write(path: str, text: str) -> None:
    """Write a report of a few kB in place, as the profiles above are read.

    Not on a thread: the tools stay pure asyncio so that the example runs on the virtual clock
    of :mod:`shoal.testing` too (work on a thread is invisible to that clock).
    """
    Path(path).write_text(text, encoding="utf-8")
