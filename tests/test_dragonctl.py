"""dragonctl against the real dragond, agents and Python workers.

Tasks are run through Parsl with DragonExecutor, then dragonctl's text and
JSON views are checked against what the tasks themselves reported (e.g. the
worker pid a task saw must be the pid `show` prints). Bad usage, a missing
head and an unreachable head must fail fast with clear messages.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from parsl import python_app

from conftest import binary, start_head, stop_head, wait_for, wait_for_workers, parsl_on, task_id_of
from dragon_parsl.errors import TaskCancelled

TESTS_DIR = Path(__file__).resolve().parent
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
STATES = "pending, scheduled, running, done, failed, cancelled"


# --- apps (module level: Parsl pickles them by reference, see apps_importable)

def whoami_task(i):
    import os
    return {"i": i, "pid": os.getpid()}


def raise_task(message):
    raise ValueError(message)


def sleep_task(seconds):
    import time
    time.sleep(seconds)
    return seconds


def add_task(a, b):
    import os
    return a + b, os.getpid()


whoami = python_app(whoami_task)
raiser = python_app(raise_task)
sleeper = python_app(sleep_task)
adder = python_app(add_task)


# --- helpers ----------------------------------------------------------------

@pytest.fixture
def apps_importable(monkeypatch):
    """Lets the workers import this module.

    Parsl pickles functions of an importable module by reference, so the
    workers (started by dragond through dragon-agent, inheriting its
    environment) need this directory on their path, as a user's workflow
    modules would be.
    """
    paths = [str(TESTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture
def head2(tmp_path, apps_importable):
    h = start_head(tmp_path, "--workers", "2")
    try:
        yield h
    finally:
        stop_head(h)


@pytest.fixture
def head1(tmp_path, apps_importable):
    h = start_head(tmp_path, "--workers", "1")
    try:
        yield h
    finally:
        stop_head(h)


def no_head_env(tmp_path) -> dict:
    env = dict(os.environ, DRAGON_HOME=str(tmp_path / "no-dragon-here"))
    env.pop("DRAGON_HEAD", None)
    return env


def run_ctl(env, *args, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragonctl"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def key_values(text: str) -> dict:
    """'key:  value' lines (as status and show print them) as a dict."""
    out = {}
    for line in text.splitlines():
        if line.startswith(" " * 4):
            continue  # continuation of a multi-line value
        key, sep, value = line.partition(":")
        assert sep, f"not a key: value line: {line!r}"
        out[key.strip()] = value.strip()
    return out


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an aligned table whose cells contain no spaces."""
    lines = [l for l in text.splitlines() if l and not l.startswith("(")]
    return lines[0].split(), [l.split() for l in lines[1:]]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.split(") ", 1)[-1].startswith("Z")


# --- views of a head that ran tasks -----------------------------------------

