#!/usr/bin/env python3
"""What authentication costs: no-op throughput with `dragond --auth token` next to `--auth none`.

    python bench/auth_cost.py --quick --json-out auth.json   # 2 rounds, small counts, ~1 min
    python bench/auth_cost.py --full  --json-out auth.json   # 10 rounds (the default), ~5 min

Issue 10 asks that the token (checked by the head on every RPC and at the start of every
stream) cost no more than noise, under 3%. Each round starts two fresh heads side by side, one
with `--auth token` and one with `--auth none`:

    dragond start --foreground --exit-with-parent --port 0 --workers W --auth MODE
                  --run-dir $DRAGON_HOME/runs/MODE-rN

(their own $DRAGON_HOME under a temp dir, dragond's other defaults, heartbeats on), waits until
`dragonctl nodes --json` shows each one's W workers ready, and runs each benchmark four times,
ABBA (token, none, none, token; the order reversed every other round): the idle head costs only
its heartbeats, so the runs of a round are seconds apart, a drift within the round hits both
modes alike, and the two runs of one mode give an A/A ratio (the same head, nothing different
but time), the noise against which token/none is read:

  native  bazel-bin/bench/native_bench --head ADDR --kind python --mode throughput --tasks N
          (the C++ client of bench/native_bench.py, no-op Parsl-packed Python tasks);
  parsl   python bench/parsl_bench.py --executor dragon --benches noop --tasks M
          --dragon-option address='ADDR' --parsl-logging off|default
          (DragonExecutor through Parsl's DFK, all M submitted at once);

then stops both heads, and then
  sim     bench/head_scale.py's throughput run, ABBA as well, each run on a fresh
          `dragond --agents none --auth MODE` with 4 `dragon-agent --simulate-workers 8` processes
          and `head_scale run` submitting no-ops (no Python anywhere: the service's own path, the
          least noisy of the three, and where a per-task cost of the token would show first).

Clients find the token the way a user's do: through the head.json under
$DRAGON_HOME (a head with `--auth none` names no token file, and they send none). Besides tasks/s,
the CPU seconds of dragond and of its agent and workers during each measurement (from /proc)
give CPU per task, which moves less with other load than tasks/s does. Ratios token/none are
taken within each round (the mean of each mode's two runs) and their median is reported, with
every raw number. Parsl's logging is off by default: under its DEBUG logging the DFK costs ten
times what the executor does and would hide any difference.

The last stdout line is one JSON object (also written to --json-out; --md-out writes the
markdown table) with every run, the per-round ratios, "table_md" and "targets".
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
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

QUICK = dict(rounds=2, native_tasks=10_000, parsl_tasks=3_000, sim_tasks=50_000)
FULL = dict(rounds=10, native_tasks=50_000, parsl_tasks=10_000, sim_tasks=300_000)
SIM_AGENTS, SIM_WORKERS = 4, 8
MODES = ("token", "none")
LIMIT = 0.03  # issue 10: the cost of authentication must stay under 3%


def log(msg: str) -> None:
    print(f"auth_cost: {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def find_binary(name: str, bin_dir: str | None, bazel_path: str | None = None) -> str:
    candidates = []
    if bin_dir:
        candidates.append(Path(bin_dir) / name)
    if os.environ.get("DRAGON_BIN_DIR"):
        candidates.append(Path(os.environ["DRAGON_BIN_DIR"]) / name)
    candidates.append(REPO / "build-out" / "bin" / name)
    if bazel_path:
        candidates.append(REPO / bazel_path)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    hint = "bazel build //bench:native_bench" if bazel_path else "make build"
    raise BenchError(f"{name} not found (looked at {', '.join(map(str, candidates))}); run '{hint}'")


def cpu_seconds(pid: int) -> float:
    """utime + stime + reaped children's (cutime, cstime) of pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class Head:
    def __init__(self, bins: dict, home: Path, mode: str, rnd: int, workers: int, env: dict):
        self.bins = bins
        self.mode = mode
        self.run_dir = home / "runs" / f"{mode}-r{rnd}"
        self.env = dict(env, DRAGON_HOME=str(home))
        self.cmd = [bins["dragond"], "start", "--foreground", "--exit-with-parent", "--port", "0",
                    "--run-dir", str(self.run_dir), "--workers", str(workers), "--python", sys.executable,
                    "--auth", mode]
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self, workers: int, timeout: float = 60) -> None:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir.parent / f"{self.run_dir.name}.console", "ab") as console:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.run_dir / "head.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dragond did not start ({' '.join(self.cmd)})")
            time.sleep(0.02)
        time.sleep(0.05)
        self.address = json.loads((self.run_dir / "head.json").read_text())["address"]
        while True:  # its workers up, so that no measurement includes their start
            cp = subprocess.run([self.bins["dragonctl"], "--run-dir", str(self.run_dir), "nodes", "--json"],
                                env=self.env, capture_output=True, text=True, timeout=30)
            if cp.returncode == 0 and any(n["state"] == "ready" and n["ready_workers"] >= workers
                                          for n in json.loads(cp.stdout)["nodes"]):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"workers not ready within {timeout:.0f} s: {cp.stdout} {cp.stderr}")
            time.sleep(0.1)

    def cpu(self) -> tuple[float, float]:
        """(dragond's CPU s, its agent's and workers' CPU s, reaped ones included)."""
        pid = self.proc.pid
        return cpu_seconds(pid), sum(cpu_seconds(p) for p in tree(pid))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError("no JSON line in the output")
    return json.loads(lines[-1])


