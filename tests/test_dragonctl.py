"""dragonctl against the real dragond, agents and Python workers.

Tasks are run through Parsl with DragonExecutor, then dragonctl's text and
JSON views are checked against what the tasks themselves reported (e.g. the
worker pid a task saw must be the pid `show` prints). Draining the node keeps
new tasks pending until it is undrained. Bad usage (exit 2), a missing head,
an unreachable head and a wrong or missing token (exit 1) must fail fast with
clear messages.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from parsl import python_app

from conftest import binary, start_head, stop_head, wait_for, wait_for_workers, parsl_on, task_id_of
from dragon_parsl.errors import TaskCancelled

TESTS_DIR = Path(__file__).resolve().parent
NODES_HEADER = ["NODE", "HOST", "STATE", "INC", "CORES", "MEM", "SHM", "GPUS", "WORKERS", "READY", "RUNNING",
                "QUEUED", "DONE", "HEARTBEAT"]
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


def started_head(tmp_path, monkeypatch, *args):
    """A head, and this process's $DRAGON_HOME pointed at its home, so that the
    DragonExecutor of parsl_on finds the run's token as a user's would (the
    token file named by the head.json under $DRAGON_HOME with its address)."""
    h = start_head(tmp_path, *args)
    monkeypatch.setenv("DRAGON_HOME", str(h.home))
    for name in ("DRAGON_TOKEN", "DRAGON_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    return h


@pytest.fixture
def head2(tmp_path, apps_importable, monkeypatch):
    h = started_head(tmp_path, monkeypatch, "--workers", "2")
    try:
        yield h
    finally:
        stop_head(h)


@pytest.fixture
def head1(tmp_path, apps_importable, monkeypatch):
    h = started_head(tmp_path, monkeypatch, "--workers", "1")
    try:
        yield h
    finally:
        stop_head(h)


def no_head_env(tmp_path) -> dict:
    """An environment in which dragonctl finds no head and no token by itself."""
    env = dict(os.environ, DRAGON_HOME=str(tmp_path / "no-dragon-here"))
    for name in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_TLS_CA"):
        env.pop(name, None)
    return env


def run_token(head) -> str:
    return (head.run_dir / "token").read_text().strip()


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
    """Header and rows of an aligned table whose cells contain no spaces (up to
    the first blank line: `nodes` says below it why nodes are lost or gone)."""
    lines = [l for l in text.split("\n\n")[0].splitlines() if l and not l.startswith("(")]
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
        assert st["nodes"] == "1 live; by state: 1 ready" and st["workers"] == "2"
        assert st["auth"].startswith("on") and st["tls"] == "off"
        assert re.fullmatch(r"every \S+, a node is lost after \S+ without one", st["heartbeat"]), st
        assert st["infra retries"] == "1"
        assert int(st["sessions"]) >= 1
        # An app that raised still ends DONE (its exception is its result).
        assert st["tasks"] == "7" and st["done"] == "7" and st["failed"] == "0"
        assert re.fullmatch(ISO_TIME, st["started"]), st["started"]
        sj = head.ctl_json("status")
        assert sj["address"] == head.address and sj["pid"] == head.proc.pid
        assert int(sj["tasks_by_state"]["DONE"]) == 7
        assert sj["run_id"] and sj["head_version"] and sj["protocol_version"] == 2
        assert sj["auth"] is True and sj["tls"] is False and sj["nodes_by_state"] == {"ready": 1}
        assert sj["heartbeat_interval_ms"] > 0 and sj["heartbeat_timeout_ms"] > sj["heartbeat_interval_ms"]

        # nodes
        header, rows = table(head.ctl("nodes").stdout)
        assert header == NODES_HEADER
        assert len(rows) == 1
        row = dict(zip(header, rows[0]))
        node_id = row["NODE"]
        assert (row["STATE"], row["INC"], row["WORKERS"], row["RUNNING"], row["QUEUED"], row["DONE"]) == \
            ("ready", "1", "2", "0", "0", "7")
        assert int(row["CORES"]) >= 1 and row["MEM"].endswith("B") and row["GPUS"].isdigit()
        assert rows[0][-1] == "ago"  # HEARTBEAT: "<age> ago"
        # The head counts a result when it forwards it; allow a moment anyway.
        wait_for(lambda: head.ctl_json("nodes")["nodes"][0]["running_tasks"] == 0, 10, "idle workers")
        nj = head.ctl_json("nodes")["nodes"]
        assert len(nj) == 1 and nj[0]["node_id"] == node_id
        assert nj[0]["workers"] == 2 and int(nj[0]["tasks_done"]) == 7
        assert nj[0]["agent_pid"] > 0 and nj[0]["state"] == "ready" and nj[0]["incarnation"] == "1"
        assert nj[0]["lost_reason"] == "" and nj[0]["queued_tasks"] == 0

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
        assert tj["failure"] == "FAILURE_KIND_UNSPECIFIED" and tj["infra_attempts"] == 0
        assert "failure" not in sh and "infra attempts" not in sh

        # show: the task whose app raised (its outcome: test_show_app_exception_outcome)
        assert key_values(head.ctl("show", str(bad_id)).stdout)["state"] == "done"

        # flags may come before or after the command; --run-dir and --head find the same head
        assert json.loads(head.ctl("--json", "ps").stdout) == json.loads(head.ctl("ps", "--json").stdout)
        elsewhere = no_head_env(tmp_path)
        by_dir = run_ctl(elsewhere, "status", "--json", "--run-dir", str(head.run_dir))
        assert by_dir.returncode == 0, by_dir.stderr
        assert json.loads(by_dir.stdout)["run_id"] == sj["run_id"]
        # An address alone does not bring the token: --token-file or $DRAGON_TOKEN does.
        by_addr = run_ctl(elsewhere, "--head", head.address, "--json", "show", str(tid),
                          "--token-file", str(head.run_dir / "token"))
        assert by_addr.returncode == 0, by_addr.stderr
        assert int(json.loads(by_addr.stdout)["task_id"]) == tid
        by_env = run_ctl(dict(elsewhere, DRAGON_HEAD=head.address, DRAGON_TOKEN=run_token(head)),
                         "nodes", "--json")
        assert by_env.returncode == 0, by_env.stderr
        assert json.loads(by_env.stdout)["nodes"][0]["node_id"] == node_id


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
                "run_dir", "nodes", "workers", "sessions", "tasks_by_state", "auth", "tls",
                "heartbeat_interval_ms", "heartbeat_timeout_ms", "infra_retries", "nodes_by_state"):
        assert key in st, key
    ps = head.ctl_json("ps")
    assert ps == {"tasks": [], "total_matching": "0"}
    assert head.ctl("ps").stdout == "no tasks\n"
    node = head.ctl_json("nodes")["nodes"][0]
    for key in ("node_id", "host", "cores", "memory_bytes", "agent_pid", "agent_version", "workers",
                "busy_workers", "assigned_tasks", "tasks_done", "connected_us", "last_heartbeat_us",
                "state", "incarnation", "gpus", "running_tasks", "queued_tasks", "ready_workers",
                "lost_reason"):
        assert key in node, key


@pytest.mark.timeout(120)
def test_nodes_of_a_fresh_head(head):
    """The local node is ready, in its first incarnation, with no reason line under the table."""
    # The agent registers some time after the head starts (it sets up its pool and data plane
    # first): an empty node list means not yet.
    wait_for(lambda: [n["state"] for n in head.ctl_json("nodes")["nodes"]] == ["ready"], 60,
             "the node to be ready")
    text = head.ctl("nodes").stdout
    header, rows = table(text)
    assert header == NODES_HEADER and len(rows) == 1
    row = dict(zip(header, rows[0]))
    assert (row["STATE"], row["INC"], row["RUNNING"], row["QUEUED"], row["DONE"]) == ("ready", "1", "0", "0", "0")
    assert "\n\n" not in text and " is lost" not in text
    node = head.ctl_json("nodes")["nodes"][0]
    assert node["incarnation"] == "1" and node["cores"] >= 1 and int(node["memory_bytes"]) > 0
    assert isinstance(node["gpus"], list) and row["GPUS"] == str(len(node["gpus"]))
    assert row["WORKERS"] == str(node["workers"])


# --- drain / undrain ----------------------------------------------------------

def stays(predicate, seconds: float, what: str, interval: float = 0.1):
    """Asserts that `predicate` holds throughout `seconds` (observing that
    something does not happen needs a window; nothing waits on it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(interval)


@pytest.mark.timeout(240)
def test_drain_keeps_new_tasks_pending_until_undrain(head1, tmp_path):
    head = head1
    wait_for(lambda: [n["state"] for n in head.ctl_json("nodes")["nodes"]] == ["ready"], 60,
             "the node to be ready")
    wait_for_workers(head, 1)
    node_id = head.ctl_json("nodes")["nodes"][0]["node_id"]

    # An unknown node: exit 1 with the head's message, nothing on stdout.
    for command in ("drain", "undrain"):
        cp = head.ctl("nodes", command, "no-such-node", check=False)
        assert cp.returncode == 1, cp
        assert cp.stderr == "dragonctl: no node 'no-such-node' in this run\n" and cp.stdout == ""

    cp = head.ctl("nodes", "drain", node_id)
    assert cp.stdout == (f"node {node_id} is draining: no new tasks are placed on it; its 0 running "
                         f"task(s) finish ('dragonctl nodes undrain {node_id}' resumes)\n")
    header, rows = table(head.ctl("nodes").stdout)
    assert dict(zip(header, rows[0]))["STATE"] == "draining"
    assert head.ctl_json("status")["nodes_by_state"] == {"draining": 1}
    assert key_values(head.ctl("status").stdout)["nodes"] == "1 live; by state: 1 draining"
    # Draining a draining node changes nothing; --json gives the node.
    drained = head.ctl_json("nodes", "drain", node_id)
    assert drained["node_id"] == node_id and drained["state"] == "draining"

    with parsl_on(head, tmp_path):
        futures = [adder(i, 1) for i in range(3)]
        ids = {task_id_of(f) for f in futures}

        def pending_ids():
            return {int(t["task_id"]) for t in head.ctl_json("ps", "--state", "pending")["tasks"]}

        wait_for(lambda: pending_ids() == ids, 30, "the new tasks to be pending")
        header, rows = table(head.ctl("ps", "--state", "pending").stdout)
        assert {int(r[0]) for r in rows} == ids and {r[1] for r in rows} == {"pending"}
        # Nothing is placed on a draining node: they stay pending, the node idle.
        stays(lambda: pending_ids() == ids
              and head.ctl_json("nodes")["nodes"][0]["queued_tasks"] == 0, 2.0,
              "tasks stay pending while the node drains")
        assert not any(f.done() for f in futures)

        cp = head.ctl("nodes", "undrain", node_id)
        assert cp.stdout == f"node {node_id} is ready: tasks are placed on it again\n"
        assert [f.result(timeout=120)[0] for f in futures] == [1, 2, 3]
        assert pending_ids() == set()
        for tid in ids:
            assert head.ctl_json("show", str(tid))["state"] == "DONE"
    assert head.ctl_json("status")["nodes_by_state"] == {"ready": 1}


# --- authentication -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_wrong_token_is_refused(head, tmp_path):
    token_path = head.run_dir / "token"
    env = dict(head.env, DRAGON_TOKEN="wrong" * 8)
    for args in (["status"], ["nodes"], ["ps"], ["show", "1"], ["cancel", "1"],
                 ["nodes", "drain", "local-0"]):
        cp = run_ctl(env, *args)
        assert cp.returncode == 1, (args, cp)
        assert cp.stdout == ""
        err = cp.stderr
        assert err.startswith("dragonctl: dragond refused the request: it carried a wrong token"), err
        # where tokens are read from (the head's words), and which one was sent (dragonctl's)
        assert "$DRAGON_TOKEN" in err and str(token_path) in err, err
        assert err.endswith("; the token this client sent came from $DRAGON_TOKEN\n"), err

    # A token file with the wrong token: the message names the file.
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text("0" * 64 + "\n")
    wrong_file.chmod(0o600)
    cp = run_ctl(head.env, "status", "--token-file", str(wrong_file))
    assert cp.returncode == 1
    assert "carried a wrong token" in cp.stderr
    assert cp.stderr.endswith(f"the token this client sent came from --token-file {wrong_file}\n")
    # ... and the right one works, with the address alone (no head.json found).
    cp = run_ctl(no_head_env(tmp_path), "--head", head.address, "--token-file", str(token_path),
                 "status", "--json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["auth"] is True

    # A token file other users may read is refused before anything is sent.
    wrong_file.chmod(0o644)
    cp = run_ctl(head.env, "status", "--token-file", str(wrong_file))
    assert cp.returncode == 1 and "chmod 600" in cp.stderr, cp.stderr


@pytest.mark.timeout(120)
def test_no_token_found(head, tmp_path):
    """--head given, and no head.json under $DRAGON_HOME names it: no token is sent."""
    env = no_head_env(tmp_path)
    cp = run_ctl(env, "--head", head.address, "nodes")
    assert cp.returncode == 1, cp
    assert cp.stdout == ""
    err = cp.stderr
    assert err.startswith("dragonctl: dragond refused the request: it carried no token"), err
    assert "$DRAGON_TOKEN" in err and str(head.run_dir / "token") in err, err
    assert "; this client sent no token (no token found" in err, err
    assert env["DRAGON_HOME"] in err, err


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1/localhost signed by it (openssl, made here)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=dragonctl test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "head.key", "-out", "head.csr",
        "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "head.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "head.pem", "-days", "1", "-extfile", "san.ext")
    return directory / "ca.pem", directory / "head.pem", directory / "head.key"


@pytest.mark.timeout(120)
def test_tls_head(tmp_path):
    """Over TLS: the CA comes from head.json, --tls-ca or $DRAGON_TLS_CA; without it, no answer."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = make_certs(certs)
    head = start_head(tmp_path, "--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key),
                      "--tls-ca", str(ca))
    try:
        st = key_values(head.ctl("status").stdout)
        assert st["tls"] == "on" and st["auth"].startswith("on")
        wait_for_workers(head, 1)  # the agent, too, talks TLS
        env = no_head_env(tmp_path)
        token = ["--token-file", str(head.run_dir / "token")]
        cp = run_ctl(env, "--head", head.address, *token, "--tls-ca", str(ca), "status", "--json")
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["tls"] is True
        cp = run_ctl(dict(env, DRAGON_TLS_CA=str(ca)), "--head", head.address, *token, "nodes")
        assert cp.returncode == 0, cp.stderr
        # Plaintext to a TLS port: the head is not reachable, whatever the token.
        cp = run_ctl(env, "--head", head.address, *token, "--timeout", "3", "status")
        assert cp.returncode == 1
        assert cp.stderr.startswith(f"dragonctl: cannot reach dragond at {head.address}: "), cp.stderr
        # A CA file that cannot be read is named.
        cp = run_ctl(env, "--head", head.address, *token, "--tls-ca", str(certs / "missing.pem"), "status")
        assert cp.returncode == 1 and str(certs / "missing.pem") in cp.stderr, cp.stderr
    finally:
        stop_head(head)


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
    # absl takes "-3" for a flag; dragonctl still says what is wrong with it.
    (["cancel", "-3"], "dragonctl: bad task id '-3': expected a positive whole number"),
    (["show", "--", "-5"], "dragonctl: bad task id '-5': expected a positive whole number"),
    (["show"], "dragonctl: 'show' takes one task id, got 0 arguments"),
    (["ps", "--state", "sleeping"], f"dragonctl: bad --state 'sleeping': expected one of {STATES}"),
    (["ps", "--limit", "many"], "dragonctl: bad --limit 'many': expected a whole number >= 0"),
    (["ps", "--limit=-1"], "dragonctl: bad --limit '-1'"),
    (["frobnicate"], "dragonctl: unknown command 'frobnicate'; commands: status, nodes, ps, show, cancel, logs, top, help"),
    (["status", "--verbose"], "dragonctl: unknown flag '--verbose' (see 'dragonctl --help')"),
    (["--run-dirr", "x", "status"], "dragonctl: unknown flag '--run-dirr'"),
    (["--head", "localhost", "status"], "dragonctl: bad --head address 'localhost': expected HOST:PORT"),
    (["status", "--head"], "dragonctl: --head needs a value"),
    (["status", "--token-file"], "dragonctl: --token-file needs a value"),
    (["nodes", "--state", "done"], "dragonctl: --state is a flag of 'ps', not of 'nodes'"),
    (["status", "--limit", "3"], "dragonctl: --limit is a flag of 'ps', not of 'status'"),
    (["status", "now"], "dragonctl: 'status' takes no arguments, got 'now'"),
    (["nodes", "drain"], "dragonctl: 'nodes drain' takes one node id"),
    (["nodes", "undrain", "a", "b"], "dragonctl: 'nodes undrain' takes one node id"),
    (["nodes", "evict", "n1"], "dragonctl: unknown 'nodes' command 'evict'; use 'nodes', 'nodes drain NODE' or 'nodes undrain NODE'"),
    (["--timeout", "-1", "status"], "dragonctl: bad --timeout '-1': expected a number of seconds > 0"),
    (["--timeout=soon", "status"], "dragonctl: bad --timeout 'soon'"),
    (["--json=maybe", "status"], "dragonctl: bad --json 'maybe'"),
    ([], "dragonctl: no command given"),
    (["status", "--interval", "1"], "dragonctl: --interval is a flag of 'top', not of 'status'"),
    (["nodes", "--iterations", "3"], "dragonctl: --iterations is a flag of 'top', not of 'nodes'"),
    (["top", "--interval", "0.05"], "dragonctl: --interval must be at least 0.1 seconds, not 0.05"),
    (["top", "--iterations", "-1"], "dragonctl: --iterations must be >= 0, not -1"),
    (["top", "now"], "dragonctl: 'top' takes no arguments, got 'now'"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    cp = run_ctl(no_head_env(tmp_path), *args)
    assert cp.returncode == 2, cp
    assert message in cp.stderr
    assert cp.stdout == ""
    # dragonctl's words only: absl's own "ERROR: ..." line is not shown as well.
    assert "ERROR" not in cp.stderr, cp.stderr


@pytest.mark.timeout(60)
def test_help_lists_every_command_and_flag(tmp_path):
    env = no_head_env(tmp_path)
    for args in (["--help"], ["help"], ["-h"]):
        cp = run_ctl(env, *args)
        assert cp.returncode == 0 and cp.stderr == ""
        for word in ("status", "nodes [drain NODE | undrain NODE]", "ps", "show TASK", "cancel TASK",
                     "help [COMMAND]", "--head HOST:PORT", "--run-dir DIR", "--token-file FILE",
                     "--tls-ca FILE", "--json", "--timeout SECS", "--state STATE", "--limit N",
                     "$DRAGON_TOKEN", "Exit codes: 0 ok, 1 the head is not reachable or refused, 2 bad usage"):
            assert word in cp.stdout, word
    for command, words in {"ps": ["--state STATE", "--limit N", STATES],
                           "show": ["show TASK", "infra attempts"], "cancel": ["cancel TASK", "killed"],
                           "status": ["uptime", "heartbeat"],
                           "nodes": [" ".join(NODES_HEADER), "drain NODE", "undrain NODE", "incarnation"]}.items():
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
