#!/usr/bin/env python3
"""Agents on many nodes (issue 11): time from `dragond start` to every agent ready, and Parsl no-op
throughput with agents on 4 hosts next to 1 host, on the test beds of tests/testbed/.

    python bench/cluster_start.py --quick --json-out cs.json   # 2 rounds, 500 no-ops, ~25 s
    python bench/cluster_start.py --full  --json-out cs.json   # 10 rounds (the default), ~8 min

Needs root (network namespaces): it brings the beds up itself and down at the end, also on an
error, Ctrl-C or SIGTERM (tests/testbed/netns.sh: ssh hosts h1..h4, the head on tb0 =
10.201.0.254; tests/testbed/slurm.sh up 4: Slurm nodes n1..n4, controller 10.200.0.1). The beds
are single-owner: for the whole run it holds the lock the pytest fixtures take
(/run/lock/dragon-testbeds.session, flock exclusive; tests/testbed_fixtures.py), waiting while a
test session holds it, so that it never tears down a test session's bed nor has its own torn
down. (--use-running-beds: the caller owns the beds and the lock; nothing is brought up or down.)

R rounds (--rounds; default 10, --quick 2); within each round every case is measured once, in an
order that alternates from round to round. Nothing is compared across runs.

  ssh    `dragond start --launcher ssh --hosts h1` and `--hosts h1,h2,h3,h4`, with
         `--ssh-command $TB_DIR/ssh --listen tb0 --python PY --run-dir D` (dragond's default
         workers: one per core of each host, 2), then `dragond stop`. Twice per round: once on a
         bed whose ssh commands run root's ~/.bashrc (as Debian's bash does for commands over ssh;
         here it runs `pyenv init` twice, ~0.3 s of CPU per ssh) and once on a bed brought up with
         TB_SSH_SKIP_BASHRC=1 (sshd sets SHLVL=1, so bash skips it): the bed is brought up again
         for each, in alternating order. Beside them, plain `ssh HOST true` to the same hosts at
         once: the floor under an ssh start.
  slurm  `salloc -N2` / `-N4 --exclusive -t 5` running a script on the login node that times
         `dragond start` (no flags: SLURM_JOB_ID picks the slurm launcher, one srun step) with
         $EPOCHREALTIME, waits for the workers, and runs `dragond stop`.
  parsl  no-op throughput through Parsl (bench/parsl_bench.py --executor dragon --benches noop,
         Parsl's logging off, DragonExecutor(address=...) on a head started over ssh with
         `--workers W`, on the bed without ~/.bashrc), one fresh head per measurement, configurations alternating in each round:
         4 hosts x 1 worker next to 1 host x 1 worker (and, in --full, 2 hosts x 1 worker next to
         1 host x 2 workers: the same workers, only the hosts differ). Its clock starts after the
         workers are ready and warmed up.

Per start: the wall time of `dragond start` until it returns (it returns once every agent is
ready); from dragond.log (1 ms stamps), the launch line ("agent on H: ssh pid ... started" /
"Slurm job J: starting N agent(s) with one srun step") to the last "agent H (incarnation 1)
ready" line; from the agents' logs (1 us stamps), when the last worker said READY (after start
returned: dragond does not wait for workers; --full only, --quick stops right after the start);
and `dragond stop`'s wall time. Per round, the CPU that processes not of the run used (other
users' builds and tests on this shared machine) is recorded under "other_load": the numbers of a
round during which someone else used the CPUs say so.

The binaries (--bin-dir, default $DRAGON_BIN_DIR or build-out/bin) and this checkout's
dragon_parsl are copied into a private temp dir at the start, so that a rebuild during the run
changes nothing. At the end nothing may be left: no process of the run (checked by its temp dir
in command lines and environments; killed by pid and listed under "leftovers" otherwise), no
namespace of the beds.

The last stdout line is one JSON object (also --json-out; --md-out writes the markdown): every
raw number, median/min/max per case, per-round ratios, "table_md", "targets" (issue 11: at most
2 s for 4 nodes) and "plots" for bench/run.py.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
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
TESTBED = REPO / "tests" / "testbed"
NETNS_SH, SLURM_SH = TESTBED / "netns.sh", TESTBED / "slurm.sh"
SESSION_LOCK = Path("/run/lock/dragon-testbeds.session")  # = testbed_fixtures.SESSION_LOCK
TB_DIR = Path("/tmp/tb-netns")                             # the fixtures' $TB_DIR
SLURM_CONF = "/etc/slurm/slurm.conf"                       # slurm.sh's default
HOSTS = ["h1", "h2", "h3", "h4"]
SLURM_NODES = 4
HEAD_IFACE = "tb0"
SALLOC_ARGS = ["--exclusive", "-t", "5"]
PARSL_CONFIGS = {  # name: (hosts, workers per host)
    "1x1": (1, 1), "4x1": (4, 1), "1x2": (1, 2), "2x1": (2, 1)}
PARSL_LABELS = {"1x1": "1 host x 1 worker", "4x1": "4 hosts x 1 worker", "1x2": "1 host x 2 workers",
                "2x1": "2 hosts x 1 worker"}
PARSL_RATIOS = (("4x1", "1x1"), ("2x1", "1x2"))
QUICK = dict(rounds=2, tasks=500, parsl_configs=["1x1", "4x1"], workers_ready=False)
FULL = dict(rounds=10, tasks=10_000, parsl_configs=["1x1", "4x1", "1x2", "2x1"], workers_ready=True)
GOAL_S = 2.0  # issue 11: at most 2 s from `dragond start` to every agent ready, 4 nodes

LOG_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\] ")


def log(msg: str) -> None:
    print(f"cluster_start: {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwinds to the teardown (during which signals are ignored)."""


