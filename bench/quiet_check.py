"""Is the machine quiet before a benchmark starts? Busy CPU of the whole machine over a short
window, and the processes that used it.

On the 2-core VM of bench/README.md a loop using a fifth of a CPU moved the Parsl no-op
rates by 20-40% (README.md, "the head and agent on one CPU"): a run started beside a build or a
monitoring loop measures that, not the executors. bench/run.py calls this before measuring and
says so in results.md; the runs themselves report their own outside load.
"""
from __future__ import annotations

import time

from proc_counts import machine_busy_seconds, process_cpu_seconds

# Busy cores from which the machine counts as not quiet: the clock-tick sampling of /proc/stat
# shows a few hundredths on an idle machine.
NOT_QUIET_CORES = 0.1


def quiet_check(seconds: float = 2.0, top: int = 3) -> dict:
    """{"seconds", "busy_cores", "quiet", "top": [{"pid", "name", "cores"}]}: what the machine
    did over `seconds` (this process included, which only sleeps)."""
    p0, b0, t0 = process_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    time.sleep(seconds)
    p1, b1, t1 = process_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    wall = t1 - t0
    used = sorted(((cpu - p0[pid][1], pid, name) for pid, (name, cpu) in p1.items() if pid in p0),
                  reverse=True)
    busy = max(0.0, (b1 - b0) / wall)
    return {"seconds": round(wall, 2), "busy_cores": round(busy, 3), "quiet": busy < NOT_QUIET_CORES,
            "top": [{"pid": pid, "name": name, "cores": round(d / wall, 3)} for d, pid, name in used[:top] if d > 0]}


def describe(check: dict) -> str:
    """One line for the console and results.md."""
    who = ", ".join(f"{t['name']} (pid {t['pid']}) {t['cores']:.2f}" for t in check["top"]) or "no process"
    if check["quiet"]:
        return f"quiet before the run: {check['busy_cores']:.2f} cores busy over {check['seconds']} s"
    return (f"NOT QUIET before the run: {check['busy_cores']:.2f} cores busy over {check['seconds']} s "
            f"(most: {who}). Other programs running beside the benchmark move the Parsl no-op rates "
            f"by 20-40% on small machines (bench/README.md): stop them, or compare only runs made "
            f"beside the same load")
