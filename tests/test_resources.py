"""Per-task resources and Parsl's MPI API against the real dragond, agents, workers and MPICH
(issue 13): parsl_resource_specification checked at submit, placed with concrete CPU/GPU ids,
enforced on the node (affinity, GPUs, memory, walltime), PARSL_* for MPI apps, gangs over two
agents, and a mixed load in which no core, GPU or byte of memory is granted twice and the large
request is not starved.

Every wait is on an observable state with a timeout; nothing is left running (checked).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from parsl import bash_app, python_app
from parsl.executors.errors import InvalidResourceSpecification

from conftest import (Head, binary, head_and_dfk, load_parsl, processes_of_run, start_head,
                      stop_head, wait_for, wait_for_workers)

from dragon_parsl.errors import ResourcesUnsatisfiable, TaskOutOfMemory, TaskTimedOut
from dragon_parsl.resources import resource_request
from dragon_parsl._proto import common_pb2, head_pb2, head_pb2_grpc

pytestmark = pytest.mark.timeout(180)

MPICC = shutil.which("mpicc") or shutil.which("mpicc.mpich")
MPIEXEC = shutil.which("mpiexec.hydra") or shutil.which("mpiexec")


# ------------------------------------------------------------------ apps
@python_app
def where(tag=None, hold=0.0, parsl_resource_specification={}):
    """What the task sees of its grant: affinity, GPUs, times (worker clock), node."""
    import os
    import time
    start = time.time()
    if hold:
        time.sleep(hold)
    return {"tag": tag, "node": os.environ.get("DRAGON_NODE_ID"),
            "cpus": sorted(os.sched_getaffinity(0)),
            "dragon_cpus": os.environ.get("DRAGON_CPUS"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "rocr": os.environ.get("ROCR_VISIBLE_DEVICES"),
            "parsl": {k: v for k, v in os.environ.items() if k.startswith("PARSL_")},
            "start": start, "end": time.time()}


@python_app
def env_after():
    """The worker's environment once a task with a grant has run in it."""
    import os
    return {k: v for k, v in os.environ.items()
            if k.startswith("PARSL_") or k in ("CUDA_VISIBLE_DEVICES", "DRAGON_CPUS")}


@python_app
def hog(mb, hold=3.0, parsl_resource_specification={}):
    import time
    buf = bytearray(mb << 20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    time.sleep(hold)
    return len(buf)


@python_app
def spawn_and_sleep(pidfile, seconds, parsl_resource_specification={}):
    """Starts a child that would outlive the task, records its pid, then overstays."""
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    time.sleep(seconds)
    return child.pid


@bash_app
def bash_sleep(pidfile, parsl_resource_specification={}):
    return f"sleep 300 & echo $! > {pidfile}; wait"


@bash_app
def bash_hog(parsl_resource_specification={}):
    return f"{sys.executable} -c 'b = bytearray(400 << 20); b[::4096] = b\"x\" * len(b[::4096]); import time; time.sleep(5)'"


@bash_app
def mpi_env(out, parsl_resource_specification={}, stdout=None):
    return f"env | grep ^PARSL_ | sort > {out}"


@bash_app
def mpi_run(program, parsl_resource_specification={}, stdout=None, stderr=None):
    return f"$PARSL_MPI_PREFIX {program}"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1]
    except OSError:
        return False
    return state != "Z"


