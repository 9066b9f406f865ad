"""A tool whose module takes ``SHOAL_S38_SLOW_IMPORT`` seconds to import where that is set.

As a module that connects to a server, or takes a lock, as it is imported: the test imports
it without the variable, and its worker processes import it with it.
"""

from __future__ import annotations

import os
import time

from shoal.tools import tool

time.sleep(float(os.environ.get("SHOAL_S38_SLOW_IMPORT", "0")))


@tool(isolation="process", timeout=1)
def after_a_slow_import() -> int:
    """The worker's pid (a call given a timeout of 1 s)."""
    return os.getpid()
