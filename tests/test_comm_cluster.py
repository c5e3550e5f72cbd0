"""Pipe, Queue and Barrier across nodes (issue 14, "Channels and communication objects"): objects
created by a workflow on h1 (in h1's agent's pool) used by apps on h2, through h2's agent, which
forwards each operation over UCX to h1's agent, which does it on its pool (AgentData.Channel,
agent/agent_channels.h, agent/agent_barriers.h, dragon_parsl.comm_remote). On the netns test bed with ``UCX_TLS=tcp,self``
(tests/test_shm_cross_node.py's fixtures: real dragond, agents over ssh, Python workers, Parsl).
h1 is drained: every app runs on h2.

- a Pipe between the workflow and an app on h2: 200 round trips, poll, then EOF after close;
- a 1 GiB message from an app on h2 to the workflow on h1, byte for byte; the app's close() on h2
  then ends the workflow's recv with EOFError;
- a 1 GiB message from the workflow on h1 to an app on h2 (pushed into h2's pool), byte for byte;
- 100 messages of 1 MiB (and one each just below and at 64 KiB) from the workflow on h1 to an app
  on h2 and 100 back, byte for byte: large messages move pool to pool by the data plane (a block
  pulled on send, pushed on receive), and no block is left in either pool;
- a receiver on h2 whose pool is full: its receive of a 1 MiB message fails ShmPoolFull, the
  message stays first in the Pipe, and once the pool has room the next receive gets it whole;
- one Queue, 32 producers and 32 consumers: 16 + 16 threads of the workflow on h1 (the pool's
  node) and 8 + 8 threads in each of two apps on h2; every message received exactly once;
- a slow consumer: a Queue(maxsize=4) filled by an app on h2 while the workflow takes one item
  every 50 ms: nothing lost, the producer waited, ``put(timeout=...)`` on the full queue raises
  ``queue.Full`` on h2;
- a killed peer: the app on h2 holding the other end of a Pipe SIGKILLed, then h2's agent
  SIGKILLed: the workflow's blocking ``recv`` fails ``ConnectionError`` within seconds, no hang;
- a Barrier(4) of two threads of the workflow on h1 (its home) and two apps on h2, 30 rounds in
  a row, each app's arrival indices distinct in every round; a timeout on h2 breaks it for the
  workflow on h1, and one on h1 for the app on h2; a party on h2 SIGKILLed while it waits, then
  h2's agent SIGKILLed under a waiting party: the workflow's waits on h1 fail
  ``threading.BrokenBarrierError`` within seconds (the party's lease at home lapses), no hang.

Afterwards nothing of the service on any host and no pool in /dev/shm.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import wait_for, worker_pythonpath  # noqa: F401
from testbed_fixtures import netns_hosts, no_service_left  # noqa: F401
from test_shm_cross_node import (POOL_MB, UCX_ENV, check_no_pool_file_left, cross_head, pools_of,  # noqa: F401
                                 two_host_head, wait_pools_empty)
from test_ssh_cluster import agents_in, ssh_heads, stop_and_check_nothing_left  # noqa: F401

TESTS_DIR = Path(__file__).resolve().parent
# A party on another node that stops calling breaks a Barrier after this (AgentBarriers::kLease).
AGENT_BARRIER_LEASE_S = 3.0

# The workflow, run inside h1's namespace; its apps are pickled by value. Each --step writes its
# findings into the JSON summary (the test judges them).
WORKFLOW = textwrap.dedent('''
    import argparse, faulthandler, hashlib, json, os, queue, signal, sys, threading, time
    import parsl
    from parsl import python_app
    from parsl.config import Config
    from dragon_parsl import DragonExecutor, comm

    GIB = 1 << 30


    def echo(conn):
        """Doubles what it receives until EOF; (host, count)."""
        import socket
        n = 0
        while True:
            try:
                x = conn.recv()
            except EOFError:
                return socket.gethostname(), n
            conn.send(x * 2)
            n += 1


    def big(conn, size):
        """Sends one message of `size` bytes (a pattern), then its sha256; (host, seconds)."""
        import hashlib, socket, time
        data = bytes(range(256)) * (size // 256)
        digest = hashlib.sha256(data).hexdigest()
        t0 = time.monotonic()
        conn.send_bytes(data)
        del data
        conn.send(digest)
        took = time.monotonic() - t0
        conn.close()  # from h2: the workflow's next recv raises EOFError
        return socket.gethostname(), took


    def big_in(conn):
        """Receives one message; (host, its size, its sha256, seconds)."""
        import hashlib, socket, time
        t0 = time.monotonic()
        data = conn.recv_bytes()
        took = time.monotonic() - t0
        return socket.gethostname(), len(data), hashlib.sha256(data).hexdigest(), took


    def rotated(i, size):
        """Message i of `size` bytes: a byte pattern rotated by i (a misplaced byte shows)."""
        base = bytes(range(256)) * (size // 256 + 1)
        return base[i % 256:i % 256 + size]


    def mib_both_ways(conn, sizes):
        """Receives len(sizes) messages (rotated(i, size)), then sends as many back (rotated by
        i + 1); (host, indices received wrong, seconds receiving, seconds sending)."""
        import socket, time

        def rotated(i, size):  # the app is pickled by value: its own copy
            base = bytes(range(256)) * (size // 256 + 1)
            return base[i % 256:i % 256 + size]

        t0 = time.monotonic()
        wrong = [i for i, size in enumerate(sizes) if conn.recv_bytes() != rotated(i, size)]
        t1 = time.monotonic()
        for i, size in enumerate(sizes):
            conn.send_bytes(rotated(i + 1, size))
        return socket.gethostname(), wrong, t1 - t0, time.monotonic() - t1


    def receive_into_full_pool(conn, size):
        """Fills this node's pool, receives (the block cannot be placed here), frees the pool and
        receives again; (host, the first receive's error, it was ShmPoolFull, the second is whole)."""
        import os, socket
        from dragon_parsl import _core, shm_pool_path
        pool = shm_pool_path.attach(os.environ["DRAGON_SHM_POOL"])
        held, chunk = [], pool.capacity_bytes
        while chunk >= 4096:
            try:
                held.append(pool.allocate(chunk, 0.0))
            except _core.ShmPoolFull:
                chunk //= 2
        error, full = "", False
        try:
            conn.recv_bytes()
        except Exception as e:  # noqa: BLE001  (the test judges it)
            error, full = f"{type(e).__name__}: {e}", isinstance(e, _core.ShmPoolFull)
        finally:
            for ref in held:
                pool.free(ref)
        data = conn.recv_bytes()
        return socket.gethostname(), error, full, data == bytes(range(256)) * (size // 256)


    def queue_roles(q, host_tag, producers, consumers, per_producer):
        """`producers` threads put (tag, producer, seq), then None; `consumers` threads get until
        their first None.
        (host, {consumer: [items]}, errors)."""
        import socket, threading
        got, errors = {}, []

        def produce(p):
            try:
                for i in range(per_producer):
                    q.put((host_tag, p, i), timeout=60)
                q.put(None, timeout=60)
            except Exception as e:
                errors.append(f"producer {p}: {type(e).__name__}: {e}")

        def consume(c):
            mine = got.setdefault(c, [])
            try:
                while True:
                    item = q.get(timeout=60)
                    if item is None:
                        return
                    mine.append(item)
            except Exception as e:
                errors.append(f"consumer {c}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        threads += [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return socket.gethostname(), got, errors


    def fill_slowly_consumed(q, n):
        """Puts n items into a Queue(4) consumed slowly elsewhere; then, the consumer stopped, fills
        it and checks put(timeout) raises queue.Full. (host, seconds for the n puts, full_raised)."""
        import queue, socket, time
        t0 = time.monotonic()
        for i in range(n):
            q.put(i)
        took = time.monotonic() - t0
        while True:
            try:
                q.put("extra", timeout=0.3)
            except queue.Full:
                return socket.gethostname(), took, True
            if time.monotonic() - t0 > 60:
                return socket.gethostname(), took, False


    def hold(conn):
        """Tells its pid and blocks for ever (until killed)."""
        import os, time
        conn.send(os.getpid())
        while True:
            time.sleep(1)


    def barrier_rounds(b, rounds):
        """`rounds` waits at Barrier b; (host, [arrival index per round], [seconds of each round
        after the first])."""
        import socket, time
        indices, ends = [], []
        for r in range(rounds):
            indices.append(b.wait(timeout=60))
            ends.append(time.monotonic())
        return socket.gethostname(), indices, [t - s for s, t in zip(ends, ends[1:])]


    def barrier_timeout_here(b, timeout):
        """Waits at b with `timeout`: (host, raised BrokenBarrierError, seconds, message)."""
        import socket, threading, time
        t0 = time.monotonic()
        try:
            b.wait(timeout=timeout)
            return socket.gethostname(), False, time.monotonic() - t0, ""
        except threading.BrokenBarrierError as e:
            return socket.gethostname(), True, time.monotonic() - t0, str(e)


    def barrier_past_walltime(b, walltime=2):
        """Waits at b without a timeout until its Parsl walltime (an AppTimeout raised in it)
        interrupts it."""
        b.wait()


    def hold_at_barrier(conn, b):
        """Tells its pid, then waits at b for ever (until killed, or broken)."""
        import os
        conn.send(os.getpid())
        b.wait()


    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--step", action="append", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    executor = DragonExecutor(label="dragon", address=a.address, token=os.environ["DRAGON_TOKEN"],
                              shm_pool_wait_s=60)
    dfk = parsl.load(Config(executors=[executor], strategy="none",
                            run_dir=os.path.join(os.path.dirname(a.out), "runinfo")))
    summary = {}

    def app(fn):
        return python_app(fn, executors=["dragon"])

    def save():
        with open(a.out + ".part", "w") as f:
            json.dump(summary, f)
        os.replace(a.out + ".part", a.out)

    faulthandler.dump_traceback_later(30, repeat=True)  # a step that hangs shows where, in the log
    for step in a.step:
        t0 = time.monotonic()
        print(f"step {step}", flush=True)
        if step == "pipe":
            mine, theirs = comm.Pipe(pool=a.pool)
            f = app(echo)(theirs)
            t_rt = time.monotonic()
            wrong = [i for i in range(200) if (mine.send(i), mine.recv())[1] != 2 * i]
            round_trip_ms = (time.monotonic() - t_rt) / 200 * 1000
            polled_empty = mine.poll(0.2)  # nothing sent back: no data
            mine.send("x")
            polled = mine.poll(30)
            echoed = mine.recv()
            mine.close()
            host, n = f.result(timeout=60)
            summary["pipe"] = {"wrong": wrong, "host": host, "count": n, "polled_empty": polled_empty,
                               "polled": polled, "echoed": echoed, "round_trip_ms": round_trip_ms}
        elif step == "big":
            mine, theirs = comm.Pipe(pool=a.pool)
            f = app(big)(theirs, GIB)
            while not mine.poll(1):
                if f.done():
                    f.result()  # the app failed: its error, not a hang
            data = mine.recv_bytes()
            digest = mine.recv()
            host, send_s = f.result(timeout=120)
            try:
                mine.recv()
                eof_from_h2 = False
            except EOFError:
                eof_from_h2 = True
            summary["big"] = {"size": len(data), "same": hashlib.sha256(data).hexdigest() == digest,
                              "host": host, "send_s": send_s, "total_s": time.monotonic() - t0,
                              "eof_from_h2": eof_from_h2}
            del data
            mine.close()
        elif step == "big_back":
            mine, theirs = comm.Pipe(pool=a.pool)
            data = bytes(range(256)) * (GIB // 256)
            digest = hashlib.sha256(data).hexdigest()
            f = app(big_in)(theirs)
            t_send = time.monotonic()
            mine.send_bytes(data)
            del data
            host, size, their_digest, recv_s = f.result(timeout=120)
            summary[step] = {"host": host, "size": size, "same": their_digest == digest,
                             "recv_s": recv_s, "send_to_result_s": time.monotonic() - t_send}
            mine.close()
        elif step == "mib":
            mine, theirs = comm.Pipe(pool=a.pool)
            sizes = [(64 << 10) - 1, 64 << 10] + [1 << 20] * 100
            f = app(mib_both_ways)(theirs, sizes)
            t_send = time.monotonic()
            for i, size in enumerate(sizes):
                mine.send_bytes(rotated(i, size))
            send_s = time.monotonic() - t_send
            while not mine.poll(1):
                if f.done():
                    f.result()  # the app failed: its error, not a hang
            back = [mine.recv_bytes() for _ in sizes]
            host, wrong_there, recv_there_s, send_there_s = f.result(timeout=120)
            summary["mib"] = {"host": host, "wrong_on_h2": wrong_there,
                              "wrong_on_h1": [i for i, size in enumerate(sizes) if back[i] != rotated(i + 1, size)],
                              "count": len(sizes), "h1_send_s": send_s, "h2_recv_s": recv_there_s,
                              "h2_send_s": send_there_s, "total_s": time.monotonic() - t0}
            del back
            mine.close()
        elif step == "full_receiver":
            mine, theirs = comm.Pipe(pool=a.pool)
            f = app(receive_into_full_pool)(theirs, 1 << 20)
            mine.send_bytes(bytes(range(256)) * 4096)
            host, error, was_pool_full, whole = f.result(timeout=120)
            summary[step] = {"host": host, "error": error, "pool_full": was_pool_full, "whole": whole}
            mine.close()
        elif step == "queue":
            # Every producer puts None after its items, and a consumer stops at its first None: 32
            # Nones for 32 consumers, and the last None put is the last item of the queue, so every
            # item is taken before the last consumer stops.
            q = comm.Queue(pool=a.pool)
            remote = [app(queue_roles)(q, f"h2-{k}", 8, 8, 100) for k in range(2)]
            local = queue_roles(q, "h1", 16, 16, 100)
            results = [f.result(timeout=90) for f in remote]
            summary["queue"] = {"remote": results, "local": local, "seconds": time.monotonic() - t0}
            q.close()
        elif step == "slow":
            q = comm.Queue(4, pool=a.pool)
            f = app(fill_slowly_consumed)(q, 40)
            taken, max_seen = [], 0
            for _ in range(40):
                max_seen = max(max_seen, q.qsize())
                taken.append(q.get(timeout=60))
                time.sleep(0.05)
            host, put_s, full_raised = f.result(timeout=90)
            summary["slow"] = {"taken": taken, "max_qsize": max_seen, "host": host, "put_s": put_s,
                               "full_raised": full_raised}
            q.close()
        elif step in ("kill_app", "kill_agent"):
            mine, theirs = comm.Pipe(pool=a.pool)
            f = app(hold)(theirs)
            pid = mine.recv()
            with open(a.out + f".{step}.pid", "w") as pf:
                pf.write(str(pid))  # the test kills the app (its worker) or h2's agent
            t_wait = time.monotonic()
            outcome, is_connection_error = "no error", False
            try:
                mine.recv()
            except Exception as e:  # noqa: BLE001  (the test judges it)
                outcome, is_connection_error = f"{type(e).__name__}: {e}", isinstance(e, ConnectionError)
            summary[step] = {"outcome": outcome, "is_connection_error": is_connection_error,
                             "waited_s": time.monotonic() - t_wait, "app_pid": pid}
            mine.close()
        elif step == "barrier":
            rounds = 30
            b = comm.Barrier(4, pool=a.pool)
            remote = [app(barrier_rounds)(b, rounds) for _ in range(2)]
            other = {}
            helper = threading.Thread(target=lambda: other.update(r=barrier_rounds(b, rounds)))
            helper.start()
            local = barrier_rounds(b, rounds)
            helper.join()
            results = [f.result(timeout=90) for f in remote]
            took = sorted(local[2])
            summary["barrier"] = {"remote": results, "local": [local, other["r"]], "broken": b.broken,
                                  "round_ms": {"median": took[len(took) // 2] * 1000, "max": took[-1] * 1000,
                                               "mean": sum(took) / len(took) * 1000}}
        elif step == "barrier_timeout":
            b = comm.Barrier(3, pool=a.pool)
            f = app(barrier_timeout_here)(b, 0.5)  # h2 gives up: broken for h1 too
            h1 = barrier_timeout_here(b, 60)
            h2 = f.result(timeout=60)
            b.reset()
            f = app(barrier_timeout_here)(b, 60)  # waits on h2 until h1 gives up
            while b.n_waiting == 0 and not f.done():
                time.sleep(0.05)
            h1_gives_up = barrier_timeout_here(b, 0.5)
            h2_broken = f.result(timeout=60)
            summary[step] = {"h2_timeout": h2, "h1_broken": h1, "h1_timeout": h1_gives_up,
                             "h2_broken": h2_broken}
        elif step == "barrier_walltime":
            b = comm.Barrier(3, pool=a.pool)
            f = app(barrier_past_walltime)(b)
            while b.n_waiting == 0 and not f.done():  # the app arrived (on h2, through the agents)
                time.sleep(0.05)
            t_wait = time.monotonic()
            outcome = barrier_timeout_here(b, 60)  # the third party never comes
            try:
                f.result(timeout=60)
                app_error = ""
            except Exception as e:  # noqa: BLE001  (the test judges it)
                app_error = type(e).__name__
            summary[step] = {"outcome": outcome, "waited_s": time.monotonic() - t_wait, "app_error": app_error}
        elif step in ("barrier_kill_app", "barrier_kill_agent"):
            b = comm.Barrier(3, pool=a.pool)
            mine, theirs = comm.Pipe(pool=a.pool)
            f = app(hold_at_barrier)(theirs, b)
            pid = mine.recv()
            while b.n_waiting == 0 and not f.done():  # the app arrived (on h2, through the agents)
                time.sleep(0.05)
            if f.done():
                f.result()  # the app failed: its error, not a hang
            with open(a.out + f".{step}.pid", "w") as pf:
                pf.write(str(pid))  # the test kills the app (its worker) or h2's agent
            t_wait = time.monotonic()
            outcome = barrier_timeout_here(b, 60)  # the third party never comes
            summary[step] = {"outcome": outcome, "waited_s": time.monotonic() - t_wait, "app_pid": pid}
            mine.close()
        save()
    dfk.cleanup()
    save()
''')


class CommWorkflow:
    """WORKFLOW running in h1's namespace with its steps."""

    def __init__(self, tb, head, tmp_path: Path, steps: list[str], pool: str):
        d = tmp_path / f"comm-{time.monotonic_ns()}"
        d.mkdir()
        script = d / "workflow.py"
        script.write_text(WORKFLOW)
        self.out, self.log = d / "summary.json", d / "workflow.log"
        env = dict(os.environ, DRAGON_TOKEN=head.head.token, DRAGON_SHM_POOL=pool,
                   PYTHONPATH=str(TESTS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("DRAGON_HEAD", None)
        argv = [sys.executable, str(script), "--address", head.address, "--pool", pool,
                "--out", str(self.out)]
        for s in steps:
            argv += ["--step", s]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(tb.exec_argv("h1", *argv), env=env, cwd=d, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)

    def pid_file(self, step: str) -> Path:
        return Path(f"{self.out}.{step}.pid")

    def summary(self, timeout: float) -> dict:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the workflow did not end within {timeout}s:\n{self.tail()}") from None
        assert rc == 0 and self.out.exists(), f"the workflow exited {rc}:\n{self.tail()}"
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.mark.timeout(240)
def test_pipe_big_message_queue_and_slow_consumer_between_h1_and_h2(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = CommWorkflow(tb, head, tmp_path, ["pipe", "big", "big_back", "mib", "queue", "slow"], pools["h1"])
    try:
        s = wf.summary(timeout=200)
    finally:
        wf.kill()
    print(f"\npipe {s['pipe']}; 1 GiB h2 -> h1 {s['big']}; 1 GiB h1 -> h2 {s['big_back']}; 1 MiB x 100 both ways {s['mib']}; queue of 32 + 32 {s['queue']['seconds']:.1f}s; "
          f"slow consumer: the producer's 40 puts took {s['slow']['put_s']:.2f}s")

    p = s["pipe"]
    assert p["wrong"] == [] and p["host"] == "h2" and p["count"] == 201, p
    assert p["polled_empty"] is False and p["polled"] is True and p["echoed"] == "xx", p

    b = s["big"]
    assert b["size"] == 1 << 30 and b["same"] and b["host"] == "h2", b
    assert b["eof_from_h2"], b  # the app's close() on h2 ended the workflow's recv

    bb = s["big_back"]
    assert bb["host"] == "h2" and bb["size"] == 1 << 30 and bb["same"], bb

    m = s["mib"]
    assert m["host"] == "h2" and m["wrong_on_h2"] == [] and m["wrong_on_h1"] == [] and m["count"] == 102, m

    q = s["queue"]
    consumed = [tuple(item) for _, got, _ in q["remote"] for items in got.values() for item in items]
    consumed += [tuple(item) for items in q["local"][1].values() for item in items]
    errors = [e for _, _, errs in q["remote"] for e in errs] + q["local"][2]
    assert errors == [], errors[:5]
    assert {host for host, _, _ in q["remote"]} == {"h2"} and q["local"][0] == "h1"
    expected = {(tag, p_, i) for tag, n in (("h1", 16), ("h2-0", 8), ("h2-1", 8)) for p_ in range(n)
                for i in range(100)}
    assert len(consumed) == len(expected) == 3200 and set(consumed) == expected  # each exactly once
    consumers_used = sum(1 for _, got, _ in q["remote"] for items in got.values() if items)
    assert consumers_used > 0  # h2's consumers took some

    sl = s["slow"]
    assert sl["taken"] == list(range(40)) and sl["host"] == "h2" and sl["full_raised"], sl
    assert sl["max_qsize"] <= 4 and sl["put_s"] >= 36 * 0.05 * 0.8, sl  # the producer waited

    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.mark.timeout(180)
def test_a_large_message_that_cannot_be_placed_on_the_receivers_node_stays_in_the_pipe(
        netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = CommWorkflow(tb, head, tmp_path, ["full_receiver"], pools["h1"])
    try:
        s = wf.summary(timeout=150)
    finally:
        wf.kill()
    r = s["full_receiver"]
    print(f"\nreceiver's pool full on h2: {r}")
    assert r["host"] == "h2" and r["pool_full"] and r["whole"], r
    assert "node h2" in r["error"] and "kept in the channel" in r["error"], r
    wait_pools_empty(list(pools.values()))
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.mark.timeout(180)
def test_a_killed_peer_on_h2_fails_the_blocking_recv_on_h1_within_seconds(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = CommWorkflow(tb, head, tmp_path, ["kill_app", "kill_agent"], pools["h1"])
    try:
        wait_for(lambda: wf.pid_file("kill_app").exists() or wf.proc.poll() is not None, 60, "the app on h2 holding")
        app_pid = int(wf.pid_file("kill_app").read_text())
        time.sleep(1)  # the workflow's recv is waiting
        os.kill(app_pid, 9)
        wait_for(lambda: wf.pid_file("kill_agent").exists() or wf.proc.poll() is not None, 60,
                 "the second app on h2 holding")
        time.sleep(1)
        (agent,) = agents_in(tb, "h2")
        os.kill(agent, 9)
        s = wf.summary(timeout=90)
    finally:
        wf.kill()
    print(f"\nkilled app: {s['kill_app']}; killed agent: {s['kill_agent']}")
    for step in ("kill_app", "kill_agent"):
        r = s[step]
        assert r["is_connection_error"], r
        assert "node h2" in r["outcome"] or "h2" in r["outcome"], r
        assert r["waited_s"] < 1 + 10, r  # 1 s before the kill, then within seconds
    wait_pools_empty([pools["h1"]])
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)


@pytest.mark.timeout(200)
def test_a_barrier_with_parties_on_h1_and_h2(netns_hosts, cross_head, tmp_path):
    tb, head = netns_hosts, cross_head
    pools = pools_of(head)
    wf = CommWorkflow(tb, head, tmp_path,
                      ["barrier", "barrier_timeout", "barrier_walltime", "barrier_kill_app", "barrier_kill_agent"],
                      pools["h1"])
    try:
        wait_for(lambda: wf.pid_file("barrier_kill_app").exists() or wf.proc.poll() is not None, 120,
                 "the app on h2 waiting at the barrier")
        os.kill(int(wf.pid_file("barrier_kill_app").read_text()), 9)
        wait_for(lambda: wf.pid_file("barrier_kill_agent").exists() or wf.proc.poll() is not None, 60,
                 "the second app on h2 waiting at the barrier")
        (agent,) = agents_in(tb, "h2")
        os.kill(agent, 9)
        s = wf.summary(timeout=90)
    finally:
        wf.kill()
    b = s["barrier"]
    ms = b["round_ms"]
    print(f"\nBarrier(4) across h1/h2, ms a round: median {ms['median']:.2f}, mean {ms['mean']:.2f}, "
          f"max {ms['max']:.2f}; timeouts {s['barrier_timeout']}; walltime {s['barrier_walltime']}; "
          f"killed app {s['barrier_kill_app']}; killed agent {s['barrier_kill_agent']}")
    assert [host for host, _, _ in b["remote"]] == ["h2", "h2"] and not b["broken"], b
    for r in range(30):  # the two parties on h2: distinct arrival indices in every round
        i, j = (indices[r] for _, indices, _ in b["remote"])
        assert i != j and {i, j} <= {0, 1, 2, 3}, (r, b["remote"])

    t = s["barrier_timeout"]
    assert t["h2_timeout"][:2] == ["h2", True], t
    assert t["h1_broken"][1] and t["h1_broken"][2] < 30 and "timed out" in t["h1_broken"][3], t
    assert t["h1_timeout"][1] and 0.4 < t["h1_timeout"][2] < 5, t
    assert t["h2_broken"][:2] == ["h2", True] and t["h2_broken"][2] < 30, t

    # The app on h2 interrupted by its walltime tells the home node at once (not its lease's 3 s
    # later, which would say "lease ran out"), and its own future fails with AppTimeout.
    w = s["barrier_walltime"]
    host, raised, _, message = w["outcome"]
    assert raised and "was interrupted by AppTimeout" in message and "of node h2" in message, w
    assert w["app_error"] == "AppTimeout" and w["waited_s"] < 2 + 10, w
    for step in ("barrier_kill_app", "barrier_kill_agent"):
        host, raised, _, message = s[step]["outcome"]
        assert raised and "node h2" in message, s[step]
        assert s[step]["waited_s"] < 1 + AGENT_BARRIER_LEASE_S + 5, s[step]  # not the 60 s timeout
    wait_pools_empty([pools["h1"]])
    stop_and_check_nothing_left(head, tb)
    check_no_pool_file_left(pools)
