#!/usr/bin/env python3
"""Where a task's round trip goes: one no-op at a time through DragonPoolExecutor, each split
into five segments by the head's own task times (issue 15's latency goal).

    python bench/round_trip.py                         # 2,000 tasks, ~10 s
    python bench/round_trip.py --quick                 # 200 tasks
    python bench/round_trip.py --samples 5000 --json-out rt.json

For each task this process notes the wall clock before submit() (t0) and once the result is in
(t5); the head records when it took the task in (submitted), when it sent it to an agent
(scheduled), and the agent's clock when it handed the task to a worker (running) and when the
worker's result came back to it (finished). Segments, per task, then p50/p90/mean over all:

  client -> head       t0 .. submitted      submit() in Python, the client core's sender, gRPC
  head                 submitted .. scheduled   the head's scheduling of the task
  head -> worker       scheduled .. running     gRPC to the agent, the agent's queue
  worker               running .. finished      pipe to the worker, the task, the result back
  agent -> client      finished .. t5       agent -> head -> client core -> the future

They add up to the round trip (t5 - t0) task by task. Every time is read on this host: the
embedded head and its agent run here, so their clocks are this one (on several hosts the agent's
segments would mix clocks; this benchmark does not go there). Where most of it goes is thread
wake-ups: a task crosses about fifteen threads in five processes.

The last stdout line is one JSON object (also written to --json-out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# The most tasks one ListTasks call returns (daemon/head_queries.cc).
MAX_LISTED = 100_000

SEGMENTS = ("client -> head", "head", "head -> worker", "worker", "agent -> client")


def noop(x):
    return x


def percentile(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarize(rows: list) -> dict:
    """rows: per task, the five segments and the total, in seconds. Microseconds out."""
    out = {}
    for i, name in enumerate(SEGMENTS + ("round trip",)):
        us = [r[i] * 1e6 for r in rows]
        out[name] = {"p50_us": statistics.median(us), "p90_us": percentile(us, 0.9),
                     "mean_us": statistics.fmean(us), "min_us": min(us)}
    return out


def segments(t0: float, t5: float, times) -> tuple:
    """The five segments of one task (seconds) and its round trip, from its TaskTimes (us)."""
    s, c, r, f = (times.submitted_us / 1e6, times.scheduled_us / 1e6, times.running_us / 1e6,
                  times.finished_us / 1e6)
    return (s - t0, c - s, r - c, f - r, t5 - f, t5 - t0)


def measure(samples: int, workers: int, warmup: int) -> dict:
    # Workers import this module's noop by reference, as a user's module function.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
    from dragon_parsl import DragonPoolExecutor
    from dragon_parsl._proto import common_pb2, head_pb2
    from round_trip import noop as by_reference

    pool = DragonPoolExecutor(max_workers=workers)
    try:
        for i in range(warmup):
            pool.submit(by_reference, i).result(timeout=60)
        marks = []
        for i in range(samples):
            t0 = time.time()
            fut = pool.submit(by_reference, i)
            if fut.result(timeout=60) != i:
                raise RuntimeError(f"task {i} returned {fut.result()!r}")
            marks.append((fut.dragon_task_id, t0, time.time()))
        # The head keeps the newest finished tasks (dragond --keep-finished): read them all at once.
        reply = pool.executor._unary("ListTasks", head_pb2.ListTasksRequest(
            state=common_pb2.DONE, limit=samples + warmup), timeout=30)
        times = {t.task_id: t.times for t in reply.tasks}
    finally:
        pool.shutdown(wait=True)
    missing = [tid for tid, _, _ in marks if tid not in times]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(marks)} tasks not in the head's table (first: {missing[:5]}): "
                           f"the head forgot them before they were read")
    rows = [segments(t0, t5, times[tid]) for tid, t0, t5 in marks]
    return {"samples": len(rows), "workers": workers, "segments_us": summarize(rows),
            "negative": sum(1 for r in rows if min(r) < 0)}


def table(result: dict) -> str:
    lines = [f"{result['samples']:,} no-op tasks one at a time, DragonPoolExecutor, {result['workers']} workers:",
             "", f"{'segment':<18} {'p50 us':>9} {'p90 us':>9} {'mean us':>9}"]
    for name, s in result["segments_us"].items():
        lines.append(f"{name:<18} {s['p50_us']:9.1f} {s['p90_us']:9.1f} {s['mean_us']:9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--samples", type=int, default=2000, help="tasks measured, one at a time (default 2000)")
    p.add_argument("--quick", action="store_true", help="200 tasks")
    p.add_argument("--workers", type=int, default=2, help="workers of the embedded head (default 2)")
    p.add_argument("--warmup", type=int, default=20, help="tasks run first, not measured (default 20)")
    p.add_argument("--json-out", help="also write the JSON result here")
    args = p.parse_args(argv)
    samples = 200 if args.quick else args.samples
    if samples < 1 or args.workers < 1 or args.warmup < 0:
        p.error("--samples and --workers must be at least 1, --warmup at least 0")
    if samples + args.warmup > MAX_LISTED:
        p.error(f"--samples plus --warmup must be at most {MAX_LISTED:,} (what one ListTasks returns)")
    result = measure(samples, args.workers, args.warmup)
    print(table(result), file=sys.stderr)
    if result["negative"]:
        print(f"round_trip: {result['negative']} tasks have a segment below zero: clocks are not this host's",
              file=sys.stderr)
    line = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
