"""Old names kept for one release: each use warns with the name that replaced it.

A renamed keyword or attribute stays accepted so that existing programs keep working, and says
once per place of use (Python's default warning filter) what to write instead.
"""

from __future__ import annotations

import warnings

__all__ = ["renamed"]


def renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``.

    ``stacklevel`` is counted from the caller of this function: the default, 3, points the
    warning at whoever called the function that calls this one (the user's line).
    """
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)
