"""The agents of the market research example: analysts, a writer and a critic.

Each has a small part, small enough for the local model: an analyst turns one company's
profile into a note of a few sentences; the writer turns the notes into a report; the critic
compares a draft with the checklist it is given and answers ``ACCEPT`` or what is missing.
The structure (one analyst per company, all at once; the writer and critic in a loop of at
most two drafts) is the plan's (:mod:`examples.market_research.plan`), not the models'.
"""

from __future__ import annotations

import shoal

__all__ = ["analyst", "critic", "writer"]

analyst = shoal.Agent(
    name="analyst",
    model="local",
    description="turns one company's profile into a short analyst's note",
    instructions=("You are a market analyst. You are given the profile of one company. Write "
                  "a note of two or three sentences: what the company sells and to whom, how "
                  "its revenue changed from 2024 to 2025, and its main risk. Use only facts "
                  "from the profile."),
    max_turns=1,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=160),
)

writer = shoal.Agent(
    name="writer",
    model="local",
    description="writes a market report from analysts' notes",
    instructions=("You write short market reports. You are given the task with a checklist "
                  "and the analysts' notes. Write three short paragraphs that compare the "
                  "companies. Name every company in the checklist with its 2025 revenue, "
                  "written exactly as in the checklist. When you are also given a previous "
                  "draft and feedback, rewrite the draft to fix what the feedback says."),
    max_turns=1,
    settings=shoal.ModelSettings(temperature=0.3, max_tokens=500),
)

critic = shoal.Agent(
    name="critic",
    model="local",
    description="checks a draft report against its checklist",
    instructions=("You check a draft report against the checklist in the task. For each "
                  "company in the checklist, look for its name and its 2025 revenue number in "
                  "the draft. If all are there, answer ACCEPT. Otherwise answer REVISE, then "
                  "name each company or number that is missing."),
    max_turns=1,
    settings=shoal.ModelSettings(temperature=0.0, max_tokens=120),
)
