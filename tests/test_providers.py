"""DragonExecutor(provider=...): blocks of a Parsl provider that Parsl's strategy grows and shrinks
(issue 12). Real providers, no mocks: LocalProvider on this machine, SlurmProvider against the Slurm
test bed (slurmctld + slurmd n1..n4 in network namespaces; the root namespace is the login node and
the head listens on 10.200.0.1), real dragond, dragon-agent, workers, sbatch, srun, squeue, scancel.

- LocalProvider, init_blocks=0, min_blocks=0, max_blocks=2: a burst brings up two blocks (their
  agents in `dragonctl nodes` with their block ids), an idle period takes both away, a new small
  burst brings one back; every result right;
- scale-in while tasks run: the drained block's running tasks finish, those it had prefetched run
  on the other block; none is lost or run twice;
- a block whose job runs but whose agents never register, and a job that ends before they do:
  reported FAILED with the job's output, then Parsl's bad state: the workflow's tasks fail with
  BadStateException naming why, at once;
- the head's default listen address: a clear error when it would be loopback;
- SlurmProvider with SrunLauncher, blocks of 1 and 2 nodes (two executors of one Config): tasks on
  every node; the 2-node block's job scancelled mid-run: its tasks run again elsewhere
  (infrastructure retries) and the strategy starts a replacement block;
- drain before the end of a job: walltime 1 min, drain_before_end 45 s: no task starts on the block
  once its drain window began, tasks running then finish or (the one still running when Slurm ends
  the job) run again on the replacement, none lost;
- a SlurmProvider whose sbatch fails (a partition that does not exist): the workflow ends with
  Parsl's clear error (BadStateException naming sbatch's words), no hang.

Every test ends with nothing left: no agent or worker on this host or in any namespace, the Slurm
queue empty.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import binary, processes_of_run, wait_for
from testbed_fixtures import assert_no_service_left, no_service_left, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- apps (importable by the workers)

def sleep_double(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return 2 * x


def where(x: int, seconds: float = 0.0):
    import socket as s
    time.sleep(seconds)
    return s.gethostname(), x * x


def long_once(marker: str, seconds: float) -> str:
    """Sleeps `seconds` the first time it runs, returns at once when run again (after its node
    was lost): the marker file says it already started once."""
    path = Path(marker)
    if path.exists():
        return "again"
    path.write_text("started")
    time.sleep(seconds)
    return "first"


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def provider_dfk(tmp_path: Path, executors, **config):
    """A DFK of `executors` (DragonExecutors with providers); cleaned up whatever happens, then
    checks that none of their runs left a process on this host."""
    import parsl
    from parsl.config import Config

    config.setdefault("strategy_period", 0.3)
    dfk = parsl.load(Config(executors=list(executors), run_dir=str(tmp_path / "runinfo"), **config))
    run_dirs = []
    try:
        yield dfk
    finally:
        run_dirs = [ex.run_info_dir for ex in executors if ex.run_info_dir]
        dfk.cleanup()
        parsl.clear()
    for run_dir in run_dirs:
        wait_for(lambda: not processes_of_run(Path(run_dir)), 15,
                 f"the processes of run {run_dir} to end: {processes_of_run(Path(run_dir))}")


def apps(label: str):
    from parsl import python_app
    return (python_app(sleep_double, executors=[label]), python_app(where, executors=[label]),
            python_app(long_once, executors=[label]))


def ctl_json(executor, *args):
    cp = subprocess.run([binary("dragonctl"), "--run-dir", executor.run_info_dir, "--json", *args],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def nodes_of(executor):
    return ctl_json(executor, "nodes").get("nodes", [])


def tasks_of(executor):
    return ctl_json(executor, "ps", "--limit", "100000").get("tasks", [])


def statuses(executor):
    return {b: s.state.name for b, s in executor.status_facade.items()}


@pytest.fixture
def local_env(worker_pythonpath):
    """Apps of this module importable by the workers; DRAGON_BIN_DIR set (worker_pythonpath)."""
    yield


@pytest.fixture
def cluster(no_service_left, slurm_cluster, worker_pythonpath, monkeypatch):  # noqa: F811
    """The Slurm test bed with an empty queue before and after; SlurmProvider's commands (run by
    this process) and its jobs find the bed's slurm.conf."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all(timeout=30)


# ---------------------------------------------------------------- LocalProvider

