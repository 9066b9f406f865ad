"""``shoal run module:agent "prompt"``: the example agent on a scripted model, and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_process import run_cli
from tests.wire import ErrorReply, OpenAIWireServer, closed_port_url, text_reply

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "tests/review_agents.py:lead"
SCRIPTED = "tests/agent_models.py:review_model"


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # a wide, fixed width: tables are read here (readline, once imported by any test, puts
    # COLUMNS=80 into the environment that child processes inherit)
    env = {**os.environ, "COLUMNS": "160"}
    return run_cli(args, cwd=ROOT, env=env, timeout=timeout)


def test_the_example_agent_runs_with_readers_in_parallel() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "lead  ok" in out and out.count("reader#") == 6
    assert "Review: p1 is 'Parallel Function Calling" in out
    assert "14 model requests" in out


def test_json_output_holds_the_whole_tree() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "ok" and data["output"].startswith("Review:")
    assert [c["lineage"] for c in data["children"]] == [f"lead/reader#{i}" for i in range(1, 7)]
    assert data["children"][0]["calls"][0]["tool"] == "read_paper"
    assert data["usage"]["requests"] == 14


def test_a_model_reporting_odd_numbers_fails_its_agent_clearly_in_strict_json_and_the_tree(
        tmp_path: Path) -> None:
    # a cost of NaN went out as a bare NaN (which strict JSON readers refuse) in --json and
    # --events, and a token count past Python's digit limit crashed the tree and --json; then
    # such counts were written out, though no reply can have them (a budget's sums failed on
    # them): now the reply is refused, naming the model and the count
    events = tmp_path / "events.jsonl"
    odd = "tests/agent_models.py:odd_usage_agent"
    done = shoal("run", odd, "hi", "--json", "--no-store", "--events", str(events))
    assert done.returncode == 1, done.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(done.stdout, parse_constant=refuse)
    assert data["status"] == "failed" and data["error"]["type"] == "ModelError"
    assert data["error"]["message"].startswith(
        "model 'scripted': its reply reports usage input_tokens=a number of about 5,001 digits")
    assert data["usage"]["input_tokens"] == 0
    for line in events.read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    shown = shoal("run", odd, "hi", "--no-store")
    assert shown.returncode == 1, shown.stderr
    assert "Traceback" not in shown.stderr
    assert "odd  failed" in shown.stdout and "usage input_tokens=" in shown.stderr


def test_events_file_carries_lineage(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--events",
                 str(events))
    assert done.returncode == 0, done.stderr
    lineages = {json.loads(line)["lineage"] for line in events.read_text().splitlines()}
    assert {"lead", "lead/reader#3", "lead/reader#3/read_paper#1"} <= lineages


@pytest.mark.parametrize(("args", "message"), [
    ((EXAMPLE,), "give the prompt"),
    (("tests/review_agents.py:nobody", "hi"), "no attribute 'nobody'"),
    (("tests/review_agents.py:PAPERS", "hi"), "not a shoal.Agent"),
    (("no_such_module:agent", "hi"), "cannot import 'no_such_module'"),
    (("examples/site_report/plan.yaml", "hi"), "PROMPT and --model are for agents"),
    ((EXAMPLE, "hi", "--model", "tests/agent_models.py:REVIEW_PROMPT"), "neither a model"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(args: tuple[str, ...], message: str) -> None:
    done = shoal("run", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_budget_stop_exits_1_and_still_prints_the_tree() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--deadline", "0.08")
    assert done.returncode == 1, done.stderr
    assert "wall_clock" in done.stderr
    assert "lead  budget_exceeded" in done.stdout


@pytest.mark.parametrize(("mode", "status", "answer"), [
    ("deny", "denied", "pay was denied: denied by --approve deny"),
    ("allow", "ok", "paid 5 to ann"),
])
def test_approve_decides_an_agents_gated_calls(mode: str, status: str, answer: str) -> None:
    done = shoal("run", "tests/agent_models.py:payer", "pay ann", "--approve", mode, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [c["status"] for c in data["calls"]] == [status]
    assert data["output"] == answer


def test_agent_runs_are_journaled_listed_and_resumed(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    stopped = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--store", store,
                    "--deadline", "0.08")
    assert stopped.returncode == 1, stopped.stderr
    run_id = stopped.stderr.split("shoal: run ", 1)[1].split()[0]
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert [r["run_id"] for r in listed] == [run_id]  # its steps are hidden ...
    steps = json.loads(shoal("runs", "--store", store, "--json", "--steps").stdout)
    assert f"{run_id}/lead/steps" in {r["run_id"] for r in steps}  # ... unless asked for
    resumed = shoal("resume", run_id, "--store", store, "--json")
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(resumed.stdout)
    assert data["output"].startswith("Review: p1 is") and data["output"].count(" is '") == 6
    again = shoal("resume", run_id, "--store", store, "--json")  # all finished: pure replay
    assert again.returncode == 0 and json.loads(again.stdout)["output"] == data["output"]


# -- a new user's first runs: missing keys, no network, failing tools, the journal ---------------

NEWCOMER = "tests/newcomer_agents.py"


def shoal_env(*args: str, env: dict[str, str | None], timeout: float = 60,
              ) -> subprocess.CompletedProcess[str]:
    """``shoal`` with the environment changed (``None`` removes a variable)."""
    merged = {k: v for k, v in os.environ.items() if env.get(k, "") is not None}
    merged.update({k: v for k, v in env.items() if v is not None})
    return run_cli(args, cwd=ROOT, env=merged, timeout=timeout)


def test_no_api_key_is_one_line_saying_what_to_do() -> None:
    for extra in ((), ("--json",)):
        done = shoal_env("run", f"{NEWCOMER}:hosted", "hi", "--no-store", *extra,
                         env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})
        assert done.returncode == 2, done.stderr
        assert done.stderr == ("error: OPENAI_API_KEY is not set (the model "
                               "'openai:gpt-4.1-mini' needs it): export it, or pass --model "
                               "local\n")
    assert json.loads(done.stdout)["error"] == "config"
    overridden = shoal_env("run", EXAMPLE, "hi", "--model", "anthropic:claude-haiku-4-5",
                           "--no-store", env={"ANTHROPIC_API_KEY": None,
                                              "ANTHROPIC_BASE_URL": None})
    assert overridden.returncode == 2
    assert overridden.stderr.startswith("error: ANTHROPIC_API_KEY is not set")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None,
                    reason="the local extra is installed")
def test_the_local_model_without_its_extra_is_one_line_with_the_install_command() -> None:
    done = shoal("run", EXAMPLE, "hi", "--no-store")  # the example's agents default to local
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: llama-cpp-python")
    assert "not installed; install them with: " in done.stderr
    assert "shoal[local]" in done.stderr


def test_a_base_url_that_is_not_a_url_is_one_line() -> None:
    done = shoal_env("run", f"{NEWCOMER}:hosted", "hi", "--no-store",
                     env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "localhost:8080/v1"})
    assert done.returncode == 2
    assert done.stderr.startswith("error: OPENAI_BASE_URL 'localhost:8080/v1' is not a URL")
    assert done.stderr.count("\n") == 1


def test_without_network_each_retry_is_a_line_at_once() -> None:
    env = {**os.environ, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": closed_port_url("/v1")}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", "run", f"{NEWCOMER}:hosted",
                             "hi", "--no-store"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while len(lines) < 2:
            line = proc.stderr.readline()
            assert line, f"shoal ended before retrying: {lines}"
            if "retrying" in line:
                lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert lines[0].startswith("shoal: hosted: openai:gpt-4.1-mini retrying (2/8) in ")
    assert lines[0].rstrip().endswith(": cannot reach 127.0.0.1:"
                                      f"{env['OPENAI_BASE_URL'].split(':')[2].split('/')[0]}: "
                                      "connection refused")
    assert "retrying (3/8)" in lines[1]
    assert "hosted  cancelled" in out


def test_a_provider_that_recovers_shows_its_retries_then_answers() -> None:
    with OpenAIWireServer(text_reply("hello there")) as server:
        # told when to come back (Retry-After), the CLI waits 0.05 s, not the default backoff's
        # 0.5 s then 1 s: the retries are shown all the same (the backoff's own lines are the
        # test without network's)
        server.fail_next(2, status=503, retry_after=0.05)
        done = shoal_env("run", f"{NEWCOMER}:hosted", "hi", "--no-store",
                         env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": server.url})
    assert done.returncode == 0, done.stderr
    retries = [line for line in done.stderr.splitlines() if "retrying" in line]
    assert len(retries) == 2 and all("HTTP 503: injected failure" in r for r in retries)
    assert "hello there" in done.stdout


def test_a_refused_key_is_not_retried() -> None:
    with OpenAIWireServer(ErrorReply(401, "Incorrect API key provided")) as server:
        done = shoal_env("run", f"{NEWCOMER}:hosted", "hi", "--no-store",
                         env={"OPENAI_API_KEY": "wrong", "OPENAI_BASE_URL": server.url})
        assert len(server.requests) == 1
    assert done.returncode == 1
    assert "the API key was refused (check OPENAI_API_KEY): Incorrect API key" in done.stderr
    assert "retrying" not in done.stderr and "Traceback" not in done.stderr


def test_an_agent_whose_calls_all_failed_is_not_plain_ok() -> None:
    done = shoal("run", f"{NEWCOMER}:unlucky", "look up a and b", "--no-store")
    assert done.returncode == 0, done.stderr
    assert "unlucky  ok, 2/2 calls failed" in done.stdout
    assert "2 tool calls (2 failed)" in done.stdout
    data = json.loads(shoal("run", f"{NEWCOMER}:unlucky", "look up a and b", "--no-store",
                            "--json").stdout)
    assert data["status"] == "ok" and data["failed_calls"] == 2
    assert [c["status"] for c in data["calls"]] == ["failed", "failed"]
    nested = json.loads(shoal("run", f"{NEWCOMER}:manager", "find c", "--no-store",
                              "--json").stdout)
    assert (nested["failed_calls"], nested["calls_failed_in_tree"]) == (0, 1)
    assert nested["children"][0]["failed_calls"] == 1


def test_a_model_server_starting_is_said_without_a_live_view() -> None:
    done = shoal("run", f"{NEWCOMER}:slow_start", "hi", "--no-store")
    assert done.returncode == 0, done.stderr
    assert "shoal: slow_start: test:server-model: starting local model server…" in done.stderr
    assert "the server is up after 0.6 s" in done.stderr
    assert "local model server  ok  0.6" in done.stdout


def test_runs_and_show_describe_agent_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    first = shoal("run", f"{NEWCOMER}:unlucky", "look up a and b", "--store", store)
    second = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--store", store)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    unlucky = first.stderr.split("shoal: run ", 1)[1].split()[0]
    review = second.stderr.split("shoal: run ", 1)[1].split()[0]

    listing = shoal("runs", "--store", store).stdout
    row = next(line for line in listing.splitlines() if line.startswith(unlucky))
    assert "ok, 2/2 calls failed" in row and "2 failed calls" in row and " 0 " not in row
    assert "12 ok calls" in next(line for line in listing.splitlines()
                                 if line.startswith(review))
    listed = {r["run_id"]: r for r in json.loads(shoal("runs", "--store", store,
                                                       "--json").stdout)}
    assert listed[unlucky]["kind"] == "agent" and listed[unlucky]["nodes"] is None
    assert listed[unlucky]["agent"]["failed_calls"] == 2
    assert listed[review]["agent"]["agents"] == 7

    shown = shoal("show", review, "--store", store).stdout
    assert "lead  ok" in shown and shown.count("reader#") == 6
    assert 'read_paper#1  ok' in shown and '{"paper_id": "p3"}' in shown
    assert "Review: p1 is 'Parallel Function Calling" in shown  # the answer
    assert "7 agents, 2 turns by the lead, 12 tool calls, " in shown
    data = json.loads(shoal("show", review, "--store", store, "--json").stdout)
    assert data["kind"] == "agent" and data["answer"].startswith("Review: p1 is")
    reader = data["agent"]["children"][2]
    assert reader["lineage"] == "lead/reader#3" and reader["turns"] == 2
    assert reader["calls"][0] | {"duration": 0} == {
        "lineage": "lead/reader#3/read_paper#1", "tool": "read_paper",
        "arguments": '{"paper_id": "p3"}', "status": "ok", "duration": 0,
        "result": reader["calls"][0]["result"]}
    assert reader["calls"][0]["result"].startswith("# Rate Limits")
    failed = shoal("show", unlucky, "--store", store).stdout
    assert "unlucky  ok, 2/2 calls failed" in failed
    assert "flaky_lookup#2  failed" in failed and '{"key": "b"}' in failed


def test_show_draws_a_killed_agent_run_from_its_events(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    killed = shoal("run", f"{NEWCOMER}:doomed", "work", "--store", store)
    assert killed.returncode == -signal.SIGKILL
    run_id = killed.stderr.split("shoal: run ", 1)[1].split()[0]
    assert "interrupted" in shoal("runs", "--store", store).stdout
    shown = shoal("show", run_id, "--store", store).stdout
    assert "doomed  running" in shown and "note#1  ok" in shown
    assert f"continue with: shoal resume {run_id}" in shown
    data = json.loads(shoal("show", run_id, "--store", store, "--json").stdout)
    assert data["status"] == "interrupted" and data["answer"] is None
    lead = data["agent"]
    assert (lead["agent"], lead["status"], lead["turns"]) == ("doomed", "running", 2)
    assert [(c["tool"], c["status"]) for c in lead["calls"]] == [("note", "ok"), ("die", "running")]
