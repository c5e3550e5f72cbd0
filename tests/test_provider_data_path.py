"""Large task data of a workflow whose blocks run elsewhere (DragonExecutor(provider=...) on a
login node, issue 14): the executor decides from the live agents, as without a provider, whether
its task data goes through its own pool and data plane (dragon_parsl.client_data_plane), an
agent's pool on this host, or inline through the head.

Policy (no binary; the head's ListNodes is a stub, the client's plane a stand-in):

- SlurmProvider, no agent yet (a burst submitted before the first block starts): the client's
  plane, counted as no fallback; blocks elsewhere all with a data plane: the client's plane; one
  agent without a data plane: inline, counted (client_plane_fallbacks); an agent on this host with
  a pool and a data plane: its pool, as today; ListNodes failing: inline, counted;
- an agent without a data plane joining after the client's plane was chosen: seen at the next
  ListNodes (asked again every AGENT_WAIT_RECHECK_S while none was live), later tasks go inline;
  blocks that all left: the client's plane again;
- LocalProvider with no agent yet: inline until its local agent registers (as before).

On the Slurm test bed (tests/testbed_fixtures.py: slurmctld and slurmd n1..n4 in network
namespaces; this process, in the root namespace, is the login node), real sbatch/srun, dragond,
dragon-agent and workers, UCX over TCP (UCX_TLS=tcp,self: UCX would use shared memory between
namespaces of one machine otherwise):

- SlurmProvider, one block of two nodes, 100 tasks with a 2 MiB numpy argument and a 2 MiB
  result submitted before the block starts: every result byte for byte right, every argument
  pulled by the worker's agent from the client's pool and every result pushed into it (the
  workers' and the client's counters), no fallback, the head carrying a small fraction of the
  task data (StatusReply.relayed_task_bytes); the client's pool never in /dev/shm, its plane
  stopped at shutdown; nothing left (no agent or worker in any namespace, the queue empty);
- a block that leaves mid-run (two blocks of one node, block 0's job scancelled): its tasks run
  again on the other block and pull their arguments again from the client's pool (which holds
  them until each task ends); no fallback, every result pushed;
- a block whose agent has no data plane (its UCX cannot start) joining after a burst was packed
  for the client's pool: the head, which does not know where task data is, places those tasks on
  it and each fails with SharedMemoryError naming the node, the client's pool and the fix; later
  tasks go inline (counted). With Config(retries=1) Parsl submits the failed ones again and they
  go inline too: every result right.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from test_providers import nodes_of, provider_dfk, slurm_provider, tasks_of, wait_no_job
from testbed_fixtures import no_service_left, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(120)

THRESHOLD = 64 * 1024
MIB2 = (512, 512)  # float64: 2 MiB


# ---------------------------------------------------------------- the executor's policy

class _Head:
    """The head's ListNodes as the executor sees it (its answers changed by the test)."""

    def __init__(self, nodes=(), error=None):
        self.nodes, self.error, self.calls = list(nodes), error, 0

    def ListNodes(self, request, timeout):
        from dragon_parsl._proto import head_pb2
        self.calls += 1
        if self.error is not None:
            raise self.error
        return head_pb2.ListNodesReply(nodes=self.nodes)


class _Plane:
    """Stands in for ClientDataPlane: its place, and how often it was asked."""

    def __init__(self):
        from dragon_parsl import shm_pool_path
        self.asked = 0
        self.own = shm_pool_path.PoolPlace("/dev/shm/dragon-client-pool-test", "client-7", own=True)

    def place(self, session_id, head_address, token, tls_ca):
        assert session_id == 7
        self.asked += 1
        return self.own


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def _agent(host, data_plane=True, state="ready", pid=None):
    import socket

    from dragon_parsl._proto import head_pb2
    here = host == "self"
    return head_pb2.NodeInfo(node_id=f"{host}-b0", host=socket.gethostname() if here else host,
                             agent_pid=pid or (os.getpid() if here else 4242), state=state,
                             shm_pool_path=f"/dev/shm/pool-{host}" if data_plane else "",
                             data_socket=f"/dev/shm/pool-{host}.sock" if data_plane else "",
                             ucx_address=b"ucx" if data_plane else b"")


@pytest.fixture
def clock(monkeypatch):
    from dragon_parsl import submit_path
    c = _Clock()
    monkeypatch.setattr(submit_path, "time", c)
    return c