def start_agent(head: Head, node: str, workers: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [binary("dragon-agent"), "--head", head.address, "--node-id", node, "--run-dir",
         str(head.run_dir), "--workers", str(workers), "--python", sys.executable, *extra],
        env=head.agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def list_tasks(head: Head, state=common_pb2.TASK_STATE_UNSPECIFIED, limit=100000):
    stub = head_pb2_grpc.HeadServiceStub(head.channel())
    return stub.ListTasks(head_pb2.ListTasksRequest(state=state, limit=limit), timeout=30).tasks


@pytest.fixture(scope="module")
def hello_mpi(tmp_path_factory) -> str:
    if MPICC is None or MPIEXEC is None:
        pytest.fail("MPICH (mpicc, mpiexec.hydra) is not installed: deploy/install-deps.sh installs it")
    d = tmp_path_factory.mktemp("mpi")
    src = d / "hello.c"
    src.write_text(r'''
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank, size, len; char name[MPI_MAX_PROCESSOR_NAME];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(name, &len);
  cpu_set_t set; sched_getaffinity(0, sizeof(set), &set);
  char cpus[256] = ""; int n = 0;
  for (int c = 0; c < 256; c++) if (CPU_ISSET(c, &set)) n += snprintf(cpus + n, sizeof(cpus) - n, "%s%d", n ? "," : "", c);
  int sum = 0; MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d/%d host=%s cpus=%s sum=%d\n", rank, size, name, cpus, sum);
  MPI_Finalize(); return 0;
}
''')
    exe = d / "hello"
    subprocess.run([MPICC, "-O2", "-o", str(exe), str(src)], check=True, timeout=120)
    return str(exe)


# ------------------------------------------------------------------ validation
def test_resource_specification_is_checked_naming_the_key():
    good = resource_request({"cores": 2, "memory": 100, "gpus": 1, "walltime": 30, "priority": -3,
                             "num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4,
                             "launcher_options": "-bind-to core"})
    assert good.cores == 2 and good.memory_bytes == 100 << 20 and good.gpus == 1
    assert good.walltime_s == 30 and good.priority == -3
    assert (good.nodes, good.ranks_per_node, good.ranks) == (2, 2, 4)
    assert resource_request({"running_time_min": 1.5}).walltime_s == 90
    assert resource_request({"num_nodes": "2"}).nodes == 2  # Parsl passes some as strings
    assert resource_request({}) is None
    bad = [({"cpus": 1}, {"cpus"}), ({"disk": 10, "cores": 1}, {"disk"}),
           ({"cores": -1}, {"cores"}), ({"cores": 0}, {"cores"}), ({"cores": 1.5}, {"cores"}),
           ({"cores": True}, {"cores"}), ({"memory": "lots"}, {"memory"}),
           ({"memory": -5}, {"memory"}), ({"gpus": -1}, {"gpus"}),
           ({"num_ranks": 0}, {"num_ranks"}), ({"ranks_per_node": 0}, {"ranks_per_node"}),
           ({"num_nodes": float("nan")}, {"num_nodes"}), ({"walltime": 0}, {"walltime"}),
           ({"walltime": 5, "running_time_min": 1}, {"walltime", "running_time_min"}),
           ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5},
            {"num_nodes", "ranks_per_node", "num_ranks"}),
           ({"num_nodes": 3, "num_ranks": 2}, {"num_nodes", "num_ranks"}),
           ({"launcher_options": 5}, {"launcher_options"}), ({"priority": "high"}, {"priority"})]
    for spec, keys in bad:
        with pytest.raises(InvalidResourceSpecification) as e:
            resource_request(spec)
        assert e.value.invalid_keys == keys, spec
        for k in keys:
            assert k in str(e.value), (spec, str(e.value))


def test_bad_specs_fail_at_submit_and_unsatisfiable_fails_at_once(worker_pythonpath, tmp_path):
    dfk, _ = load_parsl(tmp_path, workers_per_node=2)
    try:
        with pytest.raises(InvalidResourceSpecification) as e:
            where(parsl_resource_specification={"cores": 1, "memory": 1, "disk": 1}).result(timeout=60)
        assert e.value.invalid_keys == {"disk"}
        with pytest.raises(InvalidResourceSpecification) as e:
            where(parsl_resource_specification={"num_ranks": 0}).result(timeout=60)
        assert "num_ranks" in str(e.value)
        assert where(parsl_resource_specification={"cores": 1, "memory": 64}).result(timeout=60)["cpus"]
        cores = os.cpu_count()
        t0 = time.monotonic()
        with pytest.raises(ResourcesUnsatisfiable) as e:
            where(parsl_resource_specification={"cores": cores + 1}).result(timeout=30)
        assert time.monotonic() - t0 < 5
        assert f"{cores + 1} core(s)" in str(e.value) and f"The largest: {cores} core(s)" in str(e.value)
        assert e.value.failure == "FAILURE_UNSATISFIABLE"
        with pytest.raises(ResourcesUnsatisfiable) as e:
            where(parsl_resource_specification={"gpus": 1}).result(timeout=30)
        assert "1 GPU(s)" in str(e.value)
        with pytest.raises(ResourcesUnsatisfiable) as e:  # one node: a 2-node gang never fits
            where(parsl_resource_specification={"num_nodes": 2}).result(timeout=30)
        assert "on each of 2 nodes" in str(e.value)
    finally:
        dfk.cleanup()


