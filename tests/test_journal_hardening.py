"""The journal under hostile conditions: read-only files, odd lock folders, hostile text.

Every case runs the real ``shoal`` command in a subprocess on a real SQLite file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.exceptions import StoreError
from shoal.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


def shoal_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` in ``cwd``, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@shoal.tool
def echo(text: str) -> str:
    """Return ``text``."""
    return text


def journal_with_a_run(where: Path, run_id: str = "r1") -> Path:
    """A journal at ``where`` holding one finished run ``run_id``."""
    plan = shoal.Plan(name="p")
    plan.add(echo, {"text": "hi"}, node_id="a")
    path = where / "runs.db"
    assert shoal.Runtime(store=SQLiteStore(path)).run_sync(plan, run_id=run_id).ok
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder whose files can be read but not written (a read-only bind mount as root)."""
    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    journal_with_a_run(source)
    (source / "plan.yaml").write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    if os.geteuid() != 0:
        (source / "runs.db").chmod(0o444)
        source.chmod(0o555)
        yield source
        source.chmod(0o755)
        return
    mount = shutil.which("mount")
    done = mount and subprocess.run(
        [mount, "--bind", str(source), str(mounted)], capture_output=True, check=False)
    if not done or done.returncode:
        pytest.skip("cannot make a read-only folder here")
    try:
        if subprocess.run([mount, "-o", "remount,bind,ro", str(mounted)],  # type: ignore[list-item]
                          capture_output=True, check=False).returncode:
            pytest.skip("cannot remount read-only here")
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True, check=False)


def test_a_read_only_journal_is_listed_and_shown_and_refused_for_writing(
        read_only_dir: Path) -> None:
    store = str(read_only_dir / "runs.db")
    listed = shoal_cli("runs", "--store", store, "--json", cwd=read_only_dir)
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["r1"]
    shown = shoal_cli("show", "r1", "--store", store, "--json", cwd=read_only_dir)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["outcomes"][0]["value"] == "hi"
    for command in (["resume", "r1"], ["run", "plan.yaml"]):
        refused = shoal_cli(*command, "--store", store, cwd=read_only_dir)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    with pytest.raises(StoreError, match="cannot write"):
        SQLiteStore(store, read_only=True).heartbeat("r1", 1.0)


def test_read_only_opening_refuses_what_is_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(StoreError, match="no shoal journal"):
        SQLiteStore(tmp_path / "empty.db", read_only=True)
    (tmp_path / "junk.db").write_bytes(b"junk" * 300)
    with pytest.raises(StoreError, match="not a database"):
        SQLiteStore(tmp_path / "junk.db", read_only=True)
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(tmp_path / "missing.db", read_only=True)
