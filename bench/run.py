"""Every benchmark of bench/, side by side, in one run: `make bench` runs this with defaults.

Writes into --out (default bench/results/<date-time>/):
  results.json  every raw number, the settings and the machine (cores, CPU, versions, date)
  results.md    tables (raw numbers, medians, ratios measured in this run) and the issue's targets
  *.png         plots: no-op throughput, latency, image-batch efficiency, native and head-scale curves

Through Parsl (bench/parsl_bench.py, one process per executor and round; executors alternate
round by round, in a rotating order, since the machine drifts): no-op throughput, sequential
round-trip latency and the image batch (at each --compute-ms), on DragonExecutor, ThreadPoolExecutor,
HighThroughputExecutor, two "DFK floor" executors that run nothing (what Parsl's DataFlowKernel
alone allows; no-op and latency only) and, when PyPI's dragonhpc is installed, its
DragonBatchPoolExecutor and DragonPoolExecutor (run under its `dragon` launcher). Every executor
gets the same number of workers and the same Parsl logging settings. Summaries, ratios and the
issues' targets: bench/run_summary.py. Then bench/native_bench.py, bench/native_py_bench.py
(DragonPoolExecutor, ProcessPoolExecutor and Ray's tasks from one Python process),
bench/task_data_bench.py (large task arguments and results through DragonExecutor's shared-memory pool,
its files and inline, 64 KiB to 64 MiB), bench/comm_bench.py (dragon_parsl.comm's Queue, Pipe and
Barrier next to multiprocessing's), bench/channel_bench.py (ShmChannel within a node and UcxNode between two
hosts of the netns test bed, next to memcpy and ucx_perftest; brings the bed up and down under its lock, or
reports that part skipped), bench/head_scale.py,
bench/liveness.py (agent failure detection), bench/auth_cost.py (authentication on next to off)
and bench/cluster_start.py (agents on many nodes: start times over ssh and Slurm, no-op throughput
with agents on 4 hosts next to 1; needs root, brings the test beds up and down) if present (`python bench/<name>.py --quick|--full --json-out FILE`); their JSON is embedded
verbatim. A benchmark that fails is reported with its reason; the run goes on.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import parsl_bench  # noqa: E402
import proc_counts  # noqa: E402
import quiet_check  # noqa: E402
from parsl_bench import BENCHES, DRAGONHPC, EXECUTORS, FLOOR, OPT_IN, benches_for  # noqa: E402
from run_summary import (hook_targets, issue15_targets, native_targets, ratios, summarize,  # noqa: E402
                         targets)

# bench/<HOOK_FILES[name]>, run in this order
HOOKS = ("native", "native_py", "task_data", "comm", "channel", "head_scale", "liveness", "auth_cost", "cluster_start",
         "mpi")
HOOK_FILES = {"native": "native_bench.py", "native_py": "native_py_bench.py", "task_data": "task_data_bench.py",
              "comm": "comm_bench.py", "channel": "channel_bench.py",
              "head_scale": "head_scale.py", "liveness": "liveness.py", "auth_cost": "auth_cost.py",
              "cluster_start": "cluster_start.py", "mpi": "mpi_bench.py"}
# Hooks that bench/report.py does not title (yet): their table_md joins results.md under this title.
EXTRA_HOOK_TITLES = (("task_data", "Task data through Parsl + DragonExecutor: shared-memory pool, files, inline "
                                   "(issue 14)"),
                     ("comm", "Communication objects within a node: dragon_parsl.comm Queue, Pipe, Barrier next to "
                              "multiprocessing's (issue 14)"),
                     ("channel", "Channels within a node and between two hosts, next to memcpy and ucx_perftest "
                                 "(issue 14)"))
ONLY = BENCHES + HOOKS

QUICK = dict(tasks=300, samples=20, images=16, image_size=64, rounds=1, parsl_logging=["default"])
FULL = dict(tasks=100_000, samples=500, images=4096, image_size=512, rounds=2, parsl_logging=["default", "off"])
LOGGING_MODES = ("default", "off")


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- machine
def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def dragonhpc_status() -> dict:
    """Whether PyPI's dragonhpc can be run here: its package and its `dragon` launcher."""
    ver = version("dragonhpc")
    if ver is None or importlib.util.find_spec("dragon") is None:
        return {"installed": False, "status": "not installed",
                "detail": "dragonhpc: not installed (make bench-deps installs it)"}
    launcher = shutil.which("dragon", path=os.path.dirname(sys.executable) + os.pathsep
                            + os.environ.get("PATH", ""))
    if launcher is None:
        return {"installed": False, "version": ver, "status": "not installed",
                "detail": "dragonhpc: package installed but its 'dragon' launcher is not on PATH"}
    return {"installed": True, "version": ver, "status": "installed", "launcher": launcher,
            "detail": f"dragonhpc {ver} ({launcher})"}


