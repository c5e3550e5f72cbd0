#!/usr/bin/env python3
"""How fast dragond notices a dead or hung agent, and how fast the node is back (issue 10).

    python bench/liveness.py --quick --json-out liveness.json   # 3 tries each, ~40 s
    python bench/liveness.py --full  --json-out liveness.json   # 20 tries each (the default), ~4 min

Each try starts a real head, `dragond start --foreground --exit-with-parent --port 0
--workers W` (W = 2 by default) with its own run directory under a private $DRAGON_HOME in a
temp dir, heartbeats at dragond's defaults (ping every 1000 ms, lost after 4000 ms of silence)
unless --head-arg says otherwise, and the local launcher's agent. Once `dragonctl nodes --json`
(run with that $DRAGON_HOME, so through the run's token like a user) shows the node ready with
all its workers, it waits a random 0..1 heartbeat interval (so that the signal falls anywhere in
the ping cycle) and sends the agent process either
  kill: SIGKILL (the process is gone; its TCP stream breaks), or
  stop: SIGSTOP (the process hangs with its sockets open: only the heartbeat deadline finds it).
Then it reads, from the run's logs:
  detect        signal -> dragond.log "agent NODE (incarnation 1, pid P on HOST) lost (WHY)";
  head ready    signal -> dragond.log "agent NODE (incarnation 2) ready" (the restarted agent
                registered and answered a ping: the head places tasks on it again);
  workers ready signal -> agent-NODE.log: every "slot K: worker pid X ready" of incarnation 2
                (its Python workers are up: a task starts at once).
Afterwards `dragonctl nodes --json` must show incarnation 2, state ready, a new agent pid.

Why the logs and not polling `dragonctl nodes`: the head's log line is the authoritative moment
of the declaration, stamped by the head itself (1 ms resolution in dragond.log, 1 us in the
agent's log, the same wall clock as this script's time.time()); polling would add up to one
poll interval of error, and spawning dragonctl 50 times a second on 2 cores would take CPU from
the head being measured. dragonctl is used only to wait for the steady state and to check the
state after each try.

A fresh head per try: the local launcher's restart backoff doubles for every restart in a row
(0.5 s, 1 s, 2 s, ... up to 8 s) until the agent has been up for 30 s, and it gives up after
--agent-restarts (5) restarts in a row. Twenty signals to one head would measure that backoff,
not a single failure; each try here is the first failure of its head (backoff 0.5 s).

The stopped agent is SIGKILLed by the launcher once declared lost; if it is still there (an
interrupted try), it gets SIGCONT and SIGKILL from here. Whatever happens (error, Ctrl-C,
SIGTERM) every head is stopped and every process it started, as recorded from /proc before each
signal and before each stop, is checked gone (leftovers are killed and listed in the JSON under
"leftover_processes", and old-incarnation processes still alive once the new one is ready under
each try's "orphans").

The last stdout line is one JSON object (also written to --json-out; --md-out writes the
markdown table): raw times of every try, median/min/max per signal, "table_md", "targets" (the
issue's "declared lost within 5 s", by the max) and "plots" for bench/run.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
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

QUICK = dict(tries=3)
FULL = dict(tries=20)
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
TARGET_S = 5.0  # issue 10: "a dead or hung agent is declared lost within 5 s"

TS = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]"


def log(msg: str) -> None:
    print(f"liveness: {msg}", file=sys.stderr, flush=True)


class TryFailed(RuntimeError):
    pass


def find_binary(name: str, bin_dir: str | None) -> str:
    candidates = []
    if bin_dir:
        candidates.append(Path(bin_dir) / name)
    if os.environ.get("DRAGON_BIN_DIR"):
        candidates.append(Path(os.environ["DRAGON_BIN_DIR"]) / name)
    candidates.append(REPO / "build-out" / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit(f"liveness: {name} not found (looked at {', '.join(map(str, candidates))} and PATH); "
                     f"run 'make build' or 'make install'")


def stamp(text: str) -> float:
    """A log timestamp (local time, as spdlog writes it) as seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


