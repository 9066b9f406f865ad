"""``--modules`` and ``SHOAL_PLAN_MODULES`` hold for every name of code to import.

Not only for plan files: ``shoal run module:agent``, ``--model module:name`` and ``shoal mcp
serve module:tools`` name a module to import, whose import-time code runs. With the modules
listed, another is refused before it is imported, with the error a plan file's import path
gets (a ``PlanError``, ``bad_import``); a file path (``dir/file.py:agent``) names no module
and is refused too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli.agents import load_agent, model_option
from shoal.cli.mcp import load_tools
from shoal.exceptions import PlanError
from shoal.planfile import check_import

ROOT = Path(__file__).resolve().parents[1]

AGENTS = '''
import os

open(os.environ["SHOAL_TEST_MARKER"], "w").close()

import shoal
from shoal.testing import ScriptedModel


def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
model = ScriptedModel(["done"])
TOOLS = [shout]
'''


@pytest.fixture
def sidepkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``sidepkg_targets`` on sys.path; returns the marker its import writes."""
    pkg = tmp_path / "lib" / "sidepkg_targets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "agents.py").write_text(AGENTS)
    (tmp_path / "loose.py").write_text(AGENTS)
    marker = tmp_path / "imported"
    monkeypatch.setenv("SHOAL_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield marker
    for name in [m for m in sys.modules if m.startswith("sidepkg_targets")]:
        del sys.modules[name]


def bad_import(caught: pytest.ExceptionInfo[PlanError]) -> str:
    [problem] = caught.value.problems
    assert problem.code == "bad_import"
    return problem.message


@pytest.mark.parametrize("load", [
    lambda modules: load_agent("sidepkg_targets.agents:lead", modules),
    lambda modules: model_option("sidepkg_targets.agents:model", modules),
    lambda modules: load_tools("sidepkg_targets.agents:TOOLS", modules),
], ids=["agent", "model", "mcp-tools"])
def test_a_target_outside_the_listed_modules_is_refused_before_it_is_imported(
        load: object, sidepkg: Path) -> None:
    with pytest.raises(PlanError) as caught:
        load(["tests", "other"])  # type: ignore[operator]
    message = bad_import(caught)
    assert "'sidepkg_targets.agents'" in message and "other, tests" in message
    assert "SHOAL_PLAN_MODULES" in message
    assert not sidepkg.exists()
    assert load(["sidepkg_targets"]) and sidepkg.exists()  # type: ignore[operator]


def test_a_listed_package_allows_its_submodules_only(sidepkg: Path) -> None:
    check_import("sidepkg_targets.agents:lead", ["sidepkg_targets"])
    check_import("sidepkg_targets.agents:lead", None)
    with pytest.raises(PlanError):
        check_import("sidepkg_targets_evil.agents:lead", ["sidepkg_targets"])
    with pytest.raises(PlanError, match="no module is allowed"):
        check_import("sidepkg_targets.agents:lead", [])


def test_a_file_target_is_refused_while_the_modules_are_listed(tmp_path: Path,
                                                               sidepkg: Path) -> None:
    with pytest.raises(PlanError) as caught:
        load_agent(f"{tmp_path / 'loose.py'}:lead", ["sidepkg_targets"])
    assert "names a file" in bad_import(caught)
    assert not sidepkg.exists()
    assert load_agent(f"{tmp_path / 'loose.py'}:lead") is not None  # unlisted: as before
    assert sidepkg.exists()


def cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_PLAN_MODULES"}
    env.update({"PYTHONPATH": os.pathsep.join([str(cwd / "lib"), str(ROOT)]),
                "COLUMNS": "200", **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_shoal_run_of_an_agent_honours_the_modules_option_and_variable(
        tmp_path: Path, sidepkg: Path) -> None:
    marker = {"SHOAL_TEST_MARKER": str(sidepkg)}
    base = ("run", "sidepkg_targets.agents:lead", "hi", "--no-store", "--json")
    refused = cli(*base, "--modules", "tests,other", cwd=tmp_path, extra_env=marker)
    assert refused.returncode != 0 and "bad_import" in refused.stdout, refused.stdout
    assert "other, tests" in refused.stdout and not sidepkg.exists()
    locked = cli(*base, cwd=tmp_path, extra_env={**marker, "SHOAL_PLAN_MODULES": "tests"})
    assert locked.returncode != 0 and "bad_import" in locked.stdout, locked.stdout
    assert not sidepkg.exists()
    model = cli(*base, "--modules", "sidepkg_targets", "--model", "tests.agent_models:x",
                cwd=tmp_path, extra_env=marker)
    assert model.returncode != 0 and "bad_import" in model.stdout, model.stdout
    assert "'tests.agent_models'" in model.stdout and not sidepkg.exists()
    allowed = cli(*base, "--modules", "sidepkg_targets", cwd=tmp_path, extra_env=marker)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "done" in allowed.stdout and sidepkg.exists()


def test_shoal_mcp_serve_honours_the_modules_option_and_variable(
        tmp_path: Path, sidepkg: Path) -> None:
    marker = {"SHOAL_TEST_MARKER": str(sidepkg)}
    base = ("mcp", "serve", "sidepkg_targets.agents:TOOLS")
    refused = cli(*base, "--modules", "tests", cwd=tmp_path, extra_env=marker)
    assert refused.returncode == 2 and "bad_import" in refused.stderr, refused.stderr
    locked = cli(*base, cwd=tmp_path, extra_env={**marker, "SHOAL_PLAN_MODULES": "tests"})
    assert locked.returncode == 2 and "SHOAL_PLAN_MODULES" in locked.stderr, locked.stderr
    assert not sidepkg.exists()
