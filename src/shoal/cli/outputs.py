"""Files the command line writes besides its output: never a journal.

``shoal show RUN --html FILE`` writes a timeline page over ``FILE`` and ``shoal run --events
FILE`` appends JSON lines to it. Given the journal's name by a slip (``--html runs.db``), the
page replaced the journal, every run in it lost; JSON lines appended to a journal or its
``-wal`` file are lost at its next write, and could be read as its pages. So a file that is a
SQLite database (any journal, not only the one the command reads), or one of the files SQLite
keeps beside the journal, is refused, saying why; so is the run's own plan file. And
``--html`` writes only over a timeline page (or an empty file): ``--html tools.py`` replaced
the tools with the page, saying nothing; ``--force`` writes over any file but the plan.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SQLITE_HEADER", "is_stdout", "journal_clash", "page_clash", "plan_clash"]

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

# what SQLite keeps beside a database: its write-ahead log, shared memory, rollback journal
_BESIDE = ("-wal", "-shm", "-journal")


def journal_clash(path: Path, journal: Path | None, what: str) -> str:
    """Why ``path`` must not be written (``''``: it may); ``journal`` is the store's file.

    ``what`` says the writing, as in "writing the timeline page there".
    """
    if journal is not None and _same(path, journal, ""):
        return f"{str(path)!r} is the journal: {what} would destroy it; name another file"
    for suffix in _BESIDE:
        beside = str(path).endswith(suffix) and _is_database(_strip(path, suffix))
        if beside or (journal is not None and _same(path, journal, suffix)):
            return (f"{str(path)!r} is the {suffix} file SQLite keeps beside a journal: "
                    f"{what} would damage it; name another file")
    if _is_database(path):
        return (f"{str(path)!r} is a SQLite database (a journal?): {what} would destroy "
                "it; name another file")
    return ""


def plan_clash(path: Path, plan: str | os.PathLike[str] | None, what: str,
               called: str = "the run's plan file") -> str:
    """Why ``path`` must not be written as it is the run's plan file ``plan`` (``''``: not).

    ``called`` says what ``plan`` is (the file defining an agent, say).
    """
    if plan is not None and str(plan) and _same(path, Path(plan), ""):
        return f"{str(path)!r} is {called}: {what} would destroy it; name another file"
    return ""


# how every timeline page begins, and what its head holds (see shoal.timeline.html)
_PAGE_START, _PAGE_TITLE = b"<!DOCTYPE html>", b"<title>shoal timeline</title>"


def page_clash(path: Path) -> str:
    """Why the timeline page must not be written over ``path`` without ``--force`` (or ``''``).

    Only an existing regular file that holds something other than a timeline page is
    refused: a new file, an empty one, a page written before, a FIFO or ``/dev/stdout`` are
    written.
    """
    try:
        if not path.is_file():
            return ""
        with open(path, "rb") as file:
            head = file.read(1024)
    except (OSError, ValueError):  # unreadable: writing it says why
        return ""
    if not head or (head.startswith(_PAGE_START) and _PAGE_TITLE in head):
        return ""
    return (f"{str(path)!r} exists and is not a shoal timeline page: name another file, or "
            "give --force to write the page over it")


def _same(path: Path, journal: Path, suffix: str) -> bool:
    """Whether ``path`` names the file ``journal`` + ``suffix``, whether or not it exists."""
    other = Path(f"{journal}{suffix}")
    try:
        if path.exists() and other.exists():
            return os.path.samefile(path, other)
        return os.path.realpath(path) == os.path.realpath(other)
    except (OSError, ValueError):  # a name no file system takes: writing it says why
        return False


def _strip(path: Path, suffix: str) -> Path:
    """``path`` without ``suffix`` (``path`` itself when it does not end so)."""
    name = str(path)
    return Path(name[:-len(suffix)]) if name.endswith(suffix) else path


def _is_database(path: Path) -> bool:
    """Whether ``path`` is a regular file that begins as a SQLite database does."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except (OSError, ValueError):  # unreadable: not known to be one; writing it says why
        return False


def is_stdout(path: Path) -> bool:
    """Whether ``path`` names the file standard output is (``/dev/stdout``, its pipe, ...)."""
    try:
        named, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError):  # no such file yet, or no standard output: not it
        return False
    return (named.st_dev, named.st_ino) == (out.st_dev, out.st_ino)
