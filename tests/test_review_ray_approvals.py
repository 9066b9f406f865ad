"""A hostile user's review of Ray agents and approvals: each test pins a defect found.

Approvals: a decision is bound to exactly its arguments, also when their JSON is lossy (NaN,
integers too long to write out, values too large to convert); a person's garbage edit is asked
again; a rules file whose patterns are not text is refused. Ray agents and tools: amounts too
large for a float are a clear error. Ray tests (real Ray: ``RAY_ADDRESS``'s cluster, else a
private local one) are at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Runtime, tool
from shoal.agents.agent import Agent
from shoal.approvals import RulesApprover, approval_hash
from shoal.exceptions import ConfigError, ToolDefinitionError
from shoal.testing import ScriptedModel, call
from tests.conftest import ONE_AT_A_TIME
from tests.test_approvals import console_approver, request, review

pytestmark = ONE_AT_A_TIME  # the one Ray head (most of its tests)

# ---- the approval hash -------------------------------------------------------------------


def _big_list(last: int) -> list[int]:
    items = list(range(1_000_001))  # past what converts to JSON: a bounded repr stands for it
    items[-1] = last
    return items


@pytest.mark.parametrize(("one", "other"), [
    (float("nan"), "NaN"),
    (float("inf"), "Infinity"),
    (10 ** 5000, 10 ** 5000 + 1),
    (-(10 ** 5000), "<an integer of 16,610 bits, too long to write out>"),
    ({"deep": [float("nan")]}, {"deep": ["NaN"]}),
], ids=["nan", "inf", "big-int", "big-int-text", "nested-nan"])
def test_a_decision_for_lossy_arguments_binds_only_those(one: Any, other: Any) -> None:
    assert approval_hash("pay", {"amount": one}) != approval_hash("pay", {"amount": other})
    assert approval_hash("pay", {"amount": one}) == approval_hash("pay", {"amount": one})


def test_arguments_too_large_for_json_differ_by_their_last_item() -> None:
    assert approval_hash("t", {"x": _big_list(-1)}) != approval_hash("t", {"x": _big_list(0)})
    assert approval_hash("t", {"x": _big_list(7)}) == approval_hash("t", {"x": _big_list(7)})


def test_the_exact_hash_keeps_what_the_canonical_one_promises() -> None:
    # key order never matters, lossy or not; an ordinary call's hash is what it always was
    assert (approval_hash("t", {"a": math.nan, "b": {"y": 1, "z": 2}})
            == approval_hash("t", {"b": {"z": 2, "y": 1}, "a": math.nan}))
    import hashlib

    from shoal.store.base import canonical_json

    plain = {"p": "x\ud800", "n": [1, 2.5, None, True], "m": {"z": 1, "a": "\u00e9"}}
    assert approval_hash("t", plain) == hashlib.sha256(
        f"t\n{canonical_json(plain)}".encode("utf-8", "surrogatepass")).hexdigest()


def test_self_containing_and_shared_values_hash_quickly_and_stably() -> None:
    one: list[Any] = []
    one.append(one)
    two: list[Any] = []
    two.append(two)
    assert approval_hash("t", {"x": one}) == approval_hash("t", {"x": two})
    assert approval_hash("t", {"x": one}) != approval_hash("t", {"x": [one]})
    shared: list[Any] = [0]
    for _ in range(200):  # 2**200 items written out; each part is hashed once
        shared = [shared, shared]
    assert approval_hash("t", {"x": shared}) == approval_hash("t", {"x": shared})
    deep: dict[str, Any] = {"end": math.nan}
    for _ in range(100_000):
        deep = {"a": deep}
    assert len(approval_hash("t", {"x": deep})) == 64


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_call_whose_edit_was_used_is_asked_again_on_resume(kind: str, tmp_path: Path) -> None:
    from shoal.approvals import Decision
    from shoal.approvals.ledger import RunLedger
    from shoal.store.memory import MemoryStore
    from shoal.store.sqlite import SQLiteStore
    from tests.test_approvals import delete

    store = MemoryStore() if kind == "memory" else SQLiteStore(str(tmp_path / "runs.db"))
    ledger = RunLedger(store)
    asked = request(path="/etc/passwd")
    assert ledger.record(asked, "approval").decision == "pending"
    args, _ = ledger.approve(asked, Decision.edit({"path": "copy/passwd"}), delete, "a person")
    assert args == {"path": "copy/passwd"}
    # the run stopped before the edited call ended; resumed, it asks about the call again
    again = ledger.record(asked, "approval")
    assert (again.decision, again.reason) == ("pending", "")


@pytest.mark.parametrize("reason", [{"why": 1}, 12, b"\xff", ["no"]],
                         ids=["mapping", "int", "bytes", "list"])
@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_a_decision_whose_reason_is_not_text_denies_with_a_clear_reason(
        verdict: str, reason: Any, tmp_path: Path) -> None:
    from shoal import Plan
    from shoal.approvals import Decision
    from tests.test_approvals import delete, run

    plan = Plan()
    node = plan.call(delete, path="a")
    result = run(plan, approver=lambda r: Decision(verdict, reason),  # type: ignore[arg-type]
                 store=str(tmp_path / "runs.db"))  # the journal, where reasons are text
    outcome = result[node]
    assert outcome.status == "denied"
    assert "a decision's reason is text" in outcome.reason


def test_a_decision_without_a_reason_or_with_bad_edit_arguments() -> None:
    from shoal.approvals import Decision

    assert Decision("approve", None).reason == ""  # type: ignore[arg-type]
    for args in ("path", ["path"], 3):
        with pytest.raises(ConfigError, match="an edit's arguments are a mapping"):
            Decision.edit(args)  # type: ignore[arg-type]


class _Named(shoal.Approver):
    """Approves everything; its ``name`` is what the test says."""

    def __init__(self, name: Any) -> None:
        self._name = name

    @property
    def name(self) -> str:
        if isinstance(self._name, Exception):
            raise self._name
        return self._name  # type: ignore[no-any-return]

    async def review(self, batch: Any) -> list[shoal.Decision]:
        return [shoal.Decision.approve() for _ in batch]


@pytest.mark.parametrize("name", [RuntimeError("boom"), None, {"a": 1}, ""],
                         ids=["raises", "none", "mapping", "empty"])
def test_an_approver_with_a_broken_name_still_decides(name: Any, tmp_path: Path) -> None:
    from shoal import Plan
    from tests.test_approvals import delete, run

    plan = Plan()
    node = plan.call(delete, path="a")
    store = str(tmp_path / "runs.db")
    result = run(plan, approver=_Named(name), store=store)  # a hang before: never answered
    assert result[node].status == "ok", result[node].reason
    stored = shoal.Runtime(store=store).store
    assert stored is not None
    assert [r.decided_by for r in stored.approvals(result.run_id)] == ["_Named"]


# ---- the console approver ----------------------------------------------------------------


@pytest.mark.parametrize("garbage", ['{"path": ' + "9" * 5000 + "}", "[" * 100_000],
                         ids=["too-many-digits", "nested-too-deep"])
def test_a_garbage_edit_is_asked_again(garbage: str) -> None:
    approver, out, _ = console_approver(f"e\n{garbage}\n{{\"path\": \"safe\"}}\n")
    got = review(approver, request(path="a"))
    assert [(d.verdict, d.args) for d in got] == [("edit", {"path": "safe"})]
    assert "try again" in out.getvalue()


# ---- rules files -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [
    "- deny:\n", "- deny: [a, b]\n", "- allow: {x: 1}\n", "- allow: read\n  lineage:\n",
    "- allow: read\n  lineage: [lead]\n", "- deny: rm\n  reason: {why: no}\n",
    "- allow: true\n"])
def test_a_rule_whose_pattern_is_not_text_is_refused(tmp_path: Path, rule: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n{rule}otherwise: deny\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="rule 1: "):
        RulesApprover.from_file(path)


def test_a_rule_may_name_a_number(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n- allow: 404\n  reason: 7\n", encoding="utf-8")
    rules = RulesApprover.from_file(path).rules
    assert (rules[0].tool, rules[0].reason) == ("404", "7")


def test_one_pattern_given_as_a_string_is_refused_not_read_letter_by_letter() -> None:
    from shoal.approvals import Rule

    # allow="read_*" read as the patterns "r", "e", ..., "*" would allow every tool
    for options in ({"allow": "read_*"}, {"deny": "delete_*"}, {"rules": Rule("deny", "x")}):
        with pytest.raises(ConfigError, match="takes a list"):
            RulesApprover(**options)
    with pytest.raises(ConfigError, match="Rule objects"):
        RulesApprover([{"deny": "x"}])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="patterns"):
        RulesApprover(allow=[1])  # type: ignore[list-item]
    approver = RulesApprover(allow=("read_*",))
    assert [d.verdict for d in review(approver, request(tool_name="delete_all"),
                                      request(tool_name="read_file"))] == ["deny", "approve"]


# ---- numbers too large for a float -------------------------------------------------------


def test_an_agents_resource_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a number of 0 or more"):
        Agent(name="a", model=ScriptedModel([]), isolation="ray",
              resources={"num_gpus": 10 ** 400})


@pytest.mark.parametrize("options", [{"resources": {"num_cpus": 10 ** 400}},
                                     {"timeout": 10 ** 400}, {"rate": (10 ** 400, 1)}],
                         ids=["resources", "timeout", "rate"])
def test_a_tool_setting_too_large_for_a_float_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises((ToolDefinitionError, ConfigError)):
        @tool(**options)
        def echo(x: int) -> int:
            """Echo."""
            return x


@pytest.mark.parametrize("timeout", ["5", True, [5]])
def test_an_approval_timeout_that_is_not_seconds_is_a_config_error(timeout: Any) -> None:
    with pytest.raises(ConfigError, match="approval_timeout"):
        Runtime(approval_timeout=timeout)


def test_an_approval_timeout_past_any_float_waits_rather_than_crashes() -> None:
    from shoal import Plan
    from tests.test_approvals import delete, run, statuses  # a gated tool

    async def approve(_: Any) -> bool:
        return True

    plan = Plan()
    plan.call(delete, path="x")
    assert sys.float_info.max < 10 ** 400
    result = run(plan, approver=approve, approval_timeout=10 ** 400)
    assert list(statuses(result).values()) == ["ok"]


# ---- remote agents at the root's approval desk (process and Ray agents alike) --------------

from tests.test_process_agents import send  # noqa: E402  (a tool needing approval)
from tests.test_ray_agents import ray_cluster  # noqa: E402, F401  (a fixture: Ray up)


@pytest.fixture(params=["process", "ray"])
def remote(request: pytest.FixtureRequest) -> str:
    """Each remote isolation; Ray up for ``"ray"``."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