@pytest.mark.timeout(240)
def test_views_after_parsl_tasks(head2, tmp_path):
    head = head2
    wait_for_workers(head, 2)
    with parsl_on(head, tmp_path):
        futures = [whoami(i) for i in range(6)]
        bad = raiser("boom from test_dragonctl")
        results = [f.result(timeout=120) for f in futures]
        with pytest.raises(ValueError, match="boom from test_dragonctl"):
            bad.result(timeout=120)
        ids = [task_id_of(f) for f in futures]
        bad_id = task_id_of(bad)
        pid_of = {tid: r["pid"] for tid, r in zip(ids, results)}
        assert len(set(ids + [bad_id])) == 7

        # status: text and JSON
        st = key_values(head.ctl("status").stdout)
        assert st["address"] == head.address
        assert st["pid"] == str(head.proc.pid)
        assert Path(st["run dir"]).resolve() == head.run_dir.resolve()
        assert st["nodes"] == "1" and st["workers"] == "2"
        assert int(st["sessions"]) >= 1
        # An app that raised still ends DONE (its exception is its result).
        assert st["tasks"] == "7" and st["done"] == "7" and st["failed"] == "0"
        assert re.fullmatch(ISO_TIME, st["started"]), st["started"]
        sj = head.ctl_json("status")
        assert sj["address"] == head.address and sj["pid"] == head.proc.pid
        assert int(sj["tasks_by_state"]["DONE"]) == 7
        assert sj["run_id"] and sj["head_version"] and sj["protocol_version"] == 1

        # nodes
        header, rows = table(head.ctl("nodes").stdout)
        assert header == ["NODE", "HOST", "WORKERS", "BUSY", "ASSIGNED", "DONE", "STATE", "HEARTBEAT"]
        assert len(rows) == 1
        node_id, _host, workers, busy, assigned, done, state = rows[0][:7]
        assert (workers, busy, assigned, done, state) == ("2", "0", "0", "7", "connected")
        # The head counts a result when it forwards it; allow a moment anyway.
        wait_for(lambda: head.ctl_json("nodes")["nodes"][0]["busy_workers"] == 0, 10, "idle workers")
        nj = head.ctl_json("nodes")["nodes"]
        assert len(nj) == 1 and nj[0]["node_id"] == node_id
        assert nj[0]["workers"] == 2 and int(nj[0]["tasks_done"]) == 7
        assert nj[0]["agent_pid"] > 0 and nj[0]["state"] == "connected"

        # ps: every task, with the worker pid the task itself saw
        header, rows = table(head.ctl("ps").stdout)
        assert header == ["ID", "STATE", "NAME", "NODE", "WORKER", "AGE/RUNTIME"]
        by_id = {int(r[0]): r for r in rows}
        assert set(by_id) == set(ids) | {bad_id}
        for tid in ids:
            assert by_id[tid][1:5] == ["done", "whoami_task", node_id, str(pid_of[tid])]
        assert by_id[bad_id][1:3] == ["done", "raise_task"]
        pj = head.ctl_json("ps")
        assert {int(t["task_id"]) for t in pj["tasks"]} == set(ids) | {bad_id}
        assert all(t["state"] == "DONE" for t in pj["tasks"]) and int(pj["total_matching"]) == 7

        # ps filters and limits
        assert len(table(head.ctl("ps", "--state", "done").stdout)[1]) == 7
        assert head.ctl("ps", "--state", "running").stdout == "no tasks\n"
        failed = head.ctl_json("ps", "--state", "failed")
        assert failed["tasks"] == [] and failed["total_matching"] == "0"
        limited = head.ctl_json("ps", "--limit", "2")
        assert len(limited["tasks"]) == 2 and limited["total_matching"] == "7"
        assert "(2 of 7 matching tasks shown" in head.ctl("--limit=2", "ps").stdout

        # show: a task that returned, in text and JSON
        tid = ids[0]
        sh = key_values(head.ctl("show", str(tid)).stdout)
        assert sh["task"] == str(tid) and sh["state"] == "done" and sh["outcome"] == "ok"
        assert sh["name"] == "whoami_task" and sh["node"] == node_id
        assert sh["worker pid"] == str(pid_of[tid]) and sh["kind"] == "python"
        for key in ("submitted", "scheduled", "running", "finished"):
            assert re.match(ISO_TIME, sh[key]), (key, sh[key])
        assert "error" not in sh and "runtime" in sh and "total" in sh
        tj = head.ctl_json("show", str(tid))
        times = [int(tj["times"][k]) for k in ("submitted_us", "scheduled_us", "running_us", "finished_us")]
        assert 0 < times[0] <= times[1] <= times[2] <= times[3], times
        assert tj["worker_pid"] == pid_of[tid] and tj["outcome"] == "OK" and tj["error"] == ""

        # show: the task whose app raised (its outcome: test_show_app_exception_outcome)
        assert key_values(head.ctl("show", str(bad_id)).stdout)["state"] == "done"

        # flags may come before or after the command; --run-dir and --head find the same head
        assert json.loads(head.ctl("--json", "ps").stdout) == json.loads(head.ctl("ps", "--json").stdout)
        elsewhere = no_head_env(tmp_path)
        by_dir = run_ctl(elsewhere, "status", "--json", "--run-dir", str(head.run_dir))
        assert by_dir.returncode == 0, by_dir.stderr
        assert json.loads(by_dir.stdout)["run_id"] == sj["run_id"]
        by_addr = run_ctl(elsewhere, "--head", head.address, "--json", "show", str(tid))
        assert by_addr.returncode == 0, by_addr.stderr
        assert int(json.loads(by_addr.stdout)["task_id"]) == tid
        by_env = run_ctl(dict(elsewhere, DRAGON_HEAD=head.address), "nodes", "--json")
        assert by_env.returncode == 0 and json.loads(by_env.stdout)["nodes"][0]["node_id"] == node_id


@pytest.mark.timeout(120)
def test_show_app_exception_outcome(head2, tmp_path):
    wait_for_workers(head2, 2)
    with parsl_on(head2, tmp_path):
        bad = raiser("boom for show")
        with pytest.raises(ValueError, match="boom for show"):
            bad.result(timeout=120)
        bad_id = task_id_of(bad)
        assert head2.ctl_json("show", str(bad_id))["outcome"] == "APP_EXCEPTION"
        assert key_values(head2.ctl("show", str(bad_id)).stdout)["outcome"] == "app exception"


