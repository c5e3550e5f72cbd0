"""The measurements of bench/cluster_start.py (the entry point, whose docstring describes them):
one `dragond start` over ssh and its floor `ssh HOST true`, one start inside a Slurm allocation, one
Parsl no-op run, each on a bed that cluster_start_beds.py brought up; and the parsing of the logs
of a run dir (dragond.log, the agents' logs) into the times of its start.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

from cluster_start_beds import BENCH, HOSTS, REPO, SLURM_CONF, TB_DIR, cpu_by_kind, processes_with

HEAD_IFACE = "tb0"
SALLOC_ARGS = ["--exclusive", "-t", "5"]
PARSL_CONFIGS = {  # name: (hosts, workers per host)
    "1x1": (1, 1), "4x1": (4, 1), "1x2": (1, 2), "2x1": (2, 1)}
PARSL_LABELS = {"1x1": "1 host x 1 worker", "4x1": "4 hosts x 1 worker", "1x2": "1 host x 2 workers",
                "2x1": "2 hosts x 1 worker"}

WORKERS_TIMEOUT_S = 60   # a start's wait for every worker's READY (also inside the salloc script)

LOG_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\] ")


# ---------------------------------------------------------------- logs of a run dir
def stamp(text: str) -> float:
    """A log timestamp (local time, as spdlog writes it) as seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def log_lines(path: Path) -> list[tuple[float, str]]:
    """(epoch seconds, text) of every stamped line of a dragond or agent log."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = LOG_RE.match(line)
        if m:
            out.append((stamp(m.group(1)), line[m.end():]))
    return out


# ---------------------------------------------------------------- one run of the service
def run(argv: list, env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    """A child in its own session (a terminal's Ctrl-C reaches only this script, which then tears
    down in order), stdin /dev/null, text output captured."""
    return subprocess.run([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True, **kw)


class Ctx:
    """The run's temp dir, its private binaries, environment and interpreter, and every run dir made
    in it: the teardown stops whatever head of them is still up."""

    def __init__(self, tmp: Path, bins: dict, env: dict, py: str):
        self.tmp = tmp
        self.bins = bins
        self.env = env
        self.py = py
        self.runs = 0
        self.run_dirs: list[Path] = []

    def run_dir(self, tag: str) -> Path:
        self.runs += 1
        rd = self.tmp / "runs" / f"{self.runs:03d}-{tag}"
        rd.parent.mkdir(parents=True, exist_ok=True)
        self.run_dirs.append(rd)
        return rd

    def stop(self, rd: Path) -> tuple[float | None, str]:
        """`dragond stop --run-dir rd` if its head is up; (seconds, error or "")."""
        if not (rd / "head.json").exists():
            return None, ""
        t0 = time.perf_counter()
        try:
            cp = run([self.bins["dragond"], "stop", "--run-dir", rd, "--timeout", "30"], self.env, 60)
        except subprocess.TimeoutExpired:
            return None, "dragond stop timed out"
        took = time.perf_counter() - t0
        return took, "" if cp.returncode == 0 else f"dragond stop exited {cp.returncode}: {cp.stderr.strip()[-500:]}"


def start_events(rd: Path, t0: float) -> dict:
    """From dragond.log and the agents' logs of run dir rd, seconds relative to t0 (the epoch time
    at which `dragond start` was run): head listening, launch, each agent registered/ready, each
    agent's workers ready."""
    lines = log_lines(rd / "dragond.log")
    ev: dict = {}
    launch = None
    for t, text in lines:
        if "listening on" in text and "listening_s" not in ev:
            ev["listening_s"] = t - t0
        if launch is None and (re.search(r"agent on \S+: ssh pid \d+ started", text)
                               or re.search(r"starting \d+ agent\(s\) with one srun step", text)):
            launch = t
    ready = {}
    registered = {}
    for t, text in lines:
        m = re.search(r"agent (\S+) \(incarnation 1\) ready$", text)
        if m:
            ready.setdefault(m.group(1), t)
        m = re.search(r"agent (\S+) registered: incarnation 1", text)
        if m:
            registered.setdefault(m.group(1), t)
    if launch is not None:
        ev["launch_s"] = launch - t0
    if ready:
        ev["last_agent_ready_s"] = max(ready.values()) - t0
        ev["first_agent_ready_s"] = min(ready.values()) - t0
        if launch is not None:
            ev["launch_to_ready_s"] = max(ready.values()) - launch
        if "listening_s" in ev:
            ev["listening_to_ready_s"] = max(ready.values()) - t0 - ev["listening_s"]
    started = {}                      # each agent's first log line: its process is up
    for a in sorted(rd.glob("agent-*.log")):
        first = log_lines(a)[:1]
        if first:
            started[a.stem.removeprefix("agent-")] = first[0][0]
    if started:
        ev["last_agent_process_s"] = max(started.values()) - t0
    ev["agents_process"] = {k: round(v - t0, 4) for k, v in sorted(started.items())}
    ev["agents_ready"] = {k: round(v - t0, 4) for k, v in sorted(ready.items())}
    ev["agents_registered"] = {k: round(v - t0, 4) for k, v in sorted(registered.items())}
    w = workers_ready(rd)
    ev["workers_expected"] = w["expected"]
    ev["workers_seen"] = w["seen"]
    if w["complete"] and w["last"] is not None:
        ev["workers_ready_s"] = w["last"] - t0
    return ev


