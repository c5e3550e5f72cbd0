"""dragon_parsl._core.ShmPool: the node's shared-memory pool (common/shm_pool.h, issue 14) from
Python, across real processes: blocks written in one process and read in place in another,
back-pressure with the interpreter lock released, a killed owner's blocks reclaimed, stale and
malformed references refused, a crashed creator's file removed, an owning block freed with its last
view, blocks handed between processes (transfer, free_if_owner, owners), a pool with reserve=False,
nothing left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from dragon_parsl import _core

MiB = 1 << 20


@pytest.fixture
def pool_dir(tmp_path):
    d = tmp_path / "shm"
    d.mkdir()
    yield d
    assert list(d.iterdir()) == [], "a pool file was left behind"


def child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_block_written_in_one_process_is_read_in_place_in_another(pool_dir):
    pool = _core.ShmPool.create(str(pool_dir), "p1", 16 * MiB)
    try:
        data = np.random.default_rng(7).integers(0, 255, size=2 * MiB, dtype=np.uint8)
        ref = pool.allocate(data.nbytes)
        view = np.frombuffer(pool.block(ref), dtype=np.uint8)  # no copy: the pool's own memory
        view[:] = data
        p = child("""
            import sys, hashlib
            from dragon_parsl import _core
            pool = _core.ShmPool.attach(sys.argv[1])
            block = memoryview(pool.block(bytes.fromhex(sys.argv[2])))
            print(hashlib.sha256(block).hexdigest(), len(block), flush=True)
            block[:4] = b"back"                   # writes land in the creator's mapping too
            """, pool.path, ref.hex())
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        import hashlib
        assert out.split() == [hashlib.sha256(data.tobytes()).hexdigest(), str(data.nbytes)]
        assert bytes(view[:4]) == b"back"
        del view
        pool.free(ref)
        assert pool.stats()["free_bytes"] == pool.capacity_bytes
    finally:
        pool.close()


def test_full_pool_waits_without_the_interpreter_lock_then_gets_the_freed_block(pool_dir):
    pool = _core.ShmPool.create(str(pool_dir), "p2", 4 * MiB)
    try:
        whole = pool.allocate(4 * MiB)
        with pytest.raises(_core.ShmPoolFull, match="--shm-pool-mb"):
            pool.allocate(MiB, wait_s=0.05)
        # Another process waits for space; this one frees once it is seen waiting.
        p = child("""
            import sys, time
            from dragon_parsl import _core
            pool = _core.ShmPool.attach(sys.argv[1])
            t0 = time.monotonic()
            ref = pool.allocate(1 << 20, wait_s=30)
            print("got", round(time.monotonic() - t0, 3), flush=True)
            pool.free(ref)
            """, pool.path)
        deadline = time.monotonic() + 30
        while pool.stats()["waiters"] == 0:
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() else "no waiter"
            time.sleep(0.01)
        pool.free(whole)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and out.startswith("got"), err
        # A waiting allocate lets other threads of its process run.
        ticks = []
        stop = threading.Event()
        t = threading.Thread(target=lambda: [ticks.append(1) or time.sleep(0.001) for _ in iter(stop.is_set, True)])
        held = pool.allocate(4 * MiB)
        t.start()
        with pytest.raises(_core.ShmPoolFull):
            pool.allocate(MiB, wait_s=0.3)
        stop.set()
        t.join()
        assert len(ticks) > 20, f"the other thread ran {len(ticks)} times during a 0.3 s wait"
        pool.free(held)
    finally:
        pool.close()


def test_blocks_of_a_killed_process_are_reclaimed(pool_dir):
    pool = _core.ShmPool.create(str(pool_dir), "p3", 8 * MiB)
    try:
        p = child("""
            import sys, time
            from dragon_parsl import _core
            pool = _core.ShmPool.attach(sys.argv[1])
            refs = [pool.allocate(1 << 20) for _ in range(3)]
            print("allocated", flush=True)
            time.sleep(600)
            """, pool.path)
        assert p.stdout.readline().strip() == "allocated"
        assert pool.stats()["blocks_in_use"] == 3
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        assert pool.reclaim_owner(p.pid) == 3 * MiB
        st = pool.stats()
        assert st["blocks_in_use"] == 0 and st["free_bytes"] == pool.capacity_bytes
    finally:
        pool.close()


def test_bad_references_and_paths_are_clear_errors(pool_dir, tmp_path):
    pool = _core.ShmPool.create(str(pool_dir), "p4", MiB)
    try:
        ref = pool.allocate(100)
        pool.free(ref)
        with pytest.raises(_core.ShmBlockError, match="not allocated: it was freed"):
            pool.block(ref)
        with pytest.raises(_core.ShmBlockError, match="24"):
            pool.block(b"short")
        again = pool.allocate(100)  # the same place, a new generation: the old ref stays refused
        with pytest.raises(_core.ShmBlockError):
            pool.free(ref)
        pool.free(again)
        not_a_pool = tmp_path / "not-a-pool"
        not_a_pool.write_bytes(b"x" * 4096)
        with pytest.raises(_core.ShmPoolError, match=str(not_a_pool)):
            _core.ShmPool.attach(str(not_a_pool))
        with pytest.raises(_core.ShmPoolError, match="missing-pool"):
            _core.ShmPool.attach(str(pool_dir / "missing-pool"))
        with pytest.raises(_core.ShmPoolError, match="exists|File exists"):
            _core.ShmPool.create(str(pool_dir), "p4", MiB)
    finally:
        pool.close()
    with pytest.raises(_core.ShmPoolError, match="closed"):
        pool.allocate(1)


def test_the_pool_of_a_crashed_creator_is_removed_by_remove_stale(pool_dir):
    p = child("""
        import os, sys
        from dragon_parsl import _core
        pool = _core.ShmPool.create(sys.argv[1], "stale-pool", 1 << 20)
        print(pool.path, flush=True)
        os._exit(0)                               # no close: as a killed agent
        """, str(pool_dir))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert os.path.exists(out.strip())
    live = _core.ShmPool.create(str(pool_dir), "stale-live", MiB)  # same prefix, creator alive
    try:
        assert _core.ShmPool.remove_stale(str(pool_dir), "stale-") == 1
        assert sorted(os.listdir(pool_dir)) == ["stale-live"]
    finally:
        live.close()


def test_an_owning_block_is_freed_when_its_last_view_goes_and_not_before(pool_dir):
    pool = _core.ShmPool.create(str(pool_dir), "p6", 4 * MiB)
    try:
        ref = pool.allocate(MiB)
        array = np.frombuffer(pool.block(ref, free_on_release=True), dtype=np.uint8)
        view = memoryview(pool.block(ref))  # not owning: its release frees nothing
        array[:3] = (1, 2, 3)
        del view
        assert pool.stats()["blocks_in_use"] == 1  # the array still holds its ShmBlock
        part = array[1:3]                          # a slice holds the array, which holds the block
        del array
        assert pool.stats()["blocks_in_use"] == 1 and bytes(part) == b"\x02\x03"
        del part
        assert pool.stats()["blocks_in_use"] == 0
        with pytest.raises(_core.ShmBlockError):
            pool.block(ref)

        ref = pool.allocate(MiB)
        m = memoryview(pool.block(ref, free_on_release=True))
        pool.close()                               # the block's own hold keeps the pool mapped
        m[:2] = b"ok"
        del m                                      # freed into the closed pool: no error
        # A block handed to another pid is not freed by this process's release.
        pool = _core.ShmPool.create(str(pool_dir), "p6b", 4 * MiB)
        ref = pool.allocate(MiB)
        pool.transfer(ref, os.getpid(), 1)
        m = memoryview(pool.block(ref, free_on_release=True))
        del m
        assert pool.stats()["blocks_in_use"] == 1
        assert pool.free_if_owner(ref, 1)
    finally:
        pool.close()


def test_transfer_free_if_owner_and_owners_across_processes(pool_dir):
    pool = _core.ShmPool.create(str(pool_dir), "p7", 8 * MiB)
    try:
        me = os.getpid()
        p = child("""
            import os, sys
            from dragon_parsl import _core
            pool = _core.ShmPool.attach(sys.argv[1])
            kept = pool.allocate(1 << 20)                    # this process's own
            result = pool.allocate(1 << 16)
            memoryview(pool.block(result))[:6] = b"result"
            pool.transfer(result, os.getpid(), int(sys.argv[2]))
            assert not pool.free_if_owner(result, os.getpid())  # not ours any more
            mine = pool.allocate(1 << 12, owner=int(sys.argv[2]))  # allocated for the parent
            print(result.hex(), mine.hex(), flush=True)
            sys.stdin.readline()                             # held until the parent says
            """, pool.path, str(me))
        line = p.stdout.readline().split()     # empty only if the child failed
        assert len(line) == 2, p.stderr.read()
        result, mine = (bytes.fromhex(x) for x in line)
        assert pool.owners() == sorted([me, p.pid])
        assert bytes(memoryview(pool.block(result))[:6]) == b"result"
        with pytest.raises(_core.ShmPoolError, match=f"owned by pid {me}, not by pid {p.pid}"):
            pool.transfer(result, p.pid, me)
        assert not pool.free_if_owner(result, p.pid)
        assert pool.free_if_owner(result, me)
        assert not pool.free_if_owner(result, me)         # stale now: no error
        with pytest.raises(_core.ShmBlockError):
            pool.free_if_owner((1 << 40).to_bytes(8, "little") + result[8:], me)  # out of range
        p.stdin.close()
        p.wait(timeout=30)
        assert p.returncode == 0, p.stderr.read()
        assert pool.reclaim_owner(p.pid) == MiB
        assert pool.owners() == [me]
        pool.free(mine)
        assert pool.owners() == []
        assert pool.stats()["free_bytes"] == pool.capacity_bytes
    finally:
        pool.close()


def test_a_pool_made_with_reserve_false_reserves_blocks_as_they_are_allocated(pool_dir):
    with pytest.raises(_core.ShmPoolError, match="reserve"):
        _core.ShmPool.create(str(pool_dir), "p8", 64 * MiB, prefault=True, reserve=False)
    pool = _core.ShmPool.create(str(pool_dir), "p8", 64 * MiB, reserve=False)
    try:
        before = os.stat(pool.path).st_blocks * 512
        assert before < MiB
        ref = pool.allocate(8 * MiB)
        assert os.stat(pool.path).st_blocks * 512 >= before + 8 * MiB
        data = np.arange(8 * MiB, dtype=np.uint8)
        np.frombuffer(pool.block(ref), dtype=np.uint8)[:] = data
        p = child("""
            import sys
            import numpy as np
            from dragon_parsl import _core
            pool = _core.ShmPool.attach(sys.argv[1])
            block = np.frombuffer(pool.block(bytes.fromhex(sys.argv[2])), dtype=np.uint8)
            assert (block == np.arange(block.size, dtype=np.uint8)).all()
            ref = pool.allocate(16 << 20)                    # reserved by this process
            np.frombuffer(pool.block(ref), dtype=np.uint8)[:] = 7
            pool.free(ref)
            """, pool.path, ref.hex())
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert os.stat(pool.path).st_blocks * 512 >= before + 24 * MiB
        pool.free(ref)
        assert pool.stats()["free_bytes"] == pool.capacity_bytes
    finally:
        pool.close()


@pytest.mark.parametrize("size", [0, 100, 300 << 10, 33 << 20])  # bytes, malloc'd, malloc'd without the GIL, mapped
def test_copy_buffer_is_an_independent_writable_copy(size):
    import numpy as np
    from dragon_parsl._core import copy_buffer

    source = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    copy = copy_buffer(source)
    view = np.frombuffer(copy, dtype=np.uint8)
    assert len(copy) == size and np.array_equal(view, source)
    if size:
        view[0] ^= 0xFF  # writable, and not the source's memory
        assert view[0] != source[0]
    with pytest.raises(ValueError, match="contiguous"):
        copy_buffer(np.zeros((4, 4), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        copy_buffer(np.zeros((4, 4), dtype=np.uint8)[::2, :])
