#!/usr/bin/env python3
"""Task data throughput through Parsl and DragonExecutor: the shared-memory pool, files, inline (issue 14).

    python bench/task_data_bench.py --quick --json-out task_data.json   # a smoke run: 1 round, 3 sizes, ~16 MiB
    python bench/task_data_bench.py --full  --json-out task_data.json   # 3 rounds, 6 sizes, ~512 MiB per measurement

One `python_app` that returns its argument, a numpy uint8 array (data in and out, like the image
batch's 2 MiB in and out), at 64 KiB, 256 KiB, 1 MiB, 4 MiB, 16 MiB and 64 MiB (--quick: 64 KiB,
1 MiB and 16 MiB, a small and a large size on every path, the paths at the same time: ~10 s), through
DragonExecutor(workers_per_node=2) (the embedded head) with each of its task data paths:
  pool    shm_path="pool" (the default): blocks of the agent's shared-memory pool, read in place
  files   shm_path="files": one file per task in a directory of /dev/shm
  inline  shm_threshold=0: every byte through gRPC (dragond's --max-payload-mb, default 256 MiB,
          bounds one message; a size whose task message would not fit is "not run", saying so)
For each size: a few distinct arrays made once (outside the clock), a warm-up of one window of
tasks (outside the clock), then N tasks with at most 2 x workers in flight (the next is submitted
as each result arrives). N is scaled so that a measurement moves --mib each way (full 512, quick
16; at least 16 tasks, quick 8, at most 2,000). Every result is checked: its shape, dtype and a few bytes at
fixed positions (first, last and six between) against what was sent. Recorded: tasks/s, MiB/s each
way, this process's CPU per task (the workflow process: Parsl's DFK and the executor's client),
the CPU of dragond, the agent and the workers, and the executor's shm_counters() over the clocked
tasks, so the table shows which path the data actually took (a path that silently sent the data
inline is seen). Parsl runs with Config(initialize_logging=False): its DEBUG log costs CPU per
task that has nothing to do with the data.

Each path runs in its own process (`task_data_bench.py --child SPEC.json`, its own session, killed
as a group afterwards), so one path's memory (a grown heap, a pool) does not affect the next; once
per round, in an order rotated from round to round (the machine drifts). --quick runs the three
processes at the same time (--no-concurrent: one after the other): most of a path's time is its
start and stop (Parsl, dragond, the agent, the workers), and a smoke run's numbers are not
results. Ratios pool/files and pool/inline are medians of the per-round ratios. Issue 14's target:
the pool faster than files at every size (ratio > 1.0), PASS/MISS per size in "targets"; a size
where the pool path did not actually put the data in the pool is n/a. The "memcpy" row is numpy's
copy of an array of each size (np.copyto, in this process, best of 3), the machine's ceiling for
one copy.

The last stdout line is one JSON object (also written to --json-out): settings, machine, every
run, "summary", "ratios", "targets", "table_md" and "plots" for bench/run.py (hook `task_data`).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

# stdlib only at import (parsl_bench imports Parsl lazily)
import liveness  # noqa: E402  (its walk of /proc for the service's processes)
from parsl_bench import cpu_snapshot, tree_cpu  # noqa: E402

PATHS = ("pool", "files", "inline")
PATH_NAMES = {"pool": "pool (shm_path=\"pool\")", "files": "files (shm_path=\"files\")",
              "inline": "inline (shm_threshold=0)"}
KIB, MIB = 1024, 1024 * 1024
SIZES = (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB, 64 * MIB)
# --quick is a smoke run (bench/run.py --quick, tests/test_bench_smoke.py): every path, a small and a
# large size, few tasks; its numbers are not results.
QUICK_SIZES = (64 * KIB, MIB, 16 * MIB)
QUICK = dict(rounds=1, mib=16, min_tasks=8)   # at least two windows of tasks
FULL = dict(rounds=3, mib=512, min_tasks=16)
MAX_TASKS = 2000
DISTINCT = 4          # distinct arrays per size, sent in turn
PROBES = 8            # bytes checked per result (first, last and six between)
# Room in a task message beyond the array's bytes (pickle framing, the task's other fields): an
# inline size above max_payload - this is not run.
MESSAGE_SLACK = 64 * KIB


def echo(a):
    """The task: returns its argument. Defined in __main__ of the child, so Parsl ships it by value."""
    return a


def log(msg: str) -> None:
    print(f"task_data_bench: {msg}", file=sys.stderr, flush=True)


def size_name(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def tasks_for(size: int, mib: float, min_tasks: int) -> int:
    return max(min_tasks, min(MAX_TASKS, round(mib * MIB / size)))


def median(xs: list):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- one path, in the child
COUNTER_KEYS = ("args_shm_tasks", "args_shm_bytes", "args_inline_tasks", "args_inline_bytes", "args_fallbacks",
                "results_shm", "results_shm_bytes", "results_inline", "results_inline_bytes")


def counters(ex) -> dict:
    c = ex.shm_counters()
    return {k: c.get(k) for k in ("dir", *COUNTER_KEYS) if k in c}


def counter_delta(a: dict, b: dict) -> dict:
    out = {k: b[k] - a.get(k, 0) for k in COUNTER_KEYS if isinstance(b.get(k), int)}
    out["dir"] = b.get("dir")
    return out


def took(delta: dict, n: int) -> str:
    """Which way the clocked tasks' data went, from the executor's counters."""
    if delta.get("dir") is None:
        return "inline (shm off)"
    a, r = delta.get("args_shm_tasks", 0), delta.get("results_shm", 0)
    if a == n and r == n:
        return "shm"
    if a == 0 and r == 0:
        return "inline"
    return f"mixed: args shm {a}/{n}, results shm {r}/{n}"


def make_arrays(np, size: int) -> tuple:
    """DISTINCT arrays of `size` bytes (random content, so that no two agree at the probed positions
    by chance), and what each holds at the probes."""
    probes = np.linspace(0, size - 1, PROBES).astype(np.int64)
    arrays, expect = [], []
    for k in range(DISTINCT):
        a = np.frombuffer(np.random.default_rng(1000 * k + size % 997).bytes(size), dtype=np.uint8).copy()
        a[probes] = (np.arange(PROBES) * 31 + 17 * k + 1) % 256  # distinct at the probes, whatever rng gave
        arrays.append(a)
        expect.append(a[probes].tobytes())
    return arrays, expect, probes


def check(r, k: int, size: int, expect: list, probes, np) -> None:
    if not isinstance(r, np.ndarray) or r.shape != (size,) or r.dtype != np.uint8:
        raise RuntimeError(f"task returned {type(r).__name__} {getattr(r, 'shape', '')} "
                           f"{getattr(r, 'dtype', '')}, expected uint8 ({size},)")
    if r[probes].tobytes() != expect[k]:
        raise RuntimeError(f"task returned an array of {size} bytes whose probed bytes differ from array {k}'s")


def windowed(app, arrays: list, n: int, window: int, size: int, expect: list, probes, np) -> None:
    """n tasks, at most `window` in flight, each result checked and dropped as it arrives."""
    pending: dict = {}
    submitted = 0
    while submitted < n or pending:
        while submitted < n and len(pending) < window:
            pending[app(arrays[submitted % DISTINCT])] = submitted % DISTINCT
            submitted += 1
        done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for f in done:
            k = pending.pop(f)
            check(f.result(), k, size, expect, probes, np)
        del done, f  # no reference to a result left (a pool block is freed with its last view)


def measure_size(app, ex, size: int, n: int, window: int, np) -> dict:
    arrays, expect, probes = make_arrays(np, size)
    windowed(app, arrays, window, window, size, expect, probes, np)  # warm-up, outside the clock
    c0, ta = counters(ex), tree_cpu()
    a = cpu_snapshot()
    windowed(app, arrays, n, window, size, expect, probes, np)
    b = cpu_snapshot()
    tb, c1 = tree_cpu(), counters(ex)
    total = b[0] - a[0]
    delta = counter_delta(c0, c1)
    service = {k: round(tb[k] - ta.get(k, 0.0), 3) for k in tb if tb[k] - ta.get(k, 0.0) > 0}
    return {"size": size, "tasks": n, "window": window, "total_s": total, "tasks_per_s": n / total,
            "mib_per_s": n * size / MIB / total, "client_cpu_s": b[1] - a[1],
            "client_user_s": b[3].user - a[3].user, "client_sys_s": b[3].system - a[3].system,
            "client_cpu_ms_per_task": (b[1] - a[1]) / n * 1e3, "machine_busy_cpu_s": b[2] - a[2],
            "service_cpu_s": service, "service_cpu_ms_per_task": sum(service.values()) / n * 1e3,
            "shm": delta, "took": took(delta, n), "status": "ok"}


def executor_options(path: str) -> dict:
    if path == "pool":
        return {"shm_path": "pool"}
    if path == "files":
        return {"shm_path": "files"}
    return {"shm_threshold": 0}


def child(spec: dict) -> dict:
    path, w = spec["path"], spec["workers"]
    out: dict = {"path": path, "round": spec["round"], "workers": w, "pid": os.getpid(), "sizes": {}}
    t0 = time.perf_counter()

    def save():
        tmp = spec["out"] + ".tmp"
        Path(tmp).write_text(json.dumps(out))
        os.replace(tmp, spec["out"])

    try:
        import numpy as np
        import parsl
        from parsl import python_app
        from parsl.config import Config

        from dragon_parsl import DragonExecutor

        out["options"] = executor_options(path)
        ex = DragonExecutor(label="dragon", workers_per_node=w, **out["options"])
        with tempfile.TemporaryDirectory(prefix=f"task-data-{path}-") as run_dir:
            dfk = parsl.load(Config(executors=[ex], run_dir=run_dir, strategy="none", initialize_logging=False))
            try:
                out["max_payload_bytes"] = getattr(ex, "max_payload_bytes", None)
                out["shm_dir"] = ex.shm_counters().get("dir")
                app = python_app(echo, executors=["dragon"])
                small = np.zeros(16, dtype=np.uint8)
                [f.result() for f in [app(small) for _ in range(4 * w)]]  # workers up, the function cached
                for size in spec["sizes"]:
                    n = spec["tasks"][str(size)]
                    limit = out["max_payload_bytes"]
                    if path == "inline" and limit and size + MESSAGE_SLACK > limit:
                        out["sizes"][str(size)] = {
                            "size": size, "tasks": n,
                            "status": f"not run: above --max-payload-mb ({limit / MIB:g} MiB: dragond's limit "
                                      "on one gRPC message)"}
                        continue
                    t = time.perf_counter()
                    try:
                        r = measure_size(app, ex, size, n, spec["window"], np)
                    except Exception as e:  # noqa: BLE001  (recorded; the next size may still run)
                        r = {"size": size, "tasks": n, "status": f"failed: {type(e).__name__}: {e}"[:600],
                             "traceback": traceback.format_exc()[-3000:]}
                    r["elapsed_s"] = time.perf_counter() - t
                    out["sizes"][str(size)] = r
                    save()
                    log(f"round {spec['round']} {path}: {size_name(size)}: " + (
                        f"{r['mib_per_s']:,.0f} MiB/s each way, {r['tasks_per_s']:,.0f} tasks/s ({r['took']})"
                        if r["status"] == "ok" else r["status"]))
                out["shm_total"] = ex.shm_counters()
                out["service_pids"] = sorted(liveness.descendants(os.getpid()))  # dragond, the agent (its pool is named by its pid)
                out["shm_dir"] = out["shm_total"].get("dir")  # the pool's is known once it is used
            finally:
                dfk.cleanup()
                parsl.clear()
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (recorded; the parent goes on)
        out["status"] = f"failed: {type(e).__name__}: {e}"[:600]
        out["traceback"] = traceback.format_exc()[-3000:]
    out["elapsed_s"] = time.perf_counter() - t0
    save()
    return out


# ---------------------------------------------------------------- the parent
def memcpy(sizes: list, mib: float) -> dict:
    """numpy's copy (np.copyto) of an array of each size, MiB/s: best of 3 runs of ~mib MiB."""
    import numpy as np

    out = {}
    for size in sizes:
        src = np.frombuffer(np.random.default_rng(size).bytes(size), dtype=np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # pages touched outside the clock
        reps = max(4, round(mib * MIB / size))
        best = None
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                np.copyto(dst, src)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        out[str(size)] = {"reps": reps, "mib_per_s": reps * size / MIB / best, "gb_per_s": reps * size / 1e9 / best}
        del src, dst
    return out


def child_env() -> dict:
    env = dict(os.environ)
    # This checkout's dragon_parsl and bench/ (parsl_bench's helpers).
    paths = [str(BENCH), str(REPO / "parsl_plugin")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if (REPO / "build-out" / "bin" / "dragond").exists():
        env.setdefault("DRAGON_BIN_DIR", str(REPO / "build-out" / "bin"))
    env.pop("DRAGON_HEAD", None)  # DragonExecutor starts its own private dragond
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def shm_entries() -> set:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def run_child(spec: dict, work: Path, timeout: float) -> dict:
    stem = f"r{spec['round']}-{spec['path']}"
    spec_path, out_path = work / f"{stem}-spec.json", work / f"{stem}.json"
    spec_path.write_text(json.dumps(dict(spec, out=str(out_path))))
    before = shm_entries()
    t0 = time.perf_counter()
    with open(work / f"{stem}.log", "w") as logf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                env=child_env(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(REPO))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
            proc.terminate()  # DragonExecutor's shutdown: dragond, the agent and its pool, the files
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing it started outlives it
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.perf_counter() - t0
    try:
        r = json.loads(out_path.read_text())
    except (OSError, ValueError):
        r = {"path": spec["path"], "round": spec["round"], "sizes": {}}
    if rc != 0:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exited with code {rc}"
        r["exit"] = why
        if r.get("status") is None:  # it died before it was done (the sizes it finished are kept)
            tail = (work / f"{stem}.log").read_text(errors="replace").strip()[-800:]
            r["status"] = f"failed: {why}; {tail}"
    r["process_s"] = wall
    # Entries of /dev/shm that appeared while it ran and are still there: its own (the files
    # directory or the pool it used) and others (another user of the machine may have made some);
    # reported, never removed.
    new = shm_entries() - before
    pids = {str(x) for x in r.get("service_pids", [])}
    own = {e for e in new if e == os.path.basename(str(r.get("shm_dir") or ""))
           or (e.startswith("dragon-pool-") and e.rsplit("-", 1)[-1] in pids)}
    r["shm_leftovers"] = sorted(own)
    r["shm_appeared_meanwhile"] = sorted(new - own)
    return r


def size_runs(runs: list, path: str, size: int) -> list:
    return [r for r in runs if r["path"] == path and r.get("sizes", {}).get(str(size), {}).get("status") == "ok"]


def summarize(runs: list, paths: list, sizes: list) -> dict:
    s: dict = {}
    for p in paths:
        s[p] = {}
        for size in sizes:
            rs = [r["sizes"][str(size)] for r in size_runs(runs, p, size)]
            other = [r.get("sizes", {}).get(str(size), {}).get("status") or r.get("status") or "not run"
                     for r in runs if r["path"] == p and r.get("sizes", {}).get(str(size), {}).get("status") != "ok"]
            s[p][str(size)] = {
                "status": "ok" if rs else (other[0] if other else "not run"), "rounds_ok": len(rs),
                "problems": [x for x in other if x],
                "tasks": rs[0]["tasks"] if rs else None,
                "mib_per_s": median([r["mib_per_s"] for r in rs]), "runs_mib_per_s": [r["mib_per_s"] for r in rs],
                "tasks_per_s": median([r["tasks_per_s"] for r in rs]),
                "client_cpu_ms_per_task": median([r["client_cpu_ms_per_task"] for r in rs]),
                "service_cpu_ms_per_task": median([r["service_cpu_ms_per_task"] for r in rs]),
                "took": sorted({r["took"] for r in rs}),
                "shm": rs[-1]["shm"] if rs else None}
    return s


def round_ratios(runs: list, a: str, b: str, size: int) -> dict:
    per = []
    for rnd in sorted({r["round"] for r in runs}):
        ra = next((r for r in size_runs(runs, a, size) if r["round"] == rnd), None)
        rb = next((r for r in size_runs(runs, b, size) if r["round"] == rnd), None)
        if ra and rb:
            per.append(ra["sizes"][str(size)]["mib_per_s"] / rb["sizes"][str(size)]["mib_per_s"])
    return {"median": median(per), "rounds": per}


def ratios(runs: list, paths: list, sizes: list) -> dict:
    out: dict = {}
    for ref in ("files", "inline"):
        if "pool" in paths and ref in paths:
            out[f"pool/{ref}"] = {str(size): round_ratios(runs, "pool", ref, size) for size in sizes}
    return out


def targets(summary: dict, rat: dict, sizes: list) -> list:
    if "pool/files" not in rat:
        return []
    rows = []
    for size in sizes:
        m = rat["pool/files"][str(size)]["median"]
        pool = summary["pool"][str(size)]
        why = ""
        if pool["status"] != "ok":
            why = f"pool: {pool['status'][:200]}"
        elif pool["took"] != ["shm"]:
            why = f"the pool path's data did not all go through shared memory ({', '.join(pool['took'])})"
        elif summary["files"][str(size)]["status"] != "ok":
            why = f"files: {summary['files'][str(size)]['status'][:200]}"
        status = "n/a" if why or m is None else ("PASS" if m > 1.0 else "MISS")
        rows.append({"issue": 14, "target": f"task data through Parsl, {size_name(size)} in and out: "
                                            "pool vs files (MiB/s each way)",
                     "goal": "> 1.0x", "measured": None if why else m, "status": status,
                     "detail": (why + "; " if why else "") + "bench/task_data_bench.py: median of per-round ratios"})
    return rows


def fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def counts(shm: dict | None, n: int | None) -> str:
    if not shm:
        return "-"
    if shm.get("dir") is None:
        return "- (shm off) | -"
    return (f"{shm.get('args_shm_tasks', 0)}/{shm.get('args_inline_tasks', 0)}"
            f"{' (+' + str(shm['args_fallbacks']) + ' fallbacks)' if shm.get('args_fallbacks') else ''} | "
            f"{shm.get('results_shm', 0)}/{shm.get('results_inline', 0)}")


def table(summary: dict, rat: dict, mem: dict, cfg: dict) -> str:
    paths, sizes = cfg["paths"], cfg["sizes"]
    L = [f"Parsl + DragonExecutor (embedded head, {cfg['workers']} workers), a python_app returning its numpy "
         f"uint8 argument (data in and out), {cfg['window']} tasks in flight; ~{cfg['mib']:g} MiB each way per "
         f"measurement ({cfg['min_tasks']} to {MAX_TASKS:,} tasks); {cfg['rounds']} round(s), one process per path and "
         + ("round, the paths' processes at the same time (a smoke run: they compete for the machine). "
            if cfg.get("concurrent") else "round, paths in a rotating order. ")
         + "MiB/s each way = tasks x size / time (median over rounds); memcpy: "
         "numpy's copy of one array of the size in one process, the machine's ceiling for one copy."
         + (f" inline: every byte through gRPC, within dragond's --max-payload-mb ({cfg['max_payload_mib']:g} MiB "
            "per message, the default): a size whose task would not fit is not run, saying so."
            if cfg.get("max_payload_mib") else ""), ""]
    head = "| size | tasks | " + " | ".join(f"{p} MiB/s" for p in paths) + " | memcpy MiB/s |"
    sep = "|---|---|" + "---|" * len(paths) + "---|"
    rcols = [k for k in ("pool/files", "pool/inline") if k in rat]
    head += "".join(f" {k} |" for k in rcols) + (" target pool > files |" if "pool/files" in rat else "")
    sep += "---|" * len(rcols) + ("---|" if "pool/files" in rat else "")
    L += [head, sep]
    for size in sizes:
        k = str(size)
        n = next((summary[p][k]["tasks"] for p in paths if summary[p][k]["tasks"]), None)
        cells = []
        for p in paths:
            s = summary[p][k]
            if s["status"] != "ok":
                cells.append(s["status"][:120].replace("|", "/"))
            else:
                cells.append(fmt(s["mib_per_s"]) + ("" if s["took"] == ["shm"] or p == "inline"
                                                     else f" ({', '.join(s['took'])})"))
        row = f"| {size_name(size)} | {fmt(n)} | " + " | ".join(cells) + f" | {fmt(mem.get(k, {}).get('mib_per_s'))} |"
        for r in rcols:
            x = rat[r][k]
            row += f" {fmt(x['median'], 2)}" + (f" ({', '.join(f'{v:.2f}' for v in x['rounds'])})"
                                                if len(x["rounds"]) > 1 else "") + " |"
        if "pool/files" in rat:
            m = rat["pool/files"][k]["median"]
            ok = summary["pool"][k]["took"] == ["shm"]
            row += f" {'-' if m is None else ('n/a' if not ok else ('met' if m > 1.0 else 'not met'))} |"
        L.append(row)
    L += ["", "Each path and size: tasks/s, CPU per task of the workflow process (client) and of dragond, the "
          "agent and the workers (service), and what the executor's shm_counters() counted over the clocked "
          "tasks: arguments through shared memory / inline, results the same.", "",
          "| path | size | tasks/s | MiB/s each way | each round | client CPU ms/task | service CPU ms/task | "
          "args shm/inline | results shm/inline |", "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        for size in sizes:
            s = summary[p][str(size)]
            if s["status"] != "ok":
                L.append(f"| {p} | {size_name(size)} | {s['status'][:200].replace('|', '/')} | | | | | | |")
                continue
            L.append(f"| {p} | {size_name(size)} | {fmt(s['tasks_per_s'])} | {fmt(s['mib_per_s'])} | "
                     f"{', '.join(fmt(x) for x in s['runs_mib_per_s'])} | {fmt(s['client_cpu_ms_per_task'], 2)} | "
                     f"{fmt(s['service_cpu_ms_per_task'], 2)} | {counts(s['shm'], s['tasks'])} |")
    return "\n".join(L)


def plots(summary: dict, mem: dict, cfg: dict) -> dict:
    x = [s / KIB for s in cfg["sizes"]]
    series = {}
    for p in cfg["paths"]:
        ys = [summary[p][str(s)]["mib_per_s"] for s in cfg["sizes"]]
        while ys and ys[-1] is None:  # a size not run at the end (inline above --max-payload-mb)
            ys.pop()
        if ys and None not in ys:
            series[p] = ys
    if mem:
        series["memcpy"] = [mem[str(s)]["mib_per_s"] for s in cfg["sizes"]]
    return {"mib_per_s": {"x": x, "series": series, "xlabel": "array size (KiB), in and out",
                          "ylabel": "MiB/s each way", "xscale": "log", "yscale": "log",
                          "title": f"Task data through Parsl + DragonExecutor ({cfg['workers']} workers)"}}


def machine() -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cores": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(Path(sys.argv[2]).read_text())
        r = child(spec)
        print(json.dumps({k: v for k, v in r.items() if k != "sizes"}), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round, 64 KiB, 1 MiB and 16 MiB, ~16 MiB each way per "
                      "measurement: a smoke run (default)")
    mode.add_argument("--full", action="store_true", help="3 rounds, ~512 MiB each way per measurement")
    p.add_argument("--json-out", help="also write the JSON object here")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--sizes-kib", type=int, nargs="+", help="array sizes in KiB (default 64 256 1024 4096 16384 65536; "
                   "--quick 64 1024 16384)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int)
    p.add_argument("--mib", type=float, help="MiB each way per measurement (tasks = this / size, 16..2,000; "
                   "--quick 8..2,000)")
    p.add_argument("--no-memcpy", action="store_true", help="leave out the memcpy row")
    p.add_argument("--concurrent", action=argparse.BooleanOptionalAction, default=None,
                   help="run the paths' processes of a round at the same time (default with --quick: a smoke "
                        "run, the paths compete for the machine; --full: one after the other)")
    p.add_argument("--timeout", type=float, default=0, help="seconds per path process (default from the counts)")
    p.add_argument("--work-dir", help="keep each process's spec, JSON and log here (default: a temp dir)")
    args = p.parse_args()
    cfg = dict(FULL if args.full else QUICK, workers=args.workers, full=bool(args.full),
               concurrent=(not args.full) if args.concurrent is None else args.concurrent)
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.mib:
        cfg["mib"] = args.mib
    sizes = [k * KIB for k in args.sizes_kib] if args.sizes_kib else list(SIZES if args.full else QUICK_SIZES)
    paths = list(dict.fromkeys(args.paths))
    cfg.update(paths=paths, sizes=sizes, window=2 * args.workers,
               tasks={str(s): tasks_for(s, cfg["mib"], cfg["min_tasks"]) for s in sizes}, parsl_logging="off",
               distinct_arrays=DISTINCT, probes=PROBES)
    # Generous: ~30 s to start and stop, the data at >= 20 MiB/s each way, a second per size.
    volume = sum(cfg["tasks"][str(s)] * s for s in sizes) / MIB
    timeout = args.timeout or (60 + volume / 20 + 2 * len(sizes))
    cfg["timeout_per_process_s"] = timeout
    result: dict = {"settings": cfg, "machine": machine(), "runs": [], "memcpy_rounds": []}
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="task-data-bench-")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for rnd in range(1, cfg["rounds"] + 1):
            if not args.no_memcpy:
                result["memcpy_rounds"].append(memcpy(sizes, cfg["mib"]))
            k = (rnd - 1) % len(paths)
            specs = [{"path": path, "round": rnd, "workers": cfg["workers"], "sizes": sizes,
                      "tasks": cfg["tasks"], "window": cfg["window"]} for path in paths[k:] + paths[:k]]
            if cfg["concurrent"]:
                with cf.ThreadPoolExecutor(len(specs)) as pool:
                    done = list(pool.map(lambda spec: run_child(spec, work, timeout), specs))
            else:
                done = (run_child(spec, work, timeout) for spec in specs)
            for r in done:
                result["runs"].append(r)
                log(f"round {rnd}: {r['path']}: {r.get('status')} [{r['process_s']:.0f} s]"
                    + (f"; left in /dev/shm: {r['shm_leftovers']}" if r["shm_leftovers"] else ""))
    finally:
        if tmp is not None:
            tmp.cleanup()
    mem = {str(s): {"mib_per_s": median([m[str(s)]["mib_per_s"] for m in result["memcpy_rounds"]]),
                    "gb_per_s": median([m[str(s)]["gb_per_s"] for m in result["memcpy_rounds"]])}
           for s in sizes} if result["memcpy_rounds"] else {}
    summary = summarize(result["runs"], paths, sizes)
    limits = [r["max_payload_bytes"] for r in result["runs"] if r.get("max_payload_bytes")]
    cfg["max_payload_mib"] = max(limits) / MIB if limits and "inline" in paths else None
    result["summary"] = summary
    result["memcpy"] = mem
    result["ratios"] = ratios(result["runs"], paths, sizes)
    result["targets"] = targets(summary, result["ratios"], sizes)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["table_md"] = table(summary, result["ratios"], mem, cfg)
    result["plots"] = plots(summary, mem, cfg)
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
