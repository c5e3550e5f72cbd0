#!/usr/bin/env python3
"""The channels of issue 14 next to ucx_perftest, within a node and between two hosts.

    python bench/channel_bench.py --quick --out channel.json   # a few seconds each part
    python bench/channel_bench.py --full  --out channel.json   # 3 rounds each, medians

Issue 14, "Benchmarks": "Channel bandwidth and latency within a node next to memcpy and ucx_perftest
(posix), and between two test hosts next to ucx_perftest over the same link: goal at least 0.7x
ucx_perftest's bandwidth at 1 MiB and a small-message round trip within 2x of it."

  within a node   bazel-bin/common/shm_channel_bench --perftest: ShmChannel (common/shm_channel.h)
                  between two processes on a pool in /dev/shm: 1 MiB messages one way (copied out
                  by the receiver, and taken by reference), the 8 B round trip p50/p99, memcpy in
                  cache and out of it, round-trip floors (futex, spin), the round trip's share with
                  both processes on one CPU and its p50 with them apart, and ucx_perftest tag_bw /
                  tag_lat with UCX_TLS=posix,self on 127.0.0.1.
  between hosts   bazel-bin/common/ucx_node_bench --perftest between hosts h1 and h2 of the netns
                  test bed (tests/testbed/netns.sh: network namespaces on a bridge, one veth each):
                  the measuring side in h2, the serving side (and ucx_perftest's server) in h1
                  through --peer_cmd="ip netns exec tb-h1", UCX_TLS=tcp,self, UCX_NET_DEVICES=tb0.
                  UcxNode Send and Get of 1 MiB and the 8 B round trip, next to ucx_perftest
                  tag_bw, ucp_get and tag_lat (UCX's default settings). --full then runs the round
                  trip again with UcxNodeOptions::busy_poll at 50 and 1000 us (default 200 us), the
                  time a waiting caller spins before it sleeps. The bytes counted on h1's tb0 show the traffic
                  crossed the veth (not /dev/shm). The bed is brought up and taken down here
                  (try/finally, also on SIGTERM), under the test beds' session lock
                  (/run/lock/dragon-testbeds.session, as tests/testbed_fixtures.py takes it);
                  --use-running-bed runs on a bed the caller holds. Without root or `ip netns`,
                  or with the lock held past --lock-wait, this part is reported skipped, with why.

Ratios are medians of the per-round ratios (each round measures both sides back to back).
Targets: bandwidth at 1 MiB >= 0.7x ucx_perftest's (ShmChannel vs tag_bw posix; UcxNode Send vs
tag_bw tcp; UcxNode Get vs ucp_get tcp) and the 8 B round trip <= 2x ucx_perftest's (tag_lat's
half round trip, doubled). The binaries are not built here: `bazel build //common:shm_channel_bench
//common:ucx_node_bench`.

The last stdout line is one JSON object (also written to --out / --json-out): settings, machine,
runs, summary, targets, table_md, errors, for bench/run.py (hook `channel`).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NETNS_SH = REPO / "tests" / "testbed" / "netns.sh"
SESSION_LOCK = Path("/run/lock/dragon-testbeds.session")  # = tests/testbed_fixtures.py's
SERVER_HOST, CLIENT_HOST = "h1", "h2"                     # netns.sh: namespace tb-hN, 10.201.0.N on tb0
SERVER_IP, TEST_IF, NS_PREFIX = "10.201.0.1", "tb0", "tb-"

QUICK = dict(rounds=1, iters=200, lat_iters=2000, lock_wait=10, sweep=False)
FULL = dict(rounds=3, iters=1000, lat_iters=10000, lock_wait=900, sweep=True)
BW_GOAL, RTT_GOAL = 0.7, 2.0


def log(msg: str) -> None:
    print(f"channel_bench: {msg}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")  # unwinds through the finally that takes the bed down


def binary(name: str) -> Path:
    path = REPO / "bazel-bin" / "common" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{path} not found: run 'bazel build //common:shm_channel_bench "
                                f"//common:ucx_node_bench' (this script builds nothing)")
    return path


def run_json(argv: list, env: dict | None = None, timeout: float = 300) -> dict:
    """Runs a bench binary; its last stdout line is its JSON object."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM first: shm_channel_bench then removes its pool and child (SIGKILL would leave them)
        proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        name = Path(argv[0]).name if argv[0] != "ip" else Path(argv[4]).name
        raise RuntimeError(f"{name} exited {proc.returncode}: {(stderr or stdout).strip()[-600:]}")
    data = json.loads(lines[-1])
    data["wall_s"] = round(time.monotonic() - t0, 2)
    return data


