"""Blocks of a Parsl provider for DragonExecutor(provider=...).

With a provider the executor runs its head beside the workflow (an embedded dragond started
with ``--launcher none``, listening where the compute nodes reach it) and each block (one
batch job of the provider) runs ``dragon-agent`` on its nodes through the provider's own
launcher; the agents dial back to the head, carry the block id, and read the run's token from
the run directory's 0600 token file (never the command line). This module holds what the
executor needs for that and keeps out of its way:

- :func:`agent_command`: the command a block's job runs (``{block_id}`` filled in per block);
- :func:`default_head_listen`: where the head listens when ``head_listen`` is not given;
- :func:`walltime_seconds`: the provider's walltime, which becomes the agents' ``--job-end``;
- :class:`Block`: what the executor knows of one block besides the provider's status;
- :func:`failure_details`: why a block failed, from the provider, the agents' logs and the
  job's output;
- :func:`dragon_block_error_handler`: the default ``block_error_handler``: Parsl's bad state
  when blocks keep failing.
"""
from __future__ import annotations

import glob
import ipaddress
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from parsl.jobs.errors import TooManyJobFailuresError
from parsl.jobs.states import JobState, JobStatus

from dragon_parsl.errors import DragonError

if TYPE_CHECKING:  # pragma: no cover
    from dragon_parsl.executor import DragonExecutor

logger = logging.getLogger(__name__)

# The block error handler puts the executor in Parsl's bad state once this many blocks in a
# row (by block id) failed, even when earlier blocks ran fine.
BLOCK_FAILURES_IN_A_ROW = 3
# Node states (NodeInfo.state) of agents that may still run tasks.
LIVE = frozenset({"joining", "ready", "draining"})


@dataclass
class Block:
    """One block: its job, and what the head has seen of its agents."""

    block_id: str
    job_id: Any
    submitted: float = field(default_factory=time.monotonic)
    running_since: Optional[float] = None   # first seen RUNNING (provider or agents)
    connected_at: Optional[float] = None    # an agent of it registered
    nodes: Dict[str, str] = field(default_factory=dict)  # node id -> state, latest ListNodes
    live: int = 0                            # nodes in LIVE states
    draining_for_end: bool = False           # every live node drains before its job's end
    job_end_us: int = 0
    scaled_in: bool = False                  # scale_in chose it: drained, then its job cancelled
    cancelled: bool = False                  # provider.cancel done (or not needed)
    failure: Optional[JobStatus] = None      # the executor's own verdict (agents never came)


def is_local(provider: Any) -> bool:
    """A LocalProvider (or a subclass): its blocks run on this host."""
    from parsl.providers import LocalProvider
    return isinstance(provider, LocalProvider)


def is_slurm(provider: Any) -> bool:
    from parsl.providers import SlurmProvider
    return isinstance(provider, SlurmProvider)


def walltime_seconds(provider: Any) -> Optional[int]:
    """The provider's walltime (``HH:MM:SS``) in seconds as its batch system gets it, or None
    (LocalProvider and others without one). SlurmProvider hands sbatch whole minutes."""
    walltime = getattr(provider, "walltime", None)
    if not isinstance(walltime, str) or not walltime.strip():
        return None
    try:
        parts = [int(p) for p in walltime.strip().split(":")]
    except ValueError:
        return None
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts[-3:]
    if is_slurm(provider):
        seconds = 0  # parsl.utils.wtime_to_minutes: sbatch --time in minutes
    total = hours * 3600 + minutes * 60 + seconds
    return total if total > 0 else None


def agent_command(agent: str, head_address: str, run_dir: str, token_file: str, python: str,
                  workers: Optional[int], drain_before_end: float, walltime_s: Optional[int],
                  tls_ca: Optional[str] = None) -> str:
    """The shell command a block's job runs on each of its nodes, with ``{block_id}`` left for
    the block. The token stays in ``token_file`` (0600, on a filesystem the nodes share).
    With a walltime, ``--job-end`` is computed when the job starts (its start plus the
    walltime; the agent takes the earlier of it and ``$SLURM_JOB_END_TIME``)."""
    q = shlex.quote
    cmd = [q(agent), "--head", q(head_address), "--run-dir", q(run_dir), "--token-file", q(token_file),
           "--block-id", "{block_id}", "--python", q(python),
           "--drain-before-end", str(int(round(drain_before_end)))]
    if workers is not None:
        cmd += ["--workers", str(int(workers))]
    if tls_ca:
        cmd += ["--tls-ca", q(tls_ca)]
    if walltime_s:
        cmd += ["--job-end", f"$(( $(date +%s) + {int(walltime_s)} ))"]
    return " ".join(cmd)


# ---------------------------------------------------------------- where the head listens