def add_error(rec: dict, msg: str) -> None:
    """One more error of a case, after those it has ("; "): a later one (a failed stop after workers
    that were not ready) must not hide the first cause."""
    if msg:
        rec["error"] = f"{rec['error']}; {msg}" if rec.get("error") else msg


def workers_missing(rd: Path, agents: int) -> str:
    """The error of a wait for the workers that timed out: how many of how many were ready."""
    w = workers_ready(rd)
    msg = f"workers not ready within {WORKERS_TIMEOUT_S} s: {w['seen']} of {w['expected']} ready"
    if w["agents"] < agents:   # an agent that logged no header: its workers are not counted
        msg += f" ({agents - w['agents']} of {agents} agent(s) logged no worker count)"
    return msg


def workers_ready(rd: Path) -> dict:
    """Agents' logs of a run: every agent's header ("..., N workers (...") and its "slot K: worker pid
    X ready" lines. complete: every agent that wrote a header has all of its workers ready."""
    expected = seen = 0
    last = None
    agents = 0
    complete = True
    for p in sorted(rd.glob("agent-*.log")):
        want = None
        got = 0
        for t, text in log_lines(p):
            m = re.search(r", (\d+) workers \(", text)
            if want is None and m and "dragon-agent" in text:
                want = int(m.group(1))
            if re.search(r"slot \d+: worker pid \d+ ready", text):
                got += 1
                last = t if last is None else max(last, t)
        if want is None:
            complete = False
            continue
        agents += 1
        expected += want
        seen += got
        complete = complete and got >= want
    return {"agents": agents, "expected": expected, "seen": seen, "last": last, "complete": complete}