def run_native(bins: dict, head: Head, tasks: int, payload: Path, timeout: float) -> dict:
    cmd = [bins["native_bench"], "--head", head.address, "--kind", "python", "--mode", "throughput",
           "--tasks", str(tasks), "--payload-file", str(payload), "--json", "--timeout-s", str(int(timeout))]
    c0 = head.cpu()
    cp = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=timeout + 30)
    c1 = head.cpu()
    if cp.returncode != 0:
        raise BenchError(f"native_bench exited {cp.returncode}: {cp.stderr.strip()[-1500:]}")
    r = last_json(cp.stdout)
    return {"tasks": tasks, "tasks_per_s": r["tasks_per_s"], "head_cpu_s": c1[0] - c0[0],
            "agent_cpu_s": c1[1] - c0[1], "client_cpu_s": r.get("client_cpu_s"), "raw": r}


def run_parsl(head: Head, tasks: int, workers: int, logging_mode: str, timeout: float) -> dict:
    cmd = [sys.executable, str(BENCH / "parsl_bench.py"), "--executor", "dragon", "--benches", "noop",
           "--tasks", str(tasks), "--workers", str(workers), "--parsl-logging", logging_mode,
           "--dragon-option", f"address={head.address!r}"]
    c0 = head.cpu()
    cp = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    c1 = head.cpu()
    if cp.returncode != 0:
        raise BenchError(f"parsl_bench.py exited {cp.returncode}: {cp.stderr.strip()[-1500:]}")
    r = last_json(cp.stdout)["noop"]
    if "error" in r:
        raise BenchError(f"parsl_bench.py noop failed: {r['error']}")
    return {"tasks": tasks, "tasks_per_s": r["tasks_per_s"], "head_cpu_s": c1[0] - c0[0],
            "agent_cpu_s": c1[1] - c0[1], "client_cpu_s": r.get("client_cpu_s"), "raw": r}


