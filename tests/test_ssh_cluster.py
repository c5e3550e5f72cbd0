"""dragond with agents started over ssh on four real hosts (issue 11): the netns test bed's h1..h4
(tests/testbed/netns.sh, fixtures in testbed_fixtures.py), each in its own network namespace
with its own sshd and hostname; the head runs in the root namespace and listens on tb0
(10.201.0.254). Real dragond, dragon-agent, Python workers, dragonctl and Parsl; no mocks.

- a Parsl workflow (python_app and bash_app, 2,000 tasks) across the four hosts: every host ran
  tasks (by the hostnames the tasks report), every result right;
- ``--hostfile`` (comments, repeated hosts, ``host slots=N``) starts one agent per host;
- an unreachable host (a name not on the bed; a host whose sshd is stopped) fails ``dragond
  start`` with an error naming it, leaving no head and no agent on the other hosts; with
  ``--allow-missing`` the start succeeds without it and says so;
- ``dragonctl nodes add h4`` to a head on h1..h3: h4 joins and runs tasks (a host that does not
  exist fails with "HOST: why", exit 1); ``dragonctl nodes remove h2 --wait`` while tasks run:
  h2 finishes what it runs, gives back what it had not started, ends "gone", no task is lost or
  run twice; ``dragond stop`` then ends every agent: nothing of the service on any host;
- bad input (empty or malformed hostfile, unknown launcher, ``--hosts`` with ``--launcher
  local``, ...): a clear error, exit 1 (what dragond does for these), nothing left behind; and
  ``dragonctl nodes add`` to a head whose launcher cannot add nodes.

Every test checks, per namespace, that nothing of the service is left (``no_service_left``) and
stops the heads it started also when it fails. test_cluster_faults.py reuses the helpers here.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from parsl import bash_app, python_app

from conftest import (Head, binary, load_parsl, processes_of_run, start_head, stop_head, wait_for,
                      worker_pythonpath)  # noqa: F401
from testbed_fixtures import (assert_no_service_left, netns_hosts, no_service_left,  # noqa: F401
                              service_processes_in_testbeds)

TESTS_DIR = Path(__file__).resolve().parent
WORKERS = 2  # per host: 8 workers on the 4 hosts of a 2-core machine


# ---------------------------------------------------------------- apps (importable by workers)

def where_task(i, sleep_s=0.0):
    """(i, i*i, hostname, pid): the hostname is the UTS name of the host the worker runs on."""
    import os
    import socket
    import time
    if sleep_s:
        time.sleep(sleep_s)
    return i, i * i, socket.gethostname(), os.getpid()


def where_bash_task(i, stdout=None, stderr=None):
    return f'echo "{i} $(hostname)"'


where = python_app(where_task)
where_bash = bash_app(where_bash_task)


# ---------------------------------------------------------------- helpers

def ssh_launch_args(tb, hosts: list[str] | None = None) -> list[str]:
    args = ["--launcher", "ssh", "--ssh-command", str(tb.ssh), "--listen", tb.head_iface,
            "--workers", str(WORKERS)]
    return args + (["--hosts", ",".join(hosts)] if hosts else [])


def run_env(home: Path) -> dict:
    """The environment of a dragond started by hand (daemonized): its own DRAGON_HOME, the
    tests on the workers' PYTHONPATH (forwarded to remote agents by --agent-env PYTHONPATH)."""
    env = dict(os.environ, DRAGON_HOME=str(home),
               PYTHONPATH=str(TESTS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DRAGON_HEAD", None)
    env.pop("DRAGON_TOKEN", None)
    return env


def dragond(*args: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragond"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def dragonctl(*args: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragonctl"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def agents_in(tb, host: str) -> dict[int, str]:
    """{pid: command line} of the dragon-agents running in `host`'s namespace."""
    return {p: c for p, c in tb.processes_in(host).items() if re.search(r"(^|/)dragon-agent ", c)}


def service_on(tb, host: str) -> dict[int, str]:
    """What of the service (agent, workers) runs in `host`'s namespace."""
    ns = tb.netns(host)
    return {p: c for p, c in service_processes_in_testbeds().items() if c.startswith(f"{ns}: ")}


def assert_nothing_of_run_left(run_dir: Path, grace: float = 15) -> None:
    """No process of the run anywhere (head, ssh, agents and workers in every namespace: they
    share this pid namespace), head.json and the token gone."""
    try:
        wait_for(lambda: not processes_of_run(run_dir), grace, f"the processes of {run_dir} to exit")
    except AssertionError:
        raise AssertionError(f"left running: {processes_of_run(run_dir)}") from None
    assert not (run_dir / "head.json").exists()
    assert not (run_dir / "token").exists()


def stop_and_check_nothing_left(head, tb) -> None:
    """dragond stop, then nothing of the run anywhere: not here, not in any host's namespace."""
    run_dir = head.run_dir
    stop = head.stop()
    assert stop is not None and stop.returncode == 0, stop
    assert_nothing_of_run_left(run_dir)
    for h in tb.names:
        assert service_on(tb, h) == {}, h


def nodes_json(env: dict) -> list[dict]:
    cp = dragonctl("nodes", "--json", env=env, timeout=30)
    assert cp.returncode == 0, cp
    return json.loads(cp.stdout).get("nodes", [])


# protobuf JSON prints 64-bit integers as strings
_INT64_NODE_FIELDS = ("tasks_done", "incarnation", "memory_bytes", "connected_us", "last_heartbeat_us")


def by_node(nodes: list[dict]) -> dict[str, dict]:
    """ListNodes JSON keyed by node id, 64-bit counters as ints."""
    out = {}
    for n in nodes:
        n = dict(n)
        for k in _INT64_NODE_FIELDS:
            if k in n:
                n[k] = int(n[k])
        out[n["node_id"]] = n
    return out


def task_counts(status: dict) -> dict[str, int]:
    """StatusReply JSON's tasks_by_state as ints ("DONE": 12, ...)."""
    return {k: int(v) for k, v in status.get("tasks_by_state", {}).items()}


class SshHead:
    """A foreground dragond (conftest.start_head: --exit-with-parent, stopped after the test
    whatever happens) whose agents run on test bed hosts, started over the bed's ssh."""

    def __init__(self, head: Head, hosts: list[str]):
        self.head = head
        self.hosts = hosts
        self.output: list[str] = []        # dragond's stdout and stderr (warnings), drained
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self):
        try:
            for line in self.head.proc.stdout:
                self.output.append(line)
        except (ValueError, OSError):       # closed by the teardown
            pass

    env = property(lambda self: self.head.env)
    run_dir = property(lambda self: self.head.run_dir)
    address = property(lambda self: self.head.address)

    def ctl(self, *args, **kw):
        return self.head.ctl(*args, **kw)

    def nodes(self) -> dict[str, dict]:
        return by_node(self.head.ctl_json("nodes")["nodes"])

    def status(self) -> dict:
        return self.head.ctl_json("status")

    def counts(self) -> dict[str, int]:
        return task_counts(self.status())

    def tasks(self) -> list[dict]:
        return self.head.ctl_json("ps", "--limit", "100000")["tasks"]

    def wait_ready(self, hosts: list[str] | None = None, timeout: float = 60) -> None:
        want = set(hosts or self.hosts)

        def ready():
            nodes = self.nodes()
            return all(h in nodes and nodes[h]["state"] == "ready"
                       and nodes[h]["ready_workers"] == WORKERS for h in want)
        try:
            wait_for(ready, timeout, f"agents and workers ready on {sorted(want)}")
        except AssertionError:
            raise AssertionError(f"{self.nodes()}\n{''.join(self.output)}\n{self.head.log()}") from None

    def log(self) -> str:
        return (self.run_dir / "dragond.log").read_text(errors="replace")

    def stop(self) -> subprocess.CompletedProcess | None:
        """`dragond stop` (found through DRAGON_HOME, as users do); SIGTERM if that fails."""
        if self.head.proc.poll() is not None:
            return None
        cp = subprocess.run([binary("dragond"), "stop", "--run-dir", str(self.run_dir)],
                            env=self.env, capture_output=True, text=True, timeout=60)
        try:
            self.head.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_head(self.head)
        return cp


@pytest.fixture
def ssh_heads(netns_hosts, no_service_left, worker_pythonpath, tmp_path):
    """start(hosts, *extra) -> SshHead on those hosts (not yet ready: see wait_ready). Every head
    is stopped at teardown, before no_service_left checks every namespace."""
    started: list[SshHead] = []

    def start(hosts: list[str], *extra: str, name: str = "") -> SshHead:
        base = tmp_path / (name or f"head{len(started)}")
        base.mkdir()
        h = SshHead(start_head(base, *ssh_launch_args(netns_hosts, hosts), *extra), hosts)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


@contextmanager
def parsl_client(head: SshHead, tmp_path: Path, **executor_kwargs):
    """A DataFlowKernel with one DragonExecutor connected to `head` (address and token given
    explicitly, as to a head on another machine); cleaned up whatever happens."""
    import parsl
    dfk, executor = load_parsl(tmp_path / f"parsl-{time.monotonic_ns()}", address=head.address,
                               token=head.head.token, **executor_kwargs)
    try:
        yield dfk, executor
    finally:
        dfk.cleanup()
        parsl.clear()


def results_of(futures, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    return [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]


# ---------------------------------------------------------------- a workflow on four hosts

@pytest.mark.timeout(180)
def test_parsl_workflow_of_2000_tasks_runs_on_all_four_hosts(netns_hosts, ssh_heads, tmp_path):
    tb = netns_hosts
    head = ssh_heads(tb.names)
    head.wait_ready()
    nodes = head.nodes()
    assert sorted(nodes) == tb.names
    for h in tb.names:
        assert nodes[h]["host"] == h and nodes[h]["incarnation"] == 1, nodes[h]
        assert len(agents_in(tb, h)) == 1, tb.processes_in(h)   # the agent runs on its host
    # The head advertises its address on the test net, where the hosts reach it.
    assert head.address.startswith(f"{tb.head_ip}:")

    n_py, n_bash = 1600, 400
    out_dir = tmp_path / "bash-out"
    out_dir.mkdir()
    t0 = time.monotonic()
    with parsl_client(head, tmp_path) as (dfk, executor):
        py = [where(i) for i in range(n_py)]
        sh = [where_bash(i, stdout=str(out_dir / f"{i}.out"), stderr=str(out_dir / f"{i}.err"))
              for i in range(n_bash)]
        py_results = results_of(py, 120)
        sh_codes = results_of(sh, 120)
    took = time.monotonic() - t0

    assert [r[:2] for r in py_results] == [(i, i * i) for i in range(n_py)]
    assert sh_codes == [0] * n_bash
    py_hosts = {}
    for _, _, host, _ in py_results:
        py_hosts[host] = py_hosts.get(host, 0) + 1
    sh_hosts = {}
    for i in range(n_bash):
        num, host = (out_dir / f"{i}.out").read_text().split()
        assert int(num) == i
        sh_hosts[host] = sh_hosts.get(host, 0) + 1
    print(f"\n2,000 tasks on 4 ssh hosts in {took:.1f}s: python_app by host {py_hosts}, "
          f"bash_app by host {sh_hosts}")
    assert set(py_hosts) | set(sh_hosts) == set(tb.names), (py_hosts, sh_hosts)
    assert set(py_hosts) == set(tb.names), py_hosts
    # The head saw the same: every task done, each host's count as the tasks said.
    counts = head.counts()
    assert counts["DONE"] == n_py + n_bash and counts["FAILED"] == 0, counts
    done = {h: n["tasks_done"] for h, n in head.nodes().items()}
    assert done == {h: int(py_hosts.get(h, 0) + sh_hosts.get(h, 0)) for h in tb.names}, done
    # Live telemetry: every host's agent measured its host and sent it with its heartbeats.
    cp = head.ctl("--json", "top", "--iterations", "1")
    (sample,) = [json.loads(line) for line in cp.stdout.splitlines()]
    assert sorted(n["node_id"] for n in sample["nodes"]) == tb.names
    assert sample["finished"] == n_py + n_bash
    for n in sample["nodes"]:
        assert n["cpus"] >= 1 and 0 < n["mem_available_bytes"] < n["mem_total_bytes"], n
        assert n["workers_rss_bytes"] > 0 and n["tasks_done"] == done[n["node_id"]], n

    stop_and_check_nothing_left(head, tb)


# ---------------------------------------------------------------- starting: hostfile, unreachable hosts

@pytest.mark.timeout(120)
def test_hostfile_starts_one_agent_per_host(netns_hosts, no_service_left, tmp_path):
    tb = netns_hosts
    env = run_env(tmp_path / "home")
    hostfile = tmp_path / "hosts"
    # Comments, blank lines, a repeated host, Open MPI's "slots=" and MPICH's "host:N" forms.
    hostfile.write_text("# the test bed\nh1\nh2 slots=2\n\nh3:2   # MPICH style\nh4\nh2\n")
    run_dir = tmp_path / "run"
    cp = dragond("start", *ssh_launch_args(tb), "--hostfile", str(hostfile), "--run-dir", str(run_dir),
                 "--python", sys.executable, env=env)
    try:
        assert cp.returncode == 0, cp
        assert re.search(rf"head listening on {re.escape(tb.head_ip)}:\d+ .*; 4 of 4 agent\(s\) ready "
                         r"\(ssh: h1, h2, h3, h4\)", cp.stdout), cp.stdout
        nodes = by_node(nodes_json(env))
        assert sorted(nodes) == tb.names and {n["state"] for n in nodes.values()} == {"ready"}, nodes
        for h in tb.names:
            assert len(agents_in(tb, h)) == 1, tb.processes_in(h)
            assert (run_dir / f"ssh-{h}.log").exists() and (run_dir / f"agent-{h}.log").exists()
    finally:
        stop = dragond("stop", "--run-dir", str(run_dir), env=env)
    assert stop.returncode == 0, stop
    assert_nothing_of_run_left(run_dir)


def start_fails_cleanly(tb, tmp_path: Path, hosts: list[str], needle: str) -> str:
    """`dragond start` on `hosts` must fail (exit 1) with an error containing `needle`, quickly,
    leaving no head, no agent on the reachable hosts and no head.json/token/current link."""
    env = run_env(tmp_path / "home")
    run_dir = tmp_path / f"run-{'-'.join(hosts)}"
    t0 = time.monotonic()
    cp = dragond("start", *ssh_launch_args(tb, hosts), "--run-dir", str(run_dir),
                 "--python", sys.executable, env=env)
    took = time.monotonic() - t0
    try:
        assert cp.returncode == 1, cp
        assert cp.stdout == "", cp
        assert needle in cp.stderr, cp.stderr
        assert "agents could not start on 1 node(s)" in cp.stderr, cp.stderr
        assert "--allow-missing starts without them" in cp.stderr, cp.stderr
        assert_nothing_of_run_left(run_dir)
        assert not (tmp_path / "home" / "current").exists()
        for h in tb.names:
            assert service_on(tb, h) == {}, h
    finally:
        if cp.returncode == 0:
            dragond("stop", "--run-dir", str(run_dir), env=env)
    print(f"\ndragond start {','.join(hosts)} failed after {took:.2f}s: {cp.stderr.strip()}")
    return cp.stderr


@pytest.mark.timeout(120)
def test_a_host_not_on_the_net_fails_the_start_naming_it(netns_hosts, no_service_left, tmp_path):
    err = start_fails_cleanly(netns_hosts, tmp_path, ["h1", "h2", "nosuchhost"],
                              "nosuchhost: ssh to nosuchhost exited with code 255")
    assert "Could not resolve hostname nosuchhost" in err


@pytest.fixture
def sshd_stopped(netns_hosts):
    """Stops h3's sshd for the test (connections to h3:22 are refused), starts it again after."""
    tb = netns_hosts
    pid_file = tb.dir / "sshd.h3.pid"
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: pid not in tb.pids_in("h3"), 10, "h3's sshd to exit")
    try:
        yield "h3"
    finally:
        config = tb.dir / "sshd_config.h3"
        subprocess.run(tb.exec_argv("h3", "/usr/sbin/sshd", "-f", str(config)), check=True,
                       timeout=30, stdin=subprocess.DEVNULL)
        wait_for(lambda: tb.run_on("h3", "hostname", check=False, timeout=10).stdout.strip() == "h3",
                 30, "h3's sshd to answer again")


@pytest.mark.timeout(120)
def test_a_host_whose_sshd_is_stopped_fails_the_start_naming_it(netns_hosts, sshd_stopped,
                                                                  no_service_left, tmp_path):
    start_fails_cleanly(netns_hosts, tmp_path, ["h1", "h2", sshd_stopped],
                        "h3: ssh to h3 exited with code 255: ssh: connect to host h3 port 22: "
                        "Connection refused")


@pytest.mark.timeout(120)
def test_allow_missing_starts_without_unreachable_hosts_and_says_so(netns_hosts, sshd_stopped,
                                                                     no_service_left, tmp_path):
    tb = netns_hosts
    env = run_env(tmp_path / "home")
    run_dir = tmp_path / "run"
    cp = dragond("start", *ssh_launch_args(tb, ["h1", "nosuchhost", "h2", sshd_stopped]),
                 "--allow-missing", "--run-dir", str(run_dir), "--python", sys.executable, env=env)
    try:
        assert cp.returncode == 0, cp
        out = cp.stdout + cp.stderr
        assert "2 of 4 agent(s) ready (ssh: h1, h2)" in out, out
        # It says which hosts it started without, and why.
        assert "nosuchhost: ssh to nosuchhost exited with code 255" in out, out
        assert "h3: ssh to h3 exited with code 255" in out, out
        nodes = by_node(nodes_json(env))
        assert sorted(nodes) == ["h1", "h2"], nodes
        assert service_on(tb, "h3") == {} and service_on(tb, "h4") == {}
        log = (run_dir / "dragond.log").read_text()
        assert "starting without 2 node(s) (--allow-missing)" in log
        print(f"\n{cp.stdout.strip()}")
    finally:
        stop = dragond("stop", "--run-dir", str(run_dir), env=env)
    assert stop.returncode == 0, stop
    assert_nothing_of_run_left(run_dir)


# ---------------------------------------------------------------- nodes add / remove

@pytest.mark.timeout(180)
def test_nodes_add_and_remove_while_tasks_run(netns_hosts, ssh_heads, tmp_path):
    tb = netns_hosts
    head = ssh_heads(["h1", "h2", "h3"])
    head.wait_ready()
    assert sorted(head.nodes()) == ["h1", "h2", "h3"] and service_on(tb, "h4") == {}

    # A host that does not exist: "HOST: why" on stderr, exit 1, nothing added.
    cp = head.ctl("nodes", "add", "nosuchhost", check=False, timeout=120)
    assert cp.returncode == 1, cp
    assert cp.stdout == ""
    assert "dragonctl: nosuchhost: ssh to nosuchhost exited with code 255" in cp.stderr, cp.stderr
    assert "Could not resolve hostname nosuchhost" in cp.stderr
    assert "dragonctl: 1 of 1 host(s) could not be added" in cp.stderr

    # h4 joins: dragonctl returns once its agent is ready.
    t0 = time.monotonic()
    cp = head.ctl("nodes", "add", "h4", timeout=120)
    add_took = time.monotonic() - t0
    assert cp.stdout == f"node h4 is ready (host h4, incarnation 1, {WORKERS} worker(s))\n", cp
    assert cp.stderr == ""
    assert len(agents_in(tb, "h4")) == 1
    again = head.ctl("nodes", "add", "h4", check=False)
    assert again.returncode == 1 and "AddNodes: an agent on h4 is already running" in again.stderr, again
    head.wait_ready(["h1", "h2", "h3", "h4"])

    n = 800
    with parsl_client(head, tmp_path) as (dfk, executor):
        futures = [where(i, 0.02) for i in range(n)]
        # Remove h2 while it runs tasks and has more queued.
        wait_for(lambda: head.nodes()["h2"]["running_tasks"] > 0 and head.counts()["DONE"] >= 100,
                 60, "h2 to be running tasks")
        t0 = time.monotonic()
        remove = subprocess.Popen([binary("dragonctl"), "nodes", "remove", "h2", "--wait"], env=head.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = remove.communicate(timeout=60)
        finally:
            if remove.poll() is None:
                remove.kill()
                remove.wait()
        remove_took = time.monotonic() - t0
        assert remove.returncode == 0, (out, err)
        first, gone = out.splitlines()
        assert re.fullmatch(r"node h2 is being removed: no new tasks are placed on it; its \d+ running "
                            r"task\(s\) finish(, its \d+ task\(s\) not started go back to the queue)?; "
                            r"then its agent leaves and the node is gone \('dragonctl nodes' shows it\)",
                            first), out
        assert gone.startswith("node h2 is gone"), out
        nodes = head.nodes()
        assert nodes["h2"]["state"] == "gone" and nodes["h2"]["removing"], nodes["h2"]
        assert nodes["h2"]["running_tasks"] == 0 and nodes["h2"]["queued_tasks"] == 0
        # Its agent and workers left h2 (not killed by anyone: told to leave).
        wait_for(lambda: service_on(tb, "h2") == {}, 10, "h2's agent and workers to exit")
        during = head.counts()
        results = results_of(futures, 120)

    assert [r[:2] for r in results] == [(i, i * i) for i in range(n)]
    hosts = {}
    for _, _, host, _ in results:
        hosts[host] = hosts.get(host, 0) + 1
    print(f"\nnodes add h4: {add_took:.2f}s; nodes remove h2 --wait: {remove_took:.2f}s "
          f"(tasks then: {during}); tasks by host {hosts}")
    assert set(hosts) == {"h1", "h2", "h3", "h4"}, hosts
    # Nothing lost, nothing run twice: every task done once, none re-run after a node loss.
    tasks = head.tasks()
    assert len(tasks) == n
    assert {t["state"] for t in tasks} == {"DONE"}
    assert all(t["infra_attempts"] == 0 for t in tasks)
    on_h2 = [t for t in tasks if t["node"] == "h2"]
    assert len(on_h2) == hosts["h2"]
    assert "node h2 runs nothing any more: its agent is told to leave" in head.log()
    # The other nodes never stopped.
    assert {h: n["state"] for h, n in head.nodes().items()} == {"h1": "ready", "h2": "gone",
                                                                "h3": "ready", "h4": "ready"}

    # dragond stop ends every agent it started, the added one too: nothing left on any host.
    stop_and_check_nothing_left(head, tb)
    assert_no_service_left(grace=0, kill=False)


# ---------------------------------------------------------------- bad input

@pytest.mark.timeout(120)
@pytest.mark.parametrize("hostfile, args, message, code", [
    ("", [], "the host file {hostfile} lists no hosts", 2),
    ("# only a comment\n\n   \n", [], "the host file {hostfile} lists no hosts", 2),
    ("h1\n-oProxyCommand=touch /tmp/x\n", [],
     "{hostfile} line 2: '-oProxyCommand=touch' starts with '-' (it would be read as an ssh option)", 2),
    ("h1\nh2;reboot\n", [], "{hostfile} line 2: 'h2;reboot' is not a host name (it holds ';')", 2),
    (None, ["--hostfile", "/nonexistent/hosts"], "cannot read the host file /nonexistent/hosts", 1),
    (None, ["--hosts", "h1,,h2"], "--hosts: '' is empty", 2),
    (None, ["--hosts", "h1", "--hostfile", "{hostfile}"], "give --hosts or --hostfile, not both", 2),
    (None, [], "--launcher ssh needs --hosts h1,h2,... or --hostfile FILE", 2),
    (None, ["--launcher", "teleport"], "--launcher 'teleport' is not one of auto, local, ssh, slurm, pbs, none", 2),
    (None, ["--launcher", "local", "--hosts", "h1,h2"],
     "--hosts and --hostfile are options of --launcher ssh, not of 'local'", 2),
    (None, ["--hosts", "h1", "--listen", "nosuchif7"],
     "--listen 'nosuchif7' is neither an address, an interface of this host, nor a host name", 1),
], ids=["empty-hostfile", "comments-only", "option-in-hostfile", "shell-in-hostfile", "missing-hostfile",
        "empty-host", "hosts-and-hostfile", "no-hosts", "unknown-launcher", "hosts-with-local",
        "unknown-interface"])
def test_bad_input_is_a_clear_error_and_leaves_nothing(netns_hosts, no_service_left, tmp_path, hostfile,
                                                      args, message, code):
    tb = netns_hosts
    env = run_env(tmp_path / "home")
    path = tmp_path / "hosts"
    path.write_text(hostfile if hostfile is not None else "h1\n")
    args = [a.format(hostfile=path) for a in args]
    if hostfile is not None:
        args = ["--hostfile", str(path), *args]
    launcher = [] if "--launcher" in args else ["--launcher", "ssh"]
    run_dir = tmp_path / "run"
    cp = dragond("start", *launcher, "--ssh-command", str(tb.ssh), *args, "--run-dir", str(run_dir),
                 "--python", sys.executable, env=env, timeout=60)
    try:
        # dragond exits 2 for a wrong option (the launcher's options are checked before anything
        # starts) and 1 for what it cannot do with right ones (a file it cannot read, an
        # interface this host does not have): docs/INTERFACES.md, dragond.
        assert cp.returncode == code, cp
        assert cp.stdout == ""
        assert f"dragond: {message.format(hostfile=path)}" in cp.stderr, cp.stderr
        assert_nothing_of_run_left(run_dir, grace=5)
        assert not (tmp_path / "home" / "current").exists()
        for h in tb.names:
            assert service_on(tb, h) == {}, h
            assert not (run_dir / f"ssh-{h}.log").exists()      # no ssh was even started
    finally:
        if cp.returncode == 0:
            dragond("stop", "--run-dir", str(run_dir), env=env)


@pytest.mark.timeout(60)
def test_nodes_add_to_a_head_that_cannot_add_nodes(tmp_path):
    """The local launcher cannot add nodes: dragonctl says so (exit 1), the head keeps serving."""
    head = start_head(tmp_path, "--workers", "1")
    try:
        # The local launcher answers for itself once the head has launched its agent.
        wait_for(lambda: [n["state"] for n in head.ctl_json("nodes")["nodes"]] == ["ready"], 60,
                 "the local agent to be ready")
        cp = head.ctl("nodes", "add", "h4", check=False)
        assert cp.returncode == 1, cp
        assert cp.stderr == ("dragonctl: AddNodes: the local launcher cannot add nodes to a running head "
                             "(the ssh launcher can)\n"), cp.stderr
        usage = head.ctl("nodes", "add", check=False)
        assert usage.returncode == 2
        assert "'nodes add' takes one or more hosts" in usage.stderr
        wrong = head.ctl("nodes", "drain", "x", "--wait", check=False)
        assert wrong.returncode == 2 and "--wait is a flag of 'nodes remove', not of 'nodes drain'" in wrong.stderr
        unknown = head.ctl("nodes", "remove", "h9", check=False)
        assert unknown.returncode == 1 and unknown.stderr == "dragonctl: no node 'h9' in this run\n", unknown
        assert head.ctl_json("status")["nodes"] == 1
    finally:
        stop_head(head)
