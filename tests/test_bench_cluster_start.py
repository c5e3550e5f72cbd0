"""Smoke run of bench/cluster_start.py --quick (issue 11's benchmark: time from `dragond start` to
every agent ready over ssh and inside Slurm allocations, Parsl no-op throughput with agents on 4
hosts next to 1 host): it works end to end on the real test beds and its JSON is complete.

Functional, not speed: every start returned with every agent ready, the logs gave the launch and
ready lines in order, every Parsl run completed its tasks, and nothing was left (processes of the
runs, namespaces). No time or throughput is asserted: benchmarks are not timed tests.

The beds are single-owner (tests/testbed_fixtures.py). When this pytest session does not hold them
yet, the script runs as a user runs it: it takes the session lock itself, brings both beds up,
measures with and without root's ~/.bashrc, and takes them down. When this session already holds
them (another module's tests brought them up), it runs on them with --use-running-beds, in the bed's
current ~/.bashrc mode only, since its own `up` would tear down the session's beds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import testbed_fixtures
from conftest import BIN_DIR, REPO, binary
from testbed_fixtures import netns_hosts, slurm_cluster  # noqa: F401  (only when this session owns the beds)

ROUNDS = 2


@pytest.mark.timeout(330)  # ~25 s of work; the rest is for waiting on another session's beds
def test_cluster_start_quick(tmp_path, request):
    binary("dragond"), binary("dragon-agent"), binary("dragonctl")  # clear failure without `make build`
    testbed_fixtures._check_machine("netns and Slurm", ["sshd", "ssh", "ssh-keygen", "slurmctld", "slurmd",
                                                        "munged", "salloc", "srun"])
    own_beds = testbed_fixtures._SESSION.holders == 0
    extra = []
    if not own_beds:
        request.getfixturevalue("netns_hosts")
        request.getfixturevalue("slurm_cluster")
        extra = ["--use-running-beds"]
    out, md = tmp_path / "cs.json", tmp_path / "cs.md"
    env = dict(os.environ, DRAGON_BIN_DIR=str(BIN_DIR))
    for var in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_HOME", "SLURM_JOB_ID"):
        env.pop(var, None)
    cp = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_start.py"), "--quick", "--json-out", str(out),
                         "--md-out", str(md), *extra], env=env, capture_output=True, text=True, timeout=320,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, f"cluster_start.py --quick exited {cp.returncode}:\n{cp.stderr[-4000:]}"
    data = json.loads(out.read_text())
    assert json.loads(cp.stdout.strip().splitlines()[-1]) == data
    assert data["benchmark"] == "cluster_start" and data["mode"] == "quick"
    assert data["config"]["rounds"] == ROUNDS and data["config"]["parsl_configs"] == ["1x1", "4x1"]
    assert data["errors"] == [] and data["leftovers"] == [] and "interrupted" not in data

    # ssh: 1 and 4 hosts, with and without ~/.bashrc when the script owned the beds
    modes = {True, False} if own_beds else {r["bashrc"] for r in data["ssh"]["runs"]}
    assert len(modes) == (2 if own_beds else 1)
    assert len(data["ssh"]["runs"]) == ROUNDS * 2 * len(modes)
    for r in data["ssh"]["runs"]:
        assert "error" not in r, r
        hosts = [f"h{i}" for i in range(1, r["hosts"] + 1)]
        assert r["hosts"] in (1, 4) and r["bashrc"] in modes
        assert f"{r['hosts']} of {r['hosts']} agent(s) ready (ssh: {', '.join(hosts)})" in r["output"]
        assert sorted(r["agents_ready"]) == hosts and sorted(r["agents_registered"]) == hosts
        assert 0 < r["launch_s"] < r["last_agent_ready_s"] <= r["wall_s"] + 0.01, r
        assert 0 < r["launch_to_ready_s"] <= r["wall_s"] + 0.01 and r["stop_s"] > 0
    for (n, rounds) in [(1, ROUNDS), (4, ROUNDS)]:
        for bashrc in modes:
            runs = [r for r in data["ssh"]["runs"] if r["hosts"] == n and r["bashrc"] == bashrc]
            assert sorted(r["round"] for r in runs) == list(range(1, rounds + 1))
            s = data["summary"]["ssh"][f"{n}_{'bashrc' if bashrc else 'nobashrc'}"]
            assert s["runs"] == ROUNDS and s["failed"] == 0
            for metric in ("wall_s", "launch_to_ready_s", "stop_s"):
                assert s[metric]["n"] == ROUNDS and s[metric]["min"] <= s[metric]["median"] <= s[metric]["max"]
    assert len(data["ssh"]["ssh_true"]) == ROUNDS * 2 * len(modes)  # the floor: plain `ssh HOST true`
    assert all("error" not in r and r["wall_s"] > 0 for r in data["ssh"]["ssh_true"]), data["ssh"]["ssh_true"]
    for bashrc in modes:
        assert len(data["summary"]["ssh"]["4_over_1_" + ("bashrc" if bashrc else "nobashrc")]["rounds"]) == ROUNDS

    # Slurm: salloc -N2 and -N4, dragond start inside
    assert len(data["slurm"]["runs"]) == ROUNDS * 2
    for r in data["slurm"]["runs"]:
        assert "error" not in r, r
        nodes = [f"n{i}" for i in range(1, r["nodes"] + 1)]
        assert r["granted"] and r["job_id"]
        assert f"{r['nodes']} of {r['nodes']} agent(s) ready (slurm: " in r["output"]
        assert sorted(r["agents_ready"]) == nodes
        assert 0 < r["launch_to_ready_s"] <= r["wall_s"] + 0.01 and r["stop_s"] > 0
        assert r["salloc_wall_s"] >= r["wall_s"]
    for n in ("2", "4"):
        s = data["summary"]["slurm"][n]
        assert s["runs"] == ROUNDS and s["failed"] == 0 and s["wall_s"]["n"] == ROUNDS
    assert len(data["summary"]["slurm"]["4_over_2"]["rounds"]) == ROUNDS

    # Parsl no-op: 1 host x 1 worker next to 4 hosts x 1 worker, every round
    assert len(data["parsl"]["runs"]) == ROUNDS * 2
    for r in data["parsl"]["runs"]:
        assert "error" not in r, r
        assert r["tasks"] == 500 and r["tasks_per_s"] > 0 and r["hosts"] in (1, 4) and r["workers_per_host"] == 1
        assert {"head", "agents", "workers"} <= set(r["service_cpu_s"]), r  # the run's processes were found
        # (their CPU may round to 0 ticks over 500 tasks)
    for c in ("1x1", "4x1"):
        s = data["summary"]["parsl"][c]
        assert s["runs"] == ROUNDS and s["failed"] == 0 and s["tasks_per_s"]["n"] == ROUNDS
    assert len(data["summary"]["parsl"]["4x1_over_1x1"]["rounds"]) == ROUNDS

    # the beds: up and down by the script itself (or left to this session)
    if own_beds:
        assert data["beds"]["netns_up_s"] and data["beds"]["netns_down_s"]
        assert "slurm_up_s" in data["beds"] and "slurm_down_s" in data["beds"]
    else:
        assert "netns_up_s" not in data["beds"]
        assert testbed_fixtures.service_processes_in_testbeds() == {}

    # whether the machine was quiet: the CPU of processes not of the run, per part and round
    assert [(o["part"], o["round"]) for o in data["other_load"]] == [
        (part, rnd) for part in ("ssh", "slurm", "parsl") for rnd in range(1, ROUNDS + 1)]
    assert all(o["share"] is not None and o["share"] >= 0 for o in data["other_load"])
    assert "Other load: " in data["table_md"]

    assert set(data["targets"]) >= {"cluster_start_slurm4"}
    for t in data["targets"].values():
        assert t["status"] in ("PASS", "MISS") and isinstance(t["met"], bool)
    assert "| Slurm, inside `salloc -N4" in data["table_md"] and "| 4 hosts x 1 worker |" in data["table_md"]
    assert md.read_text().strip() == data["table_md"].strip()
    assert data["plots"]["start_per_round"]["x"] == list(range(1, ROUNDS + 1))
