"""Smoke run of bench/round_trip.py (where a task's round trip goes): it works end to end.

Functional, not speed: every measured task is found in the head's table, the five segments add up
to the round trip, none is below zero (the head, its agent and this process read one clock), and
bad options are refused naming them. No time is asserted: benchmarks are not timed tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import BIN_DIR, REPO

SCRIPT = REPO / "bench" / "round_trip.py"


def run(*args, timeout=120):
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("DRAGON_HEAD", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


@pytest.mark.timeout(150)
def test_round_trip_splits_every_task_into_segments_that_add_up(tmp_path):
    out = tmp_path / "rt.json"
    cp = run("--samples", "100", "--warmup", "5", "--json-out", str(out))
    assert cp.returncode == 0, cp.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == json.loads(cp.stdout.splitlines()[-1])
    assert res["samples"] == 100 and res["workers"] == 2
    assert res["negative"] == 0, cp.stderr
    seg = res["segments_us"]
    assert list(seg) == ["client -> head", "head", "head -> worker", "worker", "agent -> client", "round trip"]
    # Task by task the segments sum to the round trip, so their means do too.
    parts = sum(seg[name]["mean_us"] for name in list(seg)[:-1])
    assert parts == pytest.approx(seg["round trip"]["mean_us"], rel=1e-6)
    for name, s in seg.items():
        assert 0 <= s["min_us"] <= s["p50_us"] <= s["p90_us"], (name, s)
    assert seg["round trip"]["p50_us"] > 0
    assert "agent -> client" in cp.stderr  # the table


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--samples", "0"], "--samples and --workers must be at least 1"),
    (["--samples", "100000", "--warmup", "1"], "at most 100,000"),
])
def test_round_trip_refuses_bad_options(args, message):
    cp = run(*args, timeout=50)
    assert cp.returncode == 2 and message in cp.stderr, cp.stderr