def git_commit() -> str | None:
    try:
        cp = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return cp.stdout.strip() + ("+dirty" if dirty else "") if cp.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(env: dict) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    # dragon_parsl as the benchmark processes import it (this checkout's parsl_plugin first).
    cp = subprocess.run([sys.executable, "-c", "import dragon_parsl; print(dragon_parsl.__version__); "
                         "print(dragon_parsl.__file__)"], env=env, capture_output=True, text=True, timeout=60)
    dp = cp.stdout.split() if cp.returncode == 0 else []
    dragond = os.path.join(env.get("DRAGON_BIN_DIR", ""), "dragond")
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cores": os.cpu_count(), "cpu_model": model, "mem_gib": mem_gib,
        "kernel": platform.release(), "loadavg_start": os.getloadavg(), "cpu_idle": proc_counts.cpu_idle(),
        "versions": {
            "python": platform.python_version(), "parsl": version("parsl"),
            "dragon_parsl": dp[0] if dp else None, "dragon_parsl_path": dp[1] if len(dp) > 1 else None,
            "dragonhpc": version("dragonhpc"), "numpy": version("numpy"), "grpcio": version("grpcio"),
            "protobuf": version("protobuf"), "matplotlib": version("matplotlib"), "ray": version("ray"),
        },
        "git_commit": git_commit(),
        "dragond": dragond if os.path.exists(dragond) else shutil.which("dragond", path=env.get("PATH")),
    }


def bench_env() -> dict:
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    # HTEX starts its interchange from PATH: this interpreter's bin/ goes first.
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    # This checkout's dragon_parsl (clients and the workers dragond starts inherit it).
    env["PYTHONPATH"] = str(REPO / "parsl_plugin") + (os.pathsep + env["PYTHONPATH"]
                                                     if env.get("PYTHONPATH") else "")
    if (REPO / "build-out" / "bin" / "dragond").exists():
        env.setdefault("DRAGON_BIN_DIR", str(REPO / "build-out" / "bin"))
    env.pop("DRAGON_HEAD", None)  # DragonExecutor starts its own private dragond
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one core per worker, for every executor alike
    env.setdefault("MPLBACKEND", "Agg")
    return env


# ---------------------------------------------------------------- running one process
def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_process(cmd: list, env: dict, timeout: float, log_path: Path, grace: float = 60) -> tuple[int | None, str]:
    """Runs cmd in its own session (so that everything it starts can be killed), output to log_path.
    On a timeout or Ctrl-C it first gets SIGTERM and up to `grace` s to clean up (cluster_start.py
    takes its test beds down), then its session is killed.
    Returns (exit code or None on timeout, tail of its output)."""
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(REPO))
        try:
            rc = proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
            rc = None
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            if isinstance(e, KeyboardInterrupt):
                kill_group(proc)
                raise
        kill_group(proc)  # leftovers (HTEX interchange, pools) of a finished or timed-out run
        if rc is None:
            proc.wait()
    tail = log_path.read_text(errors="replace")[-4000:]
    return rc, tail


def shm_entries() -> set:
    return set(glob.glob("/dev/shm/*"))


