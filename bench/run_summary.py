"""Summaries of a bench/run.py run: medians per executor, ratios within rounds, and the issues'
targets (PASS/MISS) that results.md's targets tables show. bench/run.py calls these after the
measurements; they only read the runs' JSON.
"""
from __future__ import annotations

import statistics

import parsl_bench
from parsl_bench import FLOOR


# Executors some of whose processes the workflow process does not start as its descendants:
# dragonhpc's runtime (its launcher starts the workflow), and HTEX's worker pool (LocalProvider
# starts it in the background through a shell that exits: it is reparented). Counts over the
# workflow's process tree (wake-ups, outside load) would miss or misplace their work.
NOT_ALL_DESCENDANTS = (*parsl_bench.DRAGONHPC, "htex")


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list, executors: list, benches: list) -> dict:
    summary: dict = {}
    ok = lambda r, b: isinstance(r.get(b), dict) and "error" not in r[b]  # noqa: E731
    if "noop" in benches:
        s = {}
        for e in executors:
            rs = [r for r in runs if r["executor"] == e and ok(r, "noop")]
            errs = [r["noop"]["error"] for r in runs if r["executor"] == e and not ok(r, "noop")]
            s[e] = {"tasks_per_s": median([r["noop"]["tasks_per_s"] for r in rs]),
                    "runs": [r["noop"]["tasks_per_s"] for r in rs],
                    "client_cpu_us_per_task": median([r["noop"]["client_cpu_s"] / r["noop"]["tasks"] * 1e6
                                                      for r in rs]),
                    "machine_cpu_us_per_task": median([r["noop"]["machine_busy_cpu_s"] / r["noop"]["tasks"] * 1e6
                                                       for r in rs]),
                    # The workflow process and every process it started (None for runs before they were
                    # counted, and where the executor's processes are not all its descendants).
                    "wakeups_per_task": None if e in NOT_ALL_DESCENDANTS else median(
                        [sum(r["noop"]["thread_wakeups"].values()) / r["noop"]["tasks"]
                         for r in rs if "thread_wakeups" in r["noop"]]),
                    # The workflow process's threads runnable but waiting for a CPU (every executor's
                    # workflow is this process).
                    "runqueue_wait_us_per_task": median(
                        [r["noop"]["workflow_runqueue_wait_s"] / r["noop"]["tasks"] * 1e6
                         for r in rs if r["noop"].get("workflow_runqueue_wait_s") is not None]),
                    # CPU outside the benchmark's processes, the most of any round.
                    "outside_cores_max": None if e in NOT_ALL_DESCENDANTS else max(
                        [r["noop"]["outside_cores"] for r in rs if r["noop"].get("outside_cores") is not None],
                        default=None),
                    "errors": errs}
        summary["noop"] = s
    if "latency" in benches:
        s = {}
        for e in [e for e in executors if parsl_bench.benches_for(e, ["latency"])]:  # not the gather floor
            rs = [r for r in runs if r["executor"] == e and ok(r, "latency")]
            pooled = [x for r in rs for x in r["latency"].get("raw_ms", [])]
            st = parsl_bench.latency_stats(pooled) if pooled else {}
            st["round_p50_ms"] = [r["latency"]["p50_ms"] for r in rs]
            st["notes"] = sorted({r["latency"]["note"] for r in rs if r["latency"].get("note")})
            st["errors"] = [r["latency"]["error"] for r in runs if r["executor"] == e and not ok(r, "latency")]
            s[e] = st
        summary["latency"] = s
    if "images" in benches:
        s = {}
        for e in [e for e in executors if e not in FLOOR]:  # the floor executors run no images
            rs = [r for r in runs if r["executor"] == e and ok(r, "images")]
            s[e] = {"efficiency": median([r["images"]["efficiency"] for r in rs]),
                    "runs": [r["images"]["efficiency"] for r in rs],
                    "runs_own_basis": [r["images"].get("ideal_basis") == "tasks' own compute" for r in rs],
                    "efficiency_task_compute": median([r["images"].get("efficiency_task_compute") for r in rs]),
                    "task_compute_ms": median([r["images"].get("task_compute_ms") for r in rs]),
                    "total_s": median([r["images"]["total_s"] for r in rs]),
                    "ideal_s": median([r["images"]["ideal_s"] for r in rs]),
                    "images_per_s": median([r["images"]["images_per_s"] for r in rs]),
                    "client_cpu_ms_per_image": median([r["images"]["client_cpu_s"] / r["images"]["images"] * 1e3
                                                       for r in rs]),
                    "errors": [r["images"]["error"] for r in runs if r["executor"] == e and not ok(r, "images")]}
        summary["images"] = s
    return summary


