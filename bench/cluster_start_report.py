"""What bench/cluster_start.py reports from its raw runs (the entry point's docstring describes the
output): the summary (median/min/max per case, per-round ratios, other load), the markdown tables,
the targets of issue 11 and the plots' data for bench/run.py; also the one-line description of a
start in the progress log. Pure functions of the result dict: nothing here runs anything.
"""
from __future__ import annotations

import statistics

from cluster_start_cases import PARSL_LABELS, SALLOC_ARGS

GOAL_S = 2.0  # issue 11: at most 2 s from `dragond start` to every agent ready, 4 nodes
PARSL_RATIOS = (("4x1", "1x1"), ("2x1", "1x2"))
SSH_CASES = [(1, True), (4, True), (1, False), (4, False)]  # (hosts, bashrc)
START_METRICS = ("wall_s", "launch_to_ready_s", "listening_to_ready_s", "workers_ready_s", "stop_s")


# ---------------------------------------------------------------- summary
def stats(xs: list) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None, "raw": []}
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "raw": [round(x, 4) for x in xs]}


def ssh_label(hosts: int, bashrc: bool) -> str:
    return f"ssh, {hosts} host{'s' if hosts > 1 else ''}, {'with' if bashrc else 'without'} ~/.bashrc"


def per_round_ratio(runs: list, key: str, sel_a, sel_b) -> dict:
    per = []
    for rnd in sorted({r["round"] for r in runs}):
        a = [r[key] for r in runs if r["round"] == rnd and sel_a(r) and r.get(key) is not None and "error" not in r]
        b = [r[key] for r in runs if r["round"] == rnd and sel_b(r) and r.get(key) is not None and "error" not in r]
        if a and b and b[0]:
            per.append(a[0] / b[0])
    s = stats(per)
    s["rounds"] = s.pop("raw")
    return s


def summarize(res: dict) -> dict:
    out: dict = {}
    ok = lambda r: "error" not in r  # noqa: E731
    if res["ssh"]["runs"]:
        s = {}
        for hosts, bashrc in SSH_CASES:
            rs = [r for r in res["ssh"]["runs"] if r["hosts"] == hosts and r["bashrc"] == bashrc]
            if not rs:
                continue
            key = f"{hosts}_{'bashrc' if bashrc else 'nobashrc'}"
            s[key] = {"label": ssh_label(hosts, bashrc), "runs": len(rs), "failed": len([r for r in rs if not ok(r)]),
                      **{m: stats([r.get(m) for r in rs if ok(r)]) for m in START_METRICS},
                      "ssh_true_s": stats([r["wall_s"] for r in res["ssh"].get("ssh_true", [])
                                           if r["hosts"] == hosts and r["bashrc"] == bashrc and ok(r)])}
        for bashrc in (True, False):
            k = "4_over_1_" + ("bashrc" if bashrc else "nobashrc")
            s[k] = per_round_ratio(res["ssh"]["runs"], "wall_s", lambda r, b=bashrc: r["hosts"] == 4 and r["bashrc"] == b,
                                   lambda r, b=bashrc: r["hosts"] == 1 and r["bashrc"] == b)
        for hosts in (1, 4):
            s[f"bashrc_over_nobashrc_{hosts}"] = per_round_ratio(
                res["ssh"]["runs"], "wall_s", lambda r, h=hosts: r["hosts"] == h and r["bashrc"],
                lambda r, h=hosts: r["hosts"] == h and not r["bashrc"])
        out["ssh"] = s
    if res["slurm"]["runs"]:
        s = {}
        for n in (2, 4):
            rs = [r for r in res["slurm"]["runs"] if r["nodes"] == n]
            if rs:
                s[str(n)] = {"label": f"Slurm, salloc -N{n}", "runs": len(rs),
                             "failed": len([r for r in rs if not ok(r)]),
                             **{m: stats([r.get(m) for r in rs if ok(r)]) for m in START_METRICS + ("salloc_wall_s",)}}
        s["4_over_2"] = per_round_ratio(res["slurm"]["runs"], "wall_s", lambda r: r["nodes"] == 4,
                                        lambda r: r["nodes"] == 2)
        out["slurm"] = s
    if res["parsl"]["runs"]:
        s = {}
        for c in res["config"]["parsl_configs"]:
            rs = [r for r in res["parsl"]["runs"] if r["config"] == c]
            good = [r for r in rs if ok(r)]
            per_task = lambda k, g=good: stats([1e6 * r["service_cpu_s"].get(k, 0.0) / r["tasks"] for r in g])  # noqa: E731
            s[c] = {"label": PARSL_LABELS[c], "runs": len(rs), "failed": len(rs) - len(good),
                    "tasks_per_s": stats([r["tasks_per_s"] for r in good]),
                    "client_cpu_us_per_task": stats([1e6 * r["client_cpu_s"] / r["tasks"] for r in good
                                                     if r.get("client_cpu_s") is not None]),
                    "head_cpu_us_per_task": per_task("head"), "agents_cpu_us_per_task": per_task("agents"),
                    "workers_cpu_us_per_task": per_task("workers")}
        for a, b in PARSL_RATIOS:
            if a in s and b in s:
                s[f"{a}_over_{b}"] = per_round_ratio(res["parsl"]["runs"], "tasks_per_s",
                                                     lambda r, c=a: r["config"] == c, lambda r, c=b: r["config"] == c)
        out["parsl"] = s
    ol = [o for o in res.get("other_load", []) if o.get("share") is not None]
    if ol:
        worst = max(ol, key=lambda o: o["share"])
        out["other_load"] = {"mean_share": statistics.fmean(o["share"] for o in ol), "max_share": worst["share"],
                             "max_at": f"{worst['part']} round {worst['round']}", "max_top": worst["top"]}
    return out


