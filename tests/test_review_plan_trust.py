"""Hostile input: what a plan file may import and call, its numeric options, and run ids."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError, PlanError, RunNotFoundError, ToolDefinitionError
from shoal.planfile import load_plan, plan_from_dict
from shoal.policy import MAX_RETRIES, RetryPolicy
from shoal.runtime import MAX_RUN_ID, Runtime, check_resume_id, check_run_id
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]

# A package whose import leaves a marker file: it shows whether a module was imported at all.
SIDE_INIT = "import os\nopen(os.environ['SHOAL_TEST_MARKER'], 'w').close()\n"
SIDE_TOOLS = '''
import os

open(os.environ["SHOAL_TEST_MARKER"] + ".tools", "w").close()


def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


class Thing:
    """A class, not a tool."""

    def __init__(self, text: str) -> None:
        self.text = text
'''


@pytest.fixture
def sidepkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``sidepkg_trust`` on sys.path; returns the marker its import writes."""
    pkg = tmp_path / "lib" / "sidepkg_trust"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(SIDE_INIT)
    (pkg / "tools.py").write_text(SIDE_TOOLS)
    marker = tmp_path / "imported"
    monkeypatch.setenv("SHOAL_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield marker
    for name in [m for m in sys.modules if m.startswith("sidepkg_trust")]:
        del sys.modules[name]


def write(where: Path, nodes: list[dict[str, Any]], name: str = "plan.yaml") -> Path:
    path = where / name
    path.write_text(json.dumps({"nodes": nodes}))  # JSON is YAML too
    return path


def problems(path: Path, **options: Any) -> list[tuple[str, str, str]]:
    with pytest.raises(PlanError) as caught:
        load_plan(path, **options)
    return [(p.code, p.node, p.message) for p in caught.value.problems]


# --- 1. what a plan file may import --------------------------------------------------------


def test_os_system_is_refused_by_default_and_runs_nothing(tmp_path: Path) -> None:
    touched = tmp_path / "pwned"
    path = write(tmp_path, [{"id": "x", "tool": "os:system",
                             "args": {"command": f"touch {touched}"}}])
    [(code, node, message)] = problems(path)
    assert (code, node) == ("bad_import", "x")
    assert "builtin function" in message and "Python function" in message
    assert not touched.exists()


@pytest.mark.parametrize(("target", "kind"), [
    ("builtins:eval", "builtin function"), ("builtins:exec", "builtin function"),
    ("subprocess:Popen", "a class"), ("pathlib:Path", "a class"), ("os:path", "module"),
    ("functools:partial", "a class"), ("json:dumps.__call__", "method-wrapper"),
])
def test_names_that_are_not_functions_tools_agents_or_patterns_are_refused(
        tmp_path: Path, target: str, kind: str) -> None:
    [(code, _, message)] = problems(write(tmp_path, [{"id": "x", "tool": target}]))
    assert code == "bad_import" and kind in message, message


def test_modules_are_checked_before_anything_is_imported(tmp_path: Path,
                                                          sidepkg: Path) -> None:
    path = write(tmp_path, [{"id": "x", "tool": "sidepkg_trust.tools:shout",
                             "args": {"text": "hi"}}])
    [(code, node, message)] = problems(path, modules=["tests.plan_tools", "mine"])
    assert (code, node) == ("bad_import", "x")
    assert "'sidepkg_trust.tools'" in message and "mine, tests.plan_tools" in message
    assert "modules=" in message and "--modules" in message and "SHOAL_PLAN_MODULES" in message
    assert not sidepkg.exists(), "the module was imported although it is not allowed"
    # a package allows its modules; the default (None) allows anything, as before
    assert load_plan(path, modules=["sidepkg_trust"]).node("x").tool.name == "shout"
    assert sidepkg.exists()


def test_a_package_prefix_is_matched_on_dots_only(tmp_path: Path, sidepkg: Path) -> None:
    path = write(tmp_path, [{"id": "x", "tool": "sidepkg_trust.tools:shout",
                             "args": {"text": "a"}}])
    for near in (["sidepkg"], ["sidepkg_trust.tool"], ["sidepkg_trust.tools.x"]):
        assert problems(path, modules=near)[0][0] == "bad_import"
    assert not sidepkg.exists()
    assert len(load_plan(path, modules=["sidepkg_trust.tools"])) == 1


def test_a_class_is_refused_even_in_an_allowed_module(tmp_path: Path, sidepkg: Path) -> None:
    path = write(tmp_path, [{"id": "x", "tool": "sidepkg_trust.tools:Thing",
                             "args": {"text": "hi"}}])
    [(code, _, message)] = problems(path, modules=["sidepkg_trust"])
    assert code == "bad_import" and "a class" in message


def test_empty_modules_allow_only_the_tools_passed_in(tmp_path: Path) -> None:
    @shoal.tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    nodes: list[dict[str, Any]] = [{"id": "a", "tool": "echo", "args": {"text": "hi"}}]
    assert len(load_plan(write(tmp_path, nodes), tools={"echo": echo}, modules=())) == 1
    nodes.append({"id": "b", "tool": "tests.plan_tools:shout", "args": {"text": "x"}})
    [(code, node, message)] = problems(write(tmp_path, nodes), tools={"echo": echo},
                                       modules=())
    assert (code, node) == ("bad_import", "b") and "only the tool names" in message
    with pytest.raises(PlanError) as caught:
        plan_from_dict({"nodes": nodes}, tools={"echo": echo}, modules=["other"])
    assert [p.code for p in caught.value.problems] == ["bad_import"]
    # a bad modules argument is the caller's mistake, said at once
    with pytest.raises(TypeError, match="modules takes"):
        plan_from_dict({"nodes": nodes}, tools={"echo": echo}, modules=[""])


# --- 2. numeric options ----------------------------------------------------------------------


def test_huge_retries_in_a_plan_file_are_refused_naming_node_and_limit(tmp_path: Path) -> None:
    path = write(tmp_path, [{"id": "x", "tool": "tests.plan_tools:shout",
                             "args": {"text": "a"},
                             "options": {"retries": 99999999999999999999}}])
    [(code, node, message)] = problems(path)
    assert (code, node) == ("bad_shape", "x") and str(MAX_RETRIES) in message
    assert len(message) < 300
    ok = write(tmp_path, [{"id": "x", "tool": "tests.plan_tools:shout", "args": {"text": "a"},
                           "options": {"retries": MAX_RETRIES}}], "ok.yaml")
    assert load_plan(ok).node("x").tool.policy.retry.retries == MAX_RETRIES


@pytest.mark.parametrize("options", [
    {"retries": MAX_RETRIES + 1}, {"retries": -1}, {"retries": 1e9},
    {"backoff": 1e9}, {"max_backoff": 1e300}, {"timeout": 0}, {"max_concurrency": 0},
    {"rate": "0/s"},
])
def test_other_numeric_options_are_bounded(tmp_path: Path, options: dict[str, Any]) -> None:
    path = write(tmp_path, [{"id": "x", "tool": "tests.plan_tools:shout",
                             "args": {"text": "a"}, "options": options}])
    [(code, node, _)] = problems(path)
    assert (code, node) == ("bad_shape", "x")


def test_the_tool_decorator_has_the_same_bounds() -> None:
    with pytest.raises(ToolDefinitionError, match=str(MAX_RETRIES)):
        @shoal.tool(retries=MAX_RETRIES + 1)
        def f() -> None:
            """Nothing."""
    with pytest.raises(ToolDefinitionError, match="86400"):
        RetryPolicy(retries=1, max_backoff=1e6)


# --- 3. run ids ------------------------------------------------------------------------------

BAD_IDS = ["../../etc", "a/b", "", "x" * (MAX_RUN_ID + 1), "bell\x07", "line\nbreak",
           "rtl\u202e"]  # a lone surrogate is kept exactly (tests/test_malformed_text.py)


def one_node_plan() -> shoal.Plan:
    @shoal.tool
    async def one() -> int:
        """One."""
        return 1

    plan = shoal.Plan("p")
    plan.add(one, node_id="one")
    return plan


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_a_caller_given_run_id_is_checked(tmp_path: Path, run_id: str) -> None:
    store = tmp_path / "j.db"
    with pytest.raises(ConfigError, match="1 to 200 printable characters, without '/'"):
        Runtime(store=store).run_sync(one_node_plan(), run_id=run_id)

    async def other_entries() -> None:
        runtime = Runtime(store=store)
        try:
            for start in (lambda: runtime.start(one_node_plan(), run_id=run_id),
                          lambda: runtime.open_run(run_id=run_id),
                          lambda: runtime.start(one_node_plan(), resume=run_id)):
                with pytest.raises(ConfigError):
                    start()
            with pytest.raises(ConfigError):
                await runtime.resume(run_id, one_node_plan())
        finally:
            await runtime.aclose()

    asyncio.run(other_entries())
    journal = SQLiteStore(store)
    try:
        assert journal.list_runs() == []
    finally:
        journal.close()


def test_legal_ids_still_run_and_resume(tmp_path: Path) -> None:
    store = tmp_path / "j.db"
    long_id = "r" * MAX_RUN_ID
    assert Runtime(store=store).run_sync(one_node_plan(), run_id=long_id).ok
    assert Runtime(store=store).resume_sync(long_id, one_node_plan()).ok
    assert Runtime(store=store).run_sync(one_node_plan(), run_id="my run: 1.2").ok
    with pytest.raises(RunNotFoundError):  # legal but unknown: as before
        Runtime(store=store).resume_sync("never-ran", one_node_plan())


def test_agent_step_runs_keep_their_slash_ids_and_resume_from_the_journal(
        tmp_path: Path) -> None:
    store = tmp_path / "j.db"
    agent = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    result = asyncio.run(agent.run("go", runtime=Runtime(store=store), run_id="tree-1"))
    assert result.output == "done"
    journal = SQLiteStore(store)
    try:
        ids = {r.run_id for r in journal.list_runs()}
        assert any(i.startswith("tree-1/") for i in ids), ids
        step = next(i for i in ids if "/" in i)
        check_resume_id(journal, step)  # it came from the journal: resumable
        with pytest.raises(ConfigError, match="holds '/'"):
            check_resume_id(journal, "tree-1/forged")
    finally:
        journal.close()
    with pytest.raises(ConfigError, match="holds '/'"):
        check_run_id(step)
    with pytest.raises(ConfigError, match="holds '/'"):
        asyncio.run(shoal.Agent(name="lead", model=ScriptedModel(["done"])).run(
            "go", runtime=Runtime(store=store), run_id="../etc"))


# --- the CLI ---------------------------------------------------------------------------------


def cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_PLAN_MODULES"}
    env.update({"PYTHONPATH": os.pathsep.join([str(cwd / "lib"), str(ROOT)]),
                "COLUMNS": "200", **(extra_env or {})})
    return run_cli(args, cwd=cwd, env=env, timeout=120)


def test_cli_modules_option_and_environment_variable(tmp_path: Path, sidepkg: Path) -> None:
    plan = write(tmp_path, [{"id": "x", "tool": "sidepkg_trust.tools:shout",
                             "args": {"text": "hi"}}])
    marker = {"SHOAL_TEST_MARKER": str(sidepkg)}
    base = ("run", str(plan), "--no-store", "--json")
    refused = cli(*base, "--modules", "tests,other", cwd=tmp_path, extra_env=marker)
    assert refused.returncode != 0 and "bad_import" in refused.stdout, refused.stdout
    assert "other, tests" in refused.stdout and not sidepkg.exists()
    locked = cli(*base, cwd=tmp_path, extra_env={**marker, "SHOAL_PLAN_MODULES": "tests"})
    assert locked.returncode != 0 and "SHOAL_PLAN_MODULES" in locked.stdout
    assert not sidepkg.exists()
    allowed = cli(*base, "--modules", "tests", "--modules", "sidepkg_trust", cwd=tmp_path,
                  extra_env={**marker, "SHOAL_PLAN_MODULES": "tests"})
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "HI" in allowed.stdout and sidepkg.exists()


def test_cli_refuses_os_system_by_default(tmp_path: Path) -> None:
    touched = tmp_path / "pwned"
    plan = write(tmp_path, [{"id": "x", "tool": "os:system",
                             "args": {"command": f"touch {touched}"}}])
    proc = cli("run", str(plan), "--no-store", "--json", cwd=tmp_path)
    assert proc.returncode != 0 and "bad_import" in proc.stdout
    assert not touched.exists()
