"""Scale of the head: scheduling throughput as agents grow, memory as the queue grows.

    python bench/head_scale.py --quick --json-out results/head_scale.json
    python bench/head_scale.py --full  --json-out results/head_scale.json

(a) Throughput: for each agent count A, a fresh `dragond start --agents none`
    plus A simulated agents (benchmark mode: no Python, every result is OK
    with empty data marked as simulated), then
    `head_scale run` submits N no-op tasks over one Session and waits for all
    results. tasks/s = N / (first submit .. last result). The load generator
    also checks that every task ended exactly once and counts tasks per node.
    The head's CPU time (from /proc) gives CPU microseconds per task, which is
    less sensitive than tasks/s to other load on this machine.
    --agent-mode process: A `dragon-agent --simulate-workers W` processes
    (the default, as before). hosted: one `sim_agents --agents A` process
    that hosts all A agents as real AgentService streams on gRPC's callback
    API, so the load generator costs the 2 cores far less than 256 agent
    processes do. Both: each count is run in each mode.
(b) Memory: a fresh dragond with no agents, `head_scale fill` submits Q tasks
    of --payload-bytes each (they stay PENDING), then the head's VmRSS and
    VmHWM are read from /proc/<pid>/status. bytes/task = (RSS - RSS at 0) / Q.
    With a deep queue, `dragonctl ps` and `status` are timed too.

Binaries: dragond, dragon-agent, dragonctl from $DRAGON_BIN_DIR, build-out/bin
or bazel-bin (the newest found); head_scale and sim_agents from bazel-bin/bench
(build them with `bazel build //bench/...`). The last line of stdout is one JSON object
(also written to --json-out) with the raw numbers, "table_md" and "plots".
See bench/HEAD_SCALE.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dragon_parsl.local_head import LocalHead, LocalHeadError
from proc_counts import thread_context_switches

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30

# Full runs are 500k tasks: at ~300k tasks/s a 100k-task run lasts 0.3 s, short enough for
# one scheduler hiccup on the shared cores to move a point by 20%.
QUICK = dict(agents=[1, 4, 16], workers=8, tasks=20000, repeats=1, queues=[0, 100_000])
FULL = dict(agents=[1, 4, 16, 64, 256], workers=8, tasks=500_000, repeats=3,
            queues=[0, 100_000, 1_000_000])


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[head_scale] {msg}", file=sys.stderr, flush=True)


def find_binary(name: str, bin_dir: str | None) -> Path:
    subdir = {"dragond": "daemon", "dragon-agent": "agent", "dragonctl": "client",
              "head_scale": "bench", "sim_agents": "bench"}[name]
    if bin_dir and (Path(bin_dir) / name).is_file():
        return Path(bin_dir) / name
    candidates = []
    if os.environ.get("DRAGON_BIN_DIR"):
        candidates.append(Path(os.environ["DRAGON_BIN_DIR"]) / name)
    candidates += [REPO / "build-out" / "bin" / name, REPO / "bazel-bin" / subdir / name]
    found = [p for p in candidates if p.is_file() and os.access(p, os.X_OK)]
    if not found:
        hint = ("bazel build //bench/..." if name in ("head_scale", "sim_agents")
                else "make build (or bazel build //daemon:dragond //agent:dragon-agent //client:dragonctl)")
        raise BenchError(f"{name} not found (looked at {', '.join(str(c) for c in candidates)}); "
                         f"run: {hint}")
    return max(found, key=lambda p: p.stat().st_mtime)


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                parts = value.split()
                out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all of pid's live threads."""
    return thread_context_switches(pid)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Head:
    """A dragond in the foreground with no agents of its own."""

    def __init__(self, bins: dict, work: Path, name: str, extra: tuple = ()):
        self.run_dir = work / name
        self.env = dict(os.environ, DRAGON_HOME=str(work / "home"))
        self.env.pop("DRAGON_HEAD", None)
        self.local = LocalHead(self.run_dir, str(bins["dragond"]), extra_args=[
            "--agents", "none", "--log-level", "warn", *extra], env=self.env)
        try:
            self.address = self.local.start(timeout=30)
            token = self.local.credentials().token
        except LocalHeadError as e:
            self.local.stop()
            raise BenchError(str(e)) from None
        except Exception as e:  # a token file that cannot be used (CredentialsError)
            self.local.stop()
            raise BenchError(f"cannot use the token of {self.run_dir}: {e}") from None
        self.pid = self.local.proc.pid
        # For everything that talks to this head (agents, sim_agents, head_scale, dragonctl): the
        # run's token in $DRAGON_TOKEN, never on a command line (none with --auth none).
        self.client_env = dict(self.env)
        if token:
            self.client_env["DRAGON_TOKEN"] = token
        self.agents: list[subprocess.Popen] = []

    def start_agents(self, bins: dict, count: int, workers: int, task_us: int,
                     mode: str = "process") -> None:
        if mode == "hosted":
            if task_us:
                raise BenchError("--agent-mode hosted simulates zero-time tasks only (--task-us 0)")
            self.agents.append(subprocess.Popen(
                [str(bins["sim_agents"]), "--head", self.address, "--agents", str(count),
                 "--workers", str(workers), "--node-prefix", "sim-", "--connect-timeout", "120"],
                env=self.client_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            return
        for i in range(count):
            self.agents.append(subprocess.Popen(
                [str(bins["dragon-agent"]), "--head", self.address, "--node-id", f"sim-{i:03d}",
                 "--run-dir", str(self.run_dir), "--simulate-workers", str(workers),
                 "--simulate-task-us", str(task_us), "--log-level", "warn",
                 "--connect-timeout", "120"],
                env=self.client_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def agents_cpu(self) -> float:
        total = 0.0
        for a in self.agents:
            try:
                total += cpu_seconds(a.pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def stop(self) -> None:
        self.local.stop(timeout=30)
        for a in self.agents:
            try:
                a.wait(timeout=15)
            except subprocess.TimeoutExpired:
                a.kill()
                a.wait()


def run_generator(bins: dict, head: Head, args: list[str], timeout: float) -> dict:
    cp = subprocess.run([str(bins["head_scale"]), "run", "--head", head.address, *args],
                        env=head.client_env, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in cp.stdout.splitlines() if l.startswith("{")]
    if cp.returncode != 0 or not lines:
        raise BenchError(f"head_scale run {' '.join(args)} exited {cp.returncode}: "
                         f"{cp.stderr.strip()} {cp.stdout.strip()[-500:]}")
    return json.loads(lines[-1])


def measure_throughput(bins: dict, work: Path, agents: int, workers: int, tasks: int,
                       repeats: int, task_us: int, batch: int, head_args: tuple = (),
                       mode: str = "process") -> dict:
    head = Head(bins, work, f"tput-{mode}-{agents}", head_args)
    try:
        t0 = time.monotonic()
        head.start_agents(bins, agents, workers, task_us, mode)
        # A warm-up run that also waits until every agent has registered.
        run_generator(bins, head, ["--tasks", str(max(1000, min(5000, tasks // 10))),
                                   "--batch", str(batch), "--wait-nodes", str(agents),
                                   "--timeout-s", "240"], timeout=300)
        connect_s = time.monotonic() - t0
        runs = []
        for _ in range(repeats):
            head_cpu0, agents_cpu0 = cpu_seconds(head.pid), head.agents_cpu()
            csw0 = context_switches(head.pid)
            r = run_generator(bins, head, ["--tasks", str(tasks), "--batch", str(batch),
                                           "--timeout-s", "600"], timeout=660)
            r["head_cpu_s"] = cpu_seconds(head.pid) - head_cpu0
            r["agents_cpu_s"] = head.agents_cpu() - agents_cpu0
            r["head_cpu_us_per_task"] = 1e6 * r["head_cpu_s"] / tasks
            r["agents_cpu_us_per_task"] = 1e6 * r["agents_cpu_s"] / tasks
            # Threads that ended during the run (the session's) are not counted.
            r["head_context_switches"] = context_switches(head.pid) - csw0
            st = proc_status(head.pid)
            r["head_threads"] = st.get("Threads")
            # Per run, to see whether a long-lived head grows (dragond --keep-finished).
            r["head_rss_bytes"] = st.get("VmRSS")
            runs.append(r)
        rss = proc_status(head.pid)
    finally:
        head.stop()
    tps = [r["tasks_per_s"] for r in runs]
    cpu = [r["head_cpu_us_per_task"] for r in runs]
    head_cpu = statistics.median(cpu)
    return {
        "agent_mode": mode,
        "agents": agents, "workers_per_agent": workers, "tasks": tasks, "task_us": task_us,
        "repeats": repeats, "connect_and_warmup_s": round(connect_s, 2),
        "tasks_per_s": statistics.median(tps), "tasks_per_s_min": min(tps),
        "tasks_per_s_max": max(tps),
        "head_cpu_us_per_task": head_cpu,
        # The head's scheduling throughput per second of its own CPU: what
        # tasks/s would be with a core to itself.
        "tasks_per_head_cpu_s": 1e6 / head_cpu if head_cpu > 0 else None,
        "agents_cpu_us_per_task": statistics.median(r["agents_cpu_us_per_task"] for r in runs),
        "head_threads": runs[-1]["head_threads"],
        "head_rss_bytes_after": rss.get("VmRSS"),
        "exactly_once": all(r["missing"] == 0 and r["duplicates"] == 0 and r["unknown"] == 0
                            and r["ended"] == tasks for r in runs),
        "all_simulated": all(r["simulated"] == tasks for r in runs),
        "nodes_used": min(r["nodes_used"] for r in runs),
        "runs": runs,
    }


def time_ctl(bins: dict, head: Head, *args: str) -> float | None:
    if "dragonctl" not in bins:
        return None
    t0 = time.monotonic()
    cp = subprocess.run([str(bins["dragonctl"]), "--head", head.address, "--timeout", "60",
                         *args], env=head.client_env, capture_output=True, text=True,
                        timeout=120)
    if cp.returncode != 0:
        raise BenchError(f"dragonctl {' '.join(args)} failed: {cp.stderr.strip()}")
    return time.monotonic() - t0


def measure_memory(bins: dict, work: Path, queued: int, payload: int, batch: int) -> dict:
    head = Head(bins, work, f"mem-{queued}")
    fill = None
    try:
        time.sleep(0.3)  # let the server's threads settle
        before = proc_status(head.pid)
        result = {"queued": queued, "payload_bytes": payload, "rss_bytes_empty": before["VmRSS"]}
        if queued > 0:
            fill = subprocess.Popen(
                [str(bins["head_scale"]), "fill", "--head", head.address, "--tasks", str(queued),
                 "--payload-bytes", str(payload), "--batch", str(batch), "--timeout-s", "600"],
                env=head.client_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = fill.stdout.readline()
            if not line.startswith("{"):
                fill.kill()
                raise BenchError(f"head_scale fill failed: {fill.stderr.read().strip()}")
            result["fill"] = json.loads(line)
            time.sleep(0.3)
        st = proc_status(head.pid)
        result["rss_bytes"] = st["VmRSS"]
        result["hwm_bytes"] = st["VmHWM"]
        if queued > 0:
            result["bytes_per_task"] = (st["VmRSS"] - before["VmRSS"]) / queued
            result["hwm_bytes_per_task"] = (st["VmHWM"] - before["VmRSS"]) / queued
            result["dragonctl_status_s"] = time_ctl(bins, head, "status")
            result["dragonctl_ps_pending_s"] = time_ctl(bins, head, "ps", "--state", "pending",
                                                        "--limit", "100")
            result["dragonctl_ps_done_s"] = time_ctl(bins, head, "ps", "--state", "done",
                                                     "--limit", "100")
    finally:
        if fill is not None:
            try:
                fill.stdin.close()
                fill.wait(timeout=60)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                fill.kill()
        head.stop()
    return result


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg()}


def fmt_int(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def build_table(tput: list, mem: list, targets: dict) -> str:
    lines = ["| agents | agent mode | workers/agent | tasks | tasks/s (median) | min..max | "
             "head CPU us/task | tasks per head CPU-s | agents CPU us/task | head threads | "
             "exactly once |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tput:
        lines.append(f"| {t['agents']} | {t['agent_mode']} | {t['workers_per_agent']} | "
                     f"{t['tasks']:,} | {fmt_int(t['tasks_per_s'])} | "
                     f"{fmt_int(t['tasks_per_s_min'])}..{fmt_int(t['tasks_per_s_max'])} | "
                     f"{t['head_cpu_us_per_task']:.1f} | {fmt_int(t['tasks_per_head_cpu_s'])} | "
                     f"{t['agents_cpu_us_per_task']:.1f} | {t['head_threads']} | "
                     f"{'yes' if t['exactly_once'] else 'NO'} |")
    lines += ["", "| queued tasks | head RSS (MiB) | head peak RSS (MiB) | bytes/task (RSS) | "
              "bytes/task (peak) |", "|---|---|---|---|---|"]
    for m in mem:
        bpt = m.get("bytes_per_task")
        hpt = m.get("hwm_bytes_per_task")
        lines.append(f"| {m['queued']:,} | {m['rss_bytes'] / 2**20:.0f} | "
                     f"{m['hwm_bytes'] / 2**20:.0f} | {fmt_int(bpt)} | {fmt_int(hpt)} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for name, t in targets.items():
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    return "\n".join(lines)


def check_targets(tput: list, mem: list) -> dict:
    targets = {}
    big = [m for m in mem if m["queued"] >= 1_000_000]
    if big:
        m = big[-1]
        # Projected to exactly 1M if the run used more; peak counts, not just current.
        peak = m["hwm_bytes"]
        targets["rss_1m_queued"] = {
            "target": "1M queued tasks in < 1 GiB of head memory",
            "measured": f"{peak / 2**20:.0f} MiB peak, {m['rss_bytes'] / 2**20:.0f} MiB now "
                        f"with {m['queued']:,} queued",
            "met": peak < GiB}
    else:
        deepest = max(mem, key=lambda m: m["queued"]) if mem else None
        if deepest and deepest["queued"] > 0:
            proj = deepest["rss_bytes_empty"] + deepest["hwm_bytes_per_task"] * 1_000_000
            targets["rss_1m_queued"] = {
                "target": "1M queued tasks in < 1 GiB of head memory",
                "measured": f"not run (--quick); projected from {deepest['queued']:,}: "
                            f"{proj / 2**20:.0f} MiB",
                "met": None}
    for mode in dict.fromkeys(t["agent_mode"] for t in tput):
        runs = [t for t in tput if t["agent_mode"] == mode]
        if len(runs) < 2:
            continue
        first, last = runs[0], runs[-1]
        best_before = max(t["tasks_per_s"] for t in runs[:-1])
        ratio = last["tasks_per_s"] / best_before
        cpu_ratio = last["head_cpu_us_per_task"] / first["head_cpu_us_per_task"]
        best_head = max(t["tasks_per_head_cpu_s"] for t in runs[:-1])
        head_ratio = last["tasks_per_head_cpu_s"] / best_head
        key = "throughput_vs_agents" + ("" if mode == "process" else f"_{mode}")
        targets[key] = {
            "target": f"scheduling throughput does not fall as agents grow to {last['agents']} "
                      f"({mode} agents; here: >= 90% of the best at fewer agents)",
            "measured": f"{fmt_int(last['tasks_per_s'])} tasks/s at {last['agents']} agents = "
                        f"{ratio:.2f}x the best at fewer ({fmt_int(best_before)}); per head "
                        f"CPU-second {head_ratio:.2f}x the best; head CPU/task "
                        f"{cpu_ratio:.2f}x that at {first['agents']} agent(s)",
            "met": ratio >= 0.9,
            "ratio": ratio, "head_cpu_per_task_ratio": cpu_ratio,
            "tasks_per_head_cpu_s_ratio": head_ratio}
    return targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="agents 1,4,16; 20k tasks; queue 100k (~30 s)")
    mode.add_argument("--full", action="store_true", help="agents 1..256; 100k tasks x3; queue 1M")
    ap.add_argument("--json-out", help="also write the JSON result here")
    ap.add_argument("--agents", help="comma-separated agent counts (overrides the mode)")
    ap.add_argument("--workers", type=int, help="simulated workers per agent")
    ap.add_argument("--tasks", type=int, help="tasks per throughput run")
    ap.add_argument("--repeats", type=int, help="throughput runs per agent count")
    ap.add_argument("--queues", help="comma-separated queue depths for the memory runs")
    ap.add_argument("--task-us", type=int, default=0, help="simulated run time of each task")
    ap.add_argument("--agent-mode",
                    help="comma-separated: process (one dragon-agent --simulate-workers per "
                    "agent) and/or hosted (all agents in one sim_agents process, so that the "
                    "load generator costs the 2 shared cores less); default: process,hosted "
                    "with --full, process otherwise")
    ap.add_argument("--payload-bytes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000, help="tasks per SubmitBatch")
    ap.add_argument("--bin-dir", help="take dragond, dragon-agent, dragonctl (and head_scale if "
                    "there) from this directory")
    ap.add_argument("--prefetch", type=int, help="dragond --prefetch (tasks queued per worker on "
                    "an agent beyond the running one; dragond's default if not given)")
    ap.add_argument("--keep-finished", type=int, help="dragond --keep-finished (finished tasks "
                    "the head keeps, -1 = all; dragond's default if not given)")
    ap.add_argument("--head-arg", action="append", default=[], metavar="ARG",
                    help="an extra dragond start argument for the throughput heads, e.g. "
                    "--head-arg=--heartbeat-interval-ms=60000; repeatable")
    args = ap.parse_args()
    cfg = dict(FULL if args.full else QUICK)
    if args.agents:
        cfg["agents"] = [int(x) for x in args.agents.split(",")]
    if args.queues:
        cfg["queues"] = [int(x) for x in args.queues.split(",")]
    for key in ("workers", "tasks", "repeats"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    if args.agent_mode is None:
        args.agent_mode = "process,hosted" if args.full else "process"
    modes = [m for m in args.agent_mode.split(",") if m]
    if not modes or any(m not in ("process", "hosted") for m in modes):
        print(f"head_scale: --agent-mode takes process and/or hosted, not {args.agent_mode!r}",
              file=sys.stderr)
        return 2
    try:
        needed = ["dragond", "dragon-agent", "head_scale"] + (["sim_agents"] if "hosted" in modes else [])
        bins = {n: find_binary(n, args.bin_dir) for n in needed}
        try:
            bins["dragonctl"] = find_binary("dragonctl", args.bin_dir)
        except BenchError:
            pass
    except BenchError as e:
        print(f"head_scale: {e}", file=sys.stderr)
        return 2

    head_args = ("--prefetch", str(args.prefetch)) if args.prefetch is not None else ()
    if args.keep_finished is not None:
        head_args += ("--keep-finished", str(args.keep_finished))
    head_args += tuple(args.head_arg)
    started = time.monotonic()
    result = {"benchmark": "head_scale", "mode": "full" if args.full else "quick",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "config": cfg | {"task_us": args.task_us, "prefetch": args.prefetch,
                                                     "agent_modes": modes,
                                                     "payload_bytes": args.payload_bytes,
                                                     "keep_finished": args.keep_finished,
                                                     "head_args": args.head_arg,
                                                     "batch": args.batch},
              "binaries": {k: str(v) for k, v in bins.items()}}
    work = Path(tempfile.mkdtemp(prefix="head-scale-"))
    tput, mem = [], []
    try:
        for mode, a in [(m, a) for m in modes for a in cfg["agents"]]:
            log(f"throughput: {a} simulated agent(s) ({mode}) x {cfg['workers']} workers, "
                f"{cfg['tasks']:,} tasks x {cfg['repeats']}, load avg {os.getloadavg()[0]:.1f}")
            t = measure_throughput(bins, work, a, cfg["workers"], cfg["tasks"], cfg["repeats"],
                                   args.task_us, args.batch, head_args, mode)
            log(f"  {t['tasks_per_s']:,.0f} tasks/s (runs {[round(r['tasks_per_s']) for r in t['runs']]}),"
                f" head {t['head_cpu_us_per_task']:.1f} us CPU/task, agents "
                f"{t['agents_cpu_us_per_task']:.1f} us CPU/task, exactly once: {t['exactly_once']}")
            log(f"  per run: head us CPU/task {[round(r['head_cpu_us_per_task'], 1) for r in t['runs']]},"
                f" head RSS MiB {[round((r['head_rss_bytes'] or 0) / 2**20) for r in t['runs']]}")
            tput.append(t)
        for q in cfg["queues"]:
            log(f"memory: {q:,} pending tasks of {args.payload_bytes} bytes")
            m = measure_memory(bins, work, q, args.payload_bytes, args.batch)
            log(f"  RSS {m['rss_bytes'] / 2**20:.0f} MiB, peak {m['hwm_bytes'] / 2**20:.0f} MiB"
                + (f", {m['bytes_per_task']:.0f} bytes/task" if q else ""))
            mem.append(m)
    except (BenchError, subprocess.TimeoutExpired) as e:
        print(f"head_scale: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    targets = check_targets(tput, mem)
    result.update({
        "throughput": tput, "memory": mem, "targets": targets,
        "elapsed_s": round(time.monotonic() - started, 1),
        "table_md": build_table(tput, mem, targets),
        "plots": {
            "sched_throughput_vs_agents": {
                "x": cfg["agents"],
                "series": {("tasks/s" if m == "process" else f"tasks/s ({m} agents)"):
                           [t["tasks_per_s"] for t in tput if t["agent_mode"] == m]
                           for m in modes},
                "xlabel": "agents", "ylabel": "tasks/s"},
            "head_rss_vs_queue": {
                "x": [m["queued"] for m in mem],
                "series": {"RSS MiB": [m["rss_bytes"] / 2**20 for m in mem],
                           "peak RSS MiB": [m["hwm_bytes"] / 2**20 for m in mem]},
                "xlabel": "queued tasks", "ylabel": "MiB"},
        },
    })
    text = json.dumps(result)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    print(result["table_md"], file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