# ---------------------------------------------------------------- within a node
def in_node_round(cfg: dict) -> dict:
    return run_json([str(binary("shm_channel_bench")), "--perftest", f"--iters={cfg['iters']}",
                     f"--lat_iters={cfg['lat_iters']}"])


# ---------------------------------------------------------------- between two hosts
def cross_host_unavailable() -> str | None:
    """Why this machine cannot make the netns test bed (None: it can)."""
    if os.geteuid() != 0:
        return "not root (network namespaces need root)"
    if shutil.which("ip") is None:
        return "'ip' (iproute2) not found"
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        return f"'ip netns list' fails: {cp.stderr.strip()}"
    for tool in ("unshare", "flock", "ucx_perftest"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not Path("/usr/sbin/sshd").exists():
        return "/usr/sbin/sshd not found (netns.sh starts one per host; deploy/install-deps.sh installs it)"
    return None


def take_session_lock(wait_s: float) -> int | None:
    """The test beds' session lock (a flock), or None if another session held it past wait_s."""
    SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.5)


def netns_script(*args: str) -> float:
    """netns.sh up/down with its default names (the caller's TB_* settings dropped), output to a
    file (never a pipe: the sshds it starts must not hold ours); returns the seconds it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TB_")}
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.monotonic()
        rc = subprocess.run(["bash", str(NETNS_SH), *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, timeout=180, start_new_session=True).returncode
        out.seek(0)
        if rc != 0:
            raise RuntimeError(f"netns.sh {' '.join(args)} exited {rc}: {out.read().strip()[-800:]}")
    return time.monotonic() - t0


def rx_bytes(host: str) -> int:
    cp = subprocess.run(["ip", "netns", "exec", NS_PREFIX + host, "cat",
                         f"/sys/class/net/{TEST_IF}/statistics/rx_bytes"], capture_output=True, text=True, timeout=10)
    return int(cp.stdout.strip() or 0)


def cross_host_round(cfg: dict) -> dict:
    env = dict(os.environ, UCX_NET_DEVICES=TEST_IF)
    before = rx_bytes(SERVER_HOST)
    data = run_json(["ip", "netns", "exec", NS_PREFIX + CLIENT_HOST, str(binary("ucx_node_bench")),
                     "--tls=tcp,self", f"--peer_cmd=ip netns exec {NS_PREFIX}{SERVER_HOST}", "--perftest",
                     f"--perftest_host={SERVER_IP}", f"--iters={cfg['iters']}", f"--lat_iters={cfg['lat_iters']}"],
                    env=env)
    data["server_tb0_rx_bytes"] = rx_bytes(SERVER_HOST) - before
    return data


BUSY_POLL_SWEEP_US = (50, 1000)  # UcxNodeOptions::busy_poll; the rounds above run its default, 200 us


def busy_poll_sweep(cfg: dict, part: dict) -> None:
    """The cross-host round trip with a caller that spins longer before it sleeps (no ucx_perftest):
    how much of the gap to ucx_perftest's busy-polling round trip is UcxNode's hand-off to its
    progress thread once busy_poll runs out."""
    env = dict(os.environ, UCX_NET_DEVICES=TEST_IF)
    for us in BUSY_POLL_SWEEP_US:
        data = run_json(["ip", "netns", "exec", NS_PREFIX + CLIENT_HOST, str(binary("ucx_node_bench")),
                         "--tls=tcp,self", f"--peer_cmd=ip netns exec {NS_PREFIX}{SERVER_HOST}",
                         f"--busy_poll_us={us}", "--iters=100", f"--lat_iters={cfg['lat_iters']}"], env=env)
        row = {k: data.get(k) for k in ("rtt_us_p50", "rtt_us_p99", "switches_per_rtt", "send_mbps", "get_mbps")}
        part["busy_poll_sweep"].append(dict(row, busy_poll_us=us))
        log(f"between hosts, busy_poll {us} us: " + ", ".join(f"{k} {v}" for k, v in row.items()))


def cross_host_rounds(cfg: dict, part: dict) -> None:
    run_rounds(part, cfg, cross_host_round, "between hosts")
    if cfg["sweep"]:
        busy_poll_sweep(cfg, part)


def cross_host(cfg: dict, result: dict) -> None:
    """Every cross-host round, with the bed up (brought up and down here unless --use-running-bed)."""
    part = result["cross_host"]
    why = cross_host_unavailable()
    if why:
        part["status"] = f"skipped: {why}"
        return
    if cfg["use_running_bed"]:
        if not Path(f"/run/netns/{NS_PREFIX}{SERVER_HOST}").exists():
            raise RuntimeError("--use-running-bed: the netns test bed is not up")
        cross_host_rounds(cfg, part)
        return
    t0 = time.monotonic()
    lock = take_session_lock(cfg["lock_wait"])
    part["lock_wait_s"] = round(time.monotonic() - t0, 1)  # another session's bed: the load it left counts
    if lock is None:
        part["status"] = (f"skipped: another test session held {SESSION_LOCK} for {cfg['lock_wait']:.0f} s "
                          "(the test beds are single-owner)")
        return
    try:
        try:
            part["bed_up_s"] = round(netns_script("up"), 2)
            cross_host_rounds(cfg, part)
        finally:
            part["bed_down_s"] = round(netns_script("down"), 2)
    finally:
        os.close(lock)


def run_rounds(part: dict, cfg: dict, one_round, label: str) -> None:
    for rnd in range(1, cfg["rounds"] + 1):
        data = one_round(cfg)
        data["round"] = rnd
        data["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        part["runs"].append(data)
        log(f"{label}, round {rnd}: " + ", ".join(f"{k} {data[k]}" for k in part["headline"] if k in data))
    part["status"] = "ok"


# ---------------------------------------------------------------- summary
def median_of(runs: list, key: str):
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def summarize(part: dict, keys: tuple) -> dict:
    return {k: median_of(part["runs"], k) for k in keys if median_of(part["runs"], k) is not None}


IN_NODE_KEYS = ("send_mbps", "send_by_ref_mbps", "rtt_us_p50", "rtt_us_p99", "futex_rtt_us_p50", "spin_rtt_us_p50",
                "send_receive_local_us", "rtt_same_cpu_share", "rtt_apart_us_p50", "rtt_apart_vs_perftest",
                "memcpy_cached_mbps", "memcpy_large_mbps", "perftest_tag_bw_mbps", "perftest_rtt_us_p50",
                "send_vs_perftest", "send_by_ref_vs_perftest", "rtt_vs_perftest", "send_vs_memcpy_cached",
                "send_vs_memcpy_large")
CROSS_KEYS = ("send_mbps", "get_mbps", "send_mbps_threads", "get_mbps_threads", "rtt_us_p50", "rtt_us_p99",
              "switches_per_send", "switches_per_rtt", "perftest_tag_bw_mbps", "perftest_ucp_get_mbps",
              "perftest_rtt_us_p50", "send_vs_perftest", "get_vs_perftest_ucp_get", "get_vs_perftest",
              "rtt_vs_perftest", "server_tb0_rx_bytes")


def targets(summary: dict) -> list:
    rows = []

    def add(name, goal, key, part, compare, detail):
        value = summary.get(part, {}).get(key)
        status = "n/a" if value is None else ("PASS" if compare(value) else "MISS")
        rows.append({"issue": 14, "target": name, "goal": goal, "measured": value, "status": status,
                     "detail": detail})

    s_in, s_x = summary.get("in_node", {}), summary.get("cross_host", {})
    add("ShmChannel 1 MiB bandwidth vs ucx_perftest tag_bw (posix, within a node)", f">= {BW_GOAL}x",
        "send_vs_perftest", "in_node", lambda v: v >= BW_GOAL,
        f"median of per-round ratios; {fmt(s_in.get('send_mbps'))} vs {fmt(s_in.get('perftest_tag_bw_mbps'))} MB/s")
    add("ShmChannel 8 B round trip vs ucx_perftest tag_lat x2 (posix, within a node)", f"<= {RTT_GOAL}x",
        "rtt_vs_perftest", "in_node", lambda v: v <= RTT_GOAL,
        f"p50 {fmt(s_in.get('rtt_us_p50'), 2)} vs {fmt(s_in.get('perftest_rtt_us_p50'), 2)} us; futex floor "
        f"{fmt(s_in.get('futex_rtt_us_p50'), 2)} us, spin floor {fmt(s_in.get('spin_rtt_us_p50'), 2)} us")
    add("UcxNode Send 1 MiB vs ucx_perftest tag_bw (tcp, two hosts)", f">= {BW_GOAL}x", "send_vs_perftest",
        "cross_host", lambda v: v >= BW_GOAL,
        f"{fmt(s_x.get('send_mbps'))} vs {fmt(s_x.get('perftest_tag_bw_mbps'))} MB/s")
    add("UcxNode Get 1 MiB vs ucx_perftest ucp_get (tcp, two hosts)", f">= {BW_GOAL}x", "get_vs_perftest_ucp_get",
        "cross_host", lambda v: v >= BW_GOAL,
        f"{fmt(s_x.get('get_mbps'))} vs {fmt(s_x.get('perftest_ucp_get_mbps'))} MB/s; vs tag_bw "
        f"{fmt(s_x.get('get_vs_perftest'), 2)}x")
    add("UcxNode 8 B round trip vs ucx_perftest tag_lat x2 (tcp, two hosts)", f"<= {RTT_GOAL}x",
        "rtt_vs_perftest", "cross_host", lambda v: v <= RTT_GOAL,
        f"p50 {fmt(s_x.get('rtt_us_p50'), 1)} vs {fmt(s_x.get('perftest_rtt_us_p50'), 1)} us")
    return rows


def fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(result: dict) -> str:
    s = result["summary"]
    i, x = s.get("in_node", {}), s.get("cross_host", {})
    L = [f"Medians of {result['settings']['rounds']} round(s); 1 MiB messages, 8 B round trips; MB/s = 2^20 B/s.", ""]
    L += ["| within a node (two processes) | ShmChannel | ucx_perftest posix | ratio | memcpy in cache | "
          "memcpy 4x LLC |", "|---|---|---|---|---|---|"]
    if result["in_node"]["status"] == "ok":
        L.append(f"| bandwidth, copied out (MB/s) | {fmt(i.get('send_mbps'))} | {fmt(i.get('perftest_tag_bw_mbps'))} "
                 f"| {fmt(i.get('send_vs_perftest'), 2)}x | {fmt(i.get('memcpy_cached_mbps'))} | "
                 f"{fmt(i.get('memcpy_large_mbps'))} |")
        L.append(f"| bandwidth, by reference (MB/s) | {fmt(i.get('send_by_ref_mbps'))} | | "
                 f"{fmt(i.get('send_by_ref_vs_perftest'), 2)}x | | |")
        L.append(f"| round trip p50 / p99 (us) | {fmt(i.get('rtt_us_p50'), 2)} / {fmt(i.get('rtt_us_p99'), 2)} | "
                 f"{fmt(i.get('perftest_rtt_us_p50'), 2)} | {fmt(i.get('rtt_vs_perftest'), 1)}x | floors: futex "
                 f"{fmt(i.get('futex_rtt_us_p50'), 2)} | spin {fmt(i.get('spin_rtt_us_p50'), 2)} |")
        L.append(f"| round trip p50 with the two processes on different CPUs (us; "
                 f"{fmt(100 * (1 - i.get('rtt_same_cpu_share', 1)))}% of round trips) | "
                 f"{fmt(i.get('rtt_apart_us_p50'), 2)} | | {fmt(i.get('rtt_apart_vs_perftest'), 1)}"
                 f"{'x' if 'rtt_apart_vs_perftest' in i else ''} | | |")
        L.append(f"| one 8 B Send + ReceiveInto in one process, no wait (us) | "
                 f"{fmt(i.get('send_receive_local_us'), 2)} | | | | |")
    else:
        L.append(f"| {result['in_node']['status']} | | | | | |")
    L += ["", "| between two hosts (netns, veth, tcp) | UcxNode | ucx_perftest | ratio |", "|---|---|---|---|"]
    if result["cross_host"]["status"] == "ok":
        L.append(f"| Send bandwidth (MB/s) | {fmt(x.get('send_mbps'))} | {fmt(x.get('perftest_tag_bw_mbps'))} (tag_bw) "
                 f"| {fmt(x.get('send_vs_perftest'), 2)}x |")
        L.append(f"| Get bandwidth (MB/s) | {fmt(x.get('get_mbps'))} | {fmt(x.get('perftest_ucp_get_mbps'))} (ucp_get) "
                 f"| {fmt(x.get('get_vs_perftest_ucp_get'), 2)}x |")
        L.append(f"| Send / Get, 4 callers (MB/s) | {fmt(x.get('send_mbps_threads'))} / {fmt(x.get('get_mbps_threads'))} "
                 f"| | |")
        L.append(f"| round trip p50 / p99 (us) | {fmt(x.get('rtt_us_p50'), 1)} / {fmt(x.get('rtt_us_p99'), 1)} | "
                 f"{fmt(x.get('perftest_rtt_us_p50'), 1)} (tag_lat x2) | {fmt(x.get('rtt_vs_perftest'), 2)}x |")
        L.append(f"| bytes received on h1's tb0 per round | {fmt(x.get('server_tb0_rx_bytes'))} | | |")
        for row in result["cross_host"].get("busy_poll_sweep", []):
            L.append(f"| round trip p50 / p99 (us), busy_poll {row['busy_poll_us']} us (one run) | "
                     f"{fmt(row.get('rtt_us_p50'), 1)} / {fmt(row.get('rtt_us_p99'), 1)} | | "
                     f"{fmt(row['rtt_us_p50'] / x['perftest_rtt_us_p50'] if row.get('rtt_us_p50') and x.get('perftest_rtt_us_p50') else None, 2)}x |")
    else:
        L.append(f"| {result['cross_host']['status']} | | | |")
    L += ["", "| target (issue 14) | goal | measured | status |", "|---|---|---|---|"]
    for t in result["targets"]:
        m = t["measured"]
        L.append(f"| {t['target']} | {t['goal']} | {'-' if m is None else f'{m:.2f}x'} | {t['status']} |")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round, small counts (default)")
    mode.add_argument("--full", action="store_true", help="3 rounds, 1000 messages, 10,000 round trips")
    p.add_argument("--out", "--json-out", dest="out", help="also write the JSON object here")
    p.add_argument("--rounds", type=int)
    p.add_argument("--only", choices=("in_node", "cross_host"), help="this part only")
    p.add_argument("--use-running-bed", action="store_true",
                   help="the netns test bed is up and held by the caller: run on it, neither up nor down")
    p.add_argument("--lock-wait", type=float, help="seconds to wait for the test beds' session lock "
                   "(default 10 quick, 900 full); then the cross-host part is skipped")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = dict(FULL if args.full else QUICK)
    cfg["rounds"] = args.rounds or cfg["rounds"]
    cfg["lock_wait"] = cfg["lock_wait"] if args.lock_wait is None else args.lock_wait
    cfg["use_running_bed"] = args.use_running_bed
    signal.signal(signal.SIGTERM, on_sigterm)
    result = {
        "benchmark": "channel", "mode": "full" if args.full else "quick",
        "settings": {**cfg, "size": 1 << 20, "command": " ".join(["python", "bench/channel_bench.py",
                                                                 *(argv if argv is not None else sys.argv[1:])])},
        "machine": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                    "cores": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "in_node": {"status": "not run", "runs": [], "headline": ["send_mbps", "perftest_tag_bw_mbps", "rtt_us_p50",
                                                                  "perftest_rtt_us_p50"]},
        "cross_host": {"status": "not run", "runs": [], "busy_poll_sweep": [], "headline": ["send_mbps", "get_mbps", "perftest_tag_bw_mbps",
                                                                     "perftest_ucp_get_mbps", "rtt_us_p50",
                                                                     "perftest_rtt_us_p50", "server_tb0_rx_bytes"]},
        "errors": []}
    parts = [("in_node", lambda: run_rounds(result["in_node"], cfg, in_node_round, "within a node")),
             ("cross_host", lambda: cross_host(cfg, result))]
    for name, run in parts:
        if args.only and name != args.only:
            continue
        try:
            run()
        except Interrupted as e:
            result[name]["status"] = f"interrupted ({e})"
            result["errors"].append(f"{name}: interrupted ({e})")
            break
        except Exception as e:  # noqa: BLE001 - reported in the JSON, the other part still runs
            result[name]["status"] = f"failed: {str(e)[:400]}"
            result["errors"].append(f"{name}: {e}")
            log(f"{name} failed: {e}")
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = {"in_node": summarize(result["in_node"], IN_NODE_KEYS),
                         "cross_host": summarize(result["cross_host"], CROSS_KEYS)}
    result["targets"] = targets(result["summary"])
    result["table_md"] = table(result)
    print(result["table_md"], file=sys.stderr)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(text)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