def _mailer_tree(isolation: str, texts: list[str], mailers: int = 1) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        "go": [[call("mailer", task="m") for _ in range(mailers)], "done"],
        "m": [[call("send", path=os.devnull, text=t)] for t in texts] + ["mailed"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send],
                         isolation=isolation)  # type: ignore[arg-type]
    return shoal.Agent(name="lead", model=model, subagents=[mailer])


def test_the_approval_budget_counts_remote_agents_requests(remote: str) -> None:
    asked: list[str] = []

    def approver(request: shoal.ApprovalRequest) -> bool:
        asked.append(request.args["text"])
        return True

    lead = _mailer_tree(remote, ["1", "2", "3"])
    result = lead.run_sync("go", runtime=shoal.Runtime(approver=approver, approval_budget=1))
    assert asked == ["1"]
    calls = result.children[0].calls
    assert [c.status for c in calls] == ["ok", "denied", "denied"]
    assert "approval budget" in calls[1].message.content


def test_the_root_approver_reviews_one_batch_at_a_time_across_remote_agents(
        remote: str) -> None:
    reviewing: list[int] = [0, 0]  # now, most at once

    class Slow(shoal.Approver):
        async def review(self, batch: Any) -> list[shoal.Decision]:
            reviewing[0] += 1
            reviewing[1] = max(reviewing)
            await asyncio.sleep(0.5)
            reviewing[0] -= 1
            return [shoal.Decision.approve() for _ in batch]

    lead = _mailer_tree(remote, ["a"], mailers=3)
    result = lead.run_sync("go", runtime=shoal.Runtime(approver=Slow()))
    assert [c.status for r in result.children for c in r.calls] == ["ok"] * 3
    assert reviewing[1] == 1


