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
import hashlib
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

# its modules cluster_start_*.py beside it, also when it is not run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_start_beds import (BENCH, HOSTS, REPO, SIGNALS, BenchError, Beds, Interrupted,  # noqa: E402
                                OtherLoad, SessionLock, bed_leftovers, log, processes_with)
from cluster_start_cases import (HEAD_IFACE, PARSL_CONFIGS, PARSL_LABELS, SALLOC_ARGS,  # noqa: E402
                                 WORKERS_TIMEOUT_S, Ctx, parsl_noop, slurm_start, ssh_start, ssh_true,
                                 wait_workers)
from cluster_start_report import GOAL_S, describe, plots, ssh_label, summarize, table, targets  # noqa: E402

QUICK = dict(rounds=2, tasks=500, parsl_configs=["1x1", "4x1"], workers_ready=False)
FULL = dict(rounds=10, tasks=10_000, parsl_configs=["1x1", "4x1", "1x2", "2x1"], workers_ready=True)


# ---------------------------------------------------------------- the run's own copies, the machine
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


# ---------------------------------------------------------------- command line
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
    p.add_argument("--workers-ready", action=argparse.BooleanOptionalAction, default=None,
                   help="after each start, wait for every worker's READY and report when (--full: yes; "
                        "--quick: no, dragond stop right after the start)")
    # internal: run inside the salloc script, after `dragond start` returned
    p.add_argument("--internal-wait-workers", metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--agents", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- main: rounds, teardown, output
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.internal_wait_workers:
        return 0 if wait_workers(Path(args.internal_wait_workers), args.agents, WORKERS_TIMEOUT_S) else 1
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
        # from here on a signal is only noted: the teardown must finish and the JSON line must still
        # be written after it (a signal raised while finish() runs would lose it to a traceback)
        SIGNALS.ignore()
        teardown(ctx if "ctx" in locals() else None, tmp, beds, lock, result, args.keep_tmp)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if code == 0 and (result["errors"] or result["leftovers"]
                      or any("error" in r for part in ("ssh", "slurm", "parsl") for r in result[part]["runs"])
                      or any("error" in r for r in result["ssh"]["ssh_true"])):
        code = 1
    if SIGNALS.late:
        result.setdefault("interrupted", f"{signal.Signals(SIGNALS.late).name} during the teardown")
        code = 130
    code = finish(result, args, code)
    return 130 if SIGNALS.late else code   # one while the result was written: exit as interrupted


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
