"""dragon_parsl._core.ShmChannel and ShmBarrier: the node's communication objects (common/shm_channel.h,
common/shm_barrier.h, issue 14) from Python, across real (forked) processes: round trips, a 256 MiB
message, 16 producers x 16 consumers, a dead peer noticed within 2 s, timeouts, close and end of
stream, a barrier of 4 processes, a timeout that breaks it; nothing left in /dev/shm."""
from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

from dragon_parsl import _core

MiB = 1 << 20
fork = multiprocessing.get_context("fork")


@pytest.fixture
def pool():
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="dragon-channel-test-")
    p = _core.ShmPool.create(d, "pool", 1024 * MiB, reserve=False)
    try:
        yield p
        assert p.stats()["blocks_in_use"] == 0, "a block was left allocated"
    finally:
        p.close()
        gc.collect()  # channels a test's traceback still refers to hold the pool's mapping
        left = os.listdir(d)
        shutil.rmtree(d)
        assert left == [], "a pool file was left behind"


def run(target, *args) -> multiprocessing.Process:
    proc = fork.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def joined(proc: multiprocessing.Process, timeout: float = 60) -> int:
    proc.join(timeout)
    assert proc.exitcode is not None, "child still running"
    return proc.exitcode


def _echo(pool, there_ref, back_ref, count):
    there = _core.ShmChannel.open(pool, there_ref)
    back = _core.ShmChannel.open(pool, back_ref)
    for _ in range(count):
        back.send_bytes(there.recv_bytes(timeout_s=30), timeout_s=30)


@pytest.mark.timeout(60)
def test_round_trip_between_two_processes(pool):
    there = _core.ShmChannel.create(pool, 4)
    back = _core.ShmChannel.create(pool, 4)
    messages = [b"", b"x", os.urandom(1000), os.urandom(MiB)]
    echo = run(_echo, pool, there.ref, back.ref, len(messages))
    for m in messages:
        there.send_bytes(m, timeout_s=30, peer_pid=echo.pid)
        got = back.recv_bytes(timeout_s=30, peer_pid=echo.pid)
        assert bytes(got) == m
    assert isinstance(back.recv_bytes.__doc__, str)
    assert joined(echo) == 0
    assert there.stats() == {"count": 0, "capacity": 4, "closed": False, "repairs": 0}
    there.destroy()
    back.destroy()
    with pytest.raises(_core.ChannelPeerLost):
        _core.ShmChannel.open(pool, there.ref)


