"""dragon_parsl.comm.Dictionary across four test hosts (issue 14, "a Dictionary with 100,000 keys
spread over four agents"), on the netns test bed: a real dragond in the root namespace, agents on
h1..h4 started over ssh with their pools and data planes, UCX over TCP between them
(``UCX_TLS=tcp,self UCX_NET_DEVICES=tb0``: shared/TESTBED-NETNS.md, otherwise UCX would use shared
memory between the namespaces), Python workers and Parsl; no mocks. The one-node behaviour is
tests/test_comm_dict.py; the agents' C++ is agent/dict_store_test.cc, agent_dictionary_test.cc.

The workflow is a script run inside h1's namespace (UTS name h1); its Dictionary goes through
h1's agent (its data socket named by $DRAGON_AGENT_DATA_SOCKET: every pool of the bed is in the
one /dev/shm, so "the newest agent's pool" would not be h1's), which forwards to the shard's agent.

- 100,000 keys written in batches spread over the four shards (each holds a fair share), read
  back (1,000 random spot checks, items() complete and right); apps on all four hosts read key
  ranges and write keys of their own, which the workflow checks; 64 MiB values byte for byte:
  written on h1 into its shard and read by apps on every host, written by an app into its host's
  shard and read on h1, written on h1 into another node's shard; close() frees the shards in all
  four pools; after dragond stop nothing of the service runs on any host and nothing of its pools
  is left in /dev/shm. (The put into another node's shard, the value in the Call's request, found
  the request lost when it took longer than the shard's 100 ms poll to arrive: fixed in a372c00);
- h3's agent SIGKILLed: a get or set of a key of h3's shard fails with DictionaryError naming h3
  within seconds (measured), never hangs, while the keys of the other shards still work; close()
  frees the three other shards and names h3.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import wait_for, worker_pythonpath  # noqa: F401
from testbed_fixtures import assert_no_service_left, netns_hosts, no_service_left  # noqa: F401
from test_shm_cross_node import UCX_ENV, check_no_pool_file_left, pools_of
from test_ssh_cluster import agents_in, ssh_heads, stop_and_check_nothing_left  # noqa: F401

TESTS_DIR = Path(__file__).resolve().parent
HOSTS = ["h1", "h2", "h3", "h4"]
# 100,000 small values take a 4 KiB block each (about 100 MiB a shard), the 64 MiB values a
# 128 MiB block: a lazily backed pool costs only the blocks in use.
POOL_MB = 1024
N_KEYS = 100_000
FAULT_KEYS = 4_000

# The workflow, run as a script in h1's namespace; apps are pickled by value (the workers need
# nothing of the tests). Writes a JSON summary to --out; the test judges it.
WORKFLOW = textwrap.dedent('''
    import argparse, hashlib, json, os, random, socket, sys, time
    from dragon_parsl import shm_pool_path
    from dragon_parsl.comm import Dictionary, DictionaryError


    def read_range_and_write(d, app, lo, hi, sleep_s):
        """Reads keys lo..hi-1 one at a time, writes ("app", app, k) for each and ("host", app)."""
        import socket, time
        time.sleep(sleep_s)  # the apps overlap, so the scheduler spreads them over the hosts
        wrong = [k for k in range(lo, hi) if d[k] != f"v{k}"]
        d.update({("app", app, k): f"w{k}" for k in range(lo, hi)})
        d[("host", app)] = socket.gethostname()
        return socket.gethostname(), wrong


    def digest_of(d, key, sleep_s):
        """(host, sha256 and length of the bytes at key)"""
        import hashlib, socket, time
        time.sleep(sleep_s)
        value = d[key]
        return socket.gethostname(), hashlib.sha256(value).hexdigest(), len(value)


    def write_big(d, seed, size):
        """Writes `size` random bytes into a key of this host's own shard: (host, the key)."""
        import random, socket
        host = socket.gethostname()
        key = next(("big-app", i) for i in range(1000) if d.node_of(("big-app", i)) == host)
        d[key] = random.Random(seed).randbytes(size)
        return host, key


    def agent_owned(pools):
        """{pool: whether its agent owns blocks in it}: the Dictionary's values (nothing else of
        an agent's lives in its pool)."""
        out = {}
        for path in pools:
            pool = shm_pool_path.attach(path)
            out[path] = pool.creator_pid in pool.owners()
        return out


    def main_phase(a, s):
        import parsl
        from parsl import python_app
        from parsl.config import Config
        from dragon_parsl import DragonExecutor
        executor = DragonExecutor(label="dragon", address=a.address, token=os.environ["DRAGON_TOKEN"])
        dfk = parsl.load(Config(executors=[executor], strategy="none",
                                run_dir=os.path.join(os.path.dirname(a.out), "runinfo")))
        pools = json.loads(a.pools)
        d = Dictionary(timeout=15)  # a call lost on the way fails in 15 s, not the default 30
        s["nodes"] = list(d.nodes)
        t0 = time.monotonic()
        for lo in range(0, a.keys, 10_000):
            d.update({i: f"v{i}" for i in range(lo, min(a.keys, lo + 10_000))})
        s["update_s"] = time.monotonic() - t0
        s["len"] = len(d)
        s["shards"] = d.shard_lengths()
        rng = random.Random(14)
        t0 = time.monotonic()
        s["spot_wrong"] = [k for k in rng.sample(range(a.keys), 1000) if d[k] != f"v{k}"]
        s["spot_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        items = d.items()
        s["items_s"] = time.monotonic() - t0
        s["items_len"] = len(items)
        s["items_wrong"] = sum(1 for k, v in items if v != f"v{k}")
        s["items_keys_right"] = sorted(k for k, _ in items) == list(range(a.keys))
        del items

        # Apps on every host: each reads a range and writes keys of its own.
        rw = python_app(read_range_and_write, executors=["dragon"])
        futures = [rw(d, app, app * 500, app * 500 + 500, 0.5) for app in range(16)]
        got = [f.result(timeout=120) for f in futures]
        s["app_hosts"] = sorted({h for h, _ in got})
        s["app_read_wrong"] = sum(len(w) for _, w in got)
        s["app_written_wrong"] = [app for app in range(16) for k in range(app * 500, app * 500 + 500)
                                  if d[("app", app, k)] != f"w{k}"][:10]
        s["app_host_keys"] = [d[("host", app)] == got[app][0] for app in range(16)]
        s["len_after_apps"] = len(d)

        # 64 MiB values, byte for byte. Written on h1 into h1's own shard and read by apps on every
        # host (the value crosses in the answers); written on h1 into another node's shard (the
        # value crosses in the request: recorded, see the test); written by an app into its own
        # node's shard and read here.
        big = random.Random(64).randbytes(64 << 20)
        want = hashlib.sha256(big).hexdigest()
        local_key = next(("big", i) for i in range(100) if d.node_of(("big", i)) == "h1")
        remote_key = next(("big", i) for i in range(100) if d.node_of(("big", i)) != "h1")
        s["big_remote_node"] = d.node_of(remote_key)
        d[local_key] = big
        t0 = time.monotonic()
        try:
            d[remote_key] = big
            s["big_remote_put"] = {"error": None, "s": time.monotonic() - t0}
        except DictionaryError as e:
            s["big_remote_put"] = {"error": str(e), "s": time.monotonic() - t0}
        del big
        dg = python_app(digest_of, executors=["dragon"])
        readers = [dg(d, local_key, 0.5) for _ in range(8)]
        if s["big_remote_put"]["error"] is None:
            readers += [dg(d, remote_key, 0.5) for _ in range(4)]
        reads = [f.result(timeout=120) for f in readers]
        s["big_reads"] = len(reads)
        s["big_read_hosts"] = sorted({h for h, _, _ in reads})
        s["big_read_wrong"] = [(h, n) for h, digest, n in reads if digest != want or n != 64 << 20]
        wb = python_app(write_big, executors=["dragon"])
        writer, app_key = wb(d, 65, 64 << 20).result(timeout=120)
        s["big_writer_host"], s["big_app_key_node"] = writer, d.node_of(tuple(app_key))
        s["big_from_app_right"] = d[tuple(app_key)] == random.Random(65).randbytes(64 << 20)

        s["owned_before_close"] = agent_owned(pools)
        d.close()
        s["owned_after_close"] = agent_owned(pools)
        try:
            d[0]
        except DictionaryError as e:
            s["after_close"] = str(e)
        dfk.cleanup()


    def wait_for_file(path, timeout):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise SystemExit(f"no {path} within {timeout}s")
            time.sleep(0.05)


    def timed(fn):
        t0 = time.monotonic()
        try:
            fn()
            return {"error": None, "s": time.monotonic() - t0}
        except Exception as e:  # noqa: BLE001  (the test judges the error)
            return {"error": f"{type(e).__name__}: {e}", "s": time.monotonic() - t0}


    def fault_phase(a, s):
        # The calls wait at most 20 s: a hang would show as an error after 20 s (the test asks < 10).
        d = Dictionary(timeout=20)
        s["nodes"] = list(d.nodes)
        d.update({i: f"v{i}" for i in range(a.keys)})
        by_node = {}
        for k in range(a.keys):
            by_node.setdefault(d.node_of(k), []).append(k)
        s["shards"] = d.shard_lengths()
        with open(a.out + ".ready", "w") as f:  # the test now kills the victim's agent
            json.dump(s, f)
        wait_for_file(a.out + ".go", 60)
        lost = by_node[a.victim]
        s["get_lost"] = timed(lambda: d[lost[0]])
        s["set_lost"] = timed(lambda: d.__setitem__(lost[1], "x"))
        s["len"] = timed(lambda: len(d))
        s["others"] = {}
        for node, keys in by_node.items():
            if node == a.victim:
                continue
            t0 = time.monotonic()
            right = all(d[k] == f"v{k}" for k in keys[:200])
            d[keys[0]] = "new"
            s["others"][node] = {"right": right and d[keys[0]] == "new", "s": time.monotonic() - t0}
        s["get_lost_again"] = timed(lambda: d[lost[2]])
        s["close"] = timed(d.close)
        s["owned_after_close"] = agent_owned([p for n, p in json.loads(a.pools).items() if n != a.victim])


    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=["main", "fault"], required=True)
    p.add_argument("--address", default="")
    p.add_argument("--keys", type=int, required=True)
    p.add_argument("--pools", required=True)  # JSON: the main phase a list, the fault phase {node: pool}
    p.add_argument("--victim", default="h3")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    s = {"host": socket.gethostname()}
    t_start = time.monotonic()
    (main_phase if a.phase == "main" else fault_phase)(a, s)
    s["seconds"] = time.monotonic() - t_start
    with open(a.out, "w") as f:
        json.dump(s, f)
