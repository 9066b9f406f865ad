r"""The ``shoal runs`` table shows run ids as ``shoal runs --json`` does: apart.

Before, the table escaped each id for the terminal alone: a run id holding the byte 0xff (read
as the lone surrogate U+DCFF) and one holding that surrogate both showed ``r\udcff``, and the
run whose id is the six characters ``\udcff`` showed so too. Each now shows as JSON shows it,
which names it to ``shoal show``.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_hostile_journal_s36 import shoal_cli
from tests.test_run_ids_shown_apart_s40 import three_runs


def _rows(tmp_path: Path) -> dict[str, str]:
    """Each run's name (the plan column) -> its id as the table shows it."""
    proc = shoal_cli("runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = line.split()
        if cells and cells[-1] in ("literal", "surrogate", "byte"):
            rows[cells[-1]] = cells[0]
    return rows


def test_the_runs_table_shows_a_byte_a_surrogate_and_their_escape_apart(
        tmp_path: Path) -> None:
    three_runs(tmp_path)
    rows = _rows(tmp_path)
    assert rows == {"literal": "r\\\\udcff", "surrogate": "r\\udcff", "byte": "r\\xff"}, rows
    for name, shown in rows.items():
        proc = shoal_cli("show", shown, cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr)
        assert f"run {shown} " in proc.stdout, proc.stdout  # its head, shown so too
