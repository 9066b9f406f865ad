"""The main job: a literature review of the shipped papers, on the local model by default.

The structure is the program's, and the model's part is what a small model can do well:

1. ``list_papers`` lists the papers (id, title, year, topic and text);
2. a ``reader`` agent is mapped over them: one reader per paper, all side by side, and each
   reader's task carries its paper, so the model only has to summarise the text in front of
   it;
3. the ``lead`` agent writes a short synthesis from the six summaries;
4. ``compile_review`` lays out the review: every paper with its reader's summary, then the
   synthesis.

Run it (the ``local`` extra; ``--model openai:gpt-4.1-mini`` for a hosted model)::

    shoal run examples/literature_review/agents.py:review "What makes agent runs fast and safe?"

The exit code is 0 only when every paper was read and the review written: a reader that
failed leaves its outcome in the run (``--json``), the review is not written, and the exit
code is 1. ``lead`` and ``reader`` are ordinary agents: ``read_paper`` and ``search_papers``
are there for agents of your own. The papers are short made-up abstracts written for this
example.
"""

from __future__ import annotations

import re
from pathlib import Path

import shoal

PAPERS = Path(__file__).parent / "papers"
READER_QUESTION = "What is the main finding of this paper?"


def _paper(paper_id: str) -> Path:
    # Lenient on purpose: small models write "paper p3", "P3" or "p3.md" for "p3".
    found = re.search(r"p\d+", paper_id.lower())
    path = PAPERS / f"{found.group(0) if found else '?'}.md"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PAPERS.glob("*.md")))
        raise ValueError(f"no paper {paper_id!r}; the papers are: {known}")
    return path


def _parse(path: Path) -> dict[str, str]:
    """A paper file: a ``# title`` line, ``key: value`` lines, a blank line, the text."""
    head, _, body = path.read_text(encoding="utf-8").partition("\n\n")
    lines = head.splitlines()
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return {"id": path.stem, "title": lines[0].lstrip("# ").strip(), **fields,
            "text": " ".join(body.split())}


@shoal.tool(timeout=5)
def list_papers() -> list[dict[str, str]]:
    """List the papers in the collection: id, title, year, topic and text of each."""
    return [_parse(path) for path in sorted(PAPERS.glob("*.md"))]


@shoal.tool(timeout=5)
def reading_tasks(papers: list[dict[str, str]]) -> list[str]:
    """One reader's task per paper: the paper itself, then the question about it.

    Args:
        papers: the papers, as ``list_papers`` gives them.
    """
    # The question comes after the paper: a small model then answers from the text just read
    # (asked first, it tends to describe an imagined paper of the same title).
    return [f"{p['title']}\n\n{p['text']}\n\n{READER_QUESTION}" for p in papers]


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


@shoal.tool(timeout=5)
def compile_review(question: str, papers: list[dict[str, str]], summaries: list[str],
                   synthesis: str) -> str:
    """The review: the question, each paper with its summary, then the synthesis.

    Args:
        question: what the review answers.
        papers: the papers, in the order they were read.
        summaries: one summary per paper, in the same order.
        synthesis: the lead's paragraph over all the summaries.
    """
    if len(summaries) != len(papers):
        raise ValueError(f"{len(summaries)} summaries for {len(papers)} papers")
    lines = [f"Review: {question}", "", "Papers:"]
    for paper, summary in zip(papers, summaries, strict=True):
        lines.append(f"- [{paper['id']}] {paper['title']} ({paper.get('year', 'n.d.')}): "
                     f"{' '.join(summary.split())}")
    lines += ["", "Synthesis:", synthesis.strip()]
    return "\n".join(lines)


reader = shoal.Agent(
    name="reader",
    model="local",
    description="summarises the research paper given in its task",
    instructions=("You summarise research papers. Repeat the paper's main finding in one "
                  "sentence, using the paper's own words and numbers."),
    max_turns=2,
    settings=shoal.ModelSettings(temperature=0.0, max_tokens=80),
)

lead = shoal.Agent(
    name="lead",
    model="local",
    description="writes a short synthesis of paper summaries",
    instructions=("You write short literature reviews. You are given a question and the "
                  "summaries of several papers. Answer with one paragraph of three or four "
                  "sentences that answers the question from the summaries."),
    max_turns=2,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=160),
)


def review(question: str) -> shoal.Plan:
    """The review as a plan: list, read every paper side by side, synthesise, compile."""
    plan = shoal.Plan("literature review")
    papers = plan.call(list_papers)
    tasks = plan.call(reading_tasks, papers=papers)
    summaries = plan.map(reader, over=tasks)
    synthesis = plan.call(lead, task=question, summaries=summaries)
    plan.call(compile_review, question=question, papers=papers, summaries=summaries,
              synthesis=synthesis, node_id="answer")
    return plan
