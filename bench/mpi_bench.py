#!/usr/bin/env python3
"""Launch rate of small MPI jobs (issue 13): 2-rank jobs of a trivial MPICH program, side by side.

    python bench/mpi_bench.py --quick --json-out mpi.json   # 20 jobs per method, 1 round, ~1 min
    python bench/mpi_bench.py --full  --json-out mpi.json   # 200 jobs per method, 3 rounds, ~10 min

Methods, each launching N jobs of `hello` (rank 0 prints one line; MPI_Init/Finalize) with
2 ranks on this node, CONCURRENCY jobs in flight (a new one as soon as one ends):
  plain     a loop of `mpiexec.hydra -n 2 -ppn 2 -hosts HOST hello` processes (the floor:
            nothing but the launcher)
  mpi_app   dragon_parsl's @mpi_app on a DragonExecutor (embedded dragond): submit, the app's
            future resolves when the job runs, rank 0's first line read through job["out"]
            (HeadService.TaskIO), job.wait()
  bash_app  Parsl's MPI API on a DragonExecutor: a bash_app running `$PARSL_MPI_PREFIX hello`
            with parsl_resource_specification {"num_ranks": 2, "ranks_per_node": 2}
  mpiexecutor  Parsl's own MPIExecutor (HighThroughputExecutor in MPI mode, LocalProvider, one
            block, max_workers_per_block = CONCURRENCY, mpi_launcher="mpiexec"): the same
            bash_app with $PARSL_MPI_PREFIX and {"num_nodes": 1, "ranks_per_node": 2}
Each method runs in its own process (a fresh DataFlowKernel / head), methods alternate round by
round in a rotating order (the machine drifts), and each measures after 3 warm-up jobs:
  launches_per_s       N / (first submit .. last job's end)
  first_output_ms      submit -> rank 0's first line in the client (plain: the line read from
                       mpiexec's stdout; mpi_app: job["out"].recv() returned); the bash_app
                       methods write rank 0's output to a file, so theirs is submit -> the app's
                       end (the output is there by then, not earlier)
  job_ms               submit -> the job's end, per job
The last stdout line is one JSON object (also --json-out): raw per-job times, medians per method
and round, "table_md" and "targets" for bench/run.py: mpi_app and bash_app at >= 0.8x the plain
loop, and ahead of MPIExecutor.

Two cores: a 2-rank job takes the whole node, so CONCURRENCY 1 is the comparison (dragond
places one 2-rank job per 2 cores: it does not oversubscribe); --concurrency 2 adds a row where
the plain loop and MPIExecutor oversubscribe and the Dragon methods queue.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

METHODS = ("plain", "mpi_app", "bash_app", "mpiexecutor")
WARMUP = 3
RANKS = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- one method, in its own process

def run_plain(hello: str, n: int, conc: int) -> list[dict]:
    host = socket.gethostname()
    cmd = ["mpiexec.hydra", "-n", str(RANKS), "-ppn", str(RANKS), "-hosts", host, hello]

    def one(_):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        line = p.stdout.readline()
        t1 = time.perf_counter()
        p.stdout.read()
        rc = p.wait()
        t2 = time.perf_counter()
        assert rc == 0 and line.startswith(b"hello from rank 0"), (rc, line)
        return {"submit": t0, "first_output": t1, "end": t2}

    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(one, range(WARMUP)))
        return list(pool.map(one, range(n)))


def _dragon_config(tmp: Path, conc: int):
    from parsl.config import Config
    from dragon_parsl import DragonExecutor
    return Config(executors=[DragonExecutor(label="dragon", workers_per_node=2)],
                  run_dir=str(tmp / "runinfo"), strategy="none")


def run_mpi_app(hello: str, n: int, conc: int, tmp: Path) -> list[dict]:
    import parsl
    from dragon_parsl import Policy, mpi_app

    @mpi_app
    def hello_app():
        return hello, str(tmp), Policy(ranks_per_node=RANKS), RANKS, []

    def one(_):
        t0 = time.perf_counter()
        job = hello_app().result(timeout=120)
        line = job["out"].recv(timeout=120)
        t1 = time.perf_counter()
        rc = job.wait(120)
        t2 = time.perf_counter()
        assert rc == 0 and line.startswith("hello from rank 0"), (rc, line)
        return {"submit": t0, "first_output": t1, "end": t2}

    parsl.load(_dragon_config(tmp, conc))
    try:
        with ThreadPoolExecutor(conc) as pool:
            list(pool.map(one, range(WARMUP)))
            return list(pool.map(one, range(n)))
    finally:
        parsl.dfk().cleanup()
        parsl.clear()


def _bash_rows(app, spec: dict, n: int, conc: int, tmp: Path) -> list[dict]:
    def one(i):
        out = tmp / f"out-{i}-{threading.get_ident()}"
        t0 = time.perf_counter()
        rc = app(stdout=str(out), stderr=str(out) + ".err", parsl_resource_specification=dict(spec)).result(timeout=300)
        t1 = time.perf_counter()
        text = out.read_text()
        assert rc == 0 and text.startswith("hello from rank 0"), (rc, text, Path(str(out) + ".err").read_text())
        return {"submit": t0, "first_output": t1, "end": t1}

    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(one, range(WARMUP)))
        return list(pool.map(one, range(WARMUP, WARMUP + n)))


def run_bash_app(hello: str, n: int, conc: int, tmp: Path) -> list[dict]:
    import parsl
    from parsl import bash_app

    @bash_app
    def hello_bash(stdout=None, stderr=None, parsl_resource_specification=None):
        return f"$PARSL_MPI_PREFIX {hello}"

    parsl.load(_dragon_config(tmp, conc))
    try:
        return _bash_rows(hello_bash, {"num_ranks": RANKS, "ranks_per_node": RANKS}, n, conc, tmp)
    finally:
        parsl.dfk().cleanup()
        parsl.clear()


def run_mpiexecutor(hello: str, n: int, conc: int, tmp: Path) -> list[dict]:
    import parsl
    from parsl import bash_app
    from parsl.config import Config
    from parsl.executors import MPIExecutor
    from parsl.launchers import SimpleLauncher
    from parsl.providers import LocalProvider

    @bash_app
    def hello_bash(stdout=None, stderr=None, parsl_resource_specification=None):
        return f"$PARSL_MPI_PREFIX {hello}"

    # MPIExecutor takes its nodes from the batch system (Slurm or PBS) only: a PBS node file
    # naming this host once per concurrent job, as Parsl's own tests do.
    nodefile = tmp / "nodefile"
    nodefile.write_text((socket.gethostname() + "\n") * conc)
    os.environ["PBS_NODEFILE"] = str(nodefile)
    parsl.load(Config(executors=[MPIExecutor(label="mpi", max_workers_per_block=conc, mpi_launcher="mpiexec",
                                             provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                                                    launcher=SimpleLauncher()))],
                      run_dir=str(tmp / "runinfo"), strategy="none"))
    try:
        return _bash_rows(hello_bash, {"num_nodes": 1, "ranks_per_node": RANKS}, n, conc, tmp)
    finally:
        parsl.dfk().cleanup()
        parsl.clear()


def run_method(method: str, hello: str, n: int, conc: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"mpi-bench-{method}-"))
    t0 = time.perf_counter()
    if method == "plain":
        rows = run_plain(hello, n, conc)
    else:
        rows = {"mpi_app": run_mpi_app, "bash_app": run_bash_app, "mpiexecutor": run_mpiexecutor}[method](
            hello, n, conc, tmp)
    setup_and_all = time.perf_counter() - t0
    start = min(r["submit"] for r in rows)
    end = max(r["end"] for r in rows)
    return {
        "method": method, "jobs": n, "concurrency": conc,
        "launches_per_s": n / (end - start),
        "first_output_ms": [1000 * (r["first_output"] - r["submit"]) for r in rows],
        "job_ms": [1000 * (r["end"] - r["submit"]) for r in rows],
        "process_s": setup_and_all,
    }


# ---------------------------------------------------------------- the driver

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="20 jobs per method, 1 round, concurrency 1")
    g.add_argument("--full", action="store_true", help="200 jobs per method, 3 rounds, concurrency 1 and 2 (default)")
    p.add_argument("--jobs", type=int, default=0, help="jobs per method and round")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--concurrency", type=int, action="append", default=[],
                   help="jobs in flight (repeatable); default 1 (quick) or 1 and 2 (full)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--json-out")
    p.add_argument("--one", nargs=3, metavar=("METHOD", "JOBS", "CONC"), help=argparse.SUPPRESS)
    p.add_argument("--hello", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # a child: one method, one round
        method, n, conc = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(run_method(method, args.hello, n, conc)), flush=True)
        return 0

    quick = args.quick
    jobs = args.jobs or (20 if quick else 200)
    rounds = args.rounds or (1 if quick else 3)
    concs = args.concurrency or ([1] if quick else [1, 2])
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} (methods: {', '.join(METHODS)})")

    import mpi_programs
    work = Path(tempfile.mkdtemp(prefix="mpi-bench-"))
    hello = mpi_programs.build(work, ["hello"])["hello"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "parsl_plugin") + os.pathsep + env.get("PYTHONPATH", "")
    if (REPO / "build-out" / "bin" / "dragond").exists():
        env.setdefault("DRAGON_BIN_DIR", str(REPO / "build-out" / "bin"))
    env.pop("DRAGON_HEAD", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")

    runs: list[dict] = []
    errors: list[str] = []
    t_start = time.time()
    for conc in concs:
        for rnd in range(rounds):
            order = methods[rnd % len(methods):] + methods[:rnd % len(methods)]
            for m in order:
                log(f"mpi_bench: {m}, concurrency {conc}, round {rnd + 1}/{rounds}, {jobs} jobs ...")
                cmd = [sys.executable, __file__, "--one", m, str(jobs), str(conc), "--hello", hello]
                try:
                    cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                except subprocess.TimeoutExpired:
                    errors.append(f"{m} (concurrency {conc}, round {rnd + 1}): timed out")
                    continue
                lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
                if cp.returncode != 0 or not lines:
                    errors.append(f"{m} (concurrency {conc}, round {rnd + 1}): exit {cp.returncode}: "
                                  f"{cp.stderr.strip()[-600:]}")
                    log(errors[-1])
                    continue
                r = json.loads(lines[-1])
                r["round"] = rnd + 1
                runs.append(r)
                log(f"  {r['launches_per_s']:.1f} launches/s, first output median "
                    f"{med(r['first_output_ms']):.1f} ms")

    summary: dict = {}
    for conc in concs:
        for m in methods:
            rs = [r for r in runs if r["method"] == m and r["concurrency"] == conc]
            if not rs:
                continue
            summary.setdefault(str(conc), {})[m] = {
                "launches_per_s": med([r["launches_per_s"] for r in rs]),
                "launches_per_s_rounds": [r["launches_per_s"] for r in rs],
                "first_output_ms": med([x for r in rs for x in r["first_output_ms"]]),
                "first_output_ms_p90": _pct([x for r in rs for x in r["first_output_ms"]], 90),
                "job_ms": med([x for r in rs for x in r["job_ms"]]),
            }
    # Ratios within each round (the methods of a round ran back to back, so the machine's drift
    # between rounds cancels out), then their median over rounds.
    for conc in concs:
        s = summary.get(str(conc), {})
        for m in methods:
            for base in ("plain", "mpiexecutor"):
                ratios = []
                for rnd in range(1, rounds + 1):
                    a = [r for r in runs if r["method"] == m and r["concurrency"] == conc and r["round"] == rnd]
                    b = [r for r in runs if r["method"] == base and r["concurrency"] == conc and r["round"] == rnd]
                    if a and b:
                        ratios.append(a[0]["launches_per_s"] / b[0]["launches_per_s"])
                if m in s and ratios:
                    s[m][f"vs_{base}_rounds"] = ratios
                    s[m][f"vs_{base}"] = med(ratios)
    targets = []
    for conc in concs:
        s = summary.get(str(conc), {})
        if conc != concs[0]:
            continue  # the goal is for the first (headline) concurrency
        for m in ("mpi_app", "bash_app"):
            row = s.get(m) or {}
            for base, goal, ok in (("plain", ">= 0.8x", lambda x: x >= 0.8), ("mpiexecutor", "> 1x", lambda x: x > 1)):
                ratio = row.get(f"vs_{base}")
                if ratio is None:
                    continue
                other = (s.get(base) or {}).get("launches_per_s") or 0
                name = "a plain mpiexec loop" if base == "plain" else "Parsl's MPIExecutor"
                targets.append({"target": f"{m}: 2-rank launches/s vs {name} (concurrency {conc})",
                                "goal": goal, "measured": round(ratio, 3), "status": "PASS" if ok(ratio) else "MISS",
                                "detail": f"median over {len(row[f'vs_{base}_rounds'])} round(s) of the ratio within "
                                          f"the round; medians of rates {row['launches_per_s']:.1f} vs {other:.1f}/s"})
    table = ["| concurrency | method | launches/s (median of rounds) | x plain (median of per-round ratios) | submit -> rank 0's first output, median (p90) ms | job ms (median) |",
             "|---|---|---|---|---|---|"]
    for conc in concs:
        s = summary.get(str(conc), {})
        plain = (s.get("plain") or {}).get("launches_per_s")
        for m in methods:
            if m not in s:
                continue
            row = s[m]
            ratio = f"{row['vs_plain']:.2f}x" if row.get("vs_plain") is not None else "n/a"
            fo = f"{row['first_output_ms']:.1f} ({row['first_output_ms_p90']:.1f})"
            if m in ("bash_app", "mpiexecutor"):
                fo += " (to the end)"
            table.append(f"| {conc} | {m} | {row['launches_per_s']:.1f} | {ratio} | {fo} | {row['job_ms']:.1f} |")
    result = {
        "benchmark": "mpi_launch", "mode": "quick" if quick else "full", "jobs": jobs, "rounds": rounds,
        "concurrency": concs, "ranks": RANKS, "methods": methods,
        "machine": {"host": platform.node(), "cores": os.cpu_count(), "kernel": platform.release()},
        "mpiexec": _version(["mpiexec.hydra", "--version"]),
        "started": t_start, "elapsed_s": time.time() - t_start,
        "summary": summary, "runs": runs, "errors": errors, "targets": targets, "table_md": "\n".join(table),
    }
    text = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(text)
    log("\n".join(table))
    for t in targets:
        log(f"{t['status']}: {t['target']}: {t['measured']} ({t['goal']}; {t['detail']})")
    print(text)
    return 0 if not errors else 1


def _pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def _version(cmd) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Version" in ln), out[:80])
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
