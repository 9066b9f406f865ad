"""A module that takes long to import: a template preloading it stays in its imports.

For the tests of a template whose parent dies before it is ready (``SLOW_IMPORT`` seconds).
"""

import os
import time

time.sleep(float(os.environ.get("SLOW_IMPORT", "30")))