''')


# ---------------------------------------------------------------- helpers

class DictWorkflow:
    """The workflow script running in h1's namespace (a Popen whose pid is python's own)."""

    def __init__(self, tb, head, tmp_path: Path, phase: str, keys: int, pools, timeout: float):
        d = tmp_path / f"dict-{phase}"
        d.mkdir()
        script = d / "workflow.py"
        script.write_text(WORKFLOW)
        self.out, self.log, self.timeout = d / "summary.json", d / "workflow.log", timeout
        env = dict(os.environ, DRAGON_TOKEN=head.head.token,
                   DRAGON_AGENT_DATA_SOCKET=head.nodes()["h1"]["data_socket"],
                   PYTHONPATH=str(TESTS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("DRAGON_HEAD", None)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                tb.exec_argv("h1", sys.executable, str(script), "--phase", phase, "--address", head.address,
                             "--keys", str(keys), "--pools", json.dumps(pools), "--out", str(self.out)),
                env=env, cwd=d, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def file(self, suffix: str) -> Path:
        return Path(str(self.out) + suffix)

    def wait_file(self, suffix: str, timeout: float) -> dict:
        path = self.file(suffix)
        wait_for(lambda: path.exists() or self.proc.poll() is not None, timeout, f"the workflow to write {path}")
        assert path.exists(), f"the workflow exited {self.proc.returncode}:\n{self.tail()}"
        return json.loads(path.read_text())

    def summary(self) -> dict:
        try:
            rc = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the workflow did not end within {self.timeout}s:\n{self.tail()}") from None
        assert rc == 0 and self.out.exists(), f"the workflow exited {rc}:\n{self.tail()}"
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture
def four_host_head(netns_hosts, ssh_heads, monkeypatch):
    """A head with agents on h1..h4 (pools and data planes over TCP), ready."""
    for k, v in UCX_ENV.items():
        monkeypatch.setenv(k, v)
    head = ssh_heads(HOSTS, "--agent-env", "PYTHONPATH," + ",".join(UCX_ENV), "--shm-pool-mb", str(POOL_MB))
    head.wait_ready(timeout=90)
    return head


def assert_service_gone_and_shm_clean(head, tb, pools: dict[str, str]) -> None:
    """dragond stop; nothing of the service on any host; no pool of the run (nor its data
    socket) in /dev/shm, a killed agent's included (dragond stop removes those)."""
    stop_and_check_nothing_left(head, tb)
    assert_no_service_left()
    check_no_pool_file_left(pools)


# ---------------------------------------------------------------- 100,000 keys over four agents

@pytest.mark.timeout(180)
def test_100000_keys_over_four_agents_apps_on_every_host_and_64mib_values(netns_hosts, four_host_head, tmp_path):
    tb, head = netns_hosts, four_host_head
    pools = pools_of(head)
    wf = DictWorkflow(tb, head, tmp_path, "main", N_KEYS, sorted(pools.values()), timeout=150)
    try:
        s = wf.summary()
    finally:
        wf.kill()
    print(f"\n{N_KEYS} keys over {s['nodes']}: update {s['update_s']:.1f}s, shards {s['shards']}, 1,000 single gets "
          f"{s['spot_s']:.2f}s, items() {s['items_s']:.1f}s; apps on {s['app_hosts']}; 64 MiB into "
          f"{s['big_remote_node']}'s shard: {s['big_remote_put']}, read on {s['big_read_hosts']}; whole workflow "
          f"{s['seconds']:.1f}s")
    assert s["host"] == "h1" and s["nodes"] == HOSTS
    assert s["len"] == N_KEYS and sum(s["shards"].values()) == N_KEYS
    # A fair share each: the CRC-32 spreads consecutive ints within a few percent of N/4.
    assert all(abs(n - N_KEYS / 4) < 0.05 * N_KEYS / 4 for n in s["shards"].values()), s["shards"]
    assert s["spot_wrong"] == [] and s["items_len"] == N_KEYS and s["items_wrong"] == 0 and s["items_keys_right"]
    # The apps ran on all four hosts, read their ranges right, and what they wrote is there.
    assert s["app_hosts"] == HOSTS, s["app_hosts"]
    assert s["app_read_wrong"] == 0 and s["app_written_wrong"] == [] and all(s["app_host_keys"])
    assert s["len_after_apps"] == N_KEYS + 16 * 500 + 16
    # 64 MiB values byte for byte: from h1's shard to apps on other hosts, from an app's shard to h1.
    assert s["big_read_wrong"] == [] and s["big_reads"] >= 8 and set(s["big_read_hosts"]) - {"h1"}, s
    assert s["big_writer_host"] == s["big_app_key_node"] and s["big_from_app_right"]
    # ... and written from h1 into another node's shard (the value in the request), read by apps.
    assert s["big_remote_put"]["error"] is None and s["big_reads"] == 12, s["big_remote_put"]
    # Each pool held values until close(), none after; a closed Dictionary says so.
    assert all(s["owned_before_close"].values()), s["owned_before_close"]
    assert not any(s["owned_after_close"].values()), s["owned_after_close"]
    assert "closed" in s["after_close"]
    assert_service_gone_and_shm_clean(head, tb, pools)


# ---------------------------------------------------------------- a shard's agent killed

@pytest.mark.timeout(120)
def test_a_killed_agent_fails_its_keys_naming_its_node_within_seconds_others_work(netns_hosts, four_host_head,
                                                                                 tmp_path):
    tb, head = netns_hosts, four_host_head
    pools = pools_of(head)
    wf = DictWorkflow(tb, head, tmp_path, "fault", FAULT_KEYS, pools, timeout=90)
    try:
        ready = wf.wait_file(".ready", 60)
        assert ready["nodes"] == HOSTS and all(n > 0 for n in ready["shards"].values()), ready
        (agent,) = agents_in(tb, "h3")
        os.kill(agent, signal.SIGKILL)
        wf.file(".go").write_text("")
        s = wf.summary()
    finally:
        wf.kill()
    print(f"\nh3's agent killed: get {s['get_lost']}, set {s['set_lost']}, len {s['len']}, again "
          f"{s['get_lost_again']}; other shards {s['others']}; close {s['close']}")
    for op in ("get_lost", "set_lost", "len", "get_lost_again"):
        error, seconds = s[op]["error"], s[op]["s"]
        assert error and error.startswith("DictionaryError") and "h3" in error, (op, error)
        assert seconds < 10, (op, seconds, error)
    assert set(s["others"]) == {"h1", "h2", "h4"} and all(o["right"] for o in s["others"].values()), s["others"]
    # close() frees the shards it reaches and names the one it cannot.
    assert s["close"]["error"] and "h3" in s["close"]["error"] and "1 of 4 shard(s)" in s["close"]["error"], s["close"]
    assert not any(s["owned_after_close"].values()), s["owned_after_close"]
    assert_service_gone_and_shm_clean(head, tb, pools)
