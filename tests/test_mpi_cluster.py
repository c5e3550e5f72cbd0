"""MPI jobs over several agents: the netns test bed's ssh hosts h1..h4 (testbed_fixtures), a head
in the root namespace with one agent per host started over ssh, MPICH's hydra bootstrapping its
proxies over the bed's ssh (HYDRA_LAUNCHER_EXEC, HYDRA_IFACE=tb0, forwarded to the agents with
--agent-env). Real dragond, agents, mpiexec, ranks; no mocks.

- placement: ranks land where the policy says (each rank reports its hostname), the talk's
  factorial across hosts with rank 0's stdin/stdout through the head;
- faults across hosts: a rank on another host that crashes (hydra alone can hang there: the
  wrapper's report ends the job), cancel mid-run, kill -9 of the agent that hosts rank 0; the
  job fails clearly and no rank survives on any host.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
from parsl import bash_app

import mpi_programs
from conftest import start_head, wait_for  # noqa: F401
from dragon_parsl import MpiJobFailed, NodeLost, Policy, TaskCancelled, TaskIOError, mpi_app
from test_ssh_cluster import parsl_client, ssh_heads  # noqa: F401
from testbed_fixtures import netns_hosts, no_service_left  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    return mpi_programs.build(tmp_path_factory.mktemp("mpi-programs"))


@pytest.fixture(autouse=True)
def no_stale_grants():
    """Torn down after the test's heads are stopped (autouse fixtures are set up first): the
    agent killed with kill -9 cannot remove its MPI grant files; dragond's exit does."""
    yield
    mpi_programs.assert_no_stale_grants()


@pytest.fixture
def mpi_heads(netns_hosts, ssh_heads, monkeypatch):
    """ssh_heads whose agents launch MPI jobs with hydra over the bed's ssh."""
    monkeypatch.setenv("HYDRA_LAUNCHER_EXEC", str(netns_hosts.ssh))
    monkeypatch.setenv("HYDRA_IFACE", netns_hosts.head_iface)

    def start(hosts):
        head = ssh_heads(hosts, "--agent-env",
                         f"PYTHONPATH,HYDRA_LAUNCHER_EXEC,HYDRA_IFACE,{mpi_programs.SESSION_ENV}")
        head.wait_ready()
        return head
    yield start
    mpi_programs.assert_no_mpi_left(timeout=15)


@mpi_app
def program(exe, num_ranks, args=(), policy=None):
    return exe, None, policy, num_ranks, list(args)


@bash_app
def where_bash(exe, parsl_resource_specification=None, stdout=None, stderr=None):
    return f"$PARSL_MPI_PREFIX {exe}"


def ranks_running(exe: str) -> int:
    """Ranks of `exe` running on any host (not their dragon-mpi-rank wrappers)."""
    return len([p for p in mpi_programs.mpi_processes() if p.split(": ", 1)[1].startswith(exe)])


def ranks_hosts(output: str) -> dict[int, str]:
    """{rank: host} from the `where` program's output ("rank R HOST" lines)."""
    out = {}
    for line in output.splitlines():
        _, r, host = line.split()
        out[int(r)] = host
    return out