def executor_with(provider, head, monkeypatch):
    """A DragonExecutor with ``provider`` as after start() (an embedded head, a session), whose
    head is ``head`` and whose client plane is a stand-in."""
    from dragon_parsl import DragonExecutor, shm_pool_path
    ex = DragonExecutor(label="policy", provider=provider, head_listen="127.0.0.1")
    monkeypatch.setattr(ex, "_stub", lambda: head)
    ex.local_head = object()  # the embedded head (with --launcher none unless LocalProvider)
    ex.session = types.SimpleNamespace(welcome=types.SimpleNamespace(session_id=7))
    ex.head_address = "10.200.0.1:1"
    ex.shm = shm_pool_path.PoolDataPath(THRESHOLD)
    ex.client_plane = _Plane()
    return ex


def slurm():
    from parsl.providers import SlurmProvider
    return SlurmProvider(partition="debug", init_blocks=0)


@pytest.mark.parametrize("agents, where, fallbacks", [
    ([], "client", 0),                                                  # before the first block
    ([_agent("n1"), _agent("n2")], "client", 0),                        # every block with a data plane
    ([_agent("n1"), _agent("n2", data_plane=False)], None, 1),          # one without: inline, counted
    ([_agent("n1"), _agent("n2", data_plane=False, state="lost")], "client", 0),  # a lost one runs nothing
    ([_agent("n1", state="gone")], "client", 0),                        # all left: the next blocks
    ([_agent("self"), _agent("n1")], "local", 0),                       # an agent here: its pool
])
def test_slurm_provider_chooses_from_the_live_agents(agents, where, fallbacks, clock, monkeypatch):
    head = _Head(agents)
    ex = executor_with(slurm(), head, monkeypatch)
    place = ex._task_data_place()
    expected = {"client": ex.client_plane.own, None: None}.get(where)
    if where == "local":
        assert place is not None and place.path == "/dev/shm/pool-self" and not place.own, place
    else:
        assert place == expected, place
    assert ex.shm.counters.client_plane_fallbacks == fallbacks
    assert head.calls == 1


def test_slurm_provider_goes_inline_when_listnodes_fails(clock, monkeypatch):
    ex = executor_with(slurm(), _Head(error=RuntimeError("head busy")), monkeypatch)
    assert ex._task_data_place() is None
    assert ex.shm.counters.client_plane_fallbacks == 1 and ex.client_plane.asked == 0


def test_a_block_without_a_data_plane_joining_later_turns_the_client_plane_off(clock, monkeypatch):
    from dragon_parsl import submit_path
    head = _Head([])
    ex = executor_with(slurm(), head, monkeypatch)
    assert ex._task_data_place() == ex.client_plane.own  # no block yet
    head.nodes = [_agent("n1", data_plane=False, state="joining")]
    assert ex._task_data_place() == ex.client_plane.own and head.calls == 1  # not asked again yet
    clock.now += submit_path.AGENT_WAIT_RECHECK_S  # none was live: asked again soon
    assert ex._task_data_place() is None and head.calls == 2
    assert ex.shm.counters.client_plane_fallbacks == 1
    # With a live agent the answer is kept a while; once its block left, the client's plane again.
    head.nodes = [_agent("n1", data_plane=False, state="gone"), _agent("n2")]
    clock.now += submit_path.AGENT_WAIT_RECHECK_S
    assert ex._task_data_place() is None and head.calls == 2
    clock.now += submit_path.AGENT_HOSTS_RECHECK_S
    assert ex._task_data_place() == ex.client_plane.own and head.calls == 3


def test_local_provider_waits_for_its_local_agent(clock, monkeypatch):
    from parsl.providers import LocalProvider
    head = _Head([])
    ex = executor_with(LocalProvider(init_blocks=0), head, monkeypatch)
    assert ex._task_data_place() is None  # its pool is not known before it registers
    assert ex.shm.counters.client_plane_fallbacks == 0 and ex.client_plane.asked == 0
    from dragon_parsl import submit_path
    head.nodes = [_agent("self")]
    clock.now += submit_path.AGENT_WAIT_RECHECK_S
    place = ex._task_data_place()
    assert place is not None and place.path == "/dev/shm/pool-self" and not place.own


# ---------------------------------------------------------------- on the Slurm test bed

def scaled_where(img, factor, sleep_s=0.0):
    """(host, this worker's pid, arguments it pulled so far, results it pushed before, img * factor)"""
    import socket
    import sys
    import time
    time.sleep(sleep_s)
    m = sys.modules.get("dragon_parsl.shm_pool_path")
    c = m.worker_counters if m is not None else None
    return (socket.gethostname(), os.getpid(), c.args_pulled if c else -1, c.results_pushed if c else -1,
            img * factor)


def client_pool_files() -> list[str]:
    return [str(p) for p in Path("/dev/shm").glob("dragon-client-pool-*")]