# ---------------------------------------------------------------- markdown, progress log
def num(x, d=2) -> str:
    """x with d decimals and thousands separators; "-" for a missing number."""
    return "-" if x is None else f"{x:,.{d}f}"


def median_range(st: dict, d=2) -> str:
    """A stats() dict as "median (min..max)"; "-" when it has no number."""
    if not st or st.get("median") is None:
        return "-"
    return f"{num(st['median'], d)} ({num(st['min'], d)}..{num(st['max'], d)})"


def describe(rec: dict) -> str:
    if "error" in rec:
        return f"FAILED: {rec['error'][:300]}"
    return (f"start {rec['wall_s']:.3f} s, launch->ready {num(rec.get('launch_to_ready_s'), 3)} s, "
            f"workers {num(rec.get('workers_ready_s'), 3)} s, stop {num(rec.get('stop_s'), 3)} s")


def table(res: dict) -> str:
    s, cfg = res["summary"], res["config"]
    L = [f"{cfg['rounds']} rounds; cases alternate in order within each round. Seconds: median (min..max). "
         f"`start`: wall time of `dragond start` until it returns (every agent ready); `launch -> ready`: "
         f"dragond.log, from the launch line to the last agent's \"ready\" line; `workers`: from the start "
         f"command to the last worker's READY in the agents' logs (dragond does not wait for workers"
         f"{'' if cfg['workers_ready'] else '; not waited for in this run: --no-workers-ready'}); "
         f"`stop`: `dragond stop`; `ssh true`: plain `ssh HOST true` to the same hosts at once, the floor under "
         f"an ssh start. 2 workers per host (one per core).", "",
         "| case | runs (failed) | start | launch -> ready | workers ready | stop | ssh true | "
         "4 vs 1 / 2 (per-round ratio of start) |",
         "|---|---|---|---|---|---|---|---|"]
    ssh = s.get("ssh", {})
    for hosts, bashrc in SSH_CASES:
        x = ssh.get(f"{hosts}_{'bashrc' if bashrc else 'nobashrc'}")
        if not x:
            continue
        r = ssh.get("4_over_1_" + ("bashrc" if bashrc else "nobashrc"), {}) if hosts == 4 else {}
        L.append(f"| {x['label']} | {x['runs']} ({x['failed']}) | {median_range(x['wall_s'])} | "
                 f"{median_range(x['launch_to_ready_s'])} | {median_range(x['workers_ready_s'])} | "
                 f"{median_range(x['stop_s'])} | {median_range(x['ssh_true_s'])} | "
                 f"{median_range(r)}{'x vs 1 host' if r.get('median') else ''} |")
    sl = s.get("slurm", {})
    for n in ("2", "4"):
        x = sl.get(n)
        if not x:
            continue
        r = sl.get("4_over_2", {}) if n == "4" else {}
        L.append(f"| Slurm, inside `salloc -N{n} {' '.join(SALLOC_ARGS)}` | {x['runs']} ({x['failed']}) | "
                 f"{median_range(x['wall_s'])} | {median_range(x['launch_to_ready_s'])} | "
                 f"{median_range(x['workers_ready_s'])} | {median_range(x['stop_s'])} | - | "
                 f"{median_range(r)}{'x vs 2 nodes' if r.get('median') else ''} |")
    p = s.get("parsl")
    if p:
        L += ["", f"No-op throughput through Parsl ({cfg['tasks']:,} python_apps submitted at once, Parsl logging off, "
              f"DragonExecutor on a head started over ssh, one fresh head per run, configurations alternating in "
              f"each round). tasks/s: median (min..max) and every round; CPU in us per task (whole client process, "
              f"DFK start and warm-up included).", "",
              "| agents | runs (failed) | tasks/s | each round | head CPU | agents CPU | workers CPU | client CPU |",
              "|---|---|---|---|---|---|---|---|"]
        for c in cfg["parsl_configs"]:
            x = p.get(c)
            if not x:
                continue
            L.append(f"| {x['label']} | {x['runs']} ({x['failed']}) | {median_range(x['tasks_per_s'], 0)} | "
                     f"{', '.join(f'{v:,.0f}' for v in x['tasks_per_s']['raw'])} | "
                     f"{num(x['head_cpu_us_per_task']['median'], 1)} | "
                     f"{num(x['agents_cpu_us_per_task']['median'], 1)} | "
                     f"{num(x['workers_cpu_us_per_task']['median'], 1)} | "
                     f"{num(x['client_cpu_us_per_task']['median'], 1)} |")
        L += ["", "| ratio (tasks/s, per round) | median (min..max) | each round |", "|---|---|---|"]
        for a, b in PARSL_RATIOS:
            r = p.get(f"{a}_over_{b}")
            if r and r.get("median") is not None:
                L.append(f"| {PARSL_LABELS[a]} / {PARSL_LABELS[b]} | {median_range(r, 3)} | "
                         f"{', '.join(f'{v:.3f}' for v in r['rounds'])} |")
    ol = s.get("other_load")
    if ol:
        L += ["", f"Other load: processes not of this run used {ol['mean_share']:.1%} of the machine's CPU per round "
              f"on average, at most {ol['max_share']:.1%} ({ol['max_at']}"
              + (f": {'; '.join(ol['max_top'])}" if ol["max_top"] else "") + ")."]
    return "\n".join(L)


