"""DragonPoolExecutor (dragon_parsl.pool_executor): the service as a concurrent.futures.Executor,
without Parsl's DataFlowKernel, against real binaries. A conformance run of the standard
library's interface: submit/result, map (order, timeout, an abandoned iterator cancels the rest),
as_completed, wait (FIRST_COMPLETED, ALL_COMPLETED), the function's exception with its type and
remote traceback, lambdas and closures (dill), a 5 MiB argument through shared memory;
cancel of a queued task (also before the head accepted it) and of a running one (the head
reports it cancelled, its worker is killed and a worker is free again within seconds), a
cancel whose call to the head fails (logged; cancel() neither waits nor raises), the
context manager and shutdown(wait=True) waiting, submit after shutdown, shutdown(cancel_futures=
True) against a head started by hand (address and token); and nothing of the run left in
/dev/shm. Functions are of this module: the workers import it (tests/ on their PYTHONPATH)."""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import shutil
import subprocess
import time
import traceback

import pytest

from conftest import BIN_DIR, TESTS_DIR, binary, processes_of_run, wait_for, wait_for_workers
from dragon_parsl import DragonError, DragonPoolExecutor

pytestmark = pytest.mark.timeout(120)

FACTOR = 7  # read by a lambda on the worker (the module's globals, imported there)


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def echo(x):
    return x


def worker_pid():
    return os.getpid()


def _deep_helper_that_raises(key):
    raise KeyError(key)


def raises_key_error(key):
    _deep_helper_that_raises(key)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().split(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


def ctl_json(pool: DragonPoolExecutor, *args: str):
    """dragonctl against the pool's embedded head (found through its run directory)."""
    cp = subprocess.run([binary("dragonctl"), "--run-dir", pool.executor.run_info_dir, *args, "--json"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def state_of(pool: DragonPoolExecutor, task_id: int) -> str:
    return ctl_json(pool, "show", str(task_id))["state"]


def task_id(fut) -> int:
    return wait_for(lambda: fut.dragon_task_id, 30, "the head to accept the task")


def wait_running(pool, futures) -> None:
    ids = [task_id(f) for f in futures]
    wait_for(lambda: all(state_of(pool, t) == "RUNNING" for t in ids), 30, f"tasks {ids} to run")


@pytest.fixture(scope="module")
def shm_base():
    """A base directory of our own under /dev/shm: the pools' data directories go there."""
    base = f"/dev/shm/dragon-test-pool-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def worker_env():
    """tests/ on the workers' PYTHONPATH (they import this module), the checkout's binaries."""
    with pytest.MonkeyPatch.context() as mp:
        old = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + old if old else ""))
        mp.setenv("DRAGON_BIN_DIR", str(BIN_DIR))
        mp.delenv("DRAGON_HEAD", raising=False)
        yield


def cancel_all_and_shutdown(pool: DragonPoolExecutor) -> None:
    for fut in pool._outstanding():
        fut.cancel()
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def pool(worker_env, shm_base, tmp_path_factory):
    """One embedded head with 2 workers for the conformance tests."""
    ex = DragonPoolExecutor(max_workers=2, shm_dir=shm_base,
                            head_run_dir=str(tmp_path_factory.mktemp("pool") / "head"))
    try:
        yield ex
    finally:
        cancel_all_and_shutdown(ex)


def test_submit_and_result(pool):
    f = pool.submit(pow, 2, 10)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=60) == 1024
    assert f.done() and not f.cancelled() and f.dragon_task_id > 0
    assert pool.submit(sleep_return, 0, value="kw").result(timeout=60) == "kw"
    # Tasks run in worker processes, not here.
    assert pool.submit(worker_pid).result(timeout=60) != os.getpid()


def test_tasks_run_in_the_callers_directory_even_once_it_is_deleted(pool, tmp_path, monkeypatch):
    from dragon_parsl import _core
    # The client core's getcwd (asked once per task, keeping the interpreter lock) is os.getcwd().
    assert _core.getcwd_keeping_gil() == os.getcwd()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert pool.submit(os.getcwd).result(timeout=60) == str(here)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert _core.getcwd_keeping_gil() is None  # getcwd(3) fails: the directory is gone
    # The task still runs, in the session's directory, instead of failing at submit.
    assert pool.submit(os.getcwd).result(timeout=60) == pool._executor.session.cwd


