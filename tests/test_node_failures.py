"""Nodes that fail, through Parsl, against the real dragond, agents and workers (issue 10).

- kill -9 of the embedded head's agent with 1,000 tasks in flight: every task completes, on the
  restarted agent, each future exactly once;
- SIGSTOP of the agent: the head declares it lost within 5 s, its tasks are re-placed and complete;
- a stopped agent that wakes up (SIGCONT) after the head re-placed its work is fenced: its late
  result is never delivered, its old workers are gone, it comes back as a new incarnation;
- an agent that cannot be restarted (its binary made unrunnable): every queued task fails with
  NoNodesAvailable naming why, within the no-node grace period;
- nothing of the run is left running afterwards.

No sleeps as synchronisation: every wait is on an observable state (wait_for), with a timeout.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from parsl import python_app

from conftest import (Head, binary, head_and_dfk, load_parsl, processes_of_run, start_head,
                      stop_head, wait_for)

from dragon_parsl.errors import NoNodesAvailable


@python_app
def work(i, seconds):
    """Sleeps, then says which node ran it and which attempt of it this was."""
    import os
    import time
    time.sleep(seconds)
    return i, os.environ.get("DRAGON_NODE_ID", "?")


def nodes(ctl) -> list[dict]:
    return ctl("nodes")["nodes"]


def ctl_json_for(run_dir: Path):
    """dragonctl --json against the head of `run_dir` (its token found through head.json)."""
    import json

    def run(*args: str) -> dict:
        cp = subprocess.run([binary("dragonctl"), "--run-dir", str(run_dir), "--json", *args],
                            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, f"dragonctl {' '.join(args)}: {cp.stderr}"
        return json.loads(cp.stdout)
    return run


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(") ", 1)[-1][:1] != "Z"


def unknown_result_warnings(caplog) -> list[str]:
    """A result delivered twice shows up as one for a client_ref the executor no longer knows."""
    return [r.getMessage() for r in caplog.records if "unknown client_ref" in r.getMessage()]


@pytest.mark.timeout(240)
def test_agent_killed_mid_run_every_task_completes_once(worker_pythonpath, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dragon_parsl")
    dfk = None
    try:
        dfk, executor = load_parsl(tmp_path, workers_per_node=2)  # the embedded default
        run_dir = executor.local_head.run_dir
        ctl = ctl_json_for(run_dir)
        futures = [work(i, 0.01) for i in range(1000)]
        # Mid-run: some done, most still queued or running.
        wait_for(lambda: 50 <= sum(f.done() for f in futures) < 900, 60, "the run to be under way",
                 interval=0.01)
        agent = nodes(ctl)[0]
        assert agent["state"] == "ready" and int(agent["incarnation"]) == 1
        os.kill(int(agent["agent_pid"]), signal.SIGKILL)
        results = [f.result(timeout=120) for f in futures]
        assert sorted(i for i, _ in results) == list(range(1000))
        # The local launcher restarted the agent: incarnation 2 ran the rest.
        after = nodes(ctl)[0]
        assert after["state"] == "ready"
        assert int(after["incarnation"]) >= 2
        assert int(after["agent_pid"]) != int(agent["agent_pid"])
        assert unknown_result_warnings(caplog) == []
        log = (run_dir / "dragond.log").read_text()
        assert "lost (agent stream broke)" in log or "lost (agent closed its stream)" in log
    finally:
        if dfk is not None:
            dfk.cleanup()
    wait_for(lambda: not processes_of_run(run_dir), 20, "the run's processes to exit")


@pytest.mark.timeout(240)
def test_stopped_agent_is_lost_within_5s_and_its_tasks_complete(worker_pythonpath, tmp_path):
    dfk = None
    try:
        dfk, executor = load_parsl(tmp_path, workers_per_node=2)
        run_dir = executor.local_head.run_dir
        ctl = ctl_json_for(run_dir)
        futures = [work(i, 0.2) for i in range(40)]
        wait_for(lambda: any(f.done() for f in futures), 60, "the first task to finish")
        agent = nodes(ctl)[0]
        pid = int(agent["agent_pid"])
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: nodes(ctl)[0]["state"] == "lost" or
                     int(nodes(ctl)[0]["incarnation"]) > 1, 10, "the head to declare the agent lost",
                     interval=0.05)
            detected = time.monotonic() - stopped_at
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)  # the launcher SIGKILLs it anyway; never leave it stopped
        assert detected < 5.0, f"a stopped agent was declared lost after {detected:.1f} s"
        results = [f.result(timeout=120) for f in futures]
        assert sorted(i for i, _ in results) == list(range(40))
        wait_for(lambda: nodes(ctl)[0]["state"] == "ready" and int(nodes(ctl)[0]["incarnation"]) >= 2,
                 30, "the restarted agent")
        assert not alive(pid), "the hung agent's process was not killed"
        log = (run_dir / "dragond.log").read_text()
        assert "no heartbeat for" in log and "was declared lost by the head" in log
    finally:
        if dfk is not None:
            dfk.cleanup()
    wait_for(lambda: not processes_of_run(run_dir), 20, "the run's processes to exit")


@pytest.mark.timeout(240)
def test_workers_and_agent_signalled_together_run_their_tasks_again(worker_pythonpath, tmp_path):
    # What scancel, qdel, the walltime or a Ctrl-C do: SIGTERM to the agent and its workers at
    # once. Here the workers get theirs 0.3 s before the agent, so the agent reaps them first: it
    # holds those ends (agent/held_reports.h) until its own SIGTERM stops it, the head loses the
    # node and runs the tasks again (infrastructure retries, Parsl retries=0): none fails
    # WorkerLost.
    dfk = None
    try:
        dfk, executor = load_parsl(tmp_path, workers_per_node=2)
        run_dir = executor.local_head.run_dir
        ctl = ctl_json_for(run_dir)
        futures = [work(i, 3) for i in range(2)]
        wait_for(lambda: any(int(n["running_tasks"]) == 2 for n in nodes(ctl)), 60, "both tasks running")
        agent_pid = int(nodes(ctl)[0]["agent_pid"])
        workers = children(agent_pid)
        assert len(workers) >= 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)  # the race being tested: the agent reaps its workers before its signal
        os.kill(agent_pid, signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
        assert sorted(i for i, _ in results) == [0, 1]
        tasks = ctl("ps", "--limit", "0")["tasks"]
        assert all(int(t.get("infra_attempts", 0)) == 1 for t in tasks), tasks
        agent_log = "\n".join(p.read_text() for p in run_dir.glob("**/agent*.log"))
        # (Its "not reported" line may be missing: the local launcher SIGKILLs a lost agent.)
        assert agent_log.count("holding the report") == 2, agent_log[-3000:]
        assert "reported now" not in agent_log, agent_log[-3000:]
    finally:
        if dfk is not None:
            dfk.cleanup()
    wait_for(lambda: not processes_of_run(run_dir), 20, "the run's processes to exit")


def start_agent(head: Head, node: str, workers: int = 1, *extra: str) -> subprocess.Popen:
    """A dragon-agent started by the test (dragond --agents none), token in its environment."""
    env = dict(head.env, DRAGON_TOKEN=head.token)
    return subprocess.Popen(
        [binary("dragon-agent"), "--head", head.address, "--node-id", node, "--run-dir",
         str(head.run_dir), "--workers", str(workers), "--python", sys.executable, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def node_state(head: Head, node: str) -> dict:
    for n in head.ctl_json("nodes")["nodes"]:
        if n["node_id"] == node:
            return n
    return {}


@pytest.mark.timeout(240)
def test_stale_agent_waking_up_is_fenced(worker_pythonpath, tmp_path):
    """SIGSTOP one of two agents while it runs a task: the task runs again on the other; SIGCONT
    later: the stale agent kills what it ran, its result is never delivered, and it registers
    afresh as incarnation 2."""
    head = start_head(tmp_path, "--agents", "none")
    agents: list[subprocess.Popen] = []
    stopped = None
    dfk = None
    try:
        agents = [start_agent(head, "a"), start_agent(head, "b")]
        wait_for(lambda: all(node_state(head, n).get("state") == "ready" for n in "ab"), 60,
                 "agents a and b to be ready")
        wait_for(lambda: all(int(node_state(head, n).get("ready_workers", 0)) == 1 for n in "ab"),
                 60, "their workers to be ready")
        dfk, executor = load_parsl(tmp_path, address=head.address, token=head.token)
        # One long task on each node (1 worker each; prefetch may queue the second behind it).
        futures = [work(i, 6) for i in range(2)]
        wait_for(lambda: all(int(node_state(head, n).get("running_tasks", 0)) == 1 for n in "ab"),
                 60, "a task running on each agent")
        a_pid = agents[0].pid
        a_workers = children(a_pid)
        assert a_workers, "agent a has no worker process"
        os.kill(a_pid, signal.SIGSTOP)
        stopped = a_pid
        stopped_at = time.monotonic()
        wait_for(lambda: node_state(head, "a").get("state") == "lost", 10, "a to be declared lost",
                 interval=0.05)
        assert time.monotonic() - stopped_at < 5.0
        # Its task goes back to the queue and runs on b (infrastructure retry), after b's own.
        results = sorted(f.result(timeout=60) for f in futures)
        assert [i for i, _ in results] == [0, 1]
        assert all(node == "b" for _, node in results), results
        # Wake the stale agent: it notices the head is gone, kills its workers, registers again.
        os.kill(a_pid, signal.SIGCONT)
        stopped = None
        wait_for(lambda: node_state(head, "a").get("state") == "ready" and
                 int(node_state(head, "a").get("incarnation", 0)) == 2, 30,
                 "a to come back as incarnation 2")
        assert agents[0].poll() is None, "agent a exited instead of registering afresh"
        wait_for(lambda: not any(alive(p) for p in a_workers), 10, "a's old workers to be killed")
        # Its result, finished while stopped, was never delivered; a new task runs on it.
        assert executor.outstanding() == 0
        log = (head.run_dir / "agent-a.log").read_text()
        assert "registering again as a new incarnation" in log
        more = [work(i, 0.01) for i in range(20)]
        assert sorted(f.result(timeout=60)[0] for f in more) == list(range(20))
    finally:
        if stopped is not None and alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        if dfk is not None:
            dfk.cleanup()
        stop_head(head)
        for p in agents:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    wait_for(lambda: not processes_of_run(head.run_dir), 20, "the run's processes to exit")


@pytest.mark.timeout(180)
def test_agent_that_cannot_restart_fails_queued_tasks_within_the_grace(worker_pythonpath, tmp_path):
    agent_copy = tmp_path / "bin" / "dragon-agent"
    agent_copy.parent.mkdir()
    shutil.copy2(binary("dragon-agent"), agent_copy)
    grace = 5
    with head_and_dfk(tmp_path, ("--workers", "1", "--agent-binary", str(agent_copy),
                                 "--node-grace", str(grace), "--agent-restarts", "2")) as (
            dfk, executor, head):
        assert work(0, 0).result(timeout=60)[0] == 0
        futures = [work(i, 2) for i in range(6)]
        wait_for(lambda: int(node_state(head, node_state_id(head)).get("running_tasks", 0)) == 1,
                 30, "a task to run")
        agent_copy.chmod(stat.S_IRUSR)  # no longer executable: restarts fail
        pid = int(head.ctl_json("nodes")["nodes"][0]["agent_pid"])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        for f in futures:
            with pytest.raises(NoNodesAvailable) as info:
                f.result(timeout=grace + 30)
            text = str(info.value)
            assert f"none came back within {grace} s" in text
            assert "--node-grace" in text
        elapsed = time.monotonic() - killed_at
        # The grace runs from the loss; nothing may wait much past it.
        assert elapsed < grace + 5, f"tasks failed {elapsed:.1f} s after the agent was killed"
        # The launcher said why, and the tasks' errors carry it.
        log = (head.run_dir / "dragond.log").read_text()
        assert "could not be kept running" in log
        assert "could not be kept running" in text
        # A later task fails at once too, rather than waiting for an agent that will not come.
        with pytest.raises(NoNodesAvailable):
            work(99, 0).result(timeout=10)
    wait_for(lambda: not processes_of_run(head.run_dir), 20, "the run's processes to exit")


def node_state_id(head: Head) -> str:
    return head.ctl_json("nodes")["nodes"][0]["node_id"]
