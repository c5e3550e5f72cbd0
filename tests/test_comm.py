"""dragon_parsl.comm end to end: Pipe, Queue and Barrier in the agent's shared-memory pool, used
by a Parsl workflow and its apps (real dragond, dragon-agent and workers), and by many forked
processes at once: exactly-once delivery, back-pressure, a 1 GiB message, a killed peer (an
error, not a hang), a barrier that times out (and says so to every later wait). The C++ objects
underneath: common/shm_channel_test.cc, common/shm_barrier_test.cc; their binding:
test_channel_binding.py."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from parsl import python_app

from conftest import head_and_dfk
from dragon_parsl import comm
from dragon_parsl.errors import SharedMemoryError

pytestmark = pytest.mark.timeout(240)


@python_app
def echo_server(conn, n):
    for _ in range(n):
        conn.send(conn.recv() * 2)
    conn.close()
    return "served"


@python_app
def checksum_of_bytes(conn):
    data = conn.recv_bytes()
    view = np.frombuffer(data, dtype=np.uint8)
    return len(data), int(view[::4096].sum())


@python_app
def produce(q, who, n):
    for k in range(n):
        q.put((who, k))
    return who


@python_app
def recv_once_then_die(conn):
    import os
    import signal
    conn.recv()
    os.kill(os.getpid(), signal.SIGKILL)


@python_app
def meet(barrier):
    import os
    return os.getpid(), barrier.wait(timeout=60)  # its arrival index


@pytest.fixture(scope="module")
def dfk(worker_pythonpath_module, tmp_path_factory):
    with head_and_dfk(tmp_path_factory.mktemp("comm")) as (dfk, executor, head):
        yield dfk


def test_pipe_round_trips_objects_and_ends_with_eof(dfk):
    here, there = comm.Pipe()
    served = echo_server(there, 4)
    for value in (1, "ab", [3], (4, 5)):
        here.send(value)
        assert here.recv() == value * 2
    assert served.result(timeout=60) == "served"
    assert here.poll(5)  # the app closed its end: recv() has something to say
    with pytest.raises(EOFError):
        here.recv()
    one, other = comm.Pipe()
    assert not one.poll(0.2)  # nothing sent yet


def test_a_1_gib_message_through_a_pipe(dfk):
    here, there = comm.Pipe(duplex=False)
    result = checksum_of_bytes(here)
    data = np.random.default_rng(1).integers(0, 256, 1 << 30, dtype=np.uint8)
    there.send_bytes(data)
    assert result.result(timeout=120) == (1 << 30, int(data[::4096].sum()))


def test_queue_fed_by_apps(dfk):
    q = comm.Queue()
    producers = [produce(q, who, 500) for who in range(4)]
    got = [q.get(timeout=60) for _ in range(2000)]
    assert sorted(got) == sorted((who, k) for who in range(4) for k in range(500))
    assert sorted(f.result(timeout=60) for f in producers) == [0, 1, 2, 3]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    q.close()


def test_slow_consumer_holds_producers_back_and_loses_nothing(dfk):
    q = comm.Queue(maxsize=4)
    producer = produce(q, 7, 60)
    seen = []
    most = 0
    while len(seen) < 60:
        most = max(most, q.qsize())
        seen.append(q.get(timeout=60))
        time.sleep(0.01)
    assert seen == [(7, k) for k in range(60)]
    assert most <= 4
    assert producer.result(timeout=60) == 7
    with pytest.raises(queue.Full):
        for _ in range(5):
            q.put_nowait("x")
    q.close()


def _mp_producer(q, who, n):
    for k in range(n):
        q.put((who, k))


def _mp_consumer(q, n, out):
    out.put(sorted(q.get(timeout=120) for _ in range(n)))


def test_64_producers_and_64_consumers_on_one_queue(dfk):
    q = comm.Queue(maxsize=64)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    per, n = 100, 64
    procs = [ctx.Process(target=_mp_producer, args=(q, who, per)) for who in range(n)]
    procs += [ctx.Process(target=_mp_consumer, args=(q, per, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [item for _ in range(n) for item in results.get(timeout=180)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(got) == sorted((who, k) for who in range(n) for k in range(per))  # each exactly once
    q.close()


def test_peer_killed_is_an_error_not_a_hang(dfk):
    here, there = comm.Pipe()
    doomed = recv_once_then_die(there)
    here.send("last words")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="exited"):
        here.recv()
    assert time.monotonic() - t0 < 30
    with pytest.raises(Exception):
        doomed.result(timeout=60)


def test_barrier_of_the_workflow_and_two_apps(dfk):
    barrier = comm.Barrier(3)
    apps = [meet(barrier) for _ in range(2)]
    mine = barrier.wait(timeout=60)
    pids, indices = zip(*[f.result(timeout=60) for f in apps])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    # As threading.Barrier.wait: each party's arrival index, one of each.
    assert sorted([mine, *indices]) == [0, 1, 2], (mine, indices)


def test_barrier_timeout_breaks_it(dfk):
    barrier = comm.Barrier(2)
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 5
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError, match="timed out after 300ms"):
        barrier.wait(timeout=5)  # broken until reset, saying why
    barrier.reset()
    assert barrier.n_waiting == 0 and barrier.parties == 2 and not barrier.broken


@python_app
def wait_past_walltime(barrier, walltime=1):
    barrier.wait()  # no timeout: only the walltime ends it


def test_an_app_whose_walltime_passes_at_a_barrier_breaks_it_for_the_others(dfk):
    from parsl.app.errors import AppTimeout
    barrier = comm.Barrier(3)  # the app, this workflow, and a party that never comes
    app = wait_past_walltime(barrier)
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError, match=r"party \d of the round was interrupted by AppTimeout "
                                                           r"\(process \d+\)"):
        barrier.wait(timeout=60)
    assert time.monotonic() - t0 < 30  # the app's walltime (1 s) plus its start, not this wait's 60 s
    with pytest.raises(AppTimeout):
        app.result(timeout=60)


def stacks_of(pid: int) -> str:
    """Every thread's stack of a live process (py-spy, Python and native frames), for the message
    of a test that found it hanging."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "(py-spy is not installed: no stacks)"
    done = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                          timeout=60)
    signals = []
    try:
        for task in sorted(os.listdir(f"/proc/{pid}/task")):
            with open(f"/proc/{pid}/task/{task}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            signals.append(f"thread {task} {fields['Name'].strip()}: " + " ".join(
                f"{k}={fields[k].strip()}" for k in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
    except OSError as e:  # it ended (or a thread did) while we looked: say so, keep what we have
        signals.append(f"(process {pid} or one of its threads is gone: {e})")
    return done.stdout + done.stderr + "\n".join(signals)


def test_ctrl_c_interrupts_a_barrier_wait_and_breaks_it_for_the_others(dfk, tmp_path):
    barrier = comm.Barrier(2)
    (tmp_path / "barrier.pickle").write_bytes(pickle.dumps(barrier))
    party = subprocess.Popen(
        # Ctrl-C's handler set as in a main program: a command started in the background by a
        # shell without job control (nohup ... &, some CI runners) inherits SIGINT ignored, and
        # Python then leaves it ignored (the wait would never see the signal).
        [sys.executable, "-c", "import pickle, signal, sys; "
                               "signal.signal(signal.SIGINT, signal.default_int_handler); "
                               "b = pickle.loads(open(sys.argv[1], 'rb').read()); "
                               "print('waiting', flush=True); b.wait()", str(tmp_path / "barrier.pickle")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert party.stdout.readline().strip() == "waiting"
        deadline = time.monotonic() + 30
        while barrier.n_waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        party.send_signal(signal.SIGINT)
        try:
            _, err = party.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the party did not end within 30 s of its Ctrl-C; its stacks:\n{stacks_of(party.pid)}")
        assert "KeyboardInterrupt" in err and party.returncode != 0, err
        assert time.monotonic() - t0 < 5  # within a slice or so, not at the end of a wait without timeout
    finally:
        if party.poll() is None:
            party.kill()
            party.wait()
    with pytest.raises(threading.BrokenBarrierError,
                       match=rf"party 0 of the round was interrupted by KeyboardInterrupt \(process {party.pid}\)"):
        barrier.wait(timeout=30)


def test_an_object_from_another_host_is_a_clear_error(dfk):
    # Objects do work on other hosts through the agents (tests/test_comm_cluster.py), but nothing
    # whose pool's agent has no data plane (home node unknown).
    q = comm.Queue()
    fn, args = q.__reduce__()
    args = (args[0], "elsewhere/other-boot") + args[2:-1] + ("",)
    with pytest.raises(SharedMemoryError, match="elsewhere/other-boot.*no data plane"):
        fn(*args)
    q.close()
    b = comm.Barrier(2)
    fn, args = b.__reduce__()
    args = (args[0], "elsewhere/other-boot") + args[2:-1] + ("",)
    with pytest.raises(SharedMemoryError, match="Barrier lives in .*elsewhere/other-boot.*no data plane"):
        fn(*args)
