"""pytest fixtures for the test beds of tests/testbed/ (issue 11): four ssh hosts in network
namespaces (netns.sh) and a real Slurm cluster (slurm.sh). tests/README.md, "Test beds", has the
picture; the scripts' headers have every name and address.

Use them by importing them into a test module (tests/ is on sys.path, as for conftest)::

    from testbed_fixtures import netns_hosts, slurm_cluster, no_service_left

- ``netns_hosts`` (session): hosts h1..h4 (10.201.0.1-4, each its own sshd and hostname), the head
  (root namespace) as ``tbhead`` = 10.201.0.254 on interface tb0. Yields a :class:`NetnsHosts`.
- ``slurm_cluster`` (session): slurmctld + slurmd n1..n4 (2 CPUs each, partition ``debug``);
  sbatch/srun/salloc/qsub run from the root namespace (the login node). Yields a
  :class:`SlurmCluster`. Two-node tests ask for ``-N2``.
- ``no_service_left`` (function): after the test (and its own teardown), fails it if anything of
  the service (dragond, dragon-agent, dragon_parsl.worker) still runs in any test namespace, and
  kills what it found (by pid). :func:`assert_no_service_left` is the same as a function.

Each bed comes up once per session, whichever modules import the fixtures (one process-wide
instance), and goes down at the session's end, also when tests fail, on Ctrl-C, on SIGTERM and at
interpreter exit (atexit); the scripts' ``up`` clears whatever a killed run left. The finalizer
then checks that nothing is left (namespaces, links, tagged /etc/hosts lines, our daemons).
A machine that cannot host a bed (not root, no ``ip netns``, packages missing) FAILS the tests
that need it, with the reason: a silent skip would hide a broken test bed.
"""
from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTBED_DIR = Path(__file__).resolve().parent / "testbed"
NETNS_SH = TESTBED_DIR / "netns.sh"
SLURM_SH = TESTBED_DIR / "slurm.sh"

# Processes of the service: a left-over one in a test namespace fails no_service_left.
SERVICE_RE = re.compile(r"(^|[/\s])(dragond|dragon-agent)(\s|$)|dragon_parsl\.worker")


# ---------------------------------------------------------------- helpers

def _alive(pid: int) -> bool:
    """True for a live process; a zombie (killed, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[-1].startswith("Z")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def netns_pids(ns: str) -> list[int]:
    """Live (non-zombie) pids in network namespace `ns` (``ip netns pids``); [] if it is gone."""
    cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        return []
    return [p for p in map(int, cp.stdout.split()) if _alive(p)]


def testbed_namespaces() -> list[str]:
    """Every network namespace a test bed made (tb-* of netns.sh, slurm-n* of slurm.sh)."""
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith("tb-") or re.fullmatch(r"slurm-n\d+", n)]


def _check_machine(what: str, needs: list[str]) -> None:
    """pytest.fail (not skip) with the reason when this machine cannot host the bed."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (network namespaces, bridges and daemons need root)")
    if shutil.which("ip") is None:
        problems.append("'ip' (iproute2) not found")
    else:
        cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            problems.append(f"'ip netns list' fails: {cp.stderr.strip()}")
    for tool in ("unshare", "nsenter", "flock", *needs):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            problems.append(f"{tool} not found")
    if problems:
        pytest.fail(f"the {what} test bed cannot run on this machine: " + "; ".join(problems)
                    + " (deploy/install-deps.sh installs the packages; CI runs as root)", pytrace=False)


