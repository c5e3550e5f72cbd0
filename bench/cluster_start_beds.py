"""The machine under bench/cluster_start.py (the entry point, whose docstring describes the
benchmark): the test beds of tests/testbed/ brought up and down under their session lock, the
signals that must not cut a bed's `up` or `down` in half, and the processes on the machine: the
run's own (what is left at the end, CPU per kind) and other users' (OtherLoad).

The lowest of the benchmark's modules: cluster_start_cases.py and cluster_start.py import it, it
imports none of them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
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


def log(msg: str) -> None:
    print(f"cluster_start: {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwinds to the teardown (from which on signals are only noted)."""


# ---------------------------------------------------------------- signals
class Signals:
    """Raises Interrupted on SIGINT/SIGTERM/SIGHUP, except inside `deferred()` (bringing a bed up or
    down, the teardown), where the signal is remembered and raised when the section ends."""

    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.received: int | None = None
        self.late: int | None = None      # the first signal once they are ignored (see ignore())

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

    def ignore(self) -> None:
        """From the teardown to the end: signals are only noted (in `received` and `late`), never
        raised, and not restored after the teardown: the JSON line must still be written after it."""
        self.late = None
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, self._note)

    def _note(self, signum, frame):
        self.received = self.received or signum
        self.late = self.late or signum


SIGNALS = Signals()


# ---------------------------------------------------------------- processes on the machine
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
        procs: list[subprocess.Popen] = []
        try:
            for h in HOSTS:
                procs.append(subprocess.Popen([str(TB_DIR / "ssh"), h, "true"], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              start_new_session=True))
            for p in procs:
                p.wait(timeout=30)
        finally:
            # on a hung login (or a signal) the others too: they have the plain environment, without
            # the run's temp dir, so the teardown's check for what is left would not find them
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()

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