def run_sim(work: Path, mode: str, tasks: int, bin_dir: str | None, env: dict) -> dict:
    """head_scale.py's throughput run: a fresh `dragond --agents none --auth MODE` and SIM_AGENTS
    `dragon-agent --simulate-workers` processes (no Python: every task is the service's own path),
    `head_scale run` submitting `tasks` no-ops; tasks/s and the head's and agents' CPU per task."""
    import head_scale

    work.mkdir(parents=True, exist_ok=True)
    bins = {n: head_scale.find_binary(n, bin_dir) for n in ("dragond", "dragon-agent", "head_scale")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # head_scale.Head takes os.environ: no DRAGON_TOKEN/DRAGON_HEAD of ours
    try:
        t = head_scale.measure_throughput(bins, work, SIM_AGENTS, SIM_WORKERS, tasks, 1, 0, 1000,
                                          ("--auth", mode), "process")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if not t["exactly_once"]:
        raise BenchError(f"head_scale run: not every task ended exactly once: {t['runs']}")
    return {"tasks": tasks, "tasks_per_s": t["tasks_per_s"],
            "head_cpu_s": t["head_cpu_us_per_task"] * tasks / 1e6,
            "agent_cpu_s": t["agents_cpu_us_per_task"] * tasks / 1e6, "raw": t["runs"][0]}


def make_payload(path: Path, env: dict) -> None:
    """pack_apply_message(noop, (), {}) with noop from bench/noop_task.py (as bench/native_bench.py)."""
    code = ("import sys, parsl.serialize, noop_task\n"
            "open(sys.argv[1], 'wb').write(parsl.serialize.pack_apply_message(noop_task.noop, (), {}))\n")
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=120)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list, benches: list) -> dict:
    out = {}
    for b in benches:
        s: dict = {}
        for mode in MODES:
            rs = [r for r in runs if r["bench"] == b and r["auth"] == mode and "error" not in r]
            s[mode] = {"tasks_per_s": median([r["tasks_per_s"] for r in rs]),
                       "runs": [round(r["tasks_per_s"]) for r in rs],
                       "head_cpu_us_per_task": median([1e6 * r["head_cpu_s"] / r["tasks"] for r in rs]),
                       "agent_cpu_us_per_task": median([1e6 * r["agent_cpu_s"] / r["tasks"] for r in rs]),
                       "client_cpu_us_per_task": median([1e6 * r["client_cpu_s"] / r["tasks"] for r in rs
                                                         if r.get("client_cpu_s") is not None])}
        per_round, cpu_round, aa = [], [], []
        for rnd in sorted({r["round"] for r in runs}):
            got = {mode: [r for r in runs if r["bench"] == b and r["round"] == rnd and r["auth"] == mode
                          and "error" not in r] for mode in MODES}
            if not (got["token"] and got["none"]):
                continue
            on = statistics.fmean(r["tasks_per_s"] for r in got["token"])
            off = statistics.fmean(r["tasks_per_s"] for r in got["none"])
            per_round.append(on / off)
            cpu_on = sum(r["head_cpu_s"] for r in got["token"]) / sum(r["tasks"] for r in got["token"])
            cpu_off = sum(r["head_cpu_s"] for r in got["none"]) / sum(r["tasks"] for r in got["none"])
            if cpu_off > 0:
                cpu_round.append(cpu_on / cpu_off)
            for mode in MODES:  # the same head, the same round: only noise between them
                if len(got[mode]) == 2:
                    aa.append(got[mode][0]["tasks_per_s"] / got[mode][1]["tasks_per_s"])
        s["ratio_token_over_none"] = {"median": median(per_round), "rounds": [round(x, 4) for x in per_round],
                                      "min": min(per_round) if per_round else None,
                                      "max": max(per_round) if per_round else None}
        s["head_cpu_ratio_token_over_none"] = {"median": median(cpu_round),
                                               "rounds": [round(x, 4) for x in cpu_round]}
        # Noise: first over second run of the same mode in the same round (no difference but time).
        s["aa_ratios"] = {"ratios": [round(x, 4) for x in aa], "min": min(aa) if aa else None,
                          "max": max(aa) if aa else None,
                          "median_abs_deviation": median([abs(x - 1) for x in aa])}
        s["errors"] = [r["error"] for r in runs if r["bench"] == b and "error" in r]
        out[b] = s
    return out