# ---------------------------------------------------------------- processes
def proc_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict:
    """{pid: (start time, command)} of every live process below root."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out: dict = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        st = proc_start_time(pid)
        if st is None:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out[pid] = (st, cmd)
    return out


def alive(pid: int, start_time: int) -> bool:
    """The same process (not a reused pid) still exists and is not a zombie."""
    return proc_start_time(pid) == start_time and proc_state(pid) not in (None, "Z", "X")


class Head:
    """One dragond in the foreground, in a session of its own, under a private $DRAGON_HOME."""

    def __init__(self, dragond: str, dragonctl: str, home: Path, name: str, workers: int,
                 extra: list[str]):
        self.dragonctl = dragonctl
        self.run_dir = home / "runs" / name
        self.env = dict(os.environ, DRAGON_HOME=str(home))
        for var in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_TLS_CA"):
            self.env.pop(var, None)
        self.env.setdefault("DRAGON_BIN_DIR", str(Path(dragond).resolve().parent))
        self.cmd = [dragond, "start", "--foreground", "--exit-with-parent", "--port", "0",
                    "--run-dir", str(self.run_dir), "--workers", str(workers),
                    "--python", sys.executable, *extra]
        self.proc: subprocess.Popen | None = None
        self.seen: dict = {}  # every process below dragond ever seen: {pid: (start, cmd)}
        self.signalled: list = []  # (pid, start time) of agents we stopped

    def start(self, timeout: float = 30) -> None:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir.parent / f"{self.run_dir.name}.console", "ab") as console:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.run_dir / "head.json").exists():
            if self.proc.poll() is not None:
                raise TryFailed(f"dragond exited with code {self.proc.returncode}: {' '.join(self.cmd)}\n"
                                f"{self.console()}")
            if time.monotonic() > deadline:
                raise TryFailed(f"dragond wrote no head.json within {timeout:.0f} s\n{self.console()}")
            time.sleep(0.01)

    def console(self) -> str:
        try:
            return (self.run_dir.parent / f"{self.run_dir.name}.console").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def snapshot(self) -> dict:
        now = descendants(self.proc.pid) if self.proc and self.proc.poll() is None else {}
        self.seen.update(now)
        return now

    def ctl_nodes(self) -> list:
        cp = subprocess.run([self.dragonctl, "nodes", "--json", "--timeout", "10"], env=self.env,
                            capture_output=True, text=True, timeout=30)
        if cp.returncode != 0:
            raise TryFailed(f"dragonctl nodes --json exited {cp.returncode}: {cp.stderr.strip()}")
        return json.loads(cp.stdout)["nodes"]

    def wait_node(self, incarnation: int, workers: int, timeout: float) -> dict:
        """Polls dragonctl (every 50 ms) until the node's given incarnation is ready with all its
        workers (ready_workers comes with the heartbeats, so this lags by up to one interval)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            nodes = self.ctl_nodes()
            last = nodes
            for n in nodes:
                if (int(n["incarnation"]) == incarnation and n["state"] == "ready"
                        and n["ready_workers"] >= workers):
                    return n
            time.sleep(0.05)
        raise TryFailed(f"node not ready at incarnation {incarnation} with {workers} worker(s) within "
                        f"{timeout:.0f} s; dragonctl nodes: {json.dumps(last)}")

    def read(self, name: str) -> str:
        try:
            return (self.run_dir / name).read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, name: str, pattern: str, timeout: float, count: int = 1, after: str | None = None
                 ) -> list:
        """Waits until `pattern` matched `count` lines of the run dir's file `name` (after the first
        line matching `after`, if given) and returns the matches."""
        rx, ax = re.compile(pattern), re.compile(after) if after else None
        deadline = time.monotonic() + timeout
        while True:
            lines = self.read(name).splitlines()
            if ax is not None:
                first = next((i for i, ln in enumerate(lines) if ax.search(ln)), None)
                lines = [] if first is None else lines[first:]
            found = [m for m in map(rx.search, lines) if m]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise TryFailed(f"no {count} line(s) matching {pattern!r} in {name} within {timeout:.0f} s; "
                                f"its end:\n{self.read(name)[-2000:]}")
            time.sleep(0.01)

    def stop(self) -> list:
        """SIGCONT to what we stopped, SIGTERM to dragond (it stops its agent), SIGKILL to its
        session if it does not exit; then every process ever seen below it must be gone.
        Returns the leftovers that had to be killed."""
        if self.proc is None:
            return []
        for pid, st in self.signalled:
            if alive(pid, st):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.snapshot()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"dragond pid {self.proc.pid} did not exit within 20 s of SIGTERM: killing its session")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        leftovers = []
        deadline = time.monotonic() + 5  # agents and workers exit after their head, give them a moment
        while True:
            left = {p: v for p, v in self.seen.items() if alive(p, v[0])}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid, (st, cmd) in left.items():
            leftovers.append({"pid": pid, "command": cmd})
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None
        return leftovers


