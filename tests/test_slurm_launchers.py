"""The Slurm and PBS launchers on a real Slurm cluster and the ssh test hosts (issue 11).

Test beds (tests/testbed/, fixtures in testbed_fixtures.py): slurmctld + slurmd n1..n4 in network
namespaces (the root namespace is the login node), Slurm's torque wrappers (qsub/qstat/qdel), and
four ssh hosts h1..h4. No mocks: real sbatch, salloc, srun, squeue, scancel, qsub, ssh.

- inside an allocation: sbatch of deploy/slurm-job.sh (dragond start, a Parsl workflow of
  python_apps and bash_apps that report their host, dragond stop): both nodes ran tasks, results
  right; salloc -N2 and -N4 + dragond start + a short workflow + dragond stop (start times printed);
- from the login node: dragond start --launcher slurm --nodes 2 --time 5 from submit to dragond
  stop, tasks on both nodes, the job gone from squeue; a job scancelled mid-run is reported in
  the head's log, its nodes are lost and its tasks fail with NoNodesAvailable after --node-grace,
  naming the cancelled job; a job that waits (the partition full) shows PENDING (Resources)
  and dragond stop cancels it, failing dragond start with the reason;
- bad input: unknown launcher, no Slurm in PATH, sbatch refused (bad partition), --nodes larger
  than the partition, a bad --time: each a clear error naming the problem, exit non-zero, no job
  and no process left;
- PBS: the PBS_NODEFILE path over the four ssh hosts (PBS_JOBID/PBS_NODEFILE set by the test;
  --pbs-exec ssh and mpiexec), the qsub path from the login node through the torque wrappers
  (qsub -> sbatch; the job runs `dragond agents`, which starts them with one srun step), and
  deploy/pbs-job.sh submitted with qsub.

Every test ends with nothing left: the queue empty, no dragond/agent/worker in any namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, binary
from testbed_fixtures import netns_hosts, no_service_left, slurm_cluster  # noqa: F401

PY = sys.executable
WORKFLOW = REPO / "tests" / "cluster_workflow.py"
TESTS_DIR = REPO / "tests"

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- helpers

@pytest.fixture
def cluster(no_service_left, slurm_cluster):  # noqa: F811
    """The Slurm test bed, with an empty queue before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all(timeout=30)


@pytest.fixture
def env(cluster, tmp_path):
    """dragond's (and sbatch's, and so the jobs') environment: this test's DRAGON_HOME, the
    binaries under test first in PATH, tests/ importable by the workers."""
    e = dict(cluster.env)
    e["DRAGON_HOME"] = str(tmp_path / "home")
    e["DRAGON_BIN_DIR"] = str(Path(binary("dragond")).parent)
    e["PATH"] = f"{e['DRAGON_BIN_DIR']}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = str(TESTS_DIR) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    for k in ("DRAGON_HEAD", "DRAGON_TOKEN", "SLURM_JOB_ID", "PBS_JOBID", "PBS_NODEFILE"):
        e.pop(k, None)
    return e


