"""No-op python_app throughput through Parsl, one executor per process.

Run one measurement:   python bench/parsl_noop.py run --executor dragon --tasks 10000
Compare side by side:  python bench/parsl_noop.py compare --tasks 10000 --rounds 3

`compare` alternates executors round by round (the machine drifts, so only
runs taken side by side are compared) and prints raw numbers, the median per
executor and ratios against ThreadPoolExecutor and HighThroughputExecutor.
Every executor runs with the same Parsl logging settings and the same number
of workers.
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

EXECUTORS = ("dragon", "threadpool", "htex")


def make_config(name: str, workers: int, run_dir: str):
    from parsl.config import Config

    if name == "dragon":
        from dragon_parsl import DragonExecutor

        executor = DragonExecutor(label="dragon", workers_per_node=workers)
    elif name == "threadpool":
        from parsl.executors import ThreadPoolExecutor

        executor = ThreadPoolExecutor(label="threadpool", max_threads=workers)
    elif name == "htex":
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        executor = HighThroughputExecutor(
            label="htex", max_workers_per_node=workers, cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    else:
        raise SystemExit(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    return Config(executors=[executor], run_dir=run_dir, strategy="none")


def run_once(name: str, tasks: int, workers: int) -> dict:
    import parsl
    from parsl import python_app

    @python_app
    def noop(x):
        return x

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as run_dir:
        parsl.load(make_config(name, workers, run_dir))
        try:
            # Warm up: workers started and connected before the clock starts.
            [f.result() for f in [noop(i) for i in range(2 * workers)]]
            start = time.perf_counter()
            futures = [noop(i) for i in range(tasks)]
            submitted = time.perf_counter()
            for i, f in enumerate(futures):
                if f.result() != i:
                    raise SystemExit(f"{name}: task {i} returned {f.result()!r}")
            end = time.perf_counter()
        finally:
            parsl.dfk().cleanup()
            parsl.clear()
    return {"executor": name, "tasks": tasks, "workers": workers,
            "submit_s": submitted - start, "total_s": end - start,
            "tasks_per_s": tasks / (end - start)}


def machine() -> dict:
    import parsl

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "parsl": parsl.__version__, "host": platform.node()}


def compare(args) -> int:
    env = dict(os.environ)
    # HTEX starts its interchange from PATH: this interpreter's bin/ goes first.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    results = []
    for r in range(args.rounds):
        for name in args.executors:
            cmd = [sys.executable, __file__, "run", "--executor", name, "--tasks", str(args.tasks),
                   "--workers", str(args.workers)]
            cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            if cp.returncode != 0:
                print(f"round {r + 1}: {name} failed ({cp.returncode}):\n{cp.stderr[-3000:]}", file=sys.stderr)
                return 1
            res = json.loads(cp.stdout.strip().splitlines()[-1])
            res["round"] = r + 1
            results.append(res)
            print(f"round {r + 1}: {name:10s} {res['tasks_per_s']:9.1f} tasks/s "
                  f"({res['total_s']:.2f} s for {res['tasks']})", flush=True)
    med = {n: statistics.median(x["tasks_per_s"] for x in results if x["executor"] == n)
           for n in args.executors}
    report = {"machine": machine(), "tasks": args.tasks, "workers": args.workers,
              "rounds": args.rounds, "runs": results, "median_tasks_per_s": med}
    print("\n| executor | median tasks/s | runs (tasks/s) | vs threadpool | vs htex |")
    print("|---|---|---|---|---|")
    for n in args.executors:
        runs = ", ".join(f"{x['tasks_per_s']:.0f}" for x in results if x["executor"] == n)
        vs_tp = f"{med[n] / med['threadpool']:.2f}x" if "threadpool" in med else "-"
        vs_htex = f"{med[n] / med['htex']:.2f}x" if "htex" in med else "-"
        print(f"| {n} | {med[n]:.0f} | {runs} | {vs_tp} | {vs_htex} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="one measurement of one executor (prints JSON)")
    run.add_argument("--executor", choices=EXECUTORS, required=True)
    run.add_argument("--tasks", type=int, default=10000)
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    cmp_ = sub.add_parser("compare", help="executors side by side, alternating")
    cmp_.add_argument("--tasks", type=int, default=10000)
    cmp_.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    cmp_.add_argument("--rounds", type=int, default=3)
    cmp_.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=EXECUTORS)
    cmp_.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    cmp_.add_argument("--json", help="also write the full report here")
    args = p.parse_args()
    if args.cmd == "run":
        print(json.dumps(run_once(args.executor, args.tasks, args.workers)))
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