@pytest.fixture
def slurm_ucx(no_service_left, slurm_cluster, worker_pythonpath, monkeypatch):  # noqa: F811
    """The Slurm bed, its queue empty before and after; UCX over TCP on the bed's network: the
    client (this process, the login node) on the bridge, the agents (their jobs inherit this
    environment) on their namespace's eth0 (the block's worker_init)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("UCX_TLS", "tcp,self")
    monkeypatch.setenv("UCX_NET_DEVICES", "slurmbr0")
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all(timeout=30)


TASKS = 100


def test_slurm_blocks_pull_arguments_from_the_login_client_and_push_results_into_it(slurm_ucx, tmp_path):
    from parsl import python_app

    from dragon_parsl import DragonExecutor
    cluster = slurm_ucx
    ex = DragonExecutor(label="login", workers_per_node=2, block_connect_timeout=60, shm_pool_wait_s=30,
                        provider=slurm_provider(cluster, nodes_per_block=2, init_blocks=1, min_blocks=1,
                                                max_blocks=1, worker_init="export UCX_NET_DEVICES=eth0"))
    app = python_app(scaled_where, executors=["login"])
    base = np.random.default_rng(14).random(MIB2)
    with provider_dfk(tmp_path, [ex]):
        import time
        t0 = time.monotonic()
        futures = [app(base, float(i)) for i in range(TASKS)]  # before the block runs: no agent yet
        hosts, pids = {}, {}
        for i, f in enumerate(futures):
            host, pid, pulled, pushed_before, r = f.result(timeout=90)
            futures[i] = None
            assert r.shape == base.shape and np.array_equal(r, base * float(i)), i
            hosts[host] = hosts.get(host, 0) + 1
            count, max_pulled, max_pushed = pids.get(pid, (0, 0, 0))
            pids[pid] = (count + 1, max(max_pulled, pulled), max(max_pushed, pushed_before))
            del r
        took = time.monotonic() - t0
        c = ex.shm_counters()
        relayed = ex.head_status().relayed_task_bytes
        assert ex.client_plane is not None and ex.client_plane.running
        assert client_pool_files() == []  # its pool lives in this process's memory only
        plane = ex.client_plane
    print(f"\nSlurmProvider, {TASKS} tasks of 2 MiB each way from the login node: {took:.1f} s from the first "
          f"submit (block start included); the head carried {relayed} bytes; by host {hosts}; counters {c}")
    assert set(hosts) <= set(cluster.nodes), hosts
    check_pulled_and_pushed(pids)
    assert c["dir"] and os.path.basename(c["dir"]).startswith("dragon-client-pool-"), c
    assert c["args_shm_tasks"] == TASKS and c["args_inline_tasks"] == 0, c
    assert c["results_pushed"] == TASKS and c["results_inline"] == 0, c
    assert c["client_plane_fallbacks"] == 0, c
    # The head carried the task messages (envelopes, the pickled app), not the 400 MiB of data.
    assert relayed < TASKS * (2 << 20) // 50, relayed
    assert not plane.running and client_pool_files() == []
    wait_no_job(cluster)


def check_pulled_and_pushed(pids: dict) -> None:
    """Each worker pulled every argument of the tasks it ran from the client's pool, and pushed
    every result before its last one."""
    for pid, (count, pulled, pushed_before) in pids.items():
        assert pulled == count and pushed_before == count - 1, (pid, count, pulled, pushed_before)


LEAVE_TASKS = 32


def test_a_block_that_leaves_mid_run_its_tasks_pull_again_elsewhere(slurm_ucx, tmp_path):
    # Two blocks of one node; block 0's job scancelled while its workers run tasks: those run again
    # on block 1 (infrastructure retries) and pull their arguments again from the client's pool,
    # which keeps each argument until its task ends. The replacement block has a data plane too:
    # no fallback, every result pushed.
    from parsl import python_app

    from dragon_parsl import DragonExecutor
    cluster = slurm_ucx
    ex = DragonExecutor(label="leave", workers_per_node=2, block_connect_timeout=60,
                        provider=slurm_provider(cluster, nodes_per_block=1, init_blocks=2, min_blocks=2,
                                                max_blocks=2, worker_init="export UCX_NET_DEVICES=eth0"))
    app = python_app(scaled_where, executors=["leave"])
    base = np.random.default_rng(14).random(MIB2)
    # No Parsl retries: scancel SIGTERMs the job's workers and its agent at once, and the agent holds
    # the end of a task whose worker a stop signal killed (agent/held_reports.h) until its own
    # SIGTERM stops it, so every task of block 0 runs again as the head's infrastructure retry.
    with provider_dfk(tmp_path, [ex]):
        wait_for(lambda: sorted(ex.connected_blocks()) == ["0", "1"], 60, "both blocks connected")
        futures = [app(base, float(i), 1.0) for i in range(LEAVE_TASKS)]
        node0 = next(n for n in nodes_of(ex) if n["block_id"] == "0")
        running_on_0 = lambda: int(next(n for n in nodes_of(ex) if n["node_id"] == node0["node_id"])  # noqa: E731
                                   ["running_tasks"])
        wait_for(lambda: running_on_0() >= 2, 30, "both workers of block 0 running tasks")
        cluster.run("scancel", ex.blocks_to_job_id["0"])
        pids = {}
        for i, f in enumerate(futures):
            host, pid, pulled, pushed_before, r = f.result(timeout=90)
            assert np.array_equal(r, base * float(i)), i
            count, max_pulled, max_pushed = pids.get(pid, (0, 0, 0))
            pids[pid] = (count + 1, max(max_pulled, pulled), max(max_pushed, pushed_before))
        c = ex.shm_counters()
        rerun = [t for t in tasks_of(ex) if int(t.get("infra_attempts", 0)) > 0]
    print(f"\nblock 0 scancelled under the login workflow: {len(rerun)} tasks ran again elsewhere; counters {c}")
    assert rerun and all(t["state"] == "DONE" and t["node"] != node0["node_id"] for t in rerun), rerun
    check_pulled_and_pushed(pids)
    assert c["args_shm_tasks"] == LEAVE_TASKS and c["args_inline_tasks"] == 0, c
    assert c["results_pushed"] == LEAVE_TASKS and c["client_plane_fallbacks"] == 0, c
    assert client_pool_files() == []
    wait_no_job(cluster)


EARLY, LATE = 12, 8


@pytest.mark.parametrize("retries", [0, 1])
def test_a_block_without_a_data_plane_fails_the_tasks_packed_for_the_client_and_takes_later_ones_inline(
        slurm_ucx, tmp_path, retries):
    # The block's agent cannot start UCX (a transport that does not exist): it registers without a
    # data plane. Tasks submitted before it started were packed for the client's pool; the head
    # (which knows nothing of where task data is) places them on it, and they fail with an error
    # naming the node and the fix. Tasks submitted once it is live go inline, counted; so do the
    # early ones when Parsl retries them (Config(retries=1)): every result right.
    from parsl import python_app

    from dragon_parsl import DragonExecutor, SharedMemoryError
    from dragon_parsl._proto import head_pb2
    cluster = slurm_ucx
    ex = DragonExecutor(label="noplane", workers_per_node=2, block_connect_timeout=60,
                        provider=slurm_provider(cluster, nodes_per_block=1, init_blocks=1, min_blocks=1,
                                                max_blocks=1, worker_init="export UCX_TLS=no_such_transport"))
    app = python_app(scaled_where, executors=["noplane"])
    base = np.random.default_rng(14).random(MIB2)
    with provider_dfk(tmp_path, [ex], retries=retries):
        early = [app(base, float(i)) for i in range(EARLY)]  # no agent yet: the client's plane
        errors = [f.exception(timeout=60) for f in early]
        late = [app(base, float(i)) for i in range(LATE)]  # the agent without a data plane is known
        results = [f.result(timeout=60) for f in late]
        if retries:
            results = [f.result() for f in early] + results
        c = ex.shm_counters()
        nodes = list(ex._unary("ListNodes", head_pb2.ListNodesRequest(), 10).nodes)
    print(f"\na block without a data plane, retries={retries}: early tasks' errors "
          f"{[str(e)[:300] for e in errors if e][:1]}; counters {c}")
    (node,) = nodes
    assert not node.data_socket, node
    inline = LATE + (EARLY if retries else 0)
    factors = [*(range(EARLY) if retries else []), *range(LATE)]
    assert len(results) == len(factors)
    assert all(np.array_equal(r[4], base * float(i)) for i, r in zip(factors, results))
    if retries:
        assert errors == [None] * EARLY, errors
    for e in errors if not retries else []:
        assert isinstance(e, SharedMemoryError), repr(e)
        text = str(e)
        assert f"node {node.node_id}" in text and "no data plane" in text and "client-" in text, text
        assert "shm_threshold=0" in text, text
    assert c["args_shm_tasks"] == EARLY and c["args_inline_tasks"] == inline, c
    assert c["client_plane_fallbacks"] == inline and c["results_inline"] == inline, c
    assert client_pool_files() == []
    wait_no_job(cluster)
