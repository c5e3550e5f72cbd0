"""Dictionary operations per second on one node (issue 14), for bench/comm_bench.py: dragon_parsl.comm's
Dictionary next to ``multiprocessing.Manager().dict()`` (the standard shared dict) and dragonhpc's DDict.

The process layout is the same for the three: one client process doing one operation at a time, the
mapping served by another process (the dragon-agent's shard in its pool; the Manager's server
process; DDict's manager process). Operations, each timed over the whole loop:

  set  int    d[i] = i for n_small keys, one at a time: sets/s (each loop stops after cap_s seconds:
              its rate is then over the operations done; DDict needs that on a loaded machine)
  get  int    d[i] for the same keys: gets/s
  update 10k  10,000 (int, int) items at once, update_reps times: items/s (Dictionary.update: one
              request per shard; Manager: dict.update, one round trip; DDict has no update(): its
              batched write, start_batch_put / d[k] = v ... / end_batch_put)
  get 1 MiB   d[k] of a 1 MiB bytes value, n_big times: gets/s (and GB/s)

dragon_parsl's Dictionary runs against a private dragond with one agent (dragon_parsl.local_head,
1 worker, its pool and data plane; stopped at the end). One node: every key is in this node's shard,
so a call is one framed request and reply over the agent's Unix socket (on a connection the thread
keeps) and the shard's work; a remote shard adds a UCX round trip (tests/test_comm_dict_cluster.py
measures that on the test bed). DDict runs
in a child under dragonhpc's launcher (``dragon --single-node-override``), once per round, killed
after ``ddict_timeout_s``; if it does not run, the reason is recorded.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
# cap_s: the most any one loop runs (its rate is then over the operations done); ddict_timeout_s: the
# most a DDict round (its launcher and runtime starting, the four loops, stopping) may take.
QUICK = dict(n_small=2_000, update_items=10_000, update_reps=2, n_big=50, cap_s=5, ddict_timeout_s=60)
FULL = dict(n_small=20_000, update_items=10_000, update_reps=10, n_big=500, cap_s=10, ddict_timeout_s=90)
IMPLS = ("comm", "mp", "ddict")
IMPL_NAMES = {"comm": "dragon_parsl.comm.Dictionary", "mp": "multiprocessing.Manager().dict()",
              "ddict": "dragonhpc DDict"}
# (key, label, metric)
OPS = (("set_int", "set of an int, one at a time: ops/s", "ops_per_s"),
       ("get_int", "get of an int, one at a time: ops/s", "ops_per_s"),
       ("update_10k", "update of 10,000 int items, batched: items/s", "items_per_s"),
       ("get_1MiB", "get of a 1 MiB value: ops/s", "ops_per_s"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the operations (any mapping)
def run_ops(d, cfg: dict, batched_update) -> dict:
    """The four measurements on mapping `d`; `batched_update(d, items)` writes a dict at once. Each
    loop stops early after cap_s seconds (a slow implementation on a loaded machine): its rate is
    over the operations done."""
    n, cap, pc = cfg["n_small"], cfg["cap_s"], time.perf_counter
    out = {}
    t = pc()
    done = 0
    while done < n and (done % 100 or pc() - t < cap):
        d[done] = done
        done += 1
    out["set_int"] = {"ops": done, "seconds": pc() - t}
    t = pc()
    for i in range(done):
        if d[i] != i:
            raise RuntimeError(f"key {i}: {d[i]!r}")
        if i % 100 == 99 and pc() - t > cap:
            done = i + 1
            break
    out["get_int"] = {"ops": done, "seconds": pc() - t}
    items = cfg["update_items"]
    t = pc()
    reps = 0
    while reps < cfg["update_reps"] and pc() - t < cap:
        base = (reps + 1) * 1_000_000
        batched_update(d, {base + i: i for i in range(items)})
        reps += 1
    out["update_10k"] = {"items": items * reps, "seconds": pc() - t}
    big = bytes(range(256)) * (MIB // 256)
    d["big"] = big
    if d["big"] != big:
        raise RuntimeError("the 1 MiB value read back differs")
    t = pc()
    done = 0
    while done < cfg["n_big"] and pc() - t < cap:
        v = d["big"]
        done += 1
    dt = pc() - t
    if len(v) != MIB:
        raise RuntimeError(f"1 MiB value read as {len(v)} bytes")
    out["get_1MiB"] = {"ops": done, "seconds": dt, "gb_per_s": done * MIB / dt / 1e9}
    for key, _, metric in OPS:
        r = out[key]
        r[metric] = (r.get("ops") or r.get("items")) / r["seconds"]
    return out


def _dict_update(d, items: dict) -> None:
    d.update(items)


# ---------------------------------------------------------------- dragon_parsl.comm.Dictionary
def _agent_data_socket(dragond_pid: int, timeout: float) -> str:
    """The data socket of the one agent under `dragond_pid` (beside its pool, named by its pid)."""
    import liveness  # bench/liveness.py
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, (_, cmd) in liveness.descendants(dragond_pid).items():
            if "dragon-agent" in cmd:
                path = f"/dev/shm/dragon-pool-{os.geteuid()}-{socket.gethostname()}-{pid}.sock"
                if os.path.exists(path):
                    return path
        time.sleep(0.1)
    raise RuntimeError(f"no dragon-agent with a data socket under dragond {dragond_pid} within {timeout:g} s")


def measure_comm(cfg: dict) -> dict:
    from dragon_parsl.comm_dict import Dictionary
    from dragon_parsl.local_head import LocalHead, find_binary
    bin_dir = REPO / "build-out" / "bin"
    dragond = find_binary("dragond", str(bin_dir / "dragond") if (bin_dir / "dragond").exists() else None)
    run_dir = Path(tempfile.mkdtemp(prefix="comm-dict-bench-"))
    head = LocalHead(run_dir / "run", dragond, workers=1)
    try:
        head.start(timeout=60)
        path = _agent_data_socket(head.proc.pid, 60)
        old = os.environ.get("DRAGON_AGENT_DATA_SOCKET")
        os.environ["DRAGON_AGENT_DATA_SOCKET"] = path
        try:
            d = Dictionary()
        finally:
            if old is None:
                os.environ.pop("DRAGON_AGENT_DATA_SOCKET")
            else:
                os.environ["DRAGON_AGENT_DATA_SOCKET"] = old
        try:
            return run_ops(d, cfg, _dict_update)
        finally:
            d.close()
    finally:
        head.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- multiprocessing.Manager().dict()
def measure_mp(cfg: dict) -> dict:
    with multiprocessing.get_context("fork").Manager() as manager:
        return run_ops(manager.dict(), cfg, _dict_update)


# ---------------------------------------------------------------- dragonhpc's DDict
def _ddict_batched_update(d, items: dict) -> None:
    d.start_batch_put()
    for k, v in items.items():
        d[k] = v
    d.end_batch_put()


def ddict_child(cfg_json: str) -> int:
    """Runs under `dragon --single-node-override`: one manager on this node, the ops, a JSON line."""
    from dragon.data.ddict import DDict
    cfg = json.loads(cfg_json)
    t = time.perf_counter()
    d = DDict(1, 1, 1024 * MIB)
    created = time.perf_counter() - t
    try:
        out = run_ops(d, cfg, _ddict_batched_update)
    finally:
        d.destroy()
    print("DDICT_RESULT " + json.dumps(dict(out, create_s=created)), flush=True)
    return 0


def _shm_names() -> set:
    return set(os.listdir("/dev/shm"))


def measure_ddict(cfg: dict) -> dict:
    launcher = shutil.which("dragon")
    if launcher is None:
        raise RuntimeError("dragonhpc is not installed (no `dragon` launcher on PATH)")
    argv = [launcher, "--single-node-override", str(Path(__file__).resolve()), "--ddict-child",
            json.dumps({k: cfg[k] for k in QUICK})]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent)]
                                                      + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                         else [])))
    shm_before = _shm_names()
    # Its own process group: its runtime's processes are all killed (by the group) if it hangs. Not
    # its own session: started with setsid (start_new_session) its launcher hung every time here.
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                process_group=0, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=cfg["ddict_timeout_s"])
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            hung = True
        out.seek(0)
        output = out.read()
    # A killed runtime leaves its logging pools (DD<n>log_0D/M, 1 GiB + 80 MB) in /dev/shm.
    for name in _shm_names() - shm_before:
        if name.startswith("DD") and "log_" in name:
            os.unlink(os.path.join("/dev/shm", name))
    if hung:
        raise RuntimeError(f"`dragon --single-node-override` did not finish within {cfg['ddict_timeout_s']} s "
                           f"(killed); its last output: {output[-500:]!r}")
    for line in output.splitlines():
        if line.startswith("DDICT_RESULT "):
            return json.loads(line[len("DDICT_RESULT "):])
    raise RuntimeError(f"`dragon --single-node-override` exited {proc.returncode} without a result: "
                       f"{output[-800:]!r}")


MEASURE = {"comm": measure_comm, "mp": measure_mp, "ddict": measure_ddict}


# ---------------------------------------------------------------- rounds, summary, table
def run(full: bool, rounds: int) -> dict:
    """Every implementation once per round (the order rotated from round to round)."""
    cfg = dict(FULL if full else QUICK, rounds=rounds)
    runs = []
    for rnd in range(1, rounds + 1):
        k = (rnd - 1) % len(IMPLS)
        for impl in IMPLS[k:] + IMPLS[:k]:
            t = time.perf_counter()
            try:
                r = MEASURE[impl](cfg)
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                r = {"error": f"{type(e).__name__}: {e}"[-1500:]}
            r.update(impl=impl, round=rnd, process_s=time.perf_counter() - t)
            runs.append(r)
            log(f"round {rnd}: dictionary {impl}: " + (f"ERROR {r['error'][:300]}" if "error" in r else
                ", ".join(f"{key} {r[key][metric]:,.0f}" for key, _, metric in OPS)) + f" [{r['process_s']:.1f} s]")
    summary = summarize(runs)
    rat = ratios(summary)
    return {"settings": cfg, "runs": runs, "summary": summary, "ratios": rat,
            "ddict": _ddict_status(runs), "table_md": table(summary, rat, cfg)}


def _median(xs: list):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def summarize(runs: list) -> dict:
    out: dict = {}
    for key, _, metric in OPS:
        out[key] = {}
        for impl in IMPLS:
            ok = [r[key] for r in runs if r["impl"] == impl and "error" not in r]
            if not ok:
                errs = [r["error"] for r in runs if r["impl"] == impl and "error" in r]
                out[key][impl] = {"error": errs[0][:300] if errs else "not run"}
                continue
            out[key][impl] = {metric: _median([r[metric] for r in ok]), "rounds": len(ok)}
            if key == "get_1MiB":
                out[key][impl]["gb_per_s"] = _median([r["gb_per_s"] for r in ok])
    return out


def ratios(summary: dict) -> dict:
    out = {}
    for key, _, metric in OPS:
        c = summary[key]["comm"].get(metric)
        for other in ("mp", "ddict"):
            o = summary[key][other].get(metric)
            out[f"{key}_{metric}_comm_over_{other}"] = c / o if c and o else None
    return out


def _ddict_status(runs: list) -> dict:
    mine = [r for r in runs if r["impl"] == "ddict"]
    if mine and all("error" not in r for r in mine):
        return {"status": "ran", "create_s": [r.get("create_s") for r in mine]}
    errs = [r["error"] for r in mine if "error" in r]
    return {"status": f"not run ({len(errs)} of {len(mine)} rounds failed): " + (errs[0] if errs else "")}


def _fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(summary: dict, rat: dict, cfg: dict) -> str:
    L = [f"Dictionary on one node: {cfg['rounds']} round(s), medians; one client process, one operation at a "
         f"time (update: batched); sets/gets of {cfg['n_small']:,} int keys, {cfg['update_reps']} updates of "
         f"{cfg['update_items']:,} items, {cfg['n_big']} gets of a 1 MiB value. Higher is better.",
         "",
         "| operation | dragon_parsl.comm.Dictionary | Manager().dict() | dragonhpc DDict | comm / Manager | comm / DDict |",
         "|---|---:|---:|---:|---:|---:|"]
    for key, label, metric in OPS:
        cells = []
        for impl in IMPLS:
            v = summary[key][impl]
            cells.append("error" if "error" in v else _fmt(v.get(metric)))
        L.append(f"| {label} | {' | '.join(cells)} | {_fmt(rat[f'{key}_{metric}_comm_over_mp'], 2)} | "
                 f"{_fmt(rat[f'{key}_{metric}_comm_over_ddict'], 2)} |")
    L.append("")
    for impl in IMPLS:
        errs = {summary[key][impl]["error"] for key, _, _ in OPS if "error" in summary[key][impl]}
        for e in errs:
            L.append(f"- {IMPL_NAMES[impl]}: {e}")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ddict-child":
        sys.exit(ddict_child(sys.argv[2]))
    full = "--full" in sys.argv
    result = run(full, 3 if full else 1)
    print(result["table_md"], file=sys.stderr)
    print(json.dumps(result))
