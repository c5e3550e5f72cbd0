#!/usr/bin/env python3
"""Native Python task APIs, no Parsl: no-op throughput and sequential round trip (issue 15).

    python bench/native_py_bench.py --quick --json-out native_py.json   # ~30 s
    python bench/native_py_bench.py --full  --json-out native_py.json   # 3 rounds, 100,000 tasks

From one Python process with --workers workers (default 2), each of:
  dragon-pool   dragon_parsl.DragonPoolExecutor(max_workers=W), a concurrent.futures.Executor on
                the Dragon service (reported "not available: <ImportError>" where it is missing)
  processpool   concurrent.futures.ProcessPoolExecutor(max_workers=W)
  ray           Ray's task API: ray.init(num_cpus=W, include_dashboard=False), a @ray.remote no-op,
                ray.get of the refs (reported "not installed" where `import ray` fails)
runs, after a warm-up (4 tasks per worker, outside the clock):
  latency     M tasks one at a time, submit -> result (p50/p99/mean/min/max, raw samples kept)
  throughput  N no-op tasks submitted at once, then every result; tasks/s from the first submit
              to the last result, and the CPU of this process (client_cpu_s)
The no-op returns its argument (checked). It is this module's `noop`, imported by reference on the
workers (bench/ is put on PYTHONPATH), like a function of a user's module.

Each executor runs in its own process (`native_py_bench.py --child SPEC.json`, its own session,
killed as a group afterwards, so Ray's daemons and pool workers never outlive it), once per
round; the order of the executors is rotated from round to round (the machine drifts), and the
ratios are medians of per-round ratios. The issue's targets for DragonPoolExecutor (>= 15,000
tasks/s, p50 <= 0.6 ms) are in "targets".

The last stdout line is one JSON object (also written to --json-out): settings, machine, every
run, "summary", "ratios", "targets" and "table_md" for bench/run.py (hook `native_py`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

EXECUTORS = ("dragon-pool", "processpool", "ray")
NAMES = {"dragon-pool": "dragon_parsl DragonPoolExecutor", "processpool": "concurrent.futures ProcessPoolExecutor",
         "ray": "Ray tasks (@ray.remote, ray.get)"}
QUICK = dict(tasks=1000, samples=50, rounds=1)
FULL = dict(tasks=100_000, samples=1000, rounds=3)
TARGET_TASKS_PER_S = 15_000  # issue 15: DragonPoolExecutor, 2 workers, one Python process
TARGET_P50_MS = 0.6


def noop(x):
    return x


def log(msg: str) -> None:
    print(f"native_py_bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics
# The same percentiles as the Parsl benchmarks' (parsl_bench.py: stdlib only at import).
from parsl_bench import latency_stats  # noqa: E402


def median(xs: list):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- one executor, in the child
class Unavailable(Exception):
    """The executor cannot run here (not installed, not importable): reported, not a failure."""


def measure(submit, wait_one, wait_all, tasks: int, samples: int, workers: int) -> dict:
    """submit(i) -> handle; wait_one(handle) -> result; wait_all(handles) -> results."""
    wait_all([submit(i) for i in range(4 * workers)])  # warm: workers up, the function cached
    lat = []
    for i in range(samples):
        t = time.perf_counter()
        r = wait_one(submit(i))
        lat.append((time.perf_counter() - t) * 1000)
        if r != i:
            raise RuntimeError(f"latency task {i} returned {r!r}")
    latency = latency_stats(lat)
    latency["raw_ms"] = [round(x, 4) for x in lat]
    c0, t0 = time.process_time(), time.perf_counter()
    handles = [submit(i) for i in range(tasks)]
    submitted = time.perf_counter()
    results = wait_all(handles)
    t1, c1 = time.perf_counter(), time.process_time()
    bad = [i for i, r in enumerate(results) if r != i]
    if bad:
        raise RuntimeError(f"{len(bad)} no-op tasks returned something else (task {bad[0]}: {results[bad[0]]!r})")
    total = t1 - t0
    return {"latency": latency,
            "throughput": {"tasks": tasks, "submit_s": submitted - t0, "total_s": total,
                           "tasks_per_s": tasks / total, "client_cpu_s": c1 - c0,
                           "client_cpu_us_per_task": (c1 - c0) / tasks * 1e6}}


def futures_run(ex_cls, workers: int, tasks: int, samples: int) -> dict:
    with ex_cls(max_workers=workers) as ex:
        return measure(lambda i: ex.submit(noop, i), lambda f: f.result(),
                       lambda fs: [f.result() for f in fs], tasks, samples, workers)


def dragon_pool_class():
    try:
        import dragon_parsl
    except ImportError as e:
        raise Unavailable(f"not available: {type(e).__name__}: {e}") from e
    cls = getattr(dragon_parsl, "DragonPoolExecutor", None)
    if cls is None:
        try:
            from dragon_parsl.pool_executor import DragonPoolExecutor as cls  # noqa: N813
        except ImportError as e:
            raise Unavailable(f"not available: {type(e).__name__}: {e}") from e
    return cls


def ray_run(workers: int, tasks: int, samples: int) -> dict:
    try:
        import ray
    except ImportError as e:
        raise Unavailable(f"not installed ({type(e).__name__}: {e})") from e
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, _temp_dir=tmp)
        init_s = time.perf_counter() - t
        remote = ray.remote(noop)
        try:
            r = measure(lambda i: remote.remote(i), ray.get, ray.get, tasks, samples, workers)
        finally:
            ray.shutdown()
        r["init_s"] = init_s
        r["version"] = ray.__version__
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(spec: dict) -> dict:
    name, w = spec["executor"], spec["workers"]
    out: dict = {"executor": name, "round": spec["round"], "workers": w, "pid": os.getpid()}
    t0 = time.perf_counter()
    try:
        if name == "processpool":
            from concurrent.futures import ProcessPoolExecutor

            out.update(futures_run(ProcessPoolExecutor, w, spec["tasks"], spec["samples"]))
        elif name == "dragon-pool":
            cls = dragon_pool_class()
            out["module"] = cls.__module__
            out.update(futures_run(cls, w, spec["tasks"], spec["samples"]))
        elif name == "ray":
            out.update(ray_run(w, spec["tasks"], spec["samples"]))
        else:
            raise Unavailable(f"unknown executor {name!r}")
        out["status"] = "ok"
    except Unavailable as e:
        out["status"] = str(e)
    except Exception as e:  # noqa: BLE001  (recorded; the parent goes on)
        out["status"] = f"failed: {type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
    out["elapsed_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- the parent
def child_env() -> dict:
    env = dict(os.environ)
    # bench/ (this module's noop, imported by reference on the workers) and this checkout's dragon_parsl.
    paths = [str(BENCH), str(REPO / "parsl_plugin")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("DRAGON_HEAD", None)  # DragonPoolExecutor starts its own private head
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def run_child(spec: dict, work: Path, timeout: float) -> dict:
    stem = f"r{spec['round']}-{spec['executor']}"
    spec_path, out_path = work / f"{stem}-spec.json", work / f"{stem}.json"
    spec_path.write_text(json.dumps(dict(spec, out=str(out_path))))
    t0 = time.perf_counter()
    with open(work / f"{stem}.log", "w") as logf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                env=child_env(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(REPO))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's daemons, pool workers: nothing outlives the round
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.perf_counter() - t0
    try:
        r = json.loads(out_path.read_text())
    except (OSError, ValueError):
        tail = (work / f"{stem}.log").read_text(errors="replace").strip()[-800:]
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exited with code {rc}"
        r = {"executor": spec["executor"], "round": spec["round"], "status": f"failed: {why}; {tail}"}
    r["process_s"] = wall
    return r


def summarize(runs: list, executors: list) -> dict:
    s = {}
    for e in executors:
        rs = [r for r in runs if r["executor"] == e and r.get("status") == "ok"]
        other = [r["status"] for r in runs if r["executor"] == e and r.get("status") != "ok"]
        pooled = [x for r in rs for x in r["latency"]["raw_ms"]]
        s[e] = {"status": "ok" if rs else (other[0] if other else "not run"),
                "rounds_ok": len(rs), "problems": other,
                "tasks_per_s": median([r["throughput"]["tasks_per_s"] for r in rs]),
                "runs": [r["throughput"]["tasks_per_s"] for r in rs],
                "client_cpu_us_per_task": median([r["throughput"]["client_cpu_us_per_task"] for r in rs]),
                "latency": latency_stats(pooled) if pooled else None,
                "round_p50_ms": [r["latency"]["p50_ms"] for r in rs]}
    return s


def round_ratios(runs: list, a: str, b: str) -> dict:
    per = []
    for rnd in sorted({r["round"] for r in runs}):
        ra = next((r for r in runs if r["round"] == rnd and r["executor"] == a and r.get("status") == "ok"), None)
        rb = next((r for r in runs if r["round"] == rnd and r["executor"] == b and r.get("status") == "ok"), None)
        if ra and rb:
            per.append(ra["throughput"]["tasks_per_s"] / rb["throughput"]["tasks_per_s"])
    return {"median": median(per), "rounds": per}


def ratios(runs: list, summary: dict) -> dict:
    out = {"tasks_per_s": {}, "latency_p50": {}}
    for ref in ("processpool", "ray"):
        if ref in summary:
            out["tasks_per_s"][f"dragon-pool/{ref}"] = round_ratios(runs, "dragon-pool", ref)
            a, b = summary.get("dragon-pool", {}).get("latency"), summary[ref].get("latency")
            out["latency_p50"][f"dragon-pool/{ref}"] = a["p50_ms"] / b["p50_ms"] if a and b else None
    return out


def targets(summary: dict, workers: int) -> list:
    d = summary.get("dragon-pool")
    if d is None:
        return []
    ok = d["status"] == "ok"
    tps = d["tasks_per_s"] if ok else None
    p50 = d["latency"]["p50_ms"] if ok and d["latency"] else None
    why = "" if ok else f" ({d['status'][:200]})"
    return [
        {"issue": 15, "target": f"native Python API (DragonPoolExecutor, {workers} workers): no-op tasks/s",
         "goal": f">= {TARGET_TASKS_PER_S:,}", "measured": tps,
         "status": "n/a" if tps is None else ("PASS" if tps >= TARGET_TASKS_PER_S else "MISS"),
         "detail": "bench/native_py_bench.py: median over rounds, all submitted at once" + why},
        {"issue": 15, "target": f"native Python API (DragonPoolExecutor, {workers} workers): sequential round trip p50",
         "goal": f"<= {TARGET_P50_MS} ms", "measured": p50,
         "status": "n/a" if p50 is None else ("PASS" if p50 <= TARGET_P50_MS else "MISS"),
         "detail": "bench/native_py_bench.py: p50 of the samples of all rounds, ms" + why},
    ]


def fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def met(x, goal: float, at_least: bool) -> str:
    if x is None:
        return "-"
    return "met" if (x >= goal if at_least else x <= goal) else "not met"


def table(summary: dict, rat: dict, cfg: dict) -> str:
    L = [f"One Python process, {cfg['workers']} workers, no Parsl; {cfg['tasks']:,} no-op tasks submitted at once "
         f"(throughput) and {cfg['samples']:,} one at a time (round trip); {cfg['rounds']} round(s), one process "
         "per executor and round, executors in a rotating order.", "",
         f"| executor | tasks/s (median) | each round | round trip p50 ms | p99 ms | mean ms | "
         f"client CPU us/task | target >= {TARGET_TASKS_PER_S:,}/s | target p50 <= {TARGET_P50_MS} ms |",
         "|---|---|---|---|---|---|---|---|---|"]
    for e, s in summary.items():
        if s["status"] != "ok":
            L.append(f"| {NAMES.get(e, e)} | {s['status'][:300].replace('|', '/')} | | | | | | | |")
            continue
        lat = s["latency"] or {}
        is_dragon = e == "dragon-pool"
        L.append(f"| {NAMES.get(e, e)} | {fmt(s['tasks_per_s'])} | {', '.join(fmt(x) for x in s['runs'])} | "
                 f"{fmt(lat.get('p50_ms'), 3)} | {fmt(lat.get('p99_ms'), 3)} | {fmt(lat.get('mean_ms'), 3)} | "
                 f"{fmt(s['client_cpu_us_per_task'])} | "
                 f"{met(s['tasks_per_s'], TARGET_TASKS_PER_S, True) if is_dragon else ''} | "
                 f"{met(lat.get('p50_ms'), TARGET_P50_MS, False) if is_dragon else ''} |")
    lines = []
    for ref in ("processpool", "ray"):
        t = rat["tasks_per_s"].get(f"dragon-pool/{ref}", {})
        p = rat["latency_p50"].get(f"dragon-pool/{ref}")
        if t.get("median") is not None or p is not None:
            lines.append(f"DragonPoolExecutor vs {NAMES[ref]}: throughput {fmt(t.get('median'), 2)}x "
                         f"(rounds: {', '.join(f'{x:.2f}' for x in t.get('rounds', []))}), "
                         f"round-trip p50 {fmt(p, 2)}x")
    if lines:
        L += ["", "Ratios (throughput: median of per-round ratios; p50: of the pooled samples):", ""]
        L += [f"- {x}" for x in lines]
    return "\n".join(L)


def machine() -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cores": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(Path(sys.argv[2]).read_text())
        r = child(spec)
        Path(spec["out"]).write_text(json.dumps(r))
        print(json.dumps({k: v for k, v in r.items() if k != "latency"}), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 round, 1,000 tasks, 50 samples (default)")
    size.add_argument("--full", action="store_true", help="3 rounds, 100,000 tasks, 1,000 samples")
    p.add_argument("--json-out", help="also write the JSON object here")
    p.add_argument("--executors", nargs="+", choices=EXECUTORS, default=list(EXECUTORS))
    p.add_argument("--workers", type=int, default=2, help="workers of every executor (default 2, the issue's)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--tasks", type=int, help="no-op tasks per throughput run")
    p.add_argument("--samples", type=int, help="sequential round trips per run")
    p.add_argument("--timeout", type=float, default=0, help="seconds per executor process (default from the counts)")
    p.add_argument("--work-dir", help="keep each process's spec, JSON and log here (default: a temp dir)")
    args = p.parse_args()
    cfg = dict(FULL if args.full else QUICK, workers=args.workers)
    for k in ("rounds", "tasks", "samples"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    timeout = args.timeout or (90 + cfg["tasks"] / 250 + cfg["samples"] * 0.05)
    executors = list(dict.fromkeys(args.executors))
    result: dict = {"machine": machine(), "config": dict(cfg, executors=executors, timeout_per_process_s=timeout),
                    "runs": []}
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="native-py-bench-")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for rnd in range(1, cfg["rounds"] + 1):
            k = (rnd - 1) % len(executors)
            for e in executors[k:] + executors[:k]:
                r = run_child({"executor": e, "round": rnd, "workers": cfg["workers"], "tasks": cfg["tasks"],
                               "samples": cfg["samples"]}, work, timeout)
                result["runs"].append(r)
                if r.get("status") == "ok":
                    log(f"round {rnd}: {e:12s} {r['throughput']['tasks_per_s']:,.0f} tasks/s, round trip p50 "
                        f"{r['latency']['p50_ms']:.3f} ms p99 {r['latency']['p99_ms']:.3f} ms [{r['process_s']:.0f} s]")
                else:
                    log(f"round {rnd}: {e:12s} {r.get('status')}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    summary = summarize(result["runs"], executors)
    result["summary"] = summary
    result["ratios"] = ratios(result["runs"], summary)
    result["targets"] = targets(summary, cfg["workers"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["table_md"] = table(summary, result["ratios"], cfg)
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