def _run_script(script: Path, *args: str, env: dict, timeout: float) -> tuple[int, str, float]:
    """Runs a test bed script with its output in a file (never a pipe: daemons it starts must
    not hold our pipe open); returns (exit code, output, seconds)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.monotonic()
        try:
            rc = subprocess.run(["bash", str(script), *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        took = time.monotonic() - t0
        out.seek(0)
        return rc, out.read(), took


def _hosts_lines(tag: str) -> list[str]:
    try:
        return [line for line in Path("/etc/hosts").read_text().splitlines() if line.endswith(tag)]
    except OSError:
        return []


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# ---------------------------------------------------------------- the beds, one per process

# One pytest session at a time may own the beds of this machine: `up` begins with `down`, so a
# second session bringing a bed up would tear down the first one's in the middle of its tests.
# The first bed a session brings up takes this lock (waiting for another session to finish),
# the last one it takes down lets it go. One lock for all beds: no lock-order deadlock.
SESSION_LOCK = Path("/run/lock/dragon-testbeds.session")


class _SessionLock:
    def __init__(self):
        self.fd: int | None = None
        self.holders = 0

    def take(self, bed: str) -> None:
        import fcntl
        if self.holders == 0:
            SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"testbed: another test session holds {SESSION_LOCK}; waiting for it before "
                      f"bringing up the {bed} bed", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            self.fd = fd
        self.holders += 1

    def give(self) -> None:
        self.holders -= 1
        if self.holders == 0 and self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


_SESSION = _SessionLock()


class _Bed:
    """One test bed script's lifetime in this process: up once, down once (finalizer, atexit,
    SIGTERM, whichever comes first), then a check that nothing is left."""

    name = "?"
    script: Path
    tag = ""

    def __init__(self):
        self.lock = threading.RLock()          # RLock: SIGTERM's down may run inside up
        self.is_up = False
        self.up_error: str | None = None
        self.users = 0
        self.up_seconds = 0.0
        self.down_seconds = 0.0
        self.our_pids: dict[int, str] = {}

    def script_env(self) -> dict:
        return dict(os.environ)

    def up_args(self) -> list[str]:
        return ["up"]

    def collect_pids(self) -> dict[int, str]:  # daemons of ours, for the final check
        return {}

    def leftovers(self) -> list[str]:
        raise NotImplementedError

    def acquire(self):
        with self.lock:
            if self.up_error is not None:
                pytest.fail(self.up_error, pytrace=False)
            if not self.is_up:
                _install_exit_handlers()
                _SESSION.take(self.name)
                self.is_up = True                 # "may be up": a SIGTERM from here on runs down
                rc, out, took = _run_script(self.script, *self.up_args(), env=self.script_env(),
                                            timeout=180)
                self.up_seconds = took
                if rc != 0:
                    self.down()                   # the script tore down already; make sure
                    self.up_error = (f"{self.script.name} {' '.join(self.up_args())} failed "
                                     f"(exit {rc}) after {took:.1f}s:\n{out}")
                    pytest.fail(self.up_error, pytrace=False)
                self.our_pids = self.collect_pids()
            self.users += 1

    def release(self, final_check: bool = True):
        """A fixture's teardown: the last user takes the bed down and checks it is gone."""
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
        problems = self.down()
        if final_check and problems:
            pytest.fail(f"{self.name} test bed left things behind after down:\n  "
                        + "\n  ".join(problems), pytrace=False)

    def down(self) -> list[str]:
        """Takes the bed down (idempotent); returns what is still there afterwards."""
        with self.lock:
            if not self.is_up:
                return []
            self.is_up = False
        try:
            rc, out, took = _run_script(self.script, "down", env=self.script_env(), timeout=120)
        finally:
            _SESSION.give()
        self.down_seconds = took
        problems = [] if rc == 0 else [f"{self.script.name} down exited {rc}: {out.strip()}"]
        deadline = time.monotonic() + 5           # killed daemons: let them go (or PID 1 reap them)
        while True:
            left = self.leftovers()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return problems + left


class _NetnsBed(_Bed):
    name = "netns"
    script = NETNS_SH
    tag = "# dragon-tests netns"

    def __init__(self):
        super().__init__()
        self.dir = Path(os.environ.get("TB_DIR", "/tmp/tb-netns"))
        self.hosts = ["h1", "h2", "h3", "h4"]

    def script_env(self) -> dict:
        env = dict(os.environ, TB_DIR=str(self.dir))
        for k in ("TB_HOSTS", "TB_NET", "TB_BR", "TB_IF", "TB_NS_PREFIX", "TB_HEAD_NAME", "TB_HEAD_IP"):
            env.pop(k, None)                      # the fixtures' names and addresses are fixed
        return env

    def collect_pids(self) -> dict[int, str]:
        pids = {}
        for h in self.hosts:
            pid = _read_pid(self.dir / f"sshd.{h}.pid")
            if pid:
                pids[pid] = f"sshd of {h}"
        return pids

    def leftovers(self) -> list[str]:
        left = [f"namespace {n}" for n in testbed_namespaces() if n.startswith("tb-")]
        left += [f"link {n}" for n in ("tbbr0", "tb0", "tbv-tbhead", *(f"tbv-{h}" for h in self.hosts))
                 if _link_exists(n)]
        left += [f"/etc/hosts line {line!r}" for line in _hosts_lines(self.tag)]
        left += [f"{what} (pid {pid}) still running: {_cmdline(pid)}"
                 for pid, what in self.our_pids.items() if _alive(pid)]
        if self.dir.exists():
            left.append(f"{self.dir} still exists")
        return left