# ---------------------------------------------------------------- one try
def one_try(bins: dict, home: Path, kind: str, index: int, workers: int, head_args: list[str],
            interval_s: float, timeout: float, heads: list) -> dict:
    head = Head(bins["dragond"], bins["dragonctl"], home, f"{kind}-{index:02d}", workers, head_args)
    heads.append(head)
    rec: dict = {"signal": kind, "try": index, "run_dir": str(head.run_dir)}
    try:
        head.start()
        node = head.wait_node(1, workers, timeout)
        node_id, pid = node["node_id"], int(node["agent_pid"])
        rec.update(node=node_id, agent_pid=pid)
        before = head.snapshot()
        old = {p: v for p, v in before.items() if p != pid}  # incarnation 1's pool and workers
        rec["phase_s"] = random.uniform(0, interval_s)
        time.sleep(rec["phase_s"])
        st = proc_start_time(pid)
        if st is None:
            raise TryFailed(f"agent pid {pid} is gone before the signal")
        if kind == "stop":
            head.signalled.append((pid, st))
        t_signal = time.time()
        os.kill(pid, SIGNALS[kind])
        rec["signal_at"] = t_signal
        nid = re.escape(node_id)
        lost = head.wait_log("dragond.log", TS + rf".*agent {nid} \(incarnation 1, pid {pid} on [^)]*\) lost "
                             r"\((.*)\): ", timeout)[0]
        ready = head.wait_log("dragond.log", TS + rf".*agent {nid} \(incarnation 2\) ready", timeout)[0]
        started = head.wait_log("dragond.log", TS + rf".*local agent {nid} started: pid (\d+)", timeout,
                                count=2)[1]
        workers_up = head.wait_log(f"agent-{node_id}.log", TS + r".*slot \d+: worker pid \d+ ready", timeout,
                                   count=workers, after=r"registered with dragond .* as incarnation 2 ")
        rec.update(
            lost_reason=lost.group(2),
            detect_s=stamp(lost.group(1)) - t_signal,
            restart_launched_s=stamp(started.group(1)) - t_signal,
            head_ready_s=stamp(ready.group(1)) - t_signal,
            workers_ready_s=max(stamp(m.group(1)) for m in workers_up) - t_signal,
            new_agent_pid=int(started.group(2)))
        after = head.wait_node(2, workers, timeout)
        rec["dragonctl_after"] = {k: after[k] for k in ("state", "incarnation", "agent_pid", "ready_workers")}
        if int(after["agent_pid"]) == pid:
            raise TryFailed(f"incarnation 2 has the old agent pid {pid}")
        rec["old_agent_gone"] = not alive(pid, st)
        # Old-incarnation processes (its pool and workers) still running once the new one is ready.
        rec["orphans"] = [{"pid": p, "command": v[1]} for p, v in old.items() if alive(p, v[0])]
    except TryFailed as e:
        rec["error"] = str(e)
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as e:  # dragonctl hung, bad JSON, ...
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["leftovers_at_stop"] = head.stop()
        heads.remove(head)
    return rec