def test_local_blocks_grow_on_a_burst_and_shrink_when_idle(local_env, tmp_path):
    from parsl.providers import LocalProvider
    from dragon_parsl import DragonExecutor

    ex = DragonExecutor(label="elastic", workers_per_node=2, block_connect_timeout=30,
                        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=2))
    double, _, _ = apps("elastic")
    with provider_dfk(tmp_path, [ex], max_idletime=1.5):
        assert statuses(ex) == {}
        assert nodes_of(ex) == []  # nothing before the work comes
        t0 = time.monotonic()
        futures = [double(i, 0.3) for i in range(24)]
        first = futures[0].result(timeout=60)
        burst_to_first = time.monotonic() - t0
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(24)]
        # Two blocks came up, each with one agent known by its block id; both ran tasks.
        nodes = nodes_of(ex)
        assert sorted(n["block_id"] for n in nodes) == ["0", "1"], nodes
        assert all(n["node_id"] == f"{socket.gethostname()}-b{n['block_id']}" for n in nodes), nodes
        assert all(int(n["tasks_done"]) > 0 for n in nodes), nodes
        text = subprocess.run([binary("dragonctl"), "--run-dir", ex.run_info_dir, "nodes"],
                              capture_output=True, text=True, timeout=30).stdout
        assert "BLOCK" in text.splitlines()[0], text
        assert sorted(ex.connected_blocks()) == ["0", "1"]

        # Idle past max_idletime: both blocks are scaled in, their agents leave as "gone".
        wait_for(lambda: statuses(ex) == {"0": "SCALED_IN", "1": "SCALED_IN"}, 20, "both blocks scaled in")
        wait_for(lambda: {n["state"] for n in nodes_of(ex)} == {"gone"}, 20, "both agents gone")
        wait_for(lambda: not [p for p in processes_of_run(Path(ex.run_info_dir)) if "dragon-agent" in p],
                 15, "the agents' processes to end")
        # The provider's job is the shell around the agent: it ends a moment after the agent (it
        # writes the exit code), which on a loaded machine can be after the check above.
        wait_for(lambda: all(s.terminal for s in ex.provider.status([ex.blocks_to_job_id[b] for b in ("0", "1")])),
                 10, "the provider's jobs of both blocks terminal")

        # A small burst (as many tasks as one block has workers) brings one block back.
        t1 = time.monotonic()
        again = [double(i, 0.1) for i in range(2)]
        assert [f.result(timeout=60) for f in again] == [0, 2]
        burst_to_result = time.monotonic() - t1
        live = [n for n in nodes_of(ex) if n["state"] in ("joining", "ready", "draining")]
        assert [n["block_id"] for n in live] == ["2"], nodes_of(ex)
        wait_for(lambda: statuses(ex).get("2") == "RUNNING", 10, "block 2 RUNNING at the next poll")
    print(f"\nLocalProvider: first result {burst_to_first:.2f} s after a burst on no block; "
          f"a burst after scale-in: results in {burst_to_result:.2f} s (first value {first})")


def test_local_scale_in_while_tasks_run_loses_none(local_env, tmp_path):
    from parsl.providers import LocalProvider
    from dragon_parsl import DragonExecutor

    ex = DragonExecutor(label="scalein", workers_per_node=2, block_connect_timeout=30,
                        provider=LocalProvider(init_blocks=2, min_blocks=0, max_blocks=2))
    double, _, _ = apps("scalein")
    # strategy "none": init_blocks only, so that only this test scales in.
    with provider_dfk(tmp_path, [ex], strategy="none"):
        wait_for(lambda: sorted(ex.connected_blocks()) == ["0", "1"], 30, "two blocks connected")
        futures = [double(i, 1.5) for i in range(12)]
        wait_for(lambda: all(int(n["running_tasks"]) == 2 for n in nodes_of(ex)), 30,
                 "both blocks running tasks")
        t_scale = time.time()
        scaled = ex.scale_in_facade(1)  # as the strategy does: the least busy block goes
        assert len(scaled) == 1 and statuses(ex)[scaled[0]] == "SCALED_IN", (scaled, statuses(ex))
        gone_block = scaled[0]
        node = next(n for n in nodes_of(ex) if n["block_id"] == gone_block)
        assert node["state"] == "draining" and node["removing"], node
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(12)]
        wait_for(lambda: next(n for n in nodes_of(ex) if n["block_id"] == gone_block)["state"] == "gone",
                 20, f"block {gone_block}'s agent to leave")
        tasks = tasks_of(ex)
        assert len(tasks) == 12 and all(t["state"] == "DONE" for t in tasks), tasks
        assert all(int(t.get("infra_attempts", 0)) == 0 for t in tasks), tasks  # nothing lost, nothing rerun
        on_drained = [t for t in tasks if t["node"] == node["node_id"]]
        assert on_drained, "the drained block ran nothing at all"
        started_late = [t for t in on_drained if int(t["times"]["running_us"]) > t_scale * 1e6 + 200_000]
        assert not started_late, f"tasks started on block {gone_block} after it was scaled in: {started_late}"
        other = [t for t in tasks if t["node"] != node["node_id"]]
        assert len(other) > len(on_drained), tasks  # what it had prefetched ran on the other block
        wait_for(lambda: ex.provider.status([ex.blocks_to_job_id[gone_block]])[0].terminal, 15,
                 f"job of block {gone_block} to end")


