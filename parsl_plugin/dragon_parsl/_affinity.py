"""Confining the workflow process's threads to one CPU (DragonExecutor client_cpu).

CPython's threads take turns on one interpreter lock. When they run on different
CPUs, every hand-off of the lock is a wake-up across CPUs, and Parsl's DataFlowKernel
hands it off many times per task (each log record it writes releases it). On the
machines measured (bench/README.md) the DFK then spent about twice the CPU per task
that it spends with all its threads on one CPU.
"""
from __future__ import annotations

import os
from typing import Set


def allowed_cpus() -> Set[int]:
    """The CPUs the calling thread may run on."""
    return set(os.sched_getaffinity(0))


def pin_process_threads(cpu: int) -> int:
    """Moves every thread of this process onto ``cpu``; threads they start later
    inherit it, and so do processes they start. Returns how many threads were moved.
    Raises ValueError for a CPU this process may not use."""
    allowed = allowed_cpus()
    if cpu not in allowed:
        raise ValueError(f"CPU {cpu} is not one this process may run on (allowed: {_ranges(allowed)})")
    moved = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        moved += 1
    return moved


def _ranges(cpus: Set[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5', as in /proc/*/status and taskset."""
    if not cpus:
        return "none"
    out, ordered = [], sorted(cpus)
    start = prev = ordered[0]
    for c in ordered[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(out)
