"""MPI programs the MPI tests and benchmarks build with MPICH's mpicc, and the check that no MPI
process is left behind (tests/test_mpi_apps.py, tests/test_mpi_cluster.py, bench/mpi_bench.py)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from pathlib import Path

# The talk's factorial: every rank contributes to a product (rank r multiplies in r+1); rank 0
# reads a scale factor from stdin and prints product * scale + bias (argv[1]). Each rank says on
# stderr who and where it is.
FACTORIAL = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank, size; char host[256];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  gethostname(host, sizeof host);
  fprintf(stderr, "rank %d of %d on %s pid %d\n", rank, size, host, (int)getpid());
  long long mine = rank + 1, prod = 1;
  MPI_Reduce(&mine, &prod, 1, MPI_LONG_LONG, MPI_PROD, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    long long scale = 0, bias = argc > 1 ? atoll(argv[1]) : 0;
    if (scanf("%lld", &scale) != 1) { fprintf(stderr, "no scale factor on stdin\n"); MPI_Abort(MPI_COMM_WORLD, 3); }
    printf("%lld\n", prod * scale + bias); fflush(stdout);
  }
  MPI_Finalize();
  return 0;
}
"""

# Rank 1 exits with code 3 after a moment; the others wait (in a barrier, then sleeping).
CRASH = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  printf("rank %d pid %d\n", rank, (int)getpid()); fflush(stdout);
  if (rank == 1) { usleep(500000); exit(3); }
  MPI_Barrier(MPI_COMM_WORLD);
  sleep(300);
  MPI_Finalize(); return 0;
}
"""

# Rank 0 says "started" and every rank sleeps (a job to cancel or to lose).
SLEEPER = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank; char host[256]; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  gethostname(host, sizeof host);
  fprintf(stderr, "rank %d on %s pid %d\n", rank, host, (int)getpid());
  if (rank == 0) { printf("started\n"); fflush(stdout); }
  sleep(300);
  MPI_Finalize(); return 0;
}
"""

# Every rank reports its host; rank 0 gathers them and prints one line per rank.
WHERE = r"""
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank, size; char host[64] = {0}; MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  gethostname(host, sizeof host - 1);
  fprintf(stderr, "rank %d on %s\n", rank, host);
  char all[64 * 64] = {0};
  MPI_Gather(host, 64, MPI_CHAR, all, 64, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (rank == 0) { for (int r = 0; r < size; r++) printf("rank %d %s\n", r, all + 64 * r); fflush(stdout); }
  MPI_Finalize(); return 0;
}
"""

# Rank 0 prints N numbered lines (argv[1]).
CHATTY = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  int rank; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) { int n = atoi(argv[1]); for (int i = 0; i < n; i++) printf("line %06d\n", i); }
  MPI_Finalize(); return 0;
}
"""

# The benchmarks' trivial program: rank 0 prints one line.
HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size; MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0) { printf("hello from rank 0 of %d\n", size); fflush(stdout); }
  MPI_Finalize(); return 0;
}
"""

PROGRAMS = {"factorial": FACTORIAL, "crash": CRASH, "sleeper": SLEEPER, "where": WHERE,
            "chatty": CHATTY, "hello": HELLO}


def build(out_dir: Path, names=None) -> dict[str, str]:
    """Compiles the programs with mpicc into `out_dir`; returns name -> path."""
    mpicc = shutil.which("mpicc.mpich") or shutil.which("mpicc")
    if mpicc is None:
        raise RuntimeError("mpicc not found (MPICH's libmpich-dev; deploy/install-deps.sh installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in names or PROGRAMS:
        src = out_dir / f"{name}.c"
        exe = out_dir / name
        src.write_text(PROGRAMS[name])
        cp = subprocess.run([mpicc, "-O1", "-o", str(exe), str(src)], capture_output=True, text=True,
                            timeout=120)
        if cp.returncode != 0:
            raise RuntimeError(f"mpicc {src} failed:\n{cp.stdout}{cp.stderr}")
        built[name] = str(exe)
    return built


def expected_factorial(ranks: int, scale: int, bias: int) -> int:
    return math.factorial(ranks) * scale + bias


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


# Everything this test session starts inherits this variable (dragond, its agents, their
# launchers and ranks; remote agents get it through dragond's --agent-env): the leftover check
# looks only at processes carrying it, never at other sessions' MPI jobs on a shared machine.
SESSION_ENV = "DRAGON_TEST_SESSION"
SESSION_TAG = os.environ.setdefault(SESSION_ENV, f"{os.getpid()}-{time.time_ns()}")


def mpi_processes(marker: str = "") -> list[str]:
    """Live processes of this session's MPI jobs on this machine (every network namespace shares
    its /proc): those carrying DRAGON_MPI_TASK (=`marker` when given) and this session's tag in
    their environment, and this session's hydra_pmi_proxy or mpiexec processes. "pid: command
    line" each."""
    found = []
    want = f"DRAGON_MPI_TASK={marker}".encode()
    ours = f"{SESSION_ENV}={SESSION_TAG}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if ours not in env or not _alive(int(d.name)):
            continue
        marked = any(e == want or (not marker and e.startswith(b"DRAGON_MPI_TASK=")) for e in env)
        launcher = "hydra_pmi_proxy" in cmd or cmd.startswith(("mpiexec", "/usr/bin/mpiexec"))
        if marked or (launcher and not marker):
            found.append(f"{d.name}: {cmd}")
    return found


def assert_no_mpi_left(marker: str = "", timeout: float = 10.0) -> None:
    """Fails (after killing them) if MPI processes of this session are still there after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = mpi_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = mpi_processes(marker)
    if left:
        for line in left:
            try:
                os.kill(int(line.split(":", 1)[0]), 9)
            except (OSError, ValueError):
                pass
        raise AssertionError("MPI processes left behind:\n  " + "\n  ".join(left))


def assert_no_stale_grants() -> None:
    """Once the heads are stopped: no MPI grant file in /dev/shm of an agent that is gone (an
    agent killed with kill -9 cannot remove its own; the next agent on the node or dragond's exit
    does: common/grant_files.h)."""
    stale = stale_grant_files()
    assert not stale, ("MPI grant files left in /dev/shm by agents that are gone:\n  "
                       + "\n  ".join(stale))


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2:].split()[19]  # field 22


def stale_grant_files() -> list[str]:
    """Grant files (/dev/shm/dragon-grants-UID/RUN/TASK.NODE and owner.NODE) whose owner, as
    owner.NODE names it (pid and start time), is no longer running; other sessions' live agents'
    files are not stale."""
    top = Path(f"/dev/shm/dragon-grants-{os.getuid()}")
    stale = []
    for run in (top.iterdir() if top.is_dir() else []):
        files = list(run.iterdir()) if run.is_dir() else []
        live = set()
        for f in files:
            if f.name.startswith("owner.") and not f.name.endswith(".tmp"):
                try:
                    pid, start = f.read_text().split()
                except (OSError, ValueError):
                    continue
                if _start_time(int(pid)) == start:
                    live.add(f.name[len("owner."):])
        for f in files:
            name = f.name[:-4] if f.name.endswith(".tmp") else f.name
            node = name.split(".", 1)[1] if "." in name else ""
            if node not in live:
                stale.append(str(f))
    return stale