def test_a_late_answer_to_a_timed_out_request_leaves_a_remote_agent_running(
        remote: str) -> None:
    withdrawn: list[str] = []

    class Late(shoal.Approver):
        async def review(self, batch: Any) -> list[shoal.Decision]:
            # an answer that comes after the timeout (the approver ignores cancellation)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1.0)
            await asyncio.sleep(1.0)
            return [shoal.Decision.approve() for _ in batch]

        def withdrawn(self, requests: Any) -> None:
            withdrawn.extend(r.lineage for r in requests)

    lead = _mailer_tree(remote, ["a", "b", "c"])
    result = lead.run_sync("go", runtime=shoal.Runtime(approver=Late(),
                                                       approval_timeout=0.3))
    mailer = result.children[0]
    assert (mailer.status, mailer.output) == ("ok", "mailed"), mailer.error
    assert [c.status for c in mailer.calls] == ["denied"] * 3
    assert all("approval timeout" in c.message.content for c in mailer.calls)
    assert "lead/mailer#1/send#1" in withdrawn  # the root's approver was told


# ---- Ray agents --------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_a_label_selector_ray_refuses_is_a_config_error_and_leaves_no_port_open() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("placed", task="x")], "done"],
                                      "x": ["never"]})
    placed = shoal.Agent(name="placed", model=model, isolation="ray",
                         labels={"zone": "in(a"})  # Ray checks the syntax only when used
    lead = shoal.Agent(name="lead", model=model, subagents=[placed])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        child = lead.run_sync("go").children[0]
        status, error, kind = child.status, str(child.error), type(child.error)
        del child  # with its error, which holds the frames that held the agent's port
        gc.collect()
    # the agent's port was closed, not left to the garbage collector
    assert not [w for w in caught if "socket" in str(w.message)]
    assert (status, kind) == ("failed", ConfigError), error
    assert "lead/placed#1" in error and "in(a" in error