def round_ratios(runs: list, bench: str, key: str, a: str, b: str) -> dict:
    """a/b of `key` within each round where both ran, and their median."""
    per = []
    for rnd in sorted({r["round"] for r in runs}):
        ra = next((r for r in runs if r["round"] == rnd and r["executor"] == a), None)
        rb = next((r for r in runs if r["round"] == rnd and r["executor"] == b), None)
        try:
            per.append(ra[bench][key] / rb[bench][key])
        except (TypeError, KeyError, ZeroDivisionError):
            continue
    return {"median": median(per), "rounds": per}


def floor_ratios(runs: list, a: str, floors: list) -> dict:
    """a's no-op tasks/s over the best DFK floor's (the faster of the floor executors in that round),
    within each round, and their median; also which floor was the faster in each round."""
    per, best = [], []
    for rnd in sorted({r["round"] for r in runs}):
        ra = next((r for r in runs if r["round"] == rnd and r["executor"] == a), None)
        rates = {}
        for f in floors:
            rf = next((r for r in runs if r["round"] == rnd and r["executor"] == f), None)
            try:
                rates[f] = float(rf["noop"]["tasks_per_s"])
            except (TypeError, KeyError, ValueError):
                continue
        try:
            top = max(rates, key=rates.get)
            per.append(ra["noop"]["tasks_per_s"] / rates[top])
            best.append(top)
        except (TypeError, KeyError, ValueError, ZeroDivisionError):
            continue
    return {"median": median(per), "rounds": per, "best_floor": best}


NOOP_REFS = ("threadpool", "htex", "dragonhpc-batch")  # "<executor>/<ref>" ratios of no-op tasks/s


def ratios(runs: list, summary: dict, executors: list) -> dict:
    out: dict = {}
    if "noop" in summary:
        out["noop_tasks_per_s"] = {f"{e}/{ref}": round_ratios(runs, "noop", "tasks_per_s", e, ref)
                                   for e in executors for ref in NOOP_REFS
                                   if ref in executors and e != ref}
        floors = [f for f in FLOOR if f in executors]
        if floors:  # "/dfk-floor": over the best of the floor executors, round by round
            out["noop_tasks_per_s"].update({f"{e}/dfk-floor": floor_ratios(runs, e, floors)
                                            for e in executors})
    if "latency" in summary:
        lat = summary["latency"]
        out["latency_p50"] = {}
        for e in executors:
            for ref in ("threadpool", "htex"):
                if ref in executors and e != ref and lat.get(e, {}).get("p50_ms") and lat[ref].get("p50_ms"):
                    out["latency_p50"][f"{e}/{ref}"] = lat[e]["p50_ms"] / lat[ref]["p50_ms"]
    if "images" in summary:
        out["images_time"] = {f"{e}/{ref}": round_ratios(runs, "images", "total_s", e, ref)
                              for e in executors for ref in ("threadpool", "htex")
                              if ref in executors and e != ref}
    return out