@pytest.mark.timeout(120)
def test_unknown_task_id(head):
    for command in ("show", "cancel"):
        cp = head.ctl(command, "987654", check=False)
        assert cp.returncode == 1, cp
        assert cp.stderr == "dragonctl: no task 987654 in this run\n"
        assert cp.stdout == ""


@pytest.mark.timeout(120)
def test_json_has_every_field_of_a_fresh_head(head):
    wait_for_workers(head, 2)
    st = head.ctl_json("status")
    for key in ("head_version", "protocol_version", "run_id", "address", "pid", "started_us",
                "run_dir", "nodes", "workers", "sessions", "tasks_by_state"):
        assert key in st, key
    ps = head.ctl_json("ps")
    assert ps == {"tasks": [], "total_matching": "0"}
    assert head.ctl("ps").stdout == "no tasks\n"
    node = head.ctl_json("nodes")["nodes"][0]
    for key in ("node_id", "host", "cores", "memory_bytes", "agent_pid", "agent_version", "workers",
                "busy_workers", "assigned_tasks", "tasks_done", "connected_us", "last_heartbeat_us",
                "state"):
        assert key in node, key


# --- cancel -------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_cancel_pending_and_running_tasks(head1, tmp_path):
    head = head1
    wait_for_workers(head, 1)
    with parsl_on(head, tmp_path):
        sleepers = [sleeper(600) for _ in range(4)]
        sleeper_ids = [task_id_of(f) for f in sleepers]
        future_of = dict(zip(sleeper_ids, sleepers))

        def states():
            return {int(t["task_id"]): t["state"] for t in head.ctl_json("ps")["tasks"]}

        # One worker: one sleeper runs, the others wait (pending or scheduled).
        wait_for(lambda: list(states().values()).count("RUNNING") == 1
                 and "PENDING" in states().values(), 60, "one running and one pending task")
        quick = adder(40, 2)
        quick_id = task_id_of(quick)

        # A pending task
        pending_id = next(t for t, s in states().items() if s == "PENDING" and t in future_of)
        cp = head.ctl("cancel", str(pending_id))
        assert cp.stdout == f"task {pending_id} cancelled (was pending)\n"
        with pytest.raises(TaskCancelled, match="(?i)cancel"):
            future_of[pending_id].result(timeout=60)
        assert key_values(head.ctl("show", str(pending_id)).stdout)["state"] == "cancelled"
        assert pending_id not in {int(t["task_id"]) for t in head.ctl_json("ps", "--state", "pending")["tasks"]}

        # The running task: its worker is killed and replaced.
        running_id = next(t for t, s in states().items() if s == "RUNNING")
        assert running_id in future_of
        victim_pid = head.ctl_json("show", str(running_id))["worker_pid"]
        assert victim_pid > 0 and alive(victim_pid)
        reply = head.ctl_json("cancel", str(running_id))
        assert reply == {"previous_state": "RUNNING", "state": "CANCELLED"}, reply
        with pytest.raises(TaskCancelled, match="(?i)cancel"):
            future_of[running_id].result(timeout=60)
        wait_for(lambda: not alive(victim_pid), 30, f"worker pid {victim_pid} to be killed")
        shown = head.ctl_json("show", str(running_id))
        assert shown["state"] == "CANCELLED" and int(shown["times"]["finished_us"]) > 0

        # Cancel the remaining sleepers; the quick task then runs on the new worker.
        for tid in sleeper_ids:
            if tid not in (pending_id, running_id):
                assert head.ctl("cancel", str(tid)).returncode == 0
        assert quick.result(timeout=120)[0] == 42
        quick_pid = quick.result()[1]
        assert quick_pid != victim_pid and alive(quick_pid)
        assert head.ctl_json("show", str(quick_id))["worker_pid"] == quick_pid
        for f in sleepers:
            assert isinstance(f.exception(timeout=60), TaskCancelled)
        wait_for(lambda: head.ctl_json("nodes")["nodes"][0]["workers"] == 1, 30, "the replaced worker")

        counts = head.ctl_json("status")["tasks_by_state"]
        assert int(counts.get("CANCELLED", 0)) == 4 and int(counts.get("DONE", 0)) == 1, counts

        # Cancelling a finished task changes nothing and says so.
        cp = head.ctl("cancel", str(quick_id))
        assert cp.stdout == f"task {quick_id} had already ended (done); nothing to cancel\n"
        assert head.ctl_json("show", str(quick_id))["state"] == "DONE"