def wait_workers(rd: Path, agents: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w = workers_ready(rd)
        if w["agents"] >= agents and w["complete"]:
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- ssh starts
def ssh_start(ctx: Ctx, hosts: list[str], skip_bashrc: bool, rnd: int, workers: int | None = None,
              keep: bool = False, wait: bool = True) -> dict:
    tag = f"ssh{len(hosts)}-{'nobashrc' if skip_bashrc else 'bashrc'}-r{rnd}"
    rd = ctx.run_dir(tag)
    argv = [ctx.bins["dragond"], "start", "--launcher", "ssh", "--hosts", ",".join(hosts),
            "--ssh-command", TB_DIR / "ssh", "--listen", HEAD_IFACE, "--python", ctx.py, "--run-dir", rd,
            "--start-timeout", "60"] + (["--workers", str(workers)] if workers else [])
    rec: dict = {"round": rnd, "hosts": len(hosts), "bashrc": not skip_bashrc, "run_dir": str(rd)}
    t_epoch = time.time()
    t0 = time.perf_counter()
    try:
        cp = run(argv, ctx.env, 90)
    except subprocess.TimeoutExpired:
        rec["error"] = "dragond start timed out after 90 s"
        add_error(rec, ctx.stop(rd)[1])
        return rec
    rec["wall_s"] = time.perf_counter() - t0
    rec["output"] = cp.stdout.strip()[-400:]
    if cp.returncode != 0 or f"{len(hosts)} of {len(hosts)} agent(s) ready" not in cp.stdout:
        rec["error"] = f"dragond start exited {cp.returncode}: {cp.stdout.strip()[-300:]} {cp.stderr.strip()[-800:]}"
        add_error(rec, ctx.stop(rd)[1])
        return rec
    m = re.search(r"head listening on (\S+) ", cp.stdout)
    rec["address"] = m.group(1) if m else None
    if (wait or keep) and not wait_workers(rd, len(hosts), WORKERS_TIMEOUT_S):
        add_error(rec, workers_missing(rd, len(hosts)))
    rec.update(start_events(rd, t_epoch))
    if not (wait or keep):
        rec.pop("workers_ready_s", None)
    if not keep:
        rec["stop_s"], err = ctx.stop(rd)
        add_error(rec, err)
    return rec


def ssh_true(hosts: list[str], bashrc: bool, rnd: int, timeout: float = 30) -> dict:
    """The floor under an ssh start: `ssh HOST true` to the same hosts at once (the bed's ssh wrapper),
    wall time until the last returns. One that does not return within `timeout` s fails this case
    only (the run goes on); every ssh is reaped and its pipe closed whatever happens."""
    rec: dict = {"round": rnd, "hosts": len(hosts), "bashrc": bashrc}
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        for h in hosts:
            procs[h] = subprocess.Popen([str(TB_DIR / "ssh"), h, "true"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        codes: dict[str, int | None] = {}
        for h, p in procs.items():
            try:
                codes[h] = p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[h] = None
        rec["wall_s"] = time.perf_counter() - t0
        hung = [h for h, c in codes.items() if c is None]
        if hung:
            add_error(rec, f"no answer within {timeout:.0f} s from {', '.join(hung)}")
        for h, c in codes.items():
            if c:   # exited: its stderr is complete (a hung one's is not read, it may never end)
                err = procs[h].stderr.read().decode(errors="replace").strip()
                add_error(rec, f"ssh {h} exited {c}: {err[-300:]!r}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()
    return rec


# ---------------------------------------------------------------- Slurm starts
SALLOC_SCRIPT = r'''
t0=$EPOCHREALTIME
out=$("$CS_DRAGOND" start --run-dir "$CS_RD" --python "$CS_PY" --start-timeout 60); rc=$?
t1=$EPOCHREALTIME
echo "CS_START rc=$rc t0=$t0 t1=$t1 job=$SLURM_JOB_ID"
echo "$out"
if [ $rc = 0 ] && [ "$CS_WAIT" = 1 ]; then
  "$CS_PY" "$CS_SCRIPT" --internal-wait-workers "$CS_RD" --agents "$CS_N"; echo "CS_WORKERS rc=$?"
fi
t2=$EPOCHREALTIME
"$CS_DRAGOND" stop --run-dir "$CS_RD" --timeout 30; src=$?
t3=$EPOCHREALTIME
echo "CS_STOP rc=$src t2=$t2 t3=$t3"
exit $rc
'''
# $CS_SCRIPT: the entry point (not this module), which has --internal-wait-workers
ENTRY_POINT = BENCH / "cluster_start.py"


def slurm_start(ctx: Ctx, nodes: int, rnd: int, wait: bool = True) -> dict:
    rd = ctx.run_dir(f"slurm{nodes}-r{rnd}")
    # LC_ALL=C: under e.g. LC_NUMERIC=de_DE bash prints $EPOCHREALTIME with a decimal comma
    env = dict(ctx.env, LC_ALL="C", SLURM_CONF=SLURM_CONF, CS_DRAGOND=ctx.bins["dragond"], CS_RD=str(rd), CS_PY=ctx.py,
               CS_SCRIPT=str(ENTRY_POINT), CS_N=str(nodes), CS_WAIT="1" if wait else "0")
    rec: dict = {"round": rnd, "nodes": nodes, "run_dir": str(rd)}
    t0 = time.perf_counter()
    try:
        cp = run(["salloc", f"-N{nodes}", *SALLOC_ARGS, "bash", "-c", SALLOC_SCRIPT], env, 150)
    except subprocess.TimeoutExpired:
        rec["error"] = "salloc timed out after 150 s"
        add_error(rec, ctx.stop(rd)[1])
        return rec
    rec["salloc_wall_s"] = time.perf_counter() - t0
    m = re.search(r"CS_START rc=(\d+) t0=([\d.]+) t1=([\d.]+) job=(\d*)", cp.stdout)
    if cp.returncode != 0 or not m or m.group(1) != "0":
        rec["error"] = f"salloc exited {cp.returncode}: {cp.stdout.strip()[-600:]} {cp.stderr.strip()[-800:]}"
        add_error(rec, ctx.stop(rd)[1])
        return rec
    t_epoch = float(m.group(2))
    rec["wall_s"] = float(m.group(3)) - t_epoch
    rec["job_id"] = m.group(4)
    rec["output"] = next((ln for ln in cp.stdout.splitlines() if "head listening on" in ln), "")
    if f"{nodes} of {nodes} agent(s) ready (slurm: " not in cp.stdout:
        add_error(rec, f"not every agent ready: {cp.stdout.strip()[-600:]}")
    w = re.search(r"CS_WORKERS rc=(\d+)", cp.stdout)
    if wait and (not w or w.group(1) != "0"):
        add_error(rec, workers_missing(rd, nodes))
    s = re.search(r"CS_STOP rc=(\d+) t2=([\d.]+) t3=([\d.]+)", cp.stdout)
    if s:
        rec["stop_s"] = float(s.group(3)) - float(s.group(2))
        if s.group(1) != "0":
            add_error(rec, f"dragond stop exited {s.group(1)}")
    g = re.search(r"Granted job allocation \d+", cp.stderr)
    rec["granted"] = bool(g)
    rec.update(start_events(rd, t_epoch))
    if not wait:
        rec.pop("workers_ready_s", None)
    return rec


# ---------------------------------------------------------------- Parsl no-op
def parsl_noop(ctx: Ctx, config: str, rnd: int, tasks: int, timeout: float) -> dict:
    nh, wph = PARSL_CONFIGS[config]
    rec: dict = {"round": rnd, "config": config, "hosts": nh, "workers_per_host": wph, "tasks": tasks}
    start = ssh_start(ctx, HOSTS[:nh], True, rnd, workers=wph, keep=True)
    rd = Path(start["run_dir"])
    rec["start"] = {k: start.get(k) for k in ("wall_s", "launch_to_ready_s", "workers_ready_s", "error")}
    try:
        if "error" in start:
            # "address": dragond start returned with every agent ready, so only the workers failed
            rec["error"] = (f"head and agents up, but {start['error']}" if "address" in start
                            else f"head did not start: {start['error']}")
            return rec
        cmd = [ctx.py, BENCH / "parsl_bench.py", "--executor", "dragon", "--benches", "noop", "--tasks", str(tasks),
               "--workers", str(nh * wph), "--parsl-logging", "off",
               "--dragon-option", f"address={start['address']!r}"]
        c0 = processes_with(str(rd))
        try:
            cp = run(cmd, ctx.env, timeout, cwd=str(REPO))
        except subprocess.TimeoutExpired:
            rec["error"] = f"parsl_bench.py timed out after {timeout:.0f} s"
            return rec
        c1 = processes_with(str(rd))
        if cp.returncode != 0:
            rec["error"] = f"parsl_bench.py exited {cp.returncode}: {cp.stderr.strip()[-1500:]}"
            return rec
        lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
        r = json.loads(lines[-1])["noop"] if lines else {"error": "no JSON line"}
        if "error" in r:
            rec["error"] = f"parsl_bench.py noop failed: {r['error']}"
            return rec
        # CPU of the run's processes over the whole client process (DFK start, warm-up, shutdown
        # included): an upper bound per task; processes that exited in between are not counted.
        cpu = {k: round(v - cpu_by_kind({p: c0[p] for p in c0 if p in c1}).get(k, 0.0), 3)
               for k, v in cpu_by_kind({p: c1[p] for p in c1 if p in c0}).items()}
        rec.update(tasks_per_s=r["tasks_per_s"], total_s=r["total_s"], client_cpu_s=r.get("client_cpu_s"),
                   machine_busy_cpu_s=r.get("machine_busy_cpu_s"), service_cpu_s=cpu)
        return rec
    finally:
        rec["stop_s"], err = ctx.stop(rd)
        add_error(rec, err)
