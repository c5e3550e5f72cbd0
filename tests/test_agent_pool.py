"""dragon-agent's shared-memory pool (--shm-pool-mb, --shm-dir): the file exists while the agent
runs, Register/ListNodes and `dragonctl nodes` show it, and it goes when the agent stops (SIGTERM,
SIGINT, `dragond stop`); a SIGKILLed agent's pool goes at the next agent start on that directory.

Agents started here use a private --shm-dir (a directory under /dev/shm made by the test and
removed afterwards), so that tests never see each other's pools; only the `dragond stop` test uses
the default /dev/shm (dragond starts that agent) and looks only at its own agent's file.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import Head, binary, processes_of_run, start_head, stop_head, wait_for

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


@pytest.fixture
def shm_dir():
    path = Path(tempfile.mkdtemp(prefix="dragon-agent-pool-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_agent(head: Head, node: str, shm: Path, *extra: str) -> subprocess.Popen:
    """A dragon-agent started by the test (dragond --agents none), its pool in `shm`."""
    return subprocess.Popen(
        [binary("dragon-agent"), "--head", head.address, "--node-id", node, "--run-dir",
         str(head.run_dir), "--workers", "1", "--python", sys.executable, "--shm-dir", str(shm),
         *extra],
        env=head.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def node(head: Head, node_id: str) -> dict:
    for n in head.ctl_json("nodes")["nodes"]:
        if n["node_id"] == node_id:
            return n
    return {}


def ready(head: Head, node_id: str) -> dict:
    return wait_for(lambda: (lambda n: n if n.get("state") == "ready" else None)(node(head, node_id)),
                    60, f"agent {node_id} to be ready")


def pools(shm: Path) -> list[str]:
    # Pool files only: an agent with a data plane also has its socket "<pool>.sock" there.
    return sorted(p.name for p in shm.iterdir()
                  if p.name.startswith("dragon-pool-") and not p.name.endswith(".sock"))


def stop_agent(agent: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if agent.poll() is None:
        agent.send_signal(sig)
    try:
        return agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        raise AssertionError(f"dragon-agent did not exit within 30 s of signal {sig}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pool_exists_is_listed_and_goes_with_the_agent(tmp_path, shm_dir, sig):
    head = start_head(tmp_path, "--agents", "none")
    agent = None
    try:
        agent = start_agent(head, "a", shm_dir, "--shm-pool-mb", "64")
        n = ready(head, "a")
        expected = shm_dir / f"dragon-pool-{os.geteuid()}-a-{agent.pid}"
        assert n["shm_pool_path"] == str(expected)
        assert int(n["shm_pool_bytes"]) == 64 * MiB
        assert expected.exists()
        assert pools(shm_dir) == [expected.name]
        # Lazily backed: the file is as large as the pool but holds (almost) no pages yet.
        assert expected.stat().st_size >= 64 * MiB
        assert expected.stat().st_blocks * 512 < 64 * MiB
        # The heartbeat's free bytes and blocks: an empty pool.
        n = wait_for(lambda: (lambda n: n if int(n.get("shm_pool_free_bytes", 0)) == 64 * MiB
                              else None)(node(head, "a")), 30, "the pool's free bytes")
        assert int(n.get("shm_pool_blocks", 0)) == 0
        text = head.ctl("nodes").stdout
        assert "SHM" in text.splitlines()[0].split(), text
        assert "0B/64.0MiB" in text, text

        assert stop_agent(agent, sig) == 0
        assert pools(shm_dir) == []
        log = (head.run_dir / "agent-a.log").read_text()
        assert f"shared-memory pool {expected} removed" in log
    finally:
        if agent is not None and agent.poll() is None:
            stop_agent(agent)
        stop_head(head)


def test_sigkilled_agents_pool_is_removed_at_the_next_start(tmp_path, shm_dir):
    head = start_head(tmp_path, "--agents", "none")
    agents = []
    try:
        agents.append(start_agent(head, "a", shm_dir, "--shm-pool-mb", "16"))
        ready(head, "a")
        stale = f"dragon-pool-{os.geteuid()}-a-{agents[0].pid}"
        assert pools(shm_dir) == [stale]
        agents[0].kill()
        agents[0].wait(timeout=30)
        assert pools(shm_dir) == [stale], "a SIGKILLed agent cannot remove its pool"

        agents.append(start_agent(head, "b", shm_dir, "--shm-pool-mb", "16"))
        ready(head, "b")
        assert pools(shm_dir) == [f"dragon-pool-{os.geteuid()}-b-{agents[1].pid}"]
        removed = f"removed 1 stale shared-memory pool(s) of dead agents from {shm_dir}"
        wait_for(lambda: removed in (head.run_dir / "agent-b.log").read_text(), 10,
                 "agent b's log to say so")  # the log is flushed every second
        assert stop_agent(agents[1]) == 0
        assert pools(shm_dir) == []
    finally:
        for agent in agents:
            if agent.poll() is None:
                stop_agent(agent)
        stop_head(head)


def test_janitor_reclaims_the_blocks_of_a_killed_client(tmp_path, shm_dir):
    """A process on the node attaches the agent's pool and allocates a block, then is SIGKILLed:
    within about a second the agent's janitor frees the block (NodeInfo and the log say so)."""
    head = start_head(tmp_path, "--agents", "none")
    agent = client = None
    try:
        agent = start_agent(head, "a", shm_dir, "--shm-pool-mb", "32")
        path = ready(head, "a")["shm_pool_path"]
        client = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time\n"
             "from dragon_parsl import _core\n"
             "pool = _core.ShmPool.attach(sys.argv[1])\n"
             "pool.allocate(1 << 20)\n"
             "print('allocated', flush=True)\n"
             "time.sleep(600)\n", path],
            stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "allocated"
        n = wait_for(lambda: (lambda n: n if int(n.get("shm_pool_blocks", 0)) == 1 else None)(
            node(head, "a")), 30, "the heartbeat to show the client's block")
        assert int(n["shm_pool_free_bytes"]) == 31 * MiB
        assert "1.0MiB/32.0MiB" in head.ctl("nodes").stdout
        client.kill()
        client.wait(timeout=30)
        wait_for(lambda: int(node(head, "a").get("shm_pool_blocks", 0)) == 0, 30,
                 "the janitor to free the dead client's block")
        assert int(node(head, "a")["shm_pool_free_bytes"]) == 32 * MiB
        line = f"reclaimed {1 << 20} bytes of dead process {client.pid} from the shared-memory pool"
        wait_for(lambda: line in (head.run_dir / "agent-a.log").read_text(), 10,
                 "the agent's log to say so")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        if client is not None:
            client.stdout.close()
        if agent is not None:
            stop_agent(agent)
        stop_head(head)
    assert pools(shm_dir) == []


