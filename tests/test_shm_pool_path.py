"""Task data through the agent's shared-memory pool (shm_path="pool", the default), end to
end: real dragond, dragon-agent (which owns the pool) and Python workers, a Parsl
DataFlowKernel with DragonExecutor. Large numpy arguments and results travel as pool
blocks (asserted through the executor's counters and the pool's own statistics), every
block is freed once its task is over and its result value gone, including after a
killed worker and a killed client, and a full pool gives back-pressure, then a clear
error naming --shm-pool-mb. The file path (shm_path="files"): test_shm_data_path.py."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import parsl
import pytest
from parsl import python_app

from conftest import head_and_dfk, load_parsl, start_head, stop_head, wait_for
from shm_apps import die_holding, echo, fail_with_large_argument, image, mutate_in_place_and_sum, scaled
from dragon_parsl import WorkerLost
from dragon_parsl._core import ShmPool, ShmPoolFull

pytestmark = pytest.mark.timeout(300)


@python_app
def fail_keeping_a_cycle(img):
    class Node:
        pass
    a, b = Node(), Node()
    a.other, b.other, a.img = b, a, img  # a reference cycle holding the argument
    raise ValueError("failed with a cycle")


@python_app
def keep_argument(img):
    import dragon_parsl.shm_pool_path as p
    p.kept_for_test = img  # the app keeps its argument after the task
    return float(img[0, 0])


@python_app
def drop_kept():
    import dragon_parsl.shm_pool_path as p
    img = p.kept_for_test
    del p.kept_for_test
    return float(img.sum())


@python_app
def slow_scaled(img, factor):
    import time
    time.sleep(0.1)
    return img * factor


@python_app
def hold(data, seconds):
    import time
    time.sleep(seconds)
    return len(data)


def blocks_in_use(path: str) -> int:
    return ShmPool.attach(path).stats()["blocks_in_use"]


def agent_nodes(run_dir) -> list:
    from conftest import binary
    import json
    out = subprocess.run([binary("dragonctl"), "--run-dir", str(run_dir), "--json", "nodes"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [n for n in json.loads(out)["nodes"] if n["state"] in ("joining", "ready")]


def agent_pools(head) -> list:
    return [n["shm_pool_path"] for n in head.ctl_json("nodes")["nodes"] if n.get("shm_pool_path")]


def started_head(tmp_path, *head_args):
    """start_head, then until its agent has registered: a client's first task that raced the
    registration would find no agent (nor pool) yet and go inline, by design."""
    head = start_head(tmp_path, *head_args)
    try:
        wait_for(lambda: agent_nodes(head.run_dir), 30, "the agent to register")
    except BaseException:
        stop_head(head)
        raise
    return head


@contextlib.contextmanager
def pool_head_and_dfk(tmp_path, head_args=("--workers", "2"), **executor_kwargs):
    """head_and_dfk, yielding once the agent has registered (see started_head)."""
    with head_and_dfk(tmp_path, head_args, **executor_kwargs) as (dfk, executor, head):
        wait_for(lambda: agent_nodes(head.run_dir), 30, "the agent to register")
        yield dfk, executor, head


@pytest.fixture
def pool_dfk(worker_pythonpath, tmp_path):
    """A head with 2 workers on this host (one agent, with its pool) and a DFK on it."""
    with pool_head_and_dfk(tmp_path) as (dfk, executor, head):
        yield dfk, executor, head


def test_large_argument_and_result_round_trip_through_the_pool(pool_dfk):
    dfk, executor, head = pool_dfk
    imgs = [image(i) for i in range(6)]
    results = [f.result(timeout=60) for f in [scaled(img, 3.0) for img in imgs]]
    for img, r in zip(imgs, results):
        assert r.shape == img.shape and r.dtype == img.dtype and np.array_equal(r, img * 3.0)
        assert r.flags.writeable  # the result owns its copy
    results[0][0, 0] = 7.0
    c = executor.shm_counters()
    assert c["args_shm_tasks"] == 6 and c["results_shm"] == 6
    assert c["args_shm_bytes"] >= 6 * img.nbytes and c["results_shm_bytes"] >= 6 * img.nbytes
    pool = c["dir"]
    assert pool in agent_pools(head), (pool, agent_pools(head))
    # Argument blocks are freed by the workers that read them, result blocks by the client
    # as it reads them (the values own copies: no pool block waits for a GC).
    assert blocks_in_use(pool) == 0
    assert ShmPool.attach(pool).owners() == []


def test_app_may_mutate_its_argument_in_place(pool_dfk):
    dfk, executor, _ = pool_dfk
    img = image(2)
    before = img.copy()
    total = mutate_in_place_and_sum(img).result(timeout=60)
    expected = before + 1.0
    expected[0, 0] = -1.0
    assert total == pytest.approx(float(expected.sum()))
    assert np.array_equal(img, before)  # the client's array is untouched
    assert executor.shm_counters()["args_shm_tasks"] == 1
    assert blocks_in_use(executor.shm_counters()["dir"]) == 0


def test_mixed_small_and_large_tasks(pool_dfk):
    dfk, executor, _ = pool_dfk
    inputs = [image(i) if i % 2 else i for i in range(20)]
    outputs = [f.result(timeout=60) for f in [echo(x) for x in inputs]]
    for x, y in zip(inputs, outputs):
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        else:
            assert x == y
    c = executor.shm_counters()
    assert c["args_shm_tasks"] == 10 and c["results_shm"] == 10
    assert c["args_inline_tasks"] == 10 and c["results_inline"] == 10
    assert blocks_in_use(c["dir"]) == 0


def test_app_exception_with_a_large_argument_frees_its_block(pool_dfk):
    dfk, executor, _ = pool_dfk
    with pytest.raises(ValueError, match=r"bad image of shape \(512, 512\)"):
        fail_with_large_argument(image(3)).result(timeout=60)
    assert executor.shm_counters()["args_shm_tasks"] == 1
    assert blocks_in_use(executor.shm_counters()["dir"]) == 0
    assert np.array_equal(scaled(image(4), 1.0).result(timeout=60), image(4))


def test_argument_block_held_by_a_cycle_is_freed_when_the_task_ends(pool_dfk):
    dfk, executor, _ = pool_dfk
    with pytest.raises(ValueError, match="failed with a cycle"):
        fail_keeping_a_cycle(image(9)).result(timeout=60)
    assert blocks_in_use(executor.shm_counters()["dir"]) == 0


def test_argument_kept_by_the_app_stays_intact_until_it_lets_go(worker_pythonpath, tmp_path):
    with pool_head_and_dfk(tmp_path, ["--workers", "1"]) as (dfk, executor, head):
        img = image(10)
        assert keep_argument(img).result(timeout=60) == img[0, 0]
        pool = executor.shm_counters()["dir"]
        assert blocks_in_use(pool) == 1  # taken over by the worker, not freed by the client
        owners = ShmPool.attach(pool).owners()
        assert os.getpid() not in owners and len(owners) == 1
        for i in range(5):  # other tasks reuse the pool meanwhile
            assert np.array_equal(scaled(image(i), 2.0).result(timeout=60), image(i) * 2.0)
        assert drop_kept().result(timeout=60) == pytest.approx(float(img.sum()))  # still intact
        wait_for(lambda: blocks_in_use(pool) == 0, 10, "the kept block to be freed once dropped")


def test_block_of_a_task_whose_worker_was_killed_is_freed_with_its_failure(pool_dfk):
    dfk, executor, _ = pool_dfk
    with pytest.raises(WorkerLost):
        die_holding(image(5)).result(timeout=60)
    pool = executor.shm_counters()["dir"]
    # The block stays the client's while the task may still run again; freed with its failure.
    assert blocks_in_use(pool) == 0
    assert np.array_equal(scaled(image(6), 2.0).result(timeout=60), image(6) * 2.0)


KILLED_CLIENT = """
import sys, time
import numpy as np
from dragon_parsl import DragonExecutor

