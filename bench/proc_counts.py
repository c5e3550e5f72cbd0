"""Counts the benchmarks read from /proc about a process's threads."""
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
