"""MPI apps on one node with real MPICH (mpicc, mpiexec.hydra): the talk's @mpi_app (factorial
through rank 0's stdin/stdout), Parsl's bash_app with $PARSL_MPI_PREFIX, oversubscription,
faults (a rank that crashes, cancel, kill -9 of the agent that hosts rank 0), large output,
dragonctl logs. After each test no MPI process is left (tests/mpi_programs.py)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from parsl import bash_app, python_app

import mpi_programs
from conftest import head_and_dfk, task_id_of, wait_for
from dragon_parsl import MpiJobFailed, NodeLost, Policy, ResourcesUnsatisfiable, TaskCancelled, TaskIOError, mpi_app

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return mpi_programs.build(tmp_path_factory.mktemp("mpi-programs"))


@pytest.fixture(autouse=True)
def no_mpi_left():
    yield
    mpi_programs.assert_no_mpi_left()
    mpi_programs.assert_no_stale_grants()  # every head of the test is stopped by now


def run_id(head) -> str:
    return json.loads((head.run_dir / "head.json").read_text())["run_id"]


# ---------------------------------------------------------------- the apps


@mpi_app
def factorial(exe, num_ranks, bias, policy=None, run_dir=None):
    return exe, run_dir, policy, num_ranks, [str(bias)]


@mpi_app
def program(exe, num_ranks, args=(), policy=None):
    return exe, None, policy, num_ranks, list(args)


@bash_app
def factorial_bash(exe, bias, scale, parsl_resource_specification=None, stdout=None, stderr=None):
    return f'echo {scale} | $PARSL_MPI_PREFIX {exe} {bias}'


@python_app
def chatter(n):
    for i in range(n):
        print(f"python task line {i}", flush=True)
    return n


# ---------------------------------------------------------------- tests


def test_factorial_through_mpi_app(worker_pythonpath, tmp_path, programs):
    """The talk's example: 2 ranks (the node's 2 cores), the scale factor through job["in"],
    the result from job["out"], checked against the exact value; every rank's files; logs."""
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        t0 = time.monotonic()
        job = factorial(programs["factorial"], 2, 7, run_dir=str(tmp_path)).result(timeout=60)
        started = time.monotonic() - t0
        assert job.task_id > 0 and job.num_ranks == 2
        assert len(job.stdout_paths) == 2 and len(job.stderr_paths) == 2
        job["in"].send("5\n")
        job["in"].close()
        assert int(job["out"].recv(timeout=30)) == mpi_programs.expected_factorial(2, 5, 7)  # 17
        with pytest.raises(EOFError):
            job["out"].recv(timeout=30)
        assert job.wait(30) == 0 and job.returncode == 0 and job.exception() is None
        assert [r.state for r in job.ranks] == ["exited", "exited"]
        for r in range(2):
            assert f"rank {r} of 2 on " in Path(job.stderr_paths[r]).read_text()
        assert Path(job.stdout_paths[0]).read_text() == "17\n"
        with pytest.raises(TaskIOError, match="ended"):
            job["in"].send("more\n")
        # dragonctl logs: one rank, then all.
        one = head.ctl("logs", str(job.task_id), "--rank", "1").stdout
        assert "==> rank 1 stderr: " in one and "rank 1 of 2 on " in one
        assert "rank 0" not in one.replace("rank 0 ", "") or "==> rank 0" not in one
        every = head.ctl("logs", str(job.task_id)).stdout
        assert "==> rank 0 stdout: " in every and "\n17\n" in every and "==> launcher" in every
        bad = head.ctl("logs", str(job.task_id), "--rank", "5", check=False)
        assert "no rank 5" in bad.stdout
        print(f"factorial job started {started * 1000:.0f} ms after submit")


def test_factorial_with_more_ranks_oversubscribed(worker_pythonpath, tmp_path, programs):
    """4 ranks on a 2-core node: refused at once, naming oversubscribe; allowed with the policy."""
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        # The agent may register after the executor started (a loaded machine): count its cores.
        nodes = wait_for(lambda: head.ctl_json("nodes")["nodes"], 60, "the agent to register")
        cores = sum(n["cores"] for n in nodes)
        ranks = cores + 2
        t0 = time.monotonic()
        with pytest.raises(ResourcesUnsatisfiable, match="oversubscribe"):
            factorial(programs["factorial"], ranks, 1).result(timeout=30)
        assert time.monotonic() - t0 < 10  # at once, not after a wait
        job = factorial(programs["factorial"], ranks, 1, policy=Policy(oversubscribe=True)).result(timeout=60)
        job["in"].send("3")
        job["in"].close()
        assert int(job["out"].read(timeout=60)) == mpi_programs.expected_factorial(ranks, 3, 1)
        assert job.wait(30) == 0
        assert len(job.ranks) == ranks


