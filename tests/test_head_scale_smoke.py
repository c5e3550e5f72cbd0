"""Smoke run of bench/head_scale.py --quick (bench/HEAD_SCALE.md): it works end to end.

Functional, not speed: the JSON has the agreed shape and positive numbers, and
every task submitted through the real dragond to the simulated agents
(dragon-agent --simulate-workers) ended exactly once, spread over all agents,
each result marked as simulated. No throughput is asserted.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import BIN_DIR, REPO, binary


@pytest.mark.timeout(240)
def test_head_scale_quick(tmp_path, head_scale_bin):
    binary("dragond"), binary("dragon-agent")  # clear failure if `make build` was not run
    out = tmp_path / "head_scale.json"
    cp = subprocess.run(
        [sys.executable, str(REPO / "bench" / "head_scale.py"), "--quick", "--json-out", str(out),
         "--bin-dir", str(BIN_DIR)],
        capture_output=True, text=True, timeout=200)
    assert cp.returncode == 0, f"head_scale.py failed:\n{cp.stderr[-4000:]}\n{cp.stdout[-2000:]}"
    last = json.loads(cp.stdout.strip().splitlines()[-1])
    data = json.loads(out.read_text())
    assert last == data

    assert data["benchmark"] == "head_scale" and data["mode"] == "quick"
    assert isinstance(data["table_md"], str) and "| agents |" in data["table_md"]
    for key, xlabel in (("sched_throughput_vs_agents", "agents"), ("head_rss_vs_queue", "queued tasks")):
        plot = data["plots"][key]
        assert plot["xlabel"] == xlabel and plot["ylabel"]
        assert plot["series"] and all(len(v) == len(plot["x"]) for v in plot["series"].values())
        assert all(v > 0 for series in plot["series"].values() for v in series)
    assert data["plots"]["sched_throughput_vs_agents"]["x"] == [1, 4, 16]

    for t in data["throughput"]:
        assert t["tasks_per_s"] > 0 and t["head_cpu_us_per_task"] > 0
        assert t["exactly_once"], t
        assert t["all_simulated"], t
        assert t["nodes_used"] == t["agents"], t  # every agent got work
        for run in t["runs"]:
            assert run["ended"] == run["tasks"] == run["accepted"]
            assert run["missing"] == 0 and run["duplicates"] == 0 and run["unknown"] == 0
            assert run["outcomes"] == {"OK": run["tasks"]}
            assert run["simulated"] == run["tasks"]

    queues = {m["queued"]: m for m in data["memory"]}
    assert set(queues) == {0, 100_000}
    assert queues[0]["rss_bytes"] > 0
    deep = queues[100_000]
    assert deep["fill"]["accepted"] == 100_000
    assert deep["rss_bytes"] > queues[0]["rss_bytes"]
    assert deep["bytes_per_task"] > 0
    assert "rss_1m_queued" in data["targets"] and "throughput_vs_agents" in data["targets"]


SIM_AGENTS_BIN = REPO / "bazel-bin" / "bench" / "sim_agents"


@pytest.mark.timeout(240)
def test_head_scale_hosted_agents(tmp_path, head_scale_bin):
    """--agent-mode hosted: all agents as streams of one sim_agents process."""
    binary("dragond"), binary("dragon-agent")
    if not SIM_AGENTS_BIN.exists() and shutil.which("bazel"):
        subprocess.run(["bazel", "build", "//bench:sim_agents"], cwd=REPO, check=False,
                       capture_output=True, timeout=600)
    if not SIM_AGENTS_BIN.exists():
        pytest.fail(f"{SIM_AGENTS_BIN} not found: run 'bazel build //bench:sim_agents'")
    cp = subprocess.run(
        [sys.executable, str(REPO / "bench" / "head_scale.py"), "--agents", "1,16", "--queues", "0",
         "--tasks", "20000", "--repeats", "1", "--agent-mode", "hosted", "--bin-dir", str(BIN_DIR)],
        capture_output=True, text=True, timeout=200)
    assert cp.returncode == 0, f"head_scale.py failed:\n{cp.stderr[-4000:]}\n{cp.stdout[-2000:]}"
    data = json.loads(cp.stdout.strip().splitlines()[-1])
    assert [t["agents"] for t in data["throughput"]] == [1, 16]
    for t in data["throughput"]:
        assert t["agent_mode"] == "hosted"
        assert t["exactly_once"] and t["all_simulated"], t
        assert t["nodes_used"] == t["agents"], t
        assert t["tasks_per_head_cpu_s"] > 0 and t["agents_cpu_us_per_task"] >= 0
    assert "throughput_vs_agents_hosted" in data["targets"]
    assert "tasks/s (hosted agents)" in data["plots"]["sched_throughput_vs_agents"]["series"]
