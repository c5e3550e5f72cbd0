"""`dragonctl top`: live telemetry from the real dragond, agent and workers.

While a flood of tasks runs through Parsl, `top --json` must show tasks finishing (per second,
overall and on the node) and the node's load as its agent measured it (CPU, memory, the workers'
resident memory); the text view must show the same columns; Ctrl-C ends it with exit 0 and a
head that goes away with exit 1 naming it.
"""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import threading
import time

import pytest

from conftest import binary, wait_for_workers, parsl_on
from test_dragonctl import apps_importable, head2, sleeper, started_head  # noqa: F401  (fixtures)
from conftest import stop_head


def top(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([binary("dragonctl"), "top", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_top_shows_rates_and_node_load_during_a_flood(head2, tmp_path):
    head = head2
    wait_for_workers(head, 2)
    with parsl_on(head, tmp_path):
        stop = threading.Event()
        errors = []

        def flood():
            # A steady stream, up to 200 tasks outstanding: never a pause between batches in
            # which a sample of top could see nothing submitted on a loaded machine.
            pending = collections.deque()
            try:
                while not stop.is_set():
                    pending.append(sleeper(0.002))
                    if len(pending) >= 200:
                        pending.popleft().result(timeout=60)
                for f in pending:
                    f.result(timeout=60)
            except BaseException as e:  # noqa: BLE001  (reported below)
                errors.append(e)

        feeder = threading.Thread(target=flood, daemon=True)
        feeder.start()
        try:
            time.sleep(1.5)  # the flood under way, the agent's load measured
            cp = top(head.env, "--json", "--iterations", "3", "--interval", "0.5")
            text = top(head.env, "--iterations", "2", "--interval", "0.5")
        finally:
            stop.set()
            feeder.join(60)
    assert not errors, errors
    assert cp.returncode == 0, cp.stderr
    samples = [json.loads(line) for line in cp.stdout.splitlines()]
    assert len(samples) == 3
    first, last = samples[0], samples[-1]
    assert first["finished_per_s"] is None and first["interval_s"] == 0
    assert 0.4 < last["interval_s"] < 2.0
    assert last["finished_per_s"] > 0 and last["submitted_per_s"] > 0
    assert last["finished"] > first["finished"]
    (node,) = last["nodes"]
    assert node["state"] == "ready"
    assert node["done_per_s"] > 0
    # The agent's NodeLoad, from this host's /proc.
    assert 0 < node["cpu_busy_percent"] <= 100
    assert node["cpus"] >= 1
    assert 0 < node["mem_available_bytes"] < node["mem_total_bytes"]
    assert node["load1"] >= 0
    assert node["workers_rss_bytes"] > 10 * 2**20  # two Python workers with Parsl imported

    assert text.returncode == 0, text.stderr
    frames = text.stdout.split("dragond ")[1:]
    assert len(frames) == 2
    assert "\x1b[2J" not in text.stdout  # not a terminal: frames follow each other
    header = next(l for l in frames[1].splitlines() if l.startswith("NODE"))
    assert header.split() == ["NODE", "STATE", "CPU", "LOAD", "MEM", "WORKERS-RSS", "RUNNING",
                              "QUEUED", "DONE/S", "DONE", "SHM", "HEARTBEAT"]
    row = next(l for l in frames[1].splitlines() if l.startswith(node["node_id"] + " "))
    cells = row.split()
    assert cells[1] == "ready" and cells[2].endswith("%/" + str(node["cpus"]))
    assert "finished/s (over " in frames[1]


@pytest.mark.timeout(120)
def test_top_ends_on_ctrl_c_and_when_the_head_goes(tmp_path, apps_importable, monkeypatch):  # noqa: F811
    head = started_head(tmp_path, monkeypatch, "--workers", "1")
    try:
        proc = subprocess.Popen([binary("dragonctl"), "top", "--interval", "0.2"], env=head.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Its first frame: Ctrl-C is caught from before the first sample on (a signal sent
        # sooner, on a loaded machine, could find the process still starting).
        first_line = proc.stdout.readline()
        assert first_line.startswith("dragond "), (first_line, proc.stderr.read() if proc.poll() else "")
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 2
        assert (first_line + out).count("dragond ") >= 2 and err == ""

        proc = subprocess.Popen([binary("dragonctl"), "--timeout", "2", "top", "--interval", "0.2"],
                                env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
    finally:
        stop_head(head)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, (out, err)
    # Mid-call (CANCELLED), on a broken connection, or on the next connect: the head is named.
    assert err.startswith(f"dragonctl: ") and f"dragond at {head.address}" in err, err
    assert "CANCELLED: CANCELLED" not in err
