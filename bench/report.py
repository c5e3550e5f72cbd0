"""results.md and the PNG plots of a bench/run.py results.json.

bench/run.py calls this at the end of a run; to redraw an existing run:
    python bench/report.py bench/results/<date-time>/
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import proc_counts
import quiet_check

NAMES = {
    "dragon": "DragonExecutor",
    "dragon-prefetch": "DragonExecutor, prefetch",
    "threadpool": "ThreadPoolExecutor",
    "htex": "HighThroughputExecutor",
    "dragonhpc-batch": "dragonhpc DragonBatchPoolExecutor",
    "dragonhpc-pool": "dragonhpc DragonPoolExecutor",
    "dfk-floor-inline": "DFK floor: futures completed at submit",
    "dfk-floor-thread": "DFK floor: futures completed by a thread",
    "dfk-floor-gather": "DFK floor: futures completed by a thread, in gathered batches",
}
SHORT = {"dragon": "Dragon", "dragon-prefetch": "Dragon\nprefetch", "threadpool": "ThreadPool", "htex": "HTEX",
         "dragonhpc-batch": "dragonhpc\nBatchPool", "dragonhpc-pool": "dragonhpc\nPool",
         "dfk-floor-inline": "DFK floor\ninline", "dfk-floor-thread": "DFK floor\nthread",
         "dfk-floor-gather": "DFK floor\ngather"}
COLORS = {"dragon": "#1f77b4", "dragon-prefetch": "#17becf", "threadpool": "#2ca02c", "htex": "#d62728",
          "dragonhpc-batch": "#9467bd", "dragonhpc-pool": "#8c564b", "dfk-floor-inline": "#7f7f7f",
          "dfk-floor-thread": "#bcbd22", "dfk-floor-gather": "#e377c2"}


def fmt(x, digits: int = 0, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}{suffix}"


def ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def first_error(errors: list) -> str:
    return errors[0].splitlines()[0][:300].replace("|", "/") if errors else ""


# ---------------------------------------------------------------- markdown
HOOK_TITLES = (("native", "Native throughput (C++ client, no Parsl)"),
               ("native_py", "Native Python APIs, no Parsl: DragonPoolExecutor, ProcessPoolExecutor, Ray (issue 15)"),
               ("head_scale", "Scale of the head"),
               ("liveness", "Agent failure detection (issue 10)"),
               ("auth_cost", "Cost of authentication (issue 10)"),
               ("cluster_start", "Agents on many nodes: start times and no-op throughput (issue 11)"))
OPTIONAL_HOOKS = ("native_py", "liveness", "auth_cost", "cluster_start")


def markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    v = m["versions"]
    L = []
    L.append(f"# Benchmark results {m['date']}")
    L.append("")
    L.append(f"- machine: {m['cores']} cores, {m['cpu_model'] or '?'}, {m.get('mem_gib')} GiB, "
             f"kernel {m.get('kernel')}, host {m['host']}"
             + (f", {proc_counts.describe_cpu_idle(m['cpu_idle'])}" if "cpu_idle" in m else "")
             + "; load average at start "
             + f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
             + (f", at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}" if m.get("loadavg_end") else ""))
    if m.get("quiet_check"):
        L.append(f"- {quiet_check.describe(m['quiet_check'])}")
    L.append(f"- versions: python {v['python']}, parsl {v['parsl']}, dragon_parsl {v['dragon_parsl']}, "
             f"dragonhpc {v['dragonhpc'] or 'not installed'}, numpy {v['numpy']}, grpcio {v['grpcio']}; "
             f"commit {m.get('git_commit')}")
    L.append(f"- {res['dragonhpc']['detail']}")
    L.append(f"- command: `{s['command']}`; {s['rounds']} round(s), executors alternating in rotating order, "
             f"{s['workers']} workers each, Parsl logging: {logging_modes(s)}")
    for e, why in s.get("skipped_executors", {}).items():
        L.append(f"- {NAMES.get(e, e)}: skipped ({why})")
    L.append("")

    tg = res.get("targets", [])
    i15 = sorted((t for t in tg if t.get("issue") == 15), key=lambda t: t.get("source") == "native_py")
    if i15:
        L += targets_table("## Targets (issue 15)", i15, ISSUE15_NOTE)
    rest = [t for t in tg if t.get("issue") != 15]
    if rest:
        L += targets_table("## Targets (issue 4" + (", and the hooks' own)" if any(t.get("source") for t in rest)
                                                    else ")"), rest)

    sections = parsl_sections(res)
    for key, parsl, mode in sections:
        L += parsl_markdown(parsl, section_settings(s, parsl), section_condition(key, parsl, mode, sections))

    for h, title in HOOK_TITLES:
        if h in OPTIONAL_HOOKS and h not in res:
            continue  # a results.json from before these hooks existed
        hr = res.get(h, {})
        L.append(f"## {title}")
        L.append("")
        if hr.get("status") != "ok":
            L.append(hr.get("status", "not available: not run"))
            L.append("")
            continue
        data = hr["result"]
        L.append(f"From `{hr.get('command')}` ({hr.get('elapsed_s', 0):.0f} s); its JSON is in results.json "
                 f"under \"{h}\".")
        L.append("")
        if isinstance(data.get("table_md"), str):
            L.append(data["table_md"].rstrip())
            L.append("")
        if h == "native_py":
            L += native_py_vs_cpp(data, res)
    return "\n".join(L) + "\n"


ISSUE15_NOTE = ("Measured side by side in this run. The no-op goal is >= 1.2x dragonhpc's DragonBatchPoolExecutor, "
                "or, where 1.2x that executor is beyond what Parsl's DataFlowKernel allows here (the best of the "
                "DFK floor executors, which run nothing, is below 1.2x the batch executor), >= 0.95x that "
                "floor, which the result column then shows as \"PASS (floor)\" (this note is the same in "
                "every run; the result column has the verdict). The image rows compare DragonExecutor with "
                "ThreadPool, HTEX and dragonhpc's batch executor (those in the run).")


def targets_table(title: str, rows: list, note: str = "") -> list:
    L = [title, ""] + ([note, ""] if note else [])
    L.append("| target | goal | measured | result | how |")
    L.append("|---|---|---|---|---|")
    for t in rows:
        meas = t["measured"]
        if isinstance(meas, (int, float)):
            meas_s = f"{meas:,.0f}" if abs(meas) >= 100 else f"{meas:.2f}"
        else:
            meas_s = str(meas if meas is not None else "-")
        L.append(f"| {t['target']} | {t['goal']} | {meas_s} | **{t['status']}** | "
                 f"{t.get('detail', '')}{' (' + t['source'] + ')' if t.get('source') else ''} |")
    L.append("")
    return L


def native_py_vs_cpp(data: dict, res: dict) -> list:
    """DragonPoolExecutor next to the C++ client's native_bench (bench/native_bench.py), when both ran in
    this run with the same number of workers."""
    try:
        d = data["summary"]["dragon-pool"]
        w = str(data["config"]["workers"])
        cpp = res["native"]["result"]["summary"]["python"][w]
        tps, cpp_tps = float(d["tasks_per_s"]), float(cpp["tasks_per_s"])
    except (KeyError, TypeError, ValueError):
        return []
    line = (f"DragonPoolExecutor vs the C++ client (bench/native_bench.py in this run, {w} workers, "
            f"{cpp_tps:,.0f} no-op Python tasks/s): throughput {tps / cpp_tps:.2f}x")
    try:
        p50, cpp_p50 = float(d["latency"]["p50_ms"]), float(cpp["latency"]["p50_us"]) / 1000
        line += f", round-trip p50 {p50 / cpp_p50:.2f}x ({p50:.3f} ms against {cpp_p50:.3f} ms)"
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return [line + ".", ""]


def logging_modes(settings: dict) -> str:
    m = settings.get("parsl_logging", "default")
    return ", ".join(m) if isinstance(m, list) else str(m)


def parsl_sections(res: dict) -> list:
    """(key, section, logging mode) of every Parsl configuration in a results.json: "parsl" first,
    then "parsl_logging_<mode>" (older results have only "parsl")."""
    out = []
    images = sorted((k for k in res if k.startswith("parsl_images_")), key=lambda k: float(k[13:-2]))
    for key in ["parsl"] + sorted(k for k in res if k.startswith("parsl_logging_")) + images:
        if isinstance(res.get(key), dict):
            sec = res[key]
            mode = sec.get("logging") or (logging_modes(res["settings"]) if key == "parsl" else key[14:])
            out.append((key, sec, mode))
    return out


def section_settings(s: dict, parsl: dict) -> dict:
    """The run's settings, with the image count and compute time of this section (a run with
    --compute-ms 10,100 has a section per compute time)."""
    return dict(s, **{k: parsl[k] for k in ("images", "compute_ms") if parsl.get(k) is not None})


def section_condition(key: str, parsl: dict, mode: str, sections: list) -> str:
    """What sets a section apart in headings besides its image compute time (which the image headings
    show): its logging mode, when the run had more than one."""
    modes = {m for k, _, m in sections if not k.startswith("parsl_images_")}
    return f" (Parsl logging {mode})" if len(modes) > 1 else ""


FLOOR = ("dfk-floor-inline", "dfk-floor-thread", "dfk-floor-gather")
NOOP_COLUMNS = (("threadpool", "vs ThreadPool"), ("htex", "vs HTEX"), ("dragonhpc-batch", "vs dragonhpc batch"),
                ("dfk-floor", "vs DFK floor (best)"))


def parsl_markdown(parsl: dict, s: dict, cond: str) -> list:
    """The no-op, latency and image tables of one Parsl configuration."""
    summ, rat = parsl.get("summary", {}), parsl.get("ratios", {})
    execs = parsl.get("executors", [])
    runs = parsl.get("runs", [])
    L: list = []
    if "noop" in summ:
        ns = summ["noop"]
        L.append(f"## No-op python_app throughput through Parsl ({s['tasks']:,} tasks submitted at once){cond}")
        L.append("")
        # vs ThreadPool and vs HTEX always (the issue-4 columns); dragonhpc's batch executor and the best
        # DFK floor (issue 15) when they ran
        cols = [(ref, head) for ref, head in NOOP_COLUMNS if ref in ("threadpool", "htex") or ref in execs
                or (ref == "dfk-floor" and any(f in execs for f in FLOOR))]
        L.append("| executor | median tasks/s | each round (tasks/s) | " + " | ".join(h for _, h in cols)
                 + " | client CPU us/task | machine CPU us/task | thread wake-ups/task | workflow waiting for a CPU us/task"
                 + " | outside load (cores) |")
        L.append("|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|")
        nr = rat.get("noop_tasks_per_s", {})
        for e in execs:
            x = ns.get(e, {})
            if x.get("tasks_per_s") is None:
                L.append(f"| {NAMES.get(e, e)} | failed: {first_error(x.get('errors', []))} | |"
                         + " |" * len(cols) + " | | | | |")
                continue
            vs = [1.0 if e == ref else nr.get(f"{e}/{ref}", {}).get("median") for ref, _ in cols]
            L.append(f"| {NAMES.get(e, e)} | {fmt(x['tasks_per_s'])} | {', '.join(fmt(r) for r in x['runs'])} | "
                     + " | ".join(ratio(v) for v in vs)
                     + f" | {fmt(x['client_cpu_us_per_task'])} | {fmt(x['machine_cpu_us_per_task'])}"
                     + f" | {fmt(x.get('wakeups_per_task'), 1)} | {fmt(x.get('runqueue_wait_us_per_task'))}"
                     + f" | {fmt(x.get('outside_cores_max'), 2)} |")
        L.append("")
        L.append("Ratios are medians of the per-round ratios (each round runs every executor back to back). "
                 "Client CPU is the workflow process (DFK + executor client); machine CPU is all busy CPU of "
                 "the machine during the run (workers, daemons, and anything else running). Thread wake-ups "
                 "count every time a thread of the workflow process or of a process it started (the service, "
                 "the workers) blocked and was woken again (voluntary context switches): the hand-offs a "
                 "task pays for. Waiting for a CPU is the time the workflow process's threads were runnable but"
                 " not running (their run-queue wait), per task. Outside load is the busy CPU of the machine "
                 "outside the workflow process and the processes it started, in cores, the most of any round: "
                 "another program running beside the benchmark. Wake-ups and outside load are not shown for "
                 "dragonhpc and HTEX, some of whose processes are not descendants"
                 " of the workflow process (dragonhpc's runtime; HTEX's worker pool, which its provider starts in"
                 " the background). On the 2-core VM of bench/README.md a loop using a fifth of a CPU moved"
                 " these rates by 20-40% (it showed as 0.22 cores; a quiet machine shows 0-0.06, the machine's "
                 "counters being sampled at the clock tick): compare rounds only where it stayed near 0.")
        if any(f in execs for f in FLOOR):
            fl = nr.get("dragon/dfk-floor", {})
            L.append("The DFK floor executors run nothing (every future completes with None: at submit, or from "
                     "another thread in batches): their rate is what Parsl's DataFlowKernel alone allows under this "
                     "configuration. \"vs DFK floor (best)\" divides by the fastest floor in each round"
                     + (f" (the faster, round by round: {', '.join(fl['best_floor'])})" if fl.get("best_floor")
                        else "") + ".")
            floor_best = max((ns.get(f, {}).get("tasks_per_s") or 0) for f in FLOOR)
            above = [f"{NAMES.get(e, e)} ({fmt(ns[e]['tasks_per_s'])}/s)" for e in execs if e not in FLOOR
                     and (ns.get(e, {}).get("tasks_per_s") or 0) > floor_best > 0]
            if above:
                L.append(f"Above the best floor's median ({fmt(floor_best)}/s) in this run: {', '.join(above)}: "
                         "there the floor is no bound: noise (the machine drifts), or that executor's way of "
                         "completing futures suits the DFK better than any floor's; read the per-round ratios.")
        L.append("")

    if "latency" in summ:
        ls = summ["latency"]
        L.append(f"## Sequential round trip (one no-op task at a time){cond}")
        L.append("")
        L.append("| executor | samples | p50 ms | p99 ms | mean ms | min ms | max ms | p50 vs ThreadPool | "
                 "p50 vs HTEX |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        lr = rat.get("latency_p50", {})
        for e in [e for e in execs if e in ls]:  # not those that run no latency (the gather floor)
            x = ls[e]
            if not x.get("samples"):
                L.append(f"| {NAMES.get(e, e)} | failed: {first_error(x.get('errors', []))} | | | | | | | |")
                continue
            L.append(f"| {NAMES.get(e, e)} | {x['samples']} | {fmt(x['p50_ms'], 2)} | {fmt(x['p99_ms'], 2)} | "
                     f"{fmt(x['mean_ms'], 2)} | {fmt(x['min_ms'], 2)} | {fmt(x['max_ms'], 2)} | "
                     f"{ratio(lr.get(e + '/threadpool') if e != 'threadpool' else 1.0)} | "
                     f"{ratio(lr.get(e + '/htex') if e != 'htex' else 1.0)} |")
        notes = [f"{NAMES.get(e, e)}: {n}" for e in execs for n in ls.get(e, {}).get("notes", [])]
        L.append("")
        L.append("Percentiles over the samples of all rounds pooled." + (" " + "; ".join(notes) if notes else ""))
        L.append("")

    if "images" in summ:
        ims = summ["images"]
        cal = parsl.get("calibration", [])
        L.append(f"## Image batch ({s['images']:,} images of {s['image_size']}x{s['image_size']} float64, "
                 f"{s['compute_ms']:g} ms compute each, {s['window']} in flight){cond}")
        L.append("")
        if cal:
            L.append("Compute calibrated per round on one idle core: " + "; ".join(
                f"round {c['round']}: {c['iterations']} FFT passes = {c['measured_ms']:.2f} ms" for c in cal)
                + " (thread CPU time, the fastest of 9 calls). Ideal time = images x compute / workers (the "
                "headline and the target), where compute is the calibrated time, or the tasks' own mean "
                "compute time when that is lower (marked *: the calibration came out slow, and must not "
                "flatter the efficiency). The last column is a diagnostic: the thread CPU time each task measured "
                "around its own compute, which grows when the run's other processes compete for the cores' "
                "caches and memory; the efficiency computed from it is what is left once that slowdown of "
                "the compute itself is counted as work.")
            L.append("")
        L.append("| executor | efficiency (median) | each round | time s | ideal s | images/s | "
                 "time vs ThreadPool | time vs HTEX | client CPU ms/image | "
                 "diagnostic: efficiency from the tasks' own compute time (their ms/image) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        ir = rat.get("images_time", {})
        for e in [e for e in execs if e in ims]:  # the DFK floor executors run no images
            x = ims.get(e, {})
            if x.get("efficiency") is None:
                L.append(f"| {NAMES.get(e, e)} | failed: {first_error(x.get('errors', []))} | | | | | | | | |")
                continue
            marks = x.get("runs_own_basis") or [False] * len(x["runs"])
            rounds = ", ".join(fmt(r, 3) + ("*" if own else "") for r, own in zip(x["runs"], marks))
            L.append(f"| {NAMES.get(e, e)} | {fmt(x['efficiency'], 3)} | {rounds} | "
                     f"{fmt(x['total_s'], 2)} | {fmt(x['ideal_s'], 2)} | {fmt(x['images_per_s'], 1)} | "
                     f"{ratio(ir.get(e + '/threadpool', {}).get('median') if e != 'threadpool' else 1.0)} | "
                     f"{ratio(ir.get(e + '/htex', {}).get('median') if e != 'htex' else 1.0)} | "
                     f"{fmt(x['client_cpu_ms_per_image'], 2)} | "
                     f"{fmt(x.get('efficiency_task_compute'), 3)} ({fmt(x.get('task_compute_ms'), 2)}) |")
        L.append("")

    failed = [r for r in runs if r.get("error")]
    if failed:
        L.append(f"## Failed measurements{cond}")
        L.append("")
        for r in failed:
            L.append(f"- round {r['round']}, {NAMES.get(r['executor'], r['executor'])}: "
                     f"{r['error'].splitlines()[0][:400]}")
        L.append("")

    return L


# ---------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_noop(parsl: dict, s: dict, out: Path, cond: str = "", suffix: str = "") -> list:
    ns = parsl["summary"].get("noop")
    execs = [e for e in parsl["executors"] if ns and ns.get(e, {}).get("tasks_per_s")]
    if not execs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(execs))
    ax.bar(xs, [ns[e]["tasks_per_s"] for e in execs], color=[COLORS.get(e, "gray") for e in execs], alpha=0.8)
    for i, e in enumerate(execs):
        ax.scatter([i] * len(ns[e]["runs"]), ns[e]["runs"], color="black", s=12, zorder=3)
        ax.annotate(f"{ns[e]['tasks_per_s']:.0f}", (i, ns[e]["tasks_per_s"]), ha="center", va="bottom",
                    fontsize=9, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([SHORT.get(e, e) for e in execs], fontsize=9)
    ax.set_ylabel("no-op tasks/s (median; dots: rounds)")
    ax.set_title(f"No-op python_app throughput through Parsl ({s['tasks']:,} tasks, {s['workers']} workers)"
                 + cond, fontsize=10)
    fig.tight_layout()
    p = out / f"noop_throughput{suffix}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot_latency(parsl: dict, s: dict, out: Path, cond: str = "", suffix: str = "") -> list:
    ls = parsl["summary"].get("latency")
    execs = [e for e in parsl["executors"] if ls and ls.get(e, {}).get("samples")]
    if not execs:
        return []
    runs = parsl["runs"]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = list(range(len(execs)))
    w = 0.38
    a1.bar([x - w / 2 for x in xs], [ls[e]["p50_ms"] for e in execs], w, label="p50",
           color=[COLORS.get(e, "gray") for e in execs])
    a1.bar([x + w / 2 for x in xs], [ls[e]["p99_ms"] for e in execs], w, label="p99",
           color=[COLORS.get(e, "gray") for e in execs], alpha=0.45, hatch="//")
    a1.set_yscale("log")
    a1.set_xticks(xs)
    a1.set_xticklabels([SHORT.get(e, e) for e in execs], fontsize=9)
    a1.set_ylabel("round trip, ms (log)")
    a1.set_title("Sequential no-op round trip: p50 (solid), p99 (hatched)" + cond, fontsize=10)
    for e in execs:
        samples = sorted(x for r in runs if r["executor"] == e and isinstance(r.get("latency"), dict)
                         for x in r["latency"].get("raw_ms", []))
        if samples:
            n = len(samples)
            a2.plot(samples, [(i + 1) / n for i in range(n)], label=NAMES.get(e, e), color=COLORS.get(e))
    a2.set_xscale("log")
    a2.set_xlabel("round trip, ms (log)")
    a2.set_ylabel("fraction of tasks")
    a2.set_title("Latency distribution (CDF)")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    p = out / f"latency{suffix}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot_images(parsl: dict, s: dict, out: Path, cond: str = "", suffix: str = "") -> list:
    ims = parsl["summary"].get("images")
    execs = [e for e in parsl["executors"] if ims and ims.get(e, {}).get("efficiency") is not None]
    if not execs:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(execs))
    ax.bar(xs, [ims[e]["efficiency"] for e in execs], color=[COLORS.get(e, "gray") for e in execs], alpha=0.8)
    for i, e in enumerate(execs):
        ax.scatter([i] * len(ims[e]["runs"]), ims[e]["runs"], color="black", s=12, zorder=3)
        ax.annotate(f"{ims[e]['efficiency']:.2f}\n({ims[e]['total_s']:.1f} s)", (i, ims[e]["efficiency"]),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.axhline(0.9, color="gray", ls="--", lw=1)
    ax.text(len(execs) - 0.5, 0.905, "target 0.90", ha="right", va="bottom", fontsize=8, color="gray")
    ax.set_ylim(0, 1.15)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([SHORT.get(e, e) for e in execs], fontsize=9)
    ax.set_ylabel("efficiency = ideal / measured time")
    ax.set_title(f"Image batch: {s['images']:,} x {s['image_size']}x{s['image_size']} float64, "
                 f"{s['compute_ms']:g} ms each, {s['workers']} workers" + cond, fontsize=10)
    fig.tight_layout()
    p = out / f"image_efficiency{suffix}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot_hook(res: dict, h: str, out: Path) -> list:
    hr = res.get(h, {})
    plots = (hr.get("result") or {}).get("plots") if hr.get("status") == "ok" else None
    if not isinstance(plots, dict):
        return []
    plt = _plt()
    made = []
    for name, spec in plots.items():
        try:
            x = spec["x"]
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label, ys in spec["series"].items():
                ax.plot(x[:len(ys)], ys, marker="o", label=str(label))
            ax.set_xlabel(spec.get("xlabel", ""))
            ax.set_ylabel(spec.get("ylabel", ""))
            ax.set_title(spec.get("title", f"{h}: {name}"))
            if spec.get("xscale") in ("log", "linear"):
                ax.set_xscale(spec["xscale"])
            if spec.get("yscale") in ("log", "linear"):
                ax.set_yscale(spec["yscale"])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
            p = out / f"{h}_{safe}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            made.append(p)
        except Exception as e:  # noqa: BLE001  (a malformed plot spec must not lose the report)
            hr.setdefault("plot_errors", []).append(f"{name}: {type(e).__name__}: {e}")
    return made


def write_report(res: dict, out: Path) -> str:
    out = Path(out)
    plots: list = []
    plot_errors = []
    sections = parsl_sections(res)
    for key, parsl, mode in sections:
        for fn in (plot_noop, plot_latency, plot_images):
            try:
                plots += fn(parsl, section_settings(res["settings"], parsl), out,
                            section_condition(key, parsl, mode, sections), "" if key == "parsl" else key[5:])
            except Exception as e:  # noqa: BLE001
                plot_errors.append(f"{fn.__name__} ({key}): {type(e).__name__}: {e}")
    for h, _ in HOOK_TITLES:
        try:
            plots += plot_hook(res, h, out)
        except Exception as e:  # noqa: BLE001
            plot_errors.append(f"{h}: {type(e).__name__}: {e}")
    md = markdown(res)
    if plots:
        md += "## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    if plot_errors:
        md += "\nPlots that failed: " + "; ".join(plot_errors) + "\n"
    (out / "results.md").write_text(md)
    return md


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(write_report(json.loads((d / "results.json").read_text()), d))