def test_local_block_whose_agents_never_register_fails_the_workflow_clearly(local_env, tmp_path):
    from parsl.executors.errors import BadStateException
    from parsl.jobs.errors import TooManyJobFailuresError
    from parsl.providers import LocalProvider
    from dragon_parsl import DragonExecutor

    # The job runs (its worker_init never returns), but no agent ever starts.
    ex = DragonExecutor(label="stuck", workers_per_node=1, block_connect_timeout=2,
                        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                                               worker_init="echo preparing the node; sleep 600"))
    double, _, _ = apps("stuck")
    with provider_dfk(tmp_path, [ex]):
        t0 = time.monotonic()
        fut = double(1)
        with pytest.raises(BadStateException) as e:
            fut.result(timeout=60)
        took = time.monotonic() - t0
        text = str(e.value)
        assert "none of its agents registered" in text and "block_connect_timeout=2" in text, text
        assert "preparing the node" in text, text  # the job's own output
        assert ex.bad_state_is_set
        with pytest.raises(TooManyJobFailuresError, match="none of its agents registered"):
            double(2).result(timeout=10)  # later tasks fail at once, with the cause (as with HTEX)
        job = ex.blocks_to_job_id["0"]
        wait_for(lambda: ex.provider.status([job])[0].terminal, 15, "the stuck job to be cancelled")
    assert took < 30, took
    print(f"\nagents never registered: BadStateException {took:.1f} s after the submit:\n{text[:600]}")


def test_local_block_that_ends_before_its_agents_register(local_env, tmp_path):
    from parsl.executors.errors import BadStateException
    from parsl.providers import LocalProvider
    from dragon_parsl import DragonExecutor

    ex = DragonExecutor(label="broken", workers_per_node=1,
                        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                                               worker_init="echo no such module >&2; exit 3"))
    double, _, _ = apps("broken")
    with provider_dfk(tmp_path, [ex]):
        with pytest.raises(BadStateException) as e:
            double(1).result(timeout=60)
        text = str(e.value)
        assert "ended (FAILED) before any of its agents registered" in text, text
        assert "exit code 3" in text and "no such module" in text, text


def test_default_listen_address_that_cannot_work_is_a_clear_error(local_env, tmp_path):
    """A provider whose nodes are elsewhere, on a host whose name resolves to loopback (the test
    machine's does): start() says so and what to give; with head_listen it starts."""
    from parsl.providers import PBSProProvider
    from dragon_parsl import DragonExecutor
    from dragon_parsl.errors import DragonError

    loopback = socket.gethostbyname(socket.gethostname()).startswith("127.")
    ex = DragonExecutor(label="pbs", provider=PBSProProvider(init_blocks=0), head_run_dir=str(tmp_path / "run"))
    ex.run_dir = str(tmp_path)
    if loopback:
        with pytest.raises(DragonError, match=r"head_listen='ADDRESS' or an interface") as e:
            ex.start()
        assert "resolves to the loopback address" in str(e.value)
        assert ex.local_head is None
    ex2 = DragonExecutor(label="pbs2", provider=PBSProProvider(init_blocks=0), head_listen="127.0.0.1",
                         head_run_dir=str(tmp_path / "run2"))
    ex2.run_dir = str(tmp_path)
    ex2.start()
    try:
        assert ex2.head_address.startswith("127.0.0.1:")
        cmd = ex2._get_launch_command("7")
        assert "--block-id 7" in cmd and "--token-file" in cmd and "--job-end $(( $(date +%s) + 1200 ))" in cmd
        token = (tmp_path / "run2" / "token").read_text().strip()
        assert token not in cmd
    finally:
        ex2.shutdown()


