"""A hierarchical literature review for the CLI's tests: a lead and reader subagents.

The lead's model chooses the fan-out (one reader subagent per paper, all in one turn), which a
hosted model does well and a 135M local model does not: the main job
(``examples/literature_review/agents.py:review``) keeps that structure in the program instead.
The tests drive this one with a scripted model, over the example's papers.
"""

from __future__ import annotations

import re
from pathlib import Path

import shoal

PAPERS = Path(__file__).resolve().parent.parent / "examples" / "literature_review" / "papers"


def _paper(paper_id: str) -> Path:
    # Lenient on purpose: small models write "paper p3", "P3" or "p3.md" for "p3".
    found = re.search(r"p\d+", paper_id.lower())
    path = PAPERS / f"{found.group(0) if found else '?'}.md"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PAPERS.glob("*.md")))
        raise ValueError(f"no paper {paper_id!r}; the papers are: {known}")
    return path


@shoal.tool(timeout=5)
def list_papers() -> list[dict[str, str]]:
    """List the papers in the collection: id, title, year and topic of each."""
    found = []
    for path in sorted(PAPERS.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        fields = dict(line.split(": ", 1) for line in lines[1:3])
        found.append({"id": path.stem, "title": lines[0].lstrip("# "), **fields})
    return found


@shoal.tool(timeout=5, reads="paper:{paper_id}")
def read_paper(paper_id: str) -> str:
    """Read the full text of one paper.

    Args:
        paper_id: the paper's id, such as "p1" (list_papers gives them).
    """
    return _paper(paper_id).read_text(encoding="utf-8")


@shoal.tool(timeout=5)
def search_papers(query: str) -> list[str]:
    """Find papers whose text mentions every word of the query; returns their ids.

    Args:
        query: one or more words, e.g. "retry".
    """
    words = [w.lower() for w in query.split()]
    return [p.stem for p in sorted(PAPERS.glob("*.md"))
            if all(w in p.read_text(encoding="utf-8").lower() for w in words)]


reader = shoal.Agent(
    name="reader",
    model="local",
    description="reads one paper (give its id, e.g. 'p3') and summarises its findings",
    instructions=("You summarise one research paper. Call read_paper with the paper id from "
                  "the task, then answer with two sentences: the paper's main finding and "
                  "its key number."),
    tools=[read_paper],
    max_turns=3,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=150),
)

lead = shoal.Agent(
    name="lead",
    model="local",
    instructions=("You write short literature reviews. The papers are p1, p2, p3, p4, p5 and p6. "
                  "Call the reader tool once for every paper, all in one reply, with the paper "
                  "id as the task. Then write a review of one paragraph that cites the papers "
                  "by id."),
    subagents=[reader],
    max_turns=4,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=400, parallel_tool_calls=True),
    budget=shoal.Budget(subagents=8, depth=1, fan_out=8, tokens=200_000, wall_clock=600),
)