# ---------------------------------------------------------------- summary
def stats(xs: list) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None, "raw": []}
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "raw": [round(x, 4) for x in xs]}


METRICS = (("detect_s", "declared lost"), ("head_ready_s", "head: new incarnation ready"),
           ("workers_ready_s", "its workers ready"))


def summarize(tries: list) -> dict:
    out = {}
    for kind in SIGNALS:
        rs = [r for r in tries if r["signal"] == kind]
        ok = [r for r in rs if "error" not in r]
        out[kind] = {m: stats([r.get(m) for r in ok]) for m, _ in METRICS}
        out[kind]["tries"] = len(rs)
        out[kind]["failed"] = len(rs) - len(ok)
        out[kind]["reasons"] = sorted({r["lost_reason"] for r in ok})
        out[kind]["orphans"] = sum(len(r.get("orphans", [])) for r in rs)
    return out


def fmt_s(st: dict) -> str:
    if not st["n"]:
        return "n/a"
    return f"{st['median']:.3f} / {st['max']:.3f}"


def table(summary: dict, cfg: dict) -> str:
    rows = [f"Seconds from the signal to the agent; median / max over the tries; a fresh head per try "
            f"({cfg['workers']} worker(s), heartbeat {cfg['heartbeat_interval_ms']} ms, timeout "
            f"{cfg['heartbeat_timeout_ms']} ms).", "",
            "| signal | tries (failed) | declared lost | head: restarted agent ready | its workers ready |",
            "|---|---|---|---|---|"]
    label = {"kill": "SIGKILL (kill -9)", "stop": "SIGSTOP (hung)"}
    for kind in SIGNALS:
        s = summary[kind]
        rows.append(f"| {label[kind]} | {s['tries']} ({s['failed']}) | {fmt_s(s['detect_s'])} | "
                    f"{fmt_s(s['head_ready_s'])} | {fmt_s(s['workers_ready_s'])} |")
    return "\n".join(rows)


def targets(summary: dict) -> dict:
    out = {}
    for kind, what in (("kill", "killed (SIGKILL)"), ("stop", "stopped (SIGSTOP)")):
        st = summary[kind]["detect_s"]
        measured = (f"max {st['max']:.3f} s, median {st['median']:.3f} s over {st['n']} tries"
                    if st["n"] else "no successful try")
        out[f"detect_{kind}"] = {
            "target": f"a {what} agent is declared lost within {TARGET_S:g} s",
            "measured": measured,
            "met": bool(st["n"]) and summary[kind]["failed"] == 0 and st["max"] <= TARGET_S}
    return out


def heartbeat_settings(head_args: list[str]) -> tuple[int, int]:
    interval, timeout = 1000, 4000  # dragond's defaults (daemon/main.cc)
    for i, a in enumerate(head_args):
        for flag in ("--heartbeat-interval-ms", "--heartbeat_interval_ms"):
            if a == flag and i + 1 < len(head_args):
                interval = int(head_args[i + 1])
            elif a.startswith(flag + "="):
                interval = int(a.split("=", 1)[1])
        for flag in ("--heartbeat-timeout-ms", "--heartbeat_timeout_ms"):
            if a == flag and i + 1 < len(head_args):
                timeout = int(head_args[i + 1])
            elif a.startswith(flag + "="):
                timeout = int(a.split("=", 1)[1])
    return interval, timeout


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