# ------------------------------------------------------------------ enforcement
def test_affinity_equals_the_grant_and_plain_tasks_keep_off_it(worker_pythonpath, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    dfk, executor = load_parsl(tmp_path, workers_per_node=len(cpus))
    try:
        one = where("one", parsl_resource_specification={"cores": 1}).result(timeout=60)
        assert len(one["cpus"]) == 1 and one["dragon_cpus"] == str(one["cpus"][0])
        whole = where("all", parsl_resource_specification={"cores": len(cpus)}).result(timeout=60)
        assert whole["cpus"] == cpus and whole["dragon_cpus"] == ",".join(map(str, cpus))
        # The grant the head shows is the affinity the task had (indices into the agent's CPUs).
        head = Head(address=executor.head_address, run_dir=Path(executor.run_info_dir),
                    home=Path(executor.run_info_dir), proc=None, env=dict(os.environ))
        infos = {t.task_id: t for t in list_tasks(head)}
        shown = [t for t in infos.values() if t.resources.cores == 1]
        assert shown and [cpus[i] for i in shown[0].grant.cpus] == one["cpus"]
        # While a one-core task holds a CPU, plain tasks run on the others only.
        if len(cpus) > 1:
            held = where("held", hold=3.0, parsl_resource_specification={"cores": 1})
            wait_for(lambda: any(t.state == common_pb2.RUNNING and t.resources.cores == 1
                                 for t in list_tasks(head)), 30, "the placed task to run")
            plain = [where("plain") for _ in range(20)]
            held_cpus = set(held.result(timeout=60)["cpus"])
            for f in plain:
                r = f.result(timeout=60)
                if r["start"] < held.result()["end"]:
                    assert not set(r["cpus"]) & held_cpus, r
    finally:
        dfk.cleanup()


def test_executable_task_pinned_and_limited(worker_pythonpath, tmp_path):
    head = start_head(tmp_path, "--workers", "2")
    try:
        wait_for_workers(head, 2)
        stub = head_pb2_grpc.HeadServiceStub(head.channel())
        import queue
        import threading
        out: "queue.Queue" = queue.Queue()

        def requests():
            yield head_pb2.ClientMessage(hello=head_pb2.Hello(
                protocol_version=common_pb2.PROTOCOL_VERSION_CURRENT, client_name="test_resources",
                cwd=str(tmp_path)))
            spec = common_pb2.ExecutableSpec(argv=["/bin/sh", "-c",
                                                   "grep Cpus_allowed_list /proc/self/status; "
                                                   "echo CUDA=${CUDA_VISIBLE_DEVICES-unset}"])
            hang = common_pb2.ExecutableSpec(argv=["/bin/sh", "-c", f"sleep 300 & echo $! > {tmp_path}/exe.pid; wait"])
            yield head_pb2.ClientMessage(submit=head_pb2.SubmitBatch(tasks=[
                head_pb2.TaskSubmission(client_ref=1, kind=common_pb2.EXECUTABLE,
                                        payload=spec.SerializeToString(),
                                        resources=common_pb2.ResourceRequest(cores=1)),
                head_pb2.TaskSubmission(client_ref=2, kind=common_pb2.EXECUTABLE,
                                        payload=hang.SerializeToString(),
                                        resources=common_pb2.ResourceRequest(walltime_s=2)),
            ]))
            while out.get() is not None:
                pass

        results = {}
        stream = stub.Session(requests(), timeout=120)
        for msg in stream:
            for r in msg.results.results:
                results[r.client_ref] = r
            if len(results) == 2:
                out.put(None)
                break
        ran = results[1].result
        assert ran.outcome == common_pb2.OK, ran
        res = common_pb2.ExecutableResult.FromString(ran.data)
        info = {t.task_id: t for t in list_tasks(head)}[results[1].task_id]
        expected = sorted(os.sched_getaffinity(0))[info.grant.cpus[0]]
        assert res.stdout_tail.decode().split()[1] == str(expected), res.stdout_tail
        timed = results[2].result
        assert timed.failure == common_pb2.FAILURE_TIMED_OUT, timed
        assert "walltime of 2 s" in timed.error
        pid = int((tmp_path / "exe.pid").read_text())
        wait_for(lambda: not alive(pid), 10, "the executable's child to be gone")
    finally:
        stop_head(head)


def test_two_gpu_tasks_on_a_two_gpu_node_each_see_their_own(worker_pythonpath, tmp_path):
    head = start_head(tmp_path, "--agents", "none")
    agent = start_agent(head, "gpu1", 3, "--gpus", "0,1")
    try:
        wait_for_workers(head, 3)
        from conftest import parsl_on
        with parsl_on(head, tmp_path):
            a = where("a", hold=2.0, parsl_resource_specification={"gpus": 1})
            b = where("b", hold=2.0, parsl_resource_specification={"gpus": 1})
            c = where("c", hold=0.5, parsl_resource_specification={"gpus": 1})  # waits for a GPU
            plain = where("plain")
            ra, rb, rc, rp = (f.result(timeout=60) for f in (a, b, c, plain))
        assert {ra["cuda"], rb["cuda"]} == {"0", "1"}, (ra, rb)
        assert ra["rocr"] == ra["cuda"] and rb["rocr"] == rb["cuda"]
        # Never the same GPU at the same time.
        for x, y in ((ra, rc), (rb, rc)):
            if x["cuda"] == y["cuda"]:
                assert x["end"] <= y["start"] or y["end"] <= x["start"], (x, y)
        assert rp["cuda"] == "" and rp["rocr"] == ""  # asked for none: sees none
    finally:
        stop_head(head)
        agent.wait(timeout=30)


def test_memory_over_the_limit_fails_out_of_memory_naming_it(worker_pythonpath, tmp_path):
    dfk, _ = load_parsl(tmp_path, workers_per_node=2)
    try:
        assert hog(20, 0.2, parsl_resource_specification={"memory": 500}).result(timeout=60) == 20 << 20
        t0 = time.monotonic()
        with pytest.raises(TaskOutOfMemory) as e:
            hog(600, parsl_resource_specification={"memory": 300}).result(timeout=60)
        assert time.monotonic() - t0 < 3  # killed while it held the memory, not at its end
        assert "over its memory limit of 300 MiB" in str(e.value)
        assert e.value.failure == "FAILURE_OUT_OF_MEMORY"
        with pytest.raises(TaskOutOfMemory):  # a bash_app's child counts too
            bash_hog(parsl_resource_specification={"memory": 200}).result(timeout=60)
        # The worker was replaced: the next task runs.
        assert where().result(timeout=60)["cpus"]
    finally:
        dfk.cleanup()


def test_walltime_kills_the_whole_process_tree(worker_pythonpath, tmp_path):
    dfk, _ = load_parsl(tmp_path, workers_per_node=2)
    try:
        pidfile = tmp_path / "child.pid"
        t0 = time.monotonic()
        with pytest.raises(TaskTimedOut) as e:
            spawn_and_sleep(str(pidfile), 60, parsl_resource_specification={"walltime": 2}).result(timeout=60)
        assert 1.9 < time.monotonic() - t0 < 10
        assert "walltime of 2 s" in str(e.value) and e.value.failure == "FAILURE_TIMED_OUT"
        child = int(pidfile.read_text())
        wait_for(lambda: not alive(child), 10, "the task's child to be gone")
        # running_time_min, on a bash_app, with cores.
        pidfile2 = tmp_path / "bash.pid"
        with pytest.raises(TaskTimedOut):
            bash_sleep(str(pidfile2), parsl_resource_specification={"running_time_min": 0.05,
                                                                     "cores": 1}).result(timeout=60)
        wait_for(lambda: pidfile2.exists() and not alive(int(pidfile2.read_text())), 10,
                 "the bash_app's sleep to be gone")
        assert where().result(timeout=60)["cpus"]
    finally:
        dfk.cleanup()


# ------------------------------------------------------------------ MPI
def test_parsl_mpi_environment_and_a_real_mpi_run(worker_pythonpath, tmp_path, monkeypatch, hello_mpi):
    # Name mpiexec as Parsl does, so that the prefixes must match Parsl's own composition.
    monkeypatch.setenv("DRAGON_MPIEXEC", "mpiexec")
    monkeypatch.setenv("DRAGON_MPI_BIND", "none")
    from parsl.executors.high_throughput.mpi_prefix_composer import compose_all
    dfk, _ = load_parsl(tmp_path, workers_per_node=2)
    try:
        spec = {"num_nodes": 1, "ranks_per_node": 2}
        got = where(parsl_resource_specification=spec).result(timeout=60)["parsl"]
        host = got["PARSL_MPI_NODELIST"]
        parsl_spec = {"num_nodes": 1, "ranks_per_node": 2, "num_ranks": 2}
        expected = compose_all("mpiexec", parsl_spec, [host])
        for key in ("PARSL_MPI_PREFIX", "PARSL_MPIEXEC_PREFIX", "PARSL_SRUN_PREFIX", "PARSL_APRUN_PREFIX"):
            assert got[key] == expected[key], key
        assert (got["PARSL_NUM_NODES"], got["PARSL_RANKS_PER_NODE"], got["PARSL_NUM_RANKS"]) == ("1", "2", "2")
        # The worker's environment is restored after the task.
        for _ in range(4):
            assert env_after().result(timeout=60) == {}
        # A bash_app with $PARSL_MPI_PREFIX: a real MPI program, 2 ranks on the reserved cores.
        out = tmp_path / "mpi.out"
        mpi_run(hello_mpi, parsl_resource_specification={"num_ranks": 2,
                                                         "launcher_options": "-bind-to none"},
                stdout=str(out), stderr=str(tmp_path / "mpi.err")).result(timeout=120)
        lines = sorted(l for l in out.read_text().splitlines() if l.startswith("rank"))
        assert len(lines) == 2 and all("sum=1" in l for l in lines), out.read_text()
        # With the rank binder (dragon-mpi-bind, the default when it is installed next to
        # dragon-agent): each rank on its own share of the grant.
        monkeypatch.delenv("DRAGON_MPI_BIND")
        if (Path(binary("dragon-agent")).parent / "dragon-mpi-bind").exists() and len(os.sched_getaffinity(0)) >= 2:
            dfk.cleanup()
            import parsl
            parsl.clear()
            dfk, _ = load_parsl(tmp_path / "bound", workers_per_node=2)
            bound = tmp_path / "bound.out"
            mpi_run(hello_mpi, parsl_resource_specification={"num_nodes": 1, "ranks_per_node": 2, "cores": 1},
                    stdout=str(bound), stderr=str(tmp_path / "bound.err")).result(timeout=120)
            cpus = [l.split("cpus=")[1].split()[0] for l in bound.read_text().splitlines() if l.startswith("rank")]
            assert len(cpus) == 2 and all("," not in c for c in cpus) and len(set(cpus)) == 2, bound.read_text()
        env_file = tmp_path / "env.txt"
        mpi_env(str(env_file), parsl_resource_specification={"num_ranks": 2,
                                                             "launcher_options": "-bind-to none"}).result(timeout=60)
        env = dict(l.split("=", 1) for l in env_file.read_text().splitlines())
        assert env["PARSL_LAUNCHER_OPTIONS"] == "-bind-to none"
        prefix = env["PARSL_MPI_PREFIX"]
        assert "-hosts " in prefix and " -bind-to none" in prefix, prefix
        assert prefix.endswith(" --") and "dragon-mpi-bind" in prefix, prefix  # the binder, last
    finally:
        dfk.cleanup()


def test_gang_over_two_agents_holds_both_and_releases_together(worker_pythonpath, tmp_path, hello_mpi):
    head = start_head(tmp_path, "--agents", "none")
    agents = [start_agent(head, "n1", 2), start_agent(head, "n2", 2)]
    try:
        wait_for_workers(head, 4)
        from conftest import parsl_on
        with parsl_on(head, tmp_path):
            out = tmp_path / "gang.out"
            gang = mpi_run(f"bash -c 'sleep 2; exec {hello_mpi}'",
                           parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1,
                                                         "cores": 2},
                           stdout=str(out), stderr=str(tmp_path / "gang.err"))

            def running_gang():
                return [t for t in list_tasks(head) if t.resources.nodes == 2
                        and t.state == common_pb2.RUNNING]
            ts = wait_for(running_gang, 60, "the gang to run")
            g = ts[0].grant
            assert len(g.mpi.hosts) == 2 and g.mpi.ranks == 2 and not g.hold_only
            assert len(g.cpus) == 2
            # Both nodes are wholly held: plain tasks wait for the gang.
            plain = where("after")
            r = plain.result(timeout=60)
            gang.result(timeout=120)
            assert r["start"] > 0
            lines = [l for l in out.read_text().splitlines() if l.startswith("rank")]
            assert len(lines) == 2, out.read_text()
            # Once it ended, both nodes take work again: two 2-core tasks at once.
            both = [where(i, hold=1.0, parsl_resource_specification={"cores": 2}) for i in range(2)]
            rs = [f.result(timeout=60) for f in both]
            assert {x["node"] for x in rs} == {"n1", "n2"}
    finally:
        stop_head(head)
        for a in agents:
            a.wait(timeout=30)