def fmt(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"


LABELS = {"native": "native (C++ client)", "parsl": "Parsl + DragonExecutor",
          "sim": f"service only ({SIM_AGENTS} simulated agents)"}


def table(summary: dict, cfg: dict) -> str:
    rows = [f"{cfg['rounds']} rounds, `--auth token` and `--auth none` side by side in each (two fresh heads, "
            f"which one is measured first alternating), {cfg['workers']} workers; native {cfg['native_tasks']:,} no-ops, Parsl "
            f"{cfg['parsl_tasks']:,} no-ops (Parsl logging {cfg['parsl_logging']}), service only "
            f"{cfg['sim_tasks']:,} no-ops on {SIM_AGENTS} simulated agents. Ratio: median of the "
            f"per-round ratios token/none, each mode measured twice per round "
            f"(ABBA order) and averaged.", "",
            "| benchmark | auth token: tasks/s (runs) | auth none: tasks/s (runs) | token/none per round | "
            "token/none (median) | noise: same auth, same round (A/A) | head CPU us/task token / none | "
            "client CPU us/task token / none |",
            "|---|---|---|---|---|---|---|---|"]
    for b, s in summary.items():
        on, off, rt, aa = s["token"], s["none"], s["ratio_token_over_none"], s["aa_ratios"]
        rows.append(f"| {LABELS[b]} | {fmt(on['tasks_per_s'])} ({', '.join(f'{x:,}' for x in on['runs'])}) | "
                    f"{fmt(off['tasks_per_s'])} ({', '.join(f'{x:,}' for x in off['runs'])}) | "
                    f"{', '.join(f'{x:.3f}' for x in rt['rounds'])} | {fmt(rt['median'], 3)} | "
                    f"{fmt(aa['min'], 3)}..{fmt(aa['max'], 3)} (median deviation {fmt(aa['median_abs_deviation'], 3)}) | "
                    f"{fmt(on['head_cpu_us_per_task'], 2)} / {fmt(off['head_cpu_us_per_task'], 2)} | "
                    f"{fmt(on['client_cpu_us_per_task'], 1)} / {fmt(off['client_cpu_us_per_task'], 1)} |")
    return "\n".join(rows)


def targets(summary: dict) -> dict:
    """PASS: token/none >= 0.97. Below that, "within noise" when the shortfall is no larger than
    the median deviation of the A/A ratios of the same run (the run cannot tell it from nothing),
    else MISS."""
    out = {}
    for b, s in summary.items():
        m = s["ratio_token_over_none"]["median"]
        noise = s["aa_ratios"]["median_abs_deviation"]
        if m is None:
            status = "n/a"
        elif m >= 1 - LIMIT:
            status = "PASS"
        else:
            status = "within noise" if noise is not None and 1 - m <= noise else "MISS"
        out[f"auth_cost_{b}"] = {
            "target": f"{LABELS[b]}: no-op throughput with authentication >= {1 - LIMIT:.2f}x without "
                      f"(cost under {LIMIT:.0%})",
            "measured": "n/a" if m is None else
            f"{m:.3f}x (median of per-round ratios {s['ratio_token_over_none']['rounds']}; "
            f"{fmt(s['token']['tasks_per_s'])} vs {fmt(s['none']['tasks_per_s'])} tasks/s; A/A noise: median "
            f"deviation {fmt(noise, 3)})",
            "met": None if status in ("n/a", "within noise") else status == "PASS", "status": status}
    return out


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 rounds, 10k native / 3k Parsl no-ops")
    size.add_argument("--full", action="store_true", help="10 rounds, 50k native / 10k Parsl no-ops (default)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--native-tasks", type=int)
    p.add_argument("--parsl-tasks", type=int)
    p.add_argument("--benches", nargs="+", choices=("native", "parsl", "sim"), default=["native", "parsl", "sim"])
    p.add_argument("--sim-tasks", type=int)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--parsl-logging", choices=("off", "default"), default="off",
                   help="Parsl's logging in the Parsl benchmark (default off: see above)")
    p.add_argument("--bin-dir", help="where dragond, dragonctl and native_bench are")
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    p.add_argument("--json-out")
    p.add_argument("--md-out")
    args = p.parse_args()
    cfg = dict(FULL if args.full or not args.quick else QUICK)
    for k in ("rounds", "native_tasks", "parsl_tasks", "sim_tasks"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    cfg.update(workers=args.workers, parsl_logging=args.parsl_logging, benches=args.benches)
    try:
        bins = {"dragond": find_binary("dragond", args.bin_dir),
                "dragonctl": find_binary("dragonctl", args.bin_dir)}
        if "native" in args.benches:
            bins["native_bench"] = find_binary("native_bench", args.bin_dir, "bazel-bin/bench/native_bench")
    except BenchError as e:
        print(f"auth_cost: {e}", file=sys.stderr)
        print(json.dumps({"error": str(e)}))
        return 2

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    env = dict(os.environ)
    for var in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_TLS_CA"):
        env.pop(var, None)
    env["DRAGON_BIN_DIR"] = str(Path(bins["dragond"]).parent)
    # bench/ for noop_task (the native payload refers to it), this checkout's dragon_parsl.
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO / "parsl_plugin")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    result: dict = {"benchmark": "auth_cost", "mode": "quick" if args.quick else "full",
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"host": platform.node(), "cores": os.cpu_count(),
                                "python": platform.python_version(), "loadavg_start": os.getloadavg()},
                    "config": cfg, "binaries": bins,
                    "command": " ".join(["python", "bench/auth_cost.py", *sys.argv[1:]]), "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="dragon-auth-cost-"))
    home = tmp / "home"
    heads: list = []
    interrupted = None
    started = time.monotonic()
    try:
        payload = tmp / "noop.payload"
        make_payload(payload, env)
        for rnd in range(1, cfg["rounds"] + 1):
            # Both heads up at once (the idle one costs only its heartbeats), so that the two
            # measurements of a pair are seconds apart; which goes first alternates.
            order = list(MODES) if rnd % 2 else list(reversed(MODES))
            for mode in MODES:
                h = Head(bins, home, mode, rnd, args.workers, env)
                heads.append(h)
                h.start(args.workers)
            by_mode = {h.mode: h for h in heads}
            for b in [b for b in args.benches if b != "sim"]:
                # ABBA: a drift during the round hits both modes alike, and the two runs of one
                # mode give an A/A ratio, the noise against which the A/B ratio is read.
                for rep, mode in enumerate(order + order[::-1]):
                    head = by_mode[mode]
                    rec = {"bench": b, "auth": mode, "round": rnd, "rep": 1 if rep < len(order) else 2,
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    try:
                        if b == "native":
                            rec.update(run_native(bins, head, cfg["native_tasks"], payload, args.timeout))
                        else:
                            rec.update(run_parsl(head, cfg["parsl_tasks"], args.workers, args.parsl_logging,
                                                 args.timeout))
                        log(f"round {rnd} {b:6s} auth {mode:5s}: {rec['tasks_per_s']:,.0f} tasks/s, "
                            f"head {1e6 * rec['head_cpu_s'] / rec['tasks']:.1f} us CPU/task")
                    except (BenchError, subprocess.TimeoutExpired) as e:
                        rec["error"] = str(e)
                        log(f"round {rnd} {b} auth {mode}: FAILED: {e}")
                    result["runs"].append(rec)
            while heads:
                heads.pop().stop()
            if "sim" in args.benches:  # head_scale.py's own fresh head per run
                for rep, mode in enumerate(order + order[::-1]):
                    rec = {"bench": "sim", "auth": mode, "round": rnd, "rep": 1 if rep < len(order) else 2,
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    try:
                        rec.update(run_sim(tmp / "sim", mode, cfg["sim_tasks"], args.bin_dir, env))
                        log(f"round {rnd} sim    auth {mode:5s}: {rec['tasks_per_s']:,.0f} tasks/s, "
                            f"head {1e6 * rec['head_cpu_s'] / rec['tasks']:.2f} us CPU/task")
                    except Exception as e:  # noqa: BLE001  (head_scale's BenchError, a timeout)
                        rec["error"] = f"{type(e).__name__}: {e}"
                        log(f"round {rnd} sim auth {mode}: FAILED: {rec['error']}")
                    result["runs"].append(rec)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
        log(f"interrupted ({interrupted})")
    except BenchError as e:
        result["error"] = str(e)
        log(f"FAILED: {e}")
    finally:
        while heads:
            heads.pop().stop()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(result["runs"], args.benches)
    result.update(summary=summary, table_md=table(summary, cfg), targets=targets(summary),
                  elapsed_s=round(time.monotonic() - started, 1))
    result["machine"]["loadavg_end"] = os.getloadavg()
    if interrupted:
        result["interrupted"] = interrupted
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    if args.md_out:
        Path(args.md_out).write_text(result["table_md"] + "\n")
    print(line)
    failed = "error" in result or any("error" in r for r in result["runs"])
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