def _terminate(signum, frame):  # SIGTERM (and SIGHUP) end the run like Ctrl-C: cleanup runs
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 tries per signal (a smoke run)")
    size.add_argument("--full", action="store_true", help="20 tries per signal (the default)")
    p.add_argument("--tries", type=int, help="tries per signal (overrides the preset)")
    p.add_argument("--signals", nargs="+", choices=list(SIGNALS), default=list(SIGNALS),
                   help="which failures to cause (default: kill stop)")
    p.add_argument("--workers", type=int, default=2, help="workers of the agent (default 2)")
    p.add_argument("--head-arg", action="append", default=[], metavar="ARG",
                   help="an extra dragond start argument, e.g. --head-arg=--heartbeat-timeout-ms=2000; "
                        "repeatable")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for each event of a try")
    p.add_argument("--bin-dir", help="where dragond and dragonctl are (default: $DRAGON_BIN_DIR, "
                   "build-out/bin, PATH)")
    p.add_argument("--json-out", help="also write the JSON object here")
    p.add_argument("--md-out", help="also write the markdown table here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with every run's logs")
    p.add_argument("--seed", type=int, help="seed of the random phase before each signal")
    args = p.parse_args()
    cfg = dict(FULL if args.full or not args.quick else QUICK)
    if args.tries:
        cfg["tries"] = args.tries
    interval_ms, timeout_ms = heartbeat_settings(args.head_arg)
    cfg.update(workers=args.workers, signals=args.signals, head_args=args.head_arg,
               heartbeat_interval_ms=interval_ms, heartbeat_timeout_ms=timeout_ms,
               measured_from="dragond.log and agent-NODE.log timestamps (see the script's docstring)")
    random.seed(args.seed)
    bins = {n: find_binary(n, args.bin_dir) for n in ("dragond", "dragonctl")}

    # Ctrl-C even when started in the background by a shell that ignores SIGINT there.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    result: dict = {"benchmark": "liveness", "mode": "quick" if args.quick else "full", "machine": machine(),
                    "config": cfg, "binaries": bins, "command": " ".join(["python", "bench/liveness.py",
                                                                          *sys.argv[1:]]),
                    "tries": [], "leftover_processes": []}
    tmp = Path(tempfile.mkdtemp(prefix="dragon-liveness-"))
    home = tmp / "home"
    heads: list = []
    started = time.monotonic()
    interrupted = None
    try:
        # Interleaved (kill, stop, kill, ...) so that drift on the machine hits both alike.
        for i in range(1, cfg["tries"] + 1):
            for kind in args.signals:
                rec = one_try(bins, home, kind, i, args.workers, args.head_arg, interval_ms / 1000,
                              args.timeout, heads)
                result["tries"].append(rec)
                result["leftover_processes"] += rec["leftovers_at_stop"]
                if "error" in rec:
                    log(f"{kind} #{i}: FAILED: {rec['error'][:600]}")
                else:
                    log(f"{kind} #{i}: lost after {rec['detect_s']:.3f} s ({rec['lost_reason']}), head ready "
                        f"{rec['head_ready_s']:.3f} s, workers ready {rec['workers_ready_s']:.3f} s"
                        + (f"; {len(rec['orphans'])} old process(es) still alive" if rec["orphans"] else ""))
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
        log(f"interrupted ({interrupted}): cleaning up")
    finally:
        for head in list(heads):  # a try cut short by Ctrl-C or an unexpected error
            result["leftover_processes"] += head.stop()
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if result["leftover_processes"]:
        log(f"processes left behind (killed now): {result['leftover_processes']}")

    summary = summarize(result["tries"])
    result.update(summary=summary, elapsed_s=round(time.monotonic() - started, 1),
                  table_md=table(summary, cfg), targets=targets(summary))
    if interrupted:
        result["interrupted"] = interrupted
    result["machine"]["loadavg_end"] = os.getloadavg()
    xs = list(range(1, cfg["tries"] + 1))
    result["plots"] = {"detection_per_try": {
        "x": xs,
        "series": {f"{k}: declared lost (s)": [next((r.get("detect_s") for r in result["tries"]
                                                     if r["signal"] == k and r["try"] == i), None) for i in xs]
                   for k in args.signals},
        "xlabel": "try", "ylabel": "seconds from the signal"}}
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    if args.md_out:
        Path(args.md_out).write_text(result["table_md"] + "\n")
    print(line)
    failed = sum(summary[k]["failed"] for k in SIGNALS)
    return 130 if interrupted else (1 if failed or result["leftover_processes"] else 0)


if __name__ == "__main__":
    sys.exit(main())
