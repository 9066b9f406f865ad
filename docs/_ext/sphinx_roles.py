"""A Griffe extension for the API pages: Sphinx roles in docstrings become inline code.

shoal's docstrings name other objects the Sphinx way (``:class:`~shoal.outcome.RunResult```,
``:func:`run```, ``:meth:`Plan.call```). mkdocstrings reads docstrings as Markdown, where a
role would show as the literal text ``:class:`` before the name; this turns each role into
the name as code, shortened as Sphinx shortens it (``~a.b.C`` shows ``C``, ``title <a.b>``
shows ``title``). mkdocs.yml loads it for the ``python`` handler.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|const|type):`([^`]+)`")


def shown(target: str) -> str:
    """What a role's target shows as: its title, or the name (the last part after ``~``)."""
    titled = re.fullmatch(r"\s*(.+?)\s*<[^<>]+>\s*", target)
    if titled:
        return titled.group(1)
    name = target.strip().lstrip("!")
    return name[1:].rsplit(".", 1)[-1] if name.startswith("~") else name


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by its name as Markdown code."""
    return ROLE.sub(lambda found: f"`{shown(found.group(1))}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring as it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        """Called for every object Griffe loads: rewrite its docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