def test_zero_means_no_pool(tmp_path, shm_dir):
    head = start_head(tmp_path, "--agents", "none")
    agent = None
    try:
        agent = start_agent(head, "a", shm_dir, "--shm-pool-mb", "0")
        n = ready(head, "a")
        assert n.get("shm_pool_path", "") == ""
        assert int(n.get("shm_pool_bytes", 0)) == 0
        assert pools(shm_dir) == []
        assert "SHM" not in head.ctl("nodes").stdout.splitlines()[0].split()
        wait_for(lambda: "no shared-memory pool (--shm-pool-mb 0)" in
                 (head.run_dir / "agent-a.log").read_text(), 10, "the agent's log to say so")
    finally:
        if agent is not None:
            stop_agent(agent)
        stop_head(head)


def test_dragond_stop_removes_the_pool(tmp_path):
    """The agent dragond starts makes its pool in /dev/shm (the default), with the default size;
    `dragond stop` ends it cleanly, and the pool goes with it."""
    home = tmp_path / "home"
    env = dict(os.environ, DRAGON_HOME=str(home), DRAGON_BIN_DIR=str(Path(binary("dragond")).parent))
    env.pop("DRAGON_HEAD", None)
    env.pop("DRAGON_TOKEN", None)
    run_dir = home / "runs" / "pool"
    cp = subprocess.run([binary("dragond"), "start", "--workers", "1", "--python", sys.executable,
                         "--run-dir", str(run_dir)], env=env, capture_output=True, text=True,
                        timeout=90)
    assert cp.returncode == 0, cp.stderr
    path = None
    try:
        def listed():
            out = subprocess.run([binary("dragonctl"), "nodes", "--json"], env=env,
                                 capture_output=True, text=True, timeout=30)
            import json
            nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
            return nodes[0] if nodes and nodes[0].get("state") == "ready" else None
        n = wait_for(listed, 60, "the agent to be ready")
        path = Path(n["shm_pool_path"])
        assert path.parent == Path("/dev/shm")
        assert path.name == f"dragon-pool-{os.geteuid()}-{n['node_id'].replace('/', '_')}-{n['agent_pid']}"
        assert path.exists()
        assert int(n["shm_pool_bytes"]) > 0 and int(n["shm_pool_bytes"]) % MiB == 0
    finally:
        stop = subprocess.run([binary("dragond"), "stop", "--run-dir", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not processes_of_run(run_dir), 20, "the run's processes to exit")
    assert path is not None and not path.exists(), f"{path} is left after dragond stop"
    agent_logs = "".join(p.read_text() for p in run_dir.glob("agent-*.log"))
    assert f"shared-memory pool {path} removed" in agent_logs


@pytest.mark.parametrize("args, message", [
    (["--shm-pool-mb", "-1"], "--shm-pool-mb -1 is negative (0: no pool)"),
    (["--shm-pool-mb", "lots"], "--shm-pool-mb must be a whole number of MiB"),
    (["--shm-pool-mb", str(1 << 40)], "is larger than the file system of --shm-dir"),
    (["--shm-dir", "/no/such/dir"], "--shm-dir /no/such/dir: No such file or directory"),
], ids=["negative", "not-a-number", "too-large", "no-dir"])
def test_bad_pool_flags_are_clear_errors(tmp_path, shm_dir, args, message):
    cp = subprocess.run(
        [binary("dragon-agent"), "--head", "127.0.0.1:1", "--node-id", "x", "--run-dir",
         str(tmp_path / "run"), "--shm-dir", str(shm_dir), *args],
        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1
    assert message in cp.stderr, cp.stderr
    assert pools(shm_dir) == []