# ---------------------------------------------------------------- signals
class Signals:
    """Raises Interrupted on SIGINT/SIGTERM/SIGHUP, except inside `deferred()` (bringing a bed up or
    down, the teardown), where the signal is remembered and raised when the section ends."""

    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.received: int | None = None

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, self.handler)

    def handler(self, signum, frame):
        self.received = self.received or signum
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            s, self.pending = self.pending, None
            raise Interrupted(signal.Signals(s).name)

    @contextlib.contextmanager
    def ignored(self):
        """For the teardown, which must finish: signals are ignored (still noted in `received`)."""
        old = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _note(self, signum, frame):
        self.received = self.received or signum


SIGNALS = Signals()


# ---------------------------------------------------------------- small helpers
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


def run(argv: list, env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    """A child in its own session (a terminal's Ctrl-C reaches only this script, which then tears
    down in order), stdin /dev/null, text output captured."""
    return subprocess.run([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True, **kw)


def stats(xs: list) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None, "raw": []}
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "raw": [round(x, 4) for x in xs]}


def processes_with(needle: str) -> dict[int, dict]:
    """{pid: {"cmd", "cpu_s", "name"}} of live processes whose command line or environment holds
    `needle` (a run dir, or the run's temp dir), this process excluded. Processes started over ssh
    or by srun live in the beds' network namespaces but in this pid namespace: all are seen."""
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    raw = needle.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            if raw not in cmd:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if raw not in f.read():
                        continue
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if rest[0] == "Z":
            continue
        args = [a.decode(errors="replace") for a in cmd.split(b"\0") if a]
        found[int(d)] = {"cmd": " ".join(args)[:300], "cpu_s": sum(int(x) for x in rest[11:13]) / tick,
                         "name": proc_kind(args)}
    return found


def proc_kind(args: list) -> str:
    if not args:
        return "other"
    exe = os.path.basename(args[0])
    if exe == "dragond":
        return "head"
    if exe == "dragon-agent":
        return "agents"
    if exe.startswith("python") and any("dragon_parsl.worker" in a for a in args):
        return "workers"
    if exe.startswith("python"):
        return "python"
    return "other"


def cpu_by_kind(procs: dict) -> dict:
    out: dict = {}
    for p in procs.values():
        out[p["name"]] = out.get(p["name"], 0.0) + p["cpu_s"]
    return out


