"""Large task data across nodes (issue 14, "UCX between nodes"): a Parsl workflow on h1 whose
tasks run on h2, the arguments in h1's pool, pulled by h2's agent over UCX into h2's pool, the
results pushed back into h1's pool, on the netns test bed (tests/testbed_fixtures.py). Real
dragond (root namespace, agents over ssh), dragon-agent with their pools and data planes, Python
workers, Parsl; no mocks (the worker's and client's logic with a fake data plane is unit-tested
in test_shm_unit.py).

UCX picks shared memory between namespaces of one machine unless told not to
(shared/TESTBED-NETNS.md): the head and its agents run with ``UCX_TLS=tcp,self`` and
``UCX_NET_DEVICES=tb0`` (``--agent-env PYTHONPATH,UCX_TLS,UCX_NET_DEVICES``), so blocks really
cross the veths. The workflow runs inside h1's namespace (and UTS name: its local agent is h1's),
as a script written by the test; h1 is drained before it submits, so every task runs on h2 while
its arguments are in h1's pool (the client still writes there: a local agent with a data plane).

- 2,000 tasks with a 2 MiB numpy argument and a 2 MiB result, submitted at once: every result
  byte-for-byte right, every task ran on h2, each worker pulled every argument it ran (its own
  counter, returned by the app), the client sent every argument through its pool and received
  every result pushed into it; afterwards no block in either pool, and after ``dragond stop``
  no pool (nor data socket) left in /dev/shm;
- a worker on h2 SIGKILLed mid-run (its pulled copy freed by h2's janitor), then h2's agent
  SIGKILLed (h2 lost; h1 is undrained so that the rest can run): every task ends done and right,
  or failed with an error naming what happened; none hangs; no block left in h1's pool;
- the workflow process SIGKILLed with tasks in flight: h1's janitor frees its argument blocks
  and the results pushed to it, h2's pulled copies are freed; nothing left after stop;
- h1's pool full (filled by the test): results pushed to it find no room, go inline instead,
  every one right, each fallback logged in its worker's log;
- a workflow on a node without an agent (the root namespace: a login node) runs its own data plane
  (dragon_parsl.client_data_plane): 200 tasks with 2 MiB arguments and results, every argument
  pulled by the agents from the client's pool over UCX and every result pushed into it, the head
  carrying only small messages (StatusReply.relayed_task_bytes); the client's pool is never in
  /dev/shm. The login client SIGKILLed mid-run: no block left in the agents' pools, nothing in
  /dev/shm, its data peer dropped by the head; h2's agent SIGKILLed under it: every task done
  (run again on h1, pulling again from the client) or failed saying why. With an agent that has no data plane (--shm-pool-mb 0), its data goes inline
  through the head, counted (client_plane_fallbacks);
- locality: with both nodes ready, tasks submitted one at a time run on the node whose pool holds
  their arguments (the submission's data_node), from a workflow on h1 and from one on h2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import wait_for, worker_pythonpath  # noqa: F401
from testbed_fixtures import netns_hosts, no_service_left  # noqa: F401
from test_ssh_cluster import WORKERS, agents_in, ssh_heads, stop_and_check_nothing_left  # noqa: F401

TESTS_DIR = Path(__file__).resolve().parent
UCX_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "tb0"}
# Room for every argument of the 2,000-task run at once (4,000 MiB in 2 MiB blocks) and the
# results pushed back: a lazily backed pool costs only the blocks in use.
POOL_MB = 5120

# The workflow, run as a script inside h1's namespace (its apps are pickled by value: the
# workers on h2 need not import anything of the tests). Writes a JSON summary to --out.
WORKFLOW = textwrap.dedent('''
    import argparse, json, os, sys, time
    import numpy as np
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from dragon_parsl import DragonExecutor


    def scaled_where(img, factor, sleep_s):
        """(host, worker pid, arguments this worker pulled, results it pushed before, img * factor)"""
        import os, socket, sys, time
        if sleep_s:
            time.sleep(sleep_s)
        m = sys.modules.get("dragon_parsl.shm_pool_path")
        c = m.worker_counters if m is not None else None
        return (socket.gethostname(), os.getpid(), c.args_pulled if c else -1,
                c.results_pushed if c else -1, img * factor)


    def made_where(i, sleep_s):
        """As scaled_where, for a task whose arguments are small (inline) and result large."""
        import os, socket, sys, time
        import numpy as np
        if sleep_s:
            time.sleep(sleep_s)
        m = sys.modules.get("dragon_parsl.shm_pool_path")
        c = m.worker_counters if m is not None else None
        return (socket.gethostname(), os.getpid(), c.args_pulled if c else -1,
                c.results_pushed if c else -1, np.full((512, 512), float(i)))


    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=150.0)
    p.add_argument("--sequential", action="store_true")
    p.add_argument("--small-args", action="store_true", help="made_where: only the results are large")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    executor = DragonExecutor(label="dragon", address=a.address, token=os.environ["DRAGON_TOKEN"],
                              shm_pool_wait_s=60)
    dfk = parsl.load(Config(executors=[executor], strategy="none",
                            run_dir=os.path.join(os.path.dirname(a.out), "runinfo")))
    app = python_app(made_where if a.small_args else scaled_where, executors=["dragon"])
    base = np.random.default_rng(14).random((512, 512))  # 2 MiB, the same object for every task
    if a.small_args:
        base = np.ones((512, 512))
    t0 = time.monotonic()
    futures = []
    for i in range(a.tasks):
        futures.append(app(i, a.sleep) if a.small_args else app(base, float(i), a.sleep))
        if a.sequential:  # one task at a time: every node idle when it is placed
            futures[-1].exception(timeout=60)
    submitted = time.monotonic() - t0
    summary = {"tasks": a.tasks, "ok": 0, "wrong": [], "failed": {}, "hung": [], "hosts": {}, "pids": {}}
    deadline = time.monotonic() + a.timeout
    for i, f in enumerate(futures):
        futures[i] = None  # each 2 MiB result goes once checked
        try:
            host, pid, pulled, pushed_before, r = f.result(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            summary["hung"].append(i)
            continue
        except Exception as e:  # noqa: BLE001  (the test judges the errors)
            summary["failed"][i] = f"{type(e).__name__}: {e}"
            continue
        if r.shape != base.shape or not np.array_equal(r, base * float(i)):
            summary["wrong"].append(i)
            continue
        summary["ok"] += 1
        summary["hosts"][host] = summary["hosts"].get(host, 0) + 1
        count, max_pulled, max_pushed = summary["pids"].get(str(pid), (0, 0, 0))
        summary["pids"][str(pid)] = (count + 1, max(max_pulled, pulled), max(max_pushed, pushed_before))
        del r
    summary["submit_s"] = submitted
    summary["seconds"] = time.monotonic() - t0
    summary["counters"] = executor.shm_counters()
    pool_dir = summary["counters"]["dir"]
    summary["pool_file_exists"] = bool(pool_dir) and os.path.exists(pool_dir)
    # Task payload and result bytes the head carried (all of this head's sessions so far).
    summary["relayed_task_bytes"] = executor.head_status().relayed_task_bytes
    plane = executor.client_plane
    summary["client_plane_started"] = plane is not None and plane.running
    dfk.cleanup()
    summary["client_plane_running_after_shutdown"] = plane is not None and plane.running
    with open(a.out, "w") as f:
        json.dump(summary, f)
''')


# ---------------------------------------------------------------- helpers

class Workflow:
    """The workflow script running in `host`'s namespace (a Popen whose pid is python's own)."""

    def __init__(self, tb, head, tmp_path: Path, tasks: int, sleep_s: float = 0.0, timeout: float = 150.0,
                 host: str | None = "h1", sequential: bool = False, small_args: bool = False):
        d = tmp_path / f"workflow-{time.monotonic_ns()}"
        d.mkdir()
        script = d / "workflow.py"
        script.write_text(WORKFLOW)
        self.out, self.log = d / "summary.json", d / "workflow.log"
        env = dict(os.environ, DRAGON_TOKEN=head.head.token,
                   PYTHONPATH=str(TESTS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("DRAGON_HEAD", None)
        with open(self.log, "w") as log:
            argv = [sys.executable, str(script), "--address", head.address, "--tasks", str(tasks),
                    "--sleep", str(sleep_s), "--timeout", str(timeout), "--out", str(self.out),
                    *(["--sequential"] if sequential else []), *(["--small-args"] if small_args else [])]
            # host None: the root namespace, where no agent runs (a login node).
            self.proc = subprocess.Popen(tb.exec_argv(host, *argv) if host else argv, env=env, cwd=d,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.timeout = timeout

    def summary(self) -> dict:
        try:
            rc = self.proc.wait(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the workflow did not end within {self.timeout + 30}s:\n{self.tail()}") from None
        assert rc == 0 and self.out.exists(), f"the workflow exited {rc}:\n{self.tail()}"
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def pools_of(head) -> dict[str, str]:
    """{node: its pool's path}; each node must have a pool and a data plane."""
    nodes = head.nodes()
    for h, n in nodes.items():
        assert n.get("shm_pool_path") and n.get("data_socket"), f"{h} has no pool or no data plane: {n}"
    return {h: n["shm_pool_path"] for h, n in nodes.items()}


def blocks_in(path: str) -> int:
    """Blocks in use in the pool at `path` (attached here: /dev/shm is one for every namespace)."""
    from dragon_parsl._core import ShmPool
    pool = ShmPool.attach(path)
    try:
        return pool.stats()["blocks_in_use"]
    finally:
        pool.close()


def owners_in(path: str) -> list[int]:
    from dragon_parsl._core import ShmPool
    pool = ShmPool.attach(path)
    try:
        return pool.owners()
    finally:
        pool.close()


def wait_pools_empty(paths: list[str], timeout: float = 15) -> None:
    try:
        wait_for(lambda: all(blocks_in(p) == 0 for p in paths), timeout, "every pool block freed")
    except AssertionError:
        raise AssertionError(f"blocks left: {[(p, blocks_in(p), owners_in(p)) for p in paths]}") from None


def pool_files_left(pools: dict[str, str]) -> list[str]:
    """The pools (and their data sockets) of this run still in /dev/shm."""
    return [f for p in pools.values() for f in (p, p + ".sock") if os.path.exists(f)]


def veth_bytes(tb, host: str) -> int:
    """Bytes through `host`'s link both ways (its bridge-side veth, in this namespace)."""
    stats = Path("/sys/class/net", tb.veth(host), "statistics")
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


def check_no_pool_file_left(pools: dict[str, str]) -> None:
    """Nothing of the run's pools in /dev/shm after dragond stop: a killed agent's pool and data
    socket are removed by dragond stop, the others' by their agents."""
    assert pool_files_left(pools) == []


def workers_in(tb, host: str) -> list[int]:
    return [p for p, c in tb.processes_in(host).items() if "dragon_parsl.worker" in c]


@pytest.fixture
def two_host_head(netns_hosts, ssh_heads, monkeypatch):
    """A head with agents on h1 and h2 (pools and data planes over TCP), ready."""
    for k, v in UCX_ENV.items():
        monkeypatch.setenv(k, v)
    head = ssh_heads(["h1", "h2"], "--agent-env", "PYTHONPATH," + ",".join(UCX_ENV),
                     "--shm-pool-mb", str(POOL_MB))
    head.wait_ready()
    return head


@pytest.fixture
def cross_head(two_host_head):
    """two_host_head with h1 drained: tasks of a workflow on h1 run on h2."""
    head = two_host_head
    head.ctl("nodes", "drain", "h1")
    wait_for(lambda: head.nodes()["h1"]["state"] == "draining", 10, "h1 draining")
    return head


# ---------------------------------------------------------------- 2,000 tasks, data from h1, run on h2

N_TASKS = 2000


@pytest.mark.timeout(240)
def test_2000_tasks_with_2mib_arguments_and_results_cross_between_pools(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    link_before = veth_bytes(tb, "h2")
    s = Workflow(tb, head, tmp_path, N_TASKS, timeout=180).summary()
    on_link = veth_bytes(tb, "h2") - link_before
    print(f"\n{N_TASKS} tasks, 2 MiB each way between h1's and h2's pools over UCX tcp: {s['seconds']:.1f}s "
          f"(submitted in {s['submit_s']:.1f}s), {on_link / 1e9:.2f} GB through h2's link; workers {s['pids']}; "
          f"client counters {s['counters']}")
    assert s["ok"] == N_TASKS and not s["wrong"] and not s["failed"] and not s["hung"], \
        {k: s[k] for k in ("ok", "wrong", "hung")} | {"failed": list(s["failed"].items())[:5]}
    assert s["hosts"] == {"h2": N_TASKS}
    # Each worker pulled every argument it ran (its counter when running its last task), and
    # pushed every result before that one.
    assert len(s["pids"]) <= WORKERS and all(len(agents_in(tb, h)) == 1 for h in ("h1", "h2"))
    for pid, (count, pulled, pushed_before) in s["pids"].items():
        assert pulled == count and pushed_before == count - 1, (pid, count, pulled, pushed_before)
    c = s["counters"]
    assert c["dir"] == pools["h1"]
    assert c["args_shm_tasks"] == N_TASKS and c["args_inline_tasks"] == 0, c
    assert c["results_shm"] == N_TASKS and c["results_pushed"] == N_TASKS and c["results_inline"] == 0, c
    assert c["results_pushed_bytes"] >= N_TASKS * (2 << 20), c
    # The blocks crossed the network (UCX_TLS=tcp,self), not shared memory between namespaces:
    # every argument and every result through h2's link.
    assert on_link >= 2 * N_TASKS * (2 << 20), on_link
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- a worker, then h2's agent, killed mid-run

FAULT_TASKS = 300
FAULT_SLEEP_S = 0.05


@pytest.mark.timeout(180)
def test_worker_and_agent_killed_mid_run_every_task_ends_and_no_block_leaks(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = Workflow(tb, head, tmp_path, FAULT_TASKS, sleep_s=FAULT_SLEEP_S, timeout=120)
    try:
        wait_for(lambda: head.counts().get("DONE", 0) >= 40 and head.nodes()["h2"]["running_tasks"] > 0, 60,
                 "the run under way on h2")
        victim = workers_in(tb, "h2")[0]
        os.kill(victim, signal.SIGKILL)
        # Its pulled copy (owned by it, in h2's pool) goes to h2's janitor.
        wait_for(lambda: victim not in owners_in(pools["h2"]), 10, f"the killed worker {victim}'s blocks freed")
        wait_for(lambda: head.counts().get("DONE", 0) >= 120 and head.nodes()["h2"]["running_tasks"] > 0, 60,
                 "the run under way again on h2")
        (agent,) = agents_in(tb, "h2")
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: head.nodes()["h2"]["state"] == "lost", 10, "h2 lost")
        head.ctl("nodes", "undrain", "h1")  # the rest runs on h1, its data local there
        s = wf.summary()
    finally:
        wf.kill()
    print(f"\nworker {victim} and then h2's agent killed: {s['ok']} done, {len(s['failed'])} failed "
          f"{list(s['failed'].values())[:3]}; by host {s['hosts']}; client counters {s['counters']}")
    assert not s["hung"] and not s["wrong"], s
    assert s["ok"] + len(s["failed"]) == FAULT_TASKS
    for i, error in s["failed"].items():  # a task may fail with its worker or node, saying so
        assert any(w in error for w in ("worker", "node", "agent", "lost")), (i, error)
    assert s["hosts"].get("h2", 0) >= 100 and s["counters"]["results_pushed"] >= 100, s
    counts = head.counts()
    assert counts.get("DONE", 0) + counts.get("FAILED", 0) == FAULT_TASKS, counts
    wait_pools_empty([pools["h1"]])
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- the client killed with tasks in flight

@pytest.mark.timeout(120)
def test_client_killed_with_tasks_in_flight_leaves_no_block(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = Workflow(tb, head, tmp_path, FAULT_TASKS, sleep_s=FAULT_SLEEP_S, timeout=120)
    try:
        wait_for(lambda: head.counts().get("DONE", 0) >= 40 and head.nodes()["h2"]["running_tasks"] > 0, 60,
                 "the run under way on h2")
        assert blocks_in(pools["h1"]) > 0  # arguments of the tasks in flight
    finally:
        wf.kill()
    # h1's janitor frees the dead client's argument blocks and results pushed to it; h2's pulled
    # copies go with the tasks the head cancels (their workers' or the janitor's).
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- locality: tasks go where their data is

LOCAL_TASKS = 20


@pytest.mark.timeout(120)
def test_tasks_run_on_the_node_whose_pool_holds_their_arguments(netns_hosts, two_host_head, tmp_path):
    # One task at a time, both nodes idle: the head places each on the node its submission names
    # (data_node: the client's local agent). A workflow on h1, then one on h2: whichever node a
    # tie would favour, one of the two runs shows the preference.
    tb, head = netns_hosts, two_host_head
    pools = pools_of(head)
    for host in ("h1", "h2"):
        s = Workflow(tb, head, tmp_path, LOCAL_TASKS, host=host, sequential=True, timeout=60).summary()
        assert s["ok"] == LOCAL_TASKS and not s["failed"] and not s["hung"], s
        assert s["hosts"] == {host: LOCAL_TASKS}, (host, s["hosts"])
        c = s["counters"]
        assert c["dir"] == pools[host] and c["args_shm_tasks"] == LOCAL_TASKS, c
        assert c["results_shm"] == LOCAL_TASKS and c["results_pushed"] == 0, c  # read where written
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- a push that finds no room

PUSH_TASKS = 20


def fill(path: str) -> list[bytes]:
    """Allocates every block of the pool at `path` (owner: this process), largest first."""
    from dragon_parsl._core import ShmPool, ShmPoolFull
    pool = ShmPool.attach(path)
    refs, size = [], 1 << 30
    try:
        while size >= 4096:
            try:
                refs.append(pool.allocate(size))
            except ShmPoolFull:
                size //= 2
    finally:
        pool.close()
    return refs


@pytest.mark.timeout(120)
def test_results_that_cannot_be_pushed_go_inline_and_are_logged(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    refs = fill(pools["h1"])
    try:
        s = Workflow(tb, head, tmp_path, PUSH_TASKS, small_args=True, timeout=60).summary()
    finally:
        from dragon_parsl._core import ShmPool
        pool = ShmPool.attach(pools["h1"])
        for ref in refs:
            pool.free(ref)
        pool.close()
    assert s["ok"] == PUSH_TASKS and not s["failed"] and not s["wrong"] and not s["hung"], s
    assert s["hosts"] == {"h2": PUSH_TASKS}
    c = s["counters"]
    assert c["args_shm_tasks"] == 0 and c["results_inline"] == PUSH_TASKS and c["results_pushed"] == 0, c
    logs = "".join(p.read_text(errors="replace") for p in (head.run_dir / "workers" / "h2").glob("*.log"))
    assert logs.count("could not be pushed to node h1") == PUSH_TASKS and "RESOURCE_EXHAUSTED" in logs, logs[-3000:]
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- a login node: no agent of its own

LOGIN_TASKS = 200
LOGIN_KILL_TASKS = 300
LOGIN_FALLBACK_TASKS = 10


def client_pool_files() -> list[str]:
    """Client pools in /dev/shm (one is there only between its creation and its mapping)."""
    return [str(p) for p in Path("/dev/shm").glob("dragon-client-pool-*")]


@pytest.mark.timeout(150)
def test_workflow_on_a_node_without_an_agent_sends_its_data_over_ucx(netns_hosts, two_host_head, tmp_path):
    tb, head = netns_hosts, two_host_head
    pools = pools_of(head)
    s = Workflow(tb, head, tmp_path, LOGIN_TASKS, host=None, timeout=90).summary()
    c = s["counters"]
    mb = LOGIN_TASKS * 2 * (2 << 20) / 1e6
    print(f"\n{LOGIN_TASKS} tasks from the login host (no agent), 2 MiB each way over UCX tcp: {s['seconds']:.1f}s, "
          f"{mb / s['seconds']:.0f} MB/s of task data; the head carried {s['relayed_task_bytes']} bytes; "
          f"by host {s['hosts']}; client counters {c}")
    assert s["ok"] == LOGIN_TASKS and not s["failed"] and not s["wrong"] and not s["hung"], \
        {k: s[k] for k in ("ok", "wrong", "hung")} | {"failed": list(s["failed"].items())[:5]}
    assert set(s["hosts"]) <= {"h1", "h2"}, s["hosts"]
    # Every argument pulled from the client's pool by the worker's agent (each worker's counter
    # when it ran its last task), every result before it pushed.
    for pid, (count, pulled, pushed_before) in s["pids"].items():
        assert pulled == count and pushed_before == count - 1, (pid, count, pulled, pushed_before)
    assert c["dir"] and os.path.basename(c["dir"]).startswith("dragon-client-pool-"), c
    assert c["args_shm_tasks"] == LOGIN_TASKS and c["args_inline_tasks"] == 0, c
    assert c["results_pushed"] == LOGIN_TASKS and c["results_inline"] == 0, c
    assert c["results_pushed_bytes"] >= LOGIN_TASKS * (2 << 20) and c["client_plane_fallbacks"] == 0, c
    # The head carried the task messages (envelopes, the pickled app), not the data: far below
    # the 800 MB that went between the client and the agents.
    assert s["relayed_task_bytes"] < LOGIN_TASKS * (2 << 20) // 50, s["relayed_task_bytes"]
    assert s["client_plane_started"] and not s["client_plane_running_after_shutdown"], s
    assert not s["pool_file_exists"] and client_pool_files() == []
    assert sorted(head.nodes()) == ["h1", "h2"]  # the client is no node
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.mark.timeout(120)
def test_login_client_killed_mid_run_leaves_nothing(netns_hosts, two_host_head, tmp_path):
    tb, head = netns_hosts, two_host_head
    pools = pools_of(head)
    wf = Workflow(tb, head, tmp_path, LOGIN_KILL_TASKS, sleep_s=FAULT_SLEEP_S, host=None, timeout=60)
    try:
        wait_for(lambda: head.counts().get("DONE", 0) >= 40, 60, "the login workflow's run under way")
        assert client_pool_files() == []  # its pool lives in its memory only
        peers = head.head.ctl_json("nodes").get("data_peers", [])
        assert [p["peer_id"] for p in peers] == ["client-1"], peers  # its data plane, not a node
    finally:
        wf.kill()
    # Its session ends with it, and the head forgets its data plane.
    wait_for(lambda: not head.head.ctl_json("nodes").get("data_peers"), 15, "the dead client's data peer dropped")
    # The agents' pulled copies go with the tasks the head cancels (their workers, or the janitor);
    # a pull from the dead client fails (Unavailable naming it) and leaves no block.
    wait_pools_empty(list(pools.values()))
    assert client_pool_files() == []
    nodes = head.nodes()
    assert all(nodes[h]["state"] == "ready" for h in ("h1", "h2")), nodes
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.mark.timeout(120)
def test_agent_killed_under_a_login_workflow_every_task_ends(netns_hosts, two_host_head, tmp_path):
    # h2's agent SIGKILLed while its workers pull from and push into the login client's pool: its
    # tasks run again on h1 (infrastructure retries: the arguments are still in the client's
    # pool, pulled again there) or fail saying why; none is lost, none hangs.
    tb, head = netns_hosts, two_host_head
    pools = pools_of(head)
    wf = Workflow(tb, head, tmp_path, LOGIN_KILL_TASKS, sleep_s=FAULT_SLEEP_S, host=None, timeout=60)
    try:
        wait_for(lambda: head.counts().get("DONE", 0) >= 40 and head.nodes()["h2"]["running_tasks"] > 0, 60,
                 "the login workflow's run under way on h2")
        (agent,) = agents_in(tb, "h2")
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: head.nodes()["h2"]["state"] == "lost", 10, "h2 lost")
        s = wf.summary()
    finally:
        wf.kill()
    print(f"\nh2's agent killed under the login workflow: {s['ok']} done, {len(s['failed'])} failed "
          f"{list(s['failed'].values())[:3]}; by host {s['hosts']}; client counters {s['counters']}")
    assert not s["hung"] and not s["wrong"], s
    assert s["ok"] + len(s["failed"]) == LOGIN_KILL_TASKS
    for i, error in s["failed"].items():
        assert any(w in error for w in ("worker", "node", "agent", "lost")), (i, error)
    assert s["counters"]["args_shm_tasks"] == LOGIN_KILL_TASKS and s["hosts"].get("h1", 0) > 0, s
    assert client_pool_files() == []
    wait_pools_empty([pools["h1"]])
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.fixture
def head_without_data_plane(netns_hosts, ssh_heads, monkeypatch):
    """A head whose agent on h2 has no pool, hence no data plane (--shm-pool-mb 0)."""
    for k, v in UCX_ENV.items():
        monkeypatch.setenv(k, v)
    head = ssh_heads(["h2"], "--agent-env", "PYTHONPATH," + ",".join(UCX_ENV), "--shm-pool-mb", "0")
    head.wait_ready()
    return head


@pytest.mark.timeout(120)
def test_login_workflow_goes_inline_when_an_agent_has_no_data_plane(netns_hosts, head_without_data_plane,
                                                                     tmp_path):
    tb, head = netns_hosts, head_without_data_plane
    s = Workflow(tb, head, tmp_path, LOGIN_FALLBACK_TASKS, host=None, timeout=60).summary()
    assert s["ok"] == LOGIN_FALLBACK_TASKS and not s["failed"] and not s["wrong"] and not s["hung"], s
    c = s["counters"]
    assert c["dir"] is None and c["args_inline_tasks"] == LOGIN_FALLBACK_TASKS and c["args_shm_tasks"] == 0, c
    assert c["results_inline"] == LOGIN_FALLBACK_TASKS and c["results_shm"] == 0, c
    assert c["client_plane_fallbacks"] == LOGIN_FALLBACK_TASKS, c
    assert not s["client_plane_started"], s
    assert all(pulled == 0 for _, pulled, _ in s["pids"].values()), s["pids"]
    assert client_pool_files() == []
    stop_and_check_nothing_left(head, tb)