class _SlurmBed(_Bed):
    name = "slurm"
    script = SLURM_SH
    tag = "# dragon-tests slurm"

    def __init__(self, nodes: int = 4):
        super().__init__()
        self.nodes = nodes
        self.dir = Path(os.environ.get("SLURM_TB_DIR", "/tmp/slurm-testbed"))
        self.conf = Path(os.environ.get("SLURM_TB_CONF", "/etc/slurm/slurm.conf"))

    def script_env(self) -> dict:
        return dict(os.environ, SLURM_TB_DIR=str(self.dir), SLURM_TB_CONF=str(self.conf))

    def up_args(self) -> list[str]:
        return ["up", "netns", str(self.nodes)]

    def collect_pids(self) -> dict[int, str]:
        pids = {}
        run = self.dir / "run"
        for f in sorted(run.glob("slurmd-*.pid")):
            pid = _read_pid(f)
            if pid:
                pids[pid] = f"slurmd {f.stem.removeprefix('slurmd-')}"
        for f, what in ((run / "slurmctld.pid", "slurmctld"), (run / "munged.ours", "munged (ours)")):
            pid = _read_pid(f)
            if pid:
                pids[pid] = what
        return pids

    def leftovers(self) -> list[str]:
        left = [f"namespace {n}" for n in testbed_namespaces() if n.startswith("slurm-")]
        left += [f"link {n}" for n in ["slurmbr0", *(f"slurmv{i}" for i in range(1, self.nodes + 1))]
                 if _link_exists(n)]
        left += [f"/etc/hosts line {line!r}" for line in _hosts_lines(self.tag)]
        left += [f"{what} (pid {pid}) still running: {_cmdline(pid)}"
                 for pid, what in self.our_pids.items() if _alive(pid)]
        if self.dir.exists():
            left.append(f"{self.dir} still exists")
        try:
            if self.conf.read_text().startswith("# dragon-tests slurm:"):
                left.append(f"{self.conf} (ours) still exists")
        except OSError:
            pass
        return left


_NETNS = _NetnsBed()
_SLURM = _SlurmBed()
_handlers_installed = False


def _down_all() -> None:
    # slurm first: its jobs may use the ssh hosts' names, never the other way round
    for bed in (_SLURM, _NETNS):
        try:
            bed.down()
        except Exception:                         # at exit: best effort, the next up clears it
            pass