def targets(summary: dict, rat: dict, condition: str = "") -> list:
    """The issue's Parsl-level targets; `condition` (e.g. "Parsl logging off") is appended to
    each target's name when the run measured more than one Parsl configuration."""
    rows = []

    def add(name, goal, measured, ok, detail):
        name = f"{name} ({condition})" if condition else name
        rows.append({"target": name, "goal": goal, "measured": measured,
                     "status": "n/a" if measured is None else ("PASS" if ok else "MISS"), "detail": detail})

    nr = rat.get("noop_tasks_per_s", {})
    for d, label in (("dragon", "DragonExecutor"), ("dragon-prefetch", "DragonExecutor, prefetch")):
        if d not in summary.get("noop", summary.get("latency", summary.get("images", {}))):
            continue
        if "noop" in summary:
            m = nr.get(f"{d}/htex", {}).get("median")
            add(f"{label}: no-op throughput through Parsl vs HighThroughputExecutor", ">= 1.5x", m,
                m is not None and m >= 1.5, "median over rounds of the per-round ratio of tasks/s")
            m = nr.get(f"{d}/threadpool", {}).get("median")
            add(f"{label}: no-op throughput through Parsl vs ThreadPoolExecutor (DFK ceiling)", ">= 0.8x", m,
                m is not None and m >= 0.8, "median over rounds of the per-round ratio of tasks/s")
        if "latency" in summary:
            m = rat.get("latency_p50", {}).get(f"{d}/threadpool")
            add(f"{label}: sequential latency p50 through Parsl vs ThreadPoolExecutor", "<= 1.5x", m,
                m is not None and m <= 1.5, "p50 of all samples of all rounds, ratio")
        if "images" in summary:
            m = summary["images"].get(d, {}).get("efficiency")
            add(f"{label}: image batch efficiency", ">= 0.90", m, m is not None and m >= 0.9,
                "ideal (images x compute / workers) / measured, median over rounds")
    return rows


def hook_targets(source: str, res: dict) -> list:
    """Optional "targets" of a hook's JSON, as a list or a dict of rows with "target" and
    "status" (PASS/MISS) or "met" (bool)."""
    t = res.get("targets")
    rows = list(t.values()) if isinstance(t, dict) else t if isinstance(t, list) else []
    out = []
    for r in rows:
        if not isinstance(r, dict) or "target" not in r:
            continue
        status = r.get("status") or ({True: "PASS", False: "MISS"}.get(r.get("met"), "n/a"))
        row = {"target": str(r["target"]), "goal": str(r.get("goal", "")), "measured": r.get("measured"),
               "status": status, "detail": str(r.get("detail", "")), "source": source}
        if r.get("issue") is not None:
            row["issue"] = r["issue"]
        out.append(row)
    return out


def native_targets(results: dict, workers: int) -> list:
    """The issue's native targets (>= 10,000 no-op Python tasks/s, >= 5x HTEX through Parsl), if
    native_bench.py's JSON has summary.python[<workers>].tasks_per_s (read defensively)."""
    try:
        tps = float(results["native"]["result"]["summary"]["python"][str(workers)]["tasks_per_s"])
    except (KeyError, TypeError, ValueError):
        return []
    rows = [{"target": f"native no-op Python tasks/s ({workers} workers)", "goal": ">= 10,000", "measured": tps,
             "status": "PASS" if tps >= 10_000 else "MISS", "detail": "bench/native_bench.py median",
             "source": "native"}]
    htex = results["parsl"].get("summary", {}).get("noop", {}).get("htex", {}).get("tasks_per_s")
    if htex:
        rows.append({"target": "native no-op throughput vs HighThroughputExecutor through Parsl", "goal": ">= 5x",
                     "measured": tps / htex, "status": "PASS" if tps / htex >= 5 else "MISS",
                     "detail": f"{tps:,.0f} native / {htex:,.0f} HTEX (this run)", "source": "native"})
    return rows




# ---------------------------------------------------------------- issue 15
ISSUE15_BATCH_RATIO = 1.2   # DragonExecutor's no-op tasks/s over dragonhpc's DragonBatchPoolExecutor's
ISSUE15_FLOOR_RATIO = 0.95  # ... or over the DFK floor's, where 1.2x the batch executor is beyond the floor
ISSUE15_P50_MS = 1.0        # DragonExecutor's sequential round trip through Parsl
IMAGE_RIVALS = ("threadpool", "htex", "dragonhpc-batch")  # with DragonExecutor: the issue's four executors


