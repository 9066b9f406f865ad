"""``python -m tests.hostile_exec_s38_lowered CHANGE``: a call lowers what only privilege raises.

``CHANGE`` is ``hard_file_limit`` or ``priority``: one call lowers it on its worker (of a pool
of one), the next opens 100 files; prints what each saw, as JSON. Run by
:mod:`tests.test_hostile_exec_s38` without the capabilities that would raise it again.
"""

from __future__ import annotations

import json
import sys

import shoal
from shoal import Plan
from tests import hostile_exec_s38_tools as st

plan = Plan()
first = (plan.call(st.lower_limits, hard=True) if sys.argv[1] == "hard_file_limit"
         else plan.call(st.lower_priority))
after = plan.call(st.open_files_and_priority, count=100, after=[first])
result = shoal.run_sync(plan, process_workers=1, store=None)
print(json.dumps({"first": [result[first].status, result[first].value],
                  "after": [result[after].status, result[after].value or str(
                      result[after].error)]}))
