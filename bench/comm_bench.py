#!/usr/bin/env python3
"""dragon_parsl.comm (Queue, Pipe, Barrier in a shared-memory pool) next to multiprocessing's, within
one node (issue 14).

    python bench/comm_bench.py --quick --json-out comm.json   # a smoke run: 1 round, small counts, ~30 s
    python bench/comm_bench.py --full  --json-out comm.json   # 3 rounds, larger counts, ~5 minutes
    (of which the Dictionary part, dragonhpc's DDict under its launcher most of it: --only to leave it out)

No agent is needed: the benchmark creates its own pool (dragon_parsl._core.ShmPool.create, 1 GiB,
space reserved as blocks are allocated) in a private directory /dev/shm/comm-bench-<pid>-*, passes
its path to the comm objects (pool=...), and removes it at the end (also on an error, Ctrl-C or
SIGTERM). This process owns the pool and every object, and stays alive; each measurement runs in
freshly forked child processes that inherit the objects, start together (a semaphore and an event,
outside the clock), and are killed if still alive at the end (timeout per measurement).

  Queue      1 producer + 1 consumer, then 4 producers + 4 consumers (aggregate), passing small ints
             (put(i) / get(), blocking): items per second (each item one put and one get), from the
             start signal to the last consumer's last get. dragon_parsl.comm.Queue() (its default
             capacity, 16,384 items), multiprocessing.Queue() and multiprocessing.SimpleQueue().
  Pipe RTT   a 64 B message sent with send_bytes and echoed back with send_bytes by another process:
             round trip latency p50/p99 in microseconds over N round trips (after a warm-up),
             dragon_parsl.comm.Pipe() vs multiprocessing.Pipe() (both duplex).
  Pipe BW    one-way send_bytes/recv_bytes of 1 MiB and 64 MiB messages: GB/s (1e9 B/s) measured by
             the sender from its first send to the receiver's acknowledgement of the last message
             (the receiver acknowledges each message with 1 byte; at most 8 messages of 1 MiB / 4 of
             64 MiB unacknowledged, so a fast sender does not fill the pool). The same buffer is sent
             every time (no fresh data per message); recv_bytes returns a new bytes object each time
             (in both). One message of the size before the clock (page faults). The "memcpy" column
             is numpy's copy (np.copyto) of an array of the size in this process, best of 3: the
             machine's ceiling for one copy (a channel copies twice, in and out of the pool).
  Barrier    4 processes, wait() in a loop (timeout 60 s): rounds per second, from the end of a
             warm-up to the last process's last round; dragon_parsl.comm.Barrier(4) vs
             multiprocessing.Barrier(4).

  Dictionary  dragon_parsl.comm.Dictionary's operations per second (set/get of ints one at a time, update
             of 10,000 items, get of 1 MiB) next to multiprocessing.Manager().dict() and dragonhpc's DDict:
             bench/comm_dict_bench.py (it starts a private dragond with one agent); JSON key "dictionary",
             its table appended to table_md.

Rounds: the implementations of a measurement alternate, in an order rotated from round to round.
"summary" holds medians over rounds; "ratios" dragon_parsl.comm / multiprocessing of the medians
(for throughputs > 1 is better for comm; for latencies < 1 is). PyPI dragonhpc's Queue is reported
"not run" with the reason (it needs its `dragon` launcher and runtime); its DDict runs under that
launcher in the Dictionary measurement (or the reason it did not run is recorded). No targets.

The last stdout line is one JSON object (also written to --json-out): settings, machine, runs,
summary, ratios, targets, table_md, for bench/run.py (hook `comm`).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing
import multiprocessing.queues
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

KIB, MIB = 1024, 1024 * 1024
POOL_BYTES = 1024 * MIB
QUICK = dict(rounds=1, queue_items=100_000, round_trips=5_000, bw_mib={str(MIB): 64, str(64 * MIB): 256},
             barrier_rounds=2_000, timeout_s=30)
FULL = dict(rounds=3, queue_items=1_000_000, round_trips=50_000, bw_mib={str(MIB): 1024, str(64 * MIB): 2048},
            barrier_rounds=20_000, timeout_s=120)
BW_SIZES = (MIB, 64 * MIB)
RTT_BYTES = 64
WARM = 100  # round trips / barrier rounds before the clock
PARTIES = 4

fork = multiprocessing.get_context("fork")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- the pool
class PrivatePool:
    """A pool of this process in a private directory of /dev/shm, removed on exit."""

    def __init__(self, size: int) -> None:
        from dragon_parsl import _core
        self.dir = tempfile.mkdtemp(dir="/dev/shm", prefix=f"comm-bench-{os.getpid()}-")
        try:
            self.pool = _core.ShmPool.create(self.dir, "pool", size, reserve=False)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.path = os.path.join(self.dir, "pool")

    def close(self) -> None:
        try:
            self.pool.close()
        finally:
            gc.collect()
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- running children
def _child(idx, fn, args, ready, go, out) -> None:
    def start() -> None:
        ready.release()
        go.wait()

    try:
        r = fn(start, *args)
        out.put((idx, r))
    except BaseException:
        out.put((idx, {"error": traceback.format_exc()[-1500:]}))
    finally:
        out.close()
        out.join_thread()
        os._exit(0)


def run_children(targets: list, timeout: float) -> tuple:
    """Forks one process per (fn, args); each calls start() when ready; all are released together.
    Returns (go time, [result dict per target]) or raises RuntimeError."""
    ready, go, out = fork.Semaphore(0), fork.Event(), fork.Queue()
    procs = [fork.Process(target=_child, args=(i, fn, args, ready, go, out), daemon=True)
             for i, (fn, args) in enumerate(targets)]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.start()
        for _ in procs:
            if not ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise RuntimeError("a child did not get ready in time")
        t_go = time.perf_counter()
        go.set()
        results: list = [None] * len(procs)
        for _ in procs:
            try:
                idx, r = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                raise RuntimeError(f"timed out after {timeout:g} s") from None
            if "error" in r:
                raise RuntimeError(r["error"])
            results[idx] = r
        return t_go, results
    finally:
        for p in procs:
            p.join(max(0.1, min(5, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        out.close()
        out.cancel_join_thread()


# ---------------------------------------------------------------- what the children do
def _producer(start, q, items: int) -> dict:
    start()
    for i in range(items):
        q.put(i)
    t_end = time.perf_counter()
    if isinstance(q, multiprocessing.queues.Queue):  # its feeder thread must flush before os._exit
        q.close()
        q.join_thread()
    return {"t_end": t_end}


def _consumer(start, q, items: int) -> dict:
    start()
    for _ in range(items):
        q.get()
    return {"t_end": time.perf_counter()}


def _pinger(start, conn, round_trips: int, size: int) -> dict:
    msg = b"x" * size
    start()
    for _ in range(WARM):
        conn.send_bytes(msg)
        conn.recv_bytes()
    lat = [0.0] * round_trips
    pc = time.perf_counter
    for i in range(round_trips):
        t = pc()
        conn.send_bytes(msg)
        conn.recv_bytes()
        lat[i] = pc() - t
    lat.sort()
    n = len(lat)
    return {"p50_us": lat[n // 2] * 1e6, "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6,
            "mean_us": sum(lat) / n * 1e6, "min_us": lat[0] * 1e6}


def _echoer(start, conn, count: int) -> dict:
    start()
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())
    return {}


def _sender(start, conn, size: int, count: int, window: int) -> dict:
    buf = bytes(range(256)) * (size // 256)
    start()
    conn.send_bytes(buf)  # warm-up: pages of the pool / socket buffers, outside the clock
    conn.recv_bytes()
    t0 = time.perf_counter()
    sent = acked = 0
    while acked < count:
        while sent < count and sent - acked < window:
            conn.send_bytes(buf)
            sent += 1
        conn.recv_bytes()
        acked += 1
    return {"seconds": time.perf_counter() - t0}


def _receiver(start, conn, size: int, count: int) -> dict:
    start()
    for _ in range(count + 1):
        n = len(conn.recv_bytes())
        if n != size:
            raise RuntimeError(f"received {n} bytes, expected {size}")
        conn.send_bytes(b"k")
    return {}


def _waiter(start, barrier, rounds: int) -> dict:
    start()
    for _ in range(WARM):
        barrier.wait(60)
    t0 = time.perf_counter()
    for _ in range(rounds):
        barrier.wait(60)
    return {"t0": t0, "t_end": time.perf_counter()}


# ---------------------------------------------------------------- measurements
def make_queue(impl: str, pool: str):
    if impl == "comm":
        from dragon_parsl import comm
        return comm.Queue(pool=pool)
    return fork.Queue() if impl == "mp" else fork.SimpleQueue()


def close_queue(impl: str, q) -> None:
    if impl == "comm":
        q.close()
    elif impl == "mp":
        q.close()
        q.cancel_join_thread()
    else:
        q.close()


def measure_queue(impl: str, pool: str, pairs: int, items: int, timeout: float) -> dict:
    q = make_queue(impl, pool)
    try:
        per = items // pairs
        targets = [(_producer, (q, per)) for _ in range(pairs)] + [(_consumer, (q, per)) for _ in range(pairs)]
        t_go, res = run_children(targets, timeout)
        dt = max(r["t_end"] for r in res[pairs:]) - t_go
        return {"items": per * pairs, "seconds": dt, "items_per_s": per * pairs / dt}
    finally:
        close_queue(impl, q)


def make_pipe(impl: str, pool: str):
    if impl == "comm":
        from dragon_parsl import comm
        return comm.Pipe(pool=pool)
    return fork.Pipe()


def close_pipe(ends) -> None:
    for e in ends:
        e.close()


def measure_rtt(impl: str, pool: str, round_trips: int, timeout: float) -> dict:
    a, b = make_pipe(impl, pool)
    try:
        _, res = run_children([(_pinger, (a, round_trips, RTT_BYTES)), (_echoer, (b, round_trips + WARM))], timeout)
        return dict(res[0], round_trips=round_trips, bytes=RTT_BYTES)
    finally:
        close_pipe((a, b))


def measure_bw(impl: str, pool: str, size: int, count: int, timeout: float) -> dict:
    a, b = make_pipe(impl, pool)
    window = max(1, min(8, 256 * MIB // size))
    try:
        _, res = run_children([(_sender, (a, size, count, window)), (_receiver, (b, size, count))], timeout)
        dt = res[0]["seconds"]
        return {"bytes": size, "messages": count, "window": window, "seconds": dt,
                "gb_per_s": size * count / dt / 1e9}
    finally:
        close_pipe((a, b))


def measure_barrier(impl: str, pool: str, rounds: int, timeout: float) -> dict:
    if impl == "comm":
        from dragon_parsl import comm
        b = comm.Barrier(PARTIES, pool=pool)
    else:
        b = fork.Barrier(PARTIES)
    _, res = run_children([(_waiter, (b, rounds)) for _ in range(PARTIES)], timeout)
    dt = max(r["t_end"] for r in res) - min(r["t0"] for r in res)
    return {"parties": PARTIES, "rounds": rounds, "seconds": dt, "rounds_per_s": rounds / dt}


def memcpy(sizes: list, mib: dict) -> dict:
    """numpy's copy (np.copyto) of an array of each size in this process, GB/s: best of 3."""
    import numpy as np

    out = {}
    for size in sizes:
        src = np.frombuffer(np.random.default_rng(size).bytes(size), dtype=np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        reps = max(4, round(mib[str(size)] * MIB / size))
        best = None
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                np.copyto(dst, src)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        out[str(size)] = {"reps": reps, "gb_per_s": reps * size / 1e9 / best}
        del src, dst
    return out


# (key, label, implementations, metric, function(impl, pool, cfg))
BENCHES = (
    ("queue_1x1", "Queue, 1 producer + 1 consumer, ints: items/s", ("comm", "mp", "simple"), "items_per_s",
     lambda impl, pool, c: measure_queue(impl, pool, 1, c["queue_items"], c["timeout_s"])),
    ("queue_4x4", f"Queue, 4 producers + 4 consumers, ints: items/s (aggregate)", ("comm", "mp", "simple"),
     "items_per_s", lambda impl, pool, c: measure_queue(impl, pool, 4, c["queue_items"], c["timeout_s"])),
    ("pipe_rtt_64B", f"Pipe, {RTT_BYTES} B round trip: p50 / p99 µs", ("comm", "mp"), "p50_us",
     lambda impl, pool, c: measure_rtt(impl, pool, c["round_trips"], c["timeout_s"])),
    ("pipe_bw_1MiB", "Pipe, 1 MiB messages one way: GB/s", ("comm", "mp"), "gb_per_s",
     lambda impl, pool, c: measure_bw(impl, pool, MIB, c["bw_mib"][str(MIB)], c["timeout_s"])),
    ("pipe_bw_64MiB", "Pipe, 64 MiB messages one way: GB/s", ("comm", "mp"), "gb_per_s",
     lambda impl, pool, c: measure_bw(impl, pool, 64 * MIB, max(2, c["bw_mib"][str(64 * MIB)] // 64),
                                      c["timeout_s"])),
    ("barrier_4", f"Barrier, {PARTIES} processes: rounds/s", ("comm", "mp"), "rounds_per_s",
     lambda impl, pool, c: measure_barrier(impl, pool, c["barrier_rounds"], c["timeout_s"])),
)
IMPL_NAMES = {"comm": "dragon_parsl.comm", "mp": "multiprocessing", "simple": "multiprocessing.SimpleQueue"}
LOWER_IS_BETTER = {"p50_us", "p99_us"}


def dragonhpc() -> dict:
    if importlib.util.find_spec("dragon") is None:
        return {"status": "not run: dragonhpc is not installed"}
    return {"status": "Queue not run: dragonhpc's Queue needs the program started by its `dragon` launcher "
                      "(its runtime, its own pools); this benchmark does not run it (on the machine it was "
                      "written on, `dragon --single-node-override` did not finish a 4-line Queue script "
                      "within 80 s). DDict: see the Dictionary measurement (\"dictionary\" → \"ddict\")"}


# ---------------------------------------------------------------- summary and table
def summarize(runs: list, keys: list) -> dict:
    out: dict = {}
    for key, _, impls, metric, _ in BENCHES:
        if key not in keys:
            continue
        out[key] = {}
        for impl in impls:
            rs = [r for r in runs if r["bench"] == key and r["impl"] == impl and "error" not in r]
            if not rs:
                errs = [r["error"] for r in runs if r["bench"] == key and r["impl"] == impl]
                out[key][impl] = {"error": errs[0].strip().splitlines()[-1][:300] if errs else "not run"}
                continue
            m = {metric: median([r[metric] for r in rs]), "rounds": len(rs)}
            if key.startswith("pipe_rtt"):
                m["p99_us"] = median([r["p99_us"] for r in rs])
            out[key][impl] = m
    return out


def ratios(summary: dict) -> dict:
    out = {}
    for key, _, _, metric, _ in BENCHES:
        if key not in summary:
            continue
        for m in (metric, "p99_us") if key.startswith("pipe_rtt") else (metric,):
            c, p = summary[key].get("comm", {}).get(m), summary[key].get("mp", {}).get(m)
            out[f"{key}_{m}_comm_over_mp"] = c / p if c and p else None
            s = summary[key].get("simple", {}).get(m)
            if s is not None:
                out[f"{key}_{m}_comm_over_simplequeue"] = c / s if c and s else None
    return out


def fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(summary: dict, rat: dict, mem: dict, cfg: dict, dh: dict) -> str:
    L = [f"{'Quick (smoke) run' if not cfg['full'] else 'Full run'}: {cfg['rounds']} round(s), medians; "
         f"each measurement in fresh forked processes; dragon_parsl.comm objects in a private 1 GiB pool. "
         f"Queue: {cfg['queue_items']:,} ints; Pipe RTT: {cfg['round_trips']:,} round trips of {RTT_BYTES} B; "
         f"Pipe bandwidth: the same buffer sent each time, ~{cfg['bw_mib'][str(MIB)]} / "
         f"{cfg['bw_mib'][str(64 * MIB)]} MiB per measurement; Barrier: {cfg['barrier_rounds']:,} rounds. "
         f"memcpy: np.copyto in one process (the ceiling for one copy). comm/mp: for latencies < 1 is better.",
         "",
         "| measurement | dragon_parsl.comm | multiprocessing | mp.SimpleQueue | memcpy | comm / mp |",
         "|---|---:|---:|---:|---:|---:|"]

    def cell(key, impl, metric, digits):
        v = summary[key].get(impl, {})
        return "error" if "error" in v else fmt(v.get(metric), digits)

    for key, label, impls, metric, _ in BENCHES:
        if key not in summary:
            continue
        digits = 2 if metric == "gb_per_s" else 1 if metric == "p50_us" else 0
        if key.startswith("pipe_rtt"):
            c = f"{cell(key, 'comm', 'p50_us', 1)} / {cell(key, 'comm', 'p99_us', 1)}"
            p = f"{cell(key, 'mp', 'p50_us', 1)} / {cell(key, 'mp', 'p99_us', 1)}"
            r = (f"{fmt(rat.get(f'{key}_p50_us_comm_over_mp'), 2)} / "
                 f"{fmt(rat.get(f'{key}_p99_us_comm_over_mp'), 2)}")
        else:
            c, p = cell(key, "comm", metric, digits), cell(key, "mp", metric, digits)
            r = fmt(rat.get(f"{key}_{metric}_comm_over_mp"), 2)
        s = cell(key, "simple", metric, digits) if "simple" in impls else ""
        m = ""
        if key.startswith("pipe_bw"):
            m = fmt(mem.get(str(MIB if key.endswith("_1MiB") else 64 * MIB), {}).get("gb_per_s"), 2)
        L.append(f"| {label} | {c} | {p} | {s} | {m} | {r} |")
    errs = [(k, i, v["error"]) for k, d in summary.items() for i, v in d.items() if "error" in v]
    L.append("")
    for k, i, e in errs:
        L.append(f"- {k} {IMPL_NAMES[i]}: {e}")
    L.append(f"- dragonhpc (PyPI) Queue/DDict: {dh['status']}")
    return "\n".join(L) + "\n"


def machine() -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cores": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def _sigterm(*_) -> None:
    raise SystemExit(143)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round, small counts: a smoke run (default)")
    mode.add_argument("--full", action="store_true", help="3 rounds, larger counts")
    p.add_argument("--json-out", help="also write the JSON object here")
    p.add_argument("--rounds", type=int)
    p.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHES] + ["dictionary"],
                   help="these measurements only")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    cfg = dict(FULL if args.full else QUICK, full=bool(args.full), pool_bytes=POOL_BYTES, warm=WARM)
    if args.rounds:
        cfg["rounds"] = args.rounds
    benches = [b for b in BENCHES if not args.only or b[0] in args.only]
    cfg["benches"] = [b[0] for b in benches]
    dh = dragonhpc()
    result: dict = {"settings": cfg, "machine": machine(), "dragonhpc": dh, "runs": []}
    t_start = time.perf_counter()
    pool = PrivatePool(POOL_BYTES)
    result["settings"]["pool_dir"] = pool.dir
    try:
        for rnd in range(1, cfg["rounds"] + 1):
            for key, _, impls, metric, fn in benches:
                k = (rnd - 1) % len(impls)
                for impl in impls[k:] + impls[:k]:
                    t = time.perf_counter()
                    try:
                        r = fn(impl, pool.path, cfg)
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        r = {"error": str(e)[-1500:]}
                    r.update(bench=key, impl=impl, round=rnd, process_s=time.perf_counter() - t)
                    result["runs"].append(r)
                    log(f"round {rnd}: {key} {impl}: "
                        + (f"ERROR {r['error'].strip().splitlines()[-1][:200]}" if "error" in r
                           else f"{r[metric]:,.2f} {metric}") + f" [{r['process_s']:.1f} s]")
        mem_sizes = [s for s in BW_SIZES if any(b[0].startswith("pipe_bw") for b in benches)]
        result["memcpy"] = memcpy(mem_sizes, cfg["bw_mib"]) if mem_sizes else {}
    finally:
        pool.close()
    if not args.only or "dictionary" in args.only:  # its own service (a private dragond), after the rest
        import comm_dict_bench
        result["dictionary"] = comm_dict_bench.run(cfg["full"], cfg["rounds"])
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"comm-bench-{os.getpid()}-")]
    result["shm_leftovers"] = left
    summary = summarize(result["runs"], cfg["benches"])
    result["summary"] = summary
    result["ratios"] = ratios(summary)
    result["targets"] = []
    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["table_md"] = table(summary, result["ratios"], result["memcpy"], cfg, dh)
    if "dictionary" in result:
        result["table_md"] += "\n" + result["dictionary"]["table_md"]
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
