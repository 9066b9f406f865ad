"""Tools of tests/test_hostile_journal_s38.py, imported by the ``shoal`` processes it starts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import shoal


@shoal.tool(retries=2)
def speak(i: int, folder: str) -> int:
    """Print a line (the first at once, the rest once ``folder/closed`` exists); return ``i``.

    Each call that runs notes it in ``folder/ran`` (retries would run it again).
    """
    with open(Path(folder) / "ran", "a", encoding="utf-8") as ran:
        ran.write(f"{i}\n")
    while i and not os.path.exists(Path(folder) / "closed"):
        time.sleep(0.02)
    print(f"call {i} speaks", flush=True)
    print(f"call {i} warns", file=sys.stderr, flush=True)
    return i