def test_provider_options_are_checked_and_repr_shows_them(tmp_path):
    from parsl.providers import LocalProvider
    from dragon_parsl import DragonExecutor

    with pytest.raises(ValueError, match="not both"):
        DragonExecutor(address="127.0.0.1:1", provider=LocalProvider())
    with pytest.raises(ValueError, match="ExecutionProvider"):
        DragonExecutor(provider="slurm")
    with pytest.raises(ValueError, match="block_connect_timeout"):
        DragonExecutor(provider=LocalProvider(), block_connect_timeout=0)
    with pytest.raises(ValueError, match="drain_before_end"):
        DragonExecutor(provider=LocalProvider(), drain_before_end=-1)
    ex = DragonExecutor(provider=LocalProvider(max_blocks=3), drain_before_end=30, head_listen="lo")
    text = repr(ex)
    for part in ("provider=LocalProvider(", "max_blocks=3", "drain_before_end=30.0", "head_listen='lo'",
                 "workers_per_node=None", "block_connect_timeout=120.0"):
        assert part in text, text
    assert ex.workers_per_node >= 1  # what Parsl's strategy counts, never None with a provider
    plain = DragonExecutor()
    assert plain.provider is None and plain.workers_per_node is None and "provider=None" in repr(plain)


# ---------------------------------------------------------------- Slurm

def slurm_provider(cluster, **kw):
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    kw.setdefault("partition", cluster.partition)
    kw.setdefault("walltime", "00:10:00")
    kw.setdefault("launcher", SrunLauncher())
    kw.setdefault("cmd_timeout", 30)
    return SlurmProvider(**kw)


def wait_no_job(cluster, timeout=40):
    cluster.wait_queue_empty(timeout)
    assert_no_service_left(grace=10)


def test_slurm_blocks_of_one_and_two_nodes_and_a_scancelled_block_is_replaced(cluster, tmp_path):
    from dragon_parsl import DragonExecutor

    one = DragonExecutor(label="one", workers_per_node=2, block_connect_timeout=60,
                         provider=slurm_provider(cluster, nodes_per_block=1, init_blocks=1, min_blocks=1,
                                                 max_blocks=1))
    two = DragonExecutor(label="two", workers_per_node=2, block_connect_timeout=60,
                         provider=slurm_provider(cluster, nodes_per_block=2, init_blocks=1, min_blocks=1,
                                                 max_blocks=1))
    _, where_one, _ = apps("one")
    _, where_two, _ = apps("two")
    with provider_dfk(tmp_path, [one, two]):
        # The heads listen on the login node's address on the cluster's network, found by default.
        assert one.head_address.startswith(f"{cluster.controller_ip}:"), one.head_address
        t0 = time.monotonic()
        first = where_two(0).result(timeout=60)
        first_two = time.monotonic() - t0
        r1 = [where_one(i, 0.05) for i in range(20)]
        r2 = [where_two(i, 0.05) for i in range(40)]
        hosts1 = {h for h, _ in (f.result(timeout=60) for f in r1)}
        got2 = [f.result(timeout=60) for f in r2]
        assert [v for _, v in got2] == [i * i for i in range(40)]
        hosts2 = {h for h, _ in got2}
        assert len(hosts1) == 1 and len(hosts2) == 2 and not hosts1 & hosts2, (hosts1, hosts2)
        assert hosts1 | hosts2 <= set(cluster.nodes)
        n2 = nodes_of(two)
        assert sorted(n["node_id"] for n in n2) == sorted(f"{h}-b0" for h in hosts2), n2
        assert {n["block_id"] for n in n2} == {"0"} and all(int(n["job_end_us"]) > 0 for n in n2), n2
        job0 = two.blocks_to_job_id["0"]
        assert {j["id"] for j in cluster.squeue()} >= {job0, one.blocks_to_job_id["0"]}

        # scancel of the 2-node block while its workers run tasks: they run again on a new block.
        slow = [where_two(i, 4) for i in range(4)]
        wait_for(lambda: sum(int(n["running_tasks"]) for n in nodes_of(two)) >= 2, 30, "tasks running on block 0")
        t_cancel = time.monotonic()
        cluster.run("scancel", job0)
        got = [f.result(timeout=90) for f in slow]
        replaced_after = time.monotonic() - t_cancel
        assert [v for _, v in got] == [i * i for i in range(4)]
        assert "1" in two.blocks_to_job_id, "the strategy started no replacement block"
        nodes = {n["node_id"]: n for n in nodes_of(two)}
        assert {n["state"] for i, n in nodes.items() if i.endswith("-b0")} == {"lost"}, nodes
        assert [n["block_id"] for n in nodes.values() if n["state"] == "ready"] == ["1", "1"], nodes
        rerun = [t for t in tasks_of(two) if int(t.get("infra_attempts", 0)) > 0]
        assert rerun and all(t["state"] == "DONE" and t["node"].endswith("-b1") for t in rerun), rerun
        assert statuses(two)["0"] in ("CANCELLED", "COMPLETED"), statuses(two)
    wait_no_job(cluster)
    print(f"\nSlurm: first result on a 2-node block {first_two:.2f} s after start ({first}); after scancel, "
          f"the re-run tasks finished on the replacement block {replaced_after:.1f} s later")


