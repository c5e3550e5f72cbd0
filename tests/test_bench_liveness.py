"""Smoke run of bench/liveness.py --quick (issue 10's detection benchmark): it works end to end.

Functional, not speed: every try found the head's "lost" line for the agent it signalled, the
restarted incarnation became ready with its workers, the JSON has the agreed shape (raw times,
median, max, table, targets, plots) and no process was left behind. No time is asserted beyond
the events' order (lost before ready): benchmarks are not timed tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import BIN_DIR, REPO, binary


@pytest.mark.timeout(150)
def test_liveness_quick(tmp_path):
    binary("dragond"), binary("dragon-agent"), binary("dragonctl")  # clear failure without `make build`
    out, md = tmp_path / "liveness.json", tmp_path / "liveness.md"
    env = dict(os.environ, DRAGON_BIN_DIR=str(BIN_DIR))
    for var in ("DRAGON_HEAD", "DRAGON_TOKEN", "DRAGON_HOME"):
        env.pop(var, None)
    cp = subprocess.run([sys.executable, str(REPO / "bench" / "liveness.py"), "--quick", "--json-out", str(out),
                         "--md-out", str(md), "--bin-dir", str(BIN_DIR)],
                        env=env, capture_output=True, text=True, timeout=140)
    assert cp.returncode == 0, f"liveness.py --quick exited {cp.returncode}:\n{cp.stderr[-4000:]}"
    data = json.loads(out.read_text())
    assert json.loads(cp.stdout.strip().splitlines()[-1]) == data

    assert data["benchmark"] == "liveness" and data["mode"] == "quick"
    assert data["config"]["tries"] == 3 and data["config"]["heartbeat_timeout_ms"] == 4000
    assert data["leftover_processes"] == []
    assert len(data["tries"]) == 6
    for t in data["tries"]:
        assert "error" not in t, t
        assert t["signal"] in ("kill", "stop")
        assert 0 <= t["detect_s"] <= t["head_ready_s"] <= t["workers_ready_s"], t
        assert t["dragonctl_after"]["state"] == "ready" and int(t["dragonctl_after"]["incarnation"]) == 2
        assert t["new_agent_pid"] != t["agent_pid"] and t["old_agent_gone"]
        assert t["orphans"] == [] and t["leftovers_at_stop"] == []
        if t["signal"] == "kill":
            assert t["lost_reason"] == "agent stream broke", t
        else:
            assert "no heartbeat" in t["lost_reason"], t  # found by the deadline, not by TCP

    for kind in ("kill", "stop"):
        s = data["summary"][kind]
        assert s["tries"] == 3 and s["failed"] == 0
        for metric in ("detect_s", "head_ready_s", "workers_ready_s"):
            st = s[metric]
            assert st["n"] == 3 and len(st["raw"]) == 3
            assert st["min"] <= st["median"] <= st["max"]
        assert f"detect_{kind}" in data["targets"] and isinstance(data["targets"][f"detect_{kind}"]["met"], bool)

    assert "| SIGKILL (kill -9) | 3 (0) |" in data["table_md"] and "| SIGSTOP (hung) | 3 (0) |" in data["table_md"]
    assert md.read_text().strip() == data["table_md"].strip()
    plot = data["plots"]["detection_per_try"]
    assert plot["x"] == [1, 2, 3] and all(len(v) == 3 for v in plot["series"].values())
