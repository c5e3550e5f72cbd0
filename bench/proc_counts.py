"""Counts the benchmarks read from /proc: a process's threads, every process's CPU, the machine's;
and how the machine's idle CPUs sleep (/sys)."""
from __future__ import annotations

import os


def _thread_files(pid, name: str) -> list | None:
    """The text of /proc/PID/task/TID/NAME for each live thread of a process (`pid` may be
    "self"); None when the process is gone. A thread that ends while it is read is left out."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    texts = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                texts.append(f.read())
        except OSError:
            continue
    return texts


def thread_context_switches(pid, voluntary_only: bool = False) -> int:
    """Context switches of a process's live threads (`pid` may be "self"). Voluntary ones are a
    thread that blocked and had to be woken again: the hand-offs its work pays for. Involuntary
    ones are preemptions, which count the machine's load as well. A process or thread that is
    gone counts 0."""
    fields = ("voluntary_ctxt_switches:",) if voluntary_only else (
        "voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
    total = 0
    for status in _thread_files(pid, "status") or []:
        for line in status.splitlines():
            if line.startswith(fields):
                total += int(line.split()[1])
    return total


def thread_runqueue_wait_seconds(pid) -> float | None:
    """Seconds a process's live threads have spent runnable but waiting for a CPU (the second
    field of /proc/PID/task/TID/schedstat), summed; None when the process is gone or the kernel
    does not keep these counts. On a busy machine a thread of the workflow that was woken waits
    here before it runs: the time the CPU counts do not show."""
    if not os.path.exists("/proc/self/schedstat"):  # a kernel without CONFIG_SCHED_INFO
        return None
    texts = _thread_files(pid, "schedstat")
    if texts is None:
        return None
    return sum(int(t.split()[1]) for t in texts if len(t.split()) > 1) / 1e9


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


def cpu_idle() -> dict | None:
    """How idle CPUs sleep: the cpuidle driver and governor, and for haltpoll (KVM guests) how
    long an idle vCPU polls before it halts. On the 2-core VM of bench/README.md (haltpoll, 0 ns:
    it halts at once) a poll of 200 us made the DFK floors 1.6-1.8x faster, so results name it.
    None where the kernel has no cpuidle."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    driver = read("/sys/devices/system/cpu/cpuidle/current_driver")
    if driver is None:
        return None
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return {"driver": driver, "governor": read("/sys/devices/system/cpu/cpuidle/current_governor"),
            "halt_poll_ns": int(poll) if poll and poll.isdigit() else None}


def describe_cpu_idle(idle: dict | None) -> str:
    """For results.md's machine line, e.g. "idle CPUs: haltpoll, halt after polling 0 ns"."""
    if not idle:
        return "idle CPUs: not known (no cpuidle)"
    text = f"idle CPUs: {idle['driver']}"
    if idle.get("halt_poll_ns") is not None:
        text += f", halt after polling {idle['halt_poll_ns']:,} ns"
    return text