def _send_big(pool, ref, size):
    data = bytes(range(256)) * (size // 256)
    _core.ShmChannel.open(pool, ref).send_bytes(data, timeout_s=60)


@pytest.mark.timeout(120)
def test_a_256_mib_message(pool):
    size = 256 * MiB
    c = _core.ShmChannel.create(pool, 2)
    sender = run(_send_big, pool, c.ref, size)
    got = c.recv_bytes(timeout_s=60)
    assert isinstance(got, _core.OwnedBuffer) and len(got) == size
    expected = hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()
    assert hashlib.sha256(memoryview(got)).hexdigest() == expected
    assert joined(sender) == 0
    c.destroy()


def _produce(pool, ref, who, count):
    c = _core.ShmChannel.open(pool, ref)
    for i in range(count):
        c.send_bytes(f"{who}:{i}:".encode() + bytes([who]) * (i % 500), timeout_s=60)


def _consume(pool, ref, results_ref):
    c = _core.ShmChannel.open(pool, ref)
    seen = []
    while True:
        try:
            m = c.recv_bytes(timeout_s=60)
        except _core.ChannelClosed:
            break
        who, i, body = m.split(b":", 2)
        assert body == bytes([int(who)]) * (int(i) % 500)
        seen.append(f"{int(who)}:{int(i)}")
    _core.ShmChannel.open(pool, results_ref).send_bytes(",".join(seen).encode(), timeout_s=60)


@pytest.mark.timeout(180)
def test_16_producers_16_consumers_each_message_once(pool):
    c = _core.ShmChannel.create(pool, 64)
    results = _core.ShmChannel.create(pool, 16)
    each = 300
    consumers = [run(_consume, pool, c.ref, results.ref) for _ in range(16)]
    producers = [run(_produce, pool, c.ref, who, each) for who in range(16)]
    assert [joined(p) for p in producers] == [0] * 16
    c.close()
    seen = []
    for _ in consumers:
        part = results.recv_bytes(timeout_s=60)
        seen += part.decode().split(",") if part else []
    assert [joined(p) for p in consumers] == [0] * 16
    assert sorted(seen) == sorted(f"{w}:{i}" for w in range(16) for i in range(each))
    c.destroy()
    results.destroy()


@pytest.mark.timeout(60)
def test_a_dead_peer_is_noticed_within_2_s(pool):
    c = _core.ShmChannel.create(pool, 2)
    peer = run(time.sleep, 60)
    killed = []

    def kill():
        killed.append(time.monotonic())
        os.kill(peer.pid, signal.SIGKILL)

    threading.Timer(0.3, kill).start()
    with pytest.raises(_core.ChannelPeerLost, match=f"peer process {peer.pid} exited") as lost:
        c.recv_bytes(peer_pid=peer.pid)  # no timeout: the peer check ends it
    assert isinstance(lost.value, ConnectionError)
    assert time.monotonic() - killed[0] < 2
    joined(peer)
    c.destroy()


@pytest.mark.timeout(60)
def test_timeouts_close_and_end_of_stream(pool):
    c = _core.ShmChannel.create(pool, 1)
    start = time.monotonic()
    with pytest.raises(_core.ChannelTimeout) as empty:
        c.recv_bytes(timeout_s=0.1)
    assert isinstance(empty.value, TimeoutError)
    assert 0.1 <= time.monotonic() - start < 1
    c.send_bytes(b"one")
    with pytest.raises(TimeoutError, match="channel full"):
        c.send_bytes(b"two", timeout_s=0.05)
    with pytest.raises(_core.ShmPoolFull):
        c.send_bytes(bytearray(2048 * MiB), timeout_s=0)
    c.close()
    with pytest.raises(_core.ChannelClosed):
        c.send_bytes(b"three")
    assert c.recv_bytes() == b"one"  # drained after close
    with pytest.raises(EOFError):
        c.recv_bytes()
    # The channel keeps the pool's mapping after the ShmPool object is closed.
    other = _core.ShmChannel.create(pool, 1)
    pool2 = _core.ShmPool.attach(pool.path)
    kept = _core.ShmChannel.open(pool2, other.ref)
    pool2.close()
    kept.send_bytes(b"still")
    assert other.recv_bytes() == b"still"
    other.destroy()
    c.destroy()


def _barrier_party(pool, ref, rounds):
    b = _core.ShmBarrier.open(pool, ref)
    for _ in range(rounds):
        b.wait(timeout_s=30)


@pytest.mark.timeout(60)
def test_barrier_across_4_processes(pool):
    b = _core.ShmBarrier.create(pool, 4)
    assert b.parties == 4
    parties = [run(_barrier_party, pool, b.ref, 50) for _ in range(3)]
    for _ in range(50):
        b.wait(timeout_s=30)
    assert [joined(p) for p in parties] == [0, 0, 0]
    assert b.n_waiting == 0
    b.destroy()


def _broken_party(pool, ref):
    try:
        _core.ShmBarrier.open(pool, ref).wait(timeout_s=30)
    except _core.BarrierBroken:
        os._exit(7)


@pytest.mark.timeout(60)
def test_a_barrier_timeout_breaks_it_for_everyone(pool):
    b = _core.ShmBarrier.create(pool, 3)
    other = run(_broken_party, pool, b.ref)
    while b.n_waiting == 0:
        time.sleep(0.01)
    with pytest.raises(_core.ChannelTimeout):
        b.wait(timeout_s=0.2)
    assert joined(other) == 7
    assert b.broken
    with pytest.raises(_core.BarrierBroken):
        b.wait(timeout_s=5)
    b.reset()
    assert not b.broken
    b.abort()
    with pytest.raises(RuntimeError, match="broken"):
        b.wait()
    b.destroy()


def _interrupted_party(pool, ref):
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a main program
    try:
        _core.ShmBarrier.open(pool, ref).wait()  # no timeout: only Ctrl-C ends it
    except KeyboardInterrupt:
        os._exit(9)


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_barrier_wait_and_breaks_it_for_the_others(pool):
    b = _core.ShmBarrier.create(pool, 3)
    other = run(_interrupted_party, pool, b.ref)
    waiter = run(_broken_party, pool, b.ref)
    deadline = time.monotonic() + 30
    while b.n_waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.n_waiting == 2
    t0 = time.monotonic()
    os.kill(other.pid, signal.SIGINT)
    assert joined(other) == 9  # KeyboardInterrupt came out of wait()
    assert joined(waiter) == 7  # and the other party's wait broke (not its 30 s timeout)
    assert time.monotonic() - t0 < 10
    with pytest.raises(_core.BarrierBroken, match=r"party \d of the round was interrupted by a signal \(process "
                                                  rf"{other.pid}\)"):
        b.wait(timeout_s=5)
    b.destroy()


@pytest.mark.timeout(60)
def test_barrier_steps_arrive_await_give_up(pool):
    b = _core.ShmBarrier.create(pool, 2)
    into = []
    assert b.arrive(into, 0.01) is False
    (ticket,) = into
    assert ticket[2] == 0 and b.n_waiting == 1
    assert b.await_round(ticket, 0.01) is False
    with pytest.raises(ValueError, match="generation, breaks, index"):
        b.await_round((1, 2), 0.01)
    assert b.wait(timeout_s=5) == 1  # ends the round
    assert b.await_round(ticket, 0.0) is True
    b.interrupt(ticket, "too late")  # its round is over: nothing breaks
    b.give_up(ticket, 1.0)  # idem
    assert not b.broken
    assert b.arrive(into) is False  # no wait
    ticket = into[-1]
    with pytest.raises(_core.ChannelTimeout, match="not all arrived within 1.5s"):
        b.give_up(ticket, 1.5)
    assert b.broken
    b.reset()
    # A reason too long for the barrier is cut on a character boundary: still a clear error.
    b.arrive(into)
    b.interrupt(into[-1], "was interrupted by " + "\u20ac" * 100)
    with pytest.raises(_core.BarrierBroken, match="interrupted by \u20ac+$"):
        b.wait(timeout_s=5)
    b.destroy()
