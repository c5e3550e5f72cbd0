"""dragon-agent's data plane (issue 14): with a pool and --ucx (the default) the agent opens a UCX
worker, serves AgentData on `<pool file>.sock` (mode 0600) and publishes both in Register, which
ListNodes/`dragonctl nodes --json` show; a process of the node asks for transfers through
_core.agent_pull/agent_push. --noucx gives a node without a data plane; the socket goes with the
agent (SIGTERM, `dragond stop`), and a SIGKILLed agent's socket goes at the next agent start.

Agents started here use a private --shm-dir under /dev/shm (removed afterwards), like
tests/test_agent_pool.py; only the `dragond stop` test uses the default /dev/shm and looks only at
its own agent's files. Transfers between nodes on different hosts are tests/test_shm_cross_node.py's;
here two agents of one host (two nodes, two pools) stand in for them.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import Head, binary, processes_of_run, start_head, stop_head, wait_for
from dragon_parsl import _core

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


@pytest.fixture
def shm_dir():
    path = Path(tempfile.mkdtemp(prefix="dragon-data-plane-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_agent(head: Head, node: str, shm: Path, *extra: str) -> subprocess.Popen:
    """A dragon-agent started by the test (dragond --agents none), its pool in `shm`."""
    return subprocess.Popen(
        [binary("dragon-agent"), "--head", head.address, "--node-id", node, "--run-dir",
         str(head.run_dir), "--workers", "1", "--python", sys.executable, "--shm-dir", str(shm),
         "--shm-pool-mb", "64", *extra],
        env=head.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_agent(agent: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if agent.poll() is None:
        agent.send_signal(sig)
    try:
        return agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        raise AssertionError(f"dragon-agent did not exit within 30 s of signal {sig}")


def node(head: Head, node_id: str) -> dict:
    for n in head.ctl_json("nodes")["nodes"]:
        if n["node_id"] == node_id:
            return n
    return {}


def ready(head: Head, node_id: str) -> dict:
    return wait_for(lambda: (lambda n: n if n.get("state") == "ready" else None)(node(head, node_id)),
                    60, f"agent {node_id} to be ready")


def files(shm: Path) -> list[str]:
    return sorted(p.name for p in shm.iterdir())


def agent_log(head: Head, node_id: str) -> str:
    return (head.run_dir / f"agent-{node_id}.log").read_text(errors="replace")


def worker_environ(node_id: str) -> dict:
    """The environment of a Python worker of node `node_id` (found through /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"dragon_parsl.worker" not in cmd:
            continue
        pairs = dict(kv.split("=", 1) for kv in env.decode(errors="replace").split("\0") if "=" in kv)
        if pairs.get("DRAGON_NODE_ID") == node_id:
            return pairs
    return {}


@pytest.fixture
def two_agents(tmp_path, shm_dir):
    """A head and two agents of this host with data planes, nodes "a" and "b"."""
    head = start_head(tmp_path, "--agents", "none")
    agents = {}
    try:
        for name in ("a", "b"):
            agents[name] = start_agent(head, name, shm_dir)
        nodes = {name: ready(head, name) for name in agents}
        yield head, agents, nodes
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                stop_agent(agent)
        stop_head(head)
    assert files(shm_dir) == [], "pools or sockets left after the agents stopped"


def test_node_list_shows_the_data_plane_and_the_socket_is_private(two_agents, shm_dir):
    head, agents, nodes = two_agents
    a = nodes["a"]
    pool = shm_dir / f"dragon-pool-{os.geteuid()}-a-{agents['a'].pid}"
    assert a["shm_pool_path"] == str(pool)
    assert a["data_socket"] == f"{pool}.sock"
    # bytes fields are base64 in JSON
    assert len(base64.b64decode(a["ucx_address"])) > 0
    assert len(base64.b64decode(a["shm_pool_rkey"])) > 0
    assert int(a["shm_pool_address"]) > 0
    assert a["ucx_address"] != nodes["b"]["ucx_address"]
    mode = os.lstat(a["data_socket"]).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    # The text table is the one it was (no data plane columns).
    header = head.ctl("nodes").stdout.splitlines()[0].split()
    assert "UCX" not in header and "SOCKET" not in header, header
    # ListNodes itself (the gRPC the peer directory uses)
    from dragon_parsl._proto import head_pb2, head_pb2_grpc
    with head.channel() as channel:
        reply = head_pb2_grpc.HeadServiceStub(channel).ListNodes(head_pb2.ListNodesRequest(), timeout=30)
    listed = {n.node_id: n for n in reply.nodes}
    assert listed["a"].ucx_address == base64.b64decode(a["ucx_address"])
    assert listed["b"].data_socket == nodes["b"]["data_socket"]
    # Workers learn where their node's task data is.
    env = wait_for(lambda: worker_environ("a") or None, 60, "a worker of node a")
    assert env["DRAGON_SHM_POOL"] == str(pool)
    assert env["DRAGON_AGENT_DATA_SOCKET"] == f"{pool}.sock"
    wait_for(lambda: f"AgentData service on unix:{pool}.sock (mode 0600)" in agent_log(head, "a"),
             10, "the agent's log to say so")  # the log is flushed every second


def test_pull_and_push_through_the_agents(two_agents):
    """A local pull (a copy within the node's pool), a pull from the other node's pool, and a push
    into it, byte for byte, each new block owned by the pid asked for."""
    head, agents, nodes = two_agents
    sock_a = nodes["a"]["data_socket"]
    pool_a = _core.ShmPool.attach(nodes["a"]["shm_pool_path"])
    pool_b = _core.ShmPool.attach(nodes["b"]["shm_pool_path"])
    me = os.getpid()
    data = os.urandom(3 * MiB + 17)
    try:
        src = pool_a.allocate(len(data))
        memoryview(pool_a.block(src))[:len(data)] = data

        local = _core.agent_pull(sock_a, "a", src, len(data), me, 10)
        assert len(local) == 24 and local != src
        assert bytes(memoryview(pool_a.block(local))[:len(data)]) == data
        assert pool_a.owners() == [me]
        assert pool_a.free_if_owner(local, me)

        # b's block, pulled into a's pool by a's agent (UCX between the two agents).
        src_b = pool_b.allocate(len(data))
        memoryview(pool_b.block(src_b))[:len(data)] = data[::-1]
        pulled = _core.agent_pull(sock_a, "b", src_b, len(data), me, 10)
        assert bytes(memoryview(pool_a.block(pulled))[:len(data)]) == data[::-1]
        assert pool_a.free_if_owner(pulled, me)

        # a's block pushed into b's pool (b's agent pulls it), owned there by us.
        pushed = _core.agent_push(sock_a, "b", src, 1000, me, 10)
        assert bytes(memoryview(pool_b.block(pushed))[:1000]) == data[:1000]
        assert pool_b.free_if_owner(pushed, me)

        pool_a.free(src)
        pool_b.free(src_b)
        assert pool_a.stats()["blocks_in_use"] == 0 and pool_b.stats()["blocks_in_use"] == 0
    finally:
        pool_a.close()
        pool_b.close()


def test_errors_name_the_ref_the_node_and_the_socket(two_agents, tmp_path):
    head, agents, nodes = two_agents
    sock = nodes["a"]["data_socket"]
    pool = _core.ShmPool.attach(nodes["a"]["shm_pool_path"])
    try:
        src = pool.allocate(4096)
        with pytest.raises(_core.DataPlaneError, match=r"INVALID_ARGUMENT: BlockTransfer\.ref") as bad_ref:
            _core.agent_pull(sock, "a", b"not a block reference", 10, os.getpid(), 5)
        assert bad_ref.value.code == "INVALID_ARGUMENT"
        with pytest.raises(_core.DataPlaneError, match=r"NOT_FOUND: node nowhere is not in the node list") as unknown:
            _core.agent_pull(sock, "nowhere", src, 10, os.getpid(), 5)
        assert unknown.value.code == "NOT_FOUND"
        with pytest.raises(_core.DataPlaneError, match="INVALID_ARGUMENT"):
            _core.agent_pull(sock, "a", src, 1 << 30, os.getpid(), 5)  # more than the block
        missing = str(tmp_path / "no-agent.sock")
        with pytest.raises(_core.DataPlaneError,
                           match=f"cannot reach the agent's data service at {missing}"):
            _core.agent_push(missing, "a", src, 10, os.getpid(), 5)
        assert isinstance(unknown.value, RuntimeError)
        with pytest.raises(ValueError, match="owner_pid 0"):
            _core.agent_pull(sock, "a", src, 10, 0, 5)
        pool.free(src)
    finally:
        pool.close()


def test_noucx_gives_a_node_without_a_data_plane(tmp_path, shm_dir):
    head = start_head(tmp_path, "--agents", "none")
    agents = []
    try:
        agents.append(start_agent(head, "plain", shm_dir, "--noucx"))
        agents.append(start_agent(head, "ucx", shm_dir))
        plain = ready(head, "plain")
        ucx = ready(head, "ucx")
        assert plain["shm_pool_path"]  # a pool all the same
        for field in ("ucx_address", "shm_pool_rkey", "data_socket"):
            assert not plain.get(field), (field, plain)
        assert not int(plain.get("shm_pool_address", 0))
        assert not Path(plain["shm_pool_path"] + ".sock").exists()
        env = wait_for(lambda: worker_environ("plain") or None, 60, "a worker of node plain")
        assert env["DRAGON_SHM_POOL"] == plain["shm_pool_path"]
        assert "DRAGON_AGENT_DATA_SOCKET" not in env
        wait_for(lambda: "no data plane (--noucx)" in agent_log(head, "plain"), 10,
                 "the agent's log to say so")
        # A node with a data plane asked to pull from it: NotFound saying why.
        pool = _core.ShmPool.attach(plain["shm_pool_path"])
        try:
            src = pool.allocate(64)
            with pytest.raises(_core.DataPlaneError, match=r"NOT_FOUND: node plain has no data plane"):
                _core.agent_pull(ucx["data_socket"], "plain", src, 64, os.getpid(), 5)
            pool.free(src)
        finally:
            pool.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                stop_agent(agent)
        stop_head(head)
    assert files(shm_dir) == []


@pytest.mark.parametrize("why", ["bad-ucx-tls", "socket-path-too-long"])
def test_a_data_plane_that_cannot_start_is_a_warning_not_a_failed_agent(tmp_path, shm_dir, why):
    head = start_head(tmp_path, "--agents", "none")
    agent = None
    shm = shm_dir
    env_extra = {}
    if why == "bad-ucx-tls":
        env_extra["UCX_TLS"] = "no_such_transport"
    else:
        shm = shm_dir / ("d" * 100)  # <pool file>.sock is longer than a Unix socket path may be
        shm.mkdir()
    try:
        agent = subprocess.Popen(
            [binary("dragon-agent"), "--head", head.address, "--node-id", "a", "--run-dir",
             str(head.run_dir), "--workers", "1", "--python", sys.executable, "--shm-dir", str(shm),
             "--shm-pool-mb", "16"],
            env=head.agent_env(**env_extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = ready(head, "a")
        assert n["shm_pool_path"]
        assert not n.get("ucx_address") and not n.get("data_socket")
        wait_for(lambda: "running without a data plane (task data across nodes goes inline)" in
                 agent_log(head, "a"), 10, "the agent's warning")
        if why == "socket-path-too-long":
            assert "more than a Unix socket's" in agent_log(head, "a")
        env = wait_for(lambda: worker_environ("a") or None, 60, "a worker of node a")
        assert "DRAGON_AGENT_DATA_SOCKET" not in env
        assert stop_agent(agent) == 0
        assert [p.name for p in shm.iterdir()] == []
    finally:
        if agent is not None and agent.poll() is None:
            stop_agent(agent)
        stop_head(head)


def test_sigkilled_agents_socket_is_removed_at_the_next_start(tmp_path, shm_dir):
    head = start_head(tmp_path, "--agents", "none")
    agents = []
    try:
        agents.append(start_agent(head, "a", shm_dir))
        first = ready(head, "a")
        stale_pool = Path(first["shm_pool_path"])
        stale_socket = Path(first["data_socket"])
        agents[0].kill()
        agents[0].wait(timeout=30)
        assert stale_socket.exists(), "a SIGKILLed agent cannot remove its socket"

        # Another node's agent on the directory: the dead agent's pool and socket go.
        agents.append(start_agent(head, "b", shm_dir))
        b = ready(head, "b")
        assert not stale_pool.exists()
        assert not stale_socket.exists()
        pool_b = Path(b["shm_pool_path"])
        assert files(shm_dir) == sorted([pool_b.name, pool_b.name + ".sock"])
        wait_for(lambda: f"removed 1 data socket(s) of dead agents from {shm_dir}" in agent_log(head, "b"),
                 10, "agent b's log to say so")
        assert stop_agent(agents[1]) == 0
        assert files(shm_dir) == []
    finally:
        for agent in agents:
            if agent.poll() is None:
                stop_agent(agent)
        stop_head(head)


def test_restarted_agent_of_the_node_replaces_its_socket(tmp_path, shm_dir):
    """A SIGKILLed agent started again on its node adopts its pool (same file) and serves on the
    same socket path, replacing the dead socket file; a pull through it works."""
    head = start_head(tmp_path, "--agents", "none")
    agents = []
    try:
        agents.append(start_agent(head, "a", shm_dir))
        first = ready(head, "a")
        agents[0].kill()
        agents[0].wait(timeout=30)
        agents.append(start_agent(head, "a", shm_dir))
        second = wait_for(lambda: (lambda n: n if n.get("state") == "ready" and
                                   int(n.get("agent_pid", 0)) == agents[1].pid else None)(node(head, "a")),
                          60, "the new agent of node a")
        assert second["data_socket"] == first["data_socket"]  # the adopted pool's
        assert stat.S_IMODE(os.lstat(second["data_socket"]).st_mode) == 0o600
        pool = _core.ShmPool.attach(second["shm_pool_path"])
        try:
            src = pool.allocate(100)
            copy = _core.agent_pull(second["data_socket"], "a", src, 100, os.getpid(), 10)
            pool.free(copy)
            pool.free(src)
        finally:
            pool.close()
    finally:
        for agent in agents:
            if agent.poll() is None:
                stop_agent(agent)
        stop_head(head)
    assert files(shm_dir) == []


def test_dragond_stop_leaves_no_socket_and_no_pool(tmp_path):
    """The agent dragond starts (default /dev/shm, default --ucx) has a data plane; after
    `dragond stop` neither its socket nor its pool is left."""
    home = tmp_path / "home"
    env = dict(os.environ, DRAGON_HOME=str(home), DRAGON_BIN_DIR=str(Path(binary("dragond")).parent))
    env.pop("DRAGON_HEAD", None)
    env.pop("DRAGON_TOKEN", None)
    run_dir = home / "runs" / "dataplane"
    cp = subprocess.run([binary("dragond"), "start", "--workers", "1", "--python", sys.executable,
                         "--run-dir", str(run_dir)], env=env, capture_output=True, text=True,
                        timeout=90)
    assert cp.returncode == 0, cp.stderr
    n = None
    try:
        def listed():
            out = subprocess.run([binary("dragonctl"), "nodes", "--json"], env=env,
                                 capture_output=True, text=True, timeout=30)
            nodes = json.loads(out.stdout).get("nodes", []) if out.returncode == 0 else []
            return nodes[0] if nodes and nodes[0].get("state") == "ready" else None
        n = wait_for(listed, 60, "the agent to be ready")
        assert n["data_socket"] == n["shm_pool_path"] + ".sock"
        assert Path(n["data_socket"]).exists()
        pool = _core.ShmPool.attach(n["shm_pool_path"])
        try:
            src = pool.allocate(5000)
            memoryview(pool.block(src))[:5000] = b"x" * 5000
            copy = _core.agent_pull(n["data_socket"], n["node_id"], src, 5000, os.getpid(), 10)
            assert bytes(memoryview(pool.block(copy))[:5000]) == b"x" * 5000
            pool.free(copy)
            pool.free(src)
        finally:
            pool.close()
    finally:
        stop = subprocess.run([binary("dragond"), "stop", "--run-dir", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not processes_of_run(run_dir), 20, "the run's processes to exit")
    assert n is not None
    assert not Path(n["data_socket"]).exists(), f"{n['data_socket']} is left after dragond stop"
    assert not Path(n["shm_pool_path"]).exists(), f"{n['shm_pool_path']} is left after dragond stop"