def test_ranks_land_where_the_policy_says(netns_hosts, mpi_heads, programs, tmp_path):
    head = mpi_heads(["h1", "h2", "h3"])
    with parsl_client(head, tmp_path, infra_retries=0) as (dfk, executor):
        # One rank on each of two named hosts.
        job = program(programs["where"], 2, policy=Policy(hosts=["h2", "h3"], ranks_per_node=1)).result(timeout=90)
        seen = ranks_hosts(job["out"].read(timeout=90))
        assert job.wait(60) == 0
        assert sorted(seen.values()) == ["h2", "h3"]
        assert seen == dict(enumerate(job.hosts))        # each rank where the placement said
        assert job.leader_host == seen[0]                 # rank 0 runs with the leader agent
        # Two ranks per node on two nodes: ranks 0,1 on the leader, 2,3 on the other.
        job = program(programs["where"], 4, policy=Policy(hosts=["h1", "h2"], ranks_per_node=2)).result(timeout=90)
        seen = ranks_hosts(job["out"].read(timeout=90))
        assert job.wait(60) == 0
        assert seen[0] == seen[1] and seen[2] == seen[3] and {seen[0], seen[2]} == {"h1", "h2"}
        assert seen == dict(enumerate(job.hosts))
        # Every rank's files are on the leader, the remote ranks' included.
        for r in range(4):
            assert f"rank {r} on {seen[r]}" in open(job.stderr_paths[r]).read()
        # The talk's factorial across three hosts, stdin and stdout through the head.
        job = program(programs["factorial"], 3, ["100"],
                      policy=Policy(hosts=["h1", "h2", "h3"], ranks_per_node=1)).result(timeout=90)
        job["in"].send("2\n")
        job["in"].close()
        assert int(job["out"].recv(timeout=90)) == mpi_programs.expected_factorial(3, 2, 100)
        assert job.wait(60) == 0
        assert sorted(job.hosts) == ["h1", "h2", "h3"]
        # Parsl's MPI API across nodes: $PARSL_MPI_PREFIX on the reserved nodes.
        out = tmp_path / "where.out"
        fut = where_bash(programs["where"], stdout=str(out), stderr=str(tmp_path / "where.err"),
                         parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1})
        assert fut.result(timeout=120) == 0, (tmp_path / "where.err").read_text()
        assert len(set(ranks_hosts(out.read_text()).values())) == 2


def test_a_rank_that_crashes_on_another_host(netns_hosts, mpi_heads, programs, tmp_path):
    head = mpi_heads(["h1", "h2"])
    with parsl_client(head, tmp_path, infra_retries=0) as (dfk, executor):
        job = program(programs["crash"], 2, policy=Policy(hosts=["h1", "h2"], ranks_per_node=1)).result(timeout=90)
        t0 = time.monotonic()
        assert job.wait(90) == 3
        took = time.monotonic() - t0
        err = job.exception()
        assert isinstance(err, MpiJobFailed) and err.rank == 1
        assert f"rank 1 on {job.hosts[1]}" in str(err)
        mpi_programs.assert_no_mpi_left(timeout=15)
        print(f"crash of rank 1 on {job.hosts[1]}: job ended {took:.2f} s after it started")


def test_cancel_ends_the_gang_on_every_host(netns_hosts, mpi_heads, programs, tmp_path):
    head = mpi_heads(["h1", "h2"])
    with parsl_client(head, tmp_path, infra_retries=0) as (dfk, executor):
        job = program(programs["sleeper"], 4, policy=Policy(hosts=["h1", "h2"], ranks_per_node=2)).result(timeout=90)
        assert job["out"].recv(timeout=90) == "started"
        wait_for(lambda: ranks_running(programs["sleeper"]) == 4, 30,
                 "the 4 ranks to run")
        t0 = time.monotonic()
        job.cancel()
        assert job.wait(60) == -signal.SIGTERM
        assert isinstance(job.exception(), TaskCancelled)
        mpi_programs.assert_no_mpi_left(timeout=15)
        print(f"cancel: every rank on both hosts gone {time.monotonic() - t0:.2f} s after it")


def test_kill_9_of_the_agent_hosting_rank_0(netns_hosts, mpi_heads, programs, tmp_path):
    head = mpi_heads(["h1", "h2"])
    with parsl_client(head, tmp_path, infra_retries=0) as (dfk, executor):
        job = program(programs["sleeper"], 2, policy=Policy(hosts=["h1", "h2"], ranks_per_node=1)).result(timeout=90)
        assert job["out"].recv(timeout=90) == "started"
        wait_for(lambda: ranks_running(programs["sleeper"]) == 2, 30,
                 "the 2 ranks to run")
        leader = job.leader_host
        agent_pid = head.nodes()[leader]["agent_pid"]
        t0 = time.monotonic()
        os.kill(agent_pid, signal.SIGKILL)
        with pytest.raises(NodeLost) as lost:
            job.wait(60)
        assert leader in str(lost.value)
        with pytest.raises((TaskIOError, EOFError)):
            job["out"].recv(timeout=30)
        mpi_programs.assert_no_mpi_left(timeout=20)
        print(f"kill -9 of {leader}'s agent: job failed and every rank gone {time.monotonic() - t0:.2f} s after")