def issue15_targets(summary: dict, rat: dict, condition: str = "", compute_ms: float | None = None) -> list:
    """Issue 15's Parsl-level goals for one configuration (logging mode, or image compute time):
    no-op tasks/s >= 1.2x DragonBatchPoolExecutor, or >= 0.95x the DFK floor where 1.2x the batch
    executor is beyond that floor (both measured in this run); p50 <= 1.0 ms; the image batch's
    best executor."""
    rows = []
    suffix = f" ({condition})" if condition else ""

    def add(name, goal, measured, status, detail):
        rows.append({"issue": 15, "target": name + suffix, "goal": goal, "measured": measured, "status": status,
                     "detail": detail})

    ns, nr = summary.get("noop", {}), rat.get("noop_tasks_per_s", {})
    if "dragon" in ns:
        vb = nr.get("dragon/dragonhpc-batch", {}).get("median")
        vf = nr.get("dragon/dfk-floor", {}).get("median")
        fb = floor_vs_batch(rat)
        beyond = fb is not None and fb < ISSUE15_BATCH_RATIO  # 1.2x the batch executor is faster than the DFK allows
        parts = [f"{vb:.2f}x dragonhpc-batch" if vb is not None else "dragonhpc-batch not measured",
                 f"{vf:.2f}x DFK floor" if vf is not None else "DFK floor not measured"]
        if vb is None:  # the goal is set against dragonhpc's batch executor: not judged without it
            status = "n/a"
        elif vb is not None and vb >= ISSUE15_BATCH_RATIO:
            status = "PASS"
        elif vf is not None and vf >= ISSUE15_FLOOR_RATIO and beyond:
            status = "PASS (floor)"
        else:
            status = "MISS"
        rates = ", ".join(f"{e} {ns[e]['tasks_per_s']:,.0f}/s" for e in ("dragon", "dragonhpc-batch", *FLOOR)
                          if ns.get(e, {}).get("tasks_per_s"))
        add("DragonExecutor: no-op tasks/s through Parsl vs dragonhpc DragonBatchPoolExecutor, or vs the DFK floor",
            f">= {ISSUE15_BATCH_RATIO}x batch, or >= {ISSUE15_FLOOR_RATIO}x floor if the floor < "
            f"{ISSUE15_BATCH_RATIO}x batch", "; ".join(parts), status,
            "medians of per-round ratios; floor = the fastest of the DFK floor executors (inline, thread, "
            f"gather) in each round; best floor / batch = {'-' if fb is None else f'{fb:.2f}x'}; medians: {rates or '-'}")
    lat = summary.get("latency", {}).get("dragon", {})
    if "latency" in summary:
        p50 = lat.get("p50_ms")
        add("DragonExecutor: sequential round trip p50 through Parsl", f"<= {ISSUE15_P50_MS} ms", p50,
            "n/a" if p50 is None else ("PASS" if p50 <= ISSUE15_P50_MS else "MISS"),
            "ms, p50 of the samples of all rounds" + "".join(
                f"; {f} p50 {summary['latency'][f]['p50_ms']:.2f} ms" for f in FLOOR
                if summary["latency"].get(f, {}).get("p50_ms") is not None))
    ims = summary.get("images", {})
    if ims.get("dragon", {}).get("efficiency") is not None:
        d = ims["dragon"]["efficiency"]
        rivals = {e: ims[e]["efficiency"] for e in IMAGE_RIVALS if ims.get(e, {}).get("efficiency") is not None}
        best = max(rivals, key=rivals.get) if rivals else None
        missing = [e for e in IMAGE_RIVALS if e not in rivals]
        at = f" at {compute_ms:g} ms per image" if compute_ms is not None else ""
        add(f"DragonExecutor: image batch{at}, the best of the four executors",
            "highest efficiency", f"{d:.3f} vs {rivals[best]:.3f} ({best})" if best else f"{d:.3f}",
            "n/a" if best is None else ("PASS" if d >= rivals[best] else "MISS"),
            "median efficiency over rounds; "
            + ", ".join(f"{e} {v:.3f}" for e, v in rivals.items())
            + (f"; not in this run: {', '.join(missing)}" if missing else ""))
    return rows


def floor_vs_batch(rat: dict) -> float | None:
    """The best DFK floor's no-op tasks/s over DragonBatchPoolExecutor's (median of per-round ratios):
    below 1.2, a 1.2x-the-batch-executor goal is beyond what the DFK allows."""
    per = rat.get("noop_tasks_per_s", {}).get("dragonhpc-batch/dfk-floor", {}).get("rounds") or []
    return median([1.0 / x for x in per if x])
