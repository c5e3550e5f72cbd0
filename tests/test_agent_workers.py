"""dragon-agent's worker pool against the real dragond, agent and Python workers.

A worker that dies mid-task (kill -9, os._exit) must fail only its own task,
with an error naming the task, node, pid and cause; the pool must replace it;
and stopping the head must leave no agent or worker process behind.
Tasks are driven through Parsl with DragonExecutor, as a user would.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import pytest
from parsl import python_app

from conftest import processes_of_run, start_head, stop_head, wait_for, wait_for_workers, parsl_on, task_id_of
from dragon_parsl.errors import WorkerLost

TESTS_DIR = Path(__file__).resolve().parent
WORKER_MODULE = "dragon_parsl.worker"


# --- apps (module level: Parsl pickles them by reference) --------------------

def pid_then_sleep_task(pid_file, seconds):
    """Publishes the worker's pid, then stays busy so the test can kill it."""
    import os
    import time
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, pid_file)
    time.sleep(seconds)
    return os.getpid()


def exit_task(code):
    import os
    os._exit(code)


def pid_after_task(seconds):
    import os
    import time
    time.sleep(seconds)
    return os.getpid()


pid_then_sleep = python_app(pid_then_sleep_task)
exiter = python_app(exit_task)
pid_after = python_app(pid_after_task)


# --- helpers ----------------------------------------------------------------

@pytest.fixture
def head2(tmp_path, monkeypatch):
    # The workers inherit dragond's environment and must import this module.
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    h = start_head(tmp_path, "--workers", "2")
    try:
        wait_for_workers(h, 2)
        yield h
    finally:
        stop_head(h)


def only_node(head) -> str:
    nodes = head.ctl_json("nodes")["nodes"]
    assert len(nodes) == 1, nodes
    return nodes[0]["node_id"]


def worker_pids(run_dir: Path) -> set[int]:
    """Pids of live Python workers of this run (zombies excluded)."""
    return {int(line.split(":", 1)[0]) for line in processes_of_run(run_dir)
            if WORKER_MODULE in line}


def wait_pid_file(path: Path, timeout: float = 60) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), timeout,
                        f"the task to write {path}"))


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.split(") ", 1)[-1].startswith("Z")


# --- tests ------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_kill9_fails_only_its_own_task(head2, tmp_path):
    head = head2
    node = only_node(head)
    pid_file = tmp_path / "victim.pid"
    with parsl_on(head, tmp_path):
        victim = pid_then_sleep(str(pid_file), 60)
        victim_pid = wait_pid_file(pid_file)
        # Work queued and running on the other worker while the victim dies.
        others = [pid_after(0.2) for _ in range(6)]
        victim_id = task_id_of(victim)
        os.kill(victim_pid, signal.SIGKILL)

        with pytest.raises(WorkerLost) as err:
            victim.result(timeout=60)
        expected = (f"task {victim_id} on node {node}: worker pid {victim_pid} died "
                    f"(killed by signal 9 SIGKILL)")
        assert expected in str(err.value), str(err.value)

        done_pids = [f.result(timeout=60) for f in others]
        assert len(done_pids) == 6
        assert victim_pid not in done_pids
        info = head.ctl_json("show", str(victim_id))
        assert info["state"] == "FAILED", info
        assert info["worker_pid"] == victim_pid


@pytest.mark.timeout(180)
def test_os_exit_fails_only_its_own_task(head2, tmp_path):
    head = head2
    node = only_node(head)
    with parsl_on(head, tmp_path):
        before = worker_pids(head.run_dir)
        bad = exiter(3)
        good = [pid_after(0.1) for _ in range(4)]
        with pytest.raises(WorkerLost) as err:
            bad.result(timeout=60)
        bad_id = task_id_of(bad)
        message = str(err.value)
        m = re.search(rf"task {bad_id} on node {re.escape(node)}: worker pid (\d+) died "
                      rf"\(exited with code 3\)", message)
        assert m, message
        assert int(m.group(1)) in before
        assert all(isinstance(f.result(timeout=60), int) for f in good)


@pytest.mark.timeout(180)
def test_worker_count_recovers_after_a_kill(head2, tmp_path):
    head = head2
    pid_file = tmp_path / "victim.pid"
    with parsl_on(head, tmp_path):
        original = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(worker_pids(head.run_dir)),
                            30, "two worker processes")
        victim = pid_then_sleep(str(pid_file), 60)
        victim_pid = wait_pid_file(pid_file)
        assert victim_pid in original
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(WorkerLost):
            victim.result(timeout=60)

        # Back to two live workers, one of them new.
        now = wait_for(lambda: (lambda p: p if len(p) == 2 and victim_pid not in p else None)(
            worker_pids(head.run_dir)), 60, "the killed worker to be replaced")
        assert len(now - original) == 1

        # Both run tasks concurrently again: two overlapping tasks, two pids.
        pair = [pid_after(2.0), pid_after(2.0)]
        pids = {f.result(timeout=60) for f in pair}
        assert pids == now, (pids, now)


@pytest.mark.timeout(180)
def test_stopping_the_head_leaves_no_agent_or_worker(tmp_path, monkeypatch):
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    head = start_head(tmp_path, "--workers", "2")
    try:
        wait_for_workers(head, 2)
        pid_file = tmp_path / "busy.pid"
        with parsl_on(head, tmp_path):
            busy = pid_then_sleep(str(pid_file), 120)  # a worker busy at shutdown
            busy_pid = wait_pid_file(pid_file)
            procs = processes_of_run(head.run_dir)
            assert any("dragon-agent" in p for p in procs), procs
            assert len(worker_pids(head.run_dir)) == 2, procs
            agent_pids = [int(p.split(":", 1)[0]) for p in procs if "dragon-agent" in p]

            stop_head(head)
            with contextlib.suppress(Exception):
                busy.result(timeout=30)  # fails one way or another; the processes matter
    finally:
        stop_head(head)
    left = wait_for(lambda: not processes_of_run(head.run_dir), 15,
                    "every process of the run to exit") and processes_of_run(head.run_dir)
    assert left == []
    assert gone(busy_pid) and all(gone(p) for p in agent_pids)


@pytest.mark.timeout(180)
def test_head_killed_9_leaves_no_agent_or_worker(tmp_path, monkeypatch):
    """No clean shutdown at all: the agent must still notice and take its workers down."""
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    head = start_head(tmp_path, "--workers", "2")
    try:
        wait_for_workers(head, 2)
        workers = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(worker_pids(head.run_dir)),
                           30, "two worker processes")
        head.proc.kill()
        head.proc.wait(timeout=30)
        wait_for(lambda: not processes_of_run(head.run_dir), 15,
                 "the agent and its workers to exit after the head was killed")
        assert all(gone(p) for p in workers)
    finally:
        stop_head(head)