def run_executor(name: str, spec: dict, env: dict, workdir: Path, timeout: float, rnd: int,
                 tag: str = "") -> dict:
    stem = f"r{rnd}-{name}{tag}"
    spec = dict(spec, executor=name, out=str(workdir / f"{stem}.json"), benches=benches_for(name, spec["benches"]))
    spec_path = workdir / f"{stem}-spec.json"
    spec_path.write_text(json.dumps(spec))
    script = str(BENCH / "parsl_bench.py")
    if name in DRAGONHPC:
        # The dragon launcher hangs if it is a session leader: `timeout` leads the session instead
        # (setsid timeout N dragon ... works, see shared BASELINES.md).
        # --single-node-override: with Slurm's tools installed (the test beds) but no job,
        # dragonhpc otherwise refuses to start ("no active job allocations were found").
        cmd = ["timeout", "-k", "10", str(int(timeout)), "dragon", "--single-node-override", script,
               str(spec_path)]
        shm_before = shm_entries()
    else:
        cmd = [sys.executable, script, str(spec_path)]
    t0 = time.perf_counter()
    rc, tail = run_process(cmd, env, timeout + 30, workdir / f"{stem}.log")
    wall = time.perf_counter() - t0
    result: dict = {}
    if os.path.exists(spec["out"]):
        try:
            result = json.loads(Path(spec["out"]).read_text())
        except json.JSONDecodeError:
            result = {}
    result.update(executor=name, round=rnd, process_s=wall, exit_code=rc)
    if rc != 0:
        reason = "timed out" if rc in (None, 124, 137) else f"exited with code {rc}"
        result["error"] = f"{reason} after {wall:.0f} s; last output: {tail.strip()[-1500:]}"
    if name in DRAGONHPC:
        leftovers = shm_entries() - shm_before
        if rc != 0 or leftovers:
            cleanup = shutil.which("dragon-cleanup", path=env["PATH"])
            if cleanup:
                subprocess.run([cleanup], env=env, capture_output=True, timeout=120)
            result["dragon_cleanup"] = {"shm_leftovers": len(leftovers), "ran": bool(cleanup)}
    for b in spec["benches"]:
        if b not in result:
            result[b] = {"error": result.get("error", "not run")}
    return result


def run_hook(name: str, quick: bool, env: dict, workdir: Path, timeout: float) -> dict:
    script = BENCH / HOOK_FILES[name]
    if not script.exists():
        return {"status": f"not available: bench/{HOOK_FILES[name]} does not exist"}
    out = workdir / f"{name}.json"
    cmd = [sys.executable, str(script), "--quick" if quick else "--full", "--json-out", str(out)]
    t0 = time.perf_counter()
    rc, tail = run_process(cmd, env, timeout, workdir / f"{name}.log")
    wall = time.perf_counter() - t0
    if rc != 0:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exited with code {rc}"
        try:  # a hook that wrote its JSON anyway may say why (cluster_start.py: "errors")
            errors = json.loads(out.read_text()).get("errors") or []
        except (OSError, ValueError, AttributeError):
            errors = []
        why += f" ({'; '.join(map(str, errors))[:300]})" if errors else ""
        return {"status": f"not available: {' '.join(cmd[1:3])} {why}", "output_tail": tail[-2000:],
                "elapsed_s": wall}
    data = None
    if out.exists():
        try:
            data = json.loads(out.read_text())
        except json.JSONDecodeError as e:
            return {"status": f"not available: {out.name} is not JSON ({e})", "elapsed_s": wall}
    else:  # the agreed fallback: one JSON object on the last stdout line
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        try:
            data = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            data = None
    if not isinstance(data, dict):
        return {"status": f"not available: {HOOK_FILES[name]} wrote no JSON object", "elapsed_s": wall,
                "output_tail": tail[-2000:]}
    return {"status": "ok", "elapsed_s": wall, "command": " ".join(["python", f"bench/{HOOK_FILES[name]}",
                                                                     *cmd[2:3], "--json-out", "FILE"]),
            "result": data}


def parsl_key(mode: str, index: int) -> str:
    """results.json key of one Parsl logging mode: the first mode run is "parsl" (what the
    report's headline and the native-vs-HTEX ratio use), any other "parsl_logging_<mode>"."""
    return "parsl" if index == 0 else f"parsl_logging_{mode}"


def write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:  # rewritten after every measurement: partial results survive an interrupt
        json.dump(data, f, indent=1)