# ---------------------------------------------------------------- targets, plots for bench/run.py
def targets(res: dict) -> dict:
    out = {}
    ssh, sl = res["summary"].get("ssh", {}), res["summary"].get("slurm", {})
    rows = [("ssh4_nobashrc", ssh.get("4_nobashrc"), "4 ssh hosts, ~/.bashrc skipped (dragond's own cost)"),
            ("ssh4_bashrc", ssh.get("4_bashrc"), "4 ssh hosts, root's ~/.bashrc run by every ssh (pyenv init)"),
            ("slurm4", sl.get("4"), "4-node Slurm allocation, from inside (salloc -N4)")]
    for key, x, what in rows:
        if not x:
            continue
        st = x["wall_s"]
        m = st["median"]
        out[f"cluster_start_{key}"] = {
            "target": f"dragond start to every agent ready: {what}", "goal": f"<= {GOAL_S:g} s (median)",
            "measured": "n/a" if m is None else f"{m:.2f} s (min {st['min']:.2f}, max {st['max']:.2f}, {st['n']} runs)",
            "detail": f"median of the wall time of `dragond start` until it returned, {st['n']} runs",
            "met": None if m is None else m <= GOAL_S,
            "status": "n/a" if m is None else ("PASS" if m <= GOAL_S else "MISS")}
    return out


def plots(res: dict) -> dict:
    rounds = list(range(1, res["config"]["rounds"] + 1))

    def per_round(rs):
        return [next((r.get("wall_s") for r in rs if r["round"] == i and "error" not in r), None) for i in rounds]
    series = {}
    for hosts, bashrc in SSH_CASES:
        rs = [r for r in res["ssh"]["runs"] if r["hosts"] == hosts and r["bashrc"] == bashrc]
        if rs:
            series[ssh_label(hosts, bashrc)] = per_round(rs)
    for n in (2, 4):
        rs = [r for r in res["slurm"]["runs"] if r["nodes"] == n]
        if rs:
            series[f"Slurm salloc -N{n}"] = per_round(rs)
    out = {}
    if series:
        out["start_per_round"] = {"x": rounds, "series": series, "xlabel": "round",
                                  "ylabel": "dragond start to every agent ready (s)"}
    ps = {}
    for c in res["config"]["parsl_configs"]:
        rs = [r for r in res["parsl"]["runs"] if r["config"] == c]
        if rs:
            ps[PARSL_LABELS[c]] = [next((r.get("tasks_per_s") for r in rs if r["round"] == i and "error" not in r), None)
                                   for i in rounds]
    if ps:
        out["parsl_noop_per_round"] = {"x": rounds, "series": ps, "xlabel": "round",
                                       "ylabel": "no-op tasks/s through Parsl"}
    return out