def dragond(*args: str, env: dict, timeout: float = 60, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragond"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


def wait_job_gone(cluster, job_id: str, timeout: float = 60) -> str:
    """Waits until squeue no longer lists the job; returns its final JobState."""
    deadline = time.monotonic() + timeout
    while any(j["id"] == str(job_id) for j in cluster.squeue()):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still queued after {timeout}s: {cluster.squeue()}")
        time.sleep(0.2)
    return cluster.job_state(job_id)


def run_workflow(env: dict, out: Path, *, address: str | None = None, python_tasks: int = 200,
                 bash_tasks: int = 40, wait_nodes: int = 0, timeout: float = 90) -> dict:
    argv = [PY, str(WORKFLOW), "--out", str(out), "--python-tasks", str(python_tasks),
            "--bash-tasks", str(bash_tasks), "--wait-nodes", str(wait_nodes)]
    if address:
        argv += ["--address", address]
    cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, f"workflow exited {cp.returncode}\n{cp.stdout}\n{cp.stderr[-3000:]}"
    return json.loads(out.read_text())


def check_summary(summary: dict, hosts: set[str], python_tasks: int, bash_tasks: int) -> None:
    assert summary["wrong"] == [], summary
    assert sum(summary["python_hosts"].values()) == python_tasks, summary
    assert sum(summary["bash_hosts"].values()) == bash_tasks, summary
    ran = set(summary["python_hosts"]) | set(summary["bash_hosts"])
    assert ran == hosts, f"tasks ran on {sorted(ran)}, expected every one of {sorted(hosts)}"


def head_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "head.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def login_head(env: dict, run_dir: Path, *args: str, timeout: float = 90):
    """`dragond start --run-dir RUN_DIR ARGS` (daemonized) on the login node; yields its
    CompletedProcess (the test checks it); stops the head afterwards, whatever happened."""
    cp = dragond("start", "--run-dir", str(run_dir), "--python", PY, *args, env=env,
                 timeout=timeout)
    try:
        yield cp
    finally:
        pid = head_pid(run_dir)
        if pid is not None:
            dragond("stop", "--run-dir", str(run_dir), env=env, timeout=40)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def ready_address(stdout: str) -> str:
    m = re.search(r"head listening on (\S+) ", stdout)
    assert m, stdout
    return m.group(1)


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes (any namespace) that mention `text`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            found.append(f"{p.name}: {cmd}")
    return found


# ---------------------------------------------------------------- inside an allocation

def test_sbatch_job_script_runs_a_workflow_on_both_nodes(cluster, env, tmp_path):
    """deploy/slurm-job.sh under sbatch -N2 --exclusive: dragond start in the job (one srun
    step), the workflow, dragond stop; every task right, both nodes ran tasks."""
    out = tmp_path / "result.json"
    job_env = dict(env, DRAGOND=binary("dragond"), PYTHON=PY)
    jid = cluster.run("sbatch", "--parsable", "-N2", "--exclusive", "-t", "5",
                      "-o", str(tmp_path / "job-%j.out"), str(REPO / "deploy" / "slurm-job.sh"),
                      str(WORKFLOW), "--out", str(out), "--python-tasks", "300",
                      "--bash-tasks", "60", "--wait-nodes", "2",
                      env=job_env, cwd=tmp_path).stdout.strip()
    state = wait_job_gone(cluster, jid, timeout=90)
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert state == "COMPLETED", f"job {jid} {state}:\n{log}"
    summary = json.loads(out.read_text())
    check_summary(summary, {"n1", "n2"}, 300, 60)
    m = re.search(r"ready on 2 node\(s\) after ([\d.]+) s", log)
    assert m, log
    print(f"\nsbatch -N2: dragond start to every agent ready: {m.group(1)} s; "
          f"workflow {summary['seconds']} s; {summary}")
    assert "2 of 2 agent(s) ready (slurm: n1, n2)" in log
    assert "dragond: stopped head" in log
    srun_log = (Path(env["DRAGON_HOME"]) / "runs" / f"slurm-{jid}" / "srun-agents.log")
    assert srun_log.exists()


@pytest.mark.parametrize("nodes", [2, 4])
def test_salloc_dragond_start_workflow_stop(cluster, env, tmp_path, nodes):
    """salloc -N<nodes> + dragond start (no flags: SLURM_JOB_ID picks the slurm launcher) on the
    login node + a short workflow + dragond stop; prints dragond start's time to every agent
    ready."""
    run_dir = tmp_path / "run"
    out = tmp_path / "result.json"
    script = (f't0=$EPOCHREALTIME; line=$("$DRAGOND" start --run-dir {run_dir} --python {PY}) '
              f'|| exit 3; t1=$EPOCHREALTIME; echo "$line"; '
              f'echo "START_SECONDS $(awk -v a=$t0 -v b=$t1 \'BEGIN{{print b-a}}\')"; '
              f'export DRAGON_HEAD=$(echo "$line" | sed -n \'s/.*head listening on \\([^ ]*\\) .*/\\1/p\'); '
              f'{PY} {WORKFLOW} --out {out} --python-tasks 100 --bash-tasks 20 '
              f'--wait-nodes {nodes}; rc=$?; "$DRAGOND" stop --run-dir {run_dir}; exit $rc')
    job_env = dict(env, DRAGOND=binary("dragond"))
    try:
        cp = cluster.run("salloc", f"-N{nodes}", "--exclusive", "-t", "5", "bash", "-c", script,
                         env=job_env, check=False, timeout=100)
    finally:
        if head_pid(run_dir):
            dragond("stop", "--run-dir", str(run_dir), env=env)
    assert cp.returncode == 0, f"salloc exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    hosts = {f"n{i}" for i in range(1, nodes + 1)}
    check_summary(json.loads(out.read_text()), hosts, 100, 20)
    assert f"{nodes} of {nodes} agent(s) ready (slurm: " in cp.stdout
    start = float(re.search(r"START_SECONDS ([\d.]+)", cp.stdout).group(1))
    print(f"\nsalloc -N{nodes}: dragond start to every agent ready: {start:.2f} s")
    jid = re.search(r"Granted job allocation (\d+)", cp.stderr).group(1)
    wait_job_gone(cluster, jid, timeout=30)


# ---------------------------------------------------------------- from the login node

def test_login_node_launcher_from_submit_to_stop(cluster, env, tmp_path):
    """dragond start --launcher slurm --nodes 2 --time 5: submits, shows the job's progress,
    the agents dial back, a workflow runs on both nodes, dragond stop cancels nothing that is
    left: squeue is empty at once."""
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    with login_head(env, run_dir, "--launcher", "slurm", "--nodes", "2", "--time", "5",
                    "--sbatch-arg=--comment=dragon test", "--sbatch-arg", "--job-name=dragon-t") as cp:
        took = time.monotonic() - t0
        assert cp.returncode == 0, cp.stderr
        m = re.search(r"submitted Slurm job (\d+) \(2 node\(s\) for 5; script (\S+),", cp.stderr)
        assert m, cp.stderr
        jid = m.group(1)
        assert re.search(rf"Slurm job {jid} is RUNNING on n\d, n\d after", cp.stderr), cp.stderr
        assert "2 of 2 agent(s) ready (slurm: " in cp.stdout
        script = Path(m.group(2)).read_text()
        assert "#SBATCH --nodes=2" in script and "exec srun" in script
        assert (run_dir / "token").read_text().strip() not in script
        jobs = cluster.squeue()
        assert [(j["state"], j["name"]) for j in jobs if j["id"] == jid] == [
            ("RUNNING", "dragon-t")], jobs  # --sbatch-arg overrides the script's job name
        assert "Comment=dragon test" in cluster.run("scontrol", "show", "job", jid).stdout
        address = ready_address(cp.stdout)
        summary = run_workflow(env, tmp_path / "result.json", address=address, wait_nodes=2)
        nodes = set(summary["python_hosts"]) | set(summary["bash_hosts"])
        check_summary(summary, nodes, 200, 40)
        assert len(nodes) == 2, summary
        print(f"\nlogin node, 2 nodes: submit to every agent ready {took:.2f} s; {summary}")
        stop = dragond("stop", "--run-dir", str(run_dir), env=env, timeout=40)
        assert stop.returncode == 0, stop.stderr
    assert not [j for j in cluster.squeue() if j["id"] == jid], cluster.squeue()
    assert cluster.job_state(jid) in ("COMPLETED", "CANCELLED"), cluster.job_state(jid)
    log = (run_dir / "dragond.log").read_text()
    assert f"Slurm job {jid} ended: " in log, log[-2000:]


def test_login_node_job_cancelled_mid_run(cluster, env, tmp_path):
    """A job scancelled while tasks run: the head logs it (state CANCELLED), the nodes are lost,
    the tasks fail after --node-grace with NoNodesAvailable naming the cancelled job; dragond
    stop then leaves nothing."""
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from dragon_parsl import DragonExecutor
    from dragon_parsl.errors import NoNodesAvailable, NodeLost

    run_dir = tmp_path / "run"
    with login_head(env, run_dir, "--launcher", "slurm", "--nodes", "2", "--time", "5",
                    "--node-grace", "3") as cp:
        assert cp.returncode == 0, cp.stderr
        jid = re.search(r"submitted Slurm job (\d+)", cp.stderr).group(1)
        address = ready_address(cp.stdout)

        @python_app
        def sleepy(seconds):
            import time
            time.sleep(seconds)
            return seconds

        dfk = parsl.load(Config(executors=[DragonExecutor(
            address=address, token=(run_dir / "token").read_text().strip())],
            run_dir=str(tmp_path / "runinfo"), strategy="none"))
        try:
            futures = [sleepy(60) for _ in range(6)]
            ctl = [binary("dragonctl"), "--run-dir", str(run_dir), "--json"]
            deadline = time.monotonic() + 30
            while True:
                ps = json.loads(subprocess.run(ctl + ["ps", "--state", "running"], env=env,
                                               capture_output=True, text=True).stdout)
                if len(ps.get("tasks", [])) >= 2:
                    break
                assert time.monotonic() < deadline, ps
                time.sleep(0.2)
            t0 = time.monotonic()
            cluster.run("scancel", jid)
            errors = []
            for f in futures:
                with pytest.raises((NoNodesAvailable, NodeLost)) as e:
                    f.result(timeout=40)
                errors.append(e.value)
            failed_after = time.monotonic() - t0
        finally:
            dfk.cleanup()
            parsl.clear()
        assert any(isinstance(e, NoNodesAvailable) for e in errors), errors
        text = " ".join(str(e) for e in errors)
        assert f"Slurm job {jid} ended outside the service: CANCELLED" in text, text
        log = (run_dir / "dragond.log").read_text()
        assert f"Slurm job {jid} ended outside the service: CANCELLED" in log, log[-3000:]
        nodes = json.loads(subprocess.run(ctl + ["nodes"], env=env, capture_output=True,
                                          text=True).stdout)["nodes"]
        assert {n["state"] for n in nodes} == {"lost"}, nodes
        print(f"\nscancel mid-run: every task failed {failed_after:.1f} s later; {errors[0]}")
        stop = dragond("stop", "--run-dir", str(run_dir), env=env, timeout=40)
        assert stop.returncode == 0, stop.stderr
    wait_job_gone(cluster, jid, timeout=30)


def test_login_node_job_pending_shows_progress_and_stop_cancels_it(cluster, env, tmp_path):
    """While the job waits (the partition is full), dragond start prints its id, state and
    reason; dragond stop then makes dragond start fail saying so, and the job is cancelled."""
    blocker = cluster.run("sbatch", "--parsable", "-N4", "--exclusive", "-o", "/dev/null",
                          "--wrap", "sleep 120").stdout.strip()
    run_dir = tmp_path / "run"
    start = subprocess.Popen([binary("dragond"), "start", "--run-dir", str(run_dir), "--launcher",
                              "slurm", "--nodes", "2", "--time", "5"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        lines = []
        for line in start.stderr:
            lines.append(line)
            if "PENDING (Resources)" in line:
                break
        jid = re.search(r"submitted Slurm job (\d+)", "".join(lines)).group(1)
        assert f"dragond: Slurm job {jid}: PENDING (Resources)\n" in lines, lines
        stop = dragond("stop", "--run-dir", str(run_dir), env=env, timeout=40)
        assert stop.returncode == 0, stop.stderr
        rest = start.stderr.read()
        assert start.wait(timeout=30) == 1
    finally:
        if start.poll() is None:
            start.kill()
    assert (f"dragond was told to stop (Shutdown requested by " in rest
            and f"while waiting for Slurm job {jid} to start; cancelled it" in rest), rest
    assert cluster.job_state(jid) == "CANCELLED"
    assert [j["id"] for j in cluster.squeue()] == [blocker]


BAD_INPUT = {
    "unknown launcher": (["--launcher", "kubernetes"], {},
                         "--launcher 'kubernetes' is not one of auto, local, ssh, slurm, pbs, none"),
    "no Slurm in PATH": (["--launcher", "slurm", "--nodes", "2", "--time", "5"],
                         {"PATH": "/nonexistent"},
                         "--launcher slurm submitting a job needs Slurm's commands"),
    "bad partition": (["--launcher", "slurm", "--nodes", "2", "--time", "5", "--partition", "bogus"],
                      {}, "sbatch refused the job (exit 1): sbatch: error: invalid partition "
                          "specified: bogus"),
    "more nodes than the partition": (["--launcher", "slurm", "--nodes", "9", "--time", "5"], {},
                                      "cannot start: PENDING (PartitionConfig): partition debug "
                                      "has 4 node(s)"),
    "bad time": (["--launcher", "slurm", "--nodes", "2", "--time", "5 minutes"], {},
                 "--time '5 minutes' is not a time"),
    "no time": (["--launcher", "slurm", "--nodes", "2"], {}, "needs --time T"),
    "not in a job, no nodes": (["--launcher", "slurm"], {}, "SLURM_JOB_ID is not set here"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_clear_error_and_leaves_nothing(cluster, env, tmp_path, case):
    args, extra_env, message = BAD_INPUT[case]
    run_dir = tmp_path / "run"
    before = {j["id"] for j in cluster.squeue()}
    e = dict(env, **extra_env)
    with login_head(e, run_dir, *args, "--start-timeout", "30") as cp:
        pass
    assert cp.returncode != 0, cp.stdout
    assert message in cp.stderr, cp.stderr
    assert cp.stderr.count("\n") <= 6, cp.stderr  # an error, not a dump
    print(f"\n{case}: exit {cp.returncode}: {cp.stderr.strip().splitlines()[-1]}")
    assert {j["id"] for j in cluster.squeue()} <= before, cluster.squeue()
    assert not (run_dir / "head.json").exists()
    assert not processes_naming(str(run_dir)), processes_naming(str(run_dir))
    m = re.search(r"Slurm job (\d+)", cp.stderr)
    if m:  # a job that was submitted is cancelled
        assert cluster.job_state(m.group(1)) in ("CANCELLED", ""), cluster.job_state(m.group(1))


# ---------------------------------------------------------------- PBS

@pytest.mark.parametrize("pbs_exec", ["ssh", "mpiexec"])
def test_pbs_nodefile_over_the_ssh_hosts(no_service_left, netns_hosts, tmp_path, pbs_exec):  # noqa: F811
    """Inside a (simulated) PBS job: PBS_JOBID and a PBS_NODEFILE listing h1..h4 once per slot;
    dragond start with no launcher flag starts 4 agents (--pbs-exec ssh: the ssh launcher;
    mpiexec: one MPICH mpiexec over ssh), tasks run on every host."""
    tb = netns_hosts
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"{h}\n{h}\n" for h in tb.names))
    e = tb.env_with_ssh()
    e.update(DRAGON_HOME=str(tmp_path / "home"), PBS_JOBID="4242.pbs-server",
             PBS_NODEFILE=str(nodefile), DRAGON_BIN_DIR=str(Path(binary("dragond")).parent),
             PYTHONPATH=str(TESTS_DIR), HYDRA_LAUNCHER_EXEC=str(tb.ssh), HYDRA_IFACE=tb.head_iface)
    for k in ("DRAGON_HEAD", "DRAGON_TOKEN", "SLURM_JOB_ID"):
        e.pop(k, None)
    run_dir = tmp_path / "run"
    with login_head(e, run_dir, "--pbs-exec", pbs_exec, "--workers", "2") as cp:
        assert cp.returncode == 0, cp.stderr
        assert "4 of 4 agent(s) ready (pbs: h1, h2, h3, h4)" in cp.stdout, cp.stdout
        assert f"PBS job 4242.pbs-server: starting 4 agent(s) with {pbs_exec}" in cp.stderr
        summary = run_workflow(e, tmp_path / "result.json", address=ready_address(cp.stdout),
                               python_tasks=300, bash_tasks=40, wait_nodes=4)
        check_summary(summary, set(tb.names), 300, 40)
        print(f"\nPBS_NODEFILE, --pbs-exec {pbs_exec}: {summary}")
        stop = dragond("stop", "--run-dir", str(run_dir), env=e, timeout=40)
        assert stop.returncode == 0, stop.stderr


def test_qsub_from_the_login_node(cluster, env, tmp_path):
    """dragond start --launcher pbs --nodes 2 --time 5 on the login node: qsub (Slurm's torque
    wrapper) of a job that runs `dragond agents`, which starts the agents with one srun step
    (no PBS_NODEFILE there); they register with the head here; a workflow runs on both nodes;
    dragond stop ends the job."""
    run_dir = tmp_path / "run"
    with login_head(env, run_dir, "--launcher", "pbs", "--nodes", "2", "--time", "5") as cp:
        assert cp.returncode == 0, cp.stderr
        m = re.search(r"submitted PBS job (\S+) \(2 node\(s\) for 00:05:00", cp.stderr)
        assert m, cp.stderr
        jid = m.group(1)
        assert "2 of 2 agent(s) ready (pbs: " in cp.stdout
        script = (run_dir / "pbs-job.sh").read_text()
        assert "#PBS -l nodes=2,walltime=00:05:00" in script and "'agents'" in script
        summary = run_workflow(env, tmp_path / "result.json", address=ready_address(cp.stdout),
                               python_tasks=100, bash_tasks=20, wait_nodes=2)
        check_summary(summary, set(summary["python_hosts"]) | set(summary["bash_hosts"]), 100, 20)
        assert len(set(summary["python_hosts"]) | set(summary["bash_hosts"])) == 2, summary
        stop = dragond("stop", "--run-dir", str(run_dir), env=env, timeout=40)
        assert stop.returncode == 0, stop.stderr
    wait_job_gone(cluster, jid, timeout=30)
    out = (run_dir / "pbs-job.out").read_text()
    assert "starting the agents of this job (slurm launcher)" in out, out
    assert "dragond agents: done" in out, out


def test_pbs_job_template_through_qsub(cluster, env, tmp_path):
    """deploy/pbs-job.sh submitted with qsub -V (torque wrapper): dragond start inside the job
    (no PBS_NODEFILE under the wrapper: the slurm launcher's srun step), the workflow, stop."""
    out = tmp_path / "result.json"
    job_env = dict(env, DRAGOND=binary("dragond"), PYTHON=PY,
                   WORKFLOW=f"{WORKFLOW} --out {out} --python-tasks 100 --bash-tasks 20 "
                            f"--wait-nodes 2")
    jid = cluster.run("qsub", "-V", "-o", str(tmp_path / "pbs.out"), "-j", "oe",
                      str(REPO / "deploy" / "pbs-job.sh"), env=job_env, cwd=tmp_path).stdout.strip()
    state = wait_job_gone(cluster, jid, timeout=90)
    log = (tmp_path / "pbs.out").read_text()
    assert state == "COMPLETED", f"job {jid} {state}:\n{log}"
    check_summary(json.loads(out.read_text()), {"n1", "n2"}, 100, 20)
    assert "2 of 2 agent(s) ready (slurm: n1, n2)" in log, log
