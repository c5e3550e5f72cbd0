"""Counts the benchmarks read from /proc: a process's threads, every process's CPU, the machine's."""
from __future__ import annotations

import os


def thread_context_switches(pid, voluntary_only: bool = False) -> int:
    """Context switches of a process's live threads (`pid` may be "self"). Voluntary ones are a
    thread that blocked and had to be woken again: the hand-offs its work pays for. Involuntary
    ones are preemptions, which count the machine's load as well. A process or thread that is
    gone counts 0."""
    fields = ("voluntary_ctxt_switches:",) if voluntary_only else (
        "voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(fields):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def thread_runqueue_wait_seconds(pid) -> float | None:
    """Seconds a process's live threads have spent runnable but waiting for a CPU (the second
    field of /proc/PID/task/TID/schedstat), summed; None where the kernel does not keep it. On a
    busy machine a thread of the workflow that was woken waits here before it runs: the time the
    CPU counts do not show."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except FileNotFoundError:
            return None  # a kernel without CONFIG_SCHED_INFO (or a thread gone: counted as none)
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait),
    sampled at the clock tick."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def each_process_stat():
    """(pid, name, the /proc/PID/stat fields after the name) of every process now; one that ends
    while it is read is left out."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(d), stat[stat.find("(") + 1:stat.rfind(")")], stat.rsplit(")", 1)[1].split()


def process_cpu_seconds() -> dict:
    """{pid: (name, CPU seconds)} of every process now (user and system, its own threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (name, (int(rest[11]) + int(rest[12])) / tick) for pid, name, rest in each_process_stat()}