def _kill_agent_actors() -> int:
    """SIGKILL the agent actors' workers of this driver's own Ray (its descendants only)."""
    import psutil

    killed = 0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "AgentActor" in " ".join(process.cmdline()):
                process.kill()
                killed += 1
    return killed


@pytest.mark.usefixtures("ray_cluster")
def test_an_actor_killed_while_its_approval_waits_fails_and_withdraws_the_request() -> None:
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("kills the actor's worker by pid: needs the private local Ray")
    withdrawn: list[str] = []
    killed: list[int] = []

    class Killer(shoal.Approver):
        async def review(self, batch: Any) -> list[shoal.Decision]:
            killed.append(_kill_agent_actors())
            await asyncio.Event().wait()  # a person who never answers
            return []

        def withdrawn(self, requests: Any) -> None:
            withdrawn.extend(r.lineage for r in requests)

    lead = _mailer_tree("ray", ["a"])
    result = lead.run_sync("go", runtime=shoal.Runtime(approver=Killer()))
    mailer = result.children[0]
    assert killed == [1]
    assert mailer.status == "failed" and "died" in str(mailer.error), mailer.error
    assert withdrawn == ["lead/mailer#1/send#1"]  # nobody is left asking the person


TWO_RUNTIMES = """
import threading
import shoal
from shoal.testing import ScriptedModel, call
from tests.test_process_agents import where

def tree():
    model = ScriptedModel.per_prompt({"go": [[call("w", task="x")], "done"],
                                      "x": [[call("where", tag="a")], "did x"]})
    w = shoal.Agent(name="w", model=model, tools=[where], isolation="ray")
    return shoal.Agent(name="lead", model=model, subagents=[w])

out = {}
def go(i):
    child = tree().run_sync("go").children[0]
    out[i] = (child.status, child.output, repr(child.error))

threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted(out.values()))
"""


def test_two_runtimes_on_two_threads_start_their_ray_agents_at_once() -> None:
    # a fresh driver, where no Ray is connected yet: both runtimes connect it at once
    import subprocess

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", TWO_RUNTIMES], cwd=root, capture_output=True,
                          text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str([("ok", "did x", "None")] * 2), (
        done.stdout[-2000:], done.stderr[-2000:])


def test_a_flood_of_silent_connections_holds_few_sockets_and_the_actor_still_connects() -> None:
    import psutil

    from shoal.agents.ray_agent import MAX_UNCHECKED, TOKEN_BYTES, _Listener
    from tests.test_ray_agents import _NeverDone

    token = os.urandom(TOKEN_BYTES)
    me = psutil.Process()

    async def scenario() -> tuple[int, bytes]:
        listener = _Listener("127.0.0.1", token)
        accepting = asyncio.ensure_future(listener.accept(_NeverDone(), "lead/x#1"))
        loop = asyncio.get_running_loop()

        async def connect(first: bytes) -> socket.socket:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", listener.port))
            if first:
                await loop.sock_sendall(sock, first)
            return sock

        before = me.num_fds()
        strangers = [await connect(b"") for _ in range(300)]  # slowloris: never say a word
        strangers += [await connect(b"\xff" * 8) for _ in range(50)]  # a huge length, short
        await asyncio.sleep(0.5)
        held = me.num_fds() - before - len(strangers)  # what the parent holds for them
        friend = await connect(token)
        reader, writer = await asyncio.wait_for(accepting, 5)
        await loop.sock_sendall(friend, b"hello")
        got = await reader.readexactly(5)
        for each in (*strangers, friend):
            each.close()
        writer.close()
        listener.close()
        return held, got

    held, got = asyncio.run(scenario())
    assert got == b"hello"
    assert held <= MAX_UNCHECKED + 8, held