def run_parsl_rounds(section: dict, spec: dict, executors: list, benches: list, args, env: dict, work: Path,
                     timeout: float, tag: str, save, label: str) -> None:
    """Every round of every executor for one Parsl configuration, into section["runs"]."""
    runs = section["runs"]
    for rnd in range(1, args.rounds + 1):
        rspec = dict(spec)
        if "images" in benches:
            cal = parsl_bench.calibrate(args.image_size, spec["compute_ms"], min(128, args.image_size))
            cal["round"] = rnd
            section["calibration"].append(cal)
            rspec["calibration"] = cal
            log(f"round {rnd} ({label}): image work calibrated: {cal['iterations']} FFT passes "
                f"on {cal['tile']}x{cal['tile']} tiles = {cal['measured_ms']:.2f} ms per image "
                f"(target {spec['compute_ms']:g} ms)")
        k = (rnd - 1) % len(executors)
        order = executors[k:] + executors[:k]  # rotate: no executor always runs first
        for name in order:
            r = run_executor(name, rspec, env, work, timeout, rnd, tag)
            runs.append(r)
            log(f"round {rnd} ({label}): {name:16s} " + describe_run(r, benches_for(name, benches))
                + f"  [{r['process_s']:.0f} s]")
            save()


def describe_run(r: dict, benches: list) -> str:
    parts = []
    for b in benches:
        x = r.get(b, {})
        if "error" in x:
            parts.append(f"{b}: FAILED ({x['error'].splitlines()[0][:160]})")
        elif b == "noop":
            parts.append(f"noop {x['tasks_per_s']:.0f} tasks/s")
        elif b == "latency":
            parts.append(f"latency p50 {x['p50_ms']:.2f} ms p99 {x['p99_ms']:.2f} ms")
        else:
            parts.append(f"images eff {x['efficiency']:.2f} ({x['total_s']:.1f} s)")
    return "; ".join(parts)


# ---------------------------------------------------------------- main
def number_list(kind):
    def parse(text: str) -> list:
        try:
            xs = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
        if not xs or any(x <= 0 for x in xs):
            raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers")
        return xs
    return parse