def slow_sum(a):
    import time
    time.sleep(60)
    return a.sum()

def big(n):
    import numpy as np
    return np.ones(n)

ex = DragonExecutor(address=sys.argv[1], token=sys.argv[2])
ex.start()
done = ex.submit(big, {}, 1 << 18)
done.result(timeout=60)  # a result through the pool: its block is freed as it is read
running = ex.submit(slow_sum, {}, np.ones(1 << 18))
queued = ex.submit(slow_sum, {}, np.ones(1 << 18))
print(ex.shm_counters()["dir"], flush=True)
time.sleep(120)
"""


def test_blocks_of_a_killed_client_are_reclaimed(worker_pythonpath, tmp_path):
    head = started_head(tmp_path, "--workers", "1")
    try:
        client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, head.address, head.token],
                                  stdout=subprocess.PIPE, text=True)
        try:
            pool = client.stdout.readline().strip()
            assert pool in agent_pools(head), (pool, agent_pools(head))
            # The running and the queued task's arguments, both the client's.
            wait_for(lambda: blocks_in_use(pool) == 2, 30, "two argument blocks")
        finally:
            client.kill()
            client.wait()
        wait_for(lambda: blocks_in_use(pool) == 0, 30, "the killed client's blocks to be freed")
    finally:
        stop_head(head)


def test_full_pool_waits_for_room_then_fails_naming_the_option(worker_pythonpath, tmp_path):
    # 8 MiB: two blocks of 4 MiB (a 3 MiB argument takes a whole power-of-two block).
    # Three workers: a third task waits for room in the pool, not for a worker.
    with pool_head_and_dfk(tmp_path, ["--workers", "3", "--shm-pool-mb", "8"],
                      shm_pool_wait_s=30) as (dfk, executor, head):
        data = [np.full(3 << 17, i, dtype=np.float64) for i in range(3)]  # 3 MiB each
        t0 = time.monotonic()
        first = [hold(d, 3) for d in data[:2]]
        third = hold(data[2], 0)  # its submit waits until one of the first two is over
        assert third.result(timeout=60) == 3 << 17
        waited = time.monotonic() - t0
        assert [f.result(timeout=60) for f in first] == [3 << 17] * 2
        assert waited > 2.5, f"the third task did not wait for room in the pool ({waited:.2f} s)"
        with pytest.raises(ShmPoolFull, match="--shm-pool-mb"):
            hold(np.ones(2 << 20), 0).result(timeout=60)  # 16 MiB: larger than the whole pool
        executor.shm.wait_s = 0.5
        busy = [hold(d, 5) for d in data[:2]]
        wait_for(lambda: blocks_in_use(executor.shm_counters()["dir"]) == 2, 10, "both blocks taken")
        with pytest.raises(ShmPoolFull, match="within"):
            hold(data[2], 0).result(timeout=60)
        assert [f.result(timeout=60) for f in busy] == [3 << 17] * 2
        wait_for(lambda: blocks_in_use(executor.shm_counters()["dir"]) == 0, 10, "every block freed")


def test_two_thousand_2mib_tasks_byte_for_byte(pool_dfk):
    dfk, executor, _ = pool_dfk
    base = image(7)
    futures = [scaled(base, float(i)) for i in range(2000)]
    for i, f in enumerate(futures):
        r = f.result(timeout=120)
        assert np.array_equal(r, base * float(i)), f"task {i}: wrong result"
    c = executor.shm_counters()
    # All 2,000 submitted at once: 4 MiB blocks fill the pool, and submit waits for room
    # (a result finding the pool full goes inline).
    assert c["args_shm_tasks"] == 2000 and c["results_shm"] + c["results_inline"] == 2000
    assert c["results_shm"] >= 1000, c
    assert blocks_in_use(c["dir"]) == 0


def test_no_pool_sends_large_data_inline(worker_pythonpath, tmp_path):
    with pool_head_and_dfk(tmp_path, ["--workers", "1", "--shm-pool-mb", "0"]) as (dfk, executor, head):
        img = image(8)
        assert np.array_equal(scaled(img, 2.0).result(timeout=60), img * 2.0)
        c = executor.shm_counters()
        assert c["args_shm_tasks"] == 0 and c["results_shm"] == 0 and c["args_inline_tasks"] == 1
        assert agent_pools(head) == []


def test_dragond_stop_leaves_no_pool(worker_pythonpath, tmp_path):
    head = started_head(tmp_path, "--workers", "1")
    pools = agent_pools(head)
    assert len(pools) == 1 and os.path.exists(pools[0])
    stop_head(head)
    assert not os.path.exists(pools[0])


def test_agent_killed_mid_run_tasks_with_pool_data_complete_once(worker_pythonpath, tmp_path):
    # The embedded default: its launcher starts a new agent, the head runs the lost tasks again.
    dfk, executor = load_parsl(tmp_path, workers_per_node=2)
    try:
        run_dir = executor.local_head.run_dir
        # Tasks submitted before the embedded agent registers go inline, by design (see
        # started_head): warm up until one's arguments went through the pool, or the kill
        # below would not test pool data at all.
        wait_for(lambda: agent_nodes(run_dir), 60, "the agent to register")
        wait_for(lambda: scaled(image(0), 1.0).result(timeout=60) is not None and
                 executor.shm_counters()["dir"] is not None, 30, "a task's arguments in the agent's pool")
        imgs = [image(i % 4) for i in range(40)]
        futures = [slow_scaled(img, float(i)) for i, img in enumerate(imgs)]
        wait_for(lambda: 4 <= sum(f.done() for f in futures) < 30, 60, "the run to be under way", interval=0.01)
        pool = executor.shm_counters()["dir"]
        agent = agent_nodes(run_dir)[0]
        os.kill(int(agent["agent_pid"]), signal.SIGKILL)
        for i, (img, f) in enumerate(zip(imgs, futures)):
            assert np.array_equal(f.result(timeout=120), img * float(i)), f"task {i}"
        after = agent_nodes(run_dir)[0]
        assert int(after["incarnation"]) >= 2 and after["shm_pool_path"]
        new_pool = after["shm_pool_path"]
        wait_for(lambda: blocks_in_use(new_pool) == 0, 10, "every block of the run freed")
        assert new_pool == pool or not os.path.exists(pool), "the dead agent's pool was left behind"
    finally:
        dfk.cleanup()
        parsl.clear()
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("dragon-pool-") and
                (p in os.path.basename(pool) or p in os.path.basename(new_pool))]


def test_dragond_stop_removes_the_pool_of_a_killed_agent_that_was_not_restarted(worker_pythonpath, tmp_path):
    head = started_head(tmp_path, "--workers", "1", "--agent-restarts", "0")
    try:
        (pool,) = agent_pools(head)
        agent_pid = int(head.ctl_json("nodes")["nodes"][0]["agent_pid"])
        os.kill(agent_pid, signal.SIGKILL)
        wait_for(lambda: head.ctl_json("nodes")["nodes"][0]["state"] == "lost", 30, "the agent to be lost")
        assert os.path.exists(pool)  # nobody to remove it yet
    finally:
        stop_head(head)
    assert not os.path.exists(pool)
    assert f"removed the shared-memory pool {pool}" in (head.run_dir / "dragond.log").read_text()


def _same(x):
    return x


def test_large_results_are_read_in_place_within_a_quarter_of_the_pool(worker_pythonpath, tmp_path):
    # DragonPoolExecutor: no DataFlowKernel, whose task records keep results alive a while.
    from dragon_parsl import DragonPoolExecutor
    # A 256 MiB pool: a budget of 64 MiB of results held in place; 40 MiB results.
    head = started_head(tmp_path, "--workers", "1", "--shm-pool-mb", "256")
    try:
        with DragonPoolExecutor(address=head.address, token=head.token) as ex:
            data = [np.full(40 << 20, i, dtype=np.uint8) for i in range(2)]
            first = ex.submit(_same, data[0]).result(timeout=60)
            pool = ex.executor.shm_counters()["dir"]
            assert blocks_in_use(pool) == 1  # read in place: its block lives with the value
            second = ex.submit(_same, data[1]).result(timeout=60)  # over budget while `first` lives
            assert blocks_in_use(pool) == 1  # so it was copied out
            assert np.array_equal(first, data[0]) and np.array_equal(second, data[1])
            first[0] = 9  # a result read in place is the caller's to modify
            assert ex.executor.shm_counters()["results_shm"] == 2
            del first
            assert blocks_in_use(pool) == 0
    finally:
        stop_head(head)
