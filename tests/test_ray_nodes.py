"""shoal on a Ray cluster of two nodes on this machine: placement by resources, a node lost.

The module starts a cluster of its own: a head node (resource ``{"node-a": 1}``, label
``zone=a``, one CPU) on 127.0.0.2 and a worker node (``{"node-b": 1}``, ``zone=b``, one CPU)
on 127.0.0.3, both on the loopback interface,
each with its own temporary directory and ports (Ray's servers listen on every interface
here, so the ports are chosen free on all of them; token authentication guards them); other
Ray clusters on the machine (on 127.0.0.1) are left alone. Ray turns a worker node's
127.0.0.1 into the machine's network address, so the nodes use other loopback addresses,
which Linux routes without setup.
Teardown kills the cluster's processes (found by their temporary directory), never
``ray stop``, which would stop every Ray on the machine.

Each run is a driver of its own (tests/ray_nodes_driver.py), connected with
``Runtime(ray_address=...)``; its journal (SQLite) and approver are in that process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ONE_AT_A_TIME, pid_gone

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
RAY = next((str(p) for p in (Path(sys.executable).with_name("ray"),) if p.exists()),
           shutil.which("ray") or "")
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux",
                       reason="needs loopback addresses besides 127.0.0.1 (Linux)"),
    pytest.mark.skipif(not RAY, reason="the ray command (from pip install 'shoal[ray]') is "
                       "not beside this Python nor on PATH"),
    ONE_AT_A_TIME,  # Ray clusters of their own
]


#: How often the head checks that a node lives, and after how many failed checks it counts it
#: dead (Ray's defaults: 3 s and 5). A killed raylet fails each check at once (its port is
#: closed): it is counted dead in ~3 s, not ~15 s, and what ran there fails with NodeDiedError.
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    """A port free on every interface: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` (which a
    worker node needs) Ray's servers listen on all of them, whatever the node's address."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(step)
    return check()


class Cluster:
    """A head and a worker node started with ``ray start``, killed by their processes."""

    def __init__(self) -> None:
        # short: Ray's socket paths live under it, and a socket path has ~100 characters
        self.root = Path(tempfile.mkdtemp(prefix="shoal-nodes-"))
        self.port = free_port()
        self.address = f"{HEAD}:{self.port}"
        self.env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "PYTHONPATH": str(ROOT), **HEALTH_CHECKS}
        self.env.pop("RAY_ADDRESS", None)

    def node_args(self, ip: str, name: str, base: int, temp: str = "") -> list[str]:
        ports = {flag: free_port() for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        return [f"--node-ip-address={ip}", "--num-cpus=1", f"--resources={{\"{name}\": 1}}",
                f"--labels=zone={name[-1]}",
                f"--temp-dir={self.root / (temp or name)}", "--disable-usage-stats",
                "--object-store-memory=100000000", f"--min-worker-port={base}",
                f"--max-worker-port={base + 99}", *(f"{k}={v}" for k, v in ports.items())]

    def start(self) -> None:
        """Start both nodes; once more, on fresh ports, if a node did not come up in time.

        On a loaded machine Ray may give up on a node's startup ("timed out during
        startup"); that is Ray's start, not what the tests check.
        """
        try:
            self._start()
        except RuntimeError:
            self.stop()
            self.root.mkdir()
            self.port = free_port()
            self.address = f"{HEAD}:{self.port}"
            self._start()

    def _start(self) -> None:
        self._ray("start", "--head", f"--port={self.port}", "--include-dashboard=false",
                  f"--dashboard-port={free_port()}", *self.node_args(HEAD, "node-a", self.base))
        self._ray("start", f"--address={self.address}",
                  *self.node_args(WORKER, "node-b", self.base + 100))

    #: the first worker port (below the ephemeral range): the head's 100, then node-b's
    base = 30000 + 200 * (os.getpid() % 10)
    #: how often node-b was started again (each time in a temporary directory of its own)
    revived = 0

    def revive_worker(self) -> None:
        """Start node-b again if a test killed its raylet (the module's tests share the
        cluster, in whatever order they run)."""
        if any("raylet" in " ".join(p.info["cmdline"] or ()) for p in self.processes("node-b")):
            return
        for _ in range(3):  # workers may be starting as their raylet dies
            self.kill("node-b")
            if wait_until(lambda: not self.processes("node-b"), 10):
                break
        # the old node-b stays "alive" in the cluster's books until Ray's health check gives
        # up on it (15-30 s); an actor placed on it meanwhile would die with it
        assert wait_until(lambda: WORKER not in self.alive_nodes(), 90, 1.0), \
            "Ray still counts the killed node-b as alive"
        self.revived += 1
        self._ray("start", f"--address={self.address}",
                  *self.node_args(WORKER, "node-b", self.base + 100,
                                  temp=f"node-b{self.revived}"))

    def alive_nodes(self) -> list[str]:
        """The addresses of the nodes the cluster counts as alive (asked by a short driver)."""
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print('alive:', json.dumps([n['NodeManagerAddress'] for n in ray.nodes() "
                "if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"could not list the cluster's nodes: {done.stderr[-3000:]}")
        # Ray may print lines of its own: the answer is the one line marked as such
        line = next(x for x in done.stdout.splitlines() if x.startswith("alive: "))
        alive: list[str] = json.loads(line.removeprefix("alive: "))
        return alive

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ray {args[:2]} failed: {done.stderr[-3000:]}")

    def processes(self, name: str = "") -> list[Any]:
        """The cluster's processes (of node ``name`` only, if given), by their command line."""
        mark = str(self.root / name)
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(mark in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        return found

    def kill(self, name: str = "", only: str = "") -> int:
        """SIGKILL the processes of node ``name`` (all if empty) whose command has ``only``."""
        killed = 0
        for proc in self.processes(name):
            try:
                if only and not any(only in part for part in proc.cmdline()):
                    continue
                proc.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.Error:  # gone meanwhile
                continue
        return killed

    def stop(self) -> None:
        for _ in range(3):  # workers may be starting as their raylet dies
            self.kill()
            if wait_until(lambda: not self.processes(), 10):
                break
        shutil.rmtree(self.root, ignore_errors=True)

    def drive(self, scenario: str, tmp: Path) -> subprocess.Popen[str]:
        """Start a driver process running ``scenario`` (see tests/ray_nodes_driver.py)."""
        config = {"address": self.address, "journal": str(tmp / "runs.db"),
                  "directory": str(tmp), "scenario": scenario}
        return subprocess.Popen([sys.executable, "-m", "tests.ray_nodes_driver",
                                 json.dumps(config)], cwd=ROOT, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    nodes = Cluster()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        assert not nodes.processes(), "processes of the test cluster outlived it"


@pytest.fixture
def cluster(two_nodes: Cluster) -> Cluster:
    """The module's cluster, with node-b up (started again if an earlier test killed it)."""
    two_nodes.revive_worker()
    return two_nodes


def report(driver: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    try:
        out, err = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        pytest.fail(f"the driver hung; its output: {err[-3000:]}")
    assert driver.returncode == 0, err[-3000:]
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def release_calls(cluster: Cluster, tmp_path: Path) -> None:
    """Once node-b is lost, end the calls' waits (see ``mark_and_wait``): write ``go``.

    Only once every process that ran a call on node-b is gone: one still alive could finish
    its call after all (its reply goes to the driver directly, not through the dead raylet).
    Calls on the head then end at once instead of after their full wait.
    """
    pids = [int(p.name.split(".")[-2]) for p in tmp_path.glob(f"*.{WORKER}.*.started")]
    assert pids, "no call started on the worker node"
    assert wait_until(lambda: all(pid_gone(pid) for pid in pids), 60), \
        "the processes of the killed node's calls outlived its raylet"
    (tmp_path / "go").touch()


def ran_on(where: str) -> str:
    """The node address of an outcome's ``where`` (``"127.0.0.3 node 4f1c..."``)."""
    ip, word, node_id = where.split(" ")
    assert word == "node" and len(node_id) == 56, where
    return ip


def test_calls_land_where_their_resources_say(cluster: Cluster, tmp_path: Path) -> None:
    data = report(cluster.drive("placed", tmp_path))
    outcomes = data["outcomes"]
    assert {o["status"] for o in outcomes.values()} == {"ok"}, outcomes
    for node_id, outcome in outcomes.items():
        where = ran_on(outcome["where"])
        assert where == outcome["value"], outcome  # recorded where the tool itself ran
        if node_id in ("a0", "a1", "a2", "not-zone-b"):
            assert where == HEAD, outcome
        elif node_id in ("b0", "b1", "b2", "approved", "zone-b"):
            assert where == WORKER, outcome
        assert data["journal"][node_id] == outcome["where"]  # and so says the journal
    # calls that reserve nothing run on shoal's actors, placed one per node as a preference
    # (Ray may put one elsewhere): each says where its actor ran
    assert {ran_on(outcomes[f"pooled{i}"]["where"]) for i in range(2)} <= {HEAD, WORKER}
    # the approval was asked and recorded on the driver, for a call that ran on node-b
    assert data["asked"] == [{"node_id": "approved", "pid": data["pid"]}]
    assert data["approvals"] == [{"node_id": "approved", "decision": "approved"}]


def test_a_node_killed_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    driver = cluster.drive("node_lost", tmp_path)
    on_worker = f".{WORKER}."
    started = wait_until(lambda: any(on_worker in p.name for p in tmp_path.iterdir())
                         or driver.poll() is not None, 60)
    assert started and driver.poll() is None, "no call started on the worker node"
    assert cluster.kill("node-b", only="raylet") == 1  # the node's raylet: the node is lost
    release_calls(cluster, tmp_path)
    data = report(driver)
    outcomes = data["outcomes"]
    # nothing lost: every call ended ok, and finished on the head
    assert {o["status"] for o in outcomes.values()} == {"ok"}, outcomes
    assert {ran_on(o["where"]) for o in outcomes.values()} == {HEAD}, outcomes
    assert {o["value"] for o in outcomes.values()} == {HEAD}
    # the call that was on the worker node failed there and was retried by shoal
    lost = [a for a in data["attempts"] if a["status"] != "ok"]
    assert lost, data["attempts"]
    for attempt in lost:
        assert "WorkerCrashedError" in attempt["error"], attempt
        assert "NodeDiedError" in attempt["error"], attempt
        assert ran_on(attempt["where"]) == WORKER, attempt
        retried = outcomes[attempt["node_id"]]
        assert retried["attempts"] > attempt["attempt"], retried
    assert data["journal"] == {k: o["where"] for k, o in outcomes.items()}


# ---- agents in Ray actors, Agent(isolation="ray") ------------------------------------------


def test_agents_land_where_their_resources_say(cluster: Cluster, tmp_path: Path) -> None:
    data = report(cluster.drive("agents_placed", tmp_path))
    agents = data["agents"]
    assert {a["status"] for a in agents.values()} == {"ok"}, agents
    assert agents["lead"]["where"] == socket.gethostname()  # the lead runs on the driver
    placed = {"lead/on_a#1": HEAD, "lead/on_b#1": WORKER, "lead/zone_b#1": WORKER}
    for lineage, ip in placed.items():
        assert ran_on(agents[lineage]["where"]) == ip, agents[lineage]
        # the subagent's call in the lead's turn records where the agent ran, and so does
        # the journal (on the driver)
        call_where = data["calls"][lineage]["where"]
        assert call_where == agents[lineage]["where"]
        assert data["journal"][f"{data['tree_run']}/lead/steps:{lineage.split('/')[-1]}"] \
            == call_where
        # the agent's own calls ran in its actor, on the same node, and say so
        own = {k: c for k, c in data["calls"].items() if k.startswith(f"{lineage}/")}
        assert own and all(c["status"] == "ok" for c in own.values()), own
        assert {c["where"] for c in own.values()} == {call_where}, own
        assert {c["value"] for c in own.values()} == {ip}, own
    # an agent as a plan node: its outcome names the node its actor ran on
    node = data["outcomes"]["agent-node"]
    assert node["status"] == "ok" and ran_on(node["where"]) == WORKER, node
    assert data["journal"][f"{data['plan_run']}:agent-node"] == node["where"]
    # the approval of the agent on node-b was asked of the driver's approver, and journaled
    # in the driver's journal
    assert data["asked"] == [{"node_id": "approved_ip#1", "pid": data["pid"]}]
    assert data["approvals"] == [{"node_id": "approved_ip#1", "decision": "approved"}]


def test_agents_on_a_node_killed_mid_run_give_their_parents_the_cause(
        cluster: Cluster, tmp_path: Path) -> None:
    driver = cluster.drive("agents_lost", tmp_path)
    on_worker = f".{WORKER}."

    def marked(name: str) -> bool:
        return any(p.name.startswith(name) and on_worker in p.name for p in tmp_path.iterdir())

    started = wait_until(lambda: (marked("slow_b") and (marked("r0") or marked("r1")))
                         or driver.poll() is not None, 90)
    assert started and driver.poll() is None, "no agent started its work on the worker node"
    assert cluster.kill("node-b", only="raylet") == 1  # the node's raylet: the node is lost
    release_calls(cluster, tmp_path)
    data = report(driver, timeout=150)
    agents, calls = data["agents"], data["calls"]
    # the tree: the lead finished on the driver; its subagent on node-b failed naming the
    # cause and where it was, its sibling on node-a finished
    assert agents["lead"]["status"] == "ok", agents["lead"]
    assert agents["lead/slow_a#1"]["status"] == "ok"
    assert ran_on(agents["lead/slow_a#1"]["where"]) == HEAD
    lost = agents["lead/slow_b#1"]
    assert lost["status"] == "failed" and ran_on(lost["where"]) == WORKER, lost
    assert "the Ray actor running agent lead/slow_b#1 died" in lost["error"], lost
    assert "ActorDiedError" in lost["error"], lost
    assert f"its node has died. Node Id: {lost['where'].split()[-1]}" in lost["error"], lost
    assert calls["lead/slow_b#1"]["status"] == "failed"
    assert calls["lead/slow_b#1"]["where"] == lost["where"]  # the failed call says where
    assert "died" in calls["lead/slow_b#1"]["value"]  # and the lead's model was told why
    # the plan: both agent nodes finished on the head; the one that was on node-b failed
    # there and was retried by shoal's policy
    outcomes = data["outcomes"]
    assert {o["status"] for o in outcomes.values()} == {"ok"}, outcomes
    assert {ran_on(o["where"]) for o in outcomes.values()} == {HEAD}, outcomes
    failed = [a for a in data["attempts"] if a["status"] != "ok"]
    assert len(failed) == 1, data["attempts"]
    assert ran_on(failed[0]["where"]) == WORKER, failed
    assert "ActorDiedError" in failed[0]["error"], failed
    assert "its node has died" in failed[0]["error"], failed
    assert outcomes[failed[0]["node_id"]]["attempts"] == 2
    # nothing lost: every outcome is journaled on the driver, as the run reported it
    assert {k.split(":", 1)[1]: w for k, w in data["journal"].items()
            if k.startswith(f"{data['plan_run']}:")} == {
        k: o["where"] for k, o in outcomes.items()}
