#!/usr/bin/env python3
"""Native throughput and latency of dragond from the C++ client (no Parsl DFK).

    python bench/native_bench.py --quick --json-out native.json   # a minute or two
    python bench/native_bench.py --full  --json-out native.json   # several minutes

Builds nothing: it needs the binaries of `make build` (build-out/bin/dragond)
and `bazel build //bench:native_bench` (bazel-bin/bench/native_bench, or
build-out/bin/native_bench, or $DRAGON_BIN_DIR/...), and says so if they are
missing. For each worker count it starts a private dragond
(`dragond start --foreground --port 0 --run-dir TMP --workers W --python
sys.executable`, dragond's default adaptive prefetch, with bench/ on the workers'
PYTHONPATH), then runs
native_bench in throughput and latency mode for a no-op Python task (a
Parsl-packed call of bench/noop_task.py:noop, packed once here) and for the
executable /bin/true, and stops the head. Python throughput is also measured
with a fixed prefetch of 1 (`--prefetch 1 --max-prefetch 1`, no adaptation), in its
own head, to show what the adaptation buys.

The last stdout line is one JSON object (also written to --json-out): the
machine, every raw run, medians, "table_md" (markdown) and "plots"
{"native_throughput_vs_workers": {...}} for bench/run.py. bench/NATIVE.md
reads the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dragon_parsl.local_head import LocalHead

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

QUICK = dict(workers=[1, 2], py_tasks=3000, exe_tasks=1000, latency_tasks=100, repeats=1)
FULL = dict(workers=[1, 2, 4], py_tasks=100_000, exe_tasks=10_000, latency_tasks=1000, repeats=3)
# The comparison head: a fixed queue of one task per worker beyond the running
# one. Then every result must travel to the head before the next-but-one task
# can; dragond's default adapts the queue to short tasks (daemon/scheduler.h),
# which lets the agent coalesce results (agent/head_connection.h).
FIXED_PREFETCH_ARGS = ["--prefetch", "1", "--max-prefetch", "1"]


def log(msg: str) -> None:
    print(f"native_bench: {msg}", file=sys.stderr, flush=True)


def find_binary(name: str, bazel_path: str | None, override: str | None) -> str | None:
    candidates = []
    if override:
        candidates.append(Path(override) / name)
    if os.environ.get("DRAGON_BIN_DIR"):
        candidates.append(Path(os.environ["DRAGON_BIN_DIR"]) / name)
    candidates.append(REPO / "build-out" / "bin" / name)
    if bazel_path:
        candidates.append(REPO / bazel_path)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def make_payload(path: Path, env: dict) -> None:
    """pack_apply_message(noop, (), {}) with noop imported from bench/noop_task.py (by reference)."""
    code = ("import sys, parsl.serialize, noop_task\n"
            "open(sys.argv[1], 'wb').write(parsl.serialize.pack_apply_message(noop_task.noop, (), {}))\n")
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=120)


def start_head(dragond: str, workers: int, workdir: Path, env: dict, extra: list[str]) -> LocalHead:
    head = LocalHead(workdir / f"run-w{workers}-{time.monotonic_ns()}", dragond, workers=workers,
                     python=sys.executable, extra_args=extra, env=env)
    head.start(timeout=60)
    return head


def client_env(head: LocalHead, env: dict) -> dict:
    """`env` with the head's token in $DRAGON_TOKEN (never on native_bench's command line);
    unchanged for a head without authentication."""
    token = head.credentials().token
    return dict(env, DRAGON_TOKEN=token) if token else dict(env)


def run_native(binary: str, head: LocalHead, env: dict, kind: str, mode: str, tasks: int,
               payload: Path, timeout: float) -> dict:
    cmd = [binary, "--head", head.address, "--kind", kind, "--mode", mode, "--tasks", str(tasks),
           "--json", "--timeout-s", str(int(timeout))]
    if kind == "python":
        cmd += ["--payload-file", str(payload)]
    cp = subprocess.run(cmd, env=client_env(head, env), capture_output=True, text=True,
                        timeout=timeout + 30)
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    if cp.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {cp.returncode}: {cp.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


LABELS = {"python": "python no-op", "executable": "executable /bin/true",
          "python_default_prefetch": "python no-op, fixed prefetch 1"}
KINDS = ("python", "executable", "python_default_prefetch")


def table(summary: dict, workers: list[int]) -> str:
    rows = ["dragond's default (adaptive) prefetch unless the row says otherwise; end to end from the C++ "
            "client (bench/native_bench.cc), first submit to last result.", "",
            "| workers | kind | throughput (tasks/s, median) | runs | latency p50 / p99 / mean (us) |",
            "|---|---|---|---|---|"]
    for w in workers:
        for kind in KINDS:
            s = summary[kind][str(w)]
            runs = ", ".join(f"{r:,.0f}" for r in s["throughput_runs"])
            lat = s["latency"]
            lat_txt = (f"{lat['p50_us']:,.0f} / {lat['p99_us']:,.0f} / {lat['mean_us']:,.0f}"
                       if lat else "n/a")
            rows.append(f"| {w} | {LABELS[kind]} | {s['tasks_per_s']:,.0f} | {runs} | {lat_txt} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="workers 1,2, small counts (default)")
    size.add_argument("--full", action="store_true", help="workers 1,2,4, 100k Python tasks, 3 repeats")
    p.add_argument("--json-out", help="also write the JSON object here")
    p.add_argument("--workers", help="comma-separated worker counts (overrides the preset)")
    p.add_argument("--py-tasks", type=int, help="Python no-op tasks per throughput run")
    p.add_argument("--exe-tasks", type=int, help="/bin/true tasks per throughput run")
    p.add_argument("--latency-tasks", type=int, help="tasks per latency run")
    p.add_argument("--repeats", type=int, help="throughput runs per point (median reported)")
    p.add_argument("--bin-dir", help="where dragond and native_bench are (default: build-out/bin, "
                   "then bazel-bin/bench for native_bench)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per native_bench run")
    args = p.parse_args()
    cfg = dict(FULL if args.full else QUICK)
    if args.workers:
        cfg["workers"] = [int(w) for w in args.workers.split(",")]
    for key in ("py_tasks", "exe_tasks", "latency_tasks", "repeats"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)

    dragond = find_binary("dragond", None, args.bin_dir)
    native = find_binary("native_bench", "bazel-bin/bench/native_bench", args.bin_dir)
    missing = []
    if dragond is None:
        missing.append("dragond (run 'make build': build-out/bin/dragond)")
    if native is None:
        missing.append("native_bench (run 'bazel build //bench:native_bench': bazel-bin/bench/native_bench)")
    if missing:
        msg = "native_bench: missing binaries: " + "; ".join(missing) + ". This script builds nothing."
        print(msg, file=sys.stderr)
        print(json.dumps({"error": msg}))
        return 2

    env = dict(os.environ)
    env["PYTHONPATH"] = str(BENCH) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("DRAGON_HEAD", None)
    result: dict = {"machine": machine(), "config": cfg, "binaries": {"dragond": dragond, "native_bench": native},
                    "runs": []}
    with tempfile.TemporaryDirectory(prefix="native-bench-") as tmp:
        work = Path(tmp)
        env["DRAGON_HOME"] = str(work / "home")
        payload = work / "noop.payload"
        make_payload(payload, env)
        result["python_payload_bytes"] = payload.stat().st_size
        for w in cfg["workers"]:
            head = start_head(dragond, w, work, env, FIXED_PREFETCH_ARGS)
            log(f"{w} worker(s), fixed prefetch 1: dragond at {head.address}")
            try:
                for rep in range(cfg["repeats"]):
                    r = run_native(native, head, env, "python", "throughput", cfg["py_tasks"], payload,
                                   args.timeout)
                    r.update(kind="python_default_prefetch", workers=w, repeat=rep, prefetch=1,
                             measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                    log(f"  python throughput (fixed prefetch 1): {r['tasks_per_s']:,.0f} tasks/s")
                    result["runs"].append(r)
            finally:
                head.stop()
            head = start_head(dragond, w, work, env, [])
            log(f"{w} worker(s), default adaptive prefetch: dragond at {head.address}")
            try:
                for rep in range(cfg["repeats"]):
                    for kind in ("python", "executable"):
                        n = cfg["py_tasks"] if kind == "python" else cfg["exe_tasks"]
                        r = run_native(native, head, env, kind, "throughput", n, payload, args.timeout)
                        r.update(workers=w, repeat=rep, prefetch="adaptive", measured_at=datetime.now(timezone.utc).isoformat(
                            timespec="seconds"))
                        log(f"  {kind} throughput: {r['tasks_per_s']:,.0f} tasks/s ({n} tasks)")
                        result["runs"].append(r)
                for kind in ("python", "executable"):
                    r = run_native(native, head, env, kind, "latency", cfg["latency_tasks"], payload,
                                   args.timeout)
                    r.update(workers=w, repeat=0, prefetch="adaptive", measured_at=datetime.now(timezone.utc).isoformat(
                        timespec="seconds"))
                    log(f"  {kind} latency: p50 {r['p50_us']:,.0f} us, p99 {r['p99_us']:,.0f} us")
                    result["runs"].append(r)
            finally:
                head.stop()

    summary: dict = {}
    for kind in KINDS:
        summary[kind] = {}
        for w in cfg["workers"]:
            tp = [r["tasks_per_s"] for r in result["runs"]
                  if r["kind"] == kind and r["mode"] == "throughput" and r["workers"] == w]
            lat = next((r for r in result["runs"]
                        if r["kind"] == kind and r["mode"] == "latency" and r["workers"] == w), None)
            summary[kind][str(w)] = {
                "tasks_per_s": median(tp), "throughput_runs": tp,
                "latency": {k: lat[k] for k in ("p50_us", "p99_us", "mean_us", "hops_mean_us")} if lat else None}
    result["summary"] = summary
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["table_md"] = table(summary, cfg["workers"])
    result["plots"] = {"native_throughput_vs_workers": {
        "x": cfg["workers"],
        "series": {LABELS[k]: [summary[k][str(w)]["tasks_per_s"] for w in cfg["workers"]]
                   for k in KINDS},
        "xlabel": "workers", "ylabel": "tasks/s"}}
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
