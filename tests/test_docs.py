"""The documentation: every Python example in README.md and docs/ runs, and the site builds.

Each ```python block of a page runs, in page order, in one namespace per page (later blocks
build on earlier ones), with a fresh temporary directory as the working directory. A block
that cannot run here says so just above it, with a reason a reader can check:

    <!-- docs-test: skip (needs an OpenAI key) -->

A block that runs a program other than Python names it, and runs where that program is
installed (beside this Python or on PATH); elsewhere the page's test is skipped, saying so:

    <!-- docs-test: needs mcp-server-time -->

and one that needs an optional package names a module it imports (``needs import
opentelemetry.sdk``): without it the page's test is skipped, naming the module.

```bash blocks are not run; the ``shoal`` subcommands they name must exist. The site is built
with ``mkdocs build --strict`` (warnings are errors) when the ``docs`` extra is installed.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*docs-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip \((?P<reason>[^()]*\S[^()]*)\)\s*$")
NEEDS = re.compile(r"^\s*needs (?P<program>(?:import )?[\w.-]+)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    skip: str | None  # the reason given by a skip marker, else None
    needs: str | None = None  # the program a needs marker names, else None


def blocks(text: str, page: str = "<page>") -> list[Block]:
    """The fenced code blocks of a markdown text, with their markers checked.

    A marker must be the last non-blank line before a ```python block and must read
    ``skip (reason)`` or ``needs PROGRAM``; anything else is a ValueError naming the line.
    """
    found: list[Block] = []
    lines = text.split("\n")
    pending: tuple[int, str, str] | None = None  # (line, kind, text) of a marker not yet used
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line.strip())
        fence = FENCE.match(line)
        if marker:
            skip, needs = SKIP.match(marker.group(1)), NEEDS.match(marker.group(1))
            if skip is None and needs is None:
                raise ValueError(f"{page}:{i + 1}: a docs-test marker reads 'skip (reason)' or "
                                 f"'needs PROGRAM', not {marker.group(1).strip()!r}")
            pending = ((i + 1, "skip", skip.group("reason").strip()) if skip
                       else (i + 1, "needs", needs.group("program")) if needs else None)
        elif fence:
            ticks, language = fence.group(1), fence.group(2)
            end = i + 1
            while end < len(lines) and not lines[end].startswith(ticks):
                end += 1
            if pending is not None and language != "python":
                raise ValueError(f"{page}:{pending[0]}: a docs-test marker must stand just "
                                 f"before a python block, not a {language or 'plain'} one")
            found.append(Block(page, i + 1, language, "\n".join(lines[i + 1:end]),
                               skip=pending[2] if pending and pending[1] == "skip" else None,
                               needs=pending[2] if pending and pending[1] == "needs" else None))
            pending = None
            i = end
        elif line.strip() and pending is not None:
            raise ValueError(f"{page}:{pending[0]}: a docs-test marker must stand just "
                             "before the python block it is about")
        i += 1
    if pending is not None:
        raise ValueError(f"{page}:{pending[0]}: a docs-test marker with no block after it")
    return found


def page_blocks(path: Path) -> list[Block]:
    return blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def find_program(name: str) -> str | None:
    """A program installed beside this Python (a console script of its environment) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def missing_need(need: str) -> str | None:
    """Why the program or module a block needs is missing here, or None when it is not."""
    if need.startswith("import "):
        module = need.removeprefix("import ")
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        return None if found else f"needs the module {module}, which is not installed"
    if find_program(need) is None:
        return f"runs {need}, which is not installed (pip install {need}; .ci/run installs it)"
    return None


def run_block(block: Block, namespace: dict[str, object]) -> None:
    """Run one block in the page's namespace; top-level ``await`` works as in a notebook."""
    code = compile(block.source, f"{block.page}:{block.line}", "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


PYTHON_PAGES = [p for p in PAGES if any(b.language == "python" for b in page_blocks(p))]


@pytest.mark.parametrize("path", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_example_runs(path: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    # the examples' MCP servers are console scripts of this environment
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    name = "docs_example_" + re.sub(r"\W", "_", str(path.relative_to(ROOT)))
    module = types.ModuleType(name)  # a real module, for dataclasses, pydantic and pickle
    monkeypatch.setitem(sys.modules, name, module)
    ran = 0
    for block in page_blocks(path):
        if block.language != "python" or block.skip is not None:
            continue
        missing = block.needs and missing_need(block.needs)
        if missing:
            pytest.skip(f"{block.page}:{block.line}: {missing}")
        try:
            run_block(block, module.__dict__)
        except BaseException as exc:
            detail = "".join(traceback.format_exception(exc))
            pytest.fail(f"the example at {block.page}:{block.line} failed:\n{detail}")
        ran += 1
    assert ran or all(b.skip for b in page_blocks(path) if b.language == "python")


def test_skips_are_few_and_say_why() -> None:
    skipped = [b for p in PAGES for b in page_blocks(p) if b.language == "python" and b.skip]
    total = [b for p in PAGES for b in page_blocks(p) if b.language == "python"]
    assert all(len(b.skip or "") >= 10 for b in skipped), [(b.page, b.line) for b in skipped]
    assert len(skipped) * 4 <= len(total), [(b.page, b.line, b.skip) for b in skipped]


def test_markers_are_read_strictly() -> None:
    good = "<!-- docs-test: skip (needs an OpenAI key) -->\n```python\nx = 1\n```\n"
    [block] = blocks(good)
    assert block.skip == "needs an OpenAI key" and block.source == "x = 1"
    [needing] = blocks("<!-- docs-test: needs mcp-server-time -->\n```python\nx = 1\n```\n")
    assert needing.needs == "mcp-server-time" and needing.skip is None
    assert missing_need("mcp-server-time") in (None, missing_need("mcp-server-time"))
    assert missing_need("import json") is None
    assert "not installed" in (missing_need("import no_such_module_here.sub") or "")
    assert "not installed" in (missing_need("no-such-program-here") or "")
    for bad in ("<!-- docs-test: skip -->\n```python\nx\n```",            # no reason
                "<!-- docs-test: skip() -->\n```python\nx\n```",          # an empty one
                "<!-- docs-test: ignore (why) -->\n```python\nx\n```",    # not a marker we know
                "<!-- docs-test: needs -->\n```python\nx\n```",         # needs nothing named
                "<!-- docs-test: skip (why) -->\n```bash\nls\n```",       # not a python block
                "<!-- docs-test: skip (why) -->\ntext\n```python\nx\n```",  # not just before
                "<!-- docs-test: skip (why) -->\n"):                      # nothing after it
        with pytest.raises(ValueError, match="docs-test marker"):
            blocks(bad)


def test_a_failing_example_fails_the_test(tmp_path: Path) -> None:
    [block] = blocks("```python\nimport shoal\nraise ValueError('broken example')\n```\n")
    with pytest.raises(ValueError, match="broken example"):
        run_block(block, {})
    [awaiting] = blocks("```python\nimport asyncio\nawait asyncio.sleep(0)\nx = 42\n```\n")
    namespace: dict[str, object] = {}
    run_block(awaiting, namespace)
    assert namespace["x"] == 42


def shoal_commands() -> dict[str, set[str]]:
    """Each ``shoal`` subcommand, with the subcommands of a group (``mcp serve``)."""
    import typer.main

    from shoal.cli.app import app

    command = typer.main.get_command(app)
    found: dict[str, set[str]] = {}
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        found[name] = set(getattr(sub, "commands", {}))
    return found


def test_shell_examples_name_real_commands() -> None:
    commands = shoal_commands()
    named = 0
    for path in PAGES:
        for block in page_blocks(path):
            if block.language not in ("bash", "sh", "shell"):
                continue
            for line in block.source.replace("\\\n", " ").split("\n"):
                for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
                    words = shlex.split(part, comments=True) if part.strip() else []
                    if not words or words[0] != "shoal":
                        continue
                    named += 1
                    where = f"{block.page}:{block.line}: {part.strip()}"
                    assert len(words) > 1 and words[1] in commands, where
                    if commands[words[1]]:
                        assert len(words) > 2 and words[2] in commands[words[1]], where
    assert named > 10


def test_readme_starts_with_the_two_commands() -> None:
    first = next(b for b in page_blocks(ROOT / "README.md") if b.language)
    assert first.language == "bash"
    assert ('pip install -e ".[local]" && shoal run examples/literature_review/agents.py:review '
            '"What makes agent runs fast and safe?"') in first.source
    assert ('pip install -c .ci/constraints.txt -e ".[dev,ray,local,otel,mcp,docs]" '
            'mcp-server-time mcp-server-git && python -m pytest -q') in first.source


def test_readme_links_into_the_docs_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


@pytest.mark.timeout(600)
def test_the_site_builds_with_no_warning(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # a notice of Material's, not a warning
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "api" / "shoal" / "index.html").exists()
    assert (tmp_path / "site" / "agents" / "index.html").exists()
    for page in sorted((tmp_path / "site" / "api").rglob("index.html")):
        text = page.read_text(encoding="utf-8")
        assert 'class="doc doc-heading"' in text, f"{page}: no documented name"
        roles = re.findall(r":(?:class|func|meth|mod|attr|exc|data):<code>", text)
        assert not roles, f"{page}: {len(roles)} Sphinx roles shown as text"
    assert not (tmp_path / "site" / "_ext").exists()  # the docs' build code is not published


def test_sphinx_roles_in_docstrings_become_code() -> None:
    spec = spec_from_file_location("sphinx_roles", ROOT / "docs" / "_ext" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    roles = module_from_spec(spec)
    spec.loader.exec_module(roles)
    assert roles.plain("a :class:`~shoal.outcome.RunResult` and :func:`run`, "
                       ":meth:`Plan.call`, :py:attr:`!x.y`, :mod:`shoal.timeline`, "
                       ":class:`the result <shoal.outcome.RunResult>`, ``code``") == (
        "a `RunResult` and `run`, `Plan.call`, `x.y`, `shoal.timeline`, `the result`, "
        "``code``")