int_list, float_list = number_list(int), number_list(float)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small counts (300 no-ops, 20 latency samples, 16 images of 64x64, 1 round): "
                        "a smoke run of a few minutes; the hooks get --quick")
    p.add_argument("--only", nargs="+", choices=ONLY, metavar="BENCH",
                   help=f"run only these: {', '.join(ONLY)} (default: all)")
    p.add_argument("--skip", nargs="+", choices=ONLY, default=[], metavar="BENCH",
                   help="leave these out (e.g. --skip cluster_start, which needs root and brings up the "
                        "test beds; tests/test_bench_smoke.py skips it: it has its own smoke test)")
    p.add_argument("--out", help="output directory (default bench/results/<date-time>/)")
    p.add_argument("--executors", nargs="+", choices=EXECUTORS,
                   default=[e for e in EXECUTORS if e not in OPT_IN],
                   help="Parsl executors to compare (dragonhpc ones are skipped when it is not installed); "
                        f"default: all but {', '.join(OPT_IN)}, which run only when named "
                        "(dragon-files: DragonExecutor with shm_path='files', for the image batch)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of every executor")
    p.add_argument("--rounds", type=int, help="rounds of the Parsl benchmarks (default 2; --quick 1)")
    p.add_argument("--tasks", type=int, help="no-op tasks per measurement (default 100000; --quick 300)")
    p.add_argument("--samples", type=int, help="sequential latency samples (default 500; --quick 20)")
    p.add_argument("--images", type=int_list, help="images in the batch (default 4096; --quick 16); a comma-separated "
                   "list gives each --compute-ms its own count, e.g. --compute-ms 10,100 --images 4096,512")
    p.add_argument("--image-size", type=int, help="image side in pixels, float64 (default 512; --quick 64)")
    p.add_argument("--compute-ms", type=float_list, default=[10.0],
                   help="compute time per image (default 10 ms); a comma-separated list (e.g. 10,100) runs the "
                        "image batch at each: the first with the other benchmarks under every --parsl-logging "
                        "mode, each further one in rounds of its own under the first mode")
    p.add_argument("--window", type=int, default=0,
                   help="images in flight at once (default 8 per worker); bounds memory: the client "
                        "submits the next image as each result arrives")
    p.add_argument("--parsl-logging", nargs="+", choices=LOGGING_MODES,
                   help="Parsl's logging for every executor: 'default' (parsl.log at DEBUG, what users "
                        "get) and/or 'off' (Config(initialize_logging=False)); with both, every Parsl "
                        "benchmark runs once per mode (default: both; --quick: default only). The "
                        "DataFlowKernel's DEBUG logging costs more per task than most executors do, so "
                        "it hides the differences between them")
    p.add_argument("--dragonhpc-batch-size", type=int, default=0,
                   help="batch_size of DragonBatchPoolExecutor (default: tasks/workers for no-op, "
                        "1 for latency, 4 for images)")
    p.add_argument("--dragon-prefetch", type=int, default=8,
                   help="--prefetch of the dragond behind the 'dragon-prefetch' executor (default 8); "
                        "'dragon' uses dragond's default")
    p.add_argument("--pin-client", type=int, default=None, metavar="CPU",
                   help="move every thread of each workflow process onto this CPU once its DFK is loaded, "
                        "whatever the executor (what DragonExecutor(client_cpu=CPU) does); the executors' "
                        "own processes keep every CPU. Default: no pinning")
    p.add_argument("--timeout", type=float, default=0, help="seconds per executor process (default: from the counts)")
    p.add_argument("--hook-timeout", type=float, default=0,
                   help="seconds for each of native_bench.py, native_py_bench.py, task_data_bench.py, "
                        "comm_bench.py, channel_bench.py, head_scale.py, liveness.py, auth_cost.py, cluster_start.py and mpi_bench.py "
                        "(default 150 quick, 1800 full)")
    args = p.parse_args(argv)
    if args.images is not None and len(args.images) not in (1, len(args.compute_ms)):
        p.error(f"--images: one count, or one per --compute-ms ({len(args.compute_ms)}), not {len(args.images)}")
    if args.pin_client is not None and args.pin_client not in os.sched_getaffinity(0):
        p.error(f"--pin-client {args.pin_client}: not a CPU this process may run on "
                f"(allowed: {sorted(os.sched_getaffinity(0))})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    counts = args.images if isinstance(args.images, list) else [args.images]
    # (compute ms, images) of every image batch: the first runs with the other benchmarks
    image_batches = [(c, counts[i] if len(counts) > 1 else counts[0]) for i, c in enumerate(args.compute_ms)]
    args.compute_ms, args.images = image_batches[0]
    only = [b for b in (args.only or ONLY) if b not in args.skip]
    benches = [b for b in BENCHES if b in only]
    hooks = [h for h in HOOKS if h in only]
    window = args.window or 8 * args.workers

    out = Path(args.out) if args.out else BENCH / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "raw"
    work.mkdir(exist_ok=True)
    env = bench_env()
    mach = machine_info(env)
    mach["quiet_check"] = quiet_check.quiet_check(1.0 if args.quick else 3.0)
    dh = dragonhpc_status()
    log(f"bench: output in {out}")
    log(f"bench: {quiet_check.describe(mach['quiet_check'])}")
    log(f"bench: {mach['cores']} cores, {mach['cpu_model']}, python {mach['versions']['python']}, "
        f"parsl {mach['versions']['parsl']}, dragon_parsl {mach['versions']['dragon_parsl']} "
        f"({mach['versions']['dragon_parsl_path']})")
    log(f"bench: {dh['detail']}")

    executors = [e for e in args.executors if e not in DRAGONHPC or dh["installed"]]
    skipped = {e: dh["detail"] for e in args.executors if e not in executors}
    spec = {"benches": benches, "workers": args.workers, "tasks": args.tasks, "samples": args.samples,
            "images": args.images, "image_size": args.image_size, "compute_ms": args.compute_ms,
            "window": window, "parsl_logging": args.parsl_logging,
            "dragonhpc_batch_size": args.dragonhpc_batch_size, "dragon_prefetch": args.dragon_prefetch,
            "pin_client": args.pin_client}

    def timeout_for(images: int, compute_ms: float, others: bool = True) -> float:
        return args.timeout or ((120 + args.tasks / 100 + args.samples * 0.5) * others + 60 * (not others)
                                + images * compute_ms / 1000 * 15)

    timeout = timeout_for(args.images, args.compute_ms)
    settings = dict(spec, rounds=args.rounds, quick=args.quick, executors=executors,
                    image_batches=[{"compute_ms": c, "images": n} for c, n in image_batches],
                    skipped_executors=skipped, timeout_per_process_s=timeout, only=only,
                    command=" ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "bench/run.py",
                                      *(argv if argv is not None else sys.argv[1:])]))
    results = {"schema": 1, "machine": mach, "settings": settings, "dragonhpc": dh, "targets": []}

    t_start = time.perf_counter()
    modes = list(dict.fromkeys(args.parsl_logging))  # in the order given, once each
    issue15: list = []  # issue 15's targets: after issue 4's in results["targets"]
    for i, mode in enumerate(modes):
        key = parsl_key(mode, i)
        section = results[key] = {"logging": mode, "compute_ms": args.compute_ms, "images": args.images,
                                  "runs": [], "calibration": []}
        if benches and executors:
            run_parsl_rounds(section, dict(spec, parsl_logging=mode), executors, benches, args, env, work,
                             timeout, tag="" if i == 0 else f"-logging-{mode}",
                             save=lambda: write_json(out / "results.json", results), label=f"Parsl logging {mode}")
        section["executors"] = executors
        section["summary"] = summarize(section["runs"], executors, benches)
        section["ratios"] = ratios(section["runs"], section["summary"], executors)
        condition = f"Parsl logging {mode}" if len(modes) > 1 else ""
        results["targets"] += targets(section["summary"], section["ratios"], condition)
        issue15 += issue15_targets(section["summary"], section["ratios"], condition, args.compute_ms)
    img_execs = [e for e in executors if e not in FLOOR]  # the floor executors run no images
    for c, n in image_batches[1:] if "images" in benches and img_execs else []:
        key, mode = f"parsl_images_{c:g}ms", modes[0]
        section = results[key] = {"logging": mode, "compute_ms": c, "images": n, "runs": [], "calibration": []}
        run_parsl_rounds(section, dict(spec, benches=["images"], parsl_logging=mode, compute_ms=c, images=n),
                         img_execs, ["images"], args, env, work, timeout_for(n, c, others=False),
                         tag=f"-images-{c:g}ms", save=lambda: write_json(out / "results.json", results),
                         label=f"images at {c:g} ms, Parsl logging {mode}")
        section["executors"] = img_execs
        section["summary"] = summarize(section["runs"], img_execs, ["images"])
        section["ratios"] = ratios(section["runs"], section["summary"], img_execs)
        condition = f"{c:g} ms per image" + (f", Parsl logging {mode}" if len(modes) > 1 else "")
        results["targets"] += targets(section["summary"], section["ratios"], condition)
        issue15 += issue15_targets(section["summary"], section["ratios"],
                                   f"Parsl logging {mode}" if len(modes) > 1 else "", c)

    for h in HOOKS:
        if h not in hooks:
            results[h] = {"status": "not run (--only, --skip)"}
            continue
        log(f"bench: running bench/{HOOK_FILES[h]} ...")
        ht = args.hook_timeout or (150 if args.quick else 1800)
        results[h] = run_hook(h, args.quick, env, work, ht)
        log(f"bench: {h}: {results[h]['status']}")
        results["targets"] += hook_targets(h, results[h].get("result") or {})
    results["targets"] += native_targets(results, args.workers)
    results["targets"] += issue15

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start
    write_json(out / "results.json", results)

    import report  # after the runs: matplotlib is only needed here

    titled = {h for h, _ in report.HOOK_TITLES}
    extra = tuple((h, t) for h, t in EXTRA_HOOK_TITLES if h not in titled)
    if extra:  # its table, plots and status in results.md like the other hooks'
        report.HOOK_TITLES = tuple(report.HOOK_TITLES) + extra
        report.OPTIONAL_HOOKS = tuple(report.OPTIONAL_HOOKS) + tuple(h for h, _ in extra)

    md = report.write_report(results, out)
    log("")
    log(md)
    log(f"bench: wrote {out / 'results.json'}, {out / 'results.md'} and "
        f"{len(list(out.glob('*.png')))} plots in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