def test_bash_app_with_parsl_mpi_prefix(worker_pythonpath, tmp_path, programs):
    """Parsl's MPI API: a bash_app with num_ranks gets $PARSL_MPI_PREFIX, which launches on the
    cores reserved for it (the resources engineer's environment)."""
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        out = tmp_path / "bash.out"
        fut = factorial_bash(programs["factorial"], 11, 4, stdout=str(out), stderr=str(tmp_path / "bash.err"),
                             parsl_resource_specification={"num_ranks": 2, "ranks_per_node": 2})
        assert fut.result(timeout=120) == 0, (tmp_path / "bash.err").read_text()
        assert int(out.read_text().strip()) == mpi_programs.expected_factorial(2, 4, 11)


def test_rank_that_crashes_fails_the_job_with_its_exit_code(worker_pythonpath, tmp_path, programs):
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        job = program(programs["crash"], 2).result(timeout=60)
        t0 = time.monotonic()
        assert job.wait(60) == 3
        assert time.monotonic() - t0 < 20
        err = job.exception()
        assert isinstance(err, MpiJobFailed) and err.rank == 1 and err.returncode == 3
        assert "rank 1 on " in str(err) and "exited with code 3" in str(err)
        assert job.ranks[1].state == "exited" and job.ranks[1].exit_code == 3
        mpi_programs.assert_no_mpi_left(f"{run_id(head)}/{job.task_id}")
        info = head.ctl_json("show", str(job.task_id))
        assert info["state"] == "DONE" and info["outcome"] == "APP_EXCEPTION"


def test_program_that_cannot_start(worker_pythonpath, tmp_path):
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        job = program("/nonexistent/mpi-program", 2).result(timeout=60)
        assert job.wait(60) == 127
        assert "could not start '/nonexistent/mpi-program'" in str(job.exception())


def test_cancel_mid_run_ends_every_rank(worker_pythonpath, tmp_path, programs):
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        job = program(programs["sleeper"], 2).result(timeout=60)
        assert job["out"].recv(timeout=60) == "started"
        marker = f"{run_id(head)}/{job.task_id}"
        assert len(mpi_programs.mpi_processes(marker)) >= 2  # the ranks (and the launcher's own)
        t0 = time.monotonic()
        job.cancel()
        assert job.wait(30) == -signal.SIGTERM
        assert isinstance(job.exception(), TaskCancelled)
        mpi_programs.assert_no_mpi_left(marker, timeout=10)
        print(f"cancel to every rank gone: {time.monotonic() - t0:.2f} s")
        assert head.ctl_json("show", str(job.task_id))["state"] == "CANCELLED"


def test_kill_9_of_the_agent_hosting_rank_0(worker_pythonpath, tmp_path, programs):
    """The job fails clearly (NodeLost, no infra retry) and no rank survives its agent."""
    with head_and_dfk(tmp_path, infra_retries=0) as (dfk, executor, head):
        job = program(programs["sleeper"], 2).result(timeout=60)
        assert job["out"].recv(timeout=60) == "started"
        marker = f"{run_id(head)}/{job.task_id}"
        agent_pid = head.ctl_json("nodes")["nodes"][0]["agent_pid"]
        os.kill(agent_pid, signal.SIGKILL)
        with pytest.raises(NodeLost) as lost:
            job.wait(30)
        assert f"task {job.task_id}" in str(lost.value)
        with pytest.raises((TaskIOError, EOFError)):
            job["out"].recv(timeout=30)
        mpi_programs.assert_no_mpi_left(marker, timeout=10)


def test_large_output_and_early_attach_of_a_job_that_ended(worker_pythonpath, tmp_path, programs):
    """Rank 0's stdout larger than the 256 KiB window arrives whole and in order, also when the
    job has ended before the client reads it."""
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        n = 40000  # 480 kB
        job = program(programs["chatty"], 2, [str(n)]).result(timeout=60)
        assert job.wait(60) == 0  # ended: the agent serves the rest from rank 0's file
        lines = job["out"].read(timeout=60).splitlines()
        assert len(lines) == n and lines[0] == "line 000000" and lines[-1] == f"line {n - 1:06d}"


def test_logs_of_python_and_bash_tasks(worker_pythonpath, tmp_path):
    with head_and_dfk(tmp_path) as (dfk, executor, head):
        fut = chatter(3)
        assert fut.result(timeout=60) == 3
        out = head.ctl("logs", str(task_id_of(fut))).stdout
        assert "==> worker: " in out
        assert "python task line 0\npython task line 1\npython task line 2\n" in out
        assert "--rank does not apply" in head.ctl("logs", str(task_id_of(fut)), "--rank", "0").stdout
        missing = head.ctl("logs", "999999", check=False)
        assert missing.returncode == 1 and "no task 999999" in missing.stderr
        usage = head.ctl("ps", "--rank", "1", check=False)
        assert usage.returncode == 2 and "--rank is a flag of 'logs'" in usage.stderr