def _install_exit_handlers() -> None:
    """atexit, and SIGTERM (whose default action skips atexit and every finalizer): take the
    beds down, then die of SIGTERM as before. Only in the main thread, only once."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_down_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        _down_all()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


# ---------------------------------------------------------------- netns_hosts

@dataclass
class NetnsHosts:
    """The four ssh hosts. Names resolve everywhere through /etc/hosts (h1..h4, tbhead)."""
    names: list[str]                  # ["h1", "h2", "h3", "h4"]
    ips: dict[str, str]               # {"h1": "10.201.0.1", ...}
    head_name: str                    # "tbhead": the root namespace on the test net
    head_ip: str                      # "10.201.0.254"
    head_iface: str                   # "tb0" (the same name inside every host: UCX_NET_DEVICES=tb0)
    dir: Path                         # $TB_DIR
    ssh_config: Path                  # ssh -F this (BatchMode, key, no known_hosts writes)
    ssh: Path                         # wrapper: `ssh -F ssh_config "$@"`; usable as an ssh command
    ssh_bin_dir: Path                 # holds `ssh` (the wrapper): put first in PATH
    identity: Path                    # the client key
    up_seconds: float = 0.0
    _bed: _NetnsBed = field(default=None, repr=False)

    iface = property(lambda self: self.head_iface)

    def netns(self, host: str) -> str:
        """The network namespace of `host` (tb-h1 ...)."""
        self._known(host)
        return f"tb-{host}"

    def veth(self, host: str) -> str:
        """The bridge-side end of `host`'s link (link_down/link_up act on it)."""
        self._known(host)
        return f"tbv-{host}"

    def _known(self, host: str) -> None:
        if host not in self.ips:
            raise ValueError(f"unknown test host {host!r} (hosts: {', '.join(self.names)})")

    def ssh_argv(self, host: str, *remote: str) -> list[str]:
        return [str(self.ssh), host, *remote]

    def run_on(self, host: str, cmd: str | list[str], *, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Runs `cmd` on `host` over ssh (a list is quoted for the remote shell); text output
        captured. The remote PATH is sshd's plus root's ~/.bashrc (pyenv shims first on this
        machine): name binaries and the Python interpreter by absolute path."""
        self._known(host)
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        cp = subprocess.run(self.ssh_argv(host, remote), input=input, capture_output=True, text=True,
                            timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise AssertionError(f"on {host}: {remote!r} exited {cp.returncode}\n"
                                 f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def exec_argv(self, host: str, *argv: str) -> list[str]:
        """argv that runs `argv` "on" `host` without ssh: its netns and a UTS namespace named
        `host`. ip, unshare and sh all exec, so a Popen of it has the command's own pid."""
        return ["ip", "netns", "exec", self.netns(host), "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', host, *argv]

    def pids_in(self, host: str) -> list[int]:
        """Live pids in `host`'s namespace (its sshd included)."""
        return netns_pids(self.netns(host))

    def processes_in(self, host: str) -> dict[int, str]:
        """{pid: command line} of what runs in `host`'s namespace, its sshd excluded."""
        sshd = _read_pid(self.dir / f"sshd.{host}.pid")
        return {p: _cmdline(p) for p in self.pids_in(host) if p != sshd}

    def link_down(self, host: str) -> None:
        """Cuts `host` off (its bridge-side veth down): like a pulled cable; it keeps running."""
        subprocess.run(["ip", "link", "set", self.veth(host), "down"], check=True, timeout=10)

    def link_up(self, host: str) -> None:
        subprocess.run(["ip", "link", "set", self.veth(host), "up"], check=True, timeout=10)

    def sysctl(self, host: str, key: str, value: str | int) -> None:
        """Sets a sysctl of `host`'s network namespace only (e.g. net.ipv4.tcp_retries2=5: TCP
        there gives up on a dead peer in ~13 s instead of ~15 min); never the root's."""
        subprocess.run(["ip", "netns", "exec", self.netns(host), "sysctl", "-qw", f"{key}={value}"],
                       check=True, timeout=10)

    def link_is_up(self, host: str) -> bool:
        return "UP" in Path(f"/sys/class/net/{self.veth(host)}/operstate").read_text().upper()

    def write_hostfile(self, path: Path, hosts: list[str] | None = None) -> Path:
        """A hostfile (one name a line), e.g. for --hostfile or a PBS_NODEFILE."""
        path = Path(path)
        path.write_text("".join(f"{h}\n" for h in (hosts or self.names)))
        return path

    def env_with_ssh(self, base: dict | None = None) -> dict:
        """An environment whose plain `ssh` is the test bed's (the wrapper first in PATH), for
        programs that run `ssh HOST ...` themselves (dragond's ssh launcher, mpiexec)."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.ssh_bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture(scope="session")
def netns_hosts():
    """Hosts h1..h4 in network namespaces with sshd each; up once per session (see module doc)."""
    _check_machine("netns (4 ssh hosts)", ["sshd", "ssh", "ssh-keygen"])
    bed = _NETNS
    bed.acquire()
    try:
        d = bed.dir
        yield NetnsHosts(
            names=list(bed.hosts), ips={h: f"10.201.0.{i}" for i, h in enumerate(bed.hosts, 1)},
            head_name="tbhead", head_ip="10.201.0.254", head_iface="tb0", dir=d,
            ssh_config=d / "ssh_config", ssh=d / "ssh", ssh_bin_dir=d / "bin",
            identity=d / "id_ed25519", up_seconds=bed.up_seconds, _bed=bed)
    finally:
        bed.release()


# ---------------------------------------------------------------- slurm_cluster

@dataclass
class SlurmCluster:
    """A real Slurm 22.05 cluster; the root namespace is its login node (and the controller)."""
    nodes: list[str]                  # ["n1", "n2", "n3", "n4"]
    ips: dict[str, str]               # {"n1": "10.200.0.11", ...}
    partition: str                    # "debug" (the default partition)
    cpus_per_node: int                # 2
    conf: Path                        # slurm.conf
    controller_ip: str                # 10.200.0.1 (the root namespace on slurmbr0)
    log_dir: Path
    env: dict                         # os.environ + SLURM_CONF: for sbatch, srun, qsub, dragond
    up_seconds: float = 0.0
    _bed: _SlurmBed = field(default=None, repr=False)

    def netns(self, node: str) -> str:
        if node not in self.ips:
            raise ValueError(f"unknown Slurm node {node!r} (nodes: {', '.join(self.nodes)})")
        return f"slurm-{node}"

    def run(self, *argv: str, check: bool = True, timeout: float = 60, cwd=None,
            **kw) -> subprocess.CompletedProcess:
        """Runs a Slurm (or torque wrapper) command from the login node; stdin is /dev/null
        (as in CI: srun/salloc must never wait on a terminal); text output captured."""
        cp = subprocess.run(list(argv), env=kw.pop("env", self.env), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout, cwd=cwd, **kw)
        if check and cp.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {cp.returncode}\nstdout: {cp.stdout}\n"
                                 f"stderr: {cp.stderr}\n{self.logs(20)}")
        return cp

    def squeue(self) -> list[dict]:
        """Jobs in the queue: [{"id": "12", "state": "RUNNING", "name": ..., "nodes": "n[1-2]"}]."""
        out = self.run("squeue", "-h", "-o", "%i|%T|%j|%N").stdout
        return [dict(zip(("id", "state", "name", "nodes"), line.split("|", 3)))
                for line in out.splitlines() if line.strip()]

    def job_state(self, job_id: str | int) -> str:
        """JobState of a job the controller still knows (also finished ones, for MinJobAge)."""
        out = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        m = re.search(r"JobState=(\S+)", out)
        return m.group(1) if m else ""

    def wait_queue_empty(self, timeout: float = 30) -> None:
        """Waits until squeue lists no job (completing ones included); AssertionError naming
        the jobs otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.squeue()
            if not jobs:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm queue not empty after {timeout}s: {jobs}")
            time.sleep(0.1)

    def cancel_all(self, timeout: float = 30) -> None:
        ids = [j["id"] for j in self.squeue()]
        if ids:
            self.run("scancel", *ids, check=False)
        self.wait_queue_empty(timeout)

    def pids_in(self, node: str) -> list[int]:
        """Live pids in `node`'s namespace (its slurmd included)."""
        return netns_pids(self.netns(node))

    def processes_in(self, node: str) -> dict[int, str]:
        """{pid: command line} in `node`'s namespace, its slurmd excluded."""
        slurmd = _read_pid(self._bed.dir / "run" / f"slurmd-{node}.pid")
        return {p: _cmdline(p) for p in self.pids_in(node) if p != slurmd}

    def link_down(self, node: str) -> None:
        subprocess.run(["ip", "link", "set", f"slurmv{self.nodes.index(node) + 1}", "down"],
                       check=True, timeout=10)

    def link_up(self, node: str) -> None:
        subprocess.run(["ip", "link", "set", f"slurmv{self.nodes.index(node) + 1}", "up"],
                       check=True, timeout=10)

    def logs(self, tail: int = 40) -> str:
        """The last lines of slurmctld's and every slurmd's log, for failure messages."""
        parts = []
        for p in sorted(self.log_dir.glob("*.log")):
            lines = p.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"==== {p.name}\n" + "\n".join(lines))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Slurm with nodes n1..n4 in network namespaces; up once per session (see module doc)."""
    _check_machine("Slurm", ["slurmctld", "slurmd", "munged", "sbatch", "srun", "qsub"])
    bed = _SLURM
    bed.acquire()
    try:
        env = dict(os.environ, SLURM_CONF=str(bed.conf))
        yield SlurmCluster(
            nodes=[f"n{i}" for i in range(1, bed.nodes + 1)],
            ips={f"n{i}": f"10.200.0.{10 + i}" for i in range(1, bed.nodes + 1)},
            partition="debug", cpus_per_node=2, conf=bed.conf, controller_ip="10.200.0.1",
            log_dir=bed.dir / "log", env=env, up_seconds=bed.up_seconds, _bed=bed)
    finally:
        bed.release()


# ---------------------------------------------------------------- nothing of the service left

def service_processes_in_testbeds() -> dict[int, str]:
    """{pid: "namespace: command line"} of every live dragond, dragon-agent and
    dragon_parsl.worker (and any wrapper naming them) in any test bed namespace."""
    found = {}
    for ns in testbed_namespaces():
        for pid in netns_pids(ns):
            cmd = _cmdline(pid)
            if SERVICE_RE.search(cmd):
                found[pid] = f"{ns}: {cmd}"
    return found


def assert_no_service_left(grace: float = 5.0, kill: bool = True) -> None:
    """Waits up to `grace` s for the service's processes in the test namespaces to end; if some
    remain, kills them (SIGKILL, by pid) when `kill`, and raises AssertionError naming them."""
    deadline = time.monotonic() + grace
    left = service_processes_in_testbeds()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = service_processes_in_testbeds()
    if not left:
        return
    if kill:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    raise AssertionError(f"{len(left)} process(es) of the service left running in the test "
                         "namespaces" + (" (killed now)" if kill else "") + ":\n  "
                         + "\n  ".join(f"{pid} {what}" for pid, what in sorted(left.items())))


@pytest.fixture
def no_service_left():
    """After the test: nothing of the service may still run in a test namespace (fails the
    test and kills the leftovers). Request it before the fixtures that start the service, so
    that it checks after their teardown."""
    yield
    assert_no_service_left()