def test_map_order_timeout_and_abandoned_iterator(pool):
    assert list(pool.map(sleep_return, [0.4, 0, 0.2, 0], range(4), timeout=60)) == [0, 1, 2, 3]
    assert list(pool.map(abs, [-1, -2], timeout=30, chunksize=5)) == [1, 2]

    # Both workers busy with 30 s tasks: next() times out, and the rest are cancelled.
    t0 = time.monotonic()
    it = pool.map(sleep_return, [30, 30], timeout=1)
    with pytest.raises(cf.TimeoutError):
        next(it)
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    assert pool.submit(pow, 3, 3).result(timeout=30) == 27
    assert time.monotonic() - t0 < 10, "the timed-out map's tasks were not cancelled on the head"

    # An iterator dropped after its first result cancels the tasks behind it.
    it = pool.map(sleep_return, [0, 30, 30], ["a", "b", "c"])
    assert next(it) == "a"
    it.close()
    t0 = time.monotonic()
    assert pool.submit(pow, 2, 5).result(timeout=30) == 32
    assert time.monotonic() - t0 < 10, "the abandoned map's tasks were not cancelled on the head"


def test_as_completed_and_wait(pool):
    fs = [pool.submit(sleep_return, d, i) for i, d in enumerate([1.5, 0])]
    assert [f.result() for f in cf.as_completed(fs, timeout=60)] == [1, 0]

    slow, fast = pool.submit(sleep_return, 2, "slow"), pool.submit(sleep_return, 0, "fast")
    done, not_done = cf.wait([slow, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    done, not_done = cf.wait([slow, fast], timeout=60, return_when=cf.ALL_COMPLETED)
    assert done == {slow, fast} and not not_done
    assert slow.result() == "slow"


def test_exception_keeps_type_and_remote_traceback(pool):
    f = pool.submit(raises_key_error, "absent")
    with pytest.raises(KeyError) as info:
        f.result(timeout=60)
    assert info.value.args == ("absent",)
    text = "".join(traceback.format_exception(info.value))
    assert "raises_key_error" in text and "_deep_helper_that_raises" in text, text
    assert isinstance(f.exception(), KeyError)
    with pytest.raises(ZeroDivisionError):
        pool.submit(divmod, 1, 0).result(timeout=60)


def test_lambda_and_closure(pool):
    offset = 100

    def add_offset(x):
        return x + offset

    assert pool.submit(add_offset, 1).result(timeout=60) == 101
    assert pool.submit(lambda x: x * FACTOR, 3).result(timeout=60) == 21
    assert list(pool.map(lambda a, b: a - b, [10, 20], [1, 2], timeout=60)) == [9, 18]


def test_large_argument_through_shared_memory(pool):
    data = os.urandom(5 * 1024 * 1024)
    before = pool.executor.shm_counters()
    assert pool.submit(echo, data).result(timeout=60) == data
    after = pool.executor.shm_counters()
    assert after["dir"] and os.path.exists(after["dir"])  # the agent's pool
    assert after["args_shm_tasks"] == before["args_shm_tasks"] + 1
    assert after["results_shm"] == before["results_shm"] + 1


def test_cancel_queued_tasks(pool):
    busy = [pool.submit(sleep_return, 60) for _ in range(2)]
    wait_running(pool, busy)
    queued = [pool.submit(sleep_return, 60, i) for i in range(2)]
    ids = [task_id(f) for f in queued]
    assert all(state_of(pool, t) in ("PENDING", "SCHEDULED") for t in ids)
    assert all(f.cancel() for f in queued)
    for f in queued:
        assert f.cancelled() and f.done()
        with pytest.raises(cf.CancelledError):
            f.result(timeout=1)
    # Done for wait() and as_completed() too.
    assert cf.wait(queued, timeout=5) == (set(queued), set())
    assert set(cf.as_completed(queued, timeout=5)) == set(queued)
    wait_for(lambda: all(state_of(pool, t) == "CANCELLED" for t in ids), 10, "the head to cancel the queued tasks")

    # Cancelled at once, most likely before the head's Accepted: cancelled when it arrives.
    early = pool.submit(sleep_return, 60, "early")
    assert early.cancel()
    early_id = task_id(early)
    wait_for(lambda: state_of(pool, early_id) == "CANCELLED", 10, "the head to cancel the early task")

    assert all(f.cancel() for f in busy)
    wait_for(lambda: all(state_of(pool, task_id(f)) == "CANCELLED" for f in busy), 10, "the sleepers cancelled")


def test_cancel_running_task_frees_its_worker(pool):
    sleepers = [pool.submit(sleep_return, 60) for _ in range(2)]
    wait_running(pool, sleepers)  # both workers busy
    victim = sleepers[0]
    victim_id = task_id(victim)
    victim_pid = ctl_json(pool, "show", str(victim_id))["worker_pid"]
    assert victim_pid > 0 and alive(victim_pid)
    t0 = time.monotonic()
    assert victim.cancel()
    assert time.monotonic() - t0 < 1, "cancel() must not wait for the head"
    with pytest.raises(cf.CancelledError):
        victim.result(timeout=1)
    wait_for(lambda: state_of(pool, victim_id) == "CANCELLED", 10, "the head to report the task cancelled")
    wait_for(lambda: not alive(victim_pid), 10, f"worker {victim_pid} killed")

    t0 = time.monotonic()
    quick = pool.submit(worker_pid)
    assert quick.result(timeout=30) != victim_pid
    assert time.monotonic() - t0 < 5, f"a worker was free only after {time.monotonic() - t0:.1f} s"
    assert state_of(pool, task_id(sleepers[1])) == "RUNNING"
    assert not quick.cancel() and not quick.cancelled()  # done: nothing to cancel
    assert sleepers[1].cancel()


def test_cancel_never_raises_or_hangs_on_a_head_error(pool, caplog, monkeypatch):
    def unreachable(fut, timeout=10.0):
        time.sleep(1)
        raise DragonError("head unreachable (test)")

    monkeypatch.setattr(pool.executor, "cancel_task", unreachable)
    f = pool.submit(sleep_return, 1, "x")
    task_id(f)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dragon_parsl.pool_executor"):
        assert f.cancel()
        assert time.monotonic() - t0 < 0.5
        assert f.cancelled()
        wait_for(lambda: "head unreachable (test)" in caplog.text, 10, "the failed cancel to be logged")
    assert "could not ask the head to cancel task" in caplog.text


def test_context_manager_shutdown_waits_and_refuses_new_work(worker_env, shm_base, tmp_path):
    run_dir = tmp_path / "head"
    with DragonPoolExecutor(max_workers=1, shm_dir=shm_base, head_run_dir=str(run_dir)) as ex:
        late = ex.submit(sleep_return, 1.5, "late")
        t0 = time.monotonic()
    assert late.done() and late.result() == "late"
    assert time.monotonic() - t0 > 1
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 2)
    ex.shutdown()  # again: nothing happens
    assert processes_of_run(run_dir) == [], "the embedded head outlived shutdown()"


def test_hand_started_head_and_shutdown_cancel_futures(worker_env, shm_base, head):
    wait_for_workers(head, 2)
    ex = DragonPoolExecutor(address=head.address, token=head.token, shm_dir=shm_base)
    try:
        running = [ex.submit(sleep_return, 2, i) for i in range(2)]
        ids = [task_id(f) for f in running]
        wait_for(lambda: all(head.ctl_json("show", str(t))["state"] == "RUNNING" for t in ids), 30,
                 "two running tasks")
        queued = [ex.submit(sleep_return, 30, i) for i in range(3)]
        queued_ids = [task_id(f) for f in queued]
        ex.shutdown(wait=True, cancel_futures=True)
        assert [f.result(timeout=0) for f in running] == [0, 1]
        assert all(f.cancelled() for f in queued)
        states = {t: head.ctl_json("show", str(t))["state"] for t in ids + queued_ids}
        assert states == {**{t: "DONE" for t in ids}, **{t: "CANCELLED" for t in queued_ids}}, states
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(pow, 2, 2)
    finally:
        cancel_all_and_shutdown(ex)


def test_nothing_left_in_dev_shm(pool, shm_base):
    assert pool.submit(echo, b"y" * (1 << 20)).result(timeout=60) == b"y" * (1 << 20)
    cancel_all_and_shutdown(pool)
    assert os.listdir(shm_base) == []
    mine = [n for n in os.listdir("/dev/shm") if f"-{os.getpid()}." in n]
    assert mine == [], mine
