"""DragonExecutor(client_cpu=N): the workflow process's threads on one CPU, the
service's processes on all of them. Each case runs in its own Python process, so
that the pinning never reaches the pytest process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import BIN_DIR

SCRIPT = textwrap.dedent("""
    import json, os, sys, threading
    from dragon_parsl import DragonExecutor

    def cpus(path):
        for line in open(path):
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()

    ex = DragonExecutor(workers_per_node=1, client_cpu=int(sys.argv[1]), head_run_dir=sys.argv[2])
    try:
        ex.start()
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(0)
    later = threading.Thread(target=lambda: None)
    later.start(); later.join()
    fut = ex.submit(abs, {}, -7)
    value = fut.result(timeout=60)
    threads = {t: cpus(f"/proc/self/task/{t}/status") for t in os.listdir("/proc/self/task")}
    head_pid = ex.local_head.proc.pid
    service = {"dragond": cpus(f"/proc/{head_pid}/status")}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
            except OSError:
                continue
            if "dragon_parsl.worker" in cmd or "dragon-agent" in cmd:
                if sys.argv[2] in open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace") \\
                        or sys.argv[2] in cmd:
                    service[cmd.split()[0].rsplit("/", 1)[-1] + ":" + pid] = cpus(f"/proc/{pid}/status")
    ex.shutdown()
    print(json.dumps({"value": value, "threads": threads, "service": service}))
""")


def run_script(cpu: int, tmp_path) -> dict:
    env = dict(os.environ, DRAGON_BIN_DIR=str(BIN_DIR), DRAGON_HOME=str(tmp_path / "home"))
    env.pop("DRAGON_HEAD", None)
    cp = subprocess.run([sys.executable, "-c", SCRIPT, str(cpu), str(tmp_path / "run")], env=env,
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, f"exit {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr[-3000:]}"
    return json.loads(cp.stdout.strip().splitlines()[-1])


def all_cpus_list() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list in /proc/self/status")


@pytest.mark.timeout(150)
def test_client_threads_move_to_one_cpu_and_the_service_keeps_all(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    out = run_script(cpu, tmp_path)
    assert out.get("value") == 7, out
    assert len(out["threads"]) >= 3  # main, the session receiver, gRPC's own threads
    assert set(out["threads"].values()) == {str(cpu)}, out["threads"]
    everything = all_cpus_list()
    assert out["service"]["dragond"] == everything
    workers = [k for k in out["service"] if k.startswith("python")]
    agents = [k for k in out["service"] if k.startswith("dragon-agent")]
    assert workers and agents, f"no worker or agent of this run found: {out['service']}"
    assert all(v == everything for v in out["service"].values()), out["service"]


@pytest.mark.timeout(150)
def test_a_cpu_the_process_may_not_use_is_a_clear_error_and_leaves_no_head(tmp_path):
    bad = max(os.sched_getaffinity(0)) + 1000
    out = run_script(bad, tmp_path)
    assert "error" in out, out
    assert f"client_cpu={bad}" in out["error"] and "allowed:" in out["error"], out["error"]
    head_json = tmp_path / "run" / "head.json"
    if head_json.exists():
        pid = json.loads(head_json.read_text())["pid"]
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split(") ", 1)[-1].startswith("Z"), "dragond still running"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [-1, "0", 1.0, True])
def test_a_bad_client_cpu_is_refused_naming_the_option(bad):
    from dragon_parsl import DragonExecutor

    with pytest.raises(ValueError, match=r"DragonExecutor: client_cpu must be a CPU number >= 0"):
        DragonExecutor(client_cpu=bad)