# --- usage errors, no head, unreachable head ----------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["show", "abc"], "dragonctl: bad task id 'abc': expected a positive whole number"),
    (["cancel", "-3"], "dragonctl: bad task id '-3'"),
    (["show"], "dragonctl: 'show' takes one task id, got 0 arguments"),
    (["ps", "--state", "sleeping"], f"dragonctl: unknown state 'sleeping' for --state; accepted: {STATES}"),
    (["ps", "--limit", "many"], "dragonctl: bad --limit 'many'"),
    (["frobnicate"], "dragonctl: unknown command 'frobnicate'; commands: status, nodes, ps, show, cancel, help"),
    (["status", "--verbose"], "dragonctl: unknown flag '--verbose'"),
    (["--head", "localhost", "status"], "dragonctl: bad --head address 'localhost': expected HOST:PORT"),
    (["status", "--head"], "dragonctl: --head needs a value"),
    (["nodes", "--state", "done"], "dragonctl: --state is a flag of 'ps', not of 'nodes'"),
    (["status", "now"], "dragonctl: 'status' takes no arguments, got 'now'"),
    (["--timeout", "-1", "status"], "dragonctl: bad --timeout '-1'"),
    ([], "dragonctl: no command given"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    cp = run_ctl(no_head_env(tmp_path), *args)
    assert cp.returncode == 2, cp
    assert message in cp.stderr
    assert cp.stdout == ""


@pytest.mark.timeout(60)
def test_help_lists_every_command_and_flag(tmp_path):
    env = no_head_env(tmp_path)
    for args in (["--help"], ["help"], ["-h"]):
        cp = run_ctl(env, *args)
        assert cp.returncode == 0 and cp.stderr == ""
        for word in ("status", "nodes", "ps", "show TASK", "cancel TASK", "help [COMMAND]",
                     "--head HOST:PORT", "--run-dir DIR", "--json", "--timeout", "--state", "--limit"):
            assert word in cp.stdout, word
    for command, words in {"ps": ["--state STATE", "--limit N", STATES],
                           "show": ["show TASK"], "cancel": ["cancel TASK", "killed"],
                           "status": ["uptime"], "nodes": ["HEARTBEAT"]}.items():
        for args in (["help", command], [command, "--help"]):
            cp = run_ctl(env, *args)
            assert cp.returncode == 0, cp
            for word in words + ["--head HOST:PORT", "--json"]:
                assert word in cp.stdout, (args, word)


@pytest.mark.timeout(60)
def test_no_head_running(tmp_path):
    env = no_head_env(tmp_path)
    home = env["DRAGON_HOME"]
    cp = run_ctl(env, "status")
    assert cp.returncode == 1
    assert cp.stderr == (f"dragonctl: no dragond is running (no $DRAGON_HEAD and no "
                         f"{home}/current/head.json); start one with 'dragond start'\n")
    run_dir = tmp_path / "some-run"
    cp = run_ctl(env, "ps", "--run-dir", str(run_dir))
    assert cp.returncode == 1
    assert f"no {run_dir}/head.json); start one with 'dragond start'" in cp.stderr


@pytest.mark.timeout(60)
def test_stale_head_json_and_closed_port_fail_fast(tmp_path):
    port = closed_port()
    address = f"127.0.0.1:{port}"
    env = no_head_env(tmp_path)
    start = time.monotonic()
    cp = run_ctl(env, "--head", address, "status")
    assert time.monotonic() - start < 5
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"dragonctl: cannot reach dragond at {address}: "), cp.stderr
    assert "refused" in cp.stderr.lower()

    # A head.json left behind by a dragond that died: same message, no hang.
    current = Path(env["DRAGON_HOME"]) / "current"
    current.mkdir(parents=True)
    (current / "head.json").write_text(json.dumps({"run_id": "gone", "address": address, "pid": 1}))
    start = time.monotonic()
    cp = run_ctl(env, "ps", "--json")
    assert time.monotonic() - start < 5
    assert cp.returncode == 1 and f"cannot reach dragond at {address}: " in cp.stderr


@pytest.mark.timeout(60)
def test_silent_listener_times_out(tmp_path):
    """A port that accepts TCP but never speaks gRPC: --timeout bounds the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        cp = run_ctl(no_head_env(tmp_path), "--head", address, "--timeout", "1.5", "nodes")
        took = time.monotonic() - start
    assert cp.returncode == 1, cp
    assert cp.stderr.startswith(f"dragonctl: cannot reach dragond at {address}: "), cp.stderr
    assert 1.0 < took < 10, took