def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _source_address_toward(host: str) -> Optional[str]:
    """The local address the kernel would use to reach ``host`` (no packet is sent)."""
    try:
        ip = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def _slurm_nodes(partition: Optional[str]) -> List[str]:
    if shutil.which("sinfo") is None:
        return []
    argv = ["sinfo", "-h", "-N", "-o", "%N"]
    if partition:
        argv += ["-p", partition]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def default_head_listen(provider: Any) -> str:
    """Where the head listens when ``head_listen`` is not given: loopback for LocalProvider
    (its blocks run on this host); for SlurmProvider the address that routes to its partition's
    nodes (``sinfo``); otherwise this host's name's address. Raises DragonError, saying what to
    give instead, when that would be a loopback address or cannot be found."""
    kind = type(provider).__name__
    if is_local(provider):
        return "127.0.0.1"
    tried: List[str] = []
    if is_slurm(provider):
        partition = getattr(provider, "partition", None)
        nodes = _slurm_nodes(partition) or (_slurm_nodes(None) if partition else [])
        for node in nodes[:8]:
            source = _source_address_toward(node)
            if source and not _is_loopback(source):
                return source
        tried.append(f"no route to the nodes of partition {partition or '(default)'} "
                     f"({', '.join(nodes[:4]) or 'sinfo listed none'})")
    host = socket.gethostname()
    try:
        ip = socket.gethostbyname(host)
    except OSError as e:
        ip = None
        tried.append(f"this host's name {host!r} does not resolve ({e})")
    if ip and not _is_loopback(ip):
        return ip
    if ip:
        tried.append(f"this host's name {host!r} resolves to the loopback address {ip}")
    raise DragonError(f"DragonExecutor(provider={kind}(...)): cannot tell on which address the compute "
                      f"nodes reach the head on this host: {'; '.join(tried)}; give "
                      f"head_listen='ADDRESS' or an interface, e.g. head_listen='ib0'")


# ---------------------------------------------------------------- why a block failed

def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def agent_logs(run_dir: Optional[str], block_id: str, lines: int = 6) -> str:
    """The end of the logs of the block's agents (``agent-HOST-bBLOCK.log`` in the run dir)."""
    if not run_dir:
        return ""
    parts = []
    for path in sorted(glob.glob(os.path.join(glob.escape(run_dir), f"agent-*-b{block_id}.log")))[:4]:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        parts.append(f"{path}:\n{_tail(text, lines)}")
    return "\n".join(parts)


def job_output(status: Optional[JobStatus], provider: Any, job_id: Any, lines: int = 10) -> str:
    """The end of the job's stdout and stderr, as the provider keeps them."""
    paths = []
    if status is not None:
        paths = [status.stdout_path, status.stderr_path]
    if not any(paths):
        res = getattr(provider, "resources", {}).get(job_id) or {}
        if res.get("job_stdout_path") or res.get("job_stderr_path"):
            paths = [res.get("job_stdout_path"), res.get("job_stderr_path")]
        elif res.get("script_path"):  # LocalProvider
            paths = [res["script_path"] + ".out", res["script_path"] + ".err"]
    parts = []
    for name, path in zip(("stdout", "stderr"), paths):
        if not path:
            continue
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        if text.strip():
            parts.append(f"job {name} ({path}):\n{_tail(text, lines)}")
    return "\n".join(parts)


def failure_details(executor: "DragonExecutor", block: Block, status: Optional[JobStatus]) -> str:
    """What the provider said, the end of the block's agents' logs and of its job's output."""
    parts = []
    if status is not None:
        said = f"the provider says {status.state.name}"
        if status.message:
            said += f": {status.message}"
        if status.exit_code is not None:
            said += f" (exit code {status.exit_code})"
        parts.append(said)
    logs = agent_logs(executor.run_info_dir, block.block_id)
    parts.append(f"agent logs:\n{logs}" if logs else
                 f"no agent log of block {block.block_id} in {executor.run_info_dir} (no agent started: "
                 f"see the job's output)")
    out = job_output(status, executor.provider, block.job_id)
    if out:
        parts.append(out)
    return "; ".join(parts)


# ---------------------------------------------------------------- repeated failures

def _block_order(block_id: str) -> Any:
    return (0, int(block_id), "") if block_id.isdigit() else (1, 0, block_id)


def _failed(status: JobStatus) -> bool:
    return status.state in (JobState.FAILED, JobState.MISSING)


def dragon_block_error_handler(executor: Any, status: Dict[str, JobStatus]) -> None:
    """The default ``block_error_handler``: Parsl's bad state (every task fails with it, new
    ones at once) when every block so far failed and there are at least ``max(1, init_blocks)``
    of them (Parsl's simple_error_handler), or when the last ``BLOCK_FAILURES_IN_A_ROW`` blocks
    failed even though earlier ones ran. The error names each failed block and why."""
    if not status or executor.bad_state_is_set:
        return
    order = sorted(status, key=_block_order)
    failed = [b for b in order if _failed(status[b])]
    if not failed:
        return
    threshold = max(1, getattr(executor.provider, "init_blocks", 1) or 1)
    all_failed = len(failed) == len(order) and len(order) >= threshold
    last = order[-BLOCK_FAILURES_IN_A_ROW:]
    in_a_row = len(last) == BLOCK_FAILURES_IN_A_ROW and all(_failed(status[b]) for b in last)
    if not (all_failed or in_a_row):
        return
    shown = failed[-BLOCK_FAILURES_IN_A_ROW:]
    why = "\n".join(f"  block {b}: {status[b].message or status[b].state.name}" for b in shown)
    summary = (f"every block failed ({len(failed)})" if all_failed
               else f"the last {BLOCK_FAILURES_IN_A_ROW} blocks failed in a row")
    executor.set_bad_state_and_fail_all(TooManyJobFailuresError(
        f"DragonExecutor {executor.label!r} gives up: {summary} (provider "
        f"{type(executor.provider).__name__}); no task can run:\n{why}"))


__all__ = ["Block", "BLOCK_FAILURES_IN_A_ROW", "agent_command", "agent_logs", "default_head_listen",
           "dragon_block_error_handler", "failure_details", "is_local", "is_slurm", "job_output",
           "walltime_seconds"]