def test_slurm_block_drains_before_its_walltime_ends(cluster, tmp_path):
    from dragon_parsl import DragonExecutor

    ex = DragonExecutor(label="drain", workers_per_node=2, drain_before_end=45, block_connect_timeout=60,
                        provider=slurm_provider(cluster, nodes_per_block=1, init_blocks=1, min_blocks=1,
                                                max_blocks=2, walltime="00:01:00"))
    double, where_app, long_app = apps("drain")
    marker = tmp_path / "long.marker"
    with provider_dfk(tmp_path, [ex]):
        wait_for(lambda: ex.connected_blocks() == ["0"], 60, "block 0 connected")
        node0 = nodes_of(ex)[0]
        drain_at = int(node0["job_end_us"]) / 1e6 - 45
        assert drain_at > time.time(), node0  # its end is the job's start + 1 minute
        # One task that would outlive the job (when run again after its node is lost it returns
        # at once), and short ones before the drain window and in it.
        long = long_app(str(marker), 300)
        early = [double(i, 1) for i in range(4)]
        assert [f.result(timeout=30) for f in early] == [0, 2, 4, 6]
        wait_for(lambda: time.time() > drain_at + 0.5, 60, "the drain window")
        wait_for(lambda: nodes_of(ex)[0]["state"] == "draining", 10, "block 0 draining")
        late = [where_app(i, 0.5) for i in range(8)]
        assert [v for _, v in (f.result(timeout=90) for f in late)] == [i * i for i in range(8)]
        assert statuses(ex).get("0") in ("HELD", "TIMEOUT", "COMPLETED"), statuses(ex)
        assert "1" in ex.blocks_to_job_id, "no block replaced the draining one"
        # Slurm ends the job at its walltime; the long task runs again on the other block.
        t_end = time.monotonic()
        assert long.result(timeout=150) == "again"
        rerun_after = time.monotonic() - t_end
        tasks = tasks_of(ex)
        nodes = {n["node_id"]: n for n in nodes_of(ex)}
    assert len(tasks) == 13 and all(t["state"] == "DONE" for t in tasks), tasks
    on0 = [t for t in tasks if t["node"] == node0["node_id"]]
    assert on0, tasks  # early ones (the strategy may also have started block 1 for them)
    late_starts = [t for t in tasks if t["node"] == node0["node_id"]
                   and int(t["times"]["running_us"]) / 1e6 > drain_at + 0.2]
    assert not late_starts, f"tasks started on block 0 in its drain window: {late_starts}"
    long_task = next(t for t in tasks if t["name"] == "long_once")
    assert int(long_task["infra_attempts"]) == 1 and not long_task["node"].endswith("-b0"), long_task
    assert nodes[node0["node_id"]]["state"] == "lost", nodes  # Slurm ended it with its task running
    wait_no_job(cluster)
    print(f"\ndrain: block 0 drained 45 s before its end; the task it still ran when Slurm ended the job "
          f"finished on block 1 {rerun_after:.1f} s after the late tasks")


def test_slurm_submit_failure_ends_the_workflow_with_a_clear_error(cluster, tmp_path):
    from parsl.executors.errors import BadStateException
    from dragon_parsl import DragonExecutor

    ex = DragonExecutor(label="bad", provider=slurm_provider(cluster, partition="bogus", init_blocks=0,
                                                             min_blocks=0, max_blocks=1))
    double, _, _ = apps("bad")
    with provider_dfk(tmp_path, [ex]):
        t0 = time.monotonic()
        with pytest.raises(BadStateException) as e:
            double(1).result(timeout=60)
        took = time.monotonic() - t0
    text = str(e.value)
    assert "invalid partition" in text.lower() and "block 0" in text, text
    assert took < 20, took
    wait_no_job(cluster)
    print(f"\nbad partition: BadStateException {took:.1f} s after the submit:\n{text[:500]}")