def sha256_short(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        cp = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--",
                                "daemon", "agent", "common", "client", "parsl_plugin", "proto"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return cp.stdout.strip() + ("+dirty" if dirty else "") if cp.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class OtherLoad:
    """CPU used by processes that are not this run's, per round: whether the machine was quiet.
    Counted: every process of this network namespace (the beds' sshd and slurmd, whose reaped
    children are our agents, live in theirs) other than this script, its descendants and anything
    holding the run's temp dir in its command line or environment; utime+stime plus reaped
    children's, so a short-lived compile or test counts once its parent has waited for it."""

    def __init__(self, needle: str):
        self.needle = needle.encode()
        self.me = os.getpid()
        self.net = os.readlink("/proc/self/ns/net")
        self.tick = os.sysconf("SC_CLK_TCK")
        self.prev = self._snap()
        self.t = time.monotonic()

    def _snap(self) -> dict:
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{d}/ns/net") != self.net:
                    continue
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            out[int(d)] = (int(rest[19]), int(rest[1]), sum(int(x) for x in rest[11:15]) / self.tick)
        return out

    def _ours(self, pid: int, snap: dict) -> bool:
        seen = set()
        p = pid
        while p > 1 and p not in seen:          # this script or a descendant
            if p == self.me:
                return True
            seen.add(p)
            p = snap.get(p, (0, 0, 0))[1]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if self.needle in f.read():
                    return True
            with open(f"/proc/{pid}/environ", "rb") as f:
                return self.needle in f.read()
        except OSError:
            return False

    def mark(self, part: str, rnd: int) -> dict:
        """CPU of other processes since the previous mark."""
        now, t = self._snap(), time.monotonic()
        wall = t - self.t
        total, top = 0.0, []
        for pid, (start, _, cpu) in now.items():
            old = self.prev.get(pid)
            delta = cpu - old[2] if old and old[0] == start else cpu   # a new process: all of its CPU
            if delta <= 0 or pid == self.me or self._ours(pid, now):
                continue
            total += delta
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
            except OSError:
                cmd = "?"
            top.append((delta, f"{pid} {cmd}"))
        self.prev, self.t = now, t
        top.sort(reverse=True)
        cores = os.cpu_count() or 1
        return {"part": part, "round": rnd, "wall_s": round(wall, 2), "cpu_s": round(total, 2),
                "share": round(total / (wall * cores), 4) if wall > 0 else None,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "top": [f"{c:.2f} s {what}" for c, what in top[:3] if c >= 0.1]}


# ---------------------------------------------------------------- the beds
class SessionLock:
    """The lock of tests/testbed_fixtures.py's _SessionLock: exclusive flock of SESSION_LOCK, held
    from before the first bed comes up until after the last one is down."""

    def __init__(self):
        self.fd: int | None = None
        self.waited_s = 0.0

    def take(self, timeout: float) -> None:
        SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        t0 = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"a test session holds {SESSION_LOCK}; waiting for it (the beds are single-owner)")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if timeout and time.monotonic() - t0 > timeout:
                        os.close(fd)
                        raise BenchError(f"{SESSION_LOCK} still held by another session after {timeout:.0f} s")
                    time.sleep(0.5)
        self.waited_s = time.monotonic() - t0
        self.fd = fd

    def give(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Beds:
    """netns.sh and slurm.sh, up and down, with their times; `owned`: this script brings them up and
    down (else the caller did, and the run only checks they are there)."""

    def __init__(self, owned: bool, record: dict):
        self.owned = owned
        self.record = record           # result["beds"]
        self.netns_mode: bool | None = None   # skip_bashrc of the netns bed that is up; None: down
        self.slurm_up = False

    def _script(self, script: Path, *args: str, extra_env: dict | None = None, timeout: float = 180) -> float:
        env = dict(os.environ, TB_DIR=str(TB_DIR))
        for k in ("TB_HOSTS", "TB_NET", "TB_BR", "TB_IF", "TB_NS_PREFIX", "TB_HEAD_NAME", "TB_HEAD_IP",
                  "TB_SSH_SKIP_BASHRC", "SLURM_TB_DIR", "SLURM_TB_CONF", "SLURM_TB_NODES"):
            env.pop(k, None)                # the fixtures' names and addresses
        env.update(extra_env or {})
        with tempfile.TemporaryFile(mode="w+") as out:  # a file, not a pipe: daemons must not hold it
            t0 = time.monotonic()
            rc = subprocess.run(["bash", str(script), *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True).returncode
            took = time.monotonic() - t0
            out.seek(0)
            text = out.read()
        if rc != 0:
            raise BenchError(f"{script.name} {' '.join(args)} exited {rc}: {text.strip()[-1500:]}")
        return took

    def netns(self, skip_bashrc: bool) -> None:
        """The ssh bed up with ~/.bashrc skipped or not (up again if it is up the other way)."""
        if not self.owned:
            if self.netns_mode is None:
                raise BenchError("--use-running-beds: the netns bed is not up")
            return
        if self.netns_mode == skip_bashrc:
            return
        with SIGNALS.deferred():
            self.netns_mode = skip_bashrc   # "may be up" from here: the teardown runs down
            took = self._script(NETNS_SH, "up", extra_env={"TB_SSH_SKIP_BASHRC": "1" if skip_bashrc else "0"})
        self.record.setdefault("netns_up_s", []).append(round(took, 3))
        # one untimed login per host: the first ssh after `up` reads cold files
        procs = [subprocess.Popen([str(TB_DIR / "ssh"), h, "true"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                 for h in HOSTS]
        for p in procs:
            p.wait(timeout=30)

    def slurm(self) -> None:
        if not self.owned or self.slurm_up:
            return
        with SIGNALS.deferred():
            self.slurm_up = True
            took = self._script(SLURM_SH, "up", "netns", str(SLURM_NODES))
        self.record["slurm_up_s"] = round(took, 3)

    def detect_running(self) -> None:
        """--use-running-beds: which beds are up, and the netns bed's ~/.bashrc mode."""
        cfg = TB_DIR / "sshd_config.h1"
        if cfg.exists():
            self.netns_mode = "SetEnv SHLVL=1" in cfg.read_text()
        self.slurm_up = Path(SLURM_CONF).exists() and Path(SLURM_CONF).read_text().startswith("# dragon-tests slurm")

    def down(self) -> list[str]:
        """Both beds down (slurm first, as the fixtures do); returns problems."""
        problems = []
        if not self.owned:
            return problems
        if self.slurm_up:
            try:
                self.record["slurm_down_s"] = round(self._script(SLURM_SH, "down", timeout=120), 3)
            except (BenchError, subprocess.TimeoutExpired) as e:
                problems.append(str(e))
            self.slurm_up = False
        if self.netns_mode is not None:
            try:
                self.record.setdefault("netns_down_s", []).append(round(self._script(NETNS_SH, "down", timeout=120), 3))
            except (BenchError, subprocess.TimeoutExpired) as e:
                problems.append(str(e))
            self.netns_mode = None
        return problems


def bed_leftovers() -> list[str]:
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = [ln.split()[0] for ln in cp.stdout.splitlines() if ln.strip()]
    left = [f"namespace {n}" for n in names if n.startswith("tb-") or re.fullmatch(r"slurm-n\d+", n)]
    left += [f"link {n}" for n in ("tbbr0", "tb0", "slurmbr0") if Path("/sys/class/net", n).exists()]
    return left


# ---------------------------------------------------------------- one run of the service
class Ctx:
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
        ctx.stop(rd)
        return rec
    rec["wall_s"] = time.perf_counter() - t0
    rec["output"] = cp.stdout.strip()[-400:]
    if cp.returncode != 0 or f"{len(hosts)} of {len(hosts)} agent(s) ready" not in cp.stdout:
        rec["error"] = f"dragond start exited {cp.returncode}: {cp.stdout.strip()[-300:]} {cp.stderr.strip()[-800:]}"
        ctx.stop(rd)
        return rec
    m = re.search(r"head listening on (\S+) ", cp.stdout)
    rec["address"] = m.group(1) if m else None
    if (wait or keep) and not wait_workers(rd, len(hosts), 60):
        rec["error"] = f"workers not ready within 60 s: {workers_ready(rd)}"
    rec.update(start_events(rd, t_epoch))
    if not (wait or keep):
        rec.pop("workers_ready_s", None)
    if not keep:
        rec["stop_s"], err = ctx.stop(rd)
        if err:
            rec["error"] = err
    return rec


def ssh_true(hosts: list[str], bashrc: bool, rnd: int) -> dict:
    """The floor under an ssh start: `ssh HOST true` to the same hosts at once (the bed's ssh wrapper),
    wall time until the last returns."""
    rec: dict = {"round": rnd, "hosts": len(hosts), "bashrc": bashrc}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([str(TB_DIR / "ssh"), h, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True) for h in hosts]
    try:
        codes = [p.wait(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rec["wall_s"] = time.perf_counter() - t0
    if any(codes):
        rec["error"] = f"ssh exited {codes}: {procs[codes.index(next(c for c in codes if c))].stderr.read()[-300:]!r}"
    for p in procs:
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


def slurm_start(ctx: Ctx, nodes: int, rnd: int, wait: bool = True) -> dict:
    rd = ctx.run_dir(f"slurm{nodes}-r{rnd}")
    env = dict(ctx.env, SLURM_CONF=SLURM_CONF, CS_DRAGOND=ctx.bins["dragond"], CS_RD=str(rd), CS_PY=ctx.py,
               CS_SCRIPT=str(Path(__file__).resolve()), CS_N=str(nodes), CS_WAIT="1" if wait else "0")
    rec: dict = {"round": rnd, "nodes": nodes, "run_dir": str(rd)}
    t0 = time.perf_counter()
    try:
        cp = run(["salloc", f"-N{nodes}", *SALLOC_ARGS, "bash", "-c", SALLOC_SCRIPT], env, 150)
    except subprocess.TimeoutExpired:
        rec["error"] = "salloc timed out after 150 s"
        ctx.stop(rd)
        return rec
    rec["salloc_wall_s"] = time.perf_counter() - t0
    m = re.search(r"CS_START rc=(\d+) t0=([\d.]+) t1=([\d.]+) job=(\d*)", cp.stdout)
    if cp.returncode != 0 or not m or m.group(1) != "0":
        rec["error"] = f"salloc exited {cp.returncode}: {cp.stdout.strip()[-600:]} {cp.stderr.strip()[-800:]}"
        ctx.stop(rd)
        return rec
    t_epoch = float(m.group(2))
    rec["wall_s"] = float(m.group(3)) - t_epoch
    rec["job_id"] = m.group(4)
    rec["output"] = next((ln for ln in cp.stdout.splitlines() if "head listening on" in ln), "")
    if f"{nodes} of {nodes} agent(s) ready (slurm: " not in cp.stdout:
        rec["error"] = f"not every agent ready: {cp.stdout.strip()[-600:]}"
    w = re.search(r"CS_WORKERS rc=(\d+)", cp.stdout)
    if wait and (not w or w.group(1) != "0"):
        rec["error"] = f"workers not ready within 60 s: {workers_ready(rd)}"
    s = re.search(r"CS_STOP rc=(\d+) t2=([\d.]+) t3=([\d.]+)", cp.stdout)
    if s:
        rec["stop_s"] = float(s.group(3)) - float(s.group(2))
        if s.group(1) != "0":
            rec["error"] = f"dragond stop exited {s.group(1)}"
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
            rec["error"] = f"head did not start: {start['error']}"
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
        if err and "error" not in rec:
            rec["error"] = err


# ---------------------------------------------------------------- summary, markdown
SSH_CASES = [(1, True), (4, True), (1, False), (4, False)]  # (hosts, bashrc)


def ssh_label(hosts: int, bashrc: bool) -> str:
    return f"ssh, {hosts} host{'s' if hosts > 1 else ''}, {'with' if bashrc else 'without'} ~/.bashrc"


def per_round_ratio(runs: list, key: str, sel_a, sel_b) -> dict:
    per = []
    for rnd in sorted({r["round"] for r in runs}):
        a = [r[key] for r in runs if r["round"] == rnd and sel_a(r) and r.get(key) is not None and "error" not in r]
        b = [r[key] for r in runs if r["round"] == rnd and sel_b(r) and r.get(key) is not None and "error" not in r]
        if a and b and b[0]:
            per.append(a[0] / b[0])
    s = stats(per)
    s["rounds"] = s.pop("raw")
    return s


START_METRICS = ("wall_s", "launch_to_ready_s", "listening_to_ready_s", "workers_ready_s", "stop_s")


def summarize(res: dict) -> dict:
    out: dict = {}
    ok = lambda r: "error" not in r  # noqa: E731
    if res["ssh"]["runs"]:
        s = {}
        for hosts, bashrc in SSH_CASES:
            rs = [r for r in res["ssh"]["runs"] if r["hosts"] == hosts and r["bashrc"] == bashrc]
            if not rs:
                continue
            key = f"{hosts}_{'bashrc' if bashrc else 'nobashrc'}"
            s[key] = {"label": ssh_label(hosts, bashrc), "runs": len(rs), "failed": len([r for r in rs if not ok(r)]),
                      **{m: stats([r.get(m) for r in rs if ok(r)]) for m in START_METRICS},
                      "ssh_true_s": stats([r["wall_s"] for r in res["ssh"].get("ssh_true", [])
                                           if r["hosts"] == hosts and r["bashrc"] == bashrc and ok(r)])}
        for bashrc in (True, False):
            k = "4_over_1_" + ("bashrc" if bashrc else "nobashrc")
            s[k] = per_round_ratio(res["ssh"]["runs"], "wall_s", lambda r, b=bashrc: r["hosts"] == 4 and r["bashrc"] == b,
                                   lambda r, b=bashrc: r["hosts"] == 1 and r["bashrc"] == b)
        for hosts in (1, 4):
            s[f"bashrc_over_nobashrc_{hosts}"] = per_round_ratio(
                res["ssh"]["runs"], "wall_s", lambda r, h=hosts: r["hosts"] == h and r["bashrc"],
                lambda r, h=hosts: r["hosts"] == h and not r["bashrc"])
        out["ssh"] = s
    if res["slurm"]["runs"]:
        s = {}
        for n in (2, 4):
            rs = [r for r in res["slurm"]["runs"] if r["nodes"] == n]
            if rs:
                s[str(n)] = {"label": f"Slurm, salloc -N{n}", "runs": len(rs),
                             "failed": len([r for r in rs if not ok(r)]),
                             **{m: stats([r.get(m) for r in rs if ok(r)]) for m in START_METRICS + ("salloc_wall_s",)}}
        s["4_over_2"] = per_round_ratio(res["slurm"]["runs"], "wall_s", lambda r: r["nodes"] == 4,
                                        lambda r: r["nodes"] == 2)
        out["slurm"] = s
    if res["parsl"]["runs"]:
        s = {}
        for c in res["config"]["parsl_configs"]:
            rs = [r for r in res["parsl"]["runs"] if r["config"] == c]
            good = [r for r in rs if ok(r)]
            per_task = lambda k, g=good: stats([1e6 * r["service_cpu_s"].get(k, 0.0) / r["tasks"] for r in g])  # noqa: E731
            s[c] = {"label": PARSL_LABELS[c], "runs": len(rs), "failed": len(rs) - len(good),
                    "tasks_per_s": stats([r["tasks_per_s"] for r in good]),
                    "client_cpu_us_per_task": stats([1e6 * r["client_cpu_s"] / r["tasks"] for r in good
                                                     if r.get("client_cpu_s") is not None]),
                    "head_cpu_us_per_task": per_task("head"), "agents_cpu_us_per_task": per_task("agents"),
                    "workers_cpu_us_per_task": per_task("workers")}
        for a, b in PARSL_RATIOS:
            if a in s and b in s:
                s[f"{a}_over_{b}"] = per_round_ratio(res["parsl"]["runs"], "tasks_per_s",
                                                     lambda r, c=a: r["config"] == c, lambda r, c=b: r["config"] == c)
        out["parsl"] = s
    ol = [o for o in res.get("other_load", []) if o.get("share") is not None]
    if ol:
        worst = max(ol, key=lambda o: o["share"])
        out["other_load"] = {"mean_share": statistics.fmean(o["share"] for o in ol), "max_share": worst["share"],
                             "max_at": f"{worst['part']} round {worst['round']}", "max_top": worst["top"]}
    return out


def f(x, d=2) -> str:
    return "-" if x is None else f"{x:,.{d}f}"


def mm(st: dict, d=2) -> str:
    if not st or st.get("median") is None:
        return "-"
    return f"{f(st['median'], d)} ({f(st['min'], d)}..{f(st['max'], d)})"


def table(res: dict) -> str:
    s, cfg = res["summary"], res["config"]
    L = [f"{cfg['rounds']} rounds; cases alternate in order within each round. Seconds: median (min..max). "
         f"`start`: wall time of `dragond start` until it returns (every agent ready); `launch -> ready`: "
         f"dragond.log, from the launch line to the last agent's \"ready\" line; `workers`: from the start "
         f"command to the last worker's READY in the agents' logs (dragond does not wait for workers"
         f"{'' if cfg['workers_ready'] else '; not waited for in this run: --no-workers-ready'}); "
         f"`stop`: `dragond stop`; `ssh true`: plain `ssh HOST true` to the same hosts at once, the floor under "
         f"an ssh start. 2 workers per host (one per core).", "",
         "| case | runs (failed) | start | launch -> ready | workers ready | stop | ssh true | "
         "4 vs 1 / 2 (per-round ratio of start) |",
         "|---|---|---|---|---|---|---|---|"]
    ssh = s.get("ssh", {})
    for hosts, bashrc in SSH_CASES:
        x = ssh.get(f"{hosts}_{'bashrc' if bashrc else 'nobashrc'}")
        if not x:
            continue
        r = ssh.get("4_over_1_" + ("bashrc" if bashrc else "nobashrc"), {}) if hosts == 4 else {}
        L.append(f"| {x['label']} | {x['runs']} ({x['failed']}) | {mm(x['wall_s'])} | {mm(x['launch_to_ready_s'])} | "
                 f"{mm(x['workers_ready_s'])} | {mm(x['stop_s'])} | {mm(x['ssh_true_s'])} | "
                 f"{mm(r)}{'x vs 1 host' if r.get('median') else ''} |")
    sl = s.get("slurm", {})
    for n in ("2", "4"):
        x = sl.get(n)
        if not x:
            continue
        r = sl.get("4_over_2", {}) if n == "4" else {}
        L.append(f"| Slurm, inside `salloc -N{n} {' '.join(SALLOC_ARGS)}` | {x['runs']} ({x['failed']}) | "
                 f"{mm(x['wall_s'])} | {mm(x['launch_to_ready_s'])} | {mm(x['workers_ready_s'])} | "
                 f"{mm(x['stop_s'])} | - | {mm(r)}{'x vs 2 nodes' if r.get('median') else ''} |")
    p = s.get("parsl")
    if p:
        L += ["", f"No-op throughput through Parsl ({cfg['tasks']:,} python_apps submitted at once, Parsl logging off, "
              f"DragonExecutor on a head started over ssh, one fresh head per run, configurations alternating in "
              f"each round). tasks/s: median (min..max) and every round; CPU in us per task (whole client process, "
              f"DFK start and warm-up included).", "",
              "| agents | runs (failed) | tasks/s | each round | head CPU | agents CPU | workers CPU | client CPU |",
              "|---|---|---|---|---|---|---|---|"]
        for c in cfg["parsl_configs"]:
            x = p.get(c)
            if not x:
                continue
            L.append(f"| {x['label']} | {x['runs']} ({x['failed']}) | {mm(x['tasks_per_s'], 0)} | "
                     f"{', '.join(f'{v:,.0f}' for v in x['tasks_per_s']['raw'])} | "
                     f"{f(x['head_cpu_us_per_task']['median'], 1)} | {f(x['agents_cpu_us_per_task']['median'], 1)} | "
                     f"{f(x['workers_cpu_us_per_task']['median'], 1)} | {f(x['client_cpu_us_per_task']['median'], 1)} |")
        L += ["", "| ratio (tasks/s, per round) | median (min..max) | each round |", "|---|---|---|"]
        for a, b in PARSL_RATIOS:
            r = p.get(f"{a}_over_{b}")
            if r and r.get("median") is not None:
                L.append(f"| {PARSL_LABELS[a]} / {PARSL_LABELS[b]} | {mm(r, 3)} | "
                         f"{', '.join(f'{v:.3f}' for v in r['rounds'])} |")
    ol = s.get("other_load")
    if ol:
        L += ["", f"Other load: processes not of this run used {ol['mean_share']:.1%} of the machine's CPU per round "
              f"on average, at most {ol['max_share']:.1%} ({ol['max_at']}"
              + (f": {'; '.join(ol['max_top'])}" if ol["max_top"] else "") + ")."]
    return "\n".join(L)


def targets(res: dict) -> dict:
    out = {}
    ssh, sl = res["summary"].get("ssh", {}), res["summary"].get("slurm", {})
    rows = [("ssh4_nobashrc", ssh.get("4_nobashrc"), "4 ssh hosts, ~/.bashrc skipped (dragond's own cost)"),
            ("ssh4_bashrc", ssh.get("4_bashrc"), "4 ssh hosts, root's ~/.bashrc run by every ssh (pyenv init)"),
            ("slurm4", sl.get("4"), "4-node Slurm allocation, from inside (salloc -N4)")]
    for key, x, what in rows:
        if not x:
            continue
        st = x["wall_s"]
        m = st["median"]
        out[f"cluster_start_{key}"] = {
            "target": f"dragond start to every agent ready: {what}", "goal": f"<= {GOAL_S:g} s (median)",
            "measured": "n/a" if m is None else f"{m:.2f} s (min {st['min']:.2f}, max {st['max']:.2f}, {st['n']} runs)",
            "detail": f"median of the wall time of `dragond start` until it returned, {st['n']} runs",
            "met": None if m is None else m <= GOAL_S,
            "status": "n/a" if m is None else ("PASS" if m <= GOAL_S else "MISS")}
    return out


def plots(res: dict) -> dict:
    rounds = list(range(1, res["config"]["rounds"] + 1))

    def per_round(rs):
        return [next((r.get("wall_s") for r in rs if r["round"] == i and "error" not in r), None) for i in rounds]
    series = {}
    for hosts, bashrc in SSH_CASES:
        rs = [r for r in res["ssh"]["runs"] if r["hosts"] == hosts and r["bashrc"] == bashrc]
        if rs:
            series[ssh_label(hosts, bashrc)] = per_round(rs)
    for n in (2, 4):
        rs = [r for r in res["slurm"]["runs"] if r["nodes"] == n]
        if rs:
            series[f"Slurm salloc -N{n}"] = per_round(rs)
    out = {}
    if series:
        out["start_per_round"] = {"x": rounds, "series": series, "xlabel": "round",
                                  "ylabel": "dragond start to every agent ready (s)"}
    ps = {}
    for c in res["config"]["parsl_configs"]:
        rs = [r for r in res["parsl"]["runs"] if r["config"] == c]
        if rs:
            ps[PARSL_LABELS[c]] = [next((r.get("tasks_per_s") for r in rs if r["round"] == i and "error" not in r), None)
                                   for i in rounds]
    if ps:
        out["parsl_noop_per_round"] = {"x": rounds, "series": ps, "xlabel": "round",
                                       "ylabel": "no-op tasks/s through Parsl"}
    return out


# ---------------------------------------------------------------- main
def find_bin_dir(arg: str | None) -> Path:
    for c in [arg, os.environ.get("DRAGON_BIN_DIR"), str(REPO / "build-out" / "bin")]:
        if c and all((Path(c) / n).is_file() for n in ("dragond", "dragon-agent", "dragonctl")):
            return Path(c)
    raise BenchError("dragond, dragon-agent and dragonctl not found (--bin-dir, $DRAGON_BIN_DIR, build-out/bin): "
                     "run 'make build'")


def private_copies(tmp: Path, bin_dir: Path) -> tuple[dict, dict, Path]:
    """The binaries and dragon_parsl copied into tmp: a rebuild during the run changes nothing."""
    (tmp / "bin").mkdir(parents=True)
    bins, info = {}, {}
    for n in ("dragond", "dragon-agent", "dragonctl"):
        src = bin_dir / n
        dst = tmp / "bin" / n
        shutil.copy2(src, dst)
        bins[n] = str(dst)
        info[n] = {"from": str(src), "mtime": datetime.fromtimestamp(src.stat().st_mtime, timezone.utc)
                   .isoformat(timespec="seconds"), "sha256": sha256_short(dst)}
    py = tmp / "py"
    shutil.copytree(REPO / "parsl_plugin" / "dragon_parsl", py / "dragon_parsl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return bins, info, py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 rounds, 500 no-ops, 1x1 and 4x1 only, no wait "
                                                           "for workers (~25 s)")
    size.add_argument("--full", action="store_true", help="10 rounds, 10,000 no-ops, all four Parsl "
                                                          "configurations (the default; ~8 min)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--tasks", type=int, help="no-op tasks per Parsl measurement")
    p.add_argument("--parts", nargs="+", choices=("ssh", "slurm", "parsl"), default=["ssh", "slurm", "parsl"])
    p.add_argument("--parsl-configs", nargs="+", choices=list(PARSL_CONFIGS),
                   help="HOSTSxWORKERS_PER_HOST configurations of the Parsl benchmark")
    p.add_argument("--bin-dir", help="dragond, dragon-agent, dragonctl (default $DRAGON_BIN_DIR or build-out/bin)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per Parsl measurement")
    p.add_argument("--lock-timeout", type=float, default=0,
                   help="give up after this many seconds waiting for the beds' lock (default: wait)")
    p.add_argument("--use-running-beds", action="store_true",
                   help="the beds are up and the caller holds their lock (a pytest session): use them as they "
                        "are, bring nothing up or down; only the netns bed's current ~/.bashrc mode is measured")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (run dirs and logs)")
    p.add_argument("--json-out")
    p.add_argument("--md-out")
    # internal: run inside the salloc script, after `dragond start` returned
    p.add_argument("--workers-ready", action=argparse.BooleanOptionalAction, default=None,
                   help="after each start, wait for every worker's READY and report when (--full: yes; "
                        "--quick: no, dragond stop right after the start)")
    p.add_argument("--internal-wait-workers", metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--agents", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.internal_wait_workers:
        return 0 if wait_workers(Path(args.internal_wait_workers), args.agents, 60) else 1
    cfg = dict(QUICK if args.quick else FULL)
    for k in ("rounds", "tasks", "parsl_configs", "workers_ready"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg.update(parts=args.parts, salloc_args=SALLOC_ARGS, hosts=HOSTS, head_iface=HEAD_IFACE,
               use_running_beds=args.use_running_beds, goal_s=GOAL_S)
    result: dict = {"benchmark": "cluster_start", "mode": "quick" if args.quick else "full",
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(["python", "bench/cluster_start.py", *(argv if argv is not None else sys.argv[1:])]),
                    "machine": {"host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
                                "kernel": platform.release(), "loadavg_start": os.getloadavg(),
                                "git_commit": git_commit()},
                    "config": cfg, "beds": {}, "ssh": {"runs": [], "ssh_true": []}, "slurm": {"runs": []}, "parsl": {"runs": []},
                    "errors": [], "leftovers": [], "other_load": []}
    if os.geteuid() != 0:
        result["errors"].append("needs root: the test beds make network namespaces, bridges and daemons")
        return finish(result, args, 2)
    try:
        bin_dir = find_bin_dir(args.bin_dir)
    except BenchError as e:
        result["errors"].append(str(e))
        return finish(result, args, 2)

    SIGNALS.install()
    lock = SessionLock()
    beds = Beds(owned=not args.use_running_beds, record=result["beds"])
    tmp = Path(tempfile.mkdtemp(prefix="dragon-cluster-start-"))
    started = time.monotonic()
    code = 0
    try:
        bins, result["binaries"], pydir = private_copies(tmp, bin_dir)
        env = dict(os.environ, DRAGON_HOME=str(tmp / "home"), DRAGON_BIN_DIR=str(tmp / "bin"),
                   PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join([str(pydir), str(BENCH)]
                                              + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        for v in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_TLS_CA", "SLURM_JOB_ID", "SLURM_JOBID", "PBS_JOBID",
                  "PBS_NODEFILE"):
            env.pop(v, None)
        ctx = Ctx(tmp, bins, env, sys.executable)
        if beds.owned:
            lock.take(args.lock_timeout)
            result["beds"]["lock_waited_s"] = round(lock.waited_s, 3)
        else:
            beds.detect_running()
        log(f"output of the runs under {tmp}; {cfg['rounds']} rounds")

        other = OtherLoad(str(tmp))

        def round_done(part: str, rnd: int) -> None:
            o = other.mark(part, rnd)
            result["other_load"].append(o)
            if o["share"] and o["share"] > 0.05:
                log(f"{part} round {rnd}: other processes used {o['share']:.0%} of the machine: {'; '.join(o['top'])}")

        if "ssh" in args.parts:
            modes = [True, False] if beds.owned else [not beds.netns_mode]   # bashrc run?
            for rnd in range(1, cfg["rounds"] + 1):
                order = modes if rnd % 2 else modes[::-1]
                for i, bashrc in enumerate(order):
                    beds.netns(skip_bashrc=not bashrc)
                    counts = [1, 4] if (rnd + i) % 2 else [4, 1]
                    for n in counts:
                        rec = ssh_start(ctx, HOSTS[:n], not bashrc, rnd, wait=cfg["workers_ready"])
                        result["ssh"]["runs"].append(rec)
                        log(f"round {rnd}: {ssh_label(n, bashrc):38s} " + describe(rec))
                    for n in counts:
                        rec = ssh_true(HOSTS[:n], bashrc, rnd)
                        result["ssh"]["ssh_true"].append(rec)
                        log(f"round {rnd}: plain `ssh HOST true`, {n} host(s) at once: "
                            + (f"FAILED: {rec['error']}" if "error" in rec else f"{rec['wall_s']:.3f} s"))
                round_done("ssh", rnd)
        if "slurm" in args.parts:
            if beds.owned:
                beds.slurm()
            elif not beds.slurm_up:
                raise BenchError("--use-running-beds: the Slurm bed is not up")
            for rnd in range(1, cfg["rounds"] + 1):
                for n in ([2, 4] if rnd % 2 else [4, 2]):
                    rec = slurm_start(ctx, n, rnd, wait=cfg["workers_ready"])
                    result["slurm"]["runs"].append(rec)
                    log(f"round {rnd}: Slurm salloc -N{n}                         " + describe(rec))
                round_done("slurm", rnd)
        if "parsl" in args.parts:
            if beds.owned:
                beds.netns(skip_bashrc=True)   # the bashrc costs only the start, not the tasks
            cs = cfg["parsl_configs"]
            for rnd in range(1, cfg["rounds"] + 1):
                k = (rnd - 1) % len(cs)
                for c in cs[k:] + cs[:k]:
                    rec = parsl_noop(ctx, c, rnd, cfg["tasks"], args.timeout)
                    result["parsl"]["runs"].append(rec)
                    log(f"round {rnd}: Parsl no-op, {PARSL_LABELS[c]:20s} "
                        + (f"FAILED: {rec['error'][:300]}" if "error" in rec else f"{rec['tasks_per_s']:,.0f} tasks/s"))
                round_done("parsl", rnd)
    except Interrupted as e:
        result["interrupted"] = str(e)
        log(f"interrupted ({e}); tearing down")
        code = 130
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        result["errors"].append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}; tearing down")
        code = 1
    finally:
        with SIGNALS.ignored():
            teardown(ctx if "ctx" in locals() else None, tmp, beds, lock, result, args.keep_tmp)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if code == 0 and (result["errors"] or result["leftovers"]
                      or any("error" in r for part in ("ssh", "slurm", "parsl") for r in result[part]["runs"])
                      or any("error" in r for r in result["ssh"]["ssh_true"])):
        code = 1
    return finish(result, args, code)


def teardown(ctx: Ctx | None, tmp: Path, beds: Beds, lock: SessionLock, result: dict, keep: bool) -> None:
    try:
        if ctx is not None:
            for rd in ctx.run_dirs:          # heads still up (an error or interrupt mid-run)
                _, err = ctx.stop(rd)
                if err:
                    result["errors"].append(f"{rd.name}: {err}")
        result["errors"] += beds.down()
        # whatever of the run still runs (its temp dir is in every command line or environment)
        deadline = time.monotonic() + 10
        left = processes_with(str(tmp))
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_with(str(tmp))
        for pid, p in left.items():
            result["leftovers"].append(f"pid {pid}: {p['cmd']} (killed)")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if beds.owned and lock.fd is not None:   # (without the lock, what is up is another session's)
            result["leftovers"] += bed_leftovers()
    finally:
        lock.give()
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def describe(rec: dict) -> str:
    if "error" in rec:
        return f"FAILED: {rec['error'][:300]}"
    return (f"start {rec['wall_s']:.3f} s, launch->ready {f(rec.get('launch_to_ready_s'), 3)} s, "
            f"workers {f(rec.get('workers_ready_s'), 3)} s, stop {f(rec.get('stop_s'), 3)} s")


def finish(result: dict, args, code: int) -> int:
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["summary"] = summarize(result)
    result["table_md"] = table(result)
    result["targets"] = targets(result)
    result["plots"] = plots(result)
    result["exit_code"] = code
    for e in result["errors"]:
        log(f"error: {e}")
    for x in result["leftovers"]:
        log(f"left behind: {x}")
    print(result["table_md"], file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    if args.md_out:
        Path(args.md_out).write_text(result["table_md"] + "\n")
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
