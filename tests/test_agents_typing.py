"""A user's program, checked with ``mypy --strict``, needs no annotation for shoal's sake.

``Agent`` defaults its answer type to ``str``, infers it from ``output_type`` otherwise, and
a returned result's ``output`` is that type, not ``T | None``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shoal
from tests.conftest import ONE_AT_A_TIME
from tests.mypy_run import of_program, strict_mypy

ROOT = Path(__file__).resolve().parent.parent

USER_PROGRAM = '''
import asyncio
from typing import TYPE_CHECKING

import pydantic

import shoal
from shoal.testing import ScriptedModel


class Report(pydantic.BaseModel):
    title: str
    points: list[str]


@shoal.tool(timeout=5)
async def search(query: str) -> list[str]:
    """Search the web."""
    return [query]


def lookup(key: str) -> str:
    """A plain function as a tool."""
    return key


agent = shoal.Agent(name="plain", model=ScriptedModel(["hi"]), tools=[search, lookup])
result = agent.run_sync("go")
shout = result.output.upper()

typed = shoal.Agent(name="typed", model="openai:gpt-4.1-mini", output_type=Report,
                    instructions="Write a report.")
report = typed.run_sync("go", budget=shoal.Budget(requests=5, tokens=10_000)).output
first_point = report.points[0]

researcher = shoal.Agent(name="researcher", instructions="Research one topic.")
lead = shoal.Agent(name="lead", subagents=[researcher, typed],
                   budget=shoal.Budget(subagents=4, depth=1))


def decide(request: shoal.ApprovalRequest) -> shoal.Decision:
    return shoal.Decision.approve() if request.tool == "search" else shoal.Decision.deny("no")


def word(record: shoal.CallRecord) -> str:
    return f"{record.call.name} did not work ({record.status})"


careful = shoal.Agent(name="careful", tools=[search], tool_error_format=word)
renamed = shoal.tool(lookup, name="find", timeout=5)


async def main() -> str:
    answer = await lead.run("go", approver=decide)
    handle = careful.start("go")
    handle.cancel("careful")
    later = await handle
    reports = await asyncio.gather(*(typed.run(p) for p in ("a", "b")))
    titles = [r.output.title for r in reports]
    try:
        await agent.run("go")
    except shoal.BudgetExceeded as exc:
        print(exc.limit, exc.result)
    return answer.output + later.output + ", ".join(titles)


results: list[shoal.AgentResult] = [result, lead.run_sync("go")]
every: list[shoal.AgentResult[object]] = [*typed.run_sync("x").walk()]

if TYPE_CHECKING:
    reveal_type(agent)
    reveal_type(result.output)
    reveal_type(report)
    reveal_type(typed.run_sync("go"))
    reveal_type(search)
    reveal_type(renamed)
'''


@ONE_AT_A_TIME  # the suite's one mypy run
@pytest.mark.timeout(600)
def test_typical_agent_programs_pass_mypy_strict() -> None:
    # checked with the repository's files in one run (tests/test_quality.py's): the analysis
    # of shoal and its dependencies is done once for both tests
    done = strict_mypy(USER_PROGRAM)
    lines = of_program(done.stdout.splitlines())
    assert lines, done.stdout + done.stderr  # the program was checked
    errors = [line for line in lines if ": error:" in line]
    assert errors == [], "\n".join(errors)
    revealed = [line.split("Revealed type is ", 1)[1].replace("builtins.", "") for line in lines
                if "Revealed type is" in line]
    assert revealed == ['"shoal.agents.agent.Agent[str]"', '"str"', '"user_program.Report"',
                        '"shoal.agents.result.AgentResult[user_program.Report]"',
                        # options or not, a tool's result is what its coroutine returns
                        '"shoal.tools.Tool[[query: str], list[str]]"',
                        '"shoal.tools.Tool[[key: str], str]"'], done.stdout


@pytest.mark.timeout(600)
def test_typical_agent_programs_pass_pyright_strict(tmp_path: Path) -> None:
    pyright = shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed (npm install -g pyright)")
    program = tmp_path / "user_program.py"
    program.write_text(textwrap.dedent(USER_PROGRAM))
    config = {"pythonVersion": f"{sys.version_info.major}.{sys.version_info.minor}",
              "typeCheckingMode": "strict", "extraPaths": [str(Path(shoal.__file__).parents[1])]}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    done = subprocess.run([pyright, "--pythonpath", sys.executable, str(program)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=580)
    assert " - error:" not in done.stdout, done.stdout
    assert 'Type of "agent" is "Agent[str]"' in done.stdout
    assert 'Type of "report" is "Report"' in done.stdout
