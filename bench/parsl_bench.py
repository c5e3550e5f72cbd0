"""One measurement through Parsl: one executor, in this process, running the
selected benchmarks (no-op throughput, sequential latency, image batch).

bench/run.py starts one such process per executor and round and alternates
executors; it passes everything in a JSON spec file (a single positional
argument, so that dragonhpc's `dragon` launcher has no options of ours to
misparse). By hand:

    python bench/parsl_bench.py --executor dragon --benches noop latency --tasks 10000
    dragon bench/parsl_bench.py SPEC.json      # dragonhpc executors need the dragon launcher

Results go to the spec's "out" file (rewritten after each benchmark, so a
later failure keeps the earlier numbers) and, as one JSON object, to the last
line of stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import deque

from proc_counts import (each_process_stat, machine_busy_seconds, thread_context_switches,
                         thread_runqueue_wait_seconds)

EXECUTORS = ("dragon", "threadpool", "htex", "dragonhpc-batch", "dragonhpc-pool", "dragon-prefetch",
             "dfk-floor-inline", "dfk-floor-thread", "dfk-floor-gather", "dragon-files")
# Chosen by name only (--executors), not in bench/run.py's default list: "dragon-files" differs from
# "dragon" only in how large task data travels (files in /dev/shm instead of the agent's pool), which
# only the image batch shows; no-op and latency runs of it would repeat "dragon".
OPT_IN = ("dragon-files",)
BENCHES = ("latency", "noop", "images")  # the order they run in within one process
DRAGONHPC = ("dragonhpc-batch", "dragonhpc-pool")
# Executors that run nothing (FloorExecutor): what Parsl's DataFlowKernel alone allows. Their tasks
# return None, so they measure no-op throughput and latency only, never the image batch.
FLOOR = ("dfk-floor-inline", "dfk-floor-thread", "dfk-floor-gather")
# How long the "gather" floor's completer waits after the first queued future before it completes
# everything queued: a batching executor's result thread (dragonhpc's waits on its pool's batches).
FLOOR_GATHER_S = 0.002


def benches_for(name: str, benches) -> list:
    """The benchmarks an executor takes part in: the floor executors run no work, so no images; the
    gather floor no latency either (it delays every completion by FLOOR_GATHER_S on purpose)."""
    return [b for b in benches if not (name in FLOOR and b == "images")
            and not (name == "dfk-floor-gather" and b == "latency")]


# ---------------------------------------------------------------- the work
def image_work(img, iterations: int, tile: int):
    """Real numpy work on one image: `iterations` FFT smoothing passes over
    tiles of the image (cycling through them). Returns (an image of the same
    shape and dtype, the thread CPU seconds the passes took): the benchmark
    reports, besides the calibrated ideal, how much the compute itself slowed
    down under the run's contention. Defined in __main__ so that every executor ships it by value
    (dill), without needing bench/ on the workers' path."""
    import numpy as np

    import time

    started = time.thread_time()
    out = img * 0.5
    h, w = img.shape
    tiles_per_row = max(1, w // tile)
    ntiles = max(1, (h // tile) * tiles_per_row)
    for k in range(iterations):
        t = k % ntiles
        r, c = (t // tiles_per_row) * tile, (t % tiles_per_row) * tile
        block = img[r:r + tile, c:c + tile]
        spec = np.fft.rfft2(block)
        spec *= 0.25
        out[r:r + tile, c:c + tile] += np.fft.irfft2(spec, s=block.shape)
    return out, time.thread_time() - started


def calibrate(size: int, compute_ms: float, tile: int, reps: int = 9) -> dict:
    """Iterations of image_work that take compute_ms on one core here, and
    what one call with that count costs (the fastest of reps)."""
    import numpy as np

    img = np.random.default_rng(0).random((size, size))
    image_work(img, 3, tile)
    # Thread CPU time, not wall time, and the fastest of several tries, not their median:
    # other load on the machine (builds, a VM neighbour's steal time, which this VM may
    # count as our CPU time) only ever adds to a try, so the minimum is the cost of the
    # work itself. A median taken during a burst made 44 passes "13.3 ms" once, when the
    # tasks then ran them in 8.1 ms, and overstated that run's efficiency.
    unit = []
    for _ in range(reps):
        t = time.thread_time()
        image_work(img, 20, tile)
        unit.append((time.thread_time() - t) / 20)
    iterations = max(1, round(compute_ms / 1000 / min(unit)))
    for attempt in range(3):  # correct the count against whole calls, then measure
        calls = []
        for _ in range(reps):
            t = time.thread_time()
            image_work(img, iterations, tile)
            calls.append(time.thread_time() - t)
        better = max(1, round(iterations * compute_ms / 1000 / min(calls)))
        if attempt == 2 or abs(better - iterations) <= max(1, iterations // 50):
            break
        iterations = better
    return {"iterations": iterations, "tile": tile, "measured_ms": min(calls) * 1000,
            "median_ms": statistics.median(calls) * 1000, "target_ms": compute_ms}


# ---------------------------------------------------------------- executors
def floor_executor_class():
    """FloorExecutor, defined on first use (parsl is imported inside the benchmark process only)."""
    import queue
    import threading
    from concurrent.futures import Future

    from parsl.executors.base import ParslExecutor

    class FloorExecutor(ParslExecutor):
        """A Parsl executor that runs nothing: every task's future completes with None, so a no-op
        benchmark through it measures what the DataFlowKernel alone allows (its bookkeeping, its
        logging, the AppFuture's completion), with no serialization, no other process and no work.

        mode "inline": submit returns a future that is already done (the DFK's done-callback runs
        inside submit, in the submitting thread). mode "thread": submit queues the future and one
        thread completes them, taking everything queued at once (a batch) each time it wakes, as
        an executor's result thread would; the DFK's completion then runs in that thread. mode
        "gather": the same thread, but once woken it sleeps FLOOR_GATHER_S before taking what is
        queued, so that it completes fewer, larger batches, as a batching executor does: the
        interpreter lock then changes hands between the submitting and the completing thread
        far less often, which on 2 cores makes the DFK itself 10-25% faster than "thread"."""

        def __init__(self, label: str = "dfk_floor", mode: str = "inline"):
            super().__init__()
            if mode not in ("inline", "thread", "gather"):
                raise ValueError(f"FloorExecutor mode {mode!r}: 'inline', 'thread' or 'gather'")
            self.label = label
            self.mode = mode
            self.storage_access = None  # Parsl's default staging, as for the other executors
            self.completed = 0
            self.batches = 0
            self._queue: queue.SimpleQueue | None = None
            self._thread: threading.Thread | None = None

        def start(self) -> None:
            if self.mode in ("thread", "gather"):
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._complete, name=f"{self.label}-completer",
                                                daemon=True)
                self._thread.start()

        def submit(self, func, resource_specification, *args, **kwargs) -> Future:
            fut: Future = Future()
            if self._queue is None:
                self.completed += 1
                self.batches += 1
                fut.set_result(None)
            else:
                self._queue.put(fut)
            return fut

        def _complete(self) -> None:
            q = self._queue
            while True:
                batch = [q.get()]
                if self.mode == "gather" and batch[0] is not None:
                    time.sleep(FLOOR_GATHER_S)
                while True:  # everything queued meanwhile joins this batch
                    try:
                        batch.append(q.get_nowait())
                    except queue.Empty:
                        break
                stop = any(f is None for f in batch)
                futures = [f for f in batch if f is not None]
                for f in futures:
                    if f.set_running_or_notify_cancel():
                        f.set_result(None)
                self.completed += len(futures)
                self.batches += 1 if futures else 0
                if stop:
                    return

        def monitor_resources(self) -> bool:
            return False  # nothing runs, nothing to monitor

        def shutdown(self) -> None:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout=30)
                self._thread = None
            super().shutdown()

    return FloorExecutor


def make_executor(name: str, workers: int, spec: dict):
    if name == "dragon":
        from dragon_parsl import DragonExecutor

        return DragonExecutor(label="dragon", workers_per_node=workers, **spec.get("dragon_options", {}))
    if name == "dragon-files":  # the same, large task data through one file per task in /dev/shm
        from dragon_parsl import DragonExecutor

        return DragonExecutor(label="dragon", workers_per_node=workers,
                              **dict({"shm_path": "files"}, **spec.get("dragon_options", {})))
    if name == "dragon-prefetch":  # the same with tasks queued ahead on each worker's agent
        from dragon_parsl import DragonExecutor

        return DragonExecutor(label="dragon", workers_per_node=workers,
                              prefetch=int(spec.get("dragon_prefetch") or 8))
    if name == "threadpool":
        from parsl.executors import ThreadPoolExecutor

        return ThreadPoolExecutor(label="threadpool", max_threads=workers)
    if name == "htex":
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        return HighThroughputExecutor(
            label="htex", max_workers_per_node=workers, cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    if name == "dragonhpc-batch":
        from dragon.workflows.parsl_batch_executor import DragonBatchPoolExecutor

        return DragonBatchPoolExecutor(label="dragonhpc_batch", max_processes=workers,
                                       batch_size=int(spec.get("batch_size") or 4))
    if name == "dragonhpc-pool":
        from dragon.workflows.parsl_executor import DragonPoolExecutor

        return DragonPoolExecutor(label="dragonhpc_pool", max_processes=workers)
    if name in FLOOR:
        return floor_executor_class()(label=name.replace("-", "_"), mode=name.rsplit("-", 1)[1])
    raise SystemExit(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


def dragonhpc_batch_size(bench: str, spec: dict) -> int:
    """DragonBatchPoolExecutor's batch size per benchmark: --dragonhpc-batch-size if given,
    else what its docstring recommends (tasks / workers, capped at 10,000) for throughput,
    1 for sequential latency (a partial batch waits 4 x 0.1 s) and its default 4 for the
    windowed image batch."""
    if spec.get("dragonhpc_batch_size"):
        return int(spec["dragonhpc_batch_size"])
    if bench == "noop":
        return max(1, min(10_000, spec["tasks"] // spec["workers"]))
    if bench == "latency":
        return 1
    return 4


class Loaded:
    """A DFK with one executor of the given kind (Parsl's logging as configured)."""

    def __init__(self, name: str, workers: int, spec: dict, run_dir: str, batch_size: int = 0):
        import parsl
        from parsl.config import Config

        self.executor = make_executor(name, workers, dict(spec, batch_size=batch_size))
        logging_on = spec.get("parsl_logging", "default") != "off"
        config = Config(executors=[self.executor], run_dir=run_dir, strategy="none",
                        initialize_logging=logging_on)
        self.dfk = parsl.load(config)
        if spec.get("pin_client") is not None:
            # After the executor started its processes, so that only this process's threads
            # move; the same for every executor (DragonExecutor's client_cpu does the same).
            from dragon_parsl._affinity import pin_process_threads

            pin_process_threads(int(spec["pin_client"]))

    def close(self) -> None:
        import parsl

        try:
            self.dfk.cleanup()
        finally:
            parsl.clear()


def cpu_snapshot() -> tuple:
    """(wall, this process's CPU s, whole machine's busy CPU s, os.times()) now."""
    return time.perf_counter(), time.process_time(), machine_busy_seconds(), os.times()


def _process_tree() -> dict:
    """{pid: (cmdline parts, /proc/PID/stat fields after the name)} of every process descended
    from this one."""
    children: dict = {}
    info: dict = {}
    for pid, _, rest in each_process_stat():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(pid)
        info[pid] = (cmd, rest)
    out: dict = {}
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        out[pid] = info[pid]
    return out


def tree_cpu() -> dict:
    """CPU seconds (user+sys, including reaped children) of every process descended from this
    one, summed by command name: dragond, dragon-agent and the workers of DragonExecutor; HTEX's
    interchange, pool and workers. Unlike the machine's busy time this excludes whatever else
    runs on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict = {}
    for cmd, rest in _process_tree().values():
        name = _proc_name(cmd)
        out[name] = out.get(name, 0.0) + sum(int(x) for x in rest[11:15]) / tick
    return out


def tree_wakeups() -> dict:
    """Voluntary context switches of this process ("workflow") and of every process descended
    from it, by command name, over their live threads: a thread that blocks and is woken again
    counts one. These are the hand-offs a task pays for."""
    out = {"workflow": thread_context_switches("self", voluntary_only=True)}
    for pid, (cmd, _) in _process_tree().items():
        name = _proc_name(cmd)
        out[name] = out.get(name, 0) + thread_context_switches(pid, voluntary_only=True)
    return out


def wakeups_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}


def _proc_name(cmd: list) -> str:
    args = [c.decode(errors="replace") for c in cmd if c]
    if not args:
        return "?"
    exe = os.path.basename(args[0])
    if exe.startswith("python"):
        mod = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m"), None)
        script = next((os.path.basename(a) for a in args[1:] if not a.startswith("-")), None)
        return f"python {mod or script or ''}".strip()
    return exe


def cpu_delta(a, b, ta: dict | None = None, tb: dict | None = None) -> dict:
    out = {"client_cpu_s": b[1] - a[1], "client_user_s": b[3].user - a[3].user,
           "client_sys_s": b[3].system - a[3].system, "machine_busy_cpu_s": b[2] - a[2]}
    if ta is not None and tb is not None:
        out["service_cpu_s"] = {k: round(tb[k] - ta.get(k, 0.0), 3) for k in tb if tb[k] - ta.get(k, 0.0) > 0}
        # What the machine spent outside this process and the processes it started, in cores
        # over the run: another program, a build, a monitoring loop (and the kernel's interrupt
        # work). A loop using a fifth of a CPU moved the Parsl no-op rates here by 20-40%
        # (README.md, "a background loop that made everything faster"), so results show it.
        # /proc/stat is sampled at the clock tick, the processes' own times are not: on a quiet
        # machine this comes out a little below 0, shown as 0.
        wall = b[0] - a[0]
        outside = out["machine_busy_cpu_s"] - out["client_cpu_s"] - sum(out["service_cpu_s"].values())
        out["outside_cores"] = round(max(0.0, outside) / wall, 3) if wall > 0 else None
    return out


# ---------------------------------------------------------------- benchmarks
def expected(i: int, floor: bool):
    """What no-op task i returns: its argument, or None from an executor that runs nothing."""
    return None if floor else i


def bench_noop(app, n: int, workers: int, floor: bool = False) -> dict:
    [f.result() for f in [app(i) for i in range(4 * workers)]]  # warm: workers up, code cached
    ta, sa, qa = tree_cpu(), tree_wakeups(), thread_runqueue_wait_seconds("self")
    a = cpu_snapshot()
    futures = [app(i) for i in range(n)]
    submitted = time.perf_counter()
    for i, f in enumerate(futures):
        r = f.result()
        if r != expected(i, floor):
            raise RuntimeError(f"no-op task {i} returned {r!r}")
    b = cpu_snapshot()
    tb, sb, qb = tree_cpu(), tree_wakeups(), thread_runqueue_wait_seconds("self")
    total = b[0] - a[0]
    # The workflow's threads waiting for a CPU while they could run (README.md, "the workflow
    # waits for a CPU"): where DragonExecutor's flood lost time to the floors on the 2-core VM.
    queued = None if qa is None or qb is None else round(qb - qa, 4)
    return {"tasks": n, "submit_s": submitted - a[0], "total_s": total, "tasks_per_s": n / total,
            **cpu_delta(a, b, ta, tb), "thread_wakeups": wakeups_delta(sa, sb),
            "workflow_runqueue_wait_s": queued}


def percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_stats(samples_ms: list) -> dict:
    s = sorted(samples_ms)
    return {"samples": len(s), "p50_ms": percentile(s, 0.5), "p99_ms": percentile(s, 0.99),
            "mean_ms": statistics.fmean(s) if s else float("nan"), "min_ms": s[0] if s else float("nan"),
            "max_ms": s[-1] if s else float("nan")}


def bench_latency(app, n: int, workers: int, slow_ms: float = 100.0, slow_cap: int = 50,
                  floor: bool = False) -> dict:
    for i in range(2 * workers + 5):
        app(i).result()
    samples = []
    note = ""
    for i in range(n):
        t = time.perf_counter()
        r = app(i).result()
        samples.append((time.perf_counter() - t) * 1000)
        if r != expected(i, floor):
            raise RuntimeError(f"latency task {i} returned {r!r}")
        if len(samples) == 10 and n > slow_cap and statistics.median(samples) > slow_ms:
            n = slow_cap
            note = f"slow executor (median of first 10 > {slow_ms:g} ms): stopped at {slow_cap} samples"
        if len(samples) >= n:
            break
    out = latency_stats(samples)
    out["raw_ms"] = [round(x, 4) for x in samples]
    if note:
        out["note"] = note
    return out


def bench_images(app, spec: dict, workers: int) -> dict:
    import numpy as np

    n, size, window = spec["images"], spec["image_size"], spec["window"]
    cal = spec["calibration"]
    iterations, tile = cal["iterations"], cal["tile"]
    rng = np.random.default_rng(1)
    bases = [rng.random((size, size)) for _ in range(4)]

    def image(i: int):
        return bases[i % 4] + float(i)  # a new array per task, cheap to make

    # Warm up (workers started, function shipped once) outside the clock.
    [f.result() for f in [app(image(i), 1, tile) for i in range(2 * workers)]]
    ta = tree_cpu()
    a = cpu_snapshot()
    pending: deque = deque()
    sent = 0
    bad = 0
    task_cpu_s = 0.0  # the compute the tasks reported (thread CPU time inside image_work)
    while sent < n and len(pending) < window:
        pending.append(app(image(sent), iterations, tile))
        sent += 1
    while pending:
        r, cpu_s = pending.popleft().result()
        task_cpu_s += cpu_s
        if r.shape != (size, size) or r.dtype != np.float64:
            bad += 1
        if sent < n:
            pending.append(app(image(sent), iterations, tile))
            sent += 1
    b = cpu_snapshot()
    tb = tree_cpu()
    if bad:
        raise RuntimeError(f"{bad} image results had the wrong shape or dtype")
    total = b[0] - a[0]
    task_compute_ms = task_cpu_s / n * 1000
    # The ideal counts the compute at its calibrated cost, or at what the tasks themselves
    # measured when that is less: a calibration that came out slow must never make the
    # efficiency look better than the tasks' own timing allows.
    basis_ms = min(cal["measured_ms"], task_compute_ms) if task_compute_ms > 0 else cal["measured_ms"]
    ideal = n * basis_ms / 1000 / workers
    ideal_nominal = n * cal["target_ms"] / 1000 / workers
    return {"images": n, "size": size, "window": window, "iterations": iterations,
            "compute_ms": cal["measured_ms"], "target_ms": cal["target_ms"],
            "ideal_basis": "calibrated" if basis_ms == cal["measured_ms"] else "tasks' own compute",
            "bytes_per_image": size * size * 8, "total_s": total, "ideal_s": ideal,
            "efficiency": ideal / total, "efficiency_nominal": ideal_nominal / total,
            "efficiency_calibrated": n * cal["measured_ms"] / 1000 / workers / total,
            # A diagnostic beside the calibrated ideal: the compute time the tasks measured
            # themselves, inflated by whatever competes with them for the cores' caches and
            # memory in this run (the calibrated ideal stays the headline).
            "task_compute_ms": task_compute_ms,
            "efficiency_task_compute": task_cpu_s / workers / total,
            "images_per_s": n / total, **cpu_delta(a, b, ta, tb)}


# ---------------------------------------------------------------- one process
def write(out_path: str, result: dict) -> None:
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)


def run(spec: dict) -> dict:
    from parsl import python_app

    name, workers = spec["executor"], spec["workers"]
    result: dict = {"executor": name, "workers": workers, "pid": os.getpid()}
    try:
        import dragon_parsl
        result["dragon_parsl_file"] = dragon_parsl.__file__
    except Exception:  # noqa: BLE001
        pass
    out = spec.get("out")

    @python_app
    def noop(x):
        return x

    work = python_app(image_work)

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as run_dir:
        # dragonhpc's batch executor takes its batch size at construction: one DFK per
        # benchmark for it; every other executor serves all benchmarks from one DFK.
        per_bench = name == "dragonhpc-batch"
        loaded = None
        try:
            for bench in [b for b in BENCHES if b in benches_for(name, spec["benches"])]:
                t0 = time.perf_counter()
                try:
                    if loaded is None or per_bench:
                        if loaded is not None:
                            loaded.close()
                            loaded = None
                        bs = dragonhpc_batch_size(bench, spec) if per_bench else 0
                        loaded = Loaded(name, workers, spec, os.path.join(run_dir, bench), bs)
                        if bs:
                            result.setdefault("batch_size", {})[bench] = bs
                    if bench == "noop":
                        r = bench_noop(noop, spec["tasks"], workers, floor=name in FLOOR)
                    elif bench == "latency":
                        r = bench_latency(noop, spec["samples"], workers, floor=name in FLOOR)
                    else:
                        r = bench_images(work, spec, workers)
                except Exception as e:  # noqa: BLE001  (recorded, the other benchmarks still run)
                    r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                r["elapsed_s"] = time.perf_counter() - t0
                session = getattr(loaded.executor, "session", None) if loaded else None
                if session is not None and hasattr(session, "batches_sent"):  # DragonExecutor
                    r["dragon_submit_batches_total"] = session.batches_sent
                    r["dragon_lingers_total"] = getattr(session, "lingers", None)
                    r["dragon_result_batches_total"] = getattr(session, "result_batches_received", None)
                if loaded is not None and name in FLOOR:
                    r["floor_completed_total"] = loaded.executor.completed
                    r["floor_batches_total"] = loaded.executor.batches
                if loaded is not None and hasattr(loaded.executor, "shm_counters"):  # DragonExecutor
                    r["dragon_shm_total"] = loaded.executor.shm_counters()  # since the DFK started
                result[bench] = r
                if out:
                    write(out, result)
        finally:
            if loaded is not None:
                loaded.close()
    return result


def parse_option(text: str, parser: argparse.ArgumentParser) -> tuple:
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        parser.error(f"--dragon-option {text!r}: expected NAME=VALUE, e.g. batch_linger_ms=0")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parser.error(f"--dragon-option {text!r}: VALUE must be a Python literal (a number, a string in quotes, ...)")


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        with open(sys.argv[1]) as f:
            spec = json.load(f)
    else:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--executor", choices=EXECUTORS, required=True)
        p.add_argument("--benches", nargs="+", choices=BENCHES, default=list(BENCHES))
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        p.add_argument("--tasks", type=int, default=10000)
        p.add_argument("--samples", type=int, default=300)
        p.add_argument("--images", type=int, default=256)
        p.add_argument("--image-size", type=int, default=512)
        p.add_argument("--compute-ms", type=float, default=10.0)
        p.add_argument("--window", type=int, default=16)
        p.add_argument("--parsl-logging", choices=("default", "off"), default="default")
        p.add_argument("--dragonhpc-batch-size", type=int, default=0)
        p.add_argument("--dragon-prefetch", type=int, default=8)
        p.add_argument("--pin-client", type=int, default=None, metavar="CPU",
                       help="move this process's threads onto CPU once the DFK is loaded")
        p.add_argument("--dragon-option", action="append", default=[], metavar="NAME=VALUE",
                       help="a DragonExecutor option for --executor dragon or dragon-files, e.g. batch_linger_ms=0 "
                            "(VALUE is a Python literal); repeatable")
        p.add_argument("--out")
        a = p.parse_args()
        spec = {k: v for k, v in vars(a).items() if k != "dragon_option"}
        spec["dragon_options"] = dict(parse_option(o, p) for o in a.dragon_option)
        if "images" in spec["benches"]:
            spec["calibration"] = calibrate(a.image_size, a.compute_ms, min(128, a.image_size))
    if spec["executor"] in DRAGONHPC:
        import multiprocessing as mp

        import dragon  # noqa: F401  (registers the "dragon" start method)
        mp.set_start_method("dragon")
    result = run(spec)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