# ------------------------------------------------------------------ mixed load
def test_mixed_load_never_grants_twice_and_does_not_starve_the_large_request(
        worker_pythonpath, tmp_path, monkeypatch, hello_mpi):
    monkeypatch.setenv("DRAGON_MPI_BIND", "none")
    head = start_head(tmp_path, "--agents", "none")
    agents = [start_agent(head, "n1", 2, "--gpus", "g0"), start_agent(head, "n2", 2, "--gpus", "g0")]
    try:
        wait_for_workers(head, 4)
        from conftest import parsl_on
        with parsl_on(head, tmp_path):
            futures = []
            # A flood of plain one-core tasks ...
            futures += [where(("plain", i)) for i in range(2000)]
            # ... placed one-core tasks with memory, GPU tasks, multi-core tasks, MPI tasks.
            smalls_before = [where(("small", i), hold=0.05, parsl_resource_specification={"cores": 1, "memory": 64})
                             for i in range(60)]
            big = where("big", hold=0.2, parsl_resource_specification={"cores": 2, "memory": 128})
            smalls_after = [where(("small2", i), hold=0.05, parsl_resource_specification={"cores": 1})
                            for i in range(60)]
            gpus = [where(("gpu", i), hold=0.1, parsl_resource_specification={"gpus": 1}) for i in range(10)]
            mpis = [mpi_run(hello_mpi, parsl_resource_specification={"num_nodes": 1, "ranks_per_node": 2,
                                                                     "launcher_options": "-bind-to none"},
                            stdout=str(tmp_path / f"mpi{i}.out"), stderr=str(tmp_path / f"mpi{i}.err"))
                    for i in range(4)]
            futures += smalls_before + [big] + smalls_after + gpus + mpis
            # While it runs: the head's table never shows a CPU or GPU granted twice on a node,
            # nor more memory than the node has.
            snapshots = 0
            nodes = {n["node_id"]: n for n in head.ctl_json("nodes")["nodes"]}
            while not all(f.done() for f in futures):
                cpus, gpu_ids, mem = {}, {}, {}
                for t in list_tasks(head):
                    if t.state not in (common_pb2.SCHEDULED, common_pb2.RUNNING) or not t.HasField("grant"):
                        continue
                    for c in t.grant.cpus:
                        key = (t.node, c)
                        assert key not in cpus, f"CPU {c} of {t.node} granted to {cpus.get(key)} and {t.task_id}"
                        cpus[key] = t.task_id
                    for gid in t.grant.gpus:
                        key = (t.node, gid)
                        assert key not in gpu_ids, f"GPU {gid} of {t.node} granted twice"
                        gpu_ids[key] = t.task_id
                    mem[t.node] = mem.get(t.node, 0) + t.grant.memory_bytes
                for node, used in mem.items():
                    assert used <= int(nodes[node]["memory_bytes"])
                snapshots += 1
                time.sleep(0.05)
            results = [f.result(timeout=120) for f in futures[:-4]]
            for f in mpis:
                f.result(timeout=120)
        assert snapshots >= 3
        # From inside the tasks: placed tasks on one node never overlapped on a CPU or GPU.
        placed = [r for r in results if isinstance(r, dict) and r["tag"][0] != "plain" and r["tag"] != "plain"]
        by_node: dict = {}
        for r in placed:
            by_node.setdefault(r["node"], []).append(r)
        for node, rs in by_node.items():
            rs.sort(key=lambda r: r["start"])
            for i, a in enumerate(rs):
                for b in rs[i + 1:]:
                    if b["start"] >= a["end"]:
                        continue
                    assert not set(a["cpus"]) & set(b["cpus"]), (a, b)
                    if a["cuda"] and b["cuda"]:
                        assert a["cuda"] != b["cuda"], (a, b)
        # The large request was not starved: it started before most of the small placed tasks
        # submitted after it (without a reservation they keep both nodes busy until their end).
        rbig = big.result()
        later_starts = sorted(f.result()["start"] for f in smalls_after)
        assert rbig["start"] < later_starts[len(later_starts) // 2], (rbig["start"], later_starts[:5])
        for i in range(4):
            lines = [l for l in (tmp_path / f"mpi{i}.out").read_text().splitlines() if l.startswith("rank")]
            assert len(lines) == 2
    finally:
        stop_head(head)
        for a in agents:
            a.wait(timeout=30)
    wait_for(lambda: not processes_of_run(head.run_dir), 20, "the run's processes to exit")
